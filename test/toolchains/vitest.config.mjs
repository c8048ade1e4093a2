// vitest 4.1 on vite 8, as `npm i -D vitest` installs it, for test/toolchains.test.ts.
// HEIMDALL_DECORATORS=legacy turns on legacy decorators the way a user's tsconfig would.
import { defineConfig } from 'vitest/config';

const legacy = process.env.HEIMDALL_DECORATORS === 'legacy';
export default defineConfig({
  ...(legacy ? { oxc: { decorator: { legacy: true } } } : {}),
  test: { include: ['service/names.test.ts'], globals: true, pool: 'forks' },
});
