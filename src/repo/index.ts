/** The repository layer's entry points (words defined in api.ts and contract.ts). */
export * from './api.js';
export * from './contract.js';
export { createCodec, deriveKeys, keyCheckValue } from './chunk-codec.js';
export { LocalChunkStore } from './chunk-store.js';
export { encodeFixedIndex, decodeFixedIndex, chunkCountFor } from './fixed-index.js';
export { initRepository, openRepository, readKeyFile, validateChunkSize, newPointId, LocalRepository } from './repository.js';
export type { InitOptions, OpenOptions, Leftover, PointScan } from './repository.js';
export { readLocks, liveLocks, isStale } from './lock.js';
export { CodecPool } from './codec-pool.js';
export { verifyRepository } from './verify.js';
export type { VerifyReport, VerifyFinding, VerifyOptions } from './verify.js';
export { pruneRepository, planPrune } from './prune.js';
export type { PrunePolicy, PruneOptions, PruneReport, PruneDecision } from './prune.js';
export { collectGarbage } from './gc.js';
export type { GcOptions, GcReport } from './gc.js';
