/* av_config_int.h - what the configuration object (av_config.c) and its
 * file reader (av_config_ini.c) share; private to those two files. */
#ifndef AV_CONFIG_INT_H
#define AV_CONFIG_INT_H

#include <stddef.h>
#include <string.h>

#include "av_config.h"

/* lower_ascii lower-cases an ASCII byte. */
static inline char lower_ascii(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

/* word_eq compares a byte range with a NUL-terminated word,
 * case-insensitively. */
static inline int word_eq(const char *s, size_t n, const char *w)
{
    size_t wl = strlen(w);
    if (n != wl)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower_ascii(s[i]) != w[i])
            return 0;
    return 1;
}

/* parse_uint parses 1..|maxdigits| decimal digits into *out. */
static inline int parse_uint(const char *s, size_t n, size_t maxdigits, long *out)
{
    if (n == 0 || n > maxdigits)
        return AV_ERR_INVALID;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return AV_ERR_INVALID;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return AV_OK;
}

/* av__config_set_error formats cfg->error. */
void av__config_set_error(av_config *cfg, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* av__config_grow makes room for one more element in a dynamic array (the
 * new element zeroed). Returns 0 or AV_ERR_NOMEM. */
int av__config_grow(void **arr, size_t n, size_t elem);

/* av__config_normalize_listen turns "host:port" (IP literal or localhost;
 * port may be 0) into its canonical text in |out|. */
int av__config_normalize_listen(const char *s, size_t n, char *out, size_t outlen);

/* av__config_parse_resolve parses curl's "HOST:PORT:ADDR" (and the
 * ":DIALPORT" extension) into |out|, strings allocated. */
int av__config_parse_resolve(const char *s, size_t n, av_resolve_cfg *out);

/* av__config_parse_seconds parses a positive decimal number of seconds
 * (at most 6 fraction digits), at most 86400, without strtod's locale. */
int av__config_parse_seconds(const char *s, size_t n, double *out);

/* av__config_parse_host_pattern validates a service or passthrough host: a
 * DNS name, an IP literal or "*.suffix" whose suffix is not a public
 * suffix; *out is a new lower-case string, *why a reason on
 * AV_ERR_INVALID. */
int av__config_parse_host_pattern(const char *s, size_t n, char **out, int *wildcard, int *is_ip,
                                  const char **why);

/* av__config_service_clear frees the strings of one service and zeroes it. */
void av__config_service_clear(av_service *s);

#endif
