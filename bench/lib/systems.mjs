// The three systems behind one small interface, each in its default durable configuration
// (results kept). The orchestrator (run.mjs) uses the producer side; worker-child.mjs the worker
// side, in its own process. Every Redis client library is wrapped so that each command a client
// sends (top-level, pipelined or not) adds one to `clientCommands.n`: Redis's own counters
// (INFO commandstats, total_commands_processed) also count the commands a script runs.
// INFO is left out here and on the server side (the bench's own probes are INFO calls).
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** BENCH_HEIMDALL_EVENTS=off runs heimdall-tasks with its event streams off (events: false), for the on/off figure. */
function heimdallEvents() {
  const v = process.env.BENCH_HEIMDALL_EVENTS;
  if (v === undefined || v === '' || v === 'on') return {};
  if (v === 'off') return { events: false };
  throw new Error(`BENCH_HEIMDALL_EVENTS must be on or off, got '${v}'`);
}

/**
 * BENCH_HEIMDALL_PREFETCH=<n> runs heimdall-tasks' workers with prefetch n, for the figures of its
 * default (docs/decisions.md); unset, the Worker's default.
 */
function heimdallPrefetch() {
  const v = process.env.BENCH_HEIMDALL_PREFETCH;
  if (v === undefined || v === '') return {};
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`BENCH_HEIMDALL_PREFETCH must be a whole number >= 0, got '${v}'`);
  return { prefetch: n };
}

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BENCH = fileURLToPath(new URL('../', import.meta.url));
export const SYSTEMS = ['heimdall', 'bullmq', 'bee-queue'];
export const QUEUE = 'bench';
/** The rate limit of the backlog scenario's task: 100 starts in any rolling second. */
export const BACKLOG_RATE = [100, 1];

/** Commands sent by the clients of this process (except the orchestrator's admin connection). */
export const clientCommands = { n: 0 };
const COUNTED = Symbol.for('heimdall-bench:counted');
export const ADMIN_NAME = 'heimdall-bench-admin';

function countIoredis(Redis) {
  const proto = Redis.prototype;
  if (proto[COUNTED]) return;
  const send = proto.sendCommand;
  proto.sendCommand = function countedSend(command, stream) {
    if (this.options?.connectionName !== ADMIN_NAME && command?.name !== 'info') clientCommands.n++;
    return send.call(this, command, stream);
  };
  proto[COUNTED] = true;
}

function countNodeRedis(RedisClient) {
  const proto = RedisClient.prototype;
  if (proto[COUNTED]) return;
  const send = proto.internal_send_command;
  proto.internal_send_command = function countedSend(commandObj) {
    if (String(commandObj?.command).toLowerCase() !== 'info') clientCommands.n++;
    return send.call(this, commandObj);
  };
  proto[COUNTED] = true;
}

const rootRequire = createRequire(`${ROOT}package.json`);

/**
 * Where the bench compiles heimdall-tasks: beside the repository's node_modules (so the build
 * resolves the root's ioredis, the one counted here), not under bench/ (whose node_modules holds
 * BullMQ's ioredis).
 */
export const HEIMDALL_BUILD = `${ROOT}.bench-build/`;
/**
 * The build this process imports: HEIMDALL_BUILD, or BENCH_HEIMDALL_BUILD (bench/cluster.mjs runs
 * variants of one build side by side, e.g. its scripts publishing classic or sharded).
 */
const IMPORTED_BUILD = process.env.BENCH_HEIMDALL_BUILD || HEIMDALL_BUILD;

/** Compiles src/ into HEIMDALL_BUILD with the project's own tsc (about a second). */
export function buildHeimdall() {
  execFileSync(
    `${ROOT}node_modules/.bin/tsc`,
    ['-p', `${ROOT}tsconfig.build.json`, '--outDir', HEIMDALL_BUILD, '--declaration', 'false', '--sourceMap', 'false'],
    { stdio: 'inherit' },
  );
}
const benchRequire = createRequire(`${BENCH}package.json`);

/** True when `npm ci --prefix bench` has installed BullMQ and bee-queue. */
export function benchDepsInstalled() {
  return existsSync(`${BENCH}node_modules/bullmq/package.json`) && existsSync(`${BENCH}node_modules/bee-queue/package.json`);
}

/** The ioredis heimdall-tasks uses (the repository's own dependency). */
export function rootIoredis() {
  const Redis = rootRequire('ioredis');
  countIoredis(Redis);
  return Redis;
}

export function versions() {
  const v = { heimdall: rootRequire('./package.json').version, node: process.version };
  if (benchDepsInstalled()) {
    v.bullmq = benchRequire('bullmq/package.json').version;
    v['bee-queue'] = benchRequire('bee-queue/package.json').version;
    v['ioredis (bench)'] = benchRequire('ioredis/package.json').version;
  }
  v['ioredis (heimdall)'] = rootRequire('ioredis/package.json').version;
  return v;
}

// ---------------------------------------------------------------- heimdall-tasks
let heimdallModule;
let heimdallHandler = () => {};
async function heimdall() {
  if (!heimdallModule) {
    rootIoredis();
    // The working tree compiled by buildHeimdall() (run.mjs calls it first): plain JavaScript,
    // as users run it, not the source through tsx (whose helpers cost time of their own).
    const lib = await import(pathToFileURL(`${IMPORTED_BUILD}index.js`).href);
    class BenchTasks {
      async noop(p) {
        heimdallHandler(p);
      }
      async unique(p) {
        heimdallHandler(p);
      }
      async limited(p) {
        heimdallHandler(p);
      }
      async backlog(p) {
        heimdallHandler(p);
      }
    }
    // Legacy decorator calls by hand (this file is plain JavaScript).
    const task = (key, options) =>
      lib.Task({ name: `bench.${key}`, queue: QUEUE, ...options })(
        BenchTasks.prototype,
        key,
        Object.getOwnPropertyDescriptor(BenchTasks.prototype, key),
      );
    task('noop', {});
    task('unique', { unique: true });
    task('limited', { rateLimit: [1000, 1] });
    task('backlog', { rateLimit: BACKLOG_RATE });
    heimdallModule = { lib, BenchTasks };
  }
  return heimdallModule;
}

/**
 * Where heimdall-tasks connects: a URL, or `{ cluster: seeds }` for a Redis Cluster (an ioredis
 * Cluster of the root's ioredis, which the caller disconnects: a client passed in is not the
 * library's to close).
 */
function heimdallConnection(where) {
  if (typeof where === 'string') return where;
  return new (rootIoredis().Cluster)(where.cluster);
}
const disconnectIfCluster = (connection) => {
  if (typeof connection !== 'string') connection.disconnect();
};

// ---------------------------------------------------------------- BullMQ
async function bullmq() {
  const Redis = benchRequire('ioredis');
  countIoredis(Redis);
  const lib = await import(pathToFileURL(benchRequire.resolve('bullmq')).href);
  return { lib, Redis };
}

// ---------------------------------------------------------------- bee-queue
function beeQueue() {
  const beePath = benchRequire.resolve('bee-queue');
  const { RedisClient } = createRequire(beePath)('redis');
  countNodeRedis(RedisClient);
  return benchRequire('bee-queue');
}

/**
 * A producer: `{ enqueue(payload, kind?, { dueAt }?), bulk?(payloads, kind?, { dueAt }?), close() }`.
 * `kind` is 'noop' (default), 'unique' (all three systems, each with its own form), 'limited' or
 * 'backlog' (heimdall only); `dueAt` (epoch ms) makes a delayed task, due then. enqueue resolves to the task id,
 * heimdall's bulk to the ids in the order of the payloads.
 */
export async function producer(system, url, prefix, { queue = QUEUE } = {}) {
  if (system === 'heimdall') {
    const { lib, BenchTasks } = await heimdall();
    const connection = heimdallConnection(url);
    const dispatcher = new lib.Dispatcher({ connection, prefix, ...heimdallEvents() });
    const tasks = dispatcher.tasks(BenchTasks);
    // The tasks are declared on QUEUE; another queue is a per-call option.
    const to = queue === QUEUE ? undefined : { queue };
    // dueAt (epoch ms): a delayed task, due then (the growth scenarios' delayed tasks).
    const opts = (dueAt) => (to || dueAt ? { ...to, ...(dueAt ? { eta: dueAt } : {}) } : undefined);
    return {
      enqueue: async (payload, kind = 'noop', { dueAt } = {}) => {
        const o = opts(dueAt);
        return (await (o ? tasks[kind].applyAsync([payload], o) : tasks[kind].delay(payload))).id;
      },
      bulk: async (payloads, kind = 'noop', { dueAt } = {}) => (await tasks[kind].delayMany(payloads.map((payload) => [payload]), opts(dueAt))).map((r) => r.id),
      info: (id) => dispatcher.result(id, { queue }).info(),
      close: async () => {
        await dispatcher.close();
        disconnectIfCluster(connection);
      },
    };
  }
  if (system === 'bullmq') {
    const { lib, Redis } = await bullmq();
    const connection = new Redis(url, { maxRetriesPerRequest: null });
    const queue = new lib.Queue(QUEUE, { connection, prefix });
    await queue.waitUntilReady();
    // kind 'unique': BullMQ's deduplication in its simple mode (one id per payload, held until the
    // job completes or fails), the nearest to heimdall's unique lock. dueAt: the option `delay`.
    const jobOpts = (payload, kind, dueAt) => {
      const o = {};
      if (kind === 'unique') o.deduplication = { id: `u${payload.i}` };
      if (dueAt) o.delay = Math.max(1, dueAt - Date.now());
      return o;
    };
    return {
      enqueue: async (payload, kind = 'noop', { dueAt } = {}) => (await queue.add('noop', payload, jobOpts(payload, kind, dueAt))).id,
      bulk: async (payloads, kind = 'noop', { dueAt } = {}) => {
        await queue.addBulk(payloads.map((data) => ({ name: 'noop', data, opts: jobOpts(data, kind, dueAt) })));
      },
      close: async () => {
        await queue.close();
        connection.disconnect();
      },
    };
  }
  if (system === 'bee-queue') {
    const Queue = beeQueue();
    // getEvents off: the producer does not wait for results (nor do the other two producers).
    const queue = new Queue(QUEUE, { redis: { url }, prefix, isWorker: false, getEvents: false });
    await queue.ready();
    // kind 'unique': a custom job id (setId), which bee-queue saves only when no job of that id
    // exists. dueAt: delayUntil (its worker needs activateDelayedJobs).
    const job = (payload, kind, dueAt) => {
      const j = queue.createJob(payload);
      if (kind === 'unique') j.setId(`u${payload.i}`);
      if (dueAt) j.delayUntil(dueAt);
      return j;
    };
    return {
      enqueue: async (payload, kind = 'noop', { dueAt } = {}) => (await job(payload, kind, dueAt).save()).id,
      bulk: async (payloads, kind = 'noop', { dueAt } = {}) => {
        const errors = await queue.saveAll(payloads.map((p) => job(p, kind, dueAt)));
        if (errors.size > 0) throw [...errors.values()][0];
      },
      close: () => queue.close(),
    };
  }
  throw new Error(`unknown system ${system}`);
}

/**
 * Starts a worker running `handler(payload)` for every task, calling `onDone()` after each
 * task's end is stored (and, heimdall only, `onLimited()` for each task its rate window sent back
 * to the delayed set). Resolves when the worker is consuming: `{ close() }`.
 */
export async function worker(system, url, prefix, { concurrency, handler, onDone, onLimited, queue = QUEUE, activateDelayed = false }) {
  if (system === 'heimdall') {
    const { lib, BenchTasks } = await heimdall();
    const service = new BenchTasks();
    heimdallHandler = handler;
    const connection = heimdallConnection(url);
    const w = new lib.Worker({ connection, prefix, services: [service], queues: [queue], concurrency, ...heimdallEvents(), ...heimdallPrefetch() });
    w.on('succeeded', onDone);
    if (onLimited) w.on('rateLimited', onLimited);
    w.on('error', (err) => console.error(`heimdall worker error: ${err.message}`));
    await w.start();
    return {
      close: async () => {
        await w.close();
        disconnectIfCluster(connection);
      },
    };
  }
  if (system === 'bullmq') {
    const { lib, Redis } = await bullmq();
    const connection = new Redis(url, { maxRetriesPerRequest: null });
    const w = new lib.Worker(QUEUE, async (job) => handler(job.data), { connection, prefix, concurrency });
    w.on('completed', onDone);
    w.on('error', (err) => console.error(`bullmq worker error: ${err.message}`));
    await w.waitUntilReady();
    return {
      close: async () => {
        await w.close();
        connection.disconnect();
      },
    };
  }
  if (system === 'bee-queue') {
    const Queue = beeQueue();
    // activateDelayed: bee-queue moves due delayed jobs only in a queue that asks for it.
    const queue = new Queue(QUEUE, { redis: { url }, prefix, ...(activateDelayed ? { activateDelayedJobs: true } : {}) });
    queue.on('succeeded', onDone);
    queue.on('error', (err) => console.error(`bee-queue worker error: ${err.message}`));
    queue.process(concurrency, async (job) => handler(job.data));
    await queue.ready();
    return { close: () => queue.close() };
  }
  throw new Error(`unknown system ${system}`);
}

/** Loads a system's modules (so that loading them is not timed). */
export async function preload(system) {
  if (system === 'heimdall') await heimdall();
  else if (system === 'bullmq') await bullmq();
  else if (system === 'bee-queue') beeQueue();
}
