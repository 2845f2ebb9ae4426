'use strict';
// Starting and stopping: close()/closeAsync() with traffic in flight, many
// vaults, and whole processes that end with vaults still running (normal
// exit, process.exit(), an uncaught exception, garbage collection, worker
// threads).

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { loadBinding, setup } = require('../testlib/helpers.js');

const av = loadBinding();
let env;

test.before(async () => {
  env = await setup();
});

test.after(async () => {
  await env?.teardown();
});

test('closeAsync() lets an in-flight exchange finish, without blocking Node', async () => {
  const v = av.open(env.vaultOptions());
  const url = v.gatewayUrl('https://api.example.test');
  const inflight = fetch(url + '/slow/drained').then(async (r) => ({ status: r.status, body: await r.json() }));
  await new Promise((r) => setTimeout(r, 100)); // the request is at the origin now
  const t0 = Date.now();
  await v.closeAsync({ drain: 5 });
  const took = Date.now() - t0;
  const r = await inflight;
  assert.equal(r.status, 200);
  assert.equal(r.body.url, '/slow/drained');
  assert.ok(took < 4000, `closeAsync took ${took} ms`);
  assert.equal(v.closed, true);
  await assert.rejects(fetch(url + '/after'), 'the gateway still accepts after closeAsync');
  await v.closeAsync(); // idempotent
  v.close();
});

test('close() with an exchange in flight cuts it at once', async () => {
  const v = av.open(env.vaultOptions());
  const url = v.gatewayUrl('https://api.example.test');
  const inflight = fetch(url + '/slow/cut').then((r) => r.text());
  await new Promise((r) => setTimeout(r, 100));
  const t0 = Date.now();
  v.close();
  assert.ok(Date.now() - t0 < 1000);
  await assert.rejects(inflight);
});

test('closeAsync() on an idle vault is quick; right after open() it is bounded', async () => {
  const v1 = av.open(env.vaultOptions());
  await (await fetch(v1.gatewayUrl('https://api.example.test') + '/idle')).arrayBuffer();
  let t0 = Date.now();
  await v1.closeAsync({ drain: 5 });
  assert.ok(Date.now() - t0 < 1000, `idle closeAsync took ${Date.now() - t0} ms`);
  // Immediately after open() the library may never report "done" (see
  // README, known issues): closeAsync then ends at its deadline (drain + 1 s).
  const v2 = av.open(env.vaultOptions());
  t0 = Date.now();
  await v2.closeAsync({ drain: 0 });
  assert.ok(Date.now() - t0 < 2500, `closeAsync right after open took ${Date.now() - t0} ms`);
  assert.ok(v1.closed && v2.closed);
});

test('several vaults side by side, each with its own gateways', async () => {
  const vaults = Array.from({ length: 4 }, () => av.open(env.vaultOptions()));
  try {
    const urls = vaults.map((v) => v.gatewayUrl('https://api.example.test'));
    assert.equal(new Set(urls).size, urls.length);
    const res = await Promise.all(urls.map((u, i) => fetch(`${u}/multi/${i}`).then((r) => r.json())));
    res.forEach((r, i) => assert.equal(r.url, `/multi/${i}`));
  } finally {
    for (const v of vaults) v.close();
  }
});

test('open/close cycles do not leak threads or descriptors', async () => {
  const fs = require('node:fs');
  const count = (dir) => fs.readdirSync(dir).length;
  const before = { fds: count('/proc/self/fd'), threads: count('/proc/self/task') };
  for (let i = 0; i < 20; i++) {
    const v = av.open(env.vaultOptions());
    const s = v.openStream('https://api.example.test');
    s.destroy();
    v.gatewayUrl('https://api.example.test');
    v.close();
  }
  await new Promise((r) => setTimeout(r, 100));
  const after = { fds: count('/proc/self/fd'), threads: count('/proc/self/task') };
  assert.ok(after.fds <= before.fds + 2, `descriptors: ${before.fds} -> ${after.fds}`);
  assert.ok(after.threads <= before.threads, `threads: ${before.threads} -> ${after.threads}`);
});

function child(mode) {
  const r = spawnSync(process.execPath, ['--expose-gc', path.join(__dirname, '..', 'testlib', 'child.js'), mode], {
    encoding: 'utf8', timeout: 60000, env: process.env,
  });
  return r;
}

for (const [mode, what, status] of [
  ['natural', 'a process that ends normally with a vault open exits cleanly', 0],
  ['exit', 'process.exit() with a vault open exits cleanly', 0],
  ['inflight-exit', 'process.exit() during an exchange exits cleanly', 0],
  ['throw', 'an uncaught exception with a vault open exits with status 1, no crash', 1],
  ['gc', 'an open vault is not garbage collected while only its URL is kept', 0],
  ['worker', 'worker threads: vaults opened in workers, workers exiting and terminated', 0],
]) {
  test(`child process: ${what}`, { timeout: 90000 }, () => {
    const r = child(mode);
    assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr}`);
    assert.equal(r.status, status, r.stderr);
    assert.equal(r.stdout.trim(), 'ok', r.stderr);
  });
}
