/* av_resolver.h - credential resolver: secret references -> av_secret.
 *
 * Sources:
 *  - "env:NAME": the process environment, read once at first use.
 *  - "file:PATH": the whole file, one trailing "\n" or "\r\n" removed; files
 *    over 64 KiB are refused.
 *  - "vault:NAME": the encrypted store, through the getter installed with
 *    av__resolver_set_vault.
 *  - "command:/abs/path arg...": run without a shell (arguments split on
 *    blanks; '...' and "..." quote), stdin /dev/null, stderr discarded,
 *    stdout (at most 64 KiB, one trailing newline removed) is the secret. It
 *    must exit 0 within the command timeout (else it is killed). Its answer
 *    is cached for the TTL.
 *
 * Resolved secrets are cached in memory by reference string. env:, file:
 * and vault: are cached for the resolver's life (a reload builds a new
 * resolver); command: for the TTL. Everything is wiped on eviction and
 * when the resolver is freed. A failed command is remembered for a second,
 * so a burst of requests does not start a burst of commands.
 *
 * Two ways to ask:
 *  - av__resolver_get answers at once. A command: reference without a
 *    fresh cached value is run to completion, blocking (startup only).
 *  - av__resolver_get_async never blocks. When the answer is not ready it
 *    returns AV_ERR_AGAIN, starts the command (once, however many ask), and
 *    calls |done| from the event loop when asking again will answer.
 *    Cancel with av__resolver_cancel if the asker goes away first.
 */
#ifndef AV_RESOLVER_H
#define AV_RESOLVER_H

#include <stddef.h>

#include <agentvault/agentvault.h>

#include "av_ev.h"
#include "av_secret.h"

typedef struct av_resolver av_resolver;
typedef struct av_resolver_wait av_resolver_wait;

typedef void (*av_resolver_done)(void *ud);
/* A vault lookup: AV_OK with *out, or AV_ERR_SECRET with a reason. */
typedef int (*av_vault_getter)(void *ud, const char *name, av_secret **out, char *why, size_t why_len);

#define AV_RESOLVER_DEFAULT_TTL 300.0
#define AV_RESOLVER_DEFAULT_CMD_TIMEOUT 10.0

int av__resolver_new(av_resolver **out);
void av__resolver_free(av_resolver *r);

/* av__resolver_set_loop enables asynchronous command: resolution.
 * |ttl| caches command answers (seconds, >= 0); |timeout| bounds a run. */
void av__resolver_set_loop(av_resolver *r, av_loop *loop, double ttl, double timeout);
void av__resolver_set_vault(av_resolver *r, av_vault_getter get, void *ud);
/* callback:NAME asks the embedder (av_config_set_secret_fn); the answer is
 * cached for the TTL like a command's. */
void av__resolver_set_callback(av_resolver *r, av_secret_fn fn, void *ud);

/* av__resolver_get resolves |ref|. On success *out holds a new reference
 * (free with av__secret_free). Errors: AV_ERR_SECRET with a reason in
 * |why| (never containing the value: e.g. "environment variable
 * OPENAI_API_KEY is not set", "cannot read /run/x: Permission denied",
 * "command /usr/bin/x exited with status 1", "secret is empty"),
 * AV_ERR_INVALID for an unknown scheme, AV_ERR_NOMEM. */
int av__resolver_get(av_resolver *r, const char *ref, av_secret **out, char *why, size_t why_len);

/* av__resolver_get_async: as above, or AV_ERR_AGAIN with *wait set (see
 * the file comment). */
int av__resolver_get_async(av_resolver *r, const char *ref, av_secret **out, char *why, size_t why_len,
                           av_resolver_done done, void *ud, av_resolver_wait **wait);
void av__resolver_cancel(av_resolver_wait *w);

/* Workers: the resolvers of one reload's workers share their command:
 * answers (av_snap.h). A command without a fresh shared answer runs on
 * the worker that asks first; the others asking meanwhile wait for that
 * run (woken on their own loops). Any thread may free a member while
 * others run; the share outlives its members. */
typedef struct av_resolver_share av_resolver_share;
int av__resolver_share_new(av_resolver_share **out);
void av__resolver_share_free(av_resolver_share *s);
/* |r| joins |s| (after av__resolver_set_loop; a resolver without a loop
 * does not share). */
void av__resolver_set_share(av_resolver *r, av_resolver_share *s);

/* av__secret_ref_valid checks the syntax of a reference: "env:NAME" with
 * NAME of [A-Za-z_][A-Za-z0-9_]*, "file:/absolute/path", "vault:NAME" with
 * NAME of [A-Za-z0-9_.-]{1,64}, or "command:/absolute/path [args]" with
 * balanced quotes. Returns 1 when valid, else 0. */
int av__secret_ref_valid(const char *ref);

#endif
