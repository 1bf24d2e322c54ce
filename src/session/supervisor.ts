/**
 * The session supervisor: `restorelab session-supervise <id>`, started
 * detached by `recover`. It owns the publication (FUSE is served from this
 * process, so it must outlive the CLI) and the domain: it brings the session
 * up, records it as running, serves stop/migrate requests on the control
 * socket, and watches the domain. When the domain ends without a stop
 * request (QEMU killed, crashed, powered off from inside), the session is
 * marked failed and its taps, lab and publication are removed.
 */
import { RestorelabError } from '../errors.js';
import { tracePhase } from '../host/trace.js';
import { controlSocket, serveControl, toSessionError, type ControlRequest } from './control.js';
import { closeHypervisor, type SessionDeps } from './seam.js';
import { migrateLive } from './migrate.js';
import { planRecovery } from './plan.js';
import { bringUp, teardown, type LiveSession } from './runner.js';
import { describeEvidence } from '../bringup/evidence.js';
import type { RecoverySession } from './session.js';
import { SessionStore } from './store.js';

const WATCH_INTERVAL_MS = 1000;

export interface SuperviseOptions {
  heartbeatTimeoutMs?: number;
}

/** Runs until the session ends; resolves with the process exit code. */
export async function superviseSession(stateDir: string, id: string, deps: SessionDeps, opts: SuperviseOptions = {}): Promise<number> {
  tracePhase('supervisor: started');
  const store = new SessionStore(stateDir);
  const s = store.get(id);
  s.supervisorPid = process.pid;
  delete s.controlSocket;
  store.save(s);
  const hv = deps.hypervisor(s.driver, { stateDir, ...(s.accel ? { accel: s.accel } : {}) });
  let live: LiveSession;
  try {
    if (s.state === 'migrated') {
      // A restarted supervisor of a migrated session: nothing is published
      // any more, so the running domain is all there is to re-attach to.
      const domain = await hv.attach(s.domain);
      if (!domain || !(await domain.alive())) throw new RestorelabError('VM_ENDED', `the VM of session ${s.id} is no longer running`);
      live = { session: s, hv, domain };
      store.save(s);
      return await watchSession(live, store, id);
    }
    const plan = await planRecovery(
      {
        repo: s.repo,
        vm: s.vm,
        point: s.point,
        driver: s.driver,
        stateDir,
        ...(s.labFile ? { lab: s.labFile } : {}),
        ...(s.masqueradePool !== undefined ? { masqueradePool: s.masqueradePool } : {}),
        ...(s.network ? { network: s.network } : {}),
      },
      deps,
    );
    tracePhase('supervisor: planned');
    live = await bringUp(s, plan, deps, store, hv, opts);
    tracePhase('supervisor: heartbeat');
  } catch (e) {
    s.state = 'failed';
    // The hint of a failed bring-up names the evidence it kept (console log, last screen).
    s.error = toSessionError(e);
    await teardown(s, store, hv, undefined, undefined, { screenshot: true }).catch(() => undefined);
    store.save(s);
    await closeHypervisor(hv);
    return 1;
  }
  return watchSession(live, store, id);
}

/** Serves control requests and watches the domain until the session ends. */
async function watchSession(live: LiveSession, store: SessionStore, id: string): Promise<number> {
  const s = live.session;
  const hv = live.hv;

  let busy: Promise<unknown> = Promise.resolve();
  let ending = false;
  let finish!: (code: number) => void;
  const finished = new Promise<number>((r) => (finish = r));

  const end = async (
    state: 'stopped' | 'failed',
    reason?: string,
    code: 'VM_ENDED' | 'PUBLISHER_GONE' = 'VM_ENDED',
  ): Promise<RecoverySession> => {
    ending = true;
    clearInterval(watch);
    try {
      // A VM that ended by itself may still show why on its last screen (QEMU alive but shut down).
      await teardown(s, store, hv, live.publication, undefined, { screenshot: state === 'failed' });
    } catch (e) {
      s.error = toSessionError(e);
    }
    s.state = state;
    const kept = describeEvidence(s.evidence ?? {});
    if (reason) s.error = { code, message: reason, ...(kept ? { hint: kept } : {}) };
    store.save(s);
    server.close();
    await closeHypervisor(hv);
    finish(state === 'stopped' ? 0 : 1);
    return s;
  };

  // Requests run one at a time: a stop during a migration waits for it.
  const handle = (req: ControlRequest): Promise<RecoverySession> => {
    const run = busy.then(async () => {
      if (ending) return s;
      if (req.op === 'stop') return end('stopped');
      await migrateLive(live, store, req.to, req.format);
      return s;
    });
    busy = run.catch(() => undefined);
    return run;
  };

  const server = await serveControl(controlSocket(store.workDir(id)), handle);
  s.controlSocket = controlSocket(store.workDir(id));
  store.save(s);
  const watch = setInterval(() => {
    if (ending) return;
    // Domain.alive is cheap (the qemu driver asks /proc, not its one-client monitor).
    live.domain.alive().then(
      async (alive) => {
        if (alive || ending) return;
        // Noticed once: asking libvirt why may take longer than one tick.
        ending = true;
        const why = await live.domain.exitReason().catch(() => undefined);
        void end('failed', `the VM stopped while the session was ${s.state}${why ? ` (${why})` : ''}`);
      },
      () => undefined,
    );
  }, WATCH_INTERVAL_MS);
  // A shared publisher that stops or crashes takes the disks of every session it served: this one fails, visibly.
  void live.publication?.lost?.then((why) => {
    if (ending) return;
    ending = true;
    void end('failed', `${why}; the VM lost its disks`, 'PUBLISHER_GONE');
  });
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.once(sig, () => void handle({ op: 'stop' }));
  }
  return finished;
}
