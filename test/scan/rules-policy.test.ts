// The API's YARA rule policy (src/scan/rules-policy.ts), unit level: include
// is refused wherever the lexer would see it, imports only of the allowed
// modules, and the words inside comments, strings and regular expressions
// are not mistaken for directives. The API test (test/scan/api.test.ts)
// sends such rules to POST /points/:id/scan and gets the 400.
import t from 'tap';
import { RestorelabError } from '../../src/errors.js';
import { API_RULE_MODULES, checkApiRules } from '../../src/scan/rules-policy.js';

function refusal(src: string): string | undefined {
  try {
    checkApiRules(src);
    return undefined;
  } catch (err) {
    if (!(err instanceof RestorelabError)) throw err;
    return `${err.code}: ${err.message}`;
  }
}

t.test('include is refused, however it is spelled out', async (t) => {
  for (const src of [
    'include "/etc/shadow"\nrule A { condition: true }',
    'rule A { condition: true }\ninclude "/etc/passwd"',
    'include/* hidden */"/etc/passwd"',
    'include\n\n"/etc/passwd"',
    'rule A { strings: $a = /x\\// condition: $a } include "/etc/passwd"',
    'rule A { strings: $a = "\\"" condition: $a } include "/etc/passwd"',
  ])
    t.match(refusal(src), /^YARA_RULES_INVALID: .*include is not allowed/, src);
});

t.test('imports: the safe modules pass, others and odd spellings are refused', async (t) => {
  for (const m of API_RULE_MODULES) t.equal(refusal(`import "${m}"\nrule A { condition: true }`), undefined, m);
  t.same([...API_RULE_MODULES].sort(), ['dotnet', 'elf', 'hash', 'math', 'pe', 'time']);
  t.match(refusal('import "console"\nrule A { condition: true }'), /import "console" is not allowed/);
  t.match(refusal('import "cuckoo"'), /import "cuckoo" is not allowed/);
  t.match(refusal('import "p\\x65"'), /is not allowed/, 'an escaped name is not decoded into an allowed one');
  t.match(refusal('import'), /import without a module name/);
  t.match(refusal('import pe'), /import without a module name/);
});

t.test('the words in comments, strings and regular expressions are not directives', async (t) => {
  const src = [
    '// include "/etc/passwd"',
    '/* include "/etc/passwd"',
    '   import "console" */',
    'rule Include_words {',
    '  meta: note = "include \\"/etc/passwd\\" and import \\"console\\""',
    '  strings:',
    '    $include = "include"',
    '    $re = /include "[a-z\\/]+"/',
    '    $hex = { 69 6E 63 // include',
    '      6C }',
    '  condition: any of them and #include >= 0',
    '}',
  ].join('\n');
  t.equal(refusal(src), undefined);
});

t.test('unclosed comments, strings and expressions are refused (the lexer cannot tell what follows)', async (t) => {
  t.match(refusal('/* include "/etc/passwd"'), /comment is not closed/);
  t.match(refusal('rule A { strings: $a = "x\ninclude "/etc/passwd" condition: $a }'), /string is not closed on its line/);
  t.match(refusal('rule A { strings: $a = /x'), /regular expression is not closed/);
});
