'use strict';
// Where secrets come from when the vault runs inside Node: env: (process.env
// set before open), file:, and the encrypted vault (vault:NAME with
// vaultPassword); a secret that cannot be read is never replaced by nothing.

const test = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { loadBinding, setup, tmpdir } = require('../testlib/helpers.js');

const av = loadBinding();
let env;
let dir;

test.before(async () => {
  env = await setup();
  dir = tmpdir('avnode-secrets-');
});

test.after(async () => {
  await env?.teardown();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function lastAuthFor(v, urlPath) {
  const res = await fetch(v.gatewayUrl('https://api.example.test') + urlPath);
  await res.arrayBuffer();
  return { status: res.status, rec: env.origin.requests.at(-1) };
}

test('env: secrets are read from process.env at first use', async () => {
  const name = `AVNODE_LATE_${process.pid}`;
  const v = av.open(env.vaultOptions({ services: { api: { host: 'api.example.test', auth: 'bearer', secret: `env:${name}` } } }));
  try {
    process.env[name] = 'sk-set-after-open'; // before the first request is enough
    const { status, rec } = await lastAuthFor(v, '/env-late');
    assert.equal(status, 200);
    assert.equal(rec.url, '/env-late');
    assert.equal(rec.authorization, 'Bearer sk-set-after-open');
  } finally {
    v.close();
    delete process.env[name];
  }
});

test('a missing secret: 502 to the client, nothing sent upstream', async () => {
  const v = av.open(env.vaultOptions({
    services: { api: { host: 'api.example.test', auth: 'bearer', secret: `env:AVNODE_UNSET_${process.pid}` } },
  }));
  try {
    const before = env.origin.requests.length;
    const res = await fetch(v.gatewayUrl('https://api.example.test') + '/no-secret');
    const text = await res.text();
    assert.equal(res.status, 502);
    assert.ok(res.headers.get('x-agentvault-error'), 'X-Agentvault-Error header');
    assert.match(text, /AVNODE_UNSET_/);
    assert.equal(env.origin.requests.length, before);
  } finally {
    v.close();
  }
});

test('file: secrets', async () => {
  const file = path.join(dir, 'key');
  fs.writeFileSync(file, 'sk-from-file\n', { mode: 0o600 });
  const v = av.open(env.vaultOptions({ services: { api: { host: 'api.example.test', auth: 'basic "user one"', secret: `file:${file}` } } }));
  try {
    const { status, rec } = await lastAuthFor(v, '/file');
    assert.equal(status, 200);
    assert.equal(rec.authorization, 'Basic ' + Buffer.from('user one:sk-from-file').toString('base64'));
  } finally {
    v.close();
  }
});

const daemon = process.env.AGENTVAULT_BUILD_DIR && path.join(process.env.AGENTVAULT_BUILD_DIR, 'daemon', 'agentvault');

test('vault: secrets with vaultPassword; a wrong or missing password throws', { skip: !(daemon && fs.existsSync(daemon)) && 'needs AGENTVAULT_BUILD_DIR/daemon/agentvault' }, async () => {
  const vaultFile = path.join(dir, 'secrets.avv');
  execFileSync(daemon, ['secret', 'set', 'apikey', '--vault', vaultFile], {
    input: 'sk-from-vault', env: { ...process.env, AGENTVAULT_NEW_PASSWORD: 'correct horse' }, stdio: ['pipe', 'ignore', 'pipe'],
  });
  const opts = (extra) => env.vaultOptions({
    proxy: { vault: vaultFile },
    services: { api: { host: 'api.example.test', auth: 'bearer', secret: 'vault:apikey' } },
    ...extra,
  });
  const saved = process.env.AGENTVAULT_PASSWORD;
  delete process.env.AGENTVAULT_PASSWORD;
  try {
    assert.throws(() => av.open(opts({})), { code: 'AV_ERR_AUTH', message: /needs its master password/ });
    assert.throws(() => av.open(opts({ vaultPassword: 'wrong' })), { code: 'AV_ERR_AUTH' });
    const v = av.open(opts({ vaultPassword: 'correct horse' }));
    try {
      const { status, rec } = await lastAuthFor(v, '/vault');
      assert.equal(status, 200);
      assert.equal(rec.authorization, 'Bearer sk-from-vault');
    } finally {
      v.close();
    }
  } finally {
    if (saved !== undefined) process.env.AGENTVAULT_PASSWORD = saved;
  }
});

test('config text and a config file, with the options layered on top', async () => {
  const file = path.join(dir, 'agentvault.conf');
  fs.writeFileSync(file, `[service "api"]\nhost = api.example.test\nauth = header Authorization "Token {secret}"\nsecret = ${env.apiKey.ref}\n`);
  const v = av.open({
    configFile: file,
    config: '[proxy]\nunmatched = deny\n',
    stateDir: env.stateDir,
    upstreamCACert: env.pki.caFile,
    resolve: `api.example.test:443:127.0.0.1:${env.origin.port}`,
  });
  try {
    const { status, rec } = await lastAuthFor(v, '/from-file');
    assert.equal(status, 200);
    assert.equal(rec.authorization, `Token ${env.apiKey.value}`);
    // unmatched = deny from the text: another origin is refused by the vault
    const res = await fetch(v.gatewayUrl('https://other.example.test') + '/denied');
    assert.equal(res.status, 403);
    await res.arrayBuffer();
  } finally {
    v.close();
  }
});
