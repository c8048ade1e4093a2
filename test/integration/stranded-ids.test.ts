/**
 * No script leaves an id stranded. Every transition moves a task id from one place (the wait
 * list, the delayed set, the active set) to another; when Redis refuses a command half way (a
 * Cluster slot being migrated, a full server, an ACL), the id must still be in a place (a
 * fetch reads ids from the wait list and takes them off only once they are placed, so at worst
 * a stale entry stays behind, dropped when read again). The refusals are injected on a
 * redis-server of this file's own with ACL users that lack one command or the right to write
 * one key; after the permission comes back, every task runs, exactly once. */
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { Task, currentTask, type TaskResult } from 'heimdall-tasks';
import { recordEvents, reportFigures, usePrivateRedis, waitFor, type Harness } from '../helpers.js';
import { openGate, readRuns } from '../fixtures/faults/control.js';
import { FaultService, Gate, RunLog } from '../fixtures/faults/services.js';
import { killWorkerProcess, startWorkerProcess } from '../fixtures/worker-processes.js';

let users = 0;

/** Creates an ACL user with `rules` on the test's server; returns its URL and a way to change its rules. */
async function aclUser(h: Harness, rules: string[]): Promise<{ url: string; grant(...more: string[]): Promise<void> }> {
  const name = `stranded_${process.pid}_${++users}`;
  await h.admin.call('ACL', 'SETUSER', name, 'reset', 'on', '>pw', ...rules);
  const base = new URL(h.url);
  return {
    url: `redis://${name}:pw@${base.host}`,
    grant: async (...more) => void (await h.admin.call('ACL', 'SETUSER', name, ...more)),
  };
}

/**
 * Every right, except that `command` may only be run on the keys of the test's default queue
 * named in `on` (an ACL selector): run on any other key, inside a script or not, Redis refuses it.
 */
function allBut(h: Harness, command: string, on: string[]): string[] {
  const base = h.queueKeys().base;
  return ['~*', '&*', '+@all', `-${command}`, `(+${command} ${on.map((k) => `~${base}${k}`).join(' ')})`];
}

class StrandService {
  readonly ran: string[] = [];

  /** The newest send replaces a holder that has not started. */
  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'replace' })
  async latest(_key: string, n: number): Promise<number> {
    this.ran.push(currentTask().id);
    return n;
  }

  @Task()
  async simple(n: number): Promise<number> {
    this.ran.push(currentTask().id);
    return n;
  }

  /** At most one start a second, across workers. */
  @Task({ rateLimit: [1, 1] })
  async limited(n: number): Promise<number> {
    this.ran.push(currentTask().id);
    return n;
  }

  /** Asks for a retry on its first attempt, succeeds on the second. */
  @Task()
  async retryOnce(n: number): Promise<number> {
    this.ran.push(currentTask().id);
    if (currentTask().attempt === 1) return currentTask().retry({ countdown: 0.05 });
    return n;
  }
}

/** Where an id is now: which of the queue's places hold it. */
async function placesOf(h: Harness, id: string): Promise<string[]> {
  const places: string[] = [];
  if ((await h.admin.lpos(h.queueKey('wait'), id)) !== null) places.push('wait');
  if ((await h.admin.zscore(h.queueKey('delayed'), id)) !== null) places.push('delayed');
  if ((await h.admin.zscore(h.queueKey('active'), id)) !== null) places.push('active');
  if ((await h.admin.zscore(h.queueKey('claimed'), id)) !== null) places.push('claimed');
  return places;
}

/** Queued, in one place only: the wait list, or claimed by the worker that read it there (it starts it in its next call). */
async function queuedOnly(h: Harness, id: string): Promise<boolean> {
  const places = (await placesOf(h, id)).join();
  return places === 'wait' || places === 'claimed';
}

/**
 * A worker process dies holding task `n` (a held FaultService task); a worker connected as an
 * ACL user with `rules` then meets the lapsed lease. Checks that the refused recovery is
 * reported (`reported`) and leaves the task leased and STARTED, then grants `grant` and checks
 * that the task runs, once.
 */
async function recoveryRefused(h: Harness, n: number, rules: string[], grant: string, reported: RegExp): Promise<void> {
  const d = h.dispatcher();
  const a = await startWorkerProcess(h, { services: ['fault'], lease: '1s' });
  const task = await d.tasks(FaultService).held.delay(n);
  await waitFor(async () => (await task.status()) === 'STARTED', { what: 'the task to start on the doomed worker' });
  await killWorkerProcess(a);
  await openGate(h.admin, h.prefix);

  const user = await aclUser(h, rules);
  const redis = new Redis(h.url, { connectionName: `strand-runlog-${process.pid}` });
  const gate = new Gate(redis, h.prefix);
  await gate.listen();
  try {
    const w = h.worker({ connection: user.url, services: [new FaultService(new RunLog(redis, h.prefix), gate)], leaseDuration: 1 });
    const ev = recordEvents(w);
    await w.start();
    await waitFor(() => ev.errors.filter((e) => reported.test(e.message)).length >= 2, {
      timeout: 20_000,
      what: 'the worker to report the refused recovery twice',
    });
    expect(await placesOf(h, task.id)).toEqual(['active']);
    expect(await task.status()).toBe('STARTED');
    await user.grant(grant);
    expect(await task.get({ timeout: 30 })).toBe(n);
    expect((await readRuns(h.admin, h.prefix)).filter((e) => e.id === task.id && e.ev === 'done')).toHaveLength(1);
    await w.close();
  } finally {
    gate.close();
    await redis.quit();
  }
}

describe('no script leaves an id stranded (refusals injected with ACL users)', () => {
  const fresh = usePrivateRedis('strand');

  it('recovery whose RPUSH is refused keeps the lapsed task in the active set; it runs once the push is allowed', { timeout: 60_000 }, async () => {
    await recoveryRefused(fresh(), 1, ['~*', '&*', '+@all', '-rpush'], '+rpush', /recovering task .*can't run this command/);
  });

  it('recovery whose record write is refused puts the lease back: the task stays leased and STARTED, and runs once the write is allowed', { timeout: 60_000 }, async () => {
    // HSET is refused on the task records (the worker may still declare its names).
    const h = fresh();
    await recoveryRefused(h, 3, allBut(h, 'hset', ['names']), '+hset', /recovering task .*can't access/);
  });

  it('ids a call reads but does not examine (its bound) stay in the wait list: nothing is pushed back, so a user without RPUSH runs them all', { timeout: 60_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    const ref = d.tasks(StrandService).simple;
    // 66 entries a fetch drops (revoked while queued), then 5 tasks: a worker of concurrency 6
    // asks for 3 at a time and examines at most 3 + 64 ids per call, so the call that reaches
    // the tasks starts the first and stops with 2 read and not examined. (Before fetch read the
    // tail with LRANGE, it popped them, and had to push them back with RPUSH.)
    const stale = await ref.delayMany(Array.from({ length: 66 }, (_, i) => [i] as [number]));
    for (const r of stale) expect(await r.revoke()).toBe('REVOKED');
    const tasks = await ref.delayMany([[100], [101], [102], [103], [104]]);
    const user = await aclUser(h, ['~*', '&*', '+@all', '-rpush']);
    const service = new StrandService();
    const w = h.worker({ connection: user.url, services: [service], concurrency: 6 });
    const ev = recordEvents(w);
    await w.start();
    expect(await Promise.all(tasks.map((r) => r.get({ timeout: 20 })))).toEqual([100, 101, 102, 103, 104]);
    expect([...service.ran].sort()).toEqual(tasks.map((r) => r.id).sort());
    expect(ev.errors).toEqual([]);
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    await w.close();
  });

  it('a fetch whose rate-limit reschedule and next-delay lookup are refused (no ZRANGE) loses none of the ids it read; they run once ZRANGE is allowed', { timeout: 60_000 }, async () => {
    // The user lacks ZRANGE alone. A rate-limited task over its limit needs it to find when a
    // start frees (a refusal: the task must stay queued), and so does the lookup of the next
    // delayed task at the end of a call that started fewer tasks than it wanted, which then fails
    // the whole call (before fetch read ids with LRANGE, it had popped them, and such a call lost
    // them all). Whatever the call looked at must still be somewhere.
    const h = fresh();
    const user = await aclUser(h, ['~*', '&*', '+@all', '-zrange']);
    const tasks = await h.dispatcher().tasks(StrandService).limited.delayMany([[1], [2], [3]]);
    const service = new StrandService();
    const w = h.worker({ connection: user.url, services: [service] });
    const ev = recordEvents(w);
    await w.start();
    await waitFor(() => ev.errors.length >= 3, { timeout: 20_000, what: 'the refused ZRANGE to be reported three times' });
    for (const t of tasks) {
      const state = await t.status();
      const places = await placesOf(h, t.id);
      // Queued in a list, or started (leased) or ended: never PENDING in no place.
      expect({ id: t.id, state, placed: state === 'SUCCESS' || places.length > 0 }).toEqual({ id: t.id, state, placed: true });
    }
    await user.grant('+zrange');
    expect(await Promise.all(tasks.map((r) => r.get({ timeout: 20 })))).toEqual([1, 2, 3]);
    expect([...service.ran].sort()).toEqual(tasks.map((r) => r.id).sort());
    await w.close();
  });

  it("a refused write after a task's turn was settled gives the window back what it had: a turn reserved now is taken back, a turn the task came with is put back at its score", { timeout: 60_000 }, async () => {
    // The user may not write task records (HSET), which every start and every put-back does
    // after the rate window was changed: the window must be as it was after each refused call.
    const h = fresh();
    const window = h.queueKeys().rate('StrandService.limited', undefined);
    const now = Number((await h.admin.time())[0]) * 1000;
    const [full, withTurn] = await h.dispatcher().tasks(StrandService).limited.delayMany([[1], [2]]);
    // `full` meets a full window (an entry scored later, so it does not age out during the
    // test): it would get a turn. `withTurn` comes with a turn of its own, ahead of that entry,
    // so it would start.
    await h.admin.zadd(window, now + 30_000, 'other:1', now + 20_000, `~${withTurn!.id}:1`);
    const user = await aclUser(h, allBut(h, 'hset', ['names']));
    const service = new StrandService();
    const w = h.worker({ connection: user.url, services: [service] });
    const ev = recordEvents(w);
    await w.start();
    await waitFor(() => ev.errors.length >= 3, { timeout: 20_000, what: 'the refused writes to be reported' });
    await w.close();
    expect(await h.admin.zrange(window, 0, -1, 'WITHSCORES')).toEqual([`~${withTurn!.id}:1`, String(now + 20_000), 'other:1', String(now + 30_000)]);
    for (const t of [full!, withTurn!]) expect(await queuedOnly(h, t.id), t.id).toBe(true);
    expect(service.ran).toEqual([]);
  });

  it('a replacing send whose new task Redis refuses to place leaves the holder as it was: queued, holding its lock, not REVOKED', async () => {
    const h = fresh();
    const holder = await h.dispatcher().tasks(StrandService).latest.delay('k', 1);
    // A producer that may not push to the wait list: its task cannot be placed.
    const user = await aclUser(h, ['~*', '&*', '+@all', '-lpush']);
    const producer = h.dispatcher({ connection: user.url });
    await expect(producer.tasks(StrandService).latest.delay('k', 2)).rejects.toThrow(/sending StrandService.latest: Redis/);
    expect(await holder.status()).toBe('PENDING');
    expect(await queuedOnly(h, holder.id)).toBe(true);
    expect((await h.dispatcher().tasks(StrandService).latest.lock('k', 2))!.holder).toBe(holder.id);
    // And it runs.
    const service = new StrandService();
    const w = h.worker({ services: [service] });
    await w.start();
    expect(await holder.get({ timeout: 10 })).toBe(1);
    await w.close();
  });

  it('a malformed record whose dead letter is refused stays queued (not failed, not lost) until it can be dead-lettered', { timeout: 60_000 }, async () => {
    const h = fresh();
    const r = await h.dispatcher().tasks(StrandService).simple.applyAsync([1], { taskId: 'malformed' });
    await h.admin.hset(h.taskKey('malformed'), 'v', '2');
    const user = await aclUser(h, allBut(h, 'lpush', ['wait']));
    const w = h.worker({ connection: user.url, services: [new StrandService()] });
    const ev = recordEvents(w);
    await w.start();
    await waitFor(() => ev.errors.length >= 2, { what: 'the refused dead letter to be reported' });
    expect(await r.status()).toBe('PENDING');
    await waitFor(() => queuedOnly(h, 'malformed'), { what: "'malformed' queued (waiting or claimed), and in no other place" });
    expect(await h.deadLetters()).toEqual([]);
    await user.grant('+lpush');
    await expect(r.get({ timeout: 20 })).rejects.toMatchObject({ remoteName: 'MalformedTaskError' });
    expect((await h.deadLetters()).map((x) => x.id)).toEqual(['malformed']);
    await w.close();
  });

  it('a start refused half way puts the task back and the ids popped after it too; the other tasks run on', { timeout: 60_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    // HSET is refused on the record of 'bad' alone.
    const user = await aclUser(h, allBut(h, 'hset', ['t:ok-*', 'names']));
    const service = new StrandService();
    const ids = ['bad', 'ok-1', 'ok-2', 'ok-3', 'ok-4'];
    const handles = [];
    for (const [i, id] of ids.entries()) handles.push(await d.tasks(StrandService).simple.applyAsync([i], { taskId: id }));
    const w = h.worker({ connection: user.url, services: [service], concurrency: 10 });
    const ev = recordEvents(w);
    await w.start();
    // The tasks whose records may be written run; the refused one waits, queued, never failed.
    expect(await Promise.all(handles.slice(1).map((r) => r.get({ timeout: 20 })))).toEqual([1, 2, 3, 4]);
    await waitFor(() => ev.errors.length >= 2, { what: 'the refused start to be reported' });
    const bad = handles[0]!;
    expect(await bad.status()).toBe('PENDING');
    await waitFor(() => queuedOnly(h, 'bad'), { what: "'bad' queued (waiting or claimed), and in no other place" });
    await user.grant('+hset');
    expect(await bad.get({ timeout: 20 })).toBe(0);
    expect(service.ran.filter((id) => id === 'bad')).toHaveLength(1);
    expect(new Set(service.ran)).toEqual(new Set(ids));
    expect(await h.deadLetters()).toEqual([]);
    reportFigures('refused start', { errorsReported: ev.errors.length, tasks: ids.length });
    await w.close();
  });

  it('tasks whose start is refused stay queued, between tasks that start, and run once allowed', { timeout: 60_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    // HSET is refused on the records of 'bad-*'; one fetch reads all five, the refused ones
    // among the others, and must keep exactly those two queued: claimed by the worker (it read
    // them, and starts them once allowed) or, should the claims lapse, back in the wait list.
    const user = await aclUser(h, allBut(h, 'hset', ['t:ok-*', 'names']));
    const ids = ['ok-1', 'bad-1', 'ok-2', 'bad-2', 'ok-3'];
    const handles: TaskResult<number>[] = [];
    for (const [i, id] of ids.entries()) handles.push(await d.tasks(StrandService).simple.applyAsync([i], { taskId: id }));
    const service = new StrandService();
    const w = h.worker({ connection: user.url, services: [service], concurrency: 10 });
    const ev = recordEvents(w);
    await w.start();
    expect(await Promise.all([0, 2, 4].map((i) => handles[i]!.get({ timeout: 20 })))).toEqual([0, 2, 4]);
    await waitFor(() => ev.errors.length >= 1, { what: 'the refused starts to be reported' });
    expect([await queuedOnly(h, 'bad-1'), await queuedOnly(h, 'bad-2')]).toEqual([true, true]);
    expect([await handles[1]!.status(), await handles[3]!.status()]).toEqual(['PENDING', 'PENDING']);
    await user.grant('+hset');
    expect(await Promise.all([1, 3].map((i) => handles[i]!.get({ timeout: 20 })))).toEqual([1, 3]);
    expect([...service.ran].sort()).toEqual([...ids].sort());
    expect(await h.admin.llen(h.queueKey('wait'))).toBe(0);
    expect(await h.admin.zcard(h.queueKey('claimed'))).toBe(0);
    await w.close();
  });

  it('a retry whose move to the delayed set is refused stays with its worker, and is stored once the move is allowed', { timeout: 60_000 }, async () => {
    const h = fresh();
    // ZADD is refused on the delayed set alone.
    const user = await aclUser(h, allBut(h, 'zadd', ['active', 'rate:*']));
    const service = new StrandService();
    const w = h.worker({ connection: user.url, services: [service], leaseDuration: 1 });
    const ev = recordEvents(w);
    await w.start();
    const r = await h.dispatcher().tasks(StrandService).retryOnce.delay(7);
    await waitFor(() => ev.errors.length >= 2, { timeout: 20_000, what: 'the refused retry to be reported' });
    // Still this worker's running task, leased: not RETRY in no list.
    expect(await r.status()).toBe('STARTED');
    expect(await placesOf(h, r.id)).toEqual(['active']);
    await user.grant('+zadd');
    expect(await r.get({ timeout: 20 })).toBe(7);
    const info = await r.info();
    expect(info.attempts).toBe(2);
    expect(service.ran).toEqual([r.id, r.id]);
    await w.close();
  });

  it('a closing worker whose hand-back is refused leaves the task leased; another worker recovers it', { timeout: 60_000 }, async () => {
    const h = fresh();
    const user = await aclUser(h, ['~*', '&*', '+@all', '-rpush']);
    const redis = new Redis(h.url, { connectionName: `strand-runlog-${process.pid}` });
    const gate = new Gate(redis, h.prefix);
    await gate.listen();
    try {
      const log = new RunLog(redis, h.prefix);
      const first = h.worker({ connection: user.url, services: [new FaultService(log, gate)], leaseDuration: 1 });
      const ev = recordEvents(first);
      await first.start();
      const task = await h.dispatcher().tasks(FaultService).held.delay(2);
      await waitFor(async () => (await task.status()) === 'STARTED', { what: 'the task to start' });
      await first.close({ timeout: 0.1 });
      expect(ev.errors.map((e) => e.message).join('\n')).toMatch(/can't run this command|NOPERM|refused/i);
      expect(await placesOf(h, task.id)).toEqual(['active']);
      await openGate(h.admin, h.prefix);
      const second = h.worker({ services: [new FaultService(log, gate)], leaseDuration: 1 });
      await second.start();
      expect(await task.get({ timeout: 30 })).toBe(2);
      await second.close();
    } finally {
      gate.close();
      await redis.quit();
    }
  });

  it('an enqueue whose push is refused fails that task alone and writes nothing of it; the others of the batch are sent', async () => {
    const h = fresh();
    // LPUSH is refused on the wait list alone.
    const user = await aclUser(h, allBut(h, 'lpush', ['dead']));
    const d = h.dispatcher({ connection: user.url });
    const ref = d.tasks(StrandService).simple;
    // One batch (the same tick): a delayed task first, then one for the wait list.
    const [later, now] = await Promise.allSettled([ref.applyAsync([1], { countdown: 60, taskId: 'later' }), ref.applyAsync([2], { taskId: 'now' })]);
    expect(later.status).toBe('fulfilled');
    expect(now.status).toBe('rejected');
    expect(String((now as PromiseRejectedResult).reason)).toMatch(/now/);
    expect(await placesOf(h, 'later')).toEqual(['delayed']);
    expect(await h.admin.hget(h.taskKey('later'), 's')).toBe('PENDING');
    expect(await h.admin.exists(h.taskKey('now'))).toBe(0);
  });
});
