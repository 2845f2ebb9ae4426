/* av_exchange.c - the exchange: one request/response, protocol-neutral. Lifecycle
 * (begin, finish, fail, refuse, check_done, reset), its log line and audit
 * record, the two source->sink body loops, the response sink, trailers,
 * and x_step.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_exchange.h"
#include "av_mint.h"

/* av__x_error_text makes the one-line reason (control characters removed) and
 * the body of a proxy-made error: the reason and a newline, or JSON.
 * |reason| holds 300 bytes, |body| 700. */
void av__x_error_text(int status, const char *reason_text, int json, char reason[300], char body[700])
{
    reason_text = reason_text ? reason_text : "";
    av__sanitize_line(reason, 300, reason_text, strlen(reason_text), 0);
    if (!json) {
        snprintf(body, 700, "%s\n", reason);
        return;
    }
    char esc[600];
    av__json_escape_str(esc, sizeof(esc), reason, 0); /* sanitized: only '"' and '\\' to escape */
    snprintf(body, 700, "{\"error\":\"%s\",\"status\":%d}\n", esc, status);
}

/* Give up the upstream link: HTTP/1.1 connections back to the pool when
 * |reusable|, HTTP/2 streams detached (cancelled if still running). */
static void x_unlink_upstream(av_exchange *x, int reusable)
{
    if (x->up) {
        av__upstream_release(x->up, reusable);
        x->up = NULL;
    }
    if (x->ms.state != AV_MS_IDLE)
        av__mux_detach(&x->ms);
    /* x->link stays: the log line names the protocol that was used */
}

void av__x_reset(av_exchange *x)
{
    struct av_conn *c = x->c;
    const av_env *env = x->env;
    const char *gw = x->gw;
    const char *peer = x->peer;
    void (*wake)(void *) = x->wake;
    void *wake_ud = x->wake_ud;
    av_exchange *next = x->next, *prev = x->prev;
    int32_t sid = x->sid;
    const av_agent_ops *agent = x->agent;
    x_unlink_upstream(x, 0);
    av__x_decide_release(x);
    av__resolver_cancel(x->swait);
    av__mint_cancel(x->mwait);
    av__secret_free(x->mint_token);
    av__buf_free_wipe(&x->rq);
    av__buf_free_wipe(&x->a_rx);
    av__buf_free_wipe(&x->a_tx);
    av__secret_free(x->ws_secret);
    av__ws_bridge_free(x->ws_bridge);
    av__ws_scrub_free(x->ws_scrubber);
    av__secret_free(x->scrub_secret);
    av__scrub_set_unref(x->scrub_set);
    av__secret_free(x->ph_secret);
    av__secret_free(x->aws_secret);
    av__secret_free(x->aws_akid);
    av__secret_free(x->aws_token);
    av__buf_free_wipe(&x->bbuf);
    av__scrub_free(x->scrub);
    av__buf_free_wipe(&x->scrub_in);
    av__buf_free_wipe(&x->scrub_out);
    av__h1_fields_free(&x->req_tr);
    av__h1_fields_free(&x->resp_tr);
    av__snap_unref(x->snap); /* after the resolver wait, which belongs to it */
    memset(x, 0, sizeof(*x));
    x->c = c;
    x->next = next;
    x->prev = prev;
    x->sid = sid;
    x->agent = agent;
    x->env = env;
    x->gw = gw;
    x->peer = peer;
    x->wake = wake;
    x->wake_ud = wake_ud;
}

/* The name of the proxy token an exchange runs under, or NULL. */
static const char *x_token_name(const av_exchange *x)
{
    return x->snap && x->token >= 0 ? x->snap->cfg->tokens[x->token].name : NULL;
}

/* How an exchange ended, for its record: what was set on the way, else
 * judged from the error and the status sent. */
static int x_end(const av_exchange *x, const char *error)
{
    if (x->end)
        return x->end;
    if (!error)
        return AV_END_COMPLETE;
    return x->status >= 400 && x->status < 500 ? AV_END_REFUSED : AV_END_ERROR;
}

/* The record of an exchange (av_audit.h). */
static void x_record(const av_exchange *x, const char *error, double ms, av_xrecord *r)
{
    memset(r, 0, sizeof(*r));
    r->method = x->method;
    r->host = x->host;
    r->path = x->log_path;
    r->service = x->svc ? x->svc->name : NULL;
    r->token = x_token_name(x);
    r->gateway = x->gw;
    r->credential_ref = x->svc && x->injected ? x->svc->secret_ref : NULL;
    if (r->credential_ref) {
        static const char *const kinds[] = {"-", "bearer", "basic", "header", "query", "aws-sigv4"};
        int k = x->inj_alt ? x->svc->auth_alt : x->svc->auth;
        r->auth_kind = k > 0 && k < (int)(sizeof(kinds) / sizeof(kinds[0])) ? kinds[k] : NULL;
        if (x->svc->mint)
            r->mint = x->mint_how == AV_MINT_HOW_MINTED ? "minted" : "cached";
        if (x->svc->mint_key_ref) /* gcp:, github_app: the kind, then the key's reference */
            r->credential_ref2 = x->svc->mint_key_ref;
        if (x->svc->auth == AV_AUTH_AWS_SIGV4) {
            r->credential_ref2 = x->svc->aws_akid_ref;
            r->credential_ref3 = x->svc->aws_token_ref;
        }
    }
    r->status = x->status;
    r->bytes_up = x->bytes_req;
    r->bytes_down = x->bytes_resp;
    r->ms = ms;
    r->proto_agent = x->agent->proto;
    r->proto_up = x->link ? x->link->proto : "-";
    r->redactions = x->redactions;
    r->end = av__end_names[x_end(x, error)];
    r->error = error;
    if (x->decision || x->dwait) {
        static const char *const verdicts[] = {"pending", "allow", "deny", "cancelled"};
        int cancelled = x->dwait && av_decision_request_waiting(x->dwait);
        r->decision = cancelled ? "cancelled" : verdicts[x->decision];
        r->decided_by = cancelled ? "agent" : av__decide_by_names[x->decided_by];
        r->decide_ms = x->dwait ? (av__loop_now(x->env->loop) - x->decide_start) * 1000.0 : x->decide_ms;
        r->decide_id = x->decide_id[0] ? x->decide_id : NULL;
    }
}

/* The audit record of an exchange: one JSON line (av__audit_record). */
void av__x_audit(av_exchange *x, const char *error, double ms)
{
    const av_env *env = x->env;
    if (!av__audit_on(env->audit))
        return;
    av_xrecord r;
    x_record(x, error, ms, &r);
    env->now(env->clock_ud, &r.when);
    av__audit_record(env->audit, &r);
}

/* Write the exchange's one log line, its audit record, and count it for
 * /metrics. */
void av__x_log(av_exchange *x, const char *error)
{
    const av_env *env = x->env;
    double ms = (av__loop_now(env->loop) - x->start) * 1000.0;
    av_xrecord r;
    x_record(x, error, ms, &r);
    av__audit_log_line(env->log, &r);
    x->logged = 1;
    av__x_audit(x, error, ms);
    av__metrics_count_exchange(env->metrics, x->svc ? x->svc->name : NULL, x->status);
    env->metrics->m_ends[x_end(x, error)]++;
}

/* Finish the current exchange: log it, return the upstream, and (HTTP/1.1
 * agent) go back to reading heads or close. */
void av__x_finish(av_exchange *x, const char *error)
{
    const av_env *env = x->env;
    if (!x->logged)
        av__x_log(x, error);
    env->metrics->exchanges++;
    x_unlink_upstream(x, x->up_reusable && x->req_done && x->resp_done && x->req_ended);
    x->agent->finish(x);
}

/* Answer an exchange with a proxy-made error: HTTP/1.1 closes the
 * connection after it; HTTP/2 answers the stream only. */
void av__x_respond(av_exchange *x, int status, const char *why, int json)
{
    x->status = status;
    if (!x->end)
        x->end = status < 500 ? AV_END_REFUSED : AV_END_ERROR;
    x->agent->respond_error(x, status, why, json);
}

/* x_fail_end judges how a failing exchange ended: the upstream went away
 * after the request was sent (502), a timeout of ours (504), the SSRF
 * guard (403), or another error. */
static int x_fail_end(const av_exchange *x, int status)
{
    if (status == 504)
        return AV_END_TIMEOUT;
    if (status == 403)
        return AV_END_REFUSED;
    if (status == 502) {
        if (x->link && x->link->aborted(x))
            return AV_END_UPSTREAM_ABORT;
    }
    return AV_END_ERROR;
}

/* Abort: if nothing was sent to the agent yet, answer |status|; else cut. */
void av__x_fail(av_exchange *x, int status, const char *why)
{
    if (!x->end)
        x->end = x_fail_end(x, status);
    x->up_reusable = 0;
    x_unlink_upstream(x, 0);
    x->agent->fail(x, status, why);
}

/* Match, inject and store the upstream request, then start reaching the
 * upstream. Returns 0, or -1 after answering the exchange with an error. */
int av__x_begin(av_exchange *x, const av_req_in *in, const av_authority *dest, int dest_tls)
{
    const av_env *env = x->env;
    x->active = 1;
    x->start = av__loop_now(env->loop);
    copy_str(x->method, sizeof(x->method), in->method, in->method_len);
    x->is_head = ci_eq(in->method, in->method_len, "HEAD");
    x->dest = *dest;
    x->dest_tls = dest_tls;
    av__authority_format(dest, 0, x->host, sizeof(x->host));
    av__authority_format(dest, dest_tls ? 443 : 80, x->hostval, sizeof(x->hostval));
    size_t plen = 0;
    while (plen < in->target_len && in->target[plen] != '?')
        plen++;
    if (plen >= sizeof(x->log_path))
        plen = sizeof(x->log_path) - 1;
    memcpy(x->log_path, in->target, plen);
    x->log_path[plen] = '\0';
    x->agent_minor = in->minor;

    /* SECURITY 9: refuse TRACE, h2c upgrades and CONNECT inside a tunnel. */
    if (ci_eq(in->method, in->method_len, "TRACE")) {
        av__x_respond(x, 405, "TRACE is not allowed through agentvault", 0);
        return -1;
    }
    if (in->flags & AV_H1_F_UPGRADE_H2C) {
        av__x_respond(x, 400, "Upgrade: h2c is not allowed", 0);
        return -1;
    }
    if (in->flags & AV_H1_F_EXPECT_OTHER) {
        av__x_respond(x, 417, "only Expect: 100-continue is supported", 0);
        return -1;
    }

    /* Policy. An extended CONNECT is matched as the GET it replaces. */
    const char *mm = in->ext_connect ? "GET" : in->method;
    size_t mml = in->ext_connect ? 3 : in->method_len;
    const av_service *svc =
        av__policy_match(x->snap->cfg, !dest_tls, dest->host, dest->port, mm, mml, in->target, in->target_len);
    x->svc = svc;
    const av_token_cfg *tok = x->token >= 0 ? &x->snap->cfg->tokens[x->token] : NULL;
    int unmatched = tok && tok->unmatched ? tok->unmatched : x->snap->cfg->unmatched;
    if (!svc && unmatched == AV_UNMATCHED_DENY) {
        char m[AV_HOST_MAX + 120];
        if (tok && tok->unmatched)
            snprintf(m, sizeof(m), "no service matches %s and token %s has unmatched = deny", x->host, tok->name);
        else
            snprintf(m, sizeof(m), "no service matches %s and unmatched = deny", x->host);
        av__x_respond(x, 403, m, 1);
        return -1;
    }
    if (svc && tok && tok->nservices) {
        size_t i = 0;
        while (i < tok->nservices && strcmp(tok->services[i], svc->name) != 0)
            i++;
        if (i == tok->nservices) {
            char m[300];
            snprintf(m, sizeof(m), "token %s may not use service %s", tok->name, svc->name);
            env->metrics->m_limit_scope++;
            av__x_respond(x, 403, m, 1);
            return -1;
        }
    }
    if (tok && av__snap_rate_take(x->snap, x->token, av__loop_now(env->loop), &x->retry_after) != AV_OK) {
        env->metrics->m_limit_rate++;
        char m[200];
        snprintf(m, sizeof(m), "rate limit of token %s exceeded", tok->name);
        av__x_respond(x, 429, m, 0);
        return -1;
    }

    if (in->ws) {
        if (svc && svc->websocket_off) {
            char m[200];
            snprintf(m, sizeof(m), "WebSocket is off for service %s: use HTTP", svc->name);
            av__x_respond(x, 426, m, 0);
            return -1;
        }
        x->ws = 1;
        x->ext_connect = in->ext_connect;
        x->ws_frame = svc && (svc->placeholder_in & AV_SURF_WEBSOCKET);
        x->ws_scrub = svc && !x->ws_frame && !svc->websocket_scrub_off;
        for (size_t i = 0; i < in->nfields && x->ws_scrub; i++)
            if (av__h1_name_eq(&in->fields[i], "sec-websocket-extensions") &&
                av__ws_offers_deflate(in->fields[i].value, in->fields[i].value_len))
                x->ws_pmd_offer = 1;
        if (in->ws_key) {
            memcpy(x->ws_key, in->ws_key->value, in->ws_key->value_len);
            x->ws_key[in->ws_key->value_len] = '\0';
        } else {
            uint8_t rnd[16];
            if (env->random(env->clock_ud, rnd, sizeof(rnd)) != 0) {
                av__x_respond(x, 500, "no randomness for the WebSocket key", 0);
                return -1;
            }
            x->ws_key[av__b64_encode(rnd, sizeof(rnd), 0, x->ws_key)] = '\0';
        }
    }

    /* Store: method, target, the agent's end-to-end fields (minus any copy
     * of the field we inject). Cookies an HTTP/2 agent split into several
     * fields are joined again (RFC 9113 8.2.3). The credential is added by
     * av__x_inject once it is resolved. */
    const char *inj_name = svc ? av__inject_name_of(svc) : NULL;
    const char *alt_name = svc ? av__alt_name_of(svc) : NULL;
    /* auth_alt: the credential goes in the header the agent used; the main
     * one when it sent both or neither. Every copy of both is dropped. */
    x->inj_alt = alt_name && !av__h1_find(in->fields, in->nfields, inj_name) &&
                 av__h1_find(in->fields, in->nfields, alt_name);
    x->inj_name = x->inj_alt ? alt_name : inj_name;
    /* TE is hop-by-hop, but "trailers" in it is end to end in effect: gRPC
     * origins refuse requests without it. Sent on by av__x_h1_request_out /
     * av__x_h2_request_out. */
    x->te_trailers = !in->ws && av__h1_te_trailers(in->fields, in->nfields);
    av__buf_init(&x->rq, AV_HEAD_MAX + 8192);
    int rc = av__rq_put(x, in->method, in->method_len, &x->m_off);
    x->m_len = (uint32_t)in->method_len;
    if (!rc)
        rc = av__rq_put(x, in->target, in->target_len, &x->t_off);
    x->t_len = (uint32_t)in->target_len;
    size_t ncookies = 0;
    for (size_t i = 0; i < in->nfields && !rc; i++) {
        const av_h1_field *f = &in->fields[i];
        if (av__x_skip_request_field(in, f, inj_name, alt_name, x->ws_frame || x->ws_scrub))
            continue;
        if (x->agent->joins_cookies && av__h1_name_eq(f, "cookie")) {
            ncookies++;
            continue;
        }
        rc = av__rq_add(x, f->name, f->name_len, f->value, f->value_len);
    }
    if (!rc && ncookies) {
        /* name and the joined value, stored contiguously */
        if (x->nrqf >= X_RQ_FIELDS) {
            rc = AV_ERR_LIMIT;
        } else {
            rq_field *cf = &x->rqf[x->nrqf];
            rc = av__rq_put(x, "cookie", 6, &cf->no);
            cf->nl = 6;
            cf->vo = (uint32_t)x->rq.len;
            size_t vl = 0;
            for (size_t i = 0; i < in->nfields && !rc; i++) {
                const av_h1_field *f = &in->fields[i];
                if (!av__h1_name_eq(f, "cookie"))
                    continue;
                if (vl) {
                    rc = av__buf_append(&x->rq, "; ", 2);
                    vl += 2;
                }
                rc = rc ? rc : av__buf_append(&x->rq, f->value, f->value_len);
                vl += f->value_len;
            }
            cf->vl = (uint32_t)vl;
            x->nrqf++;
        }
    }
    if (rc) {
        av__x_respond(x, 431, "request header block too large after rewriting", 0);
        return -1;
    }
    if (svc && svc->auth == AV_AUTH_AWS_SIGV4 && av__x_aws_admit(x, in) != 0)
        return -1;
    if (svc && svc->placeholder && av__x_find_placeholders(x) != 0)
        return -1;
    if (svc && svc->placeholder && in->framing != RB_NONE && !in->ws) {
        for (size_t i = 0; i < x->nrqf; i++) {
            if (!(x->rqf[i].nl == 12 && strncasecmp(av__rq_ptr(x, x->rqf[i].no), "content-type", 12) == 0))
                continue;
            const char *v = av__rq_ptr(x, x->rqf[i].vo);
            size_t vl = x->rqf[i].vl;
            if ((vl >= 16 && strncasecmp(v, "application/json", 16) == 0) || memmem(v, vl, "+json", 5))
                x->body_buffer = 1;
            else if (vl >= 33 && strncasecmp(v, "application/x-www-form-urlencoded", 33) == 0)
                x->body_buffer = 2;
        }
        if (x->body_buffer)
            av__buf_init(&x->bbuf, X_BODY_BUFFER_MAX);
    }
    x->req_framing = in->framing;
    x->req_len = in->length;
    x->agent->intake(x, in);

    {
        /* "service/token": the credential scope of pooled connections */
        const char *sn = svc ? svc->name : "-";
        const char *tn = x->token >= 0 ? x->snap->cfg->tokens[x->token].name : "-";
        size_t sl = strlen(sn), tl = strlen(tn);
        if (sl + 1 + tl >= sizeof(x->scope)) {
            av__x_respond(x, 500, "credential scope name too long", 0);
            return -1;
        }
        memcpy(x->scope, sn, sl);
        x->scope[sl] = '/';
        memcpy(x->scope + sl + 1, tn, tl + 1);
    }
    /* a person or a program may have to say yes first (decide = ...) */
    int held = av__x_decide_begin(x);
    if (held != 0)
        return held < 0 ? -1 : 0;
    return av__x_inject(x);
}

/* Reach the upstream: WebSockets and cleartext go over HTTP/1.1
 * connections of their own; https requests through a mux, which dials
 * with ALPN h2 and falls back to HTTP/1.1. */
int av__x_choose_upstream(av_exchange *x)
{
    const av_env *env = x->env;
    int rc;
    if (x->ws || !x->dest_tls) {
        x->link = &av__link_h1_ops;
        rc = av__upstream_acquire(env->pool, &x->dest, x->dest_tls, x->scope, x->wake, x->wake_ud, &x->up);
    } else {
        x->link = &av__link_mux_ops;
        rc = av__mux_attach(env->pool, &x->dest, x->scope, &x->ms, x->wake, x->wake_ud);
    }
    if (rc) {
        av__x_respond(x, 500, "out of memory", 0);
        return -1;
    }
    return 0;
}

/* Sink toward the upstream (the link's). */
static size_t up_room(av_exchange *x)
{
    return x->link->room(x);
}

/* n <= room: all of it is taken, unless out of memory; then the exchange
 * fails rather than relay around the lost bytes (-1). */
static int up_write(av_exchange *x, const uint8_t *data, size_t n)
{
    if (x->link->write(x, data, n) != AV_OK) {
        av__x_fail(x, 502, "out of memory relaying the request body");
        return -1;
    }
    x->bytes_req += n;
    return 0;
}

static const av_body_sink up_sink = {up_room, up_write};

/* Trailer fields that cannot be forwarded are logged (SECURITY 16). */
void av__x_trailers_dropped(av_exchange *x, size_t n, const char *why)
{
    av__log(x->env->log, AV_LOG_INFO, "exchange host=%s path=%s: %zu trailer field(s) not forwarded: %s",
            x->host, x->log_path, n, why);
}

/* Trailers pass the checks a head does (SECURITY 6, 8, 11). Fields that may
 * not be trailers (av__h1_trailer_allowed) and, in requests, any copy of
 * the injected field are dropped and logged. A request trailer holding the
 * service's placeholder is refused: placeholders are replaced in the head
 * (and checked bodies) only, and by the time trailers arrive the head is
 * gone. Response trailer values are scrubbed of the injected secret. The
 * fields kept are copied to |dst|. Returns AV_OK, AV_ERR_DENIED (a
 * placeholder) or AV_ERR_NOMEM. */
int av__x_keep_trailers(av_exchange *x, int request, const av_h1_field *f, size_t n, av_h1_fields *dst)
{
    av_h1_field keep[AV_H1_MAX_FIELDS_CAP] = {{0}}; /* (trailers are rare: the clearing is cheap) */
    char *owned[AV_H1_MAX_FIELDS_CAP] = {0};
    const char *ph = request && x->svc ? x->svc->placeholder : NULL;
    size_t k = 0, dropped = 0;
    int rc = AV_OK;
    if (n > AV_H1_MAX_FIELDS_CAP)
        n = AV_H1_MAX_FIELDS_CAP; /* both parsers stop at AV_FIELDS_MAX */
    for (size_t i = 0; i < n && rc == AV_OK; i++) {
        if (!av__h1_trailer_allowed(&f[i]) || (request && av__x_is_credential_field(x, &f[i]))) {
            dropped++;
            continue;
        }
        if (ph && memmem(f[i].value, f[i].value_len, ph, strlen(ph))) {
            rc = AV_ERR_DENIED;
            break;
        }
        keep[k] = f[i];
        owned[k] = NULL;
        if (!request && x->scrub_set) {
            char *nv = NULL;
            size_t nl = 0;
            unsigned long cnt = 0;
            rc = av__scrub_header_value_set(x->scrub_set, f[i].value, f[i].value_len, &nv, &nl, &cnt);
            if (rc != AV_OK)
                break;
            if (cnt) {
                keep[k].value = nv;
                keep[k].value_len = nl;
                owned[k] = nv;
                x->redactions += cnt;
                x->env->metrics->m_redacted += cnt;
            } else {
                av__free(nv);
            }
        }
        k++;
    }
    if (rc == AV_OK)
        rc = av__h1_fields_set(dst, keep, k);
    for (size_t i = 0; i < k; i++)
        if (owned[i]) {
            av__wipe(owned[i], keep[i].value_len);
            av__free(owned[i]);
        }
    if (dropped)
        av__x_trailers_dropped(x, dropped, "not allowed in trailers (framing, routing, authentication or controls)");
    return rc == AV_OK || rc == AV_ERR_DENIED ? rc : AV_ERR_NOMEM;
}

/* Refuse an exchange whose request trailers failed av__x_keep_trailers. */
void av__x_refuse_trailers(av_exchange *x, int rc)
{
    char m[300];
    if (rc == AV_ERR_DENIED)
        snprintf(m, sizeof(m), "placeholder of service %s found in a request trailer: placeholders are replaced in "
                 "the header section only", x->svc ? x->svc->name : "-");
    else
        snprintf(m, sizeof(m), "out of memory while checking request trailers");
    av__x_fail(x, rc == AV_ERR_DENIED ? 403 : 500, m);
}

/* End the request body upstream, with its trailers where the upstream
 * framing carries them (HTTP/2 trailing HEADERS, a chunked trailer
 * section). Returns 1 when done, 0 when there is no room yet. */
int av__x_up_end(av_exchange *x)
{
    if (x->req_ended)
        return 1;
    if (!x->link->end(x))
        return 0; /* wait for the upstream to drain */
    av__h1_fields_free(&x->req_tr);
    x->req_ended = 1;
    return 1;
}

/* Move request body bytes agent -> upstream. Returns progress. */
int av__x_pump_request_body(av_exchange *x)
{
    int progress = 0;
    if (x->body_buffer) {
        /* collected, checked and rewritten by av__x_collect_body */
        while (x->bbuf.len > 0) {
            size_t room = up_room(x);
            if (room == 0)
                break;
            size_t n = x->bbuf.len < room ? x->bbuf.len : room;
            if (up_write(x, av__buf_head(&x->bbuf), n) < 0)
                return 1; /* the exchange failed */
            av__buf_consume(&x->bbuf, n);
            progress = 1;
        }
        if (x->bbuf.len == 0 && x->req_done && !x->req_ended && x->head_sent && av__x_up_end(x))
            progress = 1;
        return progress;
    }
    /* decide_body: the bytes the decision saw go first */
    while (x->dbody.len > 0) {
        size_t room = up_room(x);
        if (room == 0)
            return progress;
        size_t n = x->dbody.len < room ? x->dbody.len : room;
        if (up_write(x, av__buf_head(&x->dbody), n) < 0)
            return 1; /* the exchange failed */
        av__buf_consume(&x->dbody, n);
        progress = 1;
    }
    int moved = x->agent->pump_body(x, &up_sink);
    if (moved < 0)
        return 1; /* the exchange failed */
    progress |= moved;
    if (x->req_done && !x->req_ended && x->head_sent && av__x_up_end(x))
        progress = 1;
    return progress;
}

/* Sink toward the agent. */
size_t av__x_agent_room(av_exchange *x)
{
    return x->agent->room(x);
}

int av__x_agent_write(av_exchange *x, const uint8_t *data, size_t n)
{
    if (x->agent->write(x, data, n) != AV_OK) {
        av__x_fail(x, 502, "out of memory relaying the response");
        return -1;
    }
    x->bytes_resp += n;
    return 0;
}

/* End the response toward the agent, with its trailers where the agent's
 * framing carries them: HTTP/2 trailing HEADERS, or the trailer section of
 * a chunked HTTP/1.1 body. A Content-Length or close-delimited response
 * cannot: they are dropped and logged (an HTTP/1.1 agent that sent
 * TE: trailers gets chunked framing for that reason, av__x_pump_response_mux).
 * Returns 1 when done, 0 when there is no room yet. */
int av__x_agent_end(av_exchange *x)
{
    if (!x->agent->end(x))
        return 0; /* wait for the agent to drain */
    av__h1_fields_free(&x->resp_tr);
    return 1;
}

/* The response body sink: straight to the agent, or through the scrubber
 * (av__x_scrub_pump moves it on). av__x_body_end marks the upstream body complete. */
size_t av__x_body_room(av_exchange *x)
{
    return x->scrub ? av__buf_room(&x->scrub_in) : av__x_agent_room(x);
}

int av__x_body_write(av_exchange *x, const uint8_t *data, size_t n)
{
    if (!x->scrub)
        return av__x_agent_write(x, data, n);
    if (av__buf_append(&x->scrub_in, data, n) != AV_OK) { /* n <= av__x_body_room */
        av__x_fail(x, 502, "out of memory relaying the response");
        return -1;
    }
    return 0;
}

void av__x_body_end(av_exchange *x)
{
    x->body_ended = 1;
    if (x->scrub)
        return; /* av__x_scrub_pump finishes the response */
    if (x->resp_kind != RK_NONE && !av__x_agent_end(x))
        return; /* av__x_end_pending retries */
    x->resp_done = 1;
}

/* A response whose end (its trailers) waited for room toward the agent.
 * Returns progress. */
int av__x_end_pending(av_exchange *x)
{
    if (!x->body_ended || x->scrub || x->resp_done || !av__x_agent_end(x))
        return 0;
    x->resp_done = 1;
    return 1;
}

/* Refuse an exchange before anything went upstream. */
void av__x_refuse(av_exchange *x, int status, const char *why)
{
    x->req_done = 1;
    av__x_respond(x, status, why, 0);
    x->agent->refused(x, why);
}

int av__x_mint_replayable(const av_exchange *x)
{
    return x->svc && x->svc->mint && x->mint_token && x->mint_retry == 0 && x->req_done && x->bytes_req == 0 &&
           !x->body_buffer && !x->ph_found && !x->ws && x->svc->auth != AV_AUTH_QUERY && x->rq.len > 0;
}

int av__x_mint_restart(av_exchange *x)
{
    x->mint_retry = 2;
    x_unlink_upstream(x, 0); /* the 401's body is never read: not pooled */
    x->link = NULL;
    x->head_sent = 0;
    x->req_ended = 0;
    av__h1_scan_reset(&x->rscan);
    if (x->inj_name)
        av__rq_remove(x, x->inj_name); /* the refused token */
    av__scrub_set_unref(x->scrub_set);
    x->scrub_set = NULL;
    av__secret_free(x->scrub_secret);
    x->scrub_secret = NULL;
    x->injected = 0;
    x->mint_how = 0;
    av__log(x->env->log, AV_LOG_INFO, "service %s: the origin answered 401 to a minted token: replaying %.*s with a "
            "new one", x->svc->name, (int)x->m_len, av__rq_ptr(x, x->m_off));
    if (av__x_inject(x) != 0)
        x->agent->dropped(x);
    return 1;
}

/* One step of an exchange. Returns progress. */
int av__x_step(av_exchange *x)
{
    int progress = 0;
    if (!x->active)
        return 0;
    if (x->decide_ready) {
        if (av__x_decide_apply(x) != 0) {
            x->agent->dropped(x);
            return 1;
        }
        progress = 1;
    }
    if (x->dbody_wait && !x->a_closed) {
        progress |= av__x_decide_body(x); /* decide_body: the first bytes, then the hold */
        if (!x->active || x->dbody_wait)
            return progress;
    }
    if (x->dwait && !x->decide_ready && x->agent->body_aborted(x)) {
        /* HTTP/1.1: the agent went away while its request was held (an
         * HTTP/2 stream reset is a_closed, below) */
        x->end = AV_END_CLIENT_ABORT;
        x->up_reusable = 0;
        x->resp_done = 1;
        av__x_finish(x, "the agent went away while the request was held for a decision");
        return 1;
    }
    if (x->dwait && x->a_closed && !x->end)
        x->end = AV_END_CLIENT_ABORT; /* HTTP/2: the stream was reset while held */
    if ((x->swait || x->mwait || x->dwait) && !x->a_closed)
        return progress; /* held for a decision, or the credential is being resolved or minted */
    if (x->secret_ready) {
        if (av__x_inject(x) != 0) {
            x->agent->dropped(x);
            return 1;
        }
        progress = 1;
    }
    if (x->a_closed && !x->resp_head_done) {
        x->resp_done = 1;
        x->agent->check_done(x);
        return 1;
    }
    if (x->body_buffer && !x->body_collected) {
        progress |= av__x_collect_body(x);
        if (!x->active || !x->body_collected)
            return progress;
    }
    if (!x->link)
        return progress;
    return progress | x->link->step(x);
}
