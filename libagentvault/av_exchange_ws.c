/* av_exchange_ws.c - the WebSocket exchange: the 101 check and relay, frame-mode
 * placeholder substitution, and the splice / bridge / scrub relay step with
 * half-closes.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_conn_int.h"

/* Check the upstream's 101 (SECURITY 9). Returns NULL or the reason. */
const char *av__x_ws_check_101(const av_exchange *x, const av_h1_response *resp)
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
int av__x_ws_write_101(av_exchange *x, const av_h1_response *resp)
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
int av__x_ws_filter(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len)
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

/* Copy what fits from |from| to |to| (splice relays). Returns progress. */
int av__splice_bytes(av_buf *from, av_buf *to, unsigned long long *count)
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

/* Relay an open WebSocket: splice bytes, or frames through the bridge.
 * Over HTTP/2 the agent's bytes are the stream's DATA (a_rx in, a_tx out). */
int av__x_ws_step(av_exchange *x)
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
                av__x_finish(x, av_strerror(rc));
                c->a.want_shut = 1;
            } else {
                x->resp_done = 0; /* reset the stream */
                av__x_finish(x, av_strerror(rc));
            }
            return 1;
        }
    } else {
        progress |= av__splice_bytes(ain, u->pout, &x->bytes_req);
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
                    av__x_finish(x, av_strerror(rc));
                    c->a.want_shut = 1;
                } else {
                    x->resp_done = 0; /* reset the stream */
                    av__x_finish(x, av_strerror(rc));
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
                av__h2_send_data(c->h2, x->sid, av__buf_head(u->pin), n);
                av__buf_consume(u->pin, n);
                x->bytes_resp += n;
                progress = 1;
            }
        } else {
            progress |= av__splice_bytes(u->pin, c->a.pout, &x->bytes_resp);
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
            av__h2_send_data(c->h2, x->sid, av__buf_head(&x->a_tx), n);
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
        av__x_finish(x, NULL);
        return 1;
    }
    if (finished && av__side_flushed(u)) {
        if (u->err && !x->end)
            x->end = AV_END_UPSTREAM_ABORT; /* reset, not closed */
        x->resp_done = 1;
        x->req_done = 1;
        if (!h2)
            c->close_after = 1;
        av__x_finish(x, NULL);
        return 1;
    }
    return progress;
}
