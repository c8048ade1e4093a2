/**
 * Unique tasks and rate limits, recipe by recipe: every example of the celery-heimdall README
 * (shared/reference/000_…), ported to heimdall-tasks, one test each, against a real Redis with
 * in-process workers.
 */
import { describe, expect, it } from 'vitest';
import { AlreadyQueuedError, Task } from 'heimdall-tasks';
import { gate, nextEvent, recordEvents, useHarness, waitFor } from '../helpers.js';

// README: "a unique task" (only one generate_report per arguments at a time).
class ReadmeUniqueReports {
  @Task({ unique: true })
  async generateReport(customerId: number): Promise<string> {
    return `report-${customerId}`;
  }
}

// README: unique_timeout = 60 * 60, and a short one to watch the lock lapse.
class ReadmeTimeoutReports {
  @Task({ unique: true, uniqueTimeout: 60 * 60 })
  async generateReport(customerId: number): Promise<string> {
    return `report-${customerId}`;
  }

  @Task({ unique: true, uniqueTimeout: '300ms' })
  async generateQuickReport(customerId: number): Promise<string> {
    return `quick-${customerId}`;
  }
}

// README: 'key': lambda args, kwargs: 'generate_report'
class ReadmeKeyedReports {
  @Task({ unique: true, key: () => 'generate_report' })
  async generateReport(customerId: number): Promise<string> {
    return `report-${customerId}`;
  }
}

// README: my_api_call returns the same task id until the task completes.
class ReadmeApiReports {
  readonly gate = gate();
  @Task({ unique: true })
  async generateReport(customerId: number): Promise<string> {
    await this.gate.promise; // stands in for time.sleep(10)
    return `report-${customerId}`;
  }
}

// README: 'unique_raises': True
class ReadmeRaisingReports {
  @Task({ unique: true, uniqueRaises: true, uniqueTimeout: 60 })
  async generateReport(customerId: number): Promise<string> {
    return `report-${customerId}`;
  }
}

// README: 'unique_wait_for_expiry': True (with a timeout short enough to watch it lapse).
class ReadmeOncePerTimeoutReports {
  @Task({ unique: true, uniqueTimeout: '2s', uniqueWaitForExpiry: true })
  async generateReport(customerId: number): Promise<string> {
    return `report-${customerId}`;
  }
}

// README: 'rate_limit': RateLimit((2, 60))
class ReadmeAmazon {
  @Task({ rateLimit: [2, 60] })
  async downloadReportFromAmazon(customerId: number): Promise<number> {
    return customerId;
  }
}

// celery-heimdall's `key='MyTaskKey'`: one string, so every call is the same unique task.
class OneKey {
  @Task({ unique: true, key: 'MyTaskKey' })
  async refresh(n: number): Promise<number> {
    return n;
  }
}

// A unique key apart from the rate bucket (celery-heimdall issue #12): one task per report, and
// one window for the API all reports are fetched from.
class SplitKeys {
  @Task({ unique: true, uniqueKey: ([report]) => `report-${String(report)}`, rateLimit: [1, 60], rateKey: 'amazon-api' })
  async fetchReport(report: number, customer: number): Promise<string> {
    return `${String(report)}/${String(customer)}`;
  }
}

// celery-heimdall's own upstream test of the limiter: [2, period], four tasks sent in order.
class UpstreamLimited {
  @Task({ rateLimit: [2, 1] })
  async limited(n: number): Promise<number> {
    return n;
  }
}

// README: RateLimit(lambda args: (1, 30) if args[0] == 10 else (2, 30)), key f'customer_{args[0]}'
class ReadmeAmazonPerCustomer {
  @Task({
    rateLimit: ([customerId]) => (customerId === 10 ? [1, 30] : [2, 30]),
    key: ([customerId]) => `customer_${String(customerId)}`,
  })
  async downloadReportFromAmazon(customerId: number): Promise<number> {
    return customerId;
  }
}

describe('unique tasks and rate limits, recipe by recipe (the celery-heimdall README examples)', () => {
  const fresh = useHarness('recipes');

  it('unique task: ten presses of the button make one task; nine duplicates carry its id', async () => {
    const h = fresh();
    const reports = h.dispatcher().tasks(ReadmeUniqueReports);
    const handles = await Promise.all(Array.from({ length: 10 }, () => reports.generateReport.delay(42)));
    const originals = handles.filter((r) => !r.duplicate);
    expect(originals).toHaveLength(1);
    const id = originals[0]!.id;
    expect(handles.filter((r) => r.duplicate)).toHaveLength(9);
    expect(new Set(handles.map((r) => r.id))).toEqual(new Set([id]));
    // Exactly one message is queued, and the lock names it.
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([id]);
    expect(await h.admin.get(await h.lockKeyOf(id))).toBe(id);
    // Other arguments are another report.
    const other = await reports.generateReport.delay(43);
    expect(other.duplicate).toBe(false);
    expect(other.id).not.toBe(id);

    const worker = h.worker({ services: [new ReadmeUniqueReports()] });
    await worker.start();
    expect(await handles[3]!.get({ timeout: 10 })).toBe('report-42');
    expect(await other.get({ timeout: 10 })).toBe('report-43');
  });

  it('unique_timeout: the lock lives uniqueTimeout; once it lapses a new task is accepted', async () => {
    const h = fresh();
    const reports = h.dispatcher().tasks(ReadmeTimeoutReports);

    const hourly = await reports.generateReport.delay(7);
    const pttl = await h.admin.pttl(await h.lockKeyOf(hourly.id));
    expect(pttl).toBeLessThanOrEqual(3_600_000);
    expect(pttl).toBeGreaterThan(3_600_000 - 5_000);
    expect(await h.admin.hget(h.taskKey(hourly.id), 'lt')).toBe('3600000');

    const first = await reports.generateQuickReport.delay(7);
    const lock = await h.lockKeyOf(first.id);
    const quickTtl = await h.admin.pttl(lock);
    expect(quickTtl).toBeGreaterThan(0);
    expect(quickTtl).toBeLessThanOrEqual(300);
    const dup = await reports.generateQuickReport.delay(7);
    expect(dup.duplicate).toBe(true);
    expect(dup.id).toBe(first.id);

    // Nobody runs the task (the "worker burst into flames" case): the lock lapses by itself.
    await waitFor(async () => (await h.admin.exists(lock)) === 0, { timeout: 5_000, what: 'the 300 ms lock to lapse' });
    const second = await reports.generateQuickReport.delay(7);
    expect(second.duplicate).toBe(false);
    expect(second.id).not.toBe(first.id);
    expect(await h.admin.get(lock)).toBe(second.id);
  });

  it("custom key: key: () => 'generate_report' makes one report at a time, whatever the customer", async () => {
    const h = fresh();
    const reports = h.dispatcher().tasks(ReadmeKeyedReports);
    const a = await reports.generateReport.delay(1);
    const b = await reports.generateReport.delay(2);
    const c = await reports.generateReport.delay(3);
    expect(a.duplicate).toBe(false);
    expect([b.duplicate, c.duplicate]).toEqual([true, true]);
    expect([b.id, c.id]).toEqual([a.id, a.id]);
    const lock = await h.lockKeyOf(a.id);
    expect(lock).toBe(h.queueKeys().lock('ReadmeKeyedReports.generateReport', 'generate_report'));
    expect(await h.admin.get(lock)).toBe(a.id);

    const worker = h.worker({ services: [new ReadmeKeyedReports()] });
    await worker.start();
    expect(await a.get({ timeout: 10 })).toBe('report-1');
    // Released on success: the next customer gets a task of its own.
    const d = await reports.generateReport.delay(2);
    expect(d.duplicate).toBe(false);
    expect(d.id).not.toBe(a.id);
    expect(await d.get({ timeout: 10 })).toBe('report-2');
  });

  it('returning the existing AsyncResult: my_api_call gives the same task id until the task completes', async () => {
    const h = fresh();
    const reports = h.dispatcher().tasks(ReadmeApiReports);
    const myApiCall = async (customerId: number) => ({
      status: 'RUNNING',
      task_id: (await reports.generateReport.delay(customerId)).id,
    });

    const first = await myApiCall(5);
    // Queued: every call answers the same id.
    for (let i = 0; i < 3; i++) expect(await myApiCall(5)).toEqual(first);

    const service = new ReadmeApiReports();
    const worker = h.worker({ services: [service] });
    const started = nextEvent(worker, 'started', (e) => e.id === first.task_id);
    await worker.start();
    await started;
    // Running: still the same id.
    expect(await h.dispatcher().result(first.task_id).status()).toBe('STARTED');
    for (let i = 0; i < 3; i++) expect(await myApiCall(5)).toEqual(first);

    const done = nextEvent(worker, 'succeeded', (e) => e.id === first.task_id);
    service.gate.open();
    await done;
    // Completed: the next call starts a new report.
    const next = await myApiCall(5);
    expect(next.status).toBe('RUNNING');
    expect(next.task_id).not.toBe(first.task_id);
    expect(await h.dispatcher().result(next.task_id).get({ timeout: 10 })).toBe('report-5');
  });

  it('unique_raises: a second dispatch throws AlreadyQueuedError with likelyCulprit and expiresIn', async () => {
    const h = fresh();
    const reports = h.dispatcher().tasks(ReadmeRaisingReports);
    const myApiCall = async (customerId: number) => {
      try {
        const task = await reports.generateReport.delay(customerId);
        return { status: 'STARTED', task_id: task.id };
      } catch (exc) {
        if (exc instanceof AlreadyQueuedError) return { status: 'ALREADY_RUNNING', task_id: exc.likelyCulprit };
        throw exc;
      }
    };

    const first = await myApiCall(9);
    expect(first.status).toBe('STARTED');
    expect(await myApiCall(9)).toEqual({ status: 'ALREADY_RUNNING', task_id: first.task_id });

    const err = await reports.generateReport.delay(9).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AlreadyQueuedError);
    const aq = err as AlreadyQueuedError;
    expect(aq.code).toBe('HEIMDALL_ALREADY_QUEUED');
    expect(aq.likelyCulprit).toBe(first.task_id);
    // expires_in: seconds left on the lock, within a second of uniqueTimeout (60 s) this early on...
    expect(aq.expiresIn).toBeLessThanOrEqual(60);
    expect(aq.expiresIn).toBeGreaterThan(59);
    // ...and matching the lock's remaining TTL read just after.
    const pttl = await h.admin.pttl(await h.lockKeyOf(first.task_id));
    expect(Math.abs(aq.expiresIn * 1000 - pttl)).toBeLessThan(1000);
    // Other arguments do not collide.
    expect((await myApiCall(10)).status).toBe('STARTED');
  });

  it('unique_wait_for_expiry: the lock outlives the finished task until uniqueTimeout, then a new task is accepted', async () => {
    const h = fresh();
    const reports = h.dispatcher().tasks(ReadmeOncePerTimeoutReports);
    const worker = h.worker({ services: [new ReadmeOncePerTimeoutReports()] });
    await worker.start();

    const first = await reports.generateReport.delay(3);
    const lock = await h.lockKeyOf(first.id);
    expect(await first.get({ timeout: 10 })).toBe('report-3');
    expect(await first.status()).toBe('SUCCESS');
    // Finished, yet still holding the lock: a new dispatch is a duplicate of the finished task.
    expect(await h.admin.get(lock)).toBe(first.id);
    const again = await reports.generateReport.delay(3);
    expect(again.duplicate).toBe(true);
    expect(again.id).toBe(first.id);
    expect(await again.status()).toBe('SUCCESS');

    await waitFor(async () => (await h.admin.exists(lock)) === 0, { timeout: 10_000, what: 'the 2 s lock to lapse' });
    const later = await reports.generateReport.delay(3);
    expect(later.duplicate).toBe(false);
    expect(later.id).not.toBe(first.id);
    expect(await later.get({ timeout: 10 })).toBe('report-3');
  });

  it('global rate limit [2, 60]: of three tasks two start and one is rescheduled, still PENDING', async () => {
    const h = fresh();
    const amazon = h.dispatcher().tasks(ReadmeAmazon);
    const handles = [
      await amazon.downloadReportFromAmazon.delay(1),
      await amazon.downloadReportFromAmazon.delay(2),
      await amazon.downloadReportFromAmazon.delay(3),
    ];
    const worker = h.worker({ services: [new ReadmeAmazon()] });
    const { started, succeeded, rateLimited: limited } = recordEvents(worker);
    await worker.start();
    await waitFor(() => succeeded.length === 2 && limited.length === 1, { what: '2 successes and 1 rate-limited' });

    expect(started.map((e) => e.id).sort()).toEqual([handles[0]!.id, handles[1]!.id].sort());
    expect(limited).toHaveLength(1);
    const late = limited[0]!;
    expect(late.id).toBe(handles[2]!.id);
    expect(late.name).toBe('ReadmeAmazon.downloadReportFromAmazon');
    expect(late.args).toEqual([3]);
    // Its turn is reserved in the window: due when the first start leaves the 60 s window.
    expect(late.delayMs).toBeGreaterThan(59_000);
    expect(late.delayMs).toBeLessThanOrEqual(60_000);
    // It waits in the delayed set, not counted as an attempt, and stays PENDING.
    expect(await handles[2]!.status()).toBe('PENDING');
    expect((await handles[2]!.info()).attempts).toBe(0);
    expect(await h.admin.zscore(h.queueKey('delayed'), late.id)).toBe(String((await handles[2]!.info()).dueAt!.getTime()));
    // The window: the two starts, and the third task's turn at its due time.
    const window = await h.admin.zrange(h.queueKeys().rate('ReadmeAmazon.downloadReportFromAmazon', undefined), 0, -1, 'WITHSCORES');
    const firstStart = Math.min(...(await Promise.all(handles.slice(0, 2).map(async (r) => (await r.info()).startedAt!.getTime()))));
    expect(window.slice(4)).toEqual([`~${late.id}:1`, String(firstStart + 60_000)]);
    expect(window.slice(0, 4).filter((_, i) => i % 2 === 0).sort()).toEqual([`${handles[0]!.id}:1`, `${handles[1]!.id}:1`].sort());
    expect(await Promise.all(handles.slice(0, 2).map((r) => r.get({ timeout: 5 })))).toEqual([1, 2]);
    expect(started).toHaveLength(2);
  });

  it("key: 'MyTaskKey' (a string): calls with any arguments are one unique task", async () => {
    const h = fresh();
    const ref = h.dispatcher().tasks(OneKey).refresh;
    const first = await ref.delay(1);
    const second = await ref.delay(2);
    expect([first.duplicate, second.duplicate, second.id]).toEqual([false, true, first.id]);
    expect(await h.admin.get(h.queueKeys().lock('OneKey.refresh', 'MyTaskKey'))).toBe(first.id);
  });

  it('uniqueKey and rateKey apart: duplicates by report, one rate window for every report', async () => {
    const h = fresh();
    const ref = h.dispatcher().tasks(SplitKeys).fetchReport;
    const a = await ref.delay(1, 10);
    const dup = await ref.delay(1, 11);
    const b = await ref.delay(2, 10);
    expect([dup.duplicate, dup.id, b.duplicate]).toEqual([true, a.id, false]);
    const keys = h.queueKeys();
    expect([await h.recordLock(b.id), await h.field(b.id, 'rateKey')]).toEqual([keys.lock('SplitKeys.fetchReport', 'report-2'), keys.rate('SplitKeys.fetchReport', 'amazon-api')]);
    const worker = h.worker({ services: [new SplitKeys()] });
    const { rateLimited } = recordEvents(worker);
    await worker.start();
    expect(await a.get({ timeout: 5 })).toBe('1/10');
    await waitFor(() => rateLimited.length === 1, { what: 'the second report to wait for the shared window' });
    expect(rateLimited[0]!.id).toBe(b.id);
    expect(await h.admin.zcard(keys.rate('SplitKeys.fetchReport', 'amazon-api'))).toBe(2);
  });

  it('upstream: of four tasks sent behind [2, 1 s], the 3rd and 4th are the two that run in the second window, in the order sent', async () => {
    const h = fresh();
    const ref = h.dispatcher().tasks(UpstreamLimited).limited;
    const sent = [];
    for (const n of [1, 2, 3, 4]) sent.push(await ref.delay(n));
    const worker = h.worker({ services: [new UpstreamLimited()], concurrency: 4 });
    const { rateLimited: limited } = recordEvents(worker);
    await worker.start();
    expect(await Promise.all(sent.map((r) => r.get({ timeout: 10 })))).toEqual([1, 2, 3, 4]);
    await worker.close();
    const st = (await Promise.all(sent.map((r) => r.info()))).map((i) => i.startedAt!.getTime());
    // The first two at once; the 3rd when the 1st start leaves the window, the 4th when the 2nd
    // does: each exactly one period after, on the Redis clock (no jitter, no overtaking).
    expect(st[2]! - st[0]!).toBeGreaterThanOrEqual(1000);
    expect(st[3]! - st[1]!).toBeGreaterThanOrEqual(1000);
    expect(st[2]! - st[0]!).toBeLessThan(1500);
    expect(st[3]).toBeGreaterThanOrEqual(st[2]!);
    // Each over-limit task was put back once, for its turn: no rescheduling again and again.
    expect(limited.map((e) => e.args[0])).toEqual([3, 4]);
  });

  it('dynamic rate limit per customer key: customer 10 gets [1, 30], customer 11 gets [2, 30]', async () => {
    const h = fresh();
    const amazon = h.dispatcher().tasks(ReadmeAmazonPerCustomer);
    const ten = [await amazon.downloadReportFromAmazon.delay(10), await amazon.downloadReportFromAmazon.delay(10)];
    const eleven = [
      await amazon.downloadReportFromAmazon.delay(11),
      await amazon.downloadReportFromAmazon.delay(11),
      await amazon.downloadReportFromAmazon.delay(11),
    ];
    // The limit was evaluated at dispatch and travels with the message.
    expect(await h.admin.hmget(h.taskKey(ten[0]!.id), 'rn', 'rp')).toEqual(['1', '30000']);
    expect(await h.admin.hmget(h.taskKey(eleven[0]!.id), 'rn', 'rp')).toEqual(['2', '30000']);

    const worker = h.worker({ services: [new ReadmeAmazonPerCustomer()] });
    const { started, succeeded, rateLimited: limited } = recordEvents(worker);
    await worker.start();
    await waitFor(() => succeeded.length === 3 && limited.length === 2, { what: '3 successes and 2 rate-limited' });

    // FIFO: the first of each customer's tasks that fit its window started; the rest were put back.
    expect(started.map((e) => e.id).sort()).toEqual([ten[0]!.id, eleven[0]!.id, eleven[1]!.id].sort());
    expect(limited.map((e) => e.args[0]).sort()).toEqual([10, 11]);
    expect(limited.map((e) => e.id).sort()).toEqual([ten[1]!.id, eleven[2]!.id].sort());
    for (const e of limited) {
      expect(e.delayMs).toBeGreaterThan(29_000);
      expect(e.delayMs).toBeLessThanOrEqual(30_000);
    }
    // Each window: its starts, and the turn reserved for the task that waits.
    const rate = h.queueKeys().rate('ReadmeAmazonPerCustomer.downloadReportFromAmazon', undefined);
    expect(await h.admin.zcard(`${rate}:customer_10`)).toBe(2);
    expect(await h.admin.zcard(`${rate}:customer_11`)).toBe(3);
    expect(await h.admin.zscore(`${rate}:customer_10`, `~${ten[1]!.id}:1`)).toBe(String((await ten[1]!.info()).dueAt!.getTime()));
    expect(await ten[1]!.status()).toBe('PENDING');
    expect(await eleven[2]!.status()).toBe('PENDING');
  });
});
