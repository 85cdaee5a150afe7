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
 * The `host:port` Dynamo 0.6.0 writes into `nats://host:port/bucket/file`: async-nats'
 * `server_info` host and port, i.e. what the server announces in its INFO. A server listening on
 * all interfaces announces 0.0.0.0 (or ::), which is no address anyone can dial; then the address
 * this worker actually dialled (host and port, as in NATS_SERVER) is used instead, which also stays
 * right behind a port mapping. The frontend only takes the bucket and object name from the URL,
 * so this choice never changes what it downloads; it only keeps the URL meaningful to a human.
 */
export function objectStoreAuthority(nc: Pick<NatsConnection, 'info' | 'getServer'>): string {
  const dialled = nc.getServer(); // "host:port" of the current server, as listed in `servers`
  const info = nc.info;
  if (!info?.host || !info.port || info.host === '0.0.0.0' || info.host === '::' || info.host === '[::]') return dialled;
  const host = info.host.includes(':') && !info.host.startsWith('[') ? `[${info.host}]` : info.host;
  return `${host}:${info.port}`;
}

/**
 * Dynamo 0.6.0 (`move_to_nats`): uploads each present card file to the JetStream object store
 * bucket named by the card slug (created with the default object-store config if absent), object
 * name = the file's base name, and points the card at `nats://host:port/{slug}/{file}`. The checksum
 * stays the BLAKE3 of the bytes, which the frontend verifies after downloading.
 */
export async function uploadCardFilesToObjectStore(
  nc: NatsConnection,
  slug: string,
  files: ReadonlyMap<CardFileKind, CheckedCardFile>,
): Promise<Map<CardFileKind, CardFile>> {
  const out = new Map<CardFileKind, CardFile>();
  if (files.size === 0) return out;
  const os = await nc.jetstream().views.os(slug);
  const authority = objectStoreAuthority(nc);
  for (const [kind] of CARD_FILE_NAMES) {
    const f = files.get(kind);
    if (!f) continue;
    const name = basename(f.path);
    await os.putBlob({ name }, f.bytes);
    out.set(kind, { path: `nats://${authority}/${slug}/${name}`, checksum: f.checksum });
  }
  return out;
}
