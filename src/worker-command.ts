// The worker command: connects, resolves the model, starts N workers and runs until SIGINT/SIGTERM.
import { performance } from 'node:perf_hooks';
import type { Etcd3 } from 'etcd3';
import type { NatsConnection } from 'nats';
import type { CliIo } from './cli.js';
import type { WorkerConfig } from './config.js';
import { ConnectionError, connectEtcd, connectNats } from './dynamo/connections.js';
import { buildModelCard, uploadCardFilesToObjectStore } from './dynamo/model-card.js';
import { KvEventPublisher, ensureKvEventStream } from './dynamo/kv-event-publisher.js';
import { LoadPublisher } from './dynamo/load-publisher.js';
import { kvEventStreamName, kvMetricsSubject, leaseHex, slugify } from './dynamo/names.js';
import { EngineMetrics } from './metrics/engine-metrics.js';
import { createBlake3Hex, createXxh3 } from './hashing/xxh3.js';
import { createLogger } from './log.js';
import { HealthState } from './metrics/health.js';
import { createMetricsRegistry } from './metrics/runtime-metrics.js';
import { startStatusServer, statusServerSettings } from './metrics/status-server.js';
import { checkedFiles } from './model/card-files.js';
import { DEFAULT_VOCAB_SIZE, readModelInfo } from './model/model-info.js';
import { resolveModelFiles } from './model/resolve-model.js';
import { loadTimingModel } from './npz/profile-loader.js';
import { startWorker, type RunningWorker, type WorkerObservers, type WorkerShared } from './worker.js';

function graceMs(env: Record<string, string | undefined>): number {
  const raw = env.DYN_WORKER_GRACEFUL_SHUTDOWN_TIMEOUT;
  const seconds = raw === undefined || raw === '' ? 30 : Number(raw);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : 30_000;
}

/** Resolves when the process is asked to stop (or the lease is lost). */
function stopSignal(onLeaseLost: (cb: (reason: string) => void) => void): Promise<{ signal: string; failed: boolean }> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => resolve({ signal, failed: false });
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    onLeaseLost((reason) => resolve({ signal: `lease lost (${reason})`, failed: true }));
  });
}

export async function runWorkerCommand(config: WorkerConfig, io: CliIo): Promise<number> {
  const log = createLogger(io.env);
  const startedAt = performance.now();
  let leaseLostListener: ((reason: string) => void) | null = null;
  const stopped = stopSignal((cb) => (leaseLostListener = cb));

  let nats: NatsConnection;
  let etcd: Etcd3;
  try {
    [nats, etcd] = await Promise.all([connectNats(io.env), connectEtcd(io.env)]);
  } catch (err) {
    if (err instanceof ConnectionError) {
      io.err(`dynamo-mocker: ${err.message}\n`);
      return 1;
    }
    throw err;
  }

  const workers: RunningWorker[] = [];
  let server: Awaited<ReturnType<typeof startStatusServer>> | null = null;
  try {
    const files = await resolveModelFiles(config.modelPath, { env: io.env, log: (level, msg) => log[level](msg) });
    const info =
      files.source === 'none'
        ? { contextLength: 0, vocabSize: DEFAULT_VOCAB_SIZE, eosTokenIds: [] as number[], bosTokenId: null }
        : readModelInfo(files);
    if (files.source === 'none') {
      log.warn(`no files found for model '${config.modelPath}': registering a card without files (a Dynamo 0.6.1 frontend fetches them by name)`);
    }
    const checked = await checkedFiles(files, await createBlake3Hex());
    const cardFiles =
      config.dynamoVersion === '0.6.0' ? await uploadCardFilesToObjectStore(nats, slugify(config.modelName), checked) : checked;
    const cardJson = buildModelCard({
      displayName: config.modelName,
      files: cardFiles,
      contextLength: info.contextLength,
      blockSize: config.engine.blockSize,
      runtime: {
        totalKvBlocks: config.engine.numGpuBlocks,
        maxNumSeqs: config.engine.maxNumSeqs,
        maxNumBatchedTokens: config.engine.maxNumBatchedTokens,
        dataParallelSize: config.engine.dataParallelSize,
      },
    });

    const settings = statusServerSettings(io.env);
    const { registry } = createMetricsRegistry();
    const health = new HealthState(settings.startingStatus, config.numWorkers);
    if (settings.enabled) {
      server = await startStatusServer({
        host: settings.host,
        port: settings.port,
        healthPath: settings.healthPath,
        livePath: settings.livePath,
        registry,
        health: () => health.status(),
        startedAt,
      }).catch((err: NodeJS.ErrnoException) => {
        throw new ConnectionError(`cannot serve the system status server on ${settings.host}:${settings.port} (DYN_SYSTEM_HOST/DYN_SYSTEM_PORT): ${err.code ?? err.message}`);
      });
      log.info(`system status server listening on ${server.address.host}:${server.address.port}`);
    }

    const shared: WorkerShared = {
      nats,
      etcd,
      xxh: await createXxh3(),
      registry,
      health,
      log,
      timing: loadTimingModel(config.engine.plannerProfileData ?? undefined, (msg) => log.error(msg)),
      model: { vocabSize: info.vocabSize, contextLength: info.contextLength, eosTokenIds: info.eosTokenIds },
      cardJson,
      onLeaseLost: (reason) => leaseLostListener?.(reason),
    };
    const { namespace, component } = config.endpoint;
    const kvStream = kvEventStreamName(namespace, component);
    // Dynamo publishes KV events only with prefix caching on (nothing is reusable otherwise).
    if (config.engine.enablePrefixCaching) await ensureKvEventStream(nats, kvStream, io.env);
    const histogramMaxLen = config.engine.maxModelLen ?? (info.contextLength || 32768);
    shared.observers = async ({ leaseId, engine, queues }): Promise<WorkerObservers> => {
      const kv = config.engine.enablePrefixCaching ? new KvEventPublisher(nats, `${kvStream}.queue`, leaseId, log) : null;
      const load = new LoadPublisher(
        nats,
        kvMetricsSubject(namespace),
        leaseId,
        (rank) => {
          const s = engine.ranks[rank].snapshot();
          return {
            dpRank: rank,
            activeSlots: s.running,
            totalSlots: config.engine.maxNumSeqs,
            waiting: s.waiting + queues[rank].size,
            activeBlocks: s.activeBlocks,
            totalBlocks: s.totalBlocks,
            prefixHitRate: s.prefixHitRate,
          };
        },
        engine.ranks.length,
      );
      const engineMetrics = EngineMetrics.forWorker(
        registry,
        { engine, queued: (rank) => queues[rank].size, namespace, component, model: config.modelName, workerId: leaseHex(leaseId) },
        histogramMaxLen,
      );
      queues.forEach((queue, rank) => {
        queue.on('add', () => load.changed(rank));
        queue.on('next', () => load.changed(rank));
        load.publishNow(rank);
      });
      return {
        onPassStart: (rank, result) => {
          if (kv && result.kvEvents.length) kv.publish(result.kvEvents);
          load.changed(rank);
        },
        onPassEnd: (rank) => load.changed(rank),
        request: (rank, arrivalMs) => engineMetrics.request(rank, arrivalMs),
        stop: async () => {
          load.stop();
          await kv?.flush();
          engineMetrics.remove();
        },
      };
    };
    if (config.startupTimeS > 0) {
      log.info(`simulating a ${config.startupTimeS} s engine start`);
      await new Promise((resolve) => setTimeout(resolve, config.startupTimeS * 1000));
    }
    for (let i = 0; i < config.numWorkers; i++) workers.push(await startWorker(config, shared, i));
    log.info(`${config.numWorkers} worker(s) serving ${config.modelName} ${workers.length ? `in ${(performance.now() - startedAt).toFixed(0)} ms` : ''}`);

    const { signal, failed } = await stopped;
    log.info(`${signal}: draining`);
    health.setDraining(true);
    await Promise.all(workers.map((w) => w.stop(graceMs(io.env))));
    return failed ? 1 : 0;
  } finally {
    await Promise.all(workers.map((w) => w.stop(0).catch(() => {})));
    await server?.close().catch(() => {});
    await nats.drain().catch(() => {});
    etcd.close();
  }
}
