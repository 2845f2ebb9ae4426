/* av_req.c - the stored request: method, target and fields as offsets into one
 * wiped buffer (x->rq), and which agent fields are never forwarded.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_exchange.h"

const char *av__rq_ptr(const av_exchange *x, uint32_t off)
{
    return (const char *)av__buf_head(&x->rq) + off;
}

int av__rq_put(av_exchange *x, const char *p, size_t n, uint32_t *off)
{
    *off = (uint32_t)x->rq.len;
    return n ? av__buf_append(&x->rq, p, n) : AV_OK;
}

int av__rq_add(av_exchange *x, const char *name, size_t nl, const char *value, size_t vl)
{
    if (x->nrqf >= X_RQ_FIELDS)
        return AV_ERR_LIMIT;
    rq_field *f = &x->rqf[x->nrqf];
    if (av__rq_put(x, name, nl, &f->no) || av__rq_put(x, value, vl, &f->vo))
        return AV_ERR_LIMIT;
    f->nl = (uint32_t)nl;
    f->vl = (uint32_t)vl;
    x->nrqf++;
    return AV_OK;
}

/* Views of the stored request fields. */
size_t av__rq_fields(const av_exchange *x, av_h1_field *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < x->nrqf && n < max; i++, n++) {
        out[n].name = av__rq_ptr(x, x->rqf[i].no);
        out[n].name_len = x->rqf[i].nl;
        out[n].value = av__rq_ptr(x, x->rqf[i].vo);
        out[n].value_len = x->rqf[i].vl;
    }
    return n;
}

/* Is this agent field one we never forward upstream? */
int av__x_skip_request_field(const av_req_in *in, const av_h1_field *f, const char *inject_name,
                             const char *alt_name, int ws_parsed)
{
    if (ws_parsed && av__h1_name_eq(f, "sec-websocket-extensions"))
        return 1; /* frame and scrub modes read frames: the proxy makes the offer */
    if (av__h1_is_hop_by_hop(f, in->fields, in->nfields))
        return 1;
    if (av__h1_name_eq(f, "host") || av__h1_name_eq(f, "content-length") ||
        av__h1_name_eq(f, "transfer-encoding") || av__h1_name_eq(f, "proxy-authorization") ||
        av__h1_name_eq(f, "proxy-connection") || av__h1_name_eq(f, "x-agentvault-token"))
        return 1; /* ours: never forwarded */
    if (in->ws && !in->ws_key && av__h1_name_eq(f, "sec-websocket-key"))
        return 1; /* extended CONNECT has none; we make our own */
    if (inject_name && av__h1_name_eq(f, inject_name))
        return 1;
    if (alt_name && av__h1_name_eq(f, alt_name))
        return 1; /* the other credential header: its placeholder never reaches the origin */
    return 0;
}

void av__rq_remove(av_exchange *x, const char *name)
{
    size_t nl = strlen(name), o = 0;
    for (size_t i = 0; i < x->nrqf; i++) {
        if (x->rqf[i].nl == nl && strncasecmp(av__rq_ptr(x, x->rqf[i].no), name, nl) == 0)
            continue; /* its bytes stay in x->rq (wiped with it) */
        x->rqf[o++] = x->rqf[i];
    }
    x->nrqf = o;
}
