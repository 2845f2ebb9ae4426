/* av_parent.c - parent proxies: URLs, no_proxy, CONNECT and SOCKS5 wire
 * formats, and the table a snapshot derives (see av_parent.h). */
#include "av_parent.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_config.h"
#include "av_crypto.h"
#include "av_enc.h"
#include "av_err.h"
#include "av_mem.h"
#include "av_resolver.h"
#include "av_url.h"

static int lc(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

/* ci_prefix: |s| (|n| bytes) starts with the lower-case word |w|. */
static int ci_prefix(const char *s, size_t n, const char *w)
{
    size_t wl = strlen(w);
    if (n < wl)
        return 0;
    for (size_t i = 0; i < wl; i++)
        if (lc((unsigned char)s[i]) != w[i])
            return 0;
    return 1;
}

static int parse_port(const char *s, size_t n, int *out)
{
    int v = av__port_parse(s, n);
    if (v < 0)
        return AV_ERR_INVALID;
    *out = v;
    return AV_OK;
}

/* ---- URLs ------------------------------------------------------------- */

int av__parent_url_parse(const char *s, size_t n, unsigned flags, av_parent_url *out, const char **why)
{
    static const struct {
        const char *prefix;
        int kind;
        int port; /* curl's default when the port is missing (env only) */
    } schemes[] = {
        {"socks5h://", AV_PARENT_SOCKS5H, 1080},
        {"socks5://", AV_PARENT_SOCKS5, 1080},
        {"https://", AV_PARENT_HTTPS, 443},
        {"http://", AV_PARENT_HTTP, 1080},
    };
    const int env = (flags & AV_PARENT_URL_ENV) != 0;
    memset(out, 0, sizeof(*out));
    size_t i = 0, k;
    for (k = 0; k < sizeof(schemes) / sizeof(schemes[0]); k++)
        if (ci_prefix(s, n, schemes[k].prefix))
            break;
    int defport;
    if (k < sizeof(schemes) / sizeof(schemes[0])) {
        out->kind = schemes[k].kind;
        defport = schemes[k].port;
        i = strlen(schemes[k].prefix);
    } else {
        const char *sep = n >= 3 ? memchr(s, ':', n) : NULL;
        if (!env || (sep && (size_t)(sep - s) + 2 < n && sep[1] == '/' && sep[2] == '/')) {
            *why = "the scheme must be http://, https://, socks5:// or socks5h://";
            return AV_ERR_INVALID;
        }
        out->kind = AV_PARENT_HTTP; /* curl: a proxy without a scheme is http:// */
        defport = 1080;
    }
    /* authority: up to '/', which may only end the URL */
    size_t end = i;
    while (end < n && s[end] != '/' && s[end] != '?' && s[end] != '#')
        end++;
    if (end < n && !(s[end] == '/' && end + 1 == n)) {
        *why = "a parent proxy URL has no path, query or fragment";
        return AV_ERR_INVALID;
    }
    const char *a = s + i;
    size_t al = end - i;
    const char *at = NULL;
    for (size_t j = 0; j < al; j++)
        if (a[j] == '@')
            at = a + j;
    if (at) {
        if (!env) {
            *why = "credentials do not belong in the URL: set upstream_proxy_auth = env:NAME (or another secret "
                   "reference) holding user:password";
            return AV_ERR_INVALID;
        }
        out->userinfo = a;
        out->userinfo_len = (size_t)(at - a);
        al -= (size_t)(at + 1 - a);
        a = at + 1;
    }
    const char *h = a, *port = NULL;
    size_t hl = al, pl = 0;
    if (al > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', al);
        if (!close) {
            *why = "invalid host (an IPv6 literal needs its closing ']')";
            return AV_ERR_INVALID;
        }
        h = a + 1;
        hl = (size_t)(close - h);
        size_t rest = al - (size_t)(close + 1 - a);
        if (rest > 0) {
            if (close[1] != ':') {
                *why = "invalid host";
                return AV_ERR_INVALID;
            }
            port = close + 2;
            pl = rest - 1;
        }
        if (av__host_validate(h, hl, out->host) != 6) {
            *why = "invalid IPv6 literal";
            return AV_ERR_INVALID;
        }
        out->is_ip = 6;
    } else {
        const char *colon = memchr(a, ':', al);
        if (colon) {
            hl = (size_t)(colon - a);
            port = colon + 1;
            pl = al - hl - 1;
        }
        int kind = av__host_validate(h, hl, out->host);
        if (kind < 0 || kind == 6) {
            *why = "invalid host (a DNS name, an IPv4 address or a bracketed IPv6 address)";
            return AV_ERR_INVALID;
        }
        out->is_ip = kind;
    }
    if (port) {
        if (parse_port(port, pl, &out->port) != AV_OK) {
            *why = "invalid port (1..65535)";
            return AV_ERR_INVALID;
        }
    } else if (env) {
        out->port = defport;
    } else {
        *why = "the URL needs an explicit port (e.g. http://proxy.example.com:3128)";
        return AV_ERR_INVALID;
    }
    return AV_OK;
}

int av__parent_userinfo_decode(const char *s, size_t n, uint8_t *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return AV_ERR_INVALID;
            int hi = av__hex_value((unsigned char)s[i + 1]), lo = av__hex_value((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0)
                return AV_ERR_INVALID;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c == 0 || o >= cap)
            return AV_ERR_INVALID;
        out[o++] = (uint8_t)c;
    }
    if (!av__parent_auth_valid(out, o))
        return AV_ERR_INVALID;
    return (int)o;
}

int av__parent_auth_valid(const uint8_t *cred, size_t len)
{
    if (len > AV_PARENT_AUTH_MAX)
        return 0;
    const uint8_t *colon = memchr(cred, ':', len);
    if (!colon)
        return 0;
    size_t ul = (size_t)(colon - cred), pl = len - ul - 1;
    if (ul < 1 || ul > 255 || pl < 1 || pl > 255)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (cred[i] < 0x20 || cred[i] == 0x7f)
            return 0;
    return 1;
}

/* ---- no_proxy ------------------------------------------------------------ */

void av__noproxy_free(av_noproxy *np)
{
    if (!np)
        return;
    av__free(np->rules);
    memset(np, 0, sizeof(*np));
}

/* One entry (trimmed, non-empty) into |r|. */
static int noproxy_entry(const char *s, size_t n, av_noproxy_rule *r)
{
    memset(r, 0, sizeof(*r));
    char tmp[AV_HOST_MAX + 16];
    const char *slash = memchr(s, '/', n);
    if (slash) {
        if (n >= sizeof(tmp))
            return AV_ERR_INVALID;
        memcpy(tmp, s, n);
        tmp[n] = '\0';
        if (av__parse_cidr(tmp, &r->cidr) != AV_OK)
            return AV_ERR_INVALID;
        r->kind = AV_NP_CIDR;
        return AV_OK;
    }
    const char *h = s, *port = NULL;
    size_t hl = n, pl = 0;
    int kind;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return AV_ERR_INVALID;
        h = s + 1;
        hl = (size_t)(close - h);
        size_t rest = n - (size_t)(close + 1 - s);
        if (rest > 0) {
            if (close[1] != ':')
                return AV_ERR_INVALID;
            port = close + 2;
            pl = rest - 1;
        }
        kind = av__host_validate(h, hl, r->host);
        if (kind != 6)
            return AV_ERR_INVALID;
    } else {
        const char *colon = memchr(s, ':', n);
        if (colon && memchr(colon + 1, ':', n - (size_t)(colon + 1 - s))) {
            kind = av__host_validate(s, n, r->host); /* a bare IPv6 literal */
            if (kind != 6)
                return AV_ERR_INVALID;
        } else {
            if (colon) {
                hl = (size_t)(colon - s);
                port = colon + 1;
                pl = n - hl - 1;
            }
            if (hl > 0 && h[0] == '.') { /* curl: one leading dot is ignored */
                h++;
                hl--;
            }
            kind = av__host_validate(h, hl, r->host);
            if (kind < 0)
                return AV_ERR_INVALID;
        }
    }
    if (port && parse_port(port, pl, &r->port) != AV_OK)
        return AV_ERR_INVALID;
    r->kind = AV_NP_HOST;
    return AV_OK;
}

int av__noproxy_parse(const char *s, size_t n, av_noproxy *out, char *why, size_t why_len)
{
    memset(out, 0, sizeof(*out));
    size_t i = 0;
    size_t count = 0;
    while (i < n) {
        while (i < n && (s[i] == ',' || s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i >= n)
            break;
        size_t st = i;
        while (i < n && s[i] != ',' && s[i] != ' ' && s[i] != '\t')
            i++;
        const char *e = s + st;
        size_t el = i - st;
        count++;
        if (el == 1 && e[0] == '*') {
            out->all = 1;
            continue;
        }
        av_noproxy_rule r;
        if (noproxy_entry(e, el, &r) != AV_OK) {
            av__errf(why, why_len,
                     "invalid entry \"%.*s\" (expected *, a host name, .suffix, an IP address or CIDR range, "
                     "optionally with :port)",
                     (int)(el > 80 ? 80 : el), e);
            av__noproxy_free(out);
            return AV_ERR_INVALID;
        }
        av_noproxy_rule *nr = av__realloc(out->rules, (out->n + 1) * sizeof(*nr));
        if (!nr) {
            av__noproxy_free(out);
            return AV_ERR_NOMEM;
        }
        out->rules = nr;
        out->rules[out->n++] = r;
    }
    if (out->all && count > 1) {
        av__errf(why, why_len, "\"*\" must be the whole value (it means: never use the parent)");
        av__noproxy_free(out);
        return AV_ERR_INVALID;
    }
    return AV_OK;
}

/* |host| is |suffix| or ends with "." + |suffix|. */
static int host_suffix_match(const char *host, const char *suffix)
{
    size_t hl = strlen(host), sl = strlen(suffix);
    if (hl == sl)
        return strcmp(host, suffix) == 0;
    return hl > sl && host[hl - sl - 1] == '.' && strcmp(host + hl - sl, suffix) == 0;
}

int av__noproxy_match(const av_noproxy *np, const av_authority *dest)
{
    if (!np)
        return 0;
    if (np->all)
        return 1;
    struct sockaddr_storage ss;
    int have_addr = 0;
    if (dest->is_ip) {
        memset(&ss, 0, sizeof(ss));
        if (dest->is_ip == 4) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
            s4->sin_family = AF_INET;
            have_addr = inet_pton(AF_INET, dest->host, &s4->sin_addr) == 1;
        } else {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
            s6->sin6_family = AF_INET6;
            have_addr = inet_pton(AF_INET6, dest->host, &s6->sin6_addr) == 1;
        }
    }
    for (size_t i = 0; i < np->n; i++) {
        const av_noproxy_rule *r = &np->rules[i];
        if (r->kind == AV_NP_CIDR) {
            if (have_addr && av__cidr_contains(&r->cidr, (const struct sockaddr *)&ss))
                return 1;
            continue;
        }
        if (r->port && r->port != dest->port)
            continue;
        if (dest->is_ip ? strcmp(r->host, dest->host) == 0 : host_suffix_match(dest->host, r->host))
            return 1;
    }
    return 0;
}

/* ---- HTTP CONNECT -------------------------------------------------------- */

int av__parent_connect_request(av_buf *out, const char *host, int port, const uint8_t *auth, size_t auth_len)
{
    char h[AV_HOST_MAX + 1];
    size_t hl = strlen(host);
    int kind = av__host_validate(host, hl, h);
    if (kind < 0 || port < 1 || port > 65535)
        return AV_ERR_INVALID;
    char target[AV_HOST_MAX + 16];
    snprintf(target, sizeof(target), kind == 6 ? "[%s]:%d" : "%s:%d", h, port);
    int rc = av__buf_appendf(out, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", target, target);
    if (rc)
        return rc;
    if (auth) {
        if (!av__parent_auth_valid(auth, auth_len))
            return AV_ERR_INVALID;
        size_t el = av__b64_encoded_len(auth_len, 0);
        rc = av__buf_append_str(out, "Proxy-Authorization: Basic ");
        uint8_t *w = rc ? NULL : av__buf_reserve(out, el, &rc);
        if (!w)
            return rc;
        av__buf_commit(out, av__b64_encode(auth, auth_len, 0, (char *)w));
        rc = av__buf_append_str(out, "\r\n");
        if (rc)
            return rc;
    }
    return av__buf_append_str(out, "\r\n");
}

int av__parent_parse_response(const uint8_t *p, size_t n, int *status, char *reason, size_t reason_cap)
{
    /* the end of the head: an empty line */
    size_t lim = n < AV_PARENT_HEAD_MAX ? n : AV_PARENT_HEAD_MAX;
    size_t end = 0;
    for (size_t i = 0; i < lim; i++) {
        if (p[i] != '\n')
            continue;
        if (i + 1 < n && p[i + 1] == '\n') {
            end = i + 2;
            break;
        }
        if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n') {
            end = i + 3;
            break;
        }
    }
    /* The status line can be judged before the head is complete. */
    const char *v = "HTTP/1.";
    for (size_t i = 0; i < 7 && i < n; i++)
        if (p[i] != (uint8_t)v[i])
            return AV_ERR_PARSE;
    if (!end)
        return n >= AV_PARENT_HEAD_MAX ? AV_ERR_LIMIT : 0;
    if (end > AV_PARENT_HEAD_MAX)
        return AV_ERR_LIMIT;
    if (end < 13 || (p[7] != '0' && p[7] != '1') || p[8] != ' ')
        return AV_ERR_PARSE;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9')
            return AV_ERR_PARSE;
        st = st * 10 + (p[i] - '0');
    }
    if (st < 100 || (p[12] != ' ' && p[12] != '\r' && p[12] != '\n'))
        return AV_ERR_PARSE;
    /* the reason phrase: to the end of the line, printable only */
    size_t r0 = p[12] == ' ' ? 13 : 12, r1 = r0;
    while (r1 < end && p[r1] != '\r' && p[r1] != '\n')
        r1++;
    size_t o = 0;
    for (size_t i = r0; i < r1 && o + 1 < reason_cap; i++)
        reason[o++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
    if (reason_cap)
        reason[o] = '\0';
    /* every field line: no control bytes other than CR before LF and HTAB */
    for (size_t i = r1; i < end; i++) {
        uint8_t c = p[i];
        if (c == '\n' || c == '\t')
            continue;
        if (c == '\r' && i + 1 < end && p[i + 1] == '\n')
            continue;
        if (c < 0x20 || c == 0x7f)
            return AV_ERR_PARSE;
    }
    *status = st;
    return (int)end;
}

/* ---- SOCKS5 ------------------------------------------------------------- */

size_t av__socks5_greeting(uint8_t out[4], int auth)
{
    out[0] = 5;
    if (!auth) {
        out[1] = 1;
        out[2] = 0;
        return 3;
    }
    out[1] = 2;
    out[2] = 0;
    out[3] = 2;
    return 4;
}

int av__socks5_parse_method(const uint8_t *p, size_t n, int *method)
{
    if (n >= 1 && p[0] != 5)
        return AV_ERR_PARSE;
    if (n < 2)
        return 0;
    *method = p[1];
    return 2;
}

int av__socks5_auth_request(uint8_t *out, size_t cap, const uint8_t *cred, size_t len)
{
    if (!av__parent_auth_valid(cred, len) || cap < 3 + len)
        return AV_ERR_INVALID;
    const uint8_t *colon = memchr(cred, ':', len);
    size_t ul = (size_t)(colon - cred), pl = len - ul - 1;
    out[0] = 1;
    out[1] = (uint8_t)ul;
    memcpy(out + 2, cred, ul);
    out[2 + ul] = (uint8_t)pl;
    memcpy(out + 3 + ul, colon + 1, pl);
    return (int)(3 + ul + pl);
}

int av__socks5_parse_auth(const uint8_t *p, size_t n, int *status)
{
    if (n >= 1 && p[0] != 1)
        return AV_ERR_PARSE;
    if (n < 2)
        return 0;
    *status = p[1];
    return 2;
}

int av__socks5_connect_request(uint8_t *out, size_t cap, const struct sockaddr *sa, const char *name, int port)
{
    if (cap < 262)
        return AV_ERR_INVALID;
    size_t o = 0;
    out[o++] = 5;
    out[o++] = 1; /* CONNECT */
    out[o++] = 0;
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        out[o++] = 1;
        memcpy(out + o, &s4->sin_addr, 4);
        o += 4;
        memcpy(out + o, &s4->sin_port, 2);
        return (int)(o + 2);
    }
    if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        out[o++] = 4;
        memcpy(out + o, &s6->sin6_addr, 16);
        o += 16;
        memcpy(out + o, &s6->sin6_port, 2);
        return (int)(o + 2);
    }
    if (sa || !name || port < 1 || port > 65535)
        return AV_ERR_INVALID;
    char h[AV_HOST_MAX + 1];
    size_t nl = strlen(name);
    if (av__host_validate(name, nl, h) != 0 || nl > 255)
        return AV_ERR_INVALID; /* names only: addresses go as ATYP 01/04 */
    out[o++] = 3;
    out[o++] = (uint8_t)nl;
    memcpy(out + o, h, nl);
    o += nl;
    out[o++] = (uint8_t)(port >> 8);
    out[o++] = (uint8_t)(port & 0xff);
    return (int)o;
}

int av__socks5_parse_reply(const uint8_t *p, size_t n, int *rep)
{
    if (n >= 1 && p[0] != 5)
        return AV_ERR_PARSE;
    if (n >= 3 && p[2] != 0)
        return AV_ERR_PARSE;
    if (n < 5)
        return 0;
    size_t need;
    switch (p[3]) {
    case 1:
        need = 4 + 4 + 2;
        break;
    case 4:
        need = 4 + 16 + 2;
        break;
    case 3:
        if (p[4] == 0)
            return AV_ERR_PARSE;
        need = 4 + 1 + p[4] + 2;
        break;
    default:
        return AV_ERR_PARSE;
    }
    if (n < need)
        return 0;
    *rep = p[1];
    return (int)need;
}

const char *av__socks5_rep_name(int rep)
{
    static const char *const names[] = {
        "succeeded", "general failure", "connection not allowed by ruleset", "network unreachable",
        "host unreachable", "connection refused", "TTL expired", "command not supported",
        "address type not supported",
    };
    if (rep >= 0 && (size_t)rep < sizeof(names) / sizeof(names[0]))
        return names[rep];
    return "unknown reply code";
}

/* ---- the table ------------------------------------------------------------ */

av_parent *av__parent_ref(av_parent *p)
{
    if (p)
        atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void av__parent_unref(av_parent *p)
{
    if (!p || atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) > 1)
        return;
    av__secret_free(p->auth);
    av__free(p);
}

const char *av__parent_scheme(int kind)
{
    switch (kind) {
    case AV_PARENT_HTTPS:
        return "https";
    case AV_PARENT_SOCKS5:
        return "socks5";
    case AV_PARENT_SOCKS5H:
        return "socks5h";
    default:
        return "http";
    }
}

/* parent_new makes a parent from URL text. |what| names the setting in
 * messages; |auth_ref| (a secret reference) or the env URL's userinfo is
 * the credential. */
static int parent_new(const char *url, unsigned flags, const char *auth_ref, av_resolver *r, const char *what,
                      av_parent **out, char *err, size_t err_len)
{
    av_parent_url u;
    const char *why = "";
    if (av__parent_url_parse(url, strlen(url), flags, &u, &why) != AV_OK) {
        av__errf(err, err_len, "%s: %s", what, why);
        return AV_ERR_CONFIG;
    }
    av_parent *p = av__calloc(1, sizeof(*p));
    if (!p)
        return AV_ERR_NOMEM;
    atomic_init(&p->refs, 1);
    p->kind = u.kind;
    memcpy(p->host, u.host, sizeof(p->host));
    p->is_ip = u.is_ip;
    p->port = u.port;
    snprintf(p->label, sizeof(p->label), u.is_ip == 6 ? "[%s]:%d" : "%s:%d", u.host, u.port);
    if (auth_ref) {
        char why2[200];
        int rc = av__resolver_get(r, auth_ref, &p->auth, why2, sizeof(why2));
        if (rc) {
            av__errf(err, err_len, "%s credential: %s", what, why2);
            av__parent_unref(p);
            return rc == AV_ERR_NOMEM ? rc : AV_ERR_CONFIG;
        }
        if (!av__parent_auth_valid(av__secret_data(p->auth), av__secret_len(p->auth))) {
            av__errf(err, err_len,
                     "%s credential: the secret must be user:password (a non-empty user without ':', each part "
                     "1..255 bytes, no control characters)",
                     what);
            av__parent_unref(p);
            return AV_ERR_CONFIG;
        }
    } else if (u.userinfo) {
        uint8_t cred[AV_PARENT_AUTH_MAX];
        int cl = av__parent_userinfo_decode(u.userinfo, u.userinfo_len, cred, sizeof(cred));
        if (cl < 0) {
            av__wipe(cred, sizeof(cred));
            av__errf(err, err_len, "%s: the URL's credentials must be user:password (percent-encoded)", what);
            av__parent_unref(p);
            return AV_ERR_CONFIG;
        }
        p->auth = av__secret_new(cred, (size_t)cl);
        av__wipe(cred, sizeof(cred));
        if (!p->auth) {
            av__parent_unref(p);
            return AV_ERR_NOMEM;
        }
    }
    /* The pool-key id: the parent's identity and which credential it uses
     * (the reference, or for a URL's userinfo a digest of it), never the
     * credential itself in readable form. */
    uint8_t h[AV_SHA256_LEN];
    char idsrc[AV_HOST_MAX + 600];
    int il = snprintf(idsrc, sizeof(idsrc), "%s|%s|%d|%s", av__parent_scheme(p->kind), p->host, p->port,
                      auth_ref ? auth_ref : u.userinfo ? "url" : "-");
    if (il < 0 || (size_t)il >= sizeof(idsrc))
        il = (int)sizeof(idsrc) - 1;
    if (av__crypto_sha256(idsrc, (size_t)il, h) != 0) {
        av__parent_unref(p);
        return AV_ERR_NOMEM;
    }
    if (u.userinfo && !auth_ref) {
        /* a URL credential that changes makes another parent */
        uint8_t h2[AV_SHA256_LEN + AV_SHA256_LEN];
        memcpy(h2, h, AV_SHA256_LEN);
        if (av__crypto_sha256(av__secret_data(p->auth), av__secret_len(p->auth), h2 + AV_SHA256_LEN) != 0 ||
            av__crypto_sha256(h2, sizeof(h2), h) != 0) {
            av__wipe(h2, sizeof(h2));
            av__parent_unref(p);
            return AV_ERR_NOMEM;
        }
        av__wipe(h2, sizeof(h2));
    }
    p->id[0] = 'p';
    av__hex_encode(h, 8, AV__HEX_LOWER, p->id + 1);
    p->id[17] = '\0';
    *out = p;
    return AV_OK;
}

void av__parents_free(av_parents *t)
{
    if (!t)
        return;
    av__parent_unref(t->global);
    for (size_t i = 0; i < t->nsvc; i++)
        if (t->svc)
            av__parent_unref(t->svc[i]);
    av__free(t->svc);
    av__free(t->svc_direct);
    av__free(t->svc_name);
    av__noproxy_free(&t->noproxy);
    av__free(t);
}

/* env_first: the first of |names| set to a non-empty value. */
static const char *env_first(av_getenv_fn get, const char *const *names, const char **which)
{
    for (size_t i = 0; names[i]; i++) {
        const char *v = get ? get(names[i]) : NULL;
        if (v && *v) {
            *which = names[i];
            return v;
        }
    }
    return NULL;
}

int av__parents_new(const av_config *cfg, av_resolver *r, av_getenv_fn getenv_fn, av_parents **out, char *err,
                    size_t err_len)
{
    *out = NULL;
    int any = cfg->upstream_proxy != NULL;
    for (size_t i = 0; i < cfg->nservices && !any; i++)
        any = cfg->services[i].upstream_proxy != NULL;
    if (!any)
        return AV_OK;
    av_parents *t = av__calloc(1, sizeof(*t));
    if (!t)
        return AV_ERR_NOMEM;
    int rc = AV_ERR_NOMEM;
    if (cfg->nservices) {
        t->svc = av__calloc(cfg->nservices, sizeof(*t->svc));
        t->svc_direct = av__calloc(cfg->nservices, 1);
        t->svc_name = av__calloc(cfg->nservices, sizeof(*t->svc_name));
        if (!t->svc || !t->svc_direct || !t->svc_name)
            goto fail;
        t->nsvc = cfg->nservices;
    }
    const char *np = cfg->upstream_no_proxy;
    const char *np_what = "upstream_no_proxy";
    if (cfg->upstream_proxy && strcmp(cfg->upstream_proxy, "env") == 0) {
        static const char *const proxy_vars[] = {"HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", NULL};
        static const char *const np_vars[] = {"NO_PROXY", "no_proxy", NULL};
        const char *which = "";
        const char *url = env_first(getenv_fn, proxy_vars, &which);
        if (url) {
            char what[80];
            snprintf(what, sizeof(what), "upstream_proxy = env: %s", which);
            rc = parent_new(url, AV_PARENT_URL_ENV, cfg->upstream_proxy_auth, r, what, &t->global, err, err_len);
            if (rc)
                goto fail;
        }
        if (!np) {
            const char *np_which = "";
            np = env_first(getenv_fn, np_vars, &np_which);
            np_what = np_which;
        }
    } else if (cfg->upstream_proxy && strcmp(cfg->upstream_proxy, "direct") != 0) {
        rc = parent_new(cfg->upstream_proxy, 0, cfg->upstream_proxy_auth, r, "upstream_proxy", &t->global, err,
                        err_len);
        if (rc)
            goto fail;
    }
    if (np) {
        char why[200];
        rc = av__noproxy_parse(np, strlen(np), &t->noproxy, why, sizeof(why));
        if (rc == AV_ERR_INVALID) {
            av__errf(err, err_len, "%s: %s", np_what, why);
            rc = AV_ERR_CONFIG;
        }
        if (rc)
            goto fail;
    }
    for (size_t i = 0; i < cfg->nservices; i++) {
        const av_service *s = &cfg->services[i];
        t->svc_name[i] = s->name;
        if (!s->upstream_proxy)
            continue;
        if (strcmp(s->upstream_proxy, "direct") == 0) {
            t->svc_direct[i] = 1;
            continue;
        }
        char what[120];
        snprintf(what, sizeof(what), "service %s: upstream_proxy", s->name);
        rc = parent_new(s->upstream_proxy, 0, s->upstream_proxy_auth, r, what, &t->svc[i], err, err_len);
        if (rc)
            goto fail;
    }
    *out = t;
    return AV_OK;
fail:
    av__parents_free(t);
    return rc;
}

av_parent *av__parents_route(const av_parents *t, const char *scope, const av_authority *dest)
{
    if (!t)
        return NULL;
    const char *slash = scope ? strchr(scope, '/') : NULL;
    if (slash) {
        size_t nl = (size_t)(slash - scope);
        for (size_t i = 0; i < t->nsvc; i++) {
            if (!t->svc_name[i] || strlen(t->svc_name[i]) != nl || memcmp(t->svc_name[i], scope, nl) != 0)
                continue;
            if (t->svc_direct[i])
                return NULL;
            if (t->svc[i])
                return t->svc[i]; /* the operator chose it: no_proxy does not apply */
            break;
        }
    }
    if (!t->global || av__noproxy_match(&t->noproxy, dest))
        return NULL;
    return t->global;
}
