/* test_embed.c - the embedding API end to end: av_ctx_start/av_ctx_stop,
 * av_ctx_run on a thread of the test, a host's libev loop
 * (av_ctx_new_on_loop), av_gateway_open and av_open_stream, against a
 * local HTTPS origin this test runs on its own threads.
 *
 * The origin presents a leaf for api.test (and env.test) minted by a test
 * CA made at run time; contexts reach it through "resolve = api.test:443:
 * 127.0.0.1:PORT" and trust the CA with upstream_cacert. It answers every
 * request with "ok auth=good|bad|none host=H path=P", never echoing the
 * credential, so clients can see whether the real key was injected.
 *
 * cmocka's assertions only work on the test's own thread: client threads
 * record what they saw and the test asserts afterwards. Every socket has
 * a receive and a send timeout, so no test can hang. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <ev.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_ca.h"
#include "av_tls.h"

#define IO_TIMEOUT_S 10      /* every socket of the test */
#define ENV_KEY_VAR "AV_TEST_EMBED_ENV_KEY"
#define AGENT_DUMMY "Bearer agentvault-placeholder-dummy"
#define MAX_ORIGIN_CONNS 256

static char g_dir[256];            /* everything of this test lives here */
static char g_state[300];          /* contexts' state_dir (their own CA) */
static char g_cafile[300];         /* the origin CA's root (upstream_cacert) */
static char g_cb_secret[64];       /* callback:apikey answers this */
static char g_env_secret[64];      /* env:AV_TEST_EMBED_ENV_KEY */
static atomic_int g_cb_calls;      /* secret callback calls (started contexts) */
static atomic_int g_log_leak;      /* a log line contained a secret */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void set_timeouts(int fd)
{
    struct timeval tv = {IO_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* random_hex fills |out| with |n| random hex digits. */
static int random_hex(char *out, size_t n)
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    unsigned char b[32];
    if (n / 2 > sizeof(b) || read(fd, b, n / 2) != (ssize_t)(n / 2)) {
        close(fd);
        return -1;
    }
    close(fd);
    for (size_t i = 0; i < n / 2; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

/* ---- the HTTPS origin ------------------------------------------------- */

typedef struct origin {
    av_ca *ca;
    av_tls_server_ctx *sctx;
    int lfd;
    int port;
    pthread_t acceptor;
    atomic_int stop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int fds[MAX_ORIGIN_CONNS];  /* live connections (-1: free slot) */
    int live;
    int conns;                  /* connections accepted */
    int requests, good, bad, none;
    int slow_started;
    char last_auth[160];
    char error[200];
} origin;

static origin g_origin;

static void origin_error(origin *o, const char *msg)
{
    pthread_mutex_lock(&o->lock);
    if (!o->error[0])
        snprintf(o->error, sizeof(o->error), "%s", msg);
    pthread_mutex_unlock(&o->lock);
}

/* One TLS connection of the origin. */
typedef struct oconn {
    origin *o;
    int fd;
    int slot;
    av_buf cin, cout;
    av_tls *t;
} oconn;

static int oc_flush(oconn *c)
{
    for (int i = 0; i < 64; i++) {
        while (av__buf_len(&c->cout)) {
            ssize_t w = send(c->fd, av__buf_head(&c->cout), av__buf_len(&c->cout), MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return -1;
            av__buf_consume(&c->cout, (size_t)w);
        }
        if (av__tls_flush(c->t) == AV_OK && !av__buf_len(&c->cout))
            return 0;
    }
    return -1;
}

static int oc_fill(oconn *c)
{
    uint8_t b[16384];
    size_t room = av__buf_room(&c->cin);
    ssize_t r;
    do
        r = recv(c->fd, b, room < sizeof(b) ? room : sizeof(b), 0);
    while (r < 0 && errno == EINTR);
    if (r <= 0)
        return -1;
    return av__buf_append(&c->cin, b, (size_t)r) == AV_OK ? 0 : -1;
}

/* oc_read returns plaintext bytes (> 0), 0 at a clean end, -1 on error. */
static ssize_t oc_read(oconn *c, uint8_t *buf, size_t len)
{
    for (;;) {
        ssize_t r = av__tls_read(c->t, buf, len);
        if (r >= 0)
            return r;
        if (r != AV_ERR_AGAIN)
            return -1;
        if (oc_flush(c) < 0 || oc_fill(c) < 0)
            return -1;
    }
}

static int oc_write(oconn *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len) {
        ssize_t w = av__tls_write(c->t, p, len);
        if (w == AV_ERR_AGAIN) {
            if (oc_flush(c) < 0)
                return -1;
            continue;
        }
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return oc_flush(c);
}

/* header_value copies the value of header |name| (case-insensitive) from
 * the head [head, end) into |out|; returns 1 when found. */
static int header_value(const char *head, const char *name, char *out, size_t out_len)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p; p = strstr(p, "\r\n")) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
                n--;
            if (n >= out_len)
                n = out_len - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return 1;
        }
    }
    return 0;
}

/* origin_serve answers requests on one connection until it ends. */
static void origin_serve(oconn *c)
{
    origin *o = c->o;
    for (int i = 0;; i++) {
        int rc = av__tls_handshake(c->t);
        if (oc_flush(c) < 0)
            return;
        if (rc == AV_OK)
            break;
        if (rc != AV_ERR_AGAIN || i > 1000 || oc_fill(c) < 0)
            return; /* the client gave up (a stopped context) */
    }
    char buf[65536];
    size_t have = 0;
    for (;;) {
        char *end;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
            if (have >= sizeof(buf) - 1) {
                origin_error(o, "origin: request head too large");
                return;
            }
            ssize_t r = oc_read(c, (uint8_t *)buf + have, sizeof(buf) - 1 - have);
            if (r <= 0) {
                if (have)
                    origin_error(o, "origin: connection ended inside a request head");
                return;
            }
            have += (size_t)r;
        }
        size_t head_len = (size_t)(end - buf) + 4;
        char head[8192];
        if (head_len >= sizeof(head)) {
            origin_error(o, "origin: head over 8 KiB");
            return;
        }
        memcpy(head, buf, head_len);
        head[head_len] = '\0';
        char method[16] = "", path[512] = "", host[128] = "", auth[160] = "", cl[32] = "", te[64] = "";
        if (sscanf(head, "%15s %511s HTTP/1.1\r\n", method, path) != 2) {
            origin_error(o, "origin: bad request line");
            return;
        }
        header_value(head, "Host", host, sizeof(host));
        int has_auth = header_value(head, "Authorization", auth, sizeof(auth));
        header_value(head, "Transfer-Encoding", te, sizeof(te));
        size_t body_len = header_value(head, "Content-Length", cl, sizeof(cl)) ? strtoul(cl, NULL, 10) : 0;
        if (te[0]) {
            origin_error(o, "origin: unexpected chunked request body");
            return;
        }
        /* Drop the head and the body. */
        memmove(buf, buf + head_len, have - head_len);
        have -= head_len;
        while (body_len) {
            if (have) {
                size_t n = have < body_len ? have : body_len;
                memmove(buf, buf + n, have - n);
                have -= n;
                body_len -= n;
                continue;
            }
            ssize_t r = oc_read(c, (uint8_t *)buf, sizeof(buf) - 1);
            if (r <= 0)
                return;
            have = (size_t)r;
        }
        const char *want = strcmp(host, "env.test") == 0 ? g_env_secret : g_cb_secret;
        char expect[160];
        snprintf(expect, sizeof(expect), "Bearer %s", want);
        const char *verdict = !has_auth ? "none" : strcmp(auth, expect) == 0 ? "good" : "bad";
        int slow = strncmp(path, "/slow", 5) == 0;
        pthread_mutex_lock(&o->lock);
        o->requests++;
        if (verdict[0] == 'g')
            o->good++;
        else if (verdict[0] == 'b')
            o->bad++;
        else
            o->none++;
        snprintf(o->last_auth, sizeof(o->last_auth), "%s", auth);
        if (slow)
            o->slow_started++;
        pthread_cond_broadcast(&o->cond);
        pthread_mutex_unlock(&o->lock);
        if (slow)
            sleep_ms(700);
        char body[800], resp[1200];
        int bl = snprintf(body, sizeof(body), "ok auth=%s host=%s path=%s\n", verdict, host, path);
        int rl = snprintf(resp, sizeof(resp),
                          "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", bl,
                          body);
        if (oc_write(c, resp, (size_t)rl) < 0)
            return;
    }
}

static void *origin_conn_thread(void *arg)
{
    oconn *c = arg;
    origin *o = c->o;
    static const char *const extra[] = {"env.test", NULL};
    av__buf_init(&c->cin, 1 << 20);
    av__buf_init(&c->cout, 1 << 20);
    if (av__tls_server_new(&c->t, o->sctx, "api.test", extra, &c->cin, &c->cout) == AV_OK)
        origin_serve(c);
    else
        origin_error(o, "origin: cannot make a TLS engine");
    av__tls_free(c->t);
    av__buf_free(&c->cin);
    av__buf_free(&c->cout);
    pthread_mutex_lock(&o->lock);
    close(c->fd);
    o->fds[c->slot] = -1;
    o->live--;
    pthread_cond_broadcast(&o->cond);
    pthread_mutex_unlock(&o->lock);
    free(c);
    return NULL;
}

static void *origin_accept_thread(void *arg)
{
    origin *o = arg;
    while (!atomic_load(&o->stop)) {
        struct pollfd p = {o->lfd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept4(o->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        set_timeouts(fd);
        oconn *c = calloc(1, sizeof(*c));
        pthread_mutex_lock(&o->lock);
        int slot = -1;
        for (int i = 0; i < MAX_ORIGIN_CONNS && slot < 0; i++)
            if (o->fds[i] < 0)
                slot = i;
        if (!c || slot < 0) {
            pthread_mutex_unlock(&o->lock);
            origin_error(o, "origin: too many connections");
            close(fd);
            free(c);
            continue;
        }
        o->fds[slot] = fd;
        o->live++;
        o->conns++;
        pthread_mutex_unlock(&o->lock);
        c->o = o;
        c->fd = fd;
        c->slot = slot;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, origin_conn_thread, c) != 0) {
            pthread_mutex_lock(&o->lock);
            o->fds[slot] = -1;
            o->live--;
            pthread_mutex_unlock(&o->lock);
            close(fd);
            free(c);
            origin_error(o, "origin: pthread_create failed");
        }
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

static int origin_start(origin *o, const char *ca_dir)
{
    char err[300] = "";
    memset(o, 0, sizeof(*o));
    pthread_mutex_init(&o->lock, NULL);
    pthread_cond_init(&o->cond, NULL);
    for (int i = 0; i < MAX_ORIGIN_CONNS; i++)
        o->fds[i] = -1;
    if (av__ca_open(&o->ca, ca_dir, 0, err, sizeof(err)) != AV_OK ||
        av__tls_server_ctx_new(&o->sctx, o->ca, err, sizeof(err)) != AV_OK) {
        fprintf(stderr, "origin: %s\n", err);
        return -1;
    }
    FILE *f = fopen(g_cafile, "w");
    if (!f)
        return -1;
    fputs(av__ca_root_pem(o->ca), f);
    fclose(f);
    o->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    if (o->lfd < 0 || bind(o->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(o->lfd, 256) < 0 ||
        getsockname(o->lfd, (struct sockaddr *)&a, &al) < 0)
        return -1;
    o->port = ntohs(a.sin_port);
    return pthread_create(&o->acceptor, NULL, origin_accept_thread, o) == 0 ? 0 : -1;
}

static void origin_stop(origin *o)
{
    atomic_store(&o->stop, 1);
    pthread_join(o->acceptor, NULL);
    close(o->lfd);
    pthread_mutex_lock(&o->lock);
    for (int i = 0; i < MAX_ORIGIN_CONNS; i++)
        if (o->fds[i] >= 0)
            shutdown(o->fds[i], SHUT_RDWR);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += IO_TIMEOUT_S;
    while (o->live > 0 && pthread_cond_timedwait(&o->cond, &o->lock, &dl) == 0)
        ;
    int left = o->live;
    pthread_mutex_unlock(&o->lock);
    if (left)
        return; /* a thread is stuck: leave its objects alone */
    av__tls_server_ctx_free(o->sctx);
    av__ca_free(o->ca);
}

typedef struct counts {
    int requests, good, bad, none, conns;
} counts;

static counts origin_counts(void)
{
    counts k;
    pthread_mutex_lock(&g_origin.lock);
    k.requests = g_origin.requests;
    k.good = g_origin.good;
    k.bad = g_origin.bad;
    k.none = g_origin.none;
    k.conns = g_origin.conns;
    pthread_mutex_unlock(&g_origin.lock);
    return k;
}

/* wait_slow waits until the origin has seen |n| /slow requests. */
static int wait_slow(int n)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += IO_TIMEOUT_S;
    pthread_mutex_lock(&g_origin.lock);
    while (g_origin.slow_started < n && pthread_cond_timedwait(&g_origin.cond, &g_origin.lock, &dl) == 0)
        ;
    int ok = g_origin.slow_started >= n;
    pthread_mutex_unlock(&g_origin.lock);
    return ok;
}

static int slow_count(void)
{
    pthread_mutex_lock(&g_origin.lock);
    int n = g_origin.slow_started;
    pthread_mutex_unlock(&g_origin.lock);
    return n;
}

/* ---- an HTTP/1.1 client over a blocking socket ------------------------ */

typedef struct client {
    int fd;
    char buf[16384];
    size_t len;
} client;

typedef struct resp {
    int status;
    char body[4096];
    size_t body_len;
    int close; /* the response said Connection: close */
} resp;

static void client_init(client *c, int fd)
{
    c->fd = fd;
    c->len = 0;
    if (fd >= 0)
        set_timeouts(fd);
}

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    set_timeouts(fd);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* url_port parses "http://127.0.0.1:PORT" (nothing after). */
static int url_port(const char *url)
{
    int port = 0, n = 0;
    if (sscanf(url, "http://127.0.0.1:%d%n", &port, &n) != 1 || url[n] != '\0' || port <= 0 || port > 65535)
        return -1;
    return port;
}

static int c_fill(client *c)
{
    if (c->len >= sizeof(c->buf))
        return -1;
    ssize_t r;
    do
        r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
    while (r < 0 && errno == EINTR);
    if (r <= 0)
        return -1;
    c->len += (size_t)r;
    return 0;
}

static void c_consume(client *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* c_line takes one CRLF-terminated line into |out|. */
static int c_line(client *c, char *out, size_t out_len)
{
    char *e;
    while (!(e = memmem(c->buf, c->len, "\r\n", 2)))
        if (c_fill(c) < 0)
            return -1;
    size_t n = (size_t)(e - c->buf);
    if (n >= out_len)
        return -1;
    memcpy(out, c->buf, n);
    out[n] = '\0';
    c_consume(c, n + 2);
    return 0;
}

static int c_body(client *c, resp *r, size_t n)
{
    while (n) {
        if (!c->len && c_fill(c) < 0)
            return -1;
        size_t k = c->len < n ? c->len : n;
        if (r->body_len + k >= sizeof(r->body))
            return -1;
        memcpy(r->body + r->body_len, c->buf, k);
        r->body_len += k;
        c_consume(c, k);
        n -= k;
    }
    r->body[r->body_len] = '\0';
    return 0;
}

/* read_response reads one response (Content-Length or chunked). */
static int read_response(client *c, resp *r, char *err, size_t err_len)
{
    memset(r, 0, sizeof(*r));
    char *e;
    while (!(e = memmem(c->buf, c->len, "\r\n\r\n", 4))) {
        if (c_fill(c) < 0) {
            snprintf(err, err_len, "no response head (%zu bytes): %s", c->len, strerror(errno));
            return -1;
        }
    }
    size_t hl = (size_t)(e - c->buf) + 4;
    char head[4096];
    if (hl >= sizeof(head)) {
        snprintf(err, err_len, "response head too large");
        return -1;
    }
    memcpy(head, c->buf, hl);
    head[hl] = '\0';
    c_consume(c, hl);
    if (sscanf(head, "HTTP/1.1 %d", &r->status) != 1) {
        snprintf(err, err_len, "bad status line: %.80s", head);
        return -1;
    }
    char v[64];
    r->close = header_value(head, "Connection", v, sizeof(v)) && strcasecmp(v, "close") == 0;
    if (header_value(head, "Transfer-Encoding", v, sizeof(v))) {
        for (;;) {
            char line[64];
            if (c_line(c, line, sizeof(line)) < 0)
                goto short_body;
            size_t n = strtoul(line, NULL, 16);
            if (n == 0) {
                while (c_line(c, line, sizeof(line)) == 0 && line[0])
                    ;
                break;
            }
            if (c_body(c, r, n) < 0 || c_line(c, line, sizeof(line)) < 0)
                goto short_body;
        }
    } else if (header_value(head, "Content-Length", v, sizeof(v))) {
        if (c_body(c, r, strtoul(v, NULL, 10)) < 0)
            goto short_body;
    }
    return 0;
short_body:
    snprintf(err, err_len, "status %d: body cut short", r->status);
    return -1;
}

/* exchange sends GET |path| with the agent's dummy key and reads the
 * answer; 0 when it came back 200 from the origin with the injected key.
 * |err| says what went wrong. */
static int exchange(client *c, const char *path, int close_conn, resp *r, char *err, size_t err_len)
{
    char req[600];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: agent.invalid\r\nAuthorization: " AGENT_DUMMY
                     "\r\nUser-Agent: test_embed\r\n%s\r\n",
                     path, close_conn ? "Connection: close\r\n" : "");
    if (send(c->fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        snprintf(err, err_len, "send %s: %s", path, strerror(errno));
        return -1;
    }
    if (read_response(c, r, err, err_len) < 0)
        return -1;
    if (r->status != 200 || !strstr(r->body, "auth=good ") || strstr(r->body, g_cb_secret) ||
        strstr(r->body, g_env_secret)) {
        snprintf(err, err_len, "%s: status %d, body %.200s", path, r->status, r->body);
        return -1;
    }
    char want[600];
    snprintf(want, sizeof(want), "path=%s\n", path);
    if (!strstr(r->body, want)) {
        snprintf(err, err_len, "%s: origin saw another path: %.200s", path, r->body);
        return -1;
    }
    return 0;
}

/* peer_closed: the other end closed (EOF, or reset) within the timeout. */
static int peer_closed(int fd)
{
    char b[256];
    ssize_t r;
    do
        r = recv(fd, b, sizeof(b), 0);
    while (r > 0);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

/* ---- contexts --------------------------------------------------------- */

static void log_fn(void *ud, int level, const char *msg)
{
    (void)ud;
    if (strstr(msg, g_cb_secret) || strstr(msg, g_env_secret))
        atomic_store(&g_log_leak, 1);
    if (getenv("AV_TEST_VERBOSE"))
        fprintf(stderr, "[ctx %d] %s\n", level, msg);
}

/* The secret callback of started contexts: answers at once. */
static void secret_now(void *ud, const char *name, av_secret_request *req)
{
    (void)ud;
    atomic_fetch_add(&g_cb_calls, 1);
    if (strcmp(name, "apikey") == 0)
        av_secret_request_answer(req, g_cb_secret, strlen(g_cb_secret));
    else
        av_secret_request_fail(req, "test_embed knows only apikey");
}

enum { CFG_LISTEN = 1, CFG_GATEWAY = 2, CFG_CAP2 = 4 };

/* make_cfg builds the configuration of every test, through
 * av_config_add_section: the resolve pins, the test CA, a callback: and
 * an env: service, and optionally a proxy listener and a [gateway]. */
static av_config *make_cfg(int flags, av_secret_fn fn, void *ud)
{
    av_config *cfg = NULL;
    if (av_config_new(&cfg) != AV_OK)
        return NULL;
    char r1[96], r2[96];
    snprintf(r1, sizeof(r1), "api.test:443:127.0.0.1:%d", g_origin.port);
    snprintf(r2, sizeof(r2), "env.test:443:127.0.0.1:%d", g_origin.port);
    const char *proxy[16] = {"state_dir", g_state, "resolve", r1, "resolve", r2, "upstream_cacert", g_cafile};
    size_t np = 8;
    if (flags & CFG_LISTEN) {
        proxy[np++] = "listen";
        proxy[np++] = "127.0.0.1:0";
    }
    if (flags & CFG_CAP2) {
        proxy[np++] = "max_connections";
        proxy[np++] = "2";
        proxy[np++] = "header_timeout"; /* an idle accepted connection stays */
        proxy[np++] = "60";
    }
    proxy[np] = NULL;
    const char *api[] = {"host", "api.test", "auth", "bearer", "secret", "callback:apikey", NULL};
    const char *env[] = {"host", "env.test", "auth", "bearer", "secret", "env:" ENV_KEY_VAR, NULL};
    const char *gw[] = {"listen", "127.0.0.1:0", "upstream", "https://api.test", NULL};
    int rc = av_config_add_section(cfg, "proxy", NULL, proxy);
    rc = rc ? rc : av_config_add_section(cfg, "service", "api", api);
    rc = rc ? rc : av_config_add_section(cfg, "service", "env", env);
    if (flags & CFG_GATEWAY)
        rc = rc ? rc : av_config_add_section(cfg, "gateway", "cfg-gw", gw);
    rc = rc ? rc : av_config_set_secret_fn(cfg, fn, ud);
    rc = rc ? rc : av_config_validate(cfg);
    if (rc != AV_OK) {
        fprintf(stderr, "make_cfg: %s: %s\n", av_strerror(rc), av_config_error(cfg));
        av_config_free(cfg);
        return NULL;
    }
    return cfg;
}

static av_ctx *new_ctx(int flags)
{
    av_config *cfg = make_cfg(flags, secret_now, NULL);
    assert_non_null(cfg);
    av_ctx *ctx = NULL;
    char err[300] = "";
    int rc = av_ctx_new(&ctx, cfg, err, sizeof(err));
    av_config_free(cfg); /* the context keeps a copy */
    if (rc != AV_OK)
        fail_msg("av_ctx_new: %s: %s", av_strerror(rc), err);
    av_ctx_set_log(ctx, log_fn, NULL, AV_LOG_DEBUG);
    return ctx;
}

/* gw_connect opens a gateway to |upstream| and connects a client to it. */
static int gw_connect(av_ctx *ctx, const char *upstream, client *c, char *err, size_t err_len)
{
    char url[32];
    int rc = av_gateway_open(ctx, upstream, url, sizeof(url));
    if (rc != AV_OK) {
        snprintf(err, err_len, "av_gateway_open(%s): %s", upstream, av_strerror(rc));
        return -1;
    }
    int port = url_port(url);
    if (port < 0) {
        snprintf(err, err_len, "av_gateway_open gave the URL \"%s\"", url);
        return -1;
    }
    client_init(c, tcp_connect(port));
    if (c->fd < 0) {
        snprintf(err, err_len, "connect to %s: %s", url, strerror(errno));
        return -1;
    }
    return 0;
}

static int stream_connect(av_ctx *ctx, const char *upstream, client *c, char *err, size_t err_len)
{
    int fd = 12345;
    int rc = av_open_stream(ctx, upstream, &fd);
    if (rc != AV_OK) {
        snprintf(err, err_len, "av_open_stream(%s): %s", upstream, av_strerror(rc));
        return -1;
    }
    client_init(c, fd);
    return 0;
}

/* ---- group fixtures --------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/av-test-embed-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    char ca_dir[300];
    snprintf(ca_dir, sizeof(ca_dir), "%s/origin-ca", g_dir);
    snprintf(g_state, sizeof(g_state), "%s/state", g_dir);
    snprintf(g_cafile, sizeof(g_cafile), "%s/origin-root.pem", g_dir);
    memcpy(g_cb_secret, "cb-", 3);
    memcpy(g_env_secret, "env-", 4);
    if (random_hex(g_cb_secret + 3, 40) < 0 || random_hex(g_env_secret + 4, 40) < 0)
        return -1;
    setenv(ENV_KEY_VAR, g_env_secret, 1);
    return origin_start(&g_origin, ca_dir);
}

static int group_teardown(void **state)
{
    (void)state;
    origin_stop(&g_origin);
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* Every test: the origin must not have seen a broken request, and no log
 * line may carry a secret. */
static int test_teardown(void **state)
{
    (void)state;
    pthread_mutex_lock(&g_origin.lock);
    char e[200];
    snprintf(e, sizeof(e), "%s", g_origin.error);
    g_origin.error[0] = '\0';
    pthread_mutex_unlock(&g_origin.lock);
    if (e[0]) {
        fprintf(stderr, "%s\n", e);
        return -1;
    }
    if (atomic_exchange(&g_log_leak, 0)) {
        fprintf(stderr, "a log line contained a secret\n");
        return -1;
    }
    return 0;
}

/* ---- tests ------------------------------------------------------------ */

/* av_ctx_start, then a gateway: plain HTTP in, the real key at the origin. */
static void start_gateway_injects(void **state)
{
    (void)state;
    av_ctx *ctx = new_ctx(0);
    assert_int_equal(av_ctx_listen_port(ctx, 0), AV_ERR_NOTFOUND); /* no proxy listener at all */
    int calls = atomic_load(&g_cb_calls);
    counts k0 = origin_counts();
    assert_int_equal(av_ctx_start(ctx), AV_OK);
    assert_int_equal(av_ctx_start(ctx), AV_ERR_STATE);
    assert_int_equal(av_ctx_run(ctx), AV_ERR_STATE);

    char err[300] = "";
    client c;
    resp r;
    if (gw_connect(ctx, "https://api.test", &c, err, sizeof(err)) < 0 ||
        exchange(&c, "/v1/models", 0, &r, err, sizeof(err)) < 0 ||
        exchange(&c, "/v1/second?x=1", 1, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_true(strstr(r.body, "host=api.test ") != NULL); /* Host rewritten to the upstream */
    assert_true(peer_closed(c.fd));
    close(c.fd);

    pthread_mutex_lock(&g_origin.lock);
    char last[160];
    snprintf(last, sizeof(last), "%s", g_origin.last_auth);
    pthread_mutex_unlock(&g_origin.lock);
    char want[160];
    snprintf(want, sizeof(want), "Bearer %s", g_cb_secret);
    assert_string_equal(last, want);

    /* One listener per origin, however it is spelled. */
    char u1[32], u2[32], u3[32], u4[32];
    assert_int_equal(av_gateway_open(ctx, "https://api.test", u1, sizeof(u1)), AV_OK);
    assert_int_equal(av_gateway_open(ctx, "https://api.test:443/", u2, sizeof(u2)), AV_OK);
    assert_int_equal(av_gateway_open(ctx, "https://env.test", u3, sizeof(u3)), AV_OK);
    assert_int_equal(av_gateway_open(ctx, "https://env.test:443", u4, sizeof(u4)), AV_OK);
    assert_string_equal(u1, u2);
    assert_string_equal(u3, u4);
    assert_string_not_equal(u1, u3);

    /* The env: service, on a gateway of its own; "https://env.test:443"
     * is the same origin spelled out. */
    if (gw_connect(ctx, "https://env.test:443", &c, err, sizeof(err)) < 0 ||
        exchange(&c, "/env", 0, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_true(strstr(r.body, "host=env.test ") != NULL);
    close(c.fd);

    counts k1 = origin_counts();
    assert_int_equal(k1.good - k0.good, 3);
    assert_int_equal(k1.bad - k0.bad, 0);
    assert_int_equal(k1.none - k0.none, 0);
    assert_int_equal(atomic_load(&g_cb_calls) - calls, 1); /* answered once, then cached */

    assert_int_equal(av_ctx_stop(ctx, 2.0), AV_OK);
    assert_int_equal(av_ctx_stop(ctx, 2.0), AV_ERR_STATE);
    av_ctx_free(ctx);
}

/* av_open_stream: a blocking, close-on-exec socket; keep-alive works. */
static void stream_keepalive(void **state)
{
    (void)state;
    av_ctx *ctx = new_ctx(0);
    assert_int_equal(av_ctx_start(ctx), AV_OK);
    char err[300] = "";
    client c;
    resp r;
    if (stream_connect(ctx, "https://api.test", &c, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    int fl = fcntl(c.fd, F_GETFL), fdfl = fcntl(c.fd, F_GETFD);
    assert_true(fl >= 0 && !(fl & O_NONBLOCK));
    assert_true(fdfl >= 0 && (fdfl & FD_CLOEXEC));
    counts k0 = origin_counts();
    if (exchange(&c, "/one", 0, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_false(r.close);
    if (exchange(&c, "/two", 0, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    /* Two requests written at once (pipelined) are answered in order. */
    const char *two = "GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(send(c.fd, two, strlen(two), MSG_NOSIGNAL), (ssize_t)strlen(two));
    assert_int_equal(read_response(&c, &r, err, sizeof(err)), 0);
    assert_non_null(strstr(r.body, "auth=good host=api.test path=/p1\n"));
    assert_int_equal(read_response(&c, &r, err, sizeof(err)), 0);
    assert_non_null(strstr(r.body, "auth=good host=api.test path=/p2\n"));
    counts k1 = origin_counts();
    assert_int_equal(k1.good - k0.good, 4);
    /* The upstream connection was reused for all of them. */
    assert_int_equal(k1.conns - k0.conns, 1);
    close(c.fd);
    assert_int_equal(av_ctx_stop(ctx, 1.0), AV_OK);
    av_ctx_free(ctx);
}

/* [proxy] max_connections covers the embedding API: a stream or an API
 * gateway connection over the cap is closed at once; below it again, new
 * ones are served. */
static int closed_within_3s(int fd)
{
    struct timeval tv = {.tv_sec = 3};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return peer_closed(fd);
}

static void api_connections_capped(void **state)
{
    (void)state;
    av_ctx *ctx = new_ctx(CFG_CAP2);
    assert_int_equal(av_ctx_start(ctx), AV_OK);
    char err[300] = "";
    client a, b, c, g;
    resp r;
    if (stream_connect(ctx, "https://api.test", &a, err, sizeof(err)) < 0 ||
        exchange(&a, "/a", 0, &r, err, sizeof(err)) < 0 ||
        stream_connect(ctx, "https://api.test", &b, err, sizeof(err)) < 0 ||
        exchange(&b, "/b", 0, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    /* the third stream: handed out, then closed by the context */
    if (stream_connect(ctx, "https://api.test", &c, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_true(closed_within_3s(c.fd));
    close(c.fd);
    /* an API gateway's connection over the cap */
    if (gw_connect(ctx, "https://env.test", &g, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_true(closed_within_3s(g.fd));
    close(g.fd);
    /* one of the two goes: a new stream is served */
    close(a.fd);
    int served = 0;
    for (int i = 0; i < 100 && !served; i++) {
        if (stream_connect(ctx, "https://api.test", &c, err, sizeof(err)) < 0)
            fail_msg("%s", err);
        served = exchange(&c, "/c", 0, &r, err, sizeof(err)) == 0;
        close(c.fd);
        if (!served)
            sleep_ms(20);
    }
    assert_true(served);
    close(b.fd);
    assert_int_equal(av_ctx_stop(ctx, 1.0), AV_OK);
    av_ctx_free(ctx);
}

/* Many threads open gateways and streams while traffic flows. */
#define NTHREADS 8
#define NROUNDS 4

typedef struct worker {
    av_ctx *ctx;
    int id;
    int ok; /* exchanges that succeeded */
    char url[2][32]; /* the gateway URLs it got for api.test and env.test */
    char err[300];
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    static const char *const ups[] = {"https://api.test", "https://api.test:443", "https://env.test"};
    for (int i = 0; i < NROUNDS && !w->err[0]; i++) {
        const char *up = ups[(w->id + i) % 3];
        client c;
        resp r;
        char path[64];
        char *url = w->url[strstr(up, "env") != NULL];
        char got[32];
        if (av_gateway_open(w->ctx, up, got, sizeof(got)) != AV_OK) {
            snprintf(w->err, sizeof(w->err), "av_gateway_open(%s) failed", up);
            break;
        }
        if (url[0] && strcmp(url, got) != 0) {
            snprintf(w->err, sizeof(w->err), "%s: %s, then %s", up, url, got);
            break;
        }
        snprintf(url, 32, "%s", got);
        if (gw_connect(w->ctx, up, &c, w->err, sizeof(w->err)) < 0)
            break;
        for (int k = 0; k < 2 && !w->err[0]; k++) {
            snprintf(path, sizeof(path), "/t%d/r%d/gw%d", w->id, i, k);
            if (exchange(&c, path, 0, &r, w->err, sizeof(w->err)) == 0)
                w->ok++;
        }
        close(c.fd);
        if (w->err[0] || stream_connect(w->ctx, up, &c, w->err, sizeof(w->err)) < 0)
            break;
        for (int k = 0; k < 2 && !w->err[0]; k++) {
            snprintf(path, sizeof(path), "/t%d/r%d/st%d", w->id, i, k);
            if (exchange(&c, path, 0, &r, w->err, sizeof(w->err)) == 0)
                w->ok++;
        }
        close(c.fd);
    }
    return NULL;
}

static void threads_open_concurrently(void **state)
{
    (void)state;
    av_ctx *ctx = new_ctx(0);
    assert_int_equal(av_ctx_start(ctx), AV_OK);
    counts k0 = origin_counts();
    worker w[NTHREADS];
    pthread_t t[NTHREADS];
    memset(w, 0, sizeof(w));
    for (int i = 0; i < NTHREADS; i++) {
        w[i].ctx = ctx;
        w[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < NTHREADS; i++)
        if (w[i].err[0])
            fail_msg("thread %d: %s", i, w[i].err);
    int total = 0;
    for (int i = 0; i < NTHREADS; i++) {
        total += w[i].ok;
        for (int k = 0; k < 2; k++) /* every thread got the same URL per origin */
            if (w[i].url[k][0] && w[0].url[k][0])
                assert_string_equal(w[i].url[k], w[0].url[k]);
    }
    assert_string_not_equal(w[0].url[0], w[0].url[1]);
    assert_int_equal(total, NTHREADS * NROUNDS * 4);
    counts k1 = origin_counts();
    assert_int_equal(k1.good - k0.good, total);
    assert_int_equal(k1.bad - k0.bad, 0);
    assert_int_equal(k1.none - k0.none, 0);
    assert_int_equal(av_ctx_stop(ctx, 2.0), AV_OK);
    av_ctx_free(ctx);
}

/* A request in flight on a stream, read by a thread of its own. */
typedef struct inflight {
    client c;
    const char *path;
    int rc;
    resp r;
    char err[300];
} inflight;

static void *inflight_main(void *arg)
{
    inflight *f = arg;
    f->rc = exchange(&f->c, f->path, 0, &f->r, f->err, sizeof(f->err));
    return NULL;
}

/* start_inflight sends f->path on a new stream from a thread and returns
 * once the origin holds the request (/slow/...: 700 ms). */
static void start_inflight(av_ctx *ctx, inflight *f, pthread_t *t)
{
    char err[300] = "";
    if (stream_connect(ctx, "https://api.test", &f->c, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    int slow0 = slow_count();
    assert_int_equal(pthread_create(t, NULL, inflight_main, f), 0);
    assert_true(wait_slow(slow0 + 1));
}

/* started_with_stream starts a context and makes one exchange on a new
 * stream |c| (left open). */
static av_ctx *started_with_stream(client *c, const char *path)
{
    av_ctx *ctx = new_ctx(0);
    assert_int_equal(av_ctx_start(ctx), AV_OK);
    char err[300] = "";
    resp r;
    if (stream_connect(ctx, "https://api.test", c, err, sizeof(err)) < 0 ||
        exchange(c, path, 0, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    return ctx;
}

/* av_ctx_stop lets the exchange in flight finish, closes idle
 * connections at once, joins, and refuses everything afterwards. */
static void stop_drains_and_joins(void **state)
{
    (void)state;
    client idle;
    av_ctx *ctx = started_with_stream(&idle, "/before");
    inflight f = {.path = "/slow/drain", .rc = -1};
    pthread_t t;
    start_inflight(ctx, &f, &t); /* the origin holds it for 700 ms */
    double t0 = now_s();
    assert_int_equal(av_ctx_stop(ctx, 5.0), AV_OK);
    double took = now_s() - t0;
    pthread_join(t, NULL);
    if (f.rc != 0)
        fail_msg("the exchange in flight did not finish during the drain: %s", f.err);
    assert_true(took < 4.0); /* it ended when the last exchange did, not at the deadline */
    assert_true(peer_closed(f.c.fd));
    assert_true(peer_closed(idle.fd));
    close(f.c.fd);
    close(idle.fd);

    /* Stopped: every call is refused. */
    char url[32] = "x";
    int fd = 7;
    assert_int_equal(av_gateway_open(ctx, "https://api.test", url, sizeof(url)), AV_ERR_STATE);
    assert_string_equal(url, "");
    assert_int_equal(av_open_stream(ctx, "https://api.test", &fd), AV_ERR_STATE);
    assert_int_equal(fd, -1);
    assert_int_equal(av_ctx_stop(ctx, 1.0), AV_ERR_STATE);
    assert_int_equal(av_ctx_start(ctx), AV_ERR_STATE);
    av_ctx_free(ctx);
}

/* A later, shorter shutdown cuts a drain under way: after
 * av_ctx_shutdown(30 s) has started draining, av_ctx_stop(0) ends the
 * exchange in flight instead of waiting for it. */
static void shorter_shutdown_cuts_drain(void **state)
{
    (void)state;
    av_ctx *ctx = new_ctx(0);
    assert_int_equal(av_ctx_start(ctx), AV_OK);
    inflight f = {.path = "/slow/cut", .rc = -1};
    pthread_t t;
    start_inflight(ctx, &f, &t); /* the origin holds it for 700 ms */
    av_ctx_shutdown(ctx, 30.0);
    sleep_ms(150); /* the loop starts the 30 s drain */
    assert_int_equal(av_ctx_stop(ctx, 0.0), AV_OK);
    pthread_join(t, NULL);
    assert_true(f.rc != 0); /* cut, not waited for */
    close(f.c.fd);
    av_ctx_free(ctx);
}

/* av_ctx_shutdown (any thread) refuses new gateways and streams at once;
 * av_ctx_stop still joins. */
static void shutdown_refuses_calls(void **state)
{
    (void)state;
    client c;
    av_ctx *ctx = started_with_stream(&c, "/x");
    av_ctx_shutdown(ctx, 1.0);
    char url[32];
    int fd;
    assert_int_equal(av_gateway_open(ctx, "https://api.test", url, sizeof(url)), AV_ERR_STATE);
    assert_int_equal(av_open_stream(ctx, "https://api.test", &fd), AV_ERR_STATE);
    assert_int_equal(fd, -1);
    assert_true(peer_closed(c.fd));
    close(c.fd);
    assert_int_equal(av_ctx_stop(ctx, 1.0), AV_OK);
    av_ctx_free(ctx);

    /* A context that never ran: shut down, then refused too. */
    ctx = new_ctx(0);
    av_ctx_shutdown(ctx, 0);
    assert_int_equal(av_open_stream(ctx, "https://api.test", &fd), AV_ERR_STATE);
    assert_int_equal(av_ctx_stop(ctx, 0), AV_ERR_STATE);
    av_ctx_free(ctx);
}

/* av_ctx_free of a started context stops it (no drain), with a request
 * in flight, an idle stream and idle upstream connections. */
static void free_started_context(void **state)
{
    (void)state;
    client idle;
    av_ctx *ctx = started_with_stream(&idle, "/warm");
    char url[32];
    assert_int_equal(av_gateway_open(ctx, "https://api.test", url, sizeof(url)), AV_OK);
    int gw_port = url_port(url);
    assert_true(gw_port > 0);
    inflight f = {.path = "/slow/free", .rc = -1};
    pthread_t t;
    start_inflight(ctx, &f, &t); /* the origin holds it for 700 ms */
    double t0 = now_s();
    av_ctx_free(ctx);
    assert_true(now_s() - t0 < 2.0); /* no drain */
    pthread_join(t, NULL);
    assert_int_not_equal(f.rc, 0); /* cut off */
    assert_true(peer_closed(idle.fd));
    close(idle.fd);
    close(f.c.fd);
    /* The gateway's listener is gone with it. */
    int fd = tcp_connect(gw_port);
    if (fd >= 0) {
        assert_true(peer_closed(fd));
        close(fd);
    }
}

/* av_ctx_run on a thread of the host, with a proxy listener and a
 * [gateway] section next to the API gateways. */
typedef struct runner {
    av_ctx *ctx;
    int rc;
} runner;

static void *runner_main(void *arg)
{
    runner *rn = arg;
    rn->rc = av_ctx_run(rn->ctx);
    return NULL;
}

static void run_with_listeners(void **state)
{
    (void)state;
    av_ctx *ctx = new_ctx(CFG_LISTEN | CFG_GATEWAY);
    int pport = av_ctx_listen_port(ctx, 0), gport = av_ctx_gateway_port(ctx, 0);
    assert_true(pport > 0);
    assert_true(gport > 0);
    assert_int_equal(av_ctx_listen_port(ctx, 1), AV_ERR_NOTFOUND);
    assert_int_equal(av_ctx_gateway_port(ctx, 1), AV_ERR_NOTFOUND);
    runner rn = {ctx, -1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, runner_main, &rn), 0);

    char err[300] = "";
    client c;
    resp r;
    /* The proxy listener answers /healthz. */
    client_init(&c, tcp_connect(pport));
    assert_true(c.fd >= 0);
    const char *hz = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    assert_int_equal(send(c.fd, hz, strlen(hz), MSG_NOSIGNAL), (ssize_t)strlen(hz));
    assert_int_equal(read_response(&c, &r, err, sizeof(err)), 0);
    assert_int_equal(r.status, 200);
    close(c.fd);
    /* The configured gateway. */
    client_init(&c, tcp_connect(gport));
    assert_true(c.fd >= 0);
    if (exchange(&c, "/cfg-gateway", 1, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    close(c.fd);
    /* And the API, from this (another) thread. */
    if (stream_connect(ctx, "https://api.test", &c, err, sizeof(err)) < 0 ||
        exchange(&c, "/api-stream", 0, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    close(c.fd);
    assert_int_equal(av_ctx_stop(ctx, 1.0), AV_ERR_STATE); /* not started: run */
    av_ctx_shutdown(ctx, 1.0);
    pthread_join(t, NULL);
    assert_int_equal(rn.rc, AV_OK);
    av_ctx_free(ctx);
}

/* [proxy] workers = 2 through the API: av_ctx_start runs two loops (the
 * proxy and [gateway] listeners on both), the embedding API still works,
 * and av_ctx_stop drains and joins every worker thread. A context on a
 * host's loop refuses more than one worker; bad counts are refused. */
static void start_with_workers(void **state)
{
    (void)state;
    av_config *cfg = make_cfg(CFG_LISTEN | CFG_GATEWAY, secret_now, NULL);
    assert_non_null(cfg);
    assert_int_equal(av_config_workers(cfg), 0);
    assert_int_equal(av_config_set_workers(cfg, 0), AV_ERR_INVALID);
    assert_non_null(strstr(av_config_error(cfg), "workers must be a whole number in [1, 64] or auto"));
    assert_int_equal(av_config_set_workers(cfg, 65), AV_ERR_INVALID);
    assert_int_equal(av_config_set_workers(cfg, 2), AV_OK);
    assert_int_equal(av_config_workers(cfg), 2);

    char err[300] = "";
    av_ctx *ctx = NULL;
    struct ev_loop *host = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(host);
    assert_int_equal(av_ctx_new_on_loop(&ctx, cfg, host, err, sizeof(err)), AV_ERR_CONFIG);
    assert_null(ctx);
    assert_non_null(strstr(err, "a context on the host's loop runs one worker"));
    ev_loop_destroy(host);

    int rc = av_ctx_new(&ctx, cfg, err, sizeof(err));
    av_config_free(cfg);
    if (rc != AV_OK)
        fail_msg("av_ctx_new: %s", err);
    av_ctx_set_log(ctx, log_fn, NULL, AV_LOG_DEBUG);
    int pport = av_ctx_listen_port(ctx, 0), gport = av_ctx_gateway_port(ctx, 0);
    assert_int_equal(av_ctx_start(ctx), AV_OK);
    client c;
    resp r;
    const char *hz = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    for (int i = 0; i < 20; i++) {
        client_init(&c, tcp_connect(pport));
        assert_true(c.fd >= 0);
        assert_int_equal(send(c.fd, hz, strlen(hz), MSG_NOSIGNAL), (ssize_t)strlen(hz));
        assert_int_equal(read_response(&c, &r, err, sizeof(err)), 0);
        assert_int_equal(r.status, 200);
        close(c.fd);
    }
    for (int i = 0; i < 6; i++) {
        client_init(&c, tcp_connect(gport));
        assert_true(c.fd >= 0);
        if (exchange(&c, "/cfg-gateway", 1, &r, err, sizeof(err)) < 0)
            fail_msg("%s", err);
        close(c.fd);
    }
    if (stream_connect(ctx, "https://api.test", &c, err, sizeof(err)) < 0 ||
        exchange(&c, "/api-stream", 0, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    close(c.fd);
    assert_int_equal(av_ctx_stop(ctx, 1.0), AV_OK);
    av_ctx_free(ctx);
}

/* A configured [gateway] and no proxy listener at all: the context binds
 * the gateway alone (it read the proxy's first listen address, which does
 * not exist, before it looked at the gateways). */
static void gateway_without_proxy_listener(void **state)
{
    (void)state;
    av_config *cfg = make_cfg(CFG_GATEWAY, secret_now, NULL);
    assert_non_null(cfg);
    assert_int_equal(av_config_clear_listen(cfg), AV_OK); /* no list at all, not an empty one */
    av_ctx *ctx = NULL;
    char cerr[300] = "";
    int crc = av_ctx_new(&ctx, cfg, cerr, sizeof(cerr));
    av_config_free(cfg);
    if (crc != AV_OK)
        fail_msg("av_ctx_new: %s: %s", av_strerror(crc), cerr);
    assert_int_equal(av_ctx_listen_port(ctx, 0), AV_ERR_NOTFOUND);
    int gport = av_ctx_gateway_port(ctx, 0);
    assert_true(gport > 0);
    runner rn = {ctx, -1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, runner_main, &rn), 0);
    char err[300] = "";
    client c;
    resp r;
    client_init(&c, tcp_connect(gport));
    assert_true(c.fd >= 0);
    if (exchange(&c, "/gateway-only", 1, &r, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    close(c.fd);
    av_ctx_shutdown(ctx, 1.0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(rn.rc, AV_OK);
    av_ctx_free(ctx);
}

/* ---- a host's libev loop ---------------------------------------------- */

typedef struct host {
    struct ev_loop *loop;
    av_ctx *ctx;
    pthread_t loop_thread;
    int done_calls;
    int done_on_other_thread;
    int ticks_after_done;
    int guard_fired;
    int cb_calls;
    av_secret_request *pending;
    ev_timer tick, guard, answer;
} host;

static void host_done(void *ud)
{
    host *h = ud;
    h->done_calls++;
    if (!pthread_equal(pthread_self(), h->loop_thread))
        h->done_on_other_thread = 1;
}

static void host_answer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    host *h = w->data;
    av_secret_request *q = h->pending;
    h->pending = NULL;
    if (q)
        av_secret_request_answer(q, g_cb_secret, strlen(g_cb_secret));
}

/* The host's secret callback answers later, from a timer of its loop. */
static void host_secret(void *ud, const char *name, av_secret_request *req)
{
    host *h = ud;
    h->cb_calls++;
    if (strcmp(name, "apikey") != 0 || h->pending) {
        av_secret_request_fail(req, "unexpected request");
        return;
    }
    h->pending = req;
    ev_timer_set(&h->answer, 0.05, 0.);
    ev_timer_start(h->loop, &h->answer);
}

static void host_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    host *h = w->data;
    if (h->done_calls && ++h->ticks_after_done >= 5)
        ev_break(loop, EVBREAK_ALL);
}

static void host_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    host *h = w->data;
    h->guard_fired = 1;
    ev_break(loop, EVBREAK_ALL);
}

typedef struct host_client {
    av_ctx *ctx;
    int ok;
    char err[300];
} host_client;

static void *host_client_main(void *arg)
{
    host_client *hc = arg;
    client c;
    resp r;
    if (gw_connect(hc->ctx, "https://api.test", &c, hc->err, sizeof(hc->err)) == 0) {
        if (exchange(&c, "/host/gw1", 0, &r, hc->err, sizeof(hc->err)) == 0)
            hc->ok++;
        if (!hc->err[0] && exchange(&c, "/host/gw2", 0, &r, hc->err, sizeof(hc->err)) == 0)
            hc->ok++;
        close(c.fd);
    }
    if (!hc->err[0] && stream_connect(hc->ctx, "https://env.test", &c, hc->err, sizeof(hc->err)) == 0) {
        if (exchange(&c, "/host/stream", 0, &r, hc->err, sizeof(hc->err)) == 0)
            hc->ok++;
        close(c.fd);
    }
    av_ctx_shutdown(hc->ctx, 2.0); /* from a thread that is not the loop's */
    return NULL;
}

static void host_init(host *h, struct ev_loop *loop)
{
    memset(h, 0, sizeof(*h));
    h->loop = loop;
    h->loop_thread = pthread_self();
    ev_timer_init(&h->tick, host_tick, 0.02, 0.02);
    ev_timer_init(&h->guard, host_guard, 20., 0.);
    ev_timer_init(&h->answer, host_answer, 0.05, 0.);
    h->tick.data = h->guard.data = h->answer.data = h;
}

static av_ctx *host_ctx(host *h)
{
    av_config *cfg = make_cfg(0, host_secret, h);
    assert_non_null(cfg);
    av_ctx *ctx = NULL;
    char err[300] = "";
    int rc = av_ctx_new_on_loop(&ctx, cfg, h->loop, err, sizeof(err));
    av_config_free(cfg);
    if (rc != AV_OK)
        fail_msg("av_ctx_new_on_loop: %s: %s", av_strerror(rc), err);
    av_ctx_set_log(ctx, log_fn, NULL, AV_LOG_DEBUG);
    av_ctx_set_done_fn(ctx, host_done, h);
    return ctx;
}

/* The context runs on the test's own loop: traffic from another thread,
 * a deferred secret answer, shutdown -> done function, and the host's
 * loop keeps running (its timer still fires) afterwards. */
static void host_loop_serves_and_finishes(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    host h;
    host_init(&h, loop);
    av_ctx *ctx = host_ctx(&h);
    h.ctx = ctx;
    assert_int_equal(av_ctx_run(ctx), AV_ERR_STATE);
    assert_int_equal(av_ctx_start(ctx), AV_ERR_STATE);
    assert_int_equal(av_ctx_stop(ctx, 1.0), AV_ERR_STATE);

    counts k0 = origin_counts();
    host_client hc = {.ctx = ctx};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, host_client_main, &hc), 0);
    ev_timer_start(loop, &h.tick);
    ev_timer_start(loop, &h.guard);
    ev_run(loop, 0);
    pthread_join(t, NULL);
    assert_false(h.guard_fired);
    if (hc.err[0])
        fail_msg("client: %s", hc.err);
    assert_int_equal(hc.ok, 3);
    assert_int_equal(h.done_calls, 1);
    assert_false(h.done_on_other_thread);
    assert_true(h.ticks_after_done >= 5); /* we never broke the host's loop */
    assert_int_equal(h.cb_calls, 1);       /* one deferred answer, then the cache */
    counts k1 = origin_counts();
    assert_int_equal(k1.good - k0.good, 3);
    assert_int_equal(k1.bad - k0.bad, 0);

    char url[32];
    assert_int_equal(av_gateway_open(ctx, "https://api.test", url, sizeof(url)), AV_ERR_STATE);
    av_ctx_free(ctx);

    /* The host's loop still works and holds nothing of ours: with the
     * host's own watchers stopped, ev_run returns at once. */
    ev_timer_stop(loop, &h.tick);
    ev_timer_stop(loop, &h.guard);
    ev_timer_stop(loop, &h.answer);
    double t0 = now_s();
    ev_run(loop, 0);
    assert_true(now_s() - t0 < 1.0);
    ev_loop_destroy(loop);
}

/* A context on a host loop only adds watchers that do not keep the loop
 * alive; a shutdown before any traffic still reports done; and a context
 * that never ran can be freed with API work still queued. */
static void host_loop_quiet_context(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    host h;
    host_init(&h, loop);
    av_ctx *ctx = host_ctx(&h);
    /* An unreferenced guard: it fires only if something of ours kept the
     * loop running. */
    ev_timer_set(&h.guard, 5., 0.);
    ev_timer_start(loop, &h.guard);
    ev_unref(loop);
    double t0 = now_s();
    ev_run(loop, 0);
    assert_true(now_s() - t0 < 1.0);
    assert_false(h.guard_fired);
    /* Shut down from the loop thread itself; done comes on a later turn. */
    av_ctx_shutdown(ctx, 0);
    for (int i = 0; i < 200 && !h.done_calls; i++) {
        ev_run(loop, EVRUN_NOWAIT);
        if (!h.done_calls)
            sleep_ms(5);
    }
    assert_int_equal(h.done_calls, 1);
    assert_false(h.guard_fired);
    av_ctx_free(ctx);
    ev_ref(loop);
    ev_timer_stop(loop, &h.guard);

    /* Queued work of a context whose loop never ran is discarded on free:
     * the stream's peer sees the end. */
    host h2;
    host_init(&h2, loop);
    ctx = host_ctx(&h2);
    char url[32];
    int fd = -1;
    assert_int_equal(av_gateway_open(ctx, "https://api.test", url, sizeof(url)), AV_OK);
    assert_int_equal(av_open_stream(ctx, "https://api.test", &fd), AV_OK);
    av_ctx_free(ctx);
    set_timeouts(fd);
    assert_true(peer_closed(fd));
    close(fd);
    assert_int_equal(h2.done_calls, 0);
    ev_run(loop, EVRUN_NOWAIT);
    ev_loop_destroy(loop);
}

/* ---- arguments and small functions ------------------------------------ */

static void bad_arguments(void **state)
{
    (void)state;
    av_ctx *ctx = new_ctx(0);
    char url[64] = "untouched";
    int fd = 99;
    static const char *const bad[] = {
        "https://api.test/v1",   /* a path */
        "https://api.test/?q=1", /* a query */
        "ftp://api.test",        /* another scheme */
        "api.test",              /* no scheme */
        "https://",              /* no host */
        "https://user@api.test", /* userinfo */
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(url, sizeof(url), "untouched");
        if (av_gateway_open(ctx, bad[i], url, sizeof(url)) != AV_ERR_INVALID)
            fail_msg("av_gateway_open accepted \"%s\"", bad[i]);
        assert_string_equal(url, "");
        fd = 99;
        if (av_open_stream(ctx, bad[i], &fd) != AV_ERR_INVALID)
            fail_msg("av_open_stream accepted \"%s\"", bad[i]);
        assert_int_equal(fd, -1);
    }
    assert_int_equal(av_gateway_open(ctx, "https://api.test", url, 31), AV_ERR_INVALID);
    assert_string_equal(url, "");
    assert_int_equal(av_gateway_open(ctx, "https://api.test", NULL, 32), AV_ERR_INVALID);
    assert_int_equal(av_gateway_open(ctx, NULL, url, sizeof(url)), AV_ERR_INVALID);
    assert_int_equal(av_gateway_open(NULL, "https://api.test", url, sizeof(url)), AV_ERR_INVALID);
    assert_int_equal(av_open_stream(ctx, NULL, &fd), AV_ERR_INVALID);
    assert_int_equal(av_open_stream(ctx, "https://api.test", NULL), AV_ERR_INVALID);
    assert_int_equal(av_open_stream(NULL, "https://api.test", &fd), AV_ERR_INVALID);
    /* http:// origins need no port rule here; a valid one is accepted
     * (queued until the context runs). */
    assert_int_equal(av_gateway_open(ctx, "http://127.0.0.1:9", url, 32), AV_OK);
    assert_int_equal(url_port(url) > 0, 1);
    assert_true(strlen(url) < 32);

    assert_int_equal(av_ctx_stop(ctx, 1.0), AV_ERR_STATE); /* never started */
    assert_int_equal(av_ctx_stop(NULL, 1.0), AV_ERR_STATE);
    assert_int_equal(av_ctx_start(NULL), AV_ERR_STATE);
    assert_int_equal(av_ctx_run(NULL), AV_ERR_STATE);
    av_ctx_shutdown(NULL, 0);
    av_ctx_set_done_fn(NULL, NULL, NULL);
    av_ctx_free(ctx);
    av_ctx_free(NULL);

    av_config *cfg = make_cfg(0, secret_now, NULL);
    assert_non_null(cfg);
    av_ctx *c2 = NULL;
    assert_int_equal(av_ctx_new_on_loop(&c2, cfg, NULL, NULL, 0), AV_ERR_INVALID);
    assert_null(c2);
    assert_int_equal(av_ctx_new(NULL, cfg, NULL, 0), AV_ERR_INVALID);
    av_config_free(cfg);
}

static void config_sections(void **state)
{
    (void)state;
    av_config *cfg = NULL;
    assert_int_equal(av_config_new(&cfg), AV_OK);
    const char *nl[] = {"host", "api.test\nauth = bearer", NULL};
    assert_int_equal(av_config_add_section(cfg, "service", "x", nl), AV_ERR_INVALID);
    assert_non_null(strstr(av_config_error(cfg), "line break"));
    const char *ok[] = {"host", "api.test", "auth", "bearer", "secret", "callback:k", NULL};
    assert_int_equal(av_config_add_section(cfg, "colour", "x", ok), AV_ERR_INVALID);
    assert_int_equal(av_config_add_section(cfg, "proxy", "named", NULL), AV_ERR_INVALID);
    assert_int_equal(av_config_add_section(cfg, "service", NULL, ok), AV_ERR_INVALID);
    assert_int_equal(av_config_add_section(cfg, "service", "a\"b", ok), AV_ERR_INVALID);
    const char *odd[] = {"host", NULL};
    assert_int_equal(av_config_add_section(cfg, "service", "x", odd), AV_ERR_INVALID);
    const char *unknown[] = {"colour", "blue", NULL};
    assert_int_equal(av_config_add_section(cfg, "service", "x", unknown), AV_ERR_CONFIG);
    assert_int_equal(av_config_service_count(cfg), 0);
    /* A callback: service validates only with a secret function. */
    assert_int_equal(av_config_add_section(cfg, "service", "cb", ok), AV_OK);
    assert_int_equal(av_config_service_count(cfg), 1);
    assert_string_equal(av_config_service_name(cfg, 0), "cb");
    const char *gw[] = {"listen", "127.0.0.1:0", "upstream", "https://api.test", NULL};
    assert_int_equal(av_config_add_section(cfg, "gateway", "g", gw), AV_OK);
    assert_int_equal(av_config_gateway_count(cfg), 1);
    assert_string_equal(av_config_gateway_upstream(cfg, 0), "https://api.test");
    av_config_free(cfg);
}

static void tls_library(void **state)
{
    (void)state;
    const char *backend = NULL;
    const char *path = av_tls_library(&backend);
    assert_non_null(path);
    assert_true(strstr(path, "libssl") != NULL || strstr(path, "libcrypto") != NULL);
    assert_true(path[0] == '/');
    assert_non_null(backend);
#if defined(AV_TLS_BORINGSSL)
    assert_string_equal(backend, "boringssl");
#else
    assert_string_equal(backend, "openssl");
#endif
    assert_ptr_equal(av_tls_library(NULL), path); /* stable */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(tls_library, test_teardown),
        cmocka_unit_test_teardown(config_sections, test_teardown),
        cmocka_unit_test_teardown(bad_arguments, test_teardown),
        cmocka_unit_test_teardown(start_gateway_injects, test_teardown),
        cmocka_unit_test_teardown(stream_keepalive, test_teardown),
        cmocka_unit_test_teardown(api_connections_capped, test_teardown),
        cmocka_unit_test_teardown(threads_open_concurrently, test_teardown),
        cmocka_unit_test_teardown(stop_drains_and_joins, test_teardown),
        cmocka_unit_test_teardown(shorter_shutdown_cuts_drain, test_teardown),
        cmocka_unit_test_teardown(shutdown_refuses_calls, test_teardown),
        cmocka_unit_test_teardown(free_started_context, test_teardown),
        cmocka_unit_test_teardown(run_with_listeners, test_teardown),
        cmocka_unit_test_teardown(start_with_workers, test_teardown),
        cmocka_unit_test_teardown(gateway_without_proxy_listener, test_teardown),
        cmocka_unit_test_teardown(host_loop_serves_and_finishes, test_teardown),
        cmocka_unit_test_teardown(host_loop_quiet_context, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
