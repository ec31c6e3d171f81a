/**
 * Waiting for a set of devices after a publish (the demos: `fleet demo`,
 * demo:mnist, demo:onnx): their latest retained/live statuses, and when each
 * finished after the publish. What "finished" means is the caller's.
 */
import { parseStatus, type DeviceStatus } from '../protocol/status.ts';
import { Topics } from '../protocol/topics.ts';
import type { MqttTransport } from '../transport/mqtt.ts';

/** The devices' latest statuses and when each finished after the publish. */
export interface StatusWatch {
  latest: Map<string, DeviceStatus>;
  /** performance.now() at which each device was first seen finished after the publish. */
  ackedAt: Map<string, number>;
  /** Marks the publish: from now on a finished status counts (including those already seen). */
  published: () => void;
  publishedAt: () => number;
  /** Resolves when every device finished or after timeoutSeconds. */
  wait: (timeoutSeconds: number) => Promise<void>;
}

/** Subscribes to every device status on `observer` and follows those of `ids` (others are ignored). */
export async function watchStatuses(observer: MqttTransport, ids: readonly string[], finished: (s: DeviceStatus) => boolean): Promise<StatusWatch> {
  const topics = new Topics();
  const latest = new Map<string, DeviceStatus>();
  const ackedAt = new Map<string, number>();
  let publishedAt = 0;
  let resolveDone: () => void = () => undefined;
  const done = new Promise<void>((r) => (resolveDone = r));
  const mark = (s: DeviceStatus): void => {
    if (finished(s) && !ackedAt.has(s.device)) ackedAt.set(s.device, performance.now());
  };
  observer.onMessage((topic, payload) => {
    const p = topics.parse(topic);
    if (p?.kind !== 'status' || !ids.includes(p.deviceId)) return;
    const s = parseStatus(payload);
    if (!s) return;
    latest.set(s.device, s);
    if (!publishedAt) return;
    mark(s);
    if (ackedAt.size === ids.length) resolveDone();
  });
  await observer.subscribe(topics.allStatuses(), 1);
  return {
    latest,
    ackedAt,
    publishedAt: () => publishedAt,
    published: () => {
      publishedAt = performance.now();
      for (const s of latest.values()) mark(s);
      if (ackedAt.size === ids.length) resolveDone();
    },
    wait: async (timeoutSeconds) => {
      const timer = setTimeout(resolveDone, timeoutSeconds * 1000);
      await done;
      clearTimeout(timer);
    },
  };
}
