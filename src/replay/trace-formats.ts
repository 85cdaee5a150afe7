// Replay trace formats (Mooncake, Dynamo's agentic Mooncake, Azure, BurstGPT, Bailian), detected from the text or chosen.
import { TraceError, type TraceRecord } from './trace.js';

export type TraceFormat = 'mooncake' | 'agentic' | 'azure' | 'burstgpt' | 'bailian';
export const TRACE_FORMATS: readonly TraceFormat[] = ['mooncake', 'agentic', 'azure', 'burstgpt', 'bailian'];

export interface ParsedTrace {
  format: TraceFormat;
  records: TraceRecord[];
  /** tokens per hash id actually used (Bailian's is fixed at 16) */
  traceBlockSize: number;
  /** Rows left out: CSV rows with 0 prompt tokens (BurstGPT's failed requests); 0 for the JSON formats. */
  skippedRows: number;
}

/** Public Mooncake and toolagent traces hash 512 tokens per id (Dynamo's --trace-block-size default). */
const MOONCAKE_BLOCK_SIZE = 512;
/** The Bailian traces are hashed in 16-token blocks (qwen-bailian-usagetraces-anon README; `_blksz_16` file names). */
const BAILIAN_BLOCK_SIZE = 16;

/**
 * Parses a whole trace. `format: null` detects it from the content (the file name only sharpens the
 * message when nothing matches); `traceBlockSize: null` takes the format's own (512, or 16 for Bailian).
 */
export function parseTraceText(text: string, opts: { format: TraceFormat | null; traceBlockSize: number | null; fileName?: string }): ParsedTrace {
  const format = opts.format ?? detectTraceFormat(text, opts.fileName);
  if (!TRACE_FORMATS.includes(format)) throw new RangeError(`unknown trace format '${format}' (expected one of ${TRACE_FORMATS.join(', ')})`);
  const requested = opts.traceBlockSize;
  if (requested !== null && !(Number.isSafeInteger(requested) && requested >= 1)) {
    throw new RangeError(`trace block size must be a positive integer, got ${requested}`);
  }
  const lines = text.split('\n');
  switch (format) {
    case 'mooncake': {
      const bs = requested ?? MOONCAKE_BLOCK_SIZE;
      return { format, records: parseMooncake(lines, bs), traceBlockSize: bs, skippedRows: 0 };
    }
    case 'agentic': {
      const bs = requested ?? MOONCAKE_BLOCK_SIZE;
      return { format, records: parseAgentic(lines, bs), traceBlockSize: bs, skippedRows: 0 };
    }
    case 'bailian': {
      // The ids name 16-token blocks; reading them at another size would invent or drop prefix sharing.
      if (requested !== null && requested !== BAILIAN_BLOCK_SIZE) {
        throw new TraceError(
          firstContentLine(lines),
          `Bailian traces hash ${BAILIAN_BLOCK_SIZE} tokens per hash id; a trace block size of ${requested} does not fit them (leave --trace-block-size unset or set it to ${BAILIAN_BLOCK_SIZE})`,
        );
      }
      return { format, records: parseBailian(lines), traceBlockSize: BAILIAN_BLOCK_SIZE, skippedRows: 0 };
    }
    case 'azure':
    case 'burstgpt': {
      const { records, skipped } = parseCsv(lines, format);
      return { format, records, traceBlockSize: requested ?? MOONCAKE_BLOCK_SIZE, skippedRows: skipped };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Detection

/** Keys only Dynamo's agentic Mooncake rows carry (AgenticMooncakeRow in lib/data-gen/src/mooncake.rs). */
const AGENTIC_KEYS = ['wait_for', 'tool_wait_ms', 'branches', 'prefix_reset', 'request_kind', 'tool_events'];
const MOONCAKE_KEYS = ['timestamp', 'created_time', 'input_length', 'input_tokens', 'output_length', 'output_tokens', 'hash_ids', 'session_id'];

/** Names the format of a trace from its first non-blank line (CSV header or JSON keys); throws TraceError if none fits. */
export function detectTraceFormat(text: string, fileName?: string): TraceFormat {
  let start = 0;
  let lineNo = 1;
  let first = '';
  while (start <= text.length) {
    const nl = text.indexOf('\n', start);
    const end = nl < 0 ? text.length : nl;
    first = text.slice(start, end).trim();
    if (first !== '' || nl < 0) break;
    start = nl + 1;
    lineNo++;
  }
  if (first === '') throw new TraceError(lineNo, 'the trace is empty');
  const ext = fileName ? extensionOf(fileName) : '';

  if (first.startsWith('{')) {
    let obj: unknown;
    try {
      obj = JSON.parse(first);
    } catch (err) {
      throw new TraceError(lineNo, `not valid JSON (${(err as Error).message})`);
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new TraceError(lineNo, 'expected a JSON object');
    const o = obj as Record<string, unknown>;
    if ('chat_id' in o || 'parent_chat_id' in o) return 'bailian';
    if (AGENTIC_KEYS.some((k) => k in o)) return 'agentic';
    if (o.schema === 'dynamo.request.trace.v1' || 'event' in o || 'event_type' in o) {
      throw new TraceError(lineNo, 'Dynamo request traces (dynamo.request.trace.v1) are not supported; convert them to Mooncake JSONL');
    }
    if (MOONCAKE_KEYS.some((k) => k in o)) {
      // Agentic traces usually open with a root request that waits for nothing; their dependents come
      // later (tool_wait_ms only matters next to wait_for, so one scan suffices).
      return text.includes('"wait_for"') ? 'agentic' : 'mooncake';
    }
    throw new TraceError(
      lineNo,
      `unrecognised trace format: the JSON object has none of the Mooncake fields (input_length, output_length, hash_ids, timestamp) nor Bailian's chat_id; keys: ${Object.keys(o).slice(0, 8).join(', ') || 'none'}`,
    );
  }

  const header = splitCsvLine(first, lineNo);
  const cols = new Set(header.map((h) => h.trim().toLowerCase()));
  if (cols.has('contexttokens') && cols.has('generatedtokens') && cols.has('timestamp')) return 'azure';
  if (cols.has('request tokens') && cols.has('response tokens') && cols.has('timestamp')) return 'burstgpt';
  const shown = first.length > 80 ? `${first.slice(0, 77)}...` : first;
  const hint =
    ext === 'csv'
      ? `the CSV header ${JSON.stringify(shown)} is neither Azure's (TIMESTAMP,ContextTokens,GeneratedTokens) nor BurstGPT's (Timestamp,Model,Request tokens,Response tokens,...)`
      : `expected a JSON object per line (Mooncake, agentic Mooncake, Bailian) or a CSV header (Azure: TIMESTAMP,ContextTokens,GeneratedTokens; BurstGPT: Timestamp,Model,Request tokens,Response tokens,...), got ${JSON.stringify(shown)}`;
  throw new TraceError(lineNo, `unrecognised trace format: ${hint}`);
}

function extensionOf(fileName: string): string {
  let name = fileName.toLowerCase();
  if (name.endsWith('.gz')) name = name.slice(0, -3);
  const dot = name.lastIndexOf('.');
  return dot < 0 ? '' : name.slice(dot + 1);
}

function firstContentLine(lines: string[]): number {
  for (let i = 0; i < lines.length; i++) if (lines[i].trim() !== '') return i + 1;
  return 1;
}

// ---------------------------------------------------------------------------------------------
// JSON rows shared by Mooncake, agentic Mooncake and Bailian

function jsonRow(raw: string, line: number): Record<string, unknown> {
  let obj: unknown;
  try {
    obj = JSON.parse(raw);
  } catch (err) {
    throw new TraceError(line, `not valid JSON (${(err as Error).message})`);
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new TraceError(line, 'expected a JSON object');
  return obj as Record<string, unknown>;
}

/**
 * Which of a field's two spellings the row uses (Dynamo's MooncakeRow accepts `input_tokens`,
 * `output_tokens`, `created_time`, `delay_ms` as aliases); both at once is ambiguous, as in serde.
 */
function spelling(line: number, o: Record<string, unknown>, name: string, alias: string): string {
  const a = o[alias];
  if (a === undefined || a === null) return name;
  const n = o[name];
  if (n !== undefined && n !== null) throw new TraceError(line, `both '${name}' and its alias '${alias}' are set`);
  return alias;
}

function count(line: number, key: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new TraceError(line, `'${key}' must be a non-negative integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function nonNegative(line: number, key: string, v: unknown, unit: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    throw new TraceError(line, `'${key}' must be a non-negative number of ${unit}, got ${JSON.stringify(v)}`);
  }
  return v;
}

interface RowCore {
  inputLength: number;
  outputLength: number;
  hashIds: number[];
}

/** Prompt and output lengths and hash ids, checked the same way for every JSON format. */
function rowCore(line: number, o: Record<string, unknown>, blockSize: number): RowCore {
  let hashIds: number[] = [];
  const rawIds = o.hash_ids;
  if (rawIds !== undefined && rawIds !== null) {
    if (!Array.isArray(rawIds)) throw new TraceError(line, `'hash_ids' must be an array of integers`);
    for (let i = 0; i < rawIds.length; i++) {
      const h = rawIds[i];
      if (typeof h !== 'number' || !Number.isSafeInteger(h) || h < 0) {
        throw new TraceError(line, `'hash_ids' must contain non-negative integers, got ${JSON.stringify(h)}`);
      }
    }
    hashIds = rawIds as number[];
  }

  const inKey = spelling(line, o, 'input_length', 'input_tokens');
  const inRaw = o[inKey];
  let inputLength: number;
  if (inRaw === undefined || inRaw === null) {
    // Dynamo's rule: without a length, the prompt is exactly what the hash ids describe.
    if (hashIds.length === 0) throw new TraceError(line, `missing 'input_length'`);
    inputLength = hashIds.length * blockSize;
  } else {
    inputLength = count(line, inKey, inRaw);
    if (inputLength < 1) throw new TraceError(line, `'${inKey}' must be at least 1`);
  }

  const outKey = spelling(line, o, 'output_length', 'output_tokens');
  const outRaw = o[outKey];
  if (outRaw === undefined || outRaw === null) throw new TraceError(line, `missing 'output_length'`);
  const outputLength = count(line, outKey, outRaw);
  // Dynamo requires output_length even next to output_token_ids, and rejects a mismatch.
  const ids = o.output_token_ids;
  if (ids !== undefined && ids !== null) {
    if (!Array.isArray(ids)) throw new TraceError(line, `'output_token_ids' must be an array of token ids`);
    if (ids.length !== outputLength) {
      throw new TraceError(line, `'${outKey}' is ${outputLength} but 'output_token_ids' has ${ids.length} tokens`);
    }
  }

  const maxIds = Math.ceil(inputLength / blockSize);
  if (hashIds.length > maxIds) {
    throw new TraceError(
      line,
      `${hashIds.length} hash_ids describe more than input_length ${inputLength} at ${blockSize} tokens per id (at most ${maxIds}); check --trace-block-size`,
    );
  }
  return { inputLength, outputLength, hashIds };
}

function record(index: number, line: number, timestampMs: number, core: RowCore, after?: TraceRecord['after']): TraceRecord {
  const r: TraceRecord = { index, line, timestampMs, inputLength: core.inputLength, outputLength: core.outputLength, hashIds: core.hashIds };
  if (after) r.after = after;
  return r;
}

/** `timestamp` (alias `created_time`) in milliseconds, or null when the row has none. */
function timestampMs(line: number, o: Record<string, unknown>): number | null {
  const key = spelling(line, o, 'timestamp', 'created_time');
  const v = o[key];
  if (v === undefined || v === null) return null;
  return nonNegative(line, key, v, 'milliseconds');
}

/** `delay` (alias `delay_ms`) in milliseconds, or null. */
function delayField(line: number, o: Record<string, unknown>): number | null {
  const key = spelling(line, o, 'delay', 'delay_ms');
  const v = o[key];
  if (v === undefined || v === null) return null;
  return nonNegative(line, key, v, 'milliseconds');
}

function idText(line: number, key: string, v: unknown): string {
  if (typeof v === 'string' && v.trim() !== '') return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return String(v);
  throw new TraceError(line, `'${key}' must be a non-empty string, got ${JSON.stringify(v)}`);
}

// ---------------------------------------------------------------------------------------------
// Mooncake JSONL

interface SessionState {
  lastIndex: number;
  /** The latest timestamp seen in the session; timestamp deltas are taken against it (Dynamo's rule). */
  lastTimestampMs: number | null;
}

/**
 * Mooncake JSONL: `timestamp` (ms; default 0), `input_length`, `output_length`, `hash_ids`, with
 * Dynamo's variants (lib/mocker/src/loadgen/trace.rs, MooncakeTraceBuilder::push). Rows that share a
 * `session_id` are turns of one conversation: turn n+1 is issued after turn n finishes, plus `delay`
 * (alias `delay_ms`) or else the timestamp delta between the two rows, or else 0. A first turn with a
 * non-zero delay is an error, as in Dynamo. Unlike Dynamo, an input_length beyond what the hash ids
 * cover is kept (the rest of the prompt is request-private) rather than clamped.
 */
function parseMooncake(lines: string[], blockSize: number): TraceRecord[] {
  const records: TraceRecord[] = [];
  let sessions: Map<string, SessionState> | null = null;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (raw === '') continue;
    const line = i + 1;
    const o = jsonRow(raw, line);
    const ts = timestampMs(line, o);
    const core = rowCore(line, o, blockSize);
    const delay = delayField(line, o);
    const index = records.length;
    const sid = o.session_id;
    if (sid === undefined || sid === null) {
      records.push(record(index, line, ts ?? 0, core));
      continue;
    }
    const key = idText(line, 'session_id', sid);
    sessions ??= new Map();
    const session = sessions.get(key);
    if (!session) {
      if (delay !== null && delay !== 0) throw new TraceError(line, `'delay' is set on the first turn of session ${JSON.stringify(key)}`);
      sessions.set(key, { lastIndex: index, lastTimestampMs: ts });
      records.push(record(index, line, ts ?? 0, core));
      continue;
    }
    let delayMs: number;
    if (delay !== null) delayMs = delay;
    else if (ts !== null) {
      if (session.lastTimestampMs === null) {
        throw new TraceError(line, `session ${JSON.stringify(key)} has no earlier timestamp to take this turn's delay from; set 'delay'`);
      }
      delayMs = ts - session.lastTimestampMs;
      if (delayMs < 0) {
        throw new TraceError(line, `'timestamp' ${ts} is earlier than the previous turn's ${session.lastTimestampMs} in session ${JSON.stringify(key)}`);
      }
    } else delayMs = 0;
    const prev = records[session.lastIndex];
    records.push(record(index, line, ts ?? prev.timestampMs + delayMs, core, { indices: [session.lastIndex], delayMs }));
    session.lastIndex = index;
    if (ts !== null) session.lastTimestampMs = ts;
  }
  return records;
}

// ---------------------------------------------------------------------------------------------
// Dynamo's agentic Mooncake JSONL

/**
 * Agentic Mooncake (Dynamo's `--trace-format agentic_mooncake`; AgenticMooncakeRow in
 * lib/data-gen/src/mooncake.rs, AgenticTraceBuilder in lib/mocker/src/loadgen/trace.rs): Mooncake
 * fields plus a unique `request_id` and `wait_for` (request ids). A row without dependencies starts at
 * its `timestamp`; a row with them is issued `delay` (alias `delay_ms`) + `tool_wait_ms` after the
 * last of them finishes. Dynamo accepts any acyclic order; here a dependency must come earlier in the
 * file (which also rules out cycles). `session_id`, `branches`, `prefix_reset`, `request_kind` and
 * `tool_events` do not affect scheduling in Dynamo and are ignored.
 */
function parseAgentic(lines: string[], blockSize: number): TraceRecord[] {
  const records: TraceRecord[] = [];
  const byId = new Map<string, number>();
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (raw === '') continue;
    const line = i + 1;
    const o = jsonRow(raw, line);
    const rid = o.request_id;
    if (rid === undefined || rid === null) throw new TraceError(line, `missing 'request_id' (every agentic row needs one)`);
    if (typeof rid !== 'string' || rid.trim() === '') throw new TraceError(line, `'request_id' must be a non-empty string, got ${JSON.stringify(rid)}`);
    const dup = byId.get(rid);
    if (dup !== undefined) throw new TraceError(line, `'request_id' ${JSON.stringify(rid)} is already used on line ${records[dup].line}`);
    const ts = timestampMs(line, o);
    const core = rowCore(line, o, blockSize);
    const delay = delayField(line, o) ?? 0;
    const toolWait = o.tool_wait_ms === undefined || o.tool_wait_ms === null ? 0 : nonNegative(line, 'tool_wait_ms', o.tool_wait_ms, 'milliseconds');
    const index = records.length;

    const waitFor = o.wait_for;
    let indices: number[] | null = null;
    if (waitFor !== undefined && waitFor !== null) {
      if (!Array.isArray(waitFor)) throw new TraceError(line, `'wait_for' must be an array of request ids`);
      for (const dep of waitFor) {
        if (typeof dep !== 'string') throw new TraceError(line, `'wait_for' must contain request ids (strings), got ${JSON.stringify(dep)}`);
        if (dep === rid) throw new TraceError(line, `request ${JSON.stringify(rid)} waits for itself`);
        const at = byId.get(dep);
        if (at === undefined) {
          const later = laterLineWithId(lines, i + 1, dep);
          throw new TraceError(
            line,
            later === null
              ? `'wait_for' names unknown request_id ${JSON.stringify(dep)}`
              : `'wait_for' names request_id ${JSON.stringify(dep)} from line ${later}; a request must come after those it waits for`,
          );
        }
        indices ??= [];
        if (!indices.includes(at)) indices.push(at);
      }
    }
    byId.set(rid, index);
    if (!indices) {
      records.push(record(index, line, ts ?? 0, core));
      continue;
    }
    const delayMs = delay + toolWait;
    // Replay ignores a dependent row's timestamp; without one, record when it would start had nothing queued.
    let estimate = 0;
    for (const d of indices) estimate = Math.max(estimate, records[d].timestampMs);
    records.push(record(index, line, ts ?? estimate + delayMs, core, { indices, delayMs }));
  }
  return records;
}

/** Only on the error path: the line of a later row with this request_id, for a clearer message. */
function laterLineWithId(lines: string[], from: number, id: string): number | null {
  const needle = JSON.stringify(id);
  for (let i = from; i < lines.length; i++) {
    if (!lines[i].includes(needle)) continue;
    try {
      const o = JSON.parse(lines[i]) as Record<string, unknown>;
      if (o && o.request_id === id) return i + 1;
    } catch {
      // a malformed later line is reported when parsing reaches it
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Alibaba Bailian (qwen-bailian-usagetraces-anon) JSONL

/**
 * Bailian: `chat_id`, `parent_chat_id` (-1 for a first turn), `timestamp` (seconds since the trace
 * start), `input_length`, `output_length`, `type`, `turn`, `hash_ids` (16 tokens per id). A later turn
 * carries the previous turn's output in its prompt (the dataset's docs/qa-context-growth-pattern.md), so
 * it cannot start before its parent finishes: when the parent is in the file, the row is issued after it
 * with the timestamp delta as the delay, as Dynamo does for session turns without an explicit delay (the
 * delta also holds the parent's original service time, so the gap is generous). A parent outside the
 * file (the trace is a window) leaves the row on its timestamp. `type` and `turn` are informational.
 */
function parseBailian(lines: string[]): TraceRecord[] {
  const records: TraceRecord[] = [];
  const byChat = new Map<string, number>();
  const stamps: Array<{ sec: number; ns: number }> = [];
  /** Children whose parent was not seen yet: an error if the parent turns up later. */
  let pending: Array<{ line: number; parent: string }> | null = null;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (raw === '') continue;
    const line = i + 1;
    const o = jsonRow(raw, line);
    if (o.chat_id === undefined || o.chat_id === null) throw new TraceError(line, `missing 'chat_id'`);
    const chat = idText(line, 'chat_id', o.chat_id);
    const dup = byChat.get(chat);
    if (dup !== undefined) throw new TraceError(line, `'chat_id' ${chat} is already used on line ${records[dup].line}`);
    const tsRaw = o.timestamp;
    if (tsRaw === undefined || tsRaw === null) throw new TraceError(line, `missing 'timestamp'`);
    if (typeof tsRaw !== 'number' || !Number.isFinite(tsRaw) || tsRaw < 0) {
      throw new TraceError(line, `'timestamp' must be a non-negative number of seconds, got ${JSON.stringify(tsRaw)}`);
    }
    secondsOfNumber(tsRaw);
    const stamp = { sec: outSec, ns: outNs };
    const core = rowCore(line, o, BAILIAN_BLOCK_SIZE);
    const index = records.length;
    const ms = diffMs(stamp.sec, stamp.ns, 0, 0);

    const parentRaw = o.parent_chat_id;
    let parentIndex: number | undefined;
    if (parentRaw !== undefined && parentRaw !== null && parentRaw !== -1 && parentRaw !== '-1') {
      const parent = idText(line, 'parent_chat_id', parentRaw);
      if (parent === chat) throw new TraceError(line, `'parent_chat_id' is the row's own chat_id ${chat}`);
      parentIndex = byChat.get(parent);
      if (parentIndex === undefined) (pending ??= []).push({ line, parent });
    }
    byChat.set(chat, index);
    stamps.push(stamp);
    if (parentIndex === undefined) {
      records.push(record(index, line, ms, core));
      continue;
    }
    const p = stamps[parentIndex];
    const delayMs = diffMs(stamp.sec, stamp.ns, p.sec, p.ns);
    if (delayMs < 0) {
      throw new TraceError(line, `'timestamp' is earlier than that of its parent chat (line ${records[parentIndex].line})`);
    }
    records.push(record(index, line, ms, core, { indices: [parentIndex], delayMs }));
  }
  if (pending) {
    for (const { line, parent } of pending) {
      const at = byChat.get(parent);
      if (at !== undefined) {
        throw new TraceError(line, `'parent_chat_id' ${parent} is on a later line (${records[at].line}); a turn must come after its parent`);
      }
    }
  }
  return records;
}

// ---------------------------------------------------------------------------------------------
// CSV: Azure LLM inference traces (2023, 2024) and BurstGPT

/**
 * Azure LLM inference trace 2023/2024 (Azure/AzurePublicDataset, AzureLLMInferenceDataset2023.md and
 * 2024.md): TIMESTAMP (a datetime: `2023-11-16 18:15:46.6805900` in 2023, with a UTC offset such as
 * `2024-05-10 00:00:00.009930+00:00` in 2024), ContextTokens, GeneratedTokens.
 * BurstGPT (HPMLL/BurstGPT README): Timestamp (seconds from the first day's midnight; integer in
 * release 1, `19440110.0` in later files), Model, Request tokens, Response tokens, Total tokens, Log
 * Type, and in later files Session ID and Elapsed time. Columns are found by name.
 * Neither has hash ids, so no prefix is shared. Timestamps become milliseconds after the earliest kept
 * row (for these time-sorted files, the first), as Dynamo's BurstGPT converter does.
 * A row with 0 prompt tokens cannot be served (an empty prompt) and is skipped and counted: BurstGPT
 * logs failed requests with zeros (`BurstGPT_1.csv` has them, `BurstGPT_without_fails_1.csv` not). A
 * row with 0 output tokens is kept as a prompt-only request, so a failure still loads the server with
 * its prefill; use the `without_fails` files to leave failures out. BurstGPT's Session ID is not used:
 * without hash ids, chaining turns would only reshape arrivals the trace already records.
 */
function parseCsv(lines: string[], format: 'azure' | 'burstgpt'): { records: TraceRecord[]; skipped: number } {
  let h = 0;
  while (h < lines.length && lines[h].trim() === '') h++;
  if (h === lines.length) return { records: [], skipped: 0 };
  const headerLine = h + 1;
  const header = splitCsvLine(lines[h].trim(), headerLine).map((x) => x.trim());
  const names =
    format === 'azure'
      ? { ts: 'TIMESTAMP', input: 'ContextTokens', output: 'GeneratedTokens' }
      : { ts: 'Timestamp', input: 'Request tokens', output: 'Response tokens' };
  const column = (name: string): number => {
    let at = header.indexOf(name);
    if (at < 0) at = header.findIndex((x) => x.toLowerCase() === name.toLowerCase());
    if (at < 0) throw new TraceError(headerLine, `the ${format === 'azure' ? 'Azure' : 'BurstGPT'} header has no '${name}' column`);
    return at;
  };
  const tsCol = column(names.ts);
  const inCol = column(names.input);
  const outCol = column(names.output);
  const width = header.length;

  const kept: Array<{ line: number; sec: number; ns: number; input: number; output: number }> = [];
  let skipped = 0;
  for (let i = h + 1; i < lines.length; i++) {
    const raw = lines[i].trim();
    if (raw === '') continue;
    const line = i + 1;
    const fields = raw.indexOf('"') < 0 ? raw.split(',') : splitCsvLine(raw, line);
    if (fields.length !== width) throw new TraceError(line, `expected ${width} comma-separated fields as in the header, got ${fields.length}`);
    const tsText = fields[tsCol].trim();
    const ok = format === 'azure' ? parseDateTime(tsText) : parseDecimalSeconds(tsText);
    if (!ok) {
      throw new TraceError(
        line,
        format === 'azure'
          ? `'${header[tsCol]}' must be a date and time like 2023-11-16 18:15:46.6805900, got ${JSON.stringify(fields[tsCol])}`
          : `'${header[tsCol]}' must be a non-negative number of seconds, got ${JSON.stringify(fields[tsCol])}`,
      );
    }
    const sec = outSec;
    const ns = outNs;
    const input = csvCount(line, header[inCol], fields[inCol]);
    const output = csvCount(line, header[outCol], fields[outCol]);
    if (input === 0) {
      skipped++;
      continue;
    }
    kept.push({ line, sec, ns, input, output });
  }

  let base = 0;
  for (let k = 1; k < kept.length; k++) {
    const a = kept[k];
    const b = kept[base];
    if (a.sec < b.sec || (a.sec === b.sec && a.ns < b.ns)) base = k;
  }
  const records: TraceRecord[] = new Array(kept.length);
  for (let k = 0; k < kept.length; k++) {
    const r = kept[k];
    records[k] = {
      index: k,
      line: r.line,
      timestampMs: diffMs(r.sec, r.ns, kept[base].sec, kept[base].ns),
      inputLength: r.input,
      outputLength: r.output,
      hashIds: [],
    };
  }
  return { records, skipped };
}

/** Splits one CSV line with RFC 4180 quoting (`"a,b"`, `""` for a quote). Fields cannot span lines. */
function splitCsvLine(text: string, line: number): string[] {
  const out: string[] = [];
  const n = text.length;
  let i = 0;
  for (;;) {
    if (text.charCodeAt(i) === 34) {
      let value = '';
      i++;
      for (;;) {
        const q = text.indexOf('"', i);
        if (q < 0) throw new TraceError(line, 'unterminated quoted CSV field (fields cannot span lines)');
        value += text.slice(i, q);
        if (text.charCodeAt(q + 1) === 34) {
          value += '"';
          i = q + 2;
          continue;
        }
        i = q + 1;
        break;
      }
      out.push(value);
      if (i >= n) return out;
      if (text.charCodeAt(i) !== 44) throw new TraceError(line, `unexpected ${JSON.stringify(text[i])} after a quoted CSV field`);
      i++;
    } else {
      const c = text.indexOf(',', i);
      const end = c < 0 ? n : c;
      const value = text.slice(i, end);
      if (value.includes('"')) throw new TraceError(line, `a quote inside an unquoted CSV field: ${JSON.stringify(value)}`);
      out.push(value);
      if (c < 0) return out;
      i = c + 1;
    }
  }
}

/** A token count: digits, optionally with a zero fraction (`472.0`, as pandas writes integer columns holding gaps). */
function csvCount(line: number, name: string, raw: string): number {
  const s = raw.trim();
  const n = s.length;
  let v = 0;
  let i = 0;
  let ok = n > 0;
  for (; ok && i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 46) break;
    if (c < 48 || c > 57) ok = false;
    else v = v * 10 + (c - 48);
  }
  if (i === 0 || !Number.isSafeInteger(v)) ok = false;
  for (let j = i + 1; ok && j < n; j++) if (s.charCodeAt(j) !== 48) ok = false;
  if (!ok) throw new TraceError(line, `'${name}' must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Exact time arithmetic: whole seconds plus nanoseconds, so differences keep every digit of the file

/** Results of the parsers below (one row at a time, so no object per row). */
let outSec = 0;
let outNs = 0;

/** Milliseconds from (sec0, ns0) to (sec, ns); exact whenever the span fits 2^53 ns (about 104 days). */
function diffMs(sec: number, ns: number, sec0: number, ns0: number): number {
  const totalNs = (sec - sec0) * 1e9 + (ns - ns0);
  if (Math.abs(totalNs) <= Number.MAX_SAFE_INTEGER) return totalNs / 1e6;
  return (sec - sec0) * 1000 + (ns - ns0) / 1e6;
}

/** Reads up to 9 fraction digits at `i` into outNs (further digits are below a nanosecond and dropped); returns the end, or -1. */
function fraction(s: string, i: number): number {
  let ns = 0;
  let digits = 0;
  const n = s.length;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) break;
    if (digits < 9) {
      ns = ns * 10 + (c - 48);
      digits++;
    }
  }
  if (digits === 0) return -1;
  for (; digits < 9; digits++) ns *= 10;
  outNs = ns;
  return i;
}

/** `123`, `123.45`: non-negative decimal seconds into outSec/outNs. */
function parseDecimalSeconds(s: string): boolean {
  const n = s.length;
  let sec = 0;
  let i = 0;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) break;
    sec = sec * 10 + (c - 48);
  }
  if (i === 0 || !Number.isSafeInteger(sec)) return false;
  outSec = sec;
  outNs = 0;
  if (i === n) return true;
  if (s.charCodeAt(i) !== 46) return false;
  if (i + 1 === n) return true;
  return fraction(s, i + 1) === n;
}

/** A JSON number of seconds, read through its shortest decimal form so `61.114` is 61 s + 114,000,000 ns. */
function secondsOfNumber(v: number): void {
  if (!parseDecimalSeconds(String(v))) {
    // Exponent forms (1e-7, 1e+21): nothing in the decimal digits to preserve.
    outSec = Math.floor(v);
    outNs = Math.min(999_999_999, Math.round((v - outSec) * 1e9));
  }
}

function digitsAt(s: string, i: number, len: number): number {
  let v = 0;
  for (let k = i; k < i + len; k++) {
    const c = s.charCodeAt(k);
    // written so that NaN (past the end) fails too
    if (!(c >= 48 && c <= 57)) return -1;
    v = v * 10 + (c - 48);
  }
  return v;
}

/** The last `YYYY-MM-DD` parseDateTime accepted, and its midnight in UTC seconds since the epoch. */
let cachedDay = '';
let cachedDaySec = 0;

/**
 * `YYYY-MM-DD HH:MM:SS[.fraction][Z|±HH:MM|±HHMM]` (a `T` separator too) into outSec/outNs, UTC seconds
 * since the epoch. A missing offset means UTC: only differences matter.
 */
function parseDateTime(s: string): boolean {
  const n = s.length;
  if (n < 19 || s.charCodeAt(4) !== 45 || s.charCodeAt(7) !== 45 || s.charCodeAt(13) !== 58 || s.charCodeAt(16) !== 58) return false;
  const sep = s.charCodeAt(10);
  if (sep !== 32 && sep !== 84) return false;
  // Consecutive rows almost always share the day: validate and convert it once.
  if (cachedDay === '' || !s.startsWith(cachedDay)) {
    const y = digitsAt(s, 0, 4);
    const mo = digitsAt(s, 5, 2);
    const d = digitsAt(s, 8, 2);
    if (y < 0 || mo < 1 || mo > 12 || d < 1 || d > new Date(Date.UTC(y, mo, 0)).getUTCDate()) return false;
    // Date.UTC maps years 0-99 to 1900-1999; no trace is that old.
    cachedDaySec = Date.UTC(y, mo - 1, d) / 1000;
    cachedDay = s.slice(0, 10);
  }
  const hh = digitsAt(s, 11, 2);
  const mi = digitsAt(s, 14, 2);
  const ss = digitsAt(s, 17, 2);
  if (hh < 0 || hh > 23 || mi < 0 || mi > 59 || ss < 0 || ss > 59) return false;
  let i = 19;
  outNs = 0;
  if (i < n && s.charCodeAt(i) === 46) {
    i = fraction(s, i + 1);
    if (i < 0) return false;
  }
  let offsetMin = 0;
  if (i < n) {
    const c = s.charCodeAt(i);
    if (c === 90 && i + 1 === n) i++;
    else if (c === 43 || c === 45) {
      const oh = digitsAt(s, i + 1, 2);
      const colon = s.charCodeAt(i + 3) === 58 ? 1 : 0;
      const om = digitsAt(s, i + 3 + colon, 2);
      if (oh < 0 || oh > 23 || om < 0 || om > 59 || i + 5 + colon !== n) return false;
      offsetMin = (c === 45 ? -1 : 1) * (oh * 60 + om);
      i = n;
    } else return false;
  }
  outSec = cachedDaySec + hh * 3600 + mi * 60 + ss - offsetMin * 60;
  return true;
}
