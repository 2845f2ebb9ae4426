/* av_jwt.c - signed JWTs for minted credentials (see av_jwt.h). */
#include "av_jwt.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "av_mem.h"
#include "av_url.h"

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

/* ---- building ------------------------------------------------------------ */

/* b64url appends the unpadded base64url of |n| bytes. */
static int b64url(av_buf *b, const void *p, size_t n)
{
    int err = 0;
    size_t need = av__b64_encoded_len(n, AV__B64_URL | AV__B64_NOPAD);
    char *o = (char *)av__buf_reserve(b, need, &err);
    if (!o)
        return err ? err : AV_ERR_LIMIT;
    av__buf_commit(b, av__b64_encode(p, n, AV__B64_URL | AV__B64_NOPAD, o));
    return AV_OK;
}

/* jstr appends |s| as a JSON string (quoted). */
static int jstr(av_buf *b, const char *s, size_t n)
{
    int err = 0;
    char *o = (char *)av__buf_reserve(b, n * 6 + 2, &err);
    if (!o)
        return err ? err : AV_ERR_LIMIT;
    size_t k = 0;
    o[k++] = '"';
    k += av__json_escape(s, n, AV__JSON_SHORT, o + k);
    o[k++] = '"';
    av__buf_commit(b, k);
    return AV_OK;
}

static int lit(av_buf *b, const char *s)
{
    return av__buf_append(b, s, strlen(s));
}

int av__jwt_sign(const av_pkey *key, const char *kid, const char *claims, size_t claims_len, av_secret **out)
{
    *out = NULL;
    if (claims_len > AV_JWT_CLAIMS_MAX)
        return AV_ERR_LIMIT;
    av_buf hdr, jwt;
    av__buf_init(&hdr, 1024);
    av__buf_init(&jwt, 4 * AV_JWT_CLAIMS_MAX);
    int rc = lit(&hdr, key && av__pkey_type(key) == AV_PKEY_EC_P256 ? "{\"alg\":\"ES256\",\"typ\":\"JWT\""
                                                                      : "{\"alg\":\"RS256\",\"typ\":\"JWT\"");
    if (!rc && kid) {
        rc = lit(&hdr, ",\"kid\":");
        rc = rc ? rc : jstr(&hdr, kid, strlen(kid));
    }
    rc = rc ? rc : lit(&hdr, "}");
    rc = rc ? rc : b64url(&jwt, av__buf_head(&hdr), hdr.len);
    rc = rc ? rc : lit(&jwt, ".");
    rc = rc ? rc : b64url(&jwt, claims, claims_len);
    uint8_t sig[AV_JWS_SIG_MAX];
    size_t sl = 0;
    if (!rc)
        rc = key ? av__pkey_sign_jws(key, av__buf_head(&jwt), jwt.len, sig, sizeof(sig), &sl) : AV_ERR_INVALID;
    rc = rc ? rc : lit(&jwt, ".");
    rc = rc ? rc : b64url(&jwt, sig, sl);
    if (!rc) {
        *out = av__secret_new(av__buf_head(&jwt), jwt.len);
        if (!*out)
            rc = AV_ERR_NOMEM;
    }
    av__buf_free(&hdr);
    av__buf_free_wipe(&jwt);
    return rc;
}

int av__gcp_claims(const av_gcp_key *k, const char *scope, const char *target_audience, const char *aud,
                   long long now, av_buf *out)
{
    int rc = lit(out, "{\"iss\":");
    rc = rc ? rc : jstr(out, k->client_email, strlen(k->client_email));
    if (target_audience) {
        rc = rc ? rc : lit(out, ",\"target_audience\":");
        rc = rc ? rc : jstr(out, target_audience, strlen(target_audience));
    } else {
        const char *sc = scope ? scope : AV_GCP_SCOPE_DEFAULT;
        rc = rc ? rc : lit(out, ",\"scope\":");
        rc = rc ? rc : jstr(out, sc, strlen(sc));
    }
    rc = rc ? rc : lit(out, ",\"aud\":");
    rc = rc ? rc : jstr(out, aud, strlen(aud));
    rc = rc ? rc : av__buf_appendf(out, ",\"iat\":%lld,\"exp\":%lld}", now, now + 3600);
    return rc;
}

int av__github_claims(const char *app, long long now, av_buf *out)
{
    int rc = av__buf_appendf(out, "{\"iat\":%lld,\"exp\":%lld,\"iss\":", now - 60, now + 540);
    rc = rc ? rc : jstr(out, app, strlen(app));
    return rc ? rc : lit(out, "}");
}

int av__github_body(const char *repos, const char *perms, av_buf *out)
{
    int rc = lit(out, "{");
    if (!rc && repos) {
        rc = lit(out, "\"repositories\":[");
        for (const char *s = repos; !rc && *s;) {
            size_t n = strcspn(s, ",");
            rc = s != repos ? lit(out, ",") : AV_OK;
            rc = rc ? rc : jstr(out, s, n);
            s += n;
            if (*s == ',')
                s++;
        }
        rc = rc ? rc : lit(out, "]");
    }
    if (!rc && perms) {
        rc = lit(out, repos ? ",\"permissions\":{" : "\"permissions\":{");
        for (const char *s = perms; !rc && *s;) {
            size_t n = strcspn(s, ",");
            const char *colon = memchr(s, ':', n);
            if (!colon)
                return AV_ERR_INVALID;
            rc = s != perms ? lit(out, ",") : AV_OK;
            rc = rc ? rc : jstr(out, s, (size_t)(colon - s));
            rc = rc ? rc : lit(out, ":");
            rc = rc ? rc : jstr(out, colon + 1, n - (size_t)(colon - s) - 1);
            s += n;
            if (*s == ',')
                s++;
        }
        rc = rc ? rc : lit(out, "}");
    }
    return rc ? rc : lit(out, "}");
}

/* ---- parsing ------------------------------------------------------------- */

static int visible_ascii(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x21 || (unsigned char)p[i] > 0x7e)
            return 0;
    return n > 0;
}

void av__gcp_key_clear(av_gcp_key *k)
{
    av__free(k->client_email);
    av__free(k->private_key_id);
    av__free(k->token_uri);
    av__pkey_free(k->key);
    memset(k, 0, sizeof(*k));
}

int av__gcp_key_parse(const uint8_t *p, size_t len, av_gcp_key *out, char *why, size_t why_len)
{
    memset(out, 0, sizeof(*out));
    enum { TYPE, EMAIL, PK, KID, URI };
    av_json_field f[] = {
        {"type", AV_JSON_STR, 64, 0, NULL, 0, 0},
        {"client_email", AV_JSON_STR, 320, 0, NULL, 0, 0},
        {"private_key", AV_JSON_STR, AV_PEM_MAX, 0, NULL, 0, 0},
        {"private_key_id", AV_JSON_STR, 128, 0, NULL, 0, 0},
        {"token_uri", AV_JSON_STR, 2048, 0, NULL, 0, 0},
    };
    size_t nf = sizeof(f) / sizeof(f[0]);
    char r[160];
    int rc = av__json_fields(p, len, AV_GCP_KEY_MAX, f, nf, r, sizeof(r));
    if (rc != AV_OK) {
        say(why, why_len, "the service-account key is not usable: %s", r);
        return rc;
    }
    rc = AV_ERR_PARSE;
    if (!f[TYPE].seen || strcmp(f[TYPE].str, "service_account") != 0) {
        say(why, why_len, "the service-account key is not usable: \"type\" is not \"service_account\"");
        goto out;
    }
    if (!f[EMAIL].seen || !visible_ascii(f[EMAIL].str, f[EMAIL].len) || !strchr(f[EMAIL].str, '@')) {
        say(why, why_len, "the service-account key is not usable: no \"client_email\" (an e-mail address)");
        goto out;
    }
    if (!f[PK].seen) {
        say(why, why_len, "the service-account key is not usable: no \"private_key\"");
        goto out;
    }
    if (f[KID].seen && !visible_ascii(f[KID].str, f[KID].len)) {
        say(why, why_len, "the service-account key is not usable: \"private_key_id\" is not visible ASCII");
        goto out;
    }
    if (f[URI].seen) {
        av_absolute_uri u;
        if (av__absolute_uri_parse(f[URI].str, f[URI].len, &u) != AV_OK || strcmp(u.scheme, "https") != 0) {
            say(why, why_len, "the service-account key is not usable: \"token_uri\" is not an https:// URL");
            goto out;
        }
    }
    char kr[200];
    rc = av__pkey_from_pem(f[PK].str, f[PK].len, &out->key, kr, sizeof(kr));
    if (rc != AV_OK) {
        say(why, why_len, "the service-account key's private_key is not usable: %s", kr);
        goto out;
    }
    out->client_email = f[EMAIL].str, f[EMAIL].str = NULL;
    if (f[KID].seen)
        out->private_key_id = f[KID].str, f[KID].str = NULL;
    if (f[URI].seen)
        out->token_uri = f[URI].str, f[URI].str = NULL;
    rc = AV_OK;
out:
    av__json_fields_clear(f, nf);
    if (rc != AV_OK)
        av__gcp_key_clear(out);
    return rc;
}

int av__jwt_claim_exp(const char *jwt, size_t len, long long *exp)
{
    const char *d1 = memchr(jwt, '.', len);
    if (!d1)
        return AV_ERR_PARSE;
    const char *pl = d1 + 1;
    const char *d2 = memchr(pl, '.', len - (size_t)(pl - jwt));
    if (!d2 || d2 == pl)
        return AV_ERR_PARSE;
    size_t n = (size_t)(d2 - pl);
    if (n > 4 * AV_JWT_CLAIMS_MAX)
        return AV_ERR_PARSE;
    size_t cap = n / 4 * 3 + 3, dl = 0;
    uint8_t *buf = av__malloc(cap);
    if (!buf)
        return AV_ERR_NOMEM;
    int rc = av__b64_decode(pl, n, AV__B64_URL | AV__B64_NOPAD, buf, cap, &dl);
    av_json_field f[] = {{"exp", AV_JSON_INT, 0, 0, NULL, 0, 0}};
    if (rc == AV_OK)
        rc = av__json_fields(buf, dl, 3 * AV_JWT_CLAIMS_MAX, f, 1, NULL, 0);
    if (rc == AV_OK && !f[0].seen)
        rc = AV_ERR_PARSE;
    if (rc == AV_OK)
        *exp = f[0].num;
    av__json_fields_clear(f, 1);
    av__wipe(buf, cap);
    av__free(buf);
    return rc == AV_OK ? AV_OK : rc == AV_ERR_NOMEM ? rc : AV_ERR_PARSE;
}

/* error_code keeps an OAuth "error" code (RFC 6749 5.2 characters). */
static void error_code(av_oauth_token *out, const char *e, size_t n)
{
    size_t k = 0;
    for (size_t j = 0; j < n && k < AV_OAUTH_ERROR_MAX; j++)
        if (e[j] >= 0x20 && e[j] <= 0x7e && e[j] != '"' && e[j] != '\\')
            out->error[k++] = e[j];
    out->error[k] = 0;
    if (!k)
        snprintf(out->error, sizeof(out->error), "unknown_error");
}

int av__gcp_parse_id_token(const uint8_t *p, size_t len, long long now, av_oauth_token *out, char *why,
                           size_t why_len)
{
    memset(out, 0, sizeof(*out));
    out->expires_in = -1;
    av_json_field f[] = {{"id_token", AV_JSON_STR, AV_OAUTH_TOKEN_MAX, 0, NULL, 0, 0},
                         {"error", AV_JSON_STR, 256, 0, NULL, 0, 0}};
    char r[160];
    int rc = av__json_fields(p, len, AV_OAUTH_RESPONSE_MAX, f, 2, r, sizeof(r));
    if (rc != AV_OK) {
        say(why, why_len, "token response: %s", r);
        return rc;
    }
    long long exp = 0;
    rc = AV_ERR_PARSE;
    if (f[1].seen) {
        error_code(out, f[1].str, f[1].len);
        rc = AV_OK;
    } else if (!f[0].seen) {
        say(why, why_len, "token response has no id_token");
    } else if (!visible_ascii(f[0].str, f[0].len)) {
        say(why, why_len, "token response: the id_token is empty or not visible ASCII");
    } else if (av__jwt_claim_exp(f[0].str, f[0].len, &exp) != AV_OK) {
        say(why, why_len, "token response: the id_token is not a JWT with an \"exp\" claim");
    } else if (exp <= now) {
        say(why, why_len, "token response: the id_token has already expired");
    } else if (!(out->access_token = av__secret_new(f[0].str, f[0].len))) {
        rc = AV_ERR_NOMEM;
        say(why, why_len, "out of memory");
    } else {
        out->expires_in = exp - now;
        out->bearer = 1;
        rc = AV_OK;
    }
    av__json_fields_clear(f, 2);
    return rc;
}

/* days_from_civil: days since 1970-01-01 of a proleptic Gregorian date. */
static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? (unsigned)-3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static int digits(const char *s, size_t n, unsigned *v)
{
    *v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        *v = *v * 10 + (unsigned)(s[i] - '0');
    }
    return 0;
}

int av__iso8601_utc(const char *s, size_t n, long long *out)
{
    unsigned y, mo, d, h, mi, se;
    if (n < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s[n - 1] != 'Z')
        return AV_ERR_PARSE;
    if (digits(s, 4, &y) || digits(s + 5, 2, &mo) || digits(s + 8, 2, &d) || digits(s + 11, 2, &h) ||
        digits(s + 14, 2, &mi) || digits(s + 17, 2, &se))
        return AV_ERR_PARSE;
    if (n > 20) { /* fractional seconds: ".d+" */
        unsigned frac;
        if (s[19] != '.' || n == 21 || n > 30 || digits(s + 20, n - 21, &frac))
            return AV_ERR_PARSE;
    }
    static const unsigned mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || se > 60)
        return AV_ERR_PARSE;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo == 2 && d == 29 && !leap)
        return AV_ERR_PARSE;
    *out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
    return AV_OK;
}

int av__github_parse_token(const uint8_t *p, size_t len, long long now, av_oauth_token *out, char *why,
                           size_t why_len)
{
    memset(out, 0, sizeof(*out));
    out->expires_in = -1;
    av_json_field f[] = {{"token", AV_JSON_STR, AV_OAUTH_TOKEN_MAX, 0, NULL, 0, 0},
                         {"expires_at", AV_JSON_STR, 64, 0, NULL, 0, 0}};
    char r[160];
    int rc = av__json_fields(p, len, AV_OAUTH_RESPONSE_MAX, f, 2, r, sizeof(r));
    if (rc != AV_OK) {
        say(why, why_len, "token response: %s", r);
        return rc;
    }
    long long at = 0;
    rc = AV_ERR_PARSE;
    if (!f[0].seen) {
        say(why, why_len, "token response has no token");
    } else if (!visible_ascii(f[0].str, f[0].len)) {
        say(why, why_len, "token response: the token is empty or not visible ASCII");
    } else if (f[1].seen && av__iso8601_utc(f[1].str, f[1].len, &at) != AV_OK) {
        say(why, why_len, "token response: expires_at is not a UTC time (YYYY-MM-DDTHH:MM:SSZ)");
    } else if (f[1].seen && at <= now) {
        say(why, why_len, "token response: the token has already expired (expires_at; is the clock right?)");
    } else if (!(out->access_token = av__secret_new(f[0].str, f[0].len))) {
        rc = AV_ERR_NOMEM;
        say(why, why_len, "out of memory");
    } else {
        out->expires_in = f[1].seen ? at - now : -1;
        out->bearer = 1;
        rc = AV_OK;
    }
    av__json_fields_clear(f, 2);
    return rc;
}
