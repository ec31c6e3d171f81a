import { decodeRelease, signingKeyFromSeed, signRelease, type ReleaseBody, type ReleaseDraft, type SigningKey } from '../../protocol/release.ts';
import { encodeStatus, type DeviceState, type DeviceStatus } from '../../protocol/status.ts';
import type { Topics } from '../../protocol/topics.ts';
import type { PublishOptions, PublishResult } from '../../publisher/publish.ts';
import type { RollbackOptions, RollbackResult } from '../../publisher/rollback.ts';
import type { MessageHandler, PublishOptions as TPublishOptions, Transport } from '../../transport/types.ts';
import { statusFixture } from '../support/status.ts';

const matches = (filter: string, topic: string): boolean => {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
};

/** An in-memory broker with retained messages: enough MQTT for the controller's unit tests. */
export class MemoryBroker {
  readonly retained = new Map<string, Uint8Array>();
  readonly clients = new Set<MemoryTransport>();
  readonly log: Array<{ topic: string; payload: Uint8Array; retain: boolean }> = [];
  publish(topic: string, payload: Uint8Array, retain: boolean): void {
    this.log.push({ topic, payload, retain });
    if (retain && payload.byteLength) this.retained.set(topic, payload);
    else if (retain) this.retained.delete(topic);
    for (const c of this.clients) c.deliver(topic, payload, false);
  }
}

export class MemoryTransport implements Transport {
  private readonly filters = new Set<string>();
  private readonly handlers: MessageHandler[] = [];
  connected = true;
  constructor(private readonly broker: MemoryBroker) {
    broker.clients.add(this);
  }
  deliver(topic: string, payload: Uint8Array, retained: boolean): void {
    if (![...this.filters].some((f) => matches(f, topic))) return;
    queueMicrotask(() => {
      for (const h of [...this.handlers]) h(topic, payload, retained);
    });
  }
  async publish(topic: string, payload: Uint8Array | string, opts: TPublishOptions = {}): Promise<void> {
    if (!this.connected) return; // a killed process: its messages never arrive
    this.broker.publish(topic, typeof payload === 'string' ? new TextEncoder().encode(payload) : payload, opts.retain === true);
  }
  async subscribe(filters: string | string[]): Promise<void> {
    for (const f of [filters].flat()) {
      this.filters.add(f);
      for (const [topic, payload] of this.broker.retained) if (matches(f, topic)) this.deliver(topic, payload, true);
    }
  }
  async unsubscribe(filters: string | string[]): Promise<void> {
    for (const f of [filters].flat()) this.filters.delete(f);
  }
  onMessage(h: MessageHandler): () => void {
    this.handlers.push(h);
    return () => {
      const i = this.handlers.indexOf(h);
      if (i >= 0) this.handlers.splice(i, 1);
    };
  }
  onConnect(): void {}
  onDisconnect(): void {}
  async close(): Promise<void> {
    this.connected = false;
    this.broker.clients.delete(this);
  }
}

export const KEY: SigningKey = signingKeyFromSeed(new Uint8Array(32).fill(7));

export function deviceStatus(topics: Topics, broker: MemoryBroker, device: string, group: string, state: DeviceState, o: Partial<DeviceStatus> = {}): void {
  const s = statusFixture({ device, group, state, ...o });
  broker.publish(topics.status(device), encodeStatus(s), true);
}

/** Publish and rollback ports that sign real releases into the memory broker (no upload), with failures on demand. */
export function fakeReleases(broker: MemoryBroker, topics: Topics) {
  const calls: Array<{ kind: 'publish' | 'rollback'; group: string }> = [];
  const failNext: Array<{ kind: 'publish' | 'rollback'; error: Error }> = [];
  let seq = 100;
  const current = new Map<string, ReleaseBody>();
  const put = (d: ReleaseDraft): ReleaseBody => {
    const bytes = signRelease(d, [KEY]);
    const b = decodeRelease(bytes);
    current.set(b.group, b);
    broker.publish(topics.release(b.group, b.model), bytes, true);
    return b;
  };
  const take = (kind: 'publish' | 'rollback'): void => {
    const i = failNext.findIndex((f) => f.kind === kind);
    if (i >= 0) throw failNext.splice(i, 1)[0].error;
  };
  return {
    calls,
    failNext,
    current,
    async publish(o: PublishOptions): Promise<PublishResult> {
      calls.push({ kind: 'publish', group: o.group });
      take('publish');
      const prev = current.get(o.group);
      const body = put({ model: o.model, group: o.group, seq: ++seq, issued: 1, expires: 2e9, target: TARGET, steps: [], rollback: false, previous: prev?.target ?? BASE });
      return { updateId: 'u', release: body, uploads: [], uploadedChunks: 3, alreadyStored: false };
    },
    async rollback(o: RollbackOptions): Promise<RollbackResult> {
      calls.push({ kind: 'rollback', group: o.group });
      take('rollback');
      const cur = current.get(o.group)!;
      const body = put({ ...cur, seq: ++seq, target: cur.previous!, previous: cur.target, rollback: true });
      return { from: cur.target, to: body.target, replacedSeq: cur.seq, release: body, upload: undefined };
    },
  };
}

export const BASE = 'a'.repeat(64);
export const TARGET = 'b'.repeat(64);
