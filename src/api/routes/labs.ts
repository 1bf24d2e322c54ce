/**
 * Virtual labs (docs/labs.md): the lab templates the server knows, merged
 * with the labs that are up, and lab up/down as `restorelab lab` does them.
 * Templates are the lab files in RESTORELAB_LABS_DIR, else the project's
 * lab-templates/labs; clients name a lab, never a file, so no request can
 * make the server read an arbitrary path.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { RegisterRoutes } from './register.js';
import { apiError } from '../errors.js';
import { principal } from '../route-table.js';
import { nameParam } from './params.js';
import { projectPath } from '../../paths.js';
import { labDown, labUp, listLabs, loadLab, readLabState, type LabDefinition, type LabState } from '../../lab/lab.js';
import { listSessions } from '../../session/recover.js';
import { ACTIVE_STATES } from '../../session/session.js';

export function labTemplatesDir(): string {
  return process.env.RESTORELAB_LABS_DIR ?? projectPath('lab-templates', 'labs');
}

export interface LabTemplate {
  file: string;
  definition?: LabDefinition;
  error?: string;
}

/** Every lab file of the templates directory; an invalid one is listed with its error instead of hiding the others. */
export function labTemplates(dir = labTemplatesDir()): LabTemplate[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => {
      const file = join(dir, f);
      try {
        return { file, definition: loadLab(file) };
      } catch (err) {
        return { file, error: (err as Error).message };
      }
    });
}

/** The template file defining lab `name` (by its "name" field), or a 404. */
export function labTemplateFile(name: string): string {
  const t = labTemplates().find((x) => x.definition?.name === name);
  if (!t)
    throw apiError('NOT_FOUND', `no lab template named ${name} in ${labTemplatesDir()}`, [
      { path: 'lab', message: 'GET /api/v1/labs lists the lab templates' },
    ]);
  return t.file;
}

export interface LabListing {
  name: string;
  up: boolean;
  template: { file: string; definition: LabDefinition } | null;
  state: LabState | null;
}

export const labRoutes: RegisterRoutes = (t, ctx) => {
  const stateDir = ctx.config.stateDir;

  t.add({
    method: 'get',
    path: '/labs',
    role: 'viewer',
    tag: 'labs',
    summary: 'lab templates and the labs that are up (a lab up without a template is listed too)',
    handler: () => {
      const states = new Map(listLabs(stateDir).map((s) => [s.name, s]));
      const labs: LabListing[] = [];
      const invalid: { file: string; error: string }[] = [];
      for (const tpl of labTemplates()) {
        if (!tpl.definition) {
          invalid.push({ file: tpl.file, error: tpl.error ?? 'invalid' });
          continue;
        }
        const st = states.get(tpl.definition.name);
        states.delete(tpl.definition.name);
        labs.push({
          name: tpl.definition.name,
          up: st?.ready === true,
          template: { file: tpl.file, definition: tpl.definition },
          state: st ?? null,
        });
      }
      for (const st of states.values()) labs.push({ name: st.name, up: st.ready, template: null, state: st });
      labs.sort((a, b) => a.name.localeCompare(b.name));
      return { labs, ...(invalid.length ? { invalidTemplates: invalid } : {}) };
    },
  });

  t.add({
    method: 'post',
    path: '/labs/:name/up',
    role: 'operator',
    tag: 'labs',
    summary: 'brings a lab template up (409 when it is already up)',
    handler: async (req, res) => {
      const name = nameParam(req, 'name');
      const file = labTemplateFile(name);
      // labUp removes a leftover of the same name first: on a lab that is up
      // that would cut every VM running in it off its network.
      if (readLabState(stateDir, name)?.ready)
        throw apiError('CONFLICT', `lab ${name} is already up`, [
          { path: 'params/name', message: 'take it down first, or use it as it is' },
        ]);
      const st = await labUp(loadLab(file), { stateDir });
      ctx.log.info({ by: principal(res).name, lab: name }, 'lab up');
      return st;
    },
  });

  t.add({
    method: 'post',
    path: '/labs/:name/down',
    role: 'operator',
    tag: 'labs',
    summary: 'takes a lab down (409 while recovery sessions run in it); a lab that is not up is no error',
    handler: async (req, res) => {
      const name = nameParam(req, 'name');
      const users = (await listSessions(stateDir)).filter((s) => s.lab === name && ACTIVE_STATES.includes(s.state));
      if (users.length > 0) {
        throw apiError('CONFLICT', `lab ${name} is in use by recovery session(s) ${users.map((s) => s.id).join(', ')}`, [
          { path: 'params/name', message: 'stop those sessions first (POST /api/v1/sessions/:id/stop)' },
        ]);
      }
      const st = await labDown(name, { stateDir, quietIfMissing: true });
      ctx.log.info({ by: principal(res).name, lab: name, removed: st !== undefined }, 'lab down');
      return { name, removed: st !== undefined };
    },
  });
};
