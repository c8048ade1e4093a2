import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // One private redis-server for the whole run, started and stopped by heimdall-tasks/testing.
    globalSetup: ['./test/global-setup.ts'],
    include: ['test/**/*.test.ts'],
  },
});
