/**
 * Progress for long operations: a redrawn bar on a terminal, plain lines
 * (at most one per 10 % or 5 s) when the output is not a TTY.
 */
export interface Progress {
  update(done: number, total: number): void;
  finish(message?: string): void;
}

export function createProgress(label: string, stream: NodeJS.WriteStream = process.stderr, quiet = false): Progress {
  if (quiet) return { update() {}, finish() {} };
  const tty = stream.isTTY === true;
  let lastLine = 0;
  let lastPct = -1;
  return {
    update(done, total) {
      const pct = total > 0 ? Math.floor((done / total) * 100) : 100;
      if (tty) {
        const width = 30;
        const filled = Math.round((pct / 100) * width);
        stream.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct}% (${done}/${total})`);
        return;
      }
      const now = Date.now();
      if (pct === lastPct || (pct - lastPct < 10 && now - lastLine < 5000 && pct !== 100)) return;
      lastPct = pct;
      lastLine = now;
      stream.write(`${label}: ${pct}% (${done}/${total})\n`);
    },
    finish(message) {
      if (tty) stream.write('\n');
      if (message) stream.write(`${label}: ${message}\n`);
    },
  };
}
