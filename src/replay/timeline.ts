// Samples each worker's running and waiting requests and KV usage over simulated time, for the report.
import type { Engine } from '../core/engine.js';
import type { Timeline } from './report-data.js';

/** Samples kept at most; past this the resolution halves (every other sample goes, the interval doubles). */
const MAX_SAMPLES = 512;

/**
 * Fixed-interval samples whose interval adapts to a run of unknown length: it starts fine and
 * doubles whenever the samples would exceed MAX_SAMPLES, so any run ends with 256–512 of them.
 */
export class TimelineSampler {
  private readonly timeline: Timeline;
  private intervalMs: number;

  constructor(
    private readonly engines: readonly Engine[],
    initialIntervalMs: number,
  ) {
    this.intervalMs = Math.max(initialIntervalMs, 1e-3);
    this.timeline = { t_ms: [], workers: engines.map(() => ({ running: [], waiting: [], kv_usage: [] })) };
  }

  /** When the next sample is due, after one taken at `nowMs`. */
  nextAt(nowMs: number): number {
    return nowMs + this.intervalMs;
  }

  sample(nowMs: number): void {
    if (this.timeline.t_ms.length >= MAX_SAMPLES) this.halve();
    this.timeline.t_ms.push(nowMs);
    this.engines.forEach((engine, w) => {
      let running = 0;
      let waiting = 0;
      let active = 0;
      let total = 0;
      for (const rank of engine.ranks) {
        const s = rank.snapshot();
        running += s.running;
        waiting += s.waiting;
        active += s.activeBlocks;
        total += s.totalBlocks;
      }
      const series = this.timeline.workers[w];
      series.running.push(running);
      series.waiting.push(waiting);
      series.kv_usage.push(total > 0 ? Math.round((active / total) * 1e4) / 1e4 : 0);
    });
  }

  result(): Timeline {
    return this.timeline;
  }

  private halve(): void {
    const keep = <T>(a: T[]): T[] => a.filter((_, i) => i % 2 === 0);
    this.timeline.t_ms = keep(this.timeline.t_ms);
    for (const w of this.timeline.workers) {
      w.running = keep(w.running);
      w.waiting = keep(w.waiting);
      w.kv_usage = keep(w.kv_usage);
    }
    this.intervalMs *= 2;
  }
}
