// The replay's per-request results as the simulation reports them: arrival, tokens, finish or failure.
import type { SubmitResult } from '../core/engine.js';
import type { Sequence } from '../core/sequence.js';
import { roundMs, type RequestResult } from './report.js';
import type { TraceRecord } from './trace.js';

export class ResultBook {
  readonly results: RequestResult[];
  /** Requests that ended (finished or failed). */
  ended = 0;

  /**
   * `fleet` rows name their worker, `disagg` rows their pools' workers and handoff times (other rows
   * keep the shape they always had). `onEnded` hears of every request's end, once.
   */
  constructor(
    records: readonly TraceRecord[],
    shape: { fleet: boolean; disagg: boolean },
    private readonly onEnded: (key: number, atMs: number) => void,
  ) {
    this.results = records.map((r) => ({
      index: r.index,
      arrival_ms: 0,
      first_token_ms: null,
      finish_ms: null,
      ttft_ms: null,
      mean_itl_ms: null,
      e2e_ms: null,
      input_tokens: r.inputLength,
      output_tokens: 0,
      cached_tokens: 0,
      preemptions: 0,
      dp_rank: null,
      ...(shape.fleet ? { worker: null } : {}),
      ...(shape.disagg ? { prefill_worker: null, decode_worker: null, prefill_done_ms: null, transfer_ms: null, decode_start_ms: null } : {}),
    }));
  }

  /** The request entered an engine (or was refused) at `atMs`. */
  submitted(key: number, atMs: number, result: SubmitResult): void {
    const r = this.results[key];
    r.arrival_ms = roundMs(atMs);
    if (result.ok) r.dp_rank = result.rank;
    else this.fail(key, atMs, result.reason);
  }

  /** Records a token of `seq`; true when it was the first. */
  token(seq: Sequence, atMs: number): boolean {
    const r = this.results[seq.key];
    if (r.first_token_ms !== null) return false;
    r.first_token_ms = roundMs(atMs);
    r.ttft_ms = roundMs(atMs - r.arrival_ms);
    return true;
  }

  /** `seq` emitted its last token; `cached` and `preemptions` may include a prefill worker's share. */
  finish(seq: Sequence, atMs: number, cached = seq.cachedTokens ?? 0, preemptions = seq.preemptions): void {
    const r = this.results[seq.key];
    r.finish_ms = roundMs(atMs);
    r.e2e_ms = roundMs(atMs - r.arrival_ms);
    r.output_tokens = seq.generated;
    r.cached_tokens = cached;
    r.preemptions = preemptions;
    if (r.first_token_ms !== null && seq.generated > 1) r.mean_itl_ms = roundMs((atMs - r.first_token_ms) / (seq.generated - 1));
    this.end(seq.key, atMs);
  }

  fail(key: number, atMs: number, reason: string): void {
    this.results[key].error = reason;
    this.end(key, atMs);
  }

  private end(key: number, atMs: number): void {
    this.ended++;
    this.onEnded(key, atMs);
  }
}
