/* av_ctx_internal.h - struct av_ctx, for av_ctx.c, av_listen.c and
 * av_embed.c. Everything else gets a narrow context: av_pool.h for
 * upstream connections, av_env.h for agent connections. */
#ifndef AV_CTX_INTERNAL_H
#define AV_CTX_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <sys/socket.h>

#include <agentvault/agentvault.h>

#include "av_err.h"
#include "av_audit.h"
#include "av_ca.h"
#include "av_config.h"
#include "av_conn.h"
#include "av_dns.h"
#include "av_env.h"
#include "av_limits.h"
#include "av_ev.h"
#include "av_log.h"
#include "av_metrics.h"
#include "av_pool.h"
#include "av_resolver.h"
#include "av_secret.h"
#include "av_snap.h"
#include "av_tls.h"

typedef struct av_conn av_conn;
typedef struct av_upconn av_upconn;

typedef struct av_listener {
    av_ctx *ctx;
    int fd;
    av_io *io;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int port;
    char host[64]; /* as configured, without brackets */
    av_gw *gw;     /* NULL: the proxy; else the gateway it serves */
    struct av_listener *next; /* gateways opened through the API */
} av_listener;

/* Work handed to the loop thread by thread-safe API calls. */
typedef struct av_cmd {
    struct av_cmd *next;
    int fd;            /* a stream's loop end; -1 for a listener */
    av_listener *l;    /* a new gateway listener, or NULL */
    av_gw *gw;
} av_cmd;

/* Workers ([proxy] workers; docs/ARCHITECTURE.md, "Workers"). The context
 * is worker 0 and runs on the thread of av_ctx_run (or av_ctx_start's);
 * workers 1..n-1 are av_ctx records of their own (|primary| set), each
 * with its thread and loop, its listeners (SO_REUSEPORT on the same
 * addresses), connections, upstream pool and HTTP/2 muxes, DNS channel,
 * snapshot (around the shared core: av_snap.h), counters and timers. They
 * share the primary's CA (leaf cache under its lock), TLS server context
 * (ticket keys, under a lock), TLS client context (origin sessions, under
 * a lock), audit log, logger, proxy names, gateway records and connection
 * count. Signals, reload and the embedding API go to the primary, which
 * hands reloads and shutdowns on to the workers (their wake-up: av_async). */
struct av_ctx {
    av_config *cfg;
    av_decide *decide;        /* held requests, remembered rules (av_decide.h) */
    av_logger log;
    av_loop *loop;
    av_ca *ca;
    av_tls_server_ctx *tls_srv;
    av_tls_client_ctx *tls_cli;
    av_dns *dns;
    av_listener *listeners;   /* the proxy's, then one per [gateway] */
    size_t nlisteners;
    size_t nproxy_listeners;
    const char **proxy_names; /* NULL-terminated: names the proxy's own cert covers */
    struct av_snap *snap;     /* the current configuration snapshot (cfg == snap->cfg) */
    av_conn *conns;
    size_t nconns;
    av_pool pool;             /* upstream connections (av_upstream.c, av_mux.c) */
    av_env env;               /* what connections see of the context (av_env.h) */
    av_async *wakeup;
    av_timer *drain_timer;
    /* Embedding (av_ctx_start, av_gateway_open, av_open_stream). */
    pthread_mutex_t lock;     /* guards cmds, gws, closed */
    av_cmd *cmds;
    av_gw *gws;
    av_listener *api_listeners; /* loop thread only */
    int closed;               /* shutdown begun: API calls fail */
    pthread_t thread;
    int thread_started;
    void (*done_fn)(void *);  /* host loop: shutdown finished */
    void *done_ud;
    int done;
    /* Set by av_ctx_shutdown from any thread or a signal handler: lock-free
     * atomics (the drain in milliseconds). */
    atomic_int shutdown_requested;
    atomic_llong drain_ms;
    atomic_int unhealthy;     /* /healthz answers 503 (av_ctx_set_health, shutdown) */
    double drain_deadline;    /* loop time the drain ends (loop thread) */
    int draining;
    int running;
    atomic_int reload_requested;
    av_reload_fn reload_fn;
    void *reload_ud;
    av_audit audit;
    /* /metrics counters: ctx->metrics, also reachable as ctx->m_* (the
     * anonymous struct is the same storage; transitional, until the
     * connection code uses env->metrics). */
    union {
        av_metrics metrics;
        struct {
            AV_METRICS_MEMBERS
        };
    };
    /* Accepting (av_listen.c): the cap, the descriptor-limit back-off and
     * their rate-limited reports (SECURITY.md 16). */
    size_t auto_max_conns;    /* the cap when max_connections is not set */
    atomic_size_t conns_all;  /* primary: connections of every worker, against the cap */
    atomic_size_t *conns_shared; /* &primary->conns_all */
    atomic_ullong accepted;   /* connections this worker took (/metrics, per worker) */
    atomic_size_t g_nmux, g_nidle; /* this worker's pool gauges, for /metrics on another */
    int reuseport;            /* bind listeners with SO_REUSEPORT (workers > 1) */
    unsigned long long nofile; /* the open-files limit at creation */
    av_timer *accept_timer;   /* ends an accept pause */
    double accept_pause;      /* the current back-off in seconds; 0: none */
    int accept_paused;        /* listeners are not watched until accept_timer */
    av_timer *report_timer;   /* flushes the counts below */
    struct av_report {
        double last;          /* loop time of the last message */
        unsigned long long n; /* events since then */
        int err;              /* the last errno (descriptor reports) */
    } rep_cap, rep_fd;
    /* Workers (see above). */
    struct av_ctx *primary;   /* a worker: the context it works for; NULL: this is the context */
    struct av_ctx **workers;  /* primary: workers 1..nworkers-1 */
    size_t nworkers;          /* primary: 1 + the worker threads */
    int worker_id;
    pthread_t wthread;
    int wthread_started;
    av_snap_core *pending;    /* worker: the next reload's snapshot core (under |lock|) */
    unsigned long pending_gen;
    atomic_ulong applied_gen; /* worker: the reload its snapshot is from */
    atomic_int worker_done;   /* worker: its drain is over */
    unsigned long reload_gen; /* primary: reloads made ... */
    unsigned long reload_said; /* ... and reported once every worker runs them */
};

/* av_ctx.c: count an exchange for /metrics (av__metrics_count_exchange). */
void av__ctx_count_exchange(av_ctx *ctx, const char *svc, int status);
/* av_ctx.c: swap in a new configuration (owned); in-flight exchanges keep
 * the old snapshot. Returns AV_OK, or an error with |err| (the current
 * configuration stays). Loop thread only. */
int av__ctx_reload(av_ctx *ctx, av_config *cfg, char *err, size_t err_len);
/* av_ctx.c: append one audit record line (already JSON, with the
 * newline); no-op when the audit log is off (av__audit_write). */
void av__ctx_audit(av_ctx *ctx, const char *line, size_t len);

/* av_ctx.c: |fmt| into |err| (when given). */

/* av_listen.c */
/* Bind and listen on |spec| ("host:port", "[v6]:port", "localhost:port")
 * for the proxy (|gw| NULL) or a gateway; the accept watcher starts when
 * |watch| (API listeners are watched once the loop thread adopts them). */
int av__listen_bind(av_ctx *ctx, av_listener *l, const char *spec, av_gw *gw, int watch, char *err, size_t err_len);
void av__listen_close(av_listener *l);
/* The loop thread adopts an API listener: watch it (unless accepting is
 * paused). AV_OK or AV_ERR_NOMEM. */
int av__listen_adopt(av_ctx *ctx, av_listener *l);
/* The connection cap: [proxy] max_connections, else the default from the
 * open-files limit (read by av__listen_init_limits at creation). */
size_t av__listen_max_conns(const av_ctx *ctx);
void av__listen_init_limits(av_ctx *ctx);
int av__listen_init_timers(av_ctx *ctx);
/* A connection refused over the cap: counted and reported (rate-limited). */
void av__listen_over_cap(av_ctx *ctx);
/* Is |sa| one of the context's listeners? The pool's is_own_listener
 * callback (|ud| is the context). */
int av__listen_is_own(void *ud, const struct sockaddr *sa);
/* Log the connection cap once the loop starts. */
void av__listen_log_limits(av_ctx *ctx);

/* av_embed.c */
/* A gateway record for |upstream| ("https://host[:port]" or
 * "http://host:port", no path), or NULL with |err| set. */
av_gw *av__gw_new(const char *upstream, const char *name, int cfg_index, int allow_remote, char *err,
                  size_t err_len);
/* Link |g| into the context's list (which owns it). */
void av__gw_link(av_ctx *ctx, av_gw *g);
/* Loop thread: adopt what the API calls queued. */
void av__embed_run_cmds(av_ctx *ctx);
/* Free the API listeners, queued commands and gateway records. */
void av__embed_free(av_ctx *ctx);


/* av_ctx.c: start the worker threads (av_ctx_run, av_ctx_start), and
 * wait for them once the primary's loop is over. */
int av__ctx_start_workers(av_ctx *ctx);
void av__ctx_join_workers(av_ctx *ctx);

/* av_ctx.c: called when a connection goes away during a drain. */
void av__ctx_conn_gone(av_ctx *ctx);

/* av_listen.c: take one connection from the cap shared by the workers: 0,
 * or -1 when over it (counted and reported); release with
 * av__listen_release (av_ctx.c does for every connection freed). */
int av__listen_reserve(av_ctx *ctx);
void av__listen_release(av_ctx *ctx);

#endif
