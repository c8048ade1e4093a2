/**
 * The slot-discipline checker of issue 12: which keys each Lua script call declares in KEYS,
 * which keys the commands it ran touched, and in how many Cluster slots they lie.
 *
 * Redis Cluster runs a script on the node of its declared keys' slot and, from Redis 7.0 on,
 * refuses (`non local key`) a command inside it whose key is not on that node. A key built inside
 * Lua from a base string works on one node by accident: the contract is that every key a script
 * touches is in KEYS and all of them hash to one slot. Nothing in a single redis-server checks
 * either, so this checker watches what the scripts really do.
 *
 * How: a MONITOR connection. Redis 7.0 feeds a script call (`EVALSHA`) to monitors before the
 * commands it runs, and those commands carry the source `lua` (checked on 7.0.15 in the test):
 *
 *   1796449441.585266 [0 127.0.0.1:44274] "evalsha" "<sha>" "1" "a:{q}:k" ...
 *   1796449441.585326 [0 lua] "set" "a:{q}:k" "v"
 *
 * A script runs atomically, so no other client's command can come between its lines; every
 * `lua` line belongs to the last script call before it. The keys of each command come from
 * the server itself (`COMMAND GETKEYS`), so no key-position table of ours can be wrong or
 * out of date. The monitor is read from a raw socket rather than ioredis's monitor mode,
 * which splits arguments on `" "` and does not undo Redis's escapes (`\xc3\xa9` for `é`).
 */
import { createHash } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import type { Redis } from 'ioredis';
import { KEY_NAMES } from '../src/core/protocol/queue-keys.js';
import { allScripts } from '../src/redis-scripts/scripts.generated.js';
import { waitFor } from './waiting.js';

// ------------------------------------------------------------------------------ slots

/** CRC16/XMODEM (polynomial 0x1021, initial 0), the checksum Redis Cluster hashes keys with. */
export function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const byte of bytes) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/**
 * The Cluster slot of a key, by Redis's rule: when the key has a `{` followed later by a `}`
 * with at least one byte between them, only those bytes (the first such pair) are hashed;
 * otherwise the whole key. `{}` (nothing between) hashes the whole key.
 */
export function keySlot(key: string | Uint8Array): number {
  const bytes = typeof key === 'string' ? Buffer.from(key, 'utf8') : key;
  const open = bytes.indexOf(0x7b); // '{'
  if (open !== -1) {
    const close = bytes.indexOf(0x7d, open + 1); // '}'
    if (close > open + 1) return crc16(bytes.subarray(open + 1, close)) & 16383;
  }
  return crc16(bytes) & 16383;
}

// ---------------------------------------------------------------------------- monitor

/** One command a script ran, with the keys the server says it names. */
export interface InnerCommand {
  args: string[];
  keys: string[];
}

/** One script call seen on the monitor: the script, what it declared, and what it ran. */
export interface ScriptCall {
  /** The script's name (`fetch`, ...) from scripts.generated.ts, or `unknown:<sha>`. */
  script: string;
  declared: string[];
  argv: string[];
  commands: InnerCommand[];
}

/** What one call did with keys: the touched ones, those not in KEYS, the slots of all of them. */
export interface CallKeys {
  touched: string[];
  undeclared: string[];
  /** Slots of the declared and the touched keys together: Cluster wants one. */
  slots: number[];
  /** Pub/Sub channels the call published on (not keys: Cluster broadcasts them). */
  channels: string[];
}

export function keysOf(call: ScriptCall): CallKeys {
  const touched = [...new Set(call.commands.flatMap((c) => c.keys))];
  const declared = new Set(call.declared);
  return {
    touched,
    undeclared: touched.filter((k) => !declared.has(k)),
    slots: [...new Set([...call.declared, ...touched].map((k) => keySlot(k)))],
    channels: [...new Set(call.commands.filter((c) => /^s?publish$/i.test(c.args[0]!)).map((c) => c.args[1]!))],
  };
}

/**
 * The kind of a key of a queue, as KEY_NAMES names it: `t:`, `lock:`, `rate:` for the families
 * followed by an id or a tail, the whole suffix for the fixed keys (`wait`, `events`, ...).
 * A key outside the queue's base is `outside <key>`, a suffix no KEY_NAMES entry fits `other <suffix>`.
 */
export function kindOf(key: string, base: string): string {
  if (!key.startsWith(base)) return `outside ${key}`;
  const rest = key.slice(base.length);
  for (const name of Object.values(KEY_NAMES)) {
    if (name.endsWith(':') ? rest.startsWith(name) : rest === name) return name;
  }
  return `other ${rest}`;
}

const EVAL_COMMANDS = new Set(['eval', 'evalsha', 'eval_ro', 'evalsha_ro']);

/** A script's name by its SHA-1, as ScriptRunner sends it (EVALSHA), or by its source (EVAL). */
const NAMES_BY_SHA = new Map(allScripts.map((s) => [s.sha, s.name]));

/**
 * Watches a redis-server through MONITOR and groups what it sees into script calls. Use one per
 * server of its own (usePrivateRedis): a shared server's other clients would only add noise.
 */
export class SlotChecker {
  /** Every script call seen so far, in order. */
  readonly calls: ScriptCall[] = [];
  /**
   * What the checker could not read: `lua` lines with no script call before them (the ordering
   * assumption broke), lines or escapes it does not understand. settle() fails on any.
   */
  readonly problems: string[] = [];
  private current: ScriptCall | undefined;
  private pending: Buffer = Buffer.alloc(0);
  private readonly echoes = new Set<string>();
  private fences = 0;
  private resolved = 0;
  private readonly getKeysCache = new Map<string, Promise<string[]>>();

  private constructor(
    private readonly socket: Socket,
    /** A plain client of the same server, for COMMAND GETKEYS and the fence. */
    private readonly admin: Redis,
    /** Names for scripts other than the library's (a test's own EVAL), by SHA-1. */
    private readonly extraNames: ReadonlyMap<string, string>,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
  }

  /** Opens the MONITOR connection to the server `admin` talks to; resolves once it is on. */
  static async start(admin: Redis, extraScripts: Readonly<Record<string, string>> = {}): Promise<SlotChecker> {
    const { host, port, username, password } = admin.options;
    const socket = connect({ host: host ?? '127.0.0.1', port: port ?? 6379 });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const extra = new Map(Object.entries(extraScripts).map(([name, source]) => [createHash('sha1').update(source).digest('hex'), name]));
    const checker = new SlotChecker(socket, admin, extra);
    if (password) socket.write(resp(username ? ['AUTH', username, password] : ['AUTH', password]));
    socket.write(resp(['MONITOR']));
    // The feed is in execution order: once our own ECHO shows, the monitor is on and nothing before it is missing.
    await checker.fence();
    return checker;
  }

  /** Waits until every command the server ran before this call has been read from the monitor. */
  async fence(): Promise<void> {
    const marker = `slot-checker-fence-${++this.fences}-${process.pid}`;
    await this.admin.echo(marker);
    await waitFor(() => this.echoes.has(marker), { timeout: 10_000, what: `MONITOR to show ${marker}` });
    this.echoes.delete(marker);
  }

  /**
   * Fences, then asks the server for the keys of every command seen since the last call, and
   * returns every script call so far.
   */
  async settle(): Promise<ScriptCall[]> {
    await this.fence();
    if (this.problems.length > 0) throw new Error(`the slot checker could not read the monitor:\n${this.problems.join('\n')}`);
    const fresh = this.calls.slice(this.resolved);
    this.resolved = this.calls.length;
    await Promise.all(fresh.flatMap((call) => call.commands.map(async (c) => (c.keys = await this.getKeys(c.args)))));
    return this.calls;
  }

  close(): void {
    this.socket.destroy();
  }

  /** The keys of one command, from the server (COMMAND GETKEYS), cached by the whole command. */
  private getKeys(args: string[]): Promise<string[]> {
    if (args.length < 2) return Promise.resolve([]); // TIME and the like: no arguments, no keys
    const id = JSON.stringify(args);
    let keys = this.getKeysCache.get(id);
    if (!keys) {
      keys = (this.admin.call('COMMAND', 'GETKEYS', ...args) as Promise<string[]>).catch((err: unknown) => {
        // PUBLISH names a channel, not a key; any other refusal is a command we cannot read.
        if (err instanceof Error && /has no key arguments/.test(err.message)) return [];
        throw new Error(`COMMAND GETKEYS ${args.join(' ')}: ${String(err)}`);
      });
      this.getKeysCache.set(id, keys);
    }
    return keys;
  }

  private onData(chunk: Buffer): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    let start = 0;
    for (let end = this.pending.indexOf('\r\n', start); end !== -1; end = this.pending.indexOf('\r\n', start)) {
      // Redis escapes \r and \n inside arguments, so a CRLF always ends a line.
      const line = this.pending.subarray(start, end).toString('latin1');
      // An event handler must not throw: the problem is kept for settle() to report.
      try {
        this.onLine(line);
      } catch (err) {
        this.problems.push(`${String(err)} (line: ${line})`);
      }
      start = end + 2;
    }
    this.pending = this.pending.subarray(start);
  }

  private onLine(line: string): void {
    if (line === '+OK') return; // the reply to MONITOR (and AUTH)
    if (line.startsWith('-')) throw new Error(`MONITOR connection: ${line}`);
    const m = /^\+\S+ \[\d+ ([^\]]*)\] (.*)$/.exec(line);
    if (!m) throw new Error(`MONITOR line not understood: ${line}`);
    const source = m[1]!;
    const args = parseArgs(m[2]!);
    if (source === 'lua') {
      if (this.current) this.current.commands.push({ args, keys: [] });
      else this.problems.push(`a command inside a script with no script call before it: ${line}`);
      return;
    }
    this.current = undefined;
    const command = args[0]!.toLowerCase();
    if (command === 'echo' && args[1]?.startsWith('slot-checker-fence-')) {
      this.echoes.add(args[1]);
    } else if (EVAL_COMMANDS.has(command)) {
      const sha = command.startsWith('evalsha') ? args[1]!.toLowerCase() : createHash('sha1').update(args[1]!).digest('hex');
      const numKeys = Number(args[2]);
      this.current = {
        script: NAMES_BY_SHA.get(sha) ?? this.extraNames.get(sha) ?? `unknown:${sha}`,
        declared: args.slice(3, 3 + numKeys),
        argv: args.slice(3 + numKeys),
        commands: [],
      };
      this.calls.push(this.current);
    }
  }
}

/** A command in RESP, as a client sends it. */
function resp(args: readonly string[]): string {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
}

const ESCAPES: Record<string, number> = { n: 10, r: 13, t: 9, a: 7, b: 8, '"': 34, '\\': 92 };

/**
 * The arguments of a MONITOR line: each in double quotes, separated by one space, escaped as
 * Redis's sdscatrepr does (`\"`, `\\`, `\n`, `\r`, `\t`, `\a`, `\b`, `\xHH` for any other byte
 * that is not printable ASCII). The bytes are decoded as UTF-8, which every key of ours is.
 */
export function parseArgs(text: string): string[] {
  const args: string[] = [];
  let i = 0;
  while (i < text.length) {
    if (text[i] !== '"') throw new Error(`MONITOR arguments not understood at ${i}: ${text}`);
    i++;
    const bytes: number[] = [];
    for (;;) {
      const c = text[i];
      if (c === undefined) throw new Error(`MONITOR argument not closed: ${text}`);
      if (c === '"') break;
      if (c === '\\') {
        const e = text[i + 1]!;
        if (e === 'x') {
          bytes.push(parseInt(text.slice(i + 2, i + 4), 16));
          i += 4;
        } else {
          const b = ESCAPES[e];
          if (b === undefined) throw new Error(`MONITOR escape \\${e} not understood: ${text}`);
          bytes.push(b);
          i += 2;
        }
      } else {
        bytes.push(c.charCodeAt(0));
        i++;
      }
    }
    args.push(Buffer.from(bytes).toString('utf8'));
    i++; // the closing quote
    if (text[i] === ' ') i++;
  }
  return args;
}

// ---------------------------------------------------------------------------- report

/** What one script did over all its calls seen: the kinds of keys it touched, declared or not. */
export interface ScriptReport {
  calls: number;
  /** Kinds (kindOf) of every key its calls touched. */
  touched: string[];
  /** Kinds of the keys touched but not declared in KEYS by the same call. */
  undeclared: string[];
  /** Kinds of the keys it declared. */
  declared: string[];
  /** Calls whose keys lie in more than one slot, with those keys. */
  crossSlot: { keys: string[]; slots: number[] }[];
  channels: string[];
}

/** Sums the calls of each script up, the key kinds named relative to `base` (`<prefix>:{<queue>}:`). */
export function report(calls: readonly ScriptCall[], base: string): Map<string, ScriptReport> {
  const out = new Map<string, ScriptReport>();
  const sets = new Map<string, { touched: Set<string>; undeclared: Set<string>; declared: Set<string>; channels: Set<string> }>();
  for (const call of calls) {
    let r = out.get(call.script);
    let s = sets.get(call.script);
    if (!r || !s) {
      r = { calls: 0, touched: [], undeclared: [], declared: [], crossSlot: [], channels: [] };
      s = { touched: new Set(), undeclared: new Set(), declared: new Set(), channels: new Set() };
      out.set(call.script, r);
      sets.set(call.script, s);
    }
    const k = keysOf(call);
    r.calls++;
    for (const key of k.touched) s.touched.add(kindOf(key, base));
    for (const key of k.undeclared) s.undeclared.add(kindOf(key, base));
    for (const key of call.declared) s.declared.add(kindOf(key, base));
    for (const ch of k.channels) s.channels.add(ch.startsWith(base) ? ch.slice(base.length).replace(/:.*/, ':') : `outside ${ch}`);
    if (k.slots.length > 1) r.crossSlot.push({ keys: [...new Set([...call.declared, ...k.touched])], slots: k.slots });
  }
  for (const [name, r] of out) {
    const s = sets.get(name)!;
    r.touched = [...s.touched].sort();
    r.undeclared = [...s.undeclared].sort();
    r.declared = [...s.declared].sort();
    r.channels = [...s.channels].sort();
  }
  return out;
}
