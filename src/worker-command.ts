// The worker command: resolves the model, starts N workers and runs until SIGINT/SIGTERM.
import type { WorkerConfig } from './config.js';
import type { CliIo } from './cli.js';

export async function runWorkerCommand(_config: WorkerConfig, io: CliIo): Promise<number> {
  io.err('dynamo-mocker: serving is not available in this build\n');
  return 1;
}
