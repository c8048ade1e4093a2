// The inline engine's events: what the Redis scripts write to a queue's stream, kept in memory
// (the last 10,000), read with the same `events()` iterator and the same `since` rules.
import { ConfigError } from '../errors.js';
import type { WorkerEvents } from '../worker/worker-options.js';
import type { QueueEvent } from './queue-events.js';

type Unplaced<E> = E extends QueueEvent ? Omit<E, 'at' | 'cursor'> : never;
/** An event before the feed gives it its time and cursor. */
export type NewEvent = Unplaced<QueueEvent>;

const KEPT = 10_000;

/** A bounded in-memory log of events with iterators over it. */
export class MemoryEventFeed {
  private readonly log: QueueEvent[] = [];
  /** Sequence number of log[0]. */
  private first = 0;
  private readonly waiters = new Set<() => void>();
  private closed = false;

  /** Adds an event at `now` (ms). */
  push(event: NewEvent, now = Date.now()): void {
    const seq = this.first + this.log.length;
    this.log.push({ ...event, at: now, cursor: `${now}-${seq}/0` } as QueueEvent);
    if (this.log.length > KEPT) {
      this.log.shift();
      this.first++;
    }
    for (const wake of this.waiters) wake();
  }

  /** The event a Worker's event stands for, added (`error` and unknown ones are not events). */
  pushWorkerEvent<E extends keyof WorkerEvents>(name: E, args: WorkerEvents[E]): void {
    const e = args[0] as unknown as Record<string, unknown> & { id: string; name: string; queue: string; attempt?: number };
    const base = { id: e.id, name: e.name, queue: e.queue };
    const error = (): { name: string; message: string } => {
      const err = e.error as { name?: unknown; message?: unknown } | undefined;
      return { name: String(err?.name ?? 'Error'), message: String(err?.message ?? '') };
    };
    switch (name) {
      case 'started':
        return this.push({ ...base, type: 'started', worker: 'inline', attempt: e.attempt ?? 1 });
      case 'succeeded':
        return this.push({ ...base, type: 'succeeded', worker: 'inline', runtimeMs: Number(e.runtimeMs) });
      case 'failed':
        return this.push({ ...base, type: 'failed', worker: 'inline', runtimeMs: Number(e.runtimeMs), error: error() });
      case 'retried':
        return this.push({ ...base, type: 'retried', worker: 'inline', attempt: e.attempt ?? 1, delayMs: Number(e.delayMs), error: error() });
      case 'revoked':
        return this.push({ ...base, type: 'revoked', reason: String(e.reason) });
      case 'rateLimited':
        return this.push({ ...base, type: 'rate-limited', delayMs: Number(e.delayMs) });
      case 'progress':
        return this.push({ ...base, type: 'progress', value: Number(e.value), ...(typeof e.message === 'string' ? { message: e.message } : {}) });
      default:
        return;
    }
  }

  /** Ends every iterator. */
  close(): void {
    this.closed = true;
    for (const wake of this.waiters) wake();
  }

  /** The events of `queues` from `since` on (as `dispatcher.events()`). */
  iterate(queues: readonly string[], since: Date | number | string | undefined, signal: AbortSignal | undefined): AsyncIterableIterator<QueueEvent> {
    const wanted = new Set(queues);
    let next = this.startOf(since);
    let done = false;
    let wake: (() => void) | undefined;
    const stop = (): void => {
      done = true;
      wake?.();
    };
    signal?.addEventListener('abort', stop, { once: true });
    if (signal?.aborted) done = true;
    const feed = this;
    const iterator: AsyncIterableIterator<QueueEvent> = {
      [Symbol.asyncIterator]() {
        return iterator;
      },
      async next(): Promise<IteratorResult<QueueEvent, undefined>> {
        for (;;) {
          if (done || feed.closed) {
            signal?.removeEventListener('abort', stop);
            return { value: undefined, done: true };
          }
          next = Math.max(next, feed.first);
          while (next < feed.first + feed.log.length) {
            const event = feed.log[next - feed.first]!;
            next++;
            if (wanted.has(event.queue)) return { value: event, done: false };
          }
          await new Promise<void>((resolve) => {
            wake = resolve;
            feed.waiters.add(resolve);
          });
          if (wake) feed.waiters.delete(wake);
          wake = undefined;
        }
      },
      async return(): Promise<IteratorResult<QueueEvent, undefined>> {
        stop();
        signal?.removeEventListener('abort', stop);
        return { value: undefined, done: true };
      },
    };
    return iterator;
  }

  /** The sequence number to start at. */
  private startOf(since: Date | number | string | undefined): number {
    const end = this.first + this.log.length;
    if (since === undefined) return end;
    if (since instanceof Date || typeof since === 'number') {
      const ms = since instanceof Date ? since.getTime() : since;
      if (!Number.isFinite(ms) || ms < 0) throw new ConfigError(`events({ since }) takes a Date, ms since the epoch or a cursor, got ${String(since)}`);
      const i = this.log.findIndex((e) => e.at >= ms);
      return i < 0 ? end : this.first + i;
    }
    const m = typeof since === 'string' ? /^\d+-(\d+)\/\d+$/.exec(since) : null;
    if (m === null) throw new ConfigError(`events({ since }) takes a Date, ms since the epoch or an event's cursor ('<entry id>/<index>'), got ${JSON.stringify(since)}`);
    return Number(m[1]) + 1;
  }
}
