/* control.c - the control socket and the CLI of held requests (see
 * control.h). */
#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CTL_HELD_MAX 1024      /* the library holds at most as many */
#define CTL_CLIENTS_MAX 16
#define CTL_LINE_MAX 1024      /* a command line from a client */
#define CTL_OUT_MAX (512 * 1024) /* queued toward one client (a watcher that does not read is dropped) */

typedef struct held {
    av_decision_request *req;
    char id[24];
    double since;              /* CLOCK_MONOTONIC */
    char row[1200];            /* TOKEN\tMETHOD\tHOST\tPATH\tSERVICE, sanitized */
    int announced;             /* watchers were told */
} held;

typedef struct client {
    int fd;
    char in[CTL_LINE_MAX + 1];
    size_t in_len;
    char *out;
    size_t out_len, out_cap;
    int watch;
    int closing;               /* close once the output is written */
} client;

struct ctl {
    pthread_t thread;
    int started;
    int lfd;
    int wake[2];               /* the decide callback and ctl_stop write a byte */
    int stop;                  /* under mu */
    char path[4096];
    int dirfd;                 /* for paths longer than sun_path */
    pthread_mutex_t mu;        /* guards held, nheld, stop */
    held *held;
    size_t nheld;
    client clients[CTL_CLIENTS_MAX];
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The address of |dir|/control.sock; through /proc/self/fd when the path
 * does not fit sun_path. */
static int sock_addr(const char *dir, int dirfd, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    int n = snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/control.sock", dir);
    if (n > 0 && (size_t)n < sizeof(sa->sun_path))
        return 0;
    if (dirfd < 0)
        return -1;
    n = snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/control.sock", dirfd);
    return n > 0 && (size_t)n < sizeof(sa->sun_path) ? 0 : -1;
}

/* Copy |s| into a tab-separated row field: tabs and controls become '?'. */
static size_t field(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; s && *s && o + 1 < cap; s++)
        out[o++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
    out[o] = '\0';
    return o;
}

/* ---- the decide callback (any loop thread) ------------------------------ */

void ctl_decide(void *ud, av_decision_request *req)
{
    ctl *c = ud;
    held h;
    memset(&h, 0, sizeof(h));
    h.req = req;
    snprintf(h.id, sizeof(h.id), "%s", av_decision_request_get(req, "id"));
    h.since = mono_now();
    static const char *const cols[] = {"token", "method", "host", "path", "service"};
    size_t o = 0;
    for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) {
        const char *v = av_decision_request_get(req, cols[i]);
        if (i)
            h.row[o++] = '\t';
        o += field(h.row + o, sizeof(h.row) - o - 8, v && *v ? v : "-");
    }
    pthread_mutex_lock(&c->mu);
    int ok = !c->stop && c->nheld < CTL_HELD_MAX;
    if (ok)
        c->held[c->nheld++] = h;
    pthread_mutex_unlock(&c->mu);
    if (!ok) {
        av_decision_deny(req, 503, "too many requests are waiting for a person");
        return;
    }
    char b = 1;
    ssize_t w = write(c->wake[1], &b, 1); /* non-blocking: a full pipe already wakes */
    (void)w;
}

/* ---- the server thread ------------------------------------------------- */

static void out_add(client *cl, const char *s, size_t n)
{
    if (cl->closing && !cl->watch)
        return;
    if (cl->out_len + n > CTL_OUT_MAX) {
        cl->closing = 1; /* a watcher that does not read: dropped */
        cl->watch = 0;
        cl->out_len = 0;
        return;
    }
    if (cl->out_len + n > cl->out_cap) {
        size_t cap = cl->out_cap ? cl->out_cap : 4096;
        while (cap < cl->out_len + n)
            cap *= 2;
        char *p = realloc(cl->out, cap);
        if (!p) {
            cl->closing = 1;
            return;
        }
        cl->out = p;
        cl->out_cap = cap;
    }
    memcpy(cl->out + cl->out_len, s, n);
    cl->out_len += n;
}

static void out_str(client *cl, const char *s)
{
    out_add(cl, s, strlen(s));
}

static void out_held(client *cl, const held *h, double now)
{
    char line[1300];
    int n = snprintf(line, sizeof(line), "held\t%s\t%.0f\t%s\n", h->id, now - h->since, h->row);
    if (n > 0)
        out_add(cl, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void client_close(client *cl)
{
    close(cl->fd);
    free(cl->out);
    memset(cl, 0, sizeof(*cl));
    cl->fd = -1;
}

/* Take entry |id| out of the table (mutex held by the caller). */
static int take(ctl *c, const char *id, held *out)
{
    for (size_t i = 0; i < c->nheld; i++)
        if (strcmp(c->held[i].id, id) == 0) {
            *out = c->held[i];
            c->held[i] = c->held[--c->nheld];
            return 1;
        }
    return 0;
}

/* Run one command line of a client. */
static void run_line(ctl *c, client *cl, char *line)
{
    char *save = NULL;
    char *cmd = strtok_r(line, " ", &save);
    double now = mono_now();
    if (!cmd) {
        out_str(cl, "error empty command\n");
        return;
    }
    if (!strcmp(cmd, "pending") || !strcmp(cmd, "watch")) {
        pthread_mutex_lock(&c->mu);
        for (size_t i = 0; i < c->nheld; i++)
            if (av_decision_request_waiting(c->held[i].req))
                out_held(cl, &c->held[i], now);
        pthread_mutex_unlock(&c->mu);
        if (!strcmp(cmd, "watch")) {
            cl->watch = 1;
            out_str(cl, "watching\n");
        } else {
            out_str(cl, "end\n");
        }
        return;
    }
    int approve = !strcmp(cmd, "approve");
    if (!approve && strcmp(cmd, "deny") != 0) {
        out_str(cl, "error unknown command (pending, watch, approve, deny)\n");
        return;
    }
    char *id = strtok_r(NULL, " ", &save);
    if (!id || strlen(id) > 20 || strspn(id, "0123456789") != strlen(id)) {
        out_str(cl, "error expected a request id (a number)\n");
        return;
    }
    int scope = AV_REMEMBER_NONE;
    double secs = 0;
    const char *reason = NULL;
    if (approve) {
        char *s = strtok_r(NULL, " ", &save), *sc = strtok_r(NULL, " ", &save);
        if (s) {
            char *end = NULL;
            secs = strtod(s, &end);
            if (!end || *end || !(secs > 0 && secs <= 7 * 86400.0) || !sc ||
                (strcmp(sc, "path") != 0 && strcmp(sc, "service") != 0) || strtok_r(NULL, " ", &save)) {
                out_str(cl, "error approve ID [SECONDS path|service]\n");
                return;
            }
            scope = !strcmp(sc, "path") ? AV_REMEMBER_PATH : AV_REMEMBER_SERVICE;
        }
    } else {
        reason = save && *save ? save : NULL;
    }
    held h;
    pthread_mutex_lock(&c->mu);
    int found = take(c, id, &h);
    pthread_mutex_unlock(&c->mu);
    if (!found) {
        out_str(cl, "error no request with that id is held\n");
        return;
    }
    int rc = approve ? av_decision_allow(h.req, scope, NULL, secs)
                     : av_decision_deny(h.req, 403, reason ? reason : "denied by a person");
    if (rc == AV_OK)
        out_str(cl, approve ? "ok approved\n" : "ok denied\n");
    else
        out_str(cl, "error the request no longer waits (timed out or the agent went away)\n");
    for (size_t i = 0; i < CTL_CLIENTS_MAX; i++)
        if (c->clients[i].fd >= 0 && c->clients[i].watch) {
            char g[64];
            snprintf(g, sizeof(g), "gone\t%s\t%s\n", h.id, approve ? "approved" : "denied");
            out_str(&c->clients[i], g);
        }
}

/* Same user or root, else refused. */
static int peer_allowed(int fd)
{
    struct ucred cr;
    socklen_t l = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &l) != 0)
        return 0;
    return cr.uid == 0 || cr.uid == geteuid();
}

static void accept_one(ctl *c)
{
    int fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
        return;
    if (!peer_allowed(fd)) {
        static const char m[] = "error permission denied: only the daemon's user or root may use this socket\n";
        ssize_t w = write(fd, m, sizeof(m) - 1);
        (void)w;
        close(fd);
        return;
    }
    for (size_t i = 0; i < CTL_CLIENTS_MAX; i++)
        if (c->clients[i].fd < 0) {
            memset(&c->clients[i], 0, sizeof(c->clients[i]));
            c->clients[i].fd = fd;
            return;
        }
    static const char m[] = "error too many control connections\n";
    ssize_t w = write(fd, m, sizeof(m) - 1);
    (void)w;
    close(fd);
}

static void read_client(ctl *c, client *cl)
{
    for (;;) {
        ssize_t r = read(cl->fd, cl->in + cl->in_len, CTL_LINE_MAX - cl->in_len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (r <= 0) {
            cl->closing = 1;
            cl->watch = 0;
            return;
        }
        cl->in_len += (size_t)r;
        char *nl;
        while ((nl = memchr(cl->in, '\n', cl->in_len))) {
            *nl = '\0';
            size_t ll = (size_t)(nl - cl->in);
            if (ll && cl->in[ll - 1] == '\r')
                cl->in[ll - 1] = '\0';
            run_line(c, cl, cl->in);
            memmove(cl->in, nl + 1, cl->in_len - ll - 1);
            cl->in_len -= ll + 1;
        }
        if (cl->in_len >= CTL_LINE_MAX) {
            out_str(cl, "error command line too long\n");
            cl->closing = 1;
            return;
        }
    }
}

/* Tell watchers of new requests; drop (and release) those no longer waiting. */
static void sweep(ctl *c)
{
    double now = mono_now();
    av_decision_request *gone[64];
    char gone_id[64][24];
    size_t ngone = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->nheld;) {
        held *h = &c->held[i];
        if (!av_decision_request_waiting(h->req) && ngone < 64) {
            gone[ngone] = h->req;
            snprintf(gone_id[ngone], sizeof(gone_id[0]), "%s", h->id);
            ngone++;
            c->held[i] = c->held[--c->nheld];
            continue;
        }
        if (!h->announced) {
            h->announced = 1;
            for (size_t k = 0; k < CTL_CLIENTS_MAX; k++)
                if (c->clients[k].fd >= 0 && c->clients[k].watch)
                    out_held(&c->clients[k], h, now);
        }
        i++;
    }
    pthread_mutex_unlock(&c->mu);
    for (size_t g = 0; g < ngone; g++) {
        av_decision_deny(gone[g], 403, NULL); /* only releases it: it no longer waits */
        for (size_t k = 0; k < CTL_CLIENTS_MAX; k++)
            if (c->clients[k].fd >= 0 && c->clients[k].watch) {
                char line[96];
                snprintf(line, sizeof(line), "gone\t%.23s\ttimeout or cancelled\n", gone_id[g]);
                out_str(&c->clients[k], line);
            }
    }
}

static void *ctl_thread(void *arg)
{
    ctl *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        int stop = c->stop;
        pthread_mutex_unlock(&c->mu);
        if (stop)
            break;
        struct pollfd pf[2 + CTL_CLIENTS_MAX];
        client *who[2 + CTL_CLIENTS_MAX];
        nfds_t n = 0;
        pf[n] = (struct pollfd){c->lfd, POLLIN, 0};
        who[n++] = NULL;
        pf[n] = (struct pollfd){c->wake[0], POLLIN, 0};
        who[n++] = NULL;
        for (size_t i = 0; i < CTL_CLIENTS_MAX; i++) {
            client *cl = &c->clients[i];
            if (cl->fd < 0)
                continue;
            short ev = cl->closing ? 0 : POLLIN;
            if (cl->out_len)
                ev |= POLLOUT;
            pf[n] = (struct pollfd){cl->fd, ev, 0};
            who[n++] = cl;
        }
        int pr = poll(pf, n, 500); /* the sweep notices timed-out and cancelled requests */
        if (pr < 0 && errno != EINTR)
            break;
        if (pf[1].revents) {
            char buf[256];
            while (read(c->wake[0], buf, sizeof(buf)) > 0)
                ;
        }
        if (pf[0].revents & POLLIN)
            accept_one(c);
        for (nfds_t i = 2; i < n; i++) {
            client *cl = who[i];
            if (pf[i].revents & (POLLIN | POLLHUP | POLLERR))
                read_client(c, cl);
        }
        sweep(c);
        for (size_t i = 0; i < CTL_CLIENTS_MAX; i++) {
            client *cl = &c->clients[i];
            if (cl->fd < 0)
                continue;
            while (cl->out_len) {
                ssize_t w = send(cl->fd, cl->out, cl->out_len, MSG_NOSIGNAL);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0) {
                    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                        cl->out_len = 0;
                        cl->closing = 1;
                        cl->watch = 0;
                    }
                    break;
                }
                memmove(cl->out, cl->out + w, cl->out_len - (size_t)w);
                cl->out_len -= (size_t)w;
            }
            if (cl->closing && !cl->out_len)
                client_close(cl);
        }
    }
    return NULL;
}

int ctl_start(const char *state_dir, int required, ctl **out, char *err, size_t err_len)
{
    *out = NULL;
    ctl *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    c->lfd = c->wake[0] = c->wake[1] = -1;
    for (size_t i = 0; i < CTL_CLIENTS_MAX; i++)
        c->clients[i].fd = -1;
    pthread_mutex_init(&c->mu, NULL);
    c->held = calloc(CTL_HELD_MAX, sizeof(*c->held));
    snprintf(c->path, sizeof(c->path), "%s/control.sock", state_dir);
    c->dirfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct sockaddr_un sa;
    if (!c->held || c->dirfd < 0 || sock_addr(state_dir, c->dirfd, &sa) != 0) {
        snprintf(err, err_len, "control socket %s: cannot use the state directory", c->path);
        goto fail;
    }
    struct stat st;
    if (lstat(c->path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, err_len, "control socket %s exists and is not a socket: remove it", c->path);
            goto fail;
        }
        /* a live daemon answers; a stale socket (a crash) is replaced */
        int t = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int live = t >= 0 && connect(t, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        if (t >= 0)
            close(t);
        if (live) {
            snprintf(err, err_len, "control socket %s is in use: another agentvault serves this state directory",
                     c->path);
            goto fail;
        }
        unlink(c->path);
    }
    c->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    mode_t old = umask(077);
    int b = c->lfd >= 0 ? bind(c->lfd, (struct sockaddr *)&sa, sizeof(sa)) : -1;
    umask(old);
    if (b != 0 && !required && (errno == EACCES || errno == EROFS || errno == EPERM)) {
        /* a read-only state directory (replicas): no person can be asked,
         * and no configuration may ask one (reload_config checks) */
        ctl_stop(c);
        return 1;
    }
    if (b != 0 || chmod(c->path, 0600) != 0 || listen(c->lfd, 16) != 0 ||
        pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        snprintf(err, err_len, "control socket %s: %s", c->path, strerror(errno));
        goto fail;
    }
    if (pthread_create(&c->thread, NULL, ctl_thread, c) != 0) {
        snprintf(err, err_len, "control socket: cannot start its thread");
        goto fail;
    }
    c->started = 1;
    *out = c;
    return 0;
fail:
    ctl_stop(c);
    return -1;
}

void ctl_stop(ctl *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_mutex_unlock(&c->mu);
    if (c->started) {
        char b = 1;
        ssize_t w = write(c->wake[1], &b, 1);
        (void)w;
        pthread_join(c->thread, NULL);
        unlink(c->path);
    }
    for (size_t i = 0; i < c->nheld; i++)
        av_decision_deny(c->held[i].req, 503, "agentvault is shutting down");
    for (size_t i = 0; i < CTL_CLIENTS_MAX; i++)
        if (c->clients[i].fd >= 0)
            client_close(&c->clients[i]);
    if (c->lfd >= 0)
        close(c->lfd);
    for (int i = 0; i < 2; i++)
        if (c->wake[i] >= 0)
            close(c->wake[i]);
    if (c->dirfd >= 0)
        close(c->dirfd);
    pthread_mutex_destroy(&c->mu);
    free(c->held);
    free(c);
}

/* ---- the CLI ------------------------------------------------------------- */

static void cli_usage(void)
{
    fputs("usage: agentvault pending [--watch] | approve ID [--remember 10m] [--scope path|service] |\n"
          "       deny ID [--reason TEXT]   [-c FILE] [--state-dir DIR]\n",
          stderr);
}

/* "600", "30s", "10m", "2h", "1d" -> seconds; -1 when malformed. */
static double parse_duration(const char *s)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v > 0))
        return -1;
    double mul = 1;
    if (!strcmp(end, "m"))
        mul = 60;
    else if (!strcmp(end, "h"))
        mul = 3600;
    else if (!strcmp(end, "d"))
        mul = 86400;
    else if (*end && strcmp(end, "s") != 0)
        return -1;
    v *= mul;
    return v <= 7 * 86400.0 ? v : -1;
}

/* Print one "held" row as a table line. */
static void print_row(char *line, int header)
{
    if (header)
        printf("%-6s %6s  %-12s %-7s %-28s %-40s %s\n", "ID", "AGE", "TOKEN", "METHOD", "HOST", "PATH", "SERVICE");
    char *f[8] = {0};
    size_t n = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, "\t", &save); t && n < 8; t = strtok_r(NULL, "\t", &save))
        f[n++] = t;
    if (n < 8)
        return;
    printf("%-6s %5ss  %-12s %-7s %-28s %-40s %s\n", f[1], f[2], f[3], f[4], f[5], f[6], f[7]);
}

int ctl_client(const char *state_dir, int argc, char **argv)
{
    /* argv[1] is the command; its arguments follow (options already
     * stripped of -c and --state-dir by the caller). */
    const char *cmd = argv[1];
    char line[CTL_LINE_MAX];
    int watch = 0;
    if (!strcmp(cmd, "pending")) {
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--watch")) {
                watch = 1;
            } else {
                cli_usage();
                return 2;
            }
        }
        snprintf(line, sizeof(line), "%s\n", watch ? "watch" : "pending");
    } else {
        if (argc < 3 || strspn(argv[2], "0123456789") != strlen(argv[2]) || strlen(argv[2]) > 20 || !argv[2][0]) {
            cli_usage();
            return 2;
        }
        const char *id = argv[2], *remember = NULL, *scope = NULL, *reason = NULL;
        for (int i = 3; i < argc; i++) {
            if (i + 1 < argc && !strcmp(cmd, "approve") && !strcmp(argv[i], "--remember"))
                remember = argv[++i];
            else if (i + 1 < argc && !strcmp(cmd, "approve") && !strcmp(argv[i], "--scope"))
                scope = argv[++i];
            else if (i + 1 < argc && !strcmp(cmd, "deny") && !strcmp(argv[i], "--reason"))
                reason = argv[++i];
            else {
                cli_usage();
                return 2;
            }
        }
        if (!strcmp(cmd, "approve")) {
            double secs = 0;
            if (scope && !remember) {
                fprintf(stderr, "agentvault: --scope needs --remember\n");
                return 2;
            }
            if (scope && strcmp(scope, "path") != 0 && strcmp(scope, "service") != 0) {
                fprintf(stderr, "agentvault: --scope must be path or service\n");
                return 2;
            }
            if (remember && (secs = parse_duration(remember)) < 0) {
                fprintf(stderr, "agentvault: --remember must be a duration like 600, 30s, 10m or 2h (at most 7d)\n");
                return 2;
            }
            if (remember)
                snprintf(line, sizeof(line), "approve %s %.0f %s\n", id, secs, scope ? scope : "path");
            else
                snprintf(line, sizeof(line), "approve %s\n", id);
        } else {
            char clean[256];
            size_t o = 0;
            for (const char *p = reason; p && *p && o + 1 < sizeof(clean) && o < 200; p++)
                clean[o++] = ((unsigned char)*p < 0x20 || *p == 0x7f) ? ' ' : *p;
            clean[o] = '\0';
            snprintf(line, sizeof(line), "deny %s%s%s\n", id, o ? " " : "", clean);
        }
    }
    int dirfd = open(state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || sock_addr(state_dir, dirfd, &sa) != 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        fprintf(stderr, "agentvault: cannot reach the daemon at %s/control.sock: %s\n", state_dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        if (dirfd >= 0)
            close(dirfd);
        return 1;
    }
    if (dirfd >= 0)
        close(dirfd);
    size_t ll = strlen(line);
    /* A refusal (another user) may come before the command is written:
     * no SIGPIPE, and its line is still read below. */
    ssize_t sent = send(fd, line, ll, MSG_NOSIGNAL);
    if (sent != (ssize_t)ll && errno != EPIPE && errno != ECONNRESET) {
        fprintf(stderr, "agentvault: cannot talk to the daemon: %s\n", strerror(errno));
        close(fd);
        return 1;
    }
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return 1;
    }
    char buf[2048];
    int rc = 1, header = 1;
    while (fgets(buf, sizeof(buf), f)) {
        buf[strcspn(buf, "\n")] = '\0';
        if (!strncmp(buf, "held\t", 5)) {
            print_row(buf, header);
            header = 0;
        } else if (!strncmp(buf, "gone\t", 5)) {
            char *id = buf + 5, *how = strchr(id, '\t');
            if (how)
                *how++ = '\0';
            printf("%s: %s\n", id, how ? how : "gone");
        } else if (!strcmp(buf, "watching")) {
            if (header)
                printf("(no held requests; watching for new ones)\n");
            header = 0;
        } else if (!strcmp(buf, "end")) {
            if (header)
                printf("no held requests\n");
            rc = 0;
            break;
        } else if (!strncmp(buf, "ok", 2)) {
            printf("%s %s\n", argv[2], buf[2] ? buf + 3 : "ok");
            rc = 0;
            break;
        } else if (!strncmp(buf, "error ", 6)) {
            fprintf(stderr, "agentvault: %s\n", buf + 6);
            rc = 1;
            break;
        }
        fflush(stdout);
    }
    fclose(f);
    return rc;
}
