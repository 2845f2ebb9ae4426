/* fuzz_scrub.c - libFuzzer target for the response scrubber.
 *
 * Input layout: byte 0 picks the mode (bits 0-1: 0/1 identity, 2 gzip
 * round trip, 3 raw bytes into a gzip/deflate scrubber) and the number of
 * secrets (bits 2-3, 1..4); then each secret as a length byte (1..40) and
 * its bytes; the rest is the body. Pieces and output-buffer sizes come from
 * a generator seeded with the input.
 *
 * Checked:
 *  - nothing crashes, every return is a documented one, held bytes never
 *    exceed the window;
 *  - any chunking and any output-buffer size give the same output and count
 *    as feeding the body in one piece;
 *  - no raw secret appears in the output (for secrets with no byte in
 *    common with the marker, which could otherwise be formed across it);
 *  - gzip round trip: the body compressed with zlib and scrubbed in gzip
 *    mode inflates to exactly the identity result;
 *  - arbitrary bytes into a compressed scrubber end in AV_OK, AV_ERR_PARSE
 *    or AV_ERR_DENIED.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_mem.h"
#include "av_scrub.h"
#include "av_secret.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct sink {
    uint8_t *p;
    size_t n, cap;
} sink;

static void sink_take(sink *k, av_buf *b)
{
    size_t n = av__buf_len(b);
    if (k->n + n > k->cap) {
        size_t cap = k->cap ? k->cap : 1024;
        while (cap < k->n + n)
            cap *= 2;
        uint8_t *p = realloc(k->p, cap);
        CHECK(p);
        k->p = p;
        k->cap = cap;
    }
    if (n)
        memcpy(k->p + k->n, av__buf_head(b), n);
    k->n += n;
    av__buf_consume(b, n);
}

/* scrub_all runs the body through |s| in random pieces (pieces == 0: one
 * piece) with a random small output buffer; returns the final code. */
static int scrub_all(av_scrub *s, const uint8_t *in, size_t len, rng *r, int pieces, sink *k)
{
    size_t min = av__scrub_min_room(s);
    size_t max = pieces ? min + rng_next(r, 64) : (size_t)1 << 24;
    av_buf out;
    av__buf_init(&out, max);
    size_t off = 0;
    int rc = AV_OK;
    while (off < len && rc == AV_OK) {
        size_t n = pieces ? 1 + rng_next(r, 1 + (len - off < 300 ? len - off : 300)) : len - off;
        if (n > len - off)
            n = len - off;
        size_t pos = 0;
        for (;;) {
            size_t took = 0;
            rc = av__scrub_feed(s, in + off + pos, n - pos, &took, &out);
            CHECK(took <= n - pos);
            pos += took;
            CHECK(av__scrub_held(s) <= av__scrub_window(s));
            CHECK(av__buf_len(&out) <= max);
            if (rc == AV_ERR_LIMIT) {
                CHECK(av__buf_len(&out) > 0);
                sink_take(k, &out);
                continue;
            }
            break;
        }
        if (rc == AV_OK)
            CHECK(pos == n);
        off += pos;
    }
    if (rc == AV_OK) {
        do {
            rc = av__scrub_finish(s, &out);
            if (rc == AV_ERR_LIMIT)
                CHECK(av__buf_len(&out) > 0);
            sink_take(k, &out);
        } while (rc == AV_ERR_LIMIT);
    }
    sink_take(k, &out);
    av__buf_free(&out);
    CHECK(rc == AV_OK || rc == AV_ERR_PARSE || rc == AV_ERR_DENIED);
    return rc;
}

static int has_marker_byte(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memchr(AV_SCRUB_MARKER, p[i], AV_SCRUB_MARKER_LEN))
            return 1;
    return 0;
}

static int contains(const uint8_t *h, size_t hn, const uint8_t *nd, size_t nn)
{
    if (nn == 0 || hn < nn)
        return 0;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == nd[0] && memcmp(h + i, nd, nn) == 0)
            return 1;
    return 0;
}

/* gzip compresses |in| with zlib, flushing at random points. */
static uint8_t *gzip(const uint8_t *in, size_t len, rng *r, size_t *zlen)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, (int)rng_next(r, 10), Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        abort();
    size_t cap = deflateBound(&z, (uLong)len) + 64 + 6 * (len / 16 + 2);
    uint8_t *o = malloc(cap);
    CHECK(o);
    z.next_out = o;
    z.avail_out = (uInt)cap;
    size_t off = 0;
    while (off < len) {
        size_t n = 1 + rng_next(r, 64);
        if (n > len - off)
            n = len - off;
        z.next_in = (Bytef *)(uintptr_t)(in + off);
        z.avail_in = (uInt)n;
        CHECK(deflate(&z, rng_next(r, 4) == 0 ? Z_SYNC_FLUSH : Z_NO_FLUSH) == Z_OK);
        CHECK(z.avail_in == 0);
        off += n;
    }
    CHECK(deflate(&z, Z_FINISH) == Z_STREAM_END);
    *zlen = cap - z.avail_out;
    deflateEnd(&z);
    return o;
}

static uint8_t *gunzip(const uint8_t *in, size_t len, size_t *olen)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    CHECK(inflateInit2(&z, 31) == Z_OK);
    size_t cap = 4096, n = 0;
    uint8_t *o = malloc(cap);
    CHECK(o);
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    int r;
    for (;;) {
        if (cap - n < 1024) {
            cap *= 2;
            o = realloc(o, cap);
            CHECK(o);
        }
        z.next_out = o + n;
        z.avail_out = (uInt)(cap - n);
        r = inflate(&z, Z_NO_FLUSH);
        n = cap - z.avail_out;
        if (r == Z_STREAM_END)
            break;
        CHECK(r == Z_OK);
    }
    CHECK(z.avail_in == 0);
    inflateEnd(&z);
    *olen = n;
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    int mode = data[0] & 3;
    size_t nsec = 1 + ((data[0] >> 2) & 3), off = 1;
    av_secret *sec[4] = {NULL, NULL, NULL, NULL};
    size_t got = 0;
    for (size_t i = 0; i < nsec && off < size; i++) {
        size_t l = 1 + data[off++] % 40;
        if (l > size - off)
            l = size - off;
        if (l == 0)
            break;
        sec[got] = av__secret_new(data + off, l);
        CHECK(sec[got]);
        got++;
        off += l;
    }
    const uint8_t *body = data + off;
    size_t blen = size - off;
    rng r;
    rng_seed(&r, data, size);
    const av_secret *const *sv = (const av_secret *const *)sec;

    if (mode == 3) { /* arbitrary bytes as a compressed body */
        av_scrub *s = NULL;
        CHECK(av__scrub_new(&s, sv, got, (data[0] & 16) ? AV_SCRUB_DEFLATE : AV_SCRUB_GZIP) ==
              AV_OK);
        sink k = {NULL, 0, 0};
        (void)scrub_all(s, body, blen, &r, 1, &k);
        free(k.p);
        av__scrub_free(s);
        goto done;
    }

    /* reference: identity, one piece */
    av_scrub *s = NULL;
    CHECK(av__scrub_new(&s, sv, got, AV_SCRUB_IDENTITY) == AV_OK);
    sink ref = {NULL, 0, 0};
    CHECK(scrub_all(s, body, blen, &r, 0, &ref) == AV_OK);
    unsigned long ref_count = av__scrub_count(s);
    av__scrub_free(s);
    for (size_t i = 0; i < got; i++) {
        const uint8_t *p = av__secret_data(sec[i]);
        size_t l = av__secret_len(sec[i]);
        if (!has_marker_byte(p, l))
            CHECK(!contains(ref.p, ref.n, p, l));
    }

    if (mode < 2) { /* identity, random pieces and output sizes */
        CHECK(av__scrub_new(&s, sv, got, AV_SCRUB_IDENTITY) == AV_OK);
        sink k = {NULL, 0, 0};
        CHECK(scrub_all(s, body, blen, &r, 1, &k) == AV_OK);
        CHECK(k.n == ref.n && (k.n == 0 || memcmp(k.p, ref.p, k.n) == 0));
        CHECK(av__scrub_count(s) == ref_count);
        free(k.p);
        /* reset (as the WebSocket relay does per message): the same again */
        CHECK(av__scrub_reset(s) == AV_OK);
        CHECK(av__scrub_held(s) == 0 && av__scrub_count(s) == ref_count);
        sink k2 = {NULL, 0, 0};
        CHECK(scrub_all(s, body, blen, &r, 1, &k2) == AV_OK);
        CHECK(k2.n == ref.n && (k2.n == 0 || memcmp(k2.p, ref.p, k2.n) == 0));
        CHECK(av__scrub_count(s) == 2 * ref_count);
        free(k2.p);
        av__scrub_free(s);
    } else { /* gzip round trip */
        size_t zlen;
        uint8_t *z = gzip(body, blen, &r, &zlen);
        CHECK(av__scrub_new(&s, sv, got, AV_SCRUB_GZIP) == AV_OK);
        sink k = {NULL, 0, 0};
        CHECK(scrub_all(s, z, zlen, &r, 1, &k) == AV_OK);
        size_t dlen;
        uint8_t *d = gunzip(k.p, k.n, &dlen);
        CHECK(dlen == ref.n && (dlen == 0 || memcmp(d, ref.p, dlen) == 0));
        CHECK(av__scrub_count(s) == ref_count);
        free(d);
        free(k.p);
        free(z);
        av__scrub_free(s);
    }
    free(ref.p);
done:
    for (size_t i = 0; i < got; i++)
        av__secret_free(sec[i]);
    return 0;
}
