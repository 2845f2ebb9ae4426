/* av_h2.h - HTTP/2 sessions over nghttp2, I/O-free (issue 4 groundwork).
 *
 * One av_h2 wraps one nghttp2 session in the server role (toward an agent
 * that negotiated ALPN h2 inside a MITM tunnel) or the client role (toward
 * an upstream that negotiated h2). Bytes go in with av__h2_feed and come out
 * with av__h2_produce into a caller-owned bounded av_buf, like the other
 * cores; events come back through callbacks.
 *
 * Semantics the connection code relies on:
 *  - Request/response heads are delivered complete and validated: nghttp2's
 *    RFC 9113 checks (pseudo-header order and presence, uppercase names,
 *    connection-specific fields, TE other than "trailers") plus ours: at
 *    most AV_H2_MAX_FIELDS fields and AV_H2_MAX_HEADER_BYTES decoded bytes
 *    per head (nghttp2 does not cap these; enforced in the header
 *    callback). A server-side request over the limits is answered 431 by
 *    the session itself and never reaches on_head. A malformed request is a
 *    stream error (RST_STREAM PROTOCOL_ERROR) and never reaches on_head.
 *  - content-length, when present, must match the DATA received (nghttp2
 *    enforces it; a mismatch resets the stream).
 *  - Flow control is end to end: automatic WINDOW_UPDATE is off; the caller
 *    calls av__h2_consume(stream, n) when it has passed n bytes of received
 *    DATA on, so a slow consumer slows that stream only.
 *  - Outgoing DATA is queued per stream in a bounded buffer
 *    (AV_H2_STREAM_QUEUE); av__h2_send_data accepts what fits and the
 *    session sends it as the peer's windows allow.
 *  - Limits (server role): SETTINGS_MAX_CONCURRENT_STREAMS 100 (enforced
 *    here: a stream over it gets RST_STREAM(REFUSED_STREAM), RFC 9113
 *    5.1.2, and a peer that keeps opening them gets GOAWAY),
 *    SETTINGS_ENABLE_CONNECT_PROTOCOL 1 (RFC 8441), MAX_HEADER_LIST_SIZE
 *    64 KiB, the stream-reset rate limit and CONTINUATION cap of Debian's
 *    libnghttp2 1.52 (nghttp2_option_set_stream_reset_rate_limit,
 *    nghttp2_option_set_max_continuations), max SETTINGS entries and
 *    outbound-ACK limits against SETTINGS/PING floods. Exceeding a
 *    connection-level limit ends the session with GOAWAY
 *    (ENHANCE_YOUR_CALM or PROTOCOL_ERROR) and av__h2_feed returns
 *    AV_ERR_LIMIT / AV_ERR_PARSE; keep producing until the GOAWAY is out.
 *  - Never returns a fatal error from on_stream_close (SECURITY 15).
 *
 * Refinements made while implementing (see av_h2.c):
 *  - av_h2_callbacks gained on_limit (may be NULL). It is called for the
 *    header limits (431 / client reset), for a head too large to send, and
 *    when a GOAWAY with an error code goes out (stream_id 0).
 *  - Rapid reset: Debian's libnghttp2 1.52 answers a peer over the
 *    stream-reset rate limit (burst 1000, 33/s) with GOAWAY INTERNAL_ERROR
 *    (not ENHANCE_YOUR_CALM); streams whose HEADERS arrived in the same
 *    av__h2_feed before that GOAWAY was produced still reach on_head, so
 *    feed bounded reads (e.g. 16 KiB) and produce between them.
 *  - Server role: on_stream_close is reported only for streams whose
 *    request head reached on_head (a stream reset while its head was
 *    invalid, or answered 431, was never the caller's). Client role: every
 *    submitted stream gets exactly one on_stream_close, including streams
 *    refused by a GOAWAY (REFUSED_STREAM), but not those still open when
 *    av__h2_free is called.
 *  - Client role, response head over the limits: RST_STREAM INTERNAL_ERROR,
 *    reported as on_stream_close(stream, NGHTTP2_INTERNAL_ERROR = 2) after
 *    on_limit; on_head is not called.
 *  - Header limits count the decoded name + value bytes of every field,
 *    pseudo-headers included; AV_H2_MAX_FIELDS counts regular fields.
 *  - Outgoing heads: names are lower-cased; connection-specific fields
 *    (connection, keep-alive, proxy-connection, transfer-encoding, upgrade,
 *    host; te other than "trailers") are dropped; CR, LF or NUL in a name or
 *    value, or a pseudo-header among |fields|, is AV_ERR_INVALID.
 *  - Protocol errors nghttp2 handles itself (most connection errors, and
 *    the stream-reset rate limit) are not reported by av__h2_feed: nghttp2
 *    queues a GOAWAY, keeps consuming input without acting on it, and
 *    av__h2_alive turns 0 once that GOAWAY has been produced. av__h2_feed
 *    returns AV_ERR_* for the errors nghttp2 returns (flood of SETTINGS/PING
 *    ACKs, too many CONTINUATION frames: AV_ERR_LIMIT; bad client preface
 *    and others: AV_ERR_PARSE); we then queue GOAWAY ENHANCE_YOUR_CALM /
 *    PROTOCOL_ERROR ourselves, and every later av__h2_feed returns the same
 *    error.
 *  - av__h2_produce may keep at most one mem_send chunk (about 16 KiB plus a
 *    frame header) internally when |out| is too small for it; it is
 *    written first on the next call. av__h2_alive stays 1 until it is out.
 *  - Received DATA the caller has not consumed when its stream closes is
 *    given back to the connection window by the session; av__h2_consume on
 *    a closed stream is a no-op returning 0.
 *  - av__h2_submit_trailers needs a stream whose head was submitted with
 *    end_stream 0 and that is not ended yet (else AV_ERR_STATE); an empty
 *    trailer list ends the stream plainly.
 *  - av__h2_submit_request returns AV_ERR_STATE after GOAWAY (sent or
 *    received) and AV_ERR_LIMIT at the peer's concurrency limit: requests
 *    are never queued inside nghttp2 beyond it.
 */
#ifndef AV_H2_H
#define AV_H2_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "av_buf.h"
#include "av_h1.h"

#define AV_H2_MAX_FIELDS 100
#define AV_H2_MAX_HEADER_BYTES 65536
#define AV_H2_MAX_CONCURRENT 100
#define AV_H2_STREAM_QUEUE (64 * 1024)

/* A head (request, response, or trailers). Views are valid only during the
 * callback that delivers the head. Regular fields have lower-case names;
 * pseudo-headers are split out (NULL/0 when absent). */
typedef struct av_h2_head {
    const char *method;    size_t method_len;
    const char *scheme;    size_t scheme_len;
    const char *authority; size_t authority_len;
    const char *path;      size_t path_len;
    const char *protocol;  size_t protocol_len; /* RFC 8441 extended CONNECT */
    int status;            /* responses; 0 in requests */
    av_h1_field fields[AV_H2_MAX_FIELDS];
    size_t nfields;
    int64_t content_length; /* -1 when absent */
    const char *never_index; /* requests: a field name (a credential) sent
                              * as a never-indexed literal; NULL if none */
    int end_stream;         /* no DATA follows */
    int trailers;           /* this is a trailer block */
} av_h2_head;

typedef struct av_h2_callbacks {
    /* A complete head arrived (server: request on a new stream; client:
     * response, 1xx included, or trailers). Return 0, or a negative error
     * to reset the stream (INTERNAL_ERROR). */
    int (*on_head)(void *ud, int32_t stream_id, const av_h2_head *head);
    /* DATA payload for a stream (flow control: call av__h2_consume once
     * the bytes have been passed on). */
    int (*on_data)(void *ud, int32_t stream_id, const uint8_t *data, size_t len);
    /* The peer ended its side of the stream (END_STREAM). */
    void (*on_end_stream)(void *ud, int32_t stream_id);
    /* The stream is gone (closed or reset); |error_code| is the HTTP/2 error
     * code (0 = NO_ERROR). Never fails. */
    void (*on_stream_close)(void *ud, int32_t stream_id, uint32_t error_code);
    /* Client role: the peer's SETTINGS arrived or changed (e.g. max
     * concurrent streams, ENABLE_CONNECT_PROTOCOL). May be NULL. */
    void (*on_settings)(void *ud);
    /* A limit was hit (SECURITY 16: the caller logs and counts it); the
     * session has already answered it (431, RST_STREAM). |stream_id| may be
     * 0. |what| is a static string. May be NULL. (Added by the h2 core.) */
    void (*on_limit)(void *ud, int32_t stream_id, const char *what);
} av_h2_callbacks;

typedef struct av_h2 av_h2;

enum { AV_H2_SERVER = 1, AV_H2_CLIENT = 2 };

/* av__h2_new creates a session; the client role sends its preface and
 * SETTINGS on the first av__h2_produce. Returns 0 or AV_ERR_NOMEM. */
int av__h2_new(av_h2 **out, int role, const av_h2_callbacks *cb, void *ud);
void av__h2_free(av_h2 *s);

/* av__h2_feed processes bytes from the peer. Returns bytes consumed (all of
 * them unless the session has ended), or AV_ERR_PARSE (protocol error) /
 * AV_ERR_LIMIT (flood or limit): a GOAWAY is then queued. */
ssize_t av__h2_feed(av_h2 *s, const uint8_t *in, size_t len);

/* av__h2_produce appends frames to |out| while it has room and the session
 * has something to send. Returns > 0 if it wrote, 0 if nothing to send,
 * AV_ERR_* on a fatal error. */
int av__h2_produce(av_h2 *s, av_buf *out);

/* av__h2_alive: 0 when the session is over (GOAWAY exchanged and no
 * streams left, or a fatal error): the caller may close the connection
 * once |out| drains. */
int av__h2_alive(const av_h2 *s);

/* Client role: submit a request head; *stream_id receives the new stream.
 * Returns AV_ERR_LIMIT when the peer's MAX_CONCURRENT_STREAMS is reached
 * (retry after a stream closes) or AV_ERR_STATE after GOAWAY. */
int av__h2_submit_request(av_h2 *s, const av_h2_head *head, int end_stream, int32_t *stream_id);
/* Server role: submit a response head (1xx allowed before the final one). */
int av__h2_submit_response(av_h2 *s, int32_t stream_id, const av_h2_head *head, int end_stream);
/* Either role: trailers end the stream. */
int av__h2_submit_trailers(av_h2 *s, int32_t stream_id, const av_h1_field *fields, size_t n);

/* Queue DATA: returns bytes accepted (0 when the stream's queue is full),
 * or AV_ERR_NOTFOUND (no such open stream). */
ssize_t av__h2_send_data(av_h2 *s, int32_t stream_id, const uint8_t *data, size_t len);
/* End the stream after the queued DATA. */
int av__h2_end_stream(av_h2 *s, int32_t stream_id);
/* Room left in a stream's outgoing queue. */
size_t av__h2_stream_room(const av_h2 *s, int32_t stream_id);
int av__h2_reset_stream(av_h2 *s, int32_t stream_id, uint32_t error_code);
/* Received DATA has been passed on: open the stream and connection windows. */
int av__h2_consume(av_h2 *s, int32_t stream_id, size_t n);

/* Graceful shutdown: GOAWAY with the last stream id processed; streams in
 * flight may finish. */
int av__h2_shutdown(av_h2 *s);

/* Client role: can another request start now (peer's concurrency limit,
 * no GOAWAY received)? and did the peer enable extended CONNECT? */
int av__h2_can_submit(const av_h2 *s);
/* A pointer the caller keeps with a stream (lookups by id in O(1)); NULL
 * when the stream or the tag is gone. The caller clears it before the
 * object it points to goes away. */
int av__h2_set_tag(av_h2 *s, int32_t stream_id, void *tag);
void *av__h2_tag(const av_h2 *s, int32_t stream_id);
int av__h2_peer_connect_protocol(const av_h2 *s);
/* Client role: the last stream id the peer said it processed in a GOAWAY
 * (streams above it never started and may be retried), or -1. */
int32_t av__h2_goaway_last_stream(const av_h2 *s);

#endif
