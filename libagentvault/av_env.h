/* av_env.h - what an agent connection needs from the running context.
 *
 * The context embeds one av_env, fills it at creation and hands it to the
 * connection code, which sees nothing else of the context: the loop and
 * logger, the CA and TLS server context (MITM and the proxy's own TLS
 * listener), the names the proxy's own certificate covers, the upstream
 * pool, the counters, the audit log, the current configuration snapshot
 * (through a pointer: a reload replaces it), whether the context is
 * draining, and the context's list of connections. Upward calls go through
 * function pointers: on_conn_gone tells the context a connection went
 * away (the drain may be over); now and random stand for the clock and
 * the random source, so that tests and fuzzers can make the connection
 * code deterministic. av_gw, the gateway a listener serves, is here too:
 * a connection accepted for a gateway gets its record. Loop thread only.
 */
#ifndef AV_ENV_H
#define AV_ENV_H

#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

#include "av_audit.h"
#include "av_ca.h"
#include "av_decide.h"
#include "av_ev.h"
#include "av_log.h"
#include "av_metrics.h"
#include "av_pool.h"
#include "av_snap.h"
#include "av_tls.h"
#include "av_url.h"

struct av_conn;

/* A gateway (base-URL mode): every request a client sends to it goes to
 * one upstream origin. From a [gateway] section (its token, if any, is in
 * snap->gw_tokens[cfg_index]) or opened at run time by av_gateway_open()
 * and av_open_stream(). Lives until the context is freed. */
typedef struct av_gw {
    struct av_gw *next;
    int cfg_index;            /* [gateway] index; -1: opened through the API */
    int allow_remote;         /* accept clients that are not on loopback */
    int dest_tls;             /* https upstream */
    av_authority dest;
    int api_port;             /* av_gateway_open's listener for it (0: none yet; under ctx->lock) */
    char name[72];            /* for logs: the section name or "api" */
    char upstream[AV_HOST_MAX + 40]; /* normalized origin, e.g. https://api.openai.com */
} av_gw;

typedef struct av_env {
    av_loop *loop;
    const av_logger *log;
    av_ca *ca;
    av_tls_server_ctx *tls_srv;
    const char *const *proxy_names; /* NULL-terminated; the first is the leaf's primary name */
    av_pool *pool;
    av_metrics *metrics;
    av_audit *audit;
    av_decide *decide;              /* held requests and remembered rules (thread-safe) */
    av_snap *const *snap_cur;       /* *snap_cur: the current snapshot */
    const int *draining;            /* *draining: shutdown has begun */
    const atomic_int *unhealthy;    /* *unhealthy: /healthz answers 503 (NULL: never) */
    struct av_conn **conns;         /* the context's connections (a list the conn code keeps) */
    size_t *nconns;
    void (*on_conn_gone)(void *ud); /* a connection was freed */
    /* GET /metrics: the Prometheus text of every worker (NULL: of
     * |metrics| and this environment's gauges alone). */
    void (*metrics_text)(void *ud, av_buf *b);
    void *ud;
    /* The wall clock (CLOCK_REALTIME): token expiry, audit timestamps. */
    void (*now)(void *clock_ud, struct timespec *ts);
    /* |len| random bytes into |buf|: 0, or -1 when there are none. */
    int (*random)(void *clock_ud, void *buf, size_t len);
    void *clock_ud;
} av_env;

/* The real clock and getrandom(2), the defaults of now and random. */
void av__env_now_real(void *clock_ud, struct timespec *ts);
int av__env_random_real(void *clock_ud, void *buf, size_t len);

#endif
