import { ConfigError, fromRedis, isWrongType, RedisRefusedError, redisCall } from '../errors.js';
import { closeClient, openClient, redisNowMs, type OwnedClient, type RedisClient } from '../protocol/connection.js';
import { eventsSettings, type EventsOptions } from '../events/queue-events.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, KEY_NAMES, QueueKeys, validateName } from '../protocol/queue-keys.js';
import { escapeGlob, scanKeys } from '../protocol/scan.js';
import { ScriptRunner } from '../protocol/script-runner.js';
import { actOnDeadLetter, dropTurns, extendLock, releaseLock, type LockExtension, type LockRelease } from '../protocol/scripts.js';
import { FIELDS } from '../protocol/task-fields.js';
import { visibleState, type TaskState } from '../protocol/task-record.js';
import type { ConnectionOptions } from '../producer/dispatcher.js';
import { registeredTasks } from '../task/registry.js';
import { Limits } from '../task/limits.js';
import { parsePermitRun } from '../protocol/permit-scripts.js';
import { purge } from '../protocol/scripts.js';
import { DEFAULT_RESULT_EXPIRES_MS, lockLifetime } from '../task/task-options.js';
import type { Duration } from '../task/durations.js';

/** The names of a queue's own keys that queueNames() finds it by. */
const QUEUE_LEVEL = new Set<string>([KEY_NAMES.wait, KEY_NAMES.workers, KEY_NAMES.workerInfo, KEY_NAMES.active, KEY_NAMES.delayed, KEY_NAMES.dead, KEY_NAMES.names]);

/** How many keys or entries one listing reads at most, unless told otherwise. */
const DEFAULT_LIMIT = 100;
/** Hard bound on what one listing reads. */
const MAX_LIMIT = 10_000;
/** Delayed tasks read to count those retrying and those waiting on a rate window. */
const DELAYED_SAMPLE = 1_000;
/** Width of a bucket of the stats hash (fetch-7.lua), ms. */
const STATS_BUCKET_MS = 10_000;

/**
 * Runs ended per second over the last 1, 5 and 15 minutes, from the stats hash's 10-second
 * buckets (fields '<kind>:<bucket>') of the kinds given ('s:' succeeded, 'f:' failed or retried).
 */
function throughput(stats: Record<string, string> | null, now: number, kinds: readonly string[]): Throughput {
  // Each window is read from the start of the bucket it begins in to now, so it divides by the
  // time its buckets cover (the current bucket is partly filled).
  const rate = (windowMs: number): number => {
    const since = Math.floor((now - windowMs) / STATS_BUCKET_MS) * STATS_BUCKET_MS;
    let sum = 0;
    for (const [field, value] of Object.entries(stats ?? {})) {
      if (!kinds.some((kind) => field.startsWith(kind))) continue;
      const bucketStart = Number(field.slice(2)) * STATS_BUCKET_MS;
      const count = Number(value);
      if (Number.isFinite(bucketStart) && Number.isFinite(count) && bucketStart >= since) sum += count;
    }
    return Math.round((sum / Math.max(1, (now - since) / 1000)) * 100) / 100;
  };
  return { m1: rate(60_000), m5: rate(300_000), m15: rate(900_000) };
}

/** The counts of one queue, read in one MULTI (a snapshot). */
export interface QueueStats {
  queue: string;
  /** Tasks ready to start: in the wait list, or claimed by a worker that starts them in its next call. */
  waiting: number;
  /** Tasks due later (countdown, eta, retries, rate-limit reschedules, hand-backs). */
  delayed: number;
  /** Tasks holding a lease: running, and reserved by a worker's prefetch (those read PENDING to TaskResult). */
  running: number;
  /** Dead letters kept (at most 1,000). */
  dead: number;
  /** Live workers registered on the queue. */
  workers: number;
  /** Milliseconds the oldest waiting task has been waiting since it was sent (Redis clock), or null when none waits. */
  oldestWaitingMs: number | null;
  /**
   * Of the delayed tasks, those waiting to retry (state RETRY). Counted among the 1,000 due
   * first: a lower bound when more are delayed.
   */
  retrying: number;
  /** Runs ended per second (succeeded, failed or retried), averaged over the last 1, 5 and 15 minutes (Redis clock, 10-second buckets). */
  tasksPerSecond: Throughput;
  /** Of those, the runs that threw: ended FAILURE, or were retried (errors, not only final failures). */
  errorsPerSecond: Throughput;
}

/** A rate per second over the last 1, 5 and 15 minutes. */
export interface Throughput {
  m1: number;
  m5: number;
  m15: number;
}

/** A unique lock and its holder. */
export interface LockInfo {
  queue: string;
  /** The whole Redis key, as `releaseLock()` takes it. */
  key: string;
  /** The task name the lock is for. */
  task: string;
  /** The lock's key part (`key(args)`, or the arguments' hash). */
  lockKey: string;
  /** The id of the task holding it. */
  holder: string;
  /** The holder's state; undefined when its record is gone (forgotten, expired). */
  holderState: TaskState | undefined;
  /** Milliseconds until the lock lapses (`uniqueTimeout`), or null when it has no expiry. */
  ttlMs: number | null;
}

/** A named rate limit in use (`Limits.define(name, [n, period])`), as {@link Inspector.namedLimits} found it. */
export interface NamedLimitInfo {
  name: string;
  /** `'window'` or `'gcra'`: this process's definition, else what the keys hold. */
  algorithm: 'window' | 'gcra';
  /** Units per period and the period (ms), when this process defines the limit; else undefined. */
  limit: number | undefined;
  periodMs: number | undefined;
  /**
   * window: the units of the runs started in the period (all the entries up to now when the
   * period is unknown); gcra: the units the limit is ahead of now, as its TAT says (0 when idle).
   */
  used: number;
  /** Runs waiting with a reserved turn (window: entries after now; gcra: reservations). */
  turns: number;
}

/** A run that holds a concurrency permit. */
export interface PermitHolder {
  queue: string;
  id: string;
  attempt: number;
  /** Milliseconds until the permit lapses unless its worker renews it (it does, every third of its lease, while the run runs). */
  lapsesInMs: number;
}

/** One scope of concurrency permits, as {@link Inspector.permits} found it. */
export interface PermitScopeInfo {
  /** The scope's keys without their last letter: `<prefix>:{permit:<name>[ <key>]}:` or `<prefix>:{task-permit:<JSON>}:`. */
  key: string;
  /** Whose permits: a concurrency limit's, or a task's own `concurrency`. */
  of: { limit: string } | { task: string };
  /** The key its uses gave, or undefined for a scope without one. */
  scopeKey: string | undefined;
  /** Its permits, when this process knows the limit or the task (else undefined). */
  limit: number | undefined;
  /** The runs that hold a permit now (lapsed ones left out). */
  holders: PermitHolder[];
  /** Runs waiting for a permit (each is in its queue's delayed set meanwhile). */
  waiting: number;
}

/** A rate window: starts counted in its period. */
export interface RateWindowInfo {
  queue: string;
  /** The whole Redis key. */
  key: string;
  /** The task name: its newest start's, or a registered task's whose name fits the key. */
  task: string | undefined;
  /** Its limit, from the record of its newest start (or the registered task's static `rateLimit`); undefined when unknown. */
  limit: number | undefined;
  /** Its period in ms, found as `limit` is; undefined when unknown. */
  periodMs: number | undefined;
  /** Starts within the period (all starts the window holds when the period is unknown). */
  starts: number;
  /** Turns reserved for tasks that wait for the window (its entries later than now). */
  turns: number;
  /**
   * Milliseconds until a task sent now could start, behind the turns already reserved: 0 when it
   * could start at once; undefined when the limit is unknown.
   */
  nextFreeInMs: number | undefined;
  /**
   * Tasks in the delayed set that this window sent back (rate-limited, waiting for their turn).
   * Counted among the 1,000 delayed tasks due first: a lower bound when more are delayed.
   */
  waiting: number;
}

/** A dead letter: a task that could not be run, and why. */
export interface DeadLetter {
  queue: string;
  id: string;
  reason: string;
  /** When it was dead-lettered (Redis clock). */
  at: Date;
  /** The entry as stored, which `retryDead()` and `dropDead()` take. */
  raw: string;
}

/** What `retryDead()` and `dropDead()` did: the letters acted on, and those left (with why). */
export interface DeadLetterResult {
  done: number;
  /** Gone meanwhile (another operator acted), or not retried: the task's record is gone or it did not end FAILURE. */
  skipped: { id: string; reason: 'gone' | 'not-failed'; state?: TaskState | undefined }[];
}

/** Options of the listings: how many entries to read at most (default 100, at most 10,000). */
export interface ListOptions {
  limit?: number;
}

/** Options of `new Inspector()`: the connection and prefix, as a Dispatcher's. */
export interface InspectorOptions extends ConnectionOptions {
  /**
   * The events it writes (a lock released, a dead letter retried), capped at `maxLength` entries
   * per queue as a Dispatcher's are. `false` writes none. Default: `{ maxLength: 10_000 }`.
   */
  events?: EventsOptions | false;
}

/**
 * Reads what is in Redis for operators and tools (the CLI, a dashboard): per-queue counts, unique
 * locks with their holders, rate windows, dead letters; and releases a lock on purpose. Reads are
 * bounded (`SCAN` with a `COUNT`, `LRANGE`/`ZRANGE` with limits), never `KEYS`. Listings that
 * find keys by pattern use `SCAN`, which a restricted ACL user needs (`+scan`).
 */
export class Inspector {
  /** First segment of every key it reads. */
  readonly prefix: string;
  private readonly conn: OwnedClient;
  private readonly scripts: ScriptRunner;
  /** The cap of the queues' event streams for what it writes (a lock released, a letter retried); 0: no events. */
  private readonly eventsCap: number;

  constructor(options: InspectorOptions) {
    if (typeof options !== 'object' || options === null) throw new ConfigError('new Inspector() needs { connection }');
    this.prefix = options.prefix === undefined ? DEFAULT_PREFIX : validateName(options.prefix, 'prefix');
    this.conn = openClient(options.connection, 'commands', `heimdall:${this.prefix}:inspector`);
    this.scripts = new ScriptRunner(this.conn.client);
    this.eventsCap = eventsSettings(options.events).cap;
  }

  private get client(): RedisClient {
    return this.conn.client;
  }

  /**
   * The queues of the prefix that hold anything (found with SCAN), with 'default' and the queues of
   * the tasks registered in this process, sorted.
   */
  async queueNames(): Promise<string[]> {
    const found = new Set<string>([DEFAULT_QUEUE, ...registeredTasks().map((d) => d.options.queue)]);
    const head = `${this.prefix}:{`;
    await redisCall('listing the queues', () =>
      // Only the queue-level keys (wait, workers, worker-info, active, delayed, dead, names), not
      // every task record, lock and window.
      scanKeys(this.client, `${escapeGlob(this.prefix)}:{*}:[wadn]*`, (_node, keys) => {
        for (const key of keys) {
          // Exactly a queue-level name after the hash tag: a named limit's `{limit:<name>}:w` or a
          // permit scope's `{permit:<name>}:d` is no queue.
          const end = key.indexOf('}:', head.length);
          if (key.startsWith(head) && end > head.length && QUEUE_LEVEL.has(key.slice(end + 2))) found.add(key.slice(head.length, end));
        }
      }),
    );
    return [...found].sort();
  }

  /** The counts of each queue (default: every queue `queueNames()` finds). */
  async queues(names?: readonly string[]): Promise<QueueStats[]> {
    const queues = names ?? (await this.queueNames());
    return Promise.all(queues.map((q) => this.queueStats(new QueueKeys(this.prefix, validateName(q, 'queue')))));
  }

  private async queueStats(k: QueueKeys): Promise<QueueStats> {
    const replies = await redisCall(`reading queue ${k.queue}`, async () => {
      const now = await redisNowMs(this.client);
      const r = await this.client
        .multi()
        .llen(k.wait)
        .zcard(k.delayed)
        .zcard(k.active)
        .llen(k.dead)
        .zcount(k.workers, `(${now}`, '+inf')
        // The oldest waiting ids are at the tail (RPOP takes them first); wake markers ('') can be
        // anywhere in the list.
        .lrange(k.wait, -10, -1)
        .lpos(k.wait, '', 'COUNT', 0, 'MAXLEN', 100_000)
        .hgetall(k.stats)
        .zcard(k.claimed)
        .exec();
      if (!r) throw new ConfigError(`the MULTI reading queue ${k.queue} was discarded`);
      for (const [err] of r) if (err) throw err;
      return { now, r: r.map(([, v]) => v) };
    });
    const [waitLen, delayed, running, dead, workers, tail, markerAt, stats, claimed] = replies.r as [
      number,
      number,
      number,
      number,
      number,
      string[],
      number[] | null,
      Record<string, string>,
      number,
    ];
    const markers = markerAt?.length ?? 0;
    // Waiting since it became ready: sent, or due (a countdown, a retry, a hand-back), whichever is later.
    let oldestWaitingMs: number | null = null;
    for (const id of [...tail].reverse()) {
      if (id === '') continue;
      const [created, due] = await redisCall(`reading task ${id}`, () => this.client.hmget(k.task(id), FIELDS.created, FIELDS.due));
      if (created === null) continue; // forgotten meanwhile: the next one
      oldestWaitingMs = Math.max(0, replies.now - Math.max(Number(created), Number(due ?? 0)));
      break;
    }
    const { retrying } = delayed > 0 ? await this.delayedSample(k) : { retrying: 0 };
    return {
      queue: k.queue,
      // Claimed tasks wait too: a worker took them off the wait list to start them in its next call.
      waiting: Math.max(0, waitLen - markers) + claimed,
      delayed,
      running,
      dead,
      workers,
      oldestWaitingMs,
      retrying,
      tasksPerSecond: throughput(stats, replies.now, ['s:', 'f:']),
      errorsPerSecond: throughput(stats, replies.now, ['f:']),
    };
  }

  /**
   * The 1,000 delayed tasks due first, by what they wait for: how many wait to retry (RETRY), and
   * how many each rate window sent back (PENDING with the window's key), in one pipeline.
   */
  private async delayedSample(k: QueueKeys): Promise<{ retrying: number; byWindow: Map<string, number> }> {
    return redisCall(`reading the delayed tasks of queue ${k.queue}`, async () => {
      const ids = await this.client.zrange(k.delayed, 0, DELAYED_SAMPLE - 1);
      const byWindow = new Map<string, number>();
      let retrying = 0;
      if (ids.length === 0) return { retrying, byWindow };
      const pipeline = this.client.pipeline();
      for (const id of ids) pipeline.hmget(k.task(id), FIELDS.state, FIELDS.rateKey);
      for (const [err, fields] of (await pipeline.exec()) ?? []) {
        if (err) continue; // a record of the wrong type: not counted
        const [state, rateKey] = fields as [string | null, string | null];
        if (state === 'RETRY') retrying++;
        else if (state === 'PENDING' && rateKey !== null) byWindow.set(rateKey, (byWindow.get(rateKey) ?? 0) + 1);
      }
      return { retrying, byWindow };
    });
  }

  /** The unique locks of a queue with their holders (found with SCAN; at most `limit`). */
  async locks(queue: string = DEFAULT_QUEUE, options: ListOptions = {}): Promise<LockInfo[]> {
    const k = new QueueKeys(this.prefix, validateName(queue, 'queue'));
    const limit = limitOf(options);
    const keys = await this.scan(`${escapeGlob(k.base)}${KEY_NAMES.lock}*`, limit, `listing the locks of queue ${k.queue}`);
    const names = taskNames();
    const locks = await Promise.all(
      keys.map(async (key): Promise<LockInfo | undefined> => {
        let holder: string | null;
        let ttl: number;
        try {
          [holder, ttl] = await Promise.all([this.client.get(key), this.client.pttl(key)]);
        } catch (err) {
          if (isWrongType(err)) return undefined; // not a lock of ours
          throw fromRedis(err, `reading lock ${key}`);
        }
        if (holder === null) return undefined; // lapsed or released meanwhile
        const [rawState, holderName, reserved] = (await redisCall(`reading task ${holder}`, () =>
          this.client.hmget(k.task(holder), FIELDS.state, FIELDS.name, FIELDS.reserved),
        )) as [TaskState | null, string | null, string | null];
        // A reservation (prefetch) reads PENDING, as everywhere.
        const state = rawState === null ? null : visibleState(rawState, reserved);
        const rest = key.slice(k.base.length + KEY_NAMES.lock.length);
        // The holder's record names its task; a name may hold ':', so a guess from the key alone
        // (the registered names, longest first) is the fallback for a holder whose record is gone.
        const task = holderName !== null && rest.startsWith(`${holderName}:`) ? holderName : ownerOf(rest, names);
        return {
          queue: k.queue,
          key,
          task: task ?? rest,
          lockKey: task === undefined ? '' : rest.slice(task.length + 1),
          holder,
          holderState: state ?? undefined,
          ttlMs: ttl >= 0 ? ttl : null,
        };
      }),
    );
    return locks.filter((l): l is LockInfo => l !== undefined).sort((a, b) => a.key.localeCompare(b.key));
  }

  /**
   * Releases a unique lock on purpose, only if `holder` still holds it (so a lock another task
   * took meanwhile is left alone), or whoever holds it with `{ force: true }` (the answer then
   * names the holder it had). The holder keeps running. `key`: the whole key, as `locks()` or
   * `TaskRef.lock()` give it.
   */
  async releaseLock(key: string, holder: string | { force: true }): Promise<LockRelease> {
    const k = this.queueOfLock(key, 'releaseLock()');
    const forced = typeof holder === 'object' && holder !== null && (holder as { force?: unknown }).force === true;
    if (!forced && (typeof holder !== 'string' || holder === '')) {
      throw new ConfigError('releaseLock() needs the holder id the lock is expected to have, or { force: true } to release it whoever holds it');
    }
    return redisCall(`releasing lock ${key}`, () => releaseLock(this.scripts, k, key, forced ? { force: true } : (holder as string), this.eventsCap));
  }

  /**
   * Gives a unique lock `duration` (seconds or an `ms` string) from now on the Redis clock, only
   * if `holder` still holds it: for a task that will run longer than its `uniqueTimeout`. The
   * lifetime is set, not added to (a shorter one shortens it). `key`: the whole key, as
   * `locks()` or `TaskRef.lock()` give it.
   */
  async extendLock(key: string, holder: string, duration: Duration): Promise<LockExtension> {
    const k = this.queueOfLock(key, 'extendLock()');
    if (typeof holder !== 'string' || holder === '') throw new ConfigError('extendLock() needs the holder id the lock is expected to have');
    const ttlMs = lockLifetime(duration, 'extendLock(): duration');
    return redisCall(`extending lock ${key}`, () => extendLock(this.scripts, k, key, holder, ttlMs, this.eventsCap));
  }

  /** The keys of the queue a lock key of this prefix belongs to; ConfigError for any other key. */
  private queueOfLock(key: string, what: string): QueueKeys {
    if (typeof key !== 'string' || !key.startsWith(`${this.prefix}:{`) || !key.includes(`}:${KEY_NAMES.lock}`)) {
      throw new ConfigError(`${what} takes a lock key of this prefix, as locks() lists it, got ${JSON.stringify(key)}`);
    }
    const head = `${this.prefix}:{`;
    const queue = key.slice(head.length, key.indexOf(`}:${KEY_NAMES.lock}`, head.length));
    return new QueueKeys(this.prefix, validateName(queue, 'queue'));
  }

  /** The rate windows of a queue (found with SCAN; at most `limit`): starts in the period and when a slot frees. */
  async rateWindows(queue: string = DEFAULT_QUEUE, options: ListOptions = {}): Promise<RateWindowInfo[]> {
    const k = new QueueKeys(this.prefix, validateName(queue, 'queue'));
    const limit = limitOf(options);
    const keys = await this.scan(`${escapeGlob(k.base)}${KEY_NAMES.rate}*`, limit, `listing the rate windows of queue ${k.queue}`);
    const names = taskNames();
    const now = await redisCall('reading the Redis clock', () => redisNowMs(this.client));
    const { byWindow } = keys.length > 0 ? await this.delayedSample(k) : { byWindow: new Map<string, number>() };
    const windows = await Promise.all(
      keys.map(async (key): Promise<RateWindowInfo | undefined> => {
        // The newest start's task record carries the window's limit and period (rn, rp) and its
        // name; the registered tasks of this process are the fallback.
        let newest: string[];
        try {
          newest = await this.client.zrange(key, -1, -1);
        } catch (err) {
          if (isWrongType(err)) return undefined; // not a window of ours
          throw fromRedis(err, `reading window ${key}`);
        }
        const member = newest[0];
        // A start is '<id>:<attempt>', a turn '~<id>:<attempt>' (rate-window.lua).
        const starter = member === undefined ? undefined : member.slice(member.startsWith('~') ? 1 : 0, member.lastIndexOf(':'));
        const [name, rn, rp] = starter ? await redisCall(`reading task ${starter}`, () => this.client.hmget(k.task(starter), FIELDS.name, FIELDS.rateLimit, FIELDS.ratePeriod)) : [null, null, null];
        const rest = key.slice(k.base.length + KEY_NAMES.rate.length);
        const task = name !== null && (rest === name || rest.startsWith(`${name}:`)) ? name : ownerOf(rest, names);
        const recorded = rn !== null && rp !== null && Number(rn) >= 1 && Number(rp) > 0 ? { limit: Number(rn), periodMs: Number(rp) } : undefined;
        const rate = recorded ?? (task === undefined ? undefined : names.get(task)?.rate);
        const periodMs = rate?.periodMs;
        // Entries up to now are starts; later ones are the turns reserved for tasks that wait.
        const [starts, turns] = await redisCall(`reading window ${key}`, () =>
          Promise.all([
            periodMs === undefined ? this.client.zcount(key, '-inf', now) : this.client.zcount(key, `(${now - periodMs}`, now),
            this.client.zcount(key, `(${now}`, '+inf'),
          ]),
        );
        let nextFreeInMs: number | undefined;
        if (rate) {
          // When a task sent now would start: it queues behind the turns (rate-window.lua).
          const counted = starts + turns;
          if (counted < rate.limit) nextFreeInMs = 0;
          else {
            const freeing = await redisCall(`reading window ${key}`, () =>
              this.client.zrangebyscore(key, `(${now - rate.periodMs}`, '+inf', 'WITHSCORES', 'LIMIT', counted - rate.limit, 1),
            );
            const at = Number(freeing[1] ?? now);
            nextFreeInMs = Math.max(0, at + rate.periodMs - now);
          }
        }
        return { queue: k.queue, key, task, limit: rate?.limit, periodMs, starts, turns, nextFreeInMs, waiting: byWindow.get(key) ?? 0 };
      }),
    );
    return windows.filter((w): w is RateWindowInfo => w !== undefined).sort((a, b) => a.key.localeCompare(b.key));
  }

  /**
   * The named rate limits in use (found with SCAN; at most `limit`): the units used in the
   * period and the turns reserved. A limit's keys live apart from every queue
   * (`<prefix>:{limit:<name>}:`); its `n` and period are known to a process that defines it.
   */
  async namedLimits(options: ListOptions = {}): Promise<NamedLimitInfo[]> {
    const limit = limitOf(options);
    const head = `${this.prefix}:{limit:`;
    const keys = await this.scan(`${escapeGlob(head)}*}:w`, limit, 'listing the named limits');
    const [now, nowUs] = await redisCall('reading the Redis clock', async () => {
      const [sec, usec] = await this.client.time();
      return [Number(sec) * 1000 + Math.floor(Number(usec) / 1000), Number(sec) * 1e6 + Number(usec)] as const;
    });
    const found = await Promise.all(
      keys.map(async (w): Promise<NamedLimitInfo | undefined> => {
        const name = w.slice(head.length, w.length - '}:w'.length);
        const r = `${w.slice(0, -1)}r`;
        const def = Limits.get(name);
        const known = def && def.algorithm !== 'concurrency' ? def : undefined;
        const unit = (cost: string): number => Number(cost.slice(0, cost.indexOf('|'))) || 1;
        try {
          // A window's entries are a sorted set; a gcra's TAT is a string.
          // The starts of the period, their costs read from their members (at most MAX_LIMIT of
          // them); the turns after now, counted.
          const [entries, turns] = await Promise.all([
            this.client.zrangebyscore(w, known ? `(${now - known.periodMs}` : '-inf', now, 'LIMIT', 0, MAX_LIMIT),
            this.client.zcount(w, `(${now}`, '+inf'),
          ]);
          const used = entries.reduce((sum, m) => sum + unit(m), 0);
          return { name, algorithm: 'window', limit: known?.limit, periodMs: known?.periodMs, used, turns };
        } catch (err) {
          if (!isWrongType(err)) throw fromRedis(err, `reading named limit ${name}`);
        }
        const [tat, reserved] = await redisCall(`reading named limit ${name}`, () => Promise.all([this.client.get(w), this.client.zcard(r)]));
        // The TAT lies `used` units of period/n ahead of now.
        const ahead = Math.max(0, Number(tat ?? 0) - nowUs);
        const used = known ? Math.ceil((ahead * known.limit) / (known.periodMs * 1000)) : 0;
        return { name, algorithm: 'gcra', limit: known?.limit, periodMs: known?.periodMs, used, turns: reserved };
      }),
    );
    return found.filter((x): x is NamedLimitInfo => x !== undefined).sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * The concurrency permit scopes in use (found with SCAN; at most `limit`): who holds a permit
   * and when it lapses unless renewed, and how many runs wait. A scope is a concurrency limit's
   * (`Limits.define(name, { concurrency })`, per key when its uses give one) or a task's own
   * `concurrency`.
   */
  async permits(options: ListOptions = {}): Promise<PermitScopeInfo[]> {
    const limit = limitOf(options);
    const head = `${this.prefix}:{`;
    const keys = [
      ...(await this.scan(`${escapeGlob(head)}permit:*}:h`, limit, 'listing the permit scopes of concurrency limits')),
      ...(await this.scan(`${escapeGlob(head)}task-permit:*}:h`, limit, 'listing the permit scopes of tasks')),
    ].slice(0, limit);
    const now = await redisCall('reading the Redis clock', () => redisNowMs(this.client));
    const tasks = new Map(registeredTasks().map((d) => [d.name, d]));
    const scopes = await Promise.all(
      keys.map(async (key): Promise<PermitScopeInfo | undefined> => {
        const inner = key.slice(head.length, key.length - '}:h'.length);
        let of: PermitScopeInfo['of'];
        let scopeKey: string | undefined;
        let n: number | undefined;
        if (inner.startsWith('permit:')) {
          const rest = inner.slice('permit:'.length);
          const space = rest.indexOf(' ');
          const name = space < 0 ? rest : rest.slice(0, space);
          scopeKey = space < 0 ? undefined : rest.slice(space + 1);
          of = { limit: name };
          const def = Limits.get(name);
          n = def?.algorithm === 'concurrency' ? def.limit : undefined;
        } else {
          let parsed: unknown;
          try {
            parsed = JSON.parse(inner.slice('task-permit:'.length));
          } catch {
            return undefined; // not a scope of ours
          }
          if (!Array.isArray(parsed) || typeof parsed[0] !== 'string') return undefined;
          of = { task: parsed[0] };
          scopeKey = typeof parsed[1] === 'string' ? parsed[1] : undefined;
          n = tasks.get(parsed[0])?.options.concurrency?.limit;
        }
        const base = key.slice(0, -1);
        let held: string[];
        let waiting: number;
        try {
          [held, waiting] = await Promise.all([this.client.zrangebyscore(key, `(${now}`, '+inf', 'WITHSCORES'), this.client.zcard(`${base}q`)]);
        } catch (err) {
          if (isWrongType(err)) return undefined;
          throw fromRedis(err, `reading permit scope ${key}`);
        }
        const holders: PermitHolder[] = [];
        for (let i = 0; i + 1 < held.length; i += 2) {
          const run = parsePermitRun(held[i]!);
          if (run) holders.push({ ...run, lapsesInMs: Number(held[i + 1]) - now });
        }
        return { key: base, of, scopeKey, limit: n, holders, waiting };
      }),
    );
    return scopes.filter((x): x is PermitScopeInfo => x !== undefined).sort((a, b) => a.key.localeCompare(b.key));
  }

  /** The dead letters of a queue, newest first (at most `limit`). */
  async deadLetters(queue: string = DEFAULT_QUEUE, options: ListOptions = {}): Promise<DeadLetter[]> {
    const k = new QueueKeys(this.prefix, validateName(queue, 'queue'));
    const limit = limitOf(options);
    const raw = await redisCall(`reading the dead letters of queue ${k.queue}`, () => this.client.lrange(k.dead, 0, limit - 1));
    const out: DeadLetter[] = [];
    for (const line of raw) {
      try {
        const e = JSON.parse(line) as { id?: unknown; reason?: unknown; at?: unknown };
        out.push({ queue: k.queue, id: String(e.id ?? ''), reason: String(e.reason ?? ''), at: new Date(Number(e.at ?? 0)), raw: line });
      } catch {
        out.push({ queue: k.queue, id: '', reason: `(not JSON) ${line.slice(0, 200)}`, at: new Date(0), raw: line });
      }
    }
    return out;
  }

  /**
   * Runs dead-lettered tasks again: each task that ended FAILURE goes back to PENDING at the head
   * of its queue (error cleared, attempts kept) and its letter leaves the list; letters whose task
   * has no record or did not fail are left (`skipped`). `letters`: from `deadLetters()`, or
   * `'all'` (the newest 1,000).
   */
  retryDead(queue: string, letters: readonly DeadLetter[] | 'all'): Promise<DeadLetterResult> {
    return this.actOnDead(queue, letters, 'retry');
  }

  /** Removes dead letters from the list (their tasks' records are left as they are). `letters`: from `deadLetters()`, or `'all'`. */
  dropDead(queue: string, letters: readonly DeadLetter[] | 'all'): Promise<DeadLetterResult> {
    return this.actOnDead(queue, letters, 'drop');
  }

  private async actOnDead(queue: string, letters: readonly DeadLetter[] | 'all', op: 'retry' | 'drop'): Promise<DeadLetterResult> {
    const k = new QueueKeys(this.prefix, validateName(queue, 'queue'));
    const list = letters === 'all' ? await this.deadLetters(queue, { limit: 1000 }) : letters;
    if (!Array.isArray(list)) throw new ConfigError(`${op}Dead() takes the letters deadLetters() gave, or 'all'`);
    const result: DeadLetterResult = { done: 0, skipped: [] };
    for (const letter of list) {
      if (typeof letter?.raw !== 'string' || letter.queue !== k.queue) {
        throw new ConfigError(`${op}Dead('${k.queue}', ...) takes letters deadLetters('${k.queue}') gave`);
      }
      const r = await redisCall(`${op === 'retry' ? 'retrying' : 'dropping'} dead letter ${letter.id}`, () => actOnDeadLetter(this.scripts, k, op, letter.raw, letter.id, this.eventsCap));
      if (r.done) result.done++;
      else result.skipped.push(r.reason === 'gone' ? { id: letter.id, reason: 'gone' } : { id: letter.id, reason: 'not-failed', state: r.state });
    }
    return result;
  }

  /** Closes the connection it opened (a client you passed stays open). */
  async close(): Promise<void> {
    await closeClient(this.conn);
  }

  /** Up to `limit` keys matching `pattern`, sorted. */
  private async scan(pattern: string, limit: number, what: string): Promise<string[]> {
    const found: string[] = [];
    await redisCall(what, () =>
      scanKeys(this.client, pattern, (_node, keys) => {
        for (const key of keys) if (found.length < limit) found.push(key);
        return found.length < limit;
      }),
    );
    return found.sort();
  }

  /**
   * Empties a queue of its waiting tasks, as Celery's `purge`: each ends REVOKED with reason
   * `'purged'` (its unique lock released, `get()` rejecting with a `TaskRevokedError`, its record
   * kept for one day), in batches of 200 per script call. With `delayed: true` (default false),
   * the tasks due later go too (countdown, eta, retries, rate-limit reschedules). Running tasks
   * are left alone. Purges the entries the queue held when called; tasks sent meanwhile may
   * stay. Resolves with the number of tasks it ended.
   */
  async purge(queue: string, options: PurgeOptions = {}): Promise<number> {
    const k = new QueueKeys(this.prefix, validateName(queue, 'queue'));
    const withDelayed = options.delayed === true;
    const [waiting, delayed, claimed] = await redisCall(`reading queue ${k.queue}`, () =>
      Promise.all([this.client.llen(k.wait), this.client.zcard(k.delayed), this.client.zcard(k.claimed)]),
    );
    let waitLeft = waiting;
    let delayedLeft = withDelayed ? delayed : 0;
    // Claimed tasks wait too: a worker's fetch took them off the wait list for its next call.
    let claimedLeft = claimed;
    let purged = 0;
    // Steps that took nothing because the queue changed between their reads and their call (an
    // entry pushed to the tail of the wait list, a lock): each reads again; so many in a row
    // means the queue moves faster than a purge can read it.
    let fruitless = 0;
    while (waitLeft > 0 || delayedLeft > 0 || claimedLeft > 0) {
      const step = await redisCall(`purging queue ${k.queue}`, () =>
        purge(
          this.scripts,
          k,
          Math.min(PURGE_BATCH, waitLeft),
          Math.min(PURGE_BATCH, delayedLeft),
          withDelayed,
          DEFAULT_RESULT_EXPIRES_MS,
          this.eventsCap,
          Math.min(PURGE_BATCH, claimedLeft),
        ),
      );
      purged += step.purged;
      waitLeft -= step.fromWait;
      delayedLeft -= step.fromDelayed;
      claimedLeft -= step.fromClaimed;
      if (step.fromWait > 0 || step.fromDelayed > 0 || step.fromClaimed > 0) {
        fruitless = 0;
      } else if (!step.changed) {
        break; // emptied meanwhile (workers took the rest)
      } else if (++fruitless >= PURGE_FRUITLESS_STEPS) {
        throw new RedisRefusedError(
          `purging queue ${k.queue}: the queue changed between the reads and the purge script ${PURGE_FRUITLESS_STEPS} times in a row; ${purged} task(s) purged so far, call purge() again`,
        );
      }
    }
    // The purged tasks' turns in the queue's rate windows would hold up every task sent after
    // them until their time passed: forget them (a window's starts stay).
    if (purged > 0) await this.dropTurnsOf(k);
    return purged;
  }

  /**
   * Removes from the rate windows of a queue the turns of tasks that no longer wait for them
   * (revoked or purged while they waited; purge() does it itself): a task sent to a window
   * queues behind every turn in it. Starts are kept, so the limits hold. Resolves to the number
   * of turns removed.
   */
  async dropStaleTurns(queue: string = DEFAULT_QUEUE): Promise<number> {
    return this.dropTurnsOf(new QueueKeys(this.prefix, validateName(queue, 'queue')));
  }

  private async dropTurnsOf(k: QueueKeys): Promise<number> {
    const windows = await this.scan(`${escapeGlob(k.base)}${KEY_NAMES.rate}*`, MAX_LIMIT, `listing the rate windows of queue ${k.queue}`);
    let dropped = 0;
    for (const key of windows) {
      try {
        dropped += await dropTurns(this.scripts, k, key);
      } catch (err) {
        if (!isWrongType(err)) throw fromRedis(err, `dropping the stale turns of ${key}`);
      }
    }
    return dropped;
  }
}

/** Options of `Inspector.purge()`. */
export interface PurgeOptions {
  /** Also purge the tasks due later (in the delayed set). Default: false, as Celery's purge. */
  delayed?: boolean;
}

/** Entries one purge-4.lua call takes at most from the wait list, from the delayed set, and from the claimed set. */
const PURGE_BATCH = 200;

/** Purge steps in a row that may find the queue changed under them before purge() gives up. */
const PURGE_FRUITLESS_STEPS = 20;

function limitOf(options: ListOptions): number {
  const limit = options.limit ?? DEFAULT_LIMIT;
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT) {
    throw new ConfigError(`limit must be a whole number from 1 to ${MAX_LIMIT}, got ${String(options.limit)}`);
  }
  return limit;
}

/** The task names registered in this process, with their static rate limits. */
function taskNames(): Map<string, { rate: { limit: number; periodMs: number } | undefined }> {
  const names = new Map<string, { rate: { limit: number; periodMs: number } | undefined }>();
  for (const d of registeredTasks()) {
    const r = d.options.rateLimit;
    names.set(d.name, { rate: r !== undefined && typeof r !== 'function' ? r : undefined });
  }
  return names;
}

/**
 * The registered task a lock or window key belongs to: `rest` is `<task>` or `<task>:<key>`, and a
 * task name may itself hold ':' (the longest registered name that fits wins).
 */
function ownerOf(rest: string, names: ReadonlyMap<string, unknown>): string | undefined {
  let best: string | undefined;
  for (const name of names.keys()) {
    if ((rest === name || rest.startsWith(`${name}:`)) && (best === undefined || name.length > best.length)) best = name;
  }
  return best;
}
