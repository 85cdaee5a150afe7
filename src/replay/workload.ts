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
  /** CSV rows left out for having no prompt tokens (BurstGPT logs failed requests that way). */
  skippedRows: number;
}

/** Synthetic workloads use the default Mooncake block size unless --trace-block-size says otherwise. */
const SYNTHETIC_TRACE_BLOCK_SIZE = 512;

/** Reads or generates the workload the config names; trace errors throw TraceError (with the line). */
export function loadWorkload(config: Pick<ReplayConfig, 'tracePath' | 'traceFormat' | 'synthetic' | 'traceBlockSize' | 'engine'>): Workload {
  if (config.synthetic !== null) {
    let spec;
    try {
      spec = parseSyntheticSpec(config.synthetic, config.engine.seed);
    } catch (err) {
      if (err instanceof SyntheticSpecError) throw new ConfigError('--synthetic', err.message.replace(/^--synthetic:\s*/, ''));
      throw err;
    }
    const traceBlockSize = config.traceBlockSize ?? SYNTHETIC_TRACE_BLOCK_SIZE;
    return { records: generateSyntheticTrace(spec, traceBlockSize), traceBlockSize, name: 'synthetic workload', format: 'synthetic', skippedRows: 0 };
  }
  const path = config.tracePath!;
  // parseReplayConfig checked the name.
  const format = config.traceFormat as TraceFormat | null;
  const parsed = parseTraceText(readFileSync(path, 'utf8'), { format, traceBlockSize: config.traceBlockSize, fileName: path });
  return { records: parsed.records, traceBlockSize: parsed.traceBlockSize, name: basename(path), format: parsed.format, skippedRows: parsed.skippedRows };
}
