// Publishes Dynamo's LoadEvent per DP rank on namespace.{ns}.kv_metrics when load changes (debounced).
import type { NatsConnection } from 'nats';

/** One DP rank's load as the router and busy monitor read it. */
export interface RankLoad {
  dpRank: number;
  activeSlots: number;
  totalSlots: number;
  waiting: number;
  activeBlocks: number;
  totalBlocks: number;
  prefixHitRate: number;
}

/**
 * An f32 field as serde_json writes it (ryu): the shortest decimal that reads back as the same f32,
 * with ".0" on whole numbers, and null for NaN or infinity.
 */
export function f32Json(x: number): string {
  const f = Math.fround(x);
  if (!Number.isFinite(f)) return 'null';
  if (Number.isInteger(f) && Math.abs(f) < 1e16) return `${f}.0`;
  for (let digits = 1; digits < 9; digits++) {
    const shortest = Number(f.toPrecision(digits));
    if (Math.fround(shortest) === f) return String(shortest);
  }
  return String(Number(f.toPrecision(9)));
}

export function loadEventJson(workerId: bigint, l: RankLoad): string {
  const usage = f32Json(l.totalBlocks > 0 ? l.activeBlocks / l.totalBlocks : 0);
  return (
    `{"worker_id":${workerId},"data":{"worker_stats":{"data_parallel_rank":${l.dpRank},"request_active_slots":${l.activeSlots},` +
    `"request_total_slots":${l.totalSlots},"num_requests_waiting":${l.waiting}},"kv_stats":{"kv_active_blocks":${l.activeBlocks},` +
    `"kv_total_blocks":${l.totalBlocks},"gpu_cache_usage_perc":${usage},"gpu_prefix_cache_hit_rate":${f32Json(l.prefixHitRate)}},` +
    `"spec_decode_stats":null}}`
  );
}

/** Dynamo publishes 1 ms after the active blocks or the waiting count change. */
const DEBOUNCE_MS = 1;

export class LoadPublisher {
  private readonly encoder = new TextEncoder();
  private readonly last: Array<{ activeBlocks: number; waiting: number } | null>;
  private readonly timers: Array<NodeJS.Timeout | null>;
  published = 0;

  constructor(
    private readonly nc: NatsConnection,
    private readonly subject: string,
    private readonly workerId: bigint,
    private readonly read: (rank: number) => RankLoad,
    ranks: number,
  ) {
    this.last = Array.from({ length: ranks }, () => null);
    this.timers = Array.from({ length: ranks }, () => null);
  }

  /** Call whenever a rank's load may have changed; publishes at most once per debounce window. */
  changed(rank: number): void {
    if (this.timers[rank]) return;
    const load = this.read(rank);
    const last = this.last[rank];
    if (last && last.activeBlocks === load.activeBlocks && last.waiting === load.waiting) return;
    this.timers[rank] = setTimeout(() => {
      this.timers[rank] = null;
      this.publishNow(rank);
    }, DEBOUNCE_MS);
  }

  /** Publishes the rank's current load immediately (also used for the first value). */
  publishNow(rank: number): void {
    const load = this.read(rank);
    this.last[rank] = { activeBlocks: load.activeBlocks, waiting: load.waiting };
    if (this.nc.isClosed()) return;
    this.nc.publish(this.subject, this.encoder.encode(loadEventJson(this.workerId, load)));
    this.published++;
  }

  stop(): void {
    for (let r = 0; r < this.timers.length; r++) {
      const t = this.timers[r];
      if (t) clearTimeout(t);
      this.timers[r] = null;
    }
  }
}
