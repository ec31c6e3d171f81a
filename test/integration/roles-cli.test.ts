/**
 * The two-role workflow through the `fleet` command, against an in-process
 * Aedes broker and agent: the release key publishes only a manifest, the
 * rollout key assigns it, refreshes it and rolls back; a trust file signed
 * by the release key rotates the device's keys.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseTrustFile, trustOf, formatTrustFile } from '../../protocol/release.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { createFixture, exists, GROUP, MODEL, runFleet, startAgent, StatusWatch, type Fixture } from '../support/harness.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';
import { until } from '../support/wait.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

describe('fleet publish --manifest-only, publish/refresh/rollback with the rollout key, fleet trust', () => {
  it('runs the whole two-role workflow on a device', async () => {
    f = own(await createFixture('roles-cli'));
    const watch = await StatusWatch.start(f);
    await startAgent(f, 'c1');
    await watch.until('c1', (s) => s.state === 'idle');
    const update = path.join(f.dir, 'update.cbor');
    await fs.writeFile(update, encodeUpdateFile(f.update.payload));
    const common = ['--model', MODEL, '--broker', f.url];

    const m = await runFleet(['publish', '--manifest-only', '--update', update, '--key', f.keyFile, ...common, '--chunk-size', '1024']);
    expect(m.code).toBe(0);
    expect(m.out).toMatch(/published manifest [0-9a-f]{64} for test-model/);
    // The rollout key alone cannot assign without knowing the release keys (the trust file): a key
    // away from keygen's directory (where trust.json would be found beside it) and no --trust.
    const lone = path.join(f.dir, 'lone');
    await fs.mkdir(lone);
    await fs.copyFile(f.rolloutKeyFile, path.join(lone, 'rollout.key'));
    const noTrust = await runFleet(['publish', '--update', update, '--rollout-key', path.join(lone, 'rollout.key'), '--group', GROUP, ...common, '--chunk-size', '1024']);
    expect(noTrust.code).not.toBe(0);
    expect(noTrust.err).toMatch(/give the trust file \(--trust\)/);
    const a = await runFleet(['publish', '--update', update, '--rollout-key', f.rolloutKeyFile, '--trust', f.trustFile, '--group', GROUP, ...common, '--chunk-size', '1024', '--ttl', '1h']);
    expect(a.code).toBe(0);
    const seq = Number(/seq (\d+)/.exec(a.out)![1]);
    await watch.until('c1', (s) => s.state === 'ok' && s.running === f!.update.targetDigest && s.seq === seq);

    const r = await runFleet(['refresh', '--group', GROUP, '--rollout-key', f.rolloutKeyFile, '--trust', f.trustFile, ...common, '--ttl', '30d']);
    expect(r.code).toBe(0);
    const [, from, to] = /seq (\d+) -> (\d+)/.exec(r.out)!;
    expect(Number(from)).toBe(seq);
    await watch.until('c1', (s) => s.state === 'ok' && s.seq === Number(to));

    const back = await runFleet(['rollback', '--group', GROUP, '--rollout-key', f.rolloutKeyFile, '--trust', f.trustFile, ...common]);
    expect(back.code).toBe(0);
    await watch.until('c1', (s) => s.state === 'ok' && s.running === f!.update.baseDigest && s.rollback === true);

    // Rotation: a new rollout key, signed by the release key, published retained.
    const newRollout = path.join(f.dir, 'keys2');
    const k = await runFleet(['keygen', '--out', newRollout]);
    expect(k.code).toBe(0);
    const release = await loadSigningKey(f.keyFile);
    const rollout2 = await loadSigningKey(path.join(newRollout, 'rollout.key'));
    const nextFile = path.join(f.dir, 'trust-v2.json');
    await fs.writeFile(nextFile, formatTrustFile(trustOf([release], [rollout2], 1, 2)));
    const signed = path.join(f.dir, 'trust-v2.signed');
    const s1 = await runFleet(['trust', 'sign', '--new', nextFile, '--key', f.keyFile, '--current', f.trustFile, '--out', signed]);
    expect(s1.code).toBe(0);
    // Signing with the rollout key is refused before anything is written (checked against --current).
    const bad = await runFleet(['trust', 'sign', '--new', nextFile, '--key', f.rolloutKeyFile, '--current', f.trustFile, '--out', path.join(f.dir, 'bad.signed')]);
    expect(bad.code).not.toBe(0);
    const p = await runFleet(['trust', 'publish', signed, '--broker', f.url]);
    expect(p.code).toBe(0);
    const stored = path.join(f.dir, 'c1', 'trust.json');
    await until(() => exists(stored), { what: 'c1 storing the published trust file', timeoutMs: 10_000 });
    expect(parseTrustFile(await fs.readFile(stored, 'utf8')).version).toBe(2);
    // The new rollout key now assigns; the target's manifest is still retained.
    const again = await runFleet(['publish', '--update', update, '--rollout-key', path.join(newRollout, 'rollout.key'), '--trust', nextFile, '--group', GROUP, ...common, '--chunk-size', '1024']);
    expect(again.code).toBe(0);
    await watch.until('c1', (s) => s.state === 'ok' && s.running === f!.update.targetDigest && s.rollback === false);
  });
});
