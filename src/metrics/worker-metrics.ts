// The worker's metrics and system status server: prom-client, Dynamo's and vLLM's families, and the routes.
// Loaded only when DYN_SYSTEM_PORT asks for a server: without one, nothing could read the metrics.
import type PQueue from 'p-queue';
import { Counter } from 'prom-client';
import type { Logger } from 'pino';
import { ConnectionError } from '../adapters/connection-error.js';
import type { EndpointId, SystemServerSettings } from '../config.js';
import type { Engine } from '../core/engine.js';
import { controlRoutes, type MockerControl } from './control-api.js';
import { EngineMetrics } from './engine-metrics.js';
import type { HealthState } from './health.js';
import type { RequestMetrics, RequestObserver } from './request-metrics.js';
import { createMetricsRegistry } from './runtime-metrics.js';
import { startStatusServer, type StaticResponse, type StatusServer } from './status-server.js';
import { WorkHandlerMetrics } from './work-handler-metrics.js';

/** One worker's metrics. */
export interface WorkerMetrics {
  request: RequestMetrics;
  observe?: (rank: number, arrivalMs: number) => RequestObserver;
  remove(): void;
}

export interface WorkerMetricsOptions {
  system: SystemServerSettings;
  endpoint: EndpointId;
  model: string;
  /** Dynamo 1.x routes: /metadata and the self-hosted card files under /v1/metadata/. */
  metadataRoutes: boolean;
  health: HealthState;
  /** performance.now() at process start. */
  startedAt: number;
  /** Upper bound of the prompt/generation token histograms. */
  histogramMaxLen: number;
  /** Whether the vLLM-named series carry `worker_id` (see EngineMetrics). */
  vllmWorkerLabel: boolean;
  /** Whether the vLLM-named series exist at all (not on a 1.4 prefill worker). */
  vllmSeries: boolean;
  /** The runtime control API under /mocker/ (--enable-control-api); `token` null = no auth. */
  control?: { control: MockerControl; token: string | null };
  log: Logger;
}

const TEXT = 'text/plain; charset=utf-8';

export async function startWorkerMetrics(o: WorkerMetricsOptions): Promise<{
  server: StatusServer;
  /** Serves these files under their paths (self-hosted card files). */
  serveFiles(served: ReadonlyMap<string, Uint8Array>): void;
  /** Metrics of one worker; an empty `workerId` and no engine count requests that reached no worker. */
  forWorker(workerId: string, engine: Engine | null, queues: PQueue[]): WorkerMetrics;
  /** Counts one fault of a fault plan (`dynamo_mocker_faults_injected_total{kind}`). */
  countFault(kind: string): void;
}> {
  const { registry } = createMetricsRegistry();
  const files = new Map<string, Uint8Array>();
  const routes = (path: string): StaticResponse | undefined => {
    // Dynamo 1.x has data under /metadata only with Kubernetes discovery.
    if (path === '/metadata') return { status: 404, type: TEXT, body: 'Discovery metadata not available' };
    if (!path.startsWith('/v1/metadata/')) return undefined;
    const bytes = files.get(path);
    return bytes ? { status: 200, type: 'application/octet-stream', body: bytes } : { status: 404, type: TEXT, body: 'Not found' };
  };
  const { system } = o;
  const server = await startStatusServer({
    host: system.host,
    port: system.port,
    healthPath: system.healthPath,
    livePath: system.livePath,
    registry,
    health: () => o.health.status(),
    startedAt: o.startedAt,
    routes: o.metadataRoutes ? routes : undefined,
    handlers: o.control ? [controlRoutes(o.control.control, { token: o.control.token, log: (line) => o.log.info(line) })] : undefined,
  }).catch((err: NodeJS.ErrnoException) => {
    throw new ConnectionError(`cannot serve the system status server on ${system.host}:${system.port} (DYN_SYSTEM_HOST/DYN_SYSTEM_PORT): ${err.code ?? err.message}`);
  });
  o.log.info(`system status server listening on ${server.address.host}:${server.address.port}`);
  if (o.control) o.log.info(`control API on /mocker/ (${o.control.token === null ? 'no token' : 'bearer token required'})`);
  const { namespace, component, endpoint } = o.endpoint;
  // Created with the first fault, so a worker without a fault plan exports no such series.
  let faults: Counter<'kind'> | null = null;
  return {
    server,
    countFault(kind) {
      faults ??= new Counter({ name: 'dynamo_mocker_faults_injected_total', help: 'Faults injected by the fault plan, by kind', labelNames: ['kind'], registers: [registry] });
      faults.inc({ kind });
    },
    serveFiles(served) {
      for (const [path, bytes] of served) files.set(path, bytes);
    },
    forWorker(workerId, engine, queues) {
      const request = WorkHandlerMetrics.forWorker(registry, { namespace, component, endpoint, model: o.model, workerId });
      if (engine === null) return { request, remove() {} };
      const em = EngineMetrics.forWorker(registry, { engine, queued: (rank) => queues[rank].size, namespace, component, model: o.model, workerId, vllmSeries: o.vllmSeries }, o.histogramMaxLen, o.vllmWorkerLabel);
      return { request, observe: (rank, arrivalMs) => em.request(rank, arrivalMs), remove: () => em.remove() };
    },
  };
}
