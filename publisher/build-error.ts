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

export class BuildError extends Error {
  constructor(readonly code: BuildErrorCode, message: string) {
    super(message);
    this.name = 'BuildError';
  }
}
