/**
 * The layering of README.md's "Architecture": a folder imports only folders
 * on lower floors, never one on its own floor or above, so there is no folder
 * cycle. Read from the imports of every .ts file of the repository (static,
 * `export … from` and `import()`), with TypeScript's own pre-processor.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../platform/package-root.ts';

/** Floors, lowest first (README.md, "Architecture"). */
const FLOORS: readonly (readonly string[])[] = [
  ['platform'],
  ['protocol'],
  ['util'],
  ['transport'],
  ['publisher', 'server'],
  ['broker'],
  ['device'],
  ['rollout', 'gateway'],
  ['operator'],
  ['nodes'],
  ['cli'],
  ['simulations'],
  ['bench', 'scripts'],
  ['test'],
];

/** The `fleet` command: run, never imported (but by the tests). */
const ENTRY = 'cli';

const ROOT = packageRoot()!;
const floorOf = new Map(FLOORS.flatMap((names, floor) => names.map((n) => [n, floor] as const)));

interface Edge {
  from: string;
  to: string;
  /** The importing file and the specifier, for the message. */
  where: string;
}

function tsFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules' || e.name.startsWith('.') || e.name === 'dist') continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...tsFiles(p));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

/** The top folder of a repository file; '' for a file at the root (vitest.config.ts). */
function folderOf(file: string): string {
  const parts = path.relative(ROOT, file).split(path.sep);
  return parts.length > 1 ? parts[0] : '';
}

/** Every import between two of our folders. */
function folderEdges(): Edge[] {
  const edges: Edge[] = [];
  for (const file of tsFiles(ROOT)) {
    const from = folderOf(file);
    for (const im of ts.preProcessFile(readFileSync(file, 'utf8'), true, true).importedFiles) {
      if (!im.fileName.startsWith('.')) continue;
      const to = folderOf(path.resolve(path.dirname(file), im.fileName));
      if (to !== from && from !== '') edges.push({ from, to, where: `${path.relative(ROOT, file)} imports ${im.fileName}` });
    }
  }
  return edges;
}

/** The imports that break the layering: to a folder on the same floor or above, or to a folder the floors do not name. */
function violations(edges: readonly Edge[]): string[] {
  const out: string[] = [];
  for (const e of edges) {
    const a = floorOf.get(e.from);
    const b = floorOf.get(e.to);
    if (a === undefined || b === undefined) out.push(`${e.where}: ${a === undefined ? e.from : e.to}/ is on no floor (add it to README.md's layering and FLOORS)`);
    else if (b >= a) out.push(`${e.where}: ${e.from}/ may not import ${e.to}/ (${b === a ? 'same floor' : 'a higher floor'})`);
    else if (e.to === ENTRY && e.from !== 'test') out.push(`${e.where}: nothing but test/ imports ${ENTRY}/ (move what is shared below it)`);
  }
  return out;
}

/** Folder cycles (each as a path a -> b -> … -> a). */
function cycles(edges: readonly Edge[]): string[] {
  const next = new Map<string, Set<string>>();
  for (const e of edges) next.set(e.from, (next.get(e.from) ?? new Set()).add(e.to));
  const found: string[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const visit = (n: string, trail: string[]): void => {
    if (state.get(n) === 'done') return;
    if (state.get(n) === 'open') {
      found.push([...trail.slice(trail.indexOf(n)), n].join(' -> '));
      return;
    }
    state.set(n, 'open');
    for (const m of next.get(n) ?? []) visit(m, [...trail, n]);
    state.set(n, 'done');
  };
  for (const n of next.keys()) visit(n, []);
  return found;
}

describe('the import graph', () => {
  const edges = folderEdges();

  it('reads the imports of the repository (static, re-exports and dynamic)', () => {
    expect(edges.some((e) => e.from === 'nodes' && e.to === 'broker')).toBe(true);
    // cli/main.ts loads the broker node with import() only.
    expect(edges.some((e) => e.where.startsWith(path.join('cli', 'main.ts')) && e.to === 'nodes')).toBe(true);
  });

  it('has no import from a lower folder to a higher one', () => {
    expect(violations(edges)).toEqual([]);
  });

  it('has no folder cycle', () => {
    expect(cycles(edges)).toEqual([]);
  });

  it('the checks catch what they are for', () => {
    const bad: Edge[] = [
      { from: 'util', to: 'device', where: 'util/x.ts imports ../device/fs-port.ts' },
      { from: 'device', to: 'util', where: 'device/y.ts imports ../util/z.ts' },
      { from: 'gateway', to: 'rollout', where: 'gateway/g.ts imports ../rollout/r.ts' },
      { from: 'attic', to: 'util', where: 'attic/a.ts imports ../util/z.ts' },
      { from: 'bench', to: 'cli', where: 'bench/b.ts imports ../cli/demo.ts' },
    ];
    expect(violations(bad)).toEqual([
      'util/x.ts imports ../device/fs-port.ts: util/ may not import device/ (a higher floor)',
      'gateway/g.ts imports ../rollout/r.ts: gateway/ may not import rollout/ (same floor)',
      "attic/a.ts imports ../util/z.ts: attic/ is on no floor (add it to README.md's layering and FLOORS)",
      'bench/b.ts imports ../cli/demo.ts: nothing but test/ imports cli/ (move what is shared below it)',
    ]);
    expect(cycles(bad)).toEqual(['util -> device -> util']);
  });
});
