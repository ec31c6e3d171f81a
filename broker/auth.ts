/**
 * Authentication and authorisation for the Aedes broker: users from a users
 * file (scrypt hashes, re-read when it changes), one internal credential for
 * the in-process update server (random, held only in memory), and the ACL of
 * ./acl.ts on every publish, will, subscription and delivery.
 */
import { timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { Aedes, AedesOptions, AuthenticateError, Client, ConnectPacket, PublishPacket } from 'aedes';
import type { Topics } from '../protocol/topics.ts';
import type { Logger } from '../util/log.ts';
import { Acl, type AclDecision, type Principal, type Role } from './acl.ts';
import { clientIdRefusal, deviceClientId } from './client-ids.ts';
import { statusClaimRefusal } from './status-claims.ts';
import { MAX_OPEN_UPLOADS, UploadQuota } from './upload-quota.ts';
import { decodeReceipt } from '../protocol/frames.ts';
import { generatePassword, principalOf, readUsersFile, userFingerprint, verifyNobody, verifyPassword, type UserRecord } from './users-file.ts';

export { deviceClientId };
const DEVICE_CLIENT_PREFIX = deviceClientId('');

/** Not a valid users-file name (those are [A-Za-z0-9._-]), so it can never collide with one. */
export const INTERNAL_SERVER_USER = '$fleet-update-server';

export interface BrokerAuthOptions {
  /** The users file. */
  file: string;
  topics: Topics;
  log: Logger;
  /** Client id reserved for the in-process update server. */
  internalClientId: string;
  /** How often to look for changes of the file (ms). */
  pollMs: number;
}

interface Session {
  principal: Principal;
  /** userFingerprint() at login; null for the internal credential. */
  fingerprint: string | null;
}

type Will = ConnectPacket['will'];
type Refusal = { code: 2 | 4 | 5; reason: string };

export class BrokerAuth {
  readonly acl: Acl;
  private users = new Map<string, UserRecord>();
  /** Authenticated clients, for lookup (kept until the client object is gone). */
  private readonly byClient = new WeakMap<Client, Session>();
  /** Connected authenticated clients, for disconnecting them when their user changes. */
  private readonly live = new Set<Client>();
  private readonly wills = new WeakMap<Client, Will>();
  private readonly internalPassword = Buffer.from(generatePassword());
  private readonly log: Logger;
  private timer: NodeJS.Timeout | undefined;
  private stamp = '';
  private polling = false;
  private aedes: Aedes | undefined;
  private readonly uploads = new UploadQuota();

  private constructor(private readonly o: BrokerAuthOptions) {
    this.acl = new Acl(o.topics);
    this.log = o.log;
  }

  /** Reads the users file (it must exist and be valid) and returns the hooks' owner. */
  static async open(o: BrokerAuthOptions): Promise<BrokerAuth> {
    const a = new BrokerAuth(o);
    a.stamp = await a.fileStamp();
    a.apply((await readUsersFile(o.file)).users);
    a.log.info('users loaded', { file: o.file, users: a.users.size });
    return a;
  }

  /** How the in-process update server logs in. */
  get internalCredential(): { username: string; password: string; clientId: string } {
    return { username: INTERNAL_SERVER_USER, password: this.internalPassword.toString(), clientId: this.o.internalClientId };
  }

  /** The role a logged-in client holds (undefined before its login succeeds). */
  roleOf(client: Client): Role | undefined {
    return this.byClient.get(client)?.principal.role;
  }

  /** The principal a logged-in client holds. */
  principalOf(client: Client): Principal | undefined {
    return this.byClient.get(client)?.principal;
  }

  /** The Aedes hooks. */
  hooks(): Required<Pick<AedesOptions, 'preConnect' | 'authenticate' | 'authorizePublish' | 'authorizeSubscribe' | 'authorizeForward'>> {
    return {
      preConnect: (client, packet, cb) => {
        // The will (MQTT 3.1.1 §3.1.2.5) is checked with the credentials in authenticate().
        this.wills.set(client, packet.will);
        cb(null, true);
      },
      authenticate: (client, username, password, done) => {
        this.login(client, username, password).then(
          (r) => (r ? done(authError(r), false) : done(null, true)),
          (e: unknown) => {
            this.log.error('authentication failed', { client: client.id, error: String(e) });
            done(authError({ code: 5, reason: 'internal error' }), false);
          },
        );
      },
      authorizePublish: (client, packet, cb) => {
        const d = this.mayPublish(client, packet);
        if (d.allowed) return cb(null);
        // Aedes closes the connection: MQTT 3.1.1 has no negative PUBACK; a server that does not
        // authorize a PUBLISH must acknowledge it or close the connection (§3.3.5, [MQTT-3.3.5-2]).
        cb(new Error(`publish to ${packet.topic} refused: ${d.reason}`));
      },
      authorizeSubscribe: (client, sub, cb) => {
        const s = this.session(client);
        const d = s.ok ? this.acl.subscribe(s.principal, sub.topic) : s;
        if (d.allowed) return cb(null, sub);
        this.refused('subscribe refused', client, sub.topic, d.reason);
        cb(null, null); // SUBACK 0x80 (Failure) for this filter, MQTT 3.1.1 §3.9.3; the connection stays
      },
      authorizeForward: (client, packet) => {
        // Belt and braces: a subscription granted earlier still needs today's rights for each message.
        const s = this.session(client);
        const d = s.ok ? this.acl.subscribe(s.principal, packet.topic) : s;
        if (d.allowed) return packet;
        this.refused('delivery refused', client, packet.topic, d.reason);
        return null;
      },
    };
  }

  /** Follows the file from now on, and disconnects clients whose user goes away or changes. */
  attach(aedes: Aedes): void {
    this.aedes = aedes;
    aedes.on('clientDisconnect', (client) => this.live.delete(client));
    this.timer = setInterval(() => void this.poll(), this.o.pollMs);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Re-reads the file now. Keeps the previous users (and logs) when it is missing or invalid. */
  async reload(): Promise<boolean> {
    this.stamp = await this.fileStamp();
    try {
      this.apply((await readUsersFile(this.o.file)).users);
      this.log.info('users reloaded', { file: this.o.file, users: this.users.size });
      return true;
    } catch (e) {
      this.log.error('users file not reloaded; keeping the previous users', { file: this.o.file, error: (e as Error).message });
      return false;
    }
  }

  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      // Clients that failed after authenticating never send 'clientDisconnect'.
      for (const c of this.live) if (c.closed) this.live.delete(c);
      if ((await this.fileStamp()) !== this.stamp) await this.reload();
    } finally {
      this.polling = false;
    }
  }

  /** Changes when the file is rewritten (an atomic rename gives a new inode). */
  private async fileStamp(): Promise<string> {
    try {
      const s = await fs.stat(this.o.file);
      return `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
    } catch (e) {
      return `missing:${(e as NodeJS.ErrnoException).code}`;
    }
  }

  private apply(users: UserRecord[]): void {
    this.users = new Map(users.map((u) => [u.name, u]));
    for (const client of this.live) {
      const s = this.byClient.get(client);
      if (!s || s.fingerprint === null) continue;
      const u = this.users.get(s.principal.name);
      const why = !u ? 'user removed' : userFingerprint(u) !== s.fingerprint ? 'user changed' : undefined;
      if (!why) continue;
      this.log.warn('disconnecting client', { client: client.id, user: s.principal.name, reason: why });
      // Its session stays known, so its will (and anything in flight) is refused as `user-removed` / `user-changed`.
      this.live.delete(client);
      client.close();
    }
  }

  /**
   * null when the client may connect. A refusal is a CONNACK return code (MQTT 3.1.1
   * §3.2.2.3, Table 3.1): 2 identifier rejected, 4 bad user name or password, 5 not
   * authorized; the server then closes the connection ([MQTT-3.2.2-5]).
   */
  private async login(client: Client, username: string | undefined, password: Buffer | undefined): Promise<Refusal | null> {
    const refuse = (code: 2 | 4 | 5, reason: string): Refusal => {
      this.log.warn('connection refused', { client: client.id, user: username ?? null, reason, returnCode: code });
      return { code, reason };
    };
    if (username === undefined || username === '') return refuse(5, 'anonymous');
    if (password === undefined || password.length === 0) return refuse(4, 'no password');
    let session: Session;
    if (username === INTERNAL_SERVER_USER) {
      const ok = password.length === this.internalPassword.length && timingSafeEqual(password, this.internalPassword);
      if (!ok) return refuse(4, 'bad user name or password');
      if (client.id !== this.o.internalClientId) return refuse(5, 'client id not allowed for this user');
      session = { principal: { name: username, role: 'server' }, fingerprint: null };
    } else {
      const u = this.users.get(username);
      const ok = u ? await verifyPassword(u, password) : await verifyNobody(password);
      if (!ok || !u) return refuse(4, 'bad user name or password');
      // The file may have changed while scrypt ran.
      if (this.users.get(username) !== u) return refuse(5, 'user changed during login');
      const badId = client.id === this.o.internalClientId ? 'client id reserved' : clientIdRefusal(principalOf(u), client.id);
      if (badId) return refuse(5, badId);
      // A live session under this id belongs to another user: taking it over would kick that client off
      // (the server must disconnect the existing client with that id, MQTT 3.1.1 §3.1.4 [MQTT-3.1.4-2]).
      const holder = (this.aedes as (Aedes & { clients?: Record<string, Client> }) | undefined)?.clients?.[client.id];
      if (holder && holder !== client && !holder.closed && this.byClient.get(holder)?.principal.name !== u.name) {
        return refuse(2, 'client id in use by another user');
      }
      session = { principal: principalOf(u), fingerprint: userFingerprint(u) };
    }
    const will = this.wills.get(client);
    if (will) {
      const d = this.acl.publish(session.principal, will.topic);
      if (!d.allowed) return refuse(5, `will on ${will.topic} not allowed: ${d.reason}`);
    }
    this.byClient.set(client, session);
    this.live.add(client);
    this.log.info('client authenticated', { client: client.id, user: session.principal.name, role: session.principal.role });
    return null;
  }

  /** The client's principal while its user is unchanged in the file. */
  private session(client: Client | null): { ok: true; principal: Principal } | { ok: false; allowed: false; reason: string } {
    const s = client ? this.byClient.get(client) : undefined;
    if (!s) return { ok: false, allowed: false, reason: 'not-authenticated' };
    if (s.fingerprint !== null) {
      const u = this.users.get(s.principal.name);
      if (!u) return { ok: false, allowed: false, reason: 'user-removed' };
      if (userFingerprint(u) !== s.fingerprint) return { ok: false, allowed: false, reason: 'user-changed' };
    }
    return { ok: true, principal: s.principal };
  }

  private mayPublish(client: Client | null, packet: PublishPacket): AclDecision | { allowed: false; reason: string } {
    if (client === null) {
      // A will left by a client of an earlier broker run: only a device's will, on its own topics.
      const cid = (packet as PublishPacket & { clientId?: string }).clientId ?? '';
      const u = cid.startsWith(DEVICE_CLIENT_PREFIX) ? this.users.get(cid.slice(DEVICE_CLIENT_PREFIX.length)) : undefined;
      const d = u?.role === 'device' ? this.acl.publish(principalOf(u), packet.topic) : { allowed: false as const, reason: 'not-authenticated' };
      if (!d.allowed) this.refused('stale will refused', null, packet.topic, d.reason, cid);
      return d;
    }
    const isWill = packet === this.wills.get(client);
    const s = this.session(client);
    let d: AclDecision | { allowed: false; reason: string } = s.ok ? this.acl.publish(s.principal, packet.topic) : s;
    if (isWill && !s.ok && s.reason === 'user-changed') {
      // Disconnected because its rights changed (e.g. regrouped): its will is judged by the new ones.
      const u = this.users.get(this.byClient.get(client)!.principal.name);
      if (u) d = this.acl.publish(principalOf(u), packet.topic);
    }
    if (!d.allowed && s.ok && s.principal.role === 'operator' && packet.retain && (packet.payload as Buffer).byteLength === 0) {
      // `fleet devices --forget`: an operator may clear (never write) a device's retained status and presence.
      const k = this.acl.topics.parse(packet.topic)?.kind;
      if (k === 'status' || k === 'presence') d = { allowed: true };
    }
    const parsed = d.allowed && s.ok ? this.acl.topics.parse(packet.topic) : undefined;
    if (parsed?.kind === 'status' && s.ok && s.principal.role === 'device') {
      // Allowed on its own status topic; the payload must speak for this device only.
      const why = statusClaimRefusal(s.principal, packet.payload as Buffer);
      if (why) d = { allowed: false, reason: why };
    }
    if (parsed?.kind === 'upload' && s.ok && !this.uploads.allow(s.principal.name, parsed.updateId)) {
      d = { allowed: false, reason: `upload-quota: ${MAX_OPEN_UPLOADS} uploads in progress` };
    }
    if (parsed?.kind === 'uploadReceipt' && s.ok && s.principal.role === 'server' && receiptCloses(packet.payload as Buffer)) this.uploads.finish(parsed.updateId);
    if (!d.allowed) this.refused(isWill ? 'will refused' : 'publish refused', client, packet.topic, d.reason);
    return d;
  }

  private refused(msg: string, client: Client | null, topic: string, reason: string, clientId?: string): void {
    this.log.warn(msg, { client: client?.id ?? clientId ?? null, user: (client && this.byClient.get(client)?.principal.name) ?? null, topic, reason });
  }
}

/** Whether an upload receipt ends the upload (stored, or refused with an error). */
function receiptCloses(payload: Uint8Array): boolean {
  try {
    const r = decodeReceipt(payload);
    return r.stored || r.error !== undefined;
  } catch {
    return false;
  }
}

function authError(r: Refusal): AuthenticateError {
  return Object.assign(new Error(r.reason), { returnCode: r.code }) as unknown as AuthenticateError;
}
