// Process logger: pino to stderr, at the level the config read from DYN_LOG.
import pino, { type Logger } from 'pino';
import { redactCredentials } from './redact.js';

/** What stderr may hold unwritten (a log reader that stops reading): lines beyond it are dropped. */
const MAX_PENDING_LOG_BYTES = 16 * 1024 * 1024;

type Destination = ReturnType<typeof pino.destination>;
const destinations = new WeakMap<Logger, Destination>();

/**
 * Lines are written asynchronously: a slow reader of stderr never blocks the event loop (a
 * synchronous write to a full pipe sleeps the whole process, keep-alives included). pino writes
 * what is left synchronously when the process exits; `flushLog` waits for it before a planned exit.
 */
export function createLogger(level: string): Logger {
  const destination = pino.destination({ fd: 2, sync: false, maxLength: MAX_PENDING_LOG_BYTES });
  // Every line passes the credential filter, whatever a library put into a message or an error.
  const log = pino({ level, base: undefined, hooks: { streamWrite: redactCredentials } }, destination);
  destinations.set(log, destination);
  return log;
}

/**
 * Resolves once every line logged so far has been written to stderr, or after `timeoutMs` (a reader
 * that does not read must not hold the exit up); at once for a logger not made by createLogger.
 */
export function flushLog(log: Logger, timeoutMs = 2000): Promise<void> {
  const destination = destinations.get(log);
  if (!destination) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      destination.off('drain', done);
      resolve();
    };
    const timer = setTimeout(done, timeoutMs);
    // 'drain' follows the write that empties the buffer; an empty write starts one when idle.
    destination.on('drain', done);
    destination.write('');
  });
}

export type { Logger };
