import { createHash } from 'node:crypto';
import { ConfigError } from '../errors.js';

/** Default key prefix of every Redis key heimdall-tasks writes. */
export const DEFAULT_PREFIX = 'heimdall';
/** Default queue of a task. */
export const DEFAULT_QUEUE = 'default';

/**
 * The names of a queue's keys after its base `<prefix>:{<queue>}:`. A name ending in `:` is
 * followed by an id or a task name. The Lua scripts build keys from the same table:
 * `npm run gen` writes src/redis-scripts/includes/keys.lua from it (keep each value a plain
 * string literal: the generator reads this object from the source).
 */
export const KEY_NAMES = {
  wait: 'wait',
  delayed: 'delayed',
  active: 'active',
  claimed: 'claimed',
  dead: 'dead',
  names: 'names',
  task: 't:',
  lock: 'lock:',
  rate: 'rate:',
  after: 'after:',
  next: 'next:',
  workers: 'workers',
  workerInfo: 'worker-info',
  events: 'events',
  stats: 'stats',
} as const;

/** The names of a queue's Pub/Sub channels after its base, read by the generator as KEY_NAMES is. */
export const CHANNEL_NAMES = {
  revoke: 'revoke',
  done: 'done:',
  control: 'control',
  reply: 'reply:',
} as const;

const BAD_NAME = /[{}\u0000-\u001f\u007f\s]/;

/** Checks a prefix or queue name: non-empty, no braces (they are the hash tag), no control characters or spaces. */
export function validateName(value: unknown, what: string): string {
  if (typeof value !== 'string' || value === '' || BAD_NAME.test(value) || value.length > 200) {
    throw new ConfigError(
      `${what} must be a non-empty string of at most 200 characters without braces, spaces or control characters, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

/**
 * The one place that names Redis keys. Every key of a queue shares the hash tag `{<queue>}`,
 * so all keys one script touches live in one Redis Cluster slot.
 */
export class QueueKeys {
  /** `<prefix>:{<queue>}:`, the base every key of this queue starts with. */
  readonly base: string;
  /** LIST of ids ready to run: LPUSH on enqueue, RPOP on fetch (FIFO). */
  readonly wait: string;
  /** ZSET id -> due time (ms, Redis clock) of countdown, eta and rate-limited tasks. */
  readonly delayed: string;
  /** ZSET id -> lease expiry (ms, Redis clock) of started tasks. */
  readonly active: string;
  /** ZSET id -> when the claim lapses (ms, Redis clock) of tasks a worker took off the wait list to start in its next call. */
  readonly claimed: string;
  /** LIST of dead letters: JSON `{ id, reason, at }`, newest first, at most 1000. */
  readonly dead: string;
  /** Pub/Sub channel on which revokes of running tasks are broadcast to workers. */
  readonly revoke: string;
  /** HASH task name -> until when (ms, Redis clock) a worker of this queue declares it. */
  readonly names: string;
  /** ZSET worker id -> until when (ms, Redis clock) its registration on this queue holds. */
  readonly workers: string;
  /** HASH worker id -> JSON of what it last said of itself (WorkerInfo), beside `workers`. */
  readonly workerInfo: string;
  /** Pub/Sub channel on which requests to the workers of this queue are broadcast (ping). */
  readonly control: string;
  /** STREAM of the queue's events (includes/events.lua), capped by length and age. */
  readonly events: string;
  /** HASH of tasks ended per 10-second bucket, written by the workers' heartbeat (throughput). */
  readonly stats: string;

  constructor(
    readonly prefix: string,
    readonly queue: string,
  ) {
    this.base = `${prefix}:{${queue}}:`;
    this.wait = this.base + KEY_NAMES.wait;
    this.delayed = this.base + KEY_NAMES.delayed;
    this.active = this.base + KEY_NAMES.active;
    this.claimed = this.base + KEY_NAMES.claimed;
    this.dead = this.base + KEY_NAMES.dead;
    this.revoke = this.base + CHANNEL_NAMES.revoke;
    this.names = this.base + KEY_NAMES.names;
    this.workers = this.base + KEY_NAMES.workers;
    this.workerInfo = this.base + KEY_NAMES.workerInfo;
    this.control = this.base + CHANNEL_NAMES.control;
    this.events = this.base + KEY_NAMES.events;
    this.stats = this.base + KEY_NAMES.stats;
  }

  /** HASH holding one task's message, state and result. */
  task(id: string): string {
    return this.base + KEY_NAMES.task + id;
  }

  /** STRING unique lock of `taskName` for `key`; its value is the holder's task id. */
  lock(taskName: string, key: string): string {
    return `${this.base}${KEY_NAMES.lock}${taskName}:${key}`;
  }

  /**
   * STRING the task waiting behind the running holder of unique lock `lockKey` (onConflict
   * 'keepLast' or debounce): `'<due ms> <lock lifetime ms> <task id>'`. `lockKey` must be a lock
   * of this queue (`lock()`): the pointer is its suffix under `next:` instead of `lock:`.
   */
  next(lockKey: string): string {
    const locks = this.base + KEY_NAMES.lock;
    if (!lockKey.startsWith(locks)) throw new ConfigError(`${lockKey} is not a unique lock of queue ${this.queue}`);
    return this.base + KEY_NAMES.next + lockKey.slice(locks.length);
  }

  /** STRING taken by `currentTask().onlyAfter(key, interval)` for the interval: the task id that took it. */
  after(key: string): string {
    return this.base + KEY_NAMES.after + key;
  }

  /** ZSET rolling window of start times for a rate-limit bucket. */
  rate(taskName: string, key: string | undefined): string {
    return key === undefined ? this.base + KEY_NAMES.rate + taskName : `${this.base}${KEY_NAMES.rate}${taskName}:${key}`;
  }

  /** Pub/Sub channel on which the end of a task is announced. */
  done(id: string): string {
    return this.base + CHANNEL_NAMES.done + id;
  }

  /** Pub/Sub channel on which workers answer one request (a ping) sent on `control`. */
  reply(nonce: string): string {
    return this.base + CHANNEL_NAMES.reply + nonce;
  }
}

/** Default unique key: a hash of the serialized arguments. */
export function hashArgs(argsJson: string): string {
  return createHash('sha1').update(argsJson).digest('hex');
}
