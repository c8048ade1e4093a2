import { Redis, type Cluster, type ClusterOptions, type RedisOptions } from 'ioredis';
import { ConfigError } from '../errors.js';

/**
 * A client heimdall-tasks sends commands through: an ioredis `Redis`, or an ioredis `Cluster`.
 * Nothing inside relies on which (no `instanceof`): both are told apart by ioredis's own
 * `isCluster` flag where they differ (duplicating a connection, its options).
 */
export type RedisClient = Redis | Cluster;

/**
 * Where Redis is: a URL (`redis://`, `rediss://`), ioredis options, or an ioredis client you own
 * (a `Redis`, or a `Cluster`, duplicated as a Cluster for the worker's blocking and subscriber
 * connections; tested on a one-node Cluster only so far).
 */
export type ConnectionOption = string | RedisOptions | Redis | Cluster;

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

/** The options a client was made with that matter here: the node options of a Cluster. */
function nodeOptions(client: RedisClient): Partial<RedisOptions> {
  if (!isCluster(client)) return client.options;
  const options = client.options as ClusterOptions;
  return { ...options.redisOptions, keyPrefix: options.keyPrefix ?? options.redisOptions?.keyPrefix };
}

/** A new connection like `client`, with `tuned` options on top. */
function duplicateOf(client: RedisClient, tuned: RedisOptions): RedisClient {
  if (!isCluster(client)) return client.duplicate(tuned);
  // A Cluster takes the options of its node connections under redisOptions.
  const options = client.options as ClusterOptions;
  return client.duplicate(undefined, { redisOptions: { ...options.redisOptions, ...tuned } } satisfies ClusterOptions);
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
  const given = isClient(connection) ? nodeOptions(connection) : typeof connection === 'object' ? (connection as RedisOptions) : undefined;
  if (given?.keyPrefix) {
    // The scripts build task keys from the prefix they are given; ioredis would prefix only
    // the declared KEYS, and the two would no longer meet.
    throw new ConfigError(
      `the connection sets ioredis keyPrefix '${given.keyPrefix}', which heimdall-tasks cannot use; pass prefix: '${given.keyPrefix.replace(/:$/, '')}' to the Dispatcher and Worker instead`,
    );
  }
  const tuned: RedisOptions = {
    // Named so `CLIENT LIST` shows who is connected: heimdall:<prefix>:<role>.
    connectionName: `${name}:${purpose}`,
    // Blocking and subscriber connections must wait through outages rather than fail.
    ...(purpose === 'commands' ? {} : { maxRetriesPerRequest: null }),
    ...extra,
  };
  if (isClient(connection) && purpose === 'commands') return { client: connection, owned: false };
  let client: RedisClient;
  if (isClient(connection)) client = duplicateOf(connection, tuned);
  else if (typeof connection === 'string') {
    if (!/^rediss?:\/\//.test(connection)) {
      throw new ConfigError(`connection URL must start with redis:// or rediss://, got ${JSON.stringify(connection)}`);
    }
    client = new Redis(connection, tuned);
  } else if (typeof connection === 'object') {
    const options = connection as RedisOptions;
    client = new Redis({ ...options, ...tuned, connectionName: options.connectionName ?? tuned.connectionName });
  } else {
    throw new ConfigError('connection must be a Redis URL, ioredis options or an ioredis client');
  }
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
