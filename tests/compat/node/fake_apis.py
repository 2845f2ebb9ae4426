"""Fake API applications for the compat suite's Node clients.

Each is an `app(req) -> compat.Response` for compat.FakeOrigin (which has
already refused, with 401, every request without the real key or with a
dummy one). They answer just enough of each API for the real client to
finish its job and print the reply text:

  anthropic_app   POST /v1/messages (JSON, or SSE when "stream": true),
                  POST /v1/messages/count_tokens, HEAD/GET / (Claude Code's
                  connectivity probe)
  gemini_app      POST /v1beta/models/M:streamGenerateContent (SSE with
                  alt=sse, else a JSON array), :generateContent, :countTokens,
                  GET /v1beta/models
  openai_app      POST /v1/chat/completions (JSON or SSE), GET /v1/models
  npm_registry    GET /NAME (the package document, tarball URL on the
                  registry's https:// URL) and GET /NAME/-/NAME-V.tgz

Anything else: 404 JSON (recorded by the origin, so tests can see it).
"""
import base64
import gzip
import hashlib
import io
import json
import tarfile

import compat


def _json_body(req):
    try:
        v = json.loads(req.body) if req.body else {}
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _sse(blocks):
    return compat.Response(200, [("content-type", "text/event-stream"),
                                 ("cache-control", "no-cache")], list(blocks))


def not_found(req):
    return compat.json_response({"error": {"type": "not_found_error",
                                           "message": f"fake origin: no {req.method} {req.path}"}},
                                404)


# ---- Anthropic Messages API --------------------------------------------------

def anthropic_events(text, model):
    msg = {"id": "msg_fake01", "type": "message", "role": "assistant", "model": model,
           "content": [], "stop_reason": None, "stop_sequence": None,
           "usage": {"input_tokens": 12, "output_tokens": 1}}
    return [
        ("message_start", {"type": "message_start", "message": msg}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": text}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def anthropic_app(text):
    def app(req):
        if req.path == "/v1/messages" and req.method == "POST":
            body = _json_body(req)
            model = str(body.get("model", "claude-test"))
            if body.get("stream"):
                return _sse(f"event: {ev}\ndata: {json.dumps(d)}\n\n".encode()
                            for ev, d in anthropic_events(text, model))
            return compat.json_response({
                "id": "msg_fake01", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 2}})
        if req.path == "/v1/messages/count_tokens" and req.method == "POST":
            return compat.json_response({"input_tokens": 12})
        if req.path == "/" and req.method in ("HEAD", "GET"):
            return compat.Response(200, [("content-type", "text/plain")], b"ok\n")
        return not_found(req)
    return app


# ---- Gemini API ------------------------------------------------------------------

def gemini_chunk(text, model):
    return {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 2,
                              "totalTokenCount": 14},
            "modelVersion": model}


def gemini_app(text):
    def app(req):
        if req.path.startswith("/v1beta/models"):
            model, _, verb = req.path[len("/v1beta/models/"):].partition(":")
            if req.method == "POST" and verb == "streamGenerateContent":
                chunk = gemini_chunk(text, model)
                if "alt=sse" in req.query:
                    return _sse([f"data: {json.dumps(chunk)}\r\n\r\n".encode()])
                return compat.json_response([chunk])
            if req.method == "POST" and verb == "generateContent":
                return compat.json_response(gemini_chunk(text, model))
            if req.method == "POST" and verb == "countTokens":
                return compat.json_response({"totalTokens": 12})
            if req.method == "GET" and not verb:
                return compat.json_response({"models": [
                    {"name": "models/gemini-test", "supportedGenerationMethods":
                     ["generateContent", "streamGenerateContent", "countTokens"]}]})
        return not_found(req)
    return app


# ---- OpenAI Chat Completions ------------------------------------------------------

def openai_app(text):
    def app(req):
        if req.path == "/v1/chat/completions" and req.method == "POST":
            body = _json_body(req)
            model = str(body.get("model", "gpt-test"))
            if body.get("stream"):
                c = {"id": "chatcmpl-fake01", "object": "chat.completion.chunk",
                     "created": 1700000000, "model": model,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}]}
                return _sse([f"data: {json.dumps(c)}\n\n".encode(), b"data: [DONE]\n\n"])
            return compat.json_response({
                "id": "chatcmpl-fake01", "object": "chat.completion", "created": 1700000000,
                "model": model, "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}})
        if req.path == "/v1/models" and req.method == "GET":
            return compat.json_response({"object": "list", "data": [
                {"id": "gpt-test", "object": "model", "created": 0, "owned_by": "fake"}]})
        return not_found(req)
    return app


# ---- npm registry -------------------------------------------------------------------

def npm_tarball(name, version, text):
    """A gzipped package tarball: package/package.json and package/index.js."""
    files = {
        "package/package.json": json.dumps({"name": name, "version": version,
                                            "main": "index.js"}).encode(),
        "package/index.js": f"module.exports = {json.dumps(text)};\n".encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def npm_registry(registry_url, name, version, text):
    """(app, tgz_path): a registry serving one unscoped package."""
    tgz = npm_tarball(name, version, text)
    tgz_path = f"/{name}/-/{name}-{version}.tgz"
    doc = {"name": name, "dist-tags": {"latest": version},
           "versions": {version: {
               "name": name, "version": version, "main": "index.js",
               "dist": {"tarball": registry_url.rstrip("/") + tgz_path,
                        "shasum": hashlib.sha1(tgz).hexdigest(),
                        "integrity": "sha512-" + base64.b64encode(
                            hashlib.sha512(tgz).digest()).decode()}}}}

    def app(req):
        if req.method == "GET" and req.path == f"/{name}":
            return compat.json_response(doc)
        if req.method == "GET" and req.path == tgz_path:
            return compat.Response(200, [("content-type", "application/octet-stream")], tgz)
        return not_found(req)
    return app, tgz_path
