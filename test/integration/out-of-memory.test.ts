/**
 * A Redis that is full, and one that evicts.
 *
 * Under `maxmemory-policy noeviction` a full Redis refuses every command that may grow memory,
 * and a script at its first such write (unless the script opens with `#!lua flags=allow-oom`).
 * Here: a dispatch refused that way rejects with RedisOutOfMemoryError and writes nothing;
 * delayMany reports each task's outcome, and the report matches Redis; a worker keeps renewing
 * the leases of its running tasks, so none of them is recovered and run again; and a Dispatcher
 * or Worker warns once when the policy may evict heimdall's keys.
 *
 * A redis-server of this file's own: CONFIG SET maxmemory and maxmemory-policy are server-wide,
 * and the other test files run in parallel on the shared server. Each test sets the limit back
 * to none (0) and the policy to noeviction before it ends.
 */
import type { Redis } from 'ioredis';
import { describe, expect, it, vi } from 'vitest';
import {
  currentTask,
  HeimdallError,
  PartialDispatchError,
  RedisOutOfMemoryError,
  Task,
  type Dispatcher,
  type TaskResult,
} from 'heimdall-tasks';
import { extendLeases } from '../../src/redis-scripts/scripts.generated.js';
import { gate, recordEvents, redisNowMs, reportFigures, usePrivateRedis, waitFor, type Harness } from '../helpers.js';

class MemoryService {
  /** Starts of each task id, so a second run of one task shows. */
  readonly starts = new Map<string, number>();
  /** Opened by the test: every `held` task waits for it. */
  readonly release = gate();

  @Task()
  async note(text: string): Promise<string> {
    return text;
  }

  @Task<[n: number]>({ unique: true, key: ([n]) => `n${n}` })
  async single(n: number): Promise<number> {
    return n;
  }

  @Task()
  async held(n: number): Promise<number> {
    const { id } = currentTask();
    this.starts.set(id, (this.starts.get(id) ?? 0) + 1);
    await this.release.promise;
    return n;
  }
}

const OOM_REPLY = /^OOM command not allowed when used memory > 'maxmemory'/;

async function usedMemory(admin: Redis): Promise<number> {
  const m = /^used_memory:(\d+)/m.exec(await admin.info('memory'));
  expect(m, 'INFO memory has used_memory').not.toBeNull();
  return Number(m![1]);
}

/** Whether Redis refuses a plain write now (a SET of a new key). */
async function refusesWrites(admin: Redis, key: string): Promise<boolean> {
  try {
    await admin.set(key, 'probe');
    await admin.del(key);
    return false;
  } catch (err) {
    expect((err as Error).message).toMatch(OOM_REPLY);
    return true;
  }
}

/**
 * Fills Redis the way an application does: maxmemory 1 MiB above what is used now, then filler
 * keys of 16 KiB until Redis refuses one. Then the limit goes 256 KiB below what is used, so
 * Redis stays full: the refused command's own query buffer was part of what went over the
 * limit, and client buffers come and go. Returns the filler keys, about 1 MiB, whose deletion
 * brings Redis well under the limit again.
 */
async function fillUp(h: Harness): Promise<string[]> {
  await h.admin.config('SET', 'maxmemory', String((await usedMemory(h.admin)) + 1024 * 1024));
  const fillers: string[] = [];
  for (let i = 0; i < 200; i++) {
    const key = `${h.prefix}:filler:${i}`;
    try {
      await h.admin.set(key, 'x'.repeat(16 * 1024));
    } catch (err) {
      expect((err as Error).message).toMatch(OOM_REPLY);
      await h.admin.config('SET', 'maxmemory', String((await usedMemory(h.admin)) - 256 * 1024));
      expect(await refusesWrites(h.admin, `${h.prefix}:probe`)).toBe(true);
      return fillers;
    }
    fillers.push(key);
  }
  throw new Error('Redis accepted 3.2 MiB of filler past a limit 1 MiB above its used memory');
}

/** Sets the limit back to none and the policy to noeviction. */
async function unlimited(admin: Redis): Promise<void> {
  await admin.config('SET', 'maxmemory', '0', 'maxmemory-policy', 'noeviction');
}

/** The error a promise rejects with (fails the test when it resolves). */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection, but the call resolved');
}

function expectOutOfMemory(err: unknown, what: RegExp): void {
  // Name and code first: on a raw ioredis ReplyError they say at once what is missing.
  expect(err).toMatchObject({ name: 'RedisOutOfMemoryError', code: 'HEIMDALL_REDIS_OOM' });
  expect(err).toBeInstanceOf(RedisOutOfMemoryError);
  expect(err).toBeInstanceOf(HeimdallError);
  const e = err as RedisOutOfMemoryError;
  expect(e.message).toMatch(what);
  expect(e.message).toContain('Redis is out of memory (used memory is over maxmemory) and refused to write, so nothing of this call was written');
  expect(e.cause).toMatchObject({ name: 'ReplyError' });
  expect((e.cause as Error).message).toMatch(OOM_REPLY);
}

/** Task ids of every record under the test's prefix. */
async function recordIds(h: Harness): Promise<string[]> {
  const marker = ':{default}:t:';
  return (await h.keys(`{default}:t:*`)).map((k) => k.slice(k.indexOf(marker) + marker.length));
}

/** Ids in the wait list in the order workers take them. */
async function waitOrder(h: Harness): Promise<string[]> {
  return (await h.admin.lrange(h.queueKey('wait'), 0, -1)).reverse();
}

/** A dispatcher whose connection is up and whose scripts are loaded, and the id of its warm-up task. */
async function warmDispatcher(h: Harness): Promise<{ d: Dispatcher; warm: string }> {
  const d = h.dispatcher();
  const warm = await d.tasks(MemoryService).note.delay('warm');
  return { d, warm: warm.id };
}

describe('a full Redis under noeviction (private redis-server)', () => {
  const fresh = usePrivateRedis('oom');

  it('a delay refused by a full Redis rejects with RedisOutOfMemoryError and writes nothing; once memory is freed it goes through', async () => {
    const h = fresh();
    try {
      const { d, warm } = await warmDispatcher(h);
      const tasks = d.tasks(MemoryService);
      const fillers = await fillUp(h);
      const before = await h.keys();
      expect(before.filter((k) => !fillers.includes(k))).toEqual([h.taskKey(warm), h.queueKey('wait'), h.queueKeys().events].sort());

      expectOutOfMemory(await rejection(tasks.note.delay('refused')), /^sending MemoryService\.note: /);
      // A unique task: its lock (SET NX) is the first write, refused the same way.
      expectOutOfMemory(await rejection(tasks.single.delay(1)), /^sending MemoryService\.single: /);
      // Several dispatches of one tick share one refused script call.
      const burst = await Promise.allSettled([tasks.note.delay('a'), tasks.note.applyAsync(['b'], { countdown: 60 }), tasks.single.delay(2)]);
      for (const s of burst) {
        expect(s.status).toBe('rejected');
        expectOutOfMemory((s as PromiseRejectedResult).reason, /^sending 3 tasks: /);
      }
      expect(await h.keys(), 'no record, lock, list or delayed set written').toEqual(before);
      expect(await waitOrder(h)).toEqual([warm]);

      // Freed: the same calls go through, and the unique one finds no ghost holder.
      await h.admin.del(...fillers);
      expect(await refusesWrites(h.admin, `${h.prefix}:probe`)).toBe(false);
      const again = await Promise.all([tasks.note.delay('refused'), tasks.single.delay(1)]);
      expect(again[1].duplicate).toBe(false);
      expect(await waitOrder(h)).toEqual([warm, again[0].id, again[1].id]);
      reportFigures('single delay under OOM', { fillerKeys: fillers.length });
    } finally {
      await unlimited(h.admin);
    }
  });

  it('delayMany of 200 while Redis fills up: each task is reported as sent or not, exactly as Redis has it; the rest go through once memory is freed', async () => {
    const h = fresh();
    try {
      const { d, warm } = await warmDispatcher(h);
      const tasks = d.tasks(MemoryService);
      const text = (i: number): string => `${String(i).padStart(3, '0')} ${'m'.repeat(1000)}`;
      // What one batch of 50 such tasks costs, measured on this server.
      const base = await usedMemory(h.admin);
      const probe = await tasks.note.delayMany(Array.from({ length: 50 }, (_, i) => [`probe ${text(i)}`] as [string]));
      const perBatch = (await usedMemory(h.admin)) - base;
      expect(perBatch).toBeGreaterThan(50 * 1000);
      // Room for about one and a half batches: the first fits, the second starts below the limit
      // and ends above it, the others are refused.
      await h.admin.config('SET', 'maxmemory', String((await usedMemory(h.admin)) + Math.floor(perBatch * 1.5)));

      const argsList = Array.from({ length: 200 }, (_, i) => [text(i)] as [string]);
      const err = await rejection(tasks.note.delayMany(argsList));

      // Which entries Redis has: every record but the warm-up and the probe batch, by its arguments.
      const known = new Set([warm, ...probe.map((r) => r.id)]);
      const inRedis = new Map<number, string>();
      for (const id of await recordIds(h)) {
        if (known.has(id)) continue;
        const args = (await d.result(id).info()).args as [string];
        inRedis.set(Number(args[0].slice(0, 3)), id);
      }

      // Some sent and some not, or none sent: nothing else (a raw ReplyError says neither).
      expect(err).toMatchObject({ code: expect.stringMatching(/^HEIMDALL_(PARTIAL_DISPATCH|REDIS_OOM)$/) });
      let results: (TaskResult<string> | undefined)[];
      if (err instanceof PartialDispatchError) {
        expect(err.code).toBe('HEIMDALL_PARTIAL_DISPATCH');
        results = err.results as (TaskResult<string> | undefined)[];
        expect(results).toHaveLength(200);
        expect(err.errors).toHaveLength(200);
        expect(err.sent + err.failed).toBe(200);
        expect(err.sent).toBe(results.filter((r) => r !== undefined).length);
        const first = results.findIndex((r) => r === undefined);
        expect(err.message).toBe(
          `delayMany of MemoryService.note: ${err.sent} of 200 tasks were sent and ${err.failed} ${err.failed === 1 ? 'was' : 'were'} not; ` +
            `the first not sent, argsList[${first}], failed with RedisOutOfMemoryError: ${(err.errors[first] as Error).message}. ` +
            "The error's results hold the handles of the tasks sent, its errors the error of each entry not sent",
        );
        for (let i = 0; i < 200; i++) {
          if (results[i] === undefined) expectOutOfMemory(err.errors[i], /^sending \d+ tasks: /);
          else expect(err.errors[i], `argsList[${i}] was sent, so it has no error`).toBeUndefined();
        }
      } else {
        // Refused from the first batch on: the error itself, and nothing of the list in Redis.
        expectOutOfMemory(err, /^sending \d+ tasks: /);
        results = argsList.map(() => undefined);
      }

      // The report is the truth: a handle for exactly the entries Redis has, under the same id,
      // queued once each in the order of the list.
      const reported = new Map<number, string>();
      results.forEach((r, i) => r && reported.set(i, r.id));
      expect([...inRedis.entries()].sort(([a], [b]) => a - b)).toEqual([...reported.entries()]);
      const sentIds = [...reported.values()];
      expect(await waitOrder(h)).toEqual([warm, ...probe.map((r) => r.id), ...sentIds]);
      for (const r of results) if (r) expect(await r.status()).toBe('PENDING');
      reportFigures('delayMany of 200 under OOM', {
        bytesPerBatchOf50: perBatch,
        sent: sentIds.length,
        notSent: 200 - sentIds.length,
        outcome: err instanceof PartialDispatchError ? 'PartialDispatchError' : 'RedisOutOfMemoryError',
      });

      // Freed: the entries not sent are sent again, and every one of the 200 is then in Redis once.
      await h.admin.config('SET', 'maxmemory', '0');
      const missing = argsList.filter((_, i) => results[i] === undefined);
      const rest = await tasks.note.delayMany(missing);
      expect(rest).toHaveLength(missing.length);
      const all = (await waitOrder(h)).slice(1 + probe.length);
      expect(all).toEqual([...sentIds, ...rest.map((r) => r.id)]);
      expect(await recordIds(h)).toHaveLength(1 + 50 + 200);
    } finally {
      await unlimited(h.admin);
    }
  });

  it('a worker keeps the leases of its running tasks while Redis is full: 5 tasks held past 3 leases end SUCCESS, each started once', async () => {
    const h = fresh();
    const svc = new MemoryService();
    const leaseMs = 1000;
    try {
      const handles = await h.dispatcher().tasks(MemoryService).held.delayMany([[0], [1], [2], [3], [4]]);
      const ids = handles.map((r) => r.id);
      // Free slots beside the 5 tasks: the worker goes on fetching, and would recover (and run
      // again) any of its own tasks whose lease lapsed.
      const worker = h.worker({ services: [svc], concurrency: 10, leaseDuration: leaseMs / 1000 });
      const ev = recordEvents(worker);
      await worker.start();
      await waitFor(() => ev.started.length === 5, { what: '5 tasks to start' });

      // Full, and kept full: a limit far below what is used, so no freed buffer brings Redis back under it.
      await h.admin.config('SET', 'maxmemory', String(Math.floor((await usedMemory(h.admin)) / 2)));
      const fullAt = await redisNowMs(h.admin);
      expect(await refusesWrites(h.admin, `${h.prefix}:probe`)).toBe(true);

      // Each lease renewed to more than 3 leases past the moment Redis became full: without
      // renewals each would have lapsed 3 times over. The idle worker's blocking wait (BLMOVE)
      // is refused meanwhile, which its error events report.
      const leases = async (): Promise<(number | null)[]> =>
        (await Promise.all(ids.map((id) => h.admin.zscore(h.queueKey('active'), id)))).map((s) => (s === null ? null : Number(s)));
      await waitFor(
        async () => ev.errors.length > 0 && (await leases()).every((s) => s !== null && s > fullAt + 3 * leaseMs),
        { timeout: 20_000, what: 'the leases to be renewed past 3 lease durations while Redis is full, and an error event' },
      );
      expect(await refusesWrites(h.admin, `${h.prefix}:probe`), 'Redis is still full').toBe(true);

      svc.release.open();
      const ended = await waitFor(
        async () => {
          const infos = await Promise.all(handles.map((r) => r.info()));
          return infos.every((i) => i.state === 'SUCCESS' || i.state === 'FAILURE') ? infos : undefined;
        },
        { what: 'the 5 tasks to end' },
      );
      expect(ended.map((i) => [i.id, i.state, i.attempts, i.error?.name])).toEqual(ids.map((id) => [id, 'SUCCESS', 1, undefined]));
      await waitFor(() => ev.succeeded.length === 5, { what: '5 succeeded events' });
      expect(ev.succeeded.map((e) => e.id).sort()).toEqual([...ids].sort());
      expect(ev.started.map((e) => e.id)).toEqual(ids);
      expect(ev.failed).toEqual([]);
      expect(Object.fromEntries(svc.starts)).toEqual(Object.fromEntries(ids.map((id) => [id, 1])));
      // Only the refused blocking waits: no lost lease, no stale end.
      for (const e of ev.errors) expectOutOfMemory(e, /^queue default: waiting for tasks: /);
      reportFigures('leases under OOM', { errorEvents: ev.errors.length, attempts: 1 });
    } finally {
      svc.release.open();
      await unlimited(h.admin);
    }
  });

  // Moves between lists take the id from where it was before they place it (and put it back if
  // the placing is refused): under noeviction Redis refuses only a script's first write, and a
  // removal frees memory, so these moves go through a full Redis and add nothing.
  it('while Redis is full a worker still recovers a dead worker\'s task, moves a due delayed task to the wait list, and runs them with what was queued', async () => {
    const h = fresh();
    try {
      const tasks = h.dispatcher().tasks(MemoryService);
      const later = await tasks.note.applyAsync(['later'], { countdown: 0.001 });
      const queued = await tasks.note.delay('queued');
      // A task a dead worker had started: its lease lapsed long ago.
      const lost = await tasks.note.delay('lost');
      await h.admin.lrem(h.queueKey('wait'), 0, lost.id);
      await h.admin.hset(h.taskKey(lost.id), 's', 'STARTED', 'w', 'a-dead-worker', 'at', '1', 'tk', 'gone.0');
      await h.admin.zadd(h.queueKey('active'), 1, lost.id);
      const dueAt = (await later.info()).dueAt!.getTime();
      await h.admin.config('SET', 'maxmemory', String(Math.floor((await usedMemory(h.admin)) / 2)));
      expect(await refusesWrites(h.admin, `${h.prefix}:probe`)).toBe(true);
      await waitFor(async () => (await redisNowMs(h.admin)) > dueAt, { what: 'the delayed task to be due' });

      const worker = h.worker({ services: [new MemoryService()] });
      const errors: Error[] = [];
      worker.on('error', (e) => errors.push(e)); // its idle BLMOVE is refused while Redis is full
      await worker.start();
      expect(await Promise.all([queued, later, lost].map((r) => r.get({ timeout: 15 })))).toEqual(['queued', 'later', 'lost']);
      expect((await lost.info()).attempts).toBe(2);
      expect(await refusesWrites(h.admin, `${h.prefix}:probe`)).toBe(true);
    } finally {
      await unlimited(h.admin);
    }
  });

  it('while Redis is full a worker starts tasks that were only queued: the fetch opens with a write Redis allows', async () => {
    // Nothing to recover and nothing due: the fetch's first write would otherwise be the ZADD of
    // the first lease, which a full Redis refuses, and with it every start of the call.
    const h = fresh();
    try {
      const queued = await h.dispatcher().tasks(MemoryService).note.delayMany([['a'], ['b'], ['c']]);
      await h.admin.config('SET', 'maxmemory', String(Math.floor((await usedMemory(h.admin)) / 2)));
      expect(await refusesWrites(h.admin, `${h.prefix}:probe`)).toBe(true);
      const worker = h.worker({ services: [new MemoryService()] });
      const errors: Error[] = [];
      worker.on('error', (e) => errors.push(e)); // its idle BLMOVE is refused while Redis is full
      await worker.start();
      expect(await Promise.all(queued.map((r) => r.get({ timeout: 15 })))).toEqual(['a', 'b', 'c']);
      expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    } finally {
      await unlimited(h.admin);
    }
  });

  it('extend-leases opens with #!lua flags=allow-oom, and Redis computes the SHA the generated module holds', async () => {
    const h = fresh();
    expect(extendLeases.source.startsWith('#!lua flags=allow-oom\n--[[\n  extend-leases: ')).toBe(true);
    expect(await h.admin.script('LOAD', extendLeases.source)).toBe(extendLeases.sha);
  });
});

describe('maxmemory-policy check (private redis-server)', () => {
  const fresh = usePrivateRedis('oom-policy');

  /** The heimdall warnings console.warn printed. */
  function policyWarnings(spy: { mock: { calls: unknown[][] } }): string[] {
    return spy.mock.calls.map((args) => String(args[0])).filter((m) => m.includes('maxmemory-policy'));
  }

  it('allkeys-lru: a Dispatcher\'s first call warns once, naming the policy and what it loses; a Worker and another Dispatcher do not repeat it', async () => {
    const h = fresh();
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      await h.admin.config('SET', 'maxmemory-policy', 'allkeys-lru', 'maxmemory', '100mb');
      const d = h.dispatcher();
      await d.tasks(MemoryService).note.delay('one');
      const { port } = h.admin.options;
      expect(policyWarnings(warn)).toEqual([
        `[heimdall-tasks] Redis at 127.0.0.1:${port} runs with maxmemory-policy allkeys-lru, maxmemory 100.00M. ` +
          'When it is full it evicts any key: task records, wait lists and delayed sets (queued tasks that never run), ' +
          'unique locks (a second task of the same key is enqueued and runs), rate windows (starts over the limit), ' +
          'leases of running tasks and records of finished tasks, all without an error. ' +
          'Set maxmemory-policy noeviction (in redis.conf, or CONFIG SET maxmemory-policy noeviction), ' +
          'or give heimdall-tasks a Redis of its own; see docs/redis-memory.md of heimdall-tasks.',
      ]);
      await d.tasks(MemoryService).note.delay('two');
      await h.worker({ services: [new MemoryService()] }).start();
      await h.dispatcher().tasks(MemoryService).note.delay('three');
      expect(policyWarnings(warn)).toHaveLength(1);
    } finally {
      warn.mockRestore();
      await unlimited(h.admin);
    }
  });

  it('volatile-lru: a Worker\'s start warns, naming the keys with a TTL it may lose', async () => {
    const h = fresh();
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      await h.admin.config('SET', 'maxmemory-policy', 'volatile-lru');
      await h.worker({ services: [new MemoryService()] }).start();
      const warnings = policyWarnings(warn);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toContain('runs with maxmemory-policy volatile-lru, no maxmemory set yet. When it is full it evicts keys that have a TTL: unique locks');
      expect(warnings[0]).toContain('records of finished tasks (results gone before resultExpires)');
      // The worker keeps running: the warning does not stop it.
      const r = await h.dispatcher().tasks(MemoryService).note.delay('still works');
      expect(await r.get({ timeout: 10 })).toBe('still works');
      expect(policyWarnings(warn)).toHaveLength(1);
    } finally {
      warn.mockRestore();
      await unlimited(h.admin);
    }
  });

  it('noeviction: neither a Dispatcher nor a Worker prints anything', async () => {
    const h = fresh();
    const warn = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      expect(await h.admin.config('GET', 'maxmemory-policy')).toEqual(['maxmemory-policy', 'noeviction']);
      await h.worker({ services: [new MemoryService()] }).start();
      const r = await h.dispatcher().tasks(MemoryService).note.delay('quiet');
      expect(await r.get({ timeout: 10 })).toBe('quiet');
      expect(warn.mock.calls).toEqual([]);
    } finally {
      warn.mockRestore();
    }
  });
});
