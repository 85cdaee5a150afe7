// Drives a fleet of engines on one virtual clock: arrivals, passes and timed actions as discrete events, as fast as the CPU allows.
import type { Engine, EngineRequest, SubmitResult } from '../core/engine.js';
import type { Sequence } from '../core/sequence.js';
import type { PassResult, Scheduler } from '../core/scheduler.js';

/** `worker` is the engine's index in the fleet (always 0 for a single-engine OfflineDriver). */
export interface OfflineCallbacks {
  /** `request` entered engine `worker` (or was refused) at `atMs`. */
  onSubmit?(key: number, atMs: number, result: SubmitResult, worker: number, request: EngineRequest): void;
  /** One token of `seq`, visible at `atMs` (the end of its pass). */
  onToken?(seq: Sequence, token: number, atMs: number, worker: number): void;
  /** `seq` emitted its last token (or needed none) at `atMs`. */
  onFinish?(seq: Sequence, atMs: number, worker: number): void;
  onPass?(rank: number, result: PassResult, worker: number): void;
}

/** How a timed action (FleetDriver.at) is ordered and counted. */
export interface ActionOptions {
  /**
   * Run it ahead of every arrival due at the same time: what a pass's end tells a router (a first
   * token, a finished stream) reaches it before the requests arriving at that instant are routed,
   * as in Dynamo's replay.
   */
  beforeArrivals?: boolean;
  /**
   * It only watches (a router's bookkeeping, a sampler): the run's end time, which `run` returns,
   * stays the last arrival, pass start or other action, as if it were not there.
   */
  observer?: boolean;
}

/** A request, or what builds it when it arrives (a long replay then holds only the requests in flight). */
export type Arrival = EngineRequest | (() => EngineRequest);

/** Chooses the worker (an index into the fleet) for a request arriving at `nowMs`. */
export type WorkerPicker = (request: EngineRequest, nowMs: number) => number;

/** Round-robin over `workers` (fleet indices) in the order given, starting with the first. */
export function roundRobin(workers: readonly number[]): WorkerPicker {
  if (workers.length === 0) throw new Error('round-robin over no workers');
  let next = 0;
  return () => {
    const worker = workers[next];
    next = (next + 1) % workers.length;
    return worker;
  };
}

/** An arrival (`request`) or a timed action, e.g. the end of a KV transfer. */
interface TimedEvent {
  atMs: number;
  /** 0: before the arrivals due at the same time (see FleetDriver.at); 1: in scheduling order. */
  tier: 0 | 1;
  /** An observer (see ActionOptions) does not count as activity for the run's end time. */
  observer?: boolean;
  order: number;
  request?: Arrival;
  action?: (nowMs: number) => void;
}

/** Min-heap of events ordered by time, then by scheduling order (stable and deterministic). */
class EventHeap {
  private readonly items: TimedEvent[] = [];

  get size(): number {
    return this.items.length;
  }

  peek(): TimedEvent | undefined {
    return this.items[0];
  }

  push(item: TimedEvent): void {
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

  pop(): TimedEvent | undefined {
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

function before(x: TimedEvent, y: TimedEvent): boolean {
  if (x.atMs !== y.atMs) return x.atMs < y.atMs;
  if (x.tier !== y.tier) return x.tier < y.tier;
  return x.order < y.order;
}

/**
 * Several engines (workers, each with its DP ranks) on one virtual clock. Each (worker, rank) pair
 * runs its passes back to back; arrivals go to the worker `pick` chooses; `at` runs any other
 * action at its time (before the passes that start then). Code that hands an engine work outside
 * `schedule` (activating a handoff, releasing KV) calls `wake` so an idle rank notices it.
 */
export class FleetDriver {
  private readonly events = new EventHeap();
  private order = 0;
  /** One slot per (worker, DP rank), worker-major; the arrays below are indexed by slot. */
  private readonly schedulers: Scheduler[] = [];
  private readonly slotWorker: number[] = [];
  private readonly slotRank: number[] = [];
  private readonly firstSlot: number[] = [];
  /** When each slot finishes its current pass (it may start the next one then). */
  private readonly freeAt: Float64Array;
  /** A slot that made no progress waits to be woken (an arrival, `wake`) instead of spinning (1). */
  private readonly stalled: Uint8Array;
  /** Some slot was woken since `run` last computed the earliest free slot (it must look again). */
  private woken = true;
  passes = 0;
  nowMs = 0;

  constructor(
    readonly engines: readonly Engine[],
    private readonly callbacks: OfflineCallbacks = {},
    private readonly pick: WorkerPicker = roundRobin(engines.map((_, i) => i)),
  ) {
    engines.forEach((engine, worker) => {
      this.firstSlot.push(this.schedulers.length);
      engine.ranks.forEach((scheduler, rank) => {
        this.schedulers.push(scheduler);
        this.slotWorker.push(worker);
        this.slotRank.push(rank);
      });
    });
    this.freeAt = new Float64Array(this.schedulers.length);
    this.stalled = new Uint8Array(this.schedulers.length);
  }

  /** Schedules a request to arrive at `atMs` (may be called from callbacks, e.g. closed loops). */
  schedule(atMs: number, request: Arrival): void {
    this.events.push({ atMs, tier: 1, order: this.order++, request });
  }

  /** Runs `action` at `atMs`, after the events scheduled earlier for that time (see ActionOptions) and before its passes. */
  at(atMs: number, action: (nowMs: number) => void, opts: ActionOptions = {}): void {
    this.events.push({ atMs, tier: opts.beforeArrivals ? 0 : 1, observer: opts.observer, order: this.order++, action });
  }

  /** Engine `worker` (only `rank`, if given) may have new work: idle ranks start a pass now, busy ones after theirs. */
  wake(worker: number, rank?: number): void {
    const first = this.firstSlot[worker];
    const ranks = this.engines[worker].ranks.length;
    for (let r = rank ?? 0, end = rank === undefined ? ranks : rank + 1; r < end; r++) {
      const slot = first + r;
      this.stalled[slot] = 0;
      if (this.freeAt[slot] < this.nowMs) this.freeAt[slot] = this.nowMs;
    }
    this.woken = true;
  }

  /** Runs until every event is handled and every engine is idle; returns the virtual time of the last arrival, pass start or action. */
  run(): number {
    const schedulers = this.schedulers;
    const slots = schedulers.length;
    const { freeAt, stalled } = this;
    // The earliest time a busy slot is free: computed while stepping, rescanned only after a wake.
    let earliestFree = Infinity;
    // The last arrival, pass start or (non-observer) action: what `run` returns.
    let lastActive = this.nowMs;
    this.woken = true;
    for (;;) {
      if (this.woken) {
        this.woken = false;
        earliestFree = Infinity;
        for (let s = 0; s < slots; s++) {
          if (!schedulers[s].idle && !stalled[s] && freeAt[s] < earliestFree) earliestFree = freeAt[s];
        }
      }
      let next = earliestFree;
      const head = this.events.peek();
      if (head && head.atMs < next) next = head.atMs;
      if (next === Infinity) {
        const busy = this.engines.findIndex((e) => !e.idle);
        if (busy >= 0) {
          const which = this.engines.length > 1 ? ` (worker ${busy})` : '';
          throw new Error(`engine stalled${which}: requests are waiting but no pass can make progress`);
        }
        return lastActive;
      }
      this.nowMs = Math.max(this.nowMs, next);
      const now = this.nowMs;

      // Requests that arrive by now (and actions due now) take part in the passes that start now.
      for (let e = this.events.peek(); e && e.atMs <= now; e = this.events.peek()) {
        this.events.pop();
        if (!e.observer) lastActive = now;
        if (e.request) this.submit(typeof e.request === 'function' ? e.request() : e.request, now);
        else e.action!(now);
      }

      earliestFree = Infinity;
      for (let s = 0; s < slots; s++) {
        const scheduler = schedulers[s];
        if (scheduler.idle || stalled[s]) continue;
        if (freeAt[s] > now) {
          if (freeAt[s] < earliestFree) earliestFree = freeAt[s];
          continue;
        }
        const result = scheduler.step(now);
        this.passes++;
        lastActive = now;
        freeAt[s] = result.endMs;
        if (result.scheduledTokens === 0 && result.emitted.length === 0) stalled[s] = 1;
        const worker = this.slotWorker[s];
        this.callbacks.onPass?.(this.slotRank[s], result, worker);
        const { onToken, onFinish } = this.callbacks;
        const { emitted, tokens } = result;
        for (let i = 0; i < emitted.length; i++) {
          onToken?.(emitted[i], tokens[i], result.endMs, worker);
          if (emitted[i].done) onFinish?.(emitted[i], result.endMs, worker);
        }
        if (!stalled[s] && !scheduler.idle && result.endMs < earliestFree) earliestFree = result.endMs;
      }
    }
  }

  private submit(request: EngineRequest, now: number): void {
    const worker = this.pick(request, now);
    const result = this.engines[worker].submit(request);
    this.callbacks.onSubmit?.(request.key, now, result, worker, request);
    if (!result.ok) return;
    // A rank that sat idle starts its next pass no earlier than this arrival.
    this.wake(worker, result.rank);
    if (result.seq.status === 'finished') this.callbacks.onFinish?.(result.seq, now, worker);
  }
}

/** The single-engine driver (replay and the tests): a fleet of one. */
export class OfflineDriver extends FleetDriver {
  constructor(engine: Engine, callbacks: OfflineCallbacks = {}) {
    super([engine], callbacks);
  }
}
