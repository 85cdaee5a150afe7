// The error for a dependency the worker cannot reach; kept apart so the CLI can name it without loading clients.

/** A one-line, user-facing failure to reach a dependency (the CLI exits with code 1). */
export class ConnectionError extends Error {
  override name = 'ConnectionError';
}
