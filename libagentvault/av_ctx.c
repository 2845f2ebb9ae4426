/* av_ctx.c - a running vault: listeners, accept, shutdown. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

static void ctx_on_accept(void *ud, int revents)
{
    (void)revents;
    av_listener *l = ud;
    av_ctx *ctx = l->ctx;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                av__log(&ctx->log, AV_LOG_WARN, "accept: %s", strerror(errno));
            return;
        }
        if (ctx->nconns >= AV_MAX_CONNS || ctx->draining) {
            av__log(&ctx->log, AV_LOG_WARN, "connection limit (%d) reached: refusing a connection", AV_MAX_CONNS);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (av__conn_accept(ctx, fd, (struct sockaddr *)&peer, plen) != AV_OK)
            close(fd);
    }
}

static int ctx_bind(av_ctx *ctx, size_t i, const char *spec, char *err, size_t err_len)
{
    av_listener *l = &ctx->listeners[i];
    l->ctx = ctx;
    l->fd = -1;
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
    l->io = av__io_new(ctx->loop, fd, ctx_on_accept, l);
    if (!l->io)
        return AV_ERR_NOMEM;
    av__io_set(l->io, AV_EV_READ);
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
    if (ctx->draining && ctx->nconns == 0) {
        av__timer_stop(ctx->drain_timer);
        av__upstream_pool_free(ctx);
        av__mux_free_all(ctx);
        av__loop_break(ctx->loop);
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
    if (!ctx->shutdown_requested || ctx->draining)
        return;
    ctx->draining = 1;
    for (size_t i = 0; i < ctx->nlisteners; i++) {
        av__io_free(ctx->listeners[i].io);
        ctx->listeners[i].io = NULL;
        if (ctx->listeners[i].fd >= 0)
            close(ctx->listeners[i].fd);
        ctx->listeners[i].fd = -1;
    }
    av__log(&ctx->log, AV_LOG_INFO, "shutting down: %zu connection(s) to drain (deadline %.1fs)", ctx->nconns,
            ctx->drain_seconds);
    av__upstream_pool_free(ctx);
    av__timer_start(ctx->drain_timer, ctx->drain_seconds);
    /* Close idle connections now; busy ones close after their exchange. */
    av__conn_drain_all(ctx);
    ctx_check_done(ctx);
}

void av__ctx_count_exchange(av_ctx *ctx, const char *svc, int status)
{
    if (!svc)
        svc = "";
    for (size_t i = 0; i < ctx->nmx; i++)
        if (ctx->mx[i].status == status && strcmp(ctx->mx[i].svc, svc) == 0) {
            ctx->mx[i].n++;
            return;
        }
    if (ctx->nmx >= 4096)
        return; /* bounded: statuses are 100..999, services are configured */
    if (ctx->nmx == ctx->capmx) {
        size_t cap = ctx->capmx ? ctx->capmx * 2 : 32;
        struct av_metric_x *n = av__realloc(ctx->mx, cap * sizeof(*n));
        if (!n)
            return;
        ctx->mx = n;
        ctx->capmx = cap;
    }
    snprintf(ctx->mx[ctx->nmx].svc, sizeof(ctx->mx[ctx->nmx].svc), "%s", svc);
    ctx->mx[ctx->nmx].status = status;
    ctx->mx[ctx->nmx].n = 1;
    ctx->nmx++;
}

void av__ctx_audit(av_ctx *ctx, const char *line, size_t len)
{
    if (ctx->audit_fd < 0)
        return;
    /* One write per record: O_APPEND keeps records whole. */
    while (len > 0) {
        ssize_t w = write(ctx->audit_fd, line, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        line += w;
        len -= (size_t)w;
    }
}

/* Open (or reopen, for rotation) the audit log. */
static int ctx_open_audit(av_ctx *ctx, char *err, size_t err_len)
{
    const char *a = ctx->cfg->audit;
    if (!a) {
        ctx->audit_fd = -1;
        return AV_OK;
    }
    if (strcmp(a, "stdout") == 0) {
        ctx->audit_fd = 1;
        return AV_OK;
    }
    int fd = open(a, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        ctx_err(err, err_len, "cannot open audit log %s: %s", a, strerror(errno));
        return AV_ERR_IO;
    }
    if (ctx->audit_fd > 2)
        close(ctx->audit_fd);
    ctx->audit_fd = fd;
    return AV_OK;
}

int av__ctx_is_own_listener(const av_ctx *ctx, const struct sockaddr *sa)
{
    int port = sa->sa_family == AF_INET ? ntohs(((const struct sockaddr_in *)sa)->sin_port)
                                        : ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    for (size_t i = 0; i < ctx->nlisteners; i++) {
        const av_listener *l = &ctx->listeners[i];
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

av_snap *av__snap_ref(av_snap *s)
{
    if (s)
        s->refs++;
    return s;
}

av_scrub_set *av__snap_scrub_set(av_snap *s, av_secret *secret)
{
    for (size_t i = 0; i < AV_SCRUB_CACHE; i++)
        if (s->scrub[i].secret == secret && s->scrub[i].set)
            return av__scrub_set_ref(s->scrub[i].set);
    const av_secret *secs[1] = {secret};
    av_scrub_set *set = NULL;
    if (av__scrub_set_new(&set, secs, 1) != AV_OK)
        return NULL;
    size_t k = s->scrub_next++ % AV_SCRUB_CACHE;
    av__secret_free(s->scrub[k].secret);
    av__scrub_set_unref(s->scrub[k].set);
    s->scrub[k].secret = av__secret_ref(secret);
    s->scrub[k].set = av__scrub_set_ref(set);
    return set;
}

void av__snap_unref(av_snap *s)
{
    if (!s || --s->refs > 0)
        return;
    for (size_t i = 0; i < AV_SCRUB_CACHE; i++) {
        av__secret_free(s->scrub[i].secret);
        av__scrub_set_unref(s->scrub[i].set);
    }
    if (s->tokens) {
        for (size_t i = 0; i < s->cfg->ntokens; i++)
            av__secret_free(s->tokens[i]);
        av__free(s->tokens);
    }
    av__free(s->buckets);
    av__resolver_free(s->resolver);
    av_config_free(s->cfg);
    av__free(s);
}

/* vault:NAME through the vault the configuration borrows. */
static int ctx_vault_get(void *ud, const char *name, av_secret **out, char *why, size_t why_len)
{
    char *v = NULL;
    size_t vl = 0;
    int rc = av_vault_get(ud, name, &v, &vl);
    if (rc == AV_ERR_NOTFOUND) {
        snprintf(why, why_len, "no secret named %s in the vault", name);
        return AV_ERR_SECRET;
    }
    if (rc != AV_OK) {
        snprintf(why, why_len, "vault: %s", av_strerror(rc));
        return rc == AV_ERR_NOMEM ? AV_ERR_NOMEM : AV_ERR_SECRET;
    }
    if (vl == 0) {
        av_vault_free_value(v, vl);
        snprintf(why, why_len, "vault secret %s is empty", name);
        return AV_ERR_SECRET;
    }
    *out = av__secret_new(v, vl);
    av_vault_free_value(v, vl);
    return *out ? AV_OK : AV_ERR_NOMEM;
}

/* Build a snapshot around |cfg| (owned): a resolver of its own, and the
 * proxy tokens resolved now (failing later would lock agents out). */
static int snap_new(av_ctx *ctx, av_config *cfg, av_snap **out, char *err, size_t err_len)
{
    av_snap *s = av__calloc(1, sizeof(*s));
    if (!s) {
        av_config_free(cfg);
        return AV_ERR_NOMEM;
    }
    s->refs = 1;
    s->cfg = cfg;
    int rc = av__resolver_new(&s->resolver);
    if (rc)
        goto fail;
    av__resolver_set_loop(s->resolver, ctx->loop, cfg->secret_ttl, cfg->command_timeout);
    if (cfg->secret_fn)
        av__resolver_set_callback(s->resolver, cfg->secret_fn, cfg->secret_ud);
    if (cfg->vault)
        av__resolver_set_vault(s->resolver, ctx_vault_get, cfg->vault);
    else if (av_config_uses_vault(cfg)) {
        ctx_err(err, err_len, "the configuration reads vault: secrets but no vault was opened");
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    if (cfg->ntokens) {
        rc = AV_ERR_NOMEM;
        s->tokens = av__calloc(cfg->ntokens, sizeof(*s->tokens));
        s->buckets = av__calloc(cfg->ntokens, sizeof(*s->buckets));
        if (!s->tokens || !s->buckets)
            goto fail;
        for (size_t i = 0; i < cfg->ntokens; i++) {
            char why[200];
            s->buckets[i].level = cfg->tokens[i].burst;
            s->buckets[i].stamp = av__loop_now(ctx->loop);
            if (cfg->tokens[i].hashed)
                continue; /* from the token store: compared by hash */
            rc = av__resolver_get(s->resolver, cfg->tokens[i].secret_ref, &s->tokens[i], why, sizeof(why));
            if (rc) {
                ctx_err(err, err_len, "token %s: %s", cfg->tokens[i].name, why);
                rc = AV_ERR_CONFIG;
                goto fail;
            }
        }
    }
    *out = s;
    return AV_OK;
fail:
    av__snap_unref(s);
    return rc;
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
        !str_equal_opt(cfg->upstream_cafile, ctx->cfg->upstream_cafile)) {
        ctx_err(err, err_len, "listen, state_dir and upstream_cacert cannot change on reload: restart instead");
        av_config_free(cfg);
        return AV_ERR_CONFIG;
    }
    av_snap *s = NULL;
    int rc = snap_new(ctx, cfg, &s, err, err_len);
    if (rc)
        return rc;
    av_snap *old = ctx->snap;
    ctx->snap = s;
    ctx->cfg = s->cfg;
    av__snap_unref(old);
    /* Reopen the audit log: rotation is "rename, then SIGHUP". */
    rc = ctx_open_audit(ctx, err, err_len);
    if (rc)
        av__log(&ctx->log, AV_LOG_ERROR, "reload: %s; audit records are not written", err);
    return AV_OK;
}

AV_EXPORT int av_ctx_new(av_ctx **out, const av_config *cfg_in, char *err, size_t err_len)
{
    if (err && err_len)
        err[0] = '\0';
    if (!out || !cfg_in)
        return AV_ERR_INVALID;
    *out = NULL;
    av_ctx *ctx = av__calloc(1, sizeof(*ctx));
    if (!ctx)
        return AV_ERR_NOMEM;
    ctx->audit_fd = -1;
    int rc = AV_ERR_NOMEM;
    ctx->cfg = av__config_copy(cfg_in);
    if (!ctx->cfg)
        goto fail;
    if (!ctx->cfg->state_dir) {
        ctx_err(err, err_len, "no state directory configured");
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    ctx->loop = av__loop_new();
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
        rc = snap_new(ctx, own, &ctx->snap, err, err_len);
        if (rc)
            goto fail;
        ctx->cfg = ctx->snap->cfg;
    }
    if (ctx->cfg->nlisten == 0) {
        ctx_err(err, err_len, "no listen address configured");
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    ctx->listeners = av__calloc(ctx->cfg->nlisten, sizeof(*ctx->listeners));
    if (!ctx->listeners) {
        rc = AV_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < ctx->cfg->nlisten; i++) {
        ctx->nlisteners = i + 1;
        rc = ctx_bind(ctx, i, ctx->cfg->listen[i], err, err_len);
        if (rc)
            goto fail;
    }
    rc = ctx_proxy_names(ctx);
    if (rc)
        goto fail;
    ctx->wakeup = av__async_new(ctx->loop, ctx_on_wakeup, ctx);
    ctx->drain_timer = av__timer_new(ctx->loop, ctx_on_drain_timeout, ctx);
    if (!ctx->wakeup || !ctx->drain_timer) {
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

AV_EXPORT void av_ctx_free(av_ctx *ctx)
{
    if (!ctx)
        return;
    while (ctx->conns)
        av__conn_destroy(ctx->conns);
    av__upstream_pool_free(ctx);
    av__mux_free_all(ctx);
    for (size_t i = 0; i < ctx->nlisteners; i++) {
        av__io_free(ctx->listeners[i].io);
        if (ctx->listeners[i].fd >= 0)
            close(ctx->listeners[i].fd);
    }
    av__free(ctx->listeners);
    if (ctx->proxy_names) {
        for (size_t i = 0; ctx->proxy_names[i]; i++)
            av__free((void *)ctx->proxy_names[i]);
        av__free(ctx->proxy_names);
    }
    av__free(ctx->mx);
    if (ctx->audit_fd > 2)
        close(ctx->audit_fd);
    av__async_free(ctx->wakeup);
    av__timer_free(ctx->drain_timer);
    av__dns_free(ctx->dns);
    av__snap_unref(ctx->snap);
    av__tls_client_ctx_free(ctx->tls_cli);
    av__tls_server_ctx_free(ctx->tls_srv);
    av__ca_free(ctx->ca);
    av__loop_free(ctx->loop);
    if (!ctx->snap)
        av_config_free(ctx->cfg); /* never handed to a snapshot */
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
    if (!ctx || i >= ctx->nlisteners)
        return AV_ERR_NOTFOUND;
    return ctx->listeners[i].port;
}

AV_EXPORT int av_ctx_run(av_ctx *ctx)
{
    if (!ctx || ctx->running)
        return AV_ERR_STATE;
    ctx->running = 1;
    if (!ctx->shutdown_requested)
        av__loop_run(ctx->loop);
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
    ctx->drain_seconds = drain_seconds < 0 ? 0 : drain_seconds;
    ctx->shutdown_requested = 1;
    av__async_send(ctx->wakeup);
}
