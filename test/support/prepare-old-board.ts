// `npm run old-board:prepare`: downloads and unpacks Debian's nodejs 18 (this machine's architecture,
// and armhf for qemu-arm) into the test cache that test/integration/old-board.slow.test.ts uses.
// Prints one line per node; exits 1 naming what is missing when one cannot be prepared.
import { cacheDir } from './debian-root.ts';
import { prepareArmBoardNode18, prepareDebianNode18 } from './foreign-node.ts';

let failed = false;
for (const [what, prepare] of [
  ['native', prepareDebianNode18],
  ['arm board', prepareArmBoardNode18],
] as const) {
  const t0 = Date.now();
  try {
    const p = await prepare();
    if (p.ok) console.log(`${what}: ${p.value.label}: ${p.value.arch} ${p.value.version} (${Date.now() - t0} ms)`);
    else {
      console.log(`${what}: cannot prepare: ${p.reason}`);
      failed = true;
    }
  } catch (e) {
    console.log(`${what}: cannot prepare: ${(e as Error).message.split('\n')[0]}`);
    failed = true;
  }
}
if (failed) console.log(`cache: ${cacheDir()}`);
process.exit(failed ? 1 : 0);
