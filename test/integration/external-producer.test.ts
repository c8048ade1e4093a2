/**
 * A producer in another language, played by a plain ioredis client: it sends tasks to real
 * TypeScript workers following docs/protocol.md alone, and checks what that page promises.
 *
 * The producer side uses nothing of the library: keys are built by hand from the page
 * (`<prefix>:{<queue>}:` + `wait`, `delayed`, `t:<id>`, `lock:<name>:<key>`, `rate:<name>`,
 * `done:<id>`), the enqueue script is `lua/enqueue.lua` read from disk and loaded with
 * SCRIPT LOAD, tasks are sent with EVALSHA in the page's declared form (the queue's wait,
 * delayed and events, then each task's record and lock) and argument layout, records are read
 * with HGETALL/HGET and ends are seen on the `done:<id>` channel with SUBSCRIBE. The worker
 * side is the real library (`Worker` with `@Task` classes).
 *
 * What is checked:
 * - a plain task with arguments runs; reply code 1; result read from the record (`s`, `r`,
 *   and `v`, `c`, `at`, `w`, `st`, `f`); the end published on `done:<id>`;
 * - countdown and eta (eta wins over the countdown): not started before due (`d`, `st`);
 * - messages without `lk`/`rk`/`tl` run under the worker's own options: its unique lock (the
 *   second of two identical messages ends REVOKED `duplicate` without running, under the lock
 *   key the page describes), its rate limit (over the limit: PENDING in the delayed set), its
 *   time limit (FAILURE with TimeLimitExceededError);
 * - `tl` in the message (a limit for a task without one; `0`: none, over the worker's limit),
 *   `ex` (REVOKED `expired`) and a rate limit sent by the producer (`rk`, `rn`, `rp`);
 * - the replies: re-sending a call (code 1, written once), an id in use (code 3), a unique
 *   lock sent by the producer (code 2 with the holder's id and the lock's remaining ms), an id
 *   reused after its task ended, a key of the wrong type (code 4; a wrong-typed `wait` fails the
 *   whole call);
 * - declared keys other than the ones the base and the arguments name, or too many or too few:
 *   the whole call fails and writes nothing;
 * - the legacy two-key form (deprecated), once: written, placed, locked and noted as before, and run;
 * - NOSCRIPT after SCRIPT FLUSH (on a private redis-server: the flush is server-wide), then
 *   loading again and re-sending.
 * Out of scope: records of an unknown version or malformed messages (the script writes `v`;
 * the page gives the producer nothing to check there beyond reading `v` back).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { beforeEach, describe, expect, it } from 'vitest';
import { currentTask, Task, type Worker } from 'heimdall-tasks';
import { gate, recordEvents, ROOT, useHarness, usePrivateRedis, waitFor, type Gate, type Harness, type RecordedEvents } from '../helpers.js';
import { clientFor, nodesOf, type Topology } from '../topology.js';

// ---------------------------------------------------------------------------------------------
// The worker side: ordinary @Task classes.

/** Every run of a method, in order: which task, which arguments. */
const calls: { name: string; id: string; args: unknown[] }[] = [];
/** Gates by tag: a method called with a tag waits for the test to open its gate. */
const gates = new Map<string, Gate>();

function note(name: string, args: unknown[]): void {
  calls.push({ name, id: currentTask().id, args });
}

/** Resolves when the gate of `tag` opens; rejects with the signal's reason when it fires. */
function gateOrAbort(tag: string): Promise<void> {
  const { signal } = currentTask();
  const g = gates.get(tag);
  return new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason as Error);
    signal.addEventListener('abort', () => reject(signal.reason as Error), { once: true });
    if (g) void g.promise.then(resolve);
  });
}

class ExtPlain {
  @Task()
  async describe(n: number, opts: { times: number; tags: string[] }, label: string | null): Promise<{ product: number; tags: string[]; label: string | null }> {
    note('ExtPlain.describe', [n, opts, label]);
    return { product: n * opts.times, tags: opts.tags, label };
  }

  @Task()
  async nothing(): Promise<void> {
    note('ExtPlain.nothing', []);
  }
}

class ExtGated {
  /** No options of its own: waits for the gate of `tag` (or its signal), returns the tag. */
  @Task()
  async block(tag: string): Promise<string> {
    note('ExtGated.block', [tag]);
    await gateOrAbort(tag);
    return tag;
  }
}

class ExtUnique {
  @Task({ unique: true, uniqueTimeout: '1m' })
  async hold(spec: { a: number; b: number }, tag: string): Promise<number> {
    note('ExtUnique.hold', [spec, tag]);
    await gateOrAbort(tag);
    return spec.a + spec.b;
  }
}

class ExtRate {
  @Task({ rateLimit: [2, 60] })
  async tick(n: number): Promise<number> {
    note('ExtRate.tick', [n]);
    return n;
  }
}

class ExtTimed {
  /** Registered under an explicit name. Waits on its signal (or the gate of `tag`). */
  @Task({ name: 'external.timed', timeLimit: '200ms' })
  async limited(tag: string): Promise<string> {
    note('external.timed', [tag]);
    await gateOrAbort(tag);
    return tag;
  }
}

const SERVICES = [new ExtPlain(), new ExtGated(), new ExtUnique(), new ExtRate(), new ExtTimed()];

// ---------------------------------------------------------------------------------------------
// The producer side: plain Redis commands, keys and layout from docs/protocol.md.

const ENQUEUE_LUA = readFileSync(join(ROOT, 'lua/enqueue.lua'), 'utf8');
const FINAL = new Set(['SUCCESS', 'FAILURE', 'REVOKED']);

/** `<prefix>:{<queue>}:` */
function baseOf(prefix: string, queue = 'default'): string {
  return `${prefix}:{${queue}}:`;
}

/** Canonical JSON: object keys sorted, no whitespace, numbers as JavaScript writes them. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

const sha1 = (text: string): string => createHash('sha1').update(text).digest('hex');

interface Outgoing {
  id: string;
  name: string;
  /** The arguments: an array (sent as JSON) or the JSON text itself. */
  args: unknown[] | string;
  countdownMs?: number;
  etaMs?: number;
  /** A unique lock taken at send time: the full key and its lifetime (also sent as lk/lt). */
  lock?: { key: string; ms: number };
  /** Other optional message fields (tl, ex, mr, lw, rk, rn, rp). */
  fields?: Record<string, string | number>;
}

interface Reply {
  code: number;
  detail: string;
  third: number;
}

type TaskRecord = Record<string, string>;

class Producer {
  readonly redis: Redis;
  sha = '';
  private sub: Redis | undefined;
  /** Messages received on subscribed channels, by channel. */
  readonly published = new Map<string, string[]>();

  constructor(
    private readonly where: Topology,
    readonly base: string,
  ) {
    this.redis = clientFor(where);
  }

  /** SCRIPT LOAD <contents of lua/enqueue.lua>; on a Cluster on every master, as EVALSHA runs on the node of its keys. */
  async load(): Promise<string> {
    if (this.redis.status !== 'ready') await this.redis.ping();
    const shas = await Promise.all(nodesOf(this.redis, 'master').map((node) => node.script('LOAD', ENQUEUE_LUA) as Promise<string>));
    this.sha = shas[0]!;
    return this.sha;
  }

  /** The EVALSHA argument list of the page, for tasks of this producer's queue. */
  argv(tasks: readonly Outgoing[]): (string | number)[] {
    const argv: (string | number)[] = [this.base, tasks.length];
    for (const t of tasks) {
      const fields: [string, string][] = [
        ['n', t.name],
        ['a', typeof t.args === 'string' ? t.args : JSON.stringify(t.args)],
      ];
      if (t.lock) fields.push(['lk', t.lock.key], ['lt', String(t.lock.ms)]);
      for (const [k, v] of Object.entries(t.fields ?? {})) fields.push([k, String(v)]);
      argv.push(t.id, t.countdownMs ?? 0, t.etaMs ?? 0, t.lock?.key ?? '', t.lock?.ms ?? 0, fields.length * 2, ...fields.flat());
    }
    return argv;
  }

  /**
   * The keys of the page's declared form: the queue's wait, delayed and events, then per task its
   * record `<base>t:<id>` and, when it takes a lock at send time, the lock's key.
   */
  keys(tasks: readonly Outgoing[]): string[] {
    const keys = [`${this.base}wait`, `${this.base}delayed`, `${this.base}events`];
    for (const t of tasks) {
      keys.push(`${this.base}t:${t.id}`);
      if (t.lock) keys.push(t.lock.key);
    }
    return keys;
  }

  /** EVALSHA <sha1> <3 + tasks + locks> <keys> <argv>, the declared form; the flat reply, three items per task. */
  send(...tasks: Outgoing[]): Promise<Reply[]> {
    return this.call(this.keys(tasks), tasks);
  }

  /** EVALSHA <sha1> 2 <base>wait <base>delayed <argv>: the legacy form (deprecated), whose other keys the script names. */
  sendLegacy(...tasks: Outgoing[]): Promise<Reply[]> {
    return this.call([`${this.base}wait`, `${this.base}delayed`], tasks);
  }

  /** EVALSHA with `keys` and the page's arguments for `tasks`. */
  async call(keys: readonly string[], tasks: readonly Outgoing[]): Promise<Reply[]> {
    const raw = (await this.redis.evalsha(this.sha, keys.length, ...keys, ...this.argv(tasks))) as unknown[];
    expect(raw, 'three reply items per task').toHaveLength(tasks.length * 3);
    const replies: Reply[] = [];
    for (let i = 0; i < raw.length; i += 3) replies.push({ code: Number(raw[i]), detail: String(raw[i + 1]), third: Number(raw[i + 2]) });
    return replies;
  }

  record(id: string): Promise<TaskRecord> {
    return this.redis.hgetall(`${this.base}t:${id}`);
  }

  async state(id: string): Promise<string | null> {
    return this.redis.hget(`${this.base}t:${id}`, 's');
  }

  /** Milliseconds on the Redis clock. */
  async now(): Promise<number> {
    const [sec, usec] = await this.redis.time();
    return Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
  }

  /** SSUBSCRIBE <base>done:<id> for each id (before the tasks are sent): the channel is sharded Pub/Sub. */
  async subscribeDone(ids: readonly string[]): Promise<void> {
    // On a Cluster, SSUBSCRIBE must go to the channel's shard: ioredis does that with shardedSubscribers.
    this.sub ??= clientFor(this.where, {}, { shardedSubscribers: true });
    this.sub.on('smessage', (channel: string, message: string) => {
      this.published.set(channel, [...(this.published.get(channel) ?? []), message]);
    });
    await this.sub.ssubscribe(...ids.map((id) => `${this.base}done:${id}`));
  }

  /** The messages published on `done:<id>` so far. */
  doneMessages(id: string): string[] {
    return this.published.get(`${this.base}done:${id}`) ?? [];
  }

  /** Waits for a final state by reading `s` (polled; the page's `done:<id>` wait is checked where it matters). */
  async end(id: string, timeout = 15_000): Promise<TaskRecord> {
    return waitFor(
      async () => {
        const rec = await this.record(id);
        return rec.s !== undefined && FINAL.has(rec.s) ? rec : undefined;
      },
      { timeout, interval: 50, what: `task ${id} to end` },
    );
  }

  async waitState(id: string, state: string, timeout = 15_000): Promise<TaskRecord> {
    return waitFor(
      async () => {
        const rec = await this.record(id);
        return rec.s === state ? rec : undefined;
      },
      { timeout, interval: 20, what: `task ${id} to be ${state}` },
    );
  }

  async close(): Promise<void> {
    await Promise.all([this.redis.quit(), this.sub?.quit()]);
  }
}

let idCounter = 0;
/** A fresh task id (no spaces or braces). */
function newId(label: string): string {
  return `ext-${label}-${process.pid}-${++idCounter}-${Math.random().toString(36).slice(2, 10)}`;
}

async function startWorker(h: Harness): Promise<{ worker: Worker; events: RecordedEvents }> {
  const worker = h.worker({ services: SERVICES, concurrency: 4 });
  const events = recordEvents(worker);
  await worker.start();
  return { worker, events };
}

/** Opens a producer on the harness's default queue (or `queue`), loads the script, runs `fn`, and quits. */
async function withProducer<T>(h: Harness, fn: (p: Producer) => Promise<T>, queue = 'default'): Promise<T> {
  const p = new Producer(h.topology, baseOf(h.prefix, queue));
  try {
    await p.load();
    return await fn(p);
  } finally {
    await p.close();
  }
}

const runsOf = (name: string): string[] => calls.filter((c) => c.name === name).map((c) => c.id);

beforeEach(() => {
  calls.length = 0;
  gates.clear();
});

// ---------------------------------------------------------------------------------------------

describe('an external producer following docs/protocol.md, with the worker applying its own options', () => {
  const fresh = useHarness('external');

  it('plain tasks with arguments: code 1, the result in the record (s, r), the end on done:<id>', async () => {
    const h = fresh();
    const { worker, events } = await startWorker(h);
    await withProducer(h, async (p) => {
      expect(p.sha).toBe(sha1(ENQUEUE_LUA));
      const withResult = newId('plain');
      const without = newId('plain-void');
      // SUBSCRIBE first, then send, then read s.
      await p.subscribeDone([withResult, without]);
      const args = [6, { times: 7, tags: ['x', 'ü ✓'] }, null];
      const replies = await p.send({ id: withResult, name: 'ExtPlain.describe', args }, { id: without, name: 'ExtPlain.nothing', args: [] });
      expect(replies).toEqual([
        { code: 1, detail: '', third: 0 },
        { code: 1, detail: '', third: 0 },
      ]);

      await waitFor(() => p.doneMessages(withResult).length > 0 && p.doneMessages(without).length > 0, { what: 'both ends on done:<id>' });
      // The final state is what is published.
      expect(p.doneMessages(withResult)).toEqual(['SUCCESS']);
      expect(p.doneMessages(without)).toEqual(['SUCCESS']);

      const rec = await p.end(withResult);
      expect(rec.s).toBe('SUCCESS');
      expect(JSON.parse(rec.r!)).toEqual({ product: 42, tags: ['x', 'ü ✓'], label: null });
      expect(rec.n).toBe('ExtPlain.describe');
      expect(rec.v).toBe('1');
      expect(rec.at).toBe('1');
      expect(rec.w).toBe(worker.id);
      for (const f of ['c', 'st', 'f'] as const) expect(Number(rec[f]), `field ${f}`).toBeGreaterThan(0);
      expect(Number(rec.c)).toBeLessThanOrEqual(Number(rec.st));
      expect(Number(rec.st)).toBeLessThanOrEqual(Number(rec.f));
      expect(rec.e).toBeUndefined();

      const void_ = await p.end(without);
      expect(void_.s).toBe('SUCCESS');
      expect(void_.r, 'no r when the method returned nothing').toBeUndefined();
      // The method ran with the arguments spread.
      expect(calls.filter((c) => c.id === withResult).map((c) => c.args)).toEqual([args]);
    });
    expect(events.errors).toEqual([]);
  });

  it('countdown and eta: PENDING in the delayed set until due (eta wins over the countdown), then run', async () => {
    const h = fresh();
    const { events } = await startWorker(h);
    await withProducer(h, async (p) => {
      const byCountdown = newId('countdown');
      const byEta = newId('eta');
      const both = newId('eta-and-countdown');
      const before = await p.now();
      const eta = before + 1_200;
      const replies = await p.send(
        { id: byCountdown, name: 'ExtPlain.describe', args: [1, { times: 1, tags: [] }, 'countdown'], countdownMs: 1_000 },
        { id: byEta, name: 'ExtPlain.describe', args: [2, { times: 1, tags: [] }, 'eta'], etaMs: eta },
        // A one-hour countdown with an eta 1.2 s ahead: the eta wins.
        { id: both, name: 'ExtPlain.describe', args: [3, { times: 1, tags: [] }, 'both'], etaMs: eta, countdownMs: 3_600_000 },
      );
      const after = await p.now();
      expect(replies.map((r) => r.code)).toEqual([1, 1, 1]);

      const ids = [byCountdown, byEta, both];
      const due = new Map<string, number>();
      for (const id of ids) {
        const rec = await p.record(id);
        const score = await p.redis.zscore(`${p.base}delayed`, id);
        // Either still PENDING in the delayed set, or (a very slow machine) already due and on its way.
        if (rec.s === 'PENDING' && score !== null) expect(Number(score), `delayed score of ${id} is its due time d`).toBe(Number(rec.d));
        due.set(id, Number(rec.d));
      }
      expect(due.get(byCountdown)).toBeGreaterThanOrEqual(before + 1_000);
      expect(due.get(byCountdown)).toBeLessThanOrEqual(after + 1_000);
      expect(due.get(byEta)).toBe(eta);
      expect(due.get(both)).toBe(eta);
      // Not due yet: nobody started them.
      expect(await p.redis.llen(`${p.base}wait`)).toBe(0);

      // Watch them until they end: a state past PENDING seen at a Redis time before `d` is a start before due.
      await waitFor(
        async () => {
          let ended = 0;
          for (const id of ids) {
            const s = await p.state(id);
            const now = await p.now();
            if (s !== 'PENDING') expect(now, `${id} (${s}) seen at ${now}, due at ${due.get(id)}`).toBeGreaterThanOrEqual(due.get(id)!);
            if (s === 'SUCCESS') ended++;
          }
          return ended === ids.length;
        },
        { timeout: 15_000, interval: 25, what: 'the delayed tasks to run' },
      );
      for (const id of ids) {
        const rec = await p.record(id);
        expect(rec.s).toBe('SUCCESS');
        expect(Number(rec.st), `${id} started (st) no sooner than due (d)`).toBeGreaterThanOrEqual(Number(rec.d));
        expect(rec.at).toBe('1');
      }
      expect(JSON.parse((await p.record(both)).r!)).toEqual({ product: 3, tags: [], label: 'both' });
    });
    expect(events.errors).toEqual([]);
  });

  it("unique via the worker: two identical messages without lk both enqueue (code 1); the second ends REVOKED 'duplicate' and never runs", async () => {
    const h = fresh();
    const { events } = await startWorker(h);
    gates.set('u', gate());
    await withProducer(h, async (p) => {
      // Keys in a non-canonical order: the worker's key is the SHA1 of the canonical JSON.
      const argsText = '[{"b":2,"a":1},"u"]';
      const lockKey = `${p.base}lock:ExtUnique.hold:${sha1(canonical(JSON.parse(argsText)))}`;
      const first = newId('unique-1');
      const second = newId('unique-2');
      await p.subscribeDone([first, second]);

      expect(await p.send({ id: first, name: 'ExtUnique.hold', args: argsText })).toEqual([{ code: 1, detail: '', third: 0 }]);
      await p.waitState(first, 'STARTED');
      // The page: "before the method runs, the worker takes the unique lock". STARTED alone does
      // not say the lock is taken yet (it is written first), so wait for the method to run.
      await waitFor(() => runsOf('ExtUnique.hold').includes(first), { what: 'the first to run' });
      // The worker took its own lock, under the key the page gives, for the uniqueTimeout (1 min).
      expect(await p.redis.get(lockKey)).toBe(first);
      const pttl = await p.redis.pttl(lockKey);
      expect(pttl).toBeGreaterThan(0);
      expect(pttl).toBeLessThanOrEqual(60_000);

      // Same arguments, no lk: enqueued all the same (the producer knows nothing of the lock).
      expect(await p.send({ id: second, name: 'ExtUnique.hold', args: argsText })).toEqual([{ code: 1, detail: '', third: 0 }]);
      const revoked = await p.end(second);
      expect(revoked.s).toBe('REVOKED');
      expect(revoked.rr).toBe('duplicate');
      // Admitted and revoked at once: no start is counted.
      expect(revoked.at ?? '0').toBe('0');
      expect(await waitFor(() => p.doneMessages(second)[0], { what: 'the end of the duplicate on done:<id>' })).toBe('REVOKED');
      // ... while the first still holds the lock, and without running.
      expect(await p.state(first)).toBe('STARTED');
      expect(await p.redis.get(lockKey)).toBe(first);
      expect(runsOf('ExtUnique.hold')).toEqual([first]);

      gates.get('u')!.open();
      const done = await p.end(first);
      expect(done.s).toBe('SUCCESS');
      expect(JSON.parse(done.r!)).toBe(3);
      expect(runsOf('ExtUnique.hold')).toEqual([first]);
      // Released at the end (no lw).
      await waitFor(async () => (await p.redis.exists(lockKey)) === 0, { what: 'the lock to be released' });
    });
    expect(events.errors).toEqual([]);
  });

  it('rate limit via the worker: four messages without rk to a [2, 60 s] task, two start, two wait PENDING in the delayed set', async () => {
    const h = fresh();
    const { events } = await startWorker(h);
    await withProducer(h, async (p) => {
      const ids = [1, 2, 3, 4].map((n) => newId(`rate-${n}`));
      // One call, four tasks.
      const replies = await p.send(...ids.map((id, i) => ({ id, name: 'ExtRate.tick', args: [i + 1] })));
      expect(replies).toEqual(ids.map(() => ({ code: 1, detail: '', third: 0 })));

      const states = async (): Promise<string[]> => Promise.all(ids.map(async (id) => (await p.state(id)) ?? 'none'));
      await waitFor(
        async () => {
          const s = await states();
          return s.filter((x) => x === 'SUCCESS').length === 2 && s.filter((x) => x === 'PENDING').length === 2 && (await p.redis.zcard(`${p.base}delayed`)) === 2;
        },
        { what: 'two tasks run and two rescheduled by the rate limit' },
      );
      const s = await states();
      const waiting = ids.filter((_, i) => s[i] === 'PENDING');
      const ran = ids.filter((_, i) => s[i] === 'SUCCESS');
      expect(runsOf('ExtRate.tick').sort()).toEqual([...ran].sort());
      for (const id of waiting) {
        expect(await p.redis.zscore(`${p.base}delayed`, id), `${id} is in the delayed set`).not.toBeNull();
        const rec = await p.record(id);
        expect(rec.r).toBeUndefined();
        expect(rec.at ?? '0', `${id} was not started`).toBe('0');
        // Due again when a slot of the 60-s window frees.
        expect(Number(rec.d)).toBeGreaterThan(await p.now());
      }
      // The worker's window, under the key the page gives: the two starts, and the two turns.
      const members = await p.redis.zrange(`${p.base}rate:ExtRate.tick`, 0, -1);
      expect(members.filter((m) => !m.startsWith('~'))).toHaveLength(2);
      expect(members.filter((m) => m.startsWith('~')).sort()).toEqual(waiting.map((id) => `~${id}:1`).sort());
      expect(runsOf('ExtRate.tick')).toHaveLength(2);
    });
    expect(events.errors).toEqual([]);
  });

  it('time limit via the worker: a message without tl to a 200-ms task ends FAILURE with TimeLimitExceededError', async () => {
    const h = fresh();
    const { events } = await startWorker(h);
    await withProducer(h, async (p) => {
      const id = newId('timed');
      await p.subscribeDone([id]);
      // Its gate never opens: only the signal ends it.
      expect(await p.send({ id, name: 'external.timed', args: ['never'] })).toEqual([{ code: 1, detail: '', third: 0 }]);
      const rec = await p.end(id);
      expect(rec.s).toBe('FAILURE');
      const error = JSON.parse(rec.e!) as { name: string; message: string; traceback: unknown };
      expect(error.name).toBe('TimeLimitExceededError');
      expect(error).toHaveProperty('message');
      expect(error).toHaveProperty('traceback');
      expect(runsOf('external.timed')).toEqual([id]);
      expect(await waitFor(() => p.doneMessages(id)[0], { what: 'the end on done:<id>' })).toBe('FAILURE');
    });
    expect(events.errors).toEqual([]);
  });

  it('tl in the message: a limit for a task without one; tl 0 lifts the worker’s limit', async () => {
    const h = fresh();
    const { events } = await startWorker(h);
    gates.set('free', gate());
    await withProducer(h, async (p) => {
      // ExtGated.block has no timeLimit of its own: tl 200 gives it one.
      const limited = newId('tl-200');
      expect(await p.send({ id: limited, name: 'ExtGated.block', args: ['never'], fields: { tl: 200 } })).toEqual([{ code: 1, detail: '', third: 0 }]);
      const rec = await p.end(limited);
      expect(rec.s).toBe('FAILURE');
      expect((JSON.parse(rec.e!) as { name: string }).name).toBe('TimeLimitExceededError');

      // external.timed has a 200-ms limit in the worker: tl 0 means none.
      const free = newId('tl-0');
      expect(await p.send({ id: free, name: 'external.timed', args: ['free'], fields: { tl: 0 } })).toEqual([{ code: 1, detail: '', third: 0 }]);
      const started = Number((await p.waitState(free, 'STARTED')).st);
      // Still running well past the worker's 200 ms (polled on the Redis clock, not slept).
      await waitFor(
        async () => {
          const s = await p.state(free);
          expect(s, 'running past the worker’s time limit').toBe('STARTED');
          return (await p.now()) > started + 1_000;
        },
        { timeout: 10_000, interval: 50, what: '1 s of run time' },
      );
      gates.get('free')!.open();
      const done = await p.end(free);
      expect(done.s).toBe('SUCCESS');
      expect(JSON.parse(done.r!)).toBe('free');
    });
    expect(events.errors).toEqual([]);
  });

  it('message fields: ex (not started by then: REVOKED expired) and a rate limit sent by the producer (rk, rn, rp)', async () => {
    const h = fresh();
    const { events } = await startWorker(h);
    await withProducer(h, async (p) => {
      // Due in 300 ms, expired after 100 ms: never started.
      const expiring = newId('expires');
      const now = await p.now();
      expect(await p.send({ id: expiring, name: 'ExtPlain.nothing', args: [], countdownMs: 300, fields: { ex: now + 100 } })).toEqual([
        { code: 1, detail: '', third: 0 },
      ]);
      const rec = await p.end(expiring);
      expect(rec.s).toBe('REVOKED');
      expect(rec.rr).toBe('expired');
      expect(runsOf('ExtPlain.nothing')).toEqual([]);

      // ExtPlain.describe has no rate limit in the worker: the message's window applies, as sent.
      const window = `${p.base}rate:ExtPlain.describe:producer`;
      const ids = [1, 2, 3].map((n) => newId(`rk-${n}`));
      const replies = await p.send(
        ...ids.map((id, i) => ({ id, name: 'ExtPlain.describe', args: [i, { times: 1, tags: [] }, null], fields: { rk: window, rn: 1, rp: 60_000 } })),
      );
      expect(replies.map((r) => r.code)).toEqual([1, 1, 1]);
      await waitFor(
        async () => {
          const states = await Promise.all(ids.map((id) => p.state(id)));
          return states.filter((x) => x === 'SUCCESS').length === 1 && states.filter((x) => x === 'PENDING').length === 2 && (await p.redis.zcard(`${p.base}delayed`)) === 2;
        },
        { what: 'one task run and two rescheduled by the message’s rate limit' },
      );
      // The start, and the two turns of the tasks that wait.
      const members = await p.redis.zrange(window, 0, -1);
      expect(members.filter((m) => !m.startsWith('~'))).toHaveLength(1);
      expect(members.filter((m) => m.startsWith('~'))).toHaveLength(2);
      expect(runsOf('ExtPlain.describe')).toHaveLength(1);
    });
    expect(events.errors).toEqual([]);
  });

  it('replies: a re-sent call is code 1 and written once; an id in use is code 3; a lock sent by the producer, sent twice, is code 2 with the holder', async () => {
    const h = fresh();
    const { events } = await startWorker(h);
    gates.set('running', gate());
    gates.set('locked', gate());

    // 1. Re-sending, to a queue no worker consumes: the task stays PENDING in `wait`.
    await withProducer(
      h,
      async (p) => {
        const id = newId('resend');
        const call: Outgoing = { id, name: 'ExtPlain.describe', args: [5, { times: 2, tags: [] }, 'idle'] };
        expect(await p.send(call)).toEqual([{ code: 1, detail: '', third: 0 }]);
        const created = await p.record(id);
        expect(created.s).toBe('PENDING');
        // The same call again (as after a lost reply): answered as enqueued, not written twice.
        expect(await p.send(call)).toEqual([{ code: 1, detail: '', third: 0 }]);
        expect(await p.redis.lrange(`${p.base}wait`, 0, -1)).toEqual([id]);
        expect(await p.record(id)).toEqual(created);

        // 2. The same id with other arguments, or another name: code 3, nothing written.
        expect(await p.send({ ...call, args: [6, { times: 2, tags: [] }, 'idle'] }, { ...call, name: 'ExtPlain.nothing', args: [] })).toEqual([
          { code: 3, detail: '', third: 0 },
          { code: 3, detail: '', third: 0 },
        ]);
        expect(await p.record(id)).toEqual(created);
        expect(await p.redis.llen(`${p.base}wait`)).toBe(1);
      },
      'idle',
    );

    await withProducer(h, async (p) => {
      // 1b. Re-sending while the task runs (STARTED has not ended): code 1, not run twice.
      const running = newId('resend-running');
      const call: Outgoing = { id: running, name: 'ExtGated.block', args: ['running'] };
      expect(await p.send(call)).toEqual([{ code: 1, detail: '', third: 0 }]);
      await p.waitState(running, 'STARTED');
      expect(await p.send(call)).toEqual([{ code: 1, detail: '', third: 0 }]);
      expect(await p.send({ ...call, args: ['other'] })).toEqual([{ code: 3, detail: '', third: 0 }]);
      expect(await p.state(running)).toBe('STARTED');
      expect(await p.redis.llen(`${p.base}wait`)).toBe(0);
      gates.get('running')!.open();
      expect((await p.end(running)).s).toBe('SUCCESS');
      expect(runsOf('ExtGated.block')).toEqual([running]);

      // 2b. An id may be reused once its task has ended: the old record is replaced.
      gates.set('reused', gate());
      expect(await p.send({ ...call, args: ['reused'] })).toEqual([{ code: 1, detail: '', third: 0 }]);
      await waitFor(async () => (await p.redis.hget(`${p.base}t:${running}`, 'a')) === '["reused"]' && (await p.state(running)) === 'STARTED', {
        what: 'the reused id to start again',
      });
      gates.get('reused')!.open();
      const reused = await p.end(running);
      expect(reused.s).toBe('SUCCESS');
      expect(JSON.parse(reused.r!)).toBe('reused');

      // 2c. A call that carries a send nonce (sn), sent again after its task ended (its reply was
      // lost and the task ran meanwhile): code 1, the ended record kept, not run again. The same
      // id under another nonce is a new dispatch, and starts afresh.
      const once = newId('resend-ended');
      const sealed: Outgoing = { id: once, name: 'ExtGated.block', args: ['sealed'], fields: { sn: 'nonce-a' } };
      gates.set('sealed', gate());
      gates.get('sealed')!.open();
      expect(await p.send(sealed)).toEqual([{ code: 1, detail: '', third: 0 }]);
      const ended = await p.end(once);
      expect(ended).toMatchObject({ s: 'SUCCESS', sn: 'nonce-a' });
      expect(await p.send(sealed)).toEqual([{ code: 1, detail: '', third: 0 }]);
      expect(await p.record(once)).toEqual(ended);
      expect(await p.redis.llen(`${p.base}wait`)).toBe(0);
      expect(await p.send({ ...sealed, fields: { sn: 'nonce-b' } })).toEqual([{ code: 1, detail: '', third: 0 }]);
      await waitFor(async () => (await p.redis.hget(`${p.base}t:${once}`, 'sn')) === 'nonce-b' && (await p.state(once)) === 'SUCCESS', {
        what: 'the new dispatch of the id to run',
      });
      expect(runsOf('ExtGated.block').filter((id) => id === once)).toHaveLength(2);

      // 3. A unique lock computed by the producer: `<base>lock:<name>:<key>`, lifetime 60 s.
      const args = ['locked'];
      const lockKey = `${p.base}lock:ExtGated.block:${sha1(canonical(args))}`;
      const holder = newId('lock-holder');
      const dup = newId('lock-dup');
      expect(await p.send({ id: holder, name: 'ExtGated.block', args, lock: { key: lockKey, ms: 60_000 } })).toEqual([{ code: 1, detail: '', third: 0 }]);
      expect(await p.redis.get(lockKey)).toBe(holder);
      await p.waitState(holder, 'STARTED');
      const [refused] = await p.send({ id: dup, name: 'ExtGated.block', args, lock: { key: lockKey, ms: 60_000 } });
      expect(refused!.code).toBe(2);
      expect(refused!.detail).toBe(holder);
      expect(refused!.third).toBeGreaterThan(0);
      expect(refused!.third).toBeLessThanOrEqual(60_000);
      expect(await p.redis.exists(`${p.base}t:${dup}`), 'nothing written for the duplicate').toBe(0);

      // The worker keeps the message's lock while the task runs and releases it at the end.
      gates.get('locked')!.open();
      expect((await p.end(holder)).s).toBe('SUCCESS');
      await waitFor(async () => (await p.redis.exists(lockKey)) === 0, { what: 'the producer lock to be released' });
      // Free again: the same message is now enqueued, and runs.
      expect(await p.send({ id: dup, name: 'ExtGated.block', args, lock: { key: lockKey, ms: 60_000 } })).toEqual([{ code: 1, detail: '', third: 0 }]);
      expect((await p.end(dup)).s).toBe('SUCCESS');
      expect(runsOf('ExtGated.block')).toEqual([running, running, once, once, holder, dup]);
    });
    expect(events.errors).toEqual([]);
  });

  it('wrong types: code 4 for a key of one task (the others of the call go on); a wrong-typed wait key fails the whole call', async () => {
    const h = fresh();
    // Queues no worker consumes: nothing but the script touches these keys.
    await withProducer(
      h,
      async (p) => {
        const recordTaken = newId('wrongtype-record');
        const lockTaken = newId('wrongtype-lock');
        const fine = newId('wrongtype-fine');
        const lockKey = `${p.base}lock:ExtGated.block:${sha1(canonical(['x']))}`;
        await p.redis.set(`${p.base}t:${recordTaken}`, 'not a hash');
        await p.redis.hset(lockKey, 'not', 'a string');
        const replies = await p.send(
          { id: recordTaken, name: 'ExtGated.block', args: ['y'] },
          { id: lockTaken, name: 'ExtGated.block', args: ['x'], lock: { key: lockKey, ms: 60_000 } },
          { id: fine, name: 'ExtGated.block', args: ['z'] },
        );
        expect(replies.map((r) => [r.code, r.third])).toEqual([
          [4, 0],
          [4, 0],
          [1, 0],
        ]);
        expect(replies[0]!.detail).not.toBe('');
        expect(replies[1]!.detail).not.toBe('');
        // Nothing of the refused tasks was written.
        expect(await p.redis.get(`${p.base}t:${recordTaken}`)).toBe('not a hash');
        expect(await p.redis.exists(`${p.base}t:${lockTaken}`)).toBe(0);
        expect(await p.redis.hgetall(lockKey)).toEqual({ not: 'a string' });
        expect(await p.redis.lrange(`${p.base}wait`, 0, -1)).toEqual([fine]);
      },
      'wrongtype',
    );
    await withProducer(
      h,
      async (p) => {
        await p.redis.set(`${p.base}wait`, 'not a list');
        const id = newId('wrongtype-wait');
        await expect(p.send({ id, name: 'ExtGated.block', args: ['w'] })).rejects.toThrow();
        expect(await p.redis.exists(`${p.base}t:${id}`)).toBe(0);
        expect(await p.redis.get(`${p.base}wait`)).toBe('not a list');
      },
      'broken',
    );
  });

  it('declared keys: a key other than the one the base and the arguments name, or one too many or too few, fails the whole call and writes nothing', async () => {
    const h = fresh();
    // A queue no worker consumes: nothing but the script touches these keys.
    await withProducer(
      h,
      async (p) => {
        const first = newId('declared-first');
        const second = newId('declared-second');
        const lockKey = `${p.base}lock:ExtGated.block:${sha1(canonical(['declared']))}`;
        const tasks: Outgoing[] = [
          { id: first, name: 'ExtPlain.nothing', args: [] },
          { id: second, name: 'ExtGated.block', args: ['declared'], lock: { key: lockKey, ms: 60_000 } },
        ];
        const good = p.keys(tasks);
        expect(good).toEqual([`${p.base}wait`, `${p.base}delayed`, `${p.base}events`, `${p.base}t:${first}`, `${p.base}t:${second}`, lockKey]);
        // Each wrong list keeps the queue's hash tag, so a Cluster runs the script and the script refuses it.
        const wrong: [string, string[], RegExp][] = [
          ['another record', good.map((k, i) => (i === 4 ? `${p.base}t:other` : k)), /^enqueue: KEYS\[5\] is not the hash of task .*; nothing was sent$/],
          ['another lock', good.map((k, i) => (i === 5 ? `${lockKey}x` : k)), /^enqueue: KEYS\[6\] is not the unique lock ARGV names for task /],
          ['another stream', good.map((k, i) => (i === 2 ? `${p.base}events2` : k)), /^enqueue: KEYS\[3\] is not /],
          ['the lock left out', good.slice(0, 5), /^enqueue: KEYS\[6\] is not the unique lock /],
          ['one key too many', [...good, `${p.base}t:extra`], /^enqueue: 7 keys passed, 6 named by the base and the tasks; nothing was sent$/],
          ['the records left out', good.slice(0, 3), /^enqueue: KEYS\[4\] is not the hash of task /],
        ];
        for (const [what, keys, message] of wrong) {
          await expect(p.call(keys, tasks), what).rejects.toThrow(message);
          expect(await p.redis.exists(`${p.base}t:${first}`, `${p.base}t:${second}`, lockKey, `${p.base}wait`, `${p.base}events`), `${what}: nothing written`).toBe(0);
        }
        // The right keys, the same call: both are enqueued.
        expect(await p.call(good, tasks)).toEqual([
          { code: 1, detail: '', third: 0 },
          { code: 1, detail: '', third: 0 },
        ]);
        expect(await p.redis.get(lockKey)).toBe(second);
      },
      'declared',
    );
  });

  it('the legacy form, exactly two keys (deprecated): the script names the records, locks and stream itself, as before, and the tasks run', async () => {
    const h = fresh();
    const { events } = await startWorker(h);
    // A queue no worker consumes: what the call wrote stays to be read.
    await withProducer(
      h,
      async (p) => {
        const plain = newId('legacy-plain');
        const later = newId('legacy-later');
        const holder = newId('legacy-holder');
        const dup = newId('legacy-dup');
        const lock = { key: `${p.base}lock:ExtGated.block:${sha1(canonical(['legacy']))}`, ms: 60_000 };
        const replies = await p.sendLegacy(
          { id: plain, name: 'ExtPlain.nothing', args: [] },
          { id: later, name: 'ExtPlain.nothing', args: [], countdownMs: 3_600_000 },
          { id: holder, name: 'ExtGated.block', args: ['legacy'], lock },
          { id: dup, name: 'ExtGated.block', args: ['legacy'], lock },
        );
        expect(replies.map((r) => [r.code, r.detail])).toEqual([
          [1, ''],
          [1, ''],
          [1, ''],
          [2, holder],
        ]);
        // The '' between them: the marker that wakes idle workers for the delayed task (includes/wake.lua).
        expect(await p.redis.lrange(`${p.base}wait`, 0, -1)).toEqual([holder, '', plain]);
        const due = (await p.record(later)).d!;
        expect(await p.redis.zscore(`${p.base}delayed`, later)).toBe(due);
        expect(await p.redis.get(lock.key)).toBe(holder);
        // The record keeps the key part of a lock of the task's own (lu), not the whole key.
        expect((await p.record(holder)).lk).toBeUndefined();
        expect((await p.record(holder)).lu).toBe(sha1(canonical(['legacy'])));
        expect(await p.redis.exists(`${p.base}t:${dup}`)).toBe(0);
        // One stream entry for the call, in the queue's stream.
        const entries = await p.redis.xrange(`${p.base}events`, '-', '+');
        expect(entries.map(([, fields]) => fields)).toEqual([
          ['queued', plain, 'n', 'ExtPlain.nothing', 'queued', later, 'n', 'ExtPlain.nothing', 'd', due, 'queued', holder, 'n', 'ExtGated.block', 'deduplicated', holder, 'n', 'ExtGated.block'],
        ]);
      },
      'legacy',
    );
    // On the worker's queue, a task sent in the legacy form runs.
    await withProducer(h, async (p) => {
      const id = newId('legacy-run');
      expect(await p.sendLegacy({ id, name: 'ExtPlain.describe', args: [2, { times: 3, tags: [] }, 'legacy'] })).toEqual([{ code: 1, detail: '', third: 0 }]);
      const rec = await p.end(id);
      expect(rec.s).toBe('SUCCESS');
      expect(JSON.parse(rec.r!)).toEqual({ product: 6, tags: [], label: 'legacy' });
    });
    expect(events.errors).toEqual([]);
  });
});

describe('an external producer after SCRIPT FLUSH (private redis-server: the flush is server-wide)', () => {
  const fresh = usePrivateRedis('external-noscript');

  it('EVALSHA answers NOSCRIPT; loading again and re-sending the same call works', async () => {
    const h = fresh();
    const { events } = await startWorker(h);
    await withProducer(h, async (p) => {
      const sha = p.sha;
      const first = newId('before-flush');
      expect(await p.send({ id: first, name: 'ExtPlain.describe', args: [1, { times: 2, tags: [] }, 'one'] })).toEqual([{ code: 1, detail: '', third: 0 }]);
      expect((await p.end(first)).s).toBe('SUCCESS');

      await p.redis.script('FLUSH');
      const id = newId('after-flush');
      const call: Outgoing = { id, name: 'ExtPlain.describe', args: [3, { times: 3, tags: [] }, 'two'] };
      await expect(p.send(call)).rejects.toThrow(/^NOSCRIPT/);
      expect(await p.redis.exists(`${p.base}t:${id}`)).toBe(0);

      expect(await p.load()).toBe(sha);
      expect(await p.send(call)).toEqual([{ code: 1, detail: '', third: 0 }]);
      const rec = await p.end(id);
      expect(rec.s).toBe('SUCCESS');
      expect(JSON.parse(rec.r!)).toEqual({ product: 9, tags: [], label: 'two' });
    });
    expect(events.errors).toEqual([]);
  });
});
