// heimdall-tasks/testing is an entry of its own: the core never imports it, and the package
// exports it for both builds with its types.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

describe('heimdall-tasks/testing', () => {
  it('is imported by no module outside src/testing', () => {
    const importers = sources(join(ROOT, 'src'))
      .filter((f) => !relative(ROOT, f).startsWith(join('src', 'testing')))
      .filter((f) => /(?:\bfrom|\bimport\s*\(?)\s*['"](?:[^'"]*\/)?testing(?:\/[^'"]*)?['"]/.test(readFileSync(f, 'utf8')));
    expect(importers.map((f) => relative(ROOT, f))).toEqual([]);
  });

  it('is exported for import and require, with types', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { exports: Record<string, unknown> };
    expect(pkg.exports['./testing']).toEqual({
      import: { types: './dist/esm/testing/index.d.ts', default: './dist/esm/testing/index.js' },
      require: { types: './dist/cjs/testing/index.d.ts', default: './dist/cjs/testing/index.js' },
    });
  });

  it('heimdall-tasks/vite is exported for import and require, with types, and loads no bundler itself', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { exports: Record<string, unknown> };
    expect(pkg.exports['./vite']).toEqual({
      import: { types: './dist/esm/vite/index.d.ts', default: './dist/esm/vite/index.js' },
      require: { types: './dist/cjs/vite/index.d.ts', default: './dist/cjs/vite/index.js' },
    });
    // esbuild is the user's dev dependency, loaded when the plugin first transforms a file.
    expect(readFileSync(join(ROOT, 'src', 'vite', 'index.ts'), 'utf8')).not.toMatch(/from ['"]esbuild['"]/);
  });
});
