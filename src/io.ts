// What a command may touch of the process: its output streams and environment (tests pass their own).
import type { Env } from './config.js';

export interface CliIo {
  out: (text: string) => void;
  err: (text: string) => void;
  env: Env;
  isTty: boolean;
}

export const processIo = (): CliIo => ({
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  env: process.env,
  isTty: Boolean(process.stderr.isTTY),
});
