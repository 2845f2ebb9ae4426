/* test_req.c - the stored request (av_req.c, and the store in x_begin).
 *
 * The protocol-neutral copy of an agent's request that an exchange keeps
 * until the upstream's protocol is known: method, target and fields as
 * offsets into one buffer. Checked: what is stored and in which order;
 * what is never stored (hop-by-hop fields, the proxy's own fields, every
 * copy of both credential fields of the service); the cookie join for
 * HTTP/2 agents (RFC 9113 8.2.3); TE: trailers; replacing a field's value;
 * the limits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "conn_harness.h"

#define F(n, v) {n, sizeof(n) - 1, v, sizeof(v) - 1}
#define NF(a) (sizeof(a) / sizeof((a)[0]))

/* the stored fields as "name: value\n" lines, in order */
static const char *dump(const av_exchange *x)
{
    static char out[65536];
    static av_h1_field f[X_RQ_FIELDS];
    size_t n = av__rq_fields(x, f, NF(f));
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o < sizeof(out); i++)
        o += (size_t)snprintf(out + o, sizeof(out) - o, "%.*s: %.*s\n", (int)f[i].name_len, f[i].name,
                              (int)f[i].value_len, f[i].value);
    return out;
}

static const char *method_target(const av_exchange *x)
{
    static char out[4096];
    snprintf(out, sizeof(out), "%.*s %.*s", (int)x->m_len, av__rq_ptr(x, x->m_off), (int)x->t_len,
             av__rq_ptr(x, x->t_off));
    return out;
}

/* ---- av_req.c ---------------------------------------------------------------- */

/* Fields come back in the order they were added, with their exact bytes,
 * however often the buffer grew in between (offsets, not pointers). */
static void add_and_view(void **state)
{
    (void)state;
    av_exchange *x = av__calloc(1, sizeof(*x));
    assert_non_null(x);
    av__buf_init(&x->rq, AV_HEAD_MAX + 8192);
    assert_int_equal(av__rq_put(x, "POST", 4, &x->m_off), AV_OK);
    x->m_len = 4;
    assert_int_equal(av__rq_put(x, "/a?b=c", 6, &x->t_off), AV_OK);
    x->t_len = 6;
    char name[32], value[600];
    char want[65536];
    size_t w = 0;
    for (int i = 0; i < 60; i++) {
        snprintf(name, sizeof(name), "x-field-%d", i);
        memset(value, 'a' + i % 26, (size_t)(i * 9));
        value[i * 9] = '\0';
        assert_int_equal(av__rq_add(x, name, strlen(name), value, strlen(value)), AV_OK);
        w += (size_t)snprintf(want + w, sizeof(want) - w, "%s: %s\n", name, value);
    }
    assert_int_equal(x->nrqf, 60);
    assert_string_equal(dump(x), want);
    assert_string_equal(method_target(x), "POST /a?b=c");
    /* an empty value is a field too */
    assert_int_equal(av__rq_add(x, "x-empty", 7, "", 0), AV_OK);
    av_h1_field f[X_RQ_FIELDS];
    size_t n = av__rq_fields(x, f, NF(f));
    assert_int_equal(n, 61);
    assert_int_equal(f[60].value_len, 0);
    assert_memory_equal(f[60].name, "x-empty", 7);
    /* a view never writes past |max| */
    assert_int_equal(av__rq_fields(x, f, 3), 3);
    av__buf_free_wipe(&x->rq);
    av__free(x);
}

/* Replacing a value: the new bytes are appended and the field points at
 * them; the other fields and the target are untouched. */
static void replace_value(void **state)
{
    (void)state;
    av_exchange *x = av__calloc(1, sizeof(*x));
    assert_non_null(x);
    av__buf_init(&x->rq, AV_HEAD_MAX + 8192);
    assert_int_equal(av__rq_put(x, "GET", 3, &x->m_off), AV_OK);
    x->m_len = 3;
    assert_int_equal(av__rq_put(x, "/", 1, &x->t_off), AV_OK);
    x->t_len = 1;
    assert_int_equal(av__rq_add(x, "a", 1, "one", 3), AV_OK);
    assert_int_equal(av__rq_add(x, "b", 1, "two", 3), AV_OK);
    assert_int_equal(av__rq_add(x, "c", 1, "three", 5), AV_OK);
    assert_int_equal(av__rq_put(x, "TWO-NEW", 7, &x->rqf[1].vo), AV_OK);
    x->rqf[1].vl = 7;
    assert_string_equal(dump(x), "a: one\nb: TWO-NEW\nc: three\n");
    assert_string_equal(method_target(x), "GET /");
    av__buf_free_wipe(&x->rq);
    av__free(x);
}

/* Limits: at most X_RQ_FIELDS fields, and the buffer's maximum. */
static void limits(void **state)
{
    (void)state;
    av_exchange *x = av__calloc(1, sizeof(*x));
    assert_non_null(x);
    av__buf_init(&x->rq, AV_HEAD_MAX + 8192);
    for (size_t i = 0; i < X_RQ_FIELDS; i++)
        assert_int_equal(av__rq_add(x, "n", 1, "v", 1), AV_OK);
    assert_int_equal(av__rq_add(x, "n", 1, "v", 1), AV_ERR_LIMIT);
    assert_int_equal(x->nrqf, X_RQ_FIELDS);
    av__buf_free_wipe(&x->rq);

    memset(x, 0, sizeof(*x));
    av__buf_init(&x->rq, 100);
    static char big[200];
    memset(big, 'v', sizeof(big));
    assert_int_equal(av__rq_add(x, "n", 1, big, 90), AV_OK);
    assert_int_not_equal(av__rq_add(x, "m", 1, big, 20), AV_OK);
    assert_int_equal(x->nrqf, 1); /* a refused field is not half there */
    av__buf_free_wipe(&x->rq);
    av__free(x);
}

/* ---- which agent fields are never forwarded ------------------------------------- */

static int skipped(const av_req_in *in, const av_h1_field *f, const char *inj, const char *alt, int ws_parsed)
{
    return av__x_skip_request_field(in, f, inj, alt, ws_parsed);
}

static void skip_rules(void **state)
{
    (void)state;
    static const av_h1_field fields[] = {
        F("Connection", "close, X-Listed"), F("X-Listed", "1"),         F("Keep-Alive", "5"),
        F("TE", "trailers"),                F("Trailer", "x"),          F("Upgrade", "websocket"),
        F("Proxy-Connection", "keep-alive"), F("Host", "api.test"),     F("Content-Length", "3"),
        F("Transfer-Encoding", "chunked"),  F("Proxy-Authorization", "Basic eA=="),
        F("X-AgentVault-Token", "t"),       F("Authorization", "Bearer agent"),
        F("X-Api-Key", "agent"),            F("Sec-WebSocket-Key", "k"), F("Sec-WebSocket-Extensions", "e"),
        F("Accept", "*/*"),                 F("Cookie", "a=1"),         F("X-Listed-Not", "1"),
    };
    av_req_in in = {.method = "GET", .method_len = 3, .target = "/", .target_len = 1, .fields = fields,
                   .nfields = NF(fields), .minor = 1};
    /* every field, with no service, no WebSocket */
    static const int want_plain[] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < NF(fields); i++)
        if (skipped(&in, &fields[i], NULL, NULL, 0) != want_plain[i])
            fail_msg("no service: %.*s skip=%d", (int)fields[i].name_len, fields[i].name, !want_plain[i]);
    /* the service's fields: main and auth_alt, any case */
    assert_true(skipped(&in, &fields[12], "Authorization", NULL, 0));
    assert_true(skipped(&in, &fields[13], "authorization", "x-api-key", 0));
    assert_true(skipped(&in, &fields[12], "x-api-key", "AUTHORIZATION", 0));
    assert_false(skipped(&in, &fields[16], "Authorization", "x-api-key", 0));
    /* an HTTP/1.1 upgrade keeps the agent's key; extended CONNECT has
     * none (the proxy makes one), so a stray one is dropped */
    av_h1_field key = F("Sec-WebSocket-Key", "k");
    in.ws = 1;
    in.ws_key = &key;
    assert_false(skipped(&in, &fields[14], NULL, NULL, 0));
    in.ws_key = NULL;
    assert_true(skipped(&in, &fields[14], NULL, NULL, 0));
    /* parsed WebSocket modes (frame, scrub) make their own extension offer */
    assert_false(skipped(&in, &fields[15], NULL, NULL, 0));
    assert_true(skipped(&in, &fields[15], NULL, NULL, 1));
}

/* ---- the store in x_begin ---------------------------------------------------------- */

#define SVC_API                                                                                                    \
    "[service \"api\"]\nhost = api.test\nscheme = http\nport = 80\nauth = bearer\nsecret = callback:key\n"
#define SVC_ALT                                                                                                    \
    "[service \"alt\"]\nhost = alt.test\nscheme = http\nport = 80\nauth = header x-api-key {secret}\n"      \
    "auth_alt = bearer\nsecret = callback:key\n"

static void dest_of(av_authority *d, const char *host, int port)
{
    memset(d, 0, sizeof(*d));
    snprintf(d->host, sizeof(d->host), "%s", host);
    d->port = port;
}

/* Begin an exchange on the harness's connection with the secret held:
 * it stops before injection, with the stored request complete. */
static av_exchange *begin_held(xh *h, int h2, const char *method, const char *target, const av_h1_field *f,
                               size_t n, const char *host)
{
    av_exchange *x = &h->c->x;
    /* an agent that joins split cookies (HTTP/2's rule), else HTTP/1.1's */
    static av_agent_ops joining;
    joining = av__agent_h1_ops;
    joining.joins_cookies = 1;
    if (h2)
        x->agent = &joining;
    av_req_in in = {.method = method, .method_len = strlen(method), .target = target, .target_len = strlen(target),
                   .fields = f, .nfields = n, .minor = 1};
    av_authority d;
    dest_of(&d, host, 80);
    h->hold = 1;
    assert_int_equal(xh_begin(x, &in, &d, 0), 0);
    assert_non_null(x->swait); /* waiting for the credential */
    assert_int_equal(h->asked, 1);
    return x;
}

static void store_order_and_stripping(void **state)
{
    (void)state;
    xh h;
    xh_new(&h, NULL, SVC_API);
    static const av_h1_field f[] = {
        F("Accept", "*/*"),        F("Connection", "keep-alive, X-Hop"), F("X-Hop", "1"),
        F("Host", "api.test"),     F("authorization", "Bearer agent-copy"), F("X-B", "2"),
        F("Proxy-Authorization", "Bearer t"), F("Authorization", "Bearer second-copy"),
        F("X-A", "1"),
    };
    av_exchange *x = begin_held(&h, 0, "GET", "/v1/models?q=1", f, NF(f), "api.test");
    assert_string_equal(method_target(x), "GET /v1/models?q=1");
    assert_string_equal(dump(x), "Accept: */*\nX-B: 2\nX-A: 1\n");
    assert_string_equal(x->log_path, "/v1/models"); /* never the query */
    assert_string_equal(x->scope, "api/-");
    assert_string_equal(xh_out(&h), ""); /* nothing answered */
    xh_free(&h);
}

/* Cookies an HTTP/2 agent split into several fields are joined into one
 * with "; " (RFC 9113 8.2.3), placed after the other fields; an HTTP/1.1
 * agent's are kept as they came. */
static void cookie_join(void **state)
{
    (void)state;
    static const av_h1_field f[] = {
        F("cookie", "a=1"), F("accept", "*/*"), F("cookie", "b=2"), F("cookie", "c=3"),
    };
    xh h;
    xh_new(&h, NULL, SVC_API);
    av_exchange *x = begin_held(&h, 1, "GET", "/", f, NF(f), "api.test");
    assert_string_equal(dump(x), "accept: */*\ncookie: a=1; b=2; c=3\n");
    xh_free(&h);

    xh_new(&h, NULL, SVC_API);
    x = begin_held(&h, 0, "GET", "/", f, NF(f), "api.test");
    assert_string_equal(dump(x), "cookie: a=1\naccept: */*\ncookie: b=2\ncookie: c=3\n");
    xh_free(&h);

    /* a single cookie over HTTP/2 */
    xh_new(&h, NULL, SVC_API);
    x = begin_held(&h, 1, "GET", "/", f, 1, "api.test");
    assert_string_equal(dump(x), "cookie: a=1\n");
    xh_free(&h);
}

/* TE is hop-by-hop, but "trailers" in it is remembered (gRPC needs it). */
static void te_trailers(void **state)
{
    (void)state;
    static const av_h1_field with[] = {F("TE", "gzip, trailers"), F("Content-Type", "application/grpc")};
    static const av_h1_field without[] = {F("TE", "gzip"), F("Content-Type", "application/grpc")};
    xh h;
    xh_new(&h, NULL, SVC_API);
    av_exchange *x = begin_held(&h, 0, "POST", "/svc/M", with, NF(with), "api.test");
    assert_true(x->te_trailers);
    assert_string_equal(dump(x), "Content-Type: application/grpc\n");
    xh_free(&h);
    xh_new(&h, NULL, SVC_API);
    x = begin_held(&h, 0, "POST", "/svc/M", without, NF(without), "api.test");
    assert_false(x->te_trailers);
    xh_free(&h);
}

/* auth_alt: the credential goes where the agent put its own (the alt
 * header alone), else the main one; every copy of both is dropped. */
static void alt_choice(void **state)
{
    (void)state;
    static const av_h1_field alt_only[] = {F("Authorization", "Bearer dummy"), F("X-Keep", "1")};
    static const av_h1_field both[] = {F("Authorization", "Bearer dummy"), F("x-api-key", "dummy"),
                                       F("X-Keep", "1")};
    static const av_h1_field neither[] = {F("X-Keep", "1")};
    xh h;
    xh_new(&h, NULL, SVC_ALT);
    av_exchange *x = begin_held(&h, 0, "GET", "/", alt_only, NF(alt_only), "alt.test");
    assert_true(x->inj_alt);
    assert_string_equal(x->inj_name, "Authorization");
    assert_string_equal(dump(x), "X-Keep: 1\n");
    xh_free(&h);
    xh_new(&h, NULL, SVC_ALT);
    x = begin_held(&h, 0, "GET", "/", both, NF(both), "alt.test");
    assert_false(x->inj_alt);
    assert_string_equal(x->inj_name, "x-api-key");
    assert_string_equal(dump(x), "X-Keep: 1\n");
    xh_free(&h);
    xh_new(&h, NULL, SVC_ALT);
    x = begin_held(&h, 0, "GET", "/", neither, NF(neither), "alt.test");
    assert_false(x->inj_alt);
    assert_string_equal(x->inj_name, "x-api-key");
    xh_free(&h);
}

/* Too many fields after rewriting: 431, nothing asked of the resolver. */
static void too_many_fields(void **state)
{
    (void)state;
    static av_h1_field f[X_RQ_FIELDS + 4];
    for (size_t i = 0; i < NF(f); i++)
        f[i] = (av_h1_field){"cookie", 6, "k=v", 3};
    f[0] = (av_h1_field){"x-a", 3, "1", 1};
    xh h;
    xh_new(&h, NULL, SVC_API);
    av_exchange *x = &h.c->x;
    av_req_in in = {.method = "GET", .method_len = 3, .target = "/", .target_len = 1, .fields = f,
                   .nfields = NF(f), .minor = 1};
    av_authority d;
    dest_of(&d, "api.test", 80);
    assert_int_equal(xh_begin(x, &in, &d, 0), -1);
    assert_int_equal(xh_status(xh_out(&h)), 431);
    assert_int_equal(h.asked, 0);
    xh_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(add_and_view),
        cmocka_unit_test(replace_value),
        cmocka_unit_test(limits),
        cmocka_unit_test(skip_rules),
        cmocka_unit_test(store_order_and_stripping),
        cmocka_unit_test(cookie_join),
        cmocka_unit_test(te_trailers),
        cmocka_unit_test(alt_choice),
        cmocka_unit_test(too_many_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
