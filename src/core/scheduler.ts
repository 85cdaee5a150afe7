// One DP rank's vLLM-v1-style scheduler: token budget, chunked prefill, admission, preemption.
import { Deque } from './deque.js';
import { idleForwardPass, type ForwardPassSnapshot } from './forward-pass.js';
import type { Xxh3 } from './hash.js';
import { BlockPool } from './kv/block-pool.js';
import { mixSeed } from './random.js';
import { Sequence, type SequenceInput } from './sequence.js';
import { JITTER_SEED_SALT, PassJitter } from './timing/jitter.js';
import type { TimingModel } from './timing/timing-model.js';
import type { EngineConfig, KvEvent } from './types.js';

export interface PassResult {
  startMs: number;
  /** When the pass's tokens become visible: start + (scaled prefill + scaled decode) × jitter factor (1 without jitter). */
  endMs: number;
  /** Unscaled model durations. */
  prefillMs: number;
  decodeMs: number;
  /** Prompt tokens computed in this pass (cache hits excluded). */
  prefillTokens: number;
  prefillRequests: number;
  decodeRequests: number;
  /** All tokens computed in this pass (prefill, recompute and decode); 0 means no progress. */
  scheduledTokens: number;
  /**
   * Sequences that emitted one token each in this pass, with the tokens at the same index (kept as
   * two arrays: this is the per-token hot path). A sequence whose status is 'finished' emitted its
   * last token and has been freed.
   */
  emitted: Sequence[];
  tokens: number[];
  /** Sequences admitted from waiting in this pass (first admission or after preemption). */
  admitted: Sequence[];
  preempted: Sequence[];
  kvEvents: KvEvent[];
  /** Only when the scheduler collects forward-pass statistics (see `collectForwardPass`). */
  forwardPass?: ForwardPassSnapshot;
}

export type AddResult = { ok: true; seq: Sequence } | { ok: false; reason: string };

export interface SchedulerSnapshot {
  dpRank: number;
  /** Running requests, paused ones included. */
  running: number;
  /** Running requests paused by their reader (see Scheduler.pause). */
  paused: number;
  waiting: number;
  activeBlocks: number;
  inactiveBlocks: number;
  totalBlocks: number;
  /** Mean prefix hit fraction over the last admissions (0 when none yet). */
  prefixHitRate: number;
  preemptionsTotal: number;
  prefixQueryTokens: number;
  prefixHitTokens: number;
}

const HIT_RATE_WINDOW = 1000;

/** The `admitted` and `preempted` of a pass that has none (shared; never written to). */
const NO_SEQUENCES: Sequence[] = Object.freeze([]) as unknown as Sequence[];

export class Scheduler {
  readonly pool: BlockPool;
  /** Fill `PassResult.forwardPass` (Dynamo 1.x's forward-pass metrics); off by default, as it walks the waiting list. */
  collectForwardPass = false;
  /** Stored KV events carry each block's token ids (vLLM's own event format needs them). */
  recordBlockTokens = false;
  private readonly running: Sequence[] = [];
  /** `step`'s list of the sequences it gives tokens to, kept between passes to spare the allocation. */
  private readonly scheduledScratch: Sequence[] = [];
  private readonly waiting = new Deque<Sequence>();
  /** Decode-side handoffs not yet activated, in arrival order: `reserving` (waiting for KV) and `reserved`. */
  private readonly handoffs = new Set<Sequence>();
  private waitingLive = 0;
  /** Running sequences that are paused. */
  private pausedCount = 0;
  private readonly hitWindow = new Float64Array(HIT_RATE_WINDOW);
  private hitWindowCount = 0;
  private hitWindowNext = 0;
  private hitWindowSum = 0;
  private preemptionsTotal = 0;
  private prefixQueryTokens = 0;
  private prefixHitTokens = 0;
  private readonly totalKvTokens: number;
  private readonly hasher: Xxh3 | null;
  /** Pass-duration factors (--latency-jitter), one draw per pass with work while jitter is on. */
  private readonly jitter: PassJitter;

  constructor(
    readonly config: EngineConfig,
    private readonly timing: TimingModel,
    hasher: Xxh3,
    readonly dpRank = 0,
    /** The engine seed (--seed); with the DP rank it seeds the latency-jitter stream. */
    seed = 0,
  ) {
    this.pool = new BlockPool(config.numGpuBlocks, config.enablePrefixCaching, dpRank);
    this.jitter = new PassJitter(mixSeed(seed, JITTER_SEED_SALT + dpRank));
    this.totalKvTokens = config.numGpuBlocks * config.blockSize;
    // Without prefix caching nothing is shared, so block contents never need hashing.
    this.hasher = config.enablePrefixCaching ? hasher : null;
  }

  get runningCount(): number {
    return this.running.length;
  }

  get waitingCount(): number {
    return this.waitingLive;
  }

  get idle(): boolean {
    return this.running.length === 0 && this.waitingLive === 0;
  }

  /**
   * Queues a request. A sequence that could never fit in the pool is refused here rather than
   * blocking the queue forever.
   */
  add(input: SequenceInput): AddResult {
    const refusal = this.refusal(input.promptLength, input.maxOutputTokens) ?? vocabularyRefusal(input);
    if (refusal !== null) return { ok: false, reason: refusal };
    const seq = new Sequence(this.recordBlockTokens ? { ...input, keepTokenIds: true } : input, this.config.blockSize, this.hasher);
    if (seq.maxOutputTokens <= 0) {
      seq.status = 'finished';
      return { ok: true, seq };
    }
    this.waiting.pushBack(seq);
    this.waitingLive++;
    return { ok: true, seq };
  }

  /** Why a request of this shape can never be served here, or null if it can. */
  refusal(promptLength: number, maxOutputTokens: number): string | null {
    const { blockSize, numGpuBlocks, watermark } = this.config;
    if (promptLength < 1) return 'request has an empty prompt';
    const promptBlocks = Math.ceil(promptLength / blockSize);
    const admissible = numGpuBlocks - watermark * numGpuBlocks;
    if (promptBlocks > admissible) {
      return `request rejected: prompt of ${promptLength} tokens needs ${promptBlocks} KV blocks, more than the ${Math.floor(admissible)} this worker can admit`;
    }
    // A preempted request must be readmitted with everything it generated, under the same gate.
    const peakBlocks = Math.ceil((promptLength + Math.max(0, maxOutputTokens - 1)) / blockSize);
    if (peakBlocks > admissible) {
      return `request rejected: ${promptLength} prompt + ${maxOutputTokens} output tokens need ${peakBlocks} KV blocks, more than the ${Math.floor(admissible)} this worker can admit`;
    }
    return null;
  }

  /**
   * Pauses a running sequence, as a stalled consumer stalls a real engine's request: until resumed it
   * is skipped by scheduling and emission, keeps its KV blocks and its batch slot (it still counts as
   * running), and is never chosen for preemption. Returns false if it is not running or already paused.
   */
  pause(seq: Sequence): boolean {
    if (seq.status !== 'running' || seq.paused) return false;
    seq.paused = true;
    this.pausedCount++;
    return true;
  }

  /** Lets a paused sequence run again from the next pass. Returns false if it was not paused. */
  resume(seq: Sequence): boolean {
    if (!seq.paused) return false;
    seq.paused = false;
    this.pausedCount--;
    return true;
  }

  /** Stops a request at once and frees its KV blocks (held or reserved ones too). Returns false if it was not live. */
  cancel(seq: Sequence): boolean {
    if (seq.status === 'running') {
      const i = this.running.indexOf(seq);
      if (i >= 0) this.running.splice(i, 1);
      this.resume(seq);
      this.free(seq);
    } else if (seq.status === 'waiting' || seq.status === 'preempted') {
      this.waitingLive--; // removed lazily when it reaches the head
      // An activated handoff waits with its KV already in place.
      this.free(seq);
    } else if (seq.status === 'held' || seq.status === 'reserved' || seq.status === 'reserving') {
      this.handoffs.delete(seq);
      this.free(seq);
    } else {
      return false;
    }
    seq.status = 'cancelled';
    return true;
  }

  /** Frees the KV a finished sequence held for its handoff. Returns false if it held none. */
  release(seq: Sequence): boolean {
    if (seq.status !== 'held') return false;
    this.free(seq);
    seq.status = 'finished';
    return true;
  }

  /**
   * Queues a decode-side handoff: the request waits (status `reserving`) until its prompt's KV blocks
   * can be reserved, holds them (`reserved`) while the KV is transferred, and runs once activated,
   * with its prompt already computed. Reservations are made by `retryReservations`.
   */
  reserve(input: SequenceInput): AddResult {
    const refusal = this.refusal(input.promptLength, input.maxOutputTokens) ?? vocabularyRefusal(input);
    if (refusal !== null) return { ok: false, reason: refusal };
    const seq = new Sequence(this.recordBlockTokens ? { ...input, keepTokenIds: true } : input, this.config.blockSize, this.hasher);
    seq.status = 'reserving';
    this.handoffs.add(seq);
    return { ok: true, seq };
  }

  /**
   * Reserves KV for queued handoffs, oldest first, while the running batch has room and the pool has
   * the blocks (cached prefix blocks are shared, not transferred). Returns the sequences reserved now.
   */
  retryReservations(): Sequence[] {
    const reserved: Sequence[] = [];
    const { blockSize, numGpuBlocks, watermark } = this.config;
    for (const seq of this.handoffs) {
      if (seq.status !== 'reserving') continue;
      if (this.running.length >= this.config.maxNumSeqs) break;
      const total = Math.ceil(seq.promptLength / blockSize);
      const probe = this.pool.probe(seq.seqHashes, Math.floor(seq.promptLength / blockSize), seq.key);
      if (total - probe.activeHitBlocks > this.pool.freeBlocks - watermark * numGpuBlocks) break;
      this.pool.acquirePrefix(seq.seqHashes, probe.hitBlocks, seq.key, seq.blocks);
      seq.committedBlocks = probe.hitBlocks;
      if (!this.pool.allocateSlots(total - probe.hitBlocks)) {
        this.free(seq); // cannot happen after the gate above
        break;
      }
      seq.slots = total - probe.hitBlocks;
      const cached = Math.min(seq.promptLength, probe.hitBlocks * blockSize);
      seq.cachedTokens = cached;
      // Dynamo counts whole blocks: every block the reservation had to allocate is transferred.
      seq.transferableTokens = (total - probe.hitBlocks) * blockSize;
      this.recordHit(seq.promptLength, cached);
      seq.status = 'reserved';
      reserved.push(seq);
    }
    return reserved;
  }

  /** The transfer into a reserved handoff is done: it joins the waiting queue with its prompt computed. */
  activate(seq: Sequence): boolean {
    if (seq.status !== 'reserved') return false;
    this.handoffs.delete(seq);
    this.allocate(seq, seq.promptLength); // commits the prompt's full blocks (all slots are in place)
    seq.computed = seq.promptLength;
    seq.status = 'waiting';
    this.waiting.pushBack(seq);
    this.waitingLive++;
    return true;
  }

  snapshot(): SchedulerSnapshot {
    return {
      dpRank: this.dpRank,
      running: this.running.length,
      paused: this.pausedCount,
      waiting: this.waitingLive,
      activeBlocks: this.pool.activeBlocks,
      inactiveBlocks: this.pool.inactiveBlocks,
      totalBlocks: this.pool.capacity,
      prefixHitRate: this.hitWindowCount ? this.hitWindowSum / this.hitWindowCount : 0,
      preemptionsTotal: this.preemptionsTotal,
      prefixQueryTokens: this.prefixQueryTokens,
      prefixHitTokens: this.prefixHitTokens,
    };
  }

  /** Runs one forward pass starting at `nowMs`. */
  step(nowMs: number): PassResult {
    let budget = this.config.maxNumBatchedTokens ?? Infinity;
    // Allocated only when used: most passes admit and preempt nothing (this is the per-pass hot path).
    let preempted: Sequence[] = NO_SEQUENCES;
    let admitted: Sequence[] = NO_SEQUENCES;
    // Sequences given tokens this pass (the count itself lives in seq.passTokens), in a scratch array.
    const scheduled = this.scheduledScratch;
    let scheduledCount = 0;

    // Running requests consume the budget first, in order. Preemption edits the list, so the loop
    // switches to a snapshot before the first preemption (until then the list is unchanged); a victim
    // scheduled earlier in this pass gives its budget back.
    let order = this.running;
    for (let i = 0; i < order.length; i++) {
      const seq = order[i];
      if (budget <= 0) break;
      if (seq.status !== 'running' || seq.paused) continue;
      const remaining = seq.knownLength - seq.computed;
      const desired = Math.min(remaining, budget);
      if (desired <= 0) continue;
      if (!this.config.enableChunkedPrefill && Math.max(0, seq.promptLength - seq.computed) > budget) continue;
      while (!this.allocate(seq, seq.computed + desired)) {
        if (order === this.running) order = this.running.slice();
        const victim = this.victim();
        budget += victim.passTokens;
        victim.passTokens = 0;
        this.preempt(victim);
        if (preempted === NO_SEQUENCES) preempted = [];
        preempted.push(victim);
        if (victim === seq) break;
      }
      if (seq.status !== 'running') continue;
      seq.passTokens = desired;
      scheduled[scheduledCount++] = seq;
      budget -= desired;
    }

    // Waiting requests are admitted only in passes without preemption.
    if (preempted.length === 0) {
      while (this.waiting.length && this.running.length < this.config.maxNumSeqs && budget > 0) {
        const seq = this.waiting.peekFront()!;
        if (seq.status === 'cancelled') {
          this.waiting.popFront();
          continue;
        }
        const desired = this.tryAdmit(seq, budget);
        if (desired < 0) break;
        this.waiting.popFront();
        this.waitingLive--;
        seq.status = 'running';
        this.running.push(seq);
        if (admitted === NO_SEQUENCES) admitted = [];
        admitted.push(seq);
        seq.passTokens = desired;
        scheduled[scheduledCount++] = seq;
        budget -= desired;
      }
    }

    // Apply the scheduled compute. Only prompt tokens cost prefill time (Dynamo's rule): decode
    // steps and the recompute of a preempted request's generated tokens are free.
    let prefillTokens = 0;
    let prefillRequests = 0;
    let islSum = 0;
    let prefixSum = 0;
    let scheduledTokens = 0;
    const fp = this.collectForwardPass ? idleForwardPass() : null;
    for (let i = 0; i < scheduledCount; i++) {
      const seq = scheduled[i];
      const tokens = seq.passTokens;
      if (tokens === 0) continue; // preempted after being scheduled
      seq.passTokens = 0;
      scheduledTokens += tokens;
      const promptBefore = Math.min(seq.computed, seq.promptLength);
      const promptTokens = Math.min(seq.computed + tokens, seq.promptLength) - promptBefore;
      if (promptTokens > 0) {
        prefillRequests++;
        prefillTokens += promptTokens;
        islSum += promptBefore + promptTokens;
        prefixSum += promptBefore;
        if (fp) {
          fp.scheduledPrefill.lengths.add(seq.promptLength);
          fp.scheduledPrefill.computedTokens += tokens;
          fp.scheduledPrefill.presentTokens += promptBefore;
        }
      } else if (fp) {
        fp.scheduledDecode.add(seq.knownLength);
      }
      seq.computed += tokens;
    }
    if (fp) {
      for (const seq of this.waiting) {
        if (seq.status === 'waiting' && seq.computed === 0) fp.queuedPrefill.add(seq.promptLength);
        else if (seq.status === 'waiting' || seq.status === 'preempted') fp.queuedDecode.add(seq.knownLength);
      }
      // Handoffs not yet activated are decode work the planner should see queued.
      for (const seq of this.handoffs) fp.queuedDecode.add(seq.knownLength);
    }

    const emitted: Sequence[] = [];
    const tokens: number[] = [];
    let contextSum = 0;
    // Decode cost reads the KV in use while the pass runs, before finished sequences are freed.
    const activeKvTokens = this.pool.activeBlocks * this.config.blockSize;

    const running = this.running;
    let kept = 0;
    for (let i = 0; i < running.length; i++) {
      const seq = running[i];
      if (!seq.paused && seq.computed >= seq.knownLength) {
        contextSum += seq.knownLength;
        const token = seq.drawToken();
        seq.appendToken(token);
        emitted.push(seq);
        tokens.push(token);
        if (seq.done) {
          if (seq.holdOnFinish) {
            seq.status = 'held'; // its KV stays until the handoff releases it
          } else {
            this.free(seq);
            seq.status = 'finished';
          }
          continue;
        }
      }
      running[kept++] = seq;
    }
    // Writing an array's length is a slow path in V8 even when it does not change; most passes finish nothing.
    if (kept !== running.length) running.length = kept;
    const decodeRequests = emitted.length;

    // A decode worker's prompts are computed elsewhere (their KV is transferred in): no prefill cost.
    const prefillMs =
      prefillRequests > 0 && this.config.workerType !== 'decode'
        ? this.timing.prefillMs({
            requests: prefillRequests,
            newTokens: prefillTokens,
            meanIsl: islSum / prefillRequests,
            meanPrefix: prefixSum / prefillRequests,
          })
        : 0;
    const decodeMs =
      decodeRequests > 0
        ? this.timing.decodeMs({
            requests: decodeRequests,
            activeKvTokens,
            totalKvTokens: this.totalKvTokens,
            meanContextLength: contextSum / decodeRequests,
          })
        : 0;
    const speedup = this.config.speedupRatio;
    const scaledPrefillMs = scale(prefillMs, speedup);
    const scaledDecodeMs = scale(decodeMs, speedup * this.config.decodeSpeedupRatio);
    // --latency-jitter is read at every pass (the config may change at run time). Without it nothing
    // is drawn and the end is the plain sum, exactly as it was before jitter existed.
    const jitterCv = this.config.latencyJitter ?? 0;
    const endMs =
      jitterCv !== 0 && (scheduledTokens > 0 || decodeRequests > 0)
        ? nowMs + (scaledPrefillMs + scaledDecodeMs) * this.jitter.factor(jitterCv)
        : nowMs + scaledPrefillMs + scaledDecodeMs;
    if (fp) fp.wallTimeS = (endMs - nowMs) / 1000;

    return {
      startMs: nowMs,
      endMs,
      prefillMs,
      decodeMs,
      prefillTokens,
      prefillRequests,
      decodeRequests,
      scheduledTokens,
      emitted,
      tokens,
      admitted,
      preempted,
      kvEvents: this.pool.drainEvents(),
      forwardPass: fp ?? undefined,
    };
  }

  /**
   * Admission gate: the whole known sequence must fit in free KV (active cached prefix counted as
   * present) while keeping the watermark free. Returns the tokens scheduled (0 for a sequence that
   * is entirely cached), or -1 if blocked.
   */
  private tryAdmit(seq: Sequence, budget: number): number {
    // An activated handoff brings its prompt's KV along: nothing to allocate or compute.
    if (seq.computed > 0) return 0;
    const { blockSize, numGpuBlocks, watermark } = this.config;
    // Every full block may come from the cache (Dynamo's get_prefill_cost; vLLM itself recomputes
    // the last token): a fully cached, block-aligned prompt costs no prefill and decodes at once.
    const probe = this.pool.probe(seq.seqHashes, Math.floor(seq.knownLength / blockSize), seq.key);
    const needBlocks = Math.ceil(seq.knownLength / blockSize) - probe.activeHitBlocks;
    if (needBlocks > this.pool.freeBlocks - watermark * numGpuBlocks) return -1;
    const cachedTokens = probe.hitBlocks * blockSize;
    const remaining = seq.knownLength - cachedTokens;
    const desired = Math.min(remaining, budget);
    if (!this.config.enableChunkedPrefill && Math.max(0, seq.promptLength - cachedTokens) > budget) return -1;

    this.pool.acquirePrefix(seq.seqHashes, probe.hitBlocks, seq.key, seq.blocks);
    seq.committedBlocks = probe.hitBlocks;
    seq.computed = cachedTokens;
    if (!this.allocate(seq, cachedTokens + desired)) {
      // Cannot happen after the gate above; undo to keep the pool consistent if it ever does.
      this.free(seq);
      return -1;
    }
    if (seq.cachedTokens === null) {
      seq.cachedTokens = cachedTokens;
      this.recordHit(seq.knownLength, cachedTokens);
    }
    return desired;
  }

  /** Grows the sequence's allocation to cover `target` tokens and commits the blocks they fill. */
  private allocate(seq: Sequence, target: number): boolean {
    const { blockSize } = this.config;
    const needed = Math.ceil(target / blockSize) - seq.allocatedBlocks;
    if (needed > 0) {
      if (!this.pool.allocateSlots(needed)) return false;
      seq.slots += needed;
    }
    if (this.hasher) {
      const full = Math.floor(target / blockSize);
      const from = seq.committedBlocks;
      if (full > from) {
        this.pool.commit(seq.seqHashes, seq.localHashes, from, full, seq.blocks, seq.key, this.recordBlockTokens ? seq : undefined);
        seq.committedBlocks = full;
        seq.slots -= full - from;
      }
    }
    return true;
  }

  /** The newest (lifo) or oldest (fifo) running sequence that is not paused. */
  private victim(): Sequence {
    const running = this.running;
    const lifo = this.config.preemptionMode === 'lifo';
    if (this.pausedCount === 0) return lifo ? running[running.length - 1] : running[0];
    for (let k = 0; k < running.length; k++) {
      const seq = running[lifo ? running.length - 1 - k : k];
      if (!seq.paused) return seq;
    }
    // The sequence being scheduled is running and not paused, so one always exists.
    throw new Error('no preemptable sequence: every running sequence is paused');
  }

  /** Recompute-style preemption: free everything and requeue at the head of waiting. */
  private preempt(victim: Sequence): void {
    const i = this.running.indexOf(victim);
    if (i >= 0) this.running.splice(i, 1);
    this.free(victim);
    victim.computed = 0;
    victim.status = 'preempted';
    victim.preemptions++;
    this.preemptionsTotal++;
    this.waiting.pushFront(victim);
    this.waitingLive++;
  }

  /** Frees a sequence's blocks tail first, so shared prefixes stay cached longest. */
  private free(seq: Sequence): void {
    if (seq.slots) this.pool.releaseSlots(seq.slots);
    seq.slots = 0;
    for (let b = seq.blocks.length - 1; b >= 0; b--) this.pool.release(seq.blocks[b]);
    seq.blocks.length = 0;
    seq.committedBlocks = 0;
  }

  private recordHit(promptTokens: number, cachedTokens: number): void {
    const rate = promptTokens > 0 ? cachedTokens / promptTokens : 0;
    if (this.hitWindowCount === HIT_RATE_WINDOW) this.hitWindowSum -= this.hitWindow[this.hitWindowNext];
    else this.hitWindowCount++;
    this.hitWindow[this.hitWindowNext] = rate;
    this.hitWindowSum += rate;
    this.hitWindowNext = (this.hitWindowNext + 1) % HIT_RATE_WINDOW;
    this.prefixQueryTokens += promptTokens;
    this.prefixHitTokens += cachedTokens;
  }
}

/** A request whose stop tokens cover the whole vocabulary could never draw a token. */
function vocabularyRefusal(input: SequenceInput): string | null {
  const banned = input.bannedTokens;
  if (input.maxOutputTokens <= 0 || !banned || banned.size < input.vocabSize) return null;
  let inside = 0;
  for (const t of banned) if (t >= 0 && t < input.vocabSize) inside++;
  return inside >= input.vocabSize ? `every id of the ${input.vocabSize}-token vocabulary is a stop token` : null;
}

function scale(ms: number, ratio: number): number {
  return ratio === Infinity ? 0 : ms / ratio;
}
