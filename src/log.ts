// Process logger: pino to stderr, at the level the config read from DYN_LOG.
import pino, { type Logger } from 'pino';
import { redactCredentials } from './redact.js';

export function createLogger(level: string): Logger {
  // Every line passes the credential filter, whatever a library put into a message or an error.
  return pino({ level, base: undefined, hooks: { streamWrite: redactCredentials } }, pino.destination({ fd: 2, sync: true }));
}

export type { Logger };
