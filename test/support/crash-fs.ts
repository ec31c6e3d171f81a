import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { FileHandlePort, FsPort, OpenFlags } from '../../platform/fs-port.ts';

/** Thrown by a CrashFs operation at and after the cut: the power went out there. */
export class PowerCut extends Error {
  constructor(
    readonly op: number,
    what: string,
  ) {
    super(`power cut at mutating operation ${op} (${what})`);
    this.name = 'PowerCut';
  }
}

interface FileNode {
  kind: 'file';
  /** What reads see: the page cache. */
  data: Uint8Array;
  /** What a power cut leaves: the data as of the last fsync. */
  durable: Uint8Array;
}
interface DirNode {
  kind: 'dir';
  /** The entries reads see. */
  live: Map<string, Node>;
  /** The entries a power cut leaves: as of the last fsync of this directory. */
  durable: Map<string, Node>;
}
interface LinkNode {
  kind: 'link';
  target: string;
}
type Node = FileNode | DirNode | LinkNode;

function fsError(code: string, op: string, p: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: ${op} '${p}'`) as NodeJS.ErrnoException;
  e.code = code;
  e.path = p;
  return e;
}

const newDir = (): DirNode => ({ kind: 'dir', live: new Map(), durable: new Map() });
const newFile = (data = new Uint8Array(0), durable = new Uint8Array(0)): FileNode => ({ kind: 'file', data, durable });

/**
 * An in-memory file system modelling a page cache over a disk, for power-cut
 * tests of the device's storage path (strict POSIX durability):
 *
 * - a file's bytes survive a power cut only as of its last fsync (of a handle);
 * - a directory entry change (create, rename, unlink, symlink, mkdir) survives
 *   only once the directory holding it is fsynced; until then a power cut
 *   undoes it (a new file in a never-fsynced directory is gone, a rename is
 *   undone, a removed file comes back);
 * - `cutAfter(n)` makes the n-th mutating operation, and every operation
 *   after it, throw PowerCut instead of running; `crash()` is the reboot:
 *   a new CrashFs holding only what was durable.
 *
 * Paths are absolute, POSIX; relative symlink targets resolve from the link's directory.
 */
export class CrashFs implements FsPort {
  /** Mutating operations run (or attempted) so far. */
  ops = 0;
  /** Set once the cut has happened: the process is dead. */
  dead = false;
  /** Counts per operation kind, for reports. */
  readonly counts = new Map<string, number>();
  private cut: number | undefined;

  private constructor(private readonly root: DirNode) {}

  static empty(): CrashFs {
    return new CrashFs(newDir());
  }

  /** Copy a real directory tree to `at`; everything seeded is durable. */
  static async fromDirectory(realDir: string, at: string): Promise<CrashFs> {
    const c = CrashFs.empty();
    const copy = async (from: string, to: string): Promise<void> => {
      c.seedDir(to);
      for (const e of await fs.readdir(from, { withFileTypes: true })) {
        const src = path.join(from, e.name);
        const dst = path.posix.join(to, e.name);
        if (e.isDirectory()) await copy(src, dst);
        else if (e.isSymbolicLink()) c.seedLink(await fs.readlink(src), dst);
        else c.seedFile(dst, new Uint8Array(await fs.readFile(src)));
      }
    };
    await copy(realDir, at);
    return c;
  }

  /** Seed (durably, without counting) a directory and its parents. */
  seedDir(dir: string): void {
    let d = this.root;
    for (const name of parts(dir)) {
      let n = d.live.get(name);
      if (!n) {
        n = newDir();
        d.live.set(name, n);
        d.durable.set(name, n);
      }
      if (n.kind !== 'dir') throw fsError('ENOTDIR', 'seed', dir);
      d = n;
    }
  }

  /** Seed a durable file. */
  seedFile(file: string, data: Uint8Array | string): void {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : new Uint8Array(data);
    this.seedEntry(file, newFile(bytes, new Uint8Array(bytes)));
  }

  /** Seed a durable symlink. */
  seedLink(target: string, file: string): void {
    this.seedEntry(file, { kind: 'link', target });
  }

  private seedEntry(p: string, n: Node): void {
    this.seedDir(path.posix.dirname(p));
    const d = this.lookupDir(path.posix.dirname(p), 'seed');
    d.live.set(path.posix.basename(p), n);
    d.durable.set(path.posix.basename(p), n);
  }

  /** From the n-th mutating operation on (counting from 1, from now), every operation throws PowerCut. */
  cutAfter(n: number): void {
    this.cut = this.ops + n;
  }

  /** The reboot: a new file system holding only the durable state. */
  crash(): CrashFs {
    const seen = new Map<Node, Node>();
    const copy = (n: Node): Node => {
      const had = seen.get(n);
      if (had) return had;
      let c: Node;
      if (n.kind === 'file') c = newFile(new Uint8Array(n.durable), new Uint8Array(n.durable));
      else if (n.kind === 'link') c = { kind: 'link', target: n.target };
      else {
        const d = newDir();
        seen.set(n, d);
        for (const [name, child] of n.durable) d.live.set(name, copy(child));
        d.durable = new Map(d.live);
        c = d;
      }
      seen.set(n, c);
      return c;
    };
    return new CrashFs(copy(this.root) as DirNode);
  }

  /**
   * A process kill (SIGKILL) rather than a power cut: the process died but the
   * machine did not, so the page cache, every write and rename, stays.
   */
  revive(): CrashFs {
    return new CrashFs(this.root);
  }

  // --- the model ------------------------------------------------------------

  /** Any operation: dead processes do nothing. */
  private alive(what: string): void {
    if (this.dead) throw new PowerCut(this.ops, `${what} after the cut`);
  }

  /** A mutating operation: counted; the cut happens here. */
  private mutate(what: string): void {
    this.alive(what);
    this.ops++;
    this.counts.set(what, (this.counts.get(what) ?? 0) + 1);
    if (this.cut !== undefined && this.ops >= this.cut) {
      this.dead = true;
      throw new PowerCut(this.ops, what);
    }
  }

  /** Resolve a path to its node; symlinks are followed in the middle, and at the end when `follow`. */
  private resolve(p: string, follow: boolean, op: string, depth = 0): { parent: DirNode; name: string; node: Node | undefined } {
    if (depth > 16) throw fsError('ELOOP', op, p);
    const names = parts(p);
    if (names.length === 0) return { parent: this.root, name: '', node: this.root };
    let d = this.root;
    let at = '/';
    for (let i = 0; i < names.length; i++) {
      const name = names[i];
      const n = d.live.get(name);
      const last = i === names.length - 1;
      if (last && (!follow || n?.kind !== 'link')) return { parent: d, name, node: n };
      if (!n) throw fsError('ENOENT', op, p);
      if (n.kind === 'link') {
        const rest = names.slice(i + 1).join('/');
        const to = path.posix.resolve(at, n.target, rest);
        return this.resolve(to, follow, op, depth + 1);
      }
      if (n.kind !== 'dir') throw fsError('ENOTDIR', op, p);
      d = n;
      at = path.posix.join(at, name);
    }
    throw new Error('unreachable');
  }

  private lookupDir(p: string, op: string): DirNode {
    const { node } = this.resolve(p, true, op);
    if (!node) throw fsError('ENOENT', op, p);
    if (node.kind !== 'dir') throw fsError('ENOTDIR', op, p);
    return node;
  }

  private lookupFile(p: string, op: string): FileNode {
    const { node } = this.resolve(p, true, op);
    if (!node) throw fsError('ENOENT', op, p);
    if (node.kind !== 'file') throw fsError('EISDIR', op, p);
    return node;
  }

  // --- FsPort -----------------------------------------------------------------

  async open(file: string, flags: OpenFlags): Promise<FileHandlePort> {
    const creating = flags === 'w' || flags === 'w+';
    if (creating) this.mutate('open-w');
    else this.alive('open');
    const { parent, name, node } = this.resolve(file, true, 'open');
    let f: FileNode;
    if (!node) {
      if (!creating) throw fsError('ENOENT', 'open', file);
      f = newFile();
      parent.live.set(name, f);
    } else if (node.kind !== 'file') {
      throw fsError('EISDIR', 'open', file);
    } else {
      f = node;
      if (creating) f.data = new Uint8Array(0);
    }
    return new CrashHandle(this, f, flags !== 'r');
  }

  /** @internal for handles */
  handleOp(what: string, mutating: boolean): void {
    if (mutating) this.mutate(what);
    else this.alive(what);
  }

  async readFile(file: string): Promise<Uint8Array> {
    this.alive('readFile');
    return new Uint8Array(this.lookupFile(file, 'readFile').data);
  }

  async writeFile(file: string, data: Uint8Array | string): Promise<void> {
    this.mutate('writeFile');
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : new Uint8Array(data);
    const { parent, name, node } = this.resolve(file, true, 'writeFile');
    if (node && node.kind !== 'file') throw fsError('EISDIR', 'writeFile', file);
    if (node) node.data = bytes;
    else parent.live.set(name, newFile(bytes));
  }

  async rename(from: string, to: string): Promise<void> {
    this.mutate('rename');
    const a = this.resolve(from, false, 'rename');
    if (!a.node) throw fsError('ENOENT', 'rename', from);
    const b = this.resolve(to, false, 'rename');
    if (b.node?.kind === 'dir') throw fsError('EISDIR', 'rename', to);
    a.parent.live.delete(a.name);
    b.parent.live.set(b.name, a.node);
  }

  async rm(target: string, opts: { recursive?: boolean; force?: boolean } = {}): Promise<void> {
    this.mutate('rm');
    const { parent, name, node } = this.resolve(target, false, 'rm');
    if (!node) {
      if (opts.force) return;
      throw fsError('ENOENT', 'rm', target);
    }
    if (node.kind === 'dir' && !opts.recursive) throw fsError('ERR_FS_EISDIR', 'rm', target);
    parent.live.delete(name);
  }

  async mkdirp(dir: string): Promise<void> {
    this.alive('mkdir');
    let d = this.root;
    for (const name of parts(dir)) {
      const n = d.live.get(name);
      if (n?.kind === 'dir') {
        d = n;
        continue;
      }
      if (n) throw fsError('EEXIST', 'mkdir', dir);
      this.mutate('mkdir');
      const c = newDir();
      d.live.set(name, c);
      d = c;
    }
  }

  async readdir(dir: string): Promise<string[]> {
    this.alive('readdir');
    return [...this.lookupDir(dir, 'readdir').live.keys()].sort();
  }

  async symlink(target: string, file: string): Promise<void> {
    this.mutate('symlink');
    const { parent, name, node } = this.resolve(file, false, 'symlink');
    if (node) throw fsError('EEXIST', 'symlink', file);
    parent.live.set(name, { kind: 'link', target });
  }

  async readlink(file: string): Promise<string> {
    this.alive('readlink');
    const { node } = this.resolve(file, false, 'readlink');
    if (!node) throw fsError('ENOENT', 'readlink', file);
    if (node.kind !== 'link') throw fsError('EINVAL', 'readlink', file);
    return node.target;
  }

  async fsyncDir(dir: string): Promise<void> {
    this.mutate('fsyncDir');
    const d = this.lookupDir(dir, 'fsyncDir');
    d.durable = new Map(d.live);
  }

  async freeBytes(): Promise<number> {
    this.alive('freeBytes');
    return 1 << 30;
  }

  async copyFile(from: string, to: string): Promise<void> {
    this.mutate('copyFile');
    const src = this.lookupFile(from, 'copyFile');
    const { parent, name, node } = this.resolve(to, true, 'copyFile');
    if (node && node.kind !== 'file') throw fsError('EISDIR', 'copyFile', to);
    if (node) node.data = new Uint8Array(src.data);
    else parent.live.set(name, newFile(new Uint8Array(src.data)));
  }

  async exists(file: string): Promise<boolean> {
    this.alive('exists');
    try {
      return this.resolve(file, true, 'exists').node !== undefined;
    } catch (e) {
      if (e instanceof PowerCut) throw e;
      return false;
    }
  }
}

class CrashHandle implements FileHandlePort {
  private closed = false;
  constructor(
    private readonly fs: CrashFs,
    private readonly f: FileNode,
    private readonly writable: boolean,
  ) {}

  private check(what: string, mutating: boolean): void {
    this.fs.handleOp(what, mutating);
    if (this.closed) throw fsError('EBADF', what, '(closed handle)');
  }

  async read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesRead: number }> {
    this.check('read', false);
    const got = this.f.data.subarray(position, position + length);
    buffer.set(got, offset);
    return { bytesRead: got.byteLength };
  }

  async write(buffer: Uint8Array, offset: number, length: number, position: number): Promise<{ bytesWritten: number }> {
    this.check('write', true);
    if (!this.writable) throw fsError('EBADF', 'write', '(read-only handle)');
    const end = position + length;
    if (end > this.f.data.byteLength) {
      const grown = new Uint8Array(end);
      grown.set(this.f.data);
      this.f.data = grown;
    }
    this.f.data.set(buffer.subarray(offset, offset + length), position);
    return { bytesWritten: length };
  }

  async truncate(length: number): Promise<void> {
    this.check('truncate', true);
    const t = new Uint8Array(length);
    t.set(this.f.data.subarray(0, length));
    this.f.data = t;
  }

  async stat(): Promise<{ size: number }> {
    this.check('stat', false);
    return { size: this.f.data.byteLength };
  }

  async sync(): Promise<void> {
    this.check('fsync', true);
    this.f.durable = new Uint8Array(this.f.data);
  }

  async close(): Promise<void> {
    // Closing writes nothing back (close is not fsync); a dead process's handles close by themselves.
    this.closed = true;
  }
}

function parts(p: string): string[] {
  if (!path.posix.isAbsolute(p)) throw new Error(`CrashFs wants absolute paths, got ${p}`);
  return path.posix
    .normalize(p)
    .split('/')
    .filter((s) => s !== '');
}
