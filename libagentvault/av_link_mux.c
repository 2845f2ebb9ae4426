/* av_link_mux.c - an exchange over an HTTP/2 upstream stream (av_mux_stream):
 * request submission (the credential never indexed), following the mux
 * state (refused-stream retry, ALPN http/1.1 fall-back), and the response.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_exchange.h"

/* Submit the stored request on the mux. Returns av__mux_submit's code. */
int av__x_h2_request_out(av_exchange *x)
{
    av_h2_head h;
    memset(&h, 0, sizeof(h));
    h.method = av__rq_ptr(x, x->m_off);
    h.method_len = x->m_len;
    h.scheme = "https";
    h.scheme_len = 5;
    h.authority = x->hostval;
    h.authority_len = strlen(x->hostval);
    h.path = av__rq_ptr(x, x->t_off);
    h.path_len = x->t_len;
    h.content_length = -1;
    h.never_index = x->inj_name;
    h.nfields = av__rq_fields(x, h.fields, AV_H2_MAX_FIELDS - 2);
    for (size_t i = 0; i < h.nfields; i++)
        if (av__h1_name_eq(&h.fields[i], "expect")) {
            /* Answered by us (av__x_mux_link): HTTP/2 origins need no 100. */
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
              (x->body_buffer ? x->bbuf.len == 0 : x->agent->body_pending(x) == 0);
    int rc = av__mux_submit(&x->ms, &h, end);
    if (rc == AV_OK && end)
        x->req_ended = 1;
    return rc;
}

/* Response from an HTTP/2 upstream stream toward the agent. */
int av__x_pump_response_mux(av_exchange *x)
{
    av_mux_stream *ms = &x->ms;
    int progress = 0;
    if (!x->resp_head_done) {
        if (!ms->head) {
            if (ms->closed) {
                av__x_fail(x, 502, ms->why[0] ? ms->why : "upstream reset the HTTP/2 stream before responding");
                return 1;
            }
            return 0;
        }
        int kind;
        uint64_t len = 0;
        if (x->is_head || ms->status == 204 || ms->status == 304) {
            kind = RK_NONE;
        } else if (ms->content_length >= 0 && (x->agent->length_with_trailers || !x->te_trailers)) {
            /* (an HTTP/1.1 agent that accepts trailers gets chunked
             * framing, which can carry them) */
            kind = RK_LENGTH;
            len = (uint64_t)ms->content_length;
        } else if (ms->end && ms->rx.len == 0 && ms->trailers.n == 0) {
            kind = RK_LENGTH;
        } else {
            kind = RK_UNKNOWN;
        }
        int wrc = av__x_resp_head(x, ms->status, NULL, 0, ms->fields, ms->nfields, kind, len);
        if (x->mint_retry == 1)
            return av__x_mint_restart(x);
        if (wrc == AV_ERR_LIMIT)
            return 0;
        if (wrc == AV_ERR_DENIED) {
            av__x_fail(x, 502, "upstream response uses a content encoding that cannot be scrubbed");
            return 1;
        }
        if (wrc != 0) {
            av__x_fail(x, 502, "upstream response cannot be re-serialized");
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
            size_t room = av__x_body_room(x);
            if (room < 64 && room < ms->rx.len)
                break;
            size_t n = ms->rx.len < room ? ms->rx.len : room;
            if (av__x_body_write(x, av__buf_head(&ms->rx), n) < 0)
                return 1; /* the exchange failed */
            av__mux_consume(ms, n);
            progress = 1;
            continue;
        }
        if (ms->end) {
            if (ms->trailers.n && av__x_keep_trailers(x, 0, ms->trailers.f, ms->trailers.n, &x->resp_tr) != AV_OK) {
                av__x_fail(x, 502, "out of memory");
                return 1;
            }
            av__x_body_end(x);
            progress = 1;
            break;
        }
        if (ms->closed) {
            av__x_fail(x, 502, ms->why[0] ? ms->why : "upstream reset the HTTP/2 stream in the middle of the body");
            return 1;
        }
        break;
    }
    progress |= av__x_end_pending(x);
    if (x->scrub) {
        int sp = av__x_scrub_pump(x);
        if (sp < 0)
            return 1;
        progress |= sp;
    }
    if (progress && x->link == &av__link_mux_ops)
        av__mux_flush(ms); /* window updates */
    return progress;
}

/* The upstream link of an exchange on a mux: follow the stream's state.
 * Returns progress; may switch the exchange to the HTTP/1.1 link. */
int av__x_mux_link(av_exchange *x)
{
    av_mux_stream *ms = &x->ms;
    for (int guard = 0; guard < 4; guard++) {
        switch (ms->state) {
        case AV_MS_WAIT:
            return 0;
        case AV_MS_READY: {
            int rc = av__x_h2_request_out(x);
            if (rc == AV_OK) {
                x->head_sent = 1;
                if (!x->req_done) {
                    /* The origin will read the body as soon as it comes:
                     * let an HTTP/1.1 agent send it now. */
                    if (x->agent->send_continue(x) < 0) {
                        av__x_fail(x, 502, "out of memory"); /* the agent would wait for the 100 */
                        return 1;
                    }
                }
                av__mux_flush(ms);
                return 1;
            }
            if (rc == AV_ERR_LIMIT)
                return 0;
            if (rc == AV_ERR_STATE)
                continue; /* RETRY */
            av__x_fail(x, 502, "request cannot be sent over HTTP/2 (invalid method, target or field)");
            return 1;
        }
        case AV_MS_RETRY:
            if (x->retries >= X_MAX_RETRIES || ms->sent_any || x->resp_head_done) {
                av__x_fail(x, 502, "upstream refused the request (HTTP/2 GOAWAY or REFUSED_STREAM)");
                return 1;
            }
            x->retries++;
            av__mux_detach(ms);
            x->head_sent = 0;
            x->req_ended = 0;
            if (av__mux_attach(x->env->pool, &x->dest, x->scope, ms, x->wake, x->wake_ud) != AV_OK) {
                av__x_fail(x, 500, "out of memory");
                return 1;
            }
            continue;
        case AV_MS_H1: {
            av_upconn *up = ms->up;
            ms->up = NULL;
            av__mux_detach(ms);
            x->link = &av__link_h1_ops;
            if (up) {
                x->up = up;
                up->notify = x->wake;
                up->owner = x->wake_ud;
            } else if (av__upstream_acquire(x->env->pool, &x->dest, x->dest_tls, x->scope, x->wake, x->wake_ud, &x->up)) {
                av__x_fail(x, 500, "out of memory");
                return 1;
            }
            return 1;
        }
        case AV_MS_FAILED: {
            char why[260];
            snprintf(why, sizeof(why), "%s", ms->why);
            av__x_fail(x, ms->fail_status ? ms->fail_status : 502, why);
            return 1;
        }
        default:
            return 0;
        }
    }
    return 0;
}

/* One round over the mux: follow the stream, then (once open) move both
 * bodies and run the end checks. An ALPN http/1.1 fall-back continues on
 * the HTTP/1.1 link in the same round. */
static int link_mux_step(av_exchange *x)
{
    int progress = av__x_mux_link(x);
    if (!x->active)
        return 1;
    if (x->link != &av__link_mux_ops)
        return progress | x->link->step(x);
    if (x->ms.state != AV_MS_OPEN)
        return progress;
    int moved = av__x_pump_request_body(x);
    if (!x->active)
        return 1;
    progress |= moved;
    progress |= av__x_pump_response_mux(x);
    if (!x->active || x->link != &av__link_mux_ops)
        return 1; /* (a replay after a 401 gave up the stream) */
    if (moved)
        av__mux_flush(&x->ms);
    if (!x->active)
        return 1;
    progress |= x->agent->check_done(x);
    return progress;
}

/* Request body sink: the stream's send buffer, within its window. */
static size_t link_mux_room(av_exchange *x)
{
    return av__mux_room(&x->ms);
}

static int link_mux_write(av_exchange *x, const uint8_t *data, size_t n)
{
    /* n <= room: all of it is taken, unless out of memory */
    return av__mux_send(&x->ms, data, n) == (ssize_t)n ? AV_OK : AV_ERR_NOMEM;
}

static int link_mux_end(av_exchange *x)
{
    if (!x->req_tr.n || av__mux_end_trailers(&x->ms, x->req_tr.f, x->req_tr.n) != AV_OK) {
        if (x->req_tr.n)
            av__x_trailers_dropped(x, x->req_tr.n, "the upstream stream cannot take them");
        av__mux_end(&x->ms);
    }
    return 1;
}

static int link_mux_aborted(const av_exchange *x)
{
    return x->ms.state == AV_MS_OPEN && x->ms.closed;
}

const av_link_ops av__link_mux_ops = {
    .proto = "h2",
    .step = link_mux_step,
    .room = link_mux_room,
    .write = link_mux_write,
    .end = link_mux_end,
    .aborted = link_mux_aborted,
};
