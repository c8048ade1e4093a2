// The instrumentation seam: how heimdall-tasks/prometheus and heimdall-tasks/otel observe the
// sends of a Dispatcher and the runs of a Worker. Internal but stable: not exported from the
// package root, kept compatible for the package's own entries (and so across its ESM and
// CommonJS builds: the symbol is registered with Symbol.for and the hooks are plain objects).
// With no hook attached, a send and a run take the same path as before: one property read.
import type { TaskResult } from './producer/task-result.js';
import type { RemoteError } from './protocol/task-record.js';

/** The key of the method `[INSTRUMENT](hooks)` of a Dispatcher and a Worker: attaches hooks, returns their detach. */
export const INSTRUMENT: unique symbol = Symbol.for('heimdall-tasks.instrument') as typeof INSTRUMENT;

/** A task about to be sent. */
export interface SendInfo {
  readonly name: string;
  readonly queue: string;
  /** The id it is sent under (a unique duplicate resolves to the holder's handle instead). */
  readonly id: string;
}

/**
 * Sends the task, with `fields` (field, value pairs) added to its message: a hook's way to carry
 * something with the task, as the trace context. Resolves to the task's handle
 * (`duplicate: true` when a unique lock sent it to its holder), rejects as the dispatch does.
 */
export type SendTask = (fields?: readonly string[]) => Promise<TaskResult<unknown>>;

/** A run about to begin (the task was started by Redis and is this worker's to run). */
export interface RunInfo {
  readonly id: string;
  readonly name: string;
  readonly queue: string;
  readonly attempt: number;
  /** The record fields the hooks asked for (`recordFields`), as stored; absent ones undefined. */
  readonly record: Readonly<Record<string, string | undefined>>;
}

/** How a run ended, as the worker hands it to Redis to store. */
export type RunOutcome = { readonly ok: true } | { readonly ok: false; readonly error: RemoteError; readonly retryDelayMs: number | undefined };

/** Runs the task; resolves once its end is handed over to be stored, to that end (undefined: the run was released without one). */
export type RunTask = () => Promise<RunOutcome | undefined>;

/** What one instrumentation attaches. Every member is optional. */
export interface InstrumentationHooks {
  /** Wraps each send: must call `send` once and resolve or reject as it does. */
  send?(info: SendInfo, send: SendTask): Promise<TaskResult<unknown>>;
  /**
   * Wraps each run: must call `run` once (inside whatever context the run should see) and
   * resolve as it does. It never rejects for a failing task: a failure is an outcome.
   */
  run?(info: RunInfo, run: RunTask): Promise<RunOutcome | undefined>;
  /**
   * Fields of the task record the run hook reads (e.g. the trace context). The worker reads them
   * with one HMGET before the run, only while a hook asks for any. Default: none.
   */
  recordFields?: readonly string[];
}

/** A Dispatcher or a Worker: something hooks attach to. */
export interface Instrumentable {
  [INSTRUMENT](hooks: InstrumentationHooks): () => void;
}

type SendHook = NonNullable<InstrumentationHooks['send']>;
type RunHook = NonNullable<InstrumentationHooks['run']>;

/**
 * The hooks attached to one Dispatcher or Worker, composed: `send` and `run` are undefined while
 * none is attached, so the hot paths test one property; the first attached is the outermost.
 */
export class HookChain {
  send: SendHook | undefined;
  run: RunHook | undefined;
  recordFields: readonly string[] = [];
  private readonly attached: InstrumentationHooks[] = [];

  /** Attaches `hooks`; returns their detach (idempotent). */
  add(hooks: InstrumentationHooks): () => void {
    this.attached.push(hooks);
    this.compose();
    return () => {
      const i = this.attached.indexOf(hooks);
      if (i === -1) return;
      this.attached.splice(i, 1);
      this.compose();
    };
  }

  private compose(): void {
    let send: SendHook | undefined;
    let run: RunHook | undefined;
    for (const h of [...this.attached].reverse()) {
      const outerSend = h.send?.bind(h);
      if (outerSend) {
        const inner = send;
        send = inner ? (info, next) => outerSend(info, (fields) => inner(info, (more) => next([...(fields ?? []), ...(more ?? [])]))) : outerSend;
      }
      const outerRun = h.run?.bind(h);
      if (outerRun) {
        const inner = run;
        run = inner ? (info, next) => outerRun(info, () => inner(info, next)) : outerRun;
      }
    }
    this.send = send;
    this.run = run;
    this.recordFields = [...new Set(this.attached.flatMap((h) => h.recordFields ?? []))];
  }
}

/** Attaches hooks to a Dispatcher or a Worker; returns their detach. */
export function instrument(target: Instrumentable, hooks: InstrumentationHooks): () => void {
  return target[INSTRUMENT](hooks);
}

/** One target or a list of them (the entries' `worker` and `dispatcher` options) as a list. */
export function listOf<T extends object>(value: T | readonly T[] | undefined): readonly T[] {
  return value === undefined ? [] : Array.isArray(value) ? (value as readonly T[]) : [value as T];
}
