// A Node.js peer of Gatehouse's TM20 contract, the stack the benchmark issue names ("Node.js http + ws +
// better-sqlite3"), so gatehouse-bench can measure both in the same run on the same box. It implements only
// what the bench drives: terminals register on /pub/chat, REST opendoor goes to the terminal and back, sendlog
// batches are committed (WAL, synchronous=FULL, like Gatehouse) before the ack, GET /api/connected lists the
// sockets. Like the reference peer, it keeps no per-command record.
//
//   npm install && PORT=17900 DB=/tmp/peer.db TOKEN=t node server.js
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const Database = require('better-sqlite3');

const port = Number(process.env.PORT || 17900);
const token = process.env.TOKEN || 'peer';
const db = new Database(process.env.DB || 'peer.db');
db.pragma('journal_mode = WAL');
db.pragma('synchronous = FULL');
db.exec(`create table if not exists terminals (sn text primary key, last_seen text);
create table if not exists attendance_logs (terminal text, enrollid integer, time text, mode integer,
  inout integer, event integer, raw text, unique (terminal, enrollid, time, mode, inout, event));`);
const upsertTerminal = db.prepare(
  'insert into terminals (sn, last_seen) values (?, ?) on conflict (sn) do update set last_seen = excluded.last_seen');
const insertLog = db.prepare('insert or ignore into attendance_logs values (?, ?, ?, ?, ?, ?, ?)');
const insertLogs = db.transaction((sn, records) => {
  for (const r of records) {
    insertLog.run(sn, r.enrollid | 0, String(r.time), r.mode | 0, r.inout | 0, r.event | 0, JSON.stringify(r));
  }
});

const sessions = new Map(); // sn -> { ws, connectedAt, waiting: [{resolve, timer}] }

function cloudtime() {
  return new Date().toISOString().replace('T', ' ').slice(0, 19);
}

const server = http.createServer((req, res) => {
  const send = (status, body) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };
  if (req.url === '/healthz') return send(200, { status: 'ok' });
  if (req.headers.authorization !== `Bearer ${token}`) return send(401, { error: 'unauthorized' });
  if (req.method === 'GET' && req.url.startsWith('/api/connected')) {
    const items = [];
    for (const [sn, s] of sessions) items.push({ sn, protocol: 'tm20', connected_at: s.connectedAt });
    return send(200, { items });
  }
  const m = /^\/api\/terminals\/([^/]+)\/command\/?$/.exec(req.url);
  if (req.method === 'POST' && m) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try { body = JSON.parse(Buffer.concat(chunks)); } catch { return send(400, { error: 'bad_json' }); }
      if (!body || typeof body.command !== 'string') return send(400, { error: 'invalid_params' });
      const session = sessions.get(m[1]);
      if (!session) return send(409, { error: 'not_connected' });
      const started = Date.now();
      const timer = setTimeout(() => {
        const i = session.waiting.findIndex((w) => w.timer === timer);
        if (i >= 0) session.waiting.splice(i, 1);
        send(504, { error: 'device_timeout' });
      }, 10000);
      session.waiting.push({
        timer,
        resolve: (reply) => send(200, {
          command: body.command, result: reply.result !== false, reply, elapsed_ms: Date.now() - started,
        }),
      });
      session.ws.send(JSON.stringify({ cmd: body.command, ...(body.params || {}) }));
    });
    return undefined;
  }
  return send(404, { error: 'not_found' });
});

const wss = new WebSocketServer({ server, path: '/pub/chat', maxPayload: 2048000 });
wss.on('connection', (ws) => {
  let sn = null;
  ws.on('message', (data) => {
    let frame;
    try { frame = JSON.parse(data); } catch { return; }
    if (frame.cmd === 'reg' && typeof frame.sn === 'string') {
      sn = frame.sn;
      const old = sessions.get(sn);
      if (old && old.ws !== ws) old.ws.close(1008, 'replaced');
      sessions.set(sn, { ws, connectedAt: new Date().toISOString(), waiting: [] });
      ws.send(JSON.stringify({ ret: 'reg', result: true, cloudtime: cloudtime() }));
      upsertTerminal.run(sn, new Date().toISOString());
    } else if (frame.cmd === 'sendlog' && sn) {
      const records = Array.isArray(frame.record) ? frame.record : [];
      insertLogs(sn, records);
      ws.send(JSON.stringify({ ret: 'sendlog', result: true, count: records.length, logindex: frame.logindex, cloudtime: cloudtime() }));
    } else if (typeof frame.ret === 'string' && sn) {
      const session = sessions.get(sn);
      const waiter = session && session.waiting.shift();
      if (waiter) { clearTimeout(waiter.timer); waiter.resolve(frame); }
    }
  });
  ws.on('close', () => {
    const session = sn && sessions.get(sn);
    if (session && session.ws === ws) {
      for (const w of session.waiting) clearTimeout(w.timer);
      sessions.delete(sn);
    }
  });
});

server.keepAliveTimeout = 75000;
server.listen(port, '127.0.0.1', () => console.log(`node peer on 127.0.0.1:${port}`));
