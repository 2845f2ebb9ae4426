'use strict';
// WebSockets with the `ws` package: ws:// to the gateway becomes wss:// to
// a TLS WebSocket origin; the handshake carries the injected credential.

const test = require('node:test');
const assert = require('node:assert/strict');
const { loadBinding, requireTestModule, setup } = require('../testlib/helpers.js');

const WebSocket = requireTestModule('ws');
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

function connect(url, options) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, options);
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
}

function next(ws) {
  return new Promise((resolve, reject) => {
    ws.once('message', (data, isBinary) => resolve({ data, isBinary }));
    ws.once('error', reject);
  });
}

test('ws:// through the gateway to a wss:// origin, credential injected', async () => {
  const url = v.gatewayUrl('https://api.example.test').replace(/^http:/, 'ws:') + '/ws?session=1';
  const ws = await connect(url, { headers: { authorization: 'Bearer dummy' } });
  try {
    const hs = env.origin.wsHandshakes.at(-1);
    assert.equal(hs.url, '/ws?session=1');
    assert.equal(hs.host, 'api.example.test');
    assert.equal(hs.authorization, `Bearer ${env.apiKey.value}`);

    ws.send('hello');
    let m = await next(ws);
    assert.equal(m.isBinary, false);
    assert.equal(m.data.toString(), 'echo:hello');

    const big = 'x'.repeat(200000); // several TLS records and frames
    ws.send(big);
    m = await next(ws);
    assert.equal(m.data.toString(), 'echo:' + big);

    const bin = Buffer.from([0, 1, 2, 253, 254, 255]);
    ws.send(bin);
    m = await next(ws);
    assert.equal(m.isBinary, true);
    assert.deepEqual(Buffer.from(m.data), bin);
  } finally {
    await new Promise((resolve) => {
      ws.once('close', resolve);
      ws.close(1000, 'bye');
    });
  }
});

test('WebSocket over openStream() (ws with createConnection)', async () => {
  const ws = await connect('ws://api.example.test/ws?over=stream', {
    createConnection: () => v.openStream('https://api.example.test'),
    headers: { authorization: 'Bearer dummy' },
  });
  try {
    const hs = env.origin.wsHandshakes.at(-1);
    assert.equal(hs.url, '/ws?over=stream');
    assert.equal(hs.authorization, `Bearer ${env.apiKey.value}`);
    ws.send('via stream');
    const m = await next(ws);
    assert.equal(m.data.toString(), 'echo:via stream');
  } finally {
    ws.terminate();
  }
});

test('several WebSockets at once', async () => {
  const url = v.gatewayUrl('https://api.example.test').replace(/^http:/, 'ws:') + '/ws';
  const sockets = await Promise.all(Array.from({ length: 5 }, () => connect(url)));
  try {
    const replies = await Promise.all(sockets.map((ws, i) => {
      const p = next(ws);
      ws.send(`n${i}`);
      return p;
    }));
    assert.deepEqual(replies.map((r) => r.data.toString()), sockets.map((_, i) => `echo:n${i}`));
    for (const hs of env.origin.wsHandshakes.slice(-5)) assert.equal(hs.authorization, `Bearer ${env.apiKey.value}`);
  } finally {
    for (const ws of sockets) ws.terminate();
  }
});
