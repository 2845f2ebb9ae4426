/* av_mint.c - credentials minted at a token endpoint (see av_mint.h). */
#include "av_mint.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <agentvault/agentvault.h>

#include "av_h1.h"
#include "av_jwt.h"
#include "av_limits.h"
#include "av_log.h"
#include "av_mem.h"
#include "av_metrics.h"
#include "av_upstream.h"
#include "av_url.h"
#include "av_vault.h"

#define MINT_FAIL_REMEMBER 2.0 /* seconds a failed mint is the answer */
#define MINT_REQ_MAX (32 * 1024)
#define MINT_RESP_MAX (AV_HEAD_MAX + AV_OAUTH_RESPONSE_MAX)
#define MINT_LOCK_RETRY 0.02 /* seconds between tries of the vault's writers' lock */
#define MINT_LOCK_WAIT 2.0   /* seconds a rotated refresh token waits for that lock at most */

typedef struct mint_job mint_job;

typedef struct mint_slot {
    av_secret *token;
    double use_until, refresh_at;
    double fail_until;
    char why[200];
    mint_job *job;
    int remote; /* another worker mints it: wait for that mint (the share) */
} mint_slot;

/* A service's token as the workers share it (av_mint.h). */
typedef struct share_slot {
    av_secret *token;
    double use_until, refresh_at, fail_until;
    char why[200];
    av_mint *runner; /* the worker minting it now, or NULL */
} share_slot;

struct av_mint_share {
    pthread_mutex_t lock;
    share_slot *slots; /* parallel to cfg->services */
    size_t n;
    av_mint **members;
    size_t nmembers;
};

struct av_mint_wait {
    av_mint *m;
    size_t svc;
    av_resolver_done done;
    void *ud;
    av_mint_wait *next, *prev;
};

struct mint_job {
    av_mint *m;
    size_t svc;
    av_pool *pool;
    av_resolver_wait *rwait; /* the client secret, when it answers later */
    int cred_ready;
    av_upconn *up;
    av_timer *timer;
    av_buf req;  /* the whole request (wiped: it carries the client secret) */
    av_buf resp; /* the raw answer (wiped: it carries the token) */
    int sent;
    int stepping;
    int again; /* a notify arrived while stepping */
    /* oauth2:refresh_token */
    av_secret *rt;     /* the refresh token sent */
    int saving;        /* the answer rotated it: writing new_rt back to the vault */
    av_secret *new_at; /* held until new_rt is saved */
    av_secret *new_rt;
    long long new_exp;
    double save_until;
};

struct av_mint {
    av_loop *loop;
    const av_config *cfg;
    av_resolver *resolver;
    mint_slot *slots; /* parallel to cfg->services */
    av_mint_wait *waits;
    av_mint_share *share; /* NULL: not shared */
    av_async *wake;       /* another worker's mint is over */
};

/* ---- oauth2:client_credentials ------------------------------------------ */

/* client_auth adds the client's authentication (RFC 6749 2.3.1): in the
 * Authorization header (basic, the default) or the body (post); a public
 * client (no client_secret) sends its client_id in the body (3.2.1). */
static int client_auth(const av_service *svc, const av_secret *cred, av_buf *body, av_secret **auth)
{
    int rc;
    if (svc->client_auth_post || !cred) {
        rc = av__oauth_form_add(body, "client_id", svc->client_id, strlen(svc->client_id));
        if (!rc && cred)
            rc = av__oauth_form_add(body, "client_secret", av__secret_data(cred), av__secret_len(cred));
        return rc;
    }
    *auth = av__oauth_basic(svc->client_id, av__secret_data(cred), av__secret_len(cred));
    return *auth ? AV_OK : AV_ERR_NOMEM;
}

/* scope_audience adds the optional scope and audience parameters. */
static int scope_audience(const av_service *svc, av_buf *body)
{
    int rc = AV_OK;
    if (svc->oauth_scope)
        rc = av__oauth_form_add(body, "scope", svc->oauth_scope, strlen(svc->oauth_scope));
    if (!rc && svc->oauth_audience)
        rc = av__oauth_form_add(body, "audience", svc->oauth_audience, strlen(svc->oauth_audience));
    return rc;
}

static int cc_build(const av_service *svc, const av_secret *cred, const av_secret *grant, av_mint_req *req)
{
    (void)grant;
    int rc = av__oauth_form_add(req->body, "grant_type", "client_credentials", 18);
    rc = rc ? rc : scope_audience(svc, req->body);
    return rc ? rc : client_auth(svc, cred, req->body, &req->auth);
}

/* ---- oauth2:refresh_token (RFC 6749 6) ----------------------------------- */

static int rt_build(const av_service *svc, const av_secret *cred, const av_secret *grant, av_mint_req *req)
{
    if (!grant)
        return AV_ERR_INVALID;
    int rc = av__oauth_form_add(req->body, "grant_type", "refresh_token", 13);
    rc = rc ? rc : av__oauth_form_add(req->body, "refresh_token", av__secret_data(grant), av__secret_len(grant));
    rc = rc ? rc : scope_audience(svc, req->body);
    return rc ? rc : client_auth(svc, cred, req->body, &req->auth);
}

static int oauth_parse(const av_service *svc, const uint8_t *p, size_t n, av_oauth_token *out, char *why,
                       size_t why_len)
{
    (void)svc;
    return av__oauth_parse_token(p, n, out, why, why_len);
}

/* ---- gcp:service_account (RFC 7523 2.1, Google's JWT-bearer grant) ------- */

static int gcp_build(const av_service *svc, const av_secret *cred, const av_secret *grant, av_mint_req *req)
{
    (void)grant;
    av_gcp_key k;
    char why[200];
    if (!cred)
        return AV_ERR_INVALID;
    int rc = av__gcp_key_parse(av__secret_data(cred), av__secret_len(cred), &k, why, sizeof(why));
    if (rc != AV_OK) {
        snprintf(req->why, sizeof(req->why), "%s", why);
        av__gcp_key_clear(&k);
        return rc;
    }
    /* aud is Google's endpoint named by the key; token_url only moves
     * where the request goes (a private endpoint, a test) */
    const char *aud = k.token_uri ? k.token_uri : AV_GCP_TOKEN_URI_DEFAULT;
    const char *url = svc->token_url ? svc->token_url : aud;
    if (strlen(url) > AV_MINT_URL_MAX) {
        snprintf(req->why, sizeof(req->why), "the service-account key's token_uri is too long");
        av__gcp_key_clear(&k);
        return AV_ERR_LIMIT;
    }
    snprintf(req->url, sizeof(req->url), "%s", url);
    av_buf claims;
    av__buf_init(&claims, AV_JWT_CLAIMS_MAX);
    av_secret *jwt = NULL;
    rc = av__gcp_claims(&k, svc->oauth_scope, svc->target_audience, aud, (long long)time(NULL), &claims);
    rc = rc ? rc : av__jwt_sign(k.key, k.private_key_id, (const char *)av__buf_head(&claims), claims.len, &jwt);
    av__buf_free(&claims);
    av__gcp_key_clear(&k);
    rc = rc ? rc
            : av__oauth_form_add(req->body, "grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer", 43);
    rc = rc ? rc : av__oauth_form_add(req->body, "assertion", av__secret_data(jwt), av__secret_len(jwt));
    av__secret_free(jwt);
    if (rc != AV_OK && !req->why[0])
        snprintf(req->why, sizeof(req->why), "cannot sign the JWT with the service-account key");
    return rc;
}

static int gcp_parse(const av_service *svc, const uint8_t *p, size_t n, av_oauth_token *out, char *why,
                     size_t why_len)
{
    if (svc->target_audience)
        return av__gcp_parse_id_token(p, n, (long long)time(NULL), out, why, why_len);
    return av__oauth_parse_token(p, n, out, why, why_len);
}

/* ---- github_app: (an installation access token) ------------------------ */

static int gh_build(const av_service *svc, const av_secret *cred, const av_secret *grant, av_mint_req *req)
{
    (void)grant;
    av_pkey *key = NULL;
    char why[160];
    if (!cred)
        return AV_ERR_INVALID;
    int rc = av__pkey_from_pem(av__secret_data(cred), av__secret_len(cred), &key, why, sizeof(why));
    if (rc != AV_OK) {
        snprintf(req->why, sizeof(req->why), "the GitHub App key is not usable: %s", why);
        return rc;
    }
    if (svc->token_url)
        snprintf(req->url, sizeof(req->url), "%s", svc->token_url);
    else
        snprintf(req->url, sizeof(req->url), AV_GITHUB_API_DEFAULT "/app/installations/%s/access_tokens",
                 svc->gh_installation);
    av_buf claims;
    av__buf_init(&claims, AV_JWT_CLAIMS_MAX);
    av_secret *jwt = NULL;
    rc = av__github_claims(svc->client_id, (long long)time(NULL), &claims);
    rc = rc ? rc : av__jwt_sign(key, NULL, (const char *)av__buf_head(&claims), claims.len, &jwt);
    av__buf_free(&claims);
    av__pkey_free(key);
    if (rc == AV_OK) {
        size_t n = av__secret_len(jwt);
        char *v = av__malloc(7 + n);
        if (v) {
            memcpy(v, "Bearer ", 7);
            memcpy(v + 7, av__secret_data(jwt), n);
            req->auth = av__secret_new(v, 7 + n);
            av__wipe(v, 7 + n);
            av__free(v);
        }
        rc = req->auth ? AV_OK : AV_ERR_NOMEM;
    }
    av__secret_free(jwt);
    if (rc == AV_OK && av__github_body(svc->gh_repositories, svc->gh_permissions, req->body) != AV_OK) {
        snprintf(req->why, sizeof(req->why), "the repositories= and permissions= lists make a request body over 16 KiB");
        rc = AV_ERR_LIMIT;
    }
    req->content_type = "application/json";
    req->accept = "application/vnd.github+json";
    req->extra_name = "X-GitHub-Api-Version";
    req->extra_value = "2022-11-28";
    if (rc != AV_OK && !req->why[0])
        snprintf(req->why, sizeof(req->why), "cannot sign the GitHub App JWT");
    return rc;
}

static int gh_parse(const av_service *svc, const uint8_t *p, size_t n, av_oauth_token *out, char *why,
                    size_t why_len)
{
    (void)svc;
    return av__github_parse_token(p, n, (long long)time(NULL), out, why, why_len);
}

static const av_minter client_credentials = {"oauth2:client_credentials", cc_build, oauth_parse};
static const av_minter refresh_token = {"oauth2:refresh_token", rt_build, oauth_parse};
static const av_minter gcp_service_account = {"gcp:service_account", gcp_build, gcp_parse};
static const av_minter github_app = {"github_app", gh_build, gh_parse};

const av_minter *av__minter_of(int kind)
{
    return kind == AV_MINT_CLIENT_CREDENTIALS ? &client_credentials
           : kind == AV_MINT_REFRESH_TOKEN    ? &refresh_token
           : kind == AV_MINT_GCP_SA           ? &gcp_service_account
           : kind == AV_MINT_GITHUB_APP       ? &github_app
                                              : NULL;
}

/* ---- the cache and the waiters ----------------------------------------- */

/* ---- the workers' share ---------------------------------------------------- */

void *av__mint_share_new(const av_config *cfg)
{
    av_mint_share *sh = av__calloc(1, sizeof(*sh));
    if (!sh)
        return NULL;
    sh->n = cfg->nservices;
    if (sh->n && !(sh->slots = av__calloc(sh->n, sizeof(*sh->slots)))) {
        av__free(sh);
        return NULL;
    }
    pthread_mutex_init(&sh->lock, NULL);
    return sh;
}

void av__mint_share_free(void *p)
{
    av_mint_share *sh = p;
    if (!sh)
        return;
    for (size_t i = 0; i < sh->n; i++)
        av__secret_free(sh->slots[i].token);
    av__free(sh->slots);
    av__free(sh->members);
    pthread_mutex_destroy(&sh->lock);
    av__free(sh);
}

/* Under the share's lock: every other worker looks again. */
static void share_wake_others(av_mint_share *sh, const av_mint *m)
{
    for (size_t i = 0; i < sh->nmembers; i++)
        if (sh->members[i] != m)
            av__async_send(sh->members[i]->wake);
}

/* share_pull takes the shared token of |svc| when it is newer than ours,
 * or a shared failure while it lasts (no mint of ours runs). */
static void share_pull(av_mint *m, size_t svc, double now)
{
    av_mint_share *sh = m->share;
    mint_slot *s = &m->slots[svc];
    pthread_mutex_lock(&sh->lock);
    share_slot *ss = &sh->slots[svc];
    if (!ss->runner) {
        if (ss->token && now < ss->use_until && (!s->token || ss->use_until > s->use_until)) {
            av__secret_free(s->token);
            s->token = av__secret_ref(ss->token);
            s->use_until = ss->use_until;
            s->refresh_at = ss->refresh_at;
            s->fail_until = 0;
        } else if (!ss->token && ss->fail_until > now && ss->fail_until > s->fail_until) {
            s->fail_until = ss->fail_until;
            snprintf(s->why, sizeof(s->why), "%s", ss->why);
        }
    }
    pthread_mutex_unlock(&sh->lock);
}

/* share_claim: may this worker mint |svc| now? 1: yes (it is the runner);
 * 0: another worker mints it. */
static int share_claim(av_mint *m, size_t svc)
{
    av_mint_share *sh = m->share;
    if (!sh)
        return 1;
    pthread_mutex_lock(&sh->lock);
    share_slot *ss = &sh->slots[svc];
    int mine = !ss->runner || ss->runner == m;
    if (mine)
        ss->runner = m;
    pthread_mutex_unlock(&sh->lock);
    return mine;
}

/* share_push: this worker's mint of |svc| is over (the slot holds its
 * token or failure): publish it and wake the others. */
static void share_push(av_mint *m, size_t svc)
{
    av_mint_share *sh = m->share;
    if (!sh)
        return;
    mint_slot *s = &m->slots[svc];
    pthread_mutex_lock(&sh->lock);
    share_slot *ss = &sh->slots[svc];
    if (ss->runner == m) {
        ss->runner = NULL;
        av__secret_free(ss->token);
        ss->token = s->token ? av__secret_ref(s->token) : NULL;
        ss->use_until = s->use_until;
        ss->refresh_at = s->refresh_at;
        ss->fail_until = s->token ? 0 : s->fail_until;
        snprintf(ss->why, sizeof(ss->why), "%s", s->token ? "" : s->why);
        share_wake_others(sh, m);
    }
    pthread_mutex_unlock(&sh->lock);
}

static void wake_waiters(av_mint *m, size_t svc);
static double now_mono(void);

/* Another worker's mint is over: the services we waited for take its
 * answer (or, if that worker went away, ask again), then their waiters
 * run. */
static void mint_on_wake(void *ud)
{
    av_mint *m = ud;
    double now = now_mono();
    for (size_t i = 0; i < m->cfg->nservices; i++) {
        mint_slot *s = &m->slots[i];
        if (!s->remote)
            continue;
        pthread_mutex_lock(&m->share->lock);
        share_slot *ss = &m->share->slots[i];
        int over = !ss->runner;
        if (over) {
            s->remote = 0;
            if (ss->token) {
                av__secret_free(s->token);
                s->token = av__secret_ref(ss->token);
                s->use_until = ss->use_until > now + 1 ? ss->use_until : now + 1; /* the answer waited for */
                s->refresh_at = ss->refresh_at;
                s->fail_until = 0;
            } else if (ss->fail_until > 0) {
                s->fail_until = ss->fail_until;
                snprintf(s->why, sizeof(s->why), "%s", ss->why);
            }
        }
        pthread_mutex_unlock(&m->share->lock);
        if (over)
            wake_waiters(m, i);
    }
}

int av__mint_join(av_mint *m, av_mint_share *sh)
{
    if (!m || !sh || m->share)
        return AV_OK;
    m->wake = av__async_new(m->loop, mint_on_wake, m);
    if (!m->wake)
        return AV_ERR_NOMEM;
    pthread_mutex_lock(&sh->lock);
    av_mint **mm = av__realloc(sh->members, (sh->nmembers + 1) * sizeof(*mm));
    if (mm) {
        sh->members = mm;
        sh->members[sh->nmembers++] = m;
        m->share = sh;
    }
    pthread_mutex_unlock(&sh->lock);
    if (!m->share) {
        av__async_free(m->wake);
        m->wake = NULL;
        return AV_ERR_NOMEM;
    }
    return AV_OK;
}

/* Leave the share (av__mint_free): mints of ours are abandoned (the
 * workers waiting for them mint themselves). */
static void share_leave(av_mint *m)
{
    av_mint_share *sh = m->share;
    if (!sh)
        return;
    pthread_mutex_lock(&sh->lock);
    int abandoned = 0;
    for (size_t i = 0; i < sh->n; i++)
        if (sh->slots[i].runner == m) {
            sh->slots[i].runner = NULL;
            abandoned = 1;
        }
    for (size_t i = 0; i < sh->nmembers; i++)
        if (sh->members[i] == m) {
            sh->members[i] = sh->members[--sh->nmembers];
            break;
        }
    if (abandoned)
        share_wake_others(sh, m);
    pthread_mutex_unlock(&sh->lock);
    m->share = NULL;
}

int av__mint_new(av_mint **out, av_loop *loop, const av_config *cfg, av_resolver *resolver)
{
    av_mint *m = av__calloc(1, sizeof(*m));
    if (!m)
        return AV_ERR_NOMEM;
    m->loop = loop;
    m->cfg = cfg;
    m->resolver = resolver;
    if (cfg->nservices) {
        m->slots = av__calloc(cfg->nservices, sizeof(*m->slots));
        if (!m->slots) {
            av__free(m);
            return AV_ERR_NOMEM;
        }
    }
    *out = m;
    return AV_OK;
}

static void job_free(mint_job *j)
{
    if (j->rwait)
        av__resolver_cancel(j->rwait);
    if (j->up)
        av__upstream_release(j->up, 0);
    av__timer_free(j->timer);
    av__buf_free_wipe(&j->req);
    av__buf_free_wipe(&j->resp);
    av__secret_free(j->rt);
    av__secret_free(j->new_at);
    av__secret_free(j->new_rt);
    av__free(j);
}

void av__mint_free(av_mint *m)
{
    if (!m)
        return;
    while (m->waits) {
        av_mint_wait *w = m->waits;
        m->waits = w->next;
        av__free(w);
    }
    for (size_t i = 0; m->slots && i < m->cfg->nservices; i++) {
        mint_job *j = m->slots[i].job;
        if (j && j->saving) {
            /* a rotated refresh token still waiting for the vault's lock:
             * one last try (bounded), or the vault keeps one the server
             * may have invalidated */
            const av_service *sv = &m->cfg->services[i];
            char err[512] = "";
            int rc = av__vault_update(m->cfg->vault, sv->refresh_token_ref + 6, av__secret_data(j->new_rt),
                                      av__secret_len(j->new_rt), 500, err, sizeof(err));
            if (rc != AV_OK)
                av__log(j->pool->log, AV_LOG_ERROR,
                        "service %s: a rotated refresh token could not be written back to vault %s (%s) before "
                        "the configuration was released; the refresh token in the vault may no longer be valid",
                        sv->name, av__vault_path(m->cfg->vault), err[0] ? err : av_strerror(rc));
        }
        if (j)
            job_free(j);
        av__secret_free(m->slots[i].token);
    }
    share_leave(m);
    av__async_free(m->wake);
    av__free(m->slots);
    av__free(m);
}

void av__mint_cancel(av_mint_wait *w)
{
    if (!w)
        return;
    av_mint *m = w->m;
    if (w->prev)
        w->prev->next = w->next;
    else
        m->waits = w->next;
    if (w->next)
        w->next->prev = w->prev;
    av__free(w);
}

/* wake_waiters calls everyone waiting for service |svc| (each unlinked
 * first: done() may ask again and wait anew). */
static void wake_waiters(av_mint *m, size_t svc)
{
    for (;;) {
        av_mint_wait *w = m->waits;
        while (w && w->svc != svc)
            w = w->next;
        if (!w)
            return;
        av_resolver_done done = w->done;
        void *ud = w->ud;
        av__mint_cancel(w);
        done(ud);
    }
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* job_end finishes the mint of |j| with a token or a reason, wakes the
 * waiters and frees the job. */
static void job_end(mint_job *j, av_secret *token, long long expires_in, const char *why)
{
    av_mint *m = j->m;
    size_t svc = j->svc;
    mint_slot *s = &m->slots[svc];
    const av_service *sv = &m->cfg->services[svc];
    double now = now_mono();
    av_metrics *metrics = j->pool->metrics;
    const av_logger *log = j->pool->log;
    s->job = NULL;
    job_free(j);
    if (token) {
        double life = expires_in >= 0 ? (double)expires_in : m->cfg->secret_ttl;
        double hard = life / 10 < 5 ? life / 10 : 5, soft = life / 3 < 60 ? life / 3 : 60;
        av__secret_free(s->token);
        s->token = token;
        s->use_until = now + life - hard;
        if (s->use_until < now + 1)
            s->use_until = now + 1;
        s->refresh_at = now + life - soft;
        s->fail_until = 0;
        av__metrics_count_mint(metrics, sv->name, 0);
        av__log(log, AV_LOG_INFO, "service %s: minted an access token (%s, %s)", sv->name,
                av__minter_of(sv->mint)->name, expires_in >= 0 ? "expires_in given" : "no expires_in: secret_ttl");
    } else {
        snprintf(s->why, sizeof(s->why), "%s", why);
        s->fail_until = now + MINT_FAIL_REMEMBER;
        av__metrics_count_mint(metrics, sv->name, 1);
        av__log(log, AV_LOG_WARN, "service %s: minting an access token failed: %s", sv->name, why);
    }
    share_push(m, svc);
    wake_waiters(m, svc);
}

/* ---- the token request -------------------------------------------------- */

static void job_step(mint_job *j);

static void job_notify(void *ud)
{
    job_step(ud);
}

static void job_save(mint_job *j);

static void job_on_timer(void *ud)
{
    mint_job *j = ud;
    if (j->saving) {
        job_save(j);
        return;
    }
    job_end(j, NULL, 0, "the token endpoint did not answer in time");
}

/* job_save writes the rotated refresh token back to the vault, then ends
 * the job with the new access token; while another writer holds the
 * vault's lock, it tries again from the timer (never blocking the loop)
 * until MINT_LOCK_WAIT has passed. A failure drops the new access token:
 * serving it while the vault keeps a refresh token the server may have
 * invalidated would hide the problem until the next mint. */
static void job_save(mint_job *j)
{
    av_mint *m = j->m;
    const av_service *sv = &m->cfg->services[j->svc];
    const av_logger *log = j->pool->log;
    char err[512] = "";
    const char *name = sv->refresh_token_ref + 6; /* "vault:" checked by the config */
    int rc = av__vault_update(m->cfg->vault, name, av__secret_data(j->new_rt), av__secret_len(j->new_rt), 0, err,
                              sizeof(err));
    if (rc == AV_ERR_AGAIN && now_mono() < j->save_until) {
        av__timer_start(j->timer, MINT_LOCK_RETRY);
        return;
    }
    if (rc != AV_OK) {
        av__log(log, AV_LOG_ERROR,
                "service %s: the token endpoint rotated the refresh token and writing it back to vault %s failed "
                "(%s): the new access token is not used; the old refresh token may no longer be valid",
                sv->name, av__vault_path(m->cfg->vault), err[0] ? err : av_strerror(rc));
        job_end(j, NULL, 0, "the token endpoint rotated the refresh token and saving it to the vault failed");
        return;
    }
    av__log(log, AV_LOG_INFO, "service %s: the refresh token was rotated; saved as %s in vault %s", sv->name,
            sv->refresh_token_ref, av__vault_path(m->cfg->vault));
    av_secret *tok = j->new_at;
    j->new_at = NULL;
    job_end(j, tok, j->new_exp, NULL);
}

static void job_cred_ready(void *ud)
{
    mint_job *j = ud;
    j->rwait = NULL;
    j->cred_ready = 1;
    job_step(j);
}

/* job_request builds the request once the client secret is resolved.
 * Returns AV_OK, AV_ERR_AGAIN (waiting for the secret), or an error with
 * |why|. */
static int job_request(mint_job *j, char *why, size_t why_len)
{
    av_mint *m = j->m;
    const av_service *sv = &m->cfg->services[j->svc];
    av_secret *cred = NULL;
    char rwhy[200];
    const char *cref = sv->mint_key_ref ? sv->mint_key_ref : sv->client_secret_ref;
    if (cref) {
        int rc = av__resolver_get_async(m->resolver, cref, &cred, rwhy, sizeof(rwhy), job_cred_ready, j, &j->rwait);
        if (rc == AV_ERR_AGAIN)
            return rc;
        if (rc) {
            snprintf(why, why_len, "%s unavailable: %s", sv->mint_key_ref ? "the key" : "client_secret", rwhy);
            return AV_ERR_SECRET;
        }
    }
    if (sv->mint == AV_MINT_REFRESH_TOKEN && !j->rt) {
        /* the file again: a token set by the CLI or saved by another
         * snapshot since this one opened it is the current one */
        char err[512] = "";
        av_vault *vault = m->cfg->vault;
        int rc = vault ? av__vault_reload(vault, err, sizeof(err)) : AV_ERR_STATE;
        if (rc == AV_OK)
            rc = av__vault_get(vault, sv->refresh_token_ref + 6, &j->rt);
        if (rc != AV_OK) {
            av__secret_free(cred);
            if (vault && err[0])
                av__log(j->pool->log, AV_LOG_ERROR, "service %s: cannot read the refresh token: %s", sv->name, err);
            snprintf(why, why_len, "refresh token unavailable: %s",
                     !vault                 ? "no vault is configured"
                     : rc == AV_ERR_NOTFOUND ? "no such secret in the vault"
                                             : "the vault cannot be read (see the daemon log)");
            return AV_ERR_SECRET;
        }
    }
    av_buf body;
    av__buf_init(&body, MINT_REQ_MAX / 2);
    av_mint_req mr = {.body = &body};
    int rc = av__minter_of(sv->mint)->build(sv, cred, j->rt, &mr);
    av__secret_free(cred);
    av_secret *auth = mr.auth;
    const char *url = mr.url[0] ? mr.url : sv->token_url;
    av_absolute_uri u;
    memset(&u, 0, sizeof(u));
    if (rc == AV_OK && (!url || av__absolute_uri_parse(url, strlen(url), &u) != AV_OK || strcmp(u.scheme, "https"))) {
        snprintf(mr.why, sizeof(mr.why), "the token endpoint is not an https:// URL");
        rc = AV_ERR_INVALID;
    }
    if (rc != AV_OK && mr.why[0]) {
        av__secret_free(auth);
        av__buf_free_wipe(&body);
        snprintf(why, why_len, "%s", mr.why);
        return AV_ERR_SECRET;
    }
    char host[AV_HOST_MAX + 16];
    if (!rc && av__authority_format(&u.authority, 443, host, sizeof(host)) < 0)
        rc = AV_ERR_INVALID;
    rc = rc ? rc : av__h1_write_request_line(&j->req, "POST", 4, u.path, u.path_len);
    rc = rc ? rc : av__h1_write_field_str(&j->req, "Host", host);
    rc = rc ? rc
            : av__h1_write_field_str(&j->req, "Content-Type",
                                     mr.content_type ? mr.content_type : "application/x-www-form-urlencoded");
    rc = rc ? rc : av__h1_write_field_str(&j->req, "Accept", mr.accept ? mr.accept : "application/json");
    if (!rc && mr.extra_name)
        rc = av__h1_write_field_str(&j->req, mr.extra_name, mr.extra_value);
    rc = rc ? rc : av__h1_write_field_str(&j->req, "User-Agent", "agentvault");
    rc = rc ? rc : av__h1_write_field_str(&j->req, "Connection", "close");
    rc = rc ? rc : av__buf_appendf(&j->req, "Content-Length: %zu\r\n", body.len);
    if (!rc && auth)
        rc =
            av__h1_write_field(&j->req, "Authorization", 13, (const char *)av__secret_data(auth), av__secret_len(auth));
    rc = rc ? rc : av__h1_write_end(&j->req);
    rc = rc ? rc : av__buf_append(&j->req, av__buf_head(&body), body.len);
    av__secret_free(auth);
    av__buf_free_wipe(&body);
    if (rc) {
        snprintf(why, why_len, "cannot build the token request (too large or out of memory)");
        return rc;
    }
    /* the service's parent proxy applies (the part before '/'); ":mint"
     * is no token name, so no exchange's pooled connection is taken */
    char scope[96];
    snprintf(scope, sizeof(scope), "%.64s/:mint", sv->name);
    rc = av__upstream_acquire(j->pool, &u.authority, 1, scope, job_notify, j, &j->up);
    if (rc) {
        j->up = NULL;
        snprintf(why, why_len, "out of memory");
        return rc;
    }
    return AV_OK;
}

/* job_answer looks at what arrived: 1 when the answer is complete (the
 * job is then ended), 0 to wait for more. */
static int job_answer(mint_job *j)
{
    const uint8_t *p = av__buf_head(&j->resp);
    size_t n = j->resp.len;
    av_h1_limits lim = {AV_HEAD_MAX, 100};
    av_h1_scan scan = {0};
    av_h1_response r;
    int eof = j->up->side.in_eof;
    ssize_t hl = av__h1_parse_response(p, n, &lim, &scan, 0, 0, &r);
    if (hl == AV_H1_INCOMPLETE) {
        if (!eof && n < MINT_RESP_MAX)
            return 0;
        job_end(j, NULL, 0,
                eof ? "the token endpoint closed the connection before answering"
                    : "the token endpoint's answer is too large");
        return 1;
    }
    if (hl < 0) {
        job_end(j, NULL, 0, "the token endpoint sent a malformed HTTP response");
        return 1;
    }
    if (r.status < 200) { /* 1xx: drop it and read on */
        av__buf_consume(&j->resp, (size_t)hl);
        return j->resp.len ? job_answer(j) : 0;
    }
    av_h1_body b;
    av__h1_body_init(&b, r.body, r.content_length);
    if (r.body == AV_H1_BODY_LENGTH && r.content_length > AV_OAUTH_RESPONSE_MAX) {
        job_end(j, NULL, 0, "the token endpoint's answer is larger than 64 KiB");
        return 1;
    }
    av_buf body;
    av__buf_init(&body, AV_OAUTH_RESPONSE_MAX + 1);
    size_t off = (size_t)hl;
    int bad = 0;
    while (off < n && !b.done) {
        const uint8_t *d;
        size_t dl = 0;
        ssize_t used = av__h1_body_feed(&b, p + off, n - off, &d, &dl);
        if (used < 0 || (dl && av__buf_append(&body, d, dl) != AV_OK)) {
            bad = 1;
            break;
        }
        off += (size_t)used;
        if (used == 0 && dl == 0)
            break;
    }
    if (r.body == AV_H1_BODY_NONE)
        b.done = 1;
    if (r.body == AV_H1_BODY_UNTIL_CLOSE && eof)
        b.done = 1;
    if (!bad && !b.done) {
        av__buf_free_wipe(&body);
        if (!eof && n < MINT_RESP_MAX)
            return 0;
        job_end(j, NULL, 0,
                eof ? "the token endpoint closed the connection in the middle of its answer"
                    : "the token endpoint's answer is too large");
        return 1;
    }
    if (bad) {
        av__buf_free_wipe(&body);
        job_end(j, NULL, 0, "the token endpoint's answer is malformed or larger than 64 KiB");
        return 1;
    }
    const av_service *sv = &j->m->cfg->services[j->svc];
    av_oauth_token t;
    char why[200], m[260];
    int rc = av__minter_of(sv->mint)->parse(sv, av__buf_head(&body), body.len, &t, why, sizeof(why));
    av__buf_free_wipe(&body);
    int status = r.status;
    if (status / 100 != 2) {
        if (rc == AV_OK && t.error[0])
            snprintf(m, sizeof(m), "the token endpoint answered %d (%s)", status, t.error);
        else
            snprintf(m, sizeof(m), "the token endpoint answered %d", status);
        av__oauth_token_clear(&t);
        job_end(j, NULL, 0, m);
        return 1;
    }
    if (rc != AV_OK) {
        snprintf(m, sizeof(m), "the token endpoint's answer is not usable: %s", why);
        job_end(j, NULL, 0, m);
        return 1;
    }
    if (t.error[0]) {
        snprintf(m, sizeof(m), "the token endpoint answered %d with error %s", status, t.error);
        av__oauth_token_clear(&t);
        job_end(j, NULL, 0, m);
        return 1;
    }
    av_secret *tok = av__secret_ref(t.access_token);
    long long exp = t.expires_in;
    if (sv->mint == AV_MINT_REFRESH_TOKEN && t.refresh_token && j->rt &&
        !(av__secret_len(t.refresh_token) == av__secret_len(j->rt) &&
          av__secret_equal(t.refresh_token, av__secret_data(j->rt), av__secret_len(j->rt)))) {
        /* rotated: saved before the access token is used */
        j->new_at = tok;
        j->new_rt = av__secret_ref(t.refresh_token);
        j->new_exp = exp;
        av__oauth_token_clear(&t);
        av__upstream_release(j->up, 0);
        j->up = NULL;
        j->saving = 1;
        j->save_until = now_mono() + MINT_LOCK_WAIT;
        av__timer_stop(j->timer);
        job_save(j);
        return 1;
    }
    av__oauth_token_clear(&t);
    job_end(j, tok, exp, NULL);
    return 1;
}

static void job_step(mint_job *j)
{
    if (j->stepping) {
        j->again = 1;
        return;
    }
    j->stepping = 1;
    char why[260];
    for (;;) {
        j->again = 0;
        if (!j->up) {
            if (j->rwait)
                break; /* the client secret answers later */
            int rc = job_request(j, why, sizeof(why));
            if (rc == AV_ERR_AGAIN)
                break;
            if (rc) {
                job_end(j, NULL, 0, why);
                return;
            }
        }
        av_upconn *up = j->up;
        while (up->state < AV_UP_READY && av__upstream_step(up))
            ;
        if (up->state == AV_UP_FAILED) {
            snprintf(why, sizeof(why), "token endpoint unreachable: %s", up->side.errmsg);
            job_end(j, NULL, 0, why);
            return;
        }
        if (up->state != AV_UP_READY) {
            if (!j->again)
                break;
            continue;
        }
        if (!j->sent) {
            if (av__buf_room(up->side.pout) < j->req.len) {
                job_end(j, NULL, 0, "the token request is too large");
                return;
            }
            av__buf_append(up->side.pout, av__buf_head(&j->req), j->req.len);
            av__buf_free_wipe(&j->req);
            j->sent = 1;
        }
        int rc = av__side_pump_out(&up->side);
        int rc2 = rc >= 0 ? av__side_pump_in(&up->side) : rc;
        if (up->side.pin->len) {
            size_t take = up->side.pin->len;
            if (take > av__buf_room(&j->resp))
                take = av__buf_room(&j->resp);
            if (take && av__buf_append(&j->resp, av__buf_head(up->side.pin), take) != AV_OK) {
                job_end(j, NULL, 0, "out of memory");
                return;
            }
            av__buf_consume(up->side.pin, take);
        }
        if (job_answer(j))
            return; /* ended */
        if (rc < 0 || rc2 < 0) {
            snprintf(why, sizeof(why), "token endpoint connection failed: %s", up->side.errmsg);
            job_end(j, NULL, 0, why);
            return;
        }
        if (av__buf_room(&j->resp) == 0) {
            job_end(j, NULL, 0, "the token endpoint's answer is too large");
            return;
        }
        av__io_set(up->side.io, av__side_events(&up->side));
        if (!j->again && !(rc > 0 || rc2 > 0))
            break;
    }
    j->stepping = 0;
}

/* mint_start begins a mint for service |svc| (none runs). AV_OK, or an
 * error with the slot's failure recorded. */
static int mint_start(av_mint *m, av_pool *pool, size_t svc)
{
    mint_job *j = av__calloc(1, sizeof(*j));
    if (!j)
        return AV_ERR_NOMEM;
    j->m = m;
    j->svc = svc;
    j->pool = pool;
    av__buf_init(&j->req, MINT_REQ_MAX);
    av__buf_init(&j->resp, MINT_RESP_MAX);
    j->timer = av__timer_new(m->loop, job_on_timer, j);
    if (!j->timer) {
        job_free(j);
        return AV_ERR_NOMEM;
    }
    const av_config *cfg = m->cfg;
    av__timer_start(j->timer, cfg->connect_timeout + cfg->header_timeout);
    m->slots[svc].job = j;
    job_step(j); /* may end it at once (the slot then holds the answer) */
    return AV_OK;
}

int av__mint_get_async(av_mint *m, av_pool *pool, size_t svc, av_secret **out, char *why, size_t why_len,
                       av_resolver_done done, void *ud, av_mint_wait **wait)
{
    *out = NULL;
    *wait = NULL;
    if (svc >= m->cfg->nservices || !av__minter_of(m->cfg->services[svc].mint)) {
        snprintf(why, why_len, "service does not mint its credential");
        return AV_ERR_SECRET;
    }
    mint_slot *s = &m->slots[svc];
    double now = now_mono();
    if (m->share && !s->job && !s->remote)
        share_pull(m, svc, now); /* another worker's newer token */
    if (s->token && now < s->use_until) {
        /* refresh before expiry (unless another worker does); this request
         * keeps the current one */
        if (now >= s->refresh_at && !s->job && !s->remote && now >= s->fail_until && share_claim(m, svc) &&
            mint_start(m, pool, svc) != AV_OK)
            share_push(m, svc);
        *out = av__secret_ref(s->token);
        return AV_OK;
    }
    if (!s->job && !s->remote && now < s->fail_until) {
        snprintf(why, why_len, "%s", s->why);
        return AV_ERR_SECRET;
    }
    if (!s->job && !s->remote) {
        if (s->token) {
            av__secret_free(s->token);
            s->token = NULL;
        }
        if (!share_claim(m, svc)) {
            s->remote = 1; /* another worker mints it: wait for its answer */
        } else if (mint_start(m, pool, svc) != AV_OK) {
            snprintf(s->why, sizeof(s->why), "out of memory");
            s->fail_until = now + MINT_FAIL_REMEMBER;
            share_push(m, svc);
            snprintf(why, why_len, "out of memory");
            return AV_ERR_SECRET;
        }
        if (!s->job && !s->remote) { /* ended at once */
            if (s->token) {
                *out = av__secret_ref(s->token);
                return AV_OK;
            }
            snprintf(why, why_len, "%s", s->why);
            return AV_ERR_SECRET;
        }
    }
    av_mint_wait *w = av__calloc(1, sizeof(*w));
    if (!w) {
        snprintf(why, why_len, "out of memory");
        return AV_ERR_SECRET;
    }
    w->m = m;
    w->svc = svc;
    w->done = done;
    w->ud = ud;
    w->next = m->waits;
    if (m->waits)
        m->waits->prev = w;
    m->waits = w;
    *wait = w;
    return AV_ERR_AGAIN;
}

void av__mint_invalidate(av_mint *m, size_t svc, const av_secret *used)
{
    if (!m || svc >= m->cfg->nservices || !used)
        return;
    mint_slot *s = &m->slots[svc];
    if (s->token && av__secret_len(s->token) == av__secret_len(used) &&
        av__secret_equal(s->token, av__secret_data(used), av__secret_len(used))) {
        av__secret_free(s->token);
        s->token = NULL;
    }
    if (m->share) { /* nor may another worker take it from the share */
        pthread_mutex_lock(&m->share->lock);
        share_slot *ss = &m->share->slots[svc];
        if (ss->token && av__secret_len(ss->token) == av__secret_len(used) &&
            av__secret_equal(ss->token, av__secret_data(used), av__secret_len(used))) {
            av__secret_free(ss->token);
            ss->token = NULL;
        }
        pthread_mutex_unlock(&m->share->lock);
    }
}
