// The Inspector (issue 11, point 2): counts per queue, unique locks with their holders (and an
// owner-checked release), rate windows, dead letters; read from a live system.
import { afterEach, describe, expect, it } from 'vitest';
import { currentTask, Dispatcher, Inspector, Task, Worker } from 'heimdall-tasks';
import { gate, useHarness, waitFor } from '../helpers.js';

let held = gate();

class InspectedService {
  @Task({ unique: true, key: ([report]: [string]) => `report-${report}`, queue: 'inspected' })
  async build(report: string): Promise<string> {
    await held.promise;
    return report;
  }

  @Task({ rateLimit: [1, '60s'], queue: 'inspected' })
  async limited(n: number): Promise<number> {
    return n;
  }
}

class ColonNames {
  @Task({ name: 'insp:a', unique: true, key: ([k]: [string]) => k, queue: 'inspected-colon' })
  async a(k: string): Promise<string> {
    await held.promise;
    return k;
  }

  @Task({ name: 'insp:a:b', queue: 'inspected-colon' })
  async ab(): Promise<void> {}
}

let failures = 0;

class Counted {
  @Task({ queue: 'inspected-rate' })
  async quick(n: number): Promise<number> {
    return n;
  }

  @Task({ queue: 'inspected-rate', retries: { max: 2, backoff: '30ms', jitter: false } })
  async twice(): Promise<string> {
    if (currentTask().attempt < 3) throw new Error(`attempt ${currentTask().attempt} fails`);
    return 'third';
  }

  @Task({ queue: 'inspected-rate', retries: { max: 1, backoff: '1h', jitter: false } })
  async later(): Promise<void> {
    failures++;
    throw new TypeError('retried in an hour');
  }
}

class LateService {
  @Task({ queue: 'inspected-late' })
  async arrive(n: number): Promise<number> {
    return n + 1;
  }
}

const fresh = useHarness('inspector');
const open: { close(): Promise<unknown> }[] = [];
afterEach(async () => {
  // The gate stays open until everything is closed: a task started late must not wait on a new one.
  held.open();
  for (const c of open.splice(0).reverse()) await c.close();
  held = gate();
});

describe('Inspector', () => {
  it('shows a held lock with its holder, a full rate window, the counts, a dead letter; releases a lock only for its holder', { timeout: 30_000 }, async () => {
    const h = fresh();
    const worker = new Worker({ connection: h.connection(), prefix: h.prefix, services: [new InspectedService()], queues: ['inspected'] });
    const d = new Dispatcher({ connection: h.connection(), prefix: h.prefix });
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    open.push(worker, d, inspector);
    await worker.start();
    const svc = d.tasks(InspectedService);

    const building = await svc.build.delay('q3');
    await waitFor(async () => (await building.status()) === 'STARTED', { what: 'the unique task to start' });
    const limited = await Promise.all([1, 2].map((n) => svc.limited.delay(n)));
    await waitFor(async () => (await h.admin.zcard(`${h.prefix}:{inspected}:delayed`)) === 1, { what: 'the second limited task to wait for its window' });
    // A task in a queue no worker consumes, and a dead letter (an id with no record in the wait list).
    await d.send('Nobody.listens', [], { queue: 'inspected-idle' });
    await h.admin.rpush(`${h.prefix}:{inspected}:wait`, 'ghost-id');
    await waitFor(async () => (await h.admin.llen(`${h.prefix}:{inspected}:dead`)) === 1, { what: 'the dead letter' });

    expect(await inspector.queueNames()).toEqual(expect.arrayContaining(['inspected', 'inspected-idle']));
    const [inspected, idle] = await inspector.queues(['inspected', 'inspected-idle']);
    expect(inspected).toMatchObject({ queue: 'inspected', waiting: 0, delayed: 1, running: 1, dead: 1, workers: 1, oldestWaitingMs: null });
    expect(idle).toMatchObject({ queue: 'inspected-idle', waiting: 1, delayed: 0, running: 0, dead: 0, workers: 0 });
    expect(idle!.oldestWaitingMs).toBeGreaterThanOrEqual(0);

    const [lock] = await inspector.locks('inspected');
    expect(lock).toMatchObject({ queue: 'inspected', task: 'InspectedService.build', lockKey: 'report-q3', holder: building.id, holderState: 'STARTED' });
    expect(lock!.ttlMs).toBeGreaterThan(3_000_000); // the default uniqueTimeout, one hour

    const [window] = await inspector.rateWindows('inspected');
    expect(window).toMatchObject({ task: 'InspectedService.limited', limit: 1, periodMs: 60_000, starts: 1, turns: 1 });
    // A task sent now would queue behind the waiting one's turn: two periods from the first start.
    expect(window!.nextFreeInMs).toBeGreaterThan(110_000);
    expect(window!.nextFreeInMs).toBeGreaterThan(50_000);
    // The second limited task waits in the delayed set on this window.
    expect(window!.waiting).toBe(1);
    expect(inspected!.retrying).toBe(0);
    expect(limited.map((r) => r.id)).toHaveLength(2);

    const [dead] = await inspector.deadLetters('inspected');
    expect(dead).toMatchObject({ queue: 'inspected', id: 'ghost-id', reason: 'the wait list names a task with no record' });

    // Release: refused for another holder, done for the one that holds it, then gone.
    expect(await inspector.releaseLock(lock!.key, 'someone-else')).toEqual({ released: false, reason: 'held-by-another', holder: building.id });
    expect(await inspector.releaseLock(lock!.key, building.id)).toEqual({ released: true });
    expect(await inspector.releaseLock(lock!.key, building.id)).toEqual({ released: false, reason: 'gone' });
    expect(await inspector.locks('inspected')).toEqual([]);
    // The lock is free for a new task while the old holder still runs.
    const again = await svc.build.delay('q3');
    expect(again.duplicate).toBe(false);
    await expect(inspector.releaseLock('other-prefix:{x}:lock:a', 'id')).rejects.toThrow(/lock key of this prefix/);
  });

  it('retries a dead-lettered task once a worker runs it; drops letters; leaves what cannot be retried', { timeout: 30_000 }, async () => {
    const h = fresh();
    // A worker that does not run LateService.arrive fails it at once (no grace) and dead-letters it.
    const stranger = new Worker({ connection: h.connection(), prefix: h.prefix, services: [], queues: ['inspected-late'], unknownTaskGrace: 0 });
    const d = new Dispatcher({ connection: h.connection(), prefix: h.prefix });
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    open.push(d, inspector);
    await stranger.start();
    const sent = await d.tasks(LateService).arrive.delay(41);
    await expect(sent.get({ timeout: 20 })).rejects.toThrow(/UnknownTaskError|no task named/);
    await h.admin.rpush(`${h.prefix}:{inspected-late}:wait`, 'ghost-late');
    const letters = await waitFor(async () => {
      const l = await inspector.deadLetters('inspected-late');
      return l.length === 2 ? l : undefined;
    }, { what: 'two dead letters' });
    await stranger.close();
    // Now a worker that runs the task.
    const worker = new Worker({ connection: h.connection(), prefix: h.prefix, services: [new LateService()], queues: ['inspected-late'] });
    open.push(worker);
    await worker.start();
    const result = await inspector.retryDead('inspected-late', letters);
    expect(result).toEqual({ done: 1, skipped: [{ id: 'ghost-late', reason: 'not-failed', state: undefined }] });
    expect(await sent.get({ timeout: 20 })).toBe(42);
    expect(await h.admin.ttl(`${h.prefix}:{inspected-late}:t:${sent.id}`)).toBeGreaterThan(0); // expires again once ended
    // The same letter again: its task has not failed (it succeeded), so nothing happens.
    expect((await inspector.retryDead('inspected-late', letters.filter((l) => l.id === sent.id))).skipped).toEqual([
      { id: sent.id, reason: 'not-failed', state: 'SUCCESS' },
    ]);
    // Dropping what is left empties the list; dropping a letter again finds it gone.
    const ghost = letters.filter((l) => l.id === 'ghost-late');
    expect(await inspector.dropDead('inspected-late', 'all')).toEqual({ done: 1, skipped: [] });
    expect(await inspector.deadLetters('inspected-late')).toEqual([]);
    expect(await inspector.dropDead('inspected-late', ghost)).toEqual({ done: 0, skipped: [{ id: 'ghost-late', reason: 'gone' }] });
    await expect(inspector.retryDead('default', letters)).rejects.toThrow(/takes letters deadLetters\('default'\) gave/);
  });

  it('counts waiting tasks without the wake markers anywhere in the list; names the task of a lock from its holder, whatever the colons', { timeout: 30_000 }, async () => {
    const h = fresh();
    const d = new Dispatcher({ connection: h.connection(), prefix: h.prefix });
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    open.push(d, inspector);
    // No worker on this queue: 3 tasks, a countdown task (a wake marker at the head), 2 tasks,
    // an earlier countdown task (another marker): 5 waiting, 2 markers among them.
    const send = (countdown?: number) => d.send('Nobody.listens', [countdown ?? 0], { queue: 'inspected-markers', ...(countdown ? { countdown } : {}) });
    for (let i = 0; i < 3; i++) await send();
    await send(600);
    for (let i = 0; i < 2; i++) await send();
    await send(300);
    const wait = await h.admin.lrange(`${h.prefix}:{inspected-markers}:wait`, 0, -1);
    expect(wait.filter((id) => id === '')).toHaveLength(2);
    const [stats] = await inspector.queues(['inspected-markers']);
    expect(stats).toMatchObject({ waiting: 5, delayed: 2 });

    // A gate of this test's own (the helpers open the gates left shut after each test).
    held = gate();
    const worker = new Worker({ connection: h.connection(), prefix: h.prefix, services: [new ColonNames()], queues: ['inspected-colon'] });
    open.push(worker);
    await worker.start();
    const holder = await d.tasks(ColonNames).a.delay('b:c');
    await waitFor(async () => (await holder.status()) === 'STARTED', { what: 'the holder to start' });
    const [lock] = await inspector.locks('inspected-colon');
    expect(lock).toMatchObject({ task: 'insp:a', lockKey: 'b:c', holder: holder.id });
  });

  it('a worker closed while it starts, or with a tick in flight, leaves no registration behind', { timeout: 30_000 }, async () => {
    const h = fresh();
    for (let i = 0; i < 5; i++) {
      const w = new Worker({ connection: h.connection(), prefix: h.prefix, services: [], leaseDuration: '300ms' });
      const starting = w.start().catch(() => undefined);
      // Close at once (while it starts), or once it has renewed its registration i times, so
      // that a tick (every 100 ms) may be in flight.
      if (i > 0) {
        let renewals = 0;
        let last = '';
        await waitFor(async () => {
          const score = (await h.admin.zscore(`${h.prefix}:{default}:workers`, w.id)) ?? '';
          if (score !== '' && score !== last) {
            renewals++;
            last = score;
          }
          return renewals > i;
        }, { timeout: 10_000, interval: 10, what: `${i} renewals of the registration` });
      }
      await w.close();
      await starting;
      expect(await h.admin.zrange(`${h.prefix}:{default}:workers`, 0, -1)).toEqual([]);
    }
  });

  it('counts runs per second over 1, 5 and 15 minutes and the tasks waiting to retry; a task\'s info lists every attempt', { timeout: 30_000 }, async () => {
    const h = fresh();
    const worker = new Worker({ connection: h.connection(), prefix: h.prefix, services: [new Counted()], queues: ['inspected-rate'] });
    const d = new Dispatcher({ connection: h.connection(), prefix: h.prefix });
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    open.push(worker, d, inspector);
    await worker.start();
    const svc = d.tasks(Counted);
    await Promise.all((await svc.quick.delayMany(Array.from({ length: 30 }, (_, i) => [i] as [number]))).map((r) => r.get()));
    const twice = await svc.twice.delay();
    expect(await twice.get({ timeout: 10 })).toBe('third');
    const later = await svc.later.delay();
    await waitFor(async () => (await later.status()) === 'RETRY', { what: 'the task to wait for its retry' });

    const [stats] = await inspector.queues(['inspected-rate']);
    // 30 + 3 runs of twice + 1 of later ended: 34 in the last minute, 3 of them failed (retried).
    // A window is read from the start of its first bucket, so it covers 60 to 70 seconds.
    expect(stats!.tasksPerSecond.m1).toBeGreaterThanOrEqual(Math.floor((34 / 70) * 100) / 100);
    expect(stats!.tasksPerSecond.m1).toBeLessThanOrEqual(Math.ceil((34 / 60) * 100) / 100);
    expect(stats!.tasksPerSecond.m15).toBeLessThan(stats!.tasksPerSecond.m1);
    expect(stats!.errorsPerSecond.m1).toBeGreaterThanOrEqual(Math.floor((3 / 70) * 100) / 100);
    expect(stats!.errorsPerSecond.m1).toBeLessThanOrEqual(Math.ceil((3 / 60) * 100) / 100);
    expect(stats).toMatchObject({ delayed: 1, retrying: 1 });
    expect(failures).toBe(1);

    const info = await twice.info();
    expect(info.history.map((a) => [a.attempt, a.outcome, a.error?.message, a.backoffMs, a.worker])).toEqual([
      [1, 'retried', 'attempt 1 fails', 30, worker.id],
      [2, 'retried', 'attempt 2 fails', 30, worker.id],
      [3, 'SUCCESS', undefined, undefined, worker.id],
    ]);
    for (const a of info.history) expect(a.finishedAt!.getTime()).toBeGreaterThanOrEqual(a.startedAt!.getTime());
    const waiting = await later.info();
    expect(waiting.history.map((a) => [a.attempt, a.outcome, a.error])).toEqual([[1, 'retried', { name: 'TypeError', message: 'retried in an hour' }]]);
  });
});
