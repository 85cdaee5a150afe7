// The worker command: starts the configured workers and runs them until SIGINT/SIGTERM or a lost registration.
import type { WorkerConfig } from './config.js';
import type { CliIo } from './io.js';
import { createLogger } from './log.js';
import { startWorkers } from './worker.js';

/** Returns the exit code: 0 after a requested stop, 1 when the workers could not go on. */
export async function runWorkerCommand(config: WorkerConfig, _io: CliIo): Promise<number> {
  const log = createLogger(config.logLevel);
  const running = await startWorkers(config, { log });
  const onSignal = (signal: NodeJS.Signals): void => void running.stop(signal);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const { failed } = await running.stopped;
    return failed ? 1 : 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
