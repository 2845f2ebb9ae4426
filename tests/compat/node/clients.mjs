// The Node clients of the compat suite (tests/compat/test_node_clients.py).
//
//   node clients.mjs KIND URL [WORD]
//
// KIND picks the client and the way it is told about the proxy, the way its
// own documentation says:
//   undici-env        undici fetch + EnvHttpProxyAgent (reads HTTPS_PROXY, NO_PROXY)
//   undici-proxy      undici fetch + ProxyAgent(process.env.HTTPS_PROXY)
//   fetch             Node's built-in fetch, no proxy (gateway mode)
//   axios             axios.get (axios reads HTTPS_PROXY itself)
//   ws                ws, with an HttpsProxyAgent when HTTPS_PROXY is set and URL is wss://
//   openai            openai SDK: chat.completions (plain and streamed); URL = base URL or "-"
//                     (default https://api.openai.com/v1); proxy via fetchOptions.dispatcher
//   anthropic         @anthropic-ai/sdk: messages.create (plain and streamed); URL = base
//                     URL or "-" (default https://api.anthropic.com)
// The credential a client sends is the dummy in $DUMMY_KEY (or the SDK's own
// variable, which `agentvault run` sets to a placeholder). Prints one line
// `RESULT {json}` and exits 0 when the client got what it asked for;
// otherwise prints the error and exits 1. Never prints a credential.
import { EnvHttpProxyAgent, ProxyAgent, fetch as undiciFetch } from 'undici';
import axios from 'axios';
import WebSocket from 'ws';
import { HttpsProxyAgent } from 'https-proxy-agent';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';

const [kind, url, word = 'hello'] = process.argv.slice(2);
const dummy = process.env.DUMMY_KEY || 'sk-compat-dummy';
const proxy = process.env.HTTPS_PROXY || process.env.https_proxy || '';
const authHeaders = { authorization: `Bearer ${dummy}` };

function done(obj) {
  console.log('RESULT ' + JSON.stringify(obj));
  process.exit(0);
}

async function httpResult(status, text) {
  if (status !== 200) throw new Error(`HTTP ${status}: ${text.slice(0, 300)}`);
  const body = JSON.parse(text);
  if (body.ok !== true) throw new Error(`unexpected body: ${text.slice(0, 300)}`);
  done({ status, proto: body.proto, path: body.path });
}

// Dispatcher for an SDK in proxy mode: Node 20's built-in fetch ignores
// HTTPS_PROXY (and NODE_USE_ENV_PROXY), so the SDKs are given undici's fetch
// with an EnvHttpProxyAgent, as their READMEs show.
function sdkFetchOptions() {
  return proxy ? { fetch: undiciFetch, fetchOptions: { dispatcher: new EnvHttpProxyAgent() } } : {};
}

const run = {
  async 'undici-env'() {
    const r = await undiciFetch(url, { dispatcher: new EnvHttpProxyAgent(), headers: authHeaders });
    await httpResult(r.status, await r.text());
  },
  async 'undici-proxy'() {
    if (!proxy) throw new Error('HTTPS_PROXY is not set');
    const r = await undiciFetch(url, { dispatcher: new ProxyAgent(proxy), headers: authHeaders });
    await httpResult(r.status, await r.text());
  },
  async fetch() {
    const r = await fetch(url, { headers: authHeaders });
    await httpResult(r.status, await r.text());
  },
  async axios() {
    const r = await axios.get(url, { headers: authHeaders, responseType: 'text',
                                     transformResponse: (x) => x, validateStatus: () => true });
    await httpResult(r.status, r.data);
  },
  async ws() {
    const opts = { headers: authHeaders };
    if (proxy && url.startsWith('wss:')) opts.agent = new HttpsProxyAgent(proxy);
    const sock = new WebSocket(url, opts);
    const msg = `ping-${word}`;
    const got = await new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no echo within 20 s')), 20000);
      sock.on('unexpected-response', (_req, res) => {
        clearTimeout(t);
        reject(new Error(`upgrade answered ${res.statusCode}`));
      });
      sock.on('error', (e) => { clearTimeout(t); reject(e); });
      sock.on('open', () => sock.send(msg));
      sock.on('message', (data) => { clearTimeout(t); resolve(data.toString()); });
    });
    if (got !== msg) throw new Error(`echo mismatch: ${got.slice(0, 100)}`);
    await new Promise((resolve) => { sock.on('close', resolve); sock.close(1000); });
    done({ echoed: got });
  },
  async openai() {
    const client = new OpenAI({ ...(url !== '-' ? { baseURL: url } : {}), ...sdkFetchOptions(),
                                maxRetries: 0 });
    const c = await client.chat.completions.create({
      model: 'gpt-test', messages: [{ role: 'user', content: `Reply exactly: ${word}` }] });
    const text = c.choices[0].message.content;
    let streamed = '';
    const s = await client.chat.completions.create({
      model: 'gpt-test', stream: true,
      messages: [{ role: 'user', content: `Reply exactly: ${word}` }] });
    for await (const ev of s) streamed += ev.choices[0]?.delta?.content || '';
    if (text !== word || streamed !== word) throw new Error(`replies ${text} / ${streamed}`);
    done({ text, streamed });
  },
  async anthropic() {
    const client = new Anthropic({ ...(url !== '-' ? { baseURL: url } : {}),
                                   ...sdkFetchOptions(), maxRetries: 0 });
    const params = { model: 'claude-test', max_tokens: 64,
                     messages: [{ role: 'user', content: `Reply exactly: ${word}` }] };
    const m = await client.messages.create(params);
    const text = m.content.map((b) => b.text || '').join('');
    const final = await client.messages.stream(params).finalMessage();
    const streamed = final.content.map((b) => b.text || '').join('');
    if (text !== word || streamed !== word) throw new Error(`replies ${text} / ${streamed}`);
    done({ text, streamed });
  },
};

if (!run[kind]) {
  console.error(`unknown client kind ${kind}`);
  process.exit(2);
}
try {
  await run[kind]();
} catch (e) {
  // Error messages of these clients never contain request headers.
  console.error(`${kind} failed: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
}
