/* fuzz_h1.c - libFuzzer target for the HTTP/1.1 parser and body decoder.
 *
 * The first byte picks the mode: bits 0-1 select request head (+ body),
 * response head (+ body), chunked decoder or length/until-close decoder;
 * the other bits pick limits and the HEAD/CONNECT context. The rest is
 * parsed whole, then again in pseudo-random pieces derived from the data,
 * and the results must agree. Parsed heads are re-serialized and must
 * parse back to the same fields. Chunked bodies are also decoded with
 * av__h1_body_want_trailers: the trailer section, parsed whole and from
 * growing prefixes, must agree with itself and with the discarding
 * decoder, and re-serialize to the same fields. Any violated invariant
 * aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_h1.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* inside asserts that a view lies within [lo, lo + n). */
static void inside(const void *v, size_t vl, const uint8_t *lo, size_t n)
{
    const uint8_t *p = v;
    CHECK(p >= lo && vl <= n && p - lo <= (ptrdiff_t)(n - vl));
}

/* is_tchar mirrors the RFC 9110 token definition (independently of the
 * library) for checking parsed names. */
static int is_tchar(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* check_fields asserts field-level invariants. */
static void check_fields(const av_h1_field *f, size_t nf, size_t max_fields, const uint8_t *buf,
                         size_t hlen)
{
    CHECK(nf <= max_fields && nf <= AV_H1_MAX_FIELDS_CAP);
    for (size_t i = 0; i < nf; i++) {
        inside(f[i].name, f[i].name_len, buf, hlen);
        inside(f[i].value, f[i].value_len, buf, hlen);
        CHECK(f[i].name_len > 0);
        for (size_t k = 0; k < f[i].name_len; k++)
            CHECK(is_tchar((uint8_t)f[i].name[k]));
        for (size_t k = 0; k < f[i].value_len; k++) {
            uint8_t c = (uint8_t)f[i].value[k];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (f[i].value_len) {
            CHECK(f[i].value[0] != ' ' && f[i].value[0] != '\t');
            CHECK(f[i].value[f[i].value_len - 1] != ' ' && f[i].value[f[i].value_len - 1] != '\t');
        }
    }
}

/* same_fields asserts two field arrays hold equal names and values. */
static void same_fields(const av_h1_field *a, size_t na, const av_h1_field *b, size_t nb)
{
    CHECK(na == nb);
    for (size_t i = 0; i < na; i++) {
        CHECK(a[i].name_len == b[i].name_len && a[i].value_len == b[i].value_len);
        CHECK(memcmp(a[i].name, b[i].name, a[i].name_len) == 0);
        CHECK(memcmp(a[i].value, b[i].value, a[i].value_len) == 0);
    }
}

/* ---- body decoding ------------------------------------------------------ */

typedef struct body_out {
    ssize_t rc; /* consumed or error */
    int done;
    uint8_t *payload;
    size_t plen;
} body_out;

/* decode feeds |in| to a fresh decoder, in pieces when |r| is set, and
 * records consumption, completion and payload (into a buffer of len). */
static void decode(int kind, uint64_t cl, const uint8_t *in, size_t len, rng *r, body_out *o)
{
    av_h1_body b;
    av__h1_body_init(&b, kind, cl);
    o->payload = malloc(len ? len : 1);
    CHECK(o->payload);
    o->plen = 0;
    o->rc = 0;
    size_t pos = 0;
    while (pos < len && !b.done) {
        size_t avail = len - pos;
        if (r) {
            size_t step = rng_step(r, 64);
            if (step < avail)
                avail = step;
        }
        /* copy the piece to an exact allocation so overreads are caught */
        uint8_t *piece = malloc(avail);
        CHECK(piece);
        memcpy(piece, in + pos, avail);
        size_t used_here = 0;
        for (;;) {
            const uint8_t *d = NULL;
            size_t dl = 12345;
            ssize_t n = av__h1_body_feed(&b, piece + used_here, avail - used_here, &d, &dl);
            if (n < 0) {
                CHECK(n == AV_H1_ERR_SYNTAX);
                CHECK(dl == 0);
                free(piece);
                o->rc = n;
                o->done = b.done;
                return;
            }
            CHECK((size_t)n <= avail - used_here);
            CHECK(dl <= (size_t)n);
            if (dl) {
                inside(d, dl, piece + used_here, (size_t)n);
                memcpy(o->payload + o->plen, d, dl);
                o->plen += dl;
            }
            used_here += (size_t)n;
            if (n == 0)
                break;
        }
        free(piece);
        pos += used_here;
        if (used_here < avail) {
            CHECK(b.done); /* only a finished body leaves input unconsumed */
            break;
        }
    }
    o->rc = (ssize_t)pos;
    o->done = b.done;
    if (kind == AV_H1_BODY_LENGTH) {
        CHECK(o->plen == (size_t)o->rc);
        CHECK((uint64_t)o->plen == (cl < (uint64_t)len ? cl : (uint64_t)len));
        CHECK(b.done == (cl <= (uint64_t)len));
    }
    if (kind == AV_H1_BODY_UNTIL_CLOSE)
        CHECK(o->plen == len && !b.done);
    if (kind == AV_H1_BODY_NONE)
        CHECK(o->rc == 0 && b.done);
    CHECK(o->plen <= (size_t)o->rc);
}

/* check_body decodes |in| whole and in pieces and compares. */
static void check_body(int kind, uint64_t cl, const uint8_t *in, size_t len, rng *r)
{
    body_out whole, parts;
    decode(kind, cl, in, len, NULL, &whole);
    decode(kind, cl, in, len, r, &parts);
    CHECK(whole.rc == parts.rc);
    CHECK(whole.done == parts.done);
    CHECK(whole.plen == parts.plen);
    CHECK(memcmp(whole.payload, parts.payload, whole.plen) == 0);
    if (kind == AV_H1_BODY_CHUNKED && whole.done) {
        /* re-encode with the serializer (split in two chunks) and decode */
        av_buf o;
        av__buf_init(&o, whole.plen + 64);
        size_t half = whole.plen / 2;
        if (half) {
            CHECK(av__h1_write_chunk_header(&o, half) == 0);
            CHECK(av__buf_append(&o, whole.payload, half) == 0);
            CHECK(av__h1_write_chunk_end(&o) == 0);
        }
        if (whole.plen - half) {
            CHECK(av__h1_write_chunk_header(&o, whole.plen - half) == 0);
            CHECK(av__buf_append(&o, whole.payload + half, whole.plen - half) == 0);
            CHECK(av__h1_write_chunk_end(&o) == 0);
        }
        CHECK(av__h1_write_last_chunk(&o) == 0);
        body_out again;
        decode(kind, 0, av__buf_head(&o), av__buf_len(&o), r, &again);
        CHECK(again.done && again.rc == (ssize_t)av__buf_len(&o) && again.plen == whole.plen);
        CHECK(memcmp(again.payload, whole.payload, whole.plen) == 0);
        free(again.payload);
        av__buf_free(&o);
    }
    free(whole.payload);
    free(parts.payload);
}

/* check_trailers decodes a chunked body with want_trailers and parses its
 * trailer section whole and from growing prefixes (|scan| kept). */
static void check_trailers(const uint8_t *in, size_t len, rng *r, uint8_t mode)
{
    av_h1_body b;
    av__h1_body_init(&b, AV_H1_BODY_CHUNKED, 0);
    av__h1_body_want_trailers(&b);
    size_t pos = 0;
    for (;;) {
        const uint8_t *d;
        size_t dl;
        ssize_t n = av__h1_body_feed(&b, in + pos, len - pos, &d, &dl);
        if (n < 0)
            return;
        pos += (size_t)n;
        if (n == 0)
            break;
    }
    CHECK(!b.done);
    if (!b.at_trailers)
        return; /* the body did not get that far */
    CHECK(pos >= 3 && memcmp(in + pos - 2, "\r\n", 2) == 0);
    av_h1_limits lim = {0, 0};
    if (mode & 0x10) {
        lim.max_head = 16 + (mode >> 5) * 16;
        lim.max_fields = 1 + (mode >> 5);
    }
    static av_h1_field f1[AV_H1_MAX_FIELDS_CAP], f2[AV_H1_MAX_FIELDS_CAP];
    size_t n1 = 0, n2 = 0;
    av_h1_body b2 = b;
    av_h1_scan scan = {0};
    const uint8_t *t = in + pos;
    size_t tlen = len - pos;
    ssize_t rc = av__h1_body_trailers(&b, t, tlen, &lim, &scan, f1, &n1);
    CHECK(rc == AV_H1_INCOMPLETE || rc == AV_H1_ERR_SYNTAX || rc == AV_H1_ERR_TOO_LARGE || rc >= 2);
    CHECK(b.done == (rc > 0));
    av_h1_scan s2 = {0};
    size_t k = 0;
    ssize_t rc2 = AV_H1_INCOMPLETE;
    while (k < tlen) {
        k += rng_step(r, 32);
        if (k > tlen)
            k = tlen;
        uint8_t *piece = malloc(k);
        CHECK(piece);
        memcpy(piece, t, k);
        rc2 = av__h1_body_trailers(&b2, piece, k, &lim, &s2, f2, &n2);
        if (rc2 > 0) {
            check_fields(f2, n2, lim.max_fields ? lim.max_fields : 100, piece, (size_t)rc2);
            /* (views into |piece|: compare before it goes) */
            CHECK(n2 == n1);
            for (size_t i = 0; i < n1; i++) {
                CHECK(f1[i].name_len == f2[i].name_len && f1[i].value_len == f2[i].value_len);
                CHECK((const uint8_t *)f2[i].name - piece == (const uint8_t *)f1[i].name - t);
                CHECK((const uint8_t *)f2[i].value - piece == (const uint8_t *)f1[i].value - t);
            }
        }
        free(piece);
        if (rc2 != AV_H1_INCOMPLETE)
            break;
    }
    CHECK(rc == rc2);
    if (rc <= 0)
        return;
    check_fields(f1, n1, lim.max_fields ? lim.max_fields : 100, t, (size_t)rc);
    CHECK(memcmp(t + rc - 2, "\r\n", 2) == 0);
    /* the discarding decoder accepts the same body (its 16 KiB cap aside) */
    if ((size_t)rc <= 16384) {
        body_out whole;
        decode(AV_H1_BODY_CHUNKED, 0, in, pos + (size_t)rc, NULL, &whole);
        CHECK(whole.done && whole.rc == (ssize_t)(pos + (size_t)rc));
        free(whole.payload);
    }
    /* re-serialize the section and parse it back */
    av_buf o;
    /* written back as "name: value": a byte more per field than "name:value" */
    av__buf_init(&o, (size_t)rc + n1 + 64);
    CHECK(av__h1_write_last_chunk_trailers(&o, f1, n1) == 0);
    av_h1_body b3;
    av__h1_body_init(&b3, AV_H1_BODY_CHUNKED, 0);
    av__h1_body_want_trailers(&b3);
    const uint8_t *d;
    size_t dl;
    CHECK(av__h1_body_feed(&b3, av__buf_head(&o), av__buf_len(&o), &d, &dl) == 3);
    av_h1_limits big = {1 << 20, AV_H1_MAX_FIELDS_CAP};
    av_h1_scan s3 = {0};
    CHECK(av__h1_body_trailers(&b3, av__buf_head(&o) + 3, av__buf_len(&o) - 3, &big, &s3, f2, &n2) ==
          (ssize_t)(av__buf_len(&o) - 3));
    same_fields(f1, n1, f2, n2);
    for (size_t i = 0; i < n1; i++)
        (void)av__h1_trailer_allowed(&f1[i]);
    (void)av__h1_te_trailers(f1, n1);
    av__buf_free(&o);
}

/* ---- heads ------------------------------------------------------------- */

/* incremental_request parses growing prefixes and returns the result for
 * the first prefix that is not INCOMPLETE. */
static ssize_t incremental_request(const uint8_t *buf, size_t n, const av_h1_limits *lim, rng *r,
                                   av_h1_request *req)
{
    av_h1_scan scan = {0};
    size_t k = 0;
    ssize_t rc = AV_H1_INCOMPLETE;
    while (k < n) {
        k += rng_step(r, 32);
        if (k > n)
            k = n;
        rc = av__h1_parse_request(buf, k, lim, &scan, req);
        CHECK(rc <= (ssize_t)k);
        CHECK(scan.scanned <= k);
        if (rc != AV_H1_INCOMPLETE)
            break;
    }
    return rc;
}

/* reserialize_request writes |req| with the serializer and parses it back. */
static void reserialize_request(const av_h1_request *req)
{
    av_buf o;
    av__buf_init(&o, 1 << 20);
    CHECK(av__h1_write_request_line(&o, req->method, req->method_len, req->target, req->target_len) == 0);
    for (size_t i = 0; i < req->nfields; i++)
        CHECK(av__h1_write_field(&o, req->fields[i].name, req->fields[i].name_len, req->fields[i].value,
                                 req->fields[i].value_len) == 0);
    CHECK(av__h1_write_end(&o) == 0);
    static av_h1_request back;
    av_h1_limits big = {1 << 20, AV_H1_MAX_FIELDS_CAP};
    av_h1_scan scan = {0};
    ssize_t rc = av__h1_parse_request(av__buf_head(&o), av__buf_len(&o), &big, &scan, &back);
    if (req->minor_version == 1) {
        CHECK(rc == (ssize_t)av__buf_len(&o));
        CHECK(back.body == req->body && back.content_length == req->content_length);
        CHECK(back.flags == req->flags);
    } else {
        /* HTTP/1.0 becomes 1.1: only CLOSE/EXPECT_CONTINUE may change */
        CHECK(rc == (ssize_t)av__buf_len(&o));
        CHECK(back.body == req->body);
    }
    CHECK(back.method_len == req->method_len && memcmp(back.method, req->method, req->method_len) == 0);
    CHECK(back.target_len == req->target_len && memcmp(back.target, req->target, req->target_len) == 0);
    same_fields(back.fields, back.nfields, req->fields, req->nfields);
    av__buf_free(&o);
}

/* fuzz_request checks the request parser and, on success, the body. */
static void fuzz_request(uint8_t mode, const uint8_t *buf, size_t n, rng *r)
{
    static av_h1_request req, req2;
    av_h1_limits lim = {0, 0};
    if (mode & 0x10) {
        lim.max_head = 64 + (mode >> 5) * 32;
        lim.max_fields = 1 + (mode >> 5);
    }
    size_t max_head = lim.max_head ? lim.max_head : 65536;
    size_t max_fields = lim.max_fields ? lim.max_fields : 100;
    av_h1_scan scan = {0};
    ssize_t rc = av__h1_parse_request(buf, n, &lim, &scan, &req);
    CHECK(rc <= (ssize_t)n && rc >= AV_H1_ERR_CONNECTION);
    if (rc == AV_H1_INCOMPLETE)
        CHECK(n <= max_head);
    ssize_t rc2 = incremental_request(buf, n, &lim, r, &req2);
    CHECK(rc == rc2);
    if (rc <= 0)
        return;
    size_t hl = (size_t)rc;
    CHECK(hl >= 16 && hl <= max_head);
    CHECK(memcmp(buf + hl - 4, "\r\n\r\n", 4) == 0);
    inside(req.method, req.method_len, buf, hl);
    inside(req.target, req.target_len, buf, hl);
    CHECK(req.method == (const char *)buf && req.method_len > 0 && req.target_len > 0);
    CHECK(req.minor_version == 0 || req.minor_version == 1);
    check_fields(req.fields, req.nfields, max_fields, buf, hl);
    CHECK(req.body == AV_H1_BODY_NONE || req.body == AV_H1_BODY_LENGTH || req.body == AV_H1_BODY_CHUNKED);
    CHECK(req.body == AV_H1_BODY_LENGTH || req.content_length == 0);
    CHECK(req.body != AV_H1_BODY_LENGTH || req.content_length <= UINT64_C(999999999999999999));
    CHECK(!!(req.flags & AV_H1_F_HAS_HOST) == (req.host != NULL));
    if (req.host)
        CHECK(req.host >= req.fields && req.host < req.fields + req.nfields && av__h1_name_eq(req.host, "host"));
    if (req.flags & (AV_H1_F_UPGRADE_WEBSOCKET | AV_H1_F_UPGRADE_H2C))
        CHECK(req.flags & AV_H1_F_UPGRADE);
    CHECK(!((req.flags & AV_H1_F_EXPECT_CONTINUE) && req.minor_version == 0));
    /* both parses see the same head */
    CHECK(req2.nfields == req.nfields && req2.body == req.body && req2.flags == req.flags &&
          req2.content_length == req.content_length);
    same_fields(req.fields, req.nfields, req2.fields, req2.nfields);
    for (size_t i = 0; i < req.nfields; i++)
        (void)av__h1_is_hop_by_hop(&req.fields[i], req.fields, req.nfields);
    reserialize_request(&req);
    check_body(req.body, req.content_length, buf + hl, n - hl, r);
}

/* fuzz_response checks the response parser and, on success, the body. */
static void fuzz_response(uint8_t mode, const uint8_t *buf, size_t n, rng *r)
{
    static av_h1_response resp, resp2;
    int was_head = (mode >> 2) & 1;
    int was_connect = (mode >> 3) & 1;
    av_h1_limits lim = {0, 0};
    if (mode & 0x10) {
        lim.max_head = 64 + (mode >> 5) * 32;
        lim.max_fields = 1 + (mode >> 5);
    }
    size_t max_head = lim.max_head ? lim.max_head : 65536;
    av_h1_scan scan = {0};
    ssize_t rc = av__h1_parse_response(buf, n, &lim, &scan, was_head, was_connect, &resp);
    CHECK(rc <= (ssize_t)n && rc >= AV_H1_ERR_CONNECTION);
    av_h1_scan s2 = {0};
    size_t k = 0;
    ssize_t rc2 = AV_H1_INCOMPLETE;
    while (k < n) {
        k += rng_step(r, 32);
        if (k > n)
            k = n;
        rc2 = av__h1_parse_response(buf, k, &lim, &s2, was_head, was_connect, &resp2);
        if (rc2 != AV_H1_INCOMPLETE)
            break;
    }
    CHECK(rc == rc2);
    if (rc <= 0)
        return;
    size_t hl = (size_t)rc;
    CHECK(hl <= max_head && hl >= 16);
    CHECK(resp.status >= 100 && resp.status <= 999);
    inside(resp.reason, resp.reason_len, buf, hl);
    check_fields(resp.fields, resp.nfields, lim.max_fields ? lim.max_fields : 100, buf, hl);
    CHECK(resp.body >= AV_H1_BODY_NONE && resp.body <= AV_H1_BODY_UNTIL_CLOSE);
    if (was_head || resp.status < 200 || resp.status == 204 || resp.status == 304)
        CHECK(resp.body == AV_H1_BODY_NONE);
    CHECK(resp2.status == resp.status && resp2.nfields == resp.nfields && resp2.body == resp.body &&
          resp2.flags == resp.flags && resp2.content_length == resp.content_length);
    same_fields(resp.fields, resp.nfields, resp2.fields, resp2.nfields);

    /* re-serialize and parse back */
    av_buf o;
    av__buf_init(&o, 1 << 20);
    char reason[1024];
    size_t rl = resp.reason_len < sizeof(reason) - 1 ? resp.reason_len : sizeof(reason) - 1;
    memcpy(reason, resp.reason, rl);
    reason[rl] = '\0';
    CHECK(av__h1_write_status_line(&o, resp.status, reason) == 0);
    for (size_t i = 0; i < resp.nfields; i++)
        CHECK(av__h1_write_field(&o, resp.fields[i].name, resp.fields[i].name_len, resp.fields[i].value,
                                 resp.fields[i].value_len) == 0);
    CHECK(av__h1_write_end(&o) == 0);
    av_h1_limits big = {1 << 20, AV_H1_MAX_FIELDS_CAP};
    av_h1_scan s3 = {0};
    rc2 = av__h1_parse_response(av__buf_head(&o), av__buf_len(&o), &big, &s3, was_head, was_connect, &resp2);
    CHECK(rc2 == (ssize_t)av__buf_len(&o));
    CHECK(resp2.status == resp.status);
    same_fields(resp.fields, resp.nfields, resp2.fields, resp2.nfields);
    av__buf_free(&o);

    check_body(resp.body, resp.content_length, buf + hl, n - hl, r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    size_t n = size - 1;
    uint8_t *buf = malloc(n ? n : 1);
    CHECK(buf);
    memcpy(buf, data + 1, n);
    rng r;
    rng_seed(&r, data, size);
    switch (mode & 3) {
    case 0:
        fuzz_request(mode, buf, n, &r);
        break;
    case 1:
        fuzz_response(mode, buf, n, &r);
        break;
    case 2:
        check_body(AV_H1_BODY_CHUNKED, 0, buf, n, &r);
        check_trailers(buf, n, &r, mode);
        break;
    default: {
        uint64_t cl = (uint64_t)(mode >> 3) * 7;
        check_body((mode & 4) ? AV_H1_BODY_UNTIL_CLOSE : AV_H1_BODY_LENGTH, cl, buf, n, &r);
        break;
    }
    }
    free(buf);
    return 0;
}
