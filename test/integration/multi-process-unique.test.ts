import { describe, expect, it } from 'vitest';
import { useHarness, waitFor, type Harness } from '../helpers.js';
import { DISPATCH_PROGRAM, readLog, runDispatchRound, total } from '../fixtures/processes/control.js';
import type { DispatchReport } from '../fixtures/processes/dispatch.js';
import { micros, ProbeService, testKeys, type LogEntry } from '../fixtures/processes/services.js';
import { assertAlive, spawnProc, startWorkerProcesses, stopWorkerProcesses } from '../fixtures/worker-processes.js';

const runRound = runDispatchRound;

describe('unique tasks across processes', () => {
  const fresh = useHarness('mp-unique');

  it('20 concurrent delays from 4 processes make one task, which runs once on 2 worker processes', { timeout: 120_000 }, async () => {
    const h = fresh();
    const began = Date.now();
    const label = 'report-42';
    const dispatchers = Array.from({ length: 4 }, () =>
      spawnProc(h, DISPATCH_PROGRAM, { TASK: 'gated', ARGS: JSON.stringify([label]), COUNT: '5', ROUNDS: '2' }),
    );
    const waitKey = h.queueKey('wait');

    // Round 1: nobody consumes yet.
    const first = (await runRound(h, dispatchers, 1)).flatMap((r) => r.results);
    expect(first).toHaveLength(20);
    const originals = first.filter((r) => !r.duplicate);
    expect(originals).toHaveLength(1);
    const id = originals[0]!.id;
    expect(first.filter((r) => r.duplicate)).toHaveLength(19);
    expect(new Set(first.map((r) => r.id))).toEqual(new Set([id]));
    expect(await h.admin.lrange(waitKey, 0, -1)).toEqual([id]);

    const d = h.dispatcher();
    const ref = d.tasks(ProbeService).gated;
    const holder = await ref.current(label);
    expect(holder?.id).toBe(id);
    expect(await holder!.status()).toBe('PENDING');

    // Two worker processes race for it; the task holds its gate until we open it.
    const workers = await startWorkerProcesses(h, 2, { services: ['probe'], concurrency: 4 });
    const result = d.result<string>(id);
    await waitFor(async () => (await result.status()) === 'STARTED', { timeout: 30_000, what: 'the task to start' });

    // Round 2: 20 more concurrent delays while the task runs on a worker process.
    const second = (await runRound(h, dispatchers, 2)).flatMap((r) => r.results);
    expect(second).toHaveLength(20);
    expect(second).toEqual(second.map(() => ({ id, duplicate: true })));
    const exits = await Promise.all(dispatchers.map((p) => p.exit));
    expect(exits.map((e) => e.code)).toEqual([0, 0, 0, 0]);

    await h.admin.rpush(testKeys(h.prefix).gate(label), 'open');
    expect(await result.get({ timeout: 30 })).toMatch(/^ran in \d+$/);
    const summaries = await stopWorkerProcesses(workers);

    expect(total(summaries, 'started')).toBe(1);
    expect(total(summaries, 'succeeded')).toBe(1);
    expect(total(summaries, 'revoked')).toBe(0);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    const log = await readLog(h);
    expect(log.map((e) => [e.ev, e.id])).toEqual([
      ['start', id],
      ['finish', id],
    ]);
    const info = await result.info();
    expect(info.attempts).toBe(1);
    expect(summaries.map((s) => s.workerId)).toContain(info.worker);
    expect(await ref.current(label)).toBeNull();
    expect(await h.admin.llen(waitKey)).toBe(0);
    expect(await h.admin.zcard(h.queueKey('active'))).toBe(0);
    console.log(`[mp-unique] one task from 40 concurrent delays in 4 processes, run once; ${Date.now() - began} ms`);
  });

  it('tasks with one key never overlap across 3 worker processes', { timeout: 120_000 }, async () => {
    const h = fresh();
    const began = Date.now();
    const keys = ['k0', 'k1', 'k2', 'k3', 'k4'];
    const runsPerKey = 6;
    const workMs = 60;
    const workers = await startWorkerProcesses(h, 3, { services: ['probe'], concurrency: 3 });
    const d = h.dispatcher();
    const ref = d.tasks(ProbeService).keyed;

    const created = new Map<string, string>(); // task id -> key
    const createdFor = (k: string): number => [...created.values()].filter((v) => v === k).length;
    let duplicates = 0;
    let rounds = 0;
    while (keys.some((k) => createdFor(k) < runsPerKey)) {
      rounds++;
      // Progress is a start or finish entry after the calls began, or the end of a task a call
      // was refused for. The log alone is not enough: a holder logs its finish before its finish
      // script frees the key, so a round of duplicates only, whose holders had all logged their
      // finish already, would wait for an entry that never comes.
      const seen = await h.admin.llen(testKeys(h.prefix).log);
      // Three concurrent calls per key, every key at once.
      const sent = await Promise.all(keys.flatMap((k) => [1, 2, 3].map(() => ref.delay(k, workMs).then((r) => ({ k, r })))));
      for (const { k, r } of sent) {
        if (r.duplicate) duplicates++;
        else created.set(r.id, k);
      }
      const holders = [...new Set(sent.map(({ r }) => r.id))];
      await waitFor(
        async () => {
          assertAlive(workers);
          if ((await h.admin.llen(testKeys(h.prefix).log)) > seen) return true;
          const states = await Promise.all(holders.map((id) => d.result(id).status()));
          return states.some((st) => st === 'SUCCESS' || st === 'FAILURE');
        },
        { timeout: 30_000, what: 'the next task start or end' },
      );
    }
    const handles = [...created.keys()].map((id) => d.result<string>(id));
    const results = await Promise.all(handles.map((r) => r.get({ timeout: 60 })));
    expect(results.sort()).toEqual([...created.values()].sort());
    const summaries = await stopWorkerProcesses(workers);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    expect(total(summaries, 'started')).toBe(created.size);
    expect(total(summaries, 'revoked')).toBe(0);

    // Every created task ran exactly once; nothing else ran.
    const log = await readLog(h);
    const starts = log.filter((e) => e.ev === 'start');
    expect(starts.map((e) => e.id).sort()).toEqual([...created.keys()].sort());
    expect(log.filter((e) => e.ev === 'finish').map((e) => e.id).sort()).toEqual([...created.keys()].sort());

    // Per key, each run ends (log, and the finish script's `f`) before the next one starts.
    const infos = new Map(await Promise.all(handles.map(async (r) => [r.id, await r.info()] as const)));
    let overlaps = 0;
    for (const k of keys) {
      const byStart = starts.filter((e) => e.key === k).sort((a, b) => micros(a) - micros(b));
      expect(byStart.length).toBeGreaterThanOrEqual(runsPerKey);
      const finishOf = (id: string): LogEntry => log.find((e) => e.ev === 'finish' && e.id === id)!;
      for (let i = 1; i < byStart.length; i++) {
        const prev = byStart[i - 1]!;
        const next = byStart[i]!;
        if (micros(finishOf(prev.id)) > micros(next)) overlaps++;
        const prevInfo = infos.get(prev.id)!;
        const nextInfo = infos.get(next.id)!;
        if (prevInfo.finishedAt!.getTime() > nextInfo.startedAt!.getTime()) overlaps++;
      }
    }
    expect(overlaps).toBe(0);
    const processes = new Set(starts.map((e) => e.pid));
    console.log(
      `[mp-unique] keyed: ${created.size} runs over ${keys.length} keys in ${processes.size} worker processes, ` +
        `${duplicates} duplicate dispatches in ${rounds} rounds, no overlap; ${Date.now() - began} ms`,
    );
  });
});
