// Readiness for /health and /live.
//
// Our rule: ready ⇔ not draining AND (at least one endpoint is registered AND every registered
// endpoint is ready). With DYN_SYSTEM_STARTING_HEALTH_STATUS=ready the worker also reports ready
// while no endpoint is registered yet (still not while draining, nor once a registered endpoint is
// notready).
//
// Dynamo's rule differs on purpose: there, endpoints without a health-check payload do not count, so
// its mocker (which registers no payload) stays at the starting status — 503 forever unless
// DYN_SYSTEM_STARTING_HEALTH_STATUS=ready — although its endpoint map shows `generate: ready`. Our
// worker serves as soon as its endpoint is registered, so /health says so.

export type EndpointStatus = 'ready' | 'notready';

export interface HealthReport {
  ready: boolean;
  endpoints: Record<string, EndpointStatus>;
}

export class HealthState {
  private readonly endpoints = new Map<string, EndpointStatus>();
  private drainingFlag = false;

  constructor(private readonly startingStatus: EndpointStatus = 'notready') {}

  /** Registers or updates an endpoint (keyed by endpoint name, e.g. `generate`, as in Dynamo). */
  setEndpoint(name: string, status: EndpointStatus): void {
    this.endpoints.set(name, status);
  }

  /** Graceful shutdown: not ready from now on, whatever the endpoints say. */
  setDraining(draining: boolean): void {
    this.drainingFlag = draining;
  }

  get draining(): boolean {
    return this.drainingFlag;
  }

  status(): HealthReport {
    const endpoints = Object.fromEntries(this.endpoints) as Record<string, EndpointStatus>;
    if (this.drainingFlag) return { ready: false, endpoints };
    const values = [...this.endpoints.values()];
    const ready = values.length === 0 ? this.startingStatus === 'ready' : values.every((v) => v === 'ready');
    return { ready, endpoints };
  }
}
