import { promises as fs } from 'node:fs';
import path from 'node:path';
import nacl from 'tweetnacl';
import { formatTrustFile, signingKeyFromSeed, type SigningKey } from '../protocol/release.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';

/** Secret key file: JSON {type, id, publicKey, seed} (base64), mode 0600. */
interface KeyFileJson {
  type: 'fleet-ed25519-secret-key';
  id: string;
  publicKey: string;
  seed: string;
}

export interface KeygenResult {
  keyFile: string;
  publicFile: string;
  trustFile: string;
  id: string;
}

export async function keygen(outDir: string, name = 'release'): Promise<KeygenResult> {
  await fs.mkdir(outDir, { recursive: true });
  const seed = nacl.randomBytes(32);
  const key = signingKeyFromSeed(seed);
  const keyFile = path.join(outDir, `${name}.key`);
  const publicFile = path.join(outDir, `${name}.pub`);
  const trustFile = path.join(outDir, 'trust.json');
  for (const f of [keyFile]) {
    try {
      await fs.access(f);
      throw new Error(`${f} exists; refusing to overwrite a secret key`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  const secret: KeyFileJson = {
    type: 'fleet-ed25519-secret-key',
    id: key.id,
    publicKey: Buffer.from(key.publicKey).toString('base64'),
    seed: Buffer.from(seed).toString('base64'),
  };
  await writeFileAtomic(keyFile, JSON.stringify(secret, null, 2) + '\n', 0o600);
  await fs.chmod(keyFile, 0o600);
  await writeFileAtomic(publicFile, JSON.stringify({ id: key.id, publicKey: secret.publicKey }, null, 2) + '\n');
  await writeFileAtomic(trustFile, formatTrustFile({ threshold: 1, keys: [{ id: key.id, publicKey: key.publicKey }] }));
  return { keyFile, publicFile, trustFile, id: key.id };
}

export async function loadSigningKey(file: string): Promise<SigningKey> {
  let j: KeyFileJson;
  try {
    j = JSON.parse(await fs.readFile(file, 'utf8')) as KeyFileJson;
  } catch (e) {
    throw new Error(`cannot read key file ${file}: ${(e as Error).message}`);
  }
  if (j.type !== 'fleet-ed25519-secret-key' || typeof j.seed !== 'string') throw new Error(`${file} is not a fleet secret key file`);
  const key = signingKeyFromSeed(new Uint8Array(Buffer.from(j.seed, 'base64')));
  if (key.id !== j.id) throw new Error(`${file}: the key id does not match the key`);
  return key;
}
