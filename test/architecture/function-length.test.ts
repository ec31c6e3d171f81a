/**
 * No production function over ~80 lines (issue #16): every function, method,
 * constructor, getter and arrow of every .ts file outside test/, read with
 * TypeScript's own parser. A function is measured from its first token to its
 * closing brace, nested functions included (a nested one is also measured on
 * its own). The exceptions are named below, each with its reason; an exception
 * that no longer needs to be one fails too, so the list only shrinks.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../platform/package-root.ts';

const MAX_LINES = 80;

/** Folders that are not production code. */
const NOT_PRODUCTION = new Set(['test', 'node_modules', 'dist']);

const REGISTRATION = 'declarative command registration (commander: options, descriptions and a call per command)';

/** `file: name` → why it may be longer. */
const ALLOWED: Readonly<Record<string, string>> = {
  'cli/build-commands.ts: registerBuildCommands': REGISTRATION,
  'cli/rollout-commands.ts: registerRolloutCommands': REGISTRATION,
  'cli/release-commands.ts: registerReleaseCommands': REGISTRATION,
  'cli/operator-commands.ts: registerOperatorCommands': REGISTRATION,
  'cli/offline-commands.ts: registerOfflineCommands': REGISTRATION,
};

const ROOT = packageRoot()!;

function productionFiles(dir: string, top = true): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name.startsWith('.') || (top && NOT_PRODUCTION.has(e.name)) || e.name === 'node_modules') continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...productionFiles(p, false));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') && top === false) out.push(p);
  }
  return out;
}

/** A readable name: the function's own, its variable's or property's, or (an argument) the enclosing function's and the call's. */
function nameOf(fn: ts.FunctionLikeDeclaration, src: ts.SourceFile): string {
  const owner = (n: ts.Node): string => {
    for (let p: ts.Node | undefined = n.parent; p; p = p.parent) if (ts.isFunctionLike(p) && 'body' in p && p.body) return nameOf(p as ts.FunctionLikeDeclaration, src);
    return '<module>';
  };
  const cls = (n: ts.Node): string => (ts.isClassLike(n.parent) && n.parent.name ? `${n.parent.name.text}.` : '');
  if (ts.isConstructorDeclaration(fn)) return `${cls(fn)}constructor`;
  if (fn.name) return `${cls(fn)}${fn.name.getText(src)}`;
  const p = fn.parent;
  if (ts.isVariableDeclaration(p) || ts.isPropertyAssignment(p) || ts.isPropertyDeclaration(p)) return p.name.getText(src);
  if (ts.isCallExpression(p)) {
    const callee = ts.isPropertyAccessExpression(p.expression) ? p.expression.name.text : p.expression.getText(src);
    return `${owner(fn)} > ${callee}()`;
  }
  return `${owner(fn)} > <anonymous>`;
}

/** Every function of a source text longer than MAX_LINES, as `file: name (N lines)`. */
function longFunctions(file: string, text: string): Array<{ key: string; lines: number }> {
  const src = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const out: Array<{ key: string; lines: number }> = [];
  const visit = (n: ts.Node): void => {
    if (ts.isFunctionLike(n) && 'body' in n && n.body) {
      const first = src.getLineAndCharacterOfPosition(n.getStart(src)).line;
      const last = src.getLineAndCharacterOfPosition(n.end).line;
      const lines = last - first + 1;
      if (lines > MAX_LINES) out.push({ key: `${file}: ${nameOf(n as ts.FunctionLikeDeclaration, src)}`, lines });
    }
    ts.forEachChild(n, visit);
  };
  visit(src);
  return out;
}

describe('function length', () => {
  const found = productionFiles(ROOT).flatMap((f) => longFunctions(path.relative(ROOT, f).split(path.sep).join('/'), readFileSync(f, 'utf8')));

  it(`no production function is over ${MAX_LINES} lines but the named exceptions`, () => {
    expect(found.filter((f) => !(f.key in ALLOWED)).map((f) => `${f.key} (${f.lines} lines): split it into named functions`)).toEqual([]);
  });

  it('every exception is still needed (remove those that are not)', () => {
    const keys = new Set(found.map((f) => f.key));
    expect(Object.keys(ALLOWED).filter((k) => !keys.has(k))).toEqual([]);
  });

  it('the check catches what it is for', () => {
    const body = (n: number): string => Array.from({ length: n }, (_, i) => `  x += ${i};`).join('\n');
    const text = [
      `export function short(): void {\n${body(78)}\n}`,
      `export function long(): void {\n${body(79)}\n}`,
      `class C {\n  constructor() {\n${body(79)}\n  }\n}`,
      `const arrow = (): void => {\n${body(79)}\n};`,
      `function outer(): void {\n  program.action(async () => {\n${body(79)}\n  });\n}`,
    ].join('\n');
    expect(longFunctions('x/y.ts', text)).toEqual([
      { key: 'x/y.ts: long', lines: 81 },
      { key: 'x/y.ts: C.constructor', lines: 81 },
      { key: 'x/y.ts: arrow', lines: 81 },
      { key: 'x/y.ts: outer', lines: 83 },
      { key: 'x/y.ts: outer > action()', lines: 81 },
    ]);
  });
});
