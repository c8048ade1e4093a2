// Graceful shutdown: close({ timeout }) hands running tasks back (same id, same lock), close()
// waits for them, and a SIGTERM handler in a worker process loses no task.
import { describe, expect, it } from 'vitest';
import { Task, currentTask } from 'heimdall-tasks';
import { gate, recordEvents, useHarness, waitFor, watchAbort, type Gate } from '../helpers.js';
import { readChildEvents, readControlLog, redisMillis } from '../fixtures/control/control.js';
import { ControlService } from '../fixtures/control/services.js';
import { startWorkerProcess } from '../fixtures/worker-processes.js';

class ShutdownProbe {
  readonly runs: { id: string; attempt: number }[] = [];
  readonly signals: { id: string; reason: string }[] = [];
  readonly gates = new Map<string, Gate>();
  readonly settled: string[] = [];

  /** First attempt: ignores its signal and runs until its gate opens. Later attempts return at once. */
  @Task({ unique: true })
  async stubborn(label: string): Promise<string> {
    const t = currentTask();
    this.runs.push({ id: t.id, attempt: t.attempt });
    if (t.attempt > 1) return `${label} done on attempt ${t.attempt}`;
    watchAbort(this.signals);
    const g = gate();
    this.gates.set(label, g);
    await g.promise;
    this.settled.push(t.id);
    return `${label} late`;
  }

  /** Runs until its gate opens. */
  @Task()
  async gated(label: string): Promise<string> {
    const t = currentTask();
    this.runs.push({ id: t.id, attempt: t.attempt });
    const g = gate();
    this.gates.set(label, g);
    await g.promise;
    return `${label} finished`;
  }

  @Task()
  async quick(n: number): Promise<number> {
    const t = currentTask();
    this.runs.push({ id: t.id, attempt: t.attempt });
    return n;
  }
}

describe('worker.close()', () => {
  const fresh = useHarness('shutdown');

  it('close({ timeout }) hands a task ignoring its signal back: PENDING, same id and lock; a new worker runs it', async () => {
    const h = fresh();
    const probe = new ShutdownProbe();
    const first = h.worker({ services: [probe], concurrency: 1 });
    await first.start();
    const d = h.dispatcher();
    const handle = await d.tasks(ShutdownProbe).stubborn.delay('s');
    await waitFor(() => probe.gates.has('s'), { what: 'the task to start' });
    const lockKey = await h.lockKeyOf(handle.id);
    expect(await h.admin.get(lockKey)).toBe(handle.id);
    const before = await redisMillis(h);
    await first.close({ timeout: '300ms' });
    const after = await redisMillis(h);
    const closeMs = after - before;
    expect(closeMs).toBeGreaterThanOrEqual(300);
    expect(closeMs).toBeLessThan(300 + 3000);
    expect(probe.signals).toEqual([{ id: handle.id, reason: 'WorkerShutdownError' }]);
    expect(probe.settled).toEqual([]);
    // Back at the front of the queue, as it was, with its lock.
    expect(await handle.status()).toBe('PENDING');
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([handle.id]);
    expect(await h.admin.zscore(h.queueKey('active'), handle.id)).toBeNull();
    expect(await h.admin.get(lockKey)).toBe(handle.id);
    expect((await handle.info()).attempts).toBe(1);
    const duplicate = await d.tasks(ShutdownProbe).stubborn.delay('s');
    expect({ id: duplicate.id, duplicate: duplicate.duplicate }).toEqual({ id: handle.id, duplicate: true });
    // A new worker runs the same task to SUCCESS.
    const second = h.worker({ services: [probe], concurrency: 1 });
    const ev = recordEvents(second);
    await second.start();
    expect(await handle.get({ timeout: 10 })).toBe('s done on attempt 2');
    const info = await handle.info();
    expect({ state: info.state, attempts: info.attempts, worker: info.worker }).toEqual({ state: 'SUCCESS', attempts: 2, worker: second.id });
    expect(probe.runs).toEqual([
      { id: handle.id, attempt: 1 },
      { id: handle.id, attempt: 2 },
    ]);
    expect(await h.admin.exists(lockKey)).toBe(0);
    // The first run's late end changes nothing.
    probe.gates.get('s')!.open();
    await waitFor(() => probe.settled.length === 1, { what: 'the abandoned run to end' });
    expect(await d.tasks(ShutdownProbe).quick.delay(5).then((r) => r.get({ timeout: 10 }))).toBe(5);
    expect(await handle.get({ timeout: 5 })).toBe('s done on attempt 2');
    expect(ev.succeeded.filter((e) => e.id === handle.id)).toHaveLength(1);
    console.info(`[figures] close({ timeout: '300ms' }) with a task ignoring its signal resolved after ${closeMs} ms (Redis clock)`);
  });

  it('close() without a timeout waits for a running task, stores its result, and leaves queued tasks queued', async () => {
    const h = fresh();
    const probe = new ShutdownProbe();
    const worker = h.worker({ services: [probe], concurrency: 1 });
    const ev = recordEvents(worker);
    await worker.start();
    const d = h.dispatcher();
    const running = await d.tasks(ShutdownProbe).gated.delay('g');
    await waitFor(() => probe.gates.has('g'), { what: 'the task to start' });
    let closed = false;
    const closing = worker.close().then(() => (closed = true));
    // Once close() has dropped the blocking connection it has stopped fetching and only waits.
    await waitFor(async () => !(await h.openConnections()).some((n) => n.endsWith(':worker:blocking')), {
      what: 'the worker to stop fetching',
    });
    const queued = await d.tasks(ShutdownProbe).quick.delay(1);
    await h.admin.ping();
    expect(closed).toBe(false);
    expect(await running.status()).toBe('STARTED');
    probe.gates.get('g')!.open();
    await closing;
    // Stored before close() resolved.
    expect(await running.status()).toBe('SUCCESS');
    expect(await running.get({ timeout: 1 })).toBe('g finished');
    expect(ev.succeeded.map((e) => e.id)).toEqual([running.id]);
    expect(ev.errors).toEqual([]);
    expect(await queued.status()).toBe('PENDING');
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([queued.id]);
    expect(probe.runs.map((r) => r.id)).toEqual([running.id]);
    expect((await h.openConnections()).filter((n) => n.includes(':worker:'))).toEqual([]);
  });

  it('close({ timeout }) with tasks that end in time stores them and hands nothing back', async () => {
    const h = fresh();
    const probe = new ShutdownProbe();
    const worker = h.worker({ services: [probe], concurrency: 2 });
    const ev = recordEvents(worker);
    await worker.start();
    const d = h.dispatcher();
    const handle = await d.tasks(ShutdownProbe).gated.delay('quickly');
    await waitFor(() => probe.gates.has('quickly'), { what: 'the task to start' });
    const closing = worker.close({ timeout: '20s' });
    probe.gates.get('quickly')!.open();
    await closing;
    expect(await handle.status()).toBe('SUCCESS');
    expect(ev.succeeded.map((e) => e.id)).toEqual([handle.id]);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
  });

  it('a later close({ timeout: 0 }) on a closing worker hands its running task back at once (the same promise every call)', async () => {
    const h = fresh();
    const probe = new ShutdownProbe();
    const worker = h.worker({ services: [probe], concurrency: 1 });
    await worker.start();
    const handle = await h.dispatcher().tasks(ShutdownProbe).gated.delay('g');
    await waitFor(() => probe.gates.has('g'), { what: 'the task to start' });
    const closing = worker.close({ timeout: 600 });
    expect(worker.close({ timeout: 900 })).toBe(closing);
    expect(worker.close({ timeout: 0 })).toBe(closing);
    await closing;
    // Handed back at once, not after 600 s: PENDING at the front of its queue, the gate still shut.
    expect(await handle.status()).toBe('PENDING');
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([handle.id]);
    probe.gates.get('g')!.open();
  });
});

describe('SIGTERM in a worker process', () => {
  const fresh = useHarness('shutdown-sigterm');

  it('process.on("SIGTERM", () => worker.close({ timeout })) loses no task and runs none twice', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const ref = d.tasks(ControlService);
    const childA = await startWorkerProcess(h, { services: ['control'], concurrency: 3, closeTimeout: '300ms' });
    // Two tasks that ignore their signal on their first attempt occupy two of three slots.
    const holds = [await ref.holdOnce.delay('h1'), await ref.holdOnce.delay('h2')];
    const early = await Promise.all(Array.from({ length: 10 }, (_, i) => ref.quick.delay(`early-${i}`)));
    await waitFor(
      async () => {
        const log = await readControlLog(h);
        return log.filter((e) => e.ev === 'hold').length === 2 && log.filter((e) => e.ev === 'done').length >= 3;
      },
      { what: 'both holds and some quick tasks to run in the first process' },
    );
    childA.child.kill('SIGTERM');
    // Sent while the first process shuts down: they wait for the next one.
    const late = await Promise.all(Array.from({ length: 10 }, (_, i) => ref.quick.delay(`late-${i}`)));
    const exitA = await childA.exit;
    expect(exitA.code, exitA.stderr).toBe(0);
    const logA = await readControlLog(h);
    const sigterm = logA.find((e) => e.ev === 'sigterm')!;
    const closedAt = logA.find((e) => e.ev === 'closed')!;
    const closeMs = (closedAt.us - sigterm.us) / 1000;
    expect(closeMs).toBeGreaterThanOrEqual(300);
    // The holds were aborted by the shutdown and are back in the queue with their ids and locks.
    for (const hd of holds) {
      expect(logA.filter((e) => e.ev === 'aborted' && e.id === hd.id).map((e) => e.reason)).toEqual(['WorkerShutdownError']);
      expect(await hd.status()).toBe('PENDING');
      const lk = await h.lockKeyOf(hd.id);
      expect(await h.admin.get(lk)).toBe(hd.id);
    }
    expect(await h.admin.zcard(h.queueKey('active'))).toBe(0);
    const waiting = await h.admin.lrange(h.queueKey('wait'), 0, -1);
    // Handed back to the front (the RPOP end): the holds come out first.
    expect(waiting.slice(-2).sort()).toEqual(holds.map((hd) => hd.id).sort());
    const doneInA = logA.filter((e) => e.ev === 'done').length;

    const childB = await startWorkerProcess(h, { services: ['control'], concurrency: 3 });
    const all = [...holds, ...early, ...late];
    const results = await Promise.all(all.map((hd) => hd.get({ timeout: 30 })));
    expect(results).toEqual([
      'held h1',
      'held h2',
      ...early.map((_, i) => `quick early-${i}`),
      ...late.map((_, i) => `quick late-${i}`),
    ]);
    const log = await readControlLog(h);
    // Each task completed exactly once, across both processes.
    const done = log.filter((e) => e.ev === 'done').map((e) => e.id);
    expect(done.sort()).toEqual(all.map((hd) => hd.id).sort());
    expect(log.filter((e) => e.ev === 'finish')).toEqual([]);
    for (const hd of holds) expect((await hd.info()).attempts).toBe(2);
    expect(log.filter((e) => e.ev === 'done' && e.pid === childA.child.pid).length).toBe(doneInA);
    expect(log.filter((e) => e.ev === 'done' && e.pid === childB.child.pid).length).toBe(all.length - doneInA);
    expect(await h.keys('{default}:lock:*')).toEqual([]);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    expect(await h.admin.zcard(h.queueKey('active'))).toBe(0);
    expect(await h.admin.zcard(h.queueKey('delayed'))).toBe(0);
    const childErrors = (await readChildEvents(h)).filter((e) => e.ev === 'error' || e.ev === 'failed');
    expect(childErrors).toEqual([]);
    childB.child.kill('SIGTERM');
    expect((await childB.exit).code).toBe(0);
    console.info(
      `[figures] SIGTERM with close({ timeout: '300ms' }): ${all.length} tasks, ${doneInA} done in process A, ` +
        `2 handed back, ${all.length - doneInA} done in process B, 0 lost, 0 duplicates; close took ${closeMs.toFixed(0)} ms`,
    );
  });
});
