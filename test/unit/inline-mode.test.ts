// createTestApp({ inline: true }): Celery's task_always_eager. These run in the unit project,
// where no Redis is started: an inline app must never need one. test/integration/inline-parity
// runs the same scenarios with Redis and inline and compares what they report.
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  AlreadyQueuedError,
  ConfigError,
  currentTask,
  NotATaskError,
  PayloadTooLargeError,
  SerializationError,
  Task,
  TaskFailedError,
  TaskRevokedError,
  TimeoutError,
} from 'heimdall-tasks';
import { createTestApp, type InlineTestApp, type TestAppOptions } from 'heimdall-tasks/testing';

interface Gate {
  promise: Promise<void>;
  open(): void;
}
function gate(): Gate {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

const seen: { id: string; name: string; attempt: number; queue: string }[] = [];
const starts: number[] = [];
const attempts = new Map<string, number>();
let held = gate();

class InlineReports {
  constructor(private readonly pages = 2) {}

  @Task()
  async build(id: number, when: string): Promise<{ id: number; pages: number; when: string }> {
    const t = currentTask();
    seen.push({ id: t.id, name: t.name, attempt: t.attempt, queue: t.queue });
    return { id, pages: this.pages, when };
  }

  @Task({ unique: true, uniqueTimeout: '1h' })
  async exclusive(label: string): Promise<string> {
    await held.promise;
    return `done ${label}`;
  }

  @Task({ unique: true, uniqueRaises: true })
  async strict(label: string): Promise<string> {
    await held.promise;
    return label;
  }

  @Task({ unique: true, uniqueTimeout: '150ms', uniqueWaitForExpiry: true })
  async oncePerWindow(): Promise<number> {
    return Date.now();
  }

  @Task({ unique: true, uniqueTimeout: '300ms' })
  async shortLock(label: string): Promise<string> {
    await held.promise;
    return label;
  }

  @Task({ rateLimit: [2, '300ms'] })
  async limited(n: number): Promise<number> {
    starts.push(Date.now());
    return n;
  }

  @Task()
  async refresh(key: string): Promise<boolean> {
    return currentTask().onlyAfter(key, '1h');
  }

  @Task({ unique: true, uniqueTimeout: '1s' })
  async stretch(_label: string): Promise<boolean> {
    return currentTask().extendLock('1h');
  }

  @Task({ retries: { max: 2, backoff: '20ms', jitter: false } })
  async flaky(key: string, failures: number): Promise<string> {
    const n = (attempts.get(key) ?? 0) + 1;
    attempts.set(key, n);
    if (n <= failures) throw new RangeError(`failure ${n}`);
    return `ok after ${n}`;
  }

  @Task()
  async askRetry(key: string): Promise<string> {
    const n = (attempts.get(key) ?? 0) + 1;
    attempts.set(key, n);
    if (n === 1) return currentTask().retry({ countdown: '10ms' });
    return `retried ${currentTask().attempt}`;
  }

  @Task()
  async waitForAbort(): Promise<string> {
    const signal = currentTask().signal;
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    throw signal.reason as Error;
  }

  @Task()
  async ignoreAbort(): Promise<string> {
    await held.promise;
    return 'finished anyway';
  }

  @Task({ timeLimit: '50ms' })
  async slow(): Promise<string> {
    await new Promise<void>((resolve) => currentTask().signal.addEventListener('abort', () => resolve(), { once: true }));
    throw currentTask().signal.reason as Error;
  }

  @Task()
  async hostile(): Promise<never> {
    // A thrown value whose every property access throws.
    throw new Proxy(
      {},
      {
        get() {
          throw new Error('trap');
        },
        getPrototypeOf() {
          throw new Error('trap');
        },
      },
    );
  }

  @Task()
  async dated(): Promise<Date> {
    return new Date(0);
  }

  @Task()
  async bigResult(): Promise<string> {
    return 'x'.repeat(2048);
  }

  notATask(): string {
    return 'plain';
  }
}

class NotServed {
  @Task()
  async ping(): Promise<string> {
    return 'pong';
  }
}

const apps: InlineTestApp[] = [];
function inlineApp(options: Partial<TestAppOptions> = {}): Promise<InlineTestApp> {
  return createTestApp({ services: [new InlineReports()], ...options, inline: true }).then((a) => {
    apps.push(a);
    return a;
  });
}

afterEach(async () => {
  held.open();
  await Promise.all(apps.splice(0).map((a) => a.close()));
  held = gate();
  seen.length = 0;
  starts.length = 0;
  attempts.clear();
  vi.useRealTimers();
});

describe('inline mode', () => {
  it('runs the task in this process on the service instance, inside currentTask(), and stores the result as JSON', async () => {
    const app = await inlineApp({ services: [new InlineReports(7)] });
    expect(app.inline).toBe(true);
    const events: string[] = [];
    app.on('started', (e) => events.push(`started ${e.name} #${e.attempt}`));
    app.on('succeeded', (e) => events.push(`succeeded ${e.name}`));
    const when = '2026-01-02T03:04:05.000Z';
    const result = await app.tasks(InlineReports).build.delay(42, when);
    expect(await result.get({ timeout: 5 })).toEqual({ id: 42, pages: 7, when });
    expect(await result.status()).toBe('SUCCESS');
    const info = await result.info();
    expect(info).toMatchObject({ state: 'SUCCESS', name: 'InlineReports.build', args: [42, '2026-01-02T03:04:05.000Z'], attempts: 1, worker: 'inline' });
    expect(info.finishedAt).toBeInstanceOf(Date);
    expect(seen).toEqual([{ id: result.id, name: 'InlineReports.build', attempt: 1, queue: 'default' }]);
    expect(events).toEqual(['started InlineReports.build #1', 'succeeded InlineReports.build']);
    expect(app.prefix).toMatch(/^heimdall-inline-[0-9a-f]{16}$/);
  });

  it('checks every call as a real dispatch does, and runs nothing for a bad one', async () => {
    const app = await inlineApp({ dispatcher: { maxPayloadBytes: 1024 } });
    const reports = app.tasks(InlineReports);
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    const bad = await reports.build.delay(1, circular as unknown as string).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(SerializationError);
    expect((bad as Error).message).toContain('args[1].self');
    const date = await reports.build.delay(1, new Date() as unknown as string).catch((e: unknown) => e);
    expect(date).toBeInstanceOf(SerializationError);
    expect((date as Error).message).toContain('args[1] is a Date');
    await expect(reports.build.applyAsync([1, 'x'], { nope: 1 } as never)).rejects.toThrow(ConfigError);
    await expect(reports.build.delay(1, 'x'.repeat(2000))).rejects.toThrow(PayloadTooLargeError);
    await expect((reports as unknown as Record<string, { delay(): Promise<unknown> }>).notATask!.delay()).rejects.toThrow(NotATaskError);
    // The result is checked against the same limit: it fails the task, not the dispatch.
    const big = await reports.bigResult.delay();
    await expect(big.get({ timeout: 5 })).rejects.toThrow(/PayloadTooLarge|larger than/);
    // So is its JSON: a Date would come back as a string, so returning one fails the task, as in a worker.
    const dated = await reports.dated.delay();
    await expect(dated.get({ timeout: 5 })).rejects.toThrow(/SerializationError: result is a Date/);
    const report = await app.drain();
    expect(report.ran.map((r) => `${r.name} ${r.state}`)).toEqual(['InlineReports.bigResult FAILURE', 'InlineReports.dated FAILURE']);
    expect(seen).toEqual([]);
    expect(() => app.dispatcher.client).toThrow(/inline dispatcher has no Redis client/);
  });

  it('unique: a duplicate dispatch gets the holder, uniqueRaises throws, and the lock is free again after the end', async () => {
    const app = await inlineApp();
    const reports = app.tasks(InlineReports);
    const first = await reports.exclusive.delay('a');
    const again = await reports.exclusive.delay('a');
    expect(again.duplicate).toBe(true);
    expect(again.id).toBe(first.id);
    expect((await reports.exclusive.current('a'))?.id).toBe(first.id);
    const other = await reports.exclusive.delay('b');
    expect(other.duplicate).toBe(false);
    await reports.strict.delay('s');
    const raised = await reports.strict.delay('s').catch((e: unknown) => e);
    expect(raised).toBeInstanceOf(AlreadyQueuedError);
    held.open();
    expect(await first.get({ timeout: 5 })).toBe('done a');
    await app.drain();
    expect(await reports.exclusive.current('a')).toBeNull();
    const fresh = await reports.exclusive.delay('a');
    expect(fresh.duplicate).toBe(false);
    expect(fresh.id).not.toBe(first.id);
    expect(await fresh.get({ timeout: 5 })).toBe('done a');
  });

  it('unique with uniqueWaitForExpiry: at most once per uniqueTimeout, even after the task ended', async () => {
    const app = await inlineApp();
    const ref = app.tasks(InlineReports).oncePerWindow;
    const first = await ref.delay();
    await first.get({ timeout: 5 });
    const within = await ref.delay();
    expect(within.duplicate).toBe(true);
    expect(within.id).toBe(first.id);
    await vi.waitFor(
      async () => {
        const later = await ref.delay();
        expect(later.duplicate).toBe(false);
      },
      { timeout: 5_000, interval: 20 },
    );
  });

  it('unique: a start keeps the expiry the lock got at dispatch (it is re-taken only once lapsed)', async () => {
    vi.useFakeTimers();
    const app = await inlineApp();
    const ref = app.tasks(InlineReports).shortLock;
    const first = await ref.applyAsync(['x'], { countdown: '150ms' });
    await vi.advanceTimersByTimeAsync(150);
    expect(await first.status()).toBe('STARTED');
    // 350 ms after the dispatch the 300-ms lock has lapsed, though the task still runs.
    await vi.advanceTimersByTimeAsync(200);
    expect(await first.status()).toBe('STARTED');
    const second = await ref.delay('x');
    expect(second.duplicate).toBe(false);
  });

  it('closing the app ends a get() that waits, and refuses one that starts', async () => {
    const app = await inlineApp();
    const later = await app.tasks(InlineReports).build.applyAsync([1, 'a'], { countdown: 60 });
    const waiting = later.get().catch((e: unknown) => e);
    await app.close();
    expect(String(await waiting)).toMatch(/inline app is closed/);
    await expect(app.dispatcher.result(later.id).get()).rejects.toThrow(/closed/);
  });

  it('tasks on a queue the app does not consume stay PENDING, and drain() names the queue', async () => {
    const app = await inlineApp({ queues: ['default'] });
    const stray = await app.tasks(InlineReports).build.applyAsync([1, 'a'], { queue: 'inline-elsewhere' });
    const err = await app.drain({ timeout: '300ms' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as Error).message).toContain("queue inline-elsewhere: 1 waiting; the app's worker does not consume 'inline-elsewhere'");
    expect(await stray.status()).toBe('PENDING');
  });

  it('rate limit: never more starts in a window than allowed; the rest wait for room (rateLimited events)', async () => {
    const app = await inlineApp();
    let limitedEvents = 0;
    app.on('rateLimited', () => limitedEvents++);
    const results = await Promise.all([1, 2, 3, 4, 5].map((n) => app.tasks(InlineReports).limited.delay(n)));
    const report = await app.drain({ timeout: 10 });
    expect(report.ran).toHaveLength(5);
    expect(await Promise.all(results.map((r) => r.get({ timeout: 1 })))).toEqual([1, 2, 3, 4, 5]);
    expect(starts).toHaveLength(5);
    // Start times as the app recorded them (the window's clock), in order.
    const started = (await Promise.all(results.map(async (r) => (await r.info()).startedAt!.getTime()))).sort((a, b) => a - b);
    for (let i = 2; i < started.length; i++) expect(started[i]! - started[i - 2]!).toBeGreaterThanOrEqual(300);
    expect(limitedEvents).toBeGreaterThan(0);
  });

  it('rate limit: in the order sent, each over-limit task waiting for its turn', async () => {
    const app = await inlineApp();
    const limited: number[] = [];
    app.on('rateLimited', (e) => limited.push(e.args[0] as number));
    const results = await app.tasks(InlineReports).limited.delayMany([1, 2, 3, 4, 5, 6].map((n) => [n] as [number]));
    await app.drain({ timeout: 10 });
    const started = await Promise.all(results.map(async (r) => (await r.info()).startedAt!.getTime()));
    // In the order sent, up to a timer's lateness (a task due a ms after another may start first
    // when that one's timer fired late and found its window still full).
    for (let i = 1; i < started.length; i++) expect(started[i]! - started[i - 1]!).toBeGreaterThanOrEqual(-50);
    // Each over-limit task got its turn in the order sent; a timer that fired late can put one
    // back once more (a start is counted when it happens), never out of its turn.
    expect([...new Set(limited)]).toEqual([3, 4, 5, 6]);
    expect(limited.length).toBeLessThanOrEqual(8);
  });

  it("onlyAfter: true once per interval; extendLock: the task's own lock gets the new lifetime", async () => {
    const app = await inlineApp();
    const refresh = app.tasks(InlineReports).refresh;
    const answers = [];
    for (const key of ['a', 'a', 'b']) answers.push(await (await refresh.delay(key)).get({ timeout: 1 }));
    expect(answers).toEqual([true, false, true]);
    const stretch = app.tasks(InlineReports).stretch;
    expect(await (await stretch.delay('x')).get({ timeout: 1 })).toBe(true);
  });

  it('failures, retries with the backoff, and currentTask().retry()', async () => {
    const app = await inlineApp();
    const reports = app.tasks(InlineReports);
    const retried: number[] = [];
    app.on('retried', (e) => retried.push(e.attempt));
    const ok = await reports.flaky.delay('k1', 2);
    expect(await ok.get({ timeout: 5 })).toBe('ok after 3');
    expect((await ok.info()).attempts).toBe(3);
    expect(retried).toEqual([1, 2]);
    const failing = await reports.flaky.delay('k2', 5);
    const err = await failing.get({ timeout: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaskFailedError);
    expect(err).toMatchObject({ remoteName: 'RangeError', remoteMessage: 'failure 3' });
    expect((err as TaskFailedError).traceback).toContain('flaky');
    const asked = await reports.askRetry.delay('k3');
    expect(await asked.get({ timeout: 5 })).toBe('retried 2');
  });

  it('revoke: a delayed task never runs, a running one is told through its signal, terminate ends it at once', async () => {
    const app = await inlineApp();
    const reports = app.tasks(InlineReports);
    const later = await reports.build.applyAsync([1, '2026-01-01T00:00:00.000Z'], { countdown: 60 });
    expect(await later.status()).toBe('PENDING');
    expect(await later.revoke()).toBe('REVOKED');
    await expect(later.get({ timeout: 1 })).rejects.toThrow(TaskRevokedError);

    const polite = await reports.waitForAbort.delay();
    await vi.waitFor(async () => expect(await polite.status()).toBe('STARTED'));
    expect(await polite.revoke()).toBe('STARTED');
    await expect(polite.get({ timeout: 5 })).rejects.toThrow(TaskRevokedError);
    expect((await polite.info()).revokeReason).toBe('revoked');

    const stubborn = await reports.ignoreAbort.delay();
    await vi.waitFor(async () => expect(await stubborn.status()).toBe('STARTED'));
    expect(await stubborn.revoke({ terminate: true })).toBe('REVOKED');
    held.open();
    const report = await app.drain();
    // The stubborn task's own end comes after it was terminated: nothing overwrites REVOKED.
    expect(await stubborn.status()).toBe('REVOKED');
    // As with Redis, a task revoked before it started never reaches a worker: no event, not in the report.
    expect(report.ran.map((r) => `${r.name} ${r.state}`)).toEqual([
      'InlineReports.waitForAbort REVOKED',
      'InlineReports.ignoreAbort REVOKED',
    ]);
    expect(seen).toEqual([]);
  });

  it('a custom taskId: the same task sent again is the same task; another one under a live id is refused', async () => {
    const app = await inlineApp();
    const reports = app.tasks(InlineReports);
    const first = await reports.build.applyAsync([1, 'a'], { taskId: 'report-1', countdown: 60 });
    const again = await reports.build.applyAsync([1, 'a'], { taskId: 'report-1', countdown: 60 });
    expect(again.id).toBe(first.id);
    await expect(reports.build.applyAsync([2, 'b'], { taskId: 'report-1' })).rejects.toThrow(/belongs to a task that has not ended/);
    await first.revoke();
    // Ended: the id can be used again, for another task.
    const reused = await reports.build.applyAsync([3, 'c'], { taskId: 'report-1' });
    expect(await reused.get({ timeout: 5 })).toMatchObject({ id: 3 });
  });

  it('revoking a unique task frees its lock', async () => {
    const app = await inlineApp();
    const ref = app.tasks(InlineReports).exclusive;
    const first = await ref.delay('r');
    await first.revoke({ terminate: true });
    const next = await ref.delay('r');
    expect(next.duplicate).toBe(false);
  });

  it('time limits, a hostile thrown value, and expires end the task; the app goes on', async () => {
    const app = await inlineApp();
    const reports = app.tasks(InlineReports);
    const slow = await reports.slow.delay();
    await expect(slow.get({ timeout: 5 })).rejects.toThrow(/TimeLimitExceeded|time limit/i);
    const hostile = await reports.hostile.delay();
    const err = await hostile.get({ timeout: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaskFailedError);
    const expired = await reports.build.applyAsync([1, '2026-01-01T00:00:00.000Z'], { countdown: '30ms', expires: '10ms' });
    await expect(expired.get({ timeout: 5 })).rejects.toThrow(/expired/);
    expect(await (await reports.build.delay(2, '1970-01-01T00:00:00.000Z')).get({ timeout: 5 })).toMatchObject({ id: 2 });
  });

  it('a task of a class the app does not serve, or a name nobody registered, fails with UnknownTaskError', async () => {
    const app = await inlineApp();
    const notServed = await app.tasks(NotServed).ping.delay();
    const err = await notServed.get({ timeout: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TaskFailedError);
    expect((err as TaskFailedError).remoteName).toBe('UnknownTaskError');
    expect((err as TaskFailedError).remoteMessage).toContain('add NotServed');
    const byName = await app.dispatcher.send('Nobody.registered', []);
    await expect(byName.get({ timeout: 5 })).rejects.toThrow(/no task named 'Nobody.registered'/);
    // With no services at all, any registered class is built with `new`.
    const open = await inlineApp({ services: [] });
    expect(await (await open.tasks(NotServed).ping.delay()).get({ timeout: 5 })).toBe('pong');
  });

  it('drain(): waits for countdowns and retries, leaves them with delayed: leave, and refuses a deadline it cannot meet', async () => {
    const app = await inlineApp();
    const reports = app.tasks(InlineReports);
    const soon = await reports.build.applyAsync([1, '1970-01-01T00:00:00.000Z'], { countdown: '40ms' });
    const report = await app.drain({ timeout: 5 });
    expect(report.ran.map((r) => r.id)).toEqual([soon.id]);
    const far = await reports.build.applyAsync([2, '1970-01-01T00:00:00.000Z'], { countdown: 60 });
    const left = await app.drain({ delayed: 'leave' });
    expect(left.ran).toEqual([]);
    expect(left.delayed).toEqual([{ id: far.id, queue: 'default', dueInMs: expect.any(Number) }]);
    expect(left.delayed[0]!.dueInMs).toBeGreaterThan(50_000);
    const refused = await app.drain({ timeout: 1 }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(TimeoutError);
    expect((refused as Error).message).toContain('InlineReports.build');
  });

  it('fake timers drive countdowns and backoffs', async () => {
    vi.useFakeTimers();
    const app = await inlineApp();
    const later = await app.tasks(InlineReports).build.applyAsync([5, '1970-01-01T00:00:00.000Z'], { countdown: '1h' });
    await vi.advanceTimersByTimeAsync(59 * 60_000);
    expect(await later.status()).toBe('PENDING');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(await later.status()).toBe('SUCCESS');
  });

  it('close() waits for running tasks, then refuses new ones', async () => {
    const app = await inlineApp();
    const running = await app.tasks(InlineReports).ignoreAbort.delay();
    const closing = app.close({ timeout: 5 });
    held.open();
    await closing;
    expect(await running.status()).toBe('SUCCESS');
    await expect(app.tasks(InlineReports).build.delay(1, '2026-01-01T00:00:00.000Z')).rejects.toThrow(/closed/);
  });
});
