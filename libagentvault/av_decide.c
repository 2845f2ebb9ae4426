/* av_decide.c - held requests, their answers from any thread, remembered
 * rules, and the decision program's answer line (see av_decide.h). */
#include "av_decide.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "av_enc.h"
#include "av_mem.h"
#include "av_url.h"

const char *const av__decide_by_names[] = {"-", "program", "person", "rule", "timeout", "agent", "proxy"};

/* One mutex for every registry and hold: decisions are rare, and a hold
 * may outlive its registry (an embedder answering late). */
static pthread_mutex_t decide_mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct rule {
    char service[72];
    char token[72];        /* "" : no token */
    char method[24];       /* "" : any */
    char glob[256];        /* "" : any path */
    double expires;        /* monotonic (the loop's clock) */
} rule;

struct av_decide {
    av_hold *held;         /* pending holds, newest first */
    size_t nheld;
    uint64_t next_id;
    rule rules[AV_DECIDE_RULES_MAX];
    size_t nrules;
    int programs;          /* running decision and notification programs */
};

struct av_decision_request {
    av_decide *d;          /* NULL once the registry is gone */
    int refs;
    int state;             /* AV_HOLD_* */
    int listed;            /* in d->held */
    av_hold *next, *prev;
    av_async *wake;        /* the owning loop's; NULL once the exchange let go */
    char id[24];
    int allow, status, by;
    char reason[AV_DECIDE_REASON_MAX + 1];
    double start;
    /* the view */
    char method[24], scheme[8], host[260], path[256], service[72], token[72], gateway[72], peer[64], protocol[4];
    char port[8];
    char *json;
    size_t json_len;
};

int av__decide_new(av_decide **out)
{
    *out = av__calloc(1, sizeof(**out));
    if (!*out)
        return AV_ERR_NOMEM;
    (*out)->next_id = 1;
    return AV_OK;
}

static void hold_free(av_hold *h)
{
    av__free(h->json);
    av__free(h);
}

/* Unlink |h| from its registry's list (mutex held). */
static void unlist(av_hold *h)
{
    if (!h->listed)
        return;
    if (h->prev)
        h->prev->next = h->next;
    else if (h->d)
        h->d->held = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->next = h->prev = NULL;
    h->listed = 0;
    if (h->d)
        h->d->nheld--;
}

void av__decide_free(av_decide *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&decide_mu);
    while (d->held) {
        av_hold *h = d->held;
        unlist(h);
        h->d = NULL;
    }
    pthread_mutex_unlock(&decide_mu);
    av__free(d);
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void scopy(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s ? s : "");
}

int av__decide_rule_match(av_decide *d, const char *service, const char *token, const char *method,
                          const char *path)
{
    int hit = 0;
    double now = mono_now();
    pthread_mutex_lock(&decide_mu);
    for (size_t i = 0; i < d->nrules;) {
        rule *r = &d->rules[i];
        if (r->expires <= now) {
            d->rules[i] = d->rules[--d->nrules];
            continue;
        }
        if (!hit && strcmp(r->service, service) == 0 && strcmp(r->token, token ? token : "") == 0 &&
            (!r->method[0] || strcmp(r->method, method) == 0) &&
            (!r->glob[0] || av__glob_match(r->glob, path, strlen(path))))
            hit = 1;
        i++;
    }
    pthread_mutex_unlock(&decide_mu);
    return hit;
}

/* Remember an allow (mutex held). */
static void rule_add(av_decide *d, const av_hold *h, int scope, const char *glob, double seconds)
{
    rule *r;
    if (d->nrules < AV_DECIDE_RULES_MAX) {
        r = &d->rules[d->nrules++];
    } else {
        r = &d->rules[0];
        for (size_t i = 1; i < d->nrules; i++)
            if (d->rules[i].expires < r->expires)
                r = &d->rules[i];
    }
    memset(r, 0, sizeof(*r));
    scopy(r->service, sizeof(r->service), h->service);
    scopy(r->token, sizeof(r->token), h->token);
    if (scope == AV_REMEMBER_PATH) {
        scopy(r->method, sizeof(r->method), h->method);
        scopy(r->glob, sizeof(r->glob), glob && *glob ? glob : h->path);
    }
    r->expires = mono_now() + seconds;
}

int av__hold_new(av_decide *d, const av_hold_view *v, const char *json, size_t json_len, av_async *wake,
                 double now, av_hold **out)
{
    *out = NULL;
    av_hold *h = av__calloc(1, sizeof(*h));
    /* the id goes between the quotes of {"id":"" */
    if (!h || !(h->json = av__malloc(json_len + 24)))
        goto nomem;
    h->refs = 2;
    h->wake = wake;
    h->start = now;
    scopy(h->method, sizeof(h->method), v->method);
    scopy(h->scheme, sizeof(h->scheme), v->scheme);
    scopy(h->host, sizeof(h->host), v->host);
    scopy(h->path, sizeof(h->path), v->path);
    scopy(h->service, sizeof(h->service), v->service);
    scopy(h->token, sizeof(h->token), v->token);
    scopy(h->gateway, sizeof(h->gateway), v->gateway);
    scopy(h->peer, sizeof(h->peer), v->peer);
    scopy(h->protocol, sizeof(h->protocol), v->protocol);
    snprintf(h->port, sizeof(h->port), "%d", v->port);
    pthread_mutex_lock(&decide_mu);
    if (d->nheld >= AV_DECIDE_HELD_MAX) {
        pthread_mutex_unlock(&decide_mu);
        hold_free(h);
        return AV_ERR_LIMIT;
    }
    snprintf(h->id, sizeof(h->id), "%" PRIu64, d->next_id++);
    h->d = d;
    h->next = d->held;
    if (d->held)
        d->held->prev = h;
    d->held = h;
    h->listed = 1;
    d->nheld++;
    pthread_mutex_unlock(&decide_mu);
    /* {"id":"" + id + the rest */
    size_t il = strlen(h->id), o = 0;
    memcpy(h->json, json, 7);
    o = 7;
    memcpy(h->json + o, h->id, il);
    o += il;
    memcpy(h->json + o, json + 7, json_len - 7);
    o += json_len - 7;
    h->json[o] = '\0';
    h->json_len = o;
    *out = h;
    return AV_OK;
nomem:
    if (h)
        hold_free(h);
    return AV_ERR_NOMEM;
}

const char *av__hold_id(const av_hold *h)
{
    return h->id;
}

int av__hold_result(av_hold *h, int *allow, int *status, char reason[AV_DECIDE_REASON_MAX + 1], int *by)
{
    pthread_mutex_lock(&decide_mu);
    int st = h->state;
    *allow = h->allow;
    *status = h->status;
    *by = h->by;
    memcpy(reason, h->reason, AV_DECIDE_REASON_MAX + 1);
    pthread_mutex_unlock(&decide_mu);
    return st;
}

/* Decide |h| (mutex held): AV_OK or AV_ERR_STATE. */
static int decide_locked(av_hold *h, int state, int allow, int status, const char *reason, int by)
{
    if (h->state != AV_HOLD_PENDING)
        return AV_ERR_STATE;
    h->state = state;
    h->allow = allow;
    h->status = allow ? 0 : (status >= 400 && status <= 599 ? status : 403);
    h->by = by;
    if (reason)
        av__sanitize_line(h->reason, sizeof(h->reason), reason, strlen(reason), 0);
    unlist(h);
    if (h->wake)
        av__async_send(h->wake); /* a write to the loop's eventfd: never blocks */
    return AV_OK;
}

int av__decide_prog_take(av_decide *d)
{
    pthread_mutex_lock(&decide_mu);
    int ok = d->programs < AV_DECIDE_PROGRAMS_MAX;
    if (ok)
        d->programs++;
    pthread_mutex_unlock(&decide_mu);
    return ok;
}

void av__decide_prog_give(av_decide *d)
{
    pthread_mutex_lock(&decide_mu);
    if (d->programs > 0)
        d->programs--;
    pthread_mutex_unlock(&decide_mu);
}

void av__decide_deny_all(av_decide *d, int status, const char *reason)
{
    pthread_mutex_lock(&decide_mu);
    while (d && d->held)
        decide_locked(d->held, AV_HOLD_ANSWERED, 0, status, reason, AV_BY_PROXY); /* unlists it */
    pthread_mutex_unlock(&decide_mu);
}

int av__hold_decide(av_hold *h, int allow, int status, const char *reason, int by)
{
    pthread_mutex_lock(&decide_mu);
    int rc = decide_locked(h, by == AV_BY_TIMEOUT ? AV_HOLD_TIMEOUT : AV_HOLD_ANSWERED, allow, status, reason, by);
    pthread_mutex_unlock(&decide_mu);
    return rc;
}

/* Drop a reference (mutex held); returns the hold to free, or NULL. */
static av_hold *unref_locked(av_hold *h)
{
    if (--h->refs > 0)
        return NULL;
    unlist(h);
    return h;
}

void av__hold_detach(av_hold *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&decide_mu);
    if (h->state == AV_HOLD_PENDING) {
        h->state = AV_HOLD_CANCELLED;
        h->by = AV_BY_AGENT;
        unlist(h);
    }
    h->wake = NULL;
    av_hold *dead = unref_locked(h);
    pthread_mutex_unlock(&decide_mu);
    if (dead)
        hold_free(dead);
}

void av__hold_unref(av_hold *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&decide_mu);
    av_hold *dead = unref_locked(h);
    pthread_mutex_unlock(&decide_mu);
    if (dead)
        hold_free(dead);
}

/* ---- the public handle --------------------------------------------------- */

AV_EXPORT const char *av_decision_request_get(const av_decision_request *req, const char *field)
{
    if (!req || !field)
        return NULL;
    static const struct {
        const char *name;
        size_t off;
    } f[] = {
        {"id", offsetof(av_hold, id)},           {"method", offsetof(av_hold, method)},
        {"scheme", offsetof(av_hold, scheme)},   {"host", offsetof(av_hold, host)},
        {"port", offsetof(av_hold, port)},       {"path", offsetof(av_hold, path)},
        {"service", offsetof(av_hold, service)}, {"token", offsetof(av_hold, token)},
        {"gateway", offsetof(av_hold, gateway)}, {"peer", offsetof(av_hold, peer)},
        {"protocol", offsetof(av_hold, protocol)},
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        if (strcmp(field, f[i].name) == 0)
            return (const char *)req + f[i].off;
    return NULL;
}

AV_EXPORT const char *av_decision_request_json(const av_decision_request *req, size_t *len)
{
    if (!req)
        return NULL;
    if (len)
        *len = req->json_len;
    return req->json;
}

AV_EXPORT int av_decision_request_waiting(const av_decision_request *req)
{
    if (!req)
        return 0;
    pthread_mutex_lock(&decide_mu);
    int w = req->state == AV_HOLD_PENDING;
    pthread_mutex_unlock(&decide_mu);
    return w;
}

AV_EXPORT int av_decision_allow(av_decision_request *req, int remember, const char *path_glob,
                                double remember_seconds)
{
    if (!req)
        return AV_ERR_INVALID;
    int bad = (remember != AV_REMEMBER_NONE && remember != AV_REMEMBER_PATH && remember != AV_REMEMBER_SERVICE) ||
              (remember != AV_REMEMBER_NONE && !(remember_seconds > 0 && remember_seconds <= 7 * 86400.0)) ||
              (path_glob && (path_glob[0] != '/' || strlen(path_glob) >= 256));
    pthread_mutex_lock(&decide_mu);
    int rc = bad ? AV_ERR_INVALID : decide_locked(req, AV_HOLD_ANSWERED, 1, 0, NULL, AV_BY_PERSON);
    if (rc == AV_OK && remember != AV_REMEMBER_NONE && req->d)
        rule_add(req->d, req, remember, path_glob, remember_seconds);
    if (bad) /* never let a bad answer leave the request waiting until the timeout */
        decide_locked(req, AV_HOLD_ANSWERED, 0, 403, "the decision was malformed", AV_BY_PERSON);
    av_hold *dead = unref_locked(req);
    pthread_mutex_unlock(&decide_mu);
    if (dead)
        hold_free(dead);
    return rc;
}

AV_EXPORT int av_decision_deny(av_decision_request *req, int status, const char *reason)
{
    if (!req)
        return AV_ERR_INVALID;
    pthread_mutex_lock(&decide_mu);
    int rc = decide_locked(req, AV_HOLD_ANSWERED, 0, status, reason && *reason ? reason : "denied", AV_BY_PERSON);
    av_hold *dead = unref_locked(req);
    pthread_mutex_unlock(&decide_mu);
    if (dead)
        hold_free(dead);
    return rc;
}

/* ---- the answer line ------------------------------------------------------- */

typedef struct cur {
    const char *p, *end;
} cur;

static void skip_ws(cur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
        c->p++;
}

static int eat(cur *c, char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* A JSON string into |out| (|cap| bytes with the NUL): escapes decoded,
 * anything outside printable ASCII becomes '?'. -1 malformed, -2 too long. */
static int read_string(cur *c, char *out, size_t cap)
{
    size_t o = 0;
    if (!eat(c, '"'))
        return -1;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p++;
        if (ch == '"') {
            out[o] = '\0';
            return 0;
        }
        if (ch < 0x20)
            return -1;
        if (ch == '\\') {
            if (c->p >= c->end)
                return -1;
            char e = *c->p++;
            switch (e) {
            case '"': ch = '"'; break;
            case '\\': ch = '\\'; break;
            case '/': ch = '/'; break;
            case 'b': case 'f': case 'n': case 'r': case 't': ch = '?'; break;
            case 'u': {
                if (c->end - c->p < 4)
                    return -1;
                int v = 0;
                for (int i = 0; i < 4; i++) {
                    int h = hexval(c->p[i]);
                    if (h < 0)
                        return -1;
                    v = v * 16 + h;
                }
                c->p += 4;
                ch = v >= 0x20 && v < 0x7f ? (unsigned char)v : '?';
                break;
            }
            default:
                return -1;
            }
        } else if (ch >= 0x7f) {
            ch = '?';
        }
        if (o + 1 >= cap)
            return -2;
        out[o++] = (char)ch;
    }
    return -1;
}

static int word(cur *c, const char *w)
{
    size_t n = strlen(w);
    skip_ws(c);
    if ((size_t)(c->end - c->p) >= n && memcmp(c->p, w, n) == 0) {
        c->p += n;
        return 1;
    }
    return 0;
}

static int parse_line(const char *p, size_t n, av_decide_answer *out, const char **why);

int av__decide_parse_line(const char *p, size_t n, av_decide_answer *out, const char **why)
{
    static const char *dummy;
    why = why ? why : &dummy;
    memset(out, 0, sizeof(*out));
    int rc = parse_line(p, n, out, why);
    if (rc != AV_OK)
        memset(out, 0, sizeof(*out)); /* a refused answer never allows */
    return rc;
}

static int parse_line(const char *p, size_t n, av_decide_answer *out, const char **why)
{
    if (n > AV_DECIDE_LINE_MAX) {
        *why = "the answer is longer than 4096 bytes";
        return AV_ERR_PARSE;
    }
    /* one line: a final "\n" (or "\r\n") and nothing after it */
    const char *nl = memchr(p, '\n', n);
    if (nl && (size_t)(nl - p) + 1 != n) {
        *why = "the answer is more than one line";
        return AV_ERR_PARSE;
    }
    size_t len = nl ? (size_t)(nl - p) : n;
    if (len > 0 && p[len - 1] == '\r')
        len--;
    if (memchr(p, '\0', len) || memchr(p, '\r', len)) {
        *why = "the answer has control characters";
        return AV_ERR_PARSE;
    }
    cur c = {p, p + len};
    int seen_allow = 0, seen_reason = 0;
    *why = "the answer is not a JSON object with \"allow\": true or false";
    if (!eat(&c, '{'))
        return AV_ERR_PARSE;
    if (!eat(&c, '}')) {
        for (;;) {
            char key[16];
            int k = read_string(&c, key, sizeof(key));
            if (k != 0 || !eat(&c, ':'))
                return AV_ERR_PARSE;
            if (strcmp(key, "allow") == 0 && !seen_allow) {
                seen_allow = 1;
                if (word(&c, "true"))
                    out->allow = 1;
                else if (word(&c, "false"))
                    out->allow = 0;
                else
                    return AV_ERR_PARSE;
            } else if (strcmp(key, "reason") == 0 && !seen_reason) {
                seen_reason = 1;
                int r = read_string(&c, out->reason, sizeof(out->reason));
                if (r == -2) {
                    *why = "the reason is longer than 200 bytes";
                    return AV_ERR_PARSE;
                }
                if (r != 0)
                    return AV_ERR_PARSE;
            } else {
                *why = "the answer has an unknown or repeated member (allowed: allow, reason)";
                return AV_ERR_PARSE;
            }
            if (eat(&c, ','))
                continue;
            if (eat(&c, '}'))
                break;
            return AV_ERR_PARSE;
        }
    }
    skip_ws(&c);
    if (c.p != c.end || !seen_allow)
        return AV_ERR_PARSE;
    *why = "";
    return AV_OK;
}
