// Keep-alives of the many etcd leases of one process, sent together: one LeaseKeepAlive stream per batch.
//
// With --num-workers N on etcd, N leases each need a keep-alive every few seconds. One gRPC stream per
// keep-alive (etcd3's keepaliveOnce) costs ~0.3 ms of CPU apiece, about 9% of a core for 1,024 leases
// in gRPC and HTTP/2 overhead alone. Keep-alives asked for within BATCH_WINDOW_MS of each other share
// one stream instead (one request and one answer per lease on it): about a quarter of that. Since a
// lease asks again a period after its answer, leases that were batched once stay batched. A lone
// lease's keep-alive waits at most the window, which is small against a period of seconds.
import { EtcdLeaseInvalidError, type Etcd3 } from 'etcd3';

/** How long a keep-alive may wait for others to share its stream. */
export const BATCH_WINDOW_MS = 100;

interface Pending {
  id: string;
  deadline: number;
  resolve(ttlSeconds: number): void;
  reject(err: unknown): void;
}

/** What the LeaseKeepAlive stream hands out (etcd3 decodes int64 fields as decimal text). */
interface KeepAliveResponse {
  ID: string;
  TTL: string;
}

export class LeaseKeepAlives {
  private queue: Pending[] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly client: Etcd3,
    private readonly windowMs = BATCH_WINDOW_MS,
  ) {}

  /**
   * One keep-alive for lease `id` (decimal text). Resolves with the TTL etcd reports (seconds);
   * rejects with EtcdLeaseInvalidError when etcd answers TTL 0 (expired or revoked), or with the
   * stream's error, also when no answer came by `deadline` (ms since epoch).
   */
  keepAlive(id: string, deadline: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.queue.push({ id, deadline, resolve, reject });
      if (this.timer) return;
      this.timer = setTimeout(() => void this.flush(), this.windowMs);
      // A pending keep-alive alone should not keep the process alive.
      this.timer.unref();
    });
  }

  private async flush(): Promise<void> {
    this.timer = null;
    const batch = this.queue.splice(0);
    const waiting = new Map<string, Pending[]>();
    for (const p of batch) waiting.set(p.id, [...(waiting.get(p.id) ?? []), p]);
    const failAll = (err: unknown): void => {
      for (const list of waiting.values()) for (const p of list) p.reject(err);
      waiting.clear();
    };
    let stream;
    try {
      // The stream's gRPC deadline is the latest of the batch: an answer that never comes cancels it.
      stream = await this.client.leaseClient.leaseKeepAlive({ deadline: Math.max(...batch.map((p) => p.deadline)) });
    } catch (err) {
      failAll(err);
      return;
    }
    stream.on('data', (res: KeepAliveResponse) => {
      const list = waiting.get(String(res.ID));
      const p = list?.shift();
      if (list?.length === 0) waiting.delete(String(res.ID));
      if (p) {
        const ttl = Number(res.TTL);
        if (ttl > 0) p.resolve(ttl);
        else p.reject(new EtcdLeaseInvalidError(p.id));
      }
      if (waiting.size === 0) stream.end();
    });
    stream.on('error', (err: Error) => failAll(err));
    stream.on('end', () => failAll(new Error('etcd closed the keep-alive stream before answering')));
    for (const p of batch) stream.write({ ID: p.id });
  }
}

const byClient = new WeakMap<Etcd3, LeaseKeepAlives>();

/** The keep-alive batcher every lease of `client` shares. */
export function leaseKeepAlives(client: Etcd3): LeaseKeepAlives {
  let keepAlives = byClient.get(client);
  if (!keepAlives) byClient.set(client, (keepAlives = new LeaseKeepAlives(client)));
  return keepAlives;
}
