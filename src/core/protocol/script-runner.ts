import type { Cluster, Redis } from 'ioredis';
import type { RedisClient } from './connection.js';
import { ConfigError, outOfMemory } from '../errors.js';
import { warnIfEvicting } from './eviction-policy.js';
import { allScripts, type LuaScript } from '../../redis-scripts/scripts.generated.js';

type Arg = string | number;

/** ioredis's evalsha given its keys and arguments as arrays, which it flattens (its typings list single values only). */
interface EvalshaOfArrays {
  evalsha(sha: string, numberOfKeys: number, keys: readonly string[], args: readonly Arg[]): Promise<unknown>;
}

const MIN_MAJOR = 7;

/**
 * Runs the Lua scripts on one connection: `SCRIPT LOAD` of all of them once at startup,
 * `EVALSHA` afterwards, and a transparent reload when the server answers `NOSCRIPT`
 * (after a restart or `SCRIPT FLUSH`). At startup it also checks the server's version and
 * warns when its `maxmemory-policy` may evict heimdall's keys.
 */
export class ScriptRunner {
  private loading: Promise<void> | undefined;
  /** Set once load() succeeded, so later calls skip awaiting it. */
  private loaded = false;

  constructor(private readonly client: RedisClient) {}

  /** Loads every script; called once before the first use, safe to call again. */
  load(): Promise<void> {
    if (!this.loading) {
      this.loading = (
        this.client.isCluster
          ? // A Cluster client that is not ready yet takes its startup nodes for masters, replicas
            // included: a SCRIPT LOAD sent to one of those is failed with "Connection is closed"
            // once the slots are loaded and the replica is dropped from the pool. The INFO of the
            // server check waits in the offline queue until the client is ready, so the scripts
            // go to the masters it knows then.
            this.checkServer().then(() => Promise.all(allScripts.map((s) => this.loadScript(s.source))))
          : Promise.all([this.checkServer(), ...allScripts.map((s) => this.loadScript(s.source))])
      ).then(
        () => undefined,
        (err: unknown) => {
          this.loading = undefined;
          throw err;
        },
      );
    }
    return this.loading;
  }

  /**
   * Refuses servers older than Redis 7.0 (BLMOVE, script effects replication, script flags)
   * with a clear error, and warns about an evicting `maxmemory-policy`. Two INFO calls, not one
   * with two sections, which Redis 6 would refuse before its version could be read.
   */
  private async checkServer(): Promise<void> {
    const [server, memory] = await Promise.all([
      this.client.info('server'),
      // Only for a warning: a server that refuses it still runs heimdall.
      this.client.info('memory').catch(() => ''),
    ]);
    const version = /^redis_version:(\d+)\.(\d+)/m.exec(server);
    if (version && Number(version[1]) < MIN_MAJOR) {
      throw new ConfigError(
        `Redis ${version[1]}.${version[2]} is too old: heimdall-tasks needs Redis ${MIN_MAJOR}.0 or newer (or Valkey)`,
      );
    }
    warnIfEvicting(server, memory, whereIs(this.client));
  }

  /**
   * Runs a script; Redis's out-of-memory reply becomes a RedisOutOfMemoryError naming the script.
   * `keys`: at least the script's `numberOfKeys` (the KEYS every call passes); a script whose
   * header lists one key per item after those (extend-leases, requeue) gets them all, as KEYS.
   */
  async run<T>(script: LuaScript, keys: readonly string[], args: readonly Arg[]): Promise<T> {
    if (keys.length < script.numberOfKeys) {
      throw new Error(`the ${script.name} script takes at least ${script.numberOfKeys} keys, got ${keys.length}`);
    }
    if (!this.loaded) {
      await this.load();
      this.loaded = true;
    }
    try {
      return await this.evalsha<T>(script, keys, args);
    } catch (err) {
      throw outOfMemory(err, `the ${script.name} script`);
    }
  }

  /**
   * Reads fields of one key with a plain HMGET, for a caller that must name, before a script
   * call, keys a record names (a task's lock and rate window: the script declares them in KEYS).
   */
  async fields(key: string, fields: readonly string[]): Promise<(string | null)[]> {
    return this.client.hmget(key, ...fields);
  }

  /**
   * The entries `start` to `stop` of a list (a plain LRANGE), for a caller that names, before a
   * script call, the records of the ids the list holds (purge reads the tail of the wait list).
   */
  async listRange(key: string, start: number, stop: number): Promise<string[]> {
    return this.client.lrange(key, start, stop);
  }

  /**
   * The members `start` to `stop` of a sorted set with their scores (a plain ZRANGE WITHSCORES),
   * for a caller that names, before a script call, the records of the ids the set holds (reclaim
   * reads the leases, purge the delayed ids).
   */
  async scoredRange(key: string, start: number, stop: number): Promise<[string, number][]> {
    const flat = await this.client.zrange(key, start, stop, 'WITHSCORES');
    const out: [string, number][] = [];
    for (let i = 0; i < flat.length; i += 2) out.push([flat[i]!, Number(flat[i + 1])]);
    return out;
  }

  /**
   * SCRIPT LOAD where EVALSHA will look for the script: on a Cluster, every master it knows (a
   * plain `script('LOAD')` reaches one node, and EVALSHA runs on the node of its keys' slot).
   */
  private async loadScript(source: string): Promise<void> {
    if (this.client.isCluster) {
      // load() runs this once the client is ready (see there), so its masters are known.
      const masters = (this.client as Cluster).nodes('master');
      if (masters.length > 0) {
        await Promise.all(masters.map((node) => node.script('LOAD', source)));
        return;
      }
    }
    await this.client.script('LOAD', source);
  }

  /**
   * EVALSHA; on NOSCRIPT, loads the script and tries once more. The keys and arguments go as the
   * two arrays they are: ioredis flattens array arguments (one copy), where spreading them made
   * two more copies per call (measured: bench/alloc-per-task.mjs, BENCHMARKS.md).
   */
  private async evalsha<T>(script: LuaScript, keys: readonly string[], args: readonly Arg[]): Promise<T> {
    try {
      return (await (this.client as unknown as EvalshaOfArrays).evalsha(script.sha, keys.length, keys, args)) as T;
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      await this.loadScript(script.source);
      return (await (this.client as unknown as EvalshaOfArrays).evalsha(script.sha, keys.length, keys, args)) as T;
    }
  }
}

/** How a warning names the server a client talks to. */
function whereIs(client: RedisClient): string {
  if (client.isCluster) return 'the Redis Cluster';
  const { host, port, path } = (client as Redis).options;
  return path ?? `${host ?? 'localhost'}:${port ?? 6379}`;
}
