/* av_mem.c - allocator hooks. */
#include "av_mem.h"

#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

static av_malloc_fn g_malloc;
static av_realloc_fn g_realloc;
static av_free_fn g_free;
static void *g_user;

/* The daemon's static copy (agentvault_util, AV_MEM_UTIL_COPY) leaves the
 * public setter out: the daemon's av_set_allocator call (daemon/fault.c)
 * must bind to libagentvault.so's, whose hooks the library uses. */
#ifndef AV_MEM_UTIL_COPY
AV_EXPORT int av_set_allocator(av_malloc_fn malloc_fn, av_realloc_fn realloc_fn,
                               av_free_fn free_fn, void *user_data)
{
    int given = (malloc_fn != NULL) + (realloc_fn != NULL) + (free_fn != NULL);
    if (given != 0 && given != 3)
        return AV_ERR_INVALID;
    g_malloc = malloc_fn;
    g_realloc = realloc_fn;
    g_free = free_fn;
    g_user = user_data;
    return AV_OK;
}
#endif

void *av__malloc(size_t size)
{
    if (size == 0)
        size = 1;
    return g_malloc ? g_malloc(size, g_user) : malloc(size);
}

void *av__calloc(size_t n, size_t size)
{
    if (size != 0 && n > (size_t)-1 / size)
        return NULL;
    void *p = av__malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void *av__realloc(void *ptr, size_t size)
{
    if (size == 0)
        size = 1;
    return g_realloc ? g_realloc(ptr, size, g_user) : realloc(ptr, size);
}

void av__free(void *ptr)
{
    if (!ptr)
        return;
    if (g_free)
        g_free(ptr, g_user);
    else
        free(ptr);
}

AV_EXPORT void av_free(void *ptr)
{
    av__free(ptr);
}

char *av__strndup(const char *s, size_t n)
{
    if (!s)
        return NULL;
    char *d = av__malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *av__strdup(const char *s)
{
    return s ? av__strndup(s, strlen(s)) : NULL;
}

void *av__memdup(const void *p, size_t n)
{
    void *d = av__malloc(n);
    if (d && n)
        memcpy(d, p, n);
    return d;
}

void av__wipe(void *p, size_t n)
{
    if (!p || !n)
        return;
    memset(p, 0, n);
    /* A compiler barrier: the store above cannot be proven dead. */
    __asm__ __volatile__("" : : "r"(p) : "memory");
}
