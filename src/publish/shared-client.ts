/**
 * A session's side of the shared publisher (shared-publisher.ts): connects
 * to it, starting it when nobody serves the state directory yet, and asks
 * it for an NBD publication. The connection stays open as the session's
 * lease; the returned publication's `lost` resolves if the publisher goes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { RestorelabError } from '../errors.js';
import { longRunningEnv } from '../host/malloc.js';
import { tracePhase } from '../host/trace.js';
import { projectPath } from '../paths.js';
import type { PublishOptions, RunningPublication } from './contract.js';
import { LOCAL_USER, removePublication } from './publish.js';
import { PublisherConnection, publisherDir, publisherSocket } from './publisher-wire.js';

/** How long a start waits for a publisher to answer, its own start included. */
const CONNECT_TIMEOUT_MS = 30_000;
const PUBLISH_TIMEOUT_MS = 180_000;
const CLOSE_TIMEOUT_MS = 60_000;
/** The shared publisher's stdout and stderr, in its directory. */
export const SHARED_PUBLISHER_LOG = 'publisher.log';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `restorelab publisher-serve`, detached so it outlives the supervisor that started it. */
function startPublisher(stateDir: string): ChildProcess {
  const dir = publisherDir(stateDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const log = openSync(join(dir, SHARED_PUBLISHER_LOG), 'a');
  const child = spawn(process.execPath, [projectPath('bin', 'restorelab.js'), 'publisher-serve', '--state-dir', stateDir], {
    detached: true,
    stdio: ['ignore', log, log],
    env: longRunningEnv(process.env),
  });
  closeSync(log);
  child.unref();
  return child;
}

/** The publisher this process started per state directory, while it runs: one start is enough. */
const started = new Map<string, ChildProcess>();

function startOnce(stateDir: string): void {
  const key = publisherSocket(stateDir);
  const mine = started.get(key);
  if (mine && mine.exitCode === null && mine.signalCode === null) return;
  started.set(key, startPublisher(stateDir));
}

/**
 * Starts the shared publisher unless one answers, without waiting for it:
 * `recover` calls it before it starts the supervisor, so the publisher's
 * start overlaps the supervisor's instead of following it.
 */
export async function startPublisherEarly(stateDir: string): Promise<void> {
  try {
    (await PublisherConnection.open(publisherSocket(stateDir))).close();
  } catch {
    startOnce(stateDir);
  }
}

/**
 * A connection to the state directory's shared publisher that answered
 * `hello`, starting one when none answers. Many supervisors may start one
 * at once: all but one exit at their lock, and everyone connects to that one.
 */
export async function connectPublisher(stateDir: string): Promise<PublisherConnection> {
  const socket = publisherSocket(stateDir);
  const deadline = Date.now() + CONNECT_TIMEOUT_MS;
  let last: string;
  for (;;) {
    try {
      const c = await PublisherConnection.open(socket);
      try {
        await c.request({ op: 'hello' }, 10_000);
        return c;
      } catch (e) {
        // One that is stopping (idle) refuses; the next attempt starts a new one.
        c.close();
        last = (e as Error).message;
      }
    } catch (e) {
      last = (e as Error).message;
    }
    // Started again only once ours is gone: it lost the lock to one that is still coming up, or that stopped meanwhile.
    startOnce(stateDir);
    if (Date.now() > deadline) {
      throw new RestorelabError(
        'PUBLISHER_GONE',
        `the shared publisher did not answer on ${socket} within ${CONNECT_TIMEOUT_MS / 1000} s (${last})`,
        {
          hint: `see ${join(publisherDir(stateDir), SHARED_PUBLISHER_LOG)}`,
        },
      );
    }
    await sleep(100);
  }
}

/** `opts` (an NBD publication) served by the shared publisher; closing it ends the lease. */
export async function startSharedPublication(opts: PublishOptions, hooks: { keyFile?: string } = {}): Promise<RunningPublication> {
  tracePhase('shared publisher: connecting');
  const conn = await connectPublisher(opts.stateDir);
  tracePhase('shared publisher: connected');
  let info;
  try {
    const reply = await conn.request(
      { op: 'publish', opts, ...(hooks.keyFile !== undefined ? { keyFile: hooks.keyFile } : {}) },
      PUBLISH_TIMEOUT_MS,
    );
    info = reply.publication;
    if (!info) throw new RestorelabError('PUBLISH_FAILED', 'the shared publisher answered without a publication');
  } catch (e) {
    conn.close();
    throw e;
  }
  const id = info.id;
  tracePhase(`shared publisher: ${id} served`);
  const owner = opts.owner ?? LOCAL_USER;
  let closed = false;
  const lost = conn.ended.then((why) => (why === undefined ? new Promise<string>(() => undefined) : `publication ${id}: ${why}`));
  return {
    ...info,
    lost,
    close: async (o = {}) => {
      if (closed) return;
      closed = true;
      try {
        await conn.request({ op: 'close', id, discard: o.discard === true }, CLOSE_TIMEOUT_MS);
      } catch (e) {
        if (!(e instanceof RestorelabError && e.code === 'PUBLISHER_GONE')) throw e;
        // The publisher is gone: nobody serves it any more; what is left on disk goes as a stop would remove it.
        if (o.discard) await removePublication(opts.stateDir, id, { discard: true, as: owner });
      } finally {
        conn.close();
      }
    },
  };
}
