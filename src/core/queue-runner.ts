import type { Redis } from 'ioredis';
import type { QueueKeys } from './queue-keys.js';
import type { ScriptRunner } from './script-runner.js';
import {
  extendLeases,
  fetch as fetchScript,
  finish as finishScript,
  reclaim as reclaimScript,
  requeue as requeueScript,
} from '../redis-scripts/scripts.generated.js';

/** A started task as the fetch script hands it over. */
export interface StartedTask {
  id: string;
  name: string;
  argsJson: string;
  attempt: number;
  /** Time limit of this run in ms; 0 for none. */
  timeLimitMs: number;
  /** Retries already made. */
  retries: number;
}

/** What a task's run came to, waiting to be written by the next finish call. */
export interface Finish {
  id: string;
  state: 'SUCCESS' | 'FAILURE' | 'RETRY';
  /** 'r' (result), 'e' (error) or '' (no value). */
  field: 'r' | 'e' | '';
  value: string;
  expireMs: number;
  /** Delay before the retry, for state RETRY. */
  retryDelayMs: number;
  /** Non-empty: also keep the task in the dead-letter list with this reason. */
  deadReason: string;
  /** Called once the end is stored, with the state Redis kept ('STALE': not this worker's any more). */
  stored(outcome: string): void;
}

/** What a runner needs from its worker. */
export interface RunnerHost {
  readonly workerId: string;
  readonly leaseMs: number;
  readonly resultExpiresMs: number;
  /** Tasks the worker runs at once, across its queues. */
  readonly concurrency: number;
  /** False once close() began: fetch nothing more. */
  accepting(): boolean;
  /** Free slots not yet promised to a fetch in flight. */
  freeSlots(): number;
  reserve(n: number): void;
  launch(runner: QueueRunner, task: StartedTask): void;
  rateLimited(queue: string, id: string, name: string, argsJson: string, delayMs: number): void;
  revoked(queue: string, id: string, name: string, argsJson: string, reason: string): void;
  reportError(err: unknown): void;
}

type Reply = [(string | number)[], (string | number)[], (string | number)[], number, number, string[]?];

// An idle runner blocks on the wait list at most this long, a safety net for wake-ups that
// come from nowhere it can see (a rate-limited task rescheduled by a worker that then died),
// and the longest a lapsed lease of a dead worker waits for an idle worker to recover it.
const BLOCK_SECONDS = 5;
const MAX_FINISHES_PER_CALL = 500;
// Script calls one runner keeps in flight: with two, Redis runs one batch while this process
// runs the tasks of the other (measured: see BENCHMARKS.md). Each fetches at most half the
// worker's concurrency, so the two batches alternate instead of moving in lockstep.
const MAX_CALLS_IN_FLIGHT = 2;
const STARTED_FIELDS = 6;
/** nextDelay of a call that started all it asked for (start-tasks.lua skips the lookup). */
const NOT_LOOKED_UP = -2;

/**
 * Drives one queue for one worker. All script calls of the queue go through one loop: finishes
 * that pile up while a call is in flight travel together in the next one, with a fetch for the
 * slots they free. While fetches come back full, two calls may be in flight, so Redis runs one
 * batch while this process runs the tasks of the other. When the queue is empty the runner blocks on its own
 * connection (BLMOVE of the wait list onto itself, which moves nothing) and sets a timer for
 * the earliest delayed task, so an idle worker costs Redis nothing between events.
 */
export class QueueRunner {
  /** Ids of the tasks of this queue that this worker runs now. */
  readonly running = new Set<string>();
  private pending: Finish[] = [];
  private idle = false;
  private blocking = false;
  private wake: (() => void) | undefined;
  private dueTimer: NodeJS.Timeout | undefined;
  private loopDone: Promise<void> | undefined;
  /** Set after a lost connection: a fetch's reply may have been lost with tasks it started. */
  private reclaimNeeded = false;
  private abandoned = false;
  /** Rejects on abandon(): a call to an unreachable Redis may never settle (ioredis keeps it queued). */
  private readonly abandonedCall: Promise<never>;
  private rejectAbandoned: ((err: Error) => void) | undefined;
  private readonly fixedArgs: (string | number)[];
  private readonly callKeys: string[];
  /** Script calls sent and not yet answered. */
  private inFlight = 0;
  /** The last fetch started all it asked for: the queue is busy, two calls may be in flight. */
  private lastFull = false;
  private failures = 0;
  /** Most tasks one call starts. */
  private readonly maxWant: number;

  constructor(
    private readonly host: RunnerHost,
    readonly keys: QueueKeys,
    private readonly scripts: ScriptRunner,
    private readonly blocker: Redis,
  ) {
    this.fixedArgs = [keys.base, host.workerId, host.leaseMs];
    this.callKeys = [keys.wait, keys.delayed, keys.active];
    this.maxWant = Math.max(1, Math.ceil(host.concurrency / MAX_CALLS_IN_FLIGHT));
    this.abandonedCall = new Promise<never>((_, reject) => (this.rejectAbandoned = reject));
    this.abandonedCall.catch(() => undefined);
  }

  start(): void {
    this.loopDone = this.loop();
  }

  /** Queues a task's end for the next call and wakes the loop. */
  finished(f: Finish): void {
    this.running.delete(f.id);
    this.pending.push(f);
    this.poke();
  }

  /** Forgets a task whose end is already in Redis (revoked with terminate, lost, handed back). */
  drop(id: string): void {
    this.running.delete(id);
    this.poke();
  }

  /** Called when the command connection came back: check for tasks a lost reply started. */
  reconnected(): void {
    this.reclaimNeeded = true;
    this.poke();
  }

  /** Wakes the loop to re-evaluate (slot freed, close began). */
  poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** Renews the leases of this queue's running tasks; returns id, reason pairs of tasks to stop. */
  async renewLeases(): Promise<string[]> {
    if (this.running.size === 0) return [];
    return this.scripts.run<string[]>(extendLeases, [this.keys.active], [this.keys.base, this.host.leaseMs, this.host.workerId, ...this.running]);
  }

  /** Hands tasks this worker stopped before they ended back to the front of the queue. */
  async requeue(ids: readonly string[]): Promise<number> {
    if (ids.length === 0) return 0;
    return this.scripts.run<number>(requeueScript, [this.keys.wait, this.keys.active], [this.keys.base, this.host.workerId, this.host.resultExpiresMs, ...ids]);
  }

  /** Gives up on ends not stored yet (close() past its timeout with Redis down); the loop stops. */
  abandon(): void {
    this.abandoned = true;
    this.pending = [];
    this.running.clear();
    this.rejectAbandoned?.(new Error('abandoned'));
    this.poke();
  }

  /** Resolves when the loop has stored every finish and no task of this queue runs. */
  async stop(): Promise<void> {
    if (this.dueTimer) clearTimeout(this.dueTimer);
    this.poke();
    await this.loopDone;
  }

  private async loop(): Promise<void> {
    for (;;) {
      if (this.abandoned) {
        if (this.inFlight === 0) return;
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      // A reclaim must see every task this worker knows of, so it waits for the calls in flight.
      if (this.reclaimNeeded && this.inFlight === 0 && this.pending.length === 0) {
        // Not left until a slot frees: tasks a lost fetch reply started have leases running out.
        try {
          await this.reclaim([]);
        } catch {
          // tried again before the next call
        }
      }
      // A second call joins the first only while fetches come back full (a busy queue): a worker
      // just woken by one task would send a second fetch that finds nothing.
      const maxCalls = this.reclaimNeeded || !this.lastFull ? 1 : MAX_CALLS_IN_FLIGHT;
      const canSend = this.inFlight < maxCalls;
      const want = canSend && !this.idle && this.host.accepting() ? Math.min(this.host.freeSlots(), this.maxWant) : 0;
      if (!canSend || (this.pending.length === 0 && want === 0)) {
        if (!this.host.accepting() && this.running.size === 0 && this.pending.length === 0 && this.inFlight === 0) return;
        if (this.idle && this.host.accepting() && this.inFlight === 0) this.block();
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      const fin = this.pending.splice(0, MAX_FINISHES_PER_CALL);
      this.host.reserve(want);
      this.inFlight++;
      void this.call(fin, want).finally(() => {
        this.inFlight--;
        this.poke();
      });
    }
  }

  /**
   * One script call: stores `fin` and starts up to `want` tasks. Up to two run at once, so Redis
   * works on one batch while this process runs the tasks of the other.
   */
  private async call(fin: Finish[], want: number): Promise<void> {
    let reply: Reply;
    try {
      if (this.reclaimNeeded) await this.reclaim(fin);
      const args: (string | number)[] = [...this.fixedArgs, want, Math.floor(Math.random() * 2 ** 31), this.host.resultExpiresMs];
      if (fin.length > 0) {
        args.push(fin.length);
        for (const f of fin) args.push(f.id, f.state, f.field, f.value, f.expireMs, f.retryDelayMs, f.deadReason);
      }
      const script = fin.length === 0 ? fetchScript : finishScript;
      reply = await Promise.race([this.scripts.run<Reply>(script, this.callKeys, args), this.abandonedCall]);
      this.failures = 0;
    } catch (err) {
      this.host.reserve(-want);
      if (this.abandoned) return;
      this.pending.unshift(...fin);
      this.reclaimNeeded = true;
      this.host.reportError(err);
      this.failures++;
      // Back off while Redis is unreachable: this call stays in flight meanwhile, and with
      // reclaimNeeded set that alone keeps the loop from sending (maxCalls is 1).
      await Promise.race([new Promise((r) => setTimeout(r, Math.min(5000, 50 * 2 ** this.failures))), this.abandonedCall]).catch(
        () => undefined,
      );
      return;
    }
    this.host.reserve(-want);
    const [started, limited, revoked, nextDelay, more, outcomes] = reply;
    if (outcomes && outcomes.length > 0) {
      const stored = new Map<string, string>();
      for (let i = 0; i < outcomes.length; i += 2) stored.set(String(outcomes[i]), String(outcomes[i + 1]));
      for (const f of fin) f.stored(stored.get(f.id) ?? 'STALE');
    }
    for (let i = 0; i < started.length; i += STARTED_FIELDS) {
      const task: StartedTask = {
        id: String(started[i]),
        name: String(started[i + 1]),
        argsJson: String(started[i + 2]),
        attempt: Number(started[i + 3]),
        timeLimitMs: Number(started[i + 4]),
        retries: Number(started[i + 5]),
      };
      this.running.add(task.id);
      this.host.launch(this, task);
    }
    for (let i = 0; i < limited.length; i += 4) {
      this.host.rateLimited(this.keys.queue, String(limited[i]), String(limited[i + 1]), String(limited[i + 2]), Number(limited[i + 3]));
    }
    for (let i = 0; i < revoked.length; i += 4) {
      this.host.revoked(this.keys.queue, String(revoked[i]), String(revoked[i + 1]), String(revoked[i + 2]), String(revoked[i + 3]));
    }
    if (want > 0) {
      this.idle = more === 0 && started.length / STARTED_FIELDS < want;
      this.lastFull = started.length / STARTED_FIELDS >= want;
    }
    this.scheduleDue(nextDelay);
  }

  /**
   * Hands back tasks leased to this worker that it does not know it runs (see reclaim-2.lua).
   * Runs only with no other call in flight (the loop's reclaim waits for inFlight 0, and
   * maxCalls is 1 while reclaimNeeded), so `fin` holds every finish not yet stored.
   */
  private async reclaim(fin: readonly Finish[]): Promise<void> {
    const known = [...this.running, ...fin.map((f) => f.id), ...this.pending.map((f) => f.id)];
    const call = this.scripts.run<number>(
      reclaimScript,
      [this.keys.wait, this.keys.active],
      [this.keys.base, this.host.workerId, this.host.resultExpiresMs, ...known],
    );
    await Promise.race([call, this.abandonedCall]);
    this.reclaimNeeded = false;
  }

  /** Wakes the loop when the earliest delayed task is due (a call that did not look keeps the timer it has). */
  private scheduleDue(delayMs: number): void {
    if (delayMs === NOT_LOOKED_UP) return;
    if (this.dueTimer) clearTimeout(this.dueTimer);
    this.dueTimer = undefined;
    if (delayMs < 0 || !this.host.accepting()) return;
    this.dueTimer = setTimeout(() => {
      this.dueTimer = undefined;
      this.idle = false;
      this.poke();
    }, delayMs + 1);
    this.dueTimer.unref();
  }

  /** Blocks until the wait list has an entry (or the safety timeout), then wakes the loop. */
  private block(): void {
    if (this.blocking) return;
    this.blocking = true;
    this.blocker
      .blmove(this.keys.wait, this.keys.wait, 'RIGHT', 'RIGHT', BLOCK_SECONDS)
      .catch(async (err: unknown) => {
        if (!this.host.accepting()) return;
        this.host.reportError(err);
        await new Promise((r) => setTimeout(r, 1000));
      })
      .finally(() => {
        this.blocking = false;
        this.idle = false;
        this.poke();
      });
  }
}
