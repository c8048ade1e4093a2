// The quickstart: `npm run demo` runs this file with REDIS_URL pointing at a private Redis.
// A Worker and a Dispatcher share this one process here; in an application they usually live
// in different processes (an HTTP server sends, one or more workers run), with the same code.
// Ctrl-C (or SIGTERM) during the tour closes the worker gracefully, as a worker process should.
import { randomBytes } from 'node:crypto';
import { Dispatcher, TaskFailedError, Worker, type TaskProxy, type TaskResult, onShutdownSignal } from 'heimdall-tasks';
import { ReportService } from './services/report-service.js';
import { deleteKeys } from './services/cleanup.js';

const connection = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
// Every key this demo writes starts with this prefix, and is deleted at the end.
const prefix = process.env.HEIMDALL_PREFIX ?? `heimdall-demo-${randomBytes(4).toString('hex')}`;

const say = (line = ''): void => console.log(line);
const seconds = (ms: number): string => (ms / 1000).toFixed(3);

async function main(): Promise<void> {
  say(`heimdall-tasks quickstart on ${connection}, key prefix '${prefix}'`);

  const worker = new Worker({ connection, prefix, services: [new ReportService()], concurrency: 10 });
  worker.on('error', (err) => console.error(`worker error: ${err.message}`));
  await worker.start();
  const dispatcher = new Dispatcher({ connection, prefix });
  const reports = dispatcher.tasks(ReportService);
  say(`Started worker ${worker.id} (queue 'default', concurrency 10) and a dispatcher.`);

  let closing: Promise<void> | undefined;
  const closeAll = (): Promise<void> =>
    (closing ??= (async () => {
      // Running tasks get 5 s to end; then their AbortSignal fires and they go back to the queue.
      await worker.close({ timeout: 5 });
      await deleteKeys(dispatcher.client, prefix);
      await dispatcher.close();
      say();
      say('Closed the worker and the dispatcher and deleted the demo keys. Done.');
    })());
  const signalled = onShutdownSignal(async (signal) => {
    say();
    say(`${signal}: closing the worker; running tasks get 5 s to end, then go back to the queue`);
    await closeAll();
  });

  try {
    await uniqueClicks(reports);
    await rateLimited(worker, reports);
    await failure(reports);
  } catch (err) {
    if (!signalled.requested) throw err; // a tour cut short by Ctrl-C is no error
  } finally {
    await closeAll();
  }
}

type Reports = TaskProxy<ReportService>;

/** 1 + 2: a unique task clicked ten times, and its result awaited with get({ timeout }). */
async function uniqueClicks(reports: Reports): Promise<void> {
  say();
  say('1. Ten clicks on "Generate report" for customer 42 (a unique task)');
  const clicks: TaskResult<{ url: string; pages: number }>[] = await Promise.all(
    Array.from({ length: 10 }, () => reports.generateReport.delay(42)),
  );
  const ids = new Set(clicks.map((c) => c.id));
  const duplicates = clicks.filter((c) => c.duplicate).length;
  const [first] = ids;
  say(`   10 clicks -> ${ids.size} task (${first}), ${duplicates} duplicates returned that same task.`);
  const holder = await reports.generateReport.current(42);
  say(`   generateReport.current(42) names the lock holder: ${holder?.id ?? 'nobody'}.`);

  say();
  say('2. Waiting for the report with get({ timeout: 10 })');
  const handle = clicks.find((c) => !c.duplicate)!;
  const report = await handle.get({ timeout: 10 });
  const info = await handle.info();
  say(`   Result: ${JSON.stringify(report)}`);
  say(`   State ${info.state}, ran ${info.finishedAt!.getTime() - info.startedAt!.getTime()} ms on worker ${info.worker}.`);
  const again = await reports.generateReport.delay(42);
  say(`   The lock ended with the task: an 11th click starts a new task ${again.id} (duplicate: ${again.duplicate}).`);
  await again.get({ timeout: 10 });
}

/** 3: six calls of a task limited to 2 starts per second, across all workers. */
async function rateLimited(worker: Worker, reports: Reports): Promise<void> {
  say();
  say('3. Six downloads of a task with rateLimit [2, 1]: at most 2 starts in any 1 s window');
  const t0 = performance.now();
  const at = (): string => `+${seconds(performance.now() - t0)} s`;
  const onStarted = (e: { name: string; args: unknown[] }): void => {
    if (e.name === 'ReportService.downloadFromAmazon') say(`   ${at()}  download for customer ${String(e.args[0])} started`);
  };
  const onLimited = (e: { args: unknown[]; delayMs: number }): void => {
    say(`   ${at()}  download for customer ${String(e.args[0])} is over the limit: rescheduled in ${seconds(e.delayMs)} s`);
  };
  worker.on('started', onStarted).on('rateLimited', onLimited);
  const handles = await Promise.all([1, 2, 3, 4, 5, 6].map((customer) => reports.downloadFromAmazon.delay(customer)));
  await Promise.all(handles.map((h) => h.get({ timeout: 20 })));
  worker.off('started', onStarted).off('rateLimited', onLimited);

  // The start times the fetch script recorded on the Redis clock: the clock the limit uses.
  const starts = (await Promise.all(handles.map(async (h) => (await h.info()).startedAt!.getTime()))).sort((a, b) => a - b);
  const offsets = starts.map((s) => s - starts[0]!);
  say(`   Start times from info().startedAt (Redis clock), seconds after the first: ${offsets.map(seconds).join(', ')}`);
  const crowded = offsets.some((o, i) => i >= 2 && o - offsets[i - 2]! < 1000);
  say(crowded ? '   !! Some 1 s window holds 3 starts.' : '   No 1 s window holds more than 2 starts.');
}

/** 4: a task that throws; the caller gets its name, message and traceback. */
async function failure(reports: Reports): Promise<void> {
  say();
  say('4. A task that fails: chargeCard(7, 1999)');
  const handle = await reports.chargeCard.delay(7, 1999);
  try {
    await handle.get({ timeout: 10 });
    say('   It succeeded, which it should not have.');
  } catch (err) {
    if (!(err instanceof TaskFailedError)) throw err;
    say(`   get() rejected with ${err.name} (code ${err.code}) for task ${err.taskId}:`);
    say(`   name:    ${err.remoteName}`);
    say(`   message: ${err.remoteMessage}`);
    say('   traceback (first 3 lines):');
    for (const line of (err.traceback ?? '').split('\n').slice(0, 3)) say(`     ${line.trim()}`);
  }
  say(`   status() -> ${await handle.status()}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
