// Where a 1.x card points the frontend for each file: local paths, hf:// URLs, or the worker's own HTTP server.
import { basename } from 'node:path';
import type { EndpointId } from '../config.js';
import type { CardFile } from '../dynamo/model-card.js';
import type { CheckedCardFile } from './card-files.js';
import type { CardFileKind, ModelFiles } from './resolve-model.js';

/** Dynamo's BASE_SUFFIX: the model_suffix path segment of a base (non-LoRA) model. */
export const BASE_SUFFIX = '_base';

/** The system-server path Dynamo ≥ 1.3 serves a self-hosted card file under. */
export function selfHostedPath(ep: EndpointId, slug: string, fileName: string): string {
  const seg = encodeURIComponent;
  return `/v1/metadata/${seg(ep.namespace)}/${seg(ep.component)}/${seg(ep.endpoint)}/${seg(slug)}/${BASE_SUFFIX}/${seg(fileName)}`;
}

export interface CardLocations {
  files: Map<CardFileKind, CardFile>;
  /** System-server path → bytes, for the files served over HTTP. */
  served: Map<string, Uint8Array>;
}

/**
 * Dynamo 1.4's rules (local_model.rs): with DYN_SELF_HOST_METADATA on and a system server, every file
 * is served by the worker at `http://{host}:{port}/v1/metadata/…`; otherwise a model directory's
 * files keep their absolute paths, and a hub model's files become `hf://{repo}/{file}` so a frontend
 * on another host fetches them from the hub. Every CheckedFile carries its size.
 */
export function cardLocations(
  checked: ReadonlyMap<CardFileKind, CheckedCardFile>,
  model: Pick<ModelFiles, 'source'>,
  opts: { repoId: string; selfHostBase: string | null; endpoint: EndpointId; slug: string },
): CardLocations {
  const files = new Map<CardFileKind, CardFile>();
  const served = new Map<string, Uint8Array>();
  for (const [kind, f] of checked) {
    const name = basename(f.path);
    let path: string;
    if (opts.selfHostBase !== null) {
      const route = selfHostedPath(opts.endpoint, opts.slug, name);
      served.set(route, f.bytes);
      path = `${opts.selfHostBase}${route}`;
    } else if (model.source === 'local') {
      path = f.path;
    } else {
      path = `hf://${opts.repoId}/${name}`;
    }
    files.set(kind, { path, checksum: f.checksum, size: f.bytes.length });
  }
  return { files, served };
}
