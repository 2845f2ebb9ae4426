/* fuzz_parent.c - libFuzzer target for the parent-proxy parsers
 * (av_parent): the CONNECT answer head (whole and fed in pieces: the same
 * verdict, the head never past the cap, the reason printable), the SOCKS5
 * replies (consumed exactly, never more than given), parent URLs and their
 * userinfo, and no_proxy lists (whatever parses matches without reading
 * past its rules). The first byte picks the parser; the rest is the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_parent.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_response(const uint8_t *p, size_t n)
{
    int st = -1;
    char reason[80];
    int rc = av__parent_parse_response(p, n, &st, reason, sizeof(reason));
    CHECK(rc == 0 || rc == AV_ERR_PARSE || rc == AV_ERR_LIMIT || rc > 0);
    if (rc > 0) {
        CHECK((size_t)rc <= n && rc <= AV_PARENT_HEAD_MAX);
        CHECK(st >= 100 && st <= 999);
        for (const char *q = reason; *q; q++)
            CHECK(*q >= 0x20 && *q < 0x7f);
        CHECK(p[rc - 1] == '\n');
    }
    /* fed byte by byte growing prefixes: incomplete until the verdict */
    rng r;
    rng_seed(&r, p, n);
    size_t have = 0;
    int seen = 0;
    while (have < n) {
        have += rng_step(&r, 64);
        if (have > n)
            have = n;
        int st2 = -1;
        char reason2[80];
        int rc2 = av__parent_parse_response(p, have, &st2, reason2, sizeof(reason2));
        if (rc2 != 0) {
            if (rc > 0 && rc2 > 0) {
                CHECK(rc2 == rc && st2 == st && strcmp(reason, reason2) == 0);
            }
            seen = 1;
            break;
        }
    }
    CHECK(seen || rc == 0);
}

static void fuzz_socks(const uint8_t *p, size_t n)
{
    int v = -1;
    int rc = av__socks5_parse_reply(p, n, &v);
    CHECK(rc == 0 || rc == AV_ERR_PARSE || (rc >= 8 && (size_t)rc <= n && v >= 0 && v <= 255));
    if (rc > 0)
        CHECK(av__socks5_parse_reply(p, (size_t)rc - 1, &v) == 0);
    rc = av__socks5_parse_method(p, n, &v);
    CHECK(rc == 0 || rc == AV_ERR_PARSE || (rc == 2 && n >= 2));
    rc = av__socks5_parse_auth(p, n, &v);
    CHECK(rc == 0 || rc == AV_ERR_PARSE || (rc == 2 && n >= 2));
    (void)av__socks5_rep_name(n ? p[0] : 0);
    uint8_t out[600];
    int al = av__socks5_auth_request(out, sizeof(out), p, n);
    CHECK(al == AV_ERR_INVALID || (al > 3 && (size_t)al == n + 2));
}

static void fuzz_url(const uint8_t *p, size_t n, unsigned flags)
{
    av_parent_url u;
    const char *why = NULL;
    int rc = av__parent_url_parse((const char *)p, n, flags, &u, &why);
    if (rc != AV_OK) {
        CHECK(rc == AV_ERR_INVALID && why && *why);
        return;
    }
    CHECK(u.kind >= AV_PARENT_HTTP && u.kind <= AV_PARENT_SOCKS5H);
    CHECK(u.port >= 1 && u.port <= 65535);
    CHECK(u.host[0] != '\0');
    CHECK(flags || !u.userinfo);
    /* the host goes into a CONNECT line: it must build one */
    av_buf b;
    av__buf_init(&b, 4096);
    CHECK(av__parent_connect_request(&b, u.host, u.port, NULL, 0) == AV_OK);
    /* exactly three line ends: the request line, Host, the empty line */
    size_t crlf = 0;
    for (size_t i = 0; i < b.len; i++) {
        uint8_t c = av__buf_head(&b)[i];
        CHECK(c >= 0x20 || c == '\r' || c == '\n');
        if (c == '\r') {
            CHECK(i + 1 < b.len && av__buf_head(&b)[i + 1] == '\n');
            crlf++;
        } else if (c == '\n') {
            CHECK(i > 0 && av__buf_head(&b)[i - 1] == '\r');
        }
    }
    CHECK(crlf == 3);
    av__buf_free(&b);
    if (u.userinfo) {
        uint8_t cred[AV_PARENT_AUTH_MAX];
        int cl = av__parent_userinfo_decode(u.userinfo, u.userinfo_len, cred, sizeof(cred));
        CHECK(cl == AV_ERR_INVALID || (cl > 2 && av__parent_auth_valid(cred, (size_t)cl)));
    }
}

static void fuzz_no_proxy(const uint8_t *p, size_t n)
{
    av_noproxy np;
    char why[200];
    int rc = av__noproxy_parse((const char *)p, n, &np, why, sizeof(why));
    if (rc != AV_OK) {
        CHECK(rc == AV_ERR_INVALID || rc == AV_ERR_NOMEM);
        return;
    }
    av_authority d;
    memset(&d, 0, sizeof(d));
    strcpy(d.host, "api.example.com");
    d.port = 443;
    (void)av__noproxy_match(&np, &d);
    strcpy(d.host, "10.1.2.3");
    d.is_ip = 4;
    (void)av__noproxy_match(&np, &d);
    for (size_t i = 0; i < np.n; i++) {
        if (np.rules[i].kind != AV_NP_HOST)
            continue;
        /* every host rule matches its own host */
        memset(&d, 0, sizeof(d));
        strcpy(d.host, np.rules[i].host);
        char h[AV_HOST_MAX + 1];
        d.is_ip = av__host_validate(d.host, strlen(d.host), h);
        CHECK(d.is_ip >= 0);
        d.port = np.rules[i].port ? np.rules[i].port : 443;
        CHECK(av__noproxy_match(&np, &d) == 1);
    }
    av__noproxy_free(&np);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 20000)
        return 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    switch (data[0] % 5) {
    case 0:
        fuzz_response(p, n);
        break;
    case 1:
        fuzz_socks(p, n);
        break;
    case 2:
        fuzz_url(p, n, 0);
        break;
    case 3:
        fuzz_url(p, n, AV_PARENT_URL_ENV);
        break;
    default:
        fuzz_no_proxy(p, n);
        break;
    }
    return 0;
}
