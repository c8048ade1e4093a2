import {
  context,
  metrics,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Histogram,
  type MeterProvider,
  type Span,
  type TracerProvider,
} from '@opentelemetry/api';
import type { Dispatcher } from '../core/producer/dispatcher.js';
import { instrument, listOf, type InstrumentationHooks, type RunOutcome } from '../core/instrumentation.js';
import { FIELDS } from '../core/protocol/task-fields.js';
import { VERSION } from '../core/version.js';
import type { Worker } from '../core/worker/worker.js';
import { producerContext, traceFields } from './trace-context.js';

/** Options of `heimdallTracing()`. */
export interface HeimdallTracingOptions {
  /** Dispatchers whose sends get a `send <queue>` PRODUCER span, its context carried with the task. Default: none. */
  dispatcher?: Dispatcher | readonly Dispatcher[];
  /** Workers whose runs get a `process <queue>` CONSUMER span. Default: none. */
  worker?: Worker | readonly Worker[];
  /** Where the tracer comes from. Default: the global one (`trace.getTracerProvider()`), as registered by your SDK. */
  tracerProvider?: TracerProvider;
  /** Where the duration histograms come from. Default: the global one (`metrics.getMeterProvider()`). */
  meterProvider?: MeterProvider;
  /**
   * Make the producer's span the parent of each `process` span (one trace from the send through
   * every attempt), instead of linking to it from a trace of its own. Default: `false` (a link,
   * as the messaging conventions advise when a message may be processed long after it was sent).
   */
  parentFromProducer?: boolean;
}

/** What `heimdallTracing()` returns. */
export interface HeimdallTracing {
  /** Stops tracing the dispatchers and workers it was given (spans in flight still end). Idempotent. */
  unregister(): void;
}

/** The value of `messaging.system` on every span and measurement. */
export const MESSAGING_SYSTEM = 'heimdall';

// Seconds, as the messaging conventions advise for both duration histograms.
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

/**
 * OpenTelemetry spans and metrics of heimdall-tasks, following the messaging semantic
 * conventions: a `send <queue>` PRODUCER span around each dispatch, whose W3C trace context is
 * stored with the task (record fields `tp`, `ts`); a `process <queue>` CONSUMER span around each
 * run, linked to that context (or its child, with `parentFromProducer`), active while the task
 * runs; and the histograms `messaging.client.operation.duration` (sends) and
 * `messaging.process.duration` (runs), in seconds.
 */
export function heimdallTracing(options: HeimdallTracingOptions = {}): HeimdallTracing {
  const tracer = (options.tracerProvider ?? trace.getTracerProvider()).getTracer('heimdall-tasks', VERSION);
  const meter = (options.meterProvider ?? metrics.getMeterProvider()).getMeter('heimdall-tasks', VERSION);
  const advice = { explicitBucketBoundaries: DURATION_BUCKETS };
  const sendDuration = meter.createHistogram('messaging.client.operation.duration', {
    unit: 's',
    description: 'Duration of sending a task to Redis.',
    advice,
  });
  const processDuration = meter.createHistogram('messaging.process.duration', {
    unit: 's',
    description: 'Duration of running a task.',
    advice,
  });
  const asParent = options.parentFromProducer === true;

  const sendHooks: InstrumentationHooks = {
    send: (info, send) => {
      const attributes = operation('send', info.queue);
      const span = tracer.startSpan(
        `send ${info.queue}`,
        { kind: SpanKind.PRODUCER, attributes: { ...attributes, 'messaging.message.id': info.id, 'heimdall.task.name': info.name } },
        context.active(),
      );
      const began = performance.now();
      const sending = context.with(trace.setSpan(context.active(), span), () => send(traceFields(span.spanContext())));
      return sending.then(
        (result) => {
          if (result.duplicate) span.setAttributes({ 'messaging.message.id': result.id, 'heimdall.task.duplicate': true });
          finish(span, sendDuration, attributes, began, undefined);
          return result;
        },
        (err: unknown) => {
          recordError(span, err);
          finish(span, sendDuration, attributes, began, errorOf(err));
          throw err;
        },
      );
    },
  };

  const runHooks: InstrumentationHooks = {
    recordFields: [FIELDS.traceParent, FIELDS.traceState],
    run: (info, run) => {
      const producer = producerContext(info.record[FIELDS.traceParent], info.record[FIELDS.traceState]);
      // Never the context the worker happened to be started in: a run belongs to its task's trace or to none.
      const parent = asParent && producer ? trace.setSpanContext(ROOT_CONTEXT, producer) : ROOT_CONTEXT;
      const attributes = operation('process', info.queue);
      const span = tracer.startSpan(
        `process ${info.queue}`,
        {
          kind: SpanKind.CONSUMER,
          attributes: { ...attributes, 'messaging.message.id': info.id, 'heimdall.task.name': info.name, 'heimdall.task.attempt': info.attempt },
          links: producer && !asParent ? [{ context: producer }] : [],
        },
        parent,
      );
      const began = performance.now();
      return context.with(trace.setSpan(parent, span), run).then(
        (outcome: RunOutcome | undefined) => {
          if (outcome !== undefined && !outcome.ok) {
            const { name, message, traceback } = outcome.error;
            span.recordException({ name, message, ...(traceback === undefined ? {} : { stack: traceback }) });
            if (outcome.retryDelayMs !== undefined) span.setAttribute('heimdall.task.retry_delay_ms', outcome.retryDelayMs);
            finish(span, processDuration, attributes, began, { type: name, message: `${name}: ${message}` });
          } else {
            finish(span, processDuration, attributes, began, undefined);
          }
          return outcome;
        },
        (err: unknown) => {
          recordError(span, err);
          finish(span, processDuration, attributes, began, errorOf(err));
          throw err;
        },
      );
    },
  };

  const detach = [
    ...listOf(options.dispatcher).map((d) => instrument(d, sendHooks)),
    ...listOf(options.worker).map((w) => instrument(w, runHooks)),
  ];
  return {
    unregister: () => {
      for (const d of detach.splice(0)) d();
    },
  };
}

/** The attributes shared by a span and its duration measurement. */
function operation(name: 'send' | 'process', queue: string): Attributes {
  return { 'messaging.system': MESSAGING_SYSTEM, 'messaging.operation.name': name, 'messaging.operation.type': name, 'messaging.destination.name': queue };
}

/** Ends `span` (with ERROR status and `error.type` when `error` is given) and records its duration in seconds. */
function finish(span: Span, histogram: Histogram, attributes: Attributes, began: number, error: { type: string; message: string } | undefined): void {
  const seconds = (performance.now() - began) / 1000;
  if (error) {
    span.setAttribute('error.type', error.type);
    span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
  }
  span.end();
  histogram.record(seconds, error ? { ...attributes, 'error.type': error.type } : attributes);
}

/** Records a thrown Error as the span's exception, typed by its class name (as `error.type`), not by its `code`. */
function recordError(span: Span, err: unknown): void {
  if (err instanceof Error) span.recordException({ name: err.name, message: err.message, ...(err.stack === undefined ? {} : { stack: err.stack }) });
}

/** A thrown value as `error.type` (its class name; `_OTHER` for a non-Error, as the conventions say) and a status message. */
function errorOf(err: unknown): { type: string; message: string } {
  return err instanceof Error ? { type: err.name, message: `${err.name}: ${err.message}` } : { type: '_OTHER', message: String(err) };
}
