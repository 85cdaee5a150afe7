// The ModelDeploymentCard, serialized field for field as Dynamo 0.6.x and 1.4 write it, and 0.6.0's object-store upload.
import { basename } from 'node:path';
import type { NatsConnection } from 'nats';
import type { CheckedCardFile } from '../model/card-files.js';
import { CARD_FILE_NAMES, type CardFileKind } from '../model/resolve-model.js';
import type { WorkerType } from '../core/types.js';
import { stringifyJson } from './lossless-json.js';
import { slugify } from './names.js';

export interface CardFile {
  path: string;
  checksum: string;
  /** Bytes (1.x cards only: the frontend's download cap). */
  size?: number;
}

export interface ModelCardInput {
  displayName: string;
  files: ReadonlyMap<CardFileKind, CardFile>;
  contextLength: number;
  blockSize: number;
  migrationLimit?: number;
  runtime: { totalKvBlocks: number; maxNumSeqs: number; maxNumBatchedTokens: number | null; dataParallelSize: number };
  /** A prefill worker's card says `"Prefill"` (0.6.x's marker, which activates the frontend's prefill router). */
  workerType?: WorkerType;
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
    model_type: input.workerType === 'prefill' ? 'Prefill' : 'Chat | Completions',
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

export interface ModelCard1xInput {
  displayName: string;
  /** The HF repo id or the model directory the files came from (the frontend's fallback source). */
  sourcePath: string;
  files: ReadonlyMap<CardFileKind, CardFile>;
  /** The model's own limit (max_position_embeddings); null when unknown. */
  architecturalContextLength: number | null;
  /** The limit the engine enforces (--max-model-len, else the model's); null when unknown. */
  runtimeContextLength: number | null;
  blockSize: number;
  migrationLimit?: number;
  runtime: { totalKvBlocks: number; maxNumSeqs: number; maxNumBatchedTokens: number | null; dataParallelSize: number };
  /** Whether the router may query this worker's KV indexer (it serves no recovery endpoint). */
  enableLocalIndexer: boolean;
  /** Whether KV events are published (routers check it before waiting for this worker's events). */
  kvEventPublishingEnabled: boolean;
  workerType?: WorkerType;
  /** A prefill worker's bootstrap server, where decode workers fetch their KV (1.4 frontends start bootstrap sessions on it). */
  disaggregatedEndpoint?: { host: string; port: number } | null;
}

/** 1.4's readiness topology: what each role is and which roles it needs alive (`worker_type`, `needs`). */
const TOPOLOGY: Record<WorkerType, { modelType: string; needs: string[][] }> = {
  aggregated: { modelType: 'Chat | Completions', needs: [] },
  // Dynamo's mocker writes the empty bitflags for a prefill worker: it serves no chat or completions itself.
  prefill: { modelType: '', needs: [['decode']] },
  decode: { modelType: 'Chat | Completions', needs: [['prefill']] },
};

/**
 * The card as Dynamo 1.4 writes it (`model_card.rs` `for_mdc_wire`), in declaration order:
 * `architectural_max_context_length` before the legacy `context_length` that 1.4 writes again for
 * 1.2 frontends, `worker_type` and `needs` for the readiness gate, a struct-form chat template,
 * CheckedFiles with their size, and the runtime config with Dynamo's defaults spelled out.
 */
export function buildModelCard1x(input: ModelCard1xInput): string {
  const file = (kind: CardFileKind) => {
    const f = input.files.get(kind);
    if (!f) return undefined;
    // stringifyJson leaves out an undefined size.
    return { path: f.path, checksum: f.checksum, size: f.size };
  };
  const wrap = (tag: string, kind: CardFileKind) => {
    const f = file(kind);
    return f ? { [tag]: f } : undefined;
  };
  const template = file('chatTemplate');
  const workerType = input.workerType ?? 'aggregated';
  const effectiveContext = input.runtimeContextLength ?? input.architecturalContextLength ?? undefined;
  const card: Record<string, unknown> = {
    display_name: input.displayName,
    slug: slugify(input.displayName),
    source_path: input.sourcePath,
    model_info: wrap('hf_config_json', 'config') ?? null,
    tokenizer: wrap('hf_tokenizer_json', 'tokenizer') ?? null,
    prompt_formatter: wrap('hf_tokenizer_config_json', 'tokenizerConfig'),
    chat_template_file: template ? { hf_chat_template: { is_custom: false, file: template } } : undefined,
    gen_config: wrap('hf_generation_config_json', 'generationConfig'),
    architectural_max_context_length: input.architecturalContextLength ?? undefined,
    context_length: effectiveContext,
    kv_cache_block_size: input.blockSize,
    migration_limit: input.migrationLimit ?? 0,
    model_type: TOPOLOGY[workerType].modelType,
    model_input: 'Tokens',
    worker_type: workerType,
    needs: TOPOLOGY[workerType].needs,
    runtime_config: {
      context_length: input.runtimeContextLength ?? undefined,
      total_kv_blocks: input.runtime.totalKvBlocks,
      max_num_seqs: input.runtime.maxNumSeqs,
      max_num_batched_tokens: input.runtime.maxNumBatchedTokens,
      tool_call_parser: null,
      reasoning_parser: null,
      tool_call_arguments_format: 'json_string',
      structural_tag_mode: 'off',
      structural_tag_scope: 'auto',
      structural_tag_schema: 'auto',
      exclude_tools_when_tool_choice_none: true,
      data_parallel_start_rank: 0,
      data_parallel_size: input.runtime.dataParallelSize,
      enable_local_indexer: input.enableLocalIndexer,
      kv_event_publishing_enabled: input.kvEventPublishingEnabled,
      disaggregated_endpoint: input.disaggregatedEndpoint
        ? { bootstrap_host: input.disaggregatedEndpoint.host, bootstrap_port: input.disaggregatedEndpoint.port }
        : undefined,
      enable_eagle: false,
    },
    media_decoder: null,
    media_fetcher: null,
  };
  return stringifyJson(card);
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
