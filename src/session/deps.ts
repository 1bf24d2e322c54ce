/** The real layers below a session: the local repository, FUSE publishing, the drivers. */
import { createHypervisor } from '../hypervisor/index.js';
import { openRepository } from '../repo/repository.js';
import { removePublication, startPublication } from '../publish/publish.js';
import type { SessionDeps } from './seam.js';

/** The real layers, opening an encrypted repository with `keyFile` (a path; the key never leaves the file). */
export function depsWithKey(keyFile: string | undefined): SessionDeps {
  const hooks = keyFile === undefined ? {} : { keyFile };
  return { ...realDeps, openRepository: (path) => openRepository(path, hooks), startPublication: (opts) => startPublication(opts, hooks) };
}

export const realDeps: SessionDeps = {
  openRepository: (path) => openRepository(path),
  startPublication: (opts) => startPublication(opts),
  removePublication: async (stateDir, id, owner) => {
    await removePublication(stateDir, id, { discard: true, as: owner });
  },
  hypervisor: (driver, opts) => createHypervisor(driver, opts),
};
