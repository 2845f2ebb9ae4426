/* av_oauth.c - OAuth 2.0 token requests and responses (see av_oauth.h). */
#include "av_oauth.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "av_mem.h"

#define JSON_DEPTH_MAX 16

static void say(char *why, size_t why_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t why_len, const char *fmt, ...)
{
    if (!why || !why_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

int av__oauth_form_add(av_buf *b, const char *name, const void *value, size_t n)
{
    if (n > AV_OAUTH_TOKEN_MAX)
        return AV_ERR_LIMIT;
    size_t nl = strlen(name);
    size_t need = (b->len ? 1 : 0) + nl * 3 + 1 + n * 3;
    int err = 0;
    char *o = (char *)av__buf_reserve(b, need, &err);
    if (!o)
        return err ? err : AV_ERR_LIMIT;
    size_t k = 0;
    if (b->len)
        o[k++] = '&';
    k += av__pct_encode(name, nl, AV__PCT_FORM, 1, o + k);
    o[k++] = '=';
    k += av__pct_encode(value, n, AV__PCT_FORM, 1, o + k);
    av__buf_commit(b, k);
    return AV_OK;
}

av_secret *av__oauth_basic(const char *client_id, const void *secret, size_t secret_len)
{
    size_t il = strlen(client_id);
    if (il > AV_OAUTH_TOKEN_MAX || secret_len > AV_OAUTH_TOKEN_MAX)
        return NULL;
    size_t pl = il * 3 + 1 + secret_len * 3;
    char *pair = av__malloc(pl);
    if (!pair)
        return NULL;
    size_t k = av__pct_encode(client_id, il, AV__PCT_FORM, 1, pair);
    pair[k++] = ':';
    k += av__pct_encode(secret, secret_len, AV__PCT_FORM, 1, pair + k);
    size_t vl = 6 + av__b64_encoded_len(k, 0);
    char *v = av__malloc(vl);
    av_secret *s = NULL;
    if (v) {
        memcpy(v, "Basic ", 6);
        size_t w = av__b64_encode(pair, k, 0, v + 6);
        s = av__secret_new(v, 6 + w);
        av__wipe(v, vl);
        av__free(v);
    }
    av__wipe(pair, pl);
    av__free(pair);
    return s;
}

/* ---- a strict JSON reader, enough for a token response ---------------- */

typedef struct jr {
    const uint8_t *p;
    size_t len, i;
} jr;

static void ws(jr *r)
{
    while (r->i < r->len && (r->p[r->i] == ' ' || r->p[r->i] == '\t' || r->p[r->i] == '\n' || r->p[r->i] == '\r'))
        r->i++;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int hex4(jr *r, unsigned *out)
{
    if (r->len - r->i < 4)
        return -1;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(r->p[r->i + k]);
        if (h < 0)
            return -1;
        v = v << 4 | (unsigned)h;
    }
    r->i += 4;
    *out = v;
    return 0;
}

/* utf8_len: the length of the well-formed UTF-8 sequence at p[0..n), or 0. */
static size_t utf8_len(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    size_t k;
    uint32_t min, cp;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0)
        k = 2, min = 0x80, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0)
        k = 3, min = 0x800, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0)
        k = 4, min = 0x10000, cp = c & 0x07;
    else
        return 0;
    if (n < k)
        return 0;
    for (size_t j = 1; j < k; j++) {
        if ((p[j] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[j] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k;
}

/* jstring reads a string at r->i (the opening quote). With |out| (room
 * for the raw length), the decoded bytes go there and *olen is set. */
static int jstring(jr *r, uint8_t *out, size_t *olen)
{
    if (r->i >= r->len || r->p[r->i] != '"')
        return -1;
    r->i++;
    size_t o = 0;
    while (r->i < r->len) {
        uint8_t c = r->p[r->i];
        if (c == '"') {
            r->i++;
            if (olen)
                *olen = o;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            size_t k = utf8_len(r->p + r->i, r->len - r->i);
            if (!k)
                return -1;
            if (out)
                memcpy(out + o, r->p + r->i, k);
            o += k;
            r->i += k;
            continue;
        }
        if (++r->i >= r->len)
            return -1;
        c = r->p[r->i++];
        uint8_t lit = 0;
        switch (c) {
        case '"': lit = '"'; break;
        case '\\': lit = '\\'; break;
        case '/': lit = '/'; break;
        case 'b': lit = '\b'; break;
        case 'f': lit = '\f'; break;
        case 'n': lit = '\n'; break;
        case 'r': lit = '\r'; break;
        case 't': lit = '\t'; break;
        case 'u': {
            unsigned u;
            if (hex4(r, &u))
                return -1;
            uint32_t cp = u;
            if (u >= 0xdc00 && u <= 0xdfff)
                return -1; /* a lone low surrogate */
            if (u >= 0xd800 && u <= 0xdbff) {
                unsigned lo;
                if (r->len - r->i < 2 || r->p[r->i] != '\\' || r->p[r->i + 1] != 'u')
                    return -1;
                r->i += 2;
                if (hex4(r, &lo) || lo < 0xdc00 || lo > 0xdfff)
                    return -1;
                cp = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
            }
            uint8_t e[4];
            size_t k;
            if (cp < 0x80)
                e[0] = (uint8_t)cp, k = 1;
            else if (cp < 0x800)
                e[0] = (uint8_t)(0xc0 | cp >> 6), e[1] = (uint8_t)(0x80 | (cp & 0x3f)), k = 2;
            else if (cp < 0x10000)
                e[0] = (uint8_t)(0xe0 | cp >> 12), e[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f)),
                e[2] = (uint8_t)(0x80 | (cp & 0x3f)), k = 3;
            else
                e[0] = (uint8_t)(0xf0 | cp >> 18), e[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f)),
                e[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f)), e[3] = (uint8_t)(0x80 | (cp & 0x3f)), k = 4;
            /* an escape is 6 or 12 input bytes: never more output than input */
            if (out)
                memcpy(out + o, e, k);
            o += k;
            continue;
        }
        default:
            return -1;
        }
        if (out)
            out[o] = lit;
        o++;
    }
    return -1;
}

/* jnumber reads a number (RFC 8259 grammar); *is_int and the value when
 * it is a plain non-negative integer of at most 12 digits. */
static int jnumber(jr *r, int *is_int, long long *val)
{
    size_t s = r->i;
    if (r->i < r->len && r->p[r->i] == '-')
        r->i++;
    if (r->i >= r->len)
        return -1;
    if (r->p[r->i] == '0')
        r->i++;
    else if (r->p[r->i] >= '1' && r->p[r->i] <= '9')
        while (r->i < r->len && r->p[r->i] >= '0' && r->p[r->i] <= '9')
            r->i++;
    else
        return -1;
    size_t int_end = r->i;
    int frac = 0;
    if (r->i < r->len && r->p[r->i] == '.') {
        r->i++;
        size_t d = r->i;
        while (r->i < r->len && r->p[r->i] >= '0' && r->p[r->i] <= '9')
            r->i++;
        if (r->i == d)
            return -1;
        frac = 1;
    }
    if (r->i < r->len && (r->p[r->i] == 'e' || r->p[r->i] == 'E')) {
        r->i++;
        if (r->i < r->len && (r->p[r->i] == '+' || r->p[r->i] == '-'))
            r->i++;
        size_t d = r->i;
        while (r->i < r->len && r->p[r->i] >= '0' && r->p[r->i] <= '9')
            r->i++;
        if (r->i == d)
            return -1;
        frac = 1;
    }
    *is_int = 0;
    if (!frac && r->p[s] != '-' && int_end - s <= 12) {
        long long v = 0;
        for (size_t k = s; k < int_end; k++)
            v = v * 10 + (r->p[k] - '0');
        *val = v;
        *is_int = 1;
    }
    return 0;
}

static int jlit(jr *r, const char *w)
{
    size_t n = strlen(w);
    if (r->len - r->i < n || memcmp(r->p + r->i, w, n) != 0)
        return -1;
    r->i += n;
    return 0;
}

/* jskip reads any value, nesting at most JSON_DEPTH_MAX deep. */
static int jskip(jr *r, int depth)
{
    if (depth > JSON_DEPTH_MAX || r->i >= r->len)
        return -1;
    uint8_t c = r->p[r->i];
    if (c == '"')
        return jstring(r, NULL, NULL);
    if (c == 't')
        return jlit(r, "true");
    if (c == 'f')
        return jlit(r, "false");
    if (c == 'n')
        return jlit(r, "null");
    if (c == '{' || c == '[') {
        uint8_t close = c == '{' ? '}' : ']';
        r->i++;
        ws(r);
        if (r->i < r->len && r->p[r->i] == close) {
            r->i++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                if (jstring(r, NULL, NULL))
                    return -1;
                ws(r);
                if (r->i >= r->len || r->p[r->i] != ':')
                    return -1;
                r->i++;
                ws(r);
            }
            if (jskip(r, depth + 1))
                return -1;
            ws(r);
            if (r->i >= r->len)
                return -1;
            if (r->p[r->i] == close) {
                r->i++;
                return 0;
            }
            if (r->p[r->i] != ',')
                return -1;
            r->i++;
            ws(r);
        }
    }
    int is_int;
    long long v;
    return jnumber(r, &is_int, &v);
}

enum { F_ACCESS = 1, F_REFRESH = 2, F_TYPE = 4, F_EXPIRES = 8, F_ERROR = 16 };

static int key_is(const uint8_t *k, size_t kl, const char *w)
{
    return kl == strlen(w) && memcmp(k, w, kl) == 0;
}

void av__oauth_token_clear(av_oauth_token *t)
{
    av__secret_free(t->access_token);
    av__secret_free(t->refresh_token);
    memset(t, 0, sizeof(*t));
    t->expires_in = -1;
}

/* a string member's value, decoded into |buf| (room for the raw length) */
static int member_string(jr *r, uint8_t *buf, size_t *n)
{
    if (r->i >= r->len || r->p[r->i] != '"')
        return -1;
    return jstring(r, buf, n);
}

static int token_chars_ok(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x21 || p[i] > 0x7e)
            return 0;
    return n > 0;
}

/* jobject_open reads "{" and the blanks after it: 1 for an empty object
 * (its "}" read too), 0 when members follow, -1 for anything else. */
static int jobject_open(jr *r)
{
    ws(r);
    if (r->i >= r->len || r->p[r->i] != '{')
        return -1;
    r->i++;
    ws(r);
    if (r->i < r->len && r->p[r->i] == '}') {
        r->i++;
        return 1;
    }
    return 0;
}

/* jmember_key reads a member's key, decoded into |buf| (*kl bytes), then
 * ":" and the blanks around it. 0, or -1 when malformed. */
static int jmember_key(jr *r, uint8_t *buf, size_t *kl)
{
    size_t ks = r->i;
    if (jstring(r, NULL, NULL))
        return -1;
    jr kr = {r->p, r->i, ks}; /* the key again, decoded */
    if (jstring(&kr, buf, kl))
        return -1;
    ws(r);
    if (r->i >= r->len || r->p[r->i] != ':')
        return -1;
    r->i++;
    ws(r);
    return 0;
}

/* jmember_next reads what follows a member's value: 1 at the object's
 * "}", 0 after a "," (another member follows), -1 for anything else. */
static int jmember_next(jr *r)
{
    ws(r);
    if (r->i >= r->len)
        return -1;
    if (r->p[r->i] == '}') {
        r->i++;
        return 1;
    }
    if (r->p[r->i] != ',')
        return -1;
    r->i++;
    ws(r);
    return 0;
}

int av__oauth_parse_token(const uint8_t *p, size_t len, av_oauth_token *out, char *why, size_t why_len)
{
    memset(out, 0, sizeof(*out));
    out->expires_in = -1;
    if (len > AV_OAUTH_RESPONSE_MAX) {
        say(why, why_len, "token response larger than 64 KiB");
        return AV_ERR_PARSE;
    }
    uint8_t *buf = len ? av__malloc(len) : NULL;
    if (len && !buf) {
        say(why, why_len, "out of memory");
        return AV_ERR_NOMEM;
    }
    jr r = {p, len, 0};
    unsigned seen = 0;
    int rc = AV_ERR_PARSE;
    const char *bad = "token response is not a JSON object";
    int st = jobject_open(&r);
    if (st < 0)
        goto out;
    if (st == 0) {
        for (;;) {
            /* the key decoded (keys of interest have no escapes in
             * practice, but decode to compare exactly) */
            size_t kl = 0;
            if (jmember_key(&r, buf, &kl))
                goto out;
            uint8_t key[32];
            size_t klen = kl < sizeof(key) ? kl : sizeof(key);
            memcpy(key, buf, klen);
            if (kl >= sizeof(key))
                klen = 0; /* no key of interest is that long */
            unsigned f = key_is(key, klen, "access_token")    ? F_ACCESS
                         : key_is(key, klen, "refresh_token") ? F_REFRESH
                         : key_is(key, klen, "token_type")    ? F_TYPE
                         : key_is(key, klen, "expires_in")    ? F_EXPIRES
                         : key_is(key, klen, "error")         ? F_ERROR
                                                              : 0;
            if (f & seen) {
                bad = "token response has a duplicate member";
                goto out;
            }
            seen |= f;
            size_t n = 0;
            if (f == F_ACCESS || f == F_REFRESH) {
                if (member_string(&r, buf, &n)) {
                    bad = "token response: a token is not a JSON string";
                    goto out;
                }
                if (n > AV_OAUTH_TOKEN_MAX || !token_chars_ok(buf, n)) {
                    bad = "token response: a token is empty, longer than 16 KiB or not visible ASCII";
                    goto out;
                }
                av_secret *s = av__secret_new(buf, n);
                if (!s) {
                    rc = AV_ERR_NOMEM;
                    bad = "out of memory";
                    goto out;
                }
                if (f == F_ACCESS)
                    out->access_token = s;
                else
                    out->refresh_token = s;
            } else if (f == F_TYPE) {
                if (member_string(&r, buf, &n)) {
                    bad = "token response: token_type is not a JSON string";
                    goto out;
                }
                out->has_token_type = 1;
                out->bearer = n == 6 && strncasecmp((const char *)buf, "bearer", 6) == 0;
            } else if (f == F_ERROR) {
                if (member_string(&r, buf, &n)) {
                    bad = "token response: error is not a JSON string";
                    goto out;
                }
                /* RFC 6749 5.2: %x20-21 / %x23-5B / %x5D-7E; keep only that */
                size_t k = 0;
                for (size_t j = 0; j < n && k < AV_OAUTH_ERROR_MAX; j++)
                    if (buf[j] >= 0x20 && buf[j] <= 0x7e && buf[j] != '"' && buf[j] != '\\')
                        out->error[k++] = (char)buf[j];
                out->error[k] = 0;
                if (!k)
                    snprintf(out->error, sizeof(out->error), "unknown_error");
            } else if (f == F_EXPIRES) {
                int is_int = 0;
                long long v = 0;
                if (r.i < r.len && r.p[r.i] == '"') {
                    if (member_string(&r, buf, &n))
                        goto out;
                    jr nr = {buf, n, 0};
                    if (n == 0 || jnumber(&nr, &is_int, &v) || nr.i != n)
                        is_int = 0;
                } else if (jnumber(&r, &is_int, &v)) {
                    goto out;
                }
                if (!is_int) {
                    bad = "token response: expires_in is not a non-negative integer";
                    goto out;
                }
                out->expires_in = v;
            } else if (jskip(&r, 1)) {
                goto out;
            }
            int nx = jmember_next(&r);
            if (nx < 0)
                goto out;
            if (nx)
                break;
        }
    }
    ws(&r);
    if (r.i != r.len)
        goto out;
    if (out->error[0]) {
        av__secret_free(out->access_token);
        out->access_token = NULL;
        rc = AV_OK;
        goto out;
    }
    if (!out->access_token) {
        bad = "token response has no access_token";
        goto out;
    }
    rc = AV_OK;
out:
    if (buf) {
        av__wipe(buf, len);
        av__free(buf);
    }
    if (rc != AV_OK) {
        say(why, why_len, "%s", bad);
        av__oauth_token_clear(out);
    }
    return rc;
}

/* ---- the generic reader (av__json_fields) ------------------------------ */

void av__json_fields_clear(av_json_field *f, size_t nf)
{
    for (size_t i = 0; i < nf; i++) {
        if (f[i].str) {
            av__wipe(f[i].str, f[i].len);
            av__free(f[i].str);
        }
        f[i].str = NULL;
        f[i].len = 0;
        f[i].seen = 0;
        f[i].num = 0;
    }
}

/* json_field reads the value of field |f| at r->i; |buf| has room for the
 * raw input. */
static int json_field(jr *r, av_json_field *f, uint8_t *buf, char *why, size_t why_len)
{
    if (f->type == AV_JSON_INT) {
        int is_int = 0;
        long long v = 0;
        if (r->i >= r->len || r->p[r->i] == '"' || jnumber(r, &is_int, &v) || !is_int) {
            say(why, why_len, "\"%s\" is not a non-negative integer", f->name);
            return AV_ERR_PARSE;
        }
        f->num = v;
        return AV_OK;
    }
    size_t n = 0;
    if (member_string(r, buf, &n)) {
        say(why, why_len, "\"%s\" is not a JSON string", f->name);
        return AV_ERR_PARSE;
    }
    if (n > f->max || memchr(buf, 0, n)) {
        say(why, why_len, "\"%s\" is longer than %zu bytes or contains a NUL", f->name, f->max);
        return AV_ERR_PARSE;
    }
    f->str = av__malloc(n + 1);
    if (!f->str) {
        say(why, why_len, "out of memory");
        return AV_ERR_NOMEM;
    }
    memcpy(f->str, buf, n);
    f->str[n] = 0;
    f->len = n;
    return AV_OK;
}

int av__json_fields(const uint8_t *p, size_t len, size_t max, av_json_field *f, size_t nf, char *why,
                    size_t why_len)
{
    for (size_t i = 0; i < nf; i++)
        f[i].seen = 0, f[i].str = NULL, f[i].len = 0, f[i].num = 0;
    if (len > max) {
        say(why, why_len, "larger than %zu bytes", max);
        return AV_ERR_PARSE;
    }
    uint8_t *buf = len ? av__malloc(len) : NULL;
    if (len && !buf) {
        say(why, why_len, "out of memory");
        return AV_ERR_NOMEM;
    }
    jr r = {p, len, 0};
    int rc = AV_ERR_PARSE;
    say(why, why_len, "not a well-formed JSON object");
    int st = jobject_open(&r);
    if (st < 0)
        goto out;
    if (st == 0) {
        for (;;) {
            size_t kl = 0;
            if (jmember_key(&r, buf, &kl))
                goto out;
            av_json_field *hit = NULL;
            for (size_t i = 0; i < nf && !hit; i++)
                if (key_is(buf, kl, f[i].name))
                    hit = &f[i];
            if (hit) {
                if (hit->seen) {
                    say(why, why_len, "\"%s\" appears twice", hit->name);
                    goto out;
                }
                hit->seen = 1;
                rc = json_field(&r, hit, buf, why, why_len);
                if (rc != AV_OK)
                    goto out;
                rc = AV_ERR_PARSE;
            } else if (jskip(&r, 1)) {
                goto out;
            }
            int nx = jmember_next(&r);
            if (nx < 0)
                goto out;
            if (nx)
                break;
        }
    }
    ws(&r);
    if (r.i != r.len)
        goto out;
    rc = AV_OK;
out:
    if (buf) {
        av__wipe(buf, len);
        av__free(buf);
    }
    if (rc != AV_OK)
        av__json_fields_clear(f, nf);
    return rc;
}
