import { describe, it, expect } from 'vitest';
import { DEFAULT_PREFIX, Topics, assertSegment, isTopicSegment, type ParsedTopic } from '../../protocol/topics.ts';

const U = '0123456789abcdef0123456789abcdef';
const H = 'ab'.repeat(32);

/** MQTT topic filter matching ('+' one level, '#' the rest), as a broker does it. */
function matches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length) return false;
    if (f[i] !== '+' && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

/** Every concrete (publishable) topic, its exact spelling after the prefix, and what parse must give back. */
function concrete(t: Topics): Array<{ name: string; topic: string; rest: string; parsed: ParsedTopic }> {
  return [
    { name: 'release', topic: t.release('canary', 'resnet18'), rest: 'groups/canary/models/resnet18/release', parsed: { kind: 'release', group: 'canary', model: 'resnet18' } },
    { name: 'request', topic: t.request('resnet18', U, 'dev-1'), rest: `models/resnet18/updates/${U}/get/dev-1`, parsed: { kind: 'request', model: 'resnet18', updateId: U, deviceId: 'dev-1' } },
    { name: 'frames', topic: t.frames('resnet18', U, 'dev-1'), rest: `models/resnet18/updates/${U}/to/dev-1`, parsed: { kind: 'frames', model: 'resnet18', updateId: U, deviceId: 'dev-1' } },
    { name: 'upload', topic: t.upload('resnet18', U), rest: `models/resnet18/updates/${U}/put`, parsed: { kind: 'upload', model: 'resnet18', updateId: U } },
    { name: 'uploadReceipt', topic: t.uploadReceipt('resnet18', U), rest: `models/resnet18/updates/${U}/stored`, parsed: { kind: 'uploadReceipt', model: 'resnet18', updateId: U } },
    { name: 'status', topic: t.status('dev-1'), rest: 'devices/dev-1/status', parsed: { kind: 'status', deviceId: 'dev-1' } },
    { name: 'presence', topic: t.presence('dev-1'), rest: 'devices/dev-1/presence', parsed: { kind: 'presence', deviceId: 'dev-1' } },
    { name: 'rolloutStatus', topic: t.rolloutStatus('r_2024.06'), rest: 'rollouts/r_2024.06/status', parsed: { kind: 'rolloutStatus', rolloutId: 'r_2024.06' } },
    { name: 'rolloutControl', topic: t.rolloutControl('r_2024.06'), rest: 'rollouts/r_2024.06/control', parsed: { kind: 'rolloutControl', rolloutId: 'r_2024.06' } },
    { name: 'manifest', topic: t.manifest('resnet18', H), rest: `models/resnet18/manifests/${H}`, parsed: { kind: 'manifest', model: 'resnet18', hash: H } },
    { name: 'trust', topic: t.trust(), rest: 'trust', parsed: { kind: 'trust' } },
  ];
}

/** Every subscription filter and its exact spelling after the prefix. */
function filters(t: Topics): Array<{ name: string; filter: string; rest: string }> {
  return [
    { name: 'allReleases', filter: t.allReleases(), rest: 'groups/+/models/+/release' },
    { name: 'allRequests', filter: t.allRequests(), rest: 'models/+/updates/+/get/+' },
    { name: 'framesFor', filter: t.framesFor('resnet18', 'dev-1'), rest: 'models/resnet18/updates/+/to/dev-1' },
    { name: 'allUploads', filter: t.allUploads(), rest: 'models/+/updates/+/put' },
    { name: 'allStatuses', filter: t.allStatuses(), rest: 'devices/+/status' },
    { name: 'allPresence', filter: t.allPresence(), rest: 'devices/+/presence' },
    { name: 'allRolloutStatuses', filter: t.allRolloutStatuses(), rest: 'rollouts/+/status' },
    { name: 'manifests', filter: t.manifests('resnet18'), rest: 'models/resnet18/manifests/+' },
  ];
}

describe.each([
  ['default prefix', new Topics(), 'fleet'],
  ['custom prefix', new Topics('acme/fleet'), 'acme/fleet'],
])('%s', (_label, t, prefix) => {
  it('keeps its prefix', () => {
    expect(t.prefix).toBe(prefix);
  });
  it.each(concrete(t).map((c) => [c.name, c] as const))('%s: exact string', (_n, c) => {
    expect(c.topic).toBe(`${prefix}/${c.rest}`);
  });
  it.each(filters(t).map((f) => [f.name, f] as const))('%s: exact filter', (_n, f) => {
    expect(f.filter).toBe(`${prefix}/${f.rest}`);
  });
  it.each(concrete(t).map((c) => [c.name, c] as const))('%s: parse inverts the builder', (_n, c) => {
    expect(t.parse(c.topic)).toEqual(c.parsed);
  });
  it('every concrete topic is wildcard-free and matched by exactly the subscriptions meant for it', () => {
    const want: Record<string, string[]> = {
      release: ['allReleases'],
      request: ['allRequests'],
      frames: ['framesFor'],
      upload: ['allUploads'],
      uploadReceipt: [],
      status: ['allStatuses'],
      presence: ['allPresence'],
      rolloutStatus: ['allRolloutStatuses'],
      rolloutControl: [],
      manifest: ['manifests'],
      trust: [],
    };
    for (const c of concrete(t)) {
      expect(c.topic).not.toMatch(/[+#]/);
      expect(
        filters(t)
          .filter((f) => matches(f.filter, c.topic))
          .map((f) => f.name),
        c.name,
      ).toEqual(want[c.name]);
    }
    // framesFor is per device and model.
    expect(matches(t.framesFor('resnet18', 'dev-1'), t.frames('resnet18', U, 'dev-2'))).toBe(false);
    expect(matches(t.framesFor('resnet18', 'dev-1'), t.frames('other', U, 'dev-1'))).toBe(false);
  });
  it('parse returns null for foreign topics', () => {
    const foreign = [
      '',
      prefix,
      `${prefix}/`,
      `/${prefix}/devices/dev-1/status`,
      `${prefix}x/devices/dev-1/status`,
      `other/${prefix}/devices/dev-1/status`,
      `${prefix}/devices/dev-1`,
      `${prefix}/devices/dev-1/status/extra`,
      `${prefix}/devices/dev-1/health`,
      `${prefix}/device/dev-1/status`,
      `${prefix}/groups/canary/models/resnet18/releases`,
      `${prefix}/groups/canary/model/resnet18/release`,
      `${prefix}/groups/canary/models/resnet18/release/x`,
      `${prefix}/models/resnet18/updates/${U}/got/dev-1`,
      `${prefix}/models/resnet18/updates/${U}/get`,
      `${prefix}/models/resnet18/updates/${U}/to`,
      `${prefix}/models/resnet18/updates/${U}/put/x`,
      `${prefix}/models/resnet18/updates/${U}/stored/x`,
      `${prefix}/models/resnet18/updates/${U}/get/dev-1/x`,
      `${prefix}/models/resnet18/update/${U}/put`,
      `${prefix}/models/resnet18/updates/${U}`,
      `${prefix}/rollouts/r1/state`,
      '$SYS/broker/uptime',
    ];
    for (const topic of foreign) expect(t.parse(topic), topic).toBeNull();
  });
});

describe('level counts and prefix isolation', () => {
  it('no topic or filter has more than 7 levels with the default prefix', () => {
    const t = new Topics();
    expect(t.prefix).toBe(DEFAULT_PREFIX);
    expect(DEFAULT_PREFIX).toBe('fleet');
    const all = [...concrete(t).map((c) => c.topic), ...filters(t).map((f) => f.filter)];
    for (const s of all) expect(s.split('/').length, s).toBeLessThanOrEqual(7);
    expect(Math.max(...all.map((s) => s.split('/').length))).toBe(7);
  });
  it("one prefix does not parse another prefix's topics", () => {
    const a = new Topics();
    const b = new Topics('acme/fleet');
    for (const c of concrete(b)) expect(a.parse(c.topic), c.topic).toBeNull();
    for (const c of concrete(a)) expect(b.parse(c.topic), c.topic).toBeNull();
  });
  it('a topic that spells a keyword as an id still parses by position', () => {
    const t = new Topics();
    expect(t.parse(t.status('status'))).toEqual({ kind: 'status', deviceId: 'status' });
    expect(t.parse(t.release('models', 'groups'))).toEqual({ kind: 'release', group: 'models', model: 'groups' });
    expect(t.parse(t.request('updates', 'get', 'to'))).toEqual({ kind: 'request', model: 'updates', updateId: 'get', deviceId: 'to' });
  });
});

describe('identifier checks', () => {
  const bad = ['', 'a/b', '/', 'a+', '+', '#', 'a#b', 'x'.repeat(129), 'sp ace', 'ümlaut', 'a\u0000b'];
  const t = new Topics();
  const builders: Array<[string, (id: string) => string]> = [
    ['release group', (id) => t.release(id, 'm')],
    ['release model', (id) => t.release('g', id)],
    ['request model', (id) => t.request(id, U, 'd')],
    ['request update id', (id) => t.request('m', id, 'd')],
    ['request device id', (id) => t.request('m', U, id)],
    ['frames model', (id) => t.frames(id, U, 'd')],
    ['frames update id', (id) => t.frames('m', id, 'd')],
    ['frames device id', (id) => t.frames('m', U, id)],
    ['framesFor model', (id) => t.framesFor(id, 'd')],
    ['framesFor device id', (id) => t.framesFor('m', id)],
    ['upload model', (id) => t.upload(id, U)],
    ['upload update id', (id) => t.upload('m', id)],
    ['uploadReceipt model', (id) => t.uploadReceipt(id, U)],
    ['uploadReceipt update id', (id) => t.uploadReceipt('m', id)],
    ['status', (id) => t.status(id)],
    ['presence', (id) => t.presence(id)],
    ['rolloutStatus', (id) => t.rolloutStatus(id)],
  ];
  it.each(builders)('%s refuses bad ids and accepts 1..128 allowed characters', (_n, build) => {
    for (const id of bad) expect(() => build(id), JSON.stringify(id)).toThrow(TypeError);
    for (const id of ['a', 'A-z_0.9', 'x'.repeat(128)]) expect(build(id)).toContain(`/${id}`);
  });
  it('isTopicSegment / assertSegment', () => {
    for (const id of bad) expect(isTopicSegment(id), JSON.stringify(id)).toBe(false);
    expect(isTopicSegment('x'.repeat(128))).toBe(true);
    expect(assertSegment('device id', 'ok-1')).toBe('ok-1');
    expect(() => assertSegment('device id', 'a/b')).toThrow(/device id/);
  });
  it('the prefix is checked level by level', () => {
    for (const p of ['', 'a//b', '/fleet', 'fleet/', 'fl+eet', '#', 'a/+/b']) expect(() => new Topics(p), p).toThrow(TypeError);
    expect(new Topics('a/b/c').status('d')).toBe('a/b/c/devices/d/status');
  });
});
