// Dynamo names, the model card and the instance record, byte for byte.
import { describe, expect, it } from 'vitest';
import { buildModelCard, instanceRecord } from '../../src/dynamo/model-card.js';
import { cardKey, instanceKey, kvEventStreamName, kvMetricsSubject, leaseHex, requestSubject, serviceName, slugify } from '../../src/dynamo/names.js';

const EP = { namespace: 'dynamo', component: 'backend', endpoint: 'generate' };
const LEASE = 0x694d9981145a61adn;

describe('names', () => {
  it('slugifies like Dynamo', () => {
    expect(slugify('Qwen/Qwen3-0.6B')).toBe('qwen_qwen3-0_6b');
    expect(slugify('__x.y')).toBe('x_y');
    expect(serviceName(EP)).toBe('dynamo_backend');
  });
  it('derives keys and subjects from the lease id', () => {
    expect(LEASE).toBe(7587889726860452269n);
    expect(leaseHex(LEASE)).toBe('694d9981145a61ad');
    expect(leaseHex(0x00abcn)).toBe('abc');
    expect(requestSubject(EP, LEASE)).toBe('dynamo_backend.generate-694d9981145a61ad');
    expect(instanceKey(EP, LEASE)).toBe('v1/instances/dynamo/backend/generate/694d9981145a61ad');
    expect(cardKey(EP, LEASE)).toBe('v1/mdc/dynamo/backend/generate/694d9981145a61ad');
  });
  it('names the KV event stream and load subject', () => {
    expect(kvEventStreamName('dynamo', 'backend')).toBe('namespace-dynamo-component-backend-kv-events');
    expect(kvEventStreamName('my_ns', 'back_end')).toBe('namespace-my-ns-component-back-end-kv-events');
    expect(kvMetricsSubject('my_ns')).toBe('namespace.my_ns.kv_metrics');
  });
});

describe('records', () => {
  it('writes the instance record as serde pretty JSON with an exact u64', () => {
    expect(instanceRecord(EP, LEASE, 'dynamo_backend.generate-694d9981145a61ad')).toBe(
      '{\n  "component": "backend",\n  "endpoint": "generate",\n  "namespace": "dynamo",\n  "instance_id": 7587889726860452269,\n  "transport": {\n    "nats_tcp": "dynamo_backend.generate-694d9981145a61ad"\n  }\n}',
    );
  });

  const runtime = { totalKvBlocks: 16384, maxNumSeqs: 256, maxNumBatchedTokens: 8192, dataParallelSize: 1 };

  it('writes a full card in declaration order', () => {
    const f = (p: string) => ({ path: `/m/${p}`, checksum: `blake3:${'a'.repeat(64)}` });
    const card = buildModelCard({
      displayName: 'Qwen/Qwen3-0.6B',
      files: new Map([
        ['config', f('config.json')],
        ['tokenizer', f('tokenizer.json')],
        ['tokenizerConfig', f('tokenizer_config.json')],
        ['chatTemplate', f('chat_template.jinja')],
        ['generationConfig', f('generation_config.json')],
      ] as const),
      contextLength: 40960,
      blockSize: 64,
      runtime,
    });
    const c = (p: string) => `{"path":"/m/${p}","checksum":"blake3:${'a'.repeat(64)}"}`;
    expect(card).toBe(
      `{"display_name":"Qwen/Qwen3-0.6B","slug":"qwen_qwen3-0_6b","model_info":{"hf_config_json":${c('config.json')}},` +
        `"tokenizer":{"hf_tokenizer_json":${c('tokenizer.json')}},"prompt_formatter":{"hf_tokenizer_config_json":${c('tokenizer_config.json')}},` +
        `"chat_template_file":{"hf_chat_template":${c('chat_template.jinja')}},"gen_config":{"hf_generation_config_json":${c('generation_config.json')}},` +
        `"context_length":40960,"kv_cache_block_size":64,"migration_limit":0,"model_type":"Chat | Completions","model_input":"Tokens",` +
        `"runtime_config":{"total_kv_blocks":16384,"max_num_seqs":256,"max_num_batched_tokens":8192,"tool_call_parser":null,"reasoning_parser":null,"data_parallel_size":1}}`,
    );
  });

  it('writes a card without files: nulls for the required ones, optional ones omitted', () => {
    const card = buildModelCard({ displayName: 'x/y', files: new Map(), contextLength: 0, blockSize: 16, runtime: { ...runtime, maxNumBatchedTokens: null, dataParallelSize: 2 } });
    expect(card).toBe(
      '{"display_name":"x/y","slug":"x_y","model_info":null,"tokenizer":null,"context_length":0,"kv_cache_block_size":16,"migration_limit":0,' +
        '"model_type":"Chat | Completions","model_input":"Tokens","runtime_config":{"total_kv_blocks":16384,"max_num_seqs":256,"max_num_batched_tokens":null,"tool_call_parser":null,"reasoning_parser":null,"data_parallel_size":2}}',
    );
  });
});
