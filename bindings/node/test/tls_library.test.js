'use strict';
// Which TLS library does libagentvault really call inside Node? The node
// executable exports its own OpenSSL; these tests prove that our addon's
// libagentvault is bound to its own backend, show that the problem is real
// (probe.node, linked the ordinary way), and that real TLS traffic works.

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { loadBinding, setup, sha256, tmpdir } = require('../testlib/helpers.js');

const av = loadBinding();
const nodeExe = fs.realpathSync(process.execPath);
const probePath = process.env.AGENTVAULT_NODE_PROBE ||
  path.join(path.dirname(process.env.AGENTVAULT_NODE_ADDON || path.join(__dirname, '..', 'build', 'x')), 'probe.node');

function mappedObjects() {
  const set = new Set();
  for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const i = line.indexOf('/');
    if (i >= 0) set.add(line.slice(i).replace(/ \(deleted\)$/, ''));
  }
  return set;
}

function expectOurs(info) {
  assert.notEqual(info.path, nodeExe, 'TLS calls bound to the node executable');
  assert.ok(path.isAbsolute(info.path), `not a shared object path: ${info.path}`);
  if (info.backend === 'boringssl') {
    assert.ok(info.path.startsWith('/usr/lib/x86_64-linux-gnu/android/'), info.path);
    assert.match(path.basename(info.path), /^libssl\.so/);
  } else {
    assert.equal(info.backend, 'openssl');
    assert.match(info.path, /^\/(usr\/)?lib\/x86_64-linux-gnu\/libssl\.so\.3$/);
  }
}

test('tlsLibrary() names our backend shared object, never the node executable', () => {
  const info = av.tlsLibrary();
  expectOurs(info);
  assert.ok(mappedObjects().has(info.path), `${info.path} is not mapped in this process`);
  // libagentvault itself is the build's, and our libcrypto is mapped too.
  assert.match(info.library, /libagentvault\.so\.0/);
  const libcrypto = info.backend === 'boringssl' ? /\/android\/libcrypto\.so/ : /\/libcrypto\.so\.3$/;
  assert.ok([...mappedObjects()].some((p) => libcrypto.test(p)), 'our libcrypto is not mapped');
  // Node's own OpenSSL keeps working next to ours.
  assert.match(process.versions.openssl, /^3\./);
  assert.equal(require('node:crypto').createHash('sha256').update('x').digest('hex').length, 64);
});

test('real TLS through the vault in this process (Node TLS origin, our TLS client)', async (t) => {
  const env = await setup();
  t.after(() => env.teardown());
  const v = av.open(env.vaultOptions());
  t.after(() => v.close());
  const res = await fetch(v.gatewayUrl('https://api.example.test') + '/v1/models?x=1', {
    headers: { authorization: 'Bearer dummy-key' },
  });
  assert.equal(res.status, 200);
  const echoed = await res.json();
  // What the origin received: the real key, not the dummy.
  const rec = env.origin.requests.at(-1);
  assert.equal(rec.authorization, `Bearer ${env.apiKey.value}`);
  assert.equal(rec.url, '/v1/models?x=1');
  assert.equal(rec.host, 'api.example.test');
  // The echo comes back scrubbed; its digest proves what was sent.
  assert.equal(echoed.authSha256, sha256(`Bearer ${env.apiKey.value}`));
  assert.ok(!JSON.stringify(echoed).includes(env.apiKey.value), 'the secret was echoed to the agent');
  // Still ours after the TLS stack has been used.
  expectOurs(av.tlsLibrary());
});

// The control experiment, in child processes: probe.node links
// libagentvault the ordinary way (DT_NEEDED), as a naive addon would.
function runProbe(mode) {
  const script = `
    const os = require('os');
    const m = { exports: {} };
    const f = os.constants.dlopen;
    process.dlopen(m, ${JSON.stringify(probePath)},
      ${JSON.stringify(mode)} === 'deepbind' ? f.RTLD_NOW | f.RTLD_DEEPBIND : f.RTLD_LAZY);
    console.log(JSON.stringify(m.exports.tlsLibrary()));
    if (process.argv[1]) console.log(JSON.stringify({ caBytes: m.exports.makeCa(process.argv[1]).length }));
  `;
  const dir = tmpdir('avnode-probe-');
  const r = spawnSync(process.execPath, ['-e', script, path.join(dir, 'state')], { encoding: 'utf8', timeout: 30000 });
  fs.rmSync(dir, { recursive: true, force: true });
  const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  return { status: r.status, signal: r.signal, stderr: r.stderr, info: lines[0], ca: lines[1] };
}

test('control: without RTLD_DEEPBIND libagentvault binds to the node executable', { skip: !fs.existsSync(probePath) && 'probe.node not built' }, (t) => {
  const r = runProbe('plain');
  assert.ok(r.info, `probe printed nothing: ${r.stderr}`);
  // dladdr() names the main program by argv[0]: "/usr/bin/node" or "node".
  assert.ok(r.info.path === nodeExe || r.info.path === process.execPath || !r.info.path.includes('/'),
            `expected the node executable, got ${r.info.path}`);
  t.diagnostic(`plain dlopen: TLS calls bound to ${r.info.path}; exercising TLS: ` +
    (r.ca ? `worked (${r.info.backend} build, Node's OpenSSL was used)` :
      `status ${r.status} signal ${r.signal} ${r.stderr.trim().split('\n').pop() || ''}`));
  if (r.info.backend === 'boringssl') // BoringSSL's ABI differs from Node's OpenSSL: it must not work
    assert.ok(!r.ca || r.status !== 0, 'BoringSSL-built libagentvault worked against Node\'s OpenSSL?');
});

test('control: process.dlopen(..., RTLD_DEEPBIND) of a plainly linked addon also works', { skip: !fs.existsSync(probePath) && 'probe.node not built' }, () => {
  const r = runProbe('deepbind');
  assert.equal(r.status, 0, r.stderr);
  expectOurs(r.info);
  assert.ok(r.ca.caBytes > 100);
});
