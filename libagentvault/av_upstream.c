/* av_upstream.c - dial, verify, pool. */
#include "av_upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "av_limits.h"
#include "av_mem.h"
#include "av_ssrf.h"

static void up_fail(av_upconn *up, int status, int err, const char *msg)
{
    av__side_set_error(&up->side, err, msg);
    up->fail_status = status;
    up->state = AV_UP_FAILED;
    av__timer_stop(up->timer);
    if (up->side.io)
        av__io_set(up->side.io, 0);
}

static void up_notify(av_upconn *up)
{
    if (up->notify)
        up->notify(up->owner);
}

/* I/O on a connection we own: while READY/dialing the owner pumps it;
 * while idle in the pool, any readability means EOF or garbage: close. */
static void up_on_io(void *ud, int revents)
{
    av_upconn *up = ud;
    if (revents & AV_EV_READ)
        up->side.readable = 1;
    if (up->state == AV_UP_IDLE) {
        av__upstream_release(up, 0); /* removes from the pool and frees */
        return;
    }
    up_notify(up);
}

static void up_on_timer(void *ud)
{
    av_upconn *up = ud;
    if (up->state == AV_UP_IDLE) {
        av__upstream_release(up, 0);
        return;
    }
    if (up->state < AV_UP_READY) {
        up_fail(up, 504, AV_ERR_TIMEOUT, "upstream connect timed out");
        up_notify(up);
    }
}

static void addr_text(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof(ip));
        port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
        snprintf(buf, len, "%s:%d", ip, port);
    } else {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof(ip));
        port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
        snprintf(buf, len, "[%s]:%d", ip, port);
    }
}

/* Start a non-blocking connect to the next candidate address. Never
 * notifies the owner (the owner may free |up| from its notification, so
 * exactly one notify per event, by the caller). */
static void up_connect_next(av_upconn *up)
{
    av_pool *pool = up->pool;
    while (up->next_addr < up->naddrs) {
        int i = up->next_addr++;
        struct sockaddr *sa = (struct sockaddr *)&up->addrs[i];
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int rc = connect(fd, sa, up->addr_lens[i]);
        if (rc < 0 && errno != EINPROGRESS) {
            char m[160], a[80];
            addr_text(sa, a, sizeof(a));
            snprintf(m, sizeof(m), "connect %s: %s", a, strerror(errno));
            av__log(pool->log, AV_LOG_DEBUG, "upstream %s", m);
            close(fd);
            if (up->next_addr >= up->naddrs) {
                up_fail(up, 502, AV_ERR_IO, m);
                return;
            }
            continue;
        }
        if (up->side.fd >= 0)
            close(up->side.fd);
        av__io_free(up->side.io);
        up->side.fd = fd;
        up->side.io = av__io_new(pool->loop, fd, up_on_io, up);
        if (!up->side.io) {
            up_fail(up, 502, AV_ERR_NOMEM, "out of memory");
            return;
        }
        up->state = AV_UP_CONNECTING;
        av__io_set(up->side.io, AV_EV_WRITE);
        return;
    }
    up_fail(up, 502, AV_ERR_IO, "no address to connect to");
}

/* addr_refused: 0 if |sa| may be dialed; else 403 with the reason in |m|.
 * Never the proxy's own listeners; the SSRF ranges unless |checked| is 0
 * (an operator-chosen --resolve address). The one guard for dial time and
 * for CONNECT time (av__upstream_precheck). */
static int addr_refused(av_pool *pool, const struct sockaddr *sa, int checked, char *m, size_t cap)
{
    char a[80];
    addr_text(sa, a, sizeof(a));
    if (pool->is_own_listener(pool->ud, sa)) {
        snprintf(m, cap, "destination address not allowed: %s is this proxy", a);
        return 403;
    }
    const char *why = "";
    if (checked && av__ssrf_check(sa, pool->cfg->allow_private, pool->cfg->nallow_private, &why)) {
        snprintf(m, cap, "destination address not allowed: %s (%s)", a, why);
        return 403;
    }
    return 0;
}

/* Keep only addresses that pass the SSRF guard; fail if any does not. */
static int up_take_addrs(av_upconn *up, const av_dns_result *res, int checked)
{
    av_pool *pool = up->pool;
    up->naddrs = 0;
    for (int i = 0; i < res->naddrs && i < AV_DNS_MAX_ADDRS; i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&res->addrs[i];
        char m[200];
        int status = addr_refused(pool, sa, checked, m, sizeof(m));
        if (status) {
            up_fail(up, status, AV_ERR_SSRF, m);
            return AV_ERR_SSRF;
        }
        memcpy(&up->addrs[up->naddrs], sa, res->lens[i]);
        up->addr_lens[up->naddrs] = res->lens[i];
        up->naddrs++;
    }
    return AV_OK;
}

static void up_on_dns(void *ud, int err, const char *why, const av_dns_result *res)
{
    av_upconn *up = ud;
    up->dnsq = NULL;
    if (err) {
        char m[AV_HOST_MAX + 100];
        snprintf(m, sizeof(m), "cannot resolve %s: %s", up->dest.host, why);
        up_fail(up, 502, err, m);
        up_notify(up);
        return;
    }
    if (up_take_addrs(up, res, 1)) {
        up_notify(up);
        return;
    }
    up_connect_next(up);
    up_notify(up);
}

/* Fill |res| from a --resolve override for dest, if any. */
static int up_override(av_pool *pool, const av_authority *dest, av_dns_result *res)
{
    const av_config *cfg = pool->cfg;
    for (size_t i = 0; i < cfg->nresolve; i++) {
        const av_resolve_cfg *r = &cfg->resolve[i];
        if (r->port != dest->port || strcmp(r->host, dest->host) != 0)
            continue;
        memset(res, 0, sizeof(*res));
        int port = r->dial_port ? r->dial_port : dest->port;
        struct sockaddr_in *s4 = (struct sockaddr_in *)&res->addrs[0];
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&res->addrs[0];
        if (inet_pton(AF_INET, r->addr, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            s4->sin_port = htons((uint16_t)port);
            res->lens[0] = sizeof(*s4);
        } else if (inet_pton(AF_INET6, r->addr, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons((uint16_t)port);
            res->lens[0] = sizeof(*s6);
        } else {
            continue;
        }
        res->naddrs = 1;
        return 1;
    }
    return 0;
}

/* Fill |res| with the address an IP-literal |dest| names; 0 for a name. */
static int literal_addr(const av_authority *dest, av_dns_result *res)
{
    if (!dest->is_ip)
        return 0;
    memset(res, 0, sizeof(*res));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&res->addrs[0];
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&res->addrs[0];
    if (dest->is_ip == 4 && inet_pton(AF_INET, dest->host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)dest->port);
        res->lens[0] = sizeof(*s4);
    } else if (inet_pton(AF_INET6, dest->host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)dest->port);
        res->lens[0] = sizeof(*s6);
    }
    res->naddrs = 1;
    return 1;
}

/* av__upstream_precheck decides at CONNECT time what the dial would decide
 * for an address literal (or a --resolve override): 0 if it may be dialed,
 * else 403 with the dial-time reason in |m|. Names are left to dial time. */
int av__upstream_precheck(av_pool *pool, const av_authority *dest, char *m, size_t cap)
{
    av_dns_result res;
    int checked = 1;
    if (up_override(pool, dest, &res))
        checked = 0; /* operator-chosen address: exempt from the SSRF ranges */
    else if (!literal_addr(dest, &res))
        return 0;
    for (int i = 0; i < res.naddrs && i < AV_DNS_MAX_ADDRS; i++) {
        int status = addr_refused(pool, (const struct sockaddr *)&res.addrs[i], checked, m, cap);
        if (status)
            return status;
    }
    return 0;
}

static int up_start(av_upconn *up)
{
    av_pool *pool = up->pool;
    av_dns_result res;
    av__timer_start(up->timer, pool->cfg->connect_timeout);
    if (up_override(pool, &up->dest, &res)) {
        /* Operator-chosen address: exempt from the SSRF ranges. */
        if (up_take_addrs(up, &res, 0) == AV_OK)
            up_connect_next(up);
        return AV_OK;
    }
    if (literal_addr(&up->dest, &res)) {
        if (up_take_addrs(up, &res, 1) == AV_OK)
            up_connect_next(up);
        return AV_OK;
    }
    up->state = AV_UP_RESOLVING;
    up->dnsq = av__dns_resolve(pool->dns, up->dest.host, up->dest.port, up_on_dns, up);
    return AV_OK;
}

static void pool_unlink(av_pool *pool, av_upconn *up)
{
    if (up->pool_prev)
        up->pool_prev->pool_next = up->pool_next;
    else if (pool->idle == up)
        pool->idle = up->pool_next;
    if (up->pool_next)
        up->pool_next->pool_prev = up->pool_prev;
    up->pool_next = up->pool_prev = NULL;
    pool->nidle--;
}

void av__upstream_key(char *key, size_t len, const av_authority *dest, int tls, const char *scope)
{
    /* "https|host:port|scope" (host:port with IPv6 brackets); per exchange,
     * so no snprintf. Truncated keys stay distinct only up to |len|, which
     * AV_UP_KEY_MAX makes larger than any host plus a bounded scope. */
    char auth[AV_HOST_MAX + 16];
    if (av__authority_format(dest, -1, auth, sizeof(auth)) < 0)
        auth[0] = '\0';
    const char *parts[] = {tls ? "https|" : "http|", auth, "|", scope};
    size_t o = 0;
    for (size_t i = 0; i < 4 && len; i++) {
        size_t n = strlen(parts[i]);
        if (o + n >= len)
            n = len - 1 - o;
        memcpy(key + o, parts[i], n);
        o += n;
    }
    if (len)
        key[o] = '\0';
}

int av__upstream_is_h2(const av_upconn *up)
{
    if (!up->tls || up->side.nlayers < 1)
        return 0;
    return strcmp(av__tls_alpn(up->side.layer[up->side.nlayers - 1].tls), "h2") == 0;
}

av_upconn *av__upstream_pool_take(av_pool *pool, const char *key, av_up_notify notify, void *owner)
{
    for (av_upconn *p = pool->idle; p; p = p->pool_next) {
        if (strcmp(p->key, key) != 0)
            continue;
        pool_unlink(pool, p);
        av__timer_stop(p->timer);
        p->state = AV_UP_READY;
        p->notify = notify;
        p->owner = owner;
        p->reused = 1;
        return p;
    }
    return NULL;
}

int av__upstream_acquire(av_pool *pool, const av_authority *dest, int tls, const char *scope,
                         av_up_notify notify, void *owner, av_upconn **out)
{
    return av__upstream_acquire2(pool, dest, tls, scope, 0, notify, owner, out);
}

int av__upstream_acquire2(av_pool *pool, const av_authority *dest, int tls, const char *scope, int offer_h2,
                          av_up_notify notify, void *owner, av_upconn **out)
{
    char key[AV_UP_KEY_MAX];
    av__upstream_key(key, sizeof(key), dest, tls, scope);
    av_upconn *p = av__upstream_pool_take(pool, key, notify, owner);
    if (p) {
        *out = p;
        return AV_OK;
    }
    av_upconn *up = av__calloc(1, sizeof(*up));
    if (!up)
        return AV_ERR_NOMEM;
    up->pool = pool;
    av__side_init(&up->side, -1, AV_RAW_BUF_MAX, AV_PLAIN_BUF_MAX);
    up->tls = tls;
    up->offer_h2 = tls && offer_h2;
    up->dest = *dest;
    memcpy(up->key, key, sizeof(key));
    up->notify = notify;
    up->owner = owner;
    up->timer = av__timer_new(pool->loop, up_on_timer, up);
    if (!up->timer) {
        av__free(up);
        return AV_ERR_NOMEM;
    }
    *out = up;
    return up_start(up);
}

int av__upstream_step(av_upconn *up)
{
    if (up->state == AV_UP_CONNECTING) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (getsockopt(up->side.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            soerr = errno;
        if (soerr == EINPROGRESS || soerr == EALREADY)
            return 0;
        if (soerr == 0) {
            /* connect() completion shows up as writability; a fresh socket
             * with no error and no write event yet is still in progress. */
            struct sockaddr_storage peer;
            socklen_t pl = sizeof(peer);
            if (getpeername(up->side.fd, (struct sockaddr *)&peer, &pl) < 0)
                return 0;
        }
        if (soerr) {
            char m[160], a[80];
            addr_text((struct sockaddr *)&up->addrs[up->next_addr - 1], a, sizeof(a));
            snprintf(m, sizeof(m), "connect %s: %s", a, strerror(soerr));
            av__log(up->pool->log, AV_LOG_DEBUG, "upstream %s", m);
            if (up->next_addr < up->naddrs) {
                up_connect_next(up);
                return 1;
            }
            up_fail(up, 502, AV_ERR_IO, m);
            return 1;
        }
        if (up->tls) {
            av_buf *cin, *cout;
            av_tls *t = NULL;
            av__side_tls_bufs(&up->side, &cin, &cout);
            int rc = av__tls_client_new(&t, up->pool->tls_cli, up->dest.host, cin, cout);
            if (rc == AV_OK && up->offer_h2)
                rc = av__tls_offer_h2(t);
            if (rc == AV_OK) /* offers a cached session of the same key (SECURITY.md) */
                rc = av__tls_client_resume(t, up->key);
            if (rc != AV_OK) {
                av__tls_free(t);
                t = NULL;
            }
            if (rc || av__side_push_tls(&up->side, t)) {
                up_fail(up, 502, AV_ERR_TLS, "cannot create TLS client");
                return 1;
            }
            up->state = AV_UP_HANDSHAKE;
        } else {
            up->state = AV_UP_READY;
            av__timer_stop(up->timer);
        }
        return 1;
    }
    if (up->state == AV_UP_HANDSHAKE) {
        int rc = av__side_pump_in(&up->side);
        if (rc >= 0)
            rc = av__side_pump_out(&up->side);
        if (rc < 0) {
            char m[260];
            if (rc == AV_ERR_VERIFY)
                snprintf(m, sizeof(m), "%s", up->side.errmsg);
            else
                snprintf(m, sizeof(m), "upstream TLS handshake failed: %s", up->side.errmsg);
            up->side.err = 0;
            up_fail(up, 502, rc, m);
            return 1;
        }
        if (!av__side_handshaking(&up->side)) {
            up->pool->metrics->m_tls_upstream++;
            up->state = AV_UP_READY;
            av__timer_stop(up->timer);
            return 1;
        }
        if (up->side.in_eof) {
            up_fail(up, 502, AV_ERR_CLOSED, "upstream closed during TLS handshake");
            return 1;
        }
        av__io_set(up->side.io, av__side_events(&up->side));
    }
    return 0;
}

static void up_destroy(av_upconn *up)
{
    if (up->dnsq)
        av__dns_cancel(up->dnsq);
    av__timer_free(up->timer);
    av__side_free(&up->side, 1);
    av__free(up);
}

void av__upstream_release(av_upconn *up, int reusable)
{
    av_pool *pool = up->pool;
    if (up->state == AV_UP_IDLE) {
        pool_unlink(pool, up);
        up_destroy(up);
        return;
    }
    if (reusable && up->state == AV_UP_READY && !pool->draining && pool->nidle < AV_POOL_MAX &&
        up->side.pin->len == 0 && !up->side.in_eof && !up->side.err && av__side_flushed(&up->side)) {
        up->state = AV_UP_IDLE;
        up->notify = NULL;
        up->owner = NULL;
        up->served++;
        up->pool_prev = NULL;
        up->pool_next = pool->idle;
        if (pool->idle)
            pool->idle->pool_prev = up;
        pool->idle = up;
        pool->nidle++;
        av__io_set(up->side.io, AV_EV_READ);
        av__timer_start(up->timer, AV_POOL_IDLE_SECONDS);
        return;
    }
    up_destroy(up);
}

void av__upstream_pool_free(av_pool *pool)
{
    while (pool->idle) {
        av_upconn *up = pool->idle;
        pool_unlink(pool, up);
        up_destroy(up);
    }
}
