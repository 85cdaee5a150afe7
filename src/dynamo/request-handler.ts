// One generate request end to end: decode, call home, admission queue, engine tokens, stop/kill.
import { performance } from 'node:perf_hooks';
import type PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { LiveEngine } from '../engine/live-engine.js';
import type { Sequence } from '../core/sequence.js';
import { TwoPartError, decodeTwoPart, type Xxh3Seed0 } from './two-part-codec.js';
import { llmDataItemBody, parsePreprocessedRequest, parseRequestControl, type PreprocessedRequest } from './messages.js';
import { ResponseStream } from './response-stream.js';

export type WorkErrorType = 'deserialization' | 'invalid_message' | 'response_stream' | 'generate' | 'publish_response' | 'publish_final';

export interface RequestTracker {
  responseBytes(n: number): void;
  end(): void;
}

/** The work-handler metrics a request updates (see src/metrics). */
export interface RequestMetrics {
  begin(requestBytes: number): RequestTracker;
  error(type: WorkErrorType): void;
  cancelled(): void;
}

export interface RequestHandlerDeps {
  live: LiveEngine;
  /** One FIFO admission queue per DP rank, concurrency = --max-num-seqs. */
  queues: PQueue[];
  xxh: Xxh3Seed0;
  metrics: RequestMetrics;
  log: Logger;
  /** EOS ids from the model's files; never emitted. */
  modelEosTokenIds: readonly number[];
  /** Requests between the NATS ack and their end, for graceful shutdown. */
  inflight: Set<Promise<void>>;
  /** Aborts every queued or running request (shutdown past the grace period). */
  shutdown: AbortSignal;
  /** Starts latency observation of a request that arrived at `arrivalMs` on `rank` (engine metrics). */
  observe?: (rank: number, arrivalMs: number) => { token(atMs: number): void; finish(atMs: number, promptTokens: number, outputTokens: number): void };
}

function bannedTokens(req: PreprocessedRequest, modelEos: readonly number[]): Set<number> {
  const banned = new Set<number>(modelEos);
  for (const t of req.eosTokenIds) banned.add(t);
  for (const t of req.stopTokenIdsHidden) banned.add(t);
  return banned;
}

/** sampling_options.seed, when the client set one: same seed, same tokens. */
function samplingSeed(req: PreprocessedRequest): number | undefined {
  const raw = req.raw as { sampling_options?: { seed?: unknown } } | null;
  const seed = raw?.sampling_options?.seed;
  if (typeof seed === 'number' && Number.isSafeInteger(seed)) return seed >>> 0;
  if (typeof seed === 'bigint') return Number(BigInt.asUintN(32, seed));
  return undefined;
}

/** Handles one NATS request payload (already acknowledged). Never throws. */
export function handleRequest(payload: Uint8Array, deps: RequestHandlerDeps): void {
  const done = serve(payload, deps).catch((err) => deps.log.error({ err }, 'request handler failed'));
  deps.inflight.add(done);
  void done.finally(() => deps.inflight.delete(done));
}

async function serve(payload: Uint8Array, deps: RequestHandlerDeps): Promise<void> {
  const { live, metrics, log } = deps;
  const arrivalMs = performance.now();
  const tracker = metrics.begin(payload.length);
  try {
    let frame;
    // A frame whose only fault is its checksum still names its caller: it is refused on its stream
    // below rather than dropped, so the frontend does not wait for a call home that never comes.
    let frameError: string | null = null;
    try {
      frame = decodeTwoPart(payload, deps.xxh);
    } catch (err) {
      metrics.error('invalid_message');
      if (!(err instanceof TwoPartError && err.kind === 'checksum')) {
        log.warn(`dropping malformed request frame: ${(err as Error).message}`);
        return;
      }
      frameError = err.message;
      frame = decodeTwoPart(payload);
    }
    let control;
    try {
      control = parseRequestControl(frame.header);
    } catch (err) {
      if (frameError !== null) {
        log.warn(`dropping malformed request frame: ${frameError}`);
        return;
      }
      metrics.error('deserialization');
      log.warn(`dropping request with a bad control header: ${(err as Error).message}`);
      return;
    }
    let stream: ResponseStream;
    try {
      stream = await ResponseStream.open(control.connectionInfo, deps.xxh);
    } catch (err) {
      metrics.error('response_stream');
      log.warn({ request_id: control.id }, (err as Error).message);
      return;
    }

    /** `type` null: the error was already counted. */
    const refuse = (type: WorkErrorType | null, message: string): void => {
      if (type !== null) metrics.error(type);
      log.warn({ request_id: control.id }, `refusing request: ${message}`);
      stream.sendPrologue(message);
      stream.end();
    };
    if (frameError !== null) return refuse(null, frameError);
    let req: PreprocessedRequest;
    try {
      req = parsePreprocessedRequest(frame.body);
    } catch (err) {
      refuse('deserialization', `invalid request body: ${(err as Error).message}`);
      return;
    }
    const rank = live.engine.route(req.dpRank);
    if (typeof rank !== 'number') return refuse('generate', rank.reason);
    const outputTokens = live.engine.check({ promptLength: req.tokenIds.length, maxTokens: req.maxTokens }, rank);
    if (typeof outputTokens !== 'number') return refuse('generate', outputTokens.reason);
    stream.sendPrologue(null);
    await generate(control.id, req, rank, outputTokens, stream, tracker, deps, deps.observe?.(rank, arrivalMs));
  } finally {
    tracker.end();
  }
}

async function generate(
  requestId: string,
  req: PreprocessedRequest,
  rank: number,
  outputTokens: number,
  stream: ResponseStream,
  tracker: RequestTracker,
  deps: RequestHandlerDeps,
  observer?: ReturnType<NonNullable<RequestHandlerDeps['observe']>>,
): Promise<void> {
  const { live, metrics, log } = deps;
  const queued = new AbortController();
  let seq: Sequence | null = null;
  let settle!: () => void;
  const finished = new Promise<void>((resolve) => (settle = resolve));
  let ended = false;
  let generated = 0;

  const cancel = (why: string): void => {
    if (ended) return;
    ended = true;
    queued.abort();
    if (seq) live.cancel(seq, rank);
    metrics.cancelled();
    log.debug({ request_id: requestId }, `request cancelled: ${why}`);
    stream.end();
    settle();
  };
  stream.onControl((msg) => cancel(`frontend sent ${msg}`));
  stream.onPeerGone(() => cancel('frontend disconnected'));
  const onShutdown = (): void => cancel('worker shutting down');
  deps.shutdown.addEventListener('abort', onShutdown, { once: true });

  try {
    await deps.queues[rank].add(
      async () => {
        if (ended) return;
        const submitted = live.submit(
          {
            promptLength: req.tokenIds.length,
            promptTokens: req.tokenIds,
            maxTokens: outputTokens,
            bannedTokens: bannedTokens(req, deps.modelEosTokenIds),
            dpRank: rank,
            seed: samplingSeed(req),
          },
          {
            emit: (token, atMs, last) => {
              if (ended) return;
              if (token !== null) {
                generated++;
                observer?.token(atMs);
              }
              if (last) observer?.finish(atMs, req.tokenIds.length, generated);
              const body = llmDataItemBody({
                tokenIds: token === null ? [] : [token],
                finishReason: last ? 'length' : null,
                usage: last
                  ? { promptTokens: req.tokenIds.length, completionTokens: generated, cachedTokens: seq?.cachedTokens ?? 0 }
                  : undefined,
              });
              tracker.responseBytes(stream.sendItem(body));
              if (last) {
                ended = true;
                tracker.responseBytes(stream.finish());
                settle();
              }
            },
          },
        );
        if (!submitted.ok) {
          // Static checks passed before queueing, so this is an engine refusal found late.
          ended = true;
          metrics.error('generate');
          tracker.responseBytes(stream.sendItem(llmDataItemBody({ tokenIds: [], finishReason: { error: submitted.reason } })));
          tracker.responseBytes(stream.finish());
          settle();
          return;
        }
        seq = submitted.seq;
        await finished;
      },
      { signal: queued.signal },
    );
  } catch (err) {
    if (!queued.signal.aborted) throw err;
  } finally {
    deps.shutdown.removeEventListener('abort', onShutdown);
  }
  await finished;
}
