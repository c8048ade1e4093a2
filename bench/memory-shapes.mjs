// How much Redis memory a queued task takes in the record shape heimdall-tasks writes today, and
// in the compact shapes issue 14 asked to look at (BENCHMARKS.md, "Memory per task"). Each shape
// writes BENCH_MEMORY_TASKS records (100,000) by pipeline into a private redis-server, FLUSHALL
// between shapes, and prints the `used_memory` delta per task. No event stream: the bench's
// enqueue figure adds it.
//
//   node bench/memory-shapes.mjs
import { createRequire } from 'node:module';
import { startRedis } from '../scripts/redis-launcher.mjs';
import { int } from './lib/env.mjs';

const Redis = createRequire(import.meta.url)('ioredis');
const N = int('BENCH_MEMORY_TASKS', 100_000);
const redis = await startRedis();
const r = new Redis(redis.url);

// The bench's payload, as the dispatcher writes it: the arguments' JSON in chunks of at most 64
// bytes (a listpack value's default limit), here two.
const args = JSON.stringify([{ i: 1, s: 'x'.repeat(100) }]);
// A 22-character id, as newId() makes them.
const id = (i) => `${i.toString(36)}`.padStart(22, 'k');
// A 40-hex-digit lock hash, as the default unique key is.
const hex = (i) => i.toString(16).padStart(8, '0').repeat(5);
const base = 'heimdall:{default}:';
const record = (i) => ['s', 'PENDING', 'c', String(1_796_506_560_423 + i), 'v', '1', 'a', args.slice(0, 64), 'a1', args.slice(64), 'ac', '2', 'n', 'S.noop', 'sn', 'VcYBKbNP'];

async function used() {
  return Number(/used_memory:(\d+)/.exec(await r.info('memory'))[1]);
}

async function shape(label, write) {
  await r.flushall();
  const before = await used();
  for (let from = 0; from < N; from += 1000) {
    const p = r.pipeline();
    for (let i = from; i < Math.min(N, from + 1000); i++) write(p, i);
    await p.exec();
  }
  console.log(`| ${label} | ${Math.round(((await used()) - before) / N)} |`);
}

console.log(`${N} tasks per shape; bytes per task (used_memory delta)\n`);
console.log('| shape | bytes per task |\n| --- | ---: |');
await shape('today: a listpack hash per task, and its id in the wait list', (p, i) => {
  p.hset(`${base}t:${id(i)}`, ...record(i));
  p.rpush(`${base}wait`, id(i));
});
await shape('the same without the fields v, ac and sn', (p, i) => {
  p.hset(`${base}t:${id(i)}`, 's', 'PENDING', 'c', String(1_796_506_560_423 + i), 'a', args.slice(0, 64), 'a1', args.slice(64), 'n', 'S.noop');
  p.rpush(`${base}wait`, id(i));
});
await shape('one string per task, the fields packed into it', (p, i) => {
  p.set(`${base}t:${id(i)}`, record(i).join('\u0000'));
  p.rpush(`${base}wait`, id(i));
});
await shape('one hash per queue, field = task id, value = the packed record', (p, i) => {
  p.hset(`${base}jobs`, id(i), record(i).join('\u0000'));
  p.rpush(`${base}wait`, id(i));
});
await shape("bee-queue's shape: one hash of jobs (numeric id -> JSON), the ids in a list", (p, i) => {
  p.hset('bq:q:jobs', String(i + 1), JSON.stringify({ data: { i: 1, s: 'x'.repeat(100) }, options: { timestamp: 1_796_506_560_423 + i, stacktraces: [] }, status: 'created' }));
  p.lpush('bq:q:waiting', String(i + 1));
});
await shape('unique today: the record with lu and lt, and its lock, a string key with a TTL', (p, i) => {
  p.hset(`${base}t:${id(i)}`, ...record(i), 'lu', hex(i), 'lt', '3600000');
  p.rpush(`${base}wait`, id(i));
  p.set(`${base}lock:S.u:${hex(i)}`, id(i), 'PX', 3_600_000);
});
await shape('unique, a 22-character lock hash instead of 40 hex digits', (p, i) => {
  p.hset(`${base}t:${id(i)}`, ...record(i), 'lu', hex(i).slice(0, 22), 'lt', '3600000');
  p.rpush(`${base}wait`, id(i));
  p.set(`${base}lock:S.u:${hex(i).slice(0, 22)}`, id(i), 'PX', 3_600_000);
});
await shape('unique, the lock without a TTL (the share of its expires entry)', (p, i) => {
  p.hset(`${base}t:${id(i)}`, ...record(i), 'lu', hex(i), 'lt', '3600000');
  p.rpush(`${base}wait`, id(i));
  p.set(`${base}lock:S.u:${hex(i)}`, id(i));
});
r.disconnect();
await redis.stop();
