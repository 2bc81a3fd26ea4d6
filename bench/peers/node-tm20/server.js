// A Node.js peer of Gatehouse's TM20 contract, the stack the benchmark issue names ("Node.js http + ws +
// better-sqlite3"), so gatehouse-bench can measure both in the same run on the same box. It implements only
// what the bench drives: terminals register on /pub/chat, REST opendoor goes to the terminal and back, sendlog
// batches are committed (WAL, synchronous=FULL, like Gatehouse) before the ack, GET /api/connected lists the
// sockets. Like the reference peer, it keeps no per-command record.
//
//   npm install && PORT=17900 DB=/tmp/peer.db TOKEN=t node server.js
//
// Cluster mode (REDIS_URL and NODE_ID set), for the cross-node figure: a terminal's registration SETs
// `peer:route:<sn>` to the node id; a command for a terminal held elsewhere GETs the route, is PUBLISHed on
// `peer:cmd:<node>` with a correlation id, and the owner PUBLISHes the answer on `peer:reply:<requester>`
// (ioredis, as the issue names); `GET /api/connected` lists the set `peer:devices`. Like Gatehouse's cluster,
// nodes share the SQLite file. Use a Redis of its own: nothing is cleaned up between runs.
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

const nodeId = process.env.NODE_ID || `node-${port}`;
const cluster = process.env.REDIS_URL ? (() => {
  const Redis = require('ioredis');
  const pub = new Redis(process.env.REDIS_URL);
  const sub = new Redis(process.env.REDIS_URL);
  const logged = (err) => console.error('redis:', err.message);
  const pending = new Map(); // correlation -> { resolve, timer }
  let next = 0;
  sub.subscribe(`peer:cmd:${nodeId}`, `peer:reply:${nodeId}`);
  sub.on('message', (channel, text) => {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    if (channel === `peer:cmd:${nodeId}`) {
      runLocal(m.sn, m.command, m.params).then(([status, body]) =>
        pub.publish(`peer:reply:${m.from}`, JSON.stringify({ id: m.id, status, body }))).catch(logged);
    } else {
      const waiter = pending.get(m.id);
      if (waiter) { pending.delete(m.id); clearTimeout(waiter.timer); waiter.resolve([m.status, m.body]); }
    }
  });
  return {
    claim: (sn) => pub.multi().set(`peer:route:${sn}`, nodeId).sadd('peer:devices', sn).exec().catch(logged),
    // Only while the route is still ours: the terminal may have reconnected to another node.
    release: (sn) => pub.get(`peer:route:${sn}`)
      .then((owner) => (owner === nodeId ? pub.multi().del(`peer:route:${sn}`).srem('peer:devices', sn).exec() : null))
      .catch(logged),
    listed: () => pub.smembers('peer:devices'),
    owner: (sn) => pub.get(`peer:route:${sn}`),
    forward: (owner, sn, command, params) => new Promise((resolve) => {
      const id = `${nodeId}:${next++}`;
      const timer = setTimeout(() => { pending.delete(id); resolve([504, { error: 'device_timeout' }]); }, 10000);
      pending.set(id, { resolve, timer });
      pub.publish(`peer:cmd:${owner}`, JSON.stringify({ id, from: nodeId, sn, command, params })).catch(logged);
    }),
  };
})() : null;

// Sends a command to a terminal connected here; resolves to [status, body].
function runLocal(sn, command, params) {
  return new Promise((resolve) => {
    const session = sessions.get(sn);
    if (!session) return resolve([409, { error: 'not_connected' }]);
    const started = Date.now();
    const timer = setTimeout(() => {
      const i = session.waiting.findIndex((w) => w.timer === timer);
      if (i >= 0) session.waiting.splice(i, 1);
      resolve([504, { error: 'device_timeout' }]);
    }, 10000);
    session.waiting.push({
      timer,
      resolve: (reply) => resolve([200, {
        command, result: reply.result !== false, reply, elapsed_ms: Date.now() - started,
      }]),
    });
    session.ws.send(JSON.stringify({ cmd: command, ...(params || {}) }));
    return undefined;
  });
}

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
    if (cluster && !req.url.includes('scope=local')) {
      cluster.listed().then((sns) => send(200, { items: sns.map((sn) => ({ sn, protocol: 'tm20' })) }))
        .catch(() => send(503, { error: 'redis_unavailable' }));
      return undefined;
    }
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
      const sn = m[1];
      const answer = ([status, reply]) => send(status, reply);
      if (sessions.has(sn) || !cluster) return runLocal(sn, body.command, body.params).then(answer);
      return cluster.owner(sn).then((owner) => (owner && owner !== nodeId
        ? cluster.forward(owner, sn, body.command, body.params)
        : runLocal(sn, body.command, body.params))).then(answer, () => send(503, { error: 'redis_unavailable' }));
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
      if (cluster) cluster.claim(sn);
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
      if (cluster) cluster.release(sn);
    }
  });
});

server.keepAliveTimeout = 75000;
server.listen(port, '127.0.0.1', () => console.log(`node peer on 127.0.0.1:${port}`));
