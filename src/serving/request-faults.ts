// What the request path asks of a worker's fault plan: a verdict per request, and the worker-level effects it cannot cause itself.
import type { FaultAction, FaultHit, RequestFacts } from '../faults/fault-plan.js';

export type { FaultAction, FaultHit, RequestFacts };

export interface RequestFaults {
  /** The verdict for the next well-formed request on this worker (arrival order), or null. */
  next(facts: RequestFacts): FaultHit | null;
  /** A hit took effect on request `requestId` (counted and logged by the owner). */
  fired(hit: FaultHit, requestId: string): void;
  /** `crash`: ends the process with `exitCode`. */
  crash(exitCode: number): void;
  /** `deregister`: withdraws the worker's discovery records for `ms` (null: until the plan changes). */
  deregister(ms: number | null): void;
  /** `load_metrics`: stops or freezes the worker's load reports for `ms`. */
  loadMetrics(mode: 'stop' | 'freeze', ms: number): void;
  /** `kv_events`: applies `mode` to the KV events of the engine sequence `seqKey` on `rank` until `release` is called. */
  kvEvents(rank: number, seqKey: number, mode: 'drop' | 'delay' | 'duplicate' | 'gap', ms: number | null): { release(): void };
}

/** When a token (1-based `number`, made at `atMs`) of a stalled or slowed request reaches the frontend. */
export function deliveryTime(action: FaultAction | null, arrivalMs: number, number: number, atMs: number): number {
  if (action?.kind === 'stall') return number >= action.beforeToken ? atMs + action.ms : atMs;
  if (action?.kind === 'slow') return arrivalMs + (atMs - arrivalMs) * action.factor;
  return atMs;
}
