// A fetch as the queue runner makes it, for tests that drive the scripts by hand: the first call
// stores the ends and claims what it cannot start yet (ids it was not told of), the next calls
// start those claims with their records, locks and rate windows declared.
import { fetch, readFetchReply, type FetchReply, type RunEnd, type WorkerIdentity } from '../src/core/protocol/scripts.js';
import type { QueueKeys } from '../src/core/protocol/queue-keys.js';
import type { ScriptRunner } from '../src/core/protocol/script-runner.js';

/** Stores `ends` and starts up to `want` tasks, as many calls as the claims take (at most 4); the replies merged. */
export async function fetchStarting(
  runner: ScriptRunner,
  keys: QueueKeys,
  worker: WorkerIdentity,
  want: number,
  ends: readonly RunEnd[] = [],
  locks?: ReadonlyMap<string, string>,
): Promise<FetchReply> {
  const first = readFetchReply(await fetch(runner, keys, worker, want, ends, locks ? { locks } : {}), ends.length);
  const merged = { ...first, started: [...first.started], limited: [...first.limited], revoked: [...first.revoked] };
  let claims = first.claims;
  for (let round = 0; claims.length > 0 && round < 4; round++) {
    const next = readFetchReply(await fetch(runner, keys, worker, claims.length, [], { claims }), 0);
    merged.started.push(...next.started);
    merged.limited.push(...next.limited);
    merged.revoked.push(...next.revoked);
    merged.problem = [merged.problem, next.problem].filter(Boolean).join('; ');
    merged.nextDelayMs = next.nextDelayMs;
    merged.more = next.more;
    claims = next.claims;
  }
  return { ...merged, claims };
}
