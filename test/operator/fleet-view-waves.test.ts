import { describe, expect, it } from 'vitest';
import { UPDATE_ID_HEX } from '../../protocol/frames.ts';
import { signingKeyFromSeed, signRelease, type ReleaseDraft, type ReleaseStep } from '../../protocol/release.ts';
import { clockedView, D1, D2, rolloutMsg, rolloutStatus, status, statusMsg, T0, topics } from './helpers.ts';

const step = (from: string | null, size: number): ReleaseStep => ({
  updateId: (from ? 'e' : 'f').repeat(UPDATE_ID_HEX),
  from,
  to: D2,
  size,
  sha256: (from ? 'e' : 'f').repeat(64),
  chunkSize: 1024,
  chunks: Math.ceil(size / 1024),
  listSha256: '0'.repeat(64),
});

function release(group: string, steps: ReleaseStep[], seq = 1): [string, Uint8Array] {
  const body: ReleaseDraft = { model: 'm', group, seq, issued: T0 / 1000, expires: T0 / 1000 + 3600, target: D2, steps, rollback: false, previous: D1 };
  return [topics.release(group, 'm'), signRelease(body, [signingKeyFromSeed(new Uint8Array(32).fill(1))])];
}

describe('fleet view: waves and what full-model shipping would cost', () => {
  it('wave rows carry the plan thresholds, soak, timeout, the release seq and its times', () => {
    const { view } = clockedView();
    const s = rolloutStatus('r1');
    s.waves[0].release = { seq: 4, target: D2 };
    s.waves[0].publishedAt = new Date(T0).toISOString();
    s.waves[0].thresholdAt = new Date(T0 + 1000).toISOString();
    view.handle(...rolloutMsg(s), true);
    const [w1, w2] = view.rollout('r1')!.waveList;
    expect(w1).toMatchObject({
      group: 'canary',
      started: true,
      successThreshold: 1,
      failureThreshold: { count: 1 },
      soakSeconds: 60,
      timeoutSeconds: 600,
      offline: 'block',
      window: null,
      seq: 4,
      publishedAt: new Date(T0).toISOString(),
      thresholdAt: new Date(T0 + 1000).toISOString(),
    });
    expect(w2).toMatchObject({ group: 'line-1', started: false, seq: null, publishedAt: null, thresholdAt: null, soakSeconds: 60 });
  });

  it("modelBytes is the full-model step of the device's group release, whichever comes first; null without one", () => {
    const { view } = clockedView();
    view.handle(...statusMsg(status('d1')), true);
    view.handle(...statusMsg(status('d2', { group: 'line-2' })), true);
    expect(view.device('d1')!.modelBytes).toBeNull();
    // A release with a full step for line-1 changes d1's row only.
    const changes = view.handle(...release('line-1', [step(D1, 700), step(null, 64_000)]), true);
    expect(changes.map((c) => c.kind === 'device' && [c.device, c.row?.modelBytes])).toEqual([['d1', 64_000]]);
    expect(view.device('d2')!.modelBytes).toBeNull();
    // A device whose status comes after the release gets it too.
    view.handle(...statusMsg(status('d3')), true);
    expect(view.device('d3')!.modelBytes).toBe(64_000);
    // A later release without a full step: unknown again; a cleared release: unknown.
    view.handle(...release('line-1', [step(D1, 700)], 2), false);
    expect(view.device('d1')!.modelBytes).toBeNull();
    view.handle(...release('line-2', [step(null, 99)]), false);
    expect(view.device('d2')!.modelBytes).toBe(99);
    view.handle(topics.release('line-2', 'm'), new Uint8Array(0), false);
    expect(view.device('d2')!.modelBytes).toBeNull();
    // Junk on a release topic changes nothing.
    expect(view.handle(topics.release('line-1', 'm'), new Uint8Array([1, 2, 3]), false)).toEqual([]);
  });
});
