// One request inside the engine: its known tokens as block hashes, its KV blocks and progress.
import { blockHash, sequenceHash, type Xxh3 } from './hash.js';
import { PRIVATE_BLOCK_KEY, type CachedBlock } from './kv/block-pool.js';
import type { Rng } from './random.js';

/**
 * `held`: finished, its KV kept for a handoff to a decode worker until released. `reserving` /
 * `reserved`: a decode-side handoff waiting for KV capacity / holding the prompt's blocks until the
 * transfer is done and it is activated.
 */
export type SequenceStatus = 'waiting' | 'running' | 'preempted' | 'finished' | 'cancelled' | 'rejected' | 'held' | 'reserving' | 'reserved';

/** What a driver hands the engine for one request. */
export interface SequenceInput {
  /** Caller's handle, returned untouched in every output. */
  key: number;
  promptLength: number;
  /** Exact number of tokens to emit. */
  maxOutputTokens: number;
  /** Prompt token ids; may be omitted when `promptBlocks` carries precomputed hashes. */
  promptTokens?: ArrayLike<number>;
  /**
   * Precomputed hashes of the prompt's full blocks and the tokens after them (`tail` may be empty
   * when the last full block is private). The sequence takes ownership of these arrays.
   */
  promptBlocks?: { local: bigint[]; seq: bigint[]; tail: number[] };
  rng: Rng;
  vocabSize: number;
  /** Token ids the engine must never emit (EOS, hidden stop tokens). */
  bannedTokens?: ReadonlySet<number>;
  /**
   * The output's token ids matter to nobody (trace replay reports counts only, and random output
   * never matches another request's blocks): they are not drawn (id 0 is emitted), and the blocks
   * they complete are private to this request.
   */
  privateOutput?: boolean;
  /** Keep every token id so that a committed block's tokens can be read back (`blockTokens`). */
  keepTokenIds?: boolean;
  /** Keep the KV blocks after the last token (status `held`) until the scheduler is told to release them. */
  holdOnFinish?: boolean;
}

export class Sequence {
  readonly key: number;
  readonly promptLength: number;
  readonly maxOutputTokens: number;
  status: SequenceStatus = 'waiting';
  /** Local (tokens) hashes of known full blocks. */
  readonly localHashes: bigint[];
  /** Chained sequence hashes of known full blocks. */
  readonly seqHashes: bigint[];
  /** Tokens after the last full block. */
  private readonly tail: number[];
  /** Tokens after the last full block (the tail array stays empty past a private block). */
  private tailLength = 0;
  /** Tokens known so far: prompt plus generated. */
  knownLength: number;
  /** Tokens whose KV has been computed. */
  computed = 0;
  generated = 0;
  /** Committed full blocks, in order (a run of private blocks is one entry with a count). */
  readonly blocks: CachedBlock[] = [];
  /** How many full blocks are committed (the sum of the entries' counts). */
  committedBlocks = 0;
  /** Allocated blocks not yet committed (or all blocks when prefix caching is off). */
  slots = 0;
  preemptions = 0;
  /** Tokens scheduled for this sequence in the pass being built (scheduler scratch). */
  passTokens = 0;
  /**
   * A running sequence the scheduler skips (Scheduler.pause): its reader stopped consuming. It keeps
   * its KV blocks and its batch slot, and is never a preemption victim.
   */
  paused = false;
  /** Prompt tokens served from the prefix cache at first admission (null before). */
  cachedTokens: number | null = null;
  /** A reserved handoff destination: prompt tokens its reservation did not find cached (they must be transferred). */
  transferableTokens: number | null = null;
  readonly holdOnFinish: boolean;
  private readonly rng: Rng;
  private readonly vocabSize: number;
  private readonly banned: ReadonlySet<number> | undefined;
  /** False when output ids are never looked at (SequenceInput.privateOutput). */
  private readonly drawsTokens: boolean;
  /** Output never completes a shareable block: it follows a private block or is private itself. */
  private readonly outputPrivate: boolean;
  /** With `keepTokenIds`: the prompt as given and the generated ids after it. */
  private readonly promptTokenIds: ArrayLike<number> | null;
  private readonly outputTokenIds: number[] | null;

  constructor(
    input: SequenceInput,
    private readonly blockSize: number,
    private readonly hasher: Xxh3 | null,
  ) {
    this.key = input.key;
    this.holdOnFinish = input.holdOnFinish === true;
    this.promptLength = input.promptLength;
    this.maxOutputTokens = input.maxOutputTokens;
    this.knownLength = input.promptLength;
    this.rng = input.rng;
    this.vocabSize = input.vocabSize;
    this.banned = input.bannedTokens && input.bannedTokens.size > 0 ? input.bannedTokens : undefined;
    this.drawsTokens = input.privateOutput !== true;
    // Nothing after a private block can be shared either, so output after one is private too.
    this.outputPrivate = input.privateOutput === true || input.promptBlocks?.seq.at(-1) === PRIVATE_BLOCK_KEY;
    const keep = input.keepTokenIds === true && input.promptTokens !== undefined;
    this.promptTokenIds = keep ? input.promptTokens! : null;
    this.outputTokenIds = keep ? [] : null;
    if (hasher && input.promptBlocks) {
      const { local, seq, tail } = input.promptBlocks;
      const last = seq.length ? seq[seq.length - 1] : null;
      const covered = local.length * blockSize + tail.length;
      const fullBlocks = Math.floor(input.promptLength / blockSize);
      const tailOk = covered === input.promptLength || (last === PRIVATE_BLOCK_KEY && tail.length === 0);
      if (local.length !== seq.length || local.length !== fullBlocks || !tailOk) {
        throw new Error(`prompt blocks cover ${covered} tokens, prompt has ${input.promptLength}`);
      }
      this.localHashes = local;
      this.seqHashes = seq;
      this.tail = tail;
      // A private prompt's tail is never hashed, so only its length matters.
      this.tailLength = input.promptLength - local.length * blockSize;
      return;
    }
    this.localHashes = [];
    this.seqHashes = [];
    this.tail = [];
    // Without a hasher (prefix caching off) block contents never matter, so tokens are not kept.
    if (!hasher) return;
    const tokens = input.promptTokens;
    if (!tokens || tokens.length !== input.promptLength) throw new Error('promptTokens must have promptLength tokens');
    const full = Math.floor(tokens.length / blockSize);
    let parent: bigint | null = null;
    for (let b = 0; b < full; b++) {
      const local = blockHash(hasher, tokens, b * blockSize, (b + 1) * blockSize);
      parent = sequenceHash(hasher, parent, local);
      this.localHashes.push(local);
      this.seqHashes.push(parent);
    }
    for (let i = full * blockSize; i < tokens.length; i++) this.tail.push(tokens[i]);
    this.tailLength = this.tail.length;
  }

  get allocatedBlocks(): number {
    return this.committedBlocks + this.slots;
  }

  get isPrefilling(): boolean {
    return this.computed < this.knownLength - 1 || this.generated === 0;
  }

  get done(): boolean {
    return this.generated >= this.maxOutputTokens;
  }

  /** Draws the next output token: inside the vocabulary and never a banned (stop) id. */
  drawToken(): number {
    if (!this.drawsTokens) return 0;
    for (;;) {
      const token = this.rng.nextInt(this.vocabSize);
      if (!this.banned || !this.banned.has(token)) return token;
    }
  }

  /** The token ids of full block `b` (only with `keepTokenIds`). */
  blockTokens(b: number): number[] {
    const prompt = this.promptTokenIds;
    const output = this.outputTokenIds;
    if (!prompt || !output) throw new Error('blockTokens needs keepTokenIds');
    const out: number[] = [];
    for (let i = b * this.blockSize, end = i + this.blockSize; i < end; i++) out.push(i < prompt.length ? prompt[i] : output[i - prompt.length]);
    return out;
  }

  /** Appends a generated token; hashes a block when it fills (only if hashing is on). */
  appendToken(token: number): void {
    this.outputTokenIds?.push(token);
    this.generated++;
    this.knownLength++;
    if (!this.hasher) return;
    this.tailLength++;
    if (this.outputPrivate) {
      // Private blocks are never hashed, so their tokens are not kept.
      if (this.tailLength < this.blockSize) return;
      this.tailLength = 0;
      this.localHashes.push(PRIVATE_BLOCK_KEY);
      this.seqHashes.push(PRIVATE_BLOCK_KEY);
      return;
    }
    this.tail.push(token);
    if (this.tailLength < this.blockSize) return;
    this.tailLength = 0;
    const last = this.seqHashes.length ? this.seqHashes[this.seqHashes.length - 1] : null;
    const local = blockHash(this.hasher, this.tail, 0, this.blockSize);
    this.localHashes.push(local);
    this.seqHashes.push(sequenceHash(this.hasher, last, local));
    this.tail.length = 0;
  }
}
