/* avload: a small load client for the agentvault benchmark harness.
 *
 * Single-threaded epoll + OpenSSL.  Drives HTTPS either directly to an origin
 * or through an HTTP CONNECT proxy (MITM: the client verifies the proxy's
 * leaf against --cafile).  A benchmark tool, not part of the product.
 *
 * Modes
 *   ka       C keep-alive connections, back-to-back small GETs
 *   newconn  C workers; each does TCP + CONNECT + TLS + one GET
 *            (Connection: close) + close, in a loop
 *            (--resume 1: each worker offers the TLS session of its
 *            previous connection; "resumed" in the output counts the
 *            handshakes that resumed)
 *   newhost  like newconn, but every connection uses a new host name
 *            (--host-fmt, e.g. h%04d.bench.test, indices 1..--hosts)
 *   sse      C connections GET --path (an SSE stream whose events carry
 *            "data: <CLOCK_REALTIME ns>"); records delivery delay
 *   ws       C connections upgrade to WebSocket at --path and ping-pong
 *            --msg-size byte text messages; records round-trip time
 *   idle     opens C connections (in waves of 50), one completed request
 *            each, within --duration seconds; then prints a JSON line and
 *            holds them until stdin reaches EOF
 *   h2       C connections with ALPN "h2" only (the handshake must select
 *            h2), each keeping --streams concurrent GET streams open: a
 *            stream that completes is replaced at once; records each
 *            stream's latency (request submitted -> stream closed)
 *
 * Every mode stops starting operations at the end (warm-up + duration) and
 * waits at most --grace seconds for those in flight; any still unfinished
 * then count as errors ("... unfinished ... (stalled)").
 *
 * Output: one JSON object on stdout.  Exit status 0 if at least one
 * operation succeeded, 2 otherwise, 1 on usage errors.
 *
 * Build: cc -O2 -o avload avload.c -lssl -lcrypto -lnghttp2
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { M_KA, M_NEWCONN, M_NEWHOST, M_SSE, M_WS, M_IDLE, M_H2 };
enum st {
    S_TCP, S_PROXY_REPLY, S_TLS, S_REQ, S_RESP, S_SSE, S_WS_UP, S_WS_SEND,
    S_WS_RECV, S_HELD, S_H2, S_DEAD
};

/* one HTTP/2 stream of an h2-mode connection */
struct h2s {
    uint64_t t0;
    int status;
    struct h2s *next_free;
};

#define RBUF 65536

struct conn {
    int fd;
    SSL *ssl;
    enum st st;
    int host_idx;
    char host[256];
    size_t rlen;
    uint64_t t_op;      /* start of the current measured operation */
    uint64_t t_conn;    /* start of the connection */
    nghttp2_session *h2;   /* h2 mode */
    struct h2s *h2s_all, *h2s_free;
    int h2_open;           /* streams submitted and not yet closed */
    long nev;              /* sse: events received on this connection */
    SSL_SESSION *sess;     /* --resume: the session of this worker's last connection */
    char rbuf[RBUF];
};

static struct {
    enum mode mode;
    struct sockaddr_in proxy, target;
    int use_proxy;
    const char *host, *host_fmt, *cafile, *auth, *path;
    int conns, hosts, host_next, msg_size, interval_ms, streams;
    int ws_deflate; /* offer permessage-deflate (messages sent uncompressed) */
    int resume;     /* newconn: resume each worker's previous TLS session */
    double duration, warmup, grace;
} o = {.host = "bench.test", .path = "/", .conns = 10, .duration = 5, .grace = 10,
       .msg_size = 32, .hosts = 100, .host_next = 1, .streams = 10};

static SSL_CTX *ctx;
static int ep;
static uint64_t t_begin, t_meas, t_end;
static long ok_total, ok_meas, errors, active, resumed;
static char first_err[256];
static uint32_t *lat;          /* microseconds */
static size_t nlat, caplat;
static int stop_opening;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* record counts one completed operation; its latency |ns| is measured only
 * if it completed within [t_meas, t_end) (not in the warm-up, nor while the
 * operations in flight at the end finish). */
static void record(uint64_t ns)
{
    ok_total++;
    uint64_t t = now_ns();
    if (t < t_meas || (t >= t_end && o.mode != M_NEWHOST))
        return;
    ok_meas++;
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof(*lat));
        if (!lat) { perror("realloc"); exit(1); }
    }
    uint64_t us = ns / 1000;
    lat[nlat++] = us > 0xffffffffu ? 0xffffffffu : (uint32_t)us;
}

static void set_err(const char *fmt, const char *a)
{
    errors++;
    if (!first_err[0]) {
        snprintf(first_err, sizeof(first_err), fmt, a ? a : "");
        for (char *p = first_err; *p; p++)
            if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
                *p = ' ';
    }
}

static void conn_free(struct conn *c)
{
    if (c->h2) {
        nghttp2_session_del(c->h2);
        c->h2 = NULL;
    }
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->st = S_DEAD;
}

/* conn_open (re)starts |c| with a fresh TCP connection. Returns 0 or -1 if
 * the worker should stop. */
static int conn_open(struct conn *c)
{
    if (stop_opening)
        return -1;
    if (o.mode == M_NEWHOST) {
        if (o.host_next > o.hosts)
            return -1;
        c->host_idx = o.host_next++;
        snprintf(c->host, sizeof(c->host), o.host_fmt, c->host_idx);
    } else {
        snprintf(c->host, sizeof(c->host), "%s", o.host);
    }
    c->rlen = 0;
    c->nev = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        set_err("socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    const struct sockaddr_in *sa = o.use_proxy ? &o.proxy : &o.target;
    c->t_conn = c->t_op = now_ns();
    if (connect(c->fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0 &&
        errno != EINPROGRESS) {
        set_err("connect: %s", strerror(errno));
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->st = S_TCP;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static void conn_fail(struct conn *c, const char *what)
{
    char b[200];
    unsigned long e = ERR_get_error();
    if (e) {
        char eb[120];
        ERR_error_string_n(e, eb, sizeof(eb));
        snprintf(b, sizeof(b), "%s (host %s): %s", what, c->host, eb);
    } else {
        snprintf(b, sizeof(b), "%s (host %s)%s%s", what, c->host, errno ? ": " : "",
                 errno ? strerror(errno) : "");
    }
    ERR_clear_error();
    set_err("%s", b);
    conn_free(c);
    if (o.mode == M_IDLE)
        active--;
    else if (conn_open(c) < 0)
        active--;
}

static int ssl_write_all(struct conn *c, const char *p, int n)
{
    /* Small writes: a blocking-ish loop is fine (kernel buffers are large). */
    while (n > 0) {
        int r = SSL_write(c->ssl, p, n);
        if (r > 0) {
            p += r;
            n -= r;
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
            usleep(50);
            continue;
        }
        return -1;
    }
    return 0;
}

/* ssl_fill reads into rbuf. Returns >0 bytes, 0 if it would block, -1 on
 * close or error. */
static int ssl_fill(struct conn *c)
{
    if (c->rlen >= RBUF) {
        errno = 0;
        return -1;
    }
    int r = SSL_read(c->ssl, c->rbuf + c->rlen, (int)(RBUF - c->rlen));
    if (r > 0) {
        c->rlen += r;
        return r;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    errno = 0;
    return -1;
}

/* http_complete: returns total response length if rbuf holds a complete
 * response, 0 if more is needed, -1 if malformed.  *status set. */
static long http_complete(struct conn *c, int *status)
{
    char *h = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!h)
        return 0;
    size_t hl = h - c->rbuf + 4;
    if (c->rlen < 12 || memcmp(c->rbuf, "HTTP/1.", 7))
        return -1;
    *status = atoi(c->rbuf + 9);
    long cl = -1;
    int chunked = 0;
    for (char *p = c->rbuf; p < h;) {
        char *e = memmem(p, h - p + 2, "\r\n", 2);
        if (!e)
            break;
        if (e - p > 15 && !strncasecmp(p, "content-length:", 15))
            cl = strtol(p + 15, NULL, 10);
        else if (e - p > 18 && !strncasecmp(p, "transfer-encoding:", 18) &&
                 memmem(p, e - p, "chunked", 7))
            chunked = 1;
        p = e + 2;
    }
    if (*status == 101 || *status == 204 || *status == 304)
        return (long)hl;
    if (chunked) {
        size_t pos = hl;
        for (;;) {
            char *e = memmem(c->rbuf + pos, c->rlen - pos, "\r\n", 2);
            if (!e)
                return 0;
            long n = strtol(c->rbuf + pos, NULL, 16);
            pos = e - c->rbuf + 2;
            if (n == 0) {
                /* no trailers expected */
                if (c->rlen - pos < 2)
                    return 0;
                return (long)(pos + 2);
            }
            if (c->rlen < pos + n + 2)
                return 0;
            pos += n + 2;
        }
    }
    if (cl < 0)
        return -1; /* close-delimited bodies are not used by the origin */
    if (c->rlen < hl + cl)
        return 0;
    return (long)(hl + cl);
}

static void send_request(struct conn *c)
{
    char req[1024];
    int n;
    const char *close_hdr = (o.mode == M_NEWCONN || o.mode == M_NEWHOST)
                                ? "Connection: close\r\n" : "";
    if (o.mode == M_WS) {
        n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s%s%s%s\r\n",
                     o.path, c->host,
                     o.ws_deflate ? "Sec-WebSocket-Extensions: permessage-deflate\r\n" : "",
                     o.auth ? "Authorization: " : "",
                     o.auth ? o.auth : "", o.auth ? "\r\n" : "");
    } else {
        n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: avload\r\n%s%s%s%s"
                     "\r\n",
                     o.path, c->host, close_hdr, o.auth ? "Authorization: " : "",
                     o.auth ? o.auth : "", o.auth ? "\r\n" : "");
    }
    if (o.mode == M_KA || o.mode == M_IDLE)
        c->t_op = now_ns();
    if (o.mode == M_SSE)
        c->t_op = 0; /* "response headers seen" flag in SSE mode */
    c->rlen = 0;
    if (ssl_write_all(c, req, n) < 0) {
        conn_fail(c, "write request");
        return;
    }
    c->st = o.mode == M_WS ? S_WS_UP : o.mode == M_SSE ? S_SSE : S_RESP;
}

static void ws_send(struct conn *c)
{
    unsigned char f[16 + 65536];
    size_t n = (size_t)o.msg_size, h = 0;
    f[h++] = 0x81;
    if (n < 126) {
        f[h++] = 0x80 | n;
    } else {
        f[h++] = 0x80 | 126;
        f[h++] = n >> 8;
        f[h++] = n & 0xff;
    }
    unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(f + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        f[h + i] = ('a' + i % 26) ^ mask[i & 3];
    c->t_op = now_ns();
    c->rlen = 0;
    if (ssl_write_all(c, (char *)f, (int)(h + n)) < 0) {
        conn_fail(c, "ws write");
        return;
    }
    c->st = S_WS_RECV;
}

/* ------------------------------------------------------------ h2 mode */

static int h2_submit(struct conn *c);

static void h2_fail(struct conn *c, const char *what)
{
    errno = 0;
    conn_fail(c, what);
}

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen,
                        uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS || namelen != 7 || memcmp(name, ":status", 7))
        return 0;
    struct h2s *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st && valuelen == 3)
        st->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    return 0;
}

static int h2_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                      size_t len, void *ud)
{
    (void)s; (void)flags; (void)id; (void)data; (void)len; (void)ud;
    return 0;
}

static int h2_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct conn *c = ud;
    struct h2s *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(s, id, NULL);
    c->h2_open--;
    uint64_t t = now_ns();
    if (code != NGHTTP2_NO_ERROR) {
        char m[80];
        snprintf(m, sizeof(m), "h2 stream reset: %s", nghttp2_http2_strerror(code));
        set_err("%s", m);
    } else if (st->status != 200) {
        char m[80];
        snprintf(m, sizeof(m), "h2 HTTP status %d (host %s)", st->status, c->host);
        set_err("%s", m);
    } else {
        record(t - st->t0);
    }
    st->next_free = c->h2s_free;
    c->h2s_free = st;
    if (t < t_end && h2_submit(c) < 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

/* h2_submit opens one GET stream on |c|. */
static int h2_submit(struct conn *c)
{
    struct h2s *st = c->h2s_free;
    if (!st)
        return 0;
    c->h2s_free = st->next_free;
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), \
                  NGHTTP2_NV_FLAG_NO_COPY_NAME}
    nghttp2_nv nv[] = {
        NV(":method", "GET"), NV(":scheme", "https"), NV(":authority", c->host),
        NV(":path", o.path), NV("user-agent", "avload"),
        NV("authorization", o.auth ? o.auth : ""),
    };
#undef NV
    st->t0 = now_ns();
    st->status = 0;
    int32_t id = nghttp2_submit_request(c->h2, NULL, nv, o.auth ? 6 : 5, NULL, st);
    if (id < 0) {
        set_err("nghttp2_submit_request: %s", nghttp2_strerror(id));
        st->next_free = c->h2s_free;
        c->h2s_free = st;
        return -1;
    }
    c->h2_open++;
    return 0;
}

/* h2_flush writes everything nghttp2 wants to send. */
static int h2_flush(struct conn *c)
{
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->h2, &data);
        if (n < 0) {
            set_err("nghttp2_session_mem_send: %s", nghttp2_strerror((int)n));
            return -1;
        }
        if (n == 0)
            return 0;
        if (ssl_write_all(c, (const char *)data, (int)n) < 0)
            return -1;
    }
}

static void h2_io(struct conn *c)
{
    for (;;) {
        int r = SSL_read(c->ssl, c->rbuf, RBUF);
        if (r > 0) {
            ssize_t n = nghttp2_session_mem_recv(c->h2, (uint8_t *)c->rbuf, r);
            if (n < 0) {
                char m[120];
                snprintf(m, sizeof(m), "h2 protocol: %s", nghttp2_strerror((int)n));
                h2_fail(c, m);
                return;
            }
            continue;
        }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        h2_fail(c, c->h2_open ? "h2 connection closed with open streams" : "h2 read");
        return;
    }
    if (h2_flush(c) < 0) {
        h2_fail(c, "h2 write");
        return;
    }
    if (now_ns() >= t_end && c->h2_open == 0) {
        conn_free(c);
        active--;
        return;
    }
    if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) {
        h2_fail(c, "h2 session ended (GOAWAY)");
        return;
    }
}

/* h2_start: TLS is up; check ALPN, create the session, open the streams. */
static int h2_start(struct conn *c)
{
    const unsigned char *alpn = NULL;
    unsigned alen = 0;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
    if (alen != 2 || memcmp(alpn, "h2", 2)) {
        h2_fail(c, "ALPN h2 not selected");
        return -1;
    }
    static nghttp2_session_callbacks *cb;
    if (!cb) {
        nghttp2_session_callbacks_new(&cb);
        nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_on_data);
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_close);
    }
    if (!c->h2s_all) {
        c->h2s_all = calloc(o.streams, sizeof(*c->h2s_all));
        if (!c->h2s_all) {
            perror("calloc");
            exit(1);
        }
    }
    c->h2s_free = NULL;
    for (int i = 0; i < o.streams; i++) {
        c->h2s_all[i].next_free = c->h2s_free;
        c->h2s_free = &c->h2s_all[i];
    }
    c->h2_open = 0;
    if (nghttp2_session_client_new(&c->h2, cb, c) != 0) {
        h2_fail(c, "nghttp2_session_client_new");
        return -1;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2);
    for (int i = 0; i < o.streams; i++)
        if (h2_submit(c) < 0) {
            h2_fail(c, "h2 submit");
            return -1;
        }
    c->st = S_H2;
    if (h2_flush(c) < 0) {
        h2_fail(c, "h2 write");
        return -1;
    }
    return 0;
}

/* drive runs the state machine of |c| until it would block. */
static void drive(struct conn *c, uint32_t events)
{
    for (;;) {
        if (c->st == S_DEAD || c->st == S_HELD)
            return;
        switch (c->st) {
        case S_TCP: {
            if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                return;
            int err = 0;
            socklen_t l = sizeof(err);
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            if (err) {
                errno = err;
                conn_fail(c, "tcp connect");
                return;
            }
            if (o.use_proxy) {
                char b[600];
                int n = snprintf(b, sizeof(b),
                                 "CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n",
                                 c->host, c->host);
                if (write(c->fd, b, n) != n) {
                    conn_fail(c, "write CONNECT");
                    return;
                }
                c->rlen = 0;
                c->st = S_PROXY_REPLY;
            } else {
                goto start_tls;
            }
            break;
        }
        case S_PROXY_REPLY: {
            ssize_t r = read(c->fd, c->rbuf + c->rlen, RBUF - c->rlen);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                return;
            if (r <= 0) {
                conn_fail(c, "CONNECT reply");
                return;
            }
            c->rlen += r;
            char *e = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
            if (!e)
                break;
            if (c->rlen < 12 || memcmp(c->rbuf + 9, "200", 3)) {
                c->rbuf[c->rlen < 60 ? c->rlen : 60] = 0;
                errno = 0;
                char m[120];
                snprintf(m, sizeof(m), "CONNECT refused: %s", c->rbuf);
                conn_fail(c, m);
                return;
            }
        start_tls:
            c->rlen = 0;
            c->ssl = SSL_new(ctx);
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_tlsext_host_name(c->ssl, c->host);
            SSL_set1_host(c->ssl, c->host);
            if (c->sess)
                SSL_set_session(c->ssl, c->sess);
            SSL_set_connect_state(c->ssl);
            c->st = S_TLS;
            break;
        }
        case S_TLS: {
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                if (o.mode == M_H2) {
                    if (h2_start(c) < 0)
                        return;
                    break;
                }
                send_request(c);
                break;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            errno = 0;
            conn_fail(c, "TLS handshake");
            return;
        }
        case S_RESP: {
            int r = ssl_fill(c);
            if (r < 0) {
                conn_fail(c, "read response");
                return;
            }
            int status = 0;
            long n = http_complete(c, &status);
            if (n < 0) {
                errno = 0;
                conn_fail(c, "malformed response");
                return;
            }
            if (n == 0) {
                if (r == 0)
                    return;
                break;
            }
            if (status != 200) {
                char m[64];
                snprintf(m, sizeof(m), "HTTP status %d", status);
                errno = 0;
                conn_fail(c, m);
                return;
            }
            uint64_t t = now_ns();
            if (o.mode == M_IDLE) {
                ok_total++;
                c->st = S_HELD;
                active--;
                return;
            }
            if (o.mode == M_KA) {
                record(t - c->t_op);
                if (t >= t_end) {
                    conn_free(c);
                    active--;
                    return;
                }
                send_request(c);
                break;
            }
            /* newconn / newhost */
            record(t - c->t_conn);
            if (o.resume) {
                /* the ticket came before the response; a copy, since
                 * OpenSSL marks the session of a connection freed without
                 * a close_notify not resumable */
                resumed += SSL_session_reused(c->ssl);
                SSL_SESSION_free(c->sess);
                c->sess = SSL_SESSION_dup(SSL_get0_session(c->ssl));
            }
            conn_free(c);
            if (t >= t_end || conn_open(c) < 0) {
                active--;
                return;
            }
            return; /* wait for the connect event */
        }
        case S_SSE: {
            int r = ssl_fill(c);
            if (r < 0) {
                conn_fail(c, "sse read");
                return;
            }
            if (r == 0)
                return;
            uint64_t rt = real_ns();
            char *p = c->rbuf, *end = c->rbuf + c->rlen;
            if (!c->t_op) { /* headers not yet seen */
                char *h = memmem(p, end - p, "\r\n\r\n", 4);
                if (!h)
                    break;
                if (memcmp(c->rbuf + 9, "200", 3)) {
                    errno = 0;
                    conn_fail(c, "sse status not 200");
                    return;
                }
                c->t_op = 1;
                p = h + 4;
            }
            for (;;) {
                char *d = memmem(p, end - p, "data: ", 6);
                if (!d)
                    break;
                char *nl = memchr(d + 6, '\n', end - d - 6);
                if (!nl)
                    break;
                uint64_t ts = strtoull(d + 6, NULL, 10);
                record(rt > ts ? rt - ts : 0);
                c->nev++;
                p = nl + 1;
            }
            /* keep the unconsumed tail (at most a partial event) */
            size_t keep = end - p;
            if (keep > 64) {
                /* no "data: " prefix in the tail: keep only the last 64 bytes */
                char *d = memmem(p, end - p, "data: ", 6);
                if (!d) {
                    p = end - 64;
                    keep = 64;
                } else {
                    p = d;
                    keep = end - d;
                }
            }
            memmove(c->rbuf, p, keep);
            c->rlen = keep;
            if (now_ns() >= t_end && c->nev > 0) {
                conn_free(c);
                active--;
                return;
            }
            break;
        }
        case S_WS_UP: {
            int r = ssl_fill(c);
            if (r < 0) {
                conn_fail(c, "ws upgrade read");
                return;
            }
            char *h = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
            if (!h) {
                if (r == 0)
                    return;
                break;
            }
            if (c->rlen < 12 || memcmp(c->rbuf + 9, "101", 3)) {
                c->rbuf[c->rlen < 40 ? c->rlen : 40] = 0;
                char m[80];
                snprintf(m, sizeof(m), "ws upgrade refused: %s", c->rbuf);
                errno = 0;
                conn_fail(c, m);
                return;
            }
            ws_send(c);
            break;
        }
        case S_WS_RECV: {
            int r = ssl_fill(c);
            if (r < 0) {
                conn_fail(c, "ws read");
                return;
            }
            unsigned char *b = (unsigned char *)c->rbuf;
            if (c->rlen >= 2) {
                size_t len = b[1] & 0x7f, h = 2;
                if (len == 126) {
                    if (c->rlen < 4)
                        goto more;
                    len = (b[2] << 8) | b[3];
                    h = 4;
                } else if (len == 127) {
                    errno = 0;
                    conn_fail(c, "ws frame too large");
                    return;
                }
                if (b[1] & 0x80)
                    h += 4;
                if (c->rlen >= h + len) {
                    /* a compressed echo (RSV1) has its own length */
                    if ((b[0] & 0x0f) != 1 || (len != (size_t)o.msg_size && !(b[0] & 0x40))) {
                        errno = 0;
                        conn_fail(c, "ws unexpected frame");
                        return;
                    }
                    uint64_t t = now_ns();
                    record(t - c->t_op);
                    if (t >= t_end) {
                        conn_free(c);
                        active--;
                        return;
                    }
                    ws_send(c);
                    break;
                }
            }
        more:
            if (r == 0)
                return;
            break;
        }
        case S_H2:
            h2_io(c);
            return;
        default:
            return;
        }
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static int parse_addr(const char *s, struct sockaddr_in *sa)
{
    char h[64];
    const char *c = strrchr(s, ':');
    if (!c || c - s >= (long)sizeof(h))
        return -1;
    memcpy(h, s, c - s);
    h[c - s] = 0;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons(atoi(c + 1));
    return inet_pton(AF_INET, h, &sa->sin_addr) == 1 ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: avload --mode ka|newconn|newhost|sse|ws|idle|h2 (--proxy IP:PORT | "
            "--target IP:PORT)\n"
            "              --cafile PEM [--host H] [--host-fmt FMT --hosts N] [--conns C]\n"
            "              [--duration S] [--warmup S] [--auth VALUE] [--path P]\n"
            "              [--msg-size N] [--ws-deflate 1 (offer permessage-deflate)]\n"
            "              [--streams M (h2: concurrent streams per conn)]\n"
            "              [--grace S (wait for in-flight operations after the end; default 10)]\n"
            "  idle: --duration is the deadline for opening all connections\n");
    exit(1);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        i++;
        if (!strcmp(a, "--mode")) {
            o.mode = !strcmp(v, "ka") ? M_KA : !strcmp(v, "newconn") ? M_NEWCONN
                   : !strcmp(v, "newhost") ? M_NEWHOST : !strcmp(v, "sse") ? M_SSE
                   : !strcmp(v, "ws") ? M_WS : !strcmp(v, "idle") ? M_IDLE
                   : !strcmp(v, "h2") ? M_H2 : -1;
            if ((int)o.mode < 0)
                usage();
        } else if (!strcmp(a, "--proxy")) {
            if (parse_addr(v, &o.proxy))
                usage();
            o.use_proxy = 1;
        } else if (!strcmp(a, "--target")) {
            if (parse_addr(v, &o.target))
                usage();
        } else if (!strcmp(a, "--cafile")) o.cafile = v;
        else if (!strcmp(a, "--host")) o.host = v;
        else if (!strcmp(a, "--host-fmt")) o.host_fmt = v;
        else if (!strcmp(a, "--hosts")) o.hosts = atoi(v);
        else if (!strcmp(a, "--conns")) o.conns = atoi(v);
        else if (!strcmp(a, "--duration")) o.duration = atof(v);
        else if (!strcmp(a, "--warmup")) o.warmup = atof(v);
        else if (!strcmp(a, "--auth")) o.auth = v;
        else if (!strcmp(a, "--path")) o.path = v;
        else if (!strcmp(a, "--msg-size")) o.msg_size = atoi(v);
        else if (!strcmp(a, "--ws-deflate")) o.ws_deflate = atoi(v);
        else if (!strcmp(a, "--streams")) o.streams = atoi(v);
        else if (!strcmp(a, "--grace")) o.grace = atof(v);
        else if (!strcmp(a, "--resume")) o.resume = atoi(v);
        else usage();
    }
    if (!o.cafile || o.conns < 1 || (o.mode == M_NEWHOST && !o.host_fmt) ||
        o.msg_size < 1 || o.msg_size > 65535 || o.streams < 1 || o.streams > 100)
        usage();
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl = {65536, 65536};
    setrlimit(RLIMIT_NOFILE, &rl);

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (o.resume) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    }
    static const unsigned char alpn[] = "\x08http/1.1";
    static const unsigned char alpn_h2[] = "\x02h2";
    if (o.mode == M_H2)
        SSL_CTX_set_alpn_protos(ctx, alpn_h2, sizeof(alpn_h2) - 1);
    else
        SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    if (SSL_CTX_load_verify_locations(ctx, o.cafile, NULL) != 1) {
        fprintf(stderr, "avload: cannot load %s\n", o.cafile);
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *cs = calloc(o.conns, sizeof(*cs));
    if (!cs) {
        perror("calloc");
        return 1;
    }
    t_begin = now_ns();
    t_meas = t_begin + (uint64_t)(o.warmup * 1e9);
    t_end = t_meas + (uint64_t)(o.duration * 1e9);

    /* In idle mode, open connections in waves so that a slow proxy is not
     * hit by a thousand simultaneous handshakes. */
    int opened = 0, wave = o.mode == M_IDLE ? 50 : o.conns;
    /* idle mode: --duration is the time allowed to open every connection */
    uint64_t idle_deadline = t_begin + (uint64_t)(o.duration * 1e9);
    for (; opened < o.conns && opened < wave; opened++) {
        cs[opened].fd = -1;
        if (conn_open(&cs[opened]) == 0)
            active++;
        else
            cs[opened].st = S_DEAD;
    }
    struct epoll_event evs[256];
    for (;;) {
        if (o.mode == M_IDLE) {
            while (active < wave && opened < o.conns) {
                cs[opened].fd = -1;
                if (conn_open(&cs[opened]) == 0)
                    active++;
                else
                    cs[opened].st = S_DEAD;
                opened++;
            }
            if (active == 0 || now_ns() > idle_deadline)
                break;
        } else {
            if (active == 0)
                break;
            uint64_t t = now_ns();
            if (t > t_end + (uint64_t)(o.grace * 1e9)) /* grace, then give up */
                break;
            if (t >= t_end)
                stop_opening = 1;
        }
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++)
            drive(evs[i].data.ptr, evs[i].events);
        if (o.mode == M_SSE || o.mode == M_KA || o.mode == M_WS || o.mode == M_H2) {
            /* connections that block forever (SSE between events) must still
             * notice the end of the run; an SSE stream that has not delivered
             * an event yet (a slow proxy still setting it up) gets the grace
             * period to deliver one */
            if (now_ns() >= t_end)
                for (int i = 0; i < o.conns; i++)
                    if (cs[i].st == S_SSE && cs[i].nev > 0) {
                        conn_free(&cs[i]);
                        active--;
                    }
        }
    }
    uint64_t t_done = now_ns();
    /* Whatever has not finished by now stalled (for longer than --grace
     * after the end, or, in idle mode, until the deadline): an error, so
     * that a hung proxy does not look like a clean, merely slow run. */
    {
        long unfinished = 0;
        int n = o.mode == M_IDLE ? opened : o.conns;
        for (int i = 0; i < n; i++) {
            if (cs[i].st == S_DEAD || cs[i].st == S_HELD)
                continue;
            unfinished += (cs[i].st == S_H2 && cs[i].h2_open > 0) ? cs[i].h2_open : 1;
        }
        if (o.mode == M_IDLE)
            unfinished += o.conns - opened;
        if (unfinished > 0) {
            char m[160];
            snprintf(m, sizeof(m), "%ld %s unfinished %s (stalled)", unfinished,
                     o.mode == M_IDLE ? "connection(s)" : o.mode == M_H2 ? "stream(s)/connection(s)"
                                                                           : "operation(s)",
                     o.mode == M_IDLE ? "at the deadline" : "after the grace period");
            errors += unfinished - 1;
            set_err("%s", m);
        }
    }
    double meas = (double)((t_done < t_end ? t_done : t_end) -
                           (t_meas < t_done ? t_meas : t_done)) / 1e9;
    if (o.mode == M_NEWHOST || o.mode == M_IDLE)
        meas = (double)(t_done - t_begin) / 1e9;
    qsort(lat, nlat, sizeof(*lat), cmp_u32);
    double mean = 0;
    for (size_t i = 0; i < nlat; i++)
        mean += lat[i];
    mean = nlat ? mean / nlat : 0;
    unsigned p50 = nlat ? lat[nlat / 2] : 0;
    unsigned p99 = nlat ? lat[(size_t)((nlat - 1) * 0.99)] : 0;
    unsigned mx = nlat ? lat[nlat - 1] : 0;
    long ok = (o.mode == M_NEWHOST || o.mode == M_IDLE) ? ok_total : ok_meas;
    /* no measured sample (e.g. a slow proxy still setting up at the end of
     * a short run): latencies are null, not 0 */
    char lats[200];
    if (nlat)
        snprintf(lats, sizeof(lats),
                 "\"lat_p50_us\":%u,\"lat_p99_us\":%u,\"lat_max_us\":%u,\"lat_mean_us\":%.1f",
                 p50, p99, mx, mean);
    else
        snprintf(lats, sizeof(lats), "\"lat_p50_us\":null,\"lat_p99_us\":null,"
                 "\"lat_max_us\":null,\"lat_mean_us\":null");
    printf("{\"mode\":%d,\"conns\":%d,\"streams\":%d,\"seconds\":%.3f,\"ok\":%ld,\"ok_total\":%ld,"
           "\"errors\":%ld,\"rate\":%.1f,%s,\"resumed\":%ld,\"first_error\":\"%s\"}\n",
           (int)o.mode, o.conns, o.mode == M_H2 ? o.streams : 1, meas, ok, ok_total, errors,
           meas > 0 ? ok / meas : 0, lats, resumed, first_err);
    fflush(stdout);
    if (o.mode == M_IDLE) {
        char b[64];
        while (read(0, b, sizeof(b)) > 0)
            ;
    }
    return ok_total > 0 ? 0 : 2;
}
