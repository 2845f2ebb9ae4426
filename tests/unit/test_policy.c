/* test_policy.c - service matching precedence and credential injection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_config.h"
#include "av_policy.h"

/* cfg_from parses a config text or fails the test. */
static av_config *cfg_from(const char *text)
{
    av_config *c = NULL;
    assert_int_equal(av_config_new(&c), 0);
    if (av_config_load_string(c, text, strlen(text), "p.conf") != 0)
        fail_msg("config: %s", av_config_error(c));
    return c;
}

/* match_name runs the matcher and returns the service name or "-". */
static const char *match_name(const av_config *c, int http, const char *host, int port,
                              const char *method, const char *path)
{
    const av_service *s = av__policy_match(c, http, host, port, method, strlen(method),
                                           path, strlen(path));
    return s ? s->name : "-";
}

#define SVC(name, extra) \
    "[service \"" name "\"]\n" extra "auth = bearer\nsecret = env:" name "\n"

/* exact_beats_wildcard: rule 1, regardless of declaration order. */
static void exact_beats_wildcard(void **state)
{
    (void)state;
    av_config *c = cfg_from(SVC("wild", "host = *.example.com\npath = /v1/*\nmethods = GET\n")
                            SVC("exact", "host = api.example.com\n"));
    assert_string_equal(match_name(c, 0, "api.example.com", 443, "GET", "/v1/x"), "exact");
    assert_string_equal(match_name(c, 0, "API.Example.com", 443, "GET", "/v1/x"), "exact");
    assert_string_equal(match_name(c, 0, "other.example.com", 443, "GET", "/v1/x"), "wild");
    assert_string_equal(match_name(c, 0, "other.example.com", 443, "GET", "/v2/x"), "-");
    assert_string_equal(match_name(c, 0, "example.com", 443, "GET", "/v1/x"), "-");
    assert_string_equal(match_name(c, 0, "a.b.example.com", 443, "GET", "/v1/x"), "-");
    assert_string_equal(match_name(c, 0, "evilexample.com", 443, "GET", "/v1/x"), "-");
    av_config_free(c);
}

/* path_rules: rule 2 (glob beats none, longer literal prefix, longer glob). */
static void path_rules(void **state)
{
    (void)state;
    av_config *c = cfg_from(SVC("none", "host = a.example\n")
                            SVC("v1", "host = a.example\npath = /v1/*\n")
                            SVC("chat", "host = a.example\npath = /v1/chat/*\n")
                            SVC("deep", "host = a.example\npath = /v1/*/x*\n")
                            SVC("meth", "host = a.example\nmethods = POST\n")
                            SVC("long", "host = a.example\npath = /v1/*/completions\n"));
    assert_string_equal(match_name(c, 0, "a.example", 443, "GET", "/other"), "none");
    assert_string_equal(match_name(c, 0, "a.example", 443, "GET", "/v1/models"), "v1");
    assert_string_equal(match_name(c, 0, "a.example", 443, "GET", "/v1/chat/completions"), "chat");
    /* same literal prefix "/v1/": the longer glob wins */
    assert_string_equal(match_name(c, 0, "a.example", 443, "GET", "/v1/a/xyz"), "deep");
    /* the longer literal prefix beats the longer glob */
    assert_string_equal(match_name(c, 0, "a.example", 443, "GET", "/v1/chat/xy"), "chat");
    assert_string_equal(match_name(c, 0, "a.example", 443, "GET", "/v1/chat/completions"), "chat");
    assert_string_equal(match_name(c, 0, "a.example", 443, "GET", "/v1/x/completions"), "long");
    /* a path glob beats a method list (rule 2 before rule 3) */
    assert_string_equal(match_name(c, 0, "a.example", 443, "POST", "/v1/models"), "v1");
    assert_string_equal(match_name(c, 0, "a.example", 443, "POST", "/other"), "meth");
    /* the query is ignored for matching */
    assert_string_equal(match_name(c, 0, "a.example", 443, "GET", "/v1/chat/?q=/v1"), "chat");
    assert_string_equal(match_name(c, 0, "a.example", 443, "GET", "/x?/v1/chat/a"), "none");
    av_config_free(c);
}

/* method_rules: rule 3 and method names. */
static void method_rules(void **state)
{
    (void)state;
    av_config *c = cfg_from(SVC("any", "host = m.example\n")
                            SVC("write", "host = m.example\nmethods = POST, PUT\n")
                            SVC("only", "host = n.example\nmethods = GET\n"));
    assert_string_equal(match_name(c, 0, "m.example", 443, "POST", "/"), "write");
    assert_string_equal(match_name(c, 0, "m.example", 443, "PUT", "/"), "write");
    assert_string_equal(match_name(c, 0, "m.example", 443, "GET", "/"), "any");
    assert_string_equal(match_name(c, 0, "m.example", 443, "post", "/"), "any");
    assert_string_equal(match_name(c, 0, "n.example", 443, "GET", "/"), "only");
    assert_string_equal(match_name(c, 0, "n.example", 443, "HEAD", "/"), "-");
    assert_string_equal(match_name(c, 0, "n.example", 443, "get", "/"), "-");
    assert_string_equal(match_name(c, 0, "n.example", 443, "GETX", "/"), "-");

    assert_int_equal(av__method_bit("GET", 3), AV_M_GET);
    assert_int_equal(av__method_bit("HEAD", 4), AV_M_HEAD);
    assert_int_equal(av__method_bit("POST", 4), AV_M_POST);
    assert_int_equal(av__method_bit("PUT", 3), AV_M_PUT);
    assert_int_equal(av__method_bit("DELETE", 6), AV_M_DELETE);
    assert_int_equal(av__method_bit("PATCH", 5), AV_M_PATCH);
    assert_int_equal(av__method_bit("OPTIONS", 7), AV_M_OPTIONS);
    assert_int_equal(av__method_bit("GETS", 3), AV_M_GET);
    assert_int_equal(av__method_bit("GET", 2), 0);
    assert_int_equal(av__method_bit("TRACE", 5), 0);
    assert_int_equal(av__method_bit("CONNECT", 7), 0);
    assert_int_equal(av__method_bit(NULL, 0), 0);
    av_config_free(c);
}

/* declaration_order: rule 4. */
static void declaration_order(void **state)
{
    (void)state;
    av_config *c = cfg_from(SVC("first", "host = d.example\npath = /a*\n")
                            SVC("second", "host = d.example\npath = /a*\n")
                            SVC("w1", "host = *.w.example\n")
                            SVC("w2", "host = *.w.example\n"));
    assert_string_equal(match_name(c, 0, "d.example", 443, "GET", "/abc"), "first");
    assert_string_equal(match_name(c, 0, "x.w.example", 443, "GET", "/"), "w1");
    av_config_free(c);
}

/* scheme_and_port: SECURITY.md 4. */
static void scheme_and_port(void **state)
{
    (void)state;
    av_config *c = cfg_from(SVC("bare", "host = b.example\n")
                            SVC("p8443", "host = b.example\nport = 8443\n")
                            SVC("plain", "host = h.example\nscheme = http\nport = 8080\n")
                            SVC("plain80", "host = h80.example\nscheme = http\nport = 80\n"));
    assert_string_equal(match_name(c, 0, "b.example", 443, "GET", "/"), "bare");
    assert_string_equal(match_name(c, 0, "b.example", 8443, "GET", "/"), "p8443");
    assert_string_equal(match_name(c, 0, "b.example", 80, "GET", "/"), "-");
    assert_string_equal(match_name(c, 1, "b.example", 443, "GET", "/"), "-");
    assert_string_equal(match_name(c, 1, "b.example", 80, "GET", "/"), "-");
    assert_string_equal(match_name(c, 1, "h.example", 8080, "GET", "/"), "plain");
    assert_string_equal(match_name(c, 0, "h.example", 8080, "GET", "/"), "-");
    assert_string_equal(match_name(c, 1, "h.example", 80, "GET", "/"), "-");
    assert_string_equal(match_name(c, 1, "h80.example", 80, "GET", "/"), "plain80");
    assert_string_equal(match_name(c, 0, "h80.example", 443, "GET", "/"), "-");
    av_config_free(c);
}

/* ip_literals: an IP destination matches only a service naming that IP. */
static void ip_literals(void **state)
{
    (void)state;
    av_config *c = cfg_from(SVC("ip4", "host = 10.0.0.5\n")
                            SVC("ip6", "host = [2001:db8::1]\n")
                            SVC("name", "host = *.example.com\n")
                            SVC("host", "host = localhost\n"));
    assert_string_equal(match_name(c, 0, "10.0.0.5", 443, "GET", "/"), "ip4");
    assert_string_equal(match_name(c, 0, "10.0.0.6", 443, "GET", "/"), "-");
    assert_string_equal(match_name(c, 0, "2001:db8::1", 443, "GET", "/"), "ip6");
    assert_string_equal(match_name(c, 0, "2001:DB8:0::1", 443, "GET", "/"), "ip6");
    assert_string_equal(match_name(c, 0, "127.0.0.1", 443, "GET", "/"), "-");
    assert_string_equal(match_name(c, 0, "::1", 443, "GET", "/"), "-");
    /* non-canonical or malformed hosts never match anything */
    assert_string_equal(match_name(c, 0, "010.0.0.5", 443, "GET", "/"), "-");
    assert_string_equal(match_name(c, 0, "a.example.com.", 443, "GET", "/"), "-");
    assert_string_equal(match_name(c, 0, "a.example.com:443", 443, "GET", "/"), "-");
    assert_string_equal(match_name(c, 0, "[2001:db8::1]", 443, "GET", "/"), "-");
    assert_string_equal(match_name(c, 0, "a.example.com", 443, "GET", "/"), "name");
    assert_null(av__policy_match(c, 0, NULL, 443, "GET", 3, "/", 1));
    assert_null(av__policy_match(NULL, 0, "a.example.com", 443, "GET", 3, "/", 1));
    av_config_free(c);
}

/* inject checks one header injection byte for byte. */
static void expect_header(const av_service *s, const char *secret, const char *name,
                          const char *value)
{
    av_secret *sec = av__secret_new(secret, strlen(secret));
    const char *n = NULL;
    av_secret *v = NULL;
    assert_int_equal(av__inject_header(s, sec, &n, &v), 0);
    assert_string_equal(n, name);
    assert_int_equal(av__secret_len(v), strlen(value));
    assert_memory_equal(av__secret_data(v), value, strlen(value));
    av__secret_free(v);
    av__secret_free(sec);
}

/* header_injection: bearer, basic and header templates. */
static void header_injection(void **state)
{
    (void)state;
    av_config *c = cfg_from(
        "[service \"b\"]\nhost = a.example\nauth = bearer\nsecret = env:A\n"
        "[service \"ba\"]\nhost = b.example\nauth = basic alice\nsecret = env:A\n"
        "[service \"bu\"]\nhost = c.example\nauth = basic u\nsecret = env:A\n"
        "[service \"bs\"]\nhost = d.example\nauth = basic \"Alice Smith\"\nsecret = env:A\n"
        "[service \"h\"]\nhost = e.example\nauth = header Authorization \"token {secret}\"\nsecret = env:A\n"
        "[service \"h2\"]\nhost = f.example\nauth = header x-api-key {secret}\nsecret = env:A\n"
        "[service \"h3\"]\nhost = g.example\nauth = header X-K \"a{secret}b {}\"\nsecret = env:A\n"
        "[service \"q\"]\nhost = q.example\nauth = query key\nsecret = env:A\n");
    expect_header(&c->services[0], "sk-123", "Authorization", "Bearer sk-123");
    expect_header(&c->services[1], "s3cr3t", "Authorization", "Basic YWxpY2U6czNjcjN0");
    expect_header(&c->services[2], "p", "Authorization", "Basic dTpw");
    expect_header(&c->services[2], "pw", "Authorization", "Basic dTpwdw==");
    expect_header(&c->services[2], "pwd", "Authorization", "Basic dTpwd2Q=");
    expect_header(&c->services[3], "x", "Authorization", "Basic QWxpY2UgU21pdGg6eA==");
    expect_header(&c->services[4], "ghp_abc", "Authorization", "token ghp_abc");
    expect_header(&c->services[5], "k", "x-api-key", "k");
    expect_header(&c->services[6], "S", "X-K", "aSb {}");

    /* basic carries any bytes (base64); verbatim kinds refuse CR/LF/NUL */
    expect_header(&c->services[2], "a\r\nb", "Authorization", "Basic dTphDQpi");
    const char *n;
    av_secret *v = NULL;
    av_secret *bad = av__secret_new("sk\r\nX-Evil: 1", 14);
    assert_int_equal(av__inject_header(&c->services[0], bad, &n, &v), AV_ERR_INVALID);
    assert_int_equal(av__inject_header(&c->services[4], bad, &n, &v), AV_ERR_INVALID);
    av__secret_free(bad);
    bad = av__secret_new("a\0b", 3);
    assert_int_equal(av__inject_header(&c->services[0], bad, &n, &v), AV_ERR_INVALID);
    av__secret_free(bad);
    av_secret *ok = av__secret_new("k", 1);
    assert_int_equal(av__inject_header(&c->services[7], ok, &n, &v), AV_ERR_INVALID);
    assert_null(v);
    av__secret_free(ok);
    av_config_free(c);
}

/* expect_query runs query injection and compares the target. */
static void expect_query(const av_service *s, const char *secret, const char *path,
                         const char *want)
{
    av_secret *sec = av__secret_new(secret, strlen(secret));
    av_secret *out = av__inject_query(s, sec, path, strlen(path));
    assert_non_null(out);
    if (av__secret_len(out) != strlen(want) ||
        memcmp(av__secret_data(out), want, strlen(want)) != 0)
        fail_msg("query: got \"%.*s\", want \"%s\"", (int)av__secret_len(out),
                 (const char *)av__secret_data(out), want);
    av__secret_free(out);
    av__secret_free(sec);
}

/* query_injection replaces agent copies and keeps other parameters. */
static void query_injection(void **state)
{
    (void)state;
    av_config *c = cfg_from(
        "[service \"q\"]\nhost = q.example\nauth = query api_key\nsecret = env:A\n"
        "[service \"b\"]\nhost = b.example\nauth = bearer\nsecret = env:A\n");
    const av_service *q = &c->services[0];
    expect_query(q, "sk", "/v1/x", "/v1/x?api_key=sk");
    expect_query(q, "sk", "/", "/?api_key=sk");
    expect_query(q, "sk", "/p?", "/p?api_key=sk");
    expect_query(q, "sk", "/p?a=1&b=2", "/p?a=1&b=2&api_key=sk");
    expect_query(q, "sk", "/p?api_key=agent", "/p?api_key=sk");
    expect_query(q, "sk", "/p?a=1&api_key=agent&b=2", "/p?a=1&b=2&api_key=sk");
    expect_query(q, "sk",
                 "/p?api%5Fkey=1&api%5fkey=2&%61pi_key=3&api_key&api_key=&API_KEY=4&api_key2=5&xapi_key=6",
                 "/p?API_KEY=4&api_key2=5&xapi_key=6&api_key=sk");
    /* malformed escapes are compared literally and so are kept */
    expect_query(q, "sk", "/p?api_key%=1&api_key%4=2&api_key%zz=3",
                 "/p?api_key%=1&api_key%4=2&api_key%zz=3&api_key=sk");
    /* empty pairs are dropped, values with '=' kept intact */
    expect_query(q, "sk", "/p?&&a==b&&", "/p?a==b&api_key=sk");
    /* the secret is percent-encoded (everything but unreserved) */
    expect_query(q, "a b/c+d&e=f%~._-\xff", "/p?x=1",
                 "/p?x=1&api_key=a%20b%2Fc%2Bd%26e%3Df%25~._-%FF");
    /* wrong kind */
    av_secret *s = av__secret_new("k", 1);
    assert_null(av__inject_query(&c->services[1], s, "/", 1));
    av__secret_free(s);
    av_config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(exact_beats_wildcard),
        cmocka_unit_test(path_rules),
        cmocka_unit_test(method_rules),
        cmocka_unit_test(declaration_order),
        cmocka_unit_test(scheme_and_port),
        cmocka_unit_test(ip_literals),
        cmocka_unit_test(header_injection),
        cmocka_unit_test(query_injection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
