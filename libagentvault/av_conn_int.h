/* av_conn_int.h - what the connection family shares: struct av_conn,
 * struct av_exchange, and the functions each file of the family offers
 * the others. Included only by the conn family's own files (av_conn.c,
 * av_agent_*.c, av_exchange*.c, av_link_*.c, av_req.c, av_inject.c,
 * av_proxy_req.c, av_admin.c).
 */
#ifndef AV_CONN_INT_H
#define AV_CONN_INT_H

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

#define X_RQ_FIELDS (AV_FIELDS_MAX + 8)
#define X_RX_MAX (65535 + 1024) /* an agent stream's window, and some slack */
#define X_BODY_BUFFER_MAX (8u << 20) /* JSON/form bodies checked for the placeholder */
#define X_MAX_RETRIES 8 /* refused streams were never processed: retrying is safe */

typedef struct rq_field {
    uint32_t no, nl, vo, vl;
} rq_field;

typedef struct av_exchange av_exchange;

/* One request/response exchange. */
struct av_exchange {
    av_conn *c;
    av_snap *snap;            /* the configuration it started with (av__x_begin); its own reference */
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
    int again;               /* notified while in av__conn_proceed: loop again */
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

static const av_h1_limits head_limits = {AV_HEAD_MAX, AV_FIELDS_MAX};

/* ---- small helpers ------------------------------------------------------ */

/* copy_str copies (p, n) into dst as a string, truncating to fit. Hot
 * paths use it instead of snprintf. */
static inline void copy_str(char *dst, size_t cap, const char *p, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, p, n);
    dst[n] = '\0';
}

/* u64_dec writes |v| in decimal (at most 20 digits and a NUL). */
static inline void u64_dec(char *out, uint64_t v)
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

static inline int ci_eq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    return alen == blen && strncasecmp(a, b, alen) == 0;
}
/* Make |in| safe as a single-line header value / log text. */
static inline void sanitize_line(char *dst, size_t dstlen, const char *in)
{
    size_t j = 0;
    for (size_t i = 0; in[i] && j + 1 < dstlen; i++) {
        unsigned char ch = (unsigned char)in[i];
        dst[j++] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
    }
    dst[j] = '\0';
}

#define TOKEN_REVOKED "the proxy token of this connection was revoked or changed: reconnect"

#define GW_TOKEN_REFUSED "gateway token required: send X-Agentvault-Token"

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

/* How each exchange ended, by AV_END_* (log, audit and /metrics). */
extern const char *const av__end_names[AV_END_COUNT];

/* av_conn.c */
void av__conn_proceed(av_conn *c);

/* av_req.c */
const char *av__rq_ptr(const av_exchange *x, uint32_t off);
int av__rq_put(av_exchange *x, const char *p, size_t n, uint32_t *off);
int av__rq_add(av_exchange *x, const char *name, size_t nl, const char *value, size_t vl);
size_t av__rq_fields(const av_exchange *x, av_h1_field *out, size_t max);
int av__x_skip_request_field(const x_req_in *in, const av_h1_field *f, const char *inject_name,
                             const char *alt_name, int ws_parsed);

/* av_proxy_req.c */
int av__conn_refresh_snap(av_conn *c);
int av__gw_token_ok(av_conn *c, const av_h1_field *fields, size_t nfields);
void av__conn_proxy_request(av_conn *c, const av_h1_request *req, size_t head_len);
void av__conn_tunnel_request(av_conn *c, const av_h1_request *req, size_t head_len);
void av__conn_note_head(av_conn *c, const av_h1_request *req);

/* av_admin.c */
void av__conn_self_request(av_conn *c, const av_h1_request *req);

/* av_agent_h1.c */
void av__conn_respond(av_conn *c, int status, const char *reason_text, int json, int close);
void av__conn_respond_body(av_conn *c, int status, const char *ctype, const char *body, size_t len,
                           int head_only);
int av__x_agent_trailers_h1(av_exchange *x);
int av__x_start_h1(av_conn *c, const av_h1_request *req, const av_authority *dest, int dest_tls,
                   const char *target, size_t target_len);
int av__conn_read_head(av_conn *c);

/* av_agent_h2.c */
void av__x_respond_h2(av_exchange *x, int status, const char *reason_text, int json);
int av__conn_h2_has_ws(const av_conn *c);
void av__conn_h2_free_x(av_conn *c, av_exchange *x);
int av__conn_h2_start(av_conn *c);
int av__conn_h2_step(av_conn *c);

/* av_exchange.c */
void av__error_text(int status, const char *reason_text, int json, char reason[300], char body[700]);
void av__up_notify_cb(void *owner);
void av__x_reset(av_exchange *x);
void av__x_audit(av_exchange *x, const char *error, double ms);
void av__x_log(av_exchange *x, const char *error);
void av__x_finish(av_exchange *x, const char *error);
void av__x_respond(av_exchange *x, int status, const char *why, int json);
void av__x_fail(av_exchange *x, int status, const char *why);
int av__x_begin(av_exchange *x, const x_req_in *in, const av_authority *dest, int dest_tls);
int av__x_choose_upstream(av_exchange *x);
int av__x_keep_trailers(av_exchange *x, int request, const av_h1_field *f, size_t n, av_h1_fields *dst);
void av__x_refuse_trailers(av_exchange *x, int rc);
int av__up_end(av_exchange *x);
size_t av__agent_room(av_exchange *x);
void av__agent_write(av_exchange *x, const uint8_t *data, size_t n);
int av__agent_end(av_exchange *x);
size_t av__body_room(av_exchange *x);
void av__body_write(av_exchange *x, const uint8_t *data, size_t n);
void av__body_end(av_exchange *x);
int av__x_end_pending(av_exchange *x);
int av__x_agent_head_raw(av_exchange *x, int status, const char *reason, size_t reason_len,
                         const av_h1_field *fields, size_t nfields, int kind, uint64_t len);
void av__x_refuse(av_exchange *x, int status, const char *why);
int av__x_step(av_exchange *x);

/* av_inject.c */
int av__x_find_placeholders(av_exchange *x);
const char *av__inject_name_of(const av_service *svc);
const char *av__alt_name_of(const av_service *svc);
int av__x_inject(av_exchange *x);
int av__x_is_credential_field(const av_exchange *x, const av_h1_field *f);
int av__x_collect_body(av_exchange *x);

/* av_exchange_scrub.c */
int av__x_scrub_pump(av_exchange *x);
int av__x_agent_head(av_exchange *x, int status, const char *reason, size_t reason_len,
                     const av_h1_field *fields, size_t nfields, int kind, uint64_t len);
int av__x_ws_filter_up(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len);

/* av_exchange_ws.c */
const char *av__x_ws_check_101(const av_exchange *x, const av_h1_response *resp);
int av__x_ws_write_101(av_exchange *x, const av_h1_response *resp);
int av__x_ws_filter(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len);
int av__splice_bytes(av_buf *from, av_buf *to, unsigned long long *count);
int av__x_ws_step(av_exchange *x);

/* av_link_h1.c */
int av__x_h1_request_out(av_exchange *x);
int av__x_pump_response_h1(av_exchange *x);

/* av_link_mux.c */
int av__x_h2_request_out(av_exchange *x);
int av__x_pump_response_mux(av_exchange *x);
int av__x_mux_link(av_exchange *x);

#endif
