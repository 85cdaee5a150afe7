// Drives the engine in real time: one loop per DP rank, each pass sleeping until its simulated end.
import type { Clock } from '../clock/clock.js';
import type { Engine, EngineRequest, SubmitResult } from '../core/engine.js';
import type { PassResult } from '../core/scheduler.js';
import type { Sequence } from '../core/sequence.js';

/** Receives one request's output. `token` is null only for a request that needs no tokens. */
export interface TokenSink {
  emit(token: number | null, atMs: number, finished: boolean): void;
}

export interface EngineLoopHooks {
  /** Called when a pass starts, with its result (KV events are visible from pass start, as in Dynamo). */
  onPassStart?(rank: number, result: PassResult): void;
  /** Called after a pass's tokens were delivered. */
  onPassEnd?(rank: number, result: PassResult): void;
}

/** One set of hooks that calls each of `all` in turn. */
export function combineHooks(...all: Array<EngineLoopHooks | null | undefined>): EngineLoopHooks {
  const hooks = all.filter((h): h is EngineLoopHooks => !!h);
  return {
    onPassStart: (rank, result) => {
      for (const h of hooks) h.onPassStart?.(rank, result);
    },
    onPassEnd: (rank, result) => {
      for (const h of hooks) h.onPassEnd?.(rank, result);
    },
  };
}

/** Delivery overhead up to this much is absorbed instead of delaying the next pass. */
const CATCH_UP_MS = 5;

const yieldToIo = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class EngineLoop {
  private readonly sinks = new Map<Sequence, TokenSink>();
  /** Decode-side handoffs waiting for their KV reservation, with what to call once reserved. */
  private readonly reserving = new Map<Sequence, (seq: Sequence) => void>();
  private readonly wakers: Array<(() => void) | null>;
  private readonly stalled: boolean[];
  private readonly loops: Promise<void>[] = [];
  private stopped = false;
  private nextKey = 0;

  constructor(
    readonly engine: Engine,
    private readonly clock: Clock,
    private readonly hooks: EngineLoopHooks = {},
  ) {
    this.wakers = engine.ranks.map(() => null);
    this.stalled = engine.ranks.map(() => false);
  }

  start(): void {
    for (let r = 0; r < this.engine.ranks.length; r++) this.loops.push(this.runRank(r));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (let r = 0; r < this.wakers.length; r++) this.wake(r);
    await Promise.all(this.loops);
  }

  /** Live requests (admitted to the engine and not finished). */
  get activeRequests(): number {
    return this.sinks.size;
  }

  /** Hands a request to the engine; tokens arrive on `sink` at the end of each pass. */
  submit(req: Omit<EngineRequest, 'key'>, sink: TokenSink): SubmitResult {
    const result = this.engine.submit({ ...req, key: this.nextKey++ });
    if (!result.ok) return result;
    if (result.seq.status === 'finished') {
      sink.emit(null, this.clock.now(), true);
      return result;
    }
    this.sinks.set(result.seq, sink);
    this.wake(result.rank);
    return result;
  }

  /**
   * Queues a decode-side handoff (Engine.reserve); `onReserved` is called once its prompt's KV is
   * reserved (at once if it fits now). Then `activate` it when the transfer is done.
   */
  reserve(req: Omit<EngineRequest, 'key'>, onReserved: (seq: Sequence) => void): SubmitResult {
    const result = this.engine.reserve({ ...req, key: this.nextKey++ });
    if (!result.ok) return result;
    this.reserving.set(result.seq, onReserved);
    this.retryReservations(result.rank);
    return result;
  }

  /** Starts a reserved handoff: it decodes from its transferred prompt, its tokens going to `sink`. */
  activate(seq: Sequence, rank: number, sink: TokenSink): boolean {
    if (!this.engine.ranks[rank].activate(seq)) return false;
    this.sinks.set(seq, sink);
    this.wake(rank);
    return true;
  }

  /** Frees the KV a finished prefill held for its handoff. */
  release(seq: Sequence, rank: number): boolean {
    const released = this.engine.ranks[rank].release(seq);
    if (released) this.capacityFreed(rank);
    return released;
  }

  /** Stops a request at once (queued, running, held or reserved), freeing its KV blocks; no further tokens reach its sink. */
  cancel(seq: Sequence, rank: number): boolean {
    this.sinks.delete(seq);
    this.reserving.delete(seq);
    const cancelled = this.engine.ranks[rank].cancel(seq);
    if (cancelled) this.capacityFreed(rank);
    return cancelled;
  }

  /**
   * Pauses a running request (its reader stopped consuming): it produces no tokens but keeps its KV
   * blocks and batch slot until `resume` or `cancel`. False if it is not running or already paused.
   */
  pause(seq: Sequence, rank: number): boolean {
    return this.engine.ranks[rank].pause(seq);
  }

  /** Lets a paused request produce tokens again from the rank's next pass. */
  resume(seq: Sequence, rank: number): boolean {
    const resumed = this.engine.ranks[rank].resume(seq);
    if (resumed) this.wake(rank);
    return resumed;
  }

  private capacityFreed(rank: number): void {
    this.retryReservations(rank);
    this.wake(rank);
  }

  private retryReservations(rank: number): void {
    if (this.reserving.size === 0) return;
    for (const seq of this.engine.ranks[rank].retryReservations()) {
      const onReserved = this.reserving.get(seq);
      this.reserving.delete(seq);
      onReserved?.(seq);
    }
  }

  private wake(rank: number): void {
    this.stalled[rank] = false;
    const waker = this.wakers[rank];
    this.wakers[rank] = null;
    waker?.();
  }

  private async runRank(r: number): Promise<void> {
    const rank = this.engine.ranks[r];
    // End of the previous pass while the rank is busy: the next pass starts there, so the time spent
    // delivering tokens does not stretch the simulated timeline (unless the process falls behind).
    let lastEnd: number | null = null;
    while (!this.stopped) {
      if (rank.idle || this.stalled[r]) {
        lastEnd = null;
        await new Promise<void>((resolve) => (this.wakers[r] = resolve));
        continue;
      }
      const now = this.clock.now();
      const start = lastEnd !== null && now - lastEnd <= CATCH_UP_MS ? lastEnd : now;
      const result = rank.step(start);
      this.hooks.onPassStart?.(r, result);
      if (result.scheduledTokens === 0 && result.emitted.length === 0) {
        // Nothing can move until a request arrives or is cancelled.
        this.stalled[r] = true;
        lastEnd = null;
        continue;
      }
      lastEnd = result.endMs;
      if (result.endMs > this.clock.now()) await this.clock.sleepUntil(result.endMs);
      else await yieldToIo();
      const at = this.clock.now();
      const { emitted, tokens } = result;
      for (let i = 0; i < emitted.length; i++) {
        const seq = emitted[i];
        const sink = this.sinks.get(seq);
        if (!sink) continue; // cancelled while the pass ran
        const finished = seq.done;
        if (finished) this.sinks.delete(seq);
        sink.emit(tokens[i], at, finished);
      }
      this.hooks.onPassEnd?.(r, result);
      // Finished requests freed KV and batch slots that queued handoffs may be waiting for.
      this.retryReservations(r);
    }
  }
}
