import { promises as fs } from 'node:fs';
import type { Command } from 'commander';
import { onnxCalibration } from '../publisher/onnx-calib.ts';
import { modelFormatOf } from '../util/model-format.ts';
import { readSamples } from '../util/onnx-run.ts';
import { parseIntArg } from './options.ts';
import { UsageError } from '../platform/errors.ts';

/** `fleet calib`: the per-layer input statistics `fleet build --calib` reads, measured by running an ONNX model. */
export function registerCalibCommand(program: Command): void {
  program
    .command('calib')
    .description('measure the per-layer input statistics `fleet build --calib` uses by running an ONNX model with ONNX Runtime on unlabelled samples (docs/onnx.md)')
    .requiredOption('--model <file>', 'the base model (.onnx)')
    .requiredOption('--samples <file>', 'samples: safetensors with "inputs" [N, …] (labels not needed)')
    .requiredOption('--out <file>', 'the statistics file to write (safetensors)')
    .option('--diag', 'write only the diagonals of the Gram matrices (for very wide layers)')
    .option('--max-full <n>', 'matrices wider than this keep only their diagonal', parseIntArg(1, 16384), 2048)
    .option('--json', 'one JSON line')
    .action(async (o: { model: string; samples: string; out: string; diag?: boolean; maxFull: number; json?: boolean }) => {
      if (modelFormatOf(o.model).name !== 'onnx') throw new UsageError('bad-options', `--model ${o.model}: fleet calib runs ONNX models (.onnx); for safetensors models write the statistics as docs/compression.md shows`);
      const samples = readSamples(new Uint8Array(await fs.readFile(o.samples)), `--samples ${o.samples}`, false);
      const r = await onnxCalibration(new Uint8Array(await fs.readFile(o.model)), samples, { diagonal: o.diag, maxFull: o.maxFull });
      const tmp = `${o.out}.tmp-${process.pid}`;
      await fs.writeFile(tmp, r.file);
      await fs.rename(tmp, o.out);
      if (o.json) {
        process.stdout.write(JSON.stringify({ out: o.out, bytes: r.file.byteLength, samples: samples.count, layers: r.layers, skipped: r.skipped }) + '\n');
        return;
      }
      for (const l of r.layers)
        process.stdout.write(`${l.weight}: ${l.kind === 'gram' ? `Gram [${l.n}, ${l.n}]` : l.kind === 'diagonal' ? `Gram diagonal [${l.n}]` : `row weights [${l.n}] (:outputs)`} of ${l.op}'s input, ${l.rows} rows\n`);
      for (const s of r.skipped) process.stdout.write(`not measured: ${s}\n`);
      process.stdout.write(`wrote ${o.out} (${r.file.byteLength} bytes) from ${samples.count} samples\n`);
    });
}
