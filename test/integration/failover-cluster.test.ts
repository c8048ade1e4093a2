// Issue 12, point 4 (a): the master that owns a busy queue's slot is killed (SIGKILL) while a
// worker at concurrency 20 runs its tasks and dispatches go on; its replica is promoted. What
// docs/guarantees.md promises is checked task by task from the records Redis holds afterwards,
// and what was repeated or lost is reported with its cause. A queue on another master keeps
// completing tasks meanwhile, and the worker redoes what it does after a reconnect (the reclaim
// of tasks a lost reply may have started) although an ioredis Cluster emits no 'ready' then.
// Run by `npm run test:cluster` (vitest.cluster.config.ts) on a Cluster of its own.
import { createRequire } from 'node:module';
import { Cluster } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { useDeployment } from '../fixtures/local-deployment.js';
import { Dispatcher, Worker } from 'heimdall-tasks';
import { ask, startCluster, type LocalCluster } from '../../scripts/redis-deployments.mjs';
import { newPrefix, recordEvents, reportFigures, waitFor } from '../helpers.js';
import { account, allUnavailable, dispatchFailures, dispatchLoop, errorSummary, FailoverWork, pingUntilAnswered, runs, settled, untilPromotedThen, watchReclaims, type Dispatched } from './failover-load.js';

const calculateSlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string) => number;

/** Port of the master serving `queue`'s slot, from CLUSTER SLOTS. */
async function masterOf(client: Cluster, queue: string): Promise<number> {
  const slot = calculateSlot(`{${queue}}`);
  const shards = await client.cluster('SLOTS');
  const owner = shards.find(([lo, hi]) => slot >= lo && slot <= hi)?.[2];
  if (!owner) throw new Error(`no master serves slot ${slot} of queue ${queue}`);
  return Number(owner[1]);
}

/** Port of the replica of the master on `masterPort`, from CLUSTER NODES as another node sees it. */
async function replicaOf(c: LocalCluster, masterPort: number): Promise<number> {
  // Asked of the first other node that answers (a node killed by an earlier test does not).
  let text = '';
  for (const n of c.nodes) if (n.port !== masterPort && text === '') text = await ask(n.port, 'CLUSTER NODES');
  const lines = text.split('\n');
  const masterId = lines.find((l) => l.includes(`:${masterPort}@`))?.split(' ')[0];
  const replica = lines.find((l) => masterId !== undefined && l.split(' ')[3] === masterId);
  const port = /:(\d+)@/.exec(replica ?? '')?.[1];
  if (!port) throw new Error(`no replica of the master on port ${masterPort} in CLUSTER NODES`);
  return Number(port);
}

describe('a Cluster master killed under load', () => {
  const cluster = useDeployment(() => startCluster({ log: () => undefined }));

  it('its replica is promoted; accepted tasks end SUCCESS at least once, losses only of writes the replica lacked; another master keeps serving', { timeout: 150_000 }, async () => {
    const c = cluster();
    const prefix = newPrefix('failover');
    const workerClient = new Cluster(c.seeds);
    const dispatcherClient = new Cluster(c.seeds);
    const admin = new Cluster(c.seeds);
    // Refused connections while the master is down are expected; ioredis would print them.
    admin.on('error', () => undefined);
    // The runner's hook for a lost connection, and the reclaim it leads to: counted to show the
    // worker redid them after the promotion.
    const reclaims = watchReclaims();
    // Every '-node' of the worker's Cluster: most are connections to the dead master that never
    // connected, which the worker passes over (onConnectionLoss in worker.ts).
    const nodeEnds: number[] = [];
    workerClient.on('-node', () => nodeEnds.push(Date.now()));
    let worker: Worker | undefined;
    let dispatcher: Dispatcher | undefined;
    try {
      await admin.ping();
      const busy = 'fo-busy';
      const busyMaster = await masterOf(admin, busy);
      // A queue whose slot is on another master.
      let other = '';
      for (let i = 0; other === ''; i++) if ((await masterOf(admin, `fo-other-${i}`)) !== busyMaster) other = `fo-other-${i}`;
      const replica = await replicaOf(c, busyMaster);

      // A 3-s lease: tasks whose end the new master lacks are recovered within seconds.
      worker = new Worker({ connection: workerClient, prefix, services: [new FailoverWork()], queues: [busy, other], concurrency: 20, leaseDuration: 3 });
      const events = recordEvents(worker);
      // When each task of the other queue succeeded: the longest pause during the promotion.
      const otherTimes: number[] = [];
      worker.on('succeeded', (e) => {
        if (e.queue === other) otherTimes.push(Date.now());
      });
      dispatcher = new Dispatcher({ connection: dispatcherClient, prefix });
      await worker.start();

      const sent: Dispatched[] = [];
      // Before the kill: 240 tasks on the busy queue, 60 on the other.
      await Promise.all([dispatchLoop(dispatcher, busy, 'b0', (n) => n < 240, sent), dispatchLoop(dispatcher, other, 'o0', (n) => n < 60, sent)]);
      await waitFor(() => events.started.length >= 40, { timeout: 30_000, what: '40 tasks to have started' });

      const reconnectsBefore = reclaims.hooks();
      const killedAt = Date.now();
      await c.kill(busyMaster);
      // Dispatches go on during the promotion and after it (50 more per sender once the replica
      // is master): three request handlers sending to the busy queue side by side, one to the other.
      let promotedAt = 0;
      const otherDone = (): number => events.succeeded.filter((e) => e.queue === other).length;
      const otherAtKill = otherDone();
      const during = Promise.all([
        ...['b1', 'b2', 'b3'].map((label) => dispatchLoop(dispatcher!, busy, label, untilPromotedThen(() => promotedAt > 0), sent)),
        dispatchLoop(dispatcher, other, 'o1', untilPromotedThen(() => promotedAt > 0), sent),
      ]);
      await waitFor(
        async () => (await c.nodeFor(replica)) === 'master' && (await ask(replica, 'CLUSTER INFO')).includes('cluster_state:ok'),
        { timeout: 30_000, interval: 50, what: `the replica on port ${replica} to be promoted` },
      );
      promotedAt = Date.now();
      const otherDuringPromotion = otherDone() - otherAtKill;
      const window = [killedAt, ...otherTimes.filter((t) => t > killedAt && t < promotedAt), promotedAt];
      const otherLongestPauseMs = Math.max(...window.slice(1).map((t, i) => t - window[i]!));
      await during;
      await settled(admin, prefix, [busy, other], worker, 60_000);
      // The subscriber connection came back too: the worker answers a ping on both queues.
      // (asked until it answers, within 15 s: the worker's subscriber reconnects, and subscribes
      // again, on its own time)
      const pong = await pingUntilAnswered(dispatcher, [busy, other]);

      const mine = (queue: string): Dispatched[] => sent.filter((d) => d.queue === queue);
      const busyAccount = await account(admin, prefix, mine(busy));
      const otherAccount = await account(admin, prefix, mine(other));
      const failures = dispatchFailures(sent);
      reportFigures('cluster failover', {
        tasks: sent.length,
        accepted: busyAccount.accepted + otherAccount.accepted,
        busyOnce: busyAccount.once,
        busyRepeated: busyAccount.repeated.length,
        busyLost: busyAccount.lost.length,
        busyStuck: busyAccount.stuck.length,
        otherOnce: otherAccount.once,
        otherRepeated: otherAccount.repeated.length,
        failedDispatches: failures.length,
        dispatchErrors: JSON.stringify({ ...busyAccount.dispatchErrors, ...otherAccount.dispatchErrors }),
        failedButEnqueued: busyAccount.failedButEnqueued.length + otherAccount.failedButEnqueued.length,
        promotionMs: promotedAt - killedAt,
        otherSucceededDuringPromotion: otherDuringPromotion,
        otherLongestPauseMs,
        nodeEventsAfterKill: nodeEnds.filter((t) => t > killedAt).length,
        reconnectHooks: reclaims.hooks() - reconnectsBefore,
        reclaimsAfterKill: reclaims.reclaimed.filter((t) => t > killedAt).length,
      });
      if (busyAccount.repeated.length > 0) console.info('[figures] repeated:', JSON.stringify(busyAccount.repeated.map((r) => ({ ...r, at: r.at - killedAt }))));
      if (busyAccount.lost.length > 0) console.info('[figures] lost (accepted at ms from the kill):', JSON.stringify(busyAccount.lost.map((r) => ({ ...r, at: r.at - killedAt }))));
      console.info('[figures] worker errors:', errorSummary(events.errors));
      for (const e of failures.slice(0, 3)) console.info('[figures] a failed dispatch:', String(e).slice(0, 300));

      // Every accepted task Redis still knows of ended SUCCESS; nothing is left half way.
      expect(busyAccount.stuck).toEqual([]);
      expect(otherAccount.stuck).toEqual([]);
      // A task is lost only if its enqueue reached the old master and not the replica: accepted
      // before the kill (an enqueue answered after it was answered by the new master).
      // (sent after the kill: its enqueue can only have run on the new master)
      expect(busyAccount.lost.filter((l) => l.sentAt > killedAt)).toEqual([]);
      // The other master's queue lost nothing and ran nothing twice.
      expect(otherAccount.lost).toEqual([]);
      expect(otherAccount.repeated).toEqual([]);
      expect(otherAccount.once).toBe(otherAccount.accepted);
      // It completed tasks between the kill and the promotion.
      expect(otherDuringPromotion).toBeGreaterThan(0);
      // Dispatches during the promotion wait for the new master (the Dispatcher's
      // failoverTimeout, 15 s by default, covers a promotion of about 4 s): none fails.
      expect(failures.map(String), 'dispatches that failed during the promotion').toEqual([]);
      // Dispatches after the promotion were accepted and ran.
      expect(sent.filter((d) => d.at > promotedAt + 5000 && !d.accepted)).toEqual([]);
      // The worker noticed the lost node and reclaimed after it: the hook an ioredis Cluster
      // never calls through 'ready'.
      expect(reclaims.hooks()).toBeGreaterThan(reconnectsBefore);
      // Only ends of connections that had connected count: the killed master's, not the tens of
      // connections to it that slot refreshes made and that never connected (before, each of
      // those called the hook of both runners: 104 calls for 52 '-node' events in one run).
      expect(reclaims.hooks() - reconnectsBefore, "hook calls for the Cluster's '-node' events").toBeLessThanOrEqual(8);
      expect(reclaims.reclaimed.filter((t) => t > killedAt).length).toBeGreaterThan(0);
      expect(pong.map((p) => p.id)).toEqual([worker.id]);
    } finally {
      reclaims.restore();
      await worker?.close({ timeout: 5 });
      await dispatcher?.close();
      for (const client of [workerClient, dispatcherClient, admin]) client.disconnect();
      runs.clear();
    }
  });

  // What guarantees.md says a failover costs when the replica lags, made to happen: the replica
  // is stopped (SIGSTOP) and its link dropped while tasks are dispatched, started and ended, the
  // master is killed, and the replica resumed and promoted without the writes it missed.
  it('a replica that lags: the writes it missed are lost (tasks dispatched then) or redone (tasks started or ended then), and nothing else', { timeout: 150_000 }, async () => {
    const c = cluster();
    const prefix = newPrefix('failover-lag');
    const workerClient = new Cluster(c.seeds);
    const dispatcherClient = new Cluster(c.seeds);
    const admin = new Cluster(c.seeds);
    admin.on('error', () => undefined);
    let worker: Worker | undefined;
    let dispatcher: Dispatcher | undefined;
    let stoppedPid: number | undefined;
    try {
      await admin.ping();
      // A queue on a master that still has a replica (the test above used one up).
      let queue = '';
      let master = 0;
      let replica = 0;
      for (let i = 0; queue === ''; i++) {
        if (i === 500) throw new Error('no queue name found on a master that has a replica');
        const candidate = `fo-lag-${i}`;
        const port = await masterOf(admin, candidate);
        const r = await replicaOf(c, port).catch(() => 0);
        if (r !== 0 && (await c.nodeFor(r)) === 'replica') [queue, master, replica] = [candidate, port, r];
      }
      const replicaPid = c.pids[c.nodes.findIndex((n) => n.port === replica)]!;
      worker = new Worker({ connection: workerClient, prefix, services: [new FailoverWork()], queues: [queue], concurrency: 20, leaseDuration: 3 });
      const events = recordEvents(worker);
      dispatcher = new Dispatcher({ connection: dispatcherClient, prefix });
      await worker.start();

      const sent: Dispatched[] = [];
      await dispatchLoop(dispatcher, queue, 'l0', (n) => n < 200, sent);
      await waitFor(() => events.started.length >= 40, { timeout: 30_000, what: '40 tasks to have started' });
      // Stopped while two senders go on: what the master acknowledges now, the replica lacks.
      let phase: 'lagging' | 'failing' | 'promoted' = 'lagging';
      let after = 0;
      const more = (): ((n: number) => boolean) => {
        let from = -1;
        return (n) => {
          if (phase !== 'promoted') return n < 2000;
          if (from < 0) from = n;
          return n < from + 50;
        };
      };
      // Stopped, then cut off: the master drops the replica's link, so what it writes from now on
      // stays in its own backlog (what it had written before is in the stopped replica's socket,
      // and read when it resumes); the stopped replica cannot reconnect to ask for it.
      process.kill(replicaPid, 'SIGSTOP');
      stoppedPid = replicaPid;
      await waitFor(async () => (await ask(master, 'CLIENT KILL TYPE replica')).startsWith(':1'), { what: 'the master to drop its replica link' });
      const stoppedAt = Date.now();
      const startedAtStop = events.started.length;
      const succeededAtStop = events.succeeded.length;
      const during = Promise.all(['l1', 'l2'].map((label) => dispatchLoop(dispatcher!, queue, label, more(), sent)));
      await waitFor(() => sent.filter((d) => d.at > stoppedAt && d.accepted).length >= 30 && events.succeeded.length >= succeededAtStop + 30, {
        timeout: 30_000,
        what: '30 tasks accepted and 30 ended while the replica is stopped',
      });
      const killedAt = Date.now();
      await c.kill(master);
      process.kill(replicaPid, 'SIGCONT');
      stoppedPid = undefined;
      phase = 'failing';
      await waitFor(
        async () => (await c.nodeFor(replica)) === 'master' && (await ask(replica, 'CLUSTER INFO')).includes('cluster_state:ok'),
        { timeout: 60_000, interval: 50, what: `the lagging replica on port ${replica} to be promoted` },
      );
      const promotedAt = Date.now();
      phase = 'promoted';
      after = sent.length;
      await during;
      // Tasks whose end was lost wait for their lease (3 s) to lapse before they are recovered.
      await settled(admin, prefix, [queue], worker, 90_000);

      const a = await account(admin, prefix, sent);
      const stale = events.errors.filter((e) => e.name === 'StaleRunError').length;
      reportFigures('cluster failover, replica lagging', {
        tasks: sent.length,
        accepted: a.accepted,
        once: a.once,
        repeated: a.repeated.length,
        recovered: a.repeated.filter((r) => r.why === 'recovered').length,
        putBack: a.repeated.filter((r) => r.why === 'put back').length,
        lost: a.lost.length,
        lostThatRan: a.lost.filter((l) => l.runs > 0).length,
        stuck: a.stuck.length,
        failedDispatches: a.failedDispatches,
        dispatchErrors: JSON.stringify(a.dispatchErrors),
        staleEnds: stale,
        lagMs: killedAt - stoppedAt,
        startedWhileLagging: events.started.length - startedAtStop,
        promotionMs: promotedAt - killedAt,
        sentAfterPromotion: sent.length - after,
      });
      if (a.lost.length > 0) console.info('[figures] lost, accepted at ms from the stop:', a.lost.map((l) => l.at - stoppedAt).join(' '));

      // The writes the replica missed are those of the lag: a task accepted before it stopped,
      // or after the promotion, is neither lost nor run twice; every surviving task ends SUCCESS.
      expect(a.stuck).toEqual([]);
      // (answered before the stop, or sent after the promotion: its enqueue ran outside the window)
      expect(a.lost.filter((l) => l.at < stoppedAt || l.sentAt > promotedAt)).toEqual([]);
      expect(a.lost.length, 'tasks accepted while the replica was stopped are lost').toBeGreaterThan(0);
      expect(a.repeated.length, 'tasks started or ended while the replica was stopped run again').toBeGreaterThan(0);
      expect(allUnavailable(dispatchFailures(sent))).toBe(true);
    } finally {
      if (stoppedPid !== undefined) process.kill(stoppedPid, 'SIGCONT');
      await worker?.close({ timeout: 5 });
      await dispatcher?.close();
      for (const client of [workerClient, dispatcherClient, admin]) client.disconnect();
      runs.clear();
    }
  });
});
