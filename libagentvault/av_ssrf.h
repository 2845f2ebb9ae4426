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
#include <stdint.h>
#include <sys/socket.h>

typedef struct av_cidr {
    int family;        /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    int prefix;
} av_cidr;

/* av__parse_cidr parses "10.0.0.0/8" or "fd00::/8". Returns 0 or
 * AV_ERR_INVALID. */
int av__parse_cidr(const char *s, av_cidr *out);
/* av__cidr_contains returns 1 when |sa| (AF_INET or AF_INET6) lies in |c|,
 * else 0; IPv4-mapped IPv6 addresses are compared as IPv4. */
int av__cidr_contains(const av_cidr *c, const struct sockaddr *sa);

/* av__ssrf_check returns 0 when |sa| may be dialed, AV_ERR_SSRF otherwise,
 * with a reason ("loopback", "private", "metadata", ...) in *why. */
int av__ssrf_check(const struct sockaddr *sa, const av_cidr *allow, size_t nallow,
                   const char **why);

#endif
