import { ignoreBecause } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import type { Command } from 'commander';
import { InvalidArgumentError, Option } from 'commander';
import { sha256Hex } from '../protocol/chunks.ts';
import { decodePayload } from '../protocol/lowrank.ts';
import { describeDelta, type DeltaKind } from '../protocol/delta-info.ts';
import { BuildError } from '../publisher/build-error.ts';
import { buildUpdate, type BuildMode, type BuildReport } from '../publisher/build.ts';
import { loraSource, twoModelSource, type DeltaSource } from '../publisher/delta-source.ts';
import { loraFactors, parseLoraConfig, type LoraLayout } from '../publisher/lora.ts';
import type { Quant } from '../publisher/quantize.ts';
import type { Method } from '../publisher/rd.ts';
import { loadCalibration } from '../publisher/calib.ts';
import { digestModel, openModelFile } from '../util/model-format.ts';
import { createProgress } from '../util/progress.ts';
import { encodeUpdateFile } from '../protocol/update-file.ts';
import { readUpdateFile } from '../util/update-file.ts';

/** "150000", "150k", "2M" (powers of 1000), or "0.5%" of the base model's bytes. */
export function parseBudget(v: string): { bytes?: number; percent?: number } {
  const m = /^(\d+(?:\.\d+)?)\s*(%|k|K|M|G)?$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError('expected a byte count (e.g. 150000, 150k, 2M) or a percentage of the base model (e.g. 0.5%)');
  const x = Number(m[1]);
  if (m[2] === '%') return { percent: x };
  const mult = m[2] ? { k: 1e3, K: 1e3, M: 1e6, G: 1e9 }[m[2]]! : 1;
  return { bytes: Math.floor(x * mult) };
}

/** Write to a temporary file and rename, so a failed command leaves no output file. */
async function writeOutput(file: string, data: Uint8Array | string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    await fs.writeFile(tmp, data);
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

const WRITE_HINTS: Record<string, string> = {
  ENOENT: 'its directory does not exist: create it first',
  ENOTDIR: 'a part of its path is not a directory',
  EACCES: 'permission denied: choose a directory you can write, or fix its permissions',
  EPERM: 'permission denied: choose a directory you can write, or fix its permissions',
  EROFS: 'the file system is read-only: choose another directory',
  ENOSPC: 'the disk is full: free space or choose another disk',
  EISDIR: 'it is a directory: give a file name',
};

/** Before computing: the update and its report can be created where --out says. */
async function checkWritable(file: string): Promise<void> {
  const st = await fs.stat(file).catch(ignoreBecause('absent (or not statable): the write itself says why it fails'));
  if (st?.isDirectory()) throw new BuildError('unwritable-output', `cannot write --out ${file}: ${WRITE_HINTS.EISDIR}`);
  for (const probe of [`${file}.tmp-${process.pid}`, `${reportPath(file)}.tmp-${process.pid}`]) {
    try {
      await (await fs.open(probe, 'wx')).close();
      await fs.rm(probe, { force: true });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? 'error';
      throw new BuildError('unwritable-output', `cannot write --out ${file}: ${WRITE_HINTS[code] ?? `${code} (${(e as Error).message})`}`);
    }
  }
}

/** An update larger than half the model, or one far from its target, is written only with --yes. */
function concerns(r: BuildReport): string[] {
  const out: string[] = [];
  if (r.updateBytes > r.modelBytes / 2) out.push(`the update is ${pct(r.updateBytes, r.modelBytes)} of the model's bytes, more than half (sending the model itself costs about as much)`);
  // A layer re-fitted to the target's outputs is meant to differ from ΔW: its weight error says nothing.
  const worst = r.tensors.reduce<BuildReport['tensors'][number] | undefined>((w, t) => (!r.refitted?.includes(t.name) && t.relError > (w?.relError ?? -Infinity) ? t : w), undefined);
  if (worst && worst.relError > 0.5) out.push(`tensor ${worst.name} keeps a relative error of ${worst.relError.toFixed(2)}, above 0.5 (raise --rank, --budget or --energy)`);
  return out;
}

export function reportPath(updateFile: string): string {
  return `${updateFile}.report.json`;
}

function pct(a: number, b: number): string {
  return `${((100 * a) / b).toFixed(3)} %`;
}

interface Row {
  name: string;
  shape: number[];
  kind: DeltaKind;
  rank: number | null;
  dtype: string;
  bytes: number;
  relError: number | null;
}

function printTensors(rows: Row[], out: (s: string) => void): void {
  out(`${'tensor'.padEnd(40)} ${'shape'.padEnd(16)} ${'kind'.padEnd(10)} ${'bits'.padEnd(12)} ${'bytes'.padStart(10)} ${'rel. error'.padStart(11)}`);
  for (const t of rows) {
    const kind = t.kind === 'dense' || t.kind === 'sign' ? t.kind : `${t.kind === 'mixed' ? 'mixed' : 'rank'} ${t.rank}`;
    const err = t.relError === null ? '-' : t.relError.toExponential(2);
    out(`${t.name.padEnd(40)} ${`[${t.shape.join(',')}]`.padEnd(16)} ${kind.padEnd(10)} ${t.dtype.padEnd(12)} ${String(t.bytes).padStart(10)} ${err.padStart(11)}`);
  }
}

function printReport(r: BuildReport, out: (s: string) => void): void {
  printTensors(r.tensors, out);
  if (r.refitted?.length) out(`re-fitted to the target's outputs on the calibration inputs (their error is against ΔW, not what they aim at): ${r.refitted.join(', ')}`);
  out(
    `update ${r.updateBytes} bytes = ${pct(r.updateBytes, r.modelBytes)} of the model's ${r.modelBytes} bytes; ${r.updateParams} stored values = ${pct(r.updateParams, r.modelParams)} of ${r.modelParams} parameters; ${r.unchanged} tensors unchanged`,
  );
  out(`from ${r.baseDigest}\nto   ${r.targetDigest}`);
}

/** Names from an adapter's config on a terminal: control characters shown as '?'. */
const printable = (s: string): string => s.replace(/\p{Cc}/gu, '?');

/** What a LoRA build reports beyond the tensors: how 2-D layers were read, and what --allow-partial left out. */
interface LoraReport {
  layout: LoraLayout[];
  leftOut: Array<{ module: string; reason: string }>;
}

function printLora(r: LoraReport, out: (s: string) => void): void {
  const counts = new Map<string, number>();
  for (const l of r.layout) counts.set(`${l.storedAs} (by ${l.by})`, (counts.get(`${l.storedAs} (by ${l.by})`) ?? 0) + 1);
  if (counts.size > 0) out(`LoRA layers read as: ${[...counts].map(([k, n]) => `${n} ${k}`).join(', ')}`);
  for (const u of r.leftOut) out(printable(`left out: ${u.module}: ${u.reason}`));
}

/** The options of `fleet build`, as commander parses them. */
interface BuildOptions {
  base: string;
  target?: string;
  lora?: string;
  loraConfig?: string;
  out: string;
  rank?: number;
  budget?: { bytes?: number; percent?: number };
  energy?: number;
  quant: Quant;
  method: 'lowrank' | Method;
  calib?: string;
  json?: boolean;
  allowPartial?: boolean;
  fanInFanOut?: string[];
  yes?: boolean;
}

/** Combinations of options that cannot build, refused before any file is read. */
function checkBuildOptions(o: BuildOptions): void {
  const modes = [o.rank !== undefined, o.budget !== undefined, o.energy !== undefined].filter(Boolean).length;
  if (!!o.target === !!o.lora) throw new BuildError('bad-options', 'give exactly one of --target (a retrained model) or --lora (an adapter)');
  if (o.target && modes !== 1) throw new BuildError('bad-options', 'give exactly one of --rank, --budget or --energy');
  if (o.lora && (o.budget !== undefined || o.energy !== undefined)) throw new BuildError('bad-options', 'with --lora only --rank (to re-compress) may be given');
  if (o.method !== 'lowrank' && o.budget === undefined) throw new BuildError('bad-options', `--method ${o.method} needs --budget (it spends one budget across tensors and methods)`);
  if (o.calib && (o.method === 'lowrank' || o.method === 'dense')) throw new BuildError('bad-options', '--calib needs --method auto, mixed or sign');
  if (o.lora && !o.loraConfig) throw new BuildError('bad-options', '--lora needs --lora-config adapter_config.json');
  if (!o.lora && (o.allowPartial || o.fanInFanOut)) throw new BuildError('bad-options', '--allow-partial and --fan-in-fan-out apply to --lora only');
}

/** The deltas of a PEFT adapter over the base model, refusing (without --allow-partial) one that cannot be merged whole. */
async function loraDeltaSource(o: BuildOptions & { lora: string }): Promise<{ source: DeltaSource; lora: LoraReport }> {
  const base = await openModelFile(o.base).catch((e: unknown) => {
    throw new BuildError('malformed-model', `base model ${o.base}: ${(e as Error).message}`);
  });
  const header = { tensors: base.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })) };
  await base.close();
  const config = parseLoraConfig(await fs.readFile(o.loraConfig!, 'utf8'));
  const { factors, whole, computed, unmapped, layout } = loraFactors(new Uint8Array(await fs.readFile(o.lora)), config, header, { fanInFanOut: o.fanInFanOut });
  if (unmapped.length > 0 && !o.allowPartial) {
    const shown = printable(
      unmapped
        .slice(0, 3)
        .map((u) => `${u.module}: ${u.reason}`)
        .join('; '),
    );
    throw new BuildError(
      'bad-adapter',
      `${unmapped.length} part(s) of the adapter cannot be merged as PEFT would: ${shown}${unmapped.length > 3 ? '; …' : ''} (fix the adapter, or pass --allow-partial to build without them)`,
    );
  }
  for (const u of unmapped) process.stderr.write(printable(`left out (--allow-partial): adapter module ${u.module}: ${u.reason}`) + '\n');
  if (factors.length + whole.length + computed.length === 0) throw new BuildError('bad-adapter', `no module of the adapter maps onto the base model (${unmapped.length} unmapped)`);
  return { source: await loraSource(o.base, factors, whole, computed), lora: { layout, leftOut: unmapped } };
}

/** What --rank, --energy or --budget asks for (none: re-use an adapter's factors). */
function buildMode(o: BuildOptions, baseFileSize: number): BuildMode {
  if (o.rank !== undefined) return { kind: 'rank', rank: o.rank };
  if (o.energy !== undefined) return { kind: 'energy', fraction: o.energy };
  if (o.budget) return { kind: 'budget', bytes: o.budget.bytes ?? Math.floor((o.budget.percent! / 100) * baseFileSize) };
  return { kind: 'factors' };
}

/** Build from the source, then write the update and its report (only with --yes if the result is worrying) and print it. */
async function buildAndWrite(o: BuildOptions, source: DeltaSource, lora: LoraReport | undefined): Promise<void> {
  const mode = buildMode(o, source.base.fileSize);
  const started = Date.now();
  const progress = createProgress('build', process.stderr, o.json === true, 1000);
  const metrics = o.calib ? await loadCalibration(o.calib, new Map(source.base.tensors.map((t) => [t.name, t.shape]))) : undefined;
  const { payload, report } = await buildUpdate({ source, mode, quant: o.quant, method: o.method, metrics, onProgress: (d, n, name) => progress.update(d, n, name) });
  progress.finish();
  const worries = concerns(report);
  if (worries.length > 0 && !o.yes) throw new BuildError('needs-confirmation', `${worries.join('; ')}: nothing written; pass --yes to write it anyway`);
  for (const w of worries) process.stderr.write(`warning: ${w}\n`);
  const full = { ...report, ...(lora ? { lora } : {}), payloadSha256: sha256Hex(payload), seconds: (Date.now() - started) / 1000, peakRssMB: await peakRssMB() };
  const file = encodeUpdateFile(payload);
  await writeOutput(o.out, file);
  await writeOutput(reportPath(o.out), JSON.stringify(full, null, 2) + '\n');
  if (o.json) process.stdout.write(JSON.stringify(full) + '\n');
  else {
    printReport(full, (s) => process.stdout.write(s + '\n'));
    if (lora) printLora(lora, (s) => process.stdout.write(s + '\n'));
    process.stdout.write(`wrote ${o.out} (${file.byteLength} bytes: a ${payload.byteLength}-byte payload behind its integrity check) and ${reportPath(o.out)} in ${full.seconds.toFixed(1)} s\n`);
  }
}

/** `fleet build`: check the options and the output, open the delta source, build, write, close. */
async function runBuild(o: BuildOptions): Promise<void> {
  checkBuildOptions(o);
  await checkWritable(o.out);
  const { source, lora } = o.lora ? await loraDeltaSource({ ...o, lora: o.lora }) : { source: await twoModelSource(o.base, o.target!), lora: undefined };
  try {
    await buildAndWrite(o, source, lora);
  } finally {
    await source.close();
  }
}

export function registerBuildCommands(program: Command): void {
  program
    .command('build')
    .description('build a low-rank update from two models (randomized SVD) or from a PEFT LoRA adapter')
    .requiredOption('--base <file>', 'the model devices run (.safetensors or .onnx)')
    .option('--target <file>', 'the retrained model (the same format; an ONNX target must have the same graph)')
    .option('--lora <file>', 'PEFT adapter_model.safetensors (instead of --target)')
    .option('--lora-config <file>', 'PEFT adapter_config.json (with --lora)')
    .requiredOption('--out <file>', 'the update file to write')
    .option('--rank <n>', 'rank of every changed matrix', (v) => Number(v))
    .option('--budget <bytes|pct%>', 'total update size, spent where it removes the most error', parseBudget)
    .option('--energy <fraction>', "keep this fraction of each ΔW's squared Frobenius norm", (v) => Number(v))
    .addOption(new Option('--quant <q>', 'number format of the factors').choices(['f32', 'f16', 'int8']).default('f32'))
    .addOption(
      new Option('--method <m>', 'with --budget: lowrank (factors in --quant), or one rate–distortion allocation per tensor over mixed-precision factors, sign + scales and dense (auto), or only one of them')
        .choices(['lowrank', 'auto', 'mixed', 'sign', 'dense'])
        .default('lowrank'),
    )
    .option('--calib <stats>', 'with --method auto|mixed|sign: safetensors of per-layer input Gram matrices (or diagonals), to minimise output error (docs/compression.md)')
    .option('--allow-partial', 'with --lora: build even if some adapter tensors cannot be used (the report lists them)')
    .option('--fan-in-fan-out <modules>', 'with --lora: the 2-D layers stored [in, out] (GPT-2 Conv1D), comma-separated names or suffixes; every other layer is [out, in]', (v) =>
      v
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean),
    )
    .option('--yes', 'write the update even if it is larger than half the model or a tensor keeps a relative error above 0.5')
    .option('--json', 'print the report as one JSON line')
    .action(runBuild);

  program
    .command('inspect')
    .description('show what an update holds: per tensor the kind (rank r, mixed r, sign, dense), bits, bytes, error; totals')
    .argument('<update>', 'update file')
    .option('--base <file>', 'the base model, to report sizes against it')
    .option('--json', 'one JSON line')
    .action(async (file: string, o: { base?: string; json?: boolean }) => {
      const bytes = await readUpdateFile(file);
      const p = decodePayload(bytes);
      const sidecar = await fs
        .readFile(reportPath(file), 'utf8')
        .then((t) => JSON.parse(t) as BuildReport & { payloadSha256: string })
        .catch(ignoreBecause('no readable report beside the update: shown without it'));
      const built = sidecar?.payloadSha256 === sha256Hex(bytes) ? sidecar : undefined;
      const errors = new Map(built?.tensors.map((t) => [t.name, t.relError]) ?? []);
      let modelBytes = built?.modelBytes;
      let modelParams = built?.modelParams;
      if (o.base) {
        const digest = await digestModel(o.base).catch((e: unknown) => {
          throw new BuildError('malformed-model', `base model ${o.base}: ${(e as Error).message}`);
        });
        if (digest !== p.base) throw new BuildError('mismatched-models', `${o.base} is not this update's base: its digest is ${digest}, the update applies to ${p.base}`);
        const m = await openModelFile(o.base);
        modelBytes = m.fileSize;
        modelParams = m.tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
        await m.close();
      }
      const tensors = p.tensors.map((d) => {
        const x = describeDelta(d);
        return { name: d.name, shape: d.shape, kind: x.kind, rank: x.rank, dtype: x.dtype, bytes: x.bytes, params: x.params, relError: errors.get(d.name) ?? null };
      });
      const params = tensors.reduce((a, t) => a + t.params, 0);
      const summary = {
        updateId: sha256Hex(bytes).slice(0, 32),
        from: p.base,
        to: p.target,
        updateBytes: bytes.byteLength,
        updateParams: params,
        modelBytes: modelBytes ?? null,
        modelParams: modelParams ?? null,
        percentOfModelBytes: modelBytes ? (100 * bytes.byteLength) / modelBytes : null,
        percentOfModelParams: modelParams ? (100 * params) / modelParams : null,
        tensors,
      };
      if (o.json) {
        process.stdout.write(JSON.stringify(summary) + '\n');
        return;
      }
      const out = (s: string): boolean => process.stdout.write(s + '\n');
      printTensors(tensors, out);
      out(
        `update ${summary.updateBytes} bytes${modelBytes ? ` = ${pct(summary.updateBytes, modelBytes)} of the model's ${modelBytes} bytes` : ''}; ${params} stored values${modelParams ? ` = ${pct(params, modelParams)} of ${modelParams} parameters` : ''}`,
      );
      if (!modelBytes) out('(pass --base MODEL to see the update against the model)');
      if (!built) out('(no build report beside the update: relative errors unknown)');
      out(`update id ${summary.updateId}\nfrom ${p.base}\nto   ${p.target}`);
    });
}

/**
 * This process's peak resident memory in MiB: on Linux the high-water mark of its own address
 * space (VmHWM, new at exec), since getrusage's maxRSS also counts what the parent had resident
 * when it forked (a benchmark holding two 100 MB models would see its builds "peak" at its own
 * size); elsewhere maxRSS.
 */
async function peakRssMB(): Promise<number> {
  const status = await fs.readFile('/proc/self/status', 'utf8').catch(ignoreBecause('no /proc (not Linux): getrusage instead'));
  const hwm = status === undefined ? null : /^VmHWM:\s+(\d+) kB$/m.exec(status);
  return hwm ? Number(hwm[1]) / 1024 : process.resourceUsage().maxRSS / 1024;
}
