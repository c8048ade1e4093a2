/**
 * revoke-4, requeue-3, admit-6 and decline-7 declare in KEYS the unique lock and rate window they touch
 * (issue 12, point 2; docs/architecture.md "Slot discipline"). The caller reads the keys the
 * task's record names (lk, rk) just before the call; the script checks that the record still
 * names them and otherwise changes nothing and answers KEYS_CHANGED, and the caller reads again
 * and calls again, at most five times (includes/declared.lua).
 *
 * The scripts are driven here directly, as a worker or a producer calls them, with a declared
 * key that is not the one the record names (what a record changed between the read and the call
 * looks like to the script), and through scripts.ts with a ScriptRunner whose read is followed by
 * a change of the record, or that counts its reads.
 */
import { describe, expect, it } from 'vitest';
import { Task, UnexpectedReplyError } from 'heimdall-tasks';
import { QueueKeys } from '../../src/core/protocol/queue-keys.js';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { fetchStarting } from '../fetch-starting.js';
import { admit, decline, requeue, revoke, type RunRef, type WorkerIdentity } from '../../src/core/protocol/scripts.js';
import { admit as admitScript, decline as declineScript, requeue as requeueScript, revoke as revokeScript } from '../../src/redis-scripts/scripts.generated.js';
import { FIELDS, useHarness, type Harness } from '../helpers.js';

const TTL = 86_400_000;
const WORKER: WorkerIdentity = { workerId: 'W', leaseMs: 30_000, resultExpiresMs: TTL, eventsCap: 0 };

class Locked {
  @Task({ unique: true })
  async single(key: string): Promise<string> {
    return key;
  }

  @Task({ rateLimit: [5, 3600] })
  async limited(n: number): Promise<number> {
    return n;
  }

  @Task()
  async plain(n: number): Promise<number> {
    return n;
  }

  @Task({ unique: true, rateLimit: [5, 3600] })
  async guarded(key: string): Promise<string> {
    return key;
  }
}

/**
 * A ScriptRunner whose reads of a record's fields are counted, and after each of which
 * `afterRead` may change the record (what another process could do between the read and the
 * script call).
 */
class WatchedRunner extends ScriptRunner {
  reads = 0;
  afterRead: ((read: number) => Promise<void>) | undefined;

  override async fields(key: string, fields: readonly string[]): Promise<(string | null)[]> {
    const values = await super.fields(key, fields);
    this.reads++;
    await this.afterRead?.(this.reads);
    return values;
  }
}

/** A queue of the harness, its runner, and a worker's start of one task by hand. */
function side(h: Harness) {
  const keys = new QueueKeys(h.prefix, 'default');
  const runner = new WatchedRunner(h.admin);
  return {
    keys,
    runner,
    tasks: h.dispatcher().tasks(Locked),
    /** Starts the next task as WORKER; its id and run token. */
    async start(): Promise<RunRef> {
      const [run] = (await fetchStarting(runner, keys, WORKER, 1)).started;
      expect(run, 'a task to start').toBeDefined();
      return { id: run!.id, token: run!.token };
    },
    /** State, whether the id holds a lease, and who holds `lock`. */
    async where(id: string, lock: string): Promise<[string | null, boolean, string | null]> {
      return [await h.field(id, 'state'), (await h.admin.zscore(keys.active, id)) !== null, await h.admin.get(lock)];
    },
  };
}

describe('revoke-4 declares the lock it releases', () => {
  const fresh = useHarness('declared-revoke');

  it('answers KEYS_CHANGED and changes nothing when the record names another lock than the one declared, or one where none is', async () => {
    const h = fresh();
    const s = side(h);
    const queued = await s.tasks.single.applyAsync(['q']);
    const lock = await h.lockKeyOf(queued.id);
    const other = s.keys.lock('Locked.single', 'other');
    const call = (declared: string[], terminate: boolean, id = queued.id) =>
      s.runner.run<[string | number, string]>(revokeScript, [s.keys.task(id), s.keys.active, s.keys.delayed, s.keys.events, ...declared], [s.keys.base, id, terminate ? '1' : '0', TTL, 'revoked', 0]);

    for (const declared of [[other], []]) {
      expect(await call(declared, false)).toEqual(['KEYS_CHANGED', '']);
      expect([await h.field(queued.id, 'state'), await h.admin.get(lock), await h.admin.lpos(s.keys.wait, queued.id)]).toEqual(['PENDING', queued.id, 0]);
    }
    // A plain task's record names no lock: declaring one is as wrong.
    const plain = await s.tasks.plain.applyAsync([1]);
    expect(await call([other], false, plain.id)).toEqual(['KEYS_CHANGED', '']);
    expect(await h.field(plain.id, 'state')).toBe('PENDING');
    // The lock the record names (none for the plain task): revoked, and the lock released.
    expect(await call([lock], false)).toEqual([2, 'REVOKED']);
    expect(await h.admin.exists(lock)).toBe(0);
    expect(await call([], false, plain.id)).toEqual([2, 'REVOKED']);

    // Running, with terminate: the same check before the task ends.
    const running = await s.tasks.single.applyAsync(['r']);
    const runningLock = await h.lockKeyOf(running.id);
    expect((await s.start()).id).toBe(running.id);
    expect(await call([other], true, running.id)).toEqual(['KEYS_CHANGED', '']);
    expect(await s.where(running.id, runningLock)).toEqual(['STARTED', true, running.id]);
    expect(await call([runningLock], true, running.id)).toEqual([3, 'REVOKED']);
    expect(await s.where(running.id, runningLock)).toEqual(['REVOKED', false, null]);
  });

  it('reads the lock again when the record names another one by the time the script runs, and releases that one', async () => {
    const h = fresh();
    const s = side(h);
    const task = await s.tasks.single.applyAsync(['k']);
    const first = await h.lockKeyOf(task.id);
    // After the first read the record is rewritten to name another lock, which the task holds
    // (as a task sent again under the same id with another key would).
    const second = s.keys.lock('Locked.single', 'second');
    s.runner.afterRead = async (read) => {
      if (read !== 1) return;
      await h.admin.hset(s.keys.task(task.id), FIELDS.lockKey, second);
      await h.admin.set(second, task.id);
    };
    expect(await revoke(s.runner, s.keys, task.id, false, TTL, 'revoked', 0)).toEqual({ code: 'revoked', state: 'REVOKED' });
    expect(s.runner.reads).toBe(2);
    // The lock the record named at the call is released; the one it no longer names is not touched.
    expect(await h.admin.exists(second)).toBe(0);
    expect(await h.admin.get(first)).toBe(task.id);
    expect(await task.status()).toBe('REVOKED');
  });

  it('gives up with an UnexpectedReplyError after five reads when the record changes after every one, having changed nothing', async () => {
    const h = fresh();
    const s = side(h);
    const task = await s.tasks.single.applyAsync(['k']);
    const lock = await h.lockKeyOf(task.id);
    s.runner.afterRead = async (read) => {
      await h.admin.hset(s.keys.task(task.id), FIELDS.lockKey, s.keys.lock('Locked.single', `moved-${read}`));
    };
    const error = await revoke(s.runner, s.keys, task.id, false, TTL, 'revoked', 0).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnexpectedReplyError);
    expect((error as Error).message).toMatch(/revoke script answered KEYS_CHANGED 5 times: the record of task/);
    expect(s.runner.reads).toBe(5);
    expect([await task.status(), await h.admin.get(lock), await h.admin.lpos(s.keys.wait, task.id)]).toEqual(['PENDING', task.id, 0]);
  });
});

describe('requeue-3 declares the lock of a run whose revoke was requested', () => {
  const fresh = useHarness('declared-requeue');

  it('a task revoked while it ran ends REVOKED at the hand-back, and the lock its record names is released', async () => {
    const h = fresh();
    const s = side(h);
    const task = await s.tasks.single.applyAsync(['k']);
    const lock = await h.lockKeyOf(task.id);
    const run = await s.start();
    expect(await task.revoke()).toBe('STARTED');
    expect(await h.admin.get(lock)).toBe(task.id);
    expect(await requeue(s.runner, s.keys, WORKER, [run])).toEqual({ count: 0, problem: '' });
    expect(s.runner.reads).toBe(1);
    expect(await s.where(task.id, lock)).toEqual(['REVOKED', false, null]);
    expect(await h.admin.lpos(s.keys.wait, task.id)).toBeNull();
  });

  it('answers KEYS_CHANGED when a current run declares another lock than its record names, and hands back none of the runs', async () => {
    const h = fresh();
    const s = side(h);
    const plain = await s.tasks.plain.applyAsync([1]);
    const plainRun = await s.start();
    const task = await s.tasks.single.applyAsync(['k']);
    const lock = await h.lockKeyOf(task.id);
    const run = await s.start();
    expect(await task.revoke()).toBe('STARTED');
    const other = s.keys.lock('Locked.single', 'other');
    const call = (declared: string[]) =>
      s.runner.run<[string | number, string]>(
        requeueScript,
        [s.keys.wait, s.keys.active, s.keys.events, s.keys.task(plain.id), s.keys.task(task.id), ...declared],
        [s.keys.base, WORKER.workerId, TTL, 0, plain.id, plainRun.token, 0, task.id, run.token, declared.length],
      );
    for (const declared of [[other], []]) {
      expect(await call(declared)).toEqual(['KEYS_CHANGED', task.id]);
      // The first run, checked before, was not handed back either: the call changed nothing.
      expect(await s.where(plain.id, lock)).toEqual(['STARTED', true, task.id]);
      expect(await s.where(task.id, lock)).toEqual(['STARTED', true, task.id]);
    }
    expect(await call([lock])).toEqual([1, '']);
    expect(await h.field(plain.id, 'state')).toBe('PENDING');
    expect(await s.where(task.id, lock)).toEqual(['REVOKED', false, null]);
  });
});

describe("admit-6 declares the run's lock and rate window", () => {
  const fresh = useHarness('declared-admit');

  it("declares the worker's own lock and window without reading the record", async () => {
    const h = fresh();
    const s = side(h);
    const task = await s.tasks.plain.applyAsync([1]);
    const run = await s.start();
    const lock = s.keys.lock('Locked.plain', 'mine');
    const rate = s.keys.rate('Locked.plain', undefined);
    const verdict = await admit(s.runner, s.keys, WORKER, run, { lock: { key: lock, ttlMs: 60_000, waitForExpiry: false }, rate: { key: rate, limit: 5, periodMs: 3_600_000 } });
    expect(verdict).toEqual({ verdict: 'RUN' });
    expect(s.runner.reads).toBe(0);
    expect(await h.admin.get(lock)).toBe(task.id);
    expect(await h.admin.zcard(rate)).toBe(1);
  });

  it("a run revoked since its start: the message's lock, read from the record, is released", async () => {
    const h = fresh();
    const s = side(h);
    const task = await s.tasks.single.applyAsync(['k']);
    const lock = await h.lockKeyOf(task.id);
    const run = await s.start();
    expect(await task.revoke()).toBe('STARTED');
    // The worker fills in a rate limit only; the lock is the message's.
    const rate = { key: s.keys.rate('Locked.single', undefined), limit: 5, periodMs: 3_600_000 };
    expect(await admit(s.runner, s.keys, WORKER, run, { lock: undefined, rate })).toEqual({ verdict: 'REVOKED', reason: 'revoked' });
    expect(s.runner.reads).toBe(1);
    expect(await s.where(task.id, lock)).toEqual(['REVOKED', false, null]);
  });

  it("a duplicate under the worker's lock takes its start out of the message's rate window, read from the record", async () => {
    const h = fresh();
    const s = side(h);
    const task = await s.tasks.limited.applyAsync([1]);
    const window = (await h.field(task.id, 'rateKey'))!;
    const run = await s.start();
    expect(await h.admin.zcard(window)).toBe(1);
    const lock = s.keys.lock('Locked.limited', 'taken');
    await h.admin.set(lock, 'another-task');
    expect(await admit(s.runner, s.keys, WORKER, run, { lock: { key: lock, ttlMs: 60_000, waitForExpiry: false }, rate: undefined })).toEqual({
      verdict: 'REVOKED',
      reason: 'duplicate',
    });
    expect(s.runner.reads).toBe(1);
    expect(await h.admin.zcard(window)).toBe(0);
    expect(await h.admin.get(lock)).toBe('another-task');
  });

  it('answers KEYS_CHANGED and changes nothing when the record names another lock or window than declared', async () => {
    const h = fresh();
    const s = side(h);
    const task = await s.tasks.single.applyAsync(['k']);
    const lock = await h.lockKeyOf(task.id);
    const run = await s.start();
    expect(await task.revoke()).toBe('STARTED');
    const other = s.keys.lock('Locked.single', 'other');
    const rate = s.keys.rate('Locked.single', undefined);
    const call = (lockOf: string, rateOf: string, declared: string[]) =>
      s.runner.run<[string, string]>(
        admitScript,
        [s.keys.wait, s.keys.delayed, s.keys.active, s.keys.task(task.id), s.keys.dead, s.keys.events, ...declared],
        [s.keys.base, WORKER.workerId, task.id, run.token, lockOf, 60_000, '', rateOf, 5, 3_600_000, 1, TTL, '', 0],
      );
    // The record names `lock`: another one declared as the record's, or as the worker's; none
    // declared; a rate window declared as the record's, which names none.
    for (const [lockOf, rateOf, declared] of [
      ['record', '', [other]],
      ['worker', '', [other]],
      ['', '', []],
      ['record', 'record', [lock, rate]],
    ] as const) {
      expect(await call(lockOf, rateOf, [...declared])).toEqual(['KEYS_CHANGED', '']);
      expect(await s.where(task.id, lock)).toEqual(['STARTED', true, task.id]);
      expect(await h.field(task.id, 'rateKey')).toBeNull();
    }
    expect(await call('record', '', [lock])).toEqual(['REVOKED', 'revoked']);
    expect(await s.where(task.id, lock)).toEqual(['REVOKED', false, null]);
  });
});

describe('decline-7 declares the lock and rate window of the run it hands back', () => {
  const fresh = useHarness('declared-decline');

  /** A started run of a unique, rate-limited task: its lock and its rate window (which counts the start). */
  async function guardedRun(h: Harness, s: ReturnType<typeof side>, key: string) {
    const task = await s.tasks.guarded.applyAsync([key]);
    const lock = await h.lockKeyOf(task.id);
    const window = (await h.field(task.id, 'rateKey'))!;
    const run = await s.start();
    expect(run.id).toBe(task.id);
    expect(await h.admin.zcard(window)).toBe(1);
    return { task, lock, window, run };
  }

  it('answers KEYS_CHANGED and changes nothing when the record names another lock or window than declared', async () => {
    const h = fresh();
    const s = side(h);
    const { task, lock, window, run } = await guardedRun(h, s, 'k');
    expect(await task.revoke()).toBe('STARTED');
    const other = s.keys.lock('Locked.guarded', 'other');
    const otherWindow = s.keys.rate('Locked.guarded', 'other');
    const call = (withLock: string, withRate: string) =>
      s.runner.run<[string, string]>(
        declineScript,
        [s.keys.wait, s.keys.delayed, s.keys.active, s.keys.names, s.keys.task(task.id), s.keys.dead, s.keys.events, ...[withLock, withRate].filter((k) => k !== '')],
        [s.keys.base, WORKER.workerId, task.id, run.token, 0, TTL, 'not run here', 1, 0, withLock === '' ? '' : '1', withRate === '' ? '' : '1'],
      );
    // Another lock declared; no lock declared; the right lock with another window; no window.
    for (const [withLock, withRate] of [
      [other, window],
      ['', window],
      [lock, otherWindow],
      [lock, ''],
    ] as const) {
      expect(await call(withLock, withRate)).toEqual(['KEYS_CHANGED', '']);
      expect(await s.where(task.id, lock)).toEqual(['STARTED', true, task.id]);
      expect(await h.admin.zcard(window)).toBe(1);
      expect(await h.admin.zscore(s.keys.delayed, task.id)).toBeNull();
      expect(await h.admin.llen(s.keys.dead)).toBe(0);
    }
    expect(await call(lock, window)).toEqual(['REVOKED', 'revoked']);
    expect(await s.where(task.id, lock)).toEqual(['REVOKED', false, null]);
    expect(await h.admin.zcard(window)).toBe(0);
  });

  it('a declined unique task whose revoke was requested meanwhile ends REVOKED and releases the lock its record names', async () => {
    const h = fresh();
    const s = side(h);
    const { task, lock, window, run } = await guardedRun(h, s, 'k');
    expect(await task.revoke()).toBe('STARTED');
    expect(await decline(s.runner, s.keys, WORKER, run, 60_000, 'not run here')).toEqual({ verdict: 'REVOKED', reason: 'revoked' });
    expect(s.runner.reads).toBe(1);
    expect(await s.where(task.id, lock)).toEqual(['REVOKED', false, null]);
    expect(await h.admin.zcard(window)).toBe(0);
  });

  it('a DEFERRED hand-back takes its start out of the rate window and keeps the lock', async () => {
    const h = fresh();
    const s = side(h);
    const { task, lock, window, run } = await guardedRun(h, s, 'k');
    const verdict = await decline(s.runner, s.keys, WORKER, run, 60_000, 'not run here');
    expect(verdict.verdict).toBe('DEFERRED');
    expect(s.runner.reads).toBe(1);
    expect(await h.admin.zcard(window)).toBe(0);
    expect(await s.where(task.id, lock)).toEqual(['PENDING', false, task.id]);
    expect(await h.admin.zscore(s.keys.delayed, task.id)).not.toBeNull();
  });

  it('a hand-back past the grace ends the task FAILURE, releases its lock and takes its start out of the window', async () => {
    const h = fresh();
    const s = side(h);
    const { task, lock, window, run } = await guardedRun(h, s, 'k');
    expect(await decline(s.runner, s.keys, WORKER, run, 0, 'not run here')).toEqual({ verdict: 'FAILURE', message: 'not run here' });
    expect(s.runner.reads).toBe(1);
    expect(await s.where(task.id, lock)).toEqual(['FAILURE', false, null]);
    expect(await h.admin.zcard(window)).toBe(0);
  });

  it('reads the keys again when the record names another lock by the time the script runs, and releases that one', async () => {
    const h = fresh();
    const s = side(h);
    const { task, lock, run } = await guardedRun(h, s, 'k');
    expect(await task.revoke()).toBe('STARTED');
    const second = s.keys.lock('Locked.guarded', 'second');
    s.runner.afterRead = async (read) => {
      if (read !== 1) return;
      await h.admin.hset(s.keys.task(task.id), FIELDS.lockKey, second);
      await h.admin.set(second, task.id);
    };
    expect(await decline(s.runner, s.keys, WORKER, run, 60_000, 'not run here')).toEqual({ verdict: 'REVOKED', reason: 'revoked' });
    expect(s.runner.reads).toBe(2);
    expect(await h.admin.exists(second)).toBe(0);
    expect(await h.admin.get(lock)).toBe(task.id);
  });
});
