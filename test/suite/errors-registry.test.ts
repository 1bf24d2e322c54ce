/**
 * The error registry (src/errors/registry.ts) is complete and current: every
 * code thrown in src/ is registered (the type check covers literal codes; this
 * also catches casts and codes built at run time), every registered code is
 * used somewhere in src/, codes are UPPER_SNAKE, and docs/errors.md is the
 * text the registry renders.
 */
import t from 'tap';
import ts from 'typescript';
import { constants } from 'node:os';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { projectPath } from '../../src/paths.js';
import { ERROR_CLASSES, ERROR_MERGES, ERRORS, ExitCode, RestorelabError, badInput, httpStatusOf, isErrorCode } from '../../src/errors.js';
import { renderErrorsDoc } from '../../src/errors/doc.js';

const REGISTRY = join('src', 'errors', 'registry.ts');
/** The calls whose first argument is an error code. */
const THROWERS = new Set(['RestorelabError', 'badInput', 'notFound', 'apiError']);
const ERRNO_NAMES = new Set(Object.keys(constants.errno));

function sources(dir: string): string[] {
  return readdirSync(projectPath(dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => relative(projectPath(), join(e.parentPath, e.name)))
    .sort();
}

interface CodeUse {
  where: string;
  code?: string;
  problem?: string;
}

/**
 * The code an error-code expression can take: string literals, either branch
 * of a conditional; anything else typed by a parameter is left to tsc, but a
 * template string or a cast is a code tsc cannot check.
 */
function codesOf(e: ts.Expression, where: string, out: CodeUse[]): void {
  if (ts.isStringLiteral(e) || ts.isNoSubstitutionTemplateLiteral(e)) out.push({ where, code: e.text });
  else if (ts.isParenthesizedExpression(e)) codesOf(e.expression, where, out);
  else if (ts.isConditionalExpression(e)) {
    codesOf(e.whenTrue, where, out);
    codesOf(e.whenFalse, where, out);
  } else if (ts.isTemplateExpression(e) || ts.isBinaryExpression(e))
    out.push({ where, problem: `a code built at run time: ${e.getText()}` });
  else if (ts.isAsExpression(e) || ts.isTypeAssertionExpression(e))
    out.push({ where, problem: `a cast code tsc cannot check: ${e.getText()}` });
}

/** Every code given to an error constructor, helper, subclass `super(...)` or `RestorelabError.revive({ code })`, and every `code: '...'` of an error object. */
function codeUses(file: string): CodeUse[] {
  const sf = ts.createSourceFile(file, readFileSync(projectPath(file), 'utf8'), ts.ScriptTarget.Latest, true);
  const out: CodeUse[] = [];
  const at = (n: ts.Node): string => `${file}:${sf.getLineAndCharacterOfPosition(n.getStart(sf)).line + 1}`;
  const extendsError = (n: ts.Node): boolean => {
    for (let p: ts.Node | undefined = n.parent; p; p = p.parent) {
      if (ts.isClassDeclaration(p))
        return (p.heritageClauses ?? []).some((h) => h.types.some((x) => x.expression.getText(sf) === 'RestorelabError'));
    }
    return false;
  };
  const visit = (n: ts.Node): void => {
    if ((ts.isNewExpression(n) || ts.isCallExpression(n)) && n.arguments?.[0]) {
      const callee = n.expression;
      const name = ts.isIdentifier(callee) ? callee.text : '';
      if (THROWERS.has(name) || (callee.kind === ts.SyntaxKind.SuperKeyword && extendsError(n))) codesOf(n.arguments[0], at(n), out);
    }
    if (
      ts.isPropertyAssignment(n) &&
      n.name.getText(sf) === 'code' &&
      (ts.isStringLiteral(n.initializer) || ts.isConditionalExpression(n.initializer))
    ) {
      const found: CodeUse[] = [];
      codesOf(n.initializer, at(n), found);
      // errno names (ENOSPC...) belong to node's and the datastores' own errors, not to the registry.
      out.push(...found.filter((u) => u.code === undefined || !ERRNO_NAMES.has(u.code)));
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

const files = sources('src').filter((f) => f !== REGISTRY);
const uses = files.flatMap(codeUses);

t.test('the scan sees the throw sites (a broken scan cannot pass for a clean tree)', async (t) => {
  t.ok(uses.length > 200, `${uses.length} code uses found in src/`);
  t.ok(
    uses.some((u) => u.code === 'NBD_PROTOCOL'),
    "a subclass's super(code) is seen",
  );
  t.ok(uses.some((u) => u.code === 'REPO_FULL') && uses.some((u) => u.code === 'CHUNK_IO'), 'both branches of a conditional code are seen');
  const probe: CodeUse[] = [];
  const sf = ts.createSourceFile('probe.ts', 'x(`BAD_${n}`, y as C)', ts.ScriptTarget.Latest, true);
  const call = (sf.statements[0] as ts.ExpressionStatement).expression as ts.CallExpression;
  for (const a of call.arguments) codesOf(a, 'probe', probe);
  t.same(
    probe.map((p) => p.problem?.split(':')[0]),
    ['a code built at run time', 'a cast code tsc cannot check'],
  );
});

t.test('every code used in src/ is registered, and none is built at run time', async (t) => {
  const problems = uses.filter((u) => u.problem !== undefined).map((u) => `${u.where}: ${u.problem}`);
  t.same(problems, [], 'no dynamic or cast codes');
  const unknown = uses.filter((u) => u.code !== undefined && !isErrorCode(u.code)).map((u) => `${u.where}: ${u.code}`);
  t.same(unknown, [], 'no unregistered codes');
});

t.test('every registered code is used somewhere in src/ (no dead codes), and no merged-away code is', async (t) => {
  const text = files.map((f) => readFileSync(projectPath(f), 'utf8')).join('\n');
  const said = (code: string): boolean => new RegExp(`['"\`]${code}['"\`]`).test(text);
  t.same(
    Object.keys(ERRORS).filter((c) => !said(c)),
    [],
    'dead codes',
  );
  t.same(Object.keys(ERROR_MERGES).filter(said), [], 'merged-away codes still used');
  t.same(Object.keys(ERROR_MERGES).filter(isErrorCode), [], 'a merged-away code is not registered again');
});

t.test('codes are UPPER_SNAKE and every entry explains itself in one line', async (t) => {
  for (const [code, spec] of Object.entries(ERRORS)) {
    t.match(code, /^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$/, `${code} is UPPER_SNAKE`);
    t.ok(spec.explain.length > 0 && !spec.explain.includes('\n'), `${code} has a one-line explanation`);
  }
});

t.test('the class gives the exit code and the HTTP status; overrides only where HTTP has a more exact word', async (t) => {
  t.equal(new RestorelabError('REPO_BUSY', 'x').exitCode, ExitCode.busy);
  t.equal(new RestorelabError('INDEX_CORRUPT', 'x').exitCode, ExitCode.verifyFailed);
  t.equal(badInput('BAD_PORT', 'x').exitCode, ExitCode.badInput);
  t.equal(httpStatusOf('UNAUTHENTICATED'), 401);
  t.equal(httpStatusOf('SCRIPT_NOT_ALLOWED'), 403);
  t.equal(httpStatusOf('POINT_NOT_FOUND'), 404);
  const overridden = Object.entries(ERRORS)
    .filter(([, s]) => 'status' in s)
    .map(([c]) => c)
    .sort();
  t.same(overridden, [
    'BODY_TOO_LARGE',
    'FORBIDDEN',
    'OPERATION_CANCELLED',
    'PATH_NOT_ALLOWED',
    'RATE_LIMITED',
    'SCRIPT_NOT_ALLOWED',
    'UNAUTHENTICATED',
    'UNSUPPORTED_MEDIA_TYPE',
  ]);
  for (const c of overridden)
    t.not(
      httpStatusOf(c as keyof typeof ERRORS),
      ERROR_CLASSES[ERRORS[c as keyof typeof ERRORS].class].status,
      `${c} differs from its class`,
    );
});

t.test('an error from another process keeps its code and exit code', async (t) => {
  const known = RestorelabError.revive({ code: 'REPO_BUSY', message: 'm', hint: 'h' });
  t.match(known, { code: 'REPO_BUSY', message: 'm', hint: 'h', exitCode: ExitCode.failure }, 'no exit code said: failure, as before');
  t.match(RestorelabError.revive({ code: 'HTTP_502', message: 'm', exitCode: 2 }), { code: 'HTTP_502', exitCode: ExitCode.badInput });
  t.equal(
    RestorelabError.revive({ code: 'PUBLISH_FAILED', message: 'm', exitCode: 134 }).exitCode,
    ExitCode.failure,
    'a crash status is a failure',
  );
});

t.test('docs/errors.md is the text the registry renders (npm run docs:errors)', async (t) => {
  const doc = readFileSync(projectPath('docs', 'errors.md'), 'utf8');
  t.equal(doc, renderErrorsDoc(), 'docs/errors.md is current: run npm run docs:errors');
  for (const code of Object.keys(ERRORS)) t.match(doc, `| \`${code}\` |`, `${code} is documented`);
  for (const old of Object.keys(ERROR_MERGES)) t.match(doc, `formerly \`${old}\``, `${old} is named as formerly`);
  t.match(
    readFileSync(projectPath('docs', 'cli.md'), 'utf8'),
    /## Exit codes\n\n[^#]*\(errors\.md\)/,
    "docs/cli.md's exit codes point at docs/errors.md",
  );
});
