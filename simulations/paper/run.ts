/**
 * Reproduce the headline of Chen et al., "Update Compression for Deep Neural
 * Networks on the Edge" (CVPR 2022 Workshops, arXiv 2203.04516) on MNIST:
 * how much field accuracy each update method buys per byte shipped.
 *
 *   npm run sim:paper [-- --seeds 1,2,3 --jobs 2 --base-train N --field-train N
 *       --test N --base-epochs E --fine-tune-epochs E --lora-epochs E
 *       --sizes 0.1,0.25,... --shift-min PX --shift-max PX --out-dir DIR]
 *
 * Runs every seed in its own worker process (`--jobs` at a time), then writes
 * DIR/results.md, DIR/results.svg and DIR/results.png (DIR: docs/) and ends
 * with one JSON line of the figures. `--worker --seed S` runs one seed and
 * prints its raw result as one JSON line (what the parent reads).
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { DEFAULT_DRIFT } from './data.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import { aggregate, aggregateJson } from './aggregate.ts';
import { runPaper, type PaperOptions } from './pipeline.ts';
import { createProgress } from '../../util/progress.ts';
import { pngPlot } from './png.ts';
import { resultsMarkdown, svgPlot } from './render.ts';
import type { PaperResult } from './result.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface RunOptions {
  options: Partial<PaperOptions>;
  outDir: string;
  seeds: number[];
  jobs: number;
  worker: boolean;
  /** Re-render from a saved DIR/results.json instead of running. */
  renderOnly?: string;
  /** Show every worker's log lines (default: one progress line). */
  verbose: boolean;
}

export function parseOptions(argv: string[]): RunOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      'base-train': { type: 'string' },
      'field-train': { type: 'string' },
      test: { type: 'string' },
      seed: { type: 'string' },
      seeds: { type: 'string' },
      jobs: { type: 'string' },
      worker: { type: 'boolean' },
      'render-only': { type: 'string' },
      verbose: { type: 'boolean' },
      'base-epochs': { type: 'string' },
      'fine-tune-epochs': { type: 'string' },
      'lora-epochs': { type: 'string' },
      sizes: { type: 'string' },
      'shift-min': { type: 'string' },
      'shift-max': { type: 'string' },
      'out-dir': { type: 'string' },
    },
  });
  const int = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} ${v}: expected a whole number`);
    return n;
  };
  const num = (v: string | undefined, name: string): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`--${name} ${v}: expected a number`);
    return n;
  };
  const o: Partial<PaperOptions> = {};
  const set = <K extends keyof PaperOptions>(k: K, v: PaperOptions[K] | undefined): void => {
    if (v !== undefined) o[k] = v;
  };
  set('baseTrain', int(values['base-train'], 'base-train'));
  set('fieldTrain', int(values['field-train'], 'field-train'));
  set('test', int(values.test, 'test'));
  set('seed', int(values.seed, 'seed'));
  set('baseEpochs', int(values['base-epochs'], 'base-epochs'));
  set('fineTuneEpochs', int(values['fine-tune-epochs'], 'fine-tune-epochs'));
  set('loraEpochs', int(values['lora-epochs'], 'lora-epochs'));
  if (values.sizes !== undefined) {
    const s = values.sizes.split(',').map((x) => Number(x));
    if (s.some((x) => !(x > 0))) throw new Error(`--sizes ${values.sizes}: expected positive percentages`);
    o.sizesPercent = s;
  }
  const smin = num(values['shift-min'], 'shift-min');
  const smax = num(values['shift-max'], 'shift-max');
  if (smin !== undefined || smax !== undefined) {
    o.drift = { ...DEFAULT_DRIFT, shiftMin: smin ?? DEFAULT_DRIFT.shiftMin, shiftMax: smax ?? DEFAULT_DRIFT.shiftMax };
  }
  const seeds = values.seeds !== undefined ? values.seeds.split(',').map((x) => int(x, 'seeds')!) : o.seed !== undefined ? [o.seed] : [1, 2, 3];
  const jobs = int(values.jobs, 'jobs') ?? 2;
  if (jobs < 1) throw new Error('--jobs must be at least 1');
  return { options: o, outDir: values['out-dir'] ?? path.join(ROOT, 'docs'), seeds, jobs, worker: values.worker === true, renderOnly: values['render-only'], verbose: values.verbose === true };
}

/** The raw runs, saved beside the results so they can be re-rendered. */
interface SavedRuns {
  command: string;
  wallSeconds: number;
  date: string;
  jobs: number;
  runs: PaperResult[];
}

/** Run one seed in a child process (this file with --worker); resolves with its result. */
const STEP = /^@@step (\d+) (\d+)$/;

function runSeedProcess(argv: string[], seed: number, tmp: string, log: (line: string) => void, onStep: (done: number, total: number) => void, children: Set<ChildProcess>): Promise<PaperResult> {
  return new Promise((resolve, reject) => {
    // Workers keep their scratch files under the runner's own directory (TMPDIR), removed at the end even if a worker is stopped.
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), ...argv, '--worker', '--seed', String(seed)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } });
    children.add(child);
    let out = '';
    let err = '';
    const tail: string[] = [];
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      const lines = err.split('\n');
      err = lines.pop() ?? '';
      for (const l of lines) {
        const m = STEP.exec(l);
        if (m) onStep(Number(m[1]), Number(m[2]));
        else {
          log(l);
          tail.push(l);
          if (tail.length > 20) tail.shift();
        }
      }
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      children.delete(child);
      if (code !== 0) return reject(new Error(`seed ${seed}: worker exited with ${code ?? signal}:\n${[...tail, err].join('\n')}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()!) as PaperResult);
      } catch (e) {
        reject(new Error(`seed ${seed}: unreadable worker output: ${(e as Error).message}`));
      }
    });
  });
}

/** Every seed, `jobs` worker processes at a time; results in seed order. `onProgress`: steps done and expected over all seeds. */
export async function runSeeds(argv: string[], seeds: number[], jobs: number, log: (line: string) => void, onProgress?: (done: number, total: number) => void): Promise<PaperResult[]> {
  const children = new Set<ChildProcess>();
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'sim-paper-'));
  const steps = seeds.map(() => ({ done: 0, total: 0 }));
  const report = (): void => {
    const total = steps.reduce((a, x) => a + x.total, 0);
    const perSeed = Math.max(...steps.map((x) => x.total));
    onProgress?.(
      steps.reduce((a, x) => a + x.done, 0),
      Math.max(total, perSeed * seeds.length),
    );
  };
  const results: PaperResult[] = new Array(seeds.length);
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < seeds.length) {
      const k = next++;
      results[k] = await runSeedProcess(
        argv,
        seeds[k],
        tmp,
        log,
        (done, total) => {
          steps[k] = { done, total };
          report();
        },
        children,
      );
      log(`seed ${seeds[k]} done in ${results[k].wallSeconds.total} s`);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(jobs, seeds.length) }, lane));
  } finally {
    const stopping = [...children].map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null || !c.pid) return resolve();
          c.once('exit', () => resolve());
          process.kill(c.pid, 'SIGTERM');
        }),
    );
    await Promise.all(stopping);
    await fs.rm(tmp, { recursive: true, force: true });
  }
  return results;
}

/** Strip the runner's own flags, keeping the experiment's for the workers. */
function workerArgs(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [name] = a.split('=');
    if (['--seeds', '--jobs', '--seed', '--out-dir', '--render-only'].includes(name)) {
      if (!a.includes('=')) i++;
      continue;
    }
    if (name === '--worker' || name === '--verbose') continue;
    out.push(a);
  }
  return out;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const run = parseOptions(argv);
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  if (run.worker) {
    const result = await runPaper({ ...run.options, log, onStep: (done, total) => log(`@@step ${done} ${total}`) });
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return;
  }
  let saved: SavedRuns;
  if (run.renderOnly) {
    saved = JSON.parse(await fs.readFile(run.renderOnly, 'utf8')) as SavedRuns;
  } else {
    const started = Date.now();
    log(`sim:paper: seeds ${run.seeds.join(', ')}, ${run.jobs} worker process(es)${run.verbose ? '' : ' (--verbose for every step)'}`);
    const progress = createProgress('sim:paper', process.stderr);
    const runs = await runSeeds(workerArgs(argv), run.seeds, run.jobs, run.verbose ? log : (l) => void (/^seed \d+ done/.test(l) && log(l)), (d, n) => progress.update(d, n));
    progress.finish();
    const wallSeconds = Math.round((Date.now() - started) / 100) / 10;
    saved = { command: `npm run sim:paper${argv.length ? ` -- ${argv.join(' ')}` : ''}`, wallSeconds, date: new Date().toISOString().slice(0, 10), jobs: run.jobs, runs };
  }
  const { wallSeconds, runs } = saved;
  const agg = aggregate(runs);
  const md = resultsMarkdown(agg, { command: saved.command, wallSeconds, date: saved.date, jobs: saved.jobs });
  await fs.mkdir(run.outDir, { recursive: true });
  if (!run.renderOnly) await fs.writeFile(path.join(run.outDir, 'results.json'), JSON.stringify({ ...saved, summary: aggregateJson(agg, wallSeconds) }) + '\n');
  await fs.writeFile(path.join(run.outDir, 'results.md'), md);
  await fs.writeFile(path.join(run.outDir, 'results.svg'), svgPlot(agg));
  await fs.writeFile(path.join(run.outDir, 'results.png'), pngPlot(agg));
  process.stdout.write(md);
  process.stdout.write(`${JSON.stringify(aggregateJson(agg, wallSeconds))}\n`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`${(e as Error)?.stack ?? String(e)}\n`);
    process.exit(1);
  });
}
