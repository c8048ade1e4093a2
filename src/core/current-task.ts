import { AsyncLocalStorage } from 'node:async_hooks';
import { ConfigError } from './errors.js';

/** What a running task can learn about itself through {@link currentTask}. */
export interface CurrentTask {
  /** The task's id. */
  readonly id: string;
  /** Its registry name. */
  readonly name: string;
  /** The queue it came from. */
  readonly queue: string;
  /** 1 for the first run, 2 for the first retry or recovery, and so on. */
  readonly attempt: number;
  /** Fires when the task should stop: revoke, time limit, or worker shutdown. */
  readonly signal: AbortSignal;
}

// Shared through globalThis so currentTask() works whichever build (ESM or CJS) runs the worker.
const STORAGE_KEY = Symbol.for('heimdall-tasks.current-task');

/** The AsyncLocalStorage that carries the running task's context. */
export function taskStorage(): AsyncLocalStorage<CurrentTask> {
  const g = globalThis as Record<symbol, AsyncLocalStorage<CurrentTask> | undefined>;
  let s = g[STORAGE_KEY];
  if (!s) {
    s = new AsyncLocalStorage<CurrentTask>();
    g[STORAGE_KEY] = s;
  }
  return s;
}

/**
 * The task this code runs in: id, name, attempt and an AbortSignal. Throws ConfigError when
 * called outside a task run by a Worker.
 */
export function currentTask(): CurrentTask {
  const task = taskStorage().getStore();
  if (!task) throw new ConfigError('currentTask() was called outside a task run by a Worker');
  return task;
}
