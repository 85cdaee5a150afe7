// The worker's etcd lease (TTL 10 s, kept alive): its id is the Dynamo instance id; keys live on it.
import { EtcdLeaseInvalidError, type Etcd3, type Lease } from 'etcd3';
import { leaseHex } from '../dynamo/names.js';
import { leaseKeepAlives, type LeaseKeepAlives } from './etcd-keepalive.js';

/** How long revoke() may take before giving up (the keys then expire with the TTL). */
const REVOKE_TIMEOUT_MS = 3000;
/** Retry delay after a failed keep-alive, so one lost packet does not cost a whole period. */
const RETRY_MS = 500;

/**
 * One etcd lease kept alive the way Dynamo's `keep_alive` does (rt/transports/etcd/lease.rs): every
 * answer moves a deadline to now + the TTL etcd reports. When the deadline passes, or etcd answers
 * TTL 0 (expired or revoked elsewhere), the lease is lost and `onLost` runs once; the worker must
 * then shut down or register again, since its keys are gone or about to go.
 *
 * Dynamo sends a keep-alive every ttl/2 from a runtime of its own; here keep-alives share the event
 * loop with request handling, so they go every ttl/3: a keep-alive that is late by a whole period
 * still leaves a third of the TTL (with ttl/2 the remaining time already touches half the TTL on
 * time, and any delay eats into the last half).
 *
 * etcd3's own auto keep-alive is not used: it pings every ttl/3, retries a broken stream forever
 * and only reports a loss once 2×TTL has passed since the last answer, i.e. well after etcd has
 * already deleted the instance and card keys.
 */
export class WorkerLease {
  private state: 'alive' | 'lost' | 'revoked' = 'alive';
  private keepAliveTimer: NodeJS.Timeout | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private revoking: Promise<void> | null = null;
  /** The keep-alive batcher of the lease's etcd client (set by grant). */
  private keepAlives: LeaseKeepAlives | null = null;
  /** Time of the last keep-alive answer (ms since epoch); for diagnostics and tests. */
  lastKeepAliveAt = Date.now();

  private constructor(
    private readonly lease: Lease,
    readonly id: bigint,
    readonly ttlSeconds: number,
    private readonly onLost: (reason: string) => void,
  ) {}

  /** Grants a lease and starts keeping it alive. Rejects if etcd refuses or cannot be reached. */
  static async grant(client: Etcd3, ttlSeconds = 10, onLost: (reason: string) => void = () => {}): Promise<WorkerLease> {
    const lease = client.lease(ttlSeconds, { autoKeepAlive: false });
    // etcd's lease id is an int64; etcd3 (proto-loader `longs: String`) hands it out as decimal
    // text, so BigInt keeps every bit. A Number would round ids above 2^53, which real ids are.
    const raw = await lease.grant();
    if (!/^[0-9]+$/.test(String(raw))) throw new Error(`etcd granted a lease with an unexpected id '${String(raw)}'`);
    const worker = new WorkerLease(lease, BigInt(raw), ttlSeconds, onLost);
    worker.keepAlives = leaseKeepAlives(client);
    // etcd3 emits 'lost' when a put through the lease finds it invalid, or a keep-alive sees TTL 0.
    lease.on('lost', (err: Error) => worker.lose(`etcd lease ${leaseHex(worker.id)} lost: ${err.message}`));
    worker.armDeadline(ttlSeconds * 1000);
    worker.schedule(worker.periodMs);
    return worker;
  }

  /** The lease id as etcd3 expects it in requests (decimal text). */
  get etcdId(): string {
    return this.id.toString();
  }

  /** True until the lease is lost or revoked. */
  get alive(): boolean {
    return this.state === 'alive';
  }

  private get periodMs(): number {
    return Math.max(250, (this.ttlSeconds * 1000) / 3);
  }

  private schedule(delayMs: number): void {
    clearTimeout(this.keepAliveTimer);
    if (this.state !== 'alive') return;
    this.keepAliveTimer = setTimeout(() => void this.keepAliveOnce(), delayMs);
    // The NATS connection keeps a worker's event loop alive; the lease alone should not.
    this.keepAliveTimer.unref();
  }

  private armDeadline(ms: number): void {
    clearTimeout(this.deadlineTimer);
    if (this.state !== 'alive') return;
    this.deadlineTimer = setTimeout(
      () => this.lose(`etcd lease ${leaseHex(this.id)} lost: no keep-alive answer within ${this.ttlSeconds} s (check the etcd server)`),
      ms,
    );
    this.deadlineTimer.unref();
  }

  private async keepAliveOnce(): Promise<void> {
    if (this.state !== 'alive') return;
    try {
      // A gRPC deadline bounds the attempt: a stream that never answers is cancelled, not leaked.
      // The process's leases share their keep-alive streams (etcd-keepalive.ts).
      const ttl = await this.keepAlives!.keepAlive(this.etcdId, Date.now() + this.periodMs);
      if (this.state !== 'alive') return;
      this.lastKeepAliveAt = Date.now();
      this.armDeadline(ttl * 1000);
      this.schedule(this.periodMs);
    } catch (err) {
      if (this.state !== 'alive') return;
      if (err instanceof EtcdLeaseInvalidError) {
        // etcd answered TTL 0.
        this.lose(`etcd lease ${leaseHex(this.id)} lost: expired or revoked`);
        return;
      }
      // A transient failure: try again soon; the deadline decides when it is too late.
      this.schedule(Math.min(RETRY_MS, this.periodMs));
    }
  }

  private stopTimers(): void {
    clearTimeout(this.keepAliveTimer);
    clearTimeout(this.deadlineTimer);
  }

  private lose(reason: string): void {
    if (this.state !== 'alive') return;
    this.state = 'lost';
    this.stopTimers();
    this.lease.release();
    this.onLost(reason);
  }

  /**
   * Revokes the lease: etcd deletes every key attached to it at once. Idempotent (later calls
   * return the first call's promise); never rejects — if etcd cannot be reached within a few
   * seconds the keys expire with the TTL anyway.
   */
  revoke(): Promise<void> {
    this.revoking ??= (async () => {
      this.state = 'revoked';
      this.stopTimers();
      // Also after a loss: if etcd is back, the lease may not have expired yet.
      await this.lease.revoke({ deadline: Date.now() + REVOKE_TIMEOUT_MS }).catch(() => {});
    })();
    return this.revoking;
  }

  /**
   * Revokes the lease and resolves once etcd has confirmed it, or said it no longer exists (expired or
   * revoked before); rejects when etcd cannot be reached within `timeoutMs`. Usable after a loss, to
   * make sure the lost lease's keys are gone before new ones are written.
   */
  async revokeConfirmed(timeoutMs = REVOKE_TIMEOUT_MS): Promise<void> {
    this.state = this.state === 'alive' ? 'revoked' : this.state;
    this.stopTimers();
    // etcd3's revoke treats "lease not found" as done and rethrows every other failure.
    await this.lease.revoke({ deadline: Date.now() + timeoutMs });
  }
}

/**
 * Writes `key` on the lease only if it does not exist yet: one etcd transaction
 * `if version(key) == 0 then put(key, value, lease)` (Dynamo's `kv_create` / `EtcdBucket::create`).
 */
export async function createIfAbsent(client: Etcd3, key: string, value: string, lease: WorkerLease): Promise<'created' | 'exists'> {
  const result = await client
    .if(key, 'Version', '==', 0)
    .then(client.put(key).value(value).lease(lease.etcdId))
    .commit();
  return result.succeeded ? 'created' : 'exists';
}
