// The frontend's prefill router, for driving a prefill/decode pair: Dynamo 1.4's bootstrap and prefill_result paths, and 0.6.1's.
import { randomBytes, randomUUID } from 'node:crypto';
import type { JsonValue } from '../dynamo/lossless-json.js';
import type { DynamoClient, GenerateRequest, Instance } from './dynamo-client.js';
import type { StreamResult } from './stream-server.js';
import type { EndpointId } from '../config.js';

/** How the pair was driven: a bootstrap session (1.3+), prefill then decode with `prefill_result` (1.x), or 0.6.1's `disaggregated_params`. */
export type DisaggPath = 'bootstrap' | 'prefill-result' | 'legacy';

export interface DisaggOutcome {
  path: DisaggPath;
  requestId: string;
  sentAt: number;
  prefill: StreamResult;
  decode: StreamResult | null;
  /** performance.now() of the prefill's token item, and of its last item (the `length` chunk). */
  prefillTokenAt: number | null;
  prefillEndAt: number | null;
  /** Why no decode was sent (a failed prefill); the stream errors otherwise. */
  error: string | null;
}

/** A random bootstrap room (Dynamo keeps it ≤ 2^63 − 1). */
function bootstrapRoom(): bigint {
  return randomBytes(8).readBigUInt64BE(0) & ((1n << 63n) - 1n);
}

function engineOutput(item: JsonValue): { disaggregated_params?: JsonValue; finish_reason?: JsonValue; token_ids?: number[] } | null {
  const data = (item as { data?: unknown } | null)?.data;
  return data && typeof data === 'object' ? (data as { disaggregated_params?: JsonValue }) : null;
}

/** The prefill worker's bootstrap server, from its card (`runtime_config.disaggregated_endpoint`). */
async function bootstrapOf(client: DynamoClient, ep: EndpointId, prefill: Instance): Promise<{ host: string; port: number } | null> {
  const card = await client.card(ep, prefill.instanceId);
  const rc = card?.runtime_config as { disaggregated_endpoint?: { bootstrap_host?: unknown; bootstrap_port?: unknown } } | undefined;
  const de = rc?.disaggregated_endpoint;
  if (!de || typeof de.bootstrap_host !== 'string' || typeof de.bootstrap_port !== 'number') return null;
  return { host: de.bootstrap_host, port: de.bootstrap_port };
}

/**
 * Sends one request through a prefill and a decode worker as a frontend's prefill router would:
 * prefill with `max_tokens = 1` (same request id on both sides). With a bootstrap server (1.x card)
 * the decode request goes out at once with the same `bootstrap_info`; otherwise the prefill's first
 * item must carry `disaggregated_params`, its stream is drained, and the decode request follows with
 * them (`prefill_result` for 1.x, top-level `disaggregated_params` for 0.6.1).
 */
export async function generateDisaggregated(
  client: DynamoClient,
  targets: { prefillEndpoint: EndpointId; prefill: Instance; decode: Instance },
  req: GenerateRequest,
): Promise<DisaggOutcome> {
  const requestId = randomUUID();
  const { prefill, decode } = targets;
  const prefillReq: GenerateRequest = { ...req, maxTokens: 1 };
  const bootstrap = prefill.tagged ? await bootstrapOf(client, targets.prefillEndpoint, prefill) : null;
  const path: DisaggPath = bootstrap ? 'bootstrap' : prefill.tagged ? 'prefill-result' : 'legacy';
  let prefillTokenAt: number | null = null;
  let prefillEndAt: number | null = null;
  const watch = (h: Awaited<ReturnType<DynamoClient['generate']>>): void =>
    h.stream.onItem((item, at) => {
      const out = engineOutput(item);
      if (prefillTokenAt === null && out?.token_ids?.length) prefillTokenAt = at;
      prefillEndAt = at;
    });

  if (bootstrap) {
    const bootstrapInfo = { ...bootstrap, room: bootstrapRoom(), handoffId: randomUUID() };
    const sentAt = performance.now();
    const p = await client.generate(prefill, { ...prefillReq, bootstrapInfo }, { requestId });
    watch(p);
    const d = await client.generate(decode, { ...req, bootstrapInfo }, { requestId });
    const [prefillResult, decodeResult] = await Promise.all([p.stream.done, d.stream.done]);
    return { path, requestId, sentAt, prefill: prefillResult, decode: decodeResult, prefillTokenAt, prefillEndAt, error: null };
  }

  const sentAt = performance.now();
  const p = await client.generate(prefill, prefillReq, { requestId });
  watch(p);
  const prefillResult = await p.stream.done;
  const first = prefillResult.items.length ? engineOutput(prefillResult.items[0]) : null;
  const fail = (error: string): DisaggOutcome => ({ path, requestId, sentAt, prefill: prefillResult, decode: null, prefillTokenAt, prefillEndAt, error });
  if (prefillResult.prologueError) return fail(`prefill refused: ${prefillResult.prologueError}`);
  if (prefillResult.errors.length) return fail(`prefill failed: ${prefillResult.errors.join('; ')}`);
  if (!first || first.disaggregated_params === undefined || first.disaggregated_params === null) return fail('prefill returned no disaggregated_params');
  const params = first.disaggregated_params;
  const decodeReq: GenerateRequest = path === 'legacy' ? { ...req, disaggregatedParams: params } : { ...req, prefillResult: params };
  const d = await client.generate(decode, decodeReq, { requestId });
  return { path, requestId, sentAt, prefill: prefillResult, decode: await d.stream.done, prefillTokenAt, prefillEndAt, error: null };
}
