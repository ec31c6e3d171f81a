/**
 * The results plot as a list of drawing primitives (a "scene"), so the SVG
 * and the PNG are drawn from the same geometry: mean gain over seeds against
 * update bytes (log x), a bar from the lowest to the highest seed, f32 solid,
 * 8-bit dashed, fixed-size methods as single marks.
 */
import type { Aggregate } from './aggregate.ts';

export type Prim =
  | { kind: 'line'; x1: number; y1: number; x2: number; y2: number; color: string; width: number; dash?: number[] }
  | { kind: 'polyline'; pts: Array<[number, number]>; color: string; width: number; dash?: number[] }
  | { kind: 'circle'; cx: number; cy: number; r: number; color: string }
  | { kind: 'rect'; x: number; y: number; w: number; h: number; stroke?: string; fill?: string; width?: number }
  | { kind: 'text'; x: number; y: number; text: string; size: number; anchor: 'start' | 'middle' | 'end'; vertical?: boolean };

export interface Scene {
  width: number;
  height: number;
  prims: Prim[];
}

export const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf', '#ff7f0e'];

export function bytesShort(b: number): string {
  if (b >= 1024 * 1024) return `${(b / 1024 / 1024).toFixed(b >= 10 * 1024 * 1024 ? 0 : 1)} MiB`;
  if (b >= 1024) return `${(b / 1024).toFixed(b >= 10 * 1024 ? 0 : 1)} KiB`;
  return `${Math.round(b)} B`;
}

/** Axis ticks: 10 B, 100 B, 1 kB, … (powers of ten in decimal units). */
function decimalBytes(b: number): string {
  const units = ['B', 'kB', 'MB', 'GB'];
  let u = 0;
  while (b >= 1000 && u < units.length - 1) {
    b /= 1000;
    u++;
  }
  return `${Math.round(b)} ${units[u]}`;
}

/** The plot area and its scales: log10 bytes across, gain in points up. */
interface Frame {
  W: number;
  H: number;
  L: number;
  T: number;
  pw: number;
  ph: number;
  xmin: number;
  xmax: number;
  ymin: number;
  ymax: number;
  X: (b: number) => number;
  Y: (g: number) => number;
}

/** Scales that hold every point (and bar) of every method, and the model's own size. */
function plotFrame(a: Aggregate): Frame {
  const W = 1060;
  const H = 600;
  const L = 70;
  const R = 470;
  const T = 40;
  const B = 60;
  const pw = W - L - R;
  const ph = H - T - B;
  const xs: number[] = [];
  const gains: number[] = [];
  for (const s of a.sections)
    for (const m of s.methods) {
      if (m.fixed) {
        xs.push(m.ownBytes!);
        gains.push(m.ownGain!.min, m.ownGain!.max);
      } else {
        m.bytes.forEach((b, i) => {
          if (b !== null && m.gain[i]) {
            xs.push(b);
            gains.push(m.gain[i]!.min, m.gain[i]!.max);
          }
        });
      }
    }
  const xmin = 10 ** Math.floor(Math.log10(Math.min(...xs)));
  const xmax = 10 ** Math.ceil(Math.log10(Math.max(...xs, a.modelBytes)));
  const ymin = Math.min(...gains) < -1 ? Math.floor(Math.min(...gains) / 10) * 10 : 0;
  const ymax = Math.ceil((a.fullGain.max + 3) / 10) * 10;
  const X = (b: number): number => L + ((Math.log10(b) - Math.log10(xmin)) / (Math.log10(xmax) - Math.log10(xmin))) * pw;
  const Y = (g: number): number => T + (1 - (g - ymin) / (ymax - ymin)) * ph;
  return { W, H, L, T, pw, ph, xmin, xmax, ymin, ymax, X, Y };
}

/** Background, title, grid, axes, the full fine-tune's gain and the headline size. */
function axesPrims(a: Aggregate, f: Frame): Prim[] {
  const { W, H, L, T, pw, ph, xmin, xmax, ymin, ymax, X, Y } = f;
  const prims: Prim[] = [];
  prims.push({ kind: 'rect', x: 0, y: 0, w: W, h: H, fill: '#ffffff' });
  prims.push({ kind: 'text', x: L, y: 24, size: 15, anchor: 'start', text: `Field accuracy gain vs update size (MNIST MLP, ${a.modelBytes} B model, ${a.seeds.length} seeds)` });
  for (let e = Math.log10(xmin); e <= Math.log10(xmax) + 1e-9; e++) {
    const x = X(10 ** e);
    prims.push({ kind: 'line', x1: x, y1: T, x2: x, y2: T + ph, color: '#dddddd', width: 1 });
    prims.push({ kind: 'text', x, y: T + ph + 18, size: 12, anchor: 'middle', text: decimalBytes(10 ** e) });
  }
  for (let g = ymin; g <= ymax; g += 10) {
    const y = Y(g);
    prims.push({ kind: 'line', x1: L, y1: y, x2: L + pw, y2: y, color: '#dddddd', width: 1 });
    prims.push({ kind: 'text', x: L - 8, y: y + 4, size: 12, anchor: 'end', text: `${g > 0 ? '+' : ''}${g}` });
  }
  prims.push({ kind: 'rect', x: L, y: T, w: pw, h: ph, stroke: '#333333', width: 1 });
  prims.push({ kind: 'text', x: L + pw / 2, y: H - 15, size: 12, anchor: 'middle', text: 'update bytes (log scale)' });
  prims.push({ kind: 'text', x: 20, y: T + ph / 2, size: 12, anchor: 'middle', vertical: true, text: 'gain over the base, accuracy points' });
  const hline = (g: number, label: string, dash: number[]): void => {
    prims.push({ kind: 'line', x1: L, y1: Y(g), x2: L + pw, y2: Y(g), color: '#000000', width: 1, dash });
    prims.push({ kind: 'text', x: L + 6, y: Y(g) - 4, size: 12, anchor: 'start', text: label });
  };
  hline(a.fullGain.mean, `full fine-tune +${a.fullGain.mean.toFixed(1)}`, [6, 3]);
  hline(a.gainFraction * a.fullGain.mean, `${Math.round(100 * a.gainFraction)} % of it`, [2, 3]);
  if (a.headlineIndex >= 0) {
    const x = X(a.sizesBytes[a.headlineIndex]);
    prims.push({ kind: 'line', x1: x, y1: T, x2: x, y2: T + ph, color: '#999999', width: 1, dash: [2, 3] });
    prims.push({ kind: 'text', x: x + 4, y: T + ph - 6, size: 12, anchor: 'start', text: `${a.headlinePercent} %` });
  }
  return prims;
}

/** Per precision and method: its curve (or single mark), lowest-to-highest bars, and its legend row. */
function methodPrims(a: Aggregate, f: Frame): Prim[] {
  const { L, T, pw, X, Y } = f;
  const prims: Prim[] = [];
  const keys = [...new Set(a.sections.flatMap((s) => s.methods.map((m) => m.key)))];
  let legendY = T + 10;
  const lx = L + pw + 15;
  for (const s of a.sections) {
    const dash = s.precision === 'f32' ? undefined : [6, 3];
    for (const m of s.methods) {
      const color = COLORS[keys.indexOf(m.key) % COLORS.length];
      const mark = (x: number, y: number, big: boolean): void => {
        if (s.precision === 'f32') prims.push({ kind: 'circle', cx: x, cy: y, r: big ? 5 : 3, color });
        else prims.push({ kind: 'rect', x: x - (big ? 5 : 3), y: y - (big ? 5 : 3), w: big ? 10 : 6, h: big ? 10 : 6, stroke: color, width: 2 });
      };
      const bar = (x: number, lo: number, hi: number): void => {
        if (hi - lo > 0) prims.push({ kind: 'line', x1: x, y1: Y(lo), x2: x, y2: Y(hi), color, width: 1 });
      };
      if (m.fixed) {
        const x = X(m.ownBytes!);
        bar(x, m.ownGain!.min, m.ownGain!.max);
        mark(x, Y(m.ownGain!.mean), true);
      } else {
        const pts: Array<[number, number]> = [];
        m.bytes.forEach((b, i) => {
          const g = m.gain[i];
          if (b === null || !g) return;
          pts.push([X(b), Y(g.mean)]);
          bar(X(b), g.min, g.max);
        });
        if (pts.length) prims.push({ kind: 'polyline', pts, color, width: 2, dash });
        for (const [x, y] of pts) mark(x, y, false);
      }
      if (m.fixed) mark(lx + 12, legendY - 4, true);
      else prims.push({ kind: 'line', x1: lx, y1: legendY - 4, x2: lx + 24, y2: legendY - 4, color, width: 2, dash });
      prims.push({ kind: 'text', x: lx + 30, y: legendY, size: 12, anchor: 'start', text: `${s.precision === 'f32' ? 'f32' : '8-bit'}: ${m.label}` });
      legendY += 18;
    }
    legendY += 8;
  }
  prims.push({ kind: 'text', x: lx, y: legendY + 6, size: 12, anchor: 'start', text: 'marks: mean over seeds; bars: lowest to highest seed' });
  return prims;
}

export function plotScene(a: Aggregate): Scene {
  const f = plotFrame(a);
  return { width: f.W, height: f.H, prims: [...axesPrims(a, f), ...methodPrims(a, f)] };
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export function sceneToSvg(sc: Scene): string {
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${sc.width}" height="${sc.height}" viewBox="0 0 ${sc.width} ${sc.height}" font-family="sans-serif" font-size="12">`);
  const f = (x: number): string => x.toFixed(1);
  const dashAttr = (d?: number[]): string => (d ? ` stroke-dasharray="${d.join(',')}"` : '');
  for (const p of sc.prims) {
    switch (p.kind) {
      case 'line':
        out.push(`<line x1="${f(p.x1)}" y1="${f(p.y1)}" x2="${f(p.x2)}" y2="${f(p.y2)}" stroke="${p.color}" stroke-width="${p.width}"${dashAttr(p.dash)}/>`);
        break;
      case 'polyline':
        out.push(`<polyline points="${p.pts.map(([x, y]) => `${f(x)},${f(y)}`).join(' ')}" fill="none" stroke="${p.color}" stroke-width="${p.width}"${dashAttr(p.dash)}/>`);
        break;
      case 'circle':
        out.push(`<circle cx="${f(p.cx)}" cy="${f(p.cy)}" r="${p.r}" fill="${p.color}"/>`);
        break;
      case 'rect':
        out.push(`<rect x="${f(p.x)}" y="${f(p.y)}" width="${f(p.w)}" height="${f(p.h)}" fill="${p.fill ?? 'none'}"${p.stroke ? ` stroke="${p.stroke}" stroke-width="${p.width ?? 1}"` : ''}/>`);
        break;
      case 'text': {
        const anchor = p.anchor === 'start' ? '' : ` text-anchor="${p.anchor}"`;
        const size = p.size !== 12 ? ` font-size="${p.size}"` : '';
        out.push(p.vertical ? `<text transform="translate(${f(p.x)} ${f(p.y)}) rotate(-90)"${anchor}${size}>${esc(p.text)}</text>` : `<text x="${f(p.x)}" y="${f(p.y)}"${anchor}${size}>${esc(p.text)}</text>`);
        break;
      }
    }
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
