// Composition root: builds every worker of the process from the typed config, picking the generation's adapters.
//
// Adapters load lazily: a worker on file discovery and the TCP plane never loads the etcd or NATS
// clients, and one without a system status server never loads prom-client.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import PQueue from 'p-queue';
import type { NatsConnection } from 'nats';
import type { Logger } from 'pino';
import { callHome } from './adapters/call-home-stream.js';
import { advertisedHost, hostPort, primaryLocalIp } from './adapters/local-ip.js';
import type { TcpRequestPlane } from './adapters/tcp-request-plane.js';
import { RealClock } from './clock/clock.js';
import type { WorkerConfig } from './config.js';
import { Engine, contextLimit, type ModelLimits } from './core/engine.js';
import { resolveKvTransfer, type KvTransferSettings } from './core/kv-transfer.js';
import type { Transport } from './dynamo/discovery-records.js';
import { generationOf, type Generation } from './dynamo/generation.js';
import { registerWorkerRecords, type Discovery, type DiscoverySession } from './dynamo/registration.js';
import { EMPTY_FAULT_PLAN } from './faults/fault-plan.js';
import type { WorkerControl } from './faults/worker-control.js';
import type { CardFile } from './dynamo/model-card.js';
import { kvEventStreamName, kvMetricsSubject, leaseHex, requestSubject, serviceName, slugify, tcpRoutingKey } from './dynamo/names.js';
import { EngineLoop, combineHooks } from './engine/engine-loop.js';
import { LAUNCH_CONCURRENCY, STAGGER_GROUP, STAGGER_GROUP_PAUSE_MS, launchWorkers } from './worker-launch.js';
import type { EventTransport } from './adapters/event-plane.js';
import { createBlake3Hex, createXxh3, type Xxh3Hasher } from './hashing/xxh3.js';
import { HealthState } from './metrics/health.js';
import { WarningLimiter } from './log-limiter.js';
import { NO_REQUEST_METRICS, type RequestMetrics } from './metrics/request-metrics.js';
import type { WorkerMetrics } from './metrics/worker-metrics.js';
import { checkedFiles } from './model/card-files.js';
import { cardLocations } from './model/card-locations.js';
import { DEFAULT_VOCAB_SIZE, readModelInfo } from './model/model-info.js';
import { resolveModelFiles, type CardFileKind } from './model/resolve-model.js';
import { createPolynomialTimingModel } from './core/timing/polynomial.js';
import type { TimingModel } from './core/timing/timing-model.js';
import { HandoffRendezvous } from './serving/handoff-sessions.js';
import { RequestServer, refuseUnrouted, type DisaggServing, type QueuedWork } from './serving/request-server.js';
import type { OpenSink } from './serving/response-sink.js';

export interface WorkersIo {
  log: Logger;
  /** Aborting it during start-up stops what has started and makes startWorkers reject with StartAborted. */
  abort?: AbortSignal;
  /** Ends the process at once (a fault plan's `crash`); default process.exit. */
  exit?: (code: number) => void;
}

/** startWorkers gave up because it was asked to stop before it had finished starting. */
export class StartAborted extends Error {
  override name = 'StartAborted';
}

export interface StopOutcome {
  reason: string;
  /** True when the workers stopped on their own because they could not go on (a lost lease). */
  failed: boolean;
}

export interface RunningWorkers {
  /**
   * Stops every worker: stop taking requests, let in-flight ones finish within the grace period
   * (DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT), deregister, close the connections. Idempotent.
   */
  stop(reason: string): Promise<StopOutcome>;
  /** Settles once the workers have stopped, when asked to or because a registration was lost. */
  readonly stopped: Promise<StopOutcome>;
}

/** What every worker of the process shares. */
interface Shell {
  config: WorkerConfig;
  generation: Generation;
  log: Logger;
  xxh: Xxh3Hasher;
  timing: TimingModel;
  model: ModelLimits & { eosTokenIds: number[] };
  /** Worker `index`'s card (a prefill worker's names its own bootstrap port). */
  cardFor: (index: number, bootstrapPort: number | null) => string;
  /** The KV transfer model in force (bytes per token resolved from the model when not given). */
  kvTransfer: KvTransferSettings;
  discovery: Discovery;
  nats: NatsConnection | null;
  tcp: TcpRequestPlane | null;
  health: HealthState;
  openSink: OpenSink;
  metricsFor: (workerId: string, engine: Engine, queues: PQueue[]) => WorkerMetrics;
  kvStream: string | null;
  /** 1.x: the process's event-plane transport, made when the first worker's publishers start. */
  eventTransport: () => Promise<EventTransport>;
  /** Worker `index`, instance `instanceHex`, lost its registration (its etcd lease). */
  onLost: (reason: string, index: number, instanceHex: string) => void;
  /** Rate-limits the per-request warning lines of every worker. */
  warnings: WarningLimiter;
  /** The control API's view of the workers (--enable-control-api), or null. */
  control: WorkerControl | null;
  exit: (code: number) => void;
  countFault: (kind: string) => void;
}

/** `make` runs once, on the first call. */
function memo<T>(make: () => Promise<T>): () => Promise<T> {
  let made: Promise<T> | null = null;
  return () => (made ??= make());
}

export async function startWorkers(config: WorkerConfig, io: WorkersIo): Promise<RunningWorkers> {
  const { log, abort } = io;
  const startedAt = performance.now();
  const checkAbort = (): void => {
    if (abort?.aborted) throw new StartAborted(`stopped while starting (${String(abort.reason ?? 'aborted')})`);
  };
  for (const warning of config.warnings) log.warn(warning);
  const generation = generationOf(config.dynamoVersion, config.deviceType);
  // Undone in reverse order on stop, or when start-up fails half-way.
  const closers: Array<() => Promise<void>> = [];
  const closeAll = async (): Promise<void> => {
    while (closers.length) await closers.pop()!().catch((err) => log.warn({ err }, 'shutdown step failed'));
  };

  const health = new HealthState(config.system.startingStatus, config.numWorkers);
  // Per-request warnings are rate-limited; what was suppressed is summarised once more at the end.
  const warnings = new WarningLimiter({ log });
  closers.push(async () => warnings.stop());
  let resolveStopped!: (o: StopOutcome) => void;
  const stopped = new Promise<StopOutcome>((resolve) => (resolveStopped = resolve));
  let stopping: Promise<StopOutcome> | null = null;
  // Cuts a --stagger-delay pause short once the workers are to stop.
  const launchHalt = new AbortController();
  const stop = (reason: string, failed = false): Promise<StopOutcome> =>
    (stopping ??= (async () => {
      launchHalt.abort();
      log.info(`${reason}: draining`);
      health.setDraining(true);
      await closeAll();
      const outcome = { reason, failed };
      resolveStopped(outcome);
      return outcome;
    })());

  try {
    // 0. libzmq aborts the whole process when it runs out of file descriptors: check first that the
    //    ZMQ sockets of every worker fit (1.4's ZMQ event plane: a PUB per DP rank for KV events, one
    //    for load, one for forward-pass metrics; vLLM's own stream: a PUB and a ROUTER per DP rank).
    const ranks = config.engine.dataParallelSize;
    const zmqEventPlane = generation.events === 'event-plane' && config.eventPlane === 'zmq';
    const zmqSockets =
      config.numWorkers *
      ((zmqEventPlane ? (config.kvEvents ? ranks : 0) + 2 : 0) + (config.zmqKvEventsPorts ? ranks * (config.zmqReplayPorts ? 2 : 1) : 0));
    if (zmqSockets > 0) {
      (await import('./adapters/zmq-library.js')).checkZmqDescriptors(
        zmqSockets,
        `--num-workers ${config.numWorkers}`,
        `raise the limit${zmqEventPlane ? ', or use DYN_EVENT_PLANE=nats' : ''}`,
      );
    }
    // 1. Connections and the model at once: the handshakes overlap with reading and hashing the
    //    model's files, and an unreachable server still fails within seconds (the first failure ends
    //    the start, without waiting for a model download).
    // 0.6.x's event plane is always NATS (config refuses anything else).
    const needsNats = config.requestPlane === 'nats' || config.eventPlane === 'nats';
    const needsEtcd = config.discovery.backend === 'etcd';
    const connecting = (async () => {
      const [nats, etcd] = await Promise.all([
        needsNats ? import('./adapters/nats-connection.js').then((m) => m.connectNats(config.env)) : null,
        needsEtcd ? import('./adapters/etcd-connection.js').then((m) => m.connectEtcd(config.env)) : null,
      ]);
      if (nats) closers.push(() => nats.drain().catch(() => {}));
      let discovery: Discovery;
      if (etcd) {
        const { EtcdDiscovery } = await import('./adapters/etcd-discovery.js');
        discovery = new EtcdDiscovery(etcd);
      } else {
        const { FileDiscovery } = await import('./adapters/file-discovery.js');
        discovery = new FileDiscovery(config.discovery.fileRoot, log);
      }
      closers.push(() => discovery.stop());
      return { nats, discovery };
    })();
    // The files are read as soon as they are found: a corrupt one (a ConfigError naming it) ends the start at once.
    const loadingModel = Promise.all([
      resolveModelFiles(config.modelPath, { env: config.env, log: (level, msg) => log[level](msg) }).then((files) => ({
        files,
        info: files.source === 'none' ? null : readModelInfo(files),
      })),
      createXxh3(),
      createBlake3Hex(),
    ]);
    let connected: Awaited<typeof connecting>;
    let model: Awaited<typeof loadingModel>[0];
    let xxh: Xxh3Hasher;
    let blake3Hex: Awaited<typeof loadingModel>[2];
    try {
      [connected, [model, xxh, blake3Hex]] = await Promise.all([connecting, loadingModel]);
    } catch (err) {
      // Whatever did connect is closed below, once it has.
      await connecting.catch(() => {});
      throw err;
    }
    const { nats, discovery } = connected;
    checkAbort();

    // 2. The model's limits and the card every worker publishes.
    const { files } = model;
    const info = model.info ?? { contextLength: 0, vocabSize: DEFAULT_VOCAB_SIZE, eosTokenIds: [] as number[], bosTokenId: null, kvShape: null };
    const kvTransfer = resolveKvTransfer(config.disagg.kvTransfer, info.kvShape);
    if (config.disagg.workerType === 'prefill' && kvTransfer.bytesPerToken === null && kvTransfer.bandwidthGBps > 0) {
      log.warn('KV bytes per token unknown (no model config and no --kv-bytes-per-token): the KV transfer takes no time');
    }
    if (files.source === 'none') {
      log.warn(`no files found for model '${config.modelPath}': registering a card without files (the frontend fetches them by name)`);
    }
    const checked = await checkedFiles(files, blake3Hex);

    // 3. Metrics and the system status server (only when DYN_SYSTEM_PORT asks for it).
    const engineContextLength = contextLimit(config.engine.maxModelLen, info.contextLength);
    const control = config.controlApi.enabled ? new (await import('./faults/worker-control.js')).WorkerControl((line) => log.info(line)) : null;
    const metrics = config.system.enabled
      ? await (await import('./metrics/worker-metrics.js')).startWorkerMetrics({
          control: control ? { control, token: config.controlApi.token } : undefined,
          system: config.system,
          endpoint: config.endpoint,
          model: config.modelName,
          // Dynamo 1.x: /metadata (Kubernetes only) and the self-hosted card files.
          metadataRoutes: generation.cardFiles === 'v1',
          health,
          startedAt,
          histogramMaxLen: engineContextLength ?? 32768,
          // Several workers sharing this process's registry need worker_id to tell their series apart.
          vllmWorkerLabel: generation.vllmSeriesByWorker || config.numWorkers > 1,
          vllmSeries: config.disagg.workerType !== 'prefill' || generation.vllmSeriesOnPrefill,
          log,
        })
      : null;
    if (metrics) closers.push(() => metrics.server.close());

    const slug = slugify(config.modelName);
    let cardFiles: ReadonlyMap<CardFileKind, CardFile> = checked;
    if (generation.cardFiles === 'object-store') {
      const { uploadCardFilesToObjectStore } = await import('./dynamo/model-card.js');
      cardFiles = await uploadCardFilesToObjectStore(nats!, slug, checked);
    } else if (generation.cardFiles === 'v1') {
      const selfHostBase =
        config.selfHostMetadata && metrics ? `http://${hostPort(advertisedHost(metrics.server.address.host), metrics.server.address.port)}` : null;
      const placed = cardLocations(checked, files, { repoId: config.modelPath, selfHostBase, endpoint: config.endpoint, slug });
      cardFiles = placed.files;
      metrics?.serveFiles(placed.served);
    }
    const bootstrapHost = config.disagg.bootstrapHost ?? primaryLocalIp();
    const cardFor = (_index: number, bootstrapPort: number | null): string => generation.card({
      displayName: config.modelName,
      sourcePath: files.source === 'local' && files.dir ? files.dir : config.modelPath,
      files: cardFiles,
      modelContextLength: info.contextLength,
      engineContextLength,
      blockSize: config.engine.blockSize,
      kvEvents: config.kvEvents,
      runtime: {
        totalKvBlocks: config.engine.numGpuBlocks,
        maxNumSeqs: config.engine.maxNumSeqs,
        maxNumBatchedTokens: config.engine.maxNumBatchedTokens,
        dataParallelSize: config.engine.dataParallelSize,
      },
      workerType: config.disagg.workerType,
      migrationLimit: config.migrationLimit,
      bootstrap: bootstrapPort === null ? null : { host: bootstrapHost, port: bootstrapPort },
    });

    // 4. Planes: the response plane (call home), the TCP request plane, the 0.6.x event stream.
    const openSink = callHome(xxh, { sentinelAfterStop: generation.sentinelAfterStop, bufferBytes: config.responseStream.bufferBytes });
    let tcp: TcpRequestPlane | null = null;
    if (config.requestPlane === 'tcp') {
      const { TcpRequestPlane } = await import('./adapters/tcp-request-plane.js');
      // Requests that reach no worker are counted under worker_id "", created at the first one.
      let unroutedMetrics: RequestMetrics | null = null;
      const unrouted = (): RequestMetrics => (unroutedMetrics ??= metrics?.forWorker('', null, []).request ?? NO_REQUEST_METRICS);
      const plane = await TcpRequestPlane.listen({
        settings: config.tcp,
        log,
        warnings,
        unrouted: (payload, fault) => void refuseUnrouted(payload, fault, { xxh, metrics: unrouted(), log, openSink, warnings }),
        framingError: () => unrouted().error('invalid_message'),
      });
      tcp = plane;
      closers.push(() => plane.close());
      log.info(`TCP request plane listening on ${plane.address}`);
    }
    const { namespace, component } = config.endpoint;
    const kvStream = generation.events === 'jetstream' && config.kvEvents ? kvEventStreamName(namespace, component) : null;
    if (kvStream) {
      const { ensureKvEventStream } = await import('./adapters/nats-event-plane.js');
      await ensureKvEventStream(nats!, kvStream, config.natsStreamMaxAgeS);
    }

    // The NPZ reader (and its zip library) loads only when a profile is given.
    const timing = config.engine.plannerProfileData
      ? (await import('./npz/profile-loader.js')).loadTimingModel(config.engine.plannerProfileData, (msg) => log.error(msg))
      : createPolynomialTimingModel();
    const shell: Shell = {
      config,
      generation,
      log,
      xxh,
      timing,
      model: { vocabSize: info.vocabSize, contextLength: info.contextLength, eosTokenIds: info.eosTokenIds },
      cardFor,
      kvTransfer,
      discovery,
      nats,
      tcp,
      health,
      openSink,
      metricsFor: (workerId, engine, queues) =>
        metrics?.forWorker(workerId, engine, queues) ?? { request: NO_REQUEST_METRICS, remove() {} },
      kvStream,
      eventTransport: memo(async () =>
        config.eventPlane === 'nats'
          ? (await import('./adapters/event-plane.js')).natsEventTransport(nats!)
          : (await import('./adapters/event-plane.js')).zmqEventTransport(log, config.eventPlaneHost ?? undefined),
      ),
      onLost: (reason, index, instanceHex) => {
        if (stopping !== null) return log.warn(`${reason} (while stopping)`);
        if (config.onLeaseLoss === 'reregister') {
          const lostWorker = workers.find((w) => w.instanceHex === instanceHex);
          if (lostWorker) return reregister(lostWorker, reason);
          // A replacement lost its lease while registering: it is replaced in turn once in place.
          if (replacingIndex.has(index)) return void lostWhileReplacing.set(instanceHex, { index, reason });
        }
        // A worker still starting for the first time is not in `workers` yet: its loss ends the start.
        // Visible at any DYN_LOG level but off: the process is about to exit with code 1.
        log.error(
          `${reason}: the worker's instance and model records are gone or about to go, so the worker stops (exit code 1` +
            `${config.onLeaseLoss === 'exit' ? '; --on-lease-loss reregister would register it again instead' : ''})`,
        );
        void stop(`registration lost (${reason})`, true);
      },
      warnings,
      control,
      exit: io.exit ?? ((code) => process.exit(code)),
      countFault: (kind) => metrics?.countFault(kind),
    };

    if (config.startupTimeS > 0) {
      log.info(`simulating a ${config.startupTimeS} s engine start`);
      // An abort ends the wait early; checkAbort() below turns it into the stop.
      await sleep(config.startupTimeS * 1000, undefined, { signal: abort }).catch(() => {});
    }
    checkAbort();
    const workers: StartedWorker[] = [];
    /** --on-lease-loss reregister: replacements under way, the indices they are for, and losses met while starting one. */
    const replacing = new Set<Promise<void>>();
    const replacingIndex = new Set<number>();
    const lostWhileReplacing = new Map<string, { index: number; reason: string }>();
    /** Cuts a replacement's wait between two attempts short once the workers stop. */
    const replacementHalt = new AbortController();
    const reregister = (lost: StartedWorker, reason: string): void => {
      replacingIndex.add(lost.index);
      let placed: StartedWorker | null = null;
      const replaced = replaceWorker(shell, lost, reason, {
        running: () => stopping === null,
        signal: replacementHalt.signal,
        replace: (fresh) => {
          workers[workers.indexOf(lost)] = placed = fresh;
        },
      });
      replacing.add(replaced);
      void replaced.finally(() => {
        replacing.delete(replaced);
        replacingIndex.delete(lost.index);
        const again = placed && lostWhileReplacing.get(placed.instanceHex);
        for (const [hex, loss] of lostWhileReplacing) if (loss.index === lost.index) lostWhileReplacing.delete(hex);
        if (placed && again && stopping === null) reregister(placed, again.reason);
      });
    };
    // Workers stop together, so N of them drain within one grace period.
    closers.push(async () => {
      replacementHalt.abort();
      await Promise.all([...workers.map((w) => w.stop()), ...replacing]);
    });
    // Several start at once (each in its own registration order), spaced by --stagger-delay when
    // asked. A worker that lost its registration stops them all: start no more after that.
    const staggerDelayMs = config.staggerDelayS * 1000;
    if (staggerDelayMs > 0) {
      log.info(`starting ${config.numWorkers} workers ${config.staggerDelayS} s apart, ${STAGGER_GROUP_PAUSE_MS / 1000} s more after every ${STAGGER_GROUP} (--stagger-delay)`);
    }
    await launchWorkers({
      count: config.numWorkers,
      concurrency: LAUNCH_CONCURRENCY,
      staggerDelayMs,
      start: (index) => startWorker(shell, index),
      // One that finishes starting after a stop was asked for stops at once.
      started: (worker) => (stopping === null ? workers.push(worker) : void worker.stop()),
      halted: () => stopping !== null || abort?.aborted === true,
      sleep: (ms, failed) => sleep(ms, undefined, { signal: AbortSignal.any([failed, launchHalt.signal, ...(abort ? [abort] : [])]) }).catch(() => {}),
    });
    checkAbort();
    log.info(
      `${workers.length} worker(s) serving ${config.modelName} over ${config.requestPlane} with ${config.discovery.backend} discovery ` +
        `(Dynamo ${config.dynamoVersion}) in ${(performance.now() - startedAt).toFixed(0)} ms`,
    );
    return { stop: (reason) => stop(reason), stopped };
  } catch (err) {
    await closeAll();
    throw err;
  }
}

interface StartedWorker {
  readonly index: number;
  /** The instance id (lease id) in hex. */
  readonly instanceHex: string;
  /** Requests between their arrival and their last frame. */
  inflight(): number;
  /** Stops taking requests, lets in-flight ones finish (up to the grace period), deregisters. Idempotent. */
  stop(): Promise<void>;
  /** stop(), with the instance leaving /health at once (a replacement under a new id follows). */
  retire(): Promise<void>;
  /** Resolves once discovery confirms the worker's records are gone; rejects while it cannot tell. */
  purge(): Promise<void>;
}

/** First and longest wait between two attempts to register a worker again. */
const REREGISTER_RETRY_MS = { first: 250, max: 2000 } as const;

/**
 * --on-lease-loss reregister: the worker whose lease was lost stops taking requests and lets its
 * in-flight ones finish (up to the grace period), while a fresh worker with the same index takes its
 * place once etcd answers: the lost lease is revoked first (so its instance key cannot linger), then
 * a new lease is granted and the records written again under the new instance id. A fresh engine
 * goes with it, so the router's view (an instance with an empty cache) matches. Retries until it
 * succeeds or the workers stop.
 */
async function replaceWorker(
  shell: Shell,
  lost: StartedWorker,
  reason: string,
  o: { running: () => boolean; signal: AbortSignal; replace: (fresh: StartedWorker) => void },
): Promise<void> {
  const { log, config } = shell;
  const lostAt = performance.now();
  log.error(
    `${reason}: worker ${lost.index} registers again with a new lease once etcd answers (--on-lease-loss reregister); ` +
      `its ${lost.inflight()} in-flight request(s) go on`,
  );
  const retired = lost.retire();
  // A worker that owns fixed ports (bootstrap, vLLM KV events) must free them before its successor binds them.
  const ownsPorts = config.disagg.bootstrapPorts !== null || config.zmqKvEventsPorts !== null;
  let purged = false;
  let waitMs: number = REREGISTER_RETRY_MS.first;
  for (let attempt = 1; o.running(); attempt++) {
    try {
      if (!purged) {
        await lost.purge();
        purged = true;
        log.info(`worker ${lost.index}: the lost lease ${lost.instanceHex} is revoked, its records are gone`);
      }
      if (ownsPorts) await retired;
      const fresh = await startWorker(shell, lost.index);
      if (!o.running()) return void (await fresh.stop());
      o.replace(fresh);
      log.warn(
        `worker ${lost.index} registered again as instance ${fresh.instanceHex} (was ${lost.instanceHex}), ` +
          `${(performance.now() - lostAt).toFixed(0)} ms after its lease was lost (${attempt} attempt(s))`,
      );
      break;
    } catch (err) {
      // The first failure and then one in ten: an outage of minutes stays a handful of lines.
      if (attempt === 1 || attempt % 10 === 0) {
        const why = (err as Error).message.replace(/^\d+ [A-Z_]+: /, ''); // grpc-js's "14 UNAVAILABLE: " prefix
        log.warn(`worker ${lost.index}: cannot register again yet (attempt ${attempt}: ${why}); retrying until etcd answers`);
      }
      await sleep(waitMs, undefined, { signal: o.signal }).catch(() => {});
      waitMs = Math.min(waitMs * 2, REREGISTER_RETRY_MS.max);
    }
  }
  await retired;
}

/** One worker: its registration, engine, request path and plane endpoint. */
async function startWorker(shell: Shell, index: number): Promise<StartedWorker> {
  const { config, generation } = shell;
  const ep = config.endpoint;
  // A loss can only be reported once the lease is granted, i.e. once `hex` is set.
  let hex = '';
  const session: DiscoverySession = await shell.discovery.open((reason) => shell.onLost(reason, index, hex));
  const id = session.instanceId;
  hex = leaseHex(id);
  const log = shell.log.child({ worker: index, instance_id: hex });

  const engine = new Engine(config.engine, shell.timing, shell.xxh, shell.model);
  const queues = engine.ranks.map(() => new PQueue({ concurrency: config.engine.maxNumSeqs }));
  const metrics = shell.metricsFor(hex, engine, queues);
  // The fault plan (when one is given or may be set at run time). Records withdrawn by `deregister`
  // are the ones registration wrote, restored in the same order.
  let records: Array<[string, string]> = [];
  const faults =
    config.faults || shell.control
      ? new (await import('./faults/worker-faults.js')).WorkerFaults({
          plan: config.faults ?? EMPTY_FAULT_PLAN,
          log,
          exit: shell.exit,
          withdraw: async () => {
            for (const [key] of [...records].reverse()) await session.remove(key);
          },
          restore: async () => {
            for (const [key, value] of records) await session.create(key, value);
          },
          counted: (kind) => shell.countFault(kind),
        })
      : null;
  // Per-request KV-event faults need to know whose blocks each stored event reports.
  if (faults) for (const rank of engine.ranks) rank.pool.tagEventOwners = true;
  // Event outputs: 0.6.x JetStream events, or 1.x's event plane (its publishers start after
  // registration, queuing what comes before), and vLLM's own KV-event stream when asked for.
  const jetstream =
    generation.events === 'jetstream'
      ? (await import('./adapters/nats-event-plane.js')).jetstreamEventHooks({
          nats: shell.nats!,
          kvSubject: shell.kvStream === null ? null : `${shell.kvStream}.queue`,
          loadSubject: kvMetricsSubject(config.endpoint.namespace),
          workerId: id,
          engine,
          queues,
          totalSlots: config.engine.maxNumSeqs,
          log,
          faults: faults ?? undefined,
          kvOutboxLimit: config.kvOutboxEvents,
        })
      : null;
  const vllm = config.zmqKvEventsPorts
    ? await (await import('./adapters/vllm-kv-events.js')).VllmKvEvents.start({
        basePort: config.zmqKvEventsPorts[index],
        replayBasePort: config.zmqReplayPorts?.[index] ?? null,
        ranks: engine.ranks.length,
        blockSize: config.engine.blockSize,
        log,
      })
    : null;
  if (vllm) for (const rank of engine.ranks) rank.recordBlockTokens = true;
  let admissionQueue: (rank: number) => Iterable<QueuedWork> = () => [];
  const planeEvents =
    generation.events === 'event-plane'
      ? new (await import('./adapters/worker-events.js')).WorkerEvents({
          transport: shell.eventTransport,
          session,
          endpoint: ep,
          engine,
          kvEvents: config.kvEvents,
          admissionQueue: (rank) => admissionQueue(rank),
          log,
          faults: faults ?? undefined,
        })
      : null;
  const loop = new EngineLoop(engine, new RealClock(), combineHooks(jetstream, vllm?.hooks, planeEvents?.hooks));
  loop.start();
  const { disagg } = config;
  // A prefill worker with a bootstrap port meets its decode workers there (1.3+ handoff sessions).
  const sessionsPerRank = Math.max(1, config.engine.maxNumSeqs);
  const rendezvous =
    disagg.workerType === 'prefill' && disagg.bootstrapPorts
      ? new HandoffRendezvous({ rendezvousTimeoutMs: disagg.rendezvousTimeoutMs, maxSessions: sessionsPerRank * engine.ranks.length })
      : null;
  const bootstrap = rendezvous
    ? await (await import('./adapters/bootstrap.js')).listenBootstrap(disagg.bootstrapPorts![index], (channel, register) => rendezvous.acceptDestination(channel, register), log)
    : null;
  const disaggServing: DisaggServing | undefined =
    disagg.workerType === 'aggregated'
      ? undefined
      : {
          workerType: disagg.workerType,
          transfer: shell.kvTransfer,
          sessionTimeoutMs: disagg.handoffSessionTimeoutMs,
          rendezvousTimeoutMs: disagg.rendezvousTimeoutMs,
          sessionsPerRank,
          rendezvous,
          connect: async (info, identity, dpRank) =>
            (await import('./adapters/bootstrap.js')).connectBootstrap(info.host, info.port, identity, {
              kind: 'Register',
              role: 'Destination',
              dpRank,
              order: 'SourceFirst',
              engineType: 'vllm',
            }),
        };
  const server = new RequestServer({
    loop,
    queues,
    xxh: shell.xxh,
    metrics: metrics.request,
    log,
    warnings: shell.warnings,
    modelEosTokenIds: shell.model.eosTokenIds,
    openSink: shell.openSink,
    streamStallTimeoutMs: config.responseStream.stallTimeoutMs,
    now: () => performance.now(),
    observe: metrics.observe,
    disagg: disaggServing,
    faults: faults ?? undefined,
  });
  admissionQueue = (rank) => server.admissionQueue(rank);
  const uncontrol = faults && shell.control ? shell.control.add({ engine, queues, faults, counts: server.counts, resetCounts: () => server.resetCounts() }) : null;

  let stopPlane = async (): Promise<void> => {};
  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      shell.health.setEndpoint(ep.endpoint, 'notready', hex);
      // 1. Stop taking requests; 2. let in-flight ones finish, up to the grace period;
      // 3. deregister (revoking the lease deletes both records at once).
      await stopPlane();
      faults?.stop();
      uncontrol?.();
      await server.drain(config.gracefulShutdownMs);
      rendezvous?.close();
      await bootstrap?.close();
      await loop.stop();
      await Promise.all([jetstream?.stop(), planeEvents?.stop(), vllm?.stop()]);
      metrics.remove();
      await session.close();
      log.info('worker stopped');
    })());

  try {
    const registered = await registerWorkerRecords({
      session,
      generation,
      endpoint: ep,
      cardJson: shell.cardFor(index, bootstrap?.port ?? null),
      listen: async (): Promise<Transport> => {
        if (shell.tcp) {
          const tcp = shell.tcp;
          const path = tcpRoutingKey(ep, id);
          tcp.route(path, server);
          stopPlane = async () => tcp.unroute(path);
          return { tcp: tcp.transport(path) };
        }
        const { serveNatsEndpoint } = await import('./adapters/nats-request-plane.js');
        const endpoint = await serveNatsEndpoint(
          shell.nats!,
          {
            service: serviceName(ep),
            version: generation.runtimeVersion,
            description: `Dynamo component ${ep.component} in namespace ${ep.namespace}`,
            name: `${ep.endpoint}-${hex}`,
            subject: requestSubject(ep, id),
          },
          (payload) => void server.handle(payload),
          log,
        );
        stopPlane = endpoint.stop;
        return { nats_tcp: generation.natsTransport(ep, id) };
      },
    });
    records = registered.records;
    const { transport } = registered;
    shell.health.setEndpoint(ep.endpoint, 'ready', hex);
    log.info({ transport }, 'worker registered and serving');
    await planeEvents?.start();
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    index,
    instanceHex: hex,
    inflight: () => server.inflightCount,
    stop,
    retire: async () => {
      const stopped = stop();
      shell.health.removeEndpoint(ep.endpoint, hex);
      await stopped;
    },
    purge: () => session.closeConfirmed?.() ?? session.close(),
  };
}
