// Frontend side of Dynamo 0.6.1's request plane: discovery in etcd, NATS requests, streamed responses.
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Etcd3 } from 'etcd3';
import { headers as natsHeaders, type NatsConnection } from 'nats';
import type { EndpointId } from '../config.js';
import { connectEtcd, connectNats } from '../dynamo/connections.js';
import { parseJson, stringifyJson, type JsonValue } from '../dynamo/lossless-json.js';
import { instancePrefix, leaseHex, serviceName } from '../dynamo/names.js';
import { encodeTwoPartText } from '../dynamo/two-part-codec.js';
import { createXxh3, type Xxh3Hasher } from '../hashing/xxh3.js';
import { startStreamServer, type PendingStream, type StreamServer } from './stream-server.js';

export interface Instance {
  instanceId: bigint;
  /** Recomputed as the frontend does: {slug(ns_component)}.{endpoint}-{hex}. */
  subject: string;
  key: string;
  record: JsonValue;
}

export interface GenerateRequest {
  tokenIds: number[];
  maxTokens: number | null;
  model?: string;
  eosTokenIds?: number[];
  stopTokenIdsHidden?: number[] | null;
  dpRank?: number;
  seed?: number;
}

export interface StreamHandle {
  requestId: string;
  sentAt: number;
  stream: PendingStream;
}

/** The PreprocessedRequest body exactly as the frontend's serde writes it. */
export function preprocessedRequestJson(r: GenerateRequest): string {
  const body: Record<string, unknown> = {
    model: r.model ?? 'mocker',
    token_ids: r.tokenIds,
    stop_conditions: {
      max_tokens: r.maxTokens,
      stop: null,
      stop_token_ids_hidden: r.stopTokenIdsHidden ?? null,
      min_tokens: null,
      ignore_eos: null,
      max_thinking_tokens: null,
    },
    sampling_options: {
      n: null,
      best_of: null,
      presence_penalty: null,
      frequency_penalty: null,
      repetition_penalty: null,
      temperature: null,
      top_p: null,
      top_k: null,
      min_p: null,
      use_beam_search: null,
      length_penalty: null,
      seed: r.seed ?? null,
      include_stop_str_in_output: null,
      guided_decoding: null,
    },
    output_options: { logprobs: null, prompt_logprobs: null, skip_special_tokens: null, formatted_prompt: null },
    eos_token_ids: r.eosTokenIds ?? [],
    mdc_sum: null,
    annotations: [],
    estimated_prefix_hit_num_blocks: null,
    backend_instance_id: null,
    router_config_override: null,
  };
  if (r.dpRank !== undefined) body.dp_rank = r.dpRank;
  return stringifyJson(body);
}

/** The RequestControlMessage header (connection_info.info is a JSON string inside the JSON). */
export function requestControlJson(requestId: string, address: string, streamSubject: string): string {
  const info = JSON.stringify({ address, subject: streamSubject, context: requestId, stream_type: 'response' });
  return JSON.stringify({
    id: requestId,
    request_type: 'single_in',
    response_type: 'many_out',
    connection_info: { transport: 'tcp_server', info },
  });
}

export class DynamoClient {
  private constructor(
    readonly nats: NatsConnection,
    readonly etcd: Etcd3,
    readonly xxh: Xxh3Hasher,
    private readonly streams: StreamServer,
    private readonly owned: boolean,
  ) {}

  /** Connects from env-style settings (NATS_SERVER, ETCD_ENDPOINTS) or reuses given connections. */
  static async connect(opts: { env?: Record<string, string | undefined>; nats?: NatsConnection; etcd?: Etcd3 } = {}): Promise<DynamoClient> {
    const env = opts.env ?? {};
    const nats = opts.nats ?? (await connectNats(env));
    const etcd = opts.etcd ?? (await connectEtcd(env));
    const xxh = await createXxh3();
    const streams = await startStreamServer(xxh);
    return new DynamoClient(nats, etcd, xxh, streams, !opts.nats);
  }

  /** Instances registered for an endpoint, as the frontend's watcher sees them. */
  async instances(ep: EndpointId): Promise<Instance[]> {
    const kvs = await this.etcd.getAll().prefix(instancePrefix(ep)).strings();
    const out: Instance[] = [];
    for (const [key, value] of Object.entries(kvs)) {
      const record = parseJson(value) as { instance_id: bigint | number };
      const instanceId = BigInt(record.instance_id);
      out.push({ instanceId, subject: `${serviceName(ep)}.${ep.endpoint}-${leaseHex(instanceId)}`, key, record });
    }
    return out.sort((a, b) => (a.instanceId < b.instanceId ? -1 : 1));
  }

  /** Waits (with a deadline, watching etcd) until at least `count` instances are registered. */
  async waitForInstances(ep: EndpointId, count: number, timeoutMs = 10_000): Promise<Instance[]> {
    const deadline = performance.now() + timeoutMs;
    const watcher = await this.etcd.watch().prefix(instancePrefix(ep)).create();
    try {
      for (;;) {
        const found = await this.instances(ep);
        if (found.length >= count) return found;
        const left = deadline - performance.now();
        if (left <= 0) throw new Error(`expected ${count} instance(s) of ${ep.namespace}.${ep.component}.${ep.endpoint}, found ${found.length}`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, left);
          watcher.once('put', () => {
            clearTimeout(t);
            resolve();
          });
        });
      }
    } finally {
      await watcher.cancel();
    }
  }

  /** Sends one generate request to a worker subject and returns its response stream. */
  async generate(subject: string, req: GenerateRequest, opts: { requestId?: string; timeoutMs?: number } = {}): Promise<StreamHandle> {
    const requestId = opts.requestId ?? randomUUID();
    const stream = this.streams.register();
    const frame = encodeTwoPartText(requestControlJson(requestId, this.streams.address, stream.subject), preprocessedRequestJson(req), this.xxh);
    const h = natsHeaders();
    h.set('x-request-id', requestId);
    const sentAt = performance.now();
    const reply = await this.nats.request(subject, frame, { timeout: opts.timeoutMs ?? 10_000, headers: h });
    if (reply.data.length !== 0) throw new Error(`worker acknowledged with a non-empty reply (${reply.data.length} bytes)`);
    return { requestId, sentAt, stream };
  }

  /** Sends an arbitrary payload (for malformed-input tests); resolves with the ack's length. */
  async sendRaw(subject: string, payload: Uint8Array, timeoutMs = 10_000): Promise<number> {
    const reply = await this.nats.request(subject, payload, { timeout: timeoutMs });
    return reply.data.length;
  }

  /** A fresh stream registration plus its control header, for hand-built requests. */
  prepareStream(requestId = randomUUID()): { stream: PendingStream; controlJson: string } {
    const stream = this.streams.register();
    return { stream, controlJson: requestControlJson(requestId, this.streams.address, stream.subject) };
  }

  async close(): Promise<void> {
    await this.streams.close();
    if (this.owned) {
      await this.nats.drain().catch(() => {});
      this.etcd.close();
    }
  }
}
