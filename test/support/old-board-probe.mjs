// A probe for a foreign node (plain JavaScript, Node 18+): reads a length-prefixed block from a TCP
// server on loopback, answers with one JSON line: its SHA-256, process.arch/version and memory use.
// Usage: node old-board-probe.mjs PORT
import { createHash } from 'node:crypto';
import net from 'node:net';

const MAX = 64 * 1024 * 1024;
const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: old-board-probe.mjs PORT (the loopback port of the test server)');
  process.exit(2);
}
const t0 = performance.now();
const sock = net.connect({ host: '127.0.0.1', port });
const hash = createHash('sha256');
let header = Buffer.alloc(0);
let want = -1;
let got = 0;
sock.on('data', (b) => {
  if (want < 0) {
    header = Buffer.concat([header, b]);
    if (header.length < 4) return;
    want = header.readUInt32BE(0);
    if (want > MAX) {
      console.error(`the server claims ${want} bytes, more than ${MAX}`);
      process.exit(3);
    }
    b = header.subarray(4);
  }
  const take = b.subarray(0, want - got);
  hash.update(take);
  got += take.length;
  if (got === want) {
    const m = process.memoryUsage();
    sock.end(
      JSON.stringify({
        sha256: hash.digest('hex'),
        bytes: got,
        arch: process.arch,
        version: process.version,
        rss: m.rss,
        heapUsed: m.heapUsed,
        ms: Math.round(performance.now() - t0),
      }) + '\n',
    );
  }
});
sock.on('error', (e) => {
  console.error(`probe: ${e.message}`);
  process.exit(1);
});
