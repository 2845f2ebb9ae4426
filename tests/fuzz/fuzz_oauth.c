/* fuzz_oauth.c - libFuzzer target for the OAuth 2.0 token-response parser
 * and the token-request encoders (av_oauth.c), checking invariants: an
 * accepted answer is either an error code of the RFC 6749 5.2 character
 * set or an access token of visible ASCII within the limits; the form
 * encoding and the client_secret_basic value are well-formed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_oauth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "invariant failed: %s\n", what);
        abort();
    }
}

static void check_token(const av_secret *s)
{
    const uint8_t *p = av__secret_data(s);
    size_t n = av__secret_len(s);
    check(n > 0 && n <= AV_OAUTH_TOKEN_MAX, "token length");
    for (size_t i = 0; i < n; i++)
        check(p[i] > 0x20 && p[i] < 0x7f, "token characters");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    av_oauth_token t;
    char why[200];
    int rc = av__oauth_parse_token(data, size, &t, why, sizeof(why));
    if (rc == AV_OK) {
        if (t.error[0]) {
            check(t.access_token == NULL, "an error answer has no token");
            for (const char *c = t.error; *c; c++)
                check(*c >= 0x20 && *c <= 0x7e && *c != '"' && *c != '\\', "error code characters");
        } else {
            check(t.access_token != NULL, "a success answer has a token");
            check_token(t.access_token);
        }
        if (t.refresh_token)
            check_token(t.refresh_token);
        check(t.expires_in >= -1, "expires_in");
    } else {
        check(rc == AV_ERR_PARSE || rc == AV_ERR_NOMEM, "error code");
        check(t.access_token == NULL && t.refresh_token == NULL, "nothing kept on error");
        check(strlen(why) > 0, "a reason");
    }
    av__oauth_token_clear(&t);

    /* the encoders over the input: the first byte splits id and secret */
    size_t cut = size ? data[0] % (size + 1) : 0;
    av_buf b;
    av__buf_init(&b, 4 * size + 64);
    rc = av__oauth_form_add(&b, "client_secret", data, size);
    if (size <= AV_OAUTH_TOKEN_MAX) {
        check(rc == AV_OK, "form_add fits");
        const uint8_t *o = av__buf_head(&b);
        for (size_t i = 0; i < b.len; i++)
            check((o[i] > 0x20 && o[i] < 0x7f && o[i] != '&' && o[i] != '=') || i == 13, "form characters");
    }
    av__buf_free(&b);
    char id[64];
    size_t il = cut < sizeof(id) - 1 ? cut : sizeof(id) - 1;
    for (size_t i = 0; i < il; i++)
        id[i] = data[i] ? (char)data[i] : 'x';
    id[il] = 0;
    av_secret *s = av__oauth_basic(id, data + cut, size - cut);
    if (s) {
        const uint8_t *p = av__secret_data(s);
        check(av__secret_len(s) >= 6 && memcmp(p, "Basic ", 6) == 0, "Basic prefix");
    }
    av__secret_free(s);
    return 0;
}
