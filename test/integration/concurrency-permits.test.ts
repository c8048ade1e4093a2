/**
 * Per-key concurrency (issue 13, point 4): `concurrency` of @Task and concurrency limits
 * (Limits.define(name, { concurrency })). At most n bodies run at once per scope, counted from
 * the start and end of each body on the Redis clock (test/fixtures/limits/services.ts, `span`);
 * waiters are woken when a permit is given back, first come first; a SIGKILLed worker's permits
 * lapse within its lease, and nothing is left held or waiting at the end. Under the cluster
 * suite each scope lives in a slot of its own, apart from the queues.
 */
import { describe, expect, it } from 'vitest';
import { Inspector, PermitLostError } from 'heimdall-tasks';
import { recordEvents, redisNowMs, useHarness, waitFor, type Harness } from '../helpers.js';
import { permitScope } from '../../src/core/protocol/permit-scripts.js';
import { LIMIT_QUEUES, LimitsService, maxAtOnce, permitLog, SLOTS, type SpanEntry } from '../fixtures/limits/services.js';
import { killWorkerProcess, startWorkerProcesses, stopWorkerProcesses } from '../fixtures/worker-processes.js';
import { total } from '../fixtures/processes/control.js';
import { keySlot } from '../slot-checker.js';

async function spans(h: Harness): Promise<SpanEntry[]> {
  return (await h.admin.lrange(permitLog(h.prefix), 0, -1)).map((l) => JSON.parse(l) as SpanEntry);
}

/** What a scope holds and who waits in it (every entry: each call on the scope drops the lapsed ones, so after the last release none is left). */
async function scopeState(h: Harness, scope: { keys: readonly [string, string, string] }): Promise<{ held: string[]; waiting: string[] }> {
  return { held: await h.admin.zrange(scope.keys[0], 0, -1), waiting: await h.admin.zrange(scope.keys[1], 0, -1) };
}

function worker(h: Harness, concurrency = 8, leaseDuration?: string) {
  const w = h.worker({ queues: [...LIMIT_QUEUES], services: [new LimitsService(h.admin, h.prefix)], concurrency, leaseDuration });
  return { w, ev: recordEvents(w) };
}

describe('concurrency permits', () => {
  const fresh = useHarness('permits');

  it('concurrency: 3 across 3 worker processes of 4 slots each: never more than 3 bodies at once, all 30 run, nothing held after', { timeout: 120_000 }, async () => {
    const h = fresh();
    const scope = permitScope(h.prefix, { task: 'LimitsService.three' }, undefined, 3);
    expect(LIMIT_QUEUES.map((q) => keySlot(h.queueKeys(q).wait))).not.toContain(keySlot(scope.keys[0]));
    const workers = await startWorkerProcesses(h, 3, { services: ['limits'], queues: LIMIT_QUEUES, concurrency: 4 });
    const sent = await h.dispatcher().tasks(LimitsService).three.delayMany(Array.from({ length: 30 }, (_, i) => [i, 100] as [number, number]));
    await Promise.all(sent.map((r) => r.get({ timeout: 60 })));
    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    const log = await spans(h);
    expect(new Set(log.map((e) => e.id)).size).toBe(30);
    expect(maxAtOnce(log)).toBe(3);
    expect(await scopeState(h, scope)).toEqual({ held: [], waiting: [] });
    console.info(
      `[permits] concurrency 3, 30 tasks of 100 ms on 3 processes x 4 slots: max ${maxAtOnce(log)} at once; ` +
        `${total(summaries, 'rateLimited')} sent back to wait; per process ${summaries.map((s) => s.started).join('/')}`,
    );
  });

  it('per key: one at a time for each key, while runs of other keys go side by side', { timeout: 60_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    const sent = await t.perKey.delayMany(['a', 'b', 'c', 'a', 'b', 'c', 'a', 'b', 'c'].map((k) => [k, 150] as [string, number]));
    await Promise.all(sent.map((r) => r.get({ timeout: 30 })));
    const log = await spans(h);
    for (const key of ['a', 'b', 'c']) expect(maxAtOnce(log.filter((e) => e.scope === key))).toBe(1);
    expect(maxAtOnce(log)).toBe(3);
    expect(ev.errors).toEqual([]);
    for (const key of ['a', 'b', 'c']) expect(await scopeState(h, permitScope(h.prefix, { task: 'LimitsService.perKey' }, key, 1))).toEqual({ held: [], waiting: [] });
  });

  it('a concurrency limit shared by tasks of two queues: 2 at once between them', { timeout: 60_000 }, async () => {
    const h = fresh();
    const { w } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    const sent = [
      ...(await t.slotA.delayMany(Array.from({ length: 5 }, (_, i) => [i, 100] as [number, number]))),
      ...(await t.slotB.delayMany(Array.from({ length: 5 }, (_, i) => [i, 100] as [number, number]))),
    ];
    await Promise.all(sent.map((r) => r.get({ timeout: 30 })));
    const log = await spans(h);
    expect(new Set(log.map((e) => e.task))).toEqual(new Set(['slotA', 'slotB']));
    expect(maxAtOnce(log)).toBe(2);
    expect(await scopeState(h, permitScope(h.prefix, { limit: SLOTS.name }, undefined, 2))).toEqual({ held: [], waiting: [] });
  });

  it('a waiter is woken when the permit is given back, not at its re-check, first come first', { timeout: 60_000 }, async () => {
    const h = fresh();
    // The default lease (30 s): a waiter left to its re-check would wait about 20 to 30 s.
    const { w, ev } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    const first = await t.perKey.delay('k', 3000);
    await waitFor(async () => (await spans(h)).length > 0, { what: 'the first run to start' });
    const rest = [];
    for (let i = 0; i < 4; i++) {
      const r = await t.perKey.delay('k', 50);
      rest.push(r);
      // Sent one by one, each once the one before waits: their order is the order they asked in.
      await waitFor(() => ev.rateLimited.some((e) => e.id === r.id), { what: `task ${i + 2} to wait for the permit` });
    }
    // What an operator sees meanwhile: the first holds the key's one permit, four wait.
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    try {
      const scopes = await inspector.permits();
      expect(scopes).toEqual([expect.objectContaining({ of: { task: 'LimitsService.perKey' }, scopeKey: 'k', limit: 1, waiting: 4 })]);
      expect(scopes[0]!.holders).toEqual([expect.objectContaining({ queue: 'limits-b', id: first.id, attempt: 1 })]);
      expect(scopes[0]!.holders[0]!.lapsesInMs).toBeGreaterThan(0);
      // A scope's keys (their hash tag, and ':d' or ':h' after it) are no queue.
      expect((await inspector.queueNames()).filter((q) => q.includes('permit'))).toEqual([]);
    } finally {
      await inspector.close();
    }
    const began = Date.now();
    await Promise.all([first, ...rest].map((r) => r.get({ timeout: 15 })));
    const log = await spans(h);
    const starts = log.filter((e) => e.edge === 'start').map((e) => e.id);
    expect(starts).toEqual([first, ...rest].map((r) => r.id));
    // Each start follows the end before it within a hand-over, far inside a re-check.
    const at = (id: string, edge: 'start' | 'end') => log.find((e) => e.id === id && e.edge === edge)!.at;
    const ids = [first, ...rest].map((r) => r.id);
    const gaps = ids.slice(1).map((id, i) => at(id, 'start') - at(ids[i]!, 'end'));
    expect(Math.max(...gaps)).toBeLessThan(5000);
    expect(maxAtOnce(log)).toBe(1);
    console.info(`[permits] hand-over, end to next start: ${gaps.map((g) => g.toFixed(1)).join(', ')} ms (${Date.now() - began} ms for the 5)`);
  });

  it('a body longer than two leases keeps its permit through the renewals: the waiter starts only after it ended', { timeout: 60_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h, 4, '1s');
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    const long = await t.perKey.delay('renewed', 2500);
    await waitFor(async () => (await spans(h)).some((e) => e.id === long.id), { what: 'the long run to start' });
    const next = await t.perKey.delay('renewed', 10);
    await Promise.all([long.get({ timeout: 20 }), next.get({ timeout: 20 })]);
    const log = await spans(h);
    expect(maxAtOnce(log)).toBe(1);
    const at = (id: string, edge: 'start' | 'end') => log.find((e) => e.id === id && e.edge === edge)!.at;
    expect(at(next.id, 'start')).toBeGreaterThanOrEqual(at(long.id, 'end'));
    expect(ev.errors).toEqual([]);
  });

  it('a permit found lapsed at a renewal is reported as PermitLostError; the run goes on and ends', { timeout: 60_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h, 4, '1s');
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    const run = await t.perKey.delay('lost', 2000);
    await waitFor(async () => (await spans(h)).some((e) => e.id === run.id), { what: 'the run to start' });
    // As if its permit had lapsed (a worker cut off for a lease) and gone to another run.
    const scope = permitScope(h.prefix, { task: 'LimitsService.perKey' }, 'lost', 1);
    expect(await h.admin.zremrangebyscore(scope.keys[0], '-inf', '+inf')).toBe(1);
    await waitFor(() => ev.errors.some((e) => e instanceof PermitLostError && e.taskId === run.id), { what: 'the renewal to report the lost permit' });
    await run.get({ timeout: 10 });
  });

  it('a waiter revoked while it waits: the permit handed to it goes on to the next waiter at once', { timeout: 60_000 }, async () => {
    const h = fresh();
    const { w, ev } = worker(h);
    await w.start();
    const t = h.dispatcher().tasks(LimitsService);
    const holder = await t.perKey.delay('g', 1500);
    await waitFor(async () => (await spans(h)).some((e) => e.id === holder.id), { what: 'the holder to start' });
    const revoked = await t.perKey.delay('g', 10);
    await waitFor(() => ev.rateLimited.some((e) => e.id === revoked.id && e.permit === true), { what: 'the first waiter to wait' });
    const next = await t.perKey.delay('g', 10);
    await waitFor(() => ev.rateLimited.some((e) => e.id === next.id), { what: 'the second waiter to wait' });
    // The second waiter is behind the first: left alone it would ask again three leases later (90 s).
    expect(ev.rateLimited.find((e) => e.id === next.id)!.delayMs).toBeGreaterThan(60_000);
    await revoked.revoke();
    await holder.get({ timeout: 10 });
    // The holder's permit goes to the revoked waiter first; its wake-up finds it gone, and the
    // permit goes on to the second, woken at once.
    await next.get({ timeout: 10 });
    expect(await revoked.status()).toBe('REVOKED');
    const log = await spans(h);
    const at = (id: string, edge: 'start' | 'end') => log.find((e) => e.id === id && e.edge === edge)!.at;
    expect(at(next.id, 'start') - at(holder.id, 'end')).toBeLessThan(5000);
    expect(await scopeState(h, permitScope(h.prefix, { task: 'LimitsService.perKey' }, 'g', 1))).toEqual({ held: [], waiting: [] });
  });

  it('a worker SIGKILLed while it holds permits: they lapse within its lease, the others go on, no permit leaked, every task ends once', { timeout: 120_000 }, async () => {
    const h = fresh();
    const scope = permitScope(h.prefix, { task: 'LimitsService.three' }, undefined, 3);
    const workers = await startWorkerProcesses(h, 4, { services: ['limits'], queues: LIMIT_QUEUES, concurrency: 4, lease: '2s' });
    const sent = await h.dispatcher().tasks(LimitsService).three.delayMany(Array.from({ length: 40 }, (_, i) => [i, 600] as [number, number]));
    // The victim: a process with a body running now (so its permit is held, not only handed).
    const victim = await waitFor(
      async () => {
        const log = await spans(h);
        const open = log.filter((e) => e.edge === 'start' && !log.some((o) => o.id === e.id && o.attempt === e.attempt && o.edge === 'end'));
        return workers.find((p) => open.some((e) => e.pid === p.child.pid));
      },
      { timeout: 30_000, interval: 10, what: 'a worker to run a body' },
    );
    await killWorkerProcess(victim);
    const killedAt = await redisNowMs(h.admin);
    const results = await Promise.all(sent.map((r) => r.get({ timeout: 60 })));
    expect(results).toHaveLength(40);
    const summaries = await stopWorkerProcesses(workers.filter((p) => p !== victim));
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    const log = await spans(h);
    // The victim's runs that never ended ran until it was killed (at the latest).
    const cut = log.filter((e) => e.pid === victim.child.pid && e.edge === 'start' && !log.some((o) => o.id === e.id && o.attempt === e.attempt && o.edge === 'end'));
    expect(cut.length).toBeGreaterThan(0);
    expect(maxAtOnce(log, killedAt)).toBeLessThanOrEqual(3);
    // Each task's body ended once on the survivors.
    // Every task ended SUCCESS; each body ended once on the survivors, and a task whose body
    // ended on the victim (its end maybe not stored before the kill) at most once there.
    expect((await Promise.all(sent.map((r) => r.status()))).filter((st) => st !== 'SUCCESS')).toEqual([]);
    const ends = new Map<string, number>();
    for (const e of log) if (e.edge === 'end' && e.pid !== victim.child.pid) ends.set(e.id, (ends.get(e.id) ?? 0) + 1);
    expect([...ends.values()].filter((n) => n !== 1)).toEqual([]);
    const endedSomewhere = new Set(log.filter((e) => e.edge === 'end').map((e) => e.id));
    expect(endedSomewhere.size).toBe(40);
    expect(await scopeState(h, scope)).toEqual({ held: [], waiting: [] });
    for (const q of LIMIT_QUEUES) {
      const k = h.queueKeys(q);
      expect([await h.admin.llen(k.wait), await h.admin.zcard(k.delayed), await h.admin.zcard(k.active), await h.admin.zcard(k.claimed)]).toEqual([0, 0, 0, 0]);
    }
    console.info(`[permits] SIGKILL with ${cut.length} runs holding permits: max ${maxAtOnce(log, killedAt)} at once (3 allowed); ${total(summaries, 'rateLimited')} waits on the survivors`);
  });
});
