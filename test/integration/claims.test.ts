/**
 * The fetch starts only tasks whose keys it declares (issue 12, point 2). An id it reads at the
 * tail of the wait list without having been told of it is claimed: moved to the claimed set and
 * returned, for the worker's next call to start with its record (and lock, rate window)
 * declared. An id it was told of (a hint: the last reply's peek, or what BLMOVE saw) starts in
 * the same call. Driven through the scripts one step at a time, so the rare interleavings (a
 * worker dying with claims, a claim that lapsed and was taken by another) happen on purpose.
 */
import { describe, expect, it } from 'vitest';
import { Task } from 'heimdall-tasks';
import { QueueKeys } from '../../src/core/protocol/queue-keys.js';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { fetch, readFetchReply, type FetchCandidates, type WorkerIdentity } from '../../src/core/protocol/scripts.js';
import { FIELDS, redisNowMs, useHarness, waitFor, type Harness } from '../helpers.js';

const TTL = 86_400_000;

/** An id seen at the tail, its keys not looked up. */
const hint = (id: string) => ({ id, lockKey: '', rateKey: '' });

class ClaimService {
  @Task()
  async plain(n: number): Promise<number> {
    return n;
  }

  @Task({ unique: true, uniqueTimeout: 60, rateLimit: [100, 60] })
  async guarded(n: number): Promise<number> {
    return n;
  }
}

function side(h: Harness) {
  const keys = new QueueKeys(h.prefix, 'default');
  const runner = new ScriptRunner(h.admin);
  const as = (workerId: string, leaseMs = 30_000): WorkerIdentity => ({ workerId, leaseMs, resultExpiresMs: TTL, eventsCap: 0 });
  return {
    keys,
    call: async (worker: WorkerIdentity, want: number, c: FetchCandidates = {}) => readFetchReply(await fetch(runner, keys, worker, want, [], c), 0),
    as,
    claimed: async () => (await h.admin.zrange(keys.claimed, 0, -1)).sort(),
    /** The wait list, tail (next to start) first. */
    waiting: async () => (await h.admin.lrange(keys.wait, 0, -1)).reverse(),
  };
}

describe('claims and hints of the fetch', () => {
  const fresh = useHarness('claims');

  it('ids the call was not told of are claimed and returned; the next call starts them; the peek starts the rest in one call', async () => {
    const h = fresh();
    const s = side(h);
    const d = h.dispatcher();
    const sent = [];
    for (let i = 0; i < 5; i++) sent.push((await d.tasks(ClaimService).plain.delay(i)).id);
    const w = s.as('W');
    const first = await s.call(w, 2, { peek: 10 });
    expect(first.started).toEqual([]);
    expect(first.claims.map((c) => c.id)).toEqual(sent.slice(0, 2));
    expect(first.peek).toEqual(sent.slice(2));
    expect(await s.claimed()).toEqual([...sent.slice(0, 2)].sort());
    expect(await s.waiting()).toEqual(sent.slice(2));
    // The claims start, in order, and the hints of the peek start in the same call.
    const second = await s.call(w, 4, { claims: first.claims, hints: first.peek.slice(0, 2).map(hint), peek: 10 });
    expect(second.started.map((r) => r.id)).toEqual(sent.slice(0, 4));
    expect(second.claims).toEqual([]);
    expect(second.peek).toEqual([sent[4]]);
    expect(await s.claimed()).toEqual([]);
    expect(await h.admin.zcard(s.keys.active)).toBe(4);
    expect(await h.admin.hget(h.taskKey(sent[0]!), FIELDS.state)).toBe('STARTED');
  });

  it('a hint no longer at the tail (another worker took it) starts nothing: the id at the tail is claimed instead', async () => {
    const h = fresh();
    const s = side(h);
    const d = h.dispatcher();
    const a = (await d.tasks(ClaimService).plain.delay(1)).id;
    const b = (await d.tasks(ClaimService).plain.delay(2)).id;
    // Another worker started a meanwhile.
    const other = await s.call(s.as('other'), 1, { hints: [hint(a)] });
    expect(other.started.map((r) => r.id)).toEqual([a]);
    const late = await s.call(s.as('W'), 1, { hints: [hint(a)] });
    expect(late.started).toEqual([]);
    expect(late.claims.map((c) => c.id)).toEqual([b]);
    expect(await h.admin.hget(h.taskKey(a), FIELDS.worker)).toBe('other');
  });

  it('a task whose record names a lock and a rate window is claimed with them; the call that declares them starts it under both', async () => {
    const h = fresh();
    const s = side(h);
    const r = await h.dispatcher().tasks(ClaimService).guarded.delay(7);
    const [lockKey, rateKey] = [await h.recordLock(r.id), await h.field(r.id, 'rateKey')];
    const w = s.as('W');
    // Told of the id but not of its keys: the record is read, nothing is written but the claim.
    const first = await s.call(w, 1, { hints: [hint(r.id)] });
    expect(first.started).toEqual([]);
    expect(first.claims).toEqual([{ id: r.id, stamp: expect.any(String), lockKey, rateKey }]);
    expect(await h.admin.zcard(rateKey!)).toBe(0);
    const second = await s.call(w, 1, { claims: first.claims });
    expect(second.started.map((t) => t.id)).toEqual([r.id]);
    expect(await h.admin.get(lockKey!)).toBe(r.id);
    expect(await h.admin.zcard(rateKey!)).toBe(1);
  });

  it('an id looked ahead at (mode k) answers the lock and rate window its record names; the call that declares them starts it at once', async () => {
    const h = fresh();
    const s = side(h);
    const d = h.dispatcher();
    const first = await d.tasks(ClaimService).guarded.delay(1);
    const second = await d.tasks(ClaimService).guarded.delay(2);
    const [lockKey, rateKey] = [await h.recordLock(second.id), await h.field(second.id, 'rateKey')];
    const w = s.as('W');
    // Starting nothing (want 0 would release), the worker looks ahead at `second` while it takes `first`.
    const lookAhead = await s.call(w, 1, { hints: [hint(first.id)], look: [second.id] });
    expect(lookAhead.looked).toEqual([{ id: second.id, lockKey, rateKey }]);
    expect(lookAhead.claims.map((c) => c.id)).toEqual([first.id]); // its own keys were not declared
    expect(await s.waiting()).toEqual([second.id]);
    // With the keys declared, the hint starts in one call: no claim.
    const next = await s.call(w, 2, { claims: lookAhead.claims, hints: lookAhead.looked });
    expect(next.started.map((t) => t.id)).toEqual([first.id, second.id]);
    expect(next.claims).toEqual([]);
    expect(await h.admin.get(lockKey!)).toBe(second.id);
  });

  it('a record whose lock is not a key of its queue is malformed (it could not be declared in the queue\'s slot): FAILURE and a dead letter, not a claim', async () => {
    const h = fresh();
    const s = side(h);
    const r = await h.dispatcher().tasks(ClaimService).guarded.delay(3);
    await h.admin.hset(h.taskKey(r.id), FIELDS.lockKey, 'elsewhere:lock');
    const reply = await s.call(s.as('W'), 1, { hints: [hint(r.id)] });
    expect(reply.started).toEqual([]);
    expect(reply.claims).toEqual([]);
    expect(await r.info()).toMatchObject({ state: 'FAILURE', error: { name: 'MalformedTaskError' } });
    expect((await h.deadLetters()).map((x) => x.id)).toEqual([r.id]);
    expect(await h.admin.exists('elsewhere:lock')).toBe(0);
  });

  it('claims of a worker that died lapse and go back to the front of the queue; its late start of them does nothing', async () => {
    const h = fresh();
    const s = side(h);
    const d = h.dispatcher();
    const first = (await d.tasks(ClaimService).plain.delay(1)).id;
    const second = (await d.tasks(ClaimService).plain.delay(2)).id;
    const third = (await d.tasks(ClaimService).plain.delay(3)).id;
    // A claim lasts as long as the lease, at most 10 s: 50 ms here.
    const ghost = s.as('ghost', 50);
    const held = await s.call(ghost, 2);
    expect(held.claims.map((c) => c.id)).toEqual([first, second]);
    const lapse = Math.max(...held.claims.map((c) => Number(c.stamp)));
    await waitFor(async () => (await redisNowMs(h.admin)) > lapse, { what: 'the claims to lapse' });
    // The next call that starts tasks sends lapsed claims back, first in line, and claims them.
    const rescuer = s.as('rescuer');
    const back = await s.call(rescuer, 3);
    expect(back.claims.map((c) => c.id).sort()).toEqual([first, second, third].sort());
    expect(await s.waiting()).toEqual([]);
    // The dead worker's late start names stamps that are no longer its own: nothing happens.
    const late = await s.call(ghost, 2, { claims: held.claims });
    expect(late.started).toEqual([]);
    expect(late.claims).toEqual([]);
    const started = await s.call(rescuer, 3, { claims: back.claims });
    expect(started.started.map((t) => t.id).sort()).toEqual([first, second, third].sort());
    expect(await h.admin.hmget(h.taskKey(first), FIELDS.worker, FIELDS.attempts)).toEqual(['rescuer', '1']);
  });

  it('a closing worker releases its claims (want 0) to the front of the queue, in their order', async () => {
    const h = fresh();
    const s = side(h);
    const d = h.dispatcher();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await d.tasks(ClaimService).plain.delay(i)).id);
    const w = s.as('W');
    const held = await s.call(w, 2);
    expect(await s.waiting()).toEqual([ids[2]]);
    const released = await s.call(w, 0, { claims: held.claims });
    expect(released.started).toEqual([]);
    expect(released.claims).toEqual([]);
    expect(await s.claimed()).toEqual([]);
    expect(await s.waiting()).toEqual(ids);
  });

  it('a claimed task revoked before its start is dropped, not started', async () => {
    const h = fresh();
    const s = side(h);
    const r = await h.dispatcher().tasks(ClaimService).plain.delay(1);
    const w = s.as('W');
    const held = await s.call(w, 1);
    await r.revoke();
    const next = await s.call(w, 1, { claims: held.claims });
    expect(next.started).toEqual([]);
    expect(next.claims).toEqual([]);
    expect(await s.claimed()).toEqual([]);
    expect(await r.status()).toBe('REVOKED');
  });

  it('a worker runs claimed and hinted tasks end to end: every task once, nothing left claimed', async () => {
    const h = fresh();
    const d = h.dispatcher();
    const handles = [];
    for (let i = 0; i < 40; i++) handles.push(await (i % 4 === 0 ? d.tasks(ClaimService).guarded.delay(i) : d.tasks(ClaimService).plain.delay(i)));
    const w = h.worker({ services: [new ClaimService()], concurrency: 3 });
    await w.start();
    expect(await Promise.all(handles.map((r) => r.get({ timeout: 20 })))).toEqual(handles.map((_, i) => i));
    await w.close();
    const keys = new QueueKeys(h.prefix, 'default');
    expect(await h.admin.zcard(keys.claimed)).toBe(0);
    expect(await h.admin.llen(keys.wait)).toBe(0);
    // Every lock released by the finish, which declares it.
    expect(await Promise.all(handles.filter((_, i) => i % 4 === 0).map(async (r) => h.admin.get((await h.recordLock(r.id))!)))).toEqual(
      handles.filter((_, i) => i % 4 === 0).map(() => null),
    );
  });
});
