// Synthetic trace lines and a CLI runner shared by the replay tests.
/* eslint-disable @typescript-eslint/no-explicit-any */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../../src/cli.js';

/** The trace-format fixtures under test/fixtures/traces, with the format each is in. */
export const TRACE_FIXTURES: ReadonlyArray<readonly [file: string, format: string]> = [
  ['mooncake.jsonl', 'mooncake'],
  ['mooncake-sessions.jsonl', 'mooncake'],
  ['agentic.jsonl', 'agentic'],
  ['azure-2023.csv', 'azure'],
  ['azure-2024.csv', 'azure'],
  ['burstgpt.csv', 'burstgpt'],
  ['bailian.jsonl', 'bailian'],
];

/**
 * `n` Mooncake-style lines every 37 ms with spread input/output lengths and shared prefixes (three
 * families of two blocks each), deterministic by construction.
 */
export function mixedTraceLines(n: number): Array<{ timestamp: number; input_length: number; output_length: number; hash_ids: number[] }> {
  return Array.from({ length: n }, (_, i) => ({
    timestamp: i * 37,
    input_length: 200 + ((i * 7919) % 3000),
    output_length: 1 + ((i * 104729) % 150),
    hash_ids: Array.from({ length: Math.ceil((200 + ((i * 7919) % 3000)) / 512) }, (_, k) => (k < 2 ? k + (i % 3) * 10 : 1000 + i * 10 + k)),
  }));
}

/** What `dynamo-mocker replay` printed and wrote for one run. */
export interface ReplayRun {
  code: number;
  out: string;
  err: string;
  /** The --output file (JSON lines) and its parsed rows; empty when the run failed. */
  bytes: string;
  rows: any[];
  /** The --summary file and its parsed object; null when the run failed. */
  summaryBytes: string;
  summary: any;
}

const runDir = mkdtempSync(join(tmpdir(), 'replay-run-'));
let runs = 0;

/** Runs `dynamo-mocker replay` on `lines` (objects, or raw JSONL text) with output and summary files. */
export async function replayCli(lines: object[] | string, args: string[] = []): Promise<ReplayRun> {
  const k = runs++;
  const trace = join(runDir, `t${k}.jsonl`);
  const output = join(runDir, `o${k}.jsonl`);
  const summary = join(runDir, `s${k}.json`);
  writeFileSync(trace, typeof lines === 'string' ? lines : lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  let out = '';
  let err = '';
  const code = await main(['replay', '--trace', trace, '--output', output, '--summary', summary, '--no-progress', ...args], {
    out: (t) => (out += t),
    err: (t) => (err += t),
    env: {},
    isTty: false,
  });
  if (code !== 0) return { code, out, err, rows: [], summary: null, bytes: '', summaryBytes: '' };
  const bytes = readFileSync(output, 'utf8');
  const summaryBytes = readFileSync(summary, 'utf8');
  return { code, out, err, bytes, summaryBytes, rows: bytes.trim().split('\n').map((l) => JSON.parse(l)), summary: JSON.parse(summaryBytes) };
}
