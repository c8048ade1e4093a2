import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Task } from 'heimdall-tasks';
import { createTestApp, type TestApp } from 'heimdall-tasks/testing';
import { openTestConnection } from '../helpers.js';

class SmokeService {
  @Task()
  async add(a: number, b: number): Promise<number> {
    return a + b;
  }
}

describe('smoke', () => {
  let app: TestApp | undefined;
  const redis = openTestConnection();
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });
  afterAll(() => redis.close());

  it('runs a task and returns its result', async () => {
    app = await createTestApp({ services: [new SmokeService()], connection: redis.connection });
    const handle = await app.tasks(SmokeService).add.delay(2, 3);
    expect(await handle.get({ timeout: 10 })).toBe(5);
    expect(await handle.status()).toBe('SUCCESS');
    const { ran } = await app.drain();
    expect(ran).toEqual([{ id: handle.id, name: 'SmokeService.add', queue: 'default', args: [2, 3], state: 'SUCCESS', result: 5, attempts: 1 }]);
  });
});
