/* av_buf.c - bounded byte buffers. */
#include "av_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_mem.h"

void av__buf_init(av_buf *b, size_t max)
{
    memset(b, 0, sizeof(*b));
    b->max = max;
}

void av__buf_free(av_buf *b)
{
    av__free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

void av__buf_free_wipe(av_buf *b)
{
    av__wipe(b->data, b->cap);
    av__buf_free(b);
}

uint8_t *av__buf_reserve(av_buf *b, size_t n, int *err)
{
    if (n > av__buf_room(b)) {
        if (err)
            *err = AV_ERR_LIMIT;
        return NULL;
    }
    if (b->off + b->len + n <= b->cap)
        return b->data + b->off + b->len;
    /* Compact first: move unread bytes to the front. */
    if (b->off) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
        if (b->len + n <= b->cap)
            return b->data + b->len;
    }
    size_t want = b->cap ? b->cap : 1024;
    while (want < b->len + n)
        want *= 2;
    if (want > b->max)
        want = b->max;
    /* Grow by copy-and-wipe, not realloc: buffers may hold credential
     * bytes, and a freed old block must not keep them. Growth is rare
     * (a handful of doublings per buffer). */
    uint8_t *d = av__malloc(want);
    if (!d) {
        if (err)
            *err = AV_ERR_NOMEM;
        return NULL;
    }
    if (b->data) {
        memcpy(d, b->data, b->len);
        av__wipe(b->data, b->cap);
        av__free(b->data);
    }
    b->data = d;
    b->cap = want;
    return b->data + b->len;
}

uint8_t *av__buf_tail(av_buf *b, size_t *n, int *err)
{
    size_t room = av__buf_room(b);
    if (room == 0) {
        *n = 0;
        if (err)
            *err = AV_ERR_LIMIT;
        return NULL;
    }
    size_t free_now = b->cap - b->off - b->len;
    size_t want = free_now;
    if (want < 4096)
        want = room < 4096 ? room : 4096;
    uint8_t *p = av__buf_reserve(b, want, err);
    if (!p) {
        *n = 0;
        return NULL;
    }
    *n = b->cap - b->off - b->len;
    if (*n > room)
        *n = room;
    return p;
}

void av__buf_commit(av_buf *b, size_t n)
{
    b->len += n;
}

int av__buf_append(av_buf *b, const void *p, size_t n)
{
    int err = 0;
    if (n == 0)
        return AV_OK;
    uint8_t *dst = av__buf_reserve(b, n, &err);
    if (!dst)
        return err;
    memcpy(dst, p, n);
    b->len += n;
    return AV_OK;
}

int av__buf_append_str(av_buf *b, const char *s)
{
    return av__buf_append(b, s, strlen(s));
}

int av__buf_appendf(av_buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return AV_ERR_INVALID;
    if ((size_t)n < sizeof(small))
        return av__buf_append(b, small, (size_t)n);
    int err = 0;
    uint8_t *dst = av__buf_reserve(b, (size_t)n + 1, &err);
    if (!dst)
        return err;
    va_start(ap, fmt);
    vsnprintf((char *)dst, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return AV_OK;
}

void av__buf_consume(av_buf *b, size_t n)
{
    if (n >= b->len) {
        b->off = 0;
        b->len = 0;
        return;
    }
    b->off += n;
    b->len -= n;
}

void av__buf_reset(av_buf *b)
{
    b->off = 0;
    b->len = 0;
}
