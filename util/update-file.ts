import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { checkPayloadSha256, decodeUpdateFile, promisedPayloadSha256, UPDATE_FILE_HEADER_BYTES } from '../protocol/update-file.ts';

/**
 * The payload of the update file `file`, its integrity check verified
 * (protocol/update-file.ts): a damaged or unchecked file is refused with one
 * line naming it and what to do. A file-system error keeps its code and path
 * (cli/program.ts describes it).
 */
export async function readUpdateFile(file: string): Promise<Uint8Array> {
  return decodeUpdateFile(new Uint8Array(await fs.readFile(file)), file);
}

/**
 * Checks the update file `file` as readUpdateFile does, streaming (never
 * holding the payload whole), and returns where its payload starts: for a
 * reader that then takes the payload from the file (device/payload-file.ts).
 */
export async function checkUpdateFile(file: string): Promise<number> {
  const h = await fs.open(file, 'r');
  try {
    const head = new Uint8Array(UPDATE_FILE_HEADER_BYTES);
    const { bytesRead } = await h.read(head, 0, head.byteLength, 0);
    const want = promisedPayloadSha256(head.subarray(0, bytesRead), file);
    const hash = createHash('sha256');
    for await (const chunk of h.createReadStream({ start: UPDATE_FILE_HEADER_BYTES, autoClose: false })) hash.update(chunk as Buffer);
    checkPayloadSha256(want, new Uint8Array(hash.digest()), file);
    return UPDATE_FILE_HEADER_BYTES;
  } finally {
    await h.close();
  }
}
