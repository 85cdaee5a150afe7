// The worker command: starts the configured workers and runs them until SIGINT/SIGTERM or a lost registration.
import type { WorkerConfig } from './config.js';
import { createLogger } from './log.js';
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
    running = await startWorkers(config, { log, abort: abort.signal });
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
  }
}
