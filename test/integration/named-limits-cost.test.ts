/**
 * What a named limit costs Redis, measured on a server of this file's own (INFO commandstats and
 * INFO cpu are the server's totals): one drain of the same number of tasks with no limit, with a
 * queue rateLimit, with a named window limit, with a named gcra limit and with a task's own
 * concurrency permits, all roomy enough that no task waits. Reported as figures (script calls and
 * Redis CPU per task); what is asserted is the cross-slot admission's count: one limit-2.lua call
 * per limit per task, and two permit-3.lua calls (take, give back) per task, when nothing waits.
 */
import { describe, expect, it } from 'vitest';
import { Limits, Task } from 'heimdall-tasks';
import { commandStats, reportFigures, usePrivateRedis, type Harness } from '../helpers.js';

const WIDE = Limits.define('cost-window', [1_000_000, 1]);
const FAST = Limits.define('cost-gcra', [1_000_000, 1], { algorithm: 'gcra' });

class CostService {
  @Task({ queue: 'cost' })
  async plain(): Promise<void> {}

  @Task({ queue: 'cost', rateLimit: [1_000_000, 1] })
  async rated(): Promise<void> {}

  @Task({ queue: 'cost', limits: [WIDE] })
  async window(): Promise<void> {}

  @Task({ queue: 'cost', limits: [FAST] })
  async gcra(): Promise<void> {}

  @Task({ queue: 'cost', concurrency: 1_000 })
  async permitted(): Promise<void> {}
}

const N = 400;

/** used_cpu_user + used_cpu_sys of the server, µs. */
async function cpuMicros(h: Harness): Promise<number> {
  const info = await h.admin.info('cpu');
  const value = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)![1]);
  return Math.round((value('used_cpu_user') + value('used_cpu_sys')) * 1e6);
}

describe('the cost of named limits', () => {
  const fresh = usePrivateRedis('limits-cost');

  it(`drains ${N} tasks each way; a named limit adds one script call per task`, { timeout: 120_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    const tasks = d.tasks(CostService);
    const worker = h.worker({ queues: ['cost'], services: [new CostService()], concurrency: 50 });
    await worker.start();
    const figures: Record<string, number | string> = {};
    const calls: Record<string, number> = {};
    for (const kind of ['plain', 'rated', 'window', 'gcra', 'permitted'] as const) {
      // Sent first, then measured while the worker drains them (the enqueue is the same for all).
      const ref = tasks[kind];
      const before = await commandStats(h.admin);
      const cpu = await cpuMicros(h);
      const sent = await ref.delayMany(Array.from({ length: N }, () => [] as []));
      await Promise.all(sent.map((r) => r.get({ timeout: 60 })));
      const after = await commandStats(h.admin);
      const spent = (await cpuMicros(h)) - cpu;
      const delta = (name: string): number => (after[name] ?? 0) - (before[name] ?? 0);
      calls[kind] = delta('evalsha') + delta('eval');
      figures[`${kind}: script calls/task`] = (calls[kind] / N).toFixed(2);
      figures[`${kind}: Redis CPU µs/task`] = Math.round(spent / N);
      // Only limit-2.lua reads a string in these drains (GET: a window's sum, a gcra's TAT), once
      // per call: no task here is unique.
      if (kind === 'window' || kind === 'gcra') {
        figures[`${kind}: limit-2 calls/task`] = (delta('get') / N).toFixed(2);
        expect(delta('get')).toBe(N);
      }
    }
    reportFigures(`named limits, ${N} tasks each, concurrency 50, nothing waits`, figures);
    expect(calls.window).toBeGreaterThanOrEqual(calls.plain! + N - N / 4);
    // A permit: one permit-3 call to take it and one to give it back, per task.
    expect(calls.permitted).toBeGreaterThanOrEqual(calls.plain! + 2 * N - N / 4);
    expect(calls.permitted).toBeLessThanOrEqual(calls.plain! + 2 * N + N / 4);
  });
});
