/* av_ctx.c - a running vault: creation (configuration snapshot, CA, TLS,
 * DNS, listeners, the pool and the environment connections get), worker
 * threads, reload, shutdown and drain. Listening and accepting are in
 * av_listen.c, the embedding API in av_embed.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "av_ctx_internal.h"
#include "av_mux.h"
#include "av_mem.h"
#include "av_upstream.h"
#include "av_url.h"

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

/* Have all workers finished their drain? (The primary ends last: a
 * shorter shutdown must still reach the workers through it.) */
static int workers_done(const av_ctx *ctx)
{
    for (size_t i = 1; i < ctx->nworkers; i++)
        if (!atomic_load(&ctx->workers[i - 1]->worker_done))
            return 0;
    return 1;
}

static void ctx_check_done(av_ctx *ctx)
{
    if (ctx->draining && ctx->nconns == 0 && !ctx->done && workers_done(ctx)) {
        ctx->done = 1;
        av__timer_stop(ctx->drain_timer);
        av__timer_stop(ctx->accept_timer);
        av__timer_stop(ctx->report_timer);
        av__pool_cleanup(&ctx->pool);
        av__loop_break(ctx->loop);
        if (ctx->primary) {
            atomic_store(&ctx->worker_done, 1);
            av__async_send(ctx->primary->wakeup);
        } else if (ctx->done_fn) {
            ctx->done_fn(ctx->done_ud);
        }
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
}

/* "configuration reloaded" once every worker runs the new snapshot (tests
 * and operators read the line as "new connections see it"). */
static void ctx_reload_report(av_ctx *ctx)
{
    if (ctx->reload_said == ctx->reload_gen)
        return;
    for (size_t i = 1; i < ctx->nworkers; i++)
        if (atomic_load(&ctx->workers[i - 1]->applied_gen) < ctx->reload_gen)
            return;
    ctx->reload_said = ctx->reload_gen;
    av__log(&ctx->log, AV_LOG_INFO, "configuration reloaded: %zu service(s), %zu token(s)%s", ctx->cfg->nservices,
            ctx->cfg->ntokens, ctx->nworkers > 1 ? " (every worker)" : "");
}

static void ctx_tls_resumption(av_ctx *ctx);

/* A worker takes the snapshot core the primary handed it. */
static void worker_take_snapshot(av_ctx *ctx)
{
    pthread_mutex_lock(&ctx->lock);
    av_snap_core *core = ctx->pending;
    unsigned long gen = ctx->pending_gen;
    ctx->pending = NULL;
    pthread_mutex_unlock(&ctx->lock);
    if (!core)
        return;
    av_snap *s = NULL;
    if (av__snap_from_core(ctx->loop, core, &s) != AV_OK) {
        av__log(&ctx->log, AV_LOG_ERROR, "worker %d: reload: out of memory; it keeps the previous configuration",
                ctx->worker_id);
    } else {
        av_snap *old = ctx->snap;
        ctx->snap = s;
        ctx->cfg = s->cfg;
        ctx->pool.cfg = ctx->cfg;
        ctx->pool.parents = s->parents;
        av__snap_unref(old);
        ctx_tls_resumption(ctx);
    }
    atomic_store(&ctx->applied_gen, gen);
    av__async_send(ctx->primary->wakeup);
}

static void ctx_on_wakeup(void *ud)
{
    av_ctx *ctx = ud;
    if (ctx->primary) {
        worker_take_snapshot(ctx);
    } else {
        if (ctx->reload_requested && !ctx->draining)
            ctx_do_reload(ctx);
        ctx_reload_report(ctx);
        av__embed_run_cmds(ctx);
    }
    if (!ctx->shutdown_requested)
        return;
    double drain = (double)atomic_load(&ctx->drain_ms) / 1000.0;
    /* The workers drain with the same deadline (a later, shorter shutdown
     * shortens theirs too). */
    for (size_t i = 1; i < ctx->nworkers; i++)
        av_ctx_shutdown(ctx->workers[i - 1], drain);
    if (ctx->draining) {
        ctx_check_done(ctx); /* a worker may have finished */
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
    av__embed_run_cmds(ctx); /* discards what came in meanwhile */
    for (size_t i = 0; i < ctx->nlisteners; i++)
        av__listen_close(&ctx->listeners[i]);
    for (av_listener *l = ctx->api_listeners; l; l = l->next)
        av__listen_close(l);
    if (!ctx->primary)
        av__log(&ctx->log, AV_LOG_INFO, "shutting down: %zu connection(s) to drain (deadline %.1fs)",
                atomic_load(&ctx->conns_all), drain);
    av__upstream_pool_free(&ctx->pool);
    ctx->drain_deadline = av__loop_now(ctx->loop) + drain;
    av__timer_start(ctx->drain_timer, drain);
    /* Requests held for a decision would wait out the drain: refuse them. */
    av__decide_deny_all(ctx->decide, 503, "agentvault is shutting down");
    /* Close idle connections now; busy ones close after their exchange. */
    av__conn_drain_all(&ctx->env);
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

/* ctx_tls_resumption applies [proxy] tls_resumption to both TLS contexts
 * (off also drops the cached origin sessions and the ticket keys). The
 * origin sessions belong to the client context, which verifies with the
 * upstream_cacert it was made with: that cannot change on reload, so a
 * cached session never outlives what verified it. */
static void ctx_tls_resumption(av_ctx *ctx)
{
    int on = !ctx->cfg->tls_resumption_off;
    if (ctx->primary) /* both contexts are the primary's, shared */
        return;
    av__tls_server_ctx_resumption(ctx->tls_srv, on, &ctx->metrics.m_tls_resumed_agent);
    av__tls_client_ctx_resumption(ctx->tls_cli, on, &ctx->metrics.m_tls_resumed_upstream);
}

/* The number of workers [proxy] workers asks for: unset is 1 (one loop:
 * the embedding default; the daemon sets auto), auto one per online CPU. */
static size_t ctx_workers_wanted(const av_config *cfg)
{
    if (cfg->workers > 0)
        return (size_t)cfg->workers;
    if (cfg->workers == 0)
        return 1;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n > AV_WORKERS_MAX ? AV_WORKERS_MAX : (size_t)n;
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
        !str_equal_opt(cfg->upstream_cafile, ctx->cfg->upstream_cafile) || !gateways_equal(cfg, ctx->cfg) ||
        !str_equal_opt(cfg->ca_cert_ref, ctx->cfg->ca_cert_ref) || !str_equal_opt(cfg->ca_key_ref, ctx->cfg->ca_key_ref)) {
        av__errf(err, err_len,
                "listen, state_dir, upstream_cacert, ca_cert, ca_key and gateways (other than their tokens) cannot "
                "change on reload: restart instead");
        av_config_free(cfg);
        return AV_ERR_CONFIG;
    }
    if (ctx_workers_wanted(cfg) != ctx->nworkers) {
        av__errf(err, err_len, "workers cannot change on reload (%zu running): restart instead", ctx->nworkers);
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
    ctx->pool.parents = s->parents;
    av__upstream_log_parents(&ctx->pool);
    av__snap_unref(old);
    ctx_tls_resumption(ctx);
    /* Every worker gets the new snapshot's core; it makes its own snapshot
     * around it on its loop, between requests as here. */
    ctx->reload_gen++;
    for (size_t i = 1; i < ctx->nworkers; i++) {
        av_ctx *w = ctx->workers[i - 1];
        av_snap_core *core = av__snap_core_ref(s);
        pthread_mutex_lock(&w->lock);
        av_snap_core *stale = w->pending;
        w->pending = core;
        w->pending_gen = ctx->reload_gen;
        pthread_mutex_unlock(&w->lock);
        av__snap_core_unref(stale);
        av__async_send(w->wakeup);
    }
    /* Reopen the audit log: rotation is "rename, then SIGHUP". */
    rc = ctx_open_audit(ctx, err, err_len);
    if (rc)
        av__log(&ctx->log, AV_LOG_ERROR, "reload: %s; audit records are not written", err);
    return AV_OK;
}

static void ctx_publish_gauges(av_ctx *ctx)
{
    atomic_store_explicit(&ctx->g_nmux, ctx->pool.nmux, memory_order_relaxed);
    atomic_store_explicit(&ctx->g_nidle, ctx->pool.nidle, memory_order_relaxed);
}

static void ctx_on_conn_gone(void *ud)
{
    av_ctx *ctx = ud;
    av__listen_release(ctx);
    ctx_publish_gauges(ctx);
    ctx_check_done(ctx);
}

/* GET /metrics on any worker: every worker's counters summed, the pool
 * gauges as each worker last published them (its own: now). */
static void ctx_metrics_text(void *ud, av_buf *b)
{
    av_ctx *ctx = ud;
    av_ctx *root = ctx->primary ? ctx->primary : ctx;
    ctx_publish_gauges(ctx);
    av_metrics *sum = av__calloc(1, sizeof(*sum));
    unsigned long long *per = av__calloc(root->nworkers, sizeof(*per));
    if (!sum || !per) {
        av__free(sum);
        av__free(per);
        return;
    }
    av_metrics_gauges g;
    memset(&g, 0, sizeof(g));
    for (size_t i = 0; i < root->nworkers; i++) {
        av_ctx *w = i == 0 ? root : root->workers[i - 1];
        av__metrics_add(sum, &w->metrics);
        g.upstream_h2 += atomic_load_explicit(&w->g_nmux, memory_order_relaxed);
        g.upstream_idle += atomic_load_explicit(&w->g_nidle, memory_order_relaxed);
        per[i] = atomic_load_explicit(&w->accepted, memory_order_relaxed);
    }
    av_ca_stats st;
    av__ca_stats(ctx->ca, &st);
    g.conns = atomic_load(&root->conns_all);
    g.leaf_hits = st.leaf_hits;
    g.leaf_misses = st.leaf_misses;
    g.leaf_refused = st.leaf_refused;
    g.nworkers = root->nworkers;
    g.worker_conns = per;
    av__metrics_prometheus(sum, &g, b);
    av__metrics_cleanup(sum);
    av__free(sum);
    av__free(per);
}

/* The environment connections get (av_env.h): pointers into the context,
 * which stay valid for its life; the real clock and random source. */
static void ctx_fill_env(av_ctx *ctx)
{
    av_env *e = &ctx->env;
    e->loop = ctx->loop;
    av_ctx *root = ctx->primary ? ctx->primary : ctx;
    e->log = &root->log;
    e->ca = ctx->ca;
    e->tls_srv = ctx->tls_srv;
    e->proxy_names = ctx->proxy_names;
    e->pool = &ctx->pool;
    e->metrics = &ctx->metrics;
    e->audit = &root->audit;
    e->metrics_text = ctx_metrics_text;
    e->decide = root->decide; /* one registry for every worker */
    e->snap_cur = &ctx->snap;
    e->draining = &ctx->draining;
    e->unhealthy = &root->unhealthy;
    e->conns = &ctx->conns;
    e->nconns = &ctx->nconns;
    e->on_conn_gone = ctx_on_conn_gone;
    e->ud = ctx;
    e->now = av__env_now_real;
    e->random = av__env_random_real;
    e->clock_ud = NULL;
}

/* ref_label names a secret reference in an error: "KEY (REF)", a
 * command: reference by its program only (its arguments may be private). */
static void ref_label(char *out, size_t len, const char *key, const char *ref)
{
    size_t n = strncmp(ref, "command:", 8) == 0 ? 8 + strcspn(ref + 8, " \t") : strlen(ref);
    snprintf(out, len, "%s (%.*s)", key, (int)(n > 250 ? 250 : n), ref);
}

/* ctx_open_ca loads the root: from the ca_cert and ca_key secret
 * references when set (every replica then serves the same root and the
 * state directory is never written), else from the state directory
 * (created there on first start). The references resolve through the
 * snapshot's resolver, like any secret. */
static int ctx_open_ca(av_ctx *ctx, char *err, size_t err_len)
{
    const av_config *cfg = ctx->cfg;
    if (!cfg->ca_cert_ref)
        return av__ca_open(&ctx->ca, cfg->state_dir, 0, err, err_len);
    if (strncmp(cfg->ca_key_ref, "file:", 5) == 0) {
        /* Group-readable is fine (a Kubernetes Secret file with fsGroup is
         * 0440); readable by others or writable by anyone else is not. */
        struct stat st;
        if (stat(cfg->ca_key_ref + 5, &st) == 0 && (st.st_mode & 026)) {
            av__errf(err, err_len,
                     "[proxy] ca_key: %s: permissions %04o are too open: the CA key must not be readable by "
                     "others nor writable by group or others (chmod 0400 or 0440)",
                     cfg->ca_key_ref + 5, (unsigned)(st.st_mode & 07777));
            return AV_ERR_CA;
        }
    }
    av_secret *pem = NULL, *key = NULL;
    char why[256] = "";
    int rc = av__resolver_get(ctx->snap->resolver, cfg->ca_cert_ref, &pem, why, sizeof(why));
    if (rc == AV_OK) {
        rc = av__resolver_get(ctx->snap->resolver, cfg->ca_key_ref, &key, why, sizeof(why));
        if (rc != AV_OK)
            av__errf(err, err_len, "[proxy] ca_key: %s", why[0] ? why : av_strerror(rc));
    } else {
        av__errf(err, err_len, "[proxy] ca_cert: %s", why[0] ? why : av_strerror(rc));
    }
    if (rc == AV_OK) {
        char pem_name[300], key_name[300];
        ref_label(pem_name, sizeof(pem_name), "ca_cert", cfg->ca_cert_ref);
        ref_label(key_name, sizeof(key_name), "ca_key", cfg->ca_key_ref);
        rc = av__ca_open_mem(&ctx->ca, av__secret_data(pem), av__secret_len(pem), pem_name, av__secret_data(key),
                             av__secret_len(key), key_name, 0, err, err_len);
    }
    av__secret_free(pem);
    av__secret_free(key);
    return rc == AV_ERR_NOMEM || rc == AV_ERR_CA ? rc : rc ? AV_ERR_CONFIG : AV_OK;
}

static void ctx_init_pool(av_ctx *ctx)
{
    ctx->pool.loop = ctx->loop;
    ctx->pool.log = &ctx->log;
    ctx->pool.dns = ctx->dns;
    ctx->pool.tls_cli = ctx->tls_cli;
    ctx->pool.cfg = ctx->cfg;
    ctx->pool.parents = ctx->snap->parents;
    ctx->pool.metrics = &ctx->metrics;
    ctx->pool.is_own_listener = av__listen_is_own;
    ctx->pool.ud = ctx;
}

/* What the primary and the workers make alike once their snapshot is
 * there: the environment, the wake-up and the timers. */
static int ctx_init_loop_side(av_ctx *ctx)
{
    ctx_fill_env(ctx);
    ctx->wakeup = av__async_new(ctx->loop, ctx_on_wakeup, ctx);
    ctx->drain_timer = av__timer_new(ctx->loop, ctx_on_drain_timeout, ctx);
    if (!ctx->wakeup || !ctx->drain_timer || av__listen_init_timers(ctx) != AV_OK)
        return AV_ERR_NOMEM;
    return AV_OK;
}

/* worker_new makes worker |id| of |p| (see av_ctx_internal.h): its own
 * loop, DNS channel, snapshot around the primary's
 * core and listeners on the addresses the primary bound (port 0 resolved),
 * SO_REUSEPORT. Its thread starts with av_ctx_run or av_ctx_start. */
static int worker_new(av_ctx *p, int id, av_ctx **out, char *err, size_t err_len)
{
    *out = NULL;
    av_ctx *w = av__calloc(1, sizeof(*w));
    if (!w)
        return AV_ERR_NOMEM;
    av__audit_init(&w->audit); /* unused: the primary's is written */
    pthread_mutex_init(&w->lock, NULL);
    w->primary = p;
    w->worker_id = id;
    w->nworkers = 1;
    w->conns_shared = &p->conns_all;
    w->nofile = p->nofile;
    w->auto_max_conns = p->auto_max_conns;
    w->reuseport = 1;
    w->log = p->log;
    w->ca = p->ca;
    w->tls_srv = p->tls_srv;
    w->proxy_names = p->proxy_names;
    int rc = AV_ERR_NOMEM;
    w->loop = av__loop_new();
    if (!w->loop)
        goto fail;
    w->tls_cli = p->tls_cli;
    rc = av__dns_new(&w->dns, w->loop, p->cfg->connect_timeout);
    if (rc) {
        av__errf(err, err_len, "cannot initialise the DNS resolver");
        goto fail;
    }
    rc = av__snap_from_core(w->loop, av__snap_core_ref(p->snap), &w->snap);
    if (rc)
        goto fail;
    w->cfg = w->snap->cfg;
    ctx_tls_resumption(w);
    ctx_init_pool(w);
    w->listeners = av__calloc(p->nlisteners + 1, sizeof(*w->listeners));
    if (!w->listeners) {
        rc = AV_ERR_NOMEM;
        goto fail;
    }
    w->nproxy_listeners = p->nproxy_listeners;
    for (size_t i = 0; i < p->nlisteners; i++) {
        const av_listener *pl = &p->listeners[i];
        char spec[96];
        snprintf(spec, sizeof(spec), pl->addr.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", pl->host, pl->port);
        w->nlisteners = i + 1;
        rc = av__listen_bind(w, &w->listeners[i], spec, pl->gw, 1, err, err_len);
        if (rc)
            goto fail;
    }
    rc = ctx_init_loop_side(w);
    if (rc)
        goto fail;
    *out = w;
    return AV_OK;
fail:
    av_ctx_free(w);
    return rc;
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
    ctx->conns_shared = &ctx->conns_all;
    ctx->nworkers = 1;
    int rc = AV_ERR_NOMEM;
    ctx->cfg = av__config_copy(cfg_in);
    if (!ctx->cfg)
        goto fail;
    if (av_config_validate(ctx->cfg) != AV_OK) {
        av__errf(err, err_len, "%s", av_config_error(ctx->cfg));
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    if (!ctx->cfg->state_dir) {
        av__errf(err, err_len, "no state directory configured");
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    size_t nworkers = ctx_workers_wanted(ctx->cfg);
    if (nworkers > 1 && host_loop) {
        av__errf(err, err_len, "workers = %zu: a context on the host's loop runs one worker (set workers = 1)",
                 nworkers);
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    ctx->reuseport = nworkers > 1;
    av__listen_init_limits(ctx);
    ctx->loop = host_loop ? av__loop_wrap(host_loop) : av__loop_new();
    if (!ctx->loop)
        goto fail;
    rc = av__tls_client_ctx_new(&ctx->tls_cli, ctx->cfg->upstream_cafile, err, err_len);
    if (rc)
        goto fail;
    rc = ctx_open_audit(ctx, err, err_len);
    if (rc)
        goto fail;
    rc = av__dns_new(&ctx->dns, ctx->loop, ctx->cfg->connect_timeout);
    if (rc) {
        av__errf(err, err_len, "cannot initialise the DNS resolver");
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
    rc = ctx_open_ca(ctx, err, err_len);
    if (rc)
        goto fail;
    rc = av__tls_server_ctx_new(&ctx->tls_srv, ctx->ca, err, err_len);
    if (rc)
        goto fail;
    ctx_tls_resumption(ctx);
    ctx_init_pool(ctx);
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
        const char *spec;
        av_gw *g = NULL;
        if (i < ctx->cfg->nlisten) {
            spec = ctx->cfg->listen[i];
        } else {
            const av_gateway_cfg *gc = &ctx->cfg->gateways[i - ctx->cfg->nlisten];
            spec = gc->listen;
            char why[160];
            g = av__gw_new(gc->upstream, gc->name, (int)(i - ctx->cfg->nlisten), gc->allow_remote, why, sizeof(why));
            if (!g) {
                av__errf(err, err_len, "gateway %s: %s", gc->name, why);
                rc = AV_ERR_CONFIG;
                goto fail;
            }
            av__gw_link(ctx, g);
        }
        rc = av__listen_bind(ctx, &ctx->listeners[i], spec, g, 1, err, err_len);
        if (rc)
            goto fail;
    }
    rc = ctx_proxy_names(ctx);
    if (rc)
        goto fail;
    rc = av__decide_new(&ctx->decide);
    if (rc)
        goto fail;
    rc = ctx_init_loop_side(ctx);
    if (rc)
        goto fail;
    ctx->log.max_level = AV_LOG_INFO;
    if (nworkers > 1) {
        ctx->workers = av__calloc(nworkers - 1, sizeof(*ctx->workers));
        if (!ctx->workers) {
            rc = AV_ERR_NOMEM;
            goto fail;
        }
        for (size_t i = 1; i < nworkers; i++) {
            rc = worker_new(ctx, (int)i, &ctx->workers[i - 1], err, err_len);
            if (rc)
                goto fail;
            ctx->nworkers = i + 1;
        }
    }
    *out = ctx;
    return AV_OK;
fail:
    if (err && err_len && !err[0])
        snprintf(err, err_len, "%s", av_strerror(rc));
    av_ctx_free(ctx);
    return rc;
}

static void *worker_thread(void *arg)
{
    av_ctx *w = arg;
    av__loop_run(w->loop);
    return NULL;
}

int av__ctx_start_workers(av_ctx *ctx)
{
    /* Worker threads take no signals: the process's handlers run on the
     * threads the host (the daemon) set up, and reach the workers
     * through the primary. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = AV_OK;
    for (size_t i = 1; i < ctx->nworkers; i++) {
        av_ctx *w = ctx->workers[i - 1];
        if (rc == AV_OK && pthread_create(&w->wthread, NULL, worker_thread, w) == 0) {
            w->wthread_started = 1;
            continue;
        }
        rc = AV_ERR_NOMEM;
        atomic_store(&w->worker_done, 1); /* never ran: nothing to drain */
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

void av__ctx_join_workers(av_ctx *ctx)
{
    for (size_t i = 1; i < ctx->nworkers; i++) {
        av_ctx *w = ctx->workers[i - 1];
        if (!w->wthread_started)
            continue;
        av_ctx_shutdown(w, 0); /* a no-op when its drain is over */
        pthread_join(w->wthread, NULL);
        w->wthread_started = 0;
    }
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
    av__ctx_join_workers(ctx);
    for (size_t i = 1; i < ctx->nworkers; i++)
        av_ctx_free(ctx->workers[i - 1]);
    av__free(ctx->workers);
    ctx->workers = NULL;
    ctx->nworkers = 1;
    while (ctx->conns)
        av__conn_destroy(ctx->conns);
    av__pool_cleanup(&ctx->pool);
    for (size_t i = 0; i < ctx->nlisteners; i++)
        av__listen_close(&ctx->listeners[i]);
    av__free(ctx->listeners);
    av__embed_free(ctx);
    if (ctx->proxy_names && !ctx->primary) {
        for (size_t i = 0; ctx->proxy_names[i]; i++)
            av__free((void *)ctx->proxy_names[i]);
        av__free(ctx->proxy_names);
    }
    av__metrics_cleanup(&ctx->metrics);
    av__audit_close(&ctx->audit);
    av__decide_free(ctx->decide); /* after the connections: no exchange holds a request now */
    av__async_free(ctx->wakeup);
    av__timer_free(ctx->drain_timer);
    av__timer_free(ctx->accept_timer);
    av__timer_free(ctx->report_timer);
    av__dns_free(ctx->dns);
    av__snap_unref(ctx->snap);
    av__snap_core_unref(ctx->pending);
    if (!ctx->primary) { /* a worker's are the primary's */
        av__tls_client_ctx_free(ctx->tls_cli);
        av__tls_server_ctx_free(ctx->tls_srv);
        av__ca_free(ctx->ca);
    }
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
    for (size_t i = 1; i < ctx->nworkers; i++) /* before their threads start */
        ctx->workers[i - 1]->log = ctx->log;
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

AV_EXPORT int av_ctx_run(av_ctx *ctx)
{
    /* thread_started first: |running| belongs to a started loop thread. */
    if (!ctx || ctx->thread_started || ctx->running || ctx->done || !av__loop_owned(ctx->loop))
        return AV_ERR_STATE;
    ctx->running = 1;
    av__listen_log_limits(ctx);
    if (av__ctx_start_workers(ctx) != AV_OK) {
        av__log(&ctx->log, AV_LOG_ERROR, "cannot start the worker threads");
        av_ctx_shutdown(ctx, 0);
    }
    av__loop_run(ctx->loop); /* a pending shutdown ends it at once */
    av__ctx_join_workers(ctx);
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
    atomic_store(&ctx->unhealthy, 1);
    atomic_store(&ctx->shutdown_requested, 1);
    av__async_send(ctx->wakeup);
}

AV_EXPORT void av_ctx_set_health(av_ctx *ctx, int ok)
{
    if (ctx)
        atomic_store(&ctx->unhealthy, !ok);
}
