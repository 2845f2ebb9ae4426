'use strict';
// Gateway mode with Node's global fetch (undici), [gateway] sections, and
// proxy mode (CONNECT + MITM) with https-proxy-agent; every credential is
// checked where it arrives: at the origin.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const https = require('node:https');
const { loadBinding, requireTestModule, setup, sha256 } = require('../testlib/helpers.js');

const av = loadBinding();
let env;
let v;

test.before(async () => {
  env = await setup();
  v = av.open(env.vaultOptions({
    listen: '127.0.0.1:0',
    resolve: [
      `api.example.test:443:127.0.0.1:${env.origin.port}`,
      `h2.example.test:443:127.0.0.1:${env.h2origin.port}`,
      `other.example.test:443:127.0.0.1:${env.origin.port}`,
    ],
    gateways: { api: { listen: '127.0.0.1:0', upstream: 'https://api.example.test' } },
  }));
});

test.after(async () => {
  v?.close();
  await env?.teardown();
});

test('fetch GET through gatewayUrl: the origin gets the real key', async () => {
  const base = v.gatewayUrl('https://api.example.test');
  assert.match(base, /^http:\/\/127\.0\.0\.1:\d+$/);
  const res = await fetch(base + '/v1/models', { headers: { authorization: 'Bearer dummy' } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-origin'), 'http/1.1');
  const echoed = await res.json();
  const rec = env.origin.requests.at(-1);
  assert.equal(rec.method, 'GET');
  assert.equal(rec.url, '/v1/models');
  assert.equal(rec.host, 'api.example.test');
  assert.equal(rec.authorization, `Bearer ${env.apiKey.value}`);
  assert.equal(echoed.authSha256, sha256(`Bearer ${env.apiKey.value}`));
  assert.equal(echoed.authorization, 'Bearer [REDACTED]'); // echoed secrets are scrubbed
});

test('gatewayUrl returns one gateway per origin', () => {
  const a = v.gatewayUrl('https://api.example.test');
  assert.equal(v.gatewayUrl('https://api.example.test'), a);
  assert.notEqual(v.gatewayUrl('https://h2.example.test'), a);
});

test('fetch POST with a JSON body, no agent credential at all', async () => {
  const body = JSON.stringify({ model: 'x', input: 'héllo' });
  const res = await fetch(v.gatewayUrl('https://api.example.test') + '/v1/responses', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body,
  });
  assert.equal(res.status, 200);
  await res.arrayBuffer();
  const rec = env.origin.requests.at(-1);
  assert.equal(rec.method, 'POST');
  assert.equal(rec.body, body);
  assert.equal(rec.authorization, `Bearer ${env.apiKey.value}`);
});

test('HTTP/2 origin: the vault speaks h2 upstream and injects a custom header', async () => {
  const res = await fetch(v.gatewayUrl('https://h2.example.test') + '/v1/things?q=1', {
    headers: { 'x-api-key': 'dummy' },
  });
  assert.equal(res.status, 200);
  await res.arrayBuffer();
  const rec = env.h2origin.requests.at(-1);
  assert.equal(rec.protocol, 'h2');
  assert.equal(rec.url, '/v1/things?q=1');
  assert.equal(rec.xApiKey, `key=${env.h2Key.value}`);
  assert.equal(rec.authorization, undefined);
});

test('streamed response arrives in pieces', async () => {
  const res = await fetch(v.gatewayUrl('https://api.example.test') + '/stream');
  assert.equal(res.status, 200);
  const parts = [];
  for await (const chunk of res.body) parts.push(Buffer.from(chunk).toString());
  assert.equal(parts.join(''), 'data: 0\n\ndata: 1\n\ndata: 2\n\n');
  assert.ok(parts.length >= 2, `expected several chunks, got ${parts.length}`);
});

test('an origin without a service gets no credential', async () => {
  const res = await fetch(v.gatewayUrl('https://other.example.test') + '/plain', {
    headers: { authorization: 'Bearer agents-own' },
  });
  assert.equal(res.status, 200);
  await res.arrayBuffer();
  const rec = env.origin.requests.at(-1);
  assert.equal(rec.host, 'other.example.test');
  assert.equal(rec.authorization, 'Bearer agents-own');
});

test('concurrent requests while Node\'s event loop stays responsive', async () => {
  const base = v.gatewayUrl('https://api.example.test');
  let ticks = 0;
  const timer = setInterval(() => ticks++, 20);
  const results = await Promise.all(Array.from({ length: 8 }, (_, i) =>
    fetch(`${base}/slow/${i}`).then(async (r) => ({ status: r.status, body: await r.json() }))));
  clearInterval(timer);
  for (const [i, r] of results.entries()) {
    assert.equal(r.status, 200);
    assert.equal(r.body.url, `/slow/${i}`);
  }
  assert.ok(ticks >= 10, `event loop ticked only ${ticks} times during 400 ms of traffic`);
  const got = env.origin.requests.filter((r) => r.url.startsWith('/slow/'));
  assert.equal(got.length, 8);
  for (const r of got) assert.equal(r.authorization, `Bearer ${env.apiKey.value}`);
});

test('[gateway] sections from the options listen too', async () => {
  const url = v.gateways.api;
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
  const res = await fetch(url + '/from-section');
  assert.equal(res.status, 200);
  await res.arrayBuffer();
  const rec = env.origin.requests.at(-1);
  assert.equal(rec.url, '/from-section');
  assert.equal(rec.authorization, `Bearer ${env.apiKey.value}`);
});

test('proxy mode: https-proxy-agent to proxyUrl, MITM with the vault CA', async () => {
  assert.match(v.proxyUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
  const { HttpsProxyAgent } = requireTestModule('https-proxy-agent');
  const agent = new HttpsProxyAgent(v.proxyUrl);
  const ca = fs.readFileSync(v.caCertPath);
  const { status, body } = await new Promise((resolve, reject) => {
    const req = https.get('https://api.example.test/v1/via-proxy', {
      agent, ca, headers: { authorization: 'Bearer dummy' },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
  });
  agent.destroy();
  assert.equal(status, 200, body);
  const rec = env.origin.requests.at(-1);
  assert.equal(rec.url, '/v1/via-proxy');
  assert.equal(rec.authorization, `Bearer ${env.apiKey.value}`);
});
