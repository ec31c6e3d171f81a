/**
 * Issue 14, "Also": uploads that never finish. Each user may have at most
 * MAX_OPEN_UPLOADS uploads in progress (a real `fleet broker --auth` process
 * cuts the next one off), and the update server removes an upload that got no
 * chunk for UPLOAD_TTL_MS (hours, not a day) by itself, without `fleet gc`.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { connect, type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_OPEN_UPLOADS } from '../../broker/upload-quota.ts';
import { encodeReceipt } from '../../protocol/frames.ts';
import { hashPassword, writeUsersFile } from '../../broker/users-file.ts';
import { ContentStore, UPLOAD_TTL_MS } from '../../server/content-store.ts';
import { UpdateServer } from '../../server/update-server.ts';
import { silentLogger } from '../../util/log.ts';
import { BrokerProcess } from '../support/broker-process.ts';
import { connect as connectFixture, createFixture, freePort, MODEL, tempDir, topics } from '../support/harness.ts';

let dir: string;
let broker: BrokerProcess;
beforeAll(async () => {
  dir = await tempDir('sec-uploads');
  const users = await Promise.all(
    [
      ['pub', 'publisher'],
      ['pub2', 'publisher'],
      ['pub3', 'publisher'],
      ['srv', 'server'],
    ].map(async ([name, role]) => ({ name, role: role as 'publisher' | 'server', ...(await hashPassword(`${name}-pw`)) })),
  );
  await writeUsersFile(path.join(dir, 'users.json'), { users });
  broker = await BrokerProcess.start(await freePort(), ['--data-dir', path.join(dir, 'broker'), '--no-update-server', '--auth', path.join(dir, 'users.json')], dir);
}, 120_000);
afterAll(async () => {
  await broker?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

const updateId = (i: number): string => i.toString(16).padStart(32, '0');

async function client(user: string): Promise<{ c: MqttClient; closed: () => boolean }> {
  const c = connect(`mqtt://127.0.0.1:${broker.port}`, { clientId: `${user}-${Date.now()}`, username: user, password: `${user}-pw`, reconnectPeriod: 0, protocolVersion: 4 });
  let closed = false;
  c.on('close', () => (closed = true));
  c.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    c.once('connect', () => resolve());
    c.once('error', reject);
  });
  return { c, closed: () => closed };
}

/** Publishes one upload chunk with QoS 1; resolves true when acknowledged, false when the connection closed instead. */
function upload(c: MqttClient, i: number): Promise<boolean> {
  return new Promise((resolve) => {
    const onClose = (): void => resolve(false);
    c.once('close', onClose);
    c.publish(topics.upload(MODEL, updateId(i)), Buffer.from('chunk'), { qos: 1 }, (err) => {
      c.off('close', onClose);
      resolve(!err);
    });
  });
}

describe('uploads that never finish', () => {
  it(`a user may have ${MAX_OPEN_UPLOADS} uploads in progress; the next is cut off; another user is not affected`, async () => {
    const a = await client('pub');
    for (let i = 0; i < MAX_OPEN_UPLOADS; i++) expect(await upload(a.c, i)).toBe(true);
    // More chunks of an upload already open are fine.
    expect(await upload(a.c, 0)).toBe(true);
    expect(await upload(a.c, MAX_OPEN_UPLOADS)).toBe(false);
    expect(a.closed()).toBe(true);
    const b = await client('pub2');
    expect(await upload(b.c, MAX_OPEN_UPLOADS)).toBe(true);
    b.c.end(true);
  }, 60_000);

  it("the update server's receipt that an upload is stored frees its place", async () => {
    const a = await client('pub3');
    for (let i = 100; i < 100 + MAX_OPEN_UPLOADS; i++) expect(await upload(a.c, i)).toBe(true);
    const srv = await client('srv');
    await new Promise<void>((r) => srv.c.publish(topics.uploadReceipt(MODEL, updateId(100)), Buffer.from(encodeReceipt({ updateId: updateId(100), stored: true, count: 1, have: 1, missing: [] })), { qos: 1 }, () => r()));
    expect(await upload(a.c, 100 + MAX_OPEN_UPLOADS)).toBe(true);
    expect(await upload(a.c, 101 + MAX_OPEN_UPLOADS)).toBe(false);
    srv.c.end(true);
  }, 60_000);

  it('the update server removes an upload idle for longer than UPLOAD_TTL_MS (hours) by itself; a fresh one stays', async () => {
    expect(UPLOAD_TTL_MS).toBeLessThanOrEqual(6 * 3600_000);
    const f = await createFixture('sec-upload-ttl');
    try {
      const store = new ContentStore(path.join(f.dir, 'store2'));
      await store.init();
      await store.receiveUpload(MODEL, updateId(1), 0, 2, new Uint8Array(16));
      await store.receiveUpload(MODEL, updateId(2), 0, 2, new Uint8Array(16));
      const old = new Date(Date.now() - UPLOAD_TTL_MS - 60_000);
      await fs.utimes(path.join(f.dir, 'store2', 'uploads', updateId(1)), old, old);
      const server = new UpdateServer({ transport: await connectFixture(f, 'srv-ttl'), store, topics, log: silentLogger });
      await server.start();
      await server.idle();
      await server.stop();
      expect((await fs.readdir(path.join(f.dir, 'store2', 'uploads'))).sort()).toEqual([updateId(2)]);
    } finally {
      await f.close();
    }
  }, 60_000);
});
