/* av_ssrf.c - destination address guard. */
#include "av_ssrf.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_url.h"

typedef struct v4_range {
    uint32_t net;
    int prefix;
    const char *why;
} v4_range;

#define IP4(a, b, c, d) (((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) | ((uint32_t)(c) << 8) | (uint32_t)(d))

static const v4_range v4_blocked[] = {
    {IP4(169, 254, 169, 254), 32, "cloud metadata"},
    {IP4(0, 0, 0, 0), 8, "unspecified/this network"},
    {IP4(10, 0, 0, 0), 8, "private"},
    {IP4(100, 64, 0, 0), 10, "carrier-grade NAT"},
    {IP4(127, 0, 0, 0), 8, "loopback"},
    {IP4(169, 254, 0, 0), 16, "link-local"},
    {IP4(172, 16, 0, 0), 12, "private"},
    {IP4(192, 0, 0, 0), 24, "IETF protocol assignments"},
    {IP4(192, 0, 2, 0), 24, "documentation"},
    {IP4(192, 88, 99, 0), 24, "6to4 relay anycast"},
    {IP4(192, 168, 0, 0), 16, "private"},
    {IP4(198, 18, 0, 0), 15, "benchmarking"},
    {IP4(198, 51, 100, 0), 24, "documentation"},
    {IP4(203, 0, 113, 0), 24, "documentation"},
    {IP4(224, 0, 0, 0), 4, "multicast"},
    {IP4(240, 0, 0, 0), 4, "reserved/broadcast"},
};

static int v4_in(uint32_t a, uint32_t net, int prefix)
{
    uint32_t mask = prefix == 0 ? 0 : 0xffffffffu << (32 - prefix);
    return (a & mask) == (net & mask);
}

static int allowed_by(const av_cidr *allow, size_t nallow, const struct sockaddr *sa)
{
    for (size_t i = 0; i < nallow; i++)
        if (av__cidr_contains(&allow[i], sa))
            return 1;
    return 0;
}

static int check_v4(uint32_t a, const av_cidr *allow, size_t nallow, const char **why)
{
    for (size_t i = 0; i < sizeof(v4_blocked) / sizeof(v4_blocked[0]); i++) {
        if (!v4_in(a, v4_blocked[i].net, v4_blocked[i].prefix))
            continue;
        *why = v4_blocked[i].why;
        if (i == 0) /* metadata: never allowed */
            return AV_ERR_SSRF;
        struct sockaddr_in sin;
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(a);
        return allowed_by(allow, nallow, (const struct sockaddr *)&sin) ? AV_OK : AV_ERR_SSRF;
    }
    return AV_OK;
}

static uint32_t v4_at(const uint8_t *p)
{
    return IP4(p[0], p[1], p[2], p[3]);
}

static int prefix_eq(const uint8_t *a, const uint8_t *pfx, int bits)
{
    int bytes = bits / 8, rem = bits % 8;
    if (memcmp(a, pfx, (size_t)bytes) != 0)
        return 0;
    if (rem) {
        uint8_t mask = (uint8_t)(0xff << (8 - rem));
        return (a[bytes] & mask) == (pfx[bytes] & mask);
    }
    return 1;
}

int av__ssrf_check(const struct sockaddr *sa, const av_cidr *allow, size_t nallow, const char **why)
{
    static const char *dummy;
    if (!why)
        why = &dummy;
    *why = "";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        return check_v4(ntohl(s4->sin_addr.s_addr), allow, nallow, why);
    }
    if (sa->sa_family != AF_INET6) {
        *why = "unsupported address family";
        return AV_ERR_SSRF;
    }
    const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t zero[16];
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t sixto4[2] = {0x20, 0x02};
    static const uint8_t teredo[4] = {0x20, 0x01, 0, 0};

    /* Embedded IPv4 forms are judged by the IPv4 address they reach. */
    if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0)
        return check_v4(v4_at(a + 12), allow, nallow, why);
    if (memcmp(a, zero, 12) == 0 && memcmp(a, zero, 16) != 0 && !(a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 1))
        return check_v4(v4_at(a + 12), allow, nallow, why); /* IPv4-compatible (deprecated) */
    if (memcmp(a, sixto4, 2) == 0)
        return check_v4(v4_at(a + 2), allow, nallow, why);
    if (memcmp(a, teredo, 4) == 0) {
        /* Teredo: the client address is the bitwise inverse of the last 4 bytes. */
        uint8_t inv[4] = {(uint8_t)~a[12], (uint8_t)~a[13], (uint8_t)~a[14], (uint8_t)~a[15]};
        int rc = check_v4(v4_at(inv), allow, nallow, why);
        if (rc)
            return rc;
    }
    /* AWS IMDS over IPv6 is fd00:ec2::254. */
    static const uint8_t imds6[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
    if (memcmp(a, imds6, 16) == 0) {
        *why = "cloud metadata";
        return AV_ERR_SSRF;
    }
    static const struct {
        uint8_t pfx[16];
        int bits;
        const char *why;
    } blocked6[] = {
        {{0}, 128, "unspecified"},
        {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128, "loopback"},
        {{0, 0x64, 0xff, 0x9b, 0, 1}, 48, "NAT64 local-use"},
        {{0x01, 0x00}, 64, "discard-only"},
        {{0x20, 0x01, 0x00, 0x00}, 23, "IETF protocol assignments"},
        {{0x20, 0x01, 0x0d, 0xb8}, 32, "documentation"},
        {{0x3f, 0xff}, 20, "documentation"},
        {{0xfc, 0x00}, 7, "private (ULA)"},
        {{0xfe, 0x80}, 10, "link-local"},
        {{0xfe, 0xc0}, 10, "site-local"},
        {{0xff, 0x00}, 8, "multicast"},
    };
    for (size_t i = 0; i < sizeof(blocked6) / sizeof(blocked6[0]); i++) {
        if (prefix_eq(a, blocked6[i].pfx, blocked6[i].bits)) {
            *why = blocked6[i].why;
            return allowed_by(allow, nallow, sa) ? AV_OK : AV_ERR_SSRF;
        }
    }
    return AV_OK;
}

/* ---- allow_private ranges ------------------------------------------------ */

/* parse_prefix parses the 1..3 decimal digits of a prefix length. */
static int parse_prefix(const char *s, long *out)
{
    size_t n = strlen(s);
    long v = 0;
    if (n == 0 || n > 3)
        return AV_ERR_INVALID;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return AV_ERR_INVALID;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return AV_OK;
}

/* av__parse_cidr parses "10.0.0.0/8" or "fd00::/8" (no prefix: a single
 * address). Bits set beyond the prefix are rejected. */
int av__parse_cidr(const char *s, av_cidr *out)
{
    char tmp[INET6_ADDRSTRLEN + 1];
    if (!s || !out)
        return AV_ERR_INVALID;
    const char *slash = strchr(s, '/');
    size_t al = slash ? (size_t)(slash - s) : strlen(s);
    if (al == 0 || al >= sizeof(tmp))
        return AV_ERR_INVALID;
    memcpy(tmp, s, al);
    tmp[al] = '\0';

    av_cidr c;
    memset(&c, 0, sizeof(c));
    char canon[AV_HOST_MAX + 1];
    int kind = av__host_validate(tmp, al, canon);
    if (kind == 4) {
        c.family = AF_INET;
        if (inet_pton(AF_INET, canon, c.addr) != 1)
            return AV_ERR_INVALID;
    } else if (kind == 6) {
        c.family = AF_INET6;
        if (inet_pton(AF_INET6, canon, c.addr) != 1)
            return AV_ERR_INVALID;
    } else {
        return AV_ERR_INVALID;
    }
    int maxp = c.family == AF_INET ? 32 : 128;
    long pv = maxp;
    if (slash && (parse_prefix(slash + 1, &pv) != AV_OK || pv > maxp))
        return AV_ERR_INVALID;
    c.prefix = (int)pv;
    /* host bits must be zero */
    int bytes = maxp / 8;
    for (int i = 0; i < bytes; i++) {
        int bit0 = i * 8;
        uint8_t mask;
        if (bit0 + 8 <= c.prefix)
            mask = 0;
        else if (bit0 >= c.prefix)
            mask = 0xff;
        else
            mask = (uint8_t)(0xff >> (c.prefix - bit0));
        if (c.addr[i] & mask)
            return AV_ERR_INVALID;
    }
    *out = c;
    return AV_OK;
}

/* av__cidr_contains reports whether |sa| lies in |c|; IPv4-mapped IPv6
 * addresses are compared as IPv4, and IPv4 addresses match an IPv6 range
 * only through their mapped form and only when the range is at least /96
 * (so "::/0" does not silently allow all of IPv4). Returns 1 or 0. */
int av__cidr_contains(const av_cidr *c, const struct sockaddr *sa)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint8_t a4[4], a6[16];
    if (!c || !sa)
        return 0;
    if (sa->sa_family == AF_INET) {
        memcpy(a4, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        memcpy(a6, mapped, 12);
        memcpy(a6 + 12, a4, 4);
        if (c->family == AF_INET)
            return prefix_eq(c->addr, a4, c->prefix);
        return c->prefix >= 96 && prefix_eq(c->addr, a6, c->prefix);
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(a6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        if (c->family == AF_INET6)
            return prefix_eq(c->addr, a6, c->prefix);
        if (memcmp(a6, mapped, 12) == 0)
            return prefix_eq(c->addr, a6 + 12, c->prefix);
    }
    return 0;
}
