import type { Redis } from 'ioredis';
import { ConfigError, outOfMemory } from './errors.js';
import { allScripts, type LuaScript } from '../redis-scripts/scripts.generated.js';

type Arg = string | number;

const MIN_MAJOR = 7;

/**
 * Runs the Lua scripts on one connection: `SCRIPT LOAD` of all of them once at startup,
 * `EVALSHA` afterwards, and a transparent reload when the server answers `NOSCRIPT`
 * (after a restart or `SCRIPT FLUSH`).
 */
export class ScriptRunner {
  private loading: Promise<void> | undefined;
  /** Set once load() succeeded, so later calls skip awaiting it. */
  private loaded = false;

  constructor(private readonly client: Redis) {}

  /** Loads every script; called once before the first use, safe to call again. */
  load(): Promise<void> {
    if (!this.loading) {
      this.loading = Promise.all([
        this.checkVersion(),
        ...allScripts.map((s) => this.client.script('LOAD', s.source)),
      ]).then(
        () => undefined,
        (err: unknown) => {
          this.loading = undefined;
          throw err;
        },
      );
    }
    return this.loading;
  }

  /** Refuses servers older than Redis 7.0 (BLMOVE, script effects replication) with a clear error. */
  private async checkVersion(): Promise<void> {
    const info = await this.client.info('server');
    const version = /^redis_version:(\d+)\.(\d+)/m.exec(info);
    if (version && Number(version[1]) < MIN_MAJOR) {
      throw new ConfigError(
        `Redis ${version[1]}.${version[2]} is too old: heimdall-tasks needs Redis ${MIN_MAJOR}.0 or newer (or Valkey)`,
      );
    }
  }

  /** Runs a script; Redis's out-of-memory reply becomes a RedisOutOfMemoryError naming the script. */
  async run<T>(script: LuaScript, keys: readonly string[], args: readonly Arg[]): Promise<T> {
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

  /** EVALSHA; on NOSCRIPT, loads the script and tries once more. */
  private async evalsha<T>(script: LuaScript, keys: readonly string[], args: readonly Arg[]): Promise<T> {
    try {
      return (await this.client.evalsha(script.sha, script.numberOfKeys, ...keys, ...args)) as T;
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      await this.client.script('LOAD', script.source);
      return (await this.client.evalsha(script.sha, script.numberOfKeys, ...keys, ...args)) as T;
    }
  }
}
