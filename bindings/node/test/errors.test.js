'use strict';
// Configuration and usage errors throw JS Errors carrying the library's
// one-line message and an AV_ERR_* code; a failed open() leaves nothing behind.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { loadBinding, newSecret, tmpdir } = require('../testlib/helpers.js');

const av = loadBinding();
const stateDir = tmpdir('avnode-err-');
test.after(() => fs.rmSync(stateDir, { recursive: true, force: true }));

const key = newSecret('ERR');
const svc = { host: 'api.example.test', auth: 'bearer', secret: key.ref };

function throwsAv(fn, code, re) {
  let err;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof Error, 'expected an Error to be thrown');
  const codes = [].concat(code);
  assert.ok(codes.includes(err.code), `${err.code}: ${err.message}`);
  assert.match(err.message, re);
  assert.ok(!err.message.includes('\n'), 'message is one line');
  if (!codes.includes('AV_ERR_STATE')) assert.equal(typeof err.avCode, 'number');
  return err;
}

test('an unknown key in config text names the origin and the line', () => {
  throwsAv(() => av.open({ stateDir, config: '[service "x"]\nhost = a.example.com\ncolour = red\n' }),
    'AV_ERR_CONFIG', /^<config>:3: unknown key "colour" in \[service\]$/);
  throwsAv(() => av.open({ stateDir, configOrigin: 'agent.conf', config: '[proxy]\nunmatched = maybe\n' }),
    'AV_ERR_CONFIG', /^agent\.conf:2: .*unmatched/);
});

test('a service without a secret fails validation', () => {
  throwsAv(() => av.open({ stateDir, services: { s: { host: 'api.example.test', auth: 'bearer' } } }),
    'AV_ERR_CONFIG', /service "s" has no secret/);
});

test('malformed service settings', () => {
  throwsAv(() => av.open({ stateDir, services: { s: { ...svc, auth: 'magic' } } }),
    'AV_ERR_CONFIG', /\[service "s"\]:\d+: .*auth/);
  throwsAv(() => av.open({ stateDir, services: { s: { ...svc, host: '*.com' } } }),
    'AV_ERR_CONFIG', /public suffix|\*\.com/);
  throwsAv(() => av.open({ stateDir, services: { s: { ...svc, secret: 'env:' + key.name + '\nx = y' } } }),
    'AV_ERR_INVALID', /line breaks/);
});

test('option-level errors: resolve, listen, config file, CA file', () => {
  throwsAv(() => av.open({ stateDir, services: { svc }, resolve: 'nonsense' }),
    'AV_ERR_INVALID', /invalid resolve entry "nonsense"/);
  throwsAv(() => av.open({ stateDir, services: { svc }, listen: '127.0.0.1' }),
    'AV_ERR_INVALID', /invalid listen address "127\.0\.0\.1"/);
  const missing = path.join(stateDir, 'no-such.conf');
  const e = throwsAv(() => av.open({ stateDir, configFile: missing }), 'AV_ERR_IO', /no-such\.conf/);
  assert.ok(e.message.includes(missing));
  throwsAv(() => av.open({ stateDir, services: { svc }, upstreamCACert: path.join(stateDir, 'none.pem') }),
    ['AV_ERR_IO', 'AV_ERR_TLS'], /none\.pem/);
});

test('a listen address that cannot be bound', async () => {
  const net = require('node:net');
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  try {
    throwsAv(() => av.open({ stateDir, services: { svc }, listen: `127.0.0.1:${srv.address().port}` }),
      'AV_ERR_IO', /127\.0\.0\.1/);
  } finally {
    srv.close();
  }
});

test('JS-side option errors are TypeErrors', () => {
  assert.throws(() => av.open({ stateDir, colour: 'red' }), { name: 'TypeError', message: /unknown option "colour"/ });
  assert.throws(() => av.open({ stateDir, services: { s: { ...svc, websocket: false } } }),
    { name: 'TypeError', message: /"websocket" must be a string/ });
  assert.throws(() => av.open({ stateDir, resolve: [1] }), { name: 'TypeError' });
  assert.throws(() => av.open({ stateDir, logLevel: 'loud' }), { name: 'TypeError' });
  assert.throws(() => av.open({ stateDir: 'a\0b' }), { name: 'TypeError', message: /NUL/ });
});

test('camelCase keys and array values map to the file syntax', () => {
  const v = av.open({
    stateDir,
    services: {
      s: { ...svc, methods: ['GET', 'POST'], path: '/v1/*', placeholder: 'dummy-key-1', placeholderIn: ['header', 'query'] },
    },
    proxy: { unmatched: 'deny', connectTimeout: 5 },
  });
  v.close();
});

test('gateway and stream errors; close twice; use after close', async () => {
  const v = av.open({ stateDir, services: { svc } });
  assert.equal(v.proxyUrl, null);
  throwsAv(() => v.gatewayUrl('ftp://api.example.test'), 'AV_ERR_INVALID', /cannot open a gateway to "ftp:\/\/api\.example\.test"/);
  throwsAv(() => v.gatewayUrl('https://api.example.test/with/path'), 'AV_ERR_INVALID', /gateway/);
  throwsAv(() => v.openStream('nope'), 'AV_ERR_INVALID', /cannot open a stream to "nope"/);
  assert.throws(() => v.gatewayUrl(42), TypeError);
  const url = v.gatewayUrl('https://api.example.test');
  assert.equal(v.closed, false);
  v.close();
  assert.equal(v.closed, true);
  v.close(); // idempotent
  v.close({ drain: 5 });
  await v.closeAsync();
  throwsAv(() => v.gatewayUrl('https://api.example.test'), 'AV_ERR_STATE', /closed/);
  throwsAv(() => v.openStream('https://api.example.test'), 'AV_ERR_STATE', /closed/);
  // The gateway's port is closed with the vault.
  await assert.rejects(fetch(url + '/x'));
});

test('a failed open() does not leave its listener bound', async () => {
  const net = require('node:net');
  const probe = net.createServer();
  await new Promise((r) => probe.listen(0, '127.0.0.1', r));
  const port = probe.address().port;
  await new Promise((r) => probe.close(r));
  // listen succeeds, then the bad CA file fails the context.
  assert.throws(() => av.open({ stateDir, services: { svc }, listen: `127.0.0.1:${port}`,
                                upstreamCACert: path.join(stateDir, 'none.pem') }));
  const again = net.createServer();
  await new Promise((resolve, reject) => {
    again.once('error', reject);
    again.listen(port, '127.0.0.1', resolve);
  });
  again.close();
});

test('onLog receives the library\'s log lines on the main thread', async () => {
  const lines = [];
  const v = av.open({ stateDir, services: { svc }, logLevel: 'debug', onLog: (level, msg) => lines.push([level, msg]) });
  const url = v.gatewayUrl('https://api.example.test');
  await new Promise((r) => setTimeout(r, 100));
  v.close();
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(lines.some(([l, m]) => l === 'info' && m.includes(url)), JSON.stringify(lines));
  for (const [, m] of lines) assert.ok(!m.includes(key.value));
});
