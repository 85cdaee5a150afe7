// Mooncake-style JSONL trace parsing: every bad line is an error naming its line number.

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

function nonNegativeInt(line: number, obj: Record<string, unknown>, key: string, required: boolean): number | null {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (required) throw new TraceError(line, `missing '${key}'`);
    return null;
  }
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new TraceError(line, `'${key}' must be a non-negative integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Parses the whole trace text. `traceBlockSize` is the token count one hash id stands for. */
export function parseTrace(text: string, traceBlockSize: number): TraceRecord[] {
  const records: TraceRecord[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (raw === '') continue;
    const line = i + 1;
    let obj: unknown;
    try {
      obj = JSON.parse(raw);
    } catch (err) {
      throw new TraceError(line, `not valid JSON (${(err as Error).message})`);
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new TraceError(line, 'expected a JSON object');
    const o = obj as Record<string, unknown>;
    const ts = o.timestamp ?? 0;
    if (typeof ts !== 'number' || !Number.isFinite(ts) || ts < 0) {
      throw new TraceError(line, `'timestamp' must be a non-negative number of milliseconds, got ${JSON.stringify(o.timestamp)}`);
    }
    const inputLength = nonNegativeInt(line, o, 'input_length', true)!;
    if (inputLength < 1) throw new TraceError(line, `'input_length' must be at least 1`);
    const outputLength = nonNegativeInt(line, o, 'output_length', true)!;
    let hashIds: number[] = [];
    if (o.hash_ids !== undefined && o.hash_ids !== null) {
      if (!Array.isArray(o.hash_ids)) throw new TraceError(line, `'hash_ids' must be an array of integers`);
      for (const h of o.hash_ids) {
        if (typeof h !== 'number' || !Number.isSafeInteger(h) || h < 0) {
          throw new TraceError(line, `'hash_ids' must contain non-negative integers, got ${JSON.stringify(h)}`);
        }
      }
      hashIds = o.hash_ids as number[];
      const maxIds = Math.ceil(inputLength / traceBlockSize);
      if (hashIds.length > maxIds) {
        throw new TraceError(
          line,
          `${hashIds.length} hash_ids describe more than input_length ${inputLength} at ${traceBlockSize} tokens per id (at most ${maxIds}); check --trace-block-size`,
        );
      }
    }
    records.push({ index: records.length, line, timestampMs: ts, inputLength, outputLength, hashIds });
  }
  return records;
}
