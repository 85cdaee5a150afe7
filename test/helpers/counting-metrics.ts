// Request metrics that count what the request path reports, like the work-handler metrics do (request-path tests).
import type { RequestMetrics, WorkErrorType } from '../../src/metrics/request-metrics.js';

/** Counts what the request path reports, like the work-handler metrics do. */
export class CountingMetrics implements RequestMetrics {
  requests = 0;
  ended = 0;
  requestBytes = 0;
  responseBytes = 0;
  cancellations = 0;
  errors: WorkErrorType[] = [];
  begin(bytes: number) {
    this.requests++;
    this.requestBytes += bytes;
    let done = false;
    return {
      responseBytes: (n: number) => (this.responseBytes += n),
      end: () => {
        if (!done) this.ended++;
        done = true;
      },
    };
  }
  error(type: WorkErrorType) {
    this.errors.push(type);
  }
  cancelled() {
    this.cancellations++;
  }
}
