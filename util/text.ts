/**
 * Strings from the network reach terminals, log lines and `--on-event`
 * environments: a device's reason or message, ids, groups, models, digests,
 * rollout statuses. Any of them may carry terminal escape sequences (OSC 52
 * writes the clipboard, OSC 0 the window title, CSI 2J clears the screen and
 * lets a forged one be drawn), line breaks that forge log lines, or bidi
 * overrides that reorder what is shown. This is the one sanitiser for all of
 * them: the logger, the terminal and plain renderers, the view models and the
 * event runner call it.
 */

/** Whole escape sequences first, so that no parameter text is left behind. */
const SEQUENCES = new RegExp(
  [
    '\\x1b\\[[0-?]*[ -/]*[@-~]', // CSI (7-bit): ESC [ params intermediates final
    '\\x9b[0-?]*[ -/]*[@-~]', // CSI (8-bit)
    '\\x1b[\\]PX^_][\\s\\S]*?(?:\\x07|\\x1b\\\\|\\x9c|$)', // OSC, DCS, SOS, PM, APC (7-bit) up to BEL or ST
    '[\\x90\\x98\\x9d\\x9e\\x9f][\\s\\S]*?(?:\\x07|\\x1b\\\\|\\x9c|$)', // the same, 8-bit
    '\\x1b[ -~]?', // any other escape (ESC c resets the terminal) and a lone ESC
  ].join('|'),
  'g',
);
/** Line and tab breaks become spaces (a status must not forge a line of output). */
const BREAKS = /[\t\n\r\v\f\u0085\u2028\u2029]/g;
/** What is left of C0, DEL and C1, and the invisible format characters that reorder or hide text (bidi overrides, zero-width). */
const CONTROLS = /[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/g;

/** `s` without control characters, escape sequences or bidi controls: safe for a terminal, a log line or an environment variable. */
export function stripControls(s: string): string {
  return s.replace(SEQUENCES, '').replace(BREAKS, ' ').replace(CONTROLS, '');
}

/** Every string in a JSON-like value (keys too) through stripControls; other values as they are. */
export function stripControlsDeep<T>(v: T): T {
  return clean(v, 0) as T;
}

function clean(v: unknown, depth: number): unknown {
  if (typeof v === 'string') return stripControls(v);
  if (v === null || typeof v !== 'object' || depth > 32) return v;
  if (Array.isArray(v)) return v.map((x) => clean(x, depth + 1));
  if (v instanceof Error) return stripControls(v.message);
  if (ArrayBuffer.isView(v)) return v;
  const toJSON = (v as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === 'function') return clean(toJSON.call(v), depth + 1);
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) out[stripControls(k)] = clean(x, depth + 1);
  return out;
}

/** "12 s ago", "3 min ago", "2 h ago", "4 d ago"; "never" without a time. */
export function ago(lastSeen: number | null, now: number): string {
  if (lastSeen === null) return 'never';
  const s = Math.max(0, Math.round((now - lastSeen) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.floor(s / 60)} min ago`;
  if (s < 172_800) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86_400)} d ago`;
}
