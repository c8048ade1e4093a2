/**
 * The run-token contract of the scripts, driven directly (as a worker would, but one step at a
 * time, so the interleavings that are rare under real workers happen on purpose):
 *  - a finish sent again after the task was started anew answers what it stored and changes
 *    nothing (a retry is never counted twice, a newer run never touched);
 *  - a revoke that lands between the fetch that started a run and the admission or hand-back
 *    of that run ends the task REVOKED instead of putting it back to run later;
 *  - a reclaim after a lost reply hands back only the runs of its worker that the worker does not
 *    know, reading again a lock that changed between its reads and its call.
 */
import { fetchStarting } from '../fetch-starting.js';
import { describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { QueueKeys } from '../../src/core/protocol/queue-keys.js';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { admit, decline, fetch, readFetchReply, reclaim, type EndOutcome, type Verdict } from '../../src/core/protocol/scripts.js';
import type { LuaScript } from '../../src/redis-scripts/scripts.generated.js';
import { FIELDS, useHarness, type Harness } from '../helpers.js';

const TTL = 86_400_000;

/** A worker's side of the scripts, by hand, through the protocol layer. */
function scripts(h: Harness, admin: Redis) {
  const keys = new QueueKeys(h.prefix, 'default');
  const runner = new ScriptRunner(admin);
  const as = (workerId: string) => ({ workerId, leaseMs: 30_000, resultExpiresMs: TTL, eventsCap: 0 });
  return {
    keys,
    /** Starts up to `want` tasks as `worker`; returns [id, token] of each. */
    async fetch(worker: string, want = 1): Promise<[string, string][]> {
      const reply = await fetchStarting(runner, keys, as(worker), want);
      return reply.started.map((r) => [r.id, r.token]);
    },
    /** Sends one end as `worker` (starting nothing); returns what became of it. */
    async finish(worker: string, id: string, token: string, state: 'SUCCESS' | 'FAILURE' | 'RETRY', retryDelayMs = 0): Promise<EndOutcome | undefined> {
      const end = { id, token, state, field: 'e' as const, value: JSON.stringify({ name: 'Error', message: 'boom' }), expireMs: TTL, retryDelayMs, deadReason: '' };
      const reply = readFetchReply(await fetch(runner, keys, as(worker), 0, [end]), 1);
      return reply.outcomes[0];
    },
    decline: (worker: string, id: string, token: string): Promise<Verdict> => decline(runner, keys, as(worker), { id, token }, 60_000, 'no such task'),
    admit: (worker: string, id: string, token: string, lockKey: string): Promise<Verdict> =>
      admit(runner, keys, as(worker), { id, token }, { lock: { key: lockKey, ttlMs: 60_000, waitForExpiry: false }, rate: undefined }),
  };
}

describe('run tokens in the scripts', () => {
  const fresh = useHarness('run-scripts');

  it('a RETRY finish sent again after the task started anew answers RETRY and changes nothing', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    const r = await h.dispatcher().send('Anywhere.task', [1]);
    const [[id, first]] = (await s.fetch('W')) as [[string, string]];
    expect(id).toBe(r.id);
    expect(await s.finish('W', id, first, 'RETRY', 0)).toEqual({ kind: 'stored', state: 'RETRY' });
    // Due at once: the same worker starts it again, under a new token.
    const [[again, second]] = (await s.fetch('W')) as [[string, string]];
    expect(again).toBe(id);
    expect(second).not.toBe(first);
    // The first finish again, as ioredis re-sends it after a lost reply.
    expect(await s.finish('W', id, first, 'RETRY', 0)).toEqual({ kind: 'stored', state: 'RETRY' });
    expect(await h.admin.hmget(h.taskKey(id), FIELDS.state, FIELDS.retries, FIELDS.token, FIELDS.attempts)).toEqual(['STARTED', '1', second, '2']);
    expect(await h.admin.zscore(s.keys.active, id)).not.toBeNull();
    expect(await h.admin.zscore(s.keys.delayed, id)).toBeNull();
    // The current run's own end is stored as usual.
    expect(await s.finish('W', id, second, 'FAILURE')).toEqual({ kind: 'stored', state: 'FAILURE' });
    expect(await r.status()).toBe('FAILURE');
  });

  it('an end of an older run is refused as STALE with the state Redis holds, whichever worker sends it', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    await h.dispatcher().send('Anywhere.task', [2]);
    const [[id, token]] = (await s.fetch('A')) as [[string, string]];
    expect(await s.finish('B', id, token, 'SUCCESS')).toEqual({ kind: 'stale', state: 'STARTED' });
    expect(await s.finish('A', id, `${token}x`, 'SUCCESS')).toEqual({ kind: 'stale', state: 'STARTED' });
    expect(await h.field(id, 'state')).toBe('STARTED');
  });

  it('a revoke between the fetch and a hand-back ends the task REVOKED; it is not put back to run later', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    const r = await h.dispatcher().send('Nobody.runs', [3]);
    const [[id, token]] = (await s.fetch('old')) as [[string, string]];
    expect(await r.revoke()).toBe('STARTED');
    expect(await s.decline('old', id, token)).toEqual({ verdict: 'REVOKED', reason: 'revoked' });
    expect(await r.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'revoked', attempts: 0 });
    for (const place of [s.keys.delayed, s.keys.active]) expect(await h.admin.zscore(place, id)).toBeNull();
    expect(await h.admin.lpos(s.keys.wait, id)).toBeNull();
  });

  it('a revoke between the fetch and an admission ends the task REVOKED; it does not run', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    const r = await h.dispatcher().send('Somebody.runs', [4]);
    const [[id, token]] = (await s.fetch('new')) as [[string, string]];
    expect(await r.revoke()).toBe('STARTED');
    const lockKey = `${s.keys.base}lock:Somebody.runs:k`;
    expect(await s.admit('new', id, token, lockKey)).toEqual({ verdict: 'REVOKED', reason: 'revoked' });
    expect(await r.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'revoked', attempts: 0 });
    expect(await h.admin.zscore(s.keys.active, id)).toBeNull();
    expect(await h.admin.exists(lockKey)).toBe(0);
  });

  it('admission and hand-back of a run that is not current answer STALE and change nothing', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    await h.dispatcher().send('Anywhere.task', [5]);
    const [[id, token]] = (await s.fetch('A')) as [[string, string]];
    expect(await s.decline('A', id, `${token}x`)).toEqual({ verdict: 'STALE', state: 'STARTED' });
    expect(await s.admit('B', id, token, `${s.keys.base}lock:x`)).toEqual({ verdict: 'STALE', state: 'STARTED' });
    expect(await h.admin.hmget(h.taskKey(id), FIELDS.state, FIELDS.token)).toEqual(['STARTED', token]);
    expect(await h.admin.zscore(s.keys.active, id)).not.toBeNull();
  });

  it('a reclaim hands back only the runs of its worker it does not know, the attempt taken back; a lock that changed after the read is read again', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    const d = h.dispatcher();
    for (let i = 0; i < 4; i++) await d.send('Anywhere.task', [i]);
    const mine = await s.fetch('W', 3);
    const [[other]] = (await s.fetch('X')) as [[string, string]];
    const [[known, knownToken], [lost], [locked]] = mine as [[string, string], [string, string], [string, string]];
    // One of the runs it does not know holds a unique lock.
    const lockKey = `${s.keys.base}lock:Anywhere.task:k`;
    await h.admin.hset(h.taskKey(locked), FIELDS.lockKey, lockKey, FIELDS.lockTtl, '60000');
    await h.admin.set(lockKey, locked);
    // Its first read gives another lock than the one the record names (as an id reused meanwhile would).
    let calls = 0;
    let stale = 1;
    const runner = new (class extends ScriptRunner {
      override async run<T>(script: LuaScript, keys: readonly string[], args: readonly (string | number)[]): Promise<T> {
        if (script.name === 'reclaim') calls++;
        return super.run<T>(script, keys, args);
      }
      override async fields(key: string, fields: readonly string[]): Promise<(string | null)[]> {
        const read = await super.fields(key, fields);
        if (key === h.taskKey(locked) && stale-- > 0) read[fields.indexOf(FIELDS.lockKey)] = `${s.keys.base}lock:Anywhere.task:other`;
        return read;
      }
    })(h.admin);

    const worker = { workerId: 'W', leaseMs: 30_000, resultExpiresMs: TTL, eventsCap: 0 };
    expect(await reclaim(runner, s.keys, worker, [{ id: known, token: knownToken }])).toEqual({ count: 2, problem: '' });
    expect(calls).toBe(2);
    for (const id of [lost, locked]) {
      expect(await h.admin.hmget(h.taskKey(id), FIELDS.state, FIELDS.attempts)).toEqual(['PENDING', '0']);
      expect(await h.admin.zscore(s.keys.active, id)).toBeNull();
      expect(await h.admin.lpos(s.keys.wait, id)).not.toBeNull();
    }
    expect(await h.admin.get(lockKey)).toBe(locked);
    // The run it knows, and another worker's, are left alone.
    for (const id of [known, other]) {
      expect(await h.field(id, 'state')).toBe('STARTED');
      expect(await h.admin.zscore(s.keys.active, id)).not.toBeNull();
    }
    // Nothing left to hand back: no script call at all.
    expect(await reclaim(runner, s.keys, worker, [{ id: known, token: knownToken }])).toEqual({ count: 0, problem: '' });
    expect(calls).toBe(2);
  });

  it('a reclaim leaves a run that moved on between its reads and its call: recovered and started again, by another worker or under another token, or its lease renewed', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    const d = h.dispatcher();
    for (let i = 0; i < 3; i++) await d.send('Anywhere.task', [i]);
    const [[elsewhere], [retoken], [renewed]] = (await s.fetch('W', 3)) as [[string, string], [string, string], [string, string]];
    // Just before the script runs: a run is recovered and started by another worker, another
    // started again by this one (a run it knows), the lease of the third is moved.
    const runner = new (class extends ScriptRunner {
      override async run<T>(script: LuaScript, keys: readonly string[], args: readonly (string | number)[]): Promise<T> {
        if (script.name === 'reclaim') {
          await h.admin.hset(h.taskKey(elsewhere), FIELDS.worker, 'X', FIELDS.token, 'a-later-run');
          await h.admin.hset(h.taskKey(retoken), FIELDS.token, 'a-known-run');
          await h.admin.zadd(s.keys.active, 'XX', Date.now() + 3_600_000, renewed);
        }
        return super.run<T>(script, keys, args);
      }
    })(h.admin);
    const worker = { workerId: 'W', leaseMs: 30_000, resultExpiresMs: TTL, eventsCap: 0 };
    expect(await reclaim(runner, s.keys, worker, [{ id: retoken, token: 'a-known-run' }])).toEqual({ count: 0, problem: '' });
    for (const id of [elsewhere, retoken, renewed]) {
      expect(await h.field(id, 'state')).toBe('STARTED');
      expect(await h.admin.zscore(s.keys.active, id)).not.toBeNull();
      expect(await h.admin.lpos(s.keys.wait, id)).toBeNull();
    }
  });
});
