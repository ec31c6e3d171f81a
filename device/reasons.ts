import { classify, FleetError, type FleetErrorKind } from '../platform/errors.ts';
import { PROTOCOL_REASONS, ProtocolError, type ProtocolReason } from '../protocol/errors.ts';
import { describeFsError } from '../util/fs-errors.ts';

/** Reason codes only the device layer produces. */
export const DEVICE_ONLY_REASONS = {
  'wrong-base': "No step of the release starts from the model this device runs; publish an update built from this device's model digest.",
  'unknown-update': 'The update server does not hold this update; re-run `fleet publish` so it is uploaded again.',
  'chunk-list-mismatch': "The chunk list from the server does not match the release; the server's copy is damaged or stale.",
  'payload-hash-mismatch': 'The assembled payload does not hash to the value in the release.',
  'digest-mismatch': 'The model built from the update does not have the digest the release names; it was not installed.',
  'no-space': 'Not enough free disk space in the device directory for the payload and the new model; free space and it retries on the next release delivery.',
  'storage-error': 'Reading or writing the device directory failed; check permissions and disk health.',
  'health-check-failed': 'The new model failed its health check; the device switched back to the previous model.',
  'health-check-timeout': 'The health command did not finish in time; the device switched back to the previous model.',
  'validation-failed': 'The new model failed its validation before the switch (the validation command, or its accuracy under ONNX Runtime: --validate-onnx); it never became current.',
  'validation-timeout': 'The validation command did not finish in time; the new model never became current.',
  'crashed-while-testing':
    'The agent stopped during every allowed attempt of the trial of the new model (--max-attempts); on restart it switched back to the previous model. Check the model with the health command by hand before publishing it again.',
  'download-stalled': 'No chunk arrived for the configured time; the download is tried again later and resumes from what was received.',
  'corrupt-source': 'The update server keeps sending a chunk that does not match the signed chunk list: its stored copy is damaged. Re-publish the update (the device will not retry this one by itself).',
  'internal-error': 'The agent hit a bug (not bad input, not the disk); its log has the stack. Report it with the log; the device stays on the model it runs.',
} as const;

export type DeviceReason = ProtocolReason | keyof typeof DEVICE_ONLY_REASONS;

export const DEVICE_REASONS: Record<DeviceReason, string> = { ...PROTOCOL_REASONS, ...DEVICE_ONLY_REASONS };

/** The device's own reasons that are not refusals of input: the disk, the link, the update server, a bug. */
const DEVICE_KINDS: Partial<Record<DeviceReason, FleetErrorKind>> = {
  'no-space': 'io',
  'storage-error': 'io',
  'download-stalled': 'io',
  'unknown-update': 'io',
  'internal-error': 'internal',
};

export class DeviceError extends FleetError<DeviceReason> {
  override readonly name = 'DeviceError';
  constructor(
    code: DeviceReason,
    readonly detail?: string,
  ) {
    super(DEVICE_KINDS[code] ?? 'refusal', code, detail ? `${DEVICE_REASONS[code]} (${detail})` : DEVICE_REASONS[code]);
  }
}

/**
 * A failure to read or write the device directory as a `storage-error` whose
 * message an operator can act on, in one line: for an errno the agent knows,
 * the file (not its temporary name), what to do, and the code and call.
 */
export function storageError(e: unknown): DeviceError {
  const where = describeFsError(e);
  const err = new DeviceError('storage-error', where ?? (e as Error | undefined)?.message ?? String(e));
  if (where) err.message = `reading or writing the device directory failed at ${where}`;
  return err;
}

/**
 * Any error as a reason code and a message. Only known errors map to their
 * own code: a DeviceError or ProtocolError to its code, an operating-system
 * error (EACCES, EIO…) to storage-error (storageError's one-line message).
 * Anything else (a TypeError from a bug, a stray Error) is internal-error: the
 * caller logs its stack (platform/errors.ts errorFields), and it is never
 * passed off as a storage or input problem.
 */
export function toReason(e: unknown): { code: DeviceReason; message: string } {
  if (e instanceof DeviceError || e instanceof ProtocolError) return { code: e.code, message: e.message };
  if (classify(e) === 'io') {
    const s = storageError(e);
    return { code: s.code, message: s.message };
  }
  const detail = e instanceof Error ? e.message : String(e);
  return { code: 'internal-error', message: `${DEVICE_REASONS['internal-error']} (${detail})` };
}
