/**
 * Reservations (prefetch) through the scripts, driven by hand: a fetch whose `handlers` is 0
 * makes every task it starts a reservation (field rs). What becomes of one whose worker dies
 * holding it (recover-4.lua), or hands it back (requeue-3.lua), and when its begin says its
 * handler began (fetch-7.lua's begins).
 */
import { describe, expect, it } from 'vitest';
import { Task } from 'heimdall-tasks';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { fetch, readFetchReply, recoverLapsed, requeue, type StartedRun, type WorkerIdentity } from '../../src/core/protocol/scripts.js';
import { FIELDS, redisNowMs, useHarness, waitFor, type Harness } from '../helpers.js';

class Lapsing {
  /** A worker's death while it runs this fails it (no recovery). */
  @Task({ maxRecoveries: 0 })
  async fragile(n: number): Promise<number> {
    return n;
  }
}

const TTL = 86_400_000;

function as(workerId: string, leaseMs = 30_000): WorkerIdentity {
  return { workerId, leaseMs, resultExpiresMs: TTL, eventsCap: 1000 };
}

/** Reserves the task at the front of the queue for `worker` (a claim, then its start as a reservation), as a worker with no free handler slot does. */
async function reserve(h: Harness, runner: ScriptRunner, worker: WorkerIdentity): Promise<StartedRun> {
  const keys = h.queueKeys();
  const first = readFetchReply(await fetch(runner, keys, worker, 1, [], { handlers: 0 }), 0);
  const claims = first.claims;
  const reply = claims.length > 0 ? readFetchReply(await fetch(runner, keys, worker, 1, [], { claims, handlers: 0 }), 0) : first;
  expect(reply.started).toHaveLength(1);
  expect(reply.started[0]!.reserved).toBe(true);
  return reply.started[0]!;
}

/** Waits until the lease of `id` has lapsed on the Redis clock. */
async function lapsed(h: Harness, id: string): Promise<void> {
  const expiry = Number(await h.admin.zscore(h.queueKey('active'), id));
  await waitFor(async () => (await redisNowMs(h.admin)) > expiry, { what: `the lease of ${id} to lapse` });
}

describe('reservations through the scripts', () => {
  const fresh = useHarness('prefetch-lapses');

  it('a reservation whose worker dies goes back uncounted once; a second lapse counts as a recovery (maxRecoveries 0: WorkerLostError)', async () => {
    const h = fresh();
    const runner = new ScriptRunner(h.admin);
    const sent = await h.dispatcher().tasks(Lapsing).fragile.delay(1);

    const first = await reserve(h, runner, as('ghost-1', 1));
    expect(first.id).toBe(sent.id);
    await lapsed(h, sent.id);
    const one = await recoverLapsed(runner, h.queueKeys(), as('rescuer'), [sent.id]);
    expect(one.outcomes).toEqual([{ id: sent.id, outcome: 'requeued' }]);
    // Back as it was before the reservation: PENDING, its attempt taken back, no recovery; the lapse noted.
    expect(await h.admin.hmget(h.taskKey(sent.id), FIELDS.state, FIELDS.attempts, FIELDS.recoveries, FIELDS.reserved, FIELDS.reservationLapsed)).toEqual([
      'PENDING',
      '0',
      null,
      null,
      '1',
    ]);
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([sent.id]);

    // Reserved again by a worker that dies too (a handler that kills its worker before its begin
    // reaches Redis looks the same): this time it counts, and maxRecoveries 0 ends it.
    await reserve(h, runner, as('ghost-2', 1));
    await lapsed(h, sent.id);
    const two = await recoverLapsed(runner, h.queueKeys(), as('rescuer'), [sent.id]);
    expect(two.outcomes).toEqual([{ id: sent.id, outcome: 'failed' }]);
    const info = await sent.info();
    expect(info.state).toBe('FAILURE');
    expect(info.error?.name).toBe('WorkerLostError');
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([]);
    expect(await h.admin.zcard(h.queueKey('active'))).toBe(0);
  });

  it('a reservation of a task that has retried goes back RETRY, whether its worker dies or hands it back', async () => {
    const h = fresh();
    const runner = new ScriptRunner(h.admin);
    const d = h.dispatcher();
    const dies = await d.tasks(Lapsing).fragile.delay(1);
    // As a retry leaves it: RETRY, one retry and one attempt so far.
    await h.admin.hset(h.taskKey(dies.id), FIELDS.state, 'RETRY', FIELDS.retries, '1', FIELDS.attempts, '1');
    await reserve(h, runner, as('ghost', 1));
    await lapsed(h, dies.id);
    expect((await recoverLapsed(runner, h.queueKeys(), as('rescuer'), [dies.id])).outcomes).toEqual([{ id: dies.id, outcome: 'requeued' }]);
    expect(await h.admin.hmget(h.taskKey(dies.id), FIELDS.state, FIELDS.attempts)).toEqual(['RETRY', '1']);
    expect(await dies.status()).toBe('RETRY');

    // The same task, reserved again and handed back by a closing worker (requeue-3.lua).
    const closing = as('closing');
    const run = await reserve(h, runner, closing);
    expect(await h.admin.hget(h.taskKey(dies.id), FIELDS.attempts)).toBe('2');
    const back = await requeue(runner, h.queueKeys(), closing, [{ id: run.id, token: run.token }]);
    expect(back.count).toBe(1);
    expect(await h.admin.hmget(h.taskKey(dies.id), FIELDS.state, FIELDS.attempts, FIELDS.reserved)).toEqual(['RETRY', '1', null]);
    expect(await h.admin.lrange(h.queueKey('wait'), 0, -1)).toEqual([dies.id]);
  });

  it('a begin of a run no longer current comes back in the reply (staleBegins, with the state Redis holds); a begin sent again is not one', async () => {
    const h = fresh();
    const runner = new ScriptRunner(h.admin);
    const d = h.dispatcher();
    const worker = as('w');
    const revoked = await d.tasks(Lapsing).fragile.delay(1);
    const kept = await d.tasks(Lapsing).fragile.delay(2);
    const first = await reserve(h, runner, worker);
    const second = await reserve(h, runner, worker);
    expect([first.id, second.id]).toEqual([revoked.id, kept.id]);
    // Revoked while reserved: REVOKED at once (its worker would be told on the revoke channel).
    expect(await revoked.revoke()).toBe('REVOKED');
    const at = performance.now();
    const begins = [
      { id: first.id, token: first.token, at },
      { id: second.id, token: second.token, at },
    ];
    const reply = readFetchReply(await fetch(runner, h.queueKeys(), worker, 0, [], { begins }), 0);
    expect(reply.staleBegins).toEqual([{ id: first.id, token: first.token, state: 'REVOKED' }]);
    expect(await kept.status()).toBe('STARTED');
    // The same begin again (its call's reply lost): already stored, not stale.
    const again = readFetchReply(await fetch(runner, h.queueKeys(), worker, 0, [], { begins: [begins[1]!] }), 0);
    expect(again.staleBegins).toEqual([]);
  });

  it("a begin sets startedAt to when the handler began, from the worker's own measure of how long ago", async () => {
    const h = fresh();
    const runner = new ScriptRunner(h.admin);
    const sent = await h.dispatcher().tasks(Lapsing).fragile.delay(1);
    const worker = as('w');
    const run = await reserve(h, runner, worker);
    expect(await sent.status()).toBe('PENDING');
    // The handler began 700 ms before the call that tells Redis.
    const began = performance.now() - 700;
    const before = await redisNowMs(h.admin);
    readFetchReply(await fetch(runner, h.queueKeys(), worker, 0, [], { begins: [{ id: run.id, token: run.token, at: began }] }), 0);
    const after = await redisNowMs(h.admin);
    const info = await sent.info();
    expect(info.state).toBe('STARTED');
    const startedAt = info.startedAt!.getTime();
    expect(startedAt).toBeGreaterThanOrEqual(before - 700 - 5);
    expect(startedAt).toBeLessThanOrEqual(after - 700 + 5);
  });
});
