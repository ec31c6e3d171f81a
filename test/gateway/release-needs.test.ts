import { describe, expect, it } from 'vitest';
import { wantedBySite, type NeededUpdate } from '../../gateway/release-needs.ts';

const D = (n: number) => n.toString(16).padStart(2, '0').repeat(32);
const u = (id: string, from: string | null): NeededUpdate => ({ updateId: id.padEnd(32, '0'), size: 10, sha256: 'a'.repeat(64), chunkSize: 4, chunks: 3, listSha256: 'b'.repeat(64), from });
const release = { target: D(3), updates: [u('a', D(1)), u('b', D(2)), u('f', null)] };
const ids = (w: NeededUpdate[]) => w.map((x) => x.updateId[0]);

describe('what the site needs of a release', () => {
  it('the chain steps always; the full model only for a device on no chain', () => {
    expect(ids(wantedBySite(release, []))).toEqual(['a', 'b']);
    expect(ids(wantedBySite(release, [D(1), D(2), D(3)]))).toEqual(['a', 'b']);
    expect(ids(wantedBySite(release, [D(1), D(9)]))).toEqual(['a', 'b', 'f']);
    expect(ids(wantedBySite({ target: D(3), updates: [u('f', null)] }, [D(3)]))).toEqual([]);
    expect(ids(wantedBySite({ target: D(3), updates: [u('f', null)] }, [D(1)]))).toEqual(['f']);
  });
});
