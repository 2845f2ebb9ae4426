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
 *                MITM TLS negotiated ALPN h2 ──▶ H2 (one exchange per stream)
 *
 * conn_proceed() is the only function that moves bytes: it loops over
 * "read sockets, run TLS layers, run the protocol step, write sockets"
 * until nothing progresses, then sets watcher interest from the buffers.
 * Every buffer is bounded, so a slow side stops reads on the other.
 *
 * An exchange is one request/response. Its agent side is HTTP/1.1 (the
 * connection's single exchange, c->x) or an HTTP/2 stream (c->xs). Its
 * upstream side is an HTTP/1.1 connection of its own (L_H1) or a stream on
 * a shared HTTP/2 connection (L_MUX, av_mux.c). The request is kept as a
 * protocol-neutral copy (x->rq: method, target, fields with the credential
 * injected) until the upstream's protocol is known, then serialized for
 * it; bodies are moved by one source→sink loop per direction, so every
 * combination (h1/h2 agent × h1/h2 upstream) shares the same code.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_crypto.h"
#include "av_ctx_internal.h"
#include "av_h1.h"
#include "av_h2.h"
#include "av_mem.h"
#include "av_mux.h"
#include "av_policy.h"
#include "av_scrub.h"
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
    C_H2,
    C_GW_SNIFF,   /* gateway: HTTP/1.1, or the HTTP/2 preface (prior knowledge) */
    C_CLOSING
};

/* How an exchange reaches its upstream. */
enum { L_NONE = 0, L_H1, L_MUX };

/* Request body framing, protocol-neutral. */
enum { RB_NONE = 0, RB_LENGTH, RB_UNKNOWN };

/* Response body framing toward the agent. */
enum { RK_NONE = 0, RK_LENGTH, RK_UNKNOWN };

typedef struct rq_field {
    uint32_t no, nl, vo, vl;
} rq_field;

typedef struct av_exchange av_exchange;

/* One request/response exchange. */
struct av_exchange {
    av_conn *c;
    av_snap *snap;            /* the configuration it started with (x_begin); its own reference */
    int token;                /* the proxy token's index in snap->cfg->tokens, -1 */
    av_exchange *next, *prev; /* HTTP/2 agent: the connection's list */
    int32_t sid;              /* agent HTTP/2 stream id; 0 for HTTP/1.1 */
    int active;
    int done;                 /* HTTP/2 agent: finished, free it */
    char method[24];
    int is_head;
    char host[AV_HOST_MAX + 8];
    char log_path[256];       /* path without query, for logs */
    const av_service *svc;
    /* The upstream request, protocol-neutral (may hold the credential). */
    av_buf rq;
    rq_field rqf[X_RQ_FIELDS];
    size_t nrqf;
    uint32_t m_off, m_len, t_off, t_len;
    const char *inj_name;     /* the injected field: never indexed in HPACK */
    int inj_alt;              /* inject the service's auth_alt form (the agent sent its header) */
    av_resolver_wait *swait;  /* the credential is being resolved (command:) */
    int secret_ready;         /* ... and its answer is in: inject now */
    int req_framing;          /* RB_* */
    uint64_t req_len;
    char hostval[AV_HOST_MAX + 16];
    av_authority dest;
    int dest_tls;
    char scope[200];
    /* request body */
    av_h1_body req_body;      /* HTTP/1.1 agent: decoder over c->a.pin */
    int req_out_chunked;
    int req_ended;            /* the upstream has been told the body ended */
    int req_done;             /* the agent's body is complete */
    av_buf a_rx;              /* HTTP/2 agent: DATA not yet passed on */
    int a_end, a_closed;
    uint32_t a_error;
    av_buf a_tx;              /* HTTP/2 agent, WebSocket: bytes toward the agent */
    int a_tx_ended;
    /* upstream */
    int link;                 /* L_* */
    av_upconn *up;
    av_mux_stream ms;
    int retries;
    int head_sent;
    /* response */
    av_h1_scan rscan;
    int resp_head_done;
    av_h1_body resp_body;
    int resp_kind;            /* RK_* toward the agent */
    int resp_out_chunked;
    int resp_out_close;       /* response delimited by closing the agent side */
    int resp_done;
    int status;
    int up_reusable;
    int agent_minor;
    unsigned long long bytes_req, bytes_resp;
    double start;
    /* WebSocket */
    int expect_continue;      /* HTTP/1.1 agent sent Expect: 100-continue */
    int retry_after;          /* 429: seconds for Retry-After */
    int injected;             /* the credential was added to the request */
    unsigned ph_found;        /* AV_SURF_* where the agent used the placeholder */
    /* Response scrubbing (SECURITY 11): the injected secret never reaches
     * the agent, not even echoed back. */
    av_secret *scrub_secret;  /* set once a secret was injected */
    av_scrub_set *scrub_set;  /* its compiled patterns (shared, cached per snapshot) */
    av_scrub *scrub;          /* the body scrubber, once the response head is known */
    av_buf scrub_in;          /* decoded body bytes waiting for the scrubber */
    av_buf scrub_out;         /* scrubbed bytes waiting for room toward the agent */
    int body_ended;           /* the upstream body is complete */
    /* Request bodies checked for the placeholder (JSON and form bodies of a
     * service with one): collected whole (bounded), then replaced and sent
     * with a recomputed Content-Length. */
    int body_buffer;          /* 1: JSON, 2: form */
    int body_collected;
    av_buf bbuf;
    av_secret *ph_secret;
    int scrub_finished;
    unsigned long redactions; /* secrets scrubbed from the response */
    int ws;                   /* the request is a WebSocket upgrade / extended CONNECT */
    int ws_frame;             /* frame mode (placeholder substitution) */
    int ws_open;              /* 101 relayed: relaying frames/bytes */
    int logged;               /* its one log line has been written */
    int end;                  /* AV_END_*: how it ended, once known */
    char ws_key[32];          /* Sec-WebSocket-Key sent upstream */
    av_secret *ws_secret;     /* frame mode: replaces the placeholder */
    av_ws_bridge *ws_bridge;
    /* Trailers (gRPC's status lives in them): checked like heads, kept
     * until the body in their direction has been passed on. */
    int te_trailers;          /* the agent sent TE: trailers: so does the upstream request */
    av_h1_fields req_tr;      /* request trailers, waiting for the end of the body */
    int req_tr_err;           /* HTTP/2 agent: its trailers were refused (AV_ERR_*) */
    av_h1_fields resp_tr;     /* response trailers (scrubbed), sent after the body */
    av_h1_scan req_tscan;     /* HTTP/1.1 trailer sections being scanned (one */
    av_h1_scan resp_tscan;    /* per direction: both may be pending at once) */
    int ws_scrub;             /* scrub mode: upstream frames parsed and scrubbed */
    int ws_pmd_offer;         /* scrub mode: the agent offered permessage-deflate */
    int ws_pmd;               /* scrub mode: the upstream accepted it */
    av_ws_scrub *ws_scrubber;
    unsigned long ws_scrub_seen; /* its redactions already counted */
};

struct av_conn {
    av_ctx *ctx;
    av_snap *snap;           /* the configuration this connection started with */
    av_conn *next, *prev;
    av_side a;
    int state;
    int in_tunnel;           /* requests go to |dest| */
    av_authority dest;
    int dest_tls;            /* MITM TLS inside the tunnel */
    int alpn_checked;
    int token;               /* index of the authenticated proxy token, -1 */
    int revoked;             /* that token is gone since a reload: refuse everything */
    av_h1_scan scan;
    double head_start;       /* when the first byte of a head arrived, 0 if none */
    av_timer *timer;
    int close_after;         /* close once the current response is out */
    int draining;
    int dead;
    int in_proceed;
    int again;               /* notified while in conn_proceed: loop again */
    av_exchange x;           /* HTTP/1.1 agent: the current exchange */
    av_h2 *h2;               /* HTTP/2 agent: the server session */
    av_exchange *xs;         /* HTTP/2 agent: one exchange per stream */
    size_t nxs;
    int h2_goaway;           /* GOAWAY submitted (drain) */
    av_upconn *opaque_up;
    av_gw *gw;               /* a gateway connection: every request goes to gw->dest */
    int end;                 /* AV_END_* for exchanges still open when it dies */
    /* The last request head, for the record of a refusal that comes
     * before any exchange began (never a query or an unchecked target). */
    char head_method[24];
    char head_host[AV_HOST_MAX + 8];
    char head_path[256];
    int lingering;           /* closed our side: discarding what the agent still sends */
    double linger_until;
    size_t linger_budget;
    char peer[64];
};

static void conn_proceed(av_conn *c);
static void x_log(av_exchange *x, const char *error);
static void x_audit(av_exchange *x, const char *error, double ms);
static void x_reset(av_exchange *x);
static void conn_record_refusal(av_conn *c, int status, const char *reason);

/* Lingering close: LINGER_SECONDS, LINGER_MAX_BYTES (av_limits.h). */
static const av_h1_limits head_limits = {AV_HEAD_MAX, AV_FIELDS_MAX};

/* ---- small helpers ------------------------------------------------------ */

/* copy_str copies (p, n) into dst as a string, truncating to fit. Hot
 * paths use it instead of snprintf. */
static void copy_str(char *dst, size_t cap, const char *p, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, p, n);
    dst[n] = '\0';
}

/* u64_dec writes |v| in decimal (at most 20 digits and a NUL). */
static void u64_dec(char *out, uint64_t v)
{
    char t[24];
    size_t k = 0;
    do {
        t[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t i = 0;
    while (k)
        out[i++] = t[--k];
    out[i] = '\0';
}

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

/* error_text makes the one-line reason (control characters removed) and
 * the body of a proxy-made error: the reason and a newline, or JSON.
 * |reason| holds 300 bytes, |body| 700. */
static void error_text(int status, const char *reason_text, int json, char reason[300], char body[700])
{
    sanitize_line(reason, 300, reason_text ? reason_text : "");
    if (!json) {
        snprintf(body, 700, "%s\n", reason);
        return;
    }
    char esc[600];
    size_t j = 0;
    for (size_t i = 0; reason[i] && j + 2 < sizeof(esc); i++) {
        if (reason[i] == '"' || reason[i] == '\\')
            esc[j++] = '\\';
        esc[j++] = reason[i];
    }
    esc[j] = '\0';
    snprintf(body, 700, "{\"error\":\"%s\",\"status\":%d}\n", esc, status);
}

/* A refusal before any exchange began (proxy authentication, a malformed
 * or oversized head, a misdirected request) is an exchange too: its audit
 * record and count (SECURITY 18); its one log line is the "refused" line.
 * Method, host and path come from the head if it parsed and checked out,
 * else "-". */
static void conn_record_refusal(av_conn *c, int status, const char *reason)
{
    av_exchange *x = &c->x;
    x_reset(x);
    x->start = av__loop_now(c->ctx->loop);
    snprintf(x->method, sizeof(x->method), "%s", c->head_method[0] ? c->head_method : "-");
    if (c->head_host[0])
        snprintf(x->host, sizeof(x->host), "%s", c->head_host);
    else if (c->in_tunnel)
        av__authority_format(&c->dest, 0, x->host, sizeof(x->host));
    else
        snprintf(x->host, sizeof(x->host), "-");
    snprintf(x->log_path, sizeof(x->log_path), "%s", c->head_path[0] ? c->head_path : "-");
    x->status = status;
    x->end = AV_END_REFUSED;
    x_audit(x, reason, 0.0);
    av__ctx_count_exchange(c->ctx, NULL, status);
    c->ctx->m_ends[AV_END_REFUSED]++;
    x_reset(x);
}

/* Queue a complete response generated by the proxy. Errors carry
 * X-Agentvault-Error and a one-line body; |json| selects a JSON body. */
static void conn_respond(av_conn *c, int status, const char *reason_text, int json, int close)
{
    char reason[300], body[700];
    error_text(status, reason_text, json, reason, body);
    av_buf *o = c->a.pout;
    av__h1_write_status_line(o, status, av__h1_reason(status));
    av__h1_write_field_str(o, "Content-Type", json ? "application/json" : "text/plain; charset=utf-8");
    if (status >= 400)
        av__h1_write_field_str(o, "X-Agentvault-Error", reason);
    if (status == 407)
        av__h1_write_field_str(o, "Proxy-Authenticate", "Basic realm=\"agentvault\"");
    if (status == 429 && c->x.retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", c->x.retry_after);
        av__h1_write_field_str(o, "Retry-After", ra);
    }
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
    if (status >= 400 && c->x.active) {
        x_log(&c->x, reason); /* the exchange's one line, with the reason */
    } else if (status >= 400) {
        av__log(&c->ctx->log, AV_LOG_INFO, "refused peer=%s status=%d reason=\"%s\"", c->peer, status, reason);
        conn_record_refusal(c, status, reason);
    }
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
        c->ctx->m_limit_head++;
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
    match = av__snap_find_token(c->snap, tok, toklen, (long long)time(NULL));
    av__wipe(dec, sizeof(dec));
    return match;
}

/* 0 if authorized (or no tokens configured); else a 407 was queued. */
static int conn_authorize(av_conn *c, const av_h1_request *req)
{
    if (c->snap->cfg->ntokens == 0 && !c->snap->cfg->token_store)
        return 0;
    int t = conn_check_token(c, req);
    if (t < 0) {
        conn_respond(c, 407, "proxy authentication required: use http://agent:TOKEN@proxy", 0, 1);
        return -1;
    }
    c->token = t;
    return 0;
}

/* A reload happened since this connection last looked: move it to the
 * current configuration between requests (exchanges in flight keep their
 * own snapshot), so revoked tokens and new services apply to keep-alive
 * and multiplexed connections too. A proxy token that authenticated the
 * connection (a CONNECT tunnel) must still exist with the same secret and
 * not have expired; otherwise -1 and the connection keeps nothing. */
static int conn_refresh_snap(av_conn *c)
{
    av_snap *cur = c->ctx->snap;
    if (c->snap == cur)
        return 0;
    int tok = -1;
    if (c->token >= 0) {
        tok = av__snap_carry_token(c->snap, c->token, cur, (long long)time(NULL));
        if (tok < 0) {
            c->revoked = 1; /* sticky: the connection never works again */
            return -1;
        }
    }
    av__snap_unref(c->snap);
    c->snap = av__snap_ref(cur);
    c->token = tok;
    return 0;
}

#define TOKEN_REVOKED "the proxy token of this connection was revoked or changed: reconnect"

/* A gateway with a token: the request must carry X-Agentvault-Token with
 * it (compared in constant time). Returns 1 if allowed. */
static int gw_token_ok(av_conn *c, const av_h1_field *fields, size_t nfields)
{
    if (!c->gw || c->gw->cfg_index < 0 || !c->snap->gw_tokens || !c->snap->gw_tokens[c->gw->cfg_index])
        return 1;
    const av_h1_field *f = av__h1_find(fields, nfields, "x-agentvault-token");
    return f && av__secret_equal(c->snap->gw_tokens[c->gw->cfg_index], (const uint8_t *)f->value, f->value_len);
}

#define GW_TOKEN_REFUSED "gateway token required: send X-Agentvault-Token"


/* ---- exchanges: lifecycle ------------------------------------------------ */

static void up_notify_cb(void *owner)
{
    av_conn *c = owner;
    if (c->in_proceed) {
        c->again = 1; /* the running pump loops once more */
        return;
    }
    conn_proceed(c);
}

/* Give up the upstream link: HTTP/1.1 connections back to the pool when
 * |reusable|, HTTP/2 streams detached (cancelled if still running). */
static void x_unlink_upstream(av_exchange *x, int reusable)
{
    if (x->up) {
        av__upstream_release(x->up, reusable);
        x->up = NULL;
    }
    if (x->ms.state != AV_MS_IDLE)
        av__mux_detach(&x->ms);
    /* x->link stays: the log line names the protocol that was used */
}

static void x_reset(av_exchange *x)
{
    av_conn *c = x->c;
    av_exchange *next = x->next, *prev = x->prev;
    int32_t sid = x->sid;
    x_unlink_upstream(x, 0);
    av__resolver_cancel(x->swait);
    av__buf_free_wipe(&x->rq);
    av__buf_free_wipe(&x->a_rx);
    av__buf_free_wipe(&x->a_tx);
    av__secret_free(x->ws_secret);
    av__ws_bridge_free(x->ws_bridge);
    av__ws_scrub_free(x->ws_scrubber);
    av__secret_free(x->scrub_secret);
    av__scrub_set_unref(x->scrub_set);
    av__secret_free(x->ph_secret);
    av__buf_free_wipe(&x->bbuf);
    av__scrub_free(x->scrub);
    av__buf_free_wipe(&x->scrub_in);
    av__buf_free_wipe(&x->scrub_out);
    av__h1_fields_free(&x->req_tr);
    av__h1_fields_free(&x->resp_tr);
    av__snap_unref(x->snap); /* after the resolver wait, which belongs to it */
    memset(x, 0, sizeof(*x));
    x->c = c;
    x->next = next;
    x->prev = prev;
    x->sid = sid;
}

/* The name of the proxy token an exchange runs under, or NULL. */
static const char *x_token_name(const av_exchange *x)
{
    const av_snap *sn = x->snap ? x->snap : x->c->snap;
    int t = x->snap ? x->token : x->c->token;
    return t >= 0 ? sn->cfg->tokens[t].name : NULL;
}

/* JSON string body of |in| (quotes added by the caller); control and
 * non-ASCII bytes become \u00XX, so the record is always valid JSON. */
static size_t json_str(char *out, size_t cap, const char *in)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; in && in[i] && o + 7 < cap; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[ch >> 4];
            out[o + 5] = hex[ch & 15];
            o += 6;
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
    return o;
}

static const char *const end_names[AV_END_COUNT] = {
    "complete", "complete", "client_abort", "upstream_abort", "timeout", "refused", "error", "shutdown",
};

/* How an exchange ended, for its record: what was set on the way, else
 * judged from the error and the status sent. */
static int x_end(const av_exchange *x, const char *error)
{
    if (x->end)
        return x->end;
    if (!error)
        return AV_END_COMPLETE;
    return x->status >= 400 && x->status < 500 ? AV_END_REFUSED : AV_END_ERROR;
}

/* The audit record of an exchange: one JSON line, never a secret (the
 * path has no query; the credential is named by its reference). */
static void x_audit(av_exchange *x, const char *error, double ms)
{
    av_conn *c = x->c;
    av_ctx *ctx = c->ctx;
    if (!av__audit_on(&ctx->audit))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[80];
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    char tok[320] = "null", svc[320] = "null", cred[400] = "[]", err[500] = "null";
    char e1[300], e2[300];
    if (x_token_name(x)) {
        json_str(e1, sizeof(e1), x_token_name(x));
        snprintf(tok, sizeof(tok), "\"%s\"", e1);
    }
    if (x->svc) {
        json_str(e1, sizeof(e1), x->svc->name);
        snprintf(svc, sizeof(svc), "\"%s\"", e1);
        if (x->injected) {
            /* command: references may carry arguments: name the program only */
            const char *ref = x->svc->secret_ref;
            char shown[200];
            if (strncmp(ref, "command:", 8) == 0)
                snprintf(shown, sizeof(shown), "command:%.*s", (int)strcspn(ref + 8, " \t"), ref + 8);
            else
                snprintf(shown, sizeof(shown), "%s", ref);
            json_str(e2, sizeof(e2), shown);
            snprintf(cred, sizeof(cred), "[\"%s\"]", e2);
        }
    }
    if (error) {
        json_str(e1, sizeof(e1), error);
        snprintf(err, sizeof(err), "\"%s\"", e1);
    }
    char method[64], host[AV_HOST_MAX * 2 + 16], path[600];
    json_str(method, sizeof(method), x->method);
    json_str(host, sizeof(host), x->host);
    json_str(path, sizeof(path), x->log_path);
    char gw[200] = "null";
    if (c->gw) {
        json_str(e1, sizeof(e1), c->gw->name);
        snprintf(gw, sizeof(gw), "\"%.150s\"", e1);
    }
    char line[3300];
    int n = snprintf(line, sizeof(line),
                     "{\"time\":\"%s\",\"token\":%s,\"gateway\":%s,\"service\":%s,\"method\":\"%s\",\"host\":\"%s\","
                     "\"path\":\"%s\",\"status\":%d,\"bytes_up\":%llu,\"bytes_down\":%llu,\"ms\":%.1f,"
                     "\"proto\":\"%s>%s\",\"injected\":%s,\"redactions\":%lu,\"end\":\"%s\",\"error\":%s}\n",
                     when, tok, gw, svc, method, host, path, x->status, x->bytes_req, x->bytes_resp, ms,
                     x->sid ? "h2" : "h1", x->link == L_MUX ? "h2" : x->link == L_H1 ? "h1" : "-", cred,
                     x->redactions, end_names[x_end(x, error)], err);
    if (n > 0 && (size_t)n < sizeof(line))
        av__ctx_audit(ctx, line, (size_t)n);
}

/* Write the exchange's one log line (never a secret: the path has no
 * query, the error is a proxy-made reason), its audit record, and count
 * it for /metrics. */
static void x_log(av_exchange *x, const char *error)
{
    av_conn *c = x->c;
    av_ctx *ctx = c->ctx;
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
    const char *up = x->link == L_MUX ? "h2" : x->link == L_H1 ? "h1" : "-";
    char red[40] = "";
    if (x->redactions)
        snprintf(red, sizeof(red), " redactions=%lu", x->redactions);
    av__log(&ctx->log, error ? AV_LOG_WARN : AV_LOG_INFO,
            "exchange method=%s host=%s path=%s service=%s status=%d bytes_up=%llu bytes_down=%llu ms=%.1f "
            "proto=%s>%s%s%s%s end=%s%s",
            x->method, x->host, x->log_path, x->svc ? x->svc->name : "-", x->status, x->bytes_req,
            x->bytes_resp, ms, x->sid ? "h2" : "h1", up, x_token_name(x) ? " token=" : "",
            x_token_name(x) ? x_token_name(x) : "", red, end_names[x_end(x, error)], err);
    x->logged = 1;
    x_audit(x, error, ms);
    av__ctx_count_exchange(ctx, x->svc ? x->svc->name : NULL, x->status);
    ctx->m_ends[x_end(x, error)]++;
}

/* Finish the current exchange: log it, return the upstream, and (HTTP/1.1
 * agent) go back to reading heads or close. */
static void x_finish(av_exchange *x, const char *error)
{
    av_conn *c = x->c;
    av_ctx *ctx = c->ctx;
    if (!x->logged)
        x_log(x, error);
    ctx->exchanges++;
    x_unlink_upstream(x, x->up_reusable && x->req_done && x->resp_done && x->req_ended);
    if (x->sid) {
        if (!x->resp_done && !x->a_closed)
            av__h2_reset_stream(c->h2, x->sid, 2 /* INTERNAL_ERROR */);
        x->active = 0;
        x->done = 1;
        return;
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

/* An error response on an HTTP/2 agent stream (the connection stays). */
static void x_respond_h2(av_exchange *x, int status, const char *reason_text, int json)
{
    av_conn *c = x->c;
    char reason[300], body[700];
    error_text(status, reason_text, json, reason, body);
    char cl[32];
    snprintf(cl, sizeof(cl), "%zu", strlen(body));
    av_h2_head h;
    memset(&h, 0, sizeof(h));
    h.status = status;
    h.content_length = -1;
    size_t n = 0;
#define ADDF(N, V) (h.fields[n].name = (N), h.fields[n].name_len = strlen(N), h.fields[n].value = (V), \
                    h.fields[n].value_len = strlen(V), n++)
    ADDF("content-type", json ? "application/json" : "text/plain; charset=utf-8");
    ADDF("x-agentvault-error", reason);
    ADDF("content-length", cl);
    char ra[16];
    snprintf(ra, sizeof(ra), "%d", x->retry_after);
    if (status == 429 && x->retry_after > 0)
        ADDF("retry-after", ra);
#undef ADDF
    h.nfields = n;
    x->status = status;
    if (av__h2_submit_response(c->h2, x->sid, &h, x->is_head) == 0 && !x->is_head) {
        av__h2_send_data(c->h2, x->sid, (const uint8_t *)body, strlen(body));
        av__h2_end_stream(c->h2, x->sid);
    }
    x->resp_head_done = 1;
    x->resp_done = 1;
    if (x->active)
        x_log(x, reason);
}

/* Answer an exchange with a proxy-made error: HTTP/1.1 closes the
 * connection after it; HTTP/2 answers the stream only. */
static void x_respond(av_exchange *x, int status, const char *why, int json)
{
    x->status = status;
    if (!x->end)
        x->end = status < 500 ? AV_END_REFUSED : AV_END_ERROR;
    if (x->sid)
        x_respond_h2(x, status, why, json);
    else
        conn_respond(x->c, status, why, json, 1);
}

/* x_fail_end judges how a failing exchange ended: the upstream went away
 * after the request was sent (502), a timeout of ours (504), the SSRF
 * guard (403), or another error. */
static int x_fail_end(const av_exchange *x, int status)
{
    if (status == 504)
        return AV_END_TIMEOUT;
    if (status == 403)
        return AV_END_REFUSED;
    if (status == 502) {
        if (x->up && x->head_sent && (x->up->side.in_eof || x->up->side.err))
            return AV_END_UPSTREAM_ABORT;
        if (x->link == L_MUX && x->ms.state == AV_MS_OPEN && x->ms.closed)
            return AV_END_UPSTREAM_ABORT;
    }
    return AV_END_ERROR;
}

/* Abort: if nothing was sent to the agent yet, answer |status|; else cut. */
static void x_fail(av_exchange *x, int status, const char *why)
{
    av_conn *c = x->c;
    if (!x->end)
        x->end = x_fail_end(x, status);
    x->up_reusable = 0;
    x_unlink_upstream(x, 0);
    if (x->sid) {
        if (!x->resp_head_done && !x->a_closed) {
            x_respond_h2(x, status, why, 0);
        } else if (!x->a_closed) {
            av__h2_reset_stream(c->h2, x->sid, 2 /* INTERNAL_ERROR */);
            x->resp_done = 1;
        }
        x->req_done = 1;
        x->resp_done = 1;
        x_finish(x, why);
        return;
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
    x_finish(x, why);
    c->state = C_CLOSING;
}

/* ---- exchanges: the request ---------------------------------------------- */

static const char *rq_ptr(const av_exchange *x, uint32_t off)
{
    return (const char *)av__buf_head(&x->rq) + off;
}

static int rq_put(av_exchange *x, const char *p, size_t n, uint32_t *off)
{
    *off = (uint32_t)x->rq.len;
    return n ? av__buf_append(&x->rq, p, n) : AV_OK;
}

static int rq_add(av_exchange *x, const char *name, size_t nl, const char *value, size_t vl)
{
    if (x->nrqf >= X_RQ_FIELDS)
        return AV_ERR_LIMIT;
    rq_field *f = &x->rqf[x->nrqf];
    if (rq_put(x, name, nl, &f->no) || rq_put(x, value, vl, &f->vo))
        return AV_ERR_LIMIT;
    f->nl = (uint32_t)nl;
    f->vl = (uint32_t)vl;
    x->nrqf++;
    return AV_OK;
}

/* Views of the stored request fields. */
static size_t rq_fields(const av_exchange *x, av_h1_field *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < x->nrqf && n < max; i++, n++) {
        out[n].name = rq_ptr(x, x->rqf[i].no);
        out[n].name_len = x->rqf[i].nl;
        out[n].value = rq_ptr(x, x->rqf[i].vo);
        out[n].value_len = x->rqf[i].vl;
    }
    return n;
}

/* A request as either agent protocol delivered it. */
typedef struct x_req_in {
    const char *method;
    size_t method_len;
    const char *target; /* origin-form */
    size_t target_len;
    const av_h1_field *fields;
    size_t nfields;
    int minor;          /* HTTP/1.x minor version; 1 for HTTP/2 */
    unsigned flags;     /* AV_H1_F_* (HTTP/1.1 agents) */
    int framing;        /* RB_* */
    uint64_t length;
    int ws;             /* WebSocket upgrade or extended CONNECT */
    const av_h1_field *ws_key; /* HTTP/1.1 upgrade: the agent's key */
} x_req_in;

/* Is this agent field one we never forward upstream? */
static int x_skip_request_field(const x_req_in *in, const av_h1_field *f, const char *inject_name,
                                const char *alt_name, int ws_parsed)
{
    if (ws_parsed && av__h1_name_eq(f, "sec-websocket-extensions"))
        return 1; /* frame and scrub modes read frames: the proxy makes the offer */
    if (av__h1_is_hop_by_hop(f, in->fields, in->nfields))
        return 1;
    if (av__h1_name_eq(f, "host") || av__h1_name_eq(f, "content-length") ||
        av__h1_name_eq(f, "transfer-encoding") || av__h1_name_eq(f, "proxy-authorization") ||
        av__h1_name_eq(f, "proxy-connection") || av__h1_name_eq(f, "x-agentvault-token"))
        return 1; /* ours: never forwarded */
    if (in->ws && !in->ws_key && av__h1_name_eq(f, "sec-websocket-key"))
        return 1; /* extended CONNECT has none; we make our own */
    if (inject_name && av__h1_name_eq(f, inject_name))
        return 1;
    if (alt_name && av__h1_name_eq(f, alt_name))
        return 1; /* the other credential header: its placeholder never reaches the origin */
    return 0;
}

static void b64_encode(const uint8_t *in, size_t len, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
}

static int x_choose_upstream(av_exchange *x);
static int x_inject(av_exchange *x);
static const char *inject_name_of(const av_service *svc);
static const char *alt_name_of(const av_service *svc);
static int x_find_placeholders(av_exchange *x);
static int x_limit_accept_encoding(av_exchange *x);

/* Match, inject and store the upstream request, then start reaching the
 * upstream. Returns 0, or -1 after answering the exchange with an error. */
static int x_begin(av_exchange *x, const x_req_in *in, const av_authority *dest, int dest_tls)
{
    av_conn *c = x->c;
    av_ctx *ctx = c->ctx;
    x->active = 1;
    if (!x->snap) {
        x->snap = av__snap_ref(c->snap);
        x->token = c->token;
    }
    x->start = av__loop_now(ctx->loop);
    copy_str(x->method, sizeof(x->method), in->method, in->method_len);
    x->is_head = ci_eq(in->method, in->method_len, "HEAD");
    x->dest = *dest;
    x->dest_tls = dest_tls;
    av__authority_format(dest, 0, x->host, sizeof(x->host));
    av__authority_format(dest, dest_tls ? 443 : 80, x->hostval, sizeof(x->hostval));
    size_t plen = 0;
    while (plen < in->target_len && in->target[plen] != '?')
        plen++;
    if (plen >= sizeof(x->log_path))
        plen = sizeof(x->log_path) - 1;
    memcpy(x->log_path, in->target, plen);
    x->log_path[plen] = '\0';
    x->agent_minor = in->minor;
    if (!x->sid && (in->flags & AV_H1_F_CLOSE))
        c->close_after = 1;
    x->expect_continue = !x->sid && (in->flags & AV_H1_F_EXPECT_CONTINUE) && in->minor >= 1;

    /* SECURITY 9: refuse TRACE, h2c upgrades and CONNECT inside a tunnel. */
    if (ci_eq(in->method, in->method_len, "TRACE")) {
        x_respond(x, 405, "TRACE is not allowed through agentvault", 0);
        return -1;
    }
    if (in->flags & AV_H1_F_UPGRADE_H2C) {
        x_respond(x, 400, "Upgrade: h2c is not allowed", 0);
        return -1;
    }
    if (in->flags & AV_H1_F_EXPECT_OTHER) {
        x_respond(x, 417, "only Expect: 100-continue is supported", 0);
        return -1;
    }

    /* Policy. An extended CONNECT is matched as the GET it replaces. */
    const char *mm = in->ws && x->sid ? "GET" : in->method;
    size_t mml = in->ws && x->sid ? 3 : in->method_len;
    const av_service *svc =
        av__policy_match(x->snap->cfg, !dest_tls, dest->host, dest->port, mm, mml, in->target, in->target_len);
    x->svc = svc;
    const av_token_cfg *tok = x->token >= 0 ? &x->snap->cfg->tokens[x->token] : NULL;
    int unmatched = tok && tok->unmatched ? tok->unmatched : x->snap->cfg->unmatched;
    if (!svc && unmatched == AV_UNMATCHED_DENY) {
        char m[AV_HOST_MAX + 120];
        if (tok && tok->unmatched)
            snprintf(m, sizeof(m), "no service matches %s and token %s has unmatched = deny", x->host, tok->name);
        else
            snprintf(m, sizeof(m), "no service matches %s and unmatched = deny", x->host);
        x_respond(x, 403, m, 1);
        return -1;
    }
    if (svc && tok && tok->nservices) {
        size_t i = 0;
        while (i < tok->nservices && strcmp(tok->services[i], svc->name) != 0)
            i++;
        if (i == tok->nservices) {
            char m[300];
            snprintf(m, sizeof(m), "token %s may not use service %s", tok->name, svc->name);
            ctx->m_limit_scope++;
            x_respond(x, 403, m, 1);
            return -1;
        }
    }
    if (tok && av__snap_rate_take(x->snap, x->token, av__loop_now(ctx->loop), &x->retry_after) != AV_OK) {
        ctx->m_limit_rate++;
        char m[200];
        snprintf(m, sizeof(m), "rate limit of token %s exceeded", tok->name);
        x_respond(x, 429, m, 0);
        return -1;
    }

    if (in->ws) {
        if (svc && svc->websocket_off) {
            char m[200];
            snprintf(m, sizeof(m), "WebSocket is off for service %s: use HTTP", svc->name);
            x_respond(x, 426, m, 0);
            return -1;
        }
        x->ws = 1;
        x->ws_frame = svc && (svc->placeholder_in & AV_SURF_WEBSOCKET);
        x->ws_scrub = svc && !x->ws_frame && !svc->websocket_scrub_off;
        for (size_t i = 0; i < in->nfields && x->ws_scrub; i++)
            if (av__h1_name_eq(&in->fields[i], "sec-websocket-extensions") &&
                av__ws_offers_deflate(in->fields[i].value, in->fields[i].value_len))
                x->ws_pmd_offer = 1;
        if (in->ws_key) {
            memcpy(x->ws_key, in->ws_key->value, in->ws_key->value_len);
            x->ws_key[in->ws_key->value_len] = '\0';
        } else {
            uint8_t rnd[16];
            if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
                x_respond(x, 500, "no randomness for the WebSocket key", 0);
                return -1;
            }
            b64_encode(rnd, sizeof(rnd), x->ws_key);
        }
    }

    /* Store: method, target, the agent's end-to-end fields (minus any copy
     * of the field we inject). Cookies an HTTP/2 agent split into several
     * fields are joined again (RFC 9113 8.2.3). The credential is added by
     * x_inject once it is resolved. */
    const char *inj_name = svc ? inject_name_of(svc) : NULL;
    const char *alt_name = svc ? alt_name_of(svc) : NULL;
    /* auth_alt: the credential goes in the header the agent used; the main
     * one when it sent both or neither. Every copy of both is dropped. */
    x->inj_alt = alt_name && !av__h1_find(in->fields, in->nfields, inj_name) &&
                 av__h1_find(in->fields, in->nfields, alt_name);
    x->inj_name = x->inj_alt ? alt_name : inj_name;
    /* TE is hop-by-hop, but "trailers" in it is end to end in effect: gRPC
     * origins refuse requests without it. Sent on by x_h1_request_out /
     * x_h2_request_out. */
    x->te_trailers = !in->ws && av__h1_te_trailers(in->fields, in->nfields);
    av__buf_init(&x->rq, AV_HEAD_MAX + 8192);
    int rc = rq_put(x, in->method, in->method_len, &x->m_off);
    x->m_len = (uint32_t)in->method_len;
    if (!rc)
        rc = rq_put(x, in->target, in->target_len, &x->t_off);
    x->t_len = (uint32_t)in->target_len;
    size_t ncookies = 0;
    for (size_t i = 0; i < in->nfields && !rc; i++) {
        const av_h1_field *f = &in->fields[i];
        if (x_skip_request_field(in, f, inj_name, alt_name, x->ws_frame || x->ws_scrub))
            continue;
        if (x->sid && av__h1_name_eq(f, "cookie")) {
            ncookies++;
            continue;
        }
        rc = rq_add(x, f->name, f->name_len, f->value, f->value_len);
    }
    if (!rc && ncookies) {
        /* name and the joined value, stored contiguously */
        if (x->nrqf >= X_RQ_FIELDS) {
            rc = AV_ERR_LIMIT;
        } else {
            rq_field *cf = &x->rqf[x->nrqf];
            rc = rq_put(x, "cookie", 6, &cf->no);
            cf->nl = 6;
            cf->vo = (uint32_t)x->rq.len;
            size_t vl = 0;
            for (size_t i = 0; i < in->nfields && !rc; i++) {
                const av_h1_field *f = &in->fields[i];
                if (!av__h1_name_eq(f, "cookie"))
                    continue;
                if (vl) {
                    rc = av__buf_append(&x->rq, "; ", 2);
                    vl += 2;
                }
                rc = rc ? rc : av__buf_append(&x->rq, f->value, f->value_len);
                vl += f->value_len;
            }
            cf->vl = (uint32_t)vl;
            x->nrqf++;
        }
    }
    if (rc) {
        x_respond(x, 431, "request header block too large after rewriting", 0);
        return -1;
    }
    if (svc && svc->placeholder && x_find_placeholders(x) != 0)
        return -1;
    if (svc && svc->placeholder && in->framing != RB_NONE && !in->ws) {
        for (size_t i = 0; i < x->nrqf; i++) {
            if (!(x->rqf[i].nl == 12 && strncasecmp(rq_ptr(x, x->rqf[i].no), "content-type", 12) == 0))
                continue;
            const char *v = rq_ptr(x, x->rqf[i].vo);
            size_t vl = x->rqf[i].vl;
            if ((vl >= 16 && strncasecmp(v, "application/json", 16) == 0) || memmem(v, vl, "+json", 5))
                x->body_buffer = 1;
            else if (vl >= 33 && strncasecmp(v, "application/x-www-form-urlencoded", 33) == 0)
                x->body_buffer = 2;
        }
        if (x->body_buffer)
            av__buf_init(&x->bbuf, X_BODY_BUFFER_MAX);
    }
    x->req_framing = in->framing;
    x->req_len = in->length;
    if (!x->sid) {
        int kind = in->framing == RB_LENGTH ? AV_H1_BODY_LENGTH
                   : in->framing == RB_UNKNOWN ? AV_H1_BODY_CHUNKED
                                              : AV_H1_BODY_NONE;
        av__h1_body_init(&x->req_body, kind, in->length);
        av__h1_body_want_trailers(&x->req_body);
        x->req_done = x->req_body.done; /* no body, or Content-Length: 0 */
    } else {
        x->req_done = x->a_end && x->a_rx.len == 0;
    }

    {
        /* "service/token": the credential scope of pooled connections */
        const char *sn = svc ? svc->name : "-";
        const char *tn = x->token >= 0 ? x->snap->cfg->tokens[x->token].name : "-";
        size_t sl = strlen(sn), tl = strlen(tn);
        if (sl + 1 + tl >= sizeof(x->scope)) {
            x_respond(x, 500, "credential scope name too long", 0);
            return -1;
        }
        memcpy(x->scope, sn, sl);
        x->scope[sl] = '/';
        memcpy(x->scope + sl + 1, tn, tl + 1);
    }
    if (!x->sid)
        c->state = C_EXCHANGE;
    return x_inject(x);
}

/* Where does the agent use the service's placeholder? Every use must be in
 * a surface the service declares (placeholder_in), else the request is
 * refused before anything is sent. Returns 0 or -1 (answered). */
static int x_find_placeholders(av_exchange *x)
{
    const av_service *svc = x->svc;
    const char *ph = svc->placeholder;
    size_t pl = strlen(ph);
    const char *where = NULL;
    char what[160] = "";
    for (size_t i = 0; i < x->nrqf; i++)
        if (memmem(rq_ptr(x, x->rqf[i].vo), x->rqf[i].vl, ph, pl)) {
            x->ph_found |= AV_SURF_HEADER;
            if (!(svc->placeholder_in & AV_SURF_HEADER) && !where) {
                where = "header";
                snprintf(what, sizeof(what), "field %.*s", (int)(x->rqf[i].nl < 64 ? x->rqf[i].nl : 64),
                         rq_ptr(x, x->rqf[i].no));
            }
        }
    const char *t = rq_ptr(x, x->t_off);
    const char *q = memchr(t, '?', x->t_len);
    size_t path_len = q ? (size_t)(q - t) : x->t_len;
    if (memmem(t, path_len, ph, pl)) {
        x->ph_found |= AV_SURF_PATH;
        if (!(svc->placeholder_in & AV_SURF_PATH) && !where) {
            where = "path";
            snprintf(what, sizeof(what), "the path");
        }
    }
    if (q && memmem(q, x->t_len - path_len, ph, pl)) {
        x->ph_found |= AV_SURF_QUERY;
        if (!(svc->placeholder_in & AV_SURF_QUERY) && !where) {
            where = "query";
            snprintf(what, sizeof(what), "the query");
        }
    }
    if (where) {
        char m[400];
        snprintf(m, sizeof(m), "placeholder of service %s found in %s, but placeholder_in does not include %s",
                 svc->name, what, where);
        x_respond(x, 403, m, 0);
        return -1;
    }
    return 0;
}

/* Percent-encode every byte of |s| outside RFC 3986 unreserved. */
static av_secret *pct_encode_secret(const av_secret *s)
{
    static const char hex[] = "0123456789ABCDEF";
    const uint8_t *d = av__secret_data(s);
    size_t n = av__secret_len(s);
    char *buf = av__malloc(n * 3 + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = d[i];
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
            ch == '.' || ch == '_' || ch == '~') {
            buf[o++] = (char)ch;
        } else {
            buf[o++] = '%';
            buf[o++] = hex[ch >> 4];
            buf[o++] = hex[ch & 15];
        }
    }
    av_secret *r = av__secret_new(buf, o);
    av__wipe(buf, n * 3 + 1);
    av__free(buf);
    return r;
}

/* Replace the placeholder in the stored request (declared surfaces only:
 * x_find_placeholders refused the rest). Returns 0, AV_ERR_INVALID (the
 * secret cannot go into a header) or AV_ERR_NOMEM / AV_ERR_LIMIT. */
static int x_replace_placeholders(av_exchange *x, const av_secret *secret)
{
    const char *ph = x->svc->placeholder;
    size_t pl = strlen(ph);
    int rc = 0;
    if (x->ph_found & AV_SURF_HEADER) {
        const uint8_t *d = av__secret_data(secret);
        for (size_t i = 0; i < av__secret_len(secret); i++)
            if (d[i] == '\r' || d[i] == '\n' || d[i] == 0)
                return AV_ERR_INVALID;
        for (size_t i = 0; i < x->nrqf && !rc; i++) {
            uint8_t *rep = NULL;
            size_t rl = 0;
            int r = av__subst_replace((const uint8_t *)rq_ptr(x, x->rqf[i].vo), x->rqf[i].vl, (const uint8_t *)ph,
                                      pl, d, av__secret_len(secret), AV_HEAD_MAX, &rep, &rl);
            if (r < 0)
                return r;
            if (r == 1) {
                rc = rq_put(x, (const char *)rep, rl, &x->rqf[i].vo);
                x->rqf[i].vl = (uint32_t)rl;
                av__wipe(rep, rl);
                av__free(rep);
            }
        }
    }
    if (!rc && (x->ph_found & (AV_SURF_PATH | AV_SURF_QUERY))) {
        av_secret *enc = pct_encode_secret(secret);
        if (!enc)
            return AV_ERR_NOMEM;
        uint8_t *rep = NULL;
        size_t rl = 0;
        int r = av__subst_replace((const uint8_t *)rq_ptr(x, x->t_off), x->t_len, (const uint8_t *)ph, pl,
                                  av__secret_data(enc), av__secret_len(enc), AV_HEAD_MAX, &rep, &rl);
        av__secret_free(enc);
        if (r < 0)
            return r;
        if (r == 1) {
            rc = rq_put(x, (const char *)rep, rl, &x->t_off);
            x->t_len = (uint32_t)rl;
            av__wipe(rep, rl);
            av__free(rep);
        }
    }
    return rc;
}

/* Responses are scrubbed, which works for gzip, deflate and identity
 * bodies only: offer the upstream nothing else (an agent asking for br or
 * zstd gets gzip/deflate or identity instead). */
static int x_limit_accept_encoding(av_exchange *x)
{
    for (size_t i = 0; i < x->nrqf; i++) {
        if (!(x->rqf[i].nl == 15 && strncasecmp(rq_ptr(x, x->rqf[i].no), "accept-encoding", 15) == 0))
            continue;
        const char *v = rq_ptr(x, x->rqf[i].vo);
        size_t vl = x->rqf[i].vl;
        int gz = memmem(v, vl, "gzip", 4) != NULL, df = memmem(v, vl, "deflate", 7) != NULL;
        const char *nv = gz && df ? "gzip, deflate" : gz ? "gzip" : df ? "deflate" : "identity";
        if (rq_put(x, nv, strlen(nv), &x->rqf[i].vo) != AV_OK)
            return -1;
        x->rqf[i].vl = (uint32_t)strlen(nv);
    }
    return 0;
}

/* The name of the field a service injects (NULL for query services). */
static const char *inject_name_of(const av_service *svc)
{
    switch (svc->auth) {
    case AV_AUTH_BEARER:
    case AV_AUTH_BASIC:
        return "Authorization";
    case AV_AUTH_HEADER:
        return svc->auth_name;
    default:
        return NULL;
    }
}

/* The name of the field of a service's auth_alt form (NULL: none). */
static const char *alt_name_of(const av_service *svc)
{
    switch (svc->auth_alt) {
    case AV_AUTH_BEARER:
    case AV_AUTH_BASIC:
        return "Authorization";
    case AV_AUTH_HEADER:
        return svc->auth_alt_name;
    default:
        return NULL;
    }
}

static void x_secret_ready(void *ud)
{
    av_exchange *x = ud;
    x->swait = NULL;
    x->secret_ready = 1;
    up_notify_cb(x->c);
}

/* Resolve the service's credential and add it to the stored request, then
 * reach the upstream. A command: source may answer later: the exchange
 * then waits (x->swait) and x_step calls this again. Returns 0, or -1
 * after answering with an error. */
static int x_inject(av_exchange *x)
{
    av_conn *c = x->c;
    av_ctx *ctx = c->ctx;
    const av_service *svc = x->svc;
    x->secret_ready = 0;
    if (!svc)
        return x_choose_upstream(x);
    av_secret *secret = NULL;
    char why[200];
    int rc = av__resolver_get_async(x->snap->resolver, svc->secret_ref, &secret, why, sizeof(why), x_secret_ready, x,
                                    &x->swait);
    if (rc == AV_ERR_AGAIN)
        return 0;
    if (rc) {
        char m[300];
        snprintf(m, sizeof(m), "credential for service %s unavailable: %s", svc->name, why);
        x_respond(x, 502, m, 0);
        return -1;
    }
    if (x->ph_found) {
        rc = x_replace_placeholders(x, secret);
        if (rc) {
            av__secret_free(secret);
            char m[200];
            snprintf(m, sizeof(m), rc == AV_ERR_INVALID
                                       ? "credential for service %s contains characters not allowed in a header"
                                       : "request too large after replacing the placeholder of service %s",
                     svc->name);
            x_respond(x, rc == AV_ERR_INVALID ? 502 : 431, m, 0);
            return -1;
        }
    }
    av_secret *inj_value = NULL, *inj_target = NULL;
    const char *inj_name = NULL;
    int irc = AV_OK;
    if (svc->auth == AV_AUTH_QUERY) {
        inj_target = av__inject_query(svc, secret, rq_ptr(x, x->t_off), x->t_len);
        irc = inj_target ? AV_OK : AV_ERR_NOMEM;
    } else if (x->inj_alt) {
        av_service alt = {.auth = svc->auth_alt, .auth_name = svc->auth_alt_name,
                          .auth_template = svc->auth_alt_template};
        irc = av__inject_header(&alt, secret, &inj_name, &inj_value);
    } else {
        irc = av__inject_header(svc, secret, &inj_name, &inj_value);
    }
    if (x->ws_frame)
        x->ws_secret = av__secret_ref(secret);
    if (av__secret_len(secret) <= AV_SCRUB_MAX_SECRET) {
        x->scrub_set = av__snap_scrub_set(x->snap, secret);
        if (x->scrub_set)
            x->scrub_secret = av__secret_ref(secret);
        else if (irc == AV_OK)
            irc = AV_ERR_NOMEM; /* fail closed: never a response without its scrubber */
    }
    if (x->body_buffer)
        x->ph_secret = av__secret_ref(secret);
    av__secret_free(secret);
    if (irc != AV_OK) {
        av__secret_free(inj_value);
        av__secret_free(inj_target);
        char m[200];
        snprintf(m, sizeof(m), irc == AV_ERR_INVALID
                                   ? "credential for service %s contains characters not allowed in a header"
                                   : "out of memory while injecting the credential for service %s",
                 svc->name);
        x_respond(x, irc == AV_ERR_INVALID ? 502 : 500, m, 0);
        return -1;
    }
    if (inj_target) {
        rc = rq_put(x, (const char *)av__secret_data(inj_target), av__secret_len(inj_target), &x->t_off);
        x->t_len = (uint32_t)av__secret_len(inj_target);
    } else if (inj_value) {
        rc = rq_add(x, inj_name, strlen(inj_name), (const char *)av__secret_data(inj_value), av__secret_len(inj_value));
    }
    av__secret_free(inj_value);
    av__secret_free(inj_target);
    if (rc) {
        x_respond(x, 431, "request header block too large after rewriting", 0);
        return -1;
    }
    x->injected = 1;
    ctx->m_injected++;
    if (x->scrub_secret && x_limit_accept_encoding(x) != 0) {
        x_respond(x, 431, "request header block too large after rewriting", 0);
        return -1;
    }
    return x_choose_upstream(x);
}

/* Reach the upstream: WebSockets and cleartext go over HTTP/1.1
 * connections of their own; https requests through a mux, which dials
 * with ALPN h2 and falls back to HTTP/1.1. */
static int x_choose_upstream(av_exchange *x)
{
    av_ctx *ctx = x->c->ctx;
    int rc;
    if (x->ws || !x->dest_tls) {
        x->link = L_H1;
        rc = av__upstream_acquire(&ctx->pool, &x->dest, x->dest_tls, x->scope, up_notify_cb, x->c, &x->up);
    } else {
        x->link = L_MUX;
        rc = av__mux_attach(&ctx->pool, &x->dest, x->scope, &x->ms, up_notify_cb, x->c);
    }
    if (rc) {
        x_respond(x, 500, "out of memory", 0);
        return -1;
    }
    return 0;
}

/* Serialize the stored request as HTTP/1.1 into the upstream's output.
 * Returns 0, AV_ERR_AGAIN (no room yet) or another error. */
static int x_h1_request_out(av_exchange *x)
{
    av_buf *h = x->up->side.pout;
    if (av__buf_room(h) < x->rq.len + 1024)
        return h->len ? AV_ERR_AGAIN : AV_ERR_LIMIT;
    size_t mark = h->len;
    int rc = av__h1_write_request_line(h, x->ws && x->sid ? "GET" : rq_ptr(x, x->m_off), x->ws && x->sid ? 3 : x->m_len,
                                       rq_ptr(x, x->t_off), x->t_len);
    rc = rc ? rc : av__h1_write_field_str(h, "Host", x->hostval);
    for (size_t i = 0; i < x->nrqf && !rc; i++)
        rc = av__h1_write_field(h, rq_ptr(x, x->rqf[i].no), x->rqf[i].nl, rq_ptr(x, x->rqf[i].vo), x->rqf[i].vl);
    if (x->te_trailers) {
        rc = rc ? rc : av__h1_write_field_str(h, "TE", "trailers");
        rc = rc ? rc : av__h1_write_field_str(h, "Connection", "TE");
    }
    if (x->ws) {
        rc = rc ? rc : av__h1_write_field_str(h, "Connection", "Upgrade");
        rc = rc ? rc : av__h1_write_field_str(h, "Upgrade", "websocket");
        if (x->ws_pmd_offer) /* scrub mode: inflated here, relayed uncompressed */
            rc = rc ? rc : av__h1_write_field_str(h, "Sec-WebSocket-Extensions", "permessage-deflate");
        if (x->sid) {
            rc = rc ? rc : av__h1_write_field_str(h, "Sec-WebSocket-Key", x->ws_key);
            av_h1_field tmp[X_RQ_FIELDS];
            size_t n = rq_fields(x, tmp, X_RQ_FIELDS);
            if (!av__h1_find(tmp, n, "sec-websocket-version"))
                rc = rc ? rc : av__h1_write_field_str(h, "Sec-WebSocket-Version", "13");
        }
    }
    if (x->req_framing == RB_LENGTH) {
        char cl[32];
        snprintf(cl, sizeof(cl), "%llu", (unsigned long long)x->req_len);
        rc = rc ? rc : av__h1_write_field_str(h, "Content-Length", cl);
    } else if (x->req_framing == RB_UNKNOWN) {
        rc = rc ? rc : av__h1_write_field_str(h, "Transfer-Encoding", "chunked");
        x->req_out_chunked = 1;
    }
    rc = rc ? rc : av__h1_write_end(h);
    if (rc) {
        av__wipe(h->data + h->off + mark, h->len - mark);
        h->len = mark;
        return rc;
    }
    return 0;
}

/* Submit the stored request on the mux. Returns av__mux_submit's code. */
static int x_h2_request_out(av_exchange *x)
{
    av_h2_head h;
    memset(&h, 0, sizeof(h));
    h.method = rq_ptr(x, x->m_off);
    h.method_len = x->m_len;
    h.scheme = "https";
    h.scheme_len = 5;
    h.authority = x->hostval;
    h.authority_len = strlen(x->hostval);
    h.path = rq_ptr(x, x->t_off);
    h.path_len = x->t_len;
    h.content_length = -1;
    h.never_index = x->inj_name;
    h.nfields = rq_fields(x, h.fields, AV_H2_MAX_FIELDS - 2);
    for (size_t i = 0; i < h.nfields; i++)
        if (av__h1_name_eq(&h.fields[i], "expect")) {
            /* Answered by us (x_mux_link): HTTP/2 origins need no 100. */
            h.fields[i] = h.fields[--h.nfields];
            i--;
        }
    char cl[32];
    if (x->req_framing == RB_LENGTH) {
        snprintf(cl, sizeof(cl), "%llu", (unsigned long long)x->req_len);
        h.fields[h.nfields].name = "content-length";
        h.fields[h.nfields].name_len = 14;
        h.fields[h.nfields].value = cl;
        h.fields[h.nfields].value_len = strlen(cl);
        h.nfields++;
    }
    if (x->te_trailers) {
        /* the one TE value HTTP/2 allows (RFC 9113 8.2.2) */
        h.fields[h.nfields].name = "te";
        h.fields[h.nfields].name_len = 2;
        h.fields[h.nfields].value = "trailers";
        h.fields[h.nfields].value_len = 8;
        h.nfields++;
    }
    int end = x->req_done && x->req_tr.n == 0 &&
              (x->body_buffer ? x->bbuf.len == 0 : x->sid ? x->a_rx.len == 0 : 1);
    int rc = av__mux_submit(&x->ms, &h, end);
    if (rc == AV_OK && end)
        x->req_ended = 1;
    return rc;
}

/* ---- exchanges: moving bodies ---------------------------------------------- */

/* Sink toward the upstream. */
static size_t up_room(av_exchange *x)
{
    if (x->link == L_MUX)
        return av__mux_room(&x->ms);
    size_t r = av__buf_room(x->up->side.pout);
    return r > 32 ? r - 32 : 0;
}

/* up_write returns AV_OK or an error (no memory): the caller fails the
 * exchange, never relays around the lost bytes. */
static int up_write(av_exchange *x, const uint8_t *data, size_t n)
{
    int rc;
    if (x->link == L_MUX) {
        /* n <= room: all of it is taken */
        rc = av__mux_send(&x->ms, data, n) == (ssize_t)n ? AV_OK : AV_ERR_NOMEM;
    } else if (x->req_out_chunked) {
        rc = av__h1_write_chunk_header(x->up->side.pout, n);
        rc = rc ? rc : av__buf_append(x->up->side.pout, data, n);
        rc = rc ? rc : av__h1_write_chunk_end(x->up->side.pout);
    } else {
        rc = av__buf_append(x->up->side.pout, data, n);
    }
    if (rc == AV_OK)
        x->bytes_req += n;
    return rc;
}

/* Trailer fields that cannot be forwarded are logged (SECURITY 16). */
static void x_trailers_dropped(av_exchange *x, size_t n, const char *why)
{
    av__log(&x->c->ctx->log, AV_LOG_INFO, "exchange host=%s path=%s: %zu trailer field(s) not forwarded: %s",
            x->host, x->log_path, n, why);
}

/* Whether |f| names a field the service's credential travels in (its
 * header form or its auth_alt form): agent copies never reach the origin. */
static int x_is_credential_field(const av_exchange *x, const av_h1_field *f)
{
    if (!x->svc)
        return 0;
    const char *main = inject_name_of(x->svc), *alt = alt_name_of(x->svc);
    return (main && av__h1_name_eq(f, main)) || (alt && av__h1_name_eq(f, alt));
}

/* Trailers pass the checks a head does (SECURITY 6, 8, 11). Fields that may
 * not be trailers (av__h1_trailer_allowed) and, in requests, any copy of
 * the injected field are dropped and logged. A request trailer holding the
 * service's placeholder is refused: placeholders are replaced in the head
 * (and checked bodies) only, and by the time trailers arrive the head is
 * gone. Response trailer values are scrubbed of the injected secret. The
 * fields kept are copied to |dst|. Returns AV_OK, AV_ERR_DENIED (a
 * placeholder) or AV_ERR_NOMEM. */
static int x_keep_trailers(av_exchange *x, int request, const av_h1_field *f, size_t n, av_h1_fields *dst)
{
    av_h1_field keep[AV_H1_MAX_FIELDS_CAP] = {{0}}; /* (trailers are rare: the clearing is cheap) */
    char *owned[AV_H1_MAX_FIELDS_CAP] = {0};
    const char *ph = request && x->svc ? x->svc->placeholder : NULL;
    size_t k = 0, dropped = 0;
    int rc = AV_OK;
    if (n > AV_H1_MAX_FIELDS_CAP)
        n = AV_H1_MAX_FIELDS_CAP; /* both parsers stop at AV_FIELDS_MAX */
    for (size_t i = 0; i < n && rc == AV_OK; i++) {
        if (!av__h1_trailer_allowed(&f[i]) || (request && x_is_credential_field(x, &f[i]))) {
            dropped++;
            continue;
        }
        if (ph && memmem(f[i].value, f[i].value_len, ph, strlen(ph))) {
            rc = AV_ERR_DENIED;
            break;
        }
        keep[k] = f[i];
        owned[k] = NULL;
        if (!request && x->scrub_set) {
            char *nv = NULL;
            size_t nl = 0;
            unsigned long cnt = 0;
            rc = av__scrub_header_value_set(x->scrub_set, f[i].value, f[i].value_len, &nv, &nl, &cnt);
            if (rc != AV_OK)
                break;
            if (cnt) {
                keep[k].value = nv;
                keep[k].value_len = nl;
                owned[k] = nv;
                x->redactions += cnt;
                x->c->ctx->m_redacted += cnt;
            } else {
                av__free(nv);
            }
        }
        k++;
    }
    if (rc == AV_OK)
        rc = av__h1_fields_set(dst, keep, k);
    for (size_t i = 0; i < k; i++)
        if (owned[i]) {
            av__wipe(owned[i], keep[i].value_len);
            av__free(owned[i]);
        }
    if (dropped)
        x_trailers_dropped(x, dropped, "not allowed in trailers (framing, routing, authentication or controls)");
    return rc == AV_OK || rc == AV_ERR_DENIED ? rc : AV_ERR_NOMEM;
}

/* Refuse an exchange whose request trailers failed x_keep_trailers. */
static void x_refuse_trailers(av_exchange *x, int rc)
{
    char m[300];
    if (rc == AV_ERR_DENIED)
        snprintf(m, sizeof(m), "placeholder of service %s found in a request trailer: placeholders are replaced in "
                 "the header section only", x->svc ? x->svc->name : "-");
    else
        snprintf(m, sizeof(m), "out of memory while checking request trailers");
    x_fail(x, rc == AV_ERR_DENIED ? 403 : 500, m);
}

/* The trailer section of an HTTP/1.1 agent's chunked body (the decoder
 * stopped at it). Returns 1 (the body is complete), 0 (need more bytes),
 * or -1 after failing the exchange. */
static int x_agent_trailers_h1(av_exchange *x)
{
    av_conn *c = x->c;
    av_h1_field tf[AV_H1_MAX_FIELDS_CAP];
    size_t tn = 0;
    ssize_t tl = av__h1_body_trailers(&x->req_body, av__buf_head(c->a.pin), c->a.pin->len, &head_limits,
                                      &x->req_tscan, tf, &tn);
    if (tl == AV_H1_INCOMPLETE)
        return 0;
    if (tl < 0) {
        if (tl == AV_H1_ERR_TOO_LARGE)
            c->ctx->m_limit_head++; /* the head's limits, counted as such */
        x_fail(x, tl == AV_H1_ERR_TOO_LARGE ? 431 : 400,
               tl == AV_H1_ERR_TOO_LARGE ? "request trailers too large" : "malformed request trailers");
        return -1;
    }
    int rc = x_keep_trailers(x, 1, tf, tn, &x->req_tr);
    av__buf_consume(c->a.pin, (size_t)tl);
    if (rc) {
        x_refuse_trailers(x, rc);
        return -1;
    }
    x->req_done = 1;
    return 1;
}

/* End the request body upstream, with its trailers where the upstream
 * framing carries them (HTTP/2 trailing HEADERS, a chunked trailer
 * section). Returns 1 when done, 0 when there is no room yet. */
static int up_end(av_exchange *x)
{
    if (x->req_ended)
        return 1;
    if (x->link == L_MUX) {
        if (!x->req_tr.n || av__mux_end_trailers(&x->ms, x->req_tr.f, x->req_tr.n) != AV_OK) {
            if (x->req_tr.n)
                x_trailers_dropped(x, x->req_tr.n, "the upstream stream cannot take them");
            av__mux_end(&x->ms);
        }
    } else if (x->req_out_chunked && x->req_tr.n) {
        av_buf *o = x->up->side.pout;
        int rc = av__h1_write_last_chunk_trailers(o, x->req_tr.f, x->req_tr.n);
        if (rc == AV_ERR_LIMIT && o->len > 0)
            return 0; /* wait for the upstream to drain */
        if (rc != AV_OK) {
            x_trailers_dropped(x, x->req_tr.n, "they cannot be serialized as HTTP/1.1");
            av__h1_write_last_chunk(o);
        }
    } else if (x->req_out_chunked) {
        av__h1_write_last_chunk(x->up->side.pout);
    } else if (x->req_tr.n) {
        x_trailers_dropped(x, x->req_tr.n, "the request to this HTTP/1.1 upstream has a Content-Length");
    }
    av__h1_fields_free(&x->req_tr);
    x->req_ended = 1;
    return 1;
}

/* Move request body bytes agent -> upstream. Returns progress. */
static int x_pump_request_body(av_exchange *x)
{
    av_conn *c = x->c;
    int progress = 0;
    if (x->body_buffer) {
        /* collected, checked and rewritten by x_collect_body */
        while (x->bbuf.len > 0) {
            size_t room = up_room(x);
            if (room == 0)
                break;
            size_t n = x->bbuf.len < room ? x->bbuf.len : room;
            if (up_write(x, av__buf_head(&x->bbuf), n) != AV_OK) {
                x_fail(x, 502, "out of memory relaying the request body");
                return 1;
            }
            av__buf_consume(&x->bbuf, n);
            progress = 1;
        }
        if (x->bbuf.len == 0 && x->req_done && !x->req_ended && x->head_sent && up_end(x))
            progress = 1;
        return progress;
    }
    if (x->sid) {
        if (x->req_tr_err) {
            x_refuse_trailers(x, x->req_tr_err);
            return 1;
        }
        while (x->a_rx.len > 0) {
            size_t room = up_room(x);
            if (room == 0)
                break;
            size_t n = x->a_rx.len < room ? x->a_rx.len : room;
            if (up_write(x, av__buf_head(&x->a_rx), n) != AV_OK) {
                x_fail(x, 502, "out of memory relaying the request body");
                return 1;
            }
            av__buf_consume(&x->a_rx, n);
            av__h2_consume(c->h2, x->sid, n);
            progress = 1;
        }
        if (!x->req_done && x->a_end && x->a_rx.len == 0) {
            x->req_done = 1;
            progress = 1;
        }
    } else {
        while (!x->req_done) {
            if (x->req_body.at_trailers) {
                int t = x_agent_trailers_h1(x);
                if (t < 0)
                    return 1;
                progress |= t;
                break;
            }
            size_t room = up_room(x);
            if (room < 64 || c->a.pin->len == 0)
                break;
            size_t feed = c->a.pin->len;
            if (feed > room)
                feed = room;
            const uint8_t *data = NULL;
            size_t dlen = 0;
            ssize_t used = av__h1_body_feed(&x->req_body, av__buf_head(c->a.pin), feed, &data, &dlen);
            if (used < 0) {
                x_fail(x, 400, "malformed request body framing");
                return 1;
            }
            if (dlen && up_write(x, data, dlen) != AV_OK) {
                x_fail(x, 502, "out of memory relaying the request body");
                return 1;
            }
            av__buf_consume(c->a.pin, (size_t)used);
            if (x->req_body.done)
                x->req_done = 1;
            if (used == 0 && dlen == 0 && !x->req_body.done)
                break;
            progress = 1;
        }
    }
    if (x->req_done && !x->req_ended && x->head_sent && up_end(x))
        progress = 1;
    return progress;
}

/* Sink toward the agent. */
static size_t agent_room(av_exchange *x)
{
    av_conn *c = x->c;
    if (x->sid)
        return av__h2_stream_room(c->h2, x->sid);
    size_t r = av__buf_room(c->a.pout);
    return r > 32 ? r - 32 : 0;
}

/* agent_write returns AV_OK or an error (no memory); as up_write. */
static int agent_write(av_exchange *x, const uint8_t *data, size_t n)
{
    av_conn *c = x->c;
    int rc;
    if (x->sid) {
        rc = av__h2_send_data(c->h2, x->sid, data, n) == (ssize_t)n ? AV_OK : AV_ERR_NOMEM;
    } else if (x->resp_out_chunked) {
        rc = av__h1_write_chunk_header(c->a.pout, n);
        rc = rc ? rc : av__buf_append(c->a.pout, data, n);
        rc = rc ? rc : av__h1_write_chunk_end(c->a.pout);
    } else {
        rc = av__buf_append(c->a.pout, data, n);
    }
    if (rc == AV_OK)
        x->bytes_resp += n;
    return rc;
}

/* End the response toward the agent, with its trailers where the agent's
 * framing carries them: HTTP/2 trailing HEADERS, or the trailer section of
 * a chunked HTTP/1.1 body. A Content-Length or close-delimited response
 * cannot: they are dropped and logged (an HTTP/1.1 agent that sent
 * TE: trailers gets chunked framing for that reason, x_pump_response_mux).
 * Returns 1 when done, 0 when there is no room yet. */
static int agent_end(av_exchange *x)
{
    av_conn *c = x->c;
    if (x->sid) {
        if (!x->resp_tr.n || av__h2_submit_trailers(c->h2, x->sid, x->resp_tr.f, x->resp_tr.n) != 0) {
            if (x->resp_tr.n)
                x_trailers_dropped(x, x->resp_tr.n, "the agent's stream cannot take them");
            av__h2_end_stream(c->h2, x->sid);
        }
    } else if (x->resp_out_chunked && x->resp_tr.n) {
        int rc = av__h1_write_last_chunk_trailers(c->a.pout, x->resp_tr.f, x->resp_tr.n);
        if (rc == AV_ERR_LIMIT && c->a.pout->len > 0)
            return 0; /* wait for the agent to drain */
        if (rc != AV_OK) {
            x_trailers_dropped(x, x->resp_tr.n, "they cannot be serialized as HTTP/1.1");
            av__h1_write_last_chunk(c->a.pout);
        }
    } else if (x->resp_out_chunked) {
        av__h1_write_last_chunk(c->a.pout);
    } else if (x->resp_tr.n) {
        x_trailers_dropped(x, x->resp_tr.n, "the response to this HTTP/1.x agent is not chunked");
    }
    av__h1_fields_free(&x->resp_tr);
    return 1;
}

/* The response body sink: straight to the agent, or through the scrubber
 * (x_scrub_pump moves it on). body_end marks the upstream body complete. */
static size_t body_room(av_exchange *x)
{
    return x->scrub ? av__buf_room(&x->scrub_in) : agent_room(x);
}

static int body_write(av_exchange *x, const uint8_t *data, size_t n)
{
    if (x->scrub)
        return av__buf_append(&x->scrub_in, data, n); /* n <= body_room */
    return agent_write(x, data, n);
}

static void body_end(av_exchange *x)
{
    x->body_ended = 1;
    if (x->scrub)
        return; /* x_scrub_pump finishes the response */
    if (x->resp_kind != RK_NONE && !agent_end(x))
        return; /* x_end_pending retries */
    x->resp_done = 1;
}

/* A response whose end (its trailers) waited for room toward the agent.
 * Returns progress. */
static int x_end_pending(av_exchange *x)
{
    if (!x->body_ended || x->scrub || x->resp_done || !agent_end(x))
        return 0;
    x->resp_done = 1;
    return 1;
}

/* Scrubbed bytes toward the agent. Returns progress, or -1 after failing
 * the exchange (a body that cannot be scrubbed is never relayed). */
static int x_scrub_pump(av_exchange *x)
{
    int progress = 0;
    for (int guard = 0; guard < 64 && x->scrub && !x->resp_done; guard++) {
        if (x->scrub_out.len) {
            size_t room = agent_room(x);
            size_t n = x->scrub_out.len < room ? x->scrub_out.len : room;
            if (n == 0)
                break;
            if (agent_write(x, av__buf_head(&x->scrub_out), n) != AV_OK) {
                x_fail(x, 502, "out of memory relaying the response");
                return -1;
            }
            av__buf_consume(&x->scrub_out, n);
            progress = 1;
            continue;
        }
        int rc;
        if (x->scrub_in.len) {
            size_t used = 0;
            rc = av__scrub_feed(x->scrub, av__buf_head(&x->scrub_in), x->scrub_in.len, &used, &x->scrub_out);
            av__buf_consume(&x->scrub_in, used);
            progress |= used > 0;
        } else if (x->body_ended && !x->scrub_finished) {
            rc = av__scrub_finish(x->scrub, &x->scrub_out);
            if (rc == AV_OK)
                x->scrub_finished = 1;
        } else if (x->scrub_finished) {
            if (!agent_end(x))
                break; /* no room for the trailers yet */
            unsigned long cnt = av__scrub_count(x->scrub);
            x->redactions += cnt;
            x->c->ctx->m_redacted += cnt;
            x->resp_done = 1;
            return 1;
        } else {
            break;
        }
        if (rc == AV_OK || rc == AV_ERR_LIMIT) {
            progress = 1;
            continue;
        }
        x_fail(x, 502, rc == AV_ERR_DENIED ? "response body refused: decompression limit exceeded while scrubbing"
                       : rc == AV_ERR_PARSE ? "upstream sent a corrupt compressed body (cannot scrub it)"
                                            : "cannot scrub the response body");
        return -1;
    }
    return progress;
}

/* Write a response head toward the agent. |kind| is RK_NONE (no body:
 * fields are kept as they are, e.g. Content-Length of a HEAD response),
 * RK_LENGTH (Content-Length |len| is derived here) or RK_UNKNOWN (chunked,
 * or close-delimited for HTTP/1.0 agents; plain DATA over HTTP/2).
 * Returns 0, AV_ERR_LIMIT (no room yet: retry later) or AV_ERR_INVALID. */
static int x_agent_head_raw(av_exchange *x, int status, const char *reason, size_t reason_len,
                            const av_h1_field *fields, size_t nfields, int kind, uint64_t len);

/* Write a response head toward the agent (see x_agent_head_raw), scrubbing
 * the injected secret out of every field value first and setting up the
 * body scrubber. Returns 0, AV_ERR_LIMIT (no room yet), AV_ERR_INVALID, or
 * AV_ERR_DENIED (the body cannot be scrubbed: fail closed). */
static int x_agent_head(av_exchange *x, int status, const char *reason, size_t reason_len,
                        const av_h1_field *fields, size_t nfields, int kind, uint64_t len)
{
    if (!x->scrub_set || status < 200)
        return x_agent_head_raw(x, status, reason, reason_len, fields, nfields, kind, len);
    int any = 0, enc0 = AV_SCRUB_IDENTITY;
    for (size_t i = 0; i < nfields; i++) {
        if (av__scrub_set_matches(x->scrub_set, (const uint8_t *)fields[i].value, fields[i].value_len))
            any = 1;
        if (av__h1_name_eq(&fields[i], "content-encoding")) {
            enc0 = av__scrub_encoding_parse(fields[i].value, fields[i].value_len);
            if (enc0 < 0)
                return AV_ERR_DENIED;
        }
    }
    if (!any) {
        /* Common case: no field holds the secret; only the body needs a scrubber. */
        int body0 = kind == RK_UNKNOWN || (kind == RK_LENGTH && len > 0);
        if (body0 && !x->scrub) {
            int rc0 = av__scrub_new_from_set(&x->scrub, x->scrub_set, enc0);
            if (rc0 != AV_OK)
                return rc0 == AV_ERR_NOMEM ? AV_ERR_INVALID : rc0;
            av__buf_init(&x->scrub_in, 64 * 1024);
            size_t out_max = 64 * 1024;
            if (out_max < av__scrub_min_room(x->scrub) * 2)
                out_max = av__scrub_min_room(x->scrub) * 2;
            av__buf_init(&x->scrub_out, out_max);
        }
        int rc1 = x_agent_head_raw(x, status, reason, reason_len, fields, nfields, body0 ? RK_UNKNOWN : kind, len);
        if (rc1 == AV_ERR_LIMIT && x->scrub) {
            av__scrub_free(x->scrub);
            x->scrub = NULL;
        }
        return rc1;
    }
    av_h1_field *copy = av__calloc(nfields ? nfields : 1, sizeof(*copy));
    char **owned = av__calloc(nfields ? nfields : 1, sizeof(*owned));
    int rc = AV_OK;
    int enc = AV_SCRUB_IDENTITY;
    if (!copy || !owned)
        rc = AV_ERR_NOMEM;
    for (size_t i = 0; i < nfields && rc == AV_OK; i++) {
        copy[i] = fields[i];
        char *nv = NULL;
        size_t nl = 0;
        unsigned long cnt = 0;
        rc = av__scrub_header_value_set(x->scrub_set, fields[i].value, fields[i].value_len, &nv, &nl, &cnt);
        if (rc != AV_OK)
            break;
        if (cnt) {
            copy[i].value = nv;
            copy[i].value_len = nl;
            owned[i] = nv;
            x->redactions += cnt;
            x->c->ctx->m_redacted += cnt;
        } else {
            av__free(nv);
        }
        if (av__h1_name_eq(&fields[i], "content-encoding")) {
            enc = av__scrub_encoding_parse(fields[i].value, fields[i].value_len);
            if (enc < 0)
                rc = AV_ERR_DENIED;
        }
    }
    int body = kind == RK_UNKNOWN || (kind == RK_LENGTH && len > 0);
    if (rc == AV_OK && body && !x->scrub) {
        rc = av__scrub_new_from_set(&x->scrub, x->scrub_set, enc);
        if (rc == AV_OK) {
            av__buf_init(&x->scrub_in, 64 * 1024);
            size_t out_max = 64 * 1024;
            if (out_max < av__scrub_min_room(x->scrub) * 2)
                out_max = av__scrub_min_room(x->scrub) * 2;
            av__buf_init(&x->scrub_out, out_max);
        }
    }
    if (rc == AV_OK) {
        /* Scrubbing may change the length: the agent gets it delimited. */
        rc = x_agent_head_raw(x, status, reason, reason_len, copy, nfields, body ? RK_UNKNOWN : kind, len);
        if (rc == AV_ERR_LIMIT && x->scrub) {
            av__scrub_free(x->scrub); /* set up again on the retry */
            x->scrub = NULL;
        }
    }
    for (size_t i = 0; owned && i < nfields; i++)
        if (owned[i]) {
            av__wipe(owned[i], copy[i].value_len);
            av__free(owned[i]);
        }
    av__free(owned);
    av__free(copy);
    return rc;
}

static int x_agent_head_raw(av_exchange *x, int status, const char *reason, size_t reason_len,
                            const av_h1_field *fields, size_t nfields, int kind, uint64_t len)
{
    av_conn *c = x->c;
    char cl[32];
    u64_dec(cl, len);
    if (x->sid) {
        if (status < 200)
            return 0; /* interim responses are not relayed to HTTP/2 agents */
        av_h2_head h;
        memset(&h, 0, sizeof(h));
        h.status = status;
        h.content_length = -1;
        size_t n = 0;
        for (size_t i = 0; i < nfields && n < AV_H2_MAX_FIELDS - 1; i++) {
            const av_h1_field *f = &fields[i];
            if (av__h1_is_hop_by_hop(f, fields, nfields) || (kind != RK_NONE && av__h1_name_eq(f, "content-length")))
                continue;
            if (f->name_len == 0 || f->name[0] == ':')
                continue;
            h.fields[n++] = *f;
        }
        if (kind == RK_LENGTH) {
            h.fields[n].name = "content-length";
            h.fields[n].name_len = 14;
            h.fields[n].value = cl;
            h.fields[n].value_len = strlen(cl);
            n++;
        }
        h.nfields = n;
        int end = kind == RK_NONE || (kind == RK_LENGTH && len == 0);
        int rc = av__h2_submit_response(c->h2, x->sid, &h, end);
        if (rc)
            return AV_ERR_INVALID;
        x->resp_kind = kind;
        return 0;
    }
    av_buf *o = c->a.pout;
    if (av__buf_room(o) < 1024)
        return AV_ERR_LIMIT;
    size_t mark = o->len;
    int rc = 0;
    char rs[256];
    if (reason) {
        copy_str(rs, sizeof(rs), reason, reason_len);
    } else {
        const char *r = av__h1_reason(status);
        copy_str(rs, sizeof(rs), r, strlen(r));
    }
    rc |= av__h1_write_status_line(o, status, rs);
    for (size_t i = 0; i < nfields; i++) {
        const av_h1_field *f = &fields[i];
        if (av__h1_is_hop_by_hop(f, fields, nfields))
            continue;
        if (av__h1_name_eq(f, "transfer-encoding"))
            continue;
        if (av__h1_name_eq(f, "content-length") && kind != RK_NONE)
            continue; /* re-derived below */
        rc |= av__h1_write_field(o, f->name, f->name_len, f->value, f->value_len);
    }
    if (status >= 200) {
        if (kind == RK_LENGTH) {
            rc |= av__h1_write_field_str(o, "Content-Length", cl);
        } else if (kind == RK_UNKNOWN) {
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
        x->resp_out_chunked = 0;
        return rc == AV_ERR_LIMIT ? AV_ERR_LIMIT : AV_ERR_INVALID;
    }
    x->resp_kind = kind;
    return 0;
}

/* ---- WebSockets ------------------------------------------------------------ */

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
    if (x->ws_scrub) {
        size_t next = 0;
        for (size_t i = 0; i < resp->nfields; i++) {
            const av_h1_field *f = &resp->fields[i];
            if (!av__h1_name_eq(f, "sec-websocket-extensions"))
                continue;
            if (!x->ws_pmd_offer || next++ || av__ws_deflate_accepted(f->value, f->value_len) != AV_OK)
                return "upstream WebSocket handshake invalid: extension negotiated that was not offered";
        }
    }
    return NULL;
}

/* Relay a validated 101 to the agent (HTTP/2: a 200 to the extended
 * CONNECT, without the HTTP/1.1 handshake fields). */
static int x_ws_write_101(av_exchange *x, const av_h1_response *resp)
{
    av_conn *c = x->c;
    if (x->sid) {
        av_h2_head h;
        memset(&h, 0, sizeof(h));
        h.status = 200;
        h.content_length = -1;
        size_t n = 0;
        for (size_t i = 0; i < resp->nfields && n < AV_H2_MAX_FIELDS; i++) {
            const av_h1_field *f = &resp->fields[i];
            if (av__h1_is_hop_by_hop(f, resp->fields, resp->nfields) || av__h1_name_eq(f, "content-length") ||
                av__h1_name_eq(f, "sec-websocket-accept") ||
                (x->ws_scrub && av__h1_name_eq(f, "sec-websocket-extensions")))
                continue;
            h.fields[n++] = *f;
        }
        h.nfields = n;
        return av__h2_submit_response(c->h2, x->sid, &h, 0) ? AV_ERR_INVALID : 0;
    }
    av_buf *o = c->a.pout;
    size_t mark = o->len;
    int rc = av__h1_write_status_line(o, 101, "Switching Protocols");
    for (size_t i = 0; i < resp->nfields && !rc; i++) {
        const av_h1_field *f = &resp->fields[i];
        if (av__h1_is_hop_by_hop(f, resp->fields, resp->nfields) || av__h1_name_eq(f, "content-length") ||
            (x->ws_scrub && av__h1_name_eq(f, "sec-websocket-extensions")))
            continue; /* scrub mode: the agent gets messages uncompressed */
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

/* Frame mode: scrub the injected secret from upstream messages. */
static int x_ws_filter_up(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len)
{
    av_exchange *x = ud;
    *out = (uint8_t *)msg;
    *out_len = len;
    if (!x->scrub_set || len == 0)
        return 0;
    char *nv = NULL;
    size_t nl = 0;
    unsigned long cnt = 0;
    int rc = av__scrub_header_value_set(x->scrub_set, (const char *)msg, len, &nv, &nl, &cnt);
    if (rc != AV_OK)
        return rc;
    if (cnt == 0) {
        av__free(nv);
        return 0;
    }
    x->redactions += cnt;
    x->c->ctx->m_redacted += cnt;
    *out = (uint8_t *)nv;
    *out_len = nl;
    return 0;
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

/* A WebSocket on an HTTP/2 stream whose bytes toward the agent could not
 * be queued (out of memory): reset the stream rather than lose them. */
static int x_ws_h2_fail(av_exchange *x, int rc)
{
    av__log(&x->c->ctx->log, AV_LOG_WARN, "websocket host=%s path=%s: relay failed: %s", x->host, x->log_path,
            av_strerror(rc));
    x->up_reusable = 0;
    x->req_done = 1;
    x->resp_done = 0; /* reset the stream */
    x_finish(x, av_strerror(rc));
    return 1;
}

/* Relay an open WebSocket: splice bytes, or frames through the bridge.
 * Over HTTP/2 the agent's bytes are the stream's DATA (a_rx in, a_tx out). */
static int x_ws_step(av_exchange *x)
{
    av_conn *c = x->c;
    av_side *u = &x->up->side;
    int h2 = x->sid != 0;
    av_buf *ain = h2 ? &x->a_rx : c->a.pin;
    av_buf *aout = h2 ? &x->a_tx : c->a.pout;
    int a_eof = h2 ? (x->a_end || x->a_closed) : c->a.in_eof;
    int progress = 0;
    size_t ain0 = ain->len;
    int rc = av__side_pump_in(u);
    progress |= rc > 0;
    if (x->ws_bridge) {
        if (a_eof)
            av__ws_bridge_agent_eof(x->ws_bridge);
        if (u->in_eof || u->err)
            av__ws_bridge_upstream_eof(x->ws_bridge);
        size_t u0 = u->pin->len;
        rc = av__ws_bridge_pump(x->ws_bridge, ain, aout, u->pin, u->pout);
        if (rc > 0)
            progress = 1;
        x->bytes_req += ain0 - ain->len;
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
            if (!h2) {
                c->close_after = 1;
                x_finish(x, av_strerror(rc));
                c->a.want_shut = 1;
            } else {
                x->resp_done = 0; /* reset the stream */
                x_finish(x, av_strerror(rc));
            }
            return 1;
        }
    } else {
        progress |= splice_bytes(ain, u->pout, &x->bytes_req);
        if (x->ws_scrubber) {
            /* scrub mode: the upstream's frames, parsed and scrubbed */
            size_t u0 = u->pin->len;
            rc = av__ws_scrub_pump(x->ws_scrubber, u->pin, aout);
            x->bytes_resp += u0 - u->pin->len;
            progress |= rc > 0;
            unsigned long cnt = av__ws_scrub_count(x->ws_scrubber);
            if (cnt > x->ws_scrub_seen) {
                x->redactions += cnt - x->ws_scrub_seen;
                c->ctx->m_redacted += cnt - x->ws_scrub_seen;
                x->ws_scrub_seen = cnt;
            }
            if (rc < 0) {
                av__log(&c->ctx->log, rc == AV_ERR_NOMEM ? AV_LOG_WARN : AV_LOG_INFO,
                        "websocket host=%s path=%s: %s, closing", x->host, x->log_path,
                        rc == AV_ERR_PARSE ? "upstream protocol violation"
                        : rc == AV_ERR_DENIED ? "upstream message over the size cap" : av_strerror(rc));
                x->up_reusable = 0;
                x->resp_done = x->req_done = 1;
                if (!h2) {
                    c->close_after = 1;
                    x_finish(x, av_strerror(rc));
                    c->a.want_shut = 1;
                } else {
                    x->resp_done = 0; /* reset the stream */
                    x_finish(x, av_strerror(rc));
                }
                return 1;
            }
            if ((u->in_eof || u->err) && rc == 0 && av__ws_scrub_idle(x->ws_scrubber) && u->pin->len) {
                /* the upstream ended inside a frame: the rest is dropped */
                av__buf_consume(u->pin, u->pin->len);
                progress = 1;
            }
        } else if (h2) {
            size_t n = u->pin->len, room = av__h2_stream_room(c->h2, x->sid);
            if (n > room)
                n = room;
            if (n && !x->a_tx_ended) {
                ssize_t w = av__h2_send_data(c->h2, x->sid, av__buf_head(u->pin), n);
                if (w != (ssize_t)n)
                    return x_ws_h2_fail(x, w < 0 ? (int)w : AV_ERR_NOMEM);
                av__buf_consume(u->pin, n);
                x->bytes_resp += n;
                progress = 1;
            }
        } else {
            progress |= splice_bytes(u->pin, c->a.pout, &x->bytes_resp);
        }
        /* Half-closes propagate: EOF from one peer becomes FIN to the other. */
        if (a_eof && ain->len == 0 && !u->want_shut) {
            av__side_close_write(u);
            progress = 1;
        }
        if ((u->in_eof || u->err) && u->pin->len == 0 && av__ws_scrub_idle(x->ws_scrubber)) {
            if (!h2 && !c->a.want_shut) {
                av__side_close_write(&c->a);
                progress = 1;
            }
        }
    }
    if (h2) {
        /* Window for what the relay took from the stream; frames toward
         * the agent go out as DATA. */
        if (ain0 > ain->len)
            av__h2_consume(c->h2, x->sid, ain0 - ain->len);
        size_t n = x->a_tx.len, room = av__h2_stream_room(c->h2, x->sid);
        if (n > room)
            n = room;
        if (n && !x->a_tx_ended) {
            ssize_t w = av__h2_send_data(c->h2, x->sid, av__buf_head(&x->a_tx), n);
            if (w != (ssize_t)n)
                return x_ws_h2_fail(x, w < 0 ? (int)w : AV_ERR_NOMEM);
            av__buf_consume(&x->a_tx, n);
            progress = 1;
        }
        int up_over = x->ws_bridge ? av__ws_bridge_done(x->ws_bridge)
                                   : ((u->in_eof || u->err) && u->pin->len == 0 && av__ws_scrub_idle(x->ws_scrubber));
        if (up_over && x->a_tx.len == 0 && !x->a_tx_ended) {
            av__h2_end_stream(c->h2, x->sid);
            x->a_tx_ended = 1;
            progress = 1;
        }
    }
    rc = av__side_pump_out(u);
    progress |= rc > 0;
    int finished;
    if (h2)
        finished = x->a_tx_ended && (a_eof || x->a_closed) && (x->ws_bridge || u->want_shut || u->err);
    else
        finished = x->ws_bridge ? av__ws_bridge_done(x->ws_bridge)
                                : ((c->a.in_eof && (u->in_eof || u->err)) || (u->err && c->a.want_shut));
    if (h2 && x->a_closed && !finished) {
        /* The agent reset the stream: drop the upstream. */
        x->end = AV_END_CLIENT_ABORT;
        x->up_reusable = 0;
        x->resp_done = x->req_done = 1;
        x_finish(x, NULL);
        return 1;
    }
    if (finished && av__side_flushed(u)) {
        if (u->err && !x->end)
            x->end = AV_END_UPSTREAM_ABORT; /* reset, not closed */
        x->resp_done = 1;
        x->req_done = 1;
        if (!h2)
            c->close_after = 1;
        x_finish(x, NULL);
        return 1;
    }
    return progress;
}

/* ---- exchanges: responses ------------------------------------------------------ */

/* Response from an HTTP/1.1 upstream toward the agent. Returns progress. */
static int x_pump_response_h1(av_exchange *x)
{
    av_conn *c = x->c;
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
                x_fail(x, 502, "upstream closed the connection before sending a response");
                return 1;
            }
            return progress;
        }
        if (n < 0) {
            x_fail(x, 502, "upstream sent a malformed response");
            return 1;
        }
        if (resp.status == 101) {
            if (!x->ws) {
                x_fail(x, 502, "upstream switched protocols, which this exchange did not ask for");
                return 1;
            }
            if (!x->sid && av__buf_room(c->a.pout) < (size_t)n + 512)
                return progress;
            const char *why = x_ws_check_101(x, &resp);
            if (why) {
                x_fail(x, 502, why);
                return 1;
            }
            if (x_ws_write_101(x, &resp) != 0) {
                x_fail(x, 502, "upstream 101 response cannot be re-serialized");
                return 1;
            }
            av__buf_consume(u->pin, (size_t)n);
            x->status = 101;
            x->resp_head_done = 1;
            x->up_reusable = 0;
            if (x->sid)
                av__buf_init(&x->a_tx, AV_PLAIN_BUF_MAX);
            if (x->ws_frame && av__ws_bridge_new(&x->ws_bridge, 0, x_ws_filter, x) != AV_OK) {
                x_fail(x, 502, "out of memory");
                return 1;
            }
            if (x->ws_bridge)
                av__ws_bridge_set_upstream_filter(x->ws_bridge, x_ws_filter_up, x);
            x->ws_pmd = x->ws_scrub && av__h1_find(resp.fields, resp.nfields, "sec-websocket-extensions");
            if (x->ws_scrub && av__ws_scrub_new(&x->ws_scrubber, x->scrub_set, x->ws_pmd, 0) != AV_OK) {
                x_fail(x, 502, "out of memory");
                return 1;
            }
            x->ws_open = 1;
            return 1;
        }
        if (resp.status < 200 && x->sid) {
            av__buf_consume(u->pin, (size_t)n); /* not relayed over HTTP/2 */
            av__h1_scan_reset(&x->rscan);
            progress = 1;
            continue;
        }
        if (!x->sid && av__buf_room(c->a.pout) < (size_t)n + 512)
            return progress; /* wait for the agent to drain */
        int kind = resp.body == AV_H1_BODY_NONE ? RK_NONE : resp.body == AV_H1_BODY_LENGTH ? RK_LENGTH : RK_UNKNOWN;
        int wrc = x_agent_head(x, resp.status, resp.reason, resp.reason_len, resp.fields, resp.nfields, kind,
                               resp.content_length);
        if (wrc == AV_ERR_LIMIT)
            return progress;
        if (wrc == AV_ERR_DENIED) {
            x_fail(x, 502, "upstream response uses a content encoding that cannot be scrubbed");
            return 1;
        }
        if (wrc != 0) {
            x_fail(x, 502, "upstream response cannot be re-serialized");
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
        av__h1_body_want_trailers(&x->resp_body);
        x->resp_done = x->resp_body.done; /* no body, or Content-Length: 0 */
    }
    while (!x->resp_done && !x->body_ended) {
        if (x->resp_body.at_trailers) {
            av_h1_field tf[AV_H1_MAX_FIELDS_CAP];
            size_t tn = 0;
            ssize_t tl = av__h1_body_trailers(&x->resp_body, av__buf_head(u->pin), u->pin->len, &head_limits,
                                              &x->resp_tscan, tf, &tn);
            if (tl == AV_H1_INCOMPLETE && !u->in_eof)
                break;
            if (tl <= 0) {
                if (tl == AV_H1_ERR_TOO_LARGE)
                    c->ctx->m_limit_head++;
                x_fail(x, 502, tl == AV_H1_ERR_TOO_LARGE ? "upstream sent trailers over the header limits"
                               : tl == AV_H1_INCOMPLETE ? "upstream closed the connection in the trailers"
                                                        : "upstream sent malformed trailers");
                return 1;
            }
            int krc = x_keep_trailers(x, 0, tf, tn, &x->resp_tr);
            av__buf_consume(u->pin, (size_t)tl);
            if (krc) {
                x_fail(x, 502, "out of memory");
                return 1;
            }
            progress = 1;
            body_end(x);
            if (u->pin->len > 0)
                x->up_reusable = 0; /* bytes after the response: never reuse */
            break;
        }
        size_t room = body_room(x);
        if (room < 64)
            break;
        if (u->pin->len == 0) {
            if (u->in_eof) {
                if (x->resp_body.kind == AV_H1_BODY_UNTIL_CLOSE) {
                    x->resp_body.done = 1;
                } else {
                    x_fail(x, 502, "upstream closed the connection in the middle of the body");
                    return 1;
                }
            } else {
                break;
            }
        } else {
            size_t feed = u->pin->len;
            if (feed > room)
                feed = room;
            const uint8_t *data = NULL;
            size_t dlen = 0;
            ssize_t used = av__h1_body_feed(&x->resp_body, av__buf_head(u->pin), feed, &data, &dlen);
            if (used < 0) {
                x_fail(x, 502, "upstream sent a malformed response body");
                return 1;
            }
            if (dlen && body_write(x, data, dlen) != AV_OK) {
                x_fail(x, 502, "out of memory relaying the response");
                return 1;
            }
            av__buf_consume(u->pin, (size_t)used);
            if (used == 0 && dlen == 0 && !x->resp_body.done)
                break;
        }
        progress = 1;
        if (x->resp_body.done) {
            body_end(x);
            if (u->pin->len > 0)
                x->up_reusable = 0; /* bytes after the response: never reuse */
        }
    }
    progress |= x_end_pending(x);
    if (x->scrub) {
        int sp = x_scrub_pump(x);
        if (sp < 0)
            return 1;
        progress |= sp;
    }
    return progress;
}

/* Response from an HTTP/2 upstream stream toward the agent. */
static int x_pump_response_mux(av_exchange *x)
{
    av_mux_stream *ms = &x->ms;
    int progress = 0;
    if (!x->resp_head_done) {
        if (!ms->head) {
            if (ms->closed) {
                x_fail(x, 502, ms->why[0] ? ms->why : "upstream reset the HTTP/2 stream before responding");
                return 1;
            }
            return 0;
        }
        int kind;
        uint64_t len = 0;
        if (x->is_head || ms->status == 204 || ms->status == 304) {
            kind = RK_NONE;
        } else if (ms->content_length >= 0 && (x->sid || !x->te_trailers)) {
            /* (an HTTP/1.1 agent that accepts trailers gets chunked
             * framing, which can carry them) */
            kind = RK_LENGTH;
            len = (uint64_t)ms->content_length;
        } else if (ms->end && ms->rx.len == 0 && ms->trailers.n == 0) {
            kind = RK_LENGTH;
        } else {
            kind = RK_UNKNOWN;
        }
        int wrc = x_agent_head(x, ms->status, NULL, 0, ms->fields, ms->nfields, kind, len);
        if (wrc == AV_ERR_LIMIT)
            return 0;
        if (wrc == AV_ERR_DENIED) {
            x_fail(x, 502, "upstream response uses a content encoding that cannot be scrubbed");
            return 1;
        }
        if (wrc != 0) {
            x_fail(x, 502, "upstream response cannot be re-serialized");
            return 1;
        }
        x->status = ms->status;
        x->resp_head_done = 1;
        progress = 1;
        if (kind == RK_NONE || (kind == RK_LENGTH && len == 0)) {
            x->resp_done = 1;
            av__mux_consume(ms, ms->rx.len);
            return 1;
        }
    }
    while (!x->resp_done && !x->body_ended) {
        if (ms->rx.len > 0) {
            size_t room = body_room(x);
            if (room < 64 && room < ms->rx.len)
                break;
            size_t n = ms->rx.len < room ? ms->rx.len : room;
            if (body_write(x, av__buf_head(&ms->rx), n) != AV_OK) {
                x_fail(x, 502, "out of memory relaying the response");
                return 1;
            }
            av__mux_consume(ms, n);
            progress = 1;
            continue;
        }
        if (ms->end) {
            if (ms->trailers.n && x_keep_trailers(x, 0, ms->trailers.f, ms->trailers.n, &x->resp_tr) != AV_OK) {
                x_fail(x, 502, "out of memory");
                return 1;
            }
            body_end(x);
            progress = 1;
            break;
        }
        if (ms->closed) {
            x_fail(x, 502, ms->why[0] ? ms->why : "upstream reset the HTTP/2 stream in the middle of the body");
            return 1;
        }
        break;
    }
    progress |= x_end_pending(x);
    if (x->scrub) {
        int sp = x_scrub_pump(x);
        if (sp < 0)
            return 1;
        progress |= sp;
    }
    if (progress && x->link == L_MUX)
        av__mux_flush(ms); /* window updates */
    return progress;
}

/* ---- exchanges: the step ------------------------------------------------------- */

/* The upstream link of an exchange on a mux: follow the stream's state.
 * Returns progress; may switch the exchange to L_H1. */
static int x_mux_link(av_exchange *x)
{
    av_conn *c = x->c;
    av_mux_stream *ms = &x->ms;
    for (int guard = 0; guard < 4; guard++) {
        switch (ms->state) {
        case AV_MS_WAIT:
            return 0;
        case AV_MS_READY: {
            int rc = x_h2_request_out(x);
            if (rc == AV_OK) {
                x->head_sent = 1;
                if (x->expect_continue && !x->req_done) {
                    /* The origin will read the body as soon as it comes:
                     * let an HTTP/1.1 agent send it now. */
                    if (av__buf_append_str(c->a.pout, "HTTP/1.1 100 Continue\r\n\r\n") != AV_OK) {
                        x_fail(x, 502, "out of memory"); /* the agent would wait for the 100 */
                        return 1;
                    }
                    x->expect_continue = 0;
                }
                av__mux_flush(ms);
                return 1;
            }
            if (rc == AV_ERR_LIMIT)
                return 0;
            if (rc == AV_ERR_STATE)
                continue; /* RETRY */
            x_fail(x, 502, "request cannot be sent over HTTP/2 (invalid method, target or field)");
            return 1;
        }
        case AV_MS_RETRY:
            if (x->retries >= X_MAX_RETRIES || ms->sent_any || x->resp_head_done) {
                x_fail(x, 502, "upstream refused the request (HTTP/2 GOAWAY or REFUSED_STREAM)");
                return 1;
            }
            x->retries++;
            av__mux_detach(ms);
            x->head_sent = 0;
            x->req_ended = 0;
            if (av__mux_attach(&c->ctx->pool, &x->dest, x->scope, ms, up_notify_cb, c) != AV_OK) {
                x_fail(x, 500, "out of memory");
                return 1;
            }
            continue;
        case AV_MS_H1: {
            av_upconn *up = ms->up;
            ms->up = NULL;
            av__mux_detach(ms);
            x->link = L_H1;
            if (up) {
                x->up = up;
                up->notify = up_notify_cb;
                up->owner = c;
            } else if (av__upstream_acquire(&c->ctx->pool, &x->dest, x->dest_tls, x->scope, up_notify_cb, c, &x->up)) {
                x_fail(x, 500, "out of memory");
                return 1;
            }
            return 1;
        }
        case AV_MS_FAILED: {
            char why[260];
            snprintf(why, sizeof(why), "%s", ms->why);
            x_fail(x, ms->fail_status ? ms->fail_status : 502, why);
            return 1;
        }
        default:
            return 0;
        }
    }
    return 0;
}

/* The end of an exchange, common checks. Returns 1 if it finished. */
static int x_check_done(av_exchange *x)
{
    av_conn *c = x->c;
    if (x->sid) {
        if (x->a_closed && !(x->resp_done && x->req_done)) {
            x->up_reusable = 0;
            x->resp_done = 1;
            if (!x->end)
                x->end = AV_END_CLIENT_ABORT;
            x_finish(x, x->resp_head_done ? NULL : "agent reset the stream");
            return 1;
        }
        if (x->resp_done && (x->req_done || x->a_closed)) {
            x_finish(x, NULL);
            return 1;
        }
        if (x->resp_done && !x->req_done) {
            /* Early response: the rest of the request body is not wanted. */
            x->up_reusable = 0;
            x_finish(x, NULL);
            return 1;
        }
        return 0;
    }
    if (x->req_done && !x->resp_done && !x->ws_open && c->a.in_eof && c->a.pin->len == 0) {
        /* The agent closed before the response ended: stop relaying it. */
        x->end = AV_END_CLIENT_ABORT;
        x->up_reusable = 0;
        x->resp_done = 1;
        c->close_after = 1;
        x_finish(x, "the agent closed the connection before the response ended");
        return 1;
    }
    if (!x->req_done && c->a.in_eof && c->a.pin->len == 0) {
        /* The agent went away mid-body: nothing sensible to forward. */
        x->end = AV_END_CLIENT_ABORT;
        x->up_reusable = 0;
        if (x->resp_done) {
            x_finish(x, NULL);
            return 1;
        }
    }
    if (x->resp_done && (x->req_done || c->a.in_eof)) {
        x_finish(x, NULL);
        return 1;
    }
    if (x->resp_done && !x->req_done) {
        /* Early response (e.g. 413): finish without the rest of the body
         * and close the agent connection afterwards. */
        c->close_after = 1;
        x->up_reusable = 0;
        x_finish(x, NULL);
        return 1;
    }
    return 0;
}

/* Refuse an exchange before anything went upstream. */
static void x_refuse(av_exchange *x, int status, const char *why)
{
    x->req_done = 1;
    x_respond(x, status, why, 0);
    if (x->sid) {
        x->resp_done = 1;
        x_finish(x, why);
    }
}

/* JSON-escape |s| for use inside a JSON string. */
static av_secret *json_escape_secret(const av_secret *s)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *d = av__secret_data(s);
    size_t n = av__secret_len(s);
    char *buf = av__malloc(n * 6 + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = d[i];
        if (ch == '"' || ch == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)ch;
        } else if (ch < 0x20) {
            memcpy(buf + o, "\\u00", 4);
            buf[o + 4] = hex[ch >> 4];
            buf[o + 5] = hex[ch & 15];
            o += 6;
        } else {
            buf[o++] = (char)ch;
        }
    }
    av_secret *r = av__secret_new(buf, o);
    av__wipe(buf, n * 6 + 1);
    av__free(buf);
    return r;
}

/* Collect a JSON or form request body (bounded), then check it for the
 * service's placeholder: replaced when the service declares the body
 * surface, refused (403) otherwise. Nothing goes upstream before this is
 * done. Returns progress; the exchange may be answered. */
static int x_collect_body(av_exchange *x)
{
    av_conn *c = x->c;
    int progress = 0;
    if (x->sid) {
        if (x->req_tr_err) {
            x_refuse_trailers(x, x->req_tr_err);
            return 1;
        }
        while (x->a_rx.len > 0) {
            size_t n = x->a_rx.len;
            if (n > av__buf_room(&x->bbuf)) {
                x_refuse(x, 413, "request body too large to check for the placeholder (8 MiB)");
                return 1;
            }
            if (av__buf_append(&x->bbuf, av__buf_head(&x->a_rx), n) != AV_OK) {
                x_refuse(x, 500, "out of memory");
                return 1;
            }
            av__buf_consume(&x->a_rx, n);
            av__h2_consume(c->h2, x->sid, n);
            progress = 1;
        }
        if (x->a_end && x->a_rx.len == 0)
            x->req_done = 1;
    } else {
        if (x->expect_continue) {
            if (av__buf_append_str(c->a.pout, "HTTP/1.1 100 Continue\r\n\r\n") != AV_OK) {
                x_refuse(x, 500, "out of memory"); /* the agent would wait for the 100 */
                return 1;
            }
            x->expect_continue = 0;
            progress = 1;
        }
        while (!x->req_done && c->a.pin->len > 0) {
            if (x->req_body.at_trailers) {
                int t = x_agent_trailers_h1(x);
                if (t < 0)
                    return 1;
                progress |= t;
                break;
            }
            const uint8_t *data = NULL;
            size_t dlen = 0;
            ssize_t used = av__h1_body_feed(&x->req_body, av__buf_head(c->a.pin), c->a.pin->len, &data, &dlen);
            if (used < 0) {
                x_fail(x, 400, "malformed request body framing");
                return 1;
            }
            if (dlen > av__buf_room(&x->bbuf)) {
                x_refuse(x, 413, "request body too large to check for the placeholder (8 MiB)");
                return 1;
            }
            if (dlen && av__buf_append(&x->bbuf, data, dlen) != AV_OK) {
                x_refuse(x, 500, "out of memory");
                return 1;
            }
            av__buf_consume(c->a.pin, (size_t)used);
            if (x->req_body.done)
                x->req_done = 1;
            if (used == 0)
                break;
            progress = 1;
        }
        if (!x->req_done && c->a.in_eof && c->a.pin->len == 0) {
            x->end = AV_END_CLIENT_ABORT;
            x_fail(x, 400, "the agent closed the connection in the middle of the request body");
            return 1;
        }
    }
    if (!x->req_done)
        return progress;
    const av_service *svc = x->svc;
    const char *ph = svc->placeholder;
    size_t pl = strlen(ph);
    if (x->bbuf.len && memmem(av__buf_head(&x->bbuf), x->bbuf.len, ph, pl)) {
        if (!(svc->placeholder_in & AV_SURF_BODY)) {
            char m[300];
            snprintf(m, sizeof(m), "placeholder of service %s found in the body, but placeholder_in does not include body",
                     svc->name);
            x_refuse(x, 403, m);
            return 1;
        }
        av_secret *enc = x->body_buffer == 1 ? json_escape_secret(x->ph_secret) : pct_encode_secret(x->ph_secret);
        uint8_t *rep = NULL;
        size_t rl = 0;
        int r = enc ? av__subst_replace(av__buf_head(&x->bbuf), x->bbuf.len, (const uint8_t *)ph, pl,
                                        av__secret_data(enc), av__secret_len(enc), X_BODY_BUFFER_MAX * 2, &rep, &rl)
                    : AV_ERR_NOMEM;
        av__secret_free(enc);
        if (r < 0) {
            x_refuse(x, r == AV_ERR_LIMIT ? 413 : 500,
                     r == AV_ERR_LIMIT ? "request body too large after replacing the placeholder" : "out of memory");
            return 1;
        }
        av__buf_free_wipe(&x->bbuf);
        av__buf_init(&x->bbuf, rl + 1);
        r = av__buf_append(&x->bbuf, rep, rl);
        av__wipe(rep, rl);
        av__free(rep);
        if (r != AV_OK) {
            x_refuse(x, 500, "out of memory");
            return 1;
        }
    }
    x->req_framing = RB_LENGTH;
    x->req_len = x->bbuf.len;
    x->req_out_chunked = 0;
    x->body_collected = 1;
    return 1;
}

/* One step of an exchange. Returns progress. */
static int x_step(av_exchange *x)
{
    av_conn *c = x->c;
    int progress = 0;
    if (!x->active)
        return 0;
    if (x->swait && !(x->sid && x->a_closed))
        return 0; /* the credential is being resolved */
    if (x->secret_ready) {
        if (x_inject(x) != 0) {
            if (x->sid) {
                x->active = 0;
                x->done = 1;
            }
            return 1;
        }
        progress = 1;
    }
    if (x->sid && x->a_closed && !x->resp_head_done) {
        x->resp_done = 1;
        x_check_done(x);
        return 1;
    }
    if (x->body_buffer && !x->body_collected) {
        progress |= x_collect_body(x);
        if (!x->active || !x->body_collected)
            return progress;
    }
    if (x->link == L_MUX) {
        progress |= x_mux_link(x);
        if (!x->active)
            return 1;
        if (x->link == L_MUX) {
            if (x->ms.state != AV_MS_OPEN)
                return progress;
            int moved = x_pump_request_body(x);
            if (!x->active)
                return 1;
            progress |= moved;
            progress |= x_pump_response_mux(x);
            if (!x->active)
                return 1;
            if (moved)
                av__mux_flush(&x->ms);
            if (!x->active)
                return 1;
            progress |= x_check_done(x);
            return progress;
        }
    }
    av_upconn *up = x->up;
    if (!up)
        return progress;
    if (up->state < AV_UP_READY)
        progress |= av__upstream_step(up);
    if (up->state == AV_UP_FAILED) {
        char why[260];
        snprintf(why, sizeof(why), "%s", up->side.errmsg);
        x_fail(x, up->fail_status ? up->fail_status : 502, why);
        return 1;
    }
    if (up->state != AV_UP_READY)
        return progress;
    if (!x->head_sent) {
        int rc = x_h1_request_out(x);
        if (rc == AV_ERR_AGAIN)
            return progress;
        if (rc) {
            x_fail(x, rc == AV_ERR_LIMIT ? 431 : 400,
                   rc == AV_ERR_LIMIT ? "request header block too large after rewriting"
                                      : "request cannot be re-serialized (invalid method, target or field)");
            return 1;
        }
        av__buf_free_wipe(&x->rq);
        x->head_sent = 1;
        progress = 1;
    }
    if (x->ws_open)
        return x_ws_step(x) | progress;
    int rc = av__side_pump_in(&up->side);
    if (rc < 0 && !x->resp_done) {
        char why[260];
        snprintf(why, sizeof(why), "upstream connection failed: %s", up->side.errmsg);
        x_fail(x, 502, why);
        return 1;
    }
    progress |= rc > 0;
    progress |= x_pump_request_body(x);
    if (!x->active || (!x->sid && c->state == C_CLOSING))
        return 1;
    progress |= x_pump_response_h1(x);
    if (!x->active || (!x->sid && c->state == C_CLOSING))
        return 1;
    if (x->ws_open)
        return 1;
    rc = av__side_pump_out(&up->side);
    if (rc < 0 && !x->resp_done) {
        char why[260];
        snprintf(why, sizeof(why), "upstream connection failed: %s", up->side.errmsg);
        x_fail(x, 502, why);
        return 1;
    }
    progress |= rc > 0;
    progress |= x_check_done(x);
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
    const av_config *cfg = c->snap->cfg;
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

/* Body of GET /metrics: Prometheus text format (never a secret; service
 * and token names only). */
static void conn_metrics(av_conn *c, int head_only)
{
    av_ctx *ctx = c->ctx;
    av_buf b;
    av__buf_init(&b, 1 << 20);
    av__buf_append_str(&b, "# HELP agentvault_exchanges_total Exchanges by service and status.\n"
                           "# TYPE agentvault_exchanges_total counter\n");
    for (size_t i = 0; i < ctx->nmx; i++)
        av__buf_appendf(&b, "agentvault_exchanges_total{service=\"%s\",status=\"%d\"} %llu\n", ctx->mx[i].svc,
                        ctx->mx[i].status, ctx->mx[i].n);
    av__buf_append_str(&b, "# HELP agentvault_exchange_ends_total Exchanges by how they ended.\n"
                           "# TYPE agentvault_exchange_ends_total counter\n");
    for (int e = AV_END_COMPLETE; e < AV_END_COUNT; e++)
        av__buf_appendf(&b, "agentvault_exchange_ends_total{end=\"%s\"} %llu\n", end_names[e], ctx->m_ends[e]);
    av_ca_stats st;
    av__ca_stats(ctx->ca, &st);
    av__buf_appendf(&b,
                    "# TYPE agentvault_connections_active gauge\nagentvault_connections_active %zu\n"
                    "# TYPE agentvault_connections_total counter\nagentvault_connections_total %llu\n"
                    "# TYPE agentvault_upstream_h2_connections gauge\nagentvault_upstream_h2_connections %zu\n"
                    "# TYPE agentvault_upstream_idle_connections gauge\nagentvault_upstream_idle_connections %zu\n"
                    "# TYPE agentvault_tls_handshakes_total counter\n"
                    "agentvault_tls_handshakes_total{side=\"agent\"} %llu\n"
                    "agentvault_tls_handshakes_total{side=\"upstream\"} %llu\n"
                    "# TYPE agentvault_leaf_cache_hits_total counter\nagentvault_leaf_cache_hits_total %lu\n"
                    "# TYPE agentvault_leaf_cache_misses_total counter\nagentvault_leaf_cache_misses_total %lu\n"
                    "# TYPE agentvault_injected_total counter\nagentvault_injected_total %llu\n"
                    "# TYPE agentvault_redacted_total counter\nagentvault_redacted_total %llu\n"
                    "# TYPE agentvault_limit_hits_total counter\n"
                    "agentvault_limit_hits_total{limit=\"token_rate\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"token_scope\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"h2\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"header_size\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"leaf_mint_rate\"} %lu\n",
                    ctx->nconns, ctx->m_conns_total, ctx->pool.nmux, ctx->pool.nidle, ctx->m_tls_agent,
                    ctx->m_tls_upstream, st.leaf_hits, st.leaf_misses, ctx->m_injected, ctx->m_redacted,
                    ctx->m_limit_rate, ctx->m_limit_scope, ctx->m_limit_h2, ctx->m_limit_head, st.leaf_refused);
    av__buf_appendf(&b, "agentvault_limit_hits_total{limit=\"connections\"} %llu\n"
                        "agentvault_limit_hits_total{limit=\"open_files\"} %llu\n", ctx->m_limit_conns, ctx->m_limit_fds);
    conn_respond_body(c, 200, "text/plain; version=0.0.4; charset=utf-8", (const char *)av__buf_head(&b), b.len,
                      head_only);
    av__buf_free(&b);
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
    } else if ((get || head) && req->target_len == 8 && memcmp(req->target, "/metrics", 8) == 0) {
        conn_metrics(c, head);
    } else {
        conn_respond(c, 400,
                     "this is a forward proxy: use CONNECT for https (e.g. curl -x), absolute-form for http, "
                     "or GET /ca.pem, /healthz, /agent-env or /metrics",
                     0, 1);
        return;
    }
    if (req->body != AV_H1_BODY_NONE || (req->flags & AV_H1_F_CLOSE)) {
        c->state = C_CLOSING;
        av__side_close_write(&c->a);
    }
}

/* Start an exchange for an HTTP/1.1 request head. Returns 0, or -1 after
 * answering with an error. */
static int x_start_h1(av_conn *c, const av_h1_request *req, const av_authority *dest, int dest_tls,
                      const char *target, size_t target_len)
{
    av_exchange *x = &c->x;
    x_reset(x);
    x->c = c;
    x_req_in in;
    memset(&in, 0, sizeof(in));
    in.method = req->method;
    in.method_len = req->method_len;
    in.target = target;
    in.target_len = target_len;
    in.fields = req->fields;
    in.nfields = req->nfields;
    in.minor = req->minor_version;
    in.flags = req->flags;
    in.framing = req->body == AV_H1_BODY_LENGTH ? RB_LENGTH : req->body == AV_H1_BODY_CHUNKED ? RB_UNKNOWN : RB_NONE;
    in.length = req->body == AV_H1_BODY_LENGTH ? req->content_length : 0;
    if (req->flags & AV_H1_F_UPGRADE_WEBSOCKET) {
        const av_h1_field *key = av__h1_find(req->fields, req->nfields, "sec-websocket-key");
        char accept[29];
        if (!ci_eq(req->method, req->method_len, "GET") || req->body != AV_H1_BODY_NONE || !key ||
            key->value_len >= sizeof(x->ws_key) || av__ws_accept_key(key->value, key->value_len, accept) != 0) {
            x->active = 1;
            x->start = av__loop_now(c->ctx->loop);
            copy_str(x->method, sizeof(x->method), req->method, req->method_len);
            av__authority_format(dest, 0, x->host, sizeof(x->host));
            x_respond(x, 400, "malformed WebSocket upgrade request", 0);
            return -1;
        }
        in.ws = 1;
        in.ws_key = key;
    }
    return x_begin(x, &in, dest, dest_tls);
}

/* What dialing |dest| would refuse and CONNECT already tells (an address
 * literal the SSRF guard refuses, the proxy itself) is refused now, with
 * the dial's status, reason and exchange record. Returns -1 if refused. */
static int conn_precheck_dest(av_conn *c, const av_h1_request *req, const av_authority *dest)
{
    char why[200];
    int status = av__upstream_precheck(&c->ctx->pool, dest, why, sizeof(why));
    if (!status)
        return 0;
    av_exchange *x = &c->x;
    x_reset(x);
    x->active = 1;
    x->start = av__loop_now(c->ctx->loop);
    copy_str(x->method, sizeof(x->method), req->method, req->method_len);
    av__authority_format(dest, 0, x->host, sizeof(x->host));
    x_respond(x, status, why, 0);
    return -1;
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
        if (conn_authorize(c, req) < 0 || conn_precheck_dest(c, req, &dest) < 0)
            return;
        av__buf_consume(c->a.pin, head_len);
        c->dest = dest;
        c->in_tunnel = 1;
        if (av__buf_append_str(c->a.pout, "HTTP/1.1 200 Connection Established\r\n\r\n") != AV_OK) {
            /* Without the 200 the client would wait for it forever. */
            av__log(&ctx->log, AV_LOG_WARN, "connection peer=%s closed: out of memory", c->peer);
            c->dead = 1;
            return;
        }
        /* Opaque passthrough hosts are decided now (server-first protocols). */
        for (size_t i = 0; i < c->snap->cfg->npassthrough; i++) {
            if (av__host_match_pattern(c->snap->cfg->passthrough[i], dest.host)) {
                char scope[] = "opaque";
                c->state = C_OPAQUE;
                if (av__upstream_acquire(&ctx->pool, &dest, 0, scope, up_notify_cb, c, &c->opaque_up)) {
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
    if (x_start_h1(c, req, &uri.authority, 0, uri.path, uri.path_len) == 0)
        av__buf_consume(c->a.pin, head_len);
}

/* A complete head inside a CONNECT tunnel: it must be for the tunnel's
 * destination (SECURITY 1). */
static void conn_tunnel_request(av_conn *c, const av_h1_request *req, size_t head_len)
{
    if (c->gw) {
        /* A gateway: every request goes to its upstream, whatever Host
         * says (it is rewritten); the token, if any, is checked first. */
        if (ci_eq(req->method, req->method_len, "CONNECT")) {
            conn_respond(c, 405, "this is a gateway, not a proxy: send requests to it directly (base URL)", 0, 1);
            return;
        }
        if (!av__origin_form_valid(req->target, req->target_len)) {
            conn_respond(c, 400, "requests to a gateway must use origin-form targets (/path)", 0, 1);
            return;
        }
        if (!gw_token_ok(c, req->fields, req->nfields)) {
            conn_respond(c, 401, GW_TOKEN_REFUSED, 0, 1);
            return;
        }
        if (x_start_h1(c, req, &c->dest, c->dest_tls, req->target, req->target_len) == 0)
            av__buf_consume(c->a.pin, head_len);
        return;
    }
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
    if (x_start_h1(c, req, &c->dest, c->dest_tls, req->target, req->target_len) == 0)
        av__buf_consume(c->a.pin, head_len);
}

/* Keep what a refusal's record may show of a parsed head: the method, the
 * destination once known (the tunnel's, or a valid CONNECT target) and an
 * origin-form path without its query. */
static void conn_note_head(av_conn *c, const av_h1_request *req)
{
    copy_str(c->head_method, sizeof(c->head_method), req->method, req->method_len);
    av_authority a;
    if (c->in_tunnel)
        av__authority_format(&c->dest, 0, c->head_host, sizeof(c->head_host));
    else if (ci_eq(req->method, req->method_len, "CONNECT") &&
             av__authority_parse(req->target, req->target_len, 0, &a) == 0)
        av__authority_format(&a, 0, c->head_host, sizeof(c->head_host));
    if (av__origin_form_valid(req->target, req->target_len)) {
        const char *q = memchr(req->target, '?', req->target_len);
        size_t plen = q ? (size_t)(q - req->target) : req->target_len;
        copy_str(c->head_path, sizeof(c->head_path), req->target, plen);
    }
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
    c->head_method[0] = c->head_host[0] = c->head_path[0] = '\0';
    if (n < 0) {
        conn_head_error(c, n);
        return 1;
    }
    av__h1_scan_reset(&c->scan);
    c->head_start = 0;
    conn_note_head(c, &req);
    if (c->revoked || (c->snap != c->ctx->snap && conn_refresh_snap(c) < 0)) {
        conn_respond(c, 407, TOKEN_REVOKED, 0, 1);
        return 1;
    }
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
        if (rc == AV_OK && (rc = av__tls_offer_h2(t)) != AV_OK) {
            av__tls_free(t);
            t = NULL;
        }
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
        ctx->m_tls_agent++;
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

/* ---- HTTP/2 agents ---------------------------------------------------------- */

static av_exchange *h2_find(av_conn *c, int32_t sid)
{
    av_exchange *x = c->h2 ? av__h2_tag(c->h2, sid) : NULL; /* O(1): set in h2s_on_head */
    return x && x->sid == sid && !x->done ? x : NULL;
}

static int conn_h2_has_ws(const av_conn *c)
{
    for (const av_exchange *x = c->xs; x; x = x->next)
        if (x->ws_open)
            return 1;
    return 0;
}

static void conn_h2_free_x(av_conn *c, av_exchange *x)
{
    if (c->h2 && x->sid > 0 && av__h2_tag(c->h2, x->sid) == x)
        av__h2_set_tag(c->h2, x->sid, NULL);
    x_reset(x);
    if (x->prev)
        x->prev->next = x->next;
    else
        c->xs = x->next;
    if (x->next)
        x->next->prev = x->prev;
    c->nxs--;
    av__free(x);
}

/* A request head on a new stream: check it against the tunnel (SECURITY
 * 1) and start its exchange. Errors answer the stream only. */
static void x_start_h2(av_exchange *x, const av_h2_head *h)
{
    av_conn *c = x->c;
    x_req_in in;
    memset(&in, 0, sizeof(in));
    in.method = h->method;
    in.method_len = h->method_len;
    in.target = h->path ? h->path : "";
    in.target_len = h->path ? h->path_len : 0;
    in.fields = h->fields;
    in.nfields = h->nfields;
    in.minor = 1;
    /* Until x_begin, errors are logged with what we know. */
    x->active = 1;
    x->start = av__loop_now(c->ctx->loop);
    copy_str(x->method, sizeof(x->method), h->method, h->method_len);
    av__authority_format(&c->dest, 0, x->host, sizeof(x->host));
    x->is_head = ci_eq(h->method, h->method_len, "HEAD");
    if (c->revoked || (c->snap != c->ctx->snap && conn_refresh_snap(c) < 0)) {
        x_respond(x, 407, TOKEN_REVOKED, 0);
        goto failed;
    }

    int connect = ci_eq(h->method, h->method_len, "CONNECT");
    if (connect && !h->protocol) {
        x_respond(x, 400, "CONNECT inside a tunnel is not allowed", 0);
        goto failed;
    }
    if (connect && !ci_eq(h->protocol, h->protocol_len, "websocket")) {
        x_respond(x, 501, "extended CONNECT is only supported for :protocol websocket", 0);
        goto failed;
    }
    if (!c->gw && (!h->scheme || !ci_eq(h->scheme, h->scheme_len, "https"))) {
        x_respond(x, 400, ":scheme must be https inside a TLS tunnel", 0);
        goto failed;
    }
    if (!h->path || !av__origin_form_valid(h->path, h->path_len)) {
        x_respond(x, 400, "requests inside a tunnel must use origin-form paths (/path)", 0);
        goto failed;
    }
    const av_h1_field *host = av__h1_find(h->fields, h->nfields, "host");
    if (c->gw) {
        /* A gateway: :authority is rewritten to the upstream's. */
        if (!gw_token_ok(c, h->fields, h->nfields)) {
            x_respond(x, 401, GW_TOKEN_REFUSED, 0);
            goto failed;
        }
    } else if (!h->authority && !host) {
        x_respond(x, 400, "missing :authority", 0);
        goto failed;
    }
    for (int k = 0; k < 2 && !c->gw; k++) {
        const char *v = k == 0 ? h->authority : (host ? host->value : NULL);
        size_t vl = k == 0 ? h->authority_len : (host ? host->value_len : 0);
        if (!v)
            continue;
        av_authority a;
        if (av__authority_parse(v, vl, 443, &a) != 0 || !av__authority_equal(&a, &c->dest)) {
            char m[AV_HOST_MAX + 80];
            snprintf(m, sizeof(m), "%s does not match the CONNECT target %s:%d", k == 0 ? ":authority" : "host",
                     c->dest.host, c->dest.port);
            x_respond(x, 421, m, 0);
            goto failed;
        }
    }
    if (connect) {
        in.ws = 1;
        in.framing = RB_NONE; /* the stream carries WebSocket bytes, not a body */
    } else if (h->content_length >= 0) {
        in.framing = RB_LENGTH;
        in.length = (uint64_t)h->content_length;
    } else {
        in.framing = h->end_stream ? RB_NONE : RB_UNKNOWN;
    }
    x->active = 0;
    if (x_begin(x, &in, &c->dest, c->gw ? c->dest_tls : 1) != 0)
        goto failed;
    if (in.ws) {
        x->req_done = 1; /* no body: DATA is relayed once the upgrade is done */
        x->req_ended = 1;
    }
    return;
failed:
    x->active = 0;
    x->done = 1;
}

static int h2s_on_head(void *ud, int32_t sid, const av_h2_head *h)
{
    av_conn *c = ud;
    if (h->trailers) {
        /* Request trailers: checked now, sent after the body (up_end). */
        av_exchange *tx = h2_find(c, sid);
        if (tx && tx->active && !tx->req_tr_err && !tx->ws) {
            int rc = x_keep_trailers(tx, 1, h->fields, h->nfields, &tx->req_tr);
            if (rc)
                tx->req_tr_err = rc;
        }
        return 0;
    }
    av_exchange *x = av__calloc(1, sizeof(*x));
    if (!x)
        return AV_ERR_NOMEM;
    x->c = c;
    x->sid = sid;
    x->next = c->xs;
    if (c->xs)
        c->xs->prev = x;
    c->xs = x;
    c->nxs++;
    av__buf_init(&x->a_rx, X_RX_MAX);
    x->a_end = h->end_stream;
    av__h2_set_tag(c->h2, sid, x);
    x_start_h2(x, h);
    return 0;
}

static int h2s_on_data(void *ud, int32_t sid, const uint8_t *data, size_t len)
{
    av_conn *c = ud;
    av_exchange *x = h2_find(c, sid);
    if (!x || !x->active) {
        av__h2_consume(c->h2, sid, len); /* nobody wants it: keep the windows open */
        return 0;
    }
    if (av__buf_append(&x->a_rx, data, len) != AV_OK)
        return AV_ERR_LIMIT; /* beyond the window we granted: reset */
    return 0;
}

static void h2s_on_end(void *ud, int32_t sid)
{
    av_exchange *x = h2_find(ud, sid);
    if (x)
        x->a_end = 1;
}

static void h2s_on_close(void *ud, int32_t sid, uint32_t error)
{
    av_exchange *x = h2_find(ud, sid);
    if (x) {
        x->a_closed = 1;
        x->a_error = error;
    }
}

static void h2s_on_limit(void *ud, int32_t sid, const char *what)
{
    av_conn *c = ud;
    c->ctx->m_limit_h2++;
    av__log(&c->ctx->log, AV_LOG_WARN, "h2 peer=%s host=%s stream=%d: %s", c->peer, c->dest.host, sid, what);
}

static const av_h2_callbacks h2s_cbs = {h2s_on_head, h2s_on_data, h2s_on_end, h2s_on_close, NULL, h2s_on_limit};

/* The MITM TLS negotiated h2: this tunnel is now an HTTP/2 session. */
static int conn_h2_start(av_conn *c)
{
    if (av__h2_new(&c->h2, AV_H2_SERVER, &h2s_cbs, c) != AV_OK) {
        c->state = C_CLOSING;
        c->a.want_shut = 1;
        return 1;
    }
    c->state = C_H2;
    return 1;
}

/* Drop every stream's exchange (the session is over). */
static void conn_h2_abort_all(av_conn *c, const char *why)
{
    while (c->xs) {
        av_exchange *x = c->xs;
        if (x->active && !x->logged) {
            if (!x->end)
                x->end = c->end ? c->end : AV_END_ERROR;
            x_log(x, why);
        }
        conn_h2_free_x(c, x);
    }
}

static int conn_h2_step(av_conn *c)
{
    int progress = 0;
    av_buf *in = c->a.pin;
    while (in->len > 0) {
        size_t n = in->len < H2_FEED_SLICE ? in->len : H2_FEED_SLICE;
        ssize_t used = av__h2_feed(c->h2, av__buf_head(in), n);
        if (used < 0) {
            av__log(&c->ctx->log, AV_LOG_INFO, "h2 peer=%s host=%s: %s, sending GOAWAY", c->peer, c->dest.host,
                    used == AV_ERR_LIMIT ? "flood or limit exceeded" : "protocol error");
            av__buf_consume(in, in->len);
            progress = 1;
            break;
        }
        av__buf_consume(in, (size_t)used);
        progress = 1;
        if ((size_t)used < n)
            break;
        /* Produce between slices: a GOAWAY for a flood goes out before
         * more of the flood is acted on. */
        if (av__h2_produce(c->h2, c->a.pout) < 0)
            break;
    }
    for (av_exchange *x = c->xs; x; x = x->next)
        if (x->active)
            progress |= x_step(x);
    for (av_exchange *x = c->xs; x;) {
        av_exchange *next = x->next;
        if (x->done) {
            conn_h2_free_x(c, x);
            progress = 1;
        }
        x = next;
    }
    if (c->draining && !c->h2_goaway) {
        av__h2_shutdown(c->h2);
        c->h2_goaway = 1;
        progress = 1;
    }
    int rc = av__h2_produce(c->h2, c->a.pout);
    if (rc > 0)
        progress = 1;
    int over = rc < 0 || !av__h2_alive(c->h2);
    if (c->a.in_eof && c->a.pin->len == 0)
        over = 1;
    if (c->h2_goaway && c->xs == NULL && c->a.pout->len == 0)
        over = 1; /* drained: nothing in flight */
    if (over) {
        if (!c->end)
            c->end = c->a.in_eof ? AV_END_CLIENT_ABORT : AV_END_ERROR;
        conn_h2_abort_all(c, "agent HTTP/2 connection ended");
        c->state = C_CLOSING;
        av__side_close_write(&c->a);
        return 1;
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
    case C_GW_SNIFF: {
        /* HTTP/2 with prior knowledge starts with the client preface. */
        static const char preface[] = "PRI * HTTP/2.0\r\n";
        av_buf *in = c->a.pin;
        size_t n = in->len < sizeof(preface) - 1 ? in->len : sizeof(preface) - 1;
        if (in->len == 0 && !c->a.in_eof)
            return 0;
        if (in->len > 0 && av__tls_is_client_hello(av__buf_head(in), 1)) {
            /* https:// to a plain-HTTP gateway: say so now rather than
             * after the header timeout. */
            av__log(&c->ctx->log, AV_LOG_INFO,
                    "gateway %s peer=%s: a TLS ClientHello: the gateway speaks plain HTTP (use http://, not https://)",
                    c->gw->name, c->peer);
            av__buf_consume(in, in->len);
            conn_respond(c, 400, "this gateway speaks plain HTTP: use http://, not https://", 0, 1);
            return 1;
        }
        if (in->len == 0 || memcmp(av__buf_head(in), preface, n) != 0) {
            c->state = C_TUNNEL_HEAD;
            return 1;
        }
        if (n < sizeof(preface) - 1) {
            if (c->a.in_eof) {
                c->state = C_CLOSING;
                return 1;
            }
            return 0;
        }
        return conn_h2_start(c);
    }
    case C_TUNNEL_HEAD:
        if (c->dest_tls && !c->alpn_checked) {
            if (av__side_handshaking(&c->a))
                return 0;
            c->alpn_checked = 1;
            const char *alpn = av__tls_alpn(c->a.layer[c->a.nlayers - 1].tls);
            if (strcmp(alpn, "h2") == 0)
                return conn_h2_start(c);
        }
        return conn_read_head(c);
    case C_PROXY_HEAD:
        return conn_read_head(c);
    case C_H2:
        return conn_h2_step(c);
    case C_TUNNEL_SNIFF:
        return conn_tunnel_sniff(c);
    case C_EXCHANGE:
        return x_step(&c->x);
    case C_OPAQUE:
        return conn_opaque_step(c);
    default:
        return 0;
    }
}

/* ---- the pump ----------------------------------------------------------- */

static void up_set_events(av_upconn *up)
{
    if (!up || !up->side.io || up->state == AV_UP_IDLE || up->state == AV_UP_FAILED)
        return;
    int uev = av__side_events(&up->side);
    if (up->state == AV_UP_CONNECTING)
        uev = AV_EV_WRITE;
    av__io_set(up->side.io, uev);
}

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
    if (!c->end)
        c->end = AV_END_TIMEOUT;
    conn_proceed(c); /* may free |c|: nothing after this */
}

static void conn_arm_timer(av_conn *c)
{
    const av_config *cfg = c->snap->cfg;
    double now = av__loop_now(c->ctx->loop);
    double t = cfg->idle_timeout;
    if ((c->state == C_PROXY_HEAD || c->state == C_TUNNEL_HEAD || c->state == C_SNIFF ||
         c->state == C_TUNNEL_SNIFF || c->state == C_GW_SNIFF) && c->head_start > 0) {
        t = c->head_start + cfg->header_timeout - now;
        if (t < 0.001)
            t = 0.001;
    } else if (c->state == C_SNIFF || c->state == C_TUNNEL_SNIFF || c->state == C_GW_SNIFF ||
               av__side_handshaking(&c->a)) {
        t = cfg->header_timeout;
    } else if (c->state == C_EXCHANGE && c->x.ws_open) {
        t = cfg->ws_idle_timeout;
    } else if (c->state == C_H2 && conn_h2_has_ws(c)) {
        t = cfg->ws_idle_timeout;
    } else if (c->lingering) {
        t = c->linger_until - now;
        if (t < 0.001)
            t = 0.001;
    } else if (c->state == C_CLOSING) {
        t = 5.0; /* linger for the last bytes, then drop */
    }
    av__timer_start(c->timer, t);
}

/* Every exchange leaves one record, whatever ends it (SECURITY 18): those
 * still open when their connection goes are recorded with the reason. */
static void conn_end_exchanges(av_conn *c)
{
    int end = c->end ? c->end : AV_END_ERROR;
    const char *why = end == AV_END_CLIENT_ABORT ? "the agent closed or reset the connection"
                      : end == AV_END_TIMEOUT    ? "idle timeout"
                      : end == AV_END_SHUTDOWN   ? "shutting down: drain deadline reached"
                                                 : "connection failed";
    if (c->x.active && !c->x.logged) {
        if (!c->x.end)
            c->x.end = end;
        x_log(&c->x, why);
        c->ctx->exchanges++;
    }
    for (av_exchange *x = c->xs; x; x = x->next) {
        if (x->active && !x->logged) {
            if (!x->end)
                x->end = end;
            x_log(x, why);
            c->ctx->exchanges++;
        }
    }
}

static void conn_free(av_conn *c)
{
    av_ctx *ctx = c->ctx;
    conn_end_exchanges(c);
    if (c->opaque_up)
        av__upstream_release(c->opaque_up, 0);
    x_reset(&c->x);
    while (c->xs)
        conn_h2_free_x(c, c->xs);
    av__h2_free(c->h2);
    av__timer_free(c->timer);
    av__side_free(&c->a, 1);
    av__snap_unref(c->snap);
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
        int progress = c->again;
        c->again = 0;
        if (c->lingering) {
            if (av__side_discard(&c->a, &c->linger_budget))
                c->dead = 1;
            break;
        }
        int rc = av__side_pump_in(&c->a);
        if (rc < 0) {
            if (c->state == C_SNIFF || c->state == C_TUNNEL_SNIFF || av__side_handshaking(&c->a) ||
                c->state == C_TUNNEL_HEAD || c->state == C_PROXY_HEAD)
                av__log(&c->ctx->log, AV_LOG_INFO, "connection peer=%s%s%s closed: %s", c->peer,
                        c->in_tunnel ? " host=" : "", c->in_tunnel ? c->dest.host : "", c->a.errmsg);
            c->dead = 1;
            if (!c->end)
                c->end = AV_END_CLIENT_ABORT;
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
            if (!c->end)
                c->end = AV_END_CLIENT_ABORT;
            break;
        }
        progress |= rc;
        if (c->state == C_CLOSING && av__side_flushed(&c->a) && (c->a.shut_wr || c->a.err)) {
            if (c->a.err || c->a.sock_eof) {
                c->dead = 1; /* nothing more will come: a plain close */
                break;
            }
            c->lingering = 1;
            c->linger_until = av__loop_now(c->ctx->loop) + LINGER_SECONDS;
            c->linger_budget = LINGER_MAX_BYTES;
            continue;
        }
        if (c->state == C_CLOSING && !c->a.want_shut) {
            av__side_close_write(&c->a);
            progress = 1;
        }
        if (!progress && !c->again)
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
    if (c->lingering)
        ev = AV_EV_READ;
    av__io_set(c->a.io, ev);
    if (c->state == C_EXCHANGE)
        up_set_events(c->x.up);
    else if (c->state == C_OPAQUE)
        up_set_events(c->opaque_up);
    for (av_exchange *x = c->xs; x; x = x->next)
        up_set_events(x->up);
    conn_arm_timer(c);
}

/* ---- lifecycle ---------------------------------------------------------- */

/* Is |sa| a loopback peer (or a local socket)? */
static int peer_is_local(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_UNIX)
        return 1;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

/* peer_text names a peer for logs: its IP, "stream" for a socket pair. */
static void peer_text(const struct sockaddr *sa, char *out, size_t cap)
{
    snprintf(out, cap, "%s", sa->sa_family == AF_UNIX ? "stream" : "?");
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)cap);
}

int av__conn_accept(av_ctx *ctx, int fd, const struct sockaddr *peer, socklen_t len, av_gw *gw)
{
    (void)len;
    if (gw && !gw->allow_remote && !peer_is_local(peer)) {
        char ip[INET6_ADDRSTRLEN + 8];
        peer_text(peer, ip, sizeof(ip));
        av__log(&ctx->log, AV_LOG_WARN,
                "gateway %s refused a connection from %s: only loopback clients (set allow_remote = yes)", gw->name,
                ip);
        return AV_ERR_DENIED;
    }
    av_conn *c = av__calloc(1, sizeof(*c));
    if (!c)
        return AV_ERR_NOMEM;
    c->ctx = ctx;
    c->snap = av__snap_ref(ctx->snap);
    c->token = -1;
    c->state = C_SNIFF;
    c->x.c = c;
    if (gw) {
        c->gw = gw;
        c->in_tunnel = 1;
        c->dest = gw->dest;
        c->dest_tls = gw->dest_tls;
        c->alpn_checked = 1; /* the agent side is plain: no ALPN */
        c->state = C_GW_SNIFF;
    }
    av__side_init(&c->a, fd, AV_RAW_BUF_MAX, AV_PLAIN_BUF_MAX);
    c->a.io = av__io_new(ctx->loop, fd, conn_on_io, c);
    c->timer = av__timer_new(ctx->loop, conn_on_timer, c);
    if (!c->a.io || !c->timer) {
        av__io_free(c->a.io);
        av__timer_free(c->timer);
        av__snap_unref(c->snap);
        av__free(c);
        return AV_ERR_NOMEM;
    }
    peer_text(peer, c->peer, sizeof(c->peer));
    c->next = ctx->conns;
    if (ctx->conns)
        ctx->conns->prev = c;
    ctx->conns = c;
    ctx->nconns++;
    ctx->m_conns_total++;
    c->a.readable = 1;
    conn_proceed(c);
    return AV_OK;
}

/* Mark one connection as draining; idle ones close at once. The caller
 * must not touch |c| afterwards (it may be freed). */
static void conn_drain(av_conn *c)
{
    c->draining = 1;
    if (c->state == C_H2) {
        conn_proceed(c); /* the H2 step sends GOAWAY; streams in flight finish */
        return;
    }
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
    if (!c->end)
        c->end = AV_END_SHUTDOWN;
    if (c->in_proceed) {
        c->dead = 1;
        return;
    }
    conn_free(c);
}
