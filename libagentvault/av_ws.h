/* av_ws.h - WebSocket frame-mode relay (wslay), and handshake helpers.
 *
 * After a validated 101, a WebSocket exchange is relayed in one of two ways:
 *
 *  - splice mode (default; av_conn.c): bytes pass through untouched, so
 *    permessage-deflate, ping/pong and close frames are the peers' business;
 *  - frame mode (this module): used when a service asks for placeholder
 *    substitution in client text frames. The upgrade request then has its
 *    Sec-WebSocket-Extensions removed (no compression to see through), and a
 *    bridge parses frames from both peers with wslay, validates them
 *    (client frames masked, server frames unmasked, control-frame rules,
 *    RSV bits clear, opcodes known, message size cap, UTF-8 in text
 *    messages), lets a filter rewrite client text messages, re-frames
 *    (re-masking toward the upstream) and forwards. Ping/pong is answered
 *    per hop; close frames are propagated both ways with their code.
 *
 * I/O-free like the other cores: the caller owns four bounded buffers and
 * calls av__ws_bridge_pump whenever any of them changed.
 *
 * Scrub mode (the default for a service with a credential; av_ws_scrub
 * below) sits between the two: the agent's bytes are spliced upstream
 * untouched, and the upstream's frames are parsed one way only, their data
 * messages scrubbed of the secret (av_scrub, streamed across frames and
 * reads) and re-framed toward the agent. Control frames pass through in
 * order (ping/pong payloads and close reasons scrubbed too), so the peers
 * keep answering each other. permessage-deflate is negotiated with the
 * upstream only: its messages are inflated, scrubbed and relayed
 * uncompressed, and the agent is told no extension (see ARCHITECTURE.md
 * for why not re-deflating).
 */
#ifndef AV_WS_H
#define AV_WS_H

#include <stddef.h>
#include <stdint.h>

#include "av_buf.h"
#include "av_enc.h" /* av__subst_replace, for the text filters of av_conn.c (moved there) */
#include "av_scrub.h"

/* A message cap of 0 means this (after inflating, in scrub mode). */
#define AV_WS_DEFAULT_MAX_MESSAGE ((size_t)16 << 20)

/* av__ws_accept_key computes Sec-WebSocket-Accept for |key| (the client's
 * Sec-WebSocket-Key value) into |out| (29 bytes incl. NUL). Returns 0 or
 * AV_ERR_INVALID (key is not 24 base64 chars decoding to 16 bytes). */
int av__ws_accept_key(const char *key, size_t key_len, char out[29]);

/* A filter for client text messages. It receives the complete message and
 * returns 0 with *out and *out_len set to the message to forward (either |msg|
 * itself, or a buffer allocated with av__malloc that the bridge frees,
 * wiping it: it may contain a secret), or a negative error to close the
 * connection with 1008 (policy violation). */
typedef int (*av_ws_text_filter)(void *user_data, const uint8_t *msg, size_t len,
                                 uint8_t **out, size_t *out_len);

typedef struct av_ws_bridge av_ws_bridge;

/* av__ws_bridge_new creates a bridge. |max_message| caps a reassembled
 * message (default 16 MiB when 0); a bigger one closes both sides with
 * 1009. |filter| may be NULL (no rewriting). Returns 0 or AV_ERR_NOMEM. */
int av__ws_bridge_new(av_ws_bridge **out, size_t max_message, av_ws_text_filter filter,
                      void *user_data);
void av__ws_bridge_free(av_ws_bridge *b);

/* av__ws_bridge_set_upstream_filter installs a filter for upstream text
 * and binary messages (toward the agent), with the same contract as the
 * agent filter (used to scrub secrets an origin echoes back). */
void av__ws_bridge_set_upstream_filter(av_ws_bridge *b, av_ws_text_filter filter, void *user_data);

/* av__ws_bridge_pump consumes what it can from agent_in and up_in and
 * appends frames to up_out and agent_out, without exceeding their room
 * (messages wait inside the bridge, bounded by max_message per direction,
 * and reading from a side stops while the other side's queue is non-empty:
 * back-pressure). Returns > 0 if anything moved, 0 if not, or
 * AV_ERR_PARSE when a peer violated the protocol (the bridge has then
 * queued a close frame with 1002/1007/1009 toward that peer and a 1001
 * "going away" toward the other; keep pumping until av__ws_bridge_done).
 * AV_ERR_DENIED likewise when the filter refused an agent message (1008 to
 * the agent, 1001 upstream). AV_ERR_NOMEM / AV_ERR_IO are fatal: drop the
 * connection. */
int av__ws_bridge_pump(av_ws_bridge *b, av_buf *agent_in, av_buf *agent_out,
                       av_buf *up_in, av_buf *up_out);

/* Tell the bridge a peer's byte stream ended (TCP/TLS EOF). */
void av__ws_bridge_agent_eof(av_ws_bridge *b);
void av__ws_bridge_upstream_eof(av_ws_bridge *b);

/* av__ws_bridge_done: both directions closed (close frames exchanged or
 * EOF) and nothing left to write; the caller may close both sockets once
 * its buffers drain. */
int av__ws_bridge_done(const av_ws_bridge *b);

/* Counters for logs. */
typedef struct av_ws_stats {
    unsigned long long msgs_to_upstream, msgs_to_agent;
    unsigned long long bytes_to_upstream, bytes_to_agent;
    int close_code_agent;    /* close code the agent sent (0 if none) */
    int close_code_upstream; /* close code the upstream sent (0 if none) */
    int close_code_to_agent;    /* close code the bridge sent to the agent (0 if none) */
    int close_code_to_upstream; /* close code the bridge sent upstream (0 if none) */
} av_ws_stats;
void av__ws_bridge_stats(const av_ws_bridge *b, av_ws_stats *st);

/* A one-way relay of upstream frames toward the agent, scrubbed. */
typedef struct av_ws_scrub av_ws_scrub;

/* av__ws_scrub_new makes one. |set| (referenced; NULL: frames are parsed
 * and relayed unscrubbed) gives the patterns; |deflate| says
 * permessage-deflate was negotiated with the upstream; |max_message| caps
 * a message's payload after inflating (0: 16 MiB). Returns 0 or
 * AV_ERR_NOMEM. */
int av__ws_scrub_new(av_ws_scrub **out, av_scrub_set *set, int deflate, size_t max_message);
void av__ws_scrub_free(av_ws_scrub *w);

/* av__ws_scrub_pump takes upstream bytes from |in| and appends frames to
 * |out| (never beyond its room; a frame of up to 1 MiB is relayed whole,
 * longer ones in 1 MiB fragments). Bytes after the upstream's close frame
 * are dropped. Returns > 0 if anything moved, 0 if not, AV_ERR_PARSE when
 * the upstream broke the protocol (RSV bits, masking, control-frame rules,
 * fragmentation order, corrupt compressed data) or AV_ERR_DENIED when a
 * message exceeded the cap: a close frame (1002 / 1009) was then queued
 * toward the agent and written before this is returned; the caller drops
 * the upstream. AV_ERR_NOMEM is fatal. */
int av__ws_scrub_pump(av_ws_scrub *w, av_buf *in, av_buf *out);
/* av__ws_scrub_idle: no frame is partly written to the agent. */
int av__ws_scrub_idle(const av_ws_scrub *w);
/* av__ws_scrub_closed: the upstream's close (or ours) went to the agent. */
int av__ws_scrub_closed(const av_ws_scrub *w);
/* av__ws_scrub_count: redaction markers written so far. */
unsigned long av__ws_scrub_count(const av_ws_scrub *w);
/* av__ws_scrub_stats: messages and payload bytes relayed, close code seen
 * from the upstream (1005: without a code) or sent by the relay. */
void av__ws_scrub_stats(const av_ws_scrub *w, unsigned long long *msgs, unsigned long long *bytes,
                        int *close_code);

/* av__ws_offers_deflate: a Sec-WebSocket-Extensions request value lists
 * permessage-deflate. */
int av__ws_offers_deflate(const char *v, size_t len);
/* av__ws_deflate_accepted checks an upstream's Sec-WebSocket-Extensions
 * answer to an offer of plain "permessage-deflate": exactly that
 * extension with known parameters (context takeover, window bits 8..15).
 * Returns 0 or AV_ERR_INVALID. */
int av__ws_deflate_accepted(const char *v, size_t len);

#endif
