// The inline mode stands in for Redis in users' tests, so it must report what Redis would: the
// same scenario runs on a createTestApp() with a real Redis and worker, and on an inline one,
// and the two transcripts (results, states, errors, events, drain reports) must be equal.
import { describe, expect, it } from 'vitest';
import { AlreadyQueuedError, ConfigError, currentTask, Task, TaskFailedError, TaskRevokedError } from 'heimdall-tasks';
import { createTestApp, type TestAppBase } from 'heimdall-tasks/testing';
import { openTestConnection, waitFor } from '../helpers.js';

const tries = new Map<string, number>();
let release: (() => void) | undefined;

class ParityService {
  @Task()
  async add(a: number, b: number): Promise<number> {
    return a + b;
  }

  @Task({ unique: true, uniqueRaises: false })
  async exclusive(key: string): Promise<string> {
    await new Promise<void>((resolve) => (release = resolve));
    return `held ${key} on attempt ${currentTask().attempt}`;
  }

  @Task({ unique: true, uniqueRaises: true })
  async strict(key: string): Promise<string> {
    return key;
  }

  @Task()
  async explode(why: string): Promise<never> {
    throw new RangeError(why);
  }

  @Task({ retries: { max: 2, backoff: '30ms', jitter: false } })
  async flaky(key: string): Promise<string> {
    const n = (tries.get(key) ?? 0) + 1;
    tries.set(key, n);
    if (n === 1) throw new Error('first try fails');
    return `ok on ${currentTask().attempt}`;
  }

  @Task({ timeLimit: '80ms' })
  async slow(): Promise<string> {
    const signal = currentTask().signal;
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    throw signal.reason as Error;
  }

  @Task({ rateLimit: [1, '150ms'] })
  async limited(n: number): Promise<number> {
    return n * 10;
  }

  @Task()
  async untilRevoked(): Promise<string> {
    const signal = currentTask().signal;
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    throw signal.reason as Error;
  }
}

/** Lets the running exclusive task end, once it has started. */
async function releaseNext(): Promise<void> {
  const open = await waitFor(() => release, { what: 'an exclusive task to start' });
  release = undefined;
  open();
}

/** Runs the scenario on an app and writes down everything a test could look at. */
async function transcript(app: TestAppBase, tag: string): Promise<string[]> {
  const out: string[] = [];
  const note = (line: string): void => {
    out.push(line);
  };
  const events: string[] = [];
  for (const event of ['started', 'succeeded', 'failed', 'retried', 'revoked'] as const) {
    app.on(event, (e) => events.push(`${event} ${e.name}${'reason' in e ? ` ${e.reason}` : ''}`));
  }
  const svc = app.tasks(ParityService);

  const sum = await svc.add.delay(2, 3);
  note(`add: ${await sum.get({ timeout: 10 })}, ${await sum.status()}`);
  const info = await sum.info();
  note(`info: ${info.name} ${info.state} args=${JSON.stringify(info.args)} attempts=${info.attempts} result=${String(info.result)}`);

  const first = await svc.exclusive.delay(tag);
  const dup = await svc.exclusive.delay(tag);
  note(`unique: duplicate=${dup.duplicate} sameId=${dup.id === first.id}`);
  note(`current: ${(await svc.exclusive.current(tag))?.id === first.id}`);
  await releaseNext();
  note(`exclusive: ${await first.get({ timeout: 10 })}`);
  await waitFor(async () => (await svc.exclusive.current(tag)) === null, { what: 'the lock to be released' });
  const again = await svc.exclusive.delay(tag);
  note(`after end: duplicate=${again.duplicate}`);
  await releaseNext();
  await again.get({ timeout: 10 });

  await svc.strict.delay(`${tag}-s`).then((r) => r.get({ timeout: 10 }));
  const strictHeld = await svc.strict.applyAsync([`${tag}-t`], { countdown: 30 });
  const raised = await svc.strict.delay(`${tag}-t`).catch((e: unknown) => e);
  note(`uniqueRaises: ${raised instanceof AlreadyQueuedError} holder=${(raised as AlreadyQueuedError).likelyCulprit === strictHeld.id}`);
  note(`revoke delayed: ${await strictHeld.revoke()} ${await strictHeld.status()}`);

  const boom = await svc.explode.delay('bad input');
  const err = await boom.get({ timeout: 10 }).catch((e: unknown) => e);
  note(`explode: ${err instanceof TaskFailedError} ${(err as TaskFailedError).remoteName}: ${(err as TaskFailedError).remoteMessage}`);

  const flaky = await svc.flaky.delay(tag);
  note(`flaky: ${await flaky.get({ timeout: 10 })} attempts=${(await flaky.info()).attempts} error=${(await flaky.info()).error?.message ?? 'none'}`);

  const slow = await svc.slow.delay();
  const limitErr = await slow.get({ timeout: 10 }).catch((e: unknown) => e);
  note(`slow: ${(limitErr as TaskFailedError).remoteName}`);

  const limited = await Promise.all([1, 2, 3].map((n) => svc.limited.delay(n)));
  note(`limited: ${(await Promise.all(limited.map((r) => r.get({ timeout: 10 })))).join(',')}`);

  const running = await svc.untilRevoked.delay();
  await waitFor(async () => (await running.status()) === 'STARTED', { what: 'untilRevoked to start' });
  note(`revoke running: ${await running.revoke()}`);
  const revokedErr = await running.get({ timeout: 10 }).catch((e: unknown) => e);
  note(`after revoke: ${revokedErr instanceof TaskRevokedError} ${(await running.info()).revokeReason} error=${(await running.info()).error?.name}`);

  // A queue the app's worker does not consume: the task waits there, and drain() says so.
  const stray = await svc.add.applyAsync([9, 9], { queue: 'parity-elsewhere', countdown: '20ms' });
  const strayErr = await app.drain({ timeout: '400ms' }).catch((e: unknown) => (e as Error).message);
  note(`stray queue: ${String(strayErr).includes("does not consume 'parity-elsewhere'")} ${await stray.status()}`);
  note(`stray revoked: ${await stray.revoke()}`);

  const expired = await svc.add.applyAsync([1, 1], { countdown: '60ms', expires: '20ms' });
  note(`expired: ${await expired.get({ timeout: 10 }).catch((e: unknown) => (e as Error).message.replace(expired.id, '<id>'))}`);

  const custom = await svc.add.applyAsync([5, 5], { taskId: `custom-${tag}`, countdown: 30 });
  const customAgain = await svc.add.applyAsync([5, 5], { taskId: `custom-${tag}`, countdown: 30 });
  note(`custom id re-sent: same=${customAgain.id === custom.id}`);
  note(`custom id collision: ${await svc.add.applyAsync([6, 6], { taskId: `custom-${tag}` }).then(() => 'sent', (e: unknown) => (e as Error).name)}`);
  note(`custom id revoked: ${await custom.revoke()}`);
  const many = await svc.add.delayMany([[1, 1], [2, 2], [3, 3]]);
  note(`delayMany: ${(await Promise.all(many.map((r) => r.get({ timeout: 10 })))).join(',')}`);

  note(`unknown id: ${await app.dispatcher.result('no-such-task').status()}`);
  const forgetting = await svc.add.delay(1, 2);
  await forgetting.get({ timeout: 10 });
  await forgetting.forget();
  note(`forgotten: ${await forgetting.status()}`);
  const notEnded = await svc.add.applyAsync([1, 2], { countdown: 30 });
  note(`forget queued: ${await notEnded.forget().catch((e: unknown) => e instanceof ConfigError)}`);
  await notEnded.revoke();

  const report = await app.drain({ timeout: 10 });
  note(`drain: ${report.ran.length} ended, ${report.delayed.length} left`);
  note(`events: ${[...events].sort().join(' | ')}`);
  return out;
}

describe('inline mode reports what Redis reports', () => {
  it('the same scenario gives the same transcript with a real Redis and worker and inline', { timeout: 60_000 }, async () => {
    const results: string[][] = [];
    for (const inline of [false, true]) {
      tries.clear();
      release = undefined;
      const redis = openTestConnection();
      const app = await createTestApp({ services: [new ParityService()], connection: redis.connection, inline });
      try {
        results.push(await transcript(app, 'k'));
      } finally {
        await app.close();
        await redis.close();
      }
    }
    const [withRedis, inline] = results;
    expect(withRedis!.length).toBeGreaterThan(15);
    expect(inline).toEqual(withRedis);
  });
});
