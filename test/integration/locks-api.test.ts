/**
 * Unique locks from code (TaskRef.lock, Inspector.extendLock and releaseLock, and
 * currentTask().extendLock) and currentTask().onlyAfter, celery-heimdall's only_after.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, currentTask, Inspector, Task } from 'heimdall-tasks';
import { gate, nextEvent, useHarness, waitFor } from '../helpers.js';
import { readLog, total } from '../fixtures/processes/control.js';
import { ProbeService } from '../fixtures/processes/services.js';
import { startWorkerProcesses, stopWorkerProcesses } from '../fixtures/worker-processes.js';

class Reports {
  readonly gate = gate();
  /** What extendLock answered in the run. */
  extended: boolean[] = [];

  @Task({ unique: true, uniqueTimeout: 2, key: ([id]) => `report-${String(id)}` })
  async build(id: number): Promise<number> {
    await this.gate.promise;
    return id;
  }

  @Task({ unique: true, uniqueTimeout: 2 })
  async long(id: number): Promise<number> {
    this.extended.push(await currentTask().extendLock('10m'));
    await this.gate.promise;
    this.extended.push(await currentTask().extendLock('10m'));
    return id;
  }

  @Task()
  async plain(): Promise<string> {
    try {
      await currentTask().extendLock('1m');
      return 'extended';
    } catch (err) {
      return err instanceof ConfigError ? err.message : 'other';
    }
  }

  @Task()
  async once(key: string): Promise<boolean> {
    return currentTask().onlyAfter(key, '1h');
  }
}

describe('unique locks from code', () => {
  const fresh = useHarness('locks-api');

  it('TaskRef.lock() finds the lock of a call; Inspector.extendLock() and releaseLock() act only for the holder named, unless forced', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const ref = d.tasks(Reports).build;
    expect(await ref.lock(7)).toBeNull();
    const holder = await ref.delay(7);
    const lock = await ref.lock(7);
    expect(lock).toMatchObject({ key: h.queueKeys().lock('Reports.build', 'report-7'), holder: holder.id });
    expect(lock!.ttlMs).toBeGreaterThan(1000);
    expect(lock!.ttlMs).toBeLessThanOrEqual(2000);
    await expect(d.tasks(Reports).plain.lock()).rejects.toThrow(/Reports.plain is not unique/);

    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    try {
      expect(await inspector.extendLock(lock!.key, 'someone-else', '5m')).toEqual({ extended: false, reason: 'held-by-another', holder: holder.id });
      expect(await inspector.extendLock(lock!.key, holder.id, '5m')).toEqual({ extended: true, ttlMs: 300_000 });
      expect((await ref.lock(7))!.ttlMs).toBeGreaterThan(200_000);
      await expect(inspector.extendLock(lock!.key, holder.id, -1)).rejects.toThrow(ConfigError);
      await expect(inspector.releaseLock(lock!.key, '')).rejects.toThrow(/force: true/);
      expect(await inspector.releaseLock(lock!.key, 'someone-else')).toEqual({ released: false, reason: 'held-by-another', holder: holder.id });
      // Forced: whoever holds it, and the answer names who that was.
      expect(await inspector.releaseLock(lock!.key, { force: true })).toEqual({ released: true, holder: holder.id });
      expect(await ref.lock(7)).toBeNull();
      expect(await inspector.extendLock(lock!.key, holder.id, '5m')).toEqual({ extended: false, reason: 'gone' });
      expect(await inspector.releaseLock(lock!.key, { force: true })).toEqual({ released: false, reason: 'gone' });
    } finally {
      await inspector.close();
    }
  });

  it('currentTask().extendLock() keeps a long task its lock past uniqueTimeout; false once the lock is no longer its own; ConfigError without one', { timeout: 20_000 }, async () => {
    const h = fresh();
    const svc = new Reports();
    const worker = h.worker({ services: [svc] });
    await worker.start();
    const d = h.dispatcher();
    const started = nextEvent(worker, 'started', (e) => e.name === 'Reports.long');
    const run = await d.tasks(Reports).long.delay(1);
    await started;
    await waitFor(() => svc.extended.length === 1, { what: 'the first extendLock' });
    expect(svc.extended).toEqual([true]);
    // Past the 2 s uniqueTimeout the lock would have lapsed: it has ten minutes now.
    const lock = await d.tasks(Reports).long.lock(1);
    expect(lock!.holder).toBe(run.id);
    expect(lock!.ttlMs).toBeGreaterThan(500_000);
    expect((await d.tasks(Reports).long.delay(1)).duplicate).toBe(true);
    // An operator lets it go: the task's next extendLock answers false and takes nothing.
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    await inspector.releaseLock(lock!.key, run.id);
    await inspector.close();
    svc.gate.open();
    expect(await run.get({ timeout: 5 })).toBe(1);
    expect(svc.extended).toEqual([true, false]);
    expect(await d.tasks(Reports).long.lock(1)).toBeNull();
    const plain = await d.tasks(Reports).plain.delay();
    expect(await plain.get({ timeout: 5 })).toBe(`extendLock(): task Reports.plain (${plain.id}) has no unique lock`);
    await worker.close();
  });
});

describe('currentTask().onlyAfter()', () => {
  const fresh = useHarness('only-after');

  it('true for one call per interval across 3 worker processes, whatever the number of calls', { timeout: 60_000 }, async () => {
    const h = fresh();
    const workers = await startWorkerProcesses(h, 3, { services: ['probe'], concurrency: 10 });
    const d = h.dispatcher();
    const ref = d.tasks(ProbeService).refreshOnce;
    const first = await ref.delayMany(Array.from({ length: 60 }, () => ['prices', 60] as [string, number]));
    const answers = await Promise.all(first.map((r) => r.get({ timeout: 20 })));
    expect(answers.filter(Boolean)).toHaveLength(1);
    // Once the interval lapses (here made to lapse at once, on the Redis clock), the next call is
    // told yes again.
    const key = h.queueKeys().after('quotes');
    expect(await (await ref.delay('quotes', 30)).get({ timeout: 10 })).toBe(true);
    expect(await (await ref.delay('quotes', 30)).get({ timeout: 10 })).toBe(false);
    expect(await h.admin.pttl(key)).toBeGreaterThan(20_000);
    await h.admin.pexpire(key, 1);
    await waitFor(async () => (await h.admin.exists(key)) === 0, { what: 'the interval to lapse' });
    expect(await (await ref.delay('quotes', 30)).get({ timeout: 10 })).toBe(true);
    const summaries = await stopWorkerProcesses(workers);
    expect(total(summaries, 'succeeded')).toBe(63);
    expect((await readLog(h)).map((e) => e.key)).toEqual(['prices', 'quotes', 'quotes']);
  });

  it('the key lives under the queue for the interval; an empty key is a ConfigError in the task', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new Reports()] });
    await worker.start();
    const d = h.dispatcher();
    expect(await (await d.tasks(Reports).once.delay('k')).get({ timeout: 5 })).toBe(true);
    expect(await (await d.tasks(Reports).once.delay('k')).get({ timeout: 5 })).toBe(false);
    expect(await h.admin.pttl(h.queueKeys().after('k'))).toBeGreaterThan(3_500_000);
    await expect((await d.tasks(Reports).once.delay('')).get({ timeout: 5 })).rejects.toThrow(/key must be a non-empty string/);
    await worker.close();
  });
});
