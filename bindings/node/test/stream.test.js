'use strict';
// openStream(): a net.Socket on a socketpair whose other end the vault
// serves as a gateway; raw HTTP/1.1 written by hand.

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const { loadBinding, readResponse, setup } = require('../testlib/helpers.js');

const av = loadBinding();
let env;
let v;

test.before(async () => {
  env = await setup();
  v = av.open(env.vaultOptions());
});

test.after(async () => {
  v?.close();
  await env?.teardown();
});

function readAll(sock) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    sock.on('data', (c) => chunks.push(c));
    sock.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    sock.on('error', reject);
  });
}

test('raw HTTP/1.1 request with Connection: close', async () => {
  const sock = v.openStream('https://api.example.test');
  assert.ok(sock instanceof net.Socket);
  const all = readAll(sock);
  sock.write('GET /v1/raw?a=b HTTP/1.1\r\nHost: api.example.test\r\nAuthorization: Bearer dummy\r\n' +
             'User-Agent: raw-test\r\nConnection: close\r\n\r\n');
  const text = await all;
  assert.match(text, /^HTTP\/1\.1 200 /);
  const rec = env.origin.requests.at(-1);
  assert.equal(rec.url, '/v1/raw?a=b');
  assert.equal(rec.host, 'api.example.test');
  assert.equal(rec.authorization, `Bearer ${env.apiKey.value}`);
  assert.ok(!text.includes(env.apiKey.value), 'the secret reached the agent');
  sock.destroy();
});

test('keep-alive: several requests on one stream, POST body included', async () => {
  const sock = v.openStream('https://api.example.test');
  try {
    sock.write('GET /one HTTP/1.1\r\nHost: api.example.test\r\n\r\n');
    const r1 = await readResponse(sock);
    assert.equal(r1.status, 200);
    assert.equal(JSON.parse(r1.body).url, '/one');

    const body = '{"k":"v"}';
    sock.write(`POST /two HTTP/1.1\r\nHost: api.example.test\r\nContent-Type: application/json\r\n` +
               `Content-Length: ${body.length}\r\n\r\n${body}`);
    const r2 = await readResponse(sock);
    assert.equal(r2.status, 200);
    const rec = env.origin.requests.at(-1);
    assert.equal(rec.method, 'POST');
    assert.equal(rec.url, '/two');
    assert.equal(rec.body, body);
    assert.equal(rec.authorization, `Bearer ${env.apiKey.value}`);
  } finally {
    sock.destroy();
  }
});

test('a stream to an HTTP/2 origin', async () => {
  const sock = v.openStream('https://h2.example.test');
  try {
    sock.write('GET /h2/raw HTTP/1.1\r\nHost: h2.example.test\r\nX-Api-Key: dummy\r\n\r\n');
    const r = await readResponse(sock);
    assert.equal(r.status, 200);
    const rec = env.h2origin.requests.at(-1);
    assert.equal(rec.protocol, 'h2');
    assert.equal(rec.xApiKey, `key=${env.h2Key.value}`);
  } finally {
    sock.destroy();
  }
});

test('many streams in parallel', async () => {
  const socks = Array.from({ length: 10 }, () => v.openStream('https://api.example.test'));
  try {
    const res = await Promise.all(socks.map((s, i) => {
      const p = readResponse(s);
      s.write(`GET /par/${i} HTTP/1.1\r\nHost: api.example.test\r\n\r\n`);
      return p;
    }));
    res.forEach((r, i) => assert.equal(JSON.parse(r.body).url, `/par/${i}`));
  } finally {
    for (const s of socks) s.destroy();
  }
});

test('a malformed request gets the library\'s 400', async () => {
  const sock = v.openStream('https://api.example.test');
  const all = readAll(sock);
  sock.write('GET /x HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n');
  const text = await all;
  assert.match(text, /^HTTP\/1\.1 400 /);
  assert.match(text, /X-Agentvault-Error/i);
  sock.destroy();
});
