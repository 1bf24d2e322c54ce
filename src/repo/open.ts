/**
 * From a repository spec (what --repo, the config's `repository` and API
 * bodies hold) to where the repository's bytes live. A spec is either a
 * directory or `s3://BUCKET/PREFIX` (s3-config.ts); everything that names a
 * repository goes through resolveRepository, so an s3:// spec is never taken
 * for a relative path.
 */
import { join, resolve } from 'node:path';
import type { ChunkStore, RepoConfig } from './api.js';
import { LocalChunkStore, type ChunkStoreOptions } from './chunk-store.js';
import { CachedChunkStore } from './cached-chunk-store.js';
import { CHUNKS_DIR, maxBlobSize } from './format.js';
import { LocalMetaStore, type MetaStore } from './meta-store.js';
import type { S3Client } from '@aws-sdk/client-s3';
import { createS3Client, isS3Url, parseS3Url, s3SettingsFromEnv, s3Url, type S3ClientOptions, type S3Settings } from './s3-config.js';
import { createBlobIo, type BlobIo } from './s3-blob-io.js';
import { S3ChunkStore } from './s3-chunk-store.js';
import { S3MetaStore } from './s3-meta-store.js';

/** The canonical form of a spec: an absolute directory, or `s3://bucket/prefix/`. Equal repositories have equal forms. */
export function resolveRepository(spec: string): string {
  return isS3Url(spec) ? s3Url(parseS3Url(spec)) : resolve(spec);
}

export function isObjectStorage(spec: string): boolean {
  return isS3Url(spec);
}

/** Default bound of the on-disk chunk cache of an object-storage repository (limits.objectCacheMiB). */
export const DEFAULT_OBJECT_CACHE_MIB = 2048;

/** A chunk cache for reads from object storage: `<stateDir>/chunk-cache/<repo id>`, at most `maxBytes`. */
export interface ChunkCacheSetting {
  stateDir: string;
  maxBytes: number;
}

/** Where a repository's bytes live: its metadata now, its chunk store once the config is read. */
export interface RepositoryBackend {
  path: string;
  meta: MetaStore;
  chunkStore(config: RepoConfig, cache?: ChunkCacheSetting): ChunkStore;
}

/**
 * One client per endpoint and key in a process: the server opens a repository per request, and each
 * client holds its own pool of keep-alive sockets (S3_MAX_SOCKETS).
 */
const clients = new Map<string, S3Client>();
function sharedClient(settings: S3Settings, opts: S3ClientOptions = {}): S3Client {
  const key = JSON.stringify([settings.endpoint, settings.region, settings.accessKeyId, settings.secretAccessKey, opts]);
  let client = clients.get(key);
  if (!client) {
    client = createS3Client(settings, opts);
    clients.set(key, client);
  }
  return client;
}

/** The lean blob requests (s3-blob-io.ts), one per endpoint and key like the clients: its agent holds the sockets. */
const blobIos = new Map<string, BlobIo>();
function sharedBlobIo(settings: S3Settings): BlobIo {
  const key = JSON.stringify([settings.endpoint, settings.region, settings.accessKeyId, settings.secretAccessKey]);
  let io = blobIos.get(key);
  if (!io) {
    io = createBlobIo(settings);
    blobIos.set(key, io);
  }
  return io;
}

export function repositoryBackend(spec: string, write: ChunkStoreOptions = {}): RepositoryBackend {
  if (!isS3Url(spec)) {
    const path = resolve(spec);
    return { path, meta: new LocalMetaStore(path), chunkStore: () => new LocalChunkStore(join(path, CHUNKS_DIR), write) };
  }
  const loc = parseS3Url(spec);
  const settings = s3SettingsFromEnv();
  const client = sharedClient(settings);
  // Metadata (config, locks, sweep markers, indexes, manifests, listings) on fresh connections: see S3ClientOptions.keepAlive.
  const meta = new S3MetaStore({
    ...loc,
    client: sharedClient(settings, { keepAlive: false }),
    ...(settings.endpoint ? { endpoint: settings.endpoint } : {}),
  });
  return {
    path: meta.path,
    meta,
    chunkStore: (config, cache) => {
      const store = new S3ChunkStore({ ...loc, client, blobIo: sharedBlobIo(settings), maxBlobBytes: maxBlobSize(config.chunkSize) });
      // Reads for publishing and recovery fetch each chunk once; verify opens without a cache so it reads the bucket itself.
      return cache ? new CachedChunkStore(store, { dir: join(cache.stateDir, 'chunk-cache', config.id), maxBytes: cache.maxBytes }) : store;
    },
  };
}
