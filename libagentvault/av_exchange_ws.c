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

#include "av_exchange.h"

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
 * The agent's byte streams come from x->agent->ws_bufs (HTTP/2: the
 * stream's DATA, a_rx in and a_tx out). */
int av__x_ws_step(av_exchange *x)
{
    const av_agent_ops *ag = x->agent;
    const av_logger *log = x->env->log;
    av_side *u = &x->up->side;
    av_buf *ain, *aout;
    int a_eof;
    ag->ws_bufs(x, &ain, &aout, &a_eof);
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
            av__log(log, AV_LOG_INFO, "websocket host=%s path=%s: %s, closing", x->host, x->log_path,
                    rc == AV_ERR_PARSE ? "protocol violation" : "message refused by policy");
        } else if (rc < 0) {
            /* Out of memory or an internal failure: drop both sides. */
            av__log(log, AV_LOG_WARN, "websocket host=%s path=%s: relay failed: %s", x->host,
                    x->log_path, av_strerror(rc));
            x->up_reusable = 0;
            x->resp_done = x->req_done = 1;
            ag->ws_abort(x, av_strerror(rc));
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
                x->env->metrics->m_redacted += cnt - x->ws_scrub_seen;
                x->ws_scrub_seen = cnt;
            }
            if (rc < 0) {
                av__log(log, rc == AV_ERR_NOMEM ? AV_LOG_WARN : AV_LOG_INFO,
                        "websocket host=%s path=%s: %s, closing", x->host, x->log_path,
                        rc == AV_ERR_PARSE ? "upstream protocol violation"
                        : rc == AV_ERR_DENIED ? "upstream message over the size cap" : av_strerror(rc));
                x->up_reusable = 0;
                x->resp_done = x->req_done = 1;
                ag->ws_abort(x, av_strerror(rc));
                return 1;
            }
            if ((u->in_eof || u->err) && rc == 0 && av__ws_scrub_idle(x->ws_scrubber) && u->pin->len) {
                /* the upstream ended inside a frame: the rest is dropped */
                av__buf_consume(u->pin, u->pin->len);
                progress = 1;
            }
        } else {
            int so = ag->ws_splice_out(x, u->pin);
            if (so < 0)
                return 1; /* ended: the stream is reset */
            progress |= so;
        }
        /* Half-closes propagate: EOF from one peer becomes FIN to the other. */
        if (a_eof && ain->len == 0 && !u->want_shut) {
            av__side_close_write(u);
            progress = 1;
        }
        if ((u->in_eof || u->err) && u->pin->len == 0 && av__ws_scrub_idle(x->ws_scrubber))
            progress |= ag->ws_half_close(x);
    }
    int up_over = x->ws_bridge ? av__ws_bridge_done(x->ws_bridge)
                               : ((u->in_eof || u->err) && u->pin->len == 0 && av__ws_scrub_idle(x->ws_scrubber));
    int fl = ag->ws_flush(x, ain0 > ain->len ? ain0 - ain->len : 0, up_over);
    if (fl < 0)
        return 1; /* ended: the stream is reset */
    progress |= fl;
    rc = av__side_pump_out(u);
    progress |= rc > 0;
    int finished = ag->ws_finished(x, u);
    if (x->a_closed && !finished) {
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
        ag->close_after(x);
        av__x_finish(x, NULL);
        return 1;
    }
    return progress;
}
