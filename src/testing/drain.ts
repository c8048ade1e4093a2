import { ConfigError, RedisRefusedError, StaleRunError, TimeoutError } from '../core/errors.js';
import { redisNowMs, type RedisClient } from '../core/protocol/connection.js';
import { KEY_NAMES, QueueKeys } from '../core/protocol/queue-keys.js';
import { FIELDS } from '../core/protocol/task-fields.js';
import type { RemoteError, RevokeReason } from '../core/protocol/task-record.js';
import { toMillis, type Duration } from '../core/task/durations.js';
import type { Worker } from '../core/worker/worker.js';
import type { TaskEvent, TaskEventSource, WorkerEvents } from '../core/worker/worker-options.js';
import type { InlineTransport } from '../core/inline/inline-transport.js';
import { escapeGlob, scanKeys } from '../core/protocol/scan.js';
import { bounded } from '../core/protocol/bounded.js';

export { bounded };

/** Options of `app.drain()`. */
export interface DrainOptions {
  /** The longest to wait: seconds or an `ms` string. Default: 10 s. */
  timeout?: Duration;
  /**
   * What to do with delayed tasks (a countdown or eta, a retry's backoff, a rate-limit
   * reschedule) that are not due yet:
   * - `'wait'`: they count as pending; drain waits until they are due and have run. When one is
   *   due after drain's deadline while nothing runs, drain rejects at once with a TimeoutError
   *   naming it, rather than wait for a deadline it cannot meet. (While a task runs, a delayed
   *   one may be made due at its end: a task waiting for a concurrency permit, or for a unique
   *   lock under `keepLast`.)
   * - `'leave'`: they are left in the delayed set and listed in the report's `delayed`.
   *
   * Default: `'wait'`.
   */
  delayed?: 'wait' | 'leave';
}

/** A task that ended, as the app's worker reported it. */
export interface FinishedTask {
  id: string;
  name: string;
  queue: string;
  args: unknown[];
  /** How it ended. */
  state: 'SUCCESS' | 'FAILURE' | 'REVOKED';
  /** The returned value (SUCCESS only). */
  result?: unknown;
  /** What it threw (FAILURE only). */
  error?: RemoteError;
  /** Why it was revoked (REVOKED only). */
  reason?: RevokeReason;
  /** Runs it took, retries included; 0 when it never ran (revoked before its start, or an unknown name). */
  attempts: number;
}

/** A task `drain({ delayed: 'leave' })` left in a delayed set. */
export interface DelayedTask {
  id: string;
  queue: string;
  /** Milliseconds until it is due, on the Redis server's clock, when drain resolved. */
  dueInMs: number;
}

/** What `app.drain()` resolves with. */
export interface DrainReport {
  /** Tasks that ended since the previous drain (or since the app was created), in the order they ended. */
  ran: FinishedTask[];
  /** Tasks left for later (`delayed: 'leave'` only; otherwise empty), soonest first. */
  delayed: DelayedTask[];
}

/** Records a worker's ends, and which started runs have yet to end, for drain(). */
export class TaskLog {
  /** Ends not yet reported by a drain. */
  private ended: FinishedTask[] = [];
  /** Runs started and not yet ended (or sent to retry), by `<queue>\0<id>`. */
  readonly running = new Map<string, TaskEvent>();
  private readonly listeners: { [E in keyof WorkerEvents]?: (...args: WorkerEvents[E]) => void } = {
    started: (e) => this.running.set(keyOf(e), e),
    retried: (e) => this.running.delete(keyOf(e)),
    succeeded: (e) => this.end(e, { state: 'SUCCESS', result: e.result, attempts: e.attempt }),
    failed: (e) => this.end(e, { state: 'FAILURE', error: e.error, attempts: e.attempt }),
    revoked: (e) => this.end(e, { state: 'REVOKED', reason: e.reason, attempts: this.running.get(keyOf(e))?.attempt ?? 0 }),
    // A run that is no longer its task's current one (its lease lapsed and the task was
    // recovered, or it was revoked with terminate) never reports an end: it is not running here
    // any more. Redis still shows the task if it runs elsewhere or again.
    error: (e) => {
      if (!(e instanceof StaleRunError)) {
        // This listener turns the Worker's own printing off: print what nobody else hears.
        if (this.errorListeners === 0) console.error('[heimdall-tasks] test app worker:', e);
        return;
      }
      for (const key of [...this.running.keys()]) if (key.endsWith(`\u0000${e.taskId}`)) this.running.delete(key);
    },
  };

  /** The app's own 'error' listeners (added through `on`): while there are none, errors are printed, as a Worker does. */
  private errorListeners = 0;

  constructor(private readonly worker: TaskEventSource) {
    for (const [event, listener] of Object.entries(this.listeners)) {
      worker.on(event as 'started', listener as (e: TaskEvent) => void);
    }
  }

  /** An app's `on()`: listens to the worker, counting 'error' listeners. */
  on<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): void {
    if (event === 'error') this.errorListeners++;
    this.worker.on(event, listener);
  }

  /** An app's `off()`. */
  off<E extends keyof WorkerEvents>(event: E, listener: (...args: WorkerEvents[E]) => void): void {
    if (event === 'error') this.errorListeners = Math.max(0, this.errorListeners - 1);
    this.worker.off(event, listener);
  }

  /** The ends recorded since the last call. */
  take(): FinishedTask[] {
    const out = this.ended;
    this.ended = [];
    return out;
  }

  detach(): void {
    for (const [event, listener] of Object.entries(this.listeners)) {
      this.worker.off(event as 'started', listener as (e: TaskEvent) => void);
    }
  }

  private end(e: Omit<TaskEvent, 'attempt'>, how: Omit<FinishedTask, 'id' | 'name' | 'queue' | 'args'>): void {
    this.running.delete(keyOf(e));
    this.ended.push({ id: e.id, name: e.name, queue: e.queue, args: e.args, ...how });
  }
}

function keyOf(e: { queue: string; id: string }): string {
  return `${e.queue}\u0000${e.id}`;
}

/** What drain() looks at. */
export interface DrainTarget {
  client: RedisClient;
  prefix: string;
  queues: readonly string[];
  worker: Worker;
  log: TaskLog;
}

/** One look at the app's queues. */
interface Look {
  /** Tasks waiting, running, or delayed and due (or not due, under 'wait'), per queue: `queue: n`. */
  busy: string[];
  delayedLater: DelayedTask[];
}

/** How often drain() looks at Redis, in ms. */
const POLL_MS = 15;

/**
 * Resolves when, on every queue of the app, the wait list and the active set are empty, the
 * delayed set holds nothing due (nothing at all under 'wait'), the worker runs nothing, and every
 * run the worker started has reported its end.
 */
export async function drainApp(target: DrainTarget, options: DrainOptions = {}): Promise<DrainReport> {
  const { timeoutMs, mode } = drainSettings(options);
  const keys = target.queues.map((q) => new QueueKeys(target.prefix, q));
  const deadline = Date.now() + timeoutMs;
  /** Queues of the prefix the worker does not consume, found holding tasks that have not ended. */
  const strangers: QueueKeys[] = [];
  for (;;) {
    const look = await withinDeadline(lookAt(target.client, keys), deadline, timeoutMs);
    // Nothing consumes a stranger queue, so a revoked id stays in its lists: count live tasks.
    const strayBusy = strangers.length === 0 ? [] : await withinDeadline(liveTasks(target.client, strangers), deadline, timeoutMs);
    look.busy.push(...strayBusy);
    const remainingMs = deadline - Date.now();
    // While a task runs, or a permit is being handed on, a task delayed later may be made due at
    // once (a concurrency permit, or a unique lock, handed over at an end): only with nothing
    // running is a late one sure to be late.
    const quiet = target.worker.activeCount === 0 && target.log.running.size === 0 && target.worker.permitCallsInFlight === 0;
    if (mode === 'wait' && quiet) {
      const late = look.delayedLater.filter((d) => d.dueInMs > remainingMs);
      if (late.length > 0) {
        const names = await Promise.all(late.slice(0, 5).map((d) => nameOf(target.client, target.prefix, d)));
        throw new TimeoutError(
          `drain(): ${late.length} delayed task(s) are due after drain's deadline (${timeoutMs} ms), e.g. ${names.join(', ')}; ` +
            "pass a longer timeout, or delayed: 'leave' to leave them",
        );
      }
    }
    const idle =
      look.busy.length === 0 && (mode === 'leave' || look.delayedLater.length === 0) && quiet;
    if (idle) {
      // Before saying so: a task sent to a queue the worker does not consume (applyAsync's
      // `queue`) would never run; look for one under the prefix, and wait on its queue too.
      const found = await withinDeadline(strangerQueues(target.client, target.prefix, [...keys, ...strangers]), deadline, timeoutMs);
      if (found.length === 0) return { ran: target.log.take(), delayed: mode === 'leave' ? look.delayedLater : [] };
      strangers.push(...found);
      continue;
    }
    if (remainingMs <= 0) {
      const running = [...target.log.running.values()].map((e) => `${e.name} ${e.id}`);
      throw new TimeoutError(
        `drain() timed out after ${timeoutMs} ms with tasks left: ${[...look.busy, ...(mode === 'wait' && look.delayedLater.length > 0 ? [`${look.delayedLater.length} delayed`] : [])].join(', ') || 'none in Redis'}` +
          (running.length > 0 ? `; still running here: ${running.join(', ')}` : '') +
          (strangers.length > 0
            ? `; the app's worker does not consume ${strangers.map((k) => `'${k.queue}'`).join(', ')} (add to createTestApp({ queues }))`
            : target.worker.activeCount === 0 && running.length === 0 && look.busy.length > 0
              ? '; is the worker started?'
              : ''),
      );
    }
    await new Promise((r) => setTimeout(r, Math.min(POLL_MS, Math.max(1, remainingMs))));
  }
}

// `<queue>}:wait` (or active, delayed, claimed) after `<prefix>:{`.
const QUEUE_LISTS = new RegExp(`^(.*)\\}:(?:${KEY_NAMES.wait}|${KEY_NAMES.active}|${KEY_NAMES.delayed}|${KEY_NAMES.claimed})$`);

/** The queues of `prefix` other than `known` whose wait list, active set or delayed set exists (holds tasks). */
async function otherQueues(client: RedisClient, prefix: string, known: readonly QueueKeys[]): Promise<string[]> {
  const knownQueues = new Set(known.map((k) => k.queue));
  const found = new Set<string>();
  const head = `${prefix}:{`;
  await scanKeys(client, `${escapeGlob(prefix)}:{*}:*`, (_node, names) => {
    for (const key of names) {
      const m = QUEUE_LISTS.exec(key.slice(head.length));
      if (m && !knownQueues.has(m[1]!)) found.add(m[1]!);
    }
  });
  return [...found];
}

/** `queue <q>: <n> waiting` for each queue holding tasks that have not ended (at most 1,000 ids read per queue). */
async function liveTasks(client: RedisClient, queues: readonly QueueKeys[]): Promise<string[]> {
  const out: string[] = [];
  for (const k of queues) {
    const [waiting, delayed, active, claimed] = await Promise.all([
      client.lrange(k.wait, 0, 999),
      client.zrange(k.delayed, 0, 999),
      client.zrange(k.active, 0, 999),
      client.zrange(k.claimed, 0, 999),
    ]);
    const ids = [...new Set([...waiting, ...delayed, ...active, ...claimed])];
    const states = await Promise.all(ids.map((id) => client.hget(k.task(id), FIELDS.state)));
    const live = states.filter((st) => st !== null && st !== 'SUCCESS' && st !== 'FAILURE' && st !== 'REVOKED').length;
    if (live > 0) out.push(`queue ${k.queue}: ${live} waiting`);
  }
  return out;
}

/** The other queues of the prefix that hold tasks that have not ended. */
async function strangerQueues(client: RedisClient, prefix: string, known: readonly QueueKeys[]): Promise<QueueKeys[]> {
  const found: QueueKeys[] = [];
  for (const q of await otherQueues(client, prefix, known)) {
    const k = new QueueKeys(prefix, q);
    if ((await liveTasks(client, [k])).length > 0) found.push(k);
  }
  return found;
}

/** A Redis read of drain(), bounded by its deadline (plus a second). */
function withinDeadline<T>(read: Promise<T>, deadline: number, timeoutMs: number): Promise<T> {
  return bounded(read, Math.max(1, deadline - Date.now() + 1000), 'drain(): reading the queues', `drain() timed out after ${timeoutMs} ms: Redis did not answer (is it running?)`);
}

function drainSettings(options: DrainOptions): { timeoutMs: number; mode: 'wait' | 'leave' } {
  if (typeof options !== 'object' || options === null) throw new ConfigError('drain() takes an options object such as { timeout: 5 }');
  const timeoutMs = options.timeout === undefined ? 10_000 : toMillis(options.timeout, 'drain({ timeout })');
  const mode = options.delayed ?? 'wait';
  if (mode !== 'wait' && mode !== 'leave') throw new ConfigError(`drain({ delayed }) must be 'wait' or 'leave', got ${String(mode)}`);
  return { timeoutMs, mode };
}

/**
 * drain() of an inline app: resolves when no task of it is running or due (nor delayed, under
 * 'wait'), waking on each change rather than polling.
 */
export async function drainInline(engine: InlineTransport, log: TaskLog, options: DrainOptions = {}): Promise<DrainReport> {
  const { timeoutMs, mode } = drainSettings(options);
  const deadline = Date.now() + timeoutMs;
  const describeTask = (d: { id: string; queue: string; dueAt: number }, now: number): string =>
    `${engine.nameOf(d.queue, d.id)} ${d.id} in ${((d.dueAt - now) / 1000).toFixed(1)} s`;
  for (;;) {
    const now = Date.now();
    const { running, due, delayed, parked } = engine.pending();
    delayed.sort((a, b) => a.dueAt - b.dueAt);
    if (mode === 'wait') {
      const late = delayed.filter((d) => d.dueAt > deadline);
      if (late.length > 0) {
        throw new TimeoutError(
          `drain(): ${late.length} delayed task(s) are due after drain's deadline (${timeoutMs} ms), e.g. ${late.slice(0, 5).map((d) => describeTask(d, now)).join(', ')}; ` +
            "pass a longer timeout, or delayed: 'leave' to leave them",
        );
      }
    }
    if (running === 0 && due === 0 && parked.size === 0 && (mode === 'leave' || delayed.length === 0)) {
      return { ran: log.take(), delayed: mode === 'leave' ? delayed.map((d) => ({ id: d.id, queue: d.queue, dueInMs: d.dueAt - now })) : [] };
    }
    if (now >= deadline) {
      const names = [...log.running.values()].map((e) => `${e.name} ${e.id}`);
      const strangers = [...parked.keys()];
      throw new TimeoutError(
        `drain() timed out after ${timeoutMs} ms with tasks left: ${running} running${names.length > 0 ? ` (${names.join(', ')})` : ''}, ${due} due, ${mode === 'wait' ? delayed.length : 0} delayed` +
          [...parked].map(([q, n]) => `, queue ${q}: ${n} waiting`).join('') +
          (strangers.length > 0 ? `; the app's worker does not consume ${strangers.map((q) => `'${q}'`).join(', ')} (add to createTestApp({ queues }))` : ''),
      );
    }
    await engine.nextChange(deadline);
  }
}

async function lookAt(client: RedisClient, keys: readonly QueueKeys[]): Promise<Look> {
  const now = await redisNowMs(client);
  const per = await Promise.all(
    keys.map(async (k) => {
      // One MULTI per queue, so the three are one snapshot: a fetch that moves a due task from
      // the delayed set to the active set between two reads cannot hide it (a queue's keys share
      // one Cluster slot).
      const replies = await client.multi().llen(k.wait).zcard(k.active).zrange(k.delayed, 0, -1, 'WITHSCORES').zcard(k.claimed).exec();
      if (!replies) throw new RedisRefusedError(`drain(): the MULTI reading queue ${k.queue} was discarded`);
      for (const [err] of replies) if (err) throw err;
      // A claimed task is waiting too: a worker took it off the wait list to start it next.
      const waiting = (replies[0]![1] as number) + (replies[3]![1] as number);
      const active = replies[1]![1] as number;
      const delayed = replies[2]![1] as string[];
      return { k, waiting, active, delayed };
    }),
  );
  const busy: string[] = [];
  const delayedLater: DelayedTask[] = [];
  for (const { k, waiting, active, delayed } of per) {
    let due = 0;
    for (let i = 0; i + 1 < delayed.length; i += 2) {
      const dueInMs = Number(delayed[i + 1]) - now;
      if (dueInMs <= 0) due++;
      else delayedLater.push({ id: delayed[i]!, queue: k.queue, dueInMs });
    }
    const parts = [waiting > 0 ? `${waiting} waiting` : '', active > 0 ? `${active} running` : '', due > 0 ? `${due} due` : ''].filter(Boolean);
    if (parts.length > 0) busy.push(`queue ${k.queue}: ${parts.join(', ')}`);
  }
  delayedLater.sort((a, b) => a.dueInMs - b.dueInMs);
  return { busy, delayedLater };
}

async function nameOf(client: RedisClient, prefix: string, d: DelayedTask): Promise<string> {
  const name = await client.hget(new QueueKeys(prefix, d.queue).task(d.id), FIELDS.name);
  return `${name ?? '?'} ${d.id} in ${(d.dueInMs / 1000).toFixed(1)} s`;
}
