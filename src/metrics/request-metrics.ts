// What the request path counts (Dynamo's work-handler metrics), as an interface the serving layer writes to.

/** Every `error_type` value of dynamo_component_errors_total. */
export const WORK_ERROR_TYPES = Object.freeze([
  'deserialization',
  'invalid_message',
  'response_stream',
  'generate',
  'publish_response',
  'publish_final',
] as const);

export type WorkErrorType = (typeof WORK_ERROR_TYPES)[number];

export interface RequestTracker {
  responseBytes(n: number): void;
  /** Idempotent: the request's last frame went out (or it was dropped). */
  end(): void;
}

export interface RequestMetrics {
  begin(requestBytes: number): RequestTracker;
  error(type: WorkErrorType): void;
  cancelled(): void;
}

/** Per-request latency hooks (the vLLM TTFT/ITL/E2E histograms). */
export interface RequestObserver {
  token(atMs: number): void;
  finish(atMs: number, promptTokens: number, outputTokens: number): void;
}

const NO_TRACKER: RequestTracker = { responseBytes() {}, end() {} };

/** For a worker without a system status server: nothing could ever read the metrics. */
export const NO_REQUEST_METRICS: RequestMetrics = {
  begin: () => NO_TRACKER,
  error() {},
  cancelled() {},
};
