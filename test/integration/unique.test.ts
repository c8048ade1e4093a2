/**
 * Unique locks (DESIGN.md section 2): taken with the enqueue, released by the owner at the
 * end unless uniqueWaitForExpiry, never taken for arguments that fail to serialize, and
 * checked again when the task starts.
 */
import { describe, expect, it } from 'vitest';
import { currentTask, SerializationError, Task } from 'heimdall-tasks';
import { gate, nextEvent, recordEvents, useHarness, waitFor } from '../helpers.js';

class UniqueLifecycle {
  /** Ids of the task runs, in order, as each saw itself. */
  readonly ran: string[] = [];
  readonly gate = gate();

  @Task({ unique: true })
  async succeed(n: number): Promise<number> {
    this.ran.push(currentTask().id);
    return n * 2;
  }

  @Task({ unique: true })
  async fail(n: number): Promise<number> {
    this.ran.push(currentTask().id);
    throw new Error(`no report for ${n}`);
  }

  @Task({ unique: true, uniqueTimeout: 60, uniqueWaitForExpiry: true })
  async oncePerMinute(n: number): Promise<number> {
    this.ran.push(currentTask().id);
    return n;
  }

  @Task({ unique: true })
  async gated(n: number): Promise<number> {
    this.ran.push(currentTask().id);
    await this.gate.promise;
    return n;
  }

  @Task({ unique: true })
  async plan(options: { when: Date | string; customer: number }): Promise<string> {
    return String(options.when);
  }
}

class UniqueLapsing {
  readonly ran: string[] = [];
  readonly gate = gate();
  /** What the lock key held while each run was running. */
  readonly lockSeen: (string | null)[] = [];

  // Long enough that a newer holder's lock is still alive when the worker starts.
  @Task({ unique: true, uniqueTimeout: '1s' })
  async report(n: number): Promise<number> {
    this.ran.push(currentTask().id);
    return n;
  }

  @Task({ unique: true, uniqueTimeout: '600ms' })
  async slowReport(n: number): Promise<number> {
    this.ran.push(currentTask().id);
    await this.gate.promise;
    return n;
  }
}

describe('unique locks', () => {
  const fresh = useHarness('unique');

  it('is released when the task succeeds: the next delay is a new task', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(UniqueLifecycle);
    const service = new UniqueLifecycle();
    const worker = h.worker({ services: [service] });
    await worker.start();

    const first = await tasks.succeed.delay(21);
    expect(first.duplicate).toBe(false);
    const lock = await h.lockKeyOf(first.id);
    expect(lock.startsWith(h.queueKeys().lock('UniqueLifecycle.succeed', ''))).toBe(true);
    expect(await first.get({ timeout: 10 })).toBe(42);
    // Released in the same script that stored SUCCESS, so it is gone the moment get() resolves.
    expect(await h.admin.exists(lock)).toBe(0);
    expect(await tasks.succeed.current(21)).toBeNull();

    const second = await tasks.succeed.delay(21);
    expect(second.duplicate).toBe(false);
    expect(second.id).not.toBe(first.id);
    expect(await h.admin.get(lock)).toBe(second.id);
    expect(await second.get({ timeout: 10 })).toBe(42);
    expect(service.ran).toEqual([first.id, second.id]);
  });

  it('is released when the task fails: the next delay is a new task', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(UniqueLifecycle);
    const service = new UniqueLifecycle();
    const worker = h.worker({ services: [service] });
    await worker.start();

    const first = await tasks.fail.delay(1);
    const lock = await h.lockKeyOf(first.id);
    await expect(first.get({ timeout: 10 })).rejects.toMatchObject({ code: 'HEIMDALL_TASK_FAILED', remoteMessage: 'no report for 1' });
    expect(await first.status()).toBe('FAILURE');
    expect(await h.admin.exists(lock)).toBe(0);

    const second = await tasks.fail.delay(1);
    expect(second.duplicate).toBe(false);
    expect(second.id).not.toBe(first.id);
    await expect(second.get({ timeout: 10 })).rejects.toMatchObject({ code: 'HEIMDALL_TASK_FAILED' });
    expect(service.ran).toEqual([first.id, second.id]);
  });

  it('is kept after the end with uniqueWaitForExpiry', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(UniqueLifecycle);
    const service = new UniqueLifecycle();
    const worker = h.worker({ services: [service] });
    await worker.start();

    const first = await tasks.oncePerMinute.delay(5);
    const lock = await h.lockKeyOf(first.id);
    expect(await first.get({ timeout: 10 })).toBe(5);
    expect(await h.admin.get(lock)).toBe(first.id);
    const pttl = await h.admin.pttl(lock);
    expect(pttl).toBeGreaterThan(50_000);
    expect(pttl).toBeLessThanOrEqual(60_000);

    const again = await tasks.oncePerMinute.delay(5);
    expect(again.duplicate).toBe(true);
    expect(again.id).toBe(first.id);
    expect((await tasks.oncePerMinute.current(5))?.id).toBe(first.id);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    expect(service.ran).toEqual([first.id]);
  });

  it('current(...args) gives the holder while queued and running, and null after', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(UniqueLifecycle);
    expect(await tasks.gated.current(8)).toBeNull();

    const held = await tasks.gated.delay(8);
    const queued = await tasks.gated.current(8);
    expect(queued?.id).toBe(held.id);
    expect(queued?.name).toBe('UniqueLifecycle.gated');
    expect(queued?.duplicate).toBe(false);
    expect(await queued?.status()).toBe('PENDING');
    // Other arguments have no holder.
    expect(await tasks.gated.current(9)).toBeNull();

    const service = new UniqueLifecycle();
    const worker = h.worker({ services: [service] });
    const started = nextEvent(worker, 'started', (e) => e.id === held.id);
    await worker.start();
    await started;
    const running = await tasks.gated.current(8);
    expect(running?.id).toBe(held.id);
    expect(await running?.status()).toBe('STARTED');

    service.gate.open();
    expect(await held.get({ timeout: 10 })).toBe(8);
    expect(await tasks.gated.current(8)).toBeNull();
  });

  it('takes no lock and enqueues nothing when the arguments fail to serialize', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(UniqueLifecycle);
    const err = await tasks.plan.delay({ when: new Date(), customer: 4 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SerializationError);
    expect((err as SerializationError).path).toBe('args[0].when');
    expect((err as SerializationError).code).toBe('HEIMDALL_SERIALIZATION');
    expect(await h.keys()).toEqual([]);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    expect(await tasks.plan.current({ when: '2030-01-01', customer: 4 })).toBeNull();

    // The same call with a storable value goes through and takes the lock.
    const ok = await tasks.plan.delay({ when: '2030-01-01', customer: 4 });
    expect(ok.duplicate).toBe(false);
    expect(await h.admin.get(await h.lockKeyOf(ok.id))).toBe(ok.id);
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([ok.id]);
  });

  it('a task whose lock lapsed in the queue and was taken by a newer task ends REVOKED (duplicate) and never runs', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(UniqueLapsing);
    // No worker yet: the first task waits in the queue while its 1 s lock lapses.
    const old = await tasks.report.delay(1);
    const lock = await h.lockKeyOf(old.id);
    await waitFor(async () => (await h.admin.exists(lock)) === 0, { timeout: 5_000, what: "the old task's lock to lapse" });
    const newer = await tasks.report.delay(1);
    expect(newer.duplicate).toBe(false);
    expect(newer.id).not.toBe(old.id);
    expect(await h.admin.get(lock)).toBe(newer.id);
    // Both wait in the queue, the old one first.
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([newer.id, old.id]);

    const service = new UniqueLapsing();
    const worker = h.worker({ services: [service] });
    const { revoked, started } = recordEvents(worker);
    const done = nextEvent(worker, 'succeeded', (e) => e.id === newer.id);
    await worker.start();
    await done;

    expect(service.ran).toEqual([newer.id]);
    expect(started.map((e) => e.id)).toEqual([newer.id]);
    expect(revoked).toEqual([{ id: old.id, name: 'UniqueLapsing.report', queue: 'default', args: [1], reason: 'duplicate' }]);
    const info = await old.info();
    expect(info.state).toBe('REVOKED');
    expect(info.revokeReason).toBe('duplicate');
    expect(info.attempts).toBe(0);
    expect(info.startedAt).toBeUndefined();
    await expect(old.get({ timeout: 5 })).rejects.toMatchObject({ code: 'HEIMDALL_TASK_REVOKED', reason: 'duplicate' });
    expect(await newer.get({ timeout: 5 })).toBe(1);
    // The revoked task did not release the newer task's lock; the newer one released its own.
    expect(await h.admin.exists(lock)).toBe(0);
  });

  it('a task whose own lock lapsed with nobody taking it re-takes the lock when it starts', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(UniqueLapsing);
    const handle = await tasks.slowReport.delay(2);
    const lock = await h.lockKeyOf(handle.id);
    await waitFor(async () => (await h.admin.exists(lock)) === 0, { timeout: 5_000, what: 'the 600 ms lock to lapse' });

    const service = new UniqueLapsing();
    const worker = h.worker({ services: [service] });
    const started = nextEvent(worker, 'started', (e) => e.id === handle.id);
    await worker.start();
    await started;
    // Re-taken by the start script with the task's own id and timeout.
    expect(await h.admin.get(lock)).toBe(handle.id);
    const pttl = await h.admin.pttl(lock);
    expect(pttl).toBeGreaterThan(0);
    expect(pttl).toBeLessThanOrEqual(600);
    expect(await handle.status()).toBe('STARTED');

    service.gate.open();
    expect(await handle.get({ timeout: 10 })).toBe(2);
    expect(service.ran).toEqual([handle.id]);
    expect(await h.admin.exists(lock)).toBe(0);
  });
});
