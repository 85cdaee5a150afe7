// Dynamo's work-handler metrics (dynamo_component_*) for the generate endpoint, one series per worker.
import { performance } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { RequestMetrics, RequestTracker, WorkErrorType } from '../dynamo/request-handler.js';

/** Dynamo's extended request-duration buckets (long generations need more than 10 s). */
export const REQUEST_DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600];

/** Dynamo's sanitize_prometheus_label: invalid chars → '_', must start with a letter or '_', no leading '__'. */
export function sanitizePrometheusLabel(value: string): string {
  if (value === '') throw new Error('empty label value');
  let s = value.replace(/[^a-zA-Z0-9_]/g, '_');
  if (/^_+$/.test(s)) throw new Error(`label value '${value}' has no usable characters`);
  if (!/^[a-zA-Z_]/.test(s)) s = `_${s}`;
  // Names starting with '__' are reserved by Prometheus.
  if (s.startsWith('__')) {
    s = s.slice(2);
    if (s === '' || !/^[a-zA-Z]/.test(s)) s = `_${s}`;
  }
  return s;
}

export interface WorkerLabels {
  namespace: string;
  component: string;
  endpoint: string;
  model: string;
  /** Lease id in hex: several workers may share one process and one registry. */
  workerId: string;
}

const LABELS = ['dynamo_namespace', 'dynamo_component', 'dynamo_endpoint', 'model', 'worker_id'] as const;

interface Family {
  requests: Counter<string>;
  duration: Histogram<string>;
  inflight: Gauge<string>;
  requestBytes: Counter<string>;
  responseBytes: Counter<string>;
  errors: Counter<string>;
  cancellations: Counter<string>;
}

const families = new WeakMap<Registry, Family>();

function family(registry: Registry): Family {
  let f = families.get(registry);
  if (f) return f;
  const labelNames = [...LABELS];
  const registers = [registry];
  f = {
    requests: new Counter({ name: 'dynamo_component_requests_total', help: 'Total number of requests processed by work handler', labelNames, registers }),
    duration: new Histogram({
      name: 'dynamo_component_request_duration_seconds',
      help: 'Time spent processing requests by work handler',
      labelNames,
      buckets: REQUEST_DURATION_BUCKETS,
      registers,
    }),
    inflight: new Gauge({ name: 'dynamo_component_inflight_requests', help: 'Number of requests currently being processed by work handler', labelNames, registers }),
    requestBytes: new Counter({ name: 'dynamo_component_request_bytes_total', help: 'Total number of bytes received in requests by work handler', labelNames, registers }),
    responseBytes: new Counter({ name: 'dynamo_component_response_bytes_total', help: 'Total number of bytes sent in responses by work handler', labelNames, registers }),
    errors: new Counter({ name: 'dynamo_component_errors_total', help: 'Total number of errors in work handler processing', labelNames: [...labelNames, 'error_type'], registers }),
    cancellations: new Counter({ name: 'dynamo_component_cancellation_total', help: 'Total number of requests cancelled by work handler', labelNames, registers }),
  };
  families.set(registry, f);
  return f;
}

export class WorkHandlerMetrics implements RequestMetrics {
  private constructor(
    private readonly f: Family,
    private readonly labels: Record<(typeof LABELS)[number], string>,
    private readonly now: () => number,
  ) {}

  static forWorker(registry: Registry, l: WorkerLabels, now: () => number = () => performance.now()): WorkHandlerMetrics {
    const f = family(registry);
    const labels = {
      dynamo_namespace: sanitizePrometheusLabel(l.namespace),
      dynamo_component: sanitizePrometheusLabel(l.component),
      dynamo_endpoint: sanitizePrometheusLabel(l.endpoint),
      model: l.model,
      worker_id: l.workerId,
    };
    // Series exist (at 0) from the start, so dashboards see the worker before its first request.
    f.requests.inc(labels, 0);
    f.inflight.set(labels, 0);
    f.requestBytes.inc(labels, 0);
    f.responseBytes.inc(labels, 0);
    f.cancellations.inc(labels, 0);
    f.duration.zero(labels);
    return new WorkHandlerMetrics(f, labels, now);
  }

  /** At entry, before decoding: the request counts even if it turns out malformed. */
  begin(requestBytes: number): RequestTracker {
    const { f, labels } = this;
    const start = this.now();
    f.requests.inc(labels);
    f.inflight.inc(labels);
    f.requestBytes.inc(labels, requestBytes);
    let ended = false;
    return {
      responseBytes: (n) => f.responseBytes.inc(labels, n),
      end: () => {
        if (ended) return;
        ended = true;
        f.inflight.dec(labels);
        f.duration.observe(labels, (this.now() - start) / 1000);
      },
    };
  }

  error(type: WorkErrorType): void {
    this.f.errors.inc({ ...this.labels, error_type: type });
  }

  cancelled(): void {
    this.f.cancellations.inc(this.labels);
  }
}
