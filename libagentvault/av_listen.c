/* av_listen.c - listening and accepting: listen addresses, bind, the
 * accept loop with the connection cap and the descriptor-limit back-off
 * (SECURITY.md 16) and their rate-limited reports, and the own-listener
 * check the upstream pool uses (never dial ourselves). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "av_ctx_internal.h"
#include "av_upstream.h"

/* Split "host:port" / "[v6]:port" into a sockaddr. */
static int parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *host, size_t hostlen,
                        int *port)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", s);
    char *h = buf, *p;
    if (buf[0] == '[') {
        char *e = strchr(buf, ']');
        if (!e || e[1] != ':')
            return -1;
        *e = '\0';
        h = buf + 1;
        p = e + 2;
    } else {
        p = strrchr(buf, ':');
        if (!p)
            return -1;
        *p++ = '\0';
    }
    char *end;
    long pv = strtol(p, &end, 10);
    if (*p == '\0' || *end || pv < 0 || pv > 65535)
        return -1;
    if (strcmp(h, "localhost") == 0)
        h = "127.0.0.1";
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, h, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)pv);
        *len = sizeof(*s4);
    } else if (inet_pton(AF_INET6, h, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)pv);
        *len = sizeof(*s6);
    } else {
        return -1;
    }
    snprintf(host, hostlen, "%s", h);
    *port = (int)pv;
    return 0;
}

/* ---- accepting: the connection cap and the descriptor limit ---------- */

/* The default cap: a proxied connection holds two descriptors (agent and
 * upstream), and an eighth of the limit plus 32 stays free for listeners,
 * the idle upstream pool, DNS, the audit log and command: pipes. */
static size_t default_max_conns(unsigned long long nofile)
{
    unsigned long long reserve = 32 + nofile / 8;
    unsigned long long n = nofile > reserve ? (nofile - reserve) / 2 : 0;
    if (n < 4)
        n = 4;
    return n > AV_MAX_CONNS_DEFAULT ? AV_MAX_CONNS_DEFAULT : (size_t)n;
}

size_t av__listen_max_conns(const av_ctx *ctx)
{
    return ctx->cfg->max_connections > 0 ? (size_t)ctx->cfg->max_connections : ctx->auto_max_conns;
}

static void report_cap(av_ctx *ctx, unsigned long long n)
{
    av__log(&ctx->log, AV_LOG_WARN, "connection limit (%zu) reached: refused %llu connection(s) (%s)",
            av__listen_max_conns(ctx), n,
            ctx->cfg->max_connections > 0 ? "[proxy] max_connections" : "default from the open-files limit");
}

static void report_fd(av_ctx *ctx, unsigned long long n)
{
    av__log(&ctx->log, AV_LOG_WARN,
            "accept: %s: accepting paused %llu time(s) (%zu connection(s) open, open-files limit %llu)",
            strerror(ctx->rep_fd.err), n, ctx->nconns, ctx->nofile);
}

/* report_flush logs what each report counted once its second is over, and
 * re-arms the timer while a count is still waiting. */
static void report_flush(av_ctx *ctx)
{
    double now = av__loop_now(ctx->loop), next = 0;
    struct av_report *r[2] = {&ctx->rep_cap, &ctx->rep_fd};
    for (int i = 0; i < 2; i++) {
        if (!r[i]->n)
            continue;
        double due = r[i]->last + REPORT_INTERVAL;
        if (now + 1e-3 >= due) {
            unsigned long long n = r[i]->n;
            r[i]->n = 0;
            r[i]->last = now;
            if (i == 0)
                report_cap(ctx, n);
            else
                report_fd(ctx, n);
        } else if (!next || due < next) {
            next = due;
        }
    }
    if (next && !av__timer_active(ctx->report_timer))
        av__timer_start(ctx->report_timer, next - now);
}

static void ctx_on_report_timer(void *ud)
{
    report_flush(ud);
}

/* report_event counts one event: logged now when the last message is a
 * second old, else with the others when the second ends. */
static void report_event(av_ctx *ctx, struct av_report *r)
{
    if (r->n == 0 && r->last == 0)
        r->last = av__loop_now(ctx->loop) - REPORT_INTERVAL; /* the first one at once */
    r->n++;
    report_flush(ctx);
}

static void listeners_watch(av_ctx *ctx, int events)
{
    for (size_t i = 0; i < ctx->nlisteners; i++)
        if (ctx->listeners[i].io)
            av__io_set(ctx->listeners[i].io, events);
    for (av_listener *l = ctx->api_listeners; l; l = l->next)
        if (l->io)
            av__io_set(l->io, events);
}

/* accept_pause stops accepting for a back-off after accept failed for want
 * of descriptors or memory: the pending connections wait in the backlog
 * instead of waking the loop again at once. */
static void accept_pause(av_ctx *ctx, int err)
{
    ctx->m_limit_fds++;
    ctx->accept_pause = ctx->accept_pause > 0 ? ctx->accept_pause * 2 : ACCEPT_PAUSE_MIN;
    if (ctx->accept_pause > ACCEPT_PAUSE_MAX)
        ctx->accept_pause = ACCEPT_PAUSE_MAX;
    ctx->accept_paused = 1;
    listeners_watch(ctx, 0);
    av__timer_start(ctx->accept_timer, ctx->accept_pause);
    ctx->rep_fd.err = err;
    report_event(ctx, &ctx->rep_fd);
}

static void ctx_on_accept_resume(void *ud)
{
    av_ctx *ctx = ud;
    ctx->accept_paused = 0;
    if (!ctx->draining)
        listeners_watch(ctx, AV_EV_READ);
}

/* Over the cap (or shutting down): close at once, count, report. */
void av__listen_over_cap(av_ctx *ctx)
{
    ctx->m_limit_conns++;
    report_event(ctx, &ctx->rep_cap);
}

int av__listen_reserve(av_ctx *ctx)
{
    /* Every worker takes from one count: add first, then look, so two
     * workers cannot both take the last place. */
    size_t n = atomic_fetch_add(ctx->conns_shared, 1);
    if (n < av__listen_max_conns(ctx))
        return 0;
    atomic_fetch_sub(ctx->conns_shared, 1);
    av__listen_over_cap(ctx);
    return -1;
}

void av__listen_release(av_ctx *ctx)
{
    atomic_fetch_sub(ctx->conns_shared, 1);
}

static void ctx_on_accept(void *ud, int revents)
{
    (void)revents;
    av_listener *l = ud;
    av_ctx *ctx = l->ctx;
    for (int i = 0; i < 64 && !ctx->accept_paused; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                accept_pause(ctx, errno);
            else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                av__log(&ctx->log, AV_LOG_WARN, "accept: %s", strerror(errno));
            return;
        }
        ctx->accept_pause = 0;
        if (ctx->draining || av__listen_reserve(ctx) != 0) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        atomic_fetch_add_explicit(&ctx->accepted, 1, memory_order_relaxed);
        if (av__conn_accept(&ctx->env, fd, (struct sockaddr *)&peer, plen, l->gw) != AV_OK) {
            av__listen_release(ctx);
            close(fd);
        }
    }
}

/* av__listen_bind binds and listens; the accept watcher starts when |watch|
 * (API listeners are watched once the loop thread adopts them). */
int av__listen_bind(av_ctx *ctx, av_listener *l, const char *spec, av_gw *gw, int watch, char *err,
                    size_t err_len)
{
    l->ctx = ctx;
    l->fd = -1;
    l->gw = gw;
    if (parse_listen(spec, &l->addr, &l->addr_len, l->host, sizeof(l->host), &l->port) < 0) {
        av__errf(err, err_len, "invalid listen address %s", spec);
        return AV_ERR_CONFIG;
    }
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        av__errf(err, err_len, "socket: %s", strerror(errno));
        return AV_ERR_IO;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Workers: one listener each on the same address, the kernel spreads
     * connections over them (by their addresses and ports). */
    if (ctx->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
        av__errf(err, err_len, "cannot listen on %s: SO_REUSEPORT: %s", spec, strerror(errno));
        close(fd);
        return AV_ERR_IO;
    }
    if (l->addr.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&l->addr, l->addr_len) < 0 || listen(fd, 1024) < 0) {
        char m[200];
        snprintf(m, sizeof(m), "cannot listen on %s: %s", spec, strerror(errno));
        av__errf(err, err_len, "%s", m);
        close(fd);
        return AV_ERR_IO;
    }
    l->addr_len = sizeof(l->addr);
    getsockname(fd, (struct sockaddr *)&l->addr, &l->addr_len);
    l->port = l->addr.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&l->addr)->sin_port)
                                           : ntohs(((struct sockaddr_in6 *)&l->addr)->sin6_port);
    l->fd = fd;
    if (!watch)
        return AV_OK;
    l->io = av__io_new(ctx->loop, fd, ctx_on_accept, l);
    if (!l->io)
        return AV_ERR_NOMEM;
    av__io_set(l->io, AV_EV_READ);
    return AV_OK;
}

void av__listen_close(av_listener *l)
{
    av__io_free(l->io);
    l->io = NULL;
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
}

int av__listen_adopt(av_ctx *ctx, av_listener *l)
{
    l->io = av__io_new(ctx->loop, l->fd, ctx_on_accept, l);
    if (!l->io)
        return AV_ERR_NOMEM;
    if (!ctx->accept_paused)
        av__io_set(l->io, AV_EV_READ);
    return AV_OK;
}

void av__listen_init_limits(av_ctx *ctx)
{
    struct rlimit rl;
    ctx->nofile = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? rl.rlim_cur : 1048576;
    ctx->auto_max_conns = default_max_conns(ctx->nofile);
}

int av__listen_init_timers(av_ctx *ctx)
{
    ctx->accept_timer = av__timer_new(ctx->loop, ctx_on_accept_resume, ctx);
    ctx->report_timer = av__timer_new(ctx->loop, ctx_on_report_timer, ctx);
    return ctx->accept_timer && ctx->report_timer ? AV_OK : AV_ERR_NOMEM;
}

int av__listen_is_own(void *ud, const struct sockaddr *sa)
{
    const av_ctx *ctx = ud;
    int port = sa->sa_family == AF_INET ? ntohs(((const struct sockaddr_in *)sa)->sin_port)
                                        : ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    const av_listener *api = ctx->api_listeners;
    for (size_t i = 0; i < ctx->nlisteners || api; i++) {
        const av_listener *l;
        if (i < ctx->nlisteners) {
            l = &ctx->listeners[i];
        } else {
            l = api;
            api = api->next;
        }
        if (l->port != port)
            continue;
        if (sa->sa_family == AF_INET && l->addr.ss_family == AF_INET) {
            uint32_t a = ((const struct sockaddr_in *)sa)->sin_addr.s_addr;
            uint32_t b = ((const struct sockaddr_in *)&l->addr)->sin_addr.s_addr;
            if (a == b || b == htonl(INADDR_ANY) || (ntohl(a) >> 24) == 127)
                return 1;
        } else if (sa->sa_family == AF_INET6) {
            return 1; /* be conservative: same port on any v6 address */
        } else if (l->addr.ss_family == AF_INET6) {
            return 1;
        }
    }
    return 0;
}

/* Once the loop starts (the log handler is set by then). */
void av__listen_log_limits(av_ctx *ctx)
{
    av__log(&ctx->log, AV_LOG_INFO, "accepting up to %zu connection(s) (%s; open-files limit %llu); %zu worker(s)",
            av__listen_max_conns(ctx), ctx->cfg->max_connections > 0 ? "[proxy] max_connections" : "default",
            ctx->nofile, ctx->nworkers);
    av__upstream_log_parents(&ctx->pool);
}
