import { LeaseLostError, MalformedTaskError } from '../errors.js';
import type { StartedRun } from '../protocol/scripts.js';
import { taskStorage, type CurrentTask } from './current-task.js';
import type { QueueKeys } from '../protocol/queue-keys.js';
import type { QueueRunner } from './queue-runner.js';
import type { ProgressThrottle } from './progress.js';
import type { LimitHandle } from '../task/limits.js';
import type { PermitHold } from './permits.js';

/** What a run was charged in one named limit (limit-2.lua), for `currentTask().reportCost()`. */
export interface LimitCharge {
  readonly def: LimitHandle;
  /** The units charged; a reported cost replaces it. */
  cost: number;
  /** The task gave this limit a cost (reportCost without a limit name picks the only such one). */
  readonly weighted: boolean;
  /** The run's name in the limit: '<queue>|<id>:<attempt>'. */
  readonly run: string;
  /** Corrections in flight, one after the other. */
  pending?: Promise<unknown>;
}

/** What a run belongs to: the queue runner of a worker, or an inline dispatcher's queue. */
export interface RunOwner {
  readonly keys: QueueKeys;
}

/** A run this worker holds: started by a fetch, until its end is handed to the runner or it is released otherwise. */
export interface Run<O extends RunOwner = QueueRunner> {
  runner: O;
  task: StartedRun;
  /** Made on first use of the task's signal: most tasks never look at it, and making one is costly. */
  controller?: AbortController;
  /** Set when the run was told to stop; its signal is aborted with this reason. */
  aborted?: { reason: unknown };
  /** Set when the worker could not compute the options it admits a message under (its key function threw): the run fails with it. */
  admissionError?: unknown;
  /** What it was charged in its named limits, once they all admitted it. */
  limits?: LimitCharge[];
  /** The concurrency permits it holds, once it took them all: given back at its end. */
  permits?: PermitHold[];
  /** Its slot is free again (ended, revoked with terminate, lost, handed back or declined). */
  released: boolean;
  /**
   * Set while an admission or hand-back call may take the start back in Redis (admit-6, decline-7),
   * and after it did until the run is released: a lease renewal that meanwhile finds the task no
   * longer STARTED is that call's doing, which its own reply reports, not a lost lease.
   */
  sendingBack?: boolean;
  /** What currentTask() returns inside it, once it runs. */
  context?: CurrentTask;
  /** When this worker launched it (ms, its clock), for the registry. */
  startedAt?: number;
  /** Its progress writes, once it reported progress. */
  progress?: ProgressThrottle;
}

/** Key of a run in the worker's map: ids are unique per queue only (a custom taskId may repeat). */
export function runKey(queue: string, id: string): string {
  return `${queue}\u0000${id}`;
}

/** The AbortSignal of a run, made on first use (aborted at once if the run was already told to stop). */
export function signalOf(run: Run<RunOwner>): AbortSignal {
  if (!run.controller) {
    run.controller = new AbortController();
    if (run.aborted) run.controller.abort(run.aborted.reason);
  }
  return run.controller.signal;
}

/** Fires a run's AbortSignal inside its own context, so listeners can still call currentTask(). Once per run. */
export function abortRun(run: Run<RunOwner>, reason: Error): void {
  if (run.aborted) return;
  run.aborted = { reason };
  const controller = run.controller;
  if (!controller) return; // nobody listens yet: signalOf() hands out an aborted signal
  if (run.context) taskStorage().run(run.context, () => controller.abort(reason));
  else controller.abort(reason);
}

/** The signal reason of a run whose lease lapsed and whose task was recovered or started again. */
export function leaseLost(id: string): LeaseLostError {
  return new LeaseLostError(id);
}

/** A task's arguments; a MalformedTaskError when they are not a JSON array. */
export function parseArgs(json: string): unknown[] {
  try {
    const v: unknown = JSON.parse(json);
    if (Array.isArray(v)) return v;
  } catch {
    // reported below
  }
  const fault = new MalformedTaskError(`the task's arguments are not a JSON array: ${json.slice(0, 200)}`);
  messageFaults.add(fault);
  throw fault;
}

/** Errors the worker made because a message cannot be run (not thrown by any task). */
const messageFaults = new WeakSet<object>();

/**
 * True for an error the worker made about a message it cannot run (parseArgs): such a task is
 * dead-lettered and never retried. Known by identity, so an error a task throws is never taken
 * for one, whatever its class or name.
 */
export function isMessageFault(err: unknown): boolean {
  return typeof err === 'object' && err !== null && messageFaults.has(err);
}

/** A task's arguments for an event; [] when they are not a JSON array. */
export function safeArgs(json: string): unknown[] {
  try {
    return parseArgs(json);
  } catch {
    return [];
  }
}
