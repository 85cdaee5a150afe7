// What differs between Dynamo's protocol generations, in one place: records, card, names and stream rules.
import type { DynamoVersion, EndpointId } from '../config.js';
import { endpointRecord, instanceRecord, modelRecord, type Transport } from './discovery-records.js';
import { buildModelCard, buildModelCard1x, type CardFile } from './model-card.js';
import { natsTransportSubject, requestSubject } from './names.js';
import type { CardFileKind } from '../model/resolve-model.js';
import type { WorkerType } from '../core/types.js';

/** Everything a card needs, whichever generation writes it. */
export interface CardInput {
  displayName: string;
  sourcePath: string;
  files: ReadonlyMap<CardFileKind, CardFile>;
  /** The model's own context length; 0 when unknown. */
  modelContextLength: number;
  /** The limit the engine enforces (--max-model-len, else the model's); null when unknown. */
  engineContextLength: number | null;
  blockSize: number;
  runtime: { totalKvBlocks: number; maxNumSeqs: number; maxNumBatchedTokens: number | null; dataParallelSize: number };
  /** Whether the worker publishes KV events (prefix caching on). */
  kvEvents: boolean;
  workerType: WorkerType;
  /** How often a frontend may migrate a broken stream to another worker (`migration_limit`). */
  migrationLimit: number;
  /** A prefill worker's bootstrap server (1.4 cards advertise it). */
  bootstrap: { host: string; port: number } | null;
}

export interface Generation {
  /** The runtime version a NATS micro service reports ($SRV.INFO). */
  runtimeVersion: string;
  /** Whether the call-home stream ends with the sentinel after the frontend's stop or kill. */
  sentinelAfterStop: boolean;
  /**
   * How KV events and load go out: 0.6.x JetStream RouterEvents and core-NATS LoadEvents, or 1.x's
   * event plane (msgpack envelopes on NATS or ZMQ, publisher records, ActiveLoad, forward-pass metrics).
   */
  events: 'jetstream' | 'event-plane';
  /** Where card files are published: local paths, the NATS object store (0.6.0), or the 1.x rules. */
  cardFiles: 'local-paths' | 'object-store' | 'v1';
  /** Whether the vLLM-named series carry `worker_id` (1.4's mocker labels them by model and rank only). */
  vllmSeriesByWorker: boolean;
  /** Whether a prefill worker exports vLLM-named series (1.4's mocker binds them at the first non-prefill request: never). */
  vllmSeriesOnPrefill: boolean;
  card(input: CardInput): string;
  /** The value under v1/mdc/…/{id}. */
  modelRecord(ep: EndpointId, id: bigint, cardJson: string): string;
  /** The value under v1/instances/…/{id}. */
  endpointRecord(ep: EndpointId, id: bigint, transport: Transport): string;
  /** The NATS transport string the Endpoint record advertises (the subscription is always the slugified subject). */
  natsTransport(ep: EndpointId, id: bigint): string;
}

function legacy(version: '0.6.0' | '0.6.1'): Generation {
  return {
    runtimeVersion: version,
    sentinelAfterStop: true,
    events: 'jetstream',
    cardFiles: version === '0.6.0' ? 'object-store' : 'local-paths',
    vllmSeriesByWorker: true,
    vllmSeriesOnPrefill: true,
    card: (c) =>
      buildModelCard({
        displayName: c.displayName,
        files: c.files,
        contextLength: c.modelContextLength,
        blockSize: c.blockSize,
        runtime: c.runtime,
        workerType: c.workerType,
        migrationLimit: c.migrationLimit,
      }),
    // 0.6.x stores the bare card under v1/mdc.
    modelRecord: (_ep, _id, cardJson) => cardJson,
    endpointRecord: (ep, id, transport) => {
      if (!('nats_tcp' in transport)) throw new Error(`Dynamo ${version} has no TCP request plane`);
      return instanceRecord(ep, id, transport.nats_tcp);
    },
    // 0.6.x frontends recompute the subject from the names (slugified); the record repeats it.
    natsTransport: requestSubject,
  };
}

function v14(deviceType: 'cpu' | 'cuda'): Generation {
  return {
    // The newest 1.4 release, whose wire this generation speaks.
    runtimeVersion: '1.4.2',
    sentinelAfterStop: false,
    events: 'event-plane',
    cardFiles: 'v1',
    vllmSeriesByWorker: false,
    vllmSeriesOnPrefill: false,
    card: (c) =>
      buildModelCard1x({
        displayName: c.displayName,
        sourcePath: c.sourcePath,
        files: c.files,
        architecturalContextLength: c.modelContextLength > 0 ? c.modelContextLength : null,
        runtimeContextLength: c.engineContextLength,
        blockSize: c.blockSize,
        migrationLimit: c.migrationLimit,
        runtime: c.runtime,
        // No KV recovery endpoint is served, so routers must not count on one.
        enableLocalIndexer: false,
        kvEventPublishingEnabled: c.kvEvents,
        workerType: c.workerType,
        disaggregatedEndpoint: c.bootstrap,
      }),
    modelRecord,
    endpointRecord: (ep, id, transport) => endpointRecord(ep, id, transport, deviceType),
    natsTransport: natsTransportSubject,
  };
}

export function generationOf(version: DynamoVersion, deviceType: 'cpu' | 'cuda'): Generation {
  return version === '1.4' ? v14(deviceType) : legacy(version);
}
