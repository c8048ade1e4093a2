// The connection URLs of docs/deployments.md, through every door a user opens: the testing kit
// (createTestApp), the NestJS module (forRoot) and the `heimdall` command (--url, REDIS_URL), run
// against a real local Redis Cluster (redis+cluster://) and a real Sentinel set (redis+sentinel://).
import { Test } from '@nestjs/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Task } from 'heimdall-tasks';
import { createTestApp } from 'heimdall-tasks/testing';
import { Dispatcher, HeimdallModule } from 'heimdall-tasks/nestjs';
import { startCluster, startSentinel, type LocalCluster, type LocalSentinel } from '../../scripts/redis-deployments.mjs';
import { newPrefix } from '../helpers.js';
import { runHeimdall } from '../fixtures/cli/heimdall.js';

class Greeter {
  @Task({ queue: 'greetings' })
  async greet(name: string): Promise<string> {
    return `hello ${name}`;
  }
}

/** Each door, on one connection URL. */
async function throughEveryDoor(url: string): Promise<void> {
  // The testing kit: dispatch, drain, read the result.
  const app = await createTestApp({ services: [new Greeter()], connection: url });
  try {
    const sent = await app.dispatcher.tasks(Greeter).greet.delay('kit');
    await app.drain();
    expect(await sent.get({ timeout: 10 })).toBe('hello kit');
  } finally {
    await app.close();
  }

  // The NestJS module: its worker runs what its Dispatcher sends.
  const prefix = newPrefix('nest-url');
  const moduleRef = await Test.createTestingModule({
    imports: [HeimdallModule.forRoot({ connection: url, prefix })],
    providers: [Greeter],
  }).compile();
  const nest = moduleRef.createNestApplication();
  try {
    await nest.init();
    const sent = await nest.get(Dispatcher).tasks(Greeter).greet.delay('nest');
    expect(await sent.get({ timeout: 10 })).toBe('hello nest');

    // The CLI reads the same system through --url: the queue and its one succeeded task.
    const ran = await runHeimdall({}, 'inspect', 'queues', '--url', url, '--prefix', prefix, '--json');
    expect(ran.stderr).toBe('');
    expect(ran.code).toBe(0);
    const queues = JSON.parse(ran.stdout) as { queue: string }[];
    expect(queues.map((q) => q.queue)).toContain('greetings');
    const status = await runHeimdall({ REDIS_URL: url, HEIMDALL_PREFIX: prefix }, 'status', sent.id, '--json');
    expect(status.code).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ state: 'SUCCESS', result: 'hello nest' });
  } finally {
    await nest.close();
  }
}

describe('connection URLs of a real deployment', () => {
  let cluster: LocalCluster | undefined;
  let sentinel: LocalSentinel | undefined;
  beforeAll(async () => {
    [cluster, sentinel] = await Promise.all([startCluster({ replicas: 0, log: () => undefined }), startSentinel({ log: () => undefined })]);
  }, 90_000);
  afterAll(async () => {
    await Promise.all([cluster?.stop(), sentinel?.stop()]);
  });

  it('redis+cluster:// reaches a Redis Cluster from the testing kit, NestJS and the CLI', { timeout: 90_000 }, async () => {
    await throughEveryDoor(`redis+cluster://${cluster!.seeds.map((s) => `${s.host}:${s.port}`).join(',')}`);
  });

  it('redis+sentinel:// reaches the master a Sentinel set names, from the same three', { timeout: 90_000 }, async () => {
    await throughEveryDoor(`redis+sentinel://${sentinel!.sentinels.map((s) => `${s.host}:${s.port}`).join(',')}/${sentinel!.name}`);
  });
});
