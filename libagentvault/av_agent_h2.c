/* av_agent_h2.c - the HTTP/2 agent side: the server session and its callbacks,
 * the per-stream exchange list and tags, feed slicing, GOAWAY drain, and
 * proxy-made errors on a stream.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_conn_int.h"

/* An error response on an HTTP/2 agent stream (the connection stays). */
static void x_respond_h2(av_exchange *x, int status, const char *reason_text, int json)
{
    av_conn *c = x->c;
    char reason[300], body[700];
    av__x_error_text(status, reason_text, json, reason, body);
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
        av__x_log(x, reason);
}

static av_exchange *h2_find(av_conn *c, int32_t sid)
{
    av_exchange *x = c->h2 ? av__h2_tag(c->h2, sid) : NULL; /* O(1): set in h2s_on_head */
    return x && x->sid == sid && !x->done ? x : NULL;
}

int av__conn_h2_has_ws(const av_conn *c)
{
    for (const av_exchange *x = c->xs; x; x = x->next)
        if (x->ws_open)
            return 1;
    return 0;
}

void av__conn_h2_free_x(av_conn *c, av_exchange *x)
{
    if (c->h2 && x->sid > 0 && av__h2_tag(c->h2, x->sid) == x)
        av__h2_set_tag(c->h2, x->sid, NULL);
    av__x_reset(x);
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
    av_req_in in;
    memset(&in, 0, sizeof(in));
    in.method = h->method;
    in.method_len = h->method_len;
    in.target = h->path ? h->path : "";
    in.target_len = h->path ? h->path_len : 0;
    in.fields = h->fields;
    in.nfields = h->nfields;
    in.minor = 1;
    /* Until av__x_begin, errors are logged with what we know. */
    x->active = 1;
    x->start = av__loop_now(c->env->loop);
    copy_str(x->method, sizeof(x->method), h->method, h->method_len);
    av__authority_format(&c->dest, 0, x->host, sizeof(x->host));
    x->is_head = ci_eq(h->method, h->method_len, "HEAD");
    if (c->revoked || (c->snap != *c->env->snap_cur && av__conn_refresh_snap(c) < 0)) {
        conn_exchange_snap(c, x);
        av__x_respond(x, 407, TOKEN_REVOKED, 0);
        goto failed;
    }
    conn_exchange_snap(c, x);

    int connect = ci_eq(h->method, h->method_len, "CONNECT");
    if (connect && !h->protocol) {
        av__x_respond(x, 400, "CONNECT inside a tunnel is not allowed", 0);
        goto failed;
    }
    if (connect && !ci_eq(h->protocol, h->protocol_len, "websocket")) {
        av__x_respond(x, 501, "extended CONNECT is only supported for :protocol websocket", 0);
        goto failed;
    }
    if (!c->gw && (!h->scheme || !ci_eq(h->scheme, h->scheme_len, "https"))) {
        av__x_respond(x, 400, ":scheme must be https inside a TLS tunnel", 0);
        goto failed;
    }
    if (!h->path || !av__origin_form_valid(h->path, h->path_len)) {
        av__x_respond(x, 400, "requests inside a tunnel must use origin-form paths (/path)", 0);
        goto failed;
    }
    const av_h1_field *host = av__h1_find(h->fields, h->nfields, "host");
    if (c->gw) {
        /* A gateway: :authority is rewritten to the upstream's. */
        if (!av__gw_token_ok(c, h->fields, h->nfields)) {
            av__x_respond(x, 401, GW_TOKEN_REFUSED, 0);
            goto failed;
        }
    } else if (!h->authority && !host) {
        av__x_respond(x, 400, "missing :authority", 0);
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
            av__x_respond(x, 421, m, 0);
            goto failed;
        }
    }
    if (connect) {
        in.ws = 1;
        in.ext_connect = 1;
        in.framing = RB_NONE; /* the stream carries WebSocket bytes, not a body */
    } else if (h->content_length >= 0) {
        in.framing = RB_LENGTH;
        in.length = (uint64_t)h->content_length;
    } else {
        in.framing = h->end_stream ? RB_NONE : RB_UNKNOWN;
    }
    x->active = 0;
    if (av__x_begin(x, &in, &c->dest, c->gw ? c->dest_tls : 1) != 0)
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
        /* Request trailers: checked now, sent after the body (av__x_up_end). */
        av_exchange *tx = h2_find(c, sid);
        if (tx && tx->active && !tx->req_tr_err && !tx->ws) {
            int rc = av__x_keep_trailers(tx, 1, h->fields, h->nfields, &tx->req_tr);
            if (rc)
                tx->req_tr_err = rc;
        }
        return 0;
    }
    av_exchange *x = av__calloc(1, sizeof(*x));
    if (!x)
        return AV_ERR_NOMEM;
    x->c = c;
    x->peer = c->peer;
    x->agent = &av__agent_h2_ops;
    x->env = c->env;
    x->gw = c->gw ? c->gw->name : NULL;
    x->wake = av__conn_wake;
    x->wake_ud = c;
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
    c->env->metrics->m_limit_h2++;
    av__log(c->env->log, AV_LOG_WARN, "h2 peer=%s host=%s stream=%d: %s", c->peer, c->dest.host, sid, what);
}

static const av_h2_callbacks h2s_cbs = {h2s_on_head, h2s_on_data, h2s_on_end, h2s_on_close, NULL, h2s_on_limit};

/* The MITM TLS negotiated h2: this tunnel is now an HTTP/2 session. */
int av__conn_h2_start(av_conn *c)
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
            av__x_log(x, why);
        }
        av__conn_h2_free_x(c, x);
    }
}


int av__conn_h2_step(av_conn *c)
{
    int progress = 0;
    av_buf *in = c->a.pin;
    while (in->len > 0) {
        size_t n = in->len < H2_FEED_SLICE ? in->len : H2_FEED_SLICE;
        ssize_t used = av__h2_feed(c->h2, av__buf_head(in), n);
        if (used < 0) {
            av__log(c->env->log, AV_LOG_INFO, "h2 peer=%s host=%s: %s, sending GOAWAY", c->peer, c->dest.host,
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
            progress |= av__x_step(x);
    for (av_exchange *x = c->xs; x;) {
        av_exchange *next = x->next;
        if (x->done) {
            av__conn_h2_free_x(c, x);
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

/* ---- the agent interface (av_agent.h) over an HTTP/2 stream -------------- */

static void h2_intake(av_exchange *x, const av_req_in *in)
{
    (void)in; /* DATA frames carry the body; END_STREAM ends it */
    x->req_done = x->a_end && x->a_rx.len == 0;
}

/* The stream's DATA (a_rx) into |sink|; the window is given back as the
 * sink takes it. */
static int h2_pump_body(av_exchange *x, const av_body_sink *sink)
{
    av_conn *c = x->c;
    int progress = 0;
    if (x->req_tr_err) {
        av__x_refuse_trailers(x, x->req_tr_err);
        return -1;
    }
    while (x->a_rx.len > 0) {
        size_t room = sink->room(x);
        if (room == 0)
            break;
        size_t n = x->a_rx.len < room ? x->a_rx.len : room;
        if (sink->write(x, av__buf_head(&x->a_rx), n) < 0)
            return -1;
        av__buf_consume(&x->a_rx, n);
        av__h2_consume(c->h2, x->sid, n);
        progress = 1;
    }
    if (!x->req_done && x->a_end && x->a_rx.len == 0) {
        x->req_done = 1;
        progress = 1;
    }
    return progress;
}

static size_t h2_body_pending(const av_exchange *x)
{
    return x->a_rx.len;
}

static int h2_send_continue(av_exchange *x)
{
    (void)x; /* HTTP/2 agents are not waiting for a 100 */
    return 0;
}

static int h2_body_aborted(const av_exchange *x)
{
    (void)x; /* a reset stream is seen through a_closed */
    return 0;
}

/* A response head as HEADERS (interim responses are not relayed). */
static int h2_head(av_exchange *x, int status, const char *reason, size_t reason_len, const av_h1_field *fields,
                   size_t nfields, int kind, uint64_t len)
{
    (void)reason;
    (void)reason_len;
    av_conn *c = x->c;
    char cl[32];
    av__u64_dec(cl, len);
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

static int h2_head_fits(av_exchange *x, size_t n)
{
    (void)x; /* the session queues frames */
    (void)n;
    return 1;
}

static size_t h2_room(av_exchange *x)
{
    return av__h2_stream_room(x->c->h2, x->sid);
}

static int h2_write(av_exchange *x, const uint8_t *data, size_t n)
{
    return av__h2_send_data(x->c->h2, x->sid, data, n) == (ssize_t)n ? AV_OK : AV_ERR_NOMEM;
}

static int h2_end(av_exchange *x)
{
    av_conn *c = x->c;
    if (!x->resp_tr.n || av__h2_submit_trailers(c->h2, x->sid, x->resp_tr.f, x->resp_tr.n) != 0) {
        if (x->resp_tr.n)
            av__x_trailers_dropped(x, x->resp_tr.n, "the agent's stream cannot take them");
        av__h2_end_stream(c->h2, x->sid);
    }
    return 1;
}

static void h2_respond_error(av_exchange *x, int status, const char *why, int json)
{
    x_respond_h2(x, status, why, json);
}

static void h2_fail(av_exchange *x, int status, const char *why)
{
    av_conn *c = x->c;
    if (!x->resp_head_done && !x->a_closed) {
        x_respond_h2(x, status, why, 0);
    } else if (!x->a_closed) {
        av__h2_reset_stream(c->h2, x->sid, 2 /* INTERNAL_ERROR */);
        x->resp_done = 1;
    }
    x->req_done = 1;
    x->resp_done = 1;
    av__x_finish(x, why);
}

static void h2_refused(av_exchange *x, const char *why)
{
    x->resp_done = 1;
    av__x_finish(x, why);
}

static void h2_dropped(av_exchange *x)
{
    x->active = 0;
    x->done = 1; /* freed after the step loop */
}

/* The end of an exchange, HTTP/2 checks. Returns 1 if it finished. */
static int h2_check_done(av_exchange *x)
{
    if (x->a_closed && !(x->resp_done && x->req_done)) {
        x->up_reusable = 0;
        x->resp_done = 1;
        if (!x->end)
            x->end = AV_END_CLIENT_ABORT;
        av__x_finish(x, x->resp_head_done ? NULL : "agent reset the stream");
        return 1;
    }
    if (x->resp_done && (x->req_done || x->a_closed)) {
        av__x_finish(x, NULL);
        return 1;
    }
    if (x->resp_done && !x->req_done) {
        /* Early response: the rest of the request body is not wanted. */
        x->up_reusable = 0;
        av__x_finish(x, NULL);
        return 1;
    }
    return 0;
}

/* Reset an unfinished stream; the exchange is freed after the step loop. */
static void h2_finish(av_exchange *x)
{
    if (!x->resp_done && !x->a_closed)
        av__h2_reset_stream(x->c->h2, x->sid, 2 /* INTERNAL_ERROR */);
    x->active = 0;
    x->done = 1;
}

static int h2_closing(const av_exchange *x)
{
    (void)x; /* streams end alone; the session goes on */
    return 0;
}

static void h2_close_after(av_exchange *x)
{
    (void)x;
}

/* A validated 101 becomes a 200 to the extended CONNECT, without the
 * HTTP/1.1 handshake fields; frames toward the agent then go through
 * a_tx. */
static int h2_upgrade(av_exchange *x, const av_h1_response *resp)
{
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
    if (av__h2_submit_response(x->c->h2, x->sid, &h, 0))
        return AV_ERR_INVALID;
    av__buf_init(&x->a_tx, AV_PLAIN_BUF_MAX);
    return 0;
}

static void h2_ws_bufs(av_exchange *x, av_buf **in, av_buf **out, int *in_eof)
{
    *in = &x->a_rx;
    *out = &x->a_tx;
    *in_eof = x->a_end || x->a_closed;
}

/* A WebSocket whose bytes toward the agent could not be queued (out of
 * memory): reset the stream rather than lose them. Returns -1. */
static int x_ws_h2_fail(av_exchange *x, ssize_t w)
{
    int rc = w < 0 ? (int)w : AV_ERR_NOMEM;
    av__log(x->env->log, AV_LOG_WARN, "websocket host=%s path=%s: relay failed: %s", x->host, x->log_path,
            av_strerror(rc));
    x->up_reusable = 0;
    x->req_done = 1;
    x->resp_done = 0; /* reset the stream */
    av__x_finish(x, av_strerror(rc));
    return -1;
}

static int h2_ws_splice_out(av_exchange *x, av_buf *from)
{
    av_conn *c = x->c;
    size_t n = from->len, room = av__h2_stream_room(c->h2, x->sid);
    if (n > room)
        n = room;
    if (!n || x->a_tx_ended)
        return 0;
    ssize_t w = av__h2_send_data(c->h2, x->sid, av__buf_head(from), n);
    if (w != (ssize_t)n)
        return x_ws_h2_fail(x, w);
    av__buf_consume(from, n);
    x->bytes_resp += n;
    return 1;
}

static int h2_ws_half_close(av_exchange *x)
{
    (void)x; /* END_STREAM goes out in h2_ws_flush */
    return 0;
}

/* Window for what the relay took from the stream; frames toward the agent
 * go out as DATA, then END_STREAM once the upstream is over. */
static int h2_ws_flush(av_exchange *x, size_t taken, int up_over)
{
    av_conn *c = x->c;
    int progress = 0;
    if (taken)
        av__h2_consume(c->h2, x->sid, taken);
    size_t n = x->a_tx.len, room = av__h2_stream_room(c->h2, x->sid);
    if (n > room)
        n = room;
    if (n && !x->a_tx_ended) {
        ssize_t w = av__h2_send_data(c->h2, x->sid, av__buf_head(&x->a_tx), n);
        if (w != (ssize_t)n)
            return x_ws_h2_fail(x, w);
        av__buf_consume(&x->a_tx, n);
        progress = 1;
    }
    if (up_over && x->a_tx.len == 0 && !x->a_tx_ended) {
        av__h2_end_stream(c->h2, x->sid);
        x->a_tx_ended = 1;
        progress = 1;
    }
    return progress;
}

static int h2_ws_finished(av_exchange *x, const av_side *u)
{
    return x->a_tx_ended && (x->a_end || x->a_closed) && (x->ws_bridge || u->want_shut || u->err);
}

static void h2_ws_abort(av_exchange *x, const char *why)
{
    x->resp_done = 0; /* reset the stream */
    av__x_finish(x, why);
}

const av_agent_ops av__agent_h2_ops = {
    .proto = "h2",
    .relays_1xx = 0,
    .length_with_trailers = 1,
    .joins_cookies = 1,
    .intake = h2_intake,
    .pump_body = h2_pump_body,
    .body_pending = h2_body_pending,
    .send_continue = h2_send_continue,
    .body_aborted = h2_body_aborted,
    .head = h2_head,
    .head_fits = h2_head_fits,
    .room = h2_room,
    .write = h2_write,
    .end = h2_end,
    .respond_error = h2_respond_error,
    .fail = h2_fail,
    .refused = h2_refused,
    .dropped = h2_dropped,
    .check_done = h2_check_done,
    .finish = h2_finish,
    .closing = h2_closing,
    .close_after = h2_close_after,
    .upgrade = h2_upgrade,
    .ws_bufs = h2_ws_bufs,
    .ws_splice_out = h2_ws_splice_out,
    .ws_half_close = h2_ws_half_close,
    .ws_flush = h2_ws_flush,
    .ws_finished = h2_ws_finished,
    .ws_abort = h2_ws_abort,
};
