import { expect } from 'vitest';
import { ProtocolError } from '../../protocol/errors.ts';

/** `f` throws a ProtocolError with exactly this reason code. */
export function expectCode(f: () => unknown, code: string): void {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ProtocolError);
    expect((e as ProtocolError).code).toBe(code);
    return;
  }
  throw new Error(`expected ProtocolError ${code}, nothing was thrown`);
}
