import { FleetError } from '../platform/errors.ts';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DEFAULT_CHUNK_SIZE } from '../protocol/chunks.ts';
import { isTopicSegment } from '../protocol/topics.ts';
import { decodeUpdateFile, UpdateFileError } from '../protocol/update-file.ts';
import { fullModelDigest, orderChain } from '../publisher/publish.ts';

/**
 * A staged rollout plan (JSON). Every field is checked; an unknown field is an
 * error (a misspelt `soakSecond` must not silently become "no soak").
 *
 * ```json
 * { "id": "m-v2", "model": "m", "updates": ["update.cbor"], "full": "target.safetensors",
 *   "waves": [ { "group": "canary", "successThreshold": 1, "failureThreshold": { "count": 1 },
 *                "soakSeconds": 600, "timeoutSeconds": 3600, "offline": "block", "window": "01:00-05:00" } ] }
 * ```
 * Paths are relative to the plan file.
 */
export type OfflinePolicy = 'block' | 'skip' | 'fail';
export const OFFLINE_POLICIES: readonly OfflinePolicy[] = ['block', 'skip', 'fail'];

export interface FailureThreshold {
  /** Halt when at least this many devices of the wave failed. */
  count?: number;
  /** Halt when at least this share (0..1] of the wave's devices failed. */
  share?: number;
}

export interface WavePlan {
  group: string;
  /** Share (0..1] of the group's devices that must run the target (state ok) before the soak starts. */
  successThreshold: number;
  /** rolled_back, rejected and failed devices (and timed-out ones) count as failures. */
  failureThreshold: FailureThreshold;
  /** How long the success threshold must hold, with the failure threshold not crossed, before the next wave. */
  soakSeconds: number;
  /** From the wave's release to its success threshold; then unfinished devices are counted. */
  timeoutSeconds: number;
  /** What devices offline at the timeout do: block the wave, be left out of it, or count as failures. */
  offline: OfflinePolicy;
  /** "HH:MM-HH:MM", local time, may wrap past midnight: the wave's release is published only inside it. */
  window?: string;
}

export interface RolloutPlan {
  id: string;
  model: string;
  updates: string[];
  full?: string;
  /** Chunk size of the uploads (default 16 KiB). */
  chunkSize?: number;
  /** Release lifetime (default 30 days). */
  ttlSeconds?: number;
  description?: string;
  waves: WavePlan[];
}

/** The rollout plan file is not valid: refused, the message names the field. */
export class PlanError extends FleetError<'invalid-plan'> {
  override readonly name = 'PlanError';
  constructor(message: string) {
    super('refusal', 'invalid-plan', message);
  }
}

const TOP_FIELDS = ['id', 'model', 'updates', 'full', 'chunkSize', 'ttlSeconds', 'description', 'waves'];
const WAVE_FIELDS = ['group', 'successThreshold', 'failureThreshold', 'soakSeconds', 'timeoutSeconds', 'offline', 'window'];
const FAILURE_FIELDS = ['count', 'share'];
const WINDOW = /^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$/;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown): string => (v === undefined ? 'nothing' : JSON.stringify(v));

function fail(field: string, what: string, got: unknown): never {
  throw new PlanError(`${field}: ${what} (got ${show(got)})`);
}

function noUnknown(field: string, o: Record<string, unknown>, known: string[]): void {
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) throw new PlanError(`${field ? `${field}.` : ''}${k}: unknown field (known: ${known.join(', ')})`);
  }
}

function identifier(field: string, v: unknown): string {
  if (typeof v !== 'string' || !isTopicSegment(v)) fail(field, "must be 1-128 characters of letters, digits, '.', '_' and '-', not dots alone", v);
  return v;
}

function nonEmptyString(field: string, v: unknown): string {
  if (typeof v !== 'string' || v.trim() === '') fail(field, 'must be a non-empty string (a file path)', v);
  return v;
}

function share(field: string, v: unknown, zeroOk: boolean): number {
  const ok = typeof v === 'number' && Number.isFinite(v) && v <= 1 && (zeroOk ? v >= 0 : v > 0);
  if (!ok) fail(field, `must be a number ${zeroOk ? 'from 0' : 'above 0 and'} to 1`, v);
  return v as number;
}

function seconds(field: string, v: unknown, min: number, strict: boolean): number {
  const ok = typeof v === 'number' && Number.isFinite(v) && (strict ? v > min : v >= min) && v <= 366 * 86400;
  if (!ok) fail(field, `must be a number of seconds ${strict ? 'above' : 'from'} ${min} (at most a year)`, v);
  return v as number;
}

/** Minutes since local midnight of a window's start and end. */
export function parseWindow(s: string): { start: number; end: number } {
  const m = WINDOW.exec(s);
  if (!m) throw new PlanError(`window "${s}" must be HH:MM-HH:MM (24-hour local time)`);
  const start = Number(m[1]) * 60 + Number(m[2]);
  const end = Number(m[3]) * 60 + Number(m[4]);
  if (start === end) throw new PlanError(`window "${s}" is empty: its start and end are the same`);
  return { start, end };
}

/** True when `atMs` (local time) is inside the window; a window may wrap past midnight ("22:00-04:00"). */
export function inWindow(window: string | undefined, atMs: number): boolean {
  if (window === undefined) return true;
  const { start, end } = parseWindow(window);
  const d = new Date(atMs);
  const m = d.getHours() * 60 + d.getMinutes();
  return start < end ? m >= start && m < end : m >= start || m < end;
}

function parseWave(v: unknown, k: number): WavePlan {
  const f = `waves[${k}]`;
  if (!isObject(v)) fail(f, 'must be an object', v);
  noUnknown(f, v, WAVE_FIELDS);
  const ft = v.failureThreshold;
  if (!isObject(ft)) fail(`${f}.failureThreshold`, 'must be an object with count and/or share', ft);
  noUnknown(`${f}.failureThreshold`, ft, FAILURE_FIELDS);
  if (ft.count === undefined && ft.share === undefined) fail(`${f}.failureThreshold`, 'must give count, share or both', ft);
  const failure: FailureThreshold = {};
  if (ft.count !== undefined) {
    if (typeof ft.count !== 'number' || !Number.isInteger(ft.count) || ft.count < 1) fail(`${f}.failureThreshold.count`, 'must be an integer from 1', ft.count);
    failure.count = ft.count;
  }
  if (ft.share !== undefined) failure.share = share(`${f}.failureThreshold.share`, ft.share, false);
  if (v.offline === undefined || !OFFLINE_POLICIES.includes(v.offline as OfflinePolicy)) fail(`${f}.offline`, `must be one of ${OFFLINE_POLICIES.join(', ')}`, v.offline);
  const wave: WavePlan = {
    group: identifier(`${f}.group`, v.group),
    successThreshold: share(`${f}.successThreshold`, v.successThreshold, false),
    failureThreshold: failure,
    soakSeconds: seconds(`${f}.soakSeconds`, v.soakSeconds, 0, false),
    timeoutSeconds: seconds(`${f}.timeoutSeconds`, v.timeoutSeconds, 0, true),
    offline: v.offline as OfflinePolicy,
  };
  if (v.window !== undefined) {
    if (typeof v.window !== 'string') fail(`${f}.window`, 'must be a string HH:MM-HH:MM', v.window);
    try {
      parseWindow(v.window);
    } catch (e) {
      throw new PlanError(`${f}.window: ${(e as Error).message}`);
    }
    wave.window = v.window;
  }
  return wave;
}

/** Checks a parsed JSON value against the plan schema; throws PlanError naming the field. */
export function parsePlan(v: unknown): RolloutPlan {
  if (!isObject(v)) fail('plan', 'must be a JSON object', v);
  noUnknown('', v, TOP_FIELDS);
  const plan: RolloutPlan = { id: identifier('id', v.id), model: identifier('model', v.model), updates: [], waves: [] };
  if (v.updates !== undefined) {
    if (!Array.isArray(v.updates)) fail('updates', 'must be an array of file paths', v.updates);
    plan.updates = v.updates.map((u, k) => nonEmptyString(`updates[${k}]`, u));
  }
  if (v.full !== undefined) plan.full = nonEmptyString('full', v.full);
  if (plan.updates.length === 0 && plan.full === undefined) throw new PlanError('updates: give at least one update file, or a full model in "full"');
  if (plan.updates.length > 63) fail('updates', 'at most 63 updates (a release has at most 64 steps)', plan.updates.length);
  if (v.chunkSize !== undefined) {
    if (typeof v.chunkSize !== 'number' || !Number.isInteger(v.chunkSize) || v.chunkSize < 1024 || v.chunkSize > 1 << 20) fail('chunkSize', 'must be an integer from 1024 to 1048576', v.chunkSize);
    plan.chunkSize = v.chunkSize;
  }
  if (v.ttlSeconds !== undefined) plan.ttlSeconds = seconds('ttlSeconds', v.ttlSeconds, 60, false);
  if (v.description !== undefined) {
    if (typeof v.description !== 'string') fail('description', 'must be a string', v.description);
    plan.description = v.description;
  }
  if (!Array.isArray(v.waves) || v.waves.length === 0) fail('waves', 'must be a non-empty array of waves', v.waves);
  if (v.waves.length > 100) fail('waves', 'at most 100 waves', v.waves.length);
  plan.waves = v.waves.map(parseWave);
  const seen = new Map<string, number>();
  plan.waves.forEach((w, k) => {
    const first = seen.get(w.group);
    if (first !== undefined) throw new PlanError(`waves[${k}].group: "${w.group}" is already wave ${first}; each group is one wave`);
    seen.set(w.group, k);
  });
  return plan;
}

/** Parses plan text (JSON); syntax errors name the file. */
export function parsePlanText(text: string, source = 'plan'): RolloutPlan {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new PlanError(`${source} is not valid JSON: ${(e as Error).message}`);
  }
  return parsePlan(v);
}

/** A stable digest of the plan: a restarted controller must run the same plan. */
export function planDigest(plan: RolloutPlan): string {
  const canon = (x: unknown): unknown =>
    isObject(x)
      ? Object.fromEntries(
          Object.keys(x)
            .sort()
            .map((k) => [k, canon(x[k])]),
        )
      : Array.isArray(x)
        ? x.map(canon)
        : x;
  return createHash('sha256')
    .update(JSON.stringify(canon(plan)))
    .digest('hex');
}

export interface PlanPayloads {
  payloads: Uint8Array[];
  fullModel: Uint8Array | undefined;
  /** The digest the release names. */
  target: string;
}

/** The target digest of payloads (PublishError when they do not form chains to one target). */
export function targetOf(payloads: Uint8Array[], fullModel: Uint8Array | undefined): string {
  const chain = payloads.length ? orderChain(payloads).target : undefined;
  const full = fullModel ? fullModelDigest(fullModel) : undefined;
  if (chain !== undefined && full !== undefined && chain !== full) throw new PlanError(`full: the full model's digest ${full.slice(0, 12)} is not the updates' target ${chain.slice(0, 12)}`);
  return (chain ?? full)!;
}

/** Reads the plan's files (relative to `baseDir`) and computes the target. */
export async function loadPayloads(plan: RolloutPlan, baseDir: string): Promise<PlanPayloads> {
  const read = async (field: string, p: string): Promise<Uint8Array> => {
    const file = path.resolve(baseDir, p);
    try {
      return new Uint8Array(await fs.readFile(file));
    } catch (e) {
      throw new PlanError(`${field}: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  // Update files carry their integrity check (protocol/update-file.ts): a damaged one is refused before anything is published.
  const payloads = await Promise.all(
    plan.updates.map(async (u, k) => {
      const file = path.resolve(baseDir, u);
      try {
        return decodeUpdateFile(await read(`updates[${k}]`, u), file);
      } catch (e) {
        if (e instanceof UpdateFileError) throw new PlanError(`updates[${k}]: ${e.message}`);
        throw e;
      }
    }),
  );
  const fullModel = plan.full === undefined ? undefined : await read('full', plan.full);
  return { payloads, fullModel, target: targetOf(payloads, fullModel) };
}

/** Reads and checks a plan file. */
export async function loadPlanFile(file: string): Promise<{ plan: RolloutPlan; dir: string }> {
  const text = await fs.readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new PlanError(`cannot read plan ${file}: ${e.code ?? e.message}`);
  });
  return { plan: parsePlanText(text, file), dir: path.dirname(path.resolve(file)) };
}

export const planChunkSize = (p: RolloutPlan): number => p.chunkSize ?? DEFAULT_CHUNK_SIZE;
export const planTtl = (p: RolloutPlan, fallbackSeconds: number): number => p.ttlSeconds ?? fallbackSeconds;
