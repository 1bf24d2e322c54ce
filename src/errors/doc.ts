/**
 * docs/errors.md, rendered from the registry. `npm run docs:errors` writes it;
 * test/suite/errors-registry.test.ts fails when the file and this text differ.
 */
import { ERROR_CLASSES, ERROR_MERGES, ERRORS, httpStatusOf, type ErrorClass, type ErrorCode } from './registry.js';

export function renderErrorsDoc(): string {
  const out: string[] = [
    '# Error codes',
    '',
    '<!-- Generated from src/errors/registry.ts by `npm run docs:errors`; do not edit by hand. -->',
    '',
    'Every error restorelab reports carries one of these codes: the CLI prints it (with `--json`:',
    '`{"ok": false, "error": {"code", "message", "hint"}}`) and exits with the code\'s exit code; the API',
    'answers `{"error": {"code", "message", "hint"?, "details"?}}` with the code\'s HTTP status. The class',
    'fixes both; a few codes have a more exact HTTP status of their own. The message says the particulars,',
    'the hint what to do.',
    '',
    '| class | exit code | HTTP status | meaning |',
    '|---|---|---|---|',
    '| success | 0 | 200 | |',
  ];
  const classes = Object.keys(ERROR_CLASSES) as ErrorClass[];
  for (const c of classes) {
    const k = ERROR_CLASSES[c];
    out.push(`| ${k.title.toLowerCase()} | ${k.exitCode} | ${k.status} | ${k.meaning} |`);
  }
  const codes = (Object.keys(ERRORS) as ErrorCode[]).sort();
  for (const c of classes) {
    const mine = codes.filter((code) => ERRORS[code].class === c);
    if (mine.length === 0) continue;
    const k = ERROR_CLASSES[c];
    out.push('', `## ${k.title} (exit ${k.exitCode})`, '', '| code | exit code | HTTP status | explanation |', '|---|---|---|---|');
    for (const code of mine) {
      const former = Object.keys(ERROR_MERGES)
        .filter((old) => ERROR_MERGES[old] === code)
        .sort();
      const note = former.length > 0 ? ` (formerly ${former.map((f) => `\`${f}\``).join(', ')})` : '';
      out.push(`| \`${code}\` | ${k.exitCode} | ${httpStatusOf(code)} | ${ERRORS[code].explain.replaceAll('|', '\\|')}${note} |`);
    }
  }
  out.push(
    '',
    '## Merged codes',
    '',
    'These codes named the same thing as another and were merged into it; scripts matching the old',
    'name should match the new one.',
    '',
    '| former code | now |',
    '|---|---|',
  );
  for (const old of Object.keys(ERROR_MERGES).sort()) out.push(`| \`${old}\` | \`${ERROR_MERGES[old]}\` |`);
  return out.join('\n') + '\n';
}
