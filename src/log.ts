// Process logger: pino to stderr, at the level the config read from DYN_LOG.
import pino, { type Logger } from 'pino';

export function createLogger(level: string): Logger {
  return pino({ level, base: undefined }, pino.destination({ fd: 2, sync: true }));
}

export type { Logger };
