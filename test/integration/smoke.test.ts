import { describe, expect, it } from 'vitest';
import { Task } from 'heimdall-tasks';
import { useHarness } from '../helpers.js';

class SmokeService {
  @Task()
  async add(a: number, b: number): Promise<number> {
    return a + b;
  }
}

describe('smoke', () => {
  const fresh = useHarness('smoke');
  it('runs a task and returns its result', async () => {
    const h = fresh();
    const worker = h.worker({ services: [new SmokeService()] });
    await worker.start();
    const handle = await h.dispatcher().tasks(SmokeService).add.delay(2, 3);
    expect(await handle.get({ timeout: 10 })).toBe(5);
    expect(await handle.status()).toBe('SUCCESS');
  });
});
