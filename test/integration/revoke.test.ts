// Revoke from any process: queued, delayed, waiting to retry, running in another (worker child)
// process with and without terminate, ended tasks, and the unique lock in each case.
import { describe, expect, it } from 'vitest';
import { Task, TaskRevokedError, currentTask } from 'heimdall-tasks';
import { gate, useHarness, waitFor, watchAbort, type Gate, type Harness, recordEvents } from '../helpers.js';
import { logEntry, openControlGate, readChildEvents, readControlLog, redisClockPast, redisMicros } from '../fixtures/control/control.js';
import { ControlService } from '../fixtures/control/services.js';
import { killWorkerProcess, startWorkerProcess } from '../fixtures/worker-processes.js';

class RevokeProbe {
  readonly runs: string[] = [];
  readonly signals: { id: string; reason: string }[] = [];
  readonly gates = new Map<string, Gate>();

  private watch(): AbortSignal {
    return watchAbort(this.signals);
  }

  private hold(label: string): Promise<void> {
    const g = gate();
    this.gates.set(label, g);
    return g.promise;
  }

  @Task({ unique: true })
  async job(label: string): Promise<string> {
    this.runs.push(currentTask().id);
    return label;
  }

  @Task()
  async marker(n: number): Promise<number> {
    this.runs.push(currentTask().id);
    return n;
  }

  @Task()
  async breaks(): Promise<string> {
    throw new Error('broken');
  }

  /** Fails its first attempt and waits an hour to retry. */
  @Task({ unique: true, retries: { max: 3, backoff: '1h', jitter: false } })
  async failsOnce(label: string): Promise<string> {
    this.runs.push(currentTask().id);
    throw new Error(`${label} failed`);
  }

  /** Sees its signal fire and returns a value all the same. */
  @Task({ unique: true })
  async returnsAnyway(label: string): Promise<string> {
    this.runs.push(currentTask().id);
    const signal = this.watch();
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
    return `finished ${label} anyway`;
  }

  /** Honours its signal: throws its reason. */
  @Task({ unique: true })
  async listens(label: string): Promise<string> {
    this.runs.push(currentTask().id);
    const signal = this.watch();
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
    throw signal.reason;
  }

  /** Ignores its signal until its gate opens. */
  @Task({ unique: true })
  async stubborn(label: string): Promise<string> {
    this.runs.push(currentTask().id);
    this.watch();
    await this.hold(label);
    return `stubborn ${label}`;
  }
}

async function setup(h: Harness, extra: { concurrency?: number; leaseDuration?: string } = {}) {
  const probe = new RevokeProbe();
  const worker = h.worker({ services: [probe], concurrency: extra.concurrency ?? 4, ...(extra.leaseDuration ? { leaseDuration: extra.leaseDuration } : {}) });
  const ev = recordEvents(worker);
  await worker.start();
  return { probe, worker, ev };
}

async function expectRevokedError(promise: Promise<unknown>, reason: string): Promise<void> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TaskRevokedError);
  expect((err as TaskRevokedError).reason).toBe(reason);
}

describe('revoke a task that has not started', () => {
  const fresh = useHarness('revoke-queued');

  it('queued: REVOKED at once, lock freed, get() rejects, and no worker ever starts it', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const ref = d.tasks(RevokeProbe).job;
    const handle = await ref.delay('q');
    const lockKey = await h.lockKeyOf(handle.id);
    expect(await h.admin.get(lockKey)).toBe(handle.id);
    // Revoked from a dispatcher that did not send it.
    const other = h.dispatcher();
    expect(await other.result(handle.id).revoke()).toBe('REVOKED');
    expect(await h.admin.exists(lockKey)).toBe(0);
    const info = await handle.info();
    expect({ state: info.state, reason: info.revokeReason, attempts: info.attempts }).toEqual({ state: 'REVOKED', reason: 'revoked', attempts: 0 });
    expect(info.finishedAt).toBeInstanceOf(Date);
    await expectRevokedError(handle.get({ timeout: 5 }), 'revoked');
    // The lock is free: the same call is a new task, not a duplicate.
    const again = await ref.delay('q');
    expect(again.duplicate).toBe(false);
    // The revoked id is still in the wait list, older than `again`: the worker meets it first.
    const { probe, ev } = await setup(h);
    expect(await again.get({ timeout: 10 })).toBe('q');
    expect(probe.runs).toEqual([again.id]);
    expect(ev.started.map((e) => e.id)).toEqual([again.id]);
    expect((await handle.info()).state).toBe('REVOKED');
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
  });

  it('delayed (countdown): REVOKED at once, out of the delayed set, lock freed, never starts when due', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h);
    const d = h.dispatcher();
    const handle = await d.tasks(RevokeProbe).job.applyAsync(['later'], { countdown: '300ms' });
    const lockKey = await h.lockKeyOf(handle.id);
    const due = Number(await h.admin.hget(h.taskKey(handle.id), 'd'));
    expect(await h.admin.zscore(h.queueKey('delayed'), handle.id)).toBe(String(due));
    expect(await handle.revoke()).toBe('REVOKED');
    expect(await h.admin.zscore(h.queueKey('delayed'), handle.id)).toBeNull();
    expect(await h.admin.exists(lockKey)).toBe(0);
    await expectRevokedError(handle.get({ timeout: 5 }), 'revoked');
    // Past its due time, a fetch (for the marker) would have moved it if it were still delayed.
    await redisClockPast(h, due, 'the revoked task to be due');
    const marker = await d.tasks(RevokeProbe).marker.delay(1);
    expect(await marker.get({ timeout: 10 })).toBe(1);
    expect(probe.runs).toEqual([marker.id]);
    expect(ev.started.map((e) => e.id)).toEqual([marker.id]);
    expect((await handle.info()).state).toBe('REVOKED');
  });

  it('waiting to retry: REVOKED at once, no further attempt, lock freed', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h);
    const handle = await h.dispatcher().tasks(RevokeProbe).failsOnce.delay('r');
    await waitFor(() => ev.retried.find((e) => e.id === handle.id), { what: 'the first failure' });
    expect(await handle.status()).toBe('RETRY');
    const lockKey = await h.lockKeyOf(handle.id);
    expect(await h.admin.get(lockKey)).toBe(handle.id);
    expect(await handle.revoke()).toBe('REVOKED');
    expect(await h.admin.zscore(h.queueKey('delayed'), handle.id)).toBeNull();
    expect(await h.admin.exists(lockKey)).toBe(0);
    const info = await handle.info();
    expect({ state: info.state, reason: info.revokeReason, attempts: info.attempts }).toEqual({ state: 'REVOKED', reason: 'revoked', attempts: 1 });
    expect(probe.runs).toEqual([handle.id]);
  });
});

describe('revoke a task running in another process', () => {
  const fresh = useHarness('revoke-remote');

  it('fires its AbortSignal within a second; a task honouring it ends REVOKED and frees its lock', async () => {
    const h = fresh();
    await startWorkerProcess(h, { services: ['control'], concurrency: 1 });
    const d = h.dispatcher();
    const handle = await d.tasks(ControlService).honour.delay('r');
    await logEntry(h, (e) => e.ev === 'start' && e.id === handle.id, 'the task to start in the child');
    const lockKey = await h.lockKeyOf(handle.id);
    expect(await h.admin.get(lockKey)).toBe(handle.id);
    const before = await redisMicros(h);
    expect(await handle.revoke()).toBe('STARTED');
    const aborted = await logEntry(h, (e) => e.ev === 'aborted' && e.id === handle.id, 'the signal to fire in the child');
    const latencyMs = (aborted.us - before) / 1000;
    expect(aborted.reason).toBe('TaskRevokedError');
    expect(aborted.pid).not.toBe(process.pid);
    expect(latencyMs).toBeLessThan(1000);
    await expectRevokedError(handle.get({ timeout: 10 }), 'revoked');
    const info = await handle.info();
    expect({ state: info.state, reason: info.revokeReason, attempts: info.attempts }).toEqual({ state: 'REVOKED', reason: 'revoked', attempts: 1 });
    expect(await h.admin.exists(lockKey)).toBe(0);
    expect(await h.admin.zscore(h.queueKey('active'), handle.id)).toBeNull();
    const events = await waitFor(
      async () => {
        const all = await readChildEvents(h);
        return all.some((e) => e.ev === 'revoked' && e.id === handle.id) ? all : undefined;
      },
      { what: "the child's revoked event" },
    );
    expect(events.filter((e) => e.id === handle.id).map((e) => [e.ev, e.detail])).toEqual([
      ['started', 'attempt 1'],
      ['revoked', 'revoked'],
    ]);
    console.info(`[figures] revoke (no terminate) -> signal in the child process: ${latencyMs.toFixed(1)} ms (Redis clock)`);
  });

  it('terminate on a task ignoring its signal: REVOKED at once, slot freed in the child, lock freed', async () => {
    const h = fresh();
    await startWorkerProcess(h, { services: ['control'], concurrency: 1 });
    const d = h.dispatcher();
    const ref = d.tasks(ControlService);
    const handle = await ref.ignore.delay('t');
    await logEntry(h, (e) => e.ev === 'start' && e.id === handle.id, 'the task to start in the child');
    const lockKey = await h.lockKeyOf(handle.id);
    expect(await h.admin.get(lockKey)).toBe(handle.id);
    const before = await redisMicros(h);
    expect(await handle.revoke({ terminate: true })).toBe('REVOKED');
    // Ended by the revoke call itself, before the worker hears of it.
    expect(await handle.status()).toBe('REVOKED');
    expect(await h.admin.exists(lockKey)).toBe(0);
    expect(await h.admin.zscore(h.queueKey('active'), handle.id)).toBeNull();
    expect((await handle.info()).revokeReason).toBe('revoked');
    await expectRevokedError(handle.get({ timeout: 5 }), 'revoked');
    const aborted = await logEntry(h, (e) => e.ev === 'aborted' && e.id === handle.id, 'the signal to fire in the child');
    expect(aborted.reason).toBe('TaskRevokedError');
    const latencyMs = (aborted.us - before) / 1000;
    expect(latencyMs).toBeLessThan(1000);
    // The child's only slot is free although the ignoring task's promise still runs.
    const next = await ref.quick.delay('after');
    expect(await next.get({ timeout: 10 })).toBe('quick after');
    const log = await readControlLog(h);
    expect(log.some((e) => e.ev === 'done' && e.id === next.id)).toBe(true);
    expect(log.some((e) => e.ev === 'finish' && e.id === handle.id)).toBe(false);
    const events = await readChildEvents(h);
    expect(events.filter((e) => e.id === handle.id).map((e) => [e.ev, e.detail])).toEqual([
      ['started', 'attempt 1'],
      ['revoked', 'revoked'],
    ]);
    // When the ignored promise ends, its result is not stored.
    await openControlGate(h, 't');
    await logEntry(h, (e) => e.ev === 'finish' && e.id === handle.id, 'the ignoring task to return');
    const marker = await ref.quick.delay('marker');
    expect(await marker.get({ timeout: 10 })).toBe('quick marker');
    expect(await handle.status()).toBe('REVOKED');
    expect(await h.admin.hget(h.taskKey(handle.id), 'r')).toBeNull();
    const after = await readChildEvents(h);
    expect(after.filter((e) => e.id === handle.id).map((e) => e.ev)).toEqual(['started', 'revoked']);
    expect(after.filter((e) => e.ev === 'error')).toEqual([]);
    console.info(`[figures] revoke (terminate) -> signal in the child process: ${latencyMs.toFixed(1)} ms (Redis clock)`);
  });

  it('a revoked task whose worker process dies is not run again when its lease is recovered', async () => {
    const h = fresh();
    const child = await startWorkerProcess(h, { services: ['control'], concurrency: 1, lease: '1s' });
    const d = h.dispatcher();
    const handle = await d.tasks(ControlService).ignore.delay('dies');
    await logEntry(h, (e) => e.ev === 'start' && e.id === handle.id, 'the task to start in the child');
    const lockKey = await h.lockKeyOf(handle.id);
    expect(await handle.revoke()).toBe('STARTED');
    await logEntry(h, (e) => e.ev === 'aborted' && e.id === handle.id, 'the signal to fire in the child');
    await killWorkerProcess(child);
    const lease = Number(await h.admin.zscore(h.queueKey('active'), handle.id));
    await redisClockPast(h, lease, 'the lease to lapse');
    // A worker in this process recovers the lapsed lease on its first fetch.
    const worker = h.worker({ services: [new ControlService(h.admin, h.prefix)], concurrency: 1, leaseDuration: '1s' });
    const ev = recordEvents(worker);
    try {
      await worker.start();
      await waitFor(async () => (await h.admin.zscore(h.queueKey('active'), handle.id)) !== String(lease), { what: 'the lease to be recovered' });
      const info = await handle.info();
      expect({ state: info.state, reason: info.revokeReason, attempts: info.attempts }).toEqual({ state: 'REVOKED', reason: 'revoked', attempts: 1 });
      expect(ev.started.map((e) => e.id)).toEqual([]);
      expect((await readControlLog(h)).filter((e) => e.ev === 'start').map((e) => e.attempt)).toEqual([1]);
      expect(await h.admin.exists(lockKey)).toBe(0);
    } finally {
      // If it did run again here, let it end so the worker can close.
      await openControlGate(h, 'dies');
    }
  });
});

describe('revoke a task running in this process', () => {
  const fresh = useHarness('revoke-local');

  it('without terminate, a task that still returns a value ends SUCCESS and frees its lock', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h);
    const handle = await h.dispatcher().tasks(RevokeProbe).returnsAnyway.delay('x');
    await waitFor(() => ev.started.find((e) => e.id === handle.id), { what: 'the task to start' });
    const lockKey = await h.lockKeyOf(handle.id);
    expect(await handle.revoke()).toBe('STARTED');
    expect(await handle.get({ timeout: 10 })).toBe('finished x anyway');
    expect(probe.signals).toEqual([{ id: handle.id, reason: 'TaskRevokedError' }]);
    expect(await h.admin.exists(lockKey)).toBe(0);
    expect(ev.revoked).toEqual([]);
  });

  it('a missed broadcast is caught by the next lease renewal', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h, { leaseDuration: '600ms' });
    const handle = await h.dispatcher().tasks(RevokeProbe).listens.delay('m');
    await waitFor(() => ev.started.find((e) => e.id === handle.id), { what: 'the task to start' });
    const lockKey = await h.lockKeyOf(handle.id);
    // What the revoke script does, without its PUBLISH: as if the message was lost.
    await h.admin.hset(h.taskKey(handle.id), 'rv', 'revoked');
    const revoked = await waitFor(() => ev.revoked.find((e) => e.id === handle.id), { what: 'the revoke to be noticed' });
    expect(revoked.reason).toBe('revoked');
    expect(probe.signals).toEqual([{ id: handle.id, reason: 'TaskRevokedError' }]);
    const info = await handle.info();
    expect([info.state, info.revokeReason]).toEqual(['REVOKED', 'revoked']);
    expect(await h.admin.exists(lockKey)).toBe(0);
  });

  it('a task revoked while running is not handed back to the queue when its worker shuts down', async () => {
    const h = fresh();
    const { probe, worker } = await setup(h);
    const handle = await h.dispatcher().tasks(RevokeProbe).stubborn.delay('s');
    await waitFor(() => probe.gates.has('s'), { what: 'the task to start' });
    const lockKey = await h.lockKeyOf(handle.id);
    expect(await handle.revoke()).toBe('STARTED');
    await waitFor(() => probe.signals.some((s) => s.id === handle.id), { what: 'the signal to fire' });
    await worker.close({ timeout: '200ms' });
    const info = await handle.info();
    expect({ state: info.state, reason: info.revokeReason }).toEqual({ state: 'REVOKED', reason: 'revoked' });
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([]);
    expect(await h.admin.exists(lockKey)).toBe(0);
  });
});

describe('revoke an ended task', () => {
  const fresh = useHarness('revoke-ended');

  it('changes nothing for SUCCESS, FAILURE and REVOKED tasks, and leaves unknown ids alone', async () => {
    const h = fresh();
    const { ev } = await setup(h);
    const d = h.dispatcher();
    const ref = d.tasks(RevokeProbe);
    const ok = await ref.job.delay('done');
    expect(await ok.get({ timeout: 10 })).toBe('done');
    const bad = await ref.breaks.delay();
    await waitFor(() => ev.failed.find((e) => e.id === bad.id), { what: 'the failure' });
    const gone = await ref.job.applyAsync(['gone'], { countdown: '1h' });
    expect(await gone.revoke()).toBe('REVOKED');
    for (const [hd, state] of [
      [ok, 'SUCCESS'],
      [bad, 'FAILURE'],
      [gone, 'REVOKED'],
    ] as const) {
      const before = await h.admin.hgetall(h.taskKey(hd.id));
      const ttl = await h.admin.pttl(h.taskKey(hd.id));
      expect(await hd.revoke()).toBe(state);
      expect(await hd.revoke({ terminate: true })).toBe(state);
      expect(await h.admin.hgetall(h.taskKey(hd.id))).toEqual(before);
      const ttlAfter = await h.admin.pttl(h.taskKey(hd.id));
      expect(ttlAfter).toBeGreaterThan(0);
      expect(ttlAfter).toBeLessThanOrEqual(ttl);
    }
    const unknown = d.result('NoSuchTask0000000000000');
    expect(await unknown.revoke()).toBe('PENDING');
    expect(await unknown.revoke({ terminate: true })).toBe('PENDING');
    expect(await h.admin.exists(h.taskKey('NoSuchTask0000000000000'))).toBe(0);
    expect(ev.revoked).toEqual([]);
  });
});
