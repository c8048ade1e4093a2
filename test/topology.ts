// Which Redis deployment the integration suite runs against (env HEIMDALL_TEST_TOPOLOGY, set by
// the cluster and sentinel vitest configs): one private redis-server (the default), a local Redis
// Cluster of three masters with a replica each, or a Sentinel setup. The global setup starts it
// and hands tests this description through vitest's provide/inject; it is plain data, since
// provide() copies it into every test worker.
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { Seed } from '../scripts/redis-deployments.mjs';

export type TopologyKind = 'single' | 'cluster' | 'sentinel';

export type Topology =
  | { kind: 'single'; url: string }
  /** `url`: one node's, for what only needs an address (a constructor's checks), never for tasks. */
  | { kind: 'cluster'; seeds: Seed[]; url: string }
  /** `url`: the master's at the start. */
  | { kind: 'sentinel'; sentinels: Seed[]; name: string; url: string };

/** The topology asked for by HEIMDALL_TEST_TOPOLOGY; anything else is a mistake worth stopping for. */
export function requestedTopology(): TopologyKind {
  const asked = process.env.HEIMDALL_TEST_TOPOLOGY || 'single';
  if (asked !== 'single' && asked !== 'cluster' && asked !== 'sentinel') {
    throw new Error(`HEIMDALL_TEST_TOPOLOGY must be single, cluster or sentinel, got ${JSON.stringify(asked)}`);
  }
  return asked;
}

/**
 * A new client for the topology: a Redis on the URL, a Cluster from the seeds, or a Redis that
 * asks the sentinels for the master. The caller closes it.
 */
export function clientFor(topology: Topology, options: RedisOptions = {}, cluster: Omit<ClusterOptions, 'redisOptions'> = {}): Redis {
  if (topology.kind === 'cluster') {
    // Typed as a Redis for the tests' convenience: a Cluster answers the same commands, each
    // routed to the node of its key. What means one node (SCAN, CLIENT LIST) goes through
    // nodesOf() instead.
    return new Cluster(topology.seeds, { ...cluster, redisOptions: options } satisfies ClusterOptions) as unknown as Redis;
  }
  if (topology.kind === 'sentinel') return new Redis({ ...options, sentinels: topology.sentinels, name: topology.name });
  return new Redis(topology.url, options);
}

/** Whether a client is an ioredis Cluster (ioredis's own flag, as the library tells them apart). */
export function isClusterClient(client: Redis | Cluster): client is Cluster {
  return (client as { isCluster?: unknown }).isCluster === true;
}

/** The nodes to ask a one-node question (SCAN, CLIENT LIST): a Cluster's masters or all nodes, else the client itself. */
export function nodesOf(client: Redis | Cluster, role: 'master' | 'all'): Redis[] {
  return isClusterClient(client) ? client.nodes(role) : [client];
}
