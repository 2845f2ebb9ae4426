/* av_enc.c - base64, percent-encoding, JSON escaping, hex, line
 * sanitizing, decimal and substitution (see av_enc.h). */
#include "av_enc.h"

#include <string.h>

#include <agentvault/agentvault.h>

#include "av_mem.h"

static const char HEX_DIGITS[2][17] = {"0123456789abcdef", "0123456789ABCDEF"};

static const char B64_ALPHA[2][65] = {
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
};

static const char *hex_digits(int hex_case)
{
    return HEX_DIGITS[hex_case == AV__HEX_UPPER];
}

/* ---- hex ----------------------------------------------------------------- */

int av__hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t av__hex_encode(const void *in, size_t n, int hex_case, char *out)
{
    const uint8_t *s = in;
    const char *hex = hex_digits(hex_case);
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[s[i] >> 4];
        out[2 * i + 1] = hex[s[i] & 15];
    }
    return 2 * n;
}

int av__hex_decode(const char *in, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    *out_len = 0;
    if (len % 2)
        return AV_ERR_INVALID;
    if (len / 2 > cap)
        return AV_ERR_LIMIT;
    for (size_t i = 0; i < len; i += 2) {
        int hi = av__hex_value((unsigned char)in[i]), lo = av__hex_value((unsigned char)in[i + 1]);
        if (hi < 0 || lo < 0)
            return AV_ERR_INVALID;
        out[i / 2] = (uint8_t)(hi << 4 | lo);
    }
    *out_len = len / 2;
    return 0;
}

/* ---- base64 -------------------------------------------------------------- */

size_t av__b64_encoded_len(size_t n, unsigned flags)
{
    size_t full = n / 3 * 4, rem = n % 3;
    if (!rem)
        return full;
    return full + ((flags & AV__B64_NOPAD) ? rem + 1 : 4);
}

size_t av__b64_encode(const void *in, size_t n, unsigned flags, char *out)
{
    const uint8_t *s = in;
    const char *a = B64_ALPHA[(flags & AV__B64_URL) != 0];
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        out[o++] = a[v >> 6 & 63];
        out[o++] = a[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)s[i + 1] << 8;
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = a[v >> 6 & 63];
        if (!(flags & AV__B64_NOPAD))
            while (o % 4)
                out[o++] = '=';
    }
    return o;
}

size_t av__b64_encode_shifted(const void *in, size_t n, size_t shift, unsigned flags, char *out)
{
    const uint8_t *s = in;
    const char *a = B64_ALPHA[(flags & AV__B64_URL) != 0];
    /* Characters [j0, j1) of the encoding of (|shift| zero bytes, |in|)
     * take all their bits from |in|. */
    size_t total = shift + n, j0 = (8 * shift + 5) / 6, j1 = 8 * total / 6, o = 0;
    for (size_t g = j0 / 4; 4 * g < j1; g++) {
        uint32_t v = 0;
        for (size_t b = 3 * g; b < 3 * g + 3; b++)
            v = v << 8 | (b >= shift && b < total ? s[b - shift] : 0u);
        for (size_t j = 4 * g; j < 4 * g + 4; j++)
            if (j >= j0 && j < j1)
                out[o++] = a[v >> (6 * (3 - (j - 4 * g))) & 63];
    }
    return o;
}

/* b64_value returns the 6-bit value of |c| in alphabet |url|, or -1. */
static int b64_value(unsigned char c, int url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

int av__b64_decode(const char *in, size_t len, unsigned flags, uint8_t *out, size_t cap,
                   size_t *out_len)
{
    int url = (flags & AV__B64_URL) != 0;
    *out_len = 0;
    size_t body = len;
    while (body > 0 && len - body < 2 && in[body - 1] == '=')
        body--;
    if (body < len) {
        if ((flags & AV__B64_NOPAD) || len % 4)
            return AV_ERR_INVALID;
    } else if (!(flags & (AV__B64_NOPAD | AV__B64_PAD_OPTIONAL)) && len % 4) {
        return AV_ERR_INVALID;
    }
    size_t rem = body % 4;
    if (rem == 1)
        return AV_ERR_INVALID;
    size_t need = body / 4 * 3 + (rem ? rem - 1 : 0);
    if (need > cap)
        return AV_ERR_LIMIT;
    size_t o = 0;
    uint32_t v = 0;
    for (size_t i = 0; i < body; i++) {
        int d = b64_value((unsigned char)in[i], url);
        if (d < 0)
            return AV_ERR_INVALID;
        v = v << 6 | (uint32_t)d;
        if (i % 4 == 3) {
            out[o++] = (uint8_t)(v >> 16);
            out[o++] = (uint8_t)(v >> 8);
            out[o++] = (uint8_t)v;
            v = 0;
        }
    }
    if (rem == 2) {
        if ((flags & AV__B64_STRICT) && (v & 0x0f))
            return AV_ERR_INVALID;
        out[o++] = (uint8_t)(v >> 4);
    } else if (rem == 3) {
        if ((flags & AV__B64_STRICT) && (v & 0x03))
            return AV_ERR_INVALID;
        out[o++] = (uint8_t)(v >> 10);
        out[o++] = (uint8_t)(v >> 2);
    }
    *out_len = o;
    return 0;
}

/* ---- percent-encoding ---------------------------------------------------- */

static int is_alnum(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* pct_keep tells whether |c| stays literal in set |set|. */
static int pct_keep(int set, uint8_t c)
{
    switch (set) {
    case AV__PCT_ALL: return 0;
    case AV__PCT_UNRESERVED: return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
    case AV__PCT_PATH: return pct_keep(AV__PCT_UNRESERVED, c) || c == '/';
    case AV__PCT_URIC:
        return pct_keep(AV__PCT_UNRESERVED, c) || c == '!' || c == '*' || c == '\'' || c == '(' ||
               c == ')';
    default: return is_alnum(c) || c == '*' || c == '-' || c == '.' || c == '_';
    }
}

size_t av__pct_encode(const void *in, size_t n, int set, int hex_case, char *out)
{
    const uint8_t *s = in;
    const char *hex = hex_digits(hex_case);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (pct_keep(set, c)) {
            out[o++] = (char)c;
        } else if (set == AV__PCT_FORM && c == ' ') {
            out[o++] = '+';
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    return o;
}

/* ---- JSON ---------------------------------------------------------------- */

/* utf8_next decodes one scalar value at s[*i] and advances *i; -1 when the
 * bytes there are not well-formed UTF-8. */
static long utf8_next(const uint8_t *s, size_t n, size_t *i)
{
    uint8_t c = s[*i];
    size_t need;
    unsigned long v, min;
    if (c < 0x80) {
        (*i)++;
        return c;
    } else if (c >= 0xc2 && c <= 0xdf) {
        need = 1, v = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 2, v = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3, v = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if (*i + need >= n)
        return -1;
    for (size_t k = 1; k <= need; k++) {
        uint8_t d = s[*i + k];
        if ((d & 0xc0) != 0x80)
            return -1;
        v = (v << 6) | (d & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return -1;
    *i += need + 1;
    return (long)v;
}

/* put_u writes \uXXXX for |cp| (<= 0xffff). */
static size_t put_u(char *o, unsigned long cp, const char *hex)
{
    o[0] = '\\';
    o[1] = 'u';
    o[2] = hex[(cp >> 12) & 15];
    o[3] = hex[(cp >> 8) & 15];
    o[4] = hex[(cp >> 4) & 15];
    o[5] = hex[cp & 15];
    return 6;
}

/* json_byte escapes one byte below 0x80 (any byte with AV__JSON_BYTES)
 * into |o| (6 bytes) and returns the length. */
static size_t json_byte(uint8_t c, unsigned f, const char *hex, char *o)
{
    if (c == '"' || c == '\\') {
        o[0] = '\\';
        o[1] = (char)c;
        return 2;
    }
    if (f & AV__JSON_SHORT) {
        char e = c == '\b' ? 'b' : c == '\f' ? 'f' : c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : 0;
        if (e) {
            o[0] = '\\';
            o[1] = e;
            return 2;
        }
    }
    if (c < 0x20 || ((f & AV__JSON_BYTES) && c >= 0x7f) ||
        ((f & (AV__JSON_HTML | AV__JSON_GSON)) && (c == '<' || c == '>' || c == '&')) ||
        ((f & AV__JSON_GSON) && (c == '=' || c == '\'')))
        return put_u(o, c, hex);
    if ((f & AV__JSON_SLASH) && c == '/') {
        o[0] = '\\';
        o[1] = '/';
        return 2;
    }
    o[0] = (char)c;
    return 1;
}

size_t av__json_escape(const void *in, size_t n, unsigned flags, char *out)
{
    const uint8_t *s = in;
    const char *hex = hex_digits((flags & AV__JSON_UPPER) ? AV__HEX_UPPER : AV__HEX_LOWER);
    int need_utf8 = !(flags & AV__JSON_BYTES) && (flags & (AV__JSON_ASCII | AV__JSON_HTML | AV__JSON_GSON));
    size_t o = 0, i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80 || !need_utf8) {
            if (c >= 0x80 && !(flags & AV__JSON_BYTES))
                out[o++] = (char)c;
            else
                o += json_byte(c, flags, hex, out + o);
            i++;
            continue;
        }
        size_t start = i;
        long cp = utf8_next(s, n, &i);
        if (cp < 0)
            return (size_t)-1;
        if (flags & AV__JSON_ASCII) {
            if (cp >= 0x10000) {
                unsigned long v = (unsigned long)cp - 0x10000;
                o += put_u(out + o, 0xd800 + (v >> 10), hex);
                o += put_u(out + o, 0xdc00 + (v & 0x3ff), hex);
            } else {
                o += put_u(out + o, (unsigned long)cp, hex);
            }
        } else if (cp == 0x2028 || cp == 0x2029) {
            o += put_u(out + o, (unsigned long)cp, hex);
        } else {
            for (size_t k = start; k < i; k++)
                out[o++] = (char)s[k];
        }
    }
    return o;
}

size_t av__json_escape_str(char *out, size_t cap, const char *in, unsigned flags)
{
    const char *hex = hex_digits((flags & AV__JSON_UPPER) ? AV__HEX_UPPER : AV__HEX_LOWER);
    size_t o = 0;
    for (size_t i = 0; in && in[i]; i++) {
        uint8_t c = (uint8_t)in[i];
        char e[6];
        size_t m = 1;
        if (c >= 0x80 && !(flags & AV__JSON_BYTES))
            e[0] = (char)c;
        else
            m = json_byte(c, flags, hex, e);
        if (o + m >= cap)
            break;
        for (size_t k = 0; k < m; k++)
            out[o++] = e[k];
    }
    out[o] = '\0';
    return o;
}

/* ---- line sanitizing ----------------------------------------------------- */

size_t av__sanitize_line(char *out, size_t cap, const char *in, size_t len, unsigned flags)
{
    char rep = (flags & AV__LINE_BLANK) ? ' ' : '?';
    int space_ok = !(flags & AV__LINE_NO_SPACE), high_ok = (flags & AV__LINE_KEEP_HIGH) != 0;
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)in[i];
        int ok = (c > 0x20 && c < 0x7f) || (c == ' ' && space_ok) || (c >= 0x80 && high_ok);
        out[o++] = ok ? (char)c : rep;
    }
    out[o] = '\0';
    return o;
}

/* ---- decimal ------------------------------------------------------------- */

size_t av__u64_dec(char *out, uint64_t v)
{
    char t[20];
    size_t k = 0;
    do {
        t[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t n = k;
    for (size_t i = 0; i < n; i++)
        out[i] = t[--k];
    out[n] = '\0';
    return n;
}

/* ---- substitution -------------------------------------------------------- */

/* av__subst_replace counts the non-overlapping occurrences (left to right)
 * first, so the result is built in one allocation and one pass. An empty
 * needle is AV_ERR_INVALID. */
int av__subst_replace(const uint8_t *in, size_t len, const uint8_t *needle, size_t needle_len,
                      const uint8_t *repl, size_t repl_len, size_t max_out, uint8_t **out,
                      size_t *out_len)
{
    if (!out || !out_len || !needle || needle_len == 0 || (!in && len) || (!repl && repl_len))
        return AV_ERR_INVALID;
    *out = NULL;
    *out_len = 0;
    size_t count = 0;
    for (size_t pos = 0; pos + needle_len <= len;) {
        const uint8_t *hit = memmem(in + pos, len - pos, needle, needle_len);
        if (!hit)
            break;
        count++;
        pos = (size_t)(hit - in) + needle_len;
    }
    if (count == 0)
        return 0;
    size_t keep = len - count * needle_len;
    if (repl_len && count > (SIZE_MAX - keep) / repl_len)
        return AV_ERR_LIMIT;
    size_t total = keep + count * repl_len;
    if (total > max_out)
        return AV_ERR_LIMIT;
    uint8_t *res = av__malloc(total);
    if (!res)
        return AV_ERR_NOMEM;
    size_t pos = 0, w = 0;
    for (size_t k = 0; k < count; k++) {
        const uint8_t *hit = memmem(in + pos, len - pos, needle, needle_len);
        size_t at = (size_t)(hit - in);
        memcpy(res + w, in + pos, at - pos);
        w += at - pos;
        if (repl_len)
            memcpy(res + w, repl, repl_len);
        w += repl_len;
        pos = at + needle_len;
    }
    memcpy(res + w, in + pos, len - pos);
    *out = res;
    *out_len = total;
    return 1;
}
