/* av_url.h - destination identity: host names, authorities, absolute URIs.
 *
 * SECURITY.md 1-2: host names are validated (LDH labels of 1..63 bytes,
 * total <= 253, no leading/trailing hyphen in a label), lower-cased, and
 * rejected when they contain userinfo, '%', a trailing dot, non-ASCII, or
 * anything else. IP literals: dotted-quad IPv4 only in the canonical
 * four-decimal-part form (no octal/hex/short forms), IPv6 in brackets in an
 * authority. All functions are I/O-free.
 */
#ifndef AV_URL_H
#define AV_URL_H

#include <stddef.h>

#define AV_HOST_MAX 253

/* A validated destination. */
typedef struct av_authority {
    char host[AV_HOST_MAX + 1]; /* lower-case DNS name, or IP literal text
                                   without brackets ("::1", "127.0.0.1") */
    int is_ip;                  /* 4, 6, or 0 for a DNS name */
    int port;                   /* 1..65535 */
} av_authority;

/* av__host_validate checks and lower-cases a bare host (no port, IPv6
 * without brackets) into |out| (AV_HOST_MAX+1 bytes). Returns 4 or 6 for an
 * IP literal, 0 for a DNS name, AV_ERR_INVALID otherwise. */
int av__host_validate(const char *in, size_t len, char *out);

/* av__port_parse: 1..5 decimal digits with a value in [1, 65535]; the
 * value, or AV_ERR_INVALID. */
int av__port_parse(const char *p, size_t n);

/* av__authority_parse parses "host:port" / "[v6]:port" (port required when
 * |default_port| is 0; otherwise the port may be omitted). Rejects
 * userinfo and everything av__host_validate rejects. Returns 0 or
 * AV_ERR_INVALID. */
int av__authority_parse(const char *in, size_t len, int default_port, av_authority *out);

/* av__authority_equal compares after normalization (already lower-cased
 * by parsing). Returns 1 when equal, else 0. */
int av__authority_equal(const av_authority *a, const av_authority *b);

/* av__authority_format writes "host:port" ("[v6]:port") into buf; when
 * |omit_port| is the default port for the scheme, writes only the host
 * (used for the Host header). Returns the length or AV_ERR_LIMIT. */
int av__authority_format(const av_authority *a, int omit_port, char *buf, size_t len);

/* An absolute-form request target "http://host[:port]/path?query".
 * |scheme| is "http" or "https" or another scheme name (lower-cased);
 * |path| points into the input (at least "/"; a missing path becomes "/"
 * reported via path="/"). */
typedef struct av_absolute_uri {
    char scheme[16];
    av_authority authority;
    const char *path; /* origin-form: path plus optional "?query" */
    size_t path_len;
} av_absolute_uri;

/* av__absolute_uri_parse parses an absolute-form target. Returns 0,
 * AV_ERR_INVALID (malformed, userinfo present, bad host), or
 * AV_ERR_NOTFOUND when the target is not absolute-form at all (so the
 * caller can treat it as origin-form). Fragments are rejected. */
int av__absolute_uri_parse(const char *in, size_t len, av_absolute_uri *out);

/* av__origin_form_valid checks an origin-form target: starts with '/',
 * only visible ASCII (0x21..0x7e), no '#'. Returns 1 when valid, else 0. */
int av__origin_form_valid(const char *in, size_t len);

/* av__host_match_pattern matches |host| against a service pattern: exact
 * (case-insensitive) or "*.suffix" matching exactly one extra label
 * (so "*.example.com" matches "a.example.com" but not "example.com",
 * "a.b.example.com" or "evilexample.com"). Returns 1 or 0. */
int av__host_match_pattern(const char *pattern, const char *host);

/* av__glob_match matches |s| (length n) against a glob where '*' matches
 * any run of bytes (including '/') and every other byte matches itself.
 * Returns 1 or 0; worst case O(strlen(glob) * n), never exponential. */
int av__glob_match(const char *glob, const char *s, size_t n);

#endif
