// One typed configuration: defaults declared once, every flag and DYN_* variable validated in one place.
import { constants as fsConstants, accessSync, readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { ServerUrlError, parseEtcdEndpoints, parseNatsServers } from './adapters/server-urls.js';
import { KV_TRANSFER_DEFAULTS, type KvTransferSettings, type KvTransferTimingMode } from './core/kv-transfer.js';
import type { EngineConfig, PreemptionMode, WorkerType } from './core/types.js';
import { FaultPlanError, parseFaultPlan, type FaultPlan } from './faults/fault-plan.js';
import { ConfigError } from './config-error.js';
import { readModelInfo } from './model/model-info.js';
import { CARD_FILE_NAMES, parseRepoId, type CardFileKind } from './model/resolve-model.js';
import { TRACE_FORMATS } from './replay/trace-formats.js';
import { autoStaggerDelayS } from './worker-launch.js';

export { ConfigError };

/** Engine-flag defaults, identical to Dynamo's MockEngineArgs. */
export const ENGINE_DEFAULTS = {
  numGpuBlocks: 16384,
  blockSize: 64,
  maxNumSeqs: 256,
  maxNumBatchedTokens: 8192,
  enablePrefixCaching: true,
  enableChunkedPrefill: true,
  watermark: 0.01,
  preemptionMode: 'lifo' as PreemptionMode,
  speedupRatio: 1.0,
  decodeSpeedupRatio: 1.0,
  /** --latency-jitter: coefficient of variation of the per-pass duration factor; 0 = deterministic. */
  latencyJitter: 0,
  dataParallelSize: 1,
  maxModelLen: null as number | null,
  seed: 0,
} as const;

export const WORKER_DEFAULTS = {
  numWorkers: 1,
  /** --stagger-delay, seconds between worker launches: 0 = none, as in Dynamo's newest mocker (−1 = its auto rule). */
  staggerDelayS: 0,
  startupTimeS: 0,
  modelName: null as string | null,
  dynamoVersion: '0.6.1' as DynamoVersion,
  /** migration_limit in the card: 0, as Dynamo's mocker writes it. */
  migrationLimit: 0,
  namespace: 'dynamo',
  discoveryBackend: 'etcd' as DiscoveryBackend,
  /** DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT, seconds. */
  gracefulShutdownS: 30,
  /** DYN_NATS_STREAM_MAX_AGE, seconds. */
  natsStreamMaxAgeS: 3600,
  /** --on-lease-loss: what a worker does when its etcd lease is lost; Dynamo's workers exit. */
  onLeaseLoss: 'exit' as LeaseLossAction,
  /** DYN_MOCKER_KV_OUTBOX_EVENTS: 0.6.x KV events held for JetStream before the outbox gives up and republishes the cache. */
  kvOutboxEvents: 10_000,
} as const;

/** Each response stream's backpressure (this mocker's own variables). */
export const RESPONSE_STREAM_DEFAULTS = {
  /** DYN_MOCKER_STREAM_BUFFER_BYTES: unsent bytes a response stream may hold before its request pauses. */
  bufferBytes: 1024 * 1024,
  /** DYN_MOCKER_STREAM_STALL_TIMEOUT, seconds a request may stay paused on a congested stream before it is cancelled. */
  stallTimeoutS: 60,
} as const;

/** DYN_MOCKER_STREAM_BUFFER_BYTES's range: at least one 64 KiB chunk of coalesced frames (see call-home-stream.ts). */
export const RESPONSE_STREAM_BUFFER_RANGE = { min: 64 * 1024, max: 1024 * 1024 * 1024 } as const;

/** The system status server's defaults (Dynamo's runtime config). */
export const SYSTEM_SERVER_DEFAULTS = {
  host: '0.0.0.0',
  /** 0.6.x only: the port DYN_SYSTEM_ENABLED alone turns on (Dynamo's old code default). */
  legacyPort: 9090,
  healthPath: '/health',
  livePath: '/live',
  startingStatus: 'notready' as 'ready' | 'notready',
} as const;

/** The TCP request plane's worker-side defaults (Dynamo's DYN_TCP_* code defaults). */
export const TCP_SERVER_DEFAULTS = {
  /** DYN_TCP_RPC_PORT: 0 = OS-assigned. */
  port: 0,
  /** DYN_TCP_MAX_MESSAGE_SIZE: the largest request frame, bytes. */
  maxMessageBytes: 32 * 1024 * 1024,
  /** DYN_TCP_SHRINK_MESSAGE_SIZE: a read buffer grown past this is released after the frame. */
  shrinkMessageBytes: 8 * 1024 * 1024,
  /** DYN_TCP_WORKER_POOL_SIZE: requests handled at once per process (Dynamo ≥ 1.2 default). */
  workerPoolSize: 10_000,
  /** DYN_TCP_WORK_QUEUE_SIZE: requests waiting for a handler beyond that (Dynamo ≥ 1.2 default). */
  workQueueSize: 40_000,
} as const;

/** Disaggregated serving (Dynamo's mocker flags and MockEngineArgs defaults). */
export const DISAGG_DEFAULTS = {
  workerType: 'aggregated' as WorkerType,
  kvTransfer: KV_TRANSFER_DEFAULTS,
  /** --kv-cache-dtype: "auto" takes the model config's dtype. */
  kvCacheDtype: 'auto',
  /** handoff_session_timeout_ms: how long a bootstrap session may take after rendezvous. */
  handoffSessionTimeoutMs: 300_000,
  /** How long the first side of a bootstrap session waits for the other (Dynamo's RENDEZVOUS_TIMEOUT). */
  rendezvousTimeoutMs: 30_000,
} as const;

/** --kv-cache-dtype values (Dynamo's choices plus the plain float names). */
export const KV_CACHE_DTYPES = ['auto', 'bfloat16', 'float16', 'float32', 'bf16', 'fp16', 'fp32', 'fp8', 'fp8_ds_mla', 'fp8_e4m3', 'fp8_e5m2', 'fp8_inc'] as const;

export const REPLAY_DEFAULTS = {
  traceBlockSize: 512,
  arrivalSpeedup: 1.0,
  concurrency: null as number | null,
  /** --prefill-workers / --decode-workers: null (both) = one aggregated worker. */
  prefillWorkers: null as number | null,
  decodeWorkers: null as number | null,
  /** --num-workers: aggregated workers, each its own engine (KV pool and DP ranks). */
  numWorkers: 1,
  router: 'round-robin' as ReplayRouter,
  /** --kv-overlap-score-weight: Dynamo's (deprecated) weight, now its prefill_load_scale. */
  kvOverlapScoreWeight: 1.0,
  /** --router-temperature: 0 = argmin; above 0 samples softmax(−logit / (spread × temperature)). */
  routerTemperature: 0.0,
} as const;

export type ReplayRouter = 'round-robin' | 'random' | 'least-loaded' | 'kv';
export const REPLAY_ROUTERS: readonly ReplayRouter[] = ['round-robin', 'random', 'least-loaded', 'kv'];

/** Upper bound for --prefill-workers and --decode-workers (each worker is a whole engine in memory). */
const MAX_REPLAY_POOL = 4096;

export type DynamoVersion = '0.6.0' | '0.6.1' | '1.4';
export const DYNAMO_VERSIONS: readonly DynamoVersion[] = ['0.6.1', '0.6.0', '1.4'];
export type DiscoveryBackend = 'etcd' | 'file';
/** exit: stop (exit code 1), as Dynamo does; reregister: register again with a new lease once etcd answers. */
export type LeaseLossAction = 'exit' | 'reregister';
export const LEASE_LOSS_ACTIONS: readonly LeaseLossAction[] = ['exit', 'reregister'];
export type RequestPlaneKind = 'nats' | 'tcp';
export type EventPlaneKind = 'nats' | 'zmq';

/** What each protocol generation can speak, and what it defaults to (Dynamo's own defaults). */
export interface GenerationPlanes {
  discovery: readonly DiscoveryBackend[];
  requestPlanes: readonly RequestPlaneKind[];
  defaultRequestPlane: RequestPlaneKind;
  eventPlanes: readonly EventPlaneKind[];
  defaultEventPlane: EventPlaneKind;
}

export const GENERATION_PLANES: Readonly<Record<DynamoVersion, GenerationPlanes>> = {
  // 0.6.x: etcd, the NATS request plane and JetStream KV events are the only choices.
  '0.6.0': { discovery: ['etcd'], requestPlanes: ['nats'], defaultRequestPlane: 'nats', eventPlanes: ['nats'], defaultEventPlane: 'nats' },
  '0.6.1': { discovery: ['etcd'], requestPlanes: ['nats'], defaultRequestPlane: 'nats', eventPlanes: ['nats'], defaultEventPlane: 'nats' },
  // 1.4: TCP request plane by default (since 0.8), ZMQ event plane by default (since 1.3).
  '1.4': { discovery: ['etcd', 'file'], requestPlanes: ['tcp', 'nats'], defaultRequestPlane: 'tcp', eventPlanes: ['zmq', 'nats'], defaultEventPlane: 'zmq' },
};

/** Everything the engine (scheduler, pool, timing) of one worker needs. */
export interface EngineSettings extends EngineConfig {
  dataParallelSize: number;
  plannerProfileData: string | null;
  seed: number;
}

/** The KV transfer between a prefill and a decode worker, as configured (bytes per token may still be derived from the model). */
export interface KvTransferConfig extends KvTransferSettings {
  /** --kv-cache-dtype, used when --kv-bytes-per-token is not given. */
  cacheDtype: string;
}

/** Disaggregated prefill/decode serving. */
export interface DisaggSettings {
  workerType: WorkerType;
  /** --bootstrap-ports: per worker, the port of a prefill worker's bootstrap (DMHF) server; null = none. */
  bootstrapPorts: number[] | null;
  /** DYN_HTTP_RPC_HOST: the bootstrap host the prefill card advertises; null = the local IP. */
  bootstrapHost: string | null;
  kvTransfer: KvTransferConfig;
  handoffSessionTimeoutMs: number;
  rendezvousTimeoutMs: number;
}

export interface EndpointId {
  namespace: string;
  component: string;
  endpoint: string;
}

export type EndpointStatus = 'ready' | 'notready';

/** The system status server (/health, /live, /metrics). */
export interface SystemServerSettings {
  enabled: boolean;
  host: string;
  port: number;
  healthPath: string;
  livePath: string;
  startingStatus: EndpointStatus;
}

/** The worker side of the TCP request plane. */
export interface TcpServerSettings {
  /** DYN_TCP_RPC_HOST: the IP to bind and advertise; null = the primary local IP, as Dynamo picks it. */
  host: string | null;
  port: number;
  maxMessageBytes: number;
  shrinkMessageBytes: number;
  workerPoolSize: number;
  workQueueSize: number;
}

/** Backpressure on each response stream (DYN_MOCKER_STREAM_*). */
export interface ResponseStreamSettings {
  /** Unsent bytes above which the stream is congested and its request pauses. */
  bufferBytes: number;
  /** How long a request may stay paused before it is cancelled (its blocks freed), ms. */
  stallTimeoutMs: number;
}

export interface DiscoverySettings {
  backend: DiscoveryBackend;
  /** DYN_FILE_KV: root of the file backend. */
  fileRoot: string;
}

export interface WorkerConfig {
  engine: EngineSettings;
  disagg: DisaggSettings;
  /** --faults: the fault plan to start with (null: none; the control API may set one later). */
  faults: FaultPlan | null;
  /** --enable-control-api, and DYN_MOCKER_CONTROL_TOKEN (null: no auth). */
  controlApi: { enabled: boolean; token: string | null };
  /** --migration-limit: written into the card, so a frontend migrates a cut stream that often. */
  migrationLimit: number;
  modelPath: string;
  modelName: string;
  endpoint: EndpointId;
  numWorkers: number;
  /** --stagger-delay with auto (−1) resolved: seconds between two worker launches; 0 = none. */
  staggerDelayS: number;
  startupTimeS: number;
  dynamoVersion: DynamoVersion;
  discovery: DiscoverySettings;
  requestPlane: RequestPlaneKind;
  /** Only used with the TCP request plane. */
  tcp: TcpServerSettings;
  eventPlane: EventPlaneKind;
  /** DYN_EVENT_PLANE_HOST: the IP ZMQ publishers bind and advertise; null = all interfaces, advertised as the local IP. */
  eventPlaneHost: string | null;
  /** Publish KV events (with prefix caching on); --no-kv-events turns them off and says so in the card. */
  kvEvents: boolean;
  /** --zmq-kv-events-ports: per worker, the base port of vLLM's own KV-event PUB (rank r on base + r). */
  zmqKvEventsPorts: number[] | null;
  /** --zmq-replay-ports: per worker, the base port of the replay ROUTER. */
  zmqReplayPorts: number[] | null;
  system: SystemServerSettings;
  gracefulShutdownMs: number;
  /** --on-lease-loss. */
  onLeaseLoss: LeaseLossAction;
  /** DYN_MOCKER_STREAM_BUFFER_BYTES and DYN_MOCKER_STREAM_STALL_TIMEOUT. */
  responseStream: ResponseStreamSettings;
  natsStreamMaxAgeS: number;
  /** DYN_MOCKER_KV_OUTBOX_EVENTS. */
  kvOutboxEvents: number;
  /** DYN_LOG's level. */
  logLevel: string;
  /** What the Endpoint record says this worker runs on (Dynamo's rule, from the CUDA variables). */
  deviceType: 'cpu' | 'cuda';
  /** 1.4: serve card files over the system server (DYN_SELF_HOST_METADATA, default on). */
  selfHostMetadata: boolean;
  /** Lines to log at start (deprecated variables and the like). */
  warnings: string[];
  /** The environment, for the adapters that own their variables (NATS_*, ETCD_*, HF_*). */
  env: Env;
}

export interface ReplayConfig {
  engine: EngineSettings;
  kvTransfer: KvTransferConfig;
  modelPath: string | null;
  /** --trace (null with --synthetic). */
  tracePath: string | null;
  /** --trace-format; null = detect from the file. */
  traceFormat: string | null;
  /** --synthetic SPEC (instead of --trace). */
  synthetic: string | null;
  /** --trace-block-size; null = the format's own (512 for Mooncake-like traces, 16 for Bailian). */
  traceBlockSize: number | null;
  arrivalSpeedup: number;
  concurrency: number | null;
  /** Disaggregated replay: prefill and decode pool sizes, both set or both null (aggregated). */
  prefillWorkers: number | null;
  decodeWorkers: number | null;
  numWorkers: number;
  router: ReplayRouter;
  kvOverlapScoreWeight: number;
  routerTemperature: number;
  outputPath: string | null;
  summaryPath: string | null;
  /** --report: a self-contained HTML report. */
  reportPath: string | null;
  progress: boolean;
}

/** Raw option values as commander hands them over (strings, booleans or undefined). */
export type RawOptions = Record<string, unknown>;

export type Env = Record<string, string | undefined>;

/** Maps Dynamo's MockEngineArgs JSON keys to our option names. */
const EXTRA_ENGINE_ARG_KEYS: Record<string, string> = {
  num_gpu_blocks: 'numGpuBlocksOverride',
  block_size: 'blockSize',
  max_num_seqs: 'maxNumSeqs',
  max_num_batched_tokens: 'maxNumBatchedTokens',
  enable_prefix_caching: 'enablePrefixCaching',
  enable_chunked_prefill: 'enableChunkedPrefill',
  watermark: 'watermark',
  speedup_ratio: 'speedupRatio',
  decode_speedup_ratio: 'decodeSpeedupRatio',
  latency_jitter: 'latencyJitter',
  dp_size: 'dataParallelSize',
  data_parallel_size: 'dataParallelSize',
  startup_time: 'startupTime',
  planner_profile_data: 'plannerProfileData',
  preemption_mode: 'preemptionMode',
  max_model_len: 'maxModelLen',
  kv_transfer_bandwidth: 'kvTransferBandwidth',
  kv_bytes_per_token: 'kvBytesPerToken',
  kv_transfer_timing_mode: 'kvTransferTimingMode',
  handoff_session_timeout_ms: 'handoffSessionTimeoutMs',
};

/** The kebab-case flag that sets a given option, for error messages. */
const FLAG_OF: Record<string, string> = {
  numGpuBlocksOverride: '--num-gpu-blocks-override',
  blockSize: '--block-size',
  maxNumSeqs: '--max-num-seqs',
  maxNumBatchedTokens: '--max-num-batched-tokens',
  enablePrefixCaching: '--enable-prefix-caching',
  enableChunkedPrefill: '--enable-chunked-prefill',
  watermark: '--watermark',
  preemptionMode: '--preemption-mode',
  speedupRatio: '--speedup-ratio',
  decodeSpeedupRatio: '--decode-speedup-ratio',
  latencyJitter: '--latency-jitter',
  dataParallelSize: '--data-parallel-size',
  startupTime: '--startup-time',
  plannerProfileData: '--planner-profile-data',
  maxModelLen: '--max-model-len',
  seed: '--seed',
  kvTransferBandwidth: '--kv-transfer-bandwidth',
  kvBytesPerToken: '--kv-bytes-per-token',
  kvTransferTimingMode: '--kv-transfer-timing-mode',
  bootstrapPorts: '--bootstrap-ports',
};

function flagOf(key: string): string {
  return FLAG_OF[key] ?? `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

function asString(flag: string, value: unknown): string {
  if (typeof value === 'string') return value.trim();
  if (typeof value === 'number' || typeof value === 'bigint') return String(value);
  throw new ConfigError(flag, `expected a value, got ${JSON.stringify(value)}`);
}

export function parseInteger(flag: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const text = asString(flag, value);
  if (!/^[+-]?\d+$/.test(text)) throw new ConfigError(flag, `must be an integer, got '${text}'`);
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new ConfigError(flag, `must be an integer in [${min}, ${max === Number.MAX_SAFE_INTEGER ? '∞' : max}], got '${text}'`);
  }
  return n;
}

export function parseNumber(flag: string, value: unknown, opts: { min?: number; exclusiveMin?: number; max?: number; allowInf?: boolean }): number {
  const text = asString(flag, value).toLowerCase();
  let n: number;
  if (text === 'inf' || text === 'infinity' || text === '+inf') n = Infinity;
  else if (text !== '' && Number.isFinite(Number(text))) n = Number(text);
  else throw new ConfigError(flag, `must be a number, got '${text}'`);
  if (n === Infinity && !opts.allowInf) throw new ConfigError(flag, 'must be finite');
  if (opts.min !== undefined && n < opts.min) throw new ConfigError(flag, `must be ≥ ${opts.min}, got '${text}'`);
  if (opts.exclusiveMin !== undefined && n <= opts.exclusiveMin) throw new ConfigError(flag, `must be > ${opts.exclusiveMin}, got '${text}'`);
  if (opts.max !== undefined && n > opts.max) throw new ConfigError(flag, `must be ≤ ${opts.max}, got '${text}'`);
  return n;
}

const TRUTHY = new Set(['1', 'true', 'yes', 'on']);
const FALSY = new Set(['0', 'false', 'no', 'off']);

/** A boolean as Dynamo's parse_bool_opt reads it; anything else is an error naming the flag or variable. */
function parseBool(flag: string, value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  const text = asString(flag, value);
  const lower = text.toLowerCase();
  if (TRUTHY.has(lower)) return true;
  if (FALSY.has(lower)) return false;
  throw new ConfigError(flag, `must be a boolean (true/false, 1/0, yes/no, on/off), got '${text}'`);
}

function readableFile(flag: string, path: string): string {
  try {
    readFileSync(path, { flag: 'r' }).subarray(0, 0);
  } catch (err) {
    throw new ConfigError(flag, `cannot read '${path}': ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return path;
}

/** The JSON in the file a flag names; an unreadable file or bad JSON is an error naming the flag. */
function readJsonFile(flag: string, path: string): unknown {
  readableFile(flag, path);
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(flag, `'${path}' is not valid JSON: ${(err as Error).message}`);
  }
}

/** Reads --extra-engine-args: Dynamo's MockEngineArgs JSON; unknown keys are an error. */
function readExtraEngineArgs(path: string): RawOptions {
  const flag = '--extra-engine-args';
  const parsed = readJsonFile(flag, path);
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new ConfigError(flag, `'${path}' must contain a JSON object`);
  }
  const out: RawOptions = {};
  for (const [key, value] of Object.entries(parsed as Record<string, unknown>)) {
    const option = EXTRA_ENGINE_ARG_KEYS[key];
    if (!option) {
      throw new ConfigError(flag, `unknown key '${key}' in '${path}' (known: ${Object.keys(EXTRA_ENGINE_ARG_KEYS).join(', ')})`);
    }
    if (value === null) continue;
    out[option] = value;
  }
  return out;
}

/** Both spellings of a negatable flag on one command line are contradictory. */
function checkExclusive(argv: readonly string[]): void {
  for (const name of ['enable-prefix-caching', 'enable-chunked-prefill']) {
    const on = argv.some((a) => a === `--${name}`);
    const off = argv.some((a) => a === `--no-${name}`);
    if (on && off) throw new ConfigError(`--${name}`, `--${name} and --no-${name} are mutually exclusive`);
  }
}

/** Validates the engine flags (after applying --extra-engine-args over them). */
/** --extra-engine-args applied over the flags (its values win, as in Dynamo). */
function withExtraEngineArgs(rawFlags: RawOptions): RawOptions {
  const raw: RawOptions = { ...rawFlags };
  if (raw.extraEngineArgs !== undefined) Object.assign(raw, readExtraEngineArgs(asString('--extra-engine-args', raw.extraEngineArgs)));
  return raw;
}

/** The KV-transfer flags (worker and replay): bandwidth, bytes per token, dtype, timing mode. */
export function parseKvTransfer(rawFlags: RawOptions): KvTransferConfig {
  const raw = withExtraEngineArgs(rawFlags);
  const bandwidthGBps =
    raw.kvTransferBandwidth === undefined ? KV_TRANSFER_DEFAULTS.bandwidthGBps : parseNumber(flagOf('kvTransferBandwidth'), raw.kvTransferBandwidth, { min: 0 });
  const bytesPerToken = raw.kvBytesPerToken === undefined ? null : parseInteger(flagOf('kvBytesPerToken'), raw.kvBytesPerToken, 1);
  let timingMode: KvTransferTimingMode = KV_TRANSFER_DEFAULTS.timingMode;
  if (raw.kvTransferTimingMode !== undefined) {
    const m = asString(flagOf('kvTransferTimingMode'), raw.kvTransferTimingMode).toLowerCase();
    if (m !== 'full_prompt' && m !== 'destination_missing') {
      throw new ConfigError(flagOf('kvTransferTimingMode'), `must be 'full_prompt' or 'destination_missing', got '${m}'`);
    }
    timingMode = m;
  }
  let cacheDtype: string = DISAGG_DEFAULTS.kvCacheDtype;
  if (raw.kvCacheDtype !== undefined) {
    cacheDtype = asString('--kv-cache-dtype', raw.kvCacheDtype).toLowerCase();
    if (!(KV_CACHE_DTYPES as readonly string[]).includes(cacheDtype)) {
      throw new ConfigError('--kv-cache-dtype', `must be one of ${KV_CACHE_DTYPES.join(', ')}, got '${cacheDtype}'`);
    }
  }
  return { bandwidthGBps, bytesPerToken, timingMode, cacheDtype };
}

/** --disaggregation-mode, or its deprecated spellings (never both), and the bootstrap and handoff settings. */
function parseDisagg(rawFlags: RawOptions, env: Env, numWorkers: number, warnings: string[]): DisaggSettings {
  const raw = withExtraEngineArgs(rawFlags);
  const legacyPrefill = raw.isPrefillWorker === true;
  const legacyDecode = raw.isDecodeWorker === true;
  if (legacyPrefill && legacyDecode) {
    throw new ConfigError('--is-prefill-worker', 'cannot be combined with --is-decode-worker: a worker is prefill, decode or aggregated (neither flag)');
  }
  let workerType: WorkerType = DISAGG_DEFAULTS.workerType;
  if (raw.disaggregationMode !== undefined) {
    if (legacyPrefill || legacyDecode) {
      throw new ConfigError(legacyPrefill ? '--is-prefill-worker' : '--is-decode-worker', 'cannot be combined with --disaggregation-mode; use only --disaggregation-mode');
    }
    const mode = asString('--disaggregation-mode', raw.disaggregationMode).toLowerCase();
    if (mode !== 'agg' && mode !== 'prefill' && mode !== 'decode') {
      throw new ConfigError('--disaggregation-mode', `must be one of agg, prefill, decode, got '${mode}'`);
    }
    workerType = mode === 'agg' ? 'aggregated' : mode;
  } else if (legacyPrefill || legacyDecode) {
    const mode = legacyPrefill ? 'prefill' : 'decode';
    warnings.push(`--is-${mode}-worker is deprecated, use --disaggregation-mode=${mode}`);
    workerType = mode;
  }
  // 0 asks for any free port (the card advertises the one bound).
  const bootstrapPorts = portList(raw, 'bootstrapPorts', numWorkers, 0);
  if (bootstrapPorts && workerType !== 'prefill') {
    warnings.push('--bootstrap-ports is only used by prefill workers (decode workers connect to the port a request names)');
  }
  const handoffSessionTimeoutMs =
    raw.handoffSessionTimeoutMs === undefined ? DISAGG_DEFAULTS.handoffSessionTimeoutMs : parseInteger('handoff_session_timeout_ms', raw.handoffSessionTimeoutMs, 1);
  return {
    workerType,
    bootstrapPorts: workerType === 'prefill' ? bootstrapPorts : null,
    bootstrapHost: envIp(env, 'DYN_HTTP_RPC_HOST'),
    kvTransfer: parseKvTransfer(rawFlags),
    handoffSessionTimeoutMs,
    // A short session timeout (extra-engine-args) shortens the rendezvous too.
    rendezvousTimeoutMs: Math.min(DISAGG_DEFAULTS.rendezvousTimeoutMs, handoffSessionTimeoutMs),
  };
}

export function parseEngineSettings(rawFlags: RawOptions, argv: readonly string[]): EngineSettings & { startupTimeS: number } {
  checkExclusive(argv);
  const raw = withExtraEngineArgs(rawFlags);
  const pick = <T>(key: string, parse: (flag: string, v: unknown) => T, fallback: T): T =>
    raw[key] === undefined ? fallback : parse(flagOf(key), raw[key]);

  const blockSize = pick('blockSize', (f, v) => parseInteger(f, v, 1, 1 << 20), ENGINE_DEFAULTS.blockSize);
  const numGpuBlocks = pick('numGpuBlocksOverride', (f, v) => parseInteger(f, v, 1, 1 << 30), ENGINE_DEFAULTS.numGpuBlocks);
  const maxNumSeqs = pick('maxNumSeqs', (f, v) => parseInteger(f, v, 1, 1 << 20), ENGINE_DEFAULTS.maxNumSeqs);
  const maxNumBatchedTokens = pick<number | null>(
    'maxNumBatchedTokens',
    (f, v) => (typeof v === 'string' && ['none', 'unlimited'].includes(v.toLowerCase()) ? null : parseInteger(f, v, 1)),
    ENGINE_DEFAULTS.maxNumBatchedTokens,
  );
  const preemptionMode = pick<PreemptionMode>(
    'preemptionMode',
    (f, v) => {
      const s = asString(f, v).toLowerCase();
      if (s !== 'lifo' && s !== 'fifo') throw new ConfigError(f, `must be 'lifo' or 'fifo', got '${s}'`);
      return s;
    },
    ENGINE_DEFAULTS.preemptionMode,
  );
  // Dynamo's help: "Use 0 for infinite speedup (no simulation delays)".
  const speedupRatio = pick('speedupRatio', (f, v) => {
    const n = parseNumber(f, v, { min: 0, allowInf: true });
    return n === 0 ? Infinity : n;
  }, ENGINE_DEFAULTS.speedupRatio);
  const decodeSpeedupRatio = pick('decodeSpeedupRatio', (f, v) => parseNumber(f, v, { exclusiveMin: 0, allowInf: true }), ENGINE_DEFAULTS.decodeSpeedupRatio);
  const latencyJitter = pick<number>('latencyJitter', (f, v) => parseNumber(f, v, { min: 0, max: 1 }), ENGINE_DEFAULTS.latencyJitter);
  const watermark = pick('watermark', (f, v) => parseNumber(f, v, { min: 0, max: 0.99 }), ENGINE_DEFAULTS.watermark);
  const dataParallelSize = pick('dataParallelSize', (f, v) => parseInteger(f, v, 1, 1024), ENGINE_DEFAULTS.dataParallelSize);
  const maxModelLen = pick<number | null>('maxModelLen', (f, v) => parseInteger(f, v, 1), ENGINE_DEFAULTS.maxModelLen);
  const seed = pick('seed', (f, v) => parseInteger(f, v, 0, 2 ** 32 - 1), ENGINE_DEFAULTS.seed);
  const startupTimeS = pick('startupTime', (f, v) => parseNumber(f, v, { min: 0 }), WORKER_DEFAULTS.startupTimeS);
  const plannerProfileData = pick<string | null>('plannerProfileData', (f, v) => readableFile(f, asString(f, v)), null);
  const enablePrefixCaching = pick('enablePrefixCaching', parseBool, ENGINE_DEFAULTS.enablePrefixCaching);
  const enableChunkedPrefill = pick('enableChunkedPrefill', parseBool, ENGINE_DEFAULTS.enableChunkedPrefill);

  if (!enableChunkedPrefill && maxNumBatchedTokens !== null && maxModelLen !== null && maxModelLen > maxNumBatchedTokens) {
    throw new ConfigError('--max-num-batched-tokens', `must be ≥ --max-model-len (${maxModelLen}) when chunked prefill is disabled`);
  }
  return {
    numGpuBlocks,
    blockSize,
    maxNumSeqs,
    maxNumBatchedTokens,
    enablePrefixCaching,
    enableChunkedPrefill,
    watermark,
    preemptionMode,
    speedupRatio,
    decodeSpeedupRatio,
    latencyJitter,
    maxModelLen,
    dataParallelSize,
    plannerProfileData,
    seed,
    startupTimeS,
  };
}

const NAME_RE = /^[a-z0-9_-]+$/;

/** Parses `dyn://namespace.component.endpoint`. */
export function parseEndpoint(text: string): EndpointId {
  const flag = '--endpoint';
  const m = /^dyn:\/\/([^.]+)\.([^.]+)\.([^.]+)$/.exec(text.trim());
  if (!m) throw new ConfigError(flag, `must look like dyn://namespace.component.endpoint, got '${text}'`);
  const [, namespace, component, endpoint] = m;
  for (const part of [namespace, component, endpoint]) {
    if (!NAME_RE.test(part)) throw new ConfigError(flag, `'${part}' must match ^[a-z0-9_-]+$`);
  }
  return { namespace, component, endpoint };
}

/** `dyn://{ns}.backend.generate`, or `dyn://{ns}.prefill.generate` for a prefill worker (Dynamo's defaults). */
export function defaultEndpoint(env: Env, workerType: WorkerType = 'aggregated'): string {
  const component = workerType === 'prefill' ? 'prefill' : 'backend';
  const namespace = env.DYN_NAMESPACE || WORKER_DEFAULTS.namespace;
  if (!NAME_RE.test(namespace)) throw new ConfigError('DYN_NAMESPACE', `must match ^[a-z0-9_-]+$, got '${namespace}'`);
  return `dyn://${namespace}.${component}.generate`;
}

/**
 * --model-path as far as it names a local path: an existing directory must hold a readable
 * config.json, and its JSON files (config, tokenizer, tokenizer_config, generation_config) must parse;
 * anything else that exists (a file) is refused; a path that does not exist must be a HuggingFace repo
 * id (looked up in the HF cache, then on the hub, when the worker starts).
 */
export function checkModelPath(modelPath: string): void {
  const flag = '--model-path';
  let isDirectory: boolean;
  try {
    isDirectory = statSync(modelPath).isDirectory();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new ConfigError(flag, `cannot read '${modelPath}': ${code ?? (err as Error).message}`);
    if (parseRepoId(modelPath) !== null) return;
    throw new ConfigError(flag, `'${modelPath}' does not exist (and is not a HuggingFace repo id)`);
  }
  if (!isDirectory) throw new ConfigError(flag, `'${modelPath}' is a file, not a model directory (one holding config.json)`);
  const config = join(modelPath, 'config.json');
  try {
    if (!statSync(config).isFile()) throw new Error('not a file');
    accessSync(config, fsConstants.R_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES') throw new ConfigError(flag, `cannot read '${config}': EACCES`);
    throw new ConfigError(flag, `directory '${modelPath}' has no config.json (a model directory holds config.json, and usually tokenizer.json, tokenizer_config.json, generation_config.json)`);
  }
  // Read now, so that a corrupt file is one line before anything starts (the worker reads them again).
  const files = new Map<CardFileKind, string>();
  for (const [kind, name] of CARD_FILE_NAMES) files.set(kind, join(modelPath, name));
  readModelInfo({ dir: modelPath, files, source: 'local' });
}

// ---------------------------------------------------------------------------------------------
// Environment: every DYN_* variable the worker reads, validated before anything connects.

const nonEmpty = (v: string | undefined): string | undefined => {
  const t = v?.trim();
  return t ? t : undefined;
};

function envInteger(env: Env, name: string, min: number, max: number): number | undefined {
  const raw = nonEmpty(env[name]);
  return raw === undefined ? undefined : parseInteger(name, raw, min, max);
}

function envSeconds(env: Env, name: string, opts: { exclusiveMin?: number; min?: number; max?: number }): number | undefined {
  const raw = nonEmpty(env[name]);
  return raw === undefined ? undefined : parseNumber(name, raw, opts);
}

function routePath(env: Env, name: string, fallback: string): string {
  const p = nonEmpty(env[name]) ?? fallback;
  if (!p.startsWith('/')) throw new ConfigError(name, `must be a path starting with '/', got '${p}'`);
  return p;
}

/**
 * The system status server. Dynamo ≥ 0.7: `DYN_SYSTEM_PORT` alone switches it on (−1 or unset =
 * off, 0 = random port) and `DYN_SYSTEM_ENABLED` only earns a deprecation warning. Dynamo 0.6.x:
 * `DYN_SYSTEM_ENABLED` switches it on at port 9090, an explicit `DYN_SYSTEM_PORT=-1` wins over it.
 */
export function systemServerSettings(env: Env, version: DynamoVersion = WORKER_DEFAULTS.dynamoVersion, warnings: string[] = []): SystemServerSettings {
  const legacy = version !== '1.4';
  let enabled = legacy && envBool(env, 'DYN_SYSTEM_ENABLED', false);
  if (!legacy && nonEmpty(env.DYN_SYSTEM_ENABLED) !== undefined) {
    warnings.push('DYN_SYSTEM_ENABLED is deprecated and ignored (Dynamo ≥ 0.7): the system server is on iff DYN_SYSTEM_PORT ≥ 0');
  }
  let port: number = SYSTEM_SERVER_DEFAULTS.legacyPort;
  const rawPort = nonEmpty(env.DYN_SYSTEM_PORT);
  if (rawPort !== undefined) {
    const n = /^[+-]?\d+$/.test(rawPort) ? Number(rawPort) : NaN;
    if (!Number.isInteger(n) || n < -1 || n > 65535) {
      throw new ConfigError('DYN_SYSTEM_PORT', `must be a port number 0-65535 (0 = random, -1 = off), got '${env.DYN_SYSTEM_PORT}'`);
    }
    if (n === -1) enabled = false;
    else {
      port = n;
      enabled = true;
    }
  }
  const starting = (nonEmpty(env.DYN_SYSTEM_STARTING_HEALTH_STATUS) ?? SYSTEM_SERVER_DEFAULTS.startingStatus).toLowerCase();
  if (starting !== 'ready' && starting !== 'notready') {
    throw new ConfigError('DYN_SYSTEM_STARTING_HEALTH_STATUS', `must be 'ready' or 'notready', got '${env.DYN_SYSTEM_STARTING_HEALTH_STATUS}'`);
  }
  return {
    enabled,
    host: nonEmpty(env.DYN_SYSTEM_HOST) ?? SYSTEM_SERVER_DEFAULTS.host,
    port,
    healthPath: routePath(env, 'DYN_SYSTEM_HEALTH_PATH', SYSTEM_SERVER_DEFAULTS.healthPath),
    livePath: routePath(env, 'DYN_SYSTEM_LIVE_PATH', SYSTEM_SERVER_DEFAULTS.livePath),
    startingStatus: starting,
  };
}

/** DYN_TCP_RPC_HOST / DYN_TCP_RPC_PORT and the worker-side DYN_TCP_* limits. */
export function tcpServerSettings(env: Env): TcpServerSettings {
  return {
    host: envIp(env, 'DYN_TCP_RPC_HOST'),
    port: envInteger(env, 'DYN_TCP_RPC_PORT', 0, 65535) ?? TCP_SERVER_DEFAULTS.port,
    maxMessageBytes: envInteger(env, 'DYN_TCP_MAX_MESSAGE_SIZE', 64, 2 ** 32 - 1) ?? TCP_SERVER_DEFAULTS.maxMessageBytes,
    shrinkMessageBytes: envInteger(env, 'DYN_TCP_SHRINK_MESSAGE_SIZE', 1, 2 ** 32 - 1) ?? TCP_SERVER_DEFAULTS.shrinkMessageBytes,
    workerPoolSize: envInteger(env, 'DYN_TCP_WORKER_POOL_SIZE', 1, 1 << 24) ?? TCP_SERVER_DEFAULTS.workerPoolSize,
    workQueueSize: envInteger(env, 'DYN_TCP_WORK_QUEUE_SIZE', 0, 1 << 24) ?? TCP_SERVER_DEFAULTS.workQueueSize,
  };
}

/** DYN_MOCKER_STREAM_BUFFER_BYTES / DYN_MOCKER_STREAM_STALL_TIMEOUT (a timer cannot wait past 2^31 − 1 ms). */
export function responseStreamSettings(env: Env): ResponseStreamSettings {
  const { min, max } = RESPONSE_STREAM_BUFFER_RANGE;
  const bufferBytes = envInteger(env, 'DYN_MOCKER_STREAM_BUFFER_BYTES', min, max) ?? RESPONSE_STREAM_DEFAULTS.bufferBytes;
  const stallS = envSeconds(env, 'DYN_MOCKER_STREAM_STALL_TIMEOUT', { exclusiveMin: 0, max: Math.floor((2 ** 31 - 1) / 1000) }) ?? RESPONSE_STREAM_DEFAULTS.stallTimeoutS;
  return { bufferBytes, stallTimeoutMs: stallS * 1000 };
}

/** A choice given by flag, else by variable, else the default; names its source when refused. */
function choose<T extends string>(
  raw: RawOptions,
  key: string,
  env: Env,
  variable: string,
  known: readonly string[],
  fallback: T,
): { value: T; source: string } {
  const fromFlag = raw[key] !== undefined ? asString(flagOf(key), raw[key]).toLowerCase() : undefined;
  const fromEnv = nonEmpty(env[variable])?.toLowerCase();
  const source = fromFlag !== undefined ? flagOf(key) : fromEnv !== undefined ? variable : null;
  const value = fromFlag ?? fromEnv ?? fallback;
  if (source !== null && !known.includes(value)) {
    throw new ConfigError(source, `must be one of ${known.join(', ')}, got '${value}'`);
  }
  return { value: value as T, source: source ?? 'default' };
}

/** DYN_FILE_KV, else `$TMPDIR/dynamo_store_kv`: the root of file discovery (worker and client alike). */
export function fileKvRoot(env: Env): string {
  return nonEmpty(env.DYN_FILE_KV) ?? `${(nonEmpty(env.TMPDIR) ?? '/tmp').replace(/\/+$/, '')}/dynamo_store_kv`;
}

/** The file-discovery root, or the nearest of its parents that exists, must be a directory the worker can write to. */
function checkFileKvRoot(root: string): void {
  const name = 'DYN_FILE_KV';
  for (let dir = resolve(root); ; ) {
    let isDirectory: boolean;
    try {
      isDirectory = statSync(dir).isDirectory();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if ((code === 'ENOENT' || code === 'ENOTDIR') && dirname(dir) !== dir) {
        dir = dirname(dir);
        continue;
      }
      throw new ConfigError(name, `cannot use '${root}' for file discovery: ${code ?? (err as Error).message}`);
    }
    if (!isDirectory) throw new ConfigError(name, `cannot use '${root}' for file discovery: '${dir}' is not a directory`);
    try {
      accessSync(dir, fsConstants.W_OK | fsConstants.X_OK);
    } catch {
      throw new ConfigError(name, `cannot use '${root}' for file discovery: '${dir}' is not writable`);
    }
    return;
  }
}

/** The URL lists and auth files of the servers the worker will dial: bad ones exit 2 like any other variable. */
function checkServerSettings(env: Env, needsNats: boolean, needsEtcd: boolean): void {
  try {
    if (needsNats) parseNatsServers(env.NATS_SERVER);
    if (needsEtcd) parseEtcdEndpoints(env.ETCD_ENDPOINTS);
  } catch (err) {
    if (err instanceof ServerUrlError) throw new ConfigError(err.variable, err.message);
    throw err;
  }
  // The credentials file is used only when no auth variable before it in Dynamo's order is set.
  const credentials = nonEmpty(env.NATS_AUTH_CREDENTIALS_FILE);
  const earlierAuth = (env.NATS_AUTH_USERNAME && env.NATS_AUTH_PASSWORD) || env.NATS_AUTH_TOKEN || env.NATS_AUTH_NKEY;
  if (needsNats && credentials !== undefined && !earlierAuth) readableFile('NATS_AUTH_CREDENTIALS_FILE', credentials);
}

/** Discovery backend, request plane and event plane, checked against what the generation can do. */
function planeSettings(raw: RawOptions, env: Env, version: DynamoVersion): Pick<WorkerConfig, 'discovery' | 'requestPlane' | 'eventPlane'> {
  const g = GENERATION_PLANES[version];
  const discovery = choose<DiscoveryBackend>(raw, 'discoveryBackend', env, 'DYN_DISCOVERY_BACKEND', ['etcd', 'file', 'kubernetes', 'mem'], WORKER_DEFAULTS.discoveryBackend);
  if ((discovery.value as string) === 'kubernetes') {
    throw new ConfigError(discovery.source, "'kubernetes' is not supported: it needs Dynamo's operator (DynamoWorkerMetadata resources); use etcd or file");
  }
  if ((discovery.value as string) === 'mem') {
    throw new ConfigError(discovery.source, "'mem' is not supported: an in-memory store is private to one Dynamo process, so no frontend could see this worker; use etcd or file");
  }
  const requestPlane = choose<RequestPlaneKind>(raw, 'requestPlane', env, 'DYN_REQUEST_PLANE', ['tcp', 'nats'], g.defaultRequestPlane);
  const eventPlane = choose<EventPlaneKind>(raw, 'eventPlane', env, 'DYN_EVENT_PLANE', ['nats', 'zmq'], g.defaultEventPlane);
  const refuse = (source: string, what: string, allowed: readonly string[]) =>
    new ConfigError(source, `'${what}' is not spoken by --dynamo-version ${version} (it has ${allowed.join(', ')} only; use --dynamo-version 1.4)`);
  if (!g.discovery.includes(discovery.value)) throw refuse(discovery.source, discovery.value, g.discovery);
  if (!g.requestPlanes.includes(requestPlane.value)) throw refuse(requestPlane.source, requestPlane.value, g.requestPlanes);
  if (!g.eventPlanes.includes(eventPlane.value)) throw refuse(eventPlane.source, eventPlane.value, g.eventPlanes);
  const fileRoot = fileKvRoot(env);
  if (discovery.value === 'file') checkFileKvRoot(fileRoot);
  checkServerSettings(env, requestPlane.value === 'nats' || eventPlane.value === 'nats', discovery.value === 'etcd');
  return {
    discovery: { backend: discovery.value, fileRoot },
    requestPlane: requestPlane.value,
    eventPlane: eventPlane.value,
  };
}

const NOT_A_DEVICE = new Set(['', '-1', 'none', 'void']);

/**
 * Dynamo's `endpoint_device_type()`, which its mocker uses unchanged: `cpu` when CUDA_VISIBLE_DEVICES
 * is empty, -1, none or void, or NVIDIA_VISIBLE_DEVICES is none or void; `cuda` otherwise.
 */
export function deviceTypeFromEnv(env: Env): 'cpu' | 'cuda' {
  const cuda = env.CUDA_VISIBLE_DEVICES;
  if (cuda !== undefined && NOT_A_DEVICE.has(cuda.trim().toLowerCase())) return 'cpu';
  const nvidia = env.NVIDIA_VISIBLE_DEVICES?.trim().toLowerCase();
  return nvidia === 'none' || nvidia === 'void' ? 'cpu' : 'cuda';
}

function envBool(env: Env, name: string, fallback: boolean): boolean {
  const raw = nonEmpty(env[name]);
  return raw === undefined ? fallback : parseBool(name, raw);
}

/** A comma-separated port list with one base port per worker (Dynamo's --zmq-*-ports). */
function portList(raw: RawOptions, key: string, numWorkers: number, minPort = 1): number[] | null {
  if (raw[key] === undefined) return null;
  const flag = flagOf(key);
  const ports = asString(flag, raw[key]).split(',').map((p) => parseInteger(flag, p.trim(), minPort, 65535));
  if (ports.length !== numWorkers) throw new ConfigError(flag, `must list one port per worker (${numWorkers} with --num-workers), got ${ports.length}`);
  return ports;
}

/** An IP literal from the environment (peers parse advertised addresses as socket addresses). */
function envIp(env: Env, name: string): string | null {
  const raw = nonEmpty(env[name]);
  if (raw === undefined) return null;
  const ip = raw.replace(/^\[(.*)\]$/, '$1');
  if (isIP(ip) === 0) throw new ConfigError(name, `must be an IP address (peers accept no host names), got '${raw}'`);
  return ip;
}

/**
 * DYN_LOG is a tracing filter such as `debug,dynamo_runtime=trace`: its first bare level wins and
 * `target=level` directives are ignored; none at all means info. A bare word that is no level is
 * refused naming DYN_LOG (a typo would otherwise silently log at info).
 */
export function levelFromDynLog(value: string | undefined): string {
  let level: string | undefined;
  for (const part of (value ?? '').split(',')) {
    const directive = part.trim();
    if (directive === '' || directive.includes('=')) continue;
    const known = LOG_LEVELS[directive.toLowerCase()];
    if (known === undefined) {
      throw new ConfigError(
        'DYN_LOG',
        `unknown level '${directive}' (a level is trace, debug, info, warn, error or off, 0-5 as in tracing; target=level directives may follow, e.g. 'debug,dynamo_runtime=trace')`,
      );
    }
    level ??= known;
  }
  return level ?? 'info';
}
/** tracing's LevelFilter names and numbers, and pino's own fatal and silent, as pino levels. */
const LOG_LEVELS: Record<string, string> = {
  trace: 'trace',
  debug: 'debug',
  info: 'info',
  warn: 'warn',
  error: 'error',
  off: 'silent',
  fatal: 'fatal',
  silent: 'silent',
  '0': 'silent',
  '1': 'error',
  '2': 'warn',
  '3': 'info',
  '4': 'debug',
  '5': 'trace',
};

/** The longest --stagger-delay taken, seconds. */
const MAX_STAGGER_DELAY_S = 3600;

/** --stagger-delay: seconds between worker launches, 0 = none, −1 = Dynamo's auto rule for --num-workers; other negatives are refused (as Dynamo does). */
function parseStaggerDelay(value: unknown, numWorkers: number): number {
  const flag = '--stagger-delay';
  const seconds = value === undefined ? WORKER_DEFAULTS.staggerDelayS : parseNumber(flag, value, { max: MAX_STAGGER_DELAY_S });
  if (seconds === -1) return autoStaggerDelayS(numWorkers);
  if (seconds < 0) throw new ConfigError(flag, `must be ≥ 0 (seconds between worker launches) or -1 (auto), got '${asString(flag, value)}'`);
  return seconds + 0; // −0 reads as 0
}

/** --faults FILE: a JSON fault plan; any fault in it exits 2 naming the field. */
function readFaultPlan(path: string): FaultPlan {
  const flag = '--faults';
  const value = readJsonFile(flag, path);
  try {
    return parseFaultPlan(value);
  } catch (err) {
    if (err instanceof FaultPlanError) throw new ConfigError(flag, `${path}: ${err.message}`);
    throw err;
  }
}

export function parseWorkerConfig(raw: RawOptions, argv: readonly string[], env: Env): WorkerConfig {
  const { startupTimeS, ...engine } = parseEngineSettings(raw, argv);
  if (raw.modelPath === undefined || asString('--model-path', raw.modelPath) === '') {
    throw new ConfigError('--model-path', 'is required (a local model directory or a HuggingFace repo id)');
  }
  const modelPath = asString('--model-path', raw.modelPath);
  checkModelPath(modelPath);
  // huggingface_hub reads these as booleans; anything else would silently mean "online".
  for (const name of ['HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE']) envBool(env, name, false);
  const modelName = raw.modelName !== undefined ? asString('--model-name', raw.modelName) : modelPath;
  if (modelName === '') throw new ConfigError('--model-name', 'must not be empty');
  const numWorkers = raw.numWorkers === undefined ? WORKER_DEFAULTS.numWorkers : parseInteger('--num-workers', raw.numWorkers, 1, 1024);
  const staggerDelayS = parseStaggerDelay(raw.staggerDelay, numWorkers);
  const warnings: string[] = [];
  const disagg = parseDisagg(raw, env, numWorkers, warnings);
  engine.workerType = disagg.workerType;
  const endpoint = parseEndpoint(raw.endpoint !== undefined ? asString('--endpoint', raw.endpoint) : defaultEndpoint(env, disagg.workerType));
  let dynamoVersion: DynamoVersion = WORKER_DEFAULTS.dynamoVersion;
  if (raw.dynamoVersion !== undefined) {
    const v = asString('--dynamo-version', raw.dynamoVersion);
    if (!DYNAMO_VERSIONS.includes(v as DynamoVersion)) {
      throw new ConfigError('--dynamo-version', `must be one of ${DYNAMO_VERSIONS.join(', ')}, got '${v}'`);
    }
    dynamoVersion = v as DynamoVersion;
  }
  const planes = planeSettings(raw, env, dynamoVersion);
  const system = systemServerSettings(env, dynamoVersion, warnings);
  const tcp = planes.requestPlane === 'tcp' ? tcpServerSettings(env) : tcpServerSettings({});
  // Only 1.4 has the ZMQ event plane (planeSettings refuses it for 0.6.x).
  const zmqEvents = planes.eventPlane === 'zmq';
  if (zmqEvents && (nonEmpty(env.DYN_ZMQ_BROKER_URL) !== undefined || envBool(env, 'DYN_ZMQ_BROKER_ENABLED', false))) {
    const name = nonEmpty(env.DYN_ZMQ_BROKER_URL) !== undefined ? 'DYN_ZMQ_BROKER_URL' : 'DYN_ZMQ_BROKER_ENABLED';
    throw new ConfigError(name, 'ZMQ broker mode is not supported: publishers bind their own PUB sockets (unset it, or use DYN_EVENT_PLANE=nats)');
  }
  const zmqKvEventsPorts = portList(raw, 'zmqKvEventsPorts', numWorkers);
  const zmqReplayPorts = portList(raw, 'zmqReplayPorts', numWorkers);
  if (zmqReplayPorts && !zmqKvEventsPorts) throw new ConfigError('--zmq-replay-ports', 'needs --zmq-kv-events-ports (it replays that stream)');
  const kvEvents = raw.kvEvents === undefined ? true : parseBool('--kv-events', raw.kvEvents);
  if (zmqKvEventsPorts && !engine.enablePrefixCaching) throw new ConfigError('--zmq-kv-events-ports', 'needs prefix caching (without it no KV events exist)');
  if (zmqKvEventsPorts && !kvEvents) throw new ConfigError('--zmq-kv-events-ports', 'contradicts --no-kv-events');
  if (zmqKvEventsPorts && disagg.workerType === 'decode') throw new ConfigError('--zmq-kv-events-ports', 'decode workers publish no KV events');
  // A timer cannot wait past 2^31 − 1 ms (Node would fire it at once).
  const graceS = envSeconds(env, 'DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT', { min: 0, max: Math.floor((2 ** 31 - 1) / 1000) }) ?? WORKER_DEFAULTS.gracefulShutdownS;
  const onLeaseLoss = raw.onLeaseLoss === undefined ? WORKER_DEFAULTS.onLeaseLoss : asString('--on-lease-loss', raw.onLeaseLoss).toLowerCase();
  if (!LEASE_LOSS_ACTIONS.includes(onLeaseLoss as LeaseLossAction)) {
    throw new ConfigError('--on-lease-loss', `must be one of ${LEASE_LOSS_ACTIONS.join(', ')}, got '${onLeaseLoss}'`);
  }
  // JetStream's max_age is i64 nanoseconds.
  const natsStreamMaxAgeS = envSeconds(env, 'DYN_NATS_STREAM_MAX_AGE', { exclusiveMin: 0, max: 9_223_372_036 }) ?? WORKER_DEFAULTS.natsStreamMaxAgeS;
  const kvOutboxEvents = envInteger(env, 'DYN_MOCKER_KV_OUTBOX_EVENTS', 1, 10_000_000) ?? WORKER_DEFAULTS.kvOutboxEvents;
  const controlApi = { enabled: raw.enableControlApi === true, token: nonEmpty(env.DYN_MOCKER_CONTROL_TOKEN) ?? null };
  if (controlApi.enabled && !system.enabled) {
    throw new ConfigError('--enable-control-api', 'needs the system status server it is served on (set DYN_SYSTEM_PORT)');
  }
  return {
    engine,
    disagg,
    faults: raw.faults === undefined ? null : readFaultPlan(asString('--faults', raw.faults)),
    controlApi,
    migrationLimit: raw.migrationLimit === undefined ? WORKER_DEFAULTS.migrationLimit : parseInteger('--migration-limit', raw.migrationLimit, 0, 0xffff_ffff),
    modelPath,
    modelName,
    endpoint,
    numWorkers,
    staggerDelayS,
    startupTimeS,
    dynamoVersion,
    ...planes,
    tcp,
    eventPlaneHost: zmqEvents ? envIp(env, 'DYN_EVENT_PLANE_HOST') : null,
    // Decode workers publish no KV events: their blocks arrive by transfer and nobody routes on them.
    kvEvents: kvEvents && engine.enablePrefixCaching && disagg.workerType !== 'decode',
    zmqKvEventsPorts,
    zmqReplayPorts,
    system,
    gracefulShutdownMs: graceS * 1000,
    onLeaseLoss: onLeaseLoss as LeaseLossAction,
    responseStream: responseStreamSettings(env),
    natsStreamMaxAgeS,
    kvOutboxEvents,
    logLevel: levelFromDynLog(env.DYN_LOG),
    deviceType: deviceTypeFromEnv(env),
    selfHostMetadata: dynamoVersion === '1.4' && envBool(env, 'DYN_SELF_HOST_METADATA', true),
    warnings,
    env,
  };
}

export function parseReplayConfig(raw: RawOptions, argv: readonly string[]): ReplayConfig {
  const { startupTimeS: _ignored, ...engine } = parseEngineSettings(raw, argv);
  if (raw.trace === undefined && raw.synthetic === undefined) throw new ConfigError('--trace', 'is required (a trace file), unless --synthetic describes a workload');
  if (raw.trace !== undefined && raw.synthetic !== undefined) throw new ConfigError('--synthetic', 'and --trace are mutually exclusive');
  const tracePath = raw.trace === undefined ? null : readableFile('--trace', asString('--trace', raw.trace));
  const synthetic = raw.synthetic === undefined ? null : asString('--synthetic', raw.synthetic);
  const traceFormat = raw.traceFormat === undefined ? null : asString('--trace-format', raw.traceFormat).toLowerCase();
  if (traceFormat !== null && !(TRACE_FORMATS as readonly string[]).includes(traceFormat)) {
    throw new ConfigError('--trace-format', `must be one of ${TRACE_FORMATS.join(', ')}, got '${asString('--trace-format', raw.traceFormat)}'`);
  }
  if (traceFormat !== null && tracePath === null) throw new ConfigError('--trace-format', 'needs --trace');
  const traceBlockSize = raw.traceBlockSize === undefined ? null : parseInteger('--trace-block-size', raw.traceBlockSize, 1, 1 << 20);
  const arrivalSpeedup = raw.arrivalSpeedup === undefined ? REPLAY_DEFAULTS.arrivalSpeedup : parseNumber('--arrival-speedup', raw.arrivalSpeedup, { exclusiveMin: 0, allowInf: true });
  const concurrency = raw.concurrency === undefined ? REPLAY_DEFAULTS.concurrency : parseInteger('--concurrency', raw.concurrency, 1, 1 << 20);
  if (concurrency !== null && raw.arrivalSpeedup !== undefined) {
    throw new ConfigError('--concurrency', 'closed-loop --concurrency and open-loop --arrival-speedup are mutually exclusive');
  }
  const prefillWorkers =
    raw.prefillWorkers === undefined ? REPLAY_DEFAULTS.prefillWorkers : parseInteger('--prefill-workers', raw.prefillWorkers, 1, MAX_REPLAY_POOL);
  const decodeWorkers =
    raw.decodeWorkers === undefined ? REPLAY_DEFAULTS.decodeWorkers : parseInteger('--decode-workers', raw.decodeWorkers, 1, MAX_REPLAY_POOL);
  if ((prefillWorkers === null) !== (decodeWorkers === null)) {
    const [missing, given] = prefillWorkers === null ? ['--prefill-workers', '--decode-workers'] : ['--decode-workers', '--prefill-workers'];
    throw new ConfigError(missing, `is required with ${given}: disaggregated replay needs both pools`);
  }
  if (raw.sweepJobs !== undefined) throw new ConfigError('--sweep-jobs', 'needs --sweep');
  const numWorkers = raw.numWorkers === undefined ? REPLAY_DEFAULTS.numWorkers : parseInteger('--num-workers', raw.numWorkers, 1, MAX_REPLAY_POOL);
  if (prefillWorkers !== null && raw.numWorkers !== undefined) {
    throw new ConfigError('--num-workers', 'counts aggregated workers; disaggregated replay sizes its pools with --prefill-workers and --decode-workers');
  }
  let router = REPLAY_DEFAULTS.router;
  if (raw.router !== undefined) {
    const name = asString('--router', raw.router).toLowerCase().replace(/_/g, '-');
    const alias: Record<string, ReplayRouter> = { 'kv-router': 'kv', roundrobin: 'round-robin', 'least-load': 'least-loaded' };
    const chosen = (REPLAY_ROUTERS as readonly string[]).includes(name) ? (name as ReplayRouter) : alias[name];
    if (!chosen) throw new ConfigError('--router', `must be one of ${REPLAY_ROUTERS.join(', ')}, got '${asString('--router', raw.router)}'`);
    router = chosen;
  }
  const kvOverlapScoreWeight =
    raw.kvOverlapScoreWeight === undefined ? REPLAY_DEFAULTS.kvOverlapScoreWeight : parseNumber('--kv-overlap-score-weight', raw.kvOverlapScoreWeight, { min: 0 });
  const routerTemperature =
    raw.routerTemperature === undefined ? REPLAY_DEFAULTS.routerTemperature : parseNumber('--router-temperature', raw.routerTemperature, { min: 0 });
  const modelPath = raw.modelPath === undefined ? null : asString('--model-path', raw.modelPath);
  if (modelPath !== null) checkModelPath(modelPath);
  return {
    engine,
    kvTransfer: parseKvTransfer(raw),
    modelPath,
    tracePath,
    traceFormat,
    synthetic,
    traceBlockSize,
    arrivalSpeedup,
    concurrency,
    prefillWorkers,
    decodeWorkers,
    numWorkers,
    router,
    kvOverlapScoreWeight,
    routerTemperature,
    outputPath: raw.output === undefined ? null : asString('--output', raw.output),
    summaryPath: raw.summary === undefined ? null : asString('--summary', raw.summary),
    reportPath: raw.report === undefined ? null : asString('--report', raw.report),
    progress: raw.progress === undefined ? true : Boolean(raw.progress),
  };
}
