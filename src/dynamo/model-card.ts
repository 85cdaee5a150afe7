// The ModelDeploymentCard and Instance records, serialized field for field as Dynamo 0.6.x writes them.
import { basename } from 'node:path';
import type { NatsConnection } from 'nats';
import type { EndpointId } from '../config.js';
import type { CheckedCardFile } from '../model/card-files.js';
import { CARD_FILE_NAMES, type CardFileKind } from '../model/resolve-model.js';
import { stringifyJson } from './lossless-json.js';
import { slugify } from './names.js';

export interface CardFile {
  path: string;
  checksum: string;
}

export interface ModelCardInput {
  displayName: string;
  files: ReadonlyMap<CardFileKind, CardFile>;
  contextLength: number;
  blockSize: number;
  migrationLimit?: number;
  runtime: { totalKvBlocks: number; maxNumSeqs: number; maxNumBatchedTokens: number | null; dataParallelSize: number };
}

/** Compact JSON in the card's declaration order; optional file fields are omitted when absent. */
export function buildModelCard(input: ModelCardInput): string {
  const file = (kind: CardFileKind) => {
    const f = input.files.get(kind);
    return f ? { path: f.path, checksum: f.checksum } : undefined;
  };
  const wrap = (tag: string, kind: CardFileKind) => {
    const f = file(kind);
    return f ? { [tag]: f } : undefined;
  };
  const card: Record<string, unknown> = {
    display_name: input.displayName,
    slug: slugify(input.displayName),
    model_info: wrap('hf_config_json', 'config') ?? null,
    tokenizer: wrap('hf_tokenizer_json', 'tokenizer') ?? null,
    prompt_formatter: wrap('hf_tokenizer_config_json', 'tokenizerConfig'),
    chat_template_file: wrap('hf_chat_template', 'chatTemplate'),
    gen_config: wrap('hf_generation_config_json', 'generationConfig'),
    context_length: input.contextLength,
    kv_cache_block_size: input.blockSize,
    migration_limit: input.migrationLimit ?? 0,
    model_type: 'Chat | Completions',
    model_input: 'Tokens',
    runtime_config: {
      total_kv_blocks: input.runtime.totalKvBlocks,
      max_num_seqs: input.runtime.maxNumSeqs,
      max_num_batched_tokens: input.runtime.maxNumBatchedTokens,
      tool_call_parser: null,
      reasoning_parser: null,
      data_parallel_size: input.runtime.dataParallelSize,
    },
  };
  return stringifyJson(card);
}

/** The Instance record under v1/instances: pretty JSON, exact u64 instance id. */
export function instanceRecord(ep: EndpointId, leaseId: bigint, subject: string): string {
  return stringifyJson(
    { component: ep.component, endpoint: ep.endpoint, namespace: ep.namespace, instance_id: leaseId, transport: { nats_tcp: subject } },
    { pretty: true },
  );
}

/**
 * Dynamo 0.6.0: uploads the card files to the JetStream object store bucket named by the slug and
 * points the card at `nats://host:port/bucket/file`. The frontend only uses the bucket and object
 * name from the URL; the host is the one this worker connected to, since the server may report
 * 0.0.0.0 as its own address.
 */
export async function uploadCardFilesToObjectStore(
  nc: NatsConnection,
  slug: string,
  files: ReadonlyMap<CardFileKind, CheckedCardFile>,
): Promise<Map<CardFileKind, CardFile>> {
  const os = await nc.jetstream().views.os(slug);
  const server = nc.getServer();
  const out = new Map<CardFileKind, CardFile>();
  for (const [kind] of CARD_FILE_NAMES) {
    const f = files.get(kind);
    if (!f) continue;
    const name = basename(f.path);
    await os.putBlob({ name }, f.bytes);
    out.set(kind, { path: `nats://${server}/${slug}/${name}`, checksum: f.checksum });
  }
  return out;
}
