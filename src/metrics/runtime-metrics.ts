// The process registry (never prom-client's global one) with dynamo_component_uptime_seconds.
import { performance } from 'node:perf_hooks';
import { Gauge, Registry } from 'prom-client';

export function createMetricsRegistry(now: () => number = () => performance.now()): { registry: Registry; uptime: Gauge } {
  const registry = new Registry();
  const started = now();
  const uptime = new Gauge({
    name: 'dynamo_component_uptime_seconds',
    help: 'Total uptime of the DistributedRuntime in seconds',
    registers: [registry],
    collect() {
      this.set((now() - started) / 1000);
    },
  });
  return { registry, uptime };
}
