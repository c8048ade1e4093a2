// vitest 4.1 on vite 7 (esbuild) for test/toolchains.test.ts; runs ../service/names.test.ts.
// HEIMDALL_DECORATORS=legacy turns on legacy decorators the way a user's tsconfig would.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const legacy = process.env.HEIMDALL_DECORATORS === 'legacy';
export default defineConfig({
  root: fileURLToPath(new URL('..', import.meta.url)),
  esbuild: { tsconfigRaw: { compilerOptions: { experimentalDecorators: legacy } } },
  test: { include: ['service/names.test.ts'], globals: true, pool: 'forks' },
});
