// Trace formats: detection, exact records per format, dependencies, malformed rows named by line, exact timestamps.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { TraceError, parseTrace, type TraceRecord } from '../../src/replay/trace.js';
import { TRACE_FORMATS, detectTraceFormat, parseTraceText, type TraceFormat } from '../../src/replay/trace-formats.js';
import { TRACE_FIXTURES } from '../helpers/traces.js';

const fixture = (name: string) => readFileSync(fileURLToPath(new URL(`../fixtures/traces/${name}`, import.meta.url)), 'utf8');
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

const parse = (text: string, format: TraceFormat | null = null, traceBlockSize: number | null = null, fileName?: string) =>
  parseTraceText(text, { format, traceBlockSize, fileName });

/** The TraceError thrown by `fn` (fails the test when there is none). */
function traceError(fn: () => unknown): TraceError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TraceError);
    return err as TraceError;
  }
  throw new Error('expected a TraceError');
}

function rec(index: number, line: number, timestampMs: number, inputLength: number, outputLength: number, hashIds: number[], after?: TraceRecord['after']): TraceRecord {
  const r: TraceRecord = { index, line, timestampMs, inputLength, outputLength, hashIds };
  if (after) r.after = after;
  return r;
}

/** toEqual ignores undefined properties; dependency-free rows must not carry `after` at all. */
function expectRecords(actual: TraceRecord[], expected: TraceRecord[]): void {
  expect(actual).toEqual(expected);
  expect(actual.map((r) => 'after' in r)).toEqual(expected.map((r) => 'after' in r));
}

describe('format detection', () => {
  it.each(TRACE_FIXTURES)('%s is %s, with or without its file name', (name, format) => {
    expect(detectTraceFormat(fixture(name))).toBe(format);
    expect(detectTraceFormat(fixture(name), `/data/${name}`)).toBe(format);
    expect(parse(fixture(name)).format).toBe(format);
  });

  it('lists every format', () => {
    expect([...TRACE_FORMATS].sort()).toEqual(['agentic', 'azure', 'bailian', 'burstgpt', 'mooncake']);
  });

  it('finds an agentic trace whose first row waits for nothing', () => {
    const text = [
      '{"request_id":"a","timestamp":0,"input_length":10,"output_length":1}',
      '{"request_id":"b","wait_for":["a"],"input_length":10,"output_length":1}',
    ].join('\n');
    expect(detectTraceFormat(text)).toBe('agentic');
  });

  it('skips leading blank lines and a byte-order mark', () => {
    expect(detectTraceFormat('\n\n\uFEFFTIMESTAMP,ContextTokens,GeneratedTokens\r\n')).toBe('azure');
    expect(detectTraceFormat('\n  \n{"timestamp":0,"input_length":5,"output_length":1}\n')).toBe('mooncake');
  });

  it('finds BurstGPT columns by name, in the later files with Session ID and Elapsed time too', () => {
    expect(detectTraceFormat('Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n')).toBe('burstgpt');
  });

  it('content decides, not the file name', () => {
    expect(detectTraceFormat(fixture('burstgpt.csv'), 'trace.jsonl')).toBe('burstgpt');
    expect(detectTraceFormat(fixture('mooncake.jsonl'), 'trace.csv')).toBe('mooncake');
  });

  it('an empty trace is an error', () => {
    expect(traceError(() => detectTraceFormat('')).message).toBe('trace line 1: the trace is empty');
    expect(traceError(() => detectTraceFormat('\n \n')).line).toBe(3);
  });

  it('an unknown CSV header is an error naming the expected headers; a .csv name sharpens it', () => {
    const text = 'time,prompt,completion\n1,2,3\n';
    expect(traceError(() => detectTraceFormat(text)).message).toMatch(/^trace line 1: unrecognised trace format: expected a JSON object per line .*TIMESTAMP,ContextTokens,GeneratedTokens/);
    expect(traceError(() => detectTraceFormat(text, 'x.csv')).message).toBe(
      `trace line 1: unrecognised trace format: the CSV header "time,prompt,completion" is neither Azure's (TIMESTAMP,ContextTokens,GeneratedTokens) nor BurstGPT's (Timestamp,Model,Request tokens,Response tokens,...)`,
    );
  });

  it('JSON without known fields, invalid JSON and Dynamo request traces are errors', () => {
    expect(traceError(() => detectTraceFormat('{"prompt":"hi"}')).message).toMatch(/^trace line 1: unrecognised trace format: the JSON object has none of the Mooncake fields.*keys: prompt$/);
    expect(traceError(() => detectTraceFormat('\n{"timestamp":')).message).toMatch(/^trace line 2: not valid JSON/);
    expect(traceError(() => detectTraceFormat('{"schema":"dynamo.request.trace.v1","event_type":"request_end"}')).message).toMatch(/not supported/);
  });
});

describe('Mooncake', () => {
  it('parses the fixture exactly (512 tokens per id by default)', () => {
    const parsed = parse(fixture('mooncake.jsonl'));
    expect(parsed.traceBlockSize).toBe(512);
    expect(parsed.skippedRows).toBe(0);
    expectRecords(parsed.records, [
      rec(0, 1, 0, 6755, 500, range(0, 13)),
      rec(1, 2, 0, 7319, 490, [...range(0, 12), 14, 15]),
      rec(2, 3, 3052, 7234, 794, [...range(0, 12), 16, 17]),
      rec(3, 4, 3052, 2287, 316, range(18, 22)),
      rec(4, 5, 3660, 9013, 3, [...range(0, 12), ...range(23, 27)]),
      rec(5, 6, 6241, 1041, 17, []),
      rec(6, 7, 9784, 3500, 0, range(28, 34)),
      rec(7, 8, 12001, 6755, 221, range(0, 13)),
    ]);
  });

  it('the legacy parseTrace gives the same records', () => {
    expect(parseTrace(fixture('mooncake.jsonl'), 512)).toEqual(parse(fixture('mooncake.jsonl')).records);
  });

  it('sessions: later turns wait for the previous one, plus delay, delay_ms or the timestamp delta', () => {
    expectRecords(parse(fixture('mooncake-sessions.jsonl')).records, [
      rec(0, 1, 1000, 2048, 128, [1, 2, 3, 4]),
      rec(1, 2, 1200, 700, 64, [9, 10]),
      rec(2, 3, 1500, 300, 20, [40]),
      rec(3, 4, 1050, 2560, 128, [1, 2, 3, 4, 5], { indices: [0], delayMs: 50 }),
      rec(4, 5, 4200, 1100, 3, [9, 10, 11], { indices: [1], delayMs: 3000 }),
      rec(5, 6, 1050, 3000, 40, [1, 2, 3, 4, 5, 6], { indices: [3], delayMs: 0 }),
      // created_time is timestamp's alias; without input_length the hash ids give the length
      rec(6, 7, 5000, 1024, 10, [70, 71]),
      // an explicit delay wins over the timestamp delta
      rec(7, 8, 9000, 1600, 12, [9, 10, 11, 12], { indices: [4], delayMs: 250 }),
    ]);
  });

  it('a later turn without delay or timestamp follows at once', () => {
    const text = ['{"session_id":"s","timestamp":7,"input_length":5,"output_length":1}', '{"session_id":"s","input_length":9,"output_length":1}'].join('\n');
    expectRecords(parse(text).records, [rec(0, 1, 7, 5, 1, []), rec(1, 2, 7, 9, 1, [], { indices: [0], delayMs: 0 })]);
  });

  it('blank lines are skipped but counted for line numbers; CRLF is fine', () => {
    const text = '\r\n{"timestamp":1,"input_length":5,"output_length":2}\r\n\r\n{"timestamp":2,"input_length":6,"output_length":3}\r\n';
    expectRecords(parse(text).records, [rec(0, 2, 1, 5, 2, []), rec(1, 4, 2, 6, 3, [])]);
  });

  it.each([
    ['{"timestamp":0,"input_length":10,"output_length":1,"hash_ids":[1,2]}', 1, '2 hash_ids describe more than input_length 10 at 512 tokens per id (at most 1); check --trace-block-size'],
    ['{"timestamp":0,"input_length":10}', 1, "missing 'output_length'"],
    ['{"timestamp":0,"output_length":1}', 1, "missing 'input_length'"],
    ['{"timestamp":0,"input_length":0,"output_length":1}', 1, "'input_length' must be at least 1"],
    ['\n{"timestamp":0,"input_length":"12","output_length":1}', 2, `'input_length' must be a non-negative integer, got "12"`],
    ['{"timestamp":-5,"input_length":1,"output_length":1}', 1, "'timestamp' must be a non-negative number of milliseconds, got -5"],
    ['{"timestamp":0,"input_length":1,"output_length":1,"hash_ids":[1.5]}', 1, "'hash_ids' must contain non-negative integers, got 1.5"],
    ['{"timestamp":0,"input_length":1,"input_tokens":1,"output_length":1}', 1, "both 'input_length' and its alias 'input_tokens' are set"],
    ['{"timestamp":0,"input_length":4,"output_length":2,"output_token_ids":[10]}', 1, "'output_length' is 2 but 'output_token_ids' has 1 tokens"],
    ['{"input_length":1,"output_length":1}\n[1,2]', 2, 'expected a JSON object'],
    ['{"input_length":1,"output_length":1}\n\n\nnope', 4, 'not valid JSON'],
    ['{"session_id":"s","delay":5,"input_length":1,"output_length":1}', 1, `'delay' is set on the first turn of session "s"`],
    ['{"session_id":"s","timestamp":50,"input_length":1,"output_length":1}\n{"session_id":"s","timestamp":20,"input_length":1,"output_length":1}', 2, `'timestamp' 20 is earlier than the previous turn's 50 in session "s"`],
    ['{"session_id":"s","input_length":1,"output_length":1}\n{"session_id":"s","timestamp":20,"input_length":1,"output_length":1}', 2, `session "s" has no earlier timestamp`],
    ['{"session_id":"s","input_length":1,"output_length":1}\n{"session_id":"s","delay_ms":-1,"input_length":1,"output_length":1}', 2, "'delay_ms' must be a non-negative number of milliseconds, got -1"],
    ['{"session_id":["x"],"input_length":1,"output_length":1}', 1, `'session_id' must be a non-empty string, got ["x"]`],
  ])('rejects %j at line %i', (text, line, message) => {
    const err = traceError(() => parse(text, 'mooncake'));
    expect(err.line).toBe(line);
    expect(err.message.startsWith(`trace line ${line}: ${message}`)).toBe(true);
  });

  it('an explicit trace block size is used and reported', () => {
    const parsed = parse('{"timestamp":0,"output_length":1,"hash_ids":[4,5,6]}', null, 64);
    expect(parsed.traceBlockSize).toBe(64);
    expect(parsed.records[0].inputLength).toBe(192);
  });
});

describe('agentic Mooncake', () => {
  it('maps wait_for to dependencies with delay + tool_wait_ms', () => {
    const parsed = parse(fixture('agentic.jsonl'));
    expect(parsed.format).toBe('agentic');
    expectRecords(parsed.records, [
      rec(0, 1, 0, 1800, 96, [0, 1, 2, 3]),
      rec(1, 2, 250, 900, 40, [50, 51]),
      rec(2, 3, 120.5, 2300, 210, [0, 1, 2, 3, 10], { indices: [0], delayMs: 120.5 }),
      rec(3, 4, 355, 2100, 64, [0, 1, 2, 3, 20], { indices: [0], delayMs: 355 }),
      rec(4, 5, 8100, 2900, 150, [0, 1, 2, 3, 30, 31], { indices: [2, 3], delayMs: 5 }),
      rec(5, 6, 250, 1400, 33, [50, 51, 52], { indices: [1], delayMs: 0 }),
      rec(6, 7, 9000, 512, 8, [60]),
    ]);
  });

  const row = (extra: string) => `{"input_length":10,"output_length":1,${extra}}`;

  it.each([
    [[row('"request_id":"a","wait_for":["zz"]')], 1, `'wait_for' names unknown request_id "zz"`],
    [[row('"request_id":"a","wait_for":["b"]'), row('"request_id":"b"')], 1, `'wait_for' names request_id "b" from line 2; a request must come after those it waits for`],
    [[row('"request_id":"a","wait_for":["a"]')], 1, `request "a" waits for itself`],
    [[row('"request_id":"a"'), '', row('"request_id":"a"')], 3, `'request_id' "a" is already used on line 1`],
    [[row('"request_id":"a"'), row('"timestamp":4')], 2, "missing 'request_id' (every agentic row needs one)"],
    [[row('"request_id":7')], 1, "'request_id' must be a non-empty string, got 7"],
    [[row('"request_id":"a"'), row('"request_id":"b","wait_for":"a"')], 2, "'wait_for' must be an array of request ids"],
    [[row('"request_id":"a"'), row('"request_id":"b","wait_for":[1]')], 2, "'wait_for' must contain request ids (strings), got 1"],
    [[row('"request_id":"a"'), row('"request_id":"b","wait_for":["a"],"tool_wait_ms":"x"')], 2, `'tool_wait_ms' must be a non-negative number of milliseconds, got "x"`],
  ])('rejects bad dependencies: %j', (rows, line, message) => {
    const err = traceError(() => parse(rows.join('\n'), 'agentic'));
    expect(err.message).toBe(`trace line ${line}: ${message}`);
  });

  it('waiting for the same request twice lists it once', () => {
    const text = [row('"request_id":"a","timestamp":3'), row('"request_id":"b","wait_for":["a","a"]')].join('\n');
    expect(parse(text).records[1].after).toEqual({ indices: [0], delayMs: 0 });
  });
});

describe('Bailian', () => {
  it('parses the fixture: seconds to ms, 16 tokens per id, parents in the file become dependencies', () => {
    const parsed = parse(fixture('bailian.jsonl'));
    expect(parsed.traceBlockSize).toBe(16);
    expectRecords(parsed.records, [
      rec(0, 1, 213, 87, 45, range(0, 5)),
      rec(1, 2, 1507, 40, 120, [6, 7, 8]),
      rec(2, 3, 9842, 152, 230, [0, 1, 2, 3, 4, ...range(9, 13)], { indices: [0], delayMs: 9629 }),
      // parent 977 is before the trace window: the row keeps its timestamp
      rec(3, 4, 12050, 300, 64, range(14, 32)),
      rec(4, 5, 15300, 200, 18, range(33, 45)),
      rec(5, 6, 31116, 412, 77, [0, 1, 2, 3, 4, 9, 10, 11, 12, ...range(46, 62)], { indices: [2], delayMs: 21274 }),
      rec(6, 7, 33500, 185, 301, [6, 7, ...range(63, 72)], { indices: [1], delayMs: 31993 }),
    ]);
  });

  it('the block size is fixed at 16: 16 is accepted, anything else is refused', () => {
    expect(parse(fixture('bailian.jsonl'), null, 16).traceBlockSize).toBe(16);
    expect(parse(fixture('bailian.jsonl'), 'bailian', 16).records).toHaveLength(7);
    expect(traceError(() => parse(fixture('bailian.jsonl'), null, 512)).message).toBe(
      'trace line 1: Bailian traces hash 16 tokens per hash id; a trace block size of 512 does not fit them (leave --trace-block-size unset or set it to 16)',
    );
  });

  it('hash ids are counted against 16-token blocks', () => {
    const text = '{"chat_id":1,"parent_chat_id":-1,"timestamp":0,"input_length":32,"output_length":1,"hash_ids":[1,2,3]}';
    expect(traceError(() => parse(text)).message).toBe('trace line 1: 3 hash_ids describe more than input_length 32 at 16 tokens per id (at most 2); check --trace-block-size');
  });

  it('keeps sub-millisecond timestamps exactly', () => {
    const text = ['{"chat_id":1,"parent_chat_id":-1,"timestamp":0.1,"input_length":1,"output_length":1}', '{"chat_id":2,"parent_chat_id":1,"timestamp":0.3000005,"input_length":1,"output_length":1}'].join('\n');
    const [a, b] = parse(text).records;
    expect(a.timestampMs).toBe(100);
    expect(b.timestampMs).toBe(300.0005);
    expect(b.after).toEqual({ indices: [0], delayMs: 200.0005 });
  });

  const bl = (chat: number, parent: number, ts: number) => `{"chat_id":${chat},"parent_chat_id":${parent},"timestamp":${ts},"input_length":16,"output_length":1,"hash_ids":[${chat}]}`;

  it.each([
    [[bl(1, -1, 0), bl(1, -1, 1)], 2, "'chat_id' 1 is already used on line 1"],
    [[bl(2, 1, 3), bl(1, -1, 1)], 1, "'parent_chat_id' 1 is on a later line (2); a turn must come after its parent"],
    [[bl(1, -1, 5), '', bl(2, 1, 4)], 3, "'timestamp' is earlier than that of its parent chat (line 1)"],
    [[bl(1, 1, 0)], 1, "'parent_chat_id' is the row's own chat_id 1"],
    [['{"chat_id":1,"parent_chat_id":-1,"input_length":1,"output_length":1}'], 1, "missing 'timestamp'"],
    [['{"chat_id":1,"parent_chat_id":-1,"timestamp":"3","input_length":1,"output_length":1}'], 1, `'timestamp' must be a non-negative number of seconds, got "3"`],
    [['{"parent_chat_id":-1,"timestamp":0,"input_length":1,"output_length":1}'], 1, "missing 'chat_id'"],
  ])('rejects %j', (rows, line, message) => {
    expect(traceError(() => parse(rows.join('\n'), 'bailian')).message).toBe(`trace line ${line}: ${message}`);
  });
});

describe('Azure LLM inference traces', () => {
  it('2023: 7-digit fractions become exact milliseconds after the first row', () => {
    const parsed = parse(fixture('azure-2023.csv'));
    expect(parsed.skippedRows).toBe(0);
    const ts = [0, 360.6437, 360.6438, 3319.4099, 3319.41, 15831.755, 2653219.4101, 2653442.8667, 20653319.4099, 20653319.4101];
    const input = [1024, 2311, 388, 4870, 119, 7311, 96, 2049, 1311, 640];
    const output = [57, 186, 12, 3, 402, 88, 0, 250, 19, 131];
    expectRecords(
      parsed.records,
      ts.map((t, i) => rec(i, i + 2, t, input[i], output[i], [])),
    );
  });

  it('2024: UTC offsets and 6-digit fractions; a whole second may have no fraction', () => {
    const ts = [0, 502.074, 990.07, 990.071, 3764.48, 59990.07, 86_400_000];
    const input = [2048, 5120, 377, 9000, 1203, 88, 1500];
    const output = [31, 9, 1, 120, 377, 12, 64];
    expectRecords(
      parse(fixture('azure-2024.csv')).records,
      ts.map((t, i) => rec(i, i + 2, t, input[i], output[i], [])),
    );
  });

  it('offsets are applied, Z and T are accepted, and times count from the earliest row', () => {
    const text = [
      'TIMESTAMP,ContextTokens,GeneratedTokens',
      '2024-05-10 02:00:00.5+02:00,10,1',
      '2024-05-10T00:00:00.25Z,11,2',
      '2024-05-09 19:00:00.0000001-0500,12,3',
      '2024-05-10 00:00:00.123456789,13,4',
    ].join('\n');
    expect(parse(text).records.map((r) => r.timestampMs)).toEqual([499.9999, 249.9999, 0, 123.456689]);
  });

  it('days change correctly from row to row, leap days included', () => {
    const text = [
      'TIMESTAMP,ContextTokens,GeneratedTokens',
      '2024-02-28 23:59:59.5,1,1',
      '2024-02-29 00:00:00.5,1,1',
      '2024-03-01 00:00:00.5,1,1',
      '2024-02-28 23:59:59.5,1,1',
    ].join('\n');
    expect(parse(text).records.map((r) => r.timestampMs)).toEqual([0, 1000, 86_401_000, 0]);
    expect(traceError(() => parse(text.replace('2024-03-01', '2023-02-29'))).message).toMatch(/^trace line 4: 'TIMESTAMP' must be a date and time/);
  });

  it('rows with 0 context tokens are skipped and counted; 0 generated tokens are kept', () => {
    const parsed = parse('TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,0,5\n2023-11-16 18:15:46.2,7,0\n');
    expect(parsed.skippedRows).toBe(1);
    expectRecords(parsed.records, [rec(0, 3, 0, 7, 0, [])]);
  });

  it.each([
    ['2023-11-16 18:15:46.6805900,abc,3', 7, `'ContextTokens' must be a non-negative integer, got "abc"`],
    ['2023-11-16 18:15:46.6805900,12,-3', 7, `'GeneratedTokens' must be a non-negative integer, got "-3"`],
    ['2023-11-16 18:15:46.6805900,12.5,3', 7, `'ContextTokens' must be a non-negative integer, got "12.5"`],
    ['2023-13-16 18:15:46.6805900,12,3', 7, `'TIMESTAMP' must be a date and time like 2023-11-16 18:15:46.6805900, got "2023-13-16 18:15:46.6805900"`],
    ['2023-02-30 18:15:46,12,3', 7, `'TIMESTAMP' must be a date and time`],
    ['2023-11-16 18:15:46.,12,3', 7, `'TIMESTAMP' must be a date and time`],
    ['2023-11-16 18:15:46+25:00,12,3', 7, `'TIMESTAMP' must be a date and time`],
    ['2023-11-16 18:15:46+0,12,3', 7, `'TIMESTAMP' must be a date and time`],
    ['2023-11-16 18:15:4,12,3', 7, `'TIMESTAMP' must be a date and time`],
    ['2023-11-16 24:00:00,12,3', 7, `'TIMESTAMP' must be a date and time`],
    ['1700158546,12,3', 7, `'TIMESTAMP' must be a date and time`],
    ['2023-11-16 18:15:46.6805900,12', 7, 'expected 3 comma-separated fields as in the header, got 2'],
    ['"2023-11-16 18:15:46.6805900,12,3', 7, 'unterminated quoted CSV field (fields cannot span lines)'],
  ])('rejects %j with its line number', (bad, line, message) => {
    const good = fixture('azure-2023.csv').split('\n');
    const text = [...good.slice(0, 6), bad, ...good.slice(6)].join('\n');
    const err = traceError(() => parse(text));
    expect(err.line).toBe(line);
    expect(err.message.startsWith(`trace line ${line}: ${message}`)).toBe(true);
  });
});

describe('BurstGPT', () => {
  it('parses the fixture: seconds from the first row, failures with no request tokens skipped, zero responses kept', () => {
    const parsed = parse(fixture('burstgpt.csv'));
    expect(parsed.skippedRows).toBe(1);
    expectRecords(parsed.records, [
      rec(0, 2, 0, 604, 211, []),
      rec(1, 3, 7000, 1530, 402, []),
      rec(2, 5, 21000, 87, 0, []),
      rec(3, 6, 29000, 2210, 95, []),
      rec(4, 7, 46000, 311, 1024, []),
      rec(5, 8, 49000, 45, 17, []),
    ]);
  });

  it('later files: extra columns, float seconds kept exactly, quoted fields', () => {
    const text = [
      'Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type',
      '19440110.0,,1.52,ChatGPT,120,33,153,API log',
      '19440110.0004,"sess, 7",9.5,"GPT-4","""quoted""",0,"12.0",Conversation log',
    ].join('\n');
    expect(traceError(() => parse(text)).message).toBe(`trace line 3: 'Request tokens' must be a non-negative integer, got "\\"quoted\\""`);
    const fixed = text.replace('"""quoted"""', '"88"');
    expectRecords(parse(fixed).records, [rec(0, 2, 0, 120, 33, []), rec(1, 3, 0.4, 88, 0, [])]);
  });

  it.each([
    ['x1,ChatGPT,5,5,10,API log', `'Timestamp' must be a non-negative number of seconds, got "x1"`],
    ['-4,ChatGPT,5,5,10,API log', `'Timestamp' must be a non-negative number of seconds, got "-4"`],
    ['4,ChatGPT,5,,10,API log', `'Response tokens' must be a non-negative integer, got ""`],
    ['4,"Chat"GPT,5,5,10,API log', `unexpected "G" after a quoted CSV field`],
    ['4,Chat"GPT,5,5,10,API log', `a quote inside an unquoted CSV field: "Chat\\"GPT"`],
  ])('rejects %j', (bad, message) => {
    const text = `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n\n${bad}\n`;
    expect(traceError(() => parse(text)).message).toBe(`trace line 3: ${message}`);
  });

  it('a header alone gives no records', () => {
    expect(parse('Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n').records).toEqual([]);
  });
});

describe('explicit format', () => {
  it('overrides detection: a Bailian file read as Mooncake keeps raw numbers and no dependencies', () => {
    const parsed = parse(fixture('bailian.jsonl'), 'mooncake', 16);
    expect(parsed.format).toBe('mooncake');
    expect(parsed.traceBlockSize).toBe(16);
    expect(parsed.records.map((r) => r.timestampMs)).toEqual([0.213, 1.507, 9.842, 12.05, 15.3, 31.116, 33.5]);
    expect(parsed.records.some((r) => 'after' in r)).toBe(false);
  });

  it("overrides detection: an agentic file read as Mooncake follows Mooncake's session rules, not wait_for", () => {
    expect(traceError(() => parse(fixture('agentic.jsonl'), 'mooncake')).message).toBe(`trace line 4: 'delay' is set on the first turn of session "main/sub-2"`);
    const noSessions = fixture('agentic.jsonl').replace(/"session_id":"[^"]*",/g, '');
    const parsed = parse(noSessions, 'mooncake');
    expect(parsed.records.map((r) => r.timestampMs)).toEqual([0, 250, 0, 0, 8100, 0, 9000]);
    expect(parsed.records.some((r) => 'after' in r)).toBe(false);
  });

  it('a Mooncake file read as agentic needs request ids', () => {
    expect(traceError(() => parse(fixture('mooncake.jsonl'), 'agentic')).message).toBe("trace line 1: missing 'request_id' (every agentic row needs one)");
  });

  it('an Azure file read as BurstGPT names the missing column on the header line', () => {
    expect(traceError(() => parse(`\n${fixture('azure-2023.csv')}`, 'burstgpt')).message).toBe("trace line 2: the BurstGPT header has no 'Request tokens' column");
  });

  it('an explicit format on an empty text gives no records', () => {
    expect(parse('', 'mooncake').records).toEqual([]);
    expect(parse('\n', 'azure').records).toEqual([]);
  });

  it('an unknown format or a bad block size is refused', () => {
    expect(() => parse('', 'sharegpt' as TraceFormat)).toThrow(/unknown trace format 'sharegpt'/);
    expect(() => parse('', 'mooncake', 0)).toThrow(/positive integer/);
  });
});
