import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { keygen } from '../../publisher/keys.ts';
import { connect, createFixture, GROUP, MODEL, readRetained, runFleet, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';
import { expectNoEventWithin } from '../support/wait.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

describe('fleet publish refuses what the devices would refuse, before it uploads a byte', () => {
  it('a release key alone where the fleet (trust.json beside the keys) has a rollout role; a key the trust file does not name', async () => {
    f = own(await createFixture('preflight'));
    const update = path.join(f.dir, 'update.cbor');
    await fs.writeFile(update, encodeUpdateFile(f.update.payload));
    // Everything that reaches the broker, to show that nothing did.
    const spy = await connect(f, 'preflight-spy');
    const seen: string[] = [];
    spy.onMessage((topic) => seen.push(topic));
    await spy.subscribe(['fleet/#'], 1);
    const common = ['--update', update, '--model', MODEL, '--group', GROUP, '--broker', f.url, '--chunk-size', '1024'];

    const noRollout = await runFleet(['publish', '--key', f.keyFile, ...common]);
    expect(noRollout.code).toBe(1);
    expect(noRollout.err.trim().split('\n')).toEqual([
      `fleet: the fleet's trust file has a rollout role, so the group assignment must be signed by a rollout key: give --rollout-key (devices would refuse one signed by a release key: wrong-role) (checked against ${path.join(path.dirname(f.keyFile), 'trust.json')})`,
    ]);

    const other = await keygen(path.join(f.dir, 'other-keys'));
    const foreign = await runFleet(['publish', '--key', other.keyFile, '--rollout-key', f.rolloutKeyFile, '--trust', f.trustFile, ...common]);
    expect(foreign.code).toBe(1);
    expect(foreign.err).toMatch(/^fleet: the trust file's release role needs 1 of its keys and 0 of the --key files are among them: devices would refuse the manifest \(untrusted-key\)/);

    await expectNoEventWithin(500, () => seen[0], 'a message on fleet/# from a refused publish');
  }, 60_000);

  it('a group or model that no device has reported is named, with what the broker knows, and needs --yes', async () => {
    f = own(await createFixture('preflight-typo'));
    const watch = await StatusWatch.start(f);
    await startAgent(f, 'p1');
    await watch.until('p1', (s) => s.state === 'idle');
    const update = path.join(f.dir, 'update.cbor');
    await fs.writeFile(update, encodeUpdateFile(f.update.payload));
    const keys = ['--key', f.keyFile, '--rollout-key', f.rolloutKeyFile, '--update', update, '--broker', f.url, '--chunk-size', '1024'];
    const typo = await runFleet(['publish', ...keys, '--model', MODEL, '--group', `${GROUP}x`]);
    expect(typo.code).toBe(1);
    expect(typo.err.trim().split('\n')).toEqual([
      `fleet: no device has reported group ${GROUP}x for model ${MODEL} (groups with devices on ${MODEL}: ${GROUP}; models: ${MODEL}); check the names, or give --yes to publish for devices yet to come`,
    ]);
    expect(await readRetained(f, topics.release(`${GROUP}x`, MODEL))).toBeUndefined();
    const yes = await runFleet(['publish', ...keys, '--model', MODEL, '--group', `${GROUP}x`, '--yes']);
    expect(yes.code, yes.err).toBe(0);
    expect(await readRetained(f, topics.release(`${GROUP}x`, MODEL))).toBeDefined();
    const right = await runFleet(['publish', ...keys, '--model', MODEL, '--group', GROUP]);
    expect(right.code, right.err).toBe(0);
    await watch.until('p1', (s) => s.state === 'ok' && s.running === f!.update.targetDigest, 60_000);
  }, 120_000);
});
