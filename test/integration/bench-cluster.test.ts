// Smoke test of `npm run bench:cluster` (bench/cluster.mjs): a tiny run of both parts, one
// repetition, no timing assertions; it checks that the benchmark still runs on real local
// clusters and reports every figure BENCHMARKS.md quotes. It starts its own servers, so it runs
// in `npm run test:cluster` only (vitest.config.ts leaves it out of `npm test`).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { exitOf, ROOT } from '../helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'heimdall-bench-cluster-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Stat {
  median: number;
}
interface Report {
  pubsub: { nodes: { role: string; classic: Stat; sharded: Stat }[] };
  scaling: { queues: { port: number }[]; single: { rate: Stat; cpuPerTask: Stat }; cluster: { rate: Stat; cpuPerTaskAll: Stat; shards: unknown[] } };
}

describe('npm run bench:cluster', () => {
  it('runs both parts on real clusters and reports per-node Pub/Sub cost and the scaling figures', { timeout: 180_000 }, async () => {
    const out = join(dir, 'cluster.json');
    const child = spawn(process.execPath, ['--import', 'tsx', 'bench/cluster.mjs'], {
      cwd: ROOT,
      env: { ...process.env, BENCH_REPS: '1', BENCH_CLUSTER_TASKS: '300', BENCH_CLUSTER_OUT: out },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const ran = await exitOf(child);
    expect(ran.code, ran.stderr).toBe(0);
    const report = JSON.parse(readFileSync(out, 'utf8')) as Report;
    // Six nodes: the queue's master and replica, and the other two shards'.
    expect(report.pubsub.nodes.map((n) => n.role).sort()).toEqual(['other master', 'other master', 'other replica', 'other replica', 'queue master', 'queue replica']);
    for (const n of report.pubsub.nodes) expect([n.classic.median, n.sharded.median].every(Number.isFinite)).toBe(true);
    // Three queues on three different masters.
    expect(new Set(report.scaling.queues.map((q) => q.port)).size).toBe(3);
    const { single, cluster } = report.scaling;
    expect([single.rate.median, single.cpuPerTask.median, cluster.rate.median, cluster.cpuPerTaskAll.median].every((v) => v > 0)).toBe(true);
    expect(cluster.shards).toHaveLength(3);
  });
});
