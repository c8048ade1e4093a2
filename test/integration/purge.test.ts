// Purging a queue (issue 11, point 3): Inspector.purge() through purge-4.lua, and `heimdall purge`.
// Purged tasks end in a state Redis holds (REVOKED 'purged', their unique locks released, their
// waiters told); a running task, delayed tasks (without --delayed) and a stale wait entry of a
// delayed task are left alone; a long queue goes in bounded batches. The purge reads the entries
// and locks before each script call, so a worker fetching meanwhile races it: every task still
// runs once or is purged, never both, never neither. A lock read just before it changed is read again.
import { describe, expect, it } from 'vitest';
import { currentTask, Inspector, Task, TaskRevokedError } from 'heimdall-tasks';
import { FIELDS, gate, topology, useHarness, waitFor, type Gate } from '../helpers.js';
import { runHeimdall as heimdall } from '../fixtures/cli/heimdall.js';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { fetch, purge, readFetchReply } from '../../src/core/protocol/scripts.js';

let held: Gate = gate();
/** Runs of each task of the race, and when each ran (ms, this process's clock). */
const runs = new Map<string, number>();
const ranAt: number[] = [];

class Purgeable {
  @Task({ queue: 'purge-q' })
  async block(): Promise<string> {
    await held.promise;
    return 'done';
  }

  @Task({ queue: 'purge-q', unique: true })
  async report(customer: number): Promise<number> {
    return customer;
  }

  @Task({ queue: 'purge-q' })
  async plain(n: number): Promise<number> {
    return n;
  }

  @Task({ queue: 'purge-q', rateLimit: [1, 60] })
  async limited(n: number): Promise<number> {
    return n;
  }

  @Task({ queue: 'purge-race' })
  async counted(n: number): Promise<number> {
    const id = currentTask().id;
    runs.set(id, (runs.get(id) ?? 0) + 1);
    ranAt.push(Date.now());
    await new Promise((resolve) => setImmediate(resolve));
    return n;
  }
}

describe('purge', () => {
  const fresh = useHarness('purge');

  // The case hands the CLI the harness's one-server URL: it runs on a single server (npm test).
  it.skipIf(topology().kind !== 'single')('heimdall purge revokes the waiting tasks (reason purged, locks released), leaves running and delayed ones; --delayed takes those too', { timeout: 60_000 }, async () => {
    const h = fresh();
    held = gate();
    const env = { REDIS_URL: h.url, HEIMDALL_PREFIX: h.prefix };
    const d = h.dispatcher();
    // No prefetch: with its one slot taken, the worker reserves nothing and everything sent waits.
    const worker = h.worker({ services: [new Purgeable()], queues: ['purge-q'], concurrency: 1, prefetch: 0 });
    const tasks = d.tasks(Purgeable);
    const running = await tasks.block.delay();
    await worker.start();
    await waitFor(async () => (await running.status()) === 'STARTED', { what: 'the blocking task to start' });
    // The worker is full: everything sent now waits.
    const unique = await tasks.report.delay(7);
    const plain = await Promise.all([1, 2, 3].map((n) => tasks.plain.delay(n)));
    const later = await tasks.plain.applyAsync([4], { countdown: 3600 });
    const lockKey = await h.lockKeyOf(unique.id, 'purge-q');
    // A stale wait entry of a delayed task (as a retry or reschedule can leave): not a waiting task.
    await h.admin.rpush(h.queueKey('wait', 'purge-q'), later.id);
    const waiter = unique.get({ timeout: 20 }).catch((err: unknown) => err);

    const refused = await heimdall(env, 'purge', 'purge-q');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('purge changes Redis: add --yes');
    expect(await unique.status()).toBe('PENDING');

    const purged = await heimdall(env, 'purge', 'purge-q', '--yes');
    expect(purged, purged.stderr).toMatchObject({ code: 0, stdout: "purged 4 task(s) of queue 'purge-q' (waiting; 1 delayed left: add --delayed to purge them too)\n" });
    for (const t of [unique, ...plain]) expect(await t.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'purged' });
    expect(await h.admin.exists(lockKey)).toBe(0);
    const err = await waiter;
    expect(err).toBeInstanceOf(TaskRevokedError);
    expect((err as TaskRevokedError).reason).toBe('purged');
    // Record kept for a day, like any ended task.
    expect(await h.admin.pttl(h.taskKey(unique.id, 'purge-q'))).toBeGreaterThan(86_000_000);
    expect(await h.admin.llen(h.queueKey('wait', 'purge-q'))).toBe(0);
    expect(await later.status()).toBe('PENDING');
    expect(await h.admin.zscore(h.queueKey('delayed', 'purge-q'), later.id)).not.toBeNull();
    expect(await running.status()).toBe('STARTED');
    // A new task of the released key can be sent at once.
    expect((await tasks.report.delay(7)).duplicate).toBe(false);

    const all = await heimdall(env, 'purge', 'purge-q', '--delayed', '--yes', '--json');
    expect(all.code, all.stderr).toBe(0);
    expect(JSON.parse(all.stdout)).toEqual({ queue: 'purge-q', purged: 2, delayed: true });
    expect(await later.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'purged' });
    expect(await h.admin.zcard(h.queueKey('delayed', 'purge-q'))).toBe(0);

    held.open();
    expect(await running.get({ timeout: 10 })).toBe('done');
  });

  it('Inspector.purge() takes a long queue in batches and counts only the tasks it ended', { timeout: 60_000 }, async () => {
    const h = fresh();
    const d = h.dispatcher();
    const sent = await d.tasks(Purgeable).plain.delayMany(Array.from({ length: 450 }, (_, i) => [i] as [number]));
    // An id with no record and a task already revoked are dropped, not counted.
    await h.admin.rpush(h.queueKey('wait', 'purge-q'), 'ghost');
    await sent[0]!.revoke();
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    try {
      expect(await inspector.purge('purge-q')).toBe(449);
      expect(await h.admin.llen(h.queueKey('wait', 'purge-q'))).toBe(0);
      expect(await sent[449]!.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'purged' });
      expect(await sent[0]!.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'revoked' });
      expect(await inspector.purge('purge-q', { delayed: true })).toBe(0);
    } finally {
      await inspector.close();
    }
  });

  it('tasks a worker claimed (taken off the wait list for its next call) are purged too, their locks released; the claimed start then finds nothing to start', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const keys = h.queueKeys('purge-q');
    const claimedTasks = [await d.tasks(Purgeable).report.delay(1), await d.tasks(Purgeable).plain.delay(2)];
    const waiting = await d.tasks(Purgeable).plain.delay(3);
    // A worker's fetch (here by hand, as a worker that then died) claims the first two.
    const runner = new ScriptRunner(h.admin);
    const worker = { workerId: 'gone', leaseMs: 30_000, resultExpiresMs: 60_000, eventsCap: 0 };
    const claim = readFetchReply(await fetch(runner, keys, worker, 2, []), 0);
    expect(claim.claims.map((c) => c.id)).toEqual(claimedTasks.map((r) => r.id));
    const lockKey = (await h.recordLock(claimedTasks[0]!.id, 'purge-q'))!;
    expect(await h.admin.get(lockKey)).toBe(claimedTasks[0]!.id);
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    try {
      expect((await inspector.queues(['purge-q']))[0]!.waiting).toBe(3);
      expect(await inspector.purge('purge-q')).toBe(3);
      expect((await inspector.queues(['purge-q']))[0]!.waiting).toBe(0);
    } finally {
      await inspector.close();
    }
    expect(await h.admin.zcard(keys.claimed)).toBe(0);
    expect(await h.admin.get(lockKey)).toBeNull();
    for (const r of [...claimedTasks, waiting]) expect(await r.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'purged' });
    // The claiming worker comes back with its claims: nothing starts.
    const late = readFetchReply(await fetch(runner, keys, worker, 2, [], { claims: claim.claims }), 0);
    expect(late.started).toEqual([]);
  });

  it('a purge racing a worker that fetches: each task runs once or ends REVOKED purged, none is lost, and purge counts the ones it ended', { timeout: 60_000 }, async () => {
    const h = fresh();
    runs.clear();
    ranAt.length = 0;
    const total = 3000;
    const sent = await h.dispatcher().tasks(Purgeable).counted.delayMany(Array.from({ length: total }, (_, i) => [i] as [number]));
    const worker = h.worker({ services: [new Purgeable()], queues: ['purge-race'], concurrency: 10 });
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    try {
      await worker.start();
      await waitFor(() => runs.size >= 50, { what: 'the worker to run some tasks' });
      const from = Date.now();
      const purged = await inspector.purge('purge-race');
      const to = Date.now();
      // The worker ran tasks while the purge went on: the race took place.
      expect(ranAt.some((t) => t > from && t < to), 'a task ran during the purge').toBe(true);
      expect(purged).toBeGreaterThan(0);

      const keys = h.queueKeys('purge-race');
      const statesOf = () => Promise.all(sent.map((t) => h.admin.hmget(keys.task(t.id), FIELDS.state, FIELDS.revokeReason)));
      await waitFor(async () => (await statesOf()).every(([s]) => s === 'SUCCESS' || s === 'REVOKED'), { timeout: 10_000, what: 'every task to end' });
      const states = await statesOf();
      const succeeded = sent.filter((_, i) => states[i]![0] === 'SUCCESS').map((t) => t.id);
      const revoked = states.filter(([s, reason]) => s === 'REVOKED' && reason === 'purged').length;
      // Each task ran once or was purged: never both, never twice, never neither.
      expect([...runs.values()].every((n) => n === 1)).toBe(true);
      expect([...runs.keys()].sort()).toEqual(succeeded.sort());
      expect(revoked).toBe(purged);
      expect(succeeded.length + revoked).toBe(total);
      expect(await h.admin.llen(keys.wait)).toBe(0);
    } finally {
      await inspector.close();
    }
  });

  it('a lock read just before it changed is read again: the purge still ends the task and releases its lock', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const unique = await d.tasks(Purgeable).report.delay(11);
    const lockKey = await h.lockKeyOf(unique.id, 'purge-q');
    const keys = h.queueKeys('purge-q');
    // As if the read gave a lock the record no longer names (its id reused for another unique task).
    const runner = new ScriptRunner(h.admin);
    let stale = 1;
    const read = runner.fields.bind(runner);
    runner.fields = async (key, fields) => (stale-- > 0 ? [keys.lock('Purgeable.report', 'another')] : read(key, fields));
    const first = await purge(runner, keys, 200, 0, false, 86_400_000, 0);
    expect(first).toEqual({ purged: 0, fromWait: 0, fromDelayed: 0, fromClaimed: 0, changed: true });
    expect(await unique.status()).toBe('PENDING');
    expect(await h.admin.llen(keys.wait)).toBe(1);
    expect(await purge(runner, keys, 200, 0, false, 86_400_000, 0)).toEqual({ purged: 1, fromWait: 1, fromDelayed: 0, fromClaimed: 0, changed: false });
    expect(await unique.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'purged' });
    expect(await h.admin.exists(lockKey)).toBe(0);
  });

  it("the purged tasks' turns leave the rate window, so a task sent after the purge does not queue behind them; a start stays counted", async () => {
    const h = fresh();
    const d = h.dispatcher();
    const ref = d.tasks(Purgeable).limited;
    const worker = h.worker({ services: [new Purgeable()], queues: ['purge-q'] });
    const limited: string[] = [];
    worker.on('rateLimited', (e) => limited.push(e.id));
    await worker.start();
    const sent = await ref.delayMany([[1], [2], [3], [4]]);
    expect(await sent[0]!.get({ timeout: 5 })).toBe(1);
    await waitFor(() => limited.length === 3, { what: 'three tasks to get their turns' });
    const window = h.queueKeys('purge-q').rate('Purgeable.limited', undefined);
    expect(await h.admin.zcard(window)).toBe(4);
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    expect(await inspector.purge('purge-q', { delayed: true })).toBe(3);
    // The start is still counted; the three turns are gone.
    expect(await h.admin.zrange(window, 0, -1)).toEqual([`${sent[0]!.id}:1`]);
    const later = await ref.delay(5);
    await waitFor(() => limited.includes(later.id), { what: 'the new task to get its turn' });
    const first = (await sent[0]!.info()).startedAt!.getTime();
    // Its turn is when the one start leaves the window, not after the purged tasks' turns.
    expect(Number(await h.admin.zscore(window, `~${later.id}:1`))).toBe(first + 60_000);
    // A revoked waiting task's turn goes the same way, on request.
    await later.revoke();
    expect(await inspector.dropStaleTurns('purge-q')).toBe(1);
    expect(await h.admin.zcard(window)).toBe(1);
    // Turns share scores (a block reserved in one ms): all go, past the 500 a call looks at.
    const at = Date.now() + 600_000;
    const stale: (string | number)[] = [];
    for (let i = 0; i < 600; i++) stale.push(at, `~gone-${String(i)}:1`);
    await h.admin.zadd(window, ...stale);
    expect(await inspector.dropStaleTurns('purge-q')).toBe(600);
    expect(await h.admin.zcard(window)).toBe(1);
    await worker.close();
    await inspector.close();
  });
});
