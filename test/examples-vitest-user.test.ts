// examples/vitest-user is a user's project: its own package.json, vitest config and globalSetup
// (startRedis from heimdall-tasks/testing), and an integration test using createTestApp + drain.
// Here it runs as a user's would: the package is packed with `npm pack` (from the build that
// `npm ci` / `npm run build` made), the project is copied to a temporary directory outside this
// repo (so nothing resolves through the repo's node_modules), installed with npm from that
// tarball, and its own vitest is run. Its globalSetup starts a private redis-server, or uses
// REDIS_URL when the suite was given one.
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { exitOf, ROOT } from './helpers.js';

const EXAMPLE = join(ROOT, 'examples', 'vitest-user');
const NPM = process.platform === 'win32' ? 'npm.cmd' : 'npm';

/** The environment of the child processes: ours, without this vitest run's own variables. */
function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^(VITEST|npm_)/i.test(k) && k !== 'NODE_ENV' && k !== 'TEST') env[k] = v;
  return env;
}

async function run(cmd: string, args: string[], cwd: string): Promise<string> {
  const child = spawn(cmd, args, { cwd, env: { ...childEnv(), NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const { code, stdout, stderr } = await exitOf(child);
  expect(code, `${cmd} ${args.join(' ')} (in ${cwd}) exited with ${code}\nstdout:\n${stdout}\nstderr:\n${stderr}`).toBe(0);
  return stdout;
}

describe('examples/vitest-user', () => {
  const dir = mkdtempSync(join(tmpdir(), 'heimdall-vitest-user-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('installs heimdall-tasks from its packed tarball and its own vitest suite passes', { timeout: 180_000 }, async () => {
    const built = [
      'dist/esm/testing/index.js',
      'dist/cjs/testing/index.js',
      'dist/esm/index.js',
      'dist/esm/vite/index.js',
      'dist/esm/prometheus/index.js',
      'dist/cjs/otel/index.js',
    ].filter((f) => !existsSync(join(ROOT, f)));
    expect(built, 'the package is not built: run `npm run build` (npm ci does it through `prepare`)').toEqual([]);

    // --ignore-scripts: packing must not rebuild dist while other test files run.
    await run(NPM, ['pack', '--ignore-scripts', '--silent', '--pack-destination', dir], ROOT);
    const tarball = readdirSync(dir).find((f) => /^heimdall-tasks-.*\.tgz$/.test(f));
    expect(tarball, 'npm pack wrote a tarball').toBeDefined();

    const app = join(dir, 'app');
    cpSync(EXAMPLE, app, { recursive: true, filter: (src) => !/[\\/](node_modules|\.vite)$/.test(src) });
    const pkg = JSON.parse(readFileSync(join(app, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    expect(pkg.dependencies['heimdall-tasks']).toBe('file:../..');
    pkg.dependencies['heimdall-tasks'] = `file:${join(dir, tarball!)}`;
    writeFileSync(join(app, 'package.json'), JSON.stringify(pkg, null, 2) + '\n');

    await run(NPM, ['install', '--no-audit', '--no-fund', '--no-package-lock', '--prefer-offline', '--loglevel=error'], app);
    // The installed copy is the packed one, with its testing entry, not a link into this repo.
    const installed = join(app, 'node_modules', 'heimdall-tasks');
    expect(existsSync(join(installed, 'dist', 'cjs', 'testing', 'index.d.ts'))).toBe(true);
    expect(existsSync(join(installed, 'dist', 'esm', 'vite', 'index.js'))).toBe(true);
    for (const entry of ['prometheus', 'otel']) {
      for (const file of ['esm/index.js', 'esm/index.d.ts', 'cjs/index.js', 'cjs/index.d.ts']) {
        const [build, name] = file.split('/') as [string, string];
        expect(existsSync(join(installed, 'dist', build, entry, name)), `dist/${build}/${entry}/${name}`).toBe(true);
      }
    }
    // Their libraries are optional peers, so npm did not install them: the suite below, which
    // imports the package's root, passes without them.
    expect(existsSync(join(app, 'node_modules', 'prom-client'))).toBe(false);
    expect(existsSync(join(app, 'node_modules', '@opentelemetry', 'api'))).toBe(false);
    // The package's command is installed too.
    const bin = spawnSync(join(app, 'node_modules', '.bin', 'heimdall'), ['--version'], { encoding: 'utf8' });
    expect(bin.stdout.trim(), bin.stderr).toMatch(/^\d+\.\d+\.\d+/);
    expect(readdirSync(installed)).not.toContain('test');

    const report = join(dir, 'report.json');
    await run(process.execPath, [join(app, 'node_modules', 'vitest', 'vitest.mjs'), 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`], app);
    const result = JSON.parse(readFileSync(report, 'utf8')) as {
      numPassedTests: number;
      numFailedTests: number;
      testResults: { assertionResults: { title: string; status: string; ancestorTitles?: string[] }[] }[];
    };
    expect(result.numFailedTests).toBe(0);
    expect(result.testResults.flatMap((f) => f.assertionResults.map((a) => `${a.status} ${a.title}`)).sort()).toEqual([
      'passed gets a fresh prefix in every test',
      'passed gets a fresh prefix in every test',
      'passed invoices once per customer while one is queued, and runs the reminders queue too',
      'passed invoices once per customer while one is queued, and runs the reminders queue too',
    ]);
    // Both modes ran: on the globalSetup's Redis, and inline.
    expect(result.testResults.flatMap((f) => f.assertionResults.map((a) => (a.ancestorTitles ?? []).join(' '))).sort()).toEqual([
      "BillingService tasks ('inline')",
      "BillingService tasks ('inline')",
      "BillingService tasks ('redis')",
      "BillingService tasks ('redis')",
    ]);
  });
});
