import { classify, IoError, RefusalError, UsageError } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import nacl from 'tweetnacl';
import { formatTrustFile, keyIdOf, signingKeyFromSeed, trustOf, type SigningKey } from '../protocol/release.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';

/** Secret key file: JSON {type, id, publicKey, seed} (base64), mode 0600. */
interface KeyFileJson {
  type: 'fleet-ed25519-secret-key';
  id: string;
  publicKey: string;
  seed: string;
}

export interface KeygenResult {
  /** The release key (signs manifests; keep it offline). */
  keyFile: string;
  publicFile: string;
  id: string;
  /** The rollout key (signs group assignments; online, used by rollouts, rollbacks and refreshes). */
  rolloutKeyFile: string;
  rolloutPublicFile: string;
  rolloutId: string;
  /** Devices' trust file: the release key (threshold 1) and the rollout key in its own role. */
  trustFile: string;
}

async function refuseOverwrite(file: string): Promise<void> {
  try {
    await fs.access(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  throw new UsageError('key-exists', `${file} exists; refusing to overwrite a secret key`);
}

/** Writes one secret key (mode 0600) and its public file. */
export async function writeKeyPair(outDir: string, name: string): Promise<{ keyFile: string; publicFile: string; key: SigningKey }> {
  const keyFile = path.join(outDir, `${name}.key`);
  const publicFile = path.join(outDir, `${name}.pub`);
  await refuseOverwrite(keyFile);
  const seed = nacl.randomBytes(32);
  const key = signingKeyFromSeed(seed);
  const secret: KeyFileJson = {
    type: 'fleet-ed25519-secret-key',
    id: key.id,
    publicKey: Buffer.from(key.publicKey).toString('base64'),
    seed: Buffer.from(seed).toString('base64'),
  };
  await writeFileAtomic(keyFile, JSON.stringify(secret, null, 2) + '\n', 0o600);
  await fs.chmod(keyFile, 0o600);
  await writeFileAtomic(publicFile, JSON.stringify({ id: key.id, publicKey: secret.publicKey }, null, 2) + '\n');
  return { keyFile, publicFile, key };
}

/** A release key, a rollout key and the trust file naming both in their roles. */
export async function keygen(outDir: string, name = 'release', rolloutName = 'rollout'): Promise<KeygenResult> {
  await fs.mkdir(outDir, { recursive: true });
  await refuseOverwrite(path.join(outDir, `${name}.key`));
  await refuseOverwrite(path.join(outDir, `${rolloutName}.key`));
  const release = await writeKeyPair(outDir, name);
  const rollout = await writeKeyPair(outDir, rolloutName);
  const trustFile = path.join(outDir, 'trust.json');
  await writeFileAtomic(trustFile, formatTrustFile(trustOf([release.key], [rollout.key])));
  return {
    keyFile: release.keyFile,
    publicFile: release.publicFile,
    id: release.key.id,
    rolloutKeyFile: rollout.keyFile,
    rolloutPublicFile: rollout.publicFile,
    rolloutId: rollout.key.id,
    trustFile,
  };
}

/** Reads a public key file ({id, publicKey}). */
export async function loadPublicKey(file: string): Promise<{ id: string; publicKey: Uint8Array }> {
  const j = JSON.parse(await fs.readFile(file, 'utf8')) as { id?: unknown; publicKey?: unknown };
  if (typeof j.publicKey !== 'string') throw new RefusalError('invalid-key-file', `${file} is not a fleet public key file`);
  const publicKey = new Uint8Array(Buffer.from(j.publicKey, 'base64'));
  if (publicKey.byteLength !== 32 || keyIdOf(publicKey) !== j.id) throw new RefusalError('invalid-key-file', `${file}: the key id does not match the key`);
  return { id: j.id, publicKey };
}

export async function loadSigningKey(file: string): Promise<SigningKey> {
  let j: KeyFileJson;
  try {
    j = JSON.parse(await fs.readFile(file, 'utf8')) as KeyFileJson;
  } catch (e) {
    const why = `cannot read key file ${file}: ${(e as Error).message}`;
    throw classify(e) === 'io' ? new IoError('unreadable-key-file', why, { cause: e }) : new RefusalError('invalid-key-file', why, { cause: e });
  }
  if (j.type !== 'fleet-ed25519-secret-key' || typeof j.seed !== 'string') throw new RefusalError('invalid-key-file', `${file} is not a fleet secret key file`);
  const key = signingKeyFromSeed(new Uint8Array(Buffer.from(j.seed, 'base64')));
  if (key.id !== j.id) throw new RefusalError('invalid-key-file', `${file}: the key id does not match the key`);
  return key;
}
