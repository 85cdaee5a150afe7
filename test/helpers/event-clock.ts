// Discrete-event virtual time for request-path tests: sleepers (engine passes, delayed deliveries,
// stall timeouts) wake in time order once nothing else is left to run.
import type { Clock } from '../../src/clock/clock.js';

/**
 * Virtual time where sleepers wake in time order: once nothing else is left to run, the clock jumps to
 * the earliest wake-up and wakes everyone due. (VirtualClock jumps to each sleeper's own time at once, so
 * a delivery held back by a stall would drag the engine's passes along with it; here the engine keeps
 * its own timeline, as it does in real time.)
 */
export class EventClock implements Clock {
  private t = 0;
  private waiters: Array<{ at: number; wake: () => void }> = [];
  /** Sleeps asked for so far: the clock advances only after a few I/O turns without a new one. */
  private asked = 0;
  private pumping = false;

  now(): number {
    return this.t;
  }

  sleepUntil(atMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(new Error('aborted'));
      const waiter = { at: atMs, wake: resolve };
      this.waiters.push(waiter);
      this.asked++;
      signal?.addEventListener(
        'abort',
        () => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(new Error('aborted'));
        },
        { once: true },
      );
      this.pump();
    });
  }

  /** The request server's `sleep`: a cancellable wait of `ms` on this clock. */
  readonly sleep = (ms: number, signal: AbortSignal): Promise<void> => this.sleepUntil(this.t + ms, signal);

  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    let seen = -1;
    let quiet = 0;
    const turn = (): void => {
      if (this.asked !== seen) {
        seen = this.asked;
        quiet = 0;
      } else if (++quiet >= 3) {
        this.pumping = false;
        this.advance();
        return;
      }
      setImmediate(turn);
    };
    setImmediate(turn);
  }

  private advance(): void {
    if (this.waiters.length === 0) return;
    const next = Math.min(...this.waiters.map((w) => w.at));
    if (next > this.t) this.t = next;
    const due = this.waiters.filter((w) => w.at <= this.t);
    this.waiters = this.waiters.filter((w) => w.at > this.t);
    for (const w of due) w.wake();
    if (this.waiters.length) this.pump();
  }
}
