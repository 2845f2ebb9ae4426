/* replica.c - the drain a load balancer can see, and the tokens_file watch
 * (see replica.h). */
#include "replica.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define WATCH_INTERVAL_NS 1000000000L

static av_ctx *g_ctx;               /* set once by replica_start, before signals can arrive */
static atomic_llong g_delay_ms;     /* [proxy] drain_delay */
static atomic_llong g_timeout_ms = 10000; /* [proxy] drain_timeout */
static atomic_int g_terms;          /* SIGTERM/SIGINT seen */
static timer_t g_timer;
static int g_timer_ok;

void replica_set_drain(const av_config *cfg)
{
    double delay = 0, timeout = 10;
    av_config_drain(cfg, &delay, &timeout);
    atomic_store(&g_delay_ms, (long long)(delay * 1000.0 + 0.5));
    atomic_store(&g_timeout_ms, (long long)(timeout * 1000.0 + 0.5));
}

static void shutdown_now(void)
{
    av_ctx_shutdown(g_ctx, (double)atomic_load(&g_timeout_ms) / 1000.0); /* async-signal-safe */
}

void replica_on_signal(int sig)
{
    if (!g_ctx)
        return;
    av_ctx_set_health(g_ctx, 0); /* /healthz: 503 from now on */
    int first = atomic_fetch_add(&g_terms, 1) == 0;
    long long d = atomic_load(&g_delay_ms);
    if (sig == SIGTERM && first && d > 0 && g_timer_ok) {
        struct itimerspec its;
        memset(&its, 0, sizeof(its));
        its.it_value.tv_sec = (time_t)(d / 1000);
        its.it_value.tv_nsec = (long)(d % 1000) * 1000000L;
        if (timer_settime(g_timer, 0, &its, NULL) == 0) /* async-signal-safe */
            return;
    }
    shutdown_now();
}

/* The drain delay is over: stop accepting, drain. */
static void on_drain_timer(int sig)
{
    (void)sig;
    if (g_ctx)
        shutdown_now();
}

/* ---- tokens_file ------------------------------------------------------------ */

/* What identifies a version of the file: stat(2) through symbolic links. */
typedef struct file_id {
    int err; /* errno of a failed stat; 0 */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim, ctim;
} file_id;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond;
static file_id g_read;   /* the version last read (under g_lock) */
static int g_stopping;   /* under g_lock */
static pthread_t g_thread;
static int g_thread_on;
static char g_path[4096];

static file_id file_id_of(const char *path)
{
    file_id id;
    memset(&id, 0, sizeof(id));
    struct stat st;
    if (stat(path, &st) != 0) {
        id.err = errno ? errno : EIO;
        return id;
    }
    id.dev = st.st_dev;
    id.ino = st.st_ino;
    id.size = st.st_size;
    id.mtim = st.st_mtim;
    id.ctim = st.st_ctim;
    return id;
}

static int file_id_equal(const file_id *a, const file_id *b)
{
    return a->err == b->err && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec &&
           a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

void replica_tokens_reading(const char *path)
{
    file_id id = file_id_of(path);
    pthread_mutex_lock(&g_lock);
    g_read = id;
    pthread_mutex_unlock(&g_lock);
}

/* Once a second: a version neither read nor already asked for means a
 * reload (one per change, so a bad file is reported once, not each second). */
static void *watch_main(void *ud)
{
    (void)ud;
    pthread_mutex_lock(&g_lock);
    file_id asked = g_read;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    while (!g_stopping) {
        next.tv_nsec += WATCH_INTERVAL_NS;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        while (!g_stopping && pthread_cond_timedwait(&g_cond, &g_lock, &next) != ETIMEDOUT)
            ;
        if (g_stopping)
            break;
        pthread_mutex_unlock(&g_lock);
        file_id cur = file_id_of(g_path);
        pthread_mutex_lock(&g_lock);
        if (!file_id_equal(&cur, &g_read) && !file_id_equal(&cur, &asked)) {
            asked = cur;
            av_ctx_reload(g_ctx); /* the loop thread re-reads the file */
        }
    }
    pthread_mutex_unlock(&g_lock);
    return NULL;
}

int replica_start(av_ctx *ctx, const char *tokens_file, char *err, size_t err_len)
{
    g_ctx = ctx;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_drain_timer;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGALRM;
    if (sigaction(SIGALRM, &sa, NULL) != 0 || timer_create(CLOCK_MONOTONIC, &sev, &g_timer) != 0) {
        snprintf(err, err_len, "cannot create the drain timer: %s", strerror(errno));
        return -1;
    }
    g_timer_ok = 1;
    if (!tokens_file)
        return 0;
    if (snprintf(g_path, sizeof(g_path), "%s", tokens_file) >= (int)sizeof(g_path)) {
        snprintf(err, err_len, "tokens_file: path too long");
        return -1;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g_cond, &ca);
    pthread_condattr_destroy(&ca);
    /* The thread must not take the process's signals (SIGTERM, SIGHUP):
     * the main thread's handlers run on the loop thread's behalf. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&g_thread, NULL, watch_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, err_len, "cannot start the tokens_file watch: %s", strerror(rc));
        return -1;
    }
    g_thread_on = 1;
    return 0;
}

void replica_stop(void)
{
    if (g_thread_on) {
        pthread_mutex_lock(&g_lock);
        g_stopping = 1;
        pthread_cond_signal(&g_cond);
        pthread_mutex_unlock(&g_lock);
        pthread_join(g_thread, NULL);
        g_thread_on = 0;
    }
    if (g_timer_ok) {
        timer_delete(g_timer);
        g_timer_ok = 0;
    }
    g_ctx = NULL;
}
