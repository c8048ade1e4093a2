// "One report at a time" behind a REST API, the use case of the Celery + FastAPI guide, without
// a lock or a `current_task` key of our own: the unique lock is taken in the same Redis script
// that enqueues, released when the task ends, and `current()` reads who holds it.
//
// And the guide's "cancel", done right. The guide calls `revoke(task_id, terminate=True,
// signal="SIGKILL")`, which kills the worker's process with the task in it. Here `revoke()`
// works from the web process whichever worker runs the report: the report's AbortSignal fires,
// it stops at its next step, the task ends REVOKED and its lock is released, so the next
// report can start at once. `?terminate=1` is there for a task that ignores its signal.
//
//   POST   /reports {"pages": N}   starts ReportBuilder.build(N): 202 {id, status}; 409 with the
//                                  report already queued or running, if there is one
//   GET    /reports/current        the report queued or running: 200 {id, status}; 404 if none
//   GET    /reports/:id            200 {id, status} and its result, its error with traceback, or
//                                  why it was revoked; 404 for an id no report has
//   GET    /reports/:id/events     its events as Server-Sent Events (queued, started, progress,
//                                  succeeded, ...) from when it was sent, until it ends, read
//                                  from the queue's event stream with dispatcher.events()
//   DELETE /reports/:id[?terminate=1]
//                                  revokes it: 200 when it is REVOKED, 202 when it is running
//                                  and its signal was fired (it ends REVOKED when it stops; poll
//                                  GET /reports/:id), 409 when it had already ended
//
// To keep the example self-contained, the program calls its own server and prints each answer.
// With --serve it then keeps serving until Ctrl-C or SIGTERM, which close the worker gracefully:
// a running report gets 1 s, then goes back to the queue for the next worker.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Dispatcher, TaskRevokedError, Worker, type TaskResult, onShutdownSignal } from 'heimdall-tasks';
import { ReportBuilder } from './services/report-builder.js';
import { deleteKeys } from './services/cleanup.js';

const connection = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefix = process.env.HEIMDALL_PREFIX ?? `heimdall-demo-${randomBytes(4).toString('hex')}`;
const serve = process.argv.includes('--serve');

const dispatcher = new Dispatcher({ connection, prefix });
const reports = dispatcher.tasks(ReportBuilder);

/** A report as the API shows it: its state, and its result, its error or why it was revoked. */
async function describeReport(task: TaskResult): Promise<Record<string, unknown>> {
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

/** The report that holds the lock now: queued or running (null when none does). */
function currentReport(): Promise<TaskResult | null> {
  // current() takes the same arguments as delay(); this task's key ignores them, so any number will do.
  return reports.build.current(0);
}

/** The report with this id; null when Redis has no record of it (never sent, or expired). */
async function reportById(id: string): Promise<TaskResult | null> {
  const task = dispatcher.result(id);
  return (await task.info()).name === undefined ? null : task;
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  let text = '';
  for await (const chunk of req) text += String(chunk);
  return text === '' ? {} : (JSON.parse(text) as unknown);
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const reply = (code: number, body: unknown): void => {
    res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  };
  const method = req.method ?? 'GET';
  const byId = /^\/reports\/([^/]+)$/.exec(url.pathname);
  const eventsOf = /^\/reports\/([^/]+)\/events$/.exec(url.pathname);

  if (method === 'POST' && url.pathname === '/reports') {
    const body = (await readJson(req)) as { pages?: unknown };
    const pages = typeof body.pages === 'number' ? body.pages : 100;
    // The lock is taken in the enqueue script: a second start while one report is queued or
    // running is not sent; delay() resolves to the report that holds the lock.
    const task = await reports.build.delay(pages);
    if (task.duplicate) return reply(409, { error: 'a report is already queued or running', id: task.id, status: await task.status() });
    return reply(202, { id: task.id, status: await task.status() });
  }
  if (method === 'GET' && url.pathname === '/reports/current') {
    const task = await currentReport();
    if (!task) return reply(404, { error: 'no report is queued or running' });
    return reply(200, await describeReport(task));
  }
  if (method === 'GET' && byId) {
    const task = await reportById(byId[1]!);
    if (!task) return reply(404, { id: byId[1], error: 'no such report' });
    return reply(200, await describeReport(task));
  }
  if (method === 'GET' && eventsOf) {
    const task = await reportById(eventsOf[1]!);
    if (!task) return reply(404, { id: eventsOf[1], error: 'no such report' });
    return streamEvents(task, req, res);
  }
  if (method === 'DELETE' && byId) {
    const task = await reportById(byId[1]!);
    if (!task) return reply(404, { id: byId[1], error: 'no such report' });
    // One script in Redis: a queued report never starts; a running one is told through Redis,
    // whichever process runs it. revoke() answers with the state after the call.
    const status = await task.revoke({ terminate: url.searchParams.get('terminate') === '1' });
    if (status === 'SUCCESS' || status === 'FAILURE') return reply(409, { id: task.id, status, error: 'it has already ended' });
    return reply(status === 'STARTED' ? 202 : 200, { id: task.id, status });
  }
  reply(404, { error: 'try POST /reports, GET /reports/current, GET or DELETE /reports/:id, GET /reports/:id/events' });
}

/**
 * A report's events as Server-Sent Events, from when it was sent until it ends (or the client
 * goes away, which aborts the read and closes its Redis connection).
 */
async function streamEvents(task: TaskResult, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const info = await task.info();
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  const gone = new AbortController();
  req.on('close', () => gone.abort());
  for await (const event of dispatcher.events({ queues: ['default'], since: info.createdAt, signal: gone.signal })) {
    if (event.id !== task.id) continue;
    res.write(`event: ${event.type}\nid: ${event.cursor}\ndata: ${JSON.stringify(event)}\n\n`);
    if (event.type === 'succeeded' || event.type === 'failed' || event.type === 'revoked') break;
  }
  res.end();
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

  /** Calls the server as a client would and prints the answer (the first lines of a traceback). */
  const call = async (method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<Record<string, unknown>> => {
    const res = await fetch(base + path, {
      method,
      ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
    });
    const answer = (await res.json()) as Record<string, unknown>;
    const { traceback, ...shown } = answer;
    console.log(`${method} ${path}${body === undefined ? '' : ` ${JSON.stringify(body)}`} -> ${res.status} ${JSON.stringify(shown)}`);
    if (typeof traceback === 'string') {
      for (const line of traceback.split('\n').slice(0, 3)) console.log(`    traceback: ${line.trim()}`);
    }
    return answer;
  };

  const worker = new Worker({ connection, prefix, services: [new ReportBuilder()] });
  let closing: Promise<void> | undefined;
  const closeAll = (): Promise<void> =>
    (closing ??= (async () => {
      // Nothing runs at the end of the tour; on a signal, a running report gets 1 s to end,
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
  // Ctrl-C or SIGTERM: close the worker gracefully, report the report it handed back, clean up.
  const signalled = onShutdownSignal(async (signal) => {
    console.log(`\n${signal}: closing the worker; a running report gets 1 s to end, then goes back to the queue`);
    await worker.close({ timeout: 1 });
    const holder = await currentReport();
    if (holder) {
      console.log(`Report ${holder.id} was handed back: it is ${await holder.status()} and still holds the lock, for the next worker to run.`);
    }
    await closeAll();
  });

  let toured = false;
  try {
    console.log('\nNo worker runs yet, so the first report stays queued, and a second start is refused:');
    const first = String((await call('POST', '/reports', { pages: 3 })).id);
    await call('POST', '/reports', { pages: 5 });
    await call('GET', '/reports/current');

    console.log('\nA worker starts and runs it:');
    await worker.start();
    // A browser would poll GET /reports/:id; this program waits for the end instead.
    await dispatcher.result(first).get({ timeout: 10 });
    await call('GET', `/reports/${first}`);
    await call('GET', '/reports/current');

    console.log('\nThe lock went with the report, so a new one may start; this one fails:');
    const second = String((await call('POST', '/reports', { pages: -1 })).id);
    await dispatcher.result(second).get({ timeout: 10 }).catch(() => undefined);
    await call('GET', `/reports/${second}`);

    console.log('\nCancel: a ten-million-page report (100 s) is revoked while it runs:');
    const running = new Promise<void>((resolve) => worker.once('started', () => resolve()));
    const big = String((await call('POST', '/reports', { pages: 10_000_000 })).id);
    await running;
    await call('GET', '/reports/current');
    await call('DELETE', `/reports/${big}`);
    try {
      await dispatcher.result(big).get({ timeout: 10 });
    } catch (err) {
      if (!(err instanceof TaskRevokedError)) throw err;
      console.log(`get() rejected with ${err.name}: ${err.message}`);
    }
    await call('GET', `/reports/${big}`);

    console.log('\nIts lock went with it, so the next report starts at once:');
    const next = String((await call('POST', '/reports', { pages: 2 })).id);
    await dispatcher.result(next).get({ timeout: 10 });
    await call('DELETE', `/reports/${next}`);
    toured = true;
  } catch (err) {
    if (!signalled.requested) throw err; // a tour cut short by Ctrl-C is no error
  } finally {
    if (!(toured && serve)) await closeAll();
  }
  if (serve && !signalled.requested) {
    console.log(`\nServing ${base} until Ctrl-C or SIGTERM; try POST /reports {"pages": 10000000}, GET /reports/current and DELETE /reports/:id.`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
