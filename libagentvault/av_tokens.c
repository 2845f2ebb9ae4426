/* av_tokens.c - the proxy-token store: tokens made by `agentvault token
 * create`, kept as SHA-256 hashes only.
 *
 * File: one line per token, fields separated by a tab:
 *     NAME  SHA256-HEX  SERVICES  CREATED  EXPIRES
 * SERVICES is a comma-separated list of service names or "*" (all);
 * CREATED and EXPIRES are Unix times (EXPIRES 0: never). The file is 0600
 * and rewritten with write -> fsync -> rename. A token is "avt_" followed
 * by 43 characters of base64url (32 random bytes): high entropy, so a
 * plain SHA-256 is the right hash (a password KDF would only slow the
 * proxy down).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#include "av_config.h"
#include "av_err.h"
#include "av_crypto.h"
#include "av_enc.h"
#include "av_mem.h"

#define TOKENS_FILE_MAX (4 * 1024 * 1024)
#define TOKENS_MAX 4096

typedef struct tok_line {
    char name[72];
    char hash[68];
    char services[1024];
    long long created, expires;
} tok_line;

static int name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.'))
            return 0;
    }
    return 1;
}

static int services_ok(const char *s)
{
    if (strcmp(s, "*") == 0)
        return 1;
    size_t n = strlen(s);
    if (n == 0 || n >= 1024)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.' || c == ','))
            return 0;
        if (c == ',' && (i == 0 || i + 1 == n || s[i + 1] == ','))
            return 0;
    }
    return 1;
}

/* Read every line. Returns AV_OK (a missing file is empty), or an error.
 * |shared|: a configured tokens_file (a replica's read-only copy, e.g. a
 * Kubernetes Secret): it must exist, may be reached through a symbolic
 * link (Secret volumes swap a link to update), and may be readable by the
 * group (fsGroup makes Secret files 0440); it still must not be writable
 * by group or others, nor readable by others. It holds hashes only. */
static int tokens_read(const char *path, int shared, tok_line **out, size_t *n, char *err, size_t err_len)
{
    *out = NULL;
    *n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | (shared ? 0 : O_NOFOLLOW));
    if (fd < 0) {
        if (errno == ENOENT && !shared)
            return AV_OK;
        av__errf(err, err_len, "%s%s: %s", shared ? "tokens_file " : "", path, strerror(errno));
        return AV_ERR_IO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > TOKENS_FILE_MAX) {
        av__errf(err, err_len, "%s: not a regular file of at most 4 MiB", path);
        close(fd);
        return AV_ERR_IO;
    }
    if (st.st_mode & (shared ? 026 : 077)) {
        av__errf(err, err_len, "%s: permissions %04o are wider than %s", path, (unsigned)(st.st_mode & 07777),
                 shared ? "0640 (group or others may write, or others may read)" : "0600");
        close(fd);
        return AV_ERR_IO;
    }
    size_t size = (size_t)st.st_size;
    char *buf = av__malloc(size + 1);
    if (!buf) {
        close(fd);
        return AV_ERR_NOMEM;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    tok_line *lines = NULL;
    size_t cnt = 0;
    int rc = AV_OK, lineno = 0;
    for (char *p = buf; *p;) {
        char *nl = strchr(p, '\n');
        if (!nl) {
            av__errf(err, err_len, "%s:%d: truncated line", path, lineno + 1);
            rc = AV_ERR_PARSE;
            break;
        }
        *nl = '\0';
        lineno++;
        if (cnt >= TOKENS_MAX) {
            av__errf(err, err_len, "%s: more than %d tokens", path, TOKENS_MAX);
            rc = AV_ERR_LIMIT;
            break;
        }
        tok_line *nlines = av__realloc(lines, (cnt + 1) * sizeof(*lines));
        if (!nlines) {
            rc = AV_ERR_NOMEM;
            break;
        }
        lines = nlines;
        tok_line *t = &lines[cnt];
        memset(t, 0, sizeof(*t));
        char f[5][1024];
        int k = 0;
        char *s = p;
        for (; k < 5; k++) {
            char *tab = strchr(s, '\t');
            size_t l = tab ? (size_t)(tab - s) : strlen(s);
            if (l >= sizeof(f[k]) || (k < 4 && !tab))
                break;
            memcpy(f[k], s, l);
            f[k][l] = '\0';
            s = tab ? tab + 1 : s + l;
            if (!tab) {
                k++;
                break;
            }
        }
        char *end1 = NULL, *end2 = NULL;
        if (k != 5 || !name_ok(f[0]) || strlen(f[1]) != 64 || strspn(f[1], "0123456789abcdef") != 64 ||
            !services_ok(f[2])) {
            av__errf(err, err_len, "%s:%d: malformed token line", path, lineno);
            rc = AV_ERR_PARSE;
            break;
        }
        t->created = strtoll(f[3], &end1, 10);
        t->expires = strtoll(f[4], &end2, 10);
        if (!end1 || *end1 || !end2 || *end2) {
            av__errf(err, err_len, "%s:%d: malformed token line", path, lineno);
            rc = AV_ERR_PARSE;
            break;
        }
        snprintf(t->name, sizeof(t->name), "%.64s", f[0]);     /* name_ok: <= 64 */
        snprintf(t->hash, sizeof(t->hash), "%.64s", f[1]);     /* 64 hex digits */
        snprintf(t->services, sizeof(t->services), "%.1000s", f[2]);
        cnt++;
        p = nl + 1;
    }
    av__free(buf);
    if (rc != AV_OK) {
        av__free(lines);
        return rc;
    }
    *out = lines;
    *n = cnt;
    return AV_OK;
}

static int tokens_write(const char *path, const tok_line *lines, size_t n, char *err, size_t err_len)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp)) {
        av__errf(err, err_len, "%s: path too long", path);
        return AV_ERR_INVALID;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        av__errf(err, err_len, "%s: %s", tmp, strerror(errno));
        return AV_ERR_IO;
    }
    int rc = AV_OK;
    for (size_t i = 0; i < n && rc == AV_OK; i++) {
        char line[1400];
        int l = snprintf(line, sizeof(line), "%s\t%s\t%s\t%lld\t%lld\n", lines[i].name, lines[i].hash,
                         lines[i].services, lines[i].created, lines[i].expires);
        if (l < 0 || (size_t)l >= sizeof(line) || write(fd, line, (size_t)l) != l)
            rc = AV_ERR_IO;
    }
    if (rc == AV_OK && fsync(fd) != 0)
        rc = AV_ERR_IO;
    if (close(fd) != 0)
        rc = AV_ERR_IO;
    if (rc == AV_OK && rename(tmp, path) != 0)
        rc = AV_ERR_IO;
    if (rc != AV_OK) {
        av__errf(err, err_len, "%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
        return rc;
    }
    return AV_OK;
}

AV_EXPORT int av_tokens_create(const char *path, const char *name, const char *services, long long ttl_seconds,
                               char *token, size_t token_len, char *err, size_t err_len)
{
    if (!path || !name || !token || token_len < 48)
        return AV_ERR_INVALID;
    if (!services || !*services)
        services = "*";
    if (!name_ok(name)) {
        av__errf(err, err_len, "token name must be 1..64 of [A-Za-z0-9_.-]");
        return AV_ERR_INVALID;
    }
    if (!services_ok(services)) {
        av__errf(err, err_len, "services must be a comma-separated list of service names");
        return AV_ERR_INVALID;
    }
    if (ttl_seconds < 0) {
        av__errf(err, err_len, "ttl must not be negative");
        return AV_ERR_INVALID;
    }
    tok_line *lines = NULL;
    size_t n = 0;
    int rc = tokens_read(path, 0, &lines, &n, err, err_len);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++)
        if (strcmp(lines[i].name, name) == 0) {
            av__errf(err, err_len, "a token named %s exists (revoke it first)", name);
            av__free(lines);
            return AV_ERR_STATE;
        }
    uint8_t rnd[32], h[32];
    rc = av__crypto_random(rnd, sizeof(rnd));
    char tok[64] = "avt_";
    size_t o = 4;
    if (rc == AV_OK)
        o += av__b64_encode(rnd, sizeof(rnd), AV__B64_URL | AV__B64_NOPAD, tok + o);
    tok[o] = '\0';
    av__wipe(rnd, sizeof(rnd));
    if (rc == AV_OK)
        rc = av__crypto_sha256(tok, o, h);
    tok_line *nl = rc == AV_OK ? av__realloc(lines, (n + 1) * sizeof(*lines)) : NULL;
    if (!nl) {
        av__wipe(tok, sizeof(tok));
        av__free(lines);
        return rc ? rc : AV_ERR_NOMEM;
    }
    lines = nl;
    tok_line *t = &lines[n];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->hash[av__hex_encode(h, sizeof(h), AV__HEX_LOWER, t->hash)] = '\0';
    snprintf(t->services, sizeof(t->services), "%s", services);
    t->created = (long long)time(NULL);
    t->expires = ttl_seconds ? t->created + ttl_seconds : 0;
    rc = tokens_write(path, lines, n + 1, err, err_len);
    av__free(lines);
    if (rc == AV_OK)
        snprintf(token, token_len, "%s", tok);
    av__wipe(tok, sizeof(tok));
    return rc;
}

AV_EXPORT int av_tokens_revoke(const char *path, const char *name, char *err, size_t err_len)
{
    if (!path || !name)
        return AV_ERR_INVALID;
    tok_line *lines = NULL;
    size_t n = 0;
    int rc = tokens_read(path, 0, &lines, &n, err, err_len);
    if (rc)
        return rc;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(lines[i].name, name) != 0)
            lines[k++] = lines[i];
    if (k == n) {
        av__errf(err, err_len, "no token named %s", name);
        av__free(lines);
        return AV_ERR_NOTFOUND;
    }
    rc = tokens_write(path, lines, k, err, err_len);
    av__free(lines);
    return rc;
}

AV_EXPORT int av_tokens_list(const char *path, av_token_list_cb cb, void *ud, char *err, size_t err_len)
{
    if (!path || !cb)
        return AV_ERR_INVALID;
    tok_line *lines = NULL;
    size_t n = 0;
    int rc = tokens_read(path, 0, &lines, &n, err, err_len);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++)
        cb(ud, lines[i].name, lines[i].services, lines[i].created, lines[i].expires);
    av__free(lines);
    return AV_OK;
}

AV_EXPORT int av_config_load_tokens(av_config *cfg, const char *path)
{
    if (!cfg || !path)
        return AV_ERR_INVALID;
    tok_line *lines = NULL;
    size_t n = 0;
    int shared = cfg->tokens_file && strcmp(path, cfg->tokens_file) == 0;
    int rc = tokens_read(path, shared, &lines, &n, cfg->error, sizeof(cfg->error));
    if (rc)
        return rc;
    /* Once a store exists, revoking its last token must not open the proxy. */
    if (shared || access(path, F_OK) == 0)
        cfg->token_store = 1;
    av_token_cfg *nt = n ? av__realloc(cfg->tokens, (cfg->ntokens + n) * sizeof(*nt)) : cfg->tokens;
    if (n && !nt) {
        av__free(lines);
        return AV_ERR_NOMEM;
    }
    cfg->tokens = nt;
    rc = AV_OK;
    for (size_t i = 0; i < n && rc == AV_OK; i++) {
        av_token_cfg *t = &cfg->tokens[cfg->ntokens];
        memset(t, 0, sizeof(*t));
        t->hashed = 1;
        t->expires = lines[i].expires;
        size_t hn; /* 64 lower-case hex digits: checked when the line was read */
        if (av__hex_decode(lines[i].hash, 64, t->hash, sizeof(t->hash), &hn) != 0) {
            rc = AV_ERR_PARSE;
            break;
        }
        if (!(t->name = av__strdup(lines[i].name))) {
            rc = AV_ERR_NOMEM;
            break;
        }
        cfg->ntokens++;
        if (strcmp(lines[i].services, "*") != 0) {
            const char *p = lines[i].services;
            while (*p && rc == AV_OK) {
                size_t l = strcspn(p, ",");
                char **ns = av__realloc(t->services, (t->nservices + 1) * sizeof(*ns));
                if (!ns) {
                    rc = AV_ERR_NOMEM;
                    break;
                }
                t->services = ns;
                if (!(t->services[t->nservices] = av__malloc(l + 1))) {
                    rc = AV_ERR_NOMEM;
                    break;
                }
                memcpy(t->services[t->nservices], p, l);
                t->services[t->nservices][l] = '\0';
                t->nservices++;
                p += l;
                if (*p == ',')
                    p++;
            }
        }
    }
    av__free(lines);
    return rc;
}
