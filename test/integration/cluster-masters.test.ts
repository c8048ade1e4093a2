// A Redis Cluster of three masters, each holding a third of the slots: queues hash to different
// nodes, so every script must be loaded where its keys live (EVALSHA runs on the node of its
// slot), the registry and pings must work per queue, and the Inspector's SCAN must reach every
// master, also from a Cluster client that has just been made.
import { createRequire } from 'node:module';
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher, Inspector, Task, Worker } from 'heimdall-tasks';
import { startRedis, type LaunchedRedis } from '../../scripts/redis-launcher.mjs';
import { newPrefix, recordEvents, waitFor } from '../helpers.js';

class Spread {
  @Task()
  async add(a: number, b: number): Promise<number> {
    return a + b;
  }
}

// ioredis's own slot function (it ships no types).
const calculateSlot = createRequire(import.meta.url)('cluster-key-slot') as (key: string) => number;

const RANGES: [number, number][] = [
  [0, 5460],
  [5461, 10922],
  [10923, 16383],
];
const QUEUES = Array.from({ length: 9 }, (_, i) => `spread-${i}`);

describe('a three-master Redis Cluster', () => {
  const servers: LaunchedRedis[] = [];

  beforeAll(async () => {
    const shared = process.env.REDIS_URL;
    delete process.env.REDIS_URL;
    try {
      for (let i = 0; i < 3; i++) {
        servers.push(await startRedis({ log: () => undefined, args: ['--cluster-enabled', 'yes', '--cluster-announce-ip', '127.0.0.1'] }));
      }
    } finally {
      if (shared !== undefined) process.env.REDIS_URL = shared;
    }
    const admins = servers.map((s) => new Redis(s.url));
    try {
      for (let i = 0; i < 3; i++) await admins[i]!.call('CLUSTER', 'ADDSLOTSRANGE', String(RANGES[i]![0]), String(RANGES[i]![1]));
      for (let i = 1; i < 3; i++) await admins[i]!.call('CLUSTER', 'MEET', '127.0.0.1', new URL(servers[0]!.url).port);
      for (const a of admins) {
        await waitFor(async () => /cluster_state:ok/.test(String(await a.call('CLUSTER', 'INFO'))) && /cluster_known_nodes:3/.test(String(await a.call('CLUSTER', 'INFO'))), {
          timeout: 20_000,
          what: 'the three-node cluster to be ok',
        });
      }
    } finally {
      for (const a of admins) a.disconnect();
    }
  }, 60_000);
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
  });

  const seeds = (): { host: string; port: number }[] => servers.map((s) => ({ host: '127.0.0.1', port: Number(new URL(s.url).port) }));

  it('tasks on queues of every master run; the worker registry, ping and the Inspector see all of them', { timeout: 60_000 }, async () => {
    const prefix = newPrefix('cluster3');
    // The queues' slots fall on all three masters.
    const owners = new Set(QUEUES.map((q) => RANGES.findIndex(([lo, hi]) => calculateSlot(`{${q}}`) >= lo && calculateSlot(`{${q}}`) <= hi)));
    expect(owners.size).toBe(3);
    const cluster = new Cluster(seeds());
    // A 1.5-s lease: the registry entry is renewed every 0.5 s.
    const worker = new Worker({ connection: cluster, prefix, services: [new Spread()], queues: QUEUES, leaseDuration: '1500ms' });
    const dispatcher = new Dispatcher({ connection: cluster, prefix });
    const events = recordEvents(worker);
    // The queues' event streams live on three masters: one XREAD cannot span them.
    const stream = dispatcher.events({ queues: QUEUES });
    try {
      await worker.start();
      const sent = await Promise.all(QUEUES.map((queue, i) => dispatcher.tasks(Spread).add.applyAsync([i, 100], { queue })));
      expect(await Promise.all(sent.map((r) => r.get({ timeout: 20 })))).toEqual(QUEUES.map((_, i) => i + 100));
      expect(events.errors).toEqual([]);
      const succeeded = new Set<string>();
      const queuedCursor = new Map<string, string>();
      for await (const e of stream) {
        if (e.type === 'queued') queuedCursor.set(e.queue, e.cursor);
        if (e.type === 'succeeded') succeeded.add(e.queue);
        if (succeeded.size === QUEUES.length) break;
      }
      expect([...succeeded].sort()).toEqual([...QUEUES].sort());
      // Read again from just after each queue's queued event: the started and succeeded events
      // carry no name in Redis, and the reader finds it in the task's record on that queue's master.
      const again = dispatcher.events({ queues: QUEUES, since: queuedCursor.get(QUEUES[0]!)! });
      const named = new Map<string, string | undefined>();
      for await (const e of again) {
        if (e.type === 'succeeded') named.set(e.queue, e.name);
        if (named.size === QUEUES.length) break;
      }
      expect([...named.values()]).toEqual(QUEUES.map(() => 'Spread.add'));

      const [w] = await waitFor(async () => {
        const all = await dispatcher.workers({ queues: QUEUES });
        return all.length === 1 && all[0]!.succeeded === QUEUES.length ? all : undefined;
      }, { what: 'the worker in the registry, with its count of tasks' });
      expect(w!.queues).toEqual(QUEUES);
      expect((await dispatcher.ping({ queues: QUEUES, timeout: '500ms' })).map((r) => r.id)).toEqual([worker.id]);

      // An Inspector on a Cluster client made just now: its first SCAN reaches every master.
      const fresh = new Cluster(seeds());
      const inspector = new Inspector({ connection: fresh, prefix });
      try {
        expect(await inspector.queueNames()).toEqual(expect.arrayContaining(QUEUES));
      } finally {
        await inspector.close();
        // The Inspector does not close a client it was given.
        await fresh.quit();
      }
    } finally {
      await stream.return?.();
      await worker.close();
      await dispatcher.close();
      await cluster.quit();
    }
  });
});
