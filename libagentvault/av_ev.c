/* av_ev.c - libev binding. */
#include "av_ev.h"

#include <ev.h>

#include "av_mem.h"

struct av_loop {
    struct ev_loop *loop;
    int owned;
};

struct av_io {
    ev_io w;
    av_loop *l;
    av_io_cb cb;
    void *ud;
    int events;
};

struct av_timer {
    ev_timer w;
    av_loop *l;
    av_timer_cb cb;
    void *ud;
};

struct av_async {
    ev_async w;
    av_loop *l;
    av_timer_cb cb;
    void *ud;
};

av_loop *av__loop_new(void)
{
    av_loop *l = av__calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (!l->loop) {
        av__free(l);
        return NULL;
    }
    l->owned = 1;
    return l;
}

av_loop *av__loop_wrap(void *ev_loop_ptr)
{
    av_loop *l = av__calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->loop = ev_loop_ptr;
    return l;
}

void av__loop_free(av_loop *l)
{
    if (!l)
        return;
    if (l->owned)
        ev_loop_destroy(l->loop);
    av__free(l);
}

void av__loop_run(av_loop *l)
{
    ev_run(l->loop, 0);
}

void av__loop_break(av_loop *l)
{
    if (l->owned)
        ev_break(l->loop, EVBREAK_ALL); /* never break a host's loop */
}

int av__loop_owned(const av_loop *l)
{
    return l->owned;
}

double av__loop_now(av_loop *l)
{
    return ev_now(l->loop);
}

static void io_trampoline(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    av_io *io = (av_io *)w;
    int ev = ((revents & EV_READ) ? AV_EV_READ : 0) | ((revents & EV_WRITE) ? AV_EV_WRITE : 0);
    io->cb(io->ud, ev);
}

av_io *av__io_new(av_loop *l, int fd, av_io_cb cb, void *user_data)
{
    av_io *io = av__calloc(1, sizeof(*io));
    if (!io)
        return NULL;
    ev_io_init(&io->w, io_trampoline, fd, 0);
    io->l = l;
    io->cb = cb;
    io->ud = user_data;
    return io;
}

void av__io_set(av_io *io, int events)
{
    if (io->events == events)
        return;
    ev_io_stop(io->l->loop, &io->w);
    io->events = events;
    if (events) {
        ev_io_set(&io->w, io->w.fd,
                  ((events & AV_EV_READ) ? EV_READ : 0) | ((events & AV_EV_WRITE) ? EV_WRITE : 0));
        ev_io_start(io->l->loop, &io->w);
    }
}

void av__io_free(av_io *io)
{
    if (!io)
        return;
    ev_io_stop(io->l->loop, &io->w);
    av__free(io);
}

static void timer_trampoline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    av_timer *t = (av_timer *)w;
    t->cb(t->ud);
}

av_timer *av__timer_new(av_loop *l, av_timer_cb cb, void *user_data)
{
    av_timer *t = av__calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    ev_timer_init(&t->w, timer_trampoline, 0., 0.);
    t->l = l;
    t->cb = cb;
    t->ud = user_data;
    return t;
}

void av__timer_start(av_timer *t, double after)
{
    ev_timer_stop(t->l->loop, &t->w);
    ev_timer_set(&t->w, after, 0.);
    ev_timer_start(t->l->loop, &t->w);
}

void av__timer_stop(av_timer *t)
{
    ev_timer_stop(t->l->loop, &t->w);
}

int av__timer_active(const av_timer *t)
{
    return ev_is_active(&t->w);
}

void av__timer_free(av_timer *t)
{
    if (!t)
        return;
    ev_timer_stop(t->l->loop, &t->w);
    av__free(t);
}

static void async_trampoline(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    av_async *a = (av_async *)w;
    a->cb(a->ud);
}

av_async *av__async_new(av_loop *l, av_timer_cb cb, void *user_data)
{
    av_async *a = av__calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    ev_async_init(&a->w, async_trampoline);
    a->l = l;
    a->cb = cb;
    a->ud = user_data;
    ev_async_start(l->loop, &a->w);
    if (!l->owned)
        ev_unref(l->loop); /* a host's loop: our wake-up alone does not keep it running */
    return a;
}

void av__async_send(av_async *a)
{
    ev_async_send(a->l->loop, &a->w);
}

void av__async_free(av_async *a)
{
    if (!a)
        return;
    if (!a->l->owned)
        ev_ref(a->l->loop);
    ev_async_stop(a->l->loop, &a->w);
    av__free(a);
}
