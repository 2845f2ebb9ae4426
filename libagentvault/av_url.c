/* av_url.c - destination identity: host names, authorities, absolute URIs.
 *
 * Everything here is strict by design (SECURITY.md 1-3): input that a
 * lenient parser would "repair" is rejected instead.
 */
#include "av_url.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"

/* is_alpha / is_digit / is_ldh classify ASCII bytes without locale. */
static int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_ldh(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || c == '-';
}

static unsigned char to_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* ipv4_canonical accepts exactly four dot-separated decimal parts of
 * 1..3 digits, no leading zeros, each <= 255. Returns 1 or 0. */
static int ipv4_canonical(const char *in, size_t len)
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= len || in[i] != '.')
                return 0;
            i++;
        }
        size_t start = i;
        unsigned v = 0;
        while (i < len && is_digit((unsigned char)in[i]) && i - start < 3) {
            v = v * 10 + (unsigned)(in[i] - '0');
            i++;
        }
        size_t n = i - start;
        if (n == 0 || v > 255 || (n > 1 && in[start] == '0'))
            return 0;
    }
    return i == len;
}

/* label_is_numeric reports whether a label "looks like a number" in the
 * WHATWG URL sense (all decimal digits, or 0x followed by hex digits): a
 * host ending in such a label must be a canonical IPv4 address. */
static int label_is_numeric(const char *l, size_t n)
{
    if (n == 0)
        return 0;
    if (n >= 2 && l[0] == '0' && (l[1] == 'x' || l[1] == 'X')) {
        for (size_t i = 2; i < n; i++)
            if (av__hex_value((unsigned char)l[i]) < 0)
                return 0;
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        if (!is_digit((unsigned char)l[i]))
            return 0;
    return 1;
}

/* ipv6_canonical parses a bracket-less IPv6 literal with inet_pton and
 * writes its inet_ntop form. Zone ids ('%') are rejected. */
static int ipv6_canonical(const char *in, size_t len, char *out)
{
    char tmp[INET6_ADDRSTRLEN];
    struct in6_addr a;
    if (len == 0 || len >= sizeof(tmp))
        return AV_ERR_INVALID;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (av__hex_value(c) < 0 && c != ':' && c != '.')
            return AV_ERR_INVALID;
    }
    memcpy(tmp, in, len);
    tmp[len] = '\0';
    if (inet_pton(AF_INET6, tmp, &a) != 1)
        return AV_ERR_INVALID;
    if (!inet_ntop(AF_INET6, &a, out, AV_HOST_MAX + 1))
        return AV_ERR_INVALID;
    return 6;
}

/* av__host_validate checks and lower-cases a bare host into |out|. */
int av__host_validate(const char *in, size_t len, char *out)
{
    if (!in || !out || len == 0 || len > AV_HOST_MAX)
        return AV_ERR_INVALID;
    if (memchr(in, ':', len))
        return ipv6_canonical(in, len, out);

    /* DNS name or IPv4: LDH labels separated by single dots. */
    size_t label_start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || in[i] == '.') {
            size_t n = i - label_start;
            if (n == 0 || n > 63)
                return AV_ERR_INVALID;
            if (in[label_start] == '-' || in[i - 1] == '-')
                return AV_ERR_INVALID;
            if (i < len)
                label_start = i + 1;
            continue;
        }
        if (!is_ldh((unsigned char)in[i]))
            return AV_ERR_INVALID;
    }
    /* in[label_start..len) is the last label. */
    if (label_is_numeric(in + label_start, len - label_start)) {
        if (!ipv4_canonical(in, len))
            return AV_ERR_INVALID;
        memcpy(out, in, len);
        out[len] = '\0';
        return 4;
    }
    for (size_t i = 0; i < len; i++)
        out[i] = (char)to_lower((unsigned char)in[i]);
    out[len] = '\0';
    return 0;
}

int av__port_parse(const char *p, size_t n)
{
    if (n == 0 || n > 5)
        return AV_ERR_INVALID;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit((unsigned char)p[i]))
            return AV_ERR_INVALID;
        v = v * 10 + (p[i] - '0');
    }
    if (v < 1 || v > 65535)
        return AV_ERR_INVALID;
    return v;
}

/* av__authority_parse parses "host[:port]" / "[v6][:port]". */
int av__authority_parse(const char *in, size_t len, int default_port, av_authority *out)
{
    if (!in || !out || len == 0 || memchr(in, '@', len))
        return AV_ERR_INVALID;
    const char *host, *port = NULL;
    size_t host_len, port_len = 0;
    int want_v6 = 0;

    if (in[0] == '[') {
        const char *close = memchr(in, ']', len);
        if (!close)
            return AV_ERR_INVALID;
        host = in + 1;
        host_len = (size_t)(close - host);
        size_t rest = len - (size_t)(close + 1 - in);
        if (rest > 0) {
            if (close[1] != ':')
                return AV_ERR_INVALID;
            port = close + 2;
            port_len = rest - 1;
            if (port_len == 0)
                return AV_ERR_INVALID;
        }
        want_v6 = 1;
    } else {
        const char *colon = memchr(in, ':', len);
        host = in;
        host_len = colon ? (size_t)(colon - in) : len;
        if (colon) {
            port = colon + 1;
            port_len = len - host_len - 1;
            if (port_len == 0)
                return AV_ERR_INVALID;
        }
    }

    av_authority a;
    memset(&a, 0, sizeof(a));
    int kind = av__host_validate(host, host_len, a.host);
    if (kind < 0 || (want_v6 != (kind == 6)))
        return AV_ERR_INVALID;
    a.is_ip = kind;
    if (port) {
        a.port = av__port_parse(port, port_len);
        if (a.port < 0)
            return AV_ERR_INVALID;
    } else {
        if (default_port < 1 || default_port > 65535)
            return AV_ERR_INVALID;
        a.port = default_port;
    }
    *out = a;
    return AV_OK;
}

/* av__authority_equal compares two parsed authorities. Returns 1 or 0. */
int av__authority_equal(const av_authority *a, const av_authority *b)
{
    return a->port == b->port && a->is_ip == b->is_ip && strcmp(a->host, b->host) == 0;
}

/* av__authority_format writes "host:port" or just the host when the port
 * equals |omit_port|. Returns the length or AV_ERR_LIMIT. */
int av__authority_format(const av_authority *a, int omit_port, char *buf, size_t len)
{
    /* Runs twice per exchange: no snprintf. */
    size_t hl = strlen(a->host);
    char port[24];
    size_t pl = 0;
    if (a->port != omit_port) {
        port[0] = ':';
        pl = 1 + av__u64_dec(port + 1, (unsigned)a->port);
    }
    int v6 = a->is_ip == 6;
    size_t n = hl + pl + (v6 ? 2 : 0);
    if (!buf || n >= len) {
        if (buf && len)
            buf[0] = '\0';
        return AV_ERR_LIMIT;
    }
    char *p = buf;
    if (v6)
        *p++ = '[';
    memcpy(p, a->host, hl);
    p += hl;
    if (v6)
        *p++ = ']';
    memcpy(p, port, pl);
    p[pl] = '\0';
    return (int)n;
}

/* default_port_for gives the well-known port of a (lower-case) scheme, or
 * 0 when the scheme has none we know (then the port is required). */
static int default_port_for(const char *scheme)
{
    if (!strcmp(scheme, "http") || !strcmp(scheme, "ws"))
        return 80;
    if (!strcmp(scheme, "https") || !strcmp(scheme, "wss"))
        return 443;
    if (!strcmp(scheme, "ftp"))
        return 21;
    return 0;
}

/* av__absolute_uri_parse parses "scheme://authority[/path][?query]".
 * A query directly after the authority ("http://h?q") is rejected: there
 * is no "/" in the input for |path| to point at. */
int av__absolute_uri_parse(const char *in, size_t len, av_absolute_uri *out)
{
    if (!in || !out || len == 0 || !is_alpha((unsigned char)in[0]))
        return AV_ERR_NOTFOUND;
    size_t i = 1;
    while (i < len) {
        unsigned char c = (unsigned char)in[i];
        if (!(is_alpha(c) || is_digit(c) || c == '+' || c == '-' || c == '.'))
            break;
        i++;
    }
    if (i >= len || in[i] != ':')
        return AV_ERR_NOTFOUND;
    size_t scheme_len = i;
    if (scheme_len >= sizeof(out->scheme))
        return AV_ERR_INVALID;
    if (len - i < 3 || in[i + 1] != '/' || in[i + 2] != '/')
        return AV_ERR_INVALID;

    av_absolute_uri u;
    memset(&u, 0, sizeof(u));
    for (size_t k = 0; k < scheme_len; k++)
        u.scheme[k] = (char)to_lower((unsigned char)in[k]);
    u.scheme[scheme_len] = '\0';

    size_t auth_start = i + 3, auth_end = auth_start;
    while (auth_end < len && in[auth_end] != '/' && in[auth_end] != '?' && in[auth_end] != '#')
        auth_end++;
    if (av__authority_parse(in + auth_start, auth_end - auth_start,
                            default_port_for(u.scheme), &u.authority) != AV_OK)
        return AV_ERR_INVALID;

    if (auth_end == len) {
        u.path = "/";
        u.path_len = 1;
    } else {
        if (in[auth_end] != '/')
            return AV_ERR_INVALID;
        if (!av__origin_form_valid(in + auth_end, len - auth_end))
            return AV_ERR_INVALID;
        u.path = in + auth_end;
        u.path_len = len - auth_end;
    }
    *out = u;
    return AV_OK;
}

/* av__origin_form_valid returns 1 for "/" followed by visible ASCII with
 * no '#', else 0. */
int av__origin_form_valid(const char *in, size_t len)
{
    if (!in || len == 0 || in[0] != '/')
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c < 0x21 || c > 0x7e || c == '#')
            return 0;
    }
    return 1;
}

/* ci_equal compares two byte ranges case-insensitively (ASCII). */
static int ci_equal(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (to_lower((unsigned char)a[i]) != to_lower((unsigned char)b[i]))
            return 0;
    return 1;
}

/* av__host_match_pattern: exact, or "*.suffix" plus exactly one label.
 * Returns 1 or 0. */
int av__host_match_pattern(const char *pattern, const char *host)
{
    if (!pattern || !host)
        return 0;
    size_t pl = strlen(pattern), hl = strlen(host);
    if (pl >= 2 && pattern[0] == '*' && pattern[1] == '.') {
        const char *suffix = pattern + 1; /* ".suffix" */
        size_t sl = pl - 1;
        if (sl < 2 || hl <= sl)
            return 0;
        const char *tail = host + (hl - sl);
        if (!ci_equal(tail, suffix, sl))
            return 0;
        /* The part before ".suffix" must be one non-empty label. */
        size_t ll = hl - sl;
        return ll > 0 && memchr(host, '.', ll) == NULL && memchr(host, '*', ll) == NULL;
    }
    return pl == hl && ci_equal(pattern, host, pl);
}

/* av__glob_match: '*' matches any run of bytes. Iterative with a single
 * backtrack point, so O(len(glob) * n) in the worst case. */
int av__glob_match(const char *glob, const char *s, size_t n)
{
    if (!glob || (!s && n))
        return 0;
    size_t gi = 0, si = 0;
    size_t star_g = (size_t)-1, star_s = 0;
    while (si < n) {
        if (glob[gi] == '*') {
            while (glob[gi] == '*')
                gi++;
            if (glob[gi] == '\0')
                return 1;
            star_g = gi;
            star_s = si;
        } else if (glob[gi] != '\0' && glob[gi] == s[si]) {
            gi++;
            si++;
        } else if (star_g != (size_t)-1) {
            gi = star_g;
            si = ++star_s;
        } else {
            return 0;
        }
    }
    while (glob[gi] == '*')
        gi++;
    return glob[gi] == '\0';
}
