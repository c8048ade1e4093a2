import type { Redis } from 'ioredis';
import { allScripts, type LuaScript } from '../redis-scripts/scripts.generated.js';

type Arg = string | number;

/**
 * Runs the Lua scripts on one connection: `SCRIPT LOAD` of all of them once at startup,
 * `EVALSHA` afterwards, and a transparent reload when the server answers `NOSCRIPT`
 * (after a restart or `SCRIPT FLUSH`).
 */
export class ScriptRunner {
  private loading: Promise<void> | undefined;

  constructor(private readonly client: Redis) {}

  /** Loads every script; called once before the first use, safe to call again. */
  load(): Promise<void> {
    if (!this.loading) {
      this.loading = Promise.all(allScripts.map((s) => this.client.script('LOAD', s.source))).then(
        () => undefined,
        (err: unknown) => {
          this.loading = undefined;
          throw err;
        },
      );
    }
    return this.loading;
  }

  async run<T>(script: LuaScript, keys: readonly string[], args: readonly Arg[]): Promise<T> {
    await this.load();
    try {
      return (await this.client.evalsha(script.sha, script.numberOfKeys, ...keys, ...args)) as T;
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      await this.client.script('LOAD', script.source);
      return (await this.client.evalsha(script.sha, script.numberOfKeys, ...keys, ...args)) as T;
    }
  }
}
