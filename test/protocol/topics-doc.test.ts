import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { Topics } from '../../protocol/topics.ts';

const doc = readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), '../../docs/protocol.md'), 'utf8');
/** The topics table of §2: the first backticked cell of each row. */
const section2 = doc.slice(doc.indexOf('## 2. Topics'), doc.indexOf('## 3.'));
const listed = new Set([...section2.matchAll(/^\| `([^`]+)` \|/gm)].map((m) => m[1]));
/** The placeholder a level stands for, by the level before it. */
const PLACEHOLDER: Record<string, string> = {
  groups: '{group}',
  models: '{model}',
  updates: '{updateId}',
  get: '{deviceId}',
  to: '{deviceId}',
  devices: '{deviceId}',
  rollouts: '{rolloutId}',
  gateways: '{site}',
  manifests: '{hash}',
};

describe('docs/protocol.md §2 lists every topic of protocol/topics.ts', () => {
  it('every builder with no wildcard renders to a row of the table', () => {
    const topics = new Topics();
    const builders = Object.getOwnPropertyNames(Topics.prototype).filter((k) => k !== 'constructor' && k !== 'parse' && typeof (topics as unknown as Record<string, unknown>)[k] === 'function');
    const rendered: string[] = [];
    for (const k of builders) {
      const fn = (topics as unknown as Record<string, (...a: string[]) => unknown>)[k];
      if (k.startsWith('parse') || k === 'updateBase') continue;
      const args = Array.from({ length: fn.length }, (_, i) => `ARG${i}`);
      const t = fn.apply(topics, args);
      if (typeof t !== 'string' || t.includes('+')) continue;
      const levels = t.split('/');
      rendered.push(levels.map((l, i) => (l.startsWith('ARG') ? (PLACEHOLDER[levels[i - 1]] ?? l) : l)).join('/'));
    }
    expect(rendered.length).toBeGreaterThanOrEqual(12);
    expect(rendered.filter((t) => !listed.has(t))).toEqual([]);
  });
});
