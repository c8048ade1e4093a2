// The toolchain matrix of test/toolchains.test.ts: each leg compiles service/ with one toolchain in
// one decorator mode, runs it, and returns what service/probe.ts wrote (mode, names, class names).
// Also a command: `node test/toolchains/run.mjs [leg ...]` prints the result of each leg.
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..', '..');
const OUT = join(HERE, '.out');
const NODE = process.execPath;
const requireHere = createRequire(join(HERE, 'package.json'));

/** The names every leg must register. */
export const EXPECTED_NAMES = [
  'BillingService.invoice',
  'Internal.sweep',
  'Ledger.post',
  'Payouts.pay',
  'ReportService.generate',
  'named.explicit',
];

/** The command that installs the matrix's own toolchains. */
export const INSTALL = 'npm ci --prefix test/toolchains && npm ci --prefix test/toolchains/vite7';

/** Whether the matrix's packages are installed, and not older than their lock files. */
export function installed() {
  return [HERE, join(HERE, 'vite7')].every((dir) => {
    const done = join(dir, 'node_modules', '.package-lock.json');
    return existsSync(done) && statSync(done).mtimeMs >= statSync(join(dir, 'package-lock.json')).mtimeMs;
  });
}

function run(cmd, args, { cwd = HERE, env = {} } = {}) {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0', ...env }, timeout: 120_000, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : 1) : 0, output: `${stdout}${stderr}` });
    });
  });
}

async function must(cmd, args, opts) {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) throw new Error(`${[cmd, ...args].join(' ')} exited ${r.code}:\n${r.output}`);
  return r;
}

/**
 * heimdall-tasks as the legs import it: src bundled by esbuild into node_modules/heimdall-tasks,
 * with `heimdall-tasks/internal` for the registry's discover(). Built once per process.
 */
let prepared;
export function prepare() {
  prepared ??= (async () => {
    const esbuild = requireHere('esbuild');
    const pkg = join(HERE, 'node_modules', 'heimdall-tasks');
    rmSync(pkg, { recursive: true, force: true });
    const common = { bundle: true, platform: 'node', format: 'esm', target: 'node20', packages: 'external', logLevel: 'silent' };
    await esbuild.build({ ...common, entryPoints: [join(ROOT, 'src/index.ts')], outfile: join(pkg, 'index.js') });
    await esbuild.build({ ...common, entryPoints: [join(ROOT, 'src/core/task/registry.ts')], outfile: join(pkg, 'internal.js') });
    await esbuild.build({ ...common, entryPoints: [join(ROOT, 'src/vite/index.ts')], outfile: join(pkg, 'vite.js') });
    writeFileSync(
      join(pkg, 'package.json'),
      JSON.stringify({ name: 'heimdall-tasks', type: 'module', exports: { '.': './index.js', './internal': './internal.js', './vite': './vite.js' } }),
    );
    mkdirSync(OUT, { recursive: true });
    writeFileSync(join(OUT, 'package.json'), JSON.stringify({ type: 'module' }));
  })();
  return prepared;
}

const SERVICE_FILES = ['services', 'probe', 'main'];
const legacyOf = (mode) => mode === 'legacy';
// tsconfig.json is the TC39 one, so that vite, which reads the nearest tsconfig, sees that mode by default.
const tsconfigOf = (mode) => (legacyOf(mode) ? 'tsconfig.legacy.json' : 'tsconfig.json');

/** Compiles service/*.ts file by file with `transform(code, file)`, into .out/<leg>. */
async function perFile(leg, transform) {
  const dir = join(OUT, leg);
  mkdirSync(dir, { recursive: true });
  for (const f of SERVICE_FILES) {
    const file = join(HERE, 'service', `${f}.ts`);
    writeFileSync(join(dir, `${f}.js`), await transform(readFileSync(file, 'utf8'), file));
  }
  return join(dir, 'main.js');
}

const builders = {
  tsc7: (leg, mode) =>
    must(NODE, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', tsconfigOf(mode), '--outDir', join(OUT, leg)]).then(() => join(OUT, leg, 'main.js')),
  tsc5: (leg, mode) =>
    must(NODE, [join(HERE, 'node_modules/typescript/bin/tsc'), '-p', tsconfigOf(mode), '--outDir', join(OUT, leg)]).then(() => join(OUT, leg, 'main.js')),
  esbuild: (leg, mode) =>
    perFile(leg, async (code) => {
      const r = await requireHere('esbuild').transform(code, {
        loader: 'ts', format: 'esm', target: 'node20', tsconfigRaw: { compilerOptions: { experimentalDecorators: legacyOf(mode) } },
      });
      return r.code;
    }),
  swc: (leg, mode) =>
    perFile(leg, async (code, file) => {
      const r = await requireHere('@swc/core').transform(code, {
        filename: file,
        jsc: {
          parser: { syntax: 'typescript', decorators: true },
          target: 'es2022',
          transform: legacyOf(mode) ? { legacyDecorator: true } : { decoratorVersion: '2022-03' },
        },
        module: { type: 'es6' },
      });
      return r.code;
    }),
  'esbuild-bundle': async (leg, mode) => {
    const outfile = join(OUT, leg, 'main.js');
    const heimdall = {
      name: 'heimdall-src',
      setup(build) {
        build.onResolve({ filter: /^heimdall-tasks(\/internal)?$/ }, (a) => ({
          path: join(ROOT, a.path.endsWith('/internal') ? 'src/core/task/registry.ts' : 'src/index.ts'),
        }));
      },
    };
    await requireHere('esbuild').build({
      entryPoints: [join(HERE, 'service/main.ts')], outfile, bundle: true, platform: 'node', format: 'esm', target: 'node20',
      external: ['ioredis', 'ms', 'nanoid', 'reflect-metadata'], plugins: [heimdall], logLevel: 'silent',
      tsconfigRaw: { compilerOptions: { experimentalDecorators: legacyOf(mode) } },
    });
    return outfile;
  },
};

function vitest(dir, config) {
  return (names, mode) => run(NODE, [join(dir, 'node_modules/vitest/vitest.mjs'), 'run', '--config', config], {
    cwd: dir, env: { NAMES_OUT: names, HEIMDALL_DECORATORS: mode },
  });
}

const runners = {
  tsx: (names, mode) =>
    run(NODE, [join(ROOT, 'node_modules/tsx/dist/cli.mjs'), '--tsconfig', tsconfigOf(mode), 'service/main.ts'], { env: { NAMES_OUT: names } }),
  'vitest-vite7': vitest(join(HERE, 'vite7'), 'vitest.config.mjs'),
  'vitest-vite8': vitest(HERE, 'vitest.config.mjs'),
  'vitest-vite8-esbuild': vitest(HERE, 'vitest.fixed.config.mjs'),
  'vitest-vite8-plugin': vitest(HERE, 'vitest.plugin.config.mjs'),
};

/** Every leg: `<toolchain> <mode>`. vitest-vite8 tc39 is the unfixed vite 8: it fails (see docs/toolchains.md). */
export const LEGS = [...Object.keys(builders), ...Object.keys(runners)].flatMap((t) =>
  t === 'vitest-vite8-esbuild' || t === 'vitest-vite8-plugin' ? [`${t} tc39`] : [`${t} legacy`, `${t} tc39`],
);

/** Runs one leg; resolves to { mode, names, atDefinition, classNames } or { failed, output }. */
export async function runLeg(leg) {
  const [toolchain, mode] = leg.split(' ');
  await prepare();
  const id = leg.replace(' ', '-');
  const names = join(OUT, `${id}.json`);
  rmSync(names, { force: true });
  let r;
  if (builders[toolchain]) {
    const main = await builders[toolchain](id, mode);
    r = await run(NODE, [main], { env: { NAMES_OUT: names } });
  } else {
    r = await runners[toolchain](names, mode);
  }
  if (r.code !== 0 || !existsSync(names)) return { failed: true, output: r.output };
  return JSON.parse(readFileSync(names, 'utf8'));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const leg of process.argv.length > 2 ? process.argv.slice(2) : LEGS) {
    const r = await runLeg(leg);
    console.log(leg.padEnd(28), r.failed ? `FAILED\n${r.output}` : JSON.stringify(r));
  }
}
