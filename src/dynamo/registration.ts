// Registration in Dynamo 0.6.x order: model card, then the NATS endpoint, then the instance key.
import type { Etcd3 } from 'etcd3';
import type { EndpointId } from '../config.js';
import { instanceRecord } from './model-card.js';
import { createIfAbsent, type WorkerLease } from './lease.js';
import { cardKey, instanceKey } from './names.js';

export interface RegistrationArgs {
  etcd: Etcd3;
  lease: WorkerLease;
  endpoint: EndpointId;
  cardJson: string;
  subject: string;
  /** Subscribes to the request subject; runs before the instance key appears. */
  beforeInstance: () => Promise<void>;
}

export async function registerWorker(args: RegistrationArgs): Promise<void> {
  const { etcd, lease, endpoint } = args;
  // An existing card for this lease is accepted as is (Dynamo's EtcdBucket::create).
  await createIfAbsent(etcd, cardKey(endpoint, lease.id), args.cardJson, lease);
  await args.beforeInstance();
  const key = instanceKey(endpoint, lease.id);
  if ((await createIfAbsent(etcd, key, instanceRecord(endpoint, lease.id, args.subject), lease)) === 'exists') {
    throw new Error(`instance key ${key} already exists`);
  }
}
