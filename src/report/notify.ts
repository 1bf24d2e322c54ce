/**
 * Notifications after a run: a webhook (POST of the JSON report) and optional
 * mail over SMTP. Neither can fail a run: a notification that does not get
 * through is logged and reported back, and the run's result stands.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { hostname } from 'node:os';
import type { RunReport } from './report.js';

export interface NotifyLog {
  warn(line: string): void;
}
export interface NotifyOutcome {
  channel: 'webhook' | 'smtp';
  ok: boolean;
  detail: string;
}

export async function postWebhook(url: string, body: unknown, o: { timeoutMs?: number; log?: NotifyLog } = {}): Promise<NotifyOutcome> {
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(o.timeoutMs ?? 10_000),
    });
    await res.arrayBuffer().catch(() => undefined);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return { channel: 'webhook', ok: true, detail: `HTTP ${res.status}` };
  } catch (err) {
    const detail = `webhook ${url} failed: ${(err as Error).message}`;
    o.log?.warn(detail);
    return { channel: 'webhook', ok: false, detail };
  }
}

export interface SmtpOptions {
  host: string;
  port?: number;
  secure?: boolean;
  from: string;
  to: string[];
  timeoutMs?: number;
}

/**
 * A minimal SMTP client (RFC 5321): EHLO, MAIL, RCPT, DATA, QUIT, no auth,
 * implicit TLS when `secure`. It is what a relay on the LAN needs to accept a
 * report; anything fancier belongs in that relay.
 */
export function sendMail(o: SmtpOptions, subject: string, text: string, html?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const port = o.port ?? (o.secure ? 465 : 25);
    const sock: Socket = o.secure ? tlsConnect({ host: o.host, port, servername: o.host }) : netConnect({ host: o.host, port });
    sock.setEncoding('utf8');
    const timer = setTimeout(() => fail(new Error(`SMTP ${o.host}:${port} timed out`)), o.timeoutMs ?? 20_000);
    let buf = '';
    let waiter: ((line: { code: number; text: string }) => void) | undefined;
    const fail = (e: Error): void => {
      clearTimeout(timer);
      sock.destroy();
      reject(e);
    };
    sock.on('error', fail);
    sock.on('data', (d: string) => {
      buf += d;
      // A reply ends with a line "NNN text"; "NNN-text" lines continue it.
      for (;;) {
        const m = /^(\d{3}) ([^\r\n]*)\r?\n/m.exec(buf);
        if (!m) break;
        const end = m.index + m[0].length;
        const reply = { code: Number(m[1]), text: buf.slice(0, end).trim() };
        buf = buf.slice(end);
        const w = waiter;
        waiter = undefined;
        w?.(reply);
      }
    });
    const reply = (): Promise<{ code: number; text: string }> =>
      new Promise((r) => {
        waiter = r;
      });
    const step = async (line: string | undefined, want: number): Promise<void> => {
      const p = reply();
      if (line !== undefined) sock.write(line + '\r\n');
      const r = await p;
      if (Math.floor(r.code / 100) !== Math.floor(want / 100))
        throw new Error(`SMTP ${o.host}: "${line ?? 'greeting'}" answered ${r.text}`);
    };
    const boundary = `rl-${Date.now().toString(36)}`;
    const headers = [
      `From: ${o.from}`,
      `To: ${o.to.join(', ')}`,
      `Subject: ${subject.replace(/[\r\n]/g, ' ')}`,
      `Date: ${new Date().toUTCString()}`,
      'MIME-Version: 1.0',
    ];
    const body =
      html === undefined
        ? [...headers, 'Content-Type: text/plain; charset=utf-8', '', text]
        : [
            ...headers,
            `Content-Type: multipart/alternative; boundary="${boundary}"`,
            '',
            `--${boundary}`,
            'Content-Type: text/plain; charset=utf-8',
            '',
            text,
            `--${boundary}`,
            'Content-Type: text/html; charset=utf-8',
            'Content-Transfer-Encoding: base64',
            '',
            ...(Buffer.from(html)
              .toString('base64')
              .match(/.{1,76}/g) ?? []),
            `--${boundary}--`,
          ];
    // Dot-stuffing: a line starting with "." gets another one (RFC 5321 §4.5.2).
    const data = body.join('\r\n').replace(/\r?\n/g, '\r\n').replace(/^\./gm, '..');
    void (async () => {
      try {
        await step(undefined, 220);
        await step(`EHLO ${hostname() || 'restorelab'}`, 250);
        await step(`MAIL FROM:<${o.from}>`, 250);
        for (const to of o.to) await step(`RCPT TO:<${to}>`, 250);
        await step('DATA', 354);
        await step(`${data}\r\n.`, 250);
        await step('QUIT', 221);
        clearTimeout(timer);
        sock.end();
        resolve();
      } catch (e) {
        fail(e as Error);
      }
    })();
  });
}

export interface Notifications {
  webhook?: string;
  smtp?: SmtpOptions;
}

/**
 * One line per VM whose booted point the backup flagged as a ransomware
 * anomaly (src/backup/signals.ts). The webhook carries the same in each VM's
 * `signals`; a point can boot and pass every test with its files encrypted.
 */
export function anomalyLines(rep: RunReport): string[] {
  return rep.vms
    .filter((v) => v.signals?.anomaly)
    .map((v) => `ANOMALY: the backup ${v.point} of ${v.name} looks like ransomware: ${(v.signals?.reasons ?? []).join('; ')}`);
}

/** Sends every configured notification for a finished run; never throws. */
export async function notifyRun(
  n: Notifications | undefined,
  rep: RunReport,
  html: string | undefined,
  log: NotifyLog,
): Promise<NotifyOutcome[]> {
  const out: NotifyOutcome[] = [];
  if (n?.webhook) out.push(await postWebhook(n.webhook, rep, { log }));
  if (n?.smtp) {
    const failed = rep.vms.filter((v) => v.result !== 'success' && v.result !== 'warning').map((v) => v.name);
    const anomalies = anomalyLines(rep);
    const text = [
      `SureBackup job ${rep.job}: ${rep.result}`,
      `run ${rep.run}, ${rep.startedAt} to ${rep.endedAt}`,
      ...rep.vms.map((v) => `${v.name}: ${v.result} (recovery ${v.recoverySeconds.toFixed(1)} s)`),
      ...(failed.length > 0 ? ['', `failed: ${failed.join(', ')}`] : []),
      ...(anomalies.length > 0 ? ['', ...anomalies] : []),
      '',
      `report: ${rep.report}`,
    ].join('\n');
    try {
      await sendMail(
        n.smtp,
        `[restorelab] ${rep.job}: ${rep.result}${anomalies.length > 0 ? ' - ransomware ANOMALY in the backup' : ''}`,
        text,
        html,
      );
      out.push({ channel: 'smtp', ok: true, detail: `sent to ${n.smtp.to.join(', ')}` });
    } catch (err) {
      const detail = `mail via ${n.smtp.host} failed: ${(err as Error).message}`;
      log.warn(detail);
      out.push({ channel: 'smtp', ok: false, detail });
    }
  }
  return out;
}
