import { readFileSync } from 'node:fs';
import type { IClientOptions, ISubscriptionMap } from 'mqtt';
import { MAX_CHUNK_BYTES } from '../protocol/manifest.ts';
import { MQTT_DEFAULTS } from './defaults.ts';

/** What an MQTT connection is opened with (transport/mqtt.ts), and how those options become mqtt.js's. */

export interface MqttTransportOptions {
  /** mqtt://host:port */
  url: string;
  /**
   * Further nodes of the same logical broker (a cluster, docs/cluster.md). A
   * connection that closes or fails moves on to the next URL in turn, so a
   * device whose node dies reconnects to another. Credentials come from `url`.
   */
  fallbackUrls?: string[];
  clientId: string;
  /** Last will, e.g. presence `offline`. */
  will?: { topic: string; payload: string; retain: boolean; qos: 0 | 1 };
  keepaliveSeconds?: number;
  connectTimeoutMs?: number;
  /** First reconnect delay; doubles with jitter up to reconnectMaxMs. */
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  username?: string;
  password?: string;
  /**
   * For mqtts:// URLs: the CA that signed the broker's certificate, and a client
   * certificate and key when the broker asks for one (PEM). Default: the files
   * named by FLEET_TLS_CA, FLEET_TLS_CERT and FLEET_TLS_KEY (the CLI's --ca, --client-cert, --client-key).
   */
  tls?: { ca?: string | Buffer; cert?: string | Buffer; key?: string | Buffer };
  /** Longest wait of `close()` for unacknowledged publishes before it drops the connection, ms (default 2000). */
  closeGraceMs?: number;
  /**
   * The largest packet (remaining length) accepted from the broker; a larger one closes
   * the connection as soon as its fixed header arrives, before it is buffered
   * (transport/packet-limit.ts). Default DEFAULT_MAX_INCOMING_PACKET.
   */
  maxIncomingPacket?: number;
  /** Names a published topic's kind for `sent` (e.g. `status`); default: every publish is `publish`. */
  labelTopic?: (topic: string) => string;
}

/** A frame of the largest chunk the protocol allows, or its chunk list, with room to spare. */
export const DEFAULT_MAX_INCOMING_PACKET = 2 * MAX_CHUNK_BYTES + 64 * 1024;

export function fromEnvFile(name: string): Buffer | undefined {
  const file = process.env[name];
  return file ? readFileSync(file) : undefined;
}

/**
 * The password of a URL that names a user but no password (`mqtt://NAME@host:port`), so it
 * need not sit in a command line (`ps`): FLEET_PASSWORD, or the first line of the file named
 * by FLEET_PASSWORD_FILE (the CLI's --broker-password-file).
 */
function passwordFromEnv(): string | undefined {
  if (process.env.FLEET_PASSWORD) return process.env.FLEET_PASSWORD;
  const file = process.env.FLEET_PASSWORD_FILE;
  return file ? readFileSync(file, 'utf8').split(/\r?\n/)[0] : undefined;
}

/** The broker URL and its fallbacks, in the order tried. */
export function brokerServers(opts: MqttTransportOptions): Array<{ host: string; port: number; secure: boolean }> {
  return [opts.url, ...(opts.fallbackUrls ?? [])].map((url) => {
    const s = new URL(url);
    const secure = s.protocol === 'mqtts:';
    if (s.protocol !== 'mqtt:' && s.protocol !== 'tcp:' && !secure) throw new TypeError(`unsupported broker URL ${url} (use mqtt://host:port or mqtts://host:port)`);
    return { host: s.hostname, port: Number(s.port || (secure ? 8883 : 1883)), secure };
  });
}

/** MQTT.js's options: MQTT 3.1.1, clean session, the login, the will. */
export function clientOptions(opts: MqttTransportOptions, reconnectMinMs: number): IClientOptions {
  const u = new URL(opts.url);
  return {
    protocolVersion: 4,
    clientId: opts.clientId,
    clean: true,
    keepalive: opts.keepaliveSeconds ?? MQTT_DEFAULTS.keepaliveSeconds,
    connectTimeout: opts.connectTimeoutMs ?? MQTT_DEFAULTS.connectTimeoutMs,
    reconnectPeriod: reconnectMinMs,
    resubscribe: true,
    queueQoSZero: false,
    username: opts.username ?? (u.username ? decodeURIComponent(u.username) : undefined),
    // The password: given, in the URL, or (a URL naming only the user) FLEET_PASSWORD_FILE / FLEET_PASSWORD, so it need not sit in `ps` or a unit file.
    password: opts.password ?? (u.password ? decodeURIComponent(u.password) : undefined) ?? (opts.username || u.username ? passwordFromEnv() : undefined),
    // A refused login (bad password, removed user) is retried with the same backoff:
    // the operator may fix the users file while the device waits.
    reconnectOnConnackError: true,
    // mqtt-packet would otherwise preallocate a 2-byte Buffer for each of the 65,536 packet ids
    // (~7 MB of heap, a tenth of an idle device agent's memory); writing ids as they come costs nothing here.
    writeCache: false,
    will: opts.will ? { topic: opts.will.topic, payload: Buffer.from(opts.will.payload), retain: opts.will.retain, qos: opts.will.qos } : undefined,
  };
}

/**
 * MQTT 3.1.1 over TCP with TCP_NODELAY (without it a request/response round
 * trip on loopback costs ~44 ms: Nagle meets delayed ACKs). Reconnects with
 * exponential backoff and jitter; subscriptions are restored on reconnect.
 */

/** mqtt.js's form of a subscribe that is sent even for filters it holds (its `resubscribe` flag). */
export function resendMap(filters: string[], qos: 0 | 1): ISubscriptionMap {
  const map: ISubscriptionMap = Object.fromEntries(filters.map((f) => [f, { qos }]));
  map.resubscribe = true;
  return map;
}
