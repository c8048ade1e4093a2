export { Task, TASK_METADATA } from './decorators/task.decorator.js';
export { Dispatcher } from './core/dispatcher.js';
export type { ApplyOptions, ConnectionOptions, DispatcherOptions, TaskProxy, TaskRef } from './core/dispatcher.js';
export { Worker } from './core/worker.js';
export type { CloseOptions, TaskEvent, WorkerEvents, WorkerOptions } from './core/worker.js';
export { TaskResult } from './core/task-result.js';
export type { GetOptions, RevokeOptions } from './core/task-result.js';
export type { RemoteError, TaskInfo, TaskState } from './core/task-state.js';
export { currentTask } from './core/current-task.js';
export type { CurrentTask, RetryRequestOptions } from './core/current-task.js';
export type { Backoff, ErrorClass, RateLimit, RetryOptions, TaskOptions } from './core/task-options.js';
export type { Duration } from './core/durations.js';
export type { ConnectionOption } from './core/connection.js';
export type { Constructor } from './core/registry.js';
export {
  AlreadyQueuedError,
  ConfigError,
  HeimdallError,
  NonRetryableError,
  NotATaskError,
  PartialDispatchError,
  PayloadTooLargeError,
  RedisOutOfMemoryError,
  RedisUnavailableError,
  SerializationError,
  StaleRunError,
  TaskFailedError,
  TaskRevokedError,
  TimeLimitExceededError,
  TimeoutError,
} from './core/errors.js';
