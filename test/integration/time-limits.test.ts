// Time limits (task option and per call) and `expires`, timed on the Redis clock.
import { describe, expect, it } from 'vitest';
import * as api from 'heimdall-tasks';
import { ConfigError, Task, TaskFailedError, TaskRevokedError, currentTask, type Worker, type WorkerEvents } from 'heimdall-tasks';
import { TimeLimitExceededError } from '../../src/core/errors.js';
import { FIELDS, gate, useHarness, waitFor, type Gate, type Harness, recordEvents, type RecordedEvents } from '../helpers.js';
import { redisClockPast, redisMillis } from '../fixtures/control/control.js';

/** What a task's AbortSignal said when it fired. */
interface SignalSeen {
  id: string;
  name: string;
  limitMs: number | undefined;
  isTimeLimit: boolean;
}

/** Rejects with the signal's reason once it fires. */
function untilAborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener('abort', () => reject(signal.reason), { once: true });
  });
}

class LimitProbe {
  readonly signals: SignalSeen[] = [];
  readonly runs: string[] = [];
  /** Gates of `ignores` runs by label, and whether each run's promise has settled. */
  readonly gates = new Map<string, Gate>();
  readonly settled = new Set<string>();

  private watchSignal(): AbortSignal {
    const t = currentTask();
    t.signal.addEventListener(
      'abort',
      () => {
        const r = t.signal.reason as unknown;
        this.signals.push({
          id: t.id,
          name: r instanceof Error ? r.name : String(r),
          limitMs: r instanceof TimeLimitExceededError ? r.limitMs : undefined,
          isTimeLimit: r instanceof TimeLimitExceededError,
        });
      },
      { once: true },
    );
    return t.signal;
  }

  /** Honours its signal: rejects with the signal's reason as soon as it fires. */
  @Task({ timeLimit: '300ms' })
  async honours(): Promise<string> {
    this.runs.push(currentTask().id);
    return untilAborted(this.watchSignal());
  }

  /** Ignores its signal: runs until the test opens its gate. Unique, to check the lock. */
  @Task({ timeLimit: '250ms', unique: true })
  async ignores(label: string): Promise<string> {
    this.watchSignal();
    this.runs.push(currentTask().id);
    const g = gate();
    this.gates.set(label, g);
    await g.promise;
    this.settled.add(label);
    return `late ${label}`;
  }

  @Task()
  async quick(n: number): Promise<number> {
    this.runs.push(currentTask().id);
    return n;
  }

  /** A long limit of its own; honours the signal. */
  @Task({ timeLimit: '10s' })
  async longLimit(): Promise<string> {
    this.runs.push(currentTask().id);
    return untilAborted(this.watchSignal());
  }

  /** A short limit of its own; runs until its gate opens (honouring the signal if it fires). */
  @Task({ timeLimit: '200ms' })
  async shortLimit(label: string): Promise<string> {
    this.runs.push(currentTask().id);
    const g = gate();
    this.gates.set(label, g);
    await Promise.race([g.promise, untilAborted(this.watchSignal())]);
    return `done ${label}`;
  }

  /** No limit of its own. */
  @Task()
  async noLimit(): Promise<string> {
    this.runs.push(currentTask().id);
    return untilAborted(this.watchSignal());
  }

  /** Times out on its first attempt, succeeds on the retry. */
  @Task({ timeLimit: '150ms', retries: { max: 1, backoff: '20ms', jitter: false } })
  async slowOnce(): Promise<string> {
    const t = currentTask();
    this.runs.push(t.id);
    if (t.attempt === 1) return untilAborted(this.watchSignal());
    return `ok on ${t.attempt}`;
  }

  /** Unique, for expires. */
  @Task({ unique: true })
  async expiring(label: string): Promise<string> {
    this.runs.push(currentTask().id);
    return label;
  }
}

async function setup(h: Harness, concurrency = 4) {
  const probe = new LimitProbe();
  const worker = h.worker({ services: [probe], concurrency });
  const ev = recordEvents(worker);
  await worker.start();
  return { probe, worker, ev };
}

function failedEvent(ev: RecordedEvents, id: string) {
  return waitFor(() => ev.failed.find((e) => e.id === id), { what: `task ${id} to fail` });
}

/** Milliseconds from the start (st) to the end (f) of a task, on the Redis clock. */
async function runMillis(h: Harness, id: string): Promise<number> {
  const [st, f] = await h.admin.hmget(h.taskKey(id), FIELDS.startedAt, FIELDS.finishedAt);
  return Number(f) - Number(st);
}

describe('time limits', () => {
  const fresh = useHarness('time-limit');

  it('a task honouring its signal ends FAILURE with TimeLimitExceededError soon after the limit', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h);
    const handle = await h.dispatcher().tasks(LimitProbe).honours.delay();
    const failed = await failedEvent(ev, handle.id);
    expect(failed.error.name).toBe('TimeLimitExceededError');
    expect(failed.error.message).toBe(`task ${handle.id} ran past its time limit of 300 ms`);
    expect(probe.signals).toEqual([{ id: handle.id, name: 'TimeLimitExceededError', limitMs: 300, isTimeLimit: true }]);
    const info = await handle.info();
    expect(info.state).toBe('FAILURE');
    expect(info.attempts).toBe(1);
    const ran = await runMillis(h, handle.id);
    expect(ran).toBeGreaterThanOrEqual(300);
    expect(ran).toBeLessThan(300 + 2000);
    // It settled on the signal: no report of a promise left running.
    expect(ev.errors.map((e) => e.message)).toEqual([]);
    const err = await handle.get({ timeout: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaskFailedError);
    expect((err as TaskFailedError).remoteName).toBe('TimeLimitExceededError');
    console.info(`[figures] honouring task, limit 300 ms: start to FAILURE ${ran} ms (Redis clock)`);
  });

  it('a task ignoring its signal: FAILURE at limit + grace, slot and lock freed, promise reported still running', async () => {
    const h = fresh();
    const { probe, ev, worker } = await setup(h, 1);
    const d = h.dispatcher();
    const ref = d.tasks(LimitProbe);
    const stuck = await ref.ignores.delay('a');
    const lockKey = await h.recordLock(stuck.id);
    expect(await h.admin.get(lockKey!)).toBe(stuck.id);
    const next = await ref.quick.delay(7);
    const failed = await failedEvent(ev, stuck.id);
    expect(failed.error.name).toBe('TimeLimitExceededError');
    // The second task runs on the single slot while the first promise still runs.
    expect(await next.get({ timeout: 10 })).toBe(7);
    expect(probe.settled.has('a')).toBe(false);
    expect(probe.gates.has('a')).toBe(true);
    const started = ev.started.map((e) => e.id);
    expect(started).toEqual([stuck.id, next.id]);
    expect(worker.activeCount).toBe(0);
    const report = ev.errors.find((e) => e.message.includes(stuck.id));
    expect(report?.message).toBe(
      `task ${stuck.id} (LimitProbe.ignores) ignored the AbortSignal at its time limit; its promise is still running (pass currentTask().signal to what the task awaits)`,
    );
    const info = await stuck.info();
    expect(info.state).toBe('FAILURE');
    expect(info.error?.name).toBe('TimeLimitExceededError');
    const ran = await runMillis(h, stuck.id);
    expect(ran).toBeGreaterThanOrEqual(250 + 100);
    expect(await h.admin.exists(lockKey!)).toBe(0);
    expect(await ref.ignores.current('a')).toBeNull();
    // When the abandoned promise finally settles, nothing changes.
    probe.gates.get('a')!.open();
    await waitFor(() => probe.settled.has('a'), { what: 'the abandoned promise to settle' });
    expect(await ref.quick.delay(8).then((r) => r.get({ timeout: 10 }))).toBe(8);
    expect(ev.succeeded.map((e) => e.id)).not.toContain(stuck.id);
    expect((await stuck.info()).state).toBe('FAILURE');
    expect(await h.admin.hget(h.taskKey(stuck.id), 'r')).toBeNull();
    console.info(`[figures] ignoring task, limit 250 ms + 100 ms grace: start to FAILURE ${ran} ms (Redis clock)`);
  });

  it('a per-call timeLimit overrides the task option, both shorter and longer', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h);
    const ref = h.dispatcher().tasks(LimitProbe);
    const shorter = await ref.longLimit.applyAsync([], { timeLimit: '200ms' });
    expect(await h.admin.hget(h.taskKey(shorter.id), 'tl')).toBe('200');
    const failed = await failedEvent(ev, shorter.id);
    expect(failed.error.message).toBe(`task ${shorter.id} ran past its time limit of 200 ms`);
    const shorterRan = await runMillis(h, shorter.id);
    expect(shorterRan).toBeGreaterThanOrEqual(200);
    expect(shorterRan).toBeLessThan(200 + 2000);

    const none = await ref.noLimit.applyAsync([], { timeLimit: '150ms' });
    expect((await failedEvent(ev, none.id)).error.message).toBe(`task ${none.id} ran past its time limit of 150 ms`);
    const noneRan = await runMillis(h, none.id);
    expect(noneRan).toBeGreaterThanOrEqual(150);
    expect(noneRan).toBeLessThan(150 + 2000);

    const longer = await ref.shortLimit.applyAsync(['b'], { timeLimit: '20s' });
    expect(await h.admin.hget(h.taskKey(longer.id), 'tl')).toBe('20000');
    await waitFor(() => ev.started.find((e) => e.id === longer.id), { what: 'the longer task to start' });
    const st = Number(await h.admin.hget(h.taskKey(longer.id), 'st'));
    // Well past the task's own 200 ms (and the grace) on the Redis clock: still running.
    await redisClockPast(h, st + 200 + 100 + 300, 'the task option limit to pass');
    expect(await longer.status()).toBe('STARTED');
    expect(probe.signals.map((s) => s.id)).not.toContain(longer.id);
    probe.gates.get('b')!.open();
    expect(await longer.get({ timeout: 10 })).toBe('done b');
    expect(await runMillis(h, longer.id)).toBeGreaterThanOrEqual(600);
  });

  it('the time limit applies to each attempt; a timed-out attempt is retried per the task policy', async () => {
    const h = fresh();
    const { ev } = await setup(h);
    const handle = await h.dispatcher().tasks(LimitProbe).slowOnce.delay();
    expect(await handle.get({ timeout: 10 })).toBe('ok on 2');
    const retried = ev.retried.filter((e) => e.id === handle.id);
    expect(retried.map((e) => [e.attempt, e.error.name, e.delayMs])).toEqual([[1, 'TimeLimitExceededError', 20]]);
    expect((await handle.info()).attempts).toBe(2);
  });

  it('a run handed back at close({ timeout }) does not later report a time-limit error', async () => {
    const h = fresh();
    const { probe, ev, worker } = await setup(h, 1);
    const handle = await h.dispatcher().tasks(LimitProbe).ignores.delay('c');
    await waitFor(() => probe.gates.has('c'), { what: 'the task to start' });
    const st = Number(await h.admin.hget(h.taskKey(handle.id), 'st'));
    await worker.close({ timeout: '50ms' });
    expect(await handle.status()).toBe('PENDING');
    // Past its time limit and grace: the closed worker has nothing to say about a task it handed back.
    await redisClockPast(h, st + 250 + 100 + 300, 'the time limit and grace to pass');
    expect(ev.errors.map((e) => e.message)).toEqual([]);
    expect(probe.signals.map((s) => s.name)).toEqual(['WorkerShutdownError']);
  });

  it('bad time limits are refused with ConfigError', async () => {
    const h = fresh();
    const ref = h.dispatcher().tasks(LimitProbe).quick;
    await expect(ref.applyAsync([1], { timeLimit: 0 })).rejects.toThrow(ConfigError);
    await expect(ref.applyAsync([1], { timeLimit: 'soon' })).rejects.toThrow(/timeLimit must be a positive number of seconds/);
    expect(() => {
      class BadLimit {
        @Task({ timeLimit: '-1s' })
        async m(): Promise<void> {}
      }
      void BadLimit;
    }).toThrow(/timeLimit must be a positive number of seconds/);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
  });

  it('TimeLimitExceededError is part of the public API', () => {
    expect(Object.keys(api)).toContain('TimeLimitExceededError');
    expect((api as Record<string, unknown>).TimeLimitExceededError).toBe(TimeLimitExceededError);
  });
});

describe('expires', () => {
  const fresh = useHarness('expires');

  it('a task not started by its expiry is REVOKED "expired", never runs, and frees its lock', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const ref = d.tasks(LimitProbe).expiring;
    // No worker yet: the tasks wait in the queue past their expiry.
    const byDuration = await ref.applyAsync(['dur'], { expires: '200ms' });
    const byDate = await ref.applyAsync(['date'], { expires: new Date(Date.now() + 200) });
    const kept = await ref.applyAsync(['kept'], { expires: '1h' });
    const exDur = Number(await h.admin.hget(h.taskKey(byDuration.id), 'ex'));
    const exDate = Number(await h.admin.hget(h.taskKey(byDate.id), 'ex'));
    const lockKey = (await h.recordLock(byDuration.id))!;
    expect(await h.admin.get(lockKey)).toBe(byDuration.id);
    await redisClockPast(h, Math.max(exDur, exDate), 'the expiry to pass');
    const { probe, ev } = await setup(h);
    expect(await kept.get({ timeout: 10 })).toBe('kept');
    await waitFor(() => ev.revoked.length >= 2, { what: 'two revoked events' });
    expect(ev.revoked.map((e) => [e.id, e.reason]).sort()).toEqual(
      [
        [byDuration.id, 'expired'],
        [byDate.id, 'expired'],
      ].sort(),
    );
    for (const hd of [byDuration, byDate]) {
      const info = await hd.info();
      expect({ state: info.state, reason: info.revokeReason, attempts: info.attempts, started: info.startedAt }).toEqual({
        state: 'REVOKED',
        reason: 'expired',
        attempts: 0,
        started: undefined,
      });
      expect(info.finishedAt!.getTime()).toBeGreaterThan(Number(await h.admin.hget(h.taskKey(hd.id), 'ex')));
      const err = await hd.get({ timeout: 5 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TaskRevokedError);
      expect((err as TaskRevokedError).reason).toBe('expired');
    }
    expect(probe.runs).toEqual([kept.id]);
    expect(ev.started.map((e) => e.id)).toEqual([kept.id]);
    expect(await h.admin.exists(lockKey)).toBe(0);
    expect(await ref.current('dur')).toBeNull();
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
  });

  it('a delayed task due after its expiry is REVOKED "expired" when due, without running', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h);
    const handle = await h.dispatcher().tasks(LimitProbe).expiring.applyAsync(['late'], { countdown: '300ms', expires: '100ms' });
    const due = Number(await h.admin.hget(h.taskKey(handle.id), 'd'));
    const revoked = await waitFor(() => ev.revoked.find((e) => e.id === handle.id), { what: 'the expired revoke' });
    expect(revoked).toEqual({ id: handle.id, name: 'LimitProbe.expiring', queue: 'default', args: ['late'], reason: 'expired' });
    const info = await handle.info();
    expect(info.state).toBe('REVOKED');
    expect(info.revokeReason).toBe('expired');
    expect(info.finishedAt!.getTime()).toBeGreaterThanOrEqual(due);
    expect(probe.runs).toEqual([]);
    expect(ev.started).toEqual([]);
  });

  it('a task started before its expiry runs normally', async () => {
    const h = fresh();
    const { ev } = await setup(h);
    const handle = await h.dispatcher().tasks(LimitProbe).expiring.applyAsync(['soon'], { expires: '30s' });
    expect(await handle.get({ timeout: 10 })).toBe('soon');
    expect(ev.revoked).toEqual([]);
    const started = Number(await h.admin.hget(h.taskKey(handle.id), 'st'));
    expect(started).toBeLessThan(Number(await h.admin.hget(h.taskKey(handle.id), 'ex')));
    expect(await redisMillis(h)).toBeGreaterThanOrEqual(started);
  });

  it('bad expires values are refused with ConfigError', async () => {
    const h = fresh();
    const ref = h.dispatcher().tasks(LimitProbe).quick;
    await expect(ref.applyAsync([1], { expires: 'soon' })).rejects.toThrow(/expires must be a positive number of seconds/);
    await expect(ref.applyAsync([1], { expires: 0 })).rejects.toThrow(ConfigError);
    await expect(ref.applyAsync([1], { expires: -5 })).rejects.toThrow(ConfigError);
    await expect(ref.applyAsync([1], { expires: new Date(Number.NaN) })).rejects.toThrow(ConfigError);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
  });
});
