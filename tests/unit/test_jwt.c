/* test_jwt.c - signed JWTs for minted credentials (av_jwt.c, the key and
 * signature parts of av_crypto.c, av__json_fields in av_oauth.c): PEM key
 * loading (PKCS#8, PKCS#1, SEC1; other types, curves, sizes and encrypted
 * keys refused), RS256 signatures byte for byte (PKCS#1 v1.5 is
 * deterministic: the same JWT on both TLS backends, checked against one
 * computed by python3-cryptography), ES256's raw 64-byte form, the claims
 * of Google's and GitHub's JWTs, service-account key files, GitHub's and
 * Google's answers, and the strict JSON field reader. The test keys below
 * were generated for this test only. */
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
#include "av_crypto.h"
#include "av_enc.h"
#include "av_jwt.h"
#include "av_mem.h"
#include "av_oauth.h"

static const char RSA_PKCS1[] =
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAxgkGRVVzDWeQsbH0nHJvNSh/eNV5W2op2ExP+9CL8m6cIEc7\n"
    "IKeIVnI2dSaLAXkJXPAx7K415ssPqDyiNShQffEYPfDhTOa/9seMGMfbigAbdFIg\n"
    "vH5z1oFeALFtrjJqlbQ1BgTb4Q/zV0NOOkNoS6/E+K6uu1wpN4+grLKjpZem1Xe8\n"
    "ckLjgaFkp2YZXL5L5JNm9OtJ5N53ffk93GtzSSc9VVQGOU5nNezAUL/9aZwZ/uqT\n"
    "DFajRE/qSiJyNoBPmw4xYhhPPwyL3rYVylc9F9SB+VCCHuetXB1kKkSjGkrWSxak\n"
    "s6KASH8YbM7cLPUfaO7+NCu5sZtp0UEivEPopwIDAQABAoIBABjWLOkpLFgeswZL\n"
    "hp17D04gGXdIHq5DrvfSVP2vTBNITWBm+ULBKteHVM512l0sQZZcXDE42shqkzjK\n"
    "/J+kwg4+3IbNh77N+dQIzB3s2DCDOZjpwUf3/AMyZQhlOEJD+cYeEcBYKlNxsq0x\n"
    "DcXqNPxju6piDhwFak3uP30pR7OOtvnDyENQ82Scc0qFJ3OPXdXkpLKU37OJygcJ\n"
    "PWC51rdCT9Ep/Ry97dsSk5uSf6pE6NMp1LSlWlOUcb1ccipsicYLXwH6uHdomU4U\n"
    "PnfKz8r5hgHyurrC1NXztPXxJO/LDhX2mmoufEDSjH+ohvRrSOCPagkwRj4yNZuy\n"
    "I0wXliECgYEA6UJkpbMzSFPn5i8y/pjUZpH5LqnstHeLekCkZBLw2Be2hhzfp/k2\n"
    "X+2o/bjHBh19sP2pOS79xwk7RGMi3M0u97u1g1B3ceBYDMJ2g1OX+Pt6kE8gkZ1/\n"
    "eIcKR3UzuEEK0xuGKTYZ5HGa5jp3LgrSgRQ9Qew42s9kFa3YK7L+3mkCgYEA2VeF\n"
    "Ol0u1X9qTY+LmhF2chrwmciWu96GX315Qgtd7X0H7XOor1pOo9qDYXm8m57zD/IT\n"
    "vIqUbD3xXs/xyk/WzvT3uHibFBRGN5k9v6Uyr4JS+mxERGMq4cXBMLbJRljtr86j\n"
    "GJEWCjjPeVPtc/bq84KC73y4pSprXpXpMZAazI8CgYAjypQ2+LA9wOIsZ8GjXz/4\n"
    "HR3nExvG9TDpqVGQKXfbMIhJO9T1qT+2qHjttZSUU6Idrk5w/8zg5YG6lJuc1b8H\n"
    "ND49z/MD/jCEhLI6pHEFO1ErI3kT3t7YV6A0Jr+w3goTKn4DhNGkQ+pIuV/gKLj0\n"
    "JW7g1qZCrN/mk64/xk9lQQKBgQCj7QUJbjriwIVXFot+mukxSuxpsQcvj7jd0O9i\n"
    "RtyDQSh3iiKSj5R8tVUecgk1fv9o6XbFX+huc5HXpxOBOhKUaeNleWHOFTSYvrX6\n"
    "FAlUowEe7AXZZspzGwqJSXQp4Oz1Cu+smdF7yDmEEy8npfazz54eL3285W+yGXOW\n"
    "9E+iNQKBgDR5qaDsPkkyDqpIN1mwBgfuTtrs7oBScFd0EmSQQmHpix+EDu93FE/Q\n"
    "tbaF76/2/BGj5CdNCVZcPEiG/iiuX9OEIPgt9Z6i6qN1e1xbtAHjCRjSKMwo9yi3\n"
    "EbeYRvwwrOYFBBHAa3RxW73cCZ3KE1JMTnTrsTqh8GbFDQTI6lE9\n"
    "-----END RSA PRIVATE KEY-----\n";

static const char EC_SEC1[] =
    "-----BEGIN EC PRIVATE KEY-----\n"
    "MHcCAQEEIA9GOOn3Os1SvtvFH2tH1gIQ79zie5t1DAOilAixZADioAoGCCqGSM49\n"
    "AwEHoUQDQgAE4UqgPnmlSbghJb3H+I3+dCuE1CJmhr4plgBGTQf5R3MocYTcS4OS\n"
    "SjP3P5ckmPDmYRsJ6vk5CjtfEMamOgNyXQ==\n"
    "-----END EC PRIVATE KEY-----\n";

static const char EC_P384[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDA+1YNuk6WY3e1E12RN\n"
    "m+Bhrg7Bw9Htk+f5uluKWWJkFBKbV0UOEguhRvil86EVk8ihZANiAASyXUV7yDwj\n"
    "0YZZU/xg3iJNIcINWbx2UFd41mJvWMpcOx5UiM9EQapKhyCrmPdYZzi2qZW32gDy\n"
    "H6YAuVVS7BQEKN7nh8Zu9auNOkp7+AoNkS1aYk5JN3rQvmxmRh8qCC4=\n"
    "-----END PRIVATE KEY-----\n";

static const char RSA_1024[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBALyPTOogXnGr5H9A\n"
    "alXCn49mJtiRC0rQNSohJJE5eeftuto4H9O+9a51H2+TN3WQGVSf7uTaiTbD8uNA\n"
    "7dxPdCj9tNwPp6bMeoVZ945uqb9aAsqDIs0QGSgyplmNzaUWMD4ghod00YCUGuZh\n"
    "J1aY/ixgM4Kfrx9XrICQkOEaqvb5AgMBAAECgYBsW/WZfmyH6n5vWndBPY0wfUXJ\n"
    "ouDYZ3qF8XHwOxWBYS7GBQbVSqIpVYlxNyrh1qOX7Cj/P08nN8g3LLMErmxTvUtz\n"
    "1sOr7RY7rJXSxiArEjCRu7yqaJ6k0OuzwfAXKebgFyKimiGstFL5xObqreK4BGmV\n"
    "W5RckKdEwRGl6F0BAQJBAOd4hCpLA3UVqwBrYdZqut9UlQKG1uqaXAdxEYGnBobt\n"
    "AW+8M8gn66AYcKxPCIe8+ud/txcM2zVFkWighuMrMfECQQDQiqrxpCCcSlMeYyLt\n"
    "5jyRcLibTmq5nW4VXyXw6IZ7zvnffxiZxxOSxQL0h+++Gb4LrSKgXzdxl3+HRm1D\n"
    "RA2JAkEAg+Yv4e3G9ZQ4Uk/ee5FsFVEcbEkr9JmrMW5j3G6yEHbDp8kl9LuS0DK9\n"
    "GeMbaEXu77XePhtMWone9zDqTE7T8QJAYU6S/TXMUaEMr70qaz9nO6YRPcaVXg7r\n"
    "cuV22rZlKhgl1/eCDx8pLu7mthtH7rgsSV58LcDAKiy6wPBHw39ZoQJAEGfJxVED\n"
    "G1ndImGeflgTuLhx4Iq/iuEt2p0iqCHjr7xFZsUZfJhczXG8pLCRFoeV9lgxg7SW\n"
    "ciMavCFyf6IBAw==\n"
    "-----END PRIVATE KEY-----\n";

static const char RSA_ENCRYPTED[] =
    "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
    "MIIFLTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQIDla2m8WbfZICAggA\n"
    "MAwGCCqGSIb3DQIJBQAwHQYJYIZIAWUDBAEqBBBEIglVBBa0tBdba81ElfmgBIIE\n"
    "0KxvHBsSmWQqefqiv3J94Y52Fjuj2Y8Wl5o4+SLzuQm9PtF3LYVnRZceuogRZnJJ\n"
    "BidxD5PYy/YHfxoJDNFspxoEA0H9f/vlbyQurRv2XFmYWqCib6HYvBD3e+ozKUGX\n"
    "9FMpYtNcAIBMPCwNFG9YPFWa5IQQIhcmq0L5o5xIJyYYzTkms1KPtnh5JqBT+RLJ\n"
    "Gz07UTNCIhnzwlpMRH05eUmvONZ/OHdTIOkGsmtjrxklrjUMbN66pu6bmTd8tvnR\n"
    "AXulXhqNkmr5w6Td4MOYBRyHMi3W70jPgSZrX+nstUZd8zyWE8ci/V3L9Wtiv0AB\n"
    "FqS2LS8TdmiiT2g4/5bCygPNRfC+C1ifJtap3wC1e7dqrX/FhSR/kxUMk5W/fc32\n"
    "RVqyddt//xUOYP+wQVVtdfRVFUcIn47fnj4uPC3TW/IJ147Cok+CcmaStiLMBhXF\n"
    "uAed7oLnfu5/AzToI5BKo/6XagaWSMyM+gXep+gxfxMKr6CmUL//b8rtJef0gVmM\n"
    "y016hC+P+l21/qLKKgXskNhQJ7wOxNBX4xK39lnHntDR5jTc/fWM8EvKvdudMVQ1\n"
    "I7VQi+i75O422y3mQNlZqU1dKameNZ5n6EVBvZMUA34mCLWEq+s4yr2KCyJSgL0m\n"
    "nG+ZJDf+DaaJcgjFJ9nIeq5KUI4gtZCK47p98u5GsajAjc1xYh/iY+v9RohDs7gs\n"
    "l//p0sRXqr2gRdYfhyYXlQATddFq8id779byEJi/GlR5RAcObGZPN/3/mUKFn0mj\n"
    "XQCQYtoqU7+v9cNY6pBc7Skv8H0agHSgXPIyUYeiVKCMK3C1HCl/JXZKu0Q9FgJj\n"
    "fxeQKcN30GzlyU/iNu69IT3+hnmumDgu5vVKAljTzLH3KJ9Bmujkqq/jkx8Lok/b\n"
    "d7jgbcbBSvtr5Q0zIIGAVozxeZawLDO8eVw7dJ6M/ZHrAOxozM7PXId5I+NXOkMc\n"
    "pcnm4d66pwPE3GlPwD8OqF/Wx7XbQL8tU9ukY1joFDCGkdCEHUypVjOJcgC5NWgS\n"
    "riMqnPAuspTxb7Gh6Lmzfuul49LUOSL7MzZq0qyOtwsokEI0D5D2GwDeN+Q6WVoK\n"
    "jcdmOqnd2O0yEPM0mEFaJ0zqOLB9Y4/9AzR/68BdncYhVEqAQlE6bSXPPWOacPru\n"
    "jdu83lTaFcQ3FUubSAmnN66YLbXKjPUSlaoU7d761VLA6fh3IYtwkGt1yrd7kiWu\n"
    "jNQFA7Axy1OOgMg/kVhURlIgB8H/FW98W6B9BctbikBVk3J+xeIek0mjDtREMnaj\n"
    "3Y5bfPrpan32G6IAMA9n6L3kF9aFMFbBPDbaz2xIZOnJE47nFD9VMN7NtSYBeBOm\n"
    "sPh5W9jXt4nWf+jgNPh3/RLt7eFKhqAqst1o75xhnuJ/d11WiDBK2vmSSG5KUgGS\n"
    "w7aIBiQZ962llDF2ewA4Ev8Exsw9QYk2P/y0lWxJ9WAhqzOV9pC12kEAheswCsmO\n"
    "CFsxicNeFcVQARriM46MxbXID9FKeCeWGKyJf2JYXsFJnYBXkiUQseflU9Yrr+TS\n"
    "LUwe5T3ncr+RbEEFfczMx0ETgYDUmTVYXrdzT01qOWIaPc5eyAqjizAsRMeb5o3V\n"
    "IH5y3PE9Dsq9Lj8iEjADZEml859zPrA+68UETnXMxnBn\n"
    "-----END ENCRYPTED PRIVATE KEY-----\n";

static const char ED25519[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEII14nHiJ2gkurU+jlLTEvLARNOlvbnpd0tKamKBPjfD/\n"
    "-----END PRIVATE KEY-----\n";

static const char RSA_PKCS8[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDGCQZFVXMNZ5Cx\n"
    "sfSccm81KH941XlbainYTE/70IvybpwgRzsgp4hWcjZ1JosBeQlc8DHsrjXmyw+o\n"
    "PKI1KFB98Rg98OFM5r/2x4wYx9uKABt0UiC8fnPWgV4AsW2uMmqVtDUGBNvhD/NX\n"
    "Q046Q2hLr8T4rq67XCk3j6CssqOll6bVd7xyQuOBoWSnZhlcvkvkk2b060nk3nd9\n"
    "+T3ca3NJJz1VVAY5Tmc17MBQv/1pnBn+6pMMVqNET+pKInI2gE+bDjFiGE8/DIve\n"
    "thXKVz0X1IH5UIIe561cHWQqRKMaStZLFqSzooBIfxhsztws9R9o7v40K7mxm2nR\n"
    "QSK8Q+inAgMBAAECggEAGNYs6SksWB6zBkuGnXsPTiAZd0gerkOu99JU/a9ME0hN\n"
    "YGb5QsEq14dUznXaXSxBllxcMTjayGqTOMr8n6TCDj7chs2Hvs351AjMHezYMIM5\n"
    "mOnBR/f8AzJlCGU4QkP5xh4RwFgqU3GyrTENxeo0/GO7qmIOHAVqTe4/fSlHs462\n"
    "+cPIQ1DzZJxzSoUnc49d1eSkspTfs4nKBwk9YLnWt0JP0Sn9HL3t2xKTm5J/qkTo\n"
    "0ynUtKVaU5RxvVxyKmyJxgtfAfq4d2iZThQ+d8rPyvmGAfK6usLU1fO09fEk78sO\n"
    "Ffaaai58QNKMf6iG9GtI4I9qCTBGPjI1m7IjTBeWIQKBgQDpQmSlszNIU+fmLzL+\n"
    "mNRmkfkuqey0d4t6QKRkEvDYF7aGHN+n+TZf7aj9uMcGHX2w/ak5Lv3HCTtEYyLc\n"
    "zS73u7WDUHdx4FgMwnaDU5f4+3qQTyCRnX94hwpHdTO4QQrTG4YpNhnkcZrmOncu\n"
    "CtKBFD1B7Djaz2QVrdgrsv7eaQKBgQDZV4U6XS7Vf2pNj4uaEXZyGvCZyJa73oZf\n"
    "fXlCC13tfQftc6ivWk6j2oNhebybnvMP8hO8ipRsPfFez/HKT9bO9Pe4eJsUFEY3\n"
    "mT2/pTKvglL6bEREYyrhxcEwtslGWO2vzqMYkRYKOM95U+1z9urzgoLvfLilKmte\n"
    "lekxkBrMjwKBgCPKlDb4sD3A4ixnwaNfP/gdHecTG8b1MOmpUZApd9swiEk71PWp\n"
    "P7aoeO21lJRToh2uTnD/zODlgbqUm5zVvwc0Pj3P8wP+MISEsjqkcQU7USsjeRPe\n"
    "3thXoDQmv7DeChMqfgOE0aRD6ki5X+AouPQlbuDWpkKs3+aTrj/GT2VBAoGBAKPt\n"
    "BQluOuLAhVcWi36a6TFK7GmxBy+PuN3Q72JG3INBKHeKIpKPlHy1VR5yCTV+/2jp\n"
    "dsVf6G5zkdenE4E6EpRp42V5Yc4VNJi+tfoUCVSjAR7sBdlmynMbColJdCng7PUK\n"
    "76yZ0XvIOYQTLyel9rPPnh4vfbzlb7IZc5b0T6I1AoGANHmpoOw+STIOqkg3WbAG\n"
    "B+5O2uzugFJwV3QSZJBCYemLH4QO73cUT9C1toXvr/b8EaPkJ00JVlw8SIb+KK5f\n"
    "04Qg+C31nqLqo3V7XFu0AeMJGNIozCj3KLcRt5hG/DCs5gUEEcBrdHFbvdwJncoT\n"
    "UkxOdOuxOqHwZsUNBMjqUT0=\n"
    "-----END PRIVATE KEY-----\n";

static const char EC_PKCS8[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgD0Y46fc6zVK+28Uf\n"
    "a0fWAhDv3OJ7m3UMA6KUCLFkAOKhRANCAAThSqA+eaVJuCElvcf4jf50K4TUImaG\n"
    "vimWAEZNB/lHcyhxhNxLg5JKM/c/lySY8OZhGwnq+TkKO18QxqY6A3Jd\n"
    "-----END PRIVATE KEY-----\n";

/* The RS256 JWT of RSA_PKCS1 over the claims below, computed with
 * python3-cryptography (RSAPrivateKey.sign, PKCS1v15, SHA256). */
#define WANT_CLAIMS                                                                                                  \
    "{\"iss\":\"a@b.test\",\"scope\":\"s\",\"aud\":\"https://oauth2.googleapis.com/token\",\"iat\":1700000000,"      \
    "\"exp\":1700003600}"
static const char WANT_JWT[] =
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0."
    "eyJpc3MiOiJhQGIudGVzdCIsInNjb3BlIjoicyIsImF1ZCI6Imh0dHBzOi8vb2F1dGgyLmdvb2dsZWFwaXMuY29tL3Rva2VuIiwiaWF0IjoxNz"
    "AwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDB9."
    "mAGjhW0L2c8Hwv-GC09F7WpZFhRKMSQuO4GnldfaBqLykwP-RdiXf1bRwW4LI2jqI-ETaxTxWY4oNoOOzRKnXMZPLz1q2_jf_4Rk05A-Yr2MjMQd"
    "mVsmKrloQZB1nL_l1pFeG5yxpxaeIXoelKF5M6NLeULpwKUxEmdor8B4itsxtIN-jnIgt9ochlJHjwTT0fugcg7G-y-PNWKfmmejtN_15hO9-Gz"
    "-TBLWV955z7i6yelbPqiUQrMkHVE_KwH98toTWy7tGfZKfXn8kJcnOrFXOHFoYLSbuH2PYb_E5DtbrhBGxPpkhSrGBAe2KVE3CHI4SNaLteQyZz"
    "Vg1E9L8Q";

static av_pkey *load(const char *pem, int want_rc, char *why)
{
    av_pkey *k = NULL;
    assert_int_equal(av__pkey_from_pem(pem, strlen(pem), &k, why, 200), want_rc);
    if (want_rc != AV_OK)
        assert_null(k);
    return k;
}

static void pem_loading(void **state)
{
    (void)state;
    char why[200];
    av_pkey *k = load(RSA_PKCS1, AV_OK, why);
    assert_int_equal(av__pkey_type(k), AV_PKEY_RSA);
    av__pkey_free(k);
    k = load(RSA_PKCS8, AV_OK, why);
    assert_int_equal(av__pkey_type(k), AV_PKEY_RSA);
    av__pkey_free(k);
    k = load(EC_SEC1, AV_OK, why);
    assert_int_equal(av__pkey_type(k), AV_PKEY_EC_P256);
    av__pkey_free(k);
    k = load(EC_PKCS8, AV_OK, why);
    assert_int_equal(av__pkey_type(k), AV_PKEY_EC_P256);
    av__pkey_free(k);

    load(ED25519, AV_ERR_PARSE, why);
    assert_string_equal(why, "the key is neither RSA nor ECDSA P-256");
    load(EC_P384, AV_ERR_PARSE, why);
    assert_string_equal(why, "the EC key is not on curve P-256 (ES256)");
    load(RSA_1024, AV_ERR_PARSE, why);
    assert_string_equal(why, "the RSA key must have 2048 to 8192 bits");
    /* an encrypted key: refused, never a passphrase prompt */
    load(RSA_ENCRYPTED, AV_ERR_PARSE, why);
    assert_non_null(strstr(why, "not a PEM private key"));
    load("", AV_ERR_PARSE, why);
    load("{\"private_key\": 1}", AV_ERR_PARSE, why);
    load("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", AV_ERR_PARSE, why);
    /* a PEM truncated in the middle */
    char half[800];
    memcpy(half, RSA_PKCS1, sizeof(half) - 1);
    half[sizeof(half) - 1] = 0;
    load(half, AV_ERR_PARSE, why);
    /* a certificate first, then the key: the key is found */
    char both[4000];
    snprintf(both, sizeof(both), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n%s", EC_SEC1);
    k = load(both, AV_OK, why);
    av__pkey_free(k);
    /* over the size bound */
    size_t big = AV_PEM_MAX + 1;
    char *b = malloc(big);
    assert_non_null(b);
    memset(b, '-', big);
    k = NULL;
    assert_int_equal(av__pkey_from_pem(b, big, &k, why, sizeof(why)), AV_ERR_LIMIT);
    free(b);
}

static void rs256_is_byte_identical(void **state)
{
    (void)state;
    char why[200];
    const char *forms[] = {RSA_PKCS1, RSA_PKCS8};
    for (size_t i = 0; i < 2; i++) {
        av_pkey *k = load(forms[i], AV_OK, why);
        av_secret *jwt = NULL;
        assert_int_equal(av__jwt_sign(k, "k1", WANT_CLAIMS, strlen(WANT_CLAIMS), &jwt), AV_OK);
        assert_int_equal(av__secret_len(jwt), strlen(WANT_JWT));
        assert_memory_equal(av__secret_data(jwt), WANT_JWT, strlen(WANT_JWT));
        av__secret_free(jwt);
        av__pkey_free(k);
    }
}

static void es256_raw_signature(void **state)
{
    (void)state;
    char why[200];
    av_pkey *k = load(EC_SEC1, AV_OK, why);
    uint8_t sig[AV_JWS_SIG_MAX], sig2[AV_JWS_SIG_MAX];
    size_t n = 0, n2 = 0;
    assert_int_equal(av__pkey_sign_jws(k, "m", 1, sig, sizeof(sig), &n), AV_OK);
    assert_int_equal(n, 64); /* r||s, not DER */
    assert_int_equal(av__pkey_sign_jws(k, "m", 1, sig2, sizeof(sig2), &n2), AV_OK);
    assert_int_equal(n2, 64);
    assert_true(memcmp(sig, sig2, 64) != 0); /* ECDSA is randomised */
    assert_int_equal(av__pkey_sign_jws(k, "m", 1, sig, 63, &n), AV_ERR_LIMIT);
    av_secret *jwt = NULL;
    assert_int_equal(av__jwt_sign(k, NULL, "{}", 2, &jwt), AV_OK);
    /* {"alg":"ES256","typ":"JWT"} . {} . 86 characters */
    const char *want = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.e30.";
    assert_true(av__secret_len(jwt) == strlen(want) + 86);
    assert_memory_equal(av__secret_data(jwt), want, strlen(want));
    av__secret_free(jwt);
    av__pkey_free(k);
    /* an RSA key needs room for its whole signature */
    k = load(RSA_PKCS1, AV_OK, why);
    assert_int_equal(av__pkey_sign_jws(k, "m", 1, sig, 255, &n), AV_ERR_LIMIT);
    assert_int_equal(av__pkey_sign_jws(k, "m", 1, sig, 256, &n), AV_OK);
    assert_int_equal(n, 256);
    av__pkey_free(k);
}

static void claims(void **state)
{
    (void)state;
    av_gcp_key k = {.client_email = "sa@p.iam.test"};
    av_buf b;
    av__buf_init(&b, 4096);
    assert_int_equal(av__gcp_claims(&k, "a b", NULL, "https://t.test/token", 1700000000, &b), AV_OK);
    const char *want = "{\"iss\":\"sa@p.iam.test\",\"scope\":\"a b\",\"aud\":\"https://t.test/token\","
                       "\"iat\":1700000000,\"exp\":1700003600}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(av__buf_head(&b), want, b.len);
    av__buf_reset(&b);
    assert_int_equal(av__gcp_claims(&k, NULL, "https://run.test/\"x", "u", 5, &b), AV_OK);
    want = "{\"iss\":\"sa@p.iam.test\",\"target_audience\":\"https://run.test/\\\"x\",\"aud\":\"u\",\"iat\":5,"
           "\"exp\":3605}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(av__buf_head(&b), want, b.len);
    av__buf_reset(&b);
    assert_int_equal(av__gcp_claims(&k, NULL, NULL, "u", 5, &b), AV_OK);
    assert_non_null(memmem(av__buf_head(&b), b.len, AV_GCP_SCOPE_DEFAULT, strlen(AV_GCP_SCOPE_DEFAULT)));
    av__buf_reset(&b);
    /* GitHub: iat a minute back, exp nine minutes ahead (600 s apart) */
    assert_int_equal(av__github_claims("Iv23li.x", 1700000000, &b), AV_OK);
    want = "{\"iat\":1699999940,\"exp\":1700000540,\"iss\":\"Iv23li.x\"}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(av__buf_head(&b), want, b.len);
    av__buf_reset(&b);
    assert_int_equal(av__github_body(NULL, NULL, &b), AV_OK);
    assert_int_equal(b.len, 2);
    assert_memory_equal(av__buf_head(&b), "{}", 2);
    av__buf_reset(&b);
    assert_int_equal(av__github_body("a,b.c", "contents:read,issues:write", &b), AV_OK);
    want = "{\"repositories\":[\"a\",\"b.c\"],\"permissions\":{\"contents\":\"read\",\"issues\":\"write\"}}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(av__buf_head(&b), want, b.len);
    av__buf_reset(&b);
    assert_int_equal(av__github_body(NULL, "pull_requests:write", &b), AV_OK);
    want = "{\"permissions\":{\"pull_requests\":\"write\"}}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(av__buf_head(&b), want, b.len);
    av__buf_free(&b);
}

/* sa_json: a service-account key file around |pem| with |extra| members */
static char *sa_json(const char *pem, const char *extra)
{
    size_t cap = strlen(pem) * 2 + 1024;
    char *out = malloc(cap);
    assert_non_null(out);
    char *esc = malloc(strlen(pem) * 2 + 1);
    assert_non_null(esc);
    size_t k = 0;
    for (const char *p = pem; *p; p++) {
        if (*p == '\n') {
            esc[k++] = '\\';
            esc[k++] = 'n';
        } else {
            esc[k++] = *p;
        }
    }
    esc[k] = 0;
    snprintf(out, cap, "{\"type\":\"service_account\",\"project_id\":\"p\",\"private_key_id\":\"abc123\","
                       "\"private_key\":\"%s\",\"client_email\":\"sa@p.iam.test\",\"client_id\":\"1\","
                       "\"auth_provider_x509_cert_url\":\"https:\\/\\/x\"%s}",
             esc, extra);
    free(esc);
    return out;
}

static int gcp_parse(const char *json, av_gcp_key *k, char *why)
{
    return av__gcp_key_parse((const uint8_t *)json, strlen(json), k, why, 200);
}

static void gcp_key_files(void **state)
{
    (void)state;
    char why[200];
    av_gcp_key k;
    char *j = sa_json(RSA_PKCS8, ",\"token_uri\":\"https://oauth2.googleapis.com/token\"");
    assert_int_equal(gcp_parse(j, &k, why), AV_OK);
    assert_string_equal(k.client_email, "sa@p.iam.test");
    assert_string_equal(k.private_key_id, "abc123");
    assert_string_equal(k.token_uri, "https://oauth2.googleapis.com/token");
    assert_int_equal(av__pkey_type(k.key), AV_PKEY_RSA);
    /* the same JWT as from the PEM alone */
    av_secret *jwt = NULL;
    assert_int_equal(av__jwt_sign(k.key, "k1", WANT_CLAIMS, strlen(WANT_CLAIMS), &jwt), AV_OK);
    assert_memory_equal(av__secret_data(jwt), WANT_JWT, strlen(WANT_JWT));
    av__secret_free(jwt);
    av__gcp_key_clear(&k);
    free(j);

    j = sa_json(EC_SEC1, "");
    assert_int_equal(gcp_parse(j, &k, why), AV_OK);
    assert_null(k.token_uri);
    assert_int_equal(av__pkey_type(k.key), AV_PKEY_EC_P256);
    av__gcp_key_clear(&k);
    free(j);

    static const struct {
        const char *extra, *why;
    } bad[] = {
        {",\"token_uri\":\"http://oauth2.googleapis.com/token\"", "\"token_uri\" is not an https:// URL"},
        {",\"type\":\"x\"", "\"type\" appears twice"},
        {",\"token_uri\":5", "\"token_uri\" is not a JSON string"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        j = sa_json(RSA_PKCS1, bad[i].extra);
        assert_int_equal(gcp_parse(j, &k, why), AV_ERR_PARSE);
        if (!strstr(why, bad[i].why))
            fail_msg("case %zu: %s", i, why);
        assert_null(k.key);
        free(j);
    }
    j = sa_json(ED25519, "");
    assert_int_equal(gcp_parse(j, &k, why), AV_ERR_PARSE);
    assert_string_equal(why, "the service-account key's private_key is not usable: the key is neither RSA nor "
                             "ECDSA P-256");
    free(j);
    assert_int_equal(gcp_parse("{\"type\":\"authorized_user\"}", &k, why), AV_ERR_PARSE);
    assert_non_null(strstr(why, "\"type\" is not \"service_account\""));
    assert_int_equal(gcp_parse("{\"type\":\"service_account\",\"client_email\":\"x\"}", &k, why), AV_ERR_PARSE);
    assert_non_null(strstr(why, "client_email"));
    assert_int_equal(gcp_parse("{\"type\":\"service_account\",\"client_email\":\"x@y\"}", &k, why), AV_ERR_PARSE);
    assert_non_null(strstr(why, "no \"private_key\""));
    assert_int_equal(gcp_parse("[]", &k, why), AV_ERR_PARSE);
    assert_int_equal(gcp_parse("{\"type\":\"service_account\"} x", &k, why), AV_ERR_PARSE);
    assert_int_equal(gcp_parse("{\"type\":\"service_\\u0000account\"}", &k, why), AV_ERR_PARSE);
    assert_non_null(strstr(why, "NUL"));
}

static void github_answers(void **state)
{
    (void)state;
    av_oauth_token t;
    char why[200];
    long long now = 1468275250 - 3600; /* expires_at below is an hour ahead */
    const char *ok = "{\"token\":\"ghs_16C7e42F292c6912E7710c838347Ae178B4a\",\"expires_at\":\"2016-07-11T22:14:10Z\","
                     "\"permissions\":{\"issues\":\"write\"},\"repository_selection\":\"selected\"}";
    assert_int_equal(av__github_parse_token((const uint8_t *)ok, strlen(ok), now, &t, why, sizeof(why)), AV_OK);
    assert_int_equal(t.expires_in, 3600);
    assert_int_equal(av__secret_len(t.access_token), 40);
    av__oauth_token_clear(&t);
    /* a stateless token: any length */
    char big[2048];
    int n = snprintf(big, sizeof(big), "{\"expires_at\":\"2016-07-11T22:14:10.123Z\",\"token\":\"ghs_42_");
    for (int i = 0; i < 1500; i++)
        big[n++] = 'A' + (char)(i % 26);
    n += snprintf(big + n, sizeof(big) - (size_t)n, "\"}");
    assert_int_equal(av__github_parse_token((const uint8_t *)big, (size_t)n, now, &t, why, sizeof(why)), AV_OK);
    assert_int_equal(av__secret_len(t.access_token), 1507);
    av__oauth_token_clear(&t);
    static const struct {
        const char *body, *why;
    } bad[] = {
        {"{\"expires_at\":\"2016-07-11T22:14:10Z\"}", "no token"},
        {"{\"token\":\"a b\"}", "not visible ASCII"},
        {"{\"token\":\"x\",\"expires_at\":\"2016-07-11 22:14:10\"}", "not a UTC time"},
        {"{\"token\":\"x\",\"expires_at\":\"2016-02-30T22:14:10Z\"}", "not a UTC time"},
        {"{\"token\":\"x\",\"expires_at\":\"2016-07-11T21:14:10Z\"}", "already expired"},
        {"{\"token\":\"x\",\"token\":\"y\"}", "appears twice"},
        {"{\"message\":\"Bad credentials\"}", "no token"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(
            av__github_parse_token((const uint8_t *)bad[i].body, strlen(bad[i].body), now, &t, why, sizeof(why)),
            AV_ERR_PARSE);
        assert_non_null(strstr(why, bad[i].why));
        assert_null(t.access_token);
    }
    long long v;
    assert_int_equal(av__iso8601_utc("2024-02-29T23:59:59Z", 20, &v), AV_OK);
    assert_int_equal(v, 1709251199);
    assert_int_equal(av__iso8601_utc("2023-02-29T23:59:59Z", 20, &v), AV_ERR_PARSE);
    assert_int_equal(av__iso8601_utc("2024-13-01T00:00:00Z", 20, &v), AV_ERR_PARSE);
    assert_int_equal(av__iso8601_utc("2024-01-01T00:00:00.Z", 21, &v), AV_ERR_PARSE);
    assert_int_equal(av__iso8601_utc("2024-01-01T00:00:00+01:00", 25, &v), AV_ERR_PARSE);
}

/* id_token: a JWT whose claims are |claims| */
static int id_answer(const char *claims, long long now, av_oauth_token *t, char *why)
{
    char b64[512], body[800];
    size_t n = av__b64_encode(claims, strlen(claims), AV__B64_URL | AV__B64_NOPAD, b64);
    b64[n] = 0;
    snprintf(body, sizeof(body), "{\"id_token\":\"eyJhbGciOiJSUzI1NiJ9.%s.c2ln\"}", b64);
    return av__gcp_parse_id_token((const uint8_t *)body, strlen(body), now, t, why, 200);
}

static void gcp_id_tokens(void **state)
{
    (void)state;
    av_oauth_token t;
    char why[200];
    assert_int_equal(id_answer("{\"aud\":\"x\",\"exp\":1700003000,\"iat\":1700000000}", 1700000000, &t, why), AV_OK);
    assert_int_equal(t.expires_in, 3000);
    assert_non_null(t.access_token);
    av__oauth_token_clear(&t);
    assert_int_equal(id_answer("{\"exp\":1699999999}", 1700000000, &t, why), AV_ERR_PARSE);
    assert_non_null(strstr(why, "already expired"));
    assert_int_equal(id_answer("{\"exp\":\"1800000000\"}", 1700000000, &t, why), AV_ERR_PARSE);
    assert_int_equal(id_answer("{\"iat\":1}", 1700000000, &t, why), AV_ERR_PARSE);
    assert_non_null(strstr(why, "\"exp\" claim"));
    const char *e = "{\"error\":\"invalid_grant\",\"error_description\":\"Invalid JWT Signature.\"}";
    assert_int_equal(av__gcp_parse_id_token((const uint8_t *)e, strlen(e), 1, &t, why, sizeof(why)), AV_OK);
    assert_string_equal(t.error, "invalid_grant");
    assert_null(t.access_token);
    e = "{\"id_token\":\"no-dots\"}";
    assert_int_equal(av__gcp_parse_id_token((const uint8_t *)e, strlen(e), 1, &t, why, sizeof(why)), AV_ERR_PARSE);
    long long exp;
    assert_int_equal(av__jwt_claim_exp("a.!!.c", 6, &exp), AV_ERR_PARSE);
    assert_int_equal(av__jwt_claim_exp("a..c", 4, &exp), AV_ERR_PARSE);
}

static void json_fields(void **state)
{
    (void)state;
    av_json_field f[] = {{"a", AV_JSON_STR, 4, 0, NULL, 0, 0}, {"n", AV_JSON_INT, 0, 0, NULL, 0, 0}};
    char why[160];
    const char *ok = " {\"x\":[1,{\"y\":null}],\"a\":\"\\u00e9t\\u00e9\",\"n\":12} ";
    /* "été" is 5 bytes of UTF-8: over the bound of 4 */
    assert_int_equal(av__json_fields((const uint8_t *)ok, strlen(ok), 1024, f, 2, why, sizeof(why)), AV_ERR_PARSE);
    assert_non_null(strstr(why, "\"a\" is longer than 4 bytes"));
    f[0].max = 5;
    assert_int_equal(av__json_fields((const uint8_t *)ok, strlen(ok), 1024, f, 2, why, sizeof(why)), AV_OK);
    assert_int_equal(f[0].len, 5);
    assert_string_equal(f[0].str, "\xc3\xa9t\xc3\xa9");
    assert_int_equal(f[1].num, 12);
    av__json_fields_clear(f, 2);
    assert_null(f[0].str);
    static const char *const bad[] = {
        "{\"n\":-1}", "{\"n\":1.5}", "{\"n\":\"1\"}", "{\"a\":1}", "{\"a\":\"x\"", "{\"a\":\"x\",}", "{,}",
        "{\"a\":\"x\"}{}", "[1]", "", "{\"b\":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}", "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\xff\"}", "{\"n\":1234567890123}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(av__json_fields((const uint8_t *)bad[i], strlen(bad[i]), 1024, f, 2, why, sizeof(why)),
                         AV_ERR_PARSE);
        assert_null(f[0].str);
    }
    assert_int_equal(av__json_fields((const uint8_t *)ok, strlen(ok), 10, f, 2, why, sizeof(why)), AV_ERR_PARSE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pem_loading),    cmocka_unit_test(rs256_is_byte_identical),
        cmocka_unit_test(es256_raw_signature), cmocka_unit_test(claims),
        cmocka_unit_test(gcp_key_files),  cmocka_unit_test(github_answers),
        cmocka_unit_test(gcp_id_tokens),  cmocka_unit_test(json_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
