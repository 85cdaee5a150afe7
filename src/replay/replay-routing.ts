// Builds the replay fleet's router from the flags, and what it sees of each trace request.
import type { EngineRequest } from '../core/engine.js';
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
