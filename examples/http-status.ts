// "One task at a time" behind an HTTP API, the use case of the Celery + FastAPI guide, without
// a lock or a `current_task` key of our own: the unique lock is taken in the same Redis script
// that enqueues, released when the task ends, and `current()` reads who holds it.
//
// And the guide's "cancel", done right. The guide calls `revoke(task_id, terminate=True,
// signal="SIGKILL")`, which kills the worker's process with the task in it. Here `revoke()`
// works from the web process whichever worker runs the export: the export's AbortSignal fires,
// it stops at its next step, the task ends REVOKED and its lock is released, so the next
// export can start at once. `terminate=1` is there for a task that ignores its signal.
//
//   GET /start?rows=N   sends ExportService.runExport(N); answers {id, status, duplicate}
//   GET /status[?id=X]  the task X, or the export now queued or running: its status, and its
//                       result, its error with traceback, or why it was revoked
//   GET /cancel[?id=X][&terminate=1]
//                       revokes the task X, or the export now queued or running: 200 when it
//                       is REVOKED, 202 when it is running and its signal was fired (it ends
//                       REVOKED when it stops; poll /status)
//
// To keep the example self-contained, the program calls its own server and prints each answer.
// With --serve it then keeps serving until Ctrl-C or SIGTERM, which close the worker gracefully:
// a running export gets 1 s, then goes back to the queue for the next worker.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Dispatcher, TaskRevokedError, Worker, type TaskResult, onShutdownSignal } from 'heimdall-tasks';
import { ExportService } from './services/export-service.js';
import { deleteKeys } from './services/cleanup.js';

const connection = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefix = process.env.HEIMDALL_PREFIX ?? `heimdall-demo-${randomBytes(4).toString('hex')}`;
const serve = process.argv.includes('--serve');

const dispatcher = new Dispatcher({ connection, prefix });
const exportTasks = dispatcher.tasks(ExportService);

async function describeTask(task: TaskResult): Promise<Record<string, unknown>> {
  const info = await task.info();
  return {
    id: task.id,
    status: info.state,
    ...(info.state === 'SUCCESS' ? { result: info.result } : {}),
    ...(info.state === 'FAILURE' && info.error
      ? { error: `${info.error.name}: ${info.error.message}`, traceback: info.error.traceback }
      : {}),
    ...(info.state === 'REVOKED' ? { reason: info.revokeReason } : {}),
  };
}

/** The task named by ?id=, or the export that holds the lock now (null when none does). */
async function taskOf(url: URL): Promise<TaskResult | null> {
  const id = url.searchParams.get('id');
  // current() takes the same arguments as delay(); this task's key ignores them, so any number will do.
  return id ? dispatcher.result(id) : await exportTasks.runExport.current(0);
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const reply = (code: number, body: unknown): void => {
    res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  };
  const none = { error: 'no export is queued or running; pass ?id= for another task' };
  if (url.pathname === '/start') {
    const rows = Number(url.searchParams.get('rows') ?? '100');
    // A duplicate start is not an error: delay() returns the export already queued or running.
    const task = await exportTasks.runExport.delay(rows);
    return reply(task.duplicate ? 200 : 202, { id: task.id, status: await task.status(), duplicate: task.duplicate });
  }
  if (url.pathname === '/status') {
    const task = await taskOf(url);
    if (!task) return reply(404, none);
    return reply(200, await describeTask(task));
  }
  if (url.pathname === '/cancel') {
    const task = await taskOf(url);
    if (!task) return reply(404, none);
    // One script in Redis: a queued export never starts; a running one is told through Redis,
    // whichever process runs it. revoke() answers with the state after the call.
    const status = await task.revoke({ terminate: url.searchParams.get('terminate') === '1' });
    if (status === 'PENDING') return reply(404, { id: task.id, error: 'no such task' });
    if (status === 'SUCCESS' || status === 'FAILURE') return reply(409, { id: task.id, status, error: 'it has already ended' });
    return reply(status === 'STARTED' ? 202 : 200, { id: task.id, status });
  }
  reply(404, { error: 'try /start, /status or /cancel' });
}

async function main(): Promise<void> {
  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: String(err) }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  console.log(`HTTP server on ${base}, Redis ${connection}, key prefix '${prefix}'`);

  const call = async (path: string): Promise<Record<string, unknown>> => {
    const res = await fetch(base + path);
    const body = (await res.json()) as Record<string, unknown>;
    const { traceback, ...shown } = body;
    console.log(`GET ${path} -> ${res.status} ${JSON.stringify(shown)}`);
    if (typeof traceback === 'string') {
      for (const line of traceback.split('\n').slice(0, 3)) console.log(`    traceback: ${line.trim()}`);
    }
    return body;
  };

  const worker = new Worker({ connection, prefix, services: [new ExportService()] });
  let closing: Promise<void> | undefined;
  const closeAll = (): Promise<void> =>
    (closing ??= (async () => {
      // Nothing runs at the end of the tour; on a signal, a running export gets 1 s to end,
      // then its AbortSignal fires and it goes back to the front of the queue.
      await worker.close({ timeout: 1 });
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await deleteKeys(dispatcher.client, prefix);
      await dispatcher.close();
      console.log('\nClosed the server, the worker and the dispatcher. Done.');
    })());
  // Ctrl-C or SIGTERM: close the worker gracefully, report the export it handed back, clean up.
  const signalled = onShutdownSignal(async (signal) => {
    console.log(`\n${signal}: closing the worker; a running export gets 1 s to end, then goes back to the queue`);
    await worker.close({ timeout: 1 });
    const holder = await exportTasks.runExport.current(0);
    if (holder) {
      console.log(`Export ${holder.id} was handed back: it is ${await holder.status()} and still holds the lock, for the next worker to run.`);
    }
    await closeAll();
  });

  let toured = false;
  try {
    console.log('\nNo worker runs yet, so the first export stays queued:');
    const first = String((await call('/start?rows=3')).id);
    await call('/start?rows=5');
    await call('/status');

    console.log('\nA worker starts and runs it:');
    await worker.start();
    // A browser would poll /status; this program waits for the end instead.
    await dispatcher.result(first).get({ timeout: 10 });
    await call(`/status?id=${first}`);
    await call('/status');

    console.log('\nThe lock went with the export, so a new one may start; this one fails:');
    const second = String((await call('/start?rows=-1')).id);
    await dispatcher.result(second).get({ timeout: 10 }).catch(() => undefined);
    await call(`/status?id=${second}`);

    console.log('\nCancel: a ten-million-row export (100 s) is revoked while it runs:');
    const running = new Promise<void>((resolve) => worker.once('started', () => resolve()));
    const big = String((await call('/start?rows=10000000')).id);
    await running;
    await call('/status');
    await call('/cancel');
    try {
      await dispatcher.result(big).get({ timeout: 10 });
    } catch (err) {
      if (!(err instanceof TaskRevokedError)) throw err;
      console.log(`get() rejected with ${err.name}: ${err.message}`);
    }
    await call(`/status?id=${big}`);

    console.log('\nIts lock went with it, so the next export starts at once:');
    const next = String((await call('/start?rows=2')).id);
    await dispatcher.result(next).get({ timeout: 10 });
    toured = true;
  } catch (err) {
    if (!signalled.requested) throw err; // a tour cut short by Ctrl-C is no error
  } finally {
    if (!(toured && serve)) await closeAll();
  }
  if (serve && !signalled.requested) {
    console.log(`\nServing ${base} until Ctrl-C or SIGTERM; try /start?rows=10000000, /status and /cancel.`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
