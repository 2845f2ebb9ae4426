/* test_proxy_req.c - admission (av_proxy_req.c and the refusals at the top
 * of x_begin): CONNECT and its target, absolute-form and origin-form heads,
 * the Host binding inside a tunnel (SECURITY 1), proxy tokens with their
 * scope and rate, gateway rules and tokens, the SSRF refusal of address
 * literals at CONNECT, and the methods and upgrades never relayed
 * (SECURITY 9).
 *
 * Heads are parsed by the library's own parser from the agent side of a
 * socketless connection (conn_harness.h); the proxy's answer is read back
 * from that side.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "conn_harness.h"

#define NF(a) (sizeof(a) / sizeof((a)[0]))
#define TOKEN "tok-7Hq2Lm9Xv4"
#define GWTOKEN "gwt-Pq83Ks0Rz1"
#define API_HTTP "[service \"api\"]\nhost = api.test\nscheme = http\nport = 80\nauth = bearer\nsecret = callback:key\n"
#define API_TLS "[service \"tls\"]\nhost = tls.test\nauth = bearer\nsecret = callback:key\n"

/* Parse |head| from the agent side and hand it to the proxy-level or the
 * tunnel-level admission. Returns what the proxy wrote back. */
static const char *send_head(xh *h, int tunnel, const char *head)
{
    av_conn *c = h->c;
    av__buf_consume(c->a.pin, c->a.pin->len); /* a refused head is left there */
    av__buf_append(c->a.pin, head, strlen(head));
    av_h1_scan scan;
    memset(&scan, 0, sizeof(scan));
    static av_h1_request req;
    static const av_h1_limits lim = {AV_HEAD_MAX, AV_FIELDS_MAX};
    ssize_t n = av__h1_parse_request(av__buf_head(c->a.pin), c->a.pin->len, &lim, &scan, &req);
    if (n <= 0)
        fail_msg("head does not parse (%zd): %s", n, head);
    if (tunnel)
        av__conn_tunnel_request(c, &req, (size_t)n);
    else
        av__conn_proxy_request(c, &req, (size_t)n);
    return xh_out(h);
}

static void tunnel_to(xh *h, const char *host, int port, int tls)
{
    av_conn *c = h->c;
    c->in_tunnel = 1;
    memset(&c->dest, 0, sizeof(c->dest));
    snprintf(c->dest.host, sizeof(c->dest.host), "%s", host);
    c->dest.port = port;
    c->dest_tls = tls;
    c->state = C_TUNNEL_HEAD;
}

static void has(const char *out, const char *needle)
{
    if (!out) {
        fail_msg("no output (looking for \"%s\")", needle);
        return;
    }
    if (!strstr(out, needle))
        fail_msg("no \"%s\" in:\n%s", needle, out);
}

/* ---- CONNECT ----------------------------------------------------------------------- */

static void connect_ok(void **state)
{
    (void)state;
    xh h;
    xh_new(&h, NULL, API_TLS);
    const char *out = send_head(&h, 0, "CONNECT tls.test:443 HTTP/1.1\r\nHost: tls.test:443\r\n\r\n");
    assert_string_equal(out, "HTTP/1.1 200 Connection Established\r\n\r\n");
    assert_int_equal(h.c->state, C_TUNNEL_SNIFF);
    assert_true(h.c->in_tunnel);
    assert_string_equal(h.c->dest.host, "tls.test");
    assert_int_equal(h.c->dest.port, 443);
    assert_int_equal(h.c->a.pin->len, 0); /* the head was consumed */
    xh_free(&h);
}

static void connect_bad_targets(void **state)
{
    (void)state;
    static const char *const targets[] = {
        "tls.test",         /* no port */
        "tls.test:",        /* empty port */
        "tls.test:0",       /* port 0 */
        "tls.test:65536",   /* too large */
        "tls.test:44x",     /* not a number */
        "bad_host!:443",    /* not a host name */
        "[::1:443",         /* broken IPv6 literal */
        "http://tls.test:443",
        ":443",
    };
    for (size_t i = 0; i < NF(targets); i++) {
        xh h;
        xh_new(&h, NULL, API_TLS);
        char head[256];
        snprintf(head, sizeof(head), "CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n", targets[i]);
        const char *out = send_head(&h, 0, head);
        if (xh_status(out) != 400)
            fail_msg("CONNECT %s: %s", targets[i], out);
        has(out, "CONNECT target must be host:port");
        assert_int_not_equal(h.c->state, C_TUNNEL_SNIFF);
        assert_false(h.c->in_tunnel);
        xh_free(&h);
    }
}

static void connect_with_body(void **state)
{
    (void)state;
    xh h;
    xh_new(&h, NULL, API_TLS);
    const char *out =
        send_head(&h, 0, "CONNECT tls.test:443 HTTP/1.1\r\nHost: tls.test:443\r\nContent-Length: 3\r\n\r\nabc");
    assert_int_equal(xh_status(out), 400);
    has(out, "CONNECT with a body is not allowed");
    assert_false(h.c->in_tunnel);
    xh_free(&h);
}

/* Address literals the SSRF guard refuses are refused at CONNECT already,
 * with 403 and the reason; a name is decided when dialled. */
static void connect_ssrf_literals(void **state)
{
    (void)state;
    static const char *const refused[] = {
        "10.1.2.3:443", "192.168.0.1:443", "169.254.169.254:80", "[::ffff:10.0.0.1]:443", "0.0.0.0:443",
        "[fd00::1]:443",
    };
    for (size_t i = 0; i < NF(refused); i++) {
        xh h;
        xh_new(&h, NULL, API_TLS);
        char head[256];
        snprintf(head, sizeof(head), "CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n", refused[i]);
        const char *out = send_head(&h, 0, head);
        if (xh_status(out) != 403)
            fail_msg("CONNECT %s: %s", refused[i], out);
        has(out, "destination address not allowed");
        assert_false(h.c->in_tunnel);
        xh_free(&h);
    }
    /* allow_private opens a range */
    xh h;
    xh_new(&h, "allow_private = 10.0.0.0/8\n", API_TLS);
    const char *out = send_head(&h, 0, "CONNECT 10.1.2.3:443 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(xh_status(out), 200);
    xh_free(&h);
}

/* ---- proxy tokens --------------------------------------------------------------------- */

#define TOK_SECTION "[token \"agent\"]\nsecret = env:XT_PROXY_TOKEN\n"

static void tokens(void **state)
{
    (void)state;
    setenv("XT_PROXY_TOKEN", TOKEN, 1);
    static const struct {
        const char *auth;
        int status;
    } cases[] = {
        {NULL, 407},
        {"Proxy-Authorization: Basic YWdlbnQ6dG9rLTdIcTJMbTlYdjQ=\r\n", 200}, /* agent:TOKEN */
        {"Proxy-Authorization: Basic dG9rLTdIcTJMbTlYdjQ=\r\n", 200},         /* TOKEN alone */
        {"Proxy-Authorization: Bearer " TOKEN "\r\n", 200},
        {"Proxy-Authorization: bearer   " TOKEN "\r\n", 200},
        {"Proxy-Authorization: Bearer " TOKEN "x\r\n", 407},
        {"Proxy-Authorization: Bearer tok-7Hq2Lm9Xv\r\n", 407},
        {"Proxy-Authorization: Basic YWdlbnQ6d3Jvbmc=\r\n", 407},               /* agent:wrong */
        {"Proxy-Authorization: Basic !!!!\r\n", 407},
        {"Proxy-Authorization: Digest " TOKEN "\r\n", 407},
        {"Authorization: Bearer " TOKEN "\r\n", 407}, /* not the proxy's field */
    };
    for (size_t i = 0; i < NF(cases); i++) {
        xh h;
        xh_new(&h, NULL, API_TLS TOK_SECTION);
        char head[512];
        snprintf(head, sizeof(head), "CONNECT tls.test:443 HTTP/1.1\r\nHost: tls.test:443\r\n%s\r\n",
                 cases[i].auth ? cases[i].auth : "");
        const char *out = send_head(&h, 0, head);
        if (xh_status(out) != cases[i].status)
            fail_msg("case %zu (%s): %s", i, cases[i].auth ? cases[i].auth : "none", out);
        if (cases[i].status == 407) {
            has(out, "Proxy-Authenticate: Basic realm=\"agentvault\"");
            assert_null(strstr(out, TOKEN));
            assert_int_equal(h.c->token, -1);
        } else {
            assert_int_equal(h.c->token, 0);
        }
        xh_free(&h);
    }
    /* absolute-form requests need it too */
    xh h;
    xh_new(&h, NULL, API_HTTP TOK_SECTION);
    const char *out = send_head(&h, 0, "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_int_equal(xh_status(out), 407);
    xh_free(&h);
}

/* A token limited to some services: others get 403 (JSON), before the
 * credential is asked for; unmatched = deny for a token. */
static void token_scope_and_unmatched(void **state)
{
    (void)state;
    setenv("XT_PROXY_TOKEN", TOKEN, 1);
    xh h;
    xh_new(&h, NULL,
           API_HTTP "[service \"other\"]\nhost = other.test\nscheme = http\nport = 80\nauth = bearer\n"
                    "secret = callback:key\n" TOK_SECTION "services = other\nunmatched = deny\n");
    const char *out = send_head(&h, 0,
                                "GET http://api.test/v1 HTTP/1.1\r\nHost: api.test\r\n"
                                "Proxy-Authorization: Bearer " TOKEN "\r\n\r\n");
    assert_int_equal(xh_status(out), 403);
    has(out, "token agent may not use service api");
    has(out, "application/json");
    assert_int_equal(h.asked, 0);
    xh_free(&h);

    xh_new(&h, NULL, API_HTTP TOK_SECTION "unmatched = deny\n");
    out = send_head(&h, 0,
                    "GET http://nomatch.test/ HTTP/1.1\r\nHost: nomatch.test\r\n"
                    "Proxy-Authorization: Bearer " TOKEN "\r\n\r\n");
    assert_int_equal(xh_status(out), 403);
    has(out, "token agent has unmatched = deny");
    xh_free(&h);

    /* the proxy-wide setting */
    xh_new(&h, "unmatched = deny\n", API_HTTP);
    out = send_head(&h, 0, "GET http://nomatch.test/ HTTP/1.1\r\nHost: nomatch.test\r\n\r\n");
    assert_int_equal(xh_status(out), 403);
    has(out, "no service matches nomatch.test:80 and unmatched = deny");
    xh_free(&h);
}

/* A token's rate: the loop's clock does not move here, so the second
 * request finds the bucket (burst 1) empty: 429 with Retry-After. */
static void token_rate(void **state)
{
    (void)state;
    setenv("XT_PROXY_TOKEN", TOKEN, 1);
    xh h;
    xh_new(&h, NULL, API_HTTP TOK_SECTION "rate = 1/min\n");
    xh_pool_fake(&h, "api.test", 80, "api/agent");
    const char *req = "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nProxy-Authorization: Bearer " TOKEN
                      "\r\n\r\n";
    const char *out = send_head(&h, 0, req);
    assert_string_equal(out, ""); /* the exchange began */
    assert_true(h.c->x.injected);
    av__x_reset(&h.c->x);
    h.c->state = C_PROXY_HEAD;
    out = send_head(&h, 0, req);
    assert_int_equal(xh_status(out), 429);
    has(out, "Retry-After: 61"); /* (1 - level) / rate, plus one */
    has(out, "rate limit of token agent exceeded");
    xh_free(&h);
}

/* A store token's expiry is judged by the environment's clock (av_env.h
 * now), not the machine's: the same token is accepted before it and
 * refused after it. */
static void token_expiry_env_clock(void **state)
{
    (void)state;
    char dir[] = "/tmp/av-xt-tok-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64], tok[64], err[200];
    snprintf(path, sizeof(path), "%s/tokens", dir);
    assert_int_equal(av_tokens_create(path, "ci", NULL, 3600, tok, sizeof(tok), err, sizeof(err)), AV_OK);
    long long made = (long long)time(NULL);
    for (int late = 0; late < 2; late++) {
        xh h;
        xh_new_store(&h, NULL, API_TLS, path);
        h.clock.tv_sec = (time_t)(made + (late ? 3600 + 120 : 600));
        char head[256];
        snprintf(head, sizeof(head), "CONNECT tls.test:443 HTTP/1.1\r\nHost: tls.test:443\r\n"
                 "Proxy-Authorization: Bearer %s\r\n\r\n", tok);
        const char *out = send_head(&h, 0, head);
        assert_int_equal(xh_status(out), late ? 407 : 200);
        xh_free(&h);
    }
    unlink(path);
    rmdir(dir);
}

/* ---- absolute-form and origin-form heads ----------------------------------------------- */

static void absolute_form(void **state)
{
    (void)state;
    xh h;
    xh_new(&h, NULL, API_HTTP);
    xh_pool_fake(&h, "api.test", 80, "api/-");
    const char *out = send_head(&h, 0, "GET http://api.test/v1?q=1 HTTP/1.1\r\nHost: api.test:80\r\n\r\n");
    assert_string_equal(out, "");
    av_exchange *x = &h.c->x;
    assert_true(x->active);
    assert_string_equal(x->host, "api.test:80");
    assert_string_equal(x->log_path, "/v1");
    assert_int_equal(x->t_len, 7);
    assert_memory_equal(av__rq_ptr(x, x->t_off), "/v1?q=1", 7);
    assert_int_equal(h.c->state, C_EXCHANGE);
    xh_free(&h);

    static const struct {
        const char *head;
        int status;
        const char *why;
    } bad[] = {
        {"GET http://api.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n", 421, "Host header does not match"},
        {"GET http://api.test/ HTTP/1.1\r\nHost: api.test:8080\r\n\r\n", 421, "Host header does not match"},
        {"GET https://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n", 400, "use CONNECT"},
        {"GET ftp://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n", 400, "only forwarded for http://"},
        {"GET api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n", 400, "malformed request target"},
        {"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 400, "must not have a body"},
    };
    for (size_t i = 0; i < NF(bad); i++) {
        xh_new(&h, NULL, API_HTTP);
        out = send_head(&h, 0, bad[i].head);
        if (xh_status(out) != bad[i].status || !strstr(out, bad[i].why))
            fail_msg("case %zu: %s", i, out);
        assert_false(h.c->x.active);
        xh_free(&h);
    }
}

/* The proxy's own endpoints (av_admin.c) answer origin-form requests;
 * anything else there is a 400 that says what the proxy is. */
static void self_request(void **state)
{
    (void)state;
    xh h;
    xh_new(&h, NULL,
           API_HTTP "placeholder = PH_API_1\nagent_env = API_KEY,SHARED_KEY\n"
                    "[service \"openai\"]\nhost = api.openai.com\nauth = bearer\nsecret = callback:key\n"
                    "[service \"second\"]\nhost = b.test\nauth = bearer\nsecret = callback:key\n"
                    "agent_env = SHARED_KEY,B_KEY\n");
    const char *out = send_head(&h, 0, "GET /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n");
    assert_string_equal(out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n"
                             "Cache-Control: no-store\r\n\r\nok\n");
    assert_false(h.c->x.active);
    assert_int_equal(h.c->state, C_PROXY_HEAD);
    /* HEAD: the same head, no body */
    out = send_head(&h, 0, "HEAD /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n");
    assert_non_null(strstr(out, "Content-Length: 3\r\n"));
    assert_null(strstr(out, "ok\n"));
    out = send_head(&h, 0, "GET /ca.pem HTTP/1.1\r\nHost: proxy\r\n\r\n");
    assert_int_equal(xh_status(out), 200);
    has(out, "Content-Type: application/x-pem-file\r\n");
    has(out, "\r\n\r\n-----BEGIN CERTIFICATE-----\n");
    /* placeholders, never secrets; the first service naming a variable wins */
    out = send_head(&h, 0, "GET /agent-env HTTP/1.1\r\nHost: proxy\r\n\r\n");
    assert_int_equal(xh_status(out), 200);
    has(out, "\r\n\r\nAPI_KEY=PH_API_1\nSHARED_KEY=PH_API_1\nOPENAI_API_KEY=agentvault-placeholder-openai\n"
             "CODEX_API_KEY=agentvault-placeholder-openai\nB_KEY=agentvault-placeholder-second\n");
    assert_null(strstr(out, XH_KEY));
    assert_int_equal(h.asked, 0);
    /* anything else */
    out = send_head(&h, 0, "GET /other HTTP/1.1\r\nHost: proxy\r\n\r\n");
    assert_int_equal(xh_status(out), 400);
    has(out, "this is a forward proxy");
    xh_free(&h);

    xh_new(&h, NULL, API_HTTP);
    out = send_head(&h, 0, "POST /healthz HTTP/1.1\r\nHost: proxy\r\n\r\n");
    assert_int_equal(xh_status(out), 400);
    xh_free(&h);
    /* Connection: close is honoured */
    xh_new(&h, NULL, API_HTTP);
    out = send_head(&h, 0, "GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n");
    assert_int_equal(xh_status(out), 200);
    assert_int_equal(h.c->state, C_CLOSING);
    xh_free(&h);
}

/* /metrics counts what admission did: a refusal before any exchange (407),
 * a token scope refusal, an injection. */
static void metrics(void **state)
{
    (void)state;
    setenv("XT_PROXY_TOKEN", TOKEN, 1);
    xh h;
    xh_new(&h, NULL,
           API_HTTP "[service \"other\"]\nhost = other.test\nscheme = http\nport = 80\nauth = bearer\n"
                    "secret = callback:key\n" TOK_SECTION "services = api\n");
    const char *out = send_head(&h, 0, "CONNECT tls.test:443 HTTP/1.1\r\nHost: tls.test:443\r\n\r\n");
    assert_int_equal(xh_status(out), 407);
    h.c->state = C_PROXY_HEAD;
    out = send_head(&h, 0, "GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\nProxy-Authorization: Bearer " TOKEN
                           "\r\n\r\n");
    assert_int_equal(xh_status(out), 403);
    av__x_reset(&h.c->x);
    h.c->state = C_PROXY_HEAD;
    xh_pool_fake(&h, "api.test", 80, "api/agent");
    out = send_head(&h, 0, "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\nProxy-Authorization: Bearer " TOKEN
                           "\r\n\r\n");
    assert_string_equal(out, "");
    av__x_reset(&h.c->x);
    h.c->state = C_PROXY_HEAD;
    out = send_head(&h, 0, "GET /metrics HTTP/1.1\r\nHost: proxy\r\nProxy-Authorization: Bearer " TOKEN "\r\n\r\n");
    assert_int_equal(xh_status(out), 200);
    has(out, "\nagentvault_exchanges_total{service=\"\",status=\"407\"} 1\n");
    has(out, "\nagentvault_exchanges_total{service=\"other\",status=\"403\"} 1\n");
    has(out, "\nagentvault_exchange_ends_total{end=\"refused\"} 2\n");
    has(out, "\nagentvault_injected_total 1\n");
    has(out, "\nagentvault_limit_hits_total{limit=\"token_scope\"} 1\n");
    assert_null(strstr(out, TOKEN));
    xh_free(&h);
}

/* ---- inside a tunnel: the Host binding (SECURITY 1) ----------------------------------------- */

static void tunnel_host_binding(void **state)
{
    (void)state;
    static const struct {
        const char *head;
        int status;
        const char *why;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", 421, "does not match the CONNECT target api.test:80"},
        {"GET / HTTP/1.1\r\nHost: api.test:81\r\n\r\n", 421, "does not match"},
        {"GET / HTTP/1.1\r\nHost: api.test.\r\n\r\n", 421, "does not match"},
        {"GET / HTTP/1.1\r\n\r\n", 400, "missing Host header"},
        {"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n", 400, "origin-form"},
        {"CONNECT api.test:80 HTTP/1.1\r\nHost: api.test:80\r\n\r\n", 400, "CONNECT inside a tunnel"},
    };
    for (size_t i = 0; i < NF(cases); i++) {
        xh h;
        xh_new(&h, NULL, API_HTTP);
        tunnel_to(&h, "api.test", 80, 0);
        const char *out = send_head(&h, 1, cases[i].head);
        if (xh_status(out) != cases[i].status || !strstr(out, cases[i].why))
            fail_msg("case %zu: %s", i, out);
        assert_false(h.c->x.active);
        assert_int_equal(h.asked, 0);
        xh_free(&h);
    }
    /* the tunnel's own host, in any spelling that is the same authority */
    static const char *const same[] = {"api.test", "API.Test", "api.test:80"};
    for (size_t i = 0; i < NF(same); i++) {
        xh h;
        xh_new(&h, NULL, API_HTTP);
        tunnel_to(&h, "api.test", 80, 0);
        xh_pool_fake(&h, "api.test", 80, "api/-");
        char head[128];
        snprintf(head, sizeof(head), "GET /v1 HTTP/1.1\r\nHost: %s\r\n\r\n", same[i]);
        const char *out = send_head(&h, 1, head);
        if (strcmp(out, "") != 0)
            fail_msg("Host: %s: %s", same[i], out);
        assert_true(h.c->x.injected);
        xh_free(&h);
    }
    /* MITM TLS tunnel: the default port is 443 */
    xh h;
    xh_new(&h, NULL, API_TLS);
    tunnel_to(&h, "tls.test", 443, 1);
    const char *out = send_head(&h, 1, "GET / HTTP/1.1\r\nHost: tls.test:80\r\n\r\n");
    assert_int_equal(xh_status(out), 421);
    xh_free(&h);
}

/* ---- never relayed (SECURITY 9) --------------------------------------------------------------- */

static void refused_methods_and_upgrades(void **state)
{
    (void)state;
    static const struct {
        const char *head;
        int status;
        const char *why;
    } cases[] = {
        {"TRACE / HTTP/1.1\r\nHost: api.test\r\n\r\n", 405, "TRACE is not allowed"},
        {"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
         "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
         400, "Upgrade: h2c is not allowed"},
        {"POST / HTTP/1.1\r\nHost: api.test\r\nExpect: something\r\nContent-Length: 1\r\n\r\nx", 417,
         "only Expect: 100-continue"},
    };
    for (size_t i = 0; i < NF(cases); i++) {
        xh h;
        xh_new(&h, NULL, API_HTTP);
        tunnel_to(&h, "api.test", 80, 0);
        const char *out = send_head(&h, 1, cases[i].head);
        if (xh_status(out) != cases[i].status || !strstr(out, cases[i].why))
            fail_msg("case %zu: %s", i, out);
        assert_int_equal(h.asked, 0);
        assert_int_equal(h.c->state, C_CLOSING);
        xh_free(&h);
    }
}

/* A service with websocket = off: upgrades get 426. */
static void websocket_off(void **state)
{
    (void)state;
    xh h;
    xh_new(&h, NULL, API_HTTP "websocket = off\n");
    tunnel_to(&h, "api.test", 80, 0);
    const char *out = send_head(&h, 1,
                                "GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    assert_int_equal(xh_status(out), 426);
    has(out, "WebSocket is off for service api");
    xh_free(&h);
}

/* ---- gateways ------------------------------------------------------------------------------- */

/* (a proxy listener too: av_ctx_new reads cfg->listen[0] even when there
 * is none, which UBSan reports for a context with only gateways) */
#define GW_PROXY_KEYS "listen = 127.0.0.1:0\n"
#define GW_SECTION "[gateway \"g\"]\nlisten = 127.0.0.1:0\nupstream = http://api.test\n"

static void gateway_rules(void **state)
{
    (void)state;
    setenv("XT_GW_TOKEN", GWTOKEN, 1);
    static const struct {
        const char *head;
        int status;
        const char *why;
    } cases[] = {
        {"GET /v1 HTTP/1.1\r\nHost: anything\r\n\r\n", 401, "gateway token required"},
        {"GET /v1 HTTP/1.1\r\nHost: anything\r\nX-Agentvault-Token: " GWTOKEN "x\r\n\r\n", 401, "gateway token"},
        {"GET /v1 HTTP/1.1\r\nHost: anything\r\nX-Agentvault-Token: gwt\r\n\r\n", 401, "gateway token"},
        {"CONNECT api.test:80 HTTP/1.1\r\nHost: api.test:80\r\n\r\n", 405, "this is a gateway, not a proxy"},
        {"GET http://api.test/v1 HTTP/1.1\r\nHost: api.test\r\n\r\n", 400, "origin-form"},
    };
    for (size_t i = 0; i < NF(cases); i++) {
        xh h;
        xh_new(&h, GW_PROXY_KEYS, API_HTTP GW_SECTION "token = env:XT_GW_TOKEN\n");
        h.c->gw = h.ctx->gws;
        assert_non_null(h.c->gw);
        tunnel_to(&h, "api.test", 80, 0);
        const char *out = send_head(&h, 1, cases[i].head);
        if (xh_status(out) != cases[i].status || !strstr(out, cases[i].why))
            fail_msg("case %zu: %s", i, out);
        assert_null(strstr(out, GWTOKEN));
        assert_false(h.c->x.active);
        xh_free(&h);
    }
    /* with the token, whatever the Host says: to the gateway's upstream,
     * and the token itself is not forwarded */
    xh h;
    xh_new(&h, GW_PROXY_KEYS, API_HTTP GW_SECTION "token = env:XT_GW_TOKEN\n");
    h.c->gw = h.ctx->gws;
    tunnel_to(&h, "api.test", 80, 0);
    xh_pool_fake(&h, "api.test", 80, "api/-");
    const char *out =
        send_head(&h, 1, "GET /v1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Agentvault-Token: " GWTOKEN "\r\n\r\n");
    assert_string_equal(out, "");
    av_exchange *x = &h.c->x;
    assert_true(x->injected);
    assert_string_equal(x->host, "api.test:80");
    av_h1_field f[X_RQ_FIELDS];
    size_t n = av__rq_fields(x, f, NF(f));
    for (size_t i = 0; i < n; i++)
        assert_null(memmem(f[i].value, f[i].value_len, GWTOKEN, strlen(GWTOKEN)));
    xh_free(&h);

    /* a gateway without a token takes any request */
    xh_new(&h, GW_PROXY_KEYS, API_HTTP GW_SECTION);
    h.c->gw = h.ctx->gws;
    tunnel_to(&h, "api.test", 80, 0);
    xh_pool_fake(&h, "api.test", 80, "api/-");
    out = send_head(&h, 1, "GET /v1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_string_equal(out, "");
    assert_true(h.c->x.injected);
    xh_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(connect_ok),
        cmocka_unit_test(connect_bad_targets),
        cmocka_unit_test(connect_with_body),
        cmocka_unit_test(connect_ssrf_literals),
        cmocka_unit_test(tokens),
        cmocka_unit_test(token_scope_and_unmatched),
        cmocka_unit_test(token_rate),
        cmocka_unit_test(token_expiry_env_clock),
        cmocka_unit_test(absolute_form),
        cmocka_unit_test(self_request),
        cmocka_unit_test(metrics),
        cmocka_unit_test(tunnel_host_binding),
        cmocka_unit_test(refused_methods_and_upgrades),
        cmocka_unit_test(websocket_off),
        cmocka_unit_test(gateway_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
