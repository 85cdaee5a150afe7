// Per-request warnings off the hot path: at most a few lines per second per kind, the rest counted
// by reason and summarised every few seconds.
import type { Logger } from 'pino';

/** The families of per-request warnings that a flood of bad input can produce. */
export type WarningKind = 'malformed-request' | 'refusal' | 'response-stream';

export const WARNING_LIMITS = {
  /** Lines logged as they happen, per kind and second. */
  perSecond: 10,
  /** How often suppressed lines are summarised while suppression lasts. */
  summaryEveryMs: 5000,
  /** Reasons counted separately per kind; the rest are counted as "other". */
  maxReasons: 16,
} as const;

export interface WarningLimiterOptions {
  /** Where summaries go (the per-request lines go to the logger each caller passes). */
  log: Logger;
  perSecond?: number;
  summaryEveryMs?: number;
  /** Milliseconds (default Date.now). */
  now?: () => number;
  /** Runs `tick` every `ms` until the returned function is called (default: an unref'd setInterval). */
  every?: (ms: number, tick: () => void) => () => void;
}

interface KindState {
  /** The second (floor(now / 1000)) the count is for. */
  second: number;
  logged: number;
  suppressed: number;
  byReason: Map<string, number>;
}

/** A stable, bounded label for a warning's reason: the text before its first ': ', numbers as N. */
export function reasonOf(message: string): string {
  const head = message.split(': ')[0];
  return head.replace(/\d+/g, 'N').slice(0, 80);
}

const defaultEvery = (ms: number, tick: () => void): (() => void) => {
  const timer = setInterval(tick, ms);
  timer.unref();
  return () => clearInterval(timer);
};

/**
 * Rate-limits per-request warning lines: the first `perSecond` of each kind in every second are
 * logged as they happen, the rest are counted by reason and summarised (one warn line per kind)
 * every `summaryEveryMs` while suppression lasts, and once more by `stop()`. A flood of bad requests
 * thus costs a few lines per second instead of one synchronous write per request.
 */
export class WarningLimiter {
  private readonly kinds = new Map<WarningKind, KindState>();
  private readonly perSecond: number;
  private readonly summaryEveryMs: number;
  private readonly now: () => number;
  private readonly every: (ms: number, tick: () => void) => () => void;
  /** Stops the summary timer; set while something is suppressed. */
  private stopTimer: (() => void) | null = null;
  private windowStart = 0;

  constructor(private readonly o: WarningLimiterOptions) {
    this.perSecond = o.perSecond ?? WARNING_LIMITS.perSecond;
    this.summaryEveryMs = o.summaryEveryMs ?? WARNING_LIMITS.summaryEveryMs;
    this.now = o.now ?? Date.now;
    this.every = o.every ?? defaultEvery;
  }

  /**
   * Logs `msg` (with `obj`) at warn level on `log`, unless this kind already had its lines this
   * second; then it is counted under `reason` for the next summary.
   */
  warn(kind: WarningKind, reason: string, log: Logger, obj: object | undefined, msg: string): void {
    const now = this.now();
    const second = Math.floor(now / 1000);
    let s = this.kinds.get(kind);
    if (!s) this.kinds.set(kind, (s = { second, logged: 0, suppressed: 0, byReason: new Map() }));
    if (s.second !== second) {
      s.second = second;
      s.logged = 0;
    }
    if (s.logged < this.perSecond) {
      s.logged++;
      if (obj === undefined) log.warn(msg);
      else log.warn(obj, msg);
      return;
    }
    if (s.suppressed === 0 && this.stopTimer === null) {
      this.windowStart = now;
      this.stopTimer = this.every(this.summaryEveryMs, () => this.summarize());
    }
    s.suppressed++;
    const key = s.byReason.has(reason) || s.byReason.size < WARNING_LIMITS.maxReasons ? reason : 'other';
    s.byReason.set(key, (s.byReason.get(key) ?? 0) + 1);
  }

  /** Lines suppressed since the last summary, per kind (for tests and diagnostics). */
  suppressed(kind: WarningKind): number {
    return this.kinds.get(kind)?.suppressed ?? 0;
  }

  /**
   * Logs one summary line per kind with suppressed lines and resets the counts; the timer stops once
   * a period passes with nothing suppressed.
   */
  summarize(): void {
    const now = this.now();
    const seconds = Math.max(1, Math.round((now - this.windowStart) / 1000));
    let any = false;
    for (const [kind, s] of this.kinds) {
      if (s.suppressed === 0) continue;
      any = true;
      const reasons = [...s.byReason].sort((a, b) => b[1] - a[1]).map(([reason, n]) => `${reason} ×${n}`);
      this.o.log.warn(`suppressed ${s.suppressed} ${kind} warnings in the last ${seconds} s: ${reasons.join(', ')}`);
      s.suppressed = 0;
      s.byReason.clear();
    }
    this.windowStart = now;
    if (!any) {
      this.stopTimer?.();
      this.stopTimer = null;
    }
  }

  /** Summarises what is still suppressed and stops the timer. */
  stop(): void {
    this.summarize();
    this.stopTimer?.();
    this.stopTimer = null;
  }
}

/** `limiter.warn(…)` when there is a limiter, else a plain warn line. */
export function limitedWarn(limiter: WarningLimiter | undefined, kind: WarningKind, reason: string, log: Logger, obj: object | undefined, msg: string): void {
  if (limiter) limiter.warn(kind, reason, log, obj, msg);
  else if (obj === undefined) log.warn(msg);
  else log.warn(obj, msg);
}
