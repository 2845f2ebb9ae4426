/* av_pool.h - what upstream connections need from the running context.
 *
 * The context owns one av_pool and passes it to av_upstream.c and
 * av_mux.c, which see nothing else of it: the loop, the logger, DNS, the
 * upstream TLS context, the current configuration (the SSRF allow-list,
 * --resolve overrides, the connect timeout) and its parent proxies, whether the context is
 * draining (no more pooling), the counters, and a callback that tells
 * whether an address is one of the context's own listeners (never dialed).
 * The idle HTTP/1.1 connections and the HTTP/2 connections live here too.
 *
 * The context keeps |cfg|, |parents| and |draining| current (a reload replaces the
 * configuration; shutdown sets draining). Loop thread only.
 */
#ifndef AV_POOL_H
#define AV_POOL_H

#include <stddef.h>
#include <sys/socket.h>

#include "av_config.h"
#include "av_dns.h"
#include "av_ev.h"
#include "av_log.h"
#include "av_metrics.h"
#include "av_tls.h"

struct av_upconn;
struct av_mux;
struct av_parents;

typedef struct av_pool {
    av_loop *loop;
    const av_logger *log;
    av_dns *dns;
    av_tls_client_ctx *tls_cli;
    const av_config *cfg;     /* the current configuration (set again on reload) */
    struct av_parents *parents; /* its parent proxies (av_parent.h; NULL: none; set with cfg) */
    int draining;             /* shutting down: idle connections are closed, not pooled */
    av_metrics *metrics;      /* m_tls_upstream */
    /* Is |sa| one of the context's own listeners? (av_listen.c) */
    int (*is_own_listener)(void *ud, const struct sockaddr *sa);
    void *ud;
    struct av_upconn *idle;   /* idle HTTP/1.1 connections (av_upstream.c) */
    size_t nidle;
    struct av_mux *muxes;     /* HTTP/2 connections (av_mux.c) */
    size_t nmux;
} av_pool;

#endif
