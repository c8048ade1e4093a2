/**
 * Slot discipline of the Lua scripts (issue 12, point 2): every key a script touches must be
 * declared in KEYS, and all of a call's keys must hash to one Redis Cluster slot.
 *
 * No cluster is needed: test/slot-checker.ts watches a private redis-server through MONITOR,
 * groups the commands each script ran under its call, asks the server for each command's keys
 * (COMMAND GETKEYS) and computes their slots. The flows below drive every script in
 * src/redis-scripts/ (a new script that no flow drives fails the test), through the public API
 * where it reaches the script and through the protocol functions of scripts.ts where a path is
 * only reached by a crash, a lost reply or a damaged record. They run for several prefixes and
 * queue names (colons, dots, non-ASCII).
 *
 * Two checks per script:
 *  (a) one slot per call, every key under the queue's base `<prefix>:{<queue>}:`: must hold for
 *      every script, now (limit-2.lua, a named limit's, under the limit's own base
 *      `<prefix>:{limit:<name>}:` instead: a limit is shared by queues of other slots);
 *  (b) every touched key declared in KEYS, for every script (the kinds of keys a script touches
 *      without declaring them are named in the failure).
 *
 * Why a private redis-server: MONITOR sees every client of the server, and SCRIPT calls of the
 * other test files (run in parallel on the shared server) would be mixed in.
 */
import { fetchStarting } from '../fetch-starting.js';
import { describe, expect, it } from 'vitest';
import { ConfigError, Dispatcher, Inspector, Limits, Task, TaskFailedError, Worker, currentTask, type TaskResult } from 'heimdall-tasks';
import { QueueKeys, validateName } from '../../src/core/protocol/queue-keys.js';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { admit, decline, extendLeases, fetch, purge, readFetchReply, reclaim, recoverLapsed, requeue, type RunEnd, type Verdict, type WorkerIdentity } from '../../src/core/protocol/scripts.js';
import { allScripts } from '../../src/redis-scripts/scripts.generated.js';
import { FIELDS, gate, LOCK_FIELDS, lockOfRecord, recordEvents, redisNowMs, usePrivateRedis, waitFor, type Gate, type Harness } from '../helpers.js';
import { keySlot, keysOf, report, SlotChecker, type ScriptReport } from '../slot-checker.js';

// Named limits of the flows: a window with room for one run an hour, a gcra with plenty.
const SLOT_WINDOW = Limits.define('slot-window', [1, 3600]);
const SLOT_GCRA = Limits.define('slot-gcra', [10, 1], { algorithm: 'gcra' });
const SLOT_PERMITS = Limits.define('slot-permits', { concurrency: 1 });

// Tasks of the flows. Each sent to the queue under test with applyAsync({ queue }).
const holds = new Map<string, Gate>();
/** Resolves when the test opens the gate named `key` (at once when it has none). */
function hold(key: string): Promise<void> {
  return holds.get(key)?.promise ?? Promise.resolve();
}

class SlotService {
  @Task()
  async ok(n: number): Promise<number> {
    currentTask().progress(0.5, 'half way');
    await currentTask().onlyAfter('refresh', 1);
    return n;
  }

  @Task({ retries: { max: 1, backoff: '1ms', jitter: false } })
  async flaky(): Promise<void> {
    throw new Error('boom');
  }

  @Task({ unique: true })
  async single(key: string): Promise<string> {
    await hold(key);
    return key;
  }

  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'keepLast' })
  async latest(key: string, n: number): Promise<number> {
    if (n === 0) await hold(key);
    return n;
  }

  @Task<[key: string, n: number]>({ unique: true, uniqueKey: ([key]) => key, onConflict: 'replace' })
  async replacing(key: string, n: number): Promise<number> {
    return n;
  }

  /** Concurrency permits (permit-3.lua), in slots of their own: its own, and a keyed limit's. */
  @Task<[key: string]>({ concurrency: 1, limits: [{ limit: SLOT_PERMITS, key: ([key]) => key }] })
  async permitted(key: string): Promise<string> {
    await hold(key);
    return key;
  }

  @Task({ rateLimit: [1, 3600] })
  async limited(n: number): Promise<number> {
    return n;
  }

  @Task({ unique: true, rateLimit: [10, 3600] })
  async guarded(key: string): Promise<string> {
    return key;
  }

  /** Named limits (limit-2.lua), in slots of their own: one window, one gcra with a cost; both corrected. */
  @Task({ limits: [SLOT_WINDOW, { limit: SLOT_GCRA, cost: 2 }] })
  async named(n: number): Promise<number> {
    await currentTask().reportCost(1);
    await currentTask().reportCost(2, SLOT_WINDOW);
    return n;
  }
}

const TTL = 86_400_000;
const EVENTS_CAP = 10_000;

/** A worker of the flows, as the protocol functions want it. */
function as(workerId: string, leaseMs = 30_000): WorkerIdentity {
  return { workerId, leaseMs, resultExpiresMs: TTL, eventsCap: EVENTS_CAP };
}

/** Waits until the Redis clock has passed `ms` (a lease or an expiry lapsed), without sleeping blind. */
async function redisPast(h: Harness, ms: number): Promise<void> {
  await waitFor(async () => (await redisNowMs(h.admin)) > ms, { what: `the Redis clock to pass ${ms}` });
}

/**
 * The paths only a crash, a lost reply or a damaged record reach, driven through scripts.ts as a
 * worker would call them: recovery of lapsed leases by the fetch and by the recover script
 * (requeued, then failed with WorkerLostError; revoked; a dead letter),
 * an expired task, a duplicate found at start, malformed records and a popped id with no record,
 * finishes (RETRY, FAILURE with a dead letter, SUCCESS), reclaim, requeue, a lease renewal of a
 * live and of a lost run, hand-backs (decline) with a grace (deferred, failed, revoked; of a
 * unique, rate-limited task), a purge of waiting tasks.
 */
async function directFlows(h: Harness, prefix: string, queue: string, dispatcher: Dispatcher): Promise<TaskResult<number>> {
  const keys = new QueueKeys(prefix, queue);
  const runner = new ScriptRunner(h.admin);
  const tasks = dispatcher.tasks(SlotService);
  const field = (id: string, name: keyof typeof FIELDS) => h.admin.hget(keys.task(id), FIELDS[name]);
  const recordLock = async (id: string) => lockOfRecord(keys, await h.admin.hmget(keys.task(id), ...LOCK_FIELDS));
  const start = async (workerId: string, leaseMs = 30_000) => fetchStarting(runner, keys, as(workerId, leaseMs), 1);
  const finish = async (workerId: string, ends: RunEnd[]) => readFetchReply(await fetch(runner, keys, as(workerId), 0, ends), ends.length);
  const end = (id: string, token: string, state: RunEnd['state'], over: Partial<RunEnd> = {}): RunEnd => ({
    id,
    token,
    state,
    field: state === 'SUCCESS' ? 'r' : 'e',
    value: state === 'SUCCESS' ? '1' : JSON.stringify({ name: 'Error', message: 'boom', traceback: '' }),
    expireMs: TTL,
    retryDelayMs: 0,
    deadReason: '',
    ...over,
  });

  // Recovery: a worker that vanished (lease 1 ms): the next fetch reports the lapsed lease, the
  // recover script puts the task back and a fetch starts it; the second lapse exceeds
  // maxRecoveries (1): FAILURE, WorkerLostError.
  const lost = await tasks.ok.applyAsync([1], { queue });
  const first = await start('ghost', 1);
  expect(first.started.map((r) => r.id)).toEqual([lost.id]);
  await redisPast(h, Number(await field(lost.id, 'startedAt')) + 1);
  expect((await start('rescuer', 1)).lapsed).toEqual([lost.id]);
  expect((await recoverLapsed(runner, keys, as('rescuer'), [lost.id])).outcomes).toEqual([{ id: lost.id, outcome: 'requeued' }]);
  const second = await start('rescuer', 1);
  expect(second.started.map((r) => r.id)).toEqual([lost.id]);
  await redisPast(h, Number(await field(lost.id, 'startedAt')) + 1);
  expect((await recoverLapsed(runner, keys, as('third'), [lost.id])).outcomes).toEqual([{ id: lost.id, outcome: 'failed' }]);
  expect(await lost.status()).toBe('FAILURE');

  // The same recoveries through the recover script (its records and locks declared): a unique
  // task re-queued, then failed with WorkerLostError, a revoke requested while it ran, and a
  // lease that names no record (dead letter).
  const lapsing = await tasks.single.applyAsync(['lapsing'], { queue });
  const stopped = await tasks.single.applyAsync(['stopped'], { queue });
  expect((await fetchStarting(runner, keys, as('ghost', 1), 2)).started.map((r) => r.id)).toEqual([lapsing.id, stopped.id]);
  await stopped.revoke();
  await h.admin.zadd(keys.active, 1, 'no-record-2');
  await redisPast(h, Number(await h.admin.zscore(keys.active, stopped.id)));
  expect((await recoverLapsed(runner, keys, as('rescuer'), [lapsing.id, stopped.id, 'no-record-2'])).outcomes.map((o) => o.outcome)).toEqual([
    'requeued',
    'revoked',
    'dead-lettered',
  ]);
  expect((await start('ghost', 1)).started.map((r) => r.id)).toEqual([lapsing.id]);
  await redisPast(h, Number(await h.admin.zscore(keys.active, lapsing.id)));
  expect((await recoverLapsed(runner, keys, as('rescuer'), [lapsing.id])).outcomes).toEqual([{ id: lapsing.id, outcome: 'failed' }]);

  // Expired before it started: REVOKED 'expired'.
  const expired = await tasks.ok.applyAsync([2], { queue, expires: '1ms' });
  await redisPast(h, Number(await field(expired.id, 'expires')));
  expect((await start('w')).revoked.map((r) => [r.id, r.reason])).toEqual([[expired.id, 'expired']]);

  // Its lock taken by another task meanwhile: REVOKED 'duplicate' at start.
  const dup = await tasks.single.applyAsync(['dup'], { queue });
  const lockKey = (await recordLock(dup.id))!;
  await h.admin.set(lockKey, 'another-task');
  expect((await start('w')).revoked.map((r) => [r.id, r.reason])).toEqual([[dup.id, 'duplicate']]);
  await h.admin.del(lockKey);

  // A record of an unknown message version (malformed: dead letter, FAILURE), and an id with no record (dead letter).
  await h.admin.hset(keys.task('bad-1'), FIELDS.version, '9', FIELDS.name, 'SlotService.ok', FIELDS.args, '[]', FIELDS.state, 'PENDING');
  await h.admin.lpush(keys.wait, 'bad-1', 'no-record-1');
  expect((await start('w')).started).toEqual([]);
  expect(await field('bad-1', 'state')).toBe('FAILURE');

  // Finishes: RETRY (to the delayed set), then a FAILURE that dead-letters (a message fault), and a SUCCESS.
  const fin = await tasks.ok.applyAsync([3], { queue });
  let run = (await start('w')).started[0]!;
  expect((await finish('w', [end(fin.id, run.token, 'RETRY')])).outcomes).toEqual([{ kind: 'stored', state: 'RETRY' }]);
  await redisPast(h, Number(await field(fin.id, 'due')));
  run = (await start('w')).started[0]!;
  expect((await finish('w', [end(fin.id, run.token, 'FAILURE', { deadReason: 'arguments are not a JSON array' })])).outcomes).toEqual([{ kind: 'stored', state: 'FAILURE' }]);
  const good = await tasks.ok.applyAsync([4], { queue });
  run = (await start('w')).started[0]!;
  expect((await finish('w', [end(good.id, run.token, 'SUCCESS')])).outcomes).toEqual([{ kind: 'stored', state: 'SUCCESS' }]);

  // Admissions of messages that lack the worker's checks: run under a lock and a rate window of
  // the worker's; over that window (the start taken back, to the delayed set); a duplicate of a
  // lock another task holds; a lock key of the wrong type (malformed, dead letter).
  const window = { key: keys.rate('SlotService.ok', 'admitted'), limit: 1, periodMs: 3_600_000 };
  const lockOf = (tail: string) => ({ key: keys.lock('SlotService.ok', tail), ttlMs: 60_000, waitForExpiry: false });
  const admitted: Verdict['verdict'][] = [];
  for (const [tail, rate] of [['free', window], ['over', window], ['taken', undefined], ['wrong-type', undefined]] as const) {
    const t = await tasks.ok.applyAsync([6], { queue });
    run = (await start('w')).started[0]!;
    if (tail === 'taken') await h.admin.set(lockOf(tail).key, 'another-task');
    if (tail === 'wrong-type') await h.admin.hset(lockOf(tail).key, 'f', 'v');
    admitted.push((await admit(runner, keys, as('w'), run, { lock: lockOf(tail), rate, maxRecoveries: 2 })).verdict);
    if (tail === 'free') expect((await finish('w', [end(t.id, run.token, 'SUCCESS')])).outcomes).toEqual([{ kind: 'stored', state: 'SUCCESS' }]);
  }
  expect(admitted).toEqual(['RUN', 'LIMITED', 'REVOKED', 'FAILURE']);

  // A reply lost: the worker reclaims the run it does not know; then a renewal (live, and of a
  // run no longer current), a requeue at close, and a hand-back of a task it does not run.
  const back = await tasks.ok.applyAsync([5], { queue });
  run = (await start('w')).started[0]!;
  expect(await reclaim(runner, keys, as('w'), [])).toEqual({ count: 1, problem: '' });
  run = (await start('w')).started[0]!;
  expect(await extendLeases(runner, keys, as('w'), [run, { id: back.id, token: 'an-older-run' }])).toEqual([
    { id: back.id, token: 'an-older-run', reason: 'lost', state: 'STARTED' },
  ]);
  expect(await requeue(runner, keys, as('w'), [run])).toEqual({ count: 1, problem: '' });
  run = (await start('w')).started[0]!;
  expect((await decline(runner, keys, as('w'), run, 60_000, 'not run here')).verdict).toBe('DEFERRED');

  // Hand-backs of a unique, rate-limited task (its lock and rate window declared): deferred (the
  // start taken out of its window), then failed once the grace has passed (its lock released);
  // and one whose revoke was requested while it was started (revoked, its lock released).
  const GRACE_MS = 50;
  const guarded = await tasks.guarded.applyAsync(['declined'], { queue });
  const guardedLock = (await recordLock(guarded.id))!;
  const guardedRate = (await field(guarded.id, 'rateKey'))!;
  run = (await start('w')).started[0]!;
  expect(run.id).toBe(guarded.id);
  expect((await decline(runner, keys, as('w'), run, GRACE_MS, 'not run here')).verdict).toBe('DEFERRED');
  expect(await h.admin.zcard(guardedRate)).toBe(0);
  await redisPast(h, Number(await field(guarded.id, 'due')));
  run = (await start('w')).started[0]!;
  expect(run.id).toBe(guarded.id);
  await redisPast(h, Number(await field(guarded.id, 'declinedAt')) + GRACE_MS);
  expect((await decline(runner, keys, as('w'), run, GRACE_MS, 'not run here')).verdict).toBe('FAILURE');
  expect(await h.admin.exists(guardedLock)).toBe(0);
  const revokedGuarded = await tasks.guarded.applyAsync(['revoked'], { queue });
  run = (await start('w')).started[0]!;
  expect(run.id).toBe(revokedGuarded.id);
  await revokedGuarded.revoke();
  expect((await decline(runner, keys, as('w'), run, GRACE_MS, 'not run here')).verdict).toBe('REVOKED');
  expect(await h.admin.exists((await recordLock(revokedGuarded.id))!)).toBe(0);

  // A revoke requested (no terminate) while a unique task runs: the requeue at close, and a
  // reclaim after a lost reply, end it REVOKED instead of putting it back, releasing its lock.
  for (const handBack of [requeue, reclaim]) {
    const revoked = await tasks.single.applyAsync([handBack.name], { queue });
    run = (await start('w')).started[0]!;
    expect(run.id).toBe(revoked.id);
    await revoked.revoke();
    await handBack(runner, keys, as('w'), handBack === requeue ? [run] : []);
    expect(await revoked.status()).toBe('REVOKED');
  }

  // A purge of waiting tasks (the public flows purge only delayed ones): a unique one, whose lock
  // it releases, and a plain one.
  const waiting = [await tasks.single.applyAsync(['purged'], { queue }), await tasks.ok.applyAsync([7], { queue })];
  expect(await purge(runner, keys, 200, 0, false, TTL, EVENTS_CAP)).toEqual({ purged: 2, fromWait: 2, fromDelayed: 0, fromClaimed: 0, changed: false });
  for (const t of waiting) expect(await t.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'purged' });

  // The declined task is due again soon; the public flows' worker runs it.
  return back;
}

/**
 * The public API's paths, with one worker on the queue: enqueue, fetch (start, finish as
 * SUCCESS, RETRY, FAILURE, a duplicate, the rate limit), progress, heartbeat and declare (start,
 * tick, close), lease renewals, admission, hand-back to failure and its dead letter, retry and
 * drop of dead letters, onlyAfter, lock extension and release, revoke (queued, running with terminate), forget, purge,
 * requeue at close.
 */
async function publicFlows(h: Harness, prefix: string, queue: string, dispatcher: Dispatcher, checker: SlotChecker, declined: TaskResult<number>): Promise<void> {
  const tasks = dispatcher.tasks(SlotService);
  const inspector = new Inspector({ connection: h.url, prefix });
  const worker: Worker = h.worker({ prefix, queues: [queue], services: [new SlotService()], leaseDuration: '600ms', unknownTaskGrace: 0 });
  const ev = recordEvents(worker);
  const gates = ['a', 'held', 'last', 'permit'].map((key) => {
    const g = gate();
    holds.set(key, g);
    return g;
  });
  try {
    await worker.start();

    // The task the direct flows handed back runs here when due.
    expect(await declined.get({ timeout: 10 })).toBe(5);
    const okResult = await tasks.ok.applyAsync([1], { queue });
    expect(await okResult.get({ timeout: 10 })).toBe(1);
    await expect((await tasks.flaky.applyAsync([], { queue })).get({ timeout: 10 })).rejects.toBeInstanceOf(TaskFailedError);
    expect(ev.retried.length).toBe(1);

    // A unique task held running; a second send of it is a duplicate; an operator releases its lock.
    const holder = await tasks.single.applyAsync(['a'], { queue });
    await waitFor(() => ev.started.some((e) => e.id === holder.id), { what: 'the unique task to start' });
    expect((await tasks.single.applyAsync(['a'], { queue })).duplicate).toBe(true);
    const lock = (await inspector.locks(queue)).find((l) => l.holder === holder.id);
    expect(await inspector.extendLock(lock!.key, holder.id, '1h')).toEqual({ extended: true, ttlMs: 3_600_000 });
    expect(await inspector.releaseLock(lock!.key, holder.id)).toEqual({ released: true });
    // Revoked with terminate while running.
    await holder.revoke({ terminate: true });
    await waitFor(() => ev.revoked.some((e) => e.id === holder.id), { what: 'the terminated task to be revoked' });

    // Conflict modes: a send that replaces a queued holder (declaring its record once told of
    // it); keepLast sends that wait behind a running holder (the lock's pending pointer), the
    // second replacing the first; the holder's finish hands the lock to the last.
    const queuedOne = await tasks.replacing.applyAsync(['r', 1], { queue, countdown: 3600 });
    expect((await tasks.replacing.applyAsync(['r', 2], { queue })).conflict).toEqual({ outcome: 'replaced', replaced: queuedOne.id });
    const running = await tasks.latest.applyAsync(['last', 0], { queue });
    await waitFor(() => ev.started.some((e) => e.id === running.id), { what: 'the keepLast holder to start' });
    const waiting = await tasks.latest.applyAsync(['last', 1], { queue });
    const newest = await tasks.latest.applyAsync(['last', 2], { queue });
    expect(newest.conflict).toEqual({ outcome: 'waiting', holder: running.id, replaced: waiting.id });
    gates[2]!.open();
    expect(await newest.get({ timeout: 10 })).toBe(2);

    // The rate limit: the second start within the hour is rescheduled.
    const limited = [await tasks.limited.applyAsync([1], { queue }), await tasks.limited.applyAsync([2], { queue })];
    await waitFor(() => ev.rateLimited.length >= 1, { what: 'a start over the rate limit' });
    expect(ev.rateLimited.map((e) => e.id)).toEqual([limited[1]!.id]);

    // Revoked while queued (delayed); an ended task forgotten.
    const later = await tasks.ok.applyAsync([2], { queue, countdown: 3600 });
    await later.revoke();
    expect(await later.status()).toBe('REVOKED');
    await okResult.forget();

    // A message without the lock its task has in the worker: admitted under the worker's lock.
    const bare = await tasks.single.applyAsync(['bare'], { queue, countdown: 3600 });
    const keys = new QueueKeys(prefix, queue);
    await h.admin.hdel(keys.task(bare.id), FIELDS.lockKey, FIELDS.lockUnique, FIELDS.lockTtl, FIELDS.lockWaitForExpiry);
    await h.admin.zadd(keys.delayed, 0, bare.id);
    await h.admin.lpush(keys.wait, ''); // wakes the idle worker
    expect(await bare.get({ timeout: 10 })).toBe('bare');

    // A task nobody runs: handed back, failed at once (grace 0), dead-lettered; retried from the
    // dead letters (it fails again), then the letters are dropped.
    const nobody = await dispatcher.send('Nobody.runsThis', [], { queue });
    await expect(nobody.get({ timeout: 10 })).rejects.toBeInstanceOf(TaskFailedError);
    const letter = (await inspector.deadLetters(queue)).find((l) => l.id === nobody.id)!;
    expect(await inspector.retryDead(queue, [letter])).toEqual({ done: 1, skipped: [] });
    await waitFor(async () => (await inspector.deadLetters(queue)).some((l) => l.id === nobody.id), { what: 'the retried task to fail again' });
    expect((await inspector.dropDead(queue, 'all')).done).toBeGreaterThan(0);

    // Purge of the delayed tasks: two due in an hour, and the two over a rate limit (here and at admission).
    await tasks.ok.applyAsync([3], { queue, countdown: 3600 });
    await tasks.ok.applyAsync([4], { queue, countdown: 3600 });
    expect(await inspector.purge(queue, { delayed: true })).toBe(4);

    // Named limits: the first run takes both and corrects its costs; the second finds the window
    // full: its gcra charge is taken back, and it is sent back to its turn in an hour (admit-6.lua).
    expect(await (await tasks.named.applyAsync([1], { queue })).get({ timeout: 10 })).toBe(1);
    const deferred = await tasks.named.applyAsync([2], { queue });
    await waitFor(() => ev.rateLimited.some((e) => e.id === deferred.id), { what: 'the second named run to wait for its turn' });
    await deferred.revoke();

    // Concurrency permits: the first run holds both through a renewal; the second waits, and is
    // woken in its queue (permit-wake-2.lua) when the first gives them back.
    const permitHolder = await tasks.permitted.applyAsync(['permit'], { queue });
    await waitFor(() => ev.started.some((e) => e.id === permitHolder.id), { what: 'the permit holder to start' });
    const permitWaiter = await tasks.permitted.applyAsync(['permit'], { queue });
    await waitFor(() => ev.rateLimited.some((e) => e.id === permitWaiter.id), { what: 'the second run to wait for its permit' });
    await waitFor(() => checker.calls.some((c) => c.script === 'permit' && c.argv[0] === 'renew'), { what: "the worker's renewal of the permits" });
    holds.get('permit')!.open();
    expect(await permitWaiter.get({ timeout: 10 })).toBe('permit');
    await waitFor(() => checker.calls.some((c) => c.script === 'permit-wake'), { what: 'the waiter to be woken' });

    // Lease renewals of a running task, then a close that hands it back (requeue).
    const held = await tasks.single.applyAsync(['held'], { queue });
    await waitFor(() => ev.started.some((e) => e.id === held.id), { what: 'the held task to start' });
    await waitFor(() => checker.calls.some((c) => c.script === 'extend-leases' && c.argv.includes(held.id)), { what: "the worker's renewal of the held task's lease" });
    await worker.close({ timeout: 0 });
    expect(await held.status()).toBe('PENDING');
    expect(ev.errors).toEqual([]);
  } finally {
    for (const g of gates) g.open();
    for (const key of ['a', 'held', 'last', 'permit']) holds.delete(key);
    await inspector.close();
  }
}

/** The table of what each script touched, for the test's output and the report. */
function table(reports: Map<string, ScriptReport>): string {
  const rows = [...reports].sort(([a], [b]) => a.localeCompare(b));
  return rows.map(([name, r]) => `  ${name.padEnd(14)} calls ${String(r.calls).padStart(4)}  declared [${r.declared.join(' ')}]  touched [${r.touched.join(' ')}]  undeclared [${r.undeclared.join(' ')}]  channels [${r.channels.join(' ')}]`).join('\n');
}

const fresh = usePrivateRedis('slots');

describe('slot discipline of the Lua scripts (issue 12, point 2)', () => {
  const cases: { label: string; prefix: (h: Harness) => string; queue: string }[] = [
    { label: 'default queue, test prefix', prefix: (h) => h.prefix, queue: 'default' },
    { label: 'colons and dots', prefix: (h) => `${h.prefix}:app.v2`, queue: 'reports:daily.v1' },
    { label: 'non-ASCII', prefix: (h) => `${h.prefix}:ünï.çødé`, queue: 'émails-队列-🚀' },
  ];

  for (const c of cases) {
    it(`every script's keys lie in one slot, under the queue's hash tag, declared: ${c.label}`, async () => {
      const h = fresh();
      const prefix = c.prefix(h);
      const base = new QueueKeys(prefix, c.queue).base;
      const checker = await SlotChecker.start(h.admin);
      try {
        const dispatcher = h.dispatcher({ prefix });
        const declined = await directFlows(h, prefix, c.queue, dispatcher);
        await publicFlows(h, prefix, c.queue, dispatcher, checker, declined);
        const calls = await checker.settle();
        const reports = report(calls, base);
        console.info(`[slots] ${c.label} (base ${base}):\n${table(reports)}`);

        // Every script was driven, and no call of a script we do not know was seen.
        expect([...reports.keys()].sort()).toEqual(allScripts.map((s) => s.name).sort());
        // (a) One slot per call, every key under the queue's base (so under its hash tag).
        for (const call of calls) {
          const k = keysOf(call);
          const all = [...new Set([...call.declared, ...k.touched])];
          expect(k.slots, `${call.script} touches keys of ${k.slots.length} slots: ${all.join(', ')}`).toHaveLength(1);
          // A named limit's keys, and a concurrency scope's, lie under a hash tag of their own,
          // apart from every queue.
          const own = call.script === 'limit' ? 'limit:' : call.script === 'permit' ? '(?:task-)?permit:' : undefined;
          const home = own === undefined ? base : (new RegExp(`^(.*\\{${own}[^}]*\\}:)`).exec(all[0] ?? '')?.[1] ?? '');
          if (own !== undefined) expect(home.startsWith(`${prefix}:{`) && home.length > prefix.length + 3, `${call.script} touches ${all.join(', ')}`).toBe(true);
          for (const key of all) expect(key.startsWith(home), `${call.script} touches ${key}, outside ${home}`).toBe(true);
        }
        // (b) No script touches a key it did not declare.
        const undeclared = Object.fromEntries([...reports].filter(([, r]) => r.undeclared.length > 0).map(([name, r]) => [name, r.undeclared]));
        expect(undeclared).toEqual({});
      } finally {
        checker.close();
      }
    });
  }

  it('the checker itself: a key built inside Lua is undeclared, a key of another queue is another slot', async () => {
    const h = fresh();
    // A script as a careless one would be written: one declared key, one built from a base in
    // ARGV, one of another queue passed in ARGV.
    const source = "redis.call('SET', KEYS[1], '1'); redis.call('SET', ARGV[1] .. 'built', '1'); redis.call('SET', ARGV[2], '1'); return 1";
    const checker = await SlotChecker.start(h.admin, { careless: source });
    try {
      const base = new QueueKeys(h.prefix, 'q').base;
      const other = new QueueKeys(h.prefix, 'elsewhere').wait;
      expect(keySlot(other)).not.toBe(keySlot(base));
      await h.admin.eval(source, 1, `${base}wait`, base, other);
      const calls = (await checker.settle()).filter((c) => c.script === 'careless');
      expect(calls).toHaveLength(1);
      expect(calls[0]!.declared).toEqual([`${base}wait`]);
      const k = keysOf(calls[0]!);
      expect(k.undeclared).toEqual([`${base}built`, other]);
      expect(k.slots.sort()).toEqual([keySlot(base), keySlot(other)].sort());
      const r = report(calls, base).get('careless')!;
      expect(r.undeclared).toEqual(['other built', `outside ${other}`]);
      expect(r.crossSlot).toEqual([{ keys: [`${base}wait`, `${base}built`, other], slots: k.slots }]);
    } finally {
      checker.close();
    }
  });

  it('a queue or prefix name with braces is refused with a ConfigError, so no name can bring a hash tag of its own', async () => {
    const h = fresh();
    expect(() => validateName('a{b}', 'queue')).toThrow(ConfigError);
    expect(() => validateName('p}x', 'prefix')).toThrow(/prefix must be a non-empty string .* without braces/);
    expect(() => validateName('emails.队列:x', 'queue')).not.toThrow();
    expect(() => new Dispatcher({ connection: h.url, prefix: '{tag}' })).toThrow(ConfigError);
    expect(() => new Worker({ connection: h.url, prefix: h.prefix, queues: ['q}'], services: [new SlotService()] })).toThrow(ConfigError);
    const dispatcher = h.dispatcher();
    await expect(dispatcher.tasks(SlotService).ok.applyAsync([1], { queue: '{other}' })).rejects.toThrow(/queue must be a non-empty string .* without braces/);
  });
});
