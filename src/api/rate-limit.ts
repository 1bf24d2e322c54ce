/**
 * Slows down token guessing without locking anyone out. Only failed
 * authentications count: after `maxFailures` of them from one client address
 * within `windowMs`, further failures from it get 429, each after a delay
 * that doubles with every failure over the limit (capped). A valid token is
 * never refused or delayed, whatever its address has done: every local
 * client (CLI, dashboard, Prometheus, a hostile local user) is 127.0.0.1, so
 * a lockout by address would let anyone on the host shut the others out.
 * Guessing stays hopeless because a token's secret is 256 random bits; the
 * limit and the delay keep a guesser slow and the log quiet.
 */
export interface LimiterOptions {
  /** Delay of the first failure over the limit; doubles per further failure. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Delayed replies one address may have pending; more are answered at once (a delay must not pin sockets without bound). */
  maxPending?: number;
}

export class AuthFailureLimiter {
  /** Per address, the times of its last `maxFailures` failures (bounded: older ones are not needed to decide). */
  private readonly failures = new Map<string, number[]>();
  private readonly pending = new Map<string, number>();
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  readonly maxPending: number;
  /** Failures over the limit per address, for the backoff. */
  private readonly excess = new Map<string, number>();

  constructor(
    readonly maxFailures = 10,
    readonly windowMs = 60_000,
    private readonly now: () => number = Date.now,
    o: LimiterOptions = {},
  ) {
    this.baseDelayMs = o.baseDelayMs ?? 250;
    this.maxDelayMs = o.maxDelayMs ?? 5000;
    this.maxPending = o.maxPending ?? 8;
  }

  private recent(client: string): number[] {
    const cutoff = this.now() - this.windowMs;
    const list = (this.failures.get(client) ?? []).filter((t) => t > cutoff);
    if (list.length === 0) {
      this.failures.delete(client);
      this.excess.delete(client);
    } else this.failures.set(client, list);
    return list;
  }

  /** Whether the address has used up its failures: its next failure is answered 429, after delay(). */
  blocked(client: string): boolean {
    return this.recent(client).length >= this.maxFailures;
  }

  /** Seconds until the address's failures fall out of the window. */
  retryAfter(client: string): number {
    const list = this.recent(client);
    const oldest = list[0];
    return oldest === undefined ? 0 : Math.max(1, Math.ceil((oldest + this.windowMs - this.now()) / 1000));
  }

  /** Records a failure; returns how long to hold its reply (0 while the address is under the limit). */
  fail(client: string): number {
    const list = this.recent(client);
    const over = list.length >= this.maxFailures;
    list.push(this.now());
    if (list.length > this.maxFailures) list.shift();
    this.failures.set(client, list);
    // Bound memory under a spray of addresses.
    if (this.failures.size > 10_000) {
      const first = this.failures.keys().next().value as string;
      this.failures.delete(first);
      this.excess.delete(first);
    }
    if (!over) return 0;
    const n = (this.excess.get(client) ?? 0) + 1;
    this.excess.set(client, n);
    return Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.min(n - 1, 30));
  }

  /** Holds a failed reply for `ms`, unless the address already has maxPending replies held. */
  async hold(client: string, ms: number): Promise<void> {
    const held = this.pending.get(client) ?? 0;
    if (ms <= 0 || held >= this.maxPending) return;
    this.pending.set(client, held + 1);
    try {
      await new Promise((resolve) => setTimeout(resolve, ms).unref());
    } finally {
      const left = (this.pending.get(client) ?? 1) - 1;
      if (left <= 0) this.pending.delete(client);
      else this.pending.set(client, left);
    }
  }
}
