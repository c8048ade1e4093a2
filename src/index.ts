export { Task, TASK_METADATA } from './core/task/task.decorator.js';
export { Dispatcher } from './core/producer/dispatcher.js';
export type { ApplyOptions, ConnectionOptions, DispatcherOptions, PingOptions, TaskProxy, TaskRef, UniqueLock, WorkersOptions } from './core/producer/dispatcher.js';
export type { PingReply, RunningTask, WorkerInfo } from './core/protocol/worker-info.js';
export type { EventsOptions, QueueEvent, QueueEventType } from './core/events/queue-events.js';
export type { EventsReadOptions } from './core/events/event-stream.js';
export { Inspector } from './core/inspect/inspector.js';
export type { DeadLetter, DeadLetterResult, InspectorOptions, ListOptions, LockInfo, NamedLimitInfo, PermitHolder, PurgeOptions, QueueStats, PermitScopeInfo, RateWindowInfo, Throughput } from './core/inspect/inspector.js';
export type { LockExtension, LockRelease } from './core/protocol/scripts.js';
export { Worker } from './core/worker/worker.js';
export type { CloseOptions, TaskEvent, WorkerEvents, WorkerOptions } from './core/worker/worker-options.js';
export { onShutdownSignal } from './core/worker/shutdown-signals.js';
export type { ShutdownSignalHandle, ShutdownSignalOptions } from './core/worker/shutdown-signals.js';
export { TaskResult } from './core/producer/task-result.js';
export type { DispatchConflict, GetOptions, RevokeOptions } from './core/producer/task-result.js';
export type { AttemptInfo, RemoteError, RevokeReason, TaskInfo, TaskState } from './core/protocol/task-record.js';
export { currentTask } from './core/worker/current-task.js';
export type { CurrentTask, RetryRequestOptions } from './core/worker/current-task.js';
export type { Backoff, ConflictOption, ErrorClass, RateLimit, RetryOptions, TaskKey, TaskOptions } from './core/task/task-options.js';
export { Limits } from './core/task/limits.js';
export type { ConcurrencyLimitHandle, ConcurrencyLimitOptions, LimitAlgorithm, LimitHandle, LimitKind, LimitOptions, LimitsApi, LimitUse, RateLimitHandle } from './core/task/limits.js';
export type { Duration } from './core/task/durations.js';
export type { ClusterConnection, ConnectionOption, RedisClient } from './core/protocol/connection.js';
export type { Constructor } from './core/task/registry.js';
export {
  AlreadyQueuedError,
  ConfigError,
  HeimdallError,
  LeaseLostError,
  PermitLostError,
  MalformedTaskError,
  NonRetryableError,
  NotATaskError,
  PartialDispatchError,
  PayloadTooLargeError,
  RedisOutOfMemoryError,
  RedisRefusedError,
  RedisUnavailableError,
  RunawayTaskError,
  SerializationError,
  StaleRunError,
  TaskFailedError,
  TaskRevokedError,
  TimeLimitExceededError,
  TimeoutError,
  UnexpectedReplyError,
  UnknownTaskError,
  WorkerFaultError,
  WorkerShutdownError,
} from './core/errors.js';
