/* test_socks.c - the SOCKS5 server messages (av_socks.c): greeting, RFC
 * 1929 sub-negotiation, request, answers; every message fed byte by byte
 * (each proper prefix is "incomplete", never an error or a success) and
 * with pipelined bytes after it (only the message is consumed). Also the
 * ClientHello SNI peek of transparent mode (av_sni.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_sni.h"
#include "av_socks.h"

/* Every proper prefix of msg is incomplete for |parse|; the whole message
 * (and the message followed by junk) gives |want|. */
typedef ssize_t (*parse_fn)(const uint8_t *p, size_t n, void *out);

static ssize_t parse_greeting(const uint8_t *p, size_t n, void *out)
{
    return av__socks_parse_greeting(p, n, out);
}
static ssize_t parse_auth(const uint8_t *p, size_t n, void *out)
{
    return av__socks_parse_auth(p, n, out);
}
static ssize_t parse_request(const uint8_t *p, size_t n, void *out)
{
    return av__socks_parse_request(p, n, out);
}

static void feed(parse_fn fn, const uint8_t *msg, size_t len, ssize_t want, void *out)
{
    /* Each prefix on a heap copy of exactly that size: ASan catches a read
     * past what the parser was given. */
    for (size_t i = 0; i < len; i++) {
        uint8_t *p = malloc(i ? i : 1);
        assert_non_null(p);
        memcpy(p, msg, i);
        ssize_t r = fn(p, i, out);
        free(p);
        if (want < 0 && r == want)
            return; /* an error decided early: fine */
        assert_int_equal(r, AV_SOCKS_INCOMPLETE);
    }
    uint8_t *p = malloc(len + 16);
    assert_non_null(p);
    memcpy(p, msg, len);
    memset(p + len, 0x16, 16); /* a pipelined ClientHello's first bytes */
    assert_int_equal(fn(p, len + 16, out), want);
    assert_int_equal(fn(p, len, out), want);
    free(p);
}

static void greetings(void **state)
{
    (void)state;
    unsigned off = 0;
    static const uint8_t g1[] = {5, 1, 0};
    feed(parse_greeting, g1, sizeof(g1), 3, &off);
    assert_int_equal(off, AV_SOCKS_OFFER(0));
    static const uint8_t g2[] = {5, 3, 0x80, 2, 0};
    feed(parse_greeting, g2, sizeof(g2), 5, &off);
    assert_int_equal(off, AV_SOCKS_OFFER(0) | AV_SOCKS_OFFER(2));
    /* 255 methods, all of them */
    uint8_t g3[257];
    g3[0] = 5;
    g3[1] = 255;
    for (int i = 0; i < 255; i++)
        g3[2 + i] = (uint8_t)i;
    feed(parse_greeting, g3, sizeof(g3), 257, &off);
    assert_int_equal(off, 0xffffffffu);
    /* errors */
    static const uint8_t bad_ver[] = {4, 1, 0};
    assert_int_equal(av__socks_parse_greeting(bad_ver, 3, &off), AV_SOCKS_E_VERSION);
    static const uint8_t http[] = "GET / HTTP/1.1\r\n";
    assert_int_equal(av__socks_parse_greeting(http, sizeof(http) - 1, &off), AV_SOCKS_E_VERSION);
    static const uint8_t zero[] = {5, 0};
    assert_int_equal(av__socks_parse_greeting(zero, 2, &off), AV_SOCKS_E_MALFORMED);
    assert_int_equal(av__socks_parse_greeting(zero, 0, &off), AV_SOCKS_INCOMPLETE);
}

static void methods(void **state)
{
    (void)state;
    const unsigned none = AV_SOCKS_OFFER(0), up = AV_SOCKS_OFFER(2), gss = AV_SOCKS_OFFER(1);
    /* no tokens: no-auth preferred; a user/password-only client is taken */
    assert_int_equal(av__socks_choose_method(none, 0), AV_SOCKS_METHOD_NONE);
    assert_int_equal(av__socks_choose_method(none | up, 0), AV_SOCKS_METHOD_NONE);
    assert_int_equal(av__socks_choose_method(up, 0), AV_SOCKS_METHOD_USERPASS);
    assert_int_equal(av__socks_choose_method(gss, 0), AV_SOCKS_METHOD_REFUSED);
    /* tokens: user/password or nothing */
    assert_int_equal(av__socks_choose_method(none | up, 1), AV_SOCKS_METHOD_USERPASS);
    assert_int_equal(av__socks_choose_method(up, 1), AV_SOCKS_METHOD_USERPASS);
    assert_int_equal(av__socks_choose_method(none, 1), AV_SOCKS_METHOD_REFUSED);
    assert_int_equal(av__socks_choose_method(none | gss, 1), AV_SOCKS_METHOD_REFUSED);
    assert_int_equal(av__socks_choose_method(0, 1), AV_SOCKS_METHOD_REFUSED);
}

static void auth(void **state)
{
    (void)state;
    av_socks_auth a;
    static const uint8_t m1[] = {1, 5, 'a', 'g', 'e', 'n', 't', 3, 't', 'o', 'k'};
    feed(parse_auth, m1, sizeof(m1), sizeof(m1), &a);
    assert_int_equal(av__socks_parse_auth(m1, sizeof(m1), &a), sizeof(m1)); /* views into m1 */
    assert_int_equal(a.user_len, 5);
    assert_memory_equal(a.user, "agent", 5);
    assert_int_equal(a.pass_len, 3);
    assert_memory_equal(a.pass, "tok", 3);
    /* an empty user name is accepted (the name is not used) */
    static const uint8_t m2[] = {1, 0, 2, 'p', 'w'};
    feed(parse_auth, m2, sizeof(m2), sizeof(m2), &a);
    assert_int_equal(av__socks_parse_auth(m2, sizeof(m2), &a), sizeof(m2));
    assert_int_equal(a.user_len, 0);
    assert_int_equal(a.pass_len, 2);
    /* the longest: 255 + 255 */
    uint8_t m3[513];
    memset(m3, 'x', sizeof(m3));
    m3[0] = 1;
    m3[1] = 255;
    m3[257] = 255;
    feed(parse_auth, m3, sizeof(m3), 513, &a);
    assert_int_equal(av__socks_parse_auth(m3, sizeof(m3), &a), 513);
    assert_int_equal(a.pass_len, 255);
    assert_ptr_equal(a.pass, m3 + 258); /* a view, not a copy */
    /* errors: version 05 (a client that skipped the sub-negotiation), empty password */
    static const uint8_t v5[] = {5, 1, 0, 3};
    assert_int_equal(av__socks_parse_auth(v5, sizeof(v5), &a), AV_SOCKS_E_VERSION);
    static const uint8_t nopw[] = {1, 1, 'u', 0};
    assert_int_equal(av__socks_parse_auth(nopw, sizeof(nopw), &a), AV_SOCKS_E_MALFORMED);
}

static void request_name(void **state)
{
    (void)state;
    av_socks_request rq;
    static const uint8_t r1[] = {5, 1, 0, 3, 14, 'A', 'P', 'I', '.', 'o', 'p', 'e', 'n', 'a', 'i', '.', 'c', 'o', 'm',
                                 0x01, 0xbb};
    feed(parse_request, r1, sizeof(r1), sizeof(r1), &rq);
    assert_int_equal(rq.cmd, AV_SOCKS_CMD_CONNECT);
    assert_int_equal(rq.atyp, AV_SOCKS_ATYP_NAME);
    assert_string_equal(rq.dest.host, "api.openai.com"); /* lower-cased */
    assert_int_equal(rq.dest.is_ip, 0);
    assert_int_equal(rq.dest.port, 443);
    /* a name that is an address literal is one */
    static const uint8_t r2[] = {5, 1, 0, 3, 15, '1', '6', '9', '.', '2', '5', '4', '.', '1', '6', '9', '.', '2', '5',
                                 '4', 0, 80};
    feed(parse_request, r2, sizeof(r2), sizeof(r2), &rq);
    assert_string_equal(rq.dest.host, "169.254.169.254");
    assert_int_equal(rq.dest.is_ip, 4);
    assert_int_equal(rq.dest.port, 80);
    /* 253 bytes: the longest name; 254 is refused */
    uint8_t big[4 + 1 + 254 + 2];
    memset(big, 'a', sizeof(big));
    big[0] = 5, big[1] = 1, big[2] = 0, big[3] = 3;
    for (int i = 63; i < 253; i += 64)
        big[5 + i] = '.';
    big[4] = 253;
    big[5 + 253] = 0, big[5 + 254] = 80;
    feed(parse_request, big, 5 + 253 + 2, 5 + 253 + 2, &rq);
    assert_int_equal(strlen(rq.dest.host), 253);
    big[4] = 254;
    big[5 + 253] = 'a';
    big[5 + 254] = 0, big[5 + 255] = 80;
    assert_int_equal(av__socks_parse_request(big, 5, &rq), AV_SOCKS_E_MALFORMED); /* decided by the length byte */
    /* names refused like a CONNECT host */
    const char *bad[] = {"a..b", "bad name", "x\0y", "evil\r\nHost", "a.com.", "user@a.com", "a%2ecom", "-a.com", "[::1]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t m[64];
        size_t l = i == 2 ? 3 : strlen(bad[i]);
        m[0] = 5, m[1] = 1, m[2] = 0, m[3] = 3, m[4] = (uint8_t)l;
        memcpy(m + 5, bad[i], l);
        m[5 + l] = 1, m[6 + l] = 0xbb;
        assert_int_equal(av__socks_parse_request(m, 7 + l, &rq), AV_SOCKS_E_MALFORMED);
    }
    static const uint8_t empty[] = {5, 1, 0, 3, 0, 0, 80};
    assert_int_equal(av__socks_parse_request(empty, sizeof(empty), &rq), AV_SOCKS_E_MALFORMED);
}

static void request_addresses(void **state)
{
    (void)state;
    av_socks_request rq;
    static const uint8_t v4[] = {5, 1, 0, 1, 203, 0, 113, 7, 0x20, 0xfb};
    feed(parse_request, v4, sizeof(v4), sizeof(v4), &rq);
    assert_int_equal(rq.atyp, AV_SOCKS_ATYP_IPV4);
    assert_string_equal(rq.dest.host, "203.0.113.7");
    assert_int_equal(rq.dest.is_ip, 4);
    assert_int_equal(rq.dest.port, 8443);
    static const uint8_t v6[] = {5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 1, 0xbb};
    feed(parse_request, v6, sizeof(v6), sizeof(v6), &rq);
    assert_int_equal(rq.atyp, AV_SOCKS_ATYP_IPV6);
    assert_string_equal(rq.dest.host, "2001:db8::a");
    assert_int_equal(rq.dest.is_ip, 6);
    static const uint8_t mapped[] = {5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1, 0, 80};
    feed(parse_request, mapped, sizeof(mapped), sizeof(mapped), &rq);
    assert_string_equal(rq.dest.host, "::ffff:127.0.0.1"); /* the SSRF guard sees the mapped form */
    assert_int_equal(rq.dest.is_ip, 6);
}

static void request_errors(void **state)
{
    (void)state;
    av_socks_request rq;
    /* BIND and UDP ASSOCIATE are refused after two bytes */
    static const uint8_t bind[] = {5, 2};
    assert_int_equal(av__socks_parse_request(bind, 2, &rq), AV_SOCKS_E_COMMAND);
    assert_int_equal(rq.cmd, AV_SOCKS_CMD_BIND);
    static const uint8_t udp[] = {5, 3, 0, 1, 0, 0, 0, 0, 0, 0};
    assert_int_equal(av__socks_parse_request(udp, sizeof(udp), &rq), AV_SOCKS_E_COMMAND);
    assert_int_equal(rq.cmd, AV_SOCKS_CMD_UDP);
    static const uint8_t cmd9[] = {5, 9};
    assert_int_equal(av__socks_parse_request(cmd9, 2, &rq), AV_SOCKS_E_COMMAND);
    static const uint8_t rsv[] = {5, 1, 1};
    assert_int_equal(av__socks_parse_request(rsv, 3, &rq), AV_SOCKS_E_MALFORMED);
    static const uint8_t atyp[] = {5, 1, 0, 2};
    assert_int_equal(av__socks_parse_request(atyp, 4, &rq), AV_SOCKS_E_ATYP);
    assert_int_equal(rq.atyp, 2);
    static const uint8_t port0[] = {5, 1, 0, 1, 1, 2, 3, 4, 0, 0};
    assert_int_equal(av__socks_parse_request(port0, sizeof(port0), &rq), AV_SOCKS_E_MALFORMED);
    static const uint8_t ver[] = "GET / HTTP/1.1";
    assert_int_equal(av__socks_parse_request(ver, 14, &rq), AV_SOCKS_E_VERSION);
    /* the REP for each */
    assert_int_equal(av__socks_rep_for(AV_SOCKS_E_COMMAND), AV_SOCKS_REP_COMMAND);
    assert_int_equal(av__socks_rep_for(AV_SOCKS_E_ATYP), AV_SOCKS_REP_ATYP);
    assert_int_equal(av__socks_rep_for(AV_SOCKS_E_MALFORMED), AV_SOCKS_REP_FAILURE);
    assert_int_equal(av__socks_rep_for(AV_SOCKS_E_VERSION), AV_SOCKS_REP_FAILURE);
}

static void answers(void **state)
{
    (void)state;
    uint8_t r[AV_SOCKS_REPLY_LEN];
    av__socks_reply(r, AV_SOCKS_REP_RULESET);
    static const uint8_t want[] = {5, 2, 0, 1, 0, 0, 0, 0, 0, 0};
    assert_memory_equal(r, want, sizeof(want));
    uint8_t r4[AV_SOCKS4_REPLY_LEN];
    av__socks4_refusal(r4);
    static const uint8_t want4[] = {0, 0x5b, 0, 0, 0, 0, 0, 0};
    assert_memory_equal(r4, want4, sizeof(want4));
    assert_string_equal(av__socks_rep_text(AV_SOCKS_REP_COMMAND), "command not supported");
    assert_string_equal(av__socks_rep_text(AV_SOCKS_REP_RULESET), "not allowed by ruleset");
    assert_string_equal(av__socks_rep_text(99), "unknown");
}


/* hello builds a TLS record holding a ClientHello; |sni| NULL: no
 * server_name extension; |ext_first| puts another extension before it.
 * Returns the length. */
static size_t hello(uint8_t *out, const char *sni, size_t sni_len, int ext_first, int no_exts)
{
    uint8_t body[1024];
    size_t n = 0;
    body[n++] = 3, body[n++] = 3;          /* legacy_version */
    memset(body + n, 0xab, 32), n += 32;   /* random */
    body[n++] = 32, memset(body + n, 1, 32), n += 32; /* session id */
    body[n++] = 0, body[n++] = 4, body[n++] = 0x13, body[n++] = 1, body[n++] = 0x13, body[n++] = 2;
    body[n++] = 1, body[n++] = 0;          /* compression */
    if (!no_exts) {
        size_t ext_at = n;
        n += 2;
        if (ext_first) {                   /* supported_versions */
            body[n++] = 0, body[n++] = 43, body[n++] = 0, body[n++] = 3, body[n++] = 2, body[n++] = 3,
            body[n++] = 4;
        }
        if (sni) {
            body[n++] = 0, body[n++] = 0;  /* server_name */
            size_t el = 2 + 1 + 2 + sni_len;
            body[n++] = (uint8_t)(el >> 8), body[n++] = (uint8_t)el;
            body[n++] = (uint8_t)((el - 2) >> 8), body[n++] = (uint8_t)(el - 2);
            body[n++] = 0;
            body[n++] = (uint8_t)(sni_len >> 8), body[n++] = (uint8_t)sni_len;
            memcpy(body + n, sni, sni_len), n += sni_len;
        }
        size_t el = n - ext_at - 2;
        body[ext_at] = (uint8_t)(el >> 8), body[ext_at + 1] = (uint8_t)el;
    }
    size_t hl = n;
    out[0] = 0x16, out[1] = 3, out[2] = 1;
    out[3] = (uint8_t)((hl + 4) >> 8), out[4] = (uint8_t)(hl + 4);
    out[5] = 1, out[6] = 0, out[7] = (uint8_t)(hl >> 8), out[8] = (uint8_t)hl;
    memcpy(out + 9, body, hl);
    return 9 + hl;
}

static void sni_peek(void **state)
{
    (void)state;
    uint8_t m[1200];
    char name[AV_SNI_MAX + 1];
    size_t n = hello(m, "api.openai.com", 14, 1, 0);
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = malloc(i ? i : 1);
        assert_non_null(p);
        memcpy(p, m, i);
        assert_int_equal(av__sni_peek(p, i, name), AV_SNI_INCOMPLETE);
        free(p);
    }
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_FOUND);
    assert_string_equal(name, "api.openai.com");
    m[n] = 0x17; /* bytes after the record are not looked at */
    assert_int_equal(av__sni_peek(m, n + 1, name), AV_SNI_FOUND);
    n = hello(m, "Example.COM", 11, 0, 0);
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_FOUND);
    assert_string_equal(name, "Example.COM"); /* as sent: the caller validates */
    n = hello(m, NULL, 0, 1, 0);
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_NONE);
    n = hello(m, NULL, 0, 0, 1);
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_NONE);
    n = hello(m, "a\0b", 3, 0, 0);
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_NONE);
    char longname[300];
    memset(longname, 'a', sizeof(longname));
    n = hello(m, longname, 254, 0, 0);
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_NONE);
    /* not a handshake record, not a ClientHello, truncated inner lengths */
    static const uint8_t http[] = "GET / HTTP/1.1\r\n";
    assert_int_equal(av__sni_peek(http, 16, name), AV_SNI_MALFORMED);
    n = hello(m, "a.b", 3, 0, 0);
    m[5] = 2; /* ServerHello */
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_MALFORMED);
    n = hello(m, "a.b", 3, 0, 0);
    m[9 + 34] = 200; /* session id longer than the message */
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_MALFORMED);
    /* a ClientHello longer than its first record: not looked at */
    n = hello(m, "a.b", 3, 0, 0);
    m[7] = 0x40;
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_NONE);
    /* a record over 2^14 bytes */
    n = hello(m, "a.b", 3, 0, 0);
    m[3] = 0x41;
    assert_int_equal(av__sni_peek(m, n, name), AV_SNI_MALFORMED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greetings),     cmocka_unit_test(methods),           cmocka_unit_test(auth),
        cmocka_unit_test(request_name),  cmocka_unit_test(request_addresses), cmocka_unit_test(request_errors),
        cmocka_unit_test(answers),       cmocka_unit_test(sni_peek),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
