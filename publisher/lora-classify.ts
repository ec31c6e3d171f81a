import type { readSafetensors } from '../protocol/safetensors.ts';
import { LoraError, type LoraConfig } from './lora-config.ts';
import type { AdapterTensor, Unmapped } from './lora-tensors.ts';
import { basePath } from './lora-whole.ts';

/**
 * What each tensor of a PEFT adapter file is, by its name: the lora_A/lora_B
 * (or lora_embedding_A/B) factors of a module with its DoRA magnitude and
 * lora_B bias, trainable tokens, or a tensor saved whole; and why a module's
 * group cannot be merged as adapter_config.json says. lora.ts maps the groups
 * onto the base model.
 */

/** The adapter tensors of one module. */
export interface Group {
  kind: 'lora' | 'embedding';
  a: AdapterTensor[];
  b: AdapterTensor[];
  magnitude: AdapterTensor[];
  bias: AdapterTensor[];
  problems: string[];
}

const PEFT_PREFIX = 'base_model.model.';
const FACTOR = /^(.+)\.lora_(A|B)(?:\.[^.]+)?\.weight$/;
const EMBEDDING_FACTOR = /^(.+)\.lora_embedding_(A|B)(?:\.[^.]+)?$/;
const MAGNITUDE = /^(.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$/;
const LORA_BIAS = /^(.+)\.lora_B(?:\.[^.]+)?\.bias$/;
const TOKENS = /^(.+)\.token_adapter\.trainable_tokens_delta(?:\.[^.]+)?$/;

/** The adapter's tensors sorted by what they are: factor groups per module (with DoRA magnitudes and lora_B biases), trainable tokens, tensors saved whole; unknown `lora_` tensors go to `unmapped`. */
export function classifyTensors(
  tensors: ReturnType<typeof readSafetensors>['tensors'],
  unmapped: Unmapped,
): { groups: Map<string, Group>; wholeTensors: Array<{ path: string; original: boolean; t: AdapterTensor }>; tokenTensors: Array<{ module: string; t: AdapterTensor }> } {
  const wholeTensors: Array<{ path: string; original: boolean; t: AdapterTensor }> = [];
  const tokenTensors: Array<{ module: string; t: AdapterTensor }> = [];
  const groups = new Map<string, Group>();
  const group = (module: string, kind: Group['kind']): Group => {
    let g = groups.get(module);
    if (!g) groups.set(module, (g = { kind, a: [], b: [], magnitude: [], bias: [], problems: [] }));
    else if (g.kind !== kind) {
      if (g.a.length + g.b.length > 0) g.problems.push('it has both lora_A/lora_B and lora_embedding_A/lora_embedding_B tensors');
      else g.kind = kind;
    }
    return g;
  };
  for (const st of tensors) {
    if (/\p{Cc}/u.test(st.name)) throw new LoraError('malformed-adapter', `adapter_model.safetensors: tensor name ${JSON.stringify(st.name)} holds control characters`);
    const t: AdapterTensor = { name: st.name, dtype: st.dtype, shape: st.shape, data: st.data };
    const name = t.name.startsWith(PEFT_PREFIX) ? t.name.slice(PEFT_PREFIX.length) : t.name;
    const f = FACTOR.exec(name);
    const e = f ? null : EMBEDDING_FACTOR.exec(name);
    const hit = f ?? e;
    let m: RegExpExecArray | null;
    if (hit) {
      const g = group(hit[1], f ? 'lora' : 'embedding');
      (hit[2] === 'A' ? g.a : g.b).push(t);
    } else if ((m = MAGNITUDE.exec(name))) {
      (groups.get(m[1]) ?? group(m[1], 'lora')).magnitude.push(t);
    } else if ((m = LORA_BIAS.exec(name))) {
      group(m[1], 'lora').bias.push(t);
    } else if ((m = TOKENS.exec(name))) {
      tokenTensors.push({ module: m[1], t });
    } else if (/(^|\.)lora_/.test(name)) {
      const dot = name.lastIndexOf('.');
      unmapped.push({
        module: dot > 0 ? name.slice(0, dot) : name,
        reason: /\.lora_diag(\.|$)/.test(name)
          ? `${t.name} is a KaSA diagonal, but KaSA is refused (PEFT truncates the base weight when it loads) and the config does not say kasa_config`
          : `${t.name} is not a tensor this converter knows how PEFT merges`,
      });
    } else {
      wholeTensors.push({ ...basePath(name), t });
    }
  }
  return { groups, wholeTensors, tokenTensors };
}

/** Why a module's group cannot be merged as the config says, or undefined. */
export function groupProblem(module: string, g: Group, config: LoraConfig): string | undefined {
  const [aKey, bKey] = g.kind === 'lora' ? ['lora_A', 'lora_B'] : ['lora_embedding_A', 'lora_embedding_B'];
  if (g.problems.length > 0) return g.problems.join('; ');
  if (g.a.length > 1 || g.b.length > 1 || g.magnitude.length > 1 || g.bias.length > 1) return `several adapters in one file: ${[...g.a, ...g.b, ...g.magnitude, ...g.bias].map((t) => t.name).join(', ')}`;
  if (g.a.length === 0 || g.b.length === 0) {
    const have = g.a[0] ?? g.b[0] ?? g.magnitude[0] ?? g.bias[0];
    return `${have.name} has no matching ${g.a.length === 0 ? aKey : bKey} tensor`;
  }
  if (!config.useDora && g.magnitude.length > 0) return `${g.magnitude[0].name} is a DoRA magnitude vector but the config has use_dora = false`;
  if (config.useDora && g.magnitude.length === 0) return `the config has use_dora = true but the adapter holds no lora_magnitude_vector for ${module}`;
  if (!config.loraBias && g.bias.length > 0) return `${g.bias[0].name} is a lora_B bias but the config has lora_bias = false`;
  if (config.loraBias && g.kind === 'lora' && g.bias.length === 0) return `the config has lora_bias = true but the adapter holds no lora_B bias for ${module}`;
  return undefined;
}
