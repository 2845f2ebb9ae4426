/* av_policy.h - matching exchanges to services, and injecting credentials.
 *
 * Matching (see docs/CONFIG.md "Matching order"): a service matches when
 * the scheme and port agree (a bare host means https:443 only; plain http
 * only for a service naming scheme http and its port), the host matches
 * (exact, or one-label wildcard; an IP-literal destination matches only a
 * service naming that IP), the path glob (if any) matches the path without
 * query, and the method (if any) is listed. Among matches, the most
 * specific wins, compared in this order:
 *   1. exact host beats wildcard host;
 *   2. a service with a path glob beats one without; between two globs, the
 *      one with the longer literal prefix (bytes before the first '*') wins,
 *      then the longer glob;
 *   3. a service with a method list beats one without;
 *   4. earlier in the configuration wins.
 *
 * Injection: every agent-sent copy of the injected header (any case) is
 * removed and exactly one is added; for query injection every agent-sent
 * copy of the parameter is removed and one is appended.
 */
#ifndef AV_POLICY_H
#define AV_POLICY_H

#include <stddef.h>

#include "av_config.h"
#include "av_secret.h"

/* av__policy_match returns the best service or NULL. |path| is the
 * origin-form target (query included; matching ignores the query). |host|
 * is re-validated; a host av__host_validate rejects matches nothing. */
const av_service *av__policy_match(const av_config *cfg, int scheme_http,
                                   const char *host, int port,
                                   const char *method, size_t method_len,
                                   const char *path, size_t path_len);

/* av__method_bit maps a method name to AV_M_* (0 for others). */
unsigned av__method_bit(const char *method, size_t len);

/* av__inject_header builds the header to inject for a BEARER, BASIC or
 * HEADER service: *name_out points to a static or config-owned name and
 * *value_out is a new secret holding the full header value. Returns 0,
 * AV_ERR_INVALID (wrong auth kind, or a BEARER/HEADER secret containing
 * control characters, which would split the header) or AV_ERR_NOMEM. */
int av__inject_header(const av_service *svc, const av_secret *secret,
                      const char **name_out, av_secret **value_out);

/* av__inject_query rewrites the origin-form target |path| for a QUERY
 * service: removes every existing PARAM (exact, case-sensitive name match
 * after percent-decoding the name) and appends PARAM=<percent-encoded
 * secret>. Returns a new secret holding the target, or NULL on allocation
 * failure. */
av_secret *av__inject_query(const av_service *svc, const av_secret *secret,
                            const char *path, size_t path_len);

#endif
