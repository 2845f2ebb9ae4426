/* av_link_h1.c - an exchange over an HTTP/1.1 upstream connection (av_upconn):
 * request serialization and the response parse (1xx, 101, UNTIL_CLOSE,
 * trailers, bytes after the response).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_exchange.h"

/* Serialize the stored request as HTTP/1.1 into the upstream's output.
 * Returns 0, AV_ERR_AGAIN (no room yet) or another error. */
int av__x_h1_request_out(av_exchange *x)
{
    av_buf *h = x->up->side.pout;
    if (av__buf_room(h) < x->rq.len + 1024)
        return h->len ? AV_ERR_AGAIN : AV_ERR_LIMIT;
    size_t mark = h->len;
    int rc = av__h1_write_request_line(h, x->ext_connect ? "GET" : av__rq_ptr(x, x->m_off), x->ext_connect ? 3 : x->m_len,
                                       av__rq_ptr(x, x->t_off), x->t_len);
    rc = rc ? rc : av__h1_write_field_str(h, "Host", x->hostval);
    for (size_t i = 0; i < x->nrqf && !rc; i++)
        rc = av__h1_write_field(h, av__rq_ptr(x, x->rqf[i].no), x->rqf[i].nl, av__rq_ptr(x, x->rqf[i].vo), x->rqf[i].vl);
    if (x->te_trailers) {
        rc = rc ? rc : av__h1_write_field_str(h, "TE", "trailers");
        rc = rc ? rc : av__h1_write_field_str(h, "Connection", "TE");
    }
    if (x->ws) {
        rc = rc ? rc : av__h1_write_field_str(h, "Connection", "Upgrade");
        rc = rc ? rc : av__h1_write_field_str(h, "Upgrade", "websocket");
        if (x->ws_pmd_offer) /* scrub mode: inflated here, relayed uncompressed */
            rc = rc ? rc : av__h1_write_field_str(h, "Sec-WebSocket-Extensions", "permessage-deflate");
        if (x->ext_connect) {
            rc = rc ? rc : av__h1_write_field_str(h, "Sec-WebSocket-Key", x->ws_key);
            av_h1_field tmp[X_RQ_FIELDS];
            size_t n = av__rq_fields(x, tmp, X_RQ_FIELDS);
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

/* Response from an HTTP/1.1 upstream toward the agent. Returns progress. */
int av__x_pump_response_h1(av_exchange *x)
{
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
                av__x_fail(x, 502, "upstream closed the connection before sending a response");
                return 1;
            }
            return progress;
        }
        if (n < 0) {
            av__x_fail(x, 502, "upstream sent a malformed response");
            return 1;
        }
        if (resp.status == 101) {
            if (!x->ws) {
                av__x_fail(x, 502, "upstream switched protocols, which this exchange did not ask for");
                return 1;
            }
            if (!x->agent->head_fits(x, (size_t)n + 512))
                return progress;
            const char *why = av__x_ws_check_101(x, &resp);
            if (why) {
                av__x_fail(x, 502, why);
                return 1;
            }
            if (x->agent->upgrade(x, &resp) != 0) {
                av__x_fail(x, 502, "upstream 101 response cannot be re-serialized");
                return 1;
            }
            av__buf_consume(u->pin, (size_t)n);
            x->status = 101;
            x->resp_head_done = 1;
            x->up_reusable = 0;
            if (x->ws_frame && av__ws_bridge_new(&x->ws_bridge, 0, av__x_ws_filter, x) != AV_OK) {
                av__x_fail(x, 502, "out of memory");
                return 1;
            }
            if (x->ws_bridge)
                av__ws_bridge_set_upstream_filter(x->ws_bridge, av__x_ws_filter_up, x);
            x->ws_pmd = x->ws_scrub && av__h1_find(resp.fields, resp.nfields, "sec-websocket-extensions");
            if (x->ws_scrub && av__ws_scrub_new(&x->ws_scrubber, x->scrub_set, x->ws_pmd, 0) != AV_OK) {
                av__x_fail(x, 502, "out of memory");
                return 1;
            }
            x->ws_open = 1;
            return 1;
        }
        if (resp.status < 200 && !x->agent->relays_1xx) {
            av__buf_consume(u->pin, (size_t)n); /* not relayed over HTTP/2 */
            av__h1_scan_reset(&x->rscan);
            progress = 1;
            continue;
        }
        if (!x->agent->head_fits(x, (size_t)n + 512))
            return progress; /* wait for the agent to drain */
        int kind = resp.body == AV_H1_BODY_NONE ? RK_NONE : resp.body == AV_H1_BODY_LENGTH ? RK_LENGTH : RK_UNKNOWN;
        int wrc = av__x_resp_head(x, resp.status, resp.reason, resp.reason_len, resp.fields, resp.nfields, kind,
                               resp.content_length);
        if (x->mint_retry == 1)
            return av__x_mint_restart(x);
        if (wrc == AV_ERR_LIMIT)
            return progress;
        if (wrc == AV_ERR_DENIED) {
            av__x_fail(x, 502, "upstream response uses a content encoding that cannot be scrubbed");
            return 1;
        }
        if (wrc != 0) {
            av__x_fail(x, 502, "upstream response cannot be re-serialized");
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
                    x->env->metrics->m_limit_head++;
                av__x_fail(x, 502, tl == AV_H1_ERR_TOO_LARGE ? "upstream sent trailers over the header limits"
                               : tl == AV_H1_INCOMPLETE ? "upstream closed the connection in the trailers"
                                                        : "upstream sent malformed trailers");
                return 1;
            }
            int krc = av__x_keep_trailers(x, 0, tf, tn, &x->resp_tr);
            av__buf_consume(u->pin, (size_t)tl);
            if (krc) {
                av__x_fail(x, 502, "out of memory");
                return 1;
            }
            progress = 1;
            av__x_body_end(x);
            if (u->pin->len > 0)
                x->up_reusable = 0; /* bytes after the response: never reuse */
            break;
        }
        size_t room = av__x_body_room(x);
        if (room < 64)
            break;
        if (u->pin->len == 0) {
            if (u->in_eof) {
                if (x->resp_body.kind == AV_H1_BODY_UNTIL_CLOSE) {
                    x->resp_body.done = 1;
                } else {
                    av__x_fail(x, 502, "upstream closed the connection in the middle of the body");
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
                av__x_fail(x, 502, "upstream sent a malformed response body");
                return 1;
            }
            if (dlen && av__x_body_write(x, data, dlen) < 0)
                return 1; /* the exchange failed */
            av__buf_consume(u->pin, (size_t)used);
            if (used == 0 && dlen == 0 && !x->resp_body.done)
                break;
        }
        progress = 1;
        if (x->resp_body.done) {
            av__x_body_end(x);
            if (u->pin->len > 0)
                x->up_reusable = 0; /* bytes after the response: never reuse */
        }
    }
    progress |= av__x_end_pending(x);
    if (x->scrub) {
        int sp = av__x_scrub_pump(x);
        if (sp < 0)
            return 1;
        progress |= sp;
    }
    return progress;
}

/* One round over the HTTP/1.1 link: connect, send the head, move both
 * bodies (or relay the WebSocket), run the end checks. */
static int link_h1_step(av_exchange *x)
{
    int progress = 0;
    av_upconn *up = x->up;
    if (!up)
        return progress;
    if (up->state < AV_UP_READY)
        progress |= av__upstream_step(up);
    if (up->state == AV_UP_FAILED) {
        char why[260];
        snprintf(why, sizeof(why), "%s", up->side.errmsg);
        av__x_fail(x, up->fail_status ? up->fail_status : 502, why);
        return 1;
    }
    if (up->state != AV_UP_READY)
        return progress;
    if (!x->head_sent) {
        int rc = av__x_h1_request_out(x);
        if (rc == AV_ERR_AGAIN)
            return progress;
        if (rc) {
            av__x_fail(x, rc == AV_ERR_LIMIT ? 431 : 400,
                       rc == AV_ERR_LIMIT ? "request header block too large after rewriting"
                                          : "request cannot be re-serialized (invalid method, target or field)");
            return 1;
        }
        if (!av__x_mint_replayable(x)) /* else kept for a replay after a 401 */
            av__buf_free_wipe(&x->rq);
        x->head_sent = 1;
        progress = 1;
    }
    if (x->ws_open)
        return av__x_ws_step(x) | progress;
    int rc = av__side_pump_in(&up->side);
    if (rc < 0 && !x->resp_done) {
        char why[260];
        snprintf(why, sizeof(why), "upstream connection failed: %s", up->side.errmsg);
        av__x_fail(x, 502, why);
        return 1;
    }
    progress |= rc > 0;
    progress |= av__x_pump_request_body(x);
    if (!x->active || x->agent->closing(x))
        return 1;
    progress |= av__x_pump_response_h1(x);
    if (!x->active || x->agent->closing(x) || x->up != up)
        return 1; /* (a replay after a 401 gave up |up|) */
    if (x->ws_open)
        return 1;
    rc = av__side_pump_out(&up->side);
    if (rc < 0 && !x->resp_done) {
        char why[260];
        snprintf(why, sizeof(why), "upstream connection failed: %s", up->side.errmsg);
        av__x_fail(x, 502, why);
        return 1;
    }
    progress |= rc > 0;
    progress |= x->agent->check_done(x);
    return progress;
}

/* Request body sink: the upstream's output buffer, chunked when the
 * length is unknown (32 bytes of slack for the chunk framing). */
static size_t link_h1_room(av_exchange *x)
{
    size_t r = av__buf_room(x->up->side.pout);
    return r > 32 ? r - 32 : 0;
}

static int link_h1_write(av_exchange *x, const uint8_t *data, size_t n)
{
    av_buf *o = x->up->side.pout;
    if (!x->req_out_chunked)
        return av__buf_append(o, data, n);
    int rc = av__h1_write_chunk_header(o, n);
    rc = rc ? rc : av__buf_append(o, data, n);
    return rc ? rc : av__h1_write_chunk_end(o);
}

static int link_h1_end(av_exchange *x)
{
    if (x->req_out_chunked && x->req_tr.n) {
        av_buf *o = x->up->side.pout;
        int rc = av__h1_write_last_chunk_trailers(o, x->req_tr.f, x->req_tr.n);
        if (rc == AV_ERR_LIMIT && o->len > 0)
            return 0; /* wait for the upstream to drain */
        if (rc != AV_OK) {
            av__x_trailers_dropped(x, x->req_tr.n, "they cannot be serialized as HTTP/1.1");
            av__h1_write_last_chunk(o);
        }
    } else if (x->req_out_chunked) {
        av__h1_write_last_chunk(x->up->side.pout);
    } else if (x->req_tr.n) {
        av__x_trailers_dropped(x, x->req_tr.n, "the request to this HTTP/1.1 upstream has a Content-Length");
    }
    return 1;
}

static int link_h1_aborted(const av_exchange *x)
{
    return x->up && x->head_sent && (x->up->side.in_eof || x->up->side.err);
}

const av_link_ops av__link_h1_ops = {
    .proto = "h1",
    .step = link_h1_step,
    .room = link_h1_room,
    .write = link_h1_write,
    .end = link_h1_end,
    .aborted = link_h1_aborted,
};
