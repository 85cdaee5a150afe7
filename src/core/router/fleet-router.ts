// Routing a fleet of workers: the router interface and Dynamo's load-blind modes (round-robin, random, least-loaded).
import { createRng, type Rng } from '../random.js';
import type { KvEvent } from '../types.js';
import { selectCandidate } from './selection.js';

/** What a router sees of a request. */
export interface RouteRequest {
  key: number;
  promptLength: number;
  /**
   * Sequence hashes of the prompt's full KV blocks, in order (only the KV router reads them; a
   * replay-private block, which no other request shares, may stand as any value no worker stores).
   */
  blockHashes(): readonly bigint[];
}

/** Where a request goes: a worker (fleet index) and, when the router chooses one, its DP rank. */
export interface RoutingTarget {
  worker: number;
  /** null: the worker deals its DP ranks round-robin itself. */
  rank: number | null;
}

/**
 * A router over a fleet of `workers` workers. The fleet tells it what the real router learns:
 * KV events as workers publish them, a request's first token, and its end (finished, failed or
 * refused) — every routed request ends exactly once.
 */
export interface FleetRouter {
  readonly name: string;
  route(request: RouteRequest, nowMs: number): RoutingTarget;
  onKvEvents?(worker: number, events: readonly KvEvent[]): void;
  onFirstToken?(key: number): void;
  onEnd?(key: number): void;
  /** What the router itself measured, for the summary (the KV router: the overlap it saw). */
  stats?(): Record<string, number>;
}

/** Dynamo's RoundRobin: worker 0, 1, …, n−1, 0, … */
export class RoundRobinRouter implements FleetRouter {
  readonly name = 'round-robin';
  private next = 0;

  constructor(private readonly workers: number) {
    if (workers < 1) throw new Error('a fleet needs at least one worker');
  }

  route(): RoutingTarget {
    const worker = this.next;
    this.next = (this.next + 1) % this.workers;
    return { worker, rank: null };
  }
}

/** Dynamo's Random: a uniform worker per request (seeded here, so a replay repeats). */
export class RandomRouter implements FleetRouter {
  readonly name = 'random';
  private readonly rng: Rng;

  constructor(
    private readonly workers: number,
    seed: number,
  ) {
    this.rng = createRng(seed);
  }

  route(): RoutingTarget {
    return { worker: this.rng.nextInt(this.workers), rank: null };
  }
}

/**
 * Dynamo's LeastLoaded: the worker with the fewest requests in flight through this router (counted
 * up at routing, down at the end of the stream); ties go to a uniformly chosen one of the tied
 * workers by reservoir sampling, as Dynamo's `select_exact_min_and_increment` does.
 */
export class LeastLoadedRouter implements FleetRouter {
  readonly name = 'least-loaded';
  private readonly inFlight: Int32Array;
  private readonly workerOf = new Map<number, number>();
  private readonly rng: Rng;

  constructor(workers: number, seed: number) {
    this.inFlight = new Int32Array(workers);
    this.rng = createRng(seed);
  }

  route(request: RouteRequest): RoutingTarget {
    const best = selectCandidate(this.inFlight, 0, this.rng);
    this.inFlight[best]++;
    this.workerOf.set(request.key, best);
    return { worker: best, rank: null };
  }

  onEnd(key: number): void {
    const worker = this.workerOf.get(key);
    if (worker === undefined) return;
    this.workerOf.delete(key);
    this.inFlight[worker]--;
  }

  /** Requests in flight per worker (tests). */
  loads(): number[] {
    return Array.from(this.inFlight);
  }
}
