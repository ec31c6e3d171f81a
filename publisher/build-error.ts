import { FleetError, type FleetErrorKind } from '../platform/errors.ts';

/** Why a build was refused; each message names the tensor and the problem. */
export type BuildErrorCode =
  | 'mismatched-models'
  | 'unsupported-dtype'
  | 'non-finite'
  | 'bad-rank'
  | 'bad-energy'
  | 'budget-too-small'
  | 'malformed-model'
  | 'bad-adapter'
  | 'bad-options'
  | 'unwritable-output'
  | 'needs-confirmation'
  | 'bad-calibration';

/** The models or adapters given are refused; the rest are the caller's options or output path. */
const BUILD_KINDS: Partial<Record<BuildErrorCode, FleetErrorKind>> = {
  'bad-rank': 'usage',
  'bad-energy': 'usage',
  'budget-too-small': 'usage',
  'bad-options': 'usage',
  'needs-confirmation': 'usage',
  'unwritable-output': 'io',
};

export class BuildError extends FleetError<BuildErrorCode> {
  override readonly name = 'BuildError';
  constructor(code: BuildErrorCode, message: string) {
    super(BUILD_KINDS[code] ?? 'refusal', code, message);
  }
}
