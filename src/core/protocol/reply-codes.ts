// What the scripts' reply codes mean for the caller, and which error class each calls for: the one
// table of them. (The codes themselves are in each script's header.)
import { AlreadyQueuedError, ConfigError, MalformedTaskError, RedisRefusedError, UnexpectedReplyError, UnknownTaskError } from '../errors.js';
import type { EnqueueOutcome } from './scripts.js';
import type { DispatchConflict } from '../producer/task-result.js';

/** Reply codes of enqueue-3.lua, per task. */
export const ENQUEUE_CODES = {
  /** Enqueued (or this very call sent again: the task is there). */
  enqueued: 1,
  /** A unique duplicate: `detail` is the holder's id, `pttlMs` its lock's TTL. */
  duplicate: 2,
  /** The id belongs to another task that has not ended. */
  idInUse: 3,
  /** The task's hash or lock key holds a value of the wrong type: nothing written. */
  wrongType: 4,
  /** Redis refused a command for it (an ACL, a full Redis, a Cluster slot): nothing written. */
  refused: 5,
  /** Enqueued with the lock; `detail`, which held it (or waited behind its holder) without having started, is REVOKED. */
  replaced: 6,
  /** Enqueued to wait behind the running holder `detail`; `other`: the pending task it replaced ('' none). */
  waiting: 7,
  /** Nothing written: the lock's holder is `detail` and its pending task `other` ('' none), not what was declared; send again. */
  conflictKeysChanged: 8,
} as const;

/** The task a dispatch resolves to: its own id, or the holder of its unique lock. */
export interface Enqueued {
  id: string;
  duplicate: boolean;
  /** What it met when another task held the lock (undefined: nothing). */
  conflict?: DispatchConflict;
}

/** What one dispatch was, for the errors its outcome may call for. */
export interface EnqueueContext {
  name: string;
  id: string;
  /** The caller chose the id (taskId). */
  customId: boolean;
  uniqueRaises: boolean;
}

/** Turns enqueue-3.lua's answer for one task into the task it resolves to, or the error it calls for. */
export function enqueued(outcome: EnqueueOutcome, t: EnqueueContext): Enqueued {
  switch (outcome.code) {
    case ENQUEUE_CODES.enqueued:
      return { id: t.id, duplicate: false };
    case ENQUEUE_CODES.duplicate:
      if (t.uniqueRaises) throw new AlreadyQueuedError(t.name, outcome.detail, Math.max(0, outcome.pttlMs) / 1000);
      return { id: outcome.detail, duplicate: true, conflict: { outcome: 'duplicate', holder: outcome.detail } };
    case ENQUEUE_CODES.replaced:
      return { id: t.id, duplicate: false, conflict: { outcome: 'replaced', replaced: outcome.detail } };
    case ENQUEUE_CODES.waiting: {
      const replaced = outcome.other ?? '';
      return { id: t.id, duplicate: false, conflict: { outcome: 'waiting', holder: outcome.detail, ...(replaced === '' ? {} : { replaced }) } };
    }
    case ENQUEUE_CODES.idInUse:
      // A generated id cannot collide: the code then means ioredis re-sent this very call after
      // a reconnect and the first one went through.
      if (t.customId) throw new ConfigError(`task id ${t.id} belongs to a task that has not ended; choose another taskId`);
      return { id: t.id, duplicate: false };
    case ENQUEUE_CODES.wrongType:
      throw new ConfigError(`cannot send ${t.name} as task ${t.id}: ${outcome.detail}`);
    case ENQUEUE_CODES.refused:
      throw new RedisRefusedError(`cannot send ${t.name} as task ${t.id}: Redis answered ${outcome.detail}; nothing of it was written`);
    default:
      throw new UnexpectedReplyError(`cannot send ${t.name}: the enqueue script answered code ${outcome.code}`);
  }
}

/** What a run's end came to (finish-task.lua), the first of its two reply items; a stored state is the state itself. */
export const END_OUTCOMES = {
  /** Not stored: the run is no longer the task's current one; the detail is the state Redis holds ('' for no record). */
  stale: 'STALE',
  /** Redis refused a command (out of memory, an ACL): nothing stored; the detail is its message. The end is sent again. */
  refused: 'ERROR',
  /** Stored (now, or by an earlier send of the same end), as this state. */
  stored: ['SUCCESS', 'FAILURE', 'REVOKED', 'RETRY'],
} as const;

/** The verdicts of admit-6.lua and decline-7.lua, the first of their two reply items (the second is its detail). */
export const VERDICTS = {
  /** Admitted: run it. */
  run: 'RUN',
  /** Ended REVOKED; the detail is the reason (a unique duplicate, expired, or revoked meanwhile). */
  revoked: 'REVOKED',
  /** Rate-limited: put back in the delayed set; the detail is the delay in ms. */
  limited: 'LIMITED',
  /** Handed back for another worker; the detail is the delay in ms. */
  deferred: 'DEFERRED',
  /** Ended FAILURE and dead-lettered; the detail is the stored message (the error class: FAILURE_ERRORS). */
  failure: 'FAILURE',
  /** The run is no longer the task's current one; the detail is the state Redis holds. */
  stale: 'STALE',
} as const;

/**
 * The error class of a FAILURE verdict, per script: admit fails a message it cannot read
 * (a lock or rate window of the wrong type), decline a name no worker declared within
 * unknownTaskGrace. The script stores the class's name with the message; the worker emits it.
 */
export const FAILURE_ERRORS = { admit: MalformedTaskError, decline: UnknownTaskError } as const;

/**
 * The answer of a script that declares the locks records name, when a record names another key
 * than the one the caller read and declared (includes/declared.lua): the caller reads again and
 * calls again.
 */
export const KEYS_CHANGED = 'KEYS_CHANGED';

/** The reply codes of revoke-4.lua, by position (0 to 4). */
export const REVOKE_CODES = ['unknown', 'ended', 'revoked', 'terminated', 'requested'] as const;

/** A reply item no table above names: the script and the library disagree, or someone else wrote it. */
export function unexpectedReply(script: string, what: string, value: unknown): UnexpectedReplyError {
  return new UnexpectedReplyError(`the ${script} script answered ${what} ${JSON.stringify(String(value)).slice(0, 200)}, which this version does not know`);
}
