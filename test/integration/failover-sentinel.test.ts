// Issue 12, point 4 (b): the Sentinel master is killed (SIGKILL) while a worker at concurrency
// 20 runs tasks and dispatches go on; the sentinels promote the replica, and the ioredis
// connections (Sentinel options) find it. What docs/guarantees.md promises is checked task by
// task from the records Redis holds afterwards, and what was repeated or lost is reported.
// Run by `npm run test:sentinel` (vitest.sentinel.config.ts) on a Sentinel setup of its own.
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { useDeployment } from '../fixtures/local-deployment.js';
import { Dispatcher, Worker } from 'heimdall-tasks';
import { ask, startSentinel } from '../../scripts/redis-deployments.mjs';
import { newPrefix, recordEvents, reportFigures, waitFor } from '../helpers.js';
import { account, allUnavailable, dispatchFailures, dispatchLoop, errorSummary, FailoverWork, pingUntilAnswered, runs, settled, untilPromotedThen, watchReclaims, type Dispatched } from './failover-load.js';

describe('the Sentinel master killed under load', () => {
  const sentinel = useDeployment(() => startSentinel({ log: () => undefined }));

  it('the replica is promoted; accepted tasks end SUCCESS at least once, losses only of writes the replica lacked', { timeout: 150_000 }, async () => {
    const s = sentinel();
    const prefix = newPrefix('failover-sentinel');
    const connection = { sentinels: s.sentinels, name: s.name };
    // Follows the master through the sentinels, as the library's connections do.
    const admin = new Redis({ ...connection, connectionName: `admin-${prefix}` });
    // Refused connections while the master is down are expected; ioredis would print them.
    admin.on('error', () => undefined);
    const reclaims = watchReclaims();
    let worker: Worker | undefined;
    let dispatcher: Dispatcher | undefined;
    try {
      const queue = 'fo-sentinel';
      worker = new Worker({ connection, prefix, services: [new FailoverWork()], queues: [queue], concurrency: 20, leaseDuration: 3 });
      const events = recordEvents(worker);
      dispatcher = new Dispatcher({ connection, prefix });
      await worker.start();

      const sent: Dispatched[] = [];
      await dispatchLoop(dispatcher, queue, 's0', (n) => n < 240, sent);
      await waitFor(() => events.started.length >= 40, { timeout: 30_000, what: '40 tasks to have started' });

      const reconnectsBefore = reclaims.hooks();
      const killedAt = Date.now();
      await s.kill(s.master.port);
      // Four request handlers sending side by side during the promotion, then 50 more each.
      let promotedAt = 0;
      const during = Promise.all(['s1', 's2', 's3', 's4'].map((label) => dispatchLoop(dispatcher!, queue, label, untilPromotedThen(() => promotedAt > 0), sent)));
      // Promoted: the replica says it is a master, and a sentinel names it.
      await waitFor(
        async () =>
          (await ask(s.replica.port, 'INFO replication')).includes('role:master') &&
          (await ask(s.sentinels[0]!.port, `SENTINEL get-master-addr-by-name ${s.name}`)).includes(String(s.replica.port)),
        { timeout: 30_000, interval: 50, what: `the replica on port ${s.replica.port} to be promoted` },
      );
      promotedAt = Date.now();
      await during;
      await settled(admin, prefix, [queue], worker, 60_000);
      // (asked until it answers, within 15 s: the worker's subscriber reconnects, and subscribes
      // again, on its own time)
      const pong = await pingUntilAnswered(dispatcher, [queue]);

      const a = await account(admin, prefix, sent);
      const failures = dispatchFailures(sent);
      reportFigures('sentinel failover', {
        tasks: sent.length,
        accepted: a.accepted,
        once: a.once,
        repeated: a.repeated.length,
        lost: a.lost.length,
        stuck: a.stuck.length,
        failedDispatches: failures.length,
        dispatchErrors: JSON.stringify(a.dispatchErrors),
        failedButEnqueued: a.failedButEnqueued.length,
        promotionMs: promotedAt - killedAt,
        reconnectHooks: reclaims.hooks() - reconnectsBefore,
        reclaimsAfterKill: reclaims.reclaimed.filter((t) => t > killedAt).length,
      });
      if (a.repeated.length > 0) console.info('[figures] repeated:', JSON.stringify(a.repeated.map((r) => ({ ...r, at: r.at - killedAt }))));
      if (a.lost.length > 0) console.info('[figures] lost (accepted at ms from the kill):', JSON.stringify(a.lost.map((r) => ({ ...r, at: r.at - killedAt }))));
      console.info('[figures] worker errors:', errorSummary(events.errors));
      for (const e of failures.slice(0, 3)) console.info('[figures] a failed dispatch:', String(e).slice(0, 300));

      expect(a.stuck).toEqual([]);
      expect(a.lost.filter((l) => l.sentAt > killedAt)).toEqual([]);
      expect(allUnavailable(failures), `dispatch errors: ${failures.map(String).join('; ')}`).toBe(true);
      expect(sent.filter((d) => d.at > promotedAt + 5000 && !d.accepted)).toEqual([]);
      // A Redis client emits 'ready' on reconnecting to the new master: the worker reclaimed.
      expect(reclaims.hooks()).toBeGreaterThan(reconnectsBefore);
      expect(reclaims.reclaimed.filter((t) => t > killedAt).length).toBeGreaterThan(0);
      expect(pong.map((p) => p.id)).toEqual([worker.id]);
    } finally {
      reclaims.restore();
      await worker?.close({ timeout: 5 });
      await dispatcher?.close();
      admin.disconnect();
      runs.clear();
    }
  });
});
