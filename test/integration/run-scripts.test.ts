/**
 * The run-token contract of the scripts, driven directly (as a worker would, but one step at a
 * time, so the interleavings that are rare under real workers happen on purpose):
 *  - a finish sent again after the task was started anew answers what it stored and changes
 *    nothing (a retry is never counted twice, a newer run never touched);
 *  - a revoke that lands between the fetch that started a run and the admission or hand-back
 *    of that run ends the task REVOKED instead of putting it back to run later.
 */
import { describe, expect, it } from 'vitest';
import type { Redis } from 'ioredis';
import { QueueKeys } from '../../src/core/queue-keys.js';
import { ScriptRunner } from '../../src/core/script-runner.js';
import { admit, decline, fetch, finish } from '../../src/redis-scripts/scripts.generated.js';
import { useHarness, type Harness } from '../helpers.js';

const LEASE = 30_000;
const TTL = 86_400_000;
type Reply = [(string | number)[], unknown[], unknown[], number, number, string[], string[], string];

/** A worker's side of the scripts, by hand. */
function scripts(h: Harness, admin: Redis) {
  const keys = new QueueKeys(h.prefix, 'default');
  const runner = new ScriptRunner(admin);
  const three = [keys.wait, keys.delayed, keys.active];
  return {
    keys,
    /** Starts up to `want` tasks as `worker`; returns [id, token] of each. */
    async fetch(worker: string, want = 1): Promise<[string, string][]> {
      const [started] = await runner.run<Reply>(fetch, three, [keys.base, worker, LEASE, want, Math.floor(Math.random() * 2 ** 31), TTL]);
      const out: [string, string][] = [];
      for (let i = 0; i < started.length; i += 8) out.push([String(started[i]), String(started[i + 6])]);
      return out;
    },
    /** Sends one finish as `worker`; returns its outcome and detail. */
    async finish(worker: string, id: string, token: string, state: string, retryDelayMs = 0): Promise<string[]> {
      const reply = await runner.run<Reply>(finish, three, [
        keys.base, worker, LEASE, 0, 1, TTL, 1,
        id, token, state, 'e', JSON.stringify({ name: 'Error', message: 'boom' }), TTL, retryDelayMs, '',
      ]);
      return reply[5];
    },
    decline: (worker: string, id: string, token: string) =>
      runner.run<string[]>(decline, [keys.wait, keys.delayed, keys.active, keys.names], [keys.base, worker, id, token, 60_000, TTL, 'no such task', 1]),
    admit: (worker: string, id: string, token: string, lockKey: string) =>
      runner.run<string[]>(admit, [keys.wait, keys.delayed, keys.active], [keys.base, worker, id, token, lockKey, 60_000, '', '', 0, 0, 1, TTL]),
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
    expect(await s.finish('W', id, first, 'RETRY', 0)).toEqual(['RETRY', '']);
    // Due at once: the same worker starts it again, under a new token.
    const [[again, second]] = (await s.fetch('W')) as [[string, string]];
    expect(again).toBe(id);
    expect(second).not.toBe(first);
    // The first finish again, as ioredis re-sends it after a lost reply.
    expect(await s.finish('W', id, first, 'RETRY', 0)).toEqual(['RETRY', '']);
    expect(await h.admin.hmget(h.taskKey(id), 's', 'ry', 'tk', 'at')).toEqual(['STARTED', '1', second, '2']);
    expect(await h.admin.zscore(s.keys.active, id)).not.toBeNull();
    expect(await h.admin.zscore(s.keys.delayed, id)).toBeNull();
    // The current run's own end is stored as usual.
    expect(await s.finish('W', id, second, 'FAILURE')).toEqual(['FAILURE', '']);
    expect(await r.status()).toBe('FAILURE');
  });

  it('an end of an older run is refused as STALE with the state Redis holds, whichever worker sends it', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    await h.dispatcher().send('Anywhere.task', [2]);
    const [[id, token]] = (await s.fetch('A')) as [[string, string]];
    expect(await s.finish('B', id, token, 'SUCCESS')).toEqual(['STALE', 'STARTED']);
    expect(await s.finish('A', id, `${token}x`, 'SUCCESS')).toEqual(['STALE', 'STARTED']);
    expect(await h.admin.hget(h.taskKey(id), 's')).toBe('STARTED');
  });

  it('a revoke between the fetch and a hand-back ends the task REVOKED; it is not put back to run later', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    const r = await h.dispatcher().send('Nobody.runs', [3]);
    const [[id, token]] = (await s.fetch('old')) as [[string, string]];
    expect(await r.revoke()).toBe('STARTED');
    expect(await s.decline('old', id, token)).toEqual(['REVOKED', 'revoked']);
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
    expect(await s.admit('new', id, token, lockKey)).toEqual(['REVOKED', 'revoked']);
    expect(await r.info()).toMatchObject({ state: 'REVOKED', revokeReason: 'revoked', attempts: 0 });
    expect(await h.admin.zscore(s.keys.active, id)).toBeNull();
    expect(await h.admin.exists(lockKey)).toBe(0);
  });

  it('admission and hand-back of a run that is not current answer STALE and change nothing', async () => {
    const h = fresh();
    const s = scripts(h, h.admin);
    await h.dispatcher().send('Anywhere.task', [5]);
    const [[id, token]] = (await s.fetch('A')) as [[string, string]];
    expect(await s.decline('A', id, `${token}x`)).toEqual(['STALE', 'STARTED']);
    expect(await s.admit('B', id, token, `${s.keys.base}lock:x`)).toEqual(['STALE', 'STARTED']);
    expect(await h.admin.hmget(h.taskKey(id), 's', 'tk')).toEqual(['STARTED', token]);
    expect(await h.admin.zscore(s.keys.active, id)).not.toBeNull();
  });
});
