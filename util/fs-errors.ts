/** What to do about a file-system error, by its code. */
const FS_ADVICE: Record<string, string> = {
  EACCES: 'permission denied: run as a user that may use it, or choose another path',
  EPERM: 'operation not permitted: run as a user that may use it, or choose another path',
  EROFS: 'the file system is read-only: choose a path on a writable one',
  ENOSPC: 'no space left on the device: free some space, or choose a path on another disk',
  EDQUOT: 'disk quota exceeded: free some space, or choose another path',
  ENOENT: 'no such file or directory: check the path',
  ENOTDIR: 'a part of the path is a file, not a directory: check the path',
  EISDIR: 'it is a directory where a file was expected: name a file',
};

/**
 * A file-system error as `PATH: what to do (CODE in SYSCALL)`: the user's own
 * path (not the temporary file an atomic write was using) and the advice for
 * its errno. Undefined for any other error (no known code, or no path).
 */
export function describeFsError(e: unknown): string | undefined {
  const err = e as NodeJS.ErrnoException | undefined;
  const advice = err?.code ? FS_ADVICE[err.code] : undefined;
  if (!advice || typeof err?.path !== 'string') return undefined;
  // util/fs-atomic.ts writes FILE.tmp-PID-RANDOM and renames it: the user knows FILE.
  const file = err.path.replace(/\.tmp-[0-9]+(-[a-z0-9]+)?$/, '');
  return `${file}: ${advice} (${err.code}${err.syscall ? ` in ${err.syscall}` : ''})`;
}
