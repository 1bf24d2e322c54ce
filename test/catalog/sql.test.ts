/** Unit tests of the seam's pure parts: placeholder rewriting for PostgreSQL, URL redaction, upserts per dialect. */
import t from 'tap';
import { isPostgresTarget, redactUrl, toPostgresPlaceholders, upsertSql } from '../../src/catalog/sql.js';

t.test('? becomes $1..$n outside literals, quoted names, dollar bodies and comments', async (t) => {
  t.equal(toPostgresPlaceholders('SELECT * FROM t WHERE a = ? AND b = ?'), 'SELECT * FROM t WHERE a = $1 AND b = $2');
  t.equal(toPostgresPlaceholders("SELECT 'a?b', ? FROM t"), "SELECT 'a?b', $1 FROM t");
  t.equal(toPostgresPlaceholders("SELECT 'it''s ?', ?"), "SELECT 'it''s ?', $1", "'' inside a literal does not end it");
  t.equal(toPostgresPlaceholders(`SELECT E'\\'?', ?`), `SELECT E'\\'?', $1`, "E'' literals take backslash escapes");
  t.equal(toPostgresPlaceholders('SELECT "we?rd", ?'), 'SELECT "we?rd", $1');
  t.equal(toPostgresPlaceholders('SELECT $$ ? $$, $tag$ ? $tag$, ?'), 'SELECT $$ ? $$, $tag$ ? $tag$, $1');
  t.equal(toPostgresPlaceholders('SELECT ? -- why?\n, ? /* or ? */, ?'), 'SELECT $1 -- why?\n, $2 /* or ? */, $3');
  t.equal(toPostgresPlaceholders("SELECT 'unterminated ?"), "SELECT 'unterminated ?", 'an open literal swallows the rest');
  t.equal(toPostgresPlaceholders('SELECT $1'), 'SELECT $1', 'a positional parameter stays');
});

t.test('a URL loses its password, and only its password', async (t) => {
  t.equal(redactUrl('postgres://rl:s3cret@db.example:5432/cat'), 'postgres://rl:***@db.example:5432/cat');
  t.equal(redactUrl('postgres://rl@db/cat'), 'postgres://rl@db/cat');
  t.equal(redactUrl('/var/lib/restorelab/catalog.sqlite'), '/var/lib/restorelab/catalog.sqlite');
  t.equal(
    redactUrl('failed for postgres://a:b@h/d and postgres://c:d@e/f'),
    'failed for postgres://a:***@h/d and postgres://c:***@e/f',
    'inside text too',
  );
  t.ok(isPostgresTarget('postgres://h/d'));
  t.ok(isPostgresTarget('POSTGRESQL://h/d'));
  t.notOk(isPostgresTarget('/tmp/postgres://x'));
  t.notOk(isPostgresTarget('catalog.sqlite'));
});

t.test('upserts: INSERT OR REPLACE on SQLite, ON CONFLICT on PostgreSQL', async (t) => {
  t.equal(upsertSql('sqlite', 'r', ['repo', 'indexed'], ['repo']), 'INSERT OR REPLACE INTO r (repo, indexed) VALUES (?, ?)');
  t.equal(
    upsertSql('postgres', 'r', ['repo', 'indexed'], ['repo']),
    'INSERT INTO r (repo, indexed) VALUES (?, ?) ON CONFLICT (repo) DO UPDATE SET indexed = EXCLUDED.indexed',
  );
  t.equal(upsertSql('postgres', 'k', ['a'], ['a']), 'INSERT INTO k (a) VALUES (?) ON CONFLICT (a) DO NOTHING');
});
