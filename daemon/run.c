/* run.c - `agentvault run`: start a command wired to the vault.
 *
 *   agentvault run [--proxy URL] [--token TOKEN] [--no-proxy HOSTS] -- CMD [ARGS...]
 *
 * Fetches the proxy's root certificate (GET /ca.pem) and the placeholder
 * variables of its services (GET /agent-env) over plain HTTP/1.1, writes
 * ca.pem and bundle.pem into a private directory, sets the proxy and CA
 * variables common clients read, runs CMD as a child, forwards signals to
 * it, removes the directory and exits with the child's status.
 *
 * Only libc is used. The token is never printed.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "run.h"

#define RUN_DEFAULT_PROXY "http://127.0.0.1:14322"
#define RUN_USAGE "usage: agentvault run [--proxy URL] [--token TOKEN] [--no-proxy HOSTS] -- CMD [ARGS...]"
#define RUN_TIMEOUT_MS 5000                 /* per request: connect + exchange */
#define RUN_MAX_HEAD (16 * 1024)            /* response head */
#define RUN_MAX_BODY (1024 * 1024)          /* response body */
#define RUN_MAX_ENV_LINES 256               /* placeholders taken from /agent-env */
#define RUN_MAX_NAME 128
#define RUN_MAX_VALUE 4096
#define RUN_MAX_TOKEN 1024
#define RUN_MAX_HOST 253
#define RUN_MAX_NO_PROXY (64 * 1024)        /* NO_PROXY value we build */
#define RUN_SYSTEM_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define RUN_MAX_SYSTEM_BUNDLE (64 * 1024 * 1024)

/* Exit statuses of run itself (the child's status is passed through). */
enum { RUN_EXIT_FAIL = 1, RUN_EXIT_USAGE = 2, RUN_EXIT_NOEXEC = 126, RUN_EXIT_NOTFOUND = 127 };

/* Results of http_get. */
enum { HTTP_OK = 0, HTTP_E_CONNECT = -1, HTTP_E_PROTO = -2 };

/* The proxy address from --proxy / AGENTVAULT_PROXY / the default. */
typedef struct {
    char host[RUN_MAX_HOST + 1]; /* without brackets */
    char port[6];
    int ipv6;                    /* an IPv6 literal: bracketed in URLs */
    char hostport[RUN_MAX_HOST + 10]; /* HOST:PORT or [HOST]:PORT */
    char url[RUN_MAX_HOST + 20];      /* http://HOST:PORT, no credentials */
} run_proxy;

/* A growable string with a hard size limit; |failed| sticks on overflow. */
typedef struct {
    char *p;
    size_t len, cap, limit;
    int failed;
} sbuf;

/* A response of the tiny HTTP client. */
typedef struct {
    int status;
    char reason[80];
    char *body;
    size_t body_len;
} http_resp;

/* Variables whose value is the bundle (system roots + our root). grpcio
 * ignores SSL_CERT_FILE and reads only GRPC_DEFAULT_SSL_ROOTS_FILE_PATH. */
static const char *const bundle_vars[] = {
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
    "PIP_CERT", "AWS_CA_BUNDLE", "NPM_CONFIG_CAFILE", "DENO_CERT",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
};
/* Variables whose value is our root alone (added to the built-in roots). */
static const char *const root_vars[] = {"NODE_EXTRA_CA_CERTS", "CODEX_CA_CERTIFICATE"};
/* The proxy URL; aiohttp reads WSS_PROXY/WS_PROXY for ws(s):// URLs. */
static const char *const proxy_vars[] = {
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
    "WSS_PROXY", "wss_proxy", "WS_PROXY", "ws_proxy",
};
/* /agent-env may not set these: they change how programs load or find
 * code, or they are set by run itself. */
static const char *const denied_env[] = {
    "PATH", "HOME", "SHELL", "USER", "LOGNAME", "IFS", "ENV", "BASH_ENV", "PS4",
    "TMPDIR", "XDG_RUNTIME_DIR", "NODE_OPTIONS", "NODE_PATH", "NODE_USE_ENV_PROXY",
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PERL5OPT", "PERL5LIB", "RUBYOPT",
    "RUBYLIB", "GIT_SSH_COMMAND", "GIT_ASKPASS", "SSH_ASKPASS", "NO_PROXY",
};
static const int fwd_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* The child's pid while it runs (0 otherwise); read by the signal handler. */
static volatile sig_atomic_t g_child_pid;

/* ---- small helpers ------------------------------------------------------ */

/* Prints "agentvault: <msg>" on stderr. */
static void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void msg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("agentvault: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Prints a one-line usage error (with the usage) and returns exit status 2. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("agentvault: run: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (" RUN_USAGE ")\n", stderr);
    va_end(ap);
    return RUN_EXIT_USAGE;
}

/* Appends n bytes to b; marks b failed on overflow or allocation failure. */
static void sb_putn(sbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (n > b->limit - b->len) {
        b->failed = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Appends a C string to b. */
static void sb_puts(sbuf *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

/* Frees b's storage, wiping it first (it may hold the token). */
static void sb_free(sbuf *b)
{
    if (b->p)
        explicit_bzero(b->p, b->cap);
    free(b->p);
    memset(b, 0, sizeof(*b));
}

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

/* Appends the standard base64 encoding of s[0..n) to b. */
static void sb_base64(sbuf *b, const unsigned char *s, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)s[i + 1] << 8;
        if (i + 2 < n)
            v |= s[i + 2];
        char q[4] = {tab[(v >> 18) & 63], tab[(v >> 12) & 63],
                     i + 1 < n ? tab[(v >> 6) & 63] : '=', i + 2 < n ? tab[v & 63] : '='};
        sb_putn(b, q, 4);
    }
}

/* Appends s to b percent-encoding everything but RFC 3986 unreserved
 * characters (for the password part of a URL's userinfo). */
static void sb_pct(sbuf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            sb_putn(b, (const char *)&c, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            sb_putn(b, e, 3);
        }
    }
}

/* ---- the proxy URL ------------------------------------------------------ */

/* Parses http://HOST:PORT[/] into p. On error returns -1 with *why set to
 * a description (which never contains the URL: it could hold a token). */
static int parse_proxy_url(const char *url, run_proxy *p, const char **why)
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
static int http_get(const run_proxy *p, const char *path, const char *auth, http_resp *r, char *err,
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

/* ---- what the proxy gives us -------------------------------------------- */

/* 1 if body looks like a PEM certificate (text with BEGIN/END CERTIFICATE). */
static int is_pem_cert(const char *body, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)body[i];
        if (!(c == '\n' || c == '\r' || c == '\t' || (c >= 0x20 && c < 0x7f)))
            return 0;
    }
    const char *b = strstr(body, "-----BEGIN CERTIFICATE-----");
    return b && strstr(b, "-----END CERTIFICATE-----") != NULL;
}

/* 1 if name is [A-Z_][A-Z0-9_]* (bounded). */
static int valid_env_name(const char *s, size_t n)
{
    if (n == 0 || n > RUN_MAX_NAME || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

/* 1 if /agent-env may set this variable. */
static int env_name_allowed(const char *name)
{
    if (!strncmp(name, "LD_", 3) || !strncmp(name, "AGENTVAULT_", 11))
        return 0;
    for (size_t i = 0; i < NELEM(denied_env); i++)
        if (!strcmp(name, denied_env[i]))
            return 0;
    for (size_t i = 0; i < NELEM(bundle_vars); i++)
        if (!strcmp(name, bundle_vars[i]))
            return 0;
    for (size_t i = 0; i < NELEM(root_vars); i++)
        if (!strcmp(name, root_vars[i]))
            return 0;
    for (size_t i = 0; i < NELEM(proxy_vars); i++)
        if (!strcasecmp(name, proxy_vars[i]))
            return 0;
    return 1;
}

/* Applies the NAME=VALUE lines of an /agent-env body to the environment:
 * a variable the user already has (non-empty) is left alone. Invalid and
 * refused lines are skipped with a warning. Returns 0, or -1 if setenv
 * failed. */
static int apply_agent_env(char *body, size_t len)
{
    size_t taken = 0;
    unsigned lineno = 0;
    char *p = body, *end = body + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        char *next = nl ? nl + 1 : end;
        lineno++;
        if (le > p && le[-1] == '\r')
            le--;
        if (le == p || *p == '#') {
            p = next;
            continue;
        }
        char *eq = memchr(p, '=', (size_t)(le - p));
        size_t vlen = eq ? (size_t)(le - eq - 1) : 0;
        int ok = eq && valid_env_name(p, (size_t)(eq - p)) && vlen > 0 && vlen <= RUN_MAX_VALUE;
        for (size_t i = 0; ok && i < vlen; i++)
            if (eq[1 + i] <= 0x20 || eq[1 + i] >= 0x7f)
                ok = 0;
        if (!ok) {
            msg("warning: ignoring invalid line %u of /agent-env (expected NAME=VALUE, "
                "NAME in [A-Z_][A-Z0-9_]*, VALUE printable ASCII without spaces)", lineno);
            p = next;
            continue;
        }
        if (taken >= RUN_MAX_ENV_LINES) {
            msg("warning: /agent-env has more than %d variables; ignoring the rest", RUN_MAX_ENV_LINES);
            break;
        }
        taken++;
        *eq = '\0';
        *le = '\0';
        const char *name = p, *value = eq + 1;
        if (!env_name_allowed(name)) {
            msg("warning: /agent-env may not set %s; ignored", name);
        } else {
            const char *cur = getenv(name);
            if ((!cur || !*cur) && setenv(name, value, 1) < 0)
                return -1;
        }
        p = next;
    }
    return 0;
}

/* ---- NO_PROXY ------------------------------------------------------------ */

/* 1 if the comma-separated list in b already holds s[0..n) (ignoring case). */
static int list_has(const sbuf *b, const char *s, size_t n)
{
    const char *p = b->p, *end = b->p + b->len;
    while (p && p < end) {
        const char *c = memchr(p, ',', (size_t)(end - p));
        size_t len = c ? (size_t)(c - p) : (size_t)(end - p);
        if (len == n && strncasecmp(p, s, n) == 0)
            return 1;
        p = c ? c + 1 : end;
    }
    return 0;
}

/* Adds each entry of the comma-separated list s (trimmed; empty entries
 * skipped) to b unless already there. */
static void list_add(sbuf *b, const char *s)
{
    while (s && *s) {
        size_t n = strcspn(s, ",");
        const char *e = s, *ee = s + n;
        while (e < ee && (*e == ' ' || *e == '\t'))
            e++;
        while (ee > e && (ee[-1] == ' ' || ee[-1] == '\t'))
            ee--;
        if (ee > e && !list_has(b, e, (size_t)(ee - e))) {
            if (b->len)
                sb_putn(b, ",", 1);
            sb_putn(b, e, (size_t)(ee - e));
        }
        s += n;
        if (*s == ',')
            s++;
    }
}

/* ---- the private directory ----------------------------------------------- */

/* nftw callback: removes one entry (depth-first). */
static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    if (remove(path) < 0 && errno != ENOENT)
        msg("warning: cannot remove %s: %s", path, strerror(errno));
    return 0;
}

/* Removes the private directory and whatever is in it. */
static void remove_dir(const char *dir)
{
    if (dir[0])
        nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Creates agentvault-run-XXXXXX (0700) under $XDG_RUNTIME_DIR, $TMPDIR or
 * /tmp, the first that works. Returns 0 or -1 (reason printed). */
static int make_private_dir(char *out, size_t outlen)
{
    const char *cands[3] = {getenv("XDG_RUNTIME_DIR"), getenv("TMPDIR"), "/tmp"};
    int last = ENOENT;
    for (size_t i = 0; i < NELEM(cands); i++) {
        const char *base = cands[i];
        if (!base || base[0] != '/')
            continue;
        struct stat st;
        if (i == 0 && (stat(base, &st) < 0 || !S_ISDIR(st.st_mode) || access(base, W_OK | X_OK) < 0))
            continue;
        size_t bl = strlen(base);
        while (bl > 1 && base[bl - 1] == '/')
            bl--;
        if ((size_t)snprintf(out, outlen, "%.*s/agentvault-run-XXXXXX", (int)bl, base) >= outlen)
            continue;
        if (mkdtemp(out)) {
            if (chmod(out, 0700) < 0) {
                last = errno;
                rmdir(out);
                continue;
            }
            return 0;
        }
        last = errno;
    }
    out[0] = '\0';
    msg("cannot create a private directory (in $XDG_RUNTIME_DIR, $TMPDIR or /tmp): %s", strerror(last));
    return -1;
}

/* Writes all of buf to fd; 0 or -1 (errno set). */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Copies the system roots into fd, ending with a newline. A missing file
 * is not an error (the bundle is then our root alone). Returns 0 or -1. */
static int copy_system_roots(int fd)
{
    int in = open(RUN_SYSTEM_BUNDLE, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        if (errno != ENOENT)
            msg("warning: cannot read %s: %s; bundle.pem holds only the agentvault root",
                RUN_SYSTEM_BUNDLE, strerror(errno));
        return 0;
    }
    struct stat st;
    int rc = 0;
    if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > RUN_MAX_SYSTEM_BUNDLE) {
        msg("warning: %s is not a regular file of at most %d bytes; ignored", RUN_SYSTEM_BUNDLE,
            RUN_MAX_SYSTEM_BUNDLE);
        close(in);
        return 0;
    }
    char buf[65536];
    char last = '\n';
    long long total = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            msg("cannot read %s: %s", RUN_SYSTEM_BUNDLE, strerror(errno));
            rc = -1;
            break;
        }
        if (n == 0)
            break;
        total += n;
        if (total > RUN_MAX_SYSTEM_BUNDLE || write_all(fd, buf, (size_t)n) < 0) {
            msg("cannot copy %s", RUN_SYSTEM_BUNDLE);
            rc = -1;
            break;
        }
        last = buf[n - 1];
    }
    close(in);
    if (rc == 0 && last != '\n' && write_all(fd, "\n", 1) < 0)
        rc = -1;
    return rc;
}

/* Creates dir/name (0600, must not exist) holding the system roots if
 * |with_system| and then pem. Returns 0 or -1 (reason printed). */
static int write_pem_file(const char *dir, const char *name, const char *pem, size_t len,
                          int with_system, char *path, size_t pathlen)
{
    if ((size_t)snprintf(path, pathlen, "%s/%s", dir, name) >= pathlen) {
        msg("path too long: %s/%s", dir, name);
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        msg("cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = fchmod(fd, 0600);
    if (rc == 0 && with_system)
        rc = copy_system_roots(fd);
    if (rc == 0)
        rc = write_all(fd, pem, len);
    if (rc == 0 && (len == 0 || pem[len - 1] != '\n'))
        rc = write_all(fd, "\n", 1);
    if (close(fd) < 0)
        rc = -1;
    if (rc < 0)
        msg("cannot write %s", path);
    return rc;
}

/* ---- the child ------------------------------------------------------------ */

/* Relays a signal sent to run (kill(1), a supervisor, a test) to the child.
 * Signals the kernel generated for the terminal's process group
 * (si_code SI_KERNEL: ^C, ^\, hangup, resize) already reached the child,
 * which shares our process group, so they are not delivered twice. */
static void forward_signal(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    pid_t pid = (pid_t)g_child_pid;
    if (pid <= 0 || (info && info->si_code > 0))
        return;
    int saved = errno;
    kill(pid, sig);
    errno = saved;
}

/* Starts argv[0] (PATH search) with signals forwarded, waits for it and
 * returns run's exit status: the child's status, 128+signo if it was
 * killed, 127/126 if it could not be executed. The caller blocked the
 * forwarded signals; |oldmask| is the mask to restore (also the child's).
 * |chld| is the SIGCHLD action run started with, given back to the child. */
static int run_child(char **argv, const sigset_t *oldmask, const struct sigaction *chld)
{
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0) {
        msg("pipe: %s", strerror(errno));
        return RUN_EXIT_FAIL;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        msg("fork: %s", strerror(errno));
        close(ep[0]);
        close(ep[1]);
        return RUN_EXIT_FAIL;
    }
    if (pid == 0) {
        close(ep[0]);
        sigaction(SIGCHLD, chld, NULL);
        sigprocmask(SIG_SETMASK, oldmask, NULL);
        execvp(argv[0], argv);
        int e = errno;
        ssize_t w = write(ep[1], &e, sizeof(e));
        (void)w;
        _exit(RUN_EXIT_NOTFOUND);
    }
    close(ep[1]);
    g_child_pid = (sig_atomic_t)pid;
    /* Forward signals now; those that arrived while blocked are delivered
     * (and forwarded) on unblocking. Signals ignored when run started stay
     * ignored (nohup). */
    for (size_t i = 0; i < NELEM(fwd_signals); i++) {
        struct sigaction old, sa;
        if (sigaction(fwd_signals[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN &&
            !(old.sa_flags & SA_SIGINFO))
            continue;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = forward_signal;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(fwd_signals[i], &sa, NULL);
    }
    sigprocmask(SIG_SETMASK, oldmask, NULL);

    int exec_errno = 0;
    for (;;) {
        ssize_t n = read(ep[0], &exec_errno, sizeof(exec_errno));
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof(exec_errno))
            exec_errno = 0;
        break;
    }
    close(ep[0]);

    /* Wait without reaping, so that the pid cannot be reused while the
     * handler may still signal it; then stop forwarding and reap. */
    siginfo_t si;
    for (;;) {
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) == 0)
            break;
        if (errno != EINTR) {
            msg("waitid: %s", strerror(errno));
            break;
        }
    }
    sigset_t all, prev;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &prev);
    g_child_pid = 0;
    sigprocmask(SIG_SETMASK, &prev, NULL);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            msg("waitpid: %s", strerror(errno));
            return RUN_EXIT_FAIL;
        }
    }
    if (exec_errno) {
        if (exec_errno == ENOENT && !strchr(argv[0], '/')) {
            msg("%s: command not found", argv[0]);
            return RUN_EXIT_NOTFOUND;
        }
        msg("%s: %s", argv[0], strerror(exec_errno));
        return (exec_errno == ENOENT || exec_errno == ENOTDIR) ? RUN_EXIT_NOTFOUND : RUN_EXIT_NOEXEC;
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return RUN_EXIT_FAIL;
}

/* ---- the command ------------------------------------------------------------- */

/* Matches argv[*i] against --name VALUE / --name=VALUE; on a match stores
 * the value, advances *i and returns 1; returns -1 if the value is missing. */
static int take_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *val = argv[++*i];
    return 1;
}

/* Sets the variables of spec item 4 that do not depend on /agent-env.
 * Returns 0 or -1 (setenv failed or a value overflowed). */
static int set_run_env(const run_proxy *px, const char *token, const char *no_proxy_add,
                       const char *bundle, const char *root)
{
    int rc = 0;
    sbuf url = {.limit = 4 * RUN_MAX_TOKEN + 512};
    sb_puts(&url, "http://");
    if (token) {
        sb_puts(&url, "agent:");
        sb_pct(&url, token);
        sb_puts(&url, "@");
    }
    sb_puts(&url, px->hostport);
    sbuf np = {.limit = RUN_MAX_NO_PROXY};
    char *user_np = getenv("NO_PROXY") ? strdup(getenv("NO_PROXY")) : NULL;
    char *user_np_lc = getenv("no_proxy") ? strdup(getenv("no_proxy")) : NULL;
    list_add(&np, user_np);
    list_add(&np, user_np_lc);
    list_add(&np, "localhost,127.0.0.1,::1");
    list_add(&np, px->host);
    list_add(&np, no_proxy_add);
    if (url.failed || np.failed) {
        if (np.failed)
            msg("NO_PROXY would exceed %d bytes", RUN_MAX_NO_PROXY);
        else
            msg("the proxy URL is too long");
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < NELEM(proxy_vars) && rc == 0; i++)
        rc = setenv(proxy_vars[i], url.p, 1);
    if (rc == 0)
        rc = setenv("NO_PROXY", np.len ? np.p : "", 1);
    if (rc == 0)
        rc = setenv("no_proxy", np.len ? np.p : "", 1);
    for (size_t i = 0; i < NELEM(bundle_vars) && rc == 0; i++)
        rc = setenv(bundle_vars[i], bundle, 1);
    for (size_t i = 0; i < NELEM(root_vars) && rc == 0; i++)
        rc = setenv(root_vars[i], root, 1);
    if (rc == 0)
        rc = setenv("NODE_USE_ENV_PROXY", "1", 1);
    if (rc == 0)
        rc = setenv("AGENTVAULT_PROXY", px->url, 1);
    if (rc < 0)
        msg("cannot set the environment: %s", strerror(errno));
out:
    free(user_np);
    free(user_np_lc);
    sb_free(&url);
    sb_free(&np);
    return rc;
}

/* Entry point: see run.h and the comment at the top of this file. */
int cmd_run(int argc, char **argv)
{
    const char *proxy_arg = NULL, *token = NULL, *no_proxy_add = NULL;
    int cmd_at = -1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (!strcmp(a, "--")) {
            cmd_at = i + 1;
            break;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            puts(RUN_USAGE);
            return 0;
        }
        if ((r = take_opt(argc, argv, &i, "--proxy", &proxy_arg)) != 0 ||
            (r = take_opt(argc, argv, &i, "--token", &token)) != 0 ||
            (r = take_opt(argc, argv, &i, "--no-proxy", &no_proxy_add)) != 0) {
            if (r < 0)
                return usage_error("%s needs a value", a);
            continue;
        }
        if (a[0] == '-')
            return usage_error("unknown option '%s'", a);
        return usage_error("put '--' before the command");
    }
    if (cmd_at < 0)
        return usage_error("missing '--' and the command to run");
    if (cmd_at >= argc || argv[cmd_at][0] == '\0')
        return usage_error("missing the command after '--'");

    /* The proxy. */
    const char *proxy_src = "--proxy";
    int is_default = 0;
    if (!proxy_arg) {
        proxy_arg = getenv("AGENTVAULT_PROXY");
        proxy_src = "AGENTVAULT_PROXY";
        if (!proxy_arg || !*proxy_arg) {
            proxy_arg = RUN_DEFAULT_PROXY;
            is_default = 1;
        }
    }
    run_proxy px;
    const char *why = NULL;
    if (parse_proxy_url(proxy_arg, &px, &why) < 0)
        return usage_error("%s: %s", proxy_src, why);

    /* The token. */
    if (!token)
        token = getenv("AGENTVAULT_TOKEN");
    if (token && !*token)
        token = NULL;
    if (token) {
        size_t tl = strlen(token);
        if (tl > RUN_MAX_TOKEN)
            return usage_error("the token is longer than %d bytes", RUN_MAX_TOKEN);
        for (size_t i = 0; i < tl; i++)
            if (token[i] < 0x21 || token[i] > 0x7e)
                return usage_error("the token contains spaces, control or non-ASCII characters");
    }
    if (no_proxy_add) {
        for (const char *s = no_proxy_add; *s; s++)
            if (*s <= 0x20 || *s >= 0x7f)
                return usage_error("--no-proxy takes a comma-separated list of hosts without spaces");
    }

    sbuf auth = {.limit = 8 * RUN_MAX_TOKEN};
    if (token) {
        sbuf cred = {.limit = RUN_MAX_TOKEN + 16};
        sb_puts(&cred, "agent:");
        sb_puts(&cred, token);
        sb_puts(&auth, "Basic ");
        sb_base64(&auth, (const unsigned char *)cred.p, cred.len);
        sb_free(&cred);
    }

    int status = RUN_EXIT_FAIL;
    char err[256];
    http_resp ca = {0}, env = {0};
    char dir[4096] = "";
    int blocked = 0;
    sigset_t fwd, oldmask;
    struct sigaction old_chld;

    /* The root certificate. */
    int hr = http_get(&px, "/ca.pem", token ? auth.p : NULL, &ca, err, sizeof(err));
    if (hr == HTTP_E_CONNECT) {
        msg("cannot reach the proxy at %s: %s; start one with: agentvault serve%s", px.hostport, err,
            is_default ? " (this is the default proxy: no --proxy or AGENTVAULT_PROXY was given)" : "");
        goto out;
    }
    if (hr != HTTP_OK || ca.status != 200 || !is_pem_cert(ca.body, ca.body_len)) {
        if (hr == HTTP_OK && ca.status != 200)
            snprintf(err, sizeof(err), "the proxy answered %d%s%s%s", ca.status, ca.reason[0] ? " " : "",
                     ca.reason, ca.status == 407 ? " (check --token or AGENTVAULT_TOKEN)" : "");
        else if (hr == HTTP_OK)
            snprintf(err, sizeof(err), "the response is not a PEM certificate");
        msg("CA fetch from %s/ca.pem failed: %s", px.url, err);
        goto out;
    }

    /* The placeholders. */
    hr = http_get(&px, "/agent-env", token ? auth.p : NULL, &env, err, sizeof(err));
    if (hr == HTTP_E_CONNECT) {
        msg("cannot reach the proxy at %s: %s; start one with: agentvault serve", px.hostport, err);
        goto out;
    }
    if (hr != HTTP_OK)
        msg("warning: %s/agent-env failed: %s; starting without placeholder keys", px.url, err);
    else if (env.status != 200 && env.status != 404)
        msg("warning: %s/agent-env answered %d; starting without placeholder keys", px.url, env.status);

    /* The private directory, with the forwarded signals held until the
     * child runs (so that none leaves the directory behind). */
    sigemptyset(&fwd);
    for (size_t i = 0; i < NELEM(fwd_signals); i++)
        sigaddset(&fwd, fwd_signals[i]);
    sigprocmask(SIG_BLOCK, &fwd, &oldmask);
    blocked = 1;
    /* waitpid needs SIGCHLD not ignored (an inherited SIG_IGN reaps
     * children automatically); the child gets the original action back. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGCHLD, &dfl, &old_chld);
    if (make_private_dir(dir, sizeof(dir)) < 0)
        goto out;
    char root_path[4200], bundle_path[4200];
    if (write_pem_file(dir, "ca.pem", ca.body, ca.body_len, 0, root_path, sizeof(root_path)) < 0 ||
        write_pem_file(dir, "bundle.pem", ca.body, ca.body_len, 1, bundle_path, sizeof(bundle_path)) < 0)
        goto out;

    if (set_run_env(&px, token, no_proxy_add, bundle_path, root_path) < 0)
        goto out;
    if (env.status == 200 && env.body && apply_agent_env(env.body, env.body_len) < 0) {
        msg("cannot set the environment: %s", strerror(errno));
        goto out;
    }
    sb_free(&auth);

    status = run_child(argv + cmd_at, &oldmask, &old_chld);
out:
    sb_free(&auth);
    free(ca.body);
    free(env.body);
    remove_dir(dir);
    if (blocked)
        sigprocmask(SIG_SETMASK, &oldmask, NULL);
    return status;
}
