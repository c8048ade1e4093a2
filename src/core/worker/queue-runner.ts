import type { RedisClient } from '../protocol/connection.js';
import { fromRedis, RedisOutOfMemoryError, RedisRefusedError, WorkerShutdownError } from '../errors.js';
import type { QueueKeys } from '../protocol/queue-keys.js';
import { encodable, sendEncoded, type ScriptRunner } from '../protocol/script-runner.js';
import type { RevokeReason } from '../protocol/task-record.js';
import {
  admit as admitScript,
  declare as declareScript,
  progress as progressScript,
  extendLock as extendLockScript,
  onlyAfter as onlyAfterScript,
  decline as declineScript,
  extendLeases,
  fetch as fetchScript,
  NOT_LOOKED_UP,
  readFetchReply,
  reclaim as reclaimScript,
  requeue as requeueScript,
  recoverLapsed,
  type AdmissionChecks,
  type Claim,
  type EndOutcome,
  type NamedKeys,
  type FetchReply,
  type RunEnd,
  type Begin,
  type RunRef,
  type RunToStop,
  type StaleBegin,
  type StartedRun,
  type Verdict,
  type WorkerIdentity,
} from '../protocol/scripts.js';

/** A run's end waiting for the next call, and who to tell what became of it. */
export interface Finish extends RunEnd {
  /** Called once Redis answered: stored (now or before), stale (not stored: no longer the task's current run). */
  stored(outcome: Exclude<EndOutcome, { kind: 'refused' } | { kind: 'unexpected' }>): void;
}

/** What a runner needs from its worker. */
export interface RunnerHost extends WorkerIdentity {
  /** Tasks the worker runs at once, across its queues. */
  readonly concurrency: number;
  /** False once close() began: fetch nothing more. */
  accepting(): boolean;
  /** False while close() runs or a handler of the worker awaits a task result: reservations (prefetch) go back to the queue at once. */
  holdsReservations(): boolean;
  /** Tasks the worker reserves ahead of running them (prefetch), across its queues, beyond `concurrency`. */
  readonly prefetch: number;
  /** Prefetch 'auto': reserve only while this queue's handlers ran under SHORT_RUN_MS on average. */
  readonly prefetchAuto: boolean;
  /** Free handler slots not yet promised to a fetch in flight. */
  freeSlots(): number;
  /** Free reservation slots (prefetch) not yet held or promised to a fetch in flight. */
  freeReservations(): number;
  /** Promises (n > 0) or gives back (n < 0) handler slots `n` and reservation slots `r` to a fetch in flight or a claim. */
  reserve(n: number, r?: number): void;
  /** A reply brought reservations: begin them if handler slots are free. */
  reservationsAdded(): void;
  launch(runner: QueueRunner, task: StartedRun): void;
  rateLimited(queue: string, id: string, name: string, argsJson: string, delayMs: number): void;
  revoked(queue: string, id: string, name: string, argsJson: string, reason: RevokeReason): void;
  /** Begins of reservations the fetch found no longer current (revoked, recovered): stop those handlers. */
  beginsStale(runner: QueueRunner, stale: readonly StaleBegin[]): void;
  reportError(err: unknown): void;
}

// An idle runner blocks on the wait list at most this long, a safety net for wake-ups that
// come from nowhere it can see (a rate-limited task rescheduled by a worker that then died),
// and the longest a lapsed lease of a dead worker waits for an idle worker to recover it.
const BLOCK_SECONDS = 5;
const BLOCK_TEXT = String(BLOCK_SECONDS);
const MAX_FINISHES_PER_CALL = 500;
// Script calls one runner keeps in flight: with two, Redis runs one batch while this process
// runs the tasks of the other (measured: see BENCHMARKS.md). Each fetches at most half the
// worker's concurrency, so the two batches alternate instead of moving in lockstep.
const MAX_CALLS_IN_FLIGHT = 2;
// How long after a task of the queue last had a lock or rate window its fetches look ahead at
// the ids behind their hints (see takeHints).
const LOOK_AHEAD_MS = 10_000;
// Failed calls in a row after which the claims they carried are let go, to lapse.
const CLAIM_SENDS = 3;
// How long after it last met a rate-limited task (or, met where a reservation was asked for, one with
// an expiry) a runner asks for no reservation (prefetch): such a task is never reserved; met where a
// reservation was asked for, it stays at the front for a call with a handler slot (see start-tasks.lua).
const RATE_PAUSE_MS = 10_000;
// Under prefetch 'auto', a runner reserves only while the handlers it ran lately were short: under
// this many ms on average. A reservation saves one round trip to Redis per task, which only a short task
// notices, and waits for this worker's running tasks while another worker may be idle, which only
// a long task makes costly (docs/decisions.md, "The default prefetch").
export const SHORT_RUN_MS = 100;
// The weight of the last run in the average of the runtimes (an exponential moving average).
const RUNTIME_WEIGHT = 0.2;
// Orders the reservations of all runners of a process: the oldest begins first.
let reservationSeq = 0;

/** A task reserved ahead of running it (prefetch): started in Redis (field rs), its handler not begun. */
interface Reservation {
  task: StartedRun;
  seq: number;
}

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
  /** The lock each run of `running` (or of `pending`) holds, by id: its finish declares it. */
  private readonly locks = new Map<string, string>();
  /** Tasks a fetch claimed for this worker, to start in the next call; their slots stay reserved. */
  private claims: Claim[] = [];
  /** How many of `claims` hold reservation slots (prefetch); the others hold handler slots. */
  private claimsReserving = 0;
  /** Tasks reserved ahead of running them (prefetch), oldest first; they are in `running` too (their leases are renewed). */
  private reservations: Reservation[] = [];
  /** Reservations whose handler began since the last call: the next call tells Redis (fetch-7.lua's begins). */
  private begins: Begin[] = [];
  /** A rate-limited task waits at the front for a handler slot (the last reply's `blocked`): ask for no reservation until a call asks for a handler slot. */
  private needsHandler = false;
  /** When a task of this queue last had a rate limit (ms, this process's clock): reservations pause for RATE_PAUSE_MS after it. */
  private rateAt = 0;
  /** The handlers' runtime on this queue, ms, a moving average of the runs ended here (undefined: none yet): reservations only while it is under SHORT_RUN_MS. */
  private runtimeMs: number | undefined;
  /** Hand-backs of reservations in flight (requeue-3.lua): stop() waits for them. */
  private readonly handingBack = new Set<Promise<void>>();
  /** Ids the last reply saw at the tail of the wait list: the next call names them to start them at once. */
  private hints: readonly string[] = [];
  /** Hints sent in calls still in flight: a second call names others. */
  private readonly hinted = new Set<string>();
  /** The lock and rate window the records of ids of `hints` name, looked up ahead by a fetch. */
  private named = new Map<string, NamedKeys>();
  /** When a task of this queue last needed a lock or rate window declared (ms, this process's clock): while recent, fetches look ahead. */
  private keyedAt = 0;
  /** When lapsed leases were last recovered (ms, this process's clock). */
  private lastRecovery = 0;
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
  /** Script calls sent and not yet answered. */
  private inFlight = 0;
  /** The last fetch started all it asked for: the queue is busy, two calls may be in flight. */
  private lastFull = false;
  private failures = 0;
  private lastRefusalReport = 0;
  /** Most tasks one call starts to run at once (reservations come on top). */
  private readonly maxWant: number;

  constructor(
    private readonly host: RunnerHost,
    readonly keys: QueueKeys,
    private readonly scripts: ScriptRunner,
    private readonly blocker: RedisClient,
  ) {
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
    if (this.running.get(id) === token) {
      this.running.delete(id);
      this.locks.delete(id);
    }
    this.poke();
  }

  /** A handler of this queue ran for `ms`: its runtime joins the average that decides whether to reserve. */
  noteRuntime(ms: number): void {
    this.runtimeMs = this.runtimeMs === undefined ? ms : this.runtimeMs + RUNTIME_WEIGHT * (ms - this.runtimeMs);
  }

  /** Reservations held (prefetch), not begun. */
  get reservationCount(): number {
    return this.reservations.length;
  }

  /** The order of this runner's oldest reservation among all runners' (Infinity: none). */
  oldestReservation(): number {
    return this.reservations[0]?.seq ?? Infinity;
  }

  /** Takes the oldest reservation to begin it now; its begin goes to Redis with the next call. */
  beginReservation(): StartedRun | undefined {
    const r = this.reservations.shift();
    if (!r) return undefined;
    this.begins.push({ id: r.task.id, token: r.task.token, at: performance.now() });
    this.poke();
    return r.task;
  }

  /** The run token of reservation `id` held here, if it is one. */
  reservationToken(id: string): string | undefined {
    return this.reservations.find((r) => r.task.id === id)?.task.token;
  }

  /** Forgets a reservation Redis ended or took back (revoked, lost); returns it, or undefined when it is not one held. */
  dropReservation(id: string, token: string): StartedRun | undefined {
    const i = this.reservations.findIndex((r) => r.task.id === id && r.task.token === token);
    if (i < 0) return undefined;
    const [r] = this.reservations.splice(i, 1);
    this.drop(id, token);
    return r!.task;
  }

  /**
   * Hands the reservations not begun back to the front of the queue (a closing worker, or one whose handler awaits a task result; requeue-3.lua
   * takes their attempt back). A failure is reported: their leases lapse and the recovery puts them
   * back without counting it.
   */
  handBackReservations(): void {
    if (this.reservations.length === 0) return;
    const runs = this.reservations.splice(0).map((r) => ({ id: r.task.id, token: r.task.token }));
    for (const r of runs) {
      this.running.delete(r.id);
      this.locks.delete(r.id);
    }
    // Raced against abandon(): with Redis out of reach the call may never settle, and stop() waits for it.
    const back: Promise<void> = Promise.race([this.requeue(runs), this.abandonedCall]).then(
      () => undefined,
      (err: unknown) => {
        if (!this.abandoned) this.host.reportError(fromRedis(err, `queue ${this.keys.queue}: handing reserved tasks back`));
      },
    );
    this.handingBack.add(back);
    void back.finally(() => {
      this.handingBack.delete(back);
      this.poke();
    });
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

  /** Renews the leases of this queue's running runs, and of runs whose ends wait to be stored; returns the runs to stop (extend-leases-1.lua). */
  async renewLeases(): Promise<RunToStop[]> {
    if (this.running.size === 0 && this.pending.length === 0) return [];
    const runs: RunRef[] = [];
    for (const [id, token] of this.running) runs.push({ id, token });
    for (const f of this.pending) runs.push(f);
    return extendLeases(this.scripts, this.keys, this.host, runs);
  }

  /** Hands runs this worker stopped before they ended back to the front of the queue; returns how many went back. */
  async requeue(runs: readonly RunRef[]): Promise<number> {
    if (runs.length === 0) return 0;
    const { count, problem } = await requeueScript(this.scripts, this.keys, this.host, runs);
    if (problem) {
      throw new RedisRefusedError(
        `handing tasks back to queue ${this.keys.queue}: Redis refused a command (${problem}); they keep their leases and are recovered when those lapse`,
      );
    }
    return count;
  }

  /** Admits a run of a message that lacks the lock or rate limit of the worker's definition (admit-6.lua). */
  async admit(run: RunRef, checks: AdmissionChecks): Promise<Verdict> {
    const verdict = await admitScript(this.scripts, this.keys, this.host, run, checks);
    // The run now holds the worker's lock, which its finish declares.
    if (verdict.verdict === 'RUN' && checks.lock && this.running.get(run.id) === run.token) this.locks.set(run.id, checks.lock.key);
    return verdict;
  }

  /** Hands back a run of a task this worker does not run (decline-7.lua). */
  decline(run: RunRef, graceMs: number, message: string): Promise<Verdict> {
    return declineScript(this.scripts, this.keys, this.host, run, graceMs, message);
  }

  /** Declares the task names this worker runs on this queue, valid for `validMs` (declare-1.lua). */
  declare(names: readonly string[], validMs: number): Promise<void> {
    return declareScript(this.scripts, this.keys, names, validMs);
  }

  /** Stores a running task's progress for its run (progress-2.lua). */
  async progress(id: string, token: string, json: string): Promise<void> {
    await progressScript(this.scripts, this.keys, id, token, json, this.host.eventsCap);
  }

  /** The unique lock a running task of this queue started (or was admitted) under, if any. */
  lockOf(id: string): string | undefined {
    return this.locks.get(id);
  }

  /** Gives the lock `lockKey` `ttlMs` from now if task `id` still holds it (extend-lock-2.lua). */
  async extendLock(id: string, lockKey: string, ttlMs: number): Promise<boolean> {
    return (await extendLockScript(this.scripts, this.keys, lockKey, id, ttlMs, this.host.eventsCap)).extended;
  }

  /** True when task `id` takes the key for `intervalMs` (only-after-1.lua). */
  onlyAfter(id: string, key: string, intervalMs: number): Promise<boolean> {
    return onlyAfterScript(this.scripts, this.keys, key, id, intervalMs);
  }

  /** The connection's scripts, for the named limits' calls (limit-2.lua): a limit's keys lie in a slot of their own, not the queue's. */
  get limitScripts(): ScriptRunner {
    return this.scripts;
  }

  /** Gives up on ends not stored yet (close() past its timeout with Redis down); the loop stops. */
  abandon(): void {
    this.abandoned = true;
    this.pending = [];
    this.running.clear();
    this.locks.clear();
    this.claims = [];
    this.claimsReserving = 0;
    this.reservations = [];
    this.begins = [];
    this.rejectAbandoned?.(new WorkerShutdownError(this.host.workerId));
    this.poke();
  }

  /** Resolves when the loop has stored every finish and no task of this queue runs. */
  async stop(): Promise<void> {
    if (this.dueTimer) clearTimeout(this.dueTimer);
    this.poke();
    await this.loopDone;
    await Promise.all(this.handingBack);
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
      const maxCalls = this.reclaimNeeded || !this.lastFull || !this.nextHintsNamed() ? 1 : MAX_CALLS_IN_FLIGHT;
      const canSend = this.inFlight < maxCalls;
      const accepting = this.host.accepting();
      const asking = canSend && !this.idle && accepting;
      const fresh = asking ? Math.min(this.host.freeSlots(), this.maxWant) : 0;
      const reserving =
        this.host.prefetch > 0 &&
        (!this.host.prefetchAuto || (this.runtimeMs !== undefined && this.runtimeMs < SHORT_RUN_MS)) &&
        (!this.needsHandler || fresh > 0) &&
        Date.now() - this.rateAt >= RATE_PAUSE_MS;
      const freshReserving = asking && reserving ? this.host.freeReservations() : 0;
      if (!canSend || (this.pending.length === 0 && fresh + freshReserving === 0 && this.claims.length === 0 && this.begins.length === 0)) {
        if (!accepting && this.running.size === 0 && this.pending.length === 0 && this.inFlight === 0 && this.claims.length === 0 && this.begins.length === 0) return;
        if (this.idle && accepting && this.inFlight === 0) this.block();
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      const fin = this.pending.splice(0, MAX_FINISHES_PER_CALL);
      // Claims held go with this call: started while the worker accepts, else released.
      const claims = this.claims;
      const claimsReserving = this.claimsReserving;
      this.claims = [];
      this.claimsReserving = 0;
      const begins = this.begins;
      this.begins = [];
      this.host.reserve(fresh, freshReserving);
      if (fresh > 0) this.needsHandler = false;
      this.inFlight++;
      void this.call(fin, fresh, freshReserving, claims, claimsReserving, begins, accepting).finally(() => {
        this.inFlight--;
        this.poke();
      });
    }
  }

  /** Whether a task of this queue had a lock or rate window lately: fetches then look ahead (see takeHints). */
  private lookingAhead(): boolean {
    return Date.now() - this.keyedAt < LOOK_AHEAD_MS;
  }

  /**
   * Whether a second call may go now without starting its tasks a call late: while tasks of this
   * queue have locks or rate windows, the hints it would name must have their keys looked up
   * (a call in flight is looking them up: its reply comes first). Otherwise always.
   */
  private nextHintsNamed(): boolean {
    if (!this.lookingAhead()) return true;
    for (const id of this.hints) {
      if (this.hinted.has(id) || this.running.has(id)) continue;
      return this.named.has(id);
    }
    return true;
  }

  /**
   * Up to `n` ids of the last peek that no call in flight names, with the keys their records
   * name when a fetch looked them up; and, while tasks of this queue have had locks or rate
   * windows lately, up to `2n` more ids to look ahead at, so the call that starts them can
   * declare their keys (else such a task takes a second call: claimed, then started).
   */
  private takeHints(n: number): { hints: NamedKeys[]; look: string[] } {
    const hints: NamedKeys[] = [];
    const look: string[] = [];
    const ahead = this.lookingAhead();
    // Two calls may be in flight, and the second is sent before the first's reply: look far
    // enough ahead for both (each id is looked at once: `named` keeps what was looked up).
    for (const id of this.hints) {
      if (hints.length >= n && (!ahead || look.length >= 2 * n)) break;
      if (this.hinted.has(id) || this.running.has(id)) continue;
      if (hints.length < n) {
        hints.push(this.named.get(id) ?? { id, lockKey: '', rateKey: '' });
        this.hinted.add(id);
      } else if (!this.named.has(id)) {
        look.push(id);
      }
    }
    return { hints, look };
  }

  /**
   * One script call: stores `fin` and starts up to `fresh` tasks beside the `claims` held (or
   * releases those when the worker no longer accepts). Up to two run at once, so Redis works on
   * one batch while this process runs the tasks of the other.
   */
  private async call(
    fin: Finish[],
    freshRunning: number,
    freshReserving: number,
    claims: Claim[],
    claimsReserving: number,
    begins: Begin[],
    accepting: boolean,
  ): Promise<void> {
    let reply: FetchReply;
    const fresh = freshRunning + freshReserving;
    const want = accepting ? fresh + claims.length : 0;
    // Slots this call holds: handler slots (tasks that begin at once) and reservation slots, the
    // claims' included. The script starts the first `handlers` as runs, the rest as reservations.
    const handlers = freshRunning + claims.length - claimsReserving;
    const reserving = freshReserving + claimsReserving;
    const { hints, look } = fresh > 0 ? this.takeHints(fresh) : { hints: [], look: [] };
    try {
      if (this.reclaimNeeded) await this.reclaim(fin);
      if (fin.length === 0 && want === 0 && claims.length === 0 && begins.length === 0) return; // nothing reserved
      const peek = accepting ? (this.maxWant + this.host.prefetch) * (this.lookingAhead() ? 3 : MAX_CALLS_IN_FLIGHT) : 0;
      const raw = await Promise.race([
        fetchScript(this.scripts, this.keys, this.host, want, fin, { locks: this.locks, claims, hints, look, peek, handlers, begins }),
        this.abandonedCall,
      ]);
      reply = readFetchReply(raw, fin.length);
    } catch (err) {
      for (const h of hints) this.hinted.delete(h.id);
      this.host.reserve(-freshRunning, -freshReserving);
      if (this.abandoned) return;
      // Begins not stored go with the next call (a begin of a run no longer current changes nothing).
      this.begins.unshift(...begins);
      // Claims the lost call may have started are no longer the caller's (their stamps are gone):
      // sending them again does nothing; the runs it started are reclaimed. After a few failures
      // in a row they are let go (their slots freed) and lapse: a claim that makes every call fail
      // (a record Redis refuses to serve) must not stop the queue for good. Hints go too: the
      // next reply brings fresh ones.
      if (this.failures < CLAIM_SENDS) {
        this.claims.unshift(...claims);
        this.claimsReserving += claimsReserving;
      } else this.host.reserve(-(claims.length - claimsReserving), -claimsReserving);
      this.hints = [];
      this.named.clear();
      this.pending.unshift(...fin);
      this.reclaimNeeded = true;
      this.host.reportError(fromRedis(err, `queue ${this.keys.queue}: fetching and storing ends`));
      await this.backOff();
      return;
    }
    for (const h of hints) this.hinted.delete(h.id);
    // Of the tasks started, the reservations are marked; the others run at once. The slots of the
    // claims still held stay promised: handler slots first, then reservation slots.
    let reserved = 0;
    for (const task of reply.started) if (task.reserved) reserved++;
    const running = reply.started.length - reserved;
    const claimsRunning = Math.max(0, Math.min(reply.claims.length, handlers - running));
    const nowReserving = reply.claims.length - claimsRunning;
    this.claimsReserving += nowReserving;
    if (reply.claims.length > 0) {
      this.claims.push(...reply.claims);
      if (reply.claims.some((c) => c.lockKey !== '' || c.rateKey !== '')) this.keyedAt = Date.now();
    }
    if (accepting) {
      this.hints = reply.peek;
      // Keys looked up for ids still at the tail are kept for the next call; the rest go.
      if (this.named.size > 0 || reply.looked.length > 0) {
        const named = new Map<string, NamedKeys>();
        for (const n of reply.looked) this.named.set(n.id, n);
        for (const id of reply.peek) {
          const n = this.named.get(id);
          if (n) named.set(id, n);
        }
        this.named = named;
      }
    }
    // Ends Redis refused (nothing stored) go back to be sent again; the run token tells a
    // second send apart from a first that was stored after all.
    const refused: Finish[] = [];
    const refusals: string[] = reply.problem ? [reply.problem] : [];
    fin.forEach((f, i) => {
      const outcome = reply.outcomes[i]!;
      // An outcome this version does not know: reported, not sent again (Redis holds whatever the script did).
      if (outcome.kind === 'unexpected') return this.host.reportError(outcome.error);
      if (outcome.kind !== 'refused') {
        if (!this.running.has(f.id)) this.locks.delete(f.id);
        return f.stored(outcome);
      }
      refused.push(f);
      refusals.push(`storing the end of task ${f.id}: ${outcome.message}`);
    });
    if (refused.length > 0) this.pending.unshift(...refused);
    if (reply.started.length > 0) {
      for (const task of reply.started) {
        if (task.carriesLock || task.carriesRate) this.keyedAt = Date.now();
        if (task.carriesLock) {
          // A task starts only in a call that declared the lock its record names: a claim's or a hint's.
          const lock = claims.find((c) => c.id === task.id)?.lockKey || hints.find((h) => h.id === task.id)?.lockKey;
          if (lock) this.locks.set(task.id, lock);
        }
        this.running.set(task.id, task.token);
        if (task.reserved) this.reservations.push({ task, seq: reservationSeq++ });
        else this.host.launch(this, task);
      }
    }
    // After the runs began: slots given back may begin older reservations, never taking the slots of these runs.
    this.host.reserve(claimsRunning - handlers, nowReserving - reserving);
    if (reserved > 0) {
      // They begin as handler slots free; a worker that began closing meanwhile, or one whose
      // handler awaits a task result, hands back at once those that cannot begin now.
      if (this.host.accepting()) this.host.reservationsAdded();
      if (!this.host.holdsReservations()) this.handBackReservations();
    }
    for (const t of reply.limited) this.host.rateLimited(this.keys.queue, t.id, t.name, t.argsJson, t.delayMs);
    for (const t of reply.revoked) this.host.revoked(this.keys.queue, t.id, t.name, t.argsJson, t.reason);
    if (reply.staleBegins.length > 0) this.host.beginsStale(this, reply.staleBegins);
    if (reply.lapsed.length > 0) this.recover(reply.lapsed);
    if (reply.blocked) {
      this.needsHandler = true;
      this.rateAt = Date.now();
    }
    if (reply.claims.some((c) => c.rateKey !== '') || reply.looked.some((n) => n.rateKey !== '') || reply.started.some((t) => t.carriesRate)) this.rateAt = Date.now();
    if (want > 0) {
      const taken = reply.started.length + reply.claims.length;
      this.idle = !reply.more && taken < want;
      this.lastFull = taken >= want;
    }
    this.scheduleDue(reply.nextDelayMs);
    if (refusals.length > 0) this.reportRefusal(refusals.join('; '));
    if (refused.length > 0 || (reply.problem && reply.started.length < want)) {
      // Redis refused commands of the call (out of memory, an ACL, a Cluster slot on the move):
      // ends it could not store are kept here, tasks it could not start stay in the wait list,
      // and both are tried again after a pause. (A call that started all it wanted despite a
      // refusal goes on at once: the queue is moving.)
      await this.backOff();
    } else {
      this.failures = 0;
    }
  }

  /**
   * Recovers leases that lapsed (their workers died or hung), at most once a second per queue:
   * every worker's fetch sees them, and the first recovery takes them. This worker's own runs
   * are left out: it renews them, and a lease of its own that lapsed is its to finish.
   */
  private recover(lapsed: readonly string[]): void {
    const now = Date.now();
    if (now - this.lastRecovery < 1000) return;
    const ids = lapsed.filter((id) => !this.running.has(id));
    if (ids.length === 0) return;
    this.lastRecovery = now;
    recoverLapsed(this.scripts, this.keys, this.host, ids).then(
      (done) => {
        if (done.problem) this.reportRefusal(`recovering lapsed leases: ${done.problem}`);
        // Recovered tasks are back in the wait list: an idle worker fetches them.
        if (done.outcomes.some((o) => o.outcome === 'requeued')) {
          this.idle = false;
          this.poke();
        }
      },
      (err: unknown) => this.host.reportError(fromRedis(err, `queue ${this.keys.queue}: recovering lapsed leases`)),
    );
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
    this.host.reportError(/\bOOM /.test(what) ? new RedisOutOfMemoryError(where, { refused: what }) : new RedisRefusedError(`${where}: Redis refused a command: ${what}`));
  }

  /** Waits before the next call after a failure: 100 ms, 200 ms, ... up to 5 s (the call stays in flight meanwhile). */
  private async backOff(): Promise<void> {
    this.failures++;
    await Promise.race([new Promise((r) => setTimeout(r, Math.min(5000, 50 * 2 ** this.failures))), this.abandonedCall]).catch(
      () => undefined,
    );
  }

  /**
   * Hands back tasks leased to this worker that it does not know it runs (see reclaim-3.lua).
   * Runs only with no other call in flight (the loop's reclaim waits for inFlight 0, and
   * maxCalls is 1 while reclaimNeeded), so `fin` holds every finish not yet stored.
   */
  private async reclaim(fin: readonly Finish[]): Promise<void> {
    const known: RunRef[] = [];
    for (const [id, token] of this.running) known.push({ id, token });
    for (const f of fin) known.push(f);
    for (const f of this.pending) known.push(f);
    const { problem } = await Promise.race([reclaimScript(this.scripts, this.keys, this.host, known), this.abandonedCall]);
    this.reclaimNeeded = false;
    if (problem) {
      this.host.reportError(
        new RedisRefusedError(
          `queue ${this.keys.queue}: reclaiming tasks: Redis refused a command (${problem}); those tasks keep their leases and are recovered when those lapse`,
        ),
      );
    }
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
    // One .then with both handlers: a then/catch/finally chain cost five promises per wake-up
    // (BENCHMARKS.md, "Allocation per task").
    const wait = this.keys.wait;
    const moved = encodable(this.blocker, 'blmove')
      ? (sendEncoded(this.blocker, 'blmove', [wait, wait, 'RIGHT', 'RIGHT', BLOCK_TEXT]) as Promise<string | null>)
      : this.blocker.blmove(wait, wait, 'RIGHT', 'RIGHT', BLOCK_SECONDS);
    moved.then(
      (id) => {
        // The id at the tail: the next call names it, and starts it at once if still there.
        if (id) this.hints = [id];
        this.unblocked();
      },
      (err: unknown) => {
        if (!this.host.accepting()) return this.unblocked();
        this.host.reportError(fromRedis(err, `queue ${this.keys.queue}: waiting for tasks`));
        setTimeout(() => this.unblocked(), 1000);
      },
    );
  }

  /** The blocking wait ended (an entry, the timeout, or a failure): the loop looks again. */
  private unblocked(): void {
    this.blocking = false;
    this.idle = false;
    this.poke();
  }
}
