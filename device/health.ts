import { digestModel } from '../util/model-format.ts';

export interface HealthResult {
  healthy: boolean;
  message?: string;
}

/** Decides, after the switch, whether the new model may stay. */
export interface HealthCheck {
  check(modelPath: string, expectedDigest: string): Promise<HealthResult>;
}

/**
 * The default check: the path applications load resolves to a file that
 * parses and has exactly the digest the release named.
 */
export const digestHealthCheck: HealthCheck = {
  async check(modelPath, expectedDigest) {
    try {
      const got = await digestModel(modelPath);
      return got === expectedDigest ? { healthy: true } : { healthy: false, message: `${modelPath} has digest ${got.slice(0, 16)}…, expected ${expectedDigest.slice(0, 16)}…` };
    } catch (e) {
      return { healthy: false, message: `${modelPath} cannot be read as a model: ${(e as Error).message}` };
    }
  },
};
