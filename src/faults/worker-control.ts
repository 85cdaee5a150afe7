// The control API's model of a process's workers: settings read and changed at run time, and their request and fault counts.
import type PQueue from 'p-queue';
import type { Engine } from '../core/engine.js';
import { ControlError, type MockerControl } from '../metrics/control-api.js';
import type { RequestCounts } from '../serving/request-server.js';
import { FaultPlanError, faultPlanJson, parseFaultPlan, type FaultPlan } from './fault-plan.js';
import type { WorkerFaults } from './worker-faults.js';

export interface ControlledWorker {
  engine: Engine;
  queues: PQueue[];
  faults: WorkerFaults;
  counts: RequestCounts;
  resetCounts(): void;
}

function number(field: string, v: unknown, ok: (n: number) => boolean, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw new ControlError(field, `${field} must be ${what}, got ${JSON.stringify(v)}`);
  return v;
}

/** Every worker of the process shares the settings; each keeps its own fault-plan state and counts. */
export class WorkerControl implements MockerControl {
  private readonly workers: ControlledWorker[] = [];

  constructor(private readonly log: (line: string) => void) {}

  add(worker: ControlledWorker): () => void {
    this.workers.push(worker);
    return () => {
      const i = this.workers.indexOf(worker);
      if (i >= 0) this.workers.splice(i, 1);
    };
  }

  config(): Record<string, unknown> {
    const first = this.workers[0];
    if (!first) return {};
    const s = first.engine.setup;
    return {
      // Infinity (no delays) reads back as 0, the value that sets it.
      speedup_ratio: s.speedupRatio === Infinity ? 0 : s.speedupRatio,
      decode_speedup_ratio: s.decodeSpeedupRatio,
      latency_jitter: s.latencyJitter ?? 0,
      max_num_seqs: s.maxNumSeqs,
      faults: faultPlanJson(first.faults.plan),
    };
  }

  patchConfig(patch: Record<string, unknown>): void {
    // Everything is checked before anything changes: a bad key leaves the settings as they were.
    const changes: Array<() => void> = [];
    if ('speedup_ratio' in patch) {
      const v = number('speedup_ratio', patch.speedup_ratio, (n) => n >= 0, 'a number ≥ 0 (0 = no delays)');
      changes.push(() => this.each((e) => (e.setup.speedupRatio = v === 0 ? Infinity : v)));
    }
    if ('decode_speedup_ratio' in patch) {
      const v = number('decode_speedup_ratio', patch.decode_speedup_ratio, (n) => n > 0, 'a number > 0');
      changes.push(() => this.each((e) => (e.setup.decodeSpeedupRatio = v)));
    }
    if ('latency_jitter' in patch) {
      const v = number('latency_jitter', patch.latency_jitter, (n) => n >= 0 && n <= 1, 'a number in [0, 1]');
      changes.push(() => this.each((e) => (e.setup.latencyJitter = v)));
    }
    if ('max_num_seqs' in patch) {
      const v = number('max_num_seqs', patch.max_num_seqs, (n) => Number.isInteger(n) && n >= 1 && n <= 1 << 20, 'an integer in [1, 1048576]');
      changes.push(() => {
        for (const w of this.workers) {
          w.engine.setup.maxNumSeqs = v;
          // The admission queue and the scheduler's batch limit move together, as the flag sets both.
          for (const q of w.queues) q.concurrency = v;
        }
      });
    }
    if ('faults' in patch) {
      let plan: FaultPlan;
      try {
        plan = parseFaultPlan(patch.faults);
      } catch (err) {
        if (!(err instanceof FaultPlanError)) throw err;
        // The plan's own path, under "faults"; its message starts with that path (or, at the root, names none).
        const sep = err.field === '' || err.field.startsWith('[') ? '' : '.';
        throw new ControlError(`faults${sep}${err.field}`, err.field === '' ? `faults: ${err.message}` : `faults${sep}${err.message}`);
      }
      changes.push(() => {
        for (const w of this.workers) w.faults.setPlan(plan);
      });
    }
    for (const change of changes) change();
  }

  stats(): Record<string, unknown> {
    const requests = { received: 0, completed: 0, refused: 0, failed: 0, cancelled: 0, cut: 0 };
    const faults: Record<string, number> = {};
    let running = 0;
    let waiting = 0;
    let active = 0;
    let total = 0;
    for (const w of this.workers) {
      for (const k of Object.keys(requests) as Array<keyof RequestCounts>) requests[k] += w.counts[k];
      for (const [kind, n] of Object.entries(w.faults.firedByKind())) faults[kind] = (faults[kind] ?? 0) + n;
      w.engine.ranks.forEach((rank, r) => {
        const s = rank.snapshot();
        running += s.running;
        waiting += s.waiting + w.queues[r].size;
        active += s.activeBlocks;
        total += s.totalBlocks;
      });
    }
    return { workers: this.workers.length, requests, faults_fired: faults, running, waiting, kv_active_blocks: active, kv_total_blocks: total, kv_usage: total ? active / total : 0 };
  }

  resetStats(): void {
    for (const w of this.workers) {
      w.resetCounts();
      w.faults.resetCounts();
    }
    this.log('control API: stats reset');
  }

  private each(apply: (engine: Engine) => void): void {
    for (const w of this.workers) apply(w.engine);
  }
}
