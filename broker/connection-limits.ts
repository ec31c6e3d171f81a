/**
 * What the broker accepts from a connection before Aedes parses it: a packet
 * size limit per phase (a few KiB before login, then by role), and the
 * CONNECT rules Aedes does not apply (an empty client id asks for a clean session).
 */
import type { AedesOptions, AuthenticateError, Client } from 'aedes';
import type { Readable } from 'node:stream';
import { MAX_CHUNK_BYTES } from '../protocol/manifest.ts';
import { describeBreach, limitIncoming } from '../transport/packet-limit.ts';
import type { Logger } from '../util/log.ts';
import type { Role } from './acl.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * The largest packet (remaining length) a connection may send. `login`: until its
 * CONNECT is accepted (client id, user name, password and a small will). `open`:
 * a logged-in client of a broker without `--auth`, which could hold any role.
 */
export const PACKET_LIMITS: Readonly<Record<Role | 'login' | 'open', number>> = Object.freeze({
  login: 8 * KiB,
  // Statuses and chunk requests (at most MAX_WANT indices).
  device: 64 * KiB,
  viewer: 16 * KiB,
  // Releases, rollout statuses and commands; a gateway relays statuses and requests.
  operator: 1 * MiB,
  gateway: 1 * MiB,
  // Upload frames carry a chunk of at most MAX_CHUNK_BYTES.
  publisher: MAX_CHUNK_BYTES + 64 * KiB,
  rollout: MAX_CHUNK_BYTES + 64 * KiB,
  // Frames to devices: a chunk, or a chunk list (32 bytes a chunk).
  server: 2 * MAX_CHUNK_BYTES + 64 * KiB,
  open: 2 * MAX_CHUNK_BYTES + 64 * KiB,
});

/** The Aedes hooks the connection rules need: wraps `inner` (authentication) when given. */
export function connectRules(inner: Pick<AedesOptions, 'preConnect' | 'authenticate'> | undefined, log: Logger): Required<Pick<AedesOptions, 'preConnect' | 'authenticate'>> {
  const emptyPersistent = new WeakSet<Client>();
  return {
    preConnect: (client, packet, cb) => {
      if (packet.clientId === '' && !packet.clean) emptyPersistent.add(client);
      if (inner?.preConnect) inner.preConnect(client, packet, cb);
      else cb(null, true);
    },
    authenticate: (client, username, password, done) => {
      if (emptyPersistent.has(client)) {
        // [MQTT-3.1.3-8]: a zero-byte client id with CleanSession 0 gets CONNACK 0x02 (identifier rejected).
        log.warn('connection refused', { reason: 'empty client id without a clean session', returnCode: 2 });
        return done(Object.assign(new Error('identifier rejected'), { returnCode: 2 }) as unknown as AuthenticateError, false);
      }
      if (inner?.authenticate) inner.authenticate(client, username, password, done);
      else done(null, true);
    },
  };
}

/**
 * Cuts a connection whose next packet is over the limit for where it stands:
 * `role(client)` is its role once logged in (with auth), `loggedIn(client)` says
 * whether its CONNECT has been accepted. Call right after `aedes.handle(stream)`.
 */
export function limitPackets(stream: Readable, client: Client, role: (c: Client) => Role | undefined, authenticated: boolean, log: Logger): void {
  const limit = (): number => {
    if (authenticated) {
      const r = role(client);
      return r ? PACKET_LIMITS[r] : PACKET_LIMITS.login;
    }
    return client.connecting || client.connected ? PACKET_LIMITS.open : PACKET_LIMITS.login;
  };
  limitIncoming(stream, limit, (b) => {
    log.warn('connection closed: packet over the limit', { client: client.id ?? null, reason: b.reason, type: b.type, declared: b.declared, limit: b.limit, detail: describeBreach(b) });
    (stream as Readable & { destroy(e?: Error): void }).destroy();
  });
}
