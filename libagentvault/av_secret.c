/* av_secret.c - wiped, refcounted credential values. */
#include "av_secret.h"

#include <stdatomic.h>
#include <string.h>

#include "av_mem.h"

struct av_secret {
    atomic_uint refs; /* atomic: workers share resolved tokens and vault values */
    size_t len;
    uint8_t bytes[];
};

av_secret *av__secret_new(const void *data, size_t len)
{
    av_secret *s = av__malloc(sizeof(*s) + len + 1);
    if (!s)
        return NULL;
    atomic_init(&s->refs, 1);
    s->len = len;
    if (len)
        memcpy(s->bytes, data, len);
    s->bytes[len] = 0;
    return s;
}

av_secret *av__secret_ref(av_secret *s)
{
    if (s)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void av__secret_free(av_secret *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) > 1)
        return;
    av__wipe(s->bytes, s->len + 1);
    s->len = 0;
    av__free(s);
}

const uint8_t *av__secret_data(const av_secret *s)
{
    return s->bytes;
}

size_t av__secret_len(const av_secret *s)
{
    return s->len;
}

int av__secret_equal(const av_secret *s, const void *data, size_t len)
{
    if (!s || s->len != len)
        return 0;
    const uint8_t *a = s->bytes, *b = data;
    uint8_t diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= (uint8_t)(a[i] ^ b[i]);
    return diff == 0;
}
