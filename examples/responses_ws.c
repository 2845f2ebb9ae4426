/* responses_ws.c - one OpenAI Responses turn over a WebSocket, through
 * libagentvault: the program holds only a dummy key.
 *
 *   responses_ws [-c FILE] [-s STATE_DIR] [-m MODEL] [--resolve HOST:PORT:ADDR[:PORT]]...
 *                [--cacert PEM] [PROMPT]
 *
 * av_open_stream() gives a plain socket whose other end the library
 * serves as a gateway to https://api.openai.com: we write the WebSocket
 * upgrade in cleartext with "Authorization: Bearer <placeholder>", and the
 * library swaps in the real key, speaks verified TLS to the origin and
 * checks its 101 against our Sec-WebSocket-Key. wslay then does the
 * frames: one response.create out, the streamed text deltas printed to
 * stdout until response.completed (exit 0). Without -c the key comes from
 * $OPENAI_API_KEY. --resolve and --cacert go into the configuration (for
 * tests against a local server); STATE_DIR (default ./agentvault-state)
 * keeps the context's CA. Exit 1 on failure, 2 on a usage error. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <agentvault/agentvault.h>
#include <wslay/wslay.h>

#define UPSTREAM "https://api.openai.com"
#define PLACEHOLDER "agentvault-placeholder-openai"
#define TIMEOUT_S 60

typedef struct turn {
    int fd;
    uint8_t early[8192]; /* bytes that arrived right behind the 101 */
    size_t early_len, early_off;
    int completed, failed, printed;
} turn;

static int usage(const char *why, const char *arg)
{
    fprintf(stderr,
            "responses_ws: %s%s (usage: responses_ws [-c FILE] [-s STATE_DIR] [-m MODEL] "
            "[--resolve HOST:PORT:ADDR[:PORT]]... [--cacert PEM] [PROMPT])\n",
            why, arg);
    return 2;
}

static void on_log(void *user_data, int level, const char *message)
{
    (void)user_data;
    (void)level;
    fprintf(stderr, "responses_ws: agentvault: %s\n", message);
}

static void base64(const uint8_t *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        *out++ = t[v >> 18 & 63];
        *out++ = t[v >> 12 & 63];
        *out++ = i + 1 < n ? t[v >> 6 & 63] : '=';
        *out++ = i + 2 < n ? t[v & 63] : '=';
    }
    *out = '\0';
}

/* json_quote appends |s| as a JSON string to |out|, which has room for
 * 6 * strlen(s) + 3 bytes. */
static char *json_quote(char *out, const char *s)
{
    *out++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            out += sprintf(out, "\\%c", c);
        else if (c < 0x20)
            out += sprintf(out, "\\u%04x", c);
        else
            *out++ = (char)c;
    }
    *out++ = '"';
    *out = '\0';
    return out;
}

/* utf8 writes code point |cp| in UTF-8; returns the byte count. */
static size_t utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    size_t n = cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    for (size_t i = n - 1; i > 0; i--, cp >>= 6)
        out[i] = (char)(0x80 | (cp & 0x3F));
    out[0] = (char)((0xF00 >> n) | cp); /* 0xC0, 0xE0 or 0xF0 */
    return n;
}

static int hex4(const char *s, uint32_t *out)
{
    *out = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        *out = *out << 4 | (uint32_t)d;
    }
    return 0;
}

/* json_field finds the string member |key| of the top-level object in
 * [s, s+n) and writes its unescaped value to |out| (n + 1 bytes suffice:
 * unescaping never grows a string). Returns its length, or -1. */
static long json_field(const char *s, size_t n, const char *key, char *out)
{
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '{' || s[i] == '[' || s[i] == '}' || s[i] == ']') {
            depth += (s[i] == '{' || s[i] == '[') ? 1 : -1;
            continue;
        }
        if (s[i] != '"')
            continue;
        size_t j = i + 1;
        while (j < n && s[j] != '"')
            j += s[j] == '\\' ? 2 : 1;
        size_t k = j + 1;
        while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r' || s[k] == '\n'))
            k++;
        int is_key = depth == 1 && k < n && s[k] == ':';
        if (!is_key || j - i - 1 != strlen(key) || memcmp(s + i + 1, key, j - i - 1) != 0) {
            i = j;
            continue;
        }
        for (k++; k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r' || s[k] == '\n'); k++)
            ;
        if (k >= n || s[k] != '"')
            return -1;
        char *o = out;
        for (k++; k < n && s[k] != '"'; k++) {
            if (s[k] != '\\') {
                *o++ = s[k];
                continue;
            }
            if (++k >= n)
                return -1;
            uint32_t cp = 0, lo = 0;
            switch (s[k]) {
            case '"': case '\\': case '/': *o++ = s[k]; break;
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case 't': *o++ = '\t'; break;
            case 'u':
                if (k + 4 >= n || hex4(s + k + 1, &cp) < 0)
                    return -1;
                k += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && k + 6 < n && s[k + 1] == '\\' && s[k + 2] == 'u' &&
                    hex4(s + k + 3, &lo) == 0 && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    k += 6;
                }
                o += utf8(cp, o);
                break;
            default:
                return -1;
            }
        }
        *o = '\0';
        return (long)(o - out);
    }
    return -1;
}

/* ---- wslay callbacks: non-blocking I/O on the stream ---------------- */

static ssize_t ws_recv(wslay_event_context_ptr ws, uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    turn *t = ud;
    if (t->early_off < t->early_len) {
        size_t n = t->early_len - t->early_off < len ? t->early_len - t->early_off : len;
        memcpy(buf, t->early + t->early_off, n);
        t->early_off += n;
        return (ssize_t)n;
    }
    ssize_t r = recv(t->fd, buf, len, MSG_DONTWAIT);
    if (r > 0)
        return r;
    wslay_event_set_error(ws, r < 0 && (errno == EAGAIN || errno == EINTR) ? WSLAY_ERR_WOULDBLOCK
                                                                           : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static ssize_t ws_send(wslay_event_context_ptr ws, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    ssize_t w = send(((turn *)ud)->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w >= 0)
        return w;
    wslay_event_set_error(ws, errno == EAGAIN || errno == EINTR ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
}

static int ws_genmask(wslay_event_context_ptr ws, uint8_t *buf, size_t len, void *ud)
{
    (void)ws;
    (void)ud;
    return getrandom(buf, len, 0) == (ssize_t)len ? 0 : -1;
}

/* One event of the turn per text message. */
static void ws_on_msg(wslay_event_context_ptr ws, const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
    turn *t = ud;
    if (arg->opcode != WSLAY_TEXT_FRAME)
        return; /* wslay answers pings and closes itself */
    const char *m = (const char *)arg->msg;
    char *v = malloc(arg->msg_length + 1);
    if (!v || json_field(m, arg->msg_length, "type", v) < 0) {
        free(v);
        return;
    }
    if (strcmp(v, "response.output_text.delta") == 0) {
        long n = json_field(m, arg->msg_length, "delta", v);
        if (n > 0) {
            fwrite(v, 1, (size_t)n, stdout);
            fflush(stdout);
            t->printed = 1;
        }
    } else if (strcmp(v, "response.completed") == 0) {
        t->completed = 1;
        wslay_event_queue_close(ws, WSLAY_CODE_NORMAL_CLOSURE, NULL, 0);
    } else if (strcmp(v, "error") == 0 || strcmp(v, "response.failed") == 0 ||
               strcmp(v, "response.incomplete") == 0) {
        fprintf(stderr, "responses_ws: %s: %.*s\n", v, (int)(arg->msg_length > 500 ? 500 : arg->msg_length), m);
        t->failed = 1;
        wslay_event_queue_close(ws, WSLAY_CODE_NORMAL_CLOSURE, NULL, 0);
    }
    free(v);
}

/* handshake writes the upgrade and reads the 101; returns 0 or -1. */
static int handshake(turn *t)
{
    uint8_t raw[16];
    char key[32], req[512], head[sizeof(t->early)];
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
        return -1;
    base64(raw, sizeof(raw), key);
    int n = snprintf(req, sizeof(req),
                     "GET /v1/responses HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                     "Authorization: Bearer " PLACEHOLDER "\r\nOpenAI-Beta: responses_websockets=2026-02-06\r\n\r\n",
                     key);
    if (send(t->fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        return -1;
    size_t have = 0;
    char *end = NULL;
    struct timeval tv = {TIMEOUT_S, 0};
    setsockopt(t->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (!(end = memmem(head, have, "\r\n\r\n", 4))) {
        ssize_t r = have < sizeof(head) - 1 ? recv(t->fd, head + have, sizeof(head) - 1 - have, 0) : -1;
        if (r <= 0) {
            fprintf(stderr, "responses_ws: no WebSocket handshake answer%s\n", r < 0 ? " (timed out)" : "");
            return -1;
        }
        have += (size_t)r;
    }
    head[have] = '\0';
    if (strncmp(head, "HTTP/1.1 101 ", 13) != 0 || !strcasestr(head, "\r\nSec-WebSocket-Accept:")) {
        /* The library's own refusals say why in X-Agentvault-Error. */
        const char *why = strcasestr(head, "\r\nX-Agentvault-Error:");
        why = why ? why + 21 + strspn(why + 21, " \t") : "";
        fprintf(stderr, "responses_ws: upgrade refused: %.*s%s%.*s\n", (int)strcspn(head, "\r\n"), head,
                *why ? ": " : "", (int)strcspn(why, "\r\n"), why);
        return -1;
    }
    t->early_len = have - (size_t)(end + 4 - head);
    memcpy(t->early, end + 4, t->early_len);
    return 0;
}

/* run_turn sends one response.create and pumps frames until it is over. */
static int run_turn(turn *t, const char *model, const char *prompt)
{
    struct wslay_event_callbacks cb = {ws_recv, ws_send, ws_genmask, NULL, NULL, NULL, ws_on_msg};
    wslay_event_context_ptr ws = NULL;
    char *msg = malloc(strlen(prompt) * 6 + strlen(model) * 6 + 256);
    if (!msg || wslay_event_context_client_init(&ws, &cb, t) != 0) {
        free(msg);
        return -1;
    }
    char *p = msg + sprintf(msg, "{\"type\":\"response.create\",\"model\":");
    p = json_quote(p, model);
    p += sprintf(p, ",\"input\":[{\"type\":\"message\",\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":");
    p = json_quote(p, prompt);
    p += sprintf(p, "}]}],\"store\":false,\"stream\":true}");
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)msg, (size_t)(p - msg)};
    int rc = wslay_event_queue_msg(ws, &m);
    time_t deadline = time(NULL) + TIMEOUT_S;
    while (rc == 0 && (wslay_event_want_read(ws) || wslay_event_want_write(ws))) {
        struct pollfd pfd = {t->fd, (short)((wslay_event_want_read(ws) ? POLLIN : 0) |
                                            (wslay_event_want_write(ws) ? POLLOUT : 0)), 0};
        int left = (int)(deadline - time(NULL));
        if (t->early_off < t->early_len)
            pfd.revents = POLLIN; /* frames already buffered */
        else if (left <= 0 || poll(&pfd, 1, left * 1000) == 0) {
            fprintf(stderr, "responses_ws: timed out after %d s\n", TIMEOUT_S);
            t->failed = 1;
            rc = -1;
            break;
        }
        if ((pfd.revents & (POLLIN | POLLHUP | POLLERR)) && wslay_event_recv(ws) != 0)
            rc = -1;
        if (rc == 0 && (pfd.revents & POLLOUT) && wslay_event_send(ws) != 0)
            rc = -1;
    }
    if (!t->completed && !t->failed)
        fprintf(stderr, "responses_ws: the connection ended before response.completed\n");
    wslay_event_context_free(ws);
    free(msg);
    return t->completed ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *file = NULL, *state = NULL, *model = "gpt-5", *cacert = NULL;
    const char *prompt = NULL, *resolves[16];
    int nres = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], **opt = NULL;
        if (!strcmp(a, "-c"))
            opt = &file;
        else if (!strcmp(a, "-s"))
            opt = &state;
        else if (!strcmp(a, "-m"))
            opt = &model;
        else if (!strcmp(a, "--cacert"))
            opt = &cacert;
        else if (!strcmp(a, "--resolve") && nres < 16)
            opt = &resolves[nres++];
        else if (!strcmp(a, "--resolve"))
            return usage("too many ", a);
        else if (a[0] == '-' && a[1])
            return usage("unknown option ", a);
        else if (prompt)
            return usage("more than one prompt: ", a);
        else
            prompt = a;
        if (!opt)
            continue;
        if (++i >= argc || !argv[i][0])
            return usage("missing value after ", a);
        *opt = argv[i];
    }
    if (!prompt)
        prompt = "Say hello in five words.";
    av_config *cfg = NULL;
    if (av_config_new(&cfg) != AV_OK)
        return 1;
    const char *openai[] = {"host", "api.openai.com", "auth", "bearer", "secret", "env:OPENAI_API_KEY", NULL};
    int rc = file ? av_config_load_file(cfg, file) : av_config_add_section(cfg, "service", "openai", openai);
    for (int i = 0; rc == AV_OK && i < nres; i++)
        rc = av_config_add_resolve(cfg, resolves[i]);
    if (rc == AV_OK && cacert)
        rc = av_config_set_upstream_cafile(cfg, cacert);
    if (rc == AV_OK && (state || !av_config_state_dir(cfg)))
        rc = av_config_set_state_dir(cfg, state ? state : "agentvault-state");
    if (rc == AV_OK)
        rc = av_config_clear_listen(cfg); /* streams only: no proxy port */
    if (rc == AV_OK)
        rc = av_config_validate(cfg);
    char err[512] = "";
    av_ctx *ctx = NULL;
    if (rc != AV_OK)
        snprintf(err, sizeof(err), "%s", av_config_error(cfg));
    else if ((rc = av_ctx_new(&ctx, cfg, err, sizeof(err))) == AV_OK)
        av_ctx_set_log(ctx, on_log, NULL, AV_LOG_ERROR); /* refusals are reported by the upgrade */
    av_config_free(cfg);
    turn t = {.fd = -1};
    if (rc == AV_OK && (rc = av_ctx_start(ctx)) == AV_OK)
        rc = av_open_stream(ctx, UPSTREAM, &t.fd);
    if (rc != AV_OK) {
        fprintf(stderr, "responses_ws: %s\n", err[0] ? err : av_strerror(rc));
        av_ctx_free(ctx);
        return 1;
    }
    rc = handshake(&t) == 0 ? run_turn(&t, model, prompt) : -1;
    if (t.printed)
        putchar('\n');
    close(t.fd);
    av_ctx_stop(ctx, 1.0);
    av_ctx_free(ctx);
    return rc == 0 ? 0 : 1;
}
