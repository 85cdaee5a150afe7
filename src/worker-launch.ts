// Starting the N workers of one process: a bounded number at once, with Dynamo's optional stagger between launches.
//
// Each worker still registers in its own order (lease, Model, request plane, Endpoint, event
// publishers); only different workers overlap. With `--stagger-delay`, as in Dynamo's mocker, the
// delay passes between two launches and 2 s more after every 32; here a launch does not wait for the
// one before it to finish, so with a delay shorter than a start-up several are in flight (never more
// than `concurrency`).

/** Dynamo's stagger: after every this many launches, a longer pause. */
export const STAGGER_GROUP = 32;
/** …of this much more than the delay. */
export const STAGGER_GROUP_PAUSE_MS = 2000;

/** Workers starting at once when no stagger spaces them (see the scale benchmark, scripts/bench-scale.mjs). */
export const LAUNCH_CONCURRENCY = 32;

/** Dynamo's `--stagger-delay -1` (auto): none up to 32 workers, 0.1 s up to 128, 0.2 s beyond. */
export function autoStaggerDelayS(numWorkers: number): number {
  if (numWorkers <= 32) return 0;
  if (numWorkers <= 128) return 0.1;
  return 0.2;
}

/** The pause before launching worker `index`: none before the first, or without a delay. */
export function staggerPauseMs(index: number, delayMs: number): number {
  if (delayMs <= 0 || index === 0) return 0;
  return delayMs + (index % STAGGER_GROUP === 0 ? STAGGER_GROUP_PAUSE_MS : 0);
}

export interface LaunchOptions<W> {
  count: number;
  /** Launches in flight at once (at least 1). */
  concurrency: number;
  /** The resolved --stagger-delay, ms (0: none). */
  staggerDelayMs: number;
  start(index: number): Promise<W>;
  /** Each started worker, as it finishes starting (not necessarily in index order). */
  started(worker: W): void;
  /** True once no further worker may start (asked before every launch). */
  halted(): boolean;
  /** Waits `ms`, or less once `signal` is aborted (then it resolves; it never rejects). */
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

/**
 * Launches workers 0…count−1 in order. After a failure, or once `halted()`, nothing more is
 * launched (a pause in progress is cut short on failure); resolves once every launch has settled,
 * or rejects with the first failure after the launches in flight have settled, so that everything
 * started has been handed to `started`.
 */
export async function launchWorkers<W>(o: LaunchOptions<W>): Promise<void> {
  const concurrency = Math.max(1, o.concurrency);
  const failed = new AbortController();
  let failure: { err: unknown } | null = null;
  const inFlight = new Set<Promise<void>>();
  for (let i = 0; i < o.count; i++) {
    const pause = staggerPauseMs(i, o.staggerDelayMs);
    if (pause > 0 && !failure && !o.halted()) await o.sleep(pause, failed.signal);
    while (inFlight.size >= concurrency) await Promise.race(inFlight);
    if (failure || o.halted()) break;
    const launch: Promise<void> = o
      .start(i)
      .then(
        (worker) => o.started(worker),
        (err: unknown) => {
          failure ??= { err };
          failed.abort();
        },
      )
      .finally(() => inFlight.delete(launch));
    inFlight.add(launch);
  }
  await Promise.all(inFlight);
  if (failure) throw (failure as { err: unknown }).err;
}
