// Readiness for /health and /live: ready once every registered endpoint serves, not while draining.

export type EndpointStatus = 'ready' | 'notready';

export class HealthState {
  private readonly endpoints = new Map<string, EndpointStatus>();
  private draining = false;

  /**
   * Unlike Dynamo's mocker (whose /health stays 503 unless DYN_SYSTEM_STARTING_HEALTH_STATUS=ready,
   * because it registers no health-check payload), this worker is ready as soon as its endpoint
   * serves; `startingStatus = 'ready'` reports ready even before that.
   */
  constructor(private readonly startingStatus: EndpointStatus = 'notready') {}

  setEndpoint(name: string, status: EndpointStatus): void {
    this.endpoints.set(name, status);
  }

  setDraining(draining: boolean): void {
    this.draining = draining;
  }

  status(): { ready: boolean; endpoints: Record<string, EndpointStatus> } {
    const endpoints = Object.fromEntries(this.endpoints);
    if (this.draining) return { ready: false, endpoints };
    const values = [...this.endpoints.values()];
    const ready = values.length === 0 ? this.startingStatus === 'ready' : values.every((v) => v === 'ready');
    return { ready, endpoints };
  }
}
