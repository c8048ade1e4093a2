// Dispatches made while a Redis Cluster promotes a replica: they wait for the new master (the
// Dispatcher's failoverTimeout) instead of failing, and every task they sent runs once. The
// master owning the queue's slot is SIGKILLed; a dispatcher with failoverTimeout 0 sends beside
// the default one, to show what the wait saves (reported, not asserted: how many calls ioredis's
// own retries carry through varies from run to run).
import { createRequire } from 'node:module';
import { Cluster } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { useDeployment } from '../fixtures/local-deployment.js';
import { Dispatcher, RedisUnavailableError, Task, Worker, type TaskResult } from 'heimdall-tasks';
import { ask, startCluster } from '../../scripts/redis-deployments.mjs';
import { newPrefix, reportFigures, waitFor } from '../helpers.js';

const calculateSlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string) => number;

const runs = new Map<number, number>();
class Counted {
  @Task()
  async mark(n: number): Promise<number> {
    runs.set(n, (runs.get(n) ?? 0) + 1);
    return n;
  }
}

/** The master serving `slot` and its replica, from CLUSTER NODES as one live node sees it. */
async function ownerOf(port: number, slot: number): Promise<{ master: number; replica: number }> {
  // The raw reply: a bulk string, one node per line.
  const lines = (await ask(port, 'CLUSTER NODES')).split(/\r?\n/).filter((l) => l.split(' ').length >= 8);
  const nodes = lines.map((l) => l.split(' '));
  const master = nodes.find((f) => f[2]!.includes('master') && f.slice(8).some((r) => {
    const [lo, hi] = r.split('-').map(Number);
    return slot >= lo! && slot <= (hi ?? lo!);
  }));
  if (!master) throw new Error(`no master serves slot ${slot}:\n${lines.join('\n')}`);
  const replica = nodes.find((f) => f[3] === master[0]);
  if (!replica) throw new Error(`the master of slot ${slot} has no replica:\n${lines.join('\n')}`);
  const portOf = (f: string[]): number => Number(/:(\d+)@/.exec(f[1]!)![1]);
  return { master: portOf(master), replica: portOf(replica) };
}

describe('a dispatch during a Cluster failover', () => {
  const deployment = useDeployment(() => startCluster({ log: () => undefined }));

  it('waits for the promoted replica (failoverTimeout), and every task it sent ends (runs once, but for what the replica had not received)', { timeout: 90_000 }, async () => {
    const cluster = deployment();
    const prefix = newPrefix('failover');
    const queue = 'busy';
    const url = `redis+cluster://${cluster.seeds.map((s) => `${s.host}:${s.port}`).join(',')}`;
    const worker = new Worker({ connection: { cluster: cluster.seeds }, prefix, services: [new Counted()], queues: [queue], concurrency: 20 });
    const waiting = new Dispatcher({ connection: url, prefix });
    const impatient = new Dispatcher({ connection: url, prefix, failoverTimeout: 0 });
    const workerErrors: string[] = [];
    worker.on('error', (e) => workerErrors.push(e.message));
    try {
      await worker.start();
      const sent: TaskResult<number>[] = [];
      let n = 0;
      for (; n < 200; n++) sent.push(await waiting.tasks(Counted).mark.applyAsync([n], { queue }));

      const slot = calculateSlot(`{${queue}}`);
      const { master, replica } = await ownerOf(cluster.seeds[0]!.port, slot);
      // How far the replica had caught up when the master was killed: the reason for any loss.
      const offsets = async (port: number, field: string): Promise<string> => new RegExp(`${field}:(\\S+)`).exec(await ask(port, 'INFO replication'))?.[1] ?? '?';
      // The tasks sent so far should reach the replica before the kill: a replica that had not
      // received them (seen at offset 0 with its link up, about one run in five on this machine,
      // on the build before this test waited too) loses them with the master through no doing
      // of the library. Waited for up to 20 s; past that the kill goes on, and the loss is
      // reported below with the offsets.
      const sentUpTo = Number(await offsets(master, 'master_repl_offset'));
      await waitFor(async () => Number(await offsets(replica, 'slave_repl_offset')) >= sentUpTo, {
        timeout: 20_000,
        interval: 50,
        what: `replica ${replica} to reach its master's replication offset ${sentUpTo}`,
      }).catch((err: unknown) => console.info(`[failover] ${String(err)}`));
      const [masterOffset, replicaOffset, replicaLink] = await Promise.all([
        offsets(master, 'master_repl_offset'),
        offsets(replica, 'slave_repl_offset'),
        offsets(replica, 'master_link_status'),
      ]);
      const t0 = Date.now();
      await cluster.kill(master);
      // Both dispatchers send until the replica has been master for 1 s.
      let promotedAt = 0;
      const failedWaiting: unknown[] = [];
      const failedImpatient: unknown[] = [];
      let impatientSent = 0;
      // Ten calls at a time, as a busy producer makes them.
      const send = async (d: Dispatcher, failed: unknown[], count: () => void): Promise<void> => {
        while (promotedAt === 0 || Date.now() - promotedAt < 1000) {
          await Promise.all(
            Array.from({ length: 10 }, async () => {
              const i = n++;
              try {
                sent.push(await d.tasks(Counted).mark.applyAsync([i], { queue }));
                count();
              } catch (err) {
                failed.push(err);
              }
            }),
          );
        }
      };
      const watch = (async () => {
        await waitFor(async () => (await cluster.nodeFor(replica)) === 'master', { timeout: 30_000, interval: 50, what: `replica ${replica} to be promoted` });
        promotedAt = Date.now();
      })();
      await Promise.all([send(waiting, failedWaiting, () => undefined), send(impatient, failedImpatient, () => impatientSent++), watch]);

      reportFigures('dispatch during a Cluster failover', {
        'promotion (ms after the SIGKILL)': promotedAt - t0,
        'tasks sent in all': sent.length,
        'failed, failoverTimeout 15 s (default)': failedWaiting.length,
        'failed, failoverTimeout 0': failedImpatient.length,
        'sent, failoverTimeout 0': impatientSent,
      });
      // The default bound covers the promotion: nothing it sent failed.
      expect(failedWaiting).toEqual([]);
      // What the impatient one could not send is said to be unavailable, not refused.
      for (const err of failedImpatient) expect(err).toBeInstanceOf(RedisUnavailableError);

      // Every accepted task ends. Replication is asynchronous: a send the old master answered
      // (or a start or end it stored) in the last moment before the SIGKILL may not have reached
      // its replica. Such a task has no record on the new master (lost with it: reported, with
      // its reason, as docs/guarantees.md says), or runs again; a task that has a record and
      // never ends would be one the library stranded, and fails the test.
      const admin = new Cluster(cluster.seeds);
      try {
        const settled = await Promise.all(
          sent.map(async (r) => {
            try {
              return { id: r.id, value: await r.get({ timeout: 60 }) };
            } catch (err) {
              return { id: r.id, err, recorded: (await admin.exists(`${prefix}:{${queue}}:t:${r.id}`)) === 1 };
            }
          }),
        );
        const stuck = settled.filter((o) => 'err' in o && o.recorded);
        const lost = settled.filter((o) => 'err' in o && !o.recorded);
        const ids = settled.flatMap((o) => ('value' in o ? [o.value as number] : []));
        const twice = ids.filter((i) => (runs.get(i) ?? 0) > 1);
        reportFigures('tasks of the failover', {
          'master replication offset at the kill': masterOffset,
          'replica replication offset at the kill': replicaOffset,
          'replica link to the master': replicaLink,
          'ended': ids.length,
          'lost with the old master (no record on the new one: not replicated before the kill)': lost.length,
          'ran more than once (an end or start not replicated before the kill)': twice.length,
        });
        expect(stuck.map((o) => o.id), `tasks with a record that never ended; worker errors: ${[...new Set(workerErrors)].slice(0, 5).join(' | ')}`).toEqual([]);
        expect(ids.filter((i) => (runs.get(i) ?? 0) === 0), 'tasks reported ended that never ran').toEqual([]);
        // A task is lost or run again only with writes the replica had not received (their
        // number is reported above with the offsets); none is stranded, and none runs twice
        // unless lost writes say why (a start or end not replicated).
        if (lost.length + twice.length > 0) console.info(`[failover] lost ${lost.length}, ran again ${twice.length}: the replica was at offset ${replicaOffset} of the master's ${masterOffset} (link ${replicaLink})`);
      } finally {
        admin.disconnect();
      }
    } finally {
      await worker.close({ timeout: 10 });
      await Promise.all([waiting.close(), impatient.close()]);
    }
  });
});
