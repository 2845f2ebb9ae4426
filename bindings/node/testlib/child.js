'use strict';
// A child process for lifecycle.test.js: node child.js MODE
// Prints "ok" when the scenario ran; the parent checks how the process ends.
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');
const { loadBinding, setup } = require('./helpers.js');

const av = loadBinding();
const mode = isMainThread ? process.argv[2] : workerData.mode;
const logs = [];
const onLog = (level, msg) => logs.push(msg);

async function get(url) {
  const r = await fetch(url);
  await r.arrayBuffer();
  if (r.status !== 200) throw new Error(`status ${r.status}`);
}

async function main() {
  const env = await setup();
  const opts = env.vaultOptions({ onLog, logLevel: 'debug' });
  switch (mode) {
    case 'natural': { // never closed: the environment cleanup hook stops it
      const v = av.open(opts);
      await get(v.gatewayUrl('https://api.example.test') + '/a');
      await env.teardown();
      console.log('ok');
      return;
    }
    case 'exit': { // process.exit() skips cleanup hooks: the atexit handler stops it
      const v = av.open(opts);
      await get(v.gatewayUrl('https://api.example.test') + '/a');
      console.log('ok');
      process.exit(0);
    }
    case 'inflight-exit': { // exit in the middle of an exchange
      const v = av.open(opts);
      get(v.gatewayUrl('https://api.example.test') + '/slow').catch(() => {});
      setTimeout(() => {
        console.log('ok');
        process.exit(0);
      }, 150);
      return;
    }
    case 'throw': { // an uncaught exception with a vault running
      const v = av.open(opts);
      await get(v.gatewayUrl('https://api.example.test') + '/a');
      console.log('ok');
      setImmediate(() => { throw new Error('deliberate'); });
      return;
    }
    case 'gc': { // no reference kept but the URL: the vault must keep running
      const url = av.open(opts).gatewayUrl('https://api.example.test');
      for (let i = 0; i < 5; i++) {
        global.gc();
        await new Promise((r) => setTimeout(r, 20));
      }
      await get(url + '/after-gc');
      if (env.origin.requests.at(-1).authorization !== `Bearer ${env.apiKey.value}`) throw new Error('not injected');
      await env.teardown();
      console.log('ok');
      return;
    }
    case 'worker-inner': { // in a worker: open, use, leave without close()
      const v = av.open(opts);
      await get(v.gatewayUrl('https://api.example.test') + '/in-worker');
      const ok = env.origin.requests.at(-1).authorization === `Bearer ${env.apiKey.value}`;
      await env.teardown();
      parentPort.postMessage({ ok, got: env.origin.requests.at(-1), logs, tls: av.tlsLibrary().path });
      return;
    }
    case 'worker-busy': { // in a worker: busy when terminated
      const v = av.open(opts);
      const url = v.gatewayUrl('https://api.example.test');
      // terminate() skips 'exit' handlers: the parent removes our directories
      const dirs = [env.pki.dir, env.stateDir, env.apiKey.dir, env.h2Key.dir].filter(Boolean);
      parentPort.postMessage({ started: true, dirs });
      for (;;) await get(url + '/slow').catch(() => {});
    }
    case 'worker': {
      for (let round = 0; round < 3; round++) {
        const msg = await new Promise((resolve, reject) => {
          const w = new Worker(__filename, { workerData: { mode: 'worker-inner' } });
          w.once('message', resolve);
          w.once('error', reject);
          w.once('exit', (code) => reject(new Error(`worker exited with ${code} before reporting`)));
        });
        if (!msg.ok) throw new Error('worker: not injected ' + JSON.stringify(msg));
      }
      const w = new Worker(__filename, { workerData: { mode: 'worker-busy' } });
      const started = await new Promise((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
        w.once('exit', (code) => reject(new Error(`busy worker exited with ${code}`)));
      });
      await new Promise((r) => setTimeout(r, 200));
      await w.terminate();
      for (const d of started.dirs) require('node:fs').rmSync(d, { recursive: true, force: true });
      const v = av.open(opts); // the main thread still works
      await get(v.gatewayUrl('https://api.example.test') + '/main');
      v.close();
      await env.teardown();
      console.log('ok');
      return;
    }
    default:
      throw new Error('unknown mode ' + mode);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(3);
});
