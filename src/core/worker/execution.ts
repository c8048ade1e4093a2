import { ConfigError, PayloadTooLargeError, RunawayTaskError, StaleRunError } from '../errors.js';
import type { Duration } from '../task/durations.js';
import { lockLifetime } from '../task/task-options.js';
import { describe } from '../task/durations.js';
import type { RemoteError } from '../protocol/task-record.js';
import type { TaskDefinition } from '../task/registry.js';
import { FIELDS } from '../protocol/task-fields.js';
import { toJson } from '../task/serialization.js';
import { AWAITING_RESULT, RetryRequest, taskStorage, type CurrentTask, type RetryRequestOptions } from './current-task.js';
import type { Finish } from './queue-runner.js';
import { toRemoteError } from './remote-error.js';
import { retryDelay } from './retry-policy.js';
import { isMessageFault, parseArgs, signalOf, type LimitCharge, type Run, type RunOwner } from './run.js';
import type { LimitHandle } from '../task/limits.js';
import { withTimeLimit } from './time-limit.js';
import { progressReport, ProgressThrottle } from './progress.js';
import type { TaskEvent, WorkerEvents } from './worker-options.js';
import type { RunOutcome } from '../instrumentation.js';

/** What executing a run needs from its worker (or an inline dispatcher). */
export interface ExecutionHost<R extends Run<RunOwner> = Run> {
  readonly workerId: string;
  readonly resultExpiresMs: number;
  /** Largest result stored, bytes of JSON. */
  readonly maxPayloadBytes: number;
  instanceFor(def: TaskDefinition): object | Promise<object>;
  emit<E extends keyof WorkerEvents>(event: E, ...args: WorkerEvents[E]): void;
  reportError(err: unknown): void;
  /** Frees the run's slot and hands its end to its queue runner to store. */
  finished(run: R, finish: Finish): void;
  /** Stores a progress report of the run, for its run only (progress-2.lua); failures are the host's to report. */
  writeProgress(run: R, json: string): void;
  /** The unique lock the run holds (its whole key), or undefined when it has none. */
  lockOf(run: R): string | undefined;
  /** Gives the run's lock `ttlMs` from now if its task still holds it (extend-lock-2.lua). */
  extendLock(run: R, lockKey: string, ttlMs: number): Promise<boolean>;
  /** True when the run's task takes `key` of its queue for `intervalMs` (only-after-1.lua). */
  onlyAfter(run: R, key: string, intervalMs: number): Promise<boolean>;
  /** Corrects the run's charge in a named limit from `charge.cost` to `actual` units (limit-2.lua); false when its entry left the window. */
  correctCost(run: R, charge: LimitCharge, actual: number): Promise<boolean>;
  /** The run waits for a task result (`TaskResult.get()`); returns the function that ends the wait (absent: nothing to do). */
  awaitingResult?(run: R): () => void;
}

/**
 * What `currentTask()` returns in a run: one object per run, its methods on the prototype (an
 * object literal with arrows and a getter made three functions per task on the hot path).
 */
class RunContext<R extends Run<RunOwner>> implements CurrentTask {
  readonly id: string;
  readonly name: string;
  readonly attempt: number;

  constructor(
    private readonly run: R,
    private readonly host: ExecutionHost<R>,
    readonly queue: string,
    private readonly args: unknown[],
  ) {
    this.id = run.task.id;
    this.name = run.task.name;
    this.attempt = run.task.attempt;
  }

  get signal(): AbortSignal {
    return signalOf(this.run);
  }

  retry(options?: RetryRequestOptions): never {
    throw new RetryRequest(options);
  }

  async extendLock(duration: Duration): Promise<boolean> {
    const ttlMs = lockLifetime(duration, 'extendLock(duration)');
    const lockKey = this.host.lockOf(this.run);
    if (lockKey === undefined) throw new ConfigError(`extendLock(): task ${this.name} (${this.id}) has no unique lock`);
    return this.host.extendLock(this.run, lockKey, ttlMs);
  }

  async onlyAfter(key: string, interval: Duration): Promise<boolean> {
    if (typeof key !== 'string' || key === '') throw new ConfigError(`onlyAfter(key, interval): key must be a non-empty string, got ${describe(key)}`);
    const intervalMs = lockLifetime(interval, 'onlyAfter(key, interval): interval');
    return this.host.onlyAfter(this.run, key, intervalMs);
  }

  async reportCost(actual: number, limit?: string | LimitHandle): Promise<boolean> {
    const charge = chargeToCorrect(this.run, this.name, actual, limit);
    const { run, host } = this;
    // One correction at a time per limit: each one starts from the cost the last one left.
    const done = (charge.pending ?? Promise.resolve()).then(async () => {
      if (actual === charge.cost) return true;
      const corrected = await host.correctCost(run, charge, actual);
      charge.cost = actual;
      return corrected;
    });
    charge.pending = done.catch(() => undefined);
    return done;
  }

  /** Marks a wait of this run for a task result (see AWAITING_RESULT); returns the function that ends it. */
  [AWAITING_RESULT](): () => void {
    return this.host.awaitingResult?.(this.run) ?? noWait;
  }

  /** Bound on first use, so `const { progress } = currentTask()` works too. */
  get progress(): (value: number, message?: string) => void {
    return (this.boundProgress ??= this.report.bind(this));
  }

  private boundProgress: ((value: number, message?: string) => void) | undefined;

  private report(value: number, message?: string): void {
    const report = progressReport(value, message);
    const { run, host } = this;
    if (run.released) return;
    run.progress ??= new ProgressThrottle((r) => {
      // With the run's token: a later run of the task does not show this run's progress.
      if (!run.released) host.writeProgress(run, JSON.stringify({ ...r, t: run.task.token }));
    });
    run.progress.report(report);
    host.emit('progress', { id: this.id, name: this.name, queue: this.queue, args: this.args, attempt: this.attempt, value: report.v, message: report.m });
  }
}

function noWait(): void {}

/** The charge `reportCost(actual, limit)` corrects; ConfigError for a bad cost, or a limit the run was not charged in or left unnamed among several. */
function chargeToCorrect(run: Run<RunOwner>, task: string, actual: number, limit: string | LimitHandle | undefined): LimitCharge {
  if (typeof actual !== 'number' || !Number.isInteger(actual) || actual < 0 || actual > 1e9) {
    throw new ConfigError(`reportCost(actual): actual must be a whole number of units from 0 to 1e9, got ${JSON.stringify(actual)}`);
  }
  const charges = run.limits ?? [];
  if (charges.length === 0) throw new ConfigError(`reportCost(): task ${task} (${run.task.id}) was charged in no named limit (it has no limits option)`);
  const names = charges.map((c) => `'${c.def.name}'`).join(', ');
  if (limit !== undefined) {
    const name = typeof limit === 'string' ? limit : typeof limit === 'object' && limit !== null ? limit.name : undefined;
    const found = charges.find((c) => c.def.name === name);
    if (!found) throw new ConfigError(`reportCost(actual, limit): task ${task} uses no limit ${JSON.stringify(name ?? limit)}; its limits: ${names}`);
    return found;
  }
  if (charges.length === 1) return charges[0]!;
  const weighted = charges.filter((c) => c.weighted);
  if (weighted.length === 1) return weighted[0]!;
  throw new ConfigError(`reportCost(actual): task ${task} has several limits (${names}); name the one to correct: reportCost(actual, 'name')`);
}

type Outcome = { ok: true; result: unknown; json: string | undefined } | { ok: false; error: RemoteError; retryDelayMs: number | undefined };

/**
 * Runs one task: calls its method inside `currentTask()`'s context, races it against its time
 * limit, and turns whatever comes out (a value, anything thrown, a result that cannot be
 * stored) into the end to store, with the events that announce it once Redis has answered, and
 * hands that end to `host.finished`. Nothing is stored for a run released meanwhile (handed
 * back, revoked with terminate, lost). The end is handed over from here rather than returned:
 * one promise less per task (measured, see BENCHMARKS.md). Resolves to the outcome handed over
 * (for instrumentation hooks), or undefined when none was.
 */
export async function execute<R extends Run<RunOwner>>(run: R, def: TaskDefinition, host: ExecutionHost<R>): Promise<RunOutcome | undefined> {
  const { runner, task } = run;
  const queue = runner.keys.queue;
  const began = performance.now();
  const event: TaskEvent = { id: task.id, name: task.name, queue, args: [], attempt: task.attempt };
  let outcome: Outcome;
  let deadReason = '';
  try {
    event.args = parseArgs(task.argsJson);
    const args = event.args;
    host.emit('started', event);
    if (run.admissionError !== undefined) throw run.admissionError;
    // Awaited only when it is a promise (a resolve that answers one): an await of a plain value
    // still costs a promise per task (BENCHMARKS.md, "Allocation per task").
    const made = host.instanceFor(def);
    const instance = made instanceof Promise ? await made : made;
    if (run.released) return undefined; // handed back or revoked with terminate while its service was resolved
    const method = (instance as Record<string, unknown>)[def.methodName];
    if (typeof method !== 'function') throw new ConfigError(`${def.className}.${def.methodName} is not a method of the instance`);
    const context = new RunContext(run, host, queue, args);
    run.context = context;
    const running = taskStorage().run(context, () => method.apply(instance, args) as unknown);
    // The message's time limit, or else the task's own in this worker (a message sent by name).
    const limitMs = task.timeLimitMs ?? def.options.timeLimitMs ?? 0;
    const result =
      limitMs > 0
        ? await withTimeLimit(run, Promise.resolve(running), limitMs, () => host.reportError(new RunawayTaskError(task.id, task.name)))
        : await running;
    const json = result === undefined ? undefined : toJson(result, 'result');
    if (json !== undefined && json.length > host.maxPayloadBytes / 3) {
      // Up to 3 bytes per UTF-16 unit: only a long result needs counting.
      const bytes = Buffer.byteLength(json);
      if (bytes > host.maxPayloadBytes) throw new PayloadTooLargeError(task.name, bytes, host.maxPayloadBytes, 'result');
    }
    outcome = { ok: true, result, json };
  } catch (err) {
    // Whatever was thrown, described without trusting it: strings only, bounded. A message that
    // cannot be run (the worker's own error about it, known by identity: no error a task throws
    // counts, whatever its class or name) is dead-lettered and not retried: it would fail again.
    const error = toRemoteError(err);
    if (isMessageFault(err)) deadReason = error.message;
    outcome = { ok: false, error, retryDelayMs: deadReason ? undefined : retryDelay(def.options.retries, task.retries, err) };
  }
  // The last progress goes out before the end (one connection keeps them in order).
  run.progress?.flush();
  if (run.released) return undefined;
  const runtimeMs = performance.now() - began;
  const done = outcome;
  const announce: Finish['stored'] = (stored) => {
    if (stored.kind === 'stale') {
      host.emit('error', new StaleRunError(task.id, task.name, stored.state, 'end'));
    } else if (stored.state === 'REVOKED') {
      host.emit('revoked', { id: task.id, name: task.name, queue, args: event.args, reason: 'revoked' });
    } else if (stored.state === 'RETRY' && !done.ok) {
      host.emit('retried', { ...event, error: done.error, delayMs: done.retryDelayMs ?? 0, runtimeMs });
    } else if (done.ok) {
      // Built field by field: an object spread here cost measurable CPU per task (docs/decisions.md).
      const { id, name, args, attempt } = event;
      host.emit('succeeded', { id, name, queue, args, attempt, result: done.result, runtimeMs });
    } else {
      host.emit('failed', { ...event, error: done.error, runtimeMs });
    }
  };
  // Called from the queue runner's loop, which must not stop for anything thrown here.
  const stored: Finish['stored'] = (s) => {
    try {
      announce(s);
    } catch (err) {
      host.reportError(err);
    }
  };
  const expireMs = def.options.resultExpiresMs ?? host.resultExpiresMs;
  if (done.ok) {
    const json = done.json;
    host.finished(run, { id: task.id, token: task.token, state: 'SUCCESS', field: json === undefined ? '' : FIELDS.result, value: json ?? '', expireMs, retryDelayMs: 0, deadReason, stored });
    return done;
  }
  host.finished(run, {
    id: task.id,
    token: task.token,
    state: done.retryDelayMs !== undefined ? 'RETRY' : 'FAILURE',
    field: FIELDS.error,
    value: JSON.stringify(done.error),
    expireMs,
    retryDelayMs: done.retryDelayMs ?? 0,
    deadReason,
    stored,
  });
  return done;
}
