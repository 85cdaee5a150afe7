// Dependent trace records (session turns, agentic waits): which become ready when a request ends, and when.
import type { TraceRecord } from './trace.js';

const NONE: readonly number[] = [];

export class Dependents {
  /** Per record: how many of the requests it waits for are still going. */
  private readonly waitingOn: Int32Array;
  private readonly lastEndMs: Float64Array;
  private readonly byDependency = new Map<number, number[]>();

  constructor(private readonly records: readonly TraceRecord[]) {
    this.waitingOn = new Int32Array(records.length);
    this.lastEndMs = new Float64Array(records.length);
    for (const r of records) {
      if (!r.after) continue;
      this.waitingOn[r.index] = r.after.indices.length;
      for (const i of r.after.indices) {
        const list = this.byDependency.get(i);
        if (list) list.push(r.index);
        else this.byDependency.set(i, [r.index]);
      }
    }
  }

  /**
   * Request `index` ended (finished or failed) at `atMs`: calls `ready` with each record that was
   * waiting for it last, and the time its own delay ends (trace time over `timeScale`); returns how many.
   */
  ended(index: number, atMs: number, timeScale: number, ready: (record: TraceRecord, atMs: number) => void): number {
    let count = 0;
    for (const d of this.byDependency.get(index) ?? NONE) {
      this.lastEndMs[d] = Math.max(this.lastEndMs[d], atMs);
      if (--this.waitingOn[d] > 0) continue;
      ready(this.records[d], this.lastEndMs[d] + this.records[d].after!.delayMs / timeScale);
      count++;
    }
    return count;
  }
}
