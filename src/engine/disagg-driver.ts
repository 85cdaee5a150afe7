// Disaggregated prefill/decode on one virtual clock: Dynamo's vLLM handoff (SourceFirst) between two engine pools.
import type { Engine, EngineRequest, SubmitResult } from '../core/engine.js';
import { transferDelayMs, transferTokens, type KvTransferSettings } from '../core/kv-transfer.js';
import type { PassResult } from '../core/scheduler.js';
import type { Sequence } from '../core/sequence.js';
import { FleetDriver, roundRobin, type ActionOptions, type Arrival, type WorkerPicker } from './offline-driver.js';

export type Pool = 'prefill' | 'decode';

/** Workers are numbered within their pool (prefill 0..P-1, decode 0..D-1). */
export interface DisaggCallbacks {
  /**
   * The request reached prefill worker `prefillWorker` (or was refused there) at `atMs`. A request
   * with nothing to decode (0 output tokens) skips both pools and finishes here, as it would on an
   * aggregated worker: `prefillWorker` is null and `onFinish` follows.
   */
  onSubmit?(key: number, atMs: number, result: SubmitResult, prefillWorker: number | null): void;
  /** The prefill worker emitted its (hidden) token at `atMs`; the prompt's KV stays held there. */
  onPrefillDone?(seq: Sequence, atMs: number, prefillWorker: number): void;
  /** The chosen decode worker refused the request (it can never fit there); its prefill KV is released. */
  onDecodeRefused?(key: number, atMs: number, reason: string, decodeWorker: number): void;
  /** The decode worker reserved the prompt's KV at `atMs`; the transfer takes `delayMs` (real model time). */
  onTransfer?(seq: Sequence, atMs: number, delayMs: number, decodeWorker: number): void;
  /** The transfer is done: the decode sequence holds the prompt's KV and queues for its first decode step. */
  onActivate?(seq: Sequence, atMs: number, decodeWorker: number): void;
  /** A decode token (prefill tokens are hidden, as in Dynamo). */
  onToken?(seq: Sequence, token: number, atMs: number, decodeWorker: number): void;
  onFinish?(seq: Sequence, atMs: number, decodeWorker: number): void;
  onPass?(rank: number, result: PassResult, pool: Pool, worker: number): void;
}

export interface DisaggOptions {
  /** Prefill placement among 0..P-1 (default: round-robin, its own rotation). */
  pickPrefill?: WorkerPicker;
  /** Decode placement among 0..D-1, asked when the prefill is done (default: round-robin, its own rotation). */
  pickDecode?: WorkerPicker;
}

/** One request between its prefill token and its activation on a decode worker. */
interface Handoff {
  prefillSeq: Sequence;
  prefillWorker: number;
  prefillRank: number;
  /** The original request (full output length) with prompt arrays of its own. */
  decodeRequest: EngineRequest;
  decodeSeq: Sequence | null;
  decodeWorker: number;
  decodeRank: number;
}

/**
 * Each request: prefill on a prefill worker, which emits one hidden token and holds the KV; at that
 * token's time, a decode worker reserves the prompt's KV (waiting for capacity and a batch slot if
 * need be); after the transfer delay the decode worker activates it (prompt already computed) and
 * the prefill worker releases its KV. The fleet is [prefill 0..P-1, decode 0..D-1].
 */
export class DisaggDriver {
  private readonly fleet: FleetDriver;
  private readonly pickDecode: WorkerPicker;
  private readonly prefillCount: number;
  /** Handoffs by their prefill sequence (until reserved) and by their decode sequence (until activated). */
  private readonly byPrefillSeq = new Map<Sequence, Handoff>();
  private readonly byDecodeSeq = new Map<Sequence, Handoff>();
  /** Handoffs queued for decode KV, per decode worker and rank: only those ranks retry after a pass. */
  private readonly queued: number[][];

  constructor(
    prefill: readonly Engine[],
    private readonly decode: readonly Engine[],
    private readonly transfer: KvTransferSettings,
    private readonly callbacks: DisaggCallbacks = {},
    options: DisaggOptions = {},
  ) {
    if (prefill.length === 0 || decode.length === 0) throw new Error('disaggregation needs at least one prefill and one decode worker');
    const P = prefill.length;
    this.prefillCount = P;
    const pickPrefill = options.pickPrefill ?? roundRobin(prefill.map((_, i) => i));
    this.pickDecode = options.pickDecode ?? roundRobin(decode.map((_, i) => i));
    this.queued = decode.map((e) => e.ranks.map(() => 0));
    this.fleet = new FleetDriver(
      [...prefill, ...decode],
      {
        onSubmit: (key, atMs, result, worker, request) => this.submitted(key, atMs, result, worker, request),
        onToken: (seq, token, atMs, worker) => {
          if (worker >= P) this.callbacks.onToken?.(seq, token, atMs, worker - P);
        },
        onFinish: (seq, atMs, worker) => this.finished(seq, atMs, worker),
        onPass: (rank, result, worker) => this.passed(rank, result, worker),
      },
      (request, nowMs) => (request.maxTokens === 0 ? P + this.pickDecode(request, nowMs) : pickPrefill(request, nowMs)),
    );
  }

  get nowMs(): number {
    return this.fleet.nowMs;
  }

  get passes(): number {
    return this.fleet.passes;
  }

  /** Schedules a request to arrive at `atMs` (may be called from callbacks, e.g. closed loops). */
  schedule(atMs: number, arrival: Arrival): void {
    // The prefill stage keeps the KV for the handoff; its engine emits exactly one token.
    this.fleet.schedule(atMs, () => {
      const request = typeof arrival === 'function' ? arrival() : arrival;
      return request.maxTokens === 0 ? request : { ...request, holdOnFinish: true };
    });
  }

  /** Runs `action` at `atMs` on the shared clock (see FleetDriver.at). */
  at(atMs: number, action: (nowMs: number) => void, opts: ActionOptions = {}): void {
    this.fleet.at(atMs, action, opts);
  }

  /** Runs until every request is decoded (or refused); returns the virtual time of the last event. */
  run(): number {
    const endMs = this.fleet.run();
    const waiting = this.byPrefillSeq.size + this.byDecodeSeq.size;
    if (waiting > 0) throw new Error(`disaggregated replay stalled: ${waiting} handoffs never got decode KV`);
    return endMs;
  }

  private submitted(key: number, atMs: number, result: SubmitResult, worker: number, request: EngineRequest): void {
    const P = this.prefillCount;
    // A 0-token request was sent straight to a decode worker, which finishes it at once.
    if (worker >= P) {
      this.callbacks.onSubmit?.(key, atMs, result, null);
      return;
    }
    if (result.ok) {
      this.byPrefillSeq.set(result.seq, {
        prefillSeq: result.seq,
        prefillWorker: worker,
        prefillRank: result.rank,
        decodeRequest: decodeRequestOf(request),
        decodeSeq: null,
        decodeWorker: -1,
        decodeRank: -1,
      });
    }
    this.callbacks.onSubmit?.(key, atMs, result, worker);
  }

  private finished(seq: Sequence, atMs: number, worker: number): void {
    const P = this.prefillCount;
    if (worker >= P) {
      this.callbacks.onFinish?.(seq, atMs, worker - P);
      return;
    }
    const handoff = this.byPrefillSeq.get(seq)!;
    this.callbacks.onPrefillDone?.(seq, atMs, worker);
    // The token is visible at the end of the pass (`atMs`, still ahead of the fleet's clock): the
    // decode side reserves then, against the decode pool as it is at that time.
    this.fleet.at(atMs, (now) => this.reserve(handoff, now));
  }

  private passed(rank: number, result: PassResult, worker: number): void {
    const P = this.prefillCount;
    if (worker < P) {
      this.callbacks.onPass?.(rank, result, 'prefill', worker);
      return;
    }
    const d = worker - P;
    this.callbacks.onPass?.(rank, result, 'decode', d);
    // Finished sequences free KV and batch slots when the pass ends: queued reservations retry then.
    if (this.queued[d][rank] > 0) this.fleet.at(result.endMs, (now) => this.retry(d, rank, now));
  }

  private reserve(h: Handoff, now: number): void {
    const d = this.pickDecode(h.decodeRequest, now);
    const result = this.decode[d].reserve(h.decodeRequest);
    this.byPrefillSeq.delete(h.prefillSeq);
    if (!result.ok) {
      this.releaseSource(h);
      this.callbacks.onDecodeRefused?.(h.prefillSeq.key, now, result.reason, d);
      return;
    }
    h.decodeSeq = result.seq;
    h.decodeWorker = d;
    h.decodeRank = result.rank;
    this.byDecodeSeq.set(result.seq, h);
    this.queued[d][result.rank]++;
    this.retry(d, result.rank, now);
  }

  /** Reservations that fit now start their transfers (oldest first, as the scheduler grants them). */
  private retry(d: number, rank: number, now: number): void {
    const { timingMode } = this.transfer;
    for (const seq of this.decode[d].ranks[rank].retryReservations()) {
      this.queued[d][rank]--;
      const h = this.byDecodeSeq.get(seq)!;
      // Real model milliseconds: Dynamo does not divide the transfer by the speedup ratio either.
      const delayMs = transferDelayMs(transferTokens(timingMode, seq.promptLength, seq.transferableTokens), this.transfer);
      this.callbacks.onTransfer?.(seq, now, delayMs, d);
      this.fleet.at(now + delayMs, (t) => this.activate(h, t));
    }
  }

  private activate(h: Handoff, now: number): void {
    const seq = h.decodeSeq!;
    this.byDecodeSeq.delete(seq);
    this.decode[h.decodeWorker].ranks[h.decodeRank].activate(seq);
    this.fleet.wake(this.prefillCount + h.decodeWorker, h.decodeRank);
    this.callbacks.onActivate?.(seq, now, h.decodeWorker);
    this.releaseSource(h);
  }

  /** Frees the prefill worker's copy of the KV; a rank blocked on that KV may admit again. */
  private releaseSource(h: Handoff): void {
    this.fleet.engines[h.prefillWorker].ranks[h.prefillRank].release(h.prefillSeq);
    this.fleet.wake(h.prefillWorker, h.prefillRank);
  }
}

/**
 * The request the decode worker reserves: full output length, no hold, DP rank left to the decode
 * engine, and prompt arrays of its own, copied before any pass runs (a Sequence takes ownership of
 * its prompt arrays and appends to them as it generates).
 */
function decodeRequestOf(request: EngineRequest): EngineRequest {
  const { promptBlocks, holdOnFinish: _hold, dpRank: _rank, ...rest } = request;
  if (!promptBlocks) return rest;
  return { ...rest, promptBlocks: { local: promptBlocks.local.slice(), seq: promptBlocks.seq.slice(), tail: promptBlocks.tail.slice() } };
}
