// Rolling deploys and shared Redis: a worker of an older build meets a task name it does not
// declare. It hands the task back, without counting an attempt and with a growing delay (no
// spinning), until a worker that declares the name runs it; only when no worker has declared
// the name within `unknownTaskGrace` does the task end FAILURE with UnknownTaskError. Two
// worker processes of different builds share one queue; this process sends by name and loads no
// task class.
import { describe, expect, it } from 'vitest';
import { Worker } from 'heimdall-tasks';
import { redisNowMs, reportFigures, useHarness, waitFor, type Harness } from '../helpers.js';
import { readStarts } from '../fixtures/deploy/control.js';
import { startWorkerProcess, stopWorkerProcesses } from '../fixtures/worker-processes.js';

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** The hand-back fields of a task record: when the first worker that did not declare it met it, and how often. */
async function declines(h: Harness, id: string): Promise<{ first: number | undefined; count: number }> {
  const [first, count] = await h.admin.hmget(h.taskKey(id), 'ud', 'un');
  return { first: first === null ? undefined : Number(first), count: Number(count ?? 0) };
}

describe('rolling deploys: a task name the worker does not declare', () => {
  const fresh = useHarness('deploy');

  it('an old-build worker hands the tasks back until a new-build worker starts; each runs once, with one attempt', { timeout: 90_000 }, async () => {
    const h = fresh();
    const old = await startWorkerProcess(h, { services: ['authority'], concurrency: 4 });
    const d = h.dispatcher();
    const handles = await Promise.all(range(5).map((n) => d.send('FeatureService.shiny', [n])));
    const known = await Promise.all(range(3).map((n) => d.send('AuthorityService.limited', [n])));

    // The old worker met each new task and handed it back: PENDING, no attempt, not dead-lettered.
    await waitFor(async () => (await Promise.all(handles.map((r) => declines(h, r.id)))).every((x) => x.count >= 1), {
      timeout: 20_000,
      what: 'the old worker to hand back every FeatureService task',
    });
    for (const r of handles) {
      const info = await r.info();
      expect(info.state).toBe('PENDING');
      expect(info.attempts).toBe(0);
    }
    expect(await h.deadLetters()).toEqual([]);
    // What the old worker declares, it runs (the first of the [1, 60] tasks starts at once).
    await waitFor(async () => (await known[0]!.status()) === 'SUCCESS', { what: 'a task the old build knows to run' });

    const newStartedAt = await redisNowMs(h.admin);
    const neu = await startWorkerProcess(h, { services: ['authority', 'feature'], concurrency: 4 });
    expect(await Promise.all(handles.map((r) => r.get({ timeout: 30 })))).toEqual([0, 10, 20, 30, 40]);
    const doneAt = await redisNowMs(h.admin);
    const infos = await Promise.all(handles.map((r) => r.info()));
    expect(infos.map((i) => i.attempts)).toEqual([1, 1, 1, 1, 1]);
    expect(infos.map((i) => i.worker)).toEqual(handles.map(() => neu.workerId));
    const starts = (await readStarts(h)).filter((e) => e.task === 'FeatureService.shiny');
    expect(starts.map((e) => e.id).sort()).toEqual(handles.map((r) => r.id).sort());
    expect(await h.deadLetters()).toEqual([]);

    const [oldSummary, newSummary] = await stopWorkerProcesses([old, neu]);
    expect(oldSummary!.failed).toBe(0);
    expect(oldSummary!.errors.filter((e) => /UnknownTaskError/.test(e))).toEqual([]);
    expect(newSummary!.failed).toBe(0);
    const handBacks = (await Promise.all(handles.map((r) => declines(h, r.id)))).map((x) => x.count);
    reportFigures('rolling deploy', {
      tasks: 5,
      handBacksPerTask: handBacks.join('/'),
      msFromNewWorkerToAllDone: doneAt - newStartedAt,
    });
  });

  it('no spinning: while only the old build runs, each hand-back waits longer than the one before', { timeout: 60_000 }, async () => {
    const h = fresh();
    const old = await startWorkerProcess(h, { services: ['authority'], concurrency: 4 });
    const d = h.dispatcher();
    const sentAt = await redisNowMs(h.admin);
    const r = await d.send('FeatureService.shiny', [1]);
    const seen: { count: number; due: number }[] = [];
    await waitFor(
      async () => {
        const [count, due] = await h.admin.hmget(h.taskKey(r.id), 'un', 'd');
        const c = Number(count ?? 0);
        if (c > 0 && seen[seen.length - 1]?.count !== c) seen.push({ count: c, due: Number(due) });
        return c >= 4;
      },
      { timeout: 30_000, interval: 10, what: 'four hand-backs' },
    );
    // Each hand-back happens when the task is due again, so the gaps between successive due
    // times are the delays the hand-backs chose (plus the fetch's small lag): they double.
    // (Only gaps between hand-backs seen one after the other count: a poll may miss one.)
    const gaps = seen.slice(1).flatMap((x, i) => (x.count === seen[i]!.count + 1 ? [x.due - seen[i]!.due] : []));
    expect(gaps.length, `gaps between consecutive hand-backs seen: ${gaps.join('/')}`).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < gaps.length; i++) expect(gaps[i]!).toBeGreaterThan(gaps[i - 1]! * 1.3);
    expect((await r.info()).attempts).toBe(0);
    const summary = (await stopWorkerProcesses([old]))[0]!;
    expect(summary.started).toBe(0);
    reportFigures('hand-back delays', { gapsBetweenDueTimesMs: gaps.join('/'), msFromSendToFourthDue: seen[seen.length - 1]!.due - sentAt });
  });

  it('with no worker declaring the name within unknownTaskGrace, the task ends FAILURE UnknownTaskError and is dead-lettered', { timeout: 60_000 }, async () => {
    const h = fresh();
    const old = await startWorkerProcess(h, { services: ['authority'], concurrency: 4, unknownTaskGrace: '1s' });
    const d = h.dispatcher();
    const r = await d.send('FeatureService.shiny', [1]);
    const err = await r.get({ timeout: 30 }).then(
      () => undefined,
      (e: unknown) => e as { remoteName?: string; remoteMessage?: string },
    );
    expect(err?.remoteName).toBe('UnknownTaskError');
    expect(err?.remoteMessage).toMatch(/FeatureService\.shiny/);
    const info = await r.info();
    const { first } = await declines(h, r.id);
    // Not before the grace period, counted from the first hand-back.
    expect(info.finishedAt!.getTime() - first!).toBeGreaterThanOrEqual(1000);
    expect(info.attempts).toBe(0);
    const dead = await h.deadLetters();
    expect(dead.map((x) => x.id)).toEqual([r.id]);
    expect(dead[0]!.reason).toMatch(/FeatureService\.shiny/);
    await stopWorkerProcesses([old]);
  });

  it('a task that ran since its last hand-backs gets a new grace when a worker that does not run it meets it again', { timeout: 60_000 }, async () => {
    const h = fresh();
    const old = await startWorkerProcess(h, { services: ['authority'], concurrency: 4, unknownTaskGrace: '2s' });
    // Some worker declares the name (played by writing its declaration), so the old worker hands
    // the task back however long it waits.
    await h.admin.hset(h.queueKey('names'), 'FeatureService.flaky', String((await redisNowMs(h.admin)) + 600_000));
    const d = h.dispatcher();
    const r = await d.send('FeatureService.flaky', [5]);
    await waitFor(async () => (await declines(h, r.id)).count >= 1, { what: 'a first hand-back' });
    // A new-build worker runs the first attempt (it fails, RETRY in 3 s), then goes away, and its
    // declarations with it (played by deleting them rather than waiting for them to lapse).
    const neu = await startWorkerProcess(h, { services: ['authority', 'feature'], concurrency: 4 });
    await waitFor(async () => (await r.status()) === 'RETRY', { what: 'the first attempt to fail into RETRY' });
    await stopWorkerProcesses([neu]);
    await h.admin.del(h.queueKey('names'));
    const retryDue = (await r.info()).dueAt!.getTime();
    // The old worker meets the retry more than 2 s after the first hand-back: it starts a new
    // series, with a grace of its own, instead of failing the task at once.
    await expect(r.get({ timeout: 30 })).rejects.toMatchObject({ remoteName: 'UnknownTaskError' });
    const info = await r.info();
    expect(info.finishedAt!.getTime() - retryDue).toBeGreaterThanOrEqual(1900);
    expect(info.attempts).toBe(1);
    await stopWorkerProcesses([old]);
  });

  it('unknownTaskGrace 0 fails an undeclared task at its first start', async () => {
    const h = fresh();
    const w = new Worker({ connection: h.connection(), prefix: h.prefix, services: [], unknownTaskGrace: 0 });
    const closing = (): Promise<void> => w.close();
    try {
      await w.start();
      const r = await h.dispatcher().send('Nobody.declares', [1]);
      await expect(r.get({ timeout: 20 })).rejects.toMatchObject({ remoteName: 'UnknownTaskError' });
      expect((await h.deadLetters()).map((x) => x.id)).toEqual([r.id]);
    } finally {
      await closing();
    }
  });
});
