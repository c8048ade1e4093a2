// The bench's output: a Markdown table and an SVG chart, both from the results object alone
// (so they can be regenerated from bench/results/latest.json: node bench/lib/report.mjs).
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const NAMES = { heimdall: 'heimdall-tasks', bullmq: 'BullMQ', 'bee-queue': 'bee-queue' };
const COLORS = { heimdall: '#2b6cb0', bullmq: '#c0392b', 'bee-queue': '#d4a017' };
const GROUPS = {
  'machine-independent': 'Machine-independent costs (lower is better)',
  throughput: 'Throughput on this machine (higher is better)',
  latency: 'Latency from send to handler start (lower is better)',
};

export function fmt(v) {
  if (v === undefined || v === null || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a < 0.005) return '0.00';
  if (a >= 1000) return Math.round(v).toLocaleString('en-US');
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** Median, min and max of the finite `values` (undefined when there are none), with the samples. */
export function stats(values) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = Math.floor(v.length / 2);
  const median = v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
  return { median, min: v[0], max: v[v.length - 1], samples: values };
}

/** A table cell: median (min–max). */
export function cell(s) {
  if (!s) return '–';
  return `${fmt(s.median)} (${fmt(s.min)}–${fmt(s.max)})`;
}

function ratioCell(ratio, better) {
  if (ratio === undefined || !Number.isFinite(ratio)) return '–';
  const ahead = better === 'lower' ? ratio < 1 : ratio > 1;
  const even = Math.abs(ratio - 1) < 0.005;
  return `${ratio.toFixed(2)} ${even ? '(even)' : ahead ? '(ahead)' : '(**behind**)'}`;
}

/** Markdown tables: median (min–max) per system, ratios heimdall/other on the medians. */
export function renderTable(result) {
  const systems = result.systems;
  const others = systems.filter((s) => s !== 'heimdall');
  const lines = [];
  lines.push(
    `Medians of ${result.config.reps} runs, (min–max) in brackets; ratios are heimdall-tasks ÷ other on the medians. ` +
      `Node ${result.versions.node}, Redis ${result.versions.redis}, ${result.machine.cpus} cores (${result.machine.cpuModel}).`,
  );
  for (const [group, title] of Object.entries(GROUPS)) {
    const rows = result.rows.filter((r) => r.group === group && Object.keys(r.values).length > 0);
    if (rows.length === 0) continue;
    lines.push('', `### ${title}`, '');
    const head = ['Figure', 'Unit', ...systems.map((s) => NAMES[s]), ...(systems.includes('heimdall') ? others.map((o) => `heimdall/${NAMES[o]}`) : [])];
    lines.push(`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i < 2 ? ' --- ' : ' ---: ')).join('|')}|`);
    for (const r of rows) {
      const cells = [r.label, r.unit, ...systems.map((s) => cell(r.values[s]))];
      if (systems.includes('heimdall')) for (const o of others) cells.push(ratioCell(r.ratios[o], r.better));
      lines.push(`| ${cells.join(' | ')} |`);
    }
  }
  const growth = (result.growth ?? []).filter((r) => Object.keys(r.values).length > 0);
  if (growth.length > 0) {
    const reps = result.config.growthReps ?? result.config.reps;
    lines.push(
      '',
      '### How cost grows with the work',
      '',
      `${reps === 1 ? 'One run' : `Medians of ${reps} runs, (min–max) in brackets`} (BENCH_GROWTH_REPS); '–' where a system lacks the feature or the scenario did not run.`,
      '',
    );
    const head = ['Figure', 'Unit', ...systems.map((s) => NAMES[s]), ...(systems.includes('heimdall') ? others.map((o) => `heimdall/${NAMES[o]}`) : [])];
    lines.push(`| ${head.join(' | ')} |`, `|${head.map((_, i) => (i < 2 ? ' --- ' : ' ---: ')).join('|')}|`);
    for (const r of growth) {
      const cells = [r.label, r.unit, ...systems.map((s) => (reps === 1 && r.values[s] ? fmt(r.values[s].median) : cell(r.values[s])))];
      if (systems.includes('heimdall')) for (const o of others) cells.push(ratioCell(r.ratios[o], r.better));
      lines.push(`| ${cells.join(' | ')} |`);
    }
  }
  if (result.heimdallOnly.length > 0) {
    lines.push('', '### heimdall-tasks only', '', '| Figure | Unit | Median (min–max) | Plain enqueue | Ratio to plain |', '| --- | --- | ---: | ---: | ---: |');
    for (const r of result.heimdallOnly) {
      lines.push(`| ${r.label} | ${r.unit} | ${cell(r.value)} | ${r.plain ? cell(r.plain) : '–'} | ${r.ratioToPlain === undefined ? '–' : r.ratioToPlain.toFixed(2)} |`);
    }
  }
  return `${lines.join('\n')}\n`;
}

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** An SVG with one small bar panel per figure: median bars, min–max whiskers, the three systems side by side. */
export function renderChart(result) {
  const systems = result.systems;
  const rows = result.rows.filter((r) => Object.keys(r.values).length > 0);
  const cols = 4;
  const pw = 250;
  const ph = 190;
  const top = 64;
  const width = cols * pw + 20;
  const height = top + Math.ceil(rows.length / cols) * ph + 30;
  const out = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">heimdall-tasks vs BullMQ vs bee-queue: medians of ${result.config.reps} runs, bars = median, whiskers = min–max</text>`,
    `<text x="10" y="38" fill="#555">${esc(`Node ${result.versions.node}, Redis ${result.versions.redis}, ${result.machine.cpus} cores, ${result.generatedAt.slice(0, 10)}`)}</text>`,
  );
  systems.forEach((s, i) => {
    const x = 10 + i * 150;
    out.push(`<rect x="${x}" y="46" width="12" height="12" fill="${COLORS[s]}"/>`, `<text x="${x + 17}" y="56">${esc(NAMES[s])}</text>`);
  });
  rows.forEach((r, idx) => {
    const px = 10 + (idx % cols) * pw;
    const py = top + Math.floor(idx / cols) * ph;
    const plotTop = py + 44;
    const plotBottom = py + ph - 28;
    const plotH = plotBottom - plotTop;
    const max = Math.max(...systems.map((s) => r.values[s]?.max ?? 0)) * 1.12 || 1;
    const words = `${r.label} (${r.unit}, ${r.better} is better)`.split(' ');
    const titleLines = [''];
    for (const w of words) {
      if ((titleLines.at(-1) + ' ' + w).length > 40) titleLines.push(w);
      else titleLines[titleLines.length - 1] = (titleLines.at(-1) + ' ' + w).trim();
    }
    out.push(`<rect x="${px + 2}" y="${py + 2}" width="${pw - 8}" height="${ph - 8}" fill="none" stroke="#ddd"/>`);
    titleLines.slice(0, 3).forEach((t, i) => out.push(`<text x="${px + 8}" y="${py + 16 + i * 13}" font-weight="bold">${esc(t)}</text>`));
    out.push(`<line x1="${px + 12}" y1="${plotBottom}" x2="${px + pw - 16}" y2="${plotBottom}" stroke="#999"/>`);
    const bw = 44;
    const gap = (pw - 28 - systems.length * bw) / (systems.length + 1);
    systems.forEach((s, i) => {
      const v = r.values[s];
      const bx = px + 12 + gap + i * (bw + gap);
      out.push(`<text x="${bx + bw / 2}" y="${plotBottom + 14}" text-anchor="middle" fill="#333">${esc(NAMES[s])}</text>`);
      if (!v) {
        out.push(`<text x="${bx + bw / 2}" y="${plotBottom - 4}" text-anchor="middle" fill="#999">n/a</text>`);
        return;
      }
      const y = (val) => plotBottom - (Math.max(0, val) / max) * plotH;
      out.push(`<rect x="${bx}" y="${y(v.median)}" width="${bw}" height="${plotBottom - y(v.median)}" fill="${COLORS[s]}"/>`);
      const cx = bx + bw / 2;
      out.push(
        `<line x1="${cx}" y1="${y(v.min)}" x2="${cx}" y2="${y(v.max)}" stroke="#222"/>`,
        `<line x1="${cx - 6}" y1="${y(v.min)}" x2="${cx + 6}" y2="${y(v.min)}" stroke="#222"/>`,
        `<line x1="${cx - 6}" y1="${y(v.max)}" x2="${cx + 6}" y2="${y(v.max)}" stroke="#222"/>`,
        `<text x="${cx}" y="${y(v.max) - 4}" text-anchor="middle">${esc(fmt(v.median))}</text>`,
      );
    });
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

// `node bench/lib/report.mjs [results.json]` re-renders the table and chart from saved results.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2] ?? fileURLToPath(new URL('../results/latest.json', import.meta.url));
  const result = JSON.parse(readFileSync(file, 'utf8'));
  writeFileSync(file.replace(/\.json$/, '.md'), renderTable(result));
  writeFileSync(file.replace(/latest\.json$/, 'chart.svg').replace(/(?<!chart)\.json$/, '.svg'), renderChart(result));
  process.stdout.write(renderTable(result));
}
