/* av_embed.c - the embedding API: gateway records, the command queue that
 * hands API work to the loop thread, av_gateway_open, av_open_stream, and
 * running the loop on a thread of its own (av_ctx_start, av_ctx_stop). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "av_ctx_internal.h"
#include "av_mem.h"
#include "av_url.h"

/* av__gw_new makes a gateway record for |upstream| ("https://host[:port]" or
 * "http://host:port", no path). Returns NULL with |err| set. */
av_gw *av__gw_new(const char *upstream, const char *name, int cfg_index, int allow_remote, char *err,
                     size_t err_len)
{
    av_absolute_uri u;
    size_t ul = upstream ? strlen(upstream) : 0;
    if (!upstream || av__absolute_uri_parse(upstream, ul, &u) != 0 ||
        (strcmp(u.scheme, "https") != 0 && strcmp(u.scheme, "http") != 0) ||
        !(u.path_len == 0 || (u.path_len == 1 && u.path[0] == '/'))) {
        av__errf(err, err_len, "upstream must be an origin like https://api.example.com or https://host:port (no path)");
        return NULL;
    }
    av_gw *g = av__calloc(1, sizeof(*g));
    if (!g) {
        av__errf(err, err_len, "out of memory");
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
void av__gw_link(av_ctx *ctx, av_gw *g)
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
        av__listen_close(cmd->l);
        av__free(cmd->l);
    }
    av__free(cmd);
}

/* Loop thread: adopt what the API calls queued. */
void av__embed_run_cmds(av_ctx *ctx)
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
            if (av__listen_adopt(ctx, l) != AV_OK) {
                av__log(&ctx->log, AV_LOG_ERROR, "gateway to %s: out of memory, closing it", cmd->gw->upstream);
                pthread_mutex_lock(&ctx->lock);
                cmd->gw->api_port = 0; /* the next av_gateway_open binds again */
                pthread_mutex_unlock(&ctx->lock);
                cmd_discard(cmd);
                continue;
            }
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
        if (av__listen_reserve(ctx) != 0) {
            cmd_discard(cmd); /* the caller's end reads EOF */
            continue;
        }
        if (av__conn_accept(&ctx->env, cmd->fd, (struct sockaddr *)&peer, sizeof(peer), cmd->gw) != AV_OK) {
            av__listen_release(ctx);
            cmd_discard(cmd);
            continue;
        }
        av__free(cmd);
    }
}

/* The gateway record for an API upstream: one per distinct origin. */
static av_gw *ctx_api_gw(av_ctx *ctx, const char *upstream, char *err, size_t err_len)
{
    av_gw *g = av__gw_new(upstream, "api", -1, 0, err, err_len);
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
    int rc = av__listen_bind(ctx, l, "127.0.0.1:0", g, 0, why, sizeof(why));
    if (rc != AV_OK) {
        av__listen_close(l);
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

void av__embed_free(av_ctx *ctx)
{
    while (ctx->api_listeners) {
        av_listener *l = ctx->api_listeners;
        ctx->api_listeners = l->next;
        av__listen_close(l);
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
}

static void *ctx_thread(void *arg)
{
    av_ctx *ctx = arg;
    ctx->running = 1;
    av__listen_log_limits(ctx);
    if (av__ctx_start_workers(ctx) != AV_OK) {
        av__log(&ctx->log, AV_LOG_ERROR, "cannot start the worker threads");
        av_ctx_shutdown(ctx, 0);
    }
    /* Always run: a shutdown asked for before the loop started is a
     * pending wake-up that drains, calls the done function and ends it. */
    av__loop_run(ctx->loop);
    av__ctx_join_workers(ctx);
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
