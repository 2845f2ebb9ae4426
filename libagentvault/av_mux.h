/* av_mux.h - HTTP/2 connections to upstream origins, shared by exchanges.
 *
 * An av_mux is one upstream TLS connection that negotiated ALPN h2, with an
 * av_h2 client session on it. Exchanges of any agent connection whose
 * requests have the same key (scheme, host, port, credential scope, parent
 * proxy) share
 * it: a mux is never shared across credential scopes or proxy tokens,
 * because the scope is part of the key.
 *
 * An exchange embeds an av_mux_stream and attaches it. The mux drives its
 * own socket (it is nobody's connection in particular) and tells owners
 * that something changed by calling their notify function; the owner then
 * looks at the stream's fields. Notifications are never nested: a notify
 * may call any av__mux_* function, including detaching the stream.
 *
 * Dialing an origin whose protocol is not known yet goes through a mux
 * too, so that concurrent first requests share one handshake: when the
 * origin answers ALPN http/1.1 (or none), the connection is handed to the
 * first waiting stream (state AV_MS_H1, ms->up set) and the other waiting
 * streams get AV_MS_H1 with no connection (dial HTTP/1.1 yourselves).
 *
 * Flow control is end to end: DATA received for a stream waits in ms->rx
 * (bounded by the stream window, 64 KiB) until the owner has passed it on
 * and calls av__mux_consume; only then is the window reopened.
 */
#ifndef AV_MUX_H
#define AV_MUX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "av_buf.h"
#include "av_h2.h"
#include "av_upstream.h"

typedef struct av_mux av_mux;
typedef struct av_mux_stream av_mux_stream;

enum av_ms_state {
    AV_MS_IDLE = 0,  /* not attached */
    AV_MS_WAIT,      /* the mux is dialing, or at the peer's stream limit */
    AV_MS_READY,     /* call av__mux_submit now */
    AV_MS_OPEN,      /* submitted: see head/rx/end/closed */
    AV_MS_H1,        /* the origin speaks HTTP/1.1: ms->up, or dial yourself */
    AV_MS_FAILED,    /* the dial failed: fail_status, why */
    AV_MS_RETRY      /* refused before the origin processed it: attach again */
};

struct av_mux_stream {
    /* set by av__mux_attach */
    av_up_notify notify;
    void *owner;
    /* state (read by the owner) */
    int state;
    av_mux *mux;
    int32_t id;
    av_upconn *up;           /* AV_MS_H1: a READY HTTP/1.1 connection, now the owner's */
    int fail_status;         /* AV_MS_FAILED: 403, 502, 504 */
    char why[240];
    /* the response (AV_MS_OPEN) */
    int head;                /* the final response head arrived */
    int status;
    av_h1_field *fields;     /* heap: nfields entries (kept off idle connections) */
    size_t nfields;
    int64_t content_length;  /* -1 when absent */
    av_buf hstore;           /* the bytes |fields| point into */
    av_buf rx;               /* DATA not yet passed on */
    av_h1_fields trailers;   /* response trailers (trailing HEADERS), if any */
    int end;                 /* END_STREAM received */
    int closed;              /* the stream is gone */
    uint32_t error;          /* its HTTP/2 error code when closed */
    int sent_any;            /* request DATA was queued (no retry after that) */
    int want_room;           /* the owner found the queue full: notify when it drains */
    /* the mux's bookkeeping */
    int dirty;                    /* queued in the mux's notification list */
    av_mux_stream *next, *prev;   /* the mux's streams, oldest first */
    av_mux_stream *dnext, *dprev; /* the notification queue, in marking order */
};

/* av__mux_attach finds a mux for the key (or dials a new one) and attaches
 * |ms| (zeroed or detached before). On return ms->state says what to do:
 * READY (submit at once), WAIT, H1 (a pooled HTTP/1.1 connection was
 * available: ms->up) or FAILED. Returns AV_OK or AV_ERR_NOMEM. */
int av__mux_attach(av_pool *pool, const av_authority *dest, const char *scope, av_mux_stream *ms,
                   av_up_notify notify, void *owner);

/* av__mux_submit sends the request head (state READY). Returns AV_OK
 * (state OPEN), AV_ERR_LIMIT (state WAIT: the peer's stream limit),
 * AV_ERR_STATE (state RETRY: the connection is going away), or another
 * AV_ERR_* (invalid head, out of memory). */
int av__mux_submit(av_mux_stream *ms, const av_h2_head *head, int end_stream);

/* Request body: queue DATA (returns bytes accepted, possibly 0), end the
 * stream, room in the stream's queue. */
ssize_t av__mux_send(av_mux_stream *ms, const uint8_t *data, size_t len);
int av__mux_end(av_mux_stream *ms);
/* av__mux_end_trailers ends the request with trailing HEADERS after the
 * queued DATA (see av__h2_submit_trailers). Returns AV_OK, AV_ERR_STATE
 * (the head ended the stream, or it is closed) or AV_ERR_NOMEM. */
int av__mux_end_trailers(av_mux_stream *ms, const av_h1_field *fields, size_t n);
size_t av__mux_room(av_mux_stream *ms);

/* av__mux_consume drops |n| bytes from the front of ms->rx and reopens the
 * flow-control windows for them. */
void av__mux_consume(av_mux_stream *ms, size_t n);

/* av__mux_flush writes what the session has queued (call after submit,
 * send, end, consume). */
void av__mux_flush(av_mux_stream *ms);

/* av__mux_detach cancels the stream if it is still open (RST_STREAM
 * CANCEL), releases an HTTP/1.1 connection the owner did not take, and
 * frees the stream's buffers. Safe on an idle stream. */
void av__mux_detach(av_mux_stream *ms);

/* Number of live muxes (tests, metrics) and shutdown. */
size_t av__mux_count(const av_pool *pool);
void av__mux_free_all(av_pool *pool);
/* av__pool_cleanup closes every idle HTTP/1.1 connection, then every mux
 * (shutdown, or freeing the context). */
void av__pool_cleanup(av_pool *pool);

#endif
