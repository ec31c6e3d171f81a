import { promises as fs } from 'node:fs';
import path from 'node:path';
import { sha256Hex } from '../protocol/chunks.ts';
import { isTopicSegment } from '../protocol/topics.ts';
import type { ContentStore } from '../server/content-store.ts';
import type { Logger } from '../util/log.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import { releaseNeeds, wantedBySite, type NeededUpdate } from './release-needs.ts';

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
  /** The model digests the site's devices of this group and model run (from their statuses). */
  siteDigests: (group: string, model: string) => string[];
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
  target: string | null;
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
 * A full-model step is fetched only when a site device needs it (wantedBySite);
 * a device that turns up later on no chain gets it fetched then.
 */
export class ReleaseMirror {
  private readonly pending = new Map<string, Held>();
  private readonly published = new Map<string, { hash: string; seq: number | null; target: string | null; updates: NeededUpdate[] }>();

  constructor(private readonly o: MirrorOptions) {}

  async start(): Promise<void> {
    await fs.mkdir(this.o.dir, { recursive: true });
    for (const r of await this.o.store.releases()) this.published.set(`${r.group}/${r.model}`, { hash: sha256Hex(r.bytes), ...needsOf(r.bytes) });
    for (const entry of await fs.readdir(this.o.dir, { withFileTypes: true })) {
      const group = entry.name;
      if (!entry.isDirectory() || !isTopicSegment(group)) continue;
      for (const f of await fs.readdir(path.join(this.o.dir, group))) {
        const model = f.slice(0, -5);
        if (!f.endsWith('.cbor') || !isTopicSegment(model)) continue;
        const bytes = new Uint8Array(await fs.readFile(path.join(this.o.dir, group, f)));
        await this.onUpstream(group, model, bytes);
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
      await this.o.keepOnly(this.stillWanted());
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
    let target: string | null = null;
    let updates: NeededUpdate[] = [];
    try {
      ({ seq, target, updates } = releaseNeeds(bytes));
    } catch (e) {
      // Unreadable here: forward it so the devices report why (malformed-release).
      this.o.log.warn('release does not decode; forwarding it for the devices to refuse', { group, model, error: (e as Error).message });
    }
    const known = Math.max(pub?.seq ?? -1, pend?.seq ?? -1);
    if (seq !== null && seq <= known) {
      this.o.log.debug('ignoring an older release', { group, model, seq, known });
      return;
    }
    const held: Held = { bytes, hash, seq, target, updates, missing: [] };
    this.pending.set(key, held);
    await fs.mkdir(path.dirname(this.file(group, model)), { recursive: true });
    await writeFileAtomic(this.file(group, model), bytes);
    this.o.log.info('release from upstream', { group, model, seq, updates: updates.length });
    if (pend) await this.o.keepOnly(this.stillWanted());
    await this.check(key, group, model);
  }

  /** A payload is held now: publish every release whose payloads are all here. */
  async onStored(): Promise<void> {
    for (const key of [...this.pending.keys()]) {
      const [group, model] = key.split('/');
      await this.check(key, group, model);
    }
  }

  /**
   * A site device reported its digest: a release (waiting or published) whose
   * full-model step it needs gets that step fetched now.
   */
  async onDevice(group: string, model: string): Promise<void> {
    const key = `${group}/${model}`;
    if (this.pending.has(key)) return this.check(key, group, model);
    const p = this.published.get(key);
    if (!p?.target) return;
    for (const u of this.wanted(group, model, p)) if (!(await this.o.store.meta(u.updateId))) await this.o.fetch(model, u);
  }

  private wanted(group: string, model: string, h: { target: string | null; updates: NeededUpdate[] }): NeededUpdate[] {
    return h.target === null ? h.updates : wantedBySite({ target: h.target, updates: h.updates }, this.o.siteDigests(group, model));
  }

  /** Every payload a waiting or published release still wants (the fetcher drops the others). */
  private stillWanted(): Set<string> {
    const all = [...this.pending.entries(), ...this.published.entries()];
    return new Set(
      all.flatMap(([k, h]) => {
        const [group, model] = k.split('/');
        return this.wanted(group, model, h).map((u) => u.updateId);
      }),
    );
  }

  private async check(key: string, group: string, model: string): Promise<void> {
    const h = this.pending.get(key);
    if (!h) return;
    const missing: NeededUpdate[] = [];
    for (const u of this.wanted(group, model, h)) if (!(await this.o.store.meta(u.updateId))) missing.push(u);
    h.missing = missing.map((u) => u.updateId);
    if (missing.length) {
      for (const u of missing) await this.o.fetch(model, u);
      return;
    }
    await this.o.publishLocal(group, model, h.bytes);
    if (this.pending.get(key) !== h) return;
    this.pending.delete(key);
    this.published.set(key, { hash: h.hash, seq: h.seq, target: h.target, updates: h.updates });
    await fs.rm(this.file(group, model), { force: true });
    this.o.log.info('release published on the site', { group, model, seq: h.seq });
  }

  private file(group: string, model: string): string {
    if (!isTopicSegment(group) || !isTopicSegment(model)) throw new TypeError('bad group or model');
    return path.join(this.o.dir, group, `${model}.cbor`);
  }
}

function needsOf(bytes: Uint8Array): { seq: number | null; target: string | null; updates: NeededUpdate[] } {
  try {
    const n = releaseNeeds(bytes);
    return { seq: n.seq, target: n.target, updates: n.updates };
  } catch {
    return { seq: null, target: null, updates: [] };
  }
}
