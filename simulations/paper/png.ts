/**
 * The plot scene rasterised to PNG with `pngjs`: thick lines by stamping
 * discs along them (dashes by distance), filled discs, rectangles, and text
 * in a 5×7 bitmap font (upper case, digits and a few signs; lower case is
 * drawn as upper case). Modest on purpose: no anti-aliasing.
 */
import { PNG } from 'pngjs';
import type { Aggregate } from './aggregate.ts';
import { plotScene, type Scene } from './plot.ts';

const GLYPHS: Record<string, string> = {
  '0': '01110 10001 10011 10101 11001 10001 01110',
  '1': '00100 01100 00100 00100 00100 00100 01110',
  '2': '01110 10001 00001 00010 00100 01000 11111',
  '3': '11111 00010 00100 00010 00001 10001 01110',
  '4': '00010 00110 01010 10010 11111 00010 00010',
  '5': '11111 10000 11110 00001 00001 10001 01110',
  '6': '00110 01000 10000 11110 10001 10001 01110',
  '7': '11111 00001 00010 00100 01000 01000 01000',
  '8': '01110 10001 10001 01110 10001 10001 01110',
  '9': '01110 10001 10001 01111 00001 00010 01100',
  A: '01110 10001 10001 11111 10001 10001 10001',
  B: '11110 10001 10001 11110 10001 10001 11110',
  C: '01110 10001 10000 10000 10000 10001 01110',
  D: '11100 10010 10001 10001 10001 10010 11100',
  E: '11111 10000 10000 11110 10000 10000 11111',
  F: '11111 10000 10000 11110 10000 10000 10000',
  G: '01110 10001 10000 10111 10001 10001 01111',
  H: '10001 10001 10001 11111 10001 10001 10001',
  I: '01110 00100 00100 00100 00100 00100 01110',
  J: '00111 00010 00010 00010 00010 10010 01100',
  K: '10001 10010 10100 11000 10100 10010 10001',
  L: '10000 10000 10000 10000 10000 10000 11111',
  M: '10001 11011 10101 10101 10001 10001 10001',
  N: '10001 10001 11001 10101 10011 10001 10001',
  O: '01110 10001 10001 10001 10001 10001 01110',
  P: '11110 10001 10001 11110 10000 10000 10000',
  Q: '01110 10001 10001 10001 10101 10010 01101',
  R: '11110 10001 10001 11110 10100 10010 10001',
  S: '01111 10000 10000 01110 00001 00001 11110',
  T: '11111 00100 00100 00100 00100 00100 00100',
  U: '10001 10001 10001 10001 10001 10001 01110',
  V: '10001 10001 10001 10001 10001 01010 00100',
  W: '10001 10001 10001 10101 10101 10101 01010',
  X: '10001 10001 01010 00100 01010 10001 10001',
  Y: '10001 10001 10001 01010 00100 00100 00100',
  Z: '11111 00001 00010 00100 01000 10000 11111',
  ' ': '00000 00000 00000 00000 00000 00000 00000',
  '.': '00000 00000 00000 00000 00000 01100 01100',
  ',': '00000 00000 00000 00000 01100 00100 01000',
  '-': '00000 00000 00000 11111 00000 00000 00000',
  '+': '00000 00100 00100 11111 00100 00100 00000',
  '%': '11000 11001 00010 00100 01000 10011 00011',
  '(': '00010 00100 01000 01000 01000 00100 00010',
  ')': '01000 00100 00010 00010 00010 00100 01000',
  '=': '00000 00000 11111 00000 11111 00000 00000',
  ':': '00000 01100 01100 00000 01100 01100 00000',
  '/': '00000 00001 00010 00100 01000 10000 00000',
  '×': '00000 10001 01010 00100 01010 10001 00000',
  ';': '00000 01100 01100 00000 01100 00100 01000',
  '?': '01110 10001 00001 00010 00100 00000 00100',
  '>': '01000 00100 00010 00001 00010 00100 01000',
  '<': '00010 00100 01000 10000 01000 00100 00010',
  '·': '00000 00000 00000 01100 01100 00000 00000',
  Δ: '00000 00100 01010 10001 10001 11111 00000',
  '±': '00100 00100 11111 00100 00100 00000 11111',
};

const glyphCache = new Map<string, boolean[][]>();
function glyph(ch: string): boolean[][] {
  const key = GLYPHS[ch] !== undefined ? ch : GLYPHS[ch.toUpperCase()] !== undefined ? ch.toUpperCase() : '?';
  let g = glyphCache.get(key);
  if (!g) glyphCache.set(key, (g = GLYPHS[key].split(' ').map((row) => [...row].map((c) => c === '1'))));
  return g;
}

class Canvas {
  readonly png: PNG;
  constructor(
    readonly w: number,
    readonly h: number,
  ) {
    this.png = new PNG({ width: w, height: h });
    this.png.data.fill(255);
  }

  set(x: number, y: number, c: [number, number, number]): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.w || y >= this.h) return;
    const i = (y * this.w + x) * 4;
    this.png.data[i] = c[0];
    this.png.data[i + 1] = c[1];
    this.png.data[i + 2] = c[2];
    this.png.data[i + 3] = 255;
  }

  disc(cx: number, cy: number, r: number, c: [number, number, number]): void {
    if (r <= 0.5) return this.set(cx, cy, c);
    for (let y = Math.floor(cy - r); y <= Math.ceil(cy + r); y++) {
      for (let x = Math.floor(cx - r); x <= Math.ceil(cx + r); x++) if ((x - cx) ** 2 + (y - cy) ** 2 <= r * r) this.set(x, y, c);
    }
  }

  line(x1: number, y1: number, x2: number, y2: number, width: number, c: [number, number, number], dash?: number[], phase = 0): number {
    const len = Math.hypot(x2 - x1, y2 - y1);
    const steps = Math.max(1, Math.ceil(len * 2));
    const period = dash ? dash.reduce((a, b) => a + b, 0) : 0;
    for (let k = 0; k <= steps; k++) {
      const t = k / steps;
      if (dash && (phase + t * len) % period >= dash[0]) continue;
      this.disc(x1 + t * (x2 - x1), y1 + t * (y2 - y1), (width - 1) / 2, c);
    }
    return phase + len;
  }

  text(x: number, y: number, s: string, size: number, anchor: 'start' | 'middle' | 'end', vertical: boolean, c: [number, number, number]): void {
    const scale = size >= 14 ? 2 : 1;
    const adv = 6 * scale;
    const width = s.length * adv - scale;
    const shift = anchor === 'start' ? 0 : anchor === 'middle' ? width / 2 : width;
    for (let k = 0; k < s.length; k++) {
      const g = glyph(s[k]);
      for (let row = 0; row < 7; row++)
        for (let col = 0; col < 5; col++) {
          if (!g[row][col]) continue;
          for (let a = 0; a < scale; a++)
            for (let b = 0; b < scale; b++) {
              const u = k * adv + col * scale + a - shift; // along the text
              const v = (row - 7) * scale + b + 1; // baseline at v = 0
              if (vertical) this.set(x + v, y - u, c);
              else this.set(x + u, y + v, c);
            }
        }
    }
  }
}

function rgb(hex: string): [number, number, number] {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

export function sceneToPng(sc: Scene): Uint8Array {
  const cv = new Canvas(sc.width, sc.height);
  const black: [number, number, number] = [0, 0, 0];
  for (const p of sc.prims) {
    switch (p.kind) {
      case 'line':
        cv.line(p.x1, p.y1, p.x2, p.y2, p.width, rgb(p.color), p.dash);
        break;
      case 'polyline': {
        let phase = 0;
        for (let i = 1; i < p.pts.length; i++) phase = cv.line(p.pts[i - 1][0], p.pts[i - 1][1], p.pts[i][0], p.pts[i][1], p.width, rgb(p.color), p.dash, phase);
        break;
      }
      case 'circle':
        cv.disc(p.cx, p.cy, p.r, rgb(p.color));
        break;
      case 'rect':
        if (p.fill) for (let y = Math.round(p.y); y < Math.round(p.y + p.h); y++) for (let x = Math.round(p.x); x < Math.round(p.x + p.w); x++) cv.set(x, y, rgb(p.fill));
        if (p.stroke) {
          const c = rgb(p.stroke);
          const w = p.width ?? 1;
          cv.line(p.x, p.y, p.x + p.w, p.y, w, c);
          cv.line(p.x + p.w, p.y, p.x + p.w, p.y + p.h, w, c);
          cv.line(p.x + p.w, p.y + p.h, p.x, p.y + p.h, w, c);
          cv.line(p.x, p.y + p.h, p.x, p.y, w, c);
        }
        break;
      case 'text':
        cv.text(p.x, p.y, p.text, p.size, p.anchor, p.vertical === true, black);
        break;
    }
  }
  return new Uint8Array(PNG.sync.write(cv.png));
}

export function pngPlot(a: Aggregate): Uint8Array {
  return sceneToPng(plotScene(a));
}
