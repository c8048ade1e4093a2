// `npm run test:cluster`: the integration suite against a local Redis Cluster of three masters
// with a replica each (test/global-setup.ts starts it; Harness connects through ioredis Cluster
// clients), and the failover tests. Files that can only mean one server are left out, each for
// the reason given beside it.
import { defineConfig } from 'vitest/config';
import base from './vitest.config.js';

process.env.HEIMDALL_TEST_TOPOLOGY = 'cluster';

/** What cannot run against the shared Cluster, and why. */
export const SINGLE_SERVER_ONLY: Record<string, string> = {
  'test/integration/acl-tls.test.ts': 'servers of its own with ACL users and TLS',
  'test/integration/acl-cluster.test.ts': 'a Cluster of its own with ACL users on every node (run by npm test)',
  'test/integration/cli.test.ts': 'the heimdall CLI takes one Redis URL (--redis / REDIS_URL), not Cluster seeds',
  'test/integration/cli-terminal.test.ts': 'the heimdall CLI takes one Redis URL',
  'test/integration/cli-worker.test.ts': 'the heimdall CLI takes one Redis URL',
  'test/integration/cluster-masters.test.ts': 'makes a Cluster of its own (run by npm test)',
  'test/integration/deployments.test.ts': 'starts deployments of its own (run by npm test)',
  'test/integration/failover-sentinel.test.ts': 'the Sentinel failover (npm run test:sentinel)',
  'test/integration/out-of-memory.test.ts': 'CONFIG SET maxmemory on a private server',
  'test/integration/redis-restart.test.ts': 'restarts a private server',
  'test/integration/run-token.test.ts': 'a stalling TCP proxy in front of one server',
  'test/integration/scripts.test.ts': 'MONITOR and INFO commandstats counts on a private server',
  'test/integration/seams.test.ts': 'private servers, MONITOR, a one-node Cluster of its own',
  'test/integration/stranded-ids.test.ts': 'refusals injected with ACL users of one server',
  'test/integration/testing-kit.test.ts': 'startRedis() and its private servers are the subject',
};

// The base config's resolve and timeouts, with this one project in place of its two (merging
// would add to them, and run the single-server project too).
export default defineConfig({
  ...base,
  test: {
    ...base.test,
    projects: [
      {
        extends: true,
        test: {
          name: 'cluster',
          include: ['test/integration/**/*.test.ts'],
          exclude: Object.keys(SINGLE_SERVER_ONLY),
          globalSetup: ['test/global-setup.ts'],
        },
      },
    ],
  },
});
