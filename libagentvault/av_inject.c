/* av_inject.c - credential in: placeholder surfaces and refusal, placeholder
 * replacement (header, path, query, JSON/form body), header or query
 * injection, the Accept-Encoding limit, bounded body collection, the wait
 * for an asynchronously resolved credential.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_exchange.h"

/* Where does the agent use the service's placeholder? Every use must be in
 * a surface the service declares (placeholder_in), else the request is
 * refused before anything is sent. Returns 0 or -1 (answered). */
int av__x_find_placeholders(av_exchange *x)
{
    const av_service *svc = x->svc;
    const char *ph = svc->placeholder;
    size_t pl = strlen(ph);
    const char *where = NULL;
    char what[160] = "";
    for (size_t i = 0; i < x->nrqf; i++)
        if (memmem(av__rq_ptr(x, x->rqf[i].vo), x->rqf[i].vl, ph, pl)) {
            x->ph_found |= AV_SURF_HEADER;
            if (!(svc->placeholder_in & AV_SURF_HEADER) && !where) {
                where = "header";
                snprintf(what, sizeof(what), "field %.*s", (int)(x->rqf[i].nl < 64 ? x->rqf[i].nl : 64),
                         av__rq_ptr(x, x->rqf[i].no));
            }
        }
    const char *t = av__rq_ptr(x, x->t_off);
    const char *q = memchr(t, '?', x->t_len);
    size_t path_len = q ? (size_t)(q - t) : x->t_len;
    if (memmem(t, path_len, ph, pl)) {
        x->ph_found |= AV_SURF_PATH;
        if (!(svc->placeholder_in & AV_SURF_PATH) && !where) {
            where = "path";
            snprintf(what, sizeof(what), "the path");
        }
    }
    if (q && memmem(q, x->t_len - path_len, ph, pl)) {
        x->ph_found |= AV_SURF_QUERY;
        if (!(svc->placeholder_in & AV_SURF_QUERY) && !where) {
            where = "query";
            snprintf(what, sizeof(what), "the query");
        }
    }
    if (where) {
        char m[400];
        snprintf(m, sizeof(m), "placeholder of service %s found in %s, but placeholder_in does not include %s",
                 svc->name, what, where);
        av__x_respond(x, 403, m, 0);
        return -1;
    }
    return 0;
}

/* A secret in an encoded form (av_enc): |enc| writes at most |grow| bytes
 * per input byte. The staging buffer is wiped. NULL when out of memory. */
static av_secret *secret_encoded(const av_secret *s, size_t grow, int json)
{
    const uint8_t *d = av__secret_data(s);
    size_t n = av__secret_len(s);
    char *buf = av__malloc(n * grow + 1);
    if (!buf)
        return NULL;
    size_t o = json ? av__json_escape(d, n, 0, buf) : av__pct_encode(d, n, AV__PCT_UNRESERVED, AV__HEX_UPPER, buf);
    av_secret *r = av__secret_new(buf, o);
    av__wipe(buf, n * grow + 1);
    av__free(buf);
    return r;
}

/* Percent-encode every byte of |s| outside RFC 3986 unreserved. */
static av_secret *pct_encode_secret(const av_secret *s)
{
    return secret_encoded(s, 3, 0);
}

/* Replace the placeholder in the stored request (declared surfaces only:
 * av__x_find_placeholders refused the rest). Returns 0, AV_ERR_INVALID (the
 * secret cannot go into a header) or AV_ERR_NOMEM / AV_ERR_LIMIT. */
static int x_replace_placeholders(av_exchange *x, const av_secret *secret)
{
    const char *ph = x->svc->placeholder;
    size_t pl = strlen(ph);
    int rc = 0;
    if (x->ph_found & AV_SURF_HEADER) {
        const uint8_t *d = av__secret_data(secret);
        for (size_t i = 0; i < av__secret_len(secret); i++)
            if (d[i] == '\r' || d[i] == '\n' || d[i] == 0)
                return AV_ERR_INVALID;
        for (size_t i = 0; i < x->nrqf && !rc; i++) {
            uint8_t *rep = NULL;
            size_t rl = 0;
            int r = av__subst_replace((const uint8_t *)av__rq_ptr(x, x->rqf[i].vo), x->rqf[i].vl, (const uint8_t *)ph,
                                      pl, d, av__secret_len(secret), AV_HEAD_MAX, &rep, &rl);
            if (r < 0)
                return r;
            if (r == 1) {
                rc = av__rq_put(x, (const char *)rep, rl, &x->rqf[i].vo);
                x->rqf[i].vl = (uint32_t)rl;
                av__wipe(rep, rl);
                av__free(rep);
            }
        }
    }
    if (!rc && (x->ph_found & (AV_SURF_PATH | AV_SURF_QUERY))) {
        av_secret *enc = pct_encode_secret(secret);
        if (!enc)
            return AV_ERR_NOMEM;
        uint8_t *rep = NULL;
        size_t rl = 0;
        int r = av__subst_replace((const uint8_t *)av__rq_ptr(x, x->t_off), x->t_len, (const uint8_t *)ph, pl,
                                  av__secret_data(enc), av__secret_len(enc), AV_HEAD_MAX, &rep, &rl);
        av__secret_free(enc);
        if (r < 0)
            return r;
        if (r == 1) {
            rc = av__rq_put(x, (const char *)rep, rl, &x->t_off);
            x->t_len = (uint32_t)rl;
            av__wipe(rep, rl);
            av__free(rep);
        }
    }
    return rc;
}

/* Responses are scrubbed, which works for gzip, deflate and identity
 * bodies only: offer the upstream nothing else (an agent asking for br or
 * zstd gets gzip/deflate or identity instead). */
static int x_limit_accept_encoding(av_exchange *x)
{
    for (size_t i = 0; i < x->nrqf; i++) {
        if (!(x->rqf[i].nl == 15 && strncasecmp(av__rq_ptr(x, x->rqf[i].no), "accept-encoding", 15) == 0))
            continue;
        const char *v = av__rq_ptr(x, x->rqf[i].vo);
        size_t vl = x->rqf[i].vl;
        int gz = memmem(v, vl, "gzip", 4) != NULL, df = memmem(v, vl, "deflate", 7) != NULL;
        const char *nv = gz && df ? "gzip, deflate" : gz ? "gzip" : df ? "deflate" : "identity";
        if (av__rq_put(x, nv, strlen(nv), &x->rqf[i].vo) != AV_OK)
            return -1;
        x->rqf[i].vl = (uint32_t)strlen(nv);
    }
    return 0;
}

/* The name of the field a service injects (NULL for query services). */
const char *av__inject_name_of(const av_service *svc)
{
    switch (svc->auth) {
    case AV_AUTH_BEARER:
    case AV_AUTH_BASIC:
        return "Authorization";
    case AV_AUTH_HEADER:
        return svc->auth_name;
    default:
        return NULL;
    }
}

/* The name of the field of a service's auth_alt form (NULL: none). */
const char *av__alt_name_of(const av_service *svc)
{
    switch (svc->auth_alt) {
    case AV_AUTH_BEARER:
    case AV_AUTH_BASIC:
        return "Authorization";
    case AV_AUTH_HEADER:
        return svc->auth_alt_name;
    default:
        return NULL;
    }
}

static void x_secret_ready(void *ud)
{
    av_exchange *x = ud;
    x->swait = NULL;
    x->secret_ready = 1;
    x->wake(x->wake_ud);
}

/* Resolve the service's credential and add it to the stored request, then
 * reach the upstream. A command: source may answer later: the exchange
 * then waits (x->swait) and av__x_step calls this again. Returns 0, or -1
 * after answering with an error. */
int av__x_inject(av_exchange *x)
{
    const av_env *env = x->env;
    const av_service *svc = x->svc;
    x->secret_ready = 0;
    if (!svc)
        return av__x_choose_upstream(x);
    av_secret *secret = NULL;
    char why[200];
    int rc = av__resolver_get_async(x->snap->resolver, svc->secret_ref, &secret, why, sizeof(why), x_secret_ready, x,
                                    &x->swait);
    if (rc == AV_ERR_AGAIN)
        return 0;
    if (rc) {
        char m[300];
        snprintf(m, sizeof(m), "credential for service %s unavailable: %s", svc->name, why);
        av__x_respond(x, 502, m, 0);
        return -1;
    }
    if (x->ph_found) {
        rc = x_replace_placeholders(x, secret);
        if (rc) {
            av__secret_free(secret);
            char m[200];
            snprintf(m, sizeof(m), rc == AV_ERR_INVALID
                                       ? "credential for service %s contains characters not allowed in a header"
                                       : "request too large after replacing the placeholder of service %s",
                     svc->name);
            av__x_respond(x, rc == AV_ERR_INVALID ? 502 : 431, m, 0);
            return -1;
        }
    }
    av_secret *inj_value = NULL, *inj_target = NULL;
    const char *inj_name = NULL;
    int irc = AV_OK;
    if (svc->auth == AV_AUTH_QUERY) {
        inj_target = av__inject_query(svc, secret, av__rq_ptr(x, x->t_off), x->t_len);
        irc = inj_target ? AV_OK : AV_ERR_NOMEM;
    } else if (x->inj_alt) {
        av_service alt = {.auth = svc->auth_alt, .auth_name = svc->auth_alt_name,
                          .auth_template = svc->auth_alt_template};
        irc = av__inject_header(&alt, secret, &inj_name, &inj_value);
    } else {
        irc = av__inject_header(svc, secret, &inj_name, &inj_value);
    }
    if (x->ws_frame)
        x->ws_secret = av__secret_ref(secret);
    if (av__secret_len(secret) <= AV_SCRUB_MAX_SECRET) {
        x->scrub_set = av__snap_scrub_set(x->snap, secret);
        if (x->scrub_set)
            x->scrub_secret = av__secret_ref(secret);
        else if (irc == AV_OK)
            irc = AV_ERR_NOMEM; /* fail closed: never a response without its scrubber */
    }
    if (x->body_buffer)
        x->ph_secret = av__secret_ref(secret);
    av__secret_free(secret);
    if (irc != AV_OK) {
        av__secret_free(inj_value);
        av__secret_free(inj_target);
        char m[200];
        snprintf(m, sizeof(m), irc == AV_ERR_INVALID
                                   ? "credential for service %s contains characters not allowed in a header"
                                   : "out of memory while injecting the credential for service %s",
                 svc->name);
        av__x_respond(x, irc == AV_ERR_INVALID ? 502 : 500, m, 0);
        return -1;
    }
    if (inj_target) {
        rc = av__rq_put(x, (const char *)av__secret_data(inj_target), av__secret_len(inj_target), &x->t_off);
        x->t_len = (uint32_t)av__secret_len(inj_target);
    } else if (inj_value) {
        rc = av__rq_add(x, inj_name, strlen(inj_name), (const char *)av__secret_data(inj_value), av__secret_len(inj_value));
    }
    av__secret_free(inj_value);
    av__secret_free(inj_target);
    if (rc) {
        av__x_respond(x, 431, "request header block too large after rewriting", 0);
        return -1;
    }
    x->injected = 1;
    env->metrics->m_injected++;
    if (x->scrub_secret && x_limit_accept_encoding(x) != 0) {
        av__x_respond(x, 431, "request header block too large after rewriting", 0);
        return -1;
    }
    return av__x_choose_upstream(x);
}

/* Whether |f| names a field the service's credential travels in (its
 * header form or its auth_alt form): agent copies never reach the origin. */
int av__x_is_credential_field(const av_exchange *x, const av_h1_field *f)
{
    if (!x->svc)
        return 0;
    const char *main = av__inject_name_of(x->svc), *alt = av__alt_name_of(x->svc);
    return (main && av__h1_name_eq(f, main)) || (alt && av__h1_name_eq(f, alt));
}

/* JSON-escape |s| for use inside a JSON string ('"', '\\' and controls
 * below 0x20; everything else as is). */
static av_secret *json_escape_secret(const av_secret *s)
{
    return secret_encoded(s, 6, 1);
}

/* Collect a JSON or form request body (bounded), then check it for the
 * service's placeholder: replaced when the service declares the body
 * surface, refused (403) otherwise. Nothing goes upstream before this is
 * done. Returns progress; the exchange may be answered. */
/* The collection sink: all the agent has, or a 413 when it would not fit
 * in the (bounded) body buffer. */
static size_t collect_room(av_exchange *x)
{
    (void)x;
    return SIZE_MAX; /* everything decoded so far; collect_write bounds it */
}

static int collect_write(av_exchange *x, const uint8_t *data, size_t n)
{
    if (n > av__buf_room(&x->bbuf)) {
        av__x_refuse(x, 413, "request body too large to check for the placeholder (8 MiB)");
        return -1;
    }
    if (av__buf_append(&x->bbuf, data, n) != AV_OK) {
        av__x_refuse(x, 500, "out of memory"); /* never forward a short body */
        return -1;
    }
    return 0;
}

static const av_body_sink collect_sink = {collect_room, collect_write};

int av__x_collect_body(av_exchange *x)
{
    int progress = x->agent->send_continue(x);
    if (progress < 0) {
        av__x_refuse(x, 500, "out of memory"); /* the agent would wait for the 100 */
        return 1;
    }
    int moved = x->agent->pump_body(x, &collect_sink);
    if (moved < 0)
        return 1; /* answered */
    progress |= moved;
    if (!x->req_done && x->agent->body_aborted(x)) {
        x->end = AV_END_CLIENT_ABORT;
        av__x_fail(x, 400, "the agent closed the connection in the middle of the request body");
        return 1;
    }
    if (!x->req_done)
        return progress;
    const av_service *svc = x->svc;
    const char *ph = svc->placeholder;
    size_t pl = strlen(ph);
    if (x->bbuf.len && memmem(av__buf_head(&x->bbuf), x->bbuf.len, ph, pl)) {
        if (!(svc->placeholder_in & AV_SURF_BODY)) {
            char m[300];
            snprintf(m, sizeof(m), "placeholder of service %s found in the body, but placeholder_in does not include body",
                     svc->name);
            av__x_refuse(x, 403, m);
            return 1;
        }
        av_secret *enc = x->body_buffer == 1 ? json_escape_secret(x->ph_secret) : pct_encode_secret(x->ph_secret);
        uint8_t *rep = NULL;
        size_t rl = 0;
        int r = enc ? av__subst_replace(av__buf_head(&x->bbuf), x->bbuf.len, (const uint8_t *)ph, pl,
                                        av__secret_data(enc), av__secret_len(enc), X_BODY_BUFFER_MAX * 2, &rep, &rl)
                    : AV_ERR_NOMEM;
        av__secret_free(enc);
        if (r < 0) {
            av__x_refuse(x, r == AV_ERR_LIMIT ? 413 : 500,
                     r == AV_ERR_LIMIT ? "request body too large after replacing the placeholder" : "out of memory");
            return 1;
        }
        av__buf_free_wipe(&x->bbuf);
        av__buf_init(&x->bbuf, rl + 1);
        r = av__buf_append(&x->bbuf, rep, rl);
        av__wipe(rep, rl);
        av__free(rep);
        if (r != AV_OK) {
            av__x_refuse(x, 500, "out of memory");
            return 1;
        }
    }
    x->req_framing = RB_LENGTH;
    x->req_len = x->bbuf.len;
    x->req_out_chunked = 0;
    x->body_collected = 1;
    return 1;
}
