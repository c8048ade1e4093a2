/**
 * The limits under stress (issue 13's proof), each test with 4 worker processes, one of them
 * SIGKILLed mid-run: 10,000 tasks in three windows of different limits; and 10,000 tasks of two
 * queues under a weighted limit they share and 5 concurrency permits per key. No window is ever
 * overrun, counted from every start (the lost runs' included) on the Redis clock; no key runs
 * more bodies at once than its permits; every task ends once; nothing is left in any list, set,
 * lock or permit scope.
 */
import { describe, expect, it } from 'vitest';
import { redisNowMs, reportFigures, useHarness, waitFor, type Harness } from '../helpers.js';
import { maxInWindow, total } from '../fixtures/processes/control.js';
import { ProbeService, testKeys } from '../fixtures/processes/services.js';
import { killWorkerProcess, startWorkerProcesses, stopWorkerProcesses, type WorkerProcess } from '../fixtures/worker-processes.js';
import { LimitsService, limitLog, maxAtOnce, permitLog, STRESS, STRESS_SLOTS, type ChargeEntry, type SpanEntry } from '../fixtures/limits/services.js';
import { permitScope } from '../../src/core/protocol/permit-scripts.js';
import { limitKeys } from '../../src/core/protocol/limit-scripts.js';

const LIMITS: Record<string, number> = { a: 300, b: 150, c: 50 };
const COUNTS: Record<string, number> = { a: 6000, b: 3000, c: 1000 };

/**
 * SIGKILLs `victim` while it holds the lease of a task of one of `queues` (its worker id, which a
 * record's `w` names, holds its pid), and returns the ids it held: their leases lapse and the
 * other workers recover them. The victim is stopped (SIGSTOP) before its leases are read twice,
 * so a task cannot end between the read and the kill (a 40-ms task on a slow machine did, once);
 * a victim holding nothing is let go on and tried again.
 */
async function killWhileItRuns(h: Harness, victim: WorkerProcess, queues: readonly string[]): Promise<string[]> {
  const mine = `:${String(victim.child.pid)}:`;
  const held = async (): Promise<string[]> => {
    const ids: string[] = [];
    for (const queue of queues) {
      const keys = h.queueKeys(queue);
      const leased = await h.admin.zrange(keys.active, 0, -1);
      const owners = await Promise.all(leased.map((id) => h.admin.hget(keys.task(id), 'w')));
      leased.forEach((id, i) => owners[i]?.includes(mine) && ids.push(id));
    }
    return ids;
  };
  let ids: string[] = [];
  await waitFor(
    async () => {
      victim.child.kill('SIGSTOP');
      // Two reads: a finish the victim wrote just before it stopped has reached Redis by the second.
      if ((await held()).length > 0) ids = await held();
      if (ids.length > 0) return true;
      victim.child.kill('SIGCONT');
      return false;
    },
    { timeout: 30_000, what: 'the victim to run tasks' },
  );
  await killWorkerProcess(victim);
  return ids;
}

/**
 * Where the tasks of the proof that have not ended are (at most 5 of them): their record, the
 * queue lists and sets that hold them, their entries in their key's permit scope and in the
 * shared limit's window, and the Redis time.
 */
async function whereTasksAre(h: Harness, tasks: readonly { id: string; key: string }[]): Promise<string> {
  const d = h.dispatcher();
  const states = await Promise.all(tasks.map((t) => d.result(t.id).status()));
  const open = tasks.filter((_, i) => states[i] !== 'SUCCESS' && states[i] !== 'FAILURE' && states[i] !== 'REVOKED');
  const lines = [`[stress] ${open.length} task(s) not ended at ${await redisNowMs(h.admin)} (Redis ms)`];
  const window = await h.admin.zrange(limitKeys(h.prefix, STRESS.name).w, 0, -1, 'WITHSCORES');
  for (const t of open.slice(0, 5)) {
    const queue = t.id.slice(0, t.id.indexOf(':'));
    const k = h.queueKeys(queue);
    const record = await h.admin.hgetall(k.task(t.id));
    for (const f of Object.keys(record)) if (/^a\d*$/.test(f)) delete record[f];
    const scope = permitScope(h.prefix, { limit: STRESS_SLOTS.name }, t.key, 5);
    const inScope = await Promise.all(scope.keys.map((key) => h.admin.zrange(key, 0, -1, 'WITHSCORES')));
    const mine = (entries: string[]): string[] => entries.flatMap((m, i) => (i % 2 === 0 && m.includes(t.id) ? [`${m}@${entries[i + 1]}`] : []));
    lines.push(
      JSON.stringify({
        id: t.id,
        key: t.key,
        record,
        delayed: await h.admin.zscore(k.delayed, t.id),
        active: await h.admin.zscore(k.active, t.id),
        claimed: await h.admin.zscore(k.claimed, t.id),
        wait: await h.admin.lpos(k.wait, t.id),
        permits: { held: mine(inScope[0]!), waiting: mine(inScope[1]!), deadline: mine(inScope[2]!), holders: inScope[0]!.length / 2, waiters: inScope[1]!.length / 2 },
        window: mine(window),
      }),
    );
  }
  return lines.join('\n');
}

describe('rate limits under stress', () => {
  const fresh = useHarness('stress');

  it('10,000 tasks in three windows, 4 worker processes, one SIGKILLed mid-run: no window overrun, every task ends once', { timeout: 240_000 }, async () => {
    const h = fresh();
    const workers = await startWorkerProcesses(h, 4, { services: ['probe'], concurrency: 50, lease: '2s' });
    const d = h.dispatcher();
    const began = Date.now();
    // Interleaved, so each worker's fetches meet all three windows.
    const args: [number, string][] = [];
    for (let i = 0; args.length < 10_000; i++) {
      for (const b of ['a', 'b', 'c'] as const) if (i < COUNTS[b]!) args.push([args.length, b]);
    }
    const handles = await d.tasks(ProbeService).stress.delayMany(args);
    const log = testKeys(h.prefix).log;
    await waitFor(async () => (await h.admin.llen(log)) >= 3000, { timeout: 60_000, what: '3,000 starts before the kill' });
    const victim = workers[0]!;
    const heldAtKill = await killWhileItRuns(h, victim, ['default']);
    const results = await Promise.all(handles.map((r) => r.get({ timeout: 180 })));
    expect(results).toEqual(args.map(([n]) => n));
    const elapsed = Date.now() - began;
    const summaries = await stopWorkerProcesses(workers.slice(1));
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);

    const infos = await Promise.all(handles.map((r) => r.info()));
    // Every task ended once, SUCCESS; the lost runs of the killed process ran again.
    expect(infos.filter((i) => i.state !== 'SUCCESS')).toEqual([]);
    const recovered = infos.filter((i) => i.history.some((a) => a.outcome === 'lost')).length;
    // Each run the killed process held is recovered: its attempt ends 'lost' and it runs again.
    const lostIds = new Set(handles.filter((_, i) => infos[i]!.history.some((a) => a.outcome === 'lost')).map((r) => r.id));
    expect(heldAtKill.length).toBeGreaterThan(0);
    expect(heldAtKill.filter((id) => !lostIds.has(id))).toEqual([]);
    // Every start on the Redis clock, the lost attempts' included, per window.
    const starts = new Map<string, number[]>();
    infos.forEach((info, i) => {
      const bucket = args[i]![1];
      for (const a of info.history) if (a.startedAt) (starts.get(bucket) ?? starts.set(bucket, []).get(bucket)!).push(a.startedAt.getTime());
    });
    const maxPerWindow: Record<string, number> = {};
    for (const [bucket, times] of starts) {
      maxPerWindow[bucket] = maxInWindow(times, 1000);
      expect(maxPerWindow[bucket], `window ${bucket}`).toBeLessThanOrEqual(LIMITS[bucket]!);
    }
    // Nothing left behind: no task queued, delayed, claimed or leased.
    for (const name of ['wait', 'delayed', 'claimed', 'active'] as const) expect(await h.admin.exists(h.queueKey(name)), name).toBe(0);
    // Each task's body ran once on the surviving workers; only the killed process's lost runs ran
    // again (on a survivor, as the recovery promises).
    const entries = (await h.admin.lrange(log, 0, -1)).map((line) => JSON.parse(line) as { id: string; pid: number });
    const killedStarts = entries.filter((e) => e.pid === victim.child.pid).length;
    expect(killedStarts).toBeGreaterThan(0);
    const survivorRuns = new Map<string, number>();
    for (const e of entries) if (e.pid !== victim.child.pid) survivorRuns.set(e.id, (survivorRuns.get(e.id) ?? 0) + 1);
    expect(survivorRuns.size + entries.filter((e) => e.pid === victim.child.pid && !survivorRuns.has(e.id)).length).toBe(10_000);
    expect([...survivorRuns.values()].filter((n) => n !== 1)).toEqual([]);
    reportFigures('stress', {
      tasks: 10_000,
      seconds: (elapsed / 1000).toFixed(1),
      recovered,
      heldAtKill: heldAtKill.length,
      startsByKilledProcess: killedStarts,
      maxStartsPer1s: Object.entries(maxPerWindow).map(([b, m]) => `${b}:${m}/${LIMITS[b]}`).join(' '),
      rateLimitedPutBacks: total(summaries, 'rateLimited'),
    });
  });

  // It stalled in 3 of 11 runs while a run took its rate limits before its permits (thousands of
  // tasks passing turns back and forth between the two queues; docs/decisions.md); permits come
  // first since. On a failure it prints where each unfinished task is (whereTasksAre).
  it('issue 13\'s proof: 10,000 tasks of two queues under a shared weighted limit [1000, 1 s] and 5 permits per key, 4 worker processes, one SIGKILLed mid-run; no window over 1,000 units, no key over 5 at once, no permit leaked, every task ends once', { timeout: 300_000 }, async () => {
    const h = fresh();
    const workers = await startWorkerProcesses(h, 4, { services: ['limits'], queues: ['limits-a', 'limits-b'], concurrency: 50, lease: '2s' });
    const d = h.dispatcher();
    const began = Date.now();
    const costOf = (i: number): number => (i % 3) + 1;
    const a = await d.tasks(LimitsService).stressA.delayMany(Array.from({ length: 5000 }, (_, i) => [i, costOf(i)] as [number, number]));
    const b = await d.tasks(LimitsService).stressB.delayMany(Array.from({ length: 5000 }, (_, i) => [i, costOf(i + 1)] as [number, number]));
    const log = limitLog(h.prefix);
    await waitFor(async () => (await h.admin.llen(log)) >= 2500, { timeout: 60_000, what: '2,500 charges before the kill' });
    const victim = workers[0]!;
    await killWhileItRuns(h, victim, ['limits-a', 'limits-b']);
    const killedAt = await redisNowMs(h.admin);
    const handles = [...a, ...b];
    try {
      await Promise.all(handles.map((r) => r.get({ timeout: 240 })));
    } catch (err) {
      // Seen once in CI (a task still PENDING after 240 s, not explained yet): say where each
      // unfinished task is, for whoever meets it next.
      console.error(await whereTasksAre(h, handles.map((r, i) => ({ id: r.id, key: `k${(i < a.length ? i : i - a.length) % 8}` }))));
      throw err;
    }
    const elapsed = Date.now() - began;
    const summaries = await stopWorkerProcesses(workers.slice(1));
    expect(summaries.flatMap((x) => x.errors)).toEqual([]);
    const infos = await Promise.all(handles.map((r) => r.info()));
    expect(infos.filter((i) => i.state !== 'SUCCESS')).toEqual([]);
    const recovered = infos.filter((i) => i.history.some((x) => x.outcome === 'lost')).length;

    // Every charge the bodies saw (the entry's time in the limit's window, on its Redis clock):
    // the costs started in any second never add up to more than 1,000.
    const charges = (await h.admin.lrange(log, 0, -1)).map((line) => JSON.parse(line) as ChargeEntry);
    const sorted = charges.map((c) => [c.at, c.cost] as const).sort((x, y) => x[0] - y[0]);
    let most = 0;
    let sum = 0;
    for (let lo = 0, hi = 0; hi < sorted.length; hi++) {
      sum += sorted[hi]![1];
      while (sorted[hi]![0] - sorted[lo]![0] >= 1000) sum -= sorted[lo++]![1];
      most = Math.max(most, sum);
    }
    expect(most).toBeLessThanOrEqual(1000);
    // Each task charged and run once on the surviving workers.
    const survivors = new Map<string, number>();
    for (const c of charges) if (c.pid !== victim.child.pid) survivors.set(c.id, (survivors.get(c.id) ?? 0) + 1);
    expect([...survivors.values()].filter((n) => n !== 1)).toEqual([]);
    // Bodies at once per key, from their start and end on the Redis clock: a body of the killed
    // process that never ended counts as running until the kill was seen.
    const spans = (await h.admin.lrange(permitLog(h.prefix), 0, -1)).map((line) => JSON.parse(line) as SpanEntry);
    const keys = [...new Set(spans.map((e) => e.scope))].sort();
    expect(keys).toHaveLength(8);
    const atOnce = keys.map((k) => maxAtOnce(spans.filter((e) => e.scope === k), killedAt));
    expect(Math.max(...atOnce)).toBeLessThanOrEqual(5);
    const cut = spans.filter((e) => e.pid === victim.child.pid && e.edge === 'start' && !spans.some((o) => o.id === e.id && o.attempt === e.attempt && o.edge === 'end')).length;
    // No permit leaked: nothing held, nobody waiting, in any key's scope.
    for (const k of keys) {
      const scope = permitScope(h.prefix, { limit: STRESS_SLOTS.name }, k, 5);
      expect([await h.admin.zcard(scope.keys[0]), await h.admin.zcard(scope.keys[1]), await h.admin.zcard(scope.keys[2])], k).toEqual([0, 0, 0]);
    }
    // Nothing left in the rate limit: no turn of a task that is gone, and its sum is the sum of
    // its entries (or both gone, once the last entry left the window).
    const limit = limitKeys(h.prefix, STRESS.name);
    const now = await redisNowMs(h.admin);
    expect(await h.admin.zrangebyscore(limit.w, `(${now}`, '+inf')).toEqual([]);
    const left = await h.admin.zrange(limit.w, 0, -1);
    const sumLeft = left.reduce((t, m) => t + Number(m.slice(0, m.indexOf('|'))), 0);
    expect(Number((await h.admin.get(limit.r)) ?? 0)).toBe(sumLeft);
    for (const q of ['limits-a', 'limits-b']) {
      for (const name of ['wait', 'delayed', 'claimed', 'active'] as const) expect(await h.admin.exists(h.queueKey(name, q)), `${q} ${name}`).toBe(0);
    }
    reportFigures('stress, shared weighted limit and permits per key', {
      tasks: 10_000,
      units: 20_000,
      seconds: (elapsed / 1000).toFixed(1),
      recovered,
      chargesByKilledProcess: charges.filter((c) => c.pid === victim.child.pid).length,
      bodiesCutByTheKill: cut,
      maxUnitsPer1s: `${most}/1000`,
      maxAtOncePerKey: `${Math.max(...atOnce)}/5 (${atOnce.join(' ')})`,
      sentBackToWait: total(summaries, 'rateLimited'),
    });
  });
});
