import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Acl, type Principal } from '../../broker/acl.ts';
import { DiskQueue } from '../../gateway/queue.ts';
import { releaseNeeds } from '../../gateway/release-needs.ts';
import { Topics } from '../../protocol/topics.ts';
import { ownAfterEach } from '../support/cleanup.ts';

const own = ownAfterEach();

const msg = (n: number): { topic: string; payload: Uint8Array; retain: boolean } => ({ topic: `fleet/devices/d${n % 3}/status`, payload: new TextEncoder().encode(`{"n":${n}}`), retain: n % 2 === 0 });

describe('the relay queue on disk', () => {
  it('keeps order, survives a reopen, and forgets only what was acknowledged', async () => {
    const dir = await own.tempDir('fleet-gwq-');
    const q = new DiskQueue(dir);
    await q.open();
    for (let n = 1; n <= 5; n++) await q.push(msg(n));
    await q.ack(2);
    expect(q.peek(10).map((m) => m.topic)).toEqual([3, 4, 5].map((n) => msg(n).topic));
    await q.close();

    const q2 = new DiskQueue(dir);
    await q2.open();
    expect(q2.length).toBe(3);
    expect(q2.peek(10)).toEqual([3, 4, 5].map((n) => msg(n)));
    await q2.push(msg(6));
    await q2.ack(4);
    expect(q2.length).toBe(0);
    // Everything delivered: the log is emptied.
    expect((await fs.stat(path.join(dir, 'queue.log'))).size).toBe(0);
    await q2.push(msg(7));
    await q2.close();

    const q3 = new DiskQueue(dir);
    await q3.open();
    expect(q3.peek(10)).toEqual([msg(7)]);
    await q3.close();
  });

  it('drops a torn last line (a power cut mid-append) and keeps the rest', async () => {
    const dir = await own.tempDir('fleet-gwq-');
    const q = new DiskQueue(dir);
    await q.open();
    await q.push(msg(1));
    await q.push(msg(2));
    await q.close();
    await fs.appendFile(path.join(dir, 'queue.log'), '{"t":"fleet/devi');
    const q2 = new DiskQueue(dir);
    await q2.open();
    expect(q2.peek(10)).toEqual([msg(1), msg(2)]);
    await q2.push(msg(3));
    await q2.close();
    const q3 = new DiskQueue(dir);
    await q3.open();
    expect(q3.peek(10)).toEqual([msg(1), msg(2), msg(3)]);
    await q3.close();
  });
});

describe('gateway role in the broker ACL', () => {
  const t = new Topics();
  const acl = new Acl(t);
  const gw: Principal = { name: 'gw-site-a', role: 'gateway' };
  it('relays statuses and presence, fetches like a device, publishes its status; nothing more', () => {
    const allow = (a: 'publish' | 'subscribe', topic: string): boolean => acl.check(gw, a, topic).allowed;
    expect(allow('publish', t.status('any-device'))).toBe(true);
    expect(allow('publish', t.presence('any-device'))).toBe(true);
    expect(allow('publish', t.request('m', '0011', 'gw-site-a'))).toBe(true);
    expect(allow('publish', t.gatewayStatus('site-a'))).toBe(true);
    expect(allow('subscribe', t.release('g', 'm'))).toBe(true);
    expect(allow('subscribe', t.groupReleases('g'))).toBe(true);
    expect(allow('subscribe', t.framesFor('m', 'gw-site-a'))).toBe(true);
    expect(allow('subscribe', t.trust())).toBe(true);
    expect(allow('publish', t.release('g', 'm'))).toBe(false);
    expect(allow('publish', t.upload('m', '0011'))).toBe(false);
    expect(allow('publish', t.rolloutControl('r'))).toBe(false);
    expect(allow('subscribe', t.allStatuses())).toBe(false);
    expect(allow('subscribe', t.allRequests())).toBe(false);
    // Operators and viewers may watch gateways.
    expect(acl.check({ name: 'op', role: 'operator' }, 'subscribe', t.allGatewayStatuses()).allowed).toBe(true);
    expect(acl.check({ name: 'v', role: 'viewer' }, 'subscribe', t.gatewayStatus('site-a')).allowed).toBe(true);
    expect(acl.check({ name: 'd', role: 'device', group: 'g', model: 'm' }, 'publish', t.gatewayStatus('site-a')).allowed).toBe(false);
  });

  it('the gateway reads a release in one place; junk throws', () => {
    expect(() => releaseNeeds(new Uint8Array([1, 2, 3]))).toThrow();
  });
});
