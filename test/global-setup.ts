import type {} from 'vitest';
import type { TestProject } from 'vitest/node';
import { startRedis } from '../src/testing/index.js';
import { redisServerBin } from '../scripts/redis-launcher.mjs';
import { startCluster, startSentinel } from '../scripts/redis-deployments.mjs';
import { requestedTopology, type Topology } from './topology.js';

declare module 'vitest' {
  export interface ProvidedContext {
    redisUrl: string;
    topology: Topology;
  }
}

/**
 * Starts the Redis the run's tests share and stops it at the end. By default one private
 * redis-server (or REDIS_URL), with the package's own startRedis, as a user's globalSetup would;
 * where no redis-server is on the PATH, the project's launcher looks in the usual places and, on
 * a Debian-like machine where we are root, installs it (startRedis itself never installs
 * anything). With HEIMDALL_TEST_TOPOLOGY=cluster (vitest.cluster.config.ts) a local Redis
 * Cluster of three masters with a replica each, with =sentinel (vitest.sentinel.config.ts) a
 * master, a replica and three sentinels: scripts/redis-deployments.mjs.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const kind = requestedTopology();
  const quiet = { log: () => undefined };
  if (kind === 'cluster') {
    const cluster = await startCluster(quiet);
    project.provide('topology', { kind, seeds: cluster.seeds, url: cluster.nodes[0]!.url });
    project.provide('redisUrl', cluster.nodes[0]!.url);
    return () => cluster.stop();
  }
  if (kind === 'sentinel') {
    const sentinel = await startSentinel(quiet);
    project.provide('topology', { kind, sentinels: sentinel.sentinels, name: sentinel.name, url: sentinel.master.url });
    project.provide('redisUrl', sentinel.master.url);
    return () => sentinel.stop();
  }
  const reuse = process.env.REDIS_URL;
  const redis = await startRedis(reuse ? { reuse } : { bin: redisServerBin() });
  project.provide('topology', { kind, url: redis.url });
  project.provide('redisUrl', redis.url);
  return () => redis.stop();
}
