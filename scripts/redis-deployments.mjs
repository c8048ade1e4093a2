// Real local Redis deployments for the tests, from the same redis-server as redis-launcher.mjs:
// a Redis Cluster (masters with replicas) and a Sentinel setup (a master, a replica, three
// sentinels), each on free loopback ports in a temporary directory, torn down by stop(). Nodes
// can be killed one by one (SIGKILL) to test failover.
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { freePort, redisServerBin } from './redis-launcher.mjs';

/** Sends one inline command to a node and resolves with its raw reply text ('' when it cannot). */
export function ask(port, command, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const sock = createConnection({ port, host: '127.0.0.1' });
    let data = '';
    let settled = false;
    const done = (text) => {
      if (settled) return;
      settled = true;
      sock.destroy();
      resolve(text);
    };
    sock.setTimeout(timeoutMs);
    sock.on('connect', () => sock.write(`${command}\r\n`));
    sock.on('data', (d) => {
      data += d;
      // A bulk reply ($<n>\r\n...\r\n) or a one-line reply.
      const bulk = /^\$(\d+)\r\n/.exec(data);
      if (bulk ? data.length >= bulk[0].length + Number(bulk[1]) + 2 : data.includes('\r\n') && !data.startsWith('*')) done(data);
      else if (data.startsWith('*') && data.endsWith('\r\n')) done(data);
    });
    sock.on('error', () => done(''));
    sock.on('timeout', () => done(data));
  });
}

/**
 * Polls `check` every 100 ms until it is true, or throws `what` after `timeoutMs`, with the last
 * words of any of `nodes` that exited.
 */
async function until(check, what, timeoutMs, nodes = []) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastWords(nodes)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Every node this process started and has not seen exit: killed when the process exits, so a
// crashed or killed test run leaves no redis-server behind (stop() is the orderly way).
const live = new Set();
/** The temporary directories of deployments not stopped yet: removed at exit too. */
const roots = new Set();
let reaperInstalled = false;
function installReaper() {
  if (reaperInstalled) return;
  reaperInstalled = true;
  process.on('exit', () => {
    for (const child of live) child.kill('SIGKILL');
    for (const root of roots) rmSync(root, { recursive: true, force: true });
  });
}

/** One redis-server (or sentinel) process on `port` with `args`, and how to stop or kill it. */
function spawnNode(bin, port, dir, args) {
  installReaper();
  mkdirSync(dir, { recursive: true });
  const child = spawn(bin, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  const node = { port, dir, child, exited: false, url: `redis://127.0.0.1:${port}`, output: '' };
  // The last lines it printed, for the error should it not come up.
  const keep = (d) => (node.output = (node.output + d).slice(-2000));
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.on('exit', () => {
    node.exited = true;
    live.delete(child);
  });
  return node;
}

/** What a node that did not come up printed last, for an error message. */
function lastWords(nodes) {
  const dead = nodes.filter((n) => n.exited);
  return dead.length === 0 ? '' : `\n${dead.map((n) => `node ${n.port} exited: ${n.output.trim().split('\n').slice(-3).join(' | ')}`).join('\n')}`;
}

async function stopNode(node) {
  if (node.exited) return;
  const gone = new Promise((r) => node.child.once('exit', r));
  node.child.kill('SIGTERM');
  await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
  if (!node.exited) node.child.kill('SIGKILL');
}

async function killNode(node, port) {
  if (!node) throw new Error(`no node of this deployment listens on port ${port}`);
  if (node.exited) return;
  const gone = new Promise((r) => node.child.once('exit', r));
  node.child.kill('SIGKILL');
  await gone;
}

/**
 * Starts a deployment again, on other ports, when one of its nodes could not bind its port: a port
 * freePort() found free may be taken before the node binds it (by any process's outgoing
 * connection, as the free ports it finds are in the ephemeral range). At most three tries.
 */
async function withFreshPorts(start) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (err) {
      if (attempt >= 3 || !/Address already in use/.test(String(err?.message ?? err))) throw err;
    }
  }
}

/** redis-cli next to redis-server (Debian's redis-tools, a dependency of redis-server). */
function redisCliBin(serverBin) {
  const beside = join(dirname(serverBin), 'redis-cli');
  return existsSync(beside) ? beside : 'redis-cli';
}

/**
 * A temporary directory for the nodes of a deployment, the list they join, and stop(): stops
 * them and removes the directory (which the exit reaper does too, should stop() not be called).
 */
function newDeployment(kind) {
  const root = mkdtempSync(join(tmpdir(), `heimdall-${kind}-`));
  roots.add(root);
  const nodes = [];
  const stop = async () => {
    await Promise.all(nodes.map(stopNode));
    rmSync(root, { recursive: true, force: true });
    roots.delete(root);
  };
  return { root, nodes, stop };
}

/**
 * Starts a Redis Cluster of `masters` masters with `replicas` replicas each, made with
 * `redis-cli --cluster create`, and waits until every node says `cluster_state:ok` and knows all
 * the others, and every replica is in sync with its master. Resolves with { nodes, seeds, stop,
 * kill, nodeFor }: `seeds` as ioredis's Cluster takes them, `kill(port)` SIGKILLs one node,
 * `nodeFor(port)` says which role a node has now.
 */
export async function startCluster(options = {}) {
  return withFreshPorts(() => startClusterOnce(options));
}

async function startClusterOnce({ masters = 3, replicas = 1, nodeTimeoutMs = 2000, log = (m) => console.error(m) } = {}) {
  const bin = redisServerBin({ log });
  const { root, nodes, stop } = newDeployment('cluster');
  try {
    const count = masters * (1 + replicas);
    for (let i = 0; i < count; i++) {
      const port = await freePort();
      // The cluster bus on a free port of its own (by default port + 10000, which may be taken).
      const busPort = await freePort();
      const dir = join(root, String(port));
      nodes.push(
        spawnNode(bin, port, dir, [
          '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no',
          '--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', String(nodeTimeoutMs),
          '--cluster-announce-ip', '127.0.0.1', '--cluster-port', String(busPort),
          // A shard whose master is down must not stop the others (docs/deployments.md).
          '--cluster-require-full-coverage', 'no',
        ]),
      );
    }
    // The deadlines add up to 45 s, under a test hook's minute.
    await until(async () => (await Promise.all(nodes.map((n) => ask(n.port, 'PING')))).every((r) => r.startsWith('+PONG')), 'the cluster nodes to answer', 10_000, nodes);
    const addresses = nodes.map((n) => `127.0.0.1:${n.port}`);
    await new Promise((resolve, reject) =>
      execFile(redisCliBin(bin), ['--cluster', 'create', ...addresses, '--cluster-replicas', String(replicas), '--cluster-yes'], { timeout: 15_000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`redis-cli --cluster create failed: ${err.message}\n${stdout}\n${stderr}`)) : resolve(),
      ),
    );
    await until(
      async () => {
        for (const n of nodes) {
          const info = await ask(n.port, 'CLUSTER INFO');
          if (!info.includes('cluster_state:ok') || !info.includes(`cluster_known_nodes:${count}`)) return false;
          const replication = await ask(n.port, 'INFO replication');
          if (replication.includes('role:slave') && !replication.includes('master_link_status:up')) return false;
        }
        return true;
      },
      'cluster_state:ok on every node, and every replica in sync',
      20_000,
      nodes,
    );
    return {
      nodes: nodes.map((n) => ({ port: n.port, url: n.url })),
      seeds: nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
      /** The process ids of the nodes (for a test that checks stop() leaves none running). */
      pids: nodes.map((n) => n.child.pid),
      stop,
      kill: (port) => killNode(nodes.find((n) => n.port === port), port),
      /** 'master', 'replica', or 'down', as the node says now. */
      nodeFor: async (port) => {
        const node = nodes.find((n) => n.port === port);
        if (!node || node.exited) return 'down';
        const replication = await ask(port, 'INFO replication');
        return replication.includes('role:master') ? 'master' : replication.includes('role:slave') ? 'replica' : 'down';
      },
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * Starts a Sentinel setup: a master, one replica of it, and three sentinels watching it under
 * `name` (quorum 2, down after `downAfterMs`), and waits until every sentinel knows the master,
 * the replica and the other two sentinels. Sentinels run as `redis-server <config> --sentinel`,
 * the same binary Debian's redis-sentinel package links to. Resolves with { name, sentinels,
 * master, replica, stop, kill }: `sentinels` as ioredis's `sentinels` option takes them.
 */
export async function startSentinel(options = {}) {
  return withFreshPorts(() => startSentinelOnce(options));
}

async function startSentinelOnce({ name = 'heimdall', downAfterMs = 1000, failoverTimeoutMs = 5000, log = (m) => console.error(m) } = {}) {
  const bin = redisServerBin({ log });
  const { root, nodes: all, stop } = newDeployment('sentinel');
  try {
    const base = (port, dir) => ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'];
    const masterPort = await freePort();
    const master = spawnNode(bin, masterPort, join(root, 'master'), base(masterPort, join(root, 'master')));
    all.push(master);
    const replicaPort = await freePort();
    const replica = spawnNode(bin, replicaPort, join(root, 'replica'), [...base(replicaPort, join(root, 'replica')), '--replicaof', '127.0.0.1', String(masterPort)]);
    all.push(replica);
    const sentinels = [];
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const dir = join(root, `sentinel-${i}`);
      mkdirSync(dir, { recursive: true });
      // A sentinel rewrites its own configuration file, so each has one of its own.
      const conf = join(dir, 'sentinel.conf');
      writeFileSync(
        conf,
        [
          `port ${port}`,
          'bind 127.0.0.1',
          `dir ${dir}`,
          `sentinel monitor ${name} 127.0.0.1 ${masterPort} 2`,
          `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
          `sentinel failover-timeout ${name} ${failoverTimeoutMs}`,
          `sentinel parallel-syncs ${name} 1`,
          '',
        ].join('\n'),
      );
      const sentinel = spawnNode(bin, port, dir, [conf, '--sentinel']);
      all.push(sentinel);
      sentinels.push(sentinel);
    }
    await until(
      async () => {
        const replication = await ask(replicaPort, 'INFO replication');
        if (!replication.includes('master_link_status:up')) return false;
        for (const s of sentinels) {
          const info = await ask(s.port, 'INFO sentinel');
          if (!new RegExp(`name=${name},status=ok,address=127\\.0\\.0\\.1:${masterPort},slaves=1,sentinels=3`).test(info)) return false;
        }
        return true;
      },
      'the sentinels to know the master, its replica and each other',
      30_000,
      all,
    );
    return {
      name,
      sentinels: sentinels.map((s) => ({ host: '127.0.0.1', port: s.port })),
      master: { port: masterPort, url: master.url },
      replica: { port: replicaPort, url: replica.url },
      pids: all.map((n) => n.child.pid),
      stop,
      kill: (port) => killNode(all.find((n) => n.port === port), port),
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
