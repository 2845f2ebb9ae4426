/* test_url.c - host names, authorities, absolute URIs, patterns, globs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_url.h"

/* host_case is one row of the host table: expected kind (4, 6, 0) or
 * AV_ERR_INVALID, and the canonical output. */
typedef struct host_case {
    const char *in;
    int kind;
    const char *out;
} host_case;

static const host_case host_cases[] = {
    {"api.openai.com", 0, "api.openai.com"},
    {"API.OpenAI.com", 0, "api.openai.com"},
    {"localhost", 0, "localhost"},
    {"a", 0, "a"},
    {"xn--bcher-kva.example", 0, "xn--bcher-kva.example"},
    {"a-b.c-d.com", 0, "a-b.c-d.com"},
    {"1a.example", 0, "1a.example"},
    {"example.1a", 0, "example.1a"},
    {"127.0.0.1", 4, "127.0.0.1"},
    {"0.0.0.0", 4, "0.0.0.0"},
    {"255.255.255.255", 4, "255.255.255.255"},
    {"10.20.30.40", 4, "10.20.30.40"},
    {"::1", 6, "::1"},
    {"0:0:0:0:0:0:0:1", 6, "::1"},
    {"2001:DB8::A", 6, "2001:db8::a"},
    {"::ffff:127.0.0.1", 6, "::ffff:127.0.0.1"},
    /* rejected */
    {"", AV_ERR_INVALID, NULL},
    {"a..b", AV_ERR_INVALID, NULL},
    {".a.com", AV_ERR_INVALID, NULL},
    {"a.com.", AV_ERR_INVALID, NULL},
    {"-a.com", AV_ERR_INVALID, NULL},
    {"a-.com", AV_ERR_INVALID, NULL},
    {"a.-b.com", AV_ERR_INVALID, NULL},
    {"a_b.com", AV_ERR_INVALID, NULL},
    {"user@a.com", AV_ERR_INVALID, NULL},
    {"a.com%00", AV_ERR_INVALID, NULL},
    {"a%2ecom", AV_ERR_INVALID, NULL},
    {"b\xc3\xbc" "cher.example", AV_ERR_INVALID, NULL},
    {"a com", AV_ERR_INVALID, NULL},
    {"a/b", AV_ERR_INVALID, NULL},
    {"*.example.com", AV_ERR_INVALID, NULL},
    {"127.1", AV_ERR_INVALID, NULL},
    {"127.0.1", AV_ERR_INVALID, NULL},
    {"1.2.3", AV_ERR_INVALID, NULL},
    {"0x7f.0.0.1", AV_ERR_INVALID, NULL},
    {"0x7f000001", AV_ERR_INVALID, NULL},
    {"0X7F000001", AV_ERR_INVALID, NULL},
    {"2130706433", AV_ERR_INVALID, NULL},
    {"0177.0.0.1", AV_ERR_INVALID, NULL},
    {"1.2.3.04", AV_ERR_INVALID, NULL},
    {"01.2.3.4", AV_ERR_INVALID, NULL},
    {"1.2.3.256", AV_ERR_INVALID, NULL},
    {"1.2.3.4.5", AV_ERR_INVALID, NULL},
    {"1.2.3.4.", AV_ERR_INVALID, NULL},
    {"example.123", AV_ERR_INVALID, NULL},
    {"[::1]", AV_ERR_INVALID, NULL},
    {"fe80::1%eth0", AV_ERR_INVALID, NULL},
    {"fe80::1%25eth0", AV_ERR_INVALID, NULL},
    {":::1", AV_ERR_INVALID, NULL},
    {"1::2::3", AV_ERR_INVALID, NULL},
    {"example.com:443", AV_ERR_INVALID, NULL},
};

/* hosts runs the host table. */
static void hosts(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(host_cases) / sizeof(host_cases[0]); i++) {
        const host_case *c = &host_cases[i];
        char out[AV_HOST_MAX + 1];
        memset(out, 'X', sizeof(out));
        int rc = av__host_validate(c->in, strlen(c->in), out);
        if (rc != c->kind)
            fail_msg("host \"%s\": got %d, want %d", c->in, rc, c->kind);
        if (c->out)
            assert_string_equal(out, c->out);
    }
}

/* host_lengths checks the 63-byte label and 253-byte name limits. */
static void host_lengths(void **state)
{
    (void)state;
    char in[300], out[AV_HOST_MAX + 1];
    memset(in, 'a', 63);
    strcpy(in + 63, ".com");
    assert_int_equal(av__host_validate(in, strlen(in), out), 0);
    memset(in, 'a', 64);
    strcpy(in + 64, ".com");
    assert_int_equal(av__host_validate(in, strlen(in), out), AV_ERR_INVALID);

    /* 4 labels of 63 + 3 dots = 255 > 253; 63+63+63+61 + 3 = 253 ok */
    size_t o = 0;
    int lens[4] = {63, 63, 63, 61};
    for (int l = 0; l < 4; l++) {
        if (l)
            in[o++] = '.';
        memset(in + o, 'b', (size_t)lens[l]);
        o += (size_t)lens[l];
    }
    in[o] = '\0';
    assert_int_equal(strlen(in), 253);
    assert_int_equal(av__host_validate(in, 253, out), 0);
    in[o++] = 'c';
    in[o] = '\0';
    assert_int_equal(av__host_validate(in, 254, out), AV_ERR_INVALID);

    /* an embedded NUL is not part of a valid name */
    assert_int_equal(av__host_validate("a\0b.com", 7, out), AV_ERR_INVALID);
}

/* authorities covers host:port parsing and formatting. */
static void authorities(void **state)
{
    (void)state;
    av_authority a, b;
    char buf[300];

    assert_int_equal(av__authority_parse("[::1]:443", 9, 0, &a), 0);
    assert_string_equal(a.host, "::1");
    assert_int_equal(a.is_ip, 6);
    assert_int_equal(a.port, 443);
    assert_int_equal(av__authority_format(&a, 443, buf, sizeof(buf)), 5);
    assert_string_equal(buf, "[::1]");
    assert_int_equal(av__authority_format(&a, 0, buf, sizeof(buf)), 9);
    assert_string_equal(buf, "[::1]:443");

    assert_int_equal(av__authority_parse("API.Example.COM:8443", 20, 0, &a), 0);
    assert_string_equal(a.host, "api.example.com");
    assert_int_equal(a.is_ip, 0);
    assert_int_equal(a.port, 8443);
    assert_int_equal(av__authority_format(&a, 443, buf, sizeof(buf)), 20);
    assert_string_equal(buf, "api.example.com:8443");
    assert_int_equal(av__authority_format(&a, 443, buf, 20), AV_ERR_LIMIT);

    assert_int_equal(av__authority_parse("api.example.com", 15, 443, &b), 0);
    assert_int_equal(b.port, 443);
    assert_int_equal(av__authority_parse("api.example.com", 15, 0, &b), AV_ERR_INVALID);
    assert_int_equal(av__authority_parse("api.example.com:443", 19, 0, &b), 0);
    assert_false(av__authority_equal(&a, &b));
    assert_int_equal(av__authority_parse("API.example.com:8443", 20, 0, &b), 0);
    assert_true(av__authority_equal(&a, &b));

    assert_int_equal(av__authority_parse("1.2.3.4:1", 9, 0, &a), 0);
    assert_int_equal(a.is_ip, 4);
    assert_int_equal(a.port, 1);
    assert_int_equal(av__authority_parse("h:65535", 7, 0, &a), 0);
    assert_int_equal(a.port, 65535);

    static const char *bad[] = {
        "host:0", "host:65536", "host:99999", "host:123456", "host:+443", "host:-1",
        "host:", "host: 443", "host:44a", "user@host:443", "@host:443", "host:443@x",
        ":443", "[::1]", "[::1]x", "[::1]:", "[1.2.3.4]:443", "[host]:443", "::1:443",
        "[::1", "host:443:1", "127.1:80", "a..b:80", "host%2e:80", "[fe80::1%25lo]:80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (av__authority_parse(bad[i], strlen(bad[i]), 0, &a) != AV_ERR_INVALID)
            fail_msg("authority \"%s\" accepted", bad[i]);
    /* "[::1]" is fine when a default port is allowed */
    assert_int_equal(av__authority_parse("[::1]", 5, 80, &a), 0);
    assert_int_equal(a.port, 80);
}

/* absolute_uris covers absolute-form request targets. */
static void absolute_uris(void **state)
{
    (void)state;
    av_absolute_uri u;
    const char *in = "http://Example.com:8080/a/b?x=1&y=2";
    assert_int_equal(av__absolute_uri_parse(in, strlen(in), &u), 0);
    assert_string_equal(u.scheme, "http");
    assert_string_equal(u.authority.host, "example.com");
    assert_int_equal(u.authority.port, 8080);
    assert_int_equal(u.path_len, strlen("/a/b?x=1&y=2"));
    assert_memory_equal(u.path, "/a/b?x=1&y=2", u.path_len);
    assert_ptr_equal(u.path, in + 23);

    in = "HTTPS://api.openai.com";
    assert_int_equal(av__absolute_uri_parse(in, strlen(in), &u), 0);
    assert_string_equal(u.scheme, "https");
    assert_int_equal(u.authority.port, 443);
    assert_int_equal(u.path_len, 1);
    assert_memory_equal(u.path, "/", 1);

    in = "http://[::1]/";
    assert_int_equal(av__absolute_uri_parse(in, strlen(in), &u), 0);
    assert_string_equal(u.authority.host, "::1");
    assert_int_equal(u.authority.port, 80);

    in = "ftp://files.example/pub";
    assert_int_equal(av__absolute_uri_parse(in, strlen(in), &u), 0);
    assert_string_equal(u.scheme, "ftp");
    assert_int_equal(u.authority.port, 21);

    in = "x-my+s.1://h:9/";
    assert_int_equal(av__absolute_uri_parse(in, strlen(in), &u), 0);
    assert_string_equal(u.scheme, "x-my+s.1");
    in = "gopher://h/"; /* unknown scheme without a port */
    assert_int_equal(av__absolute_uri_parse(in, strlen(in), &u), AV_ERR_INVALID);

    static const char *invalid[] = {
        "http://host/a#frag", "http://host#frag", "http://user@host/", "http://user:pw@host/x",
        "http://host:0/", "http://host:65536/", "http://", "http:///x", "http:/host/",
        "http:host", "http://ho st/", "http://host/a b", "http://host/\x7f", "http://host?x=1",
        "http://127.1/", "http://a..b/", "averyveryverylongscheme://h/",
        "http://host/\xc3\xa9",
    };
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++)
        if (av__absolute_uri_parse(invalid[i], strlen(invalid[i]), &u) != AV_ERR_INVALID)
            fail_msg("uri \"%s\" not rejected as invalid", invalid[i]);

    static const char *notabs[] = {"/", "/a?b", "*", "", "1http://h/", "host/x", "-a://h/"};
    for (size_t i = 0; i < sizeof(notabs) / sizeof(notabs[0]); i++)
        if (av__absolute_uri_parse(notabs[i], strlen(notabs[i]), &u) != AV_ERR_NOTFOUND)
            fail_msg("uri \"%s\" not NOTFOUND", notabs[i]);
}

/* origin_forms checks origin-form validation. */
static void origin_forms(void **state)
{
    (void)state;
    assert_int_equal(av__origin_form_valid("/", 1), 1);
    assert_int_equal(av__origin_form_valid("/a/b?c=d&e=%20", 14), 1);
    assert_int_equal(av__origin_form_valid("", 0), 0);
    assert_int_equal(av__origin_form_valid("a/b", 3), 0);
    assert_int_equal(av__origin_form_valid("/a b", 4), 0);
    assert_int_equal(av__origin_form_valid("/a#b", 4), 0);
    assert_int_equal(av__origin_form_valid("/a\tb", 4), 0);
    assert_int_equal(av__origin_form_valid("/a\0b", 4), 0);
    assert_int_equal(av__origin_form_valid("/\x80", 2), 0);
    assert_int_equal(av__origin_form_valid("*", 1), 0);
}

/* wildcards: SECURITY.md rule 3. */
static void wildcards(void **state)
{
    (void)state;
    assert_int_equal(av__host_match_pattern("*.example.com", "a.example.com"), 1);
    assert_int_equal(av__host_match_pattern("*.example.com", "example.com"), 0);
    assert_int_equal(av__host_match_pattern("*.example.com", "a.b.example.com"), 0);
    assert_int_equal(av__host_match_pattern("*.example.com", "evilexample.com"), 0);
    assert_int_equal(av__host_match_pattern("*.example.com", ".example.com"), 0);
    assert_int_equal(av__host_match_pattern("*.example.com", "A.Example.COM"), 1);
    assert_int_equal(av__host_match_pattern("*.example.com", "a.example.com.evil"), 0);
    assert_int_equal(av__host_match_pattern("*.example.com", "a.example.co"), 0);
    assert_int_equal(av__host_match_pattern("api.example.com", "api.example.com"), 1);
    assert_int_equal(av__host_match_pattern("api.example.com", "API.EXAMPLE.COM"), 1);
    assert_int_equal(av__host_match_pattern("api.example.com", "xapi.example.com"), 0);
    assert_int_equal(av__host_match_pattern("api.example.com", "api.example.co"), 0);
    assert_int_equal(av__host_match_pattern("*", "anything"), 0);
    assert_int_equal(av__host_match_pattern("*.", "a."), 0);
}

/* globs checks the path glob matcher, including pathological input. */
static void globs(void **state)
{
    (void)state;
    assert_int_equal(av__glob_match("/v1/*", "/v1/chat", 8), 1);
    assert_int_equal(av__glob_match("/v1/*", "/v1/", 4), 1);
    assert_int_equal(av__glob_match("/v1/*", "/v1", 3), 0);
    assert_int_equal(av__glob_match("/v1/*", "/v2/x", 5), 0);
    assert_int_equal(av__glob_match("/repos/*/issues", "/repos/a/b/issues", 17), 1);
    assert_int_equal(av__glob_match("/repos/*/issues", "/repos/a/b/issues/1", 19), 0);
    assert_int_equal(av__glob_match("/exact", "/exact", 6), 1);
    assert_int_equal(av__glob_match("/exact", "/exactly", 8), 0);
    assert_int_equal(av__glob_match("/exact", "/exac", 5), 0);
    assert_int_equal(av__glob_match("*", "", 0), 1);
    assert_int_equal(av__glob_match("", "", 0), 1);
    assert_int_equal(av__glob_match("", "a", 1), 0);
    assert_int_equal(av__glob_match("**a", "bba", 3), 1);
    assert_int_equal(av__glob_match("*a*", "bbb", 3), 0);
    assert_int_equal(av__glob_match("/a*b*c", "/aXbYc", 6), 1);
    assert_int_equal(av__glob_match("/a*b*c", "/aXbYcZ", 7), 0);
    /* the subject is length-delimited: bytes after n are ignored */
    assert_int_equal(av__glob_match("/v1", "/v1/secret", 3), 1);
    /* a NUL inside the subject never matches a literal */
    assert_int_equal(av__glob_match("/a", "/\0", 2), 0);

    /* pathological: would be exponential with naive backtracking */
    static char big[200001];
    memset(big, 'a', sizeof(big) - 1);
    clock_t t0 = clock();
    assert_int_equal(av__glob_match("*a*a*a*a*a*a*a*a*b", big, sizeof(big) - 1), 0);
    assert_int_equal(av__glob_match("*a*a*a*a*a*a*a*a*a", big, sizeof(big) - 1), 1);
    big[sizeof(big) - 2] = 'b';
    assert_int_equal(av__glob_match("*a*a*a*a*b", big, sizeof(big) - 1), 1);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    assert_true(secs < 2.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hosts),
        cmocka_unit_test(host_lengths),
        cmocka_unit_test(authorities),
        cmocka_unit_test(absolute_uris),
        cmocka_unit_test(origin_forms),
        cmocka_unit_test(wildcards),
        cmocka_unit_test(globs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
