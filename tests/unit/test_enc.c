/* test_enc.c - the encoders: base64 (RFC 4648 vectors, both alphabets,
 * padding rules, rejection), percent-encoding of every byte in every set,
 * JSON escaping in each mode the library uses, hex, line sanitizing and
 * decimal; substitution. Expected outputs are written out by hand or made by independent
 * code here (snprintf, explicit character lists). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "av_mem.h"

/* ---- base64 -------------------------------------------------------------- */

static const struct {
    const char *raw, *padded, *unpadded;
} RFC4648[] = {
    {"", "", ""},
    {"f", "Zg==", "Zg"},
    {"fo", "Zm8=", "Zm8"},
    {"foo", "Zm9v", "Zm9v"},
    {"foob", "Zm9vYg==", "Zm9vYg"},
    {"fooba", "Zm9vYmE=", "Zm9vYmE"},
    {"foobar", "Zm9vYmFy", "Zm9vYmFy"},
};

/* enc returns the base64 of a string as a (static) C string. */
static const char *enc(const void *in, size_t n, unsigned flags)
{
    static char out[256];
    size_t m = av__b64_encode(in, n, flags, out);
    assert_int_equal(m, av__b64_encoded_len(n, flags));
    out[m] = '\0';
    return out;
}

/* dec decodes a C string; returns the error code, the bytes in out, their count in *n. */
static int dec(const char *in, unsigned flags, uint8_t *out, size_t cap, size_t *n)
{
    return av__b64_decode(in, strlen(in), flags, out, cap, n);
}

static void b64_rfc4648_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(RFC4648) / sizeof(RFC4648[0]); i++) {
        const char *r = RFC4648[i].raw;
        size_t rl = strlen(r), n = 99;
        uint8_t out[16];
        assert_string_equal(enc(r, rl, 0), RFC4648[i].padded);
        assert_string_equal(enc(r, rl, AV__B64_NOPAD), RFC4648[i].unpadded);
        /* the URL alphabet differs only in 62 and 63: same text here */
        assert_string_equal(enc(r, rl, AV__B64_URL), RFC4648[i].padded);
        assert_string_equal(enc(r, rl, AV__B64_URL | AV__B64_NOPAD), RFC4648[i].unpadded);

        assert_int_equal(dec(RFC4648[i].padded, 0, out, sizeof(out), &n), 0);
        assert_int_equal(n, rl);
        assert_memory_equal(out, r, rl);
        assert_int_equal(dec(RFC4648[i].padded, AV__B64_STRICT, out, sizeof(out), &n), 0);
        assert_int_equal(n, rl);
        assert_int_equal(dec(RFC4648[i].unpadded, AV__B64_NOPAD, out, sizeof(out), &n), 0);
        assert_int_equal(n, rl);
        assert_memory_equal(out, r, rl);
        assert_int_equal(dec(RFC4648[i].padded, AV__B64_PAD_OPTIONAL, out, sizeof(out), &n), 0);
        assert_int_equal(n, rl);
        assert_int_equal(dec(RFC4648[i].unpadded, AV__B64_PAD_OPTIONAL, out, sizeof(out), &n), 0);
        assert_int_equal(n, rl);
        assert_memory_equal(out, r, rl);
        if (strchr(RFC4648[i].padded, '=')) {
            /* padding where none is allowed, none where it is required */
            assert_int_equal(dec(RFC4648[i].padded, AV__B64_NOPAD, out, sizeof(out), &n), AV_ERR_INVALID);
            assert_int_equal(dec(RFC4648[i].unpadded, 0, out, sizeof(out), &n), AV_ERR_INVALID);
        }
    }
}

static void b64_alphabets(void **state)
{
    (void)state;
    const uint8_t hi[] = {0xfb, 0xff, 0xbf, 0xfb, 0xef};
    uint8_t out[8];
    size_t n;
    assert_string_equal(enc(hi, 3, 0), "+/+/");
    assert_string_equal(enc(hi, 3, AV__B64_URL), "-_-_");
    assert_string_equal(enc(hi, 5, 0), "+/+/++8=");
    assert_string_equal(enc(hi, 5, AV__B64_URL | AV__B64_NOPAD), "-_-_--8");
    assert_int_equal(dec("+/+/++8=", 0, out, sizeof(out), &n), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(out, hi, 5);
    assert_int_equal(dec("-_-_--8", AV__B64_URL | AV__B64_NOPAD, out, sizeof(out), &n), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(out, hi, 5);
    /* each alphabet refuses the other's two characters */
    assert_int_equal(dec("-_-_", 0, out, sizeof(out), &n), AV_ERR_INVALID);
    assert_int_equal(dec("+/+/", AV__B64_URL, out, sizeof(out), &n), AV_ERR_INVALID);
    /* every byte value round-trips in both alphabets */
    uint8_t all[256], back[256];
    char text[400];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    for (unsigned f = 0; f < 4; f++) {
        for (size_t len = 0; len <= 256; len += 37) {
            size_t m = av__b64_encode(all + (256 - len), len, f, text);
            assert_int_equal(av__b64_decode(text, m, f | AV__B64_STRICT, back, sizeof(back), &n), 0);
            assert_int_equal(n, len);
            assert_memory_equal(back, all + (256 - len), len);
        }
    }
}

static void b64_rejects(void **state)
{
    (void)state;
    uint8_t out[32];
    size_t n = 7;
    static const char *const bad[] = {
        "Zg=",      /* padded but not a multiple of 4 */
        "Z===",     /* three '=' */
        "====",     /* nothing but padding */
        "Zg=a",     /* '=' inside */
        "Zg==Zg==", /* padding before the end */
        "Zm9v\n",   /* white space */
        "Zm 9v",
        "Zm9v=",
        "Zm9vY",    /* 1 mod 4 characters */
        "Zm9.",     /* not in the alphabet */
        "Zm9\x80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (unsigned f = 0; f < 2 * AV__B64_STRICT; f++) {
            if ((f & AV__B64_NOPAD) && (f & AV__B64_PAD_OPTIONAL))
                continue;
            n = 7;
            assert_int_equal(dec(bad[i], f, out, sizeof(out), &n), AV_ERR_INVALID);
            assert_int_equal(n, 0);
        }
    }
    /* NUL inside is refused (the length says where the input ends) */
    assert_int_equal(av__b64_decode("Zm\0v", 4, 0, out, sizeof(out), &n), AV_ERR_INVALID);
    /* unpadded input needs NOPAD or PAD_OPTIONAL */
    assert_int_equal(dec("Zm9vYg", 0, out, sizeof(out), &n), AV_ERR_INVALID);
    /* non-zero unused bits: taken by default, refused when strict */
    assert_int_equal(dec("Zh==", 0, out, sizeof(out), &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0], 'f');
    assert_int_equal(dec("Zh==", AV__B64_STRICT, out, sizeof(out), &n), AV_ERR_INVALID);
    assert_int_equal(dec("Zm9=", AV__B64_STRICT, out, sizeof(out), &n), AV_ERR_INVALID);
    assert_int_equal(dec("Zm8=", AV__B64_STRICT, out, sizeof(out), &n), 0);
    /* output bound */
    assert_int_equal(dec("Zm9v", 0, out, 2, &n), AV_ERR_LIMIT);
    assert_int_equal(dec("Zm9vYg==", 0, out, 3, &n), AV_ERR_LIMIT);
    assert_int_equal(dec("Zm9vYg==", 0, out, 4, &n), 0);
    assert_int_equal(n, 4);
    /* the WebSocket key of RFC 6455 section 1.3: 16 bytes, canonical */
    assert_int_equal(dec("dGhlIHNhbXBsZSBub25jZQ==", AV__B64_STRICT, out, 16, &n), 0);
    assert_int_equal(n, 16);
    assert_memory_equal(out, "the sample nonce", 16);
}

/* The shifted encoding equals the middle of the plain encoding of the
 * value behind |shift| zero bytes, checked against av__b64_encode. */
static void b64_shifted(void **state)
{
    (void)state;
    char out[64];
    size_t m = av__b64_encode_shifted("foob", 4, 0, 0, out);
    assert_int_equal(m, 5);
    assert_memory_equal(out, "Zm9vY", 5);
    m = av__b64_encode_shifted("foo", 3, 1, 0, out); /* "\0foo" is AGZvbw== */
    assert_int_equal(m, 3);
    assert_memory_equal(out, "Zvb", 3);
    m = av__b64_encode_shifted("foob", 4, 2, 0, out); /* "\0\0foob" is AABmb29i */
    assert_int_equal(m, 5);
    assert_memory_equal(out, "mb29i", 5);
    uint8_t in[40], buf[48];
    char full[80];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)(i * 37 + 11);
    for (unsigned f = 0; f < 2; f++)
        for (size_t shift = 0; shift < 3; shift++)
            for (size_t n = 0; n <= sizeof(in); n++) {
                memset(buf, 0, shift);
                memcpy(buf + shift, in, n);
                av__b64_encode(buf, shift + n, f | AV__B64_NOPAD, full);
                size_t j0 = (8 * shift + 5) / 6, j1 = 8 * (shift + n) / 6;
                m = av__b64_encode_shifted(in, n, shift, f, out);
                assert_int_equal(m, j1 > j0 ? j1 - j0 : 0);
                assert_memory_equal(out, full + j0, m);
            }
}

/* ---- percent-encoding ---------------------------------------------------- */

static void pct_every_byte(void **state)
{
    (void)state;
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    static const struct {
        int set;
        const char *extra; /* kept besides ALPHA and DIGIT */
    } sets[] = {
        {AV__PCT_UNRESERVED, "-._~"}, {AV__PCT_PATH, "-._~/"}, {AV__PCT_URIC, "-._~!*'()"},
        {AV__PCT_FORM, "*-._"},
    };
    char out[8], want[8];
    for (int c = 0; c < 256; c++) {
        uint8_t b = (uint8_t)c;
        for (int up = 0; up < 2; up++) {
            int hc = up ? AV__HEX_UPPER : AV__HEX_LOWER;
            size_t m = av__pct_encode(&b, 1, AV__PCT_ALL, hc, out);
            snprintf(want, sizeof(want), up ? "%%%02X" : "%%%02x", c);
            assert_int_equal(m, 3);
            assert_memory_equal(out, want, 3);
            for (size_t s = 0; s < sizeof(sets) / sizeof(sets[0]); s++) {
                int keep = c && (strchr(alnum, c) || strchr(sets[s].extra, c));
                m = av__pct_encode(&b, 1, sets[s].set, hc, out);
                if (keep) {
                    assert_int_equal(m, 1);
                    assert_int_equal((uint8_t)out[0], b);
                } else if (sets[s].set == AV__PCT_FORM && c == ' ') {
                    assert_int_equal(m, 1);
                    assert_int_equal(out[0], '+');
                } else {
                    assert_int_equal(m, 3);
                    assert_memory_equal(out, want, 3);
                }
            }
        }
    }
    char s[64];
    size_t m = av__pct_encode("a b/c?d=e&f~g", 13, AV__PCT_UNRESERVED, AV__HEX_UPPER, s);
    assert_int_equal(m, 23);
    assert_memory_equal(s, "a%20b%2Fc%3Fd%3De%26f~g", 23);
    m = av__pct_encode("a b/c", 5, AV__PCT_PATH, AV__HEX_UPPER, s);
    assert_memory_equal(s, "a%20b/c", m);
    m = av__pct_encode("a b~", 4, AV__PCT_FORM, AV__HEX_LOWER, s);
    assert_int_equal(m, 6);
    assert_memory_equal(s, "a+b%7e", 6);
}

/* ---- JSON ---------------------------------------------------------------- */

/* js escapes a C string with |flags|; NULL when the flags refuse it. */
static const char *js(const char *in, unsigned flags)
{
    static char out[512];
    size_t m = av__json_escape(in, strlen(in), flags, out);
    if (m == (size_t)-1)
        return NULL;
    assert_true(m <= 6 * strlen(in));
    out[m] = '\0';
    return out;
}

static void json_modes(void **state)
{
    (void)state;
    /* no flags: how injection and the daemon's JSON log escape */
    assert_string_equal(js("a\"b\\c", 0), "a\\\"b\\\\c");
    assert_string_equal(js("\n\t\x01\x1f", 0), "\\u000a\\u0009\\u0001\\u001f");
    assert_string_equal(js("/<>&='\x7f\xc3\xa9\xff", 0), "/<>&='\x7f\xc3\xa9\xff");
    /* every control byte */
    for (int c = 1; c < 0x20; c++) {
        char in[2] = {(char)c, 0}, want[8];
        snprintf(want, sizeof(want), "\\u%04x", c);
        assert_string_equal(js(in, 0), want);
        snprintf(want, sizeof(want), "\\u%04X", c);
        if (c != '\b' && c != '\f' && c != '\n' && c != '\r' && c != '\t')
            assert_string_equal(js(in, AV__JSON_SHORT | AV__JSON_UPPER), want);
    }
    char nul[8];
    assert_int_equal(av__json_escape("\0", 1, 0, nul), 6);
    assert_memory_equal(nul, "\\u0000", 6);
    /* short forms (the scrubber's variants) */
    assert_string_equal(js("\b\f\n\r\t\x0b", AV__JSON_SHORT), "\\b\\f\\n\\r\\t\\u000b");
    /* bytes: plain ASCII whatever the input (the audit record) */
    assert_string_equal(js("\x7f\xc3\xa9\xff\"", AV__JSON_BYTES), "\\u007f\\u00c3\\u00a9\\u00ff\\\"");
    assert_string_equal(js("\x7f\xc3\xa9\xff\"", AV__JSON_BYTES | AV__JSON_UPPER), "\\u007F\\u00C3\\u00A9\\u00FF\\\"");
    /* ASCII: UTF-8 decoded, surrogate pairs above U+FFFF */
    assert_string_equal(js("\xc3\xa9\xe2\x82\xac", AV__JSON_ASCII), "\\u00e9\\u20ac");
    assert_string_equal(js("\xc3\xa9", AV__JSON_ASCII | AV__JSON_UPPER), "\\u00E9");
    assert_string_equal(js("\xf0\x9f\x98\x80", AV__JSON_ASCII | AV__JSON_SHORT), "\\ud83d\\ude00");
    assert_string_equal(js("\x7f", AV__JSON_ASCII), "\x7f");
    /* ill-formed UTF-8 where the flags need it */
    static const char *const bad[] = {"\xff", "\xc0\x80", "\xe2\x82", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_null(js(bad[i], AV__JSON_ASCII));
        assert_null(js(bad[i], AV__JSON_HTML));
        assert_null(js(bad[i], AV__JSON_GSON));
        assert_non_null(js(bad[i], 0));
        assert_non_null(js(bad[i], AV__JSON_BYTES | AV__JSON_ASCII));
    }
    /* slash, HTML, Gson */
    assert_string_equal(js("a/b", AV__JSON_SLASH), "a\\/b");
    assert_string_equal(js("<a>&='\xc3\xa9\xe2\x80\xa8\xe2\x80\xa9", AV__JSON_HTML),
                        "\\u003ca\\u003e\\u0026='\xc3\xa9\\u2028\\u2029");
    assert_string_equal(js("<=>'", AV__JSON_GSON), "\\u003c\\u003d\\u003e\\u0027");
}

static void json_bounded_string(void **state)
{
    (void)state;
    char out[16];
    assert_int_equal(av__json_escape_str(out, sizeof(out), "ab\"c", 0), 5);
    assert_string_equal(out, "ab\\\"c");
    /* whole escapes only, with room for the NUL */
    assert_int_equal(av__json_escape_str(out, 5, "ab\"c", 0), 4);
    assert_string_equal(out, "ab\\\"");
    assert_int_equal(av__json_escape_str(out, 4, "ab\"c", 0), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(av__json_escape_str(out, 9, "a\x01\xc3", AV__JSON_BYTES), 7);
    assert_string_equal(out, "a\\u0001");
    assert_int_equal(av__json_escape_str(out, 1, "abc", 0), 0);
    assert_string_equal(out, "");
    assert_int_equal(av__json_escape_str(out, sizeof(out), NULL, 0), 0);
    assert_string_equal(out, "");
    assert_int_equal(av__json_escape_str(out, sizeof(out), "\xc3\xa9", 0), 2);
    assert_string_equal(out, "\xc3\xa9");
}

/* ---- hex ----------------------------------------------------------------- */

static void hex_both_cases(void **state)
{
    (void)state;
    char out[16];
    assert_int_equal(av__hex_encode("foobar", 6, AV__HEX_UPPER, out), 12);
    assert_memory_equal(out, "666F6F626172", 12);
    const uint8_t b[] = {0x00, 0x9a, 0xff, 0x0c};
    assert_int_equal(av__hex_encode(b, 4, AV__HEX_LOWER, out), 8);
    assert_memory_equal(out, "009aff0c", 8);
    assert_int_equal(av__hex_encode(b, 4, AV__HEX_UPPER, out), 8);
    assert_memory_equal(out, "009AFF0C", 8);
    assert_int_equal(av__hex_encode(b, 0, AV__HEX_UPPER, out), 0);
    uint8_t d[8];
    size_t n = 9;
    assert_int_equal(av__hex_decode("009aFF0c", 8, d, sizeof(d), &n), 0);
    assert_int_equal(n, 4);
    assert_memory_equal(d, b, 4);
    assert_int_equal(av__hex_decode("", 0, d, sizeof(d), &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(av__hex_decode("abc", 3, d, sizeof(d), &n), AV_ERR_INVALID);
    assert_int_equal(av__hex_decode("0g", 2, d, sizeof(d), &n), AV_ERR_INVALID);
    assert_int_equal(av__hex_decode("0 ", 2, d, sizeof(d), &n), AV_ERR_INVALID);
    assert_int_equal(av__hex_decode("0\0", 2, d, sizeof(d), &n), AV_ERR_INVALID);
    assert_int_equal(av__hex_decode("0011", 4, d, 1, &n), AV_ERR_LIMIT);
    for (int c = 0; c < 256; c++) {
        int want = -1;
        const char *lo = "0123456789abcdef", *up = "0123456789ABCDEF";
        for (int k = 0; k < 16; k++)
            if (c && (c == lo[k] || c == up[k]))
                want = k;
        assert_int_equal(av__hex_value((unsigned char)c), want);
    }
}

/* ---- line sanitizing ----------------------------------------------------- */

static void sanitize_lines(void **state)
{
    (void)state;
    char out[32];
    const char in[] = "a b\x01\x7f\x80\xff\r\nz";
    size_t n = sizeof(in) - 1;
    assert_int_equal(av__sanitize_line(out, sizeof(out), in, n, 0), n);
    assert_string_equal(out, "a b??????z");
    assert_int_equal(av__sanitize_line(out, sizeof(out), in, n, AV__LINE_NO_SPACE), n);
    assert_string_equal(out, "a?b??????z");
    assert_int_equal(av__sanitize_line(out, sizeof(out), in, n, AV__LINE_KEEP_HIGH | AV__LINE_BLANK), n);
    assert_string_equal(out, "a b  \x80\xff  z");
    /* NUL inside the length is replaced too */
    assert_int_equal(av__sanitize_line(out, sizeof(out), "a\0b", 3, 0), 3);
    assert_string_equal(out, "a?b");
    /* cut to cap - 1 */
    assert_int_equal(av__sanitize_line(out, 4, "abcdef", 6, 0), 3);
    assert_string_equal(out, "abc");
    assert_int_equal(av__sanitize_line(out, 1, "abcdef", 6, 0), 0);
    assert_string_equal(out, "");
    /* in place */
    char line[] = "x\ty\x7fz";
    assert_int_equal(av__sanitize_line(line, sizeof(line), line, strlen(line), AV__LINE_BLANK), 5);
    assert_string_equal(line, "x y z");
    /* every byte: printable ASCII kept, the rest replaced */
    for (int c = 0; c < 256; c++) {
        char b = (char)c;
        av__sanitize_line(out, sizeof(out), &b, 1, 0);
        assert_int_equal((unsigned char)out[0], c >= 0x20 && c < 0x7f ? c : '?');
    }
}

/* ---- decimal ------------------------------------------------------------- */

static void decimal(void **state)
{
    (void)state;
    char out[21], want[32];
    static const uint64_t v[] = {0, 1, 9, 10, 42, 65535, 1000000007ull, 18446744073709551615ull};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        snprintf(want, sizeof(want), "%llu", (unsigned long long)v[i]);
        assert_int_equal(av__u64_dec(out, v[i]), strlen(want));
        assert_string_equal(out, want);
    }
}

/* ---- substitution -------------------------------------------------------- */

/* subst runs av__subst_replace on C strings and checks the outcome. */
static void subst(const char *in, const char *needle, const char *repl, size_t max_out,
                  int want_rc, const char *want)
{
    uint8_t *out = (uint8_t *)"untouched";
    size_t out_len = 99;
    int rc = av__subst_replace((const uint8_t *)in, strlen(in), (const uint8_t *)needle,
                               strlen(needle), (const uint8_t *)repl, strlen(repl), max_out,
                               &out, &out_len);
    assert_int_equal(rc, want_rc);
    if (rc == 1) {
        assert_int_equal(out_len, strlen(want));
        assert_memory_equal(out, want, out_len);
        av__wipe(out, out_len);
        av__free(out);
    } else {
        assert_null(out);
        assert_int_equal(out_len, 0);
    }
}

static void subst_replace(void **state)
{
    (void)state;
    subst("nothing here", "KEY", "secret", 100, 0, NULL);
    subst("", "KEY", "secret", 100, 0, NULL);
    subst("KE", "KEY", "secret", 100, 0, NULL);
    subst("a KEY b", "KEY", "secret", 100, 1, "a secret b");
    subst("KEY", "KEY", "secret", 100, 1, "secret");
    subst("KEYmidKEY", "KEY", "s", 100, 1, "smids");
    subst("KEYKEYKEY", "KEY", "<>", 100, 1, "<><><>");
    subst("aaaa", "aa", "b", 100, 1, "bb");
    subst("aaa", "aa", "b", 100, 1, "ba");
    subst("abababa", "aba", "X", 100, 1, "XbX");
    subst("xKEY", "KEY", "", 100, 1, "x");
    subst("KEY", "KEY", "", 100, 1, "");
    subst("K KEY", "KEY", "KEYKEY", 100, 1, "K KEYKEY"); /* no re-scan of output */
    /* max_out */
    subst("a KEY b", "KEY", "secret", 10, 1, "a secret b");
    subst("a KEY b", "KEY", "secret", 9, AV_ERR_LIMIT, NULL);
    subst("KEYKEYKEYKEY", "KEY", "0123456789", 39, AV_ERR_LIMIT, NULL);
    subst("KEYKEYKEYKEY", "KEY", "0123456789", 40, 1,
          "0123456789012345678901234567890123456789");
    /* binary data with NULs */
    uint8_t *out = NULL;
    size_t out_len = 0;
    const uint8_t in[] = {0, 'K', 0, 'K', 0};
    assert_int_equal(av__subst_replace(in, 5, (const uint8_t *)"K\0", 2, (const uint8_t *)"zz", 2,
                                       100, &out, &out_len),
                     1);
    assert_int_equal(out_len, 5);
    const uint8_t want[] = {0, 'z', 'z', 'z', 'z'};
    assert_memory_equal(out, want, 5);
    av__free(out);
    /* empty needle */
    assert_int_equal(av__subst_replace(in, 5, in, 0, in, 1, 100, &out, &out_len), AV_ERR_INVALID);
    /* large input, many hits: linear */
    size_t n = 1 << 20;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++)
        big[i] = "ab"[i & 1];
    assert_int_equal(av__subst_replace(big, n, (const uint8_t *)"ab", 2, (const uint8_t *)"xyz", 3,
                                       n * 2, &out, &out_len),
                     1);
    assert_int_equal(out_len, n / 2 * 3);
    assert_memory_equal(out + out_len - 3, "xyz", 3);
    av__free(out);
    free(big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(b64_rfc4648_vectors),
        cmocka_unit_test(b64_alphabets),
        cmocka_unit_test(b64_rejects),
        cmocka_unit_test(b64_shifted),
        cmocka_unit_test(pct_every_byte),
        cmocka_unit_test(json_modes),
        cmocka_unit_test(json_bounded_string),
        cmocka_unit_test(hex_both_cases),
        cmocka_unit_test(sanitize_lines),
        cmocka_unit_test(decimal),
        cmocka_unit_test(subst_replace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
