/* av_resolver.c - credential resolver (see av_resolver.h). Reasons name
 * the reference, never the value.
 */
#include "av_resolver.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#include "av_cmd.h"
#include "av_enc.h"
#include "av_mem.h"

#define FILE_SECRET_MAX (64 * 1024)
#define FAIL_REMEMBER 1.0 /* seconds a failed command answer is reused */
#define VAULT_NAME_MAX 64

typedef struct av_secret_request av_secret_request;

typedef struct cache_entry {
    char *ref;
    av_secret *secret;
    double expires;        /* 0: never (env:, file:, vault:) */
    double fail_until;     /* a failure is the answer until then */
    char why[200];
    av_cmd *job;           /* a command: run in progress */
    int remote;            /* another worker runs this command: wait for its answer (share) */
    av_secret_request *creq; /* a callback: request not answered yet */
} cache_entry;

/* A callback:NAME request handed to the embedder. It outlives the resolver
 * if the embedder answers after the context is gone (r is then NULL). */
struct av_secret_request {
    av_resolver *r;
    char *ref;
    int answered;
};

struct av_resolver_wait {
    av_resolver *r;
    av_resolver_done done;
    void *ud;
    char *ref;
    av_resolver_wait *next, *prev;
};


struct av_resolver {
    cache_entry *entries;
    size_t n;
    av_loop *loop;
    double ttl, timeout;
    av_vault_getter vault_get;
    void *vault_ud;
    av_secret_fn secret_fn;
    void *secret_ud;
    av_resolver_wait *waits;
    av_async *wake;       /* delivers "ask again" outside the asker's call */
    int wake_pending;
    /* While a waiter's done() runs: the answer of the run it waited for,
     * served even if the TTL (possibly 0) has already expired. */
    const char *handoff_ref;
    av_secret *handoff;
    av_secret_request *sync_creq; /* a callback asked from av__resolver_get */
    av_resolver_share *share; /* the workers' shared command: answers, or NULL */
};

/* ---- command: answers shared by the workers --------------------------------- */

/* One reload's command: answers, shared by the resolvers of every worker
 * (av_snap.h): a command runs once per TTL for the process, whichever
 * worker asks (one run at a time: the others wait for its answer). |lock|
 * is held for table work only, never while a command runs. */
typedef struct share_entry {
    char *ref;
    av_secret *secret;    /* the last answer (NULL: none, or it failed) */
    double expires;       /* monotonic */
    double fail_until;
    char why[200];
    av_resolver *runner;  /* the member whose run is in flight, or NULL */
} share_entry;

struct av_resolver_share {
    pthread_mutex_t lock;
    share_entry *e;
    size_t n;
    av_resolver **members;
    size_t nmembers;
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* env_name_valid checks [A-Za-z_][A-Za-z0-9_]*. */
static int env_name_valid(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return 0;
    for (s++; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
              (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

/* say writes a reason into |why| when the caller gave room for one. */
static void say(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t why_len, const char *fmt, ...)
{
    if (!why || why_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

/* resolve_env reads an environment variable. */
static int resolve_env(const char *name, av_secret **out, char *why, size_t why_len)
{
    const char *v = getenv(name);
    if (!v) {
        say(why, why_len, "environment variable %s is not set", name);
        return AV_ERR_SECRET;
    }
    if (!*v) {
        say(why, why_len, "environment variable %s is empty", name);
        return AV_ERR_SECRET;
    }
    *out = av__secret_new(v, strlen(v));
    return *out ? AV_OK : AV_ERR_NOMEM;
}

/* resolve_file reads a whole regular file of at most FILE_SECRET_MAX
 * bytes, dropping one trailing "\n" or "\r\n". */
static int resolve_file(const char *path, av_secret **out, char *why, size_t why_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        say(why, why_len, "cannot read %s: %s", path, strerror(errno));
        return AV_ERR_SECRET;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        say(why, why_len, "cannot read %s: %s", path, strerror(errno));
        close(fd);
        return AV_ERR_SECRET;
    }
    if (!S_ISREG(st.st_mode)) {
        say(why, why_len, "cannot read %s: not a regular file", path);
        close(fd);
        return AV_ERR_SECRET;
    }
    if (st.st_size > FILE_SECRET_MAX) {
        say(why, why_len, "%s is larger than 64 KiB", path);
        close(fd);
        return AV_ERR_SECRET;
    }
    /* One byte more than the limit detects a file that grew meanwhile. */
    size_t cap = FILE_SECRET_MAX + 1, len = 0;
    char *buf = av__malloc(cap);
    if (!buf) {
        close(fd);
        return AV_ERR_NOMEM;
    }
    int rc = AV_OK;
    while (len < cap) {
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            say(why, why_len, "cannot read %s: %s", path, strerror(errno));
            rc = AV_ERR_SECRET;
            break;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (rc == AV_OK && len > FILE_SECRET_MAX) {
        say(why, why_len, "%s is larger than 64 KiB", path);
        rc = AV_ERR_SECRET;
    }
    if (rc == AV_OK) {
        size_t n = len;
        if (n > 0 && buf[n - 1] == '\n') {
            n--;
            if (n > 0 && buf[n - 1] == '\r')
                n--;
        }
        if (n == 0) {
            say(why, why_len, "secret file %s is empty", path);
            rc = AV_ERR_SECRET;
        } else {
            *out = av__secret_new(buf, n);
            if (!*out)
                rc = AV_ERR_NOMEM;
        }
    }
    av__wipe(buf, len);
    av__free(buf);
    return rc;
}


static int vault_name_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '.' || c == '-'))
            return 0;
    }
    return n >= 1 && n <= VAULT_NAME_MAX;
}

/* av__secret_ref_valid: see the header. */
int av__secret_ref_valid(const char *ref)
{
    if (!ref)
        return 0;
    for (const char *p = ref; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\t')
            return 0;
    if (strncmp(ref, "env:", 4) == 0)
        return env_name_valid(ref + 4);
    if (strncmp(ref, "file:", 5) == 0) {
        const char *p = ref + 5;
        if (p[0] != '/' || p[1] == '\0')
            return 0;
        for (; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                return 0;
        return 1;
    }
    if (strncmp(ref, "vault:", 6) == 0)
        return vault_name_valid(ref + 6);
    if (strncmp(ref, "callback:", 9) == 0)
        return vault_name_valid(ref + 9);
    if (strncmp(ref, "command:", 8) == 0) {
        size_t n = strlen(ref + 8);
        char *buf = av__malloc(n + 1);
        char *argv[AV_CMD_ARGS_MAX + 1];
        if (!buf)
            return 0;
        int argc = av__cmd_split(ref + 8, buf, argv);
        int ok = argc > 0 && argv[0][0] == '/';
        av__free(buf);
        return ok;
    }
    return 0;
}

/* ---- the cache -------------------------------------------------------------- */

static cache_entry *cache_find(av_resolver *r, const char *ref)
{
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->entries[i].ref, ref) == 0)
            return &r->entries[i];
    return NULL;
}

static cache_entry *cache_add(av_resolver *r, const char *ref)
{
    cache_entry *ne = av__realloc(r->entries, (r->n + 1) * sizeof(*ne));
    if (!ne)
        return NULL;
    r->entries = ne;
    cache_entry *e = &r->entries[r->n];
    memset(e, 0, sizeof(*e));
    e->ref = av__strdup(ref);
    if (!e->ref)
        return NULL;
    r->n++;
    return e;
}

int av__resolver_share_new(av_resolver_share **out)
{
    av_resolver_share *s = av__calloc(1, sizeof(*s));
    if (!s)
        return AV_ERR_NOMEM;
    pthread_mutex_init(&s->lock, NULL);
    *out = s;
    return AV_OK;
}

void av__resolver_share_free(av_resolver_share *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        av__free(s->e[i].ref);
        av__secret_free(s->e[i].secret);
    }
    av__free(s->e);
    av__free(s->members);
    pthread_mutex_destroy(&s->lock);
    av__free(s);
}

/* Under the share's lock. */
static share_entry *share_find(av_resolver_share *s, const char *ref, int add)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->e[i].ref, ref) == 0)
            return &s->e[i];
    if (!add)
        return NULL;
    share_entry *ne = av__realloc(s->e, (s->n + 1) * sizeof(*ne));
    if (!ne)
        return NULL;
    s->e = ne;
    share_entry *e = &s->e[s->n];
    memset(e, 0, sizeof(*e));
    if (!(e->ref = av__strdup(ref)))
        return NULL;
    s->n++;
    return e;
}

/* Under the share's lock: every other member asks again. */
static void share_wake_others(av_resolver_share *s, const av_resolver *r)
{
    for (size_t i = 0; i < s->nmembers; i++)
        if (s->members[i] != r && s->members[i]->wake)
            av__async_send(s->members[i]->wake);
}

enum { SHARE_RUN, SHARE_ANSWERED, SHARE_WAIT };

/* share_take: before |r| runs the command of |e|: the shared answer when
 * fresh (or its failure when recent) copied into |e| (SHARE_ANSWERED), a
 * run of another worker to wait for (SHARE_WAIT; e->remote set), or
 * SHARE_RUN (r is the runner now). */
static int share_take(av_resolver *r, cache_entry *e, double now)
{
    av_resolver_share *s = r->share;
    int st = SHARE_RUN;
    pthread_mutex_lock(&s->lock);
    share_entry *se = share_find(s, e->ref, 1);
    if (!se) {
        st = SHARE_RUN; /* out of memory: run it ourselves, unshared */
    } else if (se->runner && se->runner != r) {
        e->remote = 1;
        st = SHARE_WAIT;
    } else if (se->secret && now < se->expires) {
        av__secret_free(e->secret);
        e->secret = av__secret_ref(se->secret);
        e->expires = se->expires;
        st = SHARE_ANSWERED;
    } else if (!se->runner && se->fail_until > now) {
        e->fail_until = se->fail_until;
        snprintf(e->why, sizeof(e->why), "%s", se->why);
        st = SHARE_ANSWERED;
    } else {
        se->runner = r;
    }
    pthread_mutex_unlock(&s->lock);
    return st;
}

/* share_put: |r|'s run of |e| is over (its answer or failure is in |e|):
 * publish it and wake the workers waiting for it. */
static void share_put(av_resolver *r, const cache_entry *e)
{
    av_resolver_share *s = r->share;
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    share_entry *se = share_find(s, e->ref, 0);
    if (se && se->runner == r) {
        se->runner = NULL;
        av__secret_free(se->secret);
        se->secret = e->secret ? av__secret_ref(e->secret) : NULL;
        se->expires = e->expires;
        se->fail_until = e->secret ? 0 : e->fail_until;
        snprintf(se->why, sizeof(se->why), "%s", e->secret ? "" : e->why);
        share_wake_others(s, r);
    }
    pthread_mutex_unlock(&s->lock);
}

/* share_poll: on a wake-up, entries waiting for another worker's run take
 * its answer once it is over (the answer of the run they waited for, even
 * with a TTL of 0; a runner that went away leaves none: they ask again). */
static void share_poll(av_resolver *r)
{
    av_resolver_share *s = r->share;
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < r->n; i++) {
        cache_entry *e = &r->entries[i];
        if (!e->remote)
            continue;
        share_entry *se = share_find(s, e->ref, 0);
        if (se && se->runner)
            continue;
        e->remote = 0;
        if (se && se->secret) {
            av__secret_free(e->secret);
            e->secret = av__secret_ref(se->secret);
            e->expires = se->expires;
        } else if (se && se->fail_until > 0) {
            e->fail_until = se->fail_until;
            snprintf(e->why, sizeof(e->why), "%s", se->why);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

void av__resolver_set_share(av_resolver *r, av_resolver_share *s)
{
    if (!r || !s || !r->wake)
        return; /* no loop: blocking runs only, nothing to share */
    pthread_mutex_lock(&s->lock);
    av_resolver **m = av__realloc(s->members, (s->nmembers + 1) * sizeof(*m));
    if (m) {
        s->members = m;
        s->members[s->nmembers++] = r;
        r->share = s;
    }
    pthread_mutex_unlock(&s->lock);
}

/* Leave the share: runs of |r| are abandoned (the others run their own). */
static void share_leave(av_resolver *r)
{
    av_resolver_share *s = r->share;
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    int abandoned = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->e[i].runner == r) {
            s->e[i].runner = NULL;
            abandoned = 1;
        }
    for (size_t i = 0; i < s->nmembers; i++)
        if (s->members[i] == r) {
            s->members[i] = s->members[--s->nmembers];
            break;
        }
    if (abandoned)
        share_wake_others(s, r);
    pthread_mutex_unlock(&s->lock);
    r->share = NULL;
}

/* ---- command: ------------------------------------------------------------------ */

/* The command's verdict once it has exited: AV_OK with the secret or an
 * error with a reason. |how| and |status| as av_cmd_done's. */
static int job_result(av_cmd *j, int how, int status, av_secret **out, char *why, size_t why_len)
{
    const char *prog = av__cmd_prog(j);
    if (how == AV_CMD_TOO_BIG) {
        say(why, why_len, "command %s printed more than 64 KiB", prog);
        return AV_ERR_SECRET;
    }
    if (how == AV_CMD_TIMEOUT) {
        say(why, why_len, "command %s did not finish in time", prog);
        return AV_ERR_SECRET;
    }
    if (WIFSIGNALED(status)) {
        say(why, why_len, "command %s was killed by signal %d", prog, WTERMSIG(status));
        return AV_ERR_SECRET;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        say(why, why_len, "command %s exited with status %d", prog, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        return AV_ERR_SECRET;
    }
    size_t n;
    const uint8_t *buf = av__cmd_output(j, &n);
    if (n > 0 && buf[n - 1] == '\n') {
        n--;
        if (n > 0 && buf[n - 1] == '\r')
            n--;
    }
    if (n == 0) {
        say(why, why_len, "command %s printed nothing", prog);
        return AV_ERR_SECRET;
    }
    *out = av__secret_new(buf, n);
    return *out ? AV_OK : AV_ERR_NOMEM;
}

/* Start a command: reference (av_cmd.h: no input, 64 KiB of output). */
static int job_start(av_resolver *r, const char *ref, av_loop *loop, av_cmd_done done, av_cmd **out, char *why,
                     size_t why_len)
{
    int rc = av__cmd_start(loop, ref + 8, NULL, 0, r->timeout, FILE_SECRET_MAX, done, r, out, why, why_len);
    if (rc == AV_ERR_INVALID)
        say(why, why_len, "invalid command reference");
    return rc == AV_ERR_NOMEM ? rc : rc != AV_OK ? AV_ERR_SECRET : AV_OK;
}

/* Run a command to completion, blocking (startup). */
static int run_blocking(av_resolver *r, const char *ref, av_secret **out, char *why, size_t why_len)
{
    av_cmd *j = NULL;
    int rc = job_start(r, ref, NULL, NULL, &j, why, why_len);
    if (rc != AV_OK)
        return rc;
    int status = 0;
    int how = av__cmd_wait(j, &status);
    rc = job_result(j, how, status, out, why, why_len);
    if (how == AV_CMD_TIMEOUT)
        say(why, why_len, "command %s did not finish within %.0f s", av__cmd_prog(j), r->timeout);
    av__cmd_free(j);
    return rc;
}

static void wake_waiters(av_resolver *r)
{
    if (!r->wake_pending && r->wake) {
        r->wake_pending = 1;
        av__async_send(r->wake);
    }
}

/* A command's run is over: store the answer in its entry and wake askers. */
static void job_done(void *ud, av_cmd *j, int how, int status)
{
    av_resolver *r = ud;
    cache_entry *e = NULL;
    for (size_t i = 0; i < r->n && !e; i++)
        if (r->entries[i].job == j)
            e = &r->entries[i];
    if (!e)
        return;
    av_secret *s = NULL;
    char why[200] = "";
    int rc = job_result(j, how, status, &s, why, sizeof(why));
    if (how == AV_CMD_TIMEOUT)
        snprintf(why, sizeof(why), "command %s did not finish within %.0f s", av__cmd_prog(j), r->timeout);
    double now = mono_now();
    if (rc == AV_OK) {
        av__secret_free(e->secret);
        e->secret = s;
        e->expires = now + r->ttl;
        e->fail_until = 0;
    } else {
        av__secret_free(e->secret);
        e->secret = NULL;
        e->fail_until = now + FAIL_REMEMBER;
        snprintf(e->why, sizeof(e->why), "%s", rc == AV_ERR_NOMEM ? "out of memory" : why);
    }
    e->job = NULL;
    av__cmd_free(j);
    share_put(r, e);
    wake_waiters(r);
}

static void resolver_on_wake(void *ud)
{
    av_resolver *r = ud;
    r->wake_pending = 0;
    share_poll(r);
    /* Each waiter is removed before its callback runs; callbacks may cancel
     * or add waiters. Restart from the head every time. */
    for (;;) {
        av_resolver_wait *w = r->waits;
        while (w) {
            cache_entry *e = cache_find(r, w->ref);
            if (!e || (!e->job && !e->creq && !e->remote))
                break;
            w = w->next;
        }
        if (!w)
            break;
        if (w->prev)
            w->prev->next = w->next;
        else
            r->waits = w->next;
        if (w->next)
            w->next->prev = w->prev;
        av_resolver_done done = w->done;
        void *ud2 = w->ud;
        cache_entry *e = cache_find(r, w->ref);
        r->handoff = e && e->secret ? av__secret_ref(e->secret) : NULL;
        r->handoff_ref = w->ref;
        done(ud2);
        av__secret_free(r->handoff);
        r->handoff = NULL;
        r->handoff_ref = NULL;
        av__free(w->ref);
        av__free(w);
    }
}

/* ---- API ------------------------------------------------------------------------- */

int av__resolver_new(av_resolver **out)
{
    if (!out)
        return AV_ERR_INVALID;
    *out = av__calloc(1, sizeof(**out));
    if (!*out)
        return AV_ERR_NOMEM;
    (*out)->ttl = AV_RESOLVER_DEFAULT_TTL;
    (*out)->timeout = AV_RESOLVER_DEFAULT_CMD_TIMEOUT;
    return AV_OK;
}

void av__resolver_set_loop(av_resolver *r, av_loop *loop, double ttl, double timeout)
{
    r->loop = loop;
    if (ttl >= 0)
        r->ttl = ttl;
    if (timeout > 0)
        r->timeout = timeout;
    if (!r->wake && loop)
        r->wake = av__async_new(loop, resolver_on_wake, r);
}

void av__resolver_set_callback(av_resolver *r, av_secret_fn fn, void *ud)
{
    r->secret_fn = fn;
    r->secret_ud = ud;
}

/* The embedder answered (or failed) a callback:NAME request. */
static void creq_finish(av_secret_request *q, const void *value, size_t len, const char *reason)
{
    if (!q || q->answered)
        return;
    q->answered = 1;
    av_resolver *r = q->r;
    if (r) {
        cache_entry *e = cache_find(r, q->ref);
        if (e && e->creq == q) {
            e->creq = NULL;
            double now = mono_now();
            av__secret_free(e->secret);
            e->secret = NULL;
            if (value && len > 0 && len <= FILE_SECRET_MAX) {
                e->secret = av__secret_new(value, len);
                e->expires = now + r->ttl;
            }
            if (!e->secret) {
                e->fail_until = now + FAIL_REMEMBER;
                snprintf(e->why, sizeof(e->why), "%s: %s", q->ref,
                         value && len > FILE_SECRET_MAX ? "the answer is larger than 64 KiB"
                         : value && len > 0             ? "out of memory"
                         : reason && *reason            ? reason
                                                        : "no answer");
                av__sanitize_line(e->why, sizeof(e->why), e->why, strlen(e->why), AV__LINE_KEEP_HIGH);
            }
            wake_waiters(r);
        }
    }
    /* Answered synchronously inside get_common: it frees the request. */
    if (q->r && q->r->sync_creq == q)
        return;
    av__free(q->ref);
    av__free(q);
}

AV_EXPORT void av_secret_request_answer(av_secret_request *req, const void *value, size_t len)
{
    creq_finish(req, value, len, NULL);
}

AV_EXPORT void av_secret_request_fail(av_secret_request *req, const char *reason)
{
    creq_finish(req, NULL, 0, reason ? reason : "the embedder refused");
}

void av__resolver_set_vault(av_resolver *r, av_vault_getter get, void *ud)
{
    r->vault_get = get;
    r->vault_ud = ud;
}

void av__resolver_free(av_resolver *r)
{
    if (!r)
        return;
    share_leave(r);
    while (r->waits) {
        av_resolver_wait *w = r->waits;
        r->waits = w->next;
        av__free(w->ref);
        av__free(w);
    }
    for (size_t i = 0; i < r->n; i++) {
        if (r->entries[i].creq)
            r->entries[i].creq->r = NULL; /* freed when the embedder answers */
        av__cmd_free(r->entries[i].job);
        av__free(r->entries[i].ref);
        av__secret_free(r->entries[i].secret);
    }
    av__async_free(r->wake);
    av__free(r->entries);
    av__free(r);
}

/* Synchronous sources. */
static int resolve_now(av_resolver *r, const char *ref, av_secret **s, char *why, size_t why_len)
{
    if (ref[0] == 'e')
        return resolve_env(ref + 4, s, why, why_len);
    if (ref[0] == 'f')
        return resolve_file(ref + 5, s, why, why_len);
    if (ref[0] == 'v') {
        if (!r->vault_get) {
            say(why, why_len, "no vault is configured for %s", ref);
            return AV_ERR_SECRET;
        }
        return r->vault_get(r->vault_ud, ref + 6, s, why, why_len);
    }
    return run_blocking(r, ref, s, why, why_len);
}

static int get_common(av_resolver *r, const char *ref, av_secret **out, char *why, size_t why_len,
                      av_resolver_done done, void *ud, av_resolver_wait **wait)
{
    if (why && why_len)
        why[0] = '\0';
    if (wait)
        *wait = NULL;
    if (!r || !ref || !out)
        return AV_ERR_INVALID;
    *out = NULL;
    if (!av__secret_ref_valid(ref)) {
        say(why, why_len,
            "unsupported secret reference (expected env:NAME, file:/path, vault:NAME, command:/path or callback:NAME)");
        return AV_ERR_INVALID;
    }
    if (r->handoff && strcmp(r->handoff_ref, ref) == 0) {
        *out = av__secret_ref(r->handoff);
        return AV_OK;
    }
    double now = mono_now();
    cache_entry *e = cache_find(r, ref);
    if (e && e->secret && (e->expires == 0 || now < e->expires)) {
        *out = av__secret_ref(e->secret);
        return AV_OK;
    }
    if (e && !e->job && !e->creq && !e->remote && e->fail_until > now) {
        say(why, why_len, "%s", e->why);
        return AV_ERR_SECRET;
    }
    int is_cb = strncmp(ref, "callback:", 9) == 0;
    if (is_cb) {
        if (!r->secret_fn) {
            say(why, why_len, "no secret callback is installed for %s", ref);
            return AV_ERR_SECRET;
        }
        if (!e && !(e = cache_add(r, ref)))
            return AV_ERR_NOMEM;
        if (!e->creq) {
            av_secret_request *q = av__calloc(1, sizeof(*q));
            if (!q || !(q->ref = av__strdup(ref))) {
                av__free(q);
                return AV_ERR_NOMEM;
            }
            q->r = r;
            e->creq = q;
            e->fail_until = 0;
            r->sync_creq = q;
            r->secret_fn(r->secret_ud, ref + 9, q);
            r->sync_creq = NULL;
            if (q->answered) {
                av__free(q->ref);
                av__free(q);
                e = cache_find(r, ref); /* the cache may have moved */
                if (e && e->secret) {
                    *out = av__secret_ref(e->secret);
                    return AV_OK;
                }
                say(why, why_len, "%s", e ? e->why : "no answer");
                return AV_ERR_SECRET;
            }
        }
        if (!done) {
            say(why, why_len, "%s did not answer at once (tokens need an immediate answer)", ref);
            return AV_ERR_SECRET;
        }
        goto wait;
    }
    int is_cmd = strncmp(ref, "command:", 8) == 0;
    if (!is_cmd || !done || !r->loop) {
        if (e && e->job) {
            /* A run is in flight for async askers: a blocking asker waits
             * for its own run. */
        }
        av_secret *s = NULL;
        int rc = resolve_now(r, ref, &s, why, why_len);
        if (rc != AV_OK)
            return rc;
        if (!e && !(e = cache_add(r, ref))) {
            av__secret_free(s);
            return AV_ERR_NOMEM;
        }
        av__secret_free(e->secret);
        e->secret = s;
        e->expires = is_cmd ? now + r->ttl : 0;
        *out = av__secret_ref(s);
        return AV_OK;
    }
    /* Asynchronous command run: this worker's, or (shared) another's. */
    if (!e && !(e = cache_add(r, ref)))
        return AV_ERR_NOMEM;
    if (!e->job && !e->remote && r->share) {
        int st = share_take(r, e, now);
        if (st == SHARE_ANSWERED) {
            if (e->secret) {
                *out = av__secret_ref(e->secret);
                return AV_OK;
            }
            say(why, why_len, "%s", e->why);
            return AV_ERR_SECRET;
        }
    }
    if (!e->job && !e->remote) {
        av_cmd *j = NULL;
        int rc = job_start(r, ref, r->loop, job_done, &j, e->why, sizeof(e->why));
        if (rc != AV_OK) {
            e->fail_until = now + FAIL_REMEMBER;
            av__secret_free(e->secret);
            e->secret = NULL;
            share_put(r, e);
            say(why, why_len, "%s", e->why);
            return rc;
        }
        e->job = j;
    }
wait:;
    av_resolver_wait *w = av__calloc(1, sizeof(*w));
    if (!w || !(w->ref = av__strdup(ref))) {
        av__free(w);
        return AV_ERR_NOMEM;
    }
    w->r = r;
    w->done = done;
    w->ud = ud;
    w->next = r->waits;
    if (r->waits)
        r->waits->prev = w;
    r->waits = w;
    *wait = w;
    return AV_ERR_AGAIN;
}

int av__resolver_get(av_resolver *r, const char *ref, av_secret **out, char *why, size_t why_len)
{
    return get_common(r, ref, out, why, why_len, NULL, NULL, NULL);
}

int av__resolver_get_async(av_resolver *r, const char *ref, av_secret **out, char *why, size_t why_len,
                           av_resolver_done done, void *ud, av_resolver_wait **wait)
{
    return get_common(r, ref, out, why, why_len, done, ud, wait);
}

void av__resolver_cancel(av_resolver_wait *w)
{
    if (!w)
        return;
    av_resolver *r = w->r;
    if (w->prev)
        w->prev->next = w->next;
    else
        r->waits = w->next;
    if (w->next)
        w->next->prev = w->prev;
    av__free(w->ref);
    av__free(w);
}
