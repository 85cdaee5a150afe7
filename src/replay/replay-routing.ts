// The replay's routers: built from the flags, shown each request, and told what a pass's end shows.
import type { EngineRequest } from '../core/engine.js';
import type { WorkerPicker } from '../engine/offline-driver.js';
import { sequenceHashes, type Xxh3 } from '../core/hash.js';
import { mixSeed } from '../core/random.js';
import { LeastLoadedRouter, RandomRouter, RoundRobinRouter, type FleetRouter, type RouteRequest } from '../core/router/fleet-router.js';
import { KvRouter, poolRouterOptions, type KvRouterOptions } from '../core/router/kv-router.js';
import type { ReplayConfig } from '../config.js';

/** Keeps the router's random stream apart from the engines' (both come from --seed). */
const ROUTER_SEED_SALT = 0x726f7574;

/**
 * The router for an aggregated fleet, or for one pool of a disaggregated replay (each pool has its
 * own, with its own random stream; the KV router takes Dynamo's per-pool settings).
 */
export function createRouter(
  config: Pick<ReplayConfig, 'router' | 'kvOverlapScoreWeight' | 'routerTemperature' | 'engine'>,
  workers: number,
  pool: 'aggregated' | 'prefill' | 'decode' = 'aggregated',
): FleetRouter {
  const seed = pool === 'aggregated' ? mixSeed(config.engine.seed, ROUTER_SEED_SALT) : mixSeed(config.engine.seed, ROUTER_SEED_SALT, pool === 'prefill' ? 1 : 2);
  switch (config.router) {
    case 'round-robin':
      return new RoundRobinRouter(workers);
    case 'random':
      return new RandomRouter(workers, seed);
    case 'least-loaded':
      return new LeastLoadedRouter(workers, seed);
    case 'kv': {
      const opts: KvRouterOptions = {
        workers,
        ranksPerWorker: config.engine.dataParallelSize,
        blockSize: config.engine.blockSize,
        overlapScoreWeight: config.kvOverlapScoreWeight,
        temperature: config.routerTemperature,
        seed,
      };
      return new KvRouter(pool === 'aggregated' ? opts : poolRouterOptions(pool, opts));
    }
  }
}

/**
 * The router's view of an engine request. Block hashes come with the request when the replay
 * built them (trace blocks tiled by KV blocks) and are computed from its tokens otherwise; with
 * prefix caching off (`hasher` null) there are none, as no worker announces any block.
 */
export function routeRequest(request: EngineRequest, hasher: Xxh3 | null, blockSize: number): RouteRequest {
  return {
    key: request.key,
    promptLength: request.promptLength,
    blockHashes: () => {
      if (hasher === null) return [];
      if (request.promptBlocks) return request.promptBlocks.seq;
      if (request.promptTokens) return sequenceHashes(hasher, request.promptTokens, blockSize).seq;
      return [];
    },
  };
}

/** A fleet driver's picker that asks `router` (and puts the DP rank it chose on the request). */
export function routerPicker(router: FleetRouter, hasher: Xxh3 | null, blockSize: number): WorkerPicker {
  return (request, nowMs) => {
    const target = router.route(routeRequest(request, hasher, blockSize), nowMs);
    if (target.rank !== null) request.dpRank = target.rank;
    return target.worker;
  };
}

/** What a router hears of a request after routing it. */
export interface RouterNews {
  firstToken(key: number, atMs: number): void;
  end(key: number, atMs: number): void;
}

/**
 * Tells a router what a pass's end shows — first tokens and finished streams — when the pass ends
 * (not when the simulation computes it, at its start): one timed action per pass, given to `at`,
 * which must run it before same-time arrivals. Null when the router does not listen.
 */
export function routerNews(router: FleetRouter, at: (atMs: number, action: () => void) => void): RouterNews | null {
  if (!router.onFirstToken && !router.onEnd) return null;
  let batch: { atMs: number; firstTokens: number[]; ends: number[] } | null = null;
  const batchAt = (atMs: number): { firstTokens: number[]; ends: number[] } => {
    if (batch && batch.atMs === atMs) return batch;
    const b = { atMs, firstTokens: [] as number[], ends: [] as number[] };
    batch = b;
    at(atMs, () => {
      for (const key of b.firstTokens) router.onFirstToken?.(key);
      for (const key of b.ends) router.onEnd?.(key);
      if (batch === b) batch = null;
    });
    return b;
  };
  return {
    firstToken: (key, atMs) => batchAt(atMs).firstTokens.push(key),
    end: (key, atMs) => batchAt(atMs).ends.push(key),
  };
}

