/* av_ev.h - the event binding: the only place that knows about libev.
 *
 * Watchers are heap objects owned by the caller; *_free stops them first.
 * Callbacks run on the loop's thread. A watcher may be freed from inside
 * its own callback.
 */
#ifndef AV_EV_H
#define AV_EV_H

typedef struct av_loop av_loop;
typedef struct av_io av_io;
typedef struct av_timer av_timer;
typedef struct av_async av_async;

enum { AV_EV_READ = 1, AV_EV_WRITE = 2 };

typedef void (*av_io_cb)(void *user_data, int revents);
typedef void (*av_timer_cb)(void *user_data);

/* av__loop_new creates a private loop; av__loop_wrap uses a host's
 * struct ev_loop * (passed as void * to keep ev.h out of other files). */
av_loop *av__loop_new(void);
av_loop *av__loop_wrap(void *ev_loop);
void av__loop_free(av_loop *l);
void av__loop_run(av_loop *l);
/* av__loop_break ends av__loop_run; a no-op on a host's loop. */
void av__loop_break(av_loop *l);
int av__loop_owned(const av_loop *l);
double av__loop_now(av_loop *l);

av_io *av__io_new(av_loop *l, int fd, av_io_cb cb, void *user_data);
/* av__io_set changes the watched events (0 stops the watcher). */
void av__io_set(av_io *w, int events);
void av__io_free(av_io *w);

av_timer *av__timer_new(av_loop *l, av_timer_cb cb, void *user_data);
/* av__timer_start (re)arms a one-shot timer |after| seconds from now. */
void av__timer_start(av_timer *t, double after);
void av__timer_stop(av_timer *t);
int av__timer_active(const av_timer *t);
void av__timer_free(av_timer *t);

/* av__async_new creates a watcher another thread or a signal handler can
 * trigger with av__async_send (async-signal-safe). On a host's loop it
 * does not count as an active watcher (ev_unref). */
av_async *av__async_new(av_loop *l, av_timer_cb cb, void *user_data);
void av__async_send(av_async *a);
void av__async_free(av_async *a);

#endif
