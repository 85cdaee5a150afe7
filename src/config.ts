// One typed configuration: defaults declared once, every flag validated in one place.
import { readFileSync } from 'node:fs';
import type { EngineConfig, PreemptionMode } from './core/types.js';

/** Raised for any bad flag or file; the CLI prints it and exits with code 2. */
export class ConfigError extends Error {
  constructor(
    readonly flag: string,
    message: string,
  ) {
    super(`${flag}: ${message}`);
    this.name = 'ConfigError';
  }
}

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
  dataParallelSize: 1,
  maxModelLen: null as number | null,
  seed: 0,
} as const;

export const WORKER_DEFAULTS = {
  numWorkers: 1,
  startupTimeS: 0,
  modelName: null as string | null,
  dynamoVersion: '0.6.1' as DynamoVersion,
} as const;

export const REPLAY_DEFAULTS = {
  traceBlockSize: 512,
  arrivalSpeedup: 1.0,
  concurrency: null as number | null,
} as const;

export type DynamoVersion = '0.6.0' | '0.6.1';
export const DYNAMO_VERSIONS: readonly DynamoVersion[] = ['0.6.0', '0.6.1'];

/** Everything the engine (scheduler, pool, timing) of one worker needs. */
export interface EngineSettings extends EngineConfig {
  dataParallelSize: number;
  plannerProfileData: string | null;
  seed: number;
}

export interface EndpointId {
  namespace: string;
  component: string;
  endpoint: string;
}

export interface WorkerConfig {
  engine: EngineSettings;
  modelPath: string;
  modelName: string;
  endpoint: EndpointId;
  numWorkers: number;
  startupTimeS: number;
  dynamoVersion: DynamoVersion;
}

export interface ReplayConfig {
  engine: EngineSettings;
  modelPath: string | null;
  tracePath: string;
  traceBlockSize: number;
  arrivalSpeedup: number;
  concurrency: number | null;
  outputPath: string | null;
  summaryPath: string | null;
  progress: boolean;
}

/** Raw option values as commander hands them over (strings, booleans or undefined). */
export type RawOptions = Record<string, unknown>;

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
  dp_size: 'dataParallelSize',
  data_parallel_size: 'dataParallelSize',
  startup_time: 'startupTime',
  planner_profile_data: 'plannerProfileData',
  preemption_mode: 'preemptionMode',
  max_model_len: 'maxModelLen',
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
  dataParallelSize: '--data-parallel-size',
  startupTime: '--startup-time',
  plannerProfileData: '--planner-profile-data',
  maxModelLen: '--max-model-len',
  seed: '--seed',
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

function parseBool(flag: string, value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  const text = asString(flag, value).toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(text)) return true;
  if (['0', 'false', 'no', 'off'].includes(text)) return false;
  throw new ConfigError(flag, `must be a boolean, got '${text}'`);
}

function readableFile(flag: string, path: string): string {
  try {
    readFileSync(path, { flag: 'r' }).subarray(0, 0);
  } catch (err) {
    throw new ConfigError(flag, `cannot read '${path}': ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return path;
}

/** Reads --extra-engine-args: Dynamo's MockEngineArgs JSON; unknown keys are an error. */
function readExtraEngineArgs(path: string): RawOptions {
  const flag = '--extra-engine-args';
  readableFile(flag, path);
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(flag, `'${path}' is not valid JSON: ${(err as Error).message}`);
  }
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
export function parseEngineSettings(rawFlags: RawOptions, argv: readonly string[]): EngineSettings & { startupTimeS: number } {
  checkExclusive(argv);
  const raw: RawOptions = { ...rawFlags };
  if (raw.extraEngineArgs !== undefined) Object.assign(raw, readExtraEngineArgs(asString('--extra-engine-args', raw.extraEngineArgs)));
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

export function defaultEndpoint(env: Record<string, string | undefined>): string {
  return `dyn://${env.DYN_NAMESPACE || 'dynamo'}.backend.generate`;
}

export function parseWorkerConfig(raw: RawOptions, argv: readonly string[], env: Record<string, string | undefined>): WorkerConfig {
  const { startupTimeS, ...engine } = parseEngineSettings(raw, argv);
  if (raw.modelPath === undefined || asString('--model-path', raw.modelPath) === '') {
    throw new ConfigError('--model-path', 'is required (a local model directory or a HuggingFace repo id)');
  }
  const modelPath = asString('--model-path', raw.modelPath);
  const modelName = raw.modelName !== undefined ? asString('--model-name', raw.modelName) : modelPath;
  if (modelName === '') throw new ConfigError('--model-name', 'must not be empty');
  const endpoint = parseEndpoint(raw.endpoint !== undefined ? asString('--endpoint', raw.endpoint) : defaultEndpoint(env));
  const numWorkers = raw.numWorkers === undefined ? WORKER_DEFAULTS.numWorkers : parseInteger('--num-workers', raw.numWorkers, 1, 1024);
  let dynamoVersion: DynamoVersion = WORKER_DEFAULTS.dynamoVersion;
  if (raw.dynamoVersion !== undefined) {
    const v = asString('--dynamo-version', raw.dynamoVersion);
    if (!DYNAMO_VERSIONS.includes(v as DynamoVersion)) {
      throw new ConfigError('--dynamo-version', `must be one of ${DYNAMO_VERSIONS.join(', ')}, got '${v}'`);
    }
    dynamoVersion = v as DynamoVersion;
  }
  return { engine, modelPath, modelName, endpoint, numWorkers, startupTimeS, dynamoVersion };
}

export function parseReplayConfig(raw: RawOptions, argv: readonly string[]): ReplayConfig {
  const { startupTimeS: _ignored, ...engine } = parseEngineSettings(raw, argv);
  if (raw.trace === undefined) throw new ConfigError('--trace', 'is required (a Mooncake-style JSONL file)');
  const tracePath = readableFile('--trace', asString('--trace', raw.trace));
  const traceBlockSize = raw.traceBlockSize === undefined ? REPLAY_DEFAULTS.traceBlockSize : parseInteger('--trace-block-size', raw.traceBlockSize, 1, 1 << 20);
  const arrivalSpeedup = raw.arrivalSpeedup === undefined ? REPLAY_DEFAULTS.arrivalSpeedup : parseNumber('--arrival-speedup', raw.arrivalSpeedup, { exclusiveMin: 0, allowInf: true });
  const concurrency = raw.concurrency === undefined ? REPLAY_DEFAULTS.concurrency : parseInteger('--concurrency', raw.concurrency, 1, 1 << 20);
  if (concurrency !== null && raw.arrivalSpeedup !== undefined) {
    throw new ConfigError('--concurrency', 'closed-loop --concurrency and open-loop --arrival-speedup are mutually exclusive');
  }
  return {
    engine,
    modelPath: raw.modelPath === undefined ? null : asString('--model-path', raw.modelPath),
    tracePath,
    traceBlockSize,
    arrivalSpeedup,
    concurrency,
    outputPath: raw.output === undefined ? null : asString('--output', raw.output),
    summaryPath: raw.summary === undefined ? null : asString('--summary', raw.summary),
    progress: raw.progress === undefined ? true : Boolean(raw.progress),
  };
}
