/* av_h2.c - HTTP/2 sessions over nghttp2, I/O-free (see av_h2.h).
 *
 * One file (over the 1,200-line guide) because it is one concept: the
 * nghttp2 callbacks of both roles, the per-stream queues they fill and the
 * flood and limit accounting they share all work on h2_stream and the
 * session's counters; split, that state would have to be exported.
 *
 * Layout:
 *  - h2_stream: our per-stream state, hung on nghttp2's stream user data
 *    and also kept on a list owned by the session (nghttp2 does not call
 *    on_stream_close for streams still queued when the session is deleted).
 *    It holds the head being received (an arena of [u32 name_len][u32
 *    value_len][name][value] records, freed once the head is delivered), the
 *    bounded outgoing DATA queue and pending trailers.
 *  - Only one header block is in progress per connection at a time (HEADERS
 *    + CONTINUATION are contiguous), so at most one arena is large at once:
 *    memory for heads is bounded by about AV_H2_MAX_HEADER_BYTES per
 *    connection plus nghttp2's HPACK state.
 *  - Flow control is end to end: automatic WINDOW_UPDATE is off. We count
 *    per stream the DATA bytes delivered but not yet consumed; when a stream
 *    closes with bytes unconsumed we give them back to the connection window
 *    ourselves, so a caller that drops a stream never shrinks the
 *    connection window for good.
 *  - Output: nghttp2_session_mem_send hands out a pointer to bytes that must
 *    all be taken. When |out| has less room than that, the rest goes to a
 *    pending buffer (at most one mem_send chunk, about 16 KiB + a frame
 *    header) that is flushed first on the next av__h2_produce.
 */
#include "av_h2.h"

#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include <agentvault/agentvault.h>

#include "av_mem.h"

/* Server SETTINGS. INITIAL_WINDOW_SIZE stays at the RFC default (65535):
 * with end-to-end flow control a per-stream window larger than the
 * per-stream queue downstream would only let a fast peer buffer more in us. */
#define H2_SERVER_WINDOW 65535
/* Defaults of nghttp2 for the stream-reset rate limit (rapid reset,
 * CVE-2023-44487), CONTINUATION count (CVE-2024-27316 class), SETTINGS
 * entries and queued SETTINGS/PING ACKs. */
#define H2_RST_BURST 1000
#define H2_RST_RATE 33
#define H2_MAX_CONTINUATIONS 8
#define H2_MAX_SETTINGS 32
#define H2_MAX_OUTBOUND_ACK 1000
/* Our own header blocks (from validated heads) stay well under this. */
#define H2_MAX_SEND_HEADER_BLOCK (64 * 1024)
/* Per-record overhead in the head arena. */
#define H2_REC_HDR 8
#define H2_ARENA_MAX (AV_H2_MAX_HEADER_BYTES + H2_REC_HDR * (AV_H2_MAX_FIELDS + 8))
/* Streams refused over our concurrency limit, net of streams that ran:
 * beyond this the peer is flooding and gets GOAWAY ENHANCE_YOUR_CALM. */
#define H2_MAX_REFUSED 200
/* nghttp2 treats a stream over its own acknowledged
 * SETTINGS_MAX_CONCURRENT_STREAMS as a connection error (GOAWAY), before
 * any callback sees it. RFC 9113 5.1.2 makes it a stream error, so
 * nghttp2 is told "unlimited", the peer is told AV_H2_MAX_CONCURRENT (the
 * value is rewritten in our first SETTINGS frame on its way out, see
 * settings_patch), and cb_begin_headers enforces the limit. */
#define H2_NG_MAX_CONCURRENT 0xffffffffu
/* Opaque data of the PING that separates shutdown notice and final GOAWAY. */
static const uint8_t h2_shutdown_ping[8] = {'a', 'v', 's', 'h', 'u', 't', 'd', 'n'};

typedef struct h2_stream h2_stream;
struct h2_stream {
    int32_t id;
    h2_stream *prev, *next;
    void *tag;            /* the caller's (av__h2_set_tag) */

    /* incoming head */
    uint8_t *arena;
    size_t arena_len, arena_cap;
    size_t head_fields;   /* regular fields in the current block */
    size_t head_bytes;    /* decoded name + value bytes in the current block */
    int head_too_large;   /* limits exceeded: stop collecting */
    int delivered;        /* a head of this stream reached the caller (server) */
    int rejected;         /* answered 431 by us; DATA is dropped */
    size_t unconsumed;    /* DATA bytes delivered, not yet av__h2_consume'd */

    /* outgoing */
    av_buf q;
    int provider;         /* a data provider is attached */
    int deferred;         /* the provider returned NGHTTP2_ERR_DEFERRED */
    int ended;            /* no more DATA will be queued */
    int responded;        /* server: final response head submitted */
    nghttp2_nv *trailers; /* copies, sent when the queue drains */
    size_t ntrailers;
};

struct av_h2 {
    nghttp2_session *ng;
    int role;
    av_h2_callbacks cb;
    void *ud;
    h2_stream *streams;     /* every h2_stream we own */
    int32_t closing_id;     /* in on_stream_close: that stream's id ... */
    void *closing_tag;      /* ... and tag (the stream is already freed) */
    size_t client_open;     /* client role: streams submitted, not closed */
    int fatal;              /* AV_ERR_* once av__h2_feed failed for good */
    int goaway_recv;
    int32_t goaway_last;
    int shutdown;           /* av__h2_shutdown called */
    int final_goaway;       /* final GOAWAY submitted */
    uint8_t *pending;       /* unsent tail of the last mem_send chunk */
    size_t pending_off, pending_len, pending_cap;
    av_h2_head scratch;     /* the head handed to on_head */
    size_t server_open;     /* server role: request streams not closed */
    size_t refused;         /* streams refused over the limit, net (H2_MAX_REFUSED) */
    int refused_reported;   /* the first refusal was reported */
    int patch_settings;     /* server: our SETTINGS frame is not out yet */
};

/* ---- streams ----------------------------------------------------------- */

/* stream_new allocates a stream and links it into the session's list. */
static h2_stream *stream_new(av_h2 *s, int32_t id)
{
    h2_stream *st = av__calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->id = id;
    av__buf_init(&st->q, AV_H2_STREAM_QUEUE);
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    return st;
}

/* arena_free drops the head being received. */
static void arena_free(h2_stream *st)
{
    if (st->arena) {
        av__wipe(st->arena, st->arena_len);
        av__free(st->arena);
    }
    st->arena = NULL;
    st->arena_len = st->arena_cap = 0;
}

/* trailers_free releases pending trailer copies. */
static void trailers_free(h2_stream *st)
{
    av__free(st->trailers);
    st->trailers = NULL;
    st->ntrailers = 0;
}

/* stream_free unlinks and frees a stream (request bodies may carry
 * credentials: the queue is wiped). */
static void stream_free(av_h2 *s, h2_stream *st)
{
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    arena_free(st);
    trailers_free(st);
    av__buf_free_wipe(&st->q);
    av__free(st);
}

/* stream_get finds our state for a stream, or NULL. A client stream
 * exists in nghttp2 only once its HEADERS is sent, so the lookup walks our
 * list (at most about AV_H2_MAX_CONCURRENT entries: closed streams are
 * freed at once). */
static h2_stream *stream_get(const av_h2 *s, int32_t id)
{
    if (id <= 0)
        return NULL;
    /* nghttp2 keeps our struct as the stream's user data once the stream
     * is open (a map lookup); a submitted request not yet sent is only in
     * our list. */
    h2_stream *u = nghttp2_session_get_stream_user_data(s->ng, id);
    if (u && u->id == id)
        return u;
    for (h2_stream *st = s->streams; st; st = st->next)
        if (st->id == id)
            return st;
    return NULL;
}

/* report_limit tells the caller a limit was hit (SECURITY 16). */
static void report_limit(av_h2 *s, int32_t id, const char *what)
{
    if (s->cb.on_limit)
        s->cb.on_limit(s->ud, id, what);
}

/* ---- head accumulation -------------------------------------------------- */

/* head_reset starts a new header block on |st|. */
static void head_reset(h2_stream *st)
{
    arena_free(st);
    st->head_fields = 0;
    st->head_bytes = 0;
    st->head_too_large = 0;
}

/* arena_add appends one record; AV_ERR_NOMEM. The caller checked limits. */
static int arena_add(h2_stream *st, const uint8_t *name, size_t nlen, const uint8_t *value,
                     size_t vlen)
{
    size_t need = H2_REC_HDR + nlen + vlen;
    if (st->arena_cap - st->arena_len < need) {
        size_t cap = st->arena_cap ? st->arena_cap : 1024;
        while (cap - st->arena_len < need)
            cap *= 2;
        if (cap > H2_ARENA_MAX)
            cap = H2_ARENA_MAX;
        if (cap - st->arena_len < need)
            return AV_ERR_LIMIT;
        uint8_t *p = av__malloc(cap);
        if (!p)
            return AV_ERR_NOMEM;
        if (st->arena_len)
            memcpy(p, st->arena, st->arena_len);
        if (st->arena) {
            av__wipe(st->arena, st->arena_len);
            av__free(st->arena);
        }
        st->arena = p;
        st->arena_cap = cap;
    }
    uint32_t n32 = (uint32_t)nlen, v32 = (uint32_t)vlen;
    uint8_t *w = st->arena + st->arena_len;
    memcpy(w, &n32, 4);
    memcpy(w + 4, &v32, 4);
    memcpy(w + H2_REC_HDR, name, nlen);
    memcpy(w + H2_REC_HDR + nlen, value, vlen);
    st->arena_len += need;
    return 0;
}

/* name_is compares a (name, len) view with a C string. */
static int name_is(const char *n, size_t len, const char *lit)
{
    size_t l = strlen(lit);
    return len == l && memcmp(n, lit, l) == 0;
}

/* parse_cl reads a content-length value nghttp2 already validated. */
static int64_t parse_cl(const char *v, size_t len)
{
    int64_t x = 0;
    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9' || x > (INT64_MAX - 9) / 10)
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

/* head_build fills s->scratch from the arena of |st|. */
static void head_build(av_h2 *s, h2_stream *st)
{
    av_h2_head *h = &s->scratch;
    memset(h, 0, offsetof(av_h2_head, fields));
    h->nfields = 0;
    h->content_length = -1;
    h->end_stream = 0;
    h->trailers = 0;
    size_t off = 0;
    while (off + H2_REC_HDR <= st->arena_len) {
        uint32_t nl, vl;
        memcpy(&nl, st->arena + off, 4);
        memcpy(&vl, st->arena + off + 4, 4);
        const char *n = (const char *)st->arena + off + H2_REC_HDR;
        const char *v = n + nl;
        off += H2_REC_HDR + (size_t)nl + vl;
        if (nl > 0 && n[0] == ':') {
            if (name_is(n, nl, ":method")) {
                h->method = v; h->method_len = vl;
            } else if (name_is(n, nl, ":scheme")) {
                h->scheme = v; h->scheme_len = vl;
            } else if (name_is(n, nl, ":authority")) {
                h->authority = v; h->authority_len = vl;
            } else if (name_is(n, nl, ":path")) {
                h->path = v; h->path_len = vl;
            } else if (name_is(n, nl, ":protocol")) {
                h->protocol = v; h->protocol_len = vl;
            } else if (name_is(n, nl, ":status")) {
                int code = 0;
                for (uint32_t i = 0; i < vl && i < 3; i++)
                    code = code * 10 + (v[i] - '0');
                h->status = code;
            }
            continue;
        }
        if (h->nfields >= AV_H2_MAX_FIELDS)
            continue; /* cannot happen: limits checked on the way in */
        av_h1_field *f = &h->fields[h->nfields++];
        f->name = n;
        f->name_len = nl;
        f->value = v;
        f->value_len = vl;
        if (name_is(n, nl, "content-length"))
            h->content_length = parse_cl(v, vl);
    }
}

/* ---- nghttp2 callbacks -------------------------------------------------- */

/* refuse_stream answers a request stream over the concurrency limit with
 * RST_STREAM(REFUSED_STREAM) (RFC 9113 5.1.2: never processed, the client
 * may retry); the connection and its other streams go on. Refusals that
 * keep coming count as a flood: GOAWAY ENHANCE_YOUR_CALM. */
static int refuse_stream(av_h2 *s, int32_t id)
{
    s->refused++;
    if (!s->refused_reported) {
        s->refused_reported = 1;
        report_limit(s, id, "stream refused (REFUSED_STREAM): over SETTINGS_MAX_CONCURRENT_STREAMS");
    }
    if (s->refused > H2_MAX_REFUSED) {
        report_limit(s, id, "too many streams over SETTINGS_MAX_CONCURRENT_STREAMS: GOAWAY");
        nghttp2_session_terminate_session(s->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    } else {
        nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
    }
    /* The header block is skipped; RST_STREAM(INTERNAL_ERROR) from nghttp2
     * is not sent, ours is already queued. */
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

/* cb_begin_headers creates server streams and starts a header block. */
static int cb_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    av_h2 *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    h2_stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!st && s->role == AV_H2_SERVER && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        if (s->server_open >= AV_H2_MAX_CONCURRENT)
            return refuse_stream(s, frame->hd.stream_id);
        st = stream_new(s, frame->hd.stream_id);
        if (!st)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST INTERNAL_ERROR */
        if (nghttp2_session_set_stream_user_data(ng, frame->hd.stream_id, st) != 0) {
            stream_free(s, st);
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        s->server_open++;
    }
    if (st)
        head_reset(st);
    return 0;
}

/* cb_header collects one validated field, enforcing our count and size
 * limits (nghttp2 enforces neither). */
static int cb_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud)
{
    av_h2 *s = ud;
    (void)flags;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    h2_stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!st || st->head_too_large)
        return 0;
    int pseudo = namelen > 0 && name[0] == ':';
    size_t add = namelen + valuelen;
    if ((!pseudo && st->head_fields + 1 > AV_H2_MAX_FIELDS) ||
        add > AV_H2_MAX_HEADER_BYTES - st->head_bytes) {
        st->head_too_large = 1;
        arena_free(st);
        report_limit(s, st->id, s->role == AV_H2_SERVER ? "request header block too large"
                                                        : "response header block too large");
        /* Client: reset the stream (INTERNAL_ERROR); nghttp2 keeps decoding
         * the block for HPACK state and drops it. Server: answered 431 at
         * the end of the block. */
        return s->role == AV_H2_CLIENT ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
    }
    int rv = arena_add(st, name, namelen, value, valuelen);
    if (rv != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    st->head_bytes += add;
    if (!pseudo)
        st->head_fields++;
    return 0;
}

/* reject_431 answers an over-limit request from the session itself, with
 * the one-line body every proxy-made error has. */
static nghttp2_data_provider provider_for(h2_stream *st);
static void reject_431(av_h2 *s, h2_stream *st)
{
    static const char ct[] = "text/plain; charset=utf-8";
    static const char why[] = "request header block too large";
    static const char body[] = "request header block too large\n";
    char cl[8];
    snprintf(cl, sizeof(cl), "%zu", sizeof(body) - 1);
    nghttp2_nv nv[] = {
        {(uint8_t *)":status", (uint8_t *)"431", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)ct, 12, sizeof(ct) - 1, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-length", (uint8_t *)cl, 14, strlen(cl), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"x-agentvault-error", (uint8_t *)why, 18, sizeof(why) - 1,
         NGHTTP2_NV_FLAG_NONE},
    };
    st->rejected = 1;
    st->ended = 1;
    nghttp2_data_provider prd = provider_for(st);
    int body_ok = av__buf_append(&st->q, body, sizeof(body) - 1) == 0;
    if (body_ok)
        st->provider = 1;
    if (nghttp2_submit_response(s->ng, st->id, nv, sizeof(nv) / sizeof(nv[0]), body_ok ? &prd : NULL) != 0)
        nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* on_headers_complete delivers a validated head (or answers 431). */
static int on_headers_complete(av_h2 *s, const nghttp2_frame *frame)
{
    int32_t id = frame->hd.stream_id;
    h2_stream *st = stream_get(s, id);
    if (!st)
        return 0;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (st->head_too_large) {
        head_reset(st);
        if (s->role == AV_H2_SERVER && !st->delivered && !st->rejected)
            reject_431(s, st);
        else if (s->role == AV_H2_SERVER) /* over-limit trailers */
            nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_PROTOCOL_ERROR);
        return 0;
    }
    if (st->rejected) {
        head_reset(st);
        return 0;
    }
    head_build(s, st);
    s->scratch.end_stream = end;
    s->scratch.trailers = frame->headers.cat == NGHTTP2_HCAT_HEADERS &&
                          s->scratch.status == 0 && s->scratch.method == NULL;
    st->delivered = 1;
    int rv = s->cb.on_head ? s->cb.on_head(s->ud, id, &s->scratch) : 0;
    head_reset(st);
    if (rv < 0) {
        nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    if (end && s->cb.on_end_stream && stream_get(s, id))
        s->cb.on_end_stream(s->ud, id);
    return 0;
}

/* cb_frame_recv dispatches completed frames. */
static int cb_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    av_h2 *s = ud;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        return on_headers_complete(s, frame);
    case NGHTTP2_DATA:
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
            h2_stream *st = stream_get(s, frame->hd.stream_id);
            if (st && st->delivered && !st->rejected && s->cb.on_end_stream)
                s->cb.on_end_stream(s->ud, frame->hd.stream_id);
        }
        return 0;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && s->cb.on_settings)
            s->cb.on_settings(s->ud);
        return 0;
    case NGHTTP2_GOAWAY:
        s->goaway_recv = 1;
        s->goaway_last = frame->goaway.last_stream_id;
        return 0;
    case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && s->shutdown && !s->final_goaway &&
            memcmp(frame->ping.opaque_data, h2_shutdown_ping, 8) == 0) {
            s->final_goaway = 1;
            nghttp2_submit_goaway(ng, NGHTTP2_FLAG_NONE,
                                  nghttp2_session_get_last_proc_stream_id(ng),
                                  NGHTTP2_NO_ERROR, NULL, 0);
        }
        return 0;
    default:
        return 0;
    }
}

/* cb_data_chunk passes DATA on (or drops it for streams we rejected). */
static int cb_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *ud)
{
    av_h2 *s = ud;
    (void)flags;
    h2_stream *st = nghttp2_session_get_stream_user_data(ng, stream_id);
    if (!st || !st->delivered || st->rejected) {
        /* Nobody reads this: give the window back now. */
        nghttp2_session_consume(ng, stream_id, len);
        return 0;
    }
    st->unconsumed += len;
    int rv = s->cb.on_data ? s->cb.on_data(s->ud, stream_id, data, len) : 0;
    if (rv < 0)
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR);
    return 0;
}

/* cb_frame_send reports an erroring GOAWAY, and follows the 431 path:
 * once the answer is out, a request body still coming is cancelled with
 * RST_STREAM NO_ERROR (RFC 9113 8.1). */
static int cb_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    av_h2 *s = ud;
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR) {
        /* nghttp2 ended the session itself (connection error, reset rate
         * limit) or we did after a fatal av__h2_feed: make it visible. */
        report_limit(s, 0, frame->goaway.error_code == NGHTTP2_PROTOCOL_ERROR
                               ? "GOAWAY sent: protocol error"
                               : "GOAWAY sent: peer misbehaved (flood or reset rate)");
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    h2_stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (st && st->rejected && nghttp2_session_get_stream_remote_close(ng, st->id) == 0)
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    return 0;
}

/* cb_frame_not_send handles HEADERS nghttp2 gave up on. A request that
 * never opened a stream (GOAWAY received meanwhile, ids exhausted) gets no
 * on_stream_close from nghttp2: report REFUSED_STREAM. Any other block
 * (too large to send, say) resets its stream. */
static int cb_frame_not_send(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error,
                             void *ud)
{
    av_h2 *s = ud;
    (void)lib_error;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (s->role == AV_H2_SERVER || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* A response or trailer block we could not send (over
         * max_send_header_block_length): reset rather than hang. */
        if (nghttp2_session_find_stream(ng, frame->hd.stream_id)) {
            report_limit(s, frame->hd.stream_id, "header block too large to send");
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                      NGHTTP2_INTERNAL_ERROR);
        }
        return 0;
    }
    h2_stream *st = stream_get(s, frame->hd.stream_id);
    if (!st || nghttp2_session_find_stream(ng, frame->hd.stream_id))
        return 0; /* the stream exists: on_stream_close follows */
    if (s->client_open > 0)
        s->client_open--;
    int32_t id = st->id;
    stream_free(s, st);
    if (s->cb.on_stream_close)
        s->cb.on_stream_close(s->ud, id, NGHTTP2_REFUSED_STREAM);
    return 0;
}

/* cb_stream_close reports and frees a stream. Never fails (SECURITY 15). */
static int cb_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code,
                           void *ud)
{
    av_h2 *s = ud;
    h2_stream *st = nghttp2_session_get_stream_user_data(ng, stream_id);
    if (!st)
        return 0;
    if (st->unconsumed > 0) /* the caller will not consume these any more */
        nghttp2_session_consume_connection(ng, st->unconsumed);
    int tell = s->role == AV_H2_CLIENT || (st->delivered && !st->rejected);
    if (s->role == AV_H2_CLIENT && s->client_open > 0)
        s->client_open--;
    if (s->role == AV_H2_SERVER && s->server_open > 0) {
        s->server_open--;
        if (s->refused > 0)
            s->refused--; /* a stream that ran pays for one refusal */
    }
    nghttp2_session_set_stream_user_data(ng, stream_id, NULL);
    void *tag = st->tag;
    stream_free(s, st);
    if (tell && s->cb.on_stream_close) {
        /* the caller may look its tag up once more, from this callback */
        s->closing_id = stream_id;
        s->closing_tag = tag;
        s->cb.on_stream_close(s->ud, stream_id, error_code);
        s->closing_id = 0;
        s->closing_tag = NULL;
    }
    return 0;
}

/* cb_read_data feeds a stream's queue to nghttp2. */
static ssize_t cb_read_data(nghttp2_session *ng, int32_t stream_id, uint8_t *buf, size_t length,
                            uint32_t *data_flags, nghttp2_data_source *source, void *ud)
{
    (void)ud;
    (void)source;
    h2_stream *st = nghttp2_session_get_stream_user_data(ng, stream_id);
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = av__buf_len(&st->q);
    if (n > length)
        n = length;
    if (n) {
        memcpy(buf, av__buf_head(&st->q), n);
        av__wipe((void *)av__buf_head(&st->q), n);
        av__buf_consume(&st->q, n);
    }
    if (av__buf_len(&st->q) == 0) {
        if (st->ended) {
            *data_flags |= NGHTTP2_DATA_FLAG_EOF;
            if (st->trailers) {
                *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
                int rv = nghttp2_submit_trailer(ng, stream_id, st->trailers, st->ntrailers);
                trailers_free(st);
                if (rv != 0)
                    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            }
        } else if (n == 0) {
            st->deferred = 1;
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    return (ssize_t)n;
}

/* ---- session ------------------------------------------------------------ */

/* h2_malloc and friends route nghttp2's allocations through av_mem. */
static void *h2_malloc(size_t size, void *ud)
{
    (void)ud;
    return av__malloc(size);
}
static void h2_free(void *ptr, void *ud)
{
    (void)ud;
    av__free(ptr);
}
static void *h2_calloc(size_t n, size_t size, void *ud)
{
    (void)ud;
    return av__calloc(n, size);
}
static void *h2_realloc(void *ptr, size_t size, void *ud)
{
    (void)ud;
    return av__realloc(ptr, size);
}

/* av__h2_new creates a session and queues our SETTINGS. */
int av__h2_new(av_h2 **out, int role, const av_h2_callbacks *cb, void *ud)
{
    nghttp2_mem mem = {NULL, h2_malloc, h2_free, h2_calloc, h2_realloc};
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    int err = AV_ERR_NOMEM;
    *out = NULL;
    if (role != AV_H2_SERVER && role != AV_H2_CLIENT)
        return AV_ERR_INVALID;
    av_h2 *s = av__calloc(1, sizeof(*s));
    if (!s)
        return AV_ERR_NOMEM;
    s->role = role;
    if (cb)
        s->cb = *cb;
    s->ud = ud;
    s->goaway_last = -1;
    if (nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0)
        goto err;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, cb_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, cb_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, cb_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, cb_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, cb_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, cb_stream_close);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, cb_frame_not_send);

    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_send_header_block_length(opt, H2_MAX_SEND_HEADER_BLOCK);
    nghttp2_option_set_stream_reset_rate_limit(opt, H2_RST_BURST, H2_RST_RATE);
    nghttp2_option_set_max_continuations(opt, H2_MAX_CONTINUATIONS);
    nghttp2_option_set_max_settings(opt, H2_MAX_SETTINGS);
    nghttp2_option_set_max_outbound_ack(opt, H2_MAX_OUTBOUND_ACK);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, AV_H2_MAX_CONCURRENT);

    int rv = role == AV_H2_SERVER ? nghttp2_session_server_new3(&s->ng, cbs, s, opt, &mem)
                                  : nghttp2_session_client_new3(&s->ng, cbs, s, opt, &mem);
    if (rv != 0)
        goto err;

    nghttp2_settings_entry server_iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_NG_MAX_CONCURRENT}, /* sent as AV_H2_MAX_CONCURRENT */
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, AV_H2_MAX_HEADER_BYTES},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_SERVER_WINDOW},
    };
    nghttp2_settings_entry client_iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, AV_H2_MAX_CONCURRENT},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, AV_H2_MAX_HEADER_BYTES},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_SERVER_WINDOW},
    };
    rv = role == AV_H2_SERVER ? nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, server_iv, 4)
                              : nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, client_iv, 4);
    if (rv != 0)
        goto err;
    s->patch_settings = role == AV_H2_SERVER;
    /* The connection window covers every stream's window: with end-to-end
     * flow control a stream whose consumer is slow holds at most its own
     * window, and never stalls the other streams (issue 4). */
    rv = nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0,
                                               AV_H2_MAX_CONCURRENT * H2_SERVER_WINDOW);
    if (rv != 0)
        goto err;
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    *out = s;
    return 0;
err:
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    av__h2_free(s);
    return err;
}

/* av__h2_free deletes the session and every stream state. */
void av__h2_free(av_h2 *s)
{
    if (!s)
        return;
    if (s->ng)
        nghttp2_session_del(s->ng); /* calls no on_stream_close */
    while (s->streams)
        stream_free(s, s->streams);
    if (s->pending) {
        av__wipe(s->pending, s->pending_cap);
        av__free(s->pending);
    }
    av__free(s);
}

/* map_ng turns a fatal nghttp2 error into AV_ERR_*. */
static int map_ng(int rv)
{
    switch (rv) {
    case NGHTTP2_ERR_NOMEM:
        return AV_ERR_NOMEM;
    case NGHTTP2_ERR_FLOODED:
    case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
    case NGHTTP2_ERR_TOO_MANY_SETTINGS:
        return AV_ERR_LIMIT;
    default:
        return AV_ERR_PARSE;
    }
}

/* av__h2_feed processes peer bytes; a fatal error queues a GOAWAY. */
ssize_t av__h2_feed(av_h2 *s, const uint8_t *in, size_t len)
{
    if (s->fatal)
        return s->fatal;
    ssize_t n = nghttp2_session_mem_recv(s->ng, in, len);
    if (n >= 0)
        return n;
    s->fatal = map_ng((int)n);
    /* nghttp2 does not queue a GOAWAY for errors it returns: do it (it is
     * a no-op when one is already on its way). */
    nghttp2_session_terminate_session(s->ng, s->fatal == AV_ERR_LIMIT
                                                 ? NGHTTP2_ENHANCE_YOUR_CALM
                                                 : NGHTTP2_PROTOCOL_ERROR);
    return s->fatal;
}

/* pending_keep stores the part of a mem_send chunk that did not fit. */
static int pending_keep(av_h2 *s, const uint8_t *p, size_t n)
{
    if (n > s->pending_cap) {
        uint8_t *np = av__malloc(n);
        if (!np)
            return AV_ERR_NOMEM;
        if (s->pending) {
            av__wipe(s->pending, s->pending_cap);
            av__free(s->pending);
        }
        s->pending = np;
        s->pending_cap = n;
    }
    memcpy(s->pending, p, n);
    s->pending_off = 0;
    s->pending_len = n;
    return 0;
}

/* settings_patch rewrites SETTINGS_MAX_CONCURRENT_STREAMS in our first
 * SETTINGS frame (|p|, |n| bytes, the first output of a server session) to
 * the limit we enforce (H2_NG_MAX_CONCURRENT). Returns 0 once done. */
static int settings_patch(uint8_t *p, size_t n)
{
    if (n < 9 || p[3] != NGHTTP2_SETTINGS || (p[4] & NGHTTP2_FLAG_ACK))
        return -1;
    size_t len = ((size_t)p[0] << 16) | ((size_t)p[1] << 8) | p[2];
    if (len > n - 9 || len % 6)
        return -1;
    for (size_t o = 9; o + 6 <= 9 + len; o += 6) {
        if (((p[o] << 8) | p[o + 1]) != NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
            continue;
        uint32_t v = AV_H2_MAX_CONCURRENT;
        p[o + 2] = (uint8_t)(v >> 24);
        p[o + 3] = (uint8_t)(v >> 16);
        p[o + 4] = (uint8_t)(v >> 8);
        p[o + 5] = (uint8_t)v;
        return 0;
    }
    return -1;
}

/* av__h2_produce moves frames into |out| while it has room. */
int av__h2_produce(av_h2 *s, av_buf *out)
{
    size_t wrote = 0;
    int rv;
    if (s->pending_len) {
        size_t take = av__buf_room(out);
        if (take > s->pending_len)
            take = s->pending_len;
        if (take) {
            rv = av__buf_append(out, s->pending + s->pending_off, take);
            if (rv != 0)
                return rv;
            s->pending_off += take;
            s->pending_len -= take;
            wrote += take;
        }
        if (s->pending_len)
            return wrote ? 1 : 0;
    }
    while (av__buf_room(out) > 0) {
        const uint8_t *p = NULL;
        ssize_t n = nghttp2_session_mem_send(s->ng, &p);
        if (n < 0) {
            if (!s->fatal)
                s->fatal = map_ng((int)n);
            return s->fatal;
        }
        if (n == 0)
            break;
        uint8_t first[128];
        if (s->patch_settings) {
            /* nghttp2 hands out one frame per call: our SETTINGS first. */
            s->patch_settings = 0;
            if ((size_t)n > sizeof(first)) {
                s->fatal = AV_ERR_INVALID;
                return s->fatal;
            }
            memcpy(first, p, (size_t)n);
            if (settings_patch(first, (size_t)n) != 0) {
                s->fatal = AV_ERR_INVALID;
                return s->fatal;
            }
            p = first;
        }
        size_t take = av__buf_room(out);
        if (take > (size_t)n)
            take = (size_t)n;
        rv = av__buf_append(out, p, take);
        if (rv != 0) {
            take = 0;
            if (rv != AV_ERR_LIMIT)
                goto lost;
        }
        wrote += take;
        if (take < (size_t)n) {
            rv = pending_keep(s, p + take, (size_t)n - take);
            if (rv != 0)
                goto lost;
            break;
        }
    }
    return wrote ? 1 : 0;
lost:
    /* nghttp2 counts these bytes as sent: without them the peer's view of
     * the session is wrong (a SETTINGS it waits for), so the session is
     * over. */
    s->fatal = rv;
    return rv;
}

/* av__h2_alive: 0 once nothing is left to read or write. */
int av__h2_alive(const av_h2 *s)
{
    if (s->pending_len || nghttp2_session_want_write(s->ng))
        return 1;
    if (s->fatal)
        return 0;
    return nghttp2_session_want_read(s->ng) != 0;
}

/* ---- submitting --------------------------------------------------------- */

/* ascii_ieq compares |n| bytes ignoring ASCII case; 1 when equal. */
static int ascii_ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return 0;
    }
    return 1;
}

/* hop_by_hop: connection-specific fields never sent over HTTP/2. */
static int hop_by_hop(const char *n, size_t len)
{
    static const char *const names[] = {"connection", "keep-alive", "proxy-connection",
                                        "transfer-encoding", "upgrade", "host"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t l = strlen(names[i]);
        if (len == l && ascii_ieq(n, names[i], l))
            return 1;
    }
    return 0;
}

/* nv_builder copies lower-cased names into one block for nghttp2. */
typedef struct nv_builder {
    nghttp2_nv *nv;
    size_t n, cap;
    uint8_t *text;
    size_t used, text_cap;
} nv_builder;

/* nvb_init sizes the builder for |nfields| + |npseudo| entries. */
static int nvb_init(nv_builder *b, const av_h1_field *f, size_t nfields, size_t npseudo,
                    size_t extra_text)
{
    memset(b, 0, sizeof(*b));
    size_t text = extra_text;
    for (size_t i = 0; i < nfields; i++)
        text += f[i].name_len + f[i].value_len;
    b->cap = nfields + npseudo;
    b->text_cap = text;
    b->nv = av__calloc(b->cap ? b->cap : 1, sizeof(nghttp2_nv) + 0);
    b->text = av__malloc(text ? text : 1);
    if (!b->nv || !b->text) {
        av__free(b->nv);
        av__free(b->text);
        return AV_ERR_NOMEM;
    }
    return 0;
}

/* nvb_free releases the builder. */
static void nvb_free(nv_builder *b)
{
    av__free(b->nv);
    if (b->text) {
        av__wipe(b->text, b->text_cap);
        av__free(b->text);
    }
}

/* nvb_add appends one entry; names are lower-cased. AV_ERR_INVALID for
 * CR, LF or NUL in a name or value, or an empty name. */
static int nvb_add(nv_builder *b, const char *name, size_t nlen, const char *value,
                   size_t vlen, int lower)
{
    if (b->n >= b->cap || nlen == 0 || b->used + nlen + vlen > b->text_cap)
        return AV_ERR_INVALID;
    uint8_t *np = b->text + b->used;
    for (size_t i = 0; i < nlen; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == 0 || c == '\r' || c == '\n' || c == ' ' || c == '\t')
            return AV_ERR_INVALID;
        np[i] = (uint8_t)(lower && c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    uint8_t *vp = np + nlen;
    for (size_t i = 0; i < vlen; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c == 0 || c == '\r' || c == '\n')
            return AV_ERR_INVALID;
        vp[i] = c;
    }
    b->used += nlen + vlen;
    nghttp2_nv *e = &b->nv[b->n++];
    e->name = np;
    e->namelen = nlen;
    e->value = vp;
    e->valuelen = vlen;
    e->flags = NGHTTP2_NV_FLAG_NONE;
    return 0;
}

/* nvb_fields adds regular fields, dropping connection-specific ones (and
 * TE other than "trailers"); pseudo-headers in |f| are refused. */
static int nvb_fields(nv_builder *b, const av_h1_field *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (f[i].name_len > 0 && f[i].name[0] == ':')
            return AV_ERR_INVALID;
        if (hop_by_hop(f[i].name, f[i].name_len))
            continue;
        if (f[i].name_len == 2 && ascii_ieq(f[i].name, "te", 2) &&
            !(f[i].value_len == 8 && ascii_ieq(f[i].value, "trailers", 8)))
            continue;
        int rv = nvb_add(b, f[i].name, f[i].name_len, f[i].value, f[i].value_len, 1);
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* provider_for returns the data provider for a stream body. */
static nghttp2_data_provider provider_for(h2_stream *st)
{
    nghttp2_data_provider prd;
    prd.source.ptr = st;
    prd.read_callback = cb_read_data;
    return prd;
}

/* av__h2_submit_request starts a client stream. */
int av__h2_submit_request(av_h2 *s, const av_h2_head *head, int end_stream, int32_t *stream_id)
{
    if (s->role != AV_H2_CLIENT || s->fatal)
        return AV_ERR_STATE;
    if (s->goaway_recv || s->shutdown)
        return AV_ERR_STATE;
    if (!av__h2_can_submit(s))
        return AV_ERR_LIMIT;
    if (!head->method || !head->method_len)
        return AV_ERR_INVALID;
    nv_builder b;
    if (nvb_init(&b, head->fields, head->nfields, 5,
                 head->method_len + head->scheme_len + head->authority_len + head->path_len +
                     head->protocol_len + 64) != 0)
        return AV_ERR_NOMEM;
    int rv = nvb_add(&b, ":method", 7, head->method, head->method_len, 0);
    if (!rv && head->scheme)
        rv = nvb_add(&b, ":scheme", 7, head->scheme, head->scheme_len, 0);
    if (!rv && head->authority)
        rv = nvb_add(&b, ":authority", 10, head->authority, head->authority_len, 0);
    if (!rv && head->path)
        rv = nvb_add(&b, ":path", 5, head->path, head->path_len, 0);
    if (!rv && head->protocol)
        rv = nvb_add(&b, ":protocol", 9, head->protocol, head->protocol_len, 0);
    if (!rv)
        rv = nvb_fields(&b, head->fields, head->nfields);
    if (rv) {
        nvb_free(&b);
        return rv;
    }
    /* Credentials go out as never-indexed literals: they stay out of both
     * HPACK dynamic tables (ours and the upstream's), RFC 7541 7.1.3. */
    size_t ni_len = head->never_index ? strlen(head->never_index) : 0;
    for (size_t i = 0; i < b.n; i++) {
        if ((ni_len && b.nv[i].namelen == ni_len && ascii_ieq((const char *)b.nv[i].name, head->never_index, ni_len)) ||
            (b.nv[i].namelen == 13 && memcmp(b.nv[i].name, "authorization", 13) == 0))
            b.nv[i].flags |= NGHTTP2_NV_FLAG_NO_INDEX;
    }
    h2_stream *st = stream_new(s, -1);
    if (!st) {
        nvb_free(&b);
        return AV_ERR_NOMEM;
    }
    st->delivered = 1; /* client streams are the caller's from the start */
    nghttp2_data_provider prd = provider_for(st);
    int32_t id = nghttp2_submit_request(s->ng, NULL, b.nv, b.n, end_stream ? NULL : &prd, st);
    nvb_free(&b);
    if (id < 0) {
        stream_free(s, st);
        return id == NGHTTP2_ERR_NOMEM ? AV_ERR_NOMEM : AV_ERR_STATE;
    }
    st->id = id;
    st->provider = !end_stream;
    st->ended = end_stream;
    s->client_open++;
    *stream_id = id;
    return 0;
}

/* av__h2_submit_response answers a server stream (1xx: informational). */
int av__h2_submit_response(av_h2 *s, int32_t stream_id, const av_h2_head *head, int end_stream)
{
    if (s->role != AV_H2_SERVER)
        return AV_ERR_STATE;
    h2_stream *st = stream_get(s, stream_id);
    if (!st || !st->delivered || st->rejected)
        return AV_ERR_NOTFOUND;
    if (head->status < 100 || head->status > 999)
        return AV_ERR_INVALID;
    if (st->responded)
        return AV_ERR_STATE;
    char status[4];
    snprintf(status, sizeof(status), "%03d", head->status);
    nv_builder b;
    if (nvb_init(&b, head->fields, head->nfields, 1, 16) != 0)
        return AV_ERR_NOMEM;
    int rv = nvb_add(&b, ":status", 7, status, 3, 0);
    if (!rv)
        rv = nvb_fields(&b, head->fields, head->nfields);
    if (rv) {
        nvb_free(&b);
        return rv;
    }
    if (head->status < 200) {
        rv = nghttp2_submit_headers(s->ng, NGHTTP2_FLAG_NONE, stream_id, NULL, b.nv, b.n, NULL);
    } else {
        nghttp2_data_provider prd = provider_for(st);
        rv = nghttp2_submit_response(s->ng, stream_id, b.nv, b.n, end_stream ? NULL : &prd);
        if (rv == 0) {
            st->responded = 1;
            st->provider = !end_stream;
            if (end_stream)
                st->ended = 1;
        }
    }
    nvb_free(&b);
    return rv == 0 ? 0 : rv == NGHTTP2_ERR_NOMEM ? AV_ERR_NOMEM : AV_ERR_STATE;
}

/* av__h2_submit_trailers ends a stream with a trailer block after its
 * queued DATA. */
int av__h2_submit_trailers(av_h2 *s, int32_t stream_id, const av_h1_field *fields, size_t n)
{
    h2_stream *st = stream_get(s, stream_id);
    if (!st || !st->delivered || st->rejected)
        return AV_ERR_NOTFOUND;
    if (!st->provider || st->ended)
        return AV_ERR_STATE;
    nv_builder b;
    if (nvb_init(&b, fields, n, 0, 0) != 0)
        return AV_ERR_NOMEM;
    int rv = nvb_fields(&b, fields, n);
    if (rv) {
        nvb_free(&b);
        return rv;
    }
    /* Keep one block: entries then text; rebase the pointers. */
    size_t nvsz = b.n * sizeof(nghttp2_nv);
    nghttp2_nv *copy = av__malloc(nvsz + b.used + 1);
    if (!copy) {
        nvb_free(&b);
        return AV_ERR_NOMEM;
    }
    uint8_t *text = (uint8_t *)copy + nvsz;
    memcpy(text, b.text, b.used);
    for (size_t i = 0; i < b.n; i++) {
        copy[i] = b.nv[i];
        copy[i].name = text + (b.nv[i].name - b.text);
        copy[i].value = text + (b.nv[i].value - b.text);
    }
    trailers_free(st);
    st->trailers = copy;
    st->ntrailers = b.n;
    nvb_free(&b);
    if (st->ntrailers == 0)
        trailers_free(st); /* nothing left: a plain END_STREAM */
    st->ended = 1;
    if (st->deferred) {
        st->deferred = 0;
        nghttp2_session_resume_data(s->ng, stream_id);
    }
    return 0;
}

/* av__h2_send_data queues what fits of |data| on a stream. */
ssize_t av__h2_send_data(av_h2 *s, int32_t stream_id, const uint8_t *data, size_t len)
{
    h2_stream *st = stream_get(s, stream_id);
    if (!st || !st->delivered || st->rejected)
        return AV_ERR_NOTFOUND;
    if (st->ended)
        return AV_ERR_STATE;
    size_t room = av__buf_room(&st->q);
    if (len > room)
        len = room;
    if (len == 0)
        return 0;
    int rv = av__buf_append(&st->q, data, len);
    if (rv != 0)
        return rv;
    if (st->deferred) {
        st->deferred = 0;
        nghttp2_session_resume_data(s->ng, stream_id);
    }
    return (ssize_t)len;
}

/* av__h2_end_stream ends a stream after its queued DATA. */
int av__h2_end_stream(av_h2 *s, int32_t stream_id)
{
    h2_stream *st = stream_get(s, stream_id);
    if (!st || !st->delivered || st->rejected)
        return AV_ERR_NOTFOUND;
    if (st->ended)
        return 0;
    st->ended = 1;
    if (st->deferred) {
        st->deferred = 0;
        nghttp2_session_resume_data(s->ng, stream_id);
    }
    return 0;
}

/* av__h2_stream_room: free space in a stream's outgoing queue. */
size_t av__h2_stream_room(const av_h2 *s, int32_t stream_id)
{
    h2_stream *st = stream_get(s, stream_id);
    if (!st || st->ended)
        return 0;
    return av__buf_room(&st->q);
}

/* av__h2_reset_stream sends RST_STREAM. */
int av__h2_reset_stream(av_h2 *s, int32_t stream_id, uint32_t error_code)
{
    if (!stream_get(s, stream_id))
        return AV_ERR_NOTFOUND;
    int rv = nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, stream_id, error_code);
    return rv == 0 ? 0 : rv == NGHTTP2_ERR_NOMEM ? AV_ERR_NOMEM : AV_ERR_STATE;
}

/* av__h2_consume reopens windows for DATA the caller passed on. Bytes of a
 * stream that is already closed were given back at close: ignored. */
int av__h2_consume(av_h2 *s, int32_t stream_id, size_t n)
{
    h2_stream *st = stream_get(s, stream_id);
    if (!st)
        return 0;
    if (n > st->unconsumed)
        n = st->unconsumed;
    if (n == 0)
        return 0;
    st->unconsumed -= n;
    int rv = nghttp2_session_consume(s->ng, stream_id, n);
    return rv == 0 ? 0 : rv == NGHTTP2_ERR_NOMEM ? AV_ERR_NOMEM : AV_ERR_STATE;
}

/* av__h2_shutdown starts a graceful shutdown. Server: GOAWAY notice
 * (2^31-1) and a PING; the final GOAWAY with the last processed stream
 * follows the PING ACK, so requests in flight are not lost. Client: one
 * GOAWAY. */
int av__h2_shutdown(av_h2 *s)
{
    if (s->shutdown || s->fatal)
        return 0;
    s->shutdown = 1;
    int rv;
    if (s->role == AV_H2_SERVER) {
        rv = nghttp2_submit_shutdown_notice(s->ng);
        if (rv == 0)
            rv = nghttp2_submit_ping(s->ng, NGHTTP2_FLAG_NONE, h2_shutdown_ping);
    } else {
        s->final_goaway = 1;
        rv = nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE,
                                   nghttp2_session_get_last_proc_stream_id(s->ng),
                                   NGHTTP2_NO_ERROR, NULL, 0);
    }
    return rv == 0 ? 0 : rv == NGHTTP2_ERR_NOMEM ? AV_ERR_NOMEM : AV_ERR_STATE;
}

/* av__h2_can_submit: room under the peer's concurrency limit, no GOAWAY. */
int av__h2_can_submit(const av_h2 *s)
{
    if (s->role != AV_H2_CLIENT || s->fatal || s->goaway_recv || s->shutdown)
        return 0;
    if (nghttp2_session_check_request_allowed(s->ng) == 0)
        return 0;
    uint32_t max = nghttp2_session_get_remote_settings(s->ng,
                                                       NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return s->client_open < max;
}

/* av__h2_peer_connect_protocol: the peer sent ENABLE_CONNECT_PROTOCOL 1. */
int av__h2_peer_connect_protocol(const av_h2 *s)
{
    return nghttp2_session_get_remote_settings(s->ng,
                                               NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) == 1;
}

/* av__h2_goaway_last_stream: last stream id of the peer's GOAWAY, or -1. */
int32_t av__h2_goaway_last_stream(const av_h2 *s)
{
    return s->goaway_recv ? s->goaway_last : -1;
}

int av__h2_set_tag(av_h2 *s, int32_t stream_id, void *tag)
{
    h2_stream *st = s ? stream_get(s, stream_id) : NULL;
    if (!st)
        return AV_ERR_NOTFOUND;
    st->tag = tag;
    return AV_OK;
}

void *av__h2_tag(const av_h2 *s, int32_t stream_id)
{
    if (s && stream_id > 0 && stream_id == s->closing_id)
        return s->closing_tag;
    h2_stream *st = s ? stream_get(s, stream_id) : NULL;
    return st ? st->tag : NULL;
}
