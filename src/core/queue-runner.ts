import type { Redis } from 'ioredis';
import type { LockCheck, RateCheck } from './call-checks.js';
import { RedisOutOfMemoryError } from './errors.js';
import type { QueueKeys } from './queue-keys.js';
import type { ScriptRunner } from './script-runner.js';
import {
  admit as admitScript,
  declare as declareScript,
  decline as declineScript,
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
  /** This run's token: its lease, its finish and revoke signals for it carry it. */
  token: string;
  /** The message carried a unique lock (field lk). */
  carriesLock: boolean;
  /** The message carried a rate limit (field rk). */
  carriesRate: boolean;
}

/** What a task's run came to, waiting to be written by the next finish call. */
export interface Finish {
  id: string;
  /** The token of the run that ended. */
  token: string;
  state: 'SUCCESS' | 'FAILURE' | 'RETRY';
  /** 'r' (result), 'e' (error) or '' (no value). */
  field: 'r' | 'e' | '';
  value: string;
  expireMs: number;
  /** Delay before the retry, for state RETRY. */
  retryDelayMs: number;
  /** Non-empty: also keep the task in the dead-letter list with this reason. */
  deadReason: string;
  /**
   * Called once Redis answered: the state stored, or 'STALE' when the run was no longer the
   * task's current run (nothing stored; `detail` is the state Redis holds).
   */
  stored(outcome: string, detail: string): void;
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

/** What fetch-3 and finish-3 return (see includes/start-tasks.lua). */
type Reply = [
  started: (string | number)[],
  limited: (string | number)[],
  revoked: (string | number)[],
  nextDelay: number,
  more: number,
  outcomes: string[],
  unplaced: string[],
  problem: string,
];

/** A verdict of admit-3.lua or decline-4.lua, and its detail. */
export type Verdict = [verdict: string, detail: string];

// An idle runner blocks on the wait list at most this long, a safety net for wake-ups that
// come from nowhere it can see (a rate-limited task rescheduled by a worker that then died),
// and the longest a lapsed lease of a dead worker waits for an idle worker to recover it.
const BLOCK_SECONDS = 5;
const MAX_FINISHES_PER_CALL = 500;
// Script calls one runner keeps in flight: with two, Redis runs one batch while this process
// runs the tasks of the other (measured: see BENCHMARKS.md). Each fetches at most half the
// worker's concurrency, so the two batches alternate instead of moving in lockstep.
const MAX_CALLS_IN_FLIGHT = 2;
const STARTED_FIELDS = 8;
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
  /** The tasks of this queue that this worker runs now: id -> run token. */
  readonly running = new Map<string, string>();
  private pending: Finish[] = [];
  /** Ids a call popped and could not place; put back at the front of the wait list before the next call. */
  private unplaced: string[] = [];
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
  private lastRefusalReport = 0;
  /** Most tasks one call starts. */
  private readonly maxWant: number;

  constructor(
    private readonly host: RunnerHost,
    readonly keys: QueueKeys,
    private readonly scripts: ScriptRunner,
    private readonly blocker: Redis,
    private readonly commands: Redis,
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
    if (this.running.get(f.id) === f.token) this.running.delete(f.id);
    this.pending.push(f);
    this.poke();
  }

  /** Forgets a run whose end is in Redis already, or that is no longer current (revoked with terminate, lost, handed back, declined). */
  drop(id: string, token: string): void {
    if (this.running.get(id) === token) this.running.delete(id);
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

  /** Renews the leases of this queue's running tasks; returns the runs to stop, and why (see extend-leases-1.lua). */
  async renewLeases(): Promise<{ id: string; token: string; reason: string; detail: string }[]> {
    if (this.running.size === 0 && this.pending.length === 0) return [];
    const runs: string[] = [];
    for (const [id, token] of this.running) runs.push(id, token);
    // Ends waiting to be stored (Redis refused them, or is unreachable) keep their leases too.
    for (const f of this.pending) runs.push(f.id, f.token);
    const stop = await this.scripts.run<string[]>(extendLeases, [this.keys.active], [this.keys.base, this.host.leaseMs, this.host.workerId, ...runs]);
    const out = [];
    for (let i = 0; i < stop.length; i += 4) {
      out.push({ id: String(stop[i]), token: String(stop[i + 1]), reason: String(stop[i + 2]), detail: String(stop[i + 3] ?? '') });
    }
    return out;
  }

  /** Hands runs this worker stopped before they ended back to the front of the queue; returns how many went back. */
  async requeue(runs: readonly StartedTask[]): Promise<number> {
    if (runs.length === 0) return 0;
    const [count, problem] = await this.scripts.run<[number, string]>(
      requeueScript,
      [this.keys.wait, this.keys.active],
      [this.keys.base, this.host.workerId, this.host.resultExpiresMs, ...runs.flatMap((t) => [t.id, t.token])],
    );
    if (problem) throw new Error(`handing tasks back to queue ${this.keys.queue}: Redis refused a command (${problem}); they keep their leases and are recovered when those lapse`);
    return count;
  }

  /** Admits a run of a message that lacks the lock or rate limit of the worker's definition (see admit-3.lua). */
  admit(task: StartedTask, lock: LockCheck | undefined, rate: RateCheck | undefined): Promise<Verdict> {
    return this.scripts.run<Verdict>(
      admitScript,
      [this.keys.wait, this.keys.delayed, this.keys.active],
      [
        this.keys.base,
        this.host.workerId,
        task.id,
        task.token,
        lock?.key ?? '',
        lock?.ttlMs ?? 0,
        lock?.waitForExpiry ? '1' : '',
        rate?.key ?? '',
        rate?.limit ?? 0,
        rate?.periodMs ?? 0,
        Math.floor(Math.random() * 2 ** 31),
        this.host.resultExpiresMs,
      ],
    );
  }

  /** Hands back a run of a task this worker does not declare (see decline-4.lua). */
  decline(task: StartedTask, graceMs: number, message: string): Promise<Verdict> {
    return this.scripts.run<Verdict>(
      declineScript,
      [this.keys.wait, this.keys.delayed, this.keys.active, this.keys.names],
      [this.keys.base, this.host.workerId, task.id, task.token, graceMs, this.host.resultExpiresMs, message, Math.floor(Math.random() * 2 ** 31)],
    );
  }

  /** Declares the task names this worker runs on this queue, valid for `validMs` (see declare-1.lua). */
  async declare(names: readonly string[], validMs: number): Promise<void> {
    await this.scripts.run<number>(declareScript, [this.keys.names], [validMs, ...names]);
  }

  /** Gives up on ends not stored yet (close() past its timeout with Redis down); the loop stops. */
  abandon(): void {
    this.abandoned = true;
    if (this.unplaced.length > 0) {
      this.host.reportError(
        new Error(
          `queue ${this.keys.queue}: tasks ${this.unplaced.join(', ')} were taken from the wait list and could not be put back before the worker closed; they are in no list now (their records say PENDING): send them again`,
        ),
      );
    }
    this.unplaced = [];
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
      if (!canSend || (this.pending.length === 0 && want === 0 && this.unplaced.length === 0)) {
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
      if (this.unplaced.length > 0) await this.putBack();
      if (this.reclaimNeeded) await this.reclaim(fin);
      if (fin.length === 0 && want === 0) {
        this.host.reserve(-want);
        return;
      }
      const args: (string | number)[] = [...this.fixedArgs, want, Math.floor(Math.random() * 2 ** 31), this.host.resultExpiresMs];
      if (fin.length > 0) {
        args.push(fin.length);
        for (const f of fin) args.push(f.id, f.token, f.state, f.field, f.value, f.expireMs, f.retryDelayMs, f.deadReason);
      }
      const script = fin.length === 0 ? fetchScript : finishScript;
      reply = await Promise.race([this.scripts.run<Reply>(script, this.callKeys, args), this.abandonedCall]);
    } catch (err) {
      this.host.reserve(-want);
      if (this.abandoned) return;
      this.pending.unshift(...fin);
      this.reclaimNeeded = true;
      this.host.reportError(err);
      await this.backOff();
      return;
    }
    this.host.reserve(-want);
    const [started, limited, revoked, nextDelay, more, outcomes, unplaced, problem] = reply;
    // Finishes Redis refused (nothing stored) go back to be sent again; the run token tells a
    // second send apart from a first that was stored after all.
    const refused: Finish[] = [];
    const refusals: string[] = problem ? [String(problem)] : [];
    fin.forEach((f, i) => {
      const outcome = String(outcomes[2 * i] ?? 'ERROR');
      const detail = String(outcomes[2 * i + 1] ?? '');
      if (outcome !== 'ERROR') return f.stored(outcome, detail);
      refused.push(f);
      refusals.push(`storing the end of task ${f.id}: ${detail}`);
    });
    if (refused.length > 0) this.pending.unshift(...refused);
    if (unplaced.length > 0) {
      // Back in the list at once: an id held here is lost if this process dies.
      this.unplaced.push(...unplaced.map(String));
      await this.putBack().catch((err: unknown) => this.host.reportError(err));
    }
    for (let i = 0; i < started.length; i += STARTED_FIELDS) {
      const carried = String(started[i + 7]);
      const task: StartedTask = {
        id: String(started[i]),
        name: String(started[i + 1]),
        argsJson: String(started[i + 2]),
        attempt: Number(started[i + 3]),
        timeLimitMs: Number(started[i + 4]),
        retries: Number(started[i + 5]),
        token: String(started[i + 6]),
        carriesLock: carried.includes('u'),
        carriesRate: carried.includes('r'),
      };
      this.running.set(task.id, task.token);
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
    if (refusals.length > 0) this.reportRefusal(refusals.join('; '));
    if (refused.length > 0 || this.unplaced.length > 0 || (problem && started.length === 0 && fin.length === 0)) {
      // Redis refused commands of the call (out of memory, an ACL, a Cluster slot on the move)
      // and the call got nothing done: what it could not do is kept here and tried again after a pause.
      await this.backOff();
    } else {
      this.failures = 0;
    }
  }

  /**
   * Reports commands Redis refused during a call, at most once a second: a worker that keeps
   * working around a refusal (a full Redis that will not move due delayed tasks) would otherwise
   * report it on every call.
   */
  private reportRefusal(what: string): void {
    const now = Date.now();
    if (now - this.lastRefusalReport < 1000) return;
    this.lastRefusalReport = now;
    const where = `queue ${this.keys.queue}`;
    // A full Redis is named as such, so alerts on HEIMDALL_REDIS_OOM see it.
    this.host.reportError(/\bOOM /.test(what) ? new RedisOutOfMemoryError(where, { refused: what }) : new Error(`${where}: Redis refused a command: ${what}`));
  }

  /** Waits before the next call after a failure: 100 ms, 200 ms, ... up to 5 s (the call stays in flight meanwhile). */
  private async backOff(): Promise<void> {
    this.failures++;
    await Promise.race([new Promise((r) => setTimeout(r, Math.min(5000, 50 * 2 ** this.failures))), this.abandonedCall]).catch(
      () => undefined,
    );
  }

  /**
   * Puts ids a call could not place back at the front of the wait list, in the order they were
   * popped (a plain RPUSH, which a Cluster client routes to wherever the list lives now).
   */
  private async putBack(): Promise<void> {
    // Taken out first, so two calls in flight never push the same ids; back in front on failure.
    const ids = this.unplaced.splice(0);
    if (ids.length === 0) return;
    try {
      await Promise.race([this.commands.rpush(this.keys.wait, ...[...ids].reverse()), this.abandonedCall]);
    } catch (err) {
      if (!this.abandoned) this.unplaced.unshift(...ids);
      throw err;
    }
  }

  /**
   * Hands back tasks leased to this worker that it does not know it runs (see reclaim-2.lua).
   * Runs only with no other call in flight (the loop's reclaim waits for inFlight 0, and
   * maxCalls is 1 while reclaimNeeded), so `fin` holds every finish not yet stored.
   */
  private async reclaim(fin: readonly Finish[]): Promise<void> {
    const known: string[] = [];
    for (const [id, token] of this.running) known.push(id, token);
    for (const f of [...fin, ...this.pending]) known.push(f.id, f.token);
    const call = this.scripts.run<[number, string]>(
      reclaimScript,
      [this.keys.wait, this.keys.active],
      [this.keys.base, this.host.workerId, this.host.resultExpiresMs, ...known],
    );
    const [, problem] = await Promise.race([call, this.abandonedCall]);
    this.reclaimNeeded = false;
    if (problem) this.host.reportError(new Error(`queue ${this.keys.queue}: reclaiming tasks: Redis refused a command (${problem}); those tasks keep their leases and are recovered when those lapse`));
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
