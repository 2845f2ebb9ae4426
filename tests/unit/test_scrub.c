/* test_scrub.c - response scrubbing.
 *
 * Encoded forms are produced here by independent code (or written out by
 * hand) and pushed through the scrubber in every way a network can cut
 * them: one piece, every split into two, byte by byte, random pieces, tiny
 * output buffers. Compressed bodies are made and checked with zlib.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <zlib.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_mem.h"
#include "av_scrub.h"
#include "av_secret.h"

#define MARK AV_SCRUB_MARKER
#define KEY1 "sk-proj-Zq8v1N3xYt7LmP0aBcDeFgHiJkLmNoPqRsTuVwXyZ012"
#define KEY2 "ghp_4fT9kLmQ2rS8vW1xY5zA7bC3dE6gH0jK"

/* ---- helpers ------------------------------------------------------------- */

static void *memfind(const void *h, size_t hn, const void *n, size_t nn)
{
    if (nn == 0 || hn < nn)
        return NULL;
    const uint8_t *p = h;
    for (size_t i = 0; i + nn <= hn; i++)
        if (p[i] == *(const uint8_t *)n && memcmp(p + i, n, nn) == 0)
            return (void *)(p + i);
    return NULL;
}

static size_t count_of(const void *h, size_t hn, const char *n)
{
    size_t c = 0, nn = strlen(n);
    const uint8_t *p = h, *end = p + hn;
    const uint8_t *f;
    while ((f = memfind(p, (size_t)(end - p), n, nn)) != NULL) {
        c++;
        p = f + nn;
    }
    return c;
}

/* an independent base64 encoder (RFC 4648 section 4 / 5) */
static size_t b64enc(const uint8_t *s, size_t n, char *o, int url, int pad)
{
    const char *a = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                        : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t w = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        o[w++] = a[v >> 18];
        o[w++] = a[(v >> 12) & 63];
        o[w++] = a[(v >> 6) & 63];
        o[w++] = a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        o[w++] = a[v >> 18];
        o[w++] = a[(v >> 12) & 63];
        if (pad) {
            o[w++] = '=';
            o[w++] = '=';
        }
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        o[w++] = a[v >> 18];
        o[w++] = a[(v >> 12) & 63];
        o[w++] = a[(v >> 6) & 63];
        if (pad)
            o[w++] = '=';
    }
    o[w] = 0;
    return w;
}

/* pct percent-encodes; |keep| lists the bytes kept besides alnum (NULL:
 * keep nothing, not even alnum). */
static size_t pct(const char *s, char *o, const char *keep, int lower)
{
    const char *hex = lower ? "0123456789abcdef" : "0123456789ABCDEF";
    size_t w = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (keep && (alnum || strchr(keep, c))) {
            o[w++] = (char)c;
        } else {
            o[w++] = '%';
            o[w++] = hex[c >> 4];
            o[w++] = hex[c & 15];
        }
    }
    o[w] = 0;
    return w;
}

typedef struct secrets {
    av_secret *s[4];
    size_t n;
} secrets;

static void sec_init(secrets *ss, const char *a, const char *b)
{
    memset(ss, 0, sizeof(*ss));
    if (a)
        ss->s[ss->n++] = av__secret_new(a, strlen(a));
    if (b)
        ss->s[ss->n++] = av__secret_new(b, strlen(b));
    for (size_t i = 0; i < ss->n; i++)
        assert_non_null(ss->s[i]);
}

static void sec_free(secrets *ss)
{
    for (size_t i = 0; i < ss->n; i++)
        av__secret_free(ss->s[i]);
}

static const av_secret *const *SV(secrets *ss)
{
    return (const av_secret *const *)ss->s;
}

/* A result: malloc'd bytes (NUL-terminated) and the count. */
typedef struct result {
    uint8_t *p;
    size_t n;
    unsigned long count;
    int rc;
    size_t max_held;
} result;

static void result_free(result *r)
{
    free(r->p);
    memset(r, 0, sizeof(*r));
}

/* run feeds |in| in pieces of the sizes |cuts| returns (cuts(i) > 0), with
 * an output buffer of |out_max| bytes that is drained whenever the
 * scrubber reports LIMIT (and at the end). */
typedef size_t (*cut_fn)(size_t i, size_t left, void *ud);

static size_t cut_all(size_t i, size_t left, void *ud)
{
    (void)i;
    (void)ud;
    return left;
}

static size_t cut_one(size_t i, size_t left, void *ud)
{
    (void)i;
    (void)left;
    (void)ud;
    return 1;
}

static size_t cut_at(size_t i, size_t left, void *ud)
{
    size_t at = *(size_t *)ud;
    (void)left;
    return i == 0 && at > 0 ? at : left;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t cut_random(size_t i, size_t left, void *ud)
{
    (void)i;
    size_t max = ud ? *(size_t *)ud : 64;
    size_t n = 1 + (size_t)(rnd() % max);
    return n < left ? n : left;
}

static void drain(av_buf *out, result *r, size_t *cap)
{
    size_t n = av__buf_len(out);
    if (r->n + n + 1 > *cap) {
        while (r->n + n + 1 > *cap)
            *cap = *cap ? *cap * 2 : 4096;
        r->p = realloc(r->p, *cap);
        assert_non_null(r->p);
    }
    if (n)
        memcpy(r->p + r->n, av__buf_head(out), n);
    r->n += n;
    r->p[r->n] = 0;
    av__buf_consume(out, n);
}

static result run_ex(av_scrub *s, const void *in, size_t len, cut_fn cuts, void *ud,
                     size_t out_max)
{
    result r;
    memset(&r, 0, sizeof(r));
    size_t cap = 0;
    av_buf out;
    av__buf_init(&out, out_max);
    const uint8_t *p = in;
    size_t off = 0, piece = 0;
    drain(&out, &r, &cap);
    while (off < len) {
        size_t n = cuts(piece++, len - off, ud);
        if (n > len - off)
            n = len - off;
        size_t pos = 0;
        for (;;) {
            size_t took = 0;
            int rc = av__scrub_feed(s, p + off + pos, n - pos, &took, &out);
            pos += took;
            if (av__scrub_held(s) > r.max_held)
                r.max_held = av__scrub_held(s);
            assert_true(av__scrub_held(s) <= av__scrub_window(s));
            if (rc == AV_ERR_LIMIT) {
                assert_true(av__buf_len(&out) > 0);
                drain(&out, &r, &cap);
                continue;
            }
            if (rc != AV_OK) {
                r.rc = rc;
                goto done;
            }
            assert_int_equal(pos, n);
            break;
        }
        off += n;
    }
    for (;;) {
        int rc = av__scrub_finish(s, &out);
        drain(&out, &r, &cap);
        if (rc == AV_ERR_LIMIT)
            continue;
        r.rc = rc;
        break;
    }
done:
    drain(&out, &r, &cap);
    r.count = av__scrub_count(s);
    av__buf_free(&out);
    return r;
}

static result run(secrets *ss, int enc, const void *in, size_t len, cut_fn cuts, void *ud,
                  size_t out_max)
{
    av_scrub *s = NULL;
    assert_int_equal(av__scrub_new(&s, SV(ss), ss->n, enc), AV_OK);
    result r = run_ex(s, in, len, cuts, ud, out_max);
    av__scrub_free(s);
    return r;
}

/* scrub1 scrubs a string in one piece (identity) and returns the result. */
static result scrub1(secrets *ss, const char *in)
{
    result r = run(ss, AV_SCRUB_IDENTITY, in, strlen(in), cut_all, NULL, 1 << 20);
    assert_int_equal(r.rc, AV_OK);
    return r;
}

static void expect(secrets *ss, const char *in, const char *want, unsigned long count)
{
    result r = scrub1(ss, in);
    if (strcmp((char *)r.p, want) != 0)
        fail_msg("scrub(%s)\n  got  %s\n  want %s", in, (char *)r.p, want);
    assert_int_equal(r.count, count);
    result_free(&r);
}

/* ---- encodings -------------------------------------------------------------- */

static void raw_in_middle(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, NULL);
    expect(&ss, "before " KEY1 " after", "before " MARK " after", 1);
    expect(&ss, KEY1, MARK, 1);
    expect(&ss, "{\"k\":\"" KEY1 "\"}", "{\"k\":\"" MARK "\"}", 1);
    expect(&ss, "nothing here", "nothing here", 0);
    expect(&ss, "", "", 0);
    sec_free(&ss);
}

/* base64: the secret at every alignment inside a longer blob, both
 * alphabets, padded or not; only characters that encode secret bits alone
 * may be replaced, and none of them may survive. */
static void base64_every_alignment(void **state)
{
    (void)state;
    const char *keys[] = {KEY1, KEY2, "p4ss+/w0rd?>~\xff\xfe\x01 end", "12345678"};
    for (size_t ki = 0; ki < 4; ki++) {
        secrets ss;
        sec_init(&ss, keys[ki], NULL);
        const uint8_t *k = (const uint8_t *)keys[ki];
        size_t kl = strlen(keys[ki]);
        for (int url = 0; url < 2; url++) {
            for (size_t pre = 0; pre < 6; pre++) {
                for (size_t post = 0; post < 4; post++) {
                    for (int pad = 0; pad < 2; pad++) {
                        uint8_t blob[256];
                        memcpy(blob, "\x01\x02\x03\x04\x05\x06", pre);
                        memcpy(blob + pre, k, kl);
                        memcpy(blob + pre + kl, "\x07\x08\x09", post);
                        char enc[512], text[600];
                        b64enc(blob, pre + kl + post, enc, url, pad);
                        snprintf(text, sizeof(text), "data: {\"b\":\"%s\"}\n\n", enc);
                        result r = scrub1(&ss, text);
                        assert_true(r.count >= 1);
                        assert_non_null(strstr((char *)r.p, MARK));
                        assert_int_equal(strncmp((char *)r.p, "data: {\"b\":\"", 12), 0);
                        assert_non_null(strstr((char *)r.p, "\"}\n\n"));
                        /* the stable part of this alignment is gone: no run
                         * of 6 characters encoding only secret bits
                         * survives */
                        size_t j0 = (8 * pre + 5) / 6, j1 = 8 * (pre + kl) / 6;
                        for (size_t j = j0; j + 6 <= j1; j++) {
                            char w[7];
                            memcpy(w, enc + j, 6);
                            w[6] = 0;
                            if (strstr((char *)r.p, w))
                                fail_msg("key %zu url %d pre %zu post %zu: %s survives in %s",
                                         ki, url, pre, post, w, (char *)r.p);
                        }
                        /* characters before the secret's are kept */
                        size_t keep = (8 * pre) / 6;
                        assert_int_equal(strncmp((char *)r.p + 12, enc, keep), 0);
                        result_free(&r);
                    }
                }
            }
        }
        /* the whole blob is exactly the secret: replaced whole, padding too */
        char enc[512], text[600];
        b64enc(k, kl, enc, 0, 1);
        snprintf(text, sizeof(text), "Basic %s;", enc);
        result r = scrub1(&ss, text);
        assert_string_equal((char *)r.p, "Basic " MARK ";");
        result_free(&r);
        b64enc(k, kl, enc, 1, 0);
        snprintf(text, sizeof(text), "t=%s;", enc);
        r = scrub1(&ss, text);
        assert_string_equal((char *)r.p, "t=" MARK ";");
        result_free(&r);
        sec_free(&ss);
    }
}

static void percent_forms(void **state)
{
    (void)state;
    const char *key = "ab/c+d e=f&g~h.i_j-k!*'()";
    secrets ss;
    sec_init(&ss, key, NULL);
    char enc[256], text[512];
    struct {
        const char *keep;
        int lower;
    } forms[] = {
        {NULL, 0}, {NULL, 1}, {"-._~", 0}, {"-._~", 1}, {"-._~/", 0}, {"-._~!*'()", 0},
    };
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        pct(key, enc, forms[i].keep, forms[i].lower);
        snprintf(text, sizeof(text), "Location: https://x.test/cb?token=%s&state=1", enc);
        result r = scrub1(&ss, text);
        if (strcmp((char *)r.p, "Location: https://x.test/cb?token=" MARK "&state=1") != 0)
            fail_msg("form %zu (%s): %s", i, enc, (char *)r.p);
        assert_int_equal(r.count, 1);
        result_free(&r);
    }
    /* application/x-www-form-urlencoded: space as '+', * - . _ kept */
    expect(&ss, "k=ab%2Fc%2Bd+e%3Df%26g%7Eh.i_j-k%21*%27%28%29&z",
           "k=" MARK "&z", 1);
    sec_free(&ss);

    /* base64 of the secret in a query string, with + / = percent-encoded */
    const char *k2 = "\xfb\xff\xbf secret bytes \xfe\xff";
    sec_init(&ss, k2, NULL);
    char b[128];
    b64enc((const uint8_t *)k2, strlen(k2), b, 0, 1);
    assert_non_null(strpbrk(b, "+/="));
    pct(b, enc, "-._~", 0);
    snprintf(text, sizeof(text), "?t=%s&", enc);
    result r = scrub1(&ss, text);
    assert_string_equal((char *)r.p, "?t=" MARK "&");
    result_free(&r);
    sec_free(&ss);
}

static void json_forms(void **state)
{
    (void)state;
    /* s k " a b \ c / d é 😀 < = \n ' x */
    const char *key = "sk\"ab\\c/d\xc3\xa9\xf0\x9f\x98\x80<=\n'x";
    secrets ss;
    sec_init(&ss, key, NULL);
    const char *forms[] = {
        /* JSON.stringify, serde_json */
        "sk\\\"ab\\\\c/d\xc3\xa9\xf0\x9f\x98\x80<=\\n'x",
        /* Python json.dumps */
        "sk\\\"ab\\\\c/d\\u00e9\\ud83d\\ude00<=\\n'x",
        /* Jackson / Java, upper-case hex */
        "sk\\\"ab\\\\c/d\\u00E9\\uD83D\\uDE00<=\\n'x",
        /* PHP json_encode */
        "sk\\\"ab\\\\c\\/d\\u00e9\\ud83d\\ude00<=\\n'x",
        /* Go encoding/json */
        "sk\\\"ab\\\\c/d\xc3\xa9\xf0\x9f\x98\x80\\u003c=\\n'x",
        /* Gson */
        "sk\\\"ab\\\\c/d\xc3\xa9\xf0\x9f\x98\x80\\u003c\\u003d\\n\\u0027x",
    };
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        char text[512];
        snprintf(text, sizeof(text), "{\"error\":\"bad key %s given\"}", forms[i]);
        result r = scrub1(&ss, text);
        if (strcmp((char *)r.p, "{\"error\":\"bad key " MARK " given\"}") != 0)
            fail_msg("form %zu: %s", i, (char *)r.p);
        assert_int_equal(r.count, 1);
        result_free(&r);
    }
    /* raw too */
    char text[256];
    snprintf(text, sizeof(text), "<%s>", key);
    result r = scrub1(&ss, text);
    assert_string_equal((char *)r.p, "<" MARK ">");
    result_free(&r);
    sec_free(&ss);

    /* a control byte other than \b\f\n\r\t: \u001f */
    sec_init(&ss, "abc\x1f" "defgh", NULL);
    expect(&ss, "[\"abc\\u001fdefgh\"]", "[\"" MARK "\"]", 1);
    expect(&ss, "[\"abc\\u001Fdefgh\"]", "[\"" MARK "\"]", 1);
    sec_free(&ss);

    /* JSON-escaped base64 (PHP escapes '/') */
    const char *k3 = "\xff\xff\xff\xff\xff\xff\xff\xff\xff";
    sec_init(&ss, k3, NULL);
    expect(&ss, "{\"b\":\"\\/\\/\\/\\/\\/\\/\\/\\/\\/\\/\\/\\/\"}", "{\"b\":\"" MARK "\"}", 1);
    sec_free(&ss);
}

/* all encodings at once, for the chunking tests */
static char *mixed_body(size_t *len)
{
    char b64[128], p[256];
    size_t cap = 8192, n = 0;
    char *s = malloc(cap);
    assert_non_null(s);
    n += (size_t)snprintf(s + n, cap - n, "{\"a\":\"%s\",", KEY1);
    b64enc((const uint8_t *)"xy" KEY2 "z", strlen(KEY2) + 3, b64, 0, 1);
    n += (size_t)snprintf(s + n, cap - n, "\"b\":\"%s\",", b64);
    b64enc((const uint8_t *)"x" KEY1, strlen(KEY1) + 1, b64, 1, 0);
    n += (size_t)snprintf(s + n, cap - n, "\"c\":\"%s\",", b64);
    pct(KEY2, p, NULL, 1);
    n += (size_t)snprintf(s + n, cap - n, "\"d\":\"%s\",", p);
    n += (size_t)snprintf(s + n, cap - n, "\"e\":\"%s%s\",", KEY2, KEY2);  /* adjacent */
    n += (size_t)snprintf(s + n, cap - n, "\"f\":\"sk-proj-Zq8v1N3xYt7LmP0aBcDeFgHiJkLmNoPqRsTuVwXyZ01\",");
    n += (size_t)snprintf(s + n, cap - n, "\"g\":\"%%73%%6B%%2D%%70\"}\n");
    *len = n;
    return s;
}

#define MIXED_WANT                                                                         \
    "{\"a\":\"" MARK "\",\"b\":\"eHl" MARK "t6\",\"c\":\"eH" MARK "I\",\"d\":\"" MARK      \
    "\",\"e\":\"" MARK MARK "\",\"f\":\"sk-proj-Zq8v1N3xYt7LmP0aBcDeFgHiJkLmNoPqRsTuVwXyZ01\"," \
    "\"g\":\"%73%6B%2D%70\"}\n"

static void every_split_point(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, KEY2);
    size_t len;
    char *body = mixed_body(&len);
    result one = run(&ss, AV_SCRUB_IDENTITY, body, len, cut_all, NULL, 1 << 20);
    assert_int_equal(one.rc, AV_OK);
    if (strcmp((char *)one.p, MIXED_WANT) != 0)
        fail_msg("got  %s\nwant %s", (char *)one.p, MIXED_WANT);
    assert_int_equal(one.count, 6);
    for (size_t at = 0; at <= len; at++) {
        result r = run(&ss, AV_SCRUB_IDENTITY, body, len, cut_at, &at, 1 << 20);
        assert_int_equal(r.rc, AV_OK);
        assert_int_equal(r.n, one.n);
        assert_memory_equal(r.p, one.p, one.n);
        assert_int_equal(r.count, one.count);
        result_free(&r);
    }
    result r = run(&ss, AV_SCRUB_IDENTITY, body, len, cut_one, NULL, 1 << 20);
    assert_int_equal(r.n, one.n);
    assert_memory_equal(r.p, one.p, one.n);
    assert_int_equal(r.count, one.count);
    result_free(&r);
    for (int i = 0; i < 200; i++) {
        size_t max = 1 + (size_t)(rnd() % 97);
        r = run(&ss, AV_SCRUB_IDENTITY, body, len, cut_random, &max, 1 << 20);
        assert_int_equal(r.n, one.n);
        assert_memory_equal(r.p, one.p, one.n);
        result_free(&r);
    }
    free(body);
    result_free(&one);
    sec_free(&ss);
}

/* a tiny output buffer: LIMIT, partial consumption, retry */
static void small_output_buffer(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, KEY2);
    size_t len;
    char *body = mixed_body(&len);
    av_scrub *s = NULL;
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_IDENTITY), AV_OK);
    size_t min = av__scrub_min_room(s);
    /* too small for even one marker, and empty: refused, not a livelock */
    av_buf tiny;
    av__buf_init(&tiny, AV_SCRUB_MARKER_LEN);
    size_t took = 99;
    assert_int_equal(av__scrub_feed(s, (const uint8_t *)body, len, &took, &tiny), AV_ERR_INVALID);
    assert_int_equal(took, 0);
    av__buf_free(&tiny);
    for (size_t extra = 0; extra < 40; extra += 7) {
        result r = run_ex(s, body, len, cut_all, NULL, min + extra);
        assert_int_equal(r.rc, AV_OK);
        assert_string_equal((char *)r.p, MIXED_WANT);
        result_free(&r);
        av__scrub_free(s);
        assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_IDENTITY), AV_OK);
    }
    av__scrub_free(s);
    free(body);
    sec_free(&ss);

    /* short patterns (many markers per byte of room): exactly the minimum
     * room always allows progress, whatever is held */
    sec_init(&ss, "abc", "ab");
    const char *t = "xabyabcabcaba-ab";
    result one = run(&ss, AV_SCRUB_IDENTITY, t, strlen(t), cut_all, NULL, 1 << 20);
    assert_string_equal((char *)one.p, "x" MARK "y" MARK MARK MARK "a-" MARK);
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_IDENTITY), AV_OK);
    min = av__scrub_min_room(s);
    for (size_t extra = 0; extra < 12; extra++) {
        result r = run_ex(s, t, strlen(t), cut_one, NULL, min + extra);
        assert_int_equal(r.rc, AV_OK);
        assert_string_equal((char *)r.p, (char *)one.p);
        result_free(&r);
        av__scrub_free(s);
        assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_IDENTITY), AV_OK);
    }
    av__scrub_free(s);
    result_free(&one);
    sec_free(&ss);
}

static void overlapping_and_adjacent(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, "abcabcab", NULL);
    /* occurrences at 0 and 3 overlap: one marker over both */
    expect(&ss, "<abcabcabcab>", "<" MARK ">", 1);
    /* adjacent: two markers */
    expect(&ss, "<abcabcababcabcab>", "<" MARK MARK ">", 2);
    /* separated */
    expect(&ss, "abcabcab-abcabcab", MARK "-" MARK, 2);
    sec_free(&ss);
    /* two secrets overlapping each other */
    sec_init(&ss, "AAAABBBB", "BBBBCCCC");
    expect(&ss, "xAAAABBBBCCCCy", "x" MARK "y", 1);
    expect(&ss, "xAAAABBBBBBBBCCCCy", "x" MARK MARK "y", 2);
    sec_free(&ss);
    /* one secret inside another */
    sec_init(&ss, "0123456789abcdef", "456789ab");
    expect(&ss, "-0123456789abcdef-456789ab-", "-" MARK "-" MARK "-", 2);
    sec_free(&ss);
    /* a short pattern ending first, a long one starting earlier ending later */
    sec_init(&ss, "zzzzzzzzXXXXXXXX", "XXXXYYYY");
    expect(&ss, "zzzzzzzzXXXXXXXX", MARK, 1);
    expect(&ss, "zzzzzzzzXXXXYYYY", "zzzzzzzz" MARK, 1);
    sec_free(&ss);
}

static void near_misses(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, NULL);
    const char *miss[] = {
        "sk-proj-Zq8v1N3xYt7LmP0aBcDeFgHiJkLmNoPqRsTuVwXyZ01",   /* truncated */
        "sk-proj-Zq8v1N3xYt7LmP0aBcDeFgHiJkLmNoPqRsTuVwXyZ013",  /* last byte */
        "Xk-proj-Zq8v1N3xYt7LmP0aBcDeFgHiJkLmNoPqRsTuVwXyZ012",  /* first byte */
        "sk-proj-Zq8v1N3xYt7LmP0aBcDeFgHiJkLmnoPqRsTuVwXyZ012",  /* case */
        "k-proj-Zq8v1N3xYt7LmP0aBcDeFgHiJkLmNoPqRsTuVwXyZ012",   /* first byte dropped */
        "%73%6B%2D%70%72%6F%6A%2D%5A%71%38%76%31%4E%33%78%59", /* percent prefix */
        "sk-proj-Zq8v1N3xYt7LmP0aBcDe",
        "the quick brown fox jumps over the lazy dog 0123456789 +/= %20 \\u0041",
    };
    for (size_t i = 0; i < sizeof(miss) / sizeof(miss[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "[%s]", miss[i]);
        expect(&ss, text, text, 0);
    }
    /* base64 of a near miss (a middle byte differs) is kept as is */
    char nm[] = KEY1, enc[256];
    nm[25] ^= 1;
    for (size_t pre = 0; pre < 3; pre++) {
        uint8_t blob[96];
        memcpy(blob, "\x01\x02", pre);
        memcpy(blob + pre, nm, strlen(nm));
        b64enc(blob, pre + strlen(nm), enc, 0, 1);
        expect(&ss, enc, enc, 0);
    }
    /* percent-encoded near miss */
    pct(nm, enc, NULL, 0);
    expect(&ss, enc, enc, 0);
    sec_free(&ss);
}

static void short_and_empty_secrets(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, "", "abc");
    /* empty secret ignored; short secret: raw form only */
    expect(&ss, "xabcx abab", "x" MARK "x abab", 1);
    expect(&ss, "YWJj %61%62%63", "YWJj %61%62%63", 0);
    av_scrub *s = NULL;
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_IDENTITY), AV_OK);
    assert_int_equal(av__scrub_window(s), 2);
    av__scrub_free(s);
    sec_free(&ss);
    /* no secrets at all: pass-through */
    sec_init(&ss, "", NULL);
    expect(&ss, "anything at all", "anything at all", 0);
    sec_free(&ss);
    assert_int_equal(av__scrub_new(&s, NULL, 0, AV_SCRUB_IDENTITY), AV_OK);
    assert_int_equal(av__scrub_window(s), 0);
    av__scrub_free(s);
    /* too long */
    char *big = malloc(AV_SCRUB_MAX_SECRET + 2);
    memset(big, 'k', AV_SCRUB_MAX_SECRET + 1);
    big[AV_SCRUB_MAX_SECRET + 1] = 0;
    sec_init(&ss, big, NULL);
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_IDENTITY), AV_ERR_LIMIT);
    assert_null(s);
    sec_free(&ss);
    free(big);
    assert_int_equal(av__scrub_new(&s, NULL, 0, 7), AV_ERR_INVALID);
}

static void count_accuracy(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, KEY2);
    char b64[128], p[256];
    size_t cap = 1 << 16, n = 0;
    char *s = malloc(cap);
    unsigned long want = 0;
    for (int i = 0; i < 50; i++) {
        switch (i % 5) {
        case 0: n += (size_t)snprintf(s + n, cap - n, "raw %s\n", i & 1 ? KEY1 : KEY2); break;
        case 1:
            b64enc((const uint8_t *)KEY1, strlen(KEY1), b64, i & 2, 1);
            n += (size_t)snprintf(s + n, cap - n, "b64 %s\n", b64);
            break;
        case 2:
            pct(KEY2, p, "-._~", i & 2);
            n += (size_t)snprintf(s + n, cap - n, "pct %s\n", p);
            break;
        case 3: n += (size_t)snprintf(s + n, cap - n, "json \"%s\"\n", KEY1); break;
        default: n += (size_t)snprintf(s + n, cap - n, "plain text line %d\n", i); want--; break;
        }
        want++;
    }
    size_t max = 13;
    result r = run(&ss, AV_SCRUB_IDENTITY, s, n, cut_random, &max, 1 << 20);
    assert_int_equal(r.rc, AV_OK);
    assert_int_equal(r.count, want);
    assert_int_equal(count_of(r.p, r.n, MARK), want);
    assert_null(memfind(r.p, r.n, KEY1, strlen(KEY1)));
    assert_null(memfind(r.p, r.n, KEY2, strlen(KEY2)));
    result_free(&r);
    free(s);
    sec_free(&ss);
}

/* held bytes never exceed the window, and only a possible partial match is
 * held: after a chunk that ends in bytes no pattern starts with, nothing is. */
static void window_bound(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, KEY2);
    av_scrub *s = NULL;
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_IDENTITY), AV_OK);
    size_t w = av__scrub_window(s), l1 = strlen(KEY1);
    /* every byte %XX is the longest form of an ASCII key: 3 x L - 1 */
    assert_true(w >= 3 * l1 - 1);
    assert_true(w <= 6 * l1 - 1);
    print_message("window for a %zu-byte key: %zu bytes\n", l1, w);
    /* prefixes of every pattern, fed byte by byte: the held count grows
     * with the partial match and never beyond w */
    char p[512];
    pct(KEY1, p, NULL, 0);
    size_t pl = strlen(p);
    av_buf out;
    av__buf_init(&out, 1 << 20);
    size_t took, maxheld = 0;
    for (size_t i = 0; i + 1 < pl; i++) {
        assert_int_equal(av__scrub_feed(s, (const uint8_t *)p + i, 1, &took, &out), AV_OK);
        assert_int_equal(av__scrub_held(s), i + 1);
        if (av__scrub_held(s) > maxheld)
            maxheld = av__scrub_held(s);
    }
    assert_true(maxheld <= w);
    assert_int_equal(av__buf_len(&out), 0);
    /* the end of the pattern arrives: replaced, nothing held */
    assert_int_equal(av__scrub_feed(s, (const uint8_t *)p + pl - 1, 1, &took, &out), AV_OK);
    assert_int_equal(av__scrub_held(s), 0);
    assert_int_equal(av__buf_len(&out), strlen(MARK));
    av__buf_reset(&out);
    /* an SSE event ending in "\n\n" is never held */
    const char *ev = "data: {\"delta\":\"hello sk-proj\"}\n\n";
    assert_int_equal(av__scrub_feed(s, (const uint8_t *)ev, strlen(ev), &took, &out), AV_OK);
    assert_int_equal(av__scrub_held(s), 0);
    assert_int_equal(av__buf_len(&out), strlen(ev));
    av__buf_reset(&out);
    /* ends in a partial secret: held until the end */
    assert_int_equal(av__scrub_feed(s, (const uint8_t *)"x sk-proj-Zq8", 13, &took, &out), AV_OK);
    assert_int_equal(av__scrub_held(s), 11);
    assert_int_equal(av__scrub_finish(s, &out), AV_OK);
    assert_int_equal(av__scrub_held(s), 0);
    assert_int_equal(av__buf_len(&out), 13);
    av__buf_free(&out);
    av__scrub_free(s);

    /* random text made of pieces of the patterns: held <= w at every step */
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_IDENTITY), AV_OK);
    size_t cap = 1 << 16, n = 0;
    char *body = malloc(cap);
    while (n + 300 < cap) {
        const char *src = rnd() % 2 ? KEY1 : p;
        size_t sl = strlen(src), a = rnd() % sl, b = a + rnd() % (sl - a);
        memcpy(body + n, src + a, b - a);
        n += b - a;
    }
    size_t max = 50;
    result r = run_ex(s, body, n, cut_random, &max, 4096); /* run_ex asserts held <= w */
    assert_int_equal(r.rc, AV_OK);
    assert_true(r.max_held <= w);
    print_message("max held over %zu bytes of pattern fragments: %zu\n", n, r.max_held);
    result_free(&r);
    free(body);
    av__scrub_free(s);
    sec_free(&ss);
}

static void header_helper(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, KEY2);
    char *o = NULL;
    size_t ol = 0;
    unsigned long c = 0;
    const char *v = "Bearer " KEY1;
    assert_int_equal(av__scrub_header_value(SV(&ss), ss.n, v, strlen(v), &o, &ol, &c), AV_OK);
    assert_string_equal(o, "Bearer " MARK);
    assert_int_equal(ol, strlen("Bearer " MARK));
    assert_int_equal(c, 1);
    av__free(o);
    char p[256], loc[512];
    pct(KEY2, p, "-._~", 1);
    snprintf(loc, sizeof(loc), "https://a.test/?k=%s&j=%s", p, KEY1);
    assert_int_equal(av__scrub_header_value(SV(&ss), ss.n, loc, strlen(loc), &o, &ol, &c), AV_OK);
    assert_string_equal(o, "https://a.test/?k=" MARK "&j=" MARK);
    assert_int_equal(c, 2);
    av__free(o);
    assert_int_equal(av__scrub_header_value(SV(&ss), ss.n, "", 0, &o, &ol, NULL), AV_OK);
    assert_string_equal(o, "");
    assert_int_equal(ol, 0);
    av__free(o);
    /* a header that is all markers (a 1-byte secret): the bound holds */
    av_secret *one = av__secret_new("a", 1);
    const av_secret *const ov[] = {one};
    assert_int_equal(av__scrub_header_value(ov, 1, "aaaa", 4, &o, &ol, &c), AV_OK);
    assert_string_equal(o, MARK MARK MARK MARK);
    assert_int_equal(c, 4);
    av__free(o);
    av__secret_free(one);
    sec_free(&ss);
}

static void encoding_parse(void **state)
{
    (void)state;
    assert_int_equal(av__scrub_encoding_parse("gzip", 4), AV_SCRUB_GZIP);
    assert_int_equal(av__scrub_encoding_parse(" X-GZip ", 8), AV_SCRUB_GZIP);
    assert_int_equal(av__scrub_encoding_parse("Deflate", 7), AV_SCRUB_DEFLATE);
    assert_int_equal(av__scrub_encoding_parse("identity", 8), AV_SCRUB_IDENTITY);
    assert_int_equal(av__scrub_encoding_parse("", 0), AV_SCRUB_IDENTITY);
    assert_int_equal(av__scrub_encoding_parse("br", 2), AV_ERR_INVALID);
    assert_int_equal(av__scrub_encoding_parse("gzip, br", 8), AV_ERR_INVALID);
}

/* ---- compressed bodies --------------------------------------------------- */

/* zcompress: wbits 31 gzip, 15 zlib, -15 raw. |flush_every| > 0 does a
 * Z_SYNC_FLUSH every that many input bytes. */
static uint8_t *zcompress(const void *in, size_t len, int wbits, size_t *outlen)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, wbits, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&z, (uLong)len) + 64;
    uint8_t *o = malloc(cap);
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = o;
    z.avail_out = (uInt)cap;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    *outlen = cap - z.avail_out;
    deflateEnd(&z);
    return o;
}

/* zinflate: the whole stream must be valid and complete when |complete|;
 * otherwise the bytes so far must inflate without error. */
static uint8_t *zinflate(const uint8_t *in, size_t len, int wbits, int complete, size_t *outlen)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(inflateInit2(&z, wbits), Z_OK);
    size_t cap = 1 << 16, n = 0;
    uint8_t *o = malloc(cap);
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    int r;
    do {
        if (cap - n < 4096) {
            cap *= 2;
            o = realloc(o, cap);
        }
        z.next_out = o + n;
        z.avail_out = (uInt)(cap - n - 1);
        r = inflate(&z, Z_NO_FLUSH);
        n = cap - 1 - z.avail_out;
        if (r == Z_STREAM_END)
            break;
        assert_true(r == Z_OK || r == Z_BUF_ERROR);
    } while (z.avail_out == 0 || z.avail_in > 0);
    if (complete) {
        assert_int_equal(r, Z_STREAM_END);
        assert_int_equal(z.avail_in, 0);
    }
    inflateEnd(&z);
    o[n] = 0;
    *outlen = n;
    return o;
}

static char *json_body(size_t target, size_t *len)
{
    char *b = malloc(target + 512);
    size_t n = 0;
    int i = 0;
    n += (size_t)sprintf(b + n, "{\"items\":[");
    while (n < target) {
        if (i % 97 == 13)
            n += (size_t)sprintf(b + n, "{\"id\":%d,\"token\":\"%s\"},", i, i % 2 ? KEY1 : KEY2);
        else
            n += (size_t)sprintf(b + n,
                                 "{\"id\":%d,\"name\":\"item %d\",\"note\":\"sk-proj lorem "
                                 "ipsum dolor sit amet %x\",\"ok\":true},",
                                 i, i * 7, (unsigned)(i * 2654435761u));
        i++;
    }
    n += (size_t)sprintf(b + n, "{}]}\n");
    *len = n;
    return b;
}

/* hexenc writes |n| bytes as hex digits (lower or upper case). */
static size_t hexenc(const uint8_t *s, size_t n, char *o, int upper)
{
    const char *hex = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        o[2 * i] = hex[s[i] >> 4];
        o[2 * i + 1] = hex[s[i] & 15];
    }
    o[2 * n] = 0;
    return 2 * n;
}

/* hex, lower and upper case, alone and JSON-quoted; split at every point,
 * byte by byte, and inside gzip / deflate bodies cut at random. */
static void hex_forms(void **state)
{
    (void)state;
    const char *keys[] = {KEY1, "\xfe\xff bin\x01\x7f\x80" "ary"};
    for (size_t ki = 0; ki < 2; ki++) {
        secrets ss;
        sec_init(&ss, keys[ki], NULL);
        const uint8_t *k = (const uint8_t *)keys[ki];
        size_t kl = strlen(keys[ki]);
        char lo[256], up[256], text[700], want[700];
        hexenc(k, kl, lo, 0);
        hexenc(k, kl, up, 1);
        snprintf(text, sizeof(text), "{\"lo\":\"%s\",\"up\":\"0x%s\"}\n", lo, up);
        snprintf(want, sizeof(want), "{\"lo\":\"" MARK "\",\"up\":\"0x" MARK "\"}\n");
        size_t len = strlen(text);
        result one = run(&ss, AV_SCRUB_IDENTITY, text, len, cut_all, NULL, 1 << 20);
        assert_int_equal(one.rc, AV_OK);
        if (strcmp((char *)one.p, want) != 0)
            fail_msg("key %zu: got %s\nwant %s", ki, (char *)one.p, want);
        assert_int_equal(one.count, 2);
        for (size_t at = 0; at <= len; at++) {
            result r = run(&ss, AV_SCRUB_IDENTITY, text, len, cut_at, &at, 1 << 20);
            assert_string_equal((char *)r.p, want);
            assert_int_equal(r.count, 2);
            result_free(&r);
        }
        result r = run(&ss, AV_SCRUB_IDENTITY, text, len, cut_one, NULL, 1 << 20);
        assert_string_equal((char *)r.p, want);
        result_free(&r);
        int wbits[] = {31, 15, -15};
        int encs[] = {AV_SCRUB_GZIP, AV_SCRUB_DEFLATE, AV_SCRUB_DEFLATE};
        for (size_t c = 0; c < 3; c++) {
            size_t zlen, dlen, piece = 5;
            uint8_t *z = zcompress(text, len, wbits[c], &zlen);
            r = run(&ss, encs[c], z, zlen, cut_random, &piece, 1 << 20);
            assert_int_equal(r.rc, AV_OK);
            uint8_t *d = zinflate(r.p, r.n, wbits[c], 1, &dlen);
            assert_int_equal(dlen, strlen(want));
            assert_memory_equal(d, want, dlen);
            assert_int_equal(r.count, 2);
            free(d);
            free(z);
            result_free(&r);
        }
        /* one digit off, or mixed case within the pattern: not the secret */
        lo[7] = lo[7] == '0' ? '1' : '0';
        snprintf(text, sizeof(text), "<%s>", lo);
        expect(&ss, text, text, 0);
        result_free(&one);
        sec_free(&ss);
    }
}

static void compressed_round_trip(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, KEY2);
    size_t plen;
    char *plain = json_body(200000, &plen);
    result want = run(&ss, AV_SCRUB_IDENTITY, plain, plen, cut_all, NULL, 1 << 22);
    assert_int_equal(want.rc, AV_OK);
    assert_true(want.count > 10);
    assert_null(memfind(want.p, want.n, KEY1, strlen(KEY1)));
    struct {
        int enc, wbits;
    } cases[] = {{AV_SCRUB_GZIP, 31}, {AV_SCRUB_DEFLATE, 15}, {AV_SCRUB_DEFLATE, -15},
                 {AV_SCRUB_GZIP, 15} /* zlib labelled gzip: inflated, re-sent as gzip */};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        size_t zlen;
        uint8_t *z = zcompress(plain, plen, cases[c].wbits, &zlen);
        size_t sizes[] = {7, 100, 1500};
        for (size_t si = 0; si < 3; si++) {
            size_t max = sizes[si];
            result r = run(&ss, cases[c].enc, z, zlen, cut_random, &max, si == 0 ? 300 : 70000);
            assert_int_equal(r.rc, AV_OK);
            int out_wbits = cases[c].enc == AV_SCRUB_GZIP ? 31 : cases[c].wbits;
            size_t dlen;
            uint8_t *d = zinflate(r.p, r.n, out_wbits, 1, &dlen);
            assert_int_equal(dlen, want.n);
            assert_memory_equal(d, want.p, want.n);
            assert_null(memfind(d, dlen, KEY1, strlen(KEY1)));
            assert_null(memfind(d, dlen, KEY2, strlen(KEY2)));
            assert_int_equal(r.count, want.count);
            free(d);
            result_free(&r);
        }
        free(z);
    }
    /* an output buffer of 1..8 bytes: the compressed layer still makes
     * progress and never repeats flush markers */
    {
        size_t zl;
        uint8_t *zs = zcompress(plain, 3000, 31, &zl);
        result w3 = run(&ss, AV_SCRUB_IDENTITY, plain, 3000, cut_all, NULL, 1 << 20);
        for (size_t om = 1; om <= 8; om++) {
            size_t piece = 40;
            result r = run(&ss, AV_SCRUB_GZIP, zs, zl, cut_random, &piece, om);
            assert_int_equal(r.rc, AV_OK);
            size_t dl;
            uint8_t *d = zinflate(r.p, r.n, 31, 1, &dl);
            assert_int_equal(dl, w3.n);
            assert_memory_equal(d, w3.p, dl);
            free(d);
            result_free(&r);
        }
        result_free(&w3);
        free(zs);
    }
    /* two gzip members back to back */
    size_t h = plen / 2, z1l, z2l;
    uint8_t *z1 = zcompress(plain, h, 31, &z1l), *z2 = zcompress(plain + h, plen - h, 31, &z2l);
    uint8_t *zz = malloc(z1l + z2l);
    memcpy(zz, z1, z1l);
    memcpy(zz + z1l, z2, z2l);
    size_t max = 333;
    result r = run(&ss, AV_SCRUB_GZIP, zz, z1l + z2l, cut_random, &max, 1 << 20);
    assert_int_equal(r.rc, AV_OK);
    size_t dlen;
    uint8_t *d = zinflate(r.p, r.n, 31, 1, &dlen);
    assert_null(memfind(d, dlen, KEY1, strlen(KEY1)));
    assert_null(memfind(d, dlen, KEY2, strlen(KEY2)));
    assert_true(dlen > want.n - 200 && dlen < want.n + 200);
    free(d);
    result_free(&r);
    free(z1);
    free(z2);
    free(zz);
    /* an empty compressed body stays empty */
    av_scrub *s = NULL;
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_GZIP), AV_OK);
    av_buf out;
    av__buf_init(&out, 1024);
    assert_int_equal(av__scrub_finish(s, &out), AV_OK);
    assert_int_equal(av__buf_len(&out), 0);
    av__buf_free(&out);
    av__scrub_free(s);
    free(plain);
    result_free(&want);
    sec_free(&ss);
}

/* SSE over gzip: the origin flushes per event; after each event is fed,
 * the output so far inflates to every event so far, scrubbed. */
static void gzip_streaming_sse(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, NULL);
    z_stream zo;
    memset(&zo, 0, sizeof(zo));
    assert_int_equal(deflateInit2(&zo, 6, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY), Z_OK);
    av_scrub *s = NULL;
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_GZIP), AV_OK);
    av_buf out;
    av__buf_init(&out, 1 << 20);
    char want[8192] = "";
    for (int i = 0; i < 20; i++) {
        char ev[256], evw[256];
        if (i % 3 == 1) {
            snprintf(ev, sizeof(ev), "data: {\"n\":%d,\"t\":\"%s\"}\n\n", i, KEY1);
            snprintf(evw, sizeof(evw), "data: {\"n\":%d,\"t\":\"" MARK "\"}\n\n", i);
        } else {
            snprintf(ev, sizeof(ev), "data: {\"n\":%d,\"t\":\"token %d\"}\n\n", i, i);
            strcpy(evw, ev);
        }
        strcat(want, evw);
        uint8_t zb[512];
        zo.next_in = (Bytef *)ev;
        zo.avail_in = (uInt)strlen(ev);
        zo.next_out = zb;
        zo.avail_out = sizeof(zb);
        assert_int_equal(deflate(&zo, Z_SYNC_FLUSH), Z_OK);
        size_t zn = sizeof(zb) - zo.avail_out, took;
        assert_int_equal(av__scrub_feed(s, zb, zn, &took, &out), AV_OK);
        assert_int_equal(took, zn);
        size_t dlen;
        uint8_t *d = zinflate(av__buf_head(&out), av__buf_len(&out), 31, 0, &dlen);
        assert_int_equal(dlen, strlen(want));
        assert_memory_equal(d, want, dlen);
        free(d);
    }
    uint8_t zb[64];
    zo.next_in = NULL;
    zo.avail_in = 0;
    zo.next_out = zb;
    zo.avail_out = sizeof(zb);
    assert_int_equal(deflate(&zo, Z_FINISH), Z_STREAM_END);
    size_t took;
    assert_int_equal(av__scrub_feed(s, zb, sizeof(zb) - zo.avail_out, &took, &out), AV_OK);
    assert_int_equal(av__scrub_finish(s, &out), AV_OK);
    size_t dlen;
    uint8_t *d = zinflate(av__buf_head(&out), av__buf_len(&out), 31, 1, &dlen);
    assert_string_equal((char *)d, want);
    free(d);
    deflateEnd(&zo);
    av__buf_free(&out);
    av__scrub_free(s);
    sec_free(&ss);
}

static void decompression_bomb_and_corruption(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, NULL);
    /* 16 MiB of zeros: ~16 KiB of gzip, ratio ~1000 */
    size_t blen = 16u << 20, zlen;
    uint8_t *zeros = calloc(1, blen);
    uint8_t *z = zcompress(zeros, blen, 31, &zlen);
    free(zeros);
    av_scrub *s = NULL;
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_GZIP), AV_OK);
    av_buf out;
    av__buf_init(&out, 1 << 16);
    size_t off = 0, took;
    int rc = AV_OK;
    size_t produced = 0;
    while (off < zlen) {
        rc = av__scrub_feed(s, z + off, zlen - off > 1000 ? 1000 : zlen - off, &took, &out);
        off += took;
        produced += av__buf_len(&out);
        av__buf_reset(&out);
        if (rc != AV_OK && rc != AV_ERR_LIMIT)
            break;
    }
    assert_int_equal(rc, AV_ERR_DENIED);
    assert_true(produced < (2u << 20)); /* stopped soon after 1 MiB expanded */
    /* sticky */
    assert_int_equal(av__scrub_feed(s, z, 10, &took, &out), AV_ERR_DENIED);
    assert_int_equal(took, 0);
    assert_int_equal(av__scrub_finish(s, &out), AV_ERR_DENIED);
    av__scrub_free(s);
    free(z);

    /* the absolute bound (set low here): text compressing ~5x */
    size_t plen;
    char *plain = json_body(300000, &plen);
    z = zcompress(plain, plen, 31, &zlen);
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_GZIP), AV_OK);
    av__scrub_set_limits(s, 100000, 0);
    result r = run_ex(s, z, zlen, cut_all, NULL, 1 << 20);
    assert_int_equal(r.rc, AV_ERR_DENIED);
    result_free(&r);
    av__scrub_free(s);
    /* within the default bounds the same body passes */
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_GZIP), AV_OK);
    r = run_ex(s, z, zlen, cut_all, NULL, 1 << 20);
    assert_int_equal(r.rc, AV_OK);
    result_free(&r);
    av__scrub_free(s);

    /* truncated: finish says PARSE */
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_GZIP), AV_OK);
    r = run_ex(s, z, zlen / 2, cut_all, NULL, 1 << 20);
    assert_int_equal(r.rc, AV_ERR_PARSE);
    result_free(&r);
    av__scrub_free(s);
    /* corrupt */
    z[zlen / 2] ^= 0x55;
    z[zlen / 2 + 1] ^= 0xaa;
    z[zlen / 2 + 2] ^= 0x0f;
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_GZIP), AV_OK);
    r = run_ex(s, z, zlen, cut_all, NULL, 1 << 20);
    assert_int_equal(r.rc, AV_ERR_PARSE);
    result_free(&r);
    av__scrub_free(s);
    /* not gzip at all */
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_GZIP), AV_OK);
    r = run_ex(s, "hello world, not gzip", 21, cut_all, NULL, 1 << 20);
    assert_int_equal(r.rc, AV_ERR_PARSE);
    result_free(&r);
    av__scrub_free(s);
    /* garbage after a complete zlib stream */
    free(z);
    z = zcompress("abc", 3, 15, &zlen);
    z = realloc(z, zlen + 3);
    memcpy(z + zlen, "xyz", 3);
    assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, AV_SCRUB_DEFLATE), AV_OK);
    r = run_ex(s, z, zlen + 3, cut_one, NULL, 1 << 20);
    assert_int_equal(r.rc, AV_ERR_PARSE);
    result_free(&r);
    av__scrub_free(s);
    free(z);
    av__buf_free(&out);
    free(plain);
    sec_free(&ss);
}

/* ---- memory ---------------------------------------------------------------- */

/* A counting allocator that also checks, on every free, that the block no
 * longer holds the secret or a base64 form of it. */
static size_t mem_now, fail_at, alloc_count, dirty_frees, nonzero_frees;
static int want_zero; /* every block freed now must be all zero */
static const char *watch1;
static char watch2[128];
typedef struct {
    size_t n;
    size_t pad;
} mhdr;

static void *t_malloc(size_t n, void *ud)
{
    (void)ud;
    if (fail_at && ++alloc_count == fail_at)
        return NULL;
    mhdr *h = malloc(sizeof(mhdr) + n);
    if (!h)
        return NULL;
    h->n = n;
    mem_now += n;
    return h + 1;
}

static void t_free(void *p, void *ud)
{
    (void)ud;
    if (!p)
        return;
    mhdr *h = (mhdr *)p - 1;
    if ((watch1 && memfind(p, h->n, watch1, strlen(watch1))) ||
        (watch2[0] && memfind(p, h->n, watch2, strlen(watch2))))
        dirty_frees++;
    if (want_zero)
        for (size_t i = 0; i < h->n; i++)
            if (((uint8_t *)p)[i]) {
                nonzero_frees++;
                break;
            }
    mem_now -= h->n;
    free(h);
}

static void *t_realloc(void *p, size_t n, void *ud)
{
    if (!p)
        return t_malloc(n, ud);
    mhdr *h = (mhdr *)p - 1;
    void *q = t_malloc(n, ud);
    if (!q)
        return NULL;
    memcpy(q, p, h->n < n ? h->n : n);
    t_free(p, ud);
    return q;
}

static void wiped_on_free(void **state)
{
    (void)state;
    assert_int_equal(av_set_allocator(t_malloc, t_realloc, t_free, NULL), 0);
    mem_now = 0;
    fail_at = 0;
    dirty_frees = 0;
    watch1 = KEY1;
    b64enc((const uint8_t *)KEY1 + 3, 30, watch2, 0, 0); /* inside every alignment */
    secrets ss;
    sec_init(&ss, KEY1, NULL);
    size_t plen, zlen;
    char *plain = json_body(50000, &plen);
    uint8_t *z = zcompress(plain, plen, 31, &zlen);
    plain = realloc(plain, plen + 64);
    /* the body ends in the start of the secret: the ring holds it */
    memcpy(plain + plen, KEY1, 20);
    plen += 20;
    free(z);
    z = zcompress(plain, plen, 31, &zlen);
    nonzero_frees = 0;
    for (int enc = 0; enc < 2; enc++) {
        size_t max = 77;
        av_scrub *s = NULL;
        want_zero = 1; /* building frees scratch and grown arrays: wiped */
        assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, enc ? AV_SCRUB_GZIP : 0), AV_OK);
        want_zero = 0;
        result r = run_ex(s, enc ? (void *)z : plain, enc ? zlen : plen, cut_random, &max, 2048);
        assert_int_equal(r.rc, AV_OK);
        assert_int_equal(r.n >= 20, 1);
        result_free(&r);
        want_zero = 1; /* everything the scrubber frees is wiped first */
        av__scrub_free(s);
        want_zero = 0;
    }
    assert_int_equal(nonzero_frees, 0);
    sec_free(&ss);
    assert_int_equal(dirty_frees, 0);
    assert_int_equal(mem_now, 0);
    free(z);
    free(plain);
    watch1 = NULL;
    watch2[0] = 0;
    av_set_allocator(NULL, NULL, NULL, NULL);
}

/* every allocation fails in turn: a clean error, no leak, no crash */
static void allocation_failures(void **state)
{
    (void)state;
    size_t plen, zlen;
    char *plain = json_body(40000, &plen);
    uint8_t *z = zcompress(plain, plen, 31, &zlen);
    for (int enc = 0; enc < 2; enc++) {
        int saw_success = 0;
        for (fail_at = 1; fail_at < 200 && !saw_success; fail_at++) {
            alloc_count = 0;
            mem_now = 0;
            assert_int_equal(av_set_allocator(t_malloc, t_realloc, t_free, NULL), 0);
            av_secret *k1 = av__secret_new(KEY1, strlen(KEY1));
            av_secret *k2 = av__secret_new(KEY2, strlen(KEY2));
            const av_secret *const sv[] = {k1, k2};
            av_scrub *s = NULL;
            int rc = AV_ERR_NOMEM;
            if (k1 && k2)
                rc = av__scrub_new(&s, sv, 2, enc ? AV_SCRUB_GZIP : AV_SCRUB_IDENTITY);
            if (rc == AV_OK) {
                av_buf out;
                av__buf_init(&out, 4096);
                const uint8_t *in = enc ? z : (const uint8_t *)plain;
                size_t len = enc ? zlen : plen, off = 0, took;
                while (off < len) {
                    rc = av__scrub_feed(s, in + off, len - off, &took, &out);
                    off += took;
                    av__buf_reset(&out);
                    if (rc != AV_OK && rc != AV_ERR_LIMIT)
                        break;
                }
                if (rc == AV_OK || rc == AV_ERR_LIMIT) {
                    do {
                        rc = av__scrub_finish(s, &out);
                        av__buf_reset(&out);
                    } while (rc == AV_ERR_LIMIT);
                }
                if (rc == AV_OK)
                    saw_success = 1;
                else
                    assert_int_equal(rc, AV_ERR_NOMEM);
                av__buf_free(&out);
            } else {
                assert_int_equal(rc, AV_ERR_NOMEM);
                assert_null(s);
            }
            av__scrub_free(s);
            av__secret_free(k1);
            av__secret_free(k2);
            assert_int_equal(mem_now, 0);
            av_set_allocator(NULL, NULL, NULL, NULL);
        }
        assert_true(saw_success);
    }
    fail_at = 0;
    free(z);
    free(plain);
}

/* ---- micro-benchmark (prints, never asserts) --------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void benchmark(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, KEY1, KEY2);
    size_t plen, zlen;
    char *plain = json_body(1u << 20, &plen);
    uint8_t *z = zcompress(plain, plen, 31, &zlen);
    av_buf out;
    av__buf_init(&out, 1 << 21);
    for (int enc = 0; enc < 2; enc++) {
        int reps = enc ? 5 : 20;
        double t0 = now_s();
        unsigned long cnt = 0;
        for (int rep = 0; rep < reps; rep++) {
            av_scrub *s = NULL;
            assert_int_equal(av__scrub_new(&s, SV(&ss), ss.n, enc ? AV_SCRUB_GZIP : 0), AV_OK);
            const uint8_t *in = enc ? z : (const uint8_t *)plain;
            size_t len = enc ? zlen : plen, took;
            for (size_t off = 0; off < len; off += 16384) { /* TLS-record-sized chunks */
                size_t n = len - off < 16384 ? len - off : 16384;
                assert_int_equal(av__scrub_feed(s, in + off, n, &took, &out), AV_OK);
                av__buf_reset(&out);
            }
            assert_int_equal(av__scrub_finish(s, &out), AV_OK);
            av__buf_reset(&out);
            cnt = av__scrub_count(s);
            av__scrub_free(s);
        }
        double dt = now_s() - t0;
        print_message("scrub %s: %.1f MB/s of plaintext (%zu bytes JSON, 2 secrets, %lu "
                      "redactions per pass)\n",
                      enc ? "gzip (inflate+scrub+deflate)" : "identity",
                      (double)plen * reps / dt / 1e6, plen, cnt);
    }
    av__buf_free(&out);
    free(z);
    free(plain);
    sec_free(&ss);
}

/* shared_set: scrubbers made from one compiled set behave exactly like
 * scrubbers built from the secrets, independently of each other, and the
 * header helper's short-value fast path copies the value unchanged. */
static void shared_set(void **state)
{
    (void)state;
    secrets ss;
    sec_init(&ss, "sk-shared-0123456789abcdef", NULL);
    av_scrub_set *set = NULL;
    assert_int_equal(av__scrub_set_new(&set, SV(&ss), ss.n), AV_OK);
    const char *in = "a sk-shared-0123456789abcdef b c2stc2hhcmVkLTAxMjM0NTY3ODlhYmNkZWY= d";
    char *want = NULL, *got = NULL;
    size_t wl = 0, gl = 0;
    unsigned long wc = 0, gc = 0;
    assert_int_equal(av__scrub_header_value(SV(&ss), ss.n, in, strlen(in), &want, &wl, &wc), AV_OK);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(av__scrub_header_value_set(set, in, strlen(in), &got, &gl, &gc), AV_OK);
        assert_int_equal(gl, wl);
        assert_memory_equal(got, want, wl);
        assert_int_equal(gc, wc);
        assert_int_equal(gc, 2);
        av__free(got);
    }
    /* two streams from one set, interleaved */
    av_scrub *a = NULL, *b = NULL;
    assert_int_equal(av__scrub_new_from_set(&a, set, AV_SCRUB_IDENTITY), AV_OK);
    assert_int_equal(av__scrub_new_from_set(&b, set, AV_SCRUB_IDENTITY), AV_OK);
    av__scrub_set_unref(set); /* the scrubbers keep it alive */
    av_buf oa, ob;
    av__buf_init(&oa, 4096);
    av__buf_init(&ob, 4096);
    size_t used;
    size_t n = strlen(in);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(av__scrub_feed(a, (const uint8_t *)in + i, 1, &used, &oa), AV_OK);
        assert_int_equal(av__scrub_feed(b, (const uint8_t *)in + i, 1, &used, &ob), AV_OK);
    }
    assert_int_equal(av__scrub_finish(a, &oa), AV_OK);
    assert_int_equal(av__scrub_finish(b, &ob), AV_OK);
    assert_int_equal(oa.len, wl);
    assert_memory_equal(av__buf_head(&oa), want, wl);
    assert_int_equal(ob.len, wl);
    assert_memory_equal(av__buf_head(&ob), want, wl);
    av__scrub_free(a);
    av__scrub_free(b);
    av__buf_free(&oa);
    av__buf_free(&ob);
    /* short values: copied as they are */
    assert_int_equal(av__scrub_set_new(&set, SV(&ss), ss.n), AV_OK);
    assert_int_equal(av__scrub_header_value_set(set, "abc", 3, &got, &gl, &gc), AV_OK);
    assert_int_equal(gl, 3);
    assert_string_equal(got, "abc");
    assert_int_equal(gc, 0);
    av__free(got);
    av__scrub_set_unref(set);
    av__free(want);
    sec_free(&ss);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(raw_in_middle),
        cmocka_unit_test(shared_set),
        cmocka_unit_test(base64_every_alignment),
        cmocka_unit_test(percent_forms),
        cmocka_unit_test(json_forms),
        cmocka_unit_test(hex_forms),
        cmocka_unit_test(every_split_point),
        cmocka_unit_test(small_output_buffer),
        cmocka_unit_test(overlapping_and_adjacent),
        cmocka_unit_test(near_misses),
        cmocka_unit_test(short_and_empty_secrets),
        cmocka_unit_test(count_accuracy),
        cmocka_unit_test(window_bound),
        cmocka_unit_test(header_helper),
        cmocka_unit_test(encoding_parse),
        cmocka_unit_test(compressed_round_trip),
        cmocka_unit_test(gzip_streaming_sse),
        cmocka_unit_test(decompression_bomb_and_corruption),
        cmocka_unit_test(wiped_on_free),
        cmocka_unit_test(allocation_failures),
        cmocka_unit_test(benchmark),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
