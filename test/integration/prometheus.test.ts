// heimdall-tasks/prometheus against a real Redis and a real Worker: tasks that succeed, fail,
// retry, meet a held unique lock (deduplicated and refused) and a full rate window; the exposition
// text of the registry is read back sample by sample, and no label carries a task id.
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { AlreadyQueuedError, currentTask, Inspector, Task, type TaskResult } from 'heimdall-tasks';
import { heimdallMetrics, METRIC_NAMES } from 'heimdall-tasks/prometheus';
import { gate, newPrefix, nextEvent, recordEvents, useHarness, waitFor, type Gate } from '../helpers.js';

let hold: Gate = gate();

class MeteredService {
  @Task({ name: 'Metered.ok' })
  async ok(n: number): Promise<number> {
    return n;
  }

  @Task({ name: 'Metered.boom' })
  async boom(): Promise<void> {
    throw new TypeError('boom');
  }

  @Task({ name: 'Metered.flaky', retries: { max: 1, backoff: '20ms', jitter: false } })
  async flaky(): Promise<string> {
    if (currentTask().attempt === 1) throw new Error('first attempt fails');
    return 'second';
  }

  @Task({ name: 'Metered.held', unique: true })
  async held(_key: string): Promise<void> {
    await hold.promise;
  }

  @Task({ name: 'Metered.strict', unique: true, uniqueRaises: true })
  async strict(_key: string): Promise<void> {
    await hold.promise;
  }

  @Task({ name: 'Metered.later' })
  async later(): Promise<void> {}

  @Task({ name: 'Metered.limited', rateLimit: [1, 60] })
  async limited(_n: number): Promise<void> {}
}

/** One sample of the exposition text. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

/** The value of the one sample named `name` whose labels are exactly `labels`; undefined when there is none. */
function value(samples: Sample[], name: string, labels: Record<string, string>): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort());
  const found = samples.filter((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want);
  expect(found.length, `${name}${want}: at most one sample`).toBeLessThan(2);
  return found[0]?.value;
}

describe('heimdall-tasks/prometheus', () => {
  const fresh = useHarness('prom');

  it('counts ends, durations, rate limits and lock conflicts from events, and reads queue gauges at scrape time', async () => {
    hold = gate();
    const h = fresh();
    const registry = new Registry();
    const dispatcher = h.dispatcher();
    const worker = h.worker({ services: [new MeteredService()], concurrency: 6 });
    const inspector = new Inspector({ connection: h.connection(), prefix: h.prefix });
    const metrics = heimdallMetrics({ worker, dispatcher, inspector, registry, queues: ['default', 'idle'] });
    try {
      const events = recordEvents(worker);
      await worker.start();
      const tasks = dispatcher.tasks(MeteredService);
      const sent: TaskResult<unknown>[] = [];

      const heldStarted = nextEvent(worker, 'started', (e) => e.name === 'Metered.held');
      const strictStarted = nextEvent(worker, 'started', (e) => e.name === 'Metered.strict');
      sent.push(await tasks.held.delay('k'), await tasks.strict.delay('k'));
      await Promise.all([heldStarted, strictStarted]);
      const duplicate = await tasks.held.delay('k');
      expect(duplicate.duplicate).toBe(true);
      await expect(tasks.strict.delay('k')).rejects.toBeInstanceOf(AlreadyQueuedError);

      const limited = nextEvent(worker, 'rateLimited', (e) => e.name === 'Metered.limited');
      sent.push(await tasks.ok.delay(1), await tasks.ok.delay(2), await tasks.boom.delay(), await tasks.flaky.delay());
      sent.push(await tasks.limited.delay(1), await tasks.limited.delay(2));
      sent.push(await tasks.later.applyAsync([], { countdown: 2 }));
      // Not started before its expiry: ended REVOKED 'expired' at the fetch, never run.
      const expired = nextEvent(worker, 'revoked', (e) => e.reason === 'expired');
      sent.push(await tasks.ok.applyAsync([5], { expires: new Date(Date.now() - 1000) }));
      await expired;
      // Nobody consumes 'idle': its task waits, and its age grows.
      sent.push(await dispatcher.send('Metered.ok', [3], { queue: 'idle' }));
      await limited;
      await waitFor(() => events.succeeded.length === 5 && events.failed.length === 1 && events.retried.length === 1, { what: 'the ends' });

      const text = await waitFor(
        async () => {
          const t = await registry.metrics();
          return (value(parse(t), METRIC_NAMES.oldestWaiting, { queue: 'idle' }) ?? 0) > 0 ? t : undefined;
        },
        { what: 'the idle task to have waited a little' },
      );
      const samples = parse(text);
      const q = { queue: 'default' };
      expect(value(samples, METRIC_NAMES.tasks, { ...q, task: 'Metered.ok', outcome: 'succeeded' })).toBe(2);
      expect(value(samples, METRIC_NAMES.tasks, { ...q, task: 'Metered.boom', outcome: 'failed' })).toBe(1);
      expect(value(samples, METRIC_NAMES.tasks, { ...q, task: 'Metered.flaky', outcome: 'retried' })).toBe(1);
      expect(value(samples, METRIC_NAMES.tasks, { ...q, task: 'Metered.flaky', outcome: 'succeeded' })).toBe(1);
      expect(value(samples, METRIC_NAMES.tasks, { ...q, task: 'Metered.limited', outcome: 'succeeded' })).toBe(1);
      expect(value(samples, METRIC_NAMES.tasks, { ...q, task: 'Metered.ok', outcome: 'expired' })).toBe(1);
      expect(value(samples, `${METRIC_NAMES.runDuration}_count`, { ...q, task: 'Metered.ok', outcome: 'succeeded' })).toBe(2);
      expect(value(samples, `${METRIC_NAMES.runDuration}_count`, { ...q, task: 'Metered.boom', outcome: 'failed' })).toBe(1);
      expect(value(samples, `${METRIC_NAMES.runDuration}_bucket`, { ...q, task: 'Metered.ok', outcome: 'succeeded', le: '+Inf' })).toBe(2);
      // Every start waited: the two of ok, both attempts of flaky, the one held and strict run.
      expect(value(samples, `${METRIC_NAMES.waitDuration}_count`, { ...q, task: 'Metered.ok' })).toBe(2);
      expect(value(samples, `${METRIC_NAMES.waitDuration}_count`, { ...q, task: 'Metered.flaky' })).toBe(2);
      // The retry was due 20 ms after the failure: its wait counts from then, not from the send.
      expect(value(samples, `${METRIC_NAMES.waitDuration}_sum`, { ...q, task: 'Metered.flaky' })).toBeLessThan(5);
      expect(value(samples, `${METRIC_NAMES.waitDuration}_count`, { ...q, task: 'Metered.held' })).toBe(1);
      // A countdown's wait counts from when it was due, 2 s after the send.
      expect(value(samples, `${METRIC_NAMES.waitDuration}_count`, { ...q, task: 'Metered.later' })).toBe(1);
      expect(value(samples, `${METRIC_NAMES.waitDuration}_sum`, { ...q, task: 'Metered.later' })).toBeLessThan(1.5);
      expect(value(samples, METRIC_NAMES.rateLimited, { ...q, task: 'Metered.limited' })).toBe(1);
      expect(samples.filter((s) => s.name === METRIC_NAMES.lockConflicts)).toEqual([
        { name: METRIC_NAMES.lockConflicts, labels: { ...q, task: 'Metered.held', result: 'deduplicated' }, value: 1 },
        { name: METRIC_NAMES.lockConflicts, labels: { ...q, task: 'Metered.strict', result: 'refused' }, value: 1 },
      ]);
      // Gauges, read from Redis during the scrape: held and strict run, the limited one waits in the delayed set.
      expect(value(samples, METRIC_NAMES.queueDepth, { ...q, state: 'running' })).toBe(2);
      expect(value(samples, METRIC_NAMES.queueDepth, { ...q, state: 'delayed' })).toBe(1);
      expect(value(samples, METRIC_NAMES.queueDepth, { ...q, state: 'waiting' })).toBe(0);
      expect(value(samples, METRIC_NAMES.queueDepth, { ...q, state: 'dead' })).toBe(0);
      expect(value(samples, METRIC_NAMES.queueDepth, { queue: 'idle', state: 'waiting' })).toBe(1);
      expect(value(samples, METRIC_NAMES.oldestWaiting, q)).toBe(0);
      expect(value(samples, METRIC_NAMES.oldestWaiting, { queue: 'idle' })).toBeLessThan(60);
      expect(value(samples, METRIC_NAMES.workers, q)).toBe(1);
      expect(value(samples, METRIC_NAMES.workers, { queue: 'idle' })).toBe(0);
      expect(value(samples, METRIC_NAMES.scrapeErrors, {})).toBe(0);

      // Never a task id as a label value (nor any label but these).
      const ids = new Set(sent.map((r) => r.id));
      expect(ids.size).toBe(sent.length);
      for (const s of samples) {
        for (const [label, v] of Object.entries(s.labels)) {
          expect(['queue', 'task', 'outcome', 'result', 'state', 'le']).toContain(label);
          for (const id of ids) expect(v, `${s.name} ${label}`).not.toContain(id);
        }
      }

      metrics.unregister();
      metrics.unregister();
      expect(await registry.metrics()).not.toMatch(/heimdall_/);
      // Nothing is counted any more: the listeners and hooks are gone.
      await tasks.ok.delay(4);
      await nextEvent(worker, 'succeeded', (e) => e.args[0] === 4);
      expect(registry.getSingleMetric(METRIC_NAMES.tasks)).toBeUndefined();
    } finally {
      metrics.unregister();
      hold.open();
      await inspector.close();
    }
  });

  it('leaves the gauges out of a scrape that Redis does not answer in time, and counts it', async () => {
    // A server that accepts connections and never answers.
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const { port } = silent.address() as AddressInfo;
    const registry = new Registry();
    const inspector = new Inspector({ connection: { host: '127.0.0.1', port, maxRetriesPerRequest: null }, prefix: newPrefix('prom') });
    const metrics = heimdallMetrics({ inspector, registry, queues: ['default'], scrapeTimeoutMs: 200 });
    try {
      const samples = parse(await registry.metrics());
      expect(samples.filter((s) => s.name === METRIC_NAMES.workers || s.name === METRIC_NAMES.queueDepth)).toEqual([]);
      expect(value(samples, METRIC_NAMES.scrapeErrors, {})).toBe(1);
    } finally {
      metrics.unregister();
      await inspector.close();
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});
