/* av_metrics.c - the counters behind /metrics (see av_metrics.h). */
#include "av_metrics.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "av_buf.h"
#include "av_mem.h"

/* The table lock: held for a few instructions (adding a row, or another
 * worker reading the rows), never across I/O. */
static void tables_lock(av_metrics *m)
{
    while (atomic_exchange_explicit(&m->tlock, 1, memory_order_acquire))
        sched_yield();
}

static void tables_unlock(av_metrics *m)
{
    atomic_store_explicit(&m->tlock, 0, memory_order_release);
}

/* Add |n| to the row for (|svc|, |status|). The owner reads its own rows
 * without the lock (it is their only writer). */
static void count_exchange_n(av_metrics *m, const char *svc, int status, unsigned long long n)
{
    if (!svc)
        svc = "";
    for (size_t i = 0; i < m->nmx; i++)
        if (m->mx[i].status == status && strcmp(m->mx[i].svc, svc) == 0) {
            m->mx[i].n += n;
            return;
        }
    if (m->nmx >= 4096)
        return; /* bounded: statuses are 100..999, services are configured */
    tables_lock(m);
    if (m->nmx == m->capmx) {
        size_t cap = m->capmx ? m->capmx * 2 : 32;
        av_metric_x *nx = av__realloc(m->mx, cap * sizeof(*nx));
        if (!nx) {
            tables_unlock(m);
            return;
        }
        m->mx = nx;
        m->capmx = cap;
    }
    snprintf(m->mx[m->nmx].svc, sizeof(m->mx[m->nmx].svc), "%s", svc);
    m->mx[m->nmx].status = status;
    atomic_init(&m->mx[m->nmx].n, n);
    m->nmx++;
    tables_unlock(m);
}

void av__metrics_count_exchange(av_metrics *m, const char *svc, int status)
{
    count_exchange_n(m, svc, status, 1);
}

/* The row for |parent| (added when new), under the rules of
 * av__metrics_count_parent. */
static av_metric_parent *parent_row(av_metrics *m, const char *parent)
{
    size_t i;
    for (i = 0; i < m->m_nparents; i++)
        if (strcmp(m->m_parents[i].parent, parent) == 0)
            break;
    if (i == m->m_nparents) {
        tables_lock(m);
        if (m->m_nparents == AV_METRICS_PARENTS) {
            i = AV_METRICS_PARENTS - 1; /* bounded: the last row becomes "other" */
            snprintf(m->m_parents[i].parent, sizeof(m->m_parents[i].parent), "other");
        } else {
            snprintf(m->m_parents[i].parent, sizeof(m->m_parents[i].parent), "%s", parent);
            m->m_nparents++;
        }
        tables_unlock(m);
    }
    return &m->m_parents[i];
}

void av__metrics_count_parent(av_metrics *m, const char *parent, int failed)
{
    av_metric_parent *r = parent_row(m, parent);
    if (failed)
        r->failures++;
    else
        r->connects++;
}

static av_metric_mint *mint_row(av_metrics *m, const char *svc)
{
    size_t i;
    for (i = 0; i < m->m_nmints; i++)
        if (strcmp(m->m_mints[i].svc, svc) == 0)
            break;
    if (i == m->m_nmints) {
        tables_lock(m);
        if (m->m_nmints == AV_METRICS_MINTS) {
            i = AV_METRICS_MINTS - 1; /* bounded: the last row becomes "other" */
            snprintf(m->m_mints[i].svc, sizeof(m->m_mints[i].svc), "other");
        } else {
            snprintf(m->m_mints[i].svc, sizeof(m->m_mints[i].svc), "%s", svc);
            m->m_nmints++;
        }
        tables_unlock(m);
    }
    return &m->m_mints[i];
}

void av__metrics_count_mint(av_metrics *m, const char *svc, int failed)
{
    av_metric_mint *r = mint_row(m, svc);
    if (failed)
        r->failures++;
    else
        r->mints++;
}

void av__metrics_add(av_metrics *dst, av_metrics *src)
{
#define ADD(f) dst->f += atomic_load_explicit(&src->f, memory_order_relaxed)
    ADD(exchanges);
    ADD(m_injected);
    ADD(m_redacted);
    ADD(m_tls_agent);
    ADD(m_tls_upstream);
    ADD(m_conns_total);
    ADD(m_limit_rate);
    ADD(m_limit_scope);
    ADD(m_limit_h2);
    ADD(m_limit_head);
    ADD(m_limit_conns);
    ADD(m_limit_fds);
    ADD(m_limit_held);
    ADD(m_limit_decide_progs);
    ADD(m_tls_resumed_agent);
    ADD(m_tls_resumed_upstream);
    for (int e = 0; e < AV_END_COUNT; e++)
        ADD(m_ends[e]);
#undef ADD
    tables_lock(src);
    for (size_t i = 0; i < src->nmx; i++)
        count_exchange_n(dst, src->mx[i].svc, src->mx[i].status,
                         atomic_load_explicit(&src->mx[i].n, memory_order_relaxed));
    for (size_t i = 0; i < src->m_nparents; i++) {
        av_metric_parent *r = parent_row(dst, src->m_parents[i].parent);
        r->connects += atomic_load_explicit(&src->m_parents[i].connects, memory_order_relaxed);
        r->failures += atomic_load_explicit(&src->m_parents[i].failures, memory_order_relaxed);
    }
    for (size_t i = 0; i < src->m_nmints; i++) {
        av_metric_mint *r = mint_row(dst, src->m_mints[i].svc);
        r->mints += atomic_load_explicit(&src->m_mints[i].mints, memory_order_relaxed);
        r->failures += atomic_load_explicit(&src->m_mints[i].failures, memory_order_relaxed);
    }
    tables_unlock(src);
}

void av__metrics_cleanup(av_metrics *m)
{
    av__free(m->mx);
    m->mx = NULL;
    m->nmx = m->capmx = 0;
}

const char *const av__end_names[AV_END_COUNT] = {
    "complete", "complete", "client_abort", "upstream_abort", "timeout", "refused", "error", "shutdown",
};

void av__metrics_prometheus(const av_metrics *m, const av_metrics_gauges *g, av_buf *b)
{
    av__buf_append_str(b, "# HELP agentvault_exchanges_total Exchanges by service and status.\n"
                          "# TYPE agentvault_exchanges_total counter\n");
    for (size_t i = 0; i < m->nmx; i++)
        av__buf_appendf(b, "agentvault_exchanges_total{service=\"%s\",status=\"%d\"} %llu\n", m->mx[i].svc,
                        m->mx[i].status, m->mx[i].n);
    av__buf_append_str(b, "# HELP agentvault_exchange_ends_total Exchanges by how they ended.\n"
                          "# TYPE agentvault_exchange_ends_total counter\n");
    for (int e = AV_END_COMPLETE; e < AV_END_COUNT; e++)
        av__buf_appendf(b, "agentvault_exchange_ends_total{end=\"%s\"} %llu\n", av__end_names[e], m->m_ends[e]);
    av__buf_appendf(b,
                    "# TYPE agentvault_connections_active gauge\nagentvault_connections_active %zu\n"
                    "# TYPE agentvault_connections_total counter\nagentvault_connections_total %llu\n"
                    "# TYPE agentvault_upstream_h2_connections gauge\nagentvault_upstream_h2_connections %zu\n"
                    "# TYPE agentvault_upstream_idle_connections gauge\nagentvault_upstream_idle_connections %zu\n"
                    "# TYPE agentvault_tls_handshakes_total counter\n"
                    "agentvault_tls_handshakes_total{side=\"agent\"} %llu\n"
                    "agentvault_tls_handshakes_total{side=\"upstream\"} %llu\n"
                    "# TYPE agentvault_leaf_cache_hits_total counter\nagentvault_leaf_cache_hits_total %lu\n"
                    "# TYPE agentvault_leaf_cache_misses_total counter\nagentvault_leaf_cache_misses_total %lu\n"
                    "# TYPE agentvault_injected_total counter\nagentvault_injected_total %llu\n"
                    "# TYPE agentvault_redacted_total counter\nagentvault_redacted_total %llu\n"
                    "# TYPE agentvault_limit_hits_total counter\n"
                    "agentvault_limit_hits_total{limit=\"token_rate\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"token_scope\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"h2\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"header_size\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"leaf_mint_rate\"} %lu\n",
                    g->conns, m->m_conns_total, g->upstream_h2, g->upstream_idle, m->m_tls_agent, m->m_tls_upstream,
                    g->leaf_hits, g->leaf_misses, m->m_injected, m->m_redacted, m->m_limit_rate, m->m_limit_scope,
                    m->m_limit_h2, m->m_limit_head, g->leaf_refused);
    av__buf_appendf(b, "agentvault_limit_hits_total{limit=\"connections\"} %llu\n"
                       "agentvault_limit_hits_total{limit=\"open_files\"} %llu\n", m->m_limit_conns, m->m_limit_fds);
    av__buf_appendf(b, "agentvault_limit_hits_total{limit=\"decide_held\"} %llu\n"
                       "agentvault_limit_hits_total{limit=\"decide_programs\"} %llu\n", m->m_limit_held,
                    m->m_limit_decide_progs);
    av__buf_append_str(b, "# HELP agentvault_parent_connections_total Connections to parent proxies.\n"
                          "# TYPE agentvault_parent_connections_total counter\n");
    for (size_t i = 0; i < m->m_nparents; i++)
        av__buf_appendf(b, "agentvault_parent_connections_total{parent=\"%s\"} %llu\n", m->m_parents[i].parent,
                        m->m_parents[i].connects);
    av__buf_append_str(b, "# HELP agentvault_parent_failures_total Tunnels through parent proxies that failed.\n"
                          "# TYPE agentvault_parent_failures_total counter\n");
    for (size_t i = 0; i < m->m_nparents; i++)
        av__buf_appendf(b, "agentvault_parent_failures_total{parent=\"%s\"} %llu\n", m->m_parents[i].parent,
                        m->m_parents[i].failures);
    av__buf_append_str(b, "# HELP agentvault_token_mints_total Access tokens minted at token endpoints.\n"
                          "# TYPE agentvault_token_mints_total counter\n");
    for (size_t i = 0; i < m->m_nmints; i++)
        av__buf_appendf(b, "agentvault_token_mints_total{service=\"%s\"} %llu\n", m->m_mints[i].svc,
                        m->m_mints[i].mints);
    av__buf_append_str(b, "# HELP agentvault_token_mint_failures_total Failed mints (endpoint errors, unusable "
                          "answers).\n"
                          "# TYPE agentvault_token_mint_failures_total counter\n");
    for (size_t i = 0; i < m->m_nmints; i++)
        av__buf_appendf(b, "agentvault_token_mint_failures_total{service=\"%s\"} %llu\n", m->m_mints[i].svc,
                        m->m_mints[i].failures);
    if (g->nworkers) {
        av__buf_append_str(b, "# HELP agentvault_worker_connections_total Connections each worker accepted.\n"
                              "# TYPE agentvault_worker_connections_total counter\n");
        for (size_t i = 0; i < g->nworkers; i++)
            av__buf_appendf(b, "agentvault_worker_connections_total{worker=\"%zu\"} %llu\n", i,
                            g->worker_conns[i]);
    }
    av__buf_appendf(b, "# TYPE agentvault_tls_resumed_total counter\n"
                       "agentvault_tls_resumed_total{side=\"agent\"} %llu\n"
                       "agentvault_tls_resumed_total{side=\"upstream\"} %llu\n",
                    m->m_tls_resumed_agent, m->m_tls_resumed_upstream);
}
