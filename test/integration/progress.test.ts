// currentTask().progress() (issue 11, point 4, first part): stored on the task for its run,
// readable with info(), emitted as the worker's progress event, throttled so a tight loop costs
// a few Redis calls a second, and its last value written before the task's end.
import { afterEach, describe, expect, it } from 'vitest';
import { currentTask, Task, TaskFailedError, Worker, type WorkerEvents } from 'heimdall-tasks';
import { createTestApp } from 'heimdall-tasks/testing';
import { gate, usePrivateRedis, waitFor } from '../helpers.js';

let held = gate();
let calls = 0;

class Reporting {
  /** Reports progress `n` times as fast as it can, then waits at 0.5 until the gate opens. */
  @Task()
  async busy(n: number): Promise<string> {
    for (let i = 1; i <= n; i++) {
      currentTask().progress((0.5 * i) / n, `step ${i} of ${n}`);
      calls++;
      if (i % 100 === 0) await new Promise((r) => setImmediate(r));
    }
    await held.promise;
    currentTask().progress(1, 'done');
    return 'finished';
  }

  /** Reports 0.9 on its first attempt and fails; the retry holds at the gate without reporting. */
  @Task({ retries: { max: 1, backoff: '50ms', jitter: false } })
  async retried(): Promise<string> {
    if (currentTask().attempt === 1) {
      currentTask().progress(0.9, 'almost done (attempt 1)');
      throw new Error('first attempt fails');
    }
    await held.promise;
    return 'second attempt';
  }

  @Task()
  async outOfRange(): Promise<void> {
    currentTask().progress(1.5);
  }
}

const fresh = usePrivateRedis('progress');
afterEach(() => {
  held.open();
  held = gate();
  calls = 0;
});

async function evalshaCalls(h: ReturnType<typeof fresh>): Promise<number> {
  const info = await h.admin.info('commandstats');
  return Number(/cmdstat_evalsha:calls=(\d+)/.exec(info)?.[1] ?? 0);
}

describe('currentTask().progress()', () => {
  it('is stored on the task and emitted; a tight loop costs a few Redis calls a second; the last value is written before the end', { timeout: 30_000 }, async () => {
    const h = fresh();
    const worker = new Worker({ connection: h.connection(), prefix: h.prefix, services: [new Reporting()] });
    const events: WorkerEvents['progress'][0][] = [];
    worker.on('progress', (e) => events.push(e));
    await worker.start();
    const d = h.dispatcher();
    try {
      const before = await evalshaCalls(h);
      const began = Date.now();
      const handle = await d.tasks(Reporting).busy.delay(5000);
      const seen = await waitFor(async () => {
        const p = (await handle.info()).progress;
        return p && p.value === 0.5 ? p : undefined;
      }, { what: 'the progress at 0.5' });
      const elapsedS = Math.max(1, (Date.now() - began) / 1000);
      const scriptCalls = (await evalshaCalls(h)) - before;
      expect(calls).toBe(5000);
      expect(events).toHaveLength(5000);
      expect(events[0]).toMatchObject({ id: handle.id, name: 'Reporting.busy', value: 0.0001, message: 'step 1 of 5000' });
      expect(seen).toEqual({ value: 0.5, message: 'step 5000 of 5000', at: expect.any(Date) });
      // 5000 reports; the writes are at most one per 250 ms, plus the enqueue, fetch and tick calls.
      expect(scriptCalls).toBeLessThanOrEqual(8 + 5 * elapsedS);

      held.open();
      expect(await handle.get({ timeout: 10 })).toBe('finished');
      expect((await handle.info()).progress).toMatchObject({ value: 1, message: 'done' });
    } finally {
      await worker.close();
    }
  });

  it("a retry does not show the progress of the attempt before it", async () => {
    const h = fresh();
    const worker = new Worker({ connection: h.connection(), prefix: h.prefix, services: [new Reporting()] });
    await worker.start();
    try {
      const handle = await h.dispatcher().tasks(Reporting).retried.delay();
      await waitFor(async () => {
        const info = await handle.info();
        return info.state === 'STARTED' && info.attempts === 2;
      }, { what: 'the second attempt to run' });
      expect((await handle.info()).progress).toBeUndefined();
      held.open();
      expect(await handle.get({ timeout: 10 })).toBe('second attempt');
    } finally {
      await worker.close();
    }
  });

  it('a value outside 0..1 is a ConfigError inside the task, which fails', async () => {
    const h = fresh();
    const worker = new Worker({ connection: h.connection(), prefix: h.prefix, services: [new Reporting()] });
    await worker.start();
    try {
      const handle = await h.dispatcher().tasks(Reporting).outOfRange.delay();
      const err = await handle.get({ timeout: 10 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TaskFailedError);
      expect(err).toMatchObject({ remoteName: 'ConfigError', remoteMessage: 'progress(value) takes a fraction from 0 to 1, got 1.5' });
    } finally {
      await worker.close();
    }
  });

  it('inline mode stores and emits it too', async () => {
    const app = await createTestApp({ services: [new Reporting()], inline: true });
    try {
      const values: number[] = [];
      app.on('progress', (e) => values.push(e.value));
      const handle = await app.tasks(Reporting).busy.delay(10);
      await waitFor(async () => (await handle.info()).progress?.value === 0.5, { what: 'the inline progress' });
      held.open();
      await handle.get({ timeout: 5 });
      expect((await handle.info()).progress).toMatchObject({ value: 1, message: 'done' });
      expect(values.at(-1)).toBe(1);
      expect(values).toHaveLength(11);
    } finally {
      await app.close();
    }
  });
});
