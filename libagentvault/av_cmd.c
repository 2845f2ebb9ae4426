/* av_cmd.c - run a program without a shell, bounded (see av_cmd.h). */
#include "av_cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#include "av_mem.h"

extern char **environ;

struct av_cmd {
    pid_t pid;
    int fd;             /* the read end of its stdout */
    av_io *io;
    av_timer *timer;
    uint8_t *buf;
    size_t len, max;
    int eof;
    int over;           /* done has been called */
    double deadline;
    av_cmd_done done;
    void *ud;
    char prog[104];
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int av__cmd_split(const char *cmd, char *buf, char **argv)
{
    int argc = 0;
    const char *p = cmd;
    char *o = buf;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        if (argc >= AV_CMD_ARGS_MAX)
            return -1;
        argv[argc++] = o;
        while (*p && *p != ' ' && *p != '\t') {
            if (*p == '\'' || *p == '"') {
                char q = *p++;
                while (*p && *p != q)
                    *o++ = *p++;
                if (*p != q)
                    return -1;
                p++;
            } else {
                *o++ = *p++;
            }
        }
        *o++ = '\0';
    }
    argv[argc] = NULL;
    return argc > 0 ? argc : -1;
}

void av__cmd_free(av_cmd *c)
{
    if (!c)
        return;
    if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        while (waitpid(c->pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    av__io_free(c->io);
    av__timer_free(c->timer);
    if (c->fd >= 0)
        close(c->fd);
    if (c->buf) {
        av__wipe(c->buf, c->max + 1);
        av__free(c->buf);
    }
    av__free(c);
}

const uint8_t *av__cmd_output(const av_cmd *c, size_t *len)
{
    *len = c->len > c->max ? c->max : c->len;
    return c->buf;
}

const char *av__cmd_prog(const av_cmd *c)
{
    return c->prog;
}

/* Read what the program wrote. Returns 1 at EOF, 0 if more may come, -1
 * when it wrote more than the bound. */
static int cmd_read(av_cmd *c)
{
    for (;;) {
        if (c->len > c->max)
            return -1;
        ssize_t k = read(c->fd, c->buf + c->len, c->max + 1 - c->len);
        if (k > 0) {
            c->len += (size_t)k;
            continue;
        }
        if (k == 0) {
            c->eof = 1;
            return 1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        c->eof = 1;
        return 1;
    }
}

/* The run is over: kill what is left (av__cmd_free reaps) and tell. */
static void cmd_over(av_cmd *c, int how, int status)
{
    if (c->over)
        return;
    c->over = 1;
    av__io_set(c->io, 0);
    av__timer_stop(c->timer);
    c->done(c->ud, c, how, status);
}

static void cmd_check(av_cmd *c)
{
    if (!c->eof && cmd_read(c) < 0) {
        cmd_over(c, AV_CMD_TOO_BIG, 0);
        return;
    }
    if (c->eof) {
        av__io_set(c->io, 0);
        int status = 0;
        if (waitpid(c->pid, &status, WNOHANG) == c->pid) {
            c->pid = 0;
            cmd_over(c, AV_CMD_EXITED, status);
            return;
        }
    }
    if (mono_now() >= c->deadline) {
        cmd_over(c, AV_CMD_TIMEOUT, 0);
        return;
    }
    /* Poll for the exit once stdout is closed; else wait for output or the
     * deadline. */
    double next = c->eof ? 0.005 : c->deadline - mono_now();
    av__timer_start(c->timer, next > 0.001 ? next : 0.001);
}

static void cmd_on_io(void *ud, int revents)
{
    (void)revents;
    cmd_check(ud);
}

static void cmd_on_timer(void *ud)
{
    cmd_check(ud);
}

int av__cmd_start(av_loop *loop, const char *cmdline, const void *in, size_t in_len, double timeout,
                  size_t out_max, av_cmd_done done, void *ud, av_cmd **out, char *why, size_t why_len)
{
    *out = NULL;
    if (why && why_len)
        why[0] = '\0';
    if (in_len > AV_CMD_IN_MAX || (loop && !done))
        return AV_ERR_INVALID;
    size_t n = strlen(cmdline);
    char *abuf = av__malloc(n + 1);
    char *argv[AV_CMD_ARGS_MAX + 1];
    av_cmd *c = av__calloc(1, sizeof(*c));
    int pfd[2] = {-1, -1}, ifd[2] = {-1, -1};
    int rc = AV_ERR_NOMEM;
    if (!abuf || !c)
        goto fail;
    c->fd = -1;
    c->max = out_max;
    c->done = done;
    c->ud = ud;
    c->buf = av__malloc(out_max + 1);
    if (!c->buf)
        goto fail;
    rc = AV_ERR_INVALID;
    if (av__cmd_split(cmdline, abuf, argv) <= 0 || argv[0][0] != '/') {
        if (why && why_len)
            snprintf(why, why_len, "invalid command line");
        goto fail;
    }
    snprintf(c->prog, sizeof(c->prog), "%.100s", argv[0]);
    rc = AV_ERR_IO;
    if (pipe2(pfd, O_CLOEXEC) != 0 || (in && pipe2(ifd, O_CLOEXEC) != 0)) {
        if (why && why_len)
            snprintf(why, why_len, "cannot run %s: %s", c->prog, strerror(errno));
        goto fail;
    }
    if (in && in_len > 60 * 1024 && fcntl(ifd[1], F_SETPIPE_SZ, (int)AV_CMD_IN_MAX + 4096) < 0) {
        if (why && why_len)
            snprintf(why, why_len, "cannot run %s: input pipe: %s", c->prog, strerror(errno));
        goto fail;
    }
    if (in) {
        /* The whole input fits in the pipe: write it now, then close. The
         * write end is non-blocking: a pipe smaller than expected fails
         * the start instead of stalling the loop. */
        fcntl(ifd[1], F_SETFL, fcntl(ifd[1], F_GETFL) | O_NONBLOCK);
        size_t off = 0;
        while (off < in_len) {
            ssize_t w = write(ifd[1], (const uint8_t *)in + off, in_len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                if (why && why_len)
                    snprintf(why, why_len, "cannot run %s: input pipe: %s", c->prog, strerror(errno));
                goto fail;
            }
            off += (size_t)w;
        }
        close(ifd[1]);
        ifd[1] = -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (in)
        posix_spawn_file_actions_adddup2(&fa, ifd[0], 0);
    else
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int se = posix_spawn(&c->pid, argv[0], &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(pfd[1]);
    pfd[1] = -1;
    if (se != 0) {
        c->pid = 0;
        if (why && why_len)
            snprintf(why, why_len, "cannot run %s: %s", c->prog, strerror(se));
        goto fail;
    }
    c->fd = pfd[0];
    pfd[0] = -1;
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    c->deadline = mono_now() + timeout;
    if (loop) {
        rc = AV_ERR_NOMEM;
        c->io = av__io_new(loop, c->fd, cmd_on_io, c);
        c->timer = av__timer_new(loop, cmd_on_timer, c);
        if (!c->io || !c->timer)
            goto fail;
        av__io_set(c->io, AV_EV_READ);
        av__timer_start(c->timer, timeout);
    }
    for (int i = 0; i < 2; i++)
        if (ifd[i] >= 0)
            close(ifd[i]);
    av__free(abuf);
    *out = c;
    return AV_OK;
fail:
    for (int i = 0; i < 2; i++) {
        if (pfd[i] >= 0)
            close(pfd[i]);
        if (ifd[i] >= 0)
            close(ifd[i]);
    }
    av__free(abuf);
    av__cmd_free(c);
    return rc;
}

int av__cmd_wait(av_cmd *c, int *status)
{
    *status = 0;
    for (;;) {
        double left = c->deadline - mono_now();
        if (left <= 0)
            return AV_CMD_TIMEOUT;
        if (!c->eof) {
            struct pollfd pf = {c->fd, POLLIN, 0};
            int pr = poll(&pf, 1, (int)(left * 1000) + 1);
            if (pr < 0 && errno != EINTR)
                return AV_CMD_TIMEOUT;
            if (cmd_read(c) < 0)
                return AV_CMD_TOO_BIG;
            continue;
        }
        if (waitpid(c->pid, status, WNOHANG) == c->pid) {
            c->pid = 0;
            return AV_CMD_EXITED;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
