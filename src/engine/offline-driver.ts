// Drives the engine on a virtual clock: arrivals and passes as discrete events, as fast as the CPU allows.
import type { Engine, EngineRequest } from '../core/engine.js';
import type { Sequence } from '../core/sequence.js';
import type { PassResult } from '../core/scheduler.js';

export interface OfflineCallbacks {
  /** A request entered the engine (or was refused) at `atMs`. */
  onSubmit?(key: number, atMs: number, result: { ok: true; seq: Sequence; rank: number } | { ok: false; reason: string }): void;
  /** One token of `seq`, visible at `atMs` (the end of its pass). */
  onToken?(seq: Sequence, token: number, atMs: number): void;
  /** `seq` emitted its last token (or needed none) at `atMs`. */
  onFinish?(seq: Sequence, atMs: number): void;
  onPass?(rank: number, result: PassResult): void;
}

interface Arrival {
  atMs: number;
  order: number;
  request: EngineRequest;
}

/** Min-heap of arrivals ordered by time, then by scheduling order (stable and deterministic). */
class ArrivalHeap {
  private readonly items: Arrival[] = [];

  get size(): number {
    return this.items.length;
  }

  peek(): Arrival | undefined {
    return this.items[0];
  }

  push(item: Arrival): void {
    const a = this.items;
    a.push(item);
    let i = a.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(a[i], a[parent])) break;
      [a[i], a[parent]] = [a[parent], a[i]];
      i = parent;
    }
  }

  pop(): Arrival | undefined {
    const a = this.items;
    if (a.length === 0) return undefined;
    const top = a[0];
    const last = a.pop()!;
    if (a.length) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && before(a[l], a[m])) m = l;
        if (r < a.length && before(a[r], a[m])) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m], a[i]];
        i = m;
      }
    }
    return top;
  }
}

function before(x: Arrival, y: Arrival): boolean {
  return x.atMs < y.atMs || (x.atMs === y.atMs && x.order < y.order);
}

export class OfflineDriver {
  private readonly arrivals = new ArrivalHeap();
  private order = 0;
  /** When each rank finishes its current pass (it may start the next one then). */
  private readonly freeAt: number[];
  /** A rank that made no progress waits for the next arrival instead of spinning. */
  private readonly stalled: boolean[];
  passes = 0;
  nowMs = 0;

  constructor(
    private readonly engine: Engine,
    private readonly callbacks: OfflineCallbacks = {},
  ) {
    this.freeAt = engine.ranks.map(() => 0);
    this.stalled = engine.ranks.map(() => false);
  }

  /** Schedules a request to arrive at `atMs` (may be called from callbacks, e.g. closed loops). */
  schedule(atMs: number, request: EngineRequest): void {
    this.arrivals.push({ atMs, order: this.order++, request });
  }

  /** Runs until every arrival is served; returns the virtual time of the last event. */
  run(): number {
    const ranks = this.engine.ranks;
    for (;;) {
      let next = Infinity;
      const head = this.arrivals.peek();
      if (head) next = head.atMs;
      for (let r = 0; r < ranks.length; r++) {
        if (!ranks[r].idle && !this.stalled[r] && this.freeAt[r] < next) next = this.freeAt[r];
      }
      if (next === Infinity) {
        if (!this.engine.idle) throw new Error('engine stalled: requests are waiting but no pass can make progress');
        return this.nowMs;
      }
      this.nowMs = Math.max(this.nowMs, next);
      const now = this.nowMs;

      // Requests that arrive by now take part in the passes that start now.
      for (let a = this.arrivals.peek(); a && a.atMs <= now; a = this.arrivals.peek()) {
        this.arrivals.pop();
        this.submit(a.request, now);
      }

      for (let r = 0; r < ranks.length; r++) {
        const rank = ranks[r];
        if (rank.idle || this.stalled[r] || this.freeAt[r] > now) continue;
        const result = rank.step(now);
        this.passes++;
        this.freeAt[r] = result.endMs;
        if (result.scheduledTokens === 0 && result.emitted.length === 0) this.stalled[r] = true;
        this.callbacks.onPass?.(r, result);
        const { onToken, onFinish } = this.callbacks;
        const { emitted, tokens } = result;
        for (let i = 0; i < emitted.length; i++) {
          onToken?.(emitted[i], tokens[i], result.endMs);
          if (emitted[i].done) onFinish?.(emitted[i], result.endMs);
        }
      }
    }
  }

  private submit(request: EngineRequest, now: number): void {
    const result = this.engine.submit(request);
    this.callbacks.onSubmit?.(request.key, now, result);
    if (!result.ok) return;
    this.stalled[result.rank] = false;
    // A rank that sat idle starts its next pass no earlier than this arrival.
    if (this.freeAt[result.rank] < now) this.freeAt[result.rank] = now;
    if (result.seq.status === 'finished') this.callbacks.onFinish?.(result.seq, now);
  }
}
