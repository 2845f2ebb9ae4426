/* test_parent.c - parent proxies: URLs, no_proxy, the CONNECT request and
 * answer, the SOCKS5 client messages, the table and its routing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_config.h"
#include "av_parent.h"
#include "av_resolver.h"

static int url(const char *s, unsigned flags, av_parent_url *u, const char **why)
{
    *why = "";
    return av__parent_url_parse(s, strlen(s), flags, u, why);
}

static void urls(void **state)
{
    (void)state;
    av_parent_url u;
    const char *why;
    assert_int_equal(url("http://Proxy.Corp.example:3128", 0, &u, &why), AV_OK);
    assert_int_equal(u.kind, AV_PARENT_HTTP);
    assert_string_equal(u.host, "proxy.corp.example");
    assert_int_equal(u.port, 3128);
    assert_int_equal(u.is_ip, 0);
    assert_null(u.userinfo);
    assert_int_equal(url("HTTPS://10.1.2.3:443/", 0, &u, &why), AV_OK);
    assert_int_equal(u.kind, AV_PARENT_HTTPS);
    assert_int_equal(u.is_ip, 4);
    assert_int_equal(url("socks5://[::1]:1080", 0, &u, &why), AV_OK);
    assert_int_equal(u.kind, AV_PARENT_SOCKS5);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.is_ip, 6);
    assert_int_equal(url("socks5h://s.example:1", 0, &u, &why), AV_OK);
    assert_int_equal(u.kind, AV_PARENT_SOCKS5H);

    static const struct {
        const char *in;
        const char *why;
    } bad[] = {
        {"ftp://p:21", "scheme"},
        {"socks4://p:1080", "scheme"},
        {"http://p.example", "explicit port"},
        {"http://p.example:0", "invalid port"},
        {"http://p.example:65536", "invalid port"},
        {"http://p.example:80x", "invalid port"},
        {"http://u:pw@p.example:3128", "upstream_proxy_auth"},
        {"http://p.example:3128/x", "no path"},
        {"http://p.example:3128?q", "no path"},
        {"http://p.example:3128#f", "no path"},
        {"http://p_x:3128", "invalid host"},
        {"http://::1:3128", "invalid host"},
        {"http://[::1:3128", "IPv6"},
        {"http://[127.0.0.1]:3128", "IPv6"},
        {"http://p.example.:3128", "invalid host"},
        {"http://:3128", "invalid host"},
        {"http://p.example:3128\r\nX: y", "invalid port"},
        {"p.example:3128", "scheme"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (url(bad[i].in, 0, &u, &why) != AV_ERR_INVALID || !strstr(why, bad[i].why))
            fail_msg("%s: %s", bad[i].in, why);
    }
    /* from the environment: no scheme is http, default ports, userinfo */
    assert_int_equal(url("proxy.example", AV_PARENT_URL_ENV, &u, &why), AV_OK);
    assert_int_equal(u.kind, AV_PARENT_HTTP);
    assert_int_equal(u.port, 1080);
    assert_int_equal(url("https://u%3Ax:p%40ss@proxy.example", AV_PARENT_URL_ENV, &u, &why), AV_OK);
    assert_int_equal(u.port, 443);
    assert_int_equal(u.userinfo_len, strlen("u%3Ax:p%40ss"));
    uint8_t cred[64];
    int n = av__parent_userinfo_decode(u.userinfo, u.userinfo_len, cred, sizeof(cred));
    /* "u:x" would make the user contain ':': the first ':' splits, so the
     * decoded text is user "u", password "x:p@ss" */
    assert_int_equal(n, 8);
    assert_memory_equal(cred, "u:x:p@ss", 8);
    assert_int_equal(av__parent_userinfo_decode("u:%zz", 5, cred, sizeof(cred)), AV_ERR_INVALID);
    assert_int_equal(av__parent_userinfo_decode("u:%0", 4, cred, sizeof(cred)), AV_ERR_INVALID);
    assert_int_equal(av__parent_userinfo_decode("u:%00", 5, cred, sizeof(cred)), AV_ERR_INVALID);
    assert_int_equal(av__parent_userinfo_decode("nopass", 6, cred, sizeof(cred)), AV_ERR_INVALID);
    assert_int_equal(av__parent_userinfo_decode(":p", 2, cred, sizeof(cred)), AV_ERR_INVALID);
    assert_int_equal(url("ftp://proxy.example", AV_PARENT_URL_ENV, &u, &why), AV_ERR_INVALID);
}

static void auth_values(void **state)
{
    (void)state;
    assert_true(av__parent_auth_valid((const uint8_t *)"u:p", 3));
    assert_false(av__parent_auth_valid((const uint8_t *)"u", 1));
    assert_false(av__parent_auth_valid((const uint8_t *)":p", 2));
    assert_false(av__parent_auth_valid((const uint8_t *)"u:", 2));
    assert_false(av__parent_auth_valid((const uint8_t *)"u:p\r\n", 5));
    char big[300];
    memset(big, 'a', sizeof(big));
    big[1] = ':';
    assert_true(av__parent_auth_valid((const uint8_t *)big, 257));  /* 255-byte password */
    assert_false(av__parent_auth_valid((const uint8_t *)big, 258)); /* 256 */
}

static av_authority dest(const char *host, int port)
{
    av_authority a;
    memset(&a, 0, sizeof(a));
    char h[AV_HOST_MAX + 1];
    a.is_ip = av__host_validate(host, strlen(host), h);
    assert_true(a.is_ip >= 0);
    snprintf(a.host, sizeof(a.host), "%s", h);
    a.port = port;
    return a;
}

static int np_match(const char *list, const char *host, int port)
{
    av_noproxy np;
    char why[200];
    assert_int_equal(av__noproxy_parse(list, strlen(list), &np, why, sizeof(why)), AV_OK);
    av_authority a = dest(host, port);
    int m = av__noproxy_match(&np, &a);
    av__noproxy_free(&np);
    return m;
}

static void no_proxy(void **state)
{
    (void)state;
    /* host suffixes on a label boundary; one leading dot ignored */
    assert_true(np_match("corp.example", "corp.example", 443));
    assert_true(np_match("corp.example", "a.b.corp.example", 443));
    assert_false(np_match("corp.example", "evilcorp.example", 443));
    assert_true(np_match(".corp.example", "corp.example", 443));
    assert_true(np_match(".corp.example", "x.corp.example", 443));
    assert_false(np_match("x.corp.example", "corp.example", 443));
    assert_true(np_match("*", "anything.example", 1));
    /* ports */
    assert_true(np_match("a.example:8443", "a.example", 8443));
    assert_false(np_match("a.example:8443", "a.example", 443));
    /* IP literals and CIDRs (literal destinations only) */
    assert_true(np_match("10.0.0.0/8", "10.1.2.3", 443));
    assert_false(np_match("10.0.0.0/8", "11.1.2.3", 443));
    assert_true(np_match("fd00::/8", "fd12::1", 443));
    assert_true(np_match("192.0.2.7", "192.0.2.7", 443));
    assert_false(np_match("192.0.2.7", "192.0.2.70", 443));
    assert_true(np_match("::1", "::1", 443));
    assert_true(np_match("[::1]:8443", "::1", 8443));
    assert_false(np_match("[::1]:8443", "::1", 443));
    assert_false(np_match("10.0.0.0/8", "ten.example", 443));
    /* several entries, spaces and commas */
    assert_true(np_match(" a.example , b.example  c.example,", "c.example", 443));
    assert_false(np_match("", "c.example", 443));

    static const char *const bad[] = {"*, a.example", "a.example *", "10.0.0.0/33", "fe80::/129", "bad_name",
                                      "a.example:0", "a.example:x", "[::1", "[nothost]:1", "a..b", "..a"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        av_noproxy np;
        char why[200] = "";
        if (av__noproxy_parse(bad[i], strlen(bad[i]), &np, why, sizeof(why)) != AV_ERR_INVALID || !why[0])
            fail_msg("accepted \"%s\"", bad[i]);
    }
}

static void connect_request(void **state)
{
    (void)state;
    av_buf b;
    av__buf_init(&b, 4096);
    assert_int_equal(av__parent_connect_request(&b, "203.0.113.7", 443, NULL, 0), AV_OK);
    const char *want = "CONNECT 203.0.113.7:443 HTTP/1.1\r\nHost: 203.0.113.7:443\r\n\r\n";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(av__buf_head(&b), want, b.len);
    av__buf_reset(&b);
    assert_int_equal(av__parent_connect_request(&b, "2001:db8::1", 8443, (const uint8_t *)"Aladdin:open sesame", 19),
                     AV_OK);
    want = "CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n"
           "Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(av__buf_head(&b), want, b.len);
    av__buf_reset(&b);
    assert_int_equal(av__parent_connect_request(&b, "API.Example.com", 443, NULL, 0), AV_OK);
    assert_memory_equal(av__buf_head(&b), "CONNECT api.example.com:443 ", 28);
    /* what could split the request line is refused before anything is written */
    av__buf_reset(&b);
    static const char *const bad[] = {"a.example\r\nX: y", "a example", "a.example:443", "[::1]", "", "a_b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(av__parent_connect_request(&b, bad[i], 443, NULL, 0), AV_ERR_INVALID);
        assert_int_equal(b.len, 0);
    }
    assert_int_equal(av__parent_connect_request(&b, "a.example", 0, NULL, 0), AV_ERR_INVALID);
    assert_int_equal(av__parent_connect_request(&b, "a.example", 443, (const uint8_t *)"u:p\r\n", 5),
                     AV_ERR_INVALID);
    av__buf_free_wipe(&b);
}

static int parse(const char *s, int *status, char *reason, size_t cap)
{
    return av__parent_parse_response((const uint8_t *)s, strlen(s), status, reason, cap);
}

static void connect_response(void **state)
{
    (void)state;
    int st = 0;
    char reason[64];
    const char *ok = "HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01";
    assert_int_equal(parse(ok, &st, reason, sizeof(reason)), (int)strlen(ok) - 3); /* tunnel bytes stay */
    assert_int_equal(st, 200);
    assert_string_equal(reason, "Connection established");
    const char *denied = "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n"
                         "Content-Length: 3\r\n\r\nabc";
    assert_int_equal(parse(denied, &st, reason, sizeof(reason)), (int)strlen(denied) - 3);
    assert_int_equal(st, 407);
    assert_string_equal(reason, "Proxy Authentication Required");
    assert_int_equal(parse("HTTP/1.0 200\r\n\r\n", &st, reason, sizeof(reason)), 16);
    assert_string_equal(reason, "");
    assert_int_equal(parse("HTTP/1.1 200 OK\n\n", &st, reason, sizeof(reason)), 17); /* bare LF */
    /* reasons are made printable and cut to the buffer */
    assert_true(parse("HTTP/1.1 403 No\x01way out of here\r\n\r\n", &st, reason, 8) > 0);
    assert_string_equal(reason, "No?way ");
    /* incomplete */
    assert_int_equal(parse("", &st, reason, sizeof(reason)), 0);
    assert_int_equal(parse("HTTP/1.1 200 OK\r\n", &st, reason, sizeof(reason)), 0);
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nVia: x\r\n\r", &st, reason, sizeof(reason)), 0);
    assert_int_equal(parse("HTT", &st, reason, sizeof(reason)), 0);
    /* malformed */
    static const char *const bad[] = {
        "HTTP/2 200 OK\r\n\r\n", "SSH-2.0-x\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 099 x\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nA: b\0c\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n", "HTTP/1.2 200 OK\r\n\r\n", "http/1.1 200 OK\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = i == 6 ? 30 : strlen(bad[i]);
        if (av__parent_parse_response((const uint8_t *)bad[i], n, &st, reason, sizeof(reason)) != AV_ERR_PARSE)
            fail_msg("accepted %zu: %s", i, bad[i]);
    }
    /* the head is capped at 16 KiB */
    static uint8_t big[AV_PARENT_HEAD_MAX + 100];
    memcpy(big, "HTTP/1.1 200 OK\r\n", 17);
    for (size_t i = 17; i < sizeof(big); i += 10)
        memcpy(big + i, "X-Pad: 12\n", i + 10 <= sizeof(big) ? 10 : sizeof(big) - i);
    assert_int_equal(av__parent_parse_response(big, AV_PARENT_HEAD_MAX - 1, &st, reason, sizeof(reason)), 0);
    assert_int_equal(av__parent_parse_response(big, AV_PARENT_HEAD_MAX, &st, reason, sizeof(reason)),
                     AV_ERR_LIMIT);
    assert_int_equal(av__parent_parse_response(big, sizeof(big), &st, reason, sizeof(reason)), AV_ERR_LIMIT);
}

static void socks5_messages(void **state)
{
    (void)state;
    uint8_t g[4];
    assert_int_equal(av__socks5_greeting(g, 0), 3);
    assert_memory_equal(g, "\x05\x01\x00", 3);
    assert_int_equal(av__socks5_greeting(g, 1), 4);
    assert_memory_equal(g, "\x05\x02\x00\x02", 4);

    int v = -1;
    assert_int_equal(av__socks5_parse_method((const uint8_t *)"\x05", 1, &v), 0);
    assert_int_equal(av__socks5_parse_method((const uint8_t *)"\x05\x02" "rest", 6, &v), 2);
    assert_int_equal(v, 2);
    assert_int_equal(av__socks5_parse_method((const uint8_t *)"\x05\xff", 2, &v), 2);
    assert_int_equal(v, 0xff);
    assert_int_equal(av__socks5_parse_method((const uint8_t *)"\x04\x00", 2, &v), AV_ERR_PARSE);
    assert_int_equal(av__socks5_parse_method((const uint8_t *)"H", 1, &v), AV_ERR_PARSE);

    uint8_t req[600];
    assert_int_equal(av__socks5_auth_request(req, sizeof(req), (const uint8_t *)"user:pa:ss", 10), 12);
    assert_memory_equal(req, "\x01\x04user\x05pa:ss", 12);
    assert_int_equal(av__socks5_auth_request(req, sizeof(req), (const uint8_t *)"user", 4), AV_ERR_INVALID);
    assert_int_equal(av__socks5_auth_request(req, 5, (const uint8_t *)"user:pass", 9), AV_ERR_INVALID);
    assert_int_equal(av__socks5_parse_auth((const uint8_t *)"\x01\x00", 2, &v), 2);
    assert_int_equal(v, 0);
    assert_int_equal(av__socks5_parse_auth((const uint8_t *)"\x01\x01", 2, &v), 2);
    assert_int_equal(v, 1);
    assert_int_equal(av__socks5_parse_auth((const uint8_t *)"\x01", 1, &v), 0);
    assert_int_equal(av__socks5_parse_auth((const uint8_t *)"\x05\x00", 2, &v), AV_ERR_PARSE);

    struct sockaddr_in s4;
    memset(&s4, 0, sizeof(s4));
    s4.sin_family = AF_INET;
    s4.sin_port = htons(443);
    inet_pton(AF_INET, "203.0.113.7", &s4.sin_addr);
    assert_int_equal(av__socks5_connect_request(req, sizeof(req), (struct sockaddr *)&s4, NULL, 0), 10);
    assert_memory_equal(req, "\x05\x01\x00\x01\xcb\x00\x71\x07\x01\xbb", 10);
    struct sockaddr_in6 s6;
    memset(&s6, 0, sizeof(s6));
    s6.sin6_family = AF_INET6;
    s6.sin6_port = htons(8443);
    inet_pton(AF_INET6, "2001:db8::1", &s6.sin6_addr);
    assert_int_equal(av__socks5_connect_request(req, sizeof(req), (struct sockaddr *)&s6, NULL, 0), 22);
    assert_memory_equal(req, "\x05\x01\x00\x04\x20\x01\x0d\xb8", 8);
    assert_memory_equal(req + 20, "\x20\xfb", 2);
    assert_int_equal(av__socks5_connect_request(req, sizeof(req), NULL, "api.example.com", 443), 22);
    assert_memory_equal(req, "\x05\x01\x00\x03\x0f" "api.example.com\x01\xbb", 22);
    assert_int_equal(av__socks5_connect_request(req, sizeof(req), NULL, "a\r\nb", 443), AV_ERR_INVALID);
    assert_int_equal(av__socks5_connect_request(req, sizeof(req), NULL, "10.0.0.1", 443), AV_ERR_INVALID);
    assert_int_equal(av__socks5_connect_request(req, sizeof(req), NULL, "a.example", 0), AV_ERR_INVALID);
    assert_int_equal(av__socks5_connect_request(req, 100, NULL, "a.example", 1), AV_ERR_INVALID);

    /* replies: BND.ADDR consumed exactly, whatever its type */
    assert_int_equal(av__socks5_parse_reply((const uint8_t *)"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x50XY", 12, &v),
                     10);
    assert_int_equal(v, 0);
    static const uint8_t r6[22] = {5, 0, 0, 4};
    assert_int_equal(av__socks5_parse_reply(r6, 21, &v), 0);
    assert_int_equal(av__socks5_parse_reply(r6, 22, &v), 22);
    assert_int_equal(av__socks5_parse_reply((const uint8_t *)"\x05\x05\x00\x03\x03" "abc\x00\x00" "T", 11, &v), 10);
    assert_int_equal(v, 5);
    assert_int_equal(av__socks5_parse_reply((const uint8_t *)"\x05\x00\x00\x03\x03" "abc\x00", 9, &v), 0);
    assert_int_equal(av__socks5_parse_reply((const uint8_t *)"\x05\x00\x00\x03\x00\x00\x00", 7, &v), AV_ERR_PARSE);
    assert_int_equal(av__socks5_parse_reply((const uint8_t *)"\x05\x00\x00\x02\x00\x00\x00", 7, &v), AV_ERR_PARSE);
    assert_int_equal(av__socks5_parse_reply((const uint8_t *)"\x05\x00\x01", 3, &v), AV_ERR_PARSE);
    assert_int_equal(av__socks5_parse_reply((const uint8_t *)"\x04", 1, &v), AV_ERR_PARSE);
    assert_string_equal(av__socks5_rep_name(5), "connection refused");
    assert_string_equal(av__socks5_rep_name(2), "connection not allowed by ruleset");
    assert_string_equal(av__socks5_rep_name(9), "unknown reply code");
}

/* ---- the table ------------------------------------------------------------ */

static const char *fake_env(const char *name)
{
    if (strcmp(name, "https_proxy") == 0)
        return "http://envuser:env%20pass@envproxy.example:3128";
    if (strcmp(name, "no_proxy") == 0)
        return ".internal.example,192.0.2.0/24";
    if (strcmp(name, "PARENT_CRED_T") == 0)
        return "u:p";
    return NULL;
}

static av_config *cfg_text(const char *text)
{
    av_config *c = NULL;
    assert_int_equal(av_config_new(&c), AV_OK);
    if (av_config_load_string(c, text, strlen(text), "t") != AV_OK)
        fail_msg("%s", av_config_error(c));
    return c;
}

static void table_and_routes(void **state)
{
    (void)state;
    setenv("PARENT_CRED_T", "alice:s3cret", 1);
    av_config *c = cfg_text("[proxy]\nupstream_proxy = http://proxy.example:3128\n"
                            "upstream_proxy_auth = env:PARENT_CRED_T\nupstream_no_proxy = .corp.example\n"
                            "[service \"a\"]\nhost = a.example\nauth = bearer\nsecret = env:X\n"
                            "[service \"b\"]\nhost = b.example\nauth = bearer\nsecret = env:X\n"
                            "upstream_proxy = direct\n"
                            "[service \"s\"]\nhost = s.example\nauth = bearer\nsecret = env:X\n"
                            "upstream_proxy = socks5h://[::1]:1080\n");
    av_resolver *r = NULL;
    assert_int_equal(av__resolver_new(&r), AV_OK);
    av_parents *t = NULL;
    char err[300] = "";
    assert_int_equal(av__parents_new(c, r, NULL, &t, err, sizeof(err)), AV_OK);
    assert_non_null(t);
    assert_non_null(t->global);
    assert_string_equal(t->global->label, "proxy.example:3128");
    assert_int_equal(av__secret_len(t->global->auth), 12);
    assert_memory_equal(av__secret_data(t->global->auth), "alice:s3cret", 12);
    av_authority a = dest("a.example", 443), x = dest("x.corp.example", 443);
    assert_ptr_equal(av__parents_route(t, "a/-", &a), t->global);
    assert_ptr_equal(av__parents_route(t, "-/tok", &a), t->global); /* no service */
    assert_ptr_equal(av__parents_route(t, "opaque", &a), t->global);
    assert_null(av__parents_route(t, "a/-", &x));                   /* no_proxy */
    assert_null(av__parents_route(t, "b/-", &a));                   /* direct */
    av_parent *s = av__parents_route(t, "s/tok", &x);               /* own parent; no_proxy not applied */
    assert_non_null(s);
    assert_int_equal(s->kind, AV_PARENT_SOCKS5H);
    assert_string_equal(s->label, "[::1]:1080");
    assert_null(s->auth);
    /* ids differ by parent; they do not show the credential */
    assert_string_not_equal(s->id, t->global->id);
    assert_int_equal(strlen(t->global->id), 17);
    assert_null(strstr(t->global->id, "alice"));
    assert_null(av__parents_route(NULL, "a/-", &a));
    av__parents_free(t);
    av_config_free(c);

    /* env */
    c = cfg_text("[proxy]\nupstream_proxy = env\n");
    assert_int_equal(av__parents_new(c, r, fake_env, &t, err, sizeof(err)), AV_OK);
    assert_string_equal(t->global->label, "envproxy.example:3128");
    assert_memory_equal(av__secret_data(t->global->auth), "envuser:env pass", 16);
    av_authority in = dest("x.internal.example", 443), ip = dest("192.0.2.9", 443);
    assert_null(av__parents_route(t, "a/-", &in));
    assert_null(av__parents_route(t, "a/-", &ip));
    assert_non_null(av__parents_route(t, "a/-", &a));
    av__parents_free(t);
    /* env with nothing set: direct */
    assert_int_equal(av__parents_new(c, r, NULL, &t, err, sizeof(err)), AV_OK);
    assert_non_null(t);
    assert_null(av__parents_route(t, "a/-", &a));
    av__parents_free(t);
    av_config_free(c);

    /* no parent anywhere: no table */
    c = cfg_text("[proxy]\nunmatched = deny\n");
    assert_int_equal(av__parents_new(c, r, NULL, &t, err, sizeof(err)), AV_OK);
    assert_null(t);
    av_config_free(c);

    /* a credential that is missing or not user:password fails, naming the setting */
    c = cfg_text("[proxy]\nupstream_proxy = http://p.example:1\nupstream_proxy_auth = env:NO_SUCH_VAR_PT\n");
    assert_int_equal(av__parents_new(c, r, NULL, &t, err, sizeof(err)), AV_ERR_CONFIG);
    assert_non_null(strstr(err, "upstream_proxy credential: environment variable NO_SUCH_VAR_PT is not set"));
    av_config_free(c);
    setenv("PARENT_CRED_BAD", "no-colon-here", 1);
    c = cfg_text("[proxy]\nupstream_proxy = http://p.example:1\nupstream_proxy_auth = env:PARENT_CRED_BAD\n");
    assert_int_equal(av__parents_new(c, r, NULL, &t, err, sizeof(err)), AV_ERR_CONFIG);
    assert_non_null(strstr(err, "must be user:password"));
    assert_null(strstr(err, "no-colon-here"));
    av_config_free(c);
    av__resolver_free(r);
}

static void config_keys(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *why;
    } bad[] = {
        {"[proxy]\nupstream_proxy = http://u:p@h.example:1\n", "upstream_proxy_auth"},
        {"[proxy]\nupstream_proxy = gopher://h:1\n", "scheme"},
        {"[proxy]\nupstream_proxy_auth = env:X\n", "needs upstream_proxy"},
        {"[proxy]\nupstream_proxy = direct\nupstream_proxy_auth = env:X\n", "needs upstream_proxy"},
        {"[proxy]\nupstream_no_proxy = a.example\n", "needs upstream_proxy"},
        {"[proxy]\nupstream_proxy = http://h.example:1\nupstream_no_proxy = a b *\n", "whole value"},
        {"[proxy]\nupstream_proxy = http://h.example:1\nupstream_proxy_auth = password\n", "env:NAME"},
        {"[proxy]\nupstream_proxy = http://h.example:1\nupstream_proxy = direct\n", "duplicate"},
        {"[service \"s\"]\nhost = a.example\nauth = bearer\nsecret = env:X\nupstream_proxy = env\n",
         "[proxy] setting"},
        {"[service \"s\"]\nhost = a.example\nauth = bearer\nsecret = env:X\nupstream_proxy_auth = env:Y\n",
         "needs upstream_proxy = URL"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        av_config *c = NULL;
        assert_int_equal(av_config_new(&c), AV_OK);
        int rc = av_config_load_string(c, bad[i].text, strlen(bad[i].text), "t");
        if (rc != AV_ERR_CONFIG || !strstr(av_config_error(c), bad[i].why))
            fail_msg("%zu: rc %d, \"%s\"", i, rc, av_config_error(c));
        av_config_free(c);
    }
    av_config *c = cfg_text("[proxy]\nupstream_proxy = DIRECT\n");
    assert_string_equal(c->upstream_proxy, "direct");
    av_config_free(c);
    /* set through the API (the reader underneath), copied with the config */
    assert_int_equal(av_config_new(&c), AV_OK);
    const char *kv[] = {"upstream_proxy", "socks5://127.0.0.1:1080", "upstream_proxy_auth", "file:/run/p",
                        "upstream_no_proxy", "*", NULL};
    assert_int_equal(av_config_add_section(c, "proxy", NULL, kv), AV_OK);
    av_config *copy = av__config_copy(c);
    assert_string_equal(copy->upstream_proxy, "socks5://127.0.0.1:1080");
    assert_string_equal(copy->upstream_proxy_auth, "file:/run/p");
    assert_string_equal(copy->upstream_no_proxy, "*");
    av_config_free(copy);
    av_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(urls),
        cmocka_unit_test(auth_values),
        cmocka_unit_test(no_proxy),
        cmocka_unit_test(connect_request),
        cmocka_unit_test(connect_response),
        cmocka_unit_test(socks5_messages),
        cmocka_unit_test(table_and_routes),
        cmocka_unit_test(config_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
