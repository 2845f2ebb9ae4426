/* av_exchange_decide.c - the exchange's side of decisions (decide = ask |
 * command:): the request's view and JSON object, the hold and its timer,
 * the decision program, the notification program, and applying the
 * answer on the exchange's own loop (av_decide.h has the thread-safe
 * part).
 *
 * The view never carries a secret or a query value: the request is held
 * before av__x_inject, so the stored request holds no credential yet, the
 * credential's field was never stored (av__x_begin leaves every agent copy
 * out), and of the query only the parameter names are shown.
 */
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "av_exchange.h"

/* A bounded JSON writer over a fixed buffer: once full, it stops and
 * remembers it (the caller marks the object truncated or gives up). */
typedef struct jw {
    char *p;
    size_t len, cap;
    int full;
} jw;

static void jw_raw(jw *w, const char *s, size_t n)
{
    if (w->full || n > w->cap - w->len - 1) {
        w->full = 1;
        return;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len] = '\0';
}

static void jw_lit(jw *w, const char *s)
{
    jw_raw(w, s, strlen(s));
}

/* A JSON string (or null for NULL) of at most |max| input bytes. */
static void jw_str(jw *w, const char *s, size_t n, size_t max)
{
    if (!s) {
        jw_lit(w, "null");
        return;
    }
    char esc[6 * 256 + 1];
    if (n > max)
        n = max;
    if (n > 256)
        n = 256;
    size_t el = av__json_escape(s, n, AV__JSON_BYTES, esc);
    jw_raw(w, "\"", 1);
    jw_raw(w, esc, el);
    jw_raw(w, "\"", 1);
}

static void jw_cstr(jw *w, const char *s)
{
    jw_str(w, s, s ? strlen(s) : 0, 256);
}

static const char *x_token(const av_exchange *x)
{
    return x->snap && x->token >= 0 ? x->snap->cfg->tokens[x->token].name : NULL;
}

/* The request as decision programs, the CLI and notifications see it. The
 * id is left empty ({"id":""): av__hold_new fills it in. */
static size_t x_decide_json(const av_exchange *x, char *buf, size_t cap)
{
    jw w = {buf, 0, cap, 0};
    char num[24];
    buf[0] = '\0';
    jw_lit(&w, "{\"id\":\"\",\"method\":");
    jw_cstr(&w, x->method);
    jw_lit(&w, ",\"scheme\":");
    jw_lit(&w, x->dest_tls ? "\"https\"" : "\"http\"");
    jw_lit(&w, ",\"host\":");
    jw_cstr(&w, x->dest.host);
    snprintf(num, sizeof(num), ",\"port\":%d", x->dest.port);
    jw_lit(&w, num);
    jw_lit(&w, ",\"path\":");
    jw_cstr(&w, x->log_path);
    /* the names of the query's parameters, as sent (percent-encoded), in
     * order: never their values */
    jw_lit(&w, ",\"query\":[");
    const char *t = av__rq_ptr(x, x->t_off);
    const char *q = memchr(t, '?', x->t_len);
    size_t nq = 0;
    if (q) {
        const char *end = t + x->t_len;
        const char *p = q + 1;
        while (p < end && nq < 64) {
            const char *amp = memchr(p, '&', (size_t)(end - p));
            const char *item_end = amp ? amp : end;
            const char *eq = memchr(p, '=', (size_t)(item_end - p));
            const char *name_end = eq ? eq : item_end;
            if (name_end > p) {
                if (nq++)
                    jw_lit(&w, ",");
                jw_str(&w, p, (size_t)(name_end - p), 128);
            }
            p = item_end + 1;
        }
    }
    jw_lit(&w, "],\"headers\":[");
    for (size_t i = 0; i < x->nrqf; i++) {
        if (i)
            jw_lit(&w, ",");
        jw_str(&w, av__rq_ptr(x, x->rqf[i].no), x->rqf[i].nl, 128);
    }
    jw_lit(&w, "],\"service\":");
    jw_cstr(&w, x->svc->name);
    jw_lit(&w, ",\"token\":");
    jw_cstr(&w, x_token(x));
    jw_lit(&w, ",\"gateway\":");
    jw_cstr(&w, x->gw);
    jw_lit(&w, ",\"peer\":");
    jw_cstr(&w, x->peer);
    jw_lit(&w, ",\"protocol\":");
    jw_cstr(&w, x->agent->proto);
    jw_lit(&w, ",\"websocket\":");
    jw_lit(&w, x->ws ? "true" : "false");
    if (x->svc->decide_body && x->req_framing != RB_NONE && !x->ws) {
        /* the body's first bytes, as the agent sent them (the placeholder,
         * never the secret: nothing has been placed yet), base64 */
        jw_lit(&w, ",\"body\":\"");
        size_t bl = x->dbody.len < x->svc->decide_body ? x->dbody.len : x->svc->decide_body;
        if (!w.full && av__b64_encoded_len(bl, 0) < w.cap - w.len - 64) {
            w.len += av__b64_encode(av__buf_head(&x->dbody), bl, 0, w.p + w.len);
            w.p[w.len] = '\0';
        } else {
            w.full = 1;
        }
        int whole = x->req_done && x->dbody.len <= x->svc->decide_body;
        jw_lit(&w, whole ? "\",\"body_complete\":true" : "\",\"body_complete\":false");
    }
    jw_lit(&w, "}");
    return w.full ? 0 : w.len;
}

/* Stop and free a program of the exchange's (NULL: none), giving back its
 * slot. */
static void x_prog_free(av_exchange *x, av_cmd **cmd)
{
    if (!*cmd)
        return;
    av__cmd_free(*cmd);
    *cmd = NULL;
    av__decide_prog_give(x->env->decide);
}

static double x_decide_timeout(const av_exchange *x)
{
    return x->svc->decide_timeout > 0 ? x->svc->decide_timeout : AV_DECIDE_TIMEOUT_DEFAULT;
}

/* The answer is in (any thread sent the wakeup): apply it in the step. */
static void x_decide_wake(void *ud)
{
    av_exchange *x = ud;
    if (!x->dwait)
        return;
    x->decide_ready = 1;
    x->wake(x->wake_ud);
}

static void x_decide_timer(void *ud)
{
    av_exchange *x = ud;
    char m[120];
    snprintf(m, sizeof(m), "no decision within %.0f s (decide_timeout)", x_decide_timeout(x));
    av__hold_decide(x->dwait, 0, 403, m, AV_BY_TIMEOUT); /* sends the wakeup */
}

/* The decision program ended: its one JSON line is the answer; a crash,
 * a non-zero exit, a timeout or anything else it printed is a deny. */
static void x_decide_cmd_done(void *ud, av_cmd *cmd, int how, int status)
{
    av_exchange *x = ud;
    char m[AV_DECIDE_REASON_MAX + 1];
    size_t n;
    const uint8_t *out = av__cmd_output(cmd, &n);
    av_decide_answer a;
    const char *why = "";
    int allow = 0;
    if (how == AV_CMD_TIMEOUT) {
        snprintf(m, sizeof(m), "the decision program did not answer in time");
    } else if (how == AV_CMD_TOO_BIG) {
        snprintf(m, sizeof(m), "the decision program printed too much");
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (WIFSIGNALED(status))
            snprintf(m, sizeof(m), "the decision program was killed by signal %d", WTERMSIG(status));
        else
            snprintf(m, sizeof(m), "the decision program exited with status %d", WEXITSTATUS(status));
    } else if (av__decide_parse_line((const char *)out, n, &a, &why) != AV_OK) {
        snprintf(m, sizeof(m), "the decision program's answer is malformed: %s", why);
    } else {
        allow = a.allow;
        snprintf(m, sizeof(m), "%s", a.reason[0] ? a.reason : "denied by the decision program");
    }
    if (!allow)
        av__log(x->env->log, AV_LOG_INFO, "decision %s: program %s: deny: %s", x->decide_id, av__cmd_prog(cmd), m);
    x_prog_free(x, &x->dcmd);
    av__hold_decide(x->dwait, allow, 403, allow ? NULL : m, AV_BY_PROGRAM);
}

/* The notification program ended: nothing to read from it. */
static void x_notify_done(void *ud, av_cmd *cmd, int how, int status)
{
    av_exchange *x = ud;
    if (how != AV_CMD_EXITED || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        av__log(x->env->log, AV_LOG_WARN, "decision %s: decide_notify program %s failed (%s)", x->decide_id,
                av__cmd_prog(cmd), how == AV_CMD_TIMEOUT ? "timed out" : "exit status or output");
    x_prog_free(x, &x->dnotify);
}

static int x_decide_hold(av_exchange *x);

/* decide_body's collection sink: decide_body bytes, and up to 64 more
 * (an HTTP/1.1 agent's body is fed in steps of at least 64 bytes of room);
 * the decision sees the first decide_body. */
static size_t dbody_room(av_exchange *x)
{
    size_t want = x->svc->decide_body;
    return x->dbody.len < want ? want + 64 - x->dbody.len : 0;
}

static int dbody_write(av_exchange *x, const uint8_t *data, size_t n)
{
    if (av__buf_append(&x->dbody, data, n) != AV_OK) { /* n <= room */
        av__x_refuse(x, 500, "out of memory"); /* never forward a short body */
        return -1;
    }
    return 0;
}

static const av_body_sink dbody_sink = {dbody_room, dbody_write};

int av__x_decide_body(av_exchange *x)
{
    int progress = av__x_take_body(x, &dbody_sink);
    if (progress < 0)
        return 1; /* answered */
    if (!x->req_done && x->dbody.len < x->svc->decide_body)
        return progress; /* more may come */
    x->dbody_wait = 0;
    if (x_decide_hold(x) < 0)
        x->agent->dropped(x);
    return 1;
}

int av__x_decide_begin(av_exchange *x)
{
    const av_env *env = x->env;
    const av_service *svc = x->svc;
    if (!svc || !svc->decide)
        return 0;
    const av_config *cfg = x->snap->cfg;
    const char *tok = x_token(x);
    if (av__decide_rule_match(env->decide, svc->name, tok, x->method, x->log_path)) {
        x->decision = X_DECIDE_ALLOW;
        x->decided_by = AV_BY_RULE;
        return 0;
    }
    int ask = strcmp(svc->decide, "ask") == 0;
    char m[300];
    if (ask && !cfg->decide_fn) {
        x->decision = X_DECIDE_DENY;
        x->decided_by = AV_BY_PROXY;
        snprintf(m, sizeof(m), "service %s asks a person (decide = ask) but no one is there to ask", svc->name);
        av__x_respond(x, 403, m, 0);
        return -1;
    }
    if (svc->decide_body && x->req_framing != RB_NONE && !x->ws) {
        /* the decision sees the body's first bytes: collect them first
         * (av__x_step runs av__x_decide_body until they are in) */
        av__buf_init(&x->dbody, svc->decide_body + 64);
        x->dbody_wait = 1;
        return 1;
    }
    return x_decide_hold(x);
}

/* Hold the request: its JSON, the hold, the timer, the program or the
 * embedder's callback. 1 (held), or -1 after answering. */
static int x_decide_hold(av_exchange *x)
{
    const av_env *env = x->env;
    const av_service *svc = x->svc;
    const av_config *cfg = x->snap->cfg;
    const char *tok = x_token(x);
    int ask = strcmp(svc->decide, "ask") == 0;
    size_t jcap = AV_DECIDE_JSON_MAX + av__b64_encoded_len(x->dbody.len, 0) + 64;
    char *json = av__malloc(jcap);
    size_t jl = json ? x_decide_json(x, json, jcap) : 0;
    x->dwake = av__async_new(env->loop, x_decide_wake, x);
    x->dtimer = av__timer_new(env->loop, x_decide_timer, x);
    x->decide_start = av__loop_now(env->loop);
    av_hold_view v = {x->method, x->dest_tls ? "https" : "http", x->dest.host, x->log_path, svc->name,
                      tok, x->gw, x->peer, x->agent->proto, x->dest.port};
    int rc = json && jl && x->dwake && x->dtimer
                 ? av__hold_new(env->decide, &v, json, jl, x->dwake, x->decide_start, &x->dwait)
                 : AV_ERR_NOMEM;
    if (rc != AV_OK) {
        av__free(json);
        if (rc == AV_ERR_LIMIT)
            env->metrics->m_limit_held++; /* the exchange's log line says why */
        x->decision = X_DECIDE_DENY;
        x->decided_by = AV_BY_PROXY;
        av__x_respond(x, rc == AV_ERR_LIMIT ? 503 : 500,
                      rc == AV_ERR_LIMIT ? "too many requests are waiting for a decision"
                                         : "out of memory while holding the request for a decision",
                      0);
        return -1;
    }
    av__free(json);
    snprintf(x->decide_id, sizeof(x->decide_id), "%s", av__hold_id(x->dwait));
    size_t hjl = 0;
    const char *hj = av_decision_request_json(x->dwait, &hjl);
    av__timer_start(x->dtimer, x_decide_timeout(x));
    av__log(env->log, AV_LOG_INFO, "decision %s: held %s %s%s for %s (service %s)", x->decide_id, x->method, x->host,
            x->log_path, ask ? "a person" : "a program", svc->name);
    if (!ask) {
        /* The program answers through av__hold_decide: the answerer's
         * reference is not needed. */
        av__hold_unref(x->dwait);
        char why[200];
        double t = cfg->command_timeout < x_decide_timeout(x) ? cfg->command_timeout : x_decide_timeout(x);
        if (!av__decide_prog_take(env->decide)) {
            env->metrics->m_limit_decide_progs++; /* the exchange's log line says why */
            av__hold_decide(x->dwait, 0, 503, "too many decisions are running: try again later", AV_BY_PROXY);
            return 1;
        }
        rc = av__cmd_start(env->loop, svc->decide + 8, hj, hjl, t, AV_DECIDE_LINE_MAX, x_decide_cmd_done, x,
                           &x->dcmd, why, sizeof(why));
        if (rc != AV_OK) {
            av__decide_prog_give(env->decide);
            av__log(env->log, AV_LOG_WARN, "decision %s: %s", x->decide_id, why);
            av__hold_decide(x->dwait, 0, 403, "the decision program cannot run", AV_BY_PROGRAM);
        }
        return 1;
    }
    if (cfg->decide_notify) {
        char why[200];
        if (!av__decide_prog_take(env->decide)) {
            env->metrics->m_limit_decide_progs++;
            av__log(env->log, AV_LOG_WARN, "decision %s: decide_notify not run: %d programs are running already",
                    x->decide_id, AV_DECIDE_PROGRAMS_MAX);
        } else if (av__cmd_start(env->loop, cfg->decide_notify + 8, hj, hjl, cfg->command_timeout, 4096,
                                 x_notify_done, x, &x->dnotify, why, sizeof(why)) != AV_OK) {
            av__decide_prog_give(env->decide);
            av__log(env->log, AV_LOG_WARN, "decision %s: decide_notify: %s", x->decide_id, why);
        }
    }
    cfg->decide_fn(cfg->decide_ud, x->dwait); /* the answerer's reference is theirs now */
    return 1;
}

void av__x_decide_release(av_exchange *x)
{
    if (x->dwait) {
        if (av_decision_request_waiting(x->dwait)) {
            x->decision = X_DECIDE_CANCELLED;
            x->decided_by = AV_BY_AGENT;
            av__log(x->env->log, AV_LOG_INFO, "decision %s: cancelled: the agent went away while it was held",
                    x->decide_id);
        }
        av__hold_detach(x->dwait); /* no wakeup is sent after this */
        x->dwait = NULL;
    }
    av__async_free(x->dwake);
    x->dwake = NULL;
    av__timer_free(x->dtimer);
    x->dtimer = NULL;
    x_prog_free(x, &x->dcmd);
    x_prog_free(x, &x->dnotify);
    av__buf_free_wipe(&x->dbody);
    x->dbody_wait = 0;
}

int av__x_decide_apply(av_exchange *x)
{
    int allow = 0, status = 403, by = AV_BY_NONE;
    char reason[AV_DECIDE_REASON_MAX + 1];
    x->decide_ready = 0;
    int st = av__hold_result(x->dwait, &allow, &status, reason, &by);
    if (st == AV_HOLD_PENDING)
        return 0; /* a stale wakeup */
    x->decide_ms = (av__loop_now(x->env->loop) - x->decide_start) * 1000.0;
    x->decided_by = by;
    x->decision = allow ? X_DECIDE_ALLOW : X_DECIDE_DENY;
    /* the notification program may still run: it is left to finish */
    av__hold_detach(x->dwait);
    x->dwait = NULL;
    av__async_free(x->dwake);
    x->dwake = NULL;
    av__timer_free(x->dtimer);
    x->dtimer = NULL;
    x_prog_free(x, &x->dcmd);
    av__log(x->env->log, AV_LOG_INFO, "decision %s: %s by %s after %.0f ms%s%s", x->decide_id,
            allow ? "allowed" : "denied", av__decide_by_names[by], x->decide_ms, allow ? "" : ": ",
            allow ? "" : reason);
    if (!allow) {
        char m[AV_DECIDE_REASON_MAX + 64];
        snprintf(m, sizeof(m), "denied by %s: %s", av__decide_by_names[by], reason);
        av__x_respond(x, status, m, 0);
        return -1;
    }
    return av__x_inject(x);
}
