/**
 * Parts passed at construction (issue #16): no production class declares a
 * field with a definite-assignment assertion (`private x!: T`), the mark of a
 * part set by a step after the constructor. Read with TypeScript's parser over
 * every .ts file outside test/; the exceptions are named with their reason.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../platform/package-root.ts';

/** `file: Class.field` → why it is still set after construction. */
const ALLOWED: Readonly<Record<string, string>> = {};

const ROOT = packageRoot()!;

function productionFiles(dir: string, top = true): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name.startsWith('.') || e.name === 'node_modules' || (top && (e.name === 'test' || e.name === 'dist'))) continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...productionFiles(p, false));
    else if (!top && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** The fields of a source text declared with `!`, as `file: Class.field`. */
function lateFields(file: string, text: string): string[] {
  const src = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const out: string[] = [];
  const visit = (n: ts.Node): void => {
    if (ts.isPropertyDeclaration(n) && n.exclamationToken && ts.isClassLike(n.parent)) out.push(`${file}: ${n.parent.name?.text ?? '<class>'}.${n.name.getText(src)}`);
    ts.forEachChild(n, visit);
  };
  visit(src);
  return out;
}

describe('parts passed at construction', () => {
  const found = productionFiles(ROOT).flatMap((f) => lateFields(path.relative(ROOT, f).split(path.sep).join('/'), readFileSync(f, 'utf8')));

  it('no production field is assigned after its constructor but the named exceptions', () => {
    expect(found.filter((k) => !(k in ALLOWED)).map((k) => `${k}: pass it to the constructor (build it in the composition root's steps)`)).toEqual([]);
  });

  it('every exception is still needed', () => {
    expect(Object.keys(ALLOWED).filter((k) => !found.includes(k))).toEqual([]);
  });

  it('the check catches what it is for', () => {
    expect(lateFields('x/g.ts', 'class G {\n  private site!: Site;\n  private readonly store: Store;\n  n = 0;\n}')).toEqual(['x/g.ts: G.site']);
  });
});
