// The request path of one worker, whatever plane delivered the request: decode, admit, run, stream back, count.
import type PQueue from 'p-queue';
import type { Logger } from 'pino';
import { randomUUID } from 'node:crypto';
import { RESPONSE_STREAM_DEFAULTS } from '../config.js';
import { setTimeout as sleepFor } from 'node:timers/promises';
import type { EngineRequest } from '../core/engine.js';
import { transferDelayMs, type KvTransferSettings } from '../core/kv-transfer.js';
import type { Sequence } from '../core/sequence.js';
import type { WorkerType } from '../core/types.js';
import { canonicalUuid, type HandoffIdentity } from '../dynamo/handoff-wire.js';
import type { EngineLoop, TokenSink } from '../engine/engine-loop.js';
import type { HandoffChannel } from './handoff-channel.js';
import { HandoffFailed, runDestinationSession, runSourceSession, type HandoffRendezvous } from './handoff-sessions.js';
import { TwoPartError, decodeTwoPart, type Xxh3Seed0 } from '../dynamo/two-part-codec.js';
import {
  DUMMY_DISAGGREGATED_PARAMS,
  llmDataItemBody,
  parsePreprocessedRequest,
  parseRequestControl,
  type BootstrapInfo,
  type PreprocessedRequest,
  type RequestControl,
} from '../dynamo/messages.js';
import { NO_REQUEST_METRICS, type RequestMetrics, type RequestObserver, type RequestTracker, type WorkErrorType } from '../metrics/request-metrics.js';
import type { OpenSink, ResponseSink } from './response-sink.js';
import { limitedWarn, reasonOf, type WarningLimiter } from '../log-limiter.js';
import { deliveryTime, type FaultHit, type RequestFaults } from './request-faults.js';

/** Disaggregated serving: the worker's role and what its KV handoffs need. */
export interface DisaggServing {
  workerType: WorkerType;
  /** The transfer model in force (bytes per token already resolved). */
  transfer: KvTransferSettings;
  sessionTimeoutMs: number;
  rendezvousTimeoutMs: number;
  /** Bootstrap sessions a DP rank may hold at once (Dynamo: max_num_seqs). */
  sessionsPerRank: number;
  /** A prefill worker's rendezvous table; null when it runs no bootstrap server. */
  rendezvous: HandoffRendezvous | null;
  /** Opens a decode worker's session to the prefill worker's bootstrap server named by the request. */
  connect: (info: BootstrapInfo, identity: HandoffIdentity, dpRank: number) => Promise<HandoffChannel>;
}

/** Real time, cancellable: the request path's default sleep. */
export const realSleep = (ms: number, signal: AbortSignal): Promise<void> => sleepFor(ms, undefined, { signal });

export interface RequestServerOptions {
  /** Absent: an aggregated worker (handoff metadata on a request is refused). */
  disagg?: DisaggServing;
  /** The worker's fault plan (absent: no faults). */
  faults?: RequestFaults;
  /**
   * Waits in real time, cancellable: the KV transfer (not divided by the speedup ratio, as in
   * Dynamo), stalled or slowed deliveries, a congested stream's stall timeout. Default realSleep.
   */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /**
   * How long a request may stay paused on a congested response stream before it is cancelled
   * (DYN_MOCKER_STREAM_STALL_TIMEOUT; default 60 s).
   */
  streamStallTimeoutMs?: number;
  loop: EngineLoop;
  /** One FIFO admission queue per DP rank, concurrency = --max-num-seqs. */
  queues: PQueue[];
  xxh: Xxh3Seed0;
  metrics: RequestMetrics;
  log: Logger;
  /** Rate-limits the per-request warning lines (malformed frames, refusals); absent: every line is logged. */
  warnings?: WarningLimiter;
  /** EOS ids from the model's files; never emitted. */
  modelEosTokenIds: readonly number[];
  /** Opens the reply stream named by a request's control header. */
  openSink: OpenSink;
  /** Milliseconds on the engine loop's clock. */
  now: () => number;
  /** Starts latency observation of a request that arrived at `arrivalMs` on `rank`. */
  observe?: (rank: number, arrivalMs: number) => RequestObserver;
}

/** What happened to the requests this server received (the control API's stats). */
export interface RequestCounts {
  received: number;
  completed: number;
  refused: number;
  /** Ended with an error item (an engine refusal, a failed handoff, an `error` fault). */
  failed: number;
  cancelled: number;
  cut: number;
}

const zeroCounts = (): RequestCounts => ({ received: 0, completed: 0, refused: 0, failed: 0, cancelled: 0, cut: 0 });

/** A request waiting for an admission slot, as the forward-pass metrics count it. */
export interface QueuedWork {
  kind: 'prefill' | 'decode';
  tokens: number;
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
export function decodeRequestFrame(
  payload: Uint8Array,
  xxh: Xxh3Seed0,
  metrics: Pick<RequestMetrics, 'error'>,
  log: Logger,
  warnings?: WarningLimiter,
): ControlOutcome | null {
  const dropped = (reason: string, msg: string): void => limitedWarn(warnings, 'malformed-request', reason, log, undefined, msg);
  let frame;
  // A frame whose only fault is its checksum still names its caller: it is refused on its stream
  // rather than dropped, so the frontend does not wait for a call home that never comes.
  let checksumError: string | null = null;
  try {
    frame = decodeTwoPart(payload, xxh);
  } catch (err) {
    metrics.error('invalid_message');
    if (!(err instanceof TwoPartError && err.kind === 'checksum')) {
      dropped(reasonOf((err as Error).message), `dropping malformed request frame: ${(err as Error).message}`);
      return null;
    }
    checksumError = err.message;
    frame = decodeTwoPart(payload);
  }
  let control: RequestControl;
  try {
    control = parseRequestControl(frame.header);
  } catch (err) {
    if (checksumError !== null) dropped(reasonOf(checksumError), `dropping malformed request frame: ${checksumError}`);
    else {
      metrics.error('deserialization');
      dropped('bad control header', `dropping request with a bad control header: ${(err as Error).message}`);
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
  o: Pick<RequestServerOptions, 'xxh' | 'metrics' | 'log' | 'openSink' | 'warnings'>,
): Promise<void> {
  o.metrics.error(type);
  // Only the fault is counted: what else is wrong with a frame that reached no worker is moot.
  const decoded = decodeRequestFrame(payload, o.xxh, NO_REQUEST_METRICS, o.log, o.warnings);
  limitedWarn(o.warnings, 'refusal', reasonOf(message), o.log, { request_id: decoded?.control.id }, `refusing request: ${message}`);
  if (decoded === null) return;
  try {
    const sink = await o.openSink(decoded.control.connectionInfo);
    sink.sendPrologue(message);
    sink.end();
  } catch (err) {
    const text = (err as Error).message;
    limitedWarn(o.warnings, 'response-stream', reasonOf(text), o.log, { request_id: decoded.control.id }, text);
  }
}

/**
 * A request id as a session identity's UUID: the frontend sends one context id to both workers. An id
 * that is no UUID gets a random one, as in Dynamo (so its session fails the identity check).
 */
function identityRequestId(id: string): string {
  return canonicalUuid(id) ?? randomUUID();
}

export class RequestServer {
  readonly counts: RequestCounts = zeroCounts();
  private readonly inflight = new Set<Promise<void>>();
  /** Bootstrap sessions held per DP rank. */
  private readonly sessions: number[];
  /** Accepted requests still streaming (the ones a graceful-shutdown timeout ends). */
  private readonly running = new Set<ActiveRequest>();
  /** Set once the graceful-shutdown timeout has passed: what a still-running stream is told. */
  private shutdownMessage: string | null = null;
  /** When the worker started serving (fault plans' `after_ms` / `before_ms`). */
  private readonly startedAt: number;
  /** Accepted requests waiting for an admission slot, per DP rank. */
  private readonly waitingForSlot: Array<Set<ActiveRequest>>;

  constructor(private readonly o: RequestServerOptions) {
    this.waitingForSlot = o.queues.map(() => new Set());
    this.sessions = o.queues.map(() => 0);
    this.startedAt = o.now();
  }

  /** Faults whose effect is on the worker, not the request's stream: they take effect at once. */
  private worldFault(hit: FaultHit, requestId: string): void {
    const faults = this.o.faults!;
    const a = hit.action;
    if (a.kind === 'deregister') faults.deregister(a.ms);
    else if (a.kind === 'load_metrics') faults.loadMetrics(a.mode, a.ms);
    else if (a.kind !== 'slow') return; // counted when they happen
    faults.fired(hit, requestId);
  }

  /** Which handoff a request takes part in, or why it is refused (Dynamo's wording). */
  private handoffPlan(req: PreprocessedRequest, requestId: string, rank: number): { kind: 'none' | 'prefill-delay' } | { kind: 'session'; identity: HandoffIdentity } | { refusal: string } {
    const d = this.o.disagg;
    const role = d?.workerType ?? 'aggregated';
    const info = req.bootstrapInfo;
    if (role === 'aggregated') {
      if (info?.handoffId) return { refusal: 'aggregated mocker request cannot carry handoff metadata' };
      return { kind: 'none' };
    }
    if (!info) return { kind: role === 'prefill' ? 'prefill-delay' : 'none' };
    if (info.handoffId === null) return { refusal: 'disaggregated mocker requires a handoff ID' };
    if (role === 'prefill' && !d!.rendezvous) return { refusal: 'this prefill worker runs no bootstrap server (start it with --bootstrap-ports)' };
    if (this.sessions[rank] >= d!.sessionsPerRank) return { refusal: `mocker handoff session limit reached for DP rank ${rank}` };
    return { kind: 'session', identity: { handoffId: info.handoffId, bootstrapRoom: info.room, requestId: identityRequestId(requestId) } };
  }

  /**
   * Requests waiting for an admission slot on `rank`: queued prefill work, or queued decode work for
   * a handoff whose prompt arrives by transfer (not yet activated).
   */
  *admissionQueue(rank: number): Iterable<QueuedWork> {
    for (const r of this.waitingForSlot[rank]) yield r.queuedWork;
  }

  resetCounts(): void {
    Object.assign(this.counts, zeroCounts());
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
   * Waits up to `graceMs` for in-flight requests to finish, then ends the rest: each stream gets an
   * error item saying the worker is shutting down, then complete_final, and its KV blocks are freed.
   * Resolves true if all finished in time.
   */
  async drain(graceMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const drained = Promise.all([...this.inflight]).then(() => true);
    const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), graceMs)));
    const inTime = await Promise.race([drained, timedOut]);
    clearTimeout(timer);
    if (!inTime) {
      this.o.log.warn(`graceful shutdown timed out after ${graceMs} ms; cancelling ${this.inflight.size} requests`);
      this.shutdownMessage = `worker shutting down: graceful shutdown timeout (${graceMs / 1000} s) reached`;
      // A request still on its way to being accepted is ended as soon as it is (in serve).
      for (const run of this.running) run.shutDown(this.shutdownMessage);
      await Promise.all([...this.inflight]);
    }
    return inTime;
  }

  private async serve(payload: Uint8Array, fault: TransportFault | null): Promise<void> {
    const { o } = this;
    const arrivalMs = o.now();
    const tracker = o.metrics.begin(payload.length);
    this.counts.received++;
    try {
      const decoded = decodeRequestFrame(payload, o.xxh, o.metrics, o.log, o.warnings);
      if (decoded === null) return;
      const { control } = decoded;
      // The body is read before the stream opens: a fault may decide it never opens.
      const refusal = fault ?? decoded.refusal;
      let req: PreprocessedRequest | null = null;
      let bodyError: string | null = null;
      if (refusal === null) {
        try {
          req = parsePreprocessedRequest(decoded.body);
        } catch (err) {
          bodyError = `invalid request body: ${(err as Error).message}`;
        }
      }
      const engine = o.loop.engine;
      const rank = req ? engine.route(req.dpRank) : null;
      const outputTokens = req && typeof rank === 'number' ? engine.check({ promptLength: req.tokenIds.length, maxTokens: req.maxTokens }, rank) : null;
      // Only requests the worker would serve count for the plan (arrival order, per worker).
      const hit =
        req && typeof rank === 'number' && typeof outputTokens === 'number' && o.faults
          ? o.faults.next({ dpRank: rank, promptTokens: req.tokenIds.length, sinceStartMs: arrivalMs - this.startedAt })
          : null;
      if (hit?.action.kind === 'no_stream') {
        o.faults!.fired(hit, control.id);
        return;
      }
      let sink: ResponseSink;
      try {
        sink = await o.openSink(control.connectionInfo);
      } catch (err) {
        o.metrics.error('response_stream');
        const text = (err as Error).message;
        limitedWarn(o.warnings, 'response-stream', reasonOf(text), o.log, { request_id: control.id }, text);
        return;
      }
      /** `type` null: the error was already counted. */
      const refuse = (type: WorkErrorType | null, message: string): void => {
        this.counts.refused++;
        if (type !== null) o.metrics.error(type);
        limitedWarn(o.warnings, 'refusal', reasonOf(message), o.log, { request_id: control.id }, `refusing request: ${message}`);
        sink.sendPrologue(message);
        sink.end();
      };
      // The transport's fault first, then what decoding found.
      if (refusal !== null) return refuse(refusal.type, refusal.message);
      if (req === null) return refuse('deserialization', bodyError!);
      if (typeof rank !== 'number') return refuse('generate', rank!.reason);
      if (typeof outputTokens !== 'number') return refuse('generate', outputTokens!.reason);
      if (hit?.action.kind === 'refuse') {
        o.faults!.fired(hit, control.id);
        return refuse('generate', hit.action.message);
      }
      const planned = this.handoffPlan(req, control.id, rank);
      if ('refusal' in planned) return refuse('generate', planned.refusal);
      let plan: HandoffPlan = planned.kind === 'session' ? { kind: 'prefill-session', identity: planned.identity } : planned;
      if (planned.kind === 'session') {
        this.sessions[rank]++;
        if (o.disagg!.workerType === 'decode') {
          // A decode connects to its prefill's bootstrap server before it accepts the request, as Dynamo's does.
          try {
            plan = { kind: 'decode-session', channel: await o.disagg!.connect(req.bootstrapInfo!, planned.identity, rank) };
          } catch (err) {
            this.sessions[rank]--;
            return refuse('generate', `bootstrap connection failed: ${(err as Error).message}`);
          }
        }
      }
      // Accepted: worker-level faults take effect now (a refused request triggers none).
      if (hit) this.worldFault(hit, control.id);
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
        observer: o.observe?.(rank, arrivalMs),
        plan,
        fault: hit && REQUEST_LEVEL.has(hit.action.kind) ? hit : null,
        arrivalMs,
        counts: this.counts,
      });
      // One set the server walks at the deadline, rather than a listener per request on one shared
      // AbortSignal (more than 10 of those is a MaxListenersExceededWarning).
      this.running.add(run);
      if (this.shutdownMessage !== null) run.shutDown(this.shutdownMessage);
      try {
        await run.done;
      } finally {
        this.running.delete(run);
        if (planned.kind === 'session') this.sessions[rank]--;
      }
    } finally {
      tracker.end();
    }
  }
}

/** Faults that act on the request's own stream (the rest act on the worker). */
const REQUEST_LEVEL = new Set(['error', 'cut', 'crash', 'stall', 'slow', 'kv_events']);

/** What a request does besides streaming its tokens, by the worker's role and the request's handoff metadata. */
type HandoffPlan =
  | { kind: 'none' }
  /** A prefill without a bootstrap session: its `length` chunk waits for the modelled transfer. */
  | { kind: 'prefill-delay' }
  /** A prefill whose KV is handed to a decode worker over a bootstrap session. */
  | { kind: 'prefill-session'; identity: HandoffIdentity }
  /** A decode that receives its prompt's KV over a bootstrap session before it decodes. */
  | { kind: 'decode-session'; channel: HandoffChannel };

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
  observer: RequestObserver | undefined;
  plan: HandoffPlan;
  /** The fault plan's verdict for this request, when it acts on its stream. */
  fault: FaultHit | null;
  arrivalMs: number;
  counts: RequestCounts;
}

/** One accepted request: waits in its rank's admission queue, then streams the engine's tokens. */
class ActiveRequest {
  readonly done: Promise<void>;
  /** Aborted when the request is cancelled: leaves the admission queue, ends sessions and waits. */
  private readonly cancelled = new AbortController();
  private seq: Sequence | null = null;
  private ended = false;
  private generated = 0;
  private settleEngine!: () => void;
  /** The engine is done with the request (last token out, refused or cancelled): its admission slot is free. */
  private readonly engineDone = new Promise<void>((resolve) => (this.settleEngine = resolve));
  private settle!: () => void;
  /** The response stream has ended. */
  private readonly finished = new Promise<void>((resolve) => (this.settle = resolve));
  /** Deliveries held back by a stall or slow fault, in order. */
  private delivering: Promise<void> = Promise.resolve();
  private kvFault: { release(): void } | null = null;
  /**
   * The response stream holds more unsent bytes than its buffer allows: the engine sequence is paused
   * (it keeps its KV blocks and its slot) and delayed deliveries wait, until the stream drains or the
   * stall timeout cancels the request.
   */
  private congested = false;
  /** Ends the stall timeout of the current congestion. */
  private stallTimer: AbortController | null = null;
  /** Delayed deliveries (stall or slow faults) waiting for the stream to drain. */
  private readonly drainWaiters: Array<() => void> = [];

  constructor(private readonly a: ActiveRequestInit) {
    const { sink } = a;
    a.waiting.add(this);
    sink.onControl((msg) => this.cancel(`frontend sent ${msg}`, () => sink.endStopped()));
    sink.onPeerGone(() => this.cancel('frontend disconnected', () => sink.end()));
    sink.onDrain(() => this.drained());
    void this.finished.then(() => {
      this.stallTimer?.abort();
      for (const wake of this.drainWaiters.splice(0)) wake();
    });
    this.done = this.run();
  }

  /**
   * The graceful-shutdown timeout passed while the request still runs: an error item (Dynamo's
   * `LLMEngineOutput::error`) tells the frontend why, complete_final ends the stream, and whatever
   * the engine holds is freed. Counted as a cancellation.
   */
  shutDown(message: string): void {
    const { sink, tracker } = this.a;
    this.cancel('worker shutting down', () => {
      tracker.responseBytes(sink.sendItem(llmDataItemBody({ tokenIds: [], finishReason: { error: message } })));
      tracker.responseBytes(sink.finish());
    });
  }

  get promptLength(): number {
    return this.a.req.tokenIds.length;
  }

  get queuedWork(): QueuedWork {
    return { kind: this.a.plan.kind === 'decode-session' ? 'decode' : 'prefill', tokens: this.promptLength };
  }

  private get prefill(): boolean {
    return this.a.plan.kind === 'prefill-delay' || this.a.plan.kind === 'prefill-session';
  }

  private cancel(why: string, endStream: () => void): void {
    if (this.ended) return;
    this.ended = true;
    this.kvFault?.release();
    this.a.waiting.delete(this);
    this.cancelled.abort();
    if (this.seq) this.a.server.loop.cancel(this.seq, this.a.rank);
    this.a.server.metrics.cancelled();
    this.a.counts.cancelled++;
    this.a.server.log.debug({ request_id: this.a.requestId }, `request cancelled: ${why}`);
    endStream();
    this.settleEngine();
    this.settle();
  }

  private async run(): Promise<void> {
    const { plan } = this.a;
    if (this.afterTokensFault(0)) return;
    if (plan.kind === 'prefill-session') await this.runSource(plan.identity);
    else if (plan.kind === 'decode-session') await this.runDestination(plan.channel);
    else {
      await this.admit(() => this.submit(false));
      if (plan.kind === 'prefill-delay') await this.afterTransferDelay();
    }
    await this.finished;
  }

  /** Waits for an admission slot on the rank, runs `enter` with it, and holds it until the engine is done. */
  private async admit(enter: () => void): Promise<void> {
    const { server, rank } = this.a;
    try {
      await server.queues[rank].add(
        async () => {
          this.a.waiting.delete(this);
          if (this.ended) return;
          enter();
          await this.engineDone;
        },
        { signal: this.cancelled.signal },
      );
    } catch (err) {
      if (!this.cancelled.signal.aborted) throw err;
    }
  }

  private engineRequest(): Omit<EngineRequest, 'key'> {
    const { req, rank, server } = this.a;
    return {
      promptLength: req.tokenIds.length,
      promptTokens: req.tokenIds,
      maxTokens: this.a.outputTokens,
      bannedTokens: bannedTokens(req, server.modelEosTokenIds),
      dpRank: rank,
      seed: samplingSeed(req),
    };
  }

  private submit(holdOnFinish: boolean): void {
    const submitted = this.a.server.loop.submit({ ...this.engineRequest(), holdOnFinish }, this.tokenSink());
    if (!submitted.ok) return this.fail(submitted.reason); // static checks passed before queueing: a late engine refusal
    this.seq = submitted.seq;
    this.startKvFault();
  }

  /** A kv_events fault follows the request's engine sequence (its stored blocks) until the request ends. */
  private startKvFault(): void {
    const { fault, server, rank, requestId } = this.a;
    if (fault?.action.kind !== 'kv_events' || !this.seq || this.kvFault) return;
    this.kvFault = server.faults!.kvEvents(rank, this.seq.key, fault.action.mode, fault.action.ms);
    server.faults!.fired(fault, requestId);
  }

  /**
   * An error, cut or crash fault due once `generated` tokens are out: true when it took effect (the
   * stream has ended, or the process is ending).
   */
  private afterTokensFault(generated: number): boolean {
    const { fault, server, requestId } = this.a;
    if (!fault || this.ended) return false;
    const a = fault.action;
    if ((a.kind !== 'error' && a.kind !== 'cut' && a.kind !== 'crash') || a.afterTokens !== generated) return false;
    // A request that ends before the count is reached is never hit.
    if (generated >= this.a.outputTokens && generated > 0) return false;
    server.faults!.fired(fault, requestId);
    if (a.kind === 'error') this.fail(a.message);
    else if (a.kind === 'cut') this.cut();
    else server.faults!.crash(a.exitCode);
    return true;
  }

  /** What a crashed engine looks like to the frontend: the connection closes, no complete_final. */
  private cut(): void {
    if (this.ended) return;
    this.ended = true;
    this.a.waiting.delete(this);
    if (this.seq) this.a.server.loop.cancel(this.seq, this.a.rank);
    this.kvFault?.release();
    this.a.counts.cut++;
    this.a.server.log.info({ request_id: this.a.requestId }, `stream cut after ${this.generated} tokens (fault plan)`);
    this.a.sink.cut();
    this.settleEngine();
    this.settle();
  }

  private tokenSink(): TokenSink {
    const { fault, arrivalMs, server } = this.a;
    const action = fault?.action ?? null;
    if (action?.kind !== 'stall' && action?.kind !== 'slow') return { emit: (token, atMs, last) => this.emit(token, atMs, last) };
    // Stalled or slowed: each token reaches the frontend later than the engine made it, in order.
    let number = 0;
    const sleep = server.sleep ?? realSleep;
    return {
      emit: (token, atMs, last) => {
        if (token !== null) {
          number++;
          // A stall counts once the token it holds back is made: a request that ends (or is cancelled)
          // before that token is never stalled, as an error or cut past the last token never fires.
          if (action.kind === 'stall' && number === action.beforeToken) server.faults!.fired(fault!, this.a.requestId);
        }
        const at = deliveryTime(action, arrivalMs, number, atMs);
        if (last) this.settleEngine(); // the engine is done with it; only the delivery waits
        this.delivering = this.delivering.then(async () => {
          const wait = at - server.now();
          if (wait > 0) await sleep(wait, this.cancelled.signal).catch(() => {});
          if (!this.congested) return this.emit(token, at, last);
          await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
          this.emit(token, Math.max(at, server.now()), last);
        });
      },
    };
  }

  private emit(token: number | null, atMs: number, last: boolean): void {
    if (this.ended) return;
    const { sink, tracker, observer } = this.a;
    if (token !== null) {
      this.generated++;
      observer?.token(atMs);
    }
    if (this.prefill) {
      // Dynamo's prefill worker marks its token as prefilled and ends the stream only once the KV has moved on.
      if (token !== null) tracker.responseBytes(sink.sendItem(llmDataItemBody({ tokenIds: [token], disaggregatedParamsJson: DUMMY_DISAGGREGATED_PARAMS })));
      if (last) this.settleEngine();
      return;
    }
    if (last) observer?.finish(atMs, this.promptLength, this.generated);
    const body = llmDataItemBody({
      tokenIds: token === null ? [] : [token],
      finishReason: last ? 'length' : null,
      usage: last ? this.usage() : undefined,
    });
    tracker.responseBytes(sink.sendItem(body));
    if (last) this.end();
    else if (!this.afterTokensFault(this.generated)) this.watchCongestion();
  }

  /**
   * After a write: a stream over its send buffer pauses the request (its blocks and slot kept, the
   * rest of the batch unaffected) until it drains; past the stall timeout the request is cancelled.
   */
  private watchCongestion(): void {
    if (this.ended || this.congested || !this.a.sink.congested()) return;
    const { server, rank } = this.a;
    this.congested = true;
    // Not running (a delivery delayed by a fault, after the engine moved on): only deliveries wait.
    if (this.seq) server.loop.pause(this.seq, rank);
    const timer = new AbortController();
    this.stallTimer = timer;
    const timeoutMs = server.streamStallTimeoutMs ?? RESPONSE_STREAM_DEFAULTS.stallTimeoutS * 1000;
    (server.sleep ?? realSleep)(timeoutMs, timer.signal).then(
      () => this.stalled(timeoutMs),
      () => {}, // drained or ended first
    );
  }

  /** The stream sent what it held: the request produces again. */
  private drained(): void {
    if (!this.congested || this.ended || this.a.sink.congested()) return;
    this.congested = false;
    this.stallTimer?.abort();
    this.stallTimer = null;
    if (this.seq) this.a.server.loop.resume(this.seq, this.a.rank);
    for (const wake of this.drainWaiters.splice(0)) wake();
  }

  /** Congested past the stall timeout: Dynamo's publish_response error; the connection is dropped and the KV freed. */
  private stalled(timeoutMs: number): void {
    if (this.ended || !this.congested) return;
    const { server, requestId } = this.a;
    server.metrics.error('publish_response');
    server.log.warn(
      { request_id: requestId },
      `response stream stalled: still over its send buffer after ${timeoutMs / 1000} s (DYN_MOCKER_STREAM_STALL_TIMEOUT); cancelling the request after ${this.generated} tokens`,
    );
    this.cancel('response stream stalled', () => this.a.sink.abort());
  }

  private usage(): { promptTokens: number; completionTokens: number; cachedTokens: number } {
    return { promptTokens: this.promptLength, completionTokens: this.generated, cachedTokens: this.seq?.cachedTokens ?? 0 };
  }

  /** The normal end: complete_final after the last item. */
  private end(completed = true): void {
    this.ended = true;
    // A request ended before admission (a fault at 0 tokens) must not stay counted as queued work.
    this.a.waiting.delete(this);
    if (completed) this.a.counts.completed++;
    this.kvFault?.release();
    this.a.tracker.responseBytes(this.a.sink.finish());
    this.settleEngine();
    this.settle();
  }

  /** A prefill's last item: a separate `length` chunk once its KV has been handed over. */
  private endPrefill(): void {
    if (this.ended) return;
    const { sink, tracker, observer, server } = this.a;
    observer?.finish(server.now(), this.promptLength, this.generated);
    tracker.responseBytes(sink.sendItem(llmDataItemBody({ tokenIds: [], finishReason: 'length', usage: this.usage() })));
    this.end();
  }

  /** Ends the stream with an error item (Dynamo's `LLMEngineOutput::error`), freeing whatever the engine holds. */
  private fail(message: string): void {
    if (this.ended) return;
    const { server, sink, tracker, requestId } = this.a;
    if (this.seq) server.loop.cancel(this.seq, this.a.rank);
    server.metrics.error('generate');
    this.a.counts.failed++;
    server.log.warn({ request_id: requestId }, message);
    tracker.responseBytes(sink.sendItem(llmDataItemBody({ tokenIds: [], finishReason: { error: message } })));
    this.end(false);
  }

  /** A prefill without a session: its KV leaves for the decode worker, modelled as a real-time delay. */
  private async afterTransferDelay(): Promise<void> {
    if (this.ended) return;
    const d = this.a.server.disagg!;
    const delay = transferDelayMs(this.promptLength, d.transfer);
    if (delay > 0) {
      try {
        await (this.a.server.sleep ?? realSleep)(delay, this.cancelled.signal);
      } catch {
        return; // cancelled while waiting
      }
    }
    this.endPrefill();
  }

  private async runSource(identity: HandoffIdentity): Promise<void> {
    const d = this.a.server.disagg!;
    let channel: HandoffChannel;
    try {
      channel = await d.rendezvous!.awaitDestination(identity, this.cancelled.signal);
    } catch (err) {
      return this.fail((err as Error).message);
    }
    try {
      await runSourceSession({
        channel,
        prefill: async () => {
          await this.admit(() => this.submit(true));
          if (this.ended) throw new HandoffFailed('source prefill did not complete');
        },
        promptTokens: this.promptLength,
        transfer: d.transfer,
        release: () => this.seq && this.a.server.loop.release(this.seq, this.a.rank),
        cancel: () => this.seq && this.a.server.loop.cancel(this.seq, this.a.rank),
        signal: this.cancelled.signal,
        sessionTimeoutMs: d.sessionTimeoutMs,
        sleep: this.a.server.sleep ?? realSleep,
      });
      this.endPrefill();
    } catch (err) {
      this.fail((err as Error).message);
    } finally {
      d.rendezvous!.sessionEnded();
    }
  }

  private async runDestination(channel: HandoffChannel): Promise<void> {
    const d = this.a.server.disagg!;
    const { server, rank } = this.a;
    try {
      await runDestinationSession({
        channel,
        reserve: (onReserved) => {
          // The admission slot is taken for the reservation and kept until the decode is done.
          void this.admit(() => {
            const reserved = server.loop.reserve(this.engineRequest(), (seq) => onReserved(seq.transferableTokens ?? 0));
            if (!reserved.ok) return this.fail(reserved.reason);
            this.seq = reserved.seq;
          });
          return null;
        },
        activate: () => !this.ended && this.seq !== null && server.loop.activate(this.seq, rank, this.tokenSink()),
        cancel: () => this.seq !== null && server.loop.cancel(this.seq, rank),
        signal: this.cancelled.signal,
        rendezvousTimeoutMs: d.rendezvousTimeoutMs,
        sessionTimeoutMs: d.sessionTimeoutMs,
      });
    } catch (err) {
      this.fail((err as Error).message);
    }
  }
}
