/**
 * Edge cases: ioredis keyPrefix, forget() on live tasks, close() during start(), get() while
 * Redis is unreachable, a resolve() that returns nothing, an unknown task's message, the due
 * time of a rate-limited task, and a reused taskId that hits a lock; then custom task ids
 * reused across queues or after a revoke, and closing (get() after close(), close({ timeout })
 * while Redis is down).
 */
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { ConfigError, currentTask, Dispatcher, Task, TimeoutError, Worker } from 'heimdall-tasks';
import { OwnRedis } from '../fixtures/faults/control.js';
import { nextEvent, useHarness, waitFor } from '../helpers.js';

class EdgeService {
  @Task({ unique: true })
  async once(n: number): Promise<number> {
    return n;
  }

  @Task({ rateLimit: [1, 60] })
  async scarce(n: number): Promise<number> {
    return n;
  }
}

class ResolvedService {
  @Task()
  async ping(): Promise<string> {
    return 'pong';
  }
}

describe('edge cases', () => {
  const fresh = useHarness('edge');

  it('refuses an ioredis keyPrefix, which the scripts could not follow', async () => {
    const h = fresh();
    expect(() => new Dispatcher({ connection: { host: '127.0.0.1', keyPrefix: 'app:' } })).toThrow(
      /keyPrefix 'app:'.*pass prefix: 'app'/,
    );
    const client = new Redis(h.url, { keyPrefix: 'app:', lazyConnect: true });
    try {
      expect(() => new Worker({ connection: client, prefix: h.prefix, services: [] })).not.toThrow();
      const w = new Worker({ connection: client, prefix: h.prefix, services: [] });
      await expect(w.start()).rejects.toThrow(ConfigError);
      expect(() => new Dispatcher({ connection: client })).toThrow(ConfigError);
    } finally {
      client.disconnect();
    }
  });

  it('forget() refuses a task that has not ended and keeps its lock', async () => {
    const h = fresh();
    const edge = h.dispatcher().tasks(EdgeService);
    const first = await edge.once.delay(1);
    await expect(first.forget()).rejects.toThrow(/has not ended/);
    const lockKey = await h.recordLock(first.id);
    expect(lockKey).toMatch(new RegExp(`^${h.prefix}:\\{default\\}:lock:EdgeService\\.once:[0-9a-f]{40}$`));
    expect(await h.admin.get(lockKey!)).toBe(first.id);
    const worker = h.worker({ services: [new EdgeService()] });
    await worker.start();
    expect(await first.get({ timeout: 10 })).toBe(1);
    await first.forget();
    expect(await h.admin.exists(h.taskKey(first.id))).toBe(0);
    expect(await first.status()).toBe('PENDING');
  });

  it('close() during start() leaves nothing running or connected', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new EdgeService()] });
    const starting = worker.start();
    await worker.close();
    await starting;
    expect(worker.activeCount).toBe(0);
    // The harness fails the test if any connection of this prefix is still open.
    await expect(worker.start()).rejects.toThrow(/was closed; create a new Worker/);
  });

  it('get({ timeout }) keeps its deadline while Redis is unreachable', async () => {
    // Port 1 on loopback refuses connections; the subscriber keeps retrying.
    const d = new Dispatcher({ connection: 'redis://127.0.0.1:1', prefix: 'unreachable' });
    try {
      const began = Date.now();
      await expect(d.result('no-such-task').get({ timeout: 0.5 })).rejects.toThrow(TimeoutError);
      expect(Date.now() - began).toBeLessThan(10_000);
    } finally {
      await d.close();
    }
  });

  it('a resolve() that returns nothing fails the task with a message naming the class', async () => {
    const h = fresh();
    const worker = h.worker({ services: [ResolvedService], resolve: () => undefined as unknown as object });
    await worker.start();
    const handle = await h.dispatcher().tasks(ResolvedService).ping.delay();
    const failed = await nextEvent(worker, 'failed', (e) => e.id === handle.id);
    expect(failed.error.name).toBe('ConfigError');
    expect(failed.error.message).toBe('resolve(ResolvedService) returned undefined; it must return an instance of the class');
  });

  it('an unknown task name fails with advice on registering it (unknownTaskGrace 0: at once)', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new EdgeService()], unknownTaskGrace: 0 });
    await worker.start();
    const handle = await h.dispatcher().send('Nobody.knows', [1]);
    const failed = await nextEvent(worker, 'failed', (e) => e.id === handle.id);
    expect(failed.error.name).toBe('UnknownTaskError');
    expect(failed.error.message).toMatch(/no task named 'Nobody\.knows'.*list its class \(or an instance\) in services/);
  });

  it('a rate-limited task records its new due time', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new EdgeService()] });
    await worker.start();
    const edge = h.dispatcher().tasks(EdgeService);
    const a = await edge.scarce.delay(1);
    expect(await a.get({ timeout: 10 })).toBe(1);
    const b = await edge.scarce.delay(2);
    const limited = await nextEvent(worker, 'rateLimited', (e) => e.id === b.id);
    const info = await b.info();
    expect(info.state).toBe('PENDING');
    const due = await h.admin.zscore(h.queueKey('delayed'), b.id);
    expect(info.dueAt?.getTime()).toBe(Number(due));
    expect(limited.delayMs).toBeGreaterThan(50_000);
  });

  it('a reused taskId that meets a held lock keeps the old record', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new EdgeService()] });
    await worker.start();
    const d = h.dispatcher();
    const edge = d.tasks(EdgeService);
    const done = await edge.once.applyAsync([5], { taskId: 'reused-id' });
    expect(await done.get({ timeout: 10 })).toBe(5);
    await worker.close();
    const holder = await edge.once.delay(6);
    const again = await edge.once.applyAsync([6], { taskId: 'reused-id' });
    expect(again.duplicate).toBe(true);
    expect(again.id).toBe(holder.id);
    expect((await d.result('reused-id').info()).result).toBe(5);
  });
});

class TwoQueueService {
  @Task({ queue: 'email' })
  async send(label: string): Promise<string> {
    const signal = currentTask().signal;
    await new Promise<void>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error)));
    return `sent ${label}`;
  }

  @Task({ queue: 'billing' })
  async charge(label: string): Promise<string> {
    return `charged ${label}`;
  }

  @Task({ queue: 'email' })
  async hold(): Promise<string> {
    await new Promise<void>((resolve) => heldTasks.add(resolve));
    return 'held';
  }
}
const heldTasks = new Set<() => void>();

describe('edge cases: a custom taskId on two queues or reused after a revoke, and closing', () => {
  const fresh = useHarness('edge-ids');

  it('one custom taskId on two queues: each task is its own (run, revoke, end)', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new TwoQueueService()], queues: ['email', 'billing'] });
    const errors: Error[] = [];
    worker.on('error', (e) => errors.push(e));
    await worker.start();
    const d = h.dispatcher();
    const svc = d.tasks(TwoQueueService);
    const email = await svc.send.applyAsync(['a'], { taskId: 'order-123' });
    await nextEvent(worker, 'started', (e) => e.queue === 'email');
    const billing = await svc.charge.applyAsync(['b'], { taskId: 'order-123' });
    expect(await billing.get({ timeout: 10 })).toBe('charged b');
    expect(await email.status()).toBe('STARTED');
    // A revoke on billing's channel (an ended task) does not touch email's task.
    expect(await billing.revoke()).toBe('SUCCESS');
    expect(await email.revoke()).toBe('STARTED');
    await expect(email.get({ timeout: 10 })).rejects.toThrow(/was revoked/);
    expect(errors).toEqual([]);
  });

  it('a stale wait-list entry does not start a reused id before its countdown', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const edge = d.tasks(EdgeService);
    const first = await edge.scarce.applyAsync([1], { taskId: 'reused' });
    expect(await first.revoke()).toBe('REVOKED'); // its id stays in the wait list
    const second = await edge.scarce.applyAsync([1], { taskId: 'reused', countdown: 3600 });
    const worker = h.worker({ services: [new EdgeService()] });
    await worker.start();
    // The fetch that pops the stale entry must leave the task delayed.
    await waitFor(async () => (await h.admin.llen(h.queueKey('wait'))) === 0, { what: 'the stale entry to be popped' });
    expect(await second.status()).toBe('PENDING');
    expect(await h.admin.zscore(h.queueKey('delayed'), 'reused')).toBe(String((await second.info()).dueAt!.getTime()));
  });

  it('get() after close() says the dispatcher is closed and opens nothing', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const handle = await d.tasks(EdgeService).scarce.delay(3);
    await d.close();
    await expect(handle.get({ timeout: 1 })).rejects.toThrow(/this dispatcher is closed/);
  });

  it('close({ timeout }) resolves while Redis is down, leaving unstored ends to recovery', async () => {
    const redis = await OwnRedis.create();
    try {
      const worker = new Worker({ connection: redis.url, prefix: 'down', services: [new TwoQueueService()], queues: ['email'] });
      worker.on('error', () => undefined);
      await worker.start();
      const d = new Dispatcher({ connection: redis.url, prefix: 'down' });
      await d.tasks(TwoQueueService).hold.delay();
      await waitFor(() => heldTasks.size === 1, { what: 'the task to start' });
      await d.close();
      await redis.stop();
      for (const release of heldTasks) release(); // it ends while Redis is down: its end cannot be stored
      heldTasks.clear();
      const began = Date.now();
      await worker.close({ timeout: 0.2 });
      expect(Date.now() - began).toBeLessThan(15_000);
    } finally {
      await redis.dispose();
    }
  });
});
