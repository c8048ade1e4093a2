/**
 * Named limits (Limits.define, @Task({ limits })) on Redis: shared across queues and worker
 * processes, all or none, weighted, corrected by reportCost(), and gcra's bound. Every window is
 * computed from the times at which the limits counted the starts, on the Redis clock (the window
 * entries' scores, read by each task in its body: see test/fixtures/limits/services.ts). Under the
 * cluster suite the limits live in other slots than the queues.
 */
import { describe, expect, it } from 'vitest';
import { Inspector, TaskFailedError, type TaskResult } from 'heimdall-tasks';
import { recordEvents, useHarness, waitFor, type Harness } from '../helpers.js';
import { limitKeys } from '../../src/core/protocol/limit-scripts.js';
import { CHEAP, LIMIT_QUEUES, limitLog, LimitsService, NARROW, ROOMY, SLOW_GCRA, TOKENS, type ChargeEntry } from '../fixtures/limits/services.js';
import { startWorkerProcesses, stopWorkerProcesses } from '../fixtures/worker-processes.js';
import { total } from '../fixtures/processes/control.js';
import { keySlot } from '../slot-checker.js';

async function charges(h: Harness): Promise<ChargeEntry[]> {
  return (await h.admin.lrange(limitLog(h.prefix), 0, -1)).map((l) => JSON.parse(l) as ChargeEntry);
}

/** The largest sum of costs counted in any window [t, t + periodMs) that begins at a start. */
function maxInWindow(list: readonly { at: number; cost: number }[], periodMs: number): number {
  let max = 0;
  for (const s of list) max = Math.max(max, list.filter((o) => o.at >= s.at && o.at < s.at + periodMs).reduce((n, o) => n + o.cost, 0));
  return max;
}

/** An in-process worker of both limit queues. */
function worker(h: Harness) {
  const w = h.worker({ queues: [...LIMIT_QUEUES], services: [new LimitsService(h.admin, h.prefix)], concurrency: 8 });
  return { w, ev: recordEvents(w) };
}

describe('named limits', () => {
  const fresh = useHarness('limits');

  it('two tasks in two queues share one limit [4, 1 s]: 3 worker processes never start more than 4 in any second between them', { timeout: 120_000 }, async () => {
    const h = fresh();
    // The limit lives in a slot of its own, apart from both queues (on a Cluster, another node may hold it).
    const limitSlot = keySlot(limitKeys(h.prefix, 'test-shared').w);
    expect(LIMIT_QUEUES.map((q) => keySlot(h.queueKeys(q).wait))).not.toContain(limitSlot);
    const workers = await startWorkerProcesses(h, 3, { services: ['limits'], queues: LIMIT_QUEUES, concurrency: 4 });
    const t = h.dispatcher().tasks(LimitsService);
    const sent = [
      ...(await t.inA.delayMany(Array.from({ length: 12 }, (_, i) => [i] as [number]))),
      ...(await t.inB.delayMany(Array.from({ length: 12 }, (_, i) => [i] as [number]))),
    ];
    await Promise.all(sent.map((r) => r.get({ timeout: 60 })));
    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    expect(total(summaries, 'succeeded')).toBe(24);
    const log = await charges(h);
    // Each ran once, and both queues took their share of the one limit.
    expect(log.map((e) => e.id).sort()).toEqual(sent.map((r) => r.id).sort());
    expect(maxInWindow(log, 1000)).toBe(4);
    const at = log.map((e) => e.at).sort((a, b) => a - b);
    expect(at[23]! - at[0]!).toBeGreaterThanOrEqual(5000);
    console.info(
      `[limits] shared [4, 1 s], 24 tasks of 2 queues on 3 processes: max 4 per 1 s; span ${Math.round(at[23]! - at[0]!)} ms (at least 5000); ` +
        `${total(summaries, 'rateLimited')} sent back for a turn; per process ${summaries.map((s) => s.started).join('/')}`,
    );
  });

  it('all or none: a task that needs A and B waits while B is full, holding only its turn in A; a task of A alone starts meanwhile', { timeout: 60_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    const first = await t.both.delay(1);
    await first.get({ timeout: 10 });
    const second = await t.both.delay(2);
    await waitFor(() => ev.rateLimited.some((e) => e.id === second.id), { what: 'the second to wait for B' });
    // A holds the first start and the second's turn, in the future: nothing more is counted now.
    const roomy = limitKeys(h.prefix, ROOMY.name).w;
    const [sec, usec] = await h.admin.time();
    const now = Number(sec) * 1000 + Number(usec) / 1000;
    expect(await h.admin.zcard(roomy)).toBe(2);
    expect(await h.admin.zcount(roomy, '-inf', now)).toBe(1);
    // What an operator sees: each used once in its period, each holding the second's turn.
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    try {
      const named = await inspector.namedLimits();
      expect(named).toEqual([
        { name: ROOMY.name, algorithm: 'window', limit: 10, periodMs: 60_000, used: 1, turns: 1 },
        { name: NARROW.name, algorithm: 'window', limit: 1, periodMs: 1500, used: 1, turns: 1 },
      ].sort((a, b) => a.name.localeCompare(b.name)));
      // And no queue is made of a limit's keys.
      expect((await inspector.queueNames()).filter((q) => q.startsWith('limit:'))).toEqual([]);
    } finally {
      await inspector.close();
    }
    const alone = await t.roomyOnly.delay(3);
    await alone.get({ timeout: 5 });
    expect(await second.status()).toBe('PENDING');
    await second.get({ timeout: 10 });
    const log = await charges(h);
    const narrow = log.filter((e) => e.limit === NARROW.name).map((e) => e.at);
    expect(narrow).toHaveLength(2);
    expect(narrow[1]! - narrow[0]!).toBeGreaterThanOrEqual(1500);
    // The task of A alone started before the second, which had waited for B.
    const roomyStarts = log.filter((e) => e.limit === ROOMY.name);
    expect(roomyStarts.map((e) => e.task)).toEqual(['both', 'roomyOnly', 'both']);
    expect(ev.errors).toEqual([]);
  });

  it('Inspector.namedLimits() reads a gcra limit: the units its TAT is ahead, and its reservations', { timeout: 30_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    // [2, 60 s] in gcra: a unit is 30 s; two start, the third reserves its turn 30 s on.
    const [a, b, c] = await t.slowGcra.delayMany([[1], [2], [3]]);
    await Promise.all([a!.get({ timeout: 10 }), b!.get({ timeout: 10 })]);
    await waitFor(() => ev.rateLimited.some((e) => e.id === c!.id), { what: 'the third to wait for its turn' });
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    try {
      expect(await inspector.namedLimits()).toEqual([{ name: SLOW_GCRA.name, algorithm: 'gcra', limit: 2, periodMs: 60_000, used: 3, turns: 1 }]);
    } finally {
      await inspector.close();
    }
    await c!.revoke();
  });

  it('weighted: [100 tokens, 2 s] with costs 30 and 50 on 2 worker processes never counts more than 100 in any 2 s', { timeout: 120_000 }, async () => {
    const h = fresh();
    const workers = await startWorkerProcesses(h, 2, { services: ['limits'], queues: LIMIT_QUEUES, concurrency: 4 });
    const t = h.dispatcher().tasks(LimitsService);
    const costs = [30, 50, 30, 50, 50, 30, 30, 50];
    const sent = await t.tokens.delayMany(costs.map((c, i) => [i, c] as [number, number]));
    await Promise.all(sent.map((r) => r.get({ timeout: 60 })));
    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    const log = await charges(h);
    expect(log.map((e) => e.cost).sort()).toEqual([...costs].sort());
    const max = maxInWindow(log, 2000);
    expect(max).toBeLessThanOrEqual(100);
    // The limit is used, not run one at a time.
    expect(max).toBeGreaterThan(50);
    const at = log.map((e) => e.at).sort((a, b) => a - b);
    console.info(`[limits] weighted [100, 2 s], costs ${costs.join('/')}: max ${max} tokens in any 2 s; span ${Math.round(at[at.length - 1]! - at[0]!)} ms`);
  });

  it('reportCost: a refund lets the next task start at once', { timeout: 30_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    expect(await (await t.reported.delay(90, 10)).get({ timeout: 10 })).toBe(true);
    const next = await t.tokens.delay(1, 80);
    await next.get({ timeout: 10 });
    // Without the refund the 80 tokens would not fit beside the 90 charged: it would wait.
    expect(ev.rateLimited).toEqual([]);
    expect(await charges(h)).toHaveLength(2);
  });

  it('reportCost: a debt delays the next task until it leaves the window', { timeout: 30_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    expect(await (await t.reported.delay(30, 90)).get({ timeout: 10 })).toBe(true);
    const next = await t.tokens.delay(1, 30);
    await next.get({ timeout: 10 });
    expect(ev.rateLimited.map((e) => e.id)).toEqual([next.id]);
    const [a, b] = await charges(h);
    expect(b!.at - a!.at).toBeGreaterThanOrEqual(2000);
  });

  it('a window whose sum of costs is lost counts it again from its entries', { timeout: 30_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    await (await t.tokens.delay(1, 60)).get({ timeout: 10 });
    const keys = limitKeys(h.prefix, TOKENS.name);
    expect(await h.admin.get(keys.r)).toBe('60');
    await h.admin.del(keys.r);
    const next = await t.tokens.delay(2, 60);
    await waitFor(() => ev.rateLimited.some((e) => e.id === next.id), { what: 'the second to wait: 60 + 60 > 100' });
    expect(await h.admin.get(keys.r)).toBe('120');
  });

  it("gcra [5, 1 s] on 2 worker processes: its documented bound holds (n + 1 + L·n/period in any span L, so at most 10 in any second)", { timeout: 120_000 }, async () => {
    const h = fresh();
    const workers = await startWorkerProcesses(h, 2, { services: ['limits'], queues: LIMIT_QUEUES, concurrency: 6 });
    const t = h.dispatcher().tasks(LimitsService);
    const sent = await t.cheap.delayMany(Array.from({ length: 30 }, (_, i) => [i] as [number]));
    await Promise.all(sent.map((r) => r.get({ timeout: 60 })));
    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    // gcra keeps no entry per run: each take happened between the run's start in its queue
    // (`st`, Redis time) and the Redis time its body read. A window can hold the take of a run
    // only if that interval meets it: counting those bounds the takes from above.
    const body = new Map((await charges(h)).map((e) => [e.id, e.at]));
    const runs = await Promise.all(sent.map(async (r: TaskResult<number>) => ({ from: (await r.info()).startedAt!.getTime(), to: body.get(r.id)! })));
    expect(runs.every((r) => r.to >= r.from)).toBe(true);
    let most = 0;
    for (const edge of runs.flatMap((r) => [r.to, r.from - 999.999])) {
      most = Math.max(most, runs.filter((r) => r.from < edge + 1000 && r.to >= edge).length);
    }
    expect(most).toBeLessThanOrEqual(2 * CHEAP.limit);
    // Over the whole drain: 30 takes need a span of at least (30 - 5 - 1) × 200 ms.
    const span = Math.max(...runs.map((r) => r.to)) - Math.min(...runs.map((r) => r.from));
    expect(span).toBeGreaterThanOrEqual((30 - CHEAP.limit - 1) * 200);
    // And n at once after an idle spell: the first 5 went without waiting for a turn.
    const firsts = runs.map((r) => r.to).sort((a, b) => a - b);
    // (Without the burst the 5th would come 800 ms after the first.)
    expect(firsts[4]! - Math.min(...runs.map((r) => r.from))).toBeLessThan(750);
    console.info(`[limits] gcra [5, 1 s], 30 tasks on 2 processes: at most ${most} takes could lie in one second (bound 10); span ${Math.round(span)} ms (at least 4800)`);
  });

  it("a deferral takes the start back out of the queue's own rate window", { timeout: 30_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    await (await t.mixed.delay(1)).get({ timeout: 10 });
    const second = await t.mixed.delay(2);
    await waitFor(() => ev.rateLimited.some((e) => e.id === second.id), { what: 'the second to wait for its named limit' });
    const rate = h.queueKeys('limits-a').rate('LimitsService.mixed', undefined);
    expect(await h.admin.zcard(rate)).toBe(1);
    await second.get({ timeout: 10 });
    expect(await h.admin.zcard(rate)).toBe(2);
    expect(ev.errors).toEqual([]);
  });

  it('a limit the worker never defined, or a cost over n, fails the run with a ConfigError; a weighted entry stores its cost', { timeout: 30_000 }, async () => {
    const h = fresh();
    const { w } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    const orphan = await (await t.orphan.delay()).get({ timeout: 10 }).catch((e: unknown) => e);
    expect(orphan).toBeInstanceOf(TaskFailedError);
    expect(orphan).toMatchObject({ remoteName: 'ConfigError' });
    expect((orphan as TaskFailedError).remoteMessage).toMatch(/uses limit 'test-never-defined', which is not defined in this worker process/);
    const greedy = await (await t.greedy.delay(101)).get({ timeout: 10 }).catch((e: unknown) => e);
    expect((greedy as TaskFailedError).remoteMessage).toMatch(/cost 101 is more than limit 'test-tokens' allows per period \(100\)/);
    // Nothing was charged for either.
    expect(await h.admin.exists(limitKeys(h.prefix, TOKENS.name).w)).toBe(0);
  });
});
