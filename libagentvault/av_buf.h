/* av_buf.h - bounded byte buffers.
 *
 * An av_buf holds bytes [off, off+len) of |data|; it grows on demand up to
 * |max| bytes and never beyond. Consuming from the front is O(1); space is
 * reclaimed by compaction when appending needs it.
 */
#ifndef AV_BUF_H
#define AV_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct av_buf {
    uint8_t *data;
    size_t off;  /* start of unread bytes */
    size_t len;  /* number of unread bytes */
    size_t cap;  /* allocated size of data */
    size_t max;  /* hard upper bound for cap */
} av_buf;

void av__buf_init(av_buf *b, size_t max);
/* av__buf_free releases the storage (wiping it first when |wipe|). */
void av__buf_free(av_buf *b);
void av__buf_free_wipe(av_buf *b);

static inline const uint8_t *av__buf_head(const av_buf *b) { return b->data ? b->data + b->off : b->data; }
static inline size_t av__buf_len(const av_buf *b) { return b->len; }
/* Bytes that can still be appended without exceeding max. */
static inline size_t av__buf_room(const av_buf *b) { return b->max - b->len; }

/* av__buf_reserve makes at least |n| contiguous bytes writable at the tail
 * (n <= room) and returns a pointer to them; AV_ERR_* via NULL + *err.
 * After writing, call av__buf_commit(b, written). */
uint8_t *av__buf_reserve(av_buf *b, size_t n, int *err);
void av__buf_commit(av_buf *b, size_t n);
/* av__buf_tail_space reserves as much as possible (up to room, at least
 * min(room, 4096)) and returns the writable size in *n. */
uint8_t *av__buf_tail(av_buf *b, size_t *n, int *err);

/* av__buf_append copies |n| bytes; AV_ERR_LIMIT if they do not fit,
 * AV_ERR_NOMEM. Nothing is appended on failure. */
int av__buf_append(av_buf *b, const void *p, size_t n);
int av__buf_append_str(av_buf *b, const char *s);
/* av__buf_appendf formats like snprintf; AV_ERR_LIMIT if it does not fit. */
int av__buf_appendf(av_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* av__buf_truncate drops what was appended after the buffer held |len|
 * unread bytes (nothing consumed since): undoes a half-written message. */
static inline void av__buf_truncate(av_buf *b, size_t len) { if (len < b->len) b->len = len; }
void av__buf_consume(av_buf *b, size_t n);
void av__buf_reset(av_buf *b);

#endif
