import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { nanoid } from 'nanoid';
import { closeClient, openClient, type OwnedClient } from './connection.js';
import { RetryRequest, taskStorage, type CurrentTask } from './current-task.js';
import { DEFAULT_RESULT_EXPIRES_MS, DEFAULT_RETRIES } from './task-options.js';
import { DEFAULT_MAX_PAYLOAD_BYTES, type ConnectionOptions } from './dispatcher.js';
import { describe, toMillis, toMillisOrZero, type Duration } from './durations.js';
import { callChecks, type LockCheck, type RateCheck } from './call-checks.js';
import {
  ConfigError,
  NonRetryableError,
  outOfMemory,
  PayloadTooLargeError,
  SerializationError,
  StaleRunError,
  TaskRevokedError,
  TimeLimitExceededError,
} from './errors.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, QueueKeys, validateName } from './queue-keys.js';
import { QueueRunner, type Finish, type RunnerHost, type StartedTask, type Verdict } from './queue-runner.js';
import { discover, registeredTasks, taskByName, type Constructor, type TaskDefinition } from './registry.js';
import { safeInstanceOf, toRemoteError } from './remote-error.js';
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
   * Largest result stored, in bytes of its JSON (UTF-8). A task whose result is larger ends
   * FAILURE with a PayloadTooLargeError. Default: 524288 (512 KiB), as the Dispatcher's.
   */
  maxPayloadBytes?: number;
  /**
   * This worker's id in task records. It must be unique among live workers: leases, finishes
   * and reclaims are matched by it. Default: `<hostname>:<pid>:<random>`.
   */
  name?: string;
  /**
   * How long a task whose name this worker does not run may wait for a worker that does,
   * counted from the first time a worker handed it back: seconds or an `ms` string; `0` fails
   * it at once. Such a task is handed back without counting an attempt, with a delay that
   * doubles from 250 ms up to 10 s, and runs as soon as a worker that declares its name takes
   * it; while some live worker of the queue declares the name it waits as long as that takes.
   * Only when none has for this long does it end FAILURE with `UnknownTaskError`. Default: 5
   * minutes: long enough for a rolling deploy to bring up the first worker of a new build, short
   * enough that a misspelt name fails within minutes.
   */
  unknownTaskGrace?: Duration;
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
  /** Set when the worker could not compute the options it admits a message under (its key function threw): the run fails with it. */
  admissionError?: unknown;
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
const DEFAULT_UNKNOWN_TASK_GRACE_MS = 5 * 60_000;

function parseArgs(json: string): unknown[] {
  try {
    const v: unknown = JSON.parse(json);
    if (Array.isArray(v)) return v;
  } catch {
    // reported below
  }
  throw Object.assign(new Error(`the task's arguments are not a JSON array: ${json.slice(0, 200)}`), { name: 'MalformedTaskError' });
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
  private readonly maxPayloadBytes: number;
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
  private readonly graceMs: number;

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
    const maxPayloadBytes = options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
    if (!Number.isInteger(maxPayloadBytes) || maxPayloadBytes < 1) {
      throw new ConfigError(`maxPayloadBytes must be a whole number of bytes >= 1, got ${describe(options.maxPayloadBytes)}`);
    }
    this.maxPayloadBytes = maxPayloadBytes;
    if (options.resolve !== undefined && typeof options.resolve !== 'function') {
      throw new ConfigError('resolve must be a function (cls) => instance');
    }
    const leaseMs = options.leaseDuration === undefined ? DEFAULT_LEASE_MS : toMillis(options.leaseDuration, 'leaseDuration');
    const resultExpiresMs =
      options.resultExpires === undefined ? DEFAULT_RESULT_EXPIRES_MS : toMillis(options.resultExpires, 'resultExpires');
    this.graceMs =
      options.unknownTaskGrace === undefined ? DEFAULT_UNKNOWN_TASK_GRACE_MS : toMillisOrZero(options.unknownTaskGrace, 'unknownTaskGrace');
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
      // Anything a listener throws gets here: it is described without being trusted. A full
      // Redis's refusal becomes a RedisOutOfMemoryError.
      reportError: (reported) => {
        if (safeInstanceOf(reported, Error) !== true) return this.emit('error', new Error(toRemoteError(reported).message));
        this.emit('error', outOfMemory(reported, `worker ${this.id}`) as Error);
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
        this.runners.push(new QueueRunner(this.host, keys, scripts, blocking.client, commands.client));
      }
      // Revoke messages for running tasks arrive here, whichever process sent them.
      await subscriber.client.subscribe(...this.runners.map((r) => r.keys.revoke));
      // Before the first fetch, so other workers that meet these tasks know to hand them back.
      // Not a reason to refuse to start: the next tick declares them again.
      await this.declareNames().catch((err: unknown) => this.host.reportError(err));
      if (this.state !== 'starting') return;
      this.state = 'running';
      for (const r of this.runners) r.start();
      this.leaseTimer = setInterval(() => void this.tick(), this.tickMs());
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
    const byRunner = new Map<QueueRunner, StartedTask[]>();
    for (const run of [...this.inFlight.values()]) {
      // Released first, so whatever the task does after the signal is not stored.
      this.release(run, undefined);
      this.abort(run, Object.assign(new Error('the worker is shutting down'), { name: 'WorkerShutdownError' }));
      const runs = byRunner.get(run.runner) ?? [];
      runs.push(run.task);
      byRunner.set(run.runner, runs);
    }
    for (const [runner, runs] of byRunner) {
      try {
        await runner.requeue(runs);
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
    const key = runKey(runner.keys.queue, task.id);
    const stale = this.inFlight.get(key);
    if (stale) {
      // This worker's own run of the task lost its lease (a long pause or outage) and the task
      // was started again, here: the old run is no longer current. Free its slot without touching
      // the runner's bookkeeping of the id, which now belongs to the new run.
      stale.released = true;
      this.inFlight.delete(key);
      this.abort(stale, leaseLost(task.id));
      this.emit('error', new StaleRunError(task.id, task.name, 'STARTED', 'end'));
    }
    const run: Running = { runner, task, released: false };
    this.inFlight.set(key, run);
    const def = taskByName(task.name);
    // Most runs go straight to execute(); only a name this worker does not run, or a message that
    // lacks a check the worker's definition has, takes one more script call first.
    const direct = def !== undefined && this.serves(def) && !this.needsAdmission(def, task);
    const running = direct ? this.execute(run, def) : this.run(run, def);
    running.catch((err: unknown) => this.executeFailed(run, err));
  }

  private needsAdmission(def: TaskDefinition, task: StartedTask): boolean {
    return (def.options.unique && !task.carriesLock) || (def.options.rateLimit !== undefined && !task.carriesRate);
  }

  /** Whether this worker runs a task: its class is registered here and served (an instance, a class in services, or resolve). */
  private serves(def: TaskDefinition): boolean {
    return this.options.resolve !== undefined || this.instances.has(def.owner) || this.classes.has(def.owner);
  }

  /**
   * A started run: declined when this worker does not run the task, admitted first when the
   * message lacks the unique lock or rate limit of the worker's definition, then executed.
   */
  private async run(run: Running, def: TaskDefinition | undefined): Promise<void> {
    if (!def || !this.serves(def)) return this.decline(run, def);
    if (this.needsAdmission(def, run.task) && !(await this.admit(run, def))) return;
    await this.execute(run, def);
  }

  /**
   * Hands back a task this worker does not run, for a worker that does (a rolling deploy, another
   * app on the same prefix): no attempt counted, FAILURE only after `unknownTaskGrace`.
   */
  private async decline(run: Running, def: TaskDefinition | undefined): Promise<void> {
    const { task, runner } = run;
    const queue = runner.keys.queue;
    const why = def
      ? `its class ${def.className} is registered there but not in services, and there is no resolve`
      : 'no class registered there declares it';
    const message =
      `no task named '${task.name}' is run by worker ${this.id} (${why}), and no worker of queue '${queue}' ` +
      `declared it within unknownTaskGrace (${this.graceMs} ms): import the module that defines it in the worker process and ` +
      'list its class (or an instance) in services; under standard (TC39) decorators a class is only registered once it is listed there';
    const verdict = await this.settle(run, () => runner.decline(task, this.graceMs, message));
    if (!verdict) return;
    this.release(run, undefined);
    const [outcome, detail] = verdict;
    if (outcome === 'FAILURE') {
      const error = { name: 'UnknownTaskError', message: detail, traceback: undefined };
      this.emit('failed', { id: task.id, name: task.name, queue, args: safeArgs(task.argsJson), attempt: task.attempt - 1, error, runtimeMs: 0 });
    } else if (outcome === 'REVOKED') {
      this.emit('revoked', { id: task.id, name: task.name, queue, args: safeArgs(task.argsJson), reason: detail });
    } else if (outcome === 'STALE') {
      this.emit('error', new StaleRunError(task.id, task.name, detail || undefined, 'end'));
    }
  }

  /**
   * Admits a run under the worker's own options where the message lacks them (see admit-3.lua).
   * Resolves true when the task may run.
   */
  private async admit(run: Running, def: TaskDefinition): Promise<boolean> {
    const { task, runner } = run;
    let lock: LockCheck | undefined;
    let rate: RateCheck | undefined;
    try {
      ({ lock, rate } = callChecks(runner.keys, def.name, def.options, parseArgs(task.argsJson), task.argsJson, {
        lock: !task.carriesLock,
        rate: !task.carriesRate,
      }));
    } catch (err) {
      // Malformed arguments, or a key or rateLimit function that throws: the run fails with it.
      run.admissionError = err;
      return true;
    }
    const verdict = await this.settle(run, () => runner.admit(task, lock, rate));
    if (!verdict) return false;
    const [outcome, detail] = verdict;
    if (outcome === 'RUN') return true;
    this.release(run, undefined);
    const queue = runner.keys.queue;
    const args = safeArgs(task.argsJson);
    if (outcome === 'REVOKED') this.emit('revoked', { id: task.id, name: task.name, queue, args, reason: detail });
    else if (outcome === 'LIMITED') this.emit('rateLimited', { id: task.id, name: task.name, queue, args, delayMs: Number(detail) });
    else if (outcome === 'FAILURE') {
      const error = { name: 'MalformedTaskError', message: detail, traceback: undefined };
      this.emit('failed', { id: task.id, name: task.name, queue, args, attempt: task.attempt, error, runtimeMs: 0 });
    } else this.emit('error', new StaleRunError(task.id, task.name, detail || undefined, 'end'));
    return false;
  }

  /** Runs an admit or decline call until Redis answers; undefined when the run was released meanwhile (handed back at close). */
  private async settle(run: Running, call: () => Promise<Verdict>): Promise<Verdict | undefined> {
    for (let failures = 0; ; failures++) {
      try {
        const verdict = await call();
        return run.released ? undefined : verdict;
      } catch (err) {
        if (run.released) return undefined;
        this.host.reportError(err);
        await sleep(Math.min(5000, 100 * 2 ** failures));
        if (run.released) return undefined;
      }
    }
  }

  /**
   * Last resort, for a fault in execute() itself: the task still ends FAILURE (unless its slot
   * was freed already), and the fault is reported instead of becoming an unhandled rejection.
   */
  private executeFailed(run: Running, err: unknown): void {
    const { runner, task } = run;
    try {
      const error = toRemoteError(err);
      this.emit('error', new Error(`task ${task.id} (${task.name}) failed inside the worker: ${error.name}: ${error.message}`));
      if (run.released) return;
      const queue = runner.keys.queue;
      const event: TaskEvent = { id: task.id, name: task.name, queue, args: safeArgs(task.argsJson), attempt: task.attempt };
      this.release(run, {
        id: task.id,
        token: task.token,
        state: 'FAILURE',
        field: 'e',
        value: JSON.stringify(error),
        expireMs: taskByName(task.name)?.options.resultExpiresMs ?? this.host.resultExpiresMs,
        retryDelayMs: 0,
        deadReason: '',
        stored: (outcome, detail) => {
          if (outcome === 'FAILURE') this.emit('failed', { ...event, error, runtimeMs: 0 });
          else if (outcome === 'STALE') this.emit('error', new StaleRunError(task.id, task.name, detail || undefined, 'end'));
        },
      });
    } catch {
      // Not even that: free the slot; the lease lapses and the task is recovered elsewhere.
      if (!run.released) this.release(run, undefined);
    }
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
    else run.runner.drop(run.task.id, run.task.token);
    // Another queue may be waiting for the slot.
    for (const r of this.runners) if (r !== run.runner) r.poke();
  }

  private async execute(run: Running, def: TaskDefinition): Promise<void> {
    const { runner, task } = run;
    const queue = runner.keys.queue;
    const began = performance.now();
    const expireMs = def.options.resultExpiresMs ?? this.host.resultExpiresMs;
    const event: TaskEvent = { id: task.id, name: task.name, queue, args: [], attempt: task.attempt };
    let outcome: Outcome;
    let deadReason = '';
    try {
      event.args = parseArgs(task.argsJson);
      const args = event.args;
      this.emit('started', event);
      if (run.admissionError !== undefined) throw run.admissionError;
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
      if (json !== undefined && json.length > this.maxPayloadBytes / 3) {
        // Up to 3 bytes per UTF-16 unit: only a long result needs counting.
        const bytes = Buffer.byteLength(json);
        if (bytes > this.maxPayloadBytes) throw new PayloadTooLargeError(task.name, bytes, this.maxPayloadBytes, 'result');
      }
      outcome = { ok: true, result, json };
    } catch (err) {
      // Whatever was thrown, described without trusting it: strings only, bounded.
      const error = toRemoteError(err);
      if (error.name === 'MalformedTaskError') deadReason = error.message;
      // A message that cannot be run is not retried: it would fail (and be dead-lettered) again.
      outcome = { ok: false, error, retryDelayMs: deadReason ? undefined : this.retryDelay(def, task, err) };
    }
    if (run.released) return; // revoked with terminate, lost, or handed back meanwhile
    const runtimeMs = performance.now() - began;
    const done = outcome;
    const announce = (result: string, detail: string): void => {
      if (result === 'STALE') {
        this.emit('error', new StaleRunError(task.id, task.name, detail || undefined, 'end'));
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
    // Called from the queue runner's loop, which must not stop for anything thrown here.
    const stored = (result: string, detail: string): void => {
      try {
        announce(result, detail);
      } catch (err) {
        this.host.reportError(err);
      }
    };
    let finish: Finish;
    if (done.ok) {
      const json = done.json;
      finish = { id: task.id, token: task.token, state: 'SUCCESS', field: json === undefined ? '' : 'r', value: json ?? '', expireMs, retryDelayMs: 0, deadReason, stored };
    } else {
      finish = {
        id: task.id,
        token: task.token,
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

  /**
   * The delay before a retry of this failure, or undefined when it is final. A thrown value that
   * cannot be classified safely (a revoked Proxy, a throwing `Symbol.hasInstance`) is not retried.
   */
  private retryDelay(def: TaskDefinition, task: StartedTask, err: unknown): number | undefined {
    const requested = safeInstanceOf(err, RetryRequest);
    if (requested === undefined) return undefined;
    const policy = def.options.retries ?? (requested ? DEFAULT_RETRIES : undefined);
    if (!policy || task.retries >= policy.max) return undefined;
    if (!requested) {
      for (const never of [ConfigError, SerializationError, PayloadTooLargeError, NonRetryableError, TaskRevokedError]) {
        if (safeInstanceOf(err, never) !== false) return undefined;
      }
      if (policy.on && !policy.on.some((cls) => safeInstanceOf(err, cls) === true)) return undefined;
    } else {
      const countdownMs = (err as RetryRequest).countdownMs;
      if (countdownMs !== undefined) return countdownMs;
    }
    const computed =
      policy.backoff.kind === 'fixed'
        ? policy.backoff.ms
        : Math.min(policy.backoff.capMs, policy.backoff.baseMs * 2 ** task.retries);
    return policy.jitter ? Math.floor(Math.random() * (computed + 1)) : computed;
  }

  /** A revoke broadcast on a queue's revoke channel: `<id> <run token> <terminate 0|1>`. */
  private onRevokeMessage(channel: string, message: string): void {
    const runner = this.runners.find((r) => r.keys.revoke === channel);
    const parts = message.split(' ');
    // Two parts: a message of an older version of the library, which names no run.
    const [id, token, terminate] = parts.length === 2 ? [parts[0], undefined, parts[1]] : parts;
    const run = id === undefined || !runner ? undefined : this.inFlight.get(runKey(runner.keys.queue, id));
    // A revoke names the run that was current when it was sent; an older run still here is not it.
    if (!run || (token !== undefined && run.task.token !== token)) return;
    this.stopTask(run, terminate === '1' ? 'terminated' : 'revoked', '');
  }

  /** Acts on a revoke or a lost lease: fires the signal, and frees the slot when Redis already ended the run. */
  private stopTask(run: Running, reason: string, detail: string): void {
    const { id, name } = run.task;
    this.abort(run, reason === 'lost' ? leaseLost(id) : new TaskRevokedError(id, 'revoked'));
    if (reason === 'revoked') return; // the task's own end is stored as REVOKED (or SUCCESS)
    this.release(run, undefined);
    if (reason === 'terminated') {
      this.emit('revoked', { id, name, queue: run.runner.keys.queue, args: safeArgs(run.task.argsJson), reason: 'revoked' });
    } else {
      this.emit('error', new StaleRunError(id, name, detail || undefined, 'lease'));
    }
  }

  /** Every third of the lease: renews the leases of running tasks, and declares the task names this worker runs. */
  private async tick(): Promise<void> {
    await this.renewLeases();
    try {
      await this.declareNames();
    } catch (err) {
      this.host.reportError(err);
    }
  }

  private tickMs(): number {
    return Math.max(50, Math.floor(this.host.leaseMs / 3));
  }

  /**
   * Tells Redis, per queue, which task names this worker runs (see declare-1.lua), so a worker
   * of another build that meets one of them hands it back instead of failing it. Valid for three
   * ticks: a stopped worker's declarations lapse by themselves.
   */
  private async declareNames(): Promise<void> {
    const names = registeredTasks()
      .filter((d) => this.serves(d))
      .map((d) => d.name);
    if (names.length === 0) return;
    await Promise.all(this.runners.map((r) => r.declare(names, Math.max(10_000, 3 * this.tickMs()))));
  }

  private async renewLeases(): Promise<void> {
    for (const r of this.runners) {
      try {
        for (const { id, token, reason, detail } of await r.renewLeases()) {
          const run = this.inFlight.get(runKey(r.keys.queue, id));
          // The answer is about the run whose token was sent; a newer run of the id is not it.
          if (run && run.task.token === token) this.stopTask(run, reason, detail);
        }
      } catch (err) {
        this.host.reportError(err);
      }
    }
  }

  private emit<E extends keyof WorkerEvents>(event: E, ...args: WorkerEvents[E]): void {
    if (event === 'error' && this.events.listenerCount('error') === 0) {
      try {
        console.error(`[heimdall-tasks] worker ${this.id}:`, args[0]);
      } catch {
        // Printing an error runs its own getters (stack, message), which may throw.
        console.error(`[heimdall-tasks] worker ${this.id}: ${toRemoteError(args[0]).message}`);
      }
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

