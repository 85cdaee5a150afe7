// Forward-pass statistics as Dynamo's mocker reports them to the planner (build_fpm_snapshot, vLLM core).

/** Count, sum and population variance by Welford's method, in the order values arrive (as Dynamo's WelfordAcc). */
export class Welford {
  count = 0;
  sum = 0;
  private mean = 0;
  private m2 = 0;

  add(v: number): void {
    this.count++;
    this.sum += v;
    const delta = v - this.mean;
    this.mean += delta / this.count;
    this.m2 += delta * (v - this.mean);
  }

  get variance(): number {
    return this.count === 0 ? 0 : this.m2 / this.count;
  }
}

/** One forward pass of one DP rank: what it computed and what was left waiting. */
export interface ForwardPassSnapshot {
  /** The pass's simulated duration, already divided by the speedup ratio. */
  wallTimeS: number;
  /** Requests that computed prompt tokens: their full prompt lengths, tokens computed, tokens already present. */
  scheduledPrefill: { lengths: Welford; computedTokens: number; presentTokens: number };
  /** Requests that only decoded: their sequence lengths (prompt + generated) before the pass's token. */
  scheduledDecode: Welford;
  /** Waiting requests never run: their prompt lengths. */
  queuedPrefill: Welford;
  /** Preempted requests: prompt + generated. */
  queuedDecode: Welford;
}

/** What an idle rank reports (Dynamo's 1 s heartbeat): all zero. */
export function idleForwardPass(): ForwardPassSnapshot {
  return { wallTimeS: 0, scheduledPrefill: { lengths: new Welford(), computedTokens: 0, presentTokens: 0 }, scheduledDecode: new Welford(), queuedPrefill: new Welford(), queuedDecode: new Welford() };
}
