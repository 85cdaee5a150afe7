// The worker command: starts the configured workers and runs them until SIGINT/SIGTERM or a lost registration.
import type { WorkerConfig } from './config.js';
import { createLogger, flushLog } from './log.js';
import { StartAborted, startWorkers, type RunningWorkers } from './worker.js';

/** Returns the exit code: 0 after a requested stop, 1 when the workers could not go on. */
export async function runWorkerCommand(config: WorkerConfig): Promise<number> {
  const log = createLogger(config.logLevel);
  // Signals are handled from the first moment: one that arrives while starting stops the start.
  const abort = new AbortController();
  let running: RunningWorkers | null = null;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (running) void running.stop(signal);
    else abort.abort(signal);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // A fault plan's crash ends the process at once, after its log line is out.
    const exit = (code: number): void => void flushLog(log, 500).then(() => process.exit(code));
    running = await startWorkers(config, { log, abort: abort.signal, exit });
    const { failed } = await running.stopped;
    return failed ? 1 : 0;
  } catch (err) {
    if (err instanceof StartAborted) {
      log.info(err.message);
      return 0;
    }
    throw err;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    // Log lines are written asynchronously: the last ones (a lost lease, a failed start) go out before
    // the exit code, and before main prints a start-up error after them.
    await flushLog(log);
  }
}
