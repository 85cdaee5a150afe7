// Frontend side of Dynamo's request path, for 0.6.1 and 1.4 workers alike: discovery (etcd or files),
// requests over NATS or TCP, and the stream server workers call home to.
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Etcd3 } from 'etcd3';
import type { NatsConnection } from 'nats';
import { fileKvRoot, type EndpointId, type Env } from '../config.js';
import { parseJson, stringifyJson, type JsonValue } from '../dynamo/lossless-json.js';
import { cardKey, instancePrefix, requestSubject } from '../dynamo/names.js';
import { encodeTwoPartText } from '../dynamo/two-part-codec.js';
import { createXxh3, type Xxh3Hasher } from '../hashing/xxh3.js';
import { etcdReader, fileReader, type DiscoveryReader } from './discovery-reader.js';
import { startStreamServer, type PendingStream, type StreamServer } from './stream-server.js';
import { TcpRequestClient } from './tcp-request-client.js';

export type InstanceTransport = { kind: 'nats'; subject: string } | { kind: 'tcp'; address: string; path: string };

export interface Instance {
  instanceId: bigint;
  key: string;
  /** The record as parsed (u64 values as BigInt). */
  record: JsonValue;
  /** A 1.x `{"type":"Endpoint",…}` record (else a 0.6.x one). */
  tagged: boolean;
  transport: InstanceTransport;
  /** NATS subject, or `ip:port/path` for a TCP instance. */
  subject: string;
}

export interface GenerateRequest {
  tokenIds: number[];
  maxTokens: number | null;
  model?: string;
  eosTokenIds?: number[];
  stopTokenIdsHidden?: number[] | null;
  dpRank?: number;
  seed?: number;
  /** 1.x: the bootstrap session a prefill router sets up (both requests of a pair carry the same). */
  bootstrapInfo?: { host: string; port: number; room: bigint; handoffId: string };
  /** 1.x: a decode request after a prefill without bootstrap (`prefill_result.disaggregated_params`). */
  prefillResult?: JsonValue;
  /** 0.6.1: a decode request's top-level `disaggregated_params` (with the overlap weight zeroed, as that frontend does). */
  disaggregatedParams?: JsonValue;
}

export interface StreamHandle {
  requestId: string;
  sentAt: number;
  stream: PendingStream;
}

function stopConditions(r: GenerateRequest) {
  return {
    max_tokens: r.maxTokens,
    stop: null,
    stop_token_ids_hidden: r.stopTokenIdsHidden ?? null,
    min_tokens: null,
    ignore_eos: null,
    max_thinking_tokens: null,
  };
}

const SAMPLING_NULLS = ['n', 'best_of', 'presence_penalty', 'frequency_penalty', 'repetition_penalty', 'temperature', 'top_p', 'top_k', 'min_p', 'use_beam_search', 'length_penalty'];

function samplingOptions(r: GenerateRequest) {
  const o: Record<string, unknown> = {};
  for (const k of SAMPLING_NULLS) o[k] = null;
  return { ...o, seed: r.seed ?? null, include_stop_str_in_output: null, guided_decoding: null };
}

const OUTPUT_OPTIONS = { logprobs: null, prompt_logprobs: null, skip_special_tokens: null, formatted_prompt: null };

/** The fields every generation's PreprocessedRequest starts with, in serde's order. */
function commonBody(r: GenerateRequest): Record<string, unknown> {
  return {
    model: r.model ?? 'mocker',
    token_ids: r.tokenIds,
    stop_conditions: stopConditions(r),
    sampling_options: samplingOptions(r),
    output_options: OUTPUT_OPTIONS,
    eos_token_ids: r.eosTokenIds ?? [],
    mdc_sum: null,
    annotations: [],
  };
}

/** The PreprocessedRequest body exactly as a 0.6.1 frontend's serde writes it. */
export function preprocessedRequestJson(r: GenerateRequest): string {
  const body = { ...commonBody(r), estimated_prefix_hit_num_blocks: null, backend_instance_id: null, router_config_override: null } as Record<string, unknown>;
  if (r.disaggregatedParams !== undefined) {
    body.router_config_override = { overlap_score_weight: 0, router_temperature: null };
    body.disaggregated_params = r.disaggregatedParams;
  }
  if (r.dpRank !== undefined) body.dp_rank = r.dpRank;
  return stringifyJson(body);
}

/** The 0.9+ body: the data-parallel rank travels in `routing` (RoutingHints), optional fields omitted. */
export function preprocessedRequestJson1x(r: GenerateRequest): string {
  const routing = r.dpRank === undefined ? {} : { routing: { dp_rank: r.dpRank } };
  const body: Record<string, unknown> = { ...commonBody(r), ...routing, router_config_override: null };
  if (r.prefillResult !== undefined) body.prefill_result = { disaggregated_params: r.prefillResult };
  if (r.bootstrapInfo) {
    const b = r.bootstrapInfo;
    body.bootstrap_info = { bootstrap_host: b.host, bootstrap_port: b.port, bootstrap_room: b.room, handoff_id: b.handoffId };
  }
  return stringifyJson(body);
}

/** The RequestControlMessage header (connection_info.info is a JSON string inside the JSON). */
export function requestControlJson(requestId: string, address: string, streamSubject: string, payloadCodec?: 'json'): string {
  const info = JSON.stringify({ address, subject: streamSubject, context: requestId, stream_type: 'response' });
  const control: Record<string, unknown> = { id: requestId, request_type: 'single_in', response_type: 'many_out' };
  // A 1.4 frontend always writes the codec; 0.6.1 knows no such field.
  if (payloadCodec) control.payload_codec = payloadCodec;
  control.connection_info = { transport: 'tcp_server', info };
  return JSON.stringify(control);
}

/** Reads one record from v1/instances, tagged (1.x) or not (0.6.x). */
export function parseInstance(ep: EndpointId, key: string, text: string): Instance | null {
  let record: JsonValue;
  try {
    record = parseJson(text);
  } catch {
    return null;
  }
  const r = record as { type?: string; instance_id?: bigint | number; transport?: { nats_tcp?: string; tcp?: string } };
  if (r === null || typeof r !== 'object' || r.instance_id === undefined) return null;
  const instanceId = BigInt(r.instance_id);
  const tagged = r.type === 'Endpoint';
  if ('type' in r && !tagged) return null;
  let transport: InstanceTransport;
  if (tagged && typeof r.transport?.tcp === 'string') {
    const addr = r.transport.tcp.replace(/^tcp:\/\//, '');
    const slash = addr.indexOf('/');
    transport = { kind: 'tcp', address: addr.slice(0, slash), path: addr.slice(slash + 1) };
  } else if (tagged && typeof r.transport?.nats_tcp === 'string') {
    // 1.x frontends publish to the advertised subject verbatim.
    transport = { kind: 'nats', subject: r.transport.nats_tcp };
  } else {
    // 0.6.x frontends recompute it: {slug(ns_component)}.{endpoint}-{hex}.
    transport = { kind: 'nats', subject: requestSubject(ep, instanceId) };
  }
  const subject = transport.kind === 'nats' ? transport.subject : `${transport.address}/${transport.path}`;
  return { instanceId, key, record, tagged, transport, subject };
}


export interface ClientOptions {
  env?: Env;
  /** Where to look for workers: etcd (default) or the file backend (DYN_DISCOVERY_BACKEND). */
  discovery?: 'etcd' | 'file';
  /** Root of the file backend (default DYN_FILE_KV, else $TMPDIR/dynamo_store_kv). */
  fileRoot?: string;
  nats?: NatsConnection;
  etcd?: Etcd3;
}

const positive = (raw: string | undefined, fallback: number): number => {
  const n = Number(raw);
  return raw !== undefined && raw !== '' && Number.isFinite(n) && n > 0 ? n : fallback;
};

export class DynamoClient {
  private natsConnecting: Promise<NatsConnection> | null = null;

  private constructor(
    private natsConn: NatsConnection | null,
    readonly etcdClient: Etcd3 | null,
    private readonly reader: DiscoveryReader,
    readonly xxh: Xxh3Hasher,
    private readonly streams: StreamServer,
    readonly tcp: TcpRequestClient,
    private readonly env: Env,
    private readonly owned: { nats: boolean; etcd: boolean },
  ) {}

  /**
   * Connects from env-style settings (NATS_SERVER, ETCD_ENDPOINTS, DYN_DISCOVERY_BACKEND, DYN_FILE_KV,
   * DYN_TCP_* and DYN_TCP_RESPONSE_STREAM_HOST/PORT) or reuses given connections. etcd is dialled
   * only for etcd discovery, NATS only when NATS_SERVER is set or a NATS instance is called.
   */
  static async connect(opts: ClientOptions = {}): Promise<DynamoClient> {
    const env = opts.env ?? {};
    const discovery = opts.discovery ?? (env.DYN_DISCOVERY_BACKEND === 'file' ? 'file' : 'etcd');
    const etcd = opts.etcd ?? (discovery === 'etcd' ? await (await import('../adapters/etcd-connection.js')).connectEtcd(env) : null);
    const nats = opts.nats ?? (env.NATS_SERVER ? await (await import('../adapters/nats-connection.js')).connectNats(env) : null);
    const root = opts.fileRoot ?? fileKvRoot(env);
    const reader = etcd ? etcdReader(etcd) : fileReader(root);
    const xxh = await createXxh3();
    const streams = await startStreamServer(xxh, env.DYN_TCP_RESPONSE_STREAM_HOST || '127.0.0.1', positive(env.DYN_TCP_RESPONSE_STREAM_PORT, 0));
    const tcp = new TcpRequestClient({
      poolSize: positive(env.DYN_TCP_POOL_SIZE, 100),
      channelBuffer: positive(env.DYN_TCP_CHANNEL_BUFFER, 1024),
      connectTimeoutMs: positive(env.DYN_TCP_CONNECT_TIMEOUT, 5) * 1000,
      requestTimeoutMs: positive(env.DYN_TCP_REQUEST_TIMEOUT, 5) * 1000,
    });
    return new DynamoClient(nats, etcd, reader, xxh, streams, tcp, env, { nats: !opts.nats, etcd: !opts.etcd });
  }

  /** The NATS connection (connected on first use from NATS_SERVER). */
  get nats(): NatsConnection {
    if (!this.natsConn) throw new Error('no NATS connection: set NATS_SERVER');
    return this.natsConn;
  }

  get etcd(): Etcd3 {
    if (!this.etcdClient) throw new Error('no etcd client: this client reads file discovery');
    return this.etcdClient;
  }

  private async natsConnection(): Promise<NatsConnection> {
    if (this.natsConn) return this.natsConn;
    this.natsConnecting ??= import('../adapters/nats-connection.js').then((c) => c.connectNats(this.env));
    this.natsConn = await this.natsConnecting;
    return this.natsConn;
  }

  /** Instances registered for an endpoint, as the frontend's watcher sees them (unparseable records skipped). */
  async instances(ep: EndpointId): Promise<Instance[]> {
    const out: Instance[] = [];
    for (const [key, text] of await this.reader.list(`${instancePrefix(ep)}/`)) {
      const inst = parseInstance(ep, key, text);
      if (inst) out.push(inst);
    }
    return out.sort((a, b) => (a.instanceId < b.instanceId ? -1 : a.instanceId > b.instanceId ? 1 : 0));
  }

  /** An instance's model card (1.x records unwrapped), or null when it has none. */
  async card(ep: EndpointId, instanceId: bigint): Promise<Record<string, JsonValue> | null> {
    const key = cardKey(ep, instanceId);
    const text = (await this.reader.list(key)).get(key);
    if (text === undefined) return null;
    const record = parseJson(text) as Record<string, JsonValue>;
    const card = record.type === 'Model' ? record.card_json : record;
    return card && typeof card === 'object' && !Array.isArray(card) ? (card as Record<string, JsonValue>) : null;
  }

  /** Waits, up to a deadline, until at least `count` instances are registered. */
  async waitForInstances(ep: EndpointId, count: number, timeoutMs = 10_000): Promise<Instance[]> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const found = await this.instances(ep);
      if (found.length >= count) return found;
      if (performance.now() > deadline) throw new Error(`expected ${count} instance(s) of ${ep.namespace}.${ep.component}.${ep.endpoint}, found ${found.length}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /** Sends one generate request to an instance (or a 0.6.1 NATS subject) and returns its response stream. */
  async generate(target: Instance | string, req: GenerateRequest, opts: { requestId?: string } = {}): Promise<StreamHandle> {
    const requestId = opts.requestId ?? randomUUID();
    const stream = this.streams.register();
    const v1 = typeof target !== 'string' && target.tagged;
    const control = requestControlJson(requestId, this.streams.address, stream.subject, v1 ? 'json' : undefined);
    const frame = encodeTwoPartText(control, v1 ? preprocessedRequestJson1x(req) : preprocessedRequestJson(req), this.xxh);
    const sentAt = performance.now();
    const reply = await this.send(target, frame, requestId);
    if (reply.length !== 0) {
      stream.fail('worker rejected the request');
      throw new Error(`worker answered the request frame with ${reply.length} bytes: ${new TextDecoder().decode(reply).slice(0, 200)}`);
    }
    return { requestId, sentAt, stream };
  }

  /** Sends an arbitrary payload (for malformed-input tests); resolves with the reply (empty = ACK). */
  async sendRaw(target: Instance | string, payload: Uint8Array): Promise<Uint8Array> {
    return this.send(target, payload, randomUUID());
  }

  private async send(target: Instance | string, payload: Uint8Array, requestId: string): Promise<Uint8Array> {
    const transport: InstanceTransport = typeof target === 'string' ? { kind: 'nats', subject: target } : target.transport;
    if (transport.kind === 'tcp') {
      return this.tcp.send(transport.address, transport.path, { 'x-endpoint-path': transport.path, 'x-request-id': requestId }, payload);
    }
    const nats = await this.natsConnection();
    const { headers } = await import('nats');
    const h = headers();
    h.set('x-request-id', requestId);
    return (await nats.request(transport.subject, payload, { timeout: 10_000, headers: h })).data;
  }

  /** A fresh stream registration plus its control header, for hand-built requests. */
  prepareStream(requestId = randomUUID(), payloadCodec?: 'json'): { stream: PendingStream; controlJson: string } {
    const stream = this.streams.register();
    return { stream, controlJson: requestControlJson(requestId, this.streams.address, stream.subject, payloadCodec) };
  }

  async close(): Promise<void> {
    this.tcp.close();
    await this.streams.close();
    if (this.owned.nats) await this.natsConn?.drain().catch(() => {});
    if (this.owned.etcd) this.etcdClient?.close();
  }
}
