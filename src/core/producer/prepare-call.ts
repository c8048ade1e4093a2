import { customAlphabet } from 'nanoid';
import { ConfigError, PayloadTooLargeError } from '../errors.js';
import { DEFAULT_QUEUE, type QueueKeys } from '../protocol/queue-keys.js';
import type { EnqueueTask } from '../protocol/scripts.js';
import { encodeMessage, type TaskMessage } from '../protocol/task-record.js';
import { callChecks, mayTakePermits } from '../task/call-checks.js';
import { describe, toMillis, toMillisOrZero, type Duration } from '../task/durations.js';
import { argsToJson } from '../task/serialization.js';
import { DEFAULT_RESULT_EXPIRES_MS, type ConflictMode, type NormalizedTaskOptions } from '../task/task-options.js';

/** Per-call options of `applyAsync` and `send`. */
export interface ApplyOptions {
  /** Start no sooner than this long from now: seconds or an `ms` string. Default: at once. */
  countdown?: Duration;
  /** Start no sooner than this moment (a Date or epoch milliseconds). Wins over `countdown`. */
  eta?: Date | number;
  /** Use this id instead of a generated one. It must not belong to a task that has not ended. */
  taskId?: string;
  /** Send to this queue instead of the task's own. Unique locks and rate windows live under the queue. */
  queue?: string;
  /**
   * A task not started by then is REVOKED with reason 'expired' and never runs: a Duration from
   * now (seconds or an `ms` string), or a Date. Default: never.
   */
  expires?: Duration | Date;
  /** Time limit of this call's run, overriding the task's `timeLimit`. Seconds or an `ms` string. */
  timeLimit?: Duration;
}

/** One checked call, ready for an Enqueuer (`send(keys, task, bytes, ...)`). */
export interface PreparedCall {
  name: string;
  /** The task's options as given to prepareCall (undefined for a name this process does not know). */
  opts: NormalizedTaskOptions | undefined;
  /** The keys of the queue it goes to. */
  keys: QueueKeys;
  id: string;
  /** The caller chose the id (`taskId`), which `enqueued()` needs to read the reply. */
  customId: boolean;
  /** What the enqueue script gets for it. */
  task: EnqueueTask;
  /** Size of its serialized arguments (bytes, or characters when that is safely below the limit). */
  bytes: number;
}

const newId = customAlphabet('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz', 22);
// 8 characters of 62: two dispatches of one custom task id share a nonce once in about 2 * 10^14.
const newNonce = customAlphabet('0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz', 8);
const CALL_OPTIONS = new Set(['countdown', 'eta', 'taskId', 'queue', 'expires', 'timeLimit']);

/**
 * Checks one call of a task and builds what the enqueue script needs for it: the arguments'
 * JSON (refused over `maxPayloadBytes`), the unique lock and rate window (`callChecks`), the id
 * (generated unless `call.taskId`) and the message (`encodeMessage`). Throws on bad input, so
 * nothing is sent. Everything that enqueues (the Dispatcher, a scheduler) goes through it, so
 * its messages carry the same locks and limits. `opts`: the task's normalized options, or
 * undefined for a name this process does not know (the worker then fills in lock and rate
 * limit). `keysFor`: the QueueKeys of a queue, validating its name.
 */
export function prepareCall(
  name: string,
  opts: NormalizedTaskOptions | undefined,
  args: readonly unknown[],
  call: ApplyOptions,
  keysFor: (queue: string) => QueueKeys,
  maxPayloadBytes: number,
): PreparedCall {
  if (!Array.isArray(args)) throw new ConfigError(`arguments of ${name} must be an array, got ${describe(args)}`);
  for (const k of Object.keys(call)) {
    if (!CALL_OPTIONS.has(k)) throw new ConfigError(`unknown call option '${k}'; known: ${[...CALL_OPTIONS].join(', ')}`);
  }
  const queue = call.queue ?? opts?.queue ?? DEFAULT_QUEUE;
  const keys = keysFor(queue);
  const argsJson = argsToJson(args);
  const bytes = argsJson.length <= maxPayloadBytes / 3 ? argsJson.length : Buffer.byteLength(argsJson);
  if (bytes > maxPayloadBytes) throw new PayloadTooLargeError(name, bytes, maxPayloadBytes);
  const countdownMs = call.countdown === undefined ? 0 : toMillisOrZero(call.countdown, 'countdown');
  const etaMs = call.eta === undefined ? 0 : etaToMillis(call.eta);
  if (call.taskId !== undefined && (typeof call.taskId !== 'string' || call.taskId === '' || /[\s{}]/.test(call.taskId))) {
    throw new ConfigError(`taskId must be a non-empty string without spaces or braces, got ${describe(call.taskId)}`);
  }
  const id = call.taskId ?? (queue === DEFAULT_QUEUE ? newId() : `${queue}:${newId()}`);

  const timeLimitMs = call.timeLimit !== undefined ? toMillis(call.timeLimit, 'timeLimit') : opts?.timeLimitMs;
  // A task that may take permits leaves its rate window to the worker, which takes it after them.
  const { lock, rate } = opts ? callChecks(keys, name, opts, args, argsJson, { lock: true, rate: !mayTakePermits(opts) }) : { lock: undefined, rate: undefined };
  const conflict = lock !== undefined && opts !== undefined ? conflictOf(opts.onConflict) : undefined;
  const fields = encodeMessage({
    name,
    argsJson,
    timeLimitMs,
    expiresAt: call.expires === undefined ? undefined : expiresToMillis(call.expires),
    maxRecoveries: opts?.maxRecoveries,
    lock,
    rate,
    conflict,
    // Sent again after a lost reply (by ioredis, or through a failover: failoverTimeout), a
    // call is answered as enqueued even if its task has run and ended meanwhile.
    sendNonce: newNonce(),
  });
  const task: EnqueueTask = { id, countdownMs, etaMs, lockKey: lock?.key ?? '', lockTtlMs: lock?.ttlMs ?? 0, fields };
  // The holder and pending task are not known yet: declared as none, the script names them if any (code 8).
  if (conflict !== undefined) task.conflict = { holder: '', pending: '', expiresMs: opts?.resultExpiresMs ?? DEFAULT_RESULT_EXPIRES_MS };
  return { name, opts, keys, id, customId: call.taskId !== undefined, task, bytes };
}

/** What the message says of `onConflict` (field cm): nothing for return and raise, which the producer handles. */
function conflictOf(mode: ConflictMode): TaskMessage['conflict'] {
  if (mode.kind === 'replace' || mode.kind === 'keepLast') return { mode: mode.kind, waitMs: 0, maxWaitMs: 0 };
  if (mode.kind === 'debounce') return { mode: 'debounce', waitMs: mode.waitMs, maxWaitMs: mode.maxWaitMs };
  return undefined;
}

function expiresToMillis(expires: Duration | Date): number {
  if (expires instanceof Date) return etaToMillis(expires);
  return Date.now() + toMillis(expires, 'expires');
}

function etaToMillis(eta: Date | number): number {
  const t = eta instanceof Date ? eta.getTime() : eta;
  if (typeof t !== 'number' || !Number.isFinite(t) || t <= 0) {
    throw new ConfigError(`eta must be a Date or epoch milliseconds, got ${describe(eta)}`);
  }
  return Math.round(t);
}
