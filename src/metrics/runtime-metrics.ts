// The process registry (never prom-client's global one) with dynamo_component_uptime_seconds.
import { performance } from 'node:perf_hooks';
import { Gauge, Registry } from 'prom-client';

/**
 * A private registry holding Dynamo's DRT-level uptime gauge (no labels). Like Dynamo, the value is
 * refreshed only when the registry is scraped: seconds since this call, by the millisecond clock `now`.
 */
export function createMetricsRegistry(now: () => number = () => performance.now()): { registry: Registry; uptime: Gauge } {
  const registry = new Registry();
  const started = now();
  const uptime = new Gauge({
    name: 'dynamo_component_uptime_seconds',
    help: 'Total uptime of the DistributedRuntime in seconds',
    registers: [registry],
    collect() {
      this.set(Math.max(0, now() - started) / 1000);
    },
  });
  uptime.set(0);
  return { registry, uptime };
}
