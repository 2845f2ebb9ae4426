/* av_err.h - the library's one formatter of one-line error messages. */
#ifndef AV_ERR_H
#define AV_ERR_H

#include <stddef.h>

/* av__errf formats a one-line message into |err| (nothing when |err| is
 * NULL or |len| is 0). Callers that fill a caller's error buffer use it. */
void av__errf(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
