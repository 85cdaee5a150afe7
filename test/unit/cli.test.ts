// CLI and config: Dynamo's flags and defaults, exit code 2 with the flag named on bad input.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.js';
import { ENGINE_DEFAULTS, levelFromDynLog, parseWorkerConfig } from '../../src/config.js';

async function run(args: string[], env: Record<string, string> = {}) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (t) => (out += t), err: (t) => (err += t), env, isTty: false });
  return { code, out, err };
}

type Refusal = [args: string[], env: Record<string, string>, name: string, message: RegExp];

/** One test per refusal: exit code 2 and a message naming the flag or variable (one line, unless commander's usage hint follows). */
function itRefuses(refusals: readonly Refusal[], oneLine = true): void {
  for (const [args, env, name, message] of refusals) {
    it(`exits 2 naming ${name}: ${[...args, ...Object.entries(env).map(([k, v]) => `${k}=${v}`)].join(' ')}`, async () => {
      const { code, err } = await run(['--model-path', 'm', ...args], env);
      expect(code).toBe(2);
      expect(err).toContain(name);
      expect(err).toMatch(message);
      if (oneLine) expect(err.trim().split('\n')).toHaveLength(1);
    });
  }
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
    [['--model-path', 'm', '--dynamo-version', '2.0'], '--dynamo-version'],
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

describe('protocol generations, planes and discovery', () => {
  const cfg = (raw: Record<string, unknown>, env: Record<string, string> = {}) => parseWorkerConfig({ modelPath: 'm', ...raw }, [], env);

  it("takes each generation's defaults", () => {
    expect(cfg({})).toMatchObject({ dynamoVersion: '0.6.1', requestPlane: 'nats', eventPlane: 'nats', discovery: { backend: 'etcd' } });
    expect(cfg({ dynamoVersion: '1.4' })).toMatchObject({ requestPlane: 'tcp', eventPlane: 'zmq', discovery: { backend: 'etcd' } });
  });

  it('prefers the flag over the variable over the default (variables case-insensitive)', () => {
    const v = { dynamoVersion: '1.4' };
    expect(cfg(v, { DYN_REQUEST_PLANE: 'NATS' }).requestPlane).toBe('nats');
    expect(cfg({ ...v, requestPlane: 'tcp' }, { DYN_REQUEST_PLANE: 'nats' }).requestPlane).toBe('tcp');
    expect(cfg(v, { DYN_DISCOVERY_BACKEND: 'file' }).discovery.backend).toBe('file');
    expect(cfg({ ...v, discoveryBackend: 'etcd' }, { DYN_DISCOVERY_BACKEND: 'file' }).discovery.backend).toBe('etcd');
    expect(cfg(v, { DYN_EVENT_PLANE: 'nats' }).eventPlane).toBe('nats');
    expect(cfg({ ...v, eventPlane: 'zmq' }, { DYN_EVENT_PLANE: 'nats' }).eventPlane).toBe('zmq');
  });

  it('roots file discovery at DYN_FILE_KV, else $TMPDIR/dynamo_store_kv, else /tmp/dynamo_store_kv', () => {
    expect(cfg({ dynamoVersion: '1.4' }, { DYN_FILE_KV: '/srv/kv' }).discovery.fileRoot).toBe('/srv/kv');
    expect(cfg({ dynamoVersion: '1.4' }, { TMPDIR: '/scratch/' }).discovery.fileRoot).toBe('/scratch/dynamo_store_kv');
    expect(cfg({ dynamoVersion: '1.4' }).discovery.fileRoot).toBe('/tmp/dynamo_store_kv');
  });

  it('reads the TCP plane variables with Dynamo 1.4 defaults', () => {
    expect(cfg({ dynamoVersion: '1.4' }).tcp).toEqual({ host: null, port: 0, maxMessageBytes: 33554432, shrinkMessageBytes: 8388608, workerPoolSize: 10000, workQueueSize: 40000 });
    expect(
      cfg(
        { dynamoVersion: '1.4' },
        { DYN_TCP_RPC_HOST: '[::1]', DYN_TCP_RPC_PORT: '9999', DYN_TCP_MAX_MESSAGE_SIZE: '1048576', DYN_TCP_WORKER_POOL_SIZE: '8', DYN_TCP_WORK_QUEUE_SIZE: '0' },
      ).tcp,
    ).toMatchObject({ host: '::1', port: 9999, maxMessageBytes: 1048576, workerPoolSize: 8, workQueueSize: 0 });
  });

  it('1.4 system server: DYN_SYSTEM_PORT alone switches it on; DYN_SYSTEM_ENABLED only earns a warning', () => {
    const off = cfg({ dynamoVersion: '1.4' }, { DYN_SYSTEM_ENABLED: 'true' });
    expect(off.system.enabled).toBe(false);
    expect(off.warnings.join()).toMatch(/DYN_SYSTEM_ENABLED is deprecated/);
    expect(cfg({ dynamoVersion: '1.4' }, { DYN_SYSTEM_PORT: '0' }).system).toMatchObject({ enabled: true, port: 0 });
    expect(cfg({}, { DYN_SYSTEM_ENABLED: 'true' }).system).toMatchObject({ enabled: true, port: 9090 });
  });

  it('self-hosts card files in 1.4 unless DYN_SELF_HOST_METADATA is false', () => {
    expect(cfg({ dynamoVersion: '1.4' }).selfHostMetadata).toBe(true);
    expect(cfg({ dynamoVersion: '1.4' }, { DYN_SELF_HOST_METADATA: 'off' }).selfHostMetadata).toBe(false);
    expect(cfg({}, { DYN_SELF_HOST_METADATA: 'true' }).selfHostMetadata).toBe(false);
  });

  it('reads the shutdown grace and the stream age from the environment', () => {
    expect(cfg({}, { DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT: '0.5', DYN_NATS_STREAM_MAX_AGE: '60' })).toMatchObject({ gracefulShutdownMs: 500, natsStreamMaxAgeS: 60 });
    expect(cfg({})).toMatchObject({ gracefulShutdownMs: 30_000, natsStreamMaxAgeS: 3600 });
  });

  const refusals: Refusal[] = [
    [['--request-plane', 'tcp'], {}, '--request-plane', /'tcp' is not spoken by --dynamo-version 0\.6\.1/],
    [[], { DYN_REQUEST_PLANE: 'tcp' }, 'DYN_REQUEST_PLANE', /not spoken by --dynamo-version 0\.6\.1/],
    [['--dynamo-version', '0.6.0', '--discovery-backend', 'file'], {}, '--discovery-backend', /'file' is not spoken by --dynamo-version 0\.6\.0/],
    [[], { DYN_DISCOVERY_BACKEND: 'file' }, 'DYN_DISCOVERY_BACKEND', /not spoken/],
    [['--event-plane', 'zmq'], {}, '--event-plane', /not spoken/],
    [['--dynamo-version', '1.4', '--discovery-backend', 'kubernetes'], {}, '--discovery-backend', /'kubernetes' is not supported: it needs Dynamo's operator/],
    [['--dynamo-version', '1.4'], { DYN_DISCOVERY_BACKEND: 'mem' }, 'DYN_DISCOVERY_BACKEND', /'mem' is not supported/],
    [['--dynamo-version', '1.4', '--request-plane', 'http'], {}, '--request-plane', /must be one of tcp, nats, got 'http'/],
    [['--dynamo-version', '1.4'], { DYN_EVENT_PLANE: 'kafka' }, 'DYN_EVENT_PLANE', /must be one of nats, zmq/],
    [['--dynamo-version', '1.4'], { DYN_TCP_RPC_HOST: 'worker-1.local' }, 'DYN_TCP_RPC_HOST', /must be an IP address/],
    [['--dynamo-version', '1.4'], { DYN_TCP_RPC_PORT: '70000' }, 'DYN_TCP_RPC_PORT', /integer in \[0, 65535\]/],
    [['--dynamo-version', '1.4'], { DYN_TCP_MAX_MESSAGE_SIZE: '32MB' }, 'DYN_TCP_MAX_MESSAGE_SIZE', /must be an integer/],
    [['--dynamo-version', '1.4'], { DYN_SELF_HOST_METADATA: 'maybe' }, 'DYN_SELF_HOST_METADATA', /must be a boolean/],
    [[], { DYN_SYSTEM_PORT: 'abc' }, 'DYN_SYSTEM_PORT', /port number/],
    [[], { DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT: 'soon' }, 'DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT', /must be a number/],
    [[], { DYN_NATS_STREAM_MAX_AGE: '0' }, 'DYN_NATS_STREAM_MAX_AGE', /must be > 0/],
    [['--dynamo-version', '1.4'], { DYN_ZMQ_BROKER_URL: 'xsub=tcp://h:1;xpub=tcp://h:2' }, 'DYN_ZMQ_BROKER_URL', /broker mode is not supported/],
    [['--dynamo-version', '1.4'], { DYN_EVENT_PLANE_HOST: 'events.local' }, 'DYN_EVENT_PLANE_HOST', /must be an IP address/],
    [['--dynamo-version', '1.4', '--zmq-kv-events-ports', '5557,5558'], {}, '--zmq-kv-events-ports', /one port per worker \(1 with --num-workers\), got 2/],
    [['--dynamo-version', '1.4', '--zmq-replay-ports', '5600'], {}, '--zmq-replay-ports', /needs --zmq-kv-events-ports/],
    [['--dynamo-version', '1.4', '--zmq-kv-events-ports', '5557', '--no-kv-events'], {}, '--zmq-kv-events-ports', /contradicts --no-kv-events/],
  ];
  itRefuses(refusals);

  it('publishes KV events with prefix caching unless --no-kv-events', () => {
    expect(cfg({ dynamoVersion: '1.4' }).kvEvents).toBe(true);
    expect(cfg({ dynamoVersion: '1.4', kvEvents: false }).kvEvents).toBe(false);
    expect(cfg({ dynamoVersion: '1.4', enablePrefixCaching: false }).kvEvents).toBe(false);
  });

  it('ignores the TCP variables when the request plane is NATS', () => {
    expect(cfg({}, { DYN_TCP_RPC_PORT: 'not-a-port' }).requestPlane).toBe('nats');
  });

  it('--help lists the generation and plane flags', async () => {
    const { out } = await run(['--help']);
    for (const flag of ['--dynamo-version', '--discovery-backend', '--request-plane', '--event-plane']) expect(out).toContain(flag);
    expect(out).toContain('1.4');
  });
});

describe('disaggregation flags', () => {
  const cfg = (raw: Record<string, unknown>, env: Record<string, string> = {}) => parseWorkerConfig({ modelPath: 'm', dynamoVersion: '1.4', ...raw }, [], env);

  it('defaults to an aggregated worker with Dynamo transfer defaults', () => {
    const c = cfg({});
    expect(c.disagg).toMatchObject({ workerType: 'aggregated', bootstrapPorts: null, handoffSessionTimeoutMs: 300_000, rendezvousTimeoutMs: 30_000 });
    expect(c.disagg.kvTransfer).toEqual({ bandwidthGBps: 64, bytesPerToken: null, timingMode: 'full_prompt', cacheDtype: 'auto' });
    expect(c.engine.workerType).toBe('aggregated');
  });

  it('a prefill worker defaults to the prefill endpoint; a decode worker publishes no KV events', () => {
    const p = cfg({ disaggregationMode: 'prefill', bootstrapPorts: '0' });
    expect(p.endpoint).toEqual({ namespace: 'dynamo', component: 'prefill', endpoint: 'generate' });
    expect(p.engine.workerType).toBe('prefill');
    expect(p.disagg.bootstrapPorts).toEqual([0]);
    expect(p.kvEvents).toBe(true);
    const d = cfg({ disaggregationMode: 'decode' }, { DYN_NAMESPACE: 'ns1' });
    expect(d.endpoint).toEqual({ namespace: 'ns1', component: 'backend', endpoint: 'generate' });
    expect(d.kvEvents).toBe(false);
    expect(cfg({ disaggregationMode: 'agg' }).disagg.workerType).toBe('aggregated');
  });

  it('takes the deprecated --is-*-worker flags with a warning', () => {
    const p = cfg({ isPrefillWorker: true });
    expect(p.disagg.workerType).toBe('prefill');
    expect(p.warnings.join('\n')).toMatch(/--is-prefill-worker is deprecated, use --disaggregation-mode=prefill/);
    expect(cfg({ isDecodeWorker: true }).disagg.workerType).toBe('decode');
  });

  it('reads the transfer flags and extra-engine-args keys', () => {
    const t = cfg({ kvTransferBandwidth: '0', kvBytesPerToken: '1000000', kvTransferTimingMode: 'destination_missing', kvCacheDtype: 'fp8' }).disagg.kvTransfer;
    expect(t).toEqual({ bandwidthGBps: 0, bytesPerToken: 1_000_000, timingMode: 'destination_missing', cacheDtype: 'fp8' });
    const file = join(dir, 'disagg-args.json');
    writeFileSync(file, JSON.stringify({ kv_transfer_bandwidth: 2.5, kv_bytes_per_token: 10, handoff_session_timeout_ms: 500 }));
    const e = cfg({ extraEngineArgs: file }).disagg;
    expect(e.kvTransfer).toMatchObject({ bandwidthGBps: 2.5, bytesPerToken: 10 });
    expect(e.handoffSessionTimeoutMs).toBe(500);
    expect(e.rendezvousTimeoutMs).toBe(500);
  });

  it('advertises DYN_HTTP_RPC_HOST as the bootstrap host', () => {
    expect(cfg({ disaggregationMode: 'prefill' }, { DYN_HTTP_RPC_HOST: '10.1.2.3' }).disagg.bootstrapHost).toBe('10.1.2.3');
  });

  const refusals: Refusal[] = [
    [['--disaggregation-mode', 'prefill', '--is-prefill-worker'], {}, '--is-prefill-worker', /cannot be combined with --disaggregation-mode/],
    [['--disaggregation-mode', 'decode', '--is-decode-worker'], {}, '--is-decode-worker', /cannot be combined with --disaggregation-mode/],
    [['--is-prefill-worker', '--is-decode-worker'], {}, '--is-prefill-worker', /cannot be combined with --is-decode-worker/],
    [['--disaggregation-mode', 'both'], {}, '--disaggregation-mode', /invalid|agg, prefill, decode/],
    [['--disaggregation-mode', 'prefill', '--bootstrap-ports', '7000,7001'], {}, '--bootstrap-ports', /one port per worker \(1 with --num-workers\), got 2/],
    [['--disaggregation-mode', 'prefill', '--num-workers', '2', '--bootstrap-ports', '7000,x'], {}, '--bootstrap-ports', /must be an integer/],
    [['--kv-transfer-bandwidth', '-1'], {}, '--kv-transfer-bandwidth', /must be ≥ 0/],
    [['--kv-bytes-per-token', '0'], {}, '--kv-bytes-per-token', /integer in \[1,/],
    [['--kv-transfer-timing-mode', 'half'], {}, '--kv-transfer-timing-mode', /invalid|full_prompt/],
    [['--kv-cache-dtype', 'int3'], {}, '--kv-cache-dtype', /invalid|must be one of/],
    [['--disaggregation-mode', 'prefill'], { DYN_HTTP_RPC_HOST: 'prefill.local' }, 'DYN_HTTP_RPC_HOST', /must be an IP address/],
    [['--dynamo-version', '1.4', '--disaggregation-mode', 'decode', '--zmq-kv-events-ports', '5557'], {}, '--zmq-kv-events-ports', /decode workers publish no KV events/],
  ];
  // Commander itself refuses a value outside a flag's choices, adding its usage hint.
  itRefuses(refusals, false);

  it('--help lists the disaggregation flags, also for replay and request', async () => {
    const { out } = await run(['--help']);
    for (const flag of ['--disaggregation-mode', '--is-prefill-worker', '--is-decode-worker', '--bootstrap-ports', '--kv-transfer-bandwidth', '--kv-bytes-per-token', '--kv-cache-dtype', '--kv-transfer-timing-mode']) {
      expect(out).toContain(flag);
    }
    expect((await run(['replay', '--help'])).out).toContain('--kv-transfer-bandwidth');
    const request = (await run(['request', '--help'])).out;
    expect(request).toContain('--disaggregated');
    expect(request).toContain('--prefill-endpoint');
  });
});

describe('every environment variable the worker reads is checked (issue 12)', () => {
  const file = join(dir, 'plain-file');
  writeFileSync(file, 'x');
  const v14 = ['--dynamo-version', '1.4'];
  const refusals: Refusal[] = [
    [[], { DYN_LOG: 'verbose' }, 'DYN_LOG', /unknown level 'verbose'/],
    [[], { DYN_LOG: 'dbug,dynamo_runtime=trace' }, 'DYN_LOG', /unknown level 'dbug'/],
    [[], { DYN_LOG: 'dynamo_runtime' }, 'DYN_LOG', /unknown level/],
    [[], { DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT: 'soon' }, 'DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT', /must be a number/],
    [[], { DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT: '-1' }, 'DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT', /≥ 0/],
    [[], { DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT: '1e12' }, 'DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT', /≤ 2147483/],
    [[], { DYN_NATS_STREAM_MAX_AGE: '0' }, 'DYN_NATS_STREAM_MAX_AGE', /> 0/],
    [[], { DYN_NATS_STREAM_MAX_AGE: 'forever' }, 'DYN_NATS_STREAM_MAX_AGE', /must be a number/],
    [[], { DYN_NATS_STREAM_MAX_AGE: '1e12' }, 'DYN_NATS_STREAM_MAX_AGE', /≤ 9223372036/],
    [[], { DYN_SYSTEM_ENABLED: 'maybe' }, 'DYN_SYSTEM_ENABLED', /must be a boolean/],
    [v14, { DYN_ZMQ_BROKER_ENABLED: 'maybe' }, 'DYN_ZMQ_BROKER_ENABLED', /must be a boolean/],
    [[], { DYN_NAMESPACE: 'Team.A' }, 'DYN_NAMESPACE', /must match/],
    [v14, { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: join(file, 'kv') }, 'DYN_FILE_KV', /is not a directory/],
    [[], { HF_HUB_OFFLINE: 'maybe' }, 'HF_HUB_OFFLINE', /must be a boolean/],
    [[], { TRANSFORMERS_OFFLINE: '2' }, 'TRANSFORMERS_OFFLINE', /must be a boolean/],
    [[], { NATS_SERVER: 'http://127.0.0.1:4222' }, 'NATS_SERVER', /nats:\/\/host:port/],
    [[], { ETCD_ENDPOINTS: '127.0.0.1:2379' }, 'ETCD_ENDPOINTS', /http\(s\):\/\/host:port/],
    [[], { NATS_AUTH_CREDENTIALS_FILE: join(dir, 'missing.creds') }, 'NATS_AUTH_CREDENTIALS_FILE', /ENOENT/],
  ];
  itRefuses(refusals);

  it('a refused URL shows no credentials', async () => {
    const { code, err } = await run(['--model-path', 'm'], { ETCD_ENDPOINTS: 'ftp://root:hunter2-etcd@127.0.0.1:2379' });
    expect(code).toBe(2);
    expect(err).toBe("dynamo-mocker: ETCD_ENDPOINTS: must list http(s)://host:port URLs, got 'ftp://***@127.0.0.1:2379'\n");
  });

  it('URLs and files of servers the worker does not dial are not its business', () => {
    const env = { NATS_SERVER: 'bogus', NATS_AUTH_CREDENTIALS_FILE: '/nonexistent', DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: dir };
    expect(parseWorkerConfig({ modelPath: 'm', dynamoVersion: '1.4' }, [], env).discovery.backend).toBe('file');
  });

  it.each([
    [undefined, 'info'],
    ['', 'info'],
    ['debug', 'debug'],
    ['DEBUG', 'debug'],
    ['warn,dynamo_runtime=trace', 'warn'],
    ['dynamo_runtime=trace,error', 'error'],
    ['dynamo_llm=debug', 'info'],
    ['info,debug', 'info'],
    ['off', 'silent'],
    ['4', 'debug'],
  ])('DYN_LOG=%j logs at %s (the first bare level wins; target=level directives are ignored)', (value, level) => {
    expect(levelFromDynLog(value)).toBe(level);
  });
});

describe('--model-path must name a model (issue 12)', () => {
  const modelDir = (files: Record<string, string>): string => {
    const d = mkdtempSync(join(tmpdir(), 'model-'));
    for (const [name, text] of Object.entries(files)) writeFileSync(join(d, name), text);
    return d;
  };
  const good = { 'config.json': '{"vocab_size": 100}', 'tokenizer.json': '{}', 'tokenizer_config.json': '{}', 'generation_config.json': '{}' };
  const file = join(dir, 'not-a-model.json');
  writeFileSync(file, '{}');
  const empty = modelDir({});
  const cases: Array<[string, RegExp]> = [
    [join(dir, 'no', 'such', 'dir'), /does not exist \(and is not a HuggingFace repo id\)/],
    ['./models/typo', /does not exist/],
    [file, /is a file, not a model directory/],
    [empty, /has no config\.json/],
    [modelDir({ 'tokenizer.json': '{}' }), /has no config\.json/],
  ];
  for (const name of Object.keys(good)) {
    const d = modelDir({ ...good, [name]: '{"truncated": [1, 2' });
    cases.push([d, new RegExp(`${join(d, name).replace(/[.]/g, '\\.')} is not valid JSON`)]);
  }
  for (const [path, message] of cases) {
    for (const sub of [[], ['replay', '--trace', trace]]) {
      it(`${sub.length ? 'replay' : 'worker'}: exits 2 naming --model-path for ${path}`, async () => {
        const { code, err } = await run([...sub, '--model-path', path]);
        expect(code).toBe(2);
        expect(err).toMatch(/^dynamo-mocker(?: replay)?: --model-path: /);
        expect(err).toMatch(message);
        expect(err.trim().split('\n')).toHaveLength(1);
      });
    }
  }

  it('a complete directory and an uncached repo id are accepted', () => {
    expect(parseWorkerConfig({ modelPath: modelDir(good) }, [], {}).modelPath).toBeTruthy();
    expect(parseWorkerConfig({ modelPath: 'acme/not-cached' }, [], { HF_HUB_OFFLINE: '1' }).modelPath).toBe('acme/not-cached');
  });
});

describe('--on-lease-loss (issue 12)', () => {
  it('defaults to exit, as Dynamo; takes reregister', () => {
    expect(parseWorkerConfig({ modelPath: 'Qwen/Qwen3-0.6B' }, [], {}).onLeaseLoss).toBe('exit');
    expect(parseWorkerConfig({ modelPath: 'Qwen/Qwen3-0.6B', onLeaseLoss: 'reregister' }, [], {}).onLeaseLoss).toBe('reregister');
    expect(parseWorkerConfig({ modelPath: 'Qwen/Qwen3-0.6B', onLeaseLoss: 'EXIT' }, [], {}).onLeaseLoss).toBe('exit');
  });

  itRefuses([
    [['--on-lease-loss', 'restart'], {}, '--on-lease-loss', /must be one of exit, reregister, got 'restart'/],
    [['--on-lease-loss', ''], {}, '--on-lease-loss', /must be one of exit, reregister, got ''/],
  ]);

  it('--help lists it with its default', async () => {
    const { out } = await run(['--help']);
    expect(out.replace(/\s+/g, ' ')).toMatch(/--on-lease-loss <action> +when the etcd lease is lost: exit .* reregister .*\(default: exit\)/);
  });
});
