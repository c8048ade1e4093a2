// What a process that runs a Worker does when it is asked to stop: Ctrl-C in a terminal
// (SIGINT), or `kill`, `docker stop`, systemd or Kubernetes (SIGTERM). Exported for apps, the
// examples and a command-line worker.

/**
 * Runs `shutdown` on the first SIGINT or SIGTERM, then exits with code 0 (1 if it threw).
 * `shutdown` should call `worker.close({ timeout })`: the worker stops fetching, lets running
 * tasks end within the timeout, then fires the AbortSignal of those still running and hands
 * them back to the front of their queue (same id, same unique lock), so another worker runs
 * them and none is lost. The explicit exit ends whatever a task that ignored its signal still
 * has pending.
 *
 * Later signals are ignored: a terminal's Ctrl-C reaches every process of the foreground group,
 * and wrappers such as `npm run` forward it again, so one key press can arrive more than once.
 * The close timeout bounds the wait.
 */
export function onShutdownSignal(shutdown: (signal: NodeJS.Signals) => Promise<void>): ShutdownSignalHandle {
  let requested = false;
  const handler = (signal: NodeJS.Signals): void => {
    if (requested) return;
    requested = true;
    shutdown(signal).then(
      () => process.exit(0),
      (err: unknown) => {
        console.error(err);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return {
    get requested() {
      return requested;
    },
    remove() {
      process.off('SIGINT', handler);
      process.off('SIGTERM', handler);
    },
  };
}

/** What onShutdownSignal returns. */
export interface ShutdownSignalHandle {
  /** True once a signal has started the shutdown. */
  readonly requested: boolean;
  /**
   * Takes the handlers off SIGINT and SIGTERM again (a test, or an app that installs its own),
   * so the signals do what they did before. A shutdown already started goes on.
   */
  remove(): void;
}
