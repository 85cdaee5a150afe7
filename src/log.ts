// Process logger (pino to stderr) with the level taken from DYN_LOG, as Dynamo reads it.
import pino, { type Logger } from 'pino';

const LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']);

/** DYN_LOG is a tracing filter such as `debug,dynamo_runtime=trace`; its first bare level wins. */
export function levelFromDynLog(value: string | undefined): string {
  for (const part of (value ?? '').split(',')) {
    const level = part.trim().toLowerCase();
    if (LEVELS.has(level)) return level;
  }
  return 'info';
}

export function createLogger(env: Record<string, string | undefined>): Logger {
  return pino({ level: levelFromDynLog(env.DYN_LOG), base: undefined }, pino.destination({ fd: 2, sync: true }));
}

export type { Logger };
