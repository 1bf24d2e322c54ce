// Webhook and SMTP against listeners this test runs on 127.0.0.1.
import t from 'tap';
import { createServer as createHttp } from 'node:http';
import { createServer as createTcp, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { anomalyLines, notifyRun, postWebhook, sendMail } from '../../src/report/notify.js';
import { decideAnomaly } from '../../src/backup/signals.js';
import type { RunReport } from '../../src/report/report.js';

const rep: RunReport = {
  run: 'r1',
  job: 'nightly',
  result: 'failed',
  startedAt: 'a',
  endedAt: 'b',
  labKept: false,
  report: '/tmp/r.html',
  vms: [
    {
      name: 'web',
      point: 'p',
      result: 'failed',
      group: false,
      tests: [],
      recoverySeconds: 12,
      bootToHeartbeatSeconds: null,
      toFirstAnswerSeconds: null,
      screenshot: null,
      console: null,
    },
  ],
};

const listen = async (s: {
  listen(port: number, host: string, cb: () => void): unknown;
  address(): AddressInfo | string | null;
}): Promise<number> => {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return (s.address() as AddressInfo).port;
};

t.test('webhook: POSTs the JSON; failures and timeouts are logged, not thrown', async (t) => {
  const got: { method?: string; type?: string; body: string }[] = [];
  const srv = createHttp((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      if (req.url === '/hang') return; // never answers
      got.push({ method: req.method, type: req.headers['content-type'], body });
      res.statusCode = req.url === '/500' ? 500 : 204;
      res.end();
    });
  });
  const port = await listen(srv);
  t.teardown(() => {
    srv.closeAllConnections();
    srv.close();
  });
  const warnings: string[] = [];
  const log = { warn: (l: string) => warnings.push(l) };
  const ok = await postWebhook(`http://127.0.0.1:${port}/hook`, rep, { log });
  t.ok(ok.ok, ok.detail);
  t.same(JSON.parse(got[0]!.body), rep);
  t.equal(got[0]!.method, 'POST');
  t.equal(got[0]!.type, 'application/json');
  t.notOk((await postWebhook(`http://127.0.0.1:${port}/500`, rep, { log })).ok);
  const t0 = Date.now();
  const hung = await postWebhook(`http://127.0.0.1:${port}/hang`, rep, { log, timeoutMs: 500 });
  t.notOk(hung.ok);
  t.ok(Date.now() - t0 < 3000, 'timeout honoured');
  const closed = createTcp();
  const dead = await listen(closed);
  await new Promise((r) => closed.close(r));
  t.notOk((await postWebhook(`http://127.0.0.1:${dead}/`, rep, { log })).ok);
  t.equal(warnings.length, 3);
  t.match(warnings[0]!, /HTTP 500/);
});

/** A tiny SMTP listener: records the envelope and the data; can reject a recipient. */
function smtpServer(rejectRcpt?: string) {
  const mails: { from: string; to: string[]; data: string }[] = [];
  const srv = createTcp((s: Socket) => {
    let buf = '';
    let inData = false;
    let cur = { from: '', to: [] as string[], data: '' };
    s.write('220 test ESMTP\r\n');
    s.on('data', (d) => {
      buf += d.toString();
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          cur.data = buf.slice(0, end);
          buf = buf.slice(end + 5);
          inData = false;
          mails.push(cur);
          cur = { from: '', to: [], data: '' };
          s.write('250 queued\r\n');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        if (/^EHLO/i.test(line)) s.write('250-test\r\n250-PIPELINING\r\n250 8BITMIME\r\n');
        else if (/^MAIL FROM:<(.*)>/i.test(line)) {
          cur.from = /<(.*)>/.exec(line)![1]!;
          s.write('250 ok\r\n');
        } else if (/^RCPT TO:/i.test(line)) {
          const to = /<(.*)>/.exec(line)![1]!;
          if (to === rejectRcpt) s.write('550 no such user\r\n');
          else {
            cur.to.push(to);
            s.write('250 ok\r\n');
          }
        } else if (/^DATA/i.test(line)) {
          inData = true;
          s.write('354 go ahead\r\n');
        } else if (/^QUIT/i.test(line)) {
          s.end('221 bye\r\n');
        } else s.write('500 what\r\n');
      }
    });
  });
  return { srv, mails };
}

t.test('SMTP: a mail reaches a local listener, dot-stuffed, with the HTML report', async (t) => {
  const { srv, mails } = smtpServer();
  const port = await listen(srv);
  t.teardown(() => srv.close());
  await sendMail(
    { host: '127.0.0.1', port, from: 'lab@example.test', to: ['ops@example.test', 'dba@example.test'] },
    'subj',
    'line one\n.leading dot\nend',
    '<p>hi</p>',
  );
  t.equal(mails.length, 1);
  t.equal(mails[0]!.from, 'lab@example.test');
  t.same(mails[0]!.to, ['ops@example.test', 'dba@example.test']);
  t.match(mails[0]!.data, /Subject: subj/);
  t.match(mails[0]!.data, /\r\n\.\.leading dot\r\n/, 'dot-stuffed');
  t.match(mails[0]!.data, /multipart\/alternative/);
  t.match(mails[0]!.data, Buffer.from('<p>hi</p>').toString('base64'));
});

t.test('notifyRun: a refused recipient is logged, the webhook still goes', async (t) => {
  const { srv } = smtpServer('nobody@example.test');
  const port = await listen(srv);
  let posted = 0;
  const http = createHttp((req, res) => {
    posted++;
    req.resume();
    res.end();
  });
  const hport = await listen(http);
  t.teardown(() => {
    srv.close();
    http.close();
  });
  const warnings: string[] = [];
  const out = await notifyRun(
    { webhook: `http://127.0.0.1:${hport}/`, smtp: { host: '127.0.0.1', port, from: 'a@x.test', to: ['nobody@example.test'] } },
    rep,
    undefined,
    { warn: (l) => warnings.push(l) },
  );
  t.same(
    out.map((o) => [o.channel, o.ok]),
    [
      ['webhook', true],
      ['smtp', false],
    ],
  );
  t.equal(posted, 1);
  t.match(warnings[0]!, /550 no such user/);
});

t.test('notifyRun: a booted point the backup flagged as a ransomware anomaly is named in the mail and the webhook body', async (t) => {
  const { srv, mails } = smtpServer();
  const port = await listen(srv);
  const bodies: string[] = [];
  const http = createHttp((req, res) => {
    let b = '';
    req.on('data', (d: Buffer) => (b += d.toString()));
    req.on('end', () => {
      bodies.push(b);
      res.end();
    });
  });
  const hport = await listen(http);
  t.teardown(() => {
    srv.close();
    http.close();
  });
  const signals = decideAnomaly(
    {
      changedBytes: 40 << 20,
      changeRate: 0.6,
      full: false,
      comparedWith: 'p0',
      resized: false,
      newBytes: 40 << 20,
      newStoredBytes: 40 << 20,
      incompressibleBytes: 38 << 20,
      incompressibleRatio: 0.95,
    },
    [
      {
        changedBytes: 1 << 20,
        changeRate: 0.01,
        full: true,
        comparedWith: null,
        resized: false,
        newBytes: 30 << 20,
        newStoredBytes: 10 << 20,
        incompressibleBytes: 3 << 20,
        incompressibleRatio: 0.1,
      },
    ],
  );
  t.ok(signals.anomaly, 'the fixture is an anomaly');
  const flagged: RunReport = { ...rep, result: 'success', vms: [{ ...rep.vms[0]!, result: 'success', signals }] };
  t.match(anomalyLines(flagged)[0], /^ANOMALY: the backup p of web looks like ransomware: 95\.0 % of the new data is incompressible/);
  t.same(anomalyLines(rep), [], 'a run without signals has no anomaly line');
  await notifyRun(
    { webhook: `http://127.0.0.1:${hport}/`, smtp: { host: '127.0.0.1', port, from: 'a@x.test', to: ['ops@example.test'] } },
    flagged,
    undefined,
    { warn: () => undefined },
  );
  t.match(
    mails[0]!.data,
    /Subject: \[restorelab\] nightly: success - ransomware ANOMALY in the backup/,
    'the subject says so even when the run passed',
  );
  t.match(mails[0]!.data, /ANOMALY: the backup p of web looks like ransomware/);
  const posted = JSON.parse(bodies[0]!) as RunReport;
  t.equal(posted.vms[0]?.signals?.anomaly, true, 'the webhook carries the signals');
});
