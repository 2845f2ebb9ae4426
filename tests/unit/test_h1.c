/* test_h1.c - HTTP/1.1 head parser, body decoder and serializer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_h1.h"

#define S(lit) (lit), (sizeof(lit) - 1)

/* ---- helpers ------------------------------------------------------------ */

typedef struct kv {
    const char *name;
    const char *value;
} kv;

/* dup_exact copies |n| bytes into a heap block of exactly |n| bytes so
 * ASan flags any read past the length handed to the parser. */
static uint8_t *dup_exact(const void *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    assert_non_null(d);
    if (n)
        memcpy(d, p, n);
    return d;
}

/* parse_req_bytewise feeds prefixes of length 1, 2, ... (each in an exact
 * allocation), reusing the scan state, and returns the first result that
 * is not INCOMPLETE (or INCOMPLETE). *at gets the prefix length at which
 * it appeared; *keep gets the last buffer (caller frees). */
static ssize_t parse_req_bytewise(const char *in, size_t len, const av_h1_limits *lim,
                                  av_h1_request *req, size_t *at, uint8_t **keep)
{
    av_h1_scan scan;
    av__h1_scan_reset(&scan);
    ssize_t rc = AV_H1_INCOMPLETE;
    *keep = NULL;
    *at = 0;
    for (size_t k = 1; k <= len; k++) {
        uint8_t *b = dup_exact(in, k);
        rc = av__h1_parse_request(b, k, lim, &scan, req);
        free(*keep);
        *keep = b;
        *at = k;
        if (rc != AV_H1_INCOMPLETE)
            break;
    }
    return rc;
}

/* parse_resp_bytewise is parse_req_bytewise for responses. */
static ssize_t parse_resp_bytewise(const char *in, size_t len, int was_head, int was_connect,
                                   av_h1_response *resp, size_t *at, uint8_t **keep)
{
    av_h1_scan scan;
    av__h1_scan_reset(&scan);
    ssize_t rc = AV_H1_INCOMPLETE;
    *keep = NULL;
    *at = 0;
    for (size_t k = 1; k <= len; k++) {
        uint8_t *b = dup_exact(in, k);
        rc = av__h1_parse_response(b, k, NULL, &scan, was_head, was_connect, resp);
        free(*keep);
        *keep = b;
        *at = k;
        if (rc != AV_H1_INCOMPLETE)
            break;
    }
    return rc;
}

/* view_eq asserts that a (pointer, length) view equals the C string. */
static void view_eq(const char *p, size_t n, const char *want)
{
    if (n != strlen(want) || memcmp(p, want, n) != 0) {
        print_error("view \"%.*s\" != \"%s\"\n", (int)n, p, want);
        fail();
    }
}

/* view_inside asserts that a view lies within [buf, buf+len). */
static void view_inside(const void *v, size_t n, const uint8_t *buf, size_t len)
{
    const uint8_t *p = v;
    assert_true(p >= buf && p + n <= buf + len);
}

/* check_fields compares parsed fields with the expected list. */
static void check_fields(const av_h1_field *f, size_t n, const kv *want, const uint8_t *buf, size_t len)
{
    size_t nw = 0;
    while (want[nw].name)
        nw++;
    assert_int_equal(n, nw);
    for (size_t i = 0; i < n; i++) {
        view_eq(f[i].name, f[i].name_len, want[i].name);
        view_eq(f[i].value, f[i].value_len, want[i].value);
        view_inside(f[i].name, f[i].name_len, buf, len);
        view_inside(f[i].value, f[i].value_len, buf, len);
    }
}

/* ---- valid requests ------------------------------------------------------ */

typedef struct req_case {
    const char *in;
    const char *method;
    const char *target;
    int minor;
    int body;
    uint64_t cl;
    unsigned flags;
    const char *host; /* NULL: no Host */
    kv fields[8];
} req_case;

static const req_case req_cases[] = {
    {"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "GET", "/", 1, AV_H1_BODY_NONE, 0,
     AV_H1_F_HAS_HOST, "example.com", {{"Host", "example.com"}, {NULL, NULL}}},
    {"POST /submit?x=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhello", "POST",
     "/submit?x=1", 1, AV_H1_BODY_LENGTH, 5, AV_H1_F_HAS_HOST, "a.example",
     {{"Host", "a.example"}, {"Content-Length", "5"}, {NULL, NULL}}},
    {"PUT /up HTTP/1.1\r\nhost: h\r\ntransfer-encoding: Chunked\r\n\r\n", "PUT", "/up", 1,
     AV_H1_BODY_CHUNKED, 0, AV_H1_F_HAS_HOST, "h",
     {{"host", "h"}, {"transfer-encoding", "Chunked"}, {NULL, NULL}}},
    {"GET /old HTTP/1.0\r\n\r\n", "GET", "/old", 0, AV_H1_BODY_NONE, 0, AV_H1_F_CLOSE, NULL,
     {{NULL, NULL}}},
    {"GET /ka HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: k\r\n\r\n", "GET", "/ka", 0,
     AV_H1_BODY_NONE, 0, AV_H1_F_HAS_HOST, "k",
     {{"Connection", "Keep-Alive"}, {"Host", "k"}, {NULL, NULL}}},
    {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", "GET", "/", 0, AV_H1_BODY_NONE, 0,
     AV_H1_F_CLOSE, NULL, {{"Connection", "keep-alive, close"}, {NULL, NULL}}},
    {"DELETE /x HTTP/1.1\r\nHost: d\r\nConnection: ,close , X-Foo,\r\n\r\n", "DELETE", "/x", 1,
     AV_H1_BODY_NONE, 0, AV_H1_F_HAS_HOST | AV_H1_F_CLOSE, "d",
     {{"Host", "d"}, {"Connection", ",close , X-Foo,"}, {NULL, NULL}}},
    {"GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
     "GET", "/chat", 1, AV_H1_BODY_NONE, 0,
     AV_H1_F_HAS_HOST | AV_H1_F_UPGRADE | AV_H1_F_UPGRADE_WEBSOCKET, "ws.example",
     {{"Host", "ws.example"}, {"Upgrade", "websocket"}, {"Connection", "Upgrade"},
      {"Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="}, {"Sec-WebSocket-Version", "13"}, {NULL, NULL}}},
    {"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
     "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
     "GET", "/", 1, AV_H1_BODY_NONE, 0, AV_H1_F_HAS_HOST | AV_H1_F_UPGRADE | AV_H1_F_UPGRADE_H2C, "h",
     {{"Host", "h"}, {"Connection", "Upgrade, HTTP2-Settings"}, {"Upgrade", "h2c"},
      {"HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"}, {NULL, NULL}}},
    /* websocket without Connection: upgrade is only UPGRADE */
    {"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\n\r\n", "GET", "/", 1, AV_H1_BODY_NONE, 0,
     AV_H1_F_HAS_HOST | AV_H1_F_UPGRADE, "h", {{"Host", "h"}, {"Upgrade", "WebSocket"}, {NULL, NULL}}},
    {"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n", "POST",
     "/e", 1, AV_H1_BODY_LENGTH, 3, AV_H1_F_HAS_HOST | AV_H1_F_EXPECT_CONTINUE, "h",
     {{"Host", "h"}, {"Expect", "100-Continue"}, {"Content-Length", "3"}, {NULL, NULL}}},
    {"POST /e HTTP/1.1\r\nHost: h\r\nExpect: something-else\r\n\r\n", "POST", "/e", 1,
     AV_H1_BODY_NONE, 0, AV_H1_F_HAS_HOST | AV_H1_F_EXPECT_OTHER, "h",
     {{"Host", "h"}, {"Expect", "something-else"}, {NULL, NULL}}},
    {"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "CONNECT",
     "example.com:443", 1, AV_H1_BODY_NONE, 0, AV_H1_F_HAS_HOST, "example.com:443",
     {{"Host", "example.com:443"}, {NULL, NULL}}},
    {"GET http://example.com/a?b=c&d=%20#f HTTP/1.1\r\nHost: example.com\r\n\r\n", "GET",
     "http://example.com/a?b=c&d=%20#f", 1, AV_H1_BODY_NONE, 0, AV_H1_F_HAS_HOST, "example.com",
     {{"Host", "example.com"}, {NULL, NULL}}},
    {"M-SEARCH * HTTP/1.1\r\nX-A: \t value with  inner \t spaces \t \r\nX-Empty:\r\nX-Ws:   \r\n"
     "X-U: caf\xc3\xa9 \x80\xff\r\nX-Sym: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\r\n\r\n",
     "M-SEARCH", "*", 1, AV_H1_BODY_NONE, 0, 0, NULL,
     {{"X-A", "value with  inner \t spaces"}, {"X-Empty", ""}, {"X-Ws", ""},
      {"X-U", "caf\xc3\xa9 \x80\xff"}, {"X-Sym", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"}, {NULL, NULL}}},
    {"POST / HTTP/1.1\r\nContent-Length: 999999999999999999\r\n\r\n", "POST", "/", 1,
     AV_H1_BODY_LENGTH, UINT64_C(999999999999999999), 0, NULL,
     {{"Content-Length", "999999999999999999"}, {NULL, NULL}}},
    {"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "POST", "/", 1, AV_H1_BODY_LENGTH, 0, 0, NULL,
     {{"Content-Length", "0"}, {NULL, NULL}}},
    {"POST / HTTP/1.1\r\nContent-Length:007\r\n\r\n", "POST", "/", 1, AV_H1_BODY_LENGTH, 7, 0, NULL,
     {{"Content-Length", "007"}, {NULL, NULL}}},
    /* 100-continue is ignored in HTTP/1.0 (RFC 9110 10.1.1) */
    {"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", "POST", "/", 0, AV_H1_BODY_NONE, 0,
     AV_H1_F_CLOSE, NULL, {{"Expect", "100-continue"}, {NULL, NULL}}},
    /* a pipelined second request after the head is left alone */
    {"GET /1 HTTP/1.1\r\nHost: p\r\n\r\nGET /2 HTTP/1.1\r\nHost: p\r\n\r\n", "GET", "/1", 1,
     AV_H1_BODY_NONE, 0, AV_H1_F_HAS_HOST, "p", {{"Host", "p"}, {NULL, NULL}}},
};

/* check_request asserts every parsed field of one case. */
static void check_request(const req_case *c, ssize_t rc, const av_h1_request *r, const uint8_t *buf,
                          size_t len)
{
    size_t hl = (size_t)(strstr(c->in, "\r\n\r\n") - c->in) + 4;
    assert_int_equal(rc, (ssize_t)hl);
    view_eq(r->method, r->method_len, c->method);
    view_eq(r->target, r->target_len, c->target);
    view_inside(r->method, r->method_len, buf, len);
    view_inside(r->target, r->target_len, buf, len);
    assert_int_equal(r->minor_version, c->minor);
    assert_int_equal(r->body, c->body);
    if (c->body == AV_H1_BODY_LENGTH)
        assert_true(r->content_length == c->cl);
    assert_int_equal(r->flags, c->flags);
    if (c->host) {
        assert_non_null(r->host);
        view_eq(r->host->value, r->host->value_len, c->host);
        assert_true(r->host >= r->fields && r->host < r->fields + r->nfields);
    } else {
        assert_null(r->host);
    }
    check_fields(r->fields, r->nfields, c->fields, buf, len);
}

static void valid_requests(void **state)
{
    (void)state;
    static av_h1_request req;
    for (size_t i = 0; i < sizeof(req_cases) / sizeof(req_cases[0]); i++) {
        const req_case *c = &req_cases[i];
        size_t len = strlen(c->in);
        size_t hl = (size_t)(strstr(c->in, "\r\n\r\n") - c->in) + 4;
        /* (a) whole */
        uint8_t *b = dup_exact(c->in, len);
        av_h1_scan scan = {0};
        memset(&req, 0xa5, sizeof(req));
        ssize_t rc = av__h1_parse_request(b, len, NULL, &scan, &req);
        check_request(c, rc, &req, b, len);
        free(b);
        /* (b) byte by byte: INCOMPLETE until exactly the end of the head */
        size_t at = 0;
        memset(&req, 0x5a, sizeof(req));
        rc = parse_req_bytewise(c->in, len, NULL, &req, &at, &b);
        assert_int_equal(at, hl);
        check_request(c, rc, &req, b, at);
        free(b);
    }
}

/* ---- valid responses ----------------------------------------------------- */

typedef struct resp_case {
    const char *in;
    int was_head;
    int was_connect;
    int status;
    const char *reason;
    int minor;
    int body;
    uint64_t cl;
    unsigned flags;
    kv fields[6];
} resp_case;

static const resp_case resp_cases[] = {
    {"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\n", 0, 0, 200, "OK", 1,
     AV_H1_BODY_LENGTH, 12, 0, {{"Content-Length", "12"}, {"Content-Type", "text/plain"}, {NULL, NULL}}},
    {"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n", 0, 0, 200, "", 1, AV_H1_BODY_LENGTH, 1, 0,
     {{"Content-Length", "1"}, {NULL, NULL}}},
    {"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\n", 0, 0, 200, "", 1, AV_H1_BODY_LENGTH, 1, 0,
     {{"Content-Length", "1"}, {NULL, NULL}}},
    {"HTTP/1.1 404 Not  Found\t(really) caf\xc3\xa9\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 0, 404,
     "Not  Found\t(really) caf\xc3\xa9", 1, AV_H1_BODY_CHUNKED, 0, 0,
     {{"Transfer-Encoding", "chunked"}, {NULL, NULL}}},
    {"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", 0, 0, 200, "OK", 1, AV_H1_BODY_UNTIL_CLOSE, 0, 0,
     {{"Server", "x"}, {NULL, NULL}}},
    {"HTTP/1.1 204 No Content\r\n\r\n", 0, 0, 204, "No Content", 1, AV_H1_BODY_NONE, 0, 0, {{NULL, NULL}}},
    {"HTTP/1.1 304 Not Modified\r\nContent-Length: 500\r\n\r\n", 0, 0, 304, "Not Modified", 1,
     AV_H1_BODY_NONE, 0, 0, {{"Content-Length", "500"}, {NULL, NULL}}},
    {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", 1, 0, 200, "OK", 1, AV_H1_BODY_NONE, 0, 0,
     {{"Content-Length", "100"}, {NULL, NULL}}},
    {"HTTP/1.1 200 Connection established\r\n\r\n", 0, 1, 200, "Connection established", 1,
     AV_H1_BODY_NONE, 0, 0, {{NULL, NULL}}},
    {"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 2\r\n\r\n", 0, 1, 407,
     "Proxy Authentication Required", 1, AV_H1_BODY_LENGTH, 2, 0, {{"Content-Length", "2"}, {NULL, NULL}}},
    {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
     0, 0, 101, "Switching Protocols", 1, AV_H1_BODY_NONE, 0, AV_H1_F_UPGRADE | AV_H1_F_UPGRADE_WEBSOCKET,
     {{"Upgrade", "websocket"}, {"Connection", "Upgrade"},
      {"Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="}, {NULL, NULL}}},
    {"HTTP/1.1 100 Continue\r\n\r\n", 0, 0, 100, "Continue", 1, AV_H1_BODY_NONE, 0, 0, {{NULL, NULL}}},
    {"HTTP/1.0 200 OK\r\n\r\n", 0, 0, 200, "OK", 0, AV_H1_BODY_UNTIL_CLOSE, 0, AV_H1_F_CLOSE, {{NULL, NULL}}},
    {"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 0, 0, 500,
     "Internal Server Error", 1, AV_H1_BODY_LENGTH, 0, AV_H1_F_CLOSE,
     {{"Connection", "close"}, {"Content-Length", "0"}, {NULL, NULL}}},
    {"HTTP/1.1 999 Odd\r\nContent-Length: 3\r\n\r\n", 0, 0, 999, "Odd", 1, AV_H1_BODY_LENGTH, 3, 0,
     {{"Content-Length", "3"}, {NULL, NULL}}},
};

/* check_response asserts every parsed field of one case. */
static void check_response(const resp_case *c, ssize_t rc, const av_h1_response *r, const uint8_t *buf,
                           size_t len)
{
    assert_int_equal(rc, (ssize_t)strlen(c->in));
    assert_int_equal(r->status, c->status);
    view_eq(r->reason, r->reason_len, c->reason);
    view_inside(r->reason, r->reason_len, buf, len);
    assert_int_equal(r->minor_version, c->minor);
    assert_int_equal(r->body, c->body);
    if (c->body == AV_H1_BODY_LENGTH)
        assert_true(r->content_length == c->cl);
    assert_int_equal(r->flags, c->flags);
    check_fields(r->fields, r->nfields, c->fields, buf, len);
}

static void valid_responses(void **state)
{
    (void)state;
    static av_h1_response resp;
    for (size_t i = 0; i < sizeof(resp_cases) / sizeof(resp_cases[0]); i++) {
        const resp_case *c = &resp_cases[i];
        size_t len = strlen(c->in);
        uint8_t *b = dup_exact(c->in, len);
        av_h1_scan scan = {0};
        memset(&resp, 0xa5, sizeof(resp));
        ssize_t rc = av__h1_parse_response(b, len, NULL, &scan, c->was_head, c->was_connect, &resp);
        check_response(c, rc, &resp, b, len);
        free(b);
        size_t at = 0;
        memset(&resp, 0x5a, sizeof(resp));
        rc = parse_resp_bytewise(c->in, len, c->was_head, c->was_connect, &resp, &at, &b);
        assert_int_equal(at, len);
        check_response(c, rc, &resp, b, at);
        free(b);
    }
}

/* ---- strictness corpus --------------------------------------------------- */

typedef struct bad_case {
    const char *in;
    size_t len; /* 0: strlen */
    int is_request;
    ssize_t err;
    size_t early; /* nonzero: the error must appear at exactly this prefix length */
} bad_case;

#define RQ(s, e) {s, 0, 1, e, 0}
#define RS(s, e) {s, 0, 0, e, 0}
#define RQN(s, e) {s, sizeof(s) - 1, 1, e, 0}

static const bad_case bad_cases[] = {
    /* framing: request smuggling */
    RQ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 5,5\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 1a\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 5.0\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 1000000000000000000\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 18446744073709551617\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nContent-Length: 0000000000000000005\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", AV_H1_ERR_FRAMING),
    RQ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    /* field syntax */
    RQ("GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n\tb\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\n: empty-name\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nX@Y: 1\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nX\x80Y: 1\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nX-A: a\x01z\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nX-A: a\x7fz\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nX-A: a\x1b[0m\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQN("GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQN("GET / HTTP/1.1\r\nX\0A: b\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQN("GET /\0 HTTP/1.1\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nHost: a\r\nHOST: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    /* bare LF / bare CR: rejected at the byte itself */
    {"GET / HTTP/1.1\nHost: a\r\n\r\n", 0, 1, AV_H1_ERR_SYNTAX, 15},
    {"GET / HTTP/1.1\r\nHost: a\n\r\n", 0, 1, AV_H1_ERR_SYNTAX, 24},
    {"GET / HTTP/1.1\r\nHost: a\r\n\n", 0, 1, AV_H1_ERR_SYNTAX, 26},
    {"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 0, 1, AV_H1_ERR_SYNTAX, 22},
    {"GET / HTTP/1.1\r\r\n\r\n", 0, 1, AV_H1_ERR_SYNTAX, 16},
    {"\nGET / HTTP/1.1\r\n\r\n", 0, 1, AV_H1_ERR_SYNTAX, 1},
    {"\r\nGET / HTTP/1.1\r\n\r\n", 0, 1, AV_H1_ERR_SYNTAX, 2},
    {"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", 0, 0, AV_H1_ERR_SYNTAX, 16},
    /* request line */
    RQ("PRI * HTTP/2.0\r\n\r\n", AV_H1_ERR_VERSION),
    RQ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", AV_H1_ERR_VERSION),
    RQ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", AV_H1_ERR_VERSION),
    RQ("GET / HTTP/0.9\r\nHost: a\r\n\r\n", AV_H1_ERR_VERSION),
    RQ("GET / HTTP/3.1\r\nHost: a\r\n\r\n", AV_H1_ERR_VERSION),
    RQ("GET / http/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.10\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/11\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.x\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / XTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET /\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET /\tHTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET http://a/b c HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GE:T / HTTP/1.1\r\nHost: a\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("HTTP/1.1 200 OK\r\n\r\n", AV_H1_ERR_SYNTAX),
    /* Connection */
    RQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n\r\n", AV_H1_ERR_CONNECTION),
    RQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, Host\r\n\r\n", AV_H1_ERR_CONNECTION),
    RQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Transfer-Encoding\r\n\r\n", AV_H1_ERR_CONNECTION),
    RQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: HOST\r\n\r\n", AV_H1_ERR_CONNECTION),
    RQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close;x\r\n\r\n", AV_H1_ERR_SYNTAX),
    RQ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close x\r\n\r\n", AV_H1_ERR_SYNTAX),
    /* responses */
    RS("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RS("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RS("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", AV_H1_ERR_FRAMING),
    RS("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", AV_H1_ERR_FRAMING),
    RS("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RS("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", AV_H1_ERR_FRAMING),
    RS("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", AV_H1_ERR_FRAMING),
    RS("HTTP/1.1 200 OK\r\nConnection: content-length\r\n\r\n", AV_H1_ERR_CONNECTION),
    RS("HTTP/2.0 200 OK\r\n\r\n", AV_H1_ERR_VERSION),
    RS("HTTP/1.2 200 OK\r\n\r\n", AV_H1_ERR_VERSION),
    RS("HTTP/2 200 OK\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("http/1.1 200 OK\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1 20 OK\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1 2000 OK\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1 200OK\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1 099 Low\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1  200 OK\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1 2x0 OK\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1 200 O\x01K\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("HTTP/1.1 200 OK\r\nServer : x\r\n\r\n", AV_H1_ERR_SYNTAX),
    RS("GET / HTTP/1.1\r\n\r\n", AV_H1_ERR_SYNTAX),
};

/* run_bad parses one bad case whole and byte by byte. */
static void run_bad(const bad_case *c, size_t idx)
{
    static av_h1_request req;
    static av_h1_response resp;
    size_t len = c->len ? c->len : strlen(c->in);
    uint8_t *b = dup_exact(c->in, len);
    av_h1_scan scan = {0};
    ssize_t rc = c->is_request ? av__h1_parse_request(b, len, NULL, &scan, &req)
                               : av__h1_parse_response(b, len, NULL, &scan, 0, 0, &resp);
    if (rc != c->err) {
        print_error("bad case %zu: whole parse returned %zd, want %zd\n", idx, rc, c->err);
        fail();
    }
    free(b);
    size_t at = 0;
    rc = c->is_request ? parse_req_bytewise(c->in, len, NULL, &req, &at, &b)
                       : parse_resp_bytewise(c->in, len, 0, 0, &resp, &at, &b);
    free(b);
    if (rc != c->err || (c->early && at != c->early) || (!c->early && at != len)) {
        print_error("bad case %zu: bytewise returned %zd at %zu, want %zd at %zu\n", idx, rc, at, c->err,
                    c->early ? c->early : len);
        fail();
    }
}

static void strictness_corpus(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++)
        run_bad(&bad_cases[i], i);
}

/* build_fields makes a request with |n| fields "X-Fnnn: v". */
static size_t build_fields(char *out, size_t cap, size_t n)
{
    size_t o = (size_t)snprintf(out, cap, "GET / HTTP/1.1\r\n");
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(out + o, cap - o, "X-F%03zu: v%zu\r\n", i, i);
    o += (size_t)snprintf(out + o, cap - o, "\r\n");
    return o;
}

static void field_count_limits(void **state)
{
    (void)state;
    static char big[8192];
    static av_h1_request req;
    av_h1_scan scan = {0};
    size_t n = build_fields(big, sizeof(big), 100);
    assert_int_equal(av__h1_parse_request((const uint8_t *)big, n, NULL, &scan, &req), (ssize_t)n);
    assert_int_equal(req.nfields, 100);
    view_eq(req.fields[99].name, req.fields[99].name_len, "X-F099");
    view_eq(req.fields[99].value, req.fields[99].value_len, "v99");

    n = build_fields(big, sizeof(big), 101);
    av__h1_scan_reset(&scan);
    assert_int_equal(av__h1_parse_request((const uint8_t *)big, n, NULL, &scan, &req), AV_H1_ERR_TOO_LARGE);

    /* max_fields above the cap is clamped to the cap */
    av_h1_limits lim = {0, 1000};
    n = build_fields(big, sizeof(big), AV_H1_MAX_FIELDS_CAP);
    av__h1_scan_reset(&scan);
    assert_int_equal(av__h1_parse_request((const uint8_t *)big, n, &lim, &scan, &req), (ssize_t)n);
    assert_int_equal(req.nfields, AV_H1_MAX_FIELDS_CAP);
    n = build_fields(big, sizeof(big), AV_H1_MAX_FIELDS_CAP + 1);
    av__h1_scan_reset(&scan);
    assert_int_equal(av__h1_parse_request((const uint8_t *)big, n, &lim, &scan, &req), AV_H1_ERR_TOO_LARGE);

    /* a custom lower limit */
    av_h1_limits two = {0, 2};
    n = build_fields(big, sizeof(big), 2);
    av__h1_scan_reset(&scan);
    assert_int_equal(av__h1_parse_request((const uint8_t *)big, n, &two, &scan, &req), (ssize_t)n);
    n = build_fields(big, sizeof(big), 3);
    av__h1_scan_reset(&scan);
    assert_int_equal(av__h1_parse_request((const uint8_t *)big, n, &two, &scan, &req), AV_H1_ERR_TOO_LARGE);
}

static void head_size_limits(void **state)
{
    (void)state;
    static av_h1_request req;
    static av_h1_response resp;
    /* a 70 KB head: TOO_LARGE exactly when byte 65537 arrives */
    size_t big_len = 70 * 1024;
    char *big = malloc(big_len);
    assert_non_null(big);
    size_t o = (size_t)sprintf(big, "GET / HTTP/1.1\r\nX-Big: ");
    memset(big + o, 'a', big_len - o - 4);
    memcpy(big + big_len - 4, "\r\n\r\n", 4);
    av_h1_scan scan = {0};
    assert_int_equal(av__h1_parse_request((const uint8_t *)big, big_len, NULL, &scan, &req),
                     AV_H1_ERR_TOO_LARGE);
    av__h1_scan_reset(&scan);
    ssize_t rc = AV_H1_INCOMPLETE;
    size_t k;
    for (k = 1; k <= big_len; k++) {
        rc = av__h1_parse_request((const uint8_t *)big, k, NULL, &scan, &req);
        if (rc != AV_H1_INCOMPLETE)
            break;
        /* linear: every call resumes where the previous one stopped */
        assert_int_equal(scan.scanned, k);
    }
    assert_int_equal(rc, AV_H1_ERR_TOO_LARGE);
    assert_int_equal(k, 65537);
    av__h1_scan_reset(&scan);
    assert_int_equal(av__h1_parse_response((const uint8_t *)big, 65537, NULL, &scan, 0, 0, &resp),
                     AV_H1_ERR_TOO_LARGE);

    /* exactly max_head bytes is accepted; one more is not */
    av_h1_limits lim = {64, 0};
    char h[80];
    o = (size_t)sprintf(h, "GET / HTTP/1.1\r\nX: ");
    memset(h + o, 'b', 64 - o - 4);
    memcpy(h + 60, "\r\n\r\n", 4);
    av__h1_scan_reset(&scan);
    assert_int_equal(av__h1_parse_request((const uint8_t *)h, 64, &lim, &scan, &req), 64);
    memset(h + o, 'b', 65 - o - 4);
    memcpy(h + 61, "\r\n\r\n", 4);
    av__h1_scan_reset(&scan);
    assert_int_equal(av__h1_parse_request((const uint8_t *)h, 64, &lim, &scan, &req), AV_H1_INCOMPLETE);
    assert_int_equal(av__h1_parse_request((const uint8_t *)h, 65, &lim, &scan, &req), AV_H1_ERR_TOO_LARGE);

    /* a 60 KB valid head fed byte by byte stays linear */
    size_t ok_len = 60 * 1024;
    o = (size_t)sprintf(big, "GET / HTTP/1.1\r\nX-Big: ");
    memset(big + o, 'c', ok_len - o - 4);
    memcpy(big + ok_len - 4, "\r\n\r\n", 4);
    av__h1_scan_reset(&scan);
    for (k = 1; k <= ok_len; k++) {
        rc = av__h1_parse_request((const uint8_t *)big, k, NULL, &scan, &req);
        if (rc != AV_H1_INCOMPLETE)
            break;
    }
    assert_int_equal(rc, (ssize_t)ok_len);
    assert_int_equal(k, ok_len);
    assert_int_equal(req.fields[0].value_len, ok_len - o - 4);
    free(big);
}

static void empty_and_incomplete(void **state)
{
    (void)state;
    static av_h1_request req;
    av_h1_scan scan = {0};
    assert_int_equal(av__h1_parse_request((const uint8_t *)"", 0, NULL, &scan, &req), AV_H1_INCOMPLETE);
    assert_int_equal(av__h1_parse_request((const uint8_t *)"GET / HTTP/1.1\r\n\r", 17, NULL, &scan, &req),
                     AV_H1_INCOMPLETE);
    assert_int_equal(scan.scanned, 17);
    assert_int_equal(av__h1_parse_request((const uint8_t *)"GET / HTTP/1.1\r\n\r\n", 18, NULL, &scan, &req),
                     18);
    assert_int_equal(req.nfields, 0);
    assert_int_equal(req.flags, 0);
    assert_null(req.host);
}

/* ---- field helpers ------------------------------------------------------- */

static void field_helpers(void **state)
{
    (void)state;
    static av_h1_request req;
    const char *in = "GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Secret ,  close\r\n"
                     "X-Secret: 1\r\nx-secret: 2\r\nX-Other: 3\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
                     "Proxy-Authorization: Basic x\r\nUpgrade: foo\r\nTrailer: t\r\n"
                     "Proxy-Connection: k\r\nProxy-Authenticate: z\r\nContent-Length: 0\r\n\r\n";
    av_h1_scan scan = {0};
    assert_int_equal(av__h1_parse_request((const uint8_t *)in, strlen(in), NULL, &scan, &req),
                     (ssize_t)strlen(in));
    assert_int_equal(req.nfields, 13);
    const av_h1_field *f = av__h1_find(req.fields, req.nfields, "x-SECRET");
    assert_ptr_equal(f, &req.fields[2]);
    assert_null(av__h1_find(req.fields, req.nfields, "x-secre"));
    assert_null(av__h1_find(req.fields, req.nfields, "x-secrets"));
    assert_true(av__h1_name_eq(&req.fields[0], "HOST"));
    assert_false(av__h1_name_eq(&req.fields[0], "hos"));
    /* Host, Connection, X-Secret, x-secret, X-Other, Keep-Alive, TE,
     * Proxy-Authorization, Upgrade, Trailer, Proxy-Connection,
     * Proxy-Authenticate, Content-Length */
    static const int want[13] = {0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0};
    for (size_t i = 0; i < req.nfields; i++) {
        int got = av__h1_is_hop_by_hop(&req.fields[i], req.fields, req.nfields);
        if (got != want[i]) {
            print_error("field %zu (%.*s): hop %d want %d\n", i, (int)req.fields[i].name_len,
                        req.fields[i].name, got, want[i]);
            fail();
        }
    }
    /* without the Connection field, X-Secret is end-to-end */
    assert_false(av__h1_is_hop_by_hop(&req.fields[2], req.fields + 2, 1));
}

/* ---- body decoding ------------------------------------------------------- */

typedef struct sink {
    uint8_t data[4096];
    size_t len;
} sink;

/* feed_all feeds |in| to |b| until it consumes nothing; returns bytes
 * consumed or the error. Payload is appended to |s|. */
static ssize_t feed_all(av_h1_body *b, const uint8_t *in, size_t len, sink *s)
{
    size_t pos = 0;
    for (;;) {
        const uint8_t *d = NULL;
        size_t dl = 99;
        ssize_t r = av__h1_body_feed(b, in + pos, len - pos, &d, &dl);
        if (r < 0)
            return r;
        assert_true((size_t)r <= len - pos);
        if (dl) {
            /* payload is a view into the consumed bytes */
            assert_true(d >= in + pos && d + dl <= in + pos + (size_t)r);
            assert_true(s->len + dl <= sizeof(s->data));
            memcpy(s->data + s->len, d, dl);
            s->len += dl;
        }
        pos += (size_t)r;
        if (r == 0)
            return (ssize_t)pos;
    }
}

static const char chunked_body[] =
    "5;ext=val;q=\"a\\\"b;c\" ; flag\r\nhello\r\n"
    "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    "001\r\n!\r\n"
    "3 ; a = b\r\n123\r\n"
    "0;last\r\nTrailer-A: x\r\nB:\r\nC:  y  \r\n\r\n";
static const char chunked_payload[] = "helloabcdefghijklmnopqrstuvwxyz!123";
static const char next_request[] = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";

static void chunked_whole_and_next(void **state)
{
    (void)state;
    size_t blen = sizeof(chunked_body) - 1;
    size_t nlen = sizeof(next_request) - 1;
    uint8_t *in = malloc(blen + nlen);
    assert_non_null(in);
    memcpy(in, chunked_body, blen);
    memcpy(in + blen, next_request, nlen);
    av_h1_body b;
    av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
    assert_int_equal(b.done, 0);
    sink s = {.len = 0};
    ssize_t r = feed_all(&b, in, blen + nlen, &s);
    assert_int_equal(r, (ssize_t)blen); /* stops exactly at the end of the body */
    assert_int_equal(b.done, 1);
    assert_int_equal(s.len, sizeof(chunked_payload) - 1);
    assert_memory_equal(s.data, chunked_payload, s.len);
    /* done: consumes nothing more */
    const uint8_t *d;
    size_t dl;
    assert_int_equal(av__h1_body_feed(&b, in + blen, nlen, &d, &dl), 0);
    assert_int_equal(dl, 0);
    free(in);
}

static void chunked_every_split(void **state)
{
    (void)state;
    size_t blen = sizeof(chunked_body) - 1;
    for (size_t k = 0; k <= blen; k++) {
        uint8_t *p1 = dup_exact(chunked_body, k);
        uint8_t *p2 = dup_exact(chunked_body + k, blen - k);
        av_h1_body b;
        av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
        sink s = {.len = 0};
        ssize_t r1 = feed_all(&b, p1, k, &s);
        assert_int_equal(r1, (ssize_t)k); /* partial lines are consumed too */
        assert_int_equal(b.done, k == blen);
        ssize_t r2 = feed_all(&b, p2, blen - k, &s);
        assert_int_equal(r2, (ssize_t)(blen - k));
        assert_int_equal(b.done, 1);
        assert_int_equal(s.len, sizeof(chunked_payload) - 1);
        assert_memory_equal(s.data, chunked_payload, s.len);
        free(p1);
        free(p2);
    }
    /* byte by byte */
    av_h1_body b;
    av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
    sink s = {.len = 0};
    for (size_t i = 0; i < blen; i++) {
        uint8_t *one = dup_exact(chunked_body + i, 1);
        assert_int_equal(b.done, 0);
        assert_int_equal(feed_all(&b, one, 1, &s), 1);
        free(one);
    }
    assert_int_equal(b.done, 1);
    assert_int_equal(s.len, sizeof(chunked_payload) - 1);
    assert_memory_equal(s.data, chunked_payload, s.len);
}

static void chunked_one_run_per_call(void **state)
{
    (void)state;
    const char *in = "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    size_t len = strlen(in);
    av_h1_body b;
    av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
    const uint8_t *d;
    size_t dl;
    ssize_t r = av__h1_body_feed(&b, (const uint8_t *)in, len, &d, &dl);
    assert_int_equal(r, 6); /* "3\r\n" + "abc" */
    assert_int_equal(dl, 3);
    assert_ptr_equal(d, (const uint8_t *)in + 3);
    r = av__h1_body_feed(&b, (const uint8_t *)in + 6, len - 6, &d, &dl);
    assert_int_equal(r, 7); /* "\r\n2\r\n" + "de" */
    assert_int_equal(dl, 2);
    assert_memory_equal(d, "de", 2);
    r = av__h1_body_feed(&b, (const uint8_t *)in + 13, len - 13, &d, &dl);
    assert_int_equal(r, (ssize_t)(len - 13));
    assert_int_equal(dl, 0);
    assert_int_equal(b.done, 1);
}

static void chunked_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhello\r0\r\n\r\n",
        "5\r\nhelloX\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\n\r\n",
        "5\r\nhello\r\n0\r\n\n",
        "5\r\nhello\r\n0\r\n\r\r",
        "-5\r\nhello\r\n",
        "+5\r\nhello\r\n",
        "0x5\r\nhello\r\n",
        "\r\nhello\r\n",
        " 5\r\nhello\r\n",
        "5 \r\nhello\r\n",
        "5\t\r\nhello\r\n",
        "5;\r\nhello\r\n",
        "5; \r\nhello\r\n",
        "5;a=\r\nhello\r\n",
        "5;a b\r\nhello\r\n",
        "5;a=b c\r\nhello\r\n",
        "5;a=\"unterminated\r\nhello\r\n",
        "5;a=\"x\"y\r\nhello\r\n",
        "5;a=\"\x01\"\r\nhello\r\n",
        "5;a=\"\\\x01\"\r\nhello\r\n",
        "5;a@b\r\nhello\r\n",
        "5;=b\r\nhello\r\n",
        "5\r\r\nhello\r\n",
        "g\r\n",
        "5\x00\r\nhello\r\n",
        "4000000000000001\r\n",
        "10000000000000000\r\n",
        "FFFFFFFFFFFFFFFFFFFF\r\n",
        "0\r\nBad Name: x\r\n\r\n",
        "0\r\n X: obs\r\n\r\n",
        "0\r\nX : v\r\n\r\n",
        "0\r\n: v\r\n\r\n",
        "0\r\nNoColon\r\n\r\n",
        "0\r\nA: b\n\r\n",
        "0\r\nA: b\x7f\r\n\r\n",
        "0\r\nA: b\rc\r\n\r\n",
        "0\r\n\r\x00",
        "5\rXhello\r\n0\r\n\r\n",
        "5\r\nhello\rX0\r\n\r\n",
        "5\r\nhelloX\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nA: b\rXC: d\r\n\r\n",
        "5\r\nhello\r\n0\rX\r\n",
        "5\r\nhello\r\n0\r\n\rX",
    };
    static const size_t bad_len[] = {[27] = 11, [39] = 6};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = (i < sizeof(bad_len) / sizeof(bad_len[0]) && bad_len[i]) ? bad_len[i] : strlen(bad[i]);
        uint8_t *in = dup_exact(bad[i], len);
        av_h1_body b;
        av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
        sink s = {.len = 0};
        ssize_t r = feed_all(&b, in, len, &s);
        if (r != AV_H1_ERR_SYNTAX) {
            print_error("bad chunked %zu: got %zd\n", i, r);
            fail();
        }
        /* the error is sticky */
        const uint8_t *d;
        size_t dl;
        assert_int_equal(av__h1_body_feed(&b, in, len, &d, &dl), AV_H1_ERR_SYNTAX);
        assert_int_equal(av__h1_body_feed(&b, in, 0, &d, &dl), AV_H1_ERR_SYNTAX);
        assert_int_equal(dl, 0);
        assert_int_equal(b.done, 0);
        /* and byte by byte gives the same */
        av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
        s.len = 0;
        r = 0;
        for (size_t k = 0; k < len && r >= 0; k++)
            r = feed_all(&b, in + k, 1, &s);
        assert_int_equal(r, AV_H1_ERR_SYNTAX);
        free(in);
    }
}

static void chunked_limits(void **state)
{
    (void)state;
    av_h1_body b;
    sink s = {.len = 0};
    /* the largest allowed size is accepted (only the line is fed) */
    av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
    assert_int_equal(feed_all(&b, (const uint8_t *)"4000000000000000\r\n", 18, &s), 18);
    assert_true(b.remaining == (UINT64_C(1) << 62));

    /* chunk-size line of exactly 4096 bytes (with CRLF) is fine, 4097 not */
    static uint8_t line[5000];
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = 4096 + (size_t)extra;
        memcpy(line, "1;x=", 4);
        memset(line + 4, 'v', n - 6);
        memcpy(line + n - 2, "\r\n", 2);
        av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
        ssize_t r = feed_all(&b, line, n, &s);
        assert_int_equal(r, extra ? AV_H1_ERR_SYNTAX : (ssize_t)n);
    }

    /* an over-long line is refused before its CRLF arrives */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = 4096 + (size_t)extra;
        memcpy(line, "1;x=", 4);
        memset(line + 4, 'v', n - 4);
        av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
        ssize_t r = feed_all(&b, line, n, &s);
        assert_int_equal(r, extra ? AV_H1_ERR_SYNTAX : (ssize_t)n);
    }

    /* trailers: 16 KiB in total (including the final CRLF) */
    static uint8_t tr[20000];
    for (int extra = 0; extra <= 1; extra++) {
        size_t t = 16384 + (size_t)extra;
        memcpy(tr, "0\r\n", 3);
        size_t o = 3;
        /* 8 trailer lines of 2000 bytes + one filler line + final CRLF */
        for (int i = 0; i < 8; i++) {
            memcpy(tr + o, "T: ", 3);
            memset(tr + o + 3, 'x', 1995);
            memcpy(tr + o + 1998, "\r\n", 2);
            o += 2000;
        }
        size_t fill = t - 16000 - 2;
        memcpy(tr + o, "F: ", 3);
        memset(tr + o + 3, 'y', fill - 5);
        memcpy(tr + o + fill - 2, "\r\n", 2);
        o += fill;
        memcpy(tr + o, "\r\n", 2);
        o += 2;
        assert_int_equal(o, 3 + t);
        av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
        s.len = 0;
        ssize_t r = feed_all(&b, tr, o, &s);
        assert_int_equal(r, extra ? AV_H1_ERR_SYNTAX : (ssize_t)o);
        assert_int_equal(b.done, !extra);
    }
}

static void length_until_close_none(void **state)
{
    (void)state;
    static const char in[] = "0123456789ABCDEFGHIJKLMNO";
    av_h1_body b;
    const uint8_t *d;
    size_t dl;
    av__h1_body_init(&b, AV_H1_BODY_LENGTH, 10);
    assert_int_equal(b.done, 0);
    assert_int_equal(av__h1_body_feed(&b, (const uint8_t *)in, 4, &d, &dl), 4);
    assert_int_equal(dl, 4);
    assert_ptr_equal(d, (const uint8_t *)in);
    assert_int_equal(b.done, 0);
    assert_int_equal(av__h1_body_feed(&b, (const uint8_t *)in + 4, 21, &d, &dl), 6);
    assert_int_equal(dl, 6);
    assert_memory_equal(d, "456789", 6);
    assert_int_equal(b.done, 1);
    assert_int_equal(av__h1_body_feed(&b, (const uint8_t *)in + 10, 15, &d, &dl), 0);
    assert_int_equal(dl, 0);

    av__h1_body_init(&b, AV_H1_BODY_LENGTH, 0);
    assert_int_equal(b.done, 1);
    assert_int_equal(av__h1_body_feed(&b, (const uint8_t *)in, 25, &d, &dl), 0);

    av__h1_body_init(&b, AV_H1_BODY_NONE, 0);
    assert_int_equal(b.done, 1);
    assert_int_equal(av__h1_body_feed(&b, (const uint8_t *)in, 25, &d, &dl), 0);
    assert_int_equal(dl, 0);

    av__h1_body_init(&b, AV_H1_BODY_UNTIL_CLOSE, 0);
    assert_int_equal(av__h1_body_feed(&b, (const uint8_t *)in, 25, &d, &dl), 25);
    assert_int_equal(dl, 25);
    assert_ptr_equal(d, (const uint8_t *)in);
    assert_int_equal(b.done, 0);
    assert_int_equal(av__h1_body_feed(&b, (const uint8_t *)in, 0, &d, &dl), 0);

    /* a large Content-Length is counted down without overflow */
    av__h1_body_init(&b, AV_H1_BODY_LENGTH, UINT64_C(999999999999999999));
    assert_int_equal(av__h1_body_feed(&b, (const uint8_t *)in, 25, &d, &dl), 25);
    assert_true(b.remaining == UINT64_C(999999999999999974));
}

/* ---- serializer ---------------------------------------------------------- */

static void serializer_round_trip(void **state)
{
    (void)state;
    static av_h1_request req;
    static av_h1_response resp;
    av_buf o;
    av__buf_init(&o, 4096);
    assert_int_equal(av__h1_write_request_line(&o, S("POST"), S("/v1/chat?x=%20")), AV_OK);
    assert_int_equal(av__h1_write_field_str(&o, "Host", "api.example.com"), AV_OK);
    assert_int_equal(av__h1_write_field(&o, S("Authorization"), S("Bearer sk-test-123")), AV_OK);
    assert_int_equal(av__h1_write_field_str(&o, "X-Empty", ""), AV_OK);
    assert_int_equal(av__h1_write_field_str(&o, "Transfer-Encoding", "chunked"), AV_OK);
    assert_int_equal(av__h1_write_end(&o), AV_OK);
    static const char want[] = "POST /v1/chat?x=%20 HTTP/1.1\r\nHost: api.example.com\r\n"
                               "Authorization: Bearer sk-test-123\r\nX-Empty: \r\n"
                               "Transfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(av__buf_len(&o), sizeof(want) - 1);
    assert_memory_equal(av__buf_head(&o), want, sizeof(want) - 1);
    av_h1_scan scan = {0};
    assert_int_equal(av__h1_parse_request(av__buf_head(&o), av__buf_len(&o), NULL, &scan, &req),
                     (ssize_t)(sizeof(want) - 1));
    view_eq(req.method, req.method_len, "POST");
    view_eq(req.target, req.target_len, "/v1/chat?x=%20");
    assert_int_equal(req.nfields, 4);
    view_eq(req.fields[1].value, req.fields[1].value_len, "Bearer sk-test-123");
    view_eq(req.fields[2].value, req.fields[2].value_len, "");
    assert_int_equal(req.body, AV_H1_BODY_CHUNKED);

    /* chunked body written by the serializer decodes back */
    size_t body_at = av__buf_len(&o);
    assert_int_equal(av__h1_write_chunk_header(&o, 26), AV_OK);
    assert_int_equal(av__buf_append(&o, "abcdefghijklmnopqrstuvwxyz", 26), AV_OK);
    assert_int_equal(av__h1_write_chunk_end(&o), AV_OK);
    assert_int_equal(av__h1_write_chunk_header(&o, 1), AV_OK);
    assert_int_equal(av__buf_append(&o, "!", 1), AV_OK);
    assert_int_equal(av__h1_write_chunk_end(&o), AV_OK);
    assert_int_equal(av__h1_write_last_chunk(&o), AV_OK);
    static const char wbody[] = "1a\r\nabcdefghijklmnopqrstuvwxyz\r\n1\r\n!\r\n0\r\n\r\n";
    assert_int_equal(av__buf_len(&o) - body_at, sizeof(wbody) - 1);
    assert_memory_equal(av__buf_head(&o) + body_at, wbody, sizeof(wbody) - 1);
    av_h1_body b;
    av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
    sink s = {.len = 0};
    assert_int_equal(feed_all(&b, av__buf_head(&o) + body_at, sizeof(wbody) - 1, &s),
                     (ssize_t)(sizeof(wbody) - 1));
    assert_int_equal(b.done, 1);
    assert_int_equal(s.len, 27);
    assert_memory_equal(s.data, "abcdefghijklmnopqrstuvwxyz!", 27);

    /* response */
    av__buf_reset(&o);
    assert_int_equal(av__h1_write_status_line(&o, 404, av__h1_reason(404)), AV_OK);
    assert_int_equal(av__h1_write_field_str(&o, "Content-Length", "0"), AV_OK);
    assert_int_equal(av__h1_write_end(&o), AV_OK);
    static const char wresp[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(av__buf_len(&o), sizeof(wresp) - 1);
    assert_memory_equal(av__buf_head(&o), wresp, sizeof(wresp) - 1);
    av__h1_scan_reset(&scan);
    assert_int_equal(av__h1_parse_response(av__buf_head(&o), av__buf_len(&o), NULL, &scan, 0, 0, &resp),
                     (ssize_t)(sizeof(wresp) - 1));
    assert_int_equal(resp.status, 404);
    view_eq(resp.reason, resp.reason_len, "Not Found");
    assert_int_equal(resp.body, AV_H1_BODY_LENGTH);
    assert_true(resp.content_length == 0);

    av__buf_reset(&o);
    assert_int_equal(av__h1_write_status_line(&o, 299, NULL), AV_OK);
    assert_int_equal(av__buf_len(&o), 15);
    assert_memory_equal(av__buf_head(&o), "HTTP/1.1 299 \r\n", 15);
    av__buf_free(&o);
}

static void serializer_limits_and_invalid(void **state)
{
    (void)state;
    av_buf o;
    /* "GET / HTTP/1.1\r\n" is 16 bytes */
    av__buf_init(&o, 15);
    assert_int_equal(av__h1_write_request_line(&o, S("GET"), S("/")), AV_ERR_LIMIT);
    assert_int_equal(av__buf_len(&o), 0);
    av__buf_free(&o);

    av__buf_init(&o, 30);
    assert_int_equal(av__h1_write_request_line(&o, S("GET"), S("/")), AV_OK);
    /* "Host: example\r\n" is 15 bytes: 14 remain */
    assert_int_equal(av__h1_write_field_str(&o, "Host", "example"), AV_ERR_LIMIT);
    assert_int_equal(av__buf_len(&o), 16);
    assert_int_equal(av__h1_write_field_str(&o, "Host", "exampl"), AV_OK);
    assert_int_equal(av__buf_len(&o), 30);
    assert_int_equal(av__h1_write_end(&o), AV_ERR_LIMIT);
    assert_int_equal(av__buf_len(&o), 30);
    assert_int_equal(av__h1_write_last_chunk(&o), AV_ERR_LIMIT);
    assert_int_equal(av__h1_write_chunk_header(&o, 5), AV_ERR_LIMIT);
    assert_int_equal(av__h1_write_status_line(&o, 200, "OK"), AV_ERR_LIMIT);
    assert_int_equal(av__buf_len(&o), 30);
    av__buf_free(&o);

    av__buf_init(&o, 1024);
    /* header injection and bad names are refused, nothing written */
    assert_int_equal(av__h1_write_field_str(&o, "X-A", "a\r\nX-Injected: 1"), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_field_str(&o, "X-A", "a\nb"), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_field(&o, S("X-A"), "a\0b", 3), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_field_str(&o, "X A", "v"), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_field_str(&o, "X-A:", "v"), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_field_str(&o, "", "v"), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_request_line(&o, S("GET"), S("/a b")), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_request_line(&o, S("GET"), S("/a\r\n")), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_request_line(&o, S("GE T"), S("/")), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_request_line(&o, S("GET"), "", 0), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_status_line(&o, 99, "x"), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_status_line(&o, 1000, "x"), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_status_line(&o, 200, "O\r\nK"), AV_ERR_INVALID);
    assert_int_equal(av__h1_write_chunk_header(&o, 0), AV_ERR_INVALID);
    assert_int_equal(av__buf_len(&o), 0);
    /* obs-text and HTAB are valid in values */
    assert_int_equal(av__h1_write_field_str(&o, "X-U", "caf\xc3\xa9\tx"), AV_OK);
    assert_int_equal(av__h1_write_chunk_header(&o, SIZE_MAX), AV_OK);
    assert_int_equal(av__buf_len(&o), 14 + sizeof(size_t) * 2 + 2);
    av__buf_free(&o);
}

static void reason_phrases(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *r;
    } t[] = {
        {100, "Continue"}, {101, "Switching Protocols"}, {200, "OK"}, {201, "Created"},
        {202, "Accepted"}, {203, "Non-Authoritative Information"}, {204, "No Content"},
        {205, "Reset Content"}, {206, "Partial Content"}, {301, "Moved Permanently"}, {302, "Found"},
        {303, "See Other"}, {304, "Not Modified"}, {307, "Temporary Redirect"},
        {308, "Permanent Redirect"}, {400, "Bad Request"}, {401, "Unauthorized"}, {403, "Forbidden"},
        {404, "Not Found"}, {405, "Method Not Allowed"}, {407, "Proxy Authentication Required"},
        {408, "Request Timeout"}, {411, "Length Required"}, {413, "Content Too Large"},
        {414, "URI Too Long"}, {417, "Expectation Failed"}, {421, "Misdirected Request"},
        {429, "Too Many Requests"}, {431, "Request Header Fields Too Large"},
        {451, "Unavailable For Legal Reasons"}, {500, "Internal Server Error"},
        {501, "Not Implemented"}, {502, "Bad Gateway"}, {503, "Service Unavailable"},
        {504, "Gateway Timeout"}, {505, "HTTP Version Not Supported"}, {0, ""}, {299, ""},
        {999, ""}, {-1, ""},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        assert_string_equal(av__h1_reason(t[i].code), t[i].r);
    /* every code in 100..599 has a phrase the serializer accepts */
    av_buf o;
    av__buf_init(&o, 1 << 16);
    for (int c = 100; c < 600; c++)
        assert_int_equal(av__h1_write_status_line(&o, c, av__h1_reason(c)), AV_OK);
    av__buf_free(&o);
}

/* ---- trailers (want_trailers) --------------------------------------------- */

/* feed_trailers decodes a chunked body that ends in a trailer section:
 * feed until the decoder stops at the section, then parse it from every
 * prefix length (an exact allocation each time, the scan state kept), as
 * a caller accumulating bytes does. Returns the section's parse result;
 * *body_end gets the offset where the section starts. */
static ssize_t feed_trailers(const char *in, size_t len, av_h1_body *b, sink *s, size_t *body_end,
                             av_h1_field *fields, size_t *nfields, const av_h1_limits *lim)
{
    av__h1_body_init(b, AV_H1_BODY_CHUNKED, 0);
    av__h1_body_want_trailers(b);
    ssize_t r = feed_all(b, (const uint8_t *)in, len, s);
    if (r < 0)
        return r;
    *body_end = (size_t)r;
    assert_true(b->at_trailers);
    assert_false(b->done);
    /* the decoder consumes nothing while the section is pending */
    const uint8_t *d;
    size_t dl;
    assert_int_equal(av__h1_body_feed(b, (const uint8_t *)in + r, len - (size_t)r, &d, &dl), 0);
    av_h1_scan scan = {0};
    ssize_t tr = AV_H1_INCOMPLETE;
    for (size_t n = 0; n <= len - (size_t)r && tr == AV_H1_INCOMPLETE; n++) {
        uint8_t *p = dup_exact(in + r, n);
        tr = av__h1_body_trailers(b, p, n, lim, &scan, fields, nfields);
        if (tr > 0) {
            /* views point into the buffer: check them before freeing it */
            for (size_t i = 0; i < *nfields; i++) {
                assert_true((const uint8_t *)fields[i].name >= p &&
                            (const uint8_t *)fields[i].value + fields[i].value_len <= p + n);
            }
            /* keep copies for the caller's checks */
            static char keep[1 << 16];
            size_t o = 0;
            for (size_t i = 0; i < *nfields; i++) {
                memcpy(keep + o, fields[i].name, fields[i].name_len);
                fields[i].name = keep + o;
                o += fields[i].name_len;
                memcpy(keep + o, fields[i].value, fields[i].value_len);
                fields[i].value = keep + o;
                o += fields[i].value_len;
            }
        }
        free(p);
    }
    return tr;
}

static void trailers_parsed(void **state)
{
    (void)state;
    av_h1_body b;
    sink s = {.len = 0};
    av_h1_field f[AV_H1_MAX_FIELDS_CAP];
    size_t nf = 99, at = 0;
    static const char in[] = "5\r\nhello\r\n0\r\nGrpc-Status: 0\r\nX-Empty:\r\nGrpc-Message:  a b  \r\n\r\n"
                             "GET / HTTP/1.1\r\n";
    ssize_t r = feed_trailers(in, sizeof(in) - 1 - 16, &b, &s, &at, f, &nf, NULL);
    assert_int_equal(at, 13);
    assert_int_equal(r, (ssize_t)(sizeof(in) - 1 - 16 - 13));
    assert_true(b.done);
    assert_false(b.at_trailers);
    assert_int_equal(s.len, 5);
    assert_int_equal(nf, 3);
    assert_true(av__h1_name_eq(&f[0], "grpc-status"));
    assert_int_equal(f[0].value_len, 1);
    assert_int_equal(f[1].value_len, 0);
    assert_int_equal(f[2].value_len, 3);
    assert_memory_equal(f[2].value, "a b", 3);

    /* an empty section is just the final CRLF */
    static const char empty[] = "0\r\n\r\n";
    r = feed_trailers(empty, sizeof(empty) - 1, &b, &s, &at, f, &nf, NULL);
    assert_int_equal(r, 2);
    assert_int_equal(nf, 0);
    assert_true(b.done);

    /* without want_trailers the section is validated and discarded */
    av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
    s.len = 0;
    assert_int_equal(feed_all(&b, (const uint8_t *)in, sizeof(in) - 1 - 16, &s), (ssize_t)(sizeof(in) - 1 - 16));
    assert_true(b.done);
    assert_false(b.at_trailers);
}

static void trailers_malformed_and_limits(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "0\r\nX-A : 1\r\n\r\n",   /* whitespace before ':' */
        "0\r\n folded\r\n\r\n",   /* obs-fold */
        "0\r\nX-A: 1\r\n folded\r\n\r\n",
        "0\r\nX-A: a\x01b\r\n\r\n", /* control byte */
        "0\r\nX-A: a\nb\r\n\r\n",  /* bare LF */
        "0\r\nX-A: a\rb\r\n\r\n",  /* bare CR */
        "0\r\nX A: 1\r\n\r\n",     /* not a token */
        "0\r\n: 1\r\n\r\n",        /* empty name */
        "0\r\nX-A\r\n\r\n",        /* no colon */
        "0\r\n\rX",                /* CR without LF */
        "0\r\nX-A: \x7f\r\n\r\n",  /* DEL */
    };
    av_h1_body b;
    sink s = {.len = 0};
    av_h1_field f[AV_H1_MAX_FIELDS_CAP];
    size_t nf = 0, at = 0;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ssize_t r = feed_trailers(bad[i], strlen(bad[i]), &b, &s, &at, f, &nf, NULL);
        assert_int_equal(r, AV_H1_ERR_SYNTAX);
        assert_int_equal(nf, 0);
        /* sticky */
        const uint8_t *d;
        size_t dl;
        assert_int_equal(av__h1_body_feed(&b, (const uint8_t *)"0\r\n\r\n", 5, &d, &dl), AV_H1_ERR_SYNTAX);
        assert_int_equal(av__h1_body_trailers(&b, (const uint8_t *)"\r\n", 2, NULL, &(av_h1_scan){0}, f, &nf),
                         AV_H1_ERR_SYNTAX);
    }

    /* field count: at the limit, and one over */
    av_h1_limits lim = {1024, 3};
    for (int extra = 0; extra <= 1; extra++) {
        char in[256];
        size_t o = (size_t)snprintf(in, sizeof(in), "0\r\n");
        for (int i = 0; i < 3 + extra; i++)
            o += (size_t)snprintf(in + o, sizeof(in) - o, "T%d: v\r\n", i);
        o += (size_t)snprintf(in + o, sizeof(in) - o, "\r\n");
        ssize_t r = feed_trailers(in, o, &b, &s, &at, f, &nf, &lim);
        assert_int_equal(r, extra ? AV_H1_ERR_TOO_LARGE : (ssize_t)(o - 3));
    }
    /* size: a section of exactly max_head bytes, and one more */
    for (int extra = 0; extra <= 1; extra++) {
        av_h1_limits lim2 = {200, 100};
        char in[512];
        size_t t = 200 + (size_t)extra; /* section bytes including the final CRLF */
        memcpy(in, "0\r\nT: ", 6);
        memset(in + 6, 'x', t - 7);
        memcpy(in + 6 + t - 7, "\r\n\r\n", 4);
        size_t len = 3 + t;
        ssize_t r = feed_trailers(in, len, &b, &s, &at, f, &nf, &lim2);
        assert_int_equal(r, extra ? AV_H1_ERR_TOO_LARGE : (ssize_t)t);
    }
    /* no terminator yet: incomplete, then too large once past the limit */
    {
        av_h1_limits lim3 = {64, 100};
        av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
        av__h1_body_want_trailers(&b);
        assert_int_equal(feed_all(&b, (const uint8_t *)"0\r\n", 3, &s), 3);
        char big[100];
        memcpy(big, "X: ", 3);
        memset(big + 3, 'y', sizeof(big) - 3);
        av_h1_scan scan = {0};
        assert_int_equal(av__h1_body_trailers(&b, (const uint8_t *)big, 60, &lim3, &scan, f, &nf),
                         AV_H1_INCOMPLETE);
        assert_int_equal(av__h1_body_trailers(&b, (const uint8_t *)big, 100, &lim3, &scan, f, &nf),
                         AV_H1_ERR_TOO_LARGE);
    }
    /* called when no section is pending */
    av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
    av_h1_scan scan = {0};
    assert_int_equal(av__h1_body_trailers(&b, (const uint8_t *)"\r\n", 2, NULL, &scan, f, &nf), AV_H1_ERR_SYNTAX);
}

static void trailers_allowed_te_copy_write(void **state)
{
    (void)state;
    static const char *const refused[] = {
        "Content-Length", "transfer-encoding", "Trailer", "content-encoding", "Content-Type",
        "content-range", "HOST", "connection", "keep-alive", "proxy-connection", "TE", "upgrade",
        "Authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate", "Cookie",
        "Set-Cookie", "expect", "max-forwards", "range", "if-match", "if-none-match",
        "if-modified-since", "if-unmodified-since", "if-range", "cache-control", "pragma", "age",
        "date", "expires", "location", "retry-after", "vary", "http2-settings", ":status",
        "X-Agentvault-Token", "x-agentvault-error", "",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        av_h1_field f = {refused[i], strlen(refused[i]), "v", 1};
        assert_int_equal(av__h1_trailer_allowed(&f), 0);
    }
    static const char *const allowed[] = {"grpc-status", "Grpc-Message", "grpc-status-details-bin",
                                          "x-checksum", "Server-Timing", "x-agentvault", "content"};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
        av_h1_field f = {allowed[i], strlen(allowed[i]), "v", 1};
        assert_int_equal(av__h1_trailer_allowed(&f), 1);
    }

    av_h1_field te[] = {{"Accept", 6, "*/*", 3}, {"TE", 2, "gzip, Trailers , x", 18}};
    assert_int_equal(av__h1_te_trailers(te, 2), 1);
    te[1].value = "gzip, trailersx";
    te[1].value_len = 15;
    assert_int_equal(av__h1_te_trailers(te, 2), 0);
    te[1].value = "trailers";
    te[1].value_len = 8;
    assert_int_equal(av__h1_te_trailers(te, 1), 0);
    assert_int_equal(av__h1_te_trailers(te, 2), 1);

    /* copies outlive their source */
    char name[] = "grpc-status", value[] = "13";
    av_h1_field src[] = {{name, 11, value, 2}, {"x-e", 3, "", 0}};
    av_h1_fields l = {0};
    assert_int_equal(av__h1_fields_set(&l, src, 2), AV_OK);
    memset(name, 'z', sizeof(name) - 1);
    memset(value, 'z', sizeof(value) - 1);
    assert_int_equal(l.n, 2);
    assert_memory_equal(l.f[0].name, "grpc-status", 11);
    assert_memory_equal(l.f[0].value, "13", 2);
    assert_int_equal(l.f[1].value_len, 0);
    assert_int_equal(av__h1_fields_set(&l, src, 0), AV_OK); /* replaces (and frees) */
    assert_int_equal(l.n, 0);
    assert_null(l.f);
    av__h1_fields_free(&l);
    av__h1_fields_free(&l); /* twice is fine */

    /* serializer: the whole last chunk with its section, or nothing */
    av_buf o;
    av__buf_init(&o, 64);
    av_h1_field out[] = {{"Grpc-Status", 11, "0", 1}, {"X-M", 3, "a b", 3}};
    assert_int_equal(av__h1_write_last_chunk_trailers(&o, out, 2), AV_OK);
    static const char want[] = "0\r\nGrpc-Status: 0\r\nX-M: a b\r\n\r\n";
    assert_int_equal(o.len, sizeof(want) - 1);
    assert_memory_equal(av__buf_head(&o), want, o.len);
    size_t before = o.len;
    av_h1_field badv[] = {{"X-A", 3, "a\r\nb", 4}};
    assert_int_equal(av__h1_write_last_chunk_trailers(&o, badv, 1), AV_ERR_INVALID);
    assert_int_equal(o.len, before);
    av_h1_field badn[] = {{"X A", 3, "v", 1}};
    assert_int_equal(av__h1_write_last_chunk_trailers(&o, badn, 1), AV_ERR_INVALID);
    assert_int_equal(o.len, before);
    av_h1_field longf[] = {{"X-Long", 6, "0123456789012345678901234567890123456789", 40}};
    assert_int_equal(av__h1_write_last_chunk_trailers(&o, longf, 1), AV_ERR_LIMIT);
    assert_int_equal(o.len, before);
    av__buf_free(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_requests),
        cmocka_unit_test(valid_responses),
        cmocka_unit_test(strictness_corpus),
        cmocka_unit_test(field_count_limits),
        cmocka_unit_test(head_size_limits),
        cmocka_unit_test(empty_and_incomplete),
        cmocka_unit_test(field_helpers),
        cmocka_unit_test(chunked_whole_and_next),
        cmocka_unit_test(chunked_every_split),
        cmocka_unit_test(chunked_one_run_per_call),
        cmocka_unit_test(chunked_malformed),
        cmocka_unit_test(chunked_limits),
        cmocka_unit_test(length_until_close_none),
        cmocka_unit_test(serializer_round_trip),
        cmocka_unit_test(serializer_limits_and_invalid),
        cmocka_unit_test(reason_phrases),
        cmocka_unit_test(trailers_parsed),
        cmocka_unit_test(trailers_malformed_and_limits),
        cmocka_unit_test(trailers_allowed_te_copy_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
