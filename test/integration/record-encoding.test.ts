/**
 * A task's record stays a compact listpack under the default prefix (heimdall) and queue
 * (default), for a plain task, a unique one and a unique rate-limited one, with a realistic task
 * name and the bench's arguments: Redis keeps a hash as a listpack only while every value is at
 * most hash-max-listpack-value (64) bytes, and a unique task's full lock key
 * (`heimdall:{default}:lock:<task>:<40 hex>`, 93 bytes) would turn its record into a hashtable of
 * about twice the memory. So enqueue keeps only the part of the key after
 * `<base>lock:<task>:` (field lu), and every reader builds the key back from it.
 *
 * The records are written on a redis-server of this file's own, under the real default prefix,
 * which no other test uses there.
 */
import { describe, expect, it } from 'vitest';
import { Task } from 'heimdall-tasks';
import { FIELDS, usePrivateRedis } from '../helpers.js';

const ARGS = { i: 1, s: 'x'.repeat(100) };

class ReportService {
  @Task({ name: 'ReportService.generateReport' })
  async generateReport(input: typeof ARGS): Promise<number> {
    return input.i;
  }

  @Task({ name: 'ReportService.uniqueReport01', unique: true })
  async uniqueReport(input: typeof ARGS): Promise<number> {
    return input.i;
  }

  @Task({ name: 'ReportService.limitedReport1', unique: true, rateLimit: [100, 60] })
  async limitedReport(input: typeof ARGS): Promise<number> {
    return input.i;
  }
}

describe('task record encoding under the default prefix', () => {
  const fresh = usePrivateRedis('encoding');

  it('a plain, a unique and a unique rate-limited task: each record a listpack, the unique one within 1.35 times the plain one', async () => {
    const h = fresh();
    expect(await h.admin.config('GET', 'hash-max-listpack-value')).toEqual(['hash-max-listpack-value', '64']);
    const d = h.dispatcher({ prefix: 'heimdall' });
    const tasks = d.tasks(ReportService);
    const handles = {
      plain: await tasks.generateReport.delay(ARGS),
      unique: await tasks.uniqueReport.delay(ARGS),
      limited: await tasks.limitedReport.delay(ARGS),
    };
    const measured: Record<string, { bytes: number; encoding: unknown }> = {};
    for (const [what, r] of Object.entries(handles)) {
      const key = `heimdall:{default}:t:${r.id}`;
      expect(await h.admin.exists(key), what).toBe(1);
      measured[what] = {
        bytes: Number(await h.admin.call('MEMORY', 'USAGE', key, 'SAMPLES', '0')),
        encoding: await h.admin.object('ENCODING', key),
      };
    }
    console.log(`record sizes: ${JSON.stringify(measured)}`);
    for (const [what, m] of Object.entries(measured)) expect(m.encoding, what).toBe('listpack');
    // The lock's tail and lifetime add some 55 bytes to the listpack; MEMORY USAGE counts the
    // allocation, in size classes 32 and 64 bytes apart here (312 bytes for the plain record, 408
    // for the unique one with this payload on Redis 7 and jemalloc; a whole lock key: 808).
    expect(measured.unique!.bytes).toBeLessThanOrEqual(1.35 * measured.plain!.bytes);
    expect(measured.limited!.bytes).toBeLessThanOrEqual(1.6 * measured.plain!.bytes);
    // The lock the record names is the one the dispatcher took.
    const lock = await tasks.uniqueReport.lock(ARGS);
    expect(lock?.holder).toBe(handles.unique.id);
  });

  // Records written before lu hold the whole key in lk (a rolling deploy meets both): each form
  // deduplicates, is released by a revoke (revoke-4, which the caller declares the lock for) and
  // by the end of its run (the fetch's finish).
  it.each(['lu', 'lk'] as const)('a record that names its lock by %s: a duplicate meets it, a revoke and a run release it', async (form) => {
    const h = fresh();
    const d = h.dispatcher({ prefix: 'heimdall' });
    const tasks = d.tasks(ReportService);
    // Arguments of its own: the tests of this file share their server and prefix.
    const args = { ...ARGS, i: form === 'lu' ? 2 : 3 };
    expect(await tasks.uniqueReport.lock(args)).toBeNull();
    const send = async () => {
      const r = await tasks.uniqueReport.delay(args);
      const key = `heimdall:{default}:t:${r.id}`;
      const [lk, lu] = await h.admin.hmget(key, FIELDS.lockKey, FIELDS.lockUnique);
      expect(lk).toBeNull();
      expect(lu).toMatch(/^[0-9a-f]{40}$/);
      const whole = `heimdall:{default}:lock:ReportService.uniqueReport01:${lu}`;
      expect(await h.admin.get(whole)).toBe(r.id);
      if (form === 'lk') {
        await h.admin.hdel(key, FIELDS.lockUnique);
        await h.admin.hset(key, FIELDS.lockKey, whole);
        expect(await h.admin.object('ENCODING', key)).toBe('hashtable');
      }
      return { r, whole };
    };

    const { r: first, whole } = await send();
    const dup = await tasks.uniqueReport.delay(args);
    expect(dup.duplicate).toBe(true);
    expect(dup.id).toBe(first.id);
    expect(await first.revoke()).toBe('REVOKED');
    expect(await h.admin.exists(whole), 'the revoke released the lock').toBe(0);

    const { r: second } = await send();
    expect(second.id).not.toBe(first.id);
    const worker = h.worker({ prefix: 'heimdall', services: [new ReportService()] });
    await worker.start();
    expect(await second.get({ timeout: 10 })).toBe(args.i);
    expect(await h.admin.exists(whole), 'the end of the run released the lock').toBe(0);
  });
});
