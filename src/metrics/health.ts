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
//
// With --num-workers N, the N workers of one process share one status server: an endpoint name is
// ready only when all N instances serving it are, so one worker still starting or already stopping
// makes the process notready.

import type { EndpointStatus } from '../config.js';

export type { EndpointStatus };

export interface HealthReport {
  ready: boolean;
  endpoints: Record<string, EndpointStatus>;
}

export class HealthState {
  /** endpoint name → instance (e.g. lease id in hex) → status */
  private readonly endpoints = new Map<string, Map<string, EndpointStatus>>();
  private drainingFlag = false;

  /** `instancesPerEndpoint`: how many instances (workers) must report before a name can be ready. */
  constructor(
    private readonly startingStatus: EndpointStatus = 'notready',
    private readonly instancesPerEndpoint = 1,
  ) {}

  /** Registers or updates one instance of an endpoint (reported by name, e.g. `generate`, as in Dynamo). */
  setEndpoint(name: string, status: EndpointStatus, instance = ''): void {
    let m = this.endpoints.get(name);
    if (!m) this.endpoints.set(name, (m = new Map()));
    m.set(instance, status);
  }

  /** Forgets one instance of an endpoint (a worker replaced under a new instance id). */
  removeEndpoint(name: string, instance = ''): void {
    this.endpoints.get(name)?.delete(instance);
  }

  /** Graceful shutdown: not ready from now on, whatever the endpoints say. */
  setDraining(draining: boolean): void {
    this.drainingFlag = draining;
  }

  get draining(): boolean {
    return this.drainingFlag;
  }

  status(): HealthReport {
    const endpoints: Record<string, EndpointStatus> = {};
    for (const [name, instances] of this.endpoints) {
      const all = instances.size >= this.instancesPerEndpoint && [...instances.values()].every((v) => v === 'ready');
      endpoints[name] = all ? 'ready' : 'notready';
    }
    if (this.drainingFlag) return { ready: false, endpoints };
    const values = Object.values(endpoints);
    const ready = values.length === 0 ? this.startingStatus === 'ready' : values.every((v) => v === 'ready');
    return { ready, endpoints };
  }
}
