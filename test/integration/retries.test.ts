// Retries: backoff bounds on the Redis clock, `on` filters, non-retryable errors, the unique lock
// through RETRY, currentTask().retry(), and option checks at decoration.
import type { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import * as api from 'heimdall-tasks';
import { ConfigError, Task, TaskFailedError, currentTask, type Worker, type WorkerEvents } from 'heimdall-tasks';
import { NonRetryableError } from '../../src/core/errors.js';
import { normalizeRetries } from '../../src/core/task/task-options.js';
import type { QueueKeys } from '../../src/core/protocol/queue-keys.js';
import { decorationError, FIELDS, lockOfRecord, redisNowMs, useHarness, waitFor, type Harness, recordEvents, type RecordedEvents } from '../helpers.js';

/** What a task saw of its own record at the start of one attempt (server-clock times). */
interface Seen {
  id: string;
  attempt: number;
  /** `st`: start of this attempt, Redis clock ms. */
  st: number;
  /** `d`: due time of the retry that led to this attempt (undefined on the first). */
  d: number | undefined;
  /** `ry`: retries made before this attempt. */
  ry: number;
  /** Holder of the task's unique lock, for unique tasks. */
  lockHolder: string | null | undefined;
  state: string | null;
}

const EXP = { type: 'exponential', base: '100ms', cap: '400ms' } as const;
/** Bound of retry k (0-based) for EXP: min(cap, base * 2^k). */
const expBound = (k: number): number => Math.min(400, 100 * 2 ** k);

class RetryProbe {
  readonly seen: Seen[] = [];
  constructor(
    private readonly redis: Redis,
    private readonly keys: QueueKeys,
  ) {}

  /** Reads the running task's record: the only way to get each attempt's server-clock start. */
  private async observe(): Promise<Seen> {
    const t = currentTask();
    const { startedAt, due, retries, lockKey, lockUnique, name, state } = FIELDS;
    const [st, d, ry, s, lk, lu, n] = await this.redis.hmget(this.keys.task(t.id), startedAt, due, retries, state, lockKey, lockUnique, name);
    const lock = lockOfRecord(this.keys, [lk, lu, n]);
    const lockHolder = lock ? await this.redis.get(lock) : undefined;
    const seen: Seen = { id: t.id, attempt: t.attempt, st: Number(st), d: d === null ? undefined : Number(d), ry: Number(ry ?? 0), lockHolder, state: s ?? null };
    this.seen.push(seen);
    return seen;
  }

  attemptsOf(id: string): Seen[] {
    return this.seen.filter((s) => s.id === id).sort((a, b) => a.attempt - b.attempt);
  }

  @Task({ retries: { max: 4, backoff: EXP, jitter: false } })
  async exponential(label: string): Promise<string> {
    const s = await this.observe();
    throw new Error(`${label} fail ${s.attempt}`);
  }

  @Task({ retries: { max: 4, backoff: EXP } })
  async jittered(label: string): Promise<string> {
    const s = await this.observe();
    throw new Error(`${label} fail ${s.attempt}`);
  }

  @Task({ retries: { max: 3, backoff: '150ms', jitter: false } })
  async fixed(): Promise<string> {
    const s = await this.observe();
    throw new Error(`fixed fail ${s.attempt}`);
  }

  @Task({ retries: { max: 2, backoff: '20ms', jitter: false, on: [TypeError] } })
  async picky(kind: 'type' | 'subtype' | 'range'): Promise<string> {
    const s = await this.observe();
    if (kind === 'type') throw new TypeError(`type ${s.attempt}`);
    if (kind === 'subtype') throw new NarrowTypeError(`subtype ${s.attempt}`);
    throw new RangeError(`range ${s.attempt}`);
  }

  @Task({ retries: { max: 3, backoff: '20ms', jitter: false } })
  async byDefault(kind: 'plain' | 'nonretryable' | 'serialization' | 'config'): Promise<string> {
    const s = await this.observe();
    if (kind === 'nonretryable') throw new NonRetryableError(`give up ${s.attempt}`);
    if (kind === 'serialization') return new Map([[1, 2]]) as unknown as string;
    if (kind === 'config') currentTask().retry({ countdown: 'soon' });
    throw new Error(`plain ${s.attempt}`);
  }

  @Task({ retries: { max: 3, backoff: '20ms', jitter: false, on: [Error] } })
  async refusesEvenOnError(): Promise<string> {
    const s = await this.observe();
    throw new NonRetryableError(`give up ${s.attempt}`);
  }

  @Task<[key: string]>({ unique: true, key: ([k]) => k, retries: { max: 3, backoff: '400ms', jitter: false } })
  async lockedFlaky(key: string): Promise<string> {
    const s = await this.observe();
    if (s.attempt <= 3) throw new Error(`${key} fail ${s.attempt}`);
    return `${key} ok on ${s.attempt}`;
  }

  @Task({ unique: true, retries: { max: 3, backoff: '20ms', jitter: false } })
  async lockedDoomed(key: string): Promise<string> {
    const s = await this.observe();
    throw new Error(`${key} fail ${s.attempt}`);
  }

  @Task({ retries: { max: 2, backoff: '20ms', jitter: false } })
  async recovers(): Promise<string> {
    const s = await this.observe();
    if (s.attempt === 1) throw new Error('first try fails');
    return `ok on ${s.attempt}`;
  }

  /** Asks to be retried (countdown 150 ms) on its first `times` attempts; no `retries` option. */
  @Task()
  async asksAgain(times: number): Promise<string> {
    const s = await this.observe();
    if (s.attempt <= times) return currentTask().retry({ countdown: '150ms' });
    return `attempt ${s.attempt}`;
  }

  /** Always asks to be retried: past the default max of 3 it ends FAILURE. */
  @Task()
  async alwaysAsks(): Promise<string> {
    await this.observe();
    return currentTask().retry({ countdown: 0.03 });
  }

  /** retry() bypasses `on`, uses the backoff without a countdown, and keeps its error. */
  @Task({ retries: { max: 1, backoff: '120ms', jitter: false, on: [TypeError] } })
  async asksWithError(): Promise<string> {
    const s = await this.observe();
    return currentTask().retry({ error: new RangeError(`not yet ${s.attempt}`) });
  }
}

class NarrowTypeError extends TypeError {}

type Tracked = RecordedEvents;

async function setup(h: Harness, concurrency = 4): Promise<{ probe: RetryProbe; worker: Worker; ev: Tracked }> {
  const probe = new RetryProbe(h.admin, h.queueKeys());
  const worker = h.worker({ services: [probe], concurrency });
  const ev = recordEvents(worker);
  await worker.start();
  return { probe, worker, ev };
}

function ended(ev: Tracked, id: string, how: 'failed' | 'succeeded'): Promise<unknown> {
  return waitFor(() => ev[how].find((e) => e.id === id), { what: `task ${id} to be ${how}` });
}

function retriesOf(ev: Tracked, id: string): WorkerEvents['retried'][0][] {
  return ev.retried.filter((e) => e.id === id).sort((a, b) => a.attempt - b.attempt);
}

/**
 * Checks the server-clock timeline of a retried task: retry k is announced after attempt k+1
 * with delayMs_k, stored as due time d_k = (finish of attempt k+1) + delayMs_k, and attempt
 * k+2 starts no sooner than d_k. Returns how late each retry started after its due time.
 */
function checkTimeline(seen: Seen[], retried: WorkerEvents['retried'][0][], bound: (k: number) => [number, number]): number[] {
  expect(retried.map((r) => r.attempt)).toEqual(seen.slice(0, -1).map((s) => s.attempt));
  const lateness: number[] = [];
  for (let k = 0; k < retried.length; k++) {
    const delay = retried[k]!.delayMs;
    const [lo, hi] = bound(k);
    expect(Number.isInteger(delay), `delay of retry ${k} is whole ms`).toBe(true);
    expect(delay, `delay of retry ${k}`).toBeGreaterThanOrEqual(lo);
    expect(delay, `delay of retry ${k}`).toBeLessThanOrEqual(hi);
    const before = seen[k]!;
    const after = seen[k + 1]!;
    expect(after.ry).toBe(k + 1);
    const due = after.d!;
    // The retry was scheduled when attempt k+1 ended, which is after it started.
    expect(due - delay, `retry ${k} scheduled after attempt ${k + 1} started`).toBeGreaterThanOrEqual(before.st);
    expect(after.st, `attempt ${k + 2} starts no sooner than its due time`).toBeGreaterThanOrEqual(due);
    expect(after.st - before.st).toBeGreaterThanOrEqual(delay);
    lateness.push(after.st - due);
  }
  return lateness;
}

describe('retries with backoff', () => {
  const fresh = useHarness('retries');

  it('exponential without jitter: delays are exactly min(cap, base * 2^k) on the Redis clock', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h);
    const handle = await h.dispatcher().tasks(RetryProbe).exponential.delay('exp');
    await ended(ev, handle.id, 'failed');
    const seen = probe.attemptsOf(handle.id);
    expect(seen.map((s) => s.attempt)).toEqual([1, 2, 3, 4, 5]);
    const retried = retriesOf(ev, handle.id);
    expect(retried.map((r) => r.delayMs)).toEqual([100, 200, 400, 400]);
    expect(retried.map((r) => r.error.message)).toEqual(['exp fail 1', 'exp fail 2', 'exp fail 3', 'exp fail 4']);
    const lateness = checkTimeline(seen, retried, (k) => [expBound(k), expBound(k)]);
    const info = await handle.info();
    expect(info.state).toBe('FAILURE');
    expect(info.attempts).toBe(5);
    expect(info.error?.message).toBe('exp fail 5');
    expect(ev.failed.filter((e) => e.id === handle.id)).toHaveLength(1);
    await expect(handle.get({ timeout: 5 })).rejects.toBeInstanceOf(TaskFailedError);
    console.info(
      `[figures] exponential no jitter: delays ${retried.map((r) => r.delayMs).join('/')} ms; start after due (Redis clock) ${lateness.join('/')} ms`,
    );
  });

  it('exponential with jitter: every delay lies in [0, min(cap, base * 2^k)] and the delays vary', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h, 3);
    const ref = h.dispatcher().tasks(RetryProbe).jittered;
    const handles = await Promise.all(['j1', 'j2', 'j3'].map((l) => ref.delay(l)));
    await Promise.all(handles.map((hd) => ended(ev, hd.id, 'failed')));
    const delays: number[] = [];
    const late: number[] = [];
    for (const hd of handles) {
      const seen = probe.attemptsOf(hd.id);
      expect(seen.map((s) => s.attempt)).toEqual([1, 2, 3, 4, 5]);
      const retried = retriesOf(ev, hd.id);
      late.push(...checkTimeline(seen, retried, (k) => [0, expBound(k)]));
      delays.push(...retried.map((r) => r.delayMs));
      expect((await hd.info()).attempts).toBe(5);
    }
    expect(delays).toHaveLength(12);
    // Full jitter draws uniformly; twelve draws all landing on the bound would mean no jitter.
    expect(delays.filter((d, i) => d !== expBound(i % 4)).length).toBeGreaterThan(0);
    expect(new Set(delays).size).toBeGreaterThan(1);
    console.info(
      `[figures] exponential with jitter: delays ${delays.join('/')} ms (bounds ${[0, 1, 2, 3].map(expBound).join('/')} per task); start after due ${Math.min(...late)}..${Math.max(...late)} ms`,
    );
  });

  it('a fixed backoff waits the same delay before every retry', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h);
    const handle = await h.dispatcher().tasks(RetryProbe).fixed.delay();
    await ended(ev, handle.id, 'failed');
    const retried = retriesOf(ev, handle.id);
    expect(retried.map((r) => r.delayMs)).toEqual([150, 150, 150]);
    checkTimeline(probe.attemptsOf(handle.id), retried, () => [150, 150]);
    expect((await handle.info()).attempts).toBe(4);
  });

  it('the retried event carries the attempt, the error and the delay; state RETRY and info().attempts between attempts', async () => {
    const h = fresh();
    const { probe, ev, worker } = await setup(h);
    const dispatcher = h.dispatcher();
    // Read at the moment each retry is announced, 150 ms before the next attempt is due.
    const between: Promise<[string, string | undefined, number, boolean]>[] = [];
    worker.on('retried', (e) => {
      between.push(
        (async () => {
          const info = await dispatcher.result(e.id).info();
          const now = await redisNowMs(h.admin);
          return [info.state, info.error?.message, info.attempts, now < (info.dueAt?.getTime() ?? 0)];
        })(),
      );
    });
    const handle = await dispatcher.tasks(RetryProbe).fixed.delay();
    await ended(ev, handle.id, 'failed');
    const first = retriesOf(ev, handle.id)[0]!;
    expect(first).toMatchObject({ id: handle.id, name: 'RetryProbe.fixed', queue: 'default', args: [], attempt: 1, delayMs: 150 });
    expect(first.error).toMatchObject({ name: 'Error', message: 'fixed fail 1' });
    expect(first.runtimeMs).toBeGreaterThanOrEqual(0);
    expect(await Promise.all(between)).toEqual([
      ['RETRY', 'fixed fail 1', 1, true],
      ['RETRY', 'fixed fail 2', 2, true],
      ['RETRY', 'fixed fail 3', 3, true],
    ]);
    // Each attempt saw itself STARTED with the retries made so far.
    expect(probe.attemptsOf(handle.id).map((s) => [s.state, s.ry])).toEqual([
      ['STARTED', 0],
      ['STARTED', 1],
      ['STARTED', 2],
      ['STARTED', 3],
    ]);
    const info = await handle.info();
    expect([info.state, info.attempts, info.error?.message]).toEqual(['FAILURE', 4, 'fixed fail 4']);
  });

  it('a task that succeeds after a retry ends SUCCESS with its result and no error', async () => {
    const h = fresh();
    const { ev } = await setup(h);
    const handle = await h.dispatcher().tasks(RetryProbe).recovers.delay();
    expect(await handle.get({ timeout: 10 })).toBe('ok on 2');
    await ended(ev, handle.id, 'succeeded');
    const info = await handle.info();
    expect(info.state).toBe('SUCCESS');
    expect(info.attempts).toBe(2);
    expect(info.result).toBe('ok on 2');
    // TaskInfo.error is documented as "the error, once FAILURE"; the first attempt's error must not linger.
    expect(info.error).toBeUndefined();
  });
});

describe('which errors are retried', () => {
  const fresh = useHarness('retries-on');

  it('on: [TypeError] retries a TypeError (and a subclass) but not a RangeError', async () => {
    const h = fresh();
    const { ev } = await setup(h);
    const ref = h.dispatcher().tasks(RetryProbe).picky;
    const [type, sub, range] = await Promise.all([ref.delay('type'), ref.delay('subtype'), ref.delay('range')]);
    await Promise.all([type, sub, range].map((hd) => ended(ev, hd.id, 'failed')));
    expect(retriesOf(ev, type.id).map((r) => r.error.name)).toEqual(['TypeError', 'TypeError']);
    expect((await type.info()).attempts).toBe(3);
    expect((await type.info()).error).toMatchObject({ name: 'TypeError', message: 'type 3' });
    expect(retriesOf(ev, sub.id).map((r) => r.error.message)).toEqual(['subtype 1', 'subtype 2']);
    expect((await sub.info()).attempts).toBe(3);
    expect(retriesOf(ev, range.id)).toEqual([]);
    const r = await range.info();
    expect(r.state).toBe('FAILURE');
    expect(r.attempts).toBe(1);
    expect(r.error).toMatchObject({ name: 'RangeError', message: 'range 1' });
  });

  it('NonRetryableError, SerializationError and ConfigError are never retried; a plain Error is', async () => {
    const h = fresh();
    const { ev } = await setup(h);
    const d = h.dispatcher();
    const ref = d.tasks(RetryProbe).byDefault;
    const [plain, nonRetryable, serialization, config, evenOnError] = await Promise.all([
      ref.delay('plain'),
      ref.delay('nonretryable'),
      ref.delay('serialization'),
      ref.delay('config'),
      d.tasks(RetryProbe).refusesEvenOnError.delay(),
    ]);
    const all = [plain, nonRetryable, serialization, config, evenOnError];
    await Promise.all(all.map((hd) => ended(ev, hd.id, 'failed')));
    expect((await plain.info()).attempts).toBe(4);
    expect(retriesOf(ev, plain.id).map((r) => r.error.message)).toEqual(['plain 1', 'plain 2', 'plain 3']);
    for (const [hd, name] of [
      [nonRetryable, 'NonRetryableError'],
      [serialization, 'SerializationError'],
      [config, 'ConfigError'],
      [evenOnError, 'NonRetryableError'],
    ] as const) {
      const info = await hd.info();
      expect({ state: info.state, attempts: info.attempts, error: info.error?.name }, name).toEqual({ state: 'FAILURE', attempts: 1, error: name });
      expect(retriesOf(ev, hd.id)).toEqual([]);
    }
    expect((await nonRetryable.info()).error?.message).toBe('give up 1');
  });

  it('NonRetryableError is part of the public API', () => {
    // The issue says users can throw it; tasks must not have to import from src/.
    expect(Object.keys(api)).toContain('NonRetryableError');
    expect((api as Record<string, unknown>).NonRetryableError).toBe(NonRetryableError);
  });
});

describe('a unique task keeps its lock through its retries', () => {
  const fresh = useHarness('retries-lock');

  it('holds the lock in every attempt and between them (state RETRY), then frees it at the end', async () => {
    const h = fresh();
    const { probe, ev, worker } = await setup(h);
    const d = h.dispatcher();
    const ref = d.tasks(RetryProbe).lockedFlaky;
    const lockKey = h.queueKeys().lock('RetryProbe.lockedFlaky', 'k1');
    // At each announced retry (400 ms before the next attempt is due), read state, lock and the
    // Redis clock in one transaction; the clock proves the read came before the next attempt.
    const between: Promise<[unknown, unknown, unknown, unknown]>[] = [];
    const duplicates: Promise<{ id: string; duplicate: boolean }>[] = [];
    worker.on('retried', (e) => {
      between.push(
        h.admin
          .multi()
          .hget(h.taskKey(e.id), 's')
          .get(lockKey)
          .time()
          .hget(h.taskKey(e.id), 'd')
          .exec()
          .then((r) => r!.map(([err, v]) => (err ? err : v)) as [unknown, unknown, unknown, unknown]),
      );
      duplicates.push(ref.delay('k1').then((r) => ({ id: r.id, duplicate: r.duplicate })));
    });
    const handle = await ref.delay('k1');
    expect(await h.recordLock(handle.id)).toBe(lockKey);
    expect(await handle.get({ timeout: 15 })).toBe('k1 ok on 4');
    await ended(ev, handle.id, 'succeeded');
    expect(probe.attemptsOf(handle.id).map((s) => s.lockHolder)).toEqual([handle.id, handle.id, handle.id, handle.id]);
    const reads = await Promise.all(between);
    expect(reads).toHaveLength(3);
    for (const [state, holder, time, due] of reads) {
      expect(state).toBe('RETRY');
      expect(holder).toBe(handle.id);
      const [sec, usec] = time as [string, string];
      expect(Number(sec) * 1000 + Math.floor(Number(usec) / 1000)).toBeLessThan(Number(due));
    }
    // A dispatch while it waits in RETRY is a duplicate of it.
    expect(await Promise.all(duplicates)).toEqual([
      { id: handle.id, duplicate: true },
      { id: handle.id, duplicate: true },
      { id: handle.id, duplicate: true },
    ]);
    expect(retriesOf(ev, handle.id).map((r) => r.delayMs)).toEqual([400, 400, 400]);
    expect((await handle.info()).attempts).toBe(4);
    expect(await h.admin.exists(lockKey)).toBe(0);
    expect(await ref.current('k1')).toBeNull();
  });

  it('frees the lock when the retries run out and the task ends FAILURE', async () => {
    const h = fresh();
    const { probe, ev } = await setup(h);
    const ref = h.dispatcher().tasks(RetryProbe).lockedDoomed;
    const handle = await ref.delay('k2');
    const lockKey = await h.recordLock(handle.id);
    expect(lockKey).toMatch(/:lock:RetryProbe\.lockedDoomed:/);
    await ended(ev, handle.id, 'failed');
    expect(probe.attemptsOf(handle.id).map((s) => s.lockHolder)).toEqual([handle.id, handle.id, handle.id, handle.id]);
    expect((await handle.info()).attempts).toBe(4);
    expect(await h.admin.exists(lockKey!)).toBe(0);
    const again = await ref.delay('k2');
    expect(again.duplicate).toBe(false);
    expect(again.id).not.toBe(handle.id);
    await ended(ev, again.id, 'failed');
  });
});

describe('currentTask().retry()', () => {
  const fresh = useHarness('retries-request');

  it('retry({ countdown }) schedules the next attempt after the countdown, state RETRY meanwhile', async () => {
    const h = fresh();
    const { probe, ev, worker } = await setup(h);
    const states: Promise<string | null>[] = [];
    worker.on('retried', (e) => states.push(h.admin.hget(h.taskKey(e.id), 's')));
    const handle = await h.dispatcher().tasks(RetryProbe).asksAgain.delay(2);
    expect(await handle.get({ timeout: 10 })).toBe('attempt 3');
    await ended(ev, handle.id, 'succeeded');
    const retried = retriesOf(ev, handle.id);
    expect(retried.map((r) => [r.attempt, r.delayMs, r.error.name])).toEqual([
      [1, 150, 'RetryRequest'],
      [2, 150, 'RetryRequest'],
    ]);
    checkTimeline(probe.attemptsOf(handle.id), retried, () => [150, 150]);
    expect(await Promise.all(states)).toEqual(['RETRY', 'RETRY']);
    expect((await handle.info()).attempts).toBe(3);
  });

  it('past the maximum (3 without a retries option) the task ends FAILURE', async () => {
    const h = fresh();
    const { ev } = await setup(h);
    const handle = await h.dispatcher().tasks(RetryProbe).alwaysAsks.delay();
    await ended(ev, handle.id, 'failed');
    expect(retriesOf(ev, handle.id).map((r) => r.delayMs)).toEqual([30, 30, 30]);
    const info = await handle.info();
    expect(info.state).toBe('FAILURE');
    expect(info.attempts).toBe(4);
    expect(info.error).toMatchObject({ name: 'RetryRequest', message: 'the task asked to be retried' });
    await expect(handle.get({ timeout: 5 })).rejects.toMatchObject({ remoteName: 'RetryRequest' });
  });

  it('retry({ error }) uses the backoff, ignores `on`, counts against retries.max and keeps the error', async () => {
    const h = fresh();
    const { ev } = await setup(h);
    const handle = await h.dispatcher().tasks(RetryProbe).asksWithError.delay();
    await ended(ev, handle.id, 'failed');
    const retried = retriesOf(ev, handle.id);
    expect(retried.map((r) => [r.delayMs, r.error.name, r.error.message])).toEqual([[120, 'RangeError', 'not yet 1']]);
    const info = await handle.info();
    expect(info.attempts).toBe(2);
    expect(info.error).toMatchObject({ name: 'RangeError', message: 'not yet 2' });
  });
});

describe('bad retries options are refused at decoration', () => {
  it.each<[label: string, retries: unknown, message: string]>([
    ['not an object', 3, 'retries must be an object such as { max: 3 }, got 3'],
    ['null', null, 'retries must be an object such as { max: 3 }, got null'],
    ['an array', [3], 'retries must be an object such as { max: 3 }, got [3]'],
    ['no max', {}, 'retries.max must be a whole number of retries >= 0, got undefined'],
    ['negative max', { max: -1 }, 'retries.max must be a whole number of retries >= 0, got -1'],
    ['fractional max', { max: 1.5 }, 'retries.max must be a whole number of retries >= 0, got 1.5'],
    ['string max', { max: '3' }, 'retries.max must be a whole number of retries >= 0, got "3"'],
    ['unknown option', { max: 1, delay: 5 }, "retries: unknown option 'delay'; known: max, backoff, jitter, on"],
    ['backoff text', { max: 1, backoff: 'sometimes' }, 'retries.backoff must be a positive number of seconds'],
    ['backoff 0', { max: 1, backoff: 0 }, 'retries.backoff must be a positive number of seconds'],
    ['backoff linear', { max: 1, backoff: { type: 'linear' } }, `retries.backoff object must be { type: 'exponential', base?, cap? }, got type "linear"`],
    ['backoff base -1', { max: 1, backoff: { type: 'exponential', base: -1 } }, 'retries.backoff.base must be a positive number of seconds'],
    ['backoff cap "x"', { max: 1, backoff: { type: 'exponential', cap: 'x' } }, 'retries.backoff.cap must be a positive number of seconds'],
    ['jitter "yes"', { max: 1, jitter: 'yes' }, 'retries.jitter must be true or false, got "yes"'],
    ['on not an array', { max: 1, on: TypeError }, 'retries.on must be an array of error classes such as [TypeError], got a function'],
    ['on [42]', { max: 1, on: [42] }, 'retries.on must be an array of error classes such as [TypeError], got [42]'],
    ['on ["TypeError"]', { max: 1, on: ['TypeError'] }, 'retries.on must be an array of error classes'],
  ])('%s', (_label, retries, message) => {
    const err = decorationError({ retries });
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toContain(message);
    expect(err.message).toContain('@Task on Options.m: ');
  });

  it('normalizes the backoff forms', () => {
    expect(normalizeRetries({ max: 2 }, 'r')).toEqual({
      max: 2,
      backoff: { kind: 'exponential', baseMs: 1000, capMs: 600_000 },
      jitter: true,
      on: undefined,
    });
    expect(normalizeRetries({ max: 2, backoff: 'exponential', jitter: false }, 'r').backoff).toEqual({
      kind: 'exponential',
      baseMs: 1000,
      capMs: 600_000,
    });
    expect(normalizeRetries({ max: 2, backoff: EXP }, 'r').backoff).toEqual({ kind: 'exponential', baseMs: 100, capMs: 400 });
    expect(normalizeRetries({ max: 2, backoff: 5 }, 'r').backoff).toEqual({ kind: 'fixed', ms: 5000 });
    expect(normalizeRetries({ max: 0, backoff: '250ms', on: [TypeError] }, 'r')).toEqual({
      max: 0,
      backoff: { kind: 'fixed', ms: 250 },
      jitter: true,
      on: [TypeError],
    });
  });
});
