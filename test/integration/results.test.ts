/**
 * The result backend: states, info(), failures with tracebacks, get() with a timeout,
 * forget(), expiry of records, unstorable results, and reading a result from anywhere.
 */
import { describe, expect, it } from 'vitest';
import { Dispatcher, MalformedTaskError, Task, TaskFailedError, TimeoutError } from 'heimdall-tasks';
import { FIELDS } from '../../src/core/protocol/task-fields.js';
import { gate, type Harness, nextEvent, useHarness } from '../helpers.js';

// A named function, so the traceback must mention it.
function explodeWhileBuildingInvoice(invoice: number): never {
  throw new RangeError(`invoice ${invoice} is out of range`);
}

class ResultsService {
  readonly gate = gate();

  @Task()
  async gated(label: string): Promise<{ label: string; items: number[] }> {
    await this.gate.promise;
    return { label, items: [1, 2, 3] };
  }

  @Task()
  async add(a: number, b: number): Promise<number> {
    return a + b;
  }

  @Task()
  async invoice(n: number): Promise<number> {
    return explodeWhileBuildingInvoice(n);
  }

  @Task()
  async returnsDate(): Promise<Date> {
    return new Date(0);
  }

  @Task()
  async returnsMap(): Promise<Map<string, number>> {
    return new Map([['a', 1]]);
  }

  @Task()
  async returnsNestedDate(): Promise<{ ok: boolean; when: Date }> {
    return { ok: true, when: new Date(0) };
  }

  @Task()
  async nothing(): Promise<void> {}

  @Task({ resultExpires: '10s' })
  async keptTenSeconds(): Promise<string> {
    return 'kept';
  }
}

class ReportsQueueService {
  @Task({ queue: 'reports' })
  async build(n: number): Promise<string> {
    return `report ${n}`;
  }
}

describe('results', () => {
  const fresh = useHarness('results');

  it('goes PENDING -> STARTED -> SUCCESS, and info() tells the whole story', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(ResultsService);
    const handle = await tasks.gated.delay('q3');
    expect(handle.name).toBe('ResultsService.gated');
    expect(handle.duplicate).toBe(false);
    expect(await handle.status()).toBe('PENDING');
    expect([await handle.ready(), await handle.successful(), await handle.failed()]).toEqual([false, false, false]);
    const pending = await handle.info();
    expect(pending).toMatchObject({ id: handle.id, name: 'ResultsService.gated', state: 'PENDING', args: ['q3'], attempts: 0 });
    expect(pending.createdAt).toBeInstanceOf(Date);
    expect(pending.startedAt).toBeUndefined();

    const service = new ResultsService();
    const worker = h.worker({ services: [service] });
    const started = nextEvent(worker, 'started', (e) => e.id === handle.id);
    await worker.start();
    expect(await started).toEqual({ id: handle.id, name: 'ResultsService.gated', queue: 'default', args: ['q3'], attempt: 1 });
    expect(await handle.status()).toBe('STARTED');
    expect(await handle.ready()).toBe(false);
    const running = await handle.info();
    expect(running.state).toBe('STARTED');
    expect(running.worker).toBe(worker.id);
    expect(running.attempts).toBe(1);
    expect(running.finishedAt).toBeUndefined();

    service.gate.open();
    expect(await handle.get({ timeout: 10 })).toEqual({ label: 'q3', items: [1, 2, 3] });
    expect(await handle.status()).toBe('SUCCESS');
    expect([await handle.ready(), await handle.successful(), await handle.failed()]).toEqual([true, true, false]);

    const info = await handle.info();
    expect(info).toMatchObject({
      id: handle.id,
      name: 'ResultsService.gated',
      state: 'SUCCESS',
      args: ['q3'],
      result: { label: 'q3', items: [1, 2, 3] },
      error: undefined,
      revokeReason: undefined,
      attempts: 1,
      worker: worker.id,
    });
    const { createdAt, startedAt, finishedAt } = info;
    expect(createdAt).toBeInstanceOf(Date);
    expect(startedAt).toBeInstanceOf(Date);
    expect(finishedAt).toBeInstanceOf(Date);
    expect(createdAt!.getTime()).toBe(pending.createdAt!.getTime());
    expect(createdAt!.getTime()).toBeLessThanOrEqual(startedAt!.getTime());
    expect(startedAt!.getTime()).toBeLessThanOrEqual(finishedAt!.getTime());
  });

  it('FAILURE keeps the error name, message and traceback; get() rejects with TaskFailedError', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(ResultsService);
    const worker = h.worker({ services: [new ResultsService()] });
    await worker.start();
    const failed = nextEvent(worker, 'failed');
    const handle = await tasks.invoice.delay(77);

    const err = await handle.get({ timeout: 10 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TaskFailedError);
    const tf = err as TaskFailedError;
    expect(tf.code).toBe('HEIMDALL_TASK_FAILED');
    expect(tf.taskId).toBe(handle.id);
    expect(tf.remoteName).toBe('RangeError');
    expect(tf.remoteMessage).toBe('invoice 77 is out of range');
    expect(tf.traceback).toContain('RangeError: invoice 77 is out of range');
    expect(tf.traceback).toContain('explodeWhileBuildingInvoice');
    expect(tf.message).toContain('RangeError: invoice 77 is out of range');

    const event = await failed;
    expect(event.id).toBe(handle.id);
    expect(event.error.name).toBe('RangeError');

    const info = await handle.info();
    expect(info.state).toBe('FAILURE');
    expect(info.error?.name).toBe('RangeError');
    expect(info.error?.message).toBe('invoice 77 is out of range');
    expect(info.error?.traceback).toBe(tf.traceback);
    expect(info.result).toBeUndefined();
    expect(info.attempts).toBe(1);
    expect([await handle.ready(), await handle.successful(), await handle.failed()]).toEqual([true, false, true]);
  });

  it('an unknown id is PENDING', async () => {
    const h = fresh();
    const unknown = h.dispatcher().result('no-such-task');
    expect(await unknown.status()).toBe('PENDING');
    const info = await unknown.info();
    expect(info).toMatchObject({ id: 'no-such-task', name: undefined, state: 'PENDING', args: undefined, attempts: 0 });
    expect(await unknown.ready()).toBe(false);
  });

  it('a SUCCESS whose stored result is not JSON: get() rejects with MalformedTaskError naming the task, info() shows no result', async () => {
    const h = fresh();
    // A record another writer damaged: SUCCESS with a result that is not JSON.
    await h.admin.hset(h.taskKey('damaged'), FIELDS.state, 'SUCCESS', FIELDS.result, '{not json');
    const r = h.dispatcher().result('damaged');
    const err = await r.get({ timeout: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MalformedTaskError);
    expect((err as Error).message).toMatch(/task damaged is SUCCESS but its stored result is not JSON: \{not json/);
    expect((await r.info()).result).toBeUndefined();
  });

  it('get({ timeout: 0.3 }) on a task nobody runs rejects with TimeoutError', async () => {
    const h = fresh();
    const handle = await h.dispatcher().tasks(ResultsService).add.delay(1, 2);
    const began = Date.now();
    const err = await handle.get({ timeout: 0.3 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const waited = Date.now() - began;
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as TimeoutError).code).toBe('HEIMDALL_TIMEOUT');
    expect((err as TimeoutError).message).toContain(handle.id);
    expect(waited).toBeGreaterThanOrEqual(290);
    expect(await handle.status()).toBe('PENDING');
  });

  it('forget() deletes the record', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new ResultsService()] });
    await worker.start();
    const handle = await h.dispatcher().tasks(ResultsService).add.delay(2, 2);
    expect(await handle.get({ timeout: 10 })).toBe(4);
    expect(await h.admin.exists(h.taskKey(handle.id))).toBe(1);
    await handle.forget();
    expect(await h.admin.exists(h.taskKey(handle.id))).toBe(0);
    expect(await handle.status()).toBe('PENDING');
  });

  it('records expire: one day by default, the worker resultExpires, and a task-level resultExpires over it', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(ResultsService);

    const byDefault = h.worker({ services: [new ResultsService()] });
    await byDefault.start();
    const a = await tasks.add.delay(1, 1);
    expect(await a.get({ timeout: 10 })).toBe(2);
    const dayTtl = await h.admin.pttl(h.taskKey(a.id));
    expect(dayTtl).toBeGreaterThan(86_400_000 - 60_000);
    expect(dayTtl).toBeLessThanOrEqual(86_400_000);
    await byDefault.close();

    // While queued (and running) a record does not expire.
    const queued = await tasks.add.delay(2, 2);
    expect(await h.admin.pttl(h.taskKey(queued.id))).toBe(-1);
    const short = h.worker({ services: [new ResultsService()], resultExpires: '2s' });
    await short.start();
    expect(await queued.get({ timeout: 10 })).toBe(4);
    const ttl = await h.admin.pttl(h.taskKey(queued.id));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(2_000);

    const kept = await tasks.keptTenSeconds.delay();
    expect(await kept.get({ timeout: 10 })).toBe('kept');
    const keptTtl = await h.admin.pttl(h.taskKey(kept.id));
    expect(keptTtl).toBeGreaterThan(2_000);
    expect(keptTtl).toBeLessThanOrEqual(10_000);
  });

  it('a return value that cannot be stored makes the task FAILURE with a SerializationError naming `result`', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(ResultsService);
    const worker = h.worker({ services: [new ResultsService()] });
    await worker.start();

    const cases = [
      { handle: await tasks.returnsDate.delay(), path: 'result', kind: 'Date' },
      { handle: await tasks.returnsMap.delay(), path: 'result', kind: 'Map' },
      { handle: await tasks.returnsNestedDate.delay(), path: 'result.when', kind: 'Date' },
    ];
    for (const { handle, path, kind } of cases) {
      const err = await handle.get({ timeout: 10 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, `${handle.name} rejects`).toBeInstanceOf(TaskFailedError);
      const tf = err as TaskFailedError;
      expect(tf.remoteName).toBe('SerializationError');
      expect(tf.remoteMessage.startsWith(`${path} is a ${kind}`), tf.remoteMessage).toBe(true);
      const info = await handle.info();
      expect(info.state).toBe('FAILURE');
      expect(info.error?.name).toBe('SerializationError');
      expect(info.result).toBeUndefined();
      expect(await handle.failed()).toBe(true);
    }

    // undefined (a void task) is stored as no result, and is a SUCCESS.
    const nothing = await tasks.nothing.delay();
    expect(await nothing.get({ timeout: 10 })).toBeUndefined();
    expect(await nothing.status()).toBe('SUCCESS');
  });

  it('dispatcher.result(id) on a fresh Dispatcher reads the same state', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new ResultsService()] });
    await worker.start();
    const handle = await h.dispatcher().tasks(ResultsService).add.delay(20, 22);
    expect(await handle.get({ timeout: 10 })).toBe(42);

    const other = h.dispatcher();
    const seen = other.result<number>(handle.id);
    expect(seen.id).toBe(handle.id);
    expect(seen.queue).toBe('default');
    expect(await seen.status()).toBe('SUCCESS');
    expect(await seen.get({ timeout: 1 })).toBe(42);
    expect(await seen.info()).toEqual(await handle.info());
  });

  it("a task on queue 'reports' gets an id that carries the queue, so result(id) finds it without options", async () => {
    const h = fresh();
    const handle = await h.dispatcher().tasks(ReportsQueueService).build.delay(12);
    expect(handle.queue).toBe('reports');
    expect(handle.id).toMatch(/^reports:[0-9A-Za-z]{22}$/);
    expect(await h.admin.exists(h.taskKey(handle.id, 'reports'))).toBe(1);
    expect(await h.admin.lrange(h.queueKey('wait', 'reports'), 0, -1)).toEqual([handle.id]);

    const worker = h.worker({ services: [new ReportsQueueService()], queues: ['reports'] });
    await worker.start();
    expect(await handle.get({ timeout: 10 })).toBe('report 12');

    const elsewhere = new Dispatcher({ connection: h.connection(), prefix: h.prefix });
    try {
      const found = elsewhere.result<string>(handle.id);
      expect(found.queue).toBe('reports');
      expect(await found.status()).toBe('SUCCESS');
      expect((await found.info()).result).toBe('report 12');
    } finally {
      await elsewhere.close();
    }
    // Ids of the default queue carry no queue.
    const plain = await h.dispatcher().tasks(ResultsService).add.delay(0, 0);
    expect(plain.id).toMatch(/^[0-9A-Za-z]{22}$/);
  });
});
