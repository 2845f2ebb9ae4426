/* test_oauth.c - OAuth 2.0 token requests and responses (av_oauth.c):
 * the token-response parser (success and error answers, expires_in as a
 * number or a string, strictness: duplicates, trailing bytes, nesting,
 * escapes, sizes), the form encoding of a token request, and the
 * client_secret_basic value (RFC 6749 2.3.1: form-urlencode id and secret
 * before base64). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_mem.h"
#include "av_oauth.h"

static int parse(const char *s, av_oauth_token *t, char *why)
{
    return av__oauth_parse_token((const uint8_t *)s, strlen(s), t, why, 200);
}

static void assert_secret_is(const av_secret *s, const char *want)
{
    assert_non_null(s);
    assert_int_equal(av__secret_len(s), strlen(want));
    assert_memory_equal(av__secret_data(s), want, strlen(want));
}

static void token_success(void **state)
{
    (void)state;
    av_oauth_token t;
    char why[200] = "";
    assert_int_equal(parse(" {\"access_token\":\"eyJ.abc-_~+/=\",\"token_type\":\"Bearer\",\"expires_in\":3599,"
                           "\"refresh_token\":\"rt-1\",\"scope\":\"a b\",\"extra\":{\"n\":[1,2.5e3,true,null]}}\r\n",
                           &t, why),
                     AV_OK);
    assert_secret_is(t.access_token, "eyJ.abc-_~+/=");
    assert_secret_is(t.refresh_token, "rt-1");
    assert_int_equal(t.expires_in, 3599);
    assert_true(t.bearer);
    assert_string_equal(t.error, "");
    av__oauth_token_clear(&t);

    /* expires_in as a string, token_type in lower case, no refresh token */
    assert_int_equal(parse("{\"token_type\":\"bearer\",\"expires_in\":\"60\",\"access_token\":\"x\"}", &t, why), AV_OK);
    assert_int_equal(t.expires_in, 60);
    assert_true(t.bearer);
    assert_null(t.refresh_token);
    av__oauth_token_clear(&t);

    /* no expires_in: -1; another token_type is kept as not bearer */
    assert_int_equal(parse("{\"access_token\":\"x\",\"token_type\":\"N_A\"}", &t, why), AV_OK);
    assert_int_equal(t.expires_in, -1);
    assert_false(t.bearer);
    assert_true(t.has_token_type);
    av__oauth_token_clear(&t);

    /* escapes decode: \/ is '/', \u0041 is 'A' */
    assert_int_equal(parse("{\"access_token\":\"a\\/b\\u0041\"}", &t, why), AV_OK);
    assert_secret_is(t.access_token, "a/bA");
    av__oauth_token_clear(&t);
}

static void token_error_answer(void **state)
{
    (void)state;
    av_oauth_token t;
    char why[200] = "";
    assert_int_equal(parse("{\"error\":\"invalid_grant\",\"error_description\":\"secret stuff\"}", &t, why), AV_OK);
    assert_null(t.access_token);
    assert_string_equal(t.error, "invalid_grant");
    av__oauth_token_clear(&t);
    /* an error with a token is still an error, and the token is dropped */
    assert_int_equal(parse("{\"access_token\":\"x\",\"error\":\"invalid_client\"}", &t, why), AV_OK);
    assert_null(t.access_token);
    assert_string_equal(t.error, "invalid_client");
    av__oauth_token_clear(&t);
    /* only the 5.2 character set is kept from the code, at most 64 */
    assert_int_equal(parse("{\"error\":\"bad\\n\\\"code\\u00e9\"}", &t, why), AV_OK);
    assert_string_equal(t.error, "badcode");
    av__oauth_token_clear(&t);
    char big[200];
    snprintf(big, sizeof(big), "{\"error\":\"%0100d\"}", 0);
    assert_int_equal(parse(big, &t, why), AV_OK);
    assert_int_equal(strlen(t.error), AV_OAUTH_ERROR_MAX);
    av__oauth_token_clear(&t);
}

static void token_refused(void **state)
{
    (void)state;
    static const struct {
        const char *in, *why;
    } cases[] = {
        {"", "not a JSON object"},
        {"[]", "not a JSON object"},
        {"\"x\"", "not a JSON object"},
        {"{}", "no access_token"},
        {"{\"access_token\":\"x\"", "not a JSON object"},
        {"{\"access_token\":\"x\"} x", "not a JSON object"},
        {"{\"access_token\":\"x\",}", "not a JSON object"},
        {"{\"access_token\":\"x\" \"b\":1}", "not a JSON object"},
        {"{\"access_token\":\"x\",\"access_token\":\"y\"}", "duplicate member"},
        {"{\"access_token\":5}", "not a JSON string"},
        {"{\"access_token\":\"\"}", "not visible ASCII"},
        {"{\"access_token\":\"a b\"}", "not visible ASCII"},
        {"{\"access_token\":\"a\\u0000\"}", "not visible ASCII"},
        {"{\"access_token\":\"\\u00e9\"}", "not visible ASCII"},
        {"{\"access_token\":\"x\",\"expires_in\":-1}", "expires_in"},
        {"{\"access_token\":\"x\",\"expires_in\":1.5}", "expires_in"},
        {"{\"access_token\":\"x\",\"expires_in\":\"soon\"}", "expires_in"},
        {"{\"access_token\":\"x\",\"expires_in\":\"\"}", "expires_in"},
        {"{\"access_token\":\"x\",\"expires_in\":1234567890123}", "expires_in"},
        {"{\"access_token\":\"x\",\"expires_in\":01}", "not a JSON object"},
        {"{\"access_token\":\"x\",\"token_type\":1}", "token_type"},
        {"{\"access_token\":\"x\",\"n\":tru}", "not a JSON object"},
        {"{\"access_token\":\"x\",\"n\":\"\\x\"}", "not a JSON object"},
        {"{\"access_token\":\"x\",\"n\":\"\\ud800\"}", "not a JSON object"},
        {"{\"access_token\":\"x\",\"n\":\"\\udc00\"}", "not a JSON object"},
        {"{\"access_token\":\"x\",\"n\":\"a\tb\"}", "not a JSON object"},
        {"{\"access_token\":\"x\",\"n\":\"\xc3\"}", "not a JSON object"},
        {"{\"access_token\":\"x\",\"n\":\"\xed\xa0\x80\"}", "not a JSON object"},
        {"{\"access_token\":\"x\",\"n\":\"\xc0\xaf\"}", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        av_oauth_token t;
        char why[200] = "";
        int rc = parse(cases[i].in, &t, why);
        if (rc != AV_ERR_PARSE || !strstr(why, cases[i].why))
            fail_msg("case %zu (%s): rc %d, why \"%s\"", i, cases[i].in, rc, why);
        assert_null(t.access_token);
        av__oauth_token_clear(&t);
    }
    /* nesting is bounded */
    char deep[200];
    size_t k = 0;
    k += (size_t)snprintf(deep, sizeof(deep), "{\"access_token\":\"x\",\"n\":");
    for (int d = 0; d < 40; d++)
        deep[k++] = '[';
    for (int d = 0; d < 40; d++)
        deep[k++] = ']';
    deep[k++] = '}';
    deep[k] = 0;
    av_oauth_token t;
    char why[200];
    assert_int_equal(parse(deep, &t, why), AV_ERR_PARSE);
    av__oauth_token_clear(&t);
    /* over 64 KiB */
    size_t n = AV_OAUTH_RESPONSE_MAX + 1;
    char *huge = malloc(n + 1);
    assert_non_null(huge);
    memset(huge, ' ', n);
    memcpy(huge, "{\"access_token\":\"x\"}", 20);
    huge[n] = 0;
    assert_int_equal(parse(huge, &t, why), AV_ERR_PARSE);
    assert_non_null(strstr(why, "64 KiB"));
    huge[n - 1] = 0; /* exactly the limit: fine (trailing spaces) */
    assert_int_equal(parse(huge, &t, why), AV_OK);
    av__oauth_token_clear(&t);
    free(huge);
    /* a token over 16 KiB */
    size_t tl = AV_OAUTH_TOKEN_MAX + 1;
    char *longtok = malloc(tl + 32);
    assert_non_null(longtok);
    int k2 = snprintf(longtok, 32, "{\"access_token\":\"");
    memset(longtok + k2, 'a', tl);
    memcpy(longtok + k2 + tl, "\"}", 3);
    assert_int_equal(parse(longtok, &t, why), AV_ERR_PARSE);
    longtok[k2 + tl - 1] = '"'; /* one shorter: exactly the limit, accepted */
    longtok[k2 + tl] = '}';
    longtok[k2 + tl + 1] = 0;
    assert_int_equal(parse(longtok, &t, why), AV_OK);
    assert_int_equal(av__secret_len(t.access_token), AV_OAUTH_TOKEN_MAX);
    av__oauth_token_clear(&t);
    free(longtok);
}

static void form_encoding(void **state)
{
    (void)state;
    av_buf b;
    av__buf_init(&b, 4096);
    assert_int_equal(av__oauth_form_add(&b, "grant_type", "client_credentials", 18), AV_OK);
    assert_int_equal(av__oauth_form_add(&b, "scope", "read:a write b", 14), AV_OK);
    assert_int_equal(av__oauth_form_add(&b, "client_secret", "a+b&c=d%/~\xc3\xa9", 12), AV_OK);
    const char want[] =
        "grant_type=client_credentials&scope=read%3Aa+write+b&client_secret=a%2Bb%26c%3Dd%25%2F%7E%C3%A9";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(av__buf_head(&b), want, b.len);
    av__buf_free(&b);
    /* bounded: a value that does not fit is refused, the buffer unchanged */
    av__buf_init(&b, 16);
    assert_int_equal(av__oauth_form_add(&b, "a", "b", 1), AV_OK);
    assert_int_not_equal(av__oauth_form_add(&b, "scope", "0123456789", 10), AV_OK);
    assert_int_equal(b.len, 3);
    av__buf_free(&b);
}

static void basic_auth(void **state)
{
    (void)state;
    /* RFC 6749 2.3.1: "agent client" -> "agent+client", "s:/+&" ->
     * "s%3A%2F%2B%26", then base64 of "agent+client:s%3A%2F%2B%26" */
    av_secret *s = av__oauth_basic("agent client", "s:/+&", 5);
    assert_secret_is(s, "Basic YWdlbnQrY2xpZW50OnMlM0ElMkYlMkIlMjY=");
    av__secret_free(s);
    /* plain ASCII id and secret: the usual base64("id:secret") */
    s = av__oauth_basic("client", "secret", 6);
    assert_secret_is(s, "Basic Y2xpZW50OnNlY3JldA==");
    av__secret_free(s);
    /* an empty secret */
    s = av__oauth_basic("c", "", 0);
    assert_secret_is(s, "Basic Yzo=");
    av__secret_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(token_success), cmocka_unit_test(token_error_answer), cmocka_unit_test(token_refused),
        cmocka_unit_test(form_encoding), cmocka_unit_test(basic_auth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
