// The Dispatcher's wait through a failover (Enqueuer.untilServed, through send()): a call Redis
// refuses between two masters is sent again until failoverTimeout, then fails as unavailable; any
// other failure is not sent again. A stub script runner stands in for Redis: what is tested is
// the decision to send again, not Redis.
import { ReplyError } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { RedisRefusedError, RedisUnavailableError } from 'heimdall-tasks';
import { Enqueuer } from '../../src/core/producer/enqueuer.js';
import { QueueKeys } from '../../src/core/protocol/queue-keys.js';
import type { ScriptRunner } from '../../src/core/protocol/script-runner.js';

/** A runner whose calls fail with `errors` in turn, then answer "enqueued"; it counts the calls. */
function runner(errors: readonly Error[]): { calls: number[]; scripts: ScriptRunner } {
  const calls: number[] = [];
  const scripts = {
    run: async (): Promise<unknown> => {
      calls.push(Date.now());
      const err = errors[calls.length - 1];
      if (err) throw err;
      return [1, '', 0];
    },
  } as unknown as ScriptRunner;
  return { calls, scripts };
}

const task = { id: 't1', countdownMs: 0, etaMs: 0, lockKey: '', lockTtlMs: 0, fields: ['n', 'A.b', 'a', '[]'] };
const keys = new QueueKeys('p', 'q');

describe('a dispatch between two masters', () => {
  it('is sent again while the cluster is between masters, and goes through once it serves', async () => {
    const { calls, scripts } = runner([new ReplyError('CLUSTERDOWN The cluster is down'), new ReplyError('TRYAGAIN Multiple keys request during rehashing of slot')]);
    const outcome = await new Enqueuer(scripts, undefined, 0, 5000, true).send(keys, task, 2, 'sending A.b');
    expect(outcome.code).toBe(1);
    expect(calls).toHaveLength(3);
    // Pauses of 100 ms, then 200 ms (timers may fire a little early or late).
    expect(calls[1]! - calls[0]!).toBeGreaterThanOrEqual(90);
    expect(calls[2]! - calls[1]!).toBeGreaterThanOrEqual(190);
  });

  it('fails with RedisUnavailableError once failoverTimeout has passed', async () => {
    const down = Array.from({ length: 100 }, () => new Error('Too many Cluster redirections. Last error: Error: Connection is closed.'));
    const { calls, scripts } = runner(down);
    const started = Date.now();
    const sent = new Enqueuer(scripts, undefined, 0, 800, true).send(keys, task, 2, 'sending A.b');
    await expect(sent).rejects.toBeInstanceOf(RedisUnavailableError);
    // Tries at about 0, 100, 300 and 700 ms (pauses of 100, 200 and 400 ms), and no pause runs
    // past the bound: at least three tries (a slow timer may push the fourth past it), and the
    // rejection comes before the bound plus the longest pause.
    expect(calls.length).toBeGreaterThanOrEqual(3);
    expect(calls.length).toBeLessThanOrEqual(4);
    expect(calls[calls.length - 1]! - started).toBeLessThanOrEqual(800);
    expect(Date.now() - started).toBeLessThan(800 + 1000);
  });

  it('is sent once with failoverTimeout 0, and never again for a refusal that is not a failover', async () => {
    const once = runner([new ReplyError('CLUSTERDOWN The cluster is down')]);
    await expect(new Enqueuer(once.scripts, undefined, 0, 0, true).send(keys, task, 2, 'x')).rejects.toBeInstanceOf(RedisUnavailableError);
    expect(once.calls).toHaveLength(1);
    const refused = runner([new ReplyError('NOPERM this user has no permissions to run the evalsha command')]);
    await expect(new Enqueuer(refused.scripts, undefined, 0, 5000, true).send(keys, task, 2, 'x')).rejects.toBeInstanceOf(RedisRefusedError);
    expect(refused.calls).toHaveLength(1);
    // A closed connection on one server is the client closing, not a failover.
    const closed = runner([new Error('Connection is closed.')]);
    await expect(new Enqueuer(closed.scripts, undefined, 0, 5000, false).send(keys, task, 2, 'x')).rejects.toBeInstanceOf(RedisUnavailableError);
    expect(closed.calls).toHaveLength(1);
  });
});
