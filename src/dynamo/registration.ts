// Registration in Dynamo's order: the Model record, then the request plane, then the Endpoint record.
import type { EndpointId } from '../config.js';
import type { Transport } from './discovery-records.js';
import type { Generation } from './generation.js';
import { cardKey, instanceKey } from './names.js';

/** One worker's registration in a discovery backend: its instance id and the records written under it. */
export interface DiscoverySession {
  readonly instanceId: bigint;
  /** Writes `value` under `key` unless the key exists (Dynamo's create semantics). */
  create(key: string, value: string): Promise<'created' | 'exists'>;
  /** Removes every record of this session (lease revoke, file delete). Never rejects. */
  close(): Promise<void>;
  /**
   * Removes every record of this session and resolves only once the backend has confirmed they are
   * gone (also after a lost lease); rejects while the backend cannot be reached. Absent: close() is sure.
   */
  closeConfirmed?(): Promise<void>;
  /** Removes one record of this session (it can be created again). */
  remove(key: string): Promise<void>;
}

/** A discovery backend (etcd, file). */
export interface Discovery {
  /** Opens a session; `onLost` runs once if its records can no longer be kept (etcd lease loss). */
  open(onLost: (reason: string) => void): Promise<DiscoverySession>;
  /** Releases the backend's client. */
  stop(): Promise<void>;
}

export interface Registration {
  session: DiscoverySession;
  generation: Generation;
  endpoint: EndpointId;
  cardJson: string;
  /** Starts taking requests; returns how the frontend reaches them. Runs between the two records. */
  listen: () => Promise<Transport>;
}

/**
 * An existing Model record is kept as it is (Dynamo's create semantics); an existing Endpoint record
 * means another worker holds this instance id, which is an error. The Endpoint record appears only
 * once requests can be taken, since a frontend may connect the moment it sees it.
 */
export async function registerWorker(r: Registration): Promise<Transport> {
  return (await registerWorkerRecords(r)).transport;
}

/** registerWorker, also returning the records written, in order (to withdraw and restore them). */
export async function registerWorkerRecords(r: Registration): Promise<{ transport: Transport; records: Array<[key: string, value: string]> }> {
  const { session, generation, endpoint: ep } = r;
  const id = session.instanceId;
  const model: [string, string] = [cardKey(ep, id), generation.modelRecord(ep, id, r.cardJson)];
  await session.create(...model);
  const transport = await r.listen();
  const key = instanceKey(ep, id);
  const endpoint: [string, string] = [key, generation.endpointRecord(ep, id, transport)];
  if ((await session.create(...endpoint)) === 'exists') {
    throw new Error(`instance key ${key} already exists`);
  }
  return { transport, records: [model, endpoint] };
}
