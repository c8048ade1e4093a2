// Purging a queue (issue 11, point 3): Inspector.purge() through purge-3.lua, and `heimdall purge`.
// Purged tasks end in a state Redis holds (REVOKED 'purged', their unique locks released, their
// waiters told); a running task, delayed tasks (without --delayed) and a stale wait entry of a
// delayed task are left alone; a long queue goes in bounded batches.
import { describe, expect, it } from 'vitest';
import { Inspector, Task, TaskRevokedError } from 'heimdall-tasks';
import { gate, topology, useHarness, waitFor, type Gate } from '../helpers.js';
import { runHeimdall as heimdall } from '../fixtures/cli/heimdall.js';

let held: Gate = gate();

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
}

describe('purge', () => {
  const fresh = useHarness('purge');

  // The case hands the CLI the harness's one-server URL: it runs on a single server (npm test).
  it.skipIf(topology().kind !== 'single')('heimdall purge revokes the waiting tasks (reason purged, locks released), leaves running and delayed ones; --delayed takes those too', { timeout: 60_000 }, async () => {
    const h = fresh();
    held = gate();
    const env = { REDIS_URL: h.url, HEIMDALL_PREFIX: h.prefix };
    const d = h.dispatcher();
    const worker = h.worker({ services: [new Purgeable()], queues: ['purge-q'], concurrency: 1 });
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
});
