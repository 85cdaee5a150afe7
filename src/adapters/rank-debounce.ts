// Dynamo's load debounce: per DP rank, a value goes out 1 ms after it changes, at most once per window.

/** Dynamo publishes load 1 ms after it changes. */
const LOAD_DEBOUNCE_MS = 1;

export interface RankDebounceOptions<T> {
  ranks: number;
  /** The rank's current value. */
  read(rank: number): T;
  /** Whether two values are the same load (a change of anything else alone does not trigger a publish). */
  same(a: T, b: T): boolean;
  publish(rank: number, value: T): void;
}

/** Each rank on its own timer, so no rank's value is lost to another's within a window. */
export class RankDebounce<T> {
  private readonly last: Array<T | null>;
  private readonly timers: Array<NodeJS.Timeout | null>;

  constructor(private readonly o: RankDebounceOptions<T>) {
    this.last = Array.from({ length: o.ranks }, () => null);
    this.timers = Array.from({ length: o.ranks }, () => null);
  }

  /** Call whenever the rank's value may have changed. */
  changed(rank: number): void {
    if (this.timers[rank]) return;
    const last = this.last[rank];
    if (last !== null && this.o.same(last, this.o.read(rank))) return;
    this.timers[rank] = setTimeout(() => {
      this.timers[rank] = null;
      this.publishNow(rank);
    }, LOAD_DEBOUNCE_MS);
  }

  /** Publishes the rank's value now: the first value, and whatever it is when a window closes. */
  publishNow(rank: number): void {
    const value = this.o.read(rank);
    this.last[rank] = value;
    this.o.publish(rank, value);
  }

  stop(): void {
    for (let r = 0; r < this.timers.length; r++) {
      const t = this.timers[r];
      if (t) clearTimeout(t);
      this.timers[r] = null;
    }
  }

}
