// Smoke test of the benchmark suite (bench/run.mjs): a tiny run, one repetition, no timing
// assertions. Root `npm ci` does not install the bench's own dependencies (BullMQ, bee-queue),
// so without bench/node_modules only heimdall-tasks runs. The bench FLUSHALLs its Redis between
// runs, so it gets its own private redis-server here (REDIS_URL is removed from its
// environment), never the one the other test files share.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { exitOf, ROOT } from './helpers.js';

const withOthers = existsSync(join(ROOT, 'bench', 'node_modules', 'bullmq')) && existsSync(join(ROOT, 'bench', 'node_modules', 'bee-queue'));
const systems = withOthers ? ['heimdall', 'bullmq', 'bee-queue'] : ['heimdall'];
const dir = mkdtempSync(join(tmpdir(), 'heimdall-bench-smoke-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Stat {
  median: number;
  min: number;
  max: number;
  samples: number[];
}
interface Row {
  id: string;
  group: string;
  label: string;
  unit: string;
  better: 'lower' | 'higher';
  values: Record<string, Stat>;
  ratios: Record<string, number | undefined>;
}
interface HeimdallRow {
  id: string;
  value: Stat | undefined;
  plain: Stat | undefined;
  ratioToPlain: number | undefined;
}
interface Result {
  versions: Record<string, string>;
  config: { reps: number; enqueue: number; drain: number; rateTasks: number; growthReps: number; growthWaiting: number };
  systems: string[];
  rows: Row[];
  growth: Omit<Row, 'group'>[];
  heimdallOnly: HeimdallRow[];
  samples: Record<string, Record<string, Record<string, number>[]>>;
}

const ROW_IDS = [
  'redis_cpu_drain50', 'redis_cpu_drain1', 'redis_cpu_enqueue', 'node_cpu_drain50', 'node_cpu_drain1', 'node_cpu_enqueue',
  'cmds_drain50', 'cmds_drain1', 'cmds_enqueue', 'scripts_drain50', 'inscript_drain50', 'inscript_enqueue', 'bytes',
  'enqueue_rate', 'bulk_rate', 'drain1_rate', 'drain50_rate', 'lat_p50', 'lat_p95', 'lat_p99',
];
const GROWTH_IDS = [
  'g_workers2_rate', 'g_workers2_cpu',
  ...[100, 10240, 102400].flatMap((s) => [`g_payload${s}_enqueue`, `g_payload${s}_drain`, `g_payload${s}_bytes`]),
  'g_delayed_bytes', 'g_delayed_enqueue', 'g_delayed_head_rate', 'g_delayed_head_cpu', 'g_delayed_promote_cpu', 'g_delayed_ran', 'g_delayed_longest',
  'g_waiting_bytes', 'g_waiting_bulk', 'g_waiting_head_rate', 'g_short_rate', 'g_waiting_head_cpu', 'g_short_cpu', 'g_waiting_longest',
  'g_unique_bytes', 'g_plain_bytes', 'g_unique_rate', 'g_plain_rate', 'g_unique_cpu', 'g_plain_cpu', 'g_dup_rate', 'g_dup_cpu',
];
const HEIMDALL_IDS = ['unique_rate', 'unique_redis_cpu', 'unique_bytes', 'unique_cmds', 'rl_rate', 'rl_max_window'];

function isStat(s: Stat | undefined, reps: number): boolean {
  return (
    s !== undefined &&
    [s.median, s.min, s.max].every((v) => typeof v === 'number' && Number.isFinite(v)) &&
    s.min <= s.median &&
    s.median <= s.max &&
    s.samples.length === reps
  );
}

describe('npm run bench (tiny sizes)', () => {
  it(`runs ${systems.join(', ')} and writes the results, the table and the chart`, async () => {
    const out = join(dir, 'latest.json');
    const chart = join(dir, 'chart.svg');
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      BENCH_REPS: '1',
      BENCH_ENQUEUE: '200',
      BENCH_DRAIN: '200',
      BENCH_LATENCY: '100',
      BENCH_RATE_TASKS: '200',
      BENCH_GROWTH_DRAIN: '200',
      BENCH_GROWTH_WORKERS: '2',
      BENCH_GROWTH_PAYLOAD: '100',
      BENCH_GROWTH_DELAYED: '500',
      BENCH_GROWTH_WAITING: '500',
      BENCH_GROWTH_HEAD: '100',
      BENCH_GROWTH_UNIQUE: '100',
      BENCH_SYSTEMS: systems.join(','),
      BENCH_OUT: out,
      BENCH_CHART: chart,
    };
    delete env.REDIS_URL;
    const child = spawn(process.execPath, ['--import', 'tsx', 'bench/run.mjs'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const { code, stdout, stderr } = await exitOf(child);
    expect(code, stderr).toBe(0);

    const result = JSON.parse(readFileSync(out, 'utf8')) as Result;
    expect(result.systems).toEqual(systems);
    expect(result.config).toMatchObject({ reps: 1, enqueue: 200, drain: 200, rateTasks: 200 });
    expect(result.versions.heimdall).toBe(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version);
    expect(result.versions.redis).toMatch(/^\d+\.\d+\.\d+/);
    expect(result.rows.map((r) => r.id)).toEqual(ROW_IDS);
    for (const row of result.rows) {
      expect(['lower', 'higher']).toContain(row.better);
      for (const system of systems) {
        expect(isStat(row.values[system], 1), `${row.id} of ${system}`).toBe(true);
      }
      if (withOthers) {
        expect(row.ratios.bullmq).toBeCloseTo(row.values.heimdall!.median / row.values.bullmq!.median, 9);
      }
    }
    const row = (id: string): Row => result.rows.find((r) => r.id === id)!;
    // One EVALSHA per single enqueue for BullMQ and bee-queue; heimdall-tasks sends the 100
    // calls in flight in batches of at most 50, so at least 1 per 50 and fewer than 1 per task.
    for (const system of systems) {
      const enqueue = result.samples[system]!.enqueue![0]!;
      if (system === 'heimdall') {
        expect(enqueue.clientCmds).toBeGreaterThanOrEqual(1 / 50);
        expect(enqueue.clientCmds).toBeLessThan(1);
        expect(enqueue.scriptCalls).toBe(enqueue.clientCmds);
      } else {
        expect(enqueue.clientCmds).toBe(1);
        expect(enqueue.scriptCalls).toBe(1);
      }
      expect(row('bytes').values[system]!.median).toBeGreaterThan(0);
    }
    for (const p of ['lat_p50', 'lat_p95', 'lat_p99']) expect(row(p).values.heimdall!.median).toBeGreaterThan(0);
    expect(row('lat_p50').values.heimdall!.median).toBeLessThanOrEqual(row('lat_p99').values.heimdall!.median);

    expect(result.heimdallOnly.map((r) => r.id)).toEqual(HEIMDALL_IDS);
    for (const r of result.heimdallOnly) expect(isStat(r.value, 1), r.id).toBe(true);
    const only = (id: string): HeimdallRow => result.heimdallOnly.find((r) => r.id === id)!;
    expect(only('unique_cmds').value!.median).toBeLessThan(1);
    expect(only('unique_rate').plain!.median).toBe(row('enqueue_rate').values.heimdall!.median);
    // The rate limit [1000, 1] holds: never more than 1000 starts in one second (here 200 tasks in all).
    expect(only('rl_max_window').value!.median).toBeGreaterThan(0);
    expect(only('rl_max_window').value!.median).toBeLessThanOrEqual(200);

    // The growth scenarios: one run each (BENCH_GROWTH_REPS 1), every system in every row.
    expect(result.config).toMatchObject({ growthReps: 1, growthWaiting: 500 });
    expect(result.growth.map((r) => r.id)).toEqual(GROWTH_IDS);
    for (const r of result.growth) {
      for (const system of systems) expect(isStat(r.values[system], 1), `${r.id} of ${system}`).toBe(true);
    }
    const grow = (id: string) => result.growth.find((r) => r.id === id)!;
    for (const system of systems) {
      // A 100-KB payload takes more memory than a 100-byte one; every delayed task was delayed
      // and stored; a unique task holds its key.
      expect(grow('g_payload102400_bytes').values[system]!.median).toBeGreaterThan(100_000);
      expect(grow('g_payload102400_bytes').values[system]!.median).toBeGreaterThan(grow('g_payload100_bytes').values[system]!.median);
      expect(result.samples[system]!.delayed![0]!.delayedHeld).toBe(500);
      expect(grow('g_delayed_ran').values[system]!.median).toBeGreaterThanOrEqual(100);
      expect(grow('g_unique_bytes').values[system]!.median).toBeGreaterThan(0);
      // A duplicate stores no new task (BullMQ still writes an event per call).
      const held = result.samples[system]!.uniqueHeld![0]!;
      expect(held.dupBytes).toBeLessThan(held.uniqueBytes! / 2);
    }

    const svg = readFileSync(chart, 'utf8');
    expect(svg.startsWith('<svg ')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    for (const system of systems) expect(svg).toContain({ heimdall: 'heimdall-tasks', bullmq: 'BullMQ', 'bee-queue': 'bee-queue' }[system]);
    const table = readFileSync(join(dir, 'latest.md'), 'utf8');
    expect(table).toContain('| Drain, 1 worker process, c=50 | tasks/s |');
    expect(table).toContain('### How cost grows with the work');
    expect(table).toContain('| Drain the first 100 of 500, c=50 | tasks/s |');
    expect(stdout).toBe(table);
    // About 35 s with the three systems (about 22 s of them the growth scenarios, which start 6
    // worker processes per system); the margin is for a loaded machine in a full `npm test`.
  }, 150_000);
});
