/* conn_harness.h - a connection without a socket, for the conn family's
 * unit tests (test_req.c, test_inject.c, test_proxy_req.c).
 *
 * A real context (av_ctx_new over a configuration text, no listener) and
 * an av_conn whose agent side has no socket (fd -1): whatever the proxy
 * answers is left in c->a.pout for the test to read, and c->in_proceed is
 * held so that no notification ever runs the pump. An exchange that gets
 * as far as choosing its upstream takes an idle pooled connection put
 * there by xh_pool_fake (over a pipe, never read), so nothing is ever
 * dialled.
 *
 * Secrets come from callback:NAME, answered by xh_secret: at once with
 * the value set by xh_answer(), or held (h->hold) so that an exchange
 * stops before injection with its stored request complete.
 *
 * The connection sees a copy of the context's environment (av_env.h) whose
 * clock and randomness are the test's: h->clock, and bytes counting up
 * from h->rnd (h->rnd_fail: none to be had).
 */
#ifndef CONN_HARNESS_H
#define CONN_HARNESS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ev.h>

#include "av_conn_int.h"
#include "av_ctx_internal.h" /* (the test reads the context's environment) */

#define XH_KEY "sk-test-Zq8v1N3xYt7LmP0aBcDeFgHiJkLm"

typedef struct xh {
    char dir[64];
    av_ctx *ctx;
    av_conn *c;
    int hold;                   /* callback: requests are held, not answered */
    av_secret_request *held;
    char value[256];            /* the answer */
    size_t value_len;
    int asked;
    struct ev_loop *evl;        /* xh_new_full(..., on_loop): the context runs on it */
    av_env env;                 /* the context's, with the test's clock and randomness */
    struct timespec clock;
    unsigned rnd;
    int rnd_fail;
    int randoms;                /* calls */
} xh;

static inline void xh_now(void *ud, struct timespec *ts)
{
    xh *h = ud;
    *ts = h->clock;
}

static inline int xh_random(void *ud, void *buf, size_t len)
{
    xh *h = ud;
    h->randoms++;
    if (h->rnd_fail)
        return -1;
    uint8_t *b = buf;
    for (size_t i = 0; i < len; i++)
        b[i] = (uint8_t)h->rnd++;
    return 0;
}


static inline void xh_secret(void *ud, const char *name, av_secret_request *req)
{
    xh *h = ud;
    (void)name;
    h->asked++;
    if (h->hold) {
        h->held = req;
        return;
    }
    av_secret_request_answer(req, h->value, h->value_len);
}

static inline void xh_answer(xh *h, const char *v)
{
    snprintf(h->value, sizeof(h->value), "%s", v);
    h->value_len = strlen(h->value);
}

static inline void xh_log(void *ud, int level, const char *msg)
{
    (void)ud;
    (void)level;
    (void)msg;
}

/* A context over |conf| (sections after [proxy]; the harness adds its
 * state directory) and one socketless agent connection. */
static inline void xh_new_full(xh *h, const char *proxy_keys, const char *sections, const char *tokens_path,
                               int on_loop)
{
    memset(h, 0, sizeof(*h));
    xh_answer(h, XH_KEY);
    snprintf(h->dir, sizeof(h->dir), "/tmp/av-xh-XXXXXX");
    assert_non_null(mkdtemp(h->dir));
    char text[8192];
    snprintf(text, sizeof(text), "[proxy]\nstate_dir = %s\n%s\n%s", h->dir, proxy_keys ? proxy_keys : "",
             sections ? sections : "");
    av_config *cfg = NULL;
    assert_int_equal(av_config_new(&cfg), AV_OK);
    if (av_config_load_string(cfg, text, strlen(text), "xh.conf") != AV_OK)
        fail_msg("config: %s", av_config_error(cfg));
    assert_int_equal(av_config_set_secret_fn(cfg, xh_secret, h), AV_OK);
    if (tokens_path)
        assert_int_equal(av_config_load_tokens(cfg, tokens_path), AV_OK);
    char err[300] = "";
    int rc;
    if (on_loop) {
        /* a loop of the test's: it runs it (ev_run) to deliver wake-ups */
        h->evl = ev_loop_new(EVFLAG_AUTO);
        assert_non_null(h->evl);
        rc = av_ctx_new_on_loop(&h->ctx, cfg, h->evl, err, sizeof(err));
    } else {
        rc = av_ctx_new(&h->ctx, cfg, err, sizeof(err));
    }
    av_config_free(cfg);
    if (rc != AV_OK)
        fail_msg("av_ctx_new: %s", err);
    av_ctx_set_log(h->ctx, xh_log, NULL, AV_LOG_DEBUG);
    h->env = h->ctx->env;
    h->env.now = xh_now;
    h->env.random = xh_random;
    h->env.clock_ud = h;
    h->clock.tv_sec = 1800000000; /* 2027-01-15 */
    av_conn *c = av__calloc(1, sizeof(*c));
    assert_non_null(c);
    c->env = &h->env;
    c->snap = av__snap_ref(*h->env.snap_cur);
    c->token = -1;
    c->state = C_PROXY_HEAD;
    c->in_proceed = 1; /* notifications only set c->again */
    c->x.c = c;
    c->x.env = &h->env;
    c->x.agent = &av__agent_h1_ops;
    av__side_init(&c->a, -1, AV_RAW_BUF_MAX, AV_PLAIN_BUF_MAX);
    snprintf(c->peer, sizeof(c->peer), "test");
    h->c = c;
}

static inline void xh_new_store(xh *h, const char *proxy_keys, const char *sections, const char *tokens_path)
{
    xh_new_full(h, proxy_keys, sections, tokens_path, 0);
}

static inline void xh_new(xh *h, const char *proxy_keys, const char *sections)
{
    xh_new_full(h, proxy_keys, sections, NULL, 0);
}

static inline void xh_free(xh *h)
{
    av_conn *c = h->c;
    if (c->x.active || c->x.snap)
        av__x_reset(&c->x);
    while (c->xs) /* an HTTP/2 agent's streams */
        av__conn_h2_free_x(c, c->xs);
    if (c->h2)
        av__h2_free(c->h2);
    av__side_free(&c->a, 1);
    av__snap_unref(c->snap);
    av__free(c);
    if (h->held)
        av_secret_request_fail(h->held, "test over");
    av_ctx_free(h->ctx);
    if (h->evl)
        ev_loop_destroy(h->evl);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", h->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", h->dir);
}

/* Begin an exchange of the harness's connection as its HTTP/1.1 agent
 * side does (av__x_start_h1): the connection's snapshot and token, its
 * wake-up, then av__x_begin. */
static inline int xh_begin(av_exchange *x, const av_req_in *in, const av_authority *dest, int dest_tls)
{
    av_conn *c = x->c;
    conn_exchange_snap(c, x);
    x->wake = av__conn_wake;
    x->wake_ud = c;
    return av__x_begin(x, in, dest, dest_tls);
}

/* What the proxy wrote toward the agent, as a string (and consumed). */
static inline const char *xh_out(xh *h)
{
    static char s[65536];
    av_buf *o = h->c->a.pout;
    size_t n = o->len < sizeof(s) - 1 ? o->len : sizeof(s) - 1;
    if (n)
        memcpy(s, av__buf_head(o), n);
    s[n] = '\0';
    av__buf_consume(o, o->len);
    return s;
}

/* The status of the response the proxy wrote toward the agent, 0 if none. */
static inline int xh_status(const char *out)
{
    int st = 0;
    if (sscanf(out, "HTTP/1.1 %d", &st) != 1)
        return 0;
    return st;
}

static inline void xh_nop_timer(void *ud)
{
    (void)ud;
}

static inline void xh_nop_io(void *ud, int revents)
{
    (void)ud;
    (void)revents;
}

/* An idle upstream connection to |host|:|port| (TLS when |tls|) for the
 * credential scope |scope| ("service/token"), in the pool: an exchange
 * that reaches its upstream takes it instead of dialling (a mux too: an
 * origin with a pooled connection is taken to speak HTTP/1.1). */
static inline av_upconn *xh_pool_fake_tls(xh *h, const char *host, int port, int tls, const char *scope)
{
    av_upconn *up = av__calloc(1, sizeof(*up));
    assert_non_null(up);
    up->pool = h->env.pool;
    av__side_init(&up->side, -1, AV_RAW_BUF_MAX, AV_PLAIN_BUF_MAX);
    av_authority d;
    memset(&d, 0, sizeof(d));
    snprintf(d.host, sizeof(d.host), "%s", host);
    d.port = port;
    up->dest = d;
    up->tls = tls;
    av__upstream_key(up->pool, up->key, sizeof(up->key), &d, tls, scope);
    up->timer = av__timer_new(h->env.loop, xh_nop_timer, up);
    assert_non_null(up->timer);
    /* A watcher for when it goes back to the pool; its descriptor is a
     * pipe's (never read: the loop of these tests does not run it), so a
     * stray recv/send would fail instead of reaching anything. */
    int p[2];
    assert_int_equal(pipe(p), 0);
    close(p[1]);
    up->side.fd = p[0];
    up->side.io = av__io_new(h->env.loop, p[0], xh_nop_io, up);
    assert_non_null(up->side.io);
    /* into the pool, as av__upstream_release puts a reusable one (without
     * its read watcher: there is no socket to watch) */
    av_pool *pool = h->env.pool;
    up->state = AV_UP_IDLE;
    up->pool_next = pool->idle;
    if (pool->idle)
        pool->idle->pool_prev = up;
    pool->idle = up;
    pool->nidle++;
    return up;
}

static inline void xh_pool_fake(xh *h, const char *host, int port, const char *scope)
{
    xh_pool_fake_tls(h, host, port, 0, scope);
}

#endif
