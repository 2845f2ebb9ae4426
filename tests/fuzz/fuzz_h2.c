/* fuzz_h2.c - libFuzzer target for the HTTP/2 sessions (av_h2).
 *
 * The first byte picks the role and buffer sizes. Server role: the client
 * preface is fed first, then the input, as if an agent sent it. Client
 * role: a request (with a body) is submitted and produced first, then the
 * input is fed as the upstream's bytes. The input is fed in pseudo-random
 * pieces; output is produced into a small bounded buffer that is drained
 * after each piece. The callbacks act like the connection code would:
 * answer requests (with a body and sometimes trailers), consume DATA,
 * sometimes reset. Checked: no crash, no leak (ASan/LSan), outputs within
 * their bound, documented return values only.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_h2.h"
#include "av_mem.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fz {
    av_h2 *h;
    uint32_t rnd;
    int server;
} fz;

/* next is a small LCG driven by the input. */
static uint32_t next(fz *f)
{
    f->rnd = f->rnd * 1103515245u + 12345u;
    return f->rnd >> 16;
}

/* on_head answers requests (server) and checks the head's shape. */
static int on_head(void *ud, int32_t id, const av_h2_head *h)
{
    fz *f = ud;
    CHECK(h->nfields <= AV_H2_MAX_FIELDS);
    for (size_t i = 0; i < h->nfields; i++)
        CHECK(h->fields[i].name_len > 0 && h->fields[i].name[0] != ':');
    if (!f->server || h->trailers)
        return (next(f) % 16) == 0 ? -1 : 0;
    av_h2_head r;
    memset(&r, 0, sizeof(r));
    r.status = (next(f) % 8) == 0 ? 100 : 200;
    r.fields[0].name = "content-type";
    r.fields[0].name_len = 12;
    r.fields[0].value = "text/plain";
    r.fields[0].value_len = 10;
    r.nfields = 1;
    int end = (next(f) % 4) == 0;
    int rv = av__h2_submit_response(f->h, id, &r, end);
    CHECK(rv == 0 || rv == AV_ERR_NOMEM || rv == AV_ERR_STATE || rv == AV_ERR_NOTFOUND);
    if (rv == 0 && !end && r.status == 200) {
        ssize_t n = av__h2_send_data(f->h, id, (const uint8_t *)"hello world", 11);
        CHECK(n == 11);
        if (next(f) % 2) {
            av_h1_field t = {"x-t", 3, "1", 1};
            CHECK(av__h2_submit_trailers(f->h, id, &t, 1) == 0);
        } else {
            CHECK(av__h2_end_stream(f->h, id) == 0);
        }
    }
    return 0;
}

/* on_data consumes (usually) and sometimes resets. */
static int on_data(void *ud, int32_t id, const uint8_t *d, size_t n)
{
    fz *f = ud;
    (void)d;
    uint32_t r = next(f) % 32;
    if (r == 0)
        return -1;
    if (r != 1) {
        int rv = av__h2_consume(f->h, id, n);
        CHECK(rv == 0 || rv == AV_ERR_NOMEM || rv == AV_ERR_STATE);
    }
    return 0;
}

static void on_end(void *ud, int32_t id)
{
    (void)ud;
    CHECK(id > 0);
}

static void on_close(void *ud, int32_t id, uint32_t code)
{
    (void)ud;
    (void)code;
    CHECK(id > 0);
}

static const av_h2_callbacks CBS = {on_head, on_data, on_end, on_close, NULL, NULL};

/* drain produces into |out| and empties it. */
static void drain(fz *f, av_buf *out, size_t rounds)
{
    for (size_t i = 0; i < rounds; i++) {
        int rv = av__h2_produce(f->h, out);
        CHECK(rv >= 0 || rv == AV_ERR_NOMEM || rv == AV_ERR_PARSE || rv == AV_ERR_LIMIT);
        CHECK(av__buf_len(out) <= out->max);
        size_t had = av__buf_len(out);
        av__buf_consume(out, had);
        if (rv <= 0 || had == 0)
            return;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    fz f;
    memset(&f, 0, sizeof(f));
    uint8_t ctl = data[0];
    data++;
    size--;
    f.server = (ctl & 1) == 0;
    f.rnd = ctl * 2654435761u;
    size_t bufmax = (size_t)1 << (4 + ((ctl >> 1) & 7)); /* 16 .. 2048 */
    if (av__h2_new(&f.h, f.server ? AV_H2_SERVER : AV_H2_CLIENT, &CBS, &f) != 0)
        return 0;
    av_buf out;
    av__buf_init(&out, bufmax);
    if (f.server) {
        ssize_t n = av__h2_feed(f.h, (const uint8_t *)NGHTTP2_CLIENT_MAGIC,
                                NGHTTP2_CLIENT_MAGIC_LEN);
        CHECK(n == NGHTTP2_CLIENT_MAGIC_LEN);
    } else {
        av_h2_head h;
        memset(&h, 0, sizeof(h));
        h.method = "POST";
        h.method_len = 4;
        h.scheme = "https";
        h.scheme_len = 5;
        h.authority = "example.com";
        h.authority_len = 11;
        h.path = "/";
        h.path_len = 1;
        int32_t id;
        if (av__h2_submit_request(f.h, &h, 0, &id) == 0) {
            CHECK(av__h2_send_data(f.h, id, (const uint8_t *)"body", 4) == 4);
            if (ctl & 0x10)
                CHECK(av__h2_end_stream(f.h, id) == 0);
        }
    }
    drain(&f, &out, 1000);
    size_t off = 0;
    while (off < size) {
        size_t piece = 1 + next(&f) % 512;
        if (piece > size - off)
            piece = size - off;
        ssize_t n = av__h2_feed(f.h, data + off, piece);
        CHECK(n == (ssize_t)piece || n == AV_ERR_PARSE || n == AV_ERR_LIMIT || n == AV_ERR_NOMEM);
        drain(&f, &out, 1000);
        if (n < 0)
            break;
        off += piece;
    }
    if (ctl & 0x20) {
        int rv = av__h2_shutdown(f.h);
        CHECK(rv == 0 || rv == AV_ERR_NOMEM || rv == AV_ERR_STATE);
    }
    drain(&f, &out, 1000);
    (void)av__h2_alive(f.h);
    (void)av__h2_can_submit(f.h);
    (void)av__h2_peer_connect_protocol(f.h);
    (void)av__h2_goaway_last_stream(f.h);
    av__buf_free(&out);
    av__h2_free(f.h);
    return 0;
}
