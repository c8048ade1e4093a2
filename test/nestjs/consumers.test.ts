// heimdall-tasks/nestjs as users get it: the package built with the repo's build configs and
// installed into a node_modules of its own (outside this repo, so only what is linked there
// resolves), then used by child processes.
//   - A Nest app compiled by tsc with emitDecoratorMetadata, as a CommonJS and as an ESM consumer.
//   - A worker-only Nest process with enableShutdownHooks: SIGTERM mid-task lets the task finish.
//   - The root entry `heimdall-tasks` loads, as CommonJS and ESM, where @nestjs is not installed at
//     all; `heimdall-tasks/nestjs` there fails naming @nestjs (an optional peer dependency).
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher } from 'heimdall-tasks';
import { Redis } from 'ioredis';
import { ROOT, exitOf, newPrefix, redisUrl, waitFor } from '../helpers.js';

const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
let dir = '';

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  const out = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  if (out.error) throw out.error;
  return out;
}

function ok(out: SpawnSyncReturns<string>, what: string): string {
  expect(out.status, `${what}\n${out.stdout}\n${out.stderr}`).toBe(0);
  return out.stdout;
}

/** A project dir whose node_modules holds the built package and links to the repo's packages (except `without`). */
function project(name: string, without: string[]): string {
  const at = join(dir, name);
  mkdirSync(join(at, 'node_modules'), { recursive: true });
  cpSync(join(dir, 'package'), join(at, 'node_modules', 'heimdall-tasks'), { recursive: true });
  for (const entry of readdirSync(join(ROOT, 'node_modules'))) {
    if (entry.startsWith('.') || entry === 'heimdall-tasks' || without.includes(entry)) continue;
    symlinkSync(join(ROOT, 'node_modules', entry), join(at, 'node_modules', entry));
  }
  return at;
}

/** A child process still running: a way to wait for a line of its output, and its exit. */
function launch(file: string, cwd: string, env: NodeJS.ProcessEnv) {
  const child = spawn(process.execPath, [file], { cwd, env: { ...process.env, REDIS_URL: redisUrl(), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = exitOf(child);
  let seen = '';
  const waiters = new Set<() => void>();
  child.stdout.on('data', (d: Buffer) => {
    seen += d.toString();
    for (const w of [...waiters]) w();
  });
  /** Resolves with the first line of stdout matching `pattern`; rejects if the process exits first. */
  const line = (pattern: RegExp): Promise<RegExpExecArray> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const m = pattern.exec(seen);
        if (!m) return;
        waiters.delete(check);
        resolve(m);
      };
      waiters.add(check);
      void exited.then(({ stderr }) => reject(new Error(`${file} exited before printing ${pattern}:\n${seen}\n${stderr}`)));
      check();
    });
  return { child, line, exited };
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'heimdall-nest-consumers-'));
  const pkg = join(dir, 'package');
  ok(run(process.execPath, [TSC, '-p', 'tsconfig.build.json', '--outDir', join(pkg, 'dist/esm')], ROOT), 'ESM build');
  ok(run(process.execPath, [TSC, '-p', 'tsconfig.build.cjs.json', '--outDir', join(pkg, 'dist/cjs')], ROOT), 'CommonJS build');
  writeFileSync(join(pkg, 'dist/cjs/package.json'), JSON.stringify({ type: 'commonjs' }));
  copyFileSync(join(ROOT, 'package.json'), join(pkg, 'package.json'));
}, 180_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('a Nest app compiled by tsc (emitDecoratorMetadata) against the built package', () => {
  let app = '';
  beforeAll(() => {
    app = project('nest-app', []);
    copyFileSync(join(ROOT, 'test/nestjs/fixtures/consumer-app.ts'), join(app, 'app.cts'));
    copyFileSync(join(ROOT, 'test/nestjs/fixtures/consumer-app.ts'), join(app, 'app.mts'));
    copyFileSync(join(ROOT, 'test/nestjs/fixtures/worker-app.ts'), join(app, 'worker.mts'));
    const flags = ['--strict', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--skipLibCheck'];
    const decorators = ['--experimentalDecorators', '--emitDecoratorMetadata', '--types', 'node', '--outDir', 'out', '--rootDir', '.'];
    ok(run(process.execPath, [TSC, ...flags, ...decorators, 'app.cts', 'app.mts', 'worker.mts'], app), 'tsc of the consumer');
  }, 120_000);

  it.each([
    ['CommonJS', 'app.cjs', 'commonjs'],
    ['ESM', 'app.mjs', 'esm'],
  ])('%s consumer: a task runs on the container instance with its dependency injected by type', (_label, file, format) => {
    const out = ok(run(process.execPath, [join('out', file)], app, { REDIS_URL: redisUrl(), HEIMDALL_PREFIX: newPrefix('nest-consumer') }), file);
    expect(JSON.parse(out.trim().split('\n').pop() ?? '')).toEqual({ result: { total: 15 }, sameDispatcher: true, format });
  });

  it('worker-only process: SIGTERM (enableShutdownHooks) closes the worker gracefully, after the running task ends', async () => {
    const prefix = newPrefix('nest-sigterm');
    const list = `${prefix}:release`;
    const { child, line, exited } = launch(join('out', 'worker.mjs'), app, { HEIMDALL_PREFIX: prefix });
    const dispatcher = new Dispatcher({ connection: redisUrl(), prefix });
    const redis = new Redis(redisUrl());
    try {
      await line(/^ready$/m);
      const handle = await dispatcher.send<string>('Holder.hold', [list]);
      await line(new RegExp(`^started ${handle.id}$`, 'm'));
      child.kill('SIGTERM');
      // The worker is closing (its blocking fetch connection is gone) and waits for the task.
      const connections = async (): Promise<string> => String(await redis.call('CLIENT', 'LIST'));
      await waitFor(async () => !(await connections()).includes(`name=heimdall:${prefix}:worker:blocking`), { what: 'the worker to begin closing' });
      expect(await connections()).toContain(`name=heimdall:${prefix}:worker:commands`);
      expect(child.exitCode).toBeNull();
      await redis.rpush(list, 'go');
      const { stderr } = await exited;
      expect(child.signalCode ?? child.exitCode, stderr).toBe('SIGTERM');
      expect(await handle.info()).toMatchObject({ state: 'SUCCESS', result: 'released' });
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      redis.disconnect();
      await dispatcher.close();
    }
  });
});

describe('NestJS 11 (the peer range admits it)', () => {
  const NEST11 = join(ROOT, 'test/nestjs/nest11');
  let app = '';
  beforeAll(() => {
    // Its own packages (test/nestjs/nest11/package.json), installed by .ci/run, or here when missing.
    const installed = join(NEST11, 'node_modules', '.package-lock.json');
    if (!existsSync(installed) || statSync(installed).mtimeMs < statSync(join(NEST11, 'package-lock.json')).mtimeMs) {
      ok(run('npm', ['ci', '--no-audit', '--no-fund'], NEST11), 'npm ci in test/nestjs/nest11');
    }
    app = project('nest11-app', ['@nestjs', 'rxjs', 'reflect-metadata']);
    for (const entry of ['@nestjs', 'rxjs', 'reflect-metadata']) symlinkSync(join(NEST11, 'node_modules', entry), join(app, 'node_modules', entry));
    copyFileSync(join(ROOT, 'test/nestjs/fixtures/consumer-app.ts'), join(app, 'app.cts'));
    const flags = ['--strict', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--skipLibCheck'];
    const decorators = ['--experimentalDecorators', '--emitDecoratorMetadata', '--types', 'node', '--outDir', 'out', '--rootDir', '.'];
    ok(run(process.execPath, [TSC, ...flags, ...decorators, 'app.cts'], app), 'tsc of the consumer against NestJS 11');
  }, 180_000);

  it('a CommonJS consumer on NestJS 11: the task runs on the container instance', () => {
    const version = (JSON.parse(readFileSync(join(app, 'node_modules/@nestjs/core/package.json'), 'utf8')) as { version: string }).version;
    expect(version.split('.')[0]).toBe('11');
    const out = ok(run(process.execPath, [join('out', 'app.cjs')], app, { REDIS_URL: redisUrl(), HEIMDALL_PREFIX: newPrefix('nest11') }), 'app.cjs on NestJS 11');
    expect(JSON.parse(out.trim().split('\n').pop() ?? '')).toEqual({ result: { total: 15 }, sameDispatcher: true, format: 'commonjs' });
  });
});

describe('the root entry where @nestjs is not installed', () => {
  let bare = '';
  beforeAll(() => {
    bare = project('no-nest', ['@nestjs']);
  });

  it('loads as CommonJS and ESM; the nestjs entry fails naming @nestjs', () => {
    writeFileSync(join(bare, 'root.cjs'), "const h = require('heimdall-tasks'); console.log(typeof h.Dispatcher, typeof h.Worker);\n");
    writeFileSync(join(bare, 'root.mjs'), "const h = await import('heimdall-tasks'); console.log(typeof h.Dispatcher, typeof h.Worker);\n");
    expect(ok(run(process.execPath, ['root.cjs'], bare), 'require root').trim()).toBe('function function');
    expect(ok(run(process.execPath, ['root.mjs'], bare), 'import root').trim()).toBe('function function');

    writeFileSync(join(bare, 'nest.cjs'), "require('heimdall-tasks/nestjs');\n");
    const failed = run(process.execPath, ['nest.cjs'], bare);
    expect(failed.status).not.toBe(0);
    expect(failed.stderr).toMatch(/Cannot find (module|package) '@nestjs\/(common|core)'/);
  });
});

describe('examples/nestjs-app', () => {
  let example = '';
  beforeAll(() => {
    example = join(project('example', []), 'nestjs-app');
    cpSync(join(ROOT, 'examples/nestjs-app'), example, { recursive: true });
    writeFileSync(join(example, 'package.json'), JSON.stringify({ type: 'module' }));
    const flags = ['--strict', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--skipLibCheck'];
    const decorators = ['--experimentalDecorators', '--emitDecoratorMetadata', '--types', 'node', '--outDir', 'dist', '--rootDir', '.'];
    ok(run(process.execPath, [TSC, ...flags, ...decorators, 'main.ts', 'worker.ts'], example), 'tsc of examples/nestjs-app');
  }, 120_000);

  it('the web tier dispatches over HTTP (one report per customer at a time); the worker process runs it', async () => {
    const env = { HEIMDALL_PREFIX: newPrefix('nest-example'), PORT: '0' };
    const web = launch('dist/main.js', example, env);
    let worker: ReturnType<typeof launch> | undefined;
    try {
      const [, base] = await web.line(/^listening on (\S+)$/m);
      const post = async (): Promise<{ id: string; duplicate: boolean }> => {
        const res = await fetch(`${base}/reports/42`, { method: 'POST' });
        expect(res.status).toBe(201);
        return (await res.json()) as { id: string; duplicate: boolean };
      };
      // No worker yet: the first report is queued, and a second request for the customer gets it.
      const first = await post();
      const second = await post();
      expect(first.duplicate).toBe(false);
      expect(second).toEqual({ id: first.id, duplicate: true });

      worker = launch('dist/worker.js', example, env);
      await worker.line(/^worker ready$/m);
      const done = await waitFor(
        async () => {
          const body = (await (await fetch(`${base}/reports/${first.id}`)).json()) as { state: string; result: unknown };
          return body.state === 'SUCCESS' ? body : undefined;
        },
        { what: 'the report to succeed', timeout: 20_000 },
      );
      expect(done.result).toEqual({ url: 'https://reports.example.com/customer-42-4200-rows.pdf' });

      for (const p of [web, worker]) p.child.kill('SIGTERM');
      for (const p of [web, worker]) expect((await p.exited).code === 0 || p.child.signalCode === 'SIGTERM').toBe(true);
    } finally {
      for (const p of [web, worker]) if (p && p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    }
  });
});
