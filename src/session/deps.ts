/** The real layers below a session: the local repository, FUSE publishing, the drivers. */
import { createHypervisor } from '../hypervisor/index.js';
import { openRepository } from '../repo/repository.js';
import type { PublishOptions, RunningPublication } from '../publish/contract.js';
import type { SessionDeps } from './seam.js';

type StartPublication = (opts: PublishOptions) => Promise<RunningPublication>;

/**
 * Loaded on first use, through the contract's types: the publishing module
 * is written in parallel with this one, and a session that never publishes
 * (planning, listing, stop) must not depend on it being loadable.
 */
async function publisher(): Promise<StartPublication> {
  const specifier = '../publish/publish.js';
  const mod = (await import(specifier)) as { startPublication: StartPublication };
  return mod.startPublication;
}

export const realDeps: SessionDeps = {
  openRepository: (path) => openRepository(path),
  startPublication: async (opts) => (await publisher())(opts),
  hypervisor: (driver, opts) => createHypervisor(driver, opts),
};
