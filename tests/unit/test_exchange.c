/* test_exchange.c - the exchange without sockets.
 *
 * A loopback agent (an av_agent_ops that serves a scripted request body in
 * slices no larger than the sink's room and records the response head,
 * body and trailers written to it, with a room of its own so back-pressure
 * shows) and a scripted link (an av_link_ops that records the request head
 * and body the exchange sends, within a room of its own, and plays a
 * scripted response: head, body slices, trailers, a failure) drive
 * av_exchange.c the way the pump does: step until nothing progresses, then
 * let each side read some, and step again.
 *
 * The exchange begins on a socketless connection (conn_harness.h) for its
 * context; its agent is the loopback one from the start, and its link is
 * swapped for the scripted one once av__x_begin chose the upstream (a fake
 * pooled connection, so nothing is dialled).
 *
 * Cases: intake and injection as the link sees them; placeholders refused
 * before the link is used; the scrubbing gates (a field and a body echoing
 * the secret, split anywhere; an encoding that cannot be scrubbed; no
 * scrubbing without a credential); both body directions with back-pressure
 * (nothing written beyond the room offered, nothing lost or reordered);
 * trailers both ways; failures before and after the response head; the
 * agent going away; HEAD; the WebSocket switch (the key, the 101 checks).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "conn_harness.h"

#define NF(a) (sizeof(a) / sizeof((a)[0]))
#define F(n, v) {n, sizeof(n) - 1, v, sizeof(v) - 1}
#define PH "AV_PLACEHOLDER_0123"

/* ---- the loopback agent ------------------------------------------------------- */

typedef struct loop_agent {
    /* request body, served in slices of at most |slice| bytes */
    const char *body;
    size_t body_len, body_at, slice;
    const av_h1_field *req_trailers; /* given with the end of the body */
    size_t nreq_trailers;
    int reset_after_body;            /* the agent resets once its body is out */
    /* response sink */
    size_t room;                     /* what it takes before it stops reading */
    int head_busy;                   /* head() says "no room" this many times */
    int heads, status, kind;
    uint64_t len;
    char head[8192];                 /* "name: value\n" lines */
    av_buf resp;
    size_t writes, over_room;
    int write_nomem;                 /* write() fails (out of memory) from then on */
    int ended;
    char trailers[2048];
    /* the exchange's end */
    int error_status;                /* a proxy-made answer */
    char error_why[400];
    int failed, cut, refused, finished, upgraded;
    int x_status, x_end;             /* read at finish */
    unsigned long x_redactions;
} loop_agent;

static loop_agent *LA;

static void fields_text(char *out, size_t cap, const av_h1_field *f, size_t n)
{
    size_t o = strlen(out);
    for (size_t i = 0; i < n && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%.*s: %.*s\n", (int)f[i].name_len, f[i].name, (int)f[i].value_len,
                              f[i].value);
}

static void la_intake(av_exchange *x, const av_req_in *in)
{
    (void)in;
    x->req_done = LA->body_len == 0 && !LA->nreq_trailers;
}

static int la_pump_body(av_exchange *x, const av_body_sink *sink)
{
    int progress = 0;
    while (!x->req_done) {
        size_t left = LA->body_len - LA->body_at;
        if (left == 0) {
            if (LA->nreq_trailers) {
                int rc = av__x_keep_trailers(x, 1, LA->req_trailers, LA->nreq_trailers, &x->req_tr);
                if (rc) {
                    av__x_refuse_trailers(x, rc);
                    return -1;
                }
            }
            x->req_done = 1;
            if (LA->reset_after_body)
                x->a_closed = 1;
            return 1;
        }
        size_t room = sink->room(x);
        size_t n = left < room ? left : room;
        if (n > LA->slice)
            n = LA->slice;
        if (n == 0)
            break;
        if (sink->write(x, (const uint8_t *)LA->body + LA->body_at, n) < 0)
            return -1;
        LA->body_at += n;
        progress = 1;
    }
    return progress;
}

static size_t la_body_pending(const av_exchange *x)
{
    (void)x;
    return 0;
}

static int la_send_continue(av_exchange *x)
{
    (void)x;
    return 0;
}

static int la_body_aborted(const av_exchange *x)
{
    return x->a_closed;
}

static int la_head(av_exchange *x, int status, const char *reason, size_t reason_len, const av_h1_field *fields,
                   size_t nfields, int kind, uint64_t len)
{
    (void)reason;
    (void)reason_len;
    if (LA->head_busy > 0) {
        LA->head_busy--;
        return AV_ERR_LIMIT;
    }
    if (status < 200)
        return 0;
    LA->heads++;
    LA->status = status;
    LA->kind = kind;
    LA->len = len;
    LA->head[0] = '\0';
    fields_text(LA->head, sizeof(LA->head), fields, nfields);
    x->resp_kind = kind;
    return 0;
}

static int la_head_fits(av_exchange *x, size_t n)
{
    (void)x;
    (void)n;
    return LA->head_busy == 0;
}

static size_t la_room(av_exchange *x)
{
    (void)x;
    return LA->room;
}

static int la_write(av_exchange *x, const uint8_t *p, size_t n)
{
    (void)x;
    if (LA->write_nomem)
        return AV_ERR_NOMEM;
    LA->writes++;
    if (n > LA->room)
        LA->over_room++;
    LA->room = n > LA->room ? 0 : LA->room - n;
    assert_int_equal(av__buf_append(&LA->resp, p, n), AV_OK);
    return AV_OK;
}

static int la_end(av_exchange *x)
{
    LA->ended++;
    fields_text(LA->trailers, sizeof(LA->trailers), x->resp_tr.f, x->resp_tr.n);
    return 1;
}

static void la_respond_error(av_exchange *x, int status, const char *why, int json)
{
    (void)x;
    (void)json;
    LA->error_status = status;
    snprintf(LA->error_why, sizeof(LA->error_why), "%s", why ? why : "");
}

static void la_fail(av_exchange *x, int status, const char *why)
{
    LA->failed++;
    if (!x->resp_head_done) {
        x->status = status;
        la_respond_error(x, status, why, 0);
    } else {
        LA->cut++; /* a stream reset / a cut connection */
    }
    x->req_done = 1;
    x->resp_done = 1;
    av__x_finish(x, why);
}

static void la_refused(av_exchange *x, const char *why)
{
    LA->refused++;
    x->resp_done = 1;
    av__x_finish(x, why);
}

static void la_dropped(av_exchange *x)
{
    x->active = 0;
    x->done = 1;
}

static int la_check_done(av_exchange *x)
{
    if (x->a_closed && !(x->resp_done && x->req_done)) {
        x->up_reusable = 0;
        x->resp_done = 1;
        if (!x->end)
            x->end = AV_END_CLIENT_ABORT;
        av__x_finish(x, x->resp_head_done ? NULL : "agent reset the stream");
        return 1;
    }
    if (x->resp_done && x->req_done) {
        av__x_finish(x, NULL);
        return 1;
    }
    if (x->resp_done && !x->req_done) {
        x->up_reusable = 0;
        av__x_finish(x, NULL);
        return 1;
    }
    return 0;
}

static void la_finish(av_exchange *x)
{
    LA->finished++;
    LA->x_status = x->status;
    LA->x_end = x->end;
    LA->x_redactions = x->redactions;
    x->active = 0;
    x->done = 1;
}

static int la_closing(const av_exchange *x)
{
    (void)x;
    return 0;
}

static void la_close_after(av_exchange *x)
{
    (void)x;
}

static int la_upgrade(av_exchange *x, const av_h1_response *resp)
{
    (void)x;
    LA->upgraded++;
    fields_text(LA->head, sizeof(LA->head), resp->fields, resp->nfields);
    return 0;
}

static const av_agent_ops loop_agent_ops = {
    .proto = "loop",
    .relays_1xx = 0,
    .length_with_trailers = 1,
    .joins_cookies = 0,
    .intake = la_intake,
    .pump_body = la_pump_body,
    .body_pending = la_body_pending,
    .send_continue = la_send_continue,
    .body_aborted = la_body_aborted,
    .head = la_head,
    .head_fits = la_head_fits,
    .room = la_room,
    .write = la_write,
    .end = la_end,
    .respond_error = la_respond_error,
    .fail = la_fail,
    .refused = la_refused,
    .dropped = la_dropped,
    .check_done = la_check_done,
    .finish = la_finish,
    .closing = la_closing,
    .close_after = la_close_after,
    .upgrade = la_upgrade,
};

/* ---- the scripted link ------------------------------------------------------------ */

enum { SL_HEAD = 1, SL_BODY, SL_TRAILERS, SL_END, SL_FAIL };

typedef struct sl_event {
    int kind;
    int status;       /* SL_HEAD, SL_FAIL */
    const char *text; /* SL_HEAD, SL_TRAILERS: "name: value\n" lines; SL_BODY: bytes; SL_FAIL: why */
    long long len;    /* SL_HEAD: Content-Length, -1 unknown; SL_BODY: bytes (0: strlen) */
} sl_event;

typedef struct scripted_link {
    const sl_event *ev;
    size_t nev, at, body_at;
    size_t room;              /* request-body room */
    size_t over_room;
    int write_nomem;          /* write() fails (out of memory) */
    int steps, heads_sent, ended;
    char head[8192];          /* "METHOD TARGET\nhost: H\nname: value\n..." */
    av_buf body;
    char trailers[2048];      /* the request trailers it was given */
    int aborted;
    int early;                /* respond before the request body ended */
    int delay;                /* steps before the response starts */
    av_h1_field f[32];
    char fbuf[4096];
} scripted_link;

static scripted_link *SL;

static size_t sl_fields(const char *text)
{
    size_t n = 0;
    snprintf(SL->fbuf, sizeof(SL->fbuf), "%s", text ? text : "");
    char *p = SL->fbuf;
    while (*p && n < NF(SL->f)) {
        char *nl = strchr(p, '\n');
        char *colon = strchr(p, ':');
        assert_non_null(nl);
        assert_true(colon && colon < nl);
        SL->f[n].name = p;
        SL->f[n].name_len = (size_t)(colon - p);
        char *v = colon + 1;
        while (*v == ' ')
            v++;
        SL->f[n].value = v;
        SL->f[n].value_len = (size_t)(nl - v);
        n++;
        p = nl + 1;
    }
    return n;
}

static size_t ev_len(const sl_event *e)
{
    return e->len ? (size_t)e->len : strlen(e->text);
}

/* Play the script into the exchange's response sink while it has room. */
static int sl_play(av_exchange *x)
{
    int progress = 0;
    if (!x->req_ended && !SL->early)
        return 0; /* like most origins: the whole request first */
    if (SL->steps <= SL->delay)
        return 0;
    while (SL->at < SL->nev && x->active) {
        const sl_event *e = &SL->ev[SL->at];
        if (e->kind == SL_HEAD && e->status < 200) {
            /* interim: passed on where the agent relays them, no state */
            size_t n = sl_fields(e->text);
            int rc = av__x_resp_head(x, e->status, NULL, 0, SL->f, n, RK_NONE, 0);
            if (rc == AV_ERR_LIMIT)
                break;
            assert_int_equal(rc, 0);
        } else if (e->kind == SL_HEAD) {
            size_t n = sl_fields(e->text);
            int kind = x->is_head || e->status == 204 || e->status == 304 ? RK_NONE
                       : e->len >= 0                                     ? RK_LENGTH
                                                                         : RK_UNKNOWN;
            int rc = av__x_resp_head(x, e->status, NULL, 0, SL->f, n, kind, e->len >= 0 ? (uint64_t)e->len : 0);
            if (rc == AV_ERR_LIMIT)
                break;
            if (rc == AV_ERR_DENIED) {
                av__x_fail(x, 502, "upstream response uses a content encoding that cannot be scrubbed");
                return 1;
            }
            assert_int_equal(rc, 0);
            x->status = e->status;
            x->resp_head_done = 1;
            if (kind == RK_NONE || (kind == RK_LENGTH && e->len == 0))
                x->resp_done = 1;
        } else if (e->kind == SL_BODY) {
            size_t total = ev_len(e), left = total - SL->body_at;
            size_t room = av__x_body_room(x);
            size_t n = left < room ? left : room;
            if (n == 0)
                break;
            if (av__x_body_write(x, (const uint8_t *)e->text + SL->body_at, n) < 0)
                return 1; /* the exchange failed */
            SL->body_at += n;
            progress = 1;
            if (SL->body_at < total)
                continue;
            SL->body_at = 0;
        } else if (e->kind == SL_TRAILERS) {
            size_t n = sl_fields(e->text);
            assert_int_equal(av__x_keep_trailers(x, 0, SL->f, n, &x->resp_tr), AV_OK);
        } else if (e->kind == SL_END) {
            av__x_body_end(x);
        } else if (e->kind == SL_FAIL) {
            SL->at++;
            SL->aborted = 1;
            av__x_fail(x, e->status, e->text);
            return 1;
        }
        SL->at++;
        progress = 1;
    }
    progress |= av__x_end_pending(x);
    if (x->active && x->scrub) {
        int sp = av__x_scrub_pump(x);
        if (sp < 0)
            return 1;
        progress |= sp;
    }
    return progress;
}

static int sl_step(av_exchange *x)
{
    int progress = 0;
    SL->steps++;
    if (!x->head_sent) {
        static av_h1_field f[X_RQ_FIELDS];
        size_t n = av__rq_fields(x, f, NF(f));
        snprintf(SL->head, sizeof(SL->head), "%.*s %.*s\nhost: %s\n", (int)x->m_len, av__rq_ptr(x, x->m_off),
                 (int)x->t_len, av__rq_ptr(x, x->t_off), x->hostval);
        fields_text(SL->head, sizeof(SL->head), f, n);
        SL->heads_sent++;
        x->head_sent = 1;
        av__buf_free_wipe(&x->rq);
        progress = 1;
    }
    progress |= av__x_pump_request_body(x);
    if (!x->active)
        return 1;
    progress |= sl_play(x);
    if (!x->active)
        return 1;
    progress |= x->agent->check_done(x);
    return progress;
}

static size_t sl_room(av_exchange *x)
{
    (void)x;
    return SL->room;
}

static int sl_write(av_exchange *x, const uint8_t *p, size_t n)
{
    (void)x;
    if (SL->write_nomem)
        return AV_ERR_NOMEM;
    if (n > SL->room)
        SL->over_room++;
    SL->room = n > SL->room ? 0 : SL->room - n;
    assert_int_equal(av__buf_append(&SL->body, p, n), AV_OK);
    return AV_OK;
}

static int sl_end(av_exchange *x)
{
    SL->ended++;
    fields_text(SL->trailers, sizeof(SL->trailers), x->req_tr.f, x->req_tr.n);
    return 1;
}

static int sl_aborted(const av_exchange *x)
{
    (void)x;
    return SL->aborted;
}

static const av_link_ops scripted_link_ops = {
    .proto = "script",
    .step = sl_step,
    .room = sl_room,
    .write = sl_write,
    .end = sl_end,
    .aborted = sl_aborted,
};

/* ---- the harness ---------------------------------------------------------------------- */

typedef struct xt {
    xh h;
    loop_agent a;
    scripted_link l;
    av_exchange *x;
} xt;

#define API_XKEY                                                                                                   \
    "[service \"api\"]\nhost = api.test\nscheme = http\nport = 80\nauth = header x-api-key {secret}\n"         \
    "secret = callback:key\n"
#define API "[service \"api\"]\nhost = api.test\nscheme = http\nport = 80\nauth = bearer\nsecret = callback:key\n"

static const char *xt_proxy_keys; /* [proxy] keys for the next xt_begin */

/* Begin |method| |target| with |f| to api.test:80 on the loopback agent;
 * the response is |ev|. Returns av__x_begin's result. */
static int xt_begin(xt *t, const char *conf, const char *method, const char *target, const av_h1_field *f, size_t n,
                    const char *body, const sl_event *ev, size_t nev, const char *host)
{
    memset(&t->a, 0, sizeof(t->a));
    memset(&t->l, 0, sizeof(t->l));
    LA = &t->a;
    SL = &t->l;
    t->a.body = body ? body : "";
    t->a.body_len = strlen(t->a.body);
    t->a.slice = 1u << 30;
    t->a.room = 1u << 30;
    av__buf_init(&t->a.resp, 1u << 26);
    t->l.ev = ev;
    t->l.nev = nev;
    t->l.room = 1u << 30;
    av__buf_init(&t->l.body, 1u << 26);
    xh_new(&t->h, xt_proxy_keys, conf);
    const char *dh = host ? host : "api.test";
    xh_pool_fake(&t->h, dh, 80, host ? "-/-" : "api/-");
    av_exchange *x = &t->h.c->x;
    t->x = x;
    x->agent = &loop_agent_ops;
    x->sid = 1; /* a stream-like agent: the exchange is not the connection's */
    av_req_in in = {.method = method, .method_len = strlen(method), .target = target, .target_len = strlen(target),
                    .fields = f, .nfields = n, .minor = 1, .framing = body ? RB_LENGTH : RB_NONE,
                    .length = body ? strlen(body) : 0};
    av_authority d;
    memset(&d, 0, sizeof(d));
    snprintf(d.host, sizeof(d.host), "%s", dh);
    d.port = 80;
    int rc = xh_begin(x, &in, &d, 0);
    if (rc == 0 && x->active && x->link)
        x->link = &scripted_link_ops; /* the fake pooled connection stays in x->up, unused */
    return rc;
}

/* Step until nothing progresses; then the agent reads |agent_read| more
 * and the upstream |link_read| more; again, until the exchange is over. */
static void xt_run(xt *t, size_t agent_read, size_t link_read)
{
    for (int round = 0; round < 1000000 && t->x->active; round++) {
        int progress = 0;
        for (int i = 0; i < 64 && t->x->active && av__x_step(t->x); i++)
            progress = 1;
        if (!t->x->active)
            return;
        if (!progress && !agent_read && !link_read)
            fail_msg("the exchange is stuck");
        if (t->a.room < agent_read)
            t->a.room = agent_read; /* (the agent read what it had) */
        if (t->l.room < link_read)
            t->l.room = link_read;
        if (round > 900000)
            fail_msg("the exchange never finished");
    }
}

static void xt_free(xt *t)
{
    if (t->x)
        av__x_reset(t->x);
    av__buf_free(&t->a.resp);
    av__buf_free(&t->l.body);
    xh_free(&t->h);
    LA = NULL;
    SL = NULL;
}

static const char *resp(const xt *t)
{
    static char s[1u << 16];
    size_t n = t->a.resp.len < sizeof(s) - 1 ? t->a.resp.len : sizeof(s) - 1;
    if (n)
        memcpy(s, av__buf_head(&t->a.resp), n);
    s[n] = '\0';
    return s;
}

static void has_line(const char *text, const char *line)
{
    char want[1024];
    snprintf(want, sizeof(want), "\r\n%s\r\n", line);
    if (!strstr(text, want))
        fail_msg("no line \"%s\" in:\n%s", line, text);
}

static int mem_has(const av_buf *b, const char *needle)
{
    return memmem(av__buf_head(b), b->len, needle, strlen(needle)) != NULL;
}

/* ---- intake and injection ---------------------------------------------------------------- */

static void intake_and_injection(void **state)
{
    (void)state;
    static const av_h1_field f[] = {
        F("Accept", "*/*"), F("Connection", "keep-alive, X-Drop"), F("X-Drop", "1"), F("Keep-Alive", "5"),
        F("Proxy-Authorization", "Bearer t"), F("X-Agentvault-Token", "t"), F("authorization", "Bearer agent"),
        F("Host", "api.test"), F("X-Keep", "yes"),
    };
    static const sl_event ev[] = {
        {SL_HEAD, 200, "content-type: text/plain\nx-up: 1\n", 2},
        {SL_BODY, 0, "ok", 0},
        {SL_END, 0, "", 0},
    };
    xt t;
    assert_int_equal(xt_begin(&t, API, "GET", "/v1/models?x=1", f, NF(f), NULL, ev, NF(ev), NULL), 0);
    xt_run(&t, 0, 0);
    assert_int_equal(t.l.heads_sent, 1);
    assert_string_equal(t.l.head, "GET /v1/models?x=1\nhost: api.test\nAccept: */*\nX-Keep: yes\n"
                                  "Authorization: Bearer " XH_KEY "\n");
    assert_int_equal(t.a.heads, 1);
    assert_int_equal(t.a.status, 200);
    assert_int_equal(t.a.kind, RK_UNKNOWN); /* scrubbed: delimited by the agent, not a length */
    assert_string_equal(t.a.head, "content-type: text/plain\nx-up: 1\n");
    assert_string_equal(resp(&t), "ok");
    assert_int_equal(t.a.ended, 1);
    assert_int_equal(t.a.finished, 1);
    assert_int_equal(t.a.x_status, 200);
    assert_int_equal(t.l.ended, 1); /* no body: its end was still sent */
    xt_free(&t);
}

/* A placeholder where the service does not allow it: refused before the
 * link exists or the secret is asked for. */
static void placeholder_refused_before_link(void **state)
{
    (void)state;
    xt t;
    assert_int_equal(xt_begin(&t, API "placeholder = " PH "\nplaceholder_in = header\n", "GET", "/a/" PH, NULL, 0,
                              NULL, NULL, 0, NULL),
                     -1);
    assert_int_equal(t.a.error_status, 403);
    assert_non_null(strstr(t.a.error_why, "placeholder_in does not include path"));
    assert_int_equal(t.l.steps, 0);
    assert_int_equal(t.h.asked, 0);
    xt_free(&t);
}

/* ---- scrubbing gates ------------------------------------------------------------------------ */

/* The secret echoed in a field and in the body (cut across slices of the
 * agent's room): neither reaches the agent. */
static void scrub_field_and_body(void **state)
{
    (void)state;
    static char body[4096];
    snprintf(body, sizeof(body), "{\"echo\":\"%s\",\"pad\":\"%0512d\",\"again\":\"%s\"}", XH_KEY, 0, XH_KEY);
    sl_event ev[] = {
        {SL_HEAD, 200, "content-type: application/json\nx-echo: Bearer " XH_KEY "\n", (long long)strlen(body)},
        {SL_BODY, 0, body, 0},
        {SL_END, 0, "", 0},
    };
    for (size_t slice = 1; slice <= 97; slice += 16) {
        xt t;
        assert_int_equal(xt_begin(&t, API, "GET", "/", NULL, 0, NULL, ev, NF(ev), NULL), 0);
        t.a.room = slice;
        xt_run(&t, slice, 0);
        assert_int_equal(t.a.status, 200);
        assert_null(strstr(t.a.head, XH_KEY));
        assert_false(mem_has(&t.a.resp, XH_KEY));
        assert_true(mem_has(&t.a.resp, "\"pad\":\"000"));
        assert_int_equal(t.a.over_room, 0);
        assert_int_equal(t.a.x_redactions, 3);
        assert_int_equal(t.a.ended, 1);
        xt_free(&t);
    }
}

/* A body in an encoding the scrubber cannot read: 502, nothing relayed. */
static void scrub_refuses_unknown_encoding(void **state)
{
    (void)state;
    static const sl_event ev[] = {
        {SL_HEAD, 200, "content-encoding: br\n", 4},
        {SL_BODY, 0, "\x0b\x01\x80x", 4},
        {SL_END, 0, "", 0},
    };
    xt t;
    assert_int_equal(xt_begin(&t, API, "GET", "/", NULL, 0, NULL, ev, NF(ev), NULL), 0);
    xt_run(&t, 0, 0);
    assert_int_equal(t.a.heads, 0);
    assert_int_equal(t.a.error_status, 502);
    assert_non_null(strstr(t.a.error_why, "cannot be scrubbed"));
    assert_int_equal(t.a.resp.len, 0);
    xt_free(&t);
}

/* No credential injected (no service): the response passes as it is, with
 * its length. */
static void no_scrub_without_credential(void **state)
{
    (void)state;
    static const sl_event ev[] = {
        {SL_HEAD, 200, "x-echo: " XH_KEY "\ncontent-encoding: br\n", 7},
        {SL_BODY, 0, XH_KEY, 7},
        {SL_END, 0, "", 0},
    };
    xt t;
    assert_int_equal(xt_begin(&t, API, "GET", "/", NULL, 0, NULL, ev, NF(ev), "other.test"), 0);
    xt_run(&t, 0, 0);
    assert_int_equal(t.a.kind, RK_LENGTH);
    assert_int_equal(t.a.len, 7);
    assert_non_null(strstr(t.a.head, XH_KEY));
    assert_int_equal(t.a.resp.len, 7);
    assert_int_equal(t.a.x_redactions, 0);
    xt_free(&t);
}

/* ---- bodies and back-pressure ------------------------------------------------------------------ */

static char *pattern(size_t n)
{
    char *p = av__malloc(n + 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('a' + (i * 7 + i / 251) % 26);
    p[n] = '\0';
    return p;
}

/* Agent -> link: the link never gets more than the room it offered; the
 * body arrives whole and in order, then its end, once. */
static void request_body_backpressure(void **state)
{
    (void)state;
    char *body = pattern(200000);
    static const sl_event ev[] = {{SL_HEAD, 204, "", 0}};
    static const size_t rooms[] = {1, 7, 1000, 65536};
    for (size_t i = 0; i < NF(rooms); i++) {
        xt t;
        assert_int_equal(xt_begin(&t, API, "POST", "/up", NULL, 0, body, ev, NF(ev), NULL), 0);
        t.l.room = 0;
        t.a.slice = 333;
        xt_run(&t, 0, rooms[i]);
        assert_int_equal(t.l.over_room, 0);
        assert_int_equal(t.l.body.len, 200000);
        assert_memory_equal(av__buf_head(&t.l.body), body, 200000);
        assert_int_equal(t.l.ended, 1);
        assert_int_equal(t.a.status, 204);
        assert_int_equal(t.a.finished, 1);
        xt_free(&t);
    }
    av__free(body);
}

/* Link -> agent: the agent never gets more than its room; a slow agent
 * holds the link's body back (scrubbed and unscrubbed). */
static void response_body_backpressure(void **state)
{
    (void)state;
    char *body = pattern(300000);
    sl_event ev[] = {
        {SL_HEAD, 200, "content-type: application/octet-stream\n", 300000},
        {SL_BODY, 0, body, 300000},
        {SL_END, 0, "", 0},
    };
    static const size_t rooms[] = {1, 100, 4096, 70000};
    for (int scrubbed = 0; scrubbed < 2; scrubbed++) {
        for (size_t i = 0; i < NF(rooms); i++) {
            xt t;
            assert_int_equal(xt_begin(&t, API, "GET", "/down", NULL, 0, NULL, ev, NF(ev), scrubbed ? NULL : "o.test"),
                             0);
            t.a.room = 0;
            xt_run(&t, rooms[i], 0);
            assert_int_equal(t.a.over_room, 0);
            assert_int_equal(t.a.resp.len, 300000);
            assert_memory_equal(av__buf_head(&t.a.resp), body, 300000);
            assert_int_equal(t.a.ended, 1);
            if (rooms[i] < 300000)
                assert_true(t.a.writes > 1);
            xt_free(&t);
        }
    }
    av__free(body);
}

/* ---- trailers ------------------------------------------------------------------------------------ */

/* Request trailers lose every copy of the credential field; response
 * trailers are scrubbed of the secret. */
static void trailers_both_ways(void **state)
{
    (void)state;
    /* (x-api-key: the service's own field, which only the credential check
     * drops; authorization and content-length are never trailers) */
    static const av_h1_field rt[] = {F("x-checksum", "abc"), F("X-Api-Key", "dummy"),
                                     F("authorization", "Bearer dummy"), F("content-length", "1")};
    static const sl_event ev[] = {
        {SL_HEAD, 200, "content-type: application/grpc\n", -1},
        {SL_BODY, 0, "data", 0},
        {SL_TRAILERS, 0, "grpc-status: 0\ngrpc-message: key " XH_KEY "\n", 0},
        {SL_END, 0, "", 0},
    };
    xt t;
    assert_int_equal(xt_begin(&t, API_XKEY, "POST", "/svc/M", NULL, 0, "req", ev, NF(ev), NULL), 0);
    t.a.req_trailers = rt;
    t.a.nreq_trailers = NF(rt);
    xt_run(&t, 0, 0);
    assert_string_equal(t.l.trailers, "x-checksum: abc\n");
    assert_null(strstr(t.a.trailers, XH_KEY));
    assert_non_null(strstr(t.a.trailers, "grpc-status: 0\n"));
    assert_non_null(strstr(t.a.trailers, "grpc-message: key "));
    assert_string_equal(resp(&t), "data");
    xt_free(&t);

    /* a request trailer with the placeholder: 403 */
    static const av_h1_field pt[] = {F("x-sig", PH)};
    assert_int_equal(xt_begin(&t, API "placeholder = " PH "\nplaceholder_in = header\n", "POST", "/svc/M", NULL, 0,
                              "req", ev, NF(ev), NULL),
                     0);
    t.a.req_trailers = pt;
    t.a.nreq_trailers = NF(pt);
    xt_run(&t, 0, 0);
    assert_int_equal(t.a.error_status, 403);
    assert_non_null(strstr(t.a.error_why, "found in a request trailer"));
    assert_int_equal(t.l.ended, 0);
    xt_free(&t);
}

/* ---- errors -------------------------------------------------------------------------------------- */

static void fail_before_and_after_head(void **state)
{
    (void)state;
    static const sl_event before[] = {{SL_FAIL, 502, "upstream closed the connection before sending a response", 0}};
    xt t;
    assert_int_equal(xt_begin(&t, API, "GET", "/", NULL, 0, NULL, before, NF(before), NULL), 0);
    xt_run(&t, 0, 0);
    assert_int_equal(t.a.heads, 0);
    assert_int_equal(t.a.error_status, 502);
    assert_int_equal(t.a.cut, 0);
    assert_int_equal(t.a.x_end, AV_END_UPSTREAM_ABORT);
    xt_free(&t);

    static const sl_event after[] = {
        {SL_HEAD, 200, "", 100},
        {SL_BODY, 0, "partial", 0},
        {SL_FAIL, 502, "upstream closed the connection in the middle of the body", 0},
    };
    /* (no credential: the scrubber would hold back a tail as long as the secret) */
    assert_int_equal(xt_begin(&t, API, "GET", "/", NULL, 0, NULL, after, NF(after), "o.test"), 0);
    xt_run(&t, 0, 0);
    assert_int_equal(t.a.heads, 1);
    assert_int_equal(t.a.error_status, 0); /* too late for an answer: cut */
    assert_int_equal(t.a.cut, 1);
    assert_int_equal(t.a.ended, 0);
    assert_string_equal(resp(&t), "partial");
    xt_free(&t);
}

/* Bytes that cannot be queued (out of memory) fail the exchange, never a
 * body relayed short: toward the link, a 502 before the response; toward
 * the agent (straight or through the scrubber), a cut after the head. */
static void write_out_of_memory(void **state)
{
    (void)state;
    static const sl_event ev204[] = {{SL_HEAD, 204, "", 0}};
    xt t;
    assert_int_equal(xt_begin(&t, API, "POST", "/up", NULL, 0, "request body", ev204, NF(ev204), NULL), 0);
    t.l.write_nomem = 1;
    xt_run(&t, 0, 0);
    assert_int_equal(t.a.heads, 0);
    assert_int_equal(t.a.error_status, 502);
    assert_string_equal(t.a.error_why, "out of memory relaying the request body");
    assert_int_equal(t.l.body.len, 0);
    assert_int_equal(t.l.ended, 0);
    assert_int_equal(t.a.finished, 1);
    xt_free(&t);

    static const sl_event ev[] = {
        {SL_HEAD, 200, "", 4},
        {SL_BODY, 0, "body", 0},
        {SL_END, 0, "", 0},
    };
    for (int scrubbed = 0; scrubbed < 2; scrubbed++) {
        assert_int_equal(xt_begin(&t, API, "GET", "/down", NULL, 0, NULL, ev, NF(ev), scrubbed ? NULL : "o.test"), 0);
        t.a.write_nomem = 1;
        xt_run(&t, 0, 0);
        assert_int_equal(t.a.heads, 1);
        assert_int_equal(t.a.failed, 1);
        assert_int_equal(t.a.cut, 1); /* the head is out: cut, not a short body that looks whole */
        assert_int_equal(t.a.ended, 0);
        assert_int_equal(t.a.resp.len, 0);
        assert_int_equal(t.a.finished, 1);
        xt_free(&t);
    }
}

/* The agent resets after its body, before the response: a client abort,
 * the upstream connection not reused. */
static void agent_goes_away(void **state)
{
    (void)state;
    static const sl_event ev[] = {{SL_HEAD, 200, "", 2}, {SL_BODY, 0, "ok", 0}, {SL_END, 0, "", 0}};
    xt t;
    assert_int_equal(xt_begin(&t, API, "POST", "/", NULL, 0, "body", ev, NF(ev), NULL), 0);
    t.a.reset_after_body = 1;
    t.l.room = 2; /* the body takes two rounds */
    t.l.delay = 100; /* the response is late */
    xt_run(&t, 0, 2);
    assert_int_equal(t.a.finished, 1);
    assert_int_equal(t.a.x_end, AV_END_CLIENT_ABORT);
    assert_false(t.x->up_reusable);
    xt_free(&t);
}

/* An early response (413 while the body is still coming): the exchange
 * ends without the rest of the body, and the upstream is not reused. */
static void early_response(void **state)
{
    (void)state;
    char *body = pattern(100000);
    static const sl_event ev[] = {{SL_HEAD, 413, "", 0}};
    xt t;
    assert_int_equal(xt_begin(&t, API, "POST", "/", NULL, 0, body, ev, NF(ev), NULL), 0);
    t.l.early = 1;
    t.l.room = 1000;
    xt_run(&t, 0, 0);
    assert_int_equal(t.a.status, 413);
    assert_int_equal(t.a.finished, 1);
    assert_true(t.l.body.len < 100000);
    assert_int_equal(t.l.ended, 0);
    assert_false(t.x->up_reusable);
    xt_free(&t);
    av__free(body);
}

/* HEAD: no body toward the agent, whatever the length says. */
static void head_request(void **state)
{
    (void)state;
    static const sl_event ev[] = {{SL_HEAD, 200, "content-length: 1234\n", 1234}};
    xt t;
    assert_int_equal(xt_begin(&t, API, "HEAD", "/", NULL, 0, NULL, ev, NF(ev), NULL), 0);
    xt_run(&t, 0, 0);
    assert_int_equal(t.a.kind, RK_NONE);
    assert_non_null(strstr(t.a.head, "content-length: 1234"));
    assert_int_equal(t.a.finished, 1);
    xt_free(&t);
}

/* A slow agent: head() says "no room" twice; the head is written once. */
static void head_waits_for_room(void **state)
{
    (void)state;
    static const sl_event ev[] = {{SL_HEAD, 200, "x-echo: " XH_KEY "\n", 3}, {SL_BODY, 0, "abc", 0}, {SL_END, 0, "", 0}};
    xt t;
    assert_int_equal(xt_begin(&t, API, "GET", "/", NULL, 0, NULL, ev, NF(ev), NULL), 0);
    t.a.head_busy = 2;
    xt_run(&t, 1, 0);
    assert_int_equal(t.a.heads, 1);
    assert_null(strstr(t.a.head, XH_KEY));
    assert_string_equal(resp(&t), "abc");
    xt_free(&t);
}

/* ---- the WebSocket switch ------------------------------------------------------------------------ */

static const char *accept_of(const char *key)
{
    static char acc[29];
    assert_int_equal(av__ws_accept_key(key, strlen(key), acc), 0);
    acc[28] = '\0';
    return acc;
}

static av_h1_response *parse_101(const char *text)
{
    static av_h1_response r;
    static char buf[2048];
    snprintf(buf, sizeof(buf), "%s", text);
    av_h1_scan scan;
    memset(&scan, 0, sizeof(scan));
    static const av_h1_limits lim = {AV_HEAD_MAX, AV_FIELDS_MAX};
    ssize_t n = av__h1_parse_response((const uint8_t *)buf, strlen(buf), &lim, &scan, 0, 0, &r);
    assert_true(n > 0);
    return &r;
}

/* The key sent upstream: the agent's (HTTP/1.1 upgrade) or a fresh one
 * (extended CONNECT); the upstream's 101 must answer it, with Upgrade and
 * Connection, and no extension that was not offered. */
static void websocket_switch(void **state)
{
    (void)state;
    static const av_h1_field f[] = {F("Sec-WebSocket-Version", "13"), F("Sec-WebSocket-Extensions", "x-foo")};
    xt t;
    /* an extended CONNECT: the proxy makes the key (base64 of 16 bytes) */
    av_req_in in = {.method = "CONNECT", .method_len = 7, .target = "/ws", .target_len = 3, .fields = f,
                    .nfields = NF(f), .minor = 1, .ws = 1, .ext_connect = 1};
    memset(&t, 0, sizeof(t));
    LA = &t.a;
    SL = &t.l;
    av__buf_init(&t.a.resp, 1024);
    av__buf_init(&t.l.body, 1024);
    xh_new(&t.h, NULL, API);
    xh_pool_fake(&t.h, "api.test", 80, "api/-");
    t.x = &t.h.c->x;
    t.x->agent = &loop_agent_ops;
    t.x->sid = 1;
    av_authority d;
    memset(&d, 0, sizeof(d));
    snprintf(d.host, sizeof(d.host), "api.test");
    d.port = 80;
    assert_int_equal(xh_begin(t.x, &in, &d, 0), 0);
    av_exchange *x = t.x;
    assert_true(x->ws);
    assert_true(x->ws_scrub); /* by default the upstream's messages are scrubbed */
    /* from the environment's randomness: bytes 0, 1, ... 15 here */
    assert_string_equal(x->ws_key, "AAECAwQFBgcICQoLDA0ODw==");
    assert_int_equal(t.h.randoms, 1);
    char want[512];
    snprintf(want, sizeof(want),
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Accept: %s\r\n\r\n",
             accept_of(x->ws_key));
    assert_null(av__x_ws_check_101(x, parse_101(want)));
    /* wrong accept */
    assert_non_null(av__x_ws_check_101(
        x, parse_101("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")));
    /* no Connection: upgrade */
    snprintf(want, sizeof(want), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: %s\r\n\r\n",
             accept_of(x->ws_key));
    assert_non_null(av__x_ws_check_101(x, parse_101(want)));
    /* an extension the proxy did not offer (scrub mode offers only what the agent offered: nothing here) */
    snprintf(want, sizeof(want),
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
             accept_of(x->ws_key));
    const char *why = av__x_ws_check_101(x, parse_101(want));
    assert_non_null(why);
    assert_non_null(strstr(why, "extension negotiated that was not offered"));
    /* the stored request: no agent extension offer in a parsed mode */
    static av_h1_field rf[X_RQ_FIELDS];
    size_t n = av__rq_fields(x, rf, NF(rf));
    for (size_t i = 0; i < n; i++)
        assert_false(av__h1_name_eq(&rf[i], "sec-websocket-extensions"));
    xt_free(&t);
}

/* No randomness to be had: the WebSocket key cannot be made: 500. */
static void websocket_no_randomness(void **state)
{
    (void)state;
    xt t;
    memset(&t, 0, sizeof(t));
    LA = &t.a;
    SL = &t.l;
    av__buf_init(&t.a.resp, 1024);
    av__buf_init(&t.l.body, 1024);
    xh_new(&t.h, NULL, API);
    t.h.rnd_fail = 1;
    t.x = &t.h.c->x;
    t.x->agent = &loop_agent_ops;
    t.x->sid = 1;
    av_req_in in = {.method = "CONNECT", .method_len = 7, .target = "/ws", .target_len = 3, .minor = 1, .ws = 1,
                    .ext_connect = 1};
    av_authority d;
    memset(&d, 0, sizeof(d));
    snprintf(d.host, sizeof(d.host), "api.test");
    d.port = 80;
    assert_int_equal(xh_begin(t.x, &in, &d, 0), -1);
    assert_int_equal(t.a.error_status, 500);
    assert_non_null(strstr(t.a.error_why, "no randomness"));
    assert_int_equal(t.h.asked, 0);
    xt_free(&t);
}

/* The switch through the HTTP/1.1 link itself, its upstream side being a
 * socketless pooled connection: the request it writes asks for the upgrade
 * with the agent's key; a 101 the exchange did not ask for, or with the
 * wrong accept, is a 502; a good one reaches the agent and opens the relay. */
static const char *up_out(av_exchange *x)
{
    static char s[8192];
    av_buf *o = x->up->side.pout;
    size_t n = o->len < sizeof(s) - 1 ? o->len : sizeof(s) - 1;
    if (n)
        memcpy(s, av__buf_head(o), n);
    s[n] = '\0';
    av__buf_consume(o, o->len);
    return s;
}

static void up_in(av_exchange *x, const char *bytes)
{
    assert_int_equal(av__buf_append(x->up->side.pin, bytes, strlen(bytes)), AV_OK);
}

#define WSKEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WSACC "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static void websocket_switch_h1_link(void **state)
{
    (void)state;
    static const av_h1_field f[] = {F("Sec-WebSocket-Version", "13"), F("Sec-WebSocket-Key", WSKEY),
                                    F("Origin", "http://x")};
    for (int variant = 0; variant < 4; variant++) {
        xt t;
        memset(&t, 0, sizeof(t));
        LA = &t.a;
        SL = &t.l;
        t.a.room = 1u << 20;
        av__buf_init(&t.a.resp, 1024);
        av__buf_init(&t.l.body, 1024);
        xh_new(&t.h, NULL, API "websocket_scrub = off\n");
        xh_pool_fake(&t.h, "api.test", 80, "api/-");
        av_exchange *x = t.x = &t.h.c->x;
        x->agent = &loop_agent_ops;
        x->sid = 1;
        av_req_in in = {.method = "GET", .method_len = 3, .target = "/ws", .target_len = 3, .fields = f,
                        .nfields = NF(f), .minor = 1, .ws = variant != 3, .ws_key = variant != 3 ? &f[1] : NULL};
        av_authority d;
        memset(&d, 0, sizeof(d));
        snprintf(d.host, sizeof(d.host), "api.test");
        d.port = 80;
        assert_int_equal(xh_begin(x, &in, &d, 0), 0);
        assert_ptr_equal(x->link, &av__link_h1_ops);
        assert_int_equal(av__x_h1_request_out(x), 0);
        const char *req = up_out(x);
        if (variant != 3) {
            has_line(req, "Sec-WebSocket-Key: " WSKEY);
            has_line(req, "Upgrade: websocket");
            has_line(req, "Connection: Upgrade");
        }
        has_line(req, "Authorization: Bearer " XH_KEY);
        x->head_sent = 1;
        x->req_ended = 1;
        switch (variant) {
        case 0: /* a good 101 */
            up_in(x, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: " WSACC "\r\n\r\n");
            assert_int_equal(av__x_pump_response_h1(x), 1);
            assert_int_equal(t.a.upgraded, 1);
            assert_true(x->ws_open);
            assert_int_equal(x->status, 101);
            assert_false(x->up_reusable);
            assert_true(x->active);
            break;
        case 1: /* the wrong accept */
            up_in(x, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n");
            assert_int_equal(av__x_pump_response_h1(x), 1);
            assert_int_equal(t.a.upgraded, 0);
            assert_int_equal(t.a.error_status, 502);
            assert_non_null(strstr(t.a.error_why, "wrong Sec-WebSocket-Accept"));
            break;
        case 2: /* declined: a plain response, the connection not pooled */
            up_in(x, "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno");
            assert_int_equal(av__x_pump_response_h1(x), 1);
            assert_int_equal(t.a.status, 403);
            assert_false(x->ws_open);
            assert_false(x->up_reusable);
            break;
        case 3: /* not asked for */
            up_in(x, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: " WSACC "\r\n\r\n");
            assert_int_equal(av__x_pump_response_h1(x), 1);
            assert_int_equal(t.a.error_status, 502);
            assert_non_null(strstr(t.a.error_why, "did not ask for"));
            break;
        }
        xt_free(&t);
    }
}

/* ---- retries ------------------------------------------------------------------------------- */

/* A refused stream that sent nothing is tried again (up to 8 times), with
 * the request head to be sent anew; one that sent anything, or already has
 * its response head, or the ninth, is a 502. The mux link's retry runs for
 * real; the new attempt lands on a pooled connection (nothing dialled). */
static void retries(void **state)
{
    (void)state;
    for (int variant = 0; variant < 4; variant++) {
        xt t;
        memset(&t, 0, sizeof(t));
        LA = &t.a;
        SL = &t.l;
        t.a.room = 1u << 20;
        av__buf_init(&t.a.resp, 1024);
        av__buf_init(&t.l.body, 1024);
        xh_new(&t.h, NULL, "[service \"tls\"]\nhost = tls.test\nauth = bearer\nsecret = callback:key\n");
        av_upconn *first = xh_pool_fake_tls(&t.h, "tls.test", 443, 1, "tls/-");
        av_upconn *second = xh_pool_fake_tls(&t.h, "tls.test", 443, 1, "tls/-");
        av_exchange *x = t.x = &t.h.c->x;
        x->agent = &loop_agent_ops;
        x->sid = 1;
        av_req_in in = {.method = "GET", .method_len = 3, .target = "/", .target_len = 1, .minor = 1};
        av_authority d;
        memset(&d, 0, sizeof(d));
        snprintf(d.host, sizeof(d.host), "tls.test");
        d.port = 443;
        assert_int_equal(xh_begin(x, &in, &d, 1), 0);
        assert_ptr_equal(x->link, &av__link_mux_ops);
        assert_int_equal(x->ms.state, AV_MS_H1); /* took a pooled connection */
        assert_ptr_equal(x->ms.up, second);      /* (the pool is a stack) */
        /* the stream was refused */
        x->ms.state = AV_MS_RETRY;
        x->head_sent = 1;
        x->retries = variant == 1 ? X_MAX_RETRIES - 1 : variant == 2 ? X_MAX_RETRIES : 0;
        x->ms.sent_any = variant == 3;
        av__x_mux_link(x);
        if (variant <= 1) {
            assert_true(x->active);
            assert_int_equal(x->retries, variant == 1 ? X_MAX_RETRIES : 1);
            assert_int_equal(x->head_sent, 0); /* sent again, from the stored request */
            assert_ptr_equal(x->link, &av__link_h1_ops);
            assert_ptr_equal(x->up, first);
            assert_int_equal(t.a.error_status, 0);
        } else {
            assert_int_equal(t.a.error_status, 502);
            assert_non_null(strstr(t.a.error_why, "upstream refused the request"));
            assert_false(x->active);
        }
        xt_free(&t);
    }
}

/* ---- a credential that answers later ------------------------------------------------------ */

/* callback: held: the exchange waits (nothing reaches a link, a step does
 * nothing); the answer wakes the connection through the loop; injection
 * then completes the stored request and the exchange goes on. */
static void credential_answers_later(void **state)
{
    (void)state;
    static const sl_event ev[] = {{SL_HEAD, 200, "", 2}, {SL_BODY, 0, "ok", 0}, {SL_END, 0, "", 0}};
    xt t;
    memset(&t, 0, sizeof(t));
    LA = &t.a;
    SL = &t.l;
    t.a.room = 1u << 20;
    t.a.slice = 1u << 20;
    av__buf_init(&t.a.resp, 1024);
    t.l.ev = ev;
    t.l.nev = NF(ev);
    t.l.room = 1u << 20;
    av__buf_init(&t.l.body, 1024);
    xh_new_full(&t.h, NULL, API, NULL, 1);
    t.h.hold = 1;
    xh_pool_fake(&t.h, "api.test", 80, "api/-");
    av_exchange *x = t.x = &t.h.c->x;
    x->agent = &loop_agent_ops;
    x->sid = 1;
    static const av_h1_field f[] = {F("Accept", "*/*")};
    av_req_in in = {.method = "GET", .method_len = 3, .target = "/", .target_len = 1, .fields = f, .nfields = 1,
                    .minor = 1};
    av_authority d;
    memset(&d, 0, sizeof(d));
    snprintf(d.host, sizeof(d.host), "api.test");
    d.port = 80;
    assert_int_equal(xh_begin(x, &in, &d, 0), 0);
    assert_non_null(x->swait);
    assert_null(x->link);
    assert_false(x->injected);
    assert_int_equal(av__x_step(x), 0); /* waiting */
    ev_run(t.h.evl, EVRUN_NOWAIT);
    assert_non_null(x->swait); /* still */
    /* the embedder answers */
    t.h.c->again = 0;
    av_secret_request_answer(t.h.held, XH_KEY, strlen(XH_KEY));
    t.h.held = NULL;
    for (int i = 0; i < 10 && !x->secret_ready; i++)
        ev_run(t.h.evl, EVRUN_NOWAIT);
    assert_true(x->secret_ready);
    assert_null(x->swait);
    assert_true(t.h.c->again); /* the connection's pump was asked to run */
    /* what av__x_step does next, with the link swapped before it runs */
    assert_int_equal(av__x_inject(x), 0);
    assert_true(x->injected);
    assert_ptr_equal(x->link, &av__link_h1_ops);
    x->link = &scripted_link_ops;
    xt_run(&t, 0, 0);
    assert_string_equal(t.l.head, "GET /\nhost: api.test\nAccept: */*\nAuthorization: Bearer " XH_KEY "\n");
    assert_string_equal(resp(&t), "ok");
    assert_int_equal(t.a.finished, 1);
    xt_free(&t);
}

/* ---- the record ------------------------------------------------------------------------------ */

/* One audit line per exchange, its time from the environment's clock, the
 * secret never in it (nor the query). */
static void audit_record(void **state)
{
    (void)state;
    char dir[] = "/tmp/av-xt-audit-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char keys[128], path[96];
    snprintf(path, sizeof(path), "%s/audit.log", dir);
    snprintf(keys, sizeof(keys), "audit = %s\n", path);
    static const sl_event ev[] = {{SL_HEAD, 200, "", 16}, {SL_BODY, 0, "<" XH_KEY ">", 0}, {SL_END, 0, "", 0}};
    xt t;
    xt_proxy_keys = keys;
    assert_int_equal(xt_begin(&t, API, "GET", "/v1/x?k=secretquery", NULL, 0, NULL, ev, NF(ev), NULL), 0);
    xt_proxy_keys = NULL;
    xt_run(&t, 0, 0);
    xt_free(&t);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char line[4096] = "";
    assert_non_null(fgets(line, sizeof(line), fp));
    char more[16];
    assert_null(fgets(more, sizeof(more), fp)); /* one line */
    fclose(fp);
    unlink(path);
    rmdir(dir);
    assert_null(strstr(line, XH_KEY));
    assert_null(strstr(line, "secretquery"));
    /* bytes_down: "<", the scrubber's marker, ">" */
    assert_int_equal(strlen(AV_SCRUB_MARKER), 10);
    assert_string_equal(line, "{\"time\":\"2027-01-15T08:00:00.000Z\",\"token\":null,\"gateway\":null,\"service\":\"api\","
                              "\"method\":\"GET\",\"host\":\"api.test:80\",\"path\":\"/v1/x\",\"status\":200,"
                              "\"bytes_up\":0,\"bytes_down\":12,\"ms\":0.0,\"proto\":\"loop>script\","
                              "\"injected\":[\"callback:key\"],\"auth\":\"bearer\",\"mint\":null,\"redactions\":1,\"end\":\"complete\",\"error\":null}\n");
}

/* ---- randomized rounds (seeded: the same every run) ----------------------------------------------- */

static uint64_t rng_state;

static uint32_t rng(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* Bodies both ways with random sizes, slices and rooms, with and without
 * a credential, the secret echoed at random places: the link gets the
 * request body exactly, the agent the response with every copy of the
 * secret replaced, and neither side is ever written beyond its room. */
static void randomized_bodies(void **state)
{
    (void)state;
    rng_state = 0x5eed;
    for (int round = 0; round < 60; round++) {
        size_t qn = rng() % 5000, rn = 1 + rng() % 20000;
        char *q = pattern(qn);
        char *r = pattern(rn);
        int cred = rng() % 2;
        size_t echoes = cred ? rng() % 4 : 0;
        for (size_t e = 0; e < echoes && rn > strlen(XH_KEY); e++)
            memcpy(r + rng() % (rn - strlen(XH_KEY)), XH_KEY, strlen(XH_KEY));
        size_t found = 0; /* copies actually in it (they may overlap) */
        for (const char *p = r; (p = strstr(p, XH_KEY)) != NULL; p += strlen(XH_KEY))
            found++;
        sl_event ev[] = {
            {SL_HEAD, 200, "", (long long)rn},
            {SL_BODY, 0, r, (long long)rn},
            {SL_END, 0, "", 0},
        };
        xt t;
        assert_int_equal(xt_begin(&t, API, "POST", "/r", NULL, 0, qn ? q : NULL, ev, NF(ev), cred ? NULL : "o.test"),
                         0);
        t.a.slice = 1 + rng() % 3000;
        t.a.room = 0;
        t.l.room = 0;
        xt_run(&t, 1 + rng() % 5000, 1 + rng() % 5000);
        assert_int_equal(t.l.over_room, 0);
        assert_int_equal(t.a.over_room, 0);
        assert_int_equal(t.l.body.len, qn);
        if (qn)
            assert_memory_equal(av__buf_head(&t.l.body), q, qn);
        assert_false(mem_has(&t.a.resp, XH_KEY));
        if (!found) {
            assert_int_equal(t.a.resp.len, rn);
            assert_memory_equal(av__buf_head(&t.a.resp), r, rn);
        } else {
            assert_int_equal(t.a.x_redactions, found);
        }
        assert_int_equal(t.a.ended, 1);
        assert_int_equal(t.a.finished, 1);
        xt_free(&t);
        av__free(q);
        av__free(r);
    }
}

/* ---- the HTTP/1.1 agent side ---------------------------------------------------------------- */

/* The same scripted link with the real HTTP/1.1 agent (av_agent_h1.c) of
 * the socketless connection: the request body is read from c->a.pin, the
 * response written to c->a.pout, which the test drains like a reader. */
static void xt_begin_h1(xt *t, const char *conf, const char *method, int minor, const av_h1_field *f, size_t n,
                        int framing, uint64_t length, const char *body_bytes, const sl_event *ev, size_t nev,
                        const char *host)
{
    memset(t, 0, sizeof(*t));
    LA = &t->a; /* (unused by this agent) */
    SL = &t->l;
    av__buf_init(&t->a.resp, 1u << 26);
    t->l.ev = ev;
    t->l.nev = nev;
    t->l.room = 1u << 30;
    av__buf_init(&t->l.body, 1u << 26);
    xh_new(&t->h, NULL, conf);
    const char *dh = host ? host : "api.test";
    xh_pool_fake(&t->h, dh, 80, host ? "-/-" : "api/-");
    av_exchange *x = t->x = &t->h.c->x;
    if (body_bytes)
        av__buf_append(t->h.c->a.pin, body_bytes, strlen(body_bytes));
    av_req_in in = {.method = method, .method_len = strlen(method), .target = "/", .target_len = 1, .fields = f,
                    .nfields = n, .minor = minor, .framing = framing, .length = length};
    av_authority d;
    memset(&d, 0, sizeof(d));
    snprintf(d.host, sizeof(d.host), "%s", dh);
    d.port = 80;
    assert_int_equal(xh_begin(x, &in, &d, 0), 0);
    x->link = &scripted_link_ops;
}

/* Step; whenever nothing moves, the agent reads up to |drain| bytes of
 * c->a.pout into t->a.resp and the link's room grows to |link_read|.
 * Until the exchange is over and pout empty. */
static void xt_run_h1l(xt *t, size_t drain, size_t link_read)
{
    av_buf *o = t->h.c->a.pout;
    for (int round = 0; round < 1000000; round++) {
        int progress = 0;
        for (int i = 0; i < 64 && t->x->active && av__x_step(t->x); i++)
            progress = 1;
        size_t k = o->len < drain ? o->len : drain;
        if (k) {
            av__buf_append(&t->a.resp, av__buf_head(o), k);
            av__buf_consume(o, k);
            progress = 1;
        }
        if (!t->x->active && o->len == 0)
            return;
        if (!progress && t->l.room >= link_read)
            fail_msg("the exchange is stuck");
        if (t->l.room < link_read)
            t->l.room = link_read;
    }
    fail_msg("the exchange never finished");
}

static void xt_run_h1(xt *t, size_t drain)
{
    xt_run_h1l(t, drain, 0);
}

static void h1_response_framing(void **state)
{
    (void)state;
    static const sl_event chunked[] = {
        {SL_HEAD, 200, "content-type: text/plain\nconnection: x-hop\nx-hop: 1\n", -1},
        {SL_BODY, 0, "hello", 0},
        {SL_TRAILERS, 0, "grpc-status: 0\n", 0},
        {SL_END, 0, "", 0},
    };
    xt t;
    xt_begin_h1(&t, API, "GET", 1, NULL, 0, RB_NONE, 0, NULL, chunked, NF(chunked), "o.test");
    xt_run_h1(&t, 1u << 20);
    assert_string_equal(resp(&t), "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
    assert_int_equal(t.h.c->state, C_PROXY_HEAD); /* keep-alive: the next head */
    xt_free(&t);

    static const sl_event length[] = {{SL_HEAD, 201, "x-a: 1\ncontent-length: 5\n", 5}, {SL_BODY, 0, "hello", 0},
                                      {SL_END, 0, "", 0}};
    xt_begin_h1(&t, API, "GET", 1, NULL, 0, RB_NONE, 0, NULL, length, NF(length), "o.test");
    xt_run_h1(&t, 1u << 20);
    assert_string_equal(resp(&t), "HTTP/1.1 201 Created\r\nx-a: 1\r\nContent-Length: 5\r\n\r\nhello");
    xt_free(&t);

    /* a draining connection: the response says it closes, and it does */
    xt_begin_h1(&t, API, "GET", 1, NULL, 0, RB_NONE, 0, NULL, length, NF(length), "o.test");
    t.h.c->draining = 1;
    xt_run_h1(&t, 1u << 20);
    assert_string_equal(resp(&t), "HTTP/1.1 201 Created\r\nx-a: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
                                  "hello");
    assert_int_equal(t.h.c->state, C_CLOSING);
    xt_free(&t);

    /* an HTTP/1.0 agent: no chunked framing; the end is the close */
    xt_begin_h1(&t, API, "GET", 0, NULL, 0, RB_NONE, 0, NULL, chunked, NF(chunked), "o.test");
    xt_run_h1(&t, 1u << 20);
    assert_string_equal(resp(&t), "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nConnection: close\r\n\r\nhello");
    assert_int_equal(t.h.c->state, C_CLOSING);
    xt_free(&t);

    /* scrubbed: the length is no longer known, the secret never shows */
    static const sl_event echo[] = {{SL_HEAD, 200, "content-length: 40\n", 40},
                                    {SL_BODY, 0, "<<" XH_KEY ">>", 0}, {SL_END, 0, "", 0}};
    xt_begin_h1(&t, API, "GET", 1, NULL, 0, RB_NONE, 0, NULL, echo, NF(echo), NULL);
    xt_run_h1(&t, 1u << 20);
    assert_non_null(strstr(resp(&t), "Transfer-Encoding: chunked\r\n"));
    assert_null(strstr(resp(&t), XH_KEY));
    assert_non_null(strstr(resp(&t), "0\r\n\r\n"));
    xt_free(&t);
}

/* A slow HTTP/1.1 reader: the connection's output buffer is small and the
 * agent reads 333 bytes at a time; the body arrives whole and in order. */
static void h1_backpressure(void **state)
{
    (void)state;
    char *body = pattern(100000);
    sl_event ev[] = {{SL_HEAD, 200, "", 100000}, {SL_BODY, 0, body, 100000}, {SL_END, 0, "", 0}};
    xt t;
    xt_begin_h1(&t, API, "GET", 1, NULL, 0, RB_NONE, 0, NULL, ev, NF(ev), "o.test");
    t.h.c->a.pout->max = 4096;
    xt_run_h1(&t, 333);
    const char *want_head = "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    size_t hl = strlen(want_head);
    assert_int_equal(t.a.resp.len, hl + 100000);
    assert_memory_equal(av__buf_head(&t.a.resp), want_head, hl);
    assert_memory_equal((const char *)av__buf_head(&t.a.resp) + hl, body, 100000);
    xt_free(&t);
    av__free(body);
}

/* The request body of an HTTP/1.1 agent, chunked with trailers: decoded
 * toward the link, the service's field dropped from the trailers; broken
 * framing is a 400 and the connection closes. */
static void h1_request_body(void **state)
{
    (void)state;
    static const sl_event ev[] = {{SL_HEAD, 204, "", 0}};
    xt t;
    xt_begin_h1(&t, API_XKEY, "POST", 1, NULL, 0, RB_UNKNOWN, 0,
                "5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\nX-Api-Key: dummy\r\n\r\n", ev, NF(ev), NULL);
    t.l.room = 0;
    xt_run_h1l(&t, 1u << 20, 64); /* (the HTTP/1.1 agent feeds slices of at least 64) */
    assert_int_equal(t.l.body.len, 11);
    assert_memory_equal(av__buf_head(&t.l.body), "hello world", 11);
    assert_string_equal(t.l.trailers, "x-sum: 1\n");
    assert_int_equal(t.l.over_room, 0);
    assert_non_null(strstr(resp(&t), "HTTP/1.1 204 No Content\r\n"));
    xt_free(&t);

    xt_begin_h1(&t, API_XKEY, "POST", 1, NULL, 0, RB_UNKNOWN, 0, "5\r\nhello\r\nZZ\r\n", ev, NF(ev), NULL);
    xt_run_h1(&t, 1u << 20);
    assert_int_equal(xh_status(resp(&t)), 400);
    assert_non_null(strstr(resp(&t), "malformed request body framing"));
    assert_int_equal(t.h.c->state, C_CLOSING);
    xt_free(&t);
}

/* ---- the HTTP/1.1 link's response side ------------------------------------------------------------ */

/* The real HTTP/1.1 link over a socketless pooled connection, toward the
 * real HTTP/1.1 agent: the request it serializes, then a response put in
 * the upstream's input. Interim responses are relayed to this agent; bytes
 * after the response, or a close-delimited body, keep the connection out
 * of the pool; a clean one goes back to it. */
typedef struct h1l_case {
    const char *response;
    int up_eof;
    const char *want_agent; /* a piece of what the agent gets */
    int pooled;             /* the upstream went back to the pool */
    int status;             /* the agent's final status */
} h1l_case;

static void h1_link_response(void **state)
{
    (void)state;
    static const h1l_case cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0, "Content-Length: 5\r\n\r\nhello", 1, 200},
        {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0,
         "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", 1, 200},
        {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", 0, "\r\n\r\nok", 0, 200},
        {"HTTP/1.1 200 OK\r\n\r\nuntil close", 1, "Transfer-Encoding: chunked\r\n\r\nb\r\nuntil close\r\n0\r\n\r\n", 0,
         200},
        {"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", 0, "HTTP/1.1 204 No Content\r\n", 1, 204},
        /* cut short: the head is out, so the agent's connection is cut */
        {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 1, "Content-Length: 10\r\n\r\nshort", 0, 200},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 0, "\r\n\r\nok", 0, 200},
        {"HTTP/1.1 2xx Bad\r\n\r\n", 0, "HTTP/1.1 502 ", 0, 502},
    };
    for (size_t i = 0; i < NF(cases); i++) {
        xh h;
        xh_new(&h, NULL, API);
        xh_pool_fake(&h, "o.test", 80, "-/-");
        av_pool *pool = h.env.pool;
        av_exchange *x = &h.c->x;
        static const av_h1_field f[] = {F("Accept", "*/*")};
        av_req_in in = {.method = "GET", .method_len = 3, .target = "/p?q", .target_len = 4, .fields = f,
                        .nfields = 1, .minor = 1};
        av_authority d;
        memset(&d, 0, sizeof(d));
        snprintf(d.host, sizeof(d.host), "o.test");
        d.port = 80;
        assert_int_equal(xh_begin(x, &in, &d, 0), 0);
        assert_ptr_equal(x->link, &av__link_h1_ops);
        assert_int_equal(pool->nidle, 0);
        assert_int_equal(av__x_h1_request_out(x), 0);
        assert_string_equal(up_out(x), "GET /p?q HTTP/1.1\r\nHost: o.test\r\nAccept: */*\r\n\r\n");
        x->head_sent = 1;
        av__x_pump_request_body(x);
        assert_true(x->req_ended);
        up_in(x, cases[i].response);
        x->up->side.in_eof = (unsigned)cases[i].up_eof;
        av__x_pump_response_h1(x);
        if (x->active)
            x->agent->check_done(x);
        const char *out = xh_out(&h);
        if (!strstr(out, cases[i].want_agent))
            fail_msg("case %zu: no \"%s\" in:\n%s", i, cases[i].want_agent, out);
        const char *last = out, *p = out;
        while ((p = strstr(p, "HTTP/1.1 ")) != NULL)
            last = p++; /* the final response (after interim ones) */
        if (xh_status(last) != cases[i].status)
            fail_msg("case %zu: status %d, want %d:\n%s", i, xh_status(last), cases[i].status, out);
        assert_false(x->active); /* over, one way or the other */
        if (i == 5)
            assert_int_equal(h.c->state, C_CLOSING);
        if ((pool->nidle == 1) != cases[i].pooled)
            fail_msg("case %zu: pooled %zu, want %d", i, pool->nidle, cases[i].pooled);
        xh_free(&h);
    }
}

/* ---- the HTTP/2 agent side ------------------------------------------------------------------- */

/* An HTTP/2 client of the test's (av_h2, client role) talks to the real
 * HTTP/2 agent side (av_agent_h2.c) of the socketless connection through
 * its buffers. The exchange's credential is held, so that the scripted
 * link can be put in place once the secret is in (the stream's exchange
 * is made inside the connection's step). */
typedef struct h2c {
    av_h2 *s;
    int32_t sid;
    int status, interim, closed;
    uint32_t error;
    char fields[4096], trailers[1024];
    av_buf body;
} h2c;

static int h2c_head(void *ud, int32_t sid, const av_h2_head *h)
{
    h2c *cl = ud;
    (void)sid;
    if (h->trailers) {
        fields_text(cl->trailers, sizeof(cl->trailers), h->fields, h->nfields);
    } else if (h->status < 200) {
        cl->interim++;
    } else {
        cl->status = h->status;
        fields_text(cl->fields, sizeof(cl->fields), h->fields, h->nfields);
    }
    return 0;
}

static int h2c_data(void *ud, int32_t sid, const uint8_t *data, size_t len)
{
    h2c *cl = ud;
    av__buf_append(&cl->body, data, len);
    av__h2_consume(cl->s, sid, len);
    return 0;
}

static void h2c_end(void *ud, int32_t sid)
{
    (void)ud;
    (void)sid;
}

static void h2c_close(void *ud, int32_t sid, uint32_t error)
{
    h2c *cl = ud;
    (void)sid;
    cl->closed = 1;
    cl->error = error;
}

static const av_h2_callbacks h2c_cbs = {h2c_head, h2c_data, h2c_end, h2c_close, NULL, NULL};

/* Move bytes both ways and step the connection until nothing moves. */
static void h2_pump(xh *h, h2c *cl)
{
    av_conn *c = h->c;
    for (int round = 0; round < 10000; round++) {
        size_t before = c->a.pin->len + c->a.pout->len;
        int moved = av__h2_produce(cl->s, c->a.pin) > 0;
        moved |= av__conn_h2_step(c);
        if (c->a.pout->len) {
            assert_int_equal(av__h2_feed(cl->s, av__buf_head(c->a.pout), c->a.pout->len), (ssize_t)c->a.pout->len);
            av__buf_consume(c->a.pout, c->a.pout->len);
            moved = 1;
        }
        if (!moved && before == 0)
            return;
    }
    fail_msg("HTTP/2 pump never settled");
}

static void h2_setup_conf(xt *t, h2c *cl, const sl_event *ev, size_t nev, const char *proxy_keys, const char *conf);

static void h2_setup(xt *t, h2c *cl, const sl_event *ev, size_t nev)
{
    h2_setup_conf(t, cl, ev, nev, NULL, "[service \"tls\"]\nhost = tls.test\nauth = bearer\nsecret = callback:key\n");
}

static void h2_setup_conf(xt *t, h2c *cl, const sl_event *ev, size_t nev, const char *proxy_keys, const char *conf)
{
    memset(t, 0, sizeof(*t));
    memset(cl, 0, sizeof(*cl));
    LA = &t->a;
    SL = &t->l;
    av__buf_init(&t->a.resp, 1024);
    t->l.ev = ev;
    t->l.nev = nev;
    t->l.room = 1u << 20;
    av__buf_init(&t->l.body, 1u << 20);
    av__buf_init(&cl->body, 1u << 20);
    xh_new_full(&t->h, proxy_keys, conf, NULL, 1);
    t->h.hold = 1;
    xh_pool_fake_tls(&t->h, "tls.test", 443, 1, "tls/-");
    av_conn *c = t->h.c;
    c->in_tunnel = 1;
    snprintf(c->dest.host, sizeof(c->dest.host), "tls.test");
    c->dest.port = 443;
    c->dest_tls = 1;
    assert_int_equal(av__conn_h2_start(c), 1);
    assert_int_equal(av__h2_new(&cl->s, AV_H2_CLIENT, &h2c_cbs, cl), AV_OK);
}

static void h2_teardown(xt *t, h2c *cl)
{
    av__h2_free(cl->s);
    av__buf_free(&cl->body);
    xt_free(t);
}

static const char *h2_scheme = "https"; /* of the next h2_request */

static void h2_request(h2c *cl, const char *authority, const av_h1_field *f, size_t n, int end)
{
    av_h2_head hd;
    memset(&hd, 0, sizeof(hd));
    hd.method = "GET";
    hd.method_len = 3;
    hd.scheme = h2_scheme;
    hd.scheme_len = strlen(h2_scheme);
    hd.authority = authority;
    hd.authority_len = strlen(authority);
    hd.path = "/v1?q=1";
    hd.path_len = 7;
    hd.content_length = -1;
    for (size_t i = 0; i < n; i++)
        hd.fields[i] = f[i];
    hd.nfields = n;
    assert_int_equal(av__h2_submit_request(cl->s, &hd, end, &cl->sid), AV_OK);
}

/* A request over HTTP/2: split cookies joined, the credential injected,
 * an interim response not relayed, the body and trailers relayed, the
 * stream's exchange freed afterwards. */
static void h2_agent_exchange(void **state)
{
    (void)state;
    static const sl_event ev[] = {
        {SL_HEAD, 103, "link: </a>\n", 0},
        {SL_HEAD, 200, "content-type: application/grpc\n", -1},
        {SL_BODY, 0, "hello", 0},
        {SL_TRAILERS, 0, "grpc-status: 0\n", 0},
        {SL_END, 0, "", 0},
    };
    static const av_h1_field f[] = {F("cookie", "a=1"), F("x-keep", "1"), F("cookie", "b=2"),
                                    F("authorization", "Bearer dummy")};
    xt t;
    h2c cl;
    h2_setup(&t, &cl, ev, NF(ev));
    h2_request(&cl, "tls.test", f, NF(f), 1);
    h2_pump(&t.h, &cl);
    av_exchange *x = t.h.c->xs;
    assert_non_null(x);
    assert_non_null(x->swait); /* the credential is held */
    av_secret_request_answer(t.h.held, XH_KEY, strlen(XH_KEY));
    t.h.held = NULL;
    for (int i = 0; i < 10 && !x->secret_ready; i++)
        ev_run(t.h.evl, EVRUN_NOWAIT);
    assert_true(x->secret_ready);
    assert_int_equal(av__x_inject(x), 0);
    x->link = &scripted_link_ops;
    h2_pump(&t.h, &cl);
    assert_string_equal(t.l.head, "GET /v1?q=1\nhost: tls.test\nx-keep: 1\ncookie: a=1; b=2\n"
                                  "Authorization: Bearer " XH_KEY "\n");
    assert_int_equal(cl.status, 200);
    assert_int_equal(cl.interim, 0); /* 1xx are not relayed to HTTP/2 agents */
    assert_string_equal(cl.fields, "content-type: application/grpc\n");
    assert_int_equal(cl.body.len, 5);
    assert_memory_equal(av__buf_head(&cl.body), "hello", 5);
    assert_string_equal(cl.trailers, "grpc-status: 0\n");
    assert_true(cl.closed);
    assert_int_equal(cl.error, 0);
    assert_null(t.h.c->xs); /* the finished stream's exchange was freed */
    h2_teardown(&t, &cl);
}

/* An HTTP/2 agent's request body toward a slow link: the agent's DATA
 * waits in the stream's window (never more than X_RX_MAX buffered), the
 * link never gets more than its room, and every byte arrives in order. */
static void h2_request_body_backpressure(void **state)
{
    (void)state;
    static const sl_event ev[] = {{SL_HEAD, 200, "", 0}};
    const size_t total = 300000;
    char *body = pattern(total);
    xt t;
    h2c cl;
    h2_setup(&t, &cl, ev, NF(ev));
    h2_request(&cl, "tls.test", NULL, 0, 0);
    h2_pump(&t.h, &cl);
    av_exchange *x = t.h.c->xs;
    assert_non_null(x);
    av_secret_request_answer(t.h.held, XH_KEY, strlen(XH_KEY));
    t.h.held = NULL;
    for (int i = 0; i < 10 && !x->secret_ready; i++)
        ev_run(t.h.evl, EVRUN_NOWAIT);
    assert_int_equal(av__x_inject(x), 0);
    x->link = &scripted_link_ops;
    t.l.room = 0;
    size_t sent = 0;
    size_t max_rx = 0;
    av_conn *c = t.h.c;
    for (int round = 0; round < 200000 && !cl.closed; round++) {
        if (sent < total) {
            ssize_t k = av__h2_send_data(cl.s, cl.sid, (const uint8_t *)body + sent, total - sent);
            assert_true(k >= 0);
            sent += (size_t)k;
            if (sent == total)
                av__h2_end_stream(cl.s, cl.sid);
        }
        av__h2_produce(cl.s, c->a.pin);
        av__conn_h2_step(c);
        if (c->xs && c->xs->a_rx.len > max_rx)
            max_rx = c->xs->a_rx.len;
        if (c->a.pout->len) {
            av__h2_feed(cl.s, av__buf_head(c->a.pout), c->a.pout->len);
            av__buf_consume(c->a.pout, c->a.pout->len);
        }
        t.l.room += 700; /* the upstream reads a little every round */
    }
    assert_true(cl.closed);
    assert_int_equal(cl.status, 200);
    assert_int_equal(t.l.over_room, 0);
    assert_int_equal(t.l.body.len, total);
    assert_memory_equal(av__buf_head(&t.l.body), body, total);
    assert_int_equal(t.l.ended, 1);
    assert_true(max_rx <= X_RX_MAX);
    assert_true(max_rx > 0);
    h2_teardown(&t, &cl);
    av__free(body);
}

/* A gateway over HTTP/2 (prior knowledge): :scheme http is fine and
 * :authority is not compared (it is rewritten), but the gateway's token
 * is required: 401 on the stream without it. */
static void h2_gateway(void **state)
{
    (void)state;
    setenv("XT_GW_TOKEN", "gwt-h2-Zk3", 1);
    static const av_h1_field bad[] = {F("x-agentvault-token", "wrong")};
    for (int with = 0; with < 2; with++) {
        xt t;
        h2c cl;
        h2_setup_conf(&t, &cl, NULL, 0, "listen = 127.0.0.1:0\n",
                      "[service \"api\"]\nhost = api.test\nscheme = http\nport = 80\nauth = bearer\n"
                      "secret = callback:key\n"
                      "[gateway \"g\"]\nlisten = 127.0.0.1:0\nupstream = http://api.test\ntoken = env:XT_GW_TOKEN\n");
        av_conn *c = t.h.c;
        c->gw = t.h.ctx->gws;
        snprintf(c->dest.host, sizeof(c->dest.host), "api.test");
        c->dest.port = 80;
        c->dest_tls = 0;
        h2_scheme = "http";
        static const av_h1_field good[] = {F("x-agentvault-token", "gwt-h2-Zk3")};
        h2_request(&cl, "127.0.0.1:8080", with ? good : bad, 1, 1);
        h2_scheme = "https";
        h2_pump(&t.h, &cl);
        if (!with) {
            assert_int_equal(cl.status, 401);
            assert_non_null(strstr(cl.fields, "gateway token required"));
            assert_int_equal(t.h.asked, 0);
        } else {
            assert_int_equal(cl.status, 0); /* admitted: waiting for its credential */
            assert_non_null(c->xs);
            assert_true(c->xs->active);
            assert_non_null(c->xs->swait);
            assert_string_equal(c->xs->host, "api.test:80");
        }
        h2_teardown(&t, &cl);
    }
}

/* :authority must be the tunnel's destination (SECURITY 1): 421 on that
 * stream only, before any credential is asked for. */
static void h2_authority_binding(void **state)
{
    (void)state;
    xt t;
    h2c cl;
    h2_setup(&t, &cl, NULL, 0);
    h2_request(&cl, "evil.test", NULL, 0, 1);
    h2_pump(&t.h, &cl);
    assert_int_equal(cl.status, 421);
    assert_non_null(strstr(cl.fields, "x-agentvault-error: :authority does not match the CONNECT target tls.test:443"));
    assert_int_equal(t.h.asked, 0);
    assert_int_equal(t.h.c->state, C_H2); /* the connection goes on */
    h2_teardown(&t, &cl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(intake_and_injection),
        cmocka_unit_test(placeholder_refused_before_link),
        cmocka_unit_test(scrub_field_and_body),
        cmocka_unit_test(scrub_refuses_unknown_encoding),
        cmocka_unit_test(no_scrub_without_credential),
        cmocka_unit_test(request_body_backpressure),
        cmocka_unit_test(response_body_backpressure),
        cmocka_unit_test(trailers_both_ways),
        cmocka_unit_test(fail_before_and_after_head),
        cmocka_unit_test(write_out_of_memory),
        cmocka_unit_test(agent_goes_away),
        cmocka_unit_test(early_response),
        cmocka_unit_test(head_request),
        cmocka_unit_test(head_waits_for_room),
        cmocka_unit_test(websocket_switch),
        cmocka_unit_test(websocket_no_randomness),
        cmocka_unit_test(websocket_switch_h1_link),
        cmocka_unit_test(retries),
        cmocka_unit_test(credential_answers_later),
        cmocka_unit_test(audit_record),
        cmocka_unit_test(randomized_bodies),
        cmocka_unit_test(h1_response_framing),
        cmocka_unit_test(h1_backpressure),
        cmocka_unit_test(h1_request_body),
        cmocka_unit_test(h1_link_response),
        cmocka_unit_test(h2_agent_exchange),
        cmocka_unit_test(h2_request_body_backpressure),
        cmocka_unit_test(h2_authority_binding),
        cmocka_unit_test(h2_gateway),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
