// Issue 12, on real processes: every bad input exits 2 with one line naming it (no stack trace),
// credentials never reach stderr, JSON nested past serde_json's limit is refused on its stream, 50
// concurrent requests print no MaxListenersExceededWarning, and a stream still running at the
// graceful-shutdown deadline gets an error item before its connection closes. 1.4 on file discovery
// and the TCP plane, so no NATS or etcd is needed (those URLs point at dead ports).
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { DynamoClient, preprocessedRequestJson1x } from '../../src/client/dynamo-client.js';
import { encodeTwoPartText } from '../../src/dynamo/two-part-codec.js';
import { freePort, waitFor } from '../helpers/servers.js';
import { BIN, TINY_MODEL, startWorkerProcess } from '../helpers/worker-process.js';

const EP = { namespace: 'dynamo', component: 'backend', endpoint: 'generate' };
const dir = mkdtempSync(join(tmpdir(), 'hostile-'));

interface CliRun {
  code: number | null;
  stderr: string;
  stdout: string;
  ms: number;
}

/** Runs bin/dynamo-mocker with only the given environment (no NODE_OPTIONS), killed after `timeoutMs`. */
function runCli(args: string[], env: Record<string, string>, timeoutMs = 10_000): Promise<CliRun> {
  const t0 = performance.now();
  const proc = spawn(process.execPath, [BIN, ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: dir, DYN_SYSTEM_PORT: '-1', DYN_TCP_RPC_HOST: '127.0.0.1', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d) => (stdout += d));
  proc.stderr!.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  return new Promise((resolve) =>
    proc.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr, stdout, ms: performance.now() - t0 });
    }),
  );
}

function modelDir(overrides: Record<string, string> = {}): string {
  const d = mkdtempSync(join(dir, 'model-'));
  cpSync(TINY_MODEL, d, { recursive: true });
  for (const [name, text] of Object.entries(overrides)) writeFileSync(join(d, name), text);
  return d;
}

describe('every bad input is refused at start: exit 2, one stderr line naming it, no stack trace', () => {
  const plainFile = join(dir, 'plain.json');
  writeFileSync(plainFile, '{}');
  const emptyDir = join(dir, 'empty');
  mkdirSync(emptyDir);
  const trace = join(dir, 'trace.jsonl');
  writeFileSync(trace, '{"timestamp":0,"input_length":10,"output_length":2}\n');
  const kv = join(dir, 'kv');
  // 1.4 on file discovery: nothing to connect to, so only the input decides.
  const v14 = (modelPath: string, ...more: string[]) => ['--dynamo-version', '1.4', '--model-path', modelPath, ...more];
  const fileEnv = { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: kv };

  type Case = [label: string, args: string[], env: Record<string, string>, named: string, message: RegExp];
  const cases: Case[] = [
    ['--model-path that does not exist', v14(join(dir, 'no-such-model')), fileEnv, '--model-path', /does not exist/],
    ['--model-path that is a file', v14(plainFile), fileEnv, '--model-path', /is a file, not a model directory/],
    ['--model-path without config.json', v14(emptyDir), fileEnv, '--model-path', /has no config\.json/],
    ['replay --model-path that does not exist', ['replay', '--trace', trace, '--model-path', '/no/such/model'], {}, '--model-path', /does not exist/],
    ['replay --model-path without config.json', ['replay', '--trace', trace, '--model-path', emptyDir], {}, '--model-path', /has no config\.json/],
    ['DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT', v14(TINY_MODEL), { ...fileEnv, DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT: 'soon' }, 'DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT', /must be a number/],
    ['DYN_NATS_STREAM_MAX_AGE', ['--model-path', TINY_MODEL], { DYN_NATS_STREAM_MAX_AGE: '-5' }, 'DYN_NATS_STREAM_MAX_AGE', /> 0/],
    ['DYN_LOG', v14(TINY_MODEL), { ...fileEnv, DYN_LOG: 'verbose' }, 'DYN_LOG', /unknown level 'verbose'/],
    ['DYN_LOG typo before a target directive', v14(TINY_MODEL), { ...fileEnv, DYN_LOG: 'debg,dynamo_runtime=trace' }, 'DYN_LOG', /unknown level 'debg'/],
    ['DYN_SYSTEM_PORT', v14(TINY_MODEL), { ...fileEnv, DYN_SYSTEM_PORT: '70000' }, 'DYN_SYSTEM_PORT', /port number/],
    ['DYN_SYSTEM_ENABLED', ['--model-path', TINY_MODEL], { DYN_SYSTEM_PORT: '', DYN_SYSTEM_ENABLED: 'maybe' }, 'DYN_SYSTEM_ENABLED', /must be a boolean/],
    ['DYN_SYSTEM_HEALTH_PATH', v14(TINY_MODEL), { ...fileEnv, DYN_SYSTEM_HEALTH_PATH: 'health' }, 'DYN_SYSTEM_HEALTH_PATH', /starting with '\/'/],
    ['DYN_TCP_RPC_HOST', v14(TINY_MODEL), { ...fileEnv, DYN_TCP_RPC_HOST: 'worker.local' }, 'DYN_TCP_RPC_HOST', /IP address/],
    ['DYN_TCP_WORKER_POOL_SIZE', v14(TINY_MODEL), { ...fileEnv, DYN_TCP_WORKER_POOL_SIZE: '0' }, 'DYN_TCP_WORKER_POOL_SIZE', /integer/],
    ['DYN_DISCOVERY_BACKEND', v14(TINY_MODEL), { DYN_DISCOVERY_BACKEND: 'zookeeper' }, 'DYN_DISCOVERY_BACKEND', /must be one of/],
    ['DYN_NAMESPACE', v14(TINY_MODEL), { ...fileEnv, DYN_NAMESPACE: 'Team.A' }, 'DYN_NAMESPACE', /must match/],
    ['DYN_FILE_KV under a file', v14(TINY_MODEL), { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: join(plainFile, 'kv') }, 'DYN_FILE_KV', /is not a directory/],
    ['DYN_ZMQ_BROKER_ENABLED', v14(TINY_MODEL), { ...fileEnv, DYN_ZMQ_BROKER_ENABLED: 'maybe' }, 'DYN_ZMQ_BROKER_ENABLED', /must be a boolean/],
    ['DYN_SELF_HOST_METADATA', v14(TINY_MODEL), { ...fileEnv, DYN_SELF_HOST_METADATA: 'sometimes' }, 'DYN_SELF_HOST_METADATA', /must be a boolean/],
    ['HF_HUB_OFFLINE', v14('acme/tiny'), { ...fileEnv, HF_HUB_OFFLINE: 'maybe' }, 'HF_HUB_OFFLINE', /must be a boolean/],
    ['NATS_SERVER', ['--model-path', TINY_MODEL], { NATS_SERVER: 'http://127.0.0.1:4222' }, 'NATS_SERVER', /nats:\/\/host:port/],
    ['ETCD_ENDPOINTS', ['--model-path', TINY_MODEL], { ETCD_ENDPOINTS: '127.0.0.1:2379' }, 'ETCD_ENDPOINTS', /http\(s\):\/\/host:port/],
    ['NATS_AUTH_CREDENTIALS_FILE', ['--model-path', TINY_MODEL], { NATS_AUTH_CREDENTIALS_FILE: join(dir, 'missing.creds') }, 'NATS_AUTH_CREDENTIALS_FILE', /ENOENT/],
  ];
  for (const name of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
    const model = modelDir({ [name]: '{"truncated": [1, 2,\n' });
    cases.push([`a corrupt ${name}`, v14(model), fileEnv, join(model, name), /is not valid JSON/]);
    cases.push([`replay with a corrupt ${name}`, ['replay', '--trace', trace, '--model-path', model], {}, join(model, name), /is not valid JSON/]);
  }

  it.concurrent.each(cases)('%s', async (_label, args, env, named, message) => {
    const r = await runCli(args, env);
    expect(r.code, r.stderr).toBe(2);
    const lines = r.stderr.trim().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toContain(named);
    expect(lines[0]).toMatch(message);
    expect(lines[0]).toMatch(/^dynamo-mocker(?: replay)?: /);
    expect(r.stderr).not.toMatch(/^\s+at /m);
    expect(r.stdout).toBe('');
  });
});

describe('credentials never reach stderr', () => {
  const password = 'Pa55-w0rd-never-printed';
  const fileEnv = () => ({ DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: mkdtempSync(join(dir, 'kv-')) });

  it.concurrent.each([
    ['an etcd URL with user:password (1.4, info)', ['--dynamo-version', '1.4'], (port: number) => ({ ETCD_ENDPOINTS: `http://root:${password}@127.0.0.1:${port}` }), 'ETCD_ENDPOINTS'],
    ['an etcd URL with user:password (0.6.1, debug)', [], (port: number) => ({ ETCD_ENDPOINTS: `http://root:${password}@127.0.0.1:${port}`, NATS_SERVER: `nats://127.0.0.1:${port}`, DYN_LOG: 'debug' }), '(ETCD_ENDPOINTS|NATS_SERVER)'],
    ['an etcd URL with only a password', ['--dynamo-version', '1.4'], (port: number) => ({ ETCD_ENDPOINTS: `http://:${password}@127.0.0.1:${port}` }), 'ETCD_ENDPOINTS'],
    ['a NATS URL with user:password', ['--dynamo-version', '1.4', '--request-plane', 'nats'], (port: number) => ({ ...fileEnv(), NATS_SERVER: `nats://user:${password}@127.0.0.1:${port}`, DYN_LOG: 'trace' }), 'NATS_SERVER'],
    ['a NATS URL with a token', ['--dynamo-version', '1.4', '--request-plane', 'nats'], (port: number) => ({ ...fileEnv(), NATS_SERVER: `nats://${password}@127.0.0.1:${port}` }), 'NATS_SERVER'],
  ])('%s pointing at a dead port: exit 1 within seconds, one line, no password', async (_label, args, env, named) => {
    const port = await freePort();
    const r = await runCli(['--model-path', TINY_MODEL, ...args], env(port));
    expect(r.code, r.stderr).toBe(1);
    expect(r.ms).toBeLessThan(8000);
    expect(r.stderr).not.toContain(password);
    expect(r.stderr).not.toContain(encodeURIComponent(password));
    const last = r.stderr.trim().split('\n').at(-1)!;
    expect(last).toMatch(new RegExp(`^dynamo-mocker: .*${named}`));
    expect(r.stderr).not.toMatch(/^\s+at /m);
  });

  it('a hub download from an HF_ENDPOINT with credentials warns without them', async () => {
    const port = await freePort();
    const root = mkdtempSync(join(dir, 'kv-'));
    const w = await startWorkerProcess(['--dynamo-version', '1.4', '--model-path', 'acme/tiny'], {
      DYN_DISCOVERY_BACKEND: 'file',
      DYN_FILE_KV: root,
      HF_HOME: mkdtempSync(join(dir, 'hf-')),
      HF_ENDPOINT: `http://user:${password}@127.0.0.1:${port}`,
      HF_TOKEN: 'hf_secret_token_value',
    });
    expect(await w.stop()).toBe(0);
    expect(w.output()).toMatch(/could not download model files for acme\/tiny from http:\/\/\*\*\*@127\.0\.0\.1/);
    expect(w.output()).not.toContain(password);
    expect(w.output()).not.toContain('hf_secret_token_value');
  });
});

describe('a serving worker under hostile requests', () => {
  async function start(args: string[] = [], env: Record<string, string> = {}) {
    const root = mkdtempSync(join(dir, 'kv-'));
    // NODE_OPTIONS is not passed on: the worker runs with Node's default warnings.
    const w = await startWorkerProcess(['--dynamo-version', '1.4', '--model-path', TINY_MODEL, ...args], { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root, ...env });
    const client = await DynamoClient.connect({ discovery: 'file', fileRoot: root });
    const [inst] = await client.waitForInstances(EP, 1);
    return { w, client, inst };
  }

  it('serves 50 concurrent requests without a MaxListenersExceededWarning (or any other warning)', async () => {
    const { w, client, inst } = await start(['--max-num-seqs', '100', '--speedup-ratio', '10']);
    const handles = await Promise.all(Array.from({ length: 50 }, (_, i) => client.generate(inst, { tokenIds: [1, 2, 3, i + 4], maxTokens: 30 })));
    const results = await Promise.all(handles.map((h) => h.stream.done));
    expect(results.every((r) => r.completeFinal && r.tokenIds.length === 30)).toBe(true);
    await client.close();
    expect(await w.stop()).toBe(0);
    expect(w.output()).not.toMatch(/MaxListenersExceededWarning|Warning:/);
  });

  it("refuses a body nested past serde_json's recursion limit on its stream; 127 levels are served", async () => {
    const { w, client, inst } = await start();
    const nested = (depth: number) => preprocessedRequestJson1x({ tokenIds: [1, 2], maxTokens: 2 }).replace(/^\{/, `{"x":${'['.repeat(depth - 1)}${']'.repeat(depth - 1)},`);
    for (const [depth, refused] of [[127, false], [128, true], [200_000, true]] as const) {
      const { stream, controlJson } = client.prepareStream(undefined, 'json');
      expect((await client.sendRaw(inst, encodeTwoPartText(controlJson, nested(depth), client.xxh))).length).toBe(0);
      const r = await stream.done;
      if (refused) expect(r.prologueError).toMatch(/^invalid request body: .*Recursion limit exceeded/);
      else expect(r).toMatchObject({ prologueError: null, completeFinal: true, tokenIds: [expect.any(Number), expect.any(Number)] });
    }
    expect(await w.metric('dynamo_component_errors_total{')).toBe(2);
    await client.close();
    expect(await w.stop()).toBe(0);
  });

  it('SIGTERM: a stream still running at the graceful-shutdown deadline gets an error item, then complete_final, then the connection ends', async () => {
    const { w, client, inst } = await start([], { DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT: '1' });
    const long = await client.generate(inst, { tokenIds: [1, 2, 3], maxTokens: 1_000_000 });
    const short = await client.generate(inst, { tokenIds: [4, 5, 6], maxTokens: 20 });
    await waitFor(() => long.stream.tokens.length > 0, { timeoutMs: 5000, message: 'first token' });
    const t0 = performance.now();
    w.proc.kill('SIGTERM');
    const [r, s] = await Promise.all([long.stream.done, short.stream.done]);
    const elapsed = performance.now() - t0;
    // The short one finished within the grace period, normally.
    expect(s).toMatchObject({ completeFinal: true, errors: [], finishReason: 'length' });
    // The long one: tokens, then the error item (no tokens, finish_reason {error}), complete_final, the sentinel.
    expect(r.tokenIds.length).toBeGreaterThan(0);
    expect(r.errors).toEqual(['worker shutting down: graceful shutdown timeout (1 s) reached']);
    expect(r.items.at(-1)).toMatchObject({ data: { token_ids: [], finish_reason: { error: 'worker shutting down: graceful shutdown timeout (1 s) reached' } } });
    expect(r.completeFinal).toBe(true);
    expect(r.sentinel).toBe(true);
    expect(elapsed).toBeGreaterThan(900);
    expect(elapsed).toBeLessThan(4000);
    expect(await w.exited).toBe(0);
    await client.close();
  });
});
