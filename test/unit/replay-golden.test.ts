// A fleet of one, under every router, writes exactly what replay wrote before fleets existed (hashes recorded then).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const golden = JSON.parse(readFileSync(join(root, 'test/fixtures/replay-golden.json'), 'utf8')) as {
  runs: Array<{ name: string; args: string[]; output_sha256: string; summary_sha256: string }>;
};
const dir = mkdtempSync(join(tmpdir(), 'replay-golden-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const trace = join(dir, 'trace.jsonl');
writeFileSync(trace, execFileSync(process.execPath, [join(root, 'scripts/make-mooncake-trace.mjs'), '--requests', '3000', '--scale', '0.127'], { maxBuffer: 1 << 28 }));

const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');
let n = 0;

async function replay(args: string[]): Promise<{ output: string; summary: string }> {
  const output = join(dir, `o${n}.jsonl`);
  const summary = join(dir, `s${n++}.json`);
  const io = { out: () => {}, err: () => {}, env: {}, isTty: false };
  const code = await main(['replay', '--trace', trace, '--no-progress', '--output', output, '--summary', summary, ...args], io);
  expect(code).toBe(0);
  return { output: sha256(output), summary: sha256(summary) };
}

describe('replay output is unchanged by the fleet', () => {
  it.each(golden.runs.map((r) => [r.name, r] as const))('%s', async (_name, run) => {
    const routers = run.args.includes('--prefill-workers') ? [[]] : [[], ['--num-workers', '1', '--router', 'round-robin'], ['--num-workers', '1', '--router', 'random'], ['--num-workers', '1', '--router', 'least-loaded']];
    for (const extra of routers) {
      const got = await replay([...run.args, ...extra]);
      expect(got.output, extra.join(' ')).toBe(run.output_sha256);
      expect(got.summary, extra.join(' ')).toBe(run.summary_sha256);
    }
  });

  it('asking for the report (which samples the timeline) changes no output byte', async () => {
    const run = golden.runs.find((r) => r.name === 'default')!;
    const report = join(dir, 'report.html');
    const got = await replay(['--report', report]);
    expect(got.output).toBe(run.output_sha256);
    expect(got.summary).toBe(run.summary_sha256);
    expect(readFileSync(report, 'utf8')).toMatch(/^<!DOCTYPE html>/i);
    const fleet = await replay(['--num-workers', '3', '--router', 'kv']);
    const fleetWithReport = await replay(['--num-workers', '3', '--router', 'kv', '--report', join(dir, 'fleet.html')]);
    expect(fleetWithReport).toEqual(fleet);
  });

  it('the KV router on one worker with one rank has one choice, so it changes nothing either', async () => {
    const run = golden.runs.find((r) => r.name === 'default')!;
    const got = await replay(['--num-workers', '1', '--router', 'kv']);
    expect(got.output).toBe(run.output_sha256);
    expect(got.summary).toBe(run.summary_sha256);
  });
});
