import { Cluster, Redis, type ClusterNode, type ClusterOptions, type RedisOptions } from 'ioredis';
import { ConfigError } from '../errors.js';

/**
 * A client heimdall-tasks sends commands through: an ioredis `Redis`, or an ioredis `Cluster`.
 * Nothing inside relies on which (no `instanceof`): both are told apart by ioredis's own
 * `isCluster` flag where they differ (duplicating a connection, its options).
 */
export type RedisClient = Redis | Cluster;

/**
 * A Redis Cluster for heimdall-tasks to connect to itself: some of its nodes and, optionally,
 * ioredis Cluster options. The string form `redis+cluster://host:port,host:port` says the same.
 */
export interface ClusterConnection {
  /**
   * Some nodes of the cluster, any of them (the client learns the others from them):
   * `redis://host:port` URLs, `host:port`, or `{ host, port }`.
   */
  cluster: readonly (string | { host: string; port: number })[];
  /**
   * ioredis Cluster options; `redisOptions` applies to each node's connection (password, TLS).
   * Default: ioredis's.
   */
  clusterOptions?: ClusterOptions;
}

/**
 * Where Redis is:
 * - a URL: `redis://host:port`, `rediss://` (TLS), `redis+cluster://host:port,host:port` (a
 *   Redis Cluster from some of its nodes), `redis+sentinel://host:port,host:port/<name>` (the
 *   master called `name` by these Sentinels); `rediss+cluster://` and `rediss+sentinel://` with TLS;
 * - ioredis options (with `sentinels` and `name` for Sentinel);
 * - `{ cluster: nodes, clusterOptions }` (a Redis Cluster);
 * - an ioredis client you own and close: a `Redis`, or a `Cluster`. It is used as it is for
 *   commands, and duplicated (with its options) for blocking and subscriber connections.
 */
export type ConnectionOption = string | RedisOptions | ClusterConnection | Redis | Cluster;

/** A connection heimdall-tasks uses, and whether it is ours to close. */
export interface OwnedClient {
  client: RedisClient;
  owned: boolean;
  /** The last error the connection reported since it was last ready (ours only). */
  lastError?: Error;
}

function isClient(value: unknown): value is RedisClient {
  // Duck-typed so a client from another copy of ioredis is accepted too.
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as Redis).duplicate === 'function' &&
    typeof (value as Redis).evalsha === 'function'
  );
}

/** Whether a client is an ioredis Cluster (ioredis's own flag, so a client of another copy of ioredis counts too). */
export function isCluster(client: RedisClient): client is Cluster {
  return (client as { isCluster?: unknown }).isCluster === true;
}

function isClusterConnection(value: unknown): value is ClusterConnection {
  return typeof value === 'object' && value !== null && 'cluster' in value;
}

/**
 * How to make a client for a connection that is not a client: one Redis (URL or options) or a
 * Cluster (nodes and options). Refuses what is not a connection with a ConfigError.
 */
type Plan = { kind: 'redis'; url?: string; options: RedisOptions } | { kind: 'cluster'; nodes: ClusterNode[]; options: ClusterOptions };

function planOf(connection: string | RedisOptions | ClusterConnection): Plan {
  if (typeof connection === 'string') return planOfUrl(connection);
  if (isClusterConnection(connection)) {
    const list: unknown = connection.cluster;
    if (!Array.isArray(list) || list.length === 0) {
      throw new ConfigError('connection.cluster must list at least one node of the cluster: redis://host:port, host:port or { host, port }');
    }
    const nodes = list.map((node: unknown): ClusterNode => {
      if (typeof node === 'string') return nodeOfText(node, node.startsWith('rediss://'));
      if (typeof node === 'object' && node !== null && typeof (node as { port?: unknown }).port === 'number') return node as ClusterNode;
      throw new ConfigError(`connection.cluster lists ${JSON.stringify(node)}, which is not redis://host:port, host:port or { host, port }`);
    });
    const tls = list.some((node) => typeof node === 'string' && node.startsWith('rediss://'));
    const options = connection.clusterOptions ?? {};
    return {
      kind: 'cluster',
      nodes,
      options: tls && !options.redisOptions?.tls ? { ...options, redisOptions: { ...options.redisOptions, tls: {} } } : options,
    };
  }
  if (typeof connection === 'object' && connection !== null) return { kind: 'redis', options: connection };
  throw new ConfigError('connection must be a Redis URL, ioredis options, { cluster: nodes } or an ioredis client');
}

const URL_FORMS = 'redis://host:port, rediss://host:port, redis+cluster://host:port,host:port or redis+sentinel://host:port,host:port/name';

/** A `host:port` (or a `redis://host:port` URL) as a Cluster node. */
function nodeOfText(text: string, tls: boolean): { host: string; port: number } {
  let url: URL;
  try {
    url = new URL(/^[a-z+]+:\/\//.test(text) ? text : `${tls ? 'rediss' : 'redis'}://${text}`);
  } catch {
    throw new ConfigError(`${JSON.stringify(text)} is not a Redis node (host:port)`);
  }
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port: url.port === '' ? 6379 : Number(url.port) };
}

/** Reads the URL forms (see ConnectionOption); a ConfigError says what is wrong with one. */
export function planOfUrl(text: string): Plan {
  const scheme = /^([a-z+]+):\/\//.exec(text)?.[1];
  if (scheme === 'redis' || scheme === 'rediss') return { kind: 'redis', url: text, options: {} };
  if (scheme !== 'redis+cluster' && scheme !== 'rediss+cluster' && scheme !== 'redis+sentinel' && scheme !== 'rediss+sentinel') {
    throw new ConfigError(`connection URL must be one of ${URL_FORMS}; got ${JSON.stringify(text)}`);
  }
  const tls = scheme.startsWith('rediss');
  // host:port,host:port is not one URL authority: the hosts are cut off before URL reads the rest.
  const rest = text.slice(scheme.length + 3);
  const authorityEnd = rest.search(/[/?]|$/);
  const authority = rest.slice(0, authorityEnd);
  const at = authority.lastIndexOf('@');
  const auth = at === -1 ? '' : authority.slice(0, at);
  const hosts = authority.slice(at + 1).split(',').filter((h) => h !== '');
  if (hosts.length === 0) throw new ConfigError(`connection URL ${JSON.stringify(text)} names no host: ${URL_FORMS}`);
  const tail = new URL(`redis://x${rest.slice(authorityEnd)}`);
  // The password is everything after the first colon (it may hold colons of its own).
  const colon = auth.indexOf(':');
  const [user, password] = (colon === -1 ? [auth, ''] : [auth.slice(0, colon), auth.slice(colon + 1)]).map((p) => (p === '' ? undefined : decodeURIComponent(p)));
  const credentials: RedisOptions = { ...(user ? { username: user } : {}), ...(password ? { password } : {}) };
  const nodes = hosts.map((h) => nodeOfText(h, tls));
  if (scheme.endsWith('cluster')) {
    return { kind: 'cluster', nodes, options: { redisOptions: { ...credentials, ...(tls ? { tls: {} } : {}) } } };
  }
  const name = decodeURIComponent(tail.pathname.replace(/^\//, ''));
  if (name === '') {
    throw new ConfigError(`connection URL ${JSON.stringify(text)} names no master: write redis+sentinel://host:port,host:port/<master name>`);
  }
  const db = tail.searchParams.get('db');
  return {
    kind: 'redis',
    options: {
      sentinels: nodes,
      name,
      ...credentials,
      ...(db !== null ? { db: Number(db) } : {}),
      ...(tail.searchParams.get('sentinelPassword') ? { sentinelPassword: tail.searchParams.get('sentinelPassword')! } : {}),
      ...(tls ? { tls: {}, enableTLSForSentinelMode: true } : {}),
    },
  };
}

/**
 * A new client for a connection that is not a client, with `tuned` options on top (they win
 * over the caller's, as for a duplicated client, but for the connection name the caller may
 * have set). `subscriber`: the client will SSUBSCRIBE. Exported for the CLI, which opens its own.
 */
export function createClient(connection: string | RedisOptions | ClusterConnection, tuned: RedisOptions, subscriber = false): RedisClient {
  const plan = planOf(connection);
  if (plan.kind === 'cluster') {
    const node = plan.options.redisOptions;
    checkKeyPrefix(plan.options.keyPrefix ?? node?.keyPrefix);
    return new Cluster(plan.nodes, clusterOptionsWith(plan.options, { ...tuned, connectionName: node?.connectionName ?? tuned.connectionName }, subscriber));
  }
  checkKeyPrefix(plan.options.keyPrefix);
  // Sentinel: follow a promotion as soon as the Sentinels announce it, not at the next error.
  const sentinel: RedisOptions = plan.options.sentinels ? { failoverDetector: true } : {};
  if (plan.url !== undefined) return new Redis(plan.url, { ...sentinel, ...tuned });
  return new Redis({ ...sentinel, ...plan.options, ...tuned, connectionName: plan.options.connectionName ?? tuned.connectionName });
}

/**
 * Cluster options like `options`, with `tuned` on top: the auto-pipelining ones for the Cluster,
 * the rest for each node's connection. A Cluster that will SSUBSCRIBE gets ioredis's
 * `shardedSubscribers`: without it ioredis sends SSUBSCRIBE on its one classic subscriber
 * connection, to whichever node it picked, and the messages of other shards never arrive; with
 * it, ioredis keeps a subscriber per master and subscribes again after a failover or a slot move.
 */
function clusterOptionsWith(options: ClusterOptions, tuned: RedisOptions, subscriber: boolean): ClusterOptions {
  const { enableAutoPipelining, autoPipeliningIgnoredCommands, ...node } = tuned;
  return {
    ...options,
    ...(enableAutoPipelining !== undefined ? { enableAutoPipelining } : {}),
    ...(autoPipeliningIgnoredCommands !== undefined ? { autoPipeliningIgnoredCommands } : {}),
    redisOptions: { ...options.redisOptions, ...node },
    ...(subscriber ? { shardedSubscribers: true } : {}),
  };
}

/** The scripts build task keys from the prefix they are given; ioredis would prefix only the declared KEYS. */
function checkKeyPrefix(keyPrefix: string | undefined): void {
  if (!keyPrefix) return;
  throw new ConfigError(
    `the connection sets ioredis keyPrefix '${keyPrefix}', which heimdall-tasks cannot use; pass prefix: '${keyPrefix.replace(/:$/, '')}' to the Dispatcher and Worker instead`,
  );
}

/** The options a client was made with that matter here: the node options of a Cluster. */
function nodeOptions(client: RedisClient): Partial<RedisOptions> {
  if (!isCluster(client)) return client.options;
  const options = client.options as ClusterOptions;
  return { ...options.redisOptions, keyPrefix: options.keyPrefix ?? options.redisOptions?.keyPrefix };
}

/** A new connection like `client`, with `tuned` options on top. */
function duplicateOf(client: RedisClient, tuned: RedisOptions, purpose: 'commands' | 'blocking' | 'subscriber'): RedisClient {
  if (!isCluster(client)) return client.duplicate(tuned);
  // A Cluster's first argument would be read as its startup nodes: undefined keeps its own.
  return client.duplicate(undefined, clusterOptionsWith(client.options as ClusterOptions, tuned, purpose === 'subscriber'));
}

/**
 * Opens a client for `connection`. A client passed in is used as is for commands (`shared`),
 * and duplicated for blocking and subscriber connections, which must not be shared.
 */
export function openClient(
  connection: ConnectionOption | undefined,
  purpose: 'commands' | 'blocking' | 'subscriber',
  name: string,
  extra: RedisOptions = {},
  onError: (err: Error) => void = () => undefined,
): OwnedClient {
  if (connection === undefined || connection === null || connection === '') {
    throw new ConfigError('connection is required: a Redis URL such as redis://localhost:6379, ioredis options, or a client');
  }
  if (isClient(connection)) checkKeyPrefix(nodeOptions(connection).keyPrefix);
  const tuned: RedisOptions = {
    // Named so `CLIENT LIST` shows who is connected: heimdall:<prefix>:<role>.
    connectionName: `${name}:${purpose}`,
    // Blocking and subscriber connections must wait through outages rather than fail.
    ...(purpose === 'commands' ? {} : { maxRetriesPerRequest: null }),
    ...extra,
  };
  if (isClient(connection) && purpose === 'commands') return { client: connection, owned: false };
  const client = isClient(connection) ? duplicateOf(connection, tuned, purpose) : createClient(connection, tuned, purpose === 'subscriber');
  // ioredis reconnects by itself; report a connection error at most once a second so an
  // outage is visible without flooding (and without ioredis's "Unhandled error event").
  const owned: OwnedClient = { client, owned: true };
  let lastReport = 0;
  client.on('ready', () => (owned.lastError = undefined));
  client.on('error', (err: Error) => {
    owned.lastError = err;
    const now = Date.now();
    if (now - lastReport < 1000) return;
    lastReport = now;
    onError(err);
  });
  return owned;
}

/** Closes a client if it is ours: QUIT when connected, disconnect otherwise. */
export async function closeClient(c: OwnedClient | undefined): Promise<void> {
  if (!c || !c.owned) return;
  if (c.client.status === 'end') return;
  if (c.client.status === 'ready') {
    try {
      await c.client.quit();
      return;
    } catch {
      // fall through to a hard disconnect
    }
  }
  c.client.disconnect();
}

/** Milliseconds on the Redis server's clock (TIME): the clock due times, leases and registrations are kept on. */
export async function redisNowMs(client: RedisClient): Promise<number> {
  const [sec, usec] = await client.time();
  return Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
}
