/**
 * onShutdownSignal, the graceful-shutdown helper a worker process installs (exported for apps and
 * a command-line worker), in a real child process: its shutdown runs once, however many signals
 * arrive, the process exits 0 after it (1 when it throws), and remove() gives the signals back.
 */
import { describe, expect, it } from 'vitest';
import { assertAlive, spawnProc, type Proc } from '../fixtures/worker-processes.js';
import { settleWithin, useHarness, waitFor } from '../helpers.js';

const PROGRAM = new URL('../fixtures/signals/shutdown-program.ts', import.meta.url).pathname;

async function started(proc: Proc): Promise<void> {
  await waitFor(
    () => {
      assertAlive([proc]);
      return proc.lines.includes('ready');
    },
    { timeout: 20_000, what: 'the program to install its handlers' },
  );
}

describe('onShutdownSignal', () => {
  const fresh = useHarness('shutdown-signal');

  it('runs the shutdown once for SIGTERM, SIGINT and SIGTERM again, then exits 0', async () => {
    const proc = spawnProc(fresh(), PROGRAM, { MODE: 'resolve' });
    await started(proc);
    proc.child.kill('SIGTERM');
    await waitFor(() => proc.lines.some((l) => l.startsWith('shutdown')), { timeout: 10_000, what: 'the shutdown to begin' });
    // Later signals while the shutdown runs (a terminal's Ctrl-C arriving twice, a wrapper forwarding it) change nothing.
    proc.child.kill('SIGINT');
    await waitFor(() => proc.lines.some((l) => l.startsWith('signal SIGINT')), { timeout: 10_000, what: 'the SIGINT to arrive' });
    proc.child.kill('SIGTERM');
    await waitFor(() => proc.lines.filter((l) => l.startsWith('signal SIGTERM')).length === 2, { timeout: 10_000, what: 'the second SIGTERM to arrive' });
    // The helper's handlers were still installed for each later signal: without the printer, none would have killed the process.
    expect(proc.lines.filter((l) => l.startsWith('signal '))).toEqual(['signal SIGTERM listeners=2', 'signal SIGINT listeners=2', 'signal SIGTERM listeners=2']);
    proc.child.kill('SIGUSR2');
    const exit = await proc.exit;
    expect(exit.code).toBe(0);
    expect(proc.lines.filter((l) => l.startsWith('shutdown'))).toEqual(['shutdown SIGTERM requested=true']);
  });

  it('exits 1, printing the error, when the shutdown throws', async () => {
    const proc = spawnProc(fresh(), PROGRAM, { MODE: 'throw' });
    await started(proc);
    proc.child.kill('SIGINT');
    await waitFor(() => proc.lines.some((l) => l.startsWith('shutdown')), { timeout: 10_000, what: 'the shutdown to begin' });
    proc.child.kill('SIGUSR2');
    const exit = await proc.exit;
    expect(exit.code).toBe(1);
    expect(proc.lines).toContain('shutdown SIGINT requested=true');
    expect(exit.stderr).toMatch(/closing failed/);
  });

  it('after remove(), a signal does what Node does by default: the process is killed by it, no shutdown runs', async () => {
    const proc = spawnProc(fresh(), PROGRAM, { MODE: 'remove' });
    await started(proc);
    proc.child.kill('SIGTERM');
    await settleWithin(proc.exit, 10_000, 'the process to be killed by the signal');
    expect(proc.child.signalCode).toBe('SIGTERM');
    expect(proc.lines.some((l) => l.startsWith('shutdown'))).toBe(false);
  });
});
