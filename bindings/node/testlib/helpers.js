'use strict';
// Shared fixtures of the Node binding tests: a throw-away PKI made with the
// openssl CLI, and local TLS origins (HTTPS/1.1 + WebSocket, HTTP/2) that
// record what they received. Everything listens on 127.0.0.1; the vault is
// pointed at the origins with `resolve` and trusts the test CA through
// upstreamCACert. Nothing leaves the machine.

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const http2 = require('node:http2');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..', '..', '..');

function requireTestModule(name) {
  // scripts/setup-node.sh installs ws and https-proxy-agent here.
  try {
    return require(path.join(ROOT, 'tests', 'node', 'node_modules', name));
  } catch (e) {
    return require(name); // NODE_PATH
  }
}

function loadBinding() {
  return require(path.join(__dirname, '..', 'index.js'));
}

function tmpdir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

const HOSTS = ['api.example.test', 'h2.example.test', 'other.example.test'];

// A CA and one server certificate for HOSTS, in a new temporary directory.
function makePki() {
  const dir = tmpdir('avnode-pki-');
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  run('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'ca.key');
  run('req', '-x509', '-new', '-key', 'ca.key', '-sha256', '-days', '2', '-subj', '/CN=agentvault node test CA',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
      '-out', 'ca.pem');
  run('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'server.key');
  run('req', '-new', '-key', 'server.key', '-subj', '/CN=api.example.test', '-out', 'server.csr');
  fs.writeFileSync(path.join(dir, 'ext.cnf'),
    `subjectAltName=${HOSTS.map((h) => 'DNS:' + h).join(',')}\n` +
    'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n');
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
      '-sha256', '-extfile', 'ext.cnf', '-out', 'server.pem');
  return {
    dir,
    caFile: path.join(dir, 'ca.pem'),
    ca: fs.readFileSync(path.join(dir, 'ca.pem')),
    key: fs.readFileSync(path.join(dir, 'server.key')),
    cert: fs.readFileSync(path.join(dir, 'server.pem')),
  };
}

// The record of one request. Responses carry it as JSON too, but the vault
// scrubs echoed secrets from responses ("Bearer [REDACTED]"): tests check
// origin.requests (what the origin really received) or authSha256.
function record(req, body, protocol) {
  const auth = req.headers.authorization;
  return {
    protocol,
    method: req.method,
    url: req.url,
    host: req.headers[':authority'] || req.headers.host,
    authorization: auth,
    authSha256: auth === undefined ? null : require('node:crypto').createHash('sha256').update(auth).digest('hex'),
    xApiKey: req.headers['x-api-key'],
    body: body.toString('utf8'),
  };
}

// Routes shared by both origins:
//   /slow          answers after 400 ms
//   /stream        three chunks 100 ms apart
//   anything else  the request record as JSON
function handle(origin, protocol) {
  return (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const rec = record(req, Buffer.concat(chunks), protocol);
      origin.requests.push(rec);
      const json = JSON.stringify(rec);
      if (req.url.startsWith('/slow')) {
        setTimeout(() => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(json);
        }, 400);
      } else if (req.url.startsWith('/stream')) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        let n = 0;
        const tick = () => {
          res.write(`data: ${n}\n\n`);
          if (++n < 3) setTimeout(tick, 100);
          else res.end();
        };
        tick();
      } else {
        res.writeHead(200, { 'content-type': 'application/json', 'x-origin': protocol });
        res.end(json);
      }
    });
  };
}

// An HTTPS/1.1 origin with a WebSocket server (path /ws) on the same port.
async function startOrigin(pki) {
  const { WebSocketServer } = requireTestModule('ws');
  const origin = { requests: [], wsHandshakes: [], port: 0 };
  const server = https.createServer({ key: pki.key, cert: pki.cert }, handle(origin, 'http/1.1'));
  const wss = new WebSocketServer({ server, path: '/ws' });
  wss.on('connection', (ws, req) => {
    origin.wsHandshakes.push({ url: req.url, host: req.headers.host, authorization: req.headers.authorization });
    ws.on('message', (data, isBinary) => ws.send(isBinary ? data : 'echo:' + data.toString()));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin.port = server.address().port;
  origin.close = () => new Promise((resolve) => {
    for (const c of wss.clients) c.terminate();
    wss.close();
    server.closeAllConnections();
    server.close(() => resolve());
  });
  return origin;
}

// An HTTP/2 origin (HTTP/1.1 allowed too): the vault offers h2 upstream.
async function startH2Origin(pki) {
  const origin = { requests: [], port: 0, sessions: new Set() };
  const server = http2.createSecureServer({ key: pki.key, cert: pki.cert, allowHTTP1: true },
    (req, res) => handle(origin, req.httpVersion === '2.0' ? 'h2' : 'http/1.1')(req, res));
  server.on('session', (s) => {
    origin.sessions.add(s);
    s.on('close', () => origin.sessions.delete(s));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin.port = server.address().port;
  origin.close = () => new Promise((resolve) => {
    for (const s of origin.sessions) s.destroy();
    server.close(() => resolve());
  });
  return origin;
}

function sha256(s) {
  return require('node:crypto').createHash('sha256').update(s).digest('hex');
}

let envCounter = 0;
// A fresh secret for the vault. By default it goes in the environment (read
// as env:NAME). In a worker thread, process.env is a private copy that the
// library's getenv() never sees, so there it is written to a 0600 file
// (file:/path) instead.
function newSecret(label) {
  const { isMainThread, threadId } = require('node:worker_threads');
  const name = `AVNODE_${label}_${process.pid}_${threadId}_${++envCounter}`;
  const value = `sk-real-${label.toLowerCase()}-${Math.random().toString(36).slice(2, 12)}`;
  if (isMainThread) {
    process.env[name] = value;
    return { name, value, ref: `env:${name}` };
  }
  const dir = tmpdir('avnode-secret-');
  const file = path.join(dir, name);
  fs.writeFileSync(file, value + '\n', { mode: 0o600 });
  return { name, value, ref: `file:${file}`, dir };
}

// Everything a test needs: PKI, both origins, secrets and vault options.
async function setup() {
  const pki = makePki();
  const origin = await startOrigin(pki);
  const h2origin = await startH2Origin(pki);
  const apiKey = newSecret('API');
  const h2Key = newSecret('H2');
  const stateDir = tmpdir('avnode-state-');
  const vaultOptions = (extra = {}) => ({
    stateDir,
    upstreamCACert: pki.caFile,
    resolve: [
      `api.example.test:443:127.0.0.1:${origin.port}`,
      `h2.example.test:443:127.0.0.1:${h2origin.port}`,
    ],
    services: {
      api: { host: 'api.example.test', auth: 'bearer', secret: apiKey.ref },
      h2: { host: 'h2.example.test', auth: 'header X-Api-Key "key={secret}"', secret: h2Key.ref },
    },
    ...extra,
  });
  const removeDirs = () => {
    for (const d of [pki.dir, stateDir, apiKey.dir, h2Key.dir]) if (d) fs.rmSync(d, { recursive: true, force: true });
  };
  process.once('exit', removeDirs); // also after process.exit() in the child scenarios
  return {
    pki, origin, h2origin, apiKey, h2Key, stateDir, vaultOptions,
    async teardown() {
      await origin.close();
      await h2origin.close();
      removeDirs();
    },
  };
}

// Reads one HTTP/1.1 response (Content-Length or chunked) from a socket;
// bytes after it stay in the socket.
function readResponse(sock) {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const parse = () => {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return null;
      const head = buf.subarray(0, end).toString('latin1');
      const [statusLine, ...lines] = head.split('\r\n');
      const headers = {};
      for (const l of lines) {
        const i = l.indexOf(':');
        headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      let pos = end + 4;
      let body;
      if (/chunked/i.test(headers['transfer-encoding'] || '')) {
        const parts = [];
        for (;;) {
          const eol = buf.indexOf('\r\n', pos);
          if (eol < 0) return null;
          const size = parseInt(buf.subarray(pos, eol).toString('latin1'), 16);
          if (buf.length < eol + 2 + size + 2) return null;
          if (size === 0) {
            const tEnd = buf.indexOf('\r\n\r\n', eol); // no trailers expected: "0\r\n\r\n"
            if (tEnd < 0) return null;
            pos = tEnd + 4;
            break;
          }
          parts.push(buf.subarray(eol + 2, eol + 2 + size));
          pos = eol + 2 + size + 2;
        }
        body = Buffer.concat(parts);
      } else {
        const len = Number(headers['content-length'] || 0);
        if (buf.length < pos + len) return null;
        body = buf.subarray(pos, pos + len);
        pos += len;
      }
      return { pos, res: { status: Number(statusLine.split(' ')[1]), statusLine, headers, body: body.toString('utf8') } };
    };
    const onData = (d) => {
      buf = Buffer.concat([buf, d]);
      const r = parse();
      if (!r) return;
      sock.off('data', onData);
      sock.off('error', reject);
      sock.pause(); // keep what follows for the next reader
      if (r.pos < buf.length) sock.unshift(buf.subarray(r.pos));
      resolve(r.res);
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.resume();
  });
}

module.exports = {
  ROOT, sha256, requireTestModule, loadBinding, tmpdir, makePki, startOrigin, startH2Origin, newSecret, setup,
  readResponse,
};
