import type {} from 'vitest';
import type { TestProject } from 'vitest/node';
import { startRedis } from '../scripts/redis-launcher.mjs';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}

/** Starts one private redis-server for the whole run (or uses REDIS_URL) and stops it at the end. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const redis = await startRedis();
  project.provide('redisUrl', redis.url);
  return () => redis.stop();
}
