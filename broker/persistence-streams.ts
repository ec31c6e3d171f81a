import { Readable } from 'node:stream';
import type { AedesOptions } from 'aedes';
import type { Logger } from '../util/log.ts';

export type Persistence = AedesOptions['persistence'] & { destroy(): Promise<void> };

/** The persistence methods whose results Aedes pipes as streams. */
const STREAM_METHODS = ['createRetainedStreamCombi', 'createRetainedStream', 'outgoingStream', 'streamWill', 'getClientList'] as const;

/**
 * Every stream a persistence hands Aedes, made safe: an async iterable
 * becomes a Readable (aedes-persistence-redis 11.2 returns iterables where
 * Aedes 1.2 pipes streams), a failed read is logged instead of thrown (Aedes
 * attaches no error listener: a SUBSCRIBE's retained messages still being
 * read while the broker stops would crash the process), and the streams
 * still open are destroyed before the persistence itself is.
 */
export function guardStreams(p: Persistence, log: Logger): Persistence {
  const open = new Set<Readable>();
  let closing = false;
  const methods = p as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (const name of STREAM_METHODS) {
    const original = methods[name].bind(p);
    methods[name] = (...args: unknown[]): Readable => {
      const r = original(...args);
      const s = r instanceof Readable ? r : Readable.from(r as AsyncIterable<unknown>);
      open.add(s);
      s.once('close', () => open.delete(s));
      s.on('error', (e: Error) => (closing ? log.debug : log.warn)('persistence read failed', { method: name, error: e.message }));
      return s;
    };
  }
  const destroy = p.destroy.bind(p);
  p.destroy = async () => {
    closing = true;
    for (const s of open) s.destroy();
    open.clear();
    await destroy();
  };
  return p;
}
