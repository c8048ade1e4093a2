export { HeimdallModule } from './heimdall.module.js';
export type { HeimdallDispatcherOptions, HeimdallModuleAsyncOptions, HeimdallModuleOptions, HeimdallModuleScope, HeimdallWorkerOptions } from './heimdall-options.js';
export { InjectTasks, getTasksToken } from './inject-tasks.decorator.js';
export { OnTaskEvent, TASK_EVENT_METADATA } from './on-task-event.decorator.js';
export type { TaskEventName } from './on-task-event.decorator.js';
export type { HeimdallTaskRequest } from './task-explorer.js';
export { Dispatcher } from '../core/producer/dispatcher.js';
export type { TaskProxy } from '../core/producer/dispatcher.js';
export type { WorkerEvents } from '../core/worker/worker-options.js';
