// heimdall-tasks/vite: a vite (and so vitest) plugin that compiles TypeScript with esbuild, so
// standard (TC39) decorators work under vite 8, whose Oxc transform leaves them in the code for
// Node to choke on (`SyntaxError: Invalid or unexpected token`, with no file or line).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError } from '../core/errors.js';

/** Options of `decorators()`. */
export interface DecoratorsPluginOptions {
  /** The JavaScript esbuild emits: an esbuild `target`. Default: `'es2022'`. */
  target?: string;
  /** Which module ids are compiled. Default: `.ts`, `.tsx`, `.mts` and `.cts` files. */
  include?: RegExp;
  /**
   * The tsconfig esbuild compiles with (its `compilerOptions`: `jsx`, `experimentalDecorators`,
   * `useDefineForClassFields`, ...), as JSON text or an object. Default: the `tsconfig.json` at
   * vite's root, read once (its `extends` is not followed); none when there is no such file.
   */
  tsconfigRaw?: string | Record<string, unknown>;
}

/** The plugin, typed structurally so that this package needs no vite types. */
export interface DecoratorsPlugin {
  /** The plugin's name, as vite reports it in errors. */
  readonly name: 'heimdall-tasks:decorators';
  /** Runs before vite's own transforms. */
  readonly enforce: 'pre';
  /**
   * Returns `{ oxc: false }`: vite 8's Oxc transform off (it would run after this plugin); vite 7
   * ignores the option. Typed loosely, as vite 7's config type has no `oxc`.
   */
  config(): Record<string, unknown>;
  /** Learns vite's root, where the default tsconfig.json is read from. */
  configResolved(config: { root: string }): void;
  /** Compiles one TypeScript module with esbuild; other modules are left alone (null). */
  transform(code: string, id: string): Promise<{ code: string; map: string } | null>;
}

interface Esbuild {
  transform(
    code: string,
    options: { loader: 'ts' | 'tsx'; sourcefile: string; target: string; sourcemap: true; tsconfigRaw?: string | Record<string, unknown> },
  ): Promise<{ code: string; map: string }>;
}

// A variable, so that TypeScript does not look for esbuild's types (this package does not depend on it).
const ESBUILD = 'esbuild';
const TYPESCRIPT = /\.[cm]?tsx?(?:$|\?)/;
const TSX = /\.tsx(?:$|\?)/;

/**
 * A vite plugin for vitest (or vite) 8 with standard decorators: every TypeScript module is
 * compiled by esbuild, which lowers TC39 decorators, instead of Oxc, which does not. It needs
 * `esbuild` installed beside vite (`npm i -D esbuild`). Not for `experimentalDecorators`
 * projects: Oxc compiles those itself (and emits decorator metadata, which esbuild does not).
 *
 * @example
 * // vitest.config.ts
 * import { defineConfig } from 'vitest/config';
 * import { decorators } from 'heimdall-tasks/vite';
 * export default defineConfig({ plugins: [decorators()] });
 */
export function decorators(options: DecoratorsPluginOptions = {}): DecoratorsPlugin {
  if (typeof options !== 'object' || options === null) throw new ConfigError('decorators() takes an options object');
  const target = options.target ?? 'es2022';
  const include = options.include ?? TYPESCRIPT;
  if (typeof target !== 'string' || target === '') throw new ConfigError(`decorators({ target }) must be an esbuild target such as 'es2022'`);
  if (!(include instanceof RegExp)) throw new ConfigError('decorators({ include }) must be a RegExp');
  if (options.tsconfigRaw !== undefined && typeof options.tsconfigRaw !== 'string' && (typeof options.tsconfigRaw !== 'object' || options.tsconfigRaw === null)) {
    throw new ConfigError('decorators({ tsconfigRaw }) must be JSON text or an object');
  }
  let root = process.cwd();
  let tsconfig: string | Record<string, unknown> | undefined | null = options.tsconfigRaw ?? null;
  const tsconfigRaw = (): string | Record<string, unknown> | undefined => {
    if (tsconfig === null) {
      try {
        tsconfig = readFileSync(join(root, 'tsconfig.json'), 'utf8');
      } catch {
        tsconfig = undefined;
      }
    }
    return tsconfig;
  };
  let esbuild: Promise<Esbuild> | undefined;
  const load = (): Promise<Esbuild> =>
    (esbuild ??= (import(/* @vite-ignore */ ESBUILD) as Promise<Esbuild>).catch((err: unknown) => {
      esbuild = undefined;
      throw new ConfigError(
        `heimdall-tasks/vite compiles TypeScript with esbuild, which could not be loaded (${err instanceof Error ? err.message : String(err)}): npm i -D esbuild`,
      );
    }));
  return {
    name: 'heimdall-tasks:decorators',
    enforce: 'pre',
    config: () => ({ oxc: false }),
    configResolved(config) {
      root = config.root;
    },
    async transform(code, id) {
      if (!include.test(id)) return null;
      const { transform } = await load();
      const raw = tsconfigRaw();
      const out = await transform(code, { loader: TSX.test(id) ? 'tsx' : 'ts', sourcefile: id, target, sourcemap: true, ...(raw === undefined ? {} : { tsconfigRaw: raw }) });
      return { code: out.code, map: out.map };
    },
  };
}
