// The keys an enqueue call declares (scripts.ts enqueue, through the Enqueuer's batches): the
// queue's wait list, delayed set and event stream, then each task's record and, for a unique
// task, its lock, in the order of the tasks; a burst is cut at MAX_BATCH_TASKS tasks, which
// bounds the keys of a call. A stub script runner records the calls: what is tested is the
// layout the library sends, which enqueue-3.lua checks (external-producer.test.ts runs it).
import { describe, expect, it } from 'vitest';
import { Enqueuer, MAX_BATCH_TASKS } from '../../src/core/producer/enqueuer.js';
import { QueueKeys } from '../../src/core/protocol/queue-keys.js';
import type { ScriptRunner } from '../../src/core/protocol/script-runner.js';
import type { EnqueueTask } from '../../src/core/protocol/scripts.js';
import type { LuaScript } from '../../src/redis-scripts/scripts.generated.js';

interface Call {
  keys: readonly string[];
  args: readonly (string | number)[];
}

/** A runner that answers "enqueued" for every task of a call and records each call. */
function recording(): { calls: Call[]; scripts: ScriptRunner } {
  const calls: Call[] = [];
  const scripts = {
    run: async (script: LuaScript, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown> => {
      expect(script.name).toBe('enqueue');
      expect(keys.length).toBeGreaterThanOrEqual(script.numberOfKeys);
      calls.push({ keys, args });
      return Array.from({ length: Number(args[1]) }, () => [1, '', 0]).flat();
    },
  } as unknown as ScriptRunner;
  return { calls, scripts };
}

const keys = new QueueKeys('p', 'q');

function task(id: string, lockKey = ''): EnqueueTask {
  return { id, countdownMs: 0, etaMs: 0, lockKey, lockTtlMs: lockKey ? 60_000 : 0, fields: ['n', 'A.b', 'a', '[]'] };
}

describe('the keys of an enqueue call', () => {
  it("are the queue's wait, delayed and events, then each task's record and, when unique, its lock, in order", async () => {
    const { calls, scripts } = recording();
    const enqueuer = new Enqueuer(scripts);
    const lock = keys.lock('A.b', 'k');
    await Promise.all([enqueuer.send(keys, task('t1'), 2, 'a'), enqueuer.send(keys, task('t2', lock), 2, 'b'), enqueuer.send(keys, task('t3'), 2, 'c')]);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.keys).toEqual([keys.wait, keys.delayed, keys.events, keys.task('t1'), keys.task('t2'), lock, keys.task('t3')]);
    // The lock is still in the task's arguments too: the script checks the declared key against it.
    expect(calls[0]!.args.slice(0, 2)).toEqual([keys.base, 3]);
    expect(calls[0]!.args.filter((a) => a === lock)).toHaveLength(1);
  });

  it('are bounded: a burst of unique tasks is cut at MAX_BATCH_TASKS tasks, 3 + 2 keys per task at most', async () => {
    const { calls, scripts } = recording();
    const enqueuer = new Enqueuer(scripts);
    const n = 2 * MAX_BATCH_TASKS + 7;
    await Promise.all(Array.from({ length: n }, (_, i) => enqueuer.send(keys, task(`u${i}`, keys.lock('A.b', `k${i}`)), 2, 'u')));
    expect(calls.map((c) => Number(c.args[1]))).toEqual([MAX_BATCH_TASKS, MAX_BATCH_TASKS, 7]);
    expect(calls.map((c) => c.keys.length)).toEqual([3 + 2 * MAX_BATCH_TASKS, 3 + 2 * MAX_BATCH_TASKS, 3 + 2 * 7]);
  });
});
