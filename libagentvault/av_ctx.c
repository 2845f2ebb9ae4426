/* av_ctx.c - a running vault: listeners, accept, shutdown. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "av_ctx_internal.h"
#include "av_mux.h"
#include "av_scrub.h"
#include "av_mem.h"
#include "av_upstream.h"
#include "av_url.h"

static void ctx_err(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void ctx_err(char *err, size_t len, const char *fmt, ...)
{
    if (!err || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

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

static size_t ctx_max_conns(const av_ctx *ctx)
{
    return ctx->cfg->max_connections > 0 ? (size_t)ctx->cfg->max_connections : ctx->auto_max_conns;
}

static void report_cap(av_ctx *ctx, unsigned long long n)
{
    av__log(&ctx->log, AV_LOG_WARN, "connection limit (%zu) reached: refused %llu connection(s) (%s)",
            ctx_max_conns(ctx), n,
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
static void accept_refuse(av_ctx *ctx, int fd)
{
    close(fd);
    if (ctx->draining)
        return;
    ctx->m_limit_conns++;
    report_event(ctx, &ctx->rep_cap);
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
        if (ctx->nconns >= ctx_max_conns(ctx) || ctx->draining) {
            accept_refuse(ctx, fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (av__conn_accept(ctx, fd, (struct sockaddr *)&peer, plen, l->gw) != AV_OK)
            close(fd);
    }
}

/* ctx_bind binds and listens; the accept watcher starts when |watch|
 * (API listeners are watched once the loop thread adopts them). */
static int ctx_bind(av_ctx *ctx, av_listener *l, const char *spec, av_gw *gw, int watch, char *err,
                    size_t err_len)
{
    l->ctx = ctx;
    l->fd = -1;
    l->gw = gw;
    if (parse_listen(spec, &l->addr, &l->addr_len, l->host, sizeof(l->host), &l->port) < 0) {
        ctx_err(err, err_len, "invalid listen address %s", spec);
        return AV_ERR_CONFIG;
    }
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ctx_err(err, err_len, "socket: %s", strerror(errno));
        return AV_ERR_IO;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (l->addr.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&l->addr, l->addr_len) < 0 || listen(fd, 1024) < 0) {
        char m[200];
        snprintf(m, sizeof(m), "cannot listen on %s: %s", spec, strerror(errno));
        ctx_err(err, err_len, "%s", m);
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

static void listener_close(av_listener *l)
{
    av__io_free(l->io);
    l->io = NULL;
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
}

/* ---- gateways and the embedding API --------------------------------- */

/* gw_new makes a gateway record for |upstream| ("https://host[:port]" or
 * "http://host:port", no path). Returns NULL with |err| set. */
static av_gw *gw_new(const char *upstream, const char *name, int cfg_index, int allow_remote, char *err,
                     size_t err_len)
{
    av_absolute_uri u;
    size_t ul = upstream ? strlen(upstream) : 0;
    if (!upstream || av__absolute_uri_parse(upstream, ul, &u) != 0 ||
        (strcmp(u.scheme, "https") != 0 && strcmp(u.scheme, "http") != 0) ||
        !(u.path_len == 0 || (u.path_len == 1 && u.path[0] == '/'))) {
        ctx_err(err, err_len, "upstream must be an origin like https://api.example.com or https://host:port (no path)");
        return NULL;
    }
    av_gw *g = av__calloc(1, sizeof(*g));
    if (!g) {
        ctx_err(err, err_len, "out of memory");
        return NULL;
    }
    g->cfg_index = cfg_index;
    g->allow_remote = allow_remote;
    g->dest = u.authority;
    g->dest_tls = strcmp(u.scheme, "https") == 0;
    snprintf(g->name, sizeof(g->name), "%s", name);
    char auth[AV_HOST_MAX + 16];
    av__authority_format(&u.authority, g->dest_tls ? 443 : 80, auth, sizeof(auth));
    snprintf(g->upstream, sizeof(g->upstream), "%s://%s", u.scheme, auth);
    return g;
}

/* Link |g| into the context's list (which owns it). */
static void gw_link(av_ctx *ctx, av_gw *g)
{
    pthread_mutex_lock(&ctx->lock);
    g->next = ctx->gws;
    ctx->gws = g;
    pthread_mutex_unlock(&ctx->lock);
}

/* Queue |cmd| for the loop thread. Fails once shutdown has begun. */
/* ctx_post_locked appends |cmd| and wakes the loop; ctx->lock is held. */
static void ctx_post_locked(av_ctx *ctx, av_cmd *cmd)
{
    av_cmd **tail = &ctx->cmds;
    while (*tail)
        tail = &(*tail)->next;
    cmd->next = NULL;
    *tail = cmd;
    av__async_send(ctx->wakeup);
}

static int ctx_post(av_ctx *ctx, av_cmd *cmd)
{
    pthread_mutex_lock(&ctx->lock);
    int closed = ctx->closed || ctx->shutdown_requested;
    if (!closed)
        ctx_post_locked(ctx, cmd);
    pthread_mutex_unlock(&ctx->lock);
    return closed ? AV_ERR_STATE : AV_OK;
}

static void cmd_discard(av_cmd *cmd)
{
    if (cmd->fd >= 0)
        close(cmd->fd);
    if (cmd->l) {
        listener_close(cmd->l);
        av__free(cmd->l);
    }
    av__free(cmd);
}

/* Loop thread: adopt what the API calls queued. */
static void ctx_run_cmds(av_ctx *ctx)
{
    pthread_mutex_lock(&ctx->lock);
    av_cmd *list = ctx->cmds;
    ctx->cmds = NULL;
    pthread_mutex_unlock(&ctx->lock);
    while (list) {
        av_cmd *cmd = list;
        list = cmd->next;
        if (ctx->draining) {
            cmd_discard(cmd);
            continue;
        }
        if (cmd->l) {
            av_listener *l = cmd->l;
            l->io = av__io_new(ctx->loop, l->fd, ctx_on_accept, l);
            if (!l->io) {
                av__log(&ctx->log, AV_LOG_ERROR, "gateway to %s: out of memory, closing it", cmd->gw->upstream);
                pthread_mutex_lock(&ctx->lock);
                cmd->gw->api_port = 0; /* the next av_gateway_open binds again */
                pthread_mutex_unlock(&ctx->lock);
                cmd_discard(cmd);
                continue;
            }
            if (!ctx->accept_paused)
                av__io_set(l->io, AV_EV_READ);
            l->next = ctx->api_listeners;
            ctx->api_listeners = l;
            av__log(&ctx->log, AV_LOG_INFO, "gateway %s on http://127.0.0.1:%d -> %s", l->gw->name, l->port,
                    l->gw->upstream);
            av__free(cmd);
            continue;
        }
        struct sockaddr_un peer;
        memset(&peer, 0, sizeof(peer));
        peer.sun_family = AF_UNIX;
        if (ctx->nconns >= ctx_max_conns(ctx)) {
            ctx->m_limit_conns++;
            report_event(ctx, &ctx->rep_cap);
            cmd_discard(cmd); /* the caller's end reads EOF */
            continue;
        }
        if (av__conn_accept(ctx, cmd->fd, (struct sockaddr *)&peer, sizeof(peer), cmd->gw) != AV_OK) {
            cmd_discard(cmd);
            continue;
        }
        av__free(cmd);
    }
}

/* The gateway record for an API upstream: one per distinct origin. */
static av_gw *ctx_api_gw(av_ctx *ctx, const char *upstream, char *err, size_t err_len)
{
    av_gw *g = gw_new(upstream, "api", -1, 0, err, err_len);
    if (!g)
        return NULL;
    pthread_mutex_lock(&ctx->lock);
    for (av_gw *e = ctx->gws; e; e = e->next) {
        if (e->cfg_index < 0 && strcmp(e->upstream, g->upstream) == 0) {
            pthread_mutex_unlock(&ctx->lock);
            av__free(g);
            return e;
        }
    }
    g->next = ctx->gws;
    ctx->gws = g;
    pthread_mutex_unlock(&ctx->lock);
    return g;
}

static int gateway_listen(av_ctx *ctx, av_gw *g, char *url, size_t url_len);

AV_EXPORT int av_gateway_open(av_ctx *ctx, const char *upstream, char *url, size_t url_len)
{
    if (url && url_len)
        url[0] = '\0';
    if (!ctx || !upstream || !url || url_len < 32)
        return AV_ERR_INVALID;
    char why[160];
    av_gw *g = ctx_api_gw(ctx, upstream, why, sizeof(why));
    if (!g)
        return AV_ERR_INVALID;
    /* One listener per origin: the same origin gives the same URL. The
     * lock is held across the bind so that concurrent callers agree. */
    pthread_mutex_lock(&ctx->lock);
    if (ctx->closed || ctx->shutdown_requested) {
        pthread_mutex_unlock(&ctx->lock);
        return AV_ERR_STATE;
    }
    if (g->api_port > 0) {
        snprintf(url, url_len, "http://127.0.0.1:%d", g->api_port);
        pthread_mutex_unlock(&ctx->lock);
        return AV_OK;
    }
    int rc = gateway_listen(ctx, g, url, url_len);
    pthread_mutex_unlock(&ctx->lock);
    return rc;
}

/* gateway_listen binds a listener for |g| and queues it for the loop.
 * Called with ctx->lock held. */
static int gateway_listen(av_ctx *ctx, av_gw *g, char *url, size_t url_len)
{
    char why[160];
    av_listener *l = av__calloc(1, sizeof(*l));
    av_cmd *cmd = av__calloc(1, sizeof(*cmd));
    if (!l || !cmd) {
        av__free(l);
        av__free(cmd);
        return AV_ERR_NOMEM;
    }
    int rc = ctx_bind(ctx, l, "127.0.0.1:0", g, 0, why, sizeof(why));
    if (rc != AV_OK) {
        listener_close(l);
        av__free(l);
        av__free(cmd);
        return rc;
    }
    int port = l->port;
    cmd->fd = -1;
    cmd->l = l;
    cmd->gw = g;
    g->api_port = port;
    ctx_post_locked(ctx, cmd);
    snprintf(url, url_len, "http://127.0.0.1:%d", port);
    return AV_OK;
}

AV_EXPORT int av_open_stream(av_ctx *ctx, const char *upstream, int *fd_out)
{
    if (fd_out)
        *fd_out = -1;
    if (!ctx || !upstream || !fd_out)
        return AV_ERR_INVALID;
    char why[160];
    av_gw *g = ctx_api_gw(ctx, upstream, why, sizeof(why));
    if (!g)
        return AV_ERR_INVALID;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return AV_ERR_IO;
    int fl = fcntl(sv[1], F_GETFL);
    if (fl < 0 || fcntl(sv[1], F_SETFL, fl | O_NONBLOCK) < 0) {
        close(sv[0]);
        close(sv[1]);
        return AV_ERR_IO;
    }
    av_cmd *cmd = av__calloc(1, sizeof(*cmd));
    if (!cmd) {
        close(sv[0]);
        close(sv[1]);
        return AV_ERR_NOMEM;
    }
    cmd->fd = sv[1];
    cmd->gw = g;
    int rc = ctx_post(ctx, cmd);
    if (rc != AV_OK) {
        cmd_discard(cmd);
        close(sv[0]);
        return rc;
    }
    *fd_out = sv[0];
    return AV_OK;
}

/* Names the proxy's own certificate covers: every listen host plus the
 * usual loopback names. The first entry is the leaf's primary name. */
static int ctx_proxy_names(av_ctx *ctx)
{
    size_t n = ctx->nlisteners + 4;
    ctx->proxy_names = av__calloc(n, sizeof(char *));
    if (!ctx->proxy_names)
        return AV_ERR_NOMEM;
    size_t k = 0;
    const char *fixed[] = {"127.0.0.1", "localhost", "::1"};
    for (size_t i = 0; i < ctx->nlisteners; i++) {
        const char *h = ctx->listeners[i].host;
        if (strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0)
            continue;
        int dup = 0;
        for (size_t j = 0; j < k; j++)
            dup |= strcmp(ctx->proxy_names[j], h) == 0;
        if (!dup)
            ctx->proxy_names[k++] = av__strdup(h);
    }
    for (size_t f = 0; f < 3; f++) {
        int dup = 0;
        for (size_t j = 0; j < k; j++)
            dup |= strcmp(ctx->proxy_names[j], fixed[f]) == 0;
        if (!dup)
            ctx->proxy_names[k++] = av__strdup(fixed[f]);
    }
    for (size_t j = 0; j < k; j++)
        if (!ctx->proxy_names[j])
            return AV_ERR_NOMEM;
    return AV_OK;
}

static void ctx_check_done(av_ctx *ctx)
{
    if (ctx->draining && ctx->nconns == 0 && !ctx->done) {
        ctx->done = 1;
        av__timer_stop(ctx->drain_timer);
        av__timer_stop(ctx->accept_timer);
        av__timer_stop(ctx->report_timer);
        av__pool_cleanup(&ctx->pool);
        av__loop_break(ctx->loop);
        if (ctx->done_fn)
            ctx->done_fn(ctx->done_ud);
    }
}

void av__ctx_conn_gone(av_ctx *ctx)
{
    ctx_check_done(ctx);
}

static void ctx_on_drain_timeout(void *ud)
{
    av_ctx *ctx = ud;
    av__log(&ctx->log, AV_LOG_WARN, "drain deadline reached: closing %zu connection(s)", ctx->nconns);
    while (ctx->conns)
        av__conn_destroy(ctx->conns);
    ctx_check_done(ctx);
}

static void ctx_do_reload(av_ctx *ctx)
{
    ctx->reload_requested = 0;
    if (!ctx->reload_fn) {
        av__log(&ctx->log, AV_LOG_WARN, "reload requested but no reload function is installed");
        return;
    }
    char err[512] = "";
    av_config *cfg = ctx->reload_fn(ctx->reload_ud, err, sizeof(err));
    if (!cfg) {
        av__log(&ctx->log, AV_LOG_ERROR, "reload failed: %s; keeping the current configuration",
                err[0] ? err : "no configuration");
        return;
    }
    int rc = av__ctx_reload(ctx, cfg, err, sizeof(err));
    if (rc != AV_OK)
        av__log(&ctx->log, AV_LOG_ERROR, "reload failed: %s; keeping the current configuration",
                err[0] ? err : av_strerror(rc));
    else
        av__log(&ctx->log, AV_LOG_INFO, "configuration reloaded: %zu service(s), %zu token(s)",
                ctx->cfg->nservices, ctx->cfg->ntokens);
}

static void ctx_on_wakeup(void *ud)
{
    av_ctx *ctx = ud;
    if (ctx->reload_requested && !ctx->draining)
        ctx_do_reload(ctx);
    ctx_run_cmds(ctx);
    if (!ctx->shutdown_requested)
        return;
    double drain = (double)atomic_load(&ctx->drain_ms) / 1000.0;
    if (ctx->draining) {
        /* A later, shorter shutdown shortens the drain under way. */
        double now = av__loop_now(ctx->loop);
        if (!ctx->done && now + drain < ctx->drain_deadline) {
            ctx->drain_deadline = now + drain;
            av__timer_start(ctx->drain_timer, drain);
        }
        return;
    }
    pthread_mutex_lock(&ctx->lock);
    ctx->closed = 1;
    pthread_mutex_unlock(&ctx->lock);
    ctx->draining = 1;
    ctx->pool.draining = 1;
    ctx_run_cmds(ctx); /* discards what came in meanwhile */
    for (size_t i = 0; i < ctx->nlisteners; i++)
        listener_close(&ctx->listeners[i]);
    for (av_listener *l = ctx->api_listeners; l; l = l->next)
        listener_close(l);
    av__log(&ctx->log, AV_LOG_INFO, "shutting down: %zu connection(s) to drain (deadline %.1fs)", ctx->nconns,
            drain);
    av__upstream_pool_free(&ctx->pool);
    ctx->drain_deadline = av__loop_now(ctx->loop) + drain;
    av__timer_start(ctx->drain_timer, drain);
    /* Close idle connections now; busy ones close after their exchange. */
    av__conn_drain_all(ctx);
    ctx_check_done(ctx);
}

void av__ctx_count_exchange(av_ctx *ctx, const char *svc, int status)
{
    av__metrics_count_exchange(&ctx->metrics, svc, status);
}

void av__ctx_audit(av_ctx *ctx, const char *line, size_t len)
{
    av__audit_write(&ctx->audit, line, len);
}

/* Open (or reopen, for rotation) the audit log. */
static int ctx_open_audit(av_ctx *ctx, char *err, size_t err_len)
{
    return av__audit_open(&ctx->audit, ctx->cfg->audit, err, err_len);
}

static int ctx_is_own_listener(void *ud, const struct sockaddr *sa)
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

/* Same list of strings? */
static int strv_equal(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return 0;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0)
            return 0;
    return 1;
}

static int str_equal_opt(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int gateways_equal(const av_config *a, const av_config *b)
{
    if (a->ngateways != b->ngateways)
        return 0;
    for (size_t i = 0; i < a->ngateways; i++) {
        const av_gateway_cfg *x = &a->gateways[i], *y = &b->gateways[i];
        /* the origin as parsed, not as written (":443", case, a trailing /) */
        if (strcmp(x->name, y->name) || strcmp(x->listen, y->listen) || x->dest_tls != y->dest_tls ||
            !av__authority_equal(&x->dest, &y->dest) || x->allow_remote != y->allow_remote)
            return 0;
    }
    return 1;
}

int av__ctx_reload(av_ctx *ctx, av_config *cfg, char *err, size_t err_len)
{
    if (!cfg->state_dir && ctx->cfg->state_dir) {
        /* the daemon fills it from the command line; keep the running one */
        cfg->state_dir = av__strdup(ctx->cfg->state_dir);
        if (!cfg->state_dir) {
            av_config_free(cfg);
            return AV_ERR_NOMEM;
        }
    }
    if (!strv_equal(cfg->listen, cfg->nlisten, ctx->cfg->listen, ctx->cfg->nlisten) ||
        !str_equal_opt(cfg->state_dir, ctx->cfg->state_dir) ||
        !str_equal_opt(cfg->upstream_cafile, ctx->cfg->upstream_cafile) || !gateways_equal(cfg, ctx->cfg)) {
        ctx_err(err, err_len,
                "listen, state_dir, upstream_cacert and gateways (other than their tokens) cannot change on reload: "
                "restart instead");
        av_config_free(cfg);
        return AV_ERR_CONFIG;
    }
    av_snap *s = NULL;
    int rc = av__snap_new(ctx->loop, cfg, av__loop_now(ctx->loop), &s, err, err_len);
    if (rc)
        return rc;
    av_snap *old = ctx->snap;
    ctx->snap = s;
    ctx->cfg = s->cfg;
    ctx->pool.cfg = ctx->cfg;
    av__snap_unref(old);
    /* Reopen the audit log: rotation is "rename, then SIGHUP". */
    rc = ctx_open_audit(ctx, err, err_len);
    if (rc)
        av__log(&ctx->log, AV_LOG_ERROR, "reload: %s; audit records are not written", err);
    return AV_OK;
}

static void ctx_on_conn_gone(void *ud)
{
    ctx_check_done(ud);
}

/* The environment connections get (av_env.h): pointers into the context,
 * which stay valid for its life; the real clock and random source. */
static void ctx_fill_env(av_ctx *ctx)
{
    av_env *e = &ctx->env;
    e->loop = ctx->loop;
    e->log = &ctx->log;
    e->ca = ctx->ca;
    e->tls_srv = ctx->tls_srv;
    e->proxy_names = ctx->proxy_names;
    e->pool = &ctx->pool;
    e->metrics = &ctx->metrics;
    e->audit = &ctx->audit;
    e->snap_cur = &ctx->snap;
    e->draining = &ctx->draining;
    e->conns = &ctx->conns;
    e->nconns = &ctx->nconns;
    e->on_conn_gone = ctx_on_conn_gone;
    e->ud = ctx;
    e->now = av__env_now_real;
    e->random = av__env_random_real;
    e->clock_ud = NULL;
}

static int ctx_new(av_ctx **out, const av_config *cfg_in, void *host_loop, char *err, size_t err_len)
{
    if (err && err_len)
        err[0] = '\0';
    if (!out || !cfg_in)
        return AV_ERR_INVALID;
    *out = NULL;
    av_ctx *ctx = av__calloc(1, sizeof(*ctx));
    if (!ctx)
        return AV_ERR_NOMEM;
    av__audit_init(&ctx->audit);
    pthread_mutex_init(&ctx->lock, NULL);
    int rc = AV_ERR_NOMEM;
    ctx->cfg = av__config_copy(cfg_in);
    if (!ctx->cfg)
        goto fail;
    if (av_config_validate(ctx->cfg) != AV_OK) {
        ctx_err(err, err_len, "%s", av_config_error(ctx->cfg));
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    if (!ctx->cfg->state_dir) {
        ctx_err(err, err_len, "no state directory configured");
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    struct rlimit rl;
    ctx->nofile = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? rl.rlim_cur : 1048576;
    ctx->auto_max_conns = default_max_conns(ctx->nofile);
    ctx->loop = host_loop ? av__loop_wrap(host_loop) : av__loop_new();
    if (!ctx->loop)
        goto fail;
    rc = av__ca_open(&ctx->ca, ctx->cfg->state_dir, 0, err, err_len);
    if (rc)
        goto fail;
    rc = av__tls_server_ctx_new(&ctx->tls_srv, ctx->ca, err, err_len);
    if (rc)
        goto fail;
    rc = av__tls_client_ctx_new(&ctx->tls_cli, ctx->cfg->upstream_cafile, err, err_len);
    if (rc)
        goto fail;
    rc = ctx_open_audit(ctx, err, err_len);
    if (rc)
        goto fail;
    rc = av__dns_new(&ctx->dns, ctx->loop, ctx->cfg->connect_timeout);
    if (rc) {
        ctx_err(err, err_len, "cannot initialise the DNS resolver");
        goto fail;
    }
    {
        av_config *own = ctx->cfg;
        ctx->cfg = NULL; /* the snapshot owns it now */
        rc = av__snap_new(ctx->loop, own, av__loop_now(ctx->loop), &ctx->snap, err, err_len);
        if (rc)
            goto fail;
        ctx->cfg = ctx->snap->cfg;
    }
    ctx->pool.loop = ctx->loop;
    ctx->pool.log = &ctx->log;
    ctx->pool.dns = ctx->dns;
    ctx->pool.tls_cli = ctx->tls_cli;
    ctx->pool.cfg = ctx->cfg;
    ctx->pool.metrics = &ctx->metrics;
    ctx->pool.is_own_listener = ctx_is_own_listener;
    ctx->pool.ud = ctx;
    /* Listeners: the proxy's (none for a purely embedded context), then
     * one per [gateway]. */
    ctx->listeners = av__calloc(ctx->cfg->nlisten + ctx->cfg->ngateways + 1, sizeof(*ctx->listeners));
    if (!ctx->listeners) {
        rc = AV_ERR_NOMEM;
        goto fail;
    }
    ctx->nproxy_listeners = ctx->cfg->nlisten;
    for (size_t i = 0; i < ctx->cfg->nlisten + ctx->cfg->ngateways; i++) {
        ctx->nlisteners = i + 1;
        const char *spec = ctx->cfg->listen[0];
        av_gw *g = NULL;
        if (i < ctx->cfg->nlisten) {
            spec = ctx->cfg->listen[i];
        } else {
            const av_gateway_cfg *gc = &ctx->cfg->gateways[i - ctx->cfg->nlisten];
            spec = gc->listen;
            char why[160];
            g = gw_new(gc->upstream, gc->name, (int)(i - ctx->cfg->nlisten), gc->allow_remote, why, sizeof(why));
            if (!g) {
                ctx_err(err, err_len, "gateway %s: %s", gc->name, why);
                rc = AV_ERR_CONFIG;
                goto fail;
            }
            gw_link(ctx, g);
        }
        rc = ctx_bind(ctx, &ctx->listeners[i], spec, g, 1, err, err_len);
        if (rc)
            goto fail;
    }
    rc = ctx_proxy_names(ctx);
    if (rc)
        goto fail;
    ctx_fill_env(ctx);
    ctx->wakeup = av__async_new(ctx->loop, ctx_on_wakeup, ctx);
    ctx->drain_timer = av__timer_new(ctx->loop, ctx_on_drain_timeout, ctx);
    ctx->accept_timer = av__timer_new(ctx->loop, ctx_on_accept_resume, ctx);
    ctx->report_timer = av__timer_new(ctx->loop, ctx_on_report_timer, ctx);
    if (!ctx->wakeup || !ctx->drain_timer || !ctx->accept_timer || !ctx->report_timer) {
        rc = AV_ERR_NOMEM;
        goto fail;
    }
    ctx->log.max_level = AV_LOG_INFO;
    *out = ctx;
    return AV_OK;
fail:
    if (err && err_len && !err[0])
        snprintf(err, err_len, "%s", av_strerror(rc));
    av_ctx_free(ctx);
    return rc;
}

AV_EXPORT int av_ctx_new(av_ctx **out, const av_config *cfg, char *err, size_t err_len)
{
    return ctx_new(out, cfg, NULL, err, err_len);
}

AV_EXPORT int av_ctx_new_on_loop(av_ctx **out, const av_config *cfg, void *ev_loop, char *err, size_t err_len)
{
    if (!ev_loop) {
        if (out)
            *out = NULL;
        return AV_ERR_INVALID;
    }
    return ctx_new(out, cfg, ev_loop, err, err_len);
}

AV_EXPORT void av_ctx_free(av_ctx *ctx)
{
    if (!ctx)
        return;
    /* A started context: its loop thread owns the connections, so stop it
     * before touching them. */
    if (ctx->thread_started) {
        av_ctx_shutdown(ctx, 0);
        pthread_join(ctx->thread, NULL);
        ctx->thread_started = 0;
    }
    while (ctx->conns)
        av__conn_destroy(ctx->conns);
    av__pool_cleanup(&ctx->pool);
    for (size_t i = 0; i < ctx->nlisteners; i++)
        listener_close(&ctx->listeners[i]);
    av__free(ctx->listeners);
    while (ctx->api_listeners) {
        av_listener *l = ctx->api_listeners;
        ctx->api_listeners = l->next;
        listener_close(l);
        av__free(l);
    }
    while (ctx->cmds) {
        av_cmd *cmd = ctx->cmds;
        ctx->cmds = cmd->next;
        cmd_discard(cmd);
    }
    while (ctx->gws) {
        av_gw *g = ctx->gws;
        ctx->gws = g->next;
        av__free(g);
    }
    if (ctx->proxy_names) {
        for (size_t i = 0; ctx->proxy_names[i]; i++)
            av__free((void *)ctx->proxy_names[i]);
        av__free(ctx->proxy_names);
    }
    av__metrics_cleanup(&ctx->metrics);
    av__audit_close(&ctx->audit);
    av__async_free(ctx->wakeup);
    av__timer_free(ctx->drain_timer);
    av__timer_free(ctx->accept_timer);
    av__timer_free(ctx->report_timer);
    av__dns_free(ctx->dns);
    av__snap_unref(ctx->snap);
    av__tls_client_ctx_free(ctx->tls_cli);
    av__tls_server_ctx_free(ctx->tls_srv);
    av__ca_free(ctx->ca);
    av__loop_free(ctx->loop);
    if (!ctx->snap)
        av_config_free(ctx->cfg); /* never handed to a snapshot */
    pthread_mutex_destroy(&ctx->lock);
    av__free(ctx);
}

AV_EXPORT void av_ctx_set_log(av_ctx *ctx, av_log_fn fn, void *user_data, int max_level)
{
    if (!ctx)
        return;
    ctx->log.fn = fn;
    ctx->log.user_data = user_data;
    ctx->log.max_level = max_level;
}

AV_EXPORT int av_ctx_listen_port(const av_ctx *ctx, size_t i)
{
    /* Fixed at creation (a reload cannot change listeners), so this reads
     * nothing a reload replaces: safe from any thread. */
    if (!ctx || i >= ctx->nproxy_listeners)
        return AV_ERR_NOTFOUND;
    return ctx->listeners[i].port;
}

AV_EXPORT int av_ctx_gateway_port(const av_ctx *ctx, size_t i)
{
    if (!ctx || ctx->nproxy_listeners + i >= ctx->nlisteners)
        return AV_ERR_NOTFOUND;
    return ctx->listeners[ctx->nproxy_listeners + i].port;
}

/* Once the loop starts (the log handler is set by then). */
static void ctx_log_limits(av_ctx *ctx)
{
    av__log(&ctx->log, AV_LOG_INFO, "accepting up to %zu connection(s) (%s; open-files limit %llu)",
            ctx_max_conns(ctx), ctx->cfg->max_connections > 0 ? "[proxy] max_connections" : "default",
            ctx->nofile);
}

AV_EXPORT int av_ctx_run(av_ctx *ctx)
{
    /* thread_started first: |running| belongs to a started loop thread. */
    if (!ctx || ctx->thread_started || ctx->running || ctx->done || !av__loop_owned(ctx->loop))
        return AV_ERR_STATE;
    ctx->running = 1;
    ctx_log_limits(ctx);
    av__loop_run(ctx->loop); /* a pending shutdown ends it at once */
    ctx->running = 0;
    return AV_OK;
}

AV_EXPORT void av_ctx_set_reload(av_ctx *ctx, av_reload_fn fn, void *user_data)
{
    if (!ctx)
        return;
    ctx->reload_fn = fn;
    ctx->reload_ud = user_data;
}

AV_EXPORT void av_ctx_reload(av_ctx *ctx)
{
    if (!ctx)
        return;
    ctx->reload_requested = 1;
    av__async_send(ctx->wakeup);
}

AV_EXPORT void av_ctx_shutdown(av_ctx *ctx, double drain_seconds)
{
    if (!ctx)
        return;
    double d = drain_seconds < 0 || drain_seconds != drain_seconds ? 0 : drain_seconds;
    if (d > 1e9)
        d = 1e9;
    atomic_store(&ctx->drain_ms, (long long)(d * 1000.0));
    atomic_store(&ctx->shutdown_requested, 1);
    av__async_send(ctx->wakeup);
}

static void *ctx_thread(void *arg)
{
    av_ctx *ctx = arg;
    ctx->running = 1;
    ctx_log_limits(ctx);
    /* Always run: a shutdown asked for before the loop started is a
     * pending wake-up that drains, calls the done function and ends it. */
    av__loop_run(ctx->loop);
    ctx->running = 0;
    return NULL;
}

AV_EXPORT int av_ctx_start(av_ctx *ctx)
{
    if (!ctx || ctx->thread_started || ctx->running || ctx->done || !av__loop_owned(ctx->loop))
        return AV_ERR_STATE;
    /* The loop thread takes no signals: they belong to the host's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&ctx->thread, NULL, ctx_thread, ctx);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return AV_ERR_NOMEM;
    ctx->thread_started = 1;
    return AV_OK;
}

AV_EXPORT int av_ctx_stop(av_ctx *ctx, double drain_seconds)
{
    if (!ctx || !ctx->thread_started)
        return AV_ERR_STATE;
    if (pthread_equal(pthread_self(), ctx->thread))
        return AV_ERR_STATE; /* from a callback on the loop thread: would deadlock */
    av_ctx_shutdown(ctx, drain_seconds);
    pthread_join(ctx->thread, NULL);
    ctx->thread_started = 0;
    return AV_OK;
}

AV_EXPORT void av_ctx_set_done_fn(av_ctx *ctx, void (*fn)(void *user_data), void *user_data)
{
    if (!ctx)
        return;
    ctx->done_fn = fn;
    ctx->done_ud = user_data;
}
