// The error every bad flag, environment variable or input file raises (its own module, so that the
// readers config.ts uses can raise it too without an import cycle).

/** Raised for any bad flag, environment variable or file; the CLI prints it and exits with code 2. */
export class ConfigError extends Error {
  constructor(
    readonly flag: string,
    message: string,
  ) {
    super(`${flag}: ${message}`);
    this.name = 'ConfigError';
  }
}
