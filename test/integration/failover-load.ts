// Shared by the failover tests (failover-cluster.test.ts, failover-sentinel.test.ts): a task that
// counts its runs per id, dispatch loops that record what each dispatch came to, and the final
// accounting of every task from the records Redis holds after the failover.
import { Task, currentTask, RedisUnavailableError, type Dispatcher, type Worker } from 'heimdall-tasks';
import type { Cluster, Redis } from 'ioredis';
import { QueueKeys } from '../../src/core/protocol/queue-keys.js';
import { FIELDS } from '../../src/core/protocol/task-fields.js';
import { waitFor } from '../helpers.js';
import { vi } from 'vitest';
import { QueueRunner } from '../../src/core/worker/queue-runner.js';

/** Runs per task id, counted inside the task body: what the application would see. */
export const runs = new Map<string, number>();

export class FailoverWork {
  @Task()
  async work(n: number): Promise<number> {
    const { id } = currentTask();
    runs.set(id, (runs.get(id) ?? 0) + 1);
    // The work itself: long enough that a worker at concurrency 20 has tasks running when the
    // master dies, short enough for several hundred to finish within the test.
    await new Promise((r) => setTimeout(r, 40));
    return n;
  }
}

/** One dispatch: accepted (Redis answered the enqueue) or failed, and when (ms since the epoch). */
export interface Dispatched {
  id: string;
  queue: string;
  /** When the dispatch was answered (ms, this process's clock). */
  at: number;
  /** When it was sent: the enqueue ran on Redis between sentAt and at. */
  sentAt: number;
  accepted: boolean;
  error?: unknown;
}

/**
 * Sends tasks to `queue` one after another (each awaited, as a request handler would), with our
 * own ids so a failed dispatch can be looked up afterwards, until `more()` says stop. Returns
 * the record of every dispatch.
 */
export async function dispatchLoop(dispatcher: Dispatcher, queue: string, label: string, more: (sent: number) => boolean, into: Dispatched[]): Promise<void> {
  for (let n = 0; more(n); n++) {
    const id = `${label}-${n}`;
    const sentAt = Date.now();
    try {
      await dispatcher.tasks(FailoverWork).work.applyAsync([n], { queue, taskId: id });
      into.push({ id, queue, at: Date.now(), sentAt, accepted: true });
    } catch (error) {
      into.push({ id, queue, at: Date.now(), sentAt, accepted: false, error });
    }
    // A request every few ms rather than a tight loop: the sends span the failover instead of
    // all landing before the kill.
    await new Promise((r) => setTimeout(r, 4));
  }
}

/** Waits until the queues have nothing waiting, delayed or leased, and the worker runs nothing. */
export async function settled(admin: Redis | Cluster, prefix: string, queues: readonly string[], worker: Worker, timeout: number): Promise<void> {
  await waitFor(
    async () => {
      if (worker.activeCount > 0) return false;
      for (const q of queues) {
        const k = new QueueKeys(prefix, q);
        const [wait, delayed, active] = await Promise.all([admin.llen(k.wait), admin.zcard(k.delayed), admin.zcard(k.active)]);
        if (wait + delayed + active > 0) return false;
      }
      return true;
    },
    { timeout, interval: 200, what: `queues ${queues.join(', ')} to have nothing waiting, delayed or running` },
  );
}

/** What became of every dispatch, from the records in Redis and the runs counted in the task. */
export interface Accounting {
  accepted: number;
  /** SUCCESS, run once. */
  once: number;
  /**
   * SUCCESS, run more than once: id, run count, when accepted, and why as the record tells:
   * 'recovered' (recoveries counted: the new master had it STARTED under a lease that lapsed),
   * else 'put back' (the new master had it waiting, its start not on the replica; or had it
   * leased to this worker, its end not on the replica, and the worker's reclaim after the lost
   * connection handed it back). Either way the first run's end was refused as stale.
   */
  repeated: { id: string; runs: number; at: number; why: 'recovered' | 'put back' }[];
  /** Accepted, but no record in Redis afterwards (the write was not on the replica): id, runs, when accepted. */
  lost: { id: string; runs: number; at: number; sentAt: number }[];
  /** Accepted, a record, but not SUCCESS once the queues are empty: id and state. */
  stuck: { id: string; state: string }[];
  failedDispatches: number;
  /** The error class names of the failed dispatches, with counts. */
  dispatchErrors: Record<string, number>;
  /** Failed dispatches whose task is in Redis anyway (enqueued, the reply lost): id and state. */
  failedButEnqueued: { id: string; state: string; runs: number }[];
}

/** Reads the final state of every dispatched task. */
export async function account(admin: Redis | Cluster, prefix: string, sent: readonly Dispatched[]): Promise<Accounting> {
  const records = await Promise.all(sent.map((d) => admin.hmget(new QueueKeys(prefix, d.queue).task(d.id), FIELDS.state, FIELDS.recoveries)));
  const a: Accounting = { accepted: 0, once: 0, repeated: [], lost: [], stuck: [], failedDispatches: 0, dispatchErrors: {}, failedButEnqueued: [] };
  sent.forEach((d, i) => {
    const state = records[i]?.[0] ?? null;
    const recoveries = Number(records[i]?.[1] ?? 0);
    const ran = runs.get(d.id) ?? 0;
    if (!d.accepted) {
      a.failedDispatches++;
      const name = d.error instanceof Error ? d.error.constructor.name : typeof d.error;
      a.dispatchErrors[name] = (a.dispatchErrors[name] ?? 0) + 1;
      if (state !== null) a.failedButEnqueued.push({ id: d.id, state, runs: ran });
      return;
    }
    a.accepted++;
    if (state === null) a.lost.push({ id: d.id, runs: ran, at: d.at, sentAt: d.sentAt });
    else if (state !== 'SUCCESS') a.stuck.push({ id: d.id, state });
    else if (ran > 1) a.repeated.push({ id: d.id, runs: ran, at: d.at, why: recoveries > 0 ? 'recovered' : 'put back' });
    else a.once++;
  });
  return a;
}

/** Every failed dispatch's error, for an assertion that they are all RedisUnavailableError. */
export function dispatchFailures(sent: readonly Dispatched[]): unknown[] {
  return sent.filter((d) => !d.accepted).map((d) => d.error);
}

/** True when every failure is a RedisUnavailableError (the class the docs promise for an unreachable Redis). */
export function allUnavailable(errors: readonly unknown[]): boolean {
  return errors.every((e) => e instanceof RedisUnavailableError);
}

/** The worker's error events, grouped by their first 90 characters, for the report. */
export function errorSummary(errors: readonly Error[]): string {
  const counts = new Map<string, number>();
  for (const e of errors) {
    const key = `${e.name}: ${e.message}`.slice(0, 90);
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([k, n]) => `${n}x ${k}`).join(' | ') || 'none';
}

/**
 * Counts the queue runners' reconnect hooks (QueueRunner.reconnected) and the reclaims they lead
 * to, with the time of each reclaim, to show a worker redid them after a failover. `restore()`
 * puts QueueRunner back.
 */
export function watchReclaims(): { hooks(): number; reclaimed: number[]; restore(): void } {
  const reconnected = vi.spyOn(QueueRunner.prototype, 'reconnected');
  const reclaimed: number[] = [];
  const proto = QueueRunner.prototype as unknown as { reclaim(fin: unknown[]): Promise<void> };
  const originalReclaim = proto.reclaim;
  proto.reclaim = async function (this: unknown, fin: unknown[]): Promise<void> {
    await originalReclaim.call(this, fin);
    reclaimed.push(Date.now());
  };
  return {
    hooks: () => reconnected.mock.calls.length,
    reclaimed,
    restore: () => {
      reconnected.mockRestore();
      proto.reclaim = originalReclaim;
    },
  };
}

/** A dispatchLoop `more`: goes on (up to 2,000 sends) until `promoted()`, then `after` sends more. */
export function untilPromotedThen(promoted: () => boolean, after = 50): (n: number) => boolean {
  let from = -1;
  return (n) => {
    if (!promoted()) return n < 2000;
    if (from < 0) from = n;
    return n < from + after;
  };
}

/** The workers' answers to a ping on `queues`, asked again (1 s each) until one answers, for up to 15 s; [] if none did. */
export async function pingUntilAnswered(dispatcher: Dispatcher, queues: string[]): Promise<Awaited<ReturnType<Dispatcher['ping']>>> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const pong = await dispatcher.ping({ queues, timeout: '1s' });
    if (pong.length > 0 || Date.now() > deadline) return pong;
  }
}
