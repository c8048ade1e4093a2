/**
 * Dispatch batching and what travels with it, against a real Redis: enqueue batching (the
 * delay() calls of one tick travel in ceil(N/50) enqueue script calls, cut earlier at 64 KiB of
 * arguments, one batch per queue), per-task outcomes inside one batch (a wrong-type task hash
 * or lock key fails only its own task, a duplicate in the same batch gets the first task's
 * handle), delayMany (checked before anything is sent, handles in order, options for all), call
 * options read from the object's own properties only, long arguments kept in 64-byte pieces
 * (fields a, a1.., ac; the hash stays a listpack; readers join them; a missing piece or a piece
 * count not of ours is a MalformedTaskError), close() right after an un-awaited delay() and a
 * second close(), a worker with two script calls in flight never running more than its
 * concurrency, and a fetch that pops ids in bulk.
 *
 * The counting tests use a redis-server of their own (as scripts.test.ts does): INFO
 * commandstats is server-wide and the other test files run in parallel on the shared server.
 * On that private server only our dispatcher sends EVALSHA, and only our enqueue script runs
 * LPUSH, so the deltas are exact. Everything else runs on the harness's shared server.
 */
import { describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import {
  AlreadyQueuedError,
  ConfigError,
  currentTask,
  PartialDispatchError,
  SerializationError,
  Task,
  type Dispatcher,
  type TaskResult,
} from 'heimdall-tasks';
import { FIELDS, gate, Harness, recordEvents, redisNowMs, useHarness, usePrivateRedis, waitFor, commandStats } from '../helpers.js';

// ---------------------------------------------------------------------------------------------
// Tasks.

class BatchingService {
  /** What each run received, by task id. */
  readonly received = new Map<string, unknown[]>();

  @Task()
  async add(a: number, b: number): Promise<number> {
    this.received.set(currentTask().id, [a, b]);
    return a + b;
  }

  @Task()
  async echo(value: string): Promise<string> {
    this.received.set(currentTask().id, [value]);
    return value;
  }

  /** Takes anything, so tests can hand it values JSON refuses. */
  @Task()
  async anything(value: unknown): Promise<unknown> {
    return value;
  }

  @Task<[n: number]>({ unique: true, key: ([n]) => `n${n}` })
  async keyed(n: number): Promise<number> {
    this.received.set(currentTask().id, [n]);
    return n;
  }

  @Task<[n: number]>({ unique: true, uniqueRaises: true, key: ([n]) => `n${n}` })
  async strict(n: number): Promise<number> {
    return n;
  }

  /** Unique by a hash of its arguments: its lock key (field lk) is longer than 64 bytes. */
  @Task({ unique: true })
  async uniqueEcho(value: string): Promise<string> {
    this.received.set(currentTask().id, [value]);
    return value;
  }

  /** Unique by a key of 70 characters: kept in lu, over 64 bytes. */
  @Task<[value: string]>({ unique: true, key: () => 'k'.repeat(70) })
  async longKeyed(value: string): Promise<string> {
    return value;
  }

  @Task({ queue: 'other' })
  async elsewhere(n: number): Promise<number> {
    return n;
  }
}

const ADD = 'BatchingService.add';

class Crowd {
  running = 0;
  max = 0;
  readonly runs = new Map<string, number>();
  /** Opens once `target` tasks run at the same time; the first tasks wait for it. */
  readonly allBusy = gate();
  constructor(private readonly target: number) {}

  @Task()
  async work(n: number): Promise<number> {
    const { id } = currentTask();
    this.runs.set(id, (this.runs.get(id) ?? 0) + 1);
    this.running++;
    this.max = Math.max(this.max, this.running);
    if (this.running >= this.target) this.allBusy.open();
    try {
      await this.allBusy.promise;
      // Yield 1 to 3 times, so tasks end at different moments and the two calls in flight
      // often fetch for part of the slots.
      for (let i = 0; i <= n % 3; i++) await new Promise<void>((resolve) => setImmediate(resolve));
    } finally {
      this.running--;
    }
    return n;
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/** The error a promise rejects with (fails the test when it resolves). */
async function rejection(p: Promise<unknown>): Promise<Error & Record<string, unknown>> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(Error);
    return err as Error & Record<string, unknown>;
  }
  throw new Error('expected a rejection, but the call resolved');
}

/** Ids in the wait list in the order workers take them (it is pushed on the left, popped on the right). */
async function waitOrder(h: Harness, queue = 'default'): Promise<string[]> {
  return (await h.admin.lrange(h.queueKey('wait', queue), 0, -1)).reverse();
}


type Stats = Record<string, number>;


/** Runs `act` and counts what the server ran meanwhile: EVALSHA calls, LPUSHes, SCRIPT LOADs. */
async function counted<T>(admin: Redis, act: () => Promise<T>): Promise<{ value: T; evalsha: number; lpush: number; load: number }> {
  const before = await commandStats(admin);
  const value = await act();
  const after = await commandStats(admin);
  const d = (name: string): number => (after[name] ?? 0) - (before[name] ?? 0);
  return { value, evalsha: d('evalsha'), lpush: d('lpush'), load: d('script|load') };
}

/** Stored args of each task, as the raw field FIELDS.args (short arguments are never split). */
async function storedArgs(h: Harness, ids: readonly string[], queue = 'default'): Promise<(string | null)[]> {
  const pipe = h.admin.pipeline();
  for (const id of ids) pipe.hget(h.taskKey(id, queue), FIELDS.args);
  return ((await pipe.exec()) ?? []).map(([, v]) => v as string | null);
}

async function statesOf(h: Harness, ids: readonly string[], queue = 'default'): Promise<(string | null)[]> {
  const pipe = h.admin.pipeline();
  for (const id of ids) pipe.hget(h.taskKey(id, queue), FIELDS.state);
  return ((await pipe.exec()) ?? []).map(([, v]) => v as string | null);
}

/**
 * How includes/args.lua must store the JSON: undefined when kept whole in `a`, else the pieces,
 * cut greedily at 64 bytes and moved back so no UTF-8 character is split. Written independently
 * of the Lua, from the documented rule.
 */
function expectedPieces(json: string): Buffer[] | undefined {
  const bytes = Buffer.from(json, 'utf8');
  if (bytes.length <= 64 || bytes.length > 3072) return undefined;
  const pieces: Buffer[] = [];
  let start = 0;
  while (start < bytes.length) {
    let end = Math.min(bytes.length, start + 64);
    while (end < bytes.length && (bytes[end]! & 0xc0) === 0x80) end--;
    pieces.push(bytes.subarray(start, end));
    start = end;
  }
  return pieces;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------------------------------------
// 1. Counting script calls: a private redis-server.

describe('enqueue batching: one script call per 50 tasks of a tick (private redis-server)', () => {
  const fresh = usePrivateRedis('batching');

  /** A dispatcher whose connection is up and whose scripts are loaded (warm-up task excluded from counts). */
  async function warmDispatcher(h: Harness): Promise<{ d: Dispatcher; warm: string }> {
    const d = h.dispatcher();
    const warm = await d.tasks(BatchingService).add.delay(0, 0);
    return { d, warm: warm.id };
  }

  it.each([
    { n: 1, calls: 1 },
    { n: 49, calls: 1 },
    { n: 50, calls: 1 },
    { n: 51, calls: 2 },
    { n: 120, calls: 3 },
  ])('$n delay() calls in one tick cost $calls enqueue call(s); every task queued once, handles in call order', async ({ n, calls }) => {
    const h = fresh();
    const { d, warm } = await warmDispatcher(h);
    const tasks = d.tasks(BatchingService);
    const { value: handles, evalsha, lpush, load } = await counted(h.admin, () =>
      Promise.all(Array.from({ length: n }, (_, i) => tasks.add.delay(i, 1000))),
    );
    expect(evalsha).toBe(calls);
    expect(evalsha).toBe(Math.ceil(n / 50));
    expect(lpush, 'one LPUSH per task, inside the script').toBe(n);
    expect(load).toBe(0);

    const ids = handles.map((r) => r.id);
    expect(new Set(ids).size).toBe(n);
    expect(handles.every((r) => r.duplicate === false && r.name === ADD)).toBe(true);
    // Each id once in the wait list, in call order (after the warm-up task).
    expect(await waitOrder(h)).toEqual([warm, ...ids]);
    // Handle i belongs to call i.
    expect(await storedArgs(h, ids)).toEqual(ids.map((_, i) => `[${i},1000]`));
    expect(await statesOf(h, ids)).toEqual(ids.map(() => 'PENDING'));
  });

  it('a burst is also cut at 64 KiB of arguments: 20 tasks of 5,004 bytes cost 2 calls (14 + 6)', async () => {
    const h = fresh();
    const { d, warm } = await warmDispatcher(h);
    const tasks = d.tasks(BatchingService);
    const big = (i: number): string => `${String(i).padStart(2, '0')}${'x'.repeat(4998)}`;
    expect(JSON.stringify([big(0)]).length).toBe(5004);
    const { value: handles, evalsha, lpush } = await counted(h.admin, () =>
      Promise.all(Array.from({ length: 20 }, (_, i) => tasks.echo.delay(big(i)))),
    );
    expect(evalsha).toBe(2);
    expect(lpush).toBe(20);
    expect(await waitOrder(h)).toEqual([warm, ...handles.map((r) => r.id)]);
    expect(await storedArgs(h, handles.map((r) => r.id))).toEqual(handles.map((_, i) => JSON.stringify([big(i)])));
  });

  it('one batch per queue: 10 tasks for default and 10 for other in one tick cost 2 calls, each queue gets its own', async () => {
    const h = fresh();
    const { d, warm } = await warmDispatcher(h);
    const tasks = d.tasks(BatchingService);
    const { value, evalsha, lpush } = await counted(h.admin, () =>
      Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? tasks.add.delay(i, 0) : tasks.elsewhere.delay(i)))),
    );
    expect(evalsha).toBe(2);
    expect(lpush).toBe(20);
    const onDefault = value.filter((_, i) => i % 2 === 0).map((r) => r.id);
    const onOther = value.filter((_, i) => i % 2 === 1).map((r) => r.id);
    expect(value.map((r) => r.queue)).toEqual(value.map((_, i) => (i % 2 === 0 ? 'default' : 'other')));
    expect(onOther.every((id) => id.startsWith('other:'))).toBe(true);
    expect(await waitOrder(h)).toEqual([warm, ...onDefault]);
    expect(await waitOrder(h, 'other')).toEqual(onOther);
  });

  it('delayMany of 130 costs 3 calls; with 20 delay() of the same tick, 150 tasks still cost 3', async () => {
    const h = fresh();
    const { d, warm } = await warmDispatcher(h);
    const tasks = d.tasks(BatchingService);
    const many = await counted(h.admin, () => tasks.add.delayMany(Array.from({ length: 130 }, (_, i) => [i, 1] as [number, number])));
    expect(many.evalsha).toBe(3);
    expect(many.lpush).toBe(130);
    expect(many.value).toHaveLength(130);
    expect(await storedArgs(h, many.value.map((r) => r.id))).toEqual(many.value.map((_, i) => `[${i},1]`));

    const mixed = await counted(h.admin, () =>
      Promise.all([
        Promise.all(Array.from({ length: 10 }, (_, i) => tasks.add.delay(i, 2))),
        tasks.add.delayMany(Array.from({ length: 130 }, (_, i) => [i, 3] as [number, number])),
        Promise.all(Array.from({ length: 10 }, (_, i) => tasks.add.delay(i, 4))),
      ]),
    );
    expect(mixed.evalsha).toBe(3);
    expect(mixed.lpush).toBe(150);
    const [first, middle, last] = mixed.value;
    expect(await waitOrder(h)).toEqual([warm, ...many.value, ...first, ...middle, ...last].map((r) => (typeof r === 'string' ? r : r.id)));
  });

  it('inside one call, a wrong-type task hash or lock key and a reused id fail only their own task; a duplicate gets the first handle', async () => {
    const h = fresh();
    const { d, warm } = await warmDispatcher(h);
    const tasks = d.tasks(BatchingService);
    const svc = new BatchingService();
    // A custom id whose key holds a string, and a unique lock key that holds a list.
    await h.admin.set(h.taskKey('stringy'), 'x');
    const listLock = h.queueKeys().lock('BatchingService.keyed', 'n5');
    await h.admin.rpush(listLock, 'not', 'a', 'lock');

    const { value: settled, evalsha } = await counted(h.admin, () =>
      Promise.allSettled([
        tasks.add.delay(1, 1), // 0: fine
        tasks.add.applyAsync([2, 2], { taskId: 'stringy' }), // 1: its key is a string
        tasks.keyed.delay(5), // 2: its lock key is a list
        tasks.keyed.delay(6), // 3: takes lock n6
        tasks.keyed.delay(6), // 4: a duplicate of 3, in the same batch
        tasks.add.applyAsync([7, 7], { taskId: 'mine' }), // 5: fine
        tasks.add.applyAsync([8, 8], { taskId: 'mine' }), // 6: same id, other arguments: in use
        tasks.add.applyAsync([7, 7], { taskId: 'mine' }), // 7: same id, same arguments: the same task
        tasks.add.delay(3, 3), // 8: fine
      ]),
    );
    expect(evalsha, 'all nine went in one script call').toBe(1);
    expect(settled.map((s) => s.status)).toEqual([
      'fulfilled',
      'rejected',
      'rejected',
      'fulfilled',
      'fulfilled',
      'fulfilled',
      'rejected',
      'fulfilled',
      'fulfilled',
    ]);
    const ok = (i: number): TaskResult => (settled[i] as PromiseFulfilledResult<TaskResult>).value;
    const err = (i: number): Error => (settled[i] as PromiseRejectedResult).reason as Error;

    expect(err(1)).toBeInstanceOf(ConfigError);
    expect(err(1).message).toBe(
      `cannot send ${ADD} as task stringy: the key ${h.taskKey('stringy')} of this task id holds a value that is not a hash`,
    );
    expect(await h.admin.get(h.taskKey('stringy'))).toBe('x');

    expect(err(2)).toBeInstanceOf(ConfigError);
    const m = /^cannot send BatchingService\.keyed as task ([0-9A-Za-z]{22}): the unique lock key (\S+) holds a value that is not a string$/.exec(
      err(2).message,
    );
    expect(m, err(2).message).not.toBeNull();
    expect(m![2]).toBe(listLock);
    expect(await h.admin.lrange(listLock, 0, -1)).toEqual(['not', 'a', 'lock']);
    expect(await h.admin.exists(h.taskKey(m![1]!)), 'nothing written for the refused task').toBe(0);

    expect(ok(3).duplicate).toBe(false);
    expect(ok(4).duplicate).toBe(true);
    expect(ok(4).id).toBe(ok(3).id);
    expect(await h.admin.get(h.queueKeys().lock('BatchingService.keyed', 'n6'))).toBe(ok(3).id);

    expect(ok(5).id).toBe('mine');
    expect(err(6)).toBeInstanceOf(ConfigError);
    expect(err(6).message).toBe('task id mine belongs to a task that has not ended; choose another taskId');
    expect(ok(7).id).toBe('mine');
    expect(ok(7).duplicate).toBe(false);
    expect(await h.admin.hget(h.taskKey('mine'), 'a')).toBe('[7,7]');

    // Exactly the accepted tasks are queued, once each, in call order.
    expect(await waitOrder(h)).toEqual([warm, ok(0).id, ok(3).id, 'mine', ok(8).id]);

    // And they run.
    const worker = h.worker({ services: [svc] });
    await worker.start();
    expect(await Promise.all([ok(0), ok(3), ok(5), ok(8)].map((r) => r.get({ timeout: 10 })))).toEqual([2, 6, 14, 6]);
    expect(svc.received.get('mine')).toEqual([7, 7]);
    expect(await h.admin.get(h.taskKey('stringy'))).toBe('x');
  });
});

// ---------------------------------------------------------------------------------------------
// 2. delayMany, call options, long arguments, close(), the worker: the shared server.

describe('delayMany', () => {
  const fresh = useHarness('batching');

  it('hands back the handles in order and the worker runs each task with its own arguments', async () => {
    const h = fresh();
    const svc = new BatchingService();
    const tasks = h.dispatcher().tasks(BatchingService);
    const argsList = Array.from({ length: 75 }, (_, i) => [i, i * 10] as [number, number]);
    const handles = await tasks.add.delayMany(argsList);
    expect(handles).toHaveLength(75);
    expect(new Set(handles.map((r) => r.id)).size).toBe(75);
    expect(await waitOrder(h)).toEqual(handles.map((r) => r.id));
    expect(await Promise.all(handles.map(async (r) => (await r.info()).args))).toEqual(argsList);

    const worker = h.worker({ services: [svc] });
    const ev = recordEvents(worker);
    await worker.start();
    await waitFor(() => ev.succeeded.length === 75, { what: '75 tasks to succeed' });
    expect(handles.map((r) => svc.received.get(r.id))).toEqual(argsList);
    expect(await Promise.all(handles.map((r) => r.get({ timeout: 10 })))).toEqual(argsList.map(([a, b]) => a + b));
    expect(ev.started).toHaveLength(75);
  });

  it('an empty list sends nothing and resolves to []', async () => {
    const h = fresh();
    const d = h.dispatcher();
    expect(await d.tasks(BatchingService).add.delayMany([])).toEqual([]);
    await d.close();
    expect(await h.keys()).toEqual([]);
  });

  const badEntries: { what: string; size: number; at: number; bad: unknown; message: RegExp; name: string; path?: string }[] = [
    {
      what: 'a Date at entry 7',
      size: 10,
      at: 7,
      bad: [new Date(0)],
      name: 'SerializationError',
      message: /^argsList\[7\]: args\[0\] is a Date, which JSON would not bring back as it was/,
      path: 'args[0]',
    },
    {
      what: 'a function at entry 57 of 60 (after a full batch of good ones)',
      size: 60,
      at: 57,
      bad: [{ cb: () => 1 }],
      name: 'SerializationError',
      message: /^argsList\[57\]: args\[0\]\.cb is a function, which JSON cannot encode/,
      path: 'args[0].cb',
    },
    {
      what: 'an entry that is not an array',
      size: 5,
      at: 3,
      bad: 'three',
      name: 'ConfigError',
      message: /^argsList\[3\]: arguments of BatchingService\.anything must be an array, got "three"$/,
    },
  ];

  it.each(badEntries)('$what: rejects naming the entry, and nothing at all is sent', async ({ size, at, bad, message, name, path }) => {
    const h = fresh();
    const d = h.dispatcher();
    const list: unknown[][] = Array.from({ length: size }, (_, i) => [`ok ${i}`]);
    list[at] = bad as unknown[];
    const error = await rejection(d.tasks(BatchingService).anything.delayMany(list as [unknown][]));
    expect(error.name).toBe(name);
    expect(error.message).toMatch(message);
    if (path !== undefined) {
      expect(error).toBeInstanceOf(SerializationError);
      expect(error.path).toBe(path);
    } else {
      expect(error).toBeInstanceOf(ConfigError);
    }
    // close() sends whatever is still queued: if any entry had been queued, it would land now.
    await d.close();
    expect(await h.keys()).toEqual([]);
  });

  it('refuses a taskId option with a ConfigError, sending nothing', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const error = await rejection(d.tasks(BatchingService).add.delayMany([[1, 2]], { taskId: 'one' } as never));
    expect(error).toBeInstanceOf(ConfigError);
    expect(error.message).toBe('delayMany takes no taskId: each task gets its own id');
    await d.close();
    expect(await h.keys()).toEqual([]);
  });

  it('countdown, queue and timeLimit apply to every task', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(BatchingService);
    const before = await redisNowMs(h.admin);
    const handles = await tasks.add.delayMany(
      Array.from({ length: 6 }, (_, i) => [i, 0] as [number, number]),
      { countdown: 60, queue: 'other', timeLimit: '5s' },
    );
    const after = await redisNowMs(h.admin);
    expect(handles.map((r) => r.queue)).toEqual(handles.map(() => 'other'));
    expect(handles.every((r) => /^other:[0-9A-Za-z]{22}$/.test(r.id))).toBe(true);
    // All in the delayed set of queue other, due 60 s after they were sent (Redis clock).
    const delayed = await h.admin.zrange(h.queueKey('delayed', 'other'), 0, -1, 'WITHSCORES');
    const due = new Map<string, number>();
    for (let i = 0; i < delayed.length; i += 2) due.set(delayed[i]!, Number(delayed[i + 1]));
    expect([...due.keys()].sort()).toEqual(handles.map((r) => r.id).sort());
    for (const r of handles) {
      const info = await r.info();
      expect(info.state).toBe('PENDING');
      expect(info.dueAt!.getTime()).toBe(due.get(r.id));
      expect(due.get(r.id)).toBeGreaterThanOrEqual(before + 60_000);
      expect(due.get(r.id)).toBeLessThanOrEqual(after + 60_000);
      expect(await h.admin.hget(h.taskKey(r.id, 'other'), 'tl')).toBe('5000');
    }
    // Nothing in the wait lists but the wake-up marker, nothing in queue default.
    expect((await h.admin.lrange(h.queueKey('wait', 'other'), 0, -1)).filter((id) => id !== '')).toEqual([]);
    expect((await h.keys()).filter((k) => k.includes(':{default}:'))).toEqual([]);
  });

  it('unique: a duplicate inside the list gets the first handle (duplicate true)', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(BatchingService);
    const handles = await tasks.keyed.delayMany([[1], [2], [1], [3]]);
    expect(handles.map((r) => r.duplicate)).toEqual([false, false, true, false]);
    expect(handles[2]!.id).toBe(handles[0]!.id);
    expect(await waitOrder(h)).toEqual([handles[0]!.id, handles[1]!.id, handles[3]!.id]);
  });

  it('uniqueRaises: a duplicate is one entry not sent; PartialDispatchError reports it beside the handles of the others', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(BatchingService);
    const error = await rejection(tasks.strict.delayMany([[1], [2], [1], [3]]));
    expect(error).toBeInstanceOf(PartialDispatchError);
    const partial = error as unknown as PartialDispatchError<number>;
    const lock = (n: number): string => h.queueKeys().lock('BatchingService.strict', `n${n}`);
    const [h1, h2, h3] = await h.admin.mget(lock(1), lock(2), lock(3));
    expect(partial.results.map((r) => r?.id)).toEqual([h1, h2, undefined, h3]);
    expect(partial.results.map((r) => r?.duplicate)).toEqual([false, false, undefined, false]);
    expect(partial.errors.map((e) => e === undefined)).toEqual([true, true, false, true]);
    expect([partial.sent, partial.failed]).toEqual([3, 1]);
    const duplicate = partial.errors[2] as AlreadyQueuedError;
    expect(duplicate).toBeInstanceOf(AlreadyQueuedError);
    expect(duplicate.likelyCulprit).toBe(h1);
    expect(duplicate.expiresIn).toBeGreaterThan(3590);
    expect(duplicate.expiresIn).toBeLessThanOrEqual(3600);
    expect(partial.message).toBe(
      'delayMany of BatchingService.strict: 3 of 4 tasks were sent and 1 was not; the first not sent, argsList[2], ' +
        `failed with AlreadyQueuedError: ${duplicate.message}. ` +
        "The error's results hold the handles of the tasks sent, its errors the error of each entry not sent",
    );
    // The report is what Redis has: the three handles, queued once each, and no other record.
    expect(await waitOrder(h)).toEqual([h1, h2, h3]);
    expect(await statesOf(h, [h1!, h2!, h3!])).toEqual(['PENDING', 'PENDING', 'PENDING']);
    expect((await h.keys('{default}:t:*')).sort()).toEqual([h1, h2, h3].map((id) => h.taskKey(id!)).sort());
  });

  it('uniqueRaises: when every entry is a duplicate, nothing was sent and it rejects with the first AlreadyQueuedError itself', async () => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(BatchingService);
    const holder = await tasks.strict.delay(1);
    const error = await rejection(tasks.strict.delayMany([[1], [1]]));
    expect(error).toBeInstanceOf(AlreadyQueuedError);
    expect(error.likelyCulprit).toBe(holder.id);
    expect(await waitOrder(h)).toEqual([holder.id]);
  });

  it('a hole in delayMany argsList is refused, naming the entry, and nothing is sent', async () => {
    const h = fresh();
    const d = h.dispatcher();
    // eslint-disable-next-line no-sparse-arrays
    const sparse = [, [1, 2]] as unknown as [number, number][];
    await expect(d.tasks(BatchingService).add.delayMany(sparse)).rejects.toThrow(/^argsList\[0\]: is a hole in a sparse array/);
    await d.close();
    expect(await h.keys()).toEqual([]);
  });
});

describe('call options', () => {
  const fresh = useHarness('batching');

  it('an enumerable property on Object.prototype does not turn into an unknown call option', async () => {
    const h = fresh();
    const proto = Object.prototype as Record<string, unknown>;
    proto.polyfilled = true;
    try {
      const r = await h.dispatcher().tasks(BatchingService).add.delay(1, 2);
      expect(await r.status()).toBe('PENDING');
    } finally {
      delete proto.polyfilled;
    }
  });
});

describe('a queue structure of the wrong type', () => {
  const fresh = useHarness('batching');

  // The one failure that is not per task: the whole call fails. It must then have written
  // nothing, or its first tasks leave a record in no list (never run, never expiring) and a
  // unique lock held for uniqueTimeout by that ghost, so the next delay() after the repair
  // returns duplicate: true for a task that never runs.
  it.each([
    { what: 'a wait list that is a string', kind: 'wait', countdown: undefined, plant: (h: Harness, key: string) => h.admin.set(key, 'garbage') },
    { what: 'a delayed set that is a list', kind: 'delayed', countdown: 60, plant: (h: Harness, key: string) => h.admin.rpush(key, 'garbage') },
  ])('$what fails every task of the call with WRONGTYPE and writes nothing', async ({ kind, countdown, plant }) => {
    const h = fresh();
    const tasks = h.dispatcher().tasks(BatchingService);
    const garbage = `${h.prefix}:{default}:${kind}`;
    await plant(h, garbage);
    const options = countdown === undefined ? {} : { countdown };
    const settled = await Promise.allSettled([tasks.keyed.applyAsync([1], options), tasks.add.applyAsync([1, 1], options)]);
    expect(settled.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    for (const r of settled) expect(String((r as PromiseRejectedResult).reason)).toMatch(/WRONGTYPE/);
    expect(await h.keys(), 'no task record and no lock left by the failed call').toEqual([garbage]);

    // Repaired, the same unique task is sent afresh, not answered by a ghost holder.
    await h.admin.del(garbage);
    const again = await tasks.keyed.applyAsync([1], options);
    expect(again.duplicate).toBe(false);
    expect(await h.admin.hget(h.taskKey(again.id), 's')).toBe('PENDING');
  });
});

describe('long arguments in 64-byte pieces', () => {
  const fresh = useHarness('batching');

  const ascii = (bytes: number): string => 'x'.repeat(bytes - 4); // ["..."] adds 4 bytes
  const cases: { what: string; value: string }[] = [
    ...[63, 64, 65, 120, 128, 129, 200, 3000, 3072, 3073, 3100, 5000].map((n) => ({ what: `ASCII, ${n} bytes of JSON`, value: ascii(n) })),
    { what: 'é across byte 64', value: `${'x'.repeat(61)}é${'y'.repeat(40)}` },
    { what: '日本語 across bytes 64 and up', value: `${'x'.repeat(61)}${'日本語'.repeat(30)}` },
    { what: 'emoji across byte 64 and up', value: `${'x'.repeat(60)}${'😀'.repeat(50)}` },
    { what: 'mixed widths, 1,004 bytes', value: 'aé日😀'.repeat(100) },
    { what: 'é only, 3,072 bytes (largest split)', value: 'é'.repeat(1534) },
    { what: 'é only, 3,074 bytes (kept whole)', value: 'é'.repeat(1535) },
    { what: 'emoji only, 3,072 bytes', value: '😀'.repeat(767) },
    { what: 'emoji only, 3,076 bytes', value: '😀'.repeat(768) },
    { what: 'JSON escapes (quotes, backslashes, newlines)', value: 'say "hi"\\\n\t'.repeat(20) },
  ];

  it('the server keeps hashes of fields up to 64 bytes as listpacks (precondition)', async () => {
    const h = fresh();
    expect(await h.admin.config('GET', 'hash-max-listpack-value')).toEqual(['hash-max-listpack-value', '64']);
  });

  it(`stored as a, a1.., ac with whole UTF-8 characters; listpack up to 3,072 bytes; read back by info() and the worker (${cases.length} cases)`, async () => {
    const h = fresh();
    const svc = new BatchingService();
    const tasks = h.dispatcher().tasks(BatchingService);
    const handles = await Promise.all(cases.map((c) => tasks.echo.delay(c.value)));

    for (const [i, c] of cases.entries()) {
      const key = h.taskKey(handles[i]!.id);
      const json = JSON.stringify([c.value]);
      const bytes = Buffer.byteLength(json);
      const raw = await h.admin.hgetallBuffer(key);
      const argFields = Object.keys(raw)
        .filter((f) => /^a\d*$|^ac$/.test(f))
        .sort();
      const pieces = expectedPieces(json);
      if (pieces === undefined) {
        expect(argFields, c.what).toEqual(['a']);
        expect(raw.a!.equals(Buffer.from(json)), c.what).toBe(true);
      } else {
        const names = pieces.map((_, j) => (j === 0 ? 'a' : `a${j}`));
        expect(argFields, c.what).toEqual([...names, 'ac'].sort());
        expect(raw.ac!.toString(), c.what).toBe(String(pieces.length));
        for (const [j, name] of names.entries()) {
          const got = raw[name]!;
          expect(got.length, `${c.what}: ${name} is at most 64 bytes`).toBeLessThanOrEqual(64);
          expect(() => strictUtf8.decode(got), `${c.what}: ${name} is whole UTF-8 characters`).not.toThrow();
          expect(got.equals(pieces[j]!), `${c.what}: ${name}`).toBe(true);
        }
        expect(Buffer.concat(names.map((n) => raw[n]!)).equals(Buffer.from(json)), c.what).toBe(true);
      }
      expect(await h.admin.object('ENCODING', key), `${c.what} (${bytes} bytes)`).toBe(bytes <= 3072 ? 'listpack' : 'hashtable');
      expect((await handles[i]!.info()).args, c.what).toEqual([c.value]);
    }

    const worker = h.worker({ services: [svc] });
    await worker.start();
    const results = await Promise.all(handles.map((r) => r.get({ timeout: 15 })));
    for (const [i, c] of cases.entries()) {
      expect(results[i] === c.value, `${c.what}: the result is the input`).toBe(true);
      expect(svc.received.get(handles[i]!.id), `${c.what}: the handler got the input`).toEqual([c.value]);
    }
  });

  it('a unique task keeps its lock short (lu) and its long arguments in pieces; a key over 64 bytes keeps them whole', async () => {
    const h = fresh();
    const svc = new BatchingService();
    const tasks = h.dispatcher().tasks(BatchingService);
    const value = 'u'.repeat(200);
    const hashed = await tasks.uniqueEcho.delay(value);
    const long = await tasks.longKeyed.delay(value);

    // The lock keyed by the arguments' hash: over 64 bytes whole, so the record keeps what follows
    // '<base>lock:<task>:' (lu) and stays a listpack, its arguments in pieces.
    const key = h.taskKey(hashed.id);
    expect(await h.admin.hexists(key, 'lk')).toBe(0);
    const lu = (await h.admin.hget(key, 'lu'))!;
    expect(lu).toMatch(/^[0-9a-f]{40}$/);
    expect(Buffer.byteLength(await h.lockKeyOf(hashed.id))).toBeGreaterThan(64);
    expect(await h.admin.hget(key, 'ac')).toBe('4');
    expect(await h.admin.object('ENCODING', key)).toBe('listpack');

    // A key of its own over 64 bytes: the hash is a hashtable whatever happens, so the arguments stay whole.
    const longKey = h.taskKey(long.id);
    expect(await h.admin.hget(longKey, 'lu')).toBe('k'.repeat(70));
    expect(await h.admin.hget(longKey, 'a')).toBe(JSON.stringify([value]));
    expect(await h.admin.hexists(longKey, 'ac')).toBe(0);
    expect(await h.admin.hexists(longKey, 'a1')).toBe(0);
    expect(await h.admin.object('ENCODING', longKey)).toBe('hashtable');

    const worker = h.worker({ services: [svc] });
    await worker.start();
    expect(await hashed.get({ timeout: 10 })).toBe(value);
    expect(await long.get({ timeout: 10 })).toBe(value);
  });

  // start-tasks reads a1..a3 along with the record when there are at most 4 pieces, and the rest
  // with a second HMGET otherwise: a missing piece is caught on both paths.
  it.each([
    { bytes: 300, count: 5, drop: 'a1' },
    { bytes: 300, count: 5, drop: 'a4' },
    { bytes: 150, count: 3, drop: 'a1' },
    { bytes: 150, count: 3, drop: 'a2' },
    { bytes: 256, count: 4, drop: 'a3' },
  ])(
    'a missing piece ($drop of $count) ends the task FAILURE with MalformedTaskError and a dead letter; the handler never sees it',
    async ({ bytes, count, drop }) => {
      const h = fresh();
      const svc = new BatchingService();
      const tasks = h.dispatcher().tasks(BatchingService);
      const broken = await tasks.echo.delay('b'.repeat(bytes - 4));
      const fine = await tasks.echo.delay('f'.repeat(bytes - 4));
      const key = h.taskKey(broken.id);
      expect(await h.admin.hget(key, 'ac')).toBe(String(count));
      expect(await h.admin.hget(h.taskKey(fine.id), 'ac')).toBe(String(count));
      expect(await h.admin.hdel(key, drop)).toBe(1);
      expect((await broken.info()).args, 'info() cannot join the pieces').toBeUndefined();

      const worker = h.worker({ services: [svc] });
      await worker.start();
      expect(await fine.get({ timeout: 10 })).toBe('f'.repeat(bytes - 4));
      await waitFor(async () => (await broken.status()) === 'FAILURE', { what: 'the broken task to fail' });
      const info = await broken.info();
      expect(info.error?.name).toBe('MalformedTaskError');
      expect(info.error?.message).toBe('the record lacks a task name or arguments');
      expect(info.attempts).toBe(0);
      const dead = await h.deadLetters();
      expect(dead.map(({ id, reason }) => ({ id, reason }))).toEqual([{ id: broken.id, reason: 'the record lacks a task name or arguments' }]);
      expect(svc.received.has(broken.id)).toBe(false);
      expect(svc.received.get(fine.id)).toEqual(['f'.repeat(bytes - 4)]);
    },
  );

  it('same custom taskId: the same long arguments are the same task; other ones (differing only in a later piece) are refused', async () => {
    const h = fresh();
    const svc = new BatchingService();
    const d = h.dispatcher();
    const tasks = d.tasks(BatchingService);
    const long = 'r'.repeat(300); // 5 pieces
    const first = await tasks.echo.applyAsync([long], { taskId: 'report-7' });
    const created = await h.admin.hget(h.taskKey('report-7'), 'c');
    // Again, and twice more in one batch: all the same task, queued once.
    const again = await Promise.all([
      tasks.echo.applyAsync([long], { taskId: 'report-7' }),
      tasks.echo.applyAsync([long], { taskId: 'report-7' }),
      tasks.echo.applyAsync([long], { taskId: 'report-7' }),
    ]);
    for (const r of [first, ...again]) {
      expect(r.id).toBe('report-7');
      expect(r.duplicate).toBe(false);
    }
    expect(await waitOrder(h)).toEqual(['report-7']);
    expect(await h.admin.hget(h.taskKey('report-7'), 'c')).toBe(created);

    // Same first piece, a different last piece; and a different first piece.
    for (const other of [`${'r'.repeat(299)}s`, `s${'r'.repeat(299)}`]) {
      const error = await rejection(tasks.echo.applyAsync([other], { taskId: 'report-7' }));
      expect(error).toBeInstanceOf(ConfigError);
      expect(error.message).toBe('task id report-7 belongs to a task that has not ended; choose another taskId');
    }
    expect((await first.info()).args).toEqual([long]);

    // Over 3,072 bytes (kept whole): the same check.
    const huge = 'w'.repeat(4000);
    await tasks.echo.applyAsync([huge], { taskId: 'report-8' });
    expect((await tasks.echo.applyAsync([huge], { taskId: 'report-8' })).id).toBe('report-8');
    const error = await rejection(tasks.echo.applyAsync([`${huge}!`], { taskId: 'report-8' }));
    expect(error.message).toBe('task id report-8 belongs to a task that has not ended; choose another taskId');
    expect(await waitOrder(h)).toEqual(['report-7', 'report-8']);

    // Each ran once; once ended, the id can be reused with shorter arguments, and no old piece is left.
    const worker = h.worker({ services: [svc] });
    const ev = recordEvents(worker);
    await worker.start();
    expect(await first.get({ timeout: 10 })).toBe(long);
    expect(await d.result<string>('report-8').get({ timeout: 10 })).toBe(huge);
    expect(ev.started.map((e) => e.id).sort()).toEqual(['report-7', 'report-8']);
    // Stopped, so the re-sent task's record is read before a run adds its result to it.
    await worker.close();

    const shorter = 's'.repeat(100); // 104 bytes: 2 pieces
    const reused = await tasks.echo.applyAsync([shorter], { taskId: 'report-7' });
    expect(reused.id).toBe('report-7');
    const argFields = (await h.admin.hkeys(h.taskKey('report-7'))).filter((f) => /^a\d*$|^ac$/.test(f)).sort();
    expect(argFields).toEqual(['a', 'a1', 'ac']);
    expect(await h.admin.hget(h.taskKey('report-7'), 'ac')).toBe('2');
    expect(await h.admin.object('ENCODING', h.taskKey('report-7'))).toBe('listpack');
    expect((await reused.info()).args).toEqual([shorter]);
    await h.worker({ services: [svc] }).start();
    expect(await reused.get({ timeout: 10 })).toBe(shorter);
    expect(svc.received.get('report-7')).toEqual([shorter]);
  });

  it('a piece count (ac) that is not one of ours ends the task FAILURE with MalformedTaskError; the queue keeps running', async () => {
    const h = fresh();
    const svc = new BatchingService();
    const tasks = h.dispatcher().tasks(BatchingService);
    const broken = await tasks.echo.delay('b'.repeat(200));
    const fine = await tasks.echo.delay('f'.repeat(200));
    // Unbounded, it would make every fetch fail ("too many results to unpack") and lose the task.
    await h.admin.hset(h.taskKey(broken.id), 'ac', '100000');
    expect((await broken.info()).args).toBeUndefined();
    const worker = h.worker({ services: [svc] });
    const errors: Error[] = [];
    worker.on('error', (e) => errors.push(e));
    await worker.start();
    expect(await fine.get({ timeout: 10 })).toBe('f'.repeat(200));
    await waitFor(async () => (await broken.status()) === 'FAILURE', { what: 'the broken task to fail' });
    expect((await broken.info()).error).toMatchObject({ name: 'MalformedTaskError', message: 'the record lacks a task name or arguments' });
    expect(errors).toEqual([]);
    expect(svc.received.has(broken.id)).toBe(false);
  });
});

describe('close() and the worker', () => {
  const fresh = useHarness('batching');

  it('close() right after un-awaited delay() calls still sends them, then leaves no connection open', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const tasks = d.tasks(BatchingService);
    const one = tasks.add.delay(2, 3);
    // 60: one full batch goes out at once, the other 10 wait for the next tick.
    const burst = Promise.all(Array.from({ length: 60 }, (_, i) => tasks.add.delay(i, 0)));
    const many = tasks.add.delayMany([[7, 7], [8, 8]]);
    const closing = d.close();
    const late = await rejection(tasks.add.delay(9, 9));
    expect(late).toBeInstanceOf(ConfigError);
    expect(late.message).toBe('this dispatcher is closed');
    await closing;

    const handles = [await one, ...(await burst), ...(await many)];
    expect(handles).toHaveLength(63);
    expect(await waitOrder(h)).toEqual(handles.map((r) => r.id));
    expect(await statesOf(h, handles.map((r) => r.id))).toEqual(handles.map(() => 'PENDING'));
    expect(await storedArgs(h, [handles[0]!.id, handles[62]!.id])).toEqual(['[2,3]', '[8,8]']);
    await waitFor(async () => (await h.openConnections()).length === 0, { timeout: 3000, what: 'the dispatcher connection to close' });
  });

  it('close() after an await (scripts loaded, one small batch waiting for its tick) still sends it first', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const tasks = d.tasks(BatchingService);
    const warm = await tasks.add.delay(0, 0);
    // Now inside a promise continuation: close() must send the batch itself, before its QUIT,
    // rather than count on the nextTick flush.
    const pending = [tasks.add.delay(1, 1), tasks.add.applyAsync([2, 2], { countdown: 60 }), tasks.keyed.delay(3)];
    await d.close();
    const [a, b, c] = await Promise.all(pending);
    // '' is the wake-up marker the countdown task pushes (the delayed set was empty).
    expect(await waitOrder(h)).toEqual([warm.id, a!.id, '', c!.id]);
    expect(await statesOf(h, [a!.id, b!.id, c!.id])).toEqual(['PENDING', 'PENDING', 'PENDING']);
    expect(await h.admin.zrange(h.queueKey('delayed'), 0, -1)).toEqual([b!.id]);
    await waitFor(async () => (await h.openConnections()).length === 0, { timeout: 3000, what: 'the dispatcher connection to close' });
  });

  it('a second close() returns the first one\'s promise, which resolves once queued tasks are sent', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const pending = d.tasks(BatchingService).add.delay(1, 2);
    const first = d.close();
    const second = d.close();
    expect(second).toBe(first);
    await second;
    expect(await h.admin.hget(h.taskKey((await pending).id), 's'), 'sent before closing').toBe('PENDING');
  });

  // Each of the two calls in flight fetches at most ceil(concurrency / 2) tasks, and only for
  // slots the other has not reserved: at an odd concurrency the two halves overlap (3 + 3 > 5)
  // unless the reservation is counted.
  it.each([
    { concurrency: 4, n: 200 },
    { concurrency: 5, n: 100 },
  ])(
    'a worker at concurrency $concurrency (two calls in flight) runs $n tasks, never more than $concurrency at once, each exactly once',
    async ({ concurrency, n }) => {
      const h = fresh();
      const crowd = new Crowd(concurrency);
      const handles = await h.dispatcher().tasks(Crowd).work.delayMany(Array.from({ length: n }, (_, i) => [i] as [number]));
      const worker = h.worker({ services: [crowd], concurrency });
      const ev = recordEvents(worker);
      await worker.start();
      await waitFor(() => ev.succeeded.length === n, { timeout: 30_000, what: `${n} tasks to succeed` });
      expect(crowd.max).toBe(concurrency);
      expect(crowd.runs.size).toBe(n);
      expect([...crowd.runs.values()].every((runs) => runs === 1)).toBe(true);
      expect(new Set(ev.started.map((e) => e.id)).size).toBe(n);
      expect(ev.started).toHaveLength(n);
      expect(ev.failed).toEqual([]);
      expect(ev.errors).toEqual([]);
      expect(await statesOf(h, handles.map((r) => r.id))).toEqual(handles.map(() => 'SUCCESS'));
      expect(await storedArgs(h, [handles[n - 1]!.id])).toEqual([`[${n - 1}]`]);
      expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    },
  );
});

describe('fetch pops ids in bulk', () => {
  const fresh = useHarness('batching');

  it('ids popped past the examining bound go back in order: good tasks behind 80 revoked ones start once each, in FIFO order', async () => {
    const h = fresh();
    const svc = new BatchingService();
    const tasks = h.dispatcher().tasks(BatchingService);
    const revoked = await tasks.add.delayMany(Array.from({ length: 80 }, (_, i) => [i, 0] as [number, number]));
    const good = await tasks.add.delayMany(Array.from({ length: 40 }, (_, i) => [1000 + i, 0] as [number, number]));
    for (const r of revoked) expect(await r.revoke()).toBe('REVOKED');
    // Concurrency 50: each call asks for 25 and pops up to 25 ids at once. Examining stops after
    // 25 + 64 = 89 ids, in the middle of the fourth pop (5 revoked, then good ones): the ids
    // popped and not examined must go back to the head of the queue, in their order.
    const worker = h.worker({ services: [svc], concurrency: 50 });
    const ev = recordEvents(worker);
    await worker.start();
    await waitFor(() => ev.succeeded.length === 40, { what: '40 good tasks to succeed' });
    expect(ev.started.map((e) => e.id)).toEqual(good.map((r) => r.id));
    expect(ev.succeeded.map((e) => e.id).sort()).toEqual(good.map((r) => r.id).sort());
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
  });
});
