/* av_resolver.h - credential resolver: secret references -> av_secret.
 *
 * Sources: "env:NAME" (read from the process environment once, at first
 * use) and "file:PATH" (whole file, one trailing "\n" or "\r\n" removed;
 * files over 64 KiB are refused). Resolved secrets are cached in memory and
 * wiped when the resolver is freed. Later issues add vault:, command: and
 * a deferred callback; the API already allows AV_ERR_DEFERRED.
 */
#ifndef AV_RESOLVER_H
#define AV_RESOLVER_H

#include <stddef.h>

#include "av_secret.h"

typedef struct av_resolver av_resolver;

int av__resolver_new(av_resolver **out);
void av__resolver_free(av_resolver *r);

/* av__resolver_get resolves |ref|. On success *out holds a new reference
 * (free with av__secret_free). Errors: AV_ERR_SECRET with a reason in
 * |why| (never containing the value: e.g. "environment variable
 * OPENAI_API_KEY is not set", "cannot read /run/x: Permission denied",
 * "secret is empty"), AV_ERR_INVALID for an unknown scheme, AV_ERR_NOMEM. */
int av__resolver_get(av_resolver *r, const char *ref, av_secret **out,
                     char *why, size_t why_len);

/* av__secret_ref_valid checks the syntax of a reference ("env:NAME" with
 * NAME of [A-Za-z_][A-Za-z0-9_]*, or "file:/absolute/path"). Returns 1
 * when valid, else 0. */
int av__secret_ref_valid(const char *ref);

#endif
