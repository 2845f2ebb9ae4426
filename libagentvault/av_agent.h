/* av_agent.h - the agent side of an exchange: an HTTP/1.1 connection
 * (av_agent_h1.c) or an HTTP/2 stream (av_agent_h2.c).
 *
 * The exchange (av_exchange.c and its helpers) never branches on the
 * agent's protocol: every place that did is one call through x->agent.
 * A test double (a loopback agent) implements the same struct.
 *
 * Semantics the exchange relies on:
 *  - Every call is made from the connection's pump (av__conn_proceed), never
 *    nested in another call on the same exchange. Calls that may end the
 *    exchange (fail, respond_error, refused, finish, check_done, ws_abort)
 *    leave x->active == 0 or reset |x|: the caller returns at once.
 *  - Back-pressure: room() is what write() may take now (the HTTP/1.1
 *    agent keeps 32 bytes of slack for chunk framing); write() never
 *    takes more than room() said. end() may say "no room yet" (0) for the
 *    trailers: it is called again.
 *  - pump_body() moves the agent's request body (decoded: no chunk
 *    framing) into |sink| while the sink has room; it sets x->req_done
 *    when the body (and its trailers, kept in x->req_tr) is complete.
 *  - Interim (1xx) responses: relayed to HTTP/1.1 agents only
 *    (relays_1xx).
 *  - HTTP/2 state (a_rx, a_tx, a_end, a_closed) is 0 for HTTP/1.1 agents,
 *    so the exchange may test x->a_closed without asking.
 */
#ifndef AV_AGENT_H
#define AV_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "av_buf.h"
#include "av_h1.h"
#include "av_side.h"

typedef struct av_exchange av_exchange;
typedef struct av_req_in av_req_in;

/* Where pump_body puts the request body: toward the upstream link, or
 * into the buffer of a body checked for the placeholder. write returns 0,
 * or -1 after answering the exchange (it may not take |n| bytes). */
typedef struct av_body_sink {
    size_t (*room)(av_exchange *x);
    int (*write)(av_exchange *x, const uint8_t *p, size_t n);
} av_body_sink;

typedef struct av_agent_ops {
    const char *proto;     /* "h1" | "h2", for the log line and the audit record */
    int relays_1xx;        /* interim responses are passed on */
    int length_with_trailers; /* a Content-Length response can still carry trailers */
    int joins_cookies;     /* split cookie fields are joined again (RFC 9113 8.2.3) */

    /* Intake, once the request is admitted (av__x_begin): framing of the
     * request body, Connection: close, Expect: 100-continue. */
    void (*intake)(av_exchange *x, const av_req_in *in);
    /* Request body into |sink|. Returns progress, or -1 after the exchange
     * failed (malformed framing, refused trailers, sink refusal). */
    int (*pump_body)(av_exchange *x, const av_body_sink *sink);
    /* Bytes of the request body received but not yet pumped (HTTP/2). */
    size_t (*body_pending)(const av_exchange *x);
    /* 100 Continue if the agent waits for it (HTTP/1.1). Returns progress,
     * or AV_ERR_NOMEM when the 100 cannot be queued: the caller fails the
     * exchange (the agent would wait for the 100 forever). */
    int (*send_continue)(av_exchange *x);
    /* The agent closed before the request body ended (HTTP/1.1: EOF on the
     * connection); x_collect_body refuses then. */
    int (*body_aborted)(const av_exchange *x);

    /* Response toward the agent. head: |kind| RK_NONE / RK_LENGTH (|len|) /
     * RK_UNKNOWN; returns 0, AV_ERR_LIMIT (no room yet) or AV_ERR_INVALID.
     * head_fits: whether a head of about |n| bytes can be written now. */
    int (*head)(av_exchange *x, int status, const char *reason, size_t reason_len, const av_h1_field *fields,
                size_t nfields, int kind, uint64_t len);
    int (*head_fits)(av_exchange *x, size_t n);
    size_t (*room)(av_exchange *x);
    /* AV_OK, or an error (out of memory: not all of |n| was queued); the
     * exchange then fails, it never relays around lost bytes. */
    int (*write)(av_exchange *x, const uint8_t *p, size_t n);
    int (*end)(av_exchange *x); /* with x->resp_tr; 1 done, 0 no room yet */

    /* Proxy-made error response (HTTP/1.1: then close the connection). */
    void (*respond_error)(av_exchange *x, int status, const char *why, int json);
    /* The exchange failed (av__x_fail): answer |status| if nothing was sent
     * yet, else cut (HTTP/1.1: close; HTTP/2: RST_STREAM); then finish. */
    void (*fail)(av_exchange *x, int status, const char *why);
    /* Refused before anything went upstream, after respond_error. */
    void (*refused)(av_exchange *x, const char *why);
    /* The credential could not be injected (answered): drop the exchange. */
    void (*dropped)(av_exchange *x);
    /* Is the exchange over? Runs the end-of-exchange checks; 1 if finished. */
    int (*check_done)(av_exchange *x);
    /* After the log line: HTTP/1.1 reads the next head or closes; HTTP/2
     * resets an unfinished stream and marks the exchange for freeing. */
    void (*finish)(av_exchange *x);
    /* The connection is closing (HTTP/1.1): the step must stop. */
    int (*closing)(const av_exchange *x);
    /* Close the connection once this response is out (HTTP/1.1). */
    void (*close_after)(av_exchange *x);

    /* WebSocket: the validated 101 relayed (HTTP/2: a 200 to the extended
     * CONNECT); 0 or an error. */
    int (*upgrade)(av_exchange *x, const av_h1_response *resp);
    /* The agent's byte streams of an open WebSocket. */
    void (*ws_bufs)(av_exchange *x, av_buf **in, av_buf **out, int *in_eof);
    /* Upstream bytes straight to the agent (splice mode). Returns progress,
     * or -1 after ending the exchange (bytes that could not be queued). */
    int (*ws_splice_out)(av_exchange *x, av_buf *from);
    /* The upstream ended: pass the half-close on. Returns progress. */
    int (*ws_half_close)(av_exchange *x);
    /* After the relay took |taken| bytes from ws_bufs' |in|; |up_over|: the
     * upstream direction is complete. Returns progress, or -1 after ending
     * the exchange (as ws_splice_out). */
    int (*ws_flush)(av_exchange *x, size_t taken, int up_over);
    /* Both directions are over. */
    int (*ws_finished)(av_exchange *x, const av_side *u);
    /* The relay failed: end the exchange and the agent's side of it. */
    void (*ws_abort)(av_exchange *x, const char *why);
} av_agent_ops;

extern const av_agent_ops av__agent_h1_ops, av__agent_h2_ops;

#endif
