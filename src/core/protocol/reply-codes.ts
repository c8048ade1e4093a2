// What the scripts' reply codes mean for the caller, and which error class each calls for: the one
// table of them. (The codes themselves are in each script's header.)
import { AlreadyQueuedError, ConfigError, RedisRefusedError, UnexpectedReplyError } from '../errors.js';
import type { EnqueueOutcome } from './scripts.js';

/** Reply codes of enqueue-2.lua, per task. */
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
} as const;

/** The task a dispatch resolves to: its own id, or the holder of its unique lock. */
export interface Enqueued {
  id: string;
  duplicate: boolean;
}

/** What one dispatch was, for the errors its outcome may call for. */
export interface EnqueueContext {
  name: string;
  id: string;
  /** The caller chose the id (taskId). */
  customId: boolean;
  uniqueRaises: boolean;
}

/** Turns enqueue-2.lua's answer for one task into the task it resolves to, or the error it calls for. */
export function enqueued(outcome: EnqueueOutcome, t: EnqueueContext): Enqueued {
  switch (outcome.code) {
    case ENQUEUE_CODES.enqueued:
      return { id: t.id, duplicate: false };
    case ENQUEUE_CODES.duplicate:
      if (t.uniqueRaises) throw new AlreadyQueuedError(t.name, outcome.detail, Math.max(0, outcome.pttlMs) / 1000);
      return { id: outcome.detail, duplicate: true };
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
