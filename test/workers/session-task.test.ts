// What a worker accepts on its own queue (stop, screenshot, migrate of one
// of its sessions): plain session ids, an absolute migration target, a known
// format; anything an old or hostile server could steer is TASK_INVALID.
// The real round trip through PostgreSQL and a worker is test/workers/recover.test.ts.
import t from 'tap';
import { checkSessionTask } from '../../src/workers/task.js';
import { RestorelabError } from '../../src/errors.js';

const invalid = (data: unknown): string => {
  try {
    checkSessionTask(data);
    return 'accepted';
  } catch (err) {
    return err instanceof RestorelabError ? err.code : String(err);
  }
};

t.test('accepted as sent', async (t) => {
  t.same(checkSessionTask({ kind: 'stop', session: 'a1b2c3d4' }), { kind: 'stop', session: 'a1b2c3d4' });
  t.same(
    checkSessionTask({ kind: 'screenshot', session: 'a1b2c3d4', extra: 1 }),
    { kind: 'screenshot', session: 'a1b2c3d4' },
    'unknown fields dropped',
  );
  t.same(checkSessionTask({ kind: 'migrate', session: 'a1b2c3d4', dir: '/srv/vms', format: 'qcow2' }), {
    kind: 'migrate',
    session: 'a1b2c3d4',
    dir: '/srv/vms',
    format: 'qcow2',
  });
});

t.test('refused: what a worker must never act on', async (t) => {
  const cases: [string, unknown][] = [
    ['no task', null],
    ['an unknown kind', { kind: 'shell', session: 'a1b2c3d4' }],
    ['a recover task on the own queue', { kind: 'recover', session: 'a1b2c3d4' }],
    ['a session id that is a path', { kind: 'stop', session: '../../etc' }],
    ['a session id with a slash', { kind: 'screenshot', session: 'a/b' }],
    ['no session', { kind: 'stop' }],
    ['a relative migration target', { kind: 'migrate', session: 'a1b2c3d4', dir: 'restores/x', format: 'raw' }],
    ['a target with NUL', { kind: 'migrate', session: 'a1b2c3d4', dir: '/srv/\0x', format: 'raw' }],
    ['a target longer than PATH_MAX', { kind: 'migrate', session: 'a1b2c3d4', dir: '/' + 'x'.repeat(5000), format: 'raw' }],
    ['no target', { kind: 'migrate', session: 'a1b2c3d4', format: 'raw' }],
    ['an unknown format', { kind: 'migrate', session: 'a1b2c3d4', dir: '/srv', format: 'vmdk' }],
  ];
  for (const [why, data] of cases) t.equal(invalid(data), 'TASK_INVALID', why);
});
