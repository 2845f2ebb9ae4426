/* av_config_ini.c - the configuration file reader: a strict INI reader
 * with the key tables of [proxy], [service], [token] and [gateway].
 *
 * The reader is written by hand on purpose (no libinih): lines of any
 * length, exact line numbers in every message, and ';' / '#' start a
 * comment only at the beginning of a line, so values may contain them.
 * Loading is atomic: the text is parsed into a copy of the configuration,
 * which replaces the original only when the whole text is valid.
 */
#include "av_config_int.h"
#include "av_limits.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <ctype.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "av_buf.h"
#include "av_jwt.h"
#include "av_mem.h"
#include "av_parent.h"
#include "av_resolver.h"
#include "av_url.h"

#define CONFIG_MAX_BYTES (1024 * 1024)
#define NAME_MAX_LEN 64

enum { SEC_NONE, SEC_PROXY, SEC_SERVICE, SEC_TOKEN, SEC_GATEWAY };

/* Bits for single-valued keys already seen in the current section. Bits 0-31
 * are the enum below (already crowded: several sections reuse each other's
 * bits); new keys take bits from 32 up as uint64_t constants (an enum
 * cannot portably hold them):
 *   32-35 computed credentials (gcp:, github_app:)
 *   36-39 decision hooks
 *   40-41 worker threads
 *   42-47 replicas and deployment */
enum {
    K_STATE_DIR = 1u << 0, K_UNMATCHED = 1u << 1, K_CACERT = 1u << 2,
    K_CONNECT_TO = 1u << 3, K_IDLE_TO = 1u << 4, K_HEADER_TO = 1u << 5,
    K_HOST = 1u << 8, K_PORT = 1u << 9, K_SCHEME = 1u << 10, K_PATH = 1u << 11,
    K_METHODS = 1u << 12, K_AUTH = 1u << 13, K_SECRET = 1u << 14,
    K_WEBSOCKET = 1u << 15, K_PLACEHOLDER = 1u << 16, K_PLACEHOLDER_IN = 1u << 17,
    K_AGENT_ENV = 1u << 18, K_WS_IDLE_TO = 1u << 6, K_SECRET_TTL = 1u << 7,
    K_CMD_TO = 1u << 19, K_AUDIT = 1u << 20, K_VAULT = 1u << 21, K_AUTH_ALT = 1u << 22,
    K_WS_SCRUB = 1u << 24,
    /* [service] keys of auth = aws-sigv4: [proxy]-only bits (seen bits are per
     * section); 23 and 29 are [service] upstream_proxy(_auth) */
    K_AWS_AKID = 1u << 1, K_AWS_TOKEN = 1u << 2, K_AWS_BODY_MAX = 1u << 0,
    /* [service] keys of secret = oauth2:...: more [proxy]-only bits (3..7,
     * 19, 20: connect/idle/header/websocket-idle timeouts, secret_ttl,
     * command_timeout, audit) */
    K_TOKEN_URL = 1u << 3, K_CLIENT_ID = 1u << 4, K_CLIENT_SECRET = 1u << 5, K_OAUTH_SCOPE = 1u << 6,
    K_OAUTH_AUDIENCE = 1u << 7, K_CLIENT_AUTH = 1u << 19,
    /* and oauth2:refresh_token's refresh_token: bit 20 ([proxy] audit) */
    K_REFRESH_TOKEN = 1u << 20
};

typedef struct parser {
    av_config *cfg;
    const char *origin;
    int line;
    int section;       /* SEC_* */
    int section_line;
    uint64_t seen;     /* K_* bits of the current section */
    int saw_proxy;
    int nomem;         /* the error was an allocation failure */
} parser;

/* ---- small helpers ----------------------------------------------------- */

/* is_ws is a space or a tab. */
static int is_ws(char c)
{
    return c == ' ' || c == '\t';
}

/* trim narrows [*s, *s + *n) to exclude surrounding spaces and tabs. */
static void trim(const char **s, size_t *n)
{
    while (*n > 0 && is_ws(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && is_ws((*s)[*n - 1]))
        (*n)--;
}

/* is_tchar: RFC 9110 token characters. */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return strchr("!#$%&'*+-.^_`|~", c) != NULL && c != '\0';
}

/* is_unreserved: RFC 3986 unreserved characters. */
static int is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

/* perr records "<origin>:<line>: <reason>" for the parser's current line
 * (or |line| when positive) and returns AV_ERR_CONFIG. */
static int perr_at(parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int perr_at(parser *p, int line, const char *fmt, ...)
{
    char reason[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    av__config_set_error(p->cfg, "%.80s:%d: %s", p->origin, line > 0 ? line : p->line, reason);
    return AV_ERR_CONFIG;
}

#define perr(p, ...) perr_at((p), 0, __VA_ARGS__)

/* word_pair reads a value that is one of two words: *second is 0 for |w0|,
 * 1 for |w1|; anything else is the error "KEY must be "w0" or "w1"". */
static int word_pair(parser *p, const char *v, size_t vl, const char *key, const char *w0, const char *w1,
                     int *second)
{
    if (word_eq(v, vl, w0))
        *second = 0;
    else if (word_eq(v, vl, w1))
        *second = 1;
    else
        return perr(p, "%s must be \"%s\" or \"%s\"", key, w0, w1);
    return AV_OK;
}

/* unmatched: "passthrough" or "deny", as an av_unmatched value. */
static int parse_unmatched(parser *p, const char *v, size_t vl, int *out)
{
    int deny;
    int rc = word_pair(p, v, vl, "unmatched", "passthrough", "deny", &deny);
    if (rc == AV_OK)
        *out = deny ? AV_UNMATCHED_DENY : AV_UNMATCHED_PASSTHROUGH;
    return rc;
}

/* oom records an allocation failure at the current line. */
static int oom(parser *p)
{
    perr(p, "out of memory");
    p->nomem = 1;
    return AV_ERR_NOMEM;
}

/* dup_range copies a byte range into a new NUL-terminated string. */
static char *dup_range(const char *s, size_t n)
{
    return av__strndup(s, n);
}

/* ---- the INI reader ------------------------------------------------------ */

/* split_list calls |fn| for every comma-separated, trimmed item of a value;
 * empty items are errors. */
typedef int (*item_fn)(parser *p, const char *s, size_t n);
static int split_list(parser *p, const char *key, const char *v, size_t n, item_fn fn)
{
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && v[i] != ',')
            continue;
        const char *item = v + start;
        size_t il = i - start;
        trim(&item, &il);
        if (il == 0)
            return perr(p, "empty item in %s list", key);
        int rc = fn(p, item, il);
        if (rc != AV_OK)
            return rc;
        start = i + 1;
    }
    return AV_OK;
}

/* add_listen_item normalizes and appends one listen address. */
static int add_listen_item(parser *p, const char *s, size_t n)
{
    char norm[AV_HOST_MAX + 16];
    av_config *c = p->cfg;
    if (av__config_normalize_listen(s, n, norm, sizeof(norm)) != AV_OK)
        return perr(p, "invalid listen address \"%.*s\" (expected IP:PORT, [IPv6]:PORT or localhost:PORT)",
                    (int)(n > 100 ? 100 : n), s);
    for (size_t i = 0; i < c->nlisten; i++)
        if (strcmp(c->listen[i], norm) == 0)
            return perr(p, "duplicate listen address %s", norm);
    if (av__config_grow((void **)&c->listen, c->nlisten, sizeof(char *)) != AV_OK ||
        !(c->listen[c->nlisten] = av__strdup(norm)))
        return oom(p);
    c->nlisten++;
    return AV_OK;
}

/* add_passthrough_item validates and appends one passthrough host. */
static int add_passthrough_item(parser *p, const char *s, size_t n)
{
    av_config *c = p->cfg;
    char *h = NULL;
    int wildcard, is_ip;
    const char *why = "";
    int rc = av__config_parse_host_pattern(s, n, &h, &wildcard, &is_ip, &why);
    if (rc == AV_ERR_NOMEM)
        return oom(p);
    if (rc != AV_OK)
        return perr(p, "passthrough: %s: \"%.*s\"", why, (int)(n > 100 ? 100 : n), s);
    if (av__config_grow((void **)&c->passthrough, c->npassthrough, sizeof(char *)) != AV_OK) {
        av__free(h);
        return oom(p);
    }
    c->passthrough[c->npassthrough++] = h;
    return AV_OK;
}

/* add_cidr_item parses and appends one allow_private range. */
static int add_cidr_item(parser *p, const char *s, size_t n)
{
    av_config *c = p->cfg;
    char tmp[64];
    av_cidr cidr;
    if (n >= sizeof(tmp))
        return perr(p, "invalid CIDR range \"%.*s\"", 60, s);
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (av__parse_cidr(tmp, &cidr) != AV_OK)
        return perr(p, "invalid CIDR range \"%s\"", tmp);
    if (av__config_grow((void **)&c->allow_private, c->nallow_private, sizeof(av_cidr)) != AV_OK)
        return oom(p);
    c->allow_private[c->nallow_private++] = cidr;
    return AV_OK;
}

/* set_string stores a single-valued string key. */
static int set_string(parser *p, char **dst, const char *v, size_t n)
{
    char *d = dup_range(v, n);
    if (!d)
        return oom(p);
    av__free(*dst);
    *dst = d;
    return AV_OK;
}

/* A section's keys and their "seen" bits; |multi| keys may repeat (their
 * values add up) and are not marked seen. */
typedef struct key_def {
    const char *name;
    uint64_t bit;
    int multi;
} key_def;

/* key_bit finds |k| in |keys|, refuses unknown and repeated keys (|sec|
 * and |expected| name them in the error) and marks it seen. Returns the
 * bit, or 0 after an error was reported. */
static uint64_t key_bit(parser *p, const key_def *keys, size_t n, const char *sec, const char *expected,
                        const char *k, size_t kl)
{
    uint64_t bit = 0;
    int multi = 0;
    for (size_t i = 0; i < n && !bit; i++)
        if (word_eq(k, kl, keys[i].name)) {
            bit = keys[i].bit;
            multi = keys[i].multi;
        }
    if (!bit) {
        perr(p, "unknown key \"%.*s\" in [%s]%s%s%s", (int)(kl > 64 ? 64 : kl), k, sec,
             expected ? " (expected " : "", expected ? expected : "", expected ? ")" : "");
        return 0;
    }
    if (multi)
        return bit;
    if (p->seen & bit) {
        perr(p, "duplicate key \"%.*s\"", (int)kl, k);
        return 0;
    }
    p->seen |= bit;
    return bit;
}

/* set_secret_ref stores a secret reference (|key| names it in the error). */
static int set_secret_ref(parser *p, const char *key, char **out, const char *v, size_t vl)
{
    char *ref = dup_range(v, vl);
    if (!ref)
        return oom(p);
    if (!av__secret_ref_valid(ref)) {
        av__free(ref);
        return perr(p, "%s must be env:NAME, file:/absolute/path, vault:NAME, command:/absolute/path [args] or "
                       "callback:NAME", key);
    }
    *out = ref;
    return AV_OK;
}

/* [proxy] max_connections and the list keys: their own bits, clear of the
 * shared enum above. */
enum {
    K_MAX_CONNS = 1u << 30, K_LISTEN = 1u << 25, K_PASSTHROUGH = 1u << 26, K_ALLOW_PRIVATE = 1u << 27,
    K_RESOLVE = 1u << 28
};
/* Decision hooks (issue 18): bits 36-39. */
#define K_DECIDE (1ull << 36)
#define K_DECIDE_TIMEOUT (1ull << 37)
#define K_DECIDE_NOTIFY (1ull << 38)
#define K_DECIDE_BODY (1ull << 39)
#define DECIDE_BODY_MAX 65536

/* set_decide_cmd stores "command:/absolute/path [args]" for |key|. */
static int set_decide_cmd(parser *p, const char *key, char **out, const char *v, size_t vl)
{
    char *ref = dup_range(v, vl);
    if (!ref)
        return oom(p);
    if (strncmp(ref, "command:", 8) != 0 || !av__secret_ref_valid(ref)) {
        av__free(ref);
        return perr(p, "%s must be %scommand:/absolute/path [args] (arguments split on blanks, quotes group)", key,
                    strcmp(key, "decide") == 0 ? "ask or " : "");
    }
    *out = ref;
    return AV_OK;
}

/* [proxy] workers. */
#define K_WORKERS (1ull << 40)
/* [proxy] tls_resumption: a bit only [service] uses otherwise (seen bits
 * are per section). */
enum { K_TLS_RESUME = K_METHODS };
#define MAX_CONNECTIONS_MAX 1048576

/* Parent proxy keys: [proxy] reuses bits only [service] has; [service]'s
 * own two take bits no other key uses. */
enum {
    K_UP_PROXY = K_HOST, K_UP_AUTH = K_PORT, K_UP_NO_PROXY = K_SCHEME,
    K_SVC_UP_PROXY = 1u << 29, K_SVC_UP_AUTH = 1u << 23
};

/* set_upstream_proxy checks an upstream_proxy value: a parent URL,
 * "direct", or (in [proxy] only, |allow_env|) "env". */
static int set_upstream_proxy(parser *p, char **dst, const char *v, size_t vl, int allow_env)
{
    if (word_eq(v, vl, "direct"))
        return set_string(p, dst, "direct", 6);
    if (word_eq(v, vl, "env")) {
        if (!allow_env)
            return perr(p, "upstream_proxy = env is a [proxy] setting; a service takes a URL or \"direct\"");
        return set_string(p, dst, "env", 3);
    }
    av_parent_url u;
    const char *why = "";
    if (av__parent_url_parse(v, vl, 0, &u, &why) != AV_OK)
        return perr(p, "upstream_proxy: %s (expected http://HOST:PORT, https://HOST:PORT, socks5://HOST:PORT, "
                       "socks5h://HOST:PORT, %sor direct)",
                    why, allow_env ? "env " : "");
    return set_string(p, dst, v, vl);
}

/* Replicas and deployment: bits 42-47 (see the K_* comment at the top). */
#define K_CA_CERT (1ull << 42)
#define K_CA_KEY (1ull << 43)
#define K_TOKENS_FILE (1ull << 44)
#define K_DRAIN_DELAY (1ull << 45)
#define K_DRAIN_TIMEOUT (1ull << 46)
#define DRAIN_SECONDS_MAX 3600

/* set_drain stores a drain duration of at most 3600 seconds, 0 allowed
 * unless |positive|. */
static int set_drain(parser *p, const char *name, int positive, const char *v, size_t vl, double *out)
{
    double secs = 0;
    int zero = vl == 1 && v[0] == '0';
    if ((!zero && av__config_parse_seconds(v, vl, &secs) != AV_OK) || (zero && positive) ||
        secs > DRAIN_SECONDS_MAX)
        return perr(p, "%s must be a number of seconds in %s0, %d]", name, positive ? "(" : "[",
                    DRAIN_SECONDS_MAX);
    *out = secs;
    return AV_OK;
}

static const key_def proxy_keys[] = {
    {"listen", K_LISTEN, 1}, {"passthrough", K_PASSTHROUGH, 1}, {"allow_private", K_ALLOW_PRIVATE, 1},
    {"resolve", K_RESOLVE, 1},
    {"state_dir", K_STATE_DIR, 0}, {"unmatched", K_UNMATCHED, 0}, {"upstream_cacert", K_CACERT, 0},
    {"connect_timeout", K_CONNECT_TO, 0}, {"idle_timeout", K_IDLE_TO, 0}, {"header_timeout", K_HEADER_TO, 0},
    {"websocket_idle_timeout", K_WS_IDLE_TO, 0}, {"secret_ttl", K_SECRET_TTL, 0},
    {"command_timeout", K_CMD_TO, 0}, {"audit", K_AUDIT, 0}, {"vault", K_VAULT, 0},
    {"max_connections", K_MAX_CONNS, 0},
    {"upstream_proxy", K_UP_PROXY, 0}, {"upstream_proxy_auth", K_UP_AUTH, 0},
    {"upstream_no_proxy", K_UP_NO_PROXY, 0},
    {"tls_resumption", K_TLS_RESUME, 0},
    {"ca_cert", K_CA_CERT, 0}, {"ca_key", K_CA_KEY, 0}, {"tokens_file", K_TOKENS_FILE, 0},
    {"drain_delay", K_DRAIN_DELAY, 0}, {"drain_timeout", K_DRAIN_TIMEOUT, 0},
    {"decide_notify", K_DECIDE_NOTIFY, 0},
    {"workers", K_WORKERS, 0},
};

/* set_timeout stores a number of seconds in (0, 86400]; the key is named
 * as written. */
static int set_timeout(parser *p, const char *k, size_t kl, const char *v, size_t vl, double *out)
{
    double secs;
    if (av__config_parse_seconds(v, vl, &secs) != AV_OK)
        return perr(p, "%.*s must be a number of seconds in (0, 86400]", (int)kl, k);
    *out = secs;
    return AV_OK;
}

/* proxy_key handles one key of the [proxy] section. */
static int proxy_key(parser *p, const char *k, size_t kl, const char *v, size_t vl)
{
    av_config *c = p->cfg;
    uint64_t bit = key_bit(p, proxy_keys, sizeof(proxy_keys) / sizeof(proxy_keys[0]), "proxy", NULL, k, kl);
    if (!bit)
        return AV_ERR_CONFIG;

    switch (bit) {
    case K_LISTEN:
        return split_list(p, "listen", v, vl, add_listen_item);
    case K_PASSTHROUGH:
        return split_list(p, "passthrough", v, vl, add_passthrough_item);
    case K_ALLOW_PRIVATE:
        return split_list(p, "allow_private", v, vl, add_cidr_item);
    case K_RESOLVE: {
        av_resolve_cfg r;
        memset(&r, 0, sizeof(r));
        int rc = av__config_parse_resolve(v, vl, &r);
        if (rc == AV_ERR_NOMEM)
            return oom(p);
        if (rc != AV_OK)
            return perr(p, "invalid resolve entry \"%.*s\" (expected HOST:PORT:ADDR)",
                        (int)(vl > 100 ? 100 : vl), v);
        if (av__config_grow((void **)&c->resolve, c->nresolve, sizeof(av_resolve_cfg)) != AV_OK) {
            av__free(r.host);
            av__free(r.addr);
            return oom(p);
        }
        c->resolve[c->nresolve++] = r;
        return AV_OK;
    }
    case K_STATE_DIR:
        return set_string(p, &c->state_dir, v, vl);
    case K_CACERT:
        return set_string(p, &c->upstream_cafile, v, vl);
    case K_VAULT:
        if (!(vl > 1 && v[0] == '/'))
            return perr(p, "vault must be an absolute file path");
        return set_string(p, &c->vault_path, v, vl);
    case K_AUDIT:
        if (!(word_eq(v, vl, "stdout") || (vl > 1 && v[0] == '/')))
            return perr(p, "audit must be an absolute file path or \"stdout\"");
        return set_string(p, &c->audit, v, vl);
    case K_UNMATCHED:
        return parse_unmatched(p, v, vl, &c->unmatched);
    case K_UP_PROXY:
        return set_upstream_proxy(p, &c->upstream_proxy, v, vl, 1);
    case K_UP_AUTH:
        return set_secret_ref(p, "upstream_proxy_auth", &c->upstream_proxy_auth, v, vl);
    case K_UP_NO_PROXY: {
        av_noproxy np;
        char why[200];
        int rc = av__noproxy_parse(v, vl, &np, why, sizeof(why));
        av__noproxy_free(&np);
        if (rc == AV_ERR_NOMEM)
            return oom(p);
        if (rc != AV_OK)
            return perr(p, "upstream_no_proxy: %s", why);
        return set_string(p, &c->upstream_no_proxy, v, vl);
    }
    case K_TLS_RESUME:
        return word_pair(p, v, vl, "tls_resumption", "on", "off", &c->tls_resumption_off);
    case K_CA_CERT:
        return set_secret_ref(p, "ca_cert", &c->ca_cert_ref, v, vl);
    case K_CA_KEY:
        return set_secret_ref(p, "ca_key", &c->ca_key_ref, v, vl);
    case K_TOKENS_FILE:
        if (!(vl > 1 && v[0] == '/'))
            return perr(p, "tokens_file must be an absolute file path (a token store made by agentvault token "
                           "create)");
        return set_string(p, &c->tokens_file, v, vl);
    case K_DRAIN_DELAY:
        return set_drain(p, "drain_delay", 0, v, vl, &c->drain_delay);
    case K_DRAIN_TIMEOUT:
        return set_drain(p, "drain_timeout", 1, v, vl, &c->drain_timeout);
    case K_DECIDE_NOTIFY:
        return set_decide_cmd(p, "decide_notify", &c->decide_notify, v, vl);
    case K_WORKERS: {
        long n = 0;
        if (word_eq(v, vl, "auto")) {
            c->workers = AV_WORKERS_AUTO;
            return AV_OK;
        }
        if (parse_uint(v, vl, 2, &n) != AV_OK || n < 1 || n > AV_WORKERS_MAX)
            return perr(p, "workers must be a whole number in [1, %d] or auto (one event loop per CPU)",
                        AV_WORKERS_MAX);
        c->workers = (int)n;
        return AV_OK;
    }
    case K_MAX_CONNS:
        if (parse_uint(v, vl, 7, &c->max_connections) != AV_OK || c->max_connections < 1 ||
            c->max_connections > MAX_CONNECTIONS_MAX)
            return perr(p, "max_connections must be a whole number in [1, %d] (leave it out for a default "
                           "derived from the open-files limit)", MAX_CONNECTIONS_MAX);
        return AV_OK;
    case K_SECRET_TTL: {
        double secs = 0;
        if (!(vl == 1 && v[0] == '0') && av__config_parse_seconds(v, vl, &secs) != AV_OK)
            return perr(p, "secret_ttl must be a number of seconds in [0, 86400]");
        c->secret_ttl = secs;
        return AV_OK;
    }
    case K_CONNECT_TO:
        return set_timeout(p, k, kl, v, vl, &c->connect_timeout);
    case K_IDLE_TO:
        return set_timeout(p, k, kl, v, vl, &c->idle_timeout);
    case K_HEADER_TO:
        return set_timeout(p, k, kl, v, vl, &c->header_timeout);
    case K_WS_IDLE_TO:
        return set_timeout(p, k, kl, v, vl, &c->ws_idle_timeout);
    default: /* K_CMD_TO */
        return set_timeout(p, k, kl, v, vl, &c->command_timeout);
    }
}

/* header_name_forbidden lists header names that must never be injected:
 * hop-by-hop, framing and proxy headers. */
static int header_name_forbidden(const char *n, size_t l)
{
    static const char *const names[] = {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive",
        "te", "trailer", "upgrade", "expect", "http2-settings", "content-encoding",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (word_eq(n, l, names[i]))
            return 1;
    return l >= 6 && word_eq(n, 6, "proxy-");
}

/* parse_quoted reads a double-quoted string with \" and \\ escapes at
 * s[0]; *used receives the bytes consumed and the unescaped text is
 * returned in a new string (NULL + *err on failure). */
static char *parse_quoted(const char *s, size_t n, size_t *used, int *err)
{
    *err = AV_ERR_INVALID;
    if (n == 0 || s[0] != '"')
        return NULL;
    char *d = av__malloc(n);
    if (!d) {
        *err = AV_ERR_NOMEM;
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 1; i < n; i++) {
        if (s[i] == '"') {
            d[o] = '\0';
            *used = i + 1;
            return d;
        }
        if (s[i] == '\\') {
            if (i + 1 >= n || (s[i + 1] != '"' && s[i + 1] != '\\'))
                break;
            i++;
        }
        d[o++] = s[i];
    }
    av__free(d);
    return NULL;
}

/* count_secret counts "{secret}" occurrences in a template. */
static int count_secret(const char *t)
{
    int count = 0;
    for (const char *q = strstr(t, "{secret}"); q; q = strstr(q + 8, "{secret}"))
        count++;
    return count;
}

/* auth_header_name is the header an auth form sends (NULL for query). */
static const char *auth_header_name(int kind, const char *name)
{
    switch (kind) {
    case AV_AUTH_BEARER:
    case AV_AUTH_BASIC:
        return "Authorization";
    case AV_AUTH_HEADER:
        return name;
    default:
        return NULL;
    }
}

/* aws_scope_name: a region or signing name as a SigV4 scope names it. */
static int aws_scope_name(const char *s, size_t n)
{
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

/* parse_auth_aws reads the arguments of "auth = aws-sigv4 [REGION
 * [SERVICE]]" ("*" for any region). */
static int parse_auth_aws(parser *p, av_service *svc, const char *v, size_t n)
{
    size_t rl = 0;
    while (rl < n && !is_ws(v[rl]))
        rl++;
    const char *sv = v + rl;
    size_t sl = n - rl;
    trim(&sv, &sl);
    for (size_t i = 0; i < sl; i++)
        if (is_ws(sv[i]))
            return perr(p, "auth aws-sigv4 takes at most a region and a service (auth = aws-sigv4 [REGION [SERVICE]])");
    if (rl && !(rl == 1 && v[0] == '*') && !aws_scope_name(v, rl))
        return perr(p, "auth aws-sigv4: region \"%.*s\" must be lower-case letters, digits and '-' (or *)",
                    (int)(rl > 64 ? 64 : rl), v);
    if (sl && !aws_scope_name(sv, sl))
        return perr(p, "auth aws-sigv4: service \"%.*s\" must be a signing name: lower-case letters, digits, '-'",
                    (int)(sl > 64 ? 64 : sl), sv);
    if (rl && !(rl == 1 && v[0] == '*') && set_string(p, &svc->aws_region, v, rl) != AV_OK)
        return AV_ERR_NOMEM;
    if (sl && set_string(p, &svc->aws_service, sv, sl) != AV_OK)
        return AV_ERR_NOMEM;
    svc->auth = AV_AUTH_AWS_SIGV4;
    return AV_OK;
}

/* parse_aws_body_max reads a byte count with an optional KiB or MiB. */
static int parse_aws_body_max(parser *p, av_service *svc, const char *v, size_t n)
{
    size_t dl = 0;
    while (dl < n && v[dl] >= '0' && v[dl] <= '9')
        dl++;
    const char *u = v + dl;
    size_t ul = n - dl;
    trim(&u, &ul);
    unsigned long long mul = ul == 0 ? 1 : word_eq(u, ul, "kib") ? 1024 : word_eq(u, ul, "mib") ? 1048576 : 0;
    long num = 0;
    if (!mul || parse_uint(v, dl, 9, &num) != AV_OK || num <= 0 ||
        (unsigned long long)num * mul > AV_AWS_BODY_MAX_LIMIT || (unsigned long long)num * mul < 1024)
        return perr(p, "aws_body_max must be a size from 1 KiB to 64 MiB (bytes, or a number with KiB or MiB)");
    svc->aws_body_max = (size_t)((unsigned long long)num * mul);
    return AV_OK;
}

/* quoted_or_bare copies an argument that is either one "quoted string"
 * (the whole of s[0..n)) or a bare word without white space (nor a quote,
 * with |no_quote|) into *out; otherwise the error |malformed| or |spaces|. */
static int quoted_or_bare(parser *p, const char *s, size_t n, int no_quote, const char *malformed,
                          const char *spaces, char **out)
{
    if (s[0] == '"') {
        size_t used = 0;
        int err;
        char *v = parse_quoted(s, n, &used, &err);
        if (!v && err == AV_ERR_NOMEM)
            return oom(p);
        if (!v || used != n) {
            av__free(v);
            return perr(p, "%s", malformed);
        }
        *out = v;
        return AV_OK;
    }
    for (size_t i = 0; i < n; i++)
        if (is_ws(s[i]) || (no_quote && s[i] == '"'))
            return perr(p, "%s", spaces);
    if (!(*out = dup_range(s, n)))
        return oom(p);
    return AV_OK;
}

/* parse_auth fills the auth fields of |svc| from an auth value. */
static int parse_auth(parser *p, av_service *svc, const char *v, size_t n)
{
    size_t kl = 0;
    while (kl < n && !is_ws(v[kl]))
        kl++;
    const char *rest = v + kl;
    size_t rl = n - kl;
    trim(&rest, &rl);

    if (word_eq(v, kl, "bearer")) {
        if (rl)
            return perr(p, "auth bearer takes no argument");
        svc->auth = AV_AUTH_BEARER;
        return AV_OK;
    }
    if (word_eq(v, kl, "basic")) {
        char *user = NULL;
        if (rl == 0)
            return perr(p, "auth basic needs a user name (auth = basic USER)");
        int rc = quoted_or_bare(p, rest, rl, 0, "auth basic: malformed quoted user name",
                                "auth basic: user name with spaces must be quoted", &user);
        if (rc)
            return rc;
        for (const char *q = user; *q; q++) {
            unsigned char ch = (unsigned char)*q;
            if (ch == ':' || ch < 0x20 || ch == 0x7f) {
                av__free(user);
                return perr(p, "auth basic: user name must not contain ':' or control characters");
            }
        }
        if (!*user) {
            av__free(user);
            return perr(p, "auth basic: empty user name");
        }
        svc->auth = AV_AUTH_BASIC;
        svc->auth_name = user;
        return AV_OK;
    }
    if (word_eq(v, kl, "query")) {
        if (rl == 0)
            return perr(p, "auth query needs a parameter name (auth = query PARAM)");
        for (size_t i = 0; i < rl; i++)
            if (!is_unreserved((unsigned char)rest[i]))
                return perr(p, "auth query: parameter name must use only A-Z a-z 0-9 - . _ ~");
        if (!(svc->auth_name = dup_range(rest, rl)))
            return oom(p);
        svc->auth = AV_AUTH_QUERY;
        return AV_OK;
    }
    if (word_eq(v, kl, "header")) {
        size_t nl = 0;
        while (nl < rl && !is_ws(rest[nl]))
            nl++;
        if (nl == 0)
            return perr(p, "auth header needs a name and a template (auth = header NAME \"... {secret} ...\")");
        for (size_t i = 0; i < nl; i++)
            if (!is_tchar((unsigned char)rest[i]))
                return perr(p, "auth header: invalid header name \"%.*s\"", (int)(nl > 64 ? 64 : nl), rest);
        if (header_name_forbidden(rest, nl))
            return perr(p, "auth header: header \"%.*s\" cannot be injected", (int)nl, rest);
        const char *t = rest + nl;
        size_t tl = rl - nl;
        trim(&t, &tl);
        if (tl == 0)
            return perr(p, "auth header needs a template containing {secret}");
        char *tmpl = NULL;
        int rc = quoted_or_bare(p, t, tl, 1, "auth header: malformed quoted template",
                                "auth header: a template with spaces must be quoted", &tmpl);
        if (rc)
            return rc;
        for (const char *q = tmpl; *q; q++) {
            unsigned char ch = (unsigned char)*q;
            if ((ch < 0x20 && ch != '\t') || ch >= 0x7f) {
                av__free(tmpl);
                return perr(p, "auth header: template must be printable ASCII");
            }
        }
        if (count_secret(tmpl) != 1) {
            av__free(tmpl);
            return perr(p, "auth header: template must contain {secret} exactly once");
        }
        if (!(svc->auth_name = dup_range(rest, nl))) {
            av__free(tmpl);
            return oom(p);
        }
        svc->auth_template = tmpl;
        svc->auth = AV_AUTH_HEADER;
        return AV_OK;
    }
    if (word_eq(v, kl, "aws-sigv4"))
        return parse_auth_aws(p, svc, rest, rl);
    return perr(p, "unknown auth kind \"%.*s\" (expected bearer, basic, header, query or aws-sigv4)",
                (int)(kl > 32 ? 32 : kl), v);
}

/* parse_methods turns "GET, POST" into AV_M_* bits. */
static int parse_methods(parser *p, const char *v, size_t n, unsigned *out)
{
    static const struct { const char *name; unsigned bit; } m[] = {
        {"get", AV_M_GET}, {"head", AV_M_HEAD}, {"post", AV_M_POST}, {"put", AV_M_PUT},
        {"delete", AV_M_DELETE}, {"patch", AV_M_PATCH}, {"options", AV_M_OPTIONS},
    };
    unsigned bits = 0;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && v[i] != ',')
            continue;
        const char *item = v + start;
        size_t il = i - start;
        trim(&item, &il);
        size_t j;
        for (j = 0; j < sizeof(m) / sizeof(m[0]); j++)
            if (word_eq(item, il, m[j].name))
                break;
        if (j == sizeof(m) / sizeof(m[0]))
            return perr(p, "unknown method \"%.*s\" (allowed: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS)",
                        (int)(il > 32 ? 32 : il), item);
        bits |= m[j].bit;
        start = i + 1;
    }
    *out = bits;
    return AV_OK;
}

static const key_def service_keys[] = {
    {"host", K_HOST, 0}, {"port", K_PORT, 0}, {"scheme", K_SCHEME, 0}, {"path", K_PATH, 0},
    {"methods", K_METHODS, 0}, {"auth", K_AUTH, 0}, {"secret", K_SECRET, 0},
    {"websocket", K_WEBSOCKET, 0}, {"placeholder", K_PLACEHOLDER, 0},
    {"placeholder_in", K_PLACEHOLDER_IN, 0}, {"agent_env", K_AGENT_ENV, 0},
    {"auth_alt", K_AUTH_ALT, 0}, {"websocket_scrub", K_WS_SCRUB, 0},
    {"upstream_proxy", K_SVC_UP_PROXY, 0}, {"upstream_proxy_auth", K_SVC_UP_AUTH, 0},
    {"access_key_id", K_AWS_AKID, 0}, {"session_token", K_AWS_TOKEN, 0},
    {"aws_body_max", K_AWS_BODY_MAX, 0},
    {"token_url", K_TOKEN_URL, 0}, {"client_id", K_CLIENT_ID, 0}, {"client_secret", K_CLIENT_SECRET, 0},
    {"scope", K_OAUTH_SCOPE, 0}, {"audience", K_OAUTH_AUDIENCE, 0}, {"client_auth", K_CLIENT_AUTH, 0},
    {"refresh_token", K_REFRESH_TOKEN, 0},
    {"decide", K_DECIDE, 0}, {"decide_timeout", K_DECIDE_TIMEOUT, 0}, {"decide_body", K_DECIDE_BODY, 0},
};

/* oauth_value stores a scope, audience or client_id: visible ASCII and
 * spaces (sent form-urlencoded), at most 1024 bytes. */
static int oauth_value(parser *p, const char *key, char **out, const char *v, size_t vl)
{
    if (vl == 0 || vl > 1024)
        return perr(p, "%s must be 1..1024 characters", key);
    for (size_t i = 0; i < vl; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
            return perr(p, "%s may contain only visible ASCII and spaces", key);
    return set_string(p, out, v, vl);
}

/* set_token_url checks token_url: an absolute https:// URL without
 * userinfo, query-less paths and queries both allowed, no fragment. */
static int set_token_url(parser *p, av_service *s, const char *v, size_t vl)
{
    av_absolute_uri u;
    if (vl > 2048 || av__absolute_uri_parse(v, vl, &u) != AV_OK || strcmp(u.scheme, "https") != 0)
        return perr(p, "token_url must be an https:// URL (e.g. https://auth.example.com/oauth/token)");
    return set_string(p, &s->token_url, v, vl);
}

/* ---- secret = gcp:service_account / github_app: (a JWT signed with a key) -- */

/* next_word splits [*v, *v + *vl) at spaces and tabs: the next word in
 * *w / *wl (0: none left). */
static void next_word(const char **v, size_t *vl, const char **w, size_t *wl)
{
    while (*vl && is_ws(**v))
        (*v)++, (*vl)--;
    *w = *v;
    *wl = 0;
    while (*vl && !is_ws(**v))
        (*v)++, (*vl)--, (*wl)++;
}

/* jwt_list checks the comma list of argument |key|: at most |items|
 * items of 1..|item_max| bytes each, of [A-Za-z0-9._-] (repositories), or
 * with |colon| "name:read|write|admin" with a name of [a-z_]
 * (permissions), or with |join| any visible ASCII (scopes, whose commas
 * become spaces in the stored copy). */
static int jwt_list(parser *p, const char *key, const char *v, size_t vl, size_t item_max, size_t items, int colon,
                    char **out, int join)
{
    size_t count = 0, start = 0;
    if (vl == 0 || vl > 8192)
        return perr(p, "secret: %s= needs a value (at most 8192 characters)", key);
    for (size_t i = 0; i <= vl; i++) {
        if (i < vl && v[i] != ',')
            continue;
        const char *it = v + start;
        size_t n = i - start;
        if (n == 0 || n > item_max || ++count > items)
            return perr(p, "secret: %s= is a comma list of at most %zu items of 1..%zu characters, no spaces", key,
                        items, item_max);
        if (colon) {
            const char *c = memchr(it, ':', n);
            size_t nl = c ? (size_t)(c - it) : 0;
            int ok = c && nl > 0;
            for (size_t k = 0; ok && k < nl; k++)
                ok = (it[k] >= 'a' && it[k] <= 'z') || it[k] == '_';
            if (ok) {
                const char *lv = c + 1;
                size_t ll = n - nl - 1;
                ok = word_eq(lv, ll, "read") || word_eq(lv, ll, "write") || word_eq(lv, ll, "admin");
            }
            if (!ok)
                return perr(p,
                            "secret: permissions= takes NAME:LEVEL items (e.g. contents:read,issues:write; LEVEL is "
                            "read, write or admin), not \"%.*s\"",
                            (int)(n > 60 ? 60 : n), it);
        } else if (!join) {
            for (size_t k = 0; k < n; k++)
                if (!is_unreserved((unsigned char)it[k]) || it[k] == '~')
                    return perr(p, "secret: %s= items may contain only letters, digits, '.', '_' and '-'", key);
        } else {
            for (size_t k = 0; k < n; k++)
                if ((unsigned char)it[k] < 0x21 || (unsigned char)it[k] > 0x7e)
                    return perr(p, "secret: %s= items must be visible ASCII", key);
        }
        start = i + 1;
    }
    int rc = set_string(p, out, v, vl);
    if (rc == AV_OK && join)
        for (char *c = *out; *c; c++)
            if (*c == ',')
                *c = ' ';
    return rc;
}

static int all_digits(const char *v, size_t n, size_t max)
{
    if (n == 0 || n > max || v[0] == '0')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] < '0' || v[i] > '9')
            return 0;
    return 1;
}

/* check_jwt_key parses the key now when its reference can be read now
 * (file:, env:), so `agentvault check` and the start report a key that
 * is not one; vault:, command: and callback: keys, and keys not readable
 * yet, are checked at their first mint (a 502 naming the problem). */
static int check_jwt_key(parser *p, av_service *s)
{
    const char *ref = s->mint_key_ref;
    if (strncmp(ref, "file:", 5) != 0 && strncmp(ref, "env:", 4) != 0)
        return AV_OK;
    av_resolver *r = NULL;
    if (av__resolver_new(&r) != AV_OK)
        return oom(p);
    av_secret *key = NULL;
    char why[200];
    int rc = av__resolver_get(r, ref, &key, why, sizeof(why));
    av__resolver_free(r);
    if (rc != AV_OK)
        return rc == AV_ERR_NOMEM ? oom(p) : AV_OK;
    if (s->mint == AV_MINT_GCP_SA) {
        av_gcp_key k;
        rc = av__gcp_key_parse(av__secret_data(key), av__secret_len(key), &k, why, sizeof(why));
        av__gcp_key_clear(&k);
    } else {
        av_pkey *k = NULL;
        rc = av__pkey_from_pem(av__secret_data(key), av__secret_len(key), &k, why, sizeof(why));
        av__pkey_free(k);
    }
    av__secret_free(key);
    if (rc == AV_ERR_NOMEM)
        return oom(p);
    if (rc != AV_OK)
        return perr(p, "secret: %.200s: %s", ref, why);
    return AV_OK;
}

/* set_jwt_secret: secret = gcp:service_account KEYREF [scope=A,B]
 * [target_audience=AUD] or github_app:APP_ID KEYREF installation=ID
 * [repositories=a,b] [permissions=name:level,...]. */
static int set_jwt_secret(parser *p, av_service *s, const char *v, size_t vl)
{
    const char *w;
    size_t wl;
    next_word(&v, &vl, &w, &wl);
    int gh = wl >= 11 && memcmp(w, "github_app:", 11) == 0;
    const char *kind = gh ? "github_app:APP_ID" : "gcp:service_account";
    if (gh) {
        const char *id = w + 11;
        size_t il = wl - 11;
        int ok = all_digits(id, il, 19);
        if (!ok && il > 2 && il <= 64 && memcmp(id, "Iv", 2) == 0) {
            ok = 1;
            for (size_t i = 0; ok && i < il; i++)
                ok = is_unreserved((unsigned char)id[i]) && id[i] != '~';
        }
        if (!ok)
            return perr(p,
                        "secret: github_app:APP_ID needs the App's numeric ID or its client ID (Iv...), not "
                        "\"%.*s\"",
                        (int)(il > 40 ? 40 : il), id);
        s->mint = AV_MINT_GITHUB_APP;
        if (set_string(p, &s->client_id, id, il) || set_string(p, &s->secret_ref, w, wl))
            return AV_ERR_CONFIG;
    } else if (word_eq(w, wl, "gcp:service_account")) {
        s->mint = AV_MINT_GCP_SA;
        if (set_string(p, &s->secret_ref, w, wl))
            return AV_ERR_CONFIG;
    } else {
        return perr(p, "secret: unknown kind \"%.*s\" (supported: gcp:service_account, github_app:APP_ID)",
                    (int)(wl > 40 ? 40 : wl), w);
    }
    next_word(&v, &vl, &w, &wl);
    if (!wl || memchr(w, '=', wl))
        return perr(p,
                    "secret: %s needs the key's reference next (e.g. %s), then its arguments", kind,
                    gh ? "file:/etc/agentvault/app.pem" : "file:/etc/agentvault/sa.json");
    if (set_secret_ref(p, "secret: the key", &s->mint_key_ref, w, wl))
        return AV_ERR_CONFIG;
    for (next_word(&v, &vl, &w, &wl); wl; next_word(&v, &vl, &w, &wl)) {
        const char *eq = memchr(w, '=', wl);
        size_t kl = eq ? (size_t)(eq - w) : wl;
        const char *av = eq ? eq + 1 : NULL;
        size_t al = eq ? wl - kl - 1 : 0;
        char **dst = !gh && word_eq(w, kl, "scope")             ? &s->oauth_scope
                     : !gh && word_eq(w, kl, "target_audience") ? &s->target_audience
                     : gh && word_eq(w, kl, "installation")     ? &s->gh_installation
                     : gh && word_eq(w, kl, "repositories")     ? &s->gh_repositories
                     : gh && word_eq(w, kl, "permissions")      ? &s->gh_permissions
                                                                : NULL;
        if (!dst)
            return perr(p, "secret: unknown argument \"%.*s\" for %s (known: %s)", (int)(kl > 40 ? 40 : kl), w,
                        kind, gh ? "installation=, repositories=, permissions=" : "scope=, target_audience=");
        if (*dst)
            return perr(p, "secret: %.*s= is given twice", (int)kl, w);
        if (!eq || !al)
            return perr(p, "secret: %.*s needs =VALUE", (int)kl, w);
        int rc;
        if (dst == &s->oauth_scope)
            rc = jwt_list(p, "scope", av, al, 512, 32, 0, dst, 1);
        else if (dst == &s->target_audience)
            rc = oauth_value(p, "secret: target_audience=", dst, av, al);
        else if (dst == &s->gh_installation)
            rc = all_digits(av, al, 19)
                     ? set_string(p, dst, av, al)
                     : perr(p, "secret: installation= takes the installation's numeric ID (e.g. installation=12345678)");
        else if (dst == &s->gh_repositories)
            rc = jwt_list(p, "repositories", av, al, 100, 500, 0, dst, 0);
        else
            rc = jwt_list(p, "permissions", av, al, 80, 64, 1, dst, 0);
        if (rc != AV_OK)
            return rc;
    }
    if (gh && !s->gh_installation)
        return perr(p, "secret: github_app: needs installation=ID (the installation the tokens are for)");
    if (s->oauth_scope && s->target_audience)
        return perr(p, "secret: scope= and target_audience= exclude each other (an access token or an ID token)");
    return check_jwt_key(p, s);
}

/* set_service_secret: secret = oauth2:GRANT (minted), gcp:service_account
 * or github_app: (minted with a signed JWT), or a reference. */
static int set_service_secret(parser *p, av_service *s, const char *v, size_t vl)
{
    if ((vl >= 4 && memcmp(v, "gcp:", 4) == 0) || (vl >= 11 && memcmp(v, "github_app:", 11) == 0))
        return set_jwt_secret(p, s, v, vl);
    if (vl >= 7 && memcmp(v, "oauth2:", 7) == 0) {
        if (word_eq(v + 7, vl - 7, "client_credentials"))
            s->mint = AV_MINT_CLIENT_CREDENTIALS;
        else if (word_eq(v + 7, vl - 7, "refresh_token"))
            s->mint = AV_MINT_REFRESH_TOKEN;
        else
            return perr(p,
                        "secret: unknown OAuth 2.0 grant \"%.*s\" (supported: oauth2:client_credentials, "
                        "oauth2:refresh_token)",
                        (int)(vl - 7 > 40 ? 40 : vl - 7), v + 7);
        return set_string(p, &s->secret_ref, v, vl);
    }
    return set_secret_ref(p, "secret", &s->secret_ref, v, vl);
}

/* service_key handles one key of a [service] section. */
static int service_key(parser *p, const char *k, size_t kl, const char *v, size_t vl)
{
    av_service *s = &p->cfg->services[p->cfg->nservices - 1];
    uint64_t bit = key_bit(p, service_keys, sizeof(service_keys) / sizeof(service_keys[0]), "service", NULL, k,
                           kl);
    if (!bit)
        return AV_ERR_CONFIG;

    switch (bit) {
    case K_HOST: {
        const char *why = "";
        int rc = av__config_parse_host_pattern(v, vl, &s->host, &s->wildcard, &s->host_is_ip, &why);
        if (rc == AV_ERR_NOMEM)
            return oom(p);
        if (rc != AV_OK)
            return perr(p, "host: %s: \"%.*s\"", why, (int)(vl > 100 ? 100 : vl), v);
        return AV_OK;
    }
    case K_PORT: {
        long port;
        if (parse_uint(v, vl, 5, &port) != AV_OK || port < 1 || port > 65535)
            return perr(p, "port must be a number in 1..65535");
        s->port = (int)port;
        return AV_OK;
    }
    case K_SCHEME:
        return word_pair(p, v, vl, "scheme", "https", "http", &s->scheme_http);
    case K_PATH:
        if (!av__origin_form_valid(v, vl) || memchr(v, '?', vl))
            return perr(p, "path must start with '/' and contain only visible ASCII, no '?' or '#'");
        return set_string(p, &s->path_glob, v, vl);
    case K_METHODS:
        return parse_methods(p, v, vl, &s->methods);
    case K_AUTH:
        return parse_auth(p, s, v, vl);
    case K_AUTH_ALT: {
        /* parsed like auth, into a scratch service, then moved */
        av_service alt;
        memset(&alt, 0, sizeof(alt));
        int rc = parse_auth(p, &alt, v, vl);
        if (rc == AV_OK && alt.auth == AV_AUTH_AWS_SIGV4)
            rc = perr(p, "auth_alt cannot be aws-sigv4 (a signature is not an alternative header form)");
        if (rc != AV_OK) {
            av__config_service_clear(&alt);
            return rc;
        }
        s->auth_alt = alt.auth;
        s->auth_alt_name = alt.auth_name;
        s->auth_alt_template = alt.auth_template;
        s->auth_alt_line = p->line;
        return AV_OK;
    }
    case K_WEBSOCKET:
        return word_pair(p, v, vl, "websocket", "on", "off", &s->websocket_off);
    case K_WS_SCRUB:
        return word_pair(p, v, vl, "websocket_scrub", "on", "off", &s->websocket_scrub_off);
    case K_PLACEHOLDER:
        if (vl < 4 || vl > 128)
            return perr(p, "placeholder must be 4..128 characters");
        for (size_t i = 0; i < vl; i++)
            if (!(isalnum((unsigned char)v[i]) || v[i] == '_' || v[i] == '-' || v[i] == '.'))
                return perr(p, "placeholder may contain only letters, digits, '_', '-' and '.'");
        return set_string(p, &s->placeholder, v, vl);
    case K_PLACEHOLDER_IN: {
        size_t start = 0;
        for (size_t i = 0; i <= vl; i++) {
            if (i < vl && v[i] != ',')
                continue;
            const char *item = v + start;
            size_t il = i - start;
            trim(&item, &il);
            if (word_eq(item, il, "websocket"))
                s->placeholder_in |= AV_SURF_WEBSOCKET;
            else if (word_eq(item, il, "header"))
                s->placeholder_in |= AV_SURF_HEADER;
            else if (word_eq(item, il, "path"))
                s->placeholder_in |= AV_SURF_PATH;
            else if (word_eq(item, il, "query"))
                s->placeholder_in |= AV_SURF_QUERY;
            else if (word_eq(item, il, "body"))
                s->placeholder_in |= AV_SURF_BODY;
            else
                return perr(p,
                            "placeholder_in: surface \"%.*s\" is not supported (supported: header, path, query, "
                            "body, websocket)",
                            (int)(il > 32 ? 32 : il), item);
            start = i + 1;
        }
        return AV_OK;
    }
    case K_AGENT_ENV: {
        /* Normalize to "A,B" with validated names. */
        char norm[512];
        size_t o = 0, start = 0;
        for (size_t i = 0; i <= vl; i++) {
            if (i < vl && v[i] != ',')
                continue;
            const char *item = v + start;
            size_t il = i - start;
            trim(&item, &il);
            int ok = il > 0 && il <= 64 && (isupper((unsigned char)item[0]) || item[0] == '_');
            for (size_t j = 0; ok && j < il; j++)
                ok = isupper((unsigned char)item[j]) || isdigit((unsigned char)item[j]) || item[j] == '_';
            if (!ok)
                return perr(p, "agent_env: \"%.*s\" is not an environment variable name ([A-Z_][A-Z0-9_]*)",
                            (int)(il > 64 ? 64 : il), item);
            if (o + il + 2 > sizeof(norm))
                return perr(p, "agent_env: too many names");
            if (o)
                norm[o++] = ',';
            memcpy(norm + o, item, il);
            o += il;
            start = i + 1;
        }
        return set_string(p, &s->agent_env, norm, o);
    }
    case K_SVC_UP_PROXY:
        return set_upstream_proxy(p, &s->upstream_proxy, v, vl, 0);
    case K_SVC_UP_AUTH:
        return set_secret_ref(p, "upstream_proxy_auth", &s->upstream_proxy_auth, v, vl);
    case K_AWS_AKID:
        return set_secret_ref(p, "access_key_id", &s->aws_akid_ref, v, vl);
    case K_AWS_TOKEN:
        return set_secret_ref(p, "session_token", &s->aws_token_ref, v, vl);
    case K_AWS_BODY_MAX:
        return parse_aws_body_max(p, s, v, vl);
    case K_TOKEN_URL:
        return set_token_url(p, s, v, vl);
    case K_CLIENT_ID:
        return oauth_value(p, "client_id", &s->client_id, v, vl);
    case K_CLIENT_SECRET:
        return set_secret_ref(p, "client_secret", &s->client_secret_ref, v, vl);
    case K_OAUTH_SCOPE:
        return oauth_value(p, "scope", &s->oauth_scope, v, vl);
    case K_OAUTH_AUDIENCE:
        return oauth_value(p, "audience", &s->oauth_audience, v, vl);
    case K_CLIENT_AUTH:
        return word_pair(p, v, vl, "client_auth", "basic", "post", &s->client_auth_post);
    case K_DECIDE:
        if (word_eq(v, vl, "ask"))
            return set_string(p, &s->decide, "ask", 3);
        return set_decide_cmd(p, "decide", &s->decide, v, vl);
    case K_DECIDE_TIMEOUT:
        return set_timeout(p, k, kl, v, vl, &s->decide_timeout);
    case K_DECIDE_BODY: {
        /* bytes, or a number with k / KiB */
        size_t dl = 0;
        while (dl < vl && v[dl] >= '0' && v[dl] <= '9')
            dl++;
        const char *u = v + dl;
        size_t ul = vl - dl;
        trim(&u, &ul);
        long num = 0, mul = ul == 0 ? 1 : (word_eq(u, ul, "k") || word_eq(u, ul, "kib")) ? 1024 : 0;
        if (!mul || parse_uint(v, dl, 6, &num) != AV_OK || num <= 0 || num * mul > DECIDE_BODY_MAX)
            return perr(p, "decide_body must be a size from 1 byte to 64k (bytes, or a number with k)");
        s->decide_body = (size_t)(num * mul);
        return AV_OK;
    }
    case K_REFRESH_TOKEN: {
        int ok = vl > 6 && vl <= 6 + 64 && memcmp(v, "vault:", 6) == 0;
        for (size_t i = 6; ok && i < vl; i++)
            ok = (v[i] >= 'A' && v[i] <= 'Z') || (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= '0' && v[i] <= '9') ||
                 v[i] == '_' || v[i] == '.' || v[i] == '-';
        if (!ok)
            return perr(p, "refresh_token must be vault:NAME (NAME: 1-64 of A-Z a-z 0-9 _ . -): a refresh token the "
                           "server rotates is written back to the vault");
        return set_secret_ref(p, "refresh_token", &s->refresh_token_ref, v, vl);
    }
    default: /* K_SECRET */
        return set_service_secret(p, s, v, vl);
    }
}

/* parse_rate reads "N/s", "N/min" or "N/h" (N a positive integer or
 * decimal) into requests per second. */
static int parse_rate(const char *v, size_t vl, double *out)
{
    const char *slash = memchr(v, '/', vl);
    if (!slash)
        return AV_ERR_INVALID;
    double n;
    if (av__config_parse_seconds(v, (size_t)(slash - v), &n) != AV_OK) /* a positive number <= 86400 */
        return AV_ERR_INVALID;
    const char *u = slash + 1;
    size_t ul = vl - (size_t)(u - v);
    if (word_eq(u, ul, "s"))
        *out = n;
    else if (word_eq(u, ul, "min"))
        *out = n / 60.0;
    else if (word_eq(u, ul, "h"))
        *out = n / 3600.0;
    else
        return AV_ERR_INVALID;
    return AV_OK;
}

/* [gateway] and [token] keys: names for the bits they share with [service]. */
enum {
    K_GW_LISTEN = K_HOST, K_GW_UPSTREAM = K_PATH, K_GW_ALLOW_REMOTE = K_PORT, K_GW_TOKEN = K_SECRET,
    K_TOK_SECRET = K_SECRET, K_TOK_SERVICES = K_METHODS, K_TOK_UNMATCHED = K_UNMATCHED, K_TOK_RATE = K_PORT,
    K_TOK_BURST = K_PATH
};

static const key_def gateway_keys[] = {
    {"listen", K_GW_LISTEN, 0}, {"upstream", K_GW_UPSTREAM, 0}, {"allow_remote", K_GW_ALLOW_REMOTE, 0}, {"token", K_GW_TOKEN, 0},
};

/* gateway_key handles one key of a [gateway] section. */
static int gateway_key(parser *p, const char *k, size_t kl, const char *v, size_t vl)
{
    av_gateway_cfg *g = &p->cfg->gateways[p->cfg->ngateways - 1];
    uint64_t bit = key_bit(p, gateway_keys, sizeof(gateway_keys) / sizeof(gateway_keys[0]), "gateway",
                           "listen, upstream, allow_remote, token", k, kl);
    if (!bit)
        return AV_ERR_CONFIG;
    switch (bit) {
    case K_GW_LISTEN: {
        char norm[80];
        if (av__config_normalize_listen(v, vl, norm, sizeof(norm)) != AV_OK)
            return perr(p, "listen must be IP:PORT, [IPv6]:PORT or localhost:PORT");
        return set_string(p, &g->listen, norm, strlen(norm));
    }
    case K_GW_UPSTREAM: {
        av_absolute_uri u;
        if (av__absolute_uri_parse(v, vl, &u) != 0 ||
            (strcmp(u.scheme, "https") != 0 && strcmp(u.scheme, "http") != 0) ||
            !(u.path_len == 0 || (u.path_len == 1 && u.path[0] == '/')))
            return perr(p, "upstream must be an origin like https://api.example.com or https://host:port (no path)");
        g->dest = u.authority;
        g->dest_tls = strcmp(u.scheme, "https") == 0;
        return set_string(p, &g->upstream, v, vl);
    }
    case K_GW_ALLOW_REMOTE:
        if (word_eq(v, vl, "yes") || word_eq(v, vl, "true"))
            g->allow_remote = 1;
        else if (word_eq(v, vl, "no") || word_eq(v, vl, "false"))
            g->allow_remote = 0;
        else
            return perr(p, "allow_remote must be yes or no");
        return AV_OK;
    default: /* K_GW_TOKEN */
        return set_secret_ref(p, "token", &g->token_ref, v, vl);
    }
}

static const key_def token_keys[] = {
    {"secret", K_TOK_SECRET, 0}, {"services", K_TOK_SERVICES, 0}, {"unmatched", K_TOK_UNMATCHED, 0}, {"rate", K_TOK_RATE, 0},
    {"burst", K_TOK_BURST, 0},
};

/* token_key handles one key of a [token] section. */
static int token_key(parser *p, const char *k, size_t kl, const char *v, size_t vl)
{
    av_token_cfg *t = &p->cfg->tokens[p->cfg->ntokens - 1];
    uint64_t bit = key_bit(p, token_keys, sizeof(token_keys) / sizeof(token_keys[0]), "token",
                           "secret, services, unmatched, rate, burst", k, kl);
    if (!bit)
        return AV_ERR_CONFIG;
    switch (bit) {
    case K_TOK_SECRET:
        return set_secret_ref(p, "secret", &t->secret_ref, v, vl);
    case K_TOK_SERVICES: {
        size_t start = 0;
        for (size_t i = 0; i <= vl; i++) {
            if (i < vl && v[i] != ',')
                continue;
            const char *item = v + start;
            size_t il = i - start;
            trim(&item, &il);
            start = i + 1;
            if (il == 0 || il > NAME_MAX_LEN)
                return perr(p, "services must be a comma-separated list of service names");
            char **ns = av__realloc(t->services, (t->nservices + 1) * sizeof(*ns));
            if (!ns)
                return oom(p);
            t->services = ns;
            if (!(t->services[t->nservices] = dup_range(item, il)))
                return oom(p);
            t->nservices++;
        }
        return AV_OK;
    }
    case K_TOK_UNMATCHED:
        return parse_unmatched(p, v, vl, &t->unmatched);
    case K_TOK_RATE:
        if (parse_rate(v, vl, &t->rate) != AV_OK)
            return perr(p, "rate must be N/s, N/min or N/h with N a positive number");
        return AV_OK;
    default: { /* K_TOK_BURST */
        long b;
        if (parse_uint(v, vl, 6, &b) != AV_OK || b < 1)
            return perr(p, "burst must be a whole number of requests >= 1");
        t->burst = (double)b;
        return AV_OK;
    }
    }
}

/* av__config_key_name lists the reader's keys: the |i|th key of section
 * kind |section| ("proxy", "service", "token", "gateway"), NULL past the
 * end or for an unknown kind. */
const char *av__config_key_name(const char *section, size_t i)
{
    static const struct {
        const char *name;
        const key_def *keys;
        size_t n;
    } secs[] = {
        {"proxy", proxy_keys, sizeof(proxy_keys) / sizeof(proxy_keys[0])},
        {"service", service_keys, sizeof(service_keys) / sizeof(service_keys[0])},
        {"token", token_keys, sizeof(token_keys) / sizeof(token_keys[0])},
        {"gateway", gateway_keys, sizeof(gateway_keys) / sizeof(gateway_keys[0])},
    };
    for (size_t s = 0; section && s < sizeof(secs) / sizeof(secs[0]); s++)
        if (strcmp(section, secs[s].name) == 0)
            return i < secs[s].n ? secs[s].keys[i].name : NULL;
    return NULL;
}

/* finish_aws_service checks the keys of auth = aws-sigv4 and their use
 * with another auth. */
static int finish_aws_service(parser *p, av_service *s)
{
    int aws = s->auth == AV_AUTH_AWS_SIGV4;
    if (!aws && (s->aws_akid_ref || s->aws_token_ref || s->aws_body_max))
        return perr_at(p, s->line,
                       "service \"%s\": access_key_id, session_token and aws_body_max need auth = aws-sigv4",
                       s->name);
    if (!aws)
        return AV_OK;
    if (!s->aws_akid_ref)
        return perr_at(p, s->line,
                       "service \"%s\": auth = aws-sigv4 needs access_key_id (a secret reference, e.g. "
                       "env:AWS_ACCESS_KEY_ID)",
                       s->name);
    if (s->placeholder)
        return perr_at(p, s->line,
                       "service \"%s\": placeholder is not used with auth = aws-sigv4 (agents sign with any "
                       "dummy key; remove it)",
                       s->name);
    if (!s->aws_body_max)
        s->aws_body_max = AV_AWS_BODY_MAX_DEFAULT;
    return AV_OK;
}

/* finish_mint_service checks the keys of secret = oauth2:... and their
 * use without it. */
static int finish_mint_service(parser *p, av_service *s)
{
    if (!s->mint) {
        if (s->token_url || s->client_id || s->client_secret_ref || s->oauth_scope || s->oauth_audience ||
            s->refresh_token_ref || (p->seen & K_CLIENT_AUTH))
            return perr_at(p, s->line,
                           "service \"%s\": token_url, client_id, client_secret, scope, audience, client_auth and "
                           "refresh_token need secret = oauth2:client_credentials or oauth2:refresh_token "
                           "(token_url also gcp:service_account or github_app:)",
                           s->name);
        return AV_OK;
    }
    if (s->mint == AV_MINT_GCP_SA || s->mint == AV_MINT_GITHUB_APP) {
        if ((p->seen & (K_CLIENT_ID | K_CLIENT_SECRET | K_OAUTH_SCOPE | K_OAUTH_AUDIENCE | K_CLIENT_AUTH)) ||
            s->refresh_token_ref)
            return perr_at(p, s->line,
                           "service \"%s\": client_id, client_secret, scope, audience, client_auth and refresh_token "
                           "are oauth2: keys; secret = %s takes its arguments on the secret line (see docs/CONFIG.md)",
                           s->name, s->secret_ref);
        if (s->auth == AV_AUTH_AWS_SIGV4)
            return perr_at(p, s->line, "service \"%s\": auth = aws-sigv4 cannot use a minted token", s->name);
        return AV_OK;
    }
    if (!s->token_url)
        return perr_at(p, s->line, "service \"%s\": secret = %s needs token_url (the token endpoint, https://...)",
                       s->name, s->secret_ref);
    if (!s->client_id)
        return perr_at(p, s->line, "service \"%s\": secret = %s needs client_id", s->name, s->secret_ref);
    if (s->mint == AV_MINT_REFRESH_TOKEN && !s->refresh_token_ref)
        return perr_at(p, s->line,
                       "service \"%s\": secret = %s needs refresh_token = vault:NAME (the refresh token, kept in "
                       "the vault)",
                       s->name, s->secret_ref);
    if (s->mint == AV_MINT_REFRESH_TOKEN && !s->client_secret_ref && (p->seen & K_CLIENT_AUTH))
        return perr_at(p, s->line,
                       "service \"%s\": client_auth needs client_secret (without it the client is public: "
                       "client_id is sent in the body)",
                       s->name);
    if (s->mint == AV_MINT_CLIENT_CREDENTIALS && s->refresh_token_ref)
        return perr_at(p, s->line, "service \"%s\": refresh_token needs secret = oauth2:refresh_token", s->name);
    if (s->mint == AV_MINT_CLIENT_CREDENTIALS && !s->client_secret_ref)
        return perr_at(p, s->line,
                       "service \"%s\": secret = %s needs client_secret (a secret reference, e.g. "
                       "vault:NAME)",
                       s->name, s->secret_ref);
    if (s->auth == AV_AUTH_AWS_SIGV4)
        return perr_at(p, s->line, "service \"%s\": auth = aws-sigv4 cannot use a minted OAuth 2.0 token", s->name);
    return AV_OK;
}

/* finish_section checks the section that just ended and fills defaults. */
static int finish_section(parser *p)
{
    if (p->section == SEC_SERVICE) {
        av_service *s = &p->cfg->services[p->cfg->nservices - 1];
        if (!s->host)
            return perr_at(p, s->line, "service \"%s\" has no host", s->name);
        if (!s->auth)
            return perr_at(p, s->line, "service \"%s\" has no auth", s->name);
        if (!s->secret_ref)
            return perr_at(p, s->line, "service \"%s\" has no secret", s->name);
        if (s->placeholder_in && !s->placeholder)
            return perr_at(p, s->line, "service \"%s\": placeholder_in needs a placeholder", s->name);
        if ((s->decide_timeout > 0 || s->decide_body) && !s->decide)
            return perr_at(p, s->line,
                           "service \"%s\": decide_timeout and decide_body need decide = ask or decide = command:...",
                           s->name);
        int rc = finish_aws_service(p, s);
        if (rc == AV_OK)
            rc = finish_mint_service(p, s);
        if (rc != AV_OK)
            return rc;
        if (s->auth_alt) {
            const char *a = auth_header_name(s->auth, s->auth_name);
            const char *b = auth_header_name(s->auth_alt, s->auth_alt_name);
            if (!a || !b)
                return perr_at(p, s->auth_alt_line,
                               "service \"%s\": auth_alt needs an auth sent in a header (bearer, basic or "
                               "header), and so does auth",
                               s->name);
            if (!strcasecmp(a, b))
                return perr_at(p, s->auth_alt_line,
                               "service \"%s\": auth_alt: the same header as auth (%s); name another header "
                               "or remove auth_alt",
                               s->name, a);
        }
        if (s->upstream_proxy_auth && (!s->upstream_proxy || !strcmp(s->upstream_proxy, "direct")))
            return perr_at(p, s->line, "service \"%s\": upstream_proxy_auth needs upstream_proxy = URL in the "
                           "same service", s->name);
        if (s->scheme_http && !(p->seen & K_PORT))
            return perr_at(p, s->line, "service \"%s\": scheme http requires an explicit port", s->name);
        if (!s->port)
            s->port = 443;
    } else if (p->section == SEC_PROXY) {
        const av_config *c = p->cfg;
        int parent = c->upstream_proxy && strcmp(c->upstream_proxy, "direct") != 0;
        if (c->upstream_proxy_auth && !parent)
            return perr_at(p, p->section_line, "upstream_proxy_auth needs upstream_proxy (a URL or env)");
        if (c->upstream_no_proxy && !parent)
            return perr_at(p, p->section_line, "upstream_no_proxy needs upstream_proxy (a URL or env)");
    } else if (p->section == SEC_GATEWAY) {
        av_gateway_cfg *g = &p->cfg->gateways[p->cfg->ngateways - 1];
        if (!g->listen)
            return perr_at(p, g->line, "gateway \"%s\" has no listen address", g->name);
        if (!g->upstream)
            return perr_at(p, g->line, "gateway \"%s\" has no upstream", g->name);
    } else if (p->section == SEC_TOKEN) {
        av_token_cfg *t = &p->cfg->tokens[p->cfg->ntokens - 1];
        if (!t->secret_ref)
            return perr_at(p, t->line, "token \"%s\" has no secret", t->name);
        if (t->burst > 0 && t->rate == 0)
            return perr_at(p, t->line, "token \"%s\": burst needs a rate", t->name);
        if (t->rate > 0 && t->burst == 0)
            t->burst = t->rate < 1 ? 1 : t->rate;
    }
    p->section = SEC_NONE;
    p->seen = 0;
    return AV_OK;
}

/* add_named appends a zeroed element named |name| (unique among its kind,
 * else "duplicate KIND") to one of the config's named arrays; |name_off|
 * and |line_off| locate its name and header line. */
static int add_named(parser *p, void **arr, size_t *n, size_t size, size_t name_off, size_t line_off,
                     const char *kind, const char *name, size_t nl)
{
    for (size_t i = 0; i < *n; i++) {
        const char *have = *(char **)((char *)*arr + i * size + name_off);
        if (strlen(have) == nl && !memcmp(have, name, nl))
            return perr(p, "duplicate %s \"%.*s\"", kind, (int)nl, name);
    }
    if (av__config_grow(arr, *n, size) != AV_OK)
        return oom(p);
    char *el = (char *)*arr + *n * size;
    char *copy = dup_range(name, nl);
    if (!copy)
        return oom(p);
    memcpy(el + name_off, &copy, sizeof(copy));
    memcpy(el + line_off, &p->line, sizeof(p->line));
    (*n)++;
    return AV_OK;
}

/* section_header handles a "[...]" line. */
static int section_header(parser *p, const char *s, size_t n)
{
    if (n < 2 || s[n - 1] != ']')
        return perr(p, "malformed section header (missing ']')");
    const char *in = s + 1;
    size_t il = n - 2;
    trim(&in, &il);
    int rc = finish_section(p);
    if (rc != AV_OK)
        return rc;

    if (word_eq(in, il, "proxy")) {
        if (p->saw_proxy)
            return perr(p, "duplicate [proxy] section");
        p->saw_proxy = 1;
        p->section = SEC_PROXY;
        p->section_line = p->line;
        return AV_OK;
    }
    size_t kl = 0;
    while (kl < il && !is_ws(in[kl]))
        kl++;
    int kind;
    if (word_eq(in, kl, "service"))
        kind = SEC_SERVICE;
    else if (word_eq(in, kl, "token"))
        kind = SEC_TOKEN;
    else if (word_eq(in, kl, "gateway"))
        kind = SEC_GATEWAY;
    else
        return perr(p,
                    "unknown section [%.*s] (expected [proxy], [service \"NAME\"], [token \"NAME\"] or "
                    "[gateway \"NAME\"])",
                    (int)(il > 64 ? 64 : il), in);
    const char *q = in + kl;
    size_t ql = il - kl;
    trim(&q, &ql);
    if (ql < 2 || q[0] != '"' || q[ql - 1] != '"')
        return perr(p, "section name must be quoted: [%s \"NAME\"]",
                    kind == SEC_SERVICE ? "service" : kind == SEC_TOKEN ? "token" : "gateway");
    const char *name = q + 1;
    size_t nl = ql - 2;
    if (nl == 0 || nl > NAME_MAX_LEN)
        return perr(p, "section name must be 1 to %d characters", NAME_MAX_LEN);
    for (size_t i = 0; i < nl; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return perr(p, "section name may contain only A-Z a-z 0-9 _ . -");
    }
    av_config *c = p->cfg;
    rc = kind == SEC_SERVICE
                 ? add_named(p, (void **)&c->services, &c->nservices, sizeof(av_service),
                             offsetof(av_service, name), offsetof(av_service, line), "service", name, nl)
             : kind == SEC_GATEWAY
                 ? add_named(p, (void **)&c->gateways, &c->ngateways, sizeof(av_gateway_cfg),
                             offsetof(av_gateway_cfg, name), offsetof(av_gateway_cfg, line), "gateway", name,
                             nl)
                 : add_named(p, (void **)&c->tokens, &c->ntokens, sizeof(av_token_cfg),
                             offsetof(av_token_cfg, name), offsetof(av_token_cfg, line), "token", name, nl);
    if (rc != AV_OK)
        return rc;
    p->section = kind;
    p->section_line = p->line;
    return AV_OK;
}

/* parse_line handles one line (without its terminator). */
static int parse_line(parser *p, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return perr(p, "control character in line");
    }
    trim(&s, &n);
    if (n == 0 || s[0] == '#' || s[0] == ';')
        return AV_OK;
    if (s[0] == '[')
        return section_header(p, s, n);

    const char *eq = memchr(s, '=', n);
    if (!eq)
        return perr(p, "expected \"key = value\"");
    const char *k = s, *v = eq + 1;
    size_t kl = (size_t)(eq - s), vl = n - kl - 1;
    trim(&k, &kl);
    trim(&v, &vl);
    if (kl == 0)
        return perr(p, "missing key before '='");
    if (vl == 0)
        return perr(p, "empty value for \"%.*s\"", (int)(kl > 64 ? 64 : kl), k);
    switch (p->section) {
    case SEC_PROXY:
        return proxy_key(p, k, kl, v, vl);
    case SEC_SERVICE:
        return service_key(p, k, kl, v, vl);
    case SEC_TOKEN:
        return token_key(p, k, kl, v, vl);
    case SEC_GATEWAY:
        return gateway_key(p, k, kl, v, vl);
    default:
        return perr(p, "key \"%.*s\" outside of a section", (int)(kl > 64 ? 64 : kl), k);
    }
}

/* parse_text runs the reader over a whole text. */
static int parse_text(parser *p, const char *text, size_t len)
{
    size_t start = 0;
    p->line = 0;
    if (len > CONFIG_MAX_BYTES)
        return perr_at(p, 1, "configuration is larger than 1 MiB");
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        start = 3; /* a UTF-8 byte order mark */
    while (start < len) {
        const char *nl = memchr(text + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - text) : len;
        size_t n = end - start;
        p->line++;
        if (n > 0 && text[start + n - 1] == '\r')
            n--;
        if (memchr(text + start, '\0', n))
            return perr(p, "NUL byte in line");
        int rc = parse_line(p, text + start, n);
        if (rc != AV_OK)
            return rc;
        start = end + 1;
    }
    if (p->line == 0)
        p->line = 1;
    return finish_section(p);
}

/* av_config_load_string parses text into |cfg| atomically. Returns
 * AV_ERR_CONFIG, AV_ERR_INVALID or AV_ERR_NOMEM. */
AV_EXPORT int av_config_load_string(av_config *cfg, const char *text, size_t len,
                                    const char *origin)
{
    if (!cfg)
        return AV_ERR_INVALID;
    if (!text && len) {
        av__config_set_error(cfg, "no text given");
        return AV_ERR_INVALID;
    }
    av_config *work = av__config_copy(cfg);
    if (!work) {
        av__config_set_error(cfg, "out of memory");
        return AV_ERR_NOMEM;
    }
    parser p;
    memset(&p, 0, sizeof(p));
    p.cfg = work;
    p.origin = origin ? origin : "<string>";
    int rc = parse_text(&p, text ? text : "", len);
    if (rc != AV_OK) {
        memcpy(cfg->error, work->error, sizeof(cfg->error));
        av_config_free(work);
        return p.nomem ? AV_ERR_NOMEM : rc;
    }
    av_config old = *cfg;
    *cfg = *work;
    *work = old;
    cfg->error[0] = '\0';
    av_config_free(work);
    return AV_OK;
}

/* av_config_load_file reads a file (at most 1 MiB) and parses it. Returns
 * AV_ERR_IO, AV_ERR_CONFIG or AV_ERR_NOMEM. */
AV_EXPORT int av_config_load_file(av_config *cfg, const char *path)
{
    if (!cfg || !path)
        return AV_ERR_INVALID;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        av__config_set_error(cfg, "%.400s: %s", path, strerror(errno));
        return AV_ERR_IO;
    }
    size_t cap = 64 * 1024, len = 0;
    char *buf = av__malloc(cap);
    if (!buf) {
        close(fd);
        av__config_set_error(cfg, "out of memory");
        return AV_ERR_NOMEM;
    }
    for (;;) {
        if (len == cap) {
            if (cap > CONFIG_MAX_BYTES) {
                av__free(buf);
                close(fd);
                av__config_set_error(cfg, "%.400s: file is larger than 1 MiB", path);
                return AV_ERR_CONFIG;
            }
            char *nb = av__realloc(buf, cap * 2);
            if (!nb) {
                av__free(buf);
                close(fd);
                av__config_set_error(cfg, "out of memory");
                return AV_ERR_NOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            av__free(buf);
            close(fd);
            av__config_set_error(cfg, "%.400s: %s", path, strerror(e));
            return AV_ERR_IO;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    int rc;
    if (len > CONFIG_MAX_BYTES) {
        av__config_set_error(cfg, "%.400s: file is larger than 1 MiB", path);
        rc = AV_ERR_CONFIG;
    } else {
        rc = av_config_load_string(cfg, buf, len, path);
    }
    av__free(buf);
    return rc;
}
