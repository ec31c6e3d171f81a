/** The results as a markdown table and as an SVG plot (accuracy vs update bytes, log x). */
import { bytesForGain, bytesLabel, type PaperResult } from './result.ts';

const pc = (x: number | null): string => (x === null ? '—' : (100 * x).toFixed(1));

export function markdownTables(r: PaperResult): string {
  const lines: string[] = [];
  lines.push(`Model: MLP 784-${r.config.hidden}-10, ${r.modelParams} parameters = ${r.modelBytes} bytes in float32. `
    + `Cells: field test accuracy (%) on ${r.config.test} drifted test digits; "—": the method does not fit that size.`);
  lines.push('');
  lines.push(`- base model, original test digits: **${pc(r.baseAccuracyOriginal)} %**`);
  lines.push(`- base model, field test digits: **${pc(r.baseAccuracyField)} %**`);
  lines.push(`- full fine-tune on field digits (f32, ${r.modelBytes} B): **${pc(r.fullFineTuneAccuracy)} %**`);
  lines.push('');
  const head = ['method', ...r.sizesPercent.map((p, i) => `${p} % (${bytesLabel(r.sizesBytes[i])})`), 'own size'];
  for (const s of r.sections) {
    lines.push(`### ${s.precision === 'f32' ? 'float32 numbers' : '8-bit numbers'}`);
    lines.push('');
    lines.push(`| ${head.join(' | ')} |`);
    lines.push(`|${head.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
    for (const row of s.rows) {
      const own = row.ownBytes !== null ? `${pc(row.ownAccuracy)} @ ${bytesLabel(row.ownBytes)} (${((100 * row.ownBytes) / r.modelBytes).toFixed(2)} %)` : '';
      lines.push(`| ${row.label} | ${row.accuracy.map(pc).join(' | ')} | ${own} |`);
    }
    lines.push(`| base (no update) | ${r.sizesPercent.map(() => pc(r.baseAccuracyField)).join(' | ')} | |`);
    lines.push('');
    const detailRows = s.rows.filter((row) => row.detail.some((d) => d !== null));
    if (detailRows.length) {
      lines.push('What each budget bought (actual bytes; for fleet build, the whole CBOR payload):');
      lines.push('');
      for (const row of detailRows) {
        const parts = r.sizesPercent.map((p, i) => (row.detail[i] === null ? null : `${p} %: ${row.detail[i]}, ${row.bytes[i]} B`)).filter(Boolean);
        lines.push(`- ${row.label}: ${parts.join('; ')}`);
      }
      lines.push('');
    }
  }
  const g = bytesForGain(r);
  lines.push(`### Bytes for the same gain`);
  lines.push('');
  lines.push(`Target: ≥ ${g.targetGainPoints} points over the base's field accuracy (${Math.round(100 * r.gainFraction)} % of the full fine-tune's gain). `
    + 'Bytes actually used at the smallest size tried that reaches it; ratio = that method ÷ the trained low-rank update of the same precision.');
  lines.push('');
  lines.push('| method | precision | bytes needed | ÷ ours |');
  lines.push('|---|---|---:|---:|');
  for (const s of r.sections) {
    const e = g[s.precision] as { bytes: Record<string, number | null>; ratioToOurs: Record<string, number | null> };
    for (const row of s.rows) {
      const b = e.bytes[row.key];
      const ratio = row.key === 'lowRankTrained' ? '1' : e.ratioToOurs[row.key] === null ? '—' : `${e.ratioToOurs[row.key]}×`;
      lines.push(`| ${row.label} | ${s.precision} | ${b === null ? 'not reached' : `${b} B (${((100 * b) / r.modelBytes).toFixed(2)} %)`} | ${ratio} |`);
    }
  }
  lines.push('');
  return lines.join('\n');
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Accuracy vs bytes actually used (log x); solid lines f32, dashed 8-bit; fixed-size methods as points. */
export function svgPlot(r: PaperResult): string {
  const W = 1010;
  const H = 560;
  const L = 70;
  const R = 440;
  const T = 40;
  const B = 60;
  const pw = W - L - R;
  const ph = H - T - B;
  const xs: number[] = [];
  for (const s of r.sections) for (const row of s.rows) {
    for (const b of row.bytes) if (b !== null) xs.push(b);
    if (row.ownBytes !== null) xs.push(row.ownBytes);
  }
  const xmin = Math.pow(10, Math.floor(Math.log10(Math.min(...xs, r.modelBytes / 1000))));
  const xmax = Math.pow(10, Math.ceil(Math.log10(Math.max(...xs, r.modelBytes))));
  const ymin = Math.max(0, Math.floor((r.baseAccuracyField * 100 - 5) / 10) * 10);
  const ymax = 100;
  const X = (b: number): number => L + ((Math.log10(b) - Math.log10(xmin)) / (Math.log10(xmax) - Math.log10(xmin))) * pw;
  const Y = (a: number): number => T + (1 - (100 * a - ymin) / (ymax - ymin)) * ph;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${L}" y="22" font-size="15">Field accuracy vs update size (MNIST MLP, ${r.modelBytes} B model)</text>`);
  for (let e = Math.log10(xmin); e <= Math.log10(xmax); e++) {
    const x = X(10 ** e);
    out.push(`<line x1="${x}" y1="${T}" x2="${x}" y2="${T + ph}" stroke="#ddd"/>`);
    out.push(`<text x="${x}" y="${T + ph + 18}" text-anchor="middle">${bytesLabel(10 ** e)}</text>`);
  }
  for (let a = ymin; a <= ymax; a += 10) {
    const y = Y(a / 100);
    out.push(`<line x1="${L}" y1="${y}" x2="${L + pw}" y2="${y}" stroke="#ddd"/>`);
    out.push(`<text x="${L - 8}" y="${y + 4}" text-anchor="end">${a} %</text>`);
  }
  out.push(`<rect x="${L}" y="${T}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${L + pw / 2}" y="${H - 15}" text-anchor="middle">update bytes (log scale)</text>`);
  out.push(`<text transform="translate(18 ${T + ph / 2}) rotate(-90)" text-anchor="middle">field test accuracy</text>`);
  const hline = (a: number, label: string, dash: string): void => {
    out.push(`<line x1="${L}" y1="${Y(a)}" x2="${L + pw}" y2="${Y(a)}" stroke="#000" stroke-dasharray="${dash}"/>`);
    out.push(`<text x="${L + 6}" y="${Y(a) - 4}">${esc(label)}</text>`);
  };
  hline(r.baseAccuracyField, `base ${(100 * r.baseAccuracyField).toFixed(1)} %`, '2,3');
  hline(r.fullFineTuneAccuracy, `full fine-tune ${(100 * r.fullFineTuneAccuracy).toFixed(1)} %`, '6,3');
  const keys = [...new Set(r.sections.flatMap((s) => s.rows.map((row) => row.key)))];
  let legendY = T + 10;
  for (const s of r.sections) {
    for (const row of s.rows) {
      const color = COLORS[keys.indexOf(row.key) % COLORS.length];
      const dash = s.precision === 'f32' ? '' : ' stroke-dasharray="6,3"';
      if (row.ownBytes !== null && row.ownAccuracy !== null) {
        const x = X(row.ownBytes);
        const y = Y(row.ownAccuracy);
        out.push(s.precision === 'f32'
          ? `<circle cx="${x}" cy="${y}" r="5" fill="${color}"/>`
          : `<rect x="${x - 5}" y="${y - 5}" width="10" height="10" fill="none" stroke="${color}" stroke-width="2"/>`);
      } else {
        const pts: string[] = [];
        row.bytes.forEach((b, i) => {
          const a = row.accuracy[i];
          if (b !== null && a !== null) pts.push(`${X(b).toFixed(1)},${Y(a).toFixed(1)}`);
        });
        if (pts.length) {
          out.push(`<polyline points="${pts.join(' ')}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
          for (const p of pts) {
            const [x, y] = p.split(',');
            out.push(`<circle cx="${x}" cy="${y}" r="3" fill="${color}"/>`);
          }
        }
      }
      const lx = L + pw + 15;
      out.push(row.ownBytes !== null
        ? (s.precision === 'f32' ? `<circle cx="${lx + 12}" cy="${legendY - 4}" r="5" fill="${color}"/>` : `<rect x="${lx + 7}" y="${legendY - 9}" width="10" height="10" fill="none" stroke="${color}" stroke-width="2"/>`)
        : `<line x1="${lx}" y1="${legendY - 4}" x2="${lx + 24}" y2="${legendY - 4}" stroke="${color}" stroke-width="2"${dash}/>`);
      out.push(`<text x="${lx + 30}" y="${legendY}">${esc(`${s.precision === 'f32' ? 'f32' : '8-bit'}: ${row.label}`)}</text>`);
      legendY += 18;
    }
    legendY += 8;
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
