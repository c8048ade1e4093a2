// Every start of a task gets a token: the lease, its renewals, the finish and revoke signals
// carry it, so the end or renewal of a run that is no longer the task's current run is refused
// and reported as such, never emitted as `succeeded`.
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Task, currentTask, type TaskResult } from 'heimdall-tasks';
import { gate, recordEvents, reportFigures, useHarness, waitFor } from '../helpers.js';
import { openGate, readRuns } from '../fixtures/faults/control.js';
import { FaultService } from '../fixtures/faults/services.js';
import { StallProxy } from '../fixtures/faults/stall-proxy.js';
import { startWorkerProcess, stopWorkerProcesses } from '../fixtures/worker-processes.js';

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** What one run of a StallService task did. */
interface Run {
  run: string;
  aborted: string | undefined;
}

class StallService {
  /** task id -> its runs in start order. */
  readonly runs = new Map<string, Run[]>();

  /** Works for `ms` milliseconds and returns its run id. */
  @Task()
  async work(n: number, ms: number): Promise<string> {
    const { id, signal } = currentTask();
    const run: Run = { run: randomUUID(), aborted: undefined };
    this.runs.set(id, [...(this.runs.get(id) ?? []), run]);
    signal.addEventListener('abort', () => (run.aborted = (signal.reason as Error).name), { once: true });
    await new Promise((r) => setTimeout(r, ms));
    return `${n}:${run.run}`;
  }
}

class HeldService {
  readonly gate = gate();
  readonly aborted: string[] = [];

  @Task()
  async held(): Promise<string> {
    const { id, signal } = currentTask();
    signal.addEventListener('abort', () => this.aborted.push(id));
    await this.gate.promise;
    return 'done';
  }
}

describe('a token per run', () => {
  const fresh = useHarness('token');

  it('a worker stopped past its lease: its late ends are refused and reported, none is emitted as succeeded', { timeout: 90_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    // A long lease, so A's renewal timer is not due when it wakes: its finishes reach Redis first.
    const a = await startWorkerProcess(h, { services: ['fault'], concurrency: 20, lease: '30s' });
    const handles = await Promise.all(range(20).map((n) => d.tasks(FaultService).fragile.delay(n)));
    await waitFor(async () => (await readRuns(h.admin, h.prefix)).filter((e) => e.ev === 'start').length === 20, {
      timeout: 20_000,
      what: '20 tasks to start on worker A',
    });
    a.child.kill('SIGSTOP');
    try {
      // A stays stopped past its leases: played by moving their expiry into the past.
      const active = h.queueKey('active');
      for (const r of handles) await h.admin.zadd(active, 'XX', 1, r.id);
      // B recovers the lapsed leases: maxRecoveries 0, so each ends FAILURE WorkerLostError.
      const b = await startWorkerProcess(h, { services: ['fault'], concurrency: 20, lease: '1s' });
      await waitFor(async () => (await Promise.all(handles.map((r) => r.status()))).every((s) => s === 'FAILURE'), {
        timeout: 30_000,
        what: 'the 20 tasks of the stopped worker to end FAILURE',
      });
      await openGate(h.admin, h.prefix);
      await stopWorkerProcesses([b]);
    } finally {
      a.child.kill('SIGCONT');
    }
    // A wakes, its tasks pass the open gate and end: every end must be refused.
    await waitFor(async () => (await readRuns(h.admin, h.prefix)).filter((e) => e.ev === 'done').length === 20, {
      timeout: 20_000,
      what: 'the 20 runs on A to complete after SIGCONT',
    });
    // close() waits until every end has had its answer from Redis.
    const [summary] = await stopWorkerProcesses([a]);
    expect(summary!.succeeded).toBe(0);
    expect(summary!.failed).toBe(0);
    for (const r of handles) {
      const info = await r.info();
      expect(info.state).toBe('FAILURE');
      expect(info.error?.name).toBe('WorkerLostError');
      const reports = summary!.errors.filter((e) => e.includes(r.id));
      expect(reports.length, `reports of ${r.id}: ${reports.join(' | ')}`).toBeGreaterThanOrEqual(1);
      for (const report of reports) expect(report).toMatch(/no longer (its|the task's) current run|not stored/);
    }
  });

  it('a worker whose connection stalls past its lease: only the current run of each task is stored, and no run is told a false reason', { timeout: 90_000 }, async () => {
    const h = fresh();
    const port = Number(new URL(h.url).port);
    const proxy = await StallProxy.create(port);
    try {
      const service = new StallService();
      const w = h.worker({ connection: proxy.url, services: [service], concurrency: 8, leaseDuration: 3 });
      const ev = recordEvents(w);
      await w.start();
      const d = h.dispatcher();
      const handles: TaskResult<string>[] = await Promise.all(range(48).map((n) => d.tasks(StallService).work.delay(n, 700)));
      await waitFor(() => service.runs.size >= 8, { what: '8 tasks to start' });
      proxy.stall();
      // The fault: 5 s of held bytes, longer than the 3-s lease.
      await new Promise((r) => setTimeout(r, 5000));
      proxy.resume();
      const results = await Promise.all(handles.map((r) => r.get({ timeout: 60 })));

      let twice = 0;
      for (const [i, r] of handles.entries()) {
        const runs = service.runs.get(r.id)!;
        if (runs.length > 1) twice++;
        const stored = results[i]!.split(':')[1];
        // The stored end is the last run's: no older run's end overwrote a newer run.
        expect(stored, `task ${i} ran ${runs.length} time(s)`).toBe(runs[runs.length - 1]!.run);
        // The run whose end is stored was never told it had lost its lease.
        expect(runs[runs.length - 1]!.aborted).toBeUndefined();
      }
      // Every task's stored end is announced once, as `succeeded`, with the stored result (the
      // event follows the reply of the finish, which may come after get() saw the result).
      await waitFor(() => ev.succeeded.length >= 48, { what: '48 succeeded events' });
      const storedById = new Map(handles.map((r, i) => [r.id, results[i]]));
      for (const s of ev.succeeded) expect(s.result).toBe(storedById.get(s.id));
      expect(ev.succeeded.map((e) => e.id).sort()).toEqual(handles.map((r) => r.id).sort());
      reportFigures('stalled connection', { tasks: 48, ranTwice: twice, errors: ev.errors.length });
      await w.close();
    } finally {
      await proxy.close();
    }
  });

  it('a revoke message that names an older run does not touch the current run', async () => {
    const h = fresh();
    const service = new HeldService();
    const w = h.worker({ services: [service], concurrency: 2 });
    const ev = recordEvents(w);
    await w.start();
    const d = h.dispatcher();
    const [r, fence] = [await d.tasks(HeldService).held.delay(), await d.tasks(HeldService).held.delay()];
    await waitFor(() => ev.started.length === 2, { what: 'both tasks to start' });
    const token = await h.admin.hget(h.taskKey(r.id), 'tk');
    expect(token, 'the running task records its run token').toBeTypeOf('string');
    await h.admin.spublish(h.queueKey('revoke'), `${r.id} not-${token} 0`);
    await h.admin.spublish(h.queueKey('revoke'), `${r.id} not-${token} 1`);
    // Messages on one channel arrive in order: once the fence's revoke has fired its signal, the
    // stale ones before it have been handled.
    expect(await fence.revoke()).toBe('STARTED');
    await waitFor(() => service.aborted.includes(fence.id), { what: "the fence's revoke to fire its signal" });
    expect(service.aborted).toEqual([fence.id]);
    expect(ev.revoked).toEqual([]);
    service.gate.open();
    await expect(r.get({ timeout: 10 })).resolves.toBe('done');
  });
});
