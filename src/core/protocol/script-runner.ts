import { Cluster, Command, Redis } from 'ioredis';
import type { RedisClient } from './connection.js';
import { ConfigError, outOfMemory } from '../errors.js';
import { warnIfEvicting } from './eviction-policy.js';
import { allScripts, type LuaScript } from '../../redis-scripts/scripts.generated.js';

type Arg = string | number;

/** ioredis's evalsha given its keys and arguments as arrays, which it flattens (its typings list single values only). */
interface EvalshaOfArrays {
  evalsha(sha: string, numberOfKeys: number, keys: readonly string[], args: readonly Arg[]): Promise<unknown>;
}

/**
 * A command that writes itself to the socket as one Buffer. ioredis builds a command's text by
 * string concatenation, five strings per argument, then copies the text into a Buffer; a fetch
 * of one task has about 30 arguments, and this was the largest share of what the worker
 * allocated per task (BENCHMARKS.md, "Allocation per task"). Everything else is ioredis's own
 * Command: its promise, reply decoding, Cluster slot (from `args`), blocking timeout, offline
 * queue and resends. Exported for its test only.
 */
export class EncodedCommand extends Command {
  constructor(name: string, args: string[], errorStack: Error | undefined) {
    // No arguments for ioredis to flatten and stringify: they are set here, as text.
    super(name, [], { replyEncoding: 'utf8', errorStack });
    this.args = args;
  }

  override toWritable(): Buffer {
    const args = this.args as string[];
    // *<items>\r\n, then $<bytes>\r\n<item>\r\n for the name and each argument.
    const nameBytes = Buffer.byteLength(this.name);
    let size = 1 + digits(args.length + 1) + 2 + 1 + digits(nameBytes) + 2 + nameBytes + 2;
    for (const a of args) {
      const bytes = Buffer.byteLength(a);
      size += 1 + digits(bytes) + 2 + bytes + 2;
    }
    const buf = Buffer.allocUnsafe(size);
    buf[0] = 0x2a; // *
    let o = writeDigits(buf, 1, args.length + 1);
    buf[o++] = 0x0d;
    buf[o++] = 0x0a;
    o = writeItem(buf, o, this.name, nameBytes);
    for (const a of args) o = writeItem(buf, o, a, Buffer.byteLength(a));
    return buf;
  }
}

/** Writes `$<bytes>\r\n<item>\r\n` at `o`; returns the offset after it. */
function writeItem(buf: Buffer, o: number, item: string, bytes: number): number {
  buf[o++] = 0x24; // $
  o = writeDigits(buf, o, bytes);
  buf[o++] = 0x0d;
  buf[o++] = 0x0a;
  o += buf.write(item, o, bytes, 'utf8');
  buf[o++] = 0x0d;
  buf[o++] = 0x0a;
  return o;
}

/** EVALSHA's arguments as text: the script's sha, the number of keys, the keys, the arguments. */
export function evalshaArgs(sha: string, keys: readonly string[], args: readonly Arg[]): string[] {
  const all = new Array<string>(2 + keys.length + args.length);
  all[0] = sha;
  all[1] = String(keys.length);
  let i = 2;
  for (const k of keys) all[i++] = k;
  for (const a of args) all[i++] = typeof a === 'string' ? a : String(a);
  return all;
}

/**
 * Whether `name` may go to `client` as an EncodedCommand (sendEncoded): a client of the ioredis
 * this library depends on, without a keyPrefix, whose method of that command its owner did not
 * replace on the instance (to count or trace calls). Any other client (one of another copy of
 * ioredis, too) is called as usual.
 */
export function encodable(client: RedisClient, name: string): boolean {
  return (client instanceof Redis || client instanceof Cluster) && !client.options.keyPrefix && !Object.prototype.hasOwnProperty.call(client, name);
}

/** Sends `name` with `args` to a client `encodable` allowed, as an EncodedCommand. */
export function sendEncoded(client: RedisClient, name: string, args: string[]): Promise<unknown> {
  const c = client as Redis | Cluster;
  return c.sendCommand(new EncodedCommand(name, args, c.options.showFriendlyErrorStack ? new Error() : undefined)) as Promise<unknown>;
}

function digits(n: number): number {
  let d = 1;
  while (n >= 10) {
    n = Math.floor(n / 10);
    d++;
  }
  return d;
}

/** Writes the decimal digits of `n` (a whole number >= 0) at `o`; returns the offset after them. */
function writeDigits(buf: Buffer, o: number, n: number): number {
  const end = o + digits(n);
  for (let i = end - 1; i >= o; i--) {
    buf[i] = 0x30 + (n % 10);
    n = Math.floor(n / 10);
  }
  return end;
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
  run<T>(script: LuaScript, keys: readonly string[], args: readonly Arg[]): Promise<T> {
    if (keys.length < script.numberOfKeys) {
      return Promise.reject(new Error(`the ${script.name} script takes at least ${script.numberOfKeys} keys, got ${keys.length}`));
    }
    if (!this.loaded) {
      return this.load().then(() => {
        this.loaded = true;
        return this.call<T>(script, keys, args);
      });
    }
    return this.call<T>(script, keys, args);
  }

  /**
   * One script call, with one promise beside the command's own: this was two async functions,
   * each with its promise and await, on the call every task goes through (BENCHMARKS.md,
   * "Allocation per task").
   */
  private call<T>(script: LuaScript, keys: readonly string[], args: readonly Arg[]): Promise<T> {
    let sent: Promise<unknown>;
    try {
      sent = this.send(script, keys, args);
    } catch (err) {
      return Promise.reject(outOfMemory(err, `the ${script.name} script`));
    }
    return sent.catch((err: unknown) => this.afterFailure<T>(script, keys, args, err)) as Promise<T>;
  }

  /** A failed call: on NOSCRIPT, loads the script and sends it once more; an out-of-memory reply becomes a RedisOutOfMemoryError naming the script. */
  private async afterFailure<T>(script: LuaScript, keys: readonly string[], args: readonly Arg[], err: unknown): Promise<T> {
    try {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err;
      await this.loadScript(script.source);
      return (await this.send(script, keys, args)) as T;
    } catch (e) {
      throw outOfMemory(e, `the ${script.name} script`);
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

  /** One EVALSHA: as an EncodedCommand where the client allows it (encodable), else through the client's evalsha. */
  private send(script: LuaScript, keys: readonly string[], args: readonly Arg[]): Promise<unknown> {
    if (encodable(this.client, 'evalsha')) return sendEncoded(this.client, 'evalsha', evalshaArgs(script.sha, keys, args));
    return (this.client as unknown as EvalshaOfArrays).evalsha(script.sha, keys.length, keys, args);
  }
}

/** How a warning names the server a client talks to. */
function whereIs(client: RedisClient): string {
  if (client.isCluster) return 'the Redis Cluster';
  const { host, port, path } = (client as Redis).options;
  return path ?? `${host ?? 'localhost'}:${port ?? 6379}`;
}
