/* av_metrics.h - the counters behind /metrics.
 *
 * One av_metrics per worker. The connection layer adds to the counters
 * directly and counts each finished exchange by service and status with
 * av__metrics_count_exchange. /metrics, on any worker, sums every worker's
 * (av__metrics_add), so the counters are atomics (relaxed: uncontended,
 * each worker has its own) and the tables (exchanges, parents, mints) are
 * written by their worker only: rows are added under |tlock|, a spin lock
 * the reader takes too; a row's count is an atomic. A leaf: includes only
 * av_buf (a foundation).
 */
#ifndef AV_METRICS_H
#define AV_METRICS_H

#include <stdatomic.h>
#include <stddef.h>

#include "av_buf.h"

/* A counter: written by one worker, read by /metrics on any. */
typedef _Atomic unsigned long long av_counter;

/* How an exchange ended: the `end` of its log line and audit record. */
enum {
    AV_END_NONE = 0,
    AV_END_COMPLETE,       /* the response was delivered whole */
    AV_END_CLIENT_ABORT,   /* the agent closed, reset or cancelled first */
    AV_END_UPSTREAM_ABORT, /* the upstream closed or reset before the end */
    AV_END_TIMEOUT,        /* a timeout of ours ended it */
    AV_END_REFUSED,        /* refused by policy or a limit, nothing sent upstream */
    AV_END_ERROR,          /* any other failure (dial, TLS, framing, memory) */
    AV_END_SHUTDOWN,       /* the daemon's drain deadline ended it */
    AV_END_COUNT
};

/* Exchanges by service name ("" = none) and status. */
typedef struct av_metric_x {
    char svc[68];
    int status;
    av_counter n;
} av_metric_x;

/* Connections through parent proxies, by parent ("host:port"): the first
 * AV_METRICS_PARENTS parents seen get a row each, later ones share "other". */
#define AV_METRICS_PARENTS 16
typedef struct av_metric_parent {
    char parent[264];
    av_counter connects, failures;
} av_metric_parent;

/* Access tokens minted (av_mint.h), by service: the first
 * AV_METRICS_MINTS services get a row each, later ones share "other". */
#define AV_METRICS_MINTS 32
typedef struct av_metric_mint {
    char svc[68];
    av_counter mints, failures;
} av_metric_mint;

/* The members of av_metrics, as a list: av_ctx also declares them as an
 * anonymous struct over the same storage (transitional, until the
 * connection code reaches them through av_env). */
#define AV_METRICS_MEMBERS                                                                                        \
    av_counter exchanges; /* finished exchanges, for the drain report */                                        \
    av_metric_x *mx;                                                                                               \
    size_t nmx, capmx;                                                                                             \
    av_counter m_injected, m_redacted, m_tls_agent, m_tls_upstream, m_conns_total;                                 \
    av_counter m_limit_rate, m_limit_scope, m_limit_h2, m_limit_head;                                              \
    av_counter m_limit_conns, m_limit_fds;                                                                         \
    av_counter m_limit_held, m_limit_decide_progs; /* decisions: held requests, running programs */      \
    av_metric_parent m_parents[AV_METRICS_PARENTS]; /* by parent proxy (av__metrics_count_parent) */          \
    size_t m_nparents;                                                                                             \
    av_counter m_tls_resumed_agent, m_tls_resumed_upstream; /* resumed TLS handshakes */                         \
    av_counter m_ends[AV_END_COUNT]; /* exchanges by how they ended */                                         \
    av_metric_mint m_mints[AV_METRICS_MINTS]; /* by service (av__metrics_count_mint) */                        \
    size_t m_nmints;                                                                                               \
    atomic_int tlock; /* rows being added to the tables, or read by another worker */

typedef struct av_metrics {
    AV_METRICS_MEMBERS
} av_metrics;

/* Count one exchange of service |svc| (NULL: none) answered with |status|.
 * The table is bounded (4096 rows: statuses are 100..999, services are
 * configured); past that, or out of memory, the exchange is not counted. */
void av__metrics_count_exchange(av_metrics *m, const char *svc, int status);
/* Count a TCP connection to parent proxy |parent| ("host:port") made
 * (|failed| 0) or a tunnel through it that failed (|failed| 1). */
void av__metrics_count_parent(av_metrics *m, const char *parent, int failed);
/* Count a mint of service |svc|'s access token, or a failed one. */
void av__metrics_count_mint(av_metrics *m, const char *svc, int failed);
/* The names of the AV_END_* endings (log line, audit record, /metrics). */
extern const char *const av__end_names[AV_END_COUNT];

/* What /metrics shows besides the counters: gauges the caller reads from
 * the context, the pool and the CA. */
typedef struct av_metrics_gauges {
    size_t conns, upstream_h2, upstream_idle;
    size_t nworkers;                 /* per-worker rows below (0: none) */
    const unsigned long long *worker_conns; /* connections each worker accepted */
    unsigned long leaf_hits, leaf_misses, leaf_refused;
} av_metrics_gauges;

/* Append the Prometheus text (format 0.0.4) of |m| and |g| to |b| (never a
 * secret: service names and statuses only). */
void av__metrics_prometheus(const av_metrics *m, const av_metrics_gauges *g, av_buf *b);

/* av__metrics_add adds |src|'s counters and table rows to |dst| (which no
 * other thread uses): /metrics sums the workers. Takes |src|'s table lock
 * while it reads the rows. */
void av__metrics_add(av_metrics *dst, av_metrics *src);

/* Free the table (the counters stay). */
void av__metrics_cleanup(av_metrics *m);

#endif
