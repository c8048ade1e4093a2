/**
 * A task's own errors are never taken for the worker's. The worker dead-letters a task whose
 * message it cannot run, and stores a few errors of its own under names a task could also use
 * (UnknownTaskError, MalformedTaskError): it knows its own by identity, so an error a task
 * throws, whatever its class or name, ends the task as any failure does (retried per its
 * `retries`, never dead-lettered).
 */
import { describe, expect, it } from 'vitest';
import { HeimdallError, MalformedTaskError, RedisRefusedError, Task } from 'heimdall-tasks';
import { recordEvents, useHarness, waitFor } from '../helpers.js';

/** A task's own error that happens to carry the name of one of the worker's. */
class UnknownTaskError extends Error {
  override name = 'UnknownTaskError';
}

class LookalikeService {
  @Task({ retries: { max: 1, backoff: '10ms' } })
  async ownUnknown(): Promise<void> {
    throw new UnknownTaskError('a lookup of the app failed');
  }

  @Task({ retries: { max: 1, backoff: '10ms', on: [Error] } })
  async ownMalformedName(): Promise<void> {
    const e = new Error('the app found a malformed record');
    e.name = 'MalformedTaskError';
    throw e;
  }

  @Task()
  async libraryClass(): Promise<void> {
    // The library's own class, thrown by the task itself: still the task's failure.
    throw new MalformedTaskError('thrown by the task, not by the worker');
  }
}

describe("a task's own errors are never taken for the worker's", () => {
  const fresh = useHarness('own-errors');

  it('errors named UnknownTaskError or MalformedTaskError, or of the library class, end the task FAILURE after its retries, not dead-lettered', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new LookalikeService()] });
    const ev = recordEvents(worker);
    await worker.start();
    const tasks = h.dispatcher().tasks(LookalikeService);
    const handles = [await tasks.ownUnknown.delay(), await tasks.ownMalformedName.delay(), await tasks.libraryClass.delay()];
    for (const r of handles) {
      await waitFor(async () => (await r.status()) === 'FAILURE', { timeout: 10_000, what: `task ${r.id} to end FAILURE` });
    }
    const infos = await Promise.all(handles.map((r) => r.info()));
    expect(infos.map((i) => [i.error?.name, i.error?.message, i.attempts])).toEqual([
      ['UnknownTaskError', 'a lookup of the app failed', 2],
      ['MalformedTaskError', 'the app found a malformed record', 2],
      ['MalformedTaskError', 'thrown by the task, not by the worker', 1],
    ]);
    expect(ev.retried.map((e) => e.id).sort()).toEqual([handles[0]!.id, handles[1]!.id].sort());
    expect(await h.deadLetters()).toEqual([]);
  });

  it('the worker still dead-letters a message it cannot run (arguments that are not a JSON array)', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new LookalikeService()] });
    await worker.start();
    // A message as a producer with a bug would write it.
    const id = 'planted-bad-args';
    await h.admin.hset(h.taskKey(id), 's', 'PENDING', 'n', 'LookalikeService.ownUnknown', 'a', '{"not":"an array"}', 'v', '1');
    await h.admin.rpush(h.queueKey('wait'), id);
    const entry = await waitFor(async () => (await h.deadLetters()).find((e) => e.id === id), { timeout: 10_000, what: 'the planted task to be dead-lettered' });
    expect(entry.reason).toMatch(/^the task's arguments are not a JSON array/);
    const info = await h.dispatcher().result(id).info();
    expect([info.state, info.error?.name, info.attempts]).toEqual(['FAILURE', 'MalformedTaskError', 1]);
  });
});

describe("the worker's error events carry its own errors", () => {
  const fresh = useHarness('worker-errors');

  it('a command Redis refuses (the wait list of the wrong type) is reported as a RedisRefusedError with Redis\'s reply as its cause', async () => {
    const h = fresh();
    // The wait list is a string: Redis answers WRONGTYPE to the worker's blocking wait on it.
    await h.admin.set(h.queueKey('wait'), 'not a list');
    const worker = h.worker({ services: [new LookalikeService()] });
    const ev = recordEvents(worker);
    await worker.start();
    await waitFor(() => ev.errors.length > 0, { timeout: 10_000, what: 'an error event' });
    await worker.close();
    for (const e of ev.errors) {
      expect(e).toBeInstanceOf(HeimdallError);
      expect(e).toBeInstanceOf(RedisRefusedError);
      expect(e.message).toMatch(/WRONGTYPE/);
      expect((e.cause as Error).name).toBe('ReplyError');
    }
  });
});
