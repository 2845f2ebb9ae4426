// A Responses-API WebSocket client (the `ws` package, as Node agents use it),
// optionally through an HTTP(S) CONNECT proxy with `https-proxy-agent`.
//
//   node ws_client.mjs --url wss://api.openai.com/v1/responses
//        [--proxy http(s)://127.0.0.1:PORT] [--ca FILE] [--proxy-ca FILE]
//        [--bearer TOKEN] [--text PROMPT] [--timeout-ms N]
//
// --ca is trusted for the target (and for the proxy unless --proxy-ca is
// given). Sends one response.create and prints, one per line:
//   OPEN <status line of the handshake>
//   EVENT <json>            for each message received
//   DONE response.completed  when it arrived (exit 0), then closes cleanly
//   ERROR <message>          on any failure (exit 1)
import fs from "node:fs";
import process from "node:process";
import WebSocket from "ws";
import { HttpsProxyAgent } from "https-proxy-agent";

function parseArgs(argv) {
  const out = { timeoutMs: 20000, text: "Reply exactly: hello" };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) fail(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--url") out.url = v();
    else if (a === "--proxy") out.proxy = v();
    else if (a === "--ca") out.ca = v();
    else if (a === "--proxy-ca") out.proxyCa = v();
    else if (a === "--bearer") out.bearer = v();
    else if (a === "--text") out.text = v();
    else if (a === "--timeout-ms") out.timeoutMs = Number(v());
    else fail(`unknown argument ${a}`);
  }
  if (!out.url) fail("--url is required");
  return out;
}

function fail(msg) {
  process.stdout.write(`ERROR ${msg}\n`);
  process.exit(1);
}

const args = parseArgs(process.argv.slice(2));
const ca = args.ca ? fs.readFileSync(args.ca) : undefined;
const proxyCa = args.proxyCa ? fs.readFileSync(args.proxyCa) : ca;

const opts = { handshakeTimeout: args.timeoutMs, headers: {} };
if (ca) opts.ca = ca;
if (args.bearer) opts.headers.Authorization = `Bearer ${args.bearer}`;
opts.headers["OpenAI-Beta"] = "responses_websockets=2026-02-06";
if (args.proxy) {
  // The options are used for the TLS connection to an https:// proxy.
  opts.agent = new HttpsProxyAgent(args.proxy, proxyCa ? { ca: proxyCa } : {});
}

let done = false;
const timer = setTimeout(() => fail(`timed out after ${args.timeoutMs} ms`), args.timeoutMs);
const ws = new WebSocket(args.url, opts);

ws.on("upgrade", (res) => {
  process.stdout.write(`OPEN HTTP/${res.httpVersion} ${res.statusCode} ${res.statusMessage}\n`);
});
ws.on("unexpected-response", (_req, res) => {
  let body = "";
  res.on("data", (d) => (body += d));
  res.on("end", () => fail(`unexpected response ${res.statusCode}: ${body.trim()}`));
});
ws.on("open", () => {
  ws.send(JSON.stringify({
    type: "response.create",
    model: "gpt-test",
    instructions: "You are a test.",
    input: [{ type: "message", role: "user",
              content: [{ type: "input_text", text: args.text }] }],
    stream: true,
    store: false,
  }));
});
ws.on("message", (data, isBinary) => {
  if (isBinary) fail("binary message");
  const text = data.toString("utf8");
  process.stdout.write(`EVENT ${text}\n`);
  let ev;
  try {
    ev = JSON.parse(text);
  } catch {
    fail(`message is not JSON: ${text}`);
  }
  if (ev.type === "response.completed") {
    done = true;
    process.stdout.write("DONE response.completed\n");
    clearTimeout(timer);
    ws.close(1000);
  } else if (ev.type === "error" || ev.type === "response.failed") {
    fail(`server error event: ${text}`);
  }
});
ws.on("close", (code) => {
  process.stdout.write(`CLOSED ${code}\n`);
  if (!done) fail(`closed (code ${code}) before response.completed`);
  process.exit(0);
});
ws.on("error", (err) => fail(`${err.code || ""} ${err.message}`.trim()));
