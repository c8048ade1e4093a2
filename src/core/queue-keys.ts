import { createHash } from 'node:crypto';
import { ConfigError } from './errors.js';

/** Default key prefix of every Redis key heimdall-tasks writes. */
export const DEFAULT_PREFIX = 'heimdall';
/** Default queue of a task. */
export const DEFAULT_QUEUE = 'default';

// Lua scripts build per-task keys from the queue's base (`<prefix>:{<queue>}:`) with these
// same suffixes; keep both sides in step (see docs/architecture.md).
const TASK = 't:';
const LOCK = 'lock:';
const RATE = 'rate:';
const DONE = 'done:';

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
  /** LIST of dead letters: JSON `{ id, reason, at }`, newest first, at most 1000. */
  readonly dead: string;
  /** Pub/Sub channel on which revokes of running tasks are broadcast to workers. */
  readonly revoke: string;
  /** HASH task name -> until when (ms, Redis clock) a worker of this queue declares it. */
  readonly names: string;

  constructor(
    readonly prefix: string,
    readonly queue: string,
  ) {
    this.base = `${prefix}:{${queue}}:`;
    this.wait = `${this.base}wait`;
    this.delayed = `${this.base}delayed`;
    this.active = `${this.base}active`;
    this.dead = `${this.base}dead`;
    this.revoke = `${this.base}revoke`;
    this.names = `${this.base}names`;
  }

  /** HASH holding one task's message, state and result. */
  task(id: string): string {
    return `${this.base}${TASK}${id}`;
  }

  /** STRING unique lock of `taskName` for `key`; its value is the holder's task id. */
  lock(taskName: string, key: string): string {
    return `${this.base}${LOCK}${taskName}:${key}`;
  }

  /** ZSET rolling window of start times for a rate-limit bucket. */
  rate(taskName: string, key: string | undefined): string {
    return key === undefined ? `${this.base}${RATE}${taskName}` : `${this.base}${RATE}${taskName}:${key}`;
  }

  /** Pub/Sub channel on which the end of a task is announced. */
  done(id: string): string {
    return `${this.base}${DONE}${id}`;
  }
}

/** Default unique key: a hash of the serialized arguments. */
export function hashArgs(argsJson: string): string {
  return createHash('sha1').update(argsJson).digest('hex');
}
