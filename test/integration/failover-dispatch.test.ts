// Dispatches made while a Redis Cluster promotes a replica: they wait for the new master (the
// Dispatcher's failoverTimeout) instead of failing, and every task they sent runs once. The
// master owning the queue's slot is SIGKILLed; a dispatcher with failoverTimeout 0 sends beside
// the default one, to show what the wait saves (reported, not asserted: how many calls ioredis's
// own retries carry through varies from run to run).
import { createRequire } from 'node:module';
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

  it('waits for the promoted replica (failoverTimeout) and every task it sent runs once', { timeout: 90_000 }, async () => {
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

      // Every accepted task ends, and ran once (nothing was lost with the master: a task the
      // dead master had not passed to its replica would be PENDING in no list, and time out here).
      const values = await Promise.all(sent.map((r) => r.get({ timeout: 60 }))).catch((err: unknown) => {
        throw new Error(`${String(err)}\nworker errors: ${[...new Set(workerErrors)].slice(0, 5).join(' | ')}`);
      });
      expect(values.length).toBe(sent.length);
      const ids = values as number[];
      const twice = ids.filter((i) => (runs.get(i) ?? 0) !== 1);
      expect(twice, 'tasks that did not run exactly once').toEqual([]);
    } finally {
      await worker.close({ timeout: 10 });
      await Promise.all([waiting.close(), impatient.close()]);
    }
  });
});
