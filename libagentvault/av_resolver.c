/* av_resolver.c - credential resolver: env: and file: sources, cached by
 * reference string. Reasons name the reference, never the value.
 */
#include "av_resolver.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#include "av_mem.h"

#define FILE_SECRET_MAX (64 * 1024)

typedef struct cache_entry {
    char *ref;
    av_secret *secret;
} cache_entry;

struct av_resolver {
    cache_entry *entries;
    size_t n;
};

/* av__resolver_new creates an empty resolver. Returns AV_ERR_INVALID or
 * AV_ERR_NOMEM. */
int av__resolver_new(av_resolver **out)
{
    if (!out)
        return AV_ERR_INVALID;
    *out = av__calloc(1, sizeof(**out));
    return *out ? AV_OK : AV_ERR_NOMEM;
}

/* av__resolver_free drops every cached secret (wiped by its last
 * reference) and frees the resolver. NULL is a no-op. */
void av__resolver_free(av_resolver *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++) {
        av__free(r->entries[i].ref);
        av__secret_free(r->entries[i].secret);
    }
    av__free(r->entries);
    av__free(r);
}

/* env_name_valid checks [A-Za-z_][A-Za-z0-9_]*. */
static int env_name_valid(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return 0;
    for (s++; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
              (*s >= '0' && *s <= '9') || *s == '_'))
            return 0;
    return 1;
}

/* av__secret_ref_valid returns 1 for "env:NAME" or "file:/absolute/path"
 * (no control characters), else 0. */
int av__secret_ref_valid(const char *ref)
{
    if (!ref)
        return 0;
    if (strncmp(ref, "env:", 4) == 0)
        return env_name_valid(ref + 4);
    if (strncmp(ref, "file:", 5) == 0) {
        const char *p = ref + 5;
        if (p[0] != '/' || p[1] == '\0')
            return 0;
        for (; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                return 0;
        return 1;
    }
    return 0;
}

/* say writes a reason into |why| when the caller gave room for one. */
static void say(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t why_len, const char *fmt, ...)
{
    if (!why || why_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

/* resolve_env reads an environment variable. */
static int resolve_env(const char *name, av_secret **out, char *why, size_t why_len)
{
    const char *v = getenv(name);
    if (!v) {
        say(why, why_len, "environment variable %s is not set", name);
        return AV_ERR_SECRET;
    }
    if (!*v) {
        say(why, why_len, "environment variable %s is empty", name);
        return AV_ERR_SECRET;
    }
    *out = av__secret_new(v, strlen(v));
    return *out ? AV_OK : AV_ERR_NOMEM;
}

/* resolve_file reads a whole regular file of at most FILE_SECRET_MAX
 * bytes, dropping one trailing "\n" or "\r\n". */
static int resolve_file(const char *path, av_secret **out, char *why, size_t why_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        say(why, why_len, "cannot read %s: %s", path, strerror(errno));
        return AV_ERR_SECRET;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        say(why, why_len, "cannot read %s: %s", path, strerror(errno));
        close(fd);
        return AV_ERR_SECRET;
    }
    if (!S_ISREG(st.st_mode)) {
        say(why, why_len, "cannot read %s: not a regular file", path);
        close(fd);
        return AV_ERR_SECRET;
    }
    if (st.st_size > FILE_SECRET_MAX) {
        say(why, why_len, "%s is larger than 64 KiB", path);
        close(fd);
        return AV_ERR_SECRET;
    }
    /* One byte more than the limit detects a file that grew meanwhile. */
    size_t cap = FILE_SECRET_MAX + 1, len = 0;
    char *buf = av__malloc(cap);
    if (!buf) {
        close(fd);
        return AV_ERR_NOMEM;
    }
    int rc = AV_OK;
    while (len < cap) {
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            say(why, why_len, "cannot read %s: %s", path, strerror(errno));
            rc = AV_ERR_SECRET;
            break;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (rc == AV_OK && len > FILE_SECRET_MAX) {
        say(why, why_len, "%s is larger than 64 KiB", path);
        rc = AV_ERR_SECRET;
    }
    if (rc == AV_OK) {
        size_t n = len;
        if (n > 0 && buf[n - 1] == '\n') {
            n--;
            if (n > 0 && buf[n - 1] == '\r')
                n--;
        }
        if (n == 0) {
            say(why, why_len, "secret file %s is empty", path);
            rc = AV_ERR_SECRET;
        } else {
            *out = av__secret_new(buf, n);
            if (!*out)
                rc = AV_ERR_NOMEM;
        }
    }
    av__wipe(buf, len);
    av__free(buf);
    return rc;
}

/* av__resolver_get resolves |ref| (cached after the first success).
 * Returns AV_ERR_SECRET, AV_ERR_INVALID or AV_ERR_NOMEM. */
int av__resolver_get(av_resolver *r, const char *ref, av_secret **out,
                     char *why, size_t why_len)
{
    if (why && why_len)
        why[0] = '\0';
    if (!r || !ref || !out)
        return AV_ERR_INVALID;
    *out = NULL;
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->entries[i].ref, ref) == 0) {
            *out = av__secret_ref(r->entries[i].secret);
            return AV_OK;
        }
    if (!av__secret_ref_valid(ref)) {
        say(why, why_len, "unsupported secret reference (expected env:NAME or file:/path)");
        return AV_ERR_INVALID;
    }

    av_secret *s = NULL;
    int rc = ref[0] == 'e' ? resolve_env(ref + 4, &s, why, why_len)
                           : resolve_file(ref + 5, &s, why, why_len);
    if (rc != AV_OK)
        return rc;

    cache_entry *ne = av__realloc(r->entries, (r->n + 1) * sizeof(*ne));
    char *key = av__strdup(ref);
    if (!ne || !key) {
        if (ne)
            r->entries = ne;
        av__free(key);
        av__secret_free(s);
        return AV_ERR_NOMEM;
    }
    r->entries = ne;
    r->entries[r->n].ref = key;
    r->entries[r->n].secret = s;
    r->n++;
    *out = av__secret_ref(s);
    return AV_OK;
}
