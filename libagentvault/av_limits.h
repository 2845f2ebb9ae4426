/* av_limits.h - the built-in limits of the connection layer, in one place
 * (SECURITY.md 15). Configurable limits ([proxy] max_connections, the
 * timeouts) live in av_config; the protocol cores keep theirs next to the
 * code they bound (av_h2.h AV_H2_MAX_*, av_ws.c WS_*, av_h1.h). A leaf:
 * includes nothing of the library. */
#ifndef AV_LIMITS_H
#define AV_LIMITS_H

/* Accepting (av_listen.c). The connection cap is [proxy] max_connections,
 * by default derived from the open-files limit and at most
 * AV_MAX_CONNS_DEFAULT. */
#define AV_MAX_CONNS_DEFAULT 16384

/* [proxy] workers: at most this many event-loop threads. */
#define AV_WORKERS_MAX 64
#define ACCEPT_PAUSE_MIN 0.05 /* seconds; doubles while accept keeps failing */
#define ACCEPT_PAUSE_MAX 1.0
#define REPORT_INTERVAL 1.0   /* at most one message a second per kind */

/* An agent's request head. */
#define AV_HEAD_MAX 65536
#define AV_FIELDS_MAX 100

/* An agent connection's transport buffers. */
#define AV_RAW_BUF_MAX (64 * 1024)
#define AV_PLAIN_BUF_MAX (96 * 1024)

/* The idle upstream pool (av_upstream.c). */
#define AV_POOL_MAX 256
#define AV_POOL_IDLE_SECONDS 30.0

/* An exchange (av_exchange.c and its helpers). */
#define X_RQ_FIELDS (AV_FIELDS_MAX + 8)
#define X_RX_MAX (65535 + 1024) /* an agent stream's window, and some slack */
#define X_BODY_BUFFER_MAX (8u << 20) /* JSON/form bodies checked for the placeholder */
#define X_MAX_RETRIES 8 /* refused streams were never processed: retrying is safe */

/* Lingering close (issue 12 item 7): after an answer and our FIN, what the
 * agent still sends is read and dropped for this long and this much, so
 * that closing does not reset the connection under a client that is still
 * writing (it would lose the answer). */
#define LINGER_SECONDS 2.0
#define LINGER_MAX_BYTES (16u << 20)

/* HTTP/2 toward the agent: bytes fed to the session per step. */
#define H2_FEED_SLICE 16384

/* HTTP/2 upstream connections (av_mux.c). */
#define MUX_FEED_SLICE 16384
#define MUX_RX_MAX (65535 + 1024)
#define MUX_HSTORE_MAX (AV_H2_MAX_HEADER_BYTES + 1024) /* AV_H2_MAX_HEADER_BYTES: av_h2.h */

#endif
