import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const base = defineConfig({
  resolve: {
    // Tests and examples import the package by name, as users do; here it resolves to the source.
    // Exact matches, so a subpath such as 'heimdall-tasks/testing' is not read as 'heimdall-tasks' plus a path.
    alias: [
      { find: /^heimdall-tasks$/, replacement: fileURLToPath(new URL('./src/index.ts', import.meta.url)) },
      { find: /^heimdall-tasks\/testing$/, replacement: fileURLToPath(new URL('./src/testing/index.ts', import.meta.url)) },
      { find: /^heimdall-tasks\/nestjs$/, replacement: fileURLToPath(new URL('./src/nestjs/index.ts', import.meta.url)) },
      { find: /^heimdall-tasks\/vite$/, replacement: fileURLToPath(new URL('./src/vite/index.ts', import.meta.url)) },
      { find: /^heimdall-tasks\/prometheus$/, replacement: fileURLToPath(new URL('./src/prometheus/index.ts', import.meta.url)) },
      { find: /^heimdall-tasks\/otel$/, replacement: fileURLToPath(new URL('./src/otel/index.ts', import.meta.url)) },
    ],
  },
  test: {
    testTimeout: 60_000,
    hookTimeout: 30_000,
    pool: 'forks',
    projects: [
      // Pure code: no Redis is started (`npm run test:unit`).
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      // Everything that talks to Redis: one private redis-server for the run (test/global-setup.ts).
      // The failover tests and the bench:cluster smoke test start deployments of their own and
      // run in `npm run test:cluster` and `npm run test:sentinel` (vitest.cluster.config.ts,
      // vitest.sentinel.config.ts).
      {
        extends: true,
        test: {
          name: 'redis',
          include: ['test/**/*.test.ts'],
          exclude: ['test/unit/**', 'test/toolchains/**', 'test/integration/failover-*.test.ts', 'test/integration/bench-cluster.test.ts'],
          globalSetup: ['test/global-setup.ts'],
        },
      },
    ],
  },
});
export default base;

/**
 * This config's resolve and timeouts with one Redis project of `name` in place of its two, for
 * the suites against other deployments (merging configs would add to the projects, and run the
 * single-server project too). The global setup starts the deployment HEIMDALL_TEST_TOPOLOGY names.
 */
export function redisProjectOnly(name: string, files: { include: string[]; exclude?: string[] }): typeof base {
  return defineConfig({
    ...base,
    test: { ...base.test, projects: [{ extends: true, test: { name, ...files, globalSetup: ['test/global-setup.ts'] } }] },
  });
}
