/* fuzz_ws.c - libFuzzer target for the WebSocket frame-mode bridge.
 *
 * The first byte splits the rest into agent bytes and upstream bytes and
 * picks the configuration (message cap, filter, buffer sizes). The bytes
 * are fed in pseudo-random pieces through small bounded buffers that are
 * drained in pseudo-random amounts. Checked: outputs never exceed their
 * bound; every pump returns a documented value; what the bridge writes is
 * well-formed (masked toward the upstream only, RSV clear, known opcodes,
 * control frames <= 125 bytes and unfragmented, nothing after a close);
 * and once both streams ended and the outputs are drained the bridge is
 * done. The upstream bytes also go through the scrub-mode relay
 * (av_ws_scrub, with and without permessage-deflate): what it writes toward
 * the agent is well-formed (unmasked, RSV clear, fragments in order,
 * control frames whole, nothing after a close) and no reassembled message
 * or control payload holds the secret. av__ws_accept_key and
 * av__subst_replace are fuzzed on the side.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_enc.h"
#include "av_mem.h"
#include "av_scrub.h"
#include "av_secret.h"
#include "av_ws.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A checker for one output stream of the bridge. */
typedef struct out_check {
    av_buf acc;      /* bytes not yet parsed */
    int masked;      /* frames must be masked (toward the upstream) */
    int closed;      /* a close frame was seen */
} out_check;

/* check_frames parses complete frames from |c| and checks them. */
static void check_frames(out_check *c)
{
    for (;;) {
        size_t n = av__buf_len(&c->acc);
        if (n < 2)
            return;
        const uint8_t *p = av__buf_head(&c->acc);
        unsigned fin = p[0] >> 7, rsv = (p[0] >> 4) & 7, op = p[0] & 15;
        unsigned masked = p[1] >> 7;
        uint64_t len = p[1] & 127;
        size_t off = 2;
        if (len == 126) {
            if (n < 4)
                return;
            len = (uint64_t)p[2] << 8 | p[3];
            CHECK(len >= 126);
            off = 4;
        } else if (len == 127) {
            if (n < 10)
                return;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
            CHECK(len >= 65536 && !(len >> 63));
            off = 10;
        }
        if (masked)
            off += 4;
        if (n < off || n - off < len)
            return;
        CHECK(!c->closed);
        CHECK(fin == 1 && rsv == 0);
        CHECK(masked == (unsigned)c->masked);
        CHECK(op == 1 || op == 2 || op == 8 || op == 9 || op == 10);
        if (op >= 8)
            CHECK(len <= 125);
        if (op == 8) {
            CHECK(len != 1);
            c->closed = 1;
        }
        av__buf_consume(&c->acc, off + (size_t)len);
    }
}

/* drain moves up to |n| bytes of |out| into the checker. */
static void drain(av_buf *out, out_check *c, size_t n)
{
    if (n > av__buf_len(out))
        n = av__buf_len(out);
    if (n == 0)
        return;
    CHECK(av__buf_append(&c->acc, av__buf_head(out), n) == 0);
    av__buf_consume(out, n);
    check_frames(c);
}

/* fuzz_filter replaces a placeholder and refuses messages with "\x01!". */
static int fuzz_filter(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len)
{
    (void)ud;
    if (len >= 2 && memmem(msg, len, "\x01!", 2))
        return AV_ERR_DENIED;
    uint8_t *res = NULL;
    size_t rl = 0;
    int r = av__subst_replace(msg, len, (const uint8_t *)"__K__", 5,
                              (const uint8_t *)"sk-secret-value", 15, 1 << 16, &res, &rl);
    if (r < 0)
        return r;
    if (r == 1) {
        *out = res;
        *out_len = rl;
    }
    return 0;
}

/* fuzz_bridge runs the bridge on the two byte streams. */
static void fuzz_bridge(uint8_t cfg, const uint8_t *ag, size_t ag_len, const uint8_t *up,
                        size_t up_len, rng *r)
{
    static const size_t caps[4] = {0, 64, 1000, 70000};
    av_ws_bridge *b = NULL;
    if (av__ws_bridge_new(&b, caps[cfg & 3], (cfg & 4) ? fuzz_filter : NULL, NULL) != AV_OK)
        return;
    av_buf ain, aout, uin, uout;
    av__buf_init(&ain, 1 + rng_next(r, 4096));
    av__buf_init(&uin, 1 + rng_next(r, 4096));
    av__buf_init(&aout, 1 + rng_next(r, (cfg & 8) ? 16 : 4096));
    av__buf_init(&uout, 1 + rng_next(r, (cfg & 8) ? 16 : 4096));
    out_check ca = {.masked = 0}, cu = {.masked = 1};
    av__buf_init(&ca.acc, 1 << 22);
    av__buf_init(&cu.acc, 1 << 22);

    size_t ag_off = 0, up_off = 0;
    int ag_eof = 0, up_eof = 0, idle = 0;
    for (long round = 0; round < 200000; round++) {
        /* feed */
        size_t ag_before = ag_off, up_before = up_off;
        size_t n = rng_next(r, 600);
        if (n > ag_len - ag_off)
            n = ag_len - ag_off;
        if (n > av__buf_room(&ain))
            n = av__buf_room(&ain);
        CHECK(av__buf_append(&ain, ag + ag_off, n) == 0);
        ag_off += n;
        n = rng_next(r, 600);
        if (n > up_len - up_off)
            n = up_len - up_off;
        if (n > av__buf_room(&uin))
            n = av__buf_room(&uin);
        CHECK(av__buf_append(&uin, up + up_off, n) == 0);
        up_off += n;
        int fed = ag_off != ag_before || up_off != up_before;
        /* a stream ends when all of it was fed (early when cfg says so), or
         * when the bridge stopped taking it */
        if (!ag_eof && ((ag_off == ag_len && ((cfg & 16) || idle > 2)) || idle > 5)) {
            av__ws_bridge_agent_eof(b);
            ag_eof = 1;
        }
        if (!up_eof && ((up_off == up_len && ((cfg & 32) || idle > 2)) || idle > 5)) {
            av__ws_bridge_upstream_eof(b);
            up_eof = 1;
        }

        int rc = av__ws_bridge_pump(b, &ain, &aout, &uin, &uout);
        CHECK(rc == 0 || rc == 1 || rc == AV_ERR_PARSE || rc == AV_ERR_DENIED ||
              rc == AV_ERR_NOMEM);
        CHECK(av__buf_len(&aout) <= aout.max && av__buf_len(&uout) <= uout.max);
        if (rc == AV_ERR_NOMEM)
            break;

        /* drain: sometimes partly, sometimes nothing */
        size_t da = rng_next(r, 4) ? rng_next(r, 5000) : 0;
        size_t du = rng_next(r, 4) ? rng_next(r, 5000) : 0;
        size_t before = av__buf_len(&aout) + av__buf_len(&uout);
        drain(&aout, &ca, da);
        drain(&uout, &cu, du);
        int drained = before != av__buf_len(&aout) + av__buf_len(&uout);

        if (ag_eof && up_eof && rc == 0 && !drained && av__buf_len(&aout) == 0 &&
            av__buf_len(&uout) == 0) {
            /* both streams ended, everything written and read: done */
            CHECK(av__ws_bridge_done(b));
            break;
        }
        idle = (rc == 0 && !drained && !fed) ? idle + 1 : 0;
        CHECK(idle < 1000); /* no livelock */
    }
    av_ws_stats st;
    av__ws_bridge_stats(b, &st);
    CHECK(st.close_code_agent == 0 || (st.close_code_agent >= 1000 && st.close_code_agent < 5000));
    av__ws_bridge_free(b);
    av__buf_free(&ain);
    av__buf_free(&uin);
    av__buf_free(&aout);
    av__buf_free(&uout);
    av__buf_free(&ca.acc);
    av__buf_free(&cu.acc);
}

#define FUZZ_SECRET "sk-secret-value"

/* A checker for the scrub relay's output toward the agent. */
typedef struct relay_check {
    av_buf acc;    /* bytes not yet parsed */
    av_buf msg;    /* the data message being reassembled */
    int in_msg, closed;
    int scrubbed;  /* the relay had the secret's patterns */
} relay_check;

static void check_relay(relay_check *c)
{
    for (;;) {
        size_t n = av__buf_len(&c->acc);
        if (n < 2)
            return;
        const uint8_t *p = av__buf_head(&c->acc);
        unsigned fin = p[0] >> 7, rsv = (p[0] >> 4) & 7, op = p[0] & 15;
        uint64_t len = p[1] & 127;
        size_t off = 2;
        CHECK(!(p[1] & 0x80));
        if (len == 126) {
            if (n < 4)
                return;
            len = (uint64_t)p[2] << 8 | p[3];
            CHECK(len >= 126);
            off = 4;
        } else if (len == 127) {
            if (n < 10)
                return;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
            CHECK(len >= 65536 && len <= ((uint64_t)1 << 20));
            off = 10;
        }
        if (n - off < len)
            return;
        CHECK(!c->closed && rsv == 0);
        const uint8_t *pay = p + off;
        if (op >= 8) {
            CHECK(fin && len <= 125 && (op == 8 || op == 9 || op == 10));
            CHECK(!c->scrubbed || len == 0 || !memmem(pay, (size_t)len, FUZZ_SECRET, sizeof(FUZZ_SECRET) - 1));
            if (op == 8) {
                CHECK(len != 1);
                c->closed = 1;
            }
        } else {
            CHECK(op == 0 ? c->in_msg : (op == 1 || op == 2) && !c->in_msg);
            if (av__buf_room(&c->msg) >= len) {
                CHECK(av__buf_append(&c->msg, pay, (size_t)len) == 0);
            } else { /* keep the tail, where a secret could still straddle */
                av__buf_consume(&c->msg, av__buf_len(&c->msg));
                size_t keep = len > 64 ? 64 : (size_t)len;
                CHECK(av__buf_append(&c->msg, pay + len - keep, keep) == 0);
            }
            CHECK(!c->scrubbed || av__buf_len(&c->msg) == 0 ||
                  !memmem(av__buf_head(&c->msg), av__buf_len(&c->msg), FUZZ_SECRET,
                          sizeof(FUZZ_SECRET) - 1));
            c->in_msg = !fin;
            if (fin)
                av__buf_consume(&c->msg, av__buf_len(&c->msg));
        }
        av__buf_consume(&c->acc, off + (size_t)len);
    }
}

/* fuzz_relay runs the upstream bytes through the scrub-mode relay. */
static void fuzz_relay(uint8_t cfg, const uint8_t *up, size_t up_len, rng *r)
{
    static av_scrub_set *set;
    if (!set) {
        av_secret *sec = av__secret_new(FUZZ_SECRET, sizeof(FUZZ_SECRET) - 1);
        const av_secret *v[1] = {sec};
        CHECK(sec && av__scrub_set_new(&set, v, 1) == AV_OK);
        av__secret_free(sec);
    }
    static const size_t caps[4] = {0, 64, 1000, 70000};
    av_ws_scrub *w = NULL;
    if (av__ws_scrub_new(&w, (cfg & 128) ? NULL : set, (cfg & 64) != 0, caps[cfg & 3]) != AV_OK)
        return;
    av_buf in, out;
    av__buf_init(&in, 1 + rng_next(r, 4096));
    av__buf_init(&out, 1 + rng_next(r, (cfg & 8) ? 16 : 4096));
    relay_check c = {.scrubbed = !(cfg & 128)};
    av__buf_init(&c.acc, (1 << 20) + 64);
    av__buf_init(&c.msg, 1 << 16);
    size_t off = 0;
    int idle = 0;
    for (long round = 0; round < 200000; round++) {
        size_t n = rng_next(r, 600);
        if (n > up_len - off)
            n = up_len - off;
        if (n > av__buf_room(&in))
            n = av__buf_room(&in);
        CHECK(av__buf_append(&in, up + off, n) == 0);
        off += n;
        int rc = av__ws_scrub_pump(w, &in, &out);
        CHECK(rc == 0 || rc == 1 || rc == AV_ERR_PARSE || rc == AV_ERR_DENIED || rc == AV_ERR_NOMEM);
        CHECK(av__buf_len(&out) <= out.max);
        if (rc < 0) {
            /* the close frame toward the agent is out */
            CHECK(rc == AV_ERR_NOMEM || av__ws_scrub_closed(w));
            break;
        }
        size_t before = av__buf_len(&out), d = rng_next(r, 4) ? rng_next(r, 5000) : 0;
        if (d > before)
            d = before;
        if (d) {
            CHECK(av__buf_append(&c.acc, av__buf_head(&out), d) == 0);
            av__buf_consume(&out, d);
            check_relay(&c);
        }
        if (off == up_len && rc == 0 && d == 0 && before == 0)
            break; /* everything fed, nothing moves */
        idle = (rc == 0 && d == 0 && n == 0) ? idle + 1 : 0;
        CHECK(idle < 1000);
    }
    av__ws_scrub_free(w);
    av__buf_free(&in);
    av__buf_free(&out);
    av__buf_free(&c.acc);
    av__buf_free(&c.msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    rng r;
    rng_seed(&r, data, size);
    uint8_t cfg = data[1];
    const uint8_t *rest = data + 2;
    size_t rest_len = size - 2;
    size_t split = rest_len * data[0] / 255;
    fuzz_bridge(cfg, rest, split, rest + split, rest_len - split, &r);
    fuzz_relay(cfg, rest + split, rest_len - split, &r);

    /* accept key on a prefix: accepted keys give 28 base64 chars + '=' */
    char out[29];
    size_t kl = rest_len < 30 ? rest_len : 24 + (data[0] & 3);
    if (kl > rest_len)
        kl = rest_len;
    if (av__ws_accept_key((const char *)rest, kl, out) == AV_OK)
        CHECK(kl == 24 && strlen(out) == 28 && out[27] == '=');

    /* substitution: needle and replacement from the input */
    if (rest_len >= 4) {
        size_t nl = 1 + (data[0] % 3), rl = data[1] % 5;
        if (nl + rl <= rest_len) {
            const uint8_t *needle = rest, *repl = rest + nl, *in = rest + nl + rl;
            size_t in_len = rest_len - nl - rl;
            uint8_t *res = NULL;
            size_t res_len = 0;
            size_t max_out = (cfg & 64) ? in_len : in_len * 4 + 8;
            int rc = av__subst_replace(in, in_len, needle, nl, repl, rl, max_out, &res, &res_len);
            CHECK(rc == 0 || rc == 1 || rc == AV_ERR_LIMIT);
            if (rc == 1) {
                CHECK(res_len <= max_out);
                /* count hits the simple way and check the length */
                size_t hits = 0;
                for (size_t i = 0; i + nl <= in_len;) {
                    if (memcmp(in + i, needle, nl) == 0) {
                        hits++;
                        i += nl;
                    } else {
                        i++;
                    }
                }
                CHECK(hits > 0 && res_len == in_len - hits * nl + hits * rl);
                av__wipe(res, res_len);
                av__free(res);
            } else {
                CHECK(res == NULL);
            }
        }
    }
    return 0;
}
