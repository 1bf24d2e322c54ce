/**
 * The real layers below a session: the local repository, publishing, the
 * drivers. A session's NBD publication is served by the state directory's
 * shared publisher (src/publish/shared-publisher.ts: one process, one decode
 * pool and chunk cache for every session's exports) unless
 * RESTORELAB_SHARED_PUBLISHER=0, which serves it from the supervisor as
 * before (the boot-storm bench compares the two).
 */
import { createHypervisor } from '../hypervisor/index.js';
import { openRepository } from '../repo/repository.js';
import { removePublication, startPublication } from '../publish/publish.js';
import { startSharedPublication } from '../publish/shared-client.js';
import type { PublishOptions, RunningPublication } from '../publish/contract.js';
import type { SessionDeps } from './seam.js';

/** Set to 0 to serve a session's NBD publication from its own supervisor. */
export const SHARED_PUBLISHER_ENV = 'RESTORELAB_SHARED_PUBLISHER';

/** Whether sessions' NBD publications go to the shared publisher (the default). */
export function sharedPublisherEnabled(): boolean {
  return process.env[SHARED_PUBLISHER_ENV] !== '0';
}

/** FUSE must be served by the supervisor (QEMU inherits its channel); NFS has its own ports per session. NBD alone is shared. */
function publishFor(keyFile: string | undefined) {
  const hooks = keyFile === undefined ? {} : { keyFile };
  return (opts: PublishOptions): Promise<RunningPublication> =>
    opts.nbd && !opts.fuseDir && !opts.nfs && sharedPublisherEnabled()
      ? startSharedPublication(opts, hooks)
      : startPublication(opts, hooks);
}

/** The real layers, opening an encrypted repository with `keyFile` (a path; the key never leaves the file). */
export function depsWithKey(keyFile: string | undefined): SessionDeps {
  const hooks = keyFile === undefined ? {} : { keyFile };
  return { ...realDeps, openRepository: (path) => openRepository(path, hooks), startPublication: publishFor(keyFile) };
}

export const realDeps: SessionDeps = {
  openRepository: (path) => openRepository(path),
  startPublication: publishFor(undefined),
  removePublication: async (stateDir, id, owner) => {
    await removePublication(stateDir, id, { discard: true, as: owner });
  },
  hypervisor: (driver, opts) => createHypervisor(driver, opts),
};
