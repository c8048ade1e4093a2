import { EventEmitter } from 'node:events';
import { MemoryEventFeed } from '../events/memory-feed.js';
import type { QueueEvent } from '../events/queue-events.js';
import { randomBytes } from 'node:crypto';
import { ConfigError, TaskRevokedError, UnknownTaskError, WorkerShutdownError } from '../errors.js';
import type { RedisClient } from '../protocol/connection.js';
import { QueueKeys } from '../protocol/queue-keys.js';
import { ENQUEUE_CODES } from '../protocol/reply-codes.js';
import type { EnqueueOutcome, StartedRun } from '../protocol/scripts.js';
import { FIELDS } from '../protocol/task-fields.js';
import { FINAL_STATES, type RevokeReason, type TaskState } from '../protocol/task-record.js';
import type { PreparedCall } from '../producer/prepare-call.js';
import type { Watch } from '../producer/result-waiter.js';
import type { ResultBackend } from '../producer/task-result.js';
import type { DispatchTransport, HeldLock } from '../producer/transport.js';
import type { PingReply, WorkerInfo } from '../protocol/worker-info.js';
import type { Constructor } from '../task/registry.js';
import { DEFAULT_RESULT_EXPIRES_MS } from '../task/task-options.js';
import { execute, type ExecutionHost } from '../worker/execution.js';
import type { Finish } from '../worker/queue-runner.js';
import { toRemoteError } from '../worker/remote-error.js';
import { abortRun, parseArgs, safeArgs, type LimitCharge, type Run, type RunOwner } from '../worker/run.js';
import { ServiceDirectory } from '../worker/services.js';
import type { WorkerEvents } from '../worker/worker-options.js';
import { admitRate, type RateWindow } from './rate-window.js';
import { InlineLimits } from './limits.js';
import { HANDED_MS, InlinePermits } from './permits.js';
import { resolveLimits, type ResolvedLimit } from '../task/limits.js';
import { callChecks } from '../task/call-checks.js';
import { limitRunName } from '../worker/limits-admission.js';
import { parsePermitRun, permitRunName, type PermitScope } from '../protocol/permit-scripts.js';
import { permitScopesOf } from '../worker/permits.js';

/** The worker id inline runs are recorded under (the record's `worker`). */
export const INLINE_WORKER_ID = 'inline';

type InlineRun = Run<RunOwner>;

/** The value of `field` among a message's field, value pairs. */
function fieldOf(fields: readonly (string | number)[], field: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === field) return String(fields[i + 1]);
  return undefined;
}

/** One task of an inline dispatcher: its record (a task hash, as Redis would hold it) and what is scheduled for it. */
interface Entry {
  readonly keys: QueueKeys;
  readonly id: string;
  readonly record: Record<string, string>;
  /** Its next start, when it waits for a countdown, a retry's backoff or a rate window. */
  timer?: NodeJS.Timeout;
  /** When that start is due (epoch ms). */
  dueAt?: number;
  /** Its start is queued for the next microtask (due at once). */
  queued?: boolean;
  /** Due, but its queue is not one this app consumes: it stays PENDING. */
  parked?: boolean;
  /** Its current run. */
  run?: InlineRun;
  /** It waits for a concurrency permit, to be handed one when a run gives it back. */
  permitWait?: boolean;
}

interface Lock {
  holder: string;
  expiresAt: number;
}

/** What a send with a conflict mode does (enqueue-3.lua's codes 1, 6, 7): `holder` '' when it takes the lock. */
interface ConflictPlan {
  takeLock: boolean;
  holder: string;
  replaced: string;
  /** Its debounce due time (epoch ms; 0: none). */
  dueAt: number;
  /** When its debounce series began. */
  first: number;
}

function closedWhileWaiting(id: string): ConfigError {
  return new ConfigError(`this inline app is closed: task ${id} will not run any more, so there is nothing to wait for`);
}

/** What `InlineTransport` was made with. */
export interface InlineSettings {
  /** The services tasks run on; undefined: any registered class, built with `resolve` or `new`. */
  services: readonly object[] | undefined;
  resolve: ((cls: Constructor) => object | Promise<object>) | undefined;
  maxPayloadBytes: number;
  /** Start nothing until `serve()` names the services (a Nest application before its bootstrap). Default: false. */
  held?: boolean;
  /** How the "not served" error says to fix it. Default: add the class to `services`. */
  unservedHint?: (className: string) => string;
  /**
   * The queues whose tasks run, as a worker's `queues`; a task sent to another stays PENDING, as
   * with Redis and no worker consuming its queue. Default: every queue.
   */
  queues?: readonly string[] | undefined;
}

/**
 * The inline mode's engine: a DispatchTransport that runs each task in this process instead of
 * sending it to Redis, through the worker's own `execute()` (so a task sees the same
 * `currentTask()`, time limit, retry policy, result checks and events), with the task records,
 * unique locks and rate windows kept in memory under the same rules as the scripts (see
 * docs/testing.md for where it differs). Time is `Date.now()` and timers are `setTimeout`,
 * so fake timers drive countdowns, backoffs and rate windows.
 */
export class InlineTransport implements DispatchTransport, ResultBackend {
  readonly results: ResultBackend = this;
  private readonly emitter = new EventEmitter();
  /** What dispatcher.events() reads: the events the scripts would write, kept in memory. */
  private readonly feed = new MemoryEventFeed();
  private readonly entries = new Map<string, Entry>();
  private readonly locks = new Map<string, Lock>();
  /** The task waiting behind the running holder of a lock (keepLast, debounce), as `<base>next:` holds it: its id and due time. */
  private readonly pointers = new Map<string, { id: string; dueAt: number }>();
  private readonly windows = new Map<string, RateWindow>();
  /** Named limits (Limits.define), in memory. */
  private readonly limits = new InlineLimits();
  /** Concurrency permits, in memory. */
  private readonly permits = new InlinePermits();
  /** onlyAfter keys: when each lapses (ms). */
  private readonly afterKeys = new Map<string, number>();
  private readonly watchers = new Map<string, Set<() => void>>();
  /** Called on every change of any task (drain waits on it). */
  private readonly changed = new Set<() => void>();
  private services: ServiceDirectory;
  private readonly host: ExecutionHost<InlineRun>;
  private closed = false;
  private closing: Promise<void> | undefined;
  private held: boolean;
  private readonly queues: ReadonlySet<string> | undefined;
  /** Waits of get()s in progress: they are told when the transport closes. */
  private readonly waits = new Set<() => void>();

  private readonly unserved: (className: string) => string;

  constructor(settings: InlineSettings) {
    this.unserved = settings.unservedHint ?? ((c) => `add ${c} (or an instance of it) to services, or pass resolve`);
    this.queues = settings.queues === undefined ? undefined : new Set(settings.queues);
    const fallback = settings.services === undefined ? (cls: Constructor): object => new (cls as new () => object)() : undefined;
    this.services = new ServiceDirectory(settings.services ?? [], settings.resolve ?? fallback, INLINE_WORKER_ID);
    this.held = settings.held === true;
    this.host = {
      workerId: INLINE_WORKER_ID,
      resultExpiresMs: DEFAULT_RESULT_EXPIRES_MS,
      maxPayloadBytes: settings.maxPayloadBytes,
      instanceFor: (def) => this.services.instanceFor(def),
      emit: (event, ...args) => this.emit(event, ...args),
      reportError: (err) => this.emit('error', err instanceof Error ? err : new Error(toRemoteError(err).message)),
      finished: (run, finish) => this.finished(run, finish),
      writeProgress: (run, json) => {
        // As progress-2.lua: stored for the task's current run only.
        const entry = this.entries.get(run.runner.keys.task(run.task.id));
        if (entry && entry.run === run) {
          entry.record[FIELDS.progress] = json;
          this.notifyChange();
        }
      },
      lockOf: (run) => this.entries.get(run.runner.keys.task(run.task.id))?.record[FIELDS.lockKey],
      extendLock: (run, lockKey, ttlMs) => {
        // As extend-lock-2.lua: only while this task holds it.
        const held = this.heldLock(lockKey, Date.now());
        if (!held || held.holder !== run.task.id) return Promise.resolve(false);
        held.expiresAt = Date.now() + ttlMs;
        return Promise.resolve(true);
      },
      onlyAfter: (run, key, intervalMs) => {
        // As only-after-1.lua: the first caller takes the key for the interval.
        const afterKey = run.runner.keys.after(key);
        const now = Date.now();
        const taken = this.afterKeys.get(afterKey);
        if (taken !== undefined && taken > now) return Promise.resolve(false);
        this.afterKeys.set(afterKey, now + intervalMs);
        return Promise.resolve(true);
      },
      correctCost: (_run, charge, actual) => Promise.resolve(this.limits.correct(charge.def, charge.run, charge.cost, actual, Date.now())),
    };
  }

  /** Listens to what the inline runs do: the Worker's events. */
  on<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): this {
    this.emitter.on(event, listener as (...args: unknown[]) => void);
    return this;
  }

  /** Stops listening. */
  off<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): this {
    this.emitter.off(event, listener as (...args: unknown[]) => void);
    return this;
  }

  /**
   * Runs tasks on these services from now on (a Nest application's providers, found at its
   * bootstrap), and starts what was sent while the transport was held.
   */
  serve(services: readonly object[], resolve?: (cls: Constructor) => object | Promise<object>): void {
    this.services = new ServiceDirectory(services, resolve, INLINE_WORKER_ID);
    if (!this.held) return;
    this.held = false;
    const now = Date.now();
    for (const e of this.entries.values()) {
      if (!e.run && e.timer === undefined && !e.queued && !FINAL_STATES.has(e.record[FIELDS.state] as TaskState)) this.schedule(e, now, now);
    }
  }

  client(): RedisClient {
    throw new ConfigError('an inline dispatcher has no Redis client: its tasks run in this process');
  }

  // ---- sending (enqueue-3.lua's rules) ----

  /**
   * Stores a checked call and schedules its start. After close() a task is still accepted, and
   * stays PENDING, as a task sent to Redis while no worker runs (the Dispatcher refuses calls
   * itself once it is closed).
   */
  send(p: PreparedCall): Promise<EnqueueOutcome> {
    const now = Date.now();
    const key = p.keys.task(p.id);
    const existing = this.entries.get(key);
    if (existing && !FINAL_STATES.has(existing.record[FIELDS.state] as TaskState)) {
      // As enqueue-3: the same task under the same id is an idempotent re-send; anything else collides.
      const same = existing.record[FIELDS.name] === p.name && existing.record[FIELDS.args] === fieldOf(p.task.fields, FIELDS.args);
      return Promise.resolve({ code: same ? ENQUEUE_CODES.enqueued : ENQUEUE_CODES.idInUse, detail: '', pttlMs: 0 });
    }
    const { lockKey, lockTtlMs } = p.task;
    const mode = lockKey === '' ? undefined : fieldOf(p.task.fields, FIELDS.conflictMode);
    let plan: ConflictPlan | undefined;
    if (mode !== undefined) {
      const met = this.conflict(p, lockKey, mode, now);
      if (!('takeLock' in met)) return Promise.resolve(met);
      plan = met;
      if (plan.takeLock) this.locks.set(lockKey, { holder: p.id, expiresAt: now + lockTtlMs });
    } else if (lockKey !== '') {
      const held = this.heldLock(lockKey, now);
      if (held) {
        this.feed.push({ type: 'deduplicated', id: held.holder, name: p.name, queue: p.keys.queue }, now);
        return Promise.resolve({ code: ENQUEUE_CODES.duplicate, detail: held.holder, pttlMs: held.expiresAt - now });
      }
      this.locks.set(lockKey, { holder: p.id, expiresAt: now + lockTtlMs });
    }
    if (existing) this.cancel(existing);
    const record: Record<string, string> = {};
    const fields = p.task.fields;
    for (let i = 0; i + 1 < fields.length; i += 2) record[String(fields[i])] = String(fields[i + 1]);
    record[FIELDS.version] = '1';
    record[FIELDS.state] = 'PENDING';
    record[FIELDS.created] = String(now);
    for (const transient of [FIELDS.conflictHolder, FIELDS.conflictPending, FIELDS.conflictExpires]) delete record[transient];
    let dueAt = p.task.etaMs > 0 ? p.task.etaMs : p.task.countdownMs > 0 ? now + p.task.countdownMs : now;
    if (plan && plan.dueAt > dueAt) dueAt = plan.dueAt;
    if (plan && mode === 'debounce') record[FIELDS.debounceFirst] = String(plan.first);
    // A task waiting behind a running holder looks again when the lock lapses, or in 10 s, as with
    // Redis; the holder's end normally makes it due first (end()).
    let placeAt = dueAt;
    if (plan && plan.holder !== '') {
      record[FIELDS.waitingBehind] = plan.holder;
      this.pointers.set(lockKey, { id: p.id, dueAt });
      if (placeAt <= now) placeAt = now + Math.min(Math.max(1, (this.heldLock(lockKey, now)?.expiresAt ?? now) - now), 10_000);
    }
    const entry: Entry = { keys: p.keys, id: p.id, record };
    this.entries.set(key, entry);
    this.feed.push({ type: 'queued', id: p.id, name: p.name, queue: p.keys.queue, ...(placeAt > now ? { dueAt: placeAt } : {}) }, now);
    if (plan && plan.holder !== '') this.feed.push({ type: 'waiting', id: p.id, name: p.name, queue: p.keys.queue, holder: plan.holder }, now);
    this.schedule(entry, placeAt, now);
    if (plan === undefined) return Promise.resolve({ code: ENQUEUE_CODES.enqueued, detail: '', pttlMs: 0 });
    if (plan.holder !== '') return Promise.resolve({ code: ENQUEUE_CODES.waiting, detail: plan.holder, pttlMs: 0, other: plan.replaced });
    return Promise.resolve({ code: plan.replaced === '' ? ENQUEUE_CODES.enqueued : ENQUEUE_CODES.replaced, detail: plan.replaced, pttlMs: 0 });
  }

  /**
   * enqueue-3.lua's conflict modes: what a send with mode `mode` does with the lock's holder and
   * the task pending behind it. Returns the duplicate's outcome, or the plan for the new task
   * (the tasks it replaces are REVOKED here).
   */
  private conflict(p: PreparedCall, lockKey: string, mode: string, now: number): EnqueueOutcome | ConflictPlan {
    const held = this.heldLock(lockKey, now);
    const holder = held ? this.entries.get(p.keys.task(held.holder)) : undefined;
    const state = holder?.record[FIELDS.state];
    const waiting = (s: string | undefined): boolean => s === 'PENDING' || s === 'RETRY';
    const running = state === 'STARTED';
    if (held && !waiting(state) && !(running && mode !== 'replace')) {
      this.feed.push({ type: 'deduplicated', id: held.holder, name: p.name, queue: p.keys.queue, by: p.id }, now);
      return { code: ENQUEUE_CODES.duplicate, detail: held.holder, pttlMs: held.expiresAt - now };
    }
    const reason: RevokeReason = mode === 'debounce' ? 'debounced' : 'replaced';
    let first: number | undefined;
    let replaced = '';
    const replace = (e: Entry): void => {
      first ??= e.record[FIELDS.debounceFirst] === undefined ? undefined : Number(e.record[FIELDS.debounceFirst]);
      this.cancel(e);
      this.end(e, 'REVOKED', { [FIELDS.revokeReason]: reason });
      this.feed.push({ type: 'replaced', id: e.id, name: p.name, queue: p.keys.queue, by: p.id, reason }, now);
      replaced = e.id;
    };
    if (holder && waiting(state)) replace(holder);
    const pointer = this.pointers.get(lockKey);
    if (pointer) {
      this.pointers.delete(lockKey);
      const pending = this.entries.get(p.keys.task(pointer.id));
      if (pending && pending !== holder && waiting(pending.record[FIELDS.state]) && pending.record[FIELDS.lockKey] === lockKey) replace(pending);
    }
    const start = first ?? now;
    let dueAt = 0;
    if (mode === 'debounce') {
      dueAt = now + Number(fieldOf(p.task.fields, FIELDS.debounceWait) ?? 0);
      const maxWait = Number(fieldOf(p.task.fields, FIELDS.debounceMaxWait) ?? 0);
      if (maxWait > 0 && start + maxWait < dueAt) dueAt = Math.max(now, start + maxWait);
    }
    const stillHeld = held !== undefined && running;
    return { takeLock: !stillHeld, holder: stillHeld ? held.holder : '', replaced, dueAt, first: start };
  }

  /** No worker processes: tasks run in this one. */
  workers(): Promise<WorkerInfo[]> {
    return Promise.resolve([]);
  }

  /** No worker processes answer. */
  ping(): Promise<PingReply[]> {
    return Promise.resolve([]);
  }

  /** The events of the inline runs, as the scripts would write them (the last 10,000 kept). */
  events(queues: readonly QueueKeys[], since: Date | number | string | undefined, signal: AbortSignal | undefined): AsyncIterableIterator<QueueEvent> {
    return this.feed.iterate(queues.map((k) => k.queue), since, signal);
  }

  lockOf(_keys: QueueKeys, lockKey: string): Promise<HeldLock | null> {
    const now = Date.now();
    const held = this.heldLock(lockKey, now);
    return Promise.resolve(held ? { holder: held.holder, ttlMs: held.expiresAt - now } : null);
  }

  // ---- reading and changing tasks (TaskResult) ----

  read(keys: QueueKeys, id: string, fields: readonly string[]): Promise<(string | null)[]> {
    const record = this.entries.get(keys.task(id))?.record;
    return Promise.resolve(fields.map((f) => record?.[f] ?? null));
  }

  readAll(keys: QueueKeys, id: string): Promise<Record<string, string>> {
    return Promise.resolve({ ...this.entries.get(keys.task(id))?.record });
  }

  watch(keys: QueueKeys, id: string): Promise<Watch> {
    if (this.closed) return Promise.reject(closedWhileWaiting(id));
    const key = keys.task(id);
    let set = this.watchers.get(key);
    if (!set) {
      set = new Set();
      this.watchers.set(key, set);
    }
    const listeners = set;
    let wake: (() => void) | undefined;
    let fired = false;
    const fire = (): void => {
      fired = true;
      wake?.();
    };
    listeners.add(fire);
    const waits = this.waits;
    return Promise.resolve({
      next: (ms: number) =>
        new Promise<void>((resolve, reject) => {
          if (this.closed) {
            reject(closedWhileWaiting(id));
            return;
          }
          if (fired) {
            fired = false;
            resolve();
            return;
          }
          const timer = setTimeout(done, ms);
          // A get() waiting when the transport closes would wait for ever: nothing runs any more.
          const fail = (): void => {
            clearTimeout(timer);
            waits.delete(fail);
            wake = undefined;
            reject(closedWhileWaiting(id));
          };
          waits.add(fail);
          function done(): void {
            clearTimeout(timer);
            waits.delete(fail);
            wake = undefined;
            fired = false;
            resolve();
          }
          wake = done;
        }),
      close: () => {
        listeners.delete(fire);
        if (listeners.size === 0) this.watchers.delete(key);
      },
    });
  }

  /** revoke-4.lua's transitions. */
  revoke(keys: QueueKeys, id: string, terminate: boolean): Promise<TaskState> {
    const entry = this.entries.get(keys.task(id));
    const state = entry?.record[FIELDS.state] as TaskState | undefined;
    if (!entry || state === undefined) return Promise.resolve('PENDING');
    if (FINAL_STATES.has(state)) return Promise.resolve(state);
    const run = entry.run;
    if (state !== 'STARTED' || !run) {
      // No event: with Redis no worker ever sees a task revoked before it started.
      this.cancel(entry);
      this.end(entry, 'REVOKED', { [FIELDS.revokeReason]: 'revoked' });
      return Promise.resolve('REVOKED');
    }
    const stop = new TaskRevokedError(id, 'revoked');
    if (terminate) {
      run.released = true;
      entry.run = undefined;
      this.end(entry, 'REVOKED', { [FIELDS.revokeReason]: 'revoked' });
      this.emitRevoked(entry, 'revoked');
      // The worker hears of it on the revoke channel, after the revoke's reply.
      queueMicrotask(() => abortRun(run, stop));
      return Promise.resolve('REVOKED');
    }
    entry.record[FIELDS.revokeRequested] = 'revoked';
    queueMicrotask(() => abortRun(run, stop));
    return Promise.resolve('STARTED');
  }

  forget(keys: QueueKeys, id: string): Promise<boolean> {
    const key = keys.task(id);
    const state = this.entries.get(key)?.record[FIELDS.state] as TaskState | undefined;
    if (state !== undefined && !FINAL_STATES.has(state)) return Promise.resolve(false);
    this.entries.delete(key);
    return Promise.resolve(true);
  }

  // ---- for drain() and close() ----

  /** Tasks not ended: running, due now, or waiting for a timer (with when it is due). */
  pending(): { running: number; due: number; delayed: { id: string; queue: string; dueAt: number }[]; parked: Map<string, number> } {
    let running = 0;
    let due = 0;
    const delayed: { id: string; queue: string; dueAt: number }[] = [];
    /** Tasks waiting on queues this app does not consume, per queue. */
    const parked = new Map<string, number>();
    for (const e of this.entries.values()) {
      if (e.run) running++;
      else if (e.queued || e.permitWait) due++;
      else if (e.timer !== undefined) delayed.push({ id: e.id, queue: e.keys.queue, dueAt: e.dueAt ?? 0 });
      else if (e.parked) parked.set(e.keys.queue, (parked.get(e.keys.queue) ?? 0) + 1);
    }
    return { running, due, delayed, parked };
  }

  /** The task name of a task, or '?'. */
  nameOf(queue: string, id: string): string {
    for (const e of this.entries.values()) if (e.id === id && e.keys.queue === queue) return e.record[FIELDS.name] ?? '?';
    return '?';
  }

  /** Resolves at the next change of any task (a start, an end, a schedule), or at `deadline` (epoch ms; Infinity: none). */
  nextChange(deadline: number): Promise<void> {
    return new Promise<void>((resolve) => {
      // No timer without a deadline (setTimeout would read Infinity as 1 ms).
      const timer = Number.isFinite(deadline) ? setTimeout(wake, Math.max(1, deadline - Date.now())) : undefined;
      const changed = this.changed;
      changed.add(wake);
      function wake(): void {
        clearTimeout(timer);
        changed.delete(wake);
        resolve();
      }
    });
  }

  /**
   * Refuses new tasks, drops the scheduled ones (they stay PENDING or RETRY) and waits up to
   * `timeoutMs` (Infinity: as long as they take) for the running ones; those still running then get their AbortSignal fired
   * with a WorkerShutdownError and are let go (their record stays STARTED).
   */
  close(timeoutMs = 5_000): Promise<void> {
    this.closing ??= this.shutDown(timeoutMs);
    return this.closing;
  }

  private async shutDown(timeoutMs: number): Promise<void> {
    this.closed = true;
    this.feed.close();
    for (const e of this.entries.values()) this.cancel(e);
    const deadline = Date.now() + timeoutMs;
    while (this.pending().running > 0 && Date.now() < deadline) await this.nextChange(deadline);
    for (const e of this.entries.values()) {
      const run = e.run;
      if (!run) continue;
      run.released = true;
      e.run = undefined;
      abortRun(run, new WorkerShutdownError(INLINE_WORKER_ID));
    }
    for (const fail of [...this.waits]) fail();
    this.changed.clear();
  }

  // ---- running ----

  private heldLock(lockKey: string, now: number): Lock | undefined {
    const lock = this.locks.get(lockKey);
    if (lock && lock.expiresAt <= now) {
      this.locks.delete(lockKey);
      return undefined;
    }
    return lock;
  }

  private releaseLock(entry: Entry): void {
    const lockKey = entry.record[FIELDS.lockKey];
    if (lockKey === undefined || entry.record[FIELDS.lockWaitForExpiry] === '1') return;
    if (this.locks.get(lockKey)?.holder === entry.id) this.locks.delete(lockKey);
  }

  private schedule(entry: Entry, dueAt: number, now: number): void {
    if (this.closed) return;
    if (dueAt > now) {
      entry.record[FIELDS.due] = String(dueAt);
      entry.dueAt = dueAt;
      entry.timer = setTimeout(() => {
        entry.timer = undefined;
        entry.dueAt = undefined;
        this.start(entry);
      }, dueAt - now);
    } else {
      entry.queued = true;
      queueMicrotask(() => {
        if (!entry.queued) return;
        entry.queued = false;
        this.start(entry);
      });
    }
    this.notifyChange();
  }

  private cancel(entry: Entry): void {
    if (entry.timer !== undefined) clearTimeout(entry.timer);
    entry.timer = undefined;
    entry.dueAt = undefined;
    entry.queued = false;
    entry.parked = false;
    entry.permitWait = false;
  }

  /** Gives back the permits a task's runs hold or wait for (permit-3.lua 'release'), and wakes who they go to. */
  private releasePermitsOf(entry: Entry): void {
    const { queue, prefix } = entry.keys;
    const woken = this.permits.releaseWhere((run) => {
      const p = parsePermitRun(run);
      return p !== undefined && p.queue === queue && p.id === entry.id;
    }, Date.now());
    this.wakePermitted(prefix, woken);
  }

  /** Starts the tasks handed a permit now (permit-wake-2.lua); one that ended gives it back. */
  private wakePermitted(prefix: string, woken: readonly string[]): void {
    for (const name of woken) {
      const p = parsePermitRun(name);
      const entry = p === undefined ? undefined : this.entries.get(new QueueKeys(prefix, p.queue).task(p.id));
      const state = entry?.record[FIELDS.state];
      if (!entry || state === undefined || FINAL_STATES.has(state as TaskState)) {
        // Nobody will come for it: the next waiter gets it.
        this.wakePermitted(prefix, this.permits.releaseWhere((run) => run === name, Date.now()));
        continue;
      }
      if (entry.permitWait && !entry.run) {
        this.cancel(entry);
        this.schedule(entry, Date.now(), Date.now());
      }
    }
  }

  /** start-tasks.lua's checks, then the run. */
  private start(entry: Entry): void {
    const r = entry.record;
    if (this.closed || this.held || (r[FIELDS.state] !== 'PENDING' && r[FIELDS.state] !== 'RETRY')) return;
    if (this.queues && !this.queues.has(entry.keys.queue)) {
      entry.parked = true;
      this.notifyChange();
      return;
    }
    const now = Date.now();
    const expires = Number(r[FIELDS.expires] ?? 0);
    if (expires > 0 && now > expires) {
      this.end(entry, 'REVOKED', { [FIELDS.revokeReason]: 'expired' });
      this.emitRevoked(entry, 'expired');
      return;
    }
    const lockKey = r[FIELDS.lockKey];
    if (lockKey !== undefined) {
      const held = this.heldLock(lockKey, now);
      if (held && held.holder !== entry.id && r[FIELDS.waitingBehind] !== undefined) {
        // Pending behind the running holder (keepLast, debounce): it waits for the holder's end.
        this.schedule(entry, now + Math.min(Math.max(1, held.expiresAt - now), 10_000), now);
        return;
      }
      if (held && held.holder !== entry.id) {
        // Another task took the lock after this one's lapsed: this one ends, the lock stays.
        delete r[FIELDS.lockKey];
        this.end(entry, 'REVOKED', { [FIELDS.revokeReason]: 'duplicate' });
        this.emitRevoked(entry, 'duplicate');
        return;
      }
      // Re-taken only when it lapsed: a lock this task holds keeps its expiry (start-tasks.lua).
      if (!held) this.locks.set(lockKey, { holder: entry.id, expiresAt: now + Number(r[FIELDS.lockTtl] ?? 0) });
    }
    const name = r[FIELDS.name] ?? '';
    const def = this.services.taskNamed(name);
    if (!def || !this.services.serves(def)) {
      const error = toRemoteError(
        new UnknownTaskError(
          def
            ? `no task named '${name}' is served by this inline app: ${this.unserved(def.className)}`
            : `no task named '${name}' is registered in this process; inline tasks run here, so the class that declares it must be imported`,
        ),
      );
      this.end(entry, 'FAILURE', { [FIELDS.error]: JSON.stringify(error) });
      this.emit('failed', { id: entry.id, name, queue: entry.keys.queue, args: safeArgs(r[FIELDS.args] ?? ''), attempt: 0, error, runtimeMs: 0 });
      return;
    }
    const attempt = Number(r[FIELDS.attempts] ?? 0) + 1;
    // Its concurrency permits first, then its named rate limits, as limits-admission.ts takes
    // them. Without a permit it waits until one is handed to it, its start in the queue's rate
    // window taken back (admit-6.lua's LIMITED). Over a rate limit (all or none) it waits for the
    // latest turn holding its permits.
    let charges: LimitCharge[] | undefined;
    let limitError: unknown;
    let resolved: ResolvedLimit[] = [];
    let scopes: PermitScope[] = [];
    const args = safeArgs(r[FIELDS.args] ?? '');
    const permitRun = permitRunName(entry.keys.queue, entry.id, attempt);
    if (def.options.limits || def.options.concurrency) {
      try {
        if (def.options.limits) resolved = resolveLimits(name, def.options.limits, parseArgs(r[FIELDS.args] ?? ''));
        scopes = permitScopesOf(entry.keys.prefix, def, args, resolved);
      } catch (err) {
        limitError = err;
      }
    }
    if (limitError === undefined && scopes.length > 0) {
      const got = this.permits.acquire(scopes, permitRun, now);
      this.wakePermitted(entry.keys.prefix, got.woken);
      if (!got.held) {
        // No timer: in one process every permit given back wakes its waiter (wakePermitted).
        entry.permitWait = true;
        this.emit('rateLimited', { id: entry.id, name, queue: entry.keys.queue, args, delayMs: 0, permit: true });
        this.notifyChange();
        return;
      }
    }
    // The queue's own rate window, after the permits (a task that may take them is sent without
    // it, call-checks.ts: the worker's, as admit-6.lua takes it then).
    const carried = r[FIELDS.rateKey];
    let rate: { key: string; limit: number; periodMs: number } | undefined =
      carried !== undefined ? { key: carried, limit: Number(r[FIELDS.rateLimit]), periodMs: Number(r[FIELDS.ratePeriod]) } : undefined;
    if (!rate && limitError === undefined && def.options.rateLimit !== undefined) {
      try {
        rate = callChecks(entry.keys, name, def.options, parseArgs(r[FIELDS.args] ?? ''), r[FIELDS.args] ?? '', { lock: false, rate: true }).rate;
      } catch (err) {
        limitError = err;
      }
    }
    if (rate && limitError === undefined) {
      let window = this.windows.get(rate.key);
      if (!window) this.windows.set(rate.key, (window = new Map()));
      const delayMs = admitRate(window, `${entry.id}:${attempt}`, rate.limit, rate.periodMs, now);
      if (delayMs !== undefined) {
        // Its permits stay its own through the wait (a while past its turn, as in Redis).
        if (scopes.length > 0) this.permits.keep(scopes, permitRun, now + delayMs + HANDED_MS);
        this.emit('rateLimited', { id: entry.id, name, queue: entry.keys.queue, args, delayMs });
        this.schedule(entry, now + delayMs, now);
        return;
      }
    }
    const rateKey = rate?.key;
    if (limitError === undefined && def.options.limits) {
      const runName = limitRunName(entry.keys.queue, entry.id, attempt);
      try {
        const uses = def.options.limits;
        const rated = resolved.map((l, i) => ({ l, use: uses[i]! })).filter((x) => x.l.def.algorithm !== 'concurrency');
        const limits = rated.map((x) => x.l);
        const delayMs = limits.length === 0 ? undefined : this.limits.take(limits, runName, now);
        if (delayMs !== undefined) {
          if (rateKey !== undefined) this.windows.get(rateKey)?.delete(`${entry.id}:${attempt}`);
          // Its permits stay its own through the wait (a while past its turn, as in Redis).
          if (scopes.length > 0) this.permits.keep(scopes, permitRun, now + delayMs + HANDED_MS);
          this.emit('rateLimited', { id: entry.id, name, queue: entry.keys.queue, args, delayMs });
          this.schedule(entry, now + delayMs, now);
          return;
        }
        charges = rated.map(({ l, use }) => ({ def: l.def, cost: l.cost, weighted: use.weighted, run: runName }));
      } catch (err) {
        limitError = err;
      }
    }
    const token = randomBytes(6).toString('hex');
    r[FIELDS.state] = 'STARTED';
    r[FIELDS.attempts] = String(attempt);
    r[FIELDS.startedAt] = String(now);
    r[FIELDS.worker] = INLINE_WORKER_ID;
    r[FIELDS.token] = token;
    const task: StartedRun = {
      id: entry.id,
      name,
      argsJson: r[FIELDS.args] ?? '',
      attempt,
      timeLimitMs: r[FIELDS.timeLimit] === undefined ? undefined : Number(r[FIELDS.timeLimit]),
      retries: Number(r[FIELDS.retries] ?? 0),
      token,
      carriesLock: lockKey !== undefined,
      carriesRate: rateKey !== undefined,
      carriesRecoveries: r[FIELDS.maxRecoveries] !== undefined,
      reserved: false,
    };
    const run: InlineRun = { runner: { keys: entry.keys }, task, released: false, limits: charges, admissionError: limitError };
    entry.run = run;
    this.notifyChange();
    void execute(run, def, this.host).catch((err: unknown) => this.host.reportError(err));
  }

  /** finish-task.lua's rules for a run's end. */
  private finished(run: InlineRun, finish: Finish): void {
    const entry = this.entries.get(run.runner.keys.task(run.task.id));
    if (run.released || !entry || entry.run !== run) {
      finish.stored({ kind: 'stale', state: entry?.record[FIELDS.state] as TaskState | undefined });
      return;
    }
    run.released = true;
    entry.run = undefined;
    const r = entry.record;
    const revoke = r[FIELDS.revokeRequested] as RevokeReason | undefined;
    const value = finish.field === '' ? {} : { [finish.field]: finish.value };
    if (revoke !== undefined && finish.state !== 'SUCCESS') {
      this.end(entry, 'REVOKED', { ...value, [FIELDS.revokeReason]: revoke });
      finish.stored({ kind: 'stored', state: 'REVOKED' });
      return;
    }
    if (finish.state === 'RETRY') {
      const now = Date.now();
      this.releasePermitsOf(entry);
      keepAttempt(r, finish, now);
      Object.assign(r, value);
      r[FIELDS.state] = 'RETRY';
      r[FIELDS.retries] = String(Number(r[FIELDS.retries] ?? 0) + 1);
      this.schedule(entry, now + finish.retryDelayMs, now);
      finish.stored({ kind: 'stored', state: 'RETRY' });
      this.notifyTask(entry);
      return;
    }
    // A task that succeeds on a retry keeps no error of its earlier attempts (finish-task.lua).
    if (finish.state === 'SUCCESS') delete r[FIELDS.error];
    this.end(entry, finish.state, value);
    finish.stored({ kind: 'stored', state: finish.state });
  }

  /** Ends a task: its state and fields, its lock released (unless kept until it lapses), its waiters woken. */
  private end(entry: Entry, state: 'SUCCESS' | 'FAILURE' | 'REVOKED', fields: Record<string, string>): void {
    Object.assign(entry.record, fields);
    entry.record[FIELDS.state] = state;
    entry.record[FIELDS.finishedAt] = String(Date.now());
    this.releasePermitsOf(entry);
    this.releaseLock(entry);
    this.handLockOver(entry);
    this.notifyTask(entry);
  }

  /** As end-task.lua's handLockOver: the lock released, the task pending behind it takes it and is due (now, or at its debounce time). */
  private handLockOver(entry: Entry): void {
    const lockKey = entry.record[FIELDS.lockKey];
    if (lockKey === undefined || this.locks.has(lockKey)) return;
    const pointer = this.pointers.get(lockKey);
    if (!pointer) return;
    this.pointers.delete(lockKey);
    const next = pointer.id === entry.id ? undefined : this.entries.get(entry.keys.task(pointer.id));
    const state = next?.record[FIELDS.state];
    if (!next || (state !== 'PENDING' && state !== 'RETRY')) return;
    const now = Date.now();
    this.locks.set(lockKey, { holder: next.id, expiresAt: now + Number(next.record[FIELDS.lockTtl] ?? 0) });
    this.cancel(next);
    this.schedule(next, Math.max(now, pointer.dueAt), now);
  }

  private notifyTask(entry: Entry): void {
    for (const fire of this.watchers.get(entry.keys.task(entry.id)) ?? []) fire();
    this.notifyChange();
  }

  private notifyChange(): void {
    for (const listener of [...this.changed]) listener();
  }

  private emitRevoked(entry: Entry, reason: RevokeReason): void {
    const r = entry.record;
    this.emit('revoked', { id: entry.id, name: r[FIELDS.name] ?? '', queue: entry.keys.queue, args: safeArgs(r[FIELDS.args] ?? ''), reason });
  }

  private emit<E extends keyof WorkerEvents>(event: E, ...args: WorkerEvents[E]): void {
    if (event === 'error' && this.emitter.listenerCount('error') === 0) {
      console.error('[heimdall-tasks] inline:', toRemoteError(args[0]).message);
      return;
    }
    if (event !== 'error') this.feed.pushWorkerEvent(event, args);
    try {
      this.emitter.emit(event, ...args);
    } catch (err) {
      // A throwing listener must not stop the other runs.
      if (event !== 'error') this.emit('error', err instanceof Error ? err : new Error(toRemoteError(err).message));
    }
  }
}

/** As includes/history.lua: a retried attempt kept in field ah (the last 20), before the next start overwrites st, w and e. */
function keepAttempt(r: Record<string, string>, finish: { field: string; value: string; retryDelayMs: number }, now: number): void {
  let list: unknown[] = [];
  try {
    const kept = JSON.parse(r[FIELDS.history] ?? '[]') as unknown;
    if (Array.isArray(kept)) list = kept;
  } catch {
    // a history this engine did not write: start afresh
  }
  let en: string | undefined;
  let em: string | undefined;
  if (finish.field === FIELDS.error) {
    try {
      const e = JSON.parse(finish.value) as { name?: unknown; message?: unknown };
      if (typeof e.name === 'string') en = e.name;
      if (typeof e.message === 'string') em = e.message.length > 300 ? `${e.message.slice(0, 300)}...` : e.message;
    } catch {
      // not JSON: no error summary
    }
  }
  list.push({ a: Number(r[FIELDS.attempts] ?? 0), st: Number(r[FIELDS.startedAt] ?? 0), f: now, w: r[FIELDS.worker], en, em, b: finish.retryDelayMs });
  r[FIELDS.history] = JSON.stringify(list.slice(-20));
}
