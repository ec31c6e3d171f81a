import { promises as fs } from 'node:fs';
import { decodeUpdateFile } from '../protocol/update-file.ts';

/**
 * The payload of the update file `file`, its integrity check verified
 * (protocol/update-file.ts): a damaged or unchecked file is refused with one
 * line naming it and what to do. A file-system error keeps its code and path
 * (cli/program.ts describes it).
 */
export async function readUpdateFile(file: string): Promise<Uint8Array> {
  return decodeUpdateFile(new Uint8Array(await fs.readFile(file)), file);
}

