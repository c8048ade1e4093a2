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
 * Later signals are ignored, unless `options.onRepeat` is given: a terminal's Ctrl-C reaches
 * every process of the foreground group, and wrappers such as `npm run` forward it again, so one
 * key press can arrive more than once. The close timeout bounds the wait. With `onRepeat`, a
 * signal that comes 1 s or more after the first (a second key press, not an echo of the first)
 * calls it, e.g. to hand the running tasks back at once with `worker.close({ timeout: 0 })`.
 */
export function onShutdownSignal(shutdown: (signal: NodeJS.Signals) => Promise<void>, options: ShutdownSignalOptions = {}): ShutdownSignalHandle {
  let requested = false;
  let firstAt = 0;
  const handler = (signal: NodeJS.Signals): void => {
    if (requested) {
      if (options.onRepeat && Date.now() - firstAt >= REPEAT_AFTER_MS) options.onRepeat(signal);
      return;
    }
    requested = true;
    firstAt = Date.now();
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

/** A signal this long (ms) after the first is a new request; sooner, an echo of the first. */
const REPEAT_AFTER_MS = 1000;

/** Options of onShutdownSignal. */
export interface ShutdownSignalOptions {
  /**
   * Called for each SIGINT or SIGTERM that arrives 1 s or more after the one that started the
   * shutdown (sooner ones are taken for the same key press and ignored). Default: none, every
   * later signal is ignored.
   */
  onRepeat?: (signal: NodeJS.Signals) => void;
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
