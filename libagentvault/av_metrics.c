/* av_metrics.c - the counters behind /metrics (see av_metrics.h). */
#include "av_metrics.h"

#include <stdio.h>
#include <string.h>

#include "av_mem.h"

void av__metrics_count_exchange(av_metrics *m, const char *svc, int status)
{
    if (!svc)
        svc = "";
    for (size_t i = 0; i < m->nmx; i++)
        if (m->mx[i].status == status && strcmp(m->mx[i].svc, svc) == 0) {
            m->mx[i].n++;
            return;
        }
    if (m->nmx >= 4096)
        return; /* bounded: statuses are 100..999, services are configured */
    if (m->nmx == m->capmx) {
        size_t cap = m->capmx ? m->capmx * 2 : 32;
        av_metric_x *n = av__realloc(m->mx, cap * sizeof(*n));
        if (!n)
            return;
        m->mx = n;
        m->capmx = cap;
    }
    snprintf(m->mx[m->nmx].svc, sizeof(m->mx[m->nmx].svc), "%s", svc);
    m->mx[m->nmx].status = status;
    m->mx[m->nmx].n = 1;
    m->nmx++;
}

void av__metrics_cleanup(av_metrics *m)
{
    av__free(m->mx);
    m->mx = NULL;
    m->nmx = m->capmx = 0;
}
