import { ProtocolError, type ProtocolReason } from '../../protocol/errors.ts';

/** The reason code `fn` throws as a ProtocolError, or 'no error'; any other error propagates. */
export function codeOf(fn: () => unknown): ProtocolReason | 'no error' {
  try {
    fn();
  } catch (e) {
    if (e instanceof ProtocolError) return e.code;
    throw e;
  }
  return 'no error';
}
