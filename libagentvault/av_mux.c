/* av_mux.c - shared HTTP/2 upstream connections (see av_mux.h).
 *
 * Lifecycle of a mux:
 *   DIALING ──ALPN h2──▶ H2 ──GOAWAY / error / idle──▶ DEAD
 *      └──ALPN http/1.1──▶ connection handed to a waiter ──▶ DEAD
 *      └──dial failed──▶ waiters FAILED ──▶ DEAD
 * A DEAD mux is off the context's list (nobody new attaches) and is freed
 * once its last stream detaches and no pump or delivery is running.
 */
#include "av_mux.h"

#include <stdio.h>
#include <string.h>

#include "av_limits.h"
#include "av_mem.h"

enum { M_DIALING = 1, M_H2, M_DEAD };

struct av_mux {
    av_pool *pool;
    av_mux *next, *prev;   /* pool->muxes, while not DEAD */
    int listed;
    char key[AV_UP_KEY_MAX];
    av_upconn *up;
    av_h2 *h2;
    int state;
    av_mux_stream *streams, *streams_tail; /* attached streams, oldest first */
    size_t nstreams;
    av_mux_stream *dhead, *dtail; /* streams whose owners must be told (FIFO) */
    av_timer *idle;
    int in_pump, again, delivering, refs;
    int settings;          /* the origin's first SETTINGS arrived */
};

static void mux_pump(av_mux *m);

/* ---- bookkeeping -------------------------------------------------------- */

static void mux_unlist(av_mux *m)
{
    if (!m->listed)
        return;
    av_pool *pool = m->pool;
    if (m->prev)
        m->prev->next = m->next;
    else
        pool->muxes = m->next;
    if (m->next)
        m->next->prev = m->prev;
    m->next = m->prev = NULL;
    m->listed = 0;
    pool->nmux--;
}

static void mux_free(av_mux *m)
{
    mux_unlist(m);
    av__h2_free(m->h2);
    if (m->up)
        av__upstream_release(m->up, 0);
    av__timer_free(m->idle);
    av__free(m);
}

/* Free a dead mux once nothing refers to it any more. */
static void mux_maybe_free(av_mux *m)
{
    if (m->state == M_DEAD && m->nstreams == 0 && m->refs == 0)
        mux_free(m);
}

/* Streams are kept oldest first, so waiters are served in arrival order. */
static void ms_link(av_mux *m, av_mux_stream *ms)
{
    ms->mux = m;
    ms->next = NULL;
    ms->prev = m->streams_tail;
    if (m->streams_tail)
        m->streams_tail->next = ms;
    else
        m->streams = ms;
    m->streams_tail = ms;
    m->nstreams++;
    av__timer_stop(m->idle);
}

/* ms_mark queues |ms| for a notification (once). */
static void ms_mark(av_mux *m, av_mux_stream *ms)
{
    if (ms->dirty || ms->mux != m)
        return;
    ms->dirty = 1;
    ms->dnext = NULL;
    ms->dprev = m->dtail;
    if (m->dtail)
        m->dtail->dnext = ms;
    else
        m->dhead = ms;
    m->dtail = ms;
}

static void ms_unmark(av_mux_stream *ms)
{
    av_mux *m = ms->mux;
    if (!ms->dirty || !m)
        return;
    if (ms->dprev)
        ms->dprev->dnext = ms->dnext;
    else
        m->dhead = ms->dnext;
    if (ms->dnext)
        ms->dnext->dprev = ms->dprev;
    else
        m->dtail = ms->dprev;
    ms->dnext = ms->dprev = NULL;
    ms->dirty = 0;
}

static void ms_unlink(av_mux_stream *ms)
{
    av_mux *m = ms->mux;
    if (!m)
        return;
    ms_unmark(ms);
    if (m->h2 && ms->id > 0 && av__h2_tag(m->h2, ms->id) == ms)
        av__h2_set_tag(m->h2, ms->id, NULL);
    if (ms->prev)
        ms->prev->next = ms->next;
    else
        m->streams = ms->next;
    if (ms->next)
        ms->next->prev = ms->prev;
    else
        m->streams_tail = ms->prev;
    ms->next = ms->prev = NULL;
    ms->mux = NULL;
    m->nstreams--;
}

/* A stream slot is free: the oldest waiter tries again (one per slot; a
 * waiter that still finds no room goes back to waiting). */
static void mux_wake_one(av_mux *m)
{
    if (!m->settings)
        return;
    for (av_mux_stream *w = m->streams; w; w = w->next)
        if (w->state == AV_MS_WAIT) {
            w->state = AV_MS_READY;
            ms_mark(m, w);
            return;
        }
}

static av_mux_stream *ms_find(av_mux *m, int32_t id)
{
    av_mux_stream *ms = m->h2 ? av__h2_tag(m->h2, id) : NULL;
    if (ms && ms->mux == m && ms->id == id && ms->state == AV_MS_OPEN)
        return ms;
    return NULL;
}

/* Tell owners about changed streams. Never nested: a notification that
 * pumps the mux again only marks more streams dirty, and this loop picks
 * them up. Each round rescans the live list (owners detach streams). */
static void mux_deliver(av_mux *m)
{
    if (m->delivering)
        return;
    m->delivering = 1;
    m->refs++;
    while (m->dhead) {
        av_mux_stream *ms = m->dhead;
        ms_unmark(ms);
        if (ms->notify)
            ms->notify(ms->owner);
    }
    m->refs--;
    m->delivering = 0;
    mux_maybe_free(m);
}

/* The mux cannot carry anything any more: streams learn their fate. */
static void mux_die(av_mux *m, const char *why, int status)
{
    if (m->state == M_DEAD)
        return;
    int was_dialing = m->state == M_DIALING;
    m->state = M_DEAD;
    mux_unlist(m);
    av__timer_stop(m->idle);
    int32_t last = m->h2 ? av__h2_goaway_last_stream(m->h2) : -1;
    for (av_mux_stream *ms = m->streams; ms; ms = ms->next) {
        if (was_dialing) {
            ms->state = AV_MS_FAILED;
            ms->fail_status = status;
            snprintf(ms->why, sizeof(ms->why), "%s", why);
        } else if (ms->state == AV_MS_WAIT || ms->state == AV_MS_READY) {
            ms->state = AV_MS_RETRY;
        } else if (ms->state == AV_MS_OPEN && !ms->closed) {
            ms->closed = 1;
            ms->error = 2; /* INTERNAL_ERROR */
            if (!ms->head && !ms->sent_any && last >= 0 && ms->id > last)
                ms->state = AV_MS_RETRY; /* the origin said it never processed it */
            snprintf(ms->why, sizeof(ms->why), "%s", why);
        }
        ms_mark(m, ms);
    }
    if (m->up) {
        av__upstream_release(m->up, 0);
        m->up = NULL;
    }
}

/* ---- nghttp2 session callbacks (client role) --------------------------- */

static int cb_head(void *ud, int32_t sid, const av_h2_head *h)
{
    av_mux *m = ud;
    av_mux_stream *ms = ms_find(m, sid);
    if (!ms)
        return 0; /* detached: its RST_STREAM is on the way */
    if (h->trailers) {
        /* Kept for the owner, who checks them (END_STREAM follows). */
        if (ms->head && !ms->end && av__h1_fields_set(&ms->trailers, h->fields, h->nfields) != AV_OK)
            return AV_ERR_NOMEM;
        return 0;
    }
    if (h->status < 200 || ms->head)
        return 0; /* 1xx are not relayed */
    size_t need = 0;
    for (size_t i = 0; i < h->nfields; i++)
        need += h->fields[i].name_len + h->fields[i].value_len;
    av__buf_free_wipe(&ms->hstore);
    av__buf_init(&ms->hstore, need + 16);
    int err = 0;
    if (need && !av__buf_reserve(&ms->hstore, need, &err))
        return AV_ERR_NOMEM; /* reserved up front: |fields| never move */
    av__free(ms->fields);
    ms->fields = h->nfields ? av__calloc(h->nfields, sizeof(*ms->fields)) : NULL;
    if (h->nfields && !ms->fields)
        return AV_ERR_NOMEM;
    for (size_t i = 0; i < h->nfields; i++) {
        const av_h1_field *f = &h->fields[i];
        size_t off = ms->hstore.len;
        av__buf_append(&ms->hstore, f->name, f->name_len);
        av__buf_append(&ms->hstore, f->value, f->value_len);
        ms->fields[i].name = (const char *)av__buf_head(&ms->hstore) + off;
        ms->fields[i].name_len = f->name_len;
        ms->fields[i].value = (const char *)av__buf_head(&ms->hstore) + off + f->name_len;
        ms->fields[i].value_len = f->value_len;
    }
    ms->nfields = h->nfields;
    ms->status = h->status;
    ms->content_length = h->content_length;
    ms->head = 1;
    if (h->end_stream)
        ms->end = 1;
    ms_mark(m, ms);
    return 0;
}

static int cb_data(void *ud, int32_t sid, const uint8_t *data, size_t len)
{
    av_mux *m = ud;
    av_mux_stream *ms = ms_find(m, sid);
    if (!ms)
        return 0; /* the session gives the window back when it closes */
    if (av__buf_append(&ms->rx, data, len) != AV_OK)
        return AV_ERR_LIMIT; /* more than the window we granted: reset */
    ms_mark(m, ms);
    return 0;
}

static void cb_end(void *ud, int32_t sid)
{
    av_mux *m = ud;
    av_mux_stream *ms = ms_find(m, sid);
    if (ms) {
        ms->end = 1;
        ms_mark(m, ms);
    }
}

static void cb_close(void *ud, int32_t sid, uint32_t error)
{
    av_mux *m = ud;
    av_mux_stream *ms = ms_find(m, sid);
    if (!ms) {
        mux_wake_one(m); /* a detached (reset) stream's slot is free now */
        return;
    }
    ms->closed = 1;
    ms->error = error;
    if (error == 7 /* REFUSED_STREAM */ && !ms->head && !ms->sent_any)
        ms->state = AV_MS_RETRY;
    if (error && !ms->why[0])
        snprintf(ms->why, sizeof(ms->why), "upstream reset the HTTP/2 stream (error code %u)", error);
    ms_mark(m, ms);
    mux_wake_one(m);
}

static void cb_settings(void *ud)
{
    av_mux *m = ud;
    m->settings = 1;
    /* The concurrency limit may have grown: waiters try again. */
    for (av_mux_stream *ms = m->streams; ms; ms = ms->next)
        if (ms->state == AV_MS_WAIT) {
            ms->state = AV_MS_READY;
            ms_mark(m, ms);
        }
}

static void cb_limit(void *ud, int32_t sid, const char *what)
{
    av_mux *m = ud;
    av__log(m->pool->log, AV_LOG_WARN, "upstream h2 %s stream=%d: %s", m->up ? m->up->dest.host : "?", sid,
            what);
}

static const av_h2_callbacks mux_cbs = {cb_head, cb_data, cb_end, cb_close, cb_settings, cb_limit};

/* ---- the pump ------------------------------------------------------------ */

static void mux_up_notify(void *owner)
{
    mux_pump(owner);
}

static void mux_on_idle(void *ud)
{
    av_mux *m = ud;
    if (m->nstreams == 0) {
        mux_die(m, "idle", 502);
        mux_maybe_free(m);
    }
}

/* The dial finished: become an HTTP/2 mux or hand the connection over. */
static int mux_dialed(av_mux *m)
{
    av_upconn *up = m->up;
    av__log(m->pool->log, AV_LOG_DEBUG, "upstream %s:%d connected, protocol %s", up->dest.host, up->dest.port,
            av__upstream_is_h2(up) ? "h2" : "http/1.1");
    if (av__upstream_is_h2(up)) {
        if (av__h2_new(&m->h2, AV_H2_CLIENT, &mux_cbs, m) != AV_OK) {
            mux_die(m, "out of memory", 502);
            return 1;
        }
        /* Streams start once the origin's SETTINGS arrived (its stream
         * limit may be below our default assumption of 100). */
        m->state = M_H2;
        return 1;
    }
    /* HTTP/1.1: the connection goes to the first waiter; the rest dial
     * their own (an HTTP/1.1 connection carries one exchange at a time). */
    av_mux_stream *first = m->streams; /* the oldest */
    m->up = NULL;
    m->state = M_DEAD;
    mux_unlist(m);
    for (av_mux_stream *ms = m->streams; ms; ms = ms->next) {
        ms->state = AV_MS_H1;
        ms_mark(m, ms);
    }
    if (first) {
        first->up = up;
        up->notify = first->notify;
        up->owner = first->owner;
    } else {
        av__upstream_release(up, 1);
    }
    return 1;
}

static void mux_pump(av_mux *m)
{
    if (m->state == 0)
        return; /* still inside av__mux_attach (c-ares may answer synchronously) */
    if (m->in_pump) {
        m->again = 1;
        return;
    }
    m->in_pump = 1;
    m->refs++;
    for (int rounds = 0; rounds < 1000 && m->state != M_DEAD; rounds++) {
        int progress = 0;
        m->again = 0;
        av_upconn *up = m->up;
        if (m->state == M_DIALING) {
            if (up->state < AV_UP_READY)
                progress |= av__upstream_step(up);
            if (up->state == AV_UP_FAILED) {
                mux_die(m, up->side.errmsg, up->fail_status ? up->fail_status : 502);
                break;
            }
            if (up->state != AV_UP_READY) {
                if (progress)
                    continue; /* e.g. connected: start the TLS handshake */
                break;
            }
            mux_dialed(m);
            continue;
        }
        av_side *s = &up->side;
        int rc = av__side_pump_in(s);
        if (rc < 0) {
            char why[260];
            snprintf(why, sizeof(why), "upstream connection failed: %s", s->errmsg);
            mux_die(m, why, 502);
            break;
        }
        progress |= rc > 0;
        while (s->pin->len > 0) {
            size_t n = s->pin->len < MUX_FEED_SLICE ? s->pin->len : MUX_FEED_SLICE;
            ssize_t used = av__h2_feed(m->h2, av__buf_head(s->pin), n);
            if (used < 0) {
                /* A GOAWAY is queued; keep producing until it is out. */
                av__buf_consume(s->pin, s->pin->len);
                progress = 1;
                break;
            }
            av__buf_consume(s->pin, (size_t)used);
            progress = 1;
            if ((size_t)used < n)
                break;
            if (av__h2_produce(m->h2, s->pout) < 0)
                break;
        }
        rc = av__h2_produce(m->h2, s->pout);
        if (rc < 0) {
            mux_die(m, "HTTP/2 session failed", 502);
            break;
        }
        progress |= rc > 0;
        /* DATA went out (now or in an earlier round): streams that waited
         * for queue room go on. */
        for (av_mux_stream *ms = m->streams; ms; ms = ms->next)
            if (ms->want_room && ms->state == AV_MS_OPEN && !ms->closed &&
                av__h2_stream_room(m->h2, ms->id) >= 16384) {
                ms->want_room = 0;
                ms_mark(m, ms);
            }
        rc = av__side_pump_out(s);
        if (rc < 0) {
            char why[260];
            snprintf(why, sizeof(why), "upstream connection failed: %s", s->errmsg);
            mux_die(m, why, 502);
            break;
        }
        progress |= rc > 0;
        if (!av__h2_alive(m->h2)) {
            mux_die(m, "upstream ended the HTTP/2 connection", 502);
            break;
        }
        if (s->in_eof && s->pin->len == 0) {
            mux_die(m, "upstream closed the HTTP/2 connection", 502);
            break;
        }
        if (av__h2_goaway_last_stream(m->h2) >= 0)
            mux_unlist(m); /* going away: no new streams here */
        if (!progress && !m->again)
            break;
    }
    m->in_pump = 0;
    if (m->state != M_DEAD && m->up && m->up->side.io) {
        int ev = av__side_events(&m->up->side);
        if (m->up->state == AV_UP_CONNECTING)
            ev = AV_EV_WRITE;
        av__io_set(m->up->side.io, ev);
    }
    if (m->state == M_H2 && m->nstreams == 0)
        av__timer_start(m->idle, AV_POOL_IDLE_SECONDS);
    m->refs--;
    mux_deliver(m);
}

/* ---- API ------------------------------------------------------------------ */

int av__mux_attach(av_pool *pool, const av_authority *dest, const char *scope, av_mux_stream *ms,
                   av_up_notify notify, void *owner)
{
    char key[AV_UP_KEY_MAX];
    av__upstream_key(pool, key, sizeof(key), dest, 1, scope);
    memset(ms, 0, sizeof(*ms));
    ms->notify = notify;
    ms->owner = owner;
    ms->content_length = -1;
    av__buf_init(&ms->rx, MUX_RX_MAX);
    av__buf_init(&ms->hstore, MUX_HSTORE_MAX);
    for (av_mux *m = pool->muxes; m; m = m->next) {
        if (strcmp(m->key, key) != 0)
            continue;
        ms_link(m, ms);
        ms->state = m->state == M_H2 && m->settings && av__h2_can_submit(m->h2) ? AV_MS_READY : AV_MS_WAIT;
        return AV_OK;
    }
    /* An idle pooled connection (pools only hold HTTP/1.1 ones): the
     * origin spoke HTTP/1.1 last time, use it without making a mux. */
    av_upconn *pooled = av__upstream_pool_take(pool, key, notify, owner);
    if (pooled) {
        ms->state = AV_MS_H1;
        ms->up = pooled;
        return AV_OK;
    }
    av_mux *m = av__calloc(1, sizeof(*m));
    if (!m)
        return AV_ERR_NOMEM;
    m->pool = pool;
    memcpy(m->key, key, sizeof(key));
    m->idle = av__timer_new(pool->loop, mux_on_idle, m);
    if (!m->idle) {
        av__free(m);
        return AV_ERR_NOMEM;
    }
    av_upconn *up = NULL;
    int rc = av__upstream_acquire2(pool, dest, 1, scope, 1, mux_up_notify, m, &up);
    if (rc != AV_OK) {
        if (up)
            av__upstream_release(up, 0);
        av__timer_free(m->idle);
        av__free(m);
        return rc;
    }
    if (up->reused) {
        /* An idle pooled connection: pools only hold HTTP/1.1 ones. */
        av__timer_free(m->idle);
        av__free(m);
        ms->state = AV_MS_H1;
        ms->up = up;
        up->notify = notify;
        up->owner = owner;
        return AV_OK;
    }
    m->up = up;
    m->state = M_DIALING;
    m->next = pool->muxes;
    if (pool->muxes)
        pool->muxes->prev = m;
    pool->muxes = m;
    m->listed = 1;
    pool->nmux++;
    ms_link(m, ms);
    ms->state = AV_MS_WAIT;
    if (up->state == AV_UP_FAILED) {
        mux_die(m, up->side.errmsg, up->fail_status ? up->fail_status : 502);
        ms_unmark(ms); /* the caller sees FAILED on return */
    }
    return AV_OK;
}

int av__mux_submit(av_mux_stream *ms, const av_h2_head *head, int end_stream)
{
    av_mux *m = ms->mux;
    if (!m || ms->state != AV_MS_READY)
        return AV_ERR_STATE;
    if (m->state != M_H2) {
        ms->state = AV_MS_RETRY;
        return AV_ERR_STATE;
    }
    int32_t id = 0;
    int rc = av__h2_submit_request(m->h2, head, end_stream, &id);
    if (rc == AV_ERR_LIMIT) {
        ms->state = AV_MS_WAIT;
        return rc;
    }
    if (rc == AV_ERR_STATE) {
        ms->state = AV_MS_RETRY;
        return rc;
    }
    if (rc != AV_OK)
        return rc;
    ms->id = id;
    ms->state = AV_MS_OPEN;
    av__h2_set_tag(m->h2, id, ms);
    return AV_OK;
}

ssize_t av__mux_send(av_mux_stream *ms, const uint8_t *data, size_t len)
{
    if (!ms->mux || ms->state != AV_MS_OPEN || ms->closed || !ms->mux->h2)
        return AV_ERR_STATE;
    ssize_t n = av__h2_send_data(ms->mux->h2, ms->id, data, len);
    if (n > 0)
        ms->sent_any = 1;
    return n;
}

int av__mux_end(av_mux_stream *ms)
{
    if (!ms->mux || ms->state != AV_MS_OPEN || ms->closed || !ms->mux->h2)
        return AV_ERR_STATE;
    return av__h2_end_stream(ms->mux->h2, ms->id);
}

int av__mux_end_trailers(av_mux_stream *ms, const av_h1_field *fields, size_t n)
{
    if (!ms->mux || ms->state != AV_MS_OPEN || ms->closed || !ms->mux->h2)
        return AV_ERR_STATE;
    int rc = av__h2_submit_trailers(ms->mux->h2, ms->id, fields, n);
    return rc == AV_ERR_NOMEM ? rc : rc ? AV_ERR_STATE : AV_OK;
}

size_t av__mux_room(av_mux_stream *ms)
{
    if (!ms->mux || ms->state != AV_MS_OPEN || ms->closed || !ms->mux->h2)
        return 0;
    size_t room = av__h2_stream_room(ms->mux->h2, ms->id);
    if (room < 16384)
        ms->want_room = 1; /* told when the session has sent some of it */
    return room;
}

void av__mux_consume(av_mux_stream *ms, size_t n)
{
    if (n > ms->rx.len)
        n = ms->rx.len;
    av__buf_consume(&ms->rx, n);
    if (ms->mux && ms->mux->h2 && ms->state == AV_MS_OPEN && !ms->closed)
        av__h2_consume(ms->mux->h2, ms->id, n);
}

void av__mux_flush(av_mux_stream *ms)
{
    if (ms->mux && ms->mux->state == M_H2)
        mux_pump(ms->mux);
}

void av__mux_detach(av_mux_stream *ms)
{
    av_mux *m = ms->mux;
    if (ms->up) {
        av__upstream_release(ms->up, 0);
        ms->up = NULL;
    }
    if (m) {
        int reset = m->state == M_H2 && ms->state == AV_MS_OPEN && !ms->closed;
        int woken = ms->state == AV_MS_READY; /* it was given a slot it will not use */
        if (reset)
            av__h2_reset_stream(m->h2, ms->id, 8 /* CANCEL */);
        ms_unlink(ms);
        if (m->state == M_DIALING && m->nstreams == 0) {
            /* Nobody waits for this dial any more: let it finish for the
             * pool? A mux dial has no owner: stop it. */
            mux_die(m, "abandoned", 502);
        }
        if (m->state == M_H2) {
            /* A reset stream's slot frees when nghttp2 closes it (cb_close
             * wakes a waiter then); a woken waiter that leaves passes its
             * turn on. */
            if (woken)
                mux_wake_one(m);
            if (reset || woken || m->nstreams == 0)
                mux_pump(m);
        }
        mux_maybe_free(m);
    }
    av__buf_free_wipe(&ms->rx);
    av__buf_free_wipe(&ms->hstore);
    av__h1_fields_free(&ms->trailers);
    av__free(ms->fields);
    ms->fields = NULL;
    ms->state = AV_MS_IDLE;
    ms->nfields = 0;
}

size_t av__mux_count(const av_pool *pool)
{
    return pool->nmux;
}

void av__mux_free_all(av_pool *pool)
{
    while (pool->muxes) {
        av_mux *m = pool->muxes;
        mux_die(m, "shutting down", 502);
        /* Streams still attached belong to connections being destroyed. */
        while (m->streams)
            ms_unlink(m->streams);
        mux_maybe_free(m);
    }
}

void av__pool_cleanup(av_pool *pool)
{
    av__upstream_pool_free(pool);
    av__mux_free_all(pool);
}
