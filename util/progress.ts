/**
 * Progress for long operations: a redrawn bar on a terminal, plain lines
 * (at most one per 10 % or 5 s) when the output is not a TTY.
 */
export interface Progress {
  /** `detail`, e.g. the tensor being worked on, is shown beside the bar. */
  update(done: number, total: number, detail?: string): void;
  finish(message?: string): void;
}

/** `delayMs`: show nothing for operations that finish sooner than this. */
export function createProgress(label: string, stream: NodeJS.WriteStream = process.stderr, quiet = false, delayMs = 0): Progress {
  if (quiet) return { update() {}, finish() {} };
  const tty = stream.isTTY === true;
  const started = Date.now();
  let shown = false;
  let lastLine = 0;
  let lastPct = -1;
  return {
    update(done, total, detail) {
      if (Date.now() - started < delayMs) return;
      shown = true;
      const pct = total > 0 ? Math.floor((done / total) * 100) : 100;
      if (tty) {
        const width = 30;
        const filled = Math.round((pct / 100) * width);
        const tail = detail ? ` ${detail}`.slice(0, 40).padEnd(40) : '';
        stream.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct}% (${done}/${total})${tail}`);
        return;
      }
      const now = Date.now();
      if (pct === lastPct || (pct - lastPct < 10 && now - lastLine < 5000 && pct !== 100)) return;
      lastPct = pct;
      lastLine = now;
      stream.write(`${label}: ${pct}% (${done}/${total})${detail ? ` ${detail}` : ''}\n`);
    },
    finish(message) {
      if (tty && shown) stream.write('\n');
      if (message) stream.write(`${label}: ${message}\n`);
    },
  };
}
