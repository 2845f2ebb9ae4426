/* av_sigv4.c - AWS Signature Version 4: the agent's Authorization, the
 * canonical request, the signing key and the signature.
 */
#include "av_sigv4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <agentvault/agentvault.h>

#include "av_crypto.h"
#include "av_enc.h"
#include "av_mem.h"

static const char ALG[] = "AWS4-HMAC-SHA256";
static const char ALG_A[] = "AWS4-ECDSA-P256-SHA256";

static int is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* A token of the scope (region, signing name): [a-z0-9-], 1..63. */
static int scope_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > AV_SIGV4_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_lower_alnum(s[i]) && s[i] != '-')
            return 0;
    return 1;
}

/* The SignedHeaders list: lower-case field names separated by ';'. */
static int signed_list_ok(const char *s, size_t n)
{
    if (n == 0 || s[0] == ';' || s[n - 1] == ';')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == ';') {
            if (s[i + 1] == ';')
                return 0;
            continue;
        }
        if (!(is_lower_alnum(c) || c == '-' || c == '_' || c == '.' || c == '!' || c == '#' || c == '$' || c == '%' ||
              c == '&' || c == '\'' || c == '*' || c == '+' || c == '^' || c == '`' || c == '|' || c == '~'))
            return 0;
    }
    return 1;
}

int av__sigv4_is_hex64(const char *s, size_t n)
{
    if (n != AV_SIGV4_HEX_LEN)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

/* Credential=AKID/yyyymmdd/REGION/SERVICE/aws4_request */
static int parse_credential(const char *v, size_t n, av_sigv4_auth *out, const char **why)
{
    const char *part[5];
    size_t plen[5], np = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && v[i] != '/')
            continue;
        if (np == 5) {
            *why = "Credential has more than five '/'-separated parts";
            return AV_ERR_PARSE;
        }
        part[np] = v + start;
        plen[np++] = i - start;
        start = i + 1;
    }
    if (np != 5) {
        *why = "Credential is not KEYID/DATE/REGION/SERVICE/aws4_request";
        return AV_ERR_PARSE;
    }
    if (plen[0] == 0 || plen[0] > AV_SIGV4_AKID_MAX) {
        *why = "Credential: the access key id is empty or too long";
        return AV_ERR_PARSE;
    }
    for (size_t i = 0; i < plen[0]; i++)
        if (part[0][i] <= 0x20 || part[0][i] >= 0x7f) {
            /* any dummy an SDK accepts (real ones are letters and digits) */
            *why = "Credential: the access key id must be visible ASCII";
            return AV_ERR_PARSE;
        }
    int date_ok = plen[1] == 8;
    for (size_t i = 0; date_ok && i < 8; i++)
        date_ok = part[1][i] >= '0' && part[1][i] <= '9';
    if (!date_ok) {
        *why = "Credential: the scope date is not yyyymmdd";
        return AV_ERR_PARSE;
    }
    if (!scope_name_ok(part[2], plen[2]) || !scope_name_ok(part[3], plen[3])) {
        *why = "Credential: the region or service is not 1..63 of a-z 0-9 -";
        return AV_ERR_PARSE;
    }
    if (plen[4] != 12 || memcmp(part[4], "aws4_request", 12) != 0) {
        *why = "Credential: the scope does not end in aws4_request";
        return AV_ERR_PARSE;
    }
    memcpy(out->akid, part[0], plen[0]);
    out->akid[plen[0]] = '\0';
    memcpy(out->date, part[1], 8);
    out->date[8] = '\0';
    memcpy(out->region, part[2], plen[2]);
    out->region[plen[2]] = '\0';
    memcpy(out->service, part[3], plen[3]);
    out->service[plen[3]] = '\0';
    return AV_OK;
}

int av__sigv4_parse_auth(const char *v, size_t n, av_sigv4_auth *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    *why = "";
    size_t al = 0;
    while (al < n && v[al] != ' ')
        al++;
    if (al == sizeof(ALG_A) - 1 && memcmp(v, ALG_A, al) == 0)
        return AV_SIGV4_SIGV4A;
    if (al != sizeof(ALG) - 1 || memcmp(v, ALG, al) != 0)
        return AV_SIGV4_NOT_SIGV4;
    int seen_c = 0, seen_h = 0, seen_s = 0;
    size_t i = al;
    while (i < n) {
        while (i < n && v[i] == ' ')
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && v[e - 1] == ' ')
            e--;
        if (i < n)
            i++; /* the ',' */
        const char *item = v + s;
        size_t il = e - s;
        if (il == 0) {
            *why = "Authorization has an empty parameter";
            return AV_ERR_PARSE;
        }
        if (il > 11 && memcmp(item, "Credential=", 11) == 0 && !seen_c) {
            int rc = parse_credential(item + 11, il - 11, out, why);
            if (rc)
                return rc;
            seen_c = 1;
        } else if (il > 14 && memcmp(item, "SignedHeaders=", 14) == 0 && !seen_h) {
            if (!signed_list_ok(item + 14, il - 14)) {
                *why = "SignedHeaders is not a ';'-separated list of lower-case field names";
                return AV_ERR_PARSE;
            }
            out->signed_headers = item + 14;
            out->signed_headers_len = il - 14;
            seen_h = 1;
        } else if (il > 10 && memcmp(item, "Signature=", 10) == 0 && !seen_s) {
            if (!av__sigv4_is_hex64(item + 10, il - 10)) {
                *why = "Signature is not 64 lower-case hex digits";
                return AV_ERR_PARSE;
            }
            seen_s = 1;
        } else {
            *why = "Authorization has an unknown or repeated parameter";
            return AV_ERR_PARSE;
        }
    }
    if (!seen_c || !seen_h || !seen_s) {
        *why = "Authorization lacks Credential, SignedHeaders or Signature";
        return AV_ERR_PARSE;
    }
    return AV_OK;
}

int av__sigv4_list_has(const char *list, size_t list_len, const char *name, size_t name_len)
{
    size_t start = 0;
    for (size_t i = 0; i <= list_len; i++) {
        if (i < list_len && list[i] != ';')
            continue;
        if (i - start == name_len && strncasecmp(list + start, name, name_len) == 0)
            return 1;
        start = i + 1;
    }
    return 0;
}

/* Append |n| bytes of |p| percent-encoded: unreserved (and '/' when
 * |keep_slash|) literal, upper-case hex. */
static int append_encoded(av_buf *out, const char *p, size_t n, int keep_slash)
{
    if (n == 0)
        return AV_OK;
    if (n > av__buf_room(out) / 3)
        return AV_ERR_LIMIT;
    int err = 0;
    uint8_t *d = av__buf_reserve(out, n * 3, &err);
    if (!d)
        return err;
    size_t o = av__pct_encode(p, n, keep_slash ? AV__PCT_PATH : AV__PCT_UNRESERVED, AV__HEX_UPPER, (char *)d);
    av__buf_commit(out, o);
    return AV_OK;
}

int av__sigv4_canonical_uri(const char *path, size_t n, int s3, av_buf *out)
{
    if (n == 0)
        return av__buf_append(out, "/", 1);
    if (s3)
        return av__buf_append(out, path, n);
    /* remove_dot_segments as botocore does it: empty and "." segments go,
     * ".." removes the one before; then encode the result once more */
    size_t *seg_off = av__malloc((n / 2 + 2) * sizeof(size_t) * 2);
    if (!seg_off)
        return AV_ERR_NOMEM;
    size_t *seg_len = seg_off + (n / 2 + 2);
    size_t nseg = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && path[i] != '/')
            continue;
        size_t l = i - start;
        if (l == 0 || (l == 1 && path[start] == '.')) {
            /* dropped */
        } else if (l == 2 && path[start] == '.' && path[start + 1] == '.') {
            if (nseg)
                nseg--;
        } else {
            seg_off[nseg] = start;
            seg_len[nseg++] = l;
        }
        start = i + 1;
    }
    int rc = AV_OK;
    if (path[0] == '/')
        rc = av__buf_append(out, "/", 1);
    for (size_t s = 0; s < nseg && !rc; s++) {
        if (s)
            rc = av__buf_append(out, "/", 1);
        rc = rc ? rc : append_encoded(out, path + seg_off[s], seg_len[s], 0);
    }
    if (!rc && nseg && path[n - 1] == '/')
        rc = av__buf_append(out, "/", 1);
    if (!rc && path[0] != '/' && nseg == 0)
        rc = av__buf_append(out, "/", 1); /* nothing left ("." or ".."): the root */
    av__free(seg_off);
    return rc;
}

/* One query parameter, encoded canonically in a scratch buffer. */
typedef struct qparam {
    size_t ko, kl, vo, vl;
    const char *base;
} qparam;

static int qparam_cmp(const void *a, const void *b)
{
    const qparam *x = a, *y = b;
    size_t m = x->kl < y->kl ? x->kl : y->kl;
    int c = memcmp(x->base + x->ko, y->base + y->ko, m);
    if (c || x->kl != y->kl)
        return c ? c : (x->kl < y->kl ? -1 : 1);
    m = x->vl < y->vl ? x->vl : y->vl;
    c = memcmp(x->base + x->vo, y->base + y->vo, m);
    if (c || x->vl != y->vl)
        return c ? c : (x->vl < y->vl ? -1 : 1);
    return 0;
}

/* Decode |n| bytes (strict %XX) into |tmp|; returns the length or -1. */
static long pct_decode(const char *p, size_t n, char *tmp)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '%') {
            tmp[o++] = p[i];
            continue;
        }
        if (i + 2 >= n)
            return -1;
        int h = av__hex_value((unsigned char)p[i + 1]), l = av__hex_value((unsigned char)p[i + 2]);
        if (h < 0 || l < 0)
            return -1;
        tmp[o++] = (char)(h * 16 + l);
        i += 2;
    }
    return (long)o;
}

int av__sigv4_query_is_presigned(const char *q, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && q[i] != '&')
            continue;
        const char *item = q + start;
        size_t il = i - start;
        start = i + 1;
        const char *eq = memchr(item, '=', il);
        size_t kl = eq ? (size_t)(eq - item) : il;
        char name[32];
        if (kl > sizeof(name) - 1)
            continue; /* longer than any of the names (decoding only shortens) ... */
        long dl = pct_decode(item, kl, name);
        if (dl < 0)
            continue; /* ... and a bad escape is refused by the canonicalization */
        if ((dl == 15 && strncasecmp(name, "X-Amz-Signature", 15) == 0) ||
            (dl == 16 && strncasecmp(name, "X-Amz-Credential", 16) == 0) ||
            (dl == 15 && strncasecmp(name, "X-Amz-Algorithm", 15) == 0))
            return 1;
    }
    return 0;
}

int av__sigv4_canonical_query(const char *q, size_t n, av_buf *out)
{
    if (n == 0)
        return AV_OK;
    size_t np = 1;
    for (size_t i = 0; i < n; i++)
        np += q[i] == '&';
    qparam *ps = av__calloc(np, sizeof(*ps));
    char *tmp = av__malloc(n + 1);
    av_buf enc;
    av__buf_init(&enc, n * 3 + 16);
    int rc = ps && tmp ? AV_OK : AV_ERR_NOMEM;
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= n && !rc; i++) {
        if (i < n && q[i] != '&')
            continue;
        const char *item = q + start;
        size_t il = i - start;
        start = i + 1;
        if (il == 0)
            continue;
        const char *eq = memchr(item, '=', il);
        size_t kl = eq ? (size_t)(eq - item) : il;
        long dl = pct_decode(item, kl, tmp);
        if (dl < 0) {
            rc = AV_ERR_PARSE;
            break;
        }
        ps[k].ko = enc.len;
        rc = append_encoded(&enc, tmp, (size_t)dl, 0);
        ps[k].kl = enc.len - ps[k].ko;
        dl = eq ? pct_decode(eq + 1, il - kl - 1, tmp) : 0;
        if (dl < 0) {
            rc = AV_ERR_PARSE;
            break;
        }
        ps[k].vo = enc.len;
        rc = rc ? rc : append_encoded(&enc, tmp, (size_t)dl, 0);
        ps[k].vl = enc.len - ps[k].vo;
        k++;
    }
    if (!rc && k) {
        /* all names and values empty: nothing was allocated */
        const char *base = enc.len ? (const char *)av__buf_head(&enc) : "";
        for (size_t i = 0; i < k; i++)
            ps[i].base = base;
        qsort(ps, k, sizeof(*ps), qparam_cmp);
        for (size_t i = 0; i < k && !rc; i++) {
            if (i)
                rc = av__buf_append(out, "&", 1);
            rc = rc ? rc : av__buf_append(out, ps[i].base + ps[i].ko, ps[i].kl);
            rc = rc ? rc : av__buf_append(out, "=", 1);
            rc = rc ? rc : av__buf_append(out, ps[i].base + ps[i].vo, ps[i].vl);
        }
    }
    av__free(ps);
    av__free(tmp);
    av__buf_free(&enc);
    return rc;
}

/* Field index sorted by lower-case name (stable: repeated names keep their
 * order). */
typedef struct hidx {
    const av_h1_field *f;
    size_t pos;
} hidx;

static int name_cmp(const av_h1_field *a, const av_h1_field *b)
{
    size_t m = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = strncasecmp(a->name, b->name, m);
    if (c)
        return c;
    return a->name_len == b->name_len ? 0 : (a->name_len < b->name_len ? -1 : 1);
}

static int hidx_cmp(const void *pa, const void *pb)
{
    const hidx *a = pa, *b = pb;
    int c = name_cmp(a->f, b->f);
    if (c)
        return c;
    return a->pos < b->pos ? -1 : (a->pos > b->pos ? 1 : 0);
}

static int append_lower(av_buf *out, const char *p, size_t n)
{
    if (n > av__buf_room(out))
        return AV_ERR_LIMIT;
    int err = 0;
    uint8_t *d = av__buf_reserve(out, n, &err);
    if (!d)
        return err;
    for (size_t i = 0; i < n; i++)
        d[i] = (uint8_t)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i]);
    av__buf_commit(out, n);
    return AV_OK;
}

/* A value trimmed, inner runs of spaces and tabs as one space. */
static int append_trimall(av_buf *out, const char *v, size_t n)
{
    int sp = 0, any = 0, rc = AV_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        char c = v[i];
        if (c == '\r' || c == '\n' || c == 0)
            return AV_ERR_INVALID;
        if (c == ' ' || c == '\t') {
            sp = any;
            continue;
        }
        if (sp)
            rc = av__buf_append(out, " ", 1);
        sp = 0;
        any = 1;
        rc = rc ? rc : av__buf_append(out, &c, 1);
    }
    return rc;
}

int av__sigv4_canonical_request(const av_sigv4_req *r, av_buf *canon, av_buf *signed_headers)
{
    if (r->nfields == 0)
        return AV_ERR_INVALID; /* host at least */
    for (size_t i = 0; i < r->nfields; i++)
        if (r->fields[i].name_len == 0)
            return AV_ERR_INVALID;
    const char *q = memchr(r->target, '?', r->target_len);
    size_t pl = q ? (size_t)(q - r->target) : r->target_len;
    int s3 = strcmp(r->service, "s3") == 0 || strcmp(r->service, "s3express") == 0;
    int rc = av__buf_append(canon, r->method, r->method_len);
    rc = rc ? rc : av__buf_append(canon, "\n", 1);
    rc = rc ? rc : av__sigv4_canonical_uri(r->target, pl, s3, canon);
    rc = rc ? rc : av__buf_append(canon, "\n", 1);
    rc = rc ? rc : av__sigv4_canonical_query(q ? q + 1 : "", q ? r->target_len - pl - 1 : 0, canon);
    rc = rc ? rc : av__buf_append(canon, "\n", 1);
    if (rc)
        return rc;
    hidx *ix = av__calloc(r->nfields, sizeof(*ix));
    if (!ix)
        return AV_ERR_NOMEM;
    for (size_t i = 0; i < r->nfields; i++) {
        ix[i].f = &r->fields[i];
        ix[i].pos = i;
    }
    qsort(ix, r->nfields, sizeof(*ix), hidx_cmp);
    for (size_t i = 0; i < r->nfields && !rc; i++) {
        int same = i && name_cmp(ix[i - 1].f, ix[i].f) == 0;
        if (same) {
            rc = av__buf_append(canon, ",", 1);
        } else {
            if (i) {
                rc = av__buf_append(canon, "\n", 1);
                rc = rc ? rc : av__buf_append(signed_headers, ";", 1);
            }
            rc = rc ? rc : append_lower(canon, ix[i].f->name, ix[i].f->name_len);
            rc = rc ? rc : av__buf_append(canon, ":", 1);
            rc = rc ? rc : append_lower(signed_headers, ix[i].f->name, ix[i].f->name_len);
        }
        rc = rc ? rc : append_trimall(canon, ix[i].f->value, ix[i].f->value_len);
    }
    av__free(ix);
    rc = rc ? rc : av__buf_append(canon, "\n\n", 2);
    rc = rc ? rc : av__buf_append(canon, av__buf_head(signed_headers), signed_headers->len);
    rc = rc ? rc : av__buf_append(canon, "\n", 1);
    rc = rc ? rc : av__buf_append_str(canon, r->payload_hash);
    rc = rc ? rc : av__buf_append(signed_headers, "", 1); /* the NUL */
    if (!rc)
        signed_headers->len--;
    return rc;
}

int av__sigv4_hex_sha256(const void *data, size_t n, char hex[AV_SIGV4_HEX_LEN + 1])
{
    uint8_t d[AV_SHA256_LEN];
    if (av__crypto_sha256(data, n, d) != AV_OK)
        return AV_ERR_TLS;
    av__hex_encode(d, sizeof(d), AV__HEX_LOWER, hex);
    hex[AV_SIGV4_HEX_LEN] = '\0';
    return AV_OK;
}

int av__sigv4_sign(const av_sigv4_req *r, const uint8_t *secret, size_t secret_len, av_buf *signed_headers,
                   char sig[AV_SIGV4_HEX_LEN + 1])
{
    uint8_t key[AV_SHA256_LEN];
    int rc = av__sigv4_sign_key(r, secret, secret_len, signed_headers, sig, key);
    av__wipe(key, sizeof(key));
    return rc;
}

int av__sigv4_sign_key(const av_sigv4_req *r, const uint8_t *secret, size_t secret_len, av_buf *signed_headers,
                       char sig[AV_SIGV4_HEX_LEN + 1], uint8_t key[32])
{
    if (strlen(r->amz_date) != 16 || strlen(r->region) > AV_SIGV4_NAME_MAX || strlen(r->service) > AV_SIGV4_NAME_MAX)
        return AV_ERR_INVALID;
    av_buf canon;
    av__buf_init(&canon, AV_SIGV4_CANON_MAX);
    int rc = av__sigv4_canonical_request(r, &canon, signed_headers);
    char chash[AV_SIGV4_HEX_LEN + 1];
    rc = rc ? rc : av__sigv4_hex_sha256(av__buf_head(&canon), canon.len, chash);
    av__buf_free(&canon);
    if (rc)
        return rc;
    char sts[400];
    int sl = snprintf(sts, sizeof(sts), "%s\n%s\n%.8s/%s/%s/aws4_request\n%s", ALG, r->amz_date, r->amz_date, r->region,
                      r->service, chash);
    if (sl < 0 || (size_t)sl >= sizeof(sts))
        return AV_ERR_LIMIT;
    /* kSecret = "AWS4" + secret, then the chain date, region, service,
     * "aws4_request" */
    uint8_t *k0 = av__malloc(secret_len + 4);
    if (!k0)
        return AV_ERR_NOMEM;
    memcpy(k0, "AWS4", 4);
    memcpy(k0 + 4, secret, secret_len);
    uint8_t k[AV_SHA256_LEN], k2[AV_SHA256_LEN], s[AV_SHA256_LEN];
    rc = av__crypto_hmac_sha256(k0, secret_len + 4, r->amz_date, 8, k);
    av__wipe(k0, secret_len + 4);
    av__free(k0);
    rc = rc ? rc : av__crypto_hmac_sha256(k, sizeof(k), r->region, strlen(r->region), k2);
    rc = rc ? rc : av__crypto_hmac_sha256(k2, sizeof(k2), r->service, strlen(r->service), k);
    rc = rc ? rc : av__crypto_hmac_sha256(k, sizeof(k), "aws4_request", 12, k2);
    rc = rc ? rc : av__crypto_hmac_sha256(k2, sizeof(k2), sts, (size_t)sl, s);
    memcpy(key, k2, sizeof(k2));
    av__wipe(k, sizeof(k));
    av__wipe(k2, sizeof(k2));
    if (rc)
        return AV_ERR_TLS;
    av__hex_encode(s, sizeof(s), AV__HEX_LOWER, sig);
    sig[AV_SIGV4_HEX_LEN] = '\0';
    return AV_OK;
}

/* One chunk's signature (av__sigv4_resign_chunks). */
static int chunk_signature(const uint8_t key[32], const char *amz_date, const char *region, const char *service,
                           const char *prev, const uint8_t *data, size_t n, char sig[AV_SIGV4_HEX_LEN + 1])
{
    char dhash[AV_SIGV4_HEX_LEN + 1], sts[400];
    if (av__sigv4_hex_sha256(n ? (const void *)data : "", n, dhash) != AV_OK)
        return AV_ERR_TLS;
    int sl = snprintf(sts, sizeof(sts),
                      "AWS4-HMAC-SHA256-PAYLOAD\n%s\n%.8s/%s/%s/aws4_request\n%s\n"
                      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n%s",
                      amz_date, amz_date, region, service, prev, dhash);
    if (sl < 0 || (size_t)sl >= sizeof(sts))
        return AV_ERR_LIMIT;
    uint8_t s[AV_SHA256_LEN];
    if (av__crypto_hmac_sha256(key, 32, sts, (size_t)sl, s) != AV_OK)
        return AV_ERR_TLS;
    av__hex_encode(s, sizeof(s), AV__HEX_LOWER, sig);
    sig[AV_SIGV4_HEX_LEN] = '\0';
    return AV_OK;
}

int av__sigv4_resign_chunks(uint8_t *body, size_t n, const uint8_t key[32], const char *amz_date, const char *region,
                            const char *service, const char seed[AV_SIGV4_HEX_LEN + 1])
{
    static const char EXT[] = ";chunk-signature=";
    const size_t el = sizeof(EXT) - 1;
    if (strlen(amz_date) != 16)
        return AV_ERR_INVALID;
    char prev[AV_SIGV4_HEX_LEN + 1];
    memcpy(prev, seed, sizeof(prev));
    prev[AV_SIGV4_HEX_LEN] = '\0';
    size_t pos = 0;
    for (;;) {
        /* HEX;chunk-signature=SIG\r\n: at most 16 hex digits, no leading zeros but "0" */
        size_t hl = 0;
        uint64_t size = 0;
        while (pos + hl < n && hl <= 16 && av__hex_value(body[pos + hl]) >= 0) {
            size = size * 16 + (uint64_t)av__hex_value(body[pos + hl]);
            hl++;
        }
        if (hl == 0 || hl > 16 || (hl > 1 && body[pos] == '0'))
            return AV_ERR_PARSE;
        pos += hl;
        if (n - pos < el + AV_SIGV4_HEX_LEN + 2 || memcmp(body + pos, EXT, el) != 0 ||
            !av__sigv4_is_hex64((const char *)body + pos + el, AV_SIGV4_HEX_LEN) ||
            memcmp(body + pos + el + AV_SIGV4_HEX_LEN, "\r\n", 2) != 0)
            return AV_ERR_PARSE;
        uint8_t *sigp = body + pos + el;
        pos += el + AV_SIGV4_HEX_LEN + 2;
        if (size > n - pos || n - pos - size < 2 || memcmp(body + pos + size, "\r\n", 2) != 0)
            return AV_ERR_PARSE; /* the data, then CRLF (after the last chunk: the end) */
        char sig[AV_SIGV4_HEX_LEN + 1];
        int rc = chunk_signature(key, amz_date, region, service, prev, body + pos, (size_t)size, sig);
        if (rc)
            return rc;
        memcpy(sigp, sig, AV_SIGV4_HEX_LEN);
        memcpy(prev, sig, sizeof(prev));
        pos += (size_t)size + 2;
        if (size == 0)
            return pos == n ? AV_OK : AV_ERR_PARSE;
    }
}
