'use strict';
// agentvault for Node.js: a credential-injecting transport in-process.
//
//   const av = require('agentvault');   // this file
//   const v = av.open({ services: { openai: { host: 'api.openai.com', auth: 'bearer',
//                                              secret: 'env:OPENAI_API_KEY' } } });
//   await fetch(v.gatewayUrl('https://api.openai.com') + '/v1/models');
//   v.close();
//
// See README.md. The native part (agentvault.node, built by build.sh) loads
// libagentvault with RTLD_DEEPBIND so that it uses its own TLS library, not
// the OpenSSL that the node executable exports.

const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

function addonPath() {
  if (process.env.AGENTVAULT_NODE_ADDON) return path.resolve(process.env.AGENTVAULT_NODE_ADDON);
  return path.join(__dirname, 'build', 'agentvault.node');
}

let native;
function addon() {
  if (!native) native = require(addonPath());
  return native;
}

const LEVELS = { error: 0, warn: 1, info: 2, debug: 3 };

// The daemon's default: $XDG_STATE_HOME/agentvault or ~/.local/state/agentvault.
function defaultStateDir() {
  const xdg = process.env.XDG_STATE_HOME;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'agentvault');
  const home = process.env.HOME || os.homedir();
  return home ? path.join(home, '.local', 'state', 'agentvault') : undefined;
}

// placeholderIn -> placeholder_in; keys already in snake case are kept.
function configKey(k) {
  return k.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());
}

function configValue(where, key, value) {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  if (Array.isArray(value)) return value.map((x) => configValue(where, key, x)).join(', ');
  throw new TypeError(`${where}: value of "${key}" must be a string, a number or an array of them ` +
                      `(write the configuration words, e.g. "on"/"off", "yes"/"no")`);
}

function section(kind, name, obj) {
  const where = name === null ? '[proxy]' : `[${kind} "${name}"]`;
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj))
    throw new TypeError(`${where}: expected an object of settings`);
  const keyvals = [];
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined) continue;
    keyvals.push(configKey(k), configValue(where, k, v));
  }
  return name === null ? { kind, keyvals } : { kind, name, keyvals };
}

function sections(kind, map) {
  if (map === undefined || map === null) return [];
  if (typeof map !== 'object' || Array.isArray(map))
    throw new TypeError(`option ${kind}s must be an object: { name: { key: value, ... } }`);
  return Object.entries(map).map(([name, obj]) => section(kind, name, obj));
}

function list(name, v) {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v;
  throw new TypeError(`option ${name} must be a string or an array of strings`);
}

function checkDrain(drain) {
  if (typeof drain !== 'number' || !(drain >= 0 && drain <= 86400))
    throw new TypeError('drain must be a number of seconds between 0 and 86400');
}

class Vault {
  #h;
  #info;
  #gateways = new Map();
  #closing = null;

  constructor(h, info) {
    this.#h = h;
    this.#info = info;
  }

  /** The proxy URL ("http://127.0.0.1:PORT") of the first listener, or null. */
  get proxyUrl() {
    return this.#info.listen.length ? this.#info.listen[0] : null;
  }

  /** Every proxy listener's URL. */
  get proxyUrls() {
    return [...this.#info.listen];
  }

  /** The [gateway "NAME"] sections: { NAME: 'http://127.0.0.1:PORT' }. */
  get gateways() {
    return Object.fromEntries(this.#info.gateways.map((g) => [g.name, g.url]));
  }

  /** The state directory (CA key and certificate). */
  get stateDir() {
    return this.#info.stateDir;
  }

  /** The proxy's root certificate (for clients of proxyUrl: NODE_EXTRA_CA_CERTS, ...). */
  get caCertPath() {
    return path.join(this.#info.stateDir, 'ca.pem');
  }

  get closed() {
    return this.#h === null;
  }

  #handle() {
    if (this.#h === null) {
      const e = new Error('agentvault: the vault is closed');
      e.code = 'AV_ERR_STATE';
      throw e;
    }
    return this.#h;
  }

  /**
   * The base URL ("http://127.0.0.1:PORT") of a plain-HTTP gateway to
   * `origin` ("https://api.openai.com", "https://host:port", "http://host:port").
   * Requests to it are matched to the origin's service, injected and sent over
   * verified TLS. One gateway per origin string: later calls return the same URL.
   */
  gatewayUrl(origin) {
    if (typeof origin !== 'string') throw new TypeError('gatewayUrl(origin): origin must be a string');
    const h = this.#handle();
    let url = this.#gateways.get(origin);
    if (!url) {
      url = addon().gatewayOpen(h, origin);
      this.#gateways.set(origin, url);
    }
    return url;
  }

  /**
   * A connected net.Socket whose other end is a gateway to `origin`: write
   * plaintext HTTP/1.1 requests (keep-alive and WebSocket upgrades included),
   * read the responses. The socket owns the descriptor.
   */
  openStream(origin, socketOptions = {}) {
    if (typeof origin !== 'string') throw new TypeError('openStream(origin): origin must be a string');
    const fd = addon().openStream(this.#handle(), origin);
    try {
      return new net.Socket({ ...socketOptions, fd, readable: true, writable: true });
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /**
   * Stops the vault and frees it. In-flight exchanges get up to `drain`
   * seconds (default 0); this call blocks for that long, so clients in this
   * process cannot progress meanwhile: use closeAsync() to drain them.
   * Idempotent.
   */
  close({ drain = 0 } = {}) {
    checkDrain(drain);
    if (this.#h === null) return;
    const h = this.#h;
    this.#h = null;
    addon().close(h, drain);
  }

  /**
   * Stops accepting, lets in-flight exchanges finish for up to `drain`
   * seconds without blocking Node's event loop, then frees the vault.
   */
  closeAsync({ drain = 10 } = {}) {
    checkDrain(drain);
    if (this.#closing) return this.#closing;
    if (this.#h === null) return Promise.resolve();
    const h = this.#h;
    const n = addon();
    this.#closing = (async () => {
      let timer;
      const deadline = new Promise((resolve) => {
        timer = setTimeout(resolve, Math.max(0, drain) * 1000 + 1000);
      });
      try {
        // Resolved by the library's "done" notification. A shutdown that
        // reaches the loop thread before its loop first ran (right after
        // open()) is never reported (README: known issues): the deadline
        // covers that case, and close() then joins the finished thread.
        await Promise.race([n.shutdown(h, drain), deadline]);
      } finally {
        clearTimeout(timer);
        this.#h = null;
        n.close(h, 0);
      }
    })();
    return this.#closing;
  }
}

if (typeof Symbol.dispose === 'symbol') Vault.prototype[Symbol.dispose] = function () { this.close(); };
if (typeof Symbol.asyncDispose === 'symbol')
  Vault.prototype[Symbol.asyncDispose] = function () { return this.closeAsync(); };

/**
 * Starts a vault on its own thread. Options (all optional):
 *   config          agentvault.conf text
 *   configFile      path of an agentvault.conf
 *   services        { NAME: { host, auth, secret, path, methods, ... } }   ([service "NAME"])
 *   tokens          { NAME: { secret, services, ... } }                     ([token "NAME"])
 *   gateways        { NAME: { listen, upstream, ... } }                      ([gateway "NAME"])
 *   proxy           { unmatched, connect_timeout, ... }                      ([proxy])
 *   stateDir        CA directory (default: the config's, else the daemon's default)
 *   resolve         'HOST:PORT:ADDR[:DIALPORT]' or an array of them
 *   upstreamCACert  PEM file of the CAs that verify upstream servers
 *   listen          proxy listen address(es) ('127.0.0.1:0'), replacing the
 *                   config's; null or [] for none. Default: the config's (none).
 *   logLevel        'error' | 'warn' | 'info' (default) | 'debug'
 *   onLog           (level, message) => {}   called on the main thread
 *   vaultPassword   master password of the secret vault (default $AGENTVAULT_PASSWORD)
 * Setting keys may be camelCase (placeholderIn) or as in the file (placeholder_in);
 * array values are joined with ", ". Errors throw an Error with the
 * library's one-line message and .code ('AV_ERR_CONFIG', ...).
 */
function open(opts = {}) {
  if (opts === null || typeof opts !== 'object') throw new TypeError('open(options): options must be an object');
  const known = new Set(['config', 'configFile', 'configOrigin', 'services', 'tokens', 'gateways', 'proxy',
                         'stateDir', 'resolve', 'upstreamCACert', 'listen', 'logLevel', 'onLog', 'vaultPassword']);
  for (const k of Object.keys(opts))
    if (!known.has(k)) throw new TypeError(`open(): unknown option "${k}"`);
  // Paths given here are relative to the current directory, as usual in Node.
  const abs = (name) => {
    const p = opts[name];
    if (p === undefined || p === null) return undefined;
    if (typeof p !== 'string') throw new TypeError(`option ${name} must be a string`);
    return path.resolve(p);
  };
  const spec = {
    config: opts.config,
    configFile: abs('configFile'),
    configOrigin: opts.configOrigin,
    sections: [
      ...(opts.proxy ? [section('proxy', null, opts.proxy)] : []),
      ...sections('service', opts.services),
      ...sections('token', opts.tokens),
      ...sections('gateway', opts.gateways),
    ],
    stateDir: abs('stateDir'),
    defaultStateDir: defaultStateDir(),
    resolve: list('resolve', opts.resolve),
    upstreamCACert: abs('upstreamCACert'),
    listen: opts.listen === null || opts.listen === false ? [] : list('listen', opts.listen),
    vaultPassword: opts.vaultPassword ?? process.env.AGENTVAULT_PASSWORD,
  };
  if (opts.logLevel !== undefined) {
    if (!(opts.logLevel in LEVELS)) throw new TypeError('logLevel must be one of error, warn, info, debug');
    spec.logLevel = LEVELS[opts.logLevel];
  }
  if (opts.onLog !== undefined) {
    if (typeof opts.onLog !== 'function') throw new TypeError('onLog must be a function (level, message)');
    spec.onLog = opts.onLog;
  }
  const info = addon().open(spec);
  return new Vault(info.handle, info);
}

/** { backend: 'boringssl'|'openssl', path: the TLS shared object in use, library: libagentvault's path } */
function tlsLibrary() {
  return addon().tlsLibrary();
}

function version() {
  return addon().version();
}

module.exports = { open, tlsLibrary, version, Vault };
