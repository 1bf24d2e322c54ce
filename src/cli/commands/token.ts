/** `restorelab token create|list|revoke`: API tokens, kept hashed in the catalog. */
import type { Command } from 'commander';
import { contextFor } from '../context.js';
// Imported eagerly, unlike other implementations: the help text names the roles.
import { ROLES, TokenStore, type Role } from '../../api/tokens.js';
import { badInput } from '../../errors.js';

async function withStore<T>(c: Command, fn: (s: TokenStore) => Promise<T>): Promise<T> {
  const store = await TokenStore.open((await contextFor(c).config()).catalog);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

export function registerToken(program: Command): void {
  const token = program.command('token').description('API tokens for restorelab server (roles: viewer, operator, admin)');
  token
    .command('create <name>')
    .description('create a token; its secret is printed once, only its hash is stored')
    .requiredOption('--role <role>', `one of ${ROLES.join(', ')}`)
    .action(async (name: string, o: { role: string }, c: Command) => {
      if (!(ROLES as readonly string[]).includes(o.role))
        throw badInput('BAD_ROLE', `unknown role "${o.role}"`, `use --role ${ROLES.join('|')}`);
      const made = await withStore(c, (s) => s.create(name, o.role as Role));
      contextFor(c).out.result(
        { ...made.info, token: made.token },
        () =>
          `token ${made.info.name} (${made.info.role}):\n  ${made.token}\nkeep it now: it is not shown again. Use it as: Authorization: Bearer <token>, or restorelab --server URL --token <token>`,
      );
    });
  token
    .command('list')
    .description('list tokens (never their secrets)')
    .action(async (_o, c: Command) => {
      const tokens = await withStore(c, (s) => s.list());
      contextFor(c).out.result({ tokens }, () =>
        tokens.length === 0
          ? 'no tokens; create one with: restorelab token create NAME --role viewer'
          : tokens
              .map((t) => `${t.id}  ${t.name.padEnd(20)} ${t.role.padEnd(8)} created ${t.created}  last used ${t.lastUsed ?? 'never'}`)
              .join('\n'),
      );
    });
  token
    .command('revoke <idOrName>')
    .description('revoke a token at once')
    .action(async (id: string, _o, c: Command) => {
      const gone = await withStore(c, (s) => s.revoke(id));
      contextFor(c).out.result({ revoked: gone }, () => `revoked token ${gone.name} (${gone.id})`);
    });
}
