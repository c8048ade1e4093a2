import { createTraceState, isSpanContextValid, type SpanContext } from '@opentelemetry/api';
import { FIELDS } from '../core/protocol/task-fields.js';

// W3C Trace Context (https://www.w3.org/TR/trace-context/) written into the task record's own
// fields (tp, ts) rather than through the global propagator: a process whose SDK set up no
// propagator (or another one) still carries the context, and producers in other languages have one
// documented format to write (docs/protocol.md).

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** The message fields that carry `span`'s context (`tp`, and `ts` when it has a trace state); none for an invalid context. */
export function traceFields(span: SpanContext): string[] | undefined {
  if (!isSpanContextValid(span)) return undefined;
  const flags = (span.traceFlags & 0xff).toString(16).padStart(2, '0');
  const fields = [FIELDS.traceParent, `00-${span.traceId}-${span.spanId}-${flags}`];
  const state = span.traceState?.serialize();
  if (state) fields.push(FIELDS.traceState, state);
  return fields;
}

/** The producer's span context from a record's `tp` and `ts`; undefined when absent or not a valid traceparent. */
export function producerContext(traceParent: string | undefined, traceState: string | undefined): SpanContext | undefined {
  const m = traceParent === undefined ? null : TRACEPARENT.exec(traceParent);
  if (!m || m[1] === 'ff') return undefined;
  const context: SpanContext = {
    traceId: m[2]!,
    spanId: m[3]!,
    traceFlags: parseInt(m[4]!, 16),
    isRemote: true,
    ...(traceState ? { traceState: createTraceState(traceState) } : {}),
  };
  return isSpanContextValid(context) ? context : undefined;
}
