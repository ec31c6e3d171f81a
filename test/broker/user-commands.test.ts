import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readUsersFile, verifyPassword } from '../../broker/users-file.ts';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { ownAfterEach } from '../support/cleanup.ts';

function fleet(args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [FLEET_BIN, ...args], { encoding: 'utf8', timeout: 60_000 }, (e, out, err) => resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, out, err }));
  });
}

const own = ownAfterEach();

describe('fleet user', () => {
  it('adds, lists, regroups and removes users; the file is 0600 and listings never show hashes', async () => {
    const dir = await own.tempDir('fleet-users-');
    const file = path.join(dir, 'users.json');

    const added = await fleet(['user', 'add', 'dev-1', '--role', 'device', '--group', 'g1', '--model', 'm1', '--auth', file]);
    expect(added.code).toBe(0);
    const generated = /password \(shown once\): (\S+)/.exec(added.out)?.[1];
    expect(generated).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);

    await fs.writeFile(path.join(dir, 'pw'), 'from-a-file\n');
    const fromFile = await fleet(['user', 'add', 'op', '--role', 'operator', '--auth', file, '--password-file', path.join(dir, 'pw')]);
    expect(fromFile.code).toBe(0);
    expect(fromFile.out).not.toMatch(/password/);

    const users = (await readUsersFile(file)).users;
    expect(users.map((u) => [u.name, u.role, u.group, u.model])).toEqual([
      ['dev-1', 'device', 'g1', 'm1'],
      ['op', 'operator', undefined, undefined],
    ]);
    expect(users[0].params).toEqual({ N: 16384, r: 8, p: 1, keylen: 32 });
    expect(Buffer.from(users[0].salt, 'base64')).toHaveLength(16);
    expect(await verifyPassword(users[0], generated!)).toBe(true);
    expect(await verifyPassword(users[1], 'from-a-file')).toBe(true);
    expect(await verifyPassword(users[1], 'from-a-file\n')).toBe(false);

    const list = await fleet(['user', 'list', '--auth', file]);
    expect(list.code).toBe(0);
    expect(list.out.split('\n')[1]).toMatch(/^dev-1\s+device\s+g1\s+m1$/);
    const json = await fleet(['user', 'list', '--auth', file, '--json']);
    expect(JSON.parse(json.out)).toEqual([
      { name: 'dev-1', role: 'device', group: 'g1', model: 'm1' },
      { name: 'op', role: 'operator', group: null, model: null },
    ]);
    for (const out of [list.out, json.out]) {
      for (const u of users) {
        expect(out).not.toContain(u.hash);
        expect(out).not.toContain(u.salt);
      }
    }

    expect((await fleet(['user', 'regroup', 'dev-1', '--group', 'g2', '--auth', file])).code).toBe(0);
    expect((await readUsersFile(file)).users[0]).toMatchObject({ name: 'dev-1', group: 'g2', model: 'm1', hash: users[0].hash });
    expect((await fleet(['user', 'remove', 'dev-1', '--auth', file])).code).toBe(0);
    expect((await readUsersFile(file)).users.map((u) => u.name)).toEqual(['op']);
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
  }, 60_000);

  it('refuses what makes no sense, with a message', async () => {
    const dir = await own.tempDir('fleet-users-bad-');
    const file = path.join(dir, 'users.json');
    const cases: Array<[string[], RegExp]> = [
      [['user', 'add', 'd', '--role', 'device', '--auth', file], /needs --group and --model/],
      [['user', 'add', 'p', '--role', 'publisher', '--group', 'g', '--auth', file], /only devices/],
      [['user', 'add', 'x/y', '--role', 'operator', '--auth', file], /may only use letters/],
      [['user', 'add', 'x', '--role', 'admin', '--auth', file], /Allowed choices/],
      [['user', 'remove', 'x', '--auth', file], /ENOENT|no user/],
    ];
    const results = await Promise.all(cases.map(([args]) => fleet(args)));
    for (const [k, [args, msg]] of cases.entries()) {
      expect(results[k].code, args.join(' ')).not.toBe(0);
      expect(results[k].err).toMatch(msg);
    }
    expect(await fs.readdir(dir)).toEqual([]);
    expect((await fleet(['user', 'add', 'op', '--role', 'operator', '--password', 'pw', '--auth', file])).code).toBe(0);
    const [again, regroup] = await Promise.all([fleet(['user', 'add', 'op', '--role', 'operator', '--password', 'pw', '--auth', file]), fleet(['user', 'regroup', 'op', '--group', 'g', '--auth', file])]);
    expect(again.err).toMatch(/already exists/);
    expect(regroup.err).toMatch(/only devices have a group/);
  }, 60_000);
});
