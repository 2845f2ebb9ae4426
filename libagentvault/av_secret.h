/* av_secret.h - a credential value.
 *
 * An av_secret owns a copy of the bytes, wipes them on free, and has no
 * formatting function: the only way to get at the bytes is
 * av__secret_data(), which call sites use to write them onto the wire.
 * Never pass the result to a log or error-message function.
 */
#ifndef AV_SECRET_H
#define AV_SECRET_H

#include <stddef.h>
#include <stdint.h>

typedef struct av_secret av_secret;

/* av__secret_new copies |len| bytes; NULL on allocation failure. */
av_secret *av__secret_new(const void *data, size_t len);
/* av__secret_dup adds a reference (secrets are immutable, refcounted). */
av_secret *av__secret_ref(av_secret *s);
/* av__secret_free drops a reference; the last one wipes and frees. */
void av__secret_free(av_secret *s);

const uint8_t *av__secret_data(const av_secret *s);
size_t av__secret_len(const av_secret *s);
/* av__secret_equal compares in constant time for equal lengths. */
int av__secret_equal(const av_secret *s, const void *data, size_t len);

#endif
