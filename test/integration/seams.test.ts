/**
 * The seams later features build on, each held by a test:
 *  - the connection accepts an ioredis Cluster client (a Redis Cluster support will need it):
 *    no `instanceof Redis` inside, duplicated as a Cluster, its keyPrefix refused as a plain
 *    client's is; and a whole round trip runs through one, on a one-node Redis Cluster;
 *  - enqueueing is callable without a Dispatcher (a scheduler will need it): prepareCall checks a
 *    call and builds its message, locks and rate keys included, from a registry definition, and
 *    an Enqueuer of the scheduler's own sends it; MONITOR counts its enqueue calls;
 *  - `TaskResult` cannot be built from outside: its constructor takes an opaque token only the
 *    library holds (type-checked below with @ts-expect-error, by `npm run typecheck`).
 * The graceful-shutdown helper (`onShutdownSignal`, in src for a CLI) has its own test,
 * shutdown-signal.test.ts, and runs in the two example programs (test/examples.test.ts).
 */
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ConfigError,
  Dispatcher,
  PayloadTooLargeError,
  SerializationError,
  Task,
  TaskResult,
  Worker,
  type ApplyOptions,
  type ConnectionOption,
} from 'heimdall-tasks';
import { DEFAULT_MAX_PAYLOAD_BYTES } from '../../src/core/producer/dispatcher.js';
import { Enqueuer } from '../../src/core/producer/enqueuer.js';
import { prepareCall, type PreparedCall } from '../../src/core/producer/prepare-call.js';
import { closeClient, openClient } from '../../src/core/protocol/connection.js';
import { QueueKeys } from '../../src/core/protocol/queue-keys.js';
import { enqueued } from '../../src/core/protocol/reply-codes.js';
import { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import { callChecks } from '../../src/core/task/call-checks.js';
import { taskByName, type TaskDefinition } from '../../src/core/task/registry.js';
import { enqueue as enqueueScript } from '../../src/redis-scripts/scripts.generated.js';
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
      const tasks = dispatcher.tasks(SeamService);
      // Both unique sends before the worker runs: the second finds the first's lock.
      const [first, again] = [await tasks.once.delay(4), await tasks.once.delay(4)];
      expect(again.id).toBe(first.id);
      expect([first.duplicate, again.duplicate]).toEqual([false, true]);
      await worker.start();
      const sum = await tasks.add.delay(2, 3);
      expect(await sum.get({ timeout: 10 })).toBe(5);
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

  it(
    'a scheduler prepares calls with prepareCall from the registry definition and sends them through its own Enqueuer: ' +
      'the worker runs them, a unique call sent twice in one tick is one task and one duplicate, and one EVALSHA carries the tick',
    async () => {
      const h = fresh();
      // The worker is built first: under standard decorators its services are what registers the class.
      const worker = h.worker({ services: [new SeamService()] });
      const ev = recordEvents(worker);
      const add = taskByName('SeamService.add');
      const once = taskByName('SeamService.once');
      expect(add?.options.unique).toBe(false);
      expect(once?.options.unique).toBe(true);
      const keysFor = (queue: string): QueueKeys => new QueueKeys(h.prefix, queue);
      const prepare = (def: TaskDefinition, args: unknown[], call: ApplyOptions = {}): PreparedCall =>
        prepareCall(def.name, def.options, args, call, keysFor, DEFAULT_MAX_PAYLOAD_BYTES);

      // The checks come with it: a bad call throws, as delay() would, before anything is sent.
      expect(() => prepare(add!, [1, () => 2])).toThrow(SerializationError);
      expect(() => prepare(add!, [1, 2], { countdwn: 1 } as ApplyOptions)).toThrow(/^unknown call option 'countdwn'; known: /);
      expect(() => prepareCall(add!.name, add!.options, [1, 2], {}, keysFor, 4)).toThrow(PayloadTooLargeError);

      const calls = [prepare(add!, [1, 2], { taskId: 'sched-1' }), prepare(add!, [3, 4]), prepare(once!, [5]), prepare(once!, [5])];
      const [, second, firstOnce, againOnce] = calls as [PreparedCall, PreparedCall, PreparedCall, PreparedCall];
      // The lock key the message carries is the one a worker computes at admission for a message without one.
      const workerLock = callChecks(h.queueKeys(), once!.name, once!.options, [5], JSON.stringify([5]), { lock: true, rate: false }).lock!;
      expect(workerLock.key.startsWith(`${h.prefix}:{default}:lock:SeamService.once:`)).toBe(true);
      expect(firstOnce.task.lockKey).toBe(workerLock.key);
      expect(firstOnce.task.lockTtlMs).toBe(60_000);

      // Every enqueue call of this test's queue, as Redis runs it (the server may be shared: filter by our keys).
      const wait = h.queueKey('wait');
      const enqueueCalls: string[][] = [];
      const marker = `fence-${h.prefix}`;
      let fenced = false;
      const mon = await h.admin.monitor();
      mon.on('monitor', (_time: string, args: string[]) => {
        const command = String(args[0]).toLowerCase();
        if (command === 'evalsha' && args[1] === enqueueScript.sha && args[3] === wait) enqueueCalls.push(args);
        else if (command === 'echo' && args[1] === marker) fenced = true;
      });
      const client = new Redis(h.url);
      try {
        const enqueuer = new Enqueuer(new ScriptRunner(client));
        // One tick: four sends, one queue.
        const outcomes = await Promise.all(calls.map((p) => enqueuer.send(p.keys, p.task, p.bytes, `scheduling ${p.name}`)));
        const sent = outcomes.map((o, i) => {
          const p = calls[i]!;
          return enqueued(o, { name: p.name, id: p.id, customId: p.customId, uniqueRaises: p.opts?.uniqueRaises === true });
        });
        expect(sent).toEqual([
          { id: 'sched-1', duplicate: false },
          { id: second.id, duplicate: false },
          { id: firstOnce.id, duplicate: false },
          { id: firstOnce.id, duplicate: true, conflict: { outcome: 'duplicate', holder: firstOnce.id } },
        ]);

        // MONITOR shows commands in the order Redis ran them: once our marker is there, so is every enqueue call before it.
        await h.admin.echo(marker);
        await waitFor(() => fenced, { timeout: 10_000, what: 'MONITOR to show the fence' });
        expect(enqueueCalls, 'enqueue calls of this tick').toHaveLength(1);
        // EVALSHA sha numkeys KEYS... ARGV...: the queue's three keys, then each task's record, and
        // its lock when unique (the two unique calls both declare the lock they ask for).
        const [, , numkeys, ...rest] = enqueueCalls[0]!;
        expect(rest.slice(0, Number(numkeys))).toEqual([
          wait,
          h.queueKey('delayed'),
          h.queueKeys().events,
          h.taskKey('sched-1'),
          h.taskKey(second.id),
          h.taskKey(firstOnce.id),
          workerLock.key,
          h.taskKey(againOnce.id),
          workerLock.key,
        ]);
        expect(rest[Number(numkeys) + 1], 'tasks in that call (ARGV[2])').toBe('4');

        // Before any worker runs: the lock is held by the first call, under the worker's name for it; the duplicate wrote nothing.
        expect(await h.admin.get(workerLock.key)).toBe(firstOnce.id);
        expect(await h.lockKeyOf(firstOnce.id)).toBe(workerLock.key);
        expect(await h.admin.exists(h.taskKey(againOnce.id))).toBe(0);
        const d = h.dispatcher();
        expect((await d.tasks(SeamService).once.current(5))?.id).toBe(firstOnce.id);

        await worker.start();
        expect(await d.result<number>('sched-1').get({ timeout: 10 })).toBe(3);
        expect(await d.result<number>(second.id).get({ timeout: 10 })).toBe(7);
        expect(await d.result<number>(firstOnce.id).get({ timeout: 10 })).toBe(50);
        await waitFor(() => ev.succeeded.length === 3, { what: 'three succeeded events' });
        expect(ev.started.map((e) => e.id).sort()).toEqual(['sched-1', second.id, firstOnce.id].sort());
        expect(ev.errors).toEqual([]);
        // The worker released the lock at SUCCESS under the same name.
        expect(await h.admin.exists(workerLock.key)).toBe(0);
      } finally {
        mon.disconnect();
        await client.quit();
      }
    },
  );
});

// TaskResult's constructor takes the library's opaque token; nothing a user has fits it.
export function cannotBuildTaskResult(client: Redis): void {
  // @ts-expect-error: the constructor takes TaskResultInternals, an opaque token
  void new TaskResult(client, 'prefix', 'default', 'some-id');
  // @ts-expect-error: not even an object of the right shape without the private symbol
  void new TaskResult({ backend: {}, keys: {}, id: 'x', name: 'y', duplicate: false });
}
