/** The real layers below a session: the local repository, FUSE publishing, the drivers. */
import { createHypervisor } from '../hypervisor/index.js';
import { openRepository } from '../repo/repository.js';
import { removePublication, startPublication } from '../publish/publish.js';
import type { SessionDeps } from './seam.js';

export const realDeps: SessionDeps = {
  openRepository: (path) => openRepository(path),
  startPublication: (opts) => startPublication(opts),
  removePublication: async (stateDir, id, owner) => {
    await removePublication(stateDir, id, { discard: true, as: owner });
  },
  hypervisor: (driver, opts) => createHypervisor(driver, opts),
};
