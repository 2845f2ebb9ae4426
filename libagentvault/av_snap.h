/* av_snap.h - configuration snapshots.
 *
 * A snapshot is a configuration and everything derived from it that a
 * reload replaces: the secrets cache (its own resolver), the resolved
 * proxy and gateway tokens, the per-token rate buckets, the compiled
 * scrub patterns and the parent proxies (av_parent.h). Connections and exchanges hold a reference to the
 * snapshot they started with, so in-flight exchanges finish on the old one
 * while new connections use the new one; a connection moves to the current
 * snapshot between requests, carrying its proxy token over by name
 * (av__snap_carry_token).
 *
 * Workers ([proxy] workers): the configuration, the resolved tokens and
 * gateway tokens, the parent proxies and the rate buckets form the
 * snapshot's core, built once per reload and shared by every worker
 * (reference-counted atomically; the buckets are atomics). Each worker
 * makes its own av_snap around the core on its loop: the secrets resolver,
 * the scrub cache and the minted credentials belong to one loop. The
 * resolvers share their command: answers through the core (one run per
 * TTL for the process: av_resolver.h); callback: answers and minted
 * credentials are per worker. An av_snap's own
 * reference count is for its loop thread only.
 *
 * A leaf of the connection layer: includes nothing above it.
 */
#ifndef AV_SNAP_H
#define AV_SNAP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "av_config.h"
#include "av_ev.h"
#include "av_resolver.h"
#include "av_secret.h"

/* A token's rate bucket, shared by the workers: the time the bucket would
 * be full again (GCRA, the token bucket as one number: the bits of a
 * double, in loop time), taken with compare-and-swap. */
typedef struct av_bucket {
    _Atomic uint64_t tat;
} av_bucket;

#define AV_SCRUB_CACHE 32

struct av_scrub_set;
struct av_parents;
struct av_mint;
typedef struct av_snap_core av_snap_core;

typedef struct av_snap {
    int refs;             /* this loop's references */
    struct av_snap_core *core; /* shared by the workers: owns cfg, tokens, buckets, gw_tokens, parents */
    av_config *cfg;
    av_resolver *resolver;
    av_secret **tokens;   /* resolved proxy tokens, parallel to cfg->tokens */
    av_bucket *buckets;   /* per-token rate limits, parallel to cfg->tokens */
    av_secret **gw_tokens; /* resolved gateway tokens, parallel to cfg->gateways (NULL: none) */
    struct {              /* compiled scrub patterns per resolved secret */
        av_secret *secret;  /* a reference: the pointer identifies it */
        struct av_scrub_set *set;
    } scrub[AV_SCRUB_CACHE];
    size_t scrub_next;
    struct av_parents *parents; /* parent proxies, credentials resolved (NULL: none) */
    /* Minted credentials (secret = oauth2:...; av_mint.h): made on first
     * use by the exchange (a layer above), freed through |mint_free|. */
    struct av_mint *mint;
    void (*mint_free)(struct av_mint *m);
} av_snap;

/* av__snap_new builds a snapshot around |cfg| (owned, also on failure): a
 * resolver of its own on |loop|, and the proxy and gateway tokens resolved
 * now (failing later would lock agents out). Rate buckets start full at
 * loop time |now|. Returns AV_OK with one reference, or an error with
 * |err|. */
int av__snap_new(av_loop *loop, av_config *cfg, double now, av_snap **out, char *err, size_t err_len);
/* av__snap_core_ref: a new reference to |s|'s core, for another worker
 * (any thread may hold and release it). */
av_snap_core *av__snap_core_ref(const av_snap *s);
void av__snap_core_unref(av_snap_core *core);
/* av__snap_from_core: a snapshot for the worker on |loop| around |core|
 * (the reference is taken over, also on failure): its own resolver, scrub
 * cache and minted credentials. AV_OK or AV_ERR_NOMEM. Call it on |loop|'s
 * thread, or before that thread starts. */
int av__snap_from_core(av_loop *loop, av_snap_core *core, av_snap **out);
av_snap *av__snap_ref(av_snap *s);
void av__snap_unref(av_snap *s);

/* The scrub pattern set for |secret| (a new reference; built and cached
 * on first use), or NULL when it cannot be built. */
struct av_scrub_set *av__snap_scrub_set(av_snap *s, av_secret *secret);

/* av__snap_find_token: the index of the proxy token |tok| (the secret an
 * agent presented) in |s|, or -1. Every token is compared (constant time
 * per token); hashed tokens (the token store) must not have expired at
 * wall-clock time |now|. */
int av__snap_find_token(const av_snap *s, const uint8_t *tok, size_t len, long long now);

/* av__snap_carry_token: token |old_tok| of |old| seen from |cur| (a
 * reload): the index of the token with the same name, the same secret (or
 * hash) and not expired at |now|, else -1 (revoked or changed). */
int av__snap_carry_token(const av_snap *old, int old_tok, const av_snap *cur, long long now);

/* av__snap_mint_share: the workers' shared state of the minted
 * credentials of |s|'s core (av_mint.h), made by |make| on first use (any
 * worker; under the core's lock) and freed with the core by |free_fn|.
 * NULL when it cannot be made. */
void *av__snap_mint_share(av_snap *s, void *(*make)(const av_config *cfg), void (*free_fn)(void *));

/* av__snap_rate_take takes one request from token |token|'s bucket at loop
 * time |now| (refilled at the token's rate per second up to its burst).
 * AV_OK when allowed or the token has no rate; AV_ERR_LIMIT when empty,
 * with the seconds to wait in |*retry_after|. Lock-free: every worker takes
 * from the same bucket (a rate is per process, not per worker). */
int av__snap_rate_take(av_snap *s, int token, double now, int *retry_after);

#endif
