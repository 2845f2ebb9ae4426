/* av_ws.c - WebSocket frame-mode bridge, Sec-WebSocket-Accept, substitution.
 *
 * Each peer has a wslay event context: server role toward the agent (its
 * frames must be masked), client role toward the upstream. wslay parses,
 * reassembles, checks UTF-8 and the message cap, answers pings and keeps
 * the close handshake state. Around it:
 *
 *  - a gate in the recv callback validates every frame header before wslay
 *    sees it (RSV bits, opcode, mask bit, control-frame rules, minimal
 *    length encoding): wslay answers some of these with a close frame
 *    without a status code, the gate answers 1002;
 *  - data messages are forwarded through our own framer, not wslay's send
 *    queue, so a message (which may hold a secret after the filter) lives in
 *    one buffer that is wiped when freed, and is masked straight into the
 *    caller's output buffer. wslay's own sends (pong, close) go out only at
 *    frame boundaries of the framer;
 *  - a close from one peer is forwarded to the other only after the data
 *    queued for it has been written, and the close reply to a peer waits
 *    until the other peer has answered (end-to-end closing handshake).
 */
#include "av_ws.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/random.h>

#include <wslay/wslay.h>
#include <zlib.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "av_mem.h"
#include "av_scrub.h"

/* Stop reading a peer while this many payload bytes wait for the other one. */
#define WS_QUEUE_HIGH ((size_t)64 << 10)
/* ... or while this many control bytes (pongs) wait to be sent back to it. */
#define WS_CTRL_HIGH ((size_t)16 << 10)

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---- SHA-1 (FIPS 180-4 / RFC 3174), for Sec-WebSocket-Accept only --------- */

typedef struct ws_sha1 {
    uint32_t h[5];
    uint64_t total;
    uint8_t block[64];
    size_t fill;
} ws_sha1;

/* rol32 rotates left by |n| (0 < n < 32). */
static uint32_t rol32(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32 - n));
}

/* sha1_init sets the initial hash value. */
static void sha1_init(ws_sha1 *c)
{
    static const uint32_t iv[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u,
                                   0xC3D2E1F0u};
    memcpy(c->h, iv, sizeof(iv));
    c->total = 0;
    c->fill = 0;
}

/* sha1_block processes one 64-byte block. */
static void sha1_block(ws_sha1 *c, const uint8_t *p)
{
    uint32_t w[80];
    for (int t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | (uint32_t)p[4 * t + 3];
    for (int t = 16; t < 80; t++)
        w[t] = rol32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    uint32_t a = c->h[0], b = c->h[1], d = c->h[3], e = c->h[4], cc = c->h[2];
    for (int t = 0; t < 80; t++) {
        uint32_t f, k;
        if (t < 20) {
            f = (b & cc) | (~b & d);
            k = 0x5A827999u;
        } else if (t < 40) {
            f = b ^ cc ^ d;
            k = 0x6ED9EBA1u;
        } else if (t < 60) {
            f = (b & cc) | (b & d) | (cc & d);
            k = 0x8F1BBCDCu;
        } else {
            f = b ^ cc ^ d;
            k = 0xCA62C1D6u;
        }
        uint32_t tmp = rol32(a, 5) + f + e + k + w[t];
        e = d;
        d = cc;
        cc = rol32(b, 30);
        b = a;
        a = tmp;
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += cc;
    c->h[3] += d;
    c->h[4] += e;
}

/* sha1_update hashes |n| more bytes. */
static void sha1_update(ws_sha1 *c, const void *data, size_t n)
{
    const uint8_t *p = data;
    c->total += n;
    while (n > 0) {
        size_t take = 64 - c->fill;
        if (take > n)
            take = n;
        memcpy(c->block + c->fill, p, take);
        c->fill += take;
        p += take;
        n -= take;
        if (c->fill == 64) {
            sha1_block(c, c->block);
            c->fill = 0;
        }
    }
}

/* sha1_final pads, writes the 20-byte digest and clears the state. */
static void sha1_final(ws_sha1 *c, uint8_t out[20])
{
    uint64_t bits = c->total * 8;
    uint8_t pad = 0x80;
    sha1_update(c, &pad, 1);
    pad = 0;
    while (c->fill != 56)
        sha1_update(c, &pad, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha1_update(c, len, 8);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(c->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)c->h[i];
    }
    av__wipe(c, sizeof(*c));
}

/* ---- Sec-WebSocket-Accept ----------------------------------------------- */

/* av__ws_accept_key: the key must be the canonical base64 form of 16 bytes:
 * 22 alphabet characters (the last with its 4 low bits clear) and "==". */
int av__ws_accept_key(const char *key, size_t key_len, char out[29])
{
    uint8_t raw[16];
    size_t raw_len;
    if (!key || !out || key_len != 24 ||
        av__b64_decode(key, key_len, AV__B64_STRICT, raw, sizeof(raw), &raw_len) != 0 || raw_len != 16)
        return AV_ERR_INVALID;

    ws_sha1 c;
    uint8_t d[20];
    sha1_init(&c);
    sha1_update(&c, key, key_len);
    sha1_update(&c, WS_GUID, sizeof(WS_GUID) - 1);
    sha1_final(&c, d);
    out[av__b64_encode(d, sizeof(d), 0, out)] = '\0'; /* 28 characters */
    return AV_OK;
}

/* ---- bridge state -------------------------------------------------------- */

/* A data message waiting to be framed toward a peer (always wiped). */
typedef struct ws_msg {
    struct ws_msg *next;
    uint8_t opcode;
    uint8_t *data;
    size_t len;
} ws_msg;

typedef struct ws_side {
    struct av_ws_bridge *b;
    wslay_event_context_ptr ctx;
    int is_agent; /* 1: agent (frames arrive masked), 0: upstream */
    av_buf *in, *out; /* valid during a pump only */

    /* gate: the frame being handed to wslay */
    size_t gate_hdr_left;
    uint64_t gate_payload_left;
    int gate_code; /* close code for a header the gate refused */

    /* framer: data messages for this peer */
    ws_msg *head, *tail;
    size_t queued; /* payload bytes not yet written */
    int framing;   /* head's frame is partly written */
    uint8_t hdr[14];
    size_t hdr_len, hdr_off, pay_off;
    uint8_t mask[4];

    /* a close to send once the data queued for this peer is out */
    int pend;
    uint16_t pend_code;
    uint8_t pend_reason[123];
    size_t pend_reason_len;

    int closing;      /* a close frame toward this peer is queued in wslay */
    int failed;       /* this peer broke the protocol or the policy */
    int eof;          /* the caller reported the end of its stream */
    int eof_reached;  /* the gate ran out of input after eof */
    int eof_done;     /* eof processed: nothing more will be read */
    int close_code;   /* code of the close it sent (1005: none), 0 */
} ws_side;

struct av_ws_bridge {
    ws_side side[2]; /* [0] agent, [1] upstream */
    size_t max_message;
    av_ws_text_filter filter;
    av_ws_text_filter up_filter; /* upstream text and binary messages */
    void *up_user_data;
    void *user_data;
    size_t moved;  /* bytes consumed or produced in this pump round */
    int report;    /* AV_ERR_PARSE / AV_ERR_DENIED for the current pump */
    int fatal;     /* AV_ERR_NOMEM / AV_ERR_IO: the bridge is unusable */
    uint8_t rnd[64];
    size_t rnd_left;
    av_ws_stats st;
};

/* other_side returns the peer on the other end of the bridge. */
static ws_side *other_side(ws_side *s)
{
    return &s->b->side[s->is_agent ? 1 : 0];
}

/* set_fatal records the first unrecoverable error. */
static void set_fatal(av_ws_bridge *b, int err)
{
    if (!b->fatal)
        b->fatal = err;
}

/* rand_bytes fills |buf| from a small pool refilled with getrandom(2).
 * Returns 0 or AV_ERR_IO. */
static int rand_bytes(av_ws_bridge *b, uint8_t *buf, size_t n)
{
    while (n > 0) {
        if (b->rnd_left == 0) {
            size_t got = 0;
            while (got < sizeof(b->rnd)) {
                ssize_t r = getrandom(b->rnd + got, sizeof(b->rnd) - got, 0);
                if (r < 0) {
                    if (errno == EINTR)
                        continue;
                    return AV_ERR_IO;
                }
                got += (size_t)r;
            }
            b->rnd_left = sizeof(b->rnd);
        }
        size_t take = n < b->rnd_left ? n : b->rnd_left;
        uint8_t *src = b->rnd + sizeof(b->rnd) - b->rnd_left;
        memcpy(buf, src, take);
        av__wipe(src, take);
        b->rnd_left -= take;
        buf += take;
        n -= take;
    }
    return 0;
}

/* msg_free wipes and frees one queued message. */
static void msg_free(ws_msg *m)
{
    av__wipe(m->data, m->len);
    av__free(m->data);
    av__free(m);
}

/* drop_queue discards everything waiting for |s| (it can no longer be sent). */
static void drop_queue(ws_side *s)
{
    while (s->head) {
        ws_msg *m = s->head;
        s->head = m->next;
        msg_free(m);
    }
    s->tail = NULL;
    s->queued = 0;
    s->framing = 0;
    av__wipe(s->mask, sizeof(s->mask));
}

/* set_pending arranges for a close (|code| 0: without status) toward |s|
 * once its queued data is written, unless a close toward it exists. */
static void set_pending(ws_side *s, uint16_t code, const uint8_t *reason, size_t reason_len)
{
    if (s->closing || s->pend || !wslay_event_get_write_enabled(s->ctx))
        return;
    if (reason_len > sizeof(s->pend_reason))
        reason_len = sizeof(s->pend_reason);
    s->pend = 1;
    s->pend_code = code;
    if (reason_len)
        memcpy(s->pend_reason, reason, reason_len);
    s->pend_reason_len = code ? reason_len : 0;
}

/* queue_close queues a close frame toward |s| in wslay now. */
static void queue_close(ws_side *s, uint16_t code, const uint8_t *reason, size_t reason_len)
{
    s->pend = 0;
    int r = wslay_event_queue_close(s->ctx, code, reason, reason_len);
    if (r == WSLAY_ERR_NOMEM)
        set_fatal(s->b, AV_ERR_NOMEM);
    s->closing = 1; /* or NO_MORE_MSG: a close was already there */
}

/* fail_side closes |s| with |code| after it violated the protocol (or the
 * filter refused its message), says "going away" to the other peer and
 * records |report| for the pump's return value. */
static void fail_side(ws_side *s, uint16_t code, int report)
{
    av_ws_bridge *b = s->b;
    s->failed = 1;
    wslay_event_shutdown_read(s->ctx);
    if (!s->closing)
        queue_close(s, code, NULL, 0);
    set_pending(other_side(s), WSLAY_CODE_GOING_AWAY, NULL, 0);
    if (!b->report)
        b->report = report;
}

/* finish_eof ends reading from |s| after its stream ended. Without a close
 * frame from it the end is abnormal: nothing more is sent to it and the
 * other peer is told 1001. */
static void finish_eof(ws_side *s)
{
    if (s->eof_done)
        return;
    s->eof_done = 1;
    wslay_event_shutdown_read(s->ctx);
    if (!wslay_event_get_close_received(s->ctx)) {
        wslay_event_shutdown_write(s->ctx);
        drop_queue(s);
        s->pend = 0;
        if (!s->failed)
            set_pending(other_side(s), WSLAY_CODE_GOING_AWAY, NULL, 0);
    }
}

/* ---- gate and wslay callbacks --------------------------------------------- */

/* gate_header checks the frame header at the start of |s|'s input. Returns
 * 0 with the header and payload lengths, -1 when more bytes are needed, or
 * the close code (1002) for a header RFC 6455 forbids here. */
static int gate_header(const ws_side *s, size_t *hdr_len, uint64_t *payload_len)
{
    size_t n = av__buf_len(s->in);
    if (n < 2)
        return -1;
    const uint8_t *p = av__buf_head(s->in);
    unsigned fin = p[0] >> 7, rsv = (p[0] >> 4) & 7, op = p[0] & 15;
    unsigned masked = p[1] >> 7, len7 = p[1] & 127;
    if (rsv != 0) /* no extension is negotiated in frame mode */
        return WSLAY_CODE_PROTOCOL_ERROR;
    if (op > WSLAY_BINARY_FRAME && (op < WSLAY_CONNECTION_CLOSE || op > WSLAY_PONG))
        return WSLAY_CODE_PROTOCOL_ERROR;
    if (masked != (unsigned)s->is_agent)
        return WSLAY_CODE_PROTOCOL_ERROR;
    if ((op & 8) && (!fin || len7 > 125 || (op == WSLAY_CONNECTION_CLOSE && len7 == 1)))
        return WSLAY_CODE_PROTOCOL_ERROR;
    size_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0);
    if (n < need)
        return -1;
    uint64_t len = len7;
    if (len7 == 126) {
        len = (uint64_t)p[2] << 8 | p[3];
        if (len < 126)
            return WSLAY_CODE_PROTOCOL_ERROR;
    } else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        if ((len >> 63) || len < 65536)
            return WSLAY_CODE_PROTOCOL_ERROR;
    }
    *hdr_len = need;
    *payload_len = len;
    return 0;
}

/* read_blocked: back-pressure. Reading from |s| pauses while the other
 * peer has a full queue, or while pongs for |s| pile up unsent. */
static int read_blocked(ws_side *s)
{
    return other_side(s)->queued >= WS_QUEUE_HIGH ||
           wslay_event_get_queued_msg_length(s->ctx) >= WS_CTRL_HIGH;
}

/* recv_cb hands wslay the bytes of |s|'s input, never past the end of the
 * current frame, and each header only after the gate accepted it. */
static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                       void *user_data)
{
    ws_side *s = user_data;
    (void)flags;
    if (!s->in || s->gate_code || read_blocked(s))
        goto block;
    if (s->gate_hdr_left == 0 && s->gate_payload_left == 0) {
        size_t hl = 0;
        uint64_t pl = 0;
        int g = gate_header(s, &hl, &pl);
        if (g < 0)
            goto starved;
        if (g > 0) {
            s->gate_code = g;
            goto block;
        }
        s->gate_hdr_left = hl;
        s->gate_payload_left = pl;
    }
    size_t n = av__buf_len(s->in);
    if (s->gate_hdr_left) {
        if (n > s->gate_hdr_left)
            n = s->gate_hdr_left;
    } else if (n > s->gate_payload_left) {
        n = (size_t)s->gate_payload_left;
    }
    if (n > len)
        n = len;
    if (n == 0)
        goto starved;
    memcpy(buf, av__buf_head(s->in), n);
    av__buf_consume(s->in, n);
    if (s->gate_hdr_left)
        s->gate_hdr_left -= n;
    else
        s->gate_payload_left -= n;
    s->b->moved += n;
    return (ssize_t)n;
starved:
    if (s->eof && len > 0)
        s->eof_reached = 1;
block:
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
}

/* send_cb appends wslay's frames (pong, close) to |s|'s output. */
static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *user_data)
{
    ws_side *s = user_data;
    (void)flags;
    size_t room = s->out ? av__buf_room(s->out) : 0;
    if (room == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < room ? len : room;
    if (av__buf_append(s->out, data, n) != 0) {
        set_fatal(s->b, AV_ERR_NOMEM);
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    s->b->moved += n;
    return (ssize_t)n;
}

/* genmask_cb supplies frame masks for the upstream side from the CSPRNG. */
static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *user_data)
{
    ws_side *s = user_data;
    if (rand_bytes(s->b, buf, len) != 0) {
        set_fatal(s->b, AV_ERR_IO);
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return 0;
}

/* enqueue appends |data| (owned from now on) to the framer queue of |s|. */
static int enqueue(ws_side *s, uint8_t opcode, uint8_t *data, size_t len)
{
    ws_msg *m = av__malloc(sizeof(*m));
    if (!m) {
        av__wipe(data, len);
        av__free(data);
        return AV_ERR_NOMEM;
    }
    m->next = NULL;
    m->opcode = opcode;
    m->data = data;
    m->len = len;
    if (s->tail)
        s->tail->next = m;
    else
        s->head = m;
    s->tail = m;
    s->queued += len;
    return 0;
}

/* forward passes a data message from |s| to the other peer, through the
 * filter for agent text. Messages toward a closing peer are dropped. */
static void forward(ws_side *s, const struct wslay_event_on_msg_recv_arg *arg)
{
    av_ws_bridge *b = s->b;
    ws_side *o = other_side(s);
    const uint8_t *msg = arg->msg ? arg->msg : (const uint8_t *)"";
    size_t len = arg->msg_length;
    uint8_t *owned = NULL;

    av_ws_text_filter f = NULL;
    void *fud = NULL;
    if (s->is_agent && arg->opcode == WSLAY_TEXT_FRAME && b->filter) {
        f = b->filter;
        fud = b->user_data;
    } else if (!s->is_agent && (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME) &&
               b->up_filter) {
        f = b->up_filter;
        fud = b->up_user_data;
    }
    if (f) {
        uint8_t *fout = (uint8_t *)msg;
        size_t flen = len;
        int r = f(fud, msg, len, &fout, &flen);
        if (r >= 0 && fout && fout != msg) {
            owned = fout; /* ours now, whatever happens */
            len = flen;
        } else if (r >= 0 && fout == msg && flen <= len) {
            len = flen;
        } else if (r >= 0 && !fout && flen == 0) {
            len = 0;
        } else { /* refused, or an output the contract does not allow */
            fail_side(s, WSLAY_CODE_POLICY_VIOLATION, AV_ERR_DENIED);
            return;
        }
    }
    if (o->closing || o->pend || !wslay_event_get_write_enabled(o->ctx)) {
        if (owned) {
            av__wipe(owned, len);
            av__free(owned);
        }
        return;
    }
    if (!owned) {
        owned = av__malloc(len);
        if (!owned) {
            set_fatal(b, AV_ERR_NOMEM);
            wslay_event_shutdown_read(s->ctx);
            return;
        }
        if (len)
            memcpy(owned, msg, len);
    }
    if (enqueue(o, arg->opcode, owned, len) != 0) {
        set_fatal(b, AV_ERR_NOMEM);
        wslay_event_shutdown_read(s->ctx);
        return;
    }
    if (s->is_agent) {
        b->st.msgs_to_upstream++;
        b->st.bytes_to_upstream += len;
    } else {
        b->st.msgs_to_agent++;
        b->st.bytes_to_agent += len;
    }
}

/* on_msg_cb: wslay completed a message from |s|. Pings were answered and
 * a close echoed by wslay already; data is forwarded, a close propagated. */
static void on_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *user_data)
{
    ws_side *s = user_data;
    (void)ctx;
    if (arg->opcode == WSLAY_TEXT_FRAME || arg->opcode == WSLAY_BINARY_FRAME) {
        forward(s, arg);
    } else if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
        s->closing = 1; /* wslay queued the echo */
        s->pend = 0;
        s->close_code = arg->status_code ? arg->status_code : WSLAY_CODE_NO_STATUS_RCVD;
        const uint8_t *reason = NULL;
        size_t reason_len = 0;
        if (arg->status_code && arg->msg_length > 2) {
            reason = arg->msg + 2;
            reason_len = arg->msg_length - 2;
        }
        set_pending(other_side(s), arg->status_code, reason, reason_len);
    }
}

/* ---- framer ------------------------------------------------------------------ */

/* frame_start builds the header of the message at the head of |s|'s queue
 * (one unfragmented frame; masked toward the upstream). */
static int frame_start(ws_side *s)
{
    ws_msg *m = s->head;
    uint8_t *h = s->hdr;
    size_t n = 0;
    uint8_t maskbit = s->is_agent ? 0 : 0x80;
    h[n++] = (uint8_t)(0x80 | m->opcode);
    if (m->len < 126) {
        h[n++] = (uint8_t)(maskbit | m->len);
    } else if (m->len <= 0xffff) {
        h[n++] = (uint8_t)(maskbit | 126);
        h[n++] = (uint8_t)(m->len >> 8);
        h[n++] = (uint8_t)m->len;
    } else {
        h[n++] = (uint8_t)(maskbit | 127);
        for (int i = 7; i >= 0; i--)
            h[n++] = (uint8_t)((uint64_t)m->len >> (8 * i));
    }
    if (maskbit) {
        if (rand_bytes(s->b, s->mask, 4) != 0)
            return AV_ERR_IO;
        memcpy(h + n, s->mask, 4);
        n += 4;
    }
    s->hdr_len = n;
    s->hdr_off = 0;
    s->pay_off = 0;
    s->framing = 1;
    return 0;
}

/* frame_write writes as much of the current frame as |s|'s output takes.
 * Returns 1 when the frame is complete, 0 when the output is full, or an
 * AV_ERR_* code. */
static int frame_write(ws_side *s)
{
    ws_msg *m = s->head;
    while (s->hdr_off < s->hdr_len) {
        size_t room = av__buf_room(s->out);
        if (room == 0)
            return 0;
        size_t n = s->hdr_len - s->hdr_off;
        if (n > room)
            n = room;
        int r = av__buf_append(s->out, s->hdr + s->hdr_off, n);
        if (r != 0)
            return r;
        s->hdr_off += n;
        s->b->moved += n;
    }
    while (s->pay_off < m->len) {
        size_t room = av__buf_room(s->out);
        if (room == 0)
            return 0;
        size_t n = m->len - s->pay_off;
        if (n > room)
            n = room;
        int err = 0;
        uint8_t *dst = av__buf_reserve(s->out, n, &err);
        if (!dst)
            return err ? err : AV_ERR_NOMEM;
        const uint8_t *src = m->data + s->pay_off;
        if (s->is_agent) {
            memcpy(dst, src, n);
        } else {
            for (size_t i = 0; i < n; i++)
                dst[i] = src[i] ^ s->mask[(s->pay_off + i) & 3];
        }
        av__buf_commit(s->out, n);
        s->pay_off += n;
        s->queued -= n;
        s->b->moved += n;
    }
    return 1;
}

/* held: the close reply to |s| waits until the other peer answered the
 * close we forwarded (or can no longer answer). */
static int held(ws_side *s)
{
    ws_side *o = other_side(s);
    return wslay_event_get_close_received(s->ctx) && !wslay_event_get_close_sent(s->ctx) &&
           !wslay_event_get_close_received(o->ctx) && !o->failed && !o->eof_done;
}

/* flush_pending queues the pending close toward |s| once its data is out. */
static void flush_pending(ws_side *s)
{
    if (!s->pend)
        return;
    if (s->closing || !wslay_event_get_write_enabled(s->ctx)) {
        s->pend = 0;
        return;
    }
    if (s->head)
        return;
    queue_close(s, s->pend_code, s->pend_reason, s->pend_reason_len);
}

/* send_side writes to |s|: wslay's control frames at frame boundaries,
 * then queued data messages; a close goes out after the data before it. */
static void send_side(ws_side *s)
{
    av_ws_bridge *b = s->b;
    for (;;) {
        if (!s->framing) {
            flush_pending(s);
            if (held(s))
                return;
            if (wslay_event_want_write(s->ctx)) {
                int r = wslay_event_send(s->ctx);
                if (r != 0) {
                    set_fatal(b, r == WSLAY_ERR_NOMEM ? AV_ERR_NOMEM : AV_ERR_IO);
                    return;
                }
                if (wslay_event_want_write(s->ctx))
                    return; /* output full */
            }
            if (!wslay_event_get_write_enabled(s->ctx)) {
                drop_queue(s); /* a close went out: nothing may follow */
                return;
            }
            if (!s->head)
                return;
            int r = frame_start(s);
            if (r != 0) {
                set_fatal(b, r);
                return;
            }
        }
        int r = frame_write(s);
        if (r < 0) {
            set_fatal(b, r);
            return;
        }
        if (r == 0)
            return;
        ws_msg *m = s->head;
        s->head = m->next;
        if (!s->head)
            s->tail = NULL;
        msg_free(m);
        s->framing = 0;
        av__wipe(s->mask, sizeof(s->mask));
    }
}

/* recv_side lets wslay read from |s| and classifies how reading ended. */
static void recv_side(ws_side *s)
{
    if (wslay_event_get_read_enabled(s->ctx)) {
        int r = wslay_event_recv(s->ctx);
        if (r == WSLAY_ERR_NOMEM) {
            set_fatal(s->b, AV_ERR_NOMEM);
            return;
        }
        if (s->b->fatal)
            return;
        if (s->gate_code && !s->failed) {
            fail_side(s, (uint16_t)s->gate_code, AV_ERR_PARSE);
        } else if (!s->failed && !s->eof_done && !wslay_event_get_close_received(s->ctx) &&
                   (r != 0 || !wslay_event_get_read_enabled(s->ctx))) {
            /* wslay refused a frame and queued its close (1002/1007/1009) */
            fail_side(s, WSLAY_CODE_PROTOCOL_ERROR, AV_ERR_PARSE);
        }
    }
    if (s->eof && (s->eof_reached || !wslay_event_get_read_enabled(s->ctx)))
        finish_eof(s);
}

/* ---- public internal API ---------------------------------------------------- */

/* side_init creates the wslay context of one side. */
static int side_init(av_ws_bridge *b, ws_side *s, int is_agent)
{
    static const struct wslay_event_callbacks cbs = {
        .recv_callback = recv_cb,
        .send_callback = send_cb,
        .genmask_callback = genmask_cb,
        .on_msg_recv_callback = on_msg_cb,
    };
    s->b = b;
    s->is_agent = is_agent;
    int r = is_agent ? wslay_event_context_server_init(&s->ctx, &cbs, s)
                     : wslay_event_context_client_init(&s->ctx, &cbs, s);
    if (r != 0) {
        s->ctx = NULL;
        return AV_ERR_NOMEM;
    }
    wslay_event_config_set_allowed_rsv_bits(s->ctx, WSLAY_RSV_NONE);
    wslay_event_config_set_no_buffering(s->ctx, 0);
    wslay_event_config_set_max_recv_msg_length(s->ctx, b->max_message);
    return 0;
}

/* av__ws_bridge_new allocates the bridge and its two wslay contexts. */
int av__ws_bridge_new(av_ws_bridge **out, size_t max_message, av_ws_text_filter filter,
                      void *user_data)
{
    if (!out)
        return AV_ERR_INVALID;
    *out = NULL;
    av_ws_bridge *b = av__calloc(1, sizeof(*b));
    if (!b)
        return AV_ERR_NOMEM;
    b->max_message = max_message ? max_message : AV_WS_DEFAULT_MAX_MESSAGE;
    b->filter = filter;
    b->user_data = user_data;
    if (side_init(b, &b->side[0], 1) != 0 || side_init(b, &b->side[1], 0) != 0) {
        av__ws_bridge_free(b);
        return AV_ERR_NOMEM;
    }
    *out = b;
    return AV_OK;
}

void av__ws_bridge_set_upstream_filter(av_ws_bridge *b, av_ws_text_filter filter, void *user_data)
{
    if (!b)
        return;
    b->up_filter = filter;
    b->up_user_data = user_data;
}

/* av__ws_bridge_free wipes queued messages and the bridge itself. */
void av__ws_bridge_free(av_ws_bridge *b)
{
    if (!b)
        return;
    for (int i = 0; i < 2; i++) {
        drop_queue(&b->side[i]);
        if (b->side[i].ctx)
            wslay_event_context_free(b->side[i].ctx);
    }
    av__wipe(b, sizeof(*b));
    av__free(b);
}

/* av__ws_bridge_pump runs rounds of read-both / write-both until a round
 * moves no byte. */
int av__ws_bridge_pump(av_ws_bridge *b, av_buf *agent_in, av_buf *agent_out, av_buf *up_in,
                       av_buf *up_out)
{
    if (!b || !agent_in || !agent_out || !up_in || !up_out)
        return AV_ERR_INVALID;
    if (b->fatal)
        return b->fatal;
    ws_side *ag = &b->side[0], *up = &b->side[1];
    ag->in = agent_in;
    ag->out = agent_out;
    up->in = up_in;
    up->out = up_out;
    int moved = 0;
    for (;;) {
        b->moved = 0;
        recv_side(ag);
        recv_side(up);
        send_side(ag);
        send_side(up);
        if (b->fatal || b->moved == 0)
            break;
        moved = 1;
    }
    ag->in = ag->out = up->in = up->out = NULL;
    if (b->fatal)
        return b->fatal;
    if (b->report) {
        int r = b->report;
        b->report = 0;
        return r;
    }
    return moved;
}

/* av__ws_bridge_agent_eof: input already buffered is still processed;
 * the end takes effect when the next pump runs out of agent bytes. */
void av__ws_bridge_agent_eof(av_ws_bridge *b)
{
    if (!b)
        return;
    b->side[0].eof = 1;
    if (!wslay_event_get_read_enabled(b->side[0].ctx))
        finish_eof(&b->side[0]);
}

/* av__ws_bridge_upstream_eof is av__ws_bridge_agent_eof for the upstream. */
void av__ws_bridge_upstream_eof(av_ws_bridge *b)
{
    if (!b)
        return;
    b->side[1].eof = 1;
    if (!wslay_event_get_read_enabled(b->side[1].ctx))
        finish_eof(&b->side[1]);
}

/* side_done: nothing more will be read from |s| nor written to it. */
static int side_done(const ws_side *s)
{
    int read_over = wslay_event_get_close_received(s->ctx) || s->failed || s->eof_done;
    return read_over && !wslay_event_get_write_enabled(s->ctx) && !s->framing;
}

/* av__ws_bridge_done: both sides are finished. */
int av__ws_bridge_done(const av_ws_bridge *b)
{
    return b && side_done(&b->side[0]) && side_done(&b->side[1]);
}

/* av__ws_bridge_stats copies the counters; close codes come from wslay. */
void av__ws_bridge_stats(const av_ws_bridge *b, av_ws_stats *st)
{
    if (!st)
        return;
    memset(st, 0, sizeof(*st));
    if (!b)
        return;
    *st = b->st;
    st->close_code_agent = b->side[0].close_code;
    st->close_code_upstream = b->side[1].close_code;
    for (int i = 0; i < 2; i++) {
        int sent = wslay_event_get_close_sent(b->side[i].ctx)
                       ? (int)wslay_event_get_status_code_sent(b->side[i].ctx)
                       : 0;
        if (i == 0)
            st->close_code_to_agent = sent;
        else
            st->close_code_to_upstream = sent;
    }
}
