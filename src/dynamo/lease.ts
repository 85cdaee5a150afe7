// The worker's etcd lease (TTL 10 s, kept alive): its id is the Dynamo instance id; keys live on it.
import type { Etcd3, Lease } from 'etcd3';

export class WorkerLease {
  private revoked = false;

  private constructor(
    private readonly lease: Lease,
    readonly id: bigint,
  ) {}

  /** Grants a lease and keeps it alive (etcd3 sends keep-alives at a third of the TTL). */
  static async grant(client: Etcd3, ttlSeconds = 10, onLost: (reason: string) => void = () => {}): Promise<WorkerLease> {
    const lease = client.lease(ttlSeconds, { autoKeepAlive: true });
    // etcd hands the id out as an int64 in decimal text: BigInt keeps every bit.
    const id = BigInt(await lease.grant());
    const worker = new WorkerLease(lease, id);
    lease.on('lost', (err) => {
      if (!worker.revoked) onLost(err.message);
    });
    return worker;
  }

  /** The lease id as etcd3 expects it in requests (decimal text). */
  get etcdId(): string {
    return this.id.toString();
  }

  /** Revoking deletes every key attached to the lease at once. Idempotent. */
  async revoke(): Promise<void> {
    if (this.revoked) return;
    this.revoked = true;
    await this.lease.revoke().catch(() => {});
  }
}

/** Writes `key` on the lease only if it does not exist yet (etcd txn on version == 0). */
export async function createIfAbsent(client: Etcd3, key: string, value: string, lease: WorkerLease): Promise<'created' | 'exists'> {
  const result = await client
    .if(key, 'Version', '==', 0)
    .then(client.put(key).value(value).lease(lease.etcdId))
    .commit();
  return result.succeeded ? 'created' : 'exists';
}
