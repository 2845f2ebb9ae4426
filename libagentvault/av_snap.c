/* av_snap.c - configuration snapshots (see av_snap.h). */
#include "av_snap.h"
#include "av_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_crypto.h"
#include "av_mem.h"
#include "av_parent.h"
#include "av_scrub.h"

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
    if (s->tokens) {
        for (size_t i = 0; i < s->cfg->ntokens; i++)
            av__secret_free(s->tokens[i]);
        av__free(s->tokens);
    }
    av__free(s->buckets);
    if (s->gw_tokens) {
        for (size_t i = 0; i < s->cfg->ngateways; i++)
            av__secret_free(s->gw_tokens[i]);
        av__free(s->gw_tokens);
    }
    av__parents_free(s->parents);
    if (s->mint_free) /* before the resolver: a mint may wait for it */
        s->mint_free(s->mint);
    av__resolver_free(s->resolver);
    av_config_free(s->cfg);
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

int av__snap_new(av_loop *loop, av_config *cfg, double now, av_snap **out, char *err, size_t err_len)
{
    av_snap *s = av__calloc(1, sizeof(*s));
    if (!s) {
        av_config_free(cfg);
        return AV_ERR_NOMEM;
    }
    s->refs = 1;
    s->cfg = cfg;
    int rc = av__resolver_new(&s->resolver);
    if (rc)
        goto fail;
    av__resolver_set_loop(s->resolver, loop, cfg->secret_ttl, cfg->command_timeout);
    if (cfg->secret_fn)
        av__resolver_set_callback(s->resolver, cfg->secret_fn, cfg->secret_ud);
    if (cfg->vault)
        av__resolver_set_vault(s->resolver, snap_vault_get, cfg->vault);
    else if (av_config_uses_vault(cfg)) {
        av__errf(err, err_len, "the configuration reads vault: secrets but no vault was opened");
        rc = AV_ERR_CONFIG;
        goto fail;
    }
    if (cfg->ntokens) {
        rc = AV_ERR_NOMEM;
        s->tokens = av__calloc(cfg->ntokens, sizeof(*s->tokens));
        s->buckets = av__calloc(cfg->ntokens, sizeof(*s->buckets));
        if (!s->tokens || !s->buckets)
            goto fail;
        for (size_t i = 0; i < cfg->ntokens; i++) {
            char why[200];
            s->buckets[i].level = cfg->tokens[i].burst;
            s->buckets[i].stamp = now;
            if (cfg->tokens[i].hashed)
                continue; /* from the token store: compared by hash */
            rc = av__resolver_get(s->resolver, cfg->tokens[i].secret_ref, &s->tokens[i], why, sizeof(why));
            if (rc) {
                av__errf(err, err_len, "token %s: %s", cfg->tokens[i].name, why);
                rc = AV_ERR_CONFIG;
                goto fail;
            }
        }
    }
    if (cfg->ngateways) {
        s->gw_tokens = av__calloc(cfg->ngateways, sizeof(*s->gw_tokens));
        if (!s->gw_tokens) {
            rc = AV_ERR_NOMEM;
            goto fail;
        }
        for (size_t i = 0; i < cfg->ngateways; i++) {
            if (!cfg->gateways[i].token_ref)
                continue;
            char why[200];
            rc = av__resolver_get(s->resolver, cfg->gateways[i].token_ref, &s->gw_tokens[i], why, sizeof(why));
            if (rc) {
                av__errf(err, err_len, "gateway %s token: %s", cfg->gateways[i].name, why);
                rc = AV_ERR_CONFIG;
                goto fail;
            }
        }
    }
    /* Parent proxies: their credentials are resolved now, like tokens
     * (upstream_proxy = env reads the process environment). */
    rc = av__parents_new(cfg, s->resolver, snap_getenv, &s->parents, err, err_len);
    if (rc)
        goto fail;
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
    /* Token bucket: refill at |rate| per second up to |burst|. */
    av_bucket *b = &s->buckets[token];
    b->level += (now - b->stamp) * tok->rate;
    if (b->level > tok->burst)
        b->level = tok->burst;
    b->stamp = now;
    if (b->level < 1.0) {
        double wait = (1.0 - b->level) / tok->rate;
        if (retry_after)
            *retry_after = (int)wait + 1;
        return AV_ERR_LIMIT;
    }
    b->level -= 1.0;
    return AV_OK;
}
