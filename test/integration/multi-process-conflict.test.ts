/**
 * Conflict modes under races (issue 13, point 5): 20 concurrent calls from 4 dispatcher
 * processes, run by 2 worker processes. For 'replace' and 'keepLast': at most one run at a time
 * per key, the last call's arguments win, every task ends in exactly one final state, and no lock
 * or pending pointer is left behind.
 */
import { describe, expect, it } from 'vitest';
import type { QueueEvent, TaskResult } from 'heimdall-tasks';
import { useHarness, waitFor, type Harness } from '../helpers.js';
import { DISPATCH_PROGRAM, readLog, runDispatchRound, total } from '../fixtures/processes/control.js';
import type { DispatchReport } from '../fixtures/processes/dispatch.js';
import { micros, ProbeService, testKeys, type LogEntry } from '../fixtures/processes/services.js';
import { killWorkerProcess, spawnProc, startWorkerProcesses, stopWorkerProcesses, type Proc } from '../fixtures/worker-processes.js';

type Sent = DispatchReport['results'][number];

/** What the dispatcher processes sent in `round`, all of them. */
async function runRound(h: Harness, procs: Proc[], round: number): Promise<Sent[]> {
  return (await runDispatchRound(h, procs, round)).flatMap((r) => r.results);
}

/** The ids of the `queued` events of `ids`, in the order the enqueue scripts ran (the stream's order). */
async function queuedOrder(h: Harness, ids: readonly string[]): Promise<string[]> {
  const wanted = new Set(ids);
  const it = h.dispatcher().events({ since: new Date(Date.now() - 120_000) });
  const seen: QueueEvent[] = [];
  const deadline = setTimeout(() => void it.return?.(), 10_000);
  try {
    for await (const e of it) {
      if (e.type === 'queued' && wanted.has(e.id)) seen.push(e);
      if (seen.length === wanted.size) break;
    }
  } finally {
    clearTimeout(deadline);
  }
  return seen.map((e) => e.id);
}

/** Start and finish entries of one key never interleave: each run ends before the next starts. */
function overlaps(log: readonly LogEntry[], key: string): number {
  const mine = log.filter((e) => e.key === key).sort((a, b) => micros(a) - micros(b));
  let running = 0;
  let most = 0;
  for (const e of mine) {
    running += e.ev === 'start' ? 1 : -1;
    most = Math.max(most, running);
  }
  return most > 1 ? most : 0;
}

/** Each task's state and revoke reason, once none is PENDING or STARTED any more. */
async function finalStates(h: Harness, ids: readonly string[]): Promise<Map<string, string>> {
  const d = h.dispatcher();
  return waitFor(
    async () => {
      const infos = await Promise.all(ids.map((id) => d.result(id).info()));
      if (infos.some((i) => i.state === 'PENDING' || i.state === 'STARTED' || i.state === 'RETRY')) return undefined;
      return new Map(infos.map((i, k) => [ids[k]!, i.state === 'REVOKED' ? `REVOKED ${i.revokeReason}` : i.state]));
    },
    { timeout: 30_000, interval: 100, what: 'every task to reach a final state' },
  );
}

async function leftovers(h: Harness): Promise<string[]> {
  return [...(await h.keys('{default}:lock:*')), ...(await h.keys('{default}:next:*'))];
}

describe('conflict modes across processes', () => {
  const fresh = useHarness('mp-conflict');

  it("replace: 20 concurrent calls from 4 processes leave one task, the last sent, which runs once; calls while it runs are duplicates", { timeout: 120_000 }, async () => {
    const h = fresh();
    const label = 'r';
    const dispatchers = Array.from({ length: 4 }, () =>
      spawnProc(h, DISPATCH_PROGRAM, { TASK: 'replacing', ARGS: JSON.stringify([label]), NUMBERED: '1', COUNT: '5', ROUNDS: '2' }),
    );
    const d = h.dispatcher();
    const ref = d.tasks(ProbeService).replacing;

    // Round 1, nobody consuming: each call replaces the one before it.
    const first = await runRound(h, dispatchers, 1);
    expect(first).toHaveLength(20);
    expect(first.filter((r) => r.duplicate)).toEqual([]);
    const ids = first.map((r) => r.id);
    expect(new Set(ids).size).toBe(20);
    const order = await queuedOrder(h, ids);
    const survivor = order[order.length - 1]!;
    // Each task but the last was replaced by exactly one later call.
    const replaced = first.flatMap((r) => (r.conflict?.outcome === 'replaced' ? [r.conflict.replaced] : []));
    expect(replaced.sort()).toEqual(order.slice(0, -1).sort());
    expect((await ref.current(label, 0))?.id).toBe(survivor);

    const workers = await startWorkerProcesses(h, 2, { services: ['probe'], concurrency: 4 });
    const survivorN = first.find((r) => r.id === survivor)!.n!;
    expect(await d.result<number>(survivor).get({ timeout: 30 })).toBe(survivorN);

    // A holder that runs (gated), then round 2: every call is a duplicate of it.
    const held = await ref.delay(label, -1);
    await waitFor(async () => (await held.status()) === 'STARTED', { timeout: 30_000, what: 'the gated holder to start' });
    const second = await runRound(h, dispatchers, 2);
    expect(second).toEqual(second.map((r) => ({ id: held.id, duplicate: true, conflict: { outcome: 'duplicate', holder: held.id }, n: r.n })));
    expect((await Promise.all(dispatchers.map((p) => p.exit))).map((e) => e.code)).toEqual([0, 0, 0, 0]);
    await h.admin.rpush(testKeys(h.prefix).gate(label), 'open');
    expect(await held.get({ timeout: 30 })).toBe(-1);

    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    expect(total(summaries, 'started')).toBe(2);
    const states = await finalStates(h, [...ids, held.id]);
    expect([...states.values()].filter((s) => s === 'SUCCESS')).toHaveLength(2);
    expect([...states.values()].filter((s) => s === 'REVOKED replaced')).toHaveLength(19);
    const log = await readLog(h);
    expect(log.filter((e) => e.ev === 'start').map((e) => e.id)).toEqual([survivor, held.id]);
    expect(overlaps(log, label)).toBe(0);
    expect(await leftovers(h)).toEqual([]);
    expect((await h.admin.lrange(h.queueKey('wait'), 0, -1)).filter((id) => id !== '')).toEqual([]);
    expect(await h.admin.zcard(h.queueKey('claimed'))).toBe(0);
  });

  it('keepLast: 20 concurrent calls while one runs leave one pending, the last sent; then 20 with nothing running never run two at once and the last runs', { timeout: 120_000 }, async () => {
    const h = fresh();
    const label = 'k';
    const dispatchers = Array.from({ length: 4 }, () =>
      spawnProc(h, DISPATCH_PROGRAM, { TASK: 'keepingLast', ARGS: JSON.stringify([label]), NUMBERED: '1', COUNT: '5', ROUNDS: '2' }),
    );
    const d = h.dispatcher();
    const ref = d.tasks(ProbeService).keepingLast;
    const workers = await startWorkerProcesses(h, 2, { services: ['probe'], concurrency: 4 });
    const held: TaskResult<number> = await ref.delay(label, -1);
    await waitFor(async () => (await held.status()) === 'STARTED', { timeout: 30_000, what: 'the gated holder to start' });

    // Round 1: every call waits behind the running one, replacing the one that waited before it.
    const first = await runRound(h, dispatchers, 1);
    expect(first).toHaveLength(20);
    for (const r of first) expect(r.conflict).toMatchObject({ outcome: 'waiting', holder: held.id });
    const ids = first.map((r) => r.id);
    const order = await queuedOrder(h, ids);
    const survivor = order[order.length - 1]!;
    const replaced = first.flatMap((r) => (r.conflict?.outcome === 'waiting' && r.conflict.replaced ? [r.conflict.replaced] : []));
    expect(replaced.sort()).toEqual(order.slice(0, -1).sort());
    expect(await d.result(survivor).status()).toBe('PENDING');
    await h.admin.rpush(testKeys(h.prefix).gate(label), 'open');
    expect(await d.result<number>(survivor).get({ timeout: 30 })).toBe(first.find((r) => r.id === survivor)!.n);

    // Round 2: nothing runs; the calls race the workers' starts.
    const second = await runRound(h, dispatchers, 2);
    expect((await Promise.all(dispatchers.map((p) => p.exit))).map((e) => e.code)).toEqual([0, 0, 0, 0]);
    const ids2 = second.map((r) => r.id);
    const states2 = await finalStates(h, ids2);
    const order2 = await queuedOrder(h, ids2);
    const last2 = order2[order2.length - 1]!;
    expect(states2.get(last2)).toBe('SUCCESS');
    expect(await d.result<number>(last2).get({ timeout: 5 })).toBe(second.find((r) => r.id === last2)!.n);
    for (const s of states2.values()) expect(['SUCCESS', 'REVOKED replaced']).toContain(s);

    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    const states1 = await finalStates(h, [...ids, held.id]);
    expect([...states1.values()].filter((s) => s === 'REVOKED replaced')).toHaveLength(19);
    const succeeded = [...states1.values(), ...states2.values()].filter((s) => s === 'SUCCESS').length;
    // What ran is what succeeded: no run was lost or ended 'duplicate'.
    expect(total(summaries, 'started')).toBe(succeeded);
    expect(total(summaries, 'revoked')).toBe(0);
    const log = await readLog(h);
    expect(overlaps(log, label)).toBe(0);
    expect(log.filter((e) => e.ev === 'start')).toHaveLength(succeeded);
    expect(await leftovers(h)).toEqual([]);
    expect(await h.admin.zcard(h.queueKey('claimed'))).toBe(0);
    expect(await h.admin.zcard(h.queueKey('delayed'))).toBe(0);
    console.log(`[mp-conflict] keepLast: round 2 ran ${[...states2.values()].filter((s) => s === 'SUCCESS').length} of 20 calls, one at a time`);
  });

  it('keepLast with its running holder SIGKILLed: the holder is recovered and runs again, the waiting task runs once after it, nothing is left', { timeout: 120_000 }, async () => {
    const h = fresh();
    const label = 'killed';
    const d = h.dispatcher();
    const ref = d.tasks(ProbeService).keepingLast;
    const workers = await startWorkerProcesses(h, 2, { services: ['probe'], concurrency: 4, lease: '2s' });
    const held: TaskResult<number> = await ref.delay(label, -1);
    await waitFor(async () => (await held.status()) === 'STARTED', { timeout: 30_000, what: 'the gated holder to start' });
    const waiting = await ref.delay(label, 7);
    expect(waiting.conflict).toMatchObject({ outcome: 'waiting', holder: held.id });
    // The worker that runs the holder dies with it: no finish hands the lock over.
    const owner = (await h.admin.hget(h.queueKeys('default').task(held.id), 'w')) ?? '';
    const victim = workers.find((p) => owner.includes(`:${String(p.child.pid)}:`))!;
    await killWorkerProcess(victim);
    // Its lease lapses; the holder is recovered (its lock is still its own) and starts again on
    // the other worker, while the waiting task keeps waiting behind it.
    await waitFor(async () => (await held.info()).attempts >= 2 && (await held.status()) === 'STARTED', { timeout: 30_000, what: 'the holder to run again' });
    expect(await waiting.status()).toBe('PENDING');
    await h.admin.rpush(testKeys(h.prefix).gate(label), 'open');
    expect(await held.get({ timeout: 30 })).toBe(-1);
    expect(await waiting.get({ timeout: 30 })).toBe(7);
    const summaries = await stopWorkerProcesses(workers.filter((p) => p !== victim));
    expect(summaries.flatMap((x) => x.errors)).toEqual([]);
    // On the survivor: the holder's second run, then the waiting task's, one after the other.
    const log = (await readLog(h)).filter((e) => e.pid !== victim.child.pid);
    expect(log.filter((e) => e.ev === 'start').map((e) => e.id)).toEqual([held.id, waiting.id]);
    expect(overlaps(log, label)).toBe(0);
    expect(await leftovers(h)).toEqual([]);
  });
});
