// Dynamo's work-handler metrics (dynamo_component_*) for the generate endpoint, one series per worker.
//
// Dynamo gives every worker process its own registry and attaches the hierarchy labels as *constant*
// labels. Several of our workers may share one process and one registry, so each family is declared
// once per registry with the would-be constant labels as ordinary label names, and every worker
// writes its own children (`worker_id` tells them apart, as in Dynamo's newest runtime).
import { performance } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { WORK_ERROR_TYPES, type RequestMetrics, type RequestTracker, type WorkErrorType } from './request-metrics.js';

/** Dynamo's extended request-duration buckets (PH-02e3: long generations need more than 10 s). */
export const REQUEST_DURATION_BUCKETS: readonly number[] = Object.freeze([
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600,
]);

/** Dynamo's help strings (prometheus_names.rs / push_handler.rs). */
export const WORK_HANDLER_HELP = {
  requests: 'Total number of requests processed by work handler',
  duration: 'Time spent processing requests by work handler',
  inflight: 'Number of requests currently being processed by work handler',
  requestBytes: 'Total number of bytes received in requests by work handler',
  responseBytes: 'Total number of bytes sent in responses by work handler',
  errors: 'Total number of errors in work handler processing',
  cancellations: 'Total number of requests cancelled by work handler',
} as const;

/**
 * Dynamo's `sanitize_prometheus_label`, step for step:
 * 1. empty input → error;
 * 2. every character outside `[a-zA-Z0-9_]` becomes one `_` (colons too; runs are not collapsed;
 *    one `_` per Unicode code point, like Rust's regex on a `&str`);
 * 3. if the first character is not a letter or `_`, one `_` is prepended;
 * 4. a leading `__` (reserved by Prometheus) is stripped, and if what remains is empty or does not
 *    start with an ASCII letter one `_` is put back;
 * 5. a result made only of `_` → error.
 */
export function sanitizePrometheusLabel(raw: string): string {
  if (raw === '') throw new Error('Cannot sanitize empty string into valid Prometheus label');
  let s = raw.replace(/[^a-zA-Z0-9_]/gu, '_');
  if (/^[^a-zA-Z_]/u.test(s)) s = `_${s}`;
  if (s.startsWith('__')) {
    s = s.slice(2);
    if (s === '' || !/^[a-zA-Z]/.test(s)) s = `_${s}`;
  }
  if (/^_*$/.test(s)) {
    throw new Error(`Input '${raw}' contains only invalid characters and cannot be sanitized into a valid Prometheus label`);
  }
  return s;
}

export interface WorkerLabels {
  /** Dynamo namespace, component and endpoint names: exported through sanitizePrometheusLabel. */
  namespace: string;
  component: string;
  endpoint: string;
  /** The served model name: a caller label in Dynamo (`metrics_labels`), exported verbatim. */
  model: string;
  /** Lease (instance) id in lowercase hex, exported verbatim like Dynamo's `format!("{:x}")`. */
  workerId: string;
}

export const WORK_HANDLER_LABELS = ['dynamo_namespace', 'dynamo_component', 'dynamo_endpoint', 'model', 'worker_id'] as const;
type LabelSet = Record<(typeof WORK_HANDLER_LABELS)[number], string>;

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

/** The metric objects of one registry, created on first use and shared by every worker after that. */
function family(registry: Registry): Family {
  let f = families.get(registry);
  if (f) return f;
  const labelNames = [...WORK_HANDLER_LABELS];
  const registers = [registry];
  const h = WORK_HANDLER_HELP;
  f = {
    requests: new Counter({ name: 'dynamo_component_requests_total', help: h.requests, labelNames, registers }),
    duration: new Histogram({
      name: 'dynamo_component_request_duration_seconds',
      help: h.duration,
      labelNames,
      buckets: [...REQUEST_DURATION_BUCKETS],
      registers,
    }),
    inflight: new Gauge({ name: 'dynamo_component_inflight_requests', help: h.inflight, labelNames, registers }),
    requestBytes: new Counter({ name: 'dynamo_component_request_bytes_total', help: h.requestBytes, labelNames, registers }),
    responseBytes: new Counter({ name: 'dynamo_component_response_bytes_total', help: h.responseBytes, labelNames, registers }),
    errors: new Counter({ name: 'dynamo_component_errors_total', help: h.errors, labelNames: [...labelNames, 'error_type'], registers }),
    cancellations: new Counter({ name: 'dynamo_component_cancellation_total', help: h.cancellations, labelNames, registers }),
  };
  families.set(registry, f);
  return f;
}

/** Dynamo drops a hierarchy label whose name is empty; an empty value is the exposition equivalent. */
const hierarchyLabel = (value: string): string => (value === '' ? '' : sanitizePrometheusLabel(value));

export class WorkHandlerMetrics implements RequestMetrics {
  /** The exported label values of this worker's series. */
  readonly labels: Readonly<LabelSet>;

  private constructor(
    private readonly f: Family,
    labels: LabelSet,
    private readonly now: () => number,
  ) {
    this.labels = Object.freeze(labels);
  }

  /**
   * Metrics of one worker in `registry`. The first call on a registry declares the families; later
   * calls (other workers) reuse them. `now` is a millisecond clock (default performance.now).
   */
  static forWorker(registry: Registry, l: WorkerLabels, now: () => number = () => performance.now()): WorkHandlerMetrics {
    const f = family(registry);
    const labels: LabelSet = {
      dynamo_namespace: hierarchyLabel(l.namespace),
      dynamo_component: hierarchyLabel(l.component),
      dynamo_endpoint: hierarchyLabel(l.endpoint),
      model: l.model,
      worker_id: l.workerId,
    };
    // Series exist (at 0) from the start, as Dynamo's label-less metrics do, so dashboards see the
    // worker before its first request. errors_total is a CounterVec in Dynamo, with no series until
    // an error happens; here every error_type starts at 0 too, so `rate(errors_total)` is 0 on a
    // healthy worker rather than "no data", and error panels and alerts work from the first scrape.
    for (const type of WORK_ERROR_TYPES) f.errors.inc({ ...labels, error_type: type }, 0);
    f.requests.inc(labels, 0);
    f.inflight.inc(labels, 0);
    f.requestBytes.inc(labels, 0);
    f.responseBytes.inc(labels, 0);
    f.cancellations.inc(labels, 0);
    f.duration.zero(labels);
    return new WorkHandlerMetrics(f, labels, now);
  }

  /**
   * At entry, before decoding: requests_total +1, inflight +1, request_bytes += the raw request-plane
   * payload length, so malformed requests count too. `end()` (idempotent) is the drop guard:
   * inflight −1 and one duration observation in seconds since `begin`.
   */
  begin(requestBytes: number): RequestTracker {
    const { f, labels } = this;
    const start = this.now();
    f.requests.inc(labels);
    f.inflight.inc(labels);
    f.requestBytes.inc(labels, requestBytes);
    let ended = false;
    return {
      responseBytes: (n: number) => f.responseBytes.inc(labels, n),
      end: () => {
        if (ended) return;
        ended = true;
        f.inflight.dec(labels);
        f.duration.observe(labels, Math.max(0, this.now() - start) / 1000);
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
