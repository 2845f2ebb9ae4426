/* test_h2.c - HTTP/2 sessions (av_h2) paired in memory and under attack.
 *
 * Functional tests pair a client av_h2 with a server av_h2 and shuttle the
 * bytes through small bounded buffers. Hostile tests talk to a server
 * session with raw frames built here (header blocks by nghttp2's HPACK
 * deflater) and decode what it sends back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nghttp2/nghttp2.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_h2.h"
#include "av_mem.h"

#define MAXS 1600
#define BODY_MAX (512 * 1024)

/* ---- event recording ---------------------------------------------------- */

typedef struct rec_stream {
    int32_t id;
    int heads, trailers, ended, closed;
    uint32_t close_code;
    int status;
    char method[16], path[64], protocol[32];
    int64_t content_length;
    size_t nfields;
    char first_trailer[64];
    uint8_t *body;
    size_t body_len;
} rec_stream;

typedef struct peer {
    av_h2 *h;
    rec_stream st[MAXS];
    size_t nst;
    int settings, limits;
    int auto_consume; /* call av__h2_consume from on_data */
    int fail_head;
} peer;

/* rec finds or adds the record of a stream. */
static rec_stream *rec(peer *p, int32_t id)
{
    for (size_t i = 0; i < p->nst; i++)
        if (p->st[i].id == id)
            return &p->st[i];
    assert_true(p->nst < MAXS);
    rec_stream *r = &p->st[p->nst++];
    memset(r, 0, sizeof(*r));
    r->id = id;
    r->content_length = -2;
    return r;
}

/* copy_view stores a view as a C string (truncated). */
static void copy_view(char *dst, size_t cap, const char *v, size_t n)
{
    if (!v) {
        dst[0] = 0;
        return;
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, v, n);
    dst[n] = 0;
}

static int on_head(void *ud, int32_t id, const av_h2_head *h)
{
    peer *p = ud;
    rec_stream *r = rec(p, id);
    if (h->trailers) {
        r->trailers++;
        if (h->nfields)
            copy_view(r->first_trailer, sizeof(r->first_trailer), h->fields[0].name,
                      h->fields[0].name_len);
    } else {
        r->heads++;
        r->status = h->status;
        copy_view(r->method, sizeof(r->method), h->method, h->method_len);
        copy_view(r->path, sizeof(r->path), h->path, h->path_len);
        copy_view(r->protocol, sizeof(r->protocol), h->protocol, h->protocol_len);
        r->content_length = h->content_length;
        r->nfields = h->nfields;
    }
    return p->fail_head ? -1 : 0;
}

static int on_data(void *ud, int32_t id, const uint8_t *d, size_t n)
{
    peer *p = ud;
    rec_stream *r = rec(p, id);
    if (!r->body)
        r->body = malloc(BODY_MAX);
    assert_non_null(r->body);
    assert_true(r->body_len + n <= BODY_MAX);
    memcpy(r->body + r->body_len, d, n);
    r->body_len += n;
    if (p->auto_consume)
        assert_int_equal(av__h2_consume(p->h, id, n), 0);
    return 0;
}

static void on_end(void *ud, int32_t id)
{
    peer *p = ud;
    rec(p, id)->ended++;
}

static void on_close(void *ud, int32_t id, uint32_t code)
{
    peer *p = ud;
    rec_stream *r = rec(p, id);
    r->closed++;
    r->close_code = code;
}

static void on_settings(void *ud)
{
    ((peer *)ud)->settings++;
}

static void on_limit(void *ud, int32_t id, const char *what)
{
    (void)id;
    (void)what;
    ((peer *)ud)->limits++;
}

static const av_h2_callbacks CBS = {on_head, on_data, on_end, on_close, on_settings, on_limit};

/* peer_new creates a session for |p|. */
static void peer_new(peer *p, int role)
{
    memset(p, 0, sizeof(*p));
    p->auto_consume = 1;
    assert_int_equal(av__h2_new(&p->h, role, &CBS, p), 0);
}

/* peer_free releases |p|. */
static void peer_free(peer *p)
{
    av__h2_free(p->h);
    for (size_t i = 0; i < p->nst; i++)
        free(p->st[i].body);
}

/* move produces from |a| into a small buffer and feeds |b|; returns bytes
 * moved. */
static size_t move(peer *a, peer *b, size_t bufmax)
{
    av_buf out;
    size_t total = 0;
    av__buf_init(&out, bufmax);
    for (;;) {
        int rv = av__h2_produce(a->h, &out);
        assert_true(rv >= 0);
        if (av__buf_len(&out) == 0)
            break;
        assert_true(av__buf_len(&out) <= bufmax);
        ssize_t n = av__h2_feed(b->h, av__buf_head(&out), av__buf_len(&out));
        assert_int_equal(n, (ssize_t)av__buf_len(&out));
        total += av__buf_len(&out);
        av__buf_consume(&out, av__buf_len(&out));
    }
    av__buf_free(&out);
    return total;
}

/* pump shuttles both ways until quiet. */
static void pump(peer *c, peer *s, size_t bufmax)
{
    for (int i = 0; i < 100000; i++) {
        size_t n = move(c, s, bufmax) + move(s, c, bufmax);
        if (n == 0)
            return;
    }
    fail_msg("pump did not settle");
}

/* head helpers */
static av_h2_head req_head(const char *method, const char *path)
{
    av_h2_head h;
    memset(&h, 0, sizeof(h));
    h.method = method;
    h.method_len = strlen(method);
    h.scheme = "https";
    h.scheme_len = 5;
    h.authority = "example.com";
    h.authority_len = 11;
    h.path = path;
    h.path_len = strlen(path);
    h.content_length = -1;
    return h;
}

static void add_field(av_h2_head *h, const char *n, const char *v)
{
    h->fields[h->nfields].name = n;
    h->fields[h->nfields].name_len = strlen(n);
    h->fields[h->nfields].value = v;
    h->fields[h->nfields].value_len = strlen(v);
    h->nfields++;
}

static av_h2_head resp_head(int status)
{
    av_h2_head h;
    memset(&h, 0, sizeof(h));
    h.status = status;
    h.content_length = -1;
    return h;
}

/* send_all queues |len| bytes, pumping when the queue is full. */
static void send_all(peer *from, peer *c, peer *s, int32_t id, const uint8_t *d, size_t len,
                     size_t bufmax)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = av__h2_send_data(from->h, id, d + off, len - off);
        assert_true(n >= 0);
        off += (size_t)n;
        if (n == 0)
            pump(c, s, bufmax);
    }
}

static uint8_t *pattern(size_t n)
{
    uint8_t *b = malloc(n);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(i * 31 + 7);
    return b;
}

/* ---- functional tests --------------------------------------------------- */

static void get_request(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    pump(&c, &s, 512);
    assert_true(c.settings >= 1);
    av_h2_head h = req_head("GET", "/hello");
    add_field(&h, "Accept", "*/*");
    add_field(&h, "Connection", "keep-alive"); /* dropped on the way out */
    int32_t id = 0;
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &id), 0);
    assert_int_equal(id, 1);
    pump(&c, &s, 512);
    rec_stream *r = rec(&s, 1);
    assert_int_equal(r->heads, 1);
    assert_string_equal(r->method, "GET");
    assert_string_equal(r->path, "/hello");
    assert_int_equal(r->nfields, 1); /* accept, lower-cased */
    assert_int_equal(r->ended, 1);
    assert_int_equal(r->content_length, -1);

    av_h2_head rh = resp_head(200);
    add_field(&rh, "content-length", "5");
    assert_int_equal(av__h2_submit_response(s.h, 1, &rh, 0), 0);
    assert_int_equal(av__h2_send_data(s.h, 1, (const uint8_t *)"hello", 5), 5);
    assert_int_equal(av__h2_end_stream(s.h, 1), 0);
    pump(&c, &s, 512);
    rec_stream *cr = rec(&c, 1);
    assert_int_equal(cr->status, 200);
    assert_int_equal(cr->content_length, 5);
    assert_int_equal(cr->body_len, 5);
    assert_memory_equal(cr->body, "hello", 5);
    assert_int_equal(cr->ended, 1);
    assert_int_equal(cr->closed, 1);
    assert_int_equal(cr->close_code, 0);
    assert_int_equal(rec(&s, 1)->closed, 1);
    assert_int_equal(av__h2_send_data(s.h, 1, (const uint8_t *)"x", 1), AV_ERR_NOTFOUND);
    assert_int_equal(av__h2_consume(s.h, 1, 10), 0);
    peer_free(&c);
    peer_free(&s);
}

/* post_body sends a body both ways, with and without content-length. */
static void post_one(int with_cl, size_t len)
{
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    uint8_t *body = pattern(len);
    char cl[32];
    snprintf(cl, sizeof(cl), "%zu", len);
    av_h2_head h = req_head("POST", "/upload");
    if (with_cl)
        add_field(&h, "content-length", cl);
    int32_t id;
    assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id), 0);
    send_all(&c, &c, &s, id, body, len, 700);
    assert_int_equal(av__h2_end_stream(c.h, id), 0);
    pump(&c, &s, 700);
    rec_stream *r = rec(&s, id);
    assert_int_equal(r->heads, 1);
    assert_int_equal(r->content_length, with_cl ? (int64_t)len : -1);
    assert_int_equal(r->body_len, len);
    assert_memory_equal(r->body, body, len);
    assert_int_equal(r->ended, 1);

    av_h2_head rh = resp_head(201);
    if (with_cl)
        add_field(&rh, "content-length", cl);
    assert_int_equal(av__h2_submit_response(s.h, id, &rh, 0), 0);
    send_all(&s, &c, &s, id, body, len, 700);
    assert_int_equal(av__h2_end_stream(s.h, id), 0);
    pump(&c, &s, 700);
    rec_stream *cr = rec(&c, id);
    assert_int_equal(cr->status, 201);
    assert_int_equal(cr->body_len, len);
    assert_memory_equal(cr->body, body, len);
    assert_int_equal(cr->ended, 1);
    assert_int_equal(cr->closed, 1);
    assert_int_equal(cr->close_code, 0);
    free(body);
    peer_free(&c);
    peer_free(&s);
}

static void post_body(void **state)
{
    (void)state;
    post_one(1, 1000);
    post_one(0, 1000);
    post_one(1, 200000); /* > windows and > stream queue */
    post_one(0, 200000);
}

static void concurrent_streams(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    pump(&c, &s, 4096);
    assert_int_equal(av__h2_peer_connect_protocol(c.h), 1);
    int32_t ids[100];
    for (int i = 0; i < 100; i++) {
        assert_true(av__h2_can_submit(c.h));
        av_h2_head h = req_head("GET", "/x");
        assert_int_equal(av__h2_submit_request(c.h, &h, 1, &ids[i]), 0);
    }
    assert_int_equal(av__h2_can_submit(c.h), 0);
    av_h2_head h = req_head("GET", "/x");
    int32_t extra;
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &extra), AV_ERR_LIMIT);
    pump(&c, &s, 4096);
    assert_int_equal(s.nst, 100);
    for (int i = 0; i < 100; i++) {
        av_h2_head rh = resp_head(200);
        assert_int_equal(av__h2_submit_response(s.h, ids[i], &rh, 0), 0);
        assert_int_equal(av__h2_send_data(s.h, ids[i], (const uint8_t *)"ok", 2), 2);
        assert_int_equal(av__h2_end_stream(s.h, ids[i]), 0);
    }
    pump(&c, &s, 4096);
    for (int i = 0; i < 100; i++) {
        rec_stream *r = rec(&c, ids[i]);
        assert_int_equal(r->closed, 1);
        assert_int_equal(r->body_len, 2);
    }
    assert_true(av__h2_can_submit(c.h));
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &extra), 0);
    pump(&c, &s, 4096);
    assert_int_equal(rec(&s, extra)->heads, 1);
    peer_free(&c);
    peer_free(&s);
}

static void flow_control(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    s.auto_consume = 0;
    av_h2_head h = req_head("POST", "/slow");
    int32_t id;
    assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id), 0);
    size_t len = 60000;
    uint8_t *body = pattern(AV_H2_STREAM_QUEUE);
    /* Fill the queue (64 KiB) and more than the 65535-byte window. */
    assert_int_equal(av__h2_send_data(c.h, id, body, AV_H2_STREAM_QUEUE), AV_H2_STREAM_QUEUE);
    pump(&c, &s, 1024);
    rec_stream *r = rec(&s, id);
    assert_int_equal(r->body_len, 65535); /* stalled at the initial window */
    size_t room = av__h2_stream_room(c.h, id);
    assert_int_equal(room, 65535);
    assert_int_equal(av__h2_send_data(c.h, id, body, len), (ssize_t)len);
    pump(&c, &s, 1024);
    assert_int_equal(r->body_len, 65535);
    /* Consuming opens the window; the rest flows. */
    assert_int_equal(av__h2_consume(s.h, id, r->body_len), 0);
    pump(&c, &s, 1024);
    assert_int_equal(r->body_len, AV_H2_STREAM_QUEUE + len);
    /* Other streams are not starved by the connection window, once consumed. */
    assert_int_equal(av__h2_consume(s.h, id, r->body_len - 65535), 0);
    int32_t id2;
    assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id2), 0);
    assert_int_equal(av__h2_send_data(c.h, id2, body, 1000), 1000);
    assert_int_equal(av__h2_end_stream(c.h, id2), 0);
    pump(&c, &s, 1024);
    assert_int_equal(rec(&s, id2)->body_len, 1000);
    free(body);
    peer_free(&c);
    peer_free(&s);
}

/* unconsumed bytes of a reset stream go back to the connection window. */
static void reset_gives_window_back(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    s.auto_consume = 0;
    uint8_t *body = pattern(65535);
    av_h2_head h = req_head("POST", "/a");
    int32_t id;
    assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id), 0);
    assert_int_equal(av__h2_send_data(c.h, id, body, 65535), 65535);
    pump(&c, &s, 2048);
    assert_int_equal(rec(&s, id)->body_len, 65535);
    assert_int_equal(av__h2_reset_stream(s.h, id, NGHTTP2_CANCEL), 0);
    pump(&c, &s, 2048);
    assert_int_equal(rec(&c, id)->closed, 1);
    assert_int_equal(rec(&c, id)->close_code, NGHTTP2_CANCEL);
    int32_t id2;
    assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id2), 0);
    assert_int_equal(av__h2_send_data(c.h, id2, body, 30000), 30000);
    assert_int_equal(av__h2_end_stream(c.h, id2), 0);
    pump(&c, &s, 2048);
    assert_int_equal(rec(&s, id2)->body_len, 30000);
    assert_int_equal(rec(&s, id2)->ended, 1);
    free(body);
    peer_free(&c);
    peer_free(&s);
}

static void tiny_output_buffer(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    size_t len = 300000;
    uint8_t *body = pattern(len);
    av_h2_head h = req_head("GET", "/big");
    int32_t id;
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &id), 0);
    pump(&c, &s, 7);
    av_h2_head rh = resp_head(200);
    assert_int_equal(av__h2_submit_response(s.h, id, &rh, 0), 0);
    send_all(&s, &c, &s, id, body, len, 7);
    assert_int_equal(av__h2_end_stream(s.h, id), 0);
    pump(&c, &s, 7);
    rec_stream *r = rec(&c, id);
    assert_int_equal(r->body_len, len);
    assert_memory_equal(r->body, body, len);
    assert_int_equal(r->ended, 1);
    free(body);
    peer_free(&c);
    peer_free(&s);
}

static void trailers(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    av_h2_head h = req_head("POST", "/grpc");
    add_field(&h, "te", "trailers");
    int32_t id;
    assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id), 0);
    assert_int_equal(av__h2_send_data(c.h, id, (const uint8_t *)"req", 3), 3);
    av_h1_field tf = {"X-Req-Trailer", 13, "1", 1};
    assert_int_equal(av__h2_submit_trailers(c.h, id, &tf, 1), 0);
    assert_int_equal(av__h2_submit_trailers(c.h, id, &tf, 1), AV_ERR_STATE);
    pump(&c, &s, 300);
    rec_stream *r = rec(&s, id);
    assert_int_equal(r->nfields, 1); /* te: trailers kept */
    assert_int_equal(r->body_len, 3);
    assert_int_equal(r->trailers, 1);
    assert_string_equal(r->first_trailer, "x-req-trailer");
    assert_int_equal(r->ended, 1);

    av_h2_head rh = resp_head(200);
    assert_int_equal(av__h2_submit_response(s.h, id, &rh, 0), 0);
    pump(&c, &s, 300); /* deferred: head only */
    assert_int_equal(rec(&c, id)->heads, 1);
    assert_int_equal(rec(&c, id)->ended, 0);
    assert_int_equal(av__h2_send_data(s.h, id, (const uint8_t *)"resp", 4), 4);
    av_h1_field st = {"grpc-status", 11, "0", 1};
    assert_int_equal(av__h2_submit_trailers(s.h, id, &st, 1), 0);
    pump(&c, &s, 300);
    rec_stream *cr = rec(&c, id);
    assert_int_equal(cr->body_len, 4);
    assert_int_equal(cr->trailers, 1);
    assert_string_equal(cr->first_trailer, "grpc-status");
    assert_int_equal(cr->ended, 1);
    assert_int_equal(cr->closed, 1);
    assert_int_equal(cr->close_code, 0);
    peer_free(&c);
    peer_free(&s);
}

/* Trailers are held to the limits and checks of heads: more than
 * AV_H2_MAX_FIELDS fields reset the stream (server: PROTOCOL_ERROR; client:
 * INTERNAL_ERROR) and reach no callback; a block over the size limit is not
 * even sent (the sender resets the stream and reports the limit);
 * pseudo-headers and CR/LF/NUL are refused when sending. */
static void trailers_limits_and_validation(void **state)
{
    (void)state;
    static av_h1_field many[AV_H2_MAX_FIELDS + 1];
    static char names[AV_H2_MAX_FIELDS + 1][16];
    for (size_t i = 0; i < AV_H2_MAX_FIELDS + 1; i++) {
        snprintf(names[i], sizeof(names[i]), "x-t%zu", i);
        many[i] = (av_h1_field){names[i], strlen(names[i]), "v", 1};
    }
    static char bigv[AV_H2_MAX_HEADER_BYTES];
    memset(bigv, 'b', sizeof(bigv));
    av_h1_field big = {"x-big", 5, bigv, sizeof(bigv)};

    /* which: 0 too many fields from the client, 2 from the server; 3 a
     * block too large to send at all (the sender resets the stream) */
    for (int which = 0; which < 4; which += which == 0 ? 2 : 1) {
        peer c, s;
        peer_new(&c, AV_H2_CLIENT);
        peer_new(&s, AV_H2_SERVER);
        int32_t id;
        av_h2_head h = req_head("POST", "/grpc");
        assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id), 0);
        int from_client = which < 2;
        size_t n = which % 2 == 0 ? AV_H2_MAX_FIELDS + 1 : 1;
        const av_h1_field *f = which % 2 == 0 ? many : &big;
        if (from_client) {
            assert_int_equal(av__h2_submit_trailers(c.h, id, f, n), 0);
            pump(&c, &s, 300);
            assert_int_equal(rec(&s, id)->heads, 1);
            assert_int_equal(rec(&s, id)->trailers, 0);
            assert_true(s.limits >= 1);
            assert_int_equal(rec(&c, id)->closed, 1);
            assert_int_equal(rec(&c, id)->close_code, 1 /* PROTOCOL_ERROR */);
        } else {
            assert_int_equal(av__h2_end_stream(c.h, id), 0);
            pump(&c, &s, 300);
            av_h2_head rh = resp_head(200);
            assert_int_equal(av__h2_submit_response(s.h, id, &rh, 0), 0);
            assert_int_equal(av__h2_send_data(s.h, id, (const uint8_t *)"x", 1), 1);
            assert_int_equal(av__h2_submit_trailers(s.h, id, f, n), 0);
            pump(&c, &s, 300);
            rec_stream *cr = rec(&c, id);
            assert_int_equal(cr->heads, 1);
            assert_int_equal(cr->trailers, 0);
            assert_true((which == 3 ? s.limits : c.limits) >= 1);
            assert_int_equal(cr->closed, 1);
            assert_int_equal(cr->close_code, 2 /* INTERNAL_ERROR */);
        }
        peer_free(&c);
        peer_free(&s);
    }

    /* at the limit: delivered */
    {
        peer c, s;
        peer_new(&c, AV_H2_CLIENT);
        peer_new(&s, AV_H2_SERVER);
        int32_t id;
        av_h2_head h = req_head("POST", "/grpc");
        assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id), 0);
        assert_int_equal(av__h2_submit_trailers(c.h, id, many, AV_H2_MAX_FIELDS), 0);
        pump(&c, &s, 300);
        assert_int_equal(rec(&s, id)->trailers, 1);
        assert_int_equal(rec(&s, id)->ended, 1);
        assert_int_equal(s.limits, 0);
        peer_free(&c);
        peer_free(&s);
    }

    /* sending: pseudo-headers and CR/LF/NUL are refused, nothing queued;
     * connection-specific fields are dropped */
    {
        peer c, s;
        peer_new(&c, AV_H2_CLIENT);
        peer_new(&s, AV_H2_SERVER);
        int32_t id;
        av_h2_head h = req_head("POST", "/grpc");
        assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id), 0);
        av_h1_field pseudo = {":status", 7, "200", 3};
        assert_int_equal(av__h2_submit_trailers(c.h, id, &pseudo, 1), AV_ERR_INVALID);
        av_h1_field crlf = {"x-a", 3, "a\r\nb", 4};
        assert_int_equal(av__h2_submit_trailers(c.h, id, &crlf, 1), AV_ERR_INVALID);
        av_h1_field nul = {"x-a", 3, "a\0b", 3};
        assert_int_equal(av__h2_submit_trailers(c.h, id, &nul, 1), AV_ERR_INVALID);
        av_h1_field conn[] = {{"Connection", 10, "close", 5}, {"Transfer-Encoding", 17, "chunked", 7},
                              {"Grpc-Status", 11, "0", 1}};
        assert_int_equal(av__h2_submit_trailers(c.h, id, conn, 3), 0);
        pump(&c, &s, 300);
        rec_stream *r = rec(&s, id);
        assert_int_equal(r->trailers, 1);
        assert_string_equal(r->first_trailer, "grpc-status"); /* lower-cased, the others dropped */
        assert_int_equal(r->ended, 1);
        peer_free(&c);
        peer_free(&s);
    }
}

static void informational_and_head_errors(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    av_h2_head h = req_head("POST", "/e");
    add_field(&h, "expect", "100-continue");
    int32_t id;
    assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id), 0);
    pump(&c, &s, 300);
    av_h2_head c100 = resp_head(100);
    assert_int_equal(av__h2_submit_response(s.h, id, &c100, 0), 0);
    pump(&c, &s, 300);
    assert_int_equal(rec(&c, id)->status, 100);
    av_h2_head bad = resp_head(200);
    add_field(&bad, "x-bad", "a\r\nb");
    assert_int_equal(av__h2_submit_response(s.h, id, &bad, 1), AV_ERR_INVALID);
    av_h2_head ok = resp_head(204);
    assert_int_equal(av__h2_submit_response(s.h, id, &ok, 1), 0);
    assert_int_equal(av__h2_submit_response(s.h, id, &ok, 1), AV_ERR_STATE);
    pump(&c, &s, 300);
    assert_int_equal(rec(&c, id)->heads, 2);
    assert_int_equal(rec(&c, id)->status, 204);
    /* the server never got END_STREAM from the client: stream stays open
     * on its side until the client ends it. */
    assert_int_equal(av__h2_end_stream(c.h, id), 0);
    pump(&c, &s, 300);
    assert_int_equal(rec(&c, id)->closed, 1);
    /* on_head failure resets with INTERNAL_ERROR */
    s.fail_head = 1;
    av_h2_head g = req_head("GET", "/f");
    assert_int_equal(av__h2_submit_request(c.h, &g, 1, &id), 0);
    pump(&c, &s, 300);
    assert_int_equal(rec(&c, id)->closed, 1);
    assert_int_equal(rec(&c, id)->close_code, NGHTTP2_INTERNAL_ERROR);
    peer_free(&c);
    peer_free(&s);
}

static void graceful_shutdown(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    int32_t ids[3];
    for (int i = 0; i < 3; i++) {
        av_h2_head h = req_head("GET", "/slow");
        assert_int_equal(av__h2_submit_request(c.h, &h, 1, &ids[i]), 0);
    }
    pump(&c, &s, 1024);
    assert_int_equal(av__h2_shutdown(s.h), 0);
    pump(&c, &s, 1024);
    assert_int_equal(av__h2_goaway_last_stream(c.h), 5);
    assert_int_equal(av__h2_can_submit(c.h), 0);
    av_h2_head h = req_head("GET", "/late");
    int32_t late;
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &late), AV_ERR_STATE);
    assert_true(av__h2_alive(s.h));
    for (int i = 0; i < 3; i++) {
        av_h2_head rh = resp_head(200);
        assert_int_equal(av__h2_submit_response(s.h, ids[i], &rh, 0), 0);
        assert_int_equal(av__h2_send_data(s.h, ids[i], (const uint8_t *)"done", 4), 4);
        assert_int_equal(av__h2_end_stream(s.h, ids[i]), 0);
    }
    pump(&c, &s, 1024);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rec(&c, ids[i])->body_len, 4);
        assert_int_equal(rec(&c, ids[i])->close_code, 0);
    }
    assert_int_equal(av__h2_alive(s.h), 0);
    assert_int_equal(av__h2_alive(c.h), 0);
    peer_free(&c);
    peer_free(&s);
}

static void goaway_refuses_unprocessed(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    pump(&c, &s, 1024);
    av_h2_head h = req_head("GET", "/a");
    int32_t a, b;
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &a), 0);
    pump(&c, &s, 1024);
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &b), 0);
    /* server shuts down while b is on the wire: b is still processed */
    assert_int_equal(av__h2_shutdown(s.h), 0);
    move(&c, &s, 1024); /* b's HEADERS */
    int32_t d;
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &d), 0); /* not sent yet */
    move(&s, &c, 1024); /* notice + ping reach the client first */
    pump(&c, &s, 1024);
    assert_int_equal(av__h2_goaway_last_stream(c.h), b);
    assert_int_equal(rec(&s, b)->heads, 1);
    /* d was never sent: refused, reported once */
    assert_int_equal(rec(&s, d)->heads, 0);
    assert_int_equal(rec(&c, d)->closed, 1);
    assert_int_equal(rec(&c, d)->close_code, NGHTTP2_REFUSED_STREAM);
    assert_int_equal(av__h2_can_submit(c.h), 0);
    peer_free(&c);
    peer_free(&s);
}

static void extended_connect(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    assert_int_equal(av__h2_peer_connect_protocol(c.h), 0);
    pump(&c, &s, 1024);
    assert_int_equal(av__h2_peer_connect_protocol(c.h), 1);
    assert_int_equal(av__h2_peer_connect_protocol(s.h), 0); /* client did not enable it */
    av_h2_head h = req_head("CONNECT", "/chat");
    h.protocol = "websocket";
    h.protocol_len = 9;
    add_field(&h, "sec-websocket-version", "13");
    int32_t id;
    assert_int_equal(av__h2_submit_request(c.h, &h, 0, &id), 0);
    pump(&c, &s, 1024);
    rec_stream *r = rec(&s, id);
    assert_int_equal(r->heads, 1);
    assert_string_equal(r->method, "CONNECT");
    assert_string_equal(r->protocol, "websocket");
    av_h2_head rh = resp_head(200);
    assert_int_equal(av__h2_submit_response(s.h, id, &rh, 0), 0);
    assert_int_equal(av__h2_send_data(s.h, id, (const uint8_t *)"\x81\x02hi", 4), 4);
    assert_int_equal(av__h2_send_data(c.h, id, (const uint8_t *)"\x81\x82xxxxab", 8), 8);
    pump(&c, &s, 1024);
    assert_int_equal(rec(&c, id)->status, 200);
    assert_int_equal(rec(&c, id)->body_len, 4);
    assert_int_equal(r->body_len, 8);
    peer_free(&c);
    peer_free(&s);
}

static void huge_response_head_resets(void **state)
{
    (void)state;
    peer c, s;
    peer_new(&c, AV_H2_CLIENT);
    peer_new(&s, AV_H2_SERVER);
    av_h2_head h = req_head("GET", "/");
    int32_t id;
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &id), 0);
    pump(&c, &s, 4096);
    av_h2_head rh = resp_head(200);
    static char names[AV_H2_MAX_FIELDS][16];
    for (int i = 0; i < AV_H2_MAX_FIELDS; i++) {
        snprintf(names[i], sizeof(names[i]), "x-f%d", i);
        add_field(&rh, names[i], "v");
    }
    assert_int_equal(av__h2_submit_response(s.h, id, &rh, 1), 0); /* 100 fields: fine */
    pump(&c, &s, 4096);
    assert_int_equal(rec(&c, id)->nfields, 100);
    /* Over the sending limit: the server's own response cannot be sent;
     * the stream is reset instead of hanging. */
    assert_int_equal(av__h2_submit_request(c.h, &h, 1, &id), 0);
    pump(&c, &s, 4096);
    char *big = malloc(40001);
    memset(big, 'a', 40000);
    big[40000] = 0;
    av_h2_head rb = resp_head(200);
    add_field(&rb, "x-a", big);
    add_field(&rb, "x-b", big);
    assert_int_equal(av__h2_submit_response(s.h, id, &rb, 1), 0);
    pump(&c, &s, 4096);
    assert_int_equal(rec(&c, id)->heads, 0);
    assert_int_equal(rec(&c, id)->closed, 1);
    assert_int_equal(rec(&c, id)->close_code, NGHTTP2_INTERNAL_ERROR);
    assert_int_equal(rec(&s, id)->closed, 1);
    free(big);
    peer_free(&c);
    peer_free(&s);
}

/* ---- raw frames toward a server session --------------------------------- */

typedef struct raw {
    av_h2 *h;
    peer p;
    uint8_t *in;
    size_t len, cap;
    nghttp2_hd_deflater *def;
    av_buf out;
} raw;

static void raw_put(raw *r, const void *d, size_t n)
{
    if (r->len + n > r->cap) {
        r->cap = (r->len + n) * 2 + 1024;
        r->in = realloc(r->in, r->cap);
        assert_non_null(r->in);
    }
    memcpy(r->in + r->len, d, n);
    r->len += n;
}

/* frame appends one HTTP/2 frame. */
static void frame(raw *r, uint8_t type, uint8_t flags, int32_t sid, const void *p, size_t n)
{
    uint8_t h[9] = {(uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n, type, flags,
                    (uint8_t)(sid >> 24), (uint8_t)(sid >> 16), (uint8_t)(sid >> 8),
                    (uint8_t)sid};
    raw_put(r, h, 9);
    if (n)
        raw_put(r, p, n);
}

/* hblock encodes name/value pairs (NULL-terminated list) with HPACK. */
static size_t hblock(raw *r, uint8_t *buf, size_t cap, const char *const *kv)
{
    nghttp2_nv nv[512];
    size_t n = 0;
    for (; kv[2 * n]; n++) {
        nv[n].name = (uint8_t *)kv[2 * n];
        nv[n].namelen = strlen(kv[2 * n]);
        nv[n].value = (uint8_t *)kv[2 * n + 1];
        nv[n].valuelen = strlen(kv[2 * n + 1]);
        nv[n].flags = NGHTTP2_NV_FLAG_NONE;
    }
    ssize_t len = nghttp2_hd_deflate_hd(r->def, buf, cap, nv, n);
    assert_true(len > 0);
    return (size_t)len;
}

static void raw_new(raw *r)
{
    memset(r, 0, sizeof(*r));
    peer_new(&r->p, AV_H2_SERVER);
    r->h = r->p.h;
    assert_int_equal(nghttp2_hd_deflate_new(&r->def, 4096), 0);
    av__buf_init(&r->out, 1 << 22);
    raw_put(r, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
    frame(r, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
}

static void raw_free(raw *r)
{
    nghttp2_hd_deflate_del(r->def);
    free(r->in);
    av__buf_free(&r->out);
    peer_free(&r->p);
}

/* raw_send feeds what was built and collects the server's output; returns
 * av__h2_feed's result. */
static ssize_t raw_send(raw *r)
{
    ssize_t n = av__h2_feed(r->h, r->in, r->len);
    r->len = 0;
    while (av__h2_produce(r->h, &r->out) > 0)
        ;
    return n;
}

typedef struct seen {
    int rst[64];      /* error code per stream id < 64, -1 none */
    int nrst;
    int goaway;       /* error code, -1 none */
    int headers_on[64];
    int status[64];
} seen;

/* decode walks the server's output frames. */
static void decode(raw *r, seen *sn)
{
    nghttp2_hd_inflater *inf;
    assert_int_equal(nghttp2_hd_inflate_new(&inf), 0);
    memset(sn, 0, sizeof(*sn));
    for (int i = 0; i < 64; i++)
        sn->rst[i] = -1;
    sn->goaway = -1;
    const uint8_t *p = av__buf_head(&r->out);
    size_t n = av__buf_len(&r->out), off = 0;
    while (off + 9 <= n) {
        size_t len = ((size_t)p[off] << 16) | ((size_t)p[off + 1] << 8) | p[off + 2];
        uint8_t type = p[off + 3];
        uint32_t sid = ((uint32_t)(p[off + 5] & 0x7f) << 24) | ((uint32_t)p[off + 6] << 16) |
                       ((uint32_t)p[off + 7] << 8) | p[off + 8];
        const uint8_t *pl = p + off + 9;
        assert_true(off + 9 + len <= n);
        if (type == NGHTTP2_RST_STREAM) {
            sn->nrst++;
            if (sid < 64)
                sn->rst[sid] = (int)(((uint32_t)pl[0] << 24) | ((uint32_t)pl[1] << 16) |
                                     ((uint32_t)pl[2] << 8) | pl[3]);
        } else if (type == NGHTTP2_GOAWAY) {
            sn->goaway = (int)(((uint32_t)pl[4] << 24) | ((uint32_t)pl[5] << 16) |
                               ((uint32_t)pl[6] << 8) | pl[7]);
        } else if (type == NGHTTP2_HEADERS && sid < 64) {
            sn->headers_on[sid]++;
            const uint8_t *in = pl;
            size_t inlen = len;
            for (;;) {
                nghttp2_nv nv;
                int fl = 0;
                ssize_t rv = nghttp2_hd_inflate_hd2(inf, &nv, &fl, in, inlen, 1);
                assert_true(rv >= 0);
                in += rv;
                inlen -= (size_t)rv;
                if (fl & NGHTTP2_HD_INFLATE_EMIT) {
                    if (nv.namelen == 7 && memcmp(nv.name, ":status", 7) == 0)
                        sn->status[sid] = atoi((const char *)nv.value);
                }
                if (fl & NGHTTP2_HD_INFLATE_FINAL) {
                    nghttp2_hd_inflate_end_headers(inf);
                    break;
                }
                if (inlen == 0 && !(fl & NGHTTP2_HD_INFLATE_EMIT))
                    break;
            }
        }
        off += 9 + len;
    }
    nghttp2_hd_inflate_del(inf);
}

/* A response header block that is small on the wire but decodes to more
 * than 64 KiB (one 3000-byte field indexed, then referenced 25 times):
 * the client resets the stream and reports it; on_head is never called. */
static void hostile_response_hpack_bomb(void **state)
{
    (void)state;
    raw r;
    memset(&r, 0, sizeof(r));
    peer_new(&r.p, AV_H2_CLIENT);
    r.h = r.p.h;
    assert_int_equal(nghttp2_hd_deflate_new(&r.def, 4096), 0);
    av__buf_init(&r.out, 1 << 22);
    av_h2_head h = req_head("GET", "/");
    int32_t id;
    assert_int_equal(av__h2_submit_request(r.h, &h, 1, &id), 0);
    while (av__h2_produce(r.h, &r.out) > 0)
        ;
    av__buf_reset(&r.out);
    frame(&r, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
    static char val[4001];
    memset(val, 'q', 3000); /* indexable: entry < 3/4 of the 4 KiB table */
    const char *kv[2 * 30];
    size_t k = 0;
    kv[k++] = ":status";
    kv[k++] = "200";
    for (int i = 0; i < 25; i++) {
        kv[k++] = "x-bomb";
        kv[k++] = val;
    }
    kv[k] = NULL;
    uint8_t *hb = malloc(200000); /* the deflater wants room for the worst case */
    size_t n = hblock(&r, hb, 200000, kv);
    assert_true(n < 16384);
    frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, id, hb, n);
    free(hb);
    assert_true(raw_send(&r) >= 0);
    seen sn;
    decode(&r, &sn);
    assert_int_equal(sn.rst[1], NGHTTP2_INTERNAL_ERROR);
    rec_stream *rs = rec(&r.p, id);
    assert_int_equal(rs->heads, 0);
    assert_int_equal(rs->closed, 1);
    assert_int_equal(rs->close_code, NGHTTP2_INTERNAL_ERROR);
    assert_int_equal(r.p.limits, 1);
    assert_true(av__h2_alive(r.h)); /* a stream error only */
    raw_free(&r);
}

/* req_kv is a valid GET request; more pairs can follow at |extra|. */
#define REQ_KV ":method", "GET", ":scheme", "https", ":authority", "example.com", ":path", "/"

/* bad_request sends one request with a malformed header block and expects
 * RST_STREAM PROTOCOL_ERROR and no on_head. */
static void bad_request(const char *const *kv, int end_stream)
{
    raw r;
    raw_new(&r);
    uint8_t hb[4096];
    size_t n = hblock(&r, hb, sizeof(hb), kv);
    frame(&r, NGHTTP2_HEADERS, (uint8_t)(NGHTTP2_FLAG_END_HEADERS | (end_stream ? 1 : 0)), 1, hb,
          n);
    assert_true(raw_send(&r) >= 0);
    seen sn;
    decode(&r, &sn);
    assert_int_equal(sn.rst[1], NGHTTP2_PROTOCOL_ERROR);
    assert_int_equal(r.p.nst, 0); /* no on_head, no on_stream_close */
    assert_true(av__h2_alive(r.h));
    /* the connection still works */
    const char *const ok[] = {REQ_KV, NULL};
    n = hblock(&r, hb, sizeof(hb), ok);
    frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 3, hb, n);
    assert_true(raw_send(&r) >= 0);
    assert_int_equal(rec(&r.p, 3)->heads, 1);
    raw_free(&r);
}

static void hostile_malformed_heads(void **state)
{
    (void)state;
    const char *const upper[] = {REQ_KV, "X-Upper", "1", NULL};
    bad_request(upper, 1);
    const char *const conn[] = {REQ_KV, "connection", "keep-alive", NULL};
    bad_request(conn, 1);
    const char *const te[] = {REQ_KV, "te", "gzip", NULL};
    bad_request(te, 1);
    const char *const order[] = {":method", "GET", ":scheme", "https", "x-a", "1",
                                 ":authority", "example.com", ":path", "/", NULL};
    bad_request(order, 1);
    const char *const nopath[] = {":method", "GET", ":scheme", "https", ":authority", "e", NULL};
    bad_request(nopath, 1);
    const char *const badcl[] = {":method", "POST", ":scheme", "https", ":authority", "e",
                                 ":path", "/", "content-length", "1x", NULL};
    bad_request(badcl, 0);
    /* :protocol on a non-CONNECT request */
    const char *const proto[] = {REQ_KV, ":protocol", "websocket", NULL};
    bad_request(proto, 1);
}

static void hostile_content_length_mismatch(void **state)
{
    (void)state;
    raw r;
    raw_new(&r);
    uint8_t hb[4096];
    const char *const kv[] = {":method", "POST", ":scheme", "https", ":authority", "e",
                              ":path", "/", "content-length", "10", NULL};
    size_t n = hblock(&r, hb, sizeof(hb), kv);
    frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1, hb, n);
    frame(&r, NGHTTP2_DATA, NGHTTP2_FLAG_END_STREAM, 1, "abc", 3);
    assert_true(raw_send(&r) >= 0);
    seen sn;
    decode(&r, &sn);
    assert_int_equal(sn.rst[1], NGHTTP2_PROTOCOL_ERROR);
    rec_stream *rs = rec(&r.p, 1);
    assert_int_equal(rs->heads, 1);
    assert_int_equal(rs->content_length, 10);
    assert_int_equal(rs->ended, 0);
    assert_int_equal(rs->closed, 1);
    assert_int_equal(rs->close_code, NGHTTP2_PROTOCOL_ERROR);
    raw_free(&r);
}

static void hostile_too_many_fields(void **state)
{
    (void)state;
    raw r;
    raw_new(&r);
    static char names[101][16];
    const char *kv[2 * 110];
    size_t k = 0;
    const char *base[] = {REQ_KV};
    for (size_t i = 0; i < 8; i++)
        kv[k++] = base[i];
    for (int i = 0; i < 101; i++) {
        snprintf(names[i], sizeof(names[i]), "x-f%d", i);
        kv[k++] = names[i];
        kv[k++] = "v";
    }
    kv[k] = NULL;
    uint8_t hb[8192];
    size_t n = hblock(&r, hb, sizeof(hb), kv);
    frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS, 1, hb, n); /* body "follows" */
    frame(&r, NGHTTP2_DATA, NGHTTP2_FLAG_END_STREAM, 1, "abc", 3);
    assert_true(raw_send(&r) >= 0);
    seen sn;
    decode(&r, &sn);
    assert_int_equal(sn.headers_on[1], 1);
    assert_int_equal(sn.status[1], 431);
    assert_int_equal(r.p.nst, 0); /* never reached on_head */
    assert_int_equal(r.p.limits, 1);
    /* exactly 100 is fine */
    kv[k - 2] = NULL;
    n = hblock(&r, hb, sizeof(hb), kv);
    frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, 3, hb, n);
    assert_true(raw_send(&r) >= 0);
    assert_int_equal(rec(&r.p, 3)->heads, 1);
    assert_int_equal(rec(&r.p, 3)->nfields, 100);
    raw_free(&r);
}

/* counting allocator: peak bytes in use through av_mem. */
static size_t mem_now, mem_peak;
typedef struct { size_t n; size_t pad; } mhdr;
static void *cnt_malloc(size_t n, void *ud)
{
    (void)ud;
    mhdr *h = malloc(sizeof(mhdr) + n);
    if (!h)
        return NULL;
    h->n = n;
    mem_now += n;
    if (mem_now > mem_peak)
        mem_peak = mem_now;
    return h + 1;
}
static void cnt_free(void *p, void *ud)
{
    (void)ud;
    if (!p)
        return;
    mhdr *h = (mhdr *)p - 1;
    mem_now -= h->n;
    free(h);
}
static void *cnt_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    if (!p)
        return cnt_malloc(n, NULL);
    mhdr *h = (mhdr *)p - 1;
    void *q = cnt_malloc(n, NULL);
    if (!q)
        return NULL;
    memcpy(q, p, h->n < n ? h->n : n);
    cnt_free(p, NULL);
    return q;
}

static void hostile_huge_header_block(void **state)
{
    (void)state;
    assert_int_equal(av_set_allocator(cnt_malloc, cnt_realloc, cnt_free, NULL), 0);
    mem_now = mem_peak = 0;
    raw r;
    raw_new(&r);
    /* 60 fields of 1500-byte values: ~90 KiB decoded, > 64 KiB. Values
     * differ so HPACK cannot shrink them much. */
    static char vals[80][1501];
    static char names[80][16];
    const char *kv[2 * 90];
    size_t k = 0;
    const char *base[] = {REQ_KV};
    for (size_t i = 0; i < 8; i++)
        kv[k++] = base[i];
    for (int i = 0; i < 80; i++) {
        snprintf(names[i], sizeof(names[i]), "x-big%d", i);
        for (int j = 0; j < 1500; j++)
            vals[i][j] = (char)('a' + (i * 7 + j * 13) % 26);
        vals[i][1500] = 0;
        kv[k++] = names[i];
        kv[k++] = vals[i];
    }
    kv[k] = NULL;
    uint8_t *hb = malloc(200000);
    size_t n = hblock(&r, hb, 200000, kv);
    assert_true(n > 65536);
    /* HEADERS + CONTINUATIONs of 16 KiB each (<= 8 continuations) */
    size_t off = 0, chunk = 16384;
    int first = 1;
    while (off < n) {
        size_t c = n - off < chunk ? n - off : chunk;
        int last = off + c == n;
        frame(&r, first ? NGHTTP2_HEADERS : NGHTTP2_CONTINUATION,
              (uint8_t)((last ? NGHTTP2_FLAG_END_HEADERS : 0) | (first ? 1 : 0)), 1, hb + off,
              c);
        first = 0;
        off += c;
    }
    size_t before = mem_peak;
    assert_true(raw_send(&r) >= 0);
    seen sn;
    decode(&r, &sn);
    assert_int_equal(sn.status[1], 431);
    assert_int_equal(r.p.nst, 0);
    /* Our arena stays at 64 KiB + small; HPACK and nghttp2 buffers add a
     * few tens of KiB. The whole session stays well under 512 KiB. */
    assert_true(mem_peak - before < 512 * 1024);
    free(hb);
    raw_free(&r);
    assert_int_equal(mem_now, 0);
    av_set_allocator(NULL, NULL, NULL, NULL);
}

static void hostile_continuation_flood(void **state)
{
    (void)state;
    raw r;
    raw_new(&r);
    uint8_t hb[256];
    const char *const kv[] = {REQ_KV, NULL};
    size_t n = hblock(&r, hb, sizeof(hb), kv);
    frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_STREAM, 1, hb, n);
    for (int i = 0; i < 1000; i++)
        frame(&r, NGHTTP2_CONTINUATION, 0, 1, NULL, 0);
    assert_int_equal(raw_send(&r), AV_ERR_LIMIT);
    seen sn;
    decode(&r, &sn);
    assert_int_equal(sn.goaway, NGHTTP2_ENHANCE_YOUR_CALM);
    assert_int_equal(r.p.nst, 0);
    assert_int_equal(r.p.limits, 1);
    assert_int_equal(av__h2_alive(r.h), 0);
    assert_int_equal(av__h2_feed(r.h, (const uint8_t *)"x", 1), AV_ERR_LIMIT);
    raw_free(&r);
}

static void hostile_rapid_reset(void **state)
{
    (void)state;
    raw r;
    raw_new(&r);
    uint8_t hb[256];
    const char *const kv[] = {REQ_KV, NULL};
    uint8_t rst[4] = {0, 0, 0, NGHTTP2_CANCEL};
    ssize_t rv = 0;
    int32_t sid = 1;
    for (int i = 0; i < 5000 && rv >= 0; i++, sid += 2) {
        size_t n = hblock(&r, hb, sizeof(hb), kv);
        frame(&r, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, sid, hb,
              n);
        frame(&r, NGHTTP2_RST_STREAM, 0, sid, rst, 4);
        if (i % 100 == 99)
            rv = raw_send(&r);
    }
    rv = raw_send(&r);
    seen sn;
    decode(&r, &sn);
    assert_true(sn.goaway >= 0);
    assert_true(sn.goaway == NGHTTP2_ENHANCE_YOUR_CALM || sn.goaway == NGHTTP2_INTERNAL_ERROR);
    assert_int_equal(av__h2_alive(r.h), 0);
    /* the caller saw a bounded number of streams (heads before reset) */
    assert_true(r.p.nst >= 1000 && r.p.nst <= 1400);
    assert_true(r.p.limits >= 1); /* the GOAWAY was reported */
    raw_free(&r);
}

static void flood(int type)
{
    raw r;
    raw_new(&r);
    ssize_t rv = 0;
    uint8_t ping[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (int i = 0; i < 5000 && rv >= 0; i++) {
        if (type == NGHTTP2_PING)
            frame(&r, NGHTTP2_PING, 0, 0, ping, 8);
        else
            frame(&r, NGHTTP2_SETTINGS, 0, 0, NULL, 0);
        if (i % 50 == 49) {
            rv = av__h2_feed(r.h, r.in, r.len); /* never read the ACKs */
            r.len = 0;
        }
    }
    assert_int_equal(rv, AV_ERR_LIMIT);
    while (av__h2_produce(r.h, &r.out) > 0)
        ;
    seen sn;
    decode(&r, &sn);
    assert_int_equal(sn.goaway, NGHTTP2_ENHANCE_YOUR_CALM);
    assert_int_equal(av__h2_alive(r.h), 0);
    raw_free(&r);
}

static void hostile_settings_ping_flood(void **state)
{
    (void)state;
    flood(NGHTTP2_SETTINGS);
    flood(NGHTTP2_PING);
}

static void hostile_bad_preface(void **state)
{
    (void)state;
    peer s;
    peer_new(&s, AV_H2_SERVER);
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(av__h2_feed(s.h, (const uint8_t *)junk, sizeof(junk) - 1), AV_ERR_PARSE);
    av_buf out;
    av__buf_init(&out, 1 << 16);
    while (av__h2_produce(s.h, &out) > 0)
        ;
    assert_int_equal(av__h2_alive(s.h), 0);
    av__buf_free(&out);
    peer_free(&s);
}

static void hostile_connection_error(void **state)
{
    (void)state;
    raw r;
    raw_new(&r);
    /* DATA on stream 0 is a connection error nghttp2 handles itself */
    frame(&r, NGHTTP2_DATA, 0, 0, "x", 1);
    assert_true(raw_send(&r) >= 0);
    seen sn;
    decode(&r, &sn);
    assert_int_equal(sn.goaway, NGHTTP2_PROTOCOL_ERROR);
    assert_int_equal(av__h2_alive(r.h), 0);
    raw_free(&r);
}

/* allocation failures: every allocation fails in turn; no crash, no leak. */
static size_t fail_at, alloc_count;
static void *fail_malloc(size_t n, void *ud)
{
    if (++alloc_count == fail_at)
        return NULL;
    return cnt_malloc(n, ud);
}
static void *fail_realloc(void *p, size_t n, void *ud)
{
    if (++alloc_count == fail_at)
        return NULL;
    return cnt_realloc(p, n, ud);
}

static void allocation_failures(void **state)
{
    (void)state;
    for (fail_at = 1; fail_at < 400; fail_at++) {
        alloc_count = 0;
        mem_now = 0;
        assert_int_equal(av_set_allocator(fail_malloc, fail_realloc, cnt_free, NULL), 0);
        av_h2 *c = NULL, *s = NULL;
        peer pc, ps;
        memset(&pc, 0, sizeof(pc));
        memset(&ps, 0, sizeof(ps));
        if (av__h2_new(&c, AV_H2_CLIENT, &CBS, &pc) == 0 &&
            av__h2_new(&s, AV_H2_SERVER, &CBS, &ps) == 0) {
            pc.h = c;
            ps.h = s;
            av_h2_head h = req_head("POST", "/");
            int32_t id;
            if (av__h2_submit_request(c, &h, 0, &id) == 0) {
                (void)av__h2_send_data(c, id, (const uint8_t *)"abc", 3);
                (void)av__h2_end_stream(c, id);
            }
            av_buf out;
            av__buf_init(&out, 64);
            for (int i = 0; i < 200; i++) {
                int a = av__h2_produce(c, &out);
                if (av__buf_len(&out)) {
                    (void)av__h2_feed(s, av__buf_head(&out), av__buf_len(&out));
                    av__buf_consume(&out, av__buf_len(&out));
                }
                int b = av__h2_produce(s, &out);
                if (av__buf_len(&out)) {
                    (void)av__h2_feed(c, av__buf_head(&out), av__buf_len(&out));
                    av__buf_consume(&out, av__buf_len(&out));
                }
                if (a <= 0 && b <= 0)
                    break;
            }
            av__buf_free(&out);
        }
        av__h2_free(c);
        av__h2_free(s);
        for (size_t i = 0; i < pc.nst; i++)
            free(pc.st[i].body);
        for (size_t i = 0; i < ps.nst; i++)
            free(ps.st[i].body);
        assert_int_equal(mem_now, 0);
        av_set_allocator(NULL, NULL, NULL, NULL);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(get_request),
        cmocka_unit_test(post_body),
        cmocka_unit_test(concurrent_streams),
        cmocka_unit_test(flow_control),
        cmocka_unit_test(reset_gives_window_back),
        cmocka_unit_test(tiny_output_buffer),
        cmocka_unit_test(trailers),
        cmocka_unit_test(trailers_limits_and_validation),
        cmocka_unit_test(informational_and_head_errors),
        cmocka_unit_test(graceful_shutdown),
        cmocka_unit_test(goaway_refuses_unprocessed),
        cmocka_unit_test(extended_connect),
        cmocka_unit_test(huge_response_head_resets),
        cmocka_unit_test(hostile_response_hpack_bomb),
        cmocka_unit_test(hostile_malformed_heads),
        cmocka_unit_test(hostile_content_length_mismatch),
        cmocka_unit_test(hostile_too_many_fields),
        cmocka_unit_test(hostile_huge_header_block),
        cmocka_unit_test(hostile_continuation_flood),
        cmocka_unit_test(hostile_rapid_reset),
        cmocka_unit_test(hostile_settings_ping_flood),
        cmocka_unit_test(hostile_bad_preface),
        cmocka_unit_test(hostile_connection_error),
        cmocka_unit_test(allocation_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
