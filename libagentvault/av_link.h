/* av_link.h - how an exchange reaches its upstream: its own HTTP/1.1
 * connection (av_link_h1.c, over av_upstream) or a stream on a shared
 * HTTP/2 connection (av_link_mux.c, over av_mux).
 *
 * The exchange never branches on the link's kind: every place that did is
 * one call through x->link (NULL until av__x_choose_upstream). A test
 * double (a scripted link) implements the same struct.
 *
 * Semantics the exchange relies on:
 *  - step() does everything one round of the pump needs on this link:
 *    connect or follow the mux, send the stored request (x->rq) once,
 *    move the request body (av__x_pump_request_body) and the response
 *    (into av__x_resp_head / av__x_body_*), and run the end checks
 *    (x->agent->check_done). It returns progress. It may fail the
 *    exchange (then x->active == 0) or switch x->link to the HTTP/1.1 link
 *    (an ALPN http/1.1 fall-back), in which case it runs that link's step.
 *  - room() / write() / end() are the request body sink: write() never
 *    gets more than room() said; end() sends the end of the body with
 *    x->req_tr where the framing carries them (1 done, 0 no room yet).
 *  - aborted(): after the request went out, the upstream went away (502
 *    is then recorded as upstream_abort).
 *  - The link is given up with av__x_unlink_upstream (pool or detach).
 */
#ifndef AV_LINK_H
#define AV_LINK_H

#include <stddef.h>
#include <stdint.h>

typedef struct av_exchange av_exchange;

typedef struct av_link_ops {
    const char *proto; /* "h1" | "h2", for the log line and the audit record */
    int (*step)(av_exchange *x);
    size_t (*room)(av_exchange *x);
    /* AV_OK, or an error (out of memory): the exchange fails (502). */
    int (*write)(av_exchange *x, const uint8_t *p, size_t n);
    int (*end)(av_exchange *x);
    int (*aborted)(const av_exchange *x);
} av_link_ops;

extern const av_link_ops av__link_h1_ops, av__link_mux_ops;

#endif
