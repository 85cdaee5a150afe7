// CLI and config: Dynamo's flags and defaults, exit code 2 with the flag named on bad input.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { ENGINE_DEFAULTS, parseWorkerConfig } from '../../src/config.js';

async function run(args: string[], env: Record<string, string> = {}) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (t) => (out += t), err: (t) => (err += t), env, isTty: false });
  return { code, out, err };
}

const dir = mkdtempSync(join(tmpdir(), 'cli-test-'));
const trace = join(dir, 'trace.jsonl');
writeFileSync(trace, '{"timestamp":0,"input_length":100,"output_length":3}\n');

describe('worker config', () => {
  it('takes Dynamo defaults', () => {
    const c = parseWorkerConfig({ modelPath: 'Qwen/Qwen3-0.6B' }, [], {});
    expect(c.engine).toMatchObject({
      numGpuBlocks: 16384,
      blockSize: 64,
      maxNumSeqs: 256,
      maxNumBatchedTokens: 8192,
      enablePrefixCaching: true,
      enableChunkedPrefill: true,
      watermark: 0.01,
      preemptionMode: 'lifo',
      speedupRatio: 1,
      decodeSpeedupRatio: 1,
      dataParallelSize: 1,
      maxModelLen: null,
      seed: 0,
    });
    expect(c.modelName).toBe('Qwen/Qwen3-0.6B');
    expect(c.endpoint).toEqual({ namespace: 'dynamo', component: 'backend', endpoint: 'generate' });
    expect(c.numWorkers).toBe(1);
    expect(c.dynamoVersion).toBe('0.6.1');
  });

  it('reads DYN_NAMESPACE for the default endpoint', () => {
    expect(parseWorkerConfig({ modelPath: 'm' }, [], { DYN_NAMESPACE: 'team-a' }).endpoint.namespace).toBe('team-a');
  });

  it('treats speedup 0 and inf as no delays', () => {
    expect(parseWorkerConfig({ modelPath: 'm', speedupRatio: '0' }, [], {}).engine.speedupRatio).toBe(Infinity);
    expect(parseWorkerConfig({ modelPath: 'm', speedupRatio: 'inf' }, [], {}).engine.speedupRatio).toBe(Infinity);
  });

  it('applies --extra-engine-args over the flags', () => {
    const file = join(dir, 'args.json');
    writeFileSync(file, JSON.stringify({ num_gpu_blocks: 100, block_size: 16, dp_size: 2, enable_prefix_caching: false, preemption_mode: 'fifo' }));
    const c = parseWorkerConfig({ modelPath: 'm', blockSize: '32', extraEngineArgs: file }, [], {});
    expect(c.engine).toMatchObject({ numGpuBlocks: 100, blockSize: 16, dataParallelSize: 2, enablePrefixCaching: false, preemptionMode: 'fifo' });
  });

  it('keeps defaults in one place', () => {
    expect(ENGINE_DEFAULTS.blockSize).toBe(64);
  });
});

describe('bad input exits 2 naming the flag', () => {
  const cases: Array<[string[], string]> = [
    [['--model-path', 'm', '--block-size', '0'], '--block-size'],
    [['--model-path', 'm', '--block-size', 'abc'], '--block-size'],
    [['--model-path', 'm', '--max-num-seqs', '-1'], '--max-num-seqs'],
    [['--model-path', 'm', '--speedup-ratio', '-2'], '--speedup-ratio'],
    [['--model-path', 'm', '--decode-speedup-ratio', '0'], '--decode-speedup-ratio'],
    [['--model-path', 'm', '--watermark', '1.5'], '--watermark'],
    [['--model-path', 'm', '--data-parallel-size', '0'], '--data-parallel-size'],
    [['--model-path', 'm', '--planner-profile-data', '/nonexistent/x.npz'], '--planner-profile-data'],
    [['--model-path', 'm', '--extra-engine-args', '/nonexistent/x.json'], '--extra-engine-args'],
    [['--model-path', 'm', '--enable-prefix-caching', '--no-enable-prefix-caching'], '--enable-prefix-caching'],
    [['--model-path', 'm', '--endpoint', 'http://x'], '--endpoint'],
    [['--model-path', 'm', '--preemption-mode', 'random'], '--preemption-mode'],
    [['--block-size', '16'], '--model-path'],
    [['--model-path', 'm', '--no-such-flag'], '--no-such-flag'],
    [['replay'], '--trace'],
    [['replay', '--trace', '/nonexistent.jsonl'], '--trace'],
    [['replay', '--trace', trace, '--concurrency', '0'], '--concurrency'],
    [['replay', '--trace', trace, '--concurrency', '2', '--arrival-speedup', '2'], '--concurrency'],
  ];
  for (const [args, flag] of cases) {
    it(`${args.join(' ')}`, async () => {
      const { code, err } = await run(args);
      expect(code).toBe(2);
      expect(err).toContain(flag);
    });
  }

  it('rejects unknown --extra-engine-args keys', async () => {
    const file = join(dir, 'bad.json');
    writeFileSync(file, JSON.stringify({ num_gpu_blocks: 10, bogus_key: 1 }));
    const { code, err } = await run(['--model-path', 'm', '--extra-engine-args', file]);
    expect(code).toBe(2);
    expect(err).toContain('--extra-engine-args');
    expect(err).toContain('bogus_key');
  });

  it('names the line of a bad trace', async () => {
    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, '{"timestamp":0,"input_length":10,"output_length":1}\n\n{"timestamp":1,"input_length":"x","output_length":1}\n');
    const { code, err } = await run(['replay', '--trace', bad]);
    expect(code).toBe(2);
    expect(err).toContain('line 3');
    expect(err).toContain('input_length');
  });
});

describe('help', () => {
  it('lists every engine flag with its default', async () => {
    const { code, out } = await run(['--help']);
    expect(code).toBe(0);
    for (const flag of ['--model-path', '--model-name', '--endpoint', '--num-gpu-blocks-override', '--block-size', '--max-num-seqs', '--max-num-batched-tokens', '--enable-prefix-caching', '--no-enable-prefix-caching', '--enable-chunked-prefill', '--no-enable-chunked-prefill', '--watermark', '--preemption-mode', '--speedup-ratio', '--decode-speedup-ratio', '--data-parallel-size', '--num-workers', '--startup-time', '--planner-profile-data', '--extra-engine-args', '--max-model-len', '--seed']) {
      expect(out).toContain(flag);
    }
    expect(out).toContain('(default: 16384)');
    expect(out).toContain('(default: 8192)');
  });

  it('replay --help lists its options', async () => {
    const { code, out } = await run(['replay', '--help']);
    expect(code).toBe(0);
    for (const flag of ['--trace', '--trace-block-size', '--arrival-speedup', '--concurrency', '--output', '--summary', '--no-progress', '--block-size']) {
      expect(out).toContain(flag);
    }
  });
});
