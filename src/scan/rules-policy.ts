/**
 * What a rule set handed to us over the API may do. yarac runs as the
 * server's user: `include "/etc/shadow"` would compile a host file into the
 * rules (and its text into yarac's error message), and a module such as
 * `console` writes to the stdout we parse for matches. So API-supplied rules
 * may not `include` at all and may `import` only the modules below, which
 * only look at the scanned file. Rule files given on the command line are
 * the admin's own and keep both.
 *
 * The check tokenises the source the way YARA's lexer does, so a keyword is
 * not hidden in (or invented from) a comment, a text string or a regular
 * expression: `//` and block comments, `"..."` with backslash escapes, and
 * `/.../` regular expressions (YARA divides with `\`, so a lone `/` always
 * starts one). `include` is a reserved word, so any bare `include` token is
 * the directive; `import` must be followed by the literal name of an allowed
 * module, written without escapes.
 */
import { badInput, type RestorelabError } from '../errors.js';

/** Modules an API rule set may import: each only parses the scanned file's bytes. */
export const API_RULE_MODULES: readonly string[] = ['pe', 'elf', 'math', 'hash', 'dotnet', 'time'];

type Token = { kind: 'word' | 'string' | 'other'; text: string; line: number };

function refuse(why: string, line: number): RestorelabError {
  return badInput(
    'YARA_RULES_INVALID',
    `the YARA rules are refused (line ${line}): ${why}`,
    `rules sent through the API may not use include and may import only ${API_RULE_MODULES.map((m) => `"${m}"`).join(', ')}; put the rules in one text, or scan with \`restorelab scan --yara FILE\` on the server`,
  );
}

function* tokens(src: string): Generator<Token> {
  let i = 0;
  let line = 1;
  const n = src.length;
  while (i < n) {
    const c = src[i]!;
    if (c === '\n') {
      line++;
      i++;
    } else if (/\s/.test(c)) {
      i++;
    } else if (c === '/' && src[i + 1] === '/') {
      while (i < n && src[i] !== '\n') i++;
    } else if (c === '/' && src[i + 1] === '*') {
      const end = src.indexOf('*/', i + 2);
      if (end < 0) throw refuse('a comment is not closed', line);
      for (let k = i; k < end; k++) if (src[k] === '\n') line++;
      i = end + 2;
    } else if (c === '"' || c === '/') {
      // A text string or a regular expression: up to the same unescaped delimiter, on one line (YARA allows no newline in either).
      const start = i++;
      while (i < n && src[i] !== c) {
        if (src[i] === '\n') throw refuse(`a ${c === '"' ? 'string' : 'regular expression'} is not closed on its line`, line);
        i += src[i] === '\\' ? 2 : 1;
      }
      if (i >= n) throw refuse(`a ${c === '"' ? 'string' : 'regular expression'} is not closed`, line);
      i++;
      yield { kind: c === '"' ? 'string' : 'other', text: src.slice(start + 1, i - 1), line };
    } else if (/[A-Za-z_$#@!]/.test(c)) {
      const start = i++;
      while (i < n && /[A-Za-z0-9_*]/.test(src[i]!)) i++;
      yield { kind: 'word', text: src.slice(start, i), line };
    } else {
      i++;
      yield { kind: 'other', text: c, line };
    }
  }
}

/** Throws YARA_RULES_INVALID (a 400) when API-supplied rule source uses include or imports a module not in API_RULE_MODULES. */
export function checkApiRules(source: string): void {
  let importAt: number | undefined;
  for (const t of tokens(source)) {
    if (importAt !== undefined) {
      if (t.kind !== 'string' || !API_RULE_MODULES.includes(t.text))
        throw refuse(`import ${t.kind === 'string' ? `"${t.text}"` : 'without a module name'} is not allowed`, importAt);
      importAt = undefined;
      continue;
    }
    if (t.kind !== 'word') continue;
    if (t.text === 'include') throw refuse('include is not allowed (it would read a file of the server)', t.line);
    if (t.text === 'import') importAt = t.line;
  }
  if (importAt !== undefined) throw refuse('import without a module name', importAt);
}
