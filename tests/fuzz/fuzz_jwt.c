/* fuzz_jwt.c - libFuzzer target for the parsers of minted credentials
 * (av_jwt.c, the key loading of av_crypto.c, av__json_fields): the first
 * byte picks one, the rest is its input. Invariants: a loaded key signs
 * (ES256: 64 bytes; RS256: the modulus' size); an accepted answer holds a
 * token of visible ASCII within the limits and a positive lifetime; a
 * service-account key has an e-mail address and a key; nothing is kept on
 * error, and every error has a reason. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_crypto.h"
#include "av_jwt.h"
#include "av_oauth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "invariant failed: %s\n", what);
        abort();
    }
}

static void check_key_signs(const av_pkey *k)
{
    uint8_t sig[AV_JWS_SIG_MAX];
    size_t n = 0;
    check(av__pkey_sign_jws(k, "x", 1, sig, sizeof(sig), &n) == AV_OK, "a loaded key signs");
    check(av__pkey_type(k) == AV_PKEY_RSA ? n >= 256 && n <= 1024 : n == 64, "signature length");
}

static void check_answer(int rc, const av_oauth_token *t, const char *why)
{
    if (rc == AV_OK && !t->error[0]) {
        check(t->access_token != NULL, "a success answer has a token");
        const uint8_t *p = av__secret_data(t->access_token);
        size_t n = av__secret_len(t->access_token);
        check(n > 0 && n <= AV_OAUTH_TOKEN_MAX, "token length");
        for (size_t i = 0; i < n; i++)
            check(p[i] > 0x20 && p[i] < 0x7f, "token characters");
        check(t->expires_in == -1 || t->expires_in > 0, "a lifetime ahead");
    } else if (rc == AV_OK) {
        check(t->access_token == NULL, "an error answer has no token");
    } else {
        check(rc == AV_ERR_PARSE || rc == AV_ERR_NOMEM, "error code");
        check(t->access_token == NULL, "nothing kept on error");
        check(strlen(why) > 0, "a reason");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t which = data[0] % 6;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    char why[200] = "";
    const long long now = 1700000000;
    switch (which) {
    case 0: {
        av_gcp_key k;
        int rc = av__gcp_key_parse(p, n, &k, why, sizeof(why));
        if (rc == AV_OK) {
            check(k.client_email && strchr(k.client_email, '@') && k.key, "a usable key file");
            check_key_signs(k.key);
        } else {
            check(k.key == NULL && k.client_email == NULL && why[0], "nothing kept on error, a reason");
        }
        av__gcp_key_clear(&k);
        break;
    }
    case 1: {
        av_pkey *k = NULL;
        int rc = av__pkey_from_pem(p, n, &k, why, sizeof(why));
        if (rc == AV_OK)
            check_key_signs(k);
        else
            check(k == NULL && why[0], "nothing kept on error, a reason");
        av__pkey_free(k);
        break;
    }
    case 2: {
        av_oauth_token t;
        int rc = av__github_parse_token(p, n, now, &t, why, sizeof(why));
        check_answer(rc, &t, why);
        av__oauth_token_clear(&t);
        break;
    }
    case 3: {
        av_oauth_token t;
        int rc = av__gcp_parse_id_token(p, n, now, &t, why, sizeof(why));
        check_answer(rc, &t, why);
        check(rc != AV_OK || t.error[0] || t.expires_in > 0, "an ID token has a lifetime");
        av__oauth_token_clear(&t);
        break;
    }
    case 4: {
        long long v = 0;
        if (av__iso8601_utc((const char *)p, n, &v) == AV_OK)
            check(v >= 0 && v < 253402300800LL, "a time before year 10000");
        if (av__jwt_claim_exp((const char *)p, n, &v) == AV_OK)
            check(v >= 0, "exp is non-negative");
        break;
    }
    default: {
        av_json_field f[] = {{"a", AV_JSON_STR, 16, 0, NULL, 0, 0}, {"n", AV_JSON_INT, 0, 0, NULL, 0, 0}};
        int rc = av__json_fields(p, n, 4096, f, 2, why, sizeof(why));
        if (rc == AV_OK) {
            check(!f[0].seen || (f[0].str && f[0].len <= 16 && strlen(f[0].str) == f[0].len), "string bound");
            check(f[1].num >= 0, "non-negative integer");
        } else {
            check(f[0].str == NULL && why[0], "nothing kept on error, a reason");
        }
        av__json_fields_clear(f, 2);
        break;
    }
    }
    return 0;
}
