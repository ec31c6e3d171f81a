import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { AlertEvent } from '../../operator/alerts.ts';
import { encodeStatus } from '../../protocol/status.ts';
import { encodeRolloutStatus } from '../../rollout/status.ts';
import { connect, createFixture, spawnFleet, topics, type Fixture } from '../support/harness.ts';
import { D2, rolloutStatus, status } from './helpers.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';

let f: Fixture | undefined;
let server: http.Server | undefined;
afterEach(async () => {
  await f?.close();
  f = undefined;
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  server = undefined;
});

describe('fleet alerts (the command, over Aedes)', () => {
  it('POSTs one event per transition to a local webhook and prints it; retained re-deliveries alert nothing', async () => {
    f = await createFixture('operator-alerts', { updateServer: false });
    const received: AlertEvent[] = [];
    server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        received.push(JSON.parse(body) as AlertEvent);
        res.writeHead(200).end('ok');
      });
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
    const hook = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;

    const t = await connect(f, 'test-fake-devices');
    // Already rolled back before the alerts start: the baseline, not news.
    await t.publish(topics.status('old'), encodeStatus(status('old', { state: 'rolled_back', reason: 'health-check-failed' })), { retain: true });
    const child = spawnFleet(f, 'alerts', ['alerts', '--broker', f.url, '--webhook', hook]);
    let out = '';
    let err = '';
    child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const wait = (pred: () => boolean, what: string): Promise<true> => until(pred, { what, timeoutMs: 15_000, context: () => `stdout:\n${out}\nstderr:\n${err}` });
    await wait(() => err.includes('"watching"'), 'fleet alerts to subscribe');

    await t.publish(topics.status('d1'), encodeStatus(status('d1', { state: 'testing', target: D2, seq: 2 })), { retain: true });
    const rb = status('d1', { state: 'rolled_back', target: D2, seq: 2, reason: 'health-check-failed', message: 'switched back' });
    await t.publish(topics.status('d1'), encodeStatus(rb), { retain: true });
    await t.publish(topics.status('d1'), encodeStatus(rb), { retain: true }); // the same status again
    await t.publish(topics.rolloutStatus('r1'), encodeRolloutStatus(rolloutStatus('r1')), { retain: true });
    await t.publish(topics.rolloutStatus('r1'), encodeRolloutStatus(rolloutStatus('r1', { state: 'halted', reason: 'failure threshold' })), { retain: true });
    await wait(() => received.length >= 2, 'two webhook POSTs');
    await expectNoEventWithin(300, () => received[2], 'a third webhook POST (the repeated status must not alert again)');
    expect(received.map((e) => [e.type, e.device ?? e.rollout, e.reason])).toEqual([
      ['device-rolled-back', 'd1', 'health-check-failed'],
      ['rollout-halted', 'r1', 'failure threshold'],
    ]);
    expect(
      out
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as AlertEvent).type),
    ).toEqual(['device-rolled-back', 'rollout-halted']);
  });
});
