// The request path of one worker, whatever plane delivered the request: decode, admit, run, stream back, count.
import type PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { Sequence } from '../core/sequence.js';
import type { EngineLoop } from '../engine/engine-loop.js';
import { TwoPartError, decodeTwoPart, type Xxh3Seed0 } from '../dynamo/two-part-codec.js';
import { llmDataItemBody, parsePreprocessedRequest, parseRequestControl, type PreprocessedRequest, type RequestControl } from '../dynamo/messages.js';
import { NO_REQUEST_METRICS, type RequestMetrics, type RequestObserver, type RequestTracker, type WorkErrorType } from '../metrics/request-metrics.js';
import type { OpenSink, ResponseSink } from './response-sink.js';

export interface RequestServerOptions {
  loop: EngineLoop;
  /** One FIFO admission queue per DP rank, concurrency = --max-num-seqs. */
  queues: PQueue[];
  xxh: Xxh3Seed0;
  metrics: RequestMetrics;
  log: Logger;
  /** EOS ids from the model's files; never emitted. */
  modelEosTokenIds: readonly number[];
  /** Opens the reply stream named by a request's control header. */
  openSink: OpenSink;
  /** Milliseconds on the engine loop's clock. */
  now: () => number;
  /** Starts latency observation of a request that arrived at `arrivalMs` on `rank`. */
  observe?: (rank: number, arrivalMs: number) => RequestObserver;
}

/** A fault the request plane found in the frame around the payload (e.g. unreadable TCP headers). */
export interface TransportFault {
  type: WorkErrorType;
  message: string;
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

/** Why a well-formed control header still cannot be served (checked before the body is read). */
function unsupported(control: RequestControl): string | null {
  if (control.requestType === 'many_in') return 'request_type "many_in" (bidirectional streams) is not supported by this worker';
  if (control.payloadCodec !== undefined && control.payloadCodec !== 'json') {
    return `payload_codec "${control.payloadCodec}" is not supported: this worker advertises no request_plane_codec, so requests must be JSON`;
  }
  return null;
}

export interface ControlOutcome {
  control: RequestControl;
  body: Uint8Array;
  /** Set when the frame is readable but must be refused on its stream. */
  refusal: { type: WorkErrorType | null; message: string } | null;
}

/**
 * Decodes a request payload (a TwoPart message) down to its control header. Returns null when the
 * caller cannot be told anything (no readable control header); the error is then counted and logged.
 */
export function decodeRequestFrame(payload: Uint8Array, xxh: Xxh3Seed0, metrics: Pick<RequestMetrics, 'error'>, log: Logger): ControlOutcome | null {
  let frame;
  // A frame whose only fault is its checksum still names its caller: it is refused on its stream
  // rather than dropped, so the frontend does not wait for a call home that never comes.
  let checksumError: string | null = null;
  try {
    frame = decodeTwoPart(payload, xxh);
  } catch (err) {
    metrics.error('invalid_message');
    if (!(err instanceof TwoPartError && err.kind === 'checksum')) {
      log.warn(`dropping malformed request frame: ${(err as Error).message}`);
      return null;
    }
    checksumError = err.message;
    frame = decodeTwoPart(payload);
  }
  let control: RequestControl;
  try {
    control = parseRequestControl(frame.header);
  } catch (err) {
    if (checksumError !== null) log.warn(`dropping malformed request frame: ${checksumError}`);
    else {
      metrics.error('deserialization');
      log.warn(`dropping request with a bad control header: ${(err as Error).message}`);
    }
    return null;
  }
  if (checksumError !== null) return { control, body: frame.body, refusal: { type: null, message: checksumError } };
  const why = unsupported(control);
  return { control, body: frame.body, refusal: why === null ? null : { type: 'deserialization', message: why } };
}

/**
 * Refuses a request that reached no worker (an unknown or unreadable endpoint path): the fault is
 * counted and, when the frame names its caller, told on the request's stream.
 */
export async function refuseUnrouted(
  payload: Uint8Array,
  { type, message }: TransportFault,
  o: Pick<RequestServerOptions, 'xxh' | 'metrics' | 'log' | 'openSink'>,
): Promise<void> {
  o.metrics.error(type);
  // Only the fault is counted: what else is wrong with a frame that reached no worker is moot.
  const decoded = decodeRequestFrame(payload, o.xxh, NO_REQUEST_METRICS, o.log);
  o.log.warn({ request_id: decoded?.control.id }, `refusing request: ${message}`);
  if (decoded === null) return;
  try {
    const sink = await o.openSink(decoded.control.connectionInfo);
    sink.sendPrologue(message);
    sink.end();
  } catch (err) {
    o.log.warn({ request_id: decoded.control.id }, (err as Error).message);
  }
}

export class RequestServer {
  private readonly inflight = new Set<Promise<void>>();
  private readonly shutdown = new AbortController();
  /** Accepted requests waiting for an admission slot, per DP rank. */
  private readonly waitingForSlot: Array<Set<ActiveRequest>>;

  constructor(private readonly o: RequestServerOptions) {
    this.waitingForSlot = o.queues.map(() => new Set());
  }

  /** Prompt lengths of the requests waiting for an admission slot on `rank` (queued prefill work). */
  *admissionQueue(rank: number): Iterable<number> {
    for (const r of this.waitingForSlot[rank]) yield r.promptLength;
  }

  /** Requests between their arrival and their last frame. */
  get inflightCount(): number {
    return this.inflight.size;
  }

  /**
   * Serves one request payload (already acknowledged on its plane); `fault` is a problem the plane
   * found around it, reported on the request's stream. Resolves when the request's stream has
   * ended; never rejects.
   */
  handle(payload: Uint8Array, fault: TransportFault | null = null): Promise<void> {
    const done = this.serve(payload, fault).catch((err) => this.o.log.error({ err }, 'request handler failed'));
    this.inflight.add(done);
    void done.finally(() => this.inflight.delete(done));
    return done;
  }

  /**
   * Waits up to `graceMs` for in-flight requests to finish, then cuts the rest (their streams end
   * without complete_final and their KV blocks are freed). Resolves true if all finished in time.
   */
  async drain(graceMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const drained = Promise.all([...this.inflight]).then(() => true);
    const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), graceMs)));
    const inTime = await Promise.race([drained, timedOut]);
    clearTimeout(timer);
    if (!inTime) {
      this.o.log.warn(`graceful shutdown timed out after ${graceMs} ms; cancelling ${this.inflight.size} requests`);
      this.shutdown.abort();
      await Promise.all([...this.inflight]);
    }
    return inTime;
  }

  private async serve(payload: Uint8Array, fault: TransportFault | null): Promise<void> {
    const { o } = this;
    const arrivalMs = o.now();
    const tracker = o.metrics.begin(payload.length);
    try {
      const decoded = decodeRequestFrame(payload, o.xxh, o.metrics, o.log);
      if (decoded === null) return;
      const { control } = decoded;
      let sink: ResponseSink;
      try {
        sink = await o.openSink(control.connectionInfo);
      } catch (err) {
        o.metrics.error('response_stream');
        o.log.warn({ request_id: control.id }, (err as Error).message);
        return;
      }
      /** `type` null: the error was already counted. */
      const refuse = (type: WorkErrorType | null, message: string): void => {
        if (type !== null) o.metrics.error(type);
        o.log.warn({ request_id: control.id }, `refusing request: ${message}`);
        sink.sendPrologue(message);
        sink.end();
      };
      // The transport's fault first, then what decoding found.
      const refusal = fault ?? decoded.refusal;
      if (refusal !== null) return refuse(refusal.type, refusal.message);
      let req: PreprocessedRequest;
      try {
        req = parsePreprocessedRequest(decoded.body);
      } catch (err) {
        return refuse('deserialization', `invalid request body: ${(err as Error).message}`);
      }
      const engine = o.loop.engine;
      const rank = engine.route(req.dpRank);
      if (typeof rank !== 'number') return refuse('generate', rank.reason);
      const outputTokens = engine.check({ promptLength: req.tokenIds.length, maxTokens: req.maxTokens }, rank);
      if (typeof outputTokens !== 'number') return refuse('generate', outputTokens.reason);
      sink.sendPrologue(null);
      const run = new ActiveRequest({
        requestId: control.id,
        req,
        rank,
        outputTokens,
        sink,
        tracker,
        server: o,
        waiting: this.waitingForSlot[rank],
        shutdown: this.shutdown.signal,
        observer: o.observe?.(rank, arrivalMs),
      });
      await run.done;
    } finally {
      tracker.end();
    }
  }
}

interface ActiveRequestInit {
  requestId: string;
  req: PreprocessedRequest;
  rank: number;
  /** The exact number of tokens to produce (checked against the context already). */
  outputTokens: number;
  sink: ResponseSink;
  tracker: RequestTracker;
  server: RequestServerOptions;
  /** Where the request waits for an admission slot (it leaves once admitted or cancelled). */
  waiting: Set<ActiveRequest>;
  shutdown: AbortSignal;
  observer: RequestObserver | undefined;
}

/** One accepted request: waits in its rank's admission queue, then streams the engine's tokens. */
class ActiveRequest {
  readonly done: Promise<void>;
  private readonly queued = new AbortController();
  private seq: Sequence | null = null;
  private ended = false;
  private generated = 0;
  private settle!: () => void;
  private readonly finished = new Promise<void>((resolve) => (this.settle = resolve));

  constructor(private readonly a: ActiveRequestInit) {
    const { sink, shutdown } = a;
    a.waiting.add(this);
    sink.onControl((msg) => this.cancel(`frontend sent ${msg}`, () => sink.endStopped()));
    sink.onPeerGone(() => this.cancel('frontend disconnected', () => sink.end()));
    const onShutdown = (): void => this.cancel('worker shutting down', () => sink.end());
    shutdown.addEventListener('abort', onShutdown, { once: true });
    this.done = this.run().finally(() => shutdown.removeEventListener('abort', onShutdown));
  }

  get promptLength(): number {
    return this.a.req.tokenIds.length;
  }

  private cancel(why: string, endStream: () => void): void {
    if (this.ended) return;
    this.ended = true;
    this.a.waiting.delete(this);
    this.queued.abort();
    if (this.seq) this.a.server.loop.cancel(this.seq, this.a.rank);
    this.a.server.metrics.cancelled();
    this.a.server.log.debug({ request_id: this.a.requestId }, `request cancelled: ${why}`);
    endStream();
    this.settle();
  }

  private async run(): Promise<void> {
    try {
      await this.a.server.queues[this.a.rank].add(() => this.admitted(), { signal: this.queued.signal });
    } catch (err) {
      if (!this.queued.signal.aborted) throw err;
    }
    await this.finished;
  }

  /** Runs while the request holds an admission slot. */
  private async admitted(): Promise<void> {
    this.a.waiting.delete(this);
    if (this.ended) return;
    const { req, rank, server } = this.a;
    const submitted = server.loop.submit(
      {
        promptLength: req.tokenIds.length,
        promptTokens: req.tokenIds,
        maxTokens: this.a.outputTokens,
        bannedTokens: bannedTokens(req, server.modelEosTokenIds),
        dpRank: rank,
        seed: samplingSeed(req),
      },
      { emit: (token, atMs, last) => this.emit(token, atMs, last) },
    );
    if (!submitted.ok) {
      // Static checks passed before queueing, so this is an engine refusal found late.
      this.ended = true;
      server.metrics.error('generate');
      const { sink, tracker } = this.a;
      tracker.responseBytes(sink.sendItem(llmDataItemBody({ tokenIds: [], finishReason: { error: submitted.reason } })));
      tracker.responseBytes(sink.finish());
      this.settle();
      return;
    }
    this.seq = submitted.seq;
    await this.finished;
  }

  private emit(token: number | null, atMs: number, last: boolean): void {
    if (this.ended) return;
    const { req, sink, tracker, observer } = this.a;
    if (token !== null) {
      this.generated++;
      observer?.token(atMs);
    }
    if (last) observer?.finish(atMs, req.tokenIds.length, this.generated);
    const body = llmDataItemBody({
      tokenIds: token === null ? [] : [token],
      finishReason: last ? 'length' : null,
      usage: last ? { promptTokens: req.tokenIds.length, completionTokens: this.generated, cachedTokens: this.seq?.cachedTokens ?? 0 } : undefined,
    });
    tracker.responseBytes(sink.sendItem(body));
    if (last) {
      this.ended = true;
      tracker.responseBytes(sink.finish());
      this.settle();
    }
  }
}
