import path from 'node:path';
import { existsSync } from 'node:fs';
import type { Role, SigningKey } from '../protocol/signed.ts';
import { releaseRole, rolloutRole, type TrustFile } from '../protocol/trust.ts';

/**
 * Before a byte is uploaded: would the devices that hold `trust` accept what
 * these keys will sign? Manifests need the release role's threshold of release
 * keys; assignments the rollout role's threshold of rollout keys (or of
 * release keys when the fleet has no rollout role). Returns the one-line
 * reason a device would give, with what to do, or undefined when they would.
 */
export function signerProblem(trust: TrustFile, keys: SigningKey[], rolloutKeys: SigningKey[] | undefined, assign: boolean, signManifest: boolean): string | undefined {
  const count = (role: Role, ks: SigningKey[]): number => new Set(ks.filter((k) => role.keys.some((t) => t.id === k.id)).map((k) => k.id)).size;
  if (signManifest) {
    const r = releaseRole(trust);
    const n = count(r, keys);
    if (n < r.threshold) {
      return `the trust file's release role needs ${r.threshold} of its keys and ${n} of the --key files ${n === 1 ? 'is' : 'are'} among them: devices would refuse the manifest (untrusted-key); give the fleet's release key(s)`;
    }
  }
  if (assign) {
    const r = rolloutRole(trust);
    const signers = rolloutKeys ?? keys;
    const n = count(r, signers);
    if (n < r.threshold) {
      if (trust.rollout && !rolloutKeys) {
        return "the fleet's trust file has a rollout role, so the group assignment must be signed by a rollout key: give --rollout-key (devices would refuse one signed by a release key: wrong-role)";
      }
      return `the trust file's ${trust.rollout ? 'rollout' : 'release'} role needs ${r.threshold} of its keys to sign the assignment and ${n} of the given keys ${n === 1 ? 'is' : 'are'} among them: devices would refuse it (untrusted-key); give the fleet's ${trust.rollout ? 'rollout' : 'release'} key(s)`;
    }
  }
  return undefined;
}

/** The fleet's trust file as `fleet keygen` leaves it: trust.json beside a key file. */
export function trustBesideKeys(keyFiles: string[]): string | undefined {
  for (const k of keyFiles) {
    const t = path.join(path.dirname(k), 'trust.json');
    if (existsSync(t)) return t;
  }
  return undefined;
}
