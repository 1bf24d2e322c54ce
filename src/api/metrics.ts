/**
 * Prometheus metrics of the server process. Gauges that mirror state
 * (publications, sessions) are computed on scrape from the same functions the
 * API uses, so they can never disagree with it; counters and histograms are
 * fed by the code that does the work. The frontends' I/O and the chunk cache
 * count into plain process-wide numbers (src/telemetry/counters.ts), which
 * are copied into counters here on scrape, so NFS, FUSE and the disk layer
 * never load prom-client.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { cacheStats, frontendStats, type Frontend } from '../telemetry/counters.js';

export interface MetricsSources {
  publications(): number;
  sessionsByState(): Promise<Record<string, number>>;
  jobRunsByResult(): Promise<Record<string, number>>;
}

export class Metrics {
  readonly registry = new Registry();
  readonly recoverySeconds: Histogram;
  readonly httpRequests: Counter;

  constructor(sources: MetricsSources) {
    collectDefaultMetrics({ register: this.registry, prefix: 'restorelab_process_' });
    const r = [this.registry];
    new Gauge({
      name: 'restorelab_publications',
      help: 'restore points published as datastores',
      registers: r,
      collect() {
        this.set(sources.publications());
      },
    });
    new Gauge({
      name: 'restorelab_sessions',
      help: 'recovery sessions by state',
      labelNames: ['state'],
      registers: r,
      async collect() {
        this.reset();
        for (const [state, n] of Object.entries(await sources.sessionsByState())) this.set({ state }, n);
      },
    });
    new Gauge({
      name: 'restorelab_job_runs',
      help: 'SureBackup job runs recorded, by result',
      labelNames: ['result'],
      registers: r,
      async collect() {
        const counts = await sources.jobRunsByResult();
        this.reset();
        for (const [result, n] of Object.entries(counts)) this.set({ result }, n);
      },
    });
    this.recoverySeconds = new Histogram({
      name: 'restorelab_recovery_seconds',
      help: 'seconds from recover request to a running VM',
      buckets: [1, 2, 5, 10, 20, 30, 60, 120, 300],
      registers: r,
    });
    for (const frontend of ['nfs', 'fuse'] as const) frontendMetrics(frontend, r);
    new Counter({
      name: 'restorelab_chunk_cache_hits_total',
      help: 'chunk cache lookups answered from memory (or joined to a decode in flight)',
      registers: r,
      collect() {
        setCounter(this, [[{}, cacheStats().hits]]);
      },
    });
    new Counter({
      name: 'restorelab_chunk_cache_misses_total',
      help: 'chunk cache lookups that read and decoded the chunk',
      registers: r,
      collect() {
        setCounter(this, [[{}, cacheStats().misses]]);
      },
    });
    new Gauge({
      name: 'restorelab_chunk_cache_hit_ratio',
      registers: r,
      help: 'hits / lookups since the process started (NaN before the first lookup); for a recent ratio use rate() of the _total counters',
      // NaN rather than 0 when nothing was looked up: an idle server has no
      // bad ratio, and a `< 0.5` alert must not fire on it.
      collect() {
        this.set(cacheStats().hitRatio ?? Number.NaN);
      },
    });
    this.httpRequests = new Counter({
      name: 'restorelab_http_requests_total',
      help: 'API requests by route and status',
      labelNames: ['method', 'route', 'status'],
      registers: r,
    });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/**
 * Sets a counter to absolute values read from the process-wide counters.
 * Those only grow, so the exported series are monotonic as Prometheus expects.
 */
function setCounter(c: Counter, values: Array<[Record<string, string>, number]>): void {
  c.reset();
  for (const [labels, value] of values) c.inc(labels, value);
}

function frontendMetrics(frontend: Frontend, registers: Registry[]): void {
  const name = frontend.toUpperCase();
  new Counter({
    name: `restorelab_${frontend}_ops_total`,
    help: `${name} requests served by this process, by op`,
    labelNames: ['op'],
    registers,
    collect() {
      setCounter(
        this,
        Object.entries(frontendStats(frontend).ops).map(([op, n]) => [{ op }, n]),
      );
    },
  });
  new Counter({
    name: `restorelab_${frontend}_bytes_total`,
    help: `${name} payload bytes by direction (read: sent to clients, write: received)`,
    labelNames: ['direction'],
    registers,
    collect() {
      const s = frontendStats(frontend);
      setCounter(this, [
        [{ direction: 'read' }, s.bytesRead],
        [{ direction: 'write' }, s.bytesWritten],
      ]);
    },
  });
}
