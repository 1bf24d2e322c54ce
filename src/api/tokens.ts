/**
 * API tokens. A token is `rl_<id>_<secret>`: the id finds the row, the secret
 * is checked against its SHA-256. Only the hash is stored, so a copy of the
 * catalog does not leak working tokens. The secret is 32 random bytes, which
 * is why a fast hash is enough here (no password stretching is needed).
 *
 * Roles are ordered: viewer (read) < operator (recover, verify, restore files)
 * < admin (repositories, jobs, tokens).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { connectCatalog, migrateCatalog } from '../catalog/catalog.js';
import type { Catalog } from '../catalog/sql.js';
import { badInput, notFound } from '../errors.js';

export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

export function roleAllows(have: Role, need: Role): boolean {
  return ROLES.indexOf(have) >= ROLES.indexOf(need);
}

export interface TokenInfo {
  id: string;
  name: string;
  role: Role;
  created: string;
  lastUsed: string | null;
}

const MIGRATIONS = [
  `CREATE TABLE api_tokens (
     id TEXT PRIMARY KEY,
     name TEXT NOT NULL,
     role TEXT NOT NULL,
     hash TEXT NOT NULL,
     created TEXT NOT NULL,
     last_used TEXT
   )`,
];

const TOKEN_RE = /^rl_([a-f0-9]{12})_([A-Za-z0-9_-]{43})$/;

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

interface Row {
  id: string;
  name: string;
  role: string;
  hash: string;
  created: string;
  last_used: string | null;
}
const toInfo = (r: Row): TokenInfo => ({ id: r.id, name: r.name, role: r.role as Role, created: r.created, lastUsed: r.last_used });

export class TokenStore {
  /** The area's migrations, applied on first use (so the server builds its context without waiting). */
  private ready: Promise<void> | undefined;

  constructor(private readonly db: Catalog) {}

  /** The store of the catalog at `target` (a SQLite file or a postgres:// URL); close() closes that catalog. */
  static async open(target: string): Promise<TokenStore> {
    return new TokenStore(await connectCatalog(target));
  }

  close(): Promise<void> {
    return this.db.close();
  }

  private migrated(): Promise<void> {
    // A failed migration is not cached: the next call tries again.
    this.ready ??= migrateCatalog(this.db, 'api-tokens', MIGRATIONS).catch((err: unknown) => {
      this.ready = undefined;
      throw err;
    });
    return this.ready;
  }

  /** Creates a token and returns its secret form, shown once. */
  async create(name: string, role: Role): Promise<{ token: string; info: TokenInfo }> {
    if (!ROLES.includes(role)) throw badInput('BAD_ROLE', `unknown role "${role}"`, `use one of: ${ROLES.join(', ')}`);
    if (!/^[\w.@-]{1,64}$/.test(name))
      throw badInput('BAD_TOKEN_NAME', `token name "${name}" is not allowed`, 'use 1-64 letters, digits, . _ @ or -');
    const id = randomBytes(6).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const created = new Date().toISOString();
    await this.migrated();
    await this.db.run('INSERT INTO api_tokens (id, name, role, hash, created) VALUES (?, ?, ?, ?, ?)', [
      id,
      name,
      role,
      sha256(secret).toString('hex'),
      created,
    ]);
    return { token: `rl_${id}_${secret}`, info: { id, name, role, created, lastUsed: null } };
  }

  /** The token's info when it is valid, else undefined. Constant-time on the secret. */
  async check(token: string): Promise<TokenInfo | undefined> {
    const m = TOKEN_RE.exec(token);
    if (!m) return undefined;
    await this.migrated();
    const row = await this.db.get<Row>('SELECT * FROM api_tokens WHERE id = ?', [m[1] as string]);
    if (!row) return undefined;
    const want = Buffer.from(row.hash, 'hex');
    if (!timingSafeEqual(want, sha256(m[2] as string))) return undefined;
    const now = new Date().toISOString();
    await this.db.run('UPDATE api_tokens SET last_used = ? WHERE id = ?', [now, row.id]);
    return toInfo({ ...row, last_used: now });
  }

  async list(): Promise<TokenInfo[]> {
    await this.migrated();
    return (await this.db.all<Row>('SELECT * FROM api_tokens ORDER BY created')).map(toInfo);
  }

  async revoke(idOrName: string): Promise<TokenInfo> {
    await this.migrated();
    const row = await this.db.get<Row>('SELECT * FROM api_tokens WHERE id = ? OR name = ? ORDER BY created LIMIT 1', [idOrName, idOrName]);
    if (!row) throw notFound('TOKEN_NOT_FOUND', `no API token "${idOrName}"`, 'list them with: restorelab token list');
    await this.db.run('DELETE FROM api_tokens WHERE id = ?', [row.id]);
    return toInfo(row);
  }
}
