/**
 * Every error heimdall-tasks throws is a subclass of {@link HeimdallError} with a stable
 * `code`. `instanceof` is answered from the prototype chain, then from a `Symbol.for` brand, so
 * it holds for an app's own subclasses and even when an app ends up with two copies of the
 * package (its ESM and CommonJS builds, or two versions).
 */
import type { TaskResult } from './producer/task-result.js';
import type { RevokeReason, TaskState } from './protocol/task-record.js';

const BRAND = Symbol.for('heimdall-tasks.error');

function brandOf(value: unknown): string | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const brand = (value as Record<symbol, unknown>)[BRAND];
  return typeof brand === 'string' ? brand : undefined;
}

/** Base class of every heimdall-tasks error. */
export class HeimdallError extends Error {
  /** Stable machine-readable code, e.g. `'HEIMDALL_ALREADY_QUEUED'`. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
    Object.defineProperty(this, BRAND, { value: code, enumerable: false });
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    // The prototype chain first: it answers for an app's own subclasses (with or without a
    // CODE of their own) as for any class.
    if (Function.prototype[Symbol.hasInstance].call(this, value)) return true;
    // Then the brand, for an error made by another copy of the package: the base class matches
    // every branded error; one of the library's classes, the errors of its own code. A class
    // that only inherits a CODE (an app's `class MyConfig extends ConfigError`) is matched by
    // the prototype chain alone, so a plain ConfigError is no MyConfig.
    const brand = brandOf(value);
    if (brand === undefined) return false;
    if (this === HeimdallError) return true;
    if (!Object.prototype.hasOwnProperty.call(this, 'CODE')) return false;
    return (this as unknown as { CODE?: unknown }).CODE === brand;
  }
}

/** Invalid options: thrown at decoration, construction or dispatch, never later. */
export class ConfigError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_CONFIG';
  constructor(message: string) {
    super(ConfigError.CODE, message);
  }
}

/** A value that JSON would not bring back as it was. `path` names it, e.g. `args[0].when`. */
export class SerializationError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_SERIALIZATION';
  /** Where the bad value sits, e.g. `args[0].when` or `result.items[3]`. */
  readonly path: string;
  constructor(path: string, problem: string) {
    super(
      SerializationError.CODE,
      `${path} ${problem}; task arguments and results must be plain JSON ` +
        `(numbers, strings, booleans, null, arrays and plain objects)`,
    );
    this.path = path;
  }
}

/** A unique task was dispatched while another task holds its lock (`uniqueRaises: true`). */
export class AlreadyQueuedError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_ALREADY_QUEUED';
  /** Id of the task that holds the lock. */
  readonly likelyCulprit: string;
  /** Seconds until the lock lapses (the `uniqueTimeout` deadlock escape). */
  readonly expiresIn: number;
  constructor(taskName: string, likelyCulprit: string, expiresIn: number) {
    super(
      AlreadyQueuedError.CODE,
      `${taskName} is already queued or running as task ${likelyCulprit}; ` +
        `its lock lapses in ${expiresIn.toFixed(1)} s`,
    );
    this.likelyCulprit = likelyCulprit;
    this.expiresIn = expiresIn;
  }
}

/** The remote task ended in FAILURE. Carries the remote error's name, message and stack. */
export class TaskFailedError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_TASK_FAILED';
  /** Id of the failed task. */
  readonly taskId: string;
  /** `name` of the error the task threw, e.g. `'TypeError'`. */
  readonly remoteName: string;
  /** `message` of the error the task threw. */
  readonly remoteMessage: string;
  /** The stack of the error as the worker saw it. */
  readonly traceback: string | undefined;
  constructor(taskId: string, remote: { name: string; message: string; traceback?: string | undefined }) {
    super(TaskFailedError.CODE, `task ${taskId} failed: ${remote.name}: ${remote.message}`);
    this.taskId = taskId;
    this.remoteName = remote.name;
    this.remoteMessage = remote.message;
    this.traceback = remote.traceback;
  }
}

/** The task was revoked (by a user, by expiry, or as a duplicate of a newer lock holder). */
export class TaskRevokedError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_TASK_REVOKED';
  readonly taskId: string;
  /** Why: `'revoked'` (by `revoke()`), `'duplicate'` (a newer holder of its unique lock), `'expired'` (not started by `expires`), `'purged'` (its queue was purged while it waited). */
  readonly reason: RevokeReason;
  constructor(taskId: string, reason: RevokeReason) {
    super(TaskRevokedError.CODE, `task ${taskId} was revoked (${reason})`);
    this.taskId = taskId;
    this.reason = reason;
  }
}

/** Waiting for a result took longer than the given timeout. The task itself goes on. */
export class TimeoutError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_TIMEOUT';
  constructor(message: string) {
    super(TimeoutError.CODE, message);
  }
}

/**
 * `startRedis()` of `heimdall-tasks/testing` found no `redis-server` to run. It never installs
 * one: the message names the command that does.
 */
export class RedisServerNotFoundError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_REDIS_SERVER_NOT_FOUND';
  constructor(message: string) {
    super(RedisServerNotFoundError.CODE, message);
  }
}

/** A member of a class was used as a task but carries no `@Task` decorator. */
export class NotATaskError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_NOT_A_TASK';
  constructor(what: string) {
    super(NotATaskError.CODE, `${what} is not a task: decorate the method with @Task()`);
  }
}

/** Throw it from a task to fail at once, without the retries its options would allow. */
export class NonRetryableError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_NON_RETRYABLE';
  constructor(message: string, options?: { cause?: unknown }) {
    super(NonRetryableError.CODE, message, options);
  }
}

/** A task ran past its `timeLimit`: its AbortSignal fires with this error, and it ends FAILURE. */
export class TimeLimitExceededError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_TIME_LIMIT';
  /** The limit, in milliseconds. */
  readonly limitMs: number;
  constructor(taskId: string, limitMs: number) {
    super(TimeLimitExceededError.CODE, `task ${taskId} ran past its time limit of ${limitMs} ms`);
    this.limitMs = limitMs;
  }
}

/**
 * A dispatch's arguments serialize to more than the Dispatcher's `maxPayloadBytes` (nothing was
 * sent), or a task's result to more than the Worker's (the task ends FAILURE with this error).
 */
export class PayloadTooLargeError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_PAYLOAD_TOO_LARGE';
  /** Size of the serialized arguments or result, in bytes. */
  readonly bytes: number;
  /** The `maxPayloadBytes` it is over: the dispatcher's for arguments, the worker's for a result. */
  readonly limit: number;
  constructor(taskName: string, bytes: number, limit: number, what: 'arguments' | 'result' = 'arguments') {
    super(
      PayloadTooLargeError.CODE,
      what === 'result'
        ? `the result of ${taskName} is ${bytes} bytes as JSON, over the worker's maxPayloadBytes (${limit}); ` +
            `store large data elsewhere and return a reference, or raise maxPayloadBytes`
        : `arguments of ${taskName} are ${bytes} bytes as JSON, over maxPayloadBytes (${limit}); ` +
            `store large data elsewhere and pass a reference, or raise maxPayloadBytes`,
    );
    this.bytes = bytes;
    this.limit = limit;
  }
}

/** Redis could not be reached within ioredis's retry budget; the command may or may not have run. */
export class RedisUnavailableError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_REDIS_UNAVAILABLE';
  /** The last error of the connection (refused, TLS, auth...), when it reported one. */
  readonly lastError: Error | undefined;
  constructor(what: string, options?: { cause?: unknown; lastError?: Error; betweenMasters?: string }) {
    super(
      RedisUnavailableError.CODE,
      options?.betweenMasters !== undefined
        ? `${what}: the shard of the queue could not serve the call now (${options.betweenMasters}): its master is failing over, or the queue's slot is moving to another master; the call goes through once that is over`
        : `${what}: Redis did not answer within the connection's retry budget (ioredis maxRetriesPerRequest); ` +
            (options?.lastError ? `the connection failed with: ${options.lastError.message}` : 'check that Redis is up and reachable'),
      { cause: options?.cause },
    );
    this.lastError = options?.lastError;
  }
}

/**
 * A worker's run of a task is no longer the task's current run, so what it reported was not
 * stored: its end (or its lease renewal) was refused. The task's lease lapsed and it was
 * recovered (or started again, or ended FAILURE with WorkerLostError), it was revoked with
 * terminate, or its record was replaced. Emitted as a Worker `error` event, never as
 * `succeeded` or `failed`.
 */
export class StaleRunError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_STALE_RUN';
  readonly taskId: string;
  readonly taskName: string;
  /** The state Redis holds for the task now; undefined when its record is gone. */
  readonly state: TaskState | undefined;
  constructor(taskId: string, taskName: string, state: TaskState | undefined, what: 'end' | 'lease') {
    super(
      StaleRunError.CODE,
      `task ${taskId} (${taskName}): this run is no longer the task's current run, so its ${what === 'end' ? 'end was not stored' : 'lease was not renewed'}; ` +
        `${staleCause(state)}. If leases lapse while tasks run, raise leaseDuration or keep the event loop free so they are renewed`,
    );
    this.taskId = taskId;
    this.taskName = taskName;
    this.state = state;
  }
}

function staleCause(state: TaskState | undefined): string {
  switch (state) {
    case undefined:
      return 'its record is gone or unreadable (expired, deleted, overwritten by another value, or evicted by Redis)';
    case 'PENDING':
    case 'RETRY':
      return `Redis holds it as ${state}: its lease lapsed and it was recovered, to run again`;
    case 'STARTED':
      return 'Redis holds it as STARTED under a newer run: its lease lapsed and it was started again';
    default:
      return `Redis holds it as ${state}, an end this run did not store (a lapsed lease ended by WorkerLostError, a revoke with terminate, or a newer run)`;
  }
}

/**
 * Redis refused a write because it is full: its used memory is over `maxmemory` and its
 * `maxmemory-policy` is `noeviction` (or, under a `volatile-*` policy, no key with a TTL is left
 * to evict). Redis refuses such a command, or a script at its first write, so nothing of the
 * call was written. `cause` is Redis's own error. See docs/redis-memory.md.
 */
export class RedisOutOfMemoryError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_REDIS_OOM';
  /**
   * `refused`: a worker's call went on around commands Redis refused inside it (its text names
   * them, e.g. moving due delayed tasks); without it, nothing of the call was written.
   */
  constructor(what: string, options?: { cause?: unknown; refused?: string }) {
    super(
      RedisOutOfMemoryError.CODE,
      `${what}: Redis is out of memory (used memory is over maxmemory) and refused to write, so ` +
        (options?.refused === undefined
          ? 'nothing of this call was written; '
          : `these steps were not done and are tried again (${options.refused}); `) +
        'free memory in Redis (delete keys you do not need, shorten resultExpires) or raise its maxmemory, then try again',
      { cause: options?.cause },
    );
  }
}

/** Whether an error is Redis's out-of-memory reply (`OOM command not allowed when used memory > 'maxmemory'`, ...). */
export function isOutOfMemoryReply(err: unknown): boolean {
  try {
    return err instanceof Error && err.name === 'ReplyError' && err.message.startsWith('OOM ');
  } catch {
    return false; // a hostile value (a revoked Proxy, a throwing getter) is no reply of Redis's
  }
}

/** Redis's out-of-memory reply as a RedisOutOfMemoryError saying `what` was refused; anything else as it is. */
export function outOfMemory(err: unknown, what: string): unknown {
  return isOutOfMemoryReply(err) ? new RedisOutOfMemoryError(what, { cause: err }) : err;
}

/** True for Redis's reply to a command on a key of another type (a key heimdall did not write). */
export function isWrongType(err: unknown): boolean {
  return err instanceof Error && err.message.startsWith('WRONGTYPE');
}

/**
 * An error of a call to Redis in heimdall's terms, naming `what` was being done: ioredis giving
 * up after its retry budget is a RedisUnavailableError (with the connection's `lastError`), a
 * full Redis a RedisOutOfMemoryError, any other error reply of Redis's (an ACL, a key of the
 * wrong type, a lone MOVED) a RedisRefusedError, a closed connection or a Cluster between masters
 * (failing over, see isFailingOver) a RedisUnavailableError; Redis's or ioredis's own error is the `cause`. A HeimdallError, or
 * anything else, is returned as it is.
 */
export function fromRedis(err: unknown, what: string, lastError?: Error): unknown {
  // ioredis's errors are known by name, not class: the app's ioredis (a Cluster or client it
  // passes in) may be another copy than the one this package imports. Everything is read under
  // try: a hostile value (a Proxy whose traps throw) passes as it is, for the caller to describe.
  try {
    if (err instanceof HeimdallError || !(err instanceof Error)) return err;
    if (isFailingOver(err)) return new RedisUnavailableError(what, { cause: err, betweenMasters: err.message.slice(0, 200) });
    if (err.name === 'MaxRetriesPerRequestError' || /^Connection is closed\.?$/.test(err.message)) {
      return new RedisUnavailableError(what, { cause: err, lastError });
    }
    if (isOutOfMemoryReply(err)) return new RedisOutOfMemoryError(what, { cause: err });
    if (err.name === 'ReplyError') return new RedisRefusedError(`${what}: Redis answered ${err.message}`, { cause: err });
  } catch {
    // a hostile value passes as it is
  }
  return err;
}

/**
 * Redis between masters: ioredis ran out of Cluster redirections while a shard's master was down
 * or being replaced ('Too many Cluster redirections', its MOVED or a closed connection as the
 * last error), the cluster answered that it cannot serve the slot now (CLUSTERDOWN, TRYAGAIN,
 * MASTERDOWN), a demoted master refused a write (READONLY: the client still talks to the old
 * master of a Sentinel set), or the slot is being moved to another master (a reshard). The call
 * may go through once a replica is promoted or the move is over: unavailable, not refused.
 */
function isFailingOver(err: Error): boolean {
  return (
    err.message.startsWith('Too many Cluster redirections') ||
    /^(CLUSTERDOWN|TRYAGAIN|MASTERDOWN|READONLY)\b/.test(err.message) ||
    // A script meeting a key of a slot being moved to another master (a reshard): it failed
    // before writing anything (the enqueue script writes nothing until its checks pass), and
    // goes through once the move is over.
    /Script attempted to access a non local key/.test(err.message)
  );
}

/**
 * Whether a call that failed with `err` (as ioredis rejected it) was refused by Redis between two
 * masters (see isFailingOver), or lost with a Cluster node's connection, so that sending it again
 * once the new master serves is the way through. Such a call either did not run or, when the
 * connection closed with it in flight, may have: only calls that are safe to repeat (the enqueue
 * script, which recognises its own re-sent task) are sent again on it.
 */
export function isBetweenMasters(err: unknown, cluster: boolean): boolean {
  if (!(err instanceof Error)) return false;
  try {
    return isFailingOver(err) || (cluster && /^Connection is closed\.?$/.test(err.message));
  } catch {
    return false;
  }
}

/** Runs a call to Redis; what it rejects with goes through {@link fromRedis}. */
export async function redisCall<T>(what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw fromRedis(err, what);
  }
}

/**
 * `delayMany` sent some of its tasks and not the others. `results[i]` is the handle of entry i
 * when its task is in Redis (enqueued, or a unique duplicate's holder), undefined when it is
 * not; `errors[i]` is why entry i was not sent, undefined when it was. A task whose error is a
 * RedisUnavailableError may or may not have been enqueued (Redis's reply was lost); every other
 * error means nothing of that task was written, so sending those entries again is safe.
 */
export class PartialDispatchError<R = unknown> extends HeimdallError {
  static readonly CODE = 'HEIMDALL_PARTIAL_DISPATCH';
  /** Per entry of the list: its handle, or undefined when it was not sent. */
  readonly results: (TaskResult<R> | undefined)[];
  /** Per entry of the list: why it was not sent, or undefined when it was. */
  readonly errors: unknown[];
  /** Entries sent (with a handle in `results`). */
  readonly sent: number;
  /** Entries not sent (with an error in `errors`). */
  readonly failed: number;
  constructor(taskName: string, results: (TaskResult<R> | undefined)[], errors: unknown[]) {
    const sent = results.filter((r) => r !== undefined).length;
    const failed = results.length - sent;
    const first = results.findIndex((r) => r === undefined);
    const reason = errors[first];
    const said = reason instanceof Error ? `${reason.name}: ${reason.message}` : String(reason);
    super(
      PartialDispatchError.CODE,
      `delayMany of ${taskName}: ${sent} of ${results.length} tasks were sent and ${failed} ${failed === 1 ? 'was' : 'were'} not; ` +
        `the first not sent, argsList[${first}], failed with ${said}. ` +
        'The error\'s results hold the handles of the tasks sent, its errors the error of each entry not sent',
    );
    this.results = results;
    this.errors = errors;
    this.sent = sent;
    this.failed = failed;
  }
}

/**
 * A task's record cannot be run by this version of heimdall-tasks: arguments that are not a JSON
 * array, a field of the wrong kind, a key of the wrong type. The task ends FAILURE with it and is
 * dead-lettered. (Made by the worker, and by the scripts under this name.)
 */
export class MalformedTaskError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_MALFORMED_TASK';
  constructor(message: string) {
    super(MalformedTaskError.CODE, message);
  }
}

/**
 * No worker has declared the task's name for the worker's `unknownTaskGrace`: the task ends
 * FAILURE with it and is dead-lettered. (Stored by the decline script under this name.)
 */
export class UnknownTaskError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_UNKNOWN_TASK';
  constructor(message: string) {
    super(UnknownTaskError.CODE, message);
  }
}

/**
 * The reason a run's AbortSignal fires when the run is no longer its task's current run: its
 * lease lapsed and the task was recovered, or started again.
 */
export class LeaseLostError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_LEASE_LOST';
  readonly taskId: string;
  constructor(taskId: string) {
    super(
      LeaseLostError.CODE,
      `task ${taskId} is no longer this worker's: its lease lapsed and it was recovered; raise leaseDuration, or keep the event loop free (a task that blocks it stops lease renewals)`,
    );
    this.taskId = taskId;
  }
}

/**
 * Reported as a worker `error` event when a running task's concurrency permit had lapsed at its
 * renewal (the worker could not reach Redis for a whole lease, or its event loop was blocked that
 * long): the permit may be another run's now, so for a while more runs than the limit allow may
 * run at once. The run goes on (its own lease tells whether it is still its task's).
 */
export class PermitLostError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_PERMIT_LOST';
  readonly taskId: string;
  constructor(taskId: string, scope: string) {
    super(
      PermitLostError.CODE,
      `task ${taskId} no longer holds its permit of ${scope}: it lapsed before it was renewed; raise leaseDuration, or keep the event loop free`,
    );
    this.taskId = taskId;
  }
}

/**
 * The reason a run's AbortSignal fires when `worker.close({ timeout })` stops waiting for it: the
 * task goes back to the front of its queue.
 */
export class WorkerShutdownError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_WORKER_SHUTDOWN';
  constructor(workerId: string) {
    super(WorkerShutdownError.CODE, `worker ${workerId} is shutting down: the task goes back to its queue`);
  }
}

/**
 * Redis answered a command with an error (an ACL, a key of the wrong type, a Cluster slot on the
 * move; a full Redis is a RedisOutOfMemoryError): from a dispatch, the task was not sent and
 * nothing of it was written; from a worker (an `error` event), what it could not do is kept
 * and tried again. `cause`, when set, is Redis's reply.
 */
export class RedisRefusedError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_REDIS_REFUSED';
  constructor(message: string, options?: { cause?: unknown }) {
    super(RedisRefusedError.CODE, message, options);
  }
}

/** A Lua script answered something this version does not know: a bug, or scripts of another version on the same server. */
export class UnexpectedReplyError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_UNEXPECTED_REPLY';
  constructor(message: string) {
    super(UnexpectedReplyError.CODE, message);
  }
}

/**
 * A fault in the worker's own code, or in a listener of its events, reported as an `error`
 * event: the task it names still ends (FAILURE), and the worker goes on.
 */
export class WorkerFaultError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_WORKER_FAULT';
  constructor(message: string) {
    super(WorkerFaultError.CODE, message);
  }
}

/**
 * A task went on after its AbortSignal fired at its time limit: it has ended (FAILURE or RETRY)
 * and its slot is free, but its promise still runs. Reported as an `error` event.
 */
export class RunawayTaskError extends HeimdallError {
  static readonly CODE = 'HEIMDALL_RUNAWAY_TASK';
  readonly taskId: string;
  constructor(taskId: string, taskName: string) {
    super(
      RunawayTaskError.CODE,
      `task ${taskId} (${taskName}) ignored the AbortSignal at its time limit; its promise is still running (pass currentTask().signal to what the task awaits)`,
    );
    this.taskId = taskId;
  }
}
