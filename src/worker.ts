// Composition root for one worker: lease, engine, admission queues, NATS endpoint, registration.
import PQueue from 'p-queue';
import type { Etcd3 } from 'etcd3';
import type { NatsConnection, Service } from 'nats';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { RealClock } from './clock/clock.js';
import type { WorkerConfig } from './config.js';
import { Engine, type ModelLimits } from './core/engine.js';
import type { TimingModel } from './core/timing/timing-model.js';
import { WorkerLease } from './dynamo/lease.js';
import { leaseHex, requestSubject, serviceName } from './dynamo/names.js';
import { registerWorker } from './dynamo/registration.js';
import { handleRequest, type RequestHandlerDeps } from './dynamo/request-handler.js';
import { LiveEngine, type LiveEngineHooks } from './engine/live-engine.js';
import type { Xxh3Hasher } from './hashing/xxh3.js';
import type { HealthState } from './metrics/health.js';
import { WorkHandlerMetrics } from './metrics/work-handler-metrics.js';

/** What every worker of one process shares. */
export interface WorkerShared {
  nats: NatsConnection;
  etcd: Etcd3;
  xxh: Xxh3Hasher;
  registry: Registry;
  health: HealthState;
  log: Logger;
  timing: TimingModel;
  model: ModelLimits & { eosTokenIds: number[] };
  /** The model deployment card JSON every worker of this model publishes. */
  cardJson: string;
  /** Extra per-worker observers (KV events, load metrics, engine metrics); built once the lease id is known. */
  observers?: (worker: { leaseId: bigint; engine: Engine; queues: PQueue[] }) => Promise<WorkerObservers>;
  /** Called when the lease is lost: the process must shut down. */
  onLeaseLost: (reason: string) => void;
}

export interface WorkerObservers extends LiveEngineHooks {
  /** Per-request latency observer for engine metrics. */
  request?: RequestHandlerDeps['observe'];
  stop?(): Promise<void>;
}

export interface RunningWorker {
  readonly leaseId: bigint;
  readonly subject: string;
  readonly engine: Engine;
  readonly live: LiveEngine;
  readonly queues: PQueue[];
  /** Requests queued in admission or running, per DP rank. */
  queuedRequests(rank: number): number;
  /** Stop serving, drain in-flight requests (bounded), revoke the lease. */
  stop(graceMs: number): Promise<void>;
}

export async function startWorker(config: WorkerConfig, shared: WorkerShared, index: number): Promise<RunningWorker> {
  const { nats, etcd, log: parentLog } = shared;
  const lease = await WorkerLease.grant(etcd, 10, shared.onLeaseLost);
  const hex = leaseHex(lease.id);
  const log = parentLog.child({ worker: index, instance_id: hex });
  const subject = requestSubject(config.endpoint, lease.id);

  const engine = new Engine(config.engine, shared.timing, shared.xxh, shared.model);
  const queues = engine.ranks.map(() => new PQueue({ concurrency: config.engine.maxNumSeqs }));
  const observers = await shared.observers?.({ leaseId: lease.id, engine, queues });
  const live = new LiveEngine(engine, new RealClock(), observers ?? {});
  live.start();

  const metrics = WorkHandlerMetrics.forWorker(shared.registry, {
    namespace: config.endpoint.namespace,
    component: config.endpoint.component,
    endpoint: config.endpoint.endpoint,
    model: config.modelName,
    workerId: hex,
  });
  const shutdown = new AbortController();
  const deps: RequestHandlerDeps = {
    live,
    queues,
    xxh: shared.xxh,
    metrics,
    log,
    modelEosTokenIds: shared.model.eosTokenIds,
    inflight: new Set(),
    shutdown: shutdown.signal,
    observe: observers?.request,
  };

  let service: Service | null = null;
  const empty = new Uint8Array(0);
  await registerWorker({
    etcd,
    lease,
    endpoint: config.endpoint,
    cardJson: shared.cardJson,
    subject,
    beforeInstance: async () => {
      // A NATS micro service as Dynamo's runtime builds it (async-nats service API): named after the
      // component, versioned as the runtime, queue group "q", answering $SRV.PING/INFO/STATS, with
      // one endpoint "{endpoint}-{lease hex}" listening on the request subject.
      const { namespace, component, endpoint } = config.endpoint;
      service = await nats.services.add({
        name: serviceName(config.endpoint),
        version: config.dynamoVersion,
        description: `Dynamo component ${component} in namespace ${namespace}`,
        queue: 'q',
        // Dynamo's mocker registers no stats payload: endpoints[].data is null in $SRV.STATS.
        statsHandler: async () => null,
      });
      service.addEndpoint(`${endpoint}-${hex}`, {
        subject,
        handler: (err, msg) => {
          if (err) {
            log.error({ err }, 'request subscription failed');
            return;
          }
          // The frontend waits for this empty ack before it expects the call home.
          if (msg.reply) msg.respond(empty);
          handleRequest(msg.data, deps);
        },
      });
      await nats.flush();
    },
  });
  shared.health.setEndpoint(config.endpoint.endpoint, 'ready', hex);
  log.info({ subject }, 'worker registered and serving');

  let stopping: Promise<void> | null = null;
  return {
    leaseId: lease.id,
    subject,
    engine,
    live,
    queues,
    queuedRequests: (rank) => queues[rank].size,
    stop(graceMs: number): Promise<void> {
      stopping ??= (async () => {
        shared.health.setEndpoint(config.endpoint.endpoint, 'notready', hex);
        // 1. Stop taking requests: the service drains its subscriptions (messages already delivered
        //    are still acked and handled), then nothing new reaches this worker.
        if (service) {
          const svc: Service = service;
          await svc.stop().catch(() => {});
        }
        // 2. Let in-flight requests finish, up to the grace period, then cut them.
        const drained = Promise.all([...deps.inflight]).then(() => true);
        const timedOut = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), graceMs).unref());
        if (!(await Promise.race([drained, timedOut]))) {
          log.warn(`graceful shutdown timed out after ${graceMs} ms; cancelling ${deps.inflight.size} requests`);
          shutdown.abort();
          await Promise.all([...deps.inflight]);
        }
        await live.stop();
        await observers?.stop?.();
        // 3. Revoking the lease deletes the instance and card keys at once.
        await lease.revoke();
        log.info('worker stopped');
      })();
      return stopping;
    },
  };
}
