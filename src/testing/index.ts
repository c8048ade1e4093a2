export { startRedis } from './start-redis.js';
export type { StartedRedis, StartRedisOptions } from './start-redis.js';
export { createTestApp } from './test-app.js';
export type { InlineTestApp, TestApp, TestAppBase, TestAppCloseOptions, TestAppOptions } from './test-app.js';
export type { DelayedTask, DrainOptions, DrainReport, FinishedTask } from './drain.js';
export { RedisServerNotFoundError } from '../core/errors.js';
