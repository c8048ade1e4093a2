import type { TestProject } from 'vitest/node';
import { startRedis } from 'heimdall-tasks/testing';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}

// A private redis-server for the run, or the Redis REDIS_URL names (CI services) when it is set.
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const redis = await startRedis({ reuse: process.env.REDIS_URL });
  project.provide('redisUrl', redis.url);
  return () => redis.stop();
}
