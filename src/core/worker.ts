import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { nanoid } from 'nanoid';
import { closeClient, openClient, type OwnedClient } from './connection.js';
import { RetryRequest, taskStorage, type CurrentTask } from './current-task.js';
import { DEFAULT_RESULT_EXPIRES_MS, DEFAULT_RETRIES } from './task-options.js';
import type { ConnectionOptions } from './dispatcher.js';
import { describe, toMillis, toMillisOrZero, type Duration } from './durations.js';
import { ConfigError, NonRetryableError, outOfMemory, SerializationError, TaskRevokedError, TimeLimitExceededError } from './errors.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, QueueKeys, validateName } from './queue-keys.js';
import { QueueRunner, type Finish, type RunnerHost, type StartedTask } from './queue-runner.js';
import { discover, taskByName, type Constructor, type TaskDefinition } from './registry.js';
import { ScriptRunner } from './script-runner.js';
import { toJson } from './serialization.js';
import type { RemoteError } from './task-state.js';

/** Options of `new Worker()`. */
export interface WorkerOptions extends ConnectionOptions {
  /**
   * Objects whose `@Task` methods this worker runs: instances, used as they are, or classes,
   * built with `resolve` (or `new Class()` when there is no `resolve`). Default: `[]`.
   */
  services?: readonly object[];
  /** Builds the instance for a task's class, e.g. `(cls) => app.get(cls)` in NestJS. Called once per class. Default: none. */
  resolve?: (cls: Constructor) => object | Promise<object>;
  /** Queues to consume. Default: `['default']`. */
  queues?: readonly string[];
  /** Tasks run at once by this worker, across its queues. Default: 10. */
  concurrency?: number;
  /** A started task's lease; the worker renews it every third of this. Seconds or an `ms` string. Default: 30 s. */
  leaseDuration?: Duration;
  /** How long results are kept, unless the task sets its own. Seconds or an `ms` string. Default: one day. */
  resultExpires?: Duration;
  /**
   * This worker's id in task records. It must be unique among live workers: leases, finishes
   * and reclaims are matched by it. Default: `<hostname>:<pid>:<random>`.
   */
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
  /** A task failed and will run again after `delayMs` milliseconds (state RETRY). */
  retried: [TaskEvent & { error: RemoteError; delayMs: number; runtimeMs: number }];
  /**
   * A task ended REVOKED: `reason` 'revoked' (by a user), 'duplicate' (a newer task holds its
   * unique lock), or 'expired' (not started before its `expires`).
   */
  revoked: [Omit<TaskEvent, 'attempt'> & { reason: string }];
  /** A problem outside any task, such as a lost connection. The worker carries on. */
  error: [Error];
}

/** Options of `worker.close()`. */
export interface CloseOptions {
  /**
   * How long to wait for running tasks: seconds or an `ms` string. Tasks still running then
   * get their AbortSignal fired and go back to the queue. Default: wait as long as they take.
   */
  timeout?: Duration;
}

/** The AbortSignal of a run, made on first use (aborted at once if the run was already told to stop). */
function signalOf(run: Running): AbortSignal {
  if (!run.controller) {
    run.controller = new AbortController();
    if (run.aborted) run.controller.abort(run.aborted.reason);
  }
  return run.controller.signal;
}

/** A task this worker runs now. */
interface Running {
  runner: QueueRunner;
  task: StartedTask;
  /** Made on first use of the task's signal: most tasks never look at it, and making one is costly. */
  controller?: AbortController;
  /** Set when the task was told to stop; its signal is aborted with this reason. */
  aborted?: { reason: unknown };
  /** Its slot is free again (ended, revoked with terminate, lost, or handed back). */
  released: boolean;
  /** What currentTask() returns inside it, once it runs. */
  context?: CurrentTask;
}

type Outcome =
  | { ok: true; result: unknown; json: string | undefined }
  | { ok: false; error: RemoteError; retryDelayMs: number | undefined };

// A task that honours its AbortSignal gets this long to settle after its time limit.
const TIME_LIMIT_GRACE_MS = 100;
const DEFAULT_LEASE_MS = 30_000;

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
  private readonly inFlight = new Map<string, Running>();
  private readonly blockers: OwnedClient[] = [];
  private leaseTimer: NodeJS.Timeout | undefined;
  private state: 'new' | 'starting' | 'running' | 'closing' | 'closed' = 'new';
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
      concurrency,
      accepting: () => this.state === 'running',
      freeSlots: () => Math.max(0, this.concurrency - this.inFlight.size - this.reserved),
      reserve: (n) => {
        this.reserved += n;
        // Slots one queue's fetch reserved and gave back may be what another queue waits for.
        if (n < 0) for (const r of this.runners) r.poke();
      },
      launch: (runner, task) => this.launch(runner, task),
      rateLimited: (queue, id, name, argsJson, delayMs) =>
        this.emit('rateLimited', { id, name, queue, args: safeArgs(argsJson), delayMs }),
      revoked: (queue, id, name, argsJson, reason) => this.emit('revoked', { id, name, queue, args: safeArgs(argsJson), reason }),
      reportError: (reported) => {
        const err = outOfMemory(reported, `worker ${this.id}`);
        this.emit('error', err instanceof Error ? err : new Error(String(err)));
      },
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
    return this.inFlight.size;
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
      const name = `heimdall:${this.prefix}:worker`;
      const commands = openClient(this.options.connection, 'commands', name, {}, this.host.reportError);
      this.clients.push(commands);
      const scripts = new ScriptRunner(commands.client);
      await scripts.load();
      // After a reconnect, a fetch whose reply was lost may have started tasks this worker never heard of.
      commands.client.on('ready', () => {
        for (const r of this.runners) r.reconnected();
      });
      if (this.state !== 'starting') return; // close() was called meanwhile and closes the clients
      const subscriber = openClient(this.options.connection, 'subscriber', name, {}, this.host.reportError);
      this.clients.push(subscriber);
      subscriber.client.on('message', (channel: string, message: string) => this.onRevokeMessage(channel, message));
      for (const queue of this.queues) {
        const keys = new QueueKeys(this.prefix, queue);
        const blocking = openClient(this.options.connection, 'blocking', name, {}, this.host.reportError);
        this.clients.push(blocking);
        this.blockers.push(blocking);
        this.runners.push(new QueueRunner(this.host, keys, scripts, blocking.client));
      }
      // Revoke messages for running tasks arrive here, whichever process sent them.
      await subscriber.client.subscribe(...this.runners.map((r) => r.keys.revoke));
      if (this.state !== 'starting') return;
      this.state = 'running';
      for (const r of this.runners) r.start();
      this.leaseTimer = setInterval(() => void this.renewLeases(), Math.max(50, Math.floor(this.host.leaseMs / 3)));
      this.leaseTimer.unref();
    } catch (err) {
      if (this.state !== 'starting') return; // closed while starting: close() has the clients
      this.state = 'closed';
      await Promise.all(this.clients.map((c) => closeClient(c)));
      throw err;
    }
  }

  /**
   * Stops fetching and waits for running tasks to end and their results to be stored, then
   * closes the connections. With `timeout`, tasks still running then get their AbortSignal
   * fired and go back to the front of the queue (same id, same lock), so no task is lost.
   * Safe to call more than once.
   */
  close(options: CloseOptions = {}): Promise<void> {
    if (!this.closing) {
      const timeoutMs = options.timeout === undefined ? undefined : toMillisOrZero(options.timeout, 'close({ timeout })');
      this.closing = this.shutdown(timeoutMs);
    }
    return this.closing;
  }

  private async shutdown(timeoutMs: number | undefined): Promise<void> {
    const wasRunning = this.state === 'running';
    this.state = 'closing';
    if (wasRunning) {
      // Ends the blocking BLMOVEs at once; the command connection stays for the last finishes.
      for (const b of this.blockers) b.client.disconnect();
      const drained = Promise.all(this.runners.map((r) => r.stop()));
      if (timeoutMs !== undefined) {
        let timer: NodeJS.Timeout | undefined;
        const expired = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs)));
        const timedOut = await Promise.race([drained.then(() => false), expired]);
        clearTimeout(timer);
        if (timedOut) {
          await this.handBack();
          // Ends that cannot be stored (Redis down) must not hold close() forever: their leases
          // lapse and the tasks are recovered elsewhere.
          const stored = await Promise.race([drained.then(() => true), sleep(Math.max(1000, timeoutMs))]);
          if (!stored) {
            for (const r of this.runners) r.abandon();
            this.clients[0]?.client.disconnect();
          }
        }
      }
      await drained;
    }
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    await Promise.all(this.clients.map((c) => closeClient(c)));
    this.state = 'closed';
  }

  /** Aborts the tasks still running at the close timeout and puts them back in their queues. */
  private async handBack(): Promise<void> {
    const byRunner = new Map<QueueRunner, string[]>();
    for (const run of [...this.inFlight.values()]) {
      // Released first, so whatever the task does after the signal is not stored.
      this.release(run, undefined);
      this.abort(run, Object.assign(new Error('the worker is shutting down'), { name: 'WorkerShutdownError' }));
      const ids = byRunner.get(run.runner) ?? [];
      ids.push(run.task.id);
      byRunner.set(run.runner, ids);
    }
    for (const [runner, ids] of byRunner) {
      try {
        await runner.requeue(ids);
      } catch (err) {
        // Not put back now: their leases lapse and another worker recovers them.
        this.host.reportError(err);
      }
    }
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
    const stale = this.inFlight.get(runKey(runner.keys.queue, task.id));
    if (stale) {
      // This worker's own lease on the task lapsed (a long pause or outage) and its own fetch
      // recovered and restarted it: the old run is lost. Free its slot without touching the
      // runner's bookkeeping of the id, which now belongs to the new run.
      stale.released = true;
      this.inFlight.delete(runKey(runner.keys.queue, task.id));
      this.abort(stale, leaseLost(task.id));
      this.emit('error', new Error(`task ${task.id} (${task.name}) was recovered and restarted while this worker still ran it; the older run's end will not be stored`));
    }
    void this.execute(runner, task);
  }

  /** Fires a task's AbortSignal inside its own context, so listeners can still call currentTask(). */
  private abort(run: Running, reason: Error): void {
    if (run.aborted) return;
    run.aborted = { reason };
    const controller = run.controller;
    if (!controller) return; // nobody listens yet: signalOf() hands out an aborted signal
    if (run.context) taskStorage().run(run.context, () => controller.abort(reason));
    else controller.abort(reason);
  }

  /** Frees a task's slot once: with its end to store, or without (already ended in Redis). */
  private release(run: Running, finish: Finish | undefined): void {
    if (run.released) return;
    run.released = true;
    this.inFlight.delete(runKey(run.runner.keys.queue, run.task.id));
    if (finish) run.runner.finished(finish);
    else run.runner.drop(run.task.id);
    // Another queue may be waiting for the slot.
    for (const r of this.runners) if (r !== run.runner) r.poke();
  }

  private async execute(runner: QueueRunner, task: StartedTask): Promise<void> {
    const queue = runner.keys.queue;
    const run: Running = { runner, task, released: false };
    this.inFlight.set(runKey(queue, task.id), run);
    const began = performance.now();
    const def = taskByName(task.name);
    const expireMs = def?.options.resultExpiresMs ?? this.host.resultExpiresMs;
    const event: TaskEvent = { id: task.id, name: task.name, queue, args: [], attempt: task.attempt };
    let outcome: Outcome;
    let deadReason = '';
    try {
      event.args = parseArgs(task.argsJson);
      const args = event.args;
      this.emit('started', event);
      if (!def) {
        throw Object.assign(
          new Error(
            `no task named '${task.name}' is registered in worker ${this.id}: import the module that defines it in the worker process and list its class (or an instance) in services; under standard (TC39) decorators a class is only registered once it is listed there`,
          ),
          { name: 'UnknownTaskError' },
        );
      }
      const instance = await this.instanceFor(def);
      if (run.released) return; // handed back or revoked with terminate while its service was resolved
      const method = (instance as Record<string, unknown>)[def.methodName];
      if (typeof method !== 'function') throw new ConfigError(`${def.className}.${def.methodName} is not a method of the instance`);
      const context: CurrentTask = {
        id: task.id,
        name: task.name,
        queue,
        attempt: task.attempt,
        get signal() {
          return signalOf(run);
        },
        retry: (options) => {
          throw new RetryRequest(options);
        },
      };
      run.context = context;
      const running = taskStorage().run(context, () => method.apply(instance, args) as unknown);
      const result = task.timeLimitMs > 0 ? await this.withTimeLimit(run, Promise.resolve(running)) : await running;
      const json = result === undefined ? undefined : toJson(result, 'result');
      outcome = { ok: true, result, json };
    } catch (err) {
      if (err instanceof Error && (err.name === 'UnknownTaskError' || err.name === 'MalformedTaskError')) deadReason = err.message;
      // A message that cannot be run is not retried: it would fail (and be dead-lettered) again.
      outcome = { ok: false, error: toRemoteError(err), retryDelayMs: deadReason ? undefined : this.retryDelay(def, task, err) };
    }
    if (run.released) return; // revoked with terminate, lost, or handed back meanwhile
    const runtimeMs = performance.now() - began;
    const done = outcome;
    const stored = (result: string): void => {
      if (result === 'STALE') {
        this.emit(
          'error',
          new Error(
            `task ${task.id} ended but this worker no longer holds it (its lease lapsed and it was recovered, or its record was replaced); its result was not stored. If leases lapse, raise leaseDuration or keep the event loop free so they are renewed`,
          ),
        );
      } else if (result === 'REVOKED') {
        this.emit('revoked', { id: task.id, name: task.name, queue, args: event.args, reason: 'revoked' });
      } else if (result === 'RETRY' && !done.ok) {
        this.emit('retried', { ...event, error: done.error, delayMs: done.retryDelayMs ?? 0, runtimeMs });
      } else if (done.ok) {
        // Built field by field: an object spread here cost measurable CPU per task (BENCHMARKS.md).
        const { id, name, args, attempt } = event;
        this.emit('succeeded', { id, name, queue, args, attempt, result: done.result, runtimeMs });
      } else {
        this.emit('failed', { ...event, error: done.error, runtimeMs });
      }
    };
    let finish: Finish;
    if (done.ok) {
      const json = done.json;
      finish = { id: task.id, state: 'SUCCESS', field: json === undefined ? '' : 'r', value: json ?? '', expireMs, retryDelayMs: 0, deadReason, stored };
    } else {
      finish = {
        id: task.id,
        state: done.retryDelayMs !== undefined ? 'RETRY' : 'FAILURE',
        field: 'e',
        value: JSON.stringify(done.error),
        expireMs,
        retryDelayMs: done.retryDelayMs ?? 0,
        deadReason,
        stored,
      };
    }
    this.release(run, finish);
  }

  /**
   * Races a task against its time limit. At the limit the signal fires; a task that honours it
   * gets a short grace to settle, one that ignores it is left running (and reported) while its
   * slot and lock are freed.
   */
  private withTimeLimit(run: Running, promise: Promise<unknown>): Promise<unknown> {
    const limitMs = run.task.timeLimitMs;
    return new Promise((resolve, reject) => {
      let settled = false;
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        const error = new TimeLimitExceededError(run.task.id, limitMs);
        if (run.released) {
          // Handed back at close, revoked with terminate, or lost: no longer this worker's to limit or report.
          settled = true;
          reject(error);
          return;
        }
        this.abort(run, error);
        const grace = setTimeout(() => {
          if (settled) return;
          settled = true;
          this.emit(
            'error',
            new Error(
              `task ${run.task.id} (${run.task.name}) ignored the AbortSignal at its time limit; its promise is still running (pass currentTask().signal to what the task awaits)`,
            ),
          );
          reject(error);
        }, TIME_LIMIT_GRACE_MS);
        promise.then(
          () => undefined,
          () => undefined,
        ).finally(() => {
          clearTimeout(grace);
          if (settled) return;
          settled = true;
          reject(error);
        });
      }, limitMs);
      promise.then(
        (value) => {
          if (settled || timedOut) return;
          settled = true;
          clearTimeout(timer);
          resolve(value);
        },
        (err: unknown) => {
          if (settled || timedOut) return;
          settled = true;
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }

  /** The delay before a retry of this failure, or undefined when it is final. */
  private retryDelay(def: TaskDefinition | undefined, task: StartedTask, err: unknown): number | undefined {
    if (!def) return undefined;
    const requested = err instanceof RetryRequest;
    const policy = def.options.retries ?? (requested ? DEFAULT_RETRIES : undefined);
    if (!policy || task.retries >= policy.max) return undefined;
    if (!requested) {
      if (
        err instanceof ConfigError ||
        err instanceof SerializationError ||
        err instanceof NonRetryableError ||
        err instanceof TaskRevokedError
      ) {
        return undefined;
      }
      if (policy.on && !policy.on.some((cls) => err instanceof cls)) return undefined;
    } else if (err.countdownMs !== undefined) {
      return err.countdownMs;
    }
    const computed =
      policy.backoff.kind === 'fixed'
        ? policy.backoff.ms
        : Math.min(policy.backoff.capMs, policy.backoff.baseMs * 2 ** task.retries);
    return policy.jitter ? Math.floor(Math.random() * (computed + 1)) : computed;
  }

  /** A revoke broadcast on a queue's revoke channel: `<id> <terminate 0|1>`. */
  private onRevokeMessage(channel: string, message: string): void {
    const runner = this.runners.find((r) => r.keys.revoke === channel);
    const [id, terminate] = message.split(' ');
    const run = id === undefined || !runner ? undefined : this.inFlight.get(runKey(runner.keys.queue, id));
    if (!run) return;
    this.stopTask(run, terminate === '1' ? 'terminated' : 'revoked');
  }

  /** Acts on a revoke or a lost lease: fires the signal, and frees the slot when Redis already ended the task. */
  private stopTask(run: Running, reason: string): void {
    const { id, name } = run.task;
    this.abort(
      run,
      reason === 'lost'
        ? leaseLost(id)
        : new TaskRevokedError(id, 'revoked'),
    );
    if (reason === 'revoked') return; // the task's own end is stored as REVOKED (or SUCCESS)
    this.release(run, undefined);
    if (reason === 'terminated') {
      this.emit('revoked', { id, name, queue: run.runner.keys.queue, args: safeArgs(run.task.argsJson), reason: 'revoked' });
    } else {
      this.emit('error', new Error(`task ${id} (${name}) is no longer this worker's: its lease lapsed and it was recovered`));
    }
  }

  private async renewLeases(): Promise<void> {
    for (const r of this.runners) {
      try {
        const stop = await r.renewLeases();
        for (let i = 0; i < stop.length; i += 2) {
          const run = this.inFlight.get(runKey(r.keys.queue, String(stop[i])));
          if (run) this.stopTask(run, String(stop[i + 1]));
        }
      } catch (err) {
        this.host.reportError(err);
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
      if (event !== 'error') this.host.reportError(err);
    }
  }
}

/** Key of a running task in the worker's map: ids are unique per queue only (a custom taskId may repeat). */
function runKey(queue: string, id: string): string {
  return `${queue}\u0000${id}`;
}

/** The signal reason of a task whose lease lapsed and was recovered elsewhere. */
function leaseLost(id: string): Error {
  return Object.assign(
    new Error(
      `task ${id} is no longer this worker's: its lease lapsed and it was recovered; raise leaseDuration, or keep the event loop free (a task that blocks it stops lease renewals)`,
    ),
    { name: 'LeaseLostError' },
  );
}

function sleep(ms: number): Promise<false> {
  return new Promise((resolve) => setTimeout(() => resolve(false), ms).unref());
}

function safeArgs(json: string): unknown[] {
  try {
    return parseArgs(json);
  } catch {
    return [];
  }
}

