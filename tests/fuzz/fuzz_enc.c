/* fuzz_enc.c - libFuzzer target for the encoders (av_enc): base64 decoding
 * in every mode against re-encoding, the encoders' length bounds, JSON
 * escaping validity, percent-encoding and hex round trips. The first byte
 * picks the flags; the rest is the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define IN_MAX 4096

/* fuzz_b64_decode: whatever decodes, re-encodes to the input (the
 * canonical forms in strict mode) and fits the stated bound. */
static void fuzz_b64_decode(const char *in, size_t n, unsigned flags)
{
    static uint8_t out[IN_MAX];
    static char again[IN_MAX + 8];
    size_t m = 99;
    int rc = av__b64_decode(in, n, flags, out, sizeof(out), &m);
    if (rc != 0) {
        CHECK(rc == AV_ERR_INVALID || rc == AV_ERR_LIMIT);
        CHECK(m == 0);
        return;
    }
    CHECK(m <= (n + 3) / 4 * 3);
    if (!(flags & AV__B64_STRICT))
        return;
    unsigned ef = flags & AV__B64_URL;
    int padded = n % 4 == 0 && memchr(in, '=', n) != NULL;
    if (!padded && n % 4)
        ef |= AV__B64_NOPAD;
    size_t k = av__b64_encode(out, m, ef, again);
    CHECK(k == av__b64_encoded_len(m, ef));
    CHECK(k == n && memcmp(again, in, n) == 0);
}

/* fuzz_encoders: the encoders stay within their bounds and round-trip. */
static void fuzz_encoders(const uint8_t *s, size_t n, unsigned sel)
{
    static char out[6 * IN_MAX + 8];
    static uint8_t back[IN_MAX];
    size_t m = av__b64_encode(s, n, sel & 3, out);
    CHECK(m == av__b64_encoded_len(n, sel & 3));
    size_t bn;
    CHECK(av__b64_decode(out, m, (sel & 3) | AV__B64_STRICT, back, sizeof(back), &bn) == 0);
    CHECK(bn == n && memcmp(back, s, n) == 0);
    m = av__b64_encode_shifted(s, n, sel % 3, sel & 1, out);
    CHECK(m <= (n + 2) / 3 * 4);

    m = av__hex_encode(s, n, sel & 1, out);
    CHECK(m == 2 * n);
    CHECK(av__hex_decode(out, m, back, sizeof(back), &bn) == 0 && bn == n && memcmp(back, s, n) == 0);

    m = av__pct_encode(s, n, (int)(sel % 5), sel & 1, out);
    CHECK(m >= n && m <= 3 * n);
    for (size_t i = 0; i < m; i++)
        CHECK((unsigned char)out[i] > 0x20 && (unsigned char)out[i] < 0x7f);

    unsigned jf = sel & 0x7f;
    m = av__json_escape(s, n, jf, out);
    if (m == (size_t)-1) {
        CHECK(!(jf & AV__JSON_BYTES) && (jf & (AV__JSON_ASCII | AV__JSON_HTML | AV__JSON_GSON)));
        return;
    }
    CHECK(m <= 6 * n);
    /* a JSON string body: no raw control byte, no lone quote */
    for (size_t i = 0; i < m; i++) {
        uint8_t c = (uint8_t)out[i];
        CHECK(c >= 0x20);
        if (jf & AV__JSON_BYTES)
            CHECK(c < 0x7f);
        else if (jf & AV__JSON_ASCII)
            CHECK(c < 0x80);
        if (c == '\\') {
            CHECK(i + 1 < m);
            i++;
            if (out[i] == 'u') {
                CHECK(i + 4 < m);
                for (int k = 1; k <= 4; k++)
                    CHECK(av__hex_value((unsigned char)out[i + k]) >= 0);
                i += 4;
            } else {
                CHECK(strchr("\"\\/bfnrt", out[i]) != NULL && out[i] != '\0');
            }
        } else {
            CHECK(c != '"');
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > IN_MAX + 1)
        return 0;
    unsigned sel = data[0];
    const uint8_t *s = data + 1;
    size_t n = size - 1;
    unsigned df = sel & (AV__B64_URL | AV__B64_NOPAD | AV__B64_PAD_OPTIONAL | AV__B64_STRICT);
    if ((df & AV__B64_NOPAD) && (df & AV__B64_PAD_OPTIONAL))
        df &= ~AV__B64_PAD_OPTIONAL;
    fuzz_b64_decode((const char *)s, n, df);
    fuzz_encoders(s, n, sel);

    static char line[IN_MAX + 1];
    size_t k = av__sanitize_line(line, sizeof(line), (const char *)s, n, sel & 7);
    CHECK(k == n && line[k] == '\0');
    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)line[i];
        CHECK(c >= 0x20 && c != 0x7f);
        CHECK(c < 0x80 || (sel & AV__LINE_KEEP_HIGH));
    }
    return 0;
}
