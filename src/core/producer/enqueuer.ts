import { fromRedis, isBetweenMasters, RedisOutOfMemoryError, UnexpectedReplyError } from '../errors.js';
import { ENQUEUE_CODES } from '../protocol/reply-codes.js';
import type { QueueKeys } from '../protocol/queue-keys.js';
import type { ScriptRunner } from '../protocol/script-runner.js';
import { enqueue, enqueueItems, type EnqueueItems, type EnqueueOutcome, type EnqueueTask } from '../protocol/scripts.js';
import { DEFAULT_EVENTS_MAX_LENGTH } from '../events/queue-events.js';

// One enqueue call carries at most this many tasks, or about this many bytes of arguments: a
// burst is cut into several calls, so Redis runs the first while the next is being built
// (docs/decisions.md: 25 to 50 tasks per call sent about 1.5x as many tasks per second as 1,000).
// The task count also bounds the keys a call declares: three of the queue's, and each task's
// record and unique lock, so at most 3 + 2 x 50. The bytes count the tasks' arguments only: a
// task's keys and other items are a few hundred bytes at most, which 50 tasks keep small.
export const MAX_BATCH_TASKS = 50;
/** How many times a task with a conflict mode is sent when the lock's holder changes between its sends (enqueue-3's code 8). */
const MAX_CONFLICT_TRIES = 100;
const MAX_BATCH_BYTES = 64 * 1024;

interface Pending {
  items: EnqueueItems;
  what: string;
  resolve: (outcome: EnqueueOutcome) => void;
  reject: (err: unknown) => void;
}

interface Batch {
  keys: QueueKeys;
  tasks: Pending[];
  bytes: number;
}

/**
 * Sends tasks to Redis through the enqueue script, batched: the tasks handed to `send` in the
 * same tick share one script call per queue (per 50 tasks or 64 KiB of arguments), sent on the
 * next `process.nextTick`, so a burst of dispatches costs one round trip and one script run
 * instead of one each. The Dispatcher sends through one; anything else that enqueues (a
 * scheduler) can hold its own.
 */
export class Enqueuer {
  /** Tasks waiting for the next call, per queue. */
  private readonly batches = new Map<string, Batch>();
  private flushScheduled = false;
  /** Calls in flight. */
  private readonly sending = new Set<Promise<void>>();

  /** `lastError`: the connection's last error, named when Redis cannot be reached. */
  constructor(
    private readonly scripts: ScriptRunner,
    private readonly lastError: () => Error | undefined = () => undefined,
    /** The cap of the queues' event streams, in entries (0: no events). */
    private readonly eventsCap: number = DEFAULT_EVENTS_MAX_LENGTH,
    /**
     * How long a call refused between two masters (a failover: see isBetweenMasters) is sent
     * again, in ms from its first try; 0 sends it once.
     */
    private readonly failoverTimeoutMs: number = DEFAULT_FAILOVER_TIMEOUT_MS,
    /** Whether the connection is a Redis Cluster (a closed node connection is then a failover). */
    private readonly cluster = false,
  ) {}

  /**
   * Queues one task for the next enqueue call of its queue; resolves with the script's answer
   * for it (see reply-codes.ts), after sending it again as long as a conflict mode's answer asks. `bytes`: the size of its arguments, for cutting batches;
   * `what`: how errors name it (`sending ReportService.generateReport`).
   */
  async send(keys: QueueKeys, task: EnqueueTask, bytes: number, what: string): Promise<EnqueueOutcome> {
    for (let tries = 1; ; tries++) {
      const outcome = await this.sendOnce(keys, task, bytes, what);
      const c = task.conflict;
      if (outcome.code !== ENQUEUE_CODES.conflictKeysChanged || c === undefined) return outcome;
      // A task with a conflict mode declares the lock's holder and pending task as it last saw
      // them (none, at first); the script named others and wrote nothing: sent again declaring
      // those, in the next batch. Each round one of the sends racing for the lock goes through,
      // so this bound only stops a livelock.
      if (tries >= MAX_CONFLICT_TRIES) {
        throw new UnexpectedReplyError(`${what}: the lock's holder changed at each of ${tries} tries; nothing was sent`);
      }
      task = { ...task, conflict: { ...c, holder: outcome.detail, pending: outcome.other ?? '' } };
    }
  }

  private sendOnce(keys: QueueKeys, task: EnqueueTask, bytes: number, what: string): Promise<EnqueueOutcome> {
    return new Promise<EnqueueOutcome>((resolve, reject) => {
      let batch = this.batches.get(keys.queue);
      if (!batch) {
        batch = { keys, tasks: [], bytes: 0 };
        this.batches.set(keys.queue, batch);
      }
      batch.tasks.push({ items: enqueueItems(keys, task), what, resolve, reject });
      batch.bytes += bytes;
      if (batch.tasks.length >= MAX_BATCH_TASKS || batch.bytes >= MAX_BATCH_BYTES) {
        this.batches.delete(keys.queue);
        this.track(this.sendBatch(batch));
      } else if (!this.flushScheduled) {
        this.flushScheduled = true;
        process.nextTick(() => this.flush());
      }
    });
  }

  /** Sends what waits for the next tick now, and resolves once every call in flight has settled. */
  async drain(): Promise<void> {
    this.flush();
    await Promise.allSettled([...this.sending]);
  }

  private flush(): void {
    this.flushScheduled = false;
    const batches = [...this.batches.values()];
    this.batches.clear();
    for (const batch of batches) this.track(this.sendBatch(batch));
  }

  private track(sent: Promise<void>): void {
    this.sending.add(sent);
    void sent.finally(() => this.sending.delete(sent));
  }

  /**
   * Runs `call`, and runs it again while Redis refuses it between two masters, until
   * `failoverTimeoutMs` after the first try: a dispatch made during a promotion waits for the new
   * master. Safe to repeat: a re-sent enqueue recognises a task it already wrote (code 1).
   * Pauses grow from 100 ms to 1 s.
   */
  private async untilServed<T>(call: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.failoverTimeoutMs;
    for (let pause = 100; ; pause = Math.min(pause * 2, 1000)) {
      try {
        return await call();
      } catch (err) {
        if (!isBetweenMasters(err, this.cluster) || Date.now() + pause > deadline) throw err;
      }
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  }

  private async sendBatch(batch: Batch): Promise<void> {
    let outcomes: EnqueueOutcome[];
    try {
      outcomes = await this.untilServed(() => enqueue(this.scripts, batch.keys, batch.tasks.map((t) => t.items), this.eventsCap));
    } catch (err) {
      const what = batch.tasks.length === 1 ? batch.tasks[0]!.what : `sending ${batch.tasks.length} tasks`;
      const error = redisFailure(err, what, this.lastError());
      for (const t of batch.tasks) t.reject(error);
      return;
    }
    batch.tasks.forEach((t, i) => t.resolve(outcomes[i]!));
  }
}

/** Default `failoverTimeout` of the Dispatcher: 15 s, a promotion or two (about 4 s each measured with `cluster-node-timeout 2000`). */
export const DEFAULT_FAILOVER_TIMEOUT_MS = 15_000;

/** What a failed enqueue call rejects each of its tasks with (see fromRedis). */
function redisFailure(err: unknown, what: string, lastError?: Error): unknown {
  // The script runner has already said which script; here we know which tasks.
  if (err instanceof RedisOutOfMemoryError) return new RedisOutOfMemoryError(what, { cause: err.cause });
  return fromRedis(err, what, lastError);
}
