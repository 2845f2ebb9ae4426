/* av_upstream.h - connections to upstream origins.
 *
 * av__upstream_acquire hands out a pooled idle connection for the same
 * key (scheme, host, port, credential scope) or starts a new one: resolve
 * (an operator --resolve override, else DNS), check every address against
 * the SSRF guard (overrides are operator-chosen and exempt; the proxy's own
 * listeners never are), connect with a timeout, then verified TLS for
 * https. Progress and failure are reported by calling the owner's notify
 * function; the owner then looks at up->state.
 *
 * Pooled connections are never shared across credential scopes and never
 * reused after a framing error (the owner releases them as not reusable).
 *
 * Parent proxies (av_parent.h): when pool->parents routes the connection
 * through a parent (the part of |scope| before '/' names the service whose
 * override applies), the origin is resolved and checked as above (for
 * socks5h://: a --resolve override or an address literal is, a name is
 * left to the parent), then the parent is dialed (its address is the
 * operator's choice: exempt from the SSRF ranges, never the proxy itself),
 * TLS to an https:// parent, the CONNECT or SOCKS5 exchange asks for the
 * checked address (or the name), and the origin's TLS runs inside the
 * tunnel, verified against the origin's name. The connect timeout covers
 * all of it. A refusal fails with 502 naming the parent and its answer.
 */
#ifndef AV_UPSTREAM_H
#define AV_UPSTREAM_H

#include <sys/socket.h>

#include "av_dns.h"
#include "av_pool.h"
#include "av_side.h"
#include "av_url.h"

typedef struct av_upconn av_upconn;

enum av_up_state {
    AV_UP_RESOLVING = 1,
    AV_UP_CONNECTING,
    AV_UP_PARENT_TLS,       /* TLS handshake with an https:// parent proxy */
    AV_UP_PARENT_NEGOTIATE, /* CONNECT or SOCKS5 exchange with the parent */
    AV_UP_HANDSHAKE,
    AV_UP_READY,   /* usable by the owner */
    AV_UP_IDLE,    /* in the pool */
    AV_UP_FAILED   /* see fail_status / side.errmsg */
};

typedef void (*av_up_notify)(void *owner);

/* "https|" + host:port (AV_HOST_MAX + 8) + "|" + scope (an exchange's
 * scope is under 200 bytes) + "|" + a parent id (17): under 490. */
#define AV_UP_KEY_MAX 512

struct av_upconn {
    av_pool *pool;
    av_side side;
    int state;
    int tls;
    av_authority dest;
    char key[AV_UP_KEY_MAX];
    av_up_notify notify;
    void *owner;
    av_timer *timer;
    av_dns_query *dnsq;
    struct sockaddr_storage addrs[AV_DNS_MAX_ADDRS];
    socklen_t addr_lens[AV_DNS_MAX_ADDRS];
    int naddrs, next_addr;
    int fail_status;     /* HTTP status to answer when FAILED (403, 502, 504) */
    int reused;          /* came from the pool */
    int offer_h2;        /* TLS offers ALPN h2 (the dial of an av_mux) */
    struct av_parent *parent; /* the parent proxy the tunnel goes through; NULL: direct */
    struct sockaddr_storage target; /* the checked origin address asked of the parent */
    socklen_t target_len;           /* 0: ask for dest.host by name (socks5h) */
    int parent_dns;      /* RESOLVING the parent's name (not the origin's) */
    int parent_phase;    /* SOCKS5: the reply awaited (1 method, 2 auth, 3 connect) */
    unsigned long served; /* exchanges completed on it */
    av_upconn *pool_next, *pool_prev;
};

/* av__upstream_acquire returns 0 and *out (state READY for a pooled
 * connection, or an earlier state for a new one), or AV_ERR_NOMEM. */
/* av__upstream_pool_take returns an idle pooled connection for |key|
 * (av__upstream_key), now owned by |owner|, or NULL. */
av_upconn *av__upstream_pool_take(av_pool *pool, const char *key, av_up_notify notify, void *owner);
int av__upstream_acquire(av_pool *pool, const av_authority *dest, int tls, const char *scope,
                         av_up_notify notify, void *owner, av_upconn **out);
/* The same, offering ALPN h2 to a TLS upstream when the connection is new
 * (only av_mux dials this way: the owner must look at av__upstream_is_h2
 * once READY). A pooled connection is always HTTP/1.1. */
int av__upstream_acquire2(av_pool *pool, const av_authority *dest, int tls, const char *scope, int offer_h2,
                          av_up_notify notify, void *owner, av_upconn **out);
/* av__upstream_key formats the pool key of (scheme, dest, scope, parent):
 * the parent proxy the connection would go through (av__parents_route of
 * pool->parents for |scope| and |dest|) is part of it, so a connection
 * through one parent never serves a request routed direct or through
 * another. */
/* av__upstream_precheck: what dialing |dest| would refuse that is known
 * already (an address literal or a --resolve override refused by the SSRF
 * guard, or one of the proxy's own listeners): 0 if nothing, else the
 * status (403) with the dial-time reason in |m|. */
int av__upstream_precheck(av_pool *pool, const av_authority *dest, char *m, size_t cap);
void av__upstream_key(av_pool *pool, char *key, size_t len, const av_authority *dest, int tls, const char *scope);

/* av__upstream_log_parents logs the parent proxies of pool->parents once
 * per table (startup, reload), with a warning for each scheme = http
 * service whose cleartext (credential included) would cross the parent. */
void av__upstream_log_parents(av_pool *pool);
/* av__upstream_is_h2: the TLS handshake negotiated ALPN "h2". */
int av__upstream_is_h2(const av_upconn *up);

/* av__upstream_step runs the connection's own state machine (connect
 * completion, TLS handshake). The owner's pump calls it while the state is
 * before READY. Returns 1 if the state changed. */
int av__upstream_step(av_upconn *up);

/* av__upstream_release gives the connection back: to the pool when
 * |reusable| (and the pool has room), else closed. */
void av__upstream_release(av_upconn *up, int reusable);

/* av__upstream_pool_free closes every pooled connection (shutdown). */
void av__upstream_pool_free(av_pool *pool);

#endif
