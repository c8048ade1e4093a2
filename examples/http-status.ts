// "One task at a time" behind an HTTP API, the use case of the Celery + FastAPI guide, without
// a lock or a `current_task` key of our own: the unique lock is taken in the same Redis script
// that enqueues, released by the worker when the task ends, and `current()` reads who holds it.
//
//   GET /start?rows=N   sends ExportService.runExport(N); answers {id, status, duplicate}
//   GET /status[?id=X]  the task X, or the export now queued or running; answers its status and
//                       its result or error with traceback
//
// To keep the example self-contained, the program calls its own server and prints each answer.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { Dispatcher, Worker, type TaskResult } from 'heimdall-tasks';
import { ExportService } from './services/export-service.js';
import { deleteKeys } from './services/cleanup.js';

const connection = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefix = process.env.HEIMDALL_PREFIX ?? `heimdall-demo-${randomBytes(4).toString('hex')}`;

const dispatcher = new Dispatcher({ connection, prefix });
const exportTasks = dispatcher.tasks(ExportService);

async function describeTask(task: TaskResult): Promise<Record<string, unknown>> {
  const info = await task.info();
  return {
    id: task.id,
    status: info.state,
    ...(info.state === 'SUCCESS' ? { result: info.result } : {}),
    ...(info.error ? { error: `${info.error.name}: ${info.error.message}`, traceback: info.error.traceback } : {}),
  };
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const reply = (code: number, body: unknown): void => {
    res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  };
  if (url.pathname === '/start') {
    const rows = Number(url.searchParams.get('rows') ?? '100');
    // A duplicate start is not an error: delay() returns the export already queued or running.
    const task = await exportTasks.runExport.delay(rows);
    return reply(task.duplicate ? 200 : 202, { id: task.id, status: await task.status(), duplicate: task.duplicate });
  }
  if (url.pathname === '/status') {
    const id = url.searchParams.get('id');
    // Which export holds the lock now? current() takes the same arguments as delay(); this
    // task's key ignores them, so any number will do.
    const task = id ? dispatcher.result(id) : await exportTasks.runExport.current(0);
    if (!task) return reply(404, { error: 'no export is queued or running; pass ?id= for an older one' });
    return reply(200, await describeTask(task));
  }
  reply(404, { error: 'try /start or /status' });
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
  } finally {
    await worker.close();
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    await deleteKeys(dispatcher.client, prefix);
    await dispatcher.close();
  }
  console.log('\nClosed the server, the worker and the dispatcher. Done.');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
