/* av_policy.c - matching exchanges to services, and building the injected
 * credential (header value or rewritten query). Every buffer that held
 * secret bytes is wiped before it is freed.
 */
#include "av_policy.h"

#include <string.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "av_mem.h"
#include "av_url.h"

/* av__method_bit maps an exact (case-sensitive) method name to AV_M_*. */
unsigned av__method_bit(const char *method, size_t len)
{
    static const struct { const char *name; unsigned bit; } m[] = {
        {"GET", AV_M_GET}, {"HEAD", AV_M_HEAD}, {"POST", AV_M_POST}, {"PUT", AV_M_PUT},
        {"DELETE", AV_M_DELETE}, {"PATCH", AV_M_PATCH}, {"OPTIONS", AV_M_OPTIONS},
    };
    if (!method)
        return 0;
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
        if (strlen(m[i].name) == len && memcmp(m[i].name, method, len) == 0)
            return m[i].bit;
    return 0;
}

/* literal_prefix is the number of bytes before the first '*' of a glob. */
static size_t literal_prefix(const char *glob)
{
    return strcspn(glob, "*");
}

/* compare_specificity returns > 0 when |a| is more specific than |b|,
 * < 0 when less, 0 when equal (then declaration order decides). */
static int compare_specificity(const av_service *a, const av_service *b)
{
    if (!a->wildcard != !b->wildcard)
        return a->wildcard ? -1 : 1;
    if (!a->path_glob != !b->path_glob)
        return a->path_glob ? 1 : -1;
    if (a->path_glob) {
        size_t la = literal_prefix(a->path_glob), lb = literal_prefix(b->path_glob);
        if (la != lb)
            return la > lb ? 1 : -1;
        la = strlen(a->path_glob);
        lb = strlen(b->path_glob);
        if (la != lb)
            return la > lb ? 1 : -1;
    }
    if (!a->methods != !b->methods)
        return a->methods ? 1 : -1;
    return 0;
}

/* service_matches applies the scheme/port, host, path and method rules. */
static int service_matches(const av_service *s, int scheme_http, const char *host,
                           int host_kind, int port, unsigned mbit,
                           const char *path, size_t path_len)
{
    if (!s->host || !s->auth)
        return 0;
    if (!s->scheme_http != !scheme_http || s->port != port)
        return 0;
    if (s->wildcard) {
        if (host_kind != 0 || !av__host_match_pattern(s->host, host))
            return 0;
    } else if (strcmp(s->host, host) != 0) {
        return 0;
    }
    if (s->path_glob && (!path || !av__glob_match(s->path_glob, path, path_len)))
        return 0;
    if (s->methods && !(s->methods & mbit))
        return 0;
    return 1;
}

/* av__policy_match returns the most specific matching service or NULL. */
const av_service *av__policy_match(const av_config *cfg, int scheme_http,
                                   const char *host, int port,
                                   const char *method, size_t method_len,
                                   const char *path, size_t path_len)
{
    char h[AV_HOST_MAX + 1];
    if (!cfg || !host)
        return NULL;
    int kind = av__host_validate(host, strlen(host), h);
    if (kind < 0)
        return NULL; /* fail closed on anything not canonicalizable */
    if (path) {
        const char *q = memchr(path, '?', path_len);
        if (q)
            path_len = (size_t)(q - path);
    }
    unsigned mbit = av__method_bit(method, method_len);
    const av_service *best = NULL;
    for (size_t i = 0; i < cfg->nservices; i++) {
        const av_service *s = &cfg->services[i];
        if (!service_matches(s, scheme_http, h, kind, port, mbit, path, path_len))
            continue;
        if (!best || compare_specificity(s, best) > 0)
            best = s;
    }
    return best;
}

/* header_safe reports whether a secret can appear in a header value
 * verbatim: no control characters (CR/LF/NUL would split the header). */
static int header_safe(const av_secret *secret)
{
    const uint8_t *d = av__secret_data(secret);
    size_t n = av__secret_len(secret);
    for (size_t i = 0; i < n; i++)
        if ((d[i] < 0x20 && d[i] != '\t') || d[i] == 0x7f)
            return 0;
    return 1;
}

/* secret_from_wiped turns a scratch buffer into a secret, then wipes and
 * frees the buffer. */
static av_secret *secret_from_wiped(char *buf, size_t len, size_t cap)
{
    av_secret *s = av__secret_new(buf, len);
    av__wipe(buf, cap);
    av__free(buf);
    return s;
}

/* av__inject_header builds the header for a BEARER, BASIC or HEADER
 * service. Returns AV_ERR_INVALID (wrong kind, or a secret with control
 * characters for a verbatim header) or AV_ERR_NOMEM. */
int av__inject_header(const av_service *svc, const av_secret *secret,
                      const char **name_out, av_secret **value_out)
{
    if (!svc || !secret || !name_out || !value_out)
        return AV_ERR_INVALID;
    const uint8_t *sd = av__secret_data(secret);
    size_t sl = av__secret_len(secret);
    char *buf;
    size_t len = 0, cap;

    switch (svc->auth) {
    case AV_AUTH_BEARER:
        if (!header_safe(secret))
            return AV_ERR_INVALID;
        cap = 7 + sl;
        if (!(buf = av__malloc(cap)))
            return AV_ERR_NOMEM;
        memcpy(buf, "Bearer ", 7);
        memcpy(buf + 7, sd, sl);
        len = cap;
        *name_out = "Authorization";
        break;
    case AV_AUTH_BASIC: {
        if (!svc->auth_name)
            return AV_ERR_INVALID;
        size_t ul = strlen(svc->auth_name), rl = ul + 1 + sl;
        char *raw = av__malloc(rl);
        if (!raw)
            return AV_ERR_NOMEM;
        memcpy(raw, svc->auth_name, ul);
        raw[ul] = ':';
        memcpy(raw + ul + 1, sd, sl);
        cap = 6 + 4 * ((rl + 2) / 3);
        buf = av__malloc(cap);
        if (buf) {
            memcpy(buf, "Basic ", 6);
            len = 6 + av__b64_encode(raw, rl, 0, buf + 6);
        }
        av__wipe(raw, rl);
        av__free(raw);
        if (!buf)
            return AV_ERR_NOMEM;
        *name_out = "Authorization";
        break;
    }
    case AV_AUTH_HEADER: {
        if (!svc->auth_name || !svc->auth_template || !header_safe(secret))
            return AV_ERR_INVALID;
        const char *t = svc->auth_template;
        const char *mark = strstr(t, "{secret}");
        if (!mark)
            return AV_ERR_INVALID;
        size_t before = (size_t)(mark - t), after = strlen(mark + 8);
        cap = before + sl + after;
        if (!(buf = av__malloc(cap)))
            return AV_ERR_NOMEM;
        memcpy(buf, t, before);
        memcpy(buf + before, sd, sl);
        memcpy(buf + before + sl, mark + 8, after);
        len = cap;
        *name_out = svc->auth_name;
        break;
    }
    default:
        return AV_ERR_INVALID;
    }
    *value_out = secret_from_wiped(buf, len, cap);
    return *value_out ? AV_OK : AV_ERR_NOMEM;
}

/* name_matches compares a query parameter name, percent-decoded (invalid
 * escapes are taken literally), with |want| exactly. */
static int name_matches(const char *s, size_t n, const char *want)
{
    size_t w = 0, wl = strlen(want);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%' && i + 2 < n) {
            int hi = av__hex_value((unsigned char)s[i + 1]), lo = av__hex_value((unsigned char)s[i + 2]);
            if (hi >= 0 && lo >= 0) {
                c = (unsigned char)(hi << 4 | lo);
                i += 2;
            }
        }
        if (w >= wl || (unsigned char)want[w] != c)
            return 0;
        w++;
    }
    return w == wl;
}

/* av__inject_query rewrites an origin-form target for a QUERY service:
 * drops every agent copy of PARAM and appends PARAM=<encoded secret>.
 * NULL on allocation failure or for a service of another kind. */
av_secret *av__inject_query(const av_service *svc, const av_secret *secret,
                            const char *path, size_t path_len)
{
    if (!svc || svc->auth != AV_AUTH_QUERY || !svc->auth_name || !secret || (!path && path_len))
        return NULL;
    const char *q = path ? memchr(path, '?', path_len) : NULL;
    size_t base = q ? (size_t)(q - path) : path_len;
    size_t pl = strlen(svc->auth_name), sl = av__secret_len(secret);
    const uint8_t *sd = av__secret_data(secret);
    size_t cap = path_len + 2 + pl + 3 * sl;
    char *buf = av__malloc(cap);
    if (!buf)
        return NULL;
    size_t o = 0;
    if (base)
        memcpy(buf, path, base);
    o = base;
    char sep = '?';
    if (q) {
        size_t start = base + 1;
        for (size_t i = start; i <= path_len; i++) {
            if (i < path_len && path[i] != '&')
                continue;
            const char *seg = path + start;
            size_t segl = i - start;
            start = i + 1;
            if (segl == 0)
                continue;
            const char *eq = memchr(seg, '=', segl);
            size_t nl = eq ? (size_t)(eq - seg) : segl;
            if (name_matches(seg, nl, svc->auth_name))
                continue;
            buf[o++] = sep;
            sep = '&';
            memcpy(buf + o, seg, segl);
            o += segl;
        }
    }
    buf[o++] = sep;
    memcpy(buf + o, svc->auth_name, pl);
    o += pl;
    buf[o++] = '=';
    o += av__pct_encode(sd, sl, AV__PCT_UNRESERVED, AV__HEX_UPPER, buf + o);
    return secret_from_wiped(buf, o, cap);
}
