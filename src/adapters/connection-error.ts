// Failing to reach a dependency: the error the CLI names without loading any client, and its one-line wording.
import { redactCredentials } from '../redact.js';

/** A one-line, user-facing failure to reach a dependency (the CLI exits with code 1); credentials are masked. */
export class ConnectionError extends Error {
  override name = 'ConnectionError';
  constructor(message: string) {
    super(redactCredentials(message));
  }
}

/** How long a start-up connection attempt may take. */
export const DEFAULT_TIMEOUT_MS = 3000;

/** First line of an error, with the usual socket codes spelled out. */
export function reason(err: unknown, timeoutMs: number): string {
  const e = err as { code?: string; message?: string; details?: string } | undefined;
  const text = e?.message ?? String(err);
  if (e?.code === 'CONNECTION_REFUSED' || /ECONNREFUSED/.test(text)) return 'connection refused';
  if (e?.code === 'TIMEOUT' || text === 'TIMEOUT') return `no answer within ${timeoutMs} ms`;
  if (/authorization violation/i.test(text)) return 'authorization violation (check NATS_AUTH_*)';
  return text.split('\n')[0].replace(/^'(.*)'$/, '$1');
}

/** A URL for messages: user info is replaced by "***" so credentials never reach a log line. */
export const redact = redactCredentials;
