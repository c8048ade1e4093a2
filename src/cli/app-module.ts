// `heimdall worker --app <module>`: finds the worker configuration a module exports. The
// convention (docs/cli.md): `export default` the options of `new Worker()`, or a function (sync or
// async) returning them; a named export `worker` wins over the default. `connection` and `prefix`
// may be left out: the command fills them in from --url/REDIS_URL and --prefix/HEIMDALL_PREFIX.
import { existsSync } from 'node:fs';
import { extname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { ConnectionOption } from '../core/protocol/connection.js';
import type { WorkerOptions } from '../core/worker/worker-options.js';
import { UsageError } from './shared.js';

/** What an app module gives: the options of `new Worker()`, where `connection` may be left out. */
export type WorkerAppOptions = Omit<WorkerOptions, 'connection'> & { connection?: ConnectionOption };

const JS = new Set(['.js', '.mjs', '.cjs']);
const TS = new Set(['.ts', '.mts', '.cts']);

/** What Node says when it cannot run a TypeScript file by itself. */
const NO_TYPESCRIPT = new Set(['ERR_UNKNOWN_FILE_EXTENSION', 'ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX', 'ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING']);

/**
 * Imports the app module at `path` (relative to `cwd`) and returns the worker options it exports.
 * `importer` is how the module is imported (a test passes one that fails as Node does).
 */
export async function loadWorkerApp(path: string, cwd: string, importer: (url: string) => Promise<unknown> = (url) => import(url)): Promise<WorkerAppOptions> {
  const file = resolve(cwd, path);
  const ext = extname(file);
  if (!JS.has(ext) && !TS.has(ext)) throw new UsageError(`--app takes a .js, .mjs, .cjs or (through tsx) .ts module, got ${JSON.stringify(path)}`);
  if (!existsSync(file)) throw new Error(`no app module at ${file}`);
  let mod: Record<string, unknown>;
  try {
    mod = (await importer(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (err) {
    const code = (err as { code?: unknown } | null)?.code;
    if (TS.has(ext) && ((typeof code === 'string' && NO_TYPESCRIPT.has(code)) || err instanceof SyntaxError)) {
      throw new Error(
        `cannot load ${path}: this Node does not run TypeScript (with decorators) by itself (${(err as Error).message.split('\n')[0]}). ` +
          `Run the command through tsx: 'node --import tsx node_modules/.bin/heimdall worker --app ${path}' or 'npx tsx node_modules/.bin/heimdall worker --app ${path}', or point --app at the compiled .js`,
      );
    }
    throw new Error(`loading ${path} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  }
  // A CommonJS module's exports are its default; `module.exports = { worker }` counts as a named export.
  const fallback = mod.default as Record<string, unknown> | undefined;
  let exported = mod.worker ?? (typeof fallback === 'object' && fallback !== null && 'worker' in fallback ? fallback.worker : fallback);
  if (typeof exported === 'function') exported = await (exported as () => unknown)();
  if (typeof exported !== 'object' || exported === null || Array.isArray(exported)) {
    throw new Error(
      `${path} exports no worker configuration: 'export default { services: [...] }' (the options of new Worker()), ` +
        `a function returning them, or 'export const worker = ...'; got ${exported === undefined ? 'nothing' : typeof exported}`,
    );
  }
  return exported as WorkerAppOptions;
}
