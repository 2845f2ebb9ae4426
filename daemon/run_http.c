/* run_http.c - the proxy URL and a small blocking HTTP/1.1 client for
 * `agentvault run`: GET /ca.pem and /agent-env with a deadline and bounded
 * buffers. The URL goes through av_url (av__authority_parse) and the
 * response through av_h1 (av__h1_parse_response, av__h1_body_feed): the
 * same strict code the proxy uses, linked in from agentvault_util. The
 * token is never printed.
 */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_enc.h"
#include "av_h1.h"
#include "av_url.h"
#include "run_int.h"

#define RUN_RECV_CHUNK 16384 /* bytes asked of one recv */

/* Milliseconds on the monotonic clock. */
static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the proxy URL ------------------------------------------------------ */

/* Parses http://HOST:PORT[/] into p (see run_int.h). The authority is
 * av__authority_parse's: an LDH host name, a canonical IPv4 address or a
 * bracketed IPv6 address, and a port of 1-65535. */
/* The proxy URL's authority, parsed like every destination (av_url), with
 * one allowance: '_' in a host name. Container networks name services
 * that way (http://agent_vault:14322); a destination the agent asks for
 * never gets this (SECURITY.md 2), but the proxy's own address is the
 * operator's. */
static int run_authority_parse(const char *a, size_t alen, av_authority *au)
{
    if (av__authority_parse(a, alen, 0, au) == 0)
        return 0;
    char alt[AV_HOST_MAX + 16];
    if (!memchr(a, '_', alen) || alen >= sizeof(alt) || a[0] == '[')
        return -1;
    memcpy(alt, a, alen);
    for (size_t i = 0; i < alen; i++)
        if (alt[i] == '_')
            alt[i] = '-';
    if (av__authority_parse(alt, alen, 0, au) < 0 || au->is_ip)
        return -1;
    /* Put the underscores back: the name was only lower-cased, so each
     * character is where it was. */
    for (size_t i = 0; i < alen && au->host[i]; i++)
        if (a[i] == '_')
            au->host[i] = '_';
    return 0;
}

int run_proxy_parse(const char *url, run_proxy *p, const char **why)
{
    memset(p, 0, sizeof(*p));
    if (strncasecmp(url, "http://", 7) != 0) {
        *why = strncasecmp(url, "https://", 8) == 0
                   ? "the proxy URL must be http://HOST:PORT, not https:// (agentvault serve "
                     "takes plain HTTP and CONNECT on its port)"
                   : "the proxy URL must be http://HOST:PORT";
        return -1;
    }
    const char *a = url + 7;
    size_t alen = strcspn(a, "/?#");
    const char *rest = a + alen;
    if (*rest && strcmp(rest, "/") != 0) {
        *why = "the proxy URL must be http://HOST:PORT with no path, query or fragment";
        return -1;
    }
    if (memchr(a, '@', alen)) {
        *why = "the proxy URL must not contain credentials: use --token or AGENTVAULT_TOKEN";
        return -1;
    }
    av_authority au;
    if (run_authority_parse(a, alen, &au) < 0) {
        /* Valid with a default port: the port is what is missing. */
        *why = av__authority_parse(a, alen, 80, &au) == 0
                   ? "the proxy URL must name a port: http://HOST:PORT"
                   : "the proxy URL has an invalid host or port (http://HOST:PORT: a host name, "
                     "an IPv4 address or an [IPv6] address, and a port of 1-65535)";
        return -1;
    }
    memcpy(p->host, au.host, sizeof(p->host));
    p->ipv6 = au.is_ip == 6;
    snprintf(p->port, sizeof(p->port), "%d", au.port);
    if (av__authority_format(&au, 0, p->hostport, sizeof(p->hostport)) < 0) {
        *why = "the proxy URL has an empty or too long host";
        return -1;
    }
    snprintf(p->url, sizeof(p->url), "http://%s", p->hostport);
    return 0;
}

/* ---- a small blocking HTTP/1.1 client ----------------------------------- */

/* Waits for |events| on fd until the deadline; 1 ready, 0 timeout, -1 error. */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        return r < 0 ? -1 : r > 0;
    }
}

/* Connects to the proxy before the deadline; returns the socket or -1 with
 * a reason in err. */
static int proxy_connect(const run_proxy *p, long long deadline, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (p->ipv6 ? AI_NUMERICHOST : 0);
    int gr = getaddrinfo(p->host, p->port, &hints, &res);
    if (gr != 0) {
        snprintf(err, errlen, "%s", gr == EAI_SYSTEM ? strerror(errno) : gai_strerror(gr));
        return -1;
    }
    int last = ECONNREFUSED;
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            int w = wait_fd(fd, POLLOUT, deadline);
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (w > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
            last = w == 0 ? ETIMEDOUT : (soerr ? soerr : errno);
        } else {
            last = errno;
        }
        close(fd);
        fd = -1;
        if (now_ms() >= deadline)
            break;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "%s", strerror(last));
    return fd;
}

/* Sends all of buf before the deadline; 0 or -1 (reason in err). */
static int send_all(int fd, const char *buf, size_t len, long long deadline, char *err, size_t errlen)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(fd, POLLOUT, deadline);
            if (w > 0)
                continue;
            snprintf(err, errlen, "%s", w == 0 ? "timed out sending the request" : strerror(errno));
            return -1;
        }
        snprintf(err, errlen, "send: %s", strerror(errno));
        return -1;
    }
    return 0;
}

/* Reads more bytes into b. Returns bytes read, 0 at EOF, -1 on error or
 * timeout (reason in err). The caller keeps room in b. */
static ssize_t recv_some(int fd, av_buf *b, long long deadline, char *err, size_t errlen)
{
    for (;;) {
        size_t room;
        int e = 0;
        uint8_t *tail = av__buf_tail(b, &room, &e);
        if (!tail) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        ssize_t n = recv(fd, tail, room < RUN_RECV_CHUNK ? room : RUN_RECV_CHUNK, 0);
        if (n > 0) {
            av__buf_commit(b, (size_t)n);
            return n;
        }
        if (n == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = wait_fd(fd, POLLIN, deadline);
            if (w > 0)
                continue;
            snprintf(err, errlen, "%s", w == 0 ? "timed out waiting for the response" : strerror(errno));
            return -1;
        }
        snprintf(err, errlen, "recv: %s", strerror(errno));
        return -1;
    }
}

/* Reads and parses the response head into r (status, reason) and *body
 * (framing). Bytes after the head stay in |in|. Returns 0 or -1 (reason in
 * err). */
static int read_head(int fd, av_buf *in, long long deadline, http_resp *r, av_h1_body *body,
                     char *err, size_t errlen)
{
    const av_h1_limits lim = {.max_head = RUN_MAX_HEAD, .max_fields = AV_H1_MAX_FIELDS_CAP};
    av_h1_scan scan = {0};
    av_h1_response resp;
    for (;;) {
        ssize_t h = av__h1_parse_response(av__buf_head(in), av__buf_len(in), &lim, &scan, 0, 0, &resp);
        if (h > 0) {
            r->status = resp.status;
            av__sanitize_line(r->reason, sizeof(r->reason), resp.reason, resp.reason_len, 0);
            if (resp.body == AV_H1_BODY_LENGTH && resp.content_length > RUN_MAX_BODY) {
                snprintf(err, errlen, "response body larger than %d bytes", RUN_MAX_BODY);
                return -1;
            }
            av__h1_body_init(body, resp.body, resp.content_length);
            av__buf_consume(in, (size_t)h);
            return 0;
        }
        switch (h) {
        case AV_H1_INCOMPLETE:
            break;
        case AV_H1_ERR_TOO_LARGE:
            if (av__buf_len(in) > RUN_MAX_HEAD)
                snprintf(err, errlen, "response head larger than %d bytes", RUN_MAX_HEAD);
            else
                snprintf(err, errlen, "response head with more than %d fields", AV_H1_MAX_FIELDS_CAP);
            return -1;
        case AV_H1_ERR_FRAMING:
            snprintf(err, errlen, "invalid or conflicting Content-Length or Transfer-Encoding");
            return -1;
        default:
            snprintf(err, errlen, "not an HTTP/1.x response (malformed status line or header field)");
            return -1;
        }
        ssize_t n = recv_some(fd, in, deadline, err, errlen);
        if (n < 0)
            return -1;
        if (n == 0) {
            snprintf(err, errlen, av__buf_len(in) ? "connection closed in the response head"
                                                  : "connection closed without a response");
            return -1;
        }
    }
}

/* Reads the body framed by |body| into r->body (NUL-terminated), at most
 * RUN_MAX_BODY bytes. Returns 0 or -1 (reason in err). */
static int read_body(int fd, av_buf *in, long long deadline, av_h1_body *body, http_resp *r,
                     char *err, size_t errlen)
{
    av_buf out;
    av__buf_init(&out, RUN_MAX_BODY + 1);
    int rc = -1;
    for (;;) {
        while (!body->done && av__buf_len(in) > 0) {
            const uint8_t *data;
            size_t dlen;
            ssize_t used = av__h1_body_feed(body, av__buf_head(in), av__buf_len(in), &data, &dlen);
            if (used < 0) {
                snprintf(err, errlen, "malformed chunked response body");
                goto out;
            }
            if (dlen > RUN_MAX_BODY - av__buf_len(&out)) {
                snprintf(err, errlen, "response body larger than %d bytes", RUN_MAX_BODY);
                goto out;
            }
            if (dlen && av__buf_append(&out, data, dlen) < 0) {
                snprintf(err, errlen, "out of memory");
                goto out;
            }
            av__buf_consume(in, (size_t)used);
            if (used == 0)
                break;
        }
        if (body->done || body->kind == AV_H1_BODY_NONE)
            break;
        ssize_t n = recv_some(fd, in, deadline, err, errlen);
        if (n < 0)
            goto out;
        if (n == 0) {
            if (body->kind != AV_H1_BODY_UNTIL_CLOSE) {
                snprintf(err, errlen, "connection closed before the end of the body");
                goto out;
            }
            break;
        }
    }
    r->body_len = av__buf_len(&out);
    r->body = malloc(r->body_len + 1);
    if (!r->body) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (r->body_len)
        memcpy(r->body, av__buf_head(&out), r->body_len);
    r->body[r->body_len] = '\0';
    rc = 0;
out:
    av__buf_free(&out);
    return rc;
}

/* GET path from the proxy (see run_int.h). */
int run_http_get(const run_proxy *p, const char *path, const char *auth, http_resp *r, char *err,
                 size_t errlen)
{
    memset(r, 0, sizeof(*r));
    long long deadline = now_ms() + RUN_TIMEOUT_MS;
    int fd = proxy_connect(p, deadline, err, errlen);
    if (fd < 0)
        return HTTP_E_CONNECT;
    int rc = HTTP_E_PROTO;
    av_buf req, in;
    av__buf_init(&req, 8192);
    av__buf_init(&in, RUN_MAX_HEAD + RUN_RECV_CHUNK);
    /* Appended piece by piece: av__buf_appendf would leave a copy of the
     * token in its stack buffer. */
    const char *parts[] = {"GET ", path, " HTTP/1.1\r\nHost: ", p->hostport,
                           "\r\nUser-Agent: agentvault-run\r\nAccept: */*\r\nConnection: close\r\n",
                           auth ? "Proxy-Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "",
                           "\r\n"};
    int e = 0;
    for (size_t i = 0; i < NELEM(parts) && e == 0; i++)
        e = av__buf_append_str(&req, parts[i]);
    if (e < 0) {
        snprintf(err, errlen, "request too large");
        goto out;
    }
    if (send_all(fd, (const char *)av__buf_head(&req), av__buf_len(&req), deadline, err, errlen) < 0)
        goto out;
    av_h1_body body;
    if (read_head(fd, &in, deadline, r, &body, err, errlen) < 0)
        goto out;
    if (r->status != 200 || read_body(fd, &in, deadline, &body, r, err, errlen) == 0)
        rc = HTTP_OK;
out:
    close(fd);
    av__buf_free_wipe(&req);
    av__buf_free_wipe(&in);
    return rc;
}
