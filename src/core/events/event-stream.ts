// dispatcher.events(): an async iterator over the event streams of some queues, read with
// blocking XREADs on a connection of its own.
import { ConfigError, fromRedis } from '../errors.js';
import { openClient, type ConnectionOption, type OwnedClient, type RedisClient } from '../protocol/connection.js';
import { QueueKeys, validateName } from '../protocol/queue-keys.js';
import { decodeEntry, type QueueEvent } from './queue-events.js';
import { FIELDS } from '../protocol/task-fields.js';

/** Options of `dispatcher.events()`. */
export interface EventsReadOptions {
  /** The queues whose events are read. Default: `'default'` and every queue a task registered in this process names. */
  queues?: readonly string[];
  /**
   * Where to start: a time (a `Date`, or ms since the epoch, on the Redis clock) to read the
   * events kept since then, or the `cursor` of an event to resume after it. Default: the events
   * from when the call reaches Redis on.
   */
  since?: Date | number | string;
  /** Ends the iteration when aborted (as `return()` or a `break` out of `for await` does). */
  signal?: AbortSignal;
}

/**
 * How many entries one XREAD asks for. An entry holds up to about twice a worker's concurrency in
 * events, so the buffer holds at most HIGH_WATER plus this many entries' events.
 */
const READ_COUNT = 20;
/** How long one XREAD blocks, ms; the loop reads again (and sees a close) after it. */
const BLOCK_MS = 5_000;
/** Events buffered before the readers wait for the consumer. */
const HIGH_WATER = 2_000;
/** The largest sequence number of a stream id: `<ms - 1>-MAX_SEQ` is just before `<ms>-0`. */
const MAX_SEQ = '18446744073709551615';

type StreamReply = [key: string, entries: [id: string, pairs: string[]][]][] | null;

/** Where each stream starts: an exclusive XREAD id, and the entry of a cursor with the index of its last event taken. */
interface Start {
  id: string;
  cursorEntry: string | undefined;
  skipThrough: number;
}

/**
 * The events of some queues, in the order each stream holds them (queues interleave as their
 * reads return). Iterate it with `for await`; leave the loop (or call `return()`, or abort the
 * signal) to close its connection.
 */
export class EventStream implements AsyncIterableIterator<QueueEvent> {
  private readonly buffer: QueueEvent[] = [];
  private readonly readers: Promise<void>[] = [];
  private readonly clients: OwnedClient[] = [];
  private wakeConsumer: (() => void) | undefined;
  private wakeReaders: (() => void) | undefined;
  private failure: Error | undefined;
  private done = false;
  private readonly onAbort = (): void => void this.return();
  private readonly names: TaskNames;
  private readonly signal: AbortSignal | undefined;

  constructor(
    connection: ConnectionOption,
    private readonly prefix: string,
    queues: readonly string[],
    since: Date | number | string | undefined,
    /** Redis's time now, ms, asked for on the connection the caller dispatches on (so a task sent after `events()` is not missed). */
    now: () => Promise<number>,
    signal: AbortSignal | undefined,
    clientName: string,
    /** Called once when the stream closes (the dispatcher forgets it). */
    private readonly onClose: (stream: EventStream) => void,
  ) {
    if (queues.length === 0) throw new ConfigError('events() needs at least one queue');
    const keys = queues.map((q) => new QueueKeys(prefix, validateName(q, 'queue')));
    this.names = new TaskNames(keys);
    const starts = startsOf(keys, since);
    const start = since === undefined ? now() : undefined;
    // Read once the start is known; a failure to learn it ends the iteration with that error.
    start?.catch(() => undefined);
    const first = openClient(connection, 'blocking', clientName);
    this.clients.push(first);
    // A Cluster cannot read streams of several slots in one XREAD: one connection per queue.
    const groups = first.client.isCluster ? keys.map((k) => [k]) : [keys];
    groups.forEach((group, i) => {
      const owned = i === 0 ? first : openClient(connection, 'blocking', clientName);
      if (i > 0) this.clients.push(owned);
      this.readers.push(this.read(owned.client, group, starts, start));
    });
    if (signal !== undefined) {
      if (signal.aborted) void this.return();
      else signal.addEventListener('abort', this.onAbort, { once: true });
    }
    this.signal = signal;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<QueueEvent, undefined>> {
    for (;;) {
      const event = this.buffer.shift();
      if (event !== undefined) {
        if (this.buffer.length < HIGH_WATER / 2) this.wakeReaders?.();
        return { value: event, done: false };
      }
      if (this.failure !== undefined) {
        const failure = this.failure;
        await this.return();
        throw failure;
      }
      if (this.done) return { value: undefined, done: true };
      await new Promise<void>((resolve) => (this.wakeConsumer = resolve));
      this.wakeConsumer = undefined;
    }
  }

  /** Stops reading and closes the connections; the events not taken yet are dropped. */
  async return(): Promise<IteratorResult<QueueEvent, undefined>> {
    if (!this.done) {
      this.done = true;
      this.buffer.length = 0;
      this.signal?.removeEventListener('abort', this.onAbort);
      this.wakeConsumer?.();
      this.wakeReaders?.();
      // Not QUIT: it would wait for the blocked XREAD to return.
      for (const c of this.clients) if (c.owned) c.client.disconnect();
      await Promise.allSettled(this.readers);
      this.onClose(this);
    }
    return { value: undefined, done: true };
  }

  /** Same as `return()`. */
  close(): Promise<void> {
    return this.return().then(() => undefined);
  }

  private async read(client: RedisClient, keys: readonly QueueKeys[], starts: Map<string, Start>, start: Promise<number> | undefined): Promise<void> {
    const byKey = new Map(keys.map((k) => [k.events, k.queue]));
    const ids = keys.map((k) => starts.get(k.queue)!.id);
    const cursors = keys.map((k) => starts.get(k.queue)!);
    try {
      if (start !== undefined) {
        const ms = await start;
        // From that millisecond on (a same-millisecond event sent just before may come too).
        for (let i = 0; i < ids.length; i++) if (ids[i] === 'now') ids[i] = `${ms - 1}-${MAX_SEQ}`;
      }
      while (!this.done) {
        if (this.buffer.length >= HIGH_WATER) {
          await new Promise<void>((resolve) => (this.wakeReaders = resolve));
          continue;
        }
        const reply = (await client.xread('COUNT', READ_COUNT, 'BLOCK', BLOCK_MS, 'STREAMS', ...keys.map((k) => k.events), ...ids)) as StreamReply;
        if (this.done || reply === null) continue;
        const read: QueueEvent[] = [];
        for (const [key, entries] of reply) {
          const i = keys.findIndex((k) => k.events === key);
          const queue = byKey.get(key);
          if (i < 0 || queue === undefined) continue;
          for (const [entryId, pairs] of entries) {
            const from = entryId === cursors[i]!.cursorEntry ? cursors[i]!.skipThrough + 1 : 0;
            ids[i] = entryId;
            for (const event of decodeEntry(queue, entryId, pairs, from)) read.push(event);
          }
        }
        await this.names.fill(client, read);
        if (this.done) continue;
        for (const event of read) this.buffer.push(event);
        this.wakeConsumer?.();
      }
    } catch (err) {
      if (!this.done) {
        const failure = fromRedis(err, `reading the events of ${keys.map((k) => k.queue).join(', ')}`);
        this.failure = failure instanceof Error ? failure : new Error(String(failure));
        this.wakeConsumer?.();
      }
    }
  }
}

/** Each queue's start, from `since`. */
function startsOf(keys: readonly QueueKeys[], since: Date | number | string | undefined): Map<string, Start> {
  const starts = new Map<string, Start>();
  const all = (id: string): Map<string, Start> => {
    for (const k of keys) starts.set(k.queue, { id, cursorEntry: undefined, skipThrough: -1 });
    return starts;
  };
  if (since === undefined) return all('now');
  if (since instanceof Date || typeof since === 'number') {
    const ms = since instanceof Date ? since.getTime() : since;
    if (!Number.isFinite(ms) || ms < 0) throw new ConfigError(`events({ since }) takes a Date, ms since the epoch or a cursor, got ${String(since)}`);
    return all(Math.floor(ms) <= 0 ? '0-0' : `${Math.floor(ms) - 1}-${MAX_SEQ}`);
  }
  const m = typeof since === 'string' ? /^(\d+)-(\d+)\/(\d+)$/.exec(since) : null;
  if (m === null) throw new ConfigError(`events({ since }) takes a Date, ms since the epoch or an event's cursor ('<entry id>/<index>'), got ${JSON.stringify(since)}`);
  const [, ms, seq, index] = m as unknown as [string, string, string, string];
  // Read from just before the cursor's entry, to take its events after `index`. Other streams
  // start there too: an event of another queue in the same millisecond may come again.
  const before = BigInt(seq) > 0n ? `${ms}-${BigInt(seq) - 1n}` : BigInt(ms) > 0n ? `${BigInt(ms) - 1n}-${MAX_SEQ}` : '0-0';
  for (const k of keys) starts.set(k.queue, { id: before, cursorEntry: `${ms}-${seq}`, skipThrough: Number(index) });
  return starts;
}

/** Names remembered, at most; the oldest go first. */
const NAMES_KEPT = 10_000;

/**
 * The task names of events that go without one (started, progress and succeeded: the hot
 * events leave it out to cost Redis less), from the task's earlier events or, for a task not
 * seen yet, its record (one pipelined HGET per reading, on the reader's own connection).
 */
class TaskNames {
  private readonly known = new Map<string, string>();
  private readonly byQueue: Map<string, QueueKeys>;

  constructor(keys: readonly QueueKeys[]) {
    this.byQueue = new Map(keys.map((k) => [k.queue, k]));
  }

  /**
   * Fills in the names `events` lack, in stream order: an event with a name records it (the
   * newest wins: an ended task's id may be sent again as another task), one without takes the
   * name recorded last for its id, and the ids not seen at all are read from their records.
   */
  async fill(client: RedisClient, events: QueueEvent[]): Promise<void> {
    const missing: QueueEvent[] = [];
    for (const e of events) {
      const mapKey = `${e.queue}\n${e.id}`;
      if (e.name !== undefined) this.remember(mapKey, e.name);
      else {
        const name = this.known.get(mapKey);
        if (name !== undefined) e.name = name;
        else if (this.byQueue.has(e.queue)) missing.push(e);
      }
    }
    if (missing.length === 0) return;
    const asked = [...new Set(missing.map((e) => `${e.queue}\n${e.id}`))];
    const pipeline = client.pipeline();
    for (const mapKey of asked) {
      const cut = mapKey.indexOf('\n');
      pipeline.hget(this.byQueue.get(mapKey.slice(0, cut))!.task(mapKey.slice(cut + 1)), FIELDS.name);
    }
    const replies = (await pipeline.exec()) ?? [];
    const found = new Map<string, string>();
    asked.forEach((mapKey, i) => {
      const [err, name] = replies[i] ?? [null, null];
      if (!err && typeof name === 'string') {
        found.set(mapKey, name);
        if (!this.known.has(mapKey)) this.remember(mapKey, name);
      }
    });
    for (const e of missing) {
      const name = found.get(`${e.queue}\n${e.id}`);
      if (name !== undefined) e.name = name;
    }
  }

  private remember(mapKey: string, name: string): void {
    // Delete first, so the entry moves to the newest place of the map (the oldest go first).
    this.known.delete(mapKey);
    this.known.set(mapKey, name);
    if (this.known.size > NAMES_KEPT) this.known.delete(this.known.keys().next().value as string);
  }
}
