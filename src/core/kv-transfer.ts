// The modelled cost of moving a prompt's KV cache from a prefill worker to a decode worker (Dynamo's formula).

export type KvTransferTimingMode = 'full_prompt' | 'destination_missing';

export interface KvTransferSettings {
  /** GB/s (decimal GB); 0 or less disables the delay. */
  bandwidthGBps: number;
  /** Bytes of KV cache per token; null (unknown) disables the delay, as in Dynamo. */
  bytesPerToken: number | null;
  /** Which tokens cross the wire: the whole prompt, or only what the decode worker does not hold yet. */
  timingMode: KvTransferTimingMode;
}

/** Dynamo's live default: 64 GB/s, full prompt. */
export const KV_TRANSFER_DEFAULTS: KvTransferSettings = { bandwidthGBps: 64, bytesPerToken: null, timingMode: 'full_prompt' };

/** tokens × bytes per token / (bandwidth × 1e9) seconds, in ms; 0 when the settings disable it. */
export function transferDelayMs(tokens: number, s: Pick<KvTransferSettings, 'bandwidthGBps' | 'bytesPerToken'>): number {
  if (s.bytesPerToken === null || !(s.bandwidthGBps > 0) || tokens <= 0) return 0;
  return ((tokens * s.bytesPerToken) / (s.bandwidthGBps * 1e9)) * 1000;
}

/** The tokens whose KV is transferred: the prompt, or (destination_missing) what the destination lacks. */
export function transferTokens(mode: KvTransferTimingMode, promptTokens: number, destinationMissing: number | null): number {
  return mode === 'destination_missing' && destinationMissing !== null ? destinationMissing : promptTokens;
}

/** The attention shape of a model's text config, as far as KV size goes. */
export interface KvShape {
  layers: number;
  kvHeads: number;
  hiddenSize: number;
  attentionHeads: number;
  /** The config's dtype (`dtype` or `torch_dtype`), e.g. "bfloat16"; null when absent. */
  dtype: string | null;
}

/** Bytes per element of a KV cache dtype; unknown names count as 2 bytes, as in Dynamo. */
export function dtypeBytes(dtype: string): number {
  const d = dtype.toLowerCase().replace(/^torch\./, '');
  if (d === 'float32' || d === 'fp32') return 4;
  if (d.startsWith('fp8') || d.startsWith('float8') || d === 'int8') return 1;
  return 2;
}

/**
 * Dynamo's `compute_kv_bytes_per_token`: layers × 2 (K and V) × KV heads × (hidden / heads) × dtype
 * bytes. The head dimension is hidden_size // num_attention_heads even when the config states
 * `head_dim` (Dynamo's rule, kept so both give the same delay). `cacheDtype` "auto" takes the
 * config's dtype (float16 when absent).
 */
export function kvBytesPerToken(shape: KvShape, cacheDtype: string): number {
  const dtype = cacheDtype === 'auto' ? (shape.dtype ?? 'float16') : cacheDtype;
  const headDim = Math.floor(shape.hiddenSize / shape.attentionHeads);
  return shape.layers * 2 * shape.kvHeads * headDim * dtypeBytes(dtype);
}

/** The settings in force: an explicit bytes-per-token wins, else it is derived from the model (null when it cannot be). */
export function resolveKvTransfer(
  s: KvTransferSettings & { cacheDtype: string },
  shape: KvShape | null,
): KvTransferSettings {
  const bytesPerToken = s.bytesPerToken ?? (shape ? kvBytesPerToken(shape, s.cacheDtype) : null);
  return { bandwidthGBps: s.bandwidthGBps, bytesPerToken, timingMode: s.timingMode };
}
