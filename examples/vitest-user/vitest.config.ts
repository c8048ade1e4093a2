import { defineConfig } from 'vitest/config';
import { decorators } from 'heimdall-tasks/vite';

export default defineConfig({
  // Standard (TC39) decorators under vite 8: compile TypeScript with esbuild (docs/toolchains.md).
  plugins: [decorators()],
  test: {
    // One private redis-server for the whole run, started and stopped by heimdall-tasks/testing.
    globalSetup: ['./test/global-setup.ts'],
    include: ['test/**/*.test.ts'],
  },
});
