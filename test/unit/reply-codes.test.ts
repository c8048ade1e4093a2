/**
 * The decoding of the scripts' replies (src/core/protocol/scripts.ts and reply-codes.ts), without
 * Redis: every code the scripts' headers list maps to what the worker and the producer act on,
 * and a reply item no table names becomes an UnexpectedReplyError instead of passing for
 * something it is not.
 */
import { describe, expect, it } from 'vitest';
import { MalformedTaskError, UnexpectedReplyError, UnknownTaskError } from 'heimdall-tasks';
import { END_OUTCOMES, FAILURE_ERRORS, REVOKE_CODES, VERDICTS } from '../../src/core/protocol/reply-codes.js';
import { readFetchReply, readVerdict, type RawFetchReply } from '../../src/core/protocol/scripts.js';

/** A fetch reply that started nothing and carries these end outcomes (pairs of outcome, detail). */
function fetchReply(outcomes: string[]): RawFetchReply {
  return [[], [], [], -1, 0, outcomes, '', [], [], [], []];
}

describe("a run's end outcomes (fetch-7.lua)", () => {
  it('every stored state, STALE and ERROR decode to what the queue runner acts on', () => {
    const reply = readFetchReply(fetchReply(['SUCCESS', '', 'FAILURE', '', 'REVOKED', '', 'RETRY', '', 'STALE', 'FAILURE', 'STALE', '', 'ERROR', 'OOM full']), 7);
    expect(reply.outcomes).toEqual([
      { kind: 'stored', state: 'SUCCESS' },
      { kind: 'stored', state: 'FAILURE' },
      { kind: 'stored', state: 'REVOKED' },
      { kind: 'stored', state: 'RETRY' },
      { kind: 'stale', state: 'FAILURE' },
      { kind: 'stale', state: undefined },
      { kind: 'refused', message: 'OOM full' },
    ]);
    expect([...END_OUTCOMES.stored, END_OUTCOMES.stale, END_OUTCOMES.refused].sort()).toEqual(['ERROR', 'FAILURE', 'RETRY', 'REVOKED', 'STALE', 'SUCCESS']);
  });

  it('an outcome no table names is an UnexpectedReplyError, not a stored state', () => {
    const [outcome] = readFetchReply(fetchReply(['DONE', '']), 1).outcomes;
    expect(outcome?.kind).toBe('unexpected');
    const error = (outcome as { error: unknown }).error;
    expect(error).toBeInstanceOf(UnexpectedReplyError);
    expect((error as Error).message).toMatch(/the fetch script answered for a run's end "DONE"/);
  });

  it('a missing outcome (fewer items than ends sent) is a refusal, sent again', () => {
    expect(readFetchReply(fetchReply([]), 1).outcomes).toEqual([{ kind: 'refused', message: '' }]);
  });
});

describe('admit and decline verdicts', () => {
  it('each verdict of the table decodes with its detail', () => {
    expect(readVerdict('admit', [VERDICTS.run, ''])).toEqual({ verdict: 'RUN' });
    expect(readVerdict('admit', [VERDICTS.revoked, 'duplicate'])).toEqual({ verdict: 'REVOKED', reason: 'duplicate' });
    expect(readVerdict('admit', [VERDICTS.limited, '1500'])).toEqual({ verdict: 'LIMITED', delayMs: 1500 });
    expect(readVerdict('decline', [VERDICTS.deferred, '250'])).toEqual({ verdict: 'DEFERRED', delayMs: 250 });
    expect(readVerdict('decline', [VERDICTS.failure, 'no task named x'])).toEqual({ verdict: 'FAILURE', message: 'no task named x' });
    expect(readVerdict('admit', [VERDICTS.stale, 'SUCCESS'])).toEqual({ verdict: 'STALE', state: 'SUCCESS' });
    expect(readVerdict('admit', [VERDICTS.stale, ''])).toEqual({ verdict: 'STALE', state: undefined });
  });

  it('a verdict no table names is UNEXPECTED with an UnexpectedReplyError naming the script, not STALE', () => {
    const v = readVerdict('decline', ['MAYBE', '']);
    expect(v.verdict).toBe('UNEXPECTED');
    const error = (v as { error: unknown }).error;
    expect(error).toBeInstanceOf(UnexpectedReplyError);
    expect((error as Error).message).toMatch(/the decline script answered the verdict "MAYBE"/);
  });

  it('a FAILURE verdict stands for MalformedTaskError from admit and UnknownTaskError from decline', () => {
    expect(new FAILURE_ERRORS.admit('m')).toBeInstanceOf(MalformedTaskError);
    expect(new FAILURE_ERRORS.decline('m')).toBeInstanceOf(UnknownTaskError);
  });
});

describe('revoke codes', () => {
  it('are positions 0 to 4 of the table, in the order of revoke-4.lua', () => {
    expect(REVOKE_CODES).toEqual(['unknown', 'ended', 'revoked', 'terminated', 'requested']);
  });
});
