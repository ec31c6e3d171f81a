/**
 * The broker's users file: `{ "users": [ { name, role, group?, model?, salt, hash, params } ] }`
 * with scrypt password hashes. Written atomically with mode 0600.
 */
import { FleetError } from '../platform/errors.ts';
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { isTopicSegment } from '../protocol/topics.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import { isRole, type Principal, type Role } from './acl.ts';

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
  keylen: number;
}

export interface UserRecord {
  name: string;
  role: Role;
  /** Devices only. */
  group?: string;
  /** Devices only. */
  model?: string;
  /** Gateways only, optional: the one site whose client id (`fleet-gateway-SITE`) and status it may use. */
  site?: string;
  /** base64 */
  salt: string;
  /** base64 */
  hash: string;
  params: ScryptParams;
}

export interface UsersFile {
  users: UserRecord[];
}

export const DEFAULT_SCRYPT: ScryptParams = Object.freeze({ N: 16384, r: 8, p: 1, keylen: 32 });
const SALT_BYTES = 16;

/** The users file (or a user given to `fleet user`) is not valid: refused, the message says which line or field. */
export class UsersFileError extends FleetError<'invalid-users-file'> {
  override readonly name = 'UsersFileError';
  constructor(message: string) {
    super('refusal', 'invalid-users-file', message);
  }
}

function scryptAsync(password: string | Buffer, salt: Buffer, pr: ScryptParams): Promise<Buffer> {
  // Room for the work area (128·N·r bytes) plus slack; params were bounded by parseUsersFile.
  const opts: ScryptOptions = { N: pr.N, r: pr.r, p: pr.p, maxmem: 256 * pr.N * pr.r + (1 << 20) };
  return new Promise((resolve, reject) => scrypt(password, salt, pr.keylen, opts, (err, key) => (err ? reject(err) : resolve(key))));
}

/** A fresh random salt and the scrypt hash of `password`. */
export async function hashPassword(password: string, params: ScryptParams = DEFAULT_SCRYPT): Promise<Pick<UserRecord, 'salt' | 'hash' | 'params'>> {
  if (password.length === 0) throw new UsersFileError('the password is empty');
  const salt = randomBytes(SALT_BYTES);
  const hash = await scryptAsync(password, salt, params);
  return { salt: salt.toString('base64'), hash: hash.toString('base64'), params: { ...params } };
}

/** Constant-time comparison of `password` against the record's hash. */
export async function verifyPassword(rec: Pick<UserRecord, 'salt' | 'hash' | 'params'>, password: string | Buffer): Promise<boolean> {
  const want = Buffer.from(rec.hash, 'base64');
  const got = await scryptAsync(password, Buffer.from(rec.salt, 'base64'), rec.params);
  return got.length === want.length && timingSafeEqual(got, want);
}

/** Burns the same scrypt work as a real check, so an unknown user name costs as long as a wrong password. */
let dummy: Pick<UserRecord, 'salt' | 'hash' | 'params'> | undefined;
export async function verifyNobody(password: string | Buffer): Promise<false> {
  dummy ??= await hashPassword(randomBytes(16).toString('hex'));
  await verifyPassword(dummy, password);
  return false;
}

/** 24 random bytes, base64url: safe inside an `mqtt://user:password@host` URL. */
export function generatePassword(): string {
  return randomBytes(24).toString('base64url');
}

export function principalOf(u: UserRecord): Principal {
  if (u.role === 'device') return { name: u.name, role: u.role, group: u.group, model: u.model };
  return u.site ? { name: u.name, role: u.role, site: u.site } : { name: u.name, role: u.role };
}

/** Changes whenever anything that a connected session depends on changes (rights or password). */
export function userFingerprint(u: UserRecord): string {
  return JSON.stringify([u.role, u.group ?? null, u.model ?? null, u.salt, u.hash, u.params, ...(u.site ? [u.site] : [])]);
}

const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

function validateParams(where: string, v: unknown): ScryptParams {
  const o = v as Partial<ScryptParams> | null;
  const ok = (x: unknown, min: number, max: number): x is number => Number.isInteger(x) && (x as number) >= min && (x as number) <= max;
  if (!o || typeof o !== 'object' || !ok(o.N, 2, 1 << 20) || (o.N & (o.N - 1)) !== 0 || !ok(o.r, 1, 32) || !ok(o.p, 1, 16) || !ok(o.keylen, 16, 128)) {
    throw new UsersFileError(`${where}: params must be {N: power of two ≤ 2^20, r 1-32, p 1-16, keylen 16-128}`);
  }
  return { N: o.N, r: o.r, p: o.p, keylen: o.keylen };
}

/** Parses and checks a users file; throws UsersFileError naming the first problem. */
export function parseUsersFile(text: string, source = 'users file'): UsersFile {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new UsersFileError(`${source}: not JSON (${(e as Error).message})`);
  }
  const list = (raw as { users?: unknown } | null)?.users;
  if (!Array.isArray(list)) throw new UsersFileError(`${source}: expected {"users": [...]}`);
  const seen = new Set<string>();
  const users = list.map((v: unknown, i): UserRecord => {
    const u = v as Record<string, unknown> | null;
    const where = `${source}: users[${i}]`;
    if (!u || typeof u !== 'object') throw new UsersFileError(`${where}: not an object`);
    const name = u.name;
    if (typeof name !== 'string' || !isTopicSegment(name)) throw new UsersFileError(`${where}: name must be 1-128 characters of [A-Za-z0-9._-]`);
    if (seen.has(name)) throw new UsersFileError(`${where}: duplicate user "${name}"`);
    seen.add(name);
    if (!isRole(u.role)) throw new UsersFileError(`${where} (${name}): role must be publisher, server, device, operator, rollout, viewer or gateway`);
    const rec: UserRecord = { name, role: u.role, salt: '', hash: '', params: validateParams(`${where} (${name})`, u.params) };
    if (u.role === 'device') {
      if (typeof u.group !== 'string' || !isTopicSegment(u.group)) throw new UsersFileError(`${where} (${name}): a device needs a group of [A-Za-z0-9._-]`);
      if (typeof u.model !== 'string' || !isTopicSegment(u.model)) throw new UsersFileError(`${where} (${name}): a device needs a model of [A-Za-z0-9._-]`);
      rec.group = u.group;
      rec.model = u.model;
    } else if (u.group !== undefined || u.model !== undefined) {
      throw new UsersFileError(`${where} (${name}): only devices have a group and model`);
    }
    if (u.site !== undefined) {
      if (u.role !== 'gateway') throw new UsersFileError(`${where} (${name}): only gateways have a site`);
      if (typeof u.site !== 'string' || !isTopicSegment(u.site)) throw new UsersFileError(`${where} (${name}): a site must be of [A-Za-z0-9._-]`);
      rec.site = u.site;
    }
    for (const k of ['salt', 'hash'] as const) {
      const s = u[k];
      if (typeof s !== 'string' || s.length === 0 || !B64.test(s)) throw new UsersFileError(`${where} (${name}): ${k} must be base64`);
      rec[k] = s;
    }
    if (Buffer.from(rec.hash, 'base64').length !== rec.params.keylen) throw new UsersFileError(`${where} (${name}): hash length does not match keylen`);
    return rec;
  });
  return { users };
}

/** Reads and parses the file; a missing file is an error here (see readUsersFileOrEmpty). */
export async function readUsersFile(file: string): Promise<UsersFile> {
  return parseUsersFile(await fs.readFile(file, 'utf8'), file);
}

/** For `fleet user add`: a missing file is an empty list. */
export async function readUsersFileOrEmpty(file: string): Promise<UsersFile> {
  try {
    return await readUsersFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { users: [] };
    throw e;
  }
}

/** Atomic replace (temp file, fsync, rename), mode 0600. */
export async function writeUsersFile(file: string, data: UsersFile): Promise<void> {
  const users = data.users.map((u) => ({
    name: u.name,
    role: u.role,
    ...(u.role === 'device' ? { group: u.group, model: u.model } : {}),
    ...(u.role === 'gateway' && u.site ? { site: u.site } : {}),
    salt: u.salt,
    hash: u.hash,
    params: u.params,
  }));
  await writeFileAtomic(file, JSON.stringify({ users }, null, 2) + '\n', 0o600);
}
