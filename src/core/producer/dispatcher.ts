import type { RedisClient } from '../protocol/connection.js';
import type { ConnectionOption } from '../protocol/connection.js';
import { describe, toMillis, toMillisOrZero, type Duration } from '../task/durations.js';
import { uniqueKey } from '../task/call-checks.js';
import { ConfigError, NotATaskError, PartialDispatchError, redisCall } from '../errors.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, QueueKeys, validateName } from '../protocol/queue-keys.js';
import { discover, registeredTasks, taskByName, type Constructor, type TaskDefinition } from '../task/registry.js';
import type { PingReply, WorkerInfo } from '../protocol/worker-info.js';
import { argsToJson } from '../task/serialization.js';
import { makeTaskResult, type TaskResult } from './task-result.js';
import type { NormalizedTaskOptions } from '../task/task-options.js';
import { enqueued } from '../protocol/reply-codes.js';
import type { EnqueueOutcome } from '../protocol/scripts.js';
import { prepareCall, type ApplyOptions, type PreparedCall } from './prepare-call.js';
import { RedisTransport, type DispatchTransport } from './transport.js';
import { DEFAULT_FAILOVER_TIMEOUT_MS } from './enqueuer.js';
import { eventsSettings, type EventsOptions, type QueueEvent } from '../events/queue-events.js';
import type { EventsReadOptions } from '../events/event-stream.js';
import { HookChain, INSTRUMENT, type InstrumentationHooks } from '../instrumentation.js';

export type { ApplyOptions } from './prepare-call.js';

/** Options shared by Dispatcher and Worker. */
export interface ConnectionOptions {
  /** Redis URL (`redis://`, `rediss://`), ioredis options, or an ioredis client (which you keep and close). */
  connection: ConnectionOption;
  /** First segment of every Redis key. Default: `'heimdall'`. */
  prefix?: string;
}

/** Options of `new Dispatcher()`. */
export interface DispatcherOptions extends ConnectionOptions {
  /** Largest serialized arguments accepted, in bytes; larger dispatches fail with PayloadTooLargeError. Default: 512 KiB. */
  maxPayloadBytes?: number;
  /**
   * The queues' event streams: what this dispatcher's calls write (queued, deduplicated, revoked),
   * capped at `maxLength` entries per queue (`maxAge` is the workers' to apply). `false` writes none.
   * Default: `{ maxLength: 10_000 }`.
   */
  events?: EventsOptions | false;
  /**
   * How long a dispatch waits for Redis to come back from a failover before it fails with
   * RedisUnavailableError: seconds or an `ms` string, counted from its first try. While a Redis
   * Cluster promotes a replica (or a Sentinel's clients follow the new master), the calls its
   * master cannot serve are sent again, with pauses of 100 ms to 1 s. `0` sends once. Covers a
   * typical promotion: about 4 s with `cluster-node-timeout 2000`; allow `cluster-node-timeout`
   * plus a few seconds. Default: 15 s.
   */
  failoverTimeout?: Duration;
}

/** Options of `dispatcher.workers()`. */
export interface WorkersOptions {
  /** The queues whose workers are listed. Default: `'default'` and every queue a task registered in this process names. */
  queues?: readonly string[];
}

/** Options of `dispatcher.ping()`. */
export interface PingOptions extends WorkersOptions {
  /** How long to wait for answers: seconds or an `ms` string. Default: 1 s. */
  timeout?: Duration;
}

/** A unique lock as `TaskRef.lock()` finds it. */
export interface UniqueLock {
  /** The whole Redis key, as `Inspector.extendLock()` and `releaseLock()` take it. */
  key: string;
  /** The id of the task holding it. */
  holder: string;
  /** Milliseconds until it lapses, or null when it has no expiry. */
  ttlMs: number | null;
}

/** The typed handle of one task of a class, from `dispatcher.tasks(Class)`. */
export interface TaskRef<A extends readonly unknown[], R> {
  /** Registry name of the task. */
  readonly name: string;
  /** Sends the task with these arguments. */
  delay(...args: A): Promise<TaskResult<R>>;
  /** Sends the task with these arguments and per-call options. */
  applyAsync(args: A, options?: ApplyOptions): Promise<TaskResult<R>>;
  /**
   * Sends one task per entry of `argsList`, with the same per-call options (no `taskId`), in
   * batches of up to 50 tasks (or about 64 KiB of arguments) per Redis call. Every entry is
   * checked before anything is sent, so a bad one rejects the whole call and sends nothing.
   * Resolves to the handles in order when every task was sent. When none was, it rejects with
   * the error of the first entry (e.g. RedisOutOfMemoryError), and the whole call can be sent
   * again. When some were and some not (a batch refused by a full Redis, a duplicate with
   * `uniqueRaises`), it rejects with a PartialDispatchError holding each entry's handle or error.
   */
  delayMany(argsList: readonly A[], options?: Omit<ApplyOptions, 'taskId'>): Promise<TaskResult<R>[]>;
  /** The task holding the unique lock for these arguments, or null when none does (unique tasks only). */
  current(...args: A): Promise<TaskResult<R> | null>;
  /**
   * The unique lock these arguments map to, as held now: its whole Redis key (what
   * `Inspector.extendLock()` and `releaseLock()` take), the holding task's id and the ms until it
   * lapses; null when it is free (unique tasks only).
   */
  lock(...args: A): Promise<UniqueLock | null>;
}

/** The async methods of `T` as task handles; other members are absent, so using them does not compile. */
export type TaskProxy<T> = {
  [K in keyof T as T[K] extends (...args: never) => Promise<unknown> ? K : never]: T[K] extends (
    ...args: infer A
  ) => Promise<infer R>
    ? TaskRef<A, R>
    : never;
};

const QUEUE_IN_ID = /^(.+):[0-9A-Za-z]{22}$/;
/** Default `maxPayloadBytes` of the Dispatcher (arguments) and the Worker (results): 512 KiB. */
export const DEFAULT_MAX_PAYLOAD_BYTES = 512 * 1024;

/** Reads the queue a generated id was made for (ids of non-default queues are `<queue>:<random>`). */
function queueOfId(id: string): string | undefined {
  return QUEUE_IN_ID.exec(id)?.[1];
}

// Internal: a DispatcherOptions carrying a transport under this key uses it instead of Redis
// (heimdall-tasks/testing's inline mode). The symbol is not exported from the package.
const TRANSPORT: unique symbol = Symbol('heimdall-tasks.transport');

/** Options of a Dispatcher over another transport than Redis (for the library's own use). */
export interface TransportDispatcherOptions {
  readonly [TRANSPORT]: DispatchTransport;
  prefix?: string;
  maxPayloadBytes?: number;
}

/** A Dispatcher that sends through `transport` (heimdall-tasks/testing's inline mode). */
export function dispatcherOver(transport: DispatchTransport, options: { prefix?: string; maxPayloadBytes?: number } = {}): Dispatcher {
  const internal: TransportDispatcherOptions = { ...options, [TRANSPORT]: transport };
  return new Dispatcher(internal as unknown as DispatcherOptions);
}

/**
 * Sends tasks to Redis and hands out their results. One per process is plenty; it holds one
 * connection (auto-pipelined) plus a subscriber opened by the first `get()`.
 */
export class Dispatcher {
  /** First segment of every key this dispatcher writes. */
  readonly prefix: string;
  private readonly transport: DispatchTransport;
  private readonly keyCache = new Map<string, QueueKeys>();
  /** The keys of a queue, validating its name once (a bound function: prepareCall takes it per call). */
  private readonly keys = (queue: string): QueueKeys => {
    let k = this.keyCache.get(queue);
    if (!k) {
      k = new QueueKeys(this.prefix, validateName(queue, 'queue'));
      this.keyCache.set(queue, k);
    }
    return k;
  };
  private closed = false;
  private readonly maxPayloadBytes: number;
  private closing: Promise<void> | undefined;
  /** Instrumentation attached to this dispatcher (src/core/instrumentation.ts). */
  private readonly hooks = new HookChain();

  constructor(options: DispatcherOptions) {
    if (typeof options !== 'object' || options === null) throw new ConfigError('new Dispatcher() needs { connection }');
    this.prefix = options.prefix === undefined ? DEFAULT_PREFIX : validateName(options.prefix, 'prefix');
    const max = options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
    if (!Number.isInteger(max) || max < 1) {
      throw new ConfigError(`maxPayloadBytes must be a whole number of bytes >= 1, got ${describe(options.maxPayloadBytes)}`);
    }
    this.maxPayloadBytes = max;
    const { cap } = eventsSettings(options.events);
    const failoverMs = options.failoverTimeout === undefined ? DEFAULT_FAILOVER_TIMEOUT_MS : toMillisOrZero(options.failoverTimeout, 'failoverTimeout');
    this.transport =
      (options as Partial<TransportDispatcherOptions>)[TRANSPORT] ??
      new RedisTransport(options.connection, `heimdall:${this.prefix}:dispatcher`, cap, failoverMs);
  }

  /** The Redis client that sends commands (yours if you passed one). A ConfigError for an inline dispatcher, which has none. */
  get client(): RedisClient {
    return this.transport.client();
  }

  /**
   * Typed handles on the tasks of a class: `dispatcher.tasks(ReportService).generateReport.delay(42)`.
   * Using a method that carries no `@Task` rejects with `NotATaskError`.
   */
  tasks<T extends object>(cls: Constructor<T>): TaskProxy<T> {
    if (typeof cls !== 'function') throw new ConfigError(`tasks() takes a class, got ${describe(cls)}`);
    const defs = discover(cls);
    const refs = new Map<string, TaskRef<unknown[], unknown>>();
    return new Proxy({} as TaskProxy<T>, {
      get: (_target, prop) => {
        if (typeof prop !== 'string' || prop === 'then') return undefined;
        let ref = refs.get(prop);
        if (!ref) {
          const def = defs.get(prop);
          ref = def ? this.refFor(def) : this.notATask(`${cls.name}.${prop}`);
          refs.set(prop, ref);
        }
        return ref;
      },
    });
  }

  /**
   * Sends a task by registry name, without types. Options of a task this process knows
   * (unique, rate limit, queue) apply; an unknown name goes to `options.queue` or 'default'.
   */
  send<R = unknown>(name: string, args: readonly unknown[] = [], options: ApplyOptions = {}): Promise<TaskResult<R>> {
    if (typeof name !== 'string' || name === '') return Promise.reject(new ConfigError('send() needs a task name'));
    const def = taskByName(name);
    return this.enqueue<R>(name, def?.options, args, options);
  }

  /** A TaskResult for a known id. Ids generated for a non-default queue carry it; otherwise pass `queue`. */
  result<R = unknown>(id: string, options: { queue?: string } = {}): TaskResult<R> {
    if (typeof id !== 'string' || id === '') throw new ConfigError('result() needs a task id');
    const queue = options.queue ?? queueOfId(id) ?? DEFAULT_QUEUE;
    return makeTaskResult<R>(this.transport.results, this.keys(queue), id, undefined, false);
  }

  /**
   * The live workers, from the registry each worker renews every third of its lease: what they
   * are (host, pid, version, queues, concurrency), what they run, and their counts of ended tasks.
   * A worker that stopped heartbeating is gone once its lease has passed. `queues`: where to look.
   * Default: `'default'` and every queue a task registered in this process names.
   */
  workers(options: WorkersOptions = {}): Promise<WorkerInfo[]> {
    let queues: QueueKeys[];
    try {
      queues = this.registryQueues(options.queues, 'workers');
    } catch (err) {
      return Promise.reject(err);
    }
    return redisCall('reading the worker registry', () => this.transport.workers(queues));
  }

  /**
   * Asks the workers of these queues to answer (Celery's `inspect ping`), over Pub/Sub; resolves
   * after `timeout` with those that did, each once. Default queues as `workers()`.
   */
  ping(options: PingOptions = {}): Promise<PingReply[]> {
    let queues: QueueKeys[];
    let timeoutMs: number;
    try {
      queues = this.registryQueues(options.queues, 'ping');
      timeoutMs = options.timeout === undefined ? 1000 : toMillis(options.timeout, 'ping({ timeout })');
    } catch (err) {
      return Promise.reject(err);
    }
    return redisCall('pinging the workers', () => this.transport.ping(queues, timeoutMs));
  }

  /**
   * The events of these queues (queued, started, progress, succeeded, failed, retried, revoked,
   * rate-limited, ...) as an async iterator, read from each queue's bounded Redis stream on a
   * connection of its own; `for await` over it, and leave the loop (or abort `signal`) to close
   * it. Default queues as `workers()`; default start: now. `since` reads what the streams still
   * hold (they are capped by length and age), or resumes after an event's `cursor`.
   */
  events(options: EventsReadOptions = {}): AsyncIterableIterator<QueueEvent> {
    const queues = this.registryQueues(options.queues, 'events');
    return this.transport.events(queues, options.since, options.signal);
  }

  /** The queues `workers()` and `ping()` look at: the given ones, or 'default' and the registered tasks' queues. */
  private registryQueues(given: readonly string[] | undefined, what: string): QueueKeys[] {
    if (this.closed) throw new ConfigError('this dispatcher is closed');
    if (given !== undefined && !Array.isArray(given)) throw new ConfigError(`${what}({ queues }) must be an array of queue names`);
    const names = given ?? [...new Set([DEFAULT_QUEUE, ...registeredTasks().map((d) => d.options.queue)])];
    return names.map((q) => this.keys(q));
  }

  /** Closes the connections this dispatcher opened. A client you passed in stays open. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.closed = true;
      await this.transport.close();
    })();
    return this.closing;
  }

  /** Internal: attaches instrumentation hooks (heimdall-tasks/prometheus, heimdall-tasks/otel); returns their detach. */
  [INSTRUMENT](hooks: InstrumentationHooks): () => void {
    return this.hooks.add(hooks);
  }

  private refFor(def: TaskDefinition): TaskRef<unknown[], unknown> {
    return {
      name: def.name,
      delay: (...args) => this.enqueue(def.name, def.options, args, {}),
      applyAsync: (args, options) => this.enqueue(def.name, def.options, args, options ?? {}),
      delayMany: (argsList, options) => this.enqueueMany(def.name, def.options, argsList, options ?? {}),
      current: (...args) => this.current(def, args),
      lock: (...args) => this.lock(def, args),
    };
  }

  private notATask(what: string): TaskRef<unknown[], unknown> {
    const fail = (): Promise<never> => Promise.reject(new NotATaskError(what));
    return { name: what, delay: fail, applyAsync: fail, delayMany: fail, current: fail, lock: fail };
  }

  private async current(def: TaskDefinition, args: readonly unknown[]): Promise<TaskResult<unknown> | null> {
    const held = await this.lock(def, args);
    return held === null ? null : makeTaskResult(this.transport.results, this.keys(def.options.queue), held.holder, def.name, false);
  }

  private async lock(def: TaskDefinition, args: readonly unknown[]): Promise<UniqueLock | null> {
    if (!def.options.unique) throw new ConfigError(`${def.name} is not unique, so no task holds a lock for it`);
    const keys = this.keys(def.options.queue);
    const key = keys.lock(def.name, uniqueKey(def.name, def.options, args, argsToJson(args)));
    const held = await this.transport.lockOf(keys, key, `reading the unique lock of ${def.name}`);
    return held === null ? null : { key, ...held };
  }

  private enqueue<R>(name: string, opts: NormalizedTaskOptions | undefined, args: readonly unknown[], call: ApplyOptions): Promise<TaskResult<R>> {
    let prepared: PreparedCall;
    try {
      prepared = this.prepare(name, opts, args, call);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.dispatch<R>(prepared);
  }

  private async enqueueMany<R>(
    name: string,
    opts: NormalizedTaskOptions | undefined,
    argsList: readonly (readonly unknown[])[],
    call: ApplyOptions,
  ): Promise<TaskResult<R>[]> {
    if (!Array.isArray(argsList)) throw new ConfigError(`delayMany of ${name} takes an array of argument lists, got ${describe(argsList)}`);
    if (call.taskId !== undefined) throw new ConfigError('delayMany takes no taskId: each task gets its own id');
    const prepared: PreparedCall[] = [];
    for (let i = 0; i < argsList.length; i++) {
      try {
        if (!(i in argsList)) throw new ConfigError('is a hole in a sparse array; pass an argument list for every task');
        prepared.push(this.prepare(name, opts, argsList[i]!, call));
      } catch (err) {
        try {
          if (err instanceof Error) err.message = `argsList[${i}]: ${err.message}`;
        } catch {
          // a frozen error keeps its message
        }
        throw err;
      }
    }
    const settled = await Promise.allSettled(prepared.map((p) => this.dispatch<R>(p)));
    const results = settled.map((s) => (s.status === 'fulfilled' ? s.value : undefined));
    const failed = settled.findIndex((s) => s.status === 'rejected');
    if (failed === -1) return results as TaskResult<R>[];
    const errors = settled.map((s) => (s.status === 'rejected' ? (s.reason as unknown) : undefined));
    // Nothing sent: the error itself, so the caller can send the whole list again.
    if (results.every((r) => r === undefined)) throw errors[failed];
    throw new PartialDispatchError<R>(name, results, errors);
  }

  /** Checks one call and builds what the enqueue script needs for it (prepare-call.ts); throws on bad input, sending nothing. */
  private prepare(name: string, opts: NormalizedTaskOptions | undefined, args: readonly unknown[], call: ApplyOptions): PreparedCall {
    if (this.closed) throw new ConfigError('this dispatcher is closed');
    return prepareCall(name, opts, args, call, this.keys, this.maxPayloadBytes);
  }

  /** Sends one prepared task and resolves to its handle, through the send hooks when any is attached. */
  private dispatch<R>(p: PreparedCall): Promise<TaskResult<R>> {
    const hook = this.hooks.send;
    if (hook === undefined) return this.submit(p).then((outcome) => this.handle<R>(p, outcome));
    return hook({ name: p.name, queue: p.keys.queue, id: p.id }, (fields) => {
      if (fields !== undefined && fields.length > 0) p.task = { ...p.task, fields: [...p.task.fields, ...fields] };
      return this.submit(p).then((outcome) => this.handle<unknown>(p, outcome));
    }) as Promise<TaskResult<R>>;
  }

  /** Hands a prepared task to the transport (Redis: it shares one script call with the other tasks of this tick). */
  private submit(p: PreparedCall): Promise<EnqueueOutcome> {
    return this.transport.send(p);
  }

  /** Turns the script's answer for one task into its handle (or the error it calls for, see reply-codes.ts). */
  private handle<R>(p: PreparedCall, outcome: EnqueueOutcome): TaskResult<R> {
    const { id, duplicate, conflict } = enqueued(outcome, { name: p.name, id: p.id, customId: p.customId, uniqueRaises: p.opts?.uniqueRaises === true });
    return makeTaskResult<R>(this.transport.results, p.keys, id, p.name, duplicate, conflict);
  }
}
