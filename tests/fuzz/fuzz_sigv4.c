/* fuzz_sigv4.c - libFuzzer target for the SigV4 canonicalization
 * (av_sigv4.c): the agent's Authorization (Credential= scope,
 * SignedHeaders, Signature), the canonical URI (S3 and other services),
 * the canonical query and presigned-URL detection, and a whole canonical
 * request over fields cut from the input, checking invariants. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_sigv4.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "invariant failed: %s\n", what);
        abort();
    }
}

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

static void fuzz_auth(const char *in, size_t n)
{
    av_sigv4_auth a;
    const char *why = NULL;
    int rc = av__sigv4_parse_auth(in, n, &a, &why);
    check(rc == AV_OK || rc == AV_SIGV4_NOT_SIGV4 || rc == AV_SIGV4_SIGV4A || rc == AV_ERR_PARSE, "auth rc");
    check(why != NULL, "why set");
    if (rc != AV_OK)
        return;
    check(strlen(a.date) == 8 && a.region[0] && a.service[0] && a.akid[0], "scope parts");
    check(a.signed_headers >= in && a.signed_headers + a.signed_headers_len <= in + n, "signed headers view");
    for (const char *p = a.region; *p; p++)
        check((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-', "region chars");
    /* every listed name is found in the list */
    size_t s = 0;
    for (size_t i = 0; i <= a.signed_headers_len; i++) {
        if (i < a.signed_headers_len && a.signed_headers[i] != ';')
            continue;
        check(av__sigv4_list_has(a.signed_headers, a.signed_headers_len, a.signed_headers + s, i - s), "list has");
        s = i + 1;
    }
}

static void fuzz_uri(const char *in, size_t n)
{
    for (int s3 = 0; s3 < 2; s3++) {
        av_buf b;
        av__buf_init(&b, n * 3 + 8);
        int rc = av__sigv4_canonical_uri(in, n, s3, &b);
        check(rc == AV_OK, "uri fits 3n");
        const char *o = (const char *)av__buf_head(&b);
        check(b.len >= 1, "uri non-empty");
        if (s3) {
            check(n == 0 ? b.len == 1 : (b.len == n && memcmp(o, in, n) == 0), "s3 path as sent");
        } else {
            for (size_t i = 0; i < b.len; i++) {
                unsigned char c = (unsigned char)o[i];
                check(unreserved(c) || c == '/' || c == '%', "uri chars");
                if (c == '/')
                    check(i + 1 >= b.len || o[i + 1] != '/', "no empty segment");
            }
        }
        av__buf_free(&b);
    }
}

static void fuzz_query(const char *in, size_t n)
{
    av_buf b, again;
    av__buf_init(&b, n * 3 + 16);
    av__buf_init(&again, n * 9 + 64);
    (void)av__sigv4_query_is_presigned(in, n);
    int rc = av__sigv4_canonical_query(in, n, &b);
    check(rc == AV_OK || rc == AV_ERR_PARSE, "query rc");
    if (rc == AV_OK) {
        const char *o = (const char *)av__buf_head(&b);
        for (size_t i = 0; i < b.len; i++) {
            unsigned char c = (unsigned char)o[i];
            check(unreserved(c) || c == '%' || c == '=' || c == '&', "query chars");
        }
        /* canonical is a fixed point */
        check(av__sigv4_canonical_query(o ? o : "", b.len, &again) == AV_OK, "canonical reparses");
        check(again.len == b.len && (b.len == 0 || memcmp(av__buf_head(&again), o, b.len) == 0), "idempotent");
    }
    av__buf_free(&b);
    av__buf_free(&again);
}

/* Fields "name:value" separated by '\n' after a target line. */
static void fuzz_request(const char *in, size_t n)
{
    const char *nl = memchr(in, '\n', n);
    size_t tl = nl ? (size_t)(nl - in) : n;
    av_h1_field fs[16];
    size_t nf = 0;
    fs[nf++] = (av_h1_field){"host", 4, "example.com", 11};
    size_t pos = nl ? tl + 1 : n;
    while (pos < n && nf < 16) {
        const char *e = memchr(in + pos, '\n', n - pos);
        size_t ll = e ? (size_t)(e - (in + pos)) : n - pos;
        const char *c = memchr(in + pos, ':', ll);
        if (c && c > in + pos)
            fs[nf++] = (av_h1_field){in + pos, (size_t)(c - (in + pos)), c + 1, ll - (size_t)(c - (in + pos)) - 1};
        pos += ll + 1;
    }
    for (int s3 = 0; s3 < 2; s3++) {
        av_sigv4_req r = {
            "PUT", 3, in, tl, fs, nf, "UNSIGNED-PAYLOAD", "20150830T123600Z", "us-east-1", s3 ? "s3" : "service"};
        av_buf sh;
        av__buf_init(&sh, 65536);
        char sig[AV_SIGV4_HEX_LEN + 1];
        int rc = av__sigv4_sign(&r, (const uint8_t *)"secret", 6, &sh, sig);
        check(rc == AV_OK || rc == AV_ERR_PARSE || rc == AV_ERR_INVALID || rc == AV_ERR_LIMIT, "sign rc");
        if (rc == AV_OK) {
            check(av__sigv4_is_hex64(sig, strlen(sig)), "signature hex");
            check(sh.len > 0 && memchr(av__buf_head(&sh), '\n', sh.len) == NULL, "signed list one line");
        }
        av__buf_free(&sh);
    }
}

/* A signed aws-chunked body: re-signed in place, only the signatures
 * change, and re-signing again gives the same bytes. */
static void fuzz_chunks(const char *in, size_t n)
{
    static const uint8_t key[32] = {1, 2, 3};
    static const char seed[] = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
    uint8_t *a = malloc(n + 1), *b = malloc(n + 1);
    check(a && b, "malloc");
    memcpy(a, in, n);
    int rc = av__sigv4_resign_chunks(a, n, key, "20130524T000000Z", "us-east-1", "s3", seed);
    check(rc == AV_OK || rc == AV_ERR_PARSE, "resign rc");
    if (rc == AV_OK) {
        /* same length, the same bytes outside the 64-hex signatures */
        check(av__sigv4_is_hex64((const char *)a + n - 68, 64), "last signature before the final CRLFs");
        memcpy(b, a, n);
        check(av__sigv4_resign_chunks(b, n, key, "20130524T000000Z", "us-east-1", "s3", seed) == AV_OK, "again");
        check(memcmp(a, b, n) == 0, "resign idempotent");
        for (size_t i = 0; i < n; i++)
            if (a[i] != (uint8_t)in[i])
                check((a[i] >= '0' && a[i] <= '9') || (a[i] >= 'a' && a[i] <= 'f'), "only signature digits change");
    }
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192)
        return 0;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] % 5) {
    case 0:
        fuzz_auth(in, n);
        break;
    case 1:
        fuzz_uri(in, n);
        break;
    case 2:
        fuzz_query(in, n);
        break;
    case 3:
        fuzz_request(in, n);
        break;
    default:
        fuzz_chunks(in, n);
        break;
    }
    return 0;
}
