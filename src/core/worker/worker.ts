import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { nanoid } from 'nanoid';
import type { Redis } from 'ioredis';
import { ConfigError, fromRedis, outOfMemory, redisCall, StaleRunError, TaskRevokedError, WorkerFaultError, WorkerShutdownError } from '../errors.js';
import { closeClient, isCluster, openClient, type OwnedClient } from '../protocol/connection.js';
import { QueueKeys } from '../protocol/queue-keys.js';
import { FIELDS } from '../protocol/task-fields.js';
import { ScriptRunner } from '../protocol/script-runner.js';
import type { RunRef, StartedRun, StopReason } from '../protocol/scripts.js';
import { isTaskState, type TaskState } from '../protocol/task-record.js';
import { toMillisOrZero } from '../task/durations.js';
import { registeredTasks } from '../task/registry.js';
import { admit, decline, needsAdmission, type AdmissionHost } from './admission.js';
import { hasLimits, takeLimits } from './limits-admission.js';
import { giveBack, renewHolds, type PermitHold } from './permits.js';
import { correctLimit } from '../protocol/limit-scripts.js';
import { execute, type ExecutionHost } from './execution.js';
import { QueueRunner, type Finish, type RunnerHost } from './queue-runner.js';
import { safeInstanceOf, toRemoteError } from './remote-error.js';
import { abortRun, leaseLost, runKey, safeArgs, type Run } from './run.js';
import { ServiceDirectory } from './services.js';
import { WorkerRegistration } from './registration.js';
import { workerSettings, type CloseOptions, type TaskEvent, type WorkerEvents, type WorkerOptions } from './worker-options.js';
import { HookChain, INSTRUMENT, type InstrumentationHooks, type RunOutcome } from '../instrumentation.js';
import type { TaskDefinition } from '../task/registry.js';

export type { CloseOptions, TaskEvent, WorkerEvents, WorkerOptions } from './worker-options.js';

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
  /** Most tasks reserved ahead of running them (prefetch), beyond `concurrency`: 1 under prefetch `'auto'`, which reserves only while tasks are short. */
  readonly prefetch: number;
  private readonly prefix: string;
  private readonly options: WorkerOptions;
  private readonly events = new EventEmitter();
  private readonly services: ServiceDirectory;
  private readonly runners: QueueRunner[] = [];
  private readonly clients: OwnedClient[] = [];
  private readonly host: RunnerHost;
  /** Events older than this are trimmed by the heartbeat, ms (0: none). */
  private readonly eventsMaxAgeMs: number;
  private readonly execution: ExecutionHost;
  private readonly admission: AdmissionHost;
  private readonly inFlight = new Map<string, Run>();
  /** Permit give-backs and wake-ups in flight (permits.ts). */
  private readonly permitCalls = new Set<Promise<unknown>>();
  private readonly blockers: OwnedClient[] = [];
  private leaseTimer: NodeJS.Timeout | undefined;
  private state: 'new' | 'starting' | 'running' | 'closing' | 'closed' = 'new';
  /** Handler slots promised to fetches in flight and to claims. */
  private reserved = 0;
  /** Reservation slots (prefetch) promised to fetches in flight and to claims. */
  private reservedAhead = 0;
  /** Waits for a task result of the runs in flight (awaitResult), by run: while any is, no reservation is held. */
  private readonly awaiting = new Map<Run, number>();
  private closing: Promise<void> | undefined;
  /** Its entry in the registry (heartbeat-3.lua), from start(). */
  private registration: WorkerRegistration | undefined;
  /** The tick in flight, if any. */
  private ticking: Promise<void> | undefined;
  /** Instrumentation attached to this worker (src/core/instrumentation.ts). */
  private readonly hooks = new HookChain();
  /** While close() waits for running tasks: sets the hand-back to happen within `ms` at the latest. */
  private handBackWithin: ((ms: number) => void) | undefined;
  /** Takes the connection-loss listeners off the command client (which may be the caller's) at close. */
  private unhookConnection: (() => void) | undefined;

  constructor(options: WorkerOptions) {
    const { prefix, queues, concurrency, prefetch, prefetchAuto, maxPayloadBytes, leaseMs, resultExpiresMs, unknownTaskGraceMs: graceMs, events } = workerSettings(options);
    this.eventsMaxAgeMs = events.maxAgeMs;
    this.options = options;
    this.prefix = prefix;
    this.queues = queues;
    this.concurrency = concurrency;
    this.prefetch = prefetch;
    this.id = options.name ?? `${hostname()}:${process.pid}:${nanoid(6)}`;
    this.services = new ServiceDirectory(options.services ?? [], options.resolve, this.id);
    // Anything a listener throws gets here too: it is described without being trusted, and an
    // Error passes as it is. The worker's calls to Redis wrap their failures with fromRedis where
    // they are made, naming the call; a full Redis's refusal that got here bare still becomes a
    // RedisOutOfMemoryError.
    const reportError = (reported: unknown): void => {
      if (safeInstanceOf(reported, Error) !== true) return this.emit('error', new WorkerFaultError(toRemoteError(reported).message));
      this.emit('error', outOfMemory(reported, `worker ${this.id}`) as Error);
    };
    // Bound rather than wrapped in an arrow: a second rest parameter would cost an array per event.
    const emit = this.emit.bind(this) as <E extends keyof WorkerEvents>(event: E, ...args: WorkerEvents[E]) => void;
    this.host = {
      workerId: this.id,
      leaseMs,
      resultExpiresMs,
      eventsCap: events.cap,
      concurrency,
      prefetch,
      prefetchAuto,
      accepting: () => this.state === 'running',
      holdsReservations: () => this.state === 'running' && this.awaiting.size === 0,
      // Reservations held or on their way take the handler slots that free first: a task is asked
      // for as one to begin at once only when none is outstanding, so none overtakes a reservation.
      freeSlots: () => Math.max(0, this.concurrency - this.inFlight.size - this.reserved - this.reservationsOutstanding()),
      freeReservations: () => {
        // A handler awaits a task result: reserve nothing (the task awaited may be the one reserved).
        if (this.awaiting.size > 0) return 0;
        const left = this.concurrency - this.inFlight.size - this.reserved - this.reservationsOutstanding();
        return Math.max(0, left + this.prefetch - Math.max(0, left));
      },
      reserve: (n, ahead = 0) => {
        this.reserved += n;
        this.reservedAhead += ahead;
        if (n < 0) this.beginReserved();
        // Slots one queue's fetch reserved and gave back may be what another queue waits for.
        if (n < 0 || ahead < 0) for (const r of this.runners) r.poke();
      },
      reservationsAdded: () => this.beginReserved(),
      launch: (runner, task) => this.launch(runner, task),
      rateLimited: (queue, id, name, argsJson, delayMs) => this.emit('rateLimited', { id, name, queue, args: safeArgs(argsJson), delayMs }),
      revoked: (queue, id, name, argsJson, reason) => this.emit('revoked', { id, name, queue, args: safeArgs(argsJson), reason }),
      // A reservation began here while Redis ended it or gave it to another worker (its revoke
      // message was lost, or came before the reply that brought it): its handler stops now.
      beginsStale: (runner, stale) => {
        for (const { id, token, state } of stale) this.runNoLongerCurrent(runner, id, token, state === 'REVOKED' ? 'terminated' : 'lost', isTaskState(state) ? state : undefined);
      },
      reportError,
    };
    this.execution = {
      workerId: this.id,
      resultExpiresMs,
      maxPayloadBytes,
      instanceFor: (def) => this.services.instanceFor(def),
      emit,
      reportError,
      finished: (run, finish) => this.release(run, finish),
      writeProgress: (run, json) => {
        run.runner.progress(run.task.id, run.task.token, json).catch((err: unknown) => reportError(fromRedis(err, `storing the progress of task ${run.task.id}`)));
      },
      lockOf: (run) => run.runner.lockOf(run.task.id),
      extendLock: (run, lockKey, ttlMs) =>
        redisCall(`extending the unique lock of task ${run.task.id}`, () => run.runner.extendLock(run.task.id, lockKey, ttlMs)),
      onlyAfter: (run, key, intervalMs) =>
        redisCall(`onlyAfter(${JSON.stringify(key)}) of task ${run.task.id}`, () => run.runner.onlyAfter(run.task.id, key, intervalMs)),
      correctCost: (run, charge, actual) =>
        redisCall(`reportCost() of task ${run.task.id} in limit '${charge.def.name}'`, () =>
          correctLimit(run.runner.limitScripts, run.runner.keys.prefix, charge.def, charge.run, charge.cost, actual),
        ),
      awaitingResult: (run) => this.awaitResult(run),
    };
    this.admission = {
      workerId: this.id,
      graceMs,
      leaseMs,
      release: (run) => this.release(run, undefined),
      emit,
      reportError,
      track: (call) => {
        this.permitCalls.add(call);
        void call.finally(() => this.permitCalls.delete(call));
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

  /** Internal: attaches instrumentation hooks (heimdall-tasks/prometheus, heimdall-tasks/otel); returns their detach. */
  [INSTRUMENT](hooks: InstrumentationHooks): () => void {
    return this.hooks.add(hooks);
  }

  /** Number of tasks running now. */
  get activeCount(): number {
    return this.inFlight.size;
  }

  /**
   * @internal Concurrency permits being given back, and their waiters being woken, now: a task
   * that waits in a delayed set for a permit may be due at once when they are done (the testing
   * kit's drain() waits for them).
   */
  get permitCallsInFlight(): number {
    return this.permitCalls.size;
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
      // A connection error Redis itself answered (a refused AUTH) becomes a RedisRefusedError; the
      // socket errors of ioredis (ECONNREFUSED, TLS) pass as they are.
      const connectionError = (purpose: string) => (err: Error) =>
        this.host.reportError(fromRedis(err, `worker ${this.id}, its ${purpose} connection`));
      const commands = openClient(this.options.connection, 'commands', name, {}, connectionError('commands'));
      this.clients.push(commands);
      const scripts = new ScriptRunner(commands.client);
      await scripts.load();
      // After a reconnect, a fetch whose reply was lost may have started tasks this worker never heard of.
      this.unhookConnection = onConnectionLoss(commands.client, () => {
        for (const r of this.runners) r.reconnected();
      });
      if (this.state !== 'starting') return; // close() was called meanwhile and closes the clients
      const subscriber = openClient(this.options.connection, 'subscriber', name, {}, connectionError('subscriber'));
      this.clients.push(subscriber);
      const controls = new Set(this.queues.map((q) => new QueueKeys(this.prefix, q).control));
      // Sharded Pub/Sub, as the scripts SPUBLISH: on a Cluster each queue's channels live on its shard.
      subscriber.client.on('smessage', (channel: string, message: string) => {
        if (controls.has(channel)) this.registration?.onControl(message);
        else this.onRevokeMessage(channel, message);
      });
      for (const queue of this.queues) {
        const keys = new QueueKeys(this.prefix, queue);
        const blocking = openClient(this.options.connection, 'blocking', name, {}, connectionError(`queue ${queue} blocking`));
        this.clients.push(blocking);
        this.blockers.push(blocking);
        this.runners.push(new QueueRunner(this.host, keys, scripts, blocking.client));
      }
      this.registration = new WorkerRegistration(
        { id: this.id, queues: this.queues, concurrency: this.concurrency, runs: () => this.inFlight.values() },
        scripts,
        commands.client,
        this.prefix,
        this.eventsMaxAgeMs,
      );
      // Revoke messages for running tasks arrive here, whichever process sent them; pings too.
      // One SSUBSCRIBE per queue: a queue's two channels share its slot, and on a Cluster one
      // SSUBSCRIBE may not span slots.
      await Promise.all(this.runners.map((r) => subscriber.client.ssubscribe(r.keys.revoke, r.keys.control)));
      // Before the first fetch, so other workers that meet these tasks know to hand them back.
      // Not a reason to refuse to start: the next tick declares them again.
      await Promise.all([this.declareNamesOrReport(), this.heartbeat()]);
      if (this.state !== 'starting') return;
      this.state = 'running';
      for (const r of this.runners) r.start();
      this.leaseTimer = setInterval(() => {
        // One tick at a time; close() waits for the one in flight before leaving the registry.
        if (this.ticking) return;
        this.ticking = this.tick().finally(() => (this.ticking = undefined));
      }, this.tickMs());
      this.leaseTimer.unref();
    } catch (err) {
      if (this.state !== 'starting') return; // closed while starting: close() has the clients
      this.state = 'closed';
      this.unhookConnection?.();
      await Promise.all(this.clients.map((c) => closeClient(c)));
      throw fromRedis(err, `starting worker ${this.id}`);
    }
  }

  /**
   * Stops fetching and waits for running tasks to end and their results to be stored, then
   * closes the connections. With `timeout`, tasks still running then get their AbortSignal
   * fired and go back to the front of the queue (same id, same lock), so no task is lost.
   * Safe to call more than once: every call returns the same promise, and a later call with a
   * timeout that ends sooner brings the hand-back forward (`close({ timeout: 0 })` hands the
   * running tasks back at once, as a second Ctrl-C does for `heimdall worker`).
   */
  close(options: CloseOptions = {}): Promise<void> {
    const timeoutMs = options.timeout === undefined ? undefined : toMillisOrZero(options.timeout, 'close({ timeout })');
    if (!this.closing) this.closing = this.shutdown(timeoutMs);
    else if (timeoutMs !== undefined) this.handBackWithin?.(timeoutMs);
    return this.closing;
  }

  private async shutdown(timeoutMs: number | undefined): Promise<void> {
    const wasRunning = this.state === 'running';
    this.state = 'closing';
    if (wasRunning) {
      // Ends the blocking BLMOVEs at once; the command connection stays for the last finishes.
      for (const b of this.blockers) b.client.disconnect();
      // Reservations not begun go back to the front of their queues at once (prefetch).
      for (const r of this.runners) r.handBackReservations();
      const drained = Promise.all(this.runners.map((r) => r.stop()));
      // The hand-back is due at the earliest deadline any close() call set; none: never.
      let timer: NodeJS.Timeout | undefined;
      let dueAt = Infinity;
      let settle!: (ms: number) => void;
      const due = new Promise<number>((resolve) => (settle = resolve));
      const within = (ms: number): void => {
        if (Date.now() + ms >= dueAt) return;
        dueAt = Date.now() + ms;
        clearTimeout(timer);
        timer = setTimeout(() => settle(ms), ms);
      };
      this.handBackWithin = within;
      if (timeoutMs !== undefined) within(timeoutMs);
      const handBackAfter = await Promise.race([drained.then(() => undefined), due]);
      clearTimeout(timer);
      this.handBackWithin = undefined;
      if (handBackAfter !== undefined) {
        await this.handBack();
        // Ends that cannot be stored (Redis down) must not hold close() forever: their leases
        // lapse and the tasks are recovered elsewhere.
        const stored = await Promise.race([drained.then(() => true), sleep(Math.max(1000, handBackAfter))]);
        if (!stored) {
          for (const r of this.runners) r.abandon();
          this.clients[0]?.client.disconnect();
        }
      }
      await drained;
    }
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    // A tick in flight could renew the entry after it is removed: it ends first.
    await this.ticking;
    // Permits given back at the last ends, and their waiters' wake-ups, before the connections
    // go (bounded: with Redis out of reach they lapse within a lease and the waiters ask again).
    if (this.permitCalls.size > 0) await Promise.race([Promise.allSettled([...this.permitCalls]), sleep(2000)]);
    await this.unregister();
    this.unhookConnection?.();
    await Promise.all(this.clients.map((c) => closeClient(c)));
    this.state = 'closed';
  }

  /** Aborts the tasks still running at the close timeout and puts them back in their queues. */
  private async handBack(): Promise<void> {
    const byRunner = new Map<QueueRunner, RunRef[]>();
    for (const run of [...this.inFlight.values()]) {
      // Released first, so whatever the task does after the signal is not stored.
      this.release(run, undefined);
      abortRun(run, new WorkerShutdownError(this.id));
      const runs = byRunner.get(run.runner) ?? [];
      runs.push(run.task);
      byRunner.set(run.runner, runs);
    }
    for (const [runner, runs] of byRunner) {
      try {
        await runner.requeue(runs);
      } catch (err) {
        // Not put back now: their leases lapse and another worker recovers them.
        this.host.reportError(fromRedis(err, `queue ${runner.keys.queue}: handing running tasks back`));
      }
    }
  }

  /**
   * A run a fetch started. Most go straight to execution; a name this worker does not run is
   * handed back, and a message that lacks a check the worker's definition has is admitted first.
   */
  private launch(runner: QueueRunner, task: StartedRun): void {
    const key = runKey(runner.keys.queue, task.id);
    const stale = this.inFlight.get(key);
    if (stale) {
      // This worker's own run of the task lost its lease (a long pause or outage) and the task
      // was started again, here: the old run is no longer current. Free its slot without touching
      // the runner's bookkeeping of the id, which now belongs to the new run.
      stale.released = true;
      this.inFlight.delete(key);
      abortRun(stale, leaseLost(task.id));
      this.emit('error', new StaleRunError(task.id, task.name, 'STARTED', 'end'));
    }
    const run: Run = { runner, task, released: false, startedAt: Date.now() };
    this.inFlight.set(key, run);
    const def = this.services.taskNamed(task.name);
    const running =
      def !== undefined && this.services.serves(def) && !needsAdmission(def, run) && !hasLimits(def)
        ? this.execute(run, def)
        : (async () => {
            if (!def || !this.services.serves(def)) return decline(run, def, this.admission);
            // Its concurrency permits, then what its message lacks of the worker's lock and rate
            // window, then its named rate limits (limits-admission.ts); without limits, the
            // worker's lock and rate window alone.
            if (hasLimits(def)) {
              if (!(await takeLimits(run, def, this.admission))) return;
            } else if (needsAdmission(def, run) && !(await admit(run, def, this.admission))) return;
            await this.execute(run, def);
          })();
    running.catch((err: unknown) => this.executeFailed(run, err));
  }

  /** Executes a run; through the run hooks when any is attached (without one, no closure is made). */
  private execute(run: Run, def: TaskDefinition): Promise<RunOutcome | undefined> {
    const hook = this.hooks.run;
    return hook === undefined ? execute(run, def, this.execution) : this.instrumented(run, def, hook);
  }

  /** A run inside the run hooks, given the record fields they read (one HMGET; on failure, reported and left out). */
  private async instrumented(run: Run, def: TaskDefinition, hook: NonNullable<HookChain['run']>): Promise<RunOutcome | undefined> {
    const { task } = run;
    const fields = this.hooks.recordFields;
    const record: Record<string, string | undefined> = {};
    if (fields.length > 0) {
      try {
        // clients[0]: the command connection, open while runs are launched.
        const values = await this.clients[0]!.client.hmget(run.runner.keys.task(task.id), ...fields);
        fields.forEach((f, i) => (record[f] = values[i] ?? undefined));
      } catch (err) {
        this.host.reportError(fromRedis(err, `reading task ${task.id} for its instrumentation`));
      }
    }
    return hook({ id: task.id, name: task.name, queue: run.runner.keys.queue, attempt: task.attempt, record }, () => execute(run, def, this.execution));
  }

  /**
   * Last resort, for a fault in the worker's own code while it runs a task: the task still ends
   * FAILURE (unless its slot was freed already), and the fault is reported instead of becoming an
   * unhandled rejection.
   */
  private executeFailed(run: Run, err: unknown): void {
    const { runner, task } = run;
    try {
      const error = toRemoteError(err);
      this.emit('error', new WorkerFaultError(`task ${task.id} (${task.name}) failed inside the worker: ${error.name}: ${error.message}`));
      if (run.released) return;
      const event: TaskEvent = { id: task.id, name: task.name, queue: runner.keys.queue, args: safeArgs(task.argsJson), attempt: task.attempt };
      this.release(run, {
        id: task.id,
        token: task.token,
        state: 'FAILURE',
        field: FIELDS.error,
        value: JSON.stringify(error),
        expireMs: this.services.taskNamed(task.name)?.options.resultExpiresMs ?? this.host.resultExpiresMs,
        retryDelayMs: 0,
        deadReason: '',
        stored: (outcome) => {
          if (outcome.kind === 'stale') this.emit('error', new StaleRunError(task.id, task.name, outcome.state, 'end'));
          else if (outcome.state === 'FAILURE') this.emit('failed', { ...event, error, runtimeMs: 0 });
        },
      });
    } catch {
      // Not even that: free the slot; the lease lapses and the task is recovered elsewhere.
      if (!run.released) this.release(run, undefined);
    }
  }

  /** Frees a run's slot once: with its end to store, or without (Redis already has what became of it). */
  private release(run: Run, finish: Finish | undefined): void {
    if (run.released) return;
    run.released = true;
    this.inFlight.delete(runKey(run.runner.keys.queue, run.task.id));
    this.endAwaits(run);
    // Only a handler that ran and ended counts in the queue's runtimes (prefetch 'auto'): a run sent
    // back by its admission, declined, stopped or lost says nothing of how long the queue's tasks take.
    if (finish && run.context && run.startedAt !== undefined) run.runner.noteRuntime(Date.now() - run.startedAt);
    if (finish) run.runner.finished(finish);
    else run.runner.drop(run.task.id, run.task.token);
    // The slot goes to the oldest reservation at once, before any call's reply (prefetch).
    this.beginReserved();
    // Its permits go to the runs that wait for them (after the end is queued: the end's own call
    // and these travel side by side).
    if (run.permits) this.admission.track?.(giveBack(run.runner.limitScripts, run.runner.keys.prefix, run.permits, this.admission));
    // Another queue may be waiting for the slot.
    for (const r of this.runners) if (r !== run.runner) r.poke();
  }

  /**
   * A handler awaits a task result (TaskResult.get()): while any does, the worker reserves nothing
   * and hands its reservations back to the front of their queues, since the task awaited may be
   * one, and a reservation begins only when a handler slot frees (at concurrency 1, never while
   * the awaiting handler holds it). Returns the function that ends the wait (once); the run's
   * release ends its waits too (a get() left pending by a handler that returned). When the last
   * ends, the runners reserve again.
   */
  private awaitResult(run: Run): () => void {
    if (run.released) return () => undefined;
    if (this.awaiting.size === 0) for (const r of this.runners) r.handBackReservations();
    this.awaiting.set(run, (this.awaiting.get(run) ?? 0) + 1);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      const n = this.awaiting.get(run);
      if (n === undefined) return;
      if (n > 1) this.awaiting.set(run, n - 1);
      else this.endAwaits(run);
    };
  }

  /** Ends every wait for a task result of `run`; the runners reserve again once none is left. */
  private endAwaits(run: Run): void {
    if (!this.awaiting.delete(run) || this.awaiting.size > 0) return;
    for (const r of this.runners) r.poke();
  }

  /** Reservations held by the runners, and reservation slots promised to fetches in flight and to claims. */
  private reservationsOutstanding(): number {
    let n = this.reservedAhead;
    for (const r of this.runners) n += r.reservationCount;
    return n;
  }

  /**
   * Begins reservations (prefetch), oldest first across the queues, while handler slots are free
   * (not counting those promised to fetches in flight, whose tasks begin when they come). Each
   * begin goes to Redis with its runner's next call.
   */
  private beginReserved(): void {
    while (this.state === 'running' && this.inFlight.size + this.reserved < this.concurrency) {
      let oldest: QueueRunner | undefined;
      let seq = Infinity;
      for (const r of this.runners) {
        const s = r.oldestReservation();
        if (s < seq) {
          seq = s;
          oldest = r;
        }
      }
      const task = oldest?.beginReservation();
      if (!oldest || !task) return;
      this.launch(oldest, task);
    }
  }

  /** A reservation Redis ended or took back (revoke, lost lease): dropped; true when `id` was one. */
  private dropReservation(runner: QueueRunner, id: string, token: string | undefined, reason: StopReason, state: TaskState | undefined): boolean {
    const held = runner.reservationToken(id);
    if (held === undefined || (token !== undefined && held !== token)) return false;
    const task = runner.dropReservation(id, held);
    if (!task) return false;
    for (const r of this.runners) r.poke();
    if (reason === 'lost') this.emit('error', new StaleRunError(id, task.name, state, 'lease'));
    else this.emit('revoked', { id, name: task.name, queue: runner.keys.queue, args: safeArgs(task.argsJson), reason: 'revoked' });
    return true;
  }

  /** A revoke broadcast on a queue's revoke channel: `<id> <run token> <terminate 0|1>`. */
  private onRevokeMessage(channel: string, message: string): void {
    const runner = this.runners.find((r) => r.keys.revoke === channel);
    const parts = message.split(' ');
    // Two parts: a message of an older version of the library, which names no run.
    const [id, token, terminate] = parts.length === 2 ? [parts[0], undefined, parts[1]] : parts;
    const run = id === undefined || !runner ? undefined : this.inFlight.get(runKey(runner.keys.queue, id));
    // A reservation's revoke (always a terminate: revoke-4.lua ended it) drops it before it begins.
    if (!run && runner && id !== undefined && terminate === '1') {
      this.dropReservation(runner, id, token, 'terminated', 'REVOKED');
      return;
    }
    // A revoke names the run that was current when it was sent; an older run still here is not it.
    if (!run || (token !== undefined && run.task.token !== token)) return;
    this.stopRun(run, terminate === '1' ? 'terminated' : 'revoked', undefined);
  }

  /**
   * Redis says run `token` of task `id` is to stop (a lease renewal's answer, or a begin the fetch
   * found no longer current): the run in flight stops, or the reservation held is dropped.
   */
  private runNoLongerCurrent(runner: QueueRunner, id: string, token: string, reason: StopReason, state: TaskState | undefined): void {
    const run = this.inFlight.get(runKey(runner.keys.queue, id));
    // The answer is about the run whose token was sent; a newer run of the id is not it. A run
    // an admission is sending back is no longer STARTED by that call's doing: its reply says so.
    if (run && run.task.token === token && !(reason === 'lost' && run.sendingBack)) this.stopRun(run, reason, state);
    else if (!run && reason !== 'revoked') this.dropReservation(runner, id, token, reason, state);
  }

  /** Acts on a revoke or a lost lease: fires the signal, and frees the slot when Redis already ended the run. */
  private stopRun(run: Run, reason: StopReason, state: TaskState | undefined): void {
    const { id, name } = run.task;
    abortRun(run, reason === 'lost' ? leaseLost(id) : new TaskRevokedError(id, 'revoked'));
    if (reason === 'revoked') return; // the task's own end is stored as REVOKED (or SUCCESS)
    this.release(run, undefined);
    if (reason === 'terminated') {
      this.emit('revoked', { id, name, queue: run.runner.keys.queue, args: safeArgs(run.task.argsJson), reason: 'revoked' });
    } else {
      this.emit('error', new StaleRunError(id, name, state, 'lease'));
    }
  }

  /** Every third of the lease: renews the leases of running tasks, and declares the task names this worker runs. */
  private async tick(): Promise<void> {
    for (const r of this.runners) {
      try {
        for (const { id, token, reason, state } of await r.renewLeases()) this.runNoLongerCurrent(r, id, token, reason, state);
      } catch (err) {
        this.host.reportError(fromRedis(err, `queue ${r.keys.queue}: renewing leases`));
      }
    }
    // Side by side: one round trip for all (the heartbeat reports its own failures).
    await Promise.all([this.declareNamesOrReport(), this.heartbeat(true), this.renewPermits()]);
  }

  /** Renews the concurrency permits of the runs in flight (permits.ts): they lapse a lease after this. */
  private async renewPermits(): Promise<void> {
    const byRunner = new Map<QueueRunner, PermitHold[]>();
    for (const run of this.inFlight.values()) {
      if (!run.permits || run.released) continue;
      const holds = byRunner.get(run.runner) ?? [];
      holds.push(...run.permits);
      byRunner.set(run.runner, holds);
    }
    await Promise.all([...byRunner].map(([r, holds]) => renewHolds(r.limitScripts, r.keys.prefix, holds, this.admission)));
  }

  private declareNamesOrReport(): Promise<void> {
    return this.declareNames().catch((err: unknown) => this.host.reportError(fromRedis(err, 'declaring the task names this worker runs')));
  }

  /** Renews this worker's entry in the registry, valid for three ticks. A failure is reported, never thrown. */
  private async heartbeat(fromTick = false): Promise<void> {
    // While closing, ticks go on renewing (running tasks may take long to end); start() does not.
    if (!(this.state === 'starting' || this.state === 'running' || (this.state === 'closing' && fromTick))) return;
    try {
      await this.registration?.renew(
        this.runners.map((r) => r.keys),
        3 * this.tickMs(),
      );
    } catch (err) {
      this.host.reportError(fromRedis(err, 'renewing this worker in the registry'));
    }
  }

  /** Leaves the registry as the worker closes: at most a second (with Redis gone the entry lapses by itself). */
  private async unregister(): Promise<void> {
    const registration = this.registration;
    if (!registration) return;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, 1000)));
    await Promise.race([registration.remove(this.runners.map((r) => r.keys)).catch(() => undefined), late]);
    clearTimeout(timer);
  }

  private tickMs(): number {
    return Math.max(50, Math.floor(this.host.leaseMs / 3));
  }

  /**
   * Tells Redis, per queue, which task names this worker runs (declare-1.lua), so a worker of
   * another build that meets one of them hands it back instead of failing it. Valid for three
   * ticks (at least 10 s): a stopped worker's declarations lapse by themselves.
   */
  private async declareNames(): Promise<void> {
    const names = registeredTasks()
      .filter((d) => this.services.serves(d))
      .map((d) => d.name);
    if (names.length === 0) return;
    await Promise.all(this.runners.map((r) => r.declare(names, Math.max(10_000, 3 * this.tickMs()))));
  }

  private emit<E extends keyof WorkerEvents>(event: E, ...args: WorkerEvents[E]): void {
    const r = this.registration;
    if (r) {
      if (event === 'succeeded') r.succeeded++;
      else if (event === 'failed') r.failed++;
      else if (event === 'retried') r.retried++;
    }
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

/**
 * Calls `lost` whenever calls in flight on `client` may have lost their replies; returns how to
 * stop. A Redis client emits 'ready' after each reconnect. An ioredis Cluster emits 'ready' only
 * when it connects as a whole (at start, or after losing every node): when one master dies and
 * its replica is promoted, the Cluster stays ready, the dead node's connection ends ('-node';
 * node connections are not reconnected but replaced) and its unanswered commands are sent again
 * to the new master, so the Cluster's 'ready' would never announce it.
 *
 * On a Cluster, '-node' also fires for connections that never carried a command: until the
 * replica is promoted, every slot refresh finds the dead master still listed and makes a new
 * connection to it ('+node'), which fails to connect and ends ('-node'), tens of times in a
 * failover of a few seconds. A connection that never connected lost no reply, so its end is
 * ignored: only a connection this hook saw made and never connecting is passed over, one made
 * before the hook (whose past is unknown) counts. The runners then coalesce what is left: `lost`
 * sets each one's reclaim flag, and however many ends come before its next call, the runner
 * reclaims once.
 */
function onConnectionLoss(client: OwnedClient['client'], lost: () => void): () => void {
  client.on('ready', lost);
  if (!isCluster(client)) return () => client.off('ready', lost);
  // Node connections made since the hook that have not connected yet.
  const neverConnected = new WeakSet<object>();
  const added = (node: Redis): void => {
    if (node.status === 'connect' || node.status === 'ready') return;
    neverConnected.add(node);
    node.once('connect', () => neverConnected.delete(node));
  };
  const removed = (node: Redis): void => {
    if (!neverConnected.has(node)) lost();
  };
  client.on('+node', added);
  client.on('-node', removed);
  return () => {
    client.off('ready', lost);
    client.off('+node', added);
    client.off('-node', removed);
  };
}

function sleep(ms: number): Promise<false> {
  return new Promise((resolve) => setTimeout(() => resolve(false), ms).unref());
}
