/* av_dns.h - asynchronous name resolution (c-ares on the context's loop).
 *
 * Honors /etc/hosts and /etc/resolv.conf like the system resolver. Results
 * are delivered on the loop thread; a query can be cancelled, after which
 * its callback is never called.
 */
#ifndef AV_DNS_H
#define AV_DNS_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "av_ev.h"

#define AV_DNS_MAX_ADDRS 16

typedef struct av_dns av_dns;
typedef struct av_dns_query av_dns_query;

typedef struct av_dns_result {
    struct sockaddr_storage addrs[AV_DNS_MAX_ADDRS];
    socklen_t lens[AV_DNS_MAX_ADDRS];
    int naddrs;
} av_dns_result;

/* |err| is 0 or AV_ERR_NOTFOUND / AV_ERR_TIMEOUT / AV_ERR_IO with a reason
 * in |why|; |res| is NULL on error. */
typedef void (*av_dns_cb)(void *user_data, int err, const char *why,
                          const av_dns_result *res);

int av__dns_new(av_dns **out, av_loop *loop, double timeout);
void av__dns_free(av_dns *d);

/* av__dns_resolve starts a lookup of |host| with |port| filled into the
 * results. Returns a query handle while the lookup is pending, or NULL
 * when the callback has already run (hosts-file hits, allocation failure
 * reported as AV_ERR_NOMEM). */
av_dns_query *av__dns_resolve(av_dns *d, const char *host, int port,
                              av_dns_cb cb, void *user_data);
/* av__dns_cancel detaches the callback; the query finishes silently. */
void av__dns_cancel(av_dns_query *q);

#endif
