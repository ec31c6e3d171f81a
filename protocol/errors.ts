import { FleetError } from '../platform/errors.ts';

/**
 * Reason codes of the protocol layer. Every refusal a device publishes in its
 * status names one of these (or one of the device layer's own, see
 * device/reasons.ts). Each code has a message a person can act on.
 */
export const PROTOCOL_REASONS = {
  'malformed-frame': 'A chunk frame or request is not valid CBOR of the expected shape; it was dropped.',
  'malformed-release': 'The release is not a valid signed release (CBOR shape, field types); ask the publisher to re-publish it.',
  'malformed-trust': 'The trust file is not valid JSON {version, threshold, keys:[{id, publicKey}], rollout:{threshold, keys}}, or a signed trust update is malformed; fix the file and restart the agent.',
  'bad-signature': 'A signature on the release does not verify; the release was altered or signed with another key.',
  'untrusted-key': "The release is signed only by keys that are not in this device's trust file; check which key the publisher used.",
  'wrong-role': 'A manifest was signed by a rollout key (or an assignment by a release key): each role signs only its own documents; check which key signed it.',
  'manifest-mismatch': 'The assignment names another manifest (or model) than the one it travels with: a mix-and-match of signed documents; re-assign the group.',
  'threshold-not-met': "Fewer valid signatures from trusted keys than the trust file's threshold; have more release keys sign.",
  'wrong-model': "The release is for another model than the one this device runs; check the topic and the publisher's --model.",
  'wrong-group': "The release is for another group than this device's; check the topic and the publisher's --group.",
  expired: 'The group assignment has expired; the operator must re-sign it (`fleet refresh`).',
  'not-yet-valid': "The release was issued in the future beyond the allowed clock skew; check the publisher's and the device's clocks.",
  replayed: "The release's sequence number is not above the highest this device accepted: an old or replayed release.",
  'malformed-model': 'The model file is not a valid model (safetensors: header, offsets or sizes; ONNX: protobuf, initializers, external data); the file is damaged or not a model.',
  'unsupported-dtype': 'The update touches a tensor whose dtype cannot be updated (only F32, F16 and BF16 can).',
  'malformed-payload': 'The update payload is not a valid low-rank payload (CBOR shape, sizes); rebuild the update.',
  'shape-mismatch': 'The update does not fit the model: a tensor is missing or has another shape; the update was built for another model.',
  'non-finite': 'Applying the update would put NaN or infinity into a weight; the update is broken.',
  undecryptable: "The sealed payload does not open with this device's group key: the key is missing or wrong, or the payload was altered. Provision the group key (--group-key).",
  'payload-too-large': 'The payload or its chunk count is over the limit this device accepts.',
} as const;

export type ProtocolReason = keyof typeof PROTOCOL_REASONS;

/** Input refused by a protocol rule: always a refusal (platform/errors.ts). */
export class ProtocolError extends FleetError<ProtocolReason> {
  override readonly name = 'ProtocolError';
  readonly detail: string | undefined;
  constructor(code: ProtocolReason, detail?: string) {
    super('refusal', code, detail ? `${PROTOCOL_REASONS[code]} (${detail})` : PROTOCOL_REASONS[code]);
    this.detail = detail;
  }
}

export function isProtocolError(e: unknown): e is ProtocolError {
  return e instanceof ProtocolError;
}
