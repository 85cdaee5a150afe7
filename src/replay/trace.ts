// Mooncake-style JSONL trace parsing: every bad line is an error naming its line number.
// trace-formats.ts imports TraceError from here; the cycle is safe because neither module uses the other while loading.
import { parseTraceText } from './trace-formats.js';

export interface TraceRecord {
  /** 0-based index among the trace's requests (blank lines are skipped, not counted). */
  index: number;
  /** 1-based line number in the file, for messages. */
  line: number;
  timestampMs: number;
  inputLength: number;
  outputLength: number;
  /** One id per `traceBlockSize` tokens of the prompt; equal ids mean equal tokens. */
  hashIds: number[];
  /**
   * A dependent request (multi-turn sessions, agentic traces): it is issued `delayMs` after the last
   * of the listed earlier requests (trace indices) finishes, and `timestampMs` is ignored. A listed
   * request that fails counts as finished.
   */
  after?: { indices: number[]; delayMs: number };
}

export class TraceError extends Error {
  constructor(
    readonly line: number,
    message: string,
  ) {
    super(`trace line ${line}: ${message}`);
    this.name = 'TraceError';
  }
}

/**
 * Parses a Mooncake JSONL trace (sessions included; see trace-formats.ts). `traceBlockSize` is the
 * token count one hash id stands for.
 */
export function parseTrace(text: string, traceBlockSize: number): TraceRecord[] {
  return parseTraceText(text, { format: 'mooncake', traceBlockSize }).records;
}
