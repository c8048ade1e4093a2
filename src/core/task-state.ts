/**
 * The states of a task, as in Celery. `PENDING` also stands for an unknown id, since a task
 * that was never sent and one still queued look the same from outside.
 */
export type TaskState = 'PENDING' | 'STARTED' | 'RETRY' | 'SUCCESS' | 'FAILURE' | 'REVOKED';

/** States after which a task never changes again. */
export const FINAL_STATES: ReadonlySet<TaskState> = new Set(['SUCCESS', 'FAILURE', 'REVOKED']);

/** The error a failed task threw, as stored by the worker. */
export interface RemoteError {
  /** The error's `name`, e.g. `'TypeError'`. */
  name: string;
  /** The error's `message`. */
  message: string;
  /** The error's stack as the worker saw it. */
  traceback: string | undefined;
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
  /** Why the task was REVOKED (`'duplicate'`, ...). */
  revokeReason: string | undefined;
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

/** The arguments JSON of a task hash: whole in `a`, or in `ac` pieces a, a1, a2, ... (see includes/args.lua). */
function joinArgs(h: Record<string, string>): string | undefined {
  if (h.a === undefined || h.ac === undefined) return h.a;
  const count = Number(h.ac);
  if (!Number.isInteger(count) || count > 256) return undefined; // not a record of ours (see args.lua)
  if (count < 2) return h.a;
  let json = h.a;
  for (let i = 1; i < count; i++) {
    const piece = h[`a${i}`];
    if (piece === undefined) return undefined;
    json += piece;
  }
  return json;
}

/** Reads a task hash (HGETALL) into a TaskInfo. */
export function decodeTaskInfo<T>(id: string, h: Record<string, string>): TaskInfo<T> {
  const state = (h.s as TaskState | undefined) ?? 'PENDING';
  const args = json(joinArgs(h));
  return {
    id,
    name: h.n,
    state,
    args: Array.isArray(args) ? args : undefined,
    result: json(h.r) as T | undefined,
    error: h.e === undefined ? undefined : decodeError(h.e),
    revokeReason: h.rr,
    attempts: Number(h.at ?? 0),
    createdAt: date(h.c),
    dueAt: date(h.d),
    startedAt: date(h.st),
    finishedAt: date(h.f),
    worker: h.w,
  };
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
