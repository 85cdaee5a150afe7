// `dynamo-mocker request`: acts as a Dynamo frontend (0.6.1 or 1.4) toward workers and prints streams and timings.
import type { Command } from 'commander';
import { ConnectionError } from '../adapters/connection-error.js';
import { ConfigError, defaultEndpoint, parseEndpoint, parseInteger, type EndpointId, type RawOptions } from '../config.js';
import type { DynamoClient } from './dynamo-client.js';

export interface RequestIo {
  out: (text: string) => void;
  err: (text: string) => void;
  env: Record<string, string | undefined>;
}

interface RequestOptions {
  endpoint: ReturnType<typeof parseEndpoint>;
  /** Disaggregated: the prefill workers' endpoint (decode workers are at `endpoint`). */
  prefillEndpoint: ReturnType<typeof parseEndpoint> | null;
  discovery: 'etcd' | 'file';
  tokens: number[];
  maxTokens: number;
  count: number;
  dpRank: number | undefined;
  stopAfter: number | null;
  kill: boolean;
  json: boolean;
  /** Re-send a broken stream (no complete_final, no error) to the next instance up to this often. */
  migrationLimit: number;
}

function parseOptions(raw: RawOptions, env: Record<string, string | undefined>): RequestOptions {
  const endpoint = parseEndpoint(raw.endpoint === undefined ? defaultEndpoint(env) : String(raw.endpoint));
  let tokens: number[];
  if (raw.tokens !== undefined) {
    tokens = String(raw.tokens)
      .split(',')
      .map((t) => parseInteger('--tokens', t, 0, 0xffffffff));
    if (tokens.length === 0) throw new ConfigError('--tokens', 'must list at least one token id');
  } else {
    const length = raw.promptLength === undefined ? 128 : parseInteger('--prompt-length', raw.promptLength, 1, 1 << 24);
    tokens = Array.from({ length }, (_, i) => 100 + (i % 1000));
  }
  const discovery = String(raw.discoveryBackend ?? env.DYN_DISCOVERY_BACKEND ?? 'etcd').toLowerCase();
  if (discovery !== 'etcd' && discovery !== 'file') {
    throw new ConfigError(raw.discoveryBackend !== undefined ? '--discovery-backend' : 'DYN_DISCOVERY_BACKEND', `must be etcd or file, got '${discovery}'`);
  }
  const disaggregated = Boolean(raw.disaggregated) || raw.prefillEndpoint !== undefined;
  const prefillEndpoint = disaggregated ? parseEndpoint(raw.prefillEndpoint === undefined ? defaultEndpoint(env, 'prefill') : String(raw.prefillEndpoint)) : null;
  return {
    endpoint,
    prefillEndpoint,
    discovery,
    tokens,
    maxTokens: raw.maxTokens === undefined ? 16 : parseInteger('--max-tokens', raw.maxTokens, 0, 1 << 24),
    count: raw.count === undefined ? 1 : parseInteger('--count', raw.count, 1, 100_000),
    dpRank: raw.dpRank === undefined ? undefined : parseInteger('--dp-rank', raw.dpRank, 0, 1 << 16),
    stopAfter: raw.stopAfter === undefined ? null : parseInteger('--stop-after', raw.stopAfter, 0, 1 << 24),
    kill: Boolean(raw.kill),
    json: Boolean(raw.json),
    migrationLimit: raw.migrationLimit === undefined ? 0 : parseInteger('--migration-limit', raw.migrationLimit, 0, 1000),
  };
}

export async function runRequestCommand(raw: RawOptions, io: RequestIo): Promise<number> {
  const opts = parseOptions(raw, io.env);
  let client: DynamoClient;
  try {
    const { DynamoClient } = await import('./dynamo-client.js');
    client = await DynamoClient.connect({ env: io.env, discovery: opts.discovery });
  } catch (err) {
    if (err instanceof ConnectionError) {
      io.err(`dynamo-mocker request: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  try {
    if (opts.prefillEndpoint) return await runDisaggregated(client, opts, opts.prefillEndpoint, io);
    const instances = await client.instances(opts.endpoint);
    if (instances.length === 0) {
      const { namespace, component, endpoint } = opts.endpoint;
      io.err(`dynamo-mocker request: no instances registered for dyn://${namespace}.${component}.${endpoint}\n`);
      return 1;
    }
    const { generateWithMigration } = await import('./migration.js');
    const runs = Array.from({ length: opts.count }, (_, i) =>
      generateWithMigration(client, instances, i, { tokenIds: opts.tokens, maxTokens: opts.maxTokens, dpRank: opts.dpRank }, opts.migrationLimit, (h) => {
        if (opts.stopAfter !== null) {
          const stopAfter = opts.stopAfter;
          h.stream.onToken(() => {
            if (h.stream.tokens.length === stopAfter) (opts.kill ? h.stream.kill() : h.stream.stop());
          });
        }
        if (!opts.json && opts.count === 1) h.stream.onToken((t) => io.out(`${t} `));
      }),
    );
    const migrated = await Promise.all(runs);
    if (!opts.json && opts.count === 1) io.out('\n');
    let failed = 0;
    const rows: string[] = [];
    migrated.forEach(({ result: r, sentAt, migrations, requestIds }, i) => {
      const h = { sentAt, requestId: requestIds[0] };
      const n = r.tokenIds.length;
      const ttft = n ? r.tokenTimes[0] - h.sentAt : null;
      const itl = n > 1 ? (r.tokenTimes[n - 1] - r.tokenTimes[0]) / (n - 1) : null;
      const e2e = r.endedAt - h.sentAt;
      const error = r.prologueError ?? (r.errors.length ? r.errors.join('; ') : null);
      if (error) failed++;
      const record = { request: i, request_id: h.requestId, tokens: n, finish_reason: r.finishReason, complete_final: r.completeFinal, migrations, ttft_ms: ttft, mean_itl_ms: itl, e2e_ms: e2e, tokens_per_s: e2e > 0 ? (n * 1000) / e2e : null, error };
      if (opts.json) {
        rows.push(JSON.stringify({ ...record, token_ids: r.tokenIds }, (_k, v) => (typeof v === 'bigint' ? Number(v) : v)));
      } else {
        const f = (v: number | null, d = 1) => (v === null ? '-' : v.toFixed(d));
        rows.push(
          `${String(i).padStart(7)}  ${String(n).padStart(6)}  ${String(JSON.stringify(r.finishReason) ?? '-').padEnd(10)}  ${f(ttft).padStart(8)}  ${f(itl, 2).padStart(8)}  ${f(e2e).padStart(8)}  ${error ?? ''}`,
        );
      }
    });
    if (!opts.json) io.out('request  tokens  finish       TTFT ms   ITL ms    E2E ms\n');
    io.out(rows.join('\n') + '\n');
    return failed ? 1 : 0;
  } finally {
    await client.close();
  }
}

const ms = (v: number | null, d = 1): string => (v === null ? '-' : v.toFixed(d));

/** `--disaggregated`: each request through a prefill and a decode worker, as a frontend's prefill router sends it. */
async function runDisaggregated(client: DynamoClient, opts: RequestOptions, prefillEndpoint: EndpointId, io: RequestIo): Promise<number> {
  const [prefills, decodes] = await Promise.all([client.instances(prefillEndpoint), client.instances(opts.endpoint)]);
  const name = (ep: EndpointId): string => `dyn://${ep.namespace}.${ep.component}.${ep.endpoint}`;
  if (prefills.length === 0 || decodes.length === 0) {
    io.err(`dynamo-mocker request: no instances registered for ${prefills.length === 0 ? name(prefillEndpoint) : name(opts.endpoint)}\n`);
    return 1;
  }
  const { generateDisaggregated } = await import('./disagg-flow.js');
  const outcomes = await Promise.all(
    Array.from({ length: opts.count }, (_, i) =>
      generateDisaggregated(
        client,
        { prefillEndpoint, prefill: prefills[i % prefills.length], decode: decodes[i % decodes.length] },
        { tokenIds: opts.tokens, maxTokens: opts.maxTokens, dpRank: opts.dpRank },
      ),
    ),
  );
  let failed = 0;
  const rows = outcomes.map((o, i) => {
    const d = o.decode;
    const n = d?.tokenIds.length ?? 0;
    const ttft = d && n ? d.tokenTimes[0] - o.sentAt : null;
    const itl = d && n > 1 ? (d.tokenTimes[n - 1] - d.tokenTimes[0]) / (n - 1) : null;
    const e2e = d ? d.endedAt - o.sentAt : null;
    const prefillMs = o.prefillTokenAt === null ? null : o.prefillTokenAt - o.sentAt;
    const transferMs = o.prefillTokenAt === null || o.prefillEndAt === null ? null : o.prefillEndAt - o.prefillTokenAt;
    const error = o.error ?? d?.prologueError ?? (d?.errors.length ? d.errors.join('; ') : null) ?? (o.prefill.errors.length ? o.prefill.errors.join('; ') : null);
    if (error) failed++;
    const record = {
      request: i,
      request_id: o.requestId,
      path: o.path,
      tokens: n,
      finish_reason: d?.finishReason ?? null,
      prefill_ms: prefillMs,
      transfer_ms: transferMs,
      ttft_ms: ttft,
      mean_itl_ms: itl,
      e2e_ms: e2e,
      prefill_disaggregated_params: o.prefill.items.length ? ((o.prefill.items[0] as { data?: { disaggregated_params?: unknown } }).data?.disaggregated_params ?? null) : null,
      error,
    };
    if (opts.json) return JSON.stringify({ ...record, token_ids: d?.tokenIds ?? [] }, (_k, v) => (typeof v === 'bigint' ? Number(v) : v));
    return `${String(i).padStart(7)}  ${o.path.padEnd(14)}  ${String(n).padStart(6)}  ${ms(prefillMs).padStart(10)}  ${ms(transferMs).padStart(11)}  ${ms(ttft).padStart(8)}  ${ms(itl, 2).padStart(8)}  ${ms(e2e).padStart(8)}  ${error ?? ''}`;
  });
  if (!opts.json) io.out('request  path            tokens  prefill ms  transfer ms   TTFT ms   ITL ms    E2E ms\n');
  io.out(rows.join('\n') + '\n');
  return failed ? 1 : 0;
}

/** Registers `dynamo-mocker request` on the program. */
export function addRequestCommand(program: Command, makeSub: (name: string) => Command, io: RequestIo, setExit: (code: number) => void): void {
  const cmd = makeSub('request')
    .description('act as a Dynamo frontend: send requests to registered workers (0.6.1 or 1.4) and print the streams and timings')
    .option('--endpoint <dyn://ns.component.endpoint>', 'endpoint to call (default: dyn://${DYN_NAMESPACE:-dynamo}.backend.generate)')
    .option('--discovery-backend <backend>', 'where to find workers: etcd or file (default: $DYN_DISCOVERY_BACKEND, else etcd)')
    .option('--prompt-length <n>', 'synthetic prompt length in tokens (default: 128)')
    .option('--tokens <ids>', 'comma-separated prompt token ids (instead of --prompt-length)')
    .option('--max-tokens <n>', 'max_tokens of each request (default: 16)')
    .option('--count <n>', 'concurrent requests, spread over the instances (default: 1)')
    .option('--dp-rank <n>', 'data-parallel rank to pin (default: the worker chooses)')
    .option('--stop-after <n>', 'send stop after n tokens')
    .option('--kill', 'with --stop-after: send kill instead of stop')
    .option('--json', 'one JSON line per request instead of a table')
    .option('--migration-limit <n>', 'like the frontend: re-send a stream that breaks (no complete_final, no error) with the tokens so far to the next instance, up to n times (default: 0)')
    .option('--disaggregated', 'send each request through a prefill worker and a decode worker (at --endpoint), as a frontend\'s prefill router does')
    .option('--prefill-endpoint <dyn://ns.component.endpoint>', 'with --disaggregated: the prefill workers (default: dyn://${DYN_NAMESPACE:-dynamo}.prefill.generate)');
  cmd.action(async (opts: RawOptions) => setExit(await runRequestCommand(opts, io)));
  program.addCommand(cmd);
}
