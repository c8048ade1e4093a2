// heimdall-tasks/otel against a real Redis: tasks dispatched inside an active span, run by a
// Worker in this process and by one in a worker process of its own; the spans are read from the
// SDK's in-memory exporter (or printed by the child), their names, kinds, attributes and the link
// (or, with parentFromProducer, the parent) to the producer's span checked, and the duration
// histograms read with a pull reader.
import { createInterface } from 'node:readline';
import { context, SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { MeterProvider, MetricReader, type HistogramMetricData } from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AlreadyQueuedError } from 'heimdall-tasks';
import { heimdallTracing } from 'heimdall-tasks/otel';
import { exitOf, recordEvents, useHarness, waitFor, type Harness } from '../helpers.js';
import { TracedService, type ActiveSpan } from '../fixtures/otel/services.js';
import type { PrintedSpan } from '../fixtures/otel/traced-worker.js';

/** A metric reader the test pulls from. */
class PullReader extends MetricReader {
  protected async onShutdown(): Promise<void> {}
  protected async onForceFlush(): Promise<void> {}
}

const exporter = new InMemorySpanExporter();
const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const tracer = tracerProvider.getTracer('otel-test');
const contextManager = new AsyncLocalStorageContextManager();

beforeAll(() => {
  context.setGlobalContextManager(contextManager.enable());
});
afterAll(() => {
  context.disable();
});

/** Runs `fn` inside a new active span named `name`, which ends after it; returns both. */
async function inSpan<T>(name: string, fn: () => Promise<T>): Promise<{ span: Span; value: T }> {
  return tracer.startActiveSpan(name, async (span) => {
    try {
      return { span, value: await fn() };
    } finally {
      span.end();
    }
  });
}

/** The attributes every span of an operation carries. */
function operation(op: 'send' | 'process', queue = 'default'): Record<string, unknown> {
  return { 'messaging.system': 'heimdall', 'messaging.operation.name': op, 'messaging.operation.type': op, 'messaging.destination.name': queue };
}

const ids = (s: ReadableSpan) => ({ traceId: s.spanContext().traceId, spanId: s.spanContext().spanId });

describe('heimdall-tasks/otel', () => {
  const fresh = useHarness('otel');

  it.each([
    ['linked to', false],
    ['a child of', true],
  ] as const)('a run in this process gets a process span %s the send span, which is a child of the active span', async (_how, parentFromProducer) => {
    exporter.reset();
    const h = fresh();
    const reader = new PullReader();
    const meterProvider = new MeterProvider({ readers: [reader] });
    const dispatcher = h.dispatcher();
    const worker = h.worker({ services: [new TracedService()] });
    const tracing = heimdallTracing({ dispatcher, worker, tracerProvider, meterProvider, parentFromProducer });
    try {
      const events = recordEvents(worker);
      await worker.start();
      const tasks = dispatcher.tasks(TracedService);
      const { span: request, value: sent } = await inSpan('request', async () => ({
        ok: await tasks.ok.delay(1),
        boom: await tasks.boom.delay(),
        flaky: await tasks.flaky.delay(),
      }));
      const inside = (await sent.ok.get({ timeout: 10 })) as ActiveSpan;
      await waitFor(() => events.failed.length === 1 && events.succeeded.length === 2, { what: 'the runs to end' });
      const spans = await waitFor(() => {
        const all = exporter.getFinishedSpans();
        return all.filter((s) => s.name === 'process default').length === 4 ? all : undefined;
      });

      const sends = spans.filter((s) => s.name === 'send default');
      expect(sends.map((s) => s.attributes['messaging.message.id']).sort()).toEqual([sent.ok.id, sent.boom.id, sent.flaky.id].sort());
      const sendOf = (id: string): ReadableSpan => sends.find((s) => s.attributes['messaging.message.id'] === id)!;
      for (const [name, result] of [
        ['Traced.ok', sent.ok],
        ['Traced.boom', sent.boom],
        ['Traced.flaky', sent.flaky],
      ] as const) {
        const send = sendOf(result.id);
        expect(send.kind).toBe(SpanKind.PRODUCER);
        expect(send.parentSpanContext?.spanId).toBe(request.spanContext().spanId);
        expect(send.spanContext().traceId).toBe(request.spanContext().traceId);
        expect(send.attributes).toEqual({ ...operation('send'), 'messaging.message.id': result.id, 'heimdall.task.name': name });
        expect(send.status.code).toBe(SpanStatusCode.UNSET);
        // The send span's context travels in the task record, as a W3C traceparent.
        expect(await h.field(result.id, 'traceParent')).toBe(`00-${send.spanContext().traceId}-${send.spanContext().spanId}-01`);
      }

      const processes = spans.filter((s) => s.name === 'process default');
      const processOf = (id: string, attempt = 1): ReadableSpan =>
        processes.find((s) => s.attributes['messaging.message.id'] === id && s.attributes['heimdall.task.attempt'] === attempt)!;
      for (const p of processes) {
        const send = sendOf(String(p.attributes['messaging.message.id']));
        expect(p.kind).toBe(SpanKind.CONSUMER);
        if (parentFromProducer) {
          expect(p.parentSpanContext?.spanId).toBe(send.spanContext().spanId);
          expect(p.spanContext().traceId).toBe(send.spanContext().traceId);
          expect(p.links).toEqual([]);
        } else {
          // A trace of its own, linked to the send.
          expect(p.parentSpanContext).toBeUndefined();
          expect(p.spanContext().traceId).not.toBe(send.spanContext().traceId);
          expect(p.links.map((l) => ({ traceId: l.context.traceId, spanId: l.context.spanId }))).toEqual([ids(send)]);
        }
      }
      const ok = processOf(sent.ok.id);
      expect(ok.attributes).toEqual({
        ...operation('process'),
        'messaging.message.id': sent.ok.id,
        'heimdall.task.name': 'Traced.ok',
        'heimdall.task.attempt': 1,
      });
      expect(ok.status.code).toBe(SpanStatusCode.UNSET);
      // The task ran inside its process span.
      expect(inside).toEqual(ids(ok));

      const boom = processOf(sent.boom.id);
      expect(boom.status).toEqual({ code: SpanStatusCode.ERROR, message: 'TypeError: boom' });
      expect(boom.attributes['error.type']).toBe('TypeError');
      const exception = boom.events.find((e) => e.name === 'exception');
      expect(exception?.attributes?.['exception.type']).toBe('TypeError');
      expect(exception?.attributes?.['exception.message']).toBe('boom');
      expect(String(exception?.attributes?.['exception.stacktrace'])).toContain('TracedService.boom');

      // Each attempt of a retried task is a process span of its own, tied to the one send.
      const first = processOf(sent.flaky.id, 1);
      expect(first.status.code).toBe(SpanStatusCode.ERROR);
      expect(first.attributes['error.type']).toBe('RangeError');
      expect(first.attributes['heimdall.task.retry_delay_ms']).toBe(10);
      expect(processOf(sent.flaky.id, 2).status.code).toBe(SpanStatusCode.UNSET);

      // The messaging duration histograms, in seconds.
      const { resourceMetrics } = await reader.collect();
      const histograms = resourceMetrics.scopeMetrics.flatMap((s) => s.metrics) as HistogramMetricData[];
      const points = (name: string) => histograms.find((m) => m.descriptor.name === name)?.dataPoints ?? [];
      expect(histograms.find((m) => m.descriptor.name === 'messaging.process.duration')?.descriptor.unit).toBe('s');
      const sendPoints = points('messaging.client.operation.duration');
      expect(sendPoints.map((p) => [p.attributes, p.value.count])).toEqual([[operation('send'), 3]]);
      const processPoints = points('messaging.process.duration').map((p) => [p.attributes['error.type'] ?? 'ok', p.value.count]);
      expect(processPoints.sort()).toEqual([
        ['RangeError', 1],
        ['TypeError', 1],
        ['ok', 2],
      ]);
      expect(points('messaging.process.duration')[0]?.attributes).toMatchObject(operation('process'));

      // Detached: later sends and runs make no span.
      tracing.unregister();
      exporter.reset();
      await (await tasks.ok.delay(2)).get({ timeout: 10 });
      expect(exporter.getFinishedSpans()).toEqual([]);
      expect(await h.field((await tasks.ok.delay(3)).id, 'traceParent')).toBeNull();
    } finally {
      tracing.unregister();
      await meterProvider.shutdown();
    }
  });

  it.each([
    ['linked to', false],
    ['a child of', true],
  ] as const)('a run in a worker process of its own gets a process span %s the send span of this process', async (_how, parentFromProducer) => {
    exporter.reset();
    const h = fresh();
    const dispatcher = h.dispatcher();
    const tracing = heimdallTracing({ dispatcher, tracerProvider });
    try {
      const child = h.spawnTs('test/fixtures/otel/traced-worker.ts', { PARENT: parentFromProducer ? '1' : '0' });
      const exited = exitOf(child);
      const printed: PrintedSpan[] = [];
      let ready = false;
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line === 'ready') ready = true;
        else if (line.startsWith('span ')) printed.push(JSON.parse(line.slice(5)) as PrintedSpan);
      });
      await waitFor(() => ready, { what: 'the worker process to start', timeout: 30_000 });

      const { span: request, value: handle } = await inSpan('request', () => dispatcher.tasks(TracedService).ok.delay(7));
      const inside = (await handle.get({ timeout: 15 })) as ActiveSpan;
      const processSpan = await waitFor(() => printed.find((s) => s.name === 'process default'), { what: "the child's process span" });
      const send = exporter.getFinishedSpans().find((s) => s.name === 'send default')!;
      expect(send.parentSpanContext?.spanId).toBe(request.spanContext().spanId);

      expect(processSpan.kind).toBe(SpanKind.CONSUMER);
      expect(processSpan.attributes).toEqual({ ...operation('process'), 'messaging.message.id': handle.id, 'heimdall.task.name': 'Traced.ok', 'heimdall.task.attempt': 1 });
      expect(inside).toEqual({ traceId: processSpan.traceId, spanId: processSpan.spanId });
      if (parentFromProducer) {
        expect(processSpan.parentSpanId).toBe(send.spanContext().spanId);
        expect(processSpan.traceId).toBe(request.spanContext().traceId);
        expect(processSpan.links).toEqual([]);
      } else {
        expect(processSpan.parentSpanId).toBeUndefined();
        expect(processSpan.traceId).not.toBe(request.spanContext().traceId);
        expect(processSpan.links).toEqual([ids(send)]);
      }

      child.kill('SIGTERM');
      const { code, stderr } = await exited;
      expect(code, stderr).toBe(0);
    } finally {
      tracing.unregister();
    }
  });

  it('marks a deduplicated send, ends a refused one with its error, and carries nothing when no span records', async () => {
    exporter.reset();
    const h: Harness = fresh();
    const dispatcher = h.dispatcher();
    const tracing = heimdallTracing({ dispatcher, tracerProvider });
    try {
      const tasks = dispatcher.tasks(TracedService);
      // No worker: the first of each key stays queued, holding its lock.
      const holder = await tasks.held.delay('k');
      const duplicate = await tasks.held.delay('k');
      expect(duplicate.duplicate).toBe(true);
      await tasks.strict.delay('k');
      await expect(tasks.strict.delay('k')).rejects.toBeInstanceOf(AlreadyQueuedError);

      const sends = exporter.getFinishedSpans().filter((s) => s.name === 'send default');
      expect(sends).toHaveLength(4);
      const [, deduplicated, , refused] = sends;
      expect(deduplicated!.attributes['heimdall.task.duplicate']).toBe(true);
      expect(deduplicated!.attributes['messaging.message.id']).toBe(holder.id);
      expect(deduplicated!.status.code).toBe(SpanStatusCode.UNSET);
      expect(refused!.status.code).toBe(SpanStatusCode.ERROR);
      expect(refused!.attributes['error.type']).toBe('AlreadyQueuedError');
      expect(refused!.events.map((e) => [e.name, e.attributes?.['exception.type']])).toEqual([['exception', 'AlreadyQueuedError']]);
    } finally {
      tracing.unregister();
    }

    // The API's no-op provider (no SDK registered): spans do not record and no context is carried.
    const untraced = heimdallTracing({ dispatcher, tracerProvider: trace.getTracerProvider() });
    try {
      const handle = await dispatcher.send('Traced.ok', [1]);
      expect(await h.field(handle.id, 'traceParent')).toBeNull();
    } finally {
      untraced.unregister();
    }
  });
});
