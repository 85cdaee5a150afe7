// The replay's workload: a trace file in one of the supported formats, or a seeded synthetic one.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { ConfigError } from '../config-error.js';
import type { ReplayConfig } from '../config.js';
import { generateSyntheticTrace, parseSyntheticSpec, SyntheticSpecError } from './synthetic-trace.js';
import type { TraceRecord } from './trace.js';
import { parseTraceText, type TraceFormat } from './trace-formats.js';

export interface Workload {
  records: TraceRecord[];
  /** Tokens one hash id stands for. */
  traceBlockSize: number;
  /** What the report calls it: the trace's file name, or "synthetic workload". */
  name: string;
  /** The trace format, or 'synthetic'. */
  format: TraceFormat | 'synthetic';
}

/** Synthetic workloads use the default Mooncake block size unless --trace-block-size says otherwise. */
const SYNTHETIC_TRACE_BLOCK_SIZE = 512;

/**
 * Reads or generates the workload the config names; trace errors throw TraceError (with the line).
 * `warn` hears of rows the trace's format leaves out.
 */
export function loadWorkload(config: Pick<ReplayConfig, 'tracePath' | 'traceFormat' | 'synthetic' | 'traceBlockSize' | 'engine'>, warn: (line: string) => void = () => {}): Workload {
  if (config.synthetic !== null) {
    let spec;
    try {
      spec = parseSyntheticSpec(config.synthetic, config.engine.seed);
    } catch (err) {
      if (err instanceof SyntheticSpecError) throw new ConfigError('--synthetic', err.message.replace(/^--synthetic:\s*/, ''));
      throw err;
    }
    const traceBlockSize = config.traceBlockSize ?? SYNTHETIC_TRACE_BLOCK_SIZE;
    return { records: generateSyntheticTrace(spec, traceBlockSize), traceBlockSize, name: 'synthetic workload', format: 'synthetic' };
  }
  const path = config.tracePath!;
  // parseReplayConfig checked the name.
  const format = config.traceFormat as TraceFormat | null;
  const parsed = parseTraceText(readFileSync(path, 'utf8'), { format, traceBlockSize: config.traceBlockSize, fileName: path });
  // BurstGPT logs failed requests as rows without prompt tokens.
  if (parsed.skippedRows > 0) warn(`warning: ${parsed.skippedRows} ${parsed.format} rows with no prompt tokens left out (failed requests in the log)\n`);
  return { records: parsed.records, traceBlockSize: parsed.traceBlockSize, name: basename(path), format: parsed.format };
}
