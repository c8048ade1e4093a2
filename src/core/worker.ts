import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { nanoid } from 'nanoid';
import { closeClient, openClient, type OwnedClient } from './connection.js';
import { taskStorage, type CurrentTask } from './current-task.js';
import type { ConnectionOptions } from './dispatcher.js';
import { describe, toMillis, type Duration } from './durations.js';
import { ConfigError, SerializationError } from './errors.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, QueueKeys, validateName } from './queue-keys.js';
import { QueueRunner, type Finish, type RunnerHost, type StartedTask } from './queue-runner.js';
import { discover, taskByName, type Constructor, type TaskDefinition } from './registry.js';
import { ScriptRunner } from './script-runner.js';
import { toJson } from './serialization.js';
import type { RemoteError } from './task-state.js';
import { extendLeases } from '../redis-scripts/scripts.generated.js';

/** Options of `new Worker()`. */
export interface WorkerOptions extends ConnectionOptions {
  /**
   * Objects whose `@Task` methods this worker runs: instances, used as they are, or classes,
   * built with `resolve` (or `new Class()` when there is no `resolve`).
   */
  services?: readonly object[];
  /** Builds the instance for a task's class, e.g. `(cls) => app.get(cls)` in NestJS. Called once per class. */
  resolve?: (cls: Constructor) => object | Promise<object>;
  /** Queues to consume. Default: `['default']`. */
  queues?: readonly string[];
  /** Tasks run at once by this worker, across its queues. Default: 10. */
  concurrency?: number;
  /** A started task's lease; the worker renews it every third of this. Seconds or an `ms` string. Default: 30 s. */
  leaseDuration?: Duration;
  /** How long results are kept, unless the task sets its own. Seconds or an `ms` string. Default: one day. */
  resultExpires?: Duration;
  /** This worker's id in task records. Default: `<hostname>:<pid>:<random>`. */
  name?: string;
}

/** Identifies the task an event is about. */
export interface TaskEvent {
  id: string;
  name: string;
  queue: string;
  args: unknown[];
  attempt: number;
}

/** Events of a Worker and their payloads. */
export interface WorkerEvents {
  /** A task began to run. */
  started: [TaskEvent];
  /** A task returned; its result is stored. `runtimeMs` is its run time in milliseconds. */
  succeeded: [TaskEvent & { result: unknown; runtimeMs: number }];
  /** A task threw (or its result could not be stored); the error is stored. */
  failed: [TaskEvent & { error: RemoteError; runtimeMs: number }];
  /** A task was over its rate limit and goes back to the delayed set for `delayMs` milliseconds. */
  rateLimited: [Omit<TaskEvent, 'attempt'> & { delayMs: number }];
  /** A task ended REVOKED instead of running (`reason` 'duplicate': a newer task holds its unique lock). */
  revoked: [Omit<TaskEvent, 'attempt'> & { reason: string }];
  /** A problem outside any task, such as a lost connection. The worker carries on. */
  error: [Error];
}

const DEFAULT_LEASE_MS = 30_000;
const DEFAULT_RESULT_EXPIRES_MS = 24 * 60 * 60 * 1000;

function parseArgs(json: string): unknown[] {
  try {
    const v: unknown = JSON.parse(json);
    if (Array.isArray(v)) return v;
  } catch {
    // reported below
  }
  throw Object.assign(new Error(`the task's arguments are not a JSON array: ${json.slice(0, 200)}`), { name: 'MalformedTaskError' });
}

function toRemoteError(err: unknown): RemoteError {
  if (err instanceof Error) return { name: err.name, message: err.message, traceback: err.stack };
  return { name: 'Error', message: typeof err === 'string' ? err : describe(err), traceback: undefined };
}

/**
 * Runs tasks. Start as many as you like, in as many processes: unique locks and rate limits
 * hold across all of them.
 */
export class Worker {
  /** This worker's id, as stored in the records of the tasks it runs. */
  readonly id: string;
  /** Queues this worker consumes. */
  readonly queues: readonly string[];
  /** Tasks run at once. */
  readonly concurrency: number;
  private readonly prefix: string;
  private readonly options: WorkerOptions;
  private readonly events = new EventEmitter();
  private readonly instances = new Map<object, object | Promise<object>>();
  private readonly classes = new Set<object>();
  private readonly runners: QueueRunner[] = [];
  private readonly clients: OwnedClient[] = [];
  private readonly host: RunnerHost;
  private readonly inFlight = new Map<string, AbortController>();
  private leaseTimer: NodeJS.Timeout | undefined;
  private state: 'new' | 'starting' | 'running' | 'closing' | 'closed' = 'new';
  private running = 0;
  private reserved = 0;
  private closing: Promise<void> | undefined;

  constructor(options: WorkerOptions) {
    if (typeof options !== 'object' || options === null) throw new ConfigError('new Worker() needs { connection, services }');
    this.options = options;
    this.prefix = options.prefix === undefined ? DEFAULT_PREFIX : validateName(options.prefix, 'prefix');
    const queues = options.queues ?? [DEFAULT_QUEUE];
    if (!Array.isArray(queues) || queues.length === 0) throw new ConfigError('queues must be a non-empty array of queue names');
    this.queues = [...new Set(queues.map((q) => validateName(q, 'queue')))];
    const concurrency = options.concurrency ?? 10;
    if (!Number.isInteger(concurrency) || concurrency < 1) {
      throw new ConfigError(`concurrency must be a whole number >= 1, got ${describe(concurrency)}`);
    }
    this.concurrency = concurrency;
    if (options.resolve !== undefined && typeof options.resolve !== 'function') {
      throw new ConfigError('resolve must be a function (cls) => instance');
    }
    const leaseMs = options.leaseDuration === undefined ? DEFAULT_LEASE_MS : toMillis(options.leaseDuration, 'leaseDuration');
    const resultExpiresMs =
      options.resultExpires === undefined ? DEFAULT_RESULT_EXPIRES_MS : toMillis(options.resultExpires, 'resultExpires');
    this.id = options.name ?? `${hostname()}:${process.pid}:${nanoid(6)}`;
    for (const service of options.services ?? []) this.addService(service);
    this.host = {
      workerId: this.id,
      leaseMs,
      resultExpiresMs,
      accepting: () => this.state === 'running',
      freeSlots: () => Math.max(0, this.concurrency - this.running - this.reserved),
      reserve: (n) => {
        this.reserved += n;
      },
      launch: (runner, task) => this.launch(runner, task),
      rateLimited: (queue, id, name, argsJson, delayMs) =>
        this.emit('rateLimited', { id, name, queue, args: safeArgs(argsJson), delayMs }),
      revoked: (queue, id, name, argsJson, reason) => this.emit('revoked', { id, name, queue, args: safeArgs(argsJson), reason }),
      reportError: (err) => this.emit('error', err instanceof Error ? err : new Error(String(err))),
    };
  }

  /** Subscribes to a worker event. */
  on<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): this {
    this.events.on(event, listener as (...args: unknown[]) => void);
    return this;
  }

  /** Subscribes to the next occurrence of a worker event. */
  once<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): this {
    this.events.once(event, listener as (...args: unknown[]) => void);
    return this;
  }

  /** Removes a listener. */
  off<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): this {
    this.events.off(event, listener as (...args: unknown[]) => void);
    return this;
  }

  /** Number of tasks running now. */
  get activeCount(): number {
    return this.running;
  }

  /** Connects, loads the scripts, and starts consuming. Resolves once the worker is fetching. */
  async start(): Promise<void> {
    if (this.state !== 'new') {
      throw new ConfigError(
        this.state === 'closing' || this.state === 'closed'
          ? 'this worker was closed; create a new Worker to start again'
          : 'this worker was already started',
      );
    }
    this.state = 'starting';
    try {
      const commands = openClient(this.options.connection, 'commands', `heimdall:${this.prefix}:worker`, {}, this.host.reportError);
      this.clients.push(commands);
      const scripts = new ScriptRunner(commands.client);
      await scripts.load();
      if (this.state !== 'starting') return; // close() was called meanwhile and closes the clients
      for (const queue of this.queues) {
        const blocking = openClient(this.options.connection, 'blocking', `heimdall:${this.prefix}:worker`, {}, this.host.reportError);
        this.clients.push(blocking);
        this.runners.push(new QueueRunner(this.host, new QueueKeys(this.prefix, queue), scripts, blocking.client));
      }
      this.state = 'running';
      for (const r of this.runners) r.start();
      this.leaseTimer = setInterval(() => void this.renewLeases(scripts), Math.max(50, Math.floor(this.host.leaseMs / 3)));
      this.leaseTimer.unref();
    } catch (err) {
      if (this.state !== 'starting') return; // closed while starting: close() has the clients
      this.state = 'closed';
      await Promise.all(this.clients.map((c) => closeClient(c)));
      throw err;
    }
  }

  /**
   * Stops fetching, waits for running tasks to end and their results to be stored, then
   * closes the connections. Safe to call more than once.
   */
  close(): Promise<void> {
    if (!this.closing) this.closing = this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const wasRunning = this.state === 'running';
    this.state = 'closing';
    if (wasRunning) {
      // Ends the blocking BLMOVEs at once; the command connection stays for the last finishes.
      for (let i = 1; i < this.clients.length; i++) this.clients[i]!.client.disconnect();
      await Promise.all(this.runners.map((r) => r.stop()));
    }
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    await Promise.all(this.clients.map((c) => closeClient(c)));
    this.state = 'closed';
  }

  private addService(service: object): void {
    if (typeof service === 'function') {
      discover(service as Constructor);
      this.classes.add(service);
      return;
    }
    if (typeof service !== 'object' || service === null) {
      throw new ConfigError(`services must hold instances or classes, got ${describe(service)}`);
    }
    // The instance serves its class and every base class that declares tasks.
    for (let c: unknown = service.constructor; typeof c === 'function' && c !== Object; c = Object.getPrototypeOf(c)) {
      discover(c as Constructor);
      if (!this.instances.has(c)) this.instances.set(c, service);
    }
  }

  private instanceFor(def: TaskDefinition): object | Promise<object> {
    const known = this.instances.get(def.owner);
    if (known) return known;
    let made: object | Promise<object>;
    if (this.options.resolve) {
      const resolve = this.options.resolve;
      const check = (instance: unknown): object => {
        if (typeof instance !== 'object' || instance === null) {
          throw new ConfigError(`resolve(${def.className}) returned ${describe(instance)}; it must return an instance of the class`);
        }
        return instance;
      };
      const value = resolve(def.owner);
      made = value instanceof Promise ? value.then(check) : check(value);
    }
    else if (this.classes.has(def.owner)) made = new (def.owner as unknown as new () => object)();
    else {
      throw new ConfigError(
        `worker ${this.id} has no instance of ${def.className} for task ${def.name}: add one to services, or pass resolve`,
      );
    }
    this.instances.set(def.owner, made);
    // A failed resolve is not cached: the next task of the class tries again.
    if (made instanceof Promise) made.catch(() => this.instances.delete(def.owner));
    return made;
  }

  private launch(runner: QueueRunner, task: StartedTask): void {
    this.running++;
    void this.execute(runner, task);
  }

  private async execute(runner: QueueRunner, task: StartedTask): Promise<void> {
    const queue = runner.keys.queue;
    const controller = new AbortController();
    this.inFlight.set(task.id, controller);
    let args: unknown[] = [];
    const began = performance.now();
    let finish: Omit<Finish, 'stored'>;
    let event: TaskEvent = { id: task.id, name: task.name, queue, args, attempt: task.attempt };
    let outcome: { ok: true; result: unknown } | { ok: false; error: RemoteError };
    const def = taskByName(task.name);
    const expireMs = def?.options.resultExpiresMs ?? this.host.resultExpiresMs;
    try {
      args = parseArgs(task.argsJson);
      event = { ...event, args };
      this.emit('started', event);
      if (!def) {
        throw Object.assign(
          new Error(
            `no task named '${task.name}' is registered in worker ${this.id}: import the module that defines it in the worker process and list its class (or an instance) in services; under standard (TC39) decorators a class is only registered once it is listed there`,
          ),
          {
            name: 'UnknownTaskError',
          },
        );
      }
      const instance = await this.instanceFor(def);
      const method = (instance as Record<string, unknown>)[def.methodName];
      if (typeof method !== 'function') throw new ConfigError(`${def.className}.${def.methodName} is not a method of the instance`);
      const context: CurrentTask = { id: task.id, name: task.name, queue, attempt: task.attempt, signal: controller.signal };
      const result: unknown = await taskStorage().run(context, () => method.apply(instance, args));
      let json: string | undefined;
      try {
        json = result === undefined ? undefined : toJson(result, 'result');
        outcome = { ok: true, result };
        finish = { id: task.id, state: 'SUCCESS', field: json === undefined ? '' : 'r', value: json ?? '', expireMs };
      } catch (err) {
        if (!(err instanceof SerializationError)) throw err;
        outcome = { ok: false, error: toRemoteError(err) };
        finish = { id: task.id, state: 'FAILURE', field: 'e', value: JSON.stringify(outcome.error), expireMs };
      }
    } catch (err) {
      outcome = { ok: false, error: toRemoteError(err) };
      finish = { id: task.id, state: 'FAILURE', field: 'e', value: JSON.stringify(outcome.error), expireMs };
    }
    const runtimeMs = performance.now() - began;
    this.inFlight.delete(task.id);
    this.running--;
    runner.finished({
      ...finish,
      stored: (stale) => {
        if (stale) {
          this.emit('error', new Error(`task ${task.id} ended after its lease lapsed; its result was not stored`));
        } else if (outcome.ok) {
          this.emit('succeeded', { ...event, result: outcome.result, runtimeMs });
        } else {
          this.emit('failed', { ...event, error: outcome.error, runtimeMs });
        }
      },
    });
    // Another queue may be waiting for the slot this task freed.
    for (const r of this.runners) if (r !== runner) r.poke();
  }

  private async renewLeases(scripts: ScriptRunner): Promise<void> {
    for (const r of this.runners) {
      if (r.running.size === 0) continue;
      try {
        await scripts.run(extendLeases, [r.keys.active], [this.host.leaseMs, ...r.running]);
      } catch (err) {
        this.emit('error', err instanceof Error ? err : new Error(String(err)));
      }
    }
  }

  private emit<E extends keyof WorkerEvents>(event: E, ...args: WorkerEvents[E]): void {
    if (event === 'error' && this.events.listenerCount('error') === 0) {
      console.error(`[heimdall-tasks] worker ${this.id}:`, args[0]);
      return;
    }
    try {
      this.events.emit(event, ...args);
    } catch (err) {
      // A throwing listener must not stop the worker.
      if (event !== 'error') this.emit('error', err instanceof Error ? err : new Error(String(err)));
    }
  }
}

function safeArgs(json: string): unknown[] {
  try {
    const v: unknown = JSON.parse(json);
    return Array.isArray(v) ? v : [];
  } catch {
    return [];
  }
}

