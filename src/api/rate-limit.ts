/**
 * Slows down token guessing: after `maxFailures` failed authentications from
 * one client address within `windowMs`, that address gets 429 until the
 * window has passed. Successful requests do not reset the count, so a valid
 * low-role token cannot be used to keep guessing.
 */
export class AuthFailureLimiter {
  private readonly failures = new Map<string, number[]>();

  constructor(readonly maxFailures = 10, readonly windowMs = 60_000, private readonly now: () => number = Date.now) {}

  private recent(client: string): number[] {
    const cutoff = this.now() - this.windowMs;
    const list = (this.failures.get(client) ?? []).filter((t) => t > cutoff);
    if (list.length === 0) this.failures.delete(client); else this.failures.set(client, list);
    return list;
  }

  blocked(client: string): boolean { return this.recent(client).length >= this.maxFailures; }

  /** Seconds until the client may try again. */
  retryAfter(client: string): number {
    const list = this.recent(client);
    const oldest = list[0];
    return oldest === undefined ? 0 : Math.max(1, Math.ceil((oldest + this.windowMs - this.now()) / 1000));
  }

  fail(client: string): void {
    const list = this.recent(client);
    list.push(this.now());
    this.failures.set(client, list);
    // Bound memory under a spray of addresses.
    if (this.failures.size > 10_000) this.failures.delete(this.failures.keys().next().value as string);
  }
}
