// etcd discovery: one lease per worker (its id is the instance id), records created on it if absent.
import type { Etcd3 } from 'etcd3';
import type { Discovery, DiscoverySession } from '../dynamo/registration.js';
import { WorkerLease, createIfAbsent } from './etcd-lease.js';

/** Dynamo's lease TTL, seconds. */
const LEASE_TTL_S = 10;

export class EtcdDiscovery implements Discovery {
  constructor(readonly client: Etcd3) {}

  async open(onLost: (reason: string) => void): Promise<DiscoverySession> {
    const lease = await WorkerLease.grant(this.client, LEASE_TTL_S, onLost);
    return {
      instanceId: lease.id,
      create: (key, value) => createIfAbsent(this.client, key, value, lease),
      // Revoking the lease deletes every key on it at once.
      close: () => lease.revoke(),
      closeConfirmed: () => lease.revokeConfirmed(),
      remove: async (key) => void (await this.client.delete().key(key)),
    };
  }

  async stop(): Promise<void> {
    this.client.close();
  }
}
