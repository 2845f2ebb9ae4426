/* av_mint.h - credentials minted at a token endpoint (secret = oauth2:...,
 * gcp:service_account, github_app:).
 *
 * One av_mint per configuration snapshot holds, per service that mints,
 * the current token, when to refresh it and when to stop using it, a
 * failure remembered for a moment, the mint in progress and the exchanges
 * waiting for it:
 *
 *  - A token is used until its lifetime (expires_in, else the secret_ttl)
 *    minus min(5 s, a tenth of it); from the lifetime minus min(60 s, a
 *    third of it) on, the next request starts a new mint in the
 *    background and is still served the current token (refresh before
 *    expiry). A new token is served for at least a second whatever its
 *    lifetime.
 *  - One mint at a time per service (single flight): everyone who asks
 *    while it runs waits for it, like a command: secret (av_resolver.h).
 *  - A failure (unreachable, TLS, a non-2xx answer, an error code, a
 *    response that is not a token) is the answer for FAIL seconds, then
 *    the next request mints again: no retry loop.
 *  - av__mint_invalidate drops a token an origin refused (401), so the
 *    next request mints a new one.
 *
 * A minter (av_minter) knows one kind of grant: it builds the token
 * request (a form body and an optional Authorization value) from the
 * service and its resolved client credential, and parses the answer. The
 * rest (cache, single flight, timing, the HTTP exchange through
 * av_upstream: SSRF guard, --resolve overrides, parent proxy, verified
 * TLS, the connect timeout plus the header timeout for the whole mint)
 * is shared. The client credential is resolved through the snapshot's
 * resolver (any reference; command: waits asynchronously).
 *
 * oauth2:refresh_token reads its refresh token from the configuration's
 * vault, the file read again before each mint (av__vault_reload: a token
 * set by 'agentvault secret set' or saved by another snapshot is the one
 * used). When the answer carries a different refresh token (rotation),
 * it is written back (av__vault_update: under the CLI's writers' lock
 * PATH.lock, the file re-read so other entries are kept, saved
 * atomically) before the new access token is used. The lock is only ever
 * tried without blocking, again every MINT_LOCK_RETRY seconds for at most
 * MINT_LOCK_WAIT seconds (the loop never waits for it). A write-back that
 * fails ends the mint as a failure (logged as an error naming the vault
 * file; the new access token is dropped): the next mint tries again.
 *
 * Workers: every worker has its own av_mint (its loop runs the mints it
 * starts), joined to one av_mint_share per configuration snapshot
 * (av__mint_join): the current token of each service, its timing, a
 * failure, and which worker mints now. A worker that needs a token another
 * worker is minting waits for that mint (woken on its own loop), so a
 * service mints once for the process, not once per worker, and a rotated
 * refresh token is never sent twice. The share's lock is held for slot
 * work only, never across a mint.
 *
 * Loop thread only (an av_mint_share: any thread).
 */
#ifndef AV_MINT_H
#define AV_MINT_H

#include <stddef.h>

#include "av_buf.h"
#include "av_config.h"
#include "av_oauth.h"
#include "av_pool.h"
#include "av_resolver.h"
#include "av_secret.h"

typedef struct av_mint av_mint;
typedef struct av_mint_wait av_mint_wait;

#define AV_MINT_URL_MAX 2048

/* What a minter's build step makes of one token request. */
typedef struct av_mint_req {
    av_buf *body;             /* the request body (empty on entry) */
    av_secret *auth;          /* the Authorization value, a new secret (NULL: none) */
    char url[AV_MINT_URL_MAX + 1]; /* the endpoint; "": the service's token_url */
    const char *content_type; /* NULL: application/x-www-form-urlencoded */
    const char *accept;       /* NULL: application/json */
    const char *extra_name;   /* one more header field (NULL: none) */
    const char *extra_value;
    char why[200];            /* a failure's reason (never a secret) */
} av_mint_req;

typedef struct av_minter {
    const char *name; /* "oauth2:client_credentials": logs */
    /* The request into |req|; |cred| is the resolved client_secret (oauth2:,
     * NULL: none) or key (gcp:, github_app:), |grant| the grant's own
     * credential (the refresh token; NULL otherwise). AV_OK or an error
     * (the reason in req->why when there is one to give). */
    int (*build)(const av_service *svc, const av_secret *cred, const av_secret *grant, av_mint_req *req);
    /* Parse an answer's body (a 2xx one; others for an error code). */
    int (*parse)(const av_service *svc, const uint8_t *p, size_t n, av_oauth_token *out, char *why, size_t why_len);
} av_minter;

/* The minter of a service's kind (AV_MINT_*), or NULL. */
const av_minter *av__minter_of(int kind);

/* How an exchange got its token (the audit's "mint" field). */
enum { AV_MINT_HOW_NONE = 0, AV_MINT_HOW_CACHED = 1, AV_MINT_HOW_MINTED = 2 };

int av__mint_new(av_mint **out, av_loop *loop, const av_config *cfg, av_resolver *resolver);
/* Cancels mints in progress (their waiters are never called). */
void av__mint_free(av_mint *m);

/* The workers' shared state (see above): made for |cfg| (NULL: out of
 * memory) and freed with its snapshot (av__snap_mint_share). */
typedef struct av_mint_share av_mint_share;
void *av__mint_share_new(const av_config *cfg);
void av__mint_share_free(void *share);
/* |m| joins |share| (on |m|'s loop thread). AV_OK or AV_ERR_NOMEM. */
int av__mint_join(av_mint *m, av_mint_share *share);

/* av__mint_get_async: service |svc| (an index into cfg->services)'s
 * token as a new reference in *out (AV_OK); or AV_ERR_AGAIN with *wait
 * set, |done| called from the loop when asking again will answer; or
 * AV_ERR_SECRET with a one-line reason in |why| (never a token, never the
 * endpoint's body). |pool| dials the token endpoint. */
int av__mint_get_async(av_mint *m, av_pool *pool, size_t svc, av_secret **out, char *why, size_t why_len,
                       av_resolver_done done, void *ud, av_mint_wait **wait);
void av__mint_cancel(av_mint_wait *w);

/* av__mint_invalidate forgets service |svc|'s token if it is still |used|
 * (an origin answered 401 to a request that carried it). */
void av__mint_invalidate(av_mint *m, size_t svc, const av_secret *used);

#endif
