#!/usr/bin/env node
// Runs a command with REDIS_URL pointing at a Redis (see redis-launcher.mjs), then stops it.
// Usage: node scripts/with-redis.mjs <command> [args...]
import { spawn } from 'node:child_process';
import { startRedis } from './redis-launcher.mjs';

const [cmd, ...args] = process.argv.slice(2);
if (!cmd) {
  console.error('usage: node scripts/with-redis.mjs <command> [args...]');
  process.exit(2);
}
let redis;
try {
  redis = await startRedis();
} catch (err) {
  console.error(err.message);
  process.exit(1);
}
const child = spawn(cmd, args, { stdio: 'inherit', env: { ...process.env, REDIS_URL: redis.url }, shell: false });
const forward = (sig) => child.kill(sig);
process.on('SIGINT', forward);
process.on('SIGTERM', forward);
child.on('exit', async (code, signal) => {
  await redis.stop();
  process.exit(code ?? (signal ? 1 : 0));
});
