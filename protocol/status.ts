import { isTopicSegment } from './topics.ts';

/** The device status contract: JSON, retained on fleet/devices/{id}/status. */
export const DEVICE_STATES = ['idle', 'downloading', 'verifying', 'applying', 'testing', 'ok', 'rolled_back', 'rejected', 'failed'] as const;

export type DeviceState = (typeof DEVICE_STATES)[number];

export interface DeviceStatus {
  device: string;
  group: string;
  model: string;
  state: DeviceState;
  /** Digest of the model the device runs now. */
  running: string;
  /** Digest the current release asks for, when there is one. */
  target: string | null;
  /** Release sequence number being processed or last processed. */
  seq: number | null;
  updateId: string | null;
  /** The target is an operator rollback to an earlier version. */
  rollback: boolean;
  /** 0..1 of the current download. */
  progress: number;
  /** Payload bytes held for the current update. */
  bytes: number;
  /** Payload bytes of the current update. */
  totalBytes: number;
  /** Chunks dropped because they did not match the chunk list. */
  badChunks: number;
  /** Payload bytes received per second over the last 10 s of the current download. */
  rateBps: number;
  /** The agent's MQTT socket counters since it started: what the link carried. */
  wire: WireStats | null;
  reason: string | null;
  message: string | null;
  /**
   * The trial of a switched version (A/B boot-counter style): the attempt under way while
   * `testing`, or the one that ended it (`ok`, `rolled_back`); null otherwise, and when the
   * switch is the commit (no health command, no health window).
   */
  attempt?: number | null;
  /** Attempts a trial may take before the device switches back (`--max-attempts`), with `attempt`. */
  maxAttempts?: number | null;
  /**
   * The last ONNX validation of a staged model (`--validate-onnx`): accuracy 0..1 on `samples`
   * labelled samples, and the running model's on the same ones; null when none ran.
   */
  validation?: ValidationFigures | null;
  agent: string;
  /** A random id of the agent process that published it: two agents with one id tell each other apart. */
  instance?: string;
  /** ISO time that agent process started (the younger of two with one id gives way). */
  started?: string;
  /** ISO 8601. */
  time: string;
}

export interface ValidationFigures {
  accuracy: number;
  runningAccuracy: number | null;
  samples: number;
}

export interface WireStats {
  bytesIn: number;
  bytesOut: number;
  /** Successful connections since start (1 + reconnects). */
  connects: number;
}

/**
 * The status as JSON, without the fields that hold the value a reader takes when they are absent
 * (§8: null, 0, false; an optional field's null): each status goes up a narrow uplink, and an
 * idle or downloading one carries several of them. `parseStatus` gives back the same status.
 */
export function encodeStatus(s: DeviceStatus): Uint8Array {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(s)) {
    const fallback = (FIELDS as Record<string, [unknown, unknown]>)[k]?.[1];
    const leftOut = fallback === optional ? v === null : fallback !== required && fallback !== '' && v === fallback;
    if (!leftOut && v !== undefined) out[k] = v;
  }
  return new TextEncoder().encode(JSON.stringify(out));
}

type Field<T> = (v: unknown) => v is T;
const isString = (v: unknown): v is string => typeof v === 'string';
const isNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isCount = (v: unknown): v is number => isNumber(v) && v >= 0;
const isSeq = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const nullable =
  <T>(f: Field<T>): Field<T | null> =>
  (v: unknown): v is T | null =>
    v === null || f(v);
const isValidation = (v: unknown): v is ValidationFigures => {
  if (typeof v !== 'object' || v === null) return false;
  const w = v as Record<string, unknown>;
  return isCount(w.accuracy) && (w.runningAccuracy === null || isCount(w.runningAccuracy)) && isCount(w.samples);
};
const isWire = (v: unknown): v is WireStats => {
  if (typeof v !== 'object' || v === null) return false;
  const w = v as Record<string, unknown>;
  return isCount(w.bytesIn) && isCount(w.bytesOut) && isCount(w.connects);
};

/**
 * Each field: its check, and its value when the status leaves it out (agents
 * older than the field), or `required`. A field present with the wrong type
 * makes the whole status malformed.
 */
const required = Symbol('required');
/** Left out when absent (fields newer agents add; older ones never sent them). */
const optional = Symbol('optional');
const FIELDS: { [K in keyof DeviceStatus]-?: [Field<DeviceStatus[K]>, DeviceStatus[K] | typeof required | typeof optional] } = {
  device: [isIdentifier, required],
  group: [isIdentifier, required],
  model: [isIdentifier, required],
  state: [(v): v is DeviceState => DEVICE_STATES.includes(v as DeviceState), required],
  running: [isString, required],
  target: [nullable(isString), null],
  seq: [nullable(isSeq), null],
  updateId: [nullable(isString), null],
  rollback: [(v): v is boolean => typeof v === 'boolean', false],
  progress: [isNumber, 0],
  bytes: [isCount, 0],
  totalBytes: [isCount, 0],
  badChunks: [isCount, 0],
  rateBps: [isCount, 0],
  wire: [nullable(isWire), null],
  reason: [nullable(isString), null],
  message: [nullable(isString), null],
  attempt: [nullable(isCount), optional],
  maxAttempts: [nullable(isCount), optional],
  validation: [nullable(isValidation), optional],
  agent: [isString, ''],
  instance: [isString, optional],
  started: [isString, optional],
  time: [isString, ''],
};

function isIdentifier(v: unknown): v is string {
  return typeof v === 'string' && isTopicSegment(v);
}

/**
 * Parses a status payload; null when it is not a well-formed status (not
 * JSON, not an object, a required field missing, or any field of the wrong
 * type). Operators' tools skip (and count) what this refuses; they must never
 * crash on it. Unknown fields are dropped.
 */
export function parseStatus(payload: Uint8Array): DeviceStatus | null {
  let j: unknown;
  try {
    j = JSON.parse(new TextDecoder().decode(payload));
  } catch {
    return null;
  }
  if (typeof j !== 'object' || j === null || Array.isArray(j)) return null;
  const src = j as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [k, [check, fallback]] of Object.entries(FIELDS) as Array<[string, [Field<unknown>, unknown]]>) {
    const v = src[k];
    if (v === undefined) {
      if (fallback === required) return null;
      if (fallback !== optional) out[k] = fallback;
    } else if (check(v)) out[k] = v;
    else return null;
  }
  return out as unknown as DeviceStatus;
}

export const PRESENCE_ONLINE = 'online';
export const PRESENCE_OFFLINE = 'offline';

/**
 * A device's presence (docs/protocol.md §8.2): `online` or `offline`, then
 * optionally a space and the Unix time in whole seconds when it changed. The
 * last will is a bare `offline` (a device cannot know when its connection will
 * drop); `fleet broker` stamps it with the time it publishes it.
 */
export interface Presence {
  state: 'online' | 'offline';
  /** Unix seconds when it changed; null when the payload does not say. */
  since: number | null;
}

/** Longest presence payload a reader looks at (`offline` + space + 11 digits); longer is junk. */
export const MAX_PRESENCE_BYTES = 19;
const PRESENCE_FORM = /^(online|offline)(?: ([1-9][0-9]{0,10}))?$/;

export function encodePresence(state: Presence['state'], nowMs: number): string {
  return `${state} ${Math.floor(nowMs / 1000)}`;
}

/** The presence in a payload, or null for junk (too long, another word, a time that is not 1 to 11 digits). */
export function parsePresence(payload: Uint8Array): Presence | null {
  if (payload.byteLength === 0 || payload.byteLength > MAX_PRESENCE_BYTES) return null;
  const m = PRESENCE_FORM.exec(new TextDecoder().decode(payload));
  if (!m) return null;
  return { state: m[1] as Presence['state'], since: m[2] === undefined ? null : Number(m[2]) };
}
