/* av_conn.c - one agent connection: the pump and its state machine.
 *
 *   SNIFF ──0x16──▶ (TLS to the proxy) ──▶ PROXY_SNIFF
 *     └──other──▶ PROXY_SNIFF
 *   PROXY_SNIFF: 0x05 ──▶ SOCKS (av_proxy_socks.c) ──05 00──▶ TUNNEL_SNIFF
 *                0x04 ──▶ SOCKS4 refused, closed
 *                other ──▶ PROXY_HEAD
 *   PROXY_HEAD: CONNECT ──200──▶ TUNNEL_SNIFF ──0x16──▶ MITM TLS ──▶ TUNNEL_HEAD
 *                                    ├── HTTP method ──▶ TUNNEL_HEAD (cleartext)
 *                                    └── passthrough host ──▶ OPAQUE
 *               absolute http:// ──▶ exchange ──▶ PROXY_HEAD
 *               GET /ca.pem, /healthz ──▶ answered ──▶ PROXY_HEAD
 *   TUNNEL_HEAD: request ──▶ exchange ──▶ TUNNEL_HEAD
 *                MITM TLS negotiated ALPN h2 ──▶ H2 (one exchange per stream)
 *
 * av__conn_proceed() is the only function that moves bytes: it loops over
 * "read sockets, run TLS layers, run the protocol step, write sockets"
 * until nothing progresses, then sets watcher interest from the buffers.
 * Every buffer is bounded, so a slow side stops reads on the other.
 *
 * An exchange (av_exchange.h) is one request/response. Its agent side is
 * HTTP/1.1 (the connection's single exchange, c->x; av_agent_h1.c) or an
 * HTTP/2 stream (c->xs; av_agent_h2.c), behind av_agent_ops. Its upstream
 * side is an HTTP/1.1 connection of its own (av_link_h1.c) or a stream on
 * a shared HTTP/2 connection (av_link_mux.c over av_mux.c), behind
 * av_link_ops. The request is kept as a protocol-neutral copy (x->rq,
 * av_req.c: method, target, fields with the credential injected) until the
 * upstream's protocol is known, then serialized for it; bodies are moved by
 * one source→sink loop per direction, so every combination (h1/h2 agent ×
 * h1/h2 upstream) shares the same code.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_conn.h"
#include "av_conn_int.h"

/* Lingering close: LINGER_SECONDS, LINGER_MAX_BYTES (av_limits.h). */

void av__conn_wake(void *owner)
{
    av_conn *c = owner;
    if (c->in_proceed) {
        c->again = 1; /* the running pump loops once more */
        return;
    }
    av__conn_proceed(c);
}

/* First bytes inside a tunnel decide its mode. */
static int conn_tunnel_sniff(av_conn *c)
{
    const av_env *env = c->env;
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
        if (c->socks_by_addr && !av__conn_socks_sni(c))
            return 0; /* SOCKS5 to an address: the SNI will name it */
        av_buf *cin, *cout;
        av_tls *t = NULL;
        av__side_tls_bufs(&c->a, &cin, &cout);
        int rc = av__tls_server_new(&t, env->tls_srv, c->dest.host, NULL, cin, cout);
        if (rc == AV_OK && (rc = av__tls_offer_h2(t)) != AV_OK) {
            av__tls_free(t);
            t = NULL;
        }
        if (rc == AV_OK)
            rc = av__side_push_tls(&c->a, t);
        if (rc != AV_OK) {
            /* AV_ERR_LIMIT: the leaf-minting rate cap (SECURITY 15). The
             * agent already has its 200, so closing is the only answer. */
            av__log(env->log, rc == AV_ERR_LIMIT ? AV_LOG_WARN : AV_LOG_ERROR,
                    "tunnel peer=%s host=%s refused: cannot create MITM TLS: %s", c->peer, c->dest.host,
                    rc == AV_ERR_LIMIT ? "leaf minting rate limit reached" : av_strerror(rc));
            c->state = C_CLOSING;
            c->a.want_shut = 1;
            return 1;
        }
        c->dest_tls = 1;
        c->state = C_TUNNEL_HEAD;
        env->metrics->m_tls_agent++;
        return 1;
    }
    if (b >= 'A' && b <= 'Z') {
        c->dest_tls = 0;
        c->state = C_TUNNEL_HEAD;
        return 1;
    }
    av__log(env->log, AV_LOG_INFO, "tunnel peer=%s host=%s:%d refused: neither TLS nor HTTP", c->peer,
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
        av__log(c->env->log, AV_LOG_INFO, "tunnel host=%s:%d failed: %s", c->dest.host, c->dest.port,
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
    progress |= av__splice_bytes(c->a.pin, up->side.pout, NULL);
    progress |= av__splice_bytes(up->side.pin, c->a.pout, NULL);
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
            const char *host = c->env->proxy_names[0];
            if (av__tls_server_new(&t, c->env->tls_srv, host, c->env->proxy_names + 1, cin, cout) != AV_OK ||
                av__side_push_tls(&c->a, t) != AV_OK) {
                c->state = C_CLOSING;
                c->a.want_shut = 1;
                return 1;
            }
        }
        c->state = C_PROXY_SNIFF;
        return 1;
    }
    case C_PROXY_SNIFF: {
        /* The first byte of plaintext (inside TLS to the proxy, if any):
         * SOCKS5, SOCKS4 (refused), or an HTTP proxy request. */
        if (c->a.pin->len == 0) {
            if (c->a.in_eof) {
                c->state = C_CLOSING;
                av__side_close_write(&c->a);
                return 1;
            }
            return 0;
        }
        const uint8_t b = av__buf_head(c->a.pin)[0];
        if (b == AV_SOCKS5_VERSION) {
            c->state = C_SOCKS;
            c->socks_step = SOCKS_GREETING;
        } else if (b == AV_SOCKS4_VERSION) {
            av__conn_socks4_refuse(c);
        } else {
            c->state = C_PROXY_HEAD;
        }
        return 1;
    }
    case C_SOCKS:
        return av__conn_socks_step(c);
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
            av__log(c->env->log, AV_LOG_INFO,
                    "gateway %s peer=%s: a TLS ClientHello: the gateway speaks plain HTTP (use http://, not https://)",
                    c->gw->name, c->peer);
            av__buf_consume(in, in->len);
            av__conn_respond(c, 400, "this gateway speaks plain HTTP: use http://, not https://", 0, 1);
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
        return av__conn_h2_start(c);
    }
    case C_TUNNEL_HEAD:
        if (c->dest_tls && !c->alpn_checked) {
            if (av__side_handshaking(&c->a))
                return 0;
            c->alpn_checked = 1;
            const char *alpn = av__tls_alpn(c->a.layer[c->a.nlayers - 1].tls);
            if (strcmp(alpn, "h2") == 0)
                return av__conn_h2_start(c);
        }
        return av__conn_read_head(c);
    case C_PROXY_HEAD:
        return av__conn_read_head(c);
    case C_H2:
        return av__conn_h2_step(c);
    case C_TUNNEL_SNIFF:
        return conn_tunnel_sniff(c);
    case C_EXCHANGE:
        return av__x_step(&c->x);
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
    av__conn_proceed(c);
}

static void conn_on_timer(void *ud)
{
    av_conn *c = ud;
    av__log(c->env->log, AV_LOG_DEBUG, "connection peer=%s timed out in state %d", c->peer, c->state);
    if (c->state == C_SOCKS)
        av__log(c->env->log, AV_LOG_INFO,
                "connection peer=%s closed: the SOCKS5 negotiation did not finish within header_timeout", c->peer);
    if ((c->state == C_PROXY_HEAD || c->state == C_TUNNEL_HEAD) && c->a.pin->len > 0)
        av__conn_respond(c, 408, "request header timeout", 0, 1); /* then close after the flush */
    else
        c->dead = 1;
    if (!c->end)
        c->end = AV_END_TIMEOUT;
    av__conn_proceed(c); /* may free |c|: nothing after this */
}

/* The longest decide_timeout of the requests held for a decision on |c|
 * (0: none): the connection stays open at least that long. */
static double conn_held_for(const av_conn *c)
{
    double t = 0;
    const av_exchange *one = c->state == C_EXCHANGE ? &c->x : NULL;
    for (const av_exchange *x = one ? one : c->state == C_H2 ? c->xs : NULL; x; x = one ? NULL : x->next)
        if (x->dwait && x->svc) {
            double d = x->svc->decide_timeout > 0 ? x->svc->decide_timeout : AV_DECIDE_TIMEOUT_DEFAULT;
            if (d > t)
                t = d;
        }
    return t;
}

static void conn_arm_timer(av_conn *c)
{
    const av_config *cfg = c->snap->cfg;
    double now = av__loop_now(c->env->loop);
    double t = cfg->idle_timeout;
    /* C_SOCKS: head_start is the negotiation's first byte. C_PROXY_SNIFF
     * waits only after TLS to the proxy (plain connections pass through it
     * with their first byte): idle, as C_PROXY_HEAD between requests. */
    if ((c->state == C_PROXY_HEAD || c->state == C_TUNNEL_HEAD || c->state == C_SNIFF || c->state == C_SOCKS ||
         c->state == C_TUNNEL_SNIFF || c->state == C_GW_SNIFF) && c->head_start > 0) {
        t = c->head_start + cfg->header_timeout - now;
        if (t < 0.001)
            t = 0.001;
    } else if (c->state == C_SNIFF || c->state == C_SOCKS || c->state == C_TUNNEL_SNIFF || c->state == C_GW_SNIFF ||
               av__side_handshaking(&c->a)) {
        t = cfg->header_timeout;
    } else if (c->state == C_EXCHANGE && c->x.ws_open) {
        t = cfg->ws_idle_timeout;
    } else if (c->state == C_H2 && av__conn_h2_has_ws(c)) {
        t = cfg->ws_idle_timeout;
    } else if (conn_held_for(c) > 0) {
        /* held for a decision: its own timer answers it (403) first */
        double h = conn_held_for(c) + 1.0;
        t = h > t ? h : t;
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
        av__x_log(&c->x, why);
        c->env->metrics->exchanges++;
    }
    for (av_exchange *x = c->xs; x; x = x->next) {
        if (x->active && !x->logged) {
            if (!x->end)
                x->end = end;
            av__x_log(x, why);
            c->env->metrics->exchanges++;
        }
    }
}

static void conn_free(av_conn *c)
{
    const av_env *env = c->env;
    conn_end_exchanges(c);
    if (c->opaque_up)
        av__upstream_release(c->opaque_up, 0);
    av__x_reset(&c->x);
    while (c->xs)
        av__conn_h2_free_x(c, c->xs);
    av__h2_free(c->h2);
    av__timer_free(c->timer);
    av__side_free(&c->a, 1);
    av__snap_unref(c->snap);
    if (c->prev)
        c->prev->next = c->next;
    else
        *env->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    (*env->nconns)--;
    av__free(c);
    env->on_conn_gone(env->ud);
}

/* The pump. It may free |c| (when the connection is done): callers must not
 * touch |c| after calling it. */
void av__conn_proceed(av_conn *c)
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
            if (c->state == C_SNIFF || c->state == C_PROXY_SNIFF || c->state == C_SOCKS ||
                c->state == C_TUNNEL_SNIFF || av__side_handshaking(&c->a) || c->state == C_TUNNEL_HEAD ||
                c->state == C_PROXY_HEAD)
                av__log(c->env->log, AV_LOG_INFO, "connection peer=%s%s%s closed: %s", c->peer,
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
            c->linger_until = av__loop_now(c->env->loop) + LINGER_SECONDS;
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

int av__conn_accept(const av_env *env, int fd, const struct sockaddr *peer, socklen_t len, av_gw *gw)
{
    (void)len;
    if (gw && !gw->allow_remote && !peer_is_local(peer)) {
        char ip[INET6_ADDRSTRLEN + 8];
        peer_text(peer, ip, sizeof(ip));
        av__log(env->log, AV_LOG_WARN,
                "gateway %s refused a connection from %s: only loopback clients (set allow_remote = yes)", gw->name,
                ip);
        return AV_ERR_DENIED;
    }
    av_conn *c = av__calloc(1, sizeof(*c));
    if (!c)
        return AV_ERR_NOMEM;
    c->env = env;
    c->snap = av__snap_ref(*env->snap_cur);
    c->token = -1;
    c->state = C_SNIFF;
    c->x.c = c;
    c->x.agent = &av__agent_h1_ops;
    c->x.env = env;
    c->x.gw = gw ? gw->name : NULL;
    c->x.wake = av__conn_wake;
    c->x.wake_ud = c;
    if (gw) {
        c->gw = gw;
        c->in_tunnel = 1;
        c->dest = gw->dest;
        c->dest_tls = gw->dest_tls;
        c->alpn_checked = 1; /* the agent side is plain: no ALPN */
        c->state = C_GW_SNIFF;
    }
    av__side_init(&c->a, fd, AV_RAW_BUF_MAX, AV_PLAIN_BUF_MAX);
    c->a.io = av__io_new(env->loop, fd, conn_on_io, c);
    c->timer = av__timer_new(env->loop, conn_on_timer, c);
    if (!c->a.io || !c->timer) {
        av__io_free(c->a.io);
        av__timer_free(c->timer);
        av__snap_unref(c->snap);
        av__free(c);
        return AV_ERR_NOMEM;
    }
    peer_text(peer, c->peer, sizeof(c->peer));
    c->next = *env->conns;
    if (*env->conns)
        (*env->conns)->prev = c;
    *env->conns = c;
    (*env->nconns)++;
    env->metrics->m_conns_total++;
    c->a.readable = 1;
    av__conn_proceed(c);
    return AV_OK;
}

/* Mark one connection as draining; idle ones close at once. The caller
 * must not touch |c| afterwards (it may be freed). */
static void conn_drain(av_conn *c)
{
    c->draining = 1;
    if (c->state == C_H2) {
        av__conn_proceed(c); /* the H2 step sends GOAWAY; streams in flight finish */
        return;
    }
    if (c->state != C_EXCHANGE && c->state != C_OPAQUE && c->a.pin->len == 0 && !c->x.active) {
        c->state = C_CLOSING;
        av__side_close_write(&c->a);
    }
    av__conn_proceed(c);
}

void av__conn_drain_all(const av_env *env)
{
    size_t n = *env->nconns;
    if (n == 0)
        return;
    av_conn **list = av__calloc(n, sizeof(*list));
    if (!list) {
        for (av_conn *c = *env->conns; c; c = c->next)
            c->draining = 1;
        return;
    }
    size_t k = 0;
    for (av_conn *c = *env->conns; c && k < n; c = c->next)
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
