import { PROTOCOL_REASONS, ProtocolError, type ProtocolReason } from '../protocol/errors.ts';
import { describeFsError } from '../util/fs-errors.ts';

/** Reason codes only the device layer produces. */
export const DEVICE_ONLY_REASONS = {
  'wrong-base': 'No step of the release starts from the model this device runs; publish an update built from this device\'s model digest.',
  'unknown-update': 'The update server does not hold this update; re-run `fleet publish` so it is uploaded again.',
  'chunk-list-mismatch': 'The chunk list from the server does not match the release; the server\'s copy is damaged or stale.',
  'payload-hash-mismatch': 'The assembled payload does not hash to the value in the release.',
  'digest-mismatch': 'The model built from the update does not have the digest the release names; it was not installed.',
  'no-space': 'Not enough free disk space in the device directory for the payload and the new model; free space and it retries on the next release delivery.',
  'storage-error': 'Reading or writing the device directory failed; check permissions and disk health.',
  'health-check-failed': 'The new model failed its health check; the device switched back to the previous model.',
  'health-check-timeout': 'The health command did not finish in time; the device switched back to the previous model.',
  'validation-failed': 'The new model failed its validation before the switch (the validation command, or its accuracy under ONNX Runtime: --validate-onnx); it never became current.',
  'validation-timeout': 'The validation command did not finish in time; the new model never became current.',
  'crashed-while-testing': 'The agent stopped during every allowed attempt of the trial of the new model (--max-attempts); on restart it switched back to the previous model. Check the model with the health command by hand before publishing it again.',
  'download-stalled': 'No chunk arrived for the configured time; the download is tried again later and resumes from what was received.',
  'corrupt-source': 'The update server keeps sending a chunk that does not match the signed chunk list: its stored copy is damaged. Re-publish the update (the device will not retry this one by itself).',
} as const;

export type DeviceReason = ProtocolReason | keyof typeof DEVICE_ONLY_REASONS;

export const DEVICE_REASONS: Record<DeviceReason, string> = { ...PROTOCOL_REASONS, ...DEVICE_ONLY_REASONS };

export class DeviceError extends Error {
  constructor(readonly code: DeviceReason, readonly detail?: string) {
    super(detail ? `${DEVICE_REASONS[code]} (${detail})` : DEVICE_REASONS[code]);
    this.name = 'DeviceError';
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

/** Any error as a reason code and a message; unknown errors are storage errors. */
export function toReason(e: unknown): { code: DeviceReason; message: string } {
  const known = e instanceof DeviceError || e instanceof ProtocolError ? e : storageError(e);
  return { code: known.code, message: known.message };
}
