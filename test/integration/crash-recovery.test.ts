// Crash recovery in real processes: worker processes are killed with SIGKILL while their tasks
// run; the leases lapse and other worker processes recover the tasks. Every run records its
// start and completion in Redis from inside the task (test/fixtures/faults/services.ts), so
// "exactly once" is checked on what the tasks did, not on what the library says.
import { describe, expect, it } from 'vitest';
import { redisNowMs, reportFigures, useHarness, waitFor, type Harness } from '../helpers.js';
import { byTask, duplicates, lockKeys, openGate, readRuns } from '../fixtures/faults/control.js';
import { FaultService, type RunEntry } from '../fixtures/faults/services.js';
import { killWorkerProcess, startWorkerProcess, startWorkerProcesses, stopWorkerProcesses, type WorkerProcess } from '../fixtures/worker-processes.js';

const LEASE = '1s';
const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** Waits until `count` runs of attempt `attempt` have recorded their start. */
async function startsOf(h: Harness, attempt: number, count: number, workers: readonly WorkerProcess[] = []): Promise<RunEntry[]> {
  return waitFor(
    async () => {
      for (const w of workers) if (w.exited) throw new Error(`worker ${w.pid} exited:\n${w.exited.stderr}`);
      const starts = (await readRuns(h.admin, h.prefix)).filter((e) => e.ev === 'start' && e.attempt === attempt);
      return starts.length >= count ? starts : undefined;
    },
    { timeout: 30_000, interval: 25, what: `${count} starts of attempt ${attempt}` },
  );
}

describe('crash recovery (worker processes killed with SIGKILL)', () => {
  const fresh = useHarness('crash');

  it('50 running tasks of a killed worker are recovered by a second worker; each ends SUCCESS exactly once and no lock is left', { timeout: 60_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    const ref = d.tasks(FaultService).held;
    const active = h.queueKey('active');
    const a = await startWorkerProcess(h, { services: ['fault'], concurrency: 50, lease: LEASE });
    const handles = await Promise.all(range(50).map((n) => ref.delay(n)));
    const ids = handles.map((r) => r.id);
    expect(new Set(ids).size).toBe(50);

    // All 50 are mid-run on worker A, holding their locks, when it dies.
    const firstStarts = await startsOf(h, 1, 50, [a]);
    expect(firstStarts).toHaveLength(50);
    expect(new Set(firstStarts.map((e) => e.id))).toEqual(new Set(ids));
    expect(new Set(firstStarts.map((e) => e.pid))).toEqual(new Set([a.pid]));
    const locksBefore = await lockKeys(h.admin, h.prefix);
    expect(locksBefore).toHaveLength(50);
    expect(new Set(await h.admin.mget(...locksBefore))).toEqual(new Set(ids));
    expect(await h.admin.zcard(active)).toBe(50);

    const killedAt = await redisNowMs(h.admin);
    await killWorkerProcess(a);
    // Nothing happens to the tasks by itself: they stay STARTED on the dead worker.
    const infos = await Promise.all(handles.map((r) => r.info()));
    expect(infos.map((i) => i.state)).toEqual(ids.map(() => 'STARTED'));
    expect(new Set(infos.map((i) => i.worker))).toEqual(new Set([a.workerId]));

    await openGate(h.admin, h.prefix);
    const b = await startWorkerProcess(h, { services: ['fault'], concurrency: 50, lease: LEASE });
    const readyAt = await redisNowMs(h.admin);
    const results = await Promise.all(handles.map((r) => r.get({ timeout: 30_000 })));
    expect(results).toEqual(range(50));

    const runs = await readRuns(h.admin, h.prefix);
    const tasks = byTask(runs);
    expect([...tasks.keys()].sort()).toEqual([...ids].sort());
    for (const id of ids) {
      const t = tasks.get(id)!;
      // Started on A (killed there), started again on B, completed once, by B's run.
      expect(t.starts.map((e) => [e.attempt, e.pid])).toEqual([
        [1, a.pid],
        [2, b.pid],
      ]);
      expect(t.dones).toHaveLength(1);
      expect(t.dones[0]).toMatchObject({ attempt: 2, pid: b.pid, run: t.starts[1]!.run });
    }
    const finals = await Promise.all(handles.map((r) => r.info()));
    for (const info of finals) {
      expect(info).toMatchObject({ state: 'SUCCESS', attempts: 2, worker: b.workerId });
    }
    const recoveryCounts = await Promise.all(ids.map((id) => h.admin.hget(h.taskKey(id), 'rc')));
    expect(recoveryCounts).toEqual(ids.map(() => '1'));
    expect(await lockKeys(h.admin, h.prefix)).toEqual([]);
    expect(await h.admin.zcard(active)).toBe(0);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);

    const [summary] = await stopWorkerProcesses([b]);
    expect(summary).toMatchObject({ started: 50, succeeded: 50, failed: 0, errors: [] });

    const restarts = runs.filter((e) => e.ev === 'start' && e.attempt === 2).map((e) => e.ms);
    const dones = runs.filter((e) => e.ev === 'done').map((e) => e.ms);
    reportFigures('crash-recovery 50 tasks', {
      tasks: 50,
      kills: 1,
      recoveries: recoveryCounts.filter((c) => c === '1').length,
      losses: finals.filter((i) => i.state !== 'SUCCESS').length,
      duplicates: duplicates(runs),
      msKillToSecondWorkerReady: readyAt - killedAt,
      msKillToFirstRestart: Math.min(...restarts) - killedAt,
      msKillToLastRestart: Math.max(...restarts) - killedAt,
      msKillToAllDone: Math.max(...dones) - killedAt,
    });
  });

  it('past maxRecoveries a task ends FAILURE with WorkerLostError and its lock is released (maxRecoveries 0: one kill; 1: two kills)', { timeout: 60_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    const tasks = d.tasks(FaultService);
    const a = await startWorkerProcess(h, { services: ['fault'], concurrency: 4, lease: LEASE });
    const fragile = await tasks.fragile.delay(1);
    const once = await tasks.recoveredOnce.delay(1);
    await startsOf(h, 1, 2, [a]);
    expect(await lockKeys(h.admin, h.prefix)).toHaveLength(2);

    // Kill 1: the maxRecoveries 0 task fails; the other goes back to the queue and starts on B.
    await killWorkerProcess(a);
    const b = await startWorkerProcess(h, { services: ['fault'], concurrency: 4, lease: LEASE });
    await waitFor(async () => (await fragile.status()) === 'FAILURE', { timeout: 20_000, what: 'the maxRecoveries 0 task to fail' });
    const fragileInfo = await fragile.info();
    expect(fragileInfo).toMatchObject({ state: 'FAILURE', attempts: 1, worker: a.workerId });
    expect(fragileInfo.error?.name).toBe('WorkerLostError');
    expect(fragileInfo.error?.message).toContain(`worker ${a.workerId} stopped renewing the lease`);
    expect(fragileInfo.error?.message).toContain('maxRecoveries is 0');
    expect(await h.admin.hget(h.taskKey(fragile.id), 'rc')).toBe('1');
    await expect(fragile.get({ timeout: 1000 })).rejects.toMatchObject({ name: 'TaskFailedError' });
    const [onB] = await startsOf(h, 2, 1, [b]);
    expect(onB).toMatchObject({ id: once.id, pid: b.pid });
    // Only the recovered task's lock is left, held by it.
    const locks = await lockKeys(h.admin, h.prefix);
    expect(locks).toHaveLength(1);
    expect(await h.admin.get(locks[0]!)).toBe(once.id);

    // Kill 2: the maxRecoveries 1 task was recovered once already; now it fails.
    await killWorkerProcess(b);
    const c = await startWorkerProcess(h, { services: ['fault'], concurrency: 4, lease: LEASE });
    await waitFor(async () => (await once.status()) === 'FAILURE', { timeout: 20_000, what: 'the maxRecoveries 1 task to fail' });
    const onceInfo = await once.info();
    expect(onceInfo).toMatchObject({ state: 'FAILURE', attempts: 2, worker: b.workerId });
    expect(onceInfo.error?.name).toBe('WorkerLostError');
    expect(onceInfo.error?.message).toContain(`worker ${b.workerId} stopped renewing the lease`);
    expect(onceInfo.error?.message).toContain('maxRecoveries is 1');
    expect(await h.admin.hget(h.taskKey(once.id), 'rc')).toBe('2');
    expect(await lockKeys(h.admin, h.prefix)).toEqual([]);
    expect(await h.admin.zcard(h.queueKey('active'))).toBe(0);

    // Neither ran to completion anywhere; the third worker ran nothing.
    const runs = await readRuns(h.admin, h.prefix);
    expect(runs.filter((e) => e.ev === 'done')).toEqual([]);
    expect(runs.filter((e) => e.ev === 'start').map((e) => [e.id, e.attempt, e.pid])).toEqual(
      expect.arrayContaining([
        [fragile.id, 1, a.pid],
        [once.id, 1, a.pid],
        [once.id, 2, b.pid],
      ]),
    );
    expect(runs).toHaveLength(3);
    const [summary] = await stopWorkerProcesses([c]);
    expect(summary).toMatchObject({ started: 0, succeeded: 0, failed: 0, errors: [] });
    reportFigures('maxRecoveries', { tasks: 2, kills: 2, recoveries: 1, workerLostFailures: 2, duplicates: duplicates(runs) });
  });

  it('three live workers recovering the 30 tasks of a killed worker at once run each exactly once', { timeout: 60_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    const ref = d.tasks(FaultService).held;
    // A's lease is 2 s: three worker processes start while it holds its tasks, and on 2 busy
    // cores a 1 s lease leaves little room before a live A would look dead.
    const a = await startWorkerProcess(h, { services: ['fault'], concurrency: 30, lease: '2s' });
    const handles = await Promise.all(range(30).map((n) => ref.delay(n)));
    const ids = handles.map((r) => r.id);
    await startsOf(h, 1, 30, [a]);
    // The others are up (and idle: the queue is empty) before A dies.
    const others = await startWorkerProcesses(h, 3, { services: ['fault'], concurrency: 10, lease: LEASE });
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);

    const killedAt = await redisNowMs(h.admin);
    await killWorkerProcess(a);
    await openGate(h.admin, h.prefix);
    const results = await Promise.all(handles.map((r) => r.get({ timeout: 30_000 })));
    expect(results).toEqual(range(30));

    const runs = await readRuns(h.admin, h.prefix);
    const tasks = byTask(runs);
    const otherPids = new Set(others.map((w) => w.pid));
    const perPid = new Map<number, number>();
    for (const id of ids) {
      const t = tasks.get(id)!;
      expect(t.starts).toHaveLength(2);
      expect(t.starts[0]).toMatchObject({ attempt: 1, pid: a.pid });
      expect(t.starts[1]!.attempt).toBe(2);
      expect(otherPids.has(t.starts[1]!.pid)).toBe(true);
      expect(t.dones).toHaveLength(1);
      expect(t.dones[0]).toMatchObject({ run: t.starts[1]!.run, pid: t.starts[1]!.pid });
      perPid.set(t.dones[0]!.pid, (perPid.get(t.dones[0]!.pid) ?? 0) + 1);
    }
    expect(tasks.size).toBe(30);
    const finals = await Promise.all(handles.map((r) => r.info()));
    expect(finals.map((i) => [i.state, i.attempts])).toEqual(ids.map(() => ['SUCCESS', 2]));
    expect(await lockKeys(h.admin, h.prefix)).toEqual([]);
    expect(await h.admin.zcard(h.queueKey('active'))).toBe(0);

    const summaries = await stopWorkerProcesses(others);
    expect(summaries.reduce((n, s) => n + s.started, 0)).toBe(30);
    expect(summaries.reduce((n, s) => n + s.succeeded, 0)).toBe(30);
    expect(summaries.flatMap((s) => s.errors)).toEqual([]);
    const restarts = runs.filter((e) => e.ev === 'start' && e.attempt === 2).map((e) => e.ms);
    reportFigures('concurrent recovery', {
      tasks: 30,
      kills: 1,
      liveWorkers: 3,
      recoveries: restarts.length,
      losses: finals.filter((i) => i.state !== 'SUCCESS').length,
      duplicates: duplicates(runs),
      split: others.map((w) => perPid.get(w.pid) ?? 0).join('/'),
      msKillToLastRestart: Math.max(...restarts) - killedAt,
    });
  });
});
