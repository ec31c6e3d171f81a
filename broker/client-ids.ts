/**
 * Which client ids a user may log in with. MQTT lets a new connection with a
 * client id take over (disconnect) the session of the connection holding it
 * (MQTT 3.1.1 §3.1.4, [MQTT-3.1.4-2]), so
 * a client id a process always uses (`fleet-gateway-SITE`, the update server's,
 * a rollout controller's) must be usable only by the role that runs it, or any
 * login, down to a `viewer`, could kick that process off the broker.
 */
import type { Principal, Role } from './acl.ts';

/** The MQTT client id a device must use (transport clients name themselves so). */
export function deviceClientId(name: string): string {
  return `fleet-device-${name}`;
}

/** Client id prefixes and the only role that may use them. */
export const RESERVED_PREFIXES: ReadonlyArray<{ prefix: string; role: Role }> = [
  { prefix: 'fleet-device-', role: 'device' },
  { prefix: 'fleet-update-server-', role: 'server' },
  { prefix: 'fleet-gateway-', role: 'gateway' },
  { prefix: 'fleet-rollout-', role: 'rollout' },
];

/** Why `p` may not use `clientId`, or undefined when it may. */
export function clientIdRefusal(p: Principal, clientId: string): string | undefined {
  if (clientId === '') return undefined; // the broker names it (§3.1.3.1, [MQTT-3.1.3-6]) (clean sessions only: connect-rules.ts)
  if (p.role === 'device') {
    const want = deviceClientId(p.name);
    return clientId === want ? undefined : `a device must connect as client id ${want}`;
  }
  if (p.role === 'gateway' && p.site !== undefined) {
    const want = `fleet-gateway-${p.site}`;
    return clientId === want ? undefined : `the gateway of site ${p.site} must connect as client id ${want}`;
  }
  const reserved = RESERVED_PREFIXES.find((r) => clientId.startsWith(r.prefix));
  if (reserved && reserved.role !== p.role) return `client id prefix ${reserved.prefix} is reserved to the ${reserved.role} role`;
  return undefined;
}
