/**
 * Countdown and eta on the Redis clock, waking an idle worker for a delayed task, sending by
 * name, and chosen task ids.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, Task, TaskFailedError, type TaskResult } from 'heimdall-tasks';
import { recordEvents, redisNowMs, useHarness, waitFor, type Harness } from '../helpers.js';

/** True once the worker's blocking connection is parked in BLMOVE on the server. */
async function workerBlocked(h: Harness): Promise<boolean> {
  const list = (await h.admin.client('LIST')) as string;
  return list
    .split('\n')
    .some((line) => line.includes(`name=heimdall:${h.prefix}:worker:blocking `) && / flags=\S*b/.test(line) && / cmd=blmove/.test(line));
}

/** startedAt - dueAt of a finished task, on the server clock. */
async function lateness(handle: TaskResult<unknown>): Promise<number> {
  const info = await handle.info();
  expect(info.state, `${handle.id} ran`).toBe('SUCCESS');
  expect(info.dueAt, `${handle.id} had a due time`).toBeInstanceOf(Date);
  return info.startedAt!.getTime() - info.dueAt!.getTime();
}

class DelaysService {
  @Task()
  async stamp(label: string): Promise<string> {
    return label;
  }
}

class DelaysMailer {
  @Task()
  async deliver(to: string): Promise<string> {
    return `sent to ${to}`;
  }

  @Task({ unique: true })
  async digest(day: string): Promise<string> {
    return `digest ${day}`;
  }
}

describe('delays, send and task ids', () => {
  const fresh = useHarness('delays');

  it('countdown: starts no sooner than 1 s after dispatch, by the server clock', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new DelaysService()] });
    await worker.start();
    const handle = await h.dispatcher().tasks(DelaysService).stamp.applyAsync(['later'], { countdown: 1 });
    expect(await handle.status()).toBe('PENDING');
    const queued = await handle.info();
    expect(await h.admin.zscore(h.queueKey('delayed'), handle.id)).toBe(String(queued.dueAt!.getTime()));
    expect(await handle.get({ timeout: 10 })).toBe('later');

    const info = await handle.info();
    expect(info.dueAt!.getTime() - info.createdAt!.getTime()).toBe(1000);
    expect(info.startedAt!.getTime() - info.createdAt!.getTime()).toBeGreaterThanOrEqual(1000);
  });

  it('eta: starts no sooner than the given moment', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new DelaysService()] });
    await worker.start();
    const eta = new Date(Date.now() + 800);
    const handle = await h.dispatcher().tasks(DelaysService).stamp.applyAsync(['at eta'], { eta });
    expect(await handle.get({ timeout: 10 })).toBe('at eta');
    const info = await handle.info();
    expect(info.dueAt!.getTime()).toBe(eta.getTime());
    expect(info.startedAt!.getTime()).toBeGreaterThanOrEqual(eta.getTime());
    // eta wins over countdown
    const both = await h.dispatcher().tasks(DelaysService).stamp.applyAsync(['both'], { eta: Date.now() + 300, countdown: 3600 });
    expect(await both.get({ timeout: 10 })).toBe('both');
  });

  it('an idle worker blocked on the queue wakes for a countdown task and starts it on time', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(DelaysService);
    const worker = h.worker({ services: [new DelaysService()] });
    await worker.start();
    await waitFor(() => workerBlocked(h), { timeout: 5_000, what: 'the worker to block in BLMOVE' });
    // The block just began, so its 5 s safety timeout would fire ~4 s after this task is due.
    const handle = await tasks.stamp.applyAsync(['wake up'], { countdown: 1 });
    expect(await handle.get({ timeout: 10 })).toBe('wake up');
    const late = await lateness(handle);
    expect(late).toBeGreaterThanOrEqual(0);
    expect(late).toBeLessThan(1500);

    // A worker sleeping until a far-off task must also wake for an earlier one sent later.
    const far = await tasks.stamp.applyAsync(['far'], { countdown: 3600 });
    await waitFor(() => workerBlocked(h), { timeout: 5_000, what: 'the worker to block again' });
    const early = await tasks.stamp.applyAsync(['early'], { countdown: 1 });
    expect(await early.get({ timeout: 10 })).toBe('early');
    const lateEarly = await lateness(early);
    expect(lateEarly).toBeGreaterThanOrEqual(0);
    expect(lateEarly).toBeLessThan(1500);
    expect(await far.status()).toBe('PENDING');
  });

  it('many delayed tasks with various countdowns all run, none before its time', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(DelaysService);
    const worker = h.worker({ services: [new DelaysService()], concurrency: 4 });
    const { succeeded } = recordEvents(worker);
    await worker.start();
    const countdowns = [900, 100, 1300, 400, 50, 700, 1500, 250, 1100, 600, 150, 1200, 350, 800, 1000, 450, 200, 1400, 550, 0];
    const handles = await Promise.all(
      countdowns.map((ms, i) => tasks.stamp.applyAsync([`t${i}`], ms === 0 ? {} : { countdown: `${ms}ms` })),
    );
    await waitFor(() => succeeded.length === countdowns.length, { timeout: 15_000, what: 'all 20 delayed tasks to succeed' });
    for (const [i, handle] of handles.entries()) {
      const info = await handle.info();
      expect(info.state).toBe('SUCCESS');
      expect(info.result).toBe(`t${i}`);
      const wanted = info.createdAt!.getTime() + countdowns[i]!;
      expect(info.startedAt!.getTime(), `t${i} started no sooner than its countdown`).toBeGreaterThanOrEqual(wanted);
    }
    expect(new Set(succeeded.map((e) => e.id))).toEqual(new Set(handles.map((r) => r.id)));
  });

  it('a worker started after the due time runs the delayed tasks at once', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(DelaysService);
    const handles = await Promise.all([1, 2, 3, 4, 5].map((i) => tasks.stamp.applyAsync([`d${i}`], { countdown: '200ms' })));
    const due = Math.max(...(await Promise.all(handles.map(async (r) => (await r.info()).dueAt!.getTime()))));
    await waitFor(async () => (await redisNowMs(h.admin)) > due, { timeout: 5_000, what: 'the due time to pass' });

    const worker = h.worker({ services: [new DelaysService()] });
    const before = await redisNowMs(h.admin);
    await worker.start();
    expect(await Promise.all(handles.map((r) => r.get({ timeout: 10 })))).toEqual(['d1', 'd2', 'd3', 'd4', 'd5']);
    for (const r of handles) {
      const info = await r.info();
      expect(info.startedAt!.getTime()).toBeGreaterThanOrEqual(before);
      // The first fetch moves due tasks; nothing waits for a block timeout (5 s).
      expect(info.startedAt!.getTime() - before).toBeLessThan(2_000);
    }
  });

  it("send('Name', args, { queue }) dispatches by registry name", async () => {
    const h = fresh();
    const dispatcher = h.dispatcher();
    // unknownTaskGrace 0: the name nobody declares below fails at once.
    const worker = h.worker({ services: [new DelaysMailer()], queues: ['mail'], unknownTaskGrace: 0 });
    await worker.start();

    const handle = await dispatcher.send<string>('DelaysMailer.deliver', ['ops@example.com'], { queue: 'mail' });
    expect(handle.id).toMatch(/^mail:/);
    expect(handle.name).toBe('DelaysMailer.deliver');
    expect(handle.queue).toBe('mail');
    expect(await handle.get({ timeout: 10 })).toBe('sent to ops@example.com');
    expect((await handle.info()).args).toEqual(['ops@example.com']);

    // The options of a task this process knows apply to send() too.
    const a = await dispatcher.send('DelaysMailer.digest', ['monday'], { queue: 'mail', countdown: 3600 });
    const b = await dispatcher.send('DelaysMailer.digest', ['monday'], { queue: 'mail' });
    expect(a.duplicate).toBe(false);
    expect(b.duplicate).toBe(true);
    expect(b.id).toBe(a.id);

    // A name no worker knows ends in FAILURE that says so.
    const unknown = await dispatcher.send('Nobody.home', [1], { queue: 'mail' });
    const err = await unknown.get({ timeout: 10 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TaskFailedError);
    expect((err as TaskFailedError).remoteName).toBe('UnknownTaskError');
    expect((err as TaskFailedError).remoteMessage).toContain('Nobody.home');
  });

  it('taskId: a chosen id is used, cannot be reused while pending, and can be once the task ended', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(DelaysService);
    const handle = await tasks.stamp.applyAsync(['mine'], { taskId: 'invoice-2024-0001' });
    expect(handle.id).toBe('invoice-2024-0001');
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual(['invoice-2024-0001']);

    const reuse = await tasks.stamp.applyAsync(['again'], { taskId: 'invoice-2024-0001' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(reuse).toBeInstanceOf(ConfigError);
    expect((reuse as ConfigError).message).toContain('invoice-2024-0001');
    // The pending task is untouched and nothing more was queued.
    expect((await handle.info()).args).toEqual(['mine']);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(1);

    await expect(tasks.stamp.applyAsync(['x'], { taskId: 'has space' })).rejects.toBeInstanceOf(ConfigError);

    const worker = h.worker({ services: [new DelaysService()] });
    await worker.start();
    expect(await handle.get({ timeout: 10 })).toBe('mine');
    expect(await h.dispatcher().result('invoice-2024-0001').status()).toBe('SUCCESS');

    // Ended: the id may be used again, for a new run.
    const second = await tasks.stamp.applyAsync(['second'], { taskId: 'invoice-2024-0001' });
    expect(second.id).toBe('invoice-2024-0001');
    expect(await second.get({ timeout: 10 })).toBe('second');
    const info = await second.info();
    expect(info.args).toEqual(['second']);
    expect(info.attempts).toBe(1);
  });
});
