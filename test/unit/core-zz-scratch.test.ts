import { it } from 'vitest';
import { makeEngine, runToCompletion, request, tokens } from '../helpers/core-fixtures.js';
it('stall', async () => {
  // N=10, bs 4, watermark 0.1 (1 block kept free), FIFO, budget 2
  const engine = await makeEngine({ numGpuBlocks: 10, blockSize: 4, watermark: 0.1, preemptionMode: 'fifo', maxNumBatchedTokens: 2, enablePrefixCaching: false });
  const reqs = [request(1, 0, tokens(4), 34)];
  for (let t = 1; t < 40; t++) reqs.push(request(100 + t, t * 6, tokens(4, 1000), 6));
  try {
    const out = runToCompletion(engine, reqs, { onPass(ctx, rank, r) { if (r.preempted.length) console.log('preempt', r.startMs, r.preempted.map(s => [s.key, s.knownLength])); } });
    console.log('ok', out.endMs, out.records.get(1)!.tokens.length);
  } catch (e) { console.log('ERR', (e as Error).message, engine.ranks[0].snapshot()); }
});
