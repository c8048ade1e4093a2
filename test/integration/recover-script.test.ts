/**
 * Recovery of lapsed leases through recover-4.lua, driven directly with `recoverLapsed` of
 * scripts.ts (as the fetch will call it with the ids it finds lapsed): a run whose worker
 * vanished (a lease of 1 ms) goes back to the front of the wait list with one more recovery,
 * ends FAILURE with a WorkerLostError once maxRecoveries is used up, ends REVOKED when a revoke
 * was requested, and a lease with no record, a record that is not a hash or a task that moved on
 * is cleaned up; the caller's own lapsed run gets one more lease, and a lease that has not lapsed
 * is left alone. The locks are declared: a lock read before the call that the record no longer
 * names is read again.
 */
import { describe, expect, it } from 'vitest';
import { Task, UnexpectedReplyError } from 'heimdall-tasks';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { recoverLapsed, type WorkerIdentity } from '../../src/core/protocol/scripts.js';
import { fetchStarting } from '../fetch-starting.js';
import { recover, type LuaScript } from '../../src/redis-scripts/scripts.generated.js';
import { FIELDS, redisNowMs, useHarness, waitFor, type Harness } from '../helpers.js';

class Lapsing {
  @Task({ unique: true })
  async single(key: string): Promise<string> {
    return key;
  }
}

const TTL = 86_400_000;

function as(workerId: string, leaseMs = 30_000): WorkerIdentity {
  return { workerId, leaseMs, resultExpiresMs: TTL, eventsCap: 1000 };
}

/** A ScriptRunner that counts its recover calls, and can hand the caller a stale lock for the first `staleReads` reads of `lk`. */
class WatchedRunner extends ScriptRunner {
  recoverCalls = 0;
  staleReads = 0;
  staleLock = '';

  override async run<T>(script: LuaScript, keys: readonly string[], args: readonly (string | number)[]): Promise<T> {
    if (script.name === 'recover') this.recoverCalls++;
    return super.run<T>(script, keys, args);
  }

  override async fields(key: string, fields: readonly string[]): Promise<(string | null)[]> {
    const read = await super.fields(key, fields);
    if (this.staleReads > 0 && fields[0] === FIELDS.lockKey) {
      this.staleReads--;
      return [this.staleLock];
    }
    return read;
  }
}

describe('recover-4.lua through recoverLapsed', () => {
  const fresh = useHarness('recover');

  /** A unique task started by `workerId` with a lease of `leaseMs`; resolves with its id, token and lock key. */
  async function started(h: Harness, runner: ScriptRunner, key: string, workerId = 'ghost', leaseMs = 1): Promise<{ id: string; token: string; lock: string }> {
    const sent = await h.dispatcher().tasks(Lapsing).single.delay(key);
    const reply = await fetchStarting(runner, h.queueKeys(), as(workerId, leaseMs), 1);
    expect(reply.started.map((r) => r.id)).toEqual([sent.id]);
    return { id: sent.id, token: reply.started[0]!.token, lock: await h.lockKeyOf(sent.id) };
  }

  /** Waits until the lease of `id` has lapsed on the Redis clock. */
  async function lapsed(h: Harness, id: string): Promise<void> {
    const expiry = Number(await h.admin.zscore(h.queueKey('active'), id));
    await waitFor(async () => (await redisNowMs(h.admin)) > expiry, { what: `the lease of ${id} to lapse` });
  }

  it('a lapsed run of another worker goes back to the front of the wait list once (rc 1, its lock kept), then ends FAILURE with WorkerLostError (maxRecoveries 1)', async () => {
    const h = fresh();
    const keys = h.queueKeys();
    const runner = new ScriptRunner(h.admin);
    // Not lapsed: a run with a lease of a minute is left alone. (Started first: a fetch recovers
    // the lapsed leases it finds, as the one that starts it would recover the other.)
    const live = await started(h, runner, 'b', 'alive', 60_000);
    const run = await started(h, runner, 'a');
    await lapsed(h, run.id);

    const first = await recoverLapsed(runner, keys, as('rescuer'), [run.id, live.id]);
    expect(first).toEqual({ outcomes: [{ id: run.id, outcome: 'requeued' }, { id: live.id, outcome: 'not-lapsed' }], problem: '' });
    expect(await h.admin.hmget(keys.task(run.id), FIELDS.state, FIELDS.recoveries)).toEqual(['PENDING', '1']);
    expect(await h.admin.lindex(keys.wait, -1)).toBe(run.id); // the front: the next fetch takes it
    expect(await h.admin.zscore(keys.active, run.id)).toBeNull();
    expect(await h.admin.get(run.lock)).toBe(run.id);
    expect(JSON.parse((await h.field(run.id, 'history'))!)).toEqual([expect.objectContaining({ a: 1, w: 'ghost', lost: true })]);
    expect(await h.field(live.id, 'state')).toBe('STARTED');
    expect(await h.admin.zscore(keys.active, live.id)).not.toBeNull();
    const events = (await h.admin.xrange(keys.events, '-', '+')).map(([, pairs]) => pairs);
    expect(events.some((pairs) => pairs.includes('recovered') && pairs[pairs.indexOf('recovered') + 1] === run.id)).toBe(true);

    // The second lapse is one more than maxRecoveries (default 1): FAILURE, its lock released.
    const again = await fetchStarting(runner, keys, as('ghost-2', 1), 1);
    expect(again.started.map((r) => r.id)).toEqual([run.id]);
    await lapsed(h, run.id);
    expect((await recoverLapsed(runner, keys, as('rescuer'), [run.id])).outcomes).toEqual([{ id: run.id, outcome: 'failed' }]);
    expect(await h.admin.hmget(keys.task(run.id), FIELDS.state, FIELDS.recoveries)).toEqual(['FAILURE', '2']);
    const error = JSON.parse((await h.field(run.id, 'error'))!) as { name: string; message: string };
    expect(error.name).toBe('WorkerLostError');
    expect(error.message).toContain('worker ghost-2 stopped renewing the lease');
    expect(error.message).toContain('maxRecoveries is 1');
    expect(await h.admin.zscore(keys.active, run.id)).toBeNull();
    expect(await h.admin.exists(run.lock)).toBe(0);
    expect(await h.admin.lpos(keys.wait, run.id)).toBeNull();
  });

  it('a run whose revoke was requested ends REVOKED with that reason and releases its lock; the caller’s own run gets one more lease', async () => {
    const h = fresh();
    const keys = h.queueKeys();
    const runner = new ScriptRunner(h.admin);
    // The caller's own run first, with a lease long enough not to lapse before the other is
    // started (the fetch that starts it would recover it).
    const own = await started(h, runner, 'own', 'me', 1000);
    const run = await started(h, runner, 'revoked');
    const result = h.dispatcher().result(run.id);
    await result.revoke();
    expect(await h.field(run.id, 'revokeRequested')).toBe('revoked');
    await lapsed(h, run.id);
    await lapsed(h, own.id);

    const reply = await recoverLapsed(runner, keys, as('me', 60_000), [run.id, own.id]);
    expect(reply.outcomes).toEqual([
      { id: run.id, outcome: 'revoked' },
      { id: own.id, outcome: 'kept' },
    ]);
    expect(await result.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'revoked' });
    expect(await h.admin.exists(run.lock)).toBe(0);
    expect(await h.admin.zscore(keys.active, run.id)).toBeNull();
    // Its own run lapsed less than one of its leases ago: still leased and STARTED. Another worker recovers it.
    expect(await h.field(own.id, 'state')).toBe('STARTED');
    expect(await h.admin.zscore(keys.active, own.id)).not.toBeNull();
    expect((await recoverLapsed(runner, keys, as('someone-else'), [own.id])).outcomes).toEqual([{ id: own.id, outcome: 'requeued' }]);
  });

  it('a lease with no record or a record that is not a hash is dead-lettered; one of a task that moved on is dropped', async () => {
    const h = fresh();
    const keys = h.queueKeys();
    const runner = new ScriptRunner(h.admin);
    const moved = await started(h, runner, 'moved');
    await h.admin.hset(keys.task(moved.id), FIELDS.state, 'SUCCESS');
    await h.admin.set(keys.task('not-a-hash'), 'x');
    await h.admin.zadd(keys.active, 1, 'no-record', 1, 'not-a-hash');
    await lapsed(h, moved.id);

    const reply = await recoverLapsed(runner, keys, as('rescuer'), ['no-record', 'not-a-hash', moved.id]);
    expect(reply.outcomes).toEqual([
      { id: 'no-record', outcome: 'dead-lettered' },
      { id: 'not-a-hash', outcome: 'dead-lettered' },
      { id: moved.id, outcome: 'dropped' },
    ]);
    expect(await h.admin.zcard(keys.active)).toBe(0);
    expect((await h.deadLetters()).map((d) => [d.id, d.reason])).toEqual([
      ['not-a-hash', 'the active set names a task whose record is not a hash'],
      ['no-record', 'the active set names a task with no record'],
    ]);
    expect(await h.field(moved.id, 'state')).toBe('SUCCESS');
  });

  it('a lock read that the record no longer names is read again (KEYS_CHANGED), and a lock that keeps changing gives up with an UnexpectedReplyError', async () => {
    const h = fresh();
    const keys = h.queueKeys();
    const runner = new WatchedRunner(h.admin);
    const run = await started(h, runner, 'changed');
    await h.admin.hset(keys.task(run.id), FIELDS.maxRecoveries, '0');
    await lapsed(h, run.id);
    // A lock key of the queue, as an id reused for another unique task would name.
    runner.staleLock = keys.lock('Lapsing.single', 'another');

    runner.staleReads = 5;
    await expect(recoverLapsed(runner, keys, as('rescuer'), [run.id])).rejects.toBeInstanceOf(UnexpectedReplyError);
    expect(runner.recoverCalls).toBe(5);
    expect(await h.field(run.id, 'state')).toBe('STARTED');
    expect(await h.admin.get(run.lock)).toBe(run.id);

    runner.recoverCalls = 0;
    runner.staleReads = 1;
    expect((await recoverLapsed(runner, keys, as('rescuer'), [run.id])).outcomes).toEqual([{ id: run.id, outcome: 'failed' }]);
    expect(runner.recoverCalls).toBe(2);
    expect(await h.admin.exists(run.lock)).toBe(0);
  });

  it('refuses a call whose KEYS do not name the records of its ids', async () => {
    const h = fresh();
    const keys = h.queueKeys();
    const runner = new ScriptRunner(h.admin);
    await expect(
      runner.run(recover, [keys.wait, keys.active, keys.dead, keys.events, keys.task('b')], [keys.base, 'w', 1000, TTL, 0, 'a', '0']),
    ).rejects.toThrow(/KEYS\[5\] is not the record of task a/);
  });
});
