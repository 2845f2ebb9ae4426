/* av_upstream.c - dial, verify, pool. */
#include "av_upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "av_limits.h"
#include "av_mem.h"
#include "av_parent.h"
#include "av_ssrf.h"

static void up_fail(av_upconn *up, int status, int err, const char *msg)
{
    /* A failure on the way to an open tunnel is the parent's (/metrics). */
    if (up->parent && (up->state == AV_UP_CONNECTING || up->state == AV_UP_PARENT_TLS ||
                       up->state == AV_UP_PARENT_NEGOTIATE || (up->state == AV_UP_RESOLVING && up->parent_dns)))
        av__metrics_count_parent(up->pool->metrics, up->parent->label, 1);
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
        char m[200];
        if (up->parent && up->state != AV_UP_HANDSHAKE && (up->state != AV_UP_RESOLVING || up->parent_dns)) {
            snprintf(m, sizeof(m), "upstream connect timed out: no tunnel through %s %.100s within connect_timeout",
                     up->parent->kind >= AV_PARENT_SOCKS5 ? "SOCKS5 parent" : "parent proxy", up->parent->label);
        } else {
            snprintf(m, sizeof(m), "upstream connect timed out");
        }
        up_fail(up, 504, AV_ERR_TIMEOUT, m);
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

/* The message of a failed connect to |a|: the parent proxy is named when
 * the connection goes through one. */
static void up_connect_msg(const av_upconn *up, char *m, size_t cap, const char *a, int err)
{
    if (up->parent)
        snprintf(m, cap, "parent proxy %.80s: connect %.48s: %.40s", up->parent->label, a, strerror(err));
    else
        snprintf(m, cap, "connect %s: %s", a, strerror(err));
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
            char m[200], a[80];
            addr_text(sa, a, sizeof(a));
            up_connect_msg(up, m, sizeof(m), a, errno);
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

static void up_parent_dial(av_upconn *up);

/* The parent's addresses: the operator's choice (exempt from the SSRF
 * ranges), but never this proxy's own listener (a loop, e.g. HTTPS_PROXY
 * pointing at this proxy with upstream_proxy = env). */
static int up_take_parent_addrs(av_upconn *up, const av_dns_result *res)
{
    for (int i = 0; i < res->naddrs && i < AV_DNS_MAX_ADDRS; i++)
        if (up->pool->is_own_listener(up->pool->ud, (const struct sockaddr *)&res->addrs[i])) {
            char m[200];
            snprintf(m, sizeof(m), "parent proxy %.100s is this proxy's own listener: upstream_proxy would loop",
                     up->parent->label);
            up_fail(up, 502, AV_ERR_CONFIG, m);
            return AV_ERR_CONFIG;
        }
    return up_take_addrs(up, res, 0);
}

static void up_on_dns(void *ud, int err, const char *why, const av_dns_result *res)
{
    av_upconn *up = ud;
    up->dnsq = NULL;
    if (err) {
        char m[AV_HOST_MAX + 100];
        if (up->parent_dns)
            snprintf(m, sizeof(m), "parent proxy %.80s: cannot resolve %.80s: %.100s", up->parent->label,
                     up->parent->host, why);
        else
            snprintf(m, sizeof(m), "cannot resolve %s: %s", up->dest.host, why);
        up_fail(up, 502, err, m);
        up_notify(up);
        return;
    }
    if (up->parent_dns ? up_take_parent_addrs(up, res) : up_take_addrs(up, res, 1)) {
        up_notify(up);
        return;
    }
    if (up->parent && !up->parent_dns)
        up_parent_dial(up);
    else
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

/* The origin's checked addresses are in up->addrs: the first is what the
 * parent is asked for. Now resolve the parent itself and connect to it. */
static void up_parent_dial(av_upconn *up)
{
    av_pool *pool = up->pool;
    if (up->naddrs > 0) {
        memcpy(&up->target, &up->addrs[0], up->addr_lens[0]);
        up->target_len = up->addr_lens[0];
    } else if (up->parent->kind != AV_PARENT_SOCKS5H || up->dest.is_ip) {
        /* only a socks5h parent is ever asked for a name */
        char m[AV_HOST_MAX + 40];
        snprintf(m, sizeof(m), "cannot resolve %s: no address", up->dest.host);
        up_fail(up, 502, AV_ERR_IO, m);
        return;
    }
    up->naddrs = up->next_addr = 0;
    av_authority pa;
    memset(&pa, 0, sizeof(pa));
    memcpy(pa.host, up->parent->host, sizeof(pa.host));
    pa.is_ip = up->parent->is_ip;
    pa.port = up->parent->port;
    av_dns_result res;
    if (literal_addr(&pa, &res)) {
        if (up_take_parent_addrs(up, &res) == AV_OK)
            up_connect_next(up);
        return;
    }
    up->state = AV_UP_RESOLVING;
    up->parent_dns = 1;
    up->dnsq = av__dns_resolve(pool->dns, pa.host, pa.port, up_on_dns, up);
}

/* A socks5h:// parent resolves names itself: what the guard can still
 * judge is refused here (the "localhost" names, RFC 6761). */
static int up_name_refused(av_upconn *up)
{
    const char *h = up->dest.host;
    size_t n = strlen(h);
    if (strcmp(h, "localhost") == 0 || (n > 10 && strcmp(h + n - 10, ".localhost") == 0)) {
        char m[AV_HOST_MAX + 80];
        snprintf(m, sizeof(m), "destination address not allowed: %s (loopback name)", h);
        up_fail(up, 403, AV_ERR_SSRF, m);
        return 1;
    }
    return 0;
}

static int up_start(av_upconn *up)
{
    av_pool *pool = up->pool;
    av_dns_result res;
    av__timer_start(up->timer, pool->cfg->connect_timeout);
    if (up->parent) {
        /* Through a parent: the origin's address is checked here as for a
         * direct connection (socks5h: unless it is a name), then the
         * parent is dialed. */
        int checked = 1;
        if (up_override(pool, &up->dest, &res))
            checked = 0; /* operator-chosen: exempt from the SSRF ranges */
        else if (!literal_addr(&up->dest, &res)) {
            if (up->parent->kind == AV_PARENT_SOCKS5H) {
                if (!up_name_refused(up))
                    up_parent_dial(up);
                return AV_OK;
            }
            up->state = AV_UP_RESOLVING;
            up->dnsq = av__dns_resolve(pool->dns, up->dest.host, up->dest.port, up_on_dns, up);
            return AV_OK;
        }
        if (up_take_addrs(up, &res, checked) == AV_OK)
            up_parent_dial(up);
        return AV_OK;
    }
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

/* up_key formats the key for a connection through |parent| (NULL:
 * direct). */
static void up_key(char *key, size_t len, const av_authority *dest, int tls, const char *scope,
                   const av_parent *parent)
{
    /* "https|host:port|scope" (host:port with IPv6 brackets), then
     * "|parent-id" through a parent; per exchange, so no snprintf.
     * Truncated keys stay distinct only up to |len|, which AV_UP_KEY_MAX
     * makes larger than any host plus a bounded scope and an id. */
    char auth[AV_HOST_MAX + 16];
    if (av__authority_format(dest, -1, auth, sizeof(auth)) < 0)
        auth[0] = '\0';
    const char *parts[] = {tls ? "https|" : "http|", auth, "|", scope, parent ? "|" : "",
                           parent ? parent->id : ""};
    size_t o = 0;
    for (size_t i = 0; i < 6 && len; i++) {
        size_t n = strlen(parts[i]);
        if (o + n >= len)
            n = len - 1 - o;
        memcpy(key + o, parts[i], n);
        o += n;
    }
    if (len)
        key[o] = '\0';
}

void av__upstream_key(av_pool *pool, char *key, size_t len, const av_authority *dest, int tls, const char *scope)
{
    up_key(key, len, dest, tls, scope, av__parents_route(pool->parents, scope, dest));
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
    av_parent *parent = av__parents_route(pool->parents, scope, dest);
    up_key(key, sizeof(key), dest, tls, scope, parent);
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
    up->parent = av__parent_ref(parent);
    memcpy(up->key, key, sizeof(key));
    up->notify = notify;
    up->owner = owner;
    up->timer = av__timer_new(pool->loop, up_on_timer, up);
    if (!up->timer) {
        av__parent_unref(up->parent);
        av__free(up);
        return AV_ERR_NOMEM;
    }
    *out = up;
    if (parent)
        av__log(pool->log, AV_LOG_DEBUG, "upstream %s:%d via parent proxy %s://%s", dest->host, dest->port,
                av__parent_scheme(parent->kind), parent->label);
    return up_start(up);
}

/* ---- through a parent proxy ---------------------------------------------- */

static void up_parent_fail(av_upconn *up, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void up_parent_fail(av_upconn *up, int err, const char *fmt, ...)
{
    char m[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof(m), fmt, ap);
    va_end(ap);
    up->side.err = 0;
    av__log(up->pool->log, AV_LOG_INFO, "upstream %s:%d: %s", up->dest.host, up->dest.port, m);
    up_fail(up, 502, err, m);
}

/* The parent's name for messages: "parent proxy H:P" / "SOCKS5 parent H:P". */
static const char *up_parent_what(const av_upconn *up)
{
    return up->parent->kind == AV_PARENT_SOCKS5 || up->parent->kind == AV_PARENT_SOCKS5H ? "SOCKS5 parent"
                                                                                         : "parent proxy";
}

/* Queue the first message of the negotiation: the CONNECT request or the
 * SOCKS5 greeting. */
static void up_parent_send_first(av_upconn *up)
{
    av_parent *pa = up->parent;
    up->state = AV_UP_PARENT_NEGOTIATE;
    int rc;
    if (pa->kind == AV_PARENT_HTTP || pa->kind == AV_PARENT_HTTPS) {
        char ip[INET6_ADDRSTRLEN] = "";
        int port = up->dest.port;
        const struct sockaddr *sa = (const struct sockaddr *)&up->target;
        if (sa->sa_family == AF_INET) {
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof(ip));
            port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
        } else if (sa->sa_family == AF_INET6) {
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof(ip));
            port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
        }
        rc = av__parent_connect_request(up->side.pout, ip, port, pa->auth ? av__secret_data(pa->auth) : NULL,
                                        pa->auth ? av__secret_len(pa->auth) : 0);
    } else {
        uint8_t g[4];
        size_t n = av__socks5_greeting(g, pa->auth != NULL);
        rc = av__buf_append(up->side.pout, g, n);
        up->parent_phase = 1;
    }
    if (rc != AV_OK)
        up_parent_fail(up, rc, "%s %s: cannot build the request", up_parent_what(up), pa->label);
}

/* TCP to the parent is up. */
static void up_parent_begin(av_upconn *up)
{
    av__metrics_count_parent(up->pool->metrics, up->parent->label, 0);
    if (up->parent->kind != AV_PARENT_HTTPS) {
        up_parent_send_first(up);
        return;
    }
    av_buf *cin, *cout;
    av_tls *t = NULL;
    av__side_tls_bufs(&up->side, &cin, &cout);
    int rc = av__tls_client_new(&t, up->pool->tls_cli, up->parent->host, cin, cout);
    if (rc == AV_OK) { /* the parent's own sessions: keyed by its identity */
        char key[sizeof(up->parent->id) + 8];
        snprintf(key, sizeof(key), "parent|%s", up->parent->id);
        rc = av__tls_client_resume(t, key);
    }
    if (rc != AV_OK) {
        av__tls_free(t);
        t = NULL;
    }
    if (rc || av__side_push_tls(&up->side, t)) {
        up_fail(up, 502, AV_ERR_TLS, "cannot create TLS client");
        return;
    }
    up->state = AV_UP_PARENT_TLS;
}

/* The SOCKS5 CONNECT request: the checked address, else the name. */
static int up_socks5_connect(av_upconn *up)
{
    uint8_t req[300];
    int n = av__socks5_connect_request(req, sizeof(req),
                                       up->target_len ? (const struct sockaddr *)&up->target : NULL, up->dest.host,
                                       up->dest.port);
    if (n < 0)
        return n;
    up->parent_phase = 3;
    return av__buf_append(up->side.pout, req, (size_t)n);
}

/* One round of the exchange with the parent: 1 progress, 0 none, 2 the
 * tunnel is open (bytes after the parent's answer stay in pin: they are
 * the origin's). */
static int up_parent_negotiate(av_upconn *up)
{
    av_parent *pa = up->parent;
    av_buf *in = up->side.pin;
    const uint8_t *p = av__buf_head(in);
    size_t n = av__buf_len(in);
    const char *what = up_parent_what(up);
    if (pa->kind == AV_PARENT_HTTP || pa->kind == AV_PARENT_HTTPS) {
        int status = 0;
        char reason[100];
        int rc = av__parent_parse_response(p, n, &status, reason, sizeof(reason));
        if (rc == 0)
            return 0;
        if (rc < 0) {
            up_parent_fail(up, AV_ERR_PARSE, "%s %s sent %s answer to CONNECT", what, pa->label,
                           rc == AV_ERR_LIMIT ? "a too large (over 16 KiB)" : "a malformed");
            return 1;
        }
        if (status < 200 || status > 299) {
            up_parent_fail(up, AV_ERR_DENIED, "%s %s refused CONNECT: %d%s%s", what, pa->label, status,
                           reason[0] ? " " : "", reason);
            return 1;
        }
        av__buf_consume(in, (size_t)rc);
        return 2;
    }
    int v = 0, rc;
    if (up->parent_phase == 1) {
        rc = av__socks5_parse_method(p, n, &v);
        if (rc > 0) {
            av__buf_consume(in, (size_t)rc);
            if (v == 2 && pa->auth) {
                uint8_t req[600];
                int rl = av__socks5_auth_request(req, sizeof(req), av__secret_data(pa->auth),
                                                 av__secret_len(pa->auth));
                int arc = rl < 0 ? rl : av__buf_append(up->side.pout, req, (size_t)rl);
                av__wipe(req, sizeof(req));
                up->parent_phase = 2;
                if (arc != AV_OK)
                    up_parent_fail(up, arc, "%s %s: cannot build the request", what, pa->label);
                return 1;
            }
            if (v == 0) {
                int crc = up_socks5_connect(up);
                if (crc != AV_OK)
                    up_parent_fail(up, crc, "%s %s: cannot build the request", what, pa->label);
                return 1;
            }
            if (v == 0xff)
                up_parent_fail(up, AV_ERR_DENIED, "%s %s accepts none of the offered authentication methods (%s)",
                               what, pa->label,
                               pa->auth ? "none, username/password" : "none; set upstream_proxy_auth");
            else
                up_parent_fail(up, AV_ERR_PARSE, "%s %s chose an authentication method not offered (%02x)", what,
                               pa->label, v);
            return 1;
        }
    } else if (up->parent_phase == 2) {
        rc = av__socks5_parse_auth(p, n, &v);
        if (rc > 0) {
            av__buf_consume(in, (size_t)rc);
            if (v != 0) {
                up_parent_fail(up, AV_ERR_DENIED, "%s %s rejected the username/password (status %02x)", what,
                               pa->label, v);
                return 1;
            }
            int crc = up_socks5_connect(up);
            if (crc != AV_OK)
                up_parent_fail(up, crc, "%s %s: cannot build the request", what, pa->label);
            return 1;
        }
    } else {
        rc = av__socks5_parse_reply(p, n, &v);
        if (rc > 0) {
            av__buf_consume(in, (size_t)rc);
            if (v != 0) {
                up_parent_fail(up, AV_ERR_DENIED, "%s %s failed: %s (%02x)", what, pa->label,
                               av__socks5_rep_name(v), v);
                return 1;
            }
            return 2;
        }
    }
    if (rc < 0)
        up_parent_fail(up, AV_ERR_PARSE, "%s %s sent a malformed reply", what, pa->label);
    return rc < 0;
}

/* PARENT_TLS and PARENT_NEGOTIATE: 0 no progress, 1 progress (or failed),
 * 2 the tunnel is open. */
static int up_parent_step(av_upconn *up)
{
    int progress = 0;
    for (int round = 0; round < 8; round++) {
        int rc = av__side_pump_in(&up->side);
        if (rc >= 0)
            rc = av__side_pump_out(&up->side);
        if (rc < 0) {
            if (up->state == AV_UP_PARENT_TLS)
                up_parent_fail(up, rc, "TLS to parent proxy %s failed: %s", up->parent->label, up->side.errmsg);
            else
                up_parent_fail(up, rc, "%s %s: %s", up_parent_what(up), up->parent->label, up->side.errmsg);
            return 1;
        }
        progress |= rc > 0;
        if (up->state == AV_UP_PARENT_TLS) {
            if (av__side_handshaking(&up->side)) {
                if (up->side.in_eof) {
                    up_parent_fail(up, AV_ERR_CLOSED, "parent proxy %s closed during the TLS handshake",
                                   up->parent->label);
                    return 1;
                }
                break;
            }
            up_parent_send_first(up);
            if (up->state == AV_UP_FAILED)
                return 1;
            progress = 1;
            continue; /* send it */
        }
        int nrc = up_parent_negotiate(up);
        if (up->state == AV_UP_FAILED)
            return 1;
        if (nrc == 2) {
            av__log(up->pool->log, AV_LOG_DEBUG, "upstream %s:%d: tunnel through %s %s open", up->dest.host,
                    up->dest.port, up_parent_what(up), up->parent->label);
            return 2;
        }
        if (nrc == 0) {
            if (up->side.in_eof) {
                up_parent_fail(up, AV_ERR_CLOSED, "%s %s closed the connection before answering", up_parent_what(up),
                               up->parent->label);
                return 1;
            }
            if (!up->side.readable || av__buf_room(&up->side.raw_in) == 0)
                break;
        }
        progress = 1;
    }
    av__io_set(up->side.io, av__side_events(&up->side));
    return progress;
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
            char m[200], a[80];
            addr_text((struct sockaddr *)&up->addrs[up->next_addr - 1], a, sizeof(a));
            up_connect_msg(up, m, sizeof(m), a, soerr);
            av__log(up->pool->log, AV_LOG_DEBUG, "upstream %s", m);
            if (up->next_addr < up->naddrs) {
                up_connect_next(up);
                return 1;
            }
            up_fail(up, 502, AV_ERR_IO, m);
            return 1;
        }
        if (up->parent) {
            up_parent_begin(up); /* TLS to the parent, or its negotiation */
            return 1;
        }
        goto origin;
    }
    if (up->state == AV_UP_PARENT_TLS || up->state == AV_UP_PARENT_NEGOTIATE) {
        int rc = up_parent_step(up);
        if (rc <= 1)
            return rc;
        goto origin; /* the tunnel is open */
    }
    if (up->state == AV_UP_HANDSHAKE) {
        int rc = av__side_pump_in(&up->side);
        if (rc >= 0)
            rc = av__side_pump_out(&up->side);
        if (rc < 0) {
            char m[260];
            if (rc == AV_ERR_VERIFY && up->parent)
                snprintf(m, sizeof(m), "%.100s (through parent proxy %.60s: a parent that inspects TLS needs its CA "
                         "in upstream_cacert)", up->side.errmsg, up->parent->label);
            else if (rc == AV_ERR_VERIFY)
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

origin:
    /* Connected to the origin (directly or through the parent's tunnel):
     * its TLS, verified against its name, or ready for cleartext. */
    {
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
            if (up->parent) /* bytes of the tunnel may be waiting already */
                av__io_set(up->side.io, av__side_events(&up->side));
        } else {
            up->state = AV_UP_READY;
            av__timer_stop(up->timer);
        }
        return 1;
    }
}

static void up_destroy(av_upconn *up)
{
    av__parent_unref(up->parent);
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

void av__upstream_log_parents(av_pool *pool)
{
    av_parents *t = pool->parents;
    const av_config *cfg = pool->cfg;
    if (!t || t->logged)
        return;
    t->logged = 1;
    if (t->global)
        av__log(pool->log, AV_LOG_INFO, "upstream parent proxy %s://%s%s%s (%zu no_proxy rule(s)%s)",
                av__parent_scheme(t->global->kind), t->global->label, t->global->auth ? " with credentials" : "",
                t->global->kind == AV_PARENT_SOCKS5H ? "; names resolved by the parent: SSRF checks for names are "
                                                       "delegated to it" : "",
                t->noproxy.n, t->noproxy.all ? ", *: all direct" : "");
    else if (cfg->upstream_proxy && strcmp(cfg->upstream_proxy, "env") == 0)
        av__log(pool->log, AV_LOG_INFO, "upstream_proxy = env: no HTTPS_PROXY or ALL_PROXY in the environment, "
                                        "origins are dialed directly");
    for (size_t i = 0; i < t->nsvc && i < cfg->nservices; i++) {
        const av_service *s = &cfg->services[i];
        const av_parent *pa = t->svc_direct[i] ? NULL : t->svc[i] ? t->svc[i] : t->global;
        if (t->svc[i])
            av__log(pool->log, AV_LOG_INFO, "service %s: upstream parent proxy %s://%s", s->name,
                    av__parent_scheme(pa->kind), pa->label);
        if (!pa || !s->scheme_http)
            continue;
        if (!t->svc[i] && !s->wildcard) {
            av_authority a;
            memset(&a, 0, sizeof(a));
            snprintf(a.host, sizeof(a.host), "%s", s->host);
            a.is_ip = s->host_is_ip ? (strchr(s->host, ':') ? 6 : 4) : 0;
            a.port = s->port;
            if (av__noproxy_match(&t->noproxy, &a))
                continue;
        }
        av__log(pool->log, AV_LOG_WARN,
                "service %s: scheme = http through parent proxy %s: the request with its injected credential "
                "crosses the parent and its network in cleartext (use https, or upstream_proxy = direct)",
                s->name, pa->label);
    }
}
