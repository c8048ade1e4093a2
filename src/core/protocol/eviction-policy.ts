/**
 * The warning about a Redis that may evict heimdall's keys. heimdall-tasks needs
 * `maxmemory-policy noeviction`: under any other policy a full Redis deletes keys silently,
 * and each kind of key it deletes breaks a promise (docs/redis-memory.md). The policy is read
 * from `INFO memory` rather than `CONFIG GET`, which managed services often refuse.
 */

/** Servers and policies already warned about in this process: `<run_id> <policy>`. */
const warned = new Set<string>();

/** What a full Redis deletes under each evicting policy, and what heimdall-tasks then loses. */
function losses(policy: string): string {
  if (policy.startsWith('volatile-')) {
    return (
      'keys that have a TTL: unique locks (a second task of the same key is enqueued and runs), ' +
      'rate windows (starts over the limit), and records of finished tasks (results gone before resultExpires)'
    );
  }
  return (
    'any key: task records, wait lists and delayed sets (queued tasks that never run), ' +
    'unique locks (a second task of the same key is enqueued and runs), rate windows (starts over the limit), ' +
    'leases of running tasks and records of finished tasks'
  );
}

/**
 * Warns with console.warn, once per process for each server (`run_id`) and policy, when the
 * server's `maxmemory-policy` is not `noeviction`. `server` and `memory` are the replies of
 * `INFO server` and `INFO memory`; `where` names the server (host:port) for the reader.
 */
export function warnIfEvicting(server: string, memory: string, where: string): void {
  const policy = /^maxmemory_policy:(\S+)/m.exec(memory)?.[1];
  if (policy === undefined || policy === 'noeviction') return;
  const runId = /^run_id:(\S+)/m.exec(server)?.[1] ?? where;
  const key = `${runId} ${policy}`;
  if (warned.has(key)) return;
  warned.add(key);
  const maxmemory = /^maxmemory_human:(\S+)/m.exec(memory)?.[1];
  const limit = maxmemory === undefined ? '' : maxmemory === '0B' ? ', no maxmemory set yet' : `, maxmemory ${maxmemory}`;
  console.warn(
    `[heimdall-tasks] Redis at ${where} runs with maxmemory-policy ${policy}${limit}. When it is full it evicts ${losses(policy)}, ` +
      'all without an error. Set maxmemory-policy noeviction (in redis.conf, or CONFIG SET maxmemory-policy noeviction), ' +
      'or give heimdall-tasks a Redis of its own; see docs/redis-memory.md of heimdall-tasks.',
  );
}
