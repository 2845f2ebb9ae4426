/* fuzz_url.c - libFuzzer target for the host, authority, absolute-URI,
 * pattern, glob and CIDR parsers, checking round-trip invariants. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_config.h"
#include "av_url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* check aborts when an invariant fails. */
static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "invariant failed: %s\n", what);
        abort();
    }
}

/* fuzz_host: a validated host re-validates to itself. */
static void fuzz_host(const char *in, size_t n)
{
    char out[AV_HOST_MAX + 1], again[AV_HOST_MAX + 1];
    int kind = av__host_validate(in, n, out);
    if (kind < 0)
        return;
    check(kind == 0 || kind == 4 || kind == 6, "host kind");
    size_t ol = strlen(out);
    check(ol > 0 && ol <= AV_HOST_MAX, "host length");
    for (size_t i = 0; i < ol; i++)
        check(!(out[i] >= 'A' && out[i] <= 'Z') && out[i] != '%' && out[i] != '@', "host chars");
    check(av__host_validate(out, ol, again) == kind, "host revalidates");
    check(strcmp(out, again) == 0, "host idempotent");
    check(av__host_match_pattern(out, out) == 1, "host matches itself");
    if (kind == 0 && ol + 2 <= AV_HOST_MAX) {
        char pat[AV_HOST_MAX + 3], sub[AV_HOST_MAX + 3];
        snprintf(pat, sizeof(pat), "*.%s", out);
        snprintf(sub, sizeof(sub), "x.%s", out);
        check(av__host_match_pattern(pat, sub) == 1, "wildcard one label");
        check(av__host_match_pattern(pat, out) == 0, "wildcard not apex");
    }
}

/* fuzz_authority: a parsed authority formats and re-parses equal. */
static void fuzz_authority(const char *in, size_t n, int default_port)
{
    av_authority a, b;
    char buf[AV_HOST_MAX + 16];
    if (av__authority_parse(in, n, default_port, &a) != 0)
        return;
    check(a.port >= 1 && a.port <= 65535, "port range");
    int len = av__authority_format(&a, 0, buf, sizeof(buf));
    check(len > 0, "authority format");
    check(av__authority_parse(buf, (size_t)len, 0, &b) == 0, "authority reparses");
    check(av__authority_equal(&a, &b), "authority round trip");
}

/* fuzz_uri: path stays inside the input and is a valid origin form. */
static void fuzz_uri(const char *in, size_t n)
{
    av_absolute_uri u;
    int rc = av__absolute_uri_parse(in, n, &u);
    check(rc == 0 || rc == AV_ERR_INVALID || rc == AV_ERR_NOTFOUND, "uri rc");
    if (rc != 0)
        return;
    check(u.path_len >= 1 && u.path[0] == '/', "uri path");
    check(av__origin_form_valid(u.path, u.path_len), "uri origin form");
    if (u.path >= in && u.path < in + n)
        check(u.path + u.path_len == in + n, "uri path ends the input");
    else
        check(u.path_len == 1, "uri default path");
    check(memchr(in, '#', n) == NULL, "uri fragment");
}

/* fuzz_glob: a glob without '*' is plain equality; "*" matches all. */
static void fuzz_glob(const char *glob, const char *s, size_t n)
{
    int m = av__glob_match(glob, s, n);
    if (!strchr(glob, '*'))
        check(m == (strlen(glob) == n && memcmp(glob, s, n) == 0), "glob literal");
    check(av__glob_match("*", s, n) == 1, "glob star");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size + 1);
    if (!in)
        return 0;
    memcpy(in, data, size);
    in[size] = '\0';
    fuzz_host(in, size);
    fuzz_authority(in, size, 0);
    fuzz_authority(in, size, 443);
    fuzz_uri(in, size);
    (void)av__origin_form_valid(in, size);

    /* split at the first NUL: glob / subject, pattern / host, CIDR */
    size_t g = strlen(in);
    const char *rest = g < size ? in + g + 1 : in + size;
    size_t rn = g < size ? size - g - 1 : 0;
    fuzz_glob(in, rest, rn);
    if (rn > 0 && !memchr(rest, '\0', rn))
        (void)av__host_match_pattern(in, rest);
    av_cidr c;
    (void)av__parse_cidr(in, &c);
    free(in);
    return 0;
}
