import { describe, expect, it } from 'vitest';
import { Acl, type AclAction, type AclReason, type Principal } from '../../broker/acl.ts';
import { Topics } from '../../protocol/topics.ts';

const t = new Topics();
const acl = new Acl(t);

const devA: Principal = { name: 'dev-a', role: 'device', group: 'line-1', model: 'm1' };
const server: Principal = { name: 'srv', role: 'server' };
const publisher: Principal = { name: 'pub', role: 'publisher' };
const operator: Principal = { name: 'op', role: 'operator' };
const rollout: Principal = { name: 'ctl', role: 'rollout' };

type Row = [who: Principal, action: AclAction, topic: string, expected: 'allow' | AclReason];

const rows: Row[] = [
  // A device: its own status, presence and requests; its release and its frames.
  [devA, 'publish', t.status('dev-a'), 'allow'],
  [devA, 'publish', t.presence('dev-a'), 'allow'],
  [devA, 'publish', t.request('m1', 'u-123', 'dev-a'), 'allow'],
  [devA, 'subscribe', t.release('line-1', 'm1'), 'allow'],
  [devA, 'subscribe', t.framesFor('m1', 'dev-a'), 'allow'],
  [devA, 'subscribe', t.frames('m1', 'u-123', 'dev-a'), 'allow'],
  [devA, 'publish', t.status('dev-b'), 'other-device'],
  [devA, 'publish', t.presence('dev-b'), 'other-device'],
  [devA, 'publish', t.request('m1', 'u-123', 'dev-b'), 'other-device'],
  [devA, 'publish', t.request('m2', 'u-123', 'dev-a'), 'other-model'],
  [devA, 'publish', t.release('line-1', 'm1'), 'role-not-allowed'],
  [devA, 'publish', t.upload('m1', 'u-123'), 'role-not-allowed'],
  [devA, 'publish', t.uploadReceipt('m1', 'u-123'), 'role-not-allowed'],
  [devA, 'publish', t.frames('m1', 'u-123', 'dev-a'), 'role-not-allowed'],
  [devA, 'publish', t.rolloutStatus('r1'), 'role-not-allowed'],
  [devA, 'publish', '$SYS/broker/new/clients', 'sys-topic'],
  [devA, 'publish', 'something/else', 'unknown-topic'],
  [devA, 'subscribe', t.release('line-2', 'm1'), 'other-group'],
  [devA, 'subscribe', t.release('line-1', 'm2'), 'other-model'],
  [devA, 'subscribe', t.allReleases(), 'wildcard-not-allowed'],
  [devA, 'subscribe', t.framesFor('m1', 'dev-b'), 'other-device'],
  [devA, 'subscribe', t.framesFor('m2', 'dev-a'), 'other-model'],
  [devA, 'subscribe', 'fleet/models/m1/updates/+/to/+', 'wildcard-not-allowed'],
  // Manifests and the trust file (TUF roles): devices read the trust file only; publishers write both.
  [devA, 'subscribe', t.trust(), 'allow'],
  [devA, 'publish', t.trust(), 'role-not-allowed'],
  [devA, 'publish', t.manifest('m1', 'ab'.repeat(32)), 'role-not-allowed'],
  [devA, 'subscribe', t.manifests('m1'), 'role-not-allowed'],
  [publisher, 'publish', t.manifest('m1', 'ab'.repeat(32)), 'allow'],
  [publisher, 'publish', t.trust(), 'allow'],
  [publisher, 'subscribe', t.manifests('m1'), 'allow'],
  [rollout, 'subscribe', t.manifests('m1'), 'allow'],
  [rollout, 'publish', t.trust(), 'role-not-allowed'],
  [operator, 'subscribe', t.manifests('m1'), 'allow'],
  [operator, 'publish', t.manifest('m1', 'ab'.repeat(32)), 'role-not-allowed'],
  [server, 'publish', t.manifest('m1', 'ab'.repeat(32)), 'role-not-allowed'],
  [devA, 'subscribe', '#', 'multi-level-wildcard'],
  [devA, 'subscribe', 'fleet/#', 'multi-level-wildcard'],
  [devA, 'subscribe', 'fleet/devices/dev-a/#', 'multi-level-wildcard'],
  [devA, 'subscribe', '$SYS/#', 'sys-topic'],
  [devA, 'subscribe', 'fleet/devices/dev-a/+', 'unknown-topic'],
  // Its own retained status (the session guard); no other device's, no wildcard.
  [devA, 'subscribe', t.status('dev-a'), 'allow'],
  [devA, 'subscribe', t.status('dev-b'), 'other-device'],
  [devA, 'subscribe', t.allRequests(), 'role-not-allowed'],
  [devA, 'subscribe', t.allStatuses(), 'wildcard-not-allowed'],
  // The update server: requests, uploads, releases in; frames, receipts, releases out.
  [server, 'subscribe', t.allRequests(), 'allow'],
  [server, 'subscribe', t.allUploads(), 'allow'],
  [server, 'subscribe', t.allReleases(), 'allow'],
  [server, 'publish', t.frames('m1', 'u-123', 'dev-a'), 'allow'],
  [server, 'publish', t.uploadReceipt('m1', 'u-123'), 'allow'],
  [server, 'publish', t.release('line-1', 'm1'), 'allow'],
  [server, 'publish', t.status('dev-a'), 'role-not-allowed'],
  [server, 'publish', t.request('m1', 'u-123', 'dev-a'), 'role-not-allowed'],
  [server, 'subscribe', t.allStatuses(), 'role-not-allowed'],
  [server, 'subscribe', '#', 'multi-level-wildcard'],
  // The publisher: uploads and releases out; receipts and releases in.
  [publisher, 'publish', t.upload('m1', 'u-123'), 'allow'],
  [publisher, 'publish', t.release('line-1', 'm1'), 'allow'],
  [publisher, 'subscribe', t.uploadReceipt('m1', 'u-123'), 'allow'],
  [publisher, 'subscribe', t.release('line-1', 'm1'), 'allow'],
  [publisher, 'publish', t.frames('m1', 'u-123', 'dev-a'), 'role-not-allowed'],
  [publisher, 'publish', t.status('dev-a'), 'role-not-allowed'],
  [publisher, 'subscribe', t.allRequests(), 'role-not-allowed'],
  [publisher, 'subscribe', t.framesFor('m1', 'dev-a'), 'role-not-allowed'],
  // The operator: statuses, presence, rollouts and releases in; rollouts and releases (rollback) out.
  [operator, 'subscribe', t.allStatuses(), 'allow'],
  [operator, 'subscribe', t.allPresence(), 'allow'],
  [operator, 'subscribe', 'fleet/rollouts/+/status', 'allow'],
  [operator, 'subscribe', t.allReleases(), 'allow'],
  [operator, 'publish', t.rolloutStatus('r1'), 'allow'],
  [operator, 'publish', t.release('line-1', 'm1'), 'allow'],
  [operator, 'publish', t.status('dev-a'), 'role-not-allowed'],
  [operator, 'publish', t.upload('m1', 'u-123'), 'role-not-allowed'],
  [operator, 'subscribe', t.allRequests(), 'role-not-allowed'],
  [operator, 'subscribe', 'fleet/+/dev-a/status', 'unknown-topic'],
  [operator, 'subscribe', '+/devices/+/status', 'unknown-topic'],
  [operator, 'publish', t.rolloutControl('r1'), 'allow'],
  // The rollout controller: uploads and releases like a publisher, watches the fleet, takes commands.
  [rollout, 'publish', t.upload('m1', 'u-123'), 'allow'],
  [rollout, 'publish', t.release('line-1', 'm1'), 'allow'],
  [rollout, 'publish', t.rolloutStatus('r1'), 'allow'],
  [rollout, 'subscribe', t.rolloutControl('r1'), 'allow'],
  [rollout, 'subscribe', t.allStatuses(), 'allow'],
  [rollout, 'subscribe', t.allPresence(), 'allow'],
  [rollout, 'subscribe', t.uploadReceipt('m1', 'u-123'), 'allow'],
  [rollout, 'publish', t.status('dev-a'), 'role-not-allowed'],
  [rollout, 'subscribe', t.allRequests(), 'role-not-allowed'],
  [rollout, 'publish', t.frames('m1', 'u-123', 'dev-a'), 'role-not-allowed'],
];

const who = (p: Principal): string => `${p.role} ${p.name}`;

describe('broker ACL', () => {
  it('has a table of at least 25 decisions', () => expect(rows.length).toBeGreaterThanOrEqual(25));

  it.each(rows.map((r) => [who(r[0]), r[1], r[2], r[3], r[0]] as const))('%s %s %s -> %s', (_w, action, topic, expected, p) => {
    const d = acl.check(p, action, topic);
    expect(d).toEqual(expected === 'allow' ? { allowed: true } : { allowed: false, reason: expected });
  });

  it('a device without group or model gets nothing', () => {
    const broken: Principal = { name: 'dev-x', role: 'device' };
    expect(acl.publish(broken, t.status('dev-x'))).toEqual({ allowed: false, reason: 'invalid-principal' });
    expect(acl.subscribe(broken, t.release('g', 'm'))).toEqual({ allowed: false, reason: 'invalid-principal' });
  });

  it('an unknown role gets nothing', () => {
    const weird = { name: 'x', role: 'admin' } as unknown as Principal;
    expect(acl.subscribe(weird, t.allStatuses())).toEqual({ allowed: false, reason: 'invalid-principal' });
    expect(acl.publish(weird, t.release('g', 'm'))).toEqual({ allowed: false, reason: 'invalid-principal' });
  });

  it('a literal level equal to the wildcard placeholder is still a literal', () => {
    const d: Principal = { name: '_any_', role: 'device', group: 'g', model: 'm' };
    expect(acl.subscribe(d, t.framesFor('m', '_any_'))).toEqual({ allowed: true });
    expect(acl.subscribe(d, 'fleet/models/m/updates/+/to/+')).toEqual({ allowed: false, reason: 'wildcard-not-allowed' });
  });

  it('follows the topic prefix', () => {
    const other = new Acl(new Topics('site-7/fleet'));
    expect(other.publish(devA, 'site-7/fleet/devices/dev-a/status')).toEqual({ allowed: true });
    expect(other.publish(devA, t.status('dev-a'))).toEqual({ allowed: false, reason: 'unknown-topic' });
  });
});
