import { ignoreBecause } from '../platform/errors.ts';
import { isTopicSegment, type Topics } from '../protocol/topics.ts';
import type { Transport } from '../transport/types.ts';
import type { Logger } from '../util/log.ts';
import { readJson, writeFileAtomic } from '../util/fs-atomic.ts';

export interface GroupWatchOptions {
  /** Learned pairs survive restarts here (an offline restart still knows its groups). */
  file: string;
  topics: Topics;
  upstream: Transport;
  /** Configured groups (`--group`); with `models` the pairs are their product, else every model of the group. */
  groups: string[];
  models: string[];
  /** Most group/model pairs learned from devices (0: none; Infinity: no cap). */
  cap: number;
  log: Logger;
}

/** What the gateway learns from its site's devices, for its status. */
export interface LearningSummary {
  /** `logins`: from the site users' logins (site --auth); `devices`: from what devices say (no auth, --learn-groups N); `off`. */
  mode: 'logins' | 'devices' | 'off';
  learned: number;
  cap: number | null;
  /** Pairs not learned because the cap was reached (since start). */
  refused: number;
}

/**
 * Which upstream releases the site needs: configured groups (and models) and
 * every group/model pair learned from the site's devices (their release
 * subscriptions and statuses). Each becomes one upstream subscription.
 */
export class GroupWatch {
  private readonly learned = new Set<string>();
  private readonly filters = new Set<string>();
  private refusedPairs = new Set<string>();
  refused = 0;
  private saving: Promise<void> = Promise.resolve();

  constructor(private readonly o: GroupWatchOptions) {
    for (const g of o.groups) {
      if (o.models.length) for (const m of o.models) this.filters.add(o.topics.release(g, m));
      else this.filters.add(o.topics.groupReleases(g));
    }
  }

  async start(): Promise<void> {
    for (const k of (await readJson<string[]>(this.o.file)) ?? []) {
      const [g, m] = k.split('/');
      if (isTopicSegment(g ?? '') && isTopicSegment(m ?? '') && this.learned.size < this.o.cap) this.add(g, m);
    }
    await this.subscribeAll();
  }

  /** Whether a release for this group and model is one the site needs. */
  wants(group: string, model: string): boolean {
    if (this.learned.has(`${group}/${model}`)) return true;
    if (this.o.groups.includes(group)) return this.o.models.length === 0 || this.o.models.includes(model);
    return false;
  }

  /** A device of the site belongs to this group and runs this model. */
  async learn(group: string, model: string): Promise<void> {
    if (!isTopicSegment(group) || !isTopicSegment(model) || this.learned.has(`${group}/${model}`)) return;
    // With --model, only those models are mirrored.
    if (this.o.models.length && !this.o.models.includes(model)) return;
    if (this.learned.size >= this.o.cap) {
      // Bounded: a site device must not make the gateway mirror (and download) whatever it names.
      const k = `${group}/${model}`;
      if (this.refusedPairs.size < 1024 && !this.refusedPairs.has(k)) {
        this.refusedPairs.add(k);
        this.refused++;
        this.o.log.warn('group not learned: the cap of learned groups is reached (--learn-groups)', { group, model, cap: this.o.cap });
      }
      return;
    }
    const filter = this.add(group, model);
    this.o.log.info('learned a group from a device', { group, model });
    // One write at a time, each of the set as it is then: the last one written holds every pair.
    this.saving = this.saving.catch(ignoreBecause("the previous write's failure went to its own caller; this one writes the whole set again")).then(() => writeFileAtomic(this.o.file, JSON.stringify([...this.learned])));
    await this.saving;
    if (filter && this.o.upstream.connected) await this.o.upstream.subscribe(filter, 1).catch((e: unknown) => this.o.log.debug('subscription deferred', { error: String(e) }));
  }

  private add(group: string, model: string): string | undefined {
    this.learned.add(`${group}/${model}`);
    const f = this.o.topics.release(group, model);
    if (this.filters.has(f) || this.filters.has(this.o.topics.groupReleases(group))) return undefined;
    this.filters.add(f);
    return f;
  }

  /** (Re)subscribe to every filter (after each upstream connect). */
  async subscribeAll(): Promise<void> {
    if (!this.o.upstream.connected || this.filters.size === 0) return;
    await this.o.upstream.subscribe([...this.filters], 1).catch((e: unknown) => this.o.log.debug('subscriptions deferred', { error: String(e) }));
  }

  get learnedCount(): number {
    return this.learned.size;
  }

  get count(): number {
    return this.filters.size;
  }
}
