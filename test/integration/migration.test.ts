// Request migration: a worker whose fault plan cuts every stream, a second one, and a client that migrates as Dynamo's frontend does.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DynamoClient } from '../../src/client/dynamo-client.js';
import { generateWithMigration } from '../../src/client/migration.js';
import { TINY_MODEL, startWorkerProcess, type WorkerProcess } from '../helpers/worker-process.js';
import { waitFor } from '../helpers/servers.js';

const EP = { namespace: 'migrate', component: 'backend', endpoint: 'generate' };
const prompt = (n: number, base = 0): number[] => Array.from({ length: n }, (_, i) => ((base + i) % 1900) + 10);

describe('migration of cut streams (1.4, file discovery + TCP)', () => {
  const root = mkdtempSync(join(tmpdir(), 'dyn-migrate-'));
  const plan = join(root, 'cut.json');
  writeFileSync(plan, JSON.stringify({ seed: 1, rules: [{ action: { kind: 'cut', after_tokens: 5 } }] }));
  const env = { DYN_NAMESPACE: EP.namespace, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: join(root, 'kv') };
  const workers: WorkerProcess[] = [];
  let client: DynamoClient;
  afterAll(async () => {
    await client?.close();
    await Promise.all(workers.map((w) => w.stop()));
  });

  it('every request ends with exactly max_tokens tokens, the rest from the other worker, and the cutting worker leaks nothing', async () => {
    const args = ['--model-path', TINY_MODEL, '--dynamo-version', '1.4', '--block-size', '16', '--migration-limit', '1'];
    client = await DynamoClient.connect({ discovery: 'file', fileRoot: env.DYN_FILE_KV });
    // The cutting worker registers alone first, so its instance id is the only one there.
    const cutter = await startWorkerProcess([...args, '--faults', plan], env);
    workers.push(cutter);
    const [{ instanceId: cutterId }] = await client.waitForInstances(EP, 1);
    workers.push(await startWorkerProcess(args, env));
    const instances = await client.waitForInstances(EP, 2);
    // The card tells a frontend how often it may migrate.
    for (const inst of instances) expect((await client.card(EP, inst.instanceId))!.migration_limit).toBe(1);
    const first = instances.findIndex((i) => i.instanceId === cutterId);
    expect(first).toBeGreaterThanOrEqual(0);

    const runs = await Promise.all(
      Array.from({ length: 6 }, (_, i) => generateWithMigration(client, instances, first, { tokenIds: prompt(40, i * 100), maxTokens: 12 }, 1)),
    );
    for (const run of runs) {
      expect(run.migrations).toBe(1);
      expect(run.instances).toEqual([cutterId, instances[(first + 1) % 2].instanceId]);
      expect(run.result.tokenIds).toHaveLength(12);
      expect(run.result.completeFinal).toBe(true);
      expect(run.result.finishReason).toBe('length');
      expect(run.result.errors).toEqual([]);
    }
    // Without migration the client sees the cut: 5 tokens, no complete_final, no error.
    const alone = await generateWithMigration(client, instances, first, { tokenIds: prompt(40, 7), maxTokens: 12 }, 0);
    expect(alone.migrations).toBe(0);
    expect(alone.result.tokenIds).toHaveLength(5);
    expect(alone.result.completeFinal).toBe(false);
    expect(alone.result.errors).toEqual([]);

    await waitFor(async () => (await cutter.metric('dynamo_component_inflight_requests')) === 0);
    await waitFor(async () => (await cutter.metric('dynamo_component_kvstats_active_blocks')) === 0);
    expect(await cutter.metric('dynamo_mocker_faults_injected_total{kind="cut"}')).toBe(7);
  });
});
