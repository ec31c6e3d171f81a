import { promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AlertSink, AlertTracker, watchAlerts, type AlertEvent } from '../../operator/alerts.ts';
import { silentLogger } from '../../util/log.ts';
import { clockedView, D2, presenceMsg, rolloutMsg, rolloutStatus, status, statusMsg, T0, topics } from './helpers.ts';

function setup(alertExisting = false) {
  const { view, clock } = clockedView();
  const events: AlertEvent[] = [];
  watchAlerts(view, new AlertTracker({ alertExisting, now: () => clock.t }), (e) => events.push(e));
  return { view, clock, events };
}

const rolledBack = status('d1', { state: 'rolled_back', target: D2, seq: 4, reason: 'health-check-failed', message: 'switched back' });

describe('alerts: once per transition', () => {
  it('alerts a rollback once, not on re-delivery or a re-published identical status', () => {
    const { view, events } = setup();
    view.handle(...statusMsg(status('d1', { state: 'testing', target: D2, seq: 4 })), false);
    view.handle(...statusMsg(rolledBack), false);
    view.handle(...statusMsg(rolledBack), true); // retained re-delivery (a reconnect)
    view.handle(...statusMsg({ ...rolledBack, time: new Date(T0 + 5000).toISOString() }), false); // same incident, re-published
    expect(events).toEqual([{ type: 'device-rolled-back', device: 'd1', group: 'line-1', reason: 'health-check-failed', message: 'switched back', time: new Date(T0).toISOString() }]);
    // A new transition is a new alert.
    view.handle(...statusMsg(status('d1', { state: 'downloading', target: D2, seq: 5 })), false);
    view.handle(...statusMsg(status('d1', { state: 'rejected', target: D2, seq: 5, reason: 'bad-signature' })), false);
    view.handle(...statusMsg(status('d1', { state: 'failed', target: D2, seq: 5, reason: 'no-space' })), false);
    expect(events.map((e) => `${e.type} ${e.reason}`)).toEqual(['device-rolled-back health-check-failed', 'device-rejected bad-signature', 'device-failed no-space']);
  });

  it('what the retained statuses show at start is the baseline (unless alertExisting)', () => {
    const quiet = setup();
    quiet.view.handle(...presenceMsg('d1', 'offline'), true);
    quiet.view.handle(...statusMsg(rolledBack), true);
    quiet.view.handle(...rolloutMsg(rolloutStatus('r1', { state: 'halted' })), true);
    expect(quiet.events).toEqual([]);
    // ...but a change that arrives retained after a reconnect, for a device already known, is news.
    quiet.view.handle(...statusMsg(status('d1', { state: 'rejected', seq: 5, reason: 'expired' })), true);
    expect(quiet.events.map((e) => e.type)).toEqual(['device-rejected']);

    const loud = setup(true);
    loud.view.handle(...statusMsg(rolledBack), true);
    loud.view.handle(...presenceMsg('d1', 'offline'), true);
    loud.view.handle(...rolloutMsg(rolloutStatus('r1', { state: 'halted', reason: 'too many failures' })), true);
    expect(loud.events.map((e) => e.type)).toEqual(['device-rolled-back', 'device-offline', 'rollout-halted']);
    expect(loud.events[2]).toMatchObject({ rollout: 'r1', reason: 'too many failures', group: 'canary' });
  });

  it('device-offline on presence going offline and when a device mid-update goes silent', () => {
    const { view, clock, events } = setup();
    view.handle(...statusMsg(status('d1', { state: 'downloading' })), true);
    view.handle(...presenceMsg('d1', 'online'), true);
    view.handle(...presenceMsg('d1', 'offline'), false);
    view.handle(...presenceMsg('d1', 'offline'), true);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ type: 'device-offline', device: 'd1', reason: 'presence-offline' });
    view.handle(...presenceMsg('d1', 'online'), false);
    clock.t += 61_000;
    view.refresh();
    view.refresh();
    expect(events.map((e) => `${e.type} ${e.reason}`)).toEqual(['device-offline presence-offline', 'device-offline silent']);
  });

  it('rollout-halted and rollout-completed once each', () => {
    const { view, events } = setup();
    view.handle(...rolloutMsg(rolloutStatus('r1')), true);
    view.handle(...rolloutMsg(rolloutStatus('r1', { state: 'rolling_back' })), false);
    const halted = rolloutStatus('r1', { state: 'halted', reason: 'failure threshold crossed' });
    view.handle(...rolloutMsg(halted), false);
    view.handle(...rolloutMsg(halted), true);
    view.handle(...rolloutMsg({ ...halted, updated: new Date(T0 + 10_000).toISOString() }), false);
    view.handle(...rolloutMsg(rolloutStatus('r2')), false);
    view.handle(...rolloutMsg(rolloutStatus('r2', { state: 'completed', wave: 1 })), false);
    expect(events.map((e) => `${e.type} ${e.rollout}`)).toEqual(['rollout-halted r1', 'rollout-completed r2']);
    expect(events[0]).toMatchObject({ reason: 'failure threshold crossed', message: 'published: release seq 3 published' });
  });
});

describe('alerts: delivery', () => {
  let server: http.Server | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
    if (dir) await fs.rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('POSTs each event to the webhook (retrying a 5xx) and runs the command with FLEET_EVENT and stdin', async () => {
    const received: Array<{ method: string; type: string; body: AlertEvent }> = [];
    let fails = 1;
    server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        if (fails-- > 0) {
          res.writeHead(503).end();
          return;
        }
        received.push({ method: req.method!, type: String(req.headers['content-type']), body: JSON.parse(body) as AlertEvent });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-alerts-'));
    const envFile = path.join(dir, 'env.jsonl');
    const stdinFile = path.join(dir, 'stdin.jsonl');
    const command = `printf '%s\\n' "$FLEET_EVENT_TYPE $FLEET_EVENT" >> '${envFile}'; cat >> '${stdinFile}'`;
    const sink = new AlertSink({ command, webhook: url, log: silentLogger, retryMs: 10 });

    const { view, events } = setup();
    watchAlerts(view, new AlertTracker({ now: () => T0 }), (e) => void sink.send(e));
    view.handle(...statusMsg(status('d1', { state: 'testing', target: D2, seq: 4 })), false);
    view.handle(...statusMsg(rolledBack), false);
    view.handle(...rolloutMsg(rolloutStatus('r1')), false);
    view.handle(...rolloutMsg(rolloutStatus('r1', { state: 'halted' })), false);
    await sink.idle();

    expect(events).toHaveLength(2);
    expect(received.map((r) => r.body)).toEqual(events);
    expect(received[0]).toMatchObject({ method: 'POST', type: 'application/json' });
    const envLines = (await fs.readFile(envFile, 'utf8')).trim().split('\n');
    expect(envLines.map((l) => l.slice(0, l.indexOf(' ')))).toEqual(['device-rolled-back', 'rollout-halted']);
    expect(JSON.parse(envLines[0].slice(envLines[0].indexOf(' ') + 1))).toEqual(events[0]);
    const stdinLines = (await fs.readFile(stdinFile, 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as AlertEvent);
    expect(stdinLines).toEqual(events);
  });

  it('a webhook that is down does not stop later events', async () => {
    server = http.createServer();
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as AddressInfo).port;
    await new Promise<void>((r) => server!.close(() => r()));
    server = undefined;
    const sink = new AlertSink({ webhook: `http://127.0.0.1:${port}/`, log: silentLogger, attempts: 2, retryMs: 5 });
    await sink.send({ type: 'device-failed', device: 'd1', time: new Date(T0).toISOString() });
    await expect(sink.idle()).resolves.toBeUndefined();
    expect(topics.prefix).toBe('fleet');
  });
});
