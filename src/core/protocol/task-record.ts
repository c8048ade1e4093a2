// Encoding and decoding of a task record, the HASH `<prefix>:{<queue>}:t:<id>` (fields in
// task-fields.ts): what a producer writes into it (the message) and what a reader gets out of it.
// docs/protocol.md is the contract for producers in other languages.
import { MalformedTaskError } from '../errors.js';
import { FIELDS } from './task-fields.js';

/**
 * The states of a task, as in Celery. `PENDING` also stands for an unknown id, since a task
 * that was never sent and one still queued look the same from outside.
 */
export type TaskState = 'PENDING' | 'STARTED' | 'RETRY' | 'SUCCESS' | 'FAILURE' | 'REVOKED';

/** States after which a task never changes again. */
export const FINAL_STATES: ReadonlySet<TaskState> = new Set(['SUCCESS', 'FAILURE', 'REVOKED']);

const STATES: ReadonlySet<string> = new Set(['PENDING', 'STARTED', 'RETRY', 'SUCCESS', 'FAILURE', 'REVOKED']);

/** Whether `s` (a state field as Redis holds it) is one of the task states. */
export function isTaskState(s: string): s is TaskState {
  return STATES.has(s);
}

/** The error a failed task threw, as stored by the worker. */
export interface RemoteError {
  /** The error's `name`, e.g. `'TypeError'`. */
  name: string;
  /** The error's `message`. */
  message: string;
  /** The error's stack as the worker saw it. */
  traceback: string | undefined;
}

/** How far a running task said it has got (`currentTask().progress()`). */
export interface TaskProgress {
  /** A fraction from 0 to 1. */
  value: number;
  /** What it said with it, if anything. */
  message: string | undefined;
  /** When it said so (the worker's clock). */
  at: Date;
}

/**
 * Reads a stored progress; undefined when absent, not one of ours, or reported by another run
 * than the record's last (`token`: the record's tk), so a retry does not show the progress of
 * the attempt before it.
 */
export function decodeProgress(text: string | null | undefined, token?: string): TaskProgress | undefined {
  const p = json(text ?? undefined) as { v?: unknown; m?: unknown; at?: unknown; t?: unknown } | undefined;
  if (typeof p !== 'object' || p === null || typeof p.v !== 'number') return undefined;
  if (p.t !== undefined && token !== undefined && String(p.t) !== token) return undefined;
  return { value: p.v, message: typeof p.m === 'string' ? p.m : undefined, at: new Date(typeof p.at === 'number' ? p.at : 0) };
}

/** Everything the result backend knows of a task. */
export interface TaskInfo<T = unknown> {
  id: string;
  /** Registry name; undefined for an unknown id. */
  name: string | undefined;
  state: TaskState;
  /** The arguments the task was sent with; undefined for an unknown id. */
  args: unknown[] | undefined;
  /** The return value, once SUCCESS. */
  result: T | undefined;
  /** The error, once FAILURE. */
  error: RemoteError | undefined;
  /** Why the task was REVOKED. */
  revokeReason: RevokeReason | undefined;
  /** How many times the task was started. */
  attempts: number;
  /** When the task was sent (Redis clock). */
  createdAt: Date | undefined;
  /** When a countdown or eta task is (or was) due. */
  dueAt: Date | undefined;
  /** When its last attempt started. */
  startedAt: Date | undefined;
  /** When it ended. */
  finishedAt: Date | undefined;
  /** Id of the worker that ran (or runs) its last attempt. */
  worker: string | undefined;
  /** The last progress its running task reported (kept after it ends), or undefined. */
  progress: TaskProgress | undefined;
  /**
   * Every attempt so far, oldest first (the last 20 before the current one, then the current):
   * when each started and ended, on which worker, how it ended, and the backoff before the next.
   */
  history: AttemptInfo[];
}

/** One attempt of a task, in `TaskInfo.history`. */
export interface AttemptInfo {
  /** 1 for the first start. */
  attempt: number;
  startedAt: Date | undefined;
  /** When it ended; undefined while it runs, or when its worker was lost. */
  finishedAt: Date | undefined;
  worker: string | undefined;
  /**
   * How it ended: 'retried' (failed, and the task ran again), 'lost' (its worker stopped renewing
   * the lease; the task was recovered), or for the current attempt the task's state.
   */
  outcome: 'retried' | 'lost' | TaskState;
  /** The error of a retried or failed attempt (name and message; the traceback is kept for the last one only, in `error`). */
  error: { name: string; message: string } | undefined;
  /** Milliseconds waited before the next attempt (a retry's backoff). */
  backoffMs: number | undefined;
}

function date(v: string | undefined): Date | undefined {
  return v === undefined ? undefined : new Date(Number(v));
}

function json(v: string | undefined): unknown {
  if (v === undefined) return undefined;
  try {
    return JSON.parse(v);
  } catch {
    return undefined;
  }
}

/** Why a task ended REVOKED. */
export type RevokeReason = 'revoked' | 'duplicate' | 'expired' | 'purged' | 'replaced' | 'debounced';

/** The arguments JSON of a task hash: whole in `a`, or in `ac` pieces a, a1, a2, ... (see includes/args.lua). */
function joinArgs(h: Record<string, string>): string | undefined {
  const first = h[FIELDS.args];
  const pieces = h[FIELDS.argsPieces];
  if (first === undefined || pieces === undefined) return first;
  const count = Number(pieces);
  if (!Number.isInteger(count) || count > 256) return undefined; // not a record of ours (see args.lua)
  if (count < 2) return first;
  let json = first;
  for (let i = 1; i < count; i++) {
    const piece = h[`${FIELDS.args}${i}`];
    if (piece === undefined) return undefined;
    json += piece;
  }
  return json;
}

/**
 * The state a reader shows for a record's `s` and `rs` (FIELDS.reserved): a reservation
 * (prefetch: STARTED in Redis, its handler not begun) reads PENDING; STARTED means the handler began.
 */
export function visibleState(state: string | null | undefined, reserved: string | null | undefined): TaskState {
  if (state === 'STARTED' && reserved === '1') return 'PENDING';
  return (state as TaskState | null | undefined) ?? 'PENDING';
}

/** Reads a task hash (HGETALL) into a TaskInfo. */
export function decodeTaskInfo<T>(id: string, record: Record<string, string>): TaskInfo<T> {
  let h = record;
  if (record[FIELDS.state] === 'STARTED' && record[FIELDS.reserved] === '1') {
    // A reservation: its attempt has not begun, so it is neither counted nor listed.
    h = { ...record, [FIELDS.state]: 'PENDING', [FIELDS.attempts]: String(Math.max(0, Number(record[FIELDS.attempts] ?? 1) - 1)) };
  }
  const state = (h[FIELDS.state] as TaskState | undefined) ?? 'PENDING';
  const args = json(joinArgs(h));
  const error = h[FIELDS.error];
  return {
    id,
    name: h[FIELDS.name],
    state,
    args: Array.isArray(args) ? args : undefined,
    result: json(h[FIELDS.result]) as T | undefined,
    error: error === undefined ? undefined : decodeError(error),
    revokeReason: h[FIELDS.revokeReason] as RevokeReason | undefined,
    attempts: Number(h[FIELDS.attempts] ?? 0),
    createdAt: date(h[FIELDS.created]),
    dueAt: date(h[FIELDS.due]),
    startedAt: date(h[FIELDS.startedAt]),
    finishedAt: date(h[FIELDS.finishedAt]),
    worker: h[FIELDS.worker],
    progress: decodeProgress(h[FIELDS.progress], h[FIELDS.token]),
    history: decodeHistory(h, state),
  };
}

/** The attempts kept in field ah (includes/history.lua), then the current one from the record's own fields. */
function decodeHistory(h: Record<string, string>, state: TaskState): AttemptInfo[] {
  const out: AttemptInfo[] = [];
  const kept = json(h[FIELDS.history]);
  if (Array.isArray(kept)) {
    for (const raw of kept as unknown[]) {
      if (typeof raw !== 'object' || raw === null) continue;
      const a = raw as Record<string, unknown>;
      const n = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
      const lost = a.lost === true;
      out.push({
        attempt: n(a.a) ?? out.length + 1,
        startedAt: n(a.st) === undefined ? undefined : new Date(n(a.st)!),
        finishedAt: n(a.f) === undefined ? undefined : new Date(n(a.f)!),
        worker: typeof a.w === 'string' ? a.w : undefined,
        outcome: lost ? 'lost' : 'retried',
        error: typeof a.en === 'string' ? { name: a.en, message: typeof a.em === 'string' ? a.em : '' } : undefined,
        backoffMs: n(a.b),
      });
    }
  }
  // The current (or last) attempt, unless the history already ends with it (a retry waiting, a recovery).
  const attempts = Number(h[FIELDS.attempts] ?? 0);
  if (attempts > 0 && out[out.length - 1]?.attempt !== attempts) {
    const stored = h[FIELDS.error];
    const err = stored === undefined ? undefined : decodeError(stored);
    out.push({
      attempt: attempts,
      startedAt: date(h[FIELDS.startedAt]),
      finishedAt: FINAL_STATES.has(state) ? date(h[FIELDS.finishedAt]) : undefined,
      worker: h[FIELDS.worker],
      outcome: state,
      error: err && state === 'FAILURE' ? { name: err.name, message: err.message } : undefined,
      backoffMs: undefined,
    });
  }
  return out;
}

/** What a producer puts in a task's message (see docs/protocol.md). */
export interface TaskMessage {
  name: string;
  /** The arguments as a JSON array. */
  argsJson: string;
  /** Time limit of each run, ms. */
  timeLimitMs?: number | undefined;
  /** Not started after this epoch ms (the producer's clock), it ends REVOKED 'expired'. */
  expiresAt?: number | undefined;
  maxRecoveries?: number | undefined;
  lock?: { key: string; ttlMs: number; waitForExpiry: boolean } | undefined;
  rate?: { key: string; limit: number; periodMs: number } | undefined;
  /** With a lock: what a dispatch does when it is held (onConflict), beside return and raise; debounce times in ms. */
  conflict?: { mode: 'replace' | 'keepLast' | 'debounce'; waitMs: number; maxWaitMs: number } | undefined;
  /** A random token of this dispatch (FIELDS.sendNonce), so a re-sent call is known after the task ended. */
  sendNonce?: string | undefined;
}

/** The field, value pairs of a message, as the enqueue script takes them (it adds state, created and version, and splits long arguments). */
export function encodeMessage(m: TaskMessage): (string | number)[] {
  const fields: (string | number)[] = [FIELDS.name, m.name, FIELDS.args, m.argsJson];
  if (m.timeLimitMs !== undefined) fields.push(FIELDS.timeLimit, m.timeLimitMs);
  if (m.expiresAt !== undefined) fields.push(FIELDS.expires, m.expiresAt);
  if (m.maxRecoveries !== undefined) fields.push(FIELDS.maxRecoveries, m.maxRecoveries);
  if (m.lock) {
    fields.push(FIELDS.lockKey, m.lock.key, FIELDS.lockTtl, m.lock.ttlMs);
    if (m.lock.waitForExpiry) fields.push(FIELDS.lockWaitForExpiry, '1');
    if (m.conflict) {
      fields.push(FIELDS.conflictMode, m.conflict.mode);
      if (m.conflict.mode === 'debounce') fields.push(FIELDS.debounceWait, m.conflict.waitMs, FIELDS.debounceMaxWait, m.conflict.maxWaitMs);
    }
  }
  if (m.rate) fields.push(FIELDS.rateKey, m.rate.key, FIELDS.rateLimit, m.rate.limit, FIELDS.ratePeriod, m.rate.periodMs);
  if (m.sendNonce !== undefined) fields.push(FIELDS.sendNonce, m.sendNonce);
  return fields;
}

/**
 * The stored result of a SUCCESS (field `r`; absent: the task returned undefined). A value that
 * is not JSON (a record some other writer made or damaged) is a MalformedTaskError naming the
 * task: get() must not hand back a value the task did not return. decodeTaskInfo, which
 * describes a record for inspection, shows such a result as undefined instead.
 */
export function decodeResult(id: string, text: string | null | undefined): unknown {
  if (text === null || text === undefined) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new MalformedTaskError(`task ${id} is SUCCESS but its stored result is not JSON: ${text.slice(0, 200)}`);
  }
}

/** Reads the stored error JSON, tolerating anything. */
export function decodeError(text: string): RemoteError {
  const e = json(text) as Partial<RemoteError> | undefined;
  return {
    name: typeof e?.name === 'string' ? e.name : 'Error',
    message: typeof e?.message === 'string' ? e.message : String(text),
    traceback: typeof e?.traceback === 'string' ? e.traceback : undefined,
  };
}
