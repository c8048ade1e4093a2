/**
 * The seams later features build on, each held by a test:
 *  - the connection accepts an ioredis Cluster client (a Redis Cluster support will need it):
 *    no `instanceof Redis` inside, duplicated as a Cluster, its keyPrefix refused as a plain
 *    client's is; and a whole round trip runs through one, on a one-node Redis Cluster;
 *  - enqueueing is callable without a Dispatcher (a scheduler will need it): the Enqueuer, over
 *    the protocol layer's message encoding, sends tasks a worker runs;
 *  - `TaskResult` cannot be built from outside: its constructor takes an opaque token only the
 *    library holds (type-checked below with @ts-expect-error, by `npm run typecheck`).
 * The graceful-shutdown helper (`onShutdownSignal`, in src for a CLI) is exercised by the two
 * example programs under SIGTERM in test/examples.test.ts.
 */
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, Dispatcher, Task, TaskResult, Worker, type ConnectionOption } from 'heimdall-tasks';
import { Enqueuer } from '../../src/core/producer/enqueuer.js';
import { closeClient, openClient } from '../../src/core/protocol/connection.js';
import { QueueKeys } from '../../src/core/protocol/queue-keys.js';
import { enqueued } from '../../src/core/protocol/reply-codes.js';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { encodeMessage } from '../../src/core/protocol/task-record.js';
import { startRedis, type LaunchedRedis } from '../../scripts/redis-launcher.mjs';
import { newPrefix, recordEvents, useHarness, waitFor } from '../helpers.js';

class SeamService {
  @Task()
  async add(a: number, b: number): Promise<number> {
    return a + b;
  }

  @Task({ unique: true, uniqueTimeout: '1m' })
  async once(n: number): Promise<number> {
    return n * 10;
  }
}

/** A Cluster client that never connects (lazyConnect, nothing sent). */
function idleCluster(options: ConstructorParameters<typeof Cluster>[1] = {}): Cluster {
  return new Cluster([{ host: '127.0.0.1', port: 1 }], { lazyConnect: true, ...options });
}

describe('the connection accepts an ioredis Cluster client', () => {
  it('typed as a ConnectionOption; Dispatcher and Worker take it as is and leave it unconnected and open', async () => {
    const cluster = idleCluster();
    const option: ConnectionOption = cluster;
    const dispatcher = new Dispatcher({ connection: option, prefix: newPrefix('seam') });
    expect(dispatcher.client).toBe(cluster);
    const worker = new Worker({ connection: cluster, prefix: newPrefix('seam'), services: [new SeamService()] });
    await worker.close();
    await dispatcher.close();
    // Not ours: neither closes it, and nothing connected it.
    expect(cluster.status).toBe('wait');
    cluster.disconnect();
  });

  it('duplicated as a Cluster for subscriber and blocking connections, with the per-node options under redisOptions', async () => {
    const cluster = idleCluster({ redisOptions: { password: 'secret' } });
    for (const purpose of ['subscriber', 'blocking'] as const) {
      const own = openClient(cluster, purpose, 'heimdall:seam');
      try {
        expect(own.owned).toBe(true);
        expect(own.client).not.toBe(cluster);
        expect(own.client.isCluster).toBe(true);
        const options = (own.client as Cluster).options;
        expect(options.redisOptions).toMatchObject({ password: 'secret', connectionName: `heimdall:seam:${purpose}`, maxRetriesPerRequest: null });
        expect(options.lazyConnect).toBe(true);
      } finally {
        await closeClient(own);
      }
    }
    // Commands go through the client given, as with a plain client.
    expect(openClient(cluster, 'commands', 'heimdall:seam')).toEqual({ client: cluster, owned: false });
    cluster.disconnect();
  });

  it("a Cluster's keyPrefix (its own or its nodes') is refused as a plain client's is", () => {
    for (const cluster of [idleCluster({ keyPrefix: 'app:' }), idleCluster({ redisOptions: { keyPrefix: 'app:' } })]) {
      expect(() => new Dispatcher({ connection: cluster })).toThrow(ConfigError);
      expect(() => new Dispatcher({ connection: cluster })).toThrow(/keyPrefix 'app:'.*pass prefix: 'app'/);
      cluster.disconnect();
    }
  });
});

describe('a round trip through an ioredis Cluster client (a one-node Redis Cluster holding every slot)', () => {
  let server: LaunchedRedis | undefined;
  let port = 0;

  beforeAll(async () => {
    const shared = process.env.REDIS_URL;
    delete process.env.REDIS_URL;
    try {
      server = await startRedis({ log: () => undefined, args: ['--cluster-enabled', 'yes', '--cluster-announce-ip', '127.0.0.1'] });
    } finally {
      if (shared !== undefined) process.env.REDIS_URL = shared;
    }
    port = Number(new URL(server.url).port);
    const admin = new Redis(server.url);
    try {
      await admin.call('CLUSTER', 'ADDSLOTSRANGE', '0', '16383');
      await waitFor(async () => /cluster_state:ok/.test(String(await admin.call('CLUSTER', 'INFO'))), {
        timeout: 15_000,
        what: 'the one-node cluster to be ok',
      });
    } finally {
      admin.disconnect();
    }
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('dispatch, unique dispatch, get(), info() and revoke work through the Cluster client', async () => {
    const prefix = newPrefix('cluster');
    const cluster = new Cluster([{ host: '127.0.0.1', port }]);
    const dispatcher = new Dispatcher({ connection: cluster, prefix });
    const worker = new Worker({ connection: cluster, prefix, services: [new SeamService()] });
    try {
      const ev = recordEvents(worker);
      await worker.start();
      const tasks = dispatcher.tasks(SeamService);
      const sum = await tasks.add.delay(2, 3);
      expect(await sum.get({ timeout: 10 })).toBe(5);
      const [first, again] = [await tasks.once.delay(4), await tasks.once.delay(4)];
      expect(again.id === first.id || (await first.status()) === 'SUCCESS').toBe(true);
      expect(await first.get({ timeout: 10 })).toBe(40);
      const later = await tasks.add.applyAsync([1, 1], { countdown: '1h' });
      expect(await later.revoke()).toBe('REVOKED');
      expect((await later.info()).state).toBe('REVOKED');
      expect(ev.errors).toEqual([]);
    } finally {
      await worker.close();
      await dispatcher.close();
      await cluster.quit();
    }
  });
});

describe('enqueueing without a Dispatcher', () => {
  const fresh = useHarness('enqueuer');

  it('an Enqueuer over a ScriptRunner sends tasks a worker runs; one call carries the tasks of a tick', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new SeamService()] });
    await worker.start();
    const client = new Redis(h.url);
    try {
      const enqueuer = new Enqueuer(new ScriptRunner(client));
      const keys = new QueueKeys(h.prefix, 'default');
      const send = (id: string, args: unknown[]) => {
        const argsJson = JSON.stringify(args);
        const fields = encodeMessage({ name: 'SeamService.add', argsJson });
        return enqueuer.send(keys, { id, countdownMs: 0, etaMs: 0, lockKey: '', lockTtlMs: 0, fields }, argsJson.length, `scheduling ${id}`);
      };
      const outcomes = await Promise.all([send('sched-1', [1, 2]), send('sched-2', [3, 4])]);
      const ids = outcomes.map((o, i) => enqueued(o, { name: 'SeamService.add', id: `sched-${i + 1}`, customId: true, uniqueRaises: false }));
      expect(ids).toEqual([
        { id: 'sched-1', duplicate: false },
        { id: 'sched-2', duplicate: false },
      ]);
      await enqueuer.drain();
      const d = h.dispatcher();
      expect(await d.result<number>('sched-1').get({ timeout: 10 })).toBe(3);
      expect(await d.result<number>('sched-2').get({ timeout: 10 })).toBe(7);
    } finally {
      await client.quit();
    }
  });
});

// TaskResult's constructor takes the library's opaque token; nothing a user has fits it.
export function cannotBuildTaskResult(client: Redis): void {
  // @ts-expect-error: the constructor takes TaskResultInternals, an opaque token
  void new TaskResult(client, 'prefix', 'default', 'some-id');
  // @ts-expect-error: not even an object of the right shape without the private symbol
  void new TaskResult({ backend: {}, keys: {}, id: 'x', name: 'y', duplicate: false });
}
