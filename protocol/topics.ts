/**
 * Every MQTT topic the system uses, in one place. Nothing else spells a topic.
 * At most 7 levels each; identifiers may not contain MQTT wildcards or '/'.
 */
export const DEFAULT_PREFIX = 'fleet';

/**
 * The identifier rule, for topic levels and for path components alike: every
 * identifier from the network (group, model, device id, rollout id, site)
 * may become a directory or file name (the update server's and the gateway's
 * release store, device directories), so one made only of dots (`.`, `..`:
 * "here" and "up") is refused with the rest.
 */
const SEGMENT = /^(?!\.+$)[A-Za-z0-9._-]{1,128}$/;

/** What the rule says, for error messages. */
export const SEGMENT_RULE = "may only use letters, digits, '.', '_' and '-' (1-128 characters, not dots alone)";

/** True when `s` may be used as one topic level (group, model, device id, update id) and as one path component. */
export function isTopicSegment(s: string): boolean {
  return typeof s === 'string' && SEGMENT.test(s);
}

export function assertSegment(kind: string, s: string): string {
  if (!isTopicSegment(s)) throw new TypeError(`${kind} "${s}" ${SEGMENT_RULE}`);
  return s;
}

export class Topics {
  constructor(readonly prefix: string = DEFAULT_PREFIX) {
    for (const level of prefix.split('/')) assertSegment('topic prefix level', level);
  }

  /** Retained signed release for one group and model. Empty payload = withdrawn. */
  release(group: string, model: string): string {
    return `${this.prefix}/groups/${assertSegment('group', group)}/models/${assertSegment('model', model)}/release`;
  }
  /** Subscription for every release (update server mirror). */
  allReleases(): string {
    return `${this.prefix}/groups/+/models/+/release`;
  }
  /** Retained signed manifest (release keys), named by the SHA-256 of its body: assignments point at it. */
  manifest(model: string, hash: string): string {
    return `${this.prefix}/models/${assertSegment('model', model)}/manifests/${assertSegment('manifest hash', hash)}`;
  }
  /** Every manifest of one model (publishers and the rollout key look up a target's manifest). */
  manifests(model: string): string {
    return `${this.prefix}/models/${assertSegment('model', model)}/manifests/+`;
  }
  /** Retained signed trust file (key rotation; signed by the current release threshold). */
  trust(): string {
    return `${this.prefix}/trust`;
  }
  /** Device -> server: chunk or chunk-list request. */
  request(model: string, updateId: string, deviceId: string): string {
    return `${this.updateBase(model, updateId)}/get/${assertSegment('device id', deviceId)}`;
  }
  /** Server subscription to every request. */
  allRequests(): string {
    return `${this.prefix}/models/+/updates/+/get/+`;
  }
  /** Server -> device: frames for one device. */
  frames(model: string, updateId: string, deviceId: string): string {
    return `${this.updateBase(model, updateId)}/to/${assertSegment('device id', deviceId)}`;
  }
  /** Device subscription to all its frames for one model. */
  framesFor(model: string, deviceId: string): string {
    return `${this.prefix}/models/${assertSegment('model', model)}/updates/+/to/${assertSegment('device id', deviceId)}`;
  }
  /** A gateway's one subscription to all its frames, of every model (gateway/upstream-fetcher.ts). */
  framesForAnyModel(deviceId: string): string {
    return `${this.prefix}/models/+/updates/+/to/${assertSegment('device id', deviceId)}`;
  }
  /** Publisher -> server: upload frames. */
  upload(model: string, updateId: string): string {
    return `${this.updateBase(model, updateId)}/put`;
  }
  allUploads(): string {
    return `${this.prefix}/models/+/updates/+/put`;
  }
  /** Server -> publisher: upload receipts (not retained). */
  uploadReceipt(model: string, updateId: string): string {
    return `${this.updateBase(model, updateId)}/stored`;
  }
  /** Retained JSON status of one device. */
  status(deviceId: string): string {
    return `${this.prefix}/devices/${assertSegment('device id', deviceId)}/status`;
  }
  allStatuses(): string {
    return `${this.prefix}/devices/+/status`;
  }
  /** Retained `online` / `offline` (last will). */
  presence(deviceId: string): string {
    return `${this.prefix}/devices/${assertSegment('device id', deviceId)}/presence`;
  }
  allPresence(): string {
    return `${this.prefix}/devices/+/presence`;
  }
  rolloutStatus(rolloutId: string): string {
    return `${this.prefix}/rollouts/${assertSegment('rollout id', rolloutId)}/status`;
  }
  allRolloutStatuses(): string {
    return `${this.prefix}/rollouts/+/status`;
  }
  /** Retained JSON commands (pause, resume, abort) for a running rollout controller. */
  rolloutControl(rolloutId: string): string {
    return `${this.prefix}/rollouts/${assertSegment('rollout id', rolloutId)}/control`;
  }

  /** Every model's release for one group (a site gateway that knows the group but not the models). */
  groupReleases(group: string): string {
    return `${this.prefix}/groups/${assertSegment('group', group)}/models/+/release`;
  }
  /** Retained JSON status of one site gateway (gateway/). */
  gatewayStatus(site: string): string {
    return `${this.prefix}/gateways/${assertSegment('site', site)}/status`;
  }
  allGatewayStatuses(): string {
    return `${this.prefix}/gateways/+/status`;
  }

  /** Parse a topic back into its parts; null when it is not one of ours. */
  parse(topic: string): ParsedTopic | null {
    const p = this.prefix.split('/');
    const t = topic.split('/');
    for (let i = 0; i < p.length; i++) if (t[i] !== p[i]) return null;
    const r = t.slice(p.length);
    const parsed = this.parseLevels(r);
    if (!parsed) return null;
    // Every identifier taken from a topic obeys the same rule as the builders.
    for (const [k, v] of Object.entries(parsed)) if (k !== 'kind' && !isTopicSegment(v)) return null;
    return parsed;
  }

  private parseLevels(r: string[]): ParsedTopic | null {
    if (r.length === 5 && r[0] === 'groups' && r[2] === 'models' && r[4] === 'release') {
      return { kind: 'release', group: r[1], model: r[3] };
    }
    if (r[0] === 'models' && r[2] === 'updates' && r.length >= 5) {
      const model = r[1];
      const updateId = r[3];
      if (r.length === 6 && r[4] === 'get') return { kind: 'request', model, updateId, deviceId: r[5] };
      if (r.length === 6 && r[4] === 'to') return { kind: 'frames', model, updateId, deviceId: r[5] };
      if (r.length === 5 && r[4] === 'put') return { kind: 'upload', model, updateId };
      if (r.length === 5 && r[4] === 'stored') return { kind: 'uploadReceipt', model, updateId };
    }
    if (r.length === 3 && r[0] === 'models' && r[2] === 'manifests') return null;
    if (r.length === 4 && r[0] === 'models' && r[2] === 'manifests') return { kind: 'manifest', model: r[1], hash: r[3] };
    if (r.length === 1 && r[0] === 'trust') return { kind: 'trust' };
    if (r.length === 3 && r[0] === 'devices' && r[2] === 'status') return { kind: 'status', deviceId: r[1] };
    if (r.length === 3 && r[0] === 'devices' && r[2] === 'presence') return { kind: 'presence', deviceId: r[1] };
    if (r.length === 3 && r[0] === 'rollouts' && r[2] === 'status') return { kind: 'rolloutStatus', rolloutId: r[1] };
    if (r.length === 3 && r[0] === 'rollouts' && r[2] === 'control') return { kind: 'rolloutControl', rolloutId: r[1] };
    if (r.length === 3 && r[0] === 'gateways' && r[2] === 'status') return { kind: 'gatewayStatus', site: r[1] };
    return null;
  }

  private updateBase(model: string, updateId: string): string {
    return `${this.prefix}/models/${assertSegment('model', model)}/updates/${assertSegment('update id', updateId)}`;
  }
}

export type ParsedTopic =
  | { kind: 'release'; group: string; model: string }
  | { kind: 'request'; model: string; updateId: string; deviceId: string }
  | { kind: 'frames'; model: string; updateId: string; deviceId: string }
  | { kind: 'upload'; model: string; updateId: string }
  | { kind: 'uploadReceipt'; model: string; updateId: string }
  | { kind: 'manifest'; model: string; hash: string }
  | { kind: 'trust' }
  | { kind: 'status'; deviceId: string }
  | { kind: 'presence'; deviceId: string }
  | { kind: 'rolloutStatus'; rolloutId: string }
  | { kind: 'rolloutControl'; rolloutId: string }
  | { kind: 'gatewayStatus'; site: string };
