import { Counter, Gauge, Histogram, register as defaultRegistry, type Registry } from 'prom-client';
import type { Dispatcher } from '../core/producer/dispatcher.js';
import type { Inspector, QueueStats } from '../core/inspect/inspector.js';
import { instrument, listOf, type InstrumentationHooks, type RunInfo } from '../core/instrumentation.js';
import { FIELDS } from '../core/protocol/task-fields.js';
import { ConfigError } from '../core/errors.js';
import { bounded } from '../core/protocol/bounded.js';
import type { TaskEvent, Worker } from '../core/worker/worker.js';
import type { RevokeReason } from '../core/protocol/task-record.js';

/** Options of `heimdallMetrics()`. Each source is optional: give the ones this process has. */
export interface HeimdallMetricsOptions {
  /** Workers whose events are counted (tasks ended, run and wait durations, rate-limited). Default: none. */
  worker?: Worker | readonly Worker[];
  /** The dispatcher whose unique-lock conflicts are counted. Default: none. */
  dispatcher?: Dispatcher;
  /** Reads the queue gauges (depth, oldest waiting age, workers) from Redis at each scrape. Default: none (no gauges). */
  inspector?: Inspector;
  /**
   * The queues the gauges describe. Default: every queue `inspector.queueNames()` finds at each
   * scrape (a `SCAN` of the prefix: give the list on a large Redis).
   */
  queues?: readonly string[];
  /** Where the metrics are registered. Default: prom-client's global `register`. */
  registry?: Registry;
  /** Longest a scrape waits for Redis, in milliseconds; past it the gauges are left out of that scrape. Default: 5000. */
  scrapeTimeoutMs?: number;
  /** Buckets of the run-duration histogram, in seconds. Default: 0.005 s to 300 s. */
  runBuckets?: readonly number[];
  /** Buckets of the wait-duration histogram, in seconds. Default: 0.005 s to 3600 s. */
  waitBuckets?: readonly number[];
}

/** What `heimdallMetrics()` returns. */
export interface HeimdallMetrics {
  /** The registry the metrics are in. */
  readonly registry: Registry;
  /** Stops counting (event listeners and hooks removed) and removes the metrics from the registry. Idempotent. */
  unregister(): void;
}

/** The metric names, for dashboards and alert rules. */
export const METRIC_NAMES = {
  tasks: 'heimdall_tasks_total',
  runDuration: 'heimdall_task_run_duration_seconds',
  waitDuration: 'heimdall_task_wait_duration_seconds',
  rateLimited: 'heimdall_tasks_rate_limited_total',
  lockConflicts: 'heimdall_lock_conflicts_total',
  queueDepth: 'heimdall_queue_depth',
  oldestWaiting: 'heimdall_queue_oldest_waiting_seconds',
  workers: 'heimdall_workers',
  scrapeErrors: 'heimdall_metrics_scrape_errors_total',
} as const;

const RUN_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const WAIT_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600];
const DEPTH_STATES = ['waiting', 'delayed', 'running', 'dead'] as const;
/** What the metrics read of a `succeeded`, `failed` or `retried` event. */
type Ended = Pick<TaskEvent, 'queue' | 'name' | 'attempt'> & { runtimeMs: number };
/** The `outcome` of a task that ended REVOKED, by its reason. */
const REVOKED_OUTCOME: Record<RevokeReason, string> = {
  revoked: 'revoked',
  duplicate: 'duplicate',
  expired: 'expired',
  purged: 'purged',
  replaced: 'replaced',
  debounced: 'debounced',
};

/**
 * Prometheus metrics of heimdall-tasks, in `registry`: counters and histograms from the events of
 * the given workers and dispatcher (in this process), gauges read from Redis through the
 * inspector when the registry is scraped. Labels are queue, task name, outcome or state: never a
 * task id.
 */
export function heimdallMetrics(options: HeimdallMetricsOptions = {}): HeimdallMetrics {
  const registry = options.registry ?? defaultRegistry;
  const timeoutMs = options.scrapeTimeoutMs ?? 5000;
  if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) throw new ConfigError(`scrapeTimeoutMs must be a number of ms > 0, got ${String(timeoutMs)}`);
  const registers = [registry];
  const undo: (() => void)[] = [];

  const tasks = new Counter({
    name: METRIC_NAMES.tasks,
    help: 'Task ends the workers saw, by outcome: succeeded, failed, retried, revoked, duplicate or expired.',
    labelNames: ['queue', 'task', 'outcome'],
    registers,
  });
  const runDuration = new Histogram({
    name: METRIC_NAMES.runDuration,
    help: 'Run time of a task, from the call of its method to its end, in seconds.',
    labelNames: ['queue', 'task', 'outcome'],
    buckets: [...(options.runBuckets ?? RUN_BUCKETS)],
    registers,
  });
  const waitDuration = new Histogram({
    name: METRIC_NAMES.waitDuration,
    help: 'Time a task waited to start, from when it was sent or became due to its start (Redis clock), in seconds.',
    labelNames: ['queue', 'task'],
    buckets: [...(options.waitBuckets ?? WAIT_BUCKETS)],
    registers,
  });
  const rateLimited = new Counter({
    name: METRIC_NAMES.rateLimited,
    help: 'Starts put off because the task was over its rate limit.',
    labelNames: ['queue', 'task'],
    registers,
  });
  const lockConflicts = new Counter({
    name: METRIC_NAMES.lockConflicts,
    help: 'Unique tasks not sent because another task held their lock: deduplicated (the holder returned) or refused (AlreadyQueuedError).',
    labelNames: ['queue', 'task', 'result'],
    registers,
  });
  undo.push(() => {
    for (const name of [METRIC_NAMES.tasks, METRIC_NAMES.runDuration, METRIC_NAMES.waitDuration, METRIC_NAMES.rateLimited, METRIC_NAMES.lockConflicts]) {
      registry.removeSingleMetric(name);
    }
  });

  for (const worker of listOf(options.worker)) {
    const listeners = {
      succeeded: (e: Ended) => ended(e, 'succeeded'),
      failed: (e: Ended) => ended(e, 'failed'),
      retried: (e: Ended) => ended(e, 'retried'),
      revoked: (e: { queue: string; name: string; reason: RevokeReason }) => tasks.inc({ queue: e.queue, task: e.name, outcome: REVOKED_OUTCOME[e.reason] ?? 'revoked' }),
      rateLimited: (e: { queue: string; name: string }) => rateLimited.inc({ queue: e.queue, task: e.name }),
    };
    worker.on('succeeded', listeners.succeeded).on('failed', listeners.failed).on('retried', listeners.retried);
    worker.on('revoked', listeners.revoked).on('rateLimited', listeners.rateLimited);
    const detach = instrument(worker, waitHook((info, seconds) => waitDuration.observe({ queue: info.queue, task: info.name }, seconds)));
    undo.push(() => {
      worker.off('succeeded', listeners.succeeded).off('failed', listeners.failed).off('retried', listeners.retried);
      worker.off('revoked', listeners.revoked).off('rateLimited', listeners.rateLimited);
      detach();
    });
  }

  function ended(e: Ended, outcome: string): void {
    const labels = { queue: e.queue, task: e.name, outcome };
    tasks.inc(labels);
    // Attempt 0: a task no worker runs, failed with UnknownTaskError without running.
    if (e.attempt > 0) runDuration.observe(labels, e.runtimeMs / 1000);
  }

  if (options.dispatcher) {
    undo.push(
      instrument(options.dispatcher, {
        send: (info, send) =>
          send().then(
            (result) => {
              if (result.duplicate) lockConflicts.inc({ queue: info.queue, task: info.name, result: 'deduplicated' });
              return result;
            },
            (err: unknown) => {
              if ((err as { code?: unknown } | null)?.code === 'HEIMDALL_ALREADY_QUEUED') {
                lockConflicts.inc({ queue: info.queue, task: info.name, result: 'refused' });
              }
              throw err;
            },
          ),
      }),
    );
  }

  if (options.inspector) undo.push(queueGauges(options.inspector, options.queues, registry, timeoutMs));

  let done = false;
  return {
    registry,
    unregister: () => {
      if (done) return;
      done = true;
      for (const u of undo.reverse()) u();
    },
  };
}

/** A run hook that reports how long each run waited: its start minus the later of its creation and due time, both on the Redis clock. */
function waitHook(observe: (info: RunInfo, seconds: number) => void): InstrumentationHooks {
  return {
    recordFields: [FIELDS.created, FIELDS.due, FIELDS.startedAt],
    run: (info, run) => {
      const { record } = info;
      const started = Number(record[FIELDS.startedAt]);
      const ready = Math.max(Number(record[FIELDS.created]), Number(record[FIELDS.due] ?? 0));
      if (Number.isFinite(started) && Number.isFinite(ready)) observe(info, Math.max(0, started - ready) / 1000);
      return run();
    },
  };
}

/** The gauges read at scrape time: one `inspector.queues()` call per scrape, shared by the gauges. Returns their removal. */
function queueGauges(inspector: Inspector, queues: readonly string[] | undefined, registry: Registry, timeoutMs: number): () => void {
  const registers = [registry];
  let pending: Promise<QueueStats[] | undefined> | undefined;
  const scrapeErrors = new Counter({
    name: METRIC_NAMES.scrapeErrors,
    help: 'Scrapes whose queue gauges could not be read from Redis in time (the gauges were left out).',
    registers,
    // Collected with the gauges, after their read: a failure counts in the scrape it spoiled.
    async collect() {
      await read();
    },
  });
  // The gauges of one scrape are collected together (prom-client collects every metric at once),
  // so they share the read in flight.
  const read = (): Promise<QueueStats[] | undefined> => {
    pending ??= bounded(inspector.queues(queues), timeoutMs, 'reading the queue gauges')
      .catch(() => {
        scrapeErrors.inc();
        return undefined;
      })
      .finally(() => (pending = undefined));
    return pending;
  };
  const gauge = (name: string, help: string, labelNames: string[], fill: (g: Gauge<string>, s: QueueStats) => void): Gauge<string> =>
    new Gauge({
      name,
      help,
      labelNames,
      registers,
      async collect() {
        const stats = await read();
        this.reset();
        for (const s of stats ?? []) fill(this, s);
      },
    });
  gauge(METRIC_NAMES.queueDepth, 'Tasks in a queue by state: waiting, delayed, running, dead (dead letters kept).', ['queue', 'state'], (g, s) => {
    for (const state of DEPTH_STATES) g.set({ queue: s.queue, state }, s[state]);
  });
  gauge(METRIC_NAMES.oldestWaiting, 'Age of the oldest task waiting to start, in seconds (0 when none waits).', ['queue'], (g, s) => {
    g.set({ queue: s.queue }, (s.oldestWaitingMs ?? 0) / 1000);
  });
  gauge(METRIC_NAMES.workers, 'Live workers registered on the queue.', ['queue'], (g, s) => g.set({ queue: s.queue }, s.workers));
  return () => {
    for (const name of [METRIC_NAMES.queueDepth, METRIC_NAMES.oldestWaiting, METRIC_NAMES.workers, METRIC_NAMES.scrapeErrors]) registry.removeSingleMetric(name);
  };
}
