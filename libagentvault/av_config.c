/* av_config.c - the configuration object: the value parsers the reader and
 * the setters share (listen, resolve, seconds, PSL-checked host patterns),
 * defaults, clear, deep copy, the dump the round-trip test compares, the
 * programmatic setters (av_config_add_section through the reader),
 * validation and accessors. The INI reader and its key tables are in
 * av_config_ini.c.
 */
#include "av_config_int.h"

#include <libpsl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "av_buf.h"
#include "av_enc.h"
#include "av_limits.h"
#include "av_mem.h"
#include "av_url.h"

#define TIMEOUT_MAX 86400.0

/* ---- helpers shared with the reader ------------------------------------ */

/* av__config_set_error formats cfg->error. */
void av__config_set_error(av_config *cfg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cfg->error, sizeof(cfg->error), fmt, ap);
    va_end(ap);
}

/* av__config_grow makes room for one more element in a dynamic array. */
int av__config_grow(void **arr, size_t n, size_t elem)
{
    void *np = av__realloc(*arr, (n + 1) * elem);
    if (!np)
        return AV_ERR_NOMEM;
    *arr = np;
    memset((char *)np + n * elem, 0, elem);
    return AV_OK;
}

/* ---- value parsers shared by the reader and the setters ---------------- */

/* av__config_normalize_listen turns "host:port" (IP literal or localhost; port may be
 * 0) into its canonical text in |out|. */
int av__config_normalize_listen(const char *s, size_t n, char *out, size_t outlen)
{
    char host[AV_HOST_MAX + 1];
    const char *h, *port;
    size_t hl, pl;
    int v6 = 0;
    long pv;

    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close || (size_t)(close - s) + 1 >= n || close[1] != ':')
            return AV_ERR_INVALID;
        h = s + 1;
        hl = (size_t)(close - h);
        port = close + 2;
        pl = n - (size_t)(port - s);
        v6 = 1;
    } else {
        const char *colon = memchr(s, ':', n);
        if (!colon || memchr(colon + 1, ':', n - (size_t)(colon + 1 - s)))
            return AV_ERR_INVALID;
        h = s;
        hl = (size_t)(colon - s);
        port = colon + 1;
        pl = n - hl - 1;
    }
    if (parse_uint(port, pl, 5, &pv) != AV_OK || pv > 65535)
        return AV_ERR_INVALID;
    if (!v6 && word_eq(h, hl, "localhost")) {
        snprintf(out, outlen, "localhost:%ld", pv);
        return AV_OK;
    }
    int kind = av__host_validate(h, hl, host);
    if (kind != (v6 ? 6 : 4))
        return AV_ERR_INVALID;
    int w = v6 ? snprintf(out, outlen, "[%s]:%ld", host, pv)
               : snprintf(out, outlen, "%s:%ld", host, pv);
    return (w < 0 || (size_t)w >= outlen) ? AV_ERR_INVALID : AV_OK;
}

/* parse_port_range parses 1..65535. */
static int parse_port_range(const char *s, size_t n, int *out)
{
    long v;
    if (parse_uint(s, n, 5, &v) != AV_OK || v < 1 || v > 65535)
        return AV_ERR_INVALID;
    *out = (int)v;
    return AV_OK;
}

/* av__config_parse_resolve parses curl's "HOST:PORT:ADDR" into |out| (strings
 * allocated). ADDR is IPv4, [IPv6] or a bare IPv6 literal. Extension: an
 * optional ":DIALPORT" after an IPv4 or bracketed IPv6 ADDR. */
int av__config_parse_resolve(const char *s, size_t n, av_resolve_cfg *out)
{
    char host[AV_HOST_MAX + 1], addr[AV_HOST_MAX + 1];
    const char *c1 = memchr(s, ':', n);
    if (!c1)
        return AV_ERR_INVALID;
    const char *rest = c1 + 1;
    size_t rl = n - (size_t)(rest - s);
    const char *c2 = memchr(rest, ':', rl);
    if (!c2)
        return AV_ERR_INVALID;
    if (av__host_validate(s, (size_t)(c1 - s), host) != 0)
        return AV_ERR_INVALID;
    int port, dial_port = 0;
    if (parse_port_range(rest, (size_t)(c2 - rest), &port) != AV_OK)
        return AV_ERR_INVALID;
    const char *a = c2 + 1;
    size_t al = n - (size_t)(a - s);
    int kind;
    if (al > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', al);
        if (!close)
            return AV_ERR_INVALID;
        size_t tail = al - (size_t)(close + 1 - a);
        if (tail > 0 && (close[1] != ':' ||
                         parse_port_range(close + 2, tail - 1, &dial_port) != AV_OK))
            return AV_ERR_INVALID;
        kind = av__host_validate(a + 1, (size_t)(close - a - 1), addr);
        if (kind != 6)
            return AV_ERR_INVALID;
    } else {
        const char *c3 = memchr(a, ':', al);
        if (c3 && !memchr(c3 + 1, ':', al - (size_t)(c3 + 1 - a))) {
            /* exactly one more colon: IPv4 ADDR with a dial port */
            if (parse_port_range(c3 + 1, al - (size_t)(c3 + 1 - a), &dial_port) != AV_OK)
                return AV_ERR_INVALID;
            kind = av__host_validate(a, (size_t)(c3 - a), addr);
            if (kind != 4)
                return AV_ERR_INVALID;
        } else {
            kind = av__host_validate(a, al, addr);
            if (kind != 4 && kind != 6)
                return AV_ERR_INVALID;
        }
    }
    out->host = av__strdup(host);
    out->addr = av__strdup(addr);
    out->port = port;
    out->dial_port = dial_port;
    if (!out->host || !out->addr) {
        av__free(out->host);
        av__free(out->addr);
        out->host = out->addr = NULL;
        return AV_ERR_NOMEM;
    }
    return AV_OK;
}

/* av__config_parse_seconds parses a positive decimal number of seconds ("10",
 * "2.5"; at most 6 fraction digits), at most TIMEOUT_MAX. Done by hand:
 * strtod would depend on the host's LC_NUMERIC. */
int av__config_parse_seconds(const char *s, size_t n, double *out)
{
    const char *dot = memchr(s, '.', n);
    size_t il = dot ? (size_t)(dot - s) : n;
    long ip, fp = 0;
    if (parse_uint(s, il, 6, &ip) != AV_OK)
        return AV_ERR_INVALID;
    double v = (double)ip;
    if (dot) {
        size_t fl = n - il - 1;
        if (parse_uint(dot + 1, fl, 6, &fp) != AV_OK)
            return AV_ERR_INVALID;
        double scale = 1;
        for (size_t i = 0; i < fl; i++)
            scale *= 10;
        v += (double)fp / scale;
    }
    if (!(v > 0) || v > TIMEOUT_MAX)
        return AV_ERR_INVALID;
    *out = v;
    return AV_OK;
}

/* psl_ctx loads the public suffix list once per process: the system's
 * newest list when present, else libpsl's built-in copy. */
static const psl_ctx_t *g_psl;
static pthread_once_t g_psl_once = PTHREAD_ONCE_INIT;

static void psl_load(void)
{
    psl_ctx_t *latest = psl_latest(NULL);
    g_psl = latest ? latest : psl_builtin();
}

static const psl_ctx_t *psl_ctx(void)
{
    pthread_once(&g_psl_once, psl_load);
    return g_psl;
}

/* av__config_parse_host_pattern validates a service or passthrough host: a DNS name,
 * an IP literal (IPv6 optionally in brackets) or "*.suffix" whose suffix is
 * a DNS name that is not a public suffix. On success *out is a new
 * lower-case string. |why| receives a reason on AV_ERR_INVALID. */
int av__config_parse_host_pattern(const char *s, size_t n, char **out, int *wildcard,
                              int *is_ip, const char **why)
{
    char host[AV_HOST_MAX + 3];
    *wildcard = 0;
    *is_ip = 0;
    if (n == 1 && s[0] == '*') {
        *why = "a bare \"*\" host is not allowed";
        return AV_ERR_INVALID;
    }
    if (n >= 2 && s[0] == '*' && s[1] == '.') {
        int kind = av__host_validate(s + 2, n - 2, host + 2);
        if (kind != 0) {
            *why = "invalid wildcard host (only \"*.\" followed by a DNS name is allowed)";
            return AV_ERR_INVALID;
        }
        const psl_ctx_t *psl = psl_ctx();
        if (!psl || psl_is_public_suffix2(psl, host + 2, PSL_TYPE_ANY)) {
            *why = "wildcard over a public suffix is not allowed";
            return AV_ERR_INVALID;
        }
        host[0] = '*';
        host[1] = '.';
        if (strlen(host) > AV_HOST_MAX) {
            *why = "host name too long";
            return AV_ERR_INVALID;
        }
        *wildcard = 1;
    } else {
        int kind;
        if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
            kind = av__host_validate(s + 1, n - 2, host);
            if (kind != 6) {
                *why = "invalid IPv6 literal";
                return AV_ERR_INVALID;
            }
        } else {
            kind = av__host_validate(s, n, host);
        }
        if (kind < 0) {
            *why = "invalid host name";
            return AV_ERR_INVALID;
        }
        *is_ip = kind != 0;
    }
    *out = av__strdup(host);
    return *out ? AV_OK : AV_ERR_NOMEM;
}

/* ---- config object ------------------------------------------------------ */

/* av__config_service_clear frees the strings of one service. */
void av__config_service_clear(av_service *s)
{
    av__free(s->name);
    av__free(s->host);
    av__free(s->path_glob);
    av__free(s->auth_name);
    av__free(s->auth_template);
    av__free(s->auth_alt_name);
    av__free(s->auth_alt_template);
    av__free(s->secret_ref);
    av__free(s->placeholder);
    av__free(s->agent_env);
    av__free(s->upstream_proxy);
    av__free(s->upstream_proxy_auth);
    av__free(s->aws_region);
    av__free(s->aws_service);
    av__free(s->aws_akid_ref);
    av__free(s->aws_token_ref);
    av__free(s->token_url);
    av__free(s->client_id);
    av__free(s->client_secret_ref);
    av__free(s->oauth_scope);
    av__free(s->oauth_audience);
    av__free(s->refresh_token_ref);
    av__free(s->mint_key_ref);
    av__free(s->target_audience);
    av__free(s->gh_installation);
    av__free(s->gh_repositories);
    av__free(s->gh_permissions);
    av__free(s->decide);
    memset(s, 0, sizeof(*s));
}

/* config_clear frees every owned member and resets to defaults. */
static void config_clear(av_config *c)
{
    for (size_t i = 0; i < c->nlisten; i++)
        av__free(c->listen[i]);
    av__free(c->listen);
    av__free(c->state_dir);
    for (size_t i = 0; i < c->npassthrough; i++)
        av__free(c->passthrough[i]);
    av__free(c->passthrough);
    for (size_t i = 0; i < c->nresolve; i++) {
        av__free(c->resolve[i].host);
        av__free(c->resolve[i].addr);
    }
    av__free(c->resolve);
    av__free(c->upstream_cafile);
    av__free(c->audit);
    av__free(c->vault_path);
    av__free(c->allow_private);
    for (size_t i = 0; i < c->nservices; i++)
        av__config_service_clear(&c->services[i]);
    av__free(c->services);
    for (size_t i = 0; i < c->ntokens; i++) {
        av__free(c->tokens[i].name);
        av__free(c->tokens[i].secret_ref);
        for (size_t j = 0; j < c->tokens[i].nservices; j++)
            av__free(c->tokens[i].services[j]);
        av__free(c->tokens[i].services);
    }
    av__free(c->tokens);
    for (size_t i = 0; i < c->ngateways; i++) {
        av__free(c->gateways[i].name);
        av__free(c->gateways[i].listen);
        av__free(c->gateways[i].upstream);
        av__free(c->gateways[i].token_ref);
    }
    av__free(c->gateways);
    av__free(c->upstream_proxy);
    av__free(c->upstream_proxy_auth);
    av__free(c->ca_cert_ref);
    av__free(c->ca_key_ref);
    av__free(c->tokens_file);
    av__free(c->upstream_no_proxy);
    av__free(c->decide_notify);
    memset(c, 0, sizeof(*c));
    c->unmatched = AV_UNMATCHED_PASSTHROUGH;
    c->connect_timeout = 10;
    c->idle_timeout = 120;
    c->header_timeout = 10;
    c->ws_idle_timeout = 900;
    c->secret_ttl = 300;
    c->command_timeout = 10;
    c->drain_timeout = 10;
}

/* av_config_new creates an empty configuration with defaults. Returns
 * AV_ERR_INVALID or AV_ERR_NOMEM. */
AV_EXPORT int av_config_new(av_config **out)
{
    if (!out)
        return AV_ERR_INVALID;
    av_config *c = av__calloc(1, sizeof(*c));
    if (!c)
        return AV_ERR_NOMEM;
    config_clear(c);
    *out = c;
    return AV_OK;
}

/* av_config_free releases a configuration; NULL is a no-op. */
AV_EXPORT void av_config_free(av_config *cfg)
{
    if (!cfg)
        return;
    config_clear(cfg);
    av__free(cfg);
}

/* av_config_error returns the last error message ("" if none). */
AV_EXPORT const char *av_config_error(const av_config *cfg)
{
    return cfg ? cfg->error : "";
}

/* dup_strv deep-copies an array of strings; on failure *dst may be a
 * partially filled, zero-initialised array of |n| entries (or NULL). */
static int dup_strv(char ***dst, char *const *src, size_t n)
{
    *dst = NULL;
    if (n == 0)
        return AV_OK;
    *dst = av__calloc(n, sizeof(char *));
    if (!*dst)
        return AV_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        if (!((*dst)[i] = av__strdup(src[i])))
            return AV_ERR_NOMEM;
    return AV_OK;
}

/* dup_opt copies an optional string: 0 on success (including NULL). */
static int dup_opt(char **dst, const char *src)
{
    *dst = src ? av__strdup(src) : NULL;
    return (src && !*dst) ? AV_ERR_NOMEM : AV_OK;
}

/* av__config_copy deep-copies |src|. NULL on allocation failure. */
av_config *av__config_copy(const av_config *src)
{
    if (!src)
        return NULL;
    av_config *c = av__calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    *c = *src; /* scalars and the error text */
    c->listen = NULL;
    c->state_dir = NULL;
    c->passthrough = NULL;
    c->resolve = NULL;
    c->upstream_cafile = NULL;
    c->audit = NULL;
    c->vault_path = NULL;
    c->allow_private = NULL;
    c->services = NULL;
    c->tokens = NULL;
    c->gateways = NULL;
    c->ngateways = 0;
    c->upstream_proxy = c->upstream_proxy_auth = c->upstream_no_proxy = NULL;
    c->ca_cert_ref = c->ca_key_ref = c->tokens_file = NULL;
    c->decide_notify = NULL;
    c->nlisten = c->npassthrough = c->nresolve = c->nallow_private = 0;
    c->nservices = c->ntokens = 0;

    int rc = dup_strv(&c->listen, src->listen, src->nlisten);
    c->nlisten = c->listen ? src->nlisten : 0;
    if (rc != AV_OK)
        goto fail;
    rc = dup_strv(&c->passthrough, src->passthrough, src->npassthrough);
    c->npassthrough = c->passthrough ? src->npassthrough : 0;
    if (rc != AV_OK)
        goto fail;
    if (dup_opt(&c->state_dir, src->state_dir) || dup_opt(&c->upstream_cafile, src->upstream_cafile) ||
        dup_opt(&c->audit, src->audit) || dup_opt(&c->vault_path, src->vault_path))
        goto fail;
    if (dup_opt(&c->upstream_proxy, src->upstream_proxy) ||
        dup_opt(&c->upstream_proxy_auth, src->upstream_proxy_auth) ||
        dup_opt(&c->upstream_no_proxy, src->upstream_no_proxy) || dup_opt(&c->decide_notify, src->decide_notify))
        goto fail;
    if (dup_opt(&c->ca_cert_ref, src->ca_cert_ref) || dup_opt(&c->ca_key_ref, src->ca_key_ref) ||
        dup_opt(&c->tokens_file, src->tokens_file))
        goto fail;
    if (src->nresolve) {
        c->resolve = av__calloc(src->nresolve, sizeof(*c->resolve));
        if (!c->resolve)
            goto fail;
        c->nresolve = src->nresolve;
        for (size_t i = 0; i < src->nresolve; i++) {
            c->resolve[i] = src->resolve[i];
            c->resolve[i].host = c->resolve[i].addr = NULL;
            if (dup_opt(&c->resolve[i].host, src->resolve[i].host) ||
                dup_opt(&c->resolve[i].addr, src->resolve[i].addr))
                goto fail;
        }
    }
    if (src->nallow_private) {
        c->allow_private = av__memdup(src->allow_private,
                                      src->nallow_private * sizeof(*src->allow_private));
        if (!c->allow_private)
            goto fail;
        c->nallow_private = src->nallow_private;
    }
    if (src->nservices) {
        c->services = av__calloc(src->nservices, sizeof(*c->services));
        if (!c->services)
            goto fail;
        c->nservices = src->nservices;
        for (size_t i = 0; i < src->nservices; i++) {
            const av_service *s = &src->services[i];
            av_service *d = &c->services[i];
            *d = *s;
            d->name = d->host = d->path_glob = d->auth_name = d->auth_template = d->secret_ref = NULL;
            d->placeholder = d->agent_env = d->auth_alt_name = d->auth_alt_template = NULL;
            d->upstream_proxy = d->upstream_proxy_auth = NULL;
            if (dup_opt(&d->name, s->name) || dup_opt(&d->host, s->host) ||
                dup_opt(&d->path_glob, s->path_glob) || dup_opt(&d->auth_name, s->auth_name) ||
                dup_opt(&d->auth_template, s->auth_template) ||
                dup_opt(&d->auth_alt_name, s->auth_alt_name) ||
                dup_opt(&d->auth_alt_template, s->auth_alt_template) ||
                dup_opt(&d->secret_ref, s->secret_ref) || dup_opt(&d->placeholder, s->placeholder) ||
                dup_opt(&d->agent_env, s->agent_env) || dup_opt(&d->upstream_proxy, s->upstream_proxy) ||
                dup_opt(&d->upstream_proxy_auth, s->upstream_proxy_auth))
                goto fail;
            d->aws_region = d->aws_service = d->aws_akid_ref = d->aws_token_ref = NULL;
            if (dup_opt(&d->aws_region, s->aws_region) || dup_opt(&d->aws_service, s->aws_service) ||
                dup_opt(&d->aws_akid_ref, s->aws_akid_ref) || dup_opt(&d->aws_token_ref, s->aws_token_ref))
                goto fail;
            d->token_url = d->client_id = d->client_secret_ref = d->oauth_scope = d->oauth_audience = NULL;
            d->refresh_token_ref = NULL;
            if (dup_opt(&d->token_url, s->token_url) || dup_opt(&d->client_id, s->client_id) ||
                dup_opt(&d->client_secret_ref, s->client_secret_ref) || dup_opt(&d->oauth_scope, s->oauth_scope) ||
                dup_opt(&d->oauth_audience, s->oauth_audience) || dup_opt(&d->refresh_token_ref, s->refresh_token_ref))
                goto fail;
            d->mint_key_ref = d->target_audience = d->gh_installation = d->gh_repositories = d->gh_permissions = NULL;
            d->decide = NULL;
            if (dup_opt(&d->mint_key_ref, s->mint_key_ref) || dup_opt(&d->target_audience, s->target_audience) ||
                dup_opt(&d->gh_installation, s->gh_installation) ||
                dup_opt(&d->gh_repositories, s->gh_repositories) || dup_opt(&d->gh_permissions, s->gh_permissions) ||
                dup_opt(&d->decide, s->decide))
                goto fail;
        }
    }
    if (src->ntokens) {
        c->tokens = av__calloc(src->ntokens, sizeof(*c->tokens));
        if (!c->tokens)
            goto fail;
        c->ntokens = src->ntokens;
        for (size_t i = 0; i < src->ntokens; i++) {
            const av_token_cfg *st = &src->tokens[i];
            av_token_cfg *dt = &c->tokens[i];
            *dt = *st;
            dt->name = dt->secret_ref = NULL;
            dt->services = NULL;
            dt->nservices = 0;
            if (dup_opt(&dt->name, st->name) || dup_opt(&dt->secret_ref, st->secret_ref))
                goto fail;
            if (st->nservices) {
                dt->services = av__calloc(st->nservices, sizeof(*dt->services));
                if (!dt->services)
                    goto fail;
                for (size_t j = 0; j < st->nservices; j++, dt->nservices++)
                    if (dup_opt(&dt->services[j], st->services[j]))
                        goto fail;
            }
        }
    }
    if (src->ngateways) {
        c->gateways = av__calloc(src->ngateways, sizeof(*c->gateways));
        if (!c->gateways)
            goto fail;
        c->ngateways = src->ngateways;
        for (size_t i = 0; i < src->ngateways; i++) {
            const av_gateway_cfg *sg = &src->gateways[i];
            av_gateway_cfg *dg = &c->gateways[i];
            *dg = *sg;
            dg->name = dg->listen = dg->upstream = dg->token_ref = NULL;
            if (dup_opt(&dg->name, sg->name) || dup_opt(&dg->listen, sg->listen) ||
                dup_opt(&dg->upstream, sg->upstream) || dup_opt(&dg->token_ref, sg->token_ref))
                goto fail;
        }
    }
    return c;

fail:
    av_config_free(c);
    return NULL;
}

/* ---- dump: every field, for the round-trip test ------------------------- */

/* The dump, config_clear and av__config_copy each list the members of the
 * structs below. These sizes (LP64) make adding a member without visiting
 * all three (and the round-trip test in tests/unit/test_config.c) a build
 * error: update them, then the size here. */
#if defined(__LP64__) && UINTPTR_MAX == UINT64_MAX
_Static_assert(sizeof(av_service) == 328, "av_service changed: update config_clear, copy, dump");
_Static_assert(sizeof(av_token_cfg) == 112, "av_token_cfg changed: update config_clear, copy, dump");
_Static_assert(sizeof(av_gateway_cfg) == 312, "av_gateway_cfg changed: update config_clear, copy, dump");
_Static_assert(sizeof(av_resolve_cfg) == 32, "av_resolve_cfg changed: update config_clear, copy, dump");
_Static_assert(sizeof(av_cidr) == 24, "av_cidr changed: update av__config_dump");
_Static_assert(sizeof(av_authority) == 264, "av_authority changed: update av__config_dump");
_Static_assert(sizeof(av_config) == 848, "av_config changed: update config_clear, copy, dump");
#endif

/* dump_str appends |key|="value" with the value JSON-escaped (any byte
 * visible, one line), or |key|=<null>. */
static int dump_str(av_buf *b, const char *key, const char *v)
{
    if (!v)
        return av__buf_appendf(b, "%s=<null>\n", key);
    size_t n = strlen(v);
    int rc = av__buf_appendf(b, "%s=\"", key);
    uint8_t *w = rc ? NULL : av__buf_reserve(b, 6 * n + 2, &rc);
    if (!w)
        return rc;
    size_t o = av__json_escape(v, n, AV__JSON_SHORT | AV__JSON_BYTES, (char *)w);
    w[o++] = '"';
    w[o++] = '\n';
    av__buf_commit(b, o);
    return AV_OK;
}

/* dump_bytes appends |key|=hex of |n| bytes. */
static int dump_bytes(av_buf *b, const char *key, const uint8_t *p, size_t n)
{
    int rc = av__buf_appendf(b, "%s=", key);
    uint8_t *w = rc ? NULL : av__buf_reserve(b, 2 * n + 1, &rc);
    if (!w)
        return rc;
    size_t o = av__hex_encode(p, n, AV__HEX_LOWER, (char *)w);
    w[o++] = '\n';
    av__buf_commit(b, o);
    return AV_OK;
}

/* dump_ptr appends the address held in an object or function pointer
 * (lent, not owned: a copy shares it). */
static int dump_ptr(av_buf *b, const char *key, const void *slot, size_t size)
{
    uint8_t raw[sizeof(uintptr_t)];
    memset(raw, 0, sizeof(raw));
    memcpy(raw, slot, size < sizeof(raw) ? size : sizeof(raw));
    return dump_bytes(b, key, raw, sizeof(raw));
}

/* av__config_dump appends every member of |c| (and of every service, token,
 * gateway, resolve entry and CIDR) to |out|, one "path=value" line each. */
int av__config_dump(const av_config *c, av_buf *out)
{
    char k[96];
    int rc = AV_OK;
#define DS(name, v) (rc = rc ? rc : (snprintf(k, sizeof(k), "%s", name), dump_str(out, k, (v))))
#define DF(fmt, ...) (rc = rc ? rc : av__buf_appendf(out, fmt "\n", __VA_ARGS__))
    DF("nlisten=%zu", c->nlisten);
    for (size_t i = 0; i < c->nlisten; i++) {
        snprintf(k, sizeof(k), "listen[%zu]", i);
        rc = rc ? rc : dump_str(out, k, c->listen[i]);
    }
    DS("state_dir", c->state_dir);
    DS("audit", c->audit);
    DS("vault_path", c->vault_path);
    rc = rc ? rc : dump_ptr(out, "vault", &c->vault, sizeof(c->vault));
    rc = rc ? rc : dump_ptr(out, "secret_fn", &c->secret_fn, sizeof(c->secret_fn));
    rc = rc ? rc : dump_ptr(out, "secret_ud", &c->secret_ud, sizeof(c->secret_ud));
    rc = rc ? rc : dump_ptr(out, "decide_fn", &c->decide_fn, sizeof(c->decide_fn));
    rc = rc ? rc : dump_ptr(out, "decide_ud", &c->decide_ud, sizeof(c->decide_ud));
    DS("decide_notify", c->decide_notify);
    DF("unmatched=%d", c->unmatched);
    DF("npassthrough=%zu", c->npassthrough);
    for (size_t i = 0; i < c->npassthrough; i++) {
        snprintf(k, sizeof(k), "passthrough[%zu]", i);
        rc = rc ? rc : dump_str(out, k, c->passthrough[i]);
    }
    DF("nresolve=%zu", c->nresolve);
    for (size_t i = 0; i < c->nresolve; i++) {
        const av_resolve_cfg *r = &c->resolve[i];
        snprintf(k, sizeof(k), "resolve[%zu].host", i);
        rc = rc ? rc : dump_str(out, k, r->host);
        DF("resolve[%zu].port=%d", i, r->port);
        snprintf(k, sizeof(k), "resolve[%zu].addr", i);
        rc = rc ? rc : dump_str(out, k, r->addr);
        DF("resolve[%zu].dial_port=%d", i, r->dial_port);
    }
    DS("upstream_cafile", c->upstream_cafile);
    DF("nallow_private=%zu", c->nallow_private);
    for (size_t i = 0; i < c->nallow_private; i++) {
        const av_cidr *a = &c->allow_private[i];
        DF("allow_private[%zu].family=%d", i, a->family);
        snprintf(k, sizeof(k), "allow_private[%zu].addr", i);
        rc = rc ? rc : dump_bytes(out, k, a->addr, sizeof(a->addr));
        DF("allow_private[%zu].prefix=%d", i, a->prefix);
    }
    DF("connect_timeout=%.17g", c->connect_timeout);
    DF("idle_timeout=%.17g", c->idle_timeout);
    DF("header_timeout=%.17g", c->header_timeout);
    DF("ws_idle_timeout=%.17g", c->ws_idle_timeout);
    DF("secret_ttl=%.17g", c->secret_ttl);
    DF("command_timeout=%.17g", c->command_timeout);
    DF("max_connections=%ld", c->max_connections);
    DF("tls_resumption_off=%d", c->tls_resumption_off);
    DS("ca_cert_ref", c->ca_cert_ref);
    DS("ca_key_ref", c->ca_key_ref);
    DS("tokens_file", c->tokens_file);
    DF("drain_delay=%.17g", c->drain_delay);
    DF("drain_timeout=%.17g", c->drain_timeout);
    DF("workers=%d", c->workers);
    DF("nservices=%zu", c->nservices);
    for (size_t i = 0; i < c->nservices; i++) {
        const av_service *s = &c->services[i];
#define SS(f) (snprintf(k, sizeof(k), "services[%zu]." #f, i), rc = rc ? rc : dump_str(out, k, s->f))
#define SI(f, fmt) DF("services[%zu]." #f "=" fmt, i, s->f)
        SS(name);
        SS(host);
        SI(wildcard, "%d");
        SI(host_is_ip, "%d");
        SI(port, "%d");
        SI(scheme_http, "%d");
        SS(path_glob);
        SI(methods, "%u");
        SI(auth, "%d");
        SS(auth_name);
        SS(auth_template);
        SI(auth_alt, "%d");
        SS(auth_alt_name);
        SS(auth_alt_template);
        SI(auth_alt_line, "%d");
        SS(secret_ref);
        SI(websocket_off, "%d");
        SI(websocket_scrub_off, "%d");
        SS(placeholder);
        SI(placeholder_in, "%u");
        SS(agent_env);
        SS(upstream_proxy);
        SS(upstream_proxy_auth);
        SS(aws_region);
        SS(aws_service);
        SS(aws_akid_ref);
        SS(aws_token_ref);
        SI(aws_body_max, "%zu");
        SI(mint, "%d");
        SS(token_url);
        SS(client_id);
        SS(client_secret_ref);
        SS(oauth_scope);
        SS(oauth_audience);
        SI(client_auth_post, "%d");
        SS(refresh_token_ref);
        SS(mint_key_ref);
        SS(target_audience);
        SS(gh_installation);
        SS(gh_repositories);
        SS(gh_permissions);
        SS(decide);
        SI(decide_timeout, "%.17g");
        SI(decide_body, "%zu");
        SI(line, "%d");
#undef SS
#undef SI
    }
    DF("ntokens=%zu", c->ntokens);
    for (size_t i = 0; i < c->ntokens; i++) {
        const av_token_cfg *t = &c->tokens[i];
        snprintf(k, sizeof(k), "tokens[%zu].name", i);
        rc = rc ? rc : dump_str(out, k, t->name);
        snprintf(k, sizeof(k), "tokens[%zu].secret_ref", i);
        rc = rc ? rc : dump_str(out, k, t->secret_ref);
        DF("tokens[%zu].line=%d", i, t->line);
        DF("tokens[%zu].nservices=%zu", i, t->nservices);
        for (size_t j = 0; j < t->nservices; j++) {
            snprintf(k, sizeof(k), "tokens[%zu].services[%zu]", i, j);
            rc = rc ? rc : dump_str(out, k, t->services[j]);
        }
        DF("tokens[%zu].unmatched=%d", i, t->unmatched);
        DF("tokens[%zu].rate=%.17g", i, t->rate);
        DF("tokens[%zu].burst=%.17g", i, t->burst);
        DF("tokens[%zu].hashed=%d", i, t->hashed);
        snprintf(k, sizeof(k), "tokens[%zu].hash", i);
        rc = rc ? rc : dump_bytes(out, k, t->hash, sizeof(t->hash));
        DF("tokens[%zu].expires=%lld", i, t->expires);
    }
    DF("token_store=%d", c->token_store);
    DF("ngateways=%zu", c->ngateways);
    for (size_t i = 0; i < c->ngateways; i++) {
        const av_gateway_cfg *g = &c->gateways[i];
        snprintf(k, sizeof(k), "gateways[%zu].name", i);
        rc = rc ? rc : dump_str(out, k, g->name);
        snprintf(k, sizeof(k), "gateways[%zu].listen", i);
        rc = rc ? rc : dump_str(out, k, g->listen);
        snprintf(k, sizeof(k), "gateways[%zu].upstream", i);
        rc = rc ? rc : dump_str(out, k, g->upstream);
        snprintf(k, sizeof(k), "gateways[%zu].dest.host", i);
        rc = rc ? rc : dump_str(out, k, g->dest.host);
        DF("gateways[%zu].dest.is_ip=%d", i, g->dest.is_ip);
        DF("gateways[%zu].dest.port=%d", i, g->dest.port);
        DF("gateways[%zu].dest_tls=%d", i, g->dest_tls);
        DF("gateways[%zu].allow_remote=%d", i, g->allow_remote);
        snprintf(k, sizeof(k), "gateways[%zu].token_ref", i);
        rc = rc ? rc : dump_str(out, k, g->token_ref);
        DF("gateways[%zu].line=%d", i, g->line);
    }
    DS("upstream_proxy", c->upstream_proxy);
    DS("upstream_proxy_auth", c->upstream_proxy_auth);
    DS("upstream_no_proxy", c->upstream_no_proxy);
    char err[sizeof(c->error) + 1];
    memcpy(err, c->error, sizeof(c->error));
    err[sizeof(c->error)] = '\0';
    rc = rc ? rc : dump_str(out, "error", err);
#undef DS
#undef DF
    return rc;
}

/* ---- programmatic setters ------------------------------------------------ */

/* av_config_add_listen appends a listen address ("127.0.0.1:14322").
 * Returns AV_ERR_INVALID or AV_ERR_NOMEM. */
AV_EXPORT int av_config_add_listen(av_config *cfg, const char *addr_port)
{
    char norm[AV_HOST_MAX + 16];
    if (!cfg)
        return AV_ERR_INVALID;
    if (!addr_port || av__config_normalize_listen(addr_port, strlen(addr_port), norm, sizeof(norm)) != AV_OK) {
        av__config_set_error(cfg, "invalid listen address \"%.100s\" (expected IP:PORT, [IPv6]:PORT or localhost:PORT)",
                  addr_port ? addr_port : "");
        return AV_ERR_INVALID;
    }
    if (av__config_grow((void **)&cfg->listen, cfg->nlisten, sizeof(char *)) != AV_OK ||
        !(cfg->listen[cfg->nlisten] = av__strdup(norm))) {
        av__config_set_error(cfg, "out of memory");
        return AV_ERR_NOMEM;
    }
    cfg->nlisten++;
    return AV_OK;
}

/* av_config_clear_listen removes every listen address. */
AV_EXPORT int av_config_clear_listen(av_config *cfg)
{
    if (!cfg)
        return AV_ERR_INVALID;
    for (size_t i = 0; i < cfg->nlisten; i++)
        av__free(cfg->listen[i]);
    av__free(cfg->listen);
    cfg->listen = NULL;
    cfg->nlisten = 0;
    return AV_OK;
}

/* path_ok accepts a non-empty string without control characters. */
static int path_ok(const char *s)
{
    if (!s || !*s)
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 0;
    return 1;
}

/* set_path replaces the string at |dst| with a copy of |path| after a
 * syntax check; |what| names it in the error. */
static int set_path(av_config *cfg, char **dst, const char *path, const char *what)
{
    if (!cfg)
        return AV_ERR_INVALID;
    if (!path_ok(path)) {
        av__config_set_error(cfg, "invalid %s", what);
        return AV_ERR_INVALID;
    }
    char *d = av__strdup(path);
    if (!d) {
        av__config_set_error(cfg, "out of memory");
        return AV_ERR_NOMEM;
    }
    av__free(*dst);
    *dst = d;
    return AV_OK;
}

/* av_config_set_state_dir replaces the state directory. Returns
 * AV_ERR_INVALID or AV_ERR_NOMEM. */
AV_EXPORT int av_config_set_state_dir(av_config *cfg, const char *dir)
{
    return set_path(cfg, cfg ? &cfg->state_dir : NULL, dir, "state directory");
}

AV_EXPORT int av_config_set_workers(av_config *cfg, int n)
{
    if (!cfg)
        return AV_ERR_INVALID;
    if (n != AV_WORKERS_AUTO && (n < 1 || n > AV_WORKERS_MAX)) {
        av__config_set_error(cfg, "workers must be a whole number in [1, %d] or auto", AV_WORKERS_MAX);
        return AV_ERR_INVALID;
    }
    cfg->workers = n;
    return AV_OK;
}

AV_EXPORT int av_config_workers(const av_config *cfg)
{
    return cfg ? cfg->workers : 0;
}

/* av_config_add_resolve appends a "HOST:PORT:ADDR" override. Returns
 * AV_ERR_INVALID or AV_ERR_NOMEM. */
AV_EXPORT int av_config_add_resolve(av_config *cfg, const char *host_port_addr)
{
    if (!cfg)
        return AV_ERR_INVALID;
    av_resolve_cfg r;
    memset(&r, 0, sizeof(r));
    int rc = host_port_addr ? av__config_parse_resolve(host_port_addr, strlen(host_port_addr), &r)
                            : AV_ERR_INVALID;
    if (rc == AV_ERR_INVALID) {
        av__config_set_error(cfg, "invalid resolve entry \"%.100s\" (expected HOST:PORT:ADDR)",
                  host_port_addr ? host_port_addr : "");
        return rc;
    }
    if (rc == AV_OK && av__config_grow((void **)&cfg->resolve, cfg->nresolve, sizeof(r)) != AV_OK) {
        av__free(r.host);
        av__free(r.addr);
        rc = AV_ERR_NOMEM;
    }
    if (rc != AV_OK) {
        av__config_set_error(cfg, "out of memory");
        return rc;
    }
    cfg->resolve[cfg->nresolve++] = r;
    return AV_OK;
}

/* av_config_set_upstream_cafile sets the CA file used to verify upstream
 * servers. Returns AV_ERR_INVALID or AV_ERR_NOMEM. */
AV_EXPORT int av_config_set_upstream_cafile(av_config *cfg, const char *path)
{
    return set_path(cfg, cfg ? &cfg->upstream_cafile : NULL, path, "CA file path");
}

/* av_config_validate checks cross-field rules. Returns AV_ERR_CONFIG. */
AV_EXPORT int av_config_validate(av_config *cfg)
{
    if (!cfg)
        return AV_ERR_INVALID;
    for (size_t i = 0; i < cfg->nservices; i++) {
        const av_service *s = &cfg->services[i];
        const char *missing = !s->host ? "host" : !s->auth ? "auth" : !s->secret_ref ? "secret" : NULL;
        if (missing) {
            av__config_set_error(cfg, "line %d: service \"%s\" has no %s", s->line, s->name, missing);
            return AV_ERR_CONFIG;
        }
        if (s->port < 1 || s->port > 65535) {
            av__config_set_error(cfg, "line %d: service \"%s\" has no valid port", s->line, s->name);
            return AV_ERR_CONFIG;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->services[j].name, s->name) == 0) {
                av__config_set_error(cfg, "line %d: duplicate service \"%s\"", s->line, s->name);
                return AV_ERR_CONFIG;
            }
    }
    for (size_t i = 0; i < cfg->ntokens; i++) {
        const av_token_cfg *t = &cfg->tokens[i];
        if (!t->secret_ref && !t->hashed) {
            av__config_set_error(cfg, "line %d: token \"%s\" has no secret", t->line, t->name);
            return AV_ERR_CONFIG;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->tokens[j].name, t->name) == 0) {
                if (t->hashed)
                    av__config_set_error(cfg, "token store: token \"%s\" is also defined in the configuration", t->name);
                else
                    av__config_set_error(cfg, "line %d: duplicate token \"%s\"", t->line, t->name);
                return AV_ERR_CONFIG;
            }
        for (size_t k = 0; k < t->nservices; k++) {
            size_t j = 0;
            while (j < cfg->nservices && strcmp(cfg->services[j].name, t->services[k]) != 0)
                j++;
            if (j == cfg->nservices) {
                if (t->hashed)
                    av__config_set_error(cfg, "token store: token \"%s\" names unknown service \"%s\"", t->name, t->services[k]);
                else
                    av__config_set_error(cfg, "line %d: token \"%s\" names unknown service \"%s\"", t->line, t->name,
                              t->services[k]);
                return AV_ERR_CONFIG;
            }
        }
    }
    if (!cfg->ca_cert_ref != !cfg->ca_key_ref) {
        av__config_set_error(cfg, "[proxy] %s is set but %s is not: give both (the root certificate and its key) "
                                  "or neither (the CA in state_dir)",
                             cfg->ca_cert_ref ? "ca_cert" : "ca_key", cfg->ca_cert_ref ? "ca_key" : "ca_cert");
        return AV_ERR_CONFIG;
    }
    for (size_t i = 0; i < cfg->nlisten; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(cfg->listen[i], cfg->listen[j]) == 0) {
                av__config_set_error(cfg, "duplicate listen address %s", cfg->listen[i]);
                return AV_ERR_CONFIG;
            }
    cfg->error[0] = '\0';
    return AV_OK;
}

/* ---- accessors ---------------------------------------------------------- */

/* av_config_listen_count returns the number of listen addresses. */
AV_EXPORT size_t av_config_listen_count(const av_config *cfg)
{
    return cfg ? cfg->nlisten : 0;
}

/* av_config_listen_get returns listen address |i| or NULL. */
AV_EXPORT const char *av_config_listen_get(const av_config *cfg, size_t i)
{
    return (cfg && i < cfg->nlisten) ? cfg->listen[i] : NULL;
}

AV_EXPORT size_t av_config_gateway_count(const av_config *cfg)
{
    return cfg ? cfg->ngateways : 0;
}

AV_EXPORT const char *av_config_gateway_name(const av_config *cfg, size_t i)
{
    return (cfg && i < cfg->ngateways) ? cfg->gateways[i].name : NULL;
}

AV_EXPORT const char *av_config_gateway_listen(const av_config *cfg, size_t i)
{
    return (cfg && i < cfg->ngateways) ? cfg->gateways[i].listen : NULL;
}

AV_EXPORT const char *av_config_gateway_upstream(const av_config *cfg, size_t i)
{
    return (cfg && i < cfg->ngateways) ? cfg->gateways[i].upstream : NULL;
}

AV_EXPORT const char *av_config_service_name(const av_config *cfg, size_t i)
{
    return (cfg && i < cfg->nservices) ? cfg->services[i].name : NULL;
}

AV_EXPORT const char *av_config_vault_path(const av_config *cfg)
{
    return cfg ? cfg->vault_path : NULL;
}

AV_EXPORT const char *av_config_tokens_file(const av_config *cfg)
{
    return cfg ? cfg->tokens_file : NULL;
}

AV_EXPORT const char *av_config_ca_cert(const av_config *cfg)
{
    return cfg ? cfg->ca_cert_ref : NULL;
}

AV_EXPORT void av_config_drain(const av_config *cfg, double *delay_seconds, double *timeout_seconds)
{
    if (delay_seconds)
        *delay_seconds = cfg ? cfg->drain_delay : 0;
    if (timeout_seconds)
        *timeout_seconds = cfg ? cfg->drain_timeout : 10;
}

AV_EXPORT int av_config_uses_decide_ask(const av_config *cfg)
{
    if (!cfg)
        return 0;
    for (size_t i = 0; i < cfg->nservices; i++)
        if (cfg->services[i].decide && strcmp(cfg->services[i].decide, "ask") == 0)
            return 1;
    return 0;
}

AV_EXPORT int av_config_uses_vault(const av_config *cfg)
{
    if (!cfg)
        return 0;
    for (size_t i = 0; i < cfg->nservices; i++)
        if ((cfg->services[i].secret_ref && strncmp(cfg->services[i].secret_ref, "vault:", 6) == 0) ||
            (cfg->services[i].upstream_proxy_auth && strncmp(cfg->services[i].upstream_proxy_auth, "vault:", 6) == 0))
            return 1;
    if (cfg->upstream_proxy_auth && strncmp(cfg->upstream_proxy_auth, "vault:", 6) == 0)
        return 1;
    if ((cfg->ca_cert_ref && strncmp(cfg->ca_cert_ref, "vault:", 6) == 0) ||
        (cfg->ca_key_ref && strncmp(cfg->ca_key_ref, "vault:", 6) == 0))
        return 1;
    for (size_t i = 0; i < cfg->nservices; i++) {
        const av_service *s = &cfg->services[i];
        if ((s->aws_akid_ref && strncmp(s->aws_akid_ref, "vault:", 6) == 0) ||
            (s->aws_token_ref && strncmp(s->aws_token_ref, "vault:", 6) == 0) ||
            (s->client_secret_ref && strncmp(s->client_secret_ref, "vault:", 6) == 0) ||
            (s->refresh_token_ref && strncmp(s->refresh_token_ref, "vault:", 6) == 0))
            return 1;
    }
    for (size_t i = 0; i < cfg->ntokens; i++)
        if (cfg->tokens[i].secret_ref && strncmp(cfg->tokens[i].secret_ref, "vault:", 6) == 0)
            return 1;
    return 0;
}

AV_EXPORT int av_config_set_secret_fn(av_config *cfg, av_secret_fn fn, void *user_data)
{
    if (!cfg)
        return AV_ERR_INVALID;
    cfg->secret_fn = fn;
    cfg->secret_ud = user_data;
    return AV_OK;
}

AV_EXPORT int av_config_set_decide_fn(av_config *cfg, av_decide_fn fn, void *user_data)
{
    if (!cfg)
        return AV_ERR_INVALID;
    cfg->decide_fn = fn;
    cfg->decide_ud = user_data;
    return AV_OK;
}

AV_EXPORT int av_config_set_vault(av_config *cfg, struct av_vault *vault)
{
    if (!cfg)
        return AV_ERR_INVALID;
    cfg->vault = vault;
    return AV_OK;
}

/* av_config_state_dir returns the state directory or NULL. */
AV_EXPORT const char *av_config_state_dir(const av_config *cfg)
{
    return cfg ? cfg->state_dir : NULL;
}

/* av_config_service_count returns the number of services. */
AV_EXPORT size_t av_config_service_count(const av_config *cfg)
{
    return cfg ? cfg->nservices : 0;
}

AV_EXPORT int av_config_add_section(av_config *cfg, const char *kind, const char *name, const char *const *keyvals)
{
    if (!cfg || !kind)
        return AV_ERR_INVALID;
    int is_proxy = strcmp(kind, "proxy") == 0;
    if (!is_proxy && strcmp(kind, "service") && strcmp(kind, "token") && strcmp(kind, "gateway")) {
        av__config_set_error(cfg, "unknown section kind \"%.40s\" (expected proxy, service, token or gateway)", kind);
        return AV_ERR_INVALID;
    }
    if (is_proxy ? name != NULL : (!name || !*name || strpbrk(name, "\"\r\n"))) {
        av__config_set_error(cfg, is_proxy ? "[proxy] has no name" : "a %s needs a name without quotes or line breaks", kind);
        return AV_ERR_INVALID;
    }
    av_buf text;
    av__buf_init(&text, 1 << 20);
    int rc = av__buf_append_str(&text, "[");
    rc = rc ? rc : av__buf_append_str(&text, kind);
    if (!is_proxy) {
        rc = rc ? rc : av__buf_append_str(&text, " \"");
        rc = rc ? rc : av__buf_append_str(&text, name);
        rc = rc ? rc : av__buf_append_str(&text, "\"");
    }
    rc = rc ? rc : av__buf_append_str(&text, "]\n");
    for (size_t i = 0; keyvals && keyvals[i] && rc == AV_OK; i += 2) {
        const char *k = keyvals[i], *v = keyvals[i + 1];
        if (!v) {
            av__config_set_error(cfg, "key \"%.64s\" has no value", k);
            av__buf_free_wipe(&text);
            return AV_ERR_INVALID;
        }
        if (!*k || *k == '#' || *k == ';' || *k == '[') {
            av__config_set_error(cfg, "key \"%.64s\": empty or starts with a comment or section character", k);
            av__buf_free_wipe(&text);
            return AV_ERR_INVALID;
        }
        if (strpbrk(k, "=\r\n") || strpbrk(v, "\r\n")) {
            av__config_set_error(cfg, "key \"%.64s\": keys and values may not contain line breaks (or '=' in a key)", k);
            av__buf_free_wipe(&text);
            return AV_ERR_INVALID;
        }
        rc = av__buf_append_str(&text, k);
        rc = rc ? rc : av__buf_append_str(&text, " = ");
        rc = rc ? rc : av__buf_append_str(&text, v);
        rc = rc ? rc : av__buf_append_str(&text, "\n");
    }
    if (rc != AV_OK) {
        av__buf_free_wipe(&text);
        av__config_set_error(cfg, "section too large");
        return rc == AV_ERR_NOMEM ? AV_ERR_NOMEM : AV_ERR_INVALID;
    }
    char origin[120];
    snprintf(origin, sizeof(origin), is_proxy ? "[proxy]" : "[%s \"%.64s\"]", kind, name ? name : "");
    rc = av_config_load_string(cfg, (const char *)av__buf_head(&text), text.len, origin);
    av__buf_free_wipe(&text);
    return rc;
}
