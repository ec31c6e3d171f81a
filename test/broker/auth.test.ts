import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { IClientOptions, MqttClient } from 'mqtt';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { hashPassword, readUsersFile, writeUsersFile, type UserRecord } from '../../broker/users-file.ts';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { loadSigningKey } from '../../publisher/keys.ts';
import { publishUpdate } from '../../publisher/publish.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { createLogger, silentLogger } from '../../util/log.ts';
import { CHUNK, createFixture, GROUP, MODEL, startAgent, StatusWatch, tempDir, topics as t, type Fixture } from '../support/harness.ts';
import { memoryClient } from '../support/memory-stream.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';

const run = promisify(execFile);
const OTHER_GROUP = 'line-2';

/** name -> [role, password, group?] (devices run the harness model). */
const PEOPLE: Record<string, [UserRecord['role'], string, string?]> = {
  pub: ['publisher', 'pub-secret'],
  op: ['operator', 'op-secret'],
  srv: ['server', 'srv-secret'],
  'dev-a': ['device', 'a-secret', GROUP],
  'dev-b': ['device', 'b-secret', GROUP],
  'dev-c': ['device', 'c-secret', OTHER_GROUP],
};
let records: UserRecord[] = [];

beforeAll(async () => {
  records = await Promise.all(
    Object.entries(PEOPLE).map(async ([name, [role, pw, group]]): Promise<UserRecord> => ({
      name,
      role,
      ...(group ? { group, model: MODEL } : {}),
      ...(await hashPassword(pw)),
    })),
  );
});

interface Ctx {
  dir: string;
  file: string;
  broker: RunningBroker;
  logs: Array<Record<string, unknown>>;
  peers: Peer[];
  fixture?: Fixture;
}
let ctx: Ctx | undefined;

async function setup(opts: { updateServer?: boolean; dir?: string } = {}): Promise<Ctx> {
  const dir = opts.dir ?? (await tempDir('auth'));
  const file = path.join(dir, 'users.json');
  await writeUsersFile(file, { users: records });
  const logs: Array<Record<string, unknown>> = [];
  const log = createLogger('broker', 'debug', (l) => logs.push(JSON.parse(l) as Record<string, unknown>));
  const broker = await startBroker({
    port: 0,
    dataDir: path.join(dir, 'broker'),
    persistence: 'memory',
    log,
    updateServer: opts.updateServer ?? false,
    auth: file,
    authPollMs: 100,
  });
  ctx = { dir, file, broker, logs, peers: [] };
  return ctx;
}

afterEach(async () => {
  if (!ctx) return;
  const c = ctx;
  ctx = undefined;
  for (const p of c.peers) await p.end();
  await c.fixture?.close();
  await c.broker.close();
  await fs.rm(c.dir, { recursive: true, force: true });
});

interface Msg {
  topic: string;
  payload: string;
  retain: boolean;
}

/**
 * A raw MQTT 3.1.1 client that never reconnects, so refusals and disconnects show. It talks to the
 * broker's Aedes over an in-memory stream (test/support/memory-stream.ts): what these tests check is
 * the login, the ACL and the users file, for which a socket adds nothing. The full flow below (agent
 * processes, the update server) and the broker without --auth stay on real TCP.
 */
class Peer {
  readonly msgs: Msg[] = [];
  readonly closed: Promise<void>;
  constructor(readonly c: MqttClient) {
    c.on('message', (topic, payload, packet) => this.msgs.push({ topic, payload: payload.toString(), retain: packet.retain }));
    this.closed = new Promise((r) => c.once('close', () => r()));
  }
  /** Granted QoS per filter (128 = refused). */
  sub(filters: string | string[]): Promise<number[]> {
    return new Promise((resolve, reject) => this.c.subscribe(filters, { qos: 1 }, (err, _g, packet) => (packet ? resolve(packet.granted as number[]) : reject(err ?? new Error('no suback')))));
  }
  async pub(topic: string, payload: string, retain = false): Promise<void> {
    await this.c.publishAsync(topic, payload, { qos: 1, retain });
  }
  /** Publishes and resolves when the broker drops the connection (a refused publish). */
  async pubRefused(topic: string, payload: string, retain = false): Promise<void> {
    this.c.publish(topic, payload, { qos: 1, retain }, () => undefined);
    await within(this.closed, 5000, `the broker did not drop the client after publishing on ${topic}`);
  }
  waitFor(pred: (m: Msg) => boolean, ms = 5000): Promise<Msg> {
    return until(() => this.msgs.find(pred), { what: 'a matching message', timeoutMs: ms, intervalMs: 20, context: () => `got ${JSON.stringify(this.msgs)}` });
  }
  end(): Promise<void> {
    return new Promise((r) => this.c.end(true, {}, () => r()));
  }
}

type Login = { ok: true; peer: Peer } | { ok: false; code: number | undefined };

function login(user: string | undefined, opts: { password?: string; clientId?: string; will?: IClientOptions['will'] } = {}): Promise<Login> {
  const password = opts.password ?? (user ? PEOPLE[user]?.[1] : undefined);
  const clientId = opts.clientId ?? (user && PEOPLE[user]?.[0] === 'device' ? `fleet-device-${user}` : `test-${user ?? 'anon'}-${Math.random().toString(36).slice(2, 8)}`);
  return new Promise((resolve) => {
    const c = memoryClient(ctx!.broker.aedes, {
      protocolVersion: 4,
      clientId,
      username: user,
      password,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      clean: true,
      will: opts.will,
    });
    c.once('connect', () => {
      const peer = new Peer(c);
      ctx!.peers.push(peer);
      resolve({ ok: true, peer });
    });
    c.once('error', (e) => {
      c.end(true);
      resolve({ ok: false, code: (e as Error & { code?: number }).code });
    });
    c.once('close', () => resolve({ ok: false, code: undefined }));
  });
}

async function peer(user: string, opts: Parameters<typeof login>[1] = {}): Promise<Peer> {
  const r = await login(user, opts);
  if (!r.ok) throw new Error(`${user} could not log in (return code ${r.code})`);
  return r.peer;
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(what)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

const warnings = (msg: string): Array<Record<string, unknown>> => ctx!.logs.filter((l) => l.level === 'warn' && l.msg === msg);

describe('broker with --auth', () => {
  it('refuses anonymous clients (5), wrong passwords and unknown users (4), and logs each refusal', async () => {
    await setup();
    expect(await login(undefined)).toEqual({ ok: false, code: 5 });
    expect(await login('op', { password: 'wrong' })).toEqual({ ok: false, code: 4 });
    expect(await login('nobody', { password: 'op-secret' })).toEqual({ ok: false, code: 4 });
    expect(await login('dev-a', { password: 'b-secret' })).toEqual({ ok: false, code: 4 });
    expect((await login('op')).ok).toBe(true);
    const refusals = warnings('connection refused');
    expect(refusals.map((l) => [l.user, l.returnCode])).toEqual([
      [null, 5],
      ['op', 4],
      ['nobody', 4],
      ['dev-a', 4],
    ]);
    expect(JSON.stringify(ctx!.logs)).not.toMatch(/secret|wrong/);
  });

  it("a device must connect as fleet-device-{name}; nobody else may take that id or the update server's", async () => {
    await setup();
    expect(await login('dev-a', { clientId: 'dev-a' })).toEqual({ ok: false, code: 5 });
    expect(await login('dev-a', { clientId: 'fleet-device-dev-b' })).toEqual({ ok: false, code: 5 });
    expect(await login('op', { clientId: 'fleet-device-dev-a' })).toEqual({ ok: false, code: 5 });
    expect(await login('srv', { clientId: ctx!.broker.auth!.internalCredential.clientId })).toEqual({ ok: false, code: 5 });
    // A will on another device's presence is refused at connect; on its own it is fine.
    expect(await login('dev-a', { will: { topic: t.presence('dev-b'), payload: Buffer.from('offline'), qos: 1, retain: true } })).toEqual({ ok: false, code: 5 });
    expect((await login('dev-a', { will: { topic: t.presence('dev-a'), payload: Buffer.from('offline'), qos: 1, retain: true } })).ok).toBe(true);
    expect(warnings('connection refused').map((l) => l.client)).toEqual(['dev-a', 'fleet-device-dev-b', 'fleet-device-dev-a', expect.stringMatching(/^fleet-update-server-/), 'fleet-device-dev-a']);
  });

  it("a device publishing another device's status is cut off, and the operator never sees it", async () => {
    await setup();
    const op = await peer('op');
    expect(await op.sub(t.allStatuses())).toEqual([1]);
    const a = await peer('dev-a');
    await a.pubRefused(t.status('dev-b'), 'forged', true);
    const b = await peer('dev-b');
    // A status names its device, group and model (broker/status-claims.ts holds them to the login).
    const real = (d: string): string => JSON.stringify({ device: d, group: GROUP, model: MODEL, state: 'idle' });
    await b.pub(t.status('dev-b'), real('dev-b'), true);
    const a2 = await peer('dev-a');
    await a2.pub(t.status('dev-a'), real('dev-a'), true);
    await op.waitFor((m) => m.payload === real('dev-b'));
    await op.waitFor((m) => m.payload === real('dev-a'));
    await expectNoEventWithin(200, () => op.msgs[2], 'a third status reaching the operator (the forged one)');
    expect(op.msgs.map((m) => m.payload).sort()).toEqual([real('dev-a'), real('dev-b')]);
    // Nor was it retained.
    const op2 = await peer('op');
    await op2.sub(t.status('dev-b'));
    await op2.waitFor((m) => m.retain);
    expect(op2.msgs.map((m) => m.payload)).toEqual([real('dev-b')]);
    expect(warnings('publish refused')).toEqual([expect.objectContaining({ client: 'fleet-device-dev-a', user: 'dev-a', topic: t.status('dev-b'), reason: 'other-device' })]);
  });

  it("a device subscribing to another group's release, another device's frames, # or $SYS gets nothing", async () => {
    await setup();
    const pub = await peer('pub');
    await pub.pub(t.release(OTHER_GROUP, MODEL), 'release-line-2', true);
    const a = await peer('dev-a');
    const bad = [t.release(OTHER_GROUP, MODEL), '#', t.allReleases(), t.framesFor(MODEL, 'dev-b'), '$SYS/#', t.allStatuses()];
    expect(await a.sub(bad)).toEqual(bad.map(() => 128));
    expect(await a.sub([t.release(GROUP, MODEL), t.framesFor(MODEL, 'dev-a')])).toEqual([1, 1]);
    const srv = await peer('srv');
    await srv.pub(t.frames(MODEL, 'u1', 'dev-b'), 'frame-for-b');
    await pub.pub(t.release(OTHER_GROUP, MODEL), 'release-line-2-again', true);
    await pub.pub(t.release(GROUP, MODEL), 'release-line-1', true);
    await srv.pub(t.frames(MODEL, 'u1', 'dev-a'), 'frame-for-a');
    await a.waitFor((m) => m.payload === 'release-line-1');
    await a.waitFor((m) => m.payload === 'frame-for-a');
    await expectNoEventWithin(200, () => a.msgs[2], "a third message reaching dev-a (another group's release or device's frame)");
    expect(a.msgs.map((m) => m.payload).sort()).toEqual(['frame-for-a', 'release-line-1']);
    const refused = warnings('subscribe refused');
    expect(refused.map((l) => [l.topic, l.reason])).toEqual([
      [t.release(OTHER_GROUP, MODEL), 'other-group'],
      ['#', 'multi-level-wildcard'],
      [t.allReleases(), 'wildcard-not-allowed'],
      [t.framesFor(MODEL, 'dev-b'), 'other-device'],
      ['$SYS/#', 'sys-topic'],
      [t.allStatuses(), 'wildcard-not-allowed'],
    ]);
    expect(refused.every((l) => l.client === 'fleet-device-dev-a' && l.user === 'dev-a')).toBe(true);
  });

  it('a device publishing a release or an upload is refused, and nothing reaches the subscribers', async () => {
    await setup();
    const pub = await peer('pub');
    expect(await pub.sub(t.release(GROUP, MODEL))).toEqual([1]);
    const srv = await peer('srv');
    expect(await srv.sub([t.allUploads(), t.allReleases()])).toEqual([1, 1]);
    await (await peer('dev-a')).pubRefused(t.release(GROUP, MODEL), 'forged-release', true);
    await (await peer('dev-a')).pubRefused(t.upload(MODEL, 'u1'), 'forged-upload');
    // Also not as a will: the connection is refused outright.
    expect(await login('dev-a', { will: { topic: t.release(GROUP, MODEL), payload: Buffer.from('will-release'), qos: 1, retain: true } })).toEqual({ ok: false, code: 5 });
    await pub.pub(t.upload(MODEL, 'u2'), 'real-upload');
    await pub.pub(t.release(GROUP, MODEL), 'real-release', true);
    await srv.waitFor((m) => m.payload === 'real-upload');
    await srv.waitFor((m) => m.payload === 'real-release');
    await pub.waitFor((m) => m.payload === 'real-release');
    await expectNoEventWithin(200, () => srv.msgs[2] ?? pub.msgs[1], 'a refused release or upload reaching a subscriber');
    expect(srv.msgs.map((m) => m.payload).sort()).toEqual(['real-release', 'real-upload']);
    expect(pub.msgs.map((m) => m.payload)).toEqual(['real-release']);
    expect(warnings('publish refused').map((l) => [l.topic, l.reason])).toEqual([
      [t.release(GROUP, MODEL), 'role-not-allowed'],
      [t.upload(MODEL, 'u1'), 'role-not-allowed'],
    ]);
  });

  it('a device removed from the file (`fleet user remove`) is disconnected at once and cannot reconnect', async () => {
    await setup();
    const a = await peer('dev-a', { will: { topic: t.presence('dev-a'), payload: Buffer.from('offline'), qos: 1, retain: true } });
    const b = await peer('dev-b');
    await run(process.execPath, [FLEET_BIN, 'user', 'remove', 'dev-a', '--auth', ctx!.file]);
    await within(a.closed, 3000, 'dev-a was not disconnected');
    expect(await login('dev-a')).toEqual({ ok: false, code: 4 });
    expect(b.c.connected).toBe(true);
    // A removed user's will is not published either.
    expect(warnings('will refused')).toEqual([expect.objectContaining({ user: 'dev-a', topic: t.presence('dev-a'), reason: 'user-removed' })]);
    expect(warnings('disconnecting client')).toEqual([expect.objectContaining({ client: 'fleet-device-dev-a', user: 'dev-a', reason: 'user removed' })]);
  });

  it("a regrouped device is disconnected and comes back with the new group's rights only", async () => {
    await setup();
    const op = await peer('op');
    expect(await op.sub(t.allPresence())).toEqual([1]);
    const b = await peer('dev-b', { will: { topic: t.presence('dev-b'), payload: Buffer.from('offline'), qos: 1, retain: true } });
    expect(await b.sub(t.release(GROUP, MODEL))).toEqual([1]);
    const file = await readUsersFile(ctx!.file);
    await writeUsersFile(ctx!.file, { users: file.users.map((u) => (u.name === 'dev-b' ? { ...u, group: OTHER_GROUP } : u)) });
    await within(b.closed, 3000, 'dev-b was not disconnected');
    const b2 = await peer('dev-b');
    expect(await b2.sub([t.release(GROUP, MODEL), t.release(OTHER_GROUP, MODEL)])).toEqual([128, 1]);
    // Its will (its presence did not move with the group) went out when it was cut off, stamped with the time (docs/protocol.md §8.2).
    await op.waitFor((m) => m.topic === t.presence('dev-b') && /^offline [0-9]+$/.test(m.payload));
    expect(warnings('will refused')).toEqual([]);
  });

  it('a broken users file is not applied: the previous users stay in force', async () => {
    await setup();
    const op = await peer('op');
    await fs.writeFile(ctx!.file, '{"users": [');
    await ctx!.broker.auth!.reload();
    expect(ctx!.logs.some((l) => l.level === 'error' && /not reloaded/.test(String(l.msg)))).toBe(true);
    expect(op.c.connected).toBe(true);
    expect((await login('dev-a')).ok).toBe(true);
  });

  it('the full flow: an agent gets an update published by a publisher user and acks it; the update server uses its internal credential', async () => {
    const fixture = await createFixture('auth-flow', { externalUrl: 'mqtt://127.0.0.1:1' });
    await setup({ updateServer: true, dir: await tempDir('auth-flow-broker') });
    ctx!.fixture = fixture;
    const url = (user: string): string => `mqtt://${user}:${PEOPLE[user][1]}@127.0.0.1:${ctx!.broker.port}`;
    fixture.url = url('op');
    const watch = await StatusWatch.start(fixture);
    fixture.url = url('dev-a');
    await startAgent(fixture, 'dev-a');
    await watch.until('dev-a', (s) => s.state === 'idle');
    const transport = await MqttTransport.connect({ url: url('pub'), clientId: 'test-publisher' }, 10_000);
    try {
      await publishUpdate({
        transport,
        topics: t,
        payloads: [fixture.update.payload],
        keys: [await loadSigningKey(fixture.keyFile)],
        rolloutKeys: [await loadSigningKey(fixture.rolloutKeyFile)],
        model: MODEL,
        group: GROUP,
        chunkSize: CHUNK,
        ttlSeconds: 3600,
        log: silentLogger,
      });
    } finally {
      await transport.close();
    }
    const s = await watch.until('dev-a', (s) => s.state === 'ok');
    expect(s.running).toBe(fixture.update.targetDigest);
    const stats = ctx!.broker.updateServer!.stats;
    expect(stats.uploadsStored).toBeGreaterThanOrEqual(1);
    expect(stats.chunksSent).toBeGreaterThan(3);
    // Legitimate traffic is never refused.
    expect(ctx!.logs.filter((l) => l.level === 'warn')).toEqual([]);
    expect(
      ctx!.logs
        .filter((l) => l.msg === 'client authenticated')
        .map((l) => l.role)
        .sort(),
    ).toEqual(['device', 'operator', 'publisher', 'server']);
  });

  it('a will left from an earlier broker run (no client) is published only for a device, on its own topics', async () => {
    await setup();
    const hook = ctx!.broker.auth!.hooks().authorizePublish;
    const decide = (clientId: string, topic: string): Promise<string | null> =>
      new Promise((r) => hook(null, { cmd: 'publish', topic, payload: Buffer.from('offline'), qos: 1, retain: true, dup: false, clientId } as never, (e) => r(e ? e.message : null)));
    expect(await decide('fleet-device-dev-a', t.presence('dev-a'))).toBeNull();
    expect(await decide('fleet-device-dev-a', t.presence('dev-b'))).toMatch(/other-device/);
    expect(await decide('fleet-device-dev-a', t.release(GROUP, MODEL))).toMatch(/role-not-allowed/);
    expect(await decide('fleet-device-gone', t.presence('gone'))).toMatch(/not-authenticated/);
    expect(await decide('test-op-1', t.rolloutStatus('r1'))).toMatch(/not-authenticated/);
    expect(warnings('stale will refused')).toHaveLength(4);
  });

  it('does not start with a missing or invalid users file', async () => {
    const dir = await tempDir('auth-bad');
    try {
      const base = { port: 0, dataDir: path.join(dir, 'b'), persistence: 'memory' as const, log: silentLogger, updateServer: false };
      await expect(startBroker({ ...base, auth: path.join(dir, 'missing.json') })).rejects.toThrow(/ENOENT/);
      await fs.writeFile(path.join(dir, 'bad.json'), JSON.stringify({ users: [{ name: 'x', role: 'device' }] }));
      await expect(startBroker({ ...base, auth: path.join(dir, 'bad.json') })).rejects.toThrow(/params|group/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe('broker without --auth', () => {
  it('stays open and logs one warning that it is unauthenticated', async () => {
    const dir = await tempDir('noauth');
    const logs: string[] = [];
    const broker = await startBroker({ port: 0, dataDir: dir, persistence: 'memory', log: createLogger('b', 'warn', (l) => logs.push(l)) });
    try {
      const c = await MqttTransport.connect({ url: broker.url, clientId: 'anyone' }, 5000);
      await c.subscribe('#');
      await c.close();
      expect(logs.filter((l) => /unauthenticated/.test(l))).toHaveLength(1);
    } finally {
      await broker.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
