/**
 * `node --expose-gc --import tsx apply-memory-child.ts MODEL UPDATE OUT`: runs
 * `fleet apply`'s procedure (applyUpdateFile: decode the payload, check the base,
 * apply, check the target; safetensors or ONNX by the model's extension) and prints one JSON line with the memory it kept alive:
 * every few milliseconds while it runs, a full garbage collection and then the JS
 * heap in use plus the ArrayBuffers held (Buffers included). Forcing the collection
 * makes the figure the live set, independent of when V8 would have collected.
 * FLEET_APPLY_BYTES=1 hands the payload over as bytes read whole (the API before
 * apply streamed it), to check the test against the old code.
 */
import { readFileSync } from 'node:fs';
import { applyUpdateFile } from '../../device/apply.ts';
import { modelFormatOf } from '../../util/model-format.ts';

const [model, update, out] = process.argv.slice(2);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc');
const live = (): number => {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};
const baseline = live();
let peak = baseline;
let samples = 0;
const timer = setInterval(() => {
  peak = Math.max(peak, live());
  samples++;
}, 5);
const payload: never = (process.env.FLEET_APPLY_BYTES === '1' ? new Uint8Array(readFileSync(update)) : update) as never;
const target = await applyUpdateFile(model, payload, out, undefined, 0, modelFormatOf(model));
clearInterval(timer);
peak = Math.max(peak, live());
process.stdout.write(`${JSON.stringify({ baseline, peak, samples, target })}\n`);
