/**
 * The one error family. Every error this code base raises on purpose is a
 * FleetError: a stable, typed `code` (a reason a status, a log or a test can
 * name) and a `kind` that says whose problem it is, as python-tuf's ngclient
 * keeps RepositoryError (the repository served something wrong) apart from
 * the caller's mistakes and from download failures:
 *
 *   refusal   input from outside (the network, a file, a peer) is hostile or
 *             invalid and was refused; nothing changed because of it.
 *   usage     the caller asked for something that cannot be done as asked
 *             (an option, a conflicting process, a missing precondition).
 *   io        the disk, the network or another process failed us; trying
 *             again later may work.
 *   internal  an invariant of our own code does not hold: a bug.
 *
 * Anything that is not a FleetError and not an operating-system error
 * (a TypeError, a RangeError…) is a bug too, and is reported as one
 * (`classify`), never dressed up as a storage or input problem.
 *
 * Pure: no I/O, imports nothing.
 */
export type FleetErrorKind = 'refusal' | 'usage' | 'io' | 'internal';

export class FleetError<C extends string = string> extends Error {
  constructor(
    readonly kind: FleetErrorKind,
    readonly code: C,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
  // Each subclass names itself in a literal (`override readonly name = '…'`): bundles are minified.
  override name = 'FleetError';
}

export function isFleetError(e: unknown): e is FleetError {
  return e instanceof FleetError;
}

/** An operating-system error (fs, net, child_process): it has an errno-style `code` such as ENOENT or ECONNRESET. */
export function isSystemError(e: unknown): e is NodeJS.ErrnoException {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  return e instanceof Error && typeof code === 'string' && /^E[A-Z0-9_]+$/.test(code);
}

/** What kind of error `e` is: FleetErrors say so, system errors are I/O, anything else is a bug. */
export function classify(e: unknown): FleetErrorKind {
  if (isFleetError(e)) return e.kind;
  if (isSystemError(e)) return 'io';
  return 'internal';
}

/** The message of any thrown value, and its stack when it is a bug (for the log). */
export function errorFields(e: unknown): { error: string; stack?: string } {
  const error = e instanceof Error ? e.message : String(e);
  return classify(e) === 'internal' && e instanceof Error && e.stack ? { error, stack: e.stack } : { error };
}

interface DebugLog {
  debug(msg: string, fields?: Record<string, unknown>): void;
}

/**
 * A rejection handler for a promise whose failure changes nothing for the
 * caller, named by why (`.catch(ignoreBecause('best effort: the session is closing'))`).
 * With a logger the failure is logged at debug level with that reason.
 */
export function ignoreBecause(reason: string, log?: DebugLog): (e: unknown) => undefined {
  return (e: unknown) => {
    log?.debug(`ignored: ${reason}`, errorFields(e));
    return undefined;
  };
}

/** Input from outside refused (python-tuf's RepositoryError): for a refusal with no family of its own. */
export class RefusalError<C extends string = string> extends FleetError<C> {
  override readonly name = 'RefusalError';
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super('refusal', code, message, options);
  }
}

/** The caller asked for something that cannot be done as asked: for a usage error with no family of its own. */
export class UsageError<C extends string = string> extends FleetError<C> {
  override readonly name = 'UsageError';
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super('usage', code, message, options);
  }
}

/** The disk, the network or a peer failed: for an I/O error with no family of its own. */
export class IoError<C extends string = string> extends FleetError<C> {
  override readonly name = 'IoError';
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super('io', code, message, options);
  }
}

/** An invariant of our own code does not hold: a bug, raised where it is detected. */
export class InternalError<C extends string = string> extends FleetError<C> {
  override readonly name = 'InternalError';
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super('internal', code, message, options);
  }
}
