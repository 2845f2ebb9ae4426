/* test_tls.c - TLS engines, in memory: handshakes, data, close, failures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ftw.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_ca.h"
#include "av_ca_internal.h"
#include "av_mem.h"
#include "av_tls.h"

/* Shared fixtures: one CA, one server ctx, client ctxs with and without
 * the test root. */
static char g_dir[256];
static char g_cafile[300];
static av_ca *g_ca;
static av_tls_server_ctx *g_sctx;
static av_tls_client_ctx *g_cctx;      /* trusts the test root */
static av_tls_client_ctx *g_cctx_sys;  /* system roots only */

/* rm_entry is the nftw callback used to clean up. */
static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* group_setup creates the CA, writes its root to a file and builds ctxs. */
static int group_setup(void **state)
{
    (void)state;
    char err[512] = "";
    snprintf(g_dir, sizeof(g_dir), "/tmp/av-test-tls-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    if (av__ca_open(&g_ca, g_dir, 0, err, sizeof(err)) != AV_OK)
        return -1;
    snprintf(g_cafile, sizeof(g_cafile), "%s/root.pem", g_dir);
    FILE *f = fopen(g_cafile, "w");
    if (!f)
        return -1;
    fputs(av__ca_root_pem(g_ca), f);
    fclose(f);
    if (av__tls_server_ctx_new(&g_sctx, g_ca, err, sizeof(err)) != AV_OK ||
        av__tls_client_ctx_new(&g_cctx, g_cafile, err, sizeof(err)) != AV_OK ||
        av__tls_client_ctx_new(&g_cctx_sys, NULL, err, sizeof(err)) != AV_OK) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    return 0;
}

/* group_teardown frees the fixtures. */
static int group_teardown(void **state)
{
    (void)state;
    av__tls_client_ctx_free(g_cctx);
    av__tls_client_ctx_free(g_cctx_sys);
    av__tls_server_ctx_free(g_sctx);
    av__ca_free(g_ca);
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* A client and a server engine with their four buffers. */
typedef struct pair {
    av_buf c_in, c_out, s_in, s_out;
    av_tls *c, *s;
    int rc_c, rc_s;
} pair;

/* pair_bufs initialises the four buffers (cout max, cin max). */
static void pair_bufs(pair *p, size_t out_max, size_t in_max)
{
    memset(p, 0, sizeof(*p));
    av__buf_init(&p->c_in, in_max);
    av__buf_init(&p->s_in, in_max);
    av__buf_init(&p->c_out, out_max);
    av__buf_init(&p->s_out, out_max);
    p->rc_c = p->rc_s = AV_ERR_AGAIN;
}

/* pair_new makes a server engine for |server_host| and a client engine
 * for |client_host| on |cctx|. */
static void pair_new(pair *p, size_t out_max, const char *server_host,
                     const char *const *extra, av_tls_client_ctx *cctx,
                     const char *client_host)
{
    pair_bufs(p, out_max, 1 << 20);
    assert_int_equal(av__tls_server_new(&p->s, g_sctx, server_host, extra, &p->s_in, &p->s_out),
                     AV_OK);
    assert_int_equal(av__tls_client_new(&p->c, cctx, client_host, &p->c_in, &p->c_out), AV_OK);
}

/* pair_free releases everything. */
static void pair_free(pair *p)
{
    av__tls_free(p->c);
    av__tls_free(p->s);
    av__buf_free(&p->c_in);
    av__buf_free(&p->c_out);
    av__buf_free(&p->s_in);
    av__buf_free(&p->s_out);
}

/* move copies as much of |from| into |to| as fits. */
static size_t move(av_buf *from, av_buf *to)
{
    size_t n = av__buf_len(from);
    if (n > av__buf_room(to))
        n = av__buf_room(to);
    if (n) {
        assert_int_equal(av__buf_append(to, av__buf_head(from), n), AV_OK);
        av__buf_consume(from, n);
    }
    return n;
}

/* shuttle plays the network in both directions. */
static size_t shuttle(pair *p)
{
    return move(&p->c_out, &p->s_in) + move(&p->s_out, &p->c_in);
}

/* handshake drives both engines until neither can progress. */
static void handshake(pair *p)
{
    for (int i = 0; i < 1000; i++) {
        int before_c = p->rc_c, before_s = p->rc_s;
        if (p->rc_c == AV_ERR_AGAIN)
            p->rc_c = av__tls_handshake(p->c);
        if (p->rc_s == AV_ERR_AGAIN)
            p->rc_s = av__tls_handshake(p->s);
        size_t moved = shuttle(p);
        if (i > 0 && moved == 0 && p->rc_c == before_c && p->rc_s == before_s)
            return;
    }
    fail_msg("handshake did not settle");
}

/* expect_ok checks a completed handshake with ALPN http/1.1. */
static void expect_ok(pair *p)
{
    if (p->rc_c != AV_OK || p->rc_s != AV_OK)
        fail_msg("handshake: client %d '%s', server %d '%s'", p->rc_c, av__tls_error(p->c),
                 p->rc_s, av__tls_error(p->s));
    assert_string_equal(av__tls_alpn(p->c), "http/1.1");
    assert_string_equal(av__tls_alpn(p->s), "http/1.1");
    assert_string_equal(av__tls_error(p->c), "");
    assert_string_equal(av__tls_error(p->s), "");
}

/* transfer sends |len| bytes from |a| to |b| through the pair, with
 * bounded buffers; returns the number of AV_ERR_AGAIN seen by writes. */
static int transfer(pair *p, av_tls *a, av_tls *b, const uint8_t *data, size_t len)
{
    uint8_t *got = malloc(len + 1);
    size_t sent = 0, recvd = 0;
    int agains = 0;
    for (int rounds = 0; recvd < len; rounds++) {
        assert_true(rounds < 100000);
        while (sent < len) {
            ssize_t w = av__tls_write(a, data + sent, len - sent);
            if (w == AV_ERR_AGAIN) {
                agains++;
                break;
            }
            assert_true(w > 0);
            sent += (size_t)w;
        }
        shuttle(p);
        for (;;) {
            uint8_t tmp[1000]; /* small reads: records span several calls */
            ssize_t r = av__tls_read(b, tmp, sizeof(tmp));
            if (r == AV_ERR_AGAIN)
                break;
            assert_true(r > 0);
            assert_true(recvd + (size_t)r <= len);
            memcpy(got + recvd, tmp, (size_t)r);
            recvd += (size_t)r;
        }
    }
    assert_memory_equal(got, data, len);
    assert_int_equal(av__tls_pending(b), 0);
    free(got);
    return agains;
}

static void handshake_data_close(void **state)
{
    (void)state;
    pair p;
    pair_new(&p, 1 << 20, "api.example.test", NULL, g_cctx, "api.example.test");
    /* Reading before any input: nothing yet. */
    uint8_t buf[64];
    assert_int_equal(av__tls_read(p.s, buf, sizeof(buf)), AV_ERR_AGAIN);
    handshake(&p);
    expect_ok(&p);
    assert_int_equal(av__tls_handshake(p.c), AV_OK); /* idempotent */

    const char *req = "GET /v1/models HTTP/1.1\r\nHost: api.example.test\r\n\r\n";
    assert_int_equal(av__tls_write(p.c, (const uint8_t *)req, strlen(req)), (ssize_t)strlen(req));
    shuttle(&p);
    char got[256] = {0};
    assert_int_equal(av__tls_read(p.s, (uint8_t *)got, sizeof(got) - 1), (ssize_t)strlen(req));
    assert_string_equal(got, req);
    assert_int_equal(av__tls_read(p.s, buf, sizeof(buf)), AV_ERR_AGAIN);

    const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(av__tls_write(p.s, (const uint8_t *)resp, strlen(resp)),
                     (ssize_t)strlen(resp));
    shuttle(&p);
    memset(got, 0, sizeof(got));
    assert_int_equal(av__tls_read(p.c, (uint8_t *)got, sizeof(got) - 1), (ssize_t)strlen(resp));
    assert_string_equal(got, resp);

    /* A small read leaves the rest of the record inside the engine. */
    assert_int_equal(av__tls_write(p.s, (const uint8_t *)"abcdef", 6), 6);
    shuttle(&p);
    assert_int_equal(av__tls_read(p.c, buf, 2), 2);
    assert_int_equal(av__tls_pending(p.c), 4);
    assert_int_equal(av__tls_read(p.c, buf + 2, sizeof(buf) - 2), 4);
    assert_memory_equal(buf, "abcdef", 6);

    /* close_notify: the peer reads 0, repeatedly. */
    av__tls_close(p.c);
    assert_true(av__buf_len(&p.c_out) > 0);
    assert_int_equal(av__tls_write(p.c, (const uint8_t *)"x", 1), AV_ERR_STATE);
    shuttle(&p);
    assert_int_equal(av__tls_read(p.s, buf, sizeof(buf)), 0);
    assert_int_equal(av__tls_read(p.s, buf, sizeof(buf)), 0);
    av__tls_close(p.s);
    shuttle(&p);
    assert_int_equal(av__tls_read(p.c, buf, sizeof(buf)), 0);
    pair_free(&p);
}

static void bulk_with_backpressure(void **state)
{
    (void)state;
    pair p;
    pair_new(&p, 4096, "api.example.test", NULL, g_cctx, "api.example.test");
    handshake(&p);
    expect_ok(&p);
    size_t len = 100 * 1024;
    uint8_t *data = malloc(len);
    for (size_t i = 0; i < len; i++)
        data[i] = (uint8_t)(i * 7 + (i >> 8));
    int agains = transfer(&p, p.c, p.s, data, len);
    assert_true(agains > 0);
    agains = transfer(&p, p.s, p.c, data, len);
    assert_true(agains > 0);
    free(data);

    /* A full cout: writes take nothing and say so. */
    uint8_t fill[4096];
    memset(fill, 'x', sizeof(fill));
    assert_int_equal(av__buf_append(&p.c_out, fill, 4000), AV_OK);
    assert_int_equal(av__tls_write(p.c, fill, 100), AV_ERR_AGAIN);
    av__buf_reset(&p.c_out);
    assert_true(av__tls_write(p.c, fill, 100) == 100);
    pair_free(&p);
}

static void tiny_cout_handshake(void **state)
{
    (void)state;
    /* The server's first flight does not fit into a 200-byte cout: it
     * spills inside the engine and leaves as cout drains. */
    pair p;
    pair_new(&p, 200, "api.example.test", NULL, g_cctx, "api.example.test");
    handshake(&p);
    expect_ok(&p);
    uint8_t data[3000], got[3000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)i;
    size_t sent = 0, recvd = 0;
    for (int i = 0; i < 10000 && recvd < sizeof(data); i++) {
        if (sent < sizeof(data)) {
            ssize_t w = av__tls_write(p.s, data + sent, sizeof(data) - sent);
            assert_true(w > 0 || w == AV_ERR_AGAIN);
            if (w > 0)
                sent += (size_t)w;
        }
        av__tls_flush(p.s);
        shuttle(&p);
        ssize_t r = av__tls_read(p.c, got + recvd, sizeof(got) - recvd);
        assert_true(r > 0 || r == AV_ERR_AGAIN);
        if (r > 0)
            recvd += (size_t)r;
    }
    assert_int_equal(recvd, sizeof(data));
    assert_memory_equal(got, data, sizeof(data));
    assert_int_equal(av__tls_flush(p.s), AV_OK);
    pair_free(&p);
}

static void sni_mismatch(void **state)
{
    (void)state;
    pair p;
    pair_new(&p, 1 << 20, "api.example.test", NULL, g_cctx, "evil.example.test");
    handshake(&p);
    assert_int_equal(p.rc_s, AV_ERR_TLS);
    assert_string_equal(av__tls_error(p.s), "SNI evil.example.test does not match api.example.test");
    assert_int_equal(p.rc_c, AV_ERR_TLS); /* got the alert */
    assert_true(strlen(av__tls_error(p.c)) > 0);
    /* Errors are sticky. */
    uint8_t buf[16];
    assert_int_equal(av__tls_read(p.s, buf, sizeof(buf)), AV_ERR_TLS);
    assert_int_equal(av__tls_write(p.s, buf, sizeof(buf)), AV_ERR_TLS);
    assert_int_equal(av__tls_handshake(p.s), AV_ERR_TLS);
    pair_free(&p);

    /* No "trailing dot" leniency. */
    pair_new(&p, 1 << 20, "api.example.test", NULL, g_cctx, "api.example.test.");
    handshake(&p);
    assert_int_equal(p.rc_s, AV_ERR_TLS);
    assert_string_equal(av__tls_error(p.s), "SNI api.example.test. does not match api.example.test");
    pair_free(&p);

    /* Unprintable and over-long SNI bytes are not copied verbatim. */
    pair_new(&p, 1 << 20, "api.example.test", NULL, g_cctx, "a\x1b[31m.evil.test");
    handshake(&p);
    assert_int_equal(p.rc_s, AV_ERR_TLS);
    assert_string_equal(av__tls_error(p.s), "SNI a?[31m.evil.test does not match api.example.test");
    pair_free(&p);
    char longname[200];
    memset(longname, 'x', 100);
    strcpy(longname + 100, ".test");
    pair_new(&p, 1 << 20, "api.example.test", NULL, g_cctx, longname);
    handshake(&p);
    assert_int_equal(p.rc_s, AV_ERR_TLS);
    char want[200];
    snprintf(want, sizeof(want), "SNI %.64s... does not match api.example.test", longname);
    assert_string_equal(av__tls_error(p.s), want);
    pair_free(&p);
}

static void sni_case_and_extra_names(void **state)
{
    (void)state;
    pair p;
    pair_new(&p, 1 << 20, "api.example.test", NULL, g_cctx, "API.Example.TEST");
    handshake(&p);
    expect_ok(&p);
    pair_free(&p);

    const char *extra[] = {"localhost", "127.0.0.1", NULL};
    pair_new(&p, 1 << 20, "proxy.agentvault.test", extra, g_cctx, "localhost");
    handshake(&p);
    expect_ok(&p);
    pair_free(&p);
    pair_new(&p, 1 << 20, "proxy.agentvault.test", extra, g_cctx, "127.0.0.1");
    handshake(&p);
    expect_ok(&p);
    pair_free(&p);
    pair_new(&p, 1 << 20, "proxy.agentvault.test", extra, g_cctx, "api.example.test");
    handshake(&p);
    assert_int_equal(p.rc_s, AV_ERR_TLS);
    assert_string_equal(av__tls_error(p.s),
                        "SNI api.example.test does not match proxy.agentvault.test");
    pair_free(&p);
}

/* expect_verify_fail checks the client refused the certificate with a
 * message containing |why|. */
static void expect_verify_fail(pair *p, const char *why)
{
    assert_int_equal(p->rc_c, AV_ERR_VERIFY);
    const char *e = av__tls_error(p->c);
    if (strncmp(e, "upstream certificate verify failed: ", 36) != 0 || !strcasestr(e, why))
        fail_msg("client error '%s' (wanted '%s')", e, why);
    assert_int_not_equal(p->rc_s, AV_OK);
    uint8_t buf[8];
    assert_int_equal(av__tls_read(p->c, buf, sizeof(buf)), AV_ERR_VERIFY);
}

static void verify_failures(void **state)
{
    (void)state;
    pair p;
    /* Not trusted: only the system roots. */
    pair_new(&p, 1 << 20, "api.example.test", NULL, g_cctx_sys, "api.example.test");
    handshake(&p);
    expect_verify_fail(&p, "local issuer");
    pair_free(&p);

    /* Trusted chain, wrong DNS name: a server accepting SNI
     * other.example.test but presenting the leaf for api.example.test. */
    av_ca_leaf *leaf = NULL;
    assert_int_equal(av__ca_leaf_get(g_ca, "api.example.test", NULL, &leaf), AV_OK);
    pair_bufs(&p, 1 << 20, 1 << 20);
    assert_int_equal(av__tls_server_new_leaf(&p.s, g_sctx, leaf, "other.example.test", NULL,
                                             &p.s_in, &p.s_out), AV_OK);
    av__ca_leaf_free(leaf);
    assert_int_equal(av__tls_client_new(&p.c, g_cctx, "other.example.test", &p.c_in, &p.c_out),
                     AV_OK);
    handshake(&p);
    expect_verify_fail(&p, "hostname mismatch");
    pair_free(&p);

    /* A wildcard-free leaf does not cover a subdomain. */
    assert_int_equal(av__ca_leaf_get(g_ca, "example.test", NULL, &leaf), AV_OK);
    pair_bufs(&p, 1 << 20, 1 << 20);
    assert_int_equal(av__tls_server_new_leaf(&p.s, g_sctx, leaf, "a.example.test", NULL,
                                             &p.s_in, &p.s_out), AV_OK);
    av__ca_leaf_free(leaf);
    assert_int_equal(av__tls_client_new(&p.c, g_cctx, "a.example.test", &p.c_in, &p.c_out),
                     AV_OK);
    handshake(&p);
    expect_verify_fail(&p, "hostname mismatch");
    pair_free(&p);

    /* IP literal against a DNS leaf (no SNI is sent for IPs). */
    pair_new(&p, 1 << 20, "api.example.test", NULL, g_cctx, "127.0.0.1");
    handshake(&p);
    expect_verify_fail(&p, "IP address mismatch");
    pair_free(&p);

    /* Wrong IP against an IP leaf. */
    pair_new(&p, 1 << 20, "127.0.0.1", NULL, g_cctx, "127.0.0.2");
    handshake(&p);
    expect_verify_fail(&p, "IP address mismatch");
    pair_free(&p);
}

static void ip_literals(void **state)
{
    (void)state;
    pair p;
    pair_new(&p, 1 << 20, "127.0.0.1", NULL, g_cctx, "127.0.0.1");
    handshake(&p);
    expect_ok(&p);
    pair_free(&p);
    pair_new(&p, 1 << 20, "::1", NULL, g_cctx, "[::1]");
    handshake(&p);
    expect_ok(&p);
    pair_free(&p);
}

static void client_ctx_errors(void **state)
{
    (void)state;
    char err[512] = "";
    av_tls_client_ctx *c = (av_tls_client_ctx *)1;
    char missing[400];
    snprintf(missing, sizeof(missing), "%s/nope.pem", g_dir);
    assert_int_equal(av__tls_client_ctx_new(&c, missing, err, sizeof(err)), AV_ERR_IO);
    assert_null(c);
    assert_non_null(strstr(err, missing));
    char junk[400];
    snprintf(junk, sizeof(junk), "%s/junk.pem", g_dir);
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("not a certificate\n", f);
    fclose(f);
    assert_int_equal(av__tls_client_ctx_new(&c, junk, err, sizeof(err)), AV_ERR_CONFIG);
    assert_non_null(strstr(err, junk));
    assert_null(strchr(err, '\n'));
    av__tls_client_ctx_free(NULL);
    av__tls_server_ctx_free(NULL);
    av__tls_free(NULL);
    av_tls_server_ctx *s = NULL;
    assert_int_equal(av__tls_server_ctx_new(&s, NULL, err, sizeof(err)), AV_ERR_INVALID);

    av_buf in, out;
    av__buf_init(&in, 1024);
    av__buf_init(&out, 1024);
    av_tls *t = (av_tls *)1;
    assert_int_equal(av__tls_server_new(&t, g_sctx, "", NULL, &in, &out), AV_ERR_INVALID);
    assert_null(t);
    assert_int_equal(av__tls_client_new(&t, g_cctx, "", &in, &out), AV_ERR_INVALID);
}

static void handshake_speed(void **state)
{
    (void)state;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 50; i++) {
        pair p;
        pair_new(&p, 1 << 20, "api.example.test", NULL, g_cctx, "api.example.test");
        handshake(&p);
        expect_ok(&p);
        pair_free(&p);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3);
    print_message("client+server handshake (cached leaf): %.0f us\n", us / 50);
}


/* ---- resumption ---------------------------------------------------------- */

/* resume_conn runs one connection through fresh engines of |sctx| and
 * |cctx|: the server presents |leaf_host|'s leaf as |server_host| (no SNI
 * for IP literals), the client verifies |client_host| and resumes under
 * |key|; the server then sends a few bytes so that the client reads the
 * ticket that follows the handshake. Returns whether both sides resumed
 * (they must agree). */
static int resume_conn(av_tls_server_ctx *sctx, av_tls_client_ctx *cctx, const char *leaf_host,
                       const char *server_host, const char *client_host, const char *key)
{
    pair p;
    av_ca_leaf *leaf = NULL;
    pair_bufs(&p, 1 << 20, 1 << 20);
    assert_int_equal(av__ca_leaf_get(g_ca, leaf_host, NULL, &leaf), AV_OK);
    assert_int_equal(av__tls_server_new_leaf(&p.s, sctx, leaf, server_host, NULL, &p.s_in, &p.s_out), AV_OK);
    av__ca_leaf_free(leaf);
    assert_int_equal(av__tls_client_new(&p.c, cctx, client_host, &p.c_in, &p.c_out), AV_OK);
    assert_int_equal(av__tls_client_resume(p.c, key), AV_OK);
    handshake(&p);
    expect_ok(&p);
    transfer(&p, p.s, p.c, (const uint8_t *)"hello", 5);
    int r = av__tls_resumed(p.c);
    assert_int_equal(av__tls_resumed(p.s), r);
    pair_free(&p);
    return r;
}

static void resumption_ctxs(av_tls_server_ctx **s, av_tls_client_ctx **c, int on,
                            _Atomic unsigned long long *srv_n, _Atomic unsigned long long *cli_n)
{
    char err[256] = "";
    assert_int_equal(av__tls_server_ctx_new(s, g_ca, err, sizeof(err)), AV_OK);
    assert_int_equal(av__tls_client_ctx_new(c, g_cafile, err, sizeof(err)), AV_OK);
    av__tls_server_ctx_resumption(*s, on, srv_n);
    av__tls_client_ctx_resumption(*c, on, cli_n);
}

/* A second connection to the same host resumes on both sides; the ticket
 * is used once and replaced by the one the resumed connection brings; the
 * counters say so. */
static void resume_same_host(void **state)
{
    (void)state;
    av_tls_server_ctx *s;
    av_tls_client_ctx *c;
    _Atomic unsigned long long sn = 0, cn = 0;
    resumption_ctxs(&s, &c, 1, &sn, &cn);
    assert_false(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "k1"));
    assert_int_equal(av__tls_client_sessions(c), 1);
    for (int i = 0; i < 3; i++) {
        assert_true(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "k1"));
        assert_int_equal(av__tls_client_sessions(c), 1);
    }
    assert_int_equal(sn, 3);
    assert_int_equal(cn, 3);
    /* Another cache key (a credential scope, a route) gets no session. */
    assert_false(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "k2"));
    assert_int_equal(av__tls_client_sessions(c), 2);
    /* Flushed: nothing offered. */
    av__tls_client_sessions_flush(c);
    assert_int_equal(av__tls_client_sessions(c), 0);
    assert_false(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "k1"));
    av__tls_client_ctx_free(c);
    av__tls_server_ctx_free(s);
}

/* The server binds tickets to the host its engine was made for: a ticket
 * from a tunnel to 127.0.0.1 offered in a tunnel to 127.0.0.2 (same leaf,
 * same client cache key; IP literals, so no SNI to refuse) does not resume
 * (a full, verified handshake instead), while the same host still does. */
static void resume_bound_to_host(void **state)
{
    (void)state;
    av_tls_server_ctx *s;
    av_tls_client_ctx *c;
    _Atomic unsigned long long sn = 0, cn = 0;
    resumption_ctxs(&s, &c, 1, &sn, &cn);
    assert_false(resume_conn(s, c, "127.0.0.1", "127.0.0.1", "127.0.0.1", "k"));
    assert_false(resume_conn(s, c, "127.0.0.1", "127.0.0.2", "127.0.0.1", "k"));
    assert_int_equal(av__tls_client_sessions(c), 1); /* the ticket of the 127.0.0.2 tunnel */
    assert_false(resume_conn(s, c, "127.0.0.1", "127.0.0.1", "127.0.0.1", "k"));
    assert_true(resume_conn(s, c, "127.0.0.1", "127.0.0.1", "127.0.0.1", "k"));
    assert_int_equal(sn, 1);
    av__tls_client_ctx_free(c);
    av__tls_server_ctx_free(s);
}

/* Ticket keys rotate: a key seals for an hour, then only opens for another
 * hour. Two tickets sealed with the first key (keys "a" and "b"); an hour
 * later "a" still resumes (and gets a ticket sealed with a new key); two
 * hours after the first key was made, "b" (first key) no longer resumes,
 * "a" (second key) does. */
static void resume_key_rotation(void **state)
{
    (void)state;
    av_tls_server_ctx *s;
    av_tls_client_ctx *c;
    resumption_ctxs(&s, &c, 1, NULL, NULL);
    assert_false(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "a"));
    assert_false(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "b"));
    av__tls_server_ctx_age_keys(s, 3601);
    assert_true(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "a"));
    av__tls_server_ctx_age_keys(s, 3600);
    assert_false(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "b"));
    assert_true(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "a"));
    av__tls_client_ctx_free(c);
    av__tls_server_ctx_free(s);
}

/* Ticket keys live in one server ctx's memory: another ctx (a restarted
 * proxy) opens none of its tickets; turning resumption off refuses the
 * tickets issued before and keeps no session on the client. */
static void resume_keys_and_off(void **state)
{
    (void)state;
    av_tls_server_ctx *s, *s2;
    av_tls_client_ctx *c, *c2;
    _Atomic unsigned long long sn = 0, cn = 0;
    resumption_ctxs(&s, &c, 1, &sn, &cn);
    resumption_ctxs(&s2, &c2, 1, NULL, NULL);
    assert_false(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "k"));
    assert_false(resume_conn(s2, c, "a.example.test", "a.example.test", "a.example.test", "k"));
    assert_true(resume_conn(s2, c, "a.example.test", "a.example.test", "a.example.test", "k"));
    av__tls_server_ctx_resumption(s2, 0, NULL);
    assert_int_equal(av__tls_client_sessions(c), 1);
    assert_false(resume_conn(s2, c, "a.example.test", "a.example.test", "a.example.test", "k"));
    assert_int_equal(av__tls_client_sessions(c), 0); /* the server sent none */
    av__tls_client_ctx_resumption(c, 0, &cn);
    assert_false(resume_conn(s, c, "a.example.test", "a.example.test", "a.example.test", "k"));
    assert_int_equal(av__tls_client_sessions(c), 0);
    assert_int_equal(cn, 1);
    av__tls_client_ctx_free(c);
    av__tls_client_ctx_free(c2);
    av__tls_server_ctx_free(s);
    av__tls_server_ctx_free(s2);
}

/* ALPN h2 is negotiated only when both engines were marked with
 * av__tls_offer_h2; otherwise http/1.1 as before, and marking after the
 * handshake is refused. */
static void alpn_h2(void **state)
{
    (void)state;
    static const int modes[4][2] = {{1, 1}, {1, 0}, {0, 1}, {0, 0}};
    for (int m = 0; m < 4; m++) {
        pair p;
        pair_new(&p, 1 << 16, "a.example.test", NULL, g_cctx, "a.example.test");
        if (modes[m][0])
            assert_int_equal(av__tls_offer_h2(p.s), AV_OK);
        if (modes[m][1])
            assert_int_equal(av__tls_offer_h2(p.c), AV_OK);
        handshake(&p);
        assert_int_equal(p.rc_c, AV_OK);
        assert_int_equal(p.rc_s, AV_OK);
        const char *want = modes[m][0] && modes[m][1] ? "h2" : "http/1.1";
        assert_string_equal(av__tls_alpn(p.c), want);
        assert_string_equal(av__tls_alpn(p.s), want);
        assert_int_equal(av__tls_offer_h2(p.s), AV_ERR_STATE);
        pair_free(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(handshake_data_close),
        cmocka_unit_test(bulk_with_backpressure),
        cmocka_unit_test(tiny_cout_handshake),
        cmocka_unit_test(sni_mismatch),
        cmocka_unit_test(sni_case_and_extra_names),
        cmocka_unit_test(verify_failures),
        cmocka_unit_test(ip_literals),
        cmocka_unit_test(alpn_h2),
        cmocka_unit_test(client_ctx_errors),
        cmocka_unit_test(handshake_speed),
        cmocka_unit_test(resume_same_host),
        cmocka_unit_test(resume_bound_to_host),
        cmocka_unit_test(resume_keys_and_off),
        cmocka_unit_test(resume_key_rotation),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
