// What a Dynamo frontend does when a worker's stream breaks: re-send the request, with the tokens received so far, to another instance.
import type { DynamoClient, GenerateRequest, Instance } from './dynamo-client.js';
import type { StreamResult } from './stream-server.js';

/** A request's streams, joined across migrations. */
export interface MigratedResult {
  result: StreamResult;
  /** When the first attempt was sent (performance.now ms). */
  sentAt: number;
  /** How many times the request moved to another instance. */
  migrations: number;
  /** The instance each attempt went to, and its request id, in order. */
  instances: bigint[];
  requestIds: string[];
}

/**
 * A stream that ended before its last token without saying why — no complete_final, no error, no
 * refusal — is what a crashed worker leaves behind; the frontend migrates it (up to the limit).
 */
export function brokenStream(r: StreamResult, expectedTokens: number | null): boolean {
  if (r.completeFinal || r.prologueError !== null || r.errors.length > 0) return false;
  return expectedTokens === null || r.tokenIds.length < expectedTokens;
}

/**
 * Sends `req` to `instances[first]`; while its stream breaks and migrations remain, sends the rest
 * (prompt + tokens so far, max_tokens reduced by them) to the next instance, as Dynamo's frontend
 * does with the card's migration_limit.
 */
export async function generateWithMigration(
  client: DynamoClient,
  instances: readonly Instance[],
  first: number,
  req: GenerateRequest,
  migrationLimit: number,
  onAttempt?: (attempt: Awaited<ReturnType<DynamoClient['generate']>>) => void,
): Promise<MigratedResult> {
  const tokens: number[] = [];
  const tokenTimes: number[] = [];
  const used: bigint[] = [];
  const ids: string[] = [];
  let sentAt: number | null = null;
  for (let attempt = 0; ; attempt++) {
    const target = instances[(first + attempt) % instances.length];
    const remaining = req.maxTokens === null ? null : req.maxTokens - tokens.length;
    const h = await client.generate(target, { ...req, tokenIds: [...req.tokenIds, ...tokens], maxTokens: remaining });
    sentAt ??= h.sentAt;
    used.push(target.instanceId);
    ids.push(h.requestId);
    onAttempt?.(h);
    const r = await h.stream.done;
    tokens.push(...r.tokenIds);
    tokenTimes.push(...r.tokenTimes);
    if (!brokenStream(r, remaining) || attempt >= migrationLimit) {
      return { result: { ...r, tokenIds: tokens, tokenTimes }, sentAt, migrations: attempt, instances: used, requestIds: ids };
    }
  }
}
