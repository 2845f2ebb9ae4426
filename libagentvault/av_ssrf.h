/* av_ssrf.h - which upstream addresses may be dialed (SECURITY.md 13).
 *
 * Always blocked: loopback, unspecified, private (RFC 1918, ULA), link-local,
 * CGN (100.64/10), multicast, reserved/documentation/benchmark ranges,
 * broadcast, and those same ranges reached through IPv4-mapped, NAT64
 * (64:ff9b::/96, 64:ff9b:1::/48), 6to4 and Teredo forms, and cloud metadata
 * addresses. The operator can allow-list ranges (allow_private), except
 * metadata addresses, which stay blocked.
 */
#ifndef AV_SSRF_H
#define AV_SSRF_H

#include <stddef.h>
#include <sys/socket.h>

#include "av_config.h"

/* av__ssrf_check returns 0 when |sa| may be dialed, AV_ERR_SSRF otherwise,
 * with a reason ("loopback", "private", "metadata", ...) in *why. */
int av__ssrf_check(const struct sockaddr *sa, const av_cidr *allow, size_t nallow,
                   const char **why);

#endif
