/**
 * Who may publish and subscribe to what, as a pure function of the principal
 * and the topic. Everything not explicitly allowed below is refused.
 *
 * Topics are never spelled here: publish topics go through Topics.parse(), and
 * so do subscription filters, with each `+` level replaced by a placeholder
 * first (so a `+` is only possible where the protocol has an identifier, never
 * in place of a fixed word such as `status`). `#` is never granted.
 */
import type { ParsedTopic, Topics } from '../protocol/topics.ts';

export const ROLES = ['publisher', 'server', 'device', 'operator', 'rollout', 'viewer', 'gateway'] as const;
export type Role = (typeof ROLES)[number];

export function isRole(s: unknown): s is Role {
  return typeof s === 'string' && (ROLES as readonly string[]).includes(s);
}

/** An authenticated user as the ACL sees it. Devices carry their group and model. */
export interface Principal {
  name: string;
  role: Role;
  group?: string;
  model?: string;
  /** A gateway bound to one site (its client id and its gateway status). */
  site?: string;
}

export type AclAction = 'publish' | 'subscribe';

/** Why a request was refused (stable strings: logs and tests use them). */
export type AclReason =
  | 'sys-topic' // `$SYS/...` is the broker's own
  | 'unknown-topic' // not one of the protocol's topics (or a filter spanning several kinds)
  | 'multi-level-wildcard' // `#` anywhere
  | 'wildcard-not-allowed' // `+` where this principal must name one value
  | 'role-not-allowed' // the role may not do this action on this kind of topic
  | 'other-device' // a device naming another device
  | 'other-group' // a device naming another group
  | 'other-model' // a device naming another model
  | 'other-site' // a gateway bound to a site naming another
  | 'invalid-principal'; // e.g. a device without group or model

export type AclDecision = { allowed: true } | { allowed: false; reason: AclReason };

const ALLOW: AclDecision = { allowed: true };
const refuse = (reason: AclReason): AclDecision => ({ allowed: false, reason });

type Kind = ParsedTopic['kind'];

/** What the non-device roles may do, by topic kind; any identifiers (and `+` for them) allowed. */
const ROLE_KINDS: Record<Exclude<Role, 'device'>, Record<AclAction, readonly Kind[]>> = {
  server: {
    publish: ['frames', 'uploadReceipt', 'release'],
    subscribe: ['request', 'upload', 'release'],
  },
  publisher: {
    publish: ['upload', 'release', 'manifest', 'trust'],
    subscribe: ['uploadReceipt', 'release', 'manifest', 'trust'],
  },
  operator: {
    publish: ['rolloutStatus', 'rolloutControl', 'release'],
    subscribe: ['status', 'presence', 'rolloutStatus', 'release', 'manifest', 'gatewayStatus'],
  },
  /** Read only: what a dashboard in a browser needs (over the WebSocket listener). */
  viewer: {
    publish: [],
    subscribe: ['status', 'presence', 'rolloutStatus', 'release', 'gatewayStatus'],
  },
  /** The rollout controller: a publisher that also watches the fleet and takes commands. */
  rollout: {
    publish: ['upload', 'release', 'manifest', 'rolloutStatus', 'rolloutControl'],
    subscribe: ['uploadReceipt', 'release', 'manifest', 'status', 'presence', 'rolloutStatus', 'rolloutControl'],
  },
  /**
   * A site gateway (gateway/): one upstream client for a site's devices. It relays
   * their statuses and presence (so it may publish any device's), publishes its own
   * status, and fetches updates like a device (requests and frames, any model).
   */
  gateway: {
    publish: ['status', 'presence', 'request', 'gatewayStatus'],
    subscribe: ['release', 'frames', 'trust'],
  },
};

/** A topic (publish) or filter (subscribe) after parsing; `any(v)` is true where the filter had `+`. */
interface Target {
  parsed: ParsedTopic;
  any: (value: string) => boolean;
}

export class Acl {
  constructor(readonly topics: Topics) {}

  /** May `p` publish on `topic` (also used for its will)? */
  publish(p: Principal, topic: string): AclDecision {
    // `$` topics are the server's own (MQTT 3.1.1 §4.7.2); a topic name has no wildcards (§3.3.2.1, [MQTT-3.3.2-2]).
    if (topic.startsWith('$')) return refuse('sys-topic');
    if (topic.includes('+') || topic.includes('#')) return refuse('unknown-topic');
    const parsed = this.topics.parse(topic);
    if (!parsed) return refuse('unknown-topic');
    return this.decide(p, 'publish', { parsed, any: () => false });
  }

  /** May `p` subscribe to `filter` (an exact topic or one with `+` levels)? */
  subscribe(p: Principal, filter: string): AclDecision {
    if (filter.startsWith('$')) return refuse('sys-topic');
    const levels = filter.split('/');
    // `#` is never granted; `+` must fill a whole level (MQTT 3.1.1 §4.7.1.3, [MQTT-4.7.1-3]).
    if (levels.some((l) => l.includes('#'))) return refuse('multi-level-wildcard');
    if (levels.some((l) => l !== '+' && l.includes('+'))) return refuse('unknown-topic');
    // A placeholder for `+` that is a valid identifier but no literal level of this filter.
    let ph = '_any_';
    while (levels.includes(ph)) ph += '_';
    const parsed = this.topics.parse(levels.map((l) => (l === '+' ? ph : l)).join('/'));
    if (!parsed) return refuse('unknown-topic');
    return this.decide(p, 'subscribe', { parsed, any: (v) => v === ph });
  }

  /** Either action, for tables and callers that carry the action as data. */
  check(p: Principal, action: AclAction, topic: string): AclDecision {
    return action === 'publish' ? this.publish(p, topic) : this.subscribe(p, topic);
  }

  private decide(p: Principal, action: AclAction, t: Target): AclDecision {
    if (p.role === 'device') return this.device(p, action, t);
    if (p.role === 'gateway' && p.site !== undefined && action === 'publish' && t.parsed.kind === 'gatewayStatus' && t.parsed.site !== p.site) return refuse('other-site');
    const kinds = ROLE_KINDS[p.role]?.[action];
    if (!kinds) return refuse('invalid-principal');
    return kinds.includes(t.parsed.kind) ? ALLOW : refuse('role-not-allowed');
  }

  /**
   * A device publishes its own status and presence and its requests for its
   * own model; it subscribes to its group's release for its model, to its
   * own frames (any update id) and to its own status. Nothing else.
   */
  private device(p: Principal, action: AclAction, { parsed, any }: Target): AclDecision {
    const { group, model } = p;
    if (!group || !model) return refuse('invalid-principal');
    const own = (field: string, want: string, otherwise: AclReason): AclDecision | undefined => {
      if (any(field)) return refuse('wildcard-not-allowed');
      return field === want ? undefined : refuse(otherwise);
    };
    if (action === 'publish') {
      switch (parsed.kind) {
        case 'status':
        case 'presence':
          return own(parsed.deviceId, p.name, 'other-device') ?? ALLOW;
        case 'request':
          return own(parsed.deviceId, p.name, 'other-device') ?? own(parsed.model, model, 'other-model') ?? ALLOW;
        default:
          return refuse('role-not-allowed');
      }
    }
    switch (parsed.kind) {
      case 'release':
        return own(parsed.group, group, 'other-group') ?? own(parsed.model, model, 'other-model') ?? ALLOW;
      case 'frames':
        // The update id may be `+` (one subscription for every update) or one id.
        return own(parsed.deviceId, p.name, 'other-device') ?? own(parsed.model, model, 'other-model') ?? ALLOW;
      case 'trust':
        // The fleet's signed trust file (key rotation): every device reads it.
        return ALLOW;
      case 'status':
        // Its own retained status, after a reconnect: another agent's there means a shared id (device/session-guard.ts).
        return own(parsed.deviceId, p.name, 'other-device') ?? ALLOW;
      default:
        return refuse('role-not-allowed');
    }
  }
}
