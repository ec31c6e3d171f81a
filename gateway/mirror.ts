import { promises as fs } from 'node:fs';
import path from 'node:path';
import { sha256Hex } from '../protocol/chunks.ts';
import { isTopicSegment } from '../protocol/topics.ts';
import type { ContentStore } from '../server/content-store.ts';
import type { Logger } from '../util/log.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import { releaseNeeds, type NeededUpdate } from './release-needs.ts';

export interface MirrorOptions {
  /** Releases waiting for their payloads: `{dir}/{group}/{model}.cbor`. */
  dir: string;
  store: ContentStore;
  log: Logger;
  /** Ask the fetcher for a payload. */
  fetch: (model: string, need: NeededUpdate) => Promise<void>;
  /** Tell the fetcher which payloads pending releases still need (the others are dropped). */
  keepOnly: (needed: Set<string>) => Promise<void>;
  /** Publish on the site broker, retained, byte for byte (empty = withdrawn). */
  publishLocal: (group: string, model: string, bytes: Uint8Array) => Promise<void>;
}

export interface MirroredRelease {
  group: string;
  model: string;
  seq: number | null;
  /** `published`: the site's devices see it; `fetching`: waiting for its payloads. */
  state: 'published' | 'fetching';
  missing: string[];
}

interface Held {
  bytes: Uint8Array;
  hash: string;
  seq: number | null;
  updates: NeededUpdate[];
  missing: string[];
}

/**
 * The site's copy of upstream releases. A release is published on the site
 * broker only once every payload it names is in the site's store, so a
 * device never asks the site's update server for a chunk it lacks (it would
 * answer `unknown-update` and the device would back off for minutes). Until
 * then the release waits on disk here, and the one before it stays
 * published. Releases are forwarded unchanged: devices verify signatures.
 */
export class ReleaseMirror {
  private readonly pending = new Map<string, Held>();
  private readonly published = new Map<string, { hash: string; seq: number | null }>();

  constructor(private readonly o: MirrorOptions) {}

  async start(): Promise<void> {
    await fs.mkdir(this.o.dir, { recursive: true });
    for (const r of await this.o.store.releases()) this.published.set(`${r.group}/${r.model}`, { hash: sha256Hex(r.bytes), seq: seqOf(r.bytes) });
    for (const group of await fs.readdir(this.o.dir)) {
      if (!isTopicSegment(group)) continue;
      for (const f of await fs.readdir(path.join(this.o.dir, group))) {
        if (!f.endsWith('.cbor')) continue;
        const bytes = new Uint8Array(await fs.readFile(path.join(this.o.dir, group, f)));
        await this.onUpstream(group, f.slice(0, -5), bytes);
      }
    }
  }

  state(): MirroredRelease[] {
    const out: MirroredRelease[] = [];
    for (const [k, p] of this.published) {
      const [group, model] = k.split('/');
      if (!this.pending.has(k)) out.push({ group, model, seq: p.seq, state: 'published', missing: [] });
    }
    for (const [k, h] of this.pending) {
      const [group, model] = k.split('/');
      out.push({ group, model, seq: h.seq, state: 'fetching', missing: h.missing });
    }
    return out;
  }

  /** A retained release (or a withdrawal) arrived from upstream. */
  async onUpstream(group: string, model: string, bytes: Uint8Array): Promise<void> {
    const key = `${group}/${model}`;
    if (bytes.byteLength === 0) {
      this.pending.delete(key);
      await fs.rm(this.file(group, model), { force: true });
      await this.o.keepOnly(new Set([...this.pending.values()].flatMap((h) => h.updates.map((u) => u.updateId))));
      if (this.published.delete(key)) {
        await this.o.publishLocal(group, model, bytes);
        this.o.log.info('release withdrawn upstream; withdrawn on the site', { group, model });
      }
      return;
    }
    const hash = sha256Hex(bytes);
    const pub = this.published.get(key);
    const pend = this.pending.get(key);
    if (pub?.hash === hash || pend?.hash === hash) {
      if (pend) await this.check(key, group, model);
      return;
    }
    let seq: number | null = null;
    let updates: NeededUpdate[] = [];
    try {
      const n = releaseNeeds(bytes);
      seq = n.seq;
      updates = n.updates;
    } catch (e) {
      // Unreadable here: forward it so the devices report why (malformed-release).
      this.o.log.warn('release does not decode; forwarding it for the devices to refuse', { group, model, error: (e as Error).message });
    }
    const known = Math.max(pub?.seq ?? -1, pend?.seq ?? -1);
    if (seq !== null && seq <= known) {
      this.o.log.debug('ignoring an older release', { group, model, seq, known });
      return;
    }
    const held: Held = { bytes, hash, seq, updates, missing: updates.map((u) => u.updateId) };
    this.pending.set(key, held);
    await fs.mkdir(path.dirname(this.file(group, model)), { recursive: true });
    await writeFileAtomic(this.file(group, model), bytes);
    this.o.log.info('release from upstream', { group, model, seq, updates: updates.length });
    if (pend) await this.o.keepOnly(new Set([...this.pending.values()].flatMap((h) => h.updates.map((u) => u.updateId))));
    for (const u of updates) await this.o.fetch(model, u);
    await this.check(key, group, model);
  }

  /** A payload is held now: publish every release whose payloads are all here. */
  async onStored(): Promise<void> {
    for (const key of [...this.pending.keys()]) {
      const [group, model] = key.split('/');
      await this.check(key, group, model);
    }
  }

  private async check(key: string, group: string, model: string): Promise<void> {
    const h = this.pending.get(key);
    if (!h) return;
    const missing: NeededUpdate[] = [];
    for (const u of h.updates) if (!(await this.o.store.meta(u.updateId))) missing.push(u);
    h.missing = missing.map((u) => u.updateId);
    if (missing.length) {
      for (const u of missing) await this.o.fetch(model, u);
      return;
    }
    await this.o.publishLocal(group, model, h.bytes);
    if (this.pending.get(key) !== h) return;
    this.pending.delete(key);
    this.published.set(key, { hash: h.hash, seq: h.seq });
    await fs.rm(this.file(group, model), { force: true });
    this.o.log.info('release published on the site', { group, model, seq: h.seq });
  }

  private file(group: string, model: string): string {
    if (!isTopicSegment(group) || !isTopicSegment(model)) throw new TypeError('bad group or model');
    return path.join(this.o.dir, group, `${model}.cbor`);
  }
}

function seqOf(bytes: Uint8Array): number | null {
  try {
    return releaseNeeds(bytes).seq;
  } catch {
    return null;
  }
}
