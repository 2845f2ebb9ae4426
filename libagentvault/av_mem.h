/* av_mem.h - allocation through the host's hooks (see av_set_allocator). */
#ifndef AV_MEM_H
#define AV_MEM_H

#include <stddef.h>

void *av__malloc(size_t size);
void *av__calloc(size_t n, size_t size);
void *av__realloc(void *ptr, size_t size);
void av__free(void *ptr);
/* av__strdup / av__strndup return NULL on allocation failure or NULL input. */
char *av__strdup(const char *s);
char *av__strndup(const char *s, size_t n);
/* av__memdup copies |n| bytes; returns NULL on failure. */
void *av__memdup(const void *p, size_t n);
/* av__wipe clears memory in a way the compiler cannot elide. */
void av__wipe(void *p, size_t n);

#endif
