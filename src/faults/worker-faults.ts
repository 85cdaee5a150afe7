// One worker's fault plan at run time: verdicts per request, counting and logging, and the worker-level effects (crash, deregister, load and KV-event faults).
import type { Logger } from 'pino';
import type { KvEvent } from '../core/types.js';
import type { RequestFaults } from '../serving/request-faults.js';
import { FAULT_KINDS, FaultMatcher, type FaultHit, type FaultKind, type FaultPlan, type RequestFacts } from './fault-plan.js';

/** Load reports while a `load_metrics` fault holds: none (stop) or the last value before it (freeze). */
export class LoadGate {
  private mode: 'stop' | 'freeze' | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly last = new Map<number, unknown>();
  private readonly resumeListeners: Array<() => void> = [];

  hold(mode: 'stop' | 'freeze', ms: number): void {
    this.mode = mode;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.release(), ms);
    this.timer.unref();
  }

  release(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.mode === null) return;
    this.mode = null;
    // Reports resume at once with the current values, not at the next change.
    for (const l of this.resumeListeners) l();
  }

  onResume(listener: () => void): void {
    this.resumeListeners.push(listener);
  }

  /** What to publish for `rank` instead of `value`: the value, the frozen one, or undefined for nothing. */
  pass<T>(rank: number, value: T): T | undefined {
    if (this.mode === 'stop') return undefined;
    if (this.mode === 'freeze') return this.last.has(rank) ? (this.last.get(rank) as T) : undefined;
    this.last.set(rank, value);
    return value;
  }
}

type KvMode = 'drop' | 'delay' | 'duplicate' | 'gap';

/** KV-event faults on the events a faulted request's blocks produce (stored events carry their owner's key). */
export class KvEventFaults {
  private readonly byRank = new Map<number, Map<number, { mode: KvMode; ms: number | null }>>();
  /** Event ids to skip on a rank before its next events (a `gap`, once per faulted request). */
  private readonly gaps = new Map<number, number>();

  get active(): boolean {
    return this.byRank.size > 0 || this.gaps.size > 0;
  }

  register(rank: number, seqKey: number, mode: KvMode, ms: number | null): { release(): void } {
    if (mode === 'gap') {
      this.gaps.set(rank, (this.gaps.get(rank) ?? 0) + 1);
      return { release() {} };
    }
    let m = this.byRank.get(rank);
    if (!m) this.byRank.set(rank, (m = new Map()));
    m.set(seqKey, { mode, ms });
    return {
      release: () => {
        m!.delete(seqKey);
        if (m!.size === 0) this.byRank.delete(rank);
      },
    };
  }

  /**
   * One pass's events of `rank`: those to publish now (dropped ones left out, duplicated ones twice),
   * the event ids to skip before them, and delayed ones handed to `later`.
   */
  apply(rank: number, events: readonly KvEvent[], later: (ms: number, events: KvEvent[]) => void): { now: KvEvent[]; skip: number } {
    const skip = this.gaps.get(rank) ?? 0;
    this.gaps.delete(rank);
    const faulted = this.byRank.get(rank);
    if (!faulted) return { now: events as KvEvent[], skip };
    const now: KvEvent[] = [];
    const delayed = new Map<number, KvEvent[]>();
    for (const e of events) {
      const f = e.owner === undefined ? undefined : faulted.get(e.owner);
      if (!f) now.push(e);
      else if (f.mode === 'duplicate') now.push(e, e);
      else if (f.mode === 'delay') {
        const list = delayed.get(f.ms ?? 0) ?? [];
        list.push(e);
        delayed.set(f.ms ?? 0, list);
      }
      // drop: left out
    }
    for (const [ms, list] of delayed) later(ms, list);
    return { now, skip };
  }
}

/** What event publishers consult: the load gate and the KV-event faults. */
export interface PublisherFaults {
  load: LoadGate;
  kv: KvEventFaults;
}

export interface WorkerFaultsOptions {
  plan: FaultPlan;
  log: Logger;
  /** Ends the process (`crash`). */
  exit: (code: number) => void;
  /** Withdraws and restores this worker's discovery records (`deregister`). */
  withdraw: () => Promise<void>;
  restore: () => Promise<void>;
  /** Counts a fault that took effect (the faults_injected_total counter). */
  counted?: (kind: FaultKind) => void;
}

export class WorkerFaults implements RequestFaults, PublisherFaults {
  readonly load = new LoadGate();
  readonly kv = new KvEventFaults();
  private matcher: FaultMatcher;
  private planned: FaultPlan;
  private readonly fired_ = new Map<FaultKind, number>();
  private deregistered: { timer: NodeJS.Timeout | null } | null = null;
  private exit: (code: number) => void;

  constructor(private readonly o: WorkerFaultsOptions) {
    this.planned = o.plan;
    this.matcher = new FaultMatcher(o.plan);
    this.exit = o.exit;
    for (const k of FAULT_KINDS) this.fired_.set(k, 0);
  }

  get plan(): FaultPlan {
    return this.planned;
  }

  /** A new plan from the next request on; request indexes count from 0 again, and an open-ended deregister ends. */
  setPlan(plan: FaultPlan): void {
    this.planned = plan;
    this.matcher = new FaultMatcher(plan);
    if (this.deregistered && this.deregistered.timer === null) void this.reregister();
  }

  /** Faults fired so far, by kind. */
  firedByKind(): Record<string, number> {
    return Object.fromEntries(this.fired_);
  }

  resetCounts(): void {
    for (const k of FAULT_KINDS) this.fired_.set(k, 0);
  }

  next(facts: RequestFacts): FaultHit | null {
    return this.matcher.next(facts);
  }

  fired(hit: FaultHit, requestId: string): void {
    const kind = hit.action.kind;
    this.fired_.set(kind, (this.fired_.get(kind) ?? 0) + 1);
    this.o.counted?.(kind);
    this.o.log.info({ request_id: requestId, rule: hit.rule, fault: kind }, `fault injected: rule ${hit.rule} (${kind}) on request ${requestId}`);
  }

  crash(exitCode: number): void {
    this.o.log.error(`fault plan: crashing with exit code ${exitCode}`);
    // Let the log line out first; nothing else is flushed, as after a real crash.
    setImmediate(() => this.exit(exitCode));
  }

  deregister(ms: number | null): void {
    if (this.deregistered) {
      if (this.deregistered.timer) clearTimeout(this.deregistered.timer);
    } else {
      this.o.log.info(`fault plan: withdrawing this worker's discovery records${ms === null ? ' until the plan changes' : ` for ${ms} ms`}`);
      void this.o.withdraw().catch((err: Error) => this.o.log.warn(`cannot withdraw the discovery records: ${err.message}`));
    }
    const timer = ms === null ? null : setTimeout(() => void this.reregister(), ms);
    timer?.unref();
    this.deregistered = { timer };
  }

  loadMetrics(mode: 'stop' | 'freeze', ms: number): void {
    this.o.log.info(`fault plan: load metrics ${mode === 'stop' ? 'stopped' : 'frozen'} for ${ms} ms`);
    this.load.hold(mode, ms);
  }

  kvEvents(rank: number, seqKey: number, mode: KvMode, ms: number | null): { release(): void } {
    return this.kv.register(rank, seqKey, mode, ms);
  }

  /** Ends pending effects (the worker is stopping). */
  stop(): void {
    if (this.deregistered?.timer) clearTimeout(this.deregistered.timer);
    this.deregistered = null;
    this.load.release();
    this.exit = () => {};
  }

  private async reregister(): Promise<void> {
    if (!this.deregistered) return;
    this.deregistered = null;
    this.o.log.info("fault plan: restoring this worker's discovery records");
    await this.o.restore().catch((err: Error) => this.o.log.warn(`cannot restore the discovery records: ${err.message}`));
  }
}
