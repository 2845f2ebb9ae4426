/* av_snap.c - configuration snapshots (see av_snap.h). */
#include "av_snap.h"
#include "av_err.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_crypto.h"
#include "av_mem.h"
#include "av_parent.h"
#include "av_scrub.h"

/* What every worker's snapshot of one reload shares (see av_snap.h):
 * immutable once built, except the buckets (atomics) and the reference
 * count (atomic). */
struct av_snap_core {
    atomic_int refs;
    av_config *cfg;
    av_secret **tokens;
    av_bucket *buckets;
    av_secret **gw_tokens;
    struct av_parents *parents;
    av_resolver_share *share; /* the workers' command: answers */
    pthread_mutex_t mlock;    /* guards the two below */
    void *mint_share;         /* the workers' minted credentials (av_mint.h), made on first use */
    void (*mint_share_free)(void *);
};

void *av__snap_mint_share(av_snap *s, void *(*make)(const av_config *cfg), void (*free_fn)(void *))
{
    av_snap_core *c = s->core;
    pthread_mutex_lock(&c->mlock);
    if (!c->mint_share && (c->mint_share = make(c->cfg)) != NULL)
        c->mint_share_free = free_fn;
    void *sh = c->mint_share;
    pthread_mutex_unlock(&c->mlock);
    return sh;
}

static uint64_t double_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static double bits_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

av_snap_core *av__snap_core_ref(const av_snap *s)
{
    atomic_fetch_add_explicit(&s->core->refs, 1, memory_order_relaxed);
    return s->core;
}

void av__snap_core_unref(av_snap_core *c)
{
    if (!c || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) > 1)
        return;
    if (c->tokens) {
        for (size_t i = 0; i < c->cfg->ntokens; i++)
            av__secret_free(c->tokens[i]);
        av__free(c->tokens);
    }
    av__free(c->buckets);
    if (c->gw_tokens) {
        for (size_t i = 0; i < c->cfg->ngateways; i++)
            av__secret_free(c->gw_tokens[i]);
        av__free(c->gw_tokens);
    }
    av__parents_free(c->parents);
    av__resolver_share_free(c->share);
    if (c->mint_share_free)
        c->mint_share_free(c->mint_share);
    pthread_mutex_destroy(&c->mlock);
    av_config_free(c->cfg);
    av__free(c);
}

av_snap *av__snap_ref(av_snap *s)
{
    if (s)
        s->refs++;
    return s;
}

av_scrub_set *av__snap_scrub_set(av_snap *s, av_secret *secret)
{
    for (size_t i = 0; i < AV_SCRUB_CACHE; i++)
        if (s->scrub[i].secret == secret && s->scrub[i].set)
            return av__scrub_set_ref(s->scrub[i].set);
    const av_secret *secs[1] = {secret};
    av_scrub_set *set = NULL;
    if (av__scrub_set_new(&set, secs, 1) != AV_OK)
        return NULL;
    size_t k = s->scrub_next++ % AV_SCRUB_CACHE;
    av__secret_free(s->scrub[k].secret);
    av__scrub_set_unref(s->scrub[k].set);
    s->scrub[k].secret = av__secret_ref(secret);
    s->scrub[k].set = av__scrub_set_ref(set);
    return set;
}

void av__snap_unref(av_snap *s)
{
    if (!s || --s->refs > 0)
        return;
    for (size_t i = 0; i < AV_SCRUB_CACHE; i++) {
        av__secret_free(s->scrub[i].secret);
        av__scrub_set_unref(s->scrub[i].set);
    }
    if (s->mint_free) /* before the resolver: a mint may wait for it */
        s->mint_free(s->mint);
    av__resolver_free(s->resolver);
    av__snap_core_unref(s->core); /* the configuration last: the mint read it */
    av__free(s);
}

/* vault:NAME through the vault the configuration borrows. */
static int snap_vault_get(void *ud, const char *name, av_secret **out, char *why, size_t why_len)
{
    char *v = NULL;
    size_t vl = 0;
    int rc = av_vault_get(ud, name, &v, &vl);
    if (rc == AV_ERR_NOTFOUND) {
        snprintf(why, why_len, "no secret named %s in the vault", name);
        return AV_ERR_SECRET;
    }
    if (rc != AV_OK) {
        snprintf(why, why_len, "vault: %s", av_strerror(rc));
        return rc == AV_ERR_NOMEM ? AV_ERR_NOMEM : AV_ERR_SECRET;
    }
    if (vl == 0) {
        av_vault_free_value(v, vl);
        snprintf(why, why_len, "vault secret %s is empty", name);
        return AV_ERR_SECRET;
    }
    *out = av__secret_new(v, vl);
    av_vault_free_value(v, vl);
    return *out ? AV_OK : AV_ERR_NOMEM;
}

static const char *snap_getenv(const char *name)
{
    return getenv(name);
}

/* A snapshot for |loop| around |core| (taken over): the resolver, which
 * resolves on that loop. */
static int snap_for_loop(av_loop *loop, av_snap_core *core, av_snap **out)
{
    av_snap *s = av__calloc(1, sizeof(*s));
    if (!s) {
        av__snap_core_unref(core);
        return AV_ERR_NOMEM;
    }
    s->refs = 1;
    s->core = core;
    const av_config *cfg = core->cfg;
    s->cfg = core->cfg;
    s->tokens = core->tokens;
    s->buckets = core->buckets;
    s->gw_tokens = core->gw_tokens;
    s->parents = core->parents;
    int rc = av__resolver_new(&s->resolver);
    if (rc) {
        av__snap_unref(s);
        return rc;
    }
    av__resolver_set_loop(s->resolver, loop, cfg->secret_ttl, cfg->command_timeout);
    av__resolver_set_share(s->resolver, core->share);
    if (cfg->secret_fn)
        av__resolver_set_callback(s->resolver, cfg->secret_fn, cfg->secret_ud);
    if (cfg->vault)
        av__resolver_set_vault(s->resolver, snap_vault_get, cfg->vault);
    *out = s;
    return AV_OK;
}

int av__snap_from_core(av_loop *loop, av_snap_core *core, av_snap **out)
{
    *out = NULL;
    return snap_for_loop(loop, core, out);
}

int av__snap_new(av_loop *loop, av_config *cfg, double now, av_snap **out, char *err, size_t err_len)
{
    av_snap_core *c = av__calloc(1, sizeof(*c));
    if (!c) {
        av_config_free(cfg);
        return AV_ERR_NOMEM;
    }
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->mlock, NULL);
    c->cfg = cfg;
    if (av__resolver_share_new(&c->share) != AV_OK) {
        av__snap_core_unref(c);
        return AV_ERR_NOMEM;
    }
    av_snap *s = NULL;
    int rc = snap_for_loop(loop, c, &s);
    if (rc)
        return rc;
    if (!cfg->vault && av_config_uses_vault(cfg)) {
        av__errf(err, err_len, "the configuration reads vault: secrets but no vault was opened");
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    /* The core is filled here, before any other worker sees it; this
     * loop's resolver resolves what it holds. */
    if (cfg->ntokens) {
        rc = AV_ERR_NOMEM;
        c->tokens = av__calloc(cfg->ntokens, sizeof(*c->tokens));
        c->buckets = av__calloc(cfg->ntokens, sizeof(*c->buckets));
        if (!c->tokens || !c->buckets)
            goto fail;
        for (size_t i = 0; i < cfg->ntokens; i++) {
            char why[200];
            atomic_init(&c->buckets[i].tat, double_bits(now)); /* full */
            if (cfg->tokens[i].hashed)
                continue; /* from the token store: compared by hash */
            rc = av__resolver_get(s->resolver, cfg->tokens[i].secret_ref, &c->tokens[i], why, sizeof(why));
            if (rc) {
                av__errf(err, err_len, "token %s: %s", cfg->tokens[i].name, why);
                rc = AV_ERR_CONFIG;
                goto fail;
            }
        }
    }
    if (cfg->ngateways) {
        c->gw_tokens = av__calloc(cfg->ngateways, sizeof(*c->gw_tokens));
        if (!c->gw_tokens) {
            rc = AV_ERR_NOMEM;
            goto fail;
        }
        for (size_t i = 0; i < cfg->ngateways; i++) {
            if (!cfg->gateways[i].token_ref)
                continue;
            char why[200];
            rc = av__resolver_get(s->resolver, cfg->gateways[i].token_ref, &c->gw_tokens[i], why, sizeof(why));
            if (rc) {
                av__errf(err, err_len, "gateway %s token: %s", cfg->gateways[i].name, why);
                rc = AV_ERR_CONFIG;
                goto fail;
            }
        }
    }
    /* Parent proxies: their credentials are resolved now, like tokens
     * (upstream_proxy = env reads the process environment). */
    rc = av__parents_new(cfg, s->resolver, snap_getenv, &c->parents, err, err_len);
    if (rc)
        goto fail;
    s->tokens = c->tokens;
    s->buckets = c->buckets;
    s->gw_tokens = c->gw_tokens;
    s->parents = c->parents;
    *out = s;
    return AV_OK;
fail:
    av__snap_unref(s);
    return rc;
}


int av__snap_find_token(const av_snap *s, const uint8_t *tok, size_t len, long long now)
{
    const av_config *cfg = s->cfg;
    uint8_t h[AV_SHA256_LEN];
    int have_hash = 0;
    int match = -1;
    for (size_t i = 0; i < cfg->ntokens; i++) {
        const av_token_cfg *t = &cfg->tokens[i];
        if (!t->hashed) {
            if (av__secret_equal(s->tokens[i], tok, len))
                match = (int)i;
            continue;
        }
        if (!have_hash) {
            if (av__crypto_sha256(tok, len, h) != 0)
                break;
            have_hash = 1;
        }
        unsigned diff = 0;
        for (int k = 0; k < AV_SHA256_LEN; k++)
            diff |= (unsigned)(h[k] ^ t->hash[k]);
        if (diff == 0 && (t->expires == 0 || now < t->expires))
            match = (int)i;
    }
    av__wipe(h, sizeof(h));
    return match;
}

int av__snap_carry_token(const av_snap *old, int old_tok, const av_snap *cur, long long now)
{
    if (old_tok < 0 || (size_t)old_tok >= old->cfg->ntokens)
        return -1;
    const av_token_cfg *o = &old->cfg->tokens[old_tok];
    for (size_t i = 0; i < cur->cfg->ntokens; i++) {
        const av_token_cfg *t = &cur->cfg->tokens[i];
        if (strcmp(t->name, o->name) != 0)
            continue;
        if (t->hashed != o->hashed)
            return -1;
        int same = t->hashed ? memcmp(t->hash, o->hash, sizeof(t->hash)) == 0
                             : av__secret_equal(cur->tokens[i], av__secret_data(old->tokens[old_tok]),
                                                av__secret_len(old->tokens[old_tok]));
        return same && (t->expires == 0 || now < t->expires) ? (int)i : -1;
    }
    return -1;
}

int av__snap_rate_take(av_snap *s, int token, double now, int *retry_after)
{
    if (token < 0 || (size_t)token >= s->cfg->ntokens)
        return AV_OK;
    const av_token_cfg *tok = &s->cfg->tokens[token];
    if (tok->rate <= 0)
        return AV_OK;
    /* Token bucket: refill at |rate| per second up to |burst|, kept as
     * the time it is full again (|tat|): at |now| it holds burst - (tat -
     * now) * rate. Taking one moves |tat| on by 1 / rate. */
    av_bucket *b = &s->buckets[token];
    uint64_t old = atomic_load_explicit(&b->tat, memory_order_relaxed);
    for (;;) {
        double tat = bits_double(old);
        double t = tat > now ? tat : now;
        double level = tok->burst - (t - now) * tok->rate;
        if (level < 1.0) {
            double wait = (1.0 - level) / tok->rate;
            if (retry_after)
                *retry_after = (int)wait + 1;
            return AV_ERR_LIMIT;
        }
        if (atomic_compare_exchange_weak_explicit(&b->tat, &old, double_bits(t + 1.0 / tok->rate),
                                                  memory_order_relaxed, memory_order_relaxed))
            return AV_OK;
    }
}
