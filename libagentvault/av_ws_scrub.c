/* av_ws_scrub.c - the scrub-mode WebSocket relay (upstream to agent) and
 * the Sec-WebSocket-Extensions checks it needs.
 *
 * The upstream's frames are parsed one way, messages (permessage-deflate
 * inflated) go through the exchange's scrubber, and scrubbed frames are
 * written toward the agent. Cut from av_ws.c, which keeps the frame-mode
 * bridge: the two share the frame rules of RFC 6455, not code.
 */
#include "av_ws.h"

#include <string.h>

#include <wslay/wslay.h>
#include <zlib.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "av_mem.h"
#include "av_scrub.h"

/* ---- upstream-to-agent scrubbing relay ---------------------------------------- */

enum { WR_HDR, WR_DATA, WR_CTRL, WR_CLOSED, WR_FAILED };

#define WR_ZBUF ((size_t)16 << 10)
/* A frame up to this size is relayed as one frame; a longer one (or a
 * message that grew by its redactions) is cut into fragments of this size. */
#define WR_STAGE_MAX ((size_t)1 << 20)
#define WR_NEED_EMIT 1

struct av_ws_scrub {
    av_scrub_set *set; /* NULL: frames are parsed and relayed, not scrubbed */
    av_scrub *sc;      /* identity scrubber, reset for every message */
    size_t max_message;
    int deflate;       /* permessage-deflate negotiated with the upstream */
    z_stream zi;
    int zi_init;
    uint8_t *zbuf;     /* inflated, not yet scrubbed: [zoff, zlen) */
    size_t zoff, zlen;
    int zmore;         /* inflate filled zbuf: it may have more output */
    int st;            /* WR_* */
    uint8_t hbuf[10];  /* the input frame header being gathered */
    size_t hhave;
    uint8_t cin[125];  /* the input control payload being gathered */
    size_t chave;
    uint8_t fhdr0;     /* first header byte of the current input frame */
    uint64_t left;     /* payload bytes of the current input frame not taken */
    int in_msg;        /* inside a fragmented message */
    uint8_t msg_op;    /* its opcode */
    int msg_comp;      /* compressed (RSV1 on its first frame) */
    int msg_started;   /* a frame of it went to the agent already */
    int fin_step;      /* end of message: 1 tail inflated, 2 scrubber finished */
    size_t tail_off;   /* bytes of the deflate tail inflated */
    uint64_t msg_size; /* payload (inflated) bytes of the message so far */
    av_buf stage;      /* scrubbed payload of the next frame toward the agent */
    uint8_t ohdr[10];  /* header of the frame being written */
    size_t ohdr_len, ohdr_off;
    uint8_t ctrl[125]; /* control payload being written */
    size_t ctrl_len;
    size_t pay_off;    /* payload bytes of the frame written */
    int writing;       /* 0, 1: stage frame, 2: control frame */
    int after_write;   /* state once the frame is out */
    int report;        /* error to return once (AV_ERR_PARSE / _DENIED) */
    int close_code;    /* close code the upstream sent, or the one we sent */
    unsigned long ctrl_count;
    unsigned long long msgs, bytes;
};

/* zlib allocations through av_mem, wiped on free (the window holds
 * plaintext that may contain the secret). */
static voidpf wr_zalloc(voidpf opaque, uInt items, uInt size)
{
    (void)opaque;
    size_t n = (size_t)items * size;
    size_t *h = av__malloc(sizeof(size_t) * 2 + n);
    if (!h)
        return Z_NULL;
    h[0] = n;
    return h + 2;
}

static void wr_zfree(voidpf opaque, voidpf p)
{
    (void)opaque;
    if (!p)
        return;
    size_t *h = (size_t *)p - 2;
    av__wipe(h, sizeof(size_t) * 2 + h[0]);
    av__free(h);
}

int av__ws_scrub_new(av_ws_scrub **out, av_scrub_set *set, int deflate, size_t max_message)
{
    if (!out)
        return AV_ERR_INVALID;
    *out = NULL;
    av_ws_scrub *w = av__calloc(1, sizeof(*w));
    if (!w)
        return AV_ERR_NOMEM;
    w->max_message = max_message ? max_message : AV_WS_DEFAULT_MAX_MESSAGE;
    w->deflate = deflate;
    av__buf_init(&w->stage, WR_STAGE_MAX);
    int rc = AV_OK;
    if (set) {
        w->set = av__scrub_set_ref(set);
        rc = av__scrub_new_from_set(&w->sc, set, AV_SCRUB_IDENTITY);
    }
    if (!rc && deflate) {
        w->zbuf = av__malloc(WR_ZBUF);
        w->zi.zalloc = wr_zalloc;
        w->zi.zfree = wr_zfree;
        w->zi.opaque = Z_NULL;
        if (!w->zbuf || inflateInit2(&w->zi, -15) != Z_OK)
            rc = AV_ERR_NOMEM;
        else
            w->zi_init = 1;
    }
    if (rc) {
        av__ws_scrub_free(w);
        return rc;
    }
    *out = w;
    return AV_OK;
}

void av__ws_scrub_free(av_ws_scrub *w)
{
    if (!w)
        return;
    if (w->zi_init)
        inflateEnd(&w->zi);
    if (w->zbuf)
        av__wipe(w->zbuf, WR_ZBUF);
    av__free(w->zbuf);
    av__scrub_free(w->sc);
    av__scrub_set_unref(w->set);
    av__buf_free_wipe(&w->stage);
    av__wipe(w, sizeof(*w));
    av__free(w);
}

/* wr_start_frame prepares the header of a frame toward the agent
 * (unmasked, RSV bits clear) with |len| payload bytes. */
static void wr_start_frame(av_ws_scrub *w, int fin, uint8_t op, size_t len, int what, int after)
{
    uint8_t *h = w->ohdr;
    size_t n = 0;
    h[n++] = (uint8_t)((fin ? 0x80 : 0) | op);
    if (len < 126) {
        h[n++] = (uint8_t)len;
    } else if (len <= 0xffff) {
        h[n++] = 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = 127;
        for (int i = 7; i >= 0; i--)
            h[n++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    w->ohdr_len = n;
    w->ohdr_off = 0;
    w->pay_off = 0;
    w->writing = what;
    w->after_write = after;
}

/* wr_emit sends the staged payload as the next frame of the message. An
 * empty non-final frame is not sent. */
static void wr_emit(av_ws_scrub *w, int fin, int after)
{
    size_t len = av__buf_len(&w->stage);
    if (!fin && len == 0) {
        w->st = after;
        return;
    }
    wr_start_frame(w, fin, w->msg_started ? 0 : w->msg_op, len, 1, after);
    w->msg_started = 1;
    w->bytes += len;
    if (fin)
        w->msgs++;
}

/* wr_write writes the current frame to |out|. Returns 1 when it is out, 0
 * when |out| is full, or an AV_ERR_* code. */
static int wr_write(av_ws_scrub *w, av_buf *out, int *moved)
{
    while (w->ohdr_off < w->ohdr_len) {
        size_t n = w->ohdr_len - w->ohdr_off, room = av__buf_room(out);
        if (room == 0)
            return 0;
        if (n > room)
            n = room;
        int r = av__buf_append(out, w->ohdr + w->ohdr_off, n);
        if (r)
            return r;
        w->ohdr_off += n;
        *moved = 1;
    }
    const uint8_t *p = w->writing == 2 ? w->ctrl : av__buf_head(&w->stage);
    size_t len = w->writing == 2 ? w->ctrl_len : av__buf_len(&w->stage);
    while (w->pay_off < len) {
        size_t n = len - w->pay_off, room = av__buf_room(out);
        if (room == 0)
            return 0;
        if (n > room)
            n = room;
        int r = av__buf_append(out, p + w->pay_off, n);
        if (r)
            return r;
        w->pay_off += n;
        *moved = 1;
    }
    if (w->writing == 1)
        av__buf_reset(&w->stage);
    else
        av__wipe(w->ctrl, sizeof(w->ctrl));
    w->writing = 0;
    w->st = w->after_write;
    return 1;
}

/* wr_fail queues a close toward the agent (the upstream broke the protocol,
 * or a message went over the cap) and stops reading the upstream. */
static void wr_fail(av_ws_scrub *w, uint16_t code, int report)
{
    av__buf_reset(&w->stage);
    w->ctrl[0] = (uint8_t)(code >> 8);
    w->ctrl[1] = (uint8_t)code;
    w->ctrl_len = 2;
    w->close_code = code;
    wr_start_frame(w, 1, WSLAY_CONNECTION_CLOSE, 2, 2, WR_FAILED);
    if (!w->report)
        w->report = report;
}

/* wr_plain scrubs plaintext payload bytes into the stage. */
static int wr_plain(av_ws_scrub *w, const uint8_t *p, size_t n, size_t *took)
{
    *took = 0;
    if (!w->sc) {
        size_t room = av__buf_room(&w->stage);
        size_t k = n < room ? n : room;
        if (k && av__buf_append(&w->stage, p, k) != 0)
            return AV_ERR_NOMEM;
        *took = k;
        return k < n ? WR_NEED_EMIT : AV_OK;
    }
    int r = av__scrub_feed(w->sc, p, n, took, &w->stage);
    if (r == AV_ERR_LIMIT || (r == AV_ERR_INVALID && av__buf_len(&w->stage)))
        return WR_NEED_EMIT;
    return r;
}

/* wr_inflate takes compressed payload bytes (|n| may be 0 to drain what
 * inflate still holds), inflates and scrubs them into the stage. */
static int wr_inflate(av_ws_scrub *w, const uint8_t *p, size_t n, size_t *took)
{
    size_t done = 0;
    *took = 0;
    for (;;) {
        if (w->zoff < w->zlen) {
            size_t t = 0;
            int r = wr_plain(w, w->zbuf + w->zoff, w->zlen - w->zoff, &t);
            w->zoff += t;
            if (r) {
                *took = done;
                return r;
            }
        }
        if (done == n && !w->zmore)
            break;
        w->zi.next_in = (Bytef *)(uintptr_t)(p + done);
        w->zi.avail_in = (uInt)(n - done > UINT_MAX ? UINT_MAX : n - done);
        uInt avail0 = w->zi.avail_in;
        w->zi.next_out = w->zbuf;
        w->zi.avail_out = (uInt)WR_ZBUF;
        int r = inflate(&w->zi, Z_SYNC_FLUSH);
        done += avail0 - w->zi.avail_in;
        w->zoff = 0;
        w->zlen = WR_ZBUF - w->zi.avail_out;
        w->zmore = w->zi.avail_out == 0;
        if (r == Z_STREAM_END) {
            /* a final block: the next message starts a new stream */
            if (inflateReset(&w->zi) != Z_OK)
                return AV_ERR_PARSE;
            r = Z_OK;
        }
        if (r == Z_MEM_ERROR)
            return AV_ERR_NOMEM;
        if (r != Z_OK && !(r == Z_BUF_ERROR && w->zlen == 0))
            return AV_ERR_PARSE;
        w->msg_size += w->zlen;
        if (w->msg_size > w->max_message) {
            *took = done;
            return AV_ERR_LIMIT;
        }
        if (w->zlen == 0) {
            w->zmore = 0;
            if (done == n)
                break;
            if (r == Z_BUF_ERROR)
                return AV_ERR_PARSE;
        }
    }
    *took = done;
    return AV_OK;
}

/* wr_scrub_control scrubs a control payload into w->ctrl (at most |cap|
 * bytes; a close reason is cut at a UTF-8 character boundary). */
static int wr_scrub_control(av_ws_scrub *w, const uint8_t *p, size_t n, size_t cap, int utf8)
{
    if (!w->set || n == 0) {
        memcpy(w->ctrl, p, n);
        w->ctrl_len = n;
        return AV_OK;
    }
    char *v = NULL;
    size_t vl = 0;
    unsigned long cnt = 0;
    int r = av__scrub_header_value_set(w->set, (const char *)p, n, &v, &vl, &cnt);
    if (r)
        return r;
    size_t vlen = vl;
    if (vl > cap) {
        vl = cap;
        while (utf8 && vl > 0 && ((uint8_t)v[vl] & 0xc0) == 0x80)
            vl--;
    }
    memcpy(w->ctrl, v, vl);
    w->ctrl_len = vl;
    w->ctrl_count += cnt;
    av__wipe(v, vlen);
    av__free(v);
    return AV_OK;
}

/* wr_gather moves bytes of |in| into |dst| until it holds |want|.
 * Returns 1 when it does. */
static int wr_gather(uint8_t *dst, size_t *have, size_t want, av_buf *in)
{
    if (*have >= want)
        return 1;
    size_t n = want - *have;
    if (n > av__buf_len(in))
        n = av__buf_len(in);
    if (n) {
        memcpy(dst + *have, av__buf_head(in), n);
        av__buf_consume(in, n);
        *have += n;
    }
    return *have == want;
}

/* wr_header gathers and checks the next frame header (whatever the size of
 * |in|). Returns 1 (taken), 0 (incomplete) or a close code. */
static int wr_header(av_ws_scrub *w, av_buf *in)
{
    size_t n0 = w->hhave;
    if (!wr_gather(w->hbuf, &w->hhave, 2, in))
        return 0;
    const uint8_t *p = w->hbuf;
    unsigned fin = p[0] >> 7, rsv = (p[0] >> 4) & 7, op = p[0] & 15, len7 = p[1] & 127;
    if (p[1] & 0x80) /* server frames are never masked */
        return WSLAY_CODE_PROTOCOL_ERROR;
    if (op > WSLAY_BINARY_FRAME && (op < WSLAY_CONNECTION_CLOSE || op > WSLAY_PONG))
        return WSLAY_CODE_PROTOCOL_ERROR;
    if (op & 8) {
        if (!fin || len7 > 125 || rsv || (op == WSLAY_CONNECTION_CLOSE && len7 == 1))
            return WSLAY_CODE_PROTOCOL_ERROR;
    } else if (op == 0) {
        if (!w->in_msg || rsv)
            return WSLAY_CODE_PROTOCOL_ERROR;
    } else if (w->in_msg || (rsv & 3) || ((rsv & 4) && !w->deflate)) {
        return WSLAY_CODE_PROTOCOL_ERROR;
    }
    size_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
    if (!wr_gather(w->hbuf, &w->hhave, need, in))
        return w->hhave > n0;
    w->hhave = 0;
    uint64_t len = len7;
    if (len7 == 126) {
        len = (uint64_t)p[2] << 8 | p[3];
    } else if (len7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        if (len >> 63)
            return WSLAY_CODE_PROTOCOL_ERROR;
    }
    w->fhdr0 = p[0];
    w->left = len;
    if (op & 8) {
        w->st = WR_CTRL;
        w->chave = 0;
        return 1;
    }
    if (op != 0) {
        w->in_msg = 1;
        w->msg_op = (uint8_t)op;
        w->msg_comp = (rsv & 4) != 0;
        w->msg_started = 0;
        w->msg_size = 0;
        w->fin_step = 0;
        w->tail_off = 0;
    }
    if (!w->msg_comp) {
        w->msg_size += len;
        if (w->msg_size > w->max_message)
            return WSLAY_CODE_MESSAGE_TOO_BIG;
    }
    w->st = WR_DATA;
    return 1;
}

/* wr_control gathers a control frame's payload and relays it, scrubbed. */
static int wr_control(av_ws_scrub *w, av_buf *in)
{
    size_t n0 = w->chave;
    if (!wr_gather(w->cin, &w->chave, (size_t)w->left, in))
        return w->chave > n0;
    const uint8_t *p = w->cin;
    size_t n = (size_t)w->left;
    uint8_t op = w->fhdr0 & 15;
    int r;
    if (op == WSLAY_CONNECTION_CLOSE && n >= 2) {
        w->close_code = p[0] << 8 | p[1];
        uint8_t save0 = p[0], save1 = p[1];
        r = wr_scrub_control(w, p + 2, n - 2, 123, 1);
        if (!r) {
            memmove(w->ctrl + 2, w->ctrl, w->ctrl_len);
            w->ctrl[0] = save0;
            w->ctrl[1] = save1;
            w->ctrl_len += 2;
            /* The code's second byte can be printable and begin a secret
             * that the reason completes ("s" + "k-..."): the reason alone
             * held no match. Checked on the payload as sent; the reason
             * goes then, the code stays. */
            if (w->set && av__scrub_set_matches(w->set, w->ctrl, w->ctrl_len)) {
                av__wipe(w->ctrl + 2, w->ctrl_len - 2);
                w->ctrl_len = 2;
                w->ctrl_count++;
            }
        }
    } else {
        if (op == WSLAY_CONNECTION_CLOSE)
            w->close_code = 1005;
        r = wr_scrub_control(w, p, n, 125, 0);
    }
    av__wipe(w->cin, n);
    if (r)
        return r;
    wr_start_frame(w, 1, op, w->ctrl_len, 2, op == WSLAY_CONNECTION_CLOSE ? WR_CLOSED : WR_HDR);
    return 1;
}

/* wr_data moves payload of the current data frame from |in| into the
 * stage, and frames the stage at the end of the input frame. Returns 1
 * (progress), 0 (needs input) or an AV_ERR_* / close code (> 1000). */
static int wr_data(av_ws_scrub *w, av_buf *in)
{
    if (w->left > 0) {
        size_t n = av__buf_len(in);
        if (n > w->left)
            n = (size_t)w->left;
        if (n == 0)
            return 0;
        size_t took = 0;
        int r = w->msg_comp ? wr_inflate(w, av__buf_head(in), n, &took)
                            : wr_plain(w, av__buf_head(in), n, &took);
        av__buf_consume(in, took);
        w->left -= took;
        if (r == WR_NEED_EMIT) {
            wr_emit(w, 0, WR_DATA);
            return 1;
        }
        if (r == AV_ERR_LIMIT)
            return WSLAY_CODE_MESSAGE_TOO_BIG;
        if (r == AV_ERR_PARSE)
            return WSLAY_CODE_PROTOCOL_ERROR;
        if (r)
            return r;
        return took ? 1 : 0;
    }
    if (!(w->fhdr0 & 0x80)) {
        wr_emit(w, 0, WR_HDR); /* the end of a fragment */
        return 1;
    }
    /* the end of the message */
    if (w->msg_comp && w->fin_step == 0) {
        /* RFC 7692 7.2.2: the sender removed this empty stored block */
        static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
        size_t took = 0;
        int r = wr_inflate(w, tail + w->tail_off, sizeof(tail) - w->tail_off, &took);
        w->tail_off += took;
        if (r == WR_NEED_EMIT) {
            wr_emit(w, 0, WR_DATA);
            return 1;
        }
        if (r == AV_ERR_LIMIT)
            return WSLAY_CODE_MESSAGE_TOO_BIG;
        if (r)
            return r == AV_ERR_PARSE ? WSLAY_CODE_PROTOCOL_ERROR : r;
        w->fin_step = 1;
    }
    if (w->sc && w->fin_step < 2) {
        int r = av__scrub_finish(w->sc, &w->stage);
        if (r == AV_ERR_LIMIT || r == AV_ERR_INVALID) {
            wr_emit(w, 0, WR_DATA);
            return 1;
        }
        if (r)
            return r;
        r = av__scrub_reset(w->sc);
        if (r)
            return r;
    }
    w->fin_step = 2;
    w->in_msg = 0;
    wr_emit(w, 1, WR_HDR);
    return 1;
}

int av__ws_scrub_pump(av_ws_scrub *w, av_buf *in, av_buf *out)
{
    if (!w || !in || !out)
        return AV_ERR_INVALID;
    int moved = 0;
    for (;;) {
        if (w->writing) {
            int r = wr_write(w, out, &moved);
            if (r < 0)
                return r;
            if (r == 0)
                break;
            continue;
        }
        int r = 0;
        switch (w->st) {
        case WR_HDR: r = wr_header(w, in); break;
        case WR_CTRL: r = wr_control(w, in); break;
        case WR_DATA: r = wr_data(w, in); break;
        default:
            /* nothing may follow a close: drop it */
            if (av__buf_len(in)) {
                av__buf_consume(in, av__buf_len(in));
                moved = 1;
            }
            break;
        }
        if (r == 0 || w->st >= WR_CLOSED)
            break;
        if (r == 1) {
            moved = 1;
            continue;
        }
        if (r < 0 && r != AV_ERR_PARSE)
            return r;
        if (r < 0)
            r = WSLAY_CODE_PROTOCOL_ERROR;
        wr_fail(w, (uint16_t)r, r == WSLAY_CODE_MESSAGE_TOO_BIG ? AV_ERR_DENIED : AV_ERR_PARSE);
        moved = 1;
    }
    if (w->report && !w->writing) {
        int r = w->report;
        w->report = 0;
        return r;
    }
    return moved;
}

int av__ws_scrub_idle(const av_ws_scrub *w)
{
    return !w || !w->writing;
}

int av__ws_scrub_closed(const av_ws_scrub *w)
{
    return w && !w->writing && w->st >= WR_CLOSED;
}

unsigned long av__ws_scrub_count(const av_ws_scrub *w)
{
    return w ? (w->sc ? av__scrub_count(w->sc) : 0) + w->ctrl_count : 0;
}

void av__ws_scrub_stats(const av_ws_scrub *w, unsigned long long *msgs, unsigned long long *bytes,
                        int *close_code)
{
    *msgs = w ? w->msgs : 0;
    *bytes = w ? w->bytes : 0;
    *close_code = w ? w->close_code : 0;
}

/* ---- Sec-WebSocket-Extensions ------------------------------------------------- */

/* ws_ci_eq compares |n| bytes case-insensitively with NUL-terminated |lit|. */
static int ws_ci_eq(const char *s, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    if (n != l)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char a = s[i], b = lit[i];
        if (a >= 'A' && a <= 'Z')
            a = (char)(a - 'A' + 'a');
        if (a != b)
            return 0;
    }
    return 1;
}

/* ws_trim strips blanks around [*s, *s + *n). */
static void ws_trim(const char **s, size_t *n)
{
    while (*n && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

int av__ws_offers_deflate(const char *v, size_t len)
{
    /* extensions are comma-separated; each is a name and ;-parameters */
    size_t i = 0;
    while (i <= len) {
        size_t j = i;
        while (j < len && v[j] != ',')
            j++;
        const char *e = v + i;
        size_t el = j - i, k = 0;
        while (k < el && e[k] != ';')
            k++;
        const char *name = e;
        size_t nl = k;
        ws_trim(&name, &nl);
        if (ws_ci_eq(name, nl, "permessage-deflate"))
            return 1;
        i = j + 1;
    }
    return 0;
}

int av__ws_deflate_accepted(const char *v, size_t len)
{
    if (memchr(v, ',', len))
        return AV_ERR_INVALID; /* one extension, and only this one */
    size_t k = 0;
    while (k < len && v[k] != ';')
        k++;
    const char *name = v;
    size_t nl = k;
    ws_trim(&name, &nl);
    if (!ws_ci_eq(name, nl, "permessage-deflate"))
        return AV_ERR_INVALID;
    while (k < len) { /* v[k] is ';' */
        size_t i = k + 1;
        for (k = i; k < len && v[k] != ';'; k++)
            ;
        const char *pn = v + i, *pv = NULL;
        size_t pnl = k - i, pvl = 0;
        const char *eq = memchr(pn, '=', pnl);
        if (eq) {
            pv = eq + 1;
            pvl = (size_t)(pn + pnl - pv);
            pnl = (size_t)(eq - pn);
            ws_trim(&pv, &pvl);
            if (pvl >= 2 && pv[0] == '"' && pv[pvl - 1] == '"') {
                pv++;
                pvl -= 2;
            }
        }
        ws_trim(&pn, &pnl);
        if (ws_ci_eq(pn, pnl, "server_no_context_takeover") ||
            ws_ci_eq(pn, pnl, "client_no_context_takeover")) {
            if (pv)
                return AV_ERR_INVALID;
        } else if (ws_ci_eq(pn, pnl, "server_max_window_bits") ||
                   ws_ci_eq(pn, pnl, "client_max_window_bits")) {
            if (!pv || pvl < 1 || pvl > 2)
                return AV_ERR_INVALID;
            unsigned bits = 0;
            for (size_t d = 0; d < pvl; d++) {
                if (pv[d] < '0' || pv[d] > '9')
                    return AV_ERR_INVALID;
                bits = bits * 10 + (unsigned)(pv[d] - '0');
            }
            if (bits < 8 || bits > 15)
                return AV_ERR_INVALID;
        } else {
            return AV_ERR_INVALID;
        }
    }
    return AV_OK;
}
