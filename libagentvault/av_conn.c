/* av_conn.c - one agent connection: the pump and its state machine.
 *
 *   SNIFF ──0x16──▶ (TLS to the proxy) ──▶ PROXY_HEAD
 *     └──other──▶ PROXY_HEAD
 *   PROXY_HEAD: CONNECT ──200──▶ TUNNEL_SNIFF ──0x16──▶ MITM TLS ──▶ TUNNEL_HEAD
 *                                    ├── HTTP method ──▶ TUNNEL_HEAD (cleartext)
 *                                    └── passthrough host ──▶ OPAQUE
 *               absolute http:// ──▶ exchange ──▶ PROXY_HEAD
 *               GET /ca.pem, /healthz ──▶ answered ──▶ PROXY_HEAD
 *   TUNNEL_HEAD: request ──▶ exchange ──▶ TUNNEL_HEAD
 *
 * conn_proceed() is the only function that moves bytes: it loops over
 * "read sockets, run TLS layers, run the protocol step, write sockets"
 * until nothing progresses, then sets watcher interest from the buffers.
 * Every buffer is bounded, so a slow side stops reads on the other.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "av_ctx_internal.h"
#include "av_h1.h"
#include "av_mem.h"
#include "av_policy.h"
#include "av_side.h"
#include "av_upstream.h"
#include "av_url.h"
#include "av_ws.h"

enum conn_state {
    C_SNIFF = 1,
    C_PROXY_HEAD,
    C_TUNNEL_SNIFF,
    C_TUNNEL_HEAD,
    C_EXCHANGE,
    C_OPAQUE,
    C_CLOSING
};

/* One request/response exchange. */
typedef struct av_exchange {
    int active;
    char method[24];
    int is_head;
    char host[AV_HOST_MAX + 8];
    char log_path[256];       /* path without query, for logs */
    const av_service *svc;
    av_buf head;              /* upstream request head (may hold a secret) */
    int head_sent;
    av_h1_body req_body;
    int req_body_kind;
    int req_out_chunked;
    int req_done;
    av_upconn *up;
    av_h1_scan rscan;
    int resp_head_done;
    av_h1_body resp_body;
    int resp_out_chunked;
    int resp_out_close;       /* response delimited by closing the agent side */
    int resp_done;
    int status;
    int up_reusable;
    int agent_minor;
    unsigned long long bytes_req, bytes_resp;
    double start;
    /* WebSocket */
    int ws;                   /* the request is a WebSocket upgrade */
    int ws_frame;             /* frame mode (placeholder substitution) */
    int ws_open;              /* 101 relayed: relaying frames/bytes */
    int logged;               /* its one log line has been written */
    char ws_key[32];          /* the agent's Sec-WebSocket-Key */
    av_secret *ws_secret;     /* frame mode: replaces the placeholder */
    av_ws_bridge *ws_bridge;
} av_exchange;

struct av_conn {
    av_ctx *ctx;
    av_conn *next, *prev;
    av_side a;
    int state;
    int in_tunnel;           /* requests go to |dest| */
    av_authority dest;
    int dest_tls;            /* MITM TLS inside the tunnel */
    int token;               /* index of the authenticated proxy token, -1 */
    av_h1_scan scan;
    double head_start;       /* when the first byte of a head arrived, 0 if none */
    av_timer *timer;
    int close_after;         /* close once the current response is out */
    int draining;
    int dead;
    int in_proceed;
    av_exchange x;
    av_upconn *opaque_up;
    char peer[64];
};

static void conn_proceed(av_conn *c);
static void x_log(av_conn *c, const char *error);

static const av_h1_limits head_limits = {AV_HEAD_MAX, AV_FIELDS_MAX};

/* ---- small helpers ------------------------------------------------------ */

static int ci_eq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    return alen == blen && strncasecmp(a, b, alen) == 0;
}

/* Make |in| safe as a single-line header value / log text. */
static void sanitize_line(char *dst, size_t dstlen, const char *in)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 1 < dstlen; i++) {
        unsigned char ch = (unsigned char)in[i];
        dst[j++] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
    }
    dst[j] = '\0';
}

/* Decode standard base64 (with padding); returns length or -1. */
static int b64_decode(const char *in, size_t len, uint8_t *out, size_t outmax)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (len % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++) {
            char ch = in[i + k];
            if (ch == '=' && i + 4 == len && k >= 2) {
                v[k] = -2;
                continue;
            }
            const char *p = ch ? strchr(tbl, ch) : NULL;
            if (!p)
                return -1;
            v[k] = (int)(p - tbl);
        }
        if (v[2] == -2 && v[3] != -2)
            return -1;
        uint32_t n = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) |
                     ((uint32_t)(v[2] < 0 ? 0 : v[2]) << 6) | (uint32_t)(v[3] < 0 ? 0 : v[3]);
        int bytes = v[2] == -2 ? 1 : v[3] == -2 ? 2 : 3;
        if (o + (size_t)bytes > outmax)
            return -1;
        out[o++] = (uint8_t)(n >> 16);
        if (bytes > 1)
            out[o++] = (uint8_t)(n >> 8);
        if (bytes > 2)
            out[o++] = (uint8_t)n;
    }
    return (int)o;
}

/* ---- proxy-generated responses ----------------------------------------- */

/* Queue a complete response generated by the proxy. Errors carry
 * X-Agentvault-Error and a one-line body; |json| selects a JSON body. */
static void conn_respond(av_conn *c, int status, const char *reason_text, int json, int close)
{
    char reason[300];
    sanitize_line(reason, sizeof(reason), reason_text ? reason_text : "");
    char body[700];
    if (json) {
        char esc[600];
        size_t j = 0;
        for (size_t i = 0; reason[i] && j + 2 < sizeof(esc); i++) {
            if (reason[i] == '"' || reason[i] == '\\')
                esc[j++] = '\\';
            esc[j++] = reason[i];
        }
        esc[j] = '\0';
        snprintf(body, sizeof(body), "{\"error\":\"%s\",\"status\":%d}\n", esc, status);
    } else {
        snprintf(body, sizeof(body), "%s\n", reason);
    }
    av_buf *o = c->a.pout;
    av__h1_write_status_line(o, status, av__h1_reason(status));
    av__h1_write_field_str(o, "Content-Type", json ? "application/json" : "text/plain; charset=utf-8");
    if (status >= 400)
        av__h1_write_field_str(o, "X-Agentvault-Error", reason);
    if (status == 407)
        av__h1_write_field_str(o, "Proxy-Authenticate", "Basic realm=\"agentvault\"");
    char cl[32];
    snprintf(cl, sizeof(cl), "%zu", strlen(body));
    av__h1_write_field_str(o, "Content-Length", cl);
    if (close)
        av__h1_write_field_str(o, "Connection", "close");
    av__h1_write_end(o);
    av__buf_append_str(o, body);
    if (close) {
        c->close_after = 1;
        c->state = C_CLOSING;
        av__side_close_write(&c->a);
    }
    if (status >= 400 && c->x.active)
        x_log(c, reason); /* the exchange's one line, with the reason */
    else if (status >= 400)
        av__log(&c->ctx->log, AV_LOG_INFO, "refused peer=%s status=%d reason=\"%s\"", c->peer, status, reason);
}

static void conn_respond_body(av_conn *c, int status, const char *ctype, const char *body, size_t len,
                              int head_only)
{
    av_buf *o = c->a.pout;
    char cl[32];
    snprintf(cl, sizeof(cl), "%zu", len);
    av__h1_write_status_line(o, status, av__h1_reason(status));
    av__h1_write_field_str(o, "Content-Type", ctype);
    av__h1_write_field_str(o, "Content-Length", cl);
    av__h1_write_field_str(o, "Cache-Control", "no-store");
    av__h1_write_end(o);
    if (!head_only)
        av__buf_append(o, body, len);
}

/* Map a head-parse error to a response. */
static void conn_head_error(av_conn *c, ssize_t rc)
{
    switch (rc) {
    case AV_H1_ERR_TOO_LARGE:
        conn_respond(c, 431, "request header block too large or too many fields", 0, 1);
        break;
    case AV_H1_ERR_VERSION:
        conn_respond(c, 505, "only HTTP/1.0 and HTTP/1.1 are supported here", 0, 1);
        break;
    case AV_H1_ERR_FRAMING:
        conn_respond(c, 400, "ambiguous or unsupported message framing (Content-Length/Transfer-Encoding)", 0, 1);
        break;
    case AV_H1_ERR_CONNECTION:
        conn_respond(c, 400, "Connection header names a framing field", 0, 1);
        break;
    default:
        conn_respond(c, 400, "malformed HTTP request", 0, 1);
        break;
    }
}

/* ---- proxy authentication ---------------------------------------------- */

/* Returns the token index, -1 if none matched. */
static int conn_check_token(av_conn *c, const av_h1_request *req)
{
    av_ctx *ctx = c->ctx;
    const av_h1_field *f = av__h1_find(req->fields, req->nfields, "proxy-authorization");
    if (!f)
        return -1;
    const char *v = f->value;
    size_t n = f->value_len;
    uint8_t dec[1024];
    const uint8_t *tok = NULL;
    size_t toklen = 0;
    int match = -1;
    if (n > 6 && strncasecmp(v, "Basic ", 6) == 0) {
        size_t off = 6;
        while (off < n && v[off] == ' ')
            off++;
        int dl = b64_decode(v + off, n - off, dec, sizeof(dec));
        if (dl < 0)
            return -1;
        uint8_t *colon = memchr(dec, ':', (size_t)dl);
        tok = colon ? colon + 1 : dec;
        toklen = colon ? (size_t)dl - (size_t)(colon + 1 - dec) : (size_t)dl;
    } else if (n > 7 && strncasecmp(v, "Bearer ", 7) == 0) {
        size_t off = 7;
        while (off < n && v[off] == ' ')
            off++;
        tok = (const uint8_t *)v + off;
        toklen = n - off;
    } else {
        return -1;
    }
    for (size_t i = 0; i < ctx->cfg->ntokens; i++)
        if (av__secret_equal(ctx->tokens[i], tok, toklen))
            match = (int)i;
    av__wipe(dec, sizeof(dec));
    return match;
}

/* 0 if authorized (or no tokens configured); else a 407 was queued. */
static int conn_authorize(av_conn *c, const av_h1_request *req)
{
    if (c->ctx->cfg->ntokens == 0)
        return 0;
    int t = conn_check_token(c, req);
    if (t < 0) {
        conn_respond(c, 407, "proxy authentication required: use http://agent:TOKEN@proxy", 0, 1);
        return -1;
    }
    c->token = t;
    return 0;
}

/* ---- exchanges ---------------------------------------------------------- */

static void up_notify_cb(void *owner)
{
    conn_proceed(owner);
}

static void x_reset(av_exchange *x)
{
    av__buf_free_wipe(&x->head);
    av__secret_free(x->ws_secret);
    av__ws_bridge_free(x->ws_bridge);
    memset(x, 0, sizeof(*x));
}

/* Write the exchange's one log line (never a secret: the path has no
 * query, the error is a proxy-made reason). */
static void x_log(av_conn *c, const char *error)
{
    av_ctx *ctx = c->ctx;
    av_exchange *x = &c->x;
    double ms = (av__loop_now(ctx->loop) - x->start) * 1000.0;
    char err[240] = "";
    if (error) {
        char clean[200];
        sanitize_line(clean, sizeof(clean), error);
        for (char *q = clean; *q; q++)
            if (*q == '"')
                *q = '\'';
        snprintf(err, sizeof(err), " error=\"%s\"", clean);
    }
    av__log(&ctx->log, error ? AV_LOG_WARN : AV_LOG_INFO,
            "exchange method=%s host=%s path=%s service=%s status=%d bytes_up=%llu bytes_down=%llu ms=%.1f%s%s%s",
            x->method, x->host, x->log_path, x->svc ? x->svc->name : "-", x->status, x->bytes_req,
            x->bytes_resp, ms, c->token >= 0 ? " token=" : "", c->token >= 0 ? ctx->cfg->tokens[c->token].name : "",
            err);
    x->logged = 1;
}

/* Finish the current exchange: log it, return the upstream, and go back
 * to reading heads (or close). */
static void x_finish(av_conn *c, const char *error)
{
    av_ctx *ctx = c->ctx;
    av_exchange *x = &c->x;
    if (!x->logged)
        x_log(c, error);
    ctx->exchanges++;
    if (x->up) {
        av__upstream_release(x->up, x->up_reusable && x->req_done && x->resp_done);
        x->up = NULL;
    }
    int close = c->close_after || c->draining || !x->req_done;
    x_reset(x);
    if (close) {
        c->state = C_CLOSING;
        av__side_close_write(&c->a);
        return;
    }
    c->state = c->in_tunnel ? C_TUNNEL_HEAD : C_PROXY_HEAD;
    av__h1_scan_reset(&c->scan);
    c->head_start = 0;
}

/* Abort: if nothing was sent to the agent yet, answer |status|; else cut. */
static void x_fail(av_conn *c, int status, const char *why)
{
    av_exchange *x = &c->x;
    x->up_reusable = 0;
    if (x->up) {
        av__upstream_release(x->up, 0);
        x->up = NULL;
    }
    if (!x->resp_head_done) {
        x->status = status;
        c->close_after = 1;
        conn_respond(c, status, why, 0, 1);
    } else {
        c->a.want_shut = 1;
        c->state = C_CLOSING;
    }
    x->resp_done = 1;
    x_finish(c, why);
    c->state = C_CLOSING;
}

/* Is this agent field one we never forward upstream? */
static int x_skip_request_field(const av_h1_request *req, const av_h1_field *f, const char *inject_name,
                                int ws_frame)
{
    if (ws_frame && av__h1_name_eq(f, "sec-websocket-extensions"))
        return 1; /* frame mode reads frames: no compression negotiated */
    if (av__h1_is_hop_by_hop(f, req->fields, req->nfields))
        return 1;
    if (av__h1_name_eq(f, "host") || av__h1_name_eq(f, "content-length") ||
        av__h1_name_eq(f, "transfer-encoding") || av__h1_name_eq(f, "proxy-authorization") ||
        av__h1_name_eq(f, "proxy-connection"))
        return 1;
    if (inject_name && av__h1_name_eq(f, inject_name))
        return 1;
    return 0;
}

/* Build the upstream request head and start the exchange. Returns 0, or
 * -1 after queueing an error response. */
static int x_start(av_conn *c, const av_h1_request *req, const av_authority *dest, int dest_tls,
                   const char *target, size_t target_len)
{
    av_ctx *ctx = c->ctx;
    av_exchange *x = &c->x;
    x_reset(x);
    x->active = 1;
    x->start = av__loop_now(ctx->loop);
    snprintf(x->method, sizeof(x->method), "%.*s", (int)req->method_len, req->method);
    x->is_head = ci_eq(req->method, req->method_len, "HEAD");
    av__authority_format(dest, 0, x->host, sizeof(x->host));
    size_t plen = 0;
    while (plen < target_len && target[plen] != '?')
        plen++;
    if (plen >= sizeof(x->log_path))
        plen = sizeof(x->log_path) - 1;
    memcpy(x->log_path, target, plen);
    x->log_path[plen] = '\0';
    x->agent_minor = req->minor_version;
    if (req->flags & AV_H1_F_CLOSE)
        c->close_after = 1;

    /* SECURITY 9: refuse TRACE, h2c upgrades and CONNECT inside a tunnel. */
    if (ci_eq(req->method, req->method_len, "TRACE")) {
        x->status = 405;
        conn_respond(c, 405, "TRACE is not allowed through agentvault", 0, 1);
        return -1;
    }
    if (req->flags & AV_H1_F_UPGRADE_H2C) {
        x->status = 400;
        conn_respond(c, 400, "Upgrade: h2c is not allowed", 0, 1);
        return -1;
    }
    if (req->flags & AV_H1_F_EXPECT_OTHER) {
        x->status = 417;
        conn_respond(c, 417, "only Expect: 100-continue is supported", 0, 1);
        return -1;
    }

    /* Policy. */
    const av_service *svc = av__policy_match(ctx->cfg, !dest_tls, dest->host, dest->port, req->method,
                                             req->method_len, target, target_len);
    x->svc = svc;
    if (!svc && ctx->cfg->unmatched == AV_UNMATCHED_DENY) {
        char m[AV_HOST_MAX + 80];
        snprintf(m, sizeof(m), "no service matches %s and unmatched = deny", x->host);
        x->status = 403;
        conn_respond(c, 403, m, 1, 1);
        return -1;
    }

    if (req->flags & AV_H1_F_UPGRADE_WEBSOCKET) {
        const av_h1_field *key = av__h1_find(req->fields, req->nfields, "sec-websocket-key");
        char accept[29];
        if (!ci_eq(req->method, req->method_len, "GET") || req->body != AV_H1_BODY_NONE || !key ||
            key->value_len >= sizeof(x->ws_key) || av__ws_accept_key(key->value, key->value_len, accept) != 0) {
            x->status = 400;
            conn_respond(c, 400, "malformed WebSocket upgrade request", 0, 1);
            return -1;
        }
        if (svc && svc->websocket_off) {
            char m[200];
            snprintf(m, sizeof(m), "WebSocket is off for service %s: use HTTP", svc->name);
            x->status = 426;
            conn_respond(c, 426, m, 0, 1);
            return -1;
        }
        x->ws = 1;
        x->ws_frame = svc && (svc->placeholder_in & AV_SURF_WEBSOCKET);
        memcpy(x->ws_key, key->value, key->value_len);
        x->ws_key[key->value_len] = '\0';
    }

    av_secret *secret = NULL;
    av_secret *inj_value = NULL, *inj_target = NULL;
    const char *inj_name = NULL;
    if (svc) {
        char why[200];
        int rc = av__resolver_get(ctx->resolver, svc->secret_ref, &secret, why, sizeof(why));
        if (rc) {
            char m[300];
            snprintf(m, sizeof(m), "credential for service %s unavailable: %s", svc->name, why);
            x->status = 502;
            conn_respond(c, 502, m, 0, 1);
            return -1;
        }
        int irc = AV_OK;
        if (svc->auth == AV_AUTH_QUERY) {
            inj_target = av__inject_query(svc, secret, target, target_len);
            irc = inj_target ? AV_OK : AV_ERR_NOMEM;
        } else {
            irc = av__inject_header(svc, secret, &inj_name, &inj_value);
        }
        if (x->ws_frame)
            x->ws_secret = av__secret_ref(secret);
        av__secret_free(secret);
        if (irc != AV_OK) {
            char m[200];
            snprintf(m, sizeof(m), irc == AV_ERR_INVALID
                                       ? "credential for service %s contains characters not allowed in a header"
                                       : "out of memory while injecting the credential for service %s",
                     svc->name);
            x->status = irc == AV_ERR_INVALID ? 502 : 500;
            conn_respond(c, x->status, m, 0, 1);
            return -1;
        }
    }

    /* Re-serialize: request line, Host from the destination, the agent's
     * end-to-end fields, the injected credential, framing. */
    av_buf *h = &x->head;
    av__buf_init(h, AV_HEAD_MAX + 8192);
    int rc = 0;
    if (inj_target)
        rc = rc ? rc : av__h1_write_request_line(h, req->method, req->method_len,
                                        (const char *)av__secret_data(inj_target), av__secret_len(inj_target));
    else
        rc = rc ? rc : av__h1_write_request_line(h, req->method, req->method_len, target, target_len);
    char hostval[AV_HOST_MAX + 16];
    av__authority_format(dest, dest_tls ? 443 : 80, hostval, sizeof(hostval));
    rc = rc ? rc : av__h1_write_field_str(h, "Host", hostval);
    for (size_t i = 0; i < req->nfields; i++) {
        const av_h1_field *f = &req->fields[i];
        if (x_skip_request_field(req, f, inj_name, x->ws_frame))
            continue;
        rc = rc ? rc : av__h1_write_field(h, f->name, f->name_len, f->value, f->value_len);
    }
    if (inj_value)
        rc = rc ? rc : av__h1_write_field(h, inj_name, strlen(inj_name), (const char *)av__secret_data(inj_value),
                                 av__secret_len(inj_value));
    if (x->ws) {
        rc = rc ? rc : av__h1_write_field_str(h, "Connection", "Upgrade");
        rc = rc ? rc : av__h1_write_field_str(h, "Upgrade", "websocket");
    }
    x->req_body_kind = req->body;
    if (req->body == AV_H1_BODY_LENGTH) {
        char cl[32];
        snprintf(cl, sizeof(cl), "%llu", (unsigned long long)req->content_length);
        rc = rc ? rc : av__h1_write_field_str(h, "Content-Length", cl);
    } else if (req->body == AV_H1_BODY_CHUNKED) {
        rc = rc ? rc : av__h1_write_field_str(h, "Transfer-Encoding", "chunked");
        x->req_out_chunked = 1;
    }
    rc = rc ? rc : av__h1_write_end(h);
    av__secret_free(inj_value);
    av__secret_free(inj_target);
    if (rc) {
        x->status = rc == AV_ERR_LIMIT ? 431 : 400;
        conn_respond(c, x->status,
                     rc == AV_ERR_LIMIT ? "request header block too large after rewriting"
                                        : "request cannot be re-serialized (invalid method, target or field)",
                     0, 1);
        return -1;
    }
    av__h1_body_init(&x->req_body, req->body, req->content_length);
    x->req_done = x->req_body.done; /* no body, or Content-Length: 0 */

    char scope[200];
    snprintf(scope, sizeof(scope), "%s/%s", svc ? svc->name : "-",
             c->token >= 0 ? ctx->cfg->tokens[c->token].name : "-");
    c->state = C_EXCHANGE;
    rc = av__upstream_acquire(ctx, dest, dest_tls, scope, up_notify_cb, c, &x->up);
    if (rc) {
        x->status = 500;
        conn_respond(c, 500, "out of memory", 0, 1);
        return -1;
    }
    return 0;
}

/* Serialize the upstream response head toward the agent. Returns 0,
 * AV_ERR_LIMIT (no room yet: retry later) or AV_ERR_INVALID. */
static int x_write_response_head(av_conn *c, const av_h1_response *resp)
{
    av_exchange *x = &c->x;
    av_buf *o = c->a.pout;
    size_t mark = o->len;
    int rc = 0;
    char reason[256];
    snprintf(reason, sizeof(reason), "%.*s", (int)resp->reason_len, resp->reason);
    rc |= av__h1_write_status_line(o, resp->status, reason);
    for (size_t i = 0; i < resp->nfields; i++) {
        const av_h1_field *f = &resp->fields[i];
        if (av__h1_is_hop_by_hop(f, resp->fields, resp->nfields))
            continue;
        if (av__h1_name_eq(f, "transfer-encoding"))
            continue;
        if (av__h1_name_eq(f, "content-length") && resp->body != AV_H1_BODY_NONE)
            continue; /* re-derived below */
        rc |= av__h1_write_field(o, f->name, f->name_len, f->value, f->value_len);
    }
    if (resp->status >= 200) {
        if (resp->body == AV_H1_BODY_LENGTH) {
            char cl[32];
            snprintf(cl, sizeof(cl), "%llu", (unsigned long long)resp->content_length);
            rc |= av__h1_write_field_str(o, "Content-Length", cl);
        } else if (resp->body == AV_H1_BODY_CHUNKED || resp->body == AV_H1_BODY_UNTIL_CLOSE) {
            if (x->agent_minor >= 1) {
                rc |= av__h1_write_field_str(o, "Transfer-Encoding", "chunked");
                x->resp_out_chunked = 1;
            } else {
                x->resp_out_close = 1;
                c->close_after = 1;
            }
        }
        if (c->close_after || c->draining)
            rc |= av__h1_write_field_str(o, "Connection", "close");
    }
    rc |= av__h1_write_end(o);
    if (rc) {
        o->len = mark; /* roll back */
        return rc == AV_ERR_LIMIT ? AV_ERR_LIMIT : AV_ERR_INVALID;
    }
    return 0;
}

/* Move request body bytes agent -> upstream. Returns progress. */
static int x_pump_request_body(av_conn *c)
{
    av_exchange *x = &c->x;
    av_side *u = &x->up->side;
    int progress = 0;
    while (!x->req_done) {
        size_t room = av__buf_room(u->pout);
        if (room < 64 || c->a.pin->len == 0)
            break;
        size_t feed = c->a.pin->len;
        if (feed > room - 32)
            feed = room - 32;
        const uint8_t *data = NULL;
        size_t dlen = 0;
        ssize_t used = av__h1_body_feed(&x->req_body, av__buf_head(c->a.pin), feed, &data, &dlen);
        if (used < 0) {
            x_fail(c, 400, "malformed request body framing");
            return 1;
        }
        if (dlen) {
            if (x->req_out_chunked) {
                av__h1_write_chunk_header(u->pout, dlen);
                av__buf_append(u->pout, data, dlen);
                av__h1_write_chunk_end(u->pout);
            } else {
                av__buf_append(u->pout, data, dlen);
            }
            x->bytes_req += dlen;
        }
        av__buf_consume(c->a.pin, (size_t)used);
        if (x->req_body.done) {
            if (x->req_out_chunked)
                av__h1_write_last_chunk(u->pout);
            x->req_done = 1;
        }
        if (used == 0 && dlen == 0 && !x->req_body.done)
            break;
        progress = 1;
    }
    return progress;
}

/* Copy what fits from |from| to |to| (splice relays). Returns progress. */
static int splice_bytes(av_buf *from, av_buf *to, unsigned long long *count)
{
    size_t n = from->len;
    if (n > av__buf_room(to))
        n = av__buf_room(to);
    if (n == 0 || av__buf_append(to, av__buf_head(from), n) != AV_OK)
        return 0;
    av__buf_consume(from, n);
    if (count)
        *count += n;
    return 1;
}

/* Check the upstream's 101 (SECURITY 9). Returns NULL or the reason. */
static const char *x_ws_check_101(const av_exchange *x, const av_h1_response *resp)
{
    const av_h1_field *up = av__h1_find(resp->fields, resp->nfields, "upgrade");
    if (!up || !ci_eq(up->value, up->value_len, "websocket"))
        return "upstream WebSocket handshake invalid: 101 without Upgrade: websocket";
    if (!(resp->flags & AV_H1_F_UPGRADE_WEBSOCKET)) {
        /* The parser sets the flag only when Connection lists "upgrade". */
        return "upstream WebSocket handshake invalid: 101 without Connection: upgrade";
    }
    const av_h1_field *acc = av__h1_find(resp->fields, resp->nfields, "sec-websocket-accept");
    char want[29];
    if (av__ws_accept_key(x->ws_key, strlen(x->ws_key), want) != 0 || !acc || acc->value_len != 28 ||
        memcmp(acc->value, want, 28) != 0)
        return "upstream WebSocket handshake invalid: wrong Sec-WebSocket-Accept";
    if (x->ws_frame && av__h1_find(resp->fields, resp->nfields, "sec-websocket-extensions"))
        return "upstream WebSocket handshake invalid: extension negotiated that was not offered";
    return NULL;
}

/* Relay a validated 101 to the agent. */
static int x_ws_write_101(av_conn *c, const av_h1_response *resp)
{
    av_buf *o = c->a.pout;
    size_t mark = o->len;
    int rc = av__h1_write_status_line(o, 101, "Switching Protocols");
    for (size_t i = 0; i < resp->nfields && !rc; i++) {
        const av_h1_field *f = &resp->fields[i];
        if (av__h1_is_hop_by_hop(f, resp->fields, resp->nfields) || av__h1_name_eq(f, "content-length"))
            continue;
        rc = av__h1_write_field(o, f->name, f->name_len, f->value, f->value_len);
    }
    rc = rc ? rc : av__h1_write_field_str(o, "Upgrade", "websocket");
    rc = rc ? rc : av__h1_write_field_str(o, "Connection", "Upgrade");
    rc = rc ? rc : av__h1_write_end(o);
    if (rc)
        o->len = mark;
    return rc;
}

/* Frame mode: replace the service's placeholder in client text messages. */
static int x_ws_filter(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len)
{
    av_exchange *x = ud;
    const char *ph = x->svc ? x->svc->placeholder : NULL;
    *out = (uint8_t *)msg;
    *out_len = len;
    if (!ph || !x->ws_secret)
        return 0;
    uint8_t *rep = NULL;
    size_t rlen = 0;
    int rc = av__subst_replace(msg, len, (const uint8_t *)ph, strlen(ph), av__secret_data(x->ws_secret),
                               av__secret_len(x->ws_secret), 64u << 20, &rep, &rlen);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        *out = rep;
        *out_len = rlen;
    }
    return 0;
}

/* Relay an open WebSocket: splice bytes, or frames through the bridge. */
static int x_ws_step(av_conn *c)
{
    av_exchange *x = &c->x;
    av_side *u = &x->up->side;
    int progress = 0;
    int rc = av__side_pump_in(u);
    progress |= rc > 0;
    if (x->ws_bridge) {
        if (c->a.in_eof)
            av__ws_bridge_agent_eof(x->ws_bridge);
        if (u->in_eof || u->err)
            av__ws_bridge_upstream_eof(x->ws_bridge);
        size_t a0 = c->a.pin->len, u0 = u->pin->len;
        rc = av__ws_bridge_pump(x->ws_bridge, c->a.pin, c->a.pout, u->pin, u->pout);
        if (rc > 0)
            progress = 1;
        x->bytes_req += a0 - c->a.pin->len;
        x->bytes_resp += u0 - u->pin->len;
        if (rc == AV_ERR_PARSE || rc == AV_ERR_DENIED) {
            av__log(&c->ctx->log, AV_LOG_INFO, "websocket host=%s path=%s: %s, closing", x->host, x->log_path,
                    rc == AV_ERR_PARSE ? "protocol violation" : "message refused by policy");
        } else if (rc < 0) {
            /* Out of memory or an internal failure: drop both sides. */
            av__log(&c->ctx->log, AV_LOG_WARN, "websocket host=%s path=%s: relay failed: %s", x->host,
                    x->log_path, av_strerror(rc));
            x->up_reusable = 0;
            x->resp_done = x->req_done = 1;
            c->close_after = 1;
            x_finish(c, av_strerror(rc));
            c->a.want_shut = 1;
            return 1;
        }
    } else {
        progress |= splice_bytes(c->a.pin, u->pout, &x->bytes_req);
        progress |= splice_bytes(u->pin, c->a.pout, &x->bytes_resp);
        /* Half-closes propagate: EOF from one peer becomes FIN to the other. */
        if (c->a.in_eof && c->a.pin->len == 0 && !u->want_shut) {
            av__side_close_write(u);
            progress = 1;
        }
        if ((u->in_eof || u->err) && u->pin->len == 0 && !c->a.want_shut) {
            av__side_close_write(&c->a);
            progress = 1;
        }
    }
    rc = av__side_pump_out(u);
    progress |= rc > 0;
    int finished = x->ws_bridge ? av__ws_bridge_done(x->ws_bridge)
                                : ((c->a.in_eof && (u->in_eof || u->err)) || (u->err && c->a.want_shut));
    if (finished && av__side_flushed(u)) {
        x->resp_done = 1;
        x->req_done = 1;
        c->close_after = 1;
        x_finish(c, NULL);
        return 1;
    }
    return progress;
}

/* Move response bytes upstream -> agent. Returns progress. */
static int x_pump_response(av_conn *c)
{
    av_exchange *x = &c->x;
    av_side *u = &x->up->side;
    int progress = 0;
    while (!x->resp_head_done) {
        if (u->pin->len == 0 && !u->in_eof)
            return progress;
        av_h1_response resp;
        ssize_t n = av__h1_parse_response(av__buf_head(u->pin), u->pin->len, &head_limits, &x->rscan,
                                          x->is_head, 0, &resp);
        if (n == AV_H1_INCOMPLETE) {
            if (u->in_eof) {
                x_fail(c, 502, "upstream closed the connection before sending a response");
                return 1;
            }
            return progress;
        }
        if (n < 0) {
            x_fail(c, 502, "upstream sent a malformed response");
            return 1;
        }
        if (resp.status == 101) {
            if (!x->ws) {
                x_fail(c, 502, "upstream switched protocols, which this exchange did not ask for");
                return 1;
            }
            if (av__buf_room(c->a.pout) < (size_t)n + 512)
                return progress;
            const char *why = x_ws_check_101(x, &resp);
            if (why) {
                x_fail(c, 502, why);
                return 1;
            }
            if (x_ws_write_101(c, &resp) != 0) {
                x_fail(c, 502, "upstream 101 response cannot be re-serialized");
                return 1;
            }
            av__buf_consume(u->pin, (size_t)n);
            x->status = 101;
            x->resp_head_done = 1;
            x->up_reusable = 0;
            if (x->ws_frame &&
                av__ws_bridge_new(&x->ws_bridge, 0, x_ws_filter, x) != AV_OK) {
                c->state = C_CLOSING;
                c->a.want_shut = 1;
                return 1;
            }
            x->ws_open = 1;
            return 1;
        }
        if (av__buf_room(c->a.pout) < (size_t)n + 512)
            return progress; /* wait for the agent to drain */
        int wrc = x_write_response_head(c, &resp);
        if (wrc == AV_ERR_LIMIT)
            return progress;
        if (wrc != 0) {
            x_fail(c, 502, "upstream response cannot be re-serialized");
            return 1;
        }
        av__buf_consume(u->pin, (size_t)n);
        av__h1_scan_reset(&x->rscan);
        progress = 1;
        if (resp.status < 200)
            continue; /* 100 Continue and friends: relayed, keep reading */
        x->status = resp.status;
        x->resp_head_done = 1;
        /* A declined upgrade may leave upgrade state on the upstream: do
         * not pool that connection. */
        x->up_reusable = !(resp.flags & AV_H1_F_CLOSE) && resp.body != AV_H1_BODY_UNTIL_CLOSE && !x->ws;
        av__h1_body_init(&x->resp_body, resp.body, resp.content_length);
        x->resp_done = x->resp_body.done; /* no body, or Content-Length: 0 */
    }
    while (!x->resp_done) {
        size_t room = av__buf_room(c->a.pout);
        if (room < 64)
            break;
        if (u->pin->len == 0) {
            if (u->in_eof) {
                if (x->resp_body.kind == AV_H1_BODY_UNTIL_CLOSE) {
                    x->resp_body.done = 1;
                } else {
                    x_fail(c, 502, "upstream closed the connection in the middle of the body");
                    return 1;
                }
            } else {
                break;
            }
        } else {
            size_t feed = u->pin->len;
            if (feed > room - 32)
                feed = room - 32;
            const uint8_t *data = NULL;
            size_t dlen = 0;
            ssize_t used = av__h1_body_feed(&x->resp_body, av__buf_head(u->pin), feed, &data, &dlen);
            if (used < 0) {
                x_fail(c, 502, "upstream sent a malformed response body");
                return 1;
            }
            if (dlen) {
                if (x->resp_out_chunked) {
                    av__h1_write_chunk_header(c->a.pout, dlen);
                    av__buf_append(c->a.pout, data, dlen);
                    av__h1_write_chunk_end(c->a.pout);
                } else {
                    av__buf_append(c->a.pout, data, dlen);
                }
                x->bytes_resp += dlen;
            }
            av__buf_consume(u->pin, (size_t)used);
            if (used == 0 && dlen == 0 && !x->resp_body.done)
                break;
        }
        progress = 1;
        if (x->resp_body.done) {
            if (x->resp_out_chunked)
                av__h1_write_last_chunk(c->a.pout);
            x->resp_done = 1;
            if (u->pin->len > 0)
                x->up_reusable = 0; /* bytes after the response: never reuse */
        }
    }
    return progress;
}

/* One step of the current exchange. Returns progress. */
static int x_step(av_conn *c)
{
    av_exchange *x = &c->x;
    av_upconn *up = x->up;
    int progress = 0;
    if (!up)
        return 0;
    if (up->state < AV_UP_READY)
        progress |= av__upstream_step(up);
    if (up->state == AV_UP_FAILED) {
        char why[260];
        snprintf(why, sizeof(why), "%s", up->side.errmsg);
        x_fail(c, up->fail_status ? up->fail_status : 502, why);
        return 1;
    }
    if (up->state != AV_UP_READY)
        return progress;
    if (!x->head_sent) {
        if (av__buf_append(up->side.pout, av__buf_head(&x->head), x->head.len) != AV_OK)
            return progress;
        av__buf_free_wipe(&x->head);
        x->head_sent = 1;
        progress = 1;
    }
    if (x->ws_open)
        return x_ws_step(c) | progress;
    int rc = av__side_pump_in(&up->side);
    if (rc < 0 && !x->resp_done) {
        char why[260];
        snprintf(why, sizeof(why), "upstream connection failed: %s", up->side.errmsg);
        x_fail(c, 502, why);
        return 1;
    }
    progress |= rc > 0;
    progress |= x_pump_request_body(c);
    if (c->x.active == 0 || c->state == C_CLOSING)
        return 1;
    progress |= x_pump_response(c);
    if (c->x.active == 0 || c->state == C_CLOSING)
        return 1;
    if (x->ws_open)
        return 1;
    rc = av__side_pump_out(&up->side);
    if (rc < 0 && !x->resp_done) {
        char why[260];
        snprintf(why, sizeof(why), "upstream connection failed: %s", up->side.errmsg);
        x_fail(c, 502, why);
        return 1;
    }
    progress |= rc > 0;
    if (!x->req_done && c->a.in_eof && c->a.pin->len == 0) {
        /* The agent went away mid-body: nothing sensible to forward. */
        x->up_reusable = 0;
        if (x->resp_done) {
            x_finish(c, NULL);
            return 1;
        }
    }
    if (x->resp_done && (x->req_done || c->a.in_eof)) {
        x_finish(c, NULL);
        return 1;
    }
    if (x->resp_done && !x->req_done) {
        /* Early response (e.g. 413): finish without the rest of the body
         * and close the agent connection afterwards. */
        c->close_after = 1;
        x->up_reusable = 0;
        x_finish(c, NULL);
        return 1;
    }
    return progress;
}

/* ---- request heads ------------------------------------------------------ */

/* Variables `agentvault run` sets to a placeholder for services on the
 * well-known API hosts, unless the service names its own (agent_env). */
static const char *agent_env_default(const char *host)
{
    if (strcmp(host, "api.openai.com") == 0)
        return "OPENAI_API_KEY,CODEX_API_KEY";
    if (strcmp(host, "api.anthropic.com") == 0)
        return "ANTHROPIC_API_KEY";
    if (strcmp(host, "api.github.com") == 0)
        return "GITHUB_TOKEN,GH_TOKEN";
    return NULL;
}

/* Does a block of NAME=VALUE lines already set |name|? */
static int env_lines_have(const char *body, size_t len, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < len;) {
        const char *line = body + i;
        const char *end = memchr(line, '\n', len - i);
        size_t ll = end ? (size_t)(end - line) : len - i;
        if (ll > nl && memcmp(line, name, nl) == 0 && line[nl] == '=')
            return 1;
        i += ll + 1;
    }
    return 0;
}

/* Body of GET /agent-env: NAME=PLACEHOLDER lines (never a secret). */
static void conn_agent_env(av_conn *c, int head_only)
{
    const av_config *cfg = c->ctx->cfg;
    char body[8192];
    size_t o = 0;
    body[0] = '\0';
    for (size_t i = 0; i < cfg->nservices; i++) {
        const av_service *svc = &cfg->services[i];
        const char *vars = svc->agent_env ? svc->agent_env : agent_env_default(svc->host);
        if (!vars)
            continue;
        char value[160];
        if (svc->placeholder)
            snprintf(value, sizeof(value), "%s", svc->placeholder);
        else
            snprintf(value, sizeof(value), "agentvault-placeholder-%s", svc->name);
        const char *p = vars;
        while (*p) {
            size_t n = strcspn(p, ",");
            char name[72];
            snprintf(name, sizeof(name), "%.*s", (int)(n < 64 ? n : 64), p);
            int dup = env_lines_have(body, o, name); /* first service naming it wins */
            if (!dup) {
                int w = snprintf(body + o, sizeof(body) - o, "%s=%s\n", name, value);
                if (w < 0 || (size_t)w >= sizeof(body) - o)
                    break;
                o += (size_t)w;
            }
            p += n;
            if (*p == ',')
                p++;
        }
    }
    conn_respond_body(c, 200, "text/plain; charset=utf-8", body, o, head_only);
}

/* Handle an origin-form request addressed to the proxy itself. */
static void conn_self_request(av_conn *c, const av_h1_request *req)
{
    int get = ci_eq(req->method, req->method_len, "GET");
    int head = ci_eq(req->method, req->method_len, "HEAD");
    if ((get || head) && req->target_len == 7 && memcmp(req->target, "/ca.pem", 7) == 0) {
        const char *pem = av__ca_root_pem(c->ctx->ca);
        conn_respond_body(c, 200, "application/x-pem-file", pem, strlen(pem), head);
    } else if ((get || head) && req->target_len == 8 && memcmp(req->target, "/healthz", 8) == 0) {
        conn_respond_body(c, 200, "text/plain; charset=utf-8", "ok\n", 3, head);
    } else if ((get || head) && req->target_len == 10 && memcmp(req->target, "/agent-env", 10) == 0) {
        conn_agent_env(c, head);
    } else {
        conn_respond(c, 400,
                     "this is a forward proxy: use CONNECT for https (e.g. curl -x), absolute-form for http, "
                     "or GET /ca.pem, /healthz or /agent-env",
                     0, 1);
        return;
    }
    if (req->body != AV_H1_BODY_NONE || (req->flags & AV_H1_F_CLOSE)) {
        c->state = C_CLOSING;
        av__side_close_write(&c->a);
    }
}

/* A complete head at the proxy level (not inside a tunnel). */
static void conn_proxy_request(av_conn *c, const av_h1_request *req, size_t head_len)
{
    av_ctx *ctx = c->ctx;
    if (ci_eq(req->method, req->method_len, "CONNECT")) {
        av_authority dest;
        if (av__authority_parse(req->target, req->target_len, 0, &dest) != 0) {
            conn_respond(c, 400, "CONNECT target must be host:port with a valid host name or IP", 0, 1);
            return;
        }
        if (req->body != AV_H1_BODY_NONE) {
            conn_respond(c, 400, "CONNECT with a body is not allowed", 0, 1);
            return;
        }
        if (conn_authorize(c, req) < 0)
            return;
        av__buf_consume(c->a.pin, head_len);
        c->dest = dest;
        c->in_tunnel = 1;
        av__buf_append_str(c->a.pout, "HTTP/1.1 200 Connection Established\r\n\r\n");
        /* Opaque passthrough hosts are decided now (server-first protocols). */
        for (size_t i = 0; i < ctx->cfg->npassthrough; i++) {
            if (av__host_match_pattern(ctx->cfg->passthrough[i], dest.host)) {
                char scope[] = "opaque";
                c->state = C_OPAQUE;
                if (av__upstream_acquire(ctx, &dest, 0, scope, up_notify_cb, c, &c->opaque_up)) {
                    c->state = C_CLOSING;
                    av__side_close_write(&c->a);
                }
                av__log(&ctx->log, AV_LOG_INFO, "tunnel peer=%s host=%s:%d mode=opaque", c->peer, dest.host,
                        dest.port);
                return;
            }
        }
        c->state = C_TUNNEL_SNIFF;
        return;
    }
    if (req->target_len > 0 && req->target[0] == '/') {
        av__buf_consume(c->a.pin, head_len);
        if (req->body != AV_H1_BODY_NONE) {
            conn_respond(c, 400, "requests to the proxy itself must not have a body", 0, 1);
            return;
        }
        conn_self_request(c, req);
        return;
    }
    av_absolute_uri uri;
    int rc = av__absolute_uri_parse(req->target, req->target_len, &uri);
    if (rc != 0) {
        conn_respond(c, 400, "malformed request target", 0, 1);
        return;
    }
    if (strcmp(uri.scheme, "http") != 0) {
        conn_respond(c, 400,
                     "absolute-form requests are only forwarded for http://; for https:// use CONNECT "
                     "(set HTTPS_PROXY so the client tunnels)",
                     0, 1);
        return;
    }
    if (conn_authorize(c, req) < 0)
        return;
    if (req->host) {
        av_authority hh;
        if (av__authority_parse(req->host->value, req->host->value_len, 80, &hh) != 0 ||
            !av__authority_equal(&hh, &uri.authority)) {
            conn_respond(c, 421, "Host header does not match the request target", 0, 1);
            return;
        }
    }
    if (x_start(c, req, &uri.authority, 0, uri.path, uri.path_len) == 0)
        av__buf_consume(c->a.pin, head_len);
}

/* A complete head inside a CONNECT tunnel: it must be for the tunnel's
 * destination (SECURITY 1). */
static void conn_tunnel_request(av_conn *c, const av_h1_request *req, size_t head_len)
{
    if (ci_eq(req->method, req->method_len, "CONNECT")) {
        conn_respond(c, 400, "CONNECT inside a tunnel is not allowed", 0, 1);
        return;
    }
    if (!av__origin_form_valid(req->target, req->target_len)) {
        conn_respond(c, 400, "requests inside a tunnel must use origin-form targets (/path)", 0, 1);
        return;
    }
    if (!req->host) {
        conn_respond(c, 400, "missing Host header", 0, 1);
        return;
    }
    av_authority hh;
    if (av__authority_parse(req->host->value, req->host->value_len, c->dest_tls ? 443 : 80, &hh) != 0 ||
        !av__authority_equal(&hh, &c->dest)) {
        char m[AV_HOST_MAX + 80];
        snprintf(m, sizeof(m), "Host header does not match the CONNECT target %s:%d", c->dest.host, c->dest.port);
        conn_respond(c, 421, m, 0, 1);
        return;
    }
    if (x_start(c, req, &c->dest, c->dest_tls, req->target, req->target_len) == 0)
        av__buf_consume(c->a.pin, head_len);
}

/* Parse a head from the agent. Returns progress. */
static int conn_read_head(av_conn *c)
{
    av_buf *in = c->a.pin;
    if (in->len == 0) {
        if (c->a.in_eof) {
            c->state = C_CLOSING;
            av__side_close_write(&c->a);
            return 1;
        }
        if (c->draining) {
            c->state = C_CLOSING;
            av__side_close_write(&c->a);
            return 1;
        }
        return 0;
    }
    if (c->head_start == 0)
        c->head_start = av__loop_now(c->ctx->loop);
    av_h1_request req; /* about 4 KiB; on the stack, not the heap, per request */
    ssize_t n = av__h1_parse_request(av__buf_head(in), in->len, &head_limits, &c->scan, &req);
    if (n == AV_H1_INCOMPLETE && av__buf_room(in) == 0)
        n = AV_H1_ERR_TOO_LARGE; /* the buffer is the limit: never stall on a full one */
    if (n == AV_H1_INCOMPLETE) {
        if (c->a.in_eof) {
            c->state = C_CLOSING;
            av__side_close_write(&c->a);
            return 1;
        }
        return 0;
    }
    if (n < 0) {
        conn_head_error(c, n);
        return 1;
    }
    av__h1_scan_reset(&c->scan);
    c->head_start = 0;
    if (c->state == C_PROXY_HEAD)
        conn_proxy_request(c, &req, (size_t)n);
    else
        conn_tunnel_request(c, &req, (size_t)n);
    return 1;
}

/* First bytes inside a tunnel decide its mode. */
static int conn_tunnel_sniff(av_conn *c)
{
    av_ctx *ctx = c->ctx;
    av_buf *in = c->a.pin;
    if (in->len == 0) {
        if (c->a.in_eof) {
            c->state = C_CLOSING;
            av__side_close_write(&c->a);
            return 1;
        }
        return 0;
    }
    const uint8_t b = av__buf_head(in)[0];
    if (av__tls_is_client_hello(&b, 1)) {
        av_buf *cin, *cout;
        av_tls *t = NULL;
        av__side_tls_bufs(&c->a, &cin, &cout);
        int rc = av__tls_server_new(&t, ctx->tls_srv, c->dest.host, NULL, cin, cout);
        if (rc == AV_OK)
            rc = av__side_push_tls(&c->a, t);
        if (rc != AV_OK) {
            /* AV_ERR_LIMIT: the leaf-minting rate cap (SECURITY 15). The
             * agent already has its 200, so closing is the only answer. */
            av__log(&ctx->log, rc == AV_ERR_LIMIT ? AV_LOG_WARN : AV_LOG_ERROR,
                    "tunnel peer=%s host=%s refused: cannot create MITM TLS: %s", c->peer, c->dest.host,
                    rc == AV_ERR_LIMIT ? "leaf minting rate limit reached" : av_strerror(rc));
            c->state = C_CLOSING;
            c->a.want_shut = 1;
            return 1;
        }
        c->dest_tls = 1;
        c->state = C_TUNNEL_HEAD;
        return 1;
    }
    if (b >= 'A' && b <= 'Z') {
        c->dest_tls = 0;
        c->state = C_TUNNEL_HEAD;
        return 1;
    }
    av__log(&ctx->log, AV_LOG_INFO, "tunnel peer=%s host=%s:%d refused: neither TLS nor HTTP", c->peer,
            c->dest.host, c->dest.port);
    c->state = C_CLOSING;
    c->a.want_shut = 1;
    return 1;
}

/* Opaque tunnel: bytes both ways, untouched. */
static int conn_opaque_step(av_conn *c)
{
    av_upconn *up = c->opaque_up;
    int progress = 0;
    if (!up)
        return 0;
    if (up->state < AV_UP_READY)
        progress |= av__upstream_step(up);
    if (up->state == AV_UP_FAILED) {
        av__log(&c->ctx->log, AV_LOG_INFO, "tunnel host=%s:%d failed: %s", c->dest.host, c->dest.port,
                up->side.errmsg);
        av__upstream_release(up, 0);
        c->opaque_up = NULL;
        c->state = C_CLOSING;
        c->a.want_shut = 1;
        return 1;
    }
    if (up->state != AV_UP_READY)
        return progress;
    int rc = av__side_pump_in(&up->side);
    progress |= rc > 0;
    progress |= splice_bytes(c->a.pin, up->side.pout, NULL);
    progress |= splice_bytes(up->side.pin, c->a.pout, NULL);
    rc = av__side_pump_out(&up->side);
    progress |= rc > 0;
    if (c->a.in_eof && c->a.pin->len == 0 && !up->side.want_shut) {
        up->side.want_shut = 1;
        progress = 1;
    }
    if ((up->side.in_eof && up->side.pin->len == 0) || up->side.err) {
        if (!c->a.want_shut) {
            av__side_close_write(&c->a);
            progress = 1;
        }
        if (up->side.shut_wr || up->side.err || c->a.in_eof)
            c->state = C_CLOSING;
    }
    return progress;
}

/* The protocol step. Returns progress. */
static int conn_step(av_conn *c)
{
    switch (c->state) {
    case C_SNIFF: {
        if (c->a.pin->len == 0) {
            if (c->a.in_eof) {
                c->state = C_CLOSING;
                return 1;
            }
            return 0;
        }
        if (av__tls_is_client_hello(av__buf_head(c->a.pin), 1)) {
            av_buf *cin, *cout;
            av_tls *t = NULL;
            av__side_tls_bufs(&c->a, &cin, &cout);
            const char *host = c->ctx->proxy_names[0];
            if (av__tls_server_new(&t, c->ctx->tls_srv, host, c->ctx->proxy_names + 1, cin, cout) != AV_OK ||
                av__side_push_tls(&c->a, t) != AV_OK) {
                c->state = C_CLOSING;
                c->a.want_shut = 1;
                return 1;
            }
        }
        c->state = C_PROXY_HEAD;
        return 1;
    }
    case C_PROXY_HEAD:
    case C_TUNNEL_HEAD:
        return conn_read_head(c);
    case C_TUNNEL_SNIFF:
        return conn_tunnel_sniff(c);
    case C_EXCHANGE:
        return x_step(c);
    case C_OPAQUE:
        return conn_opaque_step(c);
    default:
        return 0;
    }
}

/* ---- the pump ----------------------------------------------------------- */

static void conn_on_io(void *ud, int revents)
{
    av_conn *c = ud;
    if (revents & AV_EV_READ)
        c->a.readable = 1;
    conn_proceed(c);
}

static void conn_on_timer(void *ud)
{
    av_conn *c = ud;
    av__log(&c->ctx->log, AV_LOG_DEBUG, "connection peer=%s timed out in state %d", c->peer, c->state);
    if ((c->state == C_PROXY_HEAD || c->state == C_TUNNEL_HEAD) && c->a.pin->len > 0)
        conn_respond(c, 408, "request header timeout", 0, 1); /* then close after the flush */
    else
        c->dead = 1;
    conn_proceed(c); /* may free |c|: nothing after this */
}

static void conn_arm_timer(av_conn *c)
{
    const av_config *cfg = c->ctx->cfg;
    double now = av__loop_now(c->ctx->loop);
    double t = cfg->idle_timeout;
    if ((c->state == C_PROXY_HEAD || c->state == C_TUNNEL_HEAD || c->state == C_SNIFF ||
         c->state == C_TUNNEL_SNIFF) && c->head_start > 0) {
        t = c->head_start + cfg->header_timeout - now;
        if (t < 0.001)
            t = 0.001;
    } else if (c->state == C_SNIFF || c->state == C_TUNNEL_SNIFF || av__side_handshaking(&c->a)) {
        t = cfg->header_timeout;
    } else if (c->state == C_EXCHANGE && c->x.ws_open) {
        t = cfg->ws_idle_timeout;
    } else if (c->state == C_CLOSING) {
        t = 5.0; /* linger for the last bytes, then drop */
    }
    av__timer_start(c->timer, t);
}

static void conn_free(av_conn *c)
{
    av_ctx *ctx = c->ctx;
    if (c->x.up) {
        av__upstream_release(c->x.up, 0);
        c->x.up = NULL;
    }
    if (c->opaque_up)
        av__upstream_release(c->opaque_up, 0);
    x_reset(&c->x);
    av__timer_free(c->timer);
    av__side_free(&c->a, 1);
    if (c->prev)
        c->prev->next = c->next;
    else
        ctx->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ctx->nconns--;
    av__free(c);
    av__ctx_conn_gone(ctx);
}

/* The pump. It may free |c| (when the connection is done): callers must not
 * touch |c| after calling it. */
static void conn_proceed(av_conn *c)
{
    if (c->in_proceed)
        return; /* re-entered from an upstream notification: the loop below continues */
    c->in_proceed = 1;
    for (int rounds = 0; rounds < 1000 && !c->dead; rounds++) {
        int progress = 0;
        int rc = av__side_pump_in(&c->a);
        if (rc < 0) {
            if (c->state == C_SNIFF || c->state == C_TUNNEL_SNIFF || av__side_handshaking(&c->a) ||
                c->state == C_TUNNEL_HEAD || c->state == C_PROXY_HEAD)
                av__log(&c->ctx->log, AV_LOG_INFO, "connection peer=%s%s%s closed: %s", c->peer,
                        c->in_tunnel ? " host=" : "", c->in_tunnel ? c->dest.host : "", c->a.errmsg);
            c->dead = 1;
            break;
        }
        progress |= rc;
        if (c->state != C_CLOSING)
            progress |= conn_step(c);
        if (c->dead)
            break;
        rc = av__side_pump_out(&c->a);
        if (rc < 0) {
            c->dead = 1;
            break;
        }
        progress |= rc;
        if (c->state == C_CLOSING && av__side_flushed(&c->a) && (c->a.shut_wr || c->a.err)) {
            c->dead = 1;
            break;
        }
        if (c->state == C_CLOSING && !c->a.want_shut) {
            av__side_close_write(&c->a);
            progress = 1;
        }
        if (!progress)
            break;
    }
    c->in_proceed = 0;
    if (c->dead) {
        conn_free(c);
        return;
    }
    int ev = av__side_events(&c->a);
    /* Back-pressure: do not read more from the agent while its plaintext
     * buffer is full or an exchange waits for the upstream. */
    if (av__buf_room(c->a.pin) == 0 && av__buf_room(&c->a.raw_in) == 0)
        ev &= ~AV_EV_READ;
    av__io_set(c->a.io, ev);
    av_upconn *up = c->state == C_EXCHANGE ? c->x.up : c->state == C_OPAQUE ? c->opaque_up : NULL;
    if (up && up->side.io) {
        int uev = av__side_events(&up->side);
        if (up->state == AV_UP_CONNECTING)
            uev = AV_EV_WRITE;
        av__io_set(up->side.io, uev);
    }
    conn_arm_timer(c);
}

/* ---- lifecycle ---------------------------------------------------------- */

int av__conn_accept(av_ctx *ctx, int fd, const struct sockaddr *peer, socklen_t len)
{
    (void)len;
    av_conn *c = av__calloc(1, sizeof(*c));
    if (!c)
        return AV_ERR_NOMEM;
    c->ctx = ctx;
    c->token = -1;
    c->state = C_SNIFF;
    av__side_init(&c->a, fd, AV_RAW_BUF_MAX, AV_PLAIN_BUF_MAX);
    c->a.io = av__io_new(ctx->loop, fd, conn_on_io, c);
    c->timer = av__timer_new(ctx->loop, conn_on_timer, c);
    if (!c->a.io || !c->timer) {
        av__io_free(c->a.io);
        av__timer_free(c->timer);
        av__free(c);
        return AV_ERR_NOMEM;
    }
    char ip[INET6_ADDRSTRLEN] = "?";
    if (peer->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)peer)->sin_addr, ip, sizeof(ip));
    else if (peer->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)peer)->sin6_addr, ip, sizeof(ip));
    snprintf(c->peer, sizeof(c->peer), "%s", ip);
    c->next = ctx->conns;
    if (ctx->conns)
        ctx->conns->prev = c;
    ctx->conns = c;
    ctx->nconns++;
    c->a.readable = 1;
    conn_proceed(c);
    return AV_OK;
}

/* Mark one connection as draining; idle ones close at once. The caller
 * must not touch |c| afterwards (it may be freed). */
static void conn_drain(av_conn *c)
{
    c->draining = 1;
    if (c->state != C_EXCHANGE && c->state != C_OPAQUE && c->a.pin->len == 0 && !c->x.active) {
        c->state = C_CLOSING;
        av__side_close_write(&c->a);
    }
    conn_proceed(c);
}

void av__conn_drain_all(av_ctx *ctx)
{
    size_t n = ctx->nconns;
    if (n == 0)
        return;
    av_conn **list = av__calloc(n, sizeof(*list));
    if (!list) {
        for (av_conn *c = ctx->conns; c; c = c->next)
            c->draining = 1;
        return;
    }
    size_t k = 0;
    for (av_conn *c = ctx->conns; c && k < n; c = c->next)
        list[k++] = c;
    for (size_t i = 0; i < k; i++)
        conn_drain(list[i]);
    av__free(list);
}

void av__conn_destroy(av_conn *c)
{
    if (c->in_proceed) {
        c->dead = 1;
        return;
    }
    conn_free(c);
}
