/* av_exchange.h - one request/response exchange, protocol-neutral.
 *
 * An exchange talks to its agent only through x->agent (av_agent.h: an
 * HTTP/1.1 connection or an HTTP/2 stream) and to its upstream only
 * through x->link (av_link.h: an HTTP/1.1 connection of its own or a
 * stream on a shared HTTP/2 connection). The request is kept as a
 * protocol-neutral copy (x->rq, av_req.c) until the upstream's protocol is
 * known, then serialized for it; bodies move by one source->sink loop per
 * direction with room checks, so back-pressure is end to end.
 *
 * The exchange's side of the contract, called by agents and links:
 *  - av__x_begin(x, in, dest, tls): admission, injection, link choice
 *    (0, or -1 after answering);
 *  - av__x_step(x): one round; returns progress;
 *  - the response sink links feed: av__x_resp_head (the scrub gate, then
 *    agent->head), av__x_body_room / av__x_body_write / av__x_body_end
 *    (straight to the agent, or into the scrubber);
 *  - av__x_fail(x, status, why), av__x_respond(x, status, why, json),
 *    av__x_finish(x, error), av__x_reset(x).
 * Buffers that may hold the credential (rq, a_rx, a_tx, bbuf, scrub_in,
 * scrub_out) are wiped on reset.
 */
#ifndef AV_EXCHANGE_H
#define AV_EXCHANGE_H

#include <string.h>
#include <strings.h>

#include "av_agent.h"
#include "av_cmd.h"
#include "av_decide.h"
#include "av_enc.h"
#include "av_env.h"
#include "av_h1.h"
#include "av_h2.h"
#include "av_limits.h"
#include "av_link.h"
#include "av_mem.h"
#include "av_mux.h"
#include "av_policy.h"
#include "av_resolver.h"
#include "av_scrub.h"
#include "av_secret.h"
#include "av_side.h"
#include "av_upstream.h"
#include "av_url.h"
#include "av_ws.h"

/* Request body framing, protocol-neutral. */
enum { RB_NONE = 0, RB_LENGTH, RB_UNKNOWN };

/* Response body framing toward the agent. */
enum { RK_NONE = 0, RK_LENGTH, RK_UNKNOWN };


typedef struct rq_field {
    uint32_t no, nl, vo, vl;
} rq_field;

/* One request/response exchange. */
struct av_exchange {
    struct av_conn *c;        /* the agent's connection: opaque outside av_agent_*.c */
    const av_env *env;        /* loop, log, pool, metrics, audit, clock, randomness */
    const char *gw;           /* the gateway's name for the record, NULL for the proxy */
    const char *peer;         /* the agent's address ("127.0.0.1:5555"), for decisions */
    void (*wake)(void *ud);   /* run the owner's pump (upstream, mux and resolver notifications) */
    void *wake_ud;
    av_snap *snap;            /* the configuration it started with (av__x_begin); its own reference */
    int token;                /* the proxy token's index in snap->cfg->tokens, -1 */
    av_exchange *next, *prev; /* HTTP/2 agent: the connection's list */
    const av_agent_ops *agent; /* HTTP/1.1 connection or HTTP/2 stream (av_agent.h) */
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
    struct av_mint_wait *mwait; /* the credential is being minted (secret = oauth2:...) */
    int mint_how;             /* AV_MINT_HOW_*: the audit's "mint" */
    av_secret *mint_token;    /* the minted token sent (a 401 invalidates it) */
    int mint_retry;           /* 1: a 401 to a minted token asks for a replay; 2: replayed once */
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
    const av_link_ops *link;  /* NULL until av__x_choose_upstream (av_link.h) */
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
    int body_buffer;          /* 1: JSON, 2: form; aws-sigv4: 3 hashed, 4 signed chunks re-signed */
    int body_collected;
    av_buf bbuf;
    av_secret *ph_secret;
    int scrub_finished;
    unsigned long redactions; /* secrets scrubbed from the response */
    int ws;                   /* the request is a WebSocket upgrade / extended CONNECT */
    int ext_connect;          /* ... an HTTP/2 extended CONNECT: sent upstream as an HTTP/1.1 GET */
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
    /* auth = aws-sigv4 (av_inject.c): the agent's scope, the payload hash
     * it declared, the real credentials once resolved; the request is
     * signed after every other rewrite (and, body_buffer 3, once the body
     * is collected and hashed). */
    char aws_region[64];
    char aws_service[64];
    char aws_payload[80];     /* x-amz-content-sha256 as sent; "": hash the body */
    uint32_t aws_sh_off, aws_sh_len; /* the agent's SignedHeaders, in rq */
    av_secret *aws_secret;    /* secret access key */
    av_secret *aws_akid;      /* access key id */
    av_secret *aws_token;     /* session token (NULL: none configured) */
    int aws_signed;           /* the Authorization was computed and added */
    /* Decisions (decide = ask | command:, av_exchange_decide.c): held
     * before the credential is placed and before any upstream byte. */
    struct av_decision_request *dwait; /* the hold, until its answer is applied */
    av_async *dwake;          /* sent by the answer (any thread) */
    av_timer *dtimer;         /* decide_timeout */
    struct av_cmd *dcmd;      /* decide = command: the program */
    struct av_cmd *dnotify;   /* [proxy] decide_notify: its program */
    int decide_ready;         /* the answer is in: apply it in the step */
    int dbody_wait;           /* decide_body: collecting the body's first bytes before holding */
    av_buf dbody;             /* ... those bytes, sent upstream first once allowed */
    int decision;             /* X_DECIDE_*: the audit's decision */
    int decided_by;           /* AV_BY_* */
    double decide_start, decide_ms;
    char decide_id[24];
};

/* What a decision said, for the record. */
enum { X_DECIDE_NONE = 0, X_DECIDE_ALLOW, X_DECIDE_DENY, X_DECIDE_CANCELLED };


/* A request as either agent protocol delivered it. */
struct av_req_in {
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
    int ext_connect;    /* HTTP/2 extended CONNECT: matched and sent upstream as GET */
};

static const av_h1_limits head_limits = {AV_HEAD_MAX, AV_FIELDS_MAX};

/* copy_str copies (p, n) into dst as a string, truncating to fit. Hot
 * paths use it instead of snprintf. */
static inline void copy_str(char *dst, size_t cap, const char *p, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, p, n);
    dst[n] = '\0';
}

static inline int ci_eq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    return alen == blen && strncasecmp(a, b, alen) == 0;
}

/* ---- the stored request (av_req.c) ---- */
/* Views into x->rq: a pointer at an offset; append |p| and give its
 * offset; add a field (AV_ERR_LIMIT when full); copy the fields out. */
const char *av__rq_ptr(const av_exchange *x, uint32_t off);
int av__rq_put(av_exchange *x, const char *p, size_t n, uint32_t *off);
int av__rq_add(av_exchange *x, const char *name, size_t nl, const char *value, size_t vl);
size_t av__rq_fields(const av_exchange *x, av_h1_field *out, size_t max);
/* Is this agent field one never forwarded upstream (hop-by-hop, ours, the
 * injected field and its auth_alt form)? */
int av__x_skip_request_field(const av_req_in *in, const av_h1_field *f, const char *inject_name,
                             const char *alt_name, int ws_parsed);
/* Remove every stored field named |name| (any case). */
void av__rq_remove(av_exchange *x, const char *name);
/* av__x_mint_replayable: a 401 to the minted token of |x| may be answered
 * by replaying the request with a new token (once; no body went up; the
 * stored request is intact and holds the token only in its header). */
int av__x_mint_replayable(const av_exchange *x);
/* av__x_mint_restart gives up the upstream after such a 401 (its answer
 * is never relayed) and injects again: the exchange waits for the new
 * token like for the first one. Returns progress (1); the exchange may be
 * answered (502) when no token comes. */
int av__x_mint_restart(av_exchange *x);

/* ---- lifecycle and the step (av_exchange.c) ---- */
/* Admission (TRACE, h2c, Expect, policy, scope, rate, WebSocket mode),
 * storing and injecting the request, choosing the link. 0, or -1 after
 * answering the exchange. x->agent, x->c and x->snap (or c->snap) must be
 * set. */
int av__x_begin(av_exchange *x, const av_req_in *in, const av_authority *dest, int dest_tls);
/* One round: credential wait, body collection, then x->link->step.
 * Returns progress. */
int av__x_step(av_exchange *x);
/* The exchange's one log line and audit record, then agent->finish. */
void av__x_finish(av_exchange *x, const char *error);
/* Fail: answer |status| if nothing was sent to the agent yet, else cut. */
void av__x_fail(av_exchange *x, int status, const char *why);
/* A proxy-made error response (agent->respond_error). */
void av__x_respond(av_exchange *x, int status, const char *why, int json);
/* Refuse before anything went upstream. */
void av__x_refuse(av_exchange *x, int status, const char *why);
/* Free and wipe everything; keeps c, agent, sid and the list links. */
void av__x_reset(av_exchange *x);
void av__x_audit(av_exchange *x, const char *error, double ms);
void av__x_log(av_exchange *x, const char *error);
/* The one-line reason and body of a proxy-made error. */
void av__x_error_text(int status, const char *reason_text, int json, char reason[300], char body[700]);
int av__x_choose_upstream(av_exchange *x);

/* ---- bodies (av_exchange.c) ---- */
/* Request body agent -> link (agent->pump_body into link->room/write),
 * then link->end with the trailers. Returns progress. */
int av__x_pump_request_body(av_exchange *x);
int av__x_up_end(av_exchange *x);
/* Trailers: kept (checked like heads, scrubbed in responses), refused,
 * or dropped and logged. */
int av__x_keep_trailers(av_exchange *x, int request, const av_h1_field *f, size_t n, av_h1_fields *dst);
void av__x_refuse_trailers(av_exchange *x, int rc);
void av__x_trailers_dropped(av_exchange *x, size_t n, const char *why);
/* Toward the agent, counted in bytes_resp. */
size_t av__x_agent_room(av_exchange *x);
/* 0, or -1 after failing the exchange (502: out of memory, the bytes could
 * not be queued; never relayed around). */
int av__x_agent_write(av_exchange *x, const uint8_t *data, size_t n);
int av__x_agent_end(av_exchange *x);

/* ---- the response sink links feed ---- */
/* Head: the scrub gate (fields redacted, body scrubber set up), then
 * agent->head. 0, AV_ERR_LIMIT (no room yet), AV_ERR_INVALID or
 * AV_ERR_DENIED (cannot be scrubbed: fail closed). (av_exchange_scrub.c) */
int av__x_resp_head(av_exchange *x, int status, const char *reason, size_t reason_len,
                    const av_h1_field *fields, size_t nfields, int kind, uint64_t len);
/* Body: straight to the agent, or into the scrubber; end marks the
 * upstream body complete (with x->resp_tr). (av_exchange.c) */
size_t av__x_body_room(av_exchange *x);
/* 0, or -1 after failing the exchange (as av__x_agent_write): return. */
int av__x_body_write(av_exchange *x, const uint8_t *data, size_t n);
void av__x_body_end(av_exchange *x);
/* An end (trailers) that waited for room; the scrubber's output. */
int av__x_end_pending(av_exchange *x);
int av__x_scrub_pump(av_exchange *x);

/* ---- credential in (av_inject.c) ---- */
int av__x_find_placeholders(av_exchange *x);
const char *av__inject_name_of(const av_service *svc);
const char *av__alt_name_of(const av_service *svc);
int av__x_inject(av_exchange *x);
int av__x_is_credential_field(const av_exchange *x, const av_h1_field *f);
/* av__x_take_body moves the agent's request body into |sink|
 * (after a 100 Continue when the agent waits for one): the progress (0 or
 * 1), or -1 when the exchange was answered (out of memory, or the agent
 * went away in the middle of the body). */
struct av_body_sink;
int av__x_take_body(av_exchange *x, const struct av_body_sink *sink);
int av__x_collect_body(av_exchange *x);
/* auth = aws-sigv4: read the agent's signature (refusing presigned URLs,
 * SigV4A, signed chunks, scopes the service does not allow) before the
 * request is stored; 0, or -1 after answering. Then, once everything else
 * is rewritten (and the body hashed), sign it: 0, or -1 after answering. */
int av__x_aws_admit(av_exchange *x, const av_req_in *in);
int av__x_aws_sign(av_exchange *x);

/* ---- decisions (av_exchange_decide.c) ---- */
/* av__x_decide_begin: from av__x_begin once the request is stored and its
 * placeholders checked, before injection. 0: no decision needed (or a
 * remembered rule allowed it): inject now; 1: held, the exchange waits;
 * -1: answered (refused). */
int av__x_decide_begin(av_exchange *x);
/* Apply an answer that came in (x->decide_ready): 0 and the exchange
 * goes on (injected), or -1 after answering (denied, or injection
 * failed). */
int av__x_decide_apply(av_exchange *x);
/* Let go of the hold, its timer, wakeup and programs (a pending hold is
 * cancelled: the agent went away). */
void av__x_decide_release(av_exchange *x);
/* decide_body: collect the first bytes of the body (x->dbody_wait), then
 * hold. Returns progress; the exchange may be answered. */
int av__x_decide_body(av_exchange *x);

/* ---- WebSocket (av_exchange_ws.c, av_exchange_scrub.c) ---- */
const char *av__x_ws_check_101(const av_exchange *x, const av_h1_response *resp);
int av__x_ws_filter(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len);
int av__x_ws_filter_up(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len);
int av__splice_bytes(av_buf *from, av_buf *to, unsigned long long *count);
int av__x_ws_step(av_exchange *x);

/* ---- links' own parts (av_link_h1.c, av_link_mux.c) ---- */
int av__x_h1_request_out(av_exchange *x);
int av__x_pump_response_h1(av_exchange *x);
int av__x_h2_request_out(av_exchange *x);
int av__x_pump_response_mux(av_exchange *x);
int av__x_mux_link(av_exchange *x);

#endif
