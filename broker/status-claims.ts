/**
 * A device's status names its device, group and model in the payload; the
 * rollout controller, `fleet devices`, the metrics and the gateway count it by
 * those. With `--auth` the broker holds each device to its login: a status
 * naming another device, group or model is refused (and the device cut off, as
 * for any refused publish), so nothing downstream ever counts it elsewhere.
 */
import type { Principal } from './acl.ts';

export type StatusClaimReason = 'status-malformed' | 'status-other-device' | 'status-other-group' | 'status-other-model';

/** Why device `p` may not publish `payload` as its status, or undefined. An empty payload clears the retained status. */
export function statusClaimRefusal(p: Principal, payload: Uint8Array): StatusClaimReason | undefined {
  if (payload.byteLength === 0) return undefined;
  let j: unknown;
  try {
    j = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8'));
  } catch {
    return 'status-malformed';
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) return 'status-malformed';
  const s = j as Record<string, unknown>;
  if (s.device !== p.name) return 'status-other-device';
  if (s.group !== p.group) return 'status-other-group';
  if (s.model !== p.model) return 'status-other-model';
  return undefined;
}
