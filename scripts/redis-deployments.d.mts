/** Real local Redis deployments for tests; see redis-deployments.mjs. */
export interface Seed {
  host: string;
  port: number;
}

export interface LocalCluster {
  nodes: { port: number; url: string }[];
  /** As ioredis's `new Cluster(seeds)` takes them. */
  seeds: Seed[];
  /** The nodes' process ids. */
  pids: number[];
  stop(): Promise<void>;
  /** SIGKILLs one node. */
  kill(port: number): Promise<void>;
  /** What the node says it is now. */
  nodeFor(port: number): Promise<'master' | 'replica' | 'down'>;
}

export interface LocalSentinel {
  /** The master's name, as ioredis's `name` option takes it. */
  name: string;
  /** As ioredis's `sentinels` option takes them. */
  sentinels: Seed[];
  master: { port: number; url: string };
  replica: { port: number; url: string };
  /** The processes' ids: master, replica, sentinels. */
  pids: number[];
  stop(): Promise<void>;
  kill(port: number): Promise<void>;
}

export function startCluster(options?: { masters?: number; replicas?: number; nodeTimeoutMs?: number; log?: (message: string) => void }): Promise<LocalCluster>;
export function startSentinel(options?: { name?: string; downAfterMs?: number; failoverTimeoutMs?: number; log?: (message: string) => void }): Promise<LocalSentinel>;
/** One inline command to a node on 127.0.0.1; its raw reply ('' when it cannot). */
export function ask(port: number, command: string, timeoutMs?: number): Promise<string>;
