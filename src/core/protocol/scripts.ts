// One typed function per Lua script: packs its KEYS and ARGV as the script's header says, and
// decodes its reply. The scripts' headers (src/redis-scripts/*.lua) are the contract; nothing
// else in the library builds a script's arguments or reads its reply.
import { isWrongType, UnexpectedReplyError } from '../errors.js';
import type { QueueKeys } from './queue-keys.js';
import { FIELDS, LOCK_FIELDS, lockOfRecord } from './task-fields.js';
import { END_OUTCOMES, KEYS_CHANGED, REVOKE_CODES, unexpectedReply, VERDICTS } from './reply-codes.js';
import type { ScriptRunner } from './script-runner.js';
import type { RevokeReason, TaskState } from './task-record.js';
import {
  admit as admitScript,
  deadLetter as deadLetterScript,
  declare as declareScript,
  decline as declineScript,
  enqueue as enqueueScript,
  extendLeases as extendLeasesScript,
  fetch as fetchScript,
  forget as forgetScript,
  heartbeat as heartbeatScript,
  progress as progressScript,
  purge as purgeScript,
  reclaim as reclaimScript,
  recover as recoverScript,
  releaseLock as releaseLockScript,
  extendLock as extendLockScript,
  dropTurns as dropTurnsScript,
  onlyAfter as onlyAfterScript,
  requeue as requeueScript,
  revoke as revokeScript,
  type LuaScript,
} from '../../redis-scripts/scripts.generated.js';

/** A random whole number for a script call: the rate-limit jitter's seed, and the run token of the tasks the call starts. */
function seed(): number {
  return Math.floor(Math.random() * 2 ** 31);
}

// ----------------------------------------------------------------------- keys a record names

/** How many times a call reads the keys a record names and calls its script, each answered KEYS_CHANGED, before it gives up. */
const KEY_READS = 5;

/**
 * Runs `call` again while its script answers KEYS_CHANGED, at most KEY_READS times in all. Each
 * call reads the lock and rate window the record names afresh and declares them (the
 * read-then-verify of includes/declared.lua): a record replaced between the read and the script
 * (its id reused by a new task) costs one more read; one that names other keys at every call is
 * an UnexpectedReplyError naming `what`.
 */
async function withNamedKeys<T extends readonly unknown[]>(script: string, what: string, call: () => Promise<T>): Promise<T> {
  for (let reads = 1; ; reads++) {
    const reply = await call();
    if (reply[0] !== KEYS_CHANGED) return reply;
    if (reads >= KEY_READS) {
      throw new UnexpectedReplyError(
        `the ${script} script answered ${KEYS_CHANGED} ${reads} times: ${what} named another lock or rate window at each call than was read just before it`,
      );
    }
  }
}

// ---------------------------------------------------------------------------------- enqueue

/** One task of an enqueue call (enqueue-3.lua). */
export interface EnqueueTask {
  id: string;
  /** Ms from now on the Redis clock (0: none). */
  countdownMs: number;
  /** Epoch ms (0: none); wins over countdownMs. */
  etaMs: number;
  /** '' when not unique. */
  lockKey: string;
  /** 0 when not unique. */
  lockTtlMs: number;
  /** The message's field, value pairs (task-record.ts encodeMessage). */
  fields: readonly (string | number)[];
  /**
   * With a conflict mode (field cm): the lock's holder and the task pending behind it as this
   * producer last saw them ('' none; enqueue-3 answers code 8 with the real ones when they
   * differ), and the result lifetime of a task the call replaces, ms.
   */
  conflict?: { holder: string; pending: string; expiresMs: number } | undefined;
}

/** What enqueue-3.lua answered for one task (see its header and reply-codes.ts). */
export interface EnqueueOutcome {
  code: number;
  /** The holder's id (codes 2, 7, 8), the replaced task's id (6) or Redis's message (codes 4, 5). */
  detail: string;
  /** The holder's lock TTL in ms (code 2). */
  pttlMs: number;
  /** The third item as sent: the replaced pending task's id (code 7), the pending task's id (8); '' or absent: none. */
  other?: string;
}

/** What one task adds to an enqueue call: the keys it declares and its arguments. */
export interface EnqueueItems {
  /** Its record, then its unique lock when it has one: one or two keys. */
  readonly keys: readonly string[];
  readonly args: readonly (string | number)[];
}

/** The keys and arguments one task adds to an enqueue call of queue `keys`, in the script's layout. */
export function enqueueItems(keys: QueueKeys, t: EnqueueTask): EnqueueItems {
  const c = t.conflict;
  if (c === undefined || t.lockKey === '') {
    return {
      keys: t.lockKey === '' ? [keys.task(t.id)] : [keys.task(t.id), t.lockKey],
      args: [t.id, t.countdownMs, t.etaMs, t.lockKey, t.lockTtlMs, t.fields.length, ...t.fields],
    };
  }
  // The lock's pending pointer, then the records of the holder and pending task this producer saw.
  const declared = [keys.task(t.id), t.lockKey, keys.next(t.lockKey)];
  if (c.holder !== '') declared.push(keys.task(c.holder));
  if (c.pending !== '') declared.push(keys.task(c.pending));
  const fields = [...t.fields, FIELDS.conflictHolder, c.holder, FIELDS.conflictPending, c.pending, FIELDS.conflictExpires, c.expiresMs];
  return { keys: declared, args: [t.id, t.countdownMs, t.etaMs, t.lockKey, t.lockTtlMs, fields.length, ...fields] };
}

/**
 * Enqueues a batch of tasks of one queue, each on its own (`items`: enqueueItems of each), with
 * every key the script touches declared: the queue's wait list, delayed set and event stream,
 * then each task's record and lock. `eventsCap`: the cap of the queue's event stream, 0 for no
 * events (includes/events.lua).
 */
export async function enqueue(runner: ScriptRunner, keys: QueueKeys, items: readonly EnqueueItems[], eventsCap: number): Promise<EnqueueOutcome[]> {
  const declared: string[] = [keys.wait, keys.delayed, keys.events];
  const argv: (string | number)[] = [keys.base, items.length];
  for (const item of items) {
    for (const k of item.keys) declared.push(k);
    for (const a of item.args) argv.push(a);
  }
  argv.push(eventsCap);
  const reply = await runner.run<(string | number)[]>(enqueueScript, declared, argv);
  const out: EnqueueOutcome[] = [];
  for (let i = 0; i < items.length; i++) {
    const third = reply[3 * i + 2];
    out.push({ code: Number(reply[3 * i]), detail: String(reply[3 * i + 1] ?? ''), pttlMs: Number(third) || 0, other: typeof third === 'string' ? third : '' });
  }
  return out;
}

// ------------------------------------------------------------------------------ fetch/finish

/** The worker a call is made for. */
export interface WorkerIdentity {
  readonly workerId: string;
  readonly leaseMs: number;
  readonly resultExpiresMs: number;
  /** The cap of the queues' event streams, in entries; 0: no events (includes/events.lua). */
  readonly eventsCap: number;
}

/** A run the fetch started. */
export interface StartedRun {
  id: string;
  name: string;
  argsJson: string;
  attempt: number;
  /** Time limit of this run in ms from the message (field tl; 0 for none); undefined when the message has none: the worker's own option applies. */
  timeLimitMs: number | undefined;
  /** Retries already made. */
  retries: number;
  /** This run's token: its lease renewals, its finish and revoke signals for it carry it. */
  token: string;
  /** The message carried a unique lock (field lk). */
  carriesLock: boolean;
  /** The message carried a rate limit (field rk). */
  carriesRate: boolean;
  /** The message carried maxRecoveries (field mr). */
  carriesRecoveries: boolean;
  /** A reservation (prefetch): started in Redis, its handler to begin when a slot frees. */
  reserved: boolean;
}

/** The end of a run, as the fetch script stores it. */
export interface RunEnd {
  id: string;
  token: string;
  state: 'SUCCESS' | 'FAILURE' | 'RETRY';
  /** The field its value goes in: the result, the error, or '' (no value). */
  field: typeof FIELDS.result | typeof FIELDS.error | '';
  value: string;
  expireMs: number;
  /** Delay before the retry, for state RETRY. */
  retryDelayMs: number;
  /** Non-empty: also keep the task in the dead-letter list with this reason. */
  deadReason: string;
}

/** What became of a run's end (finish-task.lua). */
export type EndOutcome =
  | { kind: 'stored'; state: 'SUCCESS' | 'FAILURE' | 'REVOKED' | 'RETRY' }
  | { kind: 'stale'; state: TaskState | undefined }
  | { kind: 'refused'; message: string }
  | { kind: 'unexpected'; error: UnexpectedReplyError };

/** A task a fetch took off the wait list for this worker to start in its next call (fetch-7.lua). */
export interface Claim {
  id: string;
  /** The claim's lapse time as Redis stored it: the next call names the claim by it. */
  stamp: string;
  /** The lock its record names, '' when none or not read yet: the next call declares it. */
  lockKey: string;
  /** The rate window its record names, '' when none or not read yet. */
  rateKey: string;
}

/** The reply of fetch-7.lua. */
export interface FetchReply {
  started: StartedRun[];
  readonly limited: readonly { id: string; name: string; argsJson: string; delayMs: number }[];
  readonly revoked: readonly { id: string; name: string; argsJson: string; reason: RevokeReason }[];
  /** Ms until the earliest delayed task; -1 none; -2 not looked up (all wanted tasks started). */
  nextDelayMs: number;
  /** False when the wait list ran dry. */
  more: boolean;
  /** One per end sent, in order. */
  readonly outcomes: readonly EndOutcome[];
  /** '' or the text of the commands Redis refused. */
  problem: string;
  /** The claims this worker holds after the call (new, or given and kept): start them next. */
  readonly claims: readonly Claim[];
  /** Ids at the tail of the wait list after the call, tail first: the next call's hints. */
  readonly peek: readonly string[];
  /** Ids of started tasks whose leases lapsed (recoverLapsed). */
  readonly lapsed: readonly string[];
  /** The lock and rate window ('' none) the records of the ids looked ahead at name: the next call declares them. */
  readonly looked: readonly NamedKeys[];
  /** A rate-limited task at the front would have been a reservation: ask for none until a handler slot can be asked for. */
  blocked: boolean;
  /** Begins of reservations whose run is no longer current (revoked, recovered): their handlers are to stop. */
  readonly staleBegins: readonly StaleBegin[];
}

/** A begin the fetch found no longer current, with the state Redis holds ('gone': no record). */
export interface StaleBegin extends RunRef {
  state: string;
}

/** A task id with the lock and rate window its record names ('' none, or not known). */
export interface NamedKeys {
  id: string;
  lockKey: string;
  rateKey: string;
}

/** nextDelayMs of a call that started all it asked for: the delayed set was not read. */
export const NOT_LOOKED_UP = -2;

/** fetch-7.lua's reply as Redis sent it: read it with readFetchReply. */
export type RawFetchReply = [
  (string | number)[],
  (string | number)[],
  (string | number)[],
  number,
  number,
  string[],
  string,
  string[],
  string[],
  string[],
  string[],
  number?,
  string[]?,
];

const STARTED_ITEMS = 8;
const NONE: readonly never[] = Object.freeze([]);

/** What a fetch call may carry beside its ends (fetch-7.lua). */
export interface FetchCandidates {
  /** The lock each run of `ends` started under, by id (absent: none). */
  readonly locks?: ReadonlyMap<string, string>;
  /** Claims this worker holds: started by the call, or released when `want` is 0. */
  readonly claims?: readonly Claim[];
  /** Ids seen at the tail of the wait list (the last reply's peek), with their keys when looked up: started when still there. */
  readonly hints?: readonly NamedKeys[];
  /** Ids further in, whose records' lock and rate window the reply is to name (`looked`). */
  readonly look?: readonly string[];
  /** How many ids at the tail to return for the next call's hints. */
  readonly peek?: number;
  /** How many tasks the call may start to begin at once, its claims kept counting first (default: all); the others it starts are reservations (prefetch). */
  readonly handlers?: number;
  /** Reservations of this worker whose handler began since its last call: the call marks them begun (STARTED for readers, st = when the handler began) before it stores the ends. */
  readonly begins?: readonly Begin[];
}

/** A reservation whose handler began (prefetch): its run, and when it began (`performance.now()`, ms). */
export interface Begin extends RunRef {
  at: number;
}

/** The longest a claim holds: a worker starts its claims in its next call, so this bounds how long a dead worker's claims wait. */
export const MAX_CLAIM_MS = 10_000;

/**
 * Stores `ends` and starts up to `want` tasks, in one call (fetch-7.lua). Resolves Redis's
 * reply as sent; `readFetchReply` decodes it. Two steps instead of one async function: this is
 * the call every task of a busy worker goes through, and the extra promise per call showed in
 * the worker's CPU per task at concurrency 1 (BENCHMARKS.md). Every key the script touches is
 * declared: the records (and locks) of `ends`, and of the claims and hints in `c`.
 */
export function fetch(runner: ScriptRunner, keys: QueueKeys, worker: WorkerIdentity, want: number, ends: readonly RunEnd[], c: FetchCandidates = {}): Promise<RawFetchReply> {
  const begins = c.begins ?? NONE;
  const claims = c.claims ?? NONE;
  const hints = c.hints ?? NONE;
  const look = c.look ?? NONE;
  const candidates = claims.length + hints.length + look.length;
  // Both lists made at their full length (the keys at least: a lock or rate window adds more):
  // grown by push, each was copied once or twice per call (BENCHMARKS.md, "Allocation per task").
  const args = new Array<string | number>(11 + 3 * begins.length + 1 + 9 * ends.length + 1 + 4 * candidates);
  args[0] = keys.base;
  args[1] = worker.workerId;
  args[2] = worker.leaseMs;
  args[3] = want;
  args[4] = seed();
  args[5] = worker.resultExpiresMs;
  args[6] = worker.eventsCap;
  args[7] = Math.min(worker.leaseMs, MAX_CLAIM_MS);
  args[8] = c.peek ?? 0;
  args[9] = c.handlers ?? want;
  args[10] = begins.length;
  let a = 11;
  const scriptKeys = new Array<string>(7 + begins.length + ends.length + candidates);
  scriptKeys[0] = keys.wait;
  scriptKeys[1] = keys.delayed;
  scriptKeys[2] = keys.active;
  scriptKeys[3] = keys.dead;
  scriptKeys[4] = keys.events;
  scriptKeys[5] = keys.stats;
  scriptKeys[6] = keys.claimed;
  let k = 7;
  // How long ago each handler began (ms, this process's monotonic clock): Redis subtracts it from
  // its own time, so startedAt is when the handler began, not when the call came.
  const sent = begins.length > 0 ? performance.now() : 0;
  for (const b of begins) {
    args[a++] = b.id;
    args[a++] = b.token;
    args[a++] = Math.max(0, Math.round(sent - b.at));
    scriptKeys[k++] = keys.task(b.id);
  }
  args[a++] = ends.length;
  const locks = c.locks;
  for (const e of ends) {
    const lock = locks?.get(e.id);
    // A lock goes with its pending pointer: the end of a keepLast or debounce task hands the lock
    // to the task waiting behind it (includes/end-task.lua).
    args[a++] = e.id;
    args[a++] = e.token;
    args[a++] = e.state;
    args[a++] = e.field;
    args[a++] = e.value;
    args[a++] = e.expireMs;
    args[a++] = e.retryDelayMs;
    args[a++] = e.deadReason;
    args[a++] = lock === undefined ? '' : '2';
    scriptKeys[k++] = keys.task(e.id);
    if (lock !== undefined) {
      scriptKeys[k++] = lock;
      scriptKeys[k++] = keys.next(lock);
    }
  }
  args[a++] = candidates;
  const mode = want > 0 ? 'c' : 'r';
  for (const cl of claims) {
    k = candidate(args, a, scriptKeys, k, keys, cl.id, mode, cl.stamp, cl.lockKey, cl.rateKey);
    a += 4;
  }
  for (const h of hints) {
    k = candidate(args, a, scriptKeys, k, keys, h.id, 'h', '', h.lockKey, h.rateKey);
    a += 4;
  }
  for (const id of look) {
    k = candidate(args, a, scriptKeys, k, keys, id, 'k', '', '', '');
    a += 4;
  }
  return runner.run<RawFetchReply>(fetchScript, scriptKeys, args);
}

/** Writes one candidate of a fetch call at `a` of its arguments and `k` of its keys; returns the keys' next index. */
function candidate(args: (string | number)[], a: number, scriptKeys: string[], k: number, keys: QueueKeys, id: string, mode: string, stamp: string, lockKey: string, rateKey: string): number {
  args[a] = id;
  args[a + 1] = mode;
  args[a + 2] = stamp;
  args[a + 3] = lockKey === '' ? (rateKey === '' ? '' : 'r') : rateKey === '' ? 'l' : 'lr';
  scriptKeys[k++] = keys.task(id);
  if (lockKey !== '') scriptKeys[k++] = lockKey;
  if (rateKey !== '') scriptKeys[k++] = rateKey;
  return k;
}

/** Decodes the reply of a fetch call that sent `endCount` ends. */
export function readFetchReply(raw: RawFetchReply, endCount: number): FetchReply {
  const [started, limited, revoked, nextDelay, more, outcomes, problem, claims, peek, lapsed, looked, blocked, stale] = raw;
  const reply: FetchReply = {
    started: [],
    limited: limited.length === 0 ? NONE : [],
    revoked: revoked.length === 0 ? NONE : [],
    nextDelayMs: Number(nextDelay),
    more: Number(more) !== 0,
    outcomes: endCount === 0 ? NONE : [],
    problem: problem ? String(problem) : '',
    claims: claims.length === 0 ? NONE : [],
    peek: peek.length === 0 ? NONE : peek.map(String),
    lapsed: lapsed.length === 0 ? NONE : lapsed.map(String),
    looked: looked.length === 0 ? NONE : [],
    blocked: Number(blocked ?? 0) === 1,
    staleBegins: stale === undefined || stale.length === 0 ? NONE : [],
  };
  const staleOut = reply.staleBegins as StaleBegin[];
  for (let i = 0; stale !== undefined && i < stale.length; i += 3) {
    staleOut.push({ id: String(stale[i]), token: String(stale[i + 1]), state: String(stale[i + 2]) });
  }
  const lookedOut = reply.looked as NamedKeys[];
  for (let i = 0; i < looked.length; i += 3) lookedOut.push({ id: String(looked[i]), lockKey: String(looked[i + 1] ?? ''), rateKey: String(looked[i + 2] ?? '') });
  const claimsOut = reply.claims as Claim[];
  for (let i = 0; i < claims.length; i += 4) {
    claimsOut.push({ id: String(claims[i]), stamp: String(claims[i + 1]), lockKey: String(claims[i + 2] ?? ''), rateKey: String(claims[i + 3] ?? '') });
  }
  for (let i = 0; i < started.length; i += STARTED_ITEMS) {
    const carried = String(started[i + 7]);
    reply.started.push({
      id: String(started[i]),
      name: String(started[i + 1]),
      argsJson: String(started[i + 2]),
      attempt: Number(started[i + 3]),
      timeLimitMs: carried.includes('t') ? Number(started[i + 4]) : undefined,
      retries: Number(started[i + 5]),
      token: String(started[i + 6]),
      carriesLock: carried.includes('u'),
      carriesRate: carried.includes('r'),
      carriesRecoveries: carried.includes('m'),
      reserved: carried.includes('p'),
    });
  }
  const limitedOut = reply.limited as FetchReply['limited'][number][];
  for (let i = 0; i < limited.length; i += 4) {
    limitedOut.push({ id: String(limited[i]), name: String(limited[i + 1]), argsJson: String(limited[i + 2]), delayMs: Number(limited[i + 3]) });
  }
  const revokedOut = reply.revoked as FetchReply['revoked'][number][];
  for (let i = 0; i < revoked.length; i += 4) {
    revokedOut.push({ id: String(revoked[i]), name: String(revoked[i + 1]), argsJson: String(revoked[i + 2]), reason: String(revoked[i + 3]) as RevokeReason });
  }
  const outcomesOut = reply.outcomes as EndOutcome[];
  for (let i = 0; i < endCount; i++) outcomesOut.push(endOutcome(String(outcomes[2 * i] ?? 'ERROR'), String(outcomes[2 * i + 1] ?? '')));
  return reply;
}

// The outcomes of stored ends, made once: one object per finish showed in the worker's CPU per task.
const STORED = new Map<string, EndOutcome>(END_OUTCOMES.stored.map((state) => [state, Object.freeze({ kind: 'stored', state })]));

function endOutcome(outcome: string, detail: string): EndOutcome {
  const stored = STORED.get(outcome);
  if (stored !== undefined) return stored;
  if (outcome === END_OUTCOMES.stale) return { kind: 'stale', state: detail === '' ? undefined : (detail as TaskState) };
  if (outcome === END_OUTCOMES.refused) return { kind: 'refused', message: detail };
  return { kind: 'unexpected', error: unexpectedReply('fetch', "for a run's end", outcome) };
}

// ------------------------------------------------------------------------------------ leases

/** A run of this worker: id and token. */
export interface RunRef {
  id: string;
  token: string;
}

/** Why a worker should stop a run (extend-leases-1.lua). */
export type StopReason = 'revoked' | 'terminated' | 'lost';

/** A run to stop, and why; `state` is what Redis holds for a lost run (undefined: no record). */
export interface RunToStop extends RunRef {
  reason: StopReason;
  state: TaskState | undefined;
}

/** Renews the leases of `runs` (extend-leases-1.lua); returns the runs to stop. */
export async function extendLeases(runner: ScriptRunner, keys: QueueKeys, worker: WorkerIdentity, runs: readonly RunRef[]): Promise<RunToStop[]> {
  const args: (string | number)[] = [keys.base, worker.leaseMs, worker.workerId];
  const scriptKeys = [keys.active];
  for (const r of runs) {
    args.push(r.id, r.token);
    scriptKeys.push(keys.task(r.id));
  }
  const stop = await runner.run<string[]>(extendLeasesScript, scriptKeys, args);
  const out: RunToStop[] = [];
  for (let i = 0; i < stop.length; i += 4) {
    const detail = String(stop[i + 3] ?? '');
    out.push({ id: String(stop[i]), token: String(stop[i + 1]), reason: String(stop[i + 2]) as StopReason, state: detail === '' ? undefined : (detail as TaskState) });
  }
  return out;
}

/**
 * Hands runs a closing worker stopped back to the front of the queue (requeue-3.lua). A run whose
 * revoke was requested ends REVOKED instead and its lock is released, so each run's record and
 * the lock it names are declared, read before the call.
 */
export async function requeue(runner: ScriptRunner, keys: QueueKeys, worker: WorkerIdentity, runs: readonly RunRef[]): Promise<HandBack> {
  const [count, problem] = await withNamedKeys('requeue', 'the record of a run handed back', async () => {
    const locks = await Promise.all(runs.map(async (r) => lockOfRecord(keys, await runner.fields(keys.task(r.id), LOCK_FIELDS))));
    const scriptKeys = [keys.wait, keys.active, keys.events];
    const args: (string | number)[] = [keys.base, worker.workerId, worker.resultExpiresMs, worker.eventsCap];
    runs.forEach((r, i) => {
      const lock = locks[i];
      scriptKeys.push(keys.task(r.id));
      if (lock) scriptKeys.push(lock);
      args.push(r.id, r.token, lock ? 1 : 0);
    });
    return runner.run<[number | string, string]>(requeueScript, scriptKeys, args);
  });
  return { count: Number(count), problem: String(problem ?? '') };
}

/**
 * Hands back runs leased to this worker that it does not know it runs (`known`: the runs it
 * does), in two steps: plain reads find them (the leases of the active set, then the worker, run
 * token and lock of each record), then reclaim-3.lua hands them back with their records and
 * locks declared, checking each is still that run. A lock changed in between (an id reused) is
 * read again (withNamedKeys).
 */
export async function reclaim(runner: ScriptRunner, keys: QueueKeys, worker: WorkerIdentity, known: readonly RunRef[]): Promise<HandBack> {
  // Keyed by id and token: tokens are unique among the runs of one task, not across tasks.
  const knownRuns = new Set(known.map((r) => `${r.id} ${r.token}`));
  const [count, detail] = await withNamedKeys('reclaim', "the record of a run it hands back", async () => {
    const leases = await runner.scoredRange(keys.active, 0, -1);
    const records = await Promise.all(
      leases.map(([id]) => recordFields(runner, keys, id, [FIELDS.worker, FIELDS.state, FIELDS.token, ...LOCK_FIELDS])),
    );
    const args: (string | number)[] = [keys.base, worker.workerId, worker.resultExpiresMs, worker.eventsCap];
    const scriptKeys = [keys.wait, keys.active, keys.events];
    leases.forEach(([id, expiry], i) => {
      const [owner, state, token, ...named] = records[i]!;
      const lock = lockOfRecord(keys, named);
      if (owner !== worker.workerId || state !== 'STARTED' || (token != null && knownRuns.has(`${id} ${token}`))) return;
      args.push(id, expiry, token ?? '', lock == null ? '0' : '1');
      scriptKeys.push(keys.task(id));
      if (lock != null) scriptKeys.push(lock);
    });
    if (scriptKeys.length === 3) return [0, ''] as const;
    return runner.run<[number | string, string]>(reclaimScript, scriptKeys, args);
  });
  return { count: Number(count), problem: String(detail ?? '') };
}

/** What requeue-3.lua and reclaim-3.lua answer: how many runs went back, and '' or what Redis refused. */
export interface HandBack {
  count: number;
  problem: string;
}


/** What became of a lapsed lease recover-4.lua was given (see includes/recover.lua). */
export type RecoverOutcome =
  /** Back at the front of the wait list, PENDING, one more recovery counted. */
  | 'requeued'
  /** Ended FAILURE with a WorkerLostError: its recoveries were used up (maxRecoveries). */
  | 'failed'
  /** Ended REVOKED: a revoke was requested while it ran. */
  | 'revoked'
  /** Its record is missing or not a hash: dead-lettered, the lease dropped. */
  | 'dead-lettered'
  /** The task is no longer STARTED: a lease left behind, dropped. */
  | 'dropped'
  /** The caller's own run, lapsed less than one of its leases ago: it keeps the lease. */
  | 'kept'
  /** No lease, or one that has not lapsed on the Redis clock: left alone. */
  | 'not-lapsed'
  /** Redis refused a command: the task is as it was, leased (the refusal is in `problem`). */
  | 'refused';

/** What recover-4.lua did: one outcome per id given, and '' or what Redis refused. */
export interface Recovery {
  outcomes: { id: string; outcome: RecoverOutcome }[];
  problem: string;
}

/**
 * Recovers the runs of `ids` whose lease lapsed (their worker died or hung), as the fetch does
 * (recover-4.lua): reads the lock each record names, then calls the script with every record
 * and lock declared; it checks each lease has still lapsed on the Redis clock. `worker` is the
 * caller: its own lapsed runs get one more lease. A lock changed in between (an id reused) is
 * read again (withNamedKeys).
 */
export async function recoverLapsed(runner: ScriptRunner, keys: QueueKeys, worker: WorkerIdentity, ids: readonly string[]): Promise<Recovery> {
  const unique = [...new Set(ids)];
  if (unique.length === 0) return { outcomes: [], problem: '' };
  const [outcomes, detail] = await withNamedKeys('recover', 'the record of a lapsed run', async () => {
    const locks = await locksNamed(runner, keys, unique);
    const args: (string | number)[] = [keys.base, worker.workerId, worker.leaseMs, worker.resultExpiresMs, worker.eventsCap];
    const scriptKeys = [keys.wait, keys.active, keys.dead, keys.events];
    unique.forEach((id, i) => {
      const lock = locks[i];
      args.push(id, lock == null ? '0' : '1');
      scriptKeys.push(keys.task(id));
      if (lock != null) scriptKeys.push(lock);
    });
    return runner.run<[string[] | string, string]>(recoverScript, scriptKeys, args);
  });
  if (!Array.isArray(outcomes)) throw unexpectedReply('recover', 'reply', outcomes);
  const out: Recovery['outcomes'] = [];
  for (let i = 0; i < outcomes.length; i += 2) out.push({ id: String(outcomes[i]), outcome: String(outcomes[i + 1]) as RecoverOutcome });
  return { outcomes: out, problem: String(detail ?? '') };
}

/** The lock the record of each of `ids` names (null: none, or no readable record), read before a call that declares them. */
async function locksNamed(runner: ScriptRunner, keys: QueueKeys, ids: readonly string[]): Promise<(string | null)[]> {
  return Promise.all(ids.map(async (id) => lockOfRecord(keys, await recordFields(runner, keys, id, LOCK_FIELDS))));
}

/**
 * Fields of a task's record read before a script call that declares the keys they name (a plain
 * HMGET); all null for a record that is missing or not a hash (the script deals with those).
 */
async function recordFields(runner: ScriptRunner, keys: QueueKeys, id: string, fields: readonly string[]): Promise<(string | null)[]> {
  try {
    return await runner.fields(keys.task(id), fields);
  } catch (err) {
    if (isWrongType(err)) return fields.map(() => null);
    throw err;
  }
}

// ------------------------------------------------------------------- admission and hand-back

/** The answer of admit-6.lua or decline-7.lua. */
export type Verdict =
  | { verdict: 'RUN' }
  | { verdict: 'REVOKED'; reason: RevokeReason }
  | { verdict: 'LIMITED'; delayMs: number }
  | { verdict: 'DEFERRED'; delayMs: number }
  | { verdict: 'FAILURE'; message: string }
  | { verdict: 'STALE'; state: TaskState | undefined }
  /** A verdict this version does not know: the worker reports it and lets go of the run. */
  | { verdict: 'UNEXPECTED'; error: UnexpectedReplyError };

/** Decodes the reply of admit-6.lua or decline-7.lua. */
export function readVerdict(script: 'admit' | 'decline', [verdict, detail]: [string, string]): Verdict {
  switch (verdict) {
    case VERDICTS.run:
      return { verdict };
    case VERDICTS.revoked:
      return { verdict, reason: detail as RevokeReason };
    case VERDICTS.limited:
    case VERDICTS.deferred:
      return { verdict, delayMs: Number(detail) };
    case VERDICTS.failure:
      return { verdict, message: detail };
    case VERDICTS.stale:
      return { verdict, state: detail === '' ? undefined : (detail as TaskState) };
    default:
      return { verdict: 'UNEXPECTED', error: unexpectedReply(script, 'the verdict', verdict) };
  }
}

/** The checks a worker fills in for a message that lacks them. */
export interface AdmissionChecks {
  lock: { key: string; ttlMs: number; waitForExpiry: boolean } | undefined;
  rate: { key: string; limit: number; periodMs: number } | undefined;
  /** The worker's maxRecoveries, for a message without one; undefined leaves the record as it is. */
  maxRecoveries?: number | undefined;
  /** Ms: the run's named limits gave it a later turn; it waits for it (LIMITED) and nothing else is checked. */
  deferMs?: number | undefined;
  /** The deferral is a wait for a concurrency permit: one handed to the run meanwhile (the record's `pw`) makes it due at once. */
  forPermit?: boolean;
}

/**
 * Admits a run under the worker's own unique lock and rate limit (admit-6.lua). The script
 * declares the run's lock and rate window: the worker's where `checks` has them, else the ones
 * the record names (the message's), read before the call (only those, and not at all when the
 * worker fills in both).
 */
export async function admit(runner: ScriptRunner, keys: QueueKeys, worker: WorkerIdentity, run: RunRef, checks: AdmissionChecks): Promise<Verdict> {
  const { lock, rate } = checks;
  const record = keys.task(run.id);
  const toRead = [...(lock ? [] : LOCK_FIELDS), ...(rate ? [] : [FIELDS.rateKey])];
  const reply = await withNamedKeys('admit', `the record of task ${run.id}`, async () => {
    const named = toRead.length > 0 ? await runner.fields(record, toRead) : [];
    const messageLock = lock ? null : lockOfRecord(keys, named.slice(0, LOCK_FIELDS.length));
    const messageRate = rate ? null : named[toRead.length - 1];
    const scriptKeys = [keys.wait, keys.delayed, keys.active, record, keys.dead, keys.events];
    const lockOf = lock ? 'worker' : messageLock ? 'record' : '';
    const rateOf = rate ? 'worker' : messageRate ? 'record' : '';
    const lockKey = lock?.key ?? messageLock;
    const rateKey = rate?.key ?? messageRate;
    if (lockKey) scriptKeys.push(lockKey);
    if (rateKey) scriptKeys.push(rateKey);
    return runner.run<[string, string]>(admitScript, scriptKeys, [
      keys.base,
      worker.workerId,
      run.id,
      run.token,
      lockOf,
      lock?.ttlMs ?? 0,
      lock?.waitForExpiry ? '1' : '',
      rateOf,
      rate?.limit ?? 0,
      rate?.periodMs ?? 0,
      seed(),
      worker.resultExpiresMs,
      checks.maxRecoveries ?? '',
      worker.eventsCap,
      checks.deferMs ?? '',
      checks.forPermit ? 'p' : '',
    ]);
  });
  return readVerdict('admit', reply);
}

/**
 * Hands back a run of a task this worker does not run (decline-7.lua). A hand-back takes its
 * start out of the rate window the record names, and one that ends the task releases its lock,
 * so both are read first and declared.
 */
export async function decline(runner: ScriptRunner, keys: QueueKeys, worker: WorkerIdentity, run: RunRef, graceMs: number, message: string): Promise<Verdict> {
  const record = keys.task(run.id);
  const reply = await withNamedKeys('decline', `the record of task ${run.id}`, async () => {
    const [rate, ...named] = await recordFields(runner, keys, run.id, [FIELDS.rateKey, ...LOCK_FIELDS]);
    const lock = lockOfRecord(keys, named);
    const scriptKeys = [keys.wait, keys.delayed, keys.active, keys.names, record, keys.dead, keys.events];
    if (lock) scriptKeys.push(lock);
    if (rate) scriptKeys.push(rate);
    return runner.run<[string, string]>(declineScript, scriptKeys, [
      keys.base,
      worker.workerId,
      run.id,
      run.token,
      graceMs,
      worker.resultExpiresMs,
      message,
      seed(),
      worker.eventsCap,
      lock ? '1' : '',
      rate ? '1' : '',
    ]);
  });
  return readVerdict('decline', reply);
}

/** Stores a running task's progress for its run `token` (progress-2.lua); false when dropped (not that run, or not running). */
export async function progress(runner: ScriptRunner, keys: QueueKeys, id: string, token: string, json: string, eventsCap: number): Promise<boolean> {
  return (await runner.run<number>(progressScript, [keys.task(id), keys.events], [token, json, keys.base, id, eventsCap])) === 1;
}

/** What became of an operator's action on a dead letter (dead-letter-4.lua). */
export type DeadLetterAction = { done: true } | { done: false; reason: 'gone' } | { done: false; reason: 'not-failed'; state: TaskState | undefined };

/** Retries or drops one dead letter, given as stored (dead-letter-4.lua). */
export async function actOnDeadLetter(runner: ScriptRunner, keys: QueueKeys, op: 'retry' | 'drop', entry: string, id: string, eventsCap: number): Promise<DeadLetterAction> {
  const [code, detail] = await runner.run<[number, string]>(deadLetterScript, [keys.dead, keys.wait, keys.task(id), keys.events], [op, entry, id, keys.base, eventsCap]);
  if (code === 1) return { done: true };
  if (code === 0) return { done: false, reason: 'gone' };
  if (code === 2) return { done: false, reason: 'not-failed', state: detail === '' ? undefined : (String(detail) as TaskState) };
  throw unexpectedReply('dead-letter', 'code', code);
}

/** What became of an operator's release of a lock (release-lock-2.lua). */
export type LockRelease =
  | { released: true; holder?: string }
  | { released: false; reason: 'gone' }
  | { released: false; reason: 'held-by-another'; holder: string };

/**
 * Releases the lock `lockKey` of the queue of `keys` if `holder` still holds it, or whoever
 * holds it when `holder` is `{ force: true }`; logged as an event of the holder (release-lock-2.lua).
 * A forced release answers the holder it had.
 */
export async function releaseLock(
  runner: ScriptRunner,
  keys: QueueKeys,
  lockKey: string,
  holder: string | { force: true },
  eventsCap: number,
): Promise<LockRelease> {
  const forced = typeof holder !== 'string';
  const [code, detail] = await runner.run<[number, string]>(releaseLockScript, [lockKey, keys.events], [forced ? '' : holder, keys.base, eventsCap, forced ? '1' : '']);
  if (code === 1) return forced ? { released: true, holder: String(detail) } : { released: true };
  if (code === 0) return { released: false, reason: 'gone' };
  if (code === 2) return { released: false, reason: 'held-by-another', holder: String(detail) };
  throw unexpectedReply('release-lock', 'code', code);
}

/**
 * Removes from the rate window `windowKey` of the queue of `keys` the turns of tasks that no
 * longer wait in the delayed set (drop-turns-2.lua), in calls of at most 500 turns. Resolves to
 * how many were removed.
 */
export async function dropTurns(runner: ScriptRunner, keys: QueueKeys, windowKey: string): Promise<number> {
  let dropped = 0;
  for (let kept = 0; ; ) {
    const [n, next] = await runner.run<[number, number]>(dropTurnsScript, [windowKey, keys.delayed], [500, kept]);
    dropped += Number(n);
    if (Number(next) < 0) return dropped;
    kept = Number(next);
  }
}

/** What extending a unique lock did. */
export type LockExtension =
  | { extended: true; ttlMs: number }
  | { extended: false; reason: 'gone' }
  | { extended: false; reason: 'held-by-another'; holder: string };

/** Gives the lock `lockKey` `ttlMs` from now if `holder` still holds it (extend-lock-2.lua). */
export async function extendLock(runner: ScriptRunner, keys: QueueKeys, lockKey: string, holder: string, ttlMs: number, eventsCap: number): Promise<LockExtension> {
  const [code, detail] = await runner.run<[number, string]>(extendLockScript, [lockKey, keys.events], [holder, ttlMs, keys.base, eventsCap]);
  if (code === 1) return { extended: true, ttlMs };
  if (code === 0) return { extended: false, reason: 'gone' };
  if (code === 2) return { extended: false, reason: 'held-by-another', holder: String(detail) };
  throw unexpectedReply('extend-lock', 'code', code);
}

/** Takes `key` of the queue of `keys` for `intervalMs` unless taken within it: true when taken now (only-after-1.lua). */
export async function onlyAfter(runner: ScriptRunner, keys: QueueKeys, key: string, id: string, intervalMs: number): Promise<boolean> {
  return (await runner.run<number>(onlyAfterScript, [keys.after(key)], [id, intervalMs])) === 1;
}

/** What one purge step did: the tasks it ended REVOKED 'purged', and the entries it took from the wait list, the delayed set and the claimed set. */
export interface PurgeStep {
  purged: number;
  fromWait: number;
  fromDelayed: number;
  fromClaimed: number;
  /**
   * The queue changed between the reads and the script call (an entry pushed to the tail of the
   * wait list, a record's lock): the step may have taken less than it read, and a next one reads again.
   */
  changed: boolean;
}

/**
 * Purges one batch of a queue (purge-4.lua): reads up to `waitMax` entries at the tail of the
 * wait list, with `withDelayed` up to `delayedMax` delayed ids, and up to `claimedMax` claimed
 * ids (waiting tasks a worker's fetch took for its next call), then the lock each of those
 * records names, and calls the script with the records and locks declared.
 */
export async function purge(
  runner: ScriptRunner,
  keys: QueueKeys,
  waitMax: number,
  delayedMax: number,
  withDelayed: boolean,
  expireMs: number,
  eventsCap: number,
  claimedMax = 0,
): Promise<PurgeStep> {
  const [tail, due, claimed] = await Promise.all([
    waitMax > 0 ? runner.listRange(keys.wait, -waitMax, -1) : [],
    withDelayed && delayedMax > 0 ? runner.scoredRange(keys.delayed, 0, delayedMax - 1) : [],
    claimedMax > 0 ? runner.scoredRange(keys.claimed, 0, claimedMax - 1) : [],
  ]);
  if (tail.length === 0 && due.length === 0 && claimed.length === 0) return { purged: 0, fromWait: 0, fromDelayed: 0, fromClaimed: 0, changed: false };
  // The delayed ids first (the script takes the first `due.length`), then the claimed ones (the
  // next `claimedIds.length`), then the other ids of the tail, each once.
  const delayedIds = due.map(([id]) => id);
  const claimedIds = claimed.map(([id]) => id).filter((id) => !delayedIds.includes(id));
  const ids = [...new Set([...delayedIds, ...claimedIds, ...tail.filter((e) => e !== '')])];
  const locks = await locksNamed(runner, keys, ids);
  const args: (string | number)[] = [keys.base, tail.length, delayedIds.length, withDelayed ? '1' : '0', expireMs, eventsCap, claimedIds.length];
  const scriptKeys = [keys.wait, keys.delayed, keys.events, keys.claimed];
  ids.forEach((id, i) => {
    const lock = locks[i];
    args.push(id, lock == null ? '0' : '1');
    scriptKeys.push(keys.task(id));
    if (lock != null) scriptKeys.push(lock);
  });
  const [purged, fromWait, fromDelayed, changed, fromClaimed] = await runner.run<[number, number, number, string, number]>(purgeScript, scriptKeys, args);
  return {
    purged: Number(purged),
    fromWait: Number(fromWait),
    fromDelayed: Number(fromDelayed),
    fromClaimed: Number(fromClaimed ?? 0) + (claimed.length - claimedIds.length),
    changed: changed === KEYS_CHANGED,
  };
}

/**
 * Registers a worker on a queue for `validMs` with what it says of itself (JSON), or removes it
 * with `validMs` 0, and trims the queue's events older than `eventsMaxAgeMs` (0: none)
 * (heartbeat-3.lua). Resolves with the number of workers registered there.
 */
export async function heartbeat(runner: ScriptRunner, keys: QueueKeys, workerId: string, validMs: number, infoJson: string, eventsMaxAgeMs: number): Promise<number> {
  return runner.run<number>(heartbeatScript, [keys.workers, keys.workerInfo, keys.events], [workerId, validMs, validMs > 0 ? infoJson : '', eventsMaxAgeMs]);
}

/** Declares the task names a worker runs on a queue, valid for `validMs` (declare-1.lua). */
export async function declare(runner: ScriptRunner, keys: QueueKeys, names: readonly string[], validMs: number): Promise<void> {
  await runner.run<number>(declareScript, [keys.names], [validMs, ...names]);
}

// ------------------------------------------------------------------------- revoke and forget

/** What revoke-4.lua did (its reply code), and the state after it. */
export interface RevokeReply {
  code: (typeof REVOKE_CODES)[number];
  state: TaskState;
}

/**
 * Revokes a task from any process (revoke-4.lua). A revoke that ends the task releases its
 * unique lock, so the lock its record names is read first and declared.
 */
export async function revoke(runner: ScriptRunner, keys: QueueKeys, id: string, terminate: boolean, expireMs: number, reason: RevokeReason, eventsCap: number): Promise<RevokeReply> {
  const record = keys.task(id);
  const [code, state] = await withNamedKeys('revoke', `the record of task ${id}`, async () => {
    const lock = lockOfRecord(keys, await runner.fields(record, LOCK_FIELDS));
    const scriptKeys = [record, keys.active, keys.delayed, keys.events];
    if (lock) scriptKeys.push(lock);
    return runner.run<[number | string, string]>(revokeScript, scriptKeys, [keys.base, id, terminate ? '1' : '0', expireMs, reason, eventsCap]);
  });
  const name = REVOKE_CODES[Number(code)];
  if (name === undefined) throw unexpectedReply('revoke', 'code', code);
  return { code: name, state: name === 'unknown' ? 'PENDING' : (String(state) as TaskState) };
}

/** Deletes the record of an ended task (forget-1.lua); false when the task has not ended. */
export async function forget(runner: ScriptRunner, keys: QueueKeys, id: string): Promise<boolean> {
  return (await runner.run<number>(forgetScript, [keys.task(id)], [])) === 1;
}
