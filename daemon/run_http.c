/* run_http.c - the proxy URL and a tiny blocking HTTP/1.1 client for
 * `agentvault run`: GET /ca.pem and /agent-env with a deadline and bounded
 * buffers. The token is never printed.
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

#include "run_int.h"

/* Milliseconds on the monotonic clock. */
static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Copies s into out (size n) keeping only printable ASCII: safe to print. */
static void sanitize(char *out, size_t n, const char *s, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < n; i++)
        out[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[j] = '\0';
}

/* ---- the proxy URL ------------------------------------------------------ */

/* Parses http://HOST:PORT[/] into p. On error returns -1 with *why set to
 * a description (which never contains the URL: it could hold a token). */
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
    const char *host, *colon;
    size_t hlen;
    if (alen > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', alen);
        if (!close) {
            *why = "the proxy URL has an unterminated [IPv6] address";
            return -1;
        }
        host = a + 1;
        hlen = (size_t)(close - host);
        colon = close + 1;
        for (size_t i = 0; i < hlen; i++)
            if (!strchr("0123456789abcdefABCDEF:.", host[i])) {
                *why = "the proxy URL has an invalid [IPv6] address";
                return -1;
            }
        if (!memchr(host, ':', hlen)) {
            *why = "the proxy URL has an invalid [IPv6] address";
            return -1;
        }
        p->ipv6 = 1;
    } else {
        host = a;
        colon = memchr(a, ':', alen);
        hlen = colon ? (size_t)(colon - a) : alen;
        for (size_t i = 0; i < hlen; i++) {
            char c = host[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '_')) {
                *why = "the proxy URL has an invalid host name";
                return -1;
            }
        }
    }
    if (hlen == 0 || hlen > RUN_MAX_HOST) {
        *why = "the proxy URL has an empty or too long host";
        return -1;
    }
    if (!colon || colon >= a + alen || *colon != ':') {
        *why = "the proxy URL must name a port: http://HOST:PORT";
        return -1;
    }
    const char *port = colon + 1;
    size_t plen = (size_t)(a + alen - port);
    unsigned long pv = 0;
    for (size_t i = 0; i < plen; i++) {
        if (port[i] < '0' || port[i] > '9') {
            plen = 0;
            break;
        }
        pv = pv * 10 + (unsigned long)(port[i] - '0');
        if (pv > 65535)
            break;
    }
    if (plen == 0 || pv == 0 || pv > 65535) {
        *why = "the proxy URL has an invalid port (1-65535)";
        return -1;
    }
    memcpy(p->host, host, hlen);
    p->host[hlen] = '\0';
    snprintf(p->port, sizeof(p->port), "%lu", pv);
    snprintf(p->hostport, sizeof(p->hostport), p->ipv6 ? "[%s]:%s" : "%s:%s", p->host, p->port);
    snprintf(p->url, sizeof(p->url), "http://%s", p->hostport);
    return 0;
}

/* ---- a tiny blocking HTTP/1.1 client ----------------------------------- */

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

/* Reads more bytes into b (bounded by b->limit). Returns bytes read, 0 at
 * EOF, -1 on error/timeout/overflow (reason in err). */
static ssize_t recv_some(int fd, sbuf *b, long long deadline, char *err, size_t errlen)
{
    char tmp[16384];
    for (;;) {
        ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
        if (n > 0) {
            sb_putn(b, tmp, (size_t)n);
            if (b->failed) {
                snprintf(err, errlen, "response larger than %d bytes", RUN_MAX_HEAD + RUN_MAX_BODY);
                return -1;
            }
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

/* Parses a response head (status line and fields, CRLF-separated, without
 * the blank line). Sets r->status/reason and *clen (-1 if absent).
 * Returns 0 or -1 (reason in err). */
static int parse_head(const char *h, size_t hlen, http_resp *r, long long *clen, char *err, size_t errlen)
{
    *clen = -1;
    if (hlen < 12 || (memcmp(h, "HTTP/1.1 ", 9) != 0 && memcmp(h, "HTTP/1.0 ", 9) != 0) ||
        h[9] < '1' || h[9] > '5' || h[10] < '0' || h[10] > '9' || h[11] < '0' || h[11] > '9' ||
        (hlen > 12 && h[12] != ' ' && h[12] != '\r')) {
        snprintf(err, errlen, "not an HTTP/1.x response");
        return -1;
    }
    r->status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    const char *eol = memchr(h, '\r', hlen);
    size_t llen = eol ? (size_t)(eol - h) : hlen;
    if (llen > 13)
        sanitize(r->reason, sizeof(r->reason), h + 13, llen - 13);
    const char *end = h + hlen;
    const char *line = eol ? eol + 2 : end;
    while (line < end) {
        const char *le = line;
        while (le < end && *le != '\r')
            le++;
        const char *c = memchr(line, ':', (size_t)(le - line));
        if (!c) {
            snprintf(err, errlen, "malformed response header line");
            return -1;
        }
        size_t nlen = (size_t)(c - line);
        const char *v = c + 1;
        while (v < le && (*v == ' ' || *v == '\t'))
            v++;
        const char *ve = le;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
            long long n = 0;
            if (v == ve) {
                snprintf(err, errlen, "empty Content-Length");
                return -1;
            }
            for (const char *d = v; d < ve; d++) {
                if (*d < '0' || *d > '9' || n > RUN_MAX_BODY) {
                    snprintf(err, errlen, "invalid or too large Content-Length");
                    return -1;
                }
                n = n * 10 + (*d - '0');
            }
            if (n > RUN_MAX_BODY) {
                snprintf(err, errlen, "response body larger than %d bytes", RUN_MAX_BODY);
                return -1;
            }
            if (*clen >= 0 && *clen != n) {
                snprintf(err, errlen, "conflicting Content-Length fields");
                return -1;
            }
            *clen = n;
        } else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
            snprintf(err, errlen, "Transfer-Encoding responses are not supported here");
            return -1;
        }
        line = le + 2 <= end ? le + 2 : end;
    }
    return 0;
}

/* GET path from the proxy (origin-form, Connection: close) with a deadline
 * of RUN_TIMEOUT_MS. |auth| is a Proxy-Authorization value or NULL. The
 * body is read only for 200 responses. Returns HTTP_OK, HTTP_E_CONNECT
 * (could not connect) or HTTP_E_PROTO, with a reason in err. */
int run_http_get(const run_proxy *p, const char *path, const char *auth, http_resp *r, char *err,
                    size_t errlen)
{
    memset(r, 0, sizeof(*r));
    long long deadline = now_ms() + RUN_TIMEOUT_MS;
    int fd = proxy_connect(p, deadline, err, errlen);
    if (fd < 0)
        return HTTP_E_CONNECT;
    int rc = HTTP_E_PROTO;
    sbuf req = {.limit = 8192}, in = {.limit = RUN_MAX_HEAD + RUN_MAX_BODY};
    sb_puts(&req, "GET ");
    sb_puts(&req, path);
    sb_puts(&req, " HTTP/1.1\r\nHost: ");
    sb_puts(&req, p->hostport);
    sb_puts(&req, "\r\nUser-Agent: agentvault-run\r\nAccept: */*\r\nConnection: close\r\n");
    if (auth) {
        sb_puts(&req, "Proxy-Authorization: ");
        sb_puts(&req, auth);
        sb_puts(&req, "\r\n");
    }
    sb_puts(&req, "\r\n");
    if (req.failed) {
        snprintf(err, errlen, "request too large");
        goto out;
    }
    if (send_all(fd, req.p, req.len, deadline, err, errlen) < 0)
        goto out;
    /* The head. */
    size_t head_len = 0;
    for (;;) {
        char *e = in.len ? memmem(in.p, in.len, "\r\n\r\n", 4) : NULL;
        if (e) {
            head_len = (size_t)(e - in.p);
            break;
        }
        if (in.len > RUN_MAX_HEAD) {
            snprintf(err, errlen, "response head larger than %d bytes", RUN_MAX_HEAD);
            goto out;
        }
        ssize_t n = recv_some(fd, &in, deadline, err, errlen);
        if (n < 0)
            goto out;
        if (n == 0) {
            snprintf(err, errlen, in.len ? "connection closed in the response head"
                                         : "connection closed without a response");
            goto out;
        }
    }
    long long clen;
    if (parse_head(in.p, head_len, r, &clen, err, errlen) < 0)
        goto out;
    if (r->status != 200) {
        rc = HTTP_OK;
        goto out;
    }
    /* The body: Content-Length bytes, or up to EOF. */
    size_t body_off = head_len + 4;
    for (;;) {
        size_t have = in.len - body_off;
        if (clen >= 0 && have >= (size_t)clen)
            break;
        if (have > RUN_MAX_BODY) {
            snprintf(err, errlen, "response body larger than %d bytes", RUN_MAX_BODY);
            goto out;
        }
        ssize_t n = recv_some(fd, &in, deadline, err, errlen);
        if (n < 0)
            goto out;
        if (n == 0) {
            if (clen >= 0) {
                snprintf(err, errlen, "connection closed before the end of the body");
                goto out;
            }
            break;
        }
    }
    r->body_len = clen >= 0 ? (size_t)clen : in.len - body_off;
    if (r->body_len > RUN_MAX_BODY) {
        snprintf(err, errlen, "response body larger than %d bytes", RUN_MAX_BODY);
        goto out;
    }
    r->body = malloc(r->body_len + 1);
    if (!r->body) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    memcpy(r->body, in.p + body_off, r->body_len);
    r->body[r->body_len] = '\0';
    rc = HTTP_OK;
out:
    close(fd);
    sb_free(&req);
    sb_free(&in);
    return rc;
}
