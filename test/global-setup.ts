import type {} from 'vitest';
import type { TestProject } from 'vitest/node';
import { startRedis } from '../src/testing/index.js';
import { redisServerBin } from '../scripts/redis-launcher.mjs';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
  }
}

/**
 * Starts one private redis-server for the whole run (or uses REDIS_URL) and stops it at the end,
 * with the package's own startRedis, as a user's globalSetup would. Where no redis-server is on
 * the PATH, the project's launcher looks in the usual places and, on a Debian-like machine
 * where we are root, installs it (startRedis itself never installs anything).
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const reuse = process.env.REDIS_URL;
  const redis = await startRedis(reuse ? { reuse } : { bin: redisServerBin() });
  project.provide('redisUrl', redis.url);
  return () => redis.stop();
}
