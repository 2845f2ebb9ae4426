/* test_ws.c - WebSocket frame-mode bridge, scrub-mode relay, accept key,
 * substitution.
 *
 * Frames are built by hand (masked as a client would, unmasked as a server
 * would), pushed through av__ws_bridge_pump with bounded buffers, and what
 * comes out is decoded and compared byte for byte.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_enc.h"
#include "av_mem.h"
#include "av_scrub.h"
#include "av_secret.h"
#include "av_ws.h"

#define S(lit) (lit), (sizeof(lit) - 1)

enum { OP_CONT = 0, OP_TEXT = 1, OP_BIN = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };

/* ---- frame encoder / decoder (independent of the library) ---------------- */

static unsigned mask_counter = 0x9e3779b9u;

/* put_frame_ex appends a frame to |b|; |len7| overrides the 7-bit length
 * field when >= 0 (for non-minimal encodings), |masked| masks the payload
 * with a varying key. */
static void put_frame_ex(av_buf *b, int fin, int rsv, int op, int masked, const void *payload,
                         size_t len, int len_form)
{
    uint8_t h[14];
    size_t n = 0;
    h[n++] = (uint8_t)((fin ? 0x80 : 0) | (rsv << 4) | op);
    uint8_t mb = masked ? 0x80 : 0;
    if (len_form == 0 && len < 126) {
        h[n++] = (uint8_t)(mb | len);
    } else if (len_form == 126 || (len_form == 0 && len <= 0xffff)) {
        h[n++] = (uint8_t)(mb | 126);
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = (uint8_t)(mb | 127);
        for (int i = 7; i >= 0; i--)
            h[n++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint8_t key[4] = {0};
    if (masked) {
        mask_counter = mask_counter * 1103515245u + 12345u;
        for (int i = 0; i < 4; i++)
            key[i] = (uint8_t)(mask_counter >> (8 * i));
        memcpy(h + n, key, 4);
        n += 4;
    }
    assert_int_equal(av__buf_append(b, h, n), AV_OK);
    uint8_t *m = malloc(len ? len : 1);
    assert_non_null(m);
    for (size_t i = 0; i < len; i++)
        m[i] = ((const uint8_t *)payload)[i] ^ key[i & 3];
    assert_int_equal(av__buf_append(b, m, len), AV_OK);
    free(m);
}

/* put_frame appends a frame with the minimal length encoding. */
static void put_frame(av_buf *b, int fin, int op, int masked, const void *payload, size_t len)
{
    put_frame_ex(b, fin, 0, op, masked, payload, len, 0);
}

/* put_close appends a close frame with |code| (0: no payload) and reason. */
static void put_close(av_buf *b, int masked, int code, const char *reason)
{
    uint8_t p[128] = {0};
    size_t n = 0;
    if (code) {
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        n = 2;
        if (reason) {
            memcpy(p + 2, reason, strlen(reason));
            n += strlen(reason);
        }
    }
    put_frame(b, 1, OP_CLOSE, masked, p, n);
}

typedef struct frame {
    int fin, rsv, opcode, masked;
    uint8_t key[4];
    uint8_t *payload; /* unmasked copy */
    size_t len;
    uint8_t *raw; /* payload as it was on the wire */
} frame;

/* parse_frame decodes one frame at |p|. Returns the bytes it took, or 0
 * when the frame is incomplete. */
static size_t parse_frame(const uint8_t *p, size_t n, frame *f)
{
    if (n < 2)
        return 0;
    memset(f, 0, sizeof(*f));
    f->fin = p[0] >> 7;
    f->rsv = (p[0] >> 4) & 7;
    f->opcode = p[0] & 15;
    f->masked = p[1] >> 7;
    uint64_t len = p[1] & 127;
    size_t off = 2;
    if (len == 126) {
        if (n < 4)
            return 0;
        len = (uint64_t)p[2] << 8 | p[3];
        off = 4;
    } else if (len == 127) {
        if (n < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        off = 10;
    }
    if (f->masked) {
        if (n < off + 4)
            return 0;
        memcpy(f->key, p + off, 4);
        off += 4;
    }
    if (n - off < len)
        return 0;
    f->len = (size_t)len;
    f->payload = malloc(f->len + 1);
    f->raw = malloc(f->len + 1);
    assert_non_null(f->payload);
    assert_non_null(f->raw);
    for (size_t i = 0; i < f->len; i++) {
        f->raw[i] = p[off + i];
        f->payload[i] = p[off + i] ^ (f->masked ? f->key[i & 3] : 0);
    }
    f->payload[f->len] = 0;
    return off + f->len;
}

static void frame_free(frame *f)
{
    free(f->payload);
    free(f->raw);
    f->payload = f->raw = NULL;
}

/* take_frames decodes and consumes all complete frames in |b| (at most
 * |max|); returns how many. No partial frame may be left over. */
static int take_frames(av_buf *b, frame *fs, int max)
{
    int k = 0;
    for (;;) {
        size_t used = parse_frame(av__buf_head(b), av__buf_len(b), &fs[k]);
        if (used == 0)
            break;
        av__buf_consume(b, used);
        k++;
        assert_true(k <= max);
        if (k == max)
            break;
    }
    assert_int_equal(av__buf_len(b), 0);
    return k;
}

/* expect_one takes exactly one frame from |b| and checks it. */
static void expect_one(av_buf *b, int opcode, int masked, const void *payload, size_t len)
{
    frame f[4];
    int n = take_frames(b, f, 4);
    assert_int_equal(n, 1);
    assert_int_equal(f[0].fin, 1);
    assert_int_equal(f[0].rsv, 0);
    assert_int_equal(f[0].opcode, opcode);
    assert_int_equal(f[0].masked, masked);
    assert_int_equal(f[0].len, len);
    if (len)
        assert_memory_equal(f[0].payload, payload, len);
    frame_free(&f[0]);
}

/* expect_close takes exactly one close frame from |b| with |code|. */
static void expect_close(av_buf *b, int masked, int code, const char *reason)
{
    uint8_t p[128] = {0};
    size_t n = 0;
    if (code) {
        p[0] = (uint8_t)(code >> 8);
        p[1] = (uint8_t)code;
        n = 2;
        if (reason) {
            memcpy(p + 2, reason, strlen(reason));
            n += strlen(reason);
        }
    }
    expect_one(b, OP_CLOSE, masked, p, n);
}

/* ---- harness --------------------------------------------------------------- */

typedef struct harness {
    av_ws_bridge *b;
    av_buf ain, aout, uin, uout;
} harness;

static void h_init(harness *t, size_t max_message, av_ws_text_filter f, void *ud, size_t in_max,
                   size_t out_max)
{
    assert_int_equal(av__ws_bridge_new(&t->b, max_message, f, ud), AV_OK);
    av__buf_init(&t->ain, in_max);
    av__buf_init(&t->uin, in_max);
    av__buf_init(&t->aout, out_max);
    av__buf_init(&t->uout, out_max);
}

static void h_free(harness *t)
{
    av__ws_bridge_free(t->b);
    av__buf_free(&t->ain);
    av__buf_free(&t->uin);
    av__buf_free(&t->aout);
    av__buf_free(&t->uout);
}

/* h_pump pumps once; output buffers never exceed their bound. */
static int h_pump(harness *t)
{
    int rc = av__ws_bridge_pump(t->b, &t->ain, &t->aout, &t->uin, &t->uout);
    assert_true(av__buf_len(&t->aout) <= t->aout.max);
    assert_true(av__buf_len(&t->uout) <= t->uout.max);
    return rc;
}

/* close_both finishes a healthy bridge: agent closes, upstream answers. */
static void close_both(harness *t)
{
    put_close(&t->ain, 1, 1000, NULL);
    assert_int_equal(h_pump(t), 1);
    expect_close(&t->uout, 1, 1000, NULL);
    assert_int_equal(av__buf_len(&t->aout), 0);
    put_close(&t->uin, 0, 1000, NULL);
    assert_int_equal(h_pump(t), 1);
    expect_close(&t->aout, 0, 1000, NULL);
    assert_true(av__ws_bridge_done(t->b));
}

/* ---- data messages ----------------------------------------------------------- */

static void text_and_binary_both_ways(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 18, 1 << 18);
    assert_int_equal(h_pump(&t), 0);

    put_frame(&t.ain, 1, OP_TEXT, 1, S("hello"));
    assert_int_equal(h_pump(&t), 1);
    expect_one(&t.uout, OP_TEXT, 1, S("hello"));
    assert_int_equal(av__buf_len(&t.aout), 0);
    assert_int_equal(av__buf_len(&t.ain), 0);

    uint8_t bin[300];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (uint8_t)(i * 7);
    put_frame(&t.ain, 1, OP_BIN, 1, bin, sizeof(bin));
    assert_int_equal(h_pump(&t), 1);
    expect_one(&t.uout, OP_BIN, 1, bin, sizeof(bin));

    put_frame(&t.uin, 1, OP_TEXT, 0, S("world"));
    put_frame(&t.uin, 1, OP_BIN, 0, bin, sizeof(bin));
    put_frame(&t.uin, 1, OP_TEXT, 0, "", 0);
    assert_int_equal(h_pump(&t), 1);
    frame f[4];
    assert_int_equal(take_frames(&t.aout, f, 4), 3);
    assert_int_equal(f[0].opcode, OP_TEXT);
    assert_int_equal(f[0].masked, 0);
    assert_int_equal(f[0].len, 5);
    assert_memory_equal(f[0].payload, "world", 5);
    assert_int_equal(f[1].opcode, OP_BIN);
    assert_int_equal(f[1].len, sizeof(bin));
    assert_memory_equal(f[1].payload, bin, sizeof(bin));
    assert_int_equal(f[2].opcode, OP_TEXT);
    assert_int_equal(f[2].len, 0);
    for (int i = 0; i < 3; i++)
        frame_free(&f[i]);
    assert_int_equal(av__buf_len(&t.uout), 0);

    /* 64-bit length form both ways */
    size_t big = 70000;
    uint8_t *p = malloc(big);
    assert_non_null(p);
    for (size_t i = 0; i < big; i++)
        p[i] = (uint8_t)(i ^ (i >> 8));
    put_frame(&t.ain, 1, OP_BIN, 1, p, big);
    put_frame(&t.uin, 1, OP_BIN, 0, p, big);
    assert_int_equal(h_pump(&t), 1);
    expect_one(&t.uout, OP_BIN, 1, p, big);
    expect_one(&t.aout, OP_BIN, 0, p, big);
    free(p);

    av_ws_stats st;
    av__ws_bridge_stats(t.b, &st);
    assert_int_equal(st.msgs_to_upstream, 3);
    assert_int_equal(st.msgs_to_agent, 4);
    assert_int_equal(st.bytes_to_upstream, 5 + 300 + 70000);
    assert_int_equal(st.bytes_to_agent, 5 + 300 + 0 + 70000);
    assert_int_equal(st.close_code_agent, 0);
    assert_false(av__ws_bridge_done(t.b));
    close_both(&t);
    h_free(&t);
}

static void fragmented_messages_reassembled(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 16, 1 << 16);

    /* agent: text in three fragments with a ping in the middle */
    put_frame(&t.ain, 0, OP_TEXT, 1, S("Hel"));
    put_frame(&t.ain, 0, OP_CONT, 1, S("lo, "));
    put_frame(&t.ain, 1, OP_PING, 1, S("mid"));
    put_frame(&t.ain, 1, OP_CONT, 1, S("world"));
    assert_int_equal(h_pump(&t), 1);
    expect_one(&t.uout, OP_TEXT, 1, S("Hello, world"));
    expect_one(&t.aout, OP_PONG, 0, S("mid"));

    /* upstream: binary in fragments, one of them empty; UTF-8 split across
     * text fragments is valid */
    put_frame(&t.uin, 0, OP_BIN, 0, S("ab"));
    put_frame(&t.uin, 0, OP_CONT, 0, "", 0);
    put_frame(&t.uin, 1, OP_CONT, 0, S("cd"));
    put_frame(&t.uin, 0, OP_TEXT, 0, S("\xe2\x82"));
    put_frame(&t.uin, 1, OP_CONT, 0, S("\xac"));
    assert_int_equal(h_pump(&t), 1);
    frame f[4];
    assert_int_equal(take_frames(&t.aout, f, 4), 2);
    assert_int_equal(f[0].opcode, OP_BIN);
    assert_int_equal(f[0].fin, 1);
    assert_int_equal(f[0].len, 4);
    assert_memory_equal(f[0].payload, "abcd", 4);
    assert_int_equal(f[1].opcode, OP_TEXT);
    assert_int_equal(f[1].len, 3);
    assert_memory_equal(f[1].payload, "\xe2\x82\xac", 3);
    frame_free(&f[0]);
    frame_free(&f[1]);
    assert_int_equal(av__buf_len(&t.uout), 0);
    close_both(&t);
    h_free(&t);
}

/* The filter used in the tests: replaces the placeholder, refuses "deny". */
static int filter_calls;
static int test_filter(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len)
{
    (void)ud;
    filter_calls++;
    if (len >= 4 && memmem(msg, len, "deny", 4))
        return AV_ERR_DENIED;
    uint8_t *res = NULL;
    size_t rl = 0;
    int r = av__subst_replace(msg, len, (const uint8_t *)"__OPENAI_KEY__", 14,
                              (const uint8_t *)"sk-real", 7, 1 << 20, &res, &rl);
    if (r < 0)
        return r;
    if (r == 1) {
        *out = res;
        *out_len = rl;
    } else {
        *out = (uint8_t *)msg;
        *out_len = len;
    }
    return 0;
}

static void filter_replaces_in_client_text_only(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, test_filter, NULL, 1 << 16, 1 << 16);
    filter_calls = 0;

    put_frame(&t.ain, 0, OP_TEXT, 1, S("{\"auth\":\"Bearer __OPENAI"));
    put_frame(&t.ain, 1, OP_CONT, 1, S("_KEY__\",\"k2\":\"__OPENAI_KEY__\"}"));
    assert_int_equal(h_pump(&t), 1);
    frame f[4];
    assert_int_equal(take_frames(&t.uout, f, 4), 1);
    const char want[] = "{\"auth\":\"Bearer sk-real\",\"k2\":\"sk-real\"}";
    assert_int_equal(f[0].len, sizeof(want) - 1);
    assert_memory_equal(f[0].payload, want, sizeof(want) - 1);
    assert_int_equal(f[0].masked, 1);
    /* the secret is not readable on the wire in the clear */
    assert_null(memmem(f[0].raw, f[0].len, "sk-real", 7));
    frame_free(&f[0]);
    assert_int_equal(filter_calls, 1);

    /* no placeholder: forwarded unchanged */
    put_frame(&t.ain, 1, OP_TEXT, 1, S("plain"));
    /* binary from the agent is not filtered */
    put_frame(&t.ain, 1, OP_BIN, 1, S("__OPENAI_KEY__"));
    assert_int_equal(h_pump(&t), 1);
    assert_int_equal(take_frames(&t.uout, f, 4), 2);
    assert_memory_equal(f[0].payload, "plain", 5);
    assert_int_equal(f[1].opcode, OP_BIN);
    assert_int_equal(f[1].len, 14);
    assert_memory_equal(f[1].payload, "__OPENAI_KEY__", 14);
    frame_free(&f[0]);
    frame_free(&f[1]);
    assert_int_equal(filter_calls, 2);

    /* upstream text is not filtered */
    put_frame(&t.uin, 1, OP_TEXT, 0, S("__OPENAI_KEY__"));
    assert_int_equal(h_pump(&t), 1);
    expect_one(&t.aout, OP_TEXT, 0, S("__OPENAI_KEY__"));
    assert_int_equal(filter_calls, 2);

    av_ws_stats st;
    av__ws_bridge_stats(t.b, &st);
    assert_int_equal(st.bytes_to_upstream, sizeof(want) - 1 + 5 + 14);
    close_both(&t);
    h_free(&t);
}

static void masking_per_direction(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 16, 1 << 16);
    for (int i = 0; i < 4; i++)
        put_frame(&t.ain, 1, OP_TEXT, 1, S("same payload"));
    put_frame(&t.ain, 1, OP_PING, 1, S("p"));
    for (int i = 0; i < 2; i++)
        put_frame(&t.uin, 1, OP_TEXT, 0, S("same payload"));
    put_frame(&t.uin, 1, OP_PING, 0, S("q"));
    assert_int_equal(h_pump(&t), 1);

    frame f[8];
    int n = take_frames(&t.uout, f, 8);
    assert_int_equal(n, 5); /* 4 texts + the pong for "q" */
    for (int i = 0; i < n; i++) {
        assert_int_equal(f[i].masked, 1);
        for (int j = 0; j < i; j++)
            assert_memory_not_equal(f[i].key, f[j].key, 4);
    }
    int pongs = 0;
    for (int i = 0; i < n; i++) {
        if (f[i].opcode == OP_PONG) {
            pongs++;
            assert_memory_equal(f[i].payload, "q", 1);
        } else {
            assert_memory_equal(f[i].payload, "same payload", 12);
        }
        frame_free(&f[i]);
    }
    assert_int_equal(pongs, 1);

    n = take_frames(&t.aout, f, 8);
    assert_int_equal(n, 3);
    for (int i = 0; i < n; i++) {
        assert_int_equal(f[i].masked, 0);
        frame_free(&f[i]);
    }
    close_both(&t);
    h_free(&t);
}

static void pings_answered_per_hop(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 16, 1 << 16);
    put_frame(&t.ain, 1, OP_PING, 1, S("agent-ping"));
    assert_int_equal(h_pump(&t), 1);
    expect_one(&t.aout, OP_PONG, 0, S("agent-ping"));
    assert_int_equal(av__buf_len(&t.uout), 0);

    put_frame(&t.uin, 1, OP_PING, 0, S("up-ping"));
    assert_int_equal(h_pump(&t), 1);
    expect_one(&t.uout, OP_PONG, 1, S("up-ping"));
    assert_int_equal(av__buf_len(&t.aout), 0);

    /* unsolicited pongs are absorbed */
    put_frame(&t.ain, 1, OP_PONG, 1, S("x"));
    put_frame(&t.uin, 1, OP_PONG, 0, S("y"));
    assert_int_equal(h_pump(&t), 1);
    assert_int_equal(av__buf_len(&t.aout), 0);
    assert_int_equal(av__buf_len(&t.uout), 0);
    close_both(&t);
    h_free(&t);
}

/* ---- closing handshake ---------------------------------------------------------- */

static void close_from_agent(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 16, 1 << 16);
    put_close(&t.ain, 1, 1000, "bye");
    assert_int_equal(h_pump(&t), 1);
    expect_close(&t.uout, 1, 1000, "bye");
    /* the agent's reply waits for the upstream's */
    assert_int_equal(av__buf_len(&t.aout), 0);
    assert_false(av__ws_bridge_done(t.b));
    assert_int_equal(h_pump(&t), 0);

    /* a data frame the upstream sent before seeing our close is dropped */
    put_frame(&t.uin, 1, OP_TEXT, 0, S("late"));
    put_close(&t.uin, 0, 1000, "bye");
    assert_int_equal(h_pump(&t), 1);
    expect_close(&t.aout, 0, 1000, "bye");
    assert_int_equal(av__buf_len(&t.uout), 0);
    assert_true(av__ws_bridge_done(t.b));

    av_ws_stats st;
    av__ws_bridge_stats(t.b, &st);
    assert_int_equal(st.close_code_agent, 1000);
    assert_int_equal(st.close_code_upstream, 1000);
    assert_int_equal(st.close_code_to_agent, 1000);
    assert_int_equal(st.close_code_to_upstream, 1000);
    assert_int_equal(st.msgs_to_agent, 0);
    h_free(&t);
}

static void close_from_upstream_after_data(void **state)
{
    (void)state;
    harness t;
    /* agent output too small for the data: the close must wait behind it */
    h_init(&t, 0, NULL, NULL, 1 << 16, 64);
    uint8_t data[1000];
    memset(data, 'd', sizeof(data));
    put_frame(&t.uin, 1, OP_TEXT, 0, data, sizeof(data));
    put_close(&t.uin, 0, 4000, "app");
    av_buf got;
    av__buf_init(&got, 1 << 16);
    for (int i = 0; i < 100; i++) {
        int rc = h_pump(&t);
        assert_true(rc >= 0);
        assert_int_equal(av__buf_append(&got, av__buf_head(&t.aout), av__buf_len(&t.aout)), 0);
        av__buf_consume(&t.aout, av__buf_len(&t.aout));
        if (rc == 0)
            break;
    }
    frame f[4];
    assert_int_equal(take_frames(&got, f, 4), 2);
    assert_int_equal(f[0].opcode, OP_TEXT);
    assert_int_equal(f[0].len, sizeof(data));
    assert_memory_equal(f[0].payload, data, sizeof(data));
    assert_int_equal(f[1].opcode, OP_CLOSE);
    assert_int_equal(f[1].len, 5);
    assert_memory_equal(f[1].payload, "\x0f\xa0" "app", 5);
    frame_free(&f[0]);
    frame_free(&f[1]);
    /* the upstream's close is answered only after the agent answered */
    assert_int_equal(av__buf_len(&t.uout), 0);
    assert_false(av__ws_bridge_done(t.b));
    put_close(&t.ain, 1, 4000, "app");
    assert_int_equal(h_pump(&t), 1);
    expect_close(&t.uout, 1, 4000, "app");
    assert_true(av__ws_bridge_done(t.b));
    av__buf_free(&got);
    h_free(&t);
}

static void close_without_code_and_simultaneous(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 16, 1 << 16);
    put_close(&t.ain, 1, 0, NULL);
    put_close(&t.uin, 0, 1001, NULL);
    assert_int_equal(h_pump(&t), 1);
    /* each side gets the echo of its own close; nothing else */
    expect_close(&t.aout, 0, 0, NULL);
    expect_close(&t.uout, 1, 1001, NULL);
    assert_true(av__ws_bridge_done(t.b));
    av_ws_stats st;
    av__ws_bridge_stats(t.b, &st);
    assert_int_equal(st.close_code_agent, 1005);
    assert_int_equal(st.close_code_upstream, 1001);
    h_free(&t);
}

/* put_raw_hdr appends a server frame header whose 64-bit length has the
 * top bit set, followed by a few bytes. */
static void put_raw_hdr(av_buf *b)
{
    const uint8_t h[] = {0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 5, 'x', 'y'};
    assert_int_equal(av__buf_append(b, h, sizeof(h)), AV_OK);
}

/* ---- violations ------------------------------------------------------------------- */

/* check_violation pushes |raw| from one side and expects a close with
 * |code| back to it, 1001 to the other side, nothing forwarded, and done
 * after the other side answers. */
static void check_violation(int from_agent, const av_buf *raw, int code, size_t max_message,
                            int want_rc)
{
    harness t;
    h_init(&t, max_message, test_filter, NULL, 1 << 20, 1 << 16);
    av_buf *in = from_agent ? &t.ain : &t.uin;
    av_buf *bad_out = from_agent ? &t.aout : &t.uout;
    av_buf *good_out = from_agent ? &t.uout : &t.aout;
    av_buf *good_in = from_agent ? &t.uin : &t.ain;
    assert_int_equal(av__buf_append(in, av__buf_head(raw), av__buf_len(raw)), 0);
    assert_int_equal(h_pump(&t), want_rc);
    expect_close(bad_out, !from_agent, code, NULL);
    expect_close(good_out, from_agent, 1001, NULL);
    assert_false(av__ws_bridge_done(t.b));
    /* later pumps report progress, not the error again */
    assert_int_equal(h_pump(&t), 0);
    put_close(good_in, !from_agent, 1001, NULL);
    assert_int_equal(h_pump(&t), 1);
    assert_int_equal(av__buf_len(&t.aout), 0);
    assert_int_equal(av__buf_len(&t.uout), 0);
    assert_true(av__ws_bridge_done(t.b));
    av_ws_stats st;
    av__ws_bridge_stats(t.b, &st);
    assert_int_equal(from_agent ? st.close_code_to_agent : st.close_code_to_upstream, code);
    assert_int_equal(from_agent ? st.close_code_to_upstream : st.close_code_to_agent, 1001);
    assert_int_equal(st.msgs_to_agent + st.msgs_to_upstream, 0);
    h_free(&t);
}

static void protocol_violations(void **state)
{
    (void)state;
    av_buf r;
    av__buf_init(&r, 1 << 20);
    uint8_t big[200];
    memset(big, 'b', sizeof(big));

#define CASE(from_agent, code, max, build)                                                         \
    do {                                                                                           \
        av__buf_reset(&r);                                                                         \
        build;                                                                                     \
        check_violation(from_agent, &r, code, max, AV_ERR_PARSE);                                  \
    } while (0)

    /* unmasked client frame / masked server frame */
    CASE(1, 1002, 0, put_frame(&r, 1, OP_TEXT, 0, S("x")));
    CASE(0, 1002, 0, put_frame(&r, 1, OP_TEXT, 1, S("x")));
    /* RSV1 as permessage-deflate would set it; RSV2, RSV3; also upstream */
    CASE(1, 1002, 0, put_frame_ex(&r, 1, 4, OP_TEXT, 1, S("x"), 0));
    CASE(1, 1002, 0, put_frame_ex(&r, 1, 2, OP_BIN, 1, S("x"), 0));
    CASE(0, 1002, 0, put_frame_ex(&r, 1, 1, OP_BIN, 0, S("x"), 0));
    CASE(0, 1002, 0, put_frame_ex(&r, 1, 4, OP_TEXT, 0, S("x"), 0));
    /* reserved opcodes */
    CASE(1, 1002, 0, put_frame(&r, 1, 3, 1, S("x")));
    CASE(1, 1002, 0, put_frame(&r, 1, 0xb, 1, S("x")));
    CASE(0, 1002, 0, put_frame(&r, 1, 7, 0, S("x")));
    /* control frames: > 125 bytes, fragmented, close with a 1-byte body */
    CASE(1, 1002, 0, put_frame(&r, 1, OP_PING, 1, big, 126));
    CASE(0, 1002, 0, put_frame(&r, 1, OP_PONG, 0, big, 200));
    CASE(1, 1002, 0, put_frame(&r, 0, OP_PING, 1, S("frag")));
    CASE(0, 1002, 0, put_frame(&r, 0, OP_CLOSE, 0, "\x03\xe8", 2));
    CASE(1, 1002, 0, put_frame(&r, 1, OP_CLOSE, 1, "\x03", 1));
    /* close codes that may not be sent */
    CASE(1, 1002, 0, put_frame(&r, 1, OP_CLOSE, 1, "\x03\xed", 2)); /* 1005 */
    CASE(0, 1002, 0, put_frame(&r, 1, OP_CLOSE, 0, "\x03\xee", 2)); /* 1006 */
    CASE(1, 1002, 0, put_frame(&r, 1, OP_CLOSE, 1, "\x00\x05", 2));
    /* length not in its minimal form */
    CASE(1, 1002, 0, put_frame_ex(&r, 1, 0, OP_TEXT, 1, S("short"), 126));
    CASE(0, 1002, 0, put_frame_ex(&r, 1, 0, OP_BIN, 0, big, 200, 127));
    /* fragmentation errors */
    CASE(1, 1002, 0, put_frame(&r, 1, OP_CONT, 1, S("orphan")));
    CASE(0, 1002, 0, {
        put_frame(&r, 0, OP_TEXT, 0, S("a"));
        put_frame(&r, 1, OP_TEXT, 0, S("b"));
    });
    /* invalid UTF-8 in text, and in a close reason */
    const char *bad_utf8[] = {"\xc0\x80",     "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82",
                              "\x80",         "\xff",         "ok\xc3\x28",       "\xf8\x88\x80\x80\x80",
                              "\xe0\x80\xaf", "\xef\xbf"};
    for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(bad_utf8[0]); i++) {
        CASE(1, 1007, 0, put_frame(&r, 1, OP_TEXT, 1, bad_utf8[i], strlen(bad_utf8[i])));
        CASE(0, 1007, 0, put_frame(&r, 1, OP_TEXT, 0, bad_utf8[i], strlen(bad_utf8[i])));
    }
    CASE(1, 1007, 0, {
        put_frame(&r, 0, OP_TEXT, 1, S("\xe2"));
        put_frame(&r, 1, OP_CONT, 1, S("\x82"));
    });
    CASE(0, 1007, 0, put_frame(&r, 1, OP_CLOSE, 0, "\x03\xe8\xff", 3));
    /* message cap: one frame, and fragments adding up */
    CASE(1, 1009, 100, put_frame(&r, 1, OP_BIN, 1, big, 101));
    CASE(0, 1009, 100, put_frame(&r, 1, OP_TEXT, 0, big, 101));
    CASE(1, 1009, 100, {
        put_frame(&r, 0, OP_TEXT, 1, big, 60);
        put_frame(&r, 1, OP_CONT, 1, big, 60);
    });
    /* a frame whose 64-bit length has the top bit set */
    CASE(0, 1002, 0, put_raw_hdr(&r));
#undef CASE
    av__buf_free(&r);
}

static void violation_after_good_data(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 100, NULL, NULL, 1 << 16, 1 << 16);
    put_frame(&t.ain, 1, OP_TEXT, 1, S("good"));
    put_frame(&t.ain, 1, OP_TEXT, 0, S("unmasked"));
    put_frame(&t.ain, 1, OP_TEXT, 1, S("never"));
    assert_int_equal(h_pump(&t), AV_ERR_PARSE);
    frame f[4];
    assert_int_equal(take_frames(&t.uout, f, 4), 2);
    assert_int_equal(f[0].opcode, OP_TEXT);
    assert_memory_equal(f[0].payload, "good", 4);
    assert_int_equal(f[1].opcode, OP_CLOSE);
    assert_memory_equal(f[1].payload, "\x03\xe9", 2);
    frame_free(&f[0]);
    frame_free(&f[1]);
    expect_close(&t.aout, 0, 1002, NULL);
    /* nothing more is read from the offender */
    assert_true(av__buf_len(&t.ain) > 0);
    h_free(&t);
}

static void filter_error_closes_1008(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, test_filter, NULL, 1 << 16, 1 << 16);
    put_frame(&t.ain, 1, OP_TEXT, 1, S("first"));
    put_frame(&t.ain, 1, OP_TEXT, 1, S("please deny this"));
    put_frame(&t.ain, 1, OP_TEXT, 1, S("after"));
    assert_int_equal(h_pump(&t), AV_ERR_DENIED);
    frame f[4];
    assert_int_equal(take_frames(&t.uout, f, 4), 2);
    assert_memory_equal(f[0].payload, "first", 5);
    assert_int_equal(f[1].opcode, OP_CLOSE);
    assert_memory_equal(f[1].payload, "\x03\xe9", 2);
    frame_free(&f[0]);
    frame_free(&f[1]);
    expect_close(&t.aout, 0, 1008, NULL);
    put_close(&t.uin, 0, 1001, NULL);
    assert_int_equal(h_pump(&t), 1);
    assert_true(av__ws_bridge_done(t.b));
    h_free(&t);
}

/* ---- back-pressure ------------------------------------------------------------------ */

static void backpressure_large_message(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 20, 1 << 16);
    t.uout.max = 100; /* tiny room toward the upstream */
    size_t big = 200000;
    uint8_t *p = malloc(big);
    assert_non_null(p);
    for (size_t i = 0; i < big; i++)
        p[i] = (uint8_t)(i * 31 + (i >> 9));
    put_frame(&t.ain, 1, OP_BIN, 1, p, big);
    size_t tail_start = av__buf_len(&t.ain);
    put_frame(&t.ain, 1, OP_TEXT, 1, S("tail"));
    size_t tail_len = av__buf_len(&t.ain) - tail_start;

    av_buf got;
    av__buf_init(&got, 1 << 20);
    assert_int_equal(h_pump(&t), 1);
    assert_int_equal(av__buf_len(&t.uout), 100);
    assert_int_equal(av__buf_len(&t.ain), tail_len); /* second message not read */
    int pumps = 0, saw_full_and_waiting = 0;
    size_t got_when_read = 0;
    for (;;) {
        if (av__buf_len(&t.uout) == t.uout.max && av__buf_len(&t.ain) > 0)
            saw_full_and_waiting++;
        assert_int_equal(av__buf_append(&got, av__buf_head(&t.uout), av__buf_len(&t.uout)), 0);
        av__buf_consume(&t.uout, av__buf_len(&t.uout));
        int rc = h_pump(&t);
        assert_true(rc >= 0);
        pumps++;
        if (av__buf_len(&t.ain) == 0 && got_when_read == 0)
            got_when_read = av__buf_len(&got) + av__buf_len(&t.uout);
        if (rc == 0 && av__buf_len(&t.uout) == 0)
            break;
    }
    assert_true(pumps > 1000);
    assert_true(saw_full_and_waiting > 1000);
    /* reading resumed only once the queue toward the upstream shrank */
    assert_true(got_when_read >= big + 10 - (64 << 10));
    assert_true(got_when_read < big);
    frame f[4];
    assert_int_equal(take_frames(&got, f, 4), 2);
    assert_int_equal(f[0].len, big);
    assert_memory_equal(f[0].payload, p, big);
    assert_int_equal(f[1].len, 4);
    assert_memory_equal(f[1].payload, "tail", 4);
    frame_free(&f[0]);
    frame_free(&f[1]);
    free(p);
    av__buf_free(&got);
    h_free(&t);
}

static void backpressure_pong_flood(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 20, 64);
    uint8_t body[100];
    memset(body, 'p', sizeof(body));
    int pings = 2000;
    for (int i = 0; i < pings; i++)
        put_frame(&t.ain, 1, OP_PING, 1, body, sizeof(body));
    assert_int_equal(h_pump(&t), 1);
    /* pongs pile up to a bound, then the agent is not read */
    assert_true(av__buf_len(&t.ain) > 100000);
    int pongs = 0;
    av_buf got;
    av__buf_init(&got, 1 << 20);
    for (;;) {
        assert_int_equal(av__buf_append(&got, av__buf_head(&t.aout), av__buf_len(&t.aout)), 0);
        av__buf_consume(&t.aout, av__buf_len(&t.aout));
        for (;;) {
            frame f;
            size_t used = parse_frame(av__buf_head(&got), av__buf_len(&got), &f);
            if (!used)
                break;
            assert_int_equal(f.opcode, OP_PONG);
            assert_int_equal(f.len, sizeof(body));
            frame_free(&f);
            av__buf_consume(&got, used);
            pongs++;
        }
        if (h_pump(&t) == 0)
            break;
    }
    assert_int_equal(pongs, pings);
    assert_int_equal(av__buf_len(&t.ain), 0);
    assert_int_equal(av__buf_len(&t.uout), 0);
    av__buf_free(&got);
    h_free(&t);
}

static void byte_by_byte(void **state)
{
    (void)state;
    av_buf src;
    av__buf_init(&src, 1 << 16);
    put_frame(&src, 0, OP_TEXT, 1, S("ab __OPENAI_"));
    put_frame(&src, 1, OP_PING, 1, S("pp"));
    put_frame(&src, 1, OP_CONT, 1, S("KEY__ cd"));
    uint8_t mid[300];
    memset(mid, 'm', sizeof(mid));
    put_frame(&src, 1, OP_BIN, 1, mid, sizeof(mid));
    put_close(&src, 1, 1000, "done");

    harness t;
    h_init(&t, 0, test_filter, NULL, 1 << 16, 1);
    av_buf up, ag;
    av__buf_init(&up, 1 << 16);
    av__buf_init(&ag, 1 << 16);
    size_t fed = 0;
    for (int guard = 0; guard < 100000; guard++) {
        if (fed < av__buf_len(&src)) {
            assert_int_equal(av__buf_append(&t.ain, av__buf_head(&src) + fed, 1), 0);
            fed++;
        }
        int rc = h_pump(&t);
        assert_true(rc >= 0);
        assert_int_equal(av__buf_append(&up, av__buf_head(&t.uout), av__buf_len(&t.uout)), 0);
        av__buf_consume(&t.uout, av__buf_len(&t.uout));
        assert_int_equal(av__buf_append(&ag, av__buf_head(&t.aout), av__buf_len(&t.aout)), 0);
        av__buf_consume(&t.aout, av__buf_len(&t.aout));
        if (fed == av__buf_len(&src) && rc == 0)
            break;
    }
    frame f[8];
    assert_int_equal(take_frames(&up, f, 8), 3);
    assert_int_equal(f[0].opcode, OP_TEXT); /* placeholder split across fragments */
    assert_int_equal(f[0].len, 13);
    assert_memory_equal(f[0].payload, "ab sk-real cd", 13);
    assert_int_equal(f[1].opcode, OP_BIN);
    assert_int_equal(f[1].len, sizeof(mid));
    assert_memory_equal(f[1].payload, mid, sizeof(mid));
    assert_int_equal(f[2].opcode, OP_CLOSE);
    assert_memory_equal(f[2].payload, "\x03\xe8" "done", 6);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(f[i].masked, 1);
        frame_free(&f[i]);
    }
    assert_int_equal(take_frames(&ag, f, 8), 1);
    assert_int_equal(f[0].opcode, OP_PONG);
    assert_memory_equal(f[0].payload, "pp", 2);
    frame_free(&f[0]);
    av__buf_free(&up);
    av__buf_free(&ag);
    av__buf_free(&src);
    h_free(&t);
}

/* ---- end of stream ------------------------------------------------------------------- */

static void eof_from_agent(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 16, 1 << 16);
    put_frame(&t.ain, 1, OP_TEXT, 1, S("last words"));
    av__ws_bridge_agent_eof(t.b);
    assert_int_equal(h_pump(&t), 1);
    frame f[4];
    assert_int_equal(take_frames(&t.uout, f, 4), 2);
    assert_memory_equal(f[0].payload, "last words", 10);
    assert_int_equal(f[1].opcode, OP_CLOSE);
    assert_int_equal(f[1].masked, 1);
    assert_memory_equal(f[1].payload, "\x03\xe9", 2);
    frame_free(&f[0]);
    frame_free(&f[1]);
    assert_false(av__ws_bridge_done(t.b));
    /* the upstream's reply and anything it sends go nowhere */
    put_frame(&t.uin, 1, OP_TEXT, 0, S("to nobody"));
    put_close(&t.uin, 0, 1001, NULL);
    assert_int_equal(h_pump(&t), 1);
    assert_int_equal(av__buf_len(&t.aout), 0);
    assert_true(av__ws_bridge_done(t.b));
    h_free(&t);
}

static void eof_from_upstream_mid_frame(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 16, 1 << 16);
    put_frame(&t.uin, 1, OP_TEXT, 0, S("truncated message"));
    t.uin.len -= 5; /* the stream ends inside the frame */
    assert_int_equal(h_pump(&t), 1);
    assert_int_equal(av__buf_len(&t.aout), 0);
    av__ws_bridge_upstream_eof(t.b);
    assert_int_equal(h_pump(&t), 1);
    expect_close(&t.aout, 0, 1001, NULL);
    assert_int_equal(av__buf_len(&t.uout), 0);
    put_close(&t.ain, 1, 1001, NULL);
    assert_int_equal(h_pump(&t), 1);
    assert_int_equal(av__buf_len(&t.uout), 0);
    assert_true(av__ws_bridge_done(t.b));
    h_free(&t);
}

static void eof_waits_for_backpressure(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 20, 1 << 16);
    t.uout.max = 1000;
    size_t n = 150000;
    uint8_t *p = malloc(n);
    assert_non_null(p);
    memset(p, 'z', n);
    put_frame(&t.ain, 1, OP_BIN, 1, p, n);
    put_frame(&t.ain, 1, OP_BIN, 1, p, n);
    av__ws_bridge_agent_eof(t.b);
    av_buf got;
    av__buf_init(&got, 1 << 20);
    for (;;) {
        int rc = h_pump(&t);
        assert_true(rc >= 0);
        assert_int_equal(av__buf_append(&got, av__buf_head(&t.uout), av__buf_len(&t.uout)), 0);
        av__buf_consume(&t.uout, av__buf_len(&t.uout));
        if (rc == 0)
            break;
    }
    frame f[4];
    assert_int_equal(take_frames(&got, f, 4), 3);
    assert_int_equal(f[0].len, n);
    assert_int_equal(f[1].len, n);
    assert_int_equal(f[2].opcode, OP_CLOSE);
    assert_memory_equal(f[2].payload, "\x03\xe9", 2);
    for (int i = 0; i < 3; i++)
        frame_free(&f[i]);
    /* EOF from the upstream without a reply: done */
    av__ws_bridge_upstream_eof(t.b);
    assert_true(h_pump(&t) >= 0);
    assert_true(av__ws_bridge_done(t.b));
    free(p);
    av__buf_free(&got);
    h_free(&t);
}

static void eof_after_close(void **state)
{
    (void)state;
    harness t;
    h_init(&t, 0, NULL, NULL, 1 << 16, 1 << 16);
    put_close(&t.ain, 1, 1000, NULL);
    av__ws_bridge_agent_eof(t.b);
    assert_int_equal(h_pump(&t), 1);
    expect_close(&t.uout, 1, 1000, NULL);
    put_close(&t.uin, 0, 1000, NULL);
    assert_int_equal(h_pump(&t), 1);
    expect_close(&t.aout, 0, 1000, NULL); /* still answered */
    assert_true(av__ws_bridge_done(t.b));
    h_free(&t);

    /* both streams end without close frames */
    h_init(&t, 0, NULL, NULL, 1 << 16, 1 << 16);
    av__ws_bridge_agent_eof(t.b);
    av__ws_bridge_upstream_eof(t.b);
    assert_true(h_pump(&t) >= 0);
    assert_int_equal(av__buf_len(&t.aout), 0);
    assert_int_equal(av__buf_len(&t.uout), 0);
    assert_true(av__ws_bridge_done(t.b));
    h_free(&t);
}

/* ---- allocation: failures and wiping ---------------------------------------------------- */

typedef struct blk {
    size_t size;
    size_t pad;
} blk;
static long fail_countdown = -1; /* < 0: never fail */
static int leaked_secret;
static long live_blocks;

/* test allocator: counts blocks, fails on demand, and checks that no
 * freed block still holds the secret. */
static void *t_malloc(size_t n, void *ud)
{
    (void)ud;
    if (fail_countdown == 0)
        return NULL;
    if (fail_countdown > 0)
        fail_countdown--;
    blk *b = malloc(sizeof(blk) + n);
    if (!b)
        return NULL;
    b->size = n;
    live_blocks++;
    return b + 1;
}
static void t_free(void *p, void *ud)
{
    (void)ud;
    if (!p)
        return;
    blk *b = (blk *)p - 1;
    if (memmem(p, b->size, "sk-real", 7))
        leaked_secret++;
    live_blocks--;
    free(b);
}
static void *t_realloc(void *p, size_t n, void *ud)
{
    if (!p)
        return t_malloc(n, ud);
    void *q = t_malloc(n, ud);
    if (!q)
        return NULL;
    blk *b = (blk *)p - 1;
    memcpy(q, p, b->size < n ? b->size : n);
    av__wipe(p, b->size); /* buffer moves are not under test here */
    t_free(p, ud);
    return q;
}

static void secret_wiped_before_free(void **state)
{
    (void)state;
    assert_int_equal(av_set_allocator(t_malloc, t_realloc, t_free, NULL), AV_OK);
    fail_countdown = -1;
    leaked_secret = 0;
    live_blocks = 0;
    /* the detector works */
    char *probe = av__malloc(16);
    memcpy(probe, "xx sk-real", 11);
    av__free(probe);
    assert_int_equal(leaked_secret, 1);
    leaked_secret = 0;

    harness t;
    h_init(&t, 0, test_filter, NULL, 1 << 16, 1 << 16);
    t.uout.max = 50; /* the message waits in the bridge for a while */
    for (int i = 0; i < 3; i++)
        put_frame(&t.ain, 1, OP_TEXT, 1, S("key=__OPENAI_KEY__ and more text after it"));
    for (int i = 0; i < 1000; i++) {
        av__buf_consume(&t.uout, av__buf_len(&t.uout));
        if (h_pump(&t) == 0)
            break;
    }
    /* one message still queued when the bridge goes away */
    put_frame(&t.ain, 1, OP_TEXT, 1, S("again __OPENAI_KEY__ with a long enough tail"));
    assert_int_equal(h_pump(&t), 1);
    av__buf_consume(&t.uout, av__buf_len(&t.uout));
    av__ws_bridge_free(t.b);
    t.b = NULL;
    av__buf_free(&t.ain);
    av__buf_free(&t.uin);
    av__buf_free(&t.aout);
    av__buf_free(&t.uout);
    assert_int_equal(leaked_secret, 0);
    assert_int_equal(live_blocks, 0);
    assert_int_equal(av_set_allocator(NULL, NULL, NULL, NULL), AV_OK);
}

static void allocation_failures(void **state)
{
    (void)state;
    assert_int_equal(av_set_allocator(t_malloc, t_realloc, t_free, NULL), AV_OK);
    int saw_nomem = 0, saw_ok = 0;
    for (long k = 0; k < 40; k++) {
        live_blocks = 0;
        fail_countdown = -1;
        harness t;
        memset(&t, 0, sizeof(t));
        av__buf_init(&t.ain, 1 << 16);
        av__buf_init(&t.uin, 1 << 16);
        av__buf_init(&t.aout, 1 << 16);
        av__buf_init(&t.uout, 1 << 16);
        put_frame(&t.ain, 1, OP_TEXT, 1, S("a __OPENAI_KEY__ b"));
        put_frame(&t.uin, 1, OP_BIN, 0, S("from up"));
        int err = 0;
        assert_non_null(av__buf_reserve(&t.aout, 1 << 16, &err));
        assert_non_null(av__buf_reserve(&t.uout, 1 << 16, &err));
        fail_countdown = k;
        int rc = av__ws_bridge_new(&t.b, 0, test_filter, NULL);
        if (rc == AV_OK) {
            rc = av__ws_bridge_pump(t.b, &t.ain, &t.aout, &t.uin, &t.uout);
            if (rc == AV_ERR_NOMEM) {
                saw_nomem++;
                assert_int_equal(av__ws_bridge_pump(t.b, &t.ain, &t.aout, &t.uin, &t.uout),
                                 AV_ERR_NOMEM);
            } else {
                /* the filter's own allocation failing is a refusal (1008) */
                assert_true(rc == 1 || rc == AV_ERR_DENIED);
                saw_ok++;
            }
        } else {
            assert_int_equal(rc, AV_ERR_NOMEM);
            assert_null(t.b);
            saw_nomem++;
        }
        fail_countdown = -1;
        av__ws_bridge_free(t.b);
        av__buf_free(&t.ain);
        av__buf_free(&t.uin);
        av__buf_free(&t.aout);
        av__buf_free(&t.uout);
        assert_int_equal(live_blocks, 0);
    }
    assert_true(saw_nomem > 0);
    assert_true(saw_ok > 0);
    assert_int_equal(av_set_allocator(NULL, NULL, NULL, NULL), AV_OK);
}

/* ---- accept key ------------------------------------------------------------------------- */

static void accept_key(void **state)
{
    (void)state;
    char out[29];
    assert_int_equal(av__ws_accept_key(S("dGhlIHNhbXBsZSBub25jZQ=="), out), AV_OK);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(av__ws_accept_key(S("x3JJHMbDL1EzLkh9GBhXDw=="), out), AV_OK);
    assert_string_equal(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    assert_int_equal(av__ws_accept_key(S("AAAAAAAAAAAAAAAAAAAAAA=="), out), AV_OK);
    assert_int_equal(strlen(out), 28);

    const char *bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ=",   /* 23 */
        "dGhlIHNhbXBsZSBub25jZQ===", /* 25 */
        "dGhlIHNhbXBsZSBub25jZQ",    /* no padding */
        "dGhlIHNhbXBsZSBub25jZR==",  /* non-canonical last char */
        "dGhlIHNhbXBsZSBub25jZ===",  /* decodes to 15 bytes */
        "dGhlIHNhbXBsZSBub25j ZQ=",  /* space */
        "dGhlIHNhbXBsZSBub25jZQ-=",
        "dGhlIHNhbXBsZSBub2-jZQ==", /* url-safe alphabet */
        "dGhlIHNhbXBsZSBub25jZQ\r\n",
        "ZGhlIHNhbXBsZSBub25jZQ=a",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(av__ws_accept_key(bad[i], strlen(bad[i]), out), AV_ERR_INVALID);
    /* an embedded NUL counts as a bad character */
    assert_int_equal(av__ws_accept_key("dGhlIHNhbXBsZSBub25j\0Q==", 24, out), AV_ERR_INVALID);
    assert_int_equal(av__ws_accept_key(NULL, 24, out), AV_ERR_INVALID);
}

/* ---- misc ----------------------------------------------------------------------------------- */

static void invalid_arguments(void **state)
{
    (void)state;
    assert_int_equal(av__ws_bridge_new(NULL, 0, NULL, NULL), AV_ERR_INVALID);
    av_ws_bridge *b = NULL;
    assert_int_equal(av__ws_bridge_new(&b, 0, NULL, NULL), AV_OK);
    av_buf x;
    av__buf_init(&x, 10);
    assert_int_equal(av__ws_bridge_pump(b, NULL, &x, &x, &x), AV_ERR_INVALID);
    assert_int_equal(av__ws_bridge_pump(NULL, &x, &x, &x, &x), AV_ERR_INVALID);
    assert_false(av__ws_bridge_done(NULL));
    assert_false(av__ws_bridge_done(b));
    av_ws_stats st;
    av__ws_bridge_stats(NULL, &st);
    assert_int_equal(st.msgs_to_agent, 0);
    av__ws_bridge_agent_eof(NULL);
    av__ws_bridge_free(b);
    av__ws_bridge_free(NULL);
}


/* ---- scrub mode: the one-way relay of upstream frames ------------------------ */

#define RKEY "sk-relay-secret-0123456789"
#define RMARK "[REDACTED]"

static av_scrub_set *relay_set(void)
{
    av_secret *sec = av__secret_new(RKEY, strlen(RKEY));
    assert_non_null(sec);
    const av_secret *v[1] = {sec};
    av_scrub_set *set = NULL;
    assert_int_equal(av__scrub_set_new(&set, v, 1), AV_OK);
    av__secret_free(sec);
    return set;
}

/* deflate_msg compresses |p| as one permessage-deflate message (context
 * taken over in |z|, the 00 00 ff ff tail removed). */
static size_t deflate_msg(z_stream *z, const void *p, size_t n, uint8_t *out, size_t cap)
{
    z->next_in = (Bytef *)(uintptr_t)p;
    z->avail_in = (uInt)n;
    z->next_out = out;
    z->avail_out = (uInt)cap;
    assert_int_equal(deflate(z, Z_SYNC_FLUSH), Z_OK);
    size_t m = cap - z->avail_out;
    assert_true(m >= 4 && memcmp(out + m - 4, "\x00\x00\xff\xff", 4) == 0);
    return m - 4;
}

/* relay_stream builds an upstream byte stream: text, a binary message in
 * three fragments with the key cut across them and a ping between, a ping
 * with the key, an uncompressed text, a close whose reason has the key;
 * with |deflate| the first two messages are compressed. */
static void relay_stream(av_buf *b, int deflate)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    uint8_t zb[4096];
    const char *t1 = "a " RKEY " b";
    if (deflate) {
        size_t m = deflate_msg(&z, t1, strlen(t1), zb, sizeof(zb));
        put_frame_ex(b, 1, 4, OP_TEXT, 0, zb, m, 0);
    } else {
        put_frame(b, 1, OP_TEXT, 0, t1, strlen(t1));
    }
    const char *b1 = "\x01x" RKEY RKEY "y\xff";
    size_t bl = strlen(b1);
    const uint8_t *bp = (const uint8_t *)b1;
    size_t m = bl;
    if (deflate) {
        m = deflate_msg(&z, b1, bl, zb, sizeof(zb));
        bp = zb;
    }
    size_t c1 = m / 3, c2 = 2 * m / 3;
    put_frame_ex(b, 0, deflate ? 4 : 0, OP_BIN, 0, bp, c1, 0);
    put_frame(b, 1, OP_PING, 0, S("ping"));
    put_frame(b, 0, OP_CONT, 0, bp + c1, c2 - c1);
    put_frame(b, 1, OP_CONT, 0, bp + c2, m - c2);
    put_frame(b, 1, OP_PING, 0, S("p " RKEY));
    put_frame(b, 1, OP_TEXT, 0, S("plain " RKEY));
    put_frame(b, 1, OP_TEXT, 0, "", 0);
    put_close(b, 0, 4000, "bye " RKEY);
    deflateEnd(&z);
}

#define RELAY_WANT                                                                        \
    "T[a " RMARK " b]P[ping]B[\x01x" RMARK RMARK "y\xff]P[p " RMARK "]T[plain " RMARK     \
    "]T[]C[\x0f\xa0" "bye " RMARK "]"

/* relay_log decodes the relay's output into RELAY_WANT's notation, checking
 * frame rules on the way (unmasked, RSV clear, fragments in order). */
static void relay_log(av_buf *out, char *log, size_t cap)
{
    size_t w = 0;
    int in_msg = 0, msg_op = 0;
    char msg[4096];
    size_t ml = 0;
    frame f;
    size_t used;
    while ((used = parse_frame(av__buf_head(out), av__buf_len(out), &f)) > 0) {
        av__buf_consume(out, used);
        assert_false(f.masked);
        assert_int_equal(f.rsv, 0);
        if (f.opcode >= 8) {
            assert_true(f.fin && f.len <= 125);
            w += (size_t)snprintf(log + w, cap - w, "%c[", f.opcode == OP_CLOSE ? 'C' : f.opcode == OP_PING ? 'P' : 'Q');
            memcpy(log + w, f.payload, f.len);
            w += f.len;
            log[w++] = ']';
        } else {
            assert_true(f.opcode == OP_CONT ? in_msg : !in_msg);
            if (f.opcode != OP_CONT)
                msg_op = f.opcode;
            assert_true(ml + f.len < sizeof(msg));
            memcpy(msg + ml, f.payload, f.len);
            ml += f.len;
            in_msg = !f.fin;
            if (f.fin) {
                w += (size_t)snprintf(log + w, cap - w, "%c[", msg_op == OP_TEXT ? 'T' : 'B');
                memcpy(log + w, msg, ml);
                w += ml;
                log[w++] = ']';
                ml = 0;
            }
        }
        frame_free(&f);
        assert_true(w < cap - 200);
    }
    log[w] = 0;
}

/* relay_run feeds |in| cut at |at| (and then in |piece|-byte reads) through
 * a relay with an output buffer of |out_max|, draining whenever it stalls. */
static int relay_run(av_scrub_set *set, int deflate, size_t cap, const av_buf *in, size_t at,
                     size_t piece, size_t out_max, char *log, size_t log_cap, unsigned long *count)
{
    av_ws_scrub *w = NULL;
    assert_int_equal(av__ws_scrub_new(&w, set, deflate, cap), AV_OK);
    av_buf rin, out, acc;
    av__buf_init(&rin, 1 << 22);
    av__buf_init(&out, out_max);
    av__buf_init(&acc, 1 << 24);
    const uint8_t *p = av__buf_head(in);
    size_t n = av__buf_len(in), off = 0;
    int rc = 0;
    for (int rounds = 0; rounds < 1000000; rounds++) {
        size_t k = off < at ? at - off : piece;
        if (k > n - off)
            k = n - off;
        assert_int_equal(av__buf_append(&rin, p + off, k), AV_OK);
        off += k;
        rc = av__ws_scrub_pump(w, &rin, &out);
        assert_true(av__buf_len(&out) <= out_max);
        size_t d = av__buf_len(&out);
        assert_int_equal(av__buf_append(&acc, av__buf_head(&out), d), AV_OK);
        av__buf_consume(&out, d);
        if (rc < 0 || (off == n && rc == 0 && d == 0))
            break;
    }
    relay_log(&acc, log, log_cap);
    assert_int_equal(av__buf_len(&acc), 0);
    if (count)
        *count = av__ws_scrub_count(w);
    av__ws_scrub_free(w);
    av__buf_free(&rin);
    av__buf_free(&out);
    av__buf_free(&acc);
    return rc;
}

static void relay_scrubs_across_frames_and_reads(void **state)
{
    (void)state;
    av_scrub_set *set = relay_set();
    char log[8192];
    for (int deflate = 0; deflate < 2; deflate++) {
        av_buf in;
        av__buf_init(&in, 1 << 16);
        relay_stream(&in, deflate);
        size_t n = av__buf_len(&in);
        unsigned long count = 0;
        assert_int_equal(relay_run(set, deflate, 0, &in, 0, n, 1 << 20, log, sizeof(log), &count), 0);
        if (memcmp(log, RELAY_WANT, sizeof(RELAY_WANT)) != 0)
            fail_msg("deflate %d: got %s", deflate, log);
        assert_int_equal(count, 6);
        /* every split point, then byte by byte, tiny output buffers */
        for (size_t at = 0; at <= n; at++) {
            relay_run(set, deflate, 0, &in, at, n, 1 << 20, log, sizeof(log), NULL);
            assert_memory_equal(log, RELAY_WANT, sizeof(RELAY_WANT));
        }
        for (size_t om = 1; om <= 9; om += 4) {
            relay_run(set, deflate, 0, &in, 0, 1, om, log, sizeof(log), NULL);
            assert_memory_equal(log, RELAY_WANT, sizeof(RELAY_WANT));
        }
        /* without patterns: relayed as is (uncompressed) */
        relay_run(NULL, deflate, 0, &in, 0, 3, 100, log, sizeof(log), &count);
        assert_non_null(strstr(log, "T[a " RKEY " b]"));
        assert_int_equal(count, 0);
        av__buf_free(&in);
    }
    av__scrub_set_unref(set);
}

/* A frame over 1 MiB goes out in fragments; the message is intact. */
static void relay_big_frame_fragmented(void **state)
{
    (void)state;
    av_scrub_set *set = relay_set();
    size_t big = (3u << 20) + 5;
    uint8_t *m = malloc(big);
    assert_non_null(m);
    for (size_t i = 0; i < big; i++)
        m[i] = (uint8_t)(i * 7 + (i >> 12));
    av_buf in;
    av__buf_init(&in, big + 64);
    put_frame(&in, 1, OP_BIN, 0, m, big);
    av_ws_scrub *w = NULL;
    assert_int_equal(av__ws_scrub_new(&w, set, 0, 0), AV_OK);
    av_buf out;
    av__buf_init(&out, 1 << 22);
    int rc = av__ws_scrub_pump(w, &in, &out);
    assert_int_equal(rc, 1);
    frame f;
    size_t used, got = 0;
    int frames = 0;
    while ((used = parse_frame(av__buf_head(&out), av__buf_len(&out), &f)) > 0) {
        av__buf_consume(&out, used);
        assert_int_equal(f.opcode, frames ? OP_CONT : OP_BIN);
        assert_true(f.len <= (1u << 20));
        assert_memory_equal(f.payload, m + got, f.len);
        got += f.len;
        frames++;
        int fin = f.fin;
        frame_free(&f);
        if (fin)
            break;
    }
    assert_int_equal(got, big);
    assert_true(frames >= 4);
    av__ws_scrub_free(w);
    av__buf_free(&in);
    av__buf_free(&out);
    free(m);
    av__scrub_set_unref(set);
}

/* relay_expect_close feeds |in| and expects |rc| and a close |code| last. */
static void relay_expect_close(int deflate, size_t cap, av_buf *in, int want_rc, int code)
{
    av_scrub_set *set = relay_set();
    char log[8192];
    int rc = relay_run(set, deflate, cap, in, 0, 5, 64, log, sizeof(log), NULL);
    assert_int_equal(rc, want_rc);
    char want[8];
    snprintf(want, sizeof(want), "C[%c%c]", code >> 8, code & 0xff);
    size_t ll = strlen(log);
    if (ll < 5 || memcmp(log + ll - 5, want, 5) != 0)
        fail_msg("want close %d, got %s", code, log);
    av__buf_reset(in);
    av__scrub_set_unref(set);
}

static void relay_violations_and_caps(void **state)
{
    (void)state;
    av_buf in;
    av__buf_init(&in, 1 << 21);
    put_frame(&in, 1, OP_TEXT, 1, S("masked"));
    relay_expect_close(0, 0, &in, AV_ERR_PARSE, 1002);
    put_frame_ex(&in, 1, 4, OP_TEXT, 0, S("rsv1 without deflate"), 0);
    relay_expect_close(0, 0, &in, AV_ERR_PARSE, 1002);
    put_frame_ex(&in, 1, 2, OP_TEXT, 0, S("rsv2"), 0);
    relay_expect_close(1, 0, &in, AV_ERR_PARSE, 1002);
    put_frame(&in, 1, OP_CONT, 0, S("no start"));
    relay_expect_close(0, 0, &in, AV_ERR_PARSE, 1002);
    put_frame(&in, 0, OP_TEXT, 0, S("start"));
    put_frame(&in, 1, OP_TEXT, 0, S("another start"));
    relay_expect_close(0, 0, &in, AV_ERR_PARSE, 1002);
    put_frame(&in, 0, OP_PING, 0, S("fragmented ping"));
    relay_expect_close(0, 0, &in, AV_ERR_PARSE, 1002);
    put_frame(&in, 1, 3, 0, S("reserved opcode"));
    relay_expect_close(0, 0, &in, AV_ERR_PARSE, 1002);
    put_frame_ex(&in, 1, 4, OP_BIN, 0, S("\xff\xff\xff\xff not deflate"), 0);
    relay_expect_close(1, 0, &in, AV_ERR_PARSE, 1002);
    /* over the cap, uncompressed and fragmented */
    uint8_t buf[200];
    memset(buf, 'a', sizeof(buf));
    put_frame(&in, 0, OP_TEXT, 0, buf, 40);
    put_frame(&in, 1, OP_CONT, 0, buf, 40);
    relay_expect_close(0, 64, &in, AV_ERR_DENIED, 1009);
    /* a deflate bomb: 1 MiB of zeros in a few hundred bytes, cap 1000 */
    size_t zn = 1 << 20;
    uint8_t *zeros = calloc(1, zn), zb[8192];
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t m = deflate_msg(&z, zeros, zn, zb, sizeof(zb));
    deflateEnd(&z);
    put_frame_ex(&in, 1, 4, OP_BIN, 0, zb, m, 0);
    relay_expect_close(1, 1000, &in, AV_ERR_DENIED, 1009);
    free(zeros);
    av__buf_free(&in);
}

/* A close whose code's second byte is the key's first character and whose
 * reason is the rest of the key: the reason alone holds no match, the
 * payload as sent does (found by fuzz_ws). The code stays, the reason goes. */
static void relay_close_code_starts_the_key(void **state)
{
    (void)state;
    av_scrub_set *set = relay_set();
    char log[8192];
    av_buf in;
    av__buf_init(&in, 4096);
    int code = 0x0f00 | (uint8_t)RKEY[0]; /* 3955 with 's' */
    put_close(&in, 0, code, &RKEY[1]);
    unsigned long count = 0;
    int rc = relay_run(set, 0, 0, &in, 0, 3, 64, log, sizeof(log), &count);
    assert_true(rc >= 0);
    char want[8];
    snprintf(want, sizeof(want), "C[%c%c]", code >> 8, code & 0xff);
    if (strcmp(log, want) != 0)
        fail_msg("got %s", log);
    assert_int_equal(count, 1);
    /* a reason that only ends near the code is kept */
    av__buf_reset(&in);
    put_close(&in, 0, code, "k-other");
    relay_run(set, 0, 0, &in, 0, 3, 64, log, sizeof(log), &count);
    assert_string_equal(log + 4, "k-other]");
    assert_int_equal(count, 0);
    av__buf_free(&in);
    av__scrub_set_unref(set);
}

static void relay_extension_headers(void **state)
{
    (void)state;
    assert_true(av__ws_offers_deflate(S("permessage-deflate; client_max_window_bits")));
    assert_true(av__ws_offers_deflate(S("x-foo, Permessage-Deflate")));
    assert_false(av__ws_offers_deflate(S("x-webkit-deflate-frame")));
    assert_false(av__ws_offers_deflate(S("")));
    const char *ok[] = {"permessage-deflate", " permessage-deflate ",
                        "permessage-deflate; server_no_context_takeover",
                        "permessage-deflate;client_no_context_takeover; server_max_window_bits=10",
                        "permessage-deflate; client_max_window_bits=\"15\""};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        assert_int_equal(av__ws_deflate_accepted(ok[i], strlen(ok[i])), AV_OK);
    const char *bad[] = {"", "x-foo", "permessage-deflate, x-foo",
                         "permessage-deflate; server_max_window_bits=16",
                         "permessage-deflate; server_max_window_bits",
                         "permessage-deflate; server_no_context_takeover=1",
                         "permessage-deflate; unknown", "permessage-deflatex"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(av__ws_deflate_accepted(bad[i], strlen(bad[i])), AV_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(text_and_binary_both_ways),
        cmocka_unit_test(fragmented_messages_reassembled),
        cmocka_unit_test(filter_replaces_in_client_text_only),
        cmocka_unit_test(masking_per_direction),
        cmocka_unit_test(pings_answered_per_hop),
        cmocka_unit_test(close_from_agent),
        cmocka_unit_test(close_from_upstream_after_data),
        cmocka_unit_test(close_without_code_and_simultaneous),
        cmocka_unit_test(protocol_violations),
        cmocka_unit_test(violation_after_good_data),
        cmocka_unit_test(filter_error_closes_1008),
        cmocka_unit_test(backpressure_large_message),
        cmocka_unit_test(backpressure_pong_flood),
        cmocka_unit_test(byte_by_byte),
        cmocka_unit_test(eof_from_agent),
        cmocka_unit_test(eof_from_upstream_mid_frame),
        cmocka_unit_test(eof_waits_for_backpressure),
        cmocka_unit_test(eof_after_close),
        cmocka_unit_test(secret_wiped_before_free),
        cmocka_unit_test(allocation_failures),
        cmocka_unit_test(accept_key),
        cmocka_unit_test(invalid_arguments),
        cmocka_unit_test(relay_scrubs_across_frames_and_reads),
        cmocka_unit_test(relay_big_frame_fragmented),
        cmocka_unit_test(relay_violations_and_caps),
        cmocka_unit_test(relay_extension_headers),
        cmocka_unit_test(relay_close_code_starts_the_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
