// The real local deployments of scripts/redis-deployments.mjs (issue 12, point 3, first part):
// a Redis Cluster of three masters with a replica each, made with redis-cli --cluster create, and
// a Sentinel setup (a master, a replica, three sentinels); a round trip of tasks through each,
// and no process left running after stop(). Failover is not tested here yet.
import { once } from 'node:events';
import { createRequire } from 'node:module';
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher, Task, Worker } from 'heimdall-tasks';
import { ask, startCluster, startSentinel } from '../../scripts/redis-deployments.mjs';
import { newPrefix } from '../helpers.js';

class Deployed {
  @Task()
  async double(n: number): Promise<number> {
    return n * 2;
  }
}

const calculateSlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string) => number;
const QUEUES = ['dep-a', 'dep-b', 'dep-c', 'dep-d', 'dep-e', 'dep-f'];

/** Whether a process is still running (signal 0 tests without sending). */
function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('a Redis Cluster of three masters with a replica each', () => {
  let cluster: Awaited<ReturnType<typeof startCluster>> | undefined;
  beforeAll(async () => {
    cluster = await startCluster({ log: () => undefined });
  }, 60_000);
  afterAll(async () => {
    const pids = cluster?.pids ?? [];
    await cluster?.stop();
    expect(pids.filter(running), 'cluster nodes left running after stop()').toEqual([]);
  });

  it('has three masters and three replicas, every slot covered, and runs tasks on queues of every master', { timeout: 60_000 }, async () => {
    const c = cluster!;
    const roles = await Promise.all(c.nodes.map((n) => c.nodeFor(n.port)));
    expect(roles.filter((r) => r === 'master')).toHaveLength(3);
    expect(roles.filter((r) => r === 'replica')).toHaveLength(3);
    const info = await ask(c.nodes[0]!.port, 'CLUSTER INFO');
    expect(info).toContain('cluster_slots_assigned:16384');
    expect(info).toContain('cluster_size:3');

    const client = new Cluster(c.seeds);
    const prefix = newPrefix('deployed');
    const worker = new Worker({ connection: client, prefix, services: [new Deployed()], queues: QUEUES });
    const dispatcher = new Dispatcher({ connection: client, prefix });
    try {
      await worker.start();
      // The queues' slots fall on more than one master.
      const owners = new Set<string>();
      const shards = await client.cluster('SLOTS');
      for (const q of QUEUES) {
        const slot = calculateSlot(`{${q}}`);
        const owner = shards.find(([lo, hi]) => slot >= lo && slot <= hi);
        owners.add(String(owner?.[2]?.[1]));
      }
      expect(owners.size).toBeGreaterThan(1);
      const sent = await Promise.all(QUEUES.map((queue, i) => dispatcher.tasks(Deployed).double.applyAsync([i], { queue })));
      expect(await Promise.all(sent.map((r) => r.get({ timeout: 20 })))).toEqual(QUEUES.map((_, i) => i * 2));
    } finally {
      await worker.close();
      await dispatcher.close();
      await client.quit();
    }
  });

  it('a worker and a dispatcher start on Cluster clients that have not loaded the slots yet, while their replica seeds count as masters', { timeout: 60_000 }, async () => {
    // Until it has the slots, a Cluster client takes every seed for a master, replicas too, and
    // drops the replicas once it knows better, failing what it had sent them ("Connection is
    // closed"): the scripts must not be loaded on them (ScriptRunner waits for the INFO first).
    const c = cluster!;
    const prefix = newPrefix('deployed-early');
    const early = async (): Promise<Cluster> => {
      const client = new Cluster(c.seeds);
      // Its refreshes may fail once the deployment stops after the test; not the subject here.
      client.on('error', () => undefined);
      await once(client, '+node');
      expect(client.status).not.toBe('ready');
      return client;
    };
    const workerClient = await early();
    const worker = new Worker({ connection: workerClient, prefix, services: [new Deployed()], queues: QUEUES });
    await worker.start();
    const dispatcherClient = await early();
    const dispatcher = new Dispatcher({ connection: dispatcherClient, prefix });
    try {
      const sent = await Promise.all(QUEUES.map((queue, i) => dispatcher.tasks(Deployed).double.applyAsync([i], { queue })));
      expect(await Promise.all(sent.map((r) => r.get({ timeout: 20 })))).toEqual(QUEUES.map((_, i) => i * 2));
    } finally {
      await worker.close();
      await dispatcher.close();
      await workerClient.quit();
      await dispatcherClient.quit();
    }
  });
});

describe('a Sentinel setup: a master, a replica, three sentinels', () => {
  let sentinel: Awaited<ReturnType<typeof startSentinel>> | undefined;
  beforeAll(async () => {
    sentinel = await startSentinel({ log: () => undefined });
  }, 60_000);
  afterAll(async () => {
    const pids = sentinel?.pids ?? [];
    await sentinel?.stop();
    expect(pids.filter(running), 'sentinel processes left running after stop()').toEqual([]);
  });

  it('runs tasks through ioredis Sentinel options (the master found by asking the sentinels)', { timeout: 60_000 }, async () => {
    const s = sentinel!;
    const connection = { sentinels: s.sentinels, name: s.name };
    const prefix = newPrefix('sentinel');
    const worker = new Worker({ connection, prefix, services: [new Deployed()] });
    const dispatcher = new Dispatcher({ connection, prefix });
    try {
      await worker.start();
      const sent = await Promise.all([1, 2, 3].map((n) => dispatcher.tasks(Deployed).double.delay(n)));
      expect(await Promise.all(sent.map((r) => r.get({ timeout: 20 })))).toEqual([2, 4, 6]);
      // The tasks were written to the master and copied to the replica.
      const replica = new Redis(s.replica.url);
      try {
        const key = `${prefix}:{default}:t:${sent[0]!.id}`;
        await expect.poll(() => replica.hget(key, 's'), { timeout: 5000 }).toBe('SUCCESS');
      } finally {
        replica.disconnect();
      }
    } finally {
      await worker.close();
      await dispatcher.close();
    }
  });
});
