import { describe, expect, it } from 'vitest';
import { stampPresence } from '../../broker/presence-stamp.ts';
import { encodePresence, MAX_PRESENCE_BYTES, parsePresence } from '../../protocol/status.ts';
import { Topics } from '../../protocol/topics.ts';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('presence carries the time it changed (docs/protocol.md §8.2)', () => {
  it('online/offline with or without Unix seconds; anything else is junk', () => {
    expect(encodePresence('online', 1_796_620_800_999)).toBe('online 1796620800');
    expect(parsePresence(bytes('online 1796620800'))).toEqual({ state: 'online', since: 1796620800 });
    expect(parsePresence(bytes('offline 99999999999'))).toEqual({ state: 'offline', since: 99999999999 });
    expect(parsePresence(bytes('offline'))).toEqual({ state: 'offline', since: null });
    expect(bytes('offline 99999999999').byteLength).toBe(MAX_PRESENCE_BYTES);
    for (const junk of [
      '',
      'Online',
      'online ',
      'online 0',
      'online 01',
      'online -5',
      'online 1.5',
      'online 1e9',
      'offline 999999999999',
      'online  1',
      'online 1 2',
      'online\n1',
      `online ${'9'.repeat(400)}`,
      'online\u001b[2J',
    ]) {
      expect(parsePresence(bytes(junk)), JSON.stringify(junk)).toBeNull();
    }
  });

  it('the broker stamps a bare presence (a last will) and leaves a timed one and other topics alone', () => {
    const topics = new Topics();
    const hook = stampPresence(topics, undefined, () => 1_796_620_800_000);
    const run = (topic: string, payload: string): string => {
      const packet = { topic, payload: Buffer.from(payload) } as unknown as Parameters<typeof hook>[1];
      let err: unknown = 'not called';
      hook(null as unknown as Parameters<typeof hook>[0], packet, (e) => (err = e));
      expect(err).toBeNull();
      return packet.payload.toString();
    };
    expect(run(topics.presence('d1'), 'offline')).toBe('offline 1796620800');
    expect(run(topics.presence('d1'), 'online 1700000000')).toBe('online 1700000000');
    expect(run(topics.presence('d1'), 'junk')).toBe('junk');
    expect(run(topics.status('d1'), 'offline')).toBe('offline');
  });
});
