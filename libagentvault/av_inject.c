/* av_inject.c - credential in: placeholder surfaces and refusal, placeholder
 * replacement (header, path, query, JSON/form body), header or query
 * injection, the Accept-Encoding limit, bounded body collection, the wait
 * for an asynchronously resolved credential.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_exchange.h"
#include "av_mint.h"
#include "av_sigv4.h"

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
    case AV_AUTH_AWS_SIGV4:
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

static void x_mint_ready(void *ud)
{
    av_exchange *x = ud;
    x->mwait = NULL;
    x->secret_ready = 1;
    x->wake(x->wake_ud);
}

/* ---- auth = aws-sigv4 ---------------------------------------------------
 *
 * The agent signs with any key pair (its SDK needs one; the proxy never
 * gives it the real one): every request to an aws-sigv4 service is
 * re-signed, whatever key id its Credential= names. Region and signing
 * name come from that scope (checked against the service's, when it names
 * them); the date is the proxy's clock. The agent's Authorization,
 * X-Amz-Date and X-Amz-Security-Token never reach the origin. */

static int aws_refuse_at_begin(av_exchange *x, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int aws_refuse_at_begin(av_exchange *x, int status, const char *fmt, ...)
{
    char m[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof(m), fmt, ap);
    va_end(ap);
    av__x_respond(x, status, m, 0);
    return -1;
}

/* The single field |name| of |in|: NULL when absent; *dup set when repeated. */
static const av_h1_field *aws_field(const av_req_in *in, const char *name, int *dup)
{
    const av_h1_field *f = NULL;
    for (size_t i = 0; i < in->nfields; i++)
        if (av__h1_name_eq(&in->fields[i], name)) {
            if (f)
                *dup = 1;
            f = &in->fields[i];
        }
    return f;
}

static int value_is(const av_h1_field *f, const char *s)
{
    return f->value_len == strlen(s) && memcmp(f->value, s, f->value_len) == 0;
}

int av__x_aws_admit(av_exchange *x, const av_req_in *in)
{
    const av_service *svc = x->svc;
    const char *q = memchr(in->target, '?', in->target_len);
    if (q && av__sigv4_query_is_presigned(q + 1, in->target_len - (size_t)(q - in->target) - 1))
        return aws_refuse_at_begin(x, 403,
                                   "service %s (aws-sigv4): presigned URLs (query authentication) are not supported; "
                                   "sign with an Authorization header and the proxy re-signs it",
                                   svc->name);
    if (in->ws)
        return aws_refuse_at_begin(x, 400, "service %s (aws-sigv4): WebSocket requests cannot be re-signed", svc->name);
    int dup = 0;
    const av_h1_field *a = aws_field(in, "authorization", &dup);
    if (!a)
        return aws_refuse_at_begin(x, 403,
                                   "service %s (aws-sigv4): the request has no Authorization; sign it with any "
                                   "(dummy) AWS key and the proxy re-signs it",
                                   svc->name);
    if (dup)
        return aws_refuse_at_begin(x, 400, "service %s (aws-sigv4): more than one Authorization field", svc->name);
    av_sigv4_auth au;
    const char *why = "";
    int rc = av__sigv4_parse_auth(a->value, a->value_len, &au, &why);
    if (rc == AV_SIGV4_SIGV4A)
        return aws_refuse_at_begin(x, 403,
                                   "service %s (aws-sigv4): SigV4A (AWS4-ECDSA-P256-SHA256) is not supported; use "
                                   "a regional endpoint signed with AWS4-HMAC-SHA256",
                                   svc->name);
    if (rc == AV_SIGV4_NOT_SIGV4)
        return aws_refuse_at_begin(x, 403,
                                   "service %s (aws-sigv4): the Authorization is not AWS4-HMAC-SHA256; sign with "
                                   "SigV4 and any (dummy) key",
                                   svc->name);
    if (rc != AV_OK)
        return aws_refuse_at_begin(x, 400, "service %s (aws-sigv4): malformed Authorization: %s", svc->name, why);
    if (svc->aws_region && strcmp(svc->aws_region, au.region) != 0)
        return aws_refuse_at_begin(x, 403, "service %s (aws-sigv4) allows region %s, not %s", svc->name,
                                   svc->aws_region, au.region);
    if (svc->aws_service && strcmp(svc->aws_service, au.service) != 0)
        return aws_refuse_at_begin(x, 403, "service %s (aws-sigv4) allows signing name %s, not %s", svc->name,
                                   svc->aws_service, au.service);
    dup = 0;
    const av_h1_field *h = aws_field(in, "x-amz-content-sha256", &dup);
    if (dup)
        return aws_refuse_at_begin(x, 400, "service %s (aws-sigv4): more than one x-amz-content-sha256 field",
                                   svc->name);
    x->aws_payload[0] = '\0';
    if (h) {
        if (av__sigv4_is_hex64(h->value, h->value_len) || value_is(h, "UNSIGNED-PAYLOAD") ||
            value_is(h, "STREAMING-UNSIGNED-PAYLOAD-TRAILER")) {
            copy_str(x->aws_payload, sizeof(x->aws_payload), h->value, h->value_len);
        } else if (value_is(h, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")) {
            /* signed chunks: each signature chains off the head's, so the
             * body is collected (bounded) and its chunks re-signed */
            if (in->framing == RB_LENGTH && in->length > svc->aws_body_max)
                return aws_refuse_at_begin(x, 413,
                                           "service %s (aws-sigv4): signed aws-chunked body of %llu bytes is over "
                                           "aws_body_max (%zu bytes); the proxy re-signs its chunks",
                                           svc->name, (unsigned long long)in->length, svc->aws_body_max);
            copy_str(x->aws_payload, sizeof(x->aws_payload), h->value, h->value_len);
            x->body_buffer = 4;
            av__buf_init(&x->bbuf, svc->aws_body_max);
        } else if (h->value_len >= 34 && memcmp(h->value, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", 34) == 0) {
            return aws_refuse_at_begin(x, 403,
                                       "service %s (aws-sigv4): signed aws-chunked uploads with a signed trailer "
                                       "(STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER) are not supported; send "
                                       "STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, "
                                       "UNSIGNED-PAYLOAD or the body's hash",
                                       svc->name);
        } else if (h->value_len >= 15 && memcmp(h->value, "STREAMING-AWS4-", 15) == 0) {
            return aws_refuse_at_begin(x, 403, "service %s (aws-sigv4): SigV4A aws-chunked uploads are not supported",
                                       svc->name);
        } else {
            return aws_refuse_at_begin(x, 400,
                                       "service %s (aws-sigv4): x-amz-content-sha256 is neither a lower-case hex "
                                       "SHA-256 nor a known marker",
                                       svc->name);
        }
    } else if (in->framing != RB_NONE) {
        /* the hash is signed but not sent: collect the body and hash it */
        if (in->framing == RB_LENGTH && in->length > svc->aws_body_max) {
            char m[400];
            snprintf(m, sizeof(m),
                     "service %s (aws-sigv4): request body of %llu bytes is over aws_body_max (%zu bytes); the proxy "
                     "hashes bodies sent without x-amz-content-sha256",
                     svc->name, (unsigned long long)in->length, svc->aws_body_max);
            av__x_respond(x, 413, m, 0);
            return -1;
        }
        x->body_buffer = 3;
        av__buf_init(&x->bbuf, svc->aws_body_max);
    }
    copy_str(x->aws_region, sizeof(x->aws_region), au.region, strlen(au.region));
    copy_str(x->aws_service, sizeof(x->aws_service), au.service, strlen(au.service));
    if (av__rq_put(x, au.signed_headers, au.signed_headers_len, &x->aws_sh_off) != AV_OK) {
        av__x_respond(x, 431, "request header block too large after rewriting", 0);
        return -1;
    }
    x->aws_sh_len = (uint32_t)au.signed_headers_len;
    av__rq_remove(x, "x-amz-date");
    av__rq_remove(x, "x-amz-security-token");
    return 0;
}

/* Fields never signed even when the agent's list names them: the proxy
 * or the link may change or drop them (botocore does not sign them). */
static int aws_unsignable(const char *n, size_t nl)
{
    static const char *const names[] = {
        "expect",  "te",      "connection",          "keep-alive",      "transfer-encoding",
        "upgrade", "trailer", "proxy-authorization", "proxy-connection"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (nl == strlen(names[i]) && strncasecmp(n, names[i], nl) == 0)
            return 1;
    return 0;
}

/* A credential value that can go into a header: visible ASCII. */
static int aws_header_safe(const av_secret *s, size_t max)
{
    const uint8_t *d = av__secret_data(s);
    size_t n = av__secret_len(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (d[i] <= 0x20 || d[i] >= 0x7f)
            return 0;
    return 1;
}

/* Signing failed: nothing went upstream yet. */
static void aws_sign_error(av_exchange *x, int status, const char *why)
{
    if (x->body_buffer)
        av__x_refuse(x, status, why);
    else
        av__x_respond(x, status, why, 0);
}

int av__x_aws_sign(av_exchange *x)
{
    const av_service *svc = x->svc;
    const av_env *env = x->env;
    char m[300];
    if (!aws_header_safe(x->aws_akid, AV_SIGV4_AKID_MAX) ||
        (x->aws_token && !aws_header_safe(x->aws_token, AV_HEAD_MAX / 2))) {
        snprintf(m, sizeof(m), "access key id or session token of service %s is empty, too long or not visible ASCII",
                 svc->name);
        aws_sign_error(x, 502, m);
        return -1;
    }
    const uint8_t *ak = av__secret_data(x->aws_akid);
    for (size_t i = 0; i < av__secret_len(x->aws_akid); i++)
        if (ak[i] == '/' || ak[i] == ',') {
            snprintf(m, sizeof(m), "access key id of service %s contains '/' or ','", svc->name);
            aws_sign_error(x, 502, m);
            return -1;
        }
    struct timespec ts;
    struct tm tm;
    env->now(env->clock_ud, &ts);
    time_t secs = ts.tv_sec;
    char date[32];
    if (!gmtime_r(&secs, &tm) || strftime(date, sizeof(date), "%Y%m%dT%H%M%SZ", &tm) != 16) {
        aws_sign_error(x, 500, "cannot format the signing date");
        return -1;
    }
    int rc = av__rq_add(x, "X-Amz-Date", 10, date, 16);
    if (!rc && x->aws_token)
        rc = av__rq_add(x, "X-Amz-Security-Token", 20, (const char *)av__secret_data(x->aws_token),
                        av__secret_len(x->aws_token));
    if (rc) {
        aws_sign_error(x, 431, "request header block too large after rewriting");
        return -1;
    }
    char phash[AV_SIGV4_HEX_LEN + 1];
    const char *payload = x->aws_payload;
    if (!payload[0]) {
        rc = av__sigv4_hex_sha256(x->bbuf.len ? (const void *)av__buf_head(&x->bbuf) : "", x->bbuf.len, phash);
        payload = phash;
    }
    /* what is signed: host as sent, the agent's signed fields still sent,
     * every x-amz-* field sent, and Content-Length when the agent signed it */
    av_h1_field fs[X_RQ_FIELDS + 2];
    size_t n = 0;
    fs[n++] = (av_h1_field){"host", 4, x->hostval, strlen(x->hostval)};
    const char *sh = av__rq_ptr(x, x->aws_sh_off);
    for (size_t i = 0; i < x->nrqf; i++) {
        const char *fn = av__rq_ptr(x, x->rqf[i].no);
        size_t fl = x->rqf[i].nl;
        int amz = fl > 6 && strncasecmp(fn, "x-amz-", 6) == 0;
        if (amz || (av__sigv4_list_has(sh, x->aws_sh_len, fn, fl) && !aws_unsignable(fn, fl)))
            fs[n++] = (av_h1_field){fn, fl, av__rq_ptr(x, x->rqf[i].vo), x->rqf[i].vl};
    }
    char cl[32];
    if (x->req_framing == RB_LENGTH && av__sigv4_list_has(sh, x->aws_sh_len, "content-length", 14)) {
        snprintf(cl, sizeof(cl), "%llu", (unsigned long long)x->req_len);
        fs[n++] = (av_h1_field){"content-length", 14, cl, strlen(cl)};
    }
    av_sigv4_req r = {av__rq_ptr(x, x->m_off), x->m_len,      av__rq_ptr(x, x->t_off), x->t_len, fs, n, payload, date,
                      x->aws_region,           x->aws_service};
    av_buf shl;
    av__buf_init(&shl, AV_HEAD_MAX);
    char sig[AV_SIGV4_HEX_LEN + 1];
    uint8_t key[32];
    rc = rc ? rc
            : av__sigv4_sign_key(&r, av__secret_data(x->aws_secret), av__secret_len(x->aws_secret), &shl, sig, key);
    if (!rc && x->body_buffer == 4) {
        /* the chunks chain off the head's signature */
        rc = x->bbuf.len ? av__sigv4_resign_chunks(x->bbuf.data + x->bbuf.off, x->bbuf.len, key, date, x->aws_region,
                                                   x->aws_service, sig)
                         : AV_ERR_PARSE;
        if (rc == AV_ERR_PARSE) {
            av__wipe(key, sizeof(key));
            av__buf_free(&shl);
            snprintf(m, sizeof(m), "service %s (aws-sigv4): the body is not a well-formed signed aws-chunked body",
                     svc->name);
            aws_sign_error(x, 400, m);
            return -1;
        }
    }
    av__wipe(key, sizeof(key));
    if (rc) {
        av__buf_free(&shl);
        snprintf(m, sizeof(m),
                 rc == AV_ERR_PARSE   ? "service %s (aws-sigv4): the query has a malformed percent escape"
                 : rc == AV_ERR_LIMIT ? "service %s (aws-sigv4): request too large to sign"
                                      : "service %s (aws-sigv4): cannot sign the request",
                 svc->name);
        aws_sign_error(x, rc == AV_ERR_PARSE ? 400 : rc == AV_ERR_LIMIT ? 431 : 500, m);
        return -1;
    }
    av_buf v;
    av__buf_init(&v, AV_HEAD_MAX);
    rc = av__buf_append_str(&v, "AWS4-HMAC-SHA256 Credential=");
    rc = rc ? rc : av__buf_append(&v, ak, av__secret_len(x->aws_akid));
    rc = rc ? rc : av__buf_appendf(&v, "/%.8s/%s/%s/aws4_request, SignedHeaders=", date, x->aws_region, x->aws_service);
    rc = rc ? rc : av__buf_append(&v, av__buf_head(&shl), shl.len);
    rc = rc ? rc : av__buf_appendf(&v, ", Signature=%s", sig);
    rc = rc ? rc : av__rq_add(x, "Authorization", 13, (const char *)av__buf_head(&v), v.len);
    av__buf_free(&shl);
    av__buf_free_wipe(&v);
    if (rc) {
        aws_sign_error(x, 431, "request header block too large after rewriting");
        return -1;
    }
    x->aws_signed = 1;
    x->injected = 1;
    env->metrics->m_injected++;
    return 0;
}

static int x_aws_resolve(av_exchange *x, const char *ref, av_secret **slot, const char *what)
{
    if (*slot || !ref)
        return AV_OK;
    char why[200] = "";
    int rc = av__resolver_get_async(x->snap->resolver, ref, slot, why, sizeof(why), x_secret_ready, x, &x->swait);
    if (rc == AV_ERR_AGAIN || rc == AV_OK)
        return rc;
    *slot = NULL;
    char m[300];
    snprintf(m, sizeof(m), "%s for service %s unavailable: %s", what, x->svc->name,
             why[0] ? why : av_strerror(rc));
    av__x_respond(x, 502, m, 0);
    return rc;
}

/* Resolve the key pair (and session token), set up the scrubber, then
 * sign now, or once the body is hashed (body_buffer 3). */
static int x_aws_inject(av_exchange *x)
{
    const av_service *svc = x->svc;
    int rc = x_aws_resolve(x, svc->secret_ref, &x->aws_secret, "secret access key");
    rc = rc ? rc : x_aws_resolve(x, svc->aws_akid_ref, &x->aws_akid, "access key id");
    rc = rc ? rc : x_aws_resolve(x, svc->aws_token_ref, &x->aws_token, "session token");
    if (rc == AV_ERR_AGAIN)
        return 0;
    if (rc)
        return -1;
    /* the secret key and the session token never reach the agent */
    const av_secret *secs[2] = {x->aws_secret, x->aws_token};
    size_t ns = x->aws_token ? 2 : 1;
    for (size_t i = 0; i < ns; i++)
        if (av__secret_len(secs[i]) > AV_SCRUB_MAX_SECRET) {
            char m[200];
            snprintf(m, sizeof(m), "credential of service %s is too long to be scrubbed from responses", svc->name);
            av__x_respond(x, 502, m, 0);
            return -1;
        }
    if (ns == 1)
        x->scrub_set = av__snap_scrub_set(x->snap, x->aws_secret);
    else if (av__scrub_set_new(&x->scrub_set, secs, ns) != AV_OK)
        x->scrub_set = NULL;
    if (!x->scrub_set) {
        av__x_respond(x, 500, "out of memory while injecting the credential", 0);
        return -1;
    }
    x->scrub_secret = av__secret_ref(x->aws_secret);
    if (x_limit_accept_encoding(x) != 0) {
        av__x_respond(x, 431, "request header block too large after rewriting", 0);
        return -1;
    }
    if (!x->body_buffer && av__x_aws_sign(x) != 0)
        return -1;
    return av__x_choose_upstream(x);
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
    if (svc->auth == AV_AUTH_AWS_SIGV4)
        return x_aws_inject(x);
    av_secret *secret = NULL;
    char why[200] = "";
    int rc;
    if (svc->mint) {
        /* a minted access token: cached, or minted once for everyone
         * asking (the exchange waits like for a command: secret) */
        if (!x->snap->mint) {
            if (av__mint_new(&x->snap->mint, env->loop, x->snap->cfg, x->snap->resolver) != AV_OK) {
                av__x_respond(x, 500, "out of memory while minting the credential", 0);
                return -1;
            }
            x->snap->mint_free = av__mint_free;
            /* one mint for every worker of this snapshot (av_mint.h) */
            void *sh = av__snap_mint_share(x->snap, av__mint_share_new, av__mint_share_free);
            if (!sh || av__mint_join(x->snap->mint, sh) != AV_OK) {
                av__x_respond(x, 500, "out of memory while minting the credential", 0);
                return -1;
            }
        }
        rc = av__mint_get_async(x->snap->mint, env->pool, (size_t)(svc - x->snap->cfg->services), &secret, why,
                                sizeof(why), x_mint_ready, x, &x->mwait);
        if (rc == AV_ERR_AGAIN) {
            x->mint_how = AV_MINT_HOW_MINTED;
            return 0;
        }
        if (rc == AV_OK) {
            if (!x->mint_how)
                x->mint_how = AV_MINT_HOW_CACHED;
            av__secret_free(x->mint_token);
            x->mint_token = av__secret_ref(secret);
        }
    } else {
        rc = av__resolver_get_async(x->snap->resolver, svc->secret_ref, &secret, why, sizeof(why), x_secret_ready, x,
                                    &x->swait);
    }
    if (rc == AV_ERR_AGAIN)
        return 0;
    if (rc) {
        char m[300];
        snprintf(m, sizeof(m), "credential for service %s unavailable: %s", svc->name,
                 why[0] ? why : av_strerror(rc)); /* out of memory gives no reason */
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
    if (n > av__buf_room(&x->bbuf) && x->body_buffer >= 3) {
        char m[300];
        snprintf(m, sizeof(m),
                 "service %s (aws-sigv4): request body over aws_body_max (%zu bytes); the proxy hashes bodies sent "
                 "without x-amz-content-sha256 and re-signs signed aws-chunked ones",
                 x->svc->name, x->svc->aws_body_max);
        av__x_refuse(x, 413, m);
        return -1;
    }
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

int av__x_take_body(av_exchange *x, const av_body_sink *sink)
{
    int progress = x->agent->send_continue(x);
    if (progress < 0) {
        av__x_refuse(x, 500, "out of memory"); /* the agent would wait for the 100 */
        return -1;
    }
    int moved = x->agent->pump_body(x, sink);
    if (moved < 0)
        return -1; /* answered */
    progress |= moved;
    if (!x->req_done && x->agent->body_aborted(x)) {
        x->end = AV_END_CLIENT_ABORT;
        av__x_fail(x, 400, "the agent closed the connection in the middle of the request body");
        return -1;
    }
    return progress;
}

int av__x_collect_body(av_exchange *x)
{
    if (x->dbody.len) {
        /* decide_body: the bytes the decision saw come first */
        if (collect_write(x, av__buf_head(&x->dbody), x->dbody.len) != 0)
            return 1; /* answered */
        av__buf_free_wipe(&x->dbody);
    }
    int progress = av__x_take_body(x, &collect_sink);
    if (progress < 0)
        return 1; /* answered */
    if (!x->req_done)
        return progress;
    if (x->body_buffer >= 3) {
        /* aws-sigv4: hashed (or its chunks re-signed) and signed; sent
         * with a Content-Length */
        x->req_framing = RB_LENGTH;
        x->req_len = x->bbuf.len;
        x->req_out_chunked = 0;
        if (av__x_aws_sign(x) != 0)
            return 1;
        x->body_collected = 1;
        return 1;
    }
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
