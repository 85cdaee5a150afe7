// A sweep thread: replays the configurations it is handed, one at a time, and answers with their summaries.
import { parentPort, workerData } from 'node:worker_threads';
import { simulateTrace } from './run-replay.js';
import type { SyntheticPrompts } from './synthetic-prompts.js';
import type { SweepAnswer, SweepJob } from './sweep.js';
import type { Workload } from './workload.js';

const port = parentPort;
if (!port) throw new Error('sweep-worker runs only as a worker thread');
const workloads = workerData as Workload[];
// One cache per workload: prompts are only shared between replays of the same records.
const promptCaches = workloads.map(() => new Map<string, SyntheticPrompts>());

port.on('message', (job: SweepJob) => {
  // Warnings (e.g. no model config to derive KV bytes from) go back with the answer; the main thread prints each once.
  const warnings: string[] = [];
  const io = { out: () => {}, err: (text: string) => void warnings.push(text), env: process.env, isTty: false };
  simulateTrace(job.config, workloads[job.workload], io, { promptCache: promptCaches[job.workload] }).then(
    ({ summary }) => port.postMessage({ index: job.index, summary, warnings } satisfies SweepAnswer),
    (err: unknown) => port.postMessage({ index: job.index, error: err instanceof Error ? err.message : String(err) } satisfies SweepAnswer),
  );
});
