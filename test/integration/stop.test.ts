import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { BrokerProcess } from '../support/broker-process.ts';
import { freePort, publish } from '../support/harness.ts';
import { MuteBroker } from '../support/mute-broker.ts';
import { until } from '../support/wait.ts';
import { brokerProcess, ClientWatch, command, COMMANDS, deviceDirConsistent, logLines, muteReady, signalAndWait, signalAround, SLACK_MS, startCommand, STOP_S, stopFixture, type StopFixture } from './stop-kit.ts';

/**
 * Issue 24: every long-running command exits within its stop bound whatever
 * the broker does (the fast subset; stop.slow.test.ts sweeps offsets around a
 * broker's death for every command).
 */

/** Exit code of a stop caused by a signal: `rollout start` says it was interrupted (130). */
const SIGNAL_CODE: Record<string, number> = { 'rollout start': 130 };
const BOUND_MS = STOP_S * 1000 + SLACK_MS;

let f: StopFixture;
beforeAll(async () => {
  f = await stopFixture();
});
afterAll(async () => {
  await f.close();
});

describe('SIGTERM while a publish or an unsubscribe waits for an acknowledgement that never comes', () => {
  for (const c of COMMANDS) {
    it(
      c.name,
      async () => {
        const mute = await MuteBroker.start();
        try {
          const { child, run, log, client } = await startCommand(f, c, mute.url);
          await mute.until(muteReady(c, client), `${c.name} ready on the mute broker`);
          const e = await signalAndWait(child);
          expect(e.ms, `${c.name} exited ${e.ms} ms after SIGTERM`).toBeLessThan(BOUND_MS);
          expect(e.code).toBe(SIGNAL_CODE[c.name] ?? 0);
          const lines = await logLines(log);
          // What was left undone is named in one line (or nothing was).
          const ends = lines.filter((l) => typeof l.msg === 'string' && /^stop(ped| abandoned)/.test(l.msg));
          expect(ends, JSON.stringify(lines.slice(-5))).toHaveLength(1);
          if (c.name === 'device') {
            expect(JSON.stringify(ends[0].undone)).toContain('offline presence (timeout, optional)');
            // Not acknowledged, so no clean DISCONNECT: a real broker sends the last will (offline) instead.
            expect(mute.disconnects).toBe(0);
            await deviceDirConsistent(f, run);
          }
        } finally {
          await mute.close();
        }
      },
      60_000,
    );
  }
});

describe('fleet device', () => {
  it('exits at once on a second signal during a slow stop', async () => {
    const mute = await MuteBroker.start();
    try {
      // A bound of 60 s: only the second signal can make it exit within seconds.
      const { child, run, log, client } = await startCommand(f, command('device'), mute.url, 60);
      await mute.until(muteReady(command('device'), client), 'device ready');
      const first = signalAndWait(child, 'SIGTERM');
      const second = await signalAndWait(child, 'SIGINT', 500);
      await first;
      expect(second.ms).toBeLessThan(SLACK_MS);
      expect(second.code).toBe(130);
      const lines = await logLines(log);
      expect(lines.some((l) => l.msg === 'second signal: exiting at once')).toBe(true);
      await deviceDirConsistent(f, run);
    } finally {
      await mute.close();
    }
  }, 60_000);

  it('exits 0 within the bound while the broker is unreachable', async () => {
    const refusing = await MuteBroker.start({ refuse: true });
    try {
      const { child, run } = await startCommand(f, command('device'), refusing.url);
      await refusing.until((b) => b.connections > 0, 'a connection attempt');
      const e = await signalAndWait(child);
      expect(e.ms).toBeLessThan(BOUND_MS);
      expect(e.code).toBe(0);
      await deviceDirConsistent(f, run);
    } finally {
      await refusing.close();
    }
  }, 60_000);

  it('exits 0 within the bound when SIGTERM comes as its broker is killed', async () => {
    const broker = await brokerProcess(f);
    const clients = await ClientWatch.start(broker.url);
    try {
      const { child, run, client } = await startCommand(f, command('device'), broker.url);
      await clients.until(client);
      const offset = Math.round(Math.random() * 400 - 200);
      const e = await signalAround(child, () => broker.kill('SIGKILL'), offset);
      expect(e.ms, `offset ${offset} ms`).toBeLessThan(BOUND_MS);
      expect(e.code).toBe(0);
      await deviceDirConsistent(f, run);
    } finally {
      await clients.close();
      await broker.stop();
    }
  }, 60_000);
});

describe('a broker that hangs up on the first subscribe', () => {
  for (const name of ['rollout start', 'watch', 'dashboard', 'alerts'])
    it(`${name} waits and subscribes again (instead of exiting 1), and stops on SIGTERM`, async () => {
      const dying = await MuteBroker.start({ hangUpOnSubscribe: 1 });
      try {
        const c = command(name);
        const { child, log, client } = await startCommand(f, c, dying.url);
        // Subscribed again after the hang-up, and going on (rollout start: its status waits for a PUBACK that never comes).
        await dying.until((b) => b.subscribed.length >= 2 && muteReady(c, client)(b), 'a second subscribe', 30_000);
        expect(child.exitCode, `fleet ${name} exited by itself`).toBeNull();
        const e = await signalAndWait(child);
        expect(e.ms).toBeLessThan(BOUND_MS);
        expect(e.code, JSON.stringify(await logLines(log))).toBe(SIGNAL_CODE[name] ?? 0);
      } finally {
        await dying.close();
      }
    }, 60_000);
});

describe('fleet serve', () => {
  it('whose broker hangs up on its first subscribe keeps waiting, and exits 0 on SIGTERM', async () => {
    const dying = await MuteBroker.start({ hangUpOnSubscribe: true });
    try {
      const { child } = await startCommand(f, command('serve'), dying.url);
      await dying.until((b) => b.subscribed.length >= 2, 'two subscribes (one after a reconnect)', 30_000);
      const e = await signalAndWait(child);
      expect(e.ms).toBeLessThan(BOUND_MS);
      expect(e.code).toBe(0);
    } finally {
      await dying.close();
    }
  }, 60_000);

  it('started while its broker is unreachable, waits for it (instead of exiting) and serves once it is up', async () => {
    const port = await freePort();
    const { child, log } = await startCommand(f, command('serve'), `mqtt://127.0.0.1:${port}`);
    await until(
      async () => {
        expect(child.exitCode, 'fleet serve exited').toBeNull();
        return (await logLines(log)).some((l) => l.msg === 'subscribe failed; will retry on reconnect');
      },
      { what: 'fleet serve trying its broker', timeoutMs: 30_000, intervalMs: 100 },
    );
    const broker = await BrokerProcess.start(port, ['--persistence', 'memory', '--no-update-server', '--data-dir', path.join(f.dir, `serve-broker-${port}`)], f.dir);
    try {
      // The upload waits for the update server's receipts: only a subscribed `fleet serve` gives them.
      const r = await publish({ ...f, url: broker.url });
      expect(r.updateId).toMatch(/^[0-9a-f]{32,}$/);
      const e = await signalAndWait(child);
      expect(e.code).toBe(0);
    } finally {
      await broker.stop();
    }
  }, 90_000);
});
