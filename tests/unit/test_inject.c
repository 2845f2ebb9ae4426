/* test_inject.c - credential in (av_inject.c): injection, placeholders,
 * body collection, the Accept-Encoding limit.
 *
 * Each case begins an exchange on a socketless connection (conn_harness.h)
 * and reads the stored request the upstream would get, or the proxy's
 * answer to the agent. The credential comes from a callback: source the
 * test controls, so secrets with awkward bytes can be tried.
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
#define PH "AV_PLACEHOLDER_0123"

#define HTTP_SVC(name, host) "[service \"" name "\"]\nhost = " host "\nscheme = http\nport = 80\nsecret = callback:key\n"

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

static const char *target(const av_exchange *x)
{
    static char out[8192];
    snprintf(out, sizeof(out), "%.*s", (int)x->t_len, av__rq_ptr(x, x->t_off));
    return out;
}

typedef struct req {
    const char *method, *target;
    const av_h1_field *f;
    size_t n;
    int framing;      /* RB_* */
    uint64_t length;
    unsigned flags;
} req;

/* Begin an exchange to |host|:80 (plain HTTP, so that the upstream is an
 * HTTP/1.1 connection: a pooled fake one for |scope|). Returns
 * av__x_begin's result. */
static int begin(xh *h, const req *r, const char *host, const char *scope)
{
    av_exchange *x = &h->c->x;
    if (scope)
        xh_pool_fake(h, host, 80, scope);
    av_req_in in = {.method = r->method, .method_len = strlen(r->method), .target = r->target,
                   .target_len = strlen(r->target), .fields = r->f, .nfields = r->n, .minor = 1,
                   .framing = r->framing, .length = r->length, .flags = r->flags};
    av_authority d;
    memset(&d, 0, sizeof(d));
    snprintf(d.host, sizeof(d.host), "%s", host);
    d.port = 80;
    return xh_begin(x, &in, &d, 0);
}

/* ---- header and query injection ------------------------------------------------ */

static void inject_bearer(void **state)
{
    (void)state;
    static const av_h1_field f[] = {F("Accept", "*/*"), F("AUTHORIZATION", "Bearer agent-copy")};
    req r = {"GET", "/v1/models", f, NF(f), RB_NONE, 0, 0};
    xh h;
    xh_new(&h, NULL, HTTP_SVC("api", "api.test") "auth = bearer\n");
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    av_exchange *x = &h.c->x;
    assert_string_equal(dump(x), "Accept: */*\nAuthorization: Bearer " XH_KEY "\n");
    assert_true(x->injected);
    assert_ptr_equal(x->link, &av__link_h1_ops);
    assert_non_null(x->up); /* the pooled connection: nothing dialled */
    assert_non_null(x->scrub_set); /* the response will be scrubbed of it */
    assert_string_equal(xh_out(&h), "");
    xh_free(&h);
}

static void inject_basic_and_header(void **state)
{
    (void)state;
    req r = {"GET", "/", NULL, 0, RB_NONE, 0, 0};
    xh h;
    xh_new(&h, NULL, HTTP_SVC("api", "api.test") "auth = basic user\n");
    xh_answer(&h, "pa:ss");
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    /* base64("user:pa:ss") */
    assert_string_equal(dump(&h.c->x), "Authorization: Basic dXNlcjpwYTpzcw==\n");
    xh_free(&h);

    xh_new(&h, NULL, HTTP_SVC("api", "api.test") "auth = header X-Goog-Api-Key \"k={secret};\"\n");
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_string_equal(dump(&h.c->x), "X-Goog-Api-Key: k=" XH_KEY ";\n");
    xh_free(&h);
}

/* A secret that cannot travel in a header: 502, nothing stored. */
static void inject_refuses_bad_secret(void **state)
{
    (void)state;
    req r = {"GET", "/", NULL, 0, RB_NONE, 0, 0};
    xh h;
    xh_new(&h, NULL, HTTP_SVC("api", "api.test") "auth = bearer\n");
    xh_answer(&h, "abc\r\nX-Evil: 1");
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), -1);
    const char *out = xh_out(&h);
    assert_int_equal(xh_status(out), 502);
    assert_null(strstr(out, "X-Evil"));
    assert_false(h.c->x.injected);
    xh_free(&h);
}

/* A secret source that fails: 502 naming the service, never a secret. */
static void secret_unavailable(void **state)
{
    (void)state;
    req r = {"GET", "/", NULL, 0, RB_NONE, 0, 0};
    xh h;
    xh_new(&h, NULL, "[service \"api\"]\nhost = api.test\nscheme = http\nport = 80\nauth = bearer\n"
                     "secret = callback:missing\n");
    xh_answer(&h, "");
    assert_int_equal(begin(&h, &r, "api.test", NULL), -1);
    const char *out = xh_out(&h);
    assert_int_equal(xh_status(out), 502);
    assert_non_null(strstr(out, "credential for service api unavailable"));
    xh_free(&h);
}

static void inject_query(void **state)
{
    (void)state;
    req r = {"GET", "/maps?key=agent&q=a%20b&key=again", NULL, 0, RB_NONE, 0, 0};
    xh h;
    xh_new(&h, NULL, HTTP_SVC("api", "api.test") "auth = query key\n");
    xh_answer(&h, "s/e c+r&t");
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_string_equal(target(&h.c->x), "/maps?q=a%20b&key=s%2Fe%20c%2Br%26t");
    assert_string_equal(dump(&h.c->x), "");
    xh_free(&h);
}

/* auth_alt: the agent sent only the alt header: the credential goes there,
 * in the alt form; otherwise the main form. Never both. */
static void inject_alt(void **state)
{
    (void)state;
    static const av_h1_field alt[] = {F("authorization", "Bearer dummy")};
    static const av_h1_field both[] = {F("authorization", "Bearer dummy"), F("x-api-key", "dummy")};
    const char *svc = HTTP_SVC("api", "api.test") "auth = header x-api-key {secret}\nauth_alt = bearer\n";
    xh h;
    xh_new(&h, NULL, svc);
    req r = {"GET", "/", alt, NF(alt), RB_NONE, 0, 0};
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_string_equal(dump(&h.c->x), "Authorization: Bearer " XH_KEY "\n");
    xh_free(&h);
    xh_new(&h, NULL, svc);
    r = (req){"GET", "/", both, NF(both), RB_NONE, 0, 0};
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_string_equal(dump(&h.c->x), "x-api-key: " XH_KEY "\n");
    xh_free(&h);
}

/* No service: nothing injected, nothing scrubbed, fields untouched. */
static void no_service_no_injection(void **state)
{
    (void)state;
    static const av_h1_field f[] = {F("Authorization", "Bearer own"), F("Accept-Encoding", "br")};
    req r = {"GET", "/", f, NF(f), RB_NONE, 0, 0};
    xh h;
    xh_new(&h, NULL, HTTP_SVC("api", "api.test") "auth = bearer\n");
    assert_int_equal(begin(&h, &r, "other.test", "-/-"), 0);
    assert_string_equal(dump(&h.c->x), "Authorization: Bearer own\nAccept-Encoding: br\n");
    assert_false(h.c->x.injected);
    assert_null(h.c->x.scrub_set);
    assert_int_equal(h.asked, 0);
    xh_free(&h);
}

/* ---- Accept-Encoding: only what the scrubber reads ---------------------------------- */

static void accept_encoding_limit(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"br, gzip, zstd", "gzip"},
        {"gzip, deflate, br", "gzip, deflate"},
        {"deflate;q=0.5, br", "deflate"},
        {"br", "identity"},
        {"zstd, *", "identity"},
        {"identity", "identity"},
    };
    for (size_t i = 0; i < NF(cases); i++) {
        av_h1_field f[] = {{"accept-encoding", 15, cases[i].in, strlen(cases[i].in)}, F("x-after", "1")};
        req r = {"GET", "/", f, NF(f), RB_NONE, 0, 0};
        xh h;
        xh_new(&h, NULL, HTTP_SVC("api", "api.test") "auth = bearer\n");
        assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
        char want[256];
        snprintf(want, sizeof(want), "accept-encoding: %s\nx-after: 1\nAuthorization: Bearer %s\n", cases[i].out,
                 XH_KEY);
        assert_string_equal(dump(&h.c->x), want);
        xh_free(&h);
    }
}

/* ---- placeholders in the head ------------------------------------------------------ */

#define PH_SVC(in) HTTP_SVC("api", "api.test") "auth = bearer\nplaceholder = " PH "\nplaceholder_in = " in "\n"

static void placeholder_header_path_query(void **state)
{
    (void)state;
    static const av_h1_field f[] = {F("X-Key", "k=" PH ";" PH), F("X-Other", "none")};
    req r = {"GET", "/v1/" PH "/x?sig=" PH "&a=1", f, NF(f), RB_NONE, 0, 0};
    xh h;
    xh_new(&h, NULL, PH_SVC("header, path, query"));
    xh_answer(&h, "a/b c");
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    av_exchange *x = &h.c->x;
    /* header: as is; path and query: percent-encoded */
    assert_string_equal(dump(x), "X-Key: k=a/b c;a/b c\nX-Other: none\nAuthorization: Bearer a/b c\n");
    assert_string_equal(target(x), "/v1/a%2Fb%20c/x?sig=a%2Fb%20c&a=1");
    assert_int_equal(x->ph_found, AV_SURF_HEADER | AV_SURF_PATH | AV_SURF_QUERY);
    xh_free(&h);
}

/* A placeholder in a surface the service does not declare: 403 before the
 * secret is even asked for, and the answer names the surface. */
static void placeholder_refused(void **state)
{
    (void)state;
    static const struct {
        const char *decl, *target, *hval, *where;
    } cases[] = {
        {"path", "/", PH, "header"},
        {"header", "/" PH, "x", "path"},
        {"header, path", "/?k=" PH, "x", "query"},
        {"query", "/a" PH "?k=1", "x", "path"},
        {"body", "/", "Bearer " PH, "header"},
    };
    for (size_t i = 0; i < NF(cases); i++) {
        av_h1_field f[] = {{"x-key", 5, cases[i].hval, strlen(cases[i].hval)}};
        req r = {"GET", cases[i].target, f, NF(f), RB_NONE, 0, 0};
        xh h;
        char svc[512];
        snprintf(svc, sizeof(svc), "%s", HTTP_SVC("api", "api.test") "auth = bearer\nplaceholder = " PH "\n");
        snprintf(svc + strlen(svc), sizeof(svc) - strlen(svc), "placeholder_in = %s\n", cases[i].decl);
        xh_new(&h, NULL, svc);
        assert_int_equal(begin(&h, &r, "api.test", NULL), -1);
        const char *out = xh_out(&h);
        assert_int_equal(xh_status(out), 403);
        char want[128];
        snprintf(want, sizeof(want), "placeholder_in does not include %s", cases[i].where);
        if (!strstr(out, want))
            fail_msg("case %zu: %s", i, out);
        assert_int_equal(h.asked, 0);
        xh_free(&h);
    }
}

/* A secret with CR/LF cannot replace a placeholder in a header: 502. */
static void placeholder_header_bad_secret(void **state)
{
    (void)state;
    static const av_h1_field f[] = {F("X-Key", PH)};
    req r = {"GET", "/", f, NF(f), RB_NONE, 0, 0};
    xh h;
    xh_new(&h, NULL, PH_SVC("header"));
    xh_answer(&h, "a\nb");
    assert_int_equal(begin(&h, &r, "api.test", NULL), -1);
    assert_int_equal(xh_status(xh_out(&h)), 502);
    xh_free(&h);
}

/* ---- placeholders in bodies ---------------------------------------------------------- */

/* Feed |body| as the agent's HTTP/1.1 body and collect it. */
static int collect(xh *h, const char *body)
{
    av__buf_append(h->c->a.pin, body, strlen(body));
    return av__x_collect_body(&h->c->x);
}

static const char *bbuf(const av_exchange *x)
{
    static char out[8192];
    size_t n = x->bbuf.len < sizeof(out) - 1 ? x->bbuf.len : sizeof(out) - 1;
    memcpy(out, av__buf_head(&x->bbuf), n);
    out[n] = '\0';
    return out;
}

static void body_json_and_form(void **state)
{
    (void)state;
    const char *json = "{\"key\":\"" PH "\",\"n\":1}";
    av_h1_field fj[] = {F("Content-Type", "application/json; charset=utf-8")};
    req r = {"POST", "/v1", fj, NF(fj), RB_LENGTH, strlen(json), 0};
    xh h;
    /* (a query service: a control character may not go into a header) */
    xh_new(&h, NULL, HTTP_SVC("api", "api.test") "auth = query k\nplaceholder = " PH "\nplaceholder_in = body\n");
    xh_answer(&h, "q\"u\\o\x01te");
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    av_exchange *x = &h.c->x;
    assert_int_equal(x->body_buffer, 1);
    assert_int_equal(collect(&h, json), 1);
    assert_true(x->body_collected);
    assert_string_equal(bbuf(x), "{\"key\":\"q\\\"u\\\\o\\u0001te\",\"n\":1}");
    assert_int_equal(x->req_framing, RB_LENGTH);
    assert_int_equal(x->req_len, x->bbuf.len);
    xh_free(&h);

    /* +json media types too */
    av_h1_field fv[] = {F("content-type", "application/vnd.api+json")};
    r = (req){"POST", "/v1", fv, NF(fv), RB_LENGTH, strlen(json), 0};
    xh_new(&h, NULL, PH_SVC("body"));
    xh_answer(&h, "plain");
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_int_equal(collect(&h, json), 1);
    assert_string_equal(bbuf(&h.c->x), "{\"key\":\"plain\",\"n\":1}");
    xh_free(&h);

    const char *form = "a=1&token=" PH "&b=" PH;
    av_h1_field ff[] = {F("Content-Type", "application/x-www-form-urlencoded")};
    r = (req){"POST", "/v1", ff, NF(ff), RB_LENGTH, strlen(form), 0};
    xh_new(&h, NULL, PH_SVC("body"));
    xh_answer(&h, "a&b=c d");
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_int_equal(h.c->x.body_buffer, 2);
    assert_int_equal(collect(&h, form), 1);
    assert_string_equal(bbuf(&h.c->x), "a=1&token=a%26b%3Dc%20d&b=a%26b%3Dc%20d");
    xh_free(&h);
}

/* Bodies of other types are not collected; a JSON body with the
 * placeholder of a service that does not declare "body" is refused. */
static void body_not_declared_or_other_type(void **state)
{
    (void)state;
    const char *json = "{\"key\":\"" PH "\"}";
    av_h1_field fj[] = {F("Content-Type", "application/json")};
    req r = {"POST", "/v1", fj, NF(fj), RB_LENGTH, strlen(json), 0};
    xh h;
    xh_new(&h, NULL, PH_SVC("header"));
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_int_equal(h.c->x.body_buffer, 1);
    assert_int_equal(collect(&h, json), 1);
    const char *out = xh_out(&h);
    assert_int_equal(xh_status(out), 403);
    assert_non_null(strstr(out, "found in the body"));
    xh_free(&h);

    av_h1_field fo[] = {F("Content-Type", "application/octet-stream")};
    r = (req){"POST", "/v1", fo, NF(fo), RB_LENGTH, 4, 0};
    xh_new(&h, NULL, PH_SVC("body"));
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_int_equal(h.c->x.body_buffer, 0);
    xh_free(&h);

    /* no placeholder configured: not collected either */
    xh_new(&h, NULL, HTTP_SVC("api", "api.test") "auth = bearer\n");
    r = (req){"POST", "/v1", fj, NF(fj), RB_LENGTH, strlen(json), 0};
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_int_equal(h.c->x.body_buffer, 0);
    xh_free(&h);
}

/* Collection is bounded (8 MiB): a larger body is refused with 413. */
static void body_too_large(void **state)
{
    (void)state;
    size_t n = X_BODY_BUFFER_MAX + 10;
    av_h1_field fj[] = {F("Content-Type", "application/json")};
    req r = {"POST", "/v1", fj, NF(fj), RB_LENGTH, n, 0};
    xh h;
    xh_new(&h, NULL, PH_SVC("body"));
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    av_exchange *x = &h.c->x;
    static char chunk[65536];
    memset(chunk, ' ', sizeof(chunk));
    size_t fed = 0;
    int refused = 0;
    while (fed < n && !refused) {
        size_t k = n - fed < sizeof(chunk) ? n - fed : sizeof(chunk);
        av__buf_append(h.c->a.pin, chunk, k);
        fed += k;
        av__x_collect_body(x);
        refused = h.c->a.pout->len > 0;
    }
    assert_true(refused);
    assert_true(x->bbuf.len <= X_BODY_BUFFER_MAX);
    assert_int_equal(xh_status(xh_out(&h)), 413);
    xh_free(&h);
}

/* Expect: 100-continue: collecting the body tells the agent to send it. */
static void body_expect_continue(void **state)
{
    (void)state;
    const char *json = "{}";
    av_h1_field fj[] = {F("Content-Type", "application/json")};
    req r = {"POST", "/v1", fj, NF(fj), RB_LENGTH, 2, AV_H1_F_EXPECT_CONTINUE};
    xh h;
    xh_new(&h, NULL, PH_SVC("body"));
    assert_int_equal(begin(&h, &r, "api.test", "api/-"), 0);
    assert_string_equal(xh_out(&h), "");
    assert_int_equal(av__x_collect_body(&h.c->x), 1);
    assert_string_equal(xh_out(&h), "HTTP/1.1 100 Continue\r\n\r\n");
    assert_int_equal(collect(&h, json), 1);
    assert_string_equal(bbuf(&h.c->x), "{}");
    xh_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(inject_bearer),
        cmocka_unit_test(inject_basic_and_header),
        cmocka_unit_test(inject_refuses_bad_secret),
        cmocka_unit_test(secret_unavailable),
        cmocka_unit_test(inject_query),
        cmocka_unit_test(inject_alt),
        cmocka_unit_test(no_service_no_injection),
        cmocka_unit_test(accept_encoding_limit),
        cmocka_unit_test(placeholder_header_path_query),
        cmocka_unit_test(placeholder_refused),
        cmocka_unit_test(placeholder_header_bad_secret),
        cmocka_unit_test(body_json_and_form),
        cmocka_unit_test(body_not_declared_or_other_type),
        cmocka_unit_test(body_too_large),
        cmocka_unit_test(body_expect_continue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
