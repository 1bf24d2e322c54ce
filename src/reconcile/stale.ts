/** What reconcile reports about one thing left behind, and how it cleans it. */

export type StaleKind = 'publication' | 'session' | 'vm' | 'lab' | 'netns' | 'mount' | 'overlay';

export interface StaleItem {
  /** `<kind>:<name>`: what `cleanup --item` and POST /state/cleanup take. */
  id: string;
  kind: StaleKind;
  name: string;
  reason: string;
  /** Removed by cleanup (and at server start) without asking: nothing of value is lost. */
  safe: boolean;
  /** Bytes of writes held (overlays, and publications through their overlay). */
  bytes?: number;
  /** Seconds since the last write (overlays) or since it was made. */
  ageSeconds?: number;
  /** What this reconcile did with it (absent in a dry run). */
  outcome?: { action: 'removed' | 'kept' | 'failed'; detail?: string };
}

/** A found item and how to clean it; `clean` resolves with a reason when it kept something. */
export interface Found {
  item: StaleItem;
  clean(discardWrites: boolean): Promise<string | undefined>;
}
