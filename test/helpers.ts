import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Cluster, Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, expect, inject } from 'vitest';
import { ConfigError, Dispatcher, Task, Worker, currentTask, type DispatcherOptions, type TaskOptions, type WorkerEvents, type WorkerOptions } from 'heimdall-tasks';
import { waitFor } from './waiting.js';
import { QueueKeys } from '../src/core/protocol/queue-keys.js';
import { FIELDS, LOCK_FIELDS, lockOfRecord } from '../src/core/protocol/task-fields.js';
import { redisServerBin } from '../scripts/redis-launcher.mjs';
import { startRedis, type StartedRedis } from '../src/testing/index.js';
import { clientFor, isClusterClient, nodesOf, type Topology } from './topology.js';
export { nextEvent, settleWithin, waitFor } from './waiting.js';
/** The field letters of a task record, by meaning: tests name fields through it. */
export { FIELDS, LOCK_FIELDS, lockOfRecord };

/** Root of the repository. */
export const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * URL of the Redis the global setup started (or REDIS_URL). Under another topology (see
 * topology()): one node's or the first master's, for what needs an address but no tasks.
 */
export function redisUrl(): string {
  return inject('redisUrl');
}

/** The deployment the suite runs against (HEIMDALL_TEST_TOPOLOGY, test/topology.ts). */
export function topology(): Topology {
  return inject('topology');
}

/** What a Dispatcher or Worker takes as `connection`. */
export type TestConnection = NonNullable<DispatcherOptions['connection']>;

/**
 * A connection to the suite's deployment for code outside a Harness (createTestApp): the URL,
 * Sentinel options, or a Cluster client of its own that `close()` ends (the library leaves a
 * client it was given open).
 */
export function openTestConnection(): { connection: TestConnection; close(): Promise<void> } {
  const t = topology();
  if (t.kind === 'single') return { connection: t.url, close: async () => undefined };
  if (t.kind === 'sentinel') return { connection: { sentinels: t.sentinels, name: t.name }, close: async () => undefined };
  const cluster = new Cluster(t.seeds);
  return { connection: cluster, close: () => cluster.quit().then(() => undefined, () => cluster.disconnect()) };
}

/**
 * Optional start of every test prefix (env HEIMDALL_TEST_PREFIX_ROOT), e.g. 'heimdall:' to run
 * the suite as an ACL user restricted to ~heimdall:* (see docs/acl.md).
 */
const PREFIX_ROOT = process.env.HEIMDALL_TEST_PREFIX_ROOT ?? '';

let counter = 0;
/** A key prefix no other test uses. */
export function newPrefix(label = 't'): string {
  return `${PREFIX_ROOT}ht-${label}-${process.pid}-${++counter}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Every event of a worker, in order of arrival, by kind. */
export interface RecordedEvents {
  started: WorkerEvents['started'][0][];
  succeeded: WorkerEvents['succeeded'][0][];
  failed: WorkerEvents['failed'][0][];
  retried: WorkerEvents['retried'][0][];
  revoked: WorkerEvents['revoked'][0][];
  rateLimited: WorkerEvents['rateLimited'][0][];
  errors: Error[];
}

/** Starts recording a worker's events. */
export function recordEvents(worker: Worker): RecordedEvents {
  const ev: RecordedEvents = { started: [], succeeded: [], failed: [], retried: [], revoked: [], rateLimited: [], errors: [] };
  worker.on('started', (e) => ev.started.push(e));
  worker.on('succeeded', (e) => ev.succeeded.push(e));
  worker.on('failed', (e) => ev.failed.push(e));
  worker.on('retried', (e) => ev.retried.push(e));
  worker.on('revoked', (e) => ev.revoked.push(e));
  worker.on('rateLimited', (e) => ev.rateLimited.push(e));
  worker.on('error', (e) => ev.errors.push(e));
  return ev;
}

/** A promise a test opens by hand, to hold a task mid-run without sleeping. */
export interface Gate {
  promise: Promise<void>;
  open(): void;
}

const shutGates = new Set<Gate>();
/** Makes a gate; any gate still shut is opened after each test, so no worker stays stuck in close(). */
export function gate(): Gate {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  const g: Gate = {
    promise,
    open: () => {
      shutGates.delete(g);
      open();
    },
  };
  shutGates.add(g);
  return g;
}

/**
 * One test's world: its own key prefix, dispatchers and workers that are closed at the end,
 * and a check that the library left no connection of that prefix open.
 */
export class Harness {
  readonly prefix: string;
  /** An address of the deployment: under cluster or sentinel, see redisUrl(); connect with connection(). */
  readonly url: string;
  readonly topology: Topology;
  private readonly adminUrl: string;
  private readonly closers: (() => Promise<void>)[] = [];
  private adminClient: Redis | undefined;
  /** Clients this harness made for connection(): closed after the dispatchers and workers. */
  private readonly ownClients: Cluster[] = [];
  private readonly children = new Set<ChildProcess>();

  /** `server`: a redis-server of the test file's own (see usePrivateRedis) instead of the shared one. */
  constructor(label?: string, server?: { url: string }) {
    this.prefix = newPrefix(label);
    this.topology = server ? { kind: 'single', url: server.url } : topology();
    this.url = this.topology.url;
    this.adminUrl = server?.url ?? (process.env.REDIS_ADMIN_URL || this.url);
  }

  /**
   * A client for inspecting Redis (INFO, CLIENT LIST, keys); closed by dispose(). On a single
   * server it uses REDIS_ADMIN_URL when set, so the suite can run as a restricted user while
   * inspecting as admin. On a Cluster it is an ioredis Cluster (typed as a Redis: see clientFor),
   * through the sentinels a Redis that follows the master.
   */
  get admin(): Redis {
    const connectionName = `admin-${this.prefix}`;
    this.adminClient ??=
      this.topology.kind === 'single' ? new Redis(this.adminUrl, { connectionName }) : clientFor(this.topology, { connectionName });
    return this.adminClient;
  }

  /**
   * A connection for one dispatcher or worker: the URL on a single server, `{ sentinels, name }`
   * under Sentinel, and on a Cluster a new ioredis Cluster from the seeds (one per call, as two
   * processes would have), closed by dispose() after the dispatchers and workers: the library
   * does not close a client it was given.
   */
  connection(): TestConnection {
    const t = this.topology;
    if (t.kind === 'single') return this.url;
    if (t.kind === 'sentinel') return { sentinels: t.sentinels, name: t.name };
    // Named apart from the library's own connections (heimdall:<prefix>:...), so a test that
    // waits for those to close does not wait for this one, which lives until dispose().
    const cluster = new Cluster(t.seeds, { redisOptions: { connectionName: `harness-${this.prefix}` } });
    this.ownClients.push(cluster);
    return cluster;
  }

  dispatcher(extra: Partial<DispatcherOptions> = {}): Dispatcher {
    const d = new Dispatcher({ connection: extra.connection ?? this.connection(), prefix: this.prefix, ...extra });
    this.closers.push(() => d.close());
    return d;
  }

  /** A worker (not started) with errors collected in `errors`. */
  worker(extra: Partial<WorkerOptions> = {}): Worker {
    const w = new Worker({ connection: extra.connection ?? this.connection(), prefix: this.prefix, ...extra });
    this.closers.push(() => w.close());
    return w;
  }

  /** Spawns a TypeScript file under tsx with REDIS_URL and HEIMDALL_PREFIX set; killed by dispose(). */
  spawnTs(file: string, env: Record<string, string> = {}, args: readonly string[] = []): ChildProcess {
    const child = spawn(process.execPath, ['--import', 'tsx', file, ...args], {
      cwd: ROOT,
      // The deployment too, for fixtures that connect through test/fixtures/connection.ts.
      env: { ...process.env, REDIS_URL: this.url, HEIMDALL_TEST_TOPOLOGY_JSON: JSON.stringify(this.topology), HEIMDALL_PREFIX: this.prefix, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.children.add(child);
    child.on('exit', () => this.children.delete(child));
    return child;
  }

  /** The keys of a queue under this test's prefix, as the library builds them. */
  queueKeys(queue = 'default'): QueueKeys {
    return new QueueKeys(this.prefix, queue);
  }

  /** Key of a task's hash. */
  taskKey(id: string, queue = 'default'): string {
    return this.queueKeys(queue).task(id);
  }

  /** Key of a queue structure: 'wait', 'delayed', 'active', 'dead', 'names', or the 'revoke' channel. */
  queueKey(name: 'wait' | 'delayed' | 'active' | 'claimed' | 'dead' | 'names' | 'revoke', queue = 'default'): string {
    return this.queueKeys(queue)[name];
  }

  /** One field of a task's record, named by meaning (`'state'`, `'lockKey'`: see FIELDS); null when absent. */
  field(id: string, field: keyof typeof FIELDS, queue = 'default'): Promise<string | null> {
    return this.admin.hget(this.taskKey(id, queue), FIELDS[field]);
  }

  /** The unique lock a task's record names (field lk, or lu and n: lockOfRecord), null for none. */
  async recordLock(id: string, queue = 'default'): Promise<string | null> {
    return lockOfRecord(this.queueKeys(queue), await this.admin.hmget(this.taskKey(id, queue), ...LOCK_FIELDS));
  }

  /** The unique lock key a task's record names (recordLock); fails the test if it has none. */
  async lockKeyOf(id: string, queue = 'default'): Promise<string> {
    const lk = await this.recordLock(id, queue);
    expect(lk, `task ${id} records its lock key`).toBeTypeOf('string');
    return lk!;
  }

  /** Every key under this test's prefix (or matching `pattern` below it), sorted; on every master of a Cluster. */
  keys(pattern = '*'): Promise<string[]> {
    return scanKeys(this.admin, `${this.prefix}:${pattern}`);
  }

  /** The dead-letter list of a queue, newest first. */
  async deadLetters(queue = 'default'): Promise<DeadLetter[]> {
    return (await this.admin.lrange(this.queueKey('dead', queue), 0, -1)).map((s) => JSON.parse(s) as DeadLetter);
  }

  /** Names of clients on the server (every node of a Cluster) that belong to this test's prefix. */
  openConnections(): Promise<string[]> {
    return clientNames(this.admin, `heimdall:${this.prefix}:`);
  }

  async dispose(): Promise<void> {
    for (const child of this.children) child.kill('SIGKILL');
    await Promise.all(this.closers.map((c) => c()));
    await Promise.all(this.ownClients.map((c) => c.quit().catch(() => c.disconnect())));
    try {
      // close() must leave nothing behind; allow the server a moment to notice QUITs.
      await waitFor(async () => (await this.openConnections()).length === 0, {
        timeout: 3000,
        what: `connections of ${this.prefix} to close`,
      });
    } catch {
      expect(await this.openConnections(), 'connections left open after close()').toEqual([]);
    }
    const left = await this.keys();
    // One key at a time: on a Cluster the keys of one DEL must share a slot.
    if (left.length > 0) await Promise.all(left.map((k) => this.admin.unlink(k)));
    await this.admin.quit();
  }
}

/**
 * Registers an afterEach that disposes the harness of the current test. Call at the top of a
 * test file; call the returned function inside each test for a fresh harness.
 */
export function useHarness(label?: string): () => Harness {
  let current: Harness | undefined;
  afterEach(async () => {
    for (const g of [...shutGates]) g.open();
    const h = current;
    current = undefined;
    if (h) await h.dispose();
  });
  return () => {
    current = new Harness(label);
    return current;
  };
}

/**
 * Like useHarness, on a redis-server of this test file's own, started before its tests and
 * stopped after them: for counts (INFO commandstats, MONITOR) that the other test files, running
 * in parallel on the shared server, would disturb.
 */
export function usePrivateRedis(label?: string): () => Harness {
  let server: StartedRedis | undefined;
  let current: Harness | undefined;
  beforeAll(async () => {
    // A server of our own, even when REDIS_URL names a shared one (startRedis reuses only when asked).
    server = await startRedis({ bin: redisServerBin({ log: () => undefined }) });
  });
  afterEach(async () => {
    const h = current;
    current = undefined;
    await h?.dispose();
  });
  afterAll(async () => {
    await server?.stop();
  });
  return () => {
    if (!server) throw new Error('usePrivateRedis: the server is not started yet (call fresh() inside a test)');
    current = new Harness(label, server);
    return current;
  };
}

/** One entry of a queue's dead-letter list. */
export interface DeadLetter {
  id: string;
  reason: string;
  at: number;
}

/**
 * Every key matching `pattern` (SCAN, so it is safe on a shared server), sorted; on a Cluster,
 * on every master.
 */
export async function scanKeys(client: Redis | Cluster, pattern: string): Promise<string[]> {
  const found: string[] = [];
  for (const node of await nodesWhenReady(client, 'master')) {
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      found.push(...keys);
      cursor = next;
    } while (cursor !== '0');
  }
  return found.sort();
}

/** Names of the clients connected to the server (every node of a Cluster) whose name starts with `start`. */
export async function clientNames(admin: Redis | Cluster, start: string): Promise<string[]> {
  const names: string[] = [];
  for (const node of await nodesWhenReady(admin, 'all')) {
    const list = (await node.client('LIST')) as string;
    for (const line of list.split('\n')) {
      const name = /(?:^| )name=(\S*)/.exec(line)?.[1] ?? '';
      if (name.startsWith(start)) names.push(name);
    }
  }
  return names;
}

/**
 * The nodes of a client to ask one-node questions; a Cluster client knows its nodes only once
 * it has loaded the slots, so it is made ready first (a PING routed anywhere).
 */
async function nodesWhenReady(client: Redis | Cluster, role: 'master' | 'all'): Promise<Redis[]> {
  if (isClusterClient(client) && client.status !== 'ready') await client.ping();
  return nodesOf(client, role);
}

/** Milliseconds on the Redis server's clock, as the scripts compute them. */
/** Waits until task `id` is a worker's reservation (prefetch) in Redis: STARTED with rs = '1' and a lease. */
export async function waitReserved(h: Harness, id: string): Promise<void> {
  await waitFor(
    async () => {
      const [s, rs] = await h.admin.hmget(h.taskKey(id), FIELDS.state, FIELDS.reserved);
      return s === 'STARTED' && rs === '1' && (await h.admin.zscore(h.queueKey('active'), id)) !== null;
    },
    { what: `task ${id} to be reserved` },
  );
}

export async function redisNowMs(client: Redis): Promise<number> {
  const [sec, usec] = await client.time();
  return Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
}

/** Prints one `[figures]` line of measurements. */
export function reportFigures(title: string, figures: Record<string, number | string>): void {
  console.info(`[figures] ${title}: ${Object.entries(figures).map(([k, v]) => `${k}=${v}`).join(' ')}`);
}

/**
 * Call inside a running task: pushes { id, reason: the reason's name } to `into` when the task's
 * AbortSignal fires. Returns the signal.
 */
export function watchAbort(into: { id: string; reason: string }[]): AbortSignal {
  const t = currentTask();
  t.signal.addEventListener(
    'abort',
    () => {
      const r = t.signal.reason as unknown;
      into.push({ id: t.id, reason: r instanceof Error ? r.name : String(r) });
    },
    { once: true },
  );
  return t.signal;
}

/** Defines a class `Options` whose method `m` carries `@Task(options)`; returns the ConfigError that threw. */
export function decorationError(options: unknown): ConfigError {
  try {
    class Options {
      @Task(options as TaskOptions)
      async m(): Promise<void> {}
    }
    void Options;
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error(`@Task(${JSON.stringify(options)}) was accepted`);
}

/** The ConfigError `call` throws; a failure when it throws nothing or another error. */
export function configError(call: () => unknown): ConfigError {
  try {
    call();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('no ConfigError was thrown');
}

/** `INFO commandstats` as command -> calls (`script|load` style names for subcommands). */
export async function commandStats(admin: Redis): Promise<Record<string, number>> {
  const text = await admin.info('commandstats');
  const stats: Record<string, number> = {};
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) stats[m[1]!] = Number(m[2]);
  return stats;
}

/** Resolves with a child's exit code, collecting its output. */
export function exitOf(child: ChildProcess): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}
