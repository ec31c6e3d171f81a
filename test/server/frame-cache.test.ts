import { describe, expect, it } from 'vitest';
import { FrameCache } from '../../server/frame-cache.ts';

const bytes = (n: number, fill = 1) => new Uint8Array(n).fill(fill);

describe('frame cache', () => {
  it('makes each frame once; concurrent askers share it', async () => {
    const c = new FrameCache(1000);
    let made = 0;
    const make = async () => {
      made++;
      await new Promise((r) => setTimeout(r, 10));
      return bytes(100);
    };
    const [a, b] = await Promise.all([c.get('u:1', make), c.get('u:1', make)]);
    expect(a).toBe(b);
    expect(await c.get('u:1', make)).toBe(a);
    expect(made).toBe(1);
    expect([c.hits, c.misses]).toEqual([2, 1]);
  });

  it('keeps at most maxBytes, dropping the least recently used first', async () => {
    const c = new FrameCache(300);
    const made: string[] = [];
    const make = (k: string) => async () => (made.push(k), bytes(100));
    for (const k of ['a', 'b', 'c']) await c.get(k, make(k));
    await c.get('a', make('a')); // a is now the most recent
    await c.get('d', make('d')); // over 300 bytes: b goes
    await c.get('a', make('a'));
    await c.get('c', make('c'));
    await c.get('b', make('b'));
    expect(made).toEqual(['a', 'b', 'c', 'd', 'b']);
  });

  it('does not keep a missing chunk or a failure', async () => {
    const c = new FrameCache(1000);
    let n = 0;
    expect(await c.get('x', async () => (n++, undefined))).toBeUndefined();
    expect(await c.get('x', async () => (n++, bytes(10)))).toEqual(bytes(10));
    await expect(
      c.get('y', async () => {
        throw new Error('disk');
      }),
    ).rejects.toThrow('disk');
    expect(await c.get('y', async () => bytes(5, 2))).toEqual(bytes(5, 2));
    expect(n).toBe(2);
  });
});
