/* av_proxy_req.c - proxy-request admission for HTTP/1.1 heads: CONNECT, absolute-form
 * and origin-form routing, Host binding (SECURITY 1), proxy tokens
 * (Proxy-Authorization), gateway tokens, the snapshot refresh and token
 * revocation.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_conn_int.h"

/* The wall clock in seconds (token expiry), through the environment. */
static long long conn_wall_seconds(const av_conn *c)
{
    struct timespec ts;
    c->env->now(c->env->clock_ud, &ts);
    return (long long)ts.tv_sec;
}

/* Returns the token index, -1 if none matched. */
static int conn_check_token(av_conn *c, const av_h1_request *req)
{
    const av_h1_field *f = av__h1_find(req->fields, req->nfields, "proxy-authorization");
    if (!f)
        return -1;
    const char *v = f->value;
    size_t n = f->value_len;
    uint8_t dec[1024];
    const uint8_t *tok = NULL;
    size_t toklen = 0;
    int match = -1;
    if (n > 6 && strncasecmp(v, "Basic ", 6) == 0) {
        size_t off = 6;
        while (off < n && v[off] == ' ')
            off++;
        size_t dl = 0;
        if (av__b64_decode(v + off, n - off, 0, dec, sizeof(dec), &dl) != AV_OK)
            return -1;
        uint8_t *colon = memchr(dec, ':', dl);
        tok = colon ? colon + 1 : dec;
        toklen = colon ? dl - (size_t)(colon + 1 - dec) : dl;
    } else if (n > 7 && strncasecmp(v, "Bearer ", 7) == 0) {
        size_t off = 7;
        while (off < n && v[off] == ' ')
            off++;
        tok = (const uint8_t *)v + off;
        toklen = n - off;
    } else {
        return -1;
    }
    match = av__conn_find_token(c, tok, toklen);
    av__wipe(dec, sizeof(dec));
    return match;
}

int av__conn_tokens_on(const av_conn *c)
{
    return c->snap->cfg->ntokens > 0 || c->snap->cfg->token_store;
}

int av__conn_find_token(av_conn *c, const uint8_t *tok, size_t len)
{
    return av__snap_find_token(c->snap, tok, len, conn_wall_seconds(c));
}

/* 0 if authorized (or no tokens configured); else a 407 was queued. */
static int conn_authorize(av_conn *c, const av_h1_request *req)
{
    if (!av__conn_tokens_on(c))
        return 0;
    int t = conn_check_token(c, req);
    if (t < 0) {
        av__conn_respond(c, 407, "proxy authentication required: use http://agent:TOKEN@proxy", 0, 1);
        return -1;
    }
    c->token = t;
    return 0;
}

/* A reload happened since this connection last looked: move it to the
 * current configuration between requests (exchanges in flight keep their
 * own snapshot), so revoked tokens and new services apply to keep-alive
 * and multiplexed connections too. A proxy token that authenticated the
 * connection (a CONNECT tunnel) must still exist with the same secret and
 * not have expired; otherwise -1 and the connection keeps nothing. */
int av__conn_refresh_snap(av_conn *c)
{
    av_snap *cur = *c->env->snap_cur;
    if (c->snap == cur)
        return 0;
    int tok = -1;
    if (c->token >= 0) {
        tok = av__snap_carry_token(c->snap, c->token, cur, conn_wall_seconds(c));
        if (tok < 0) {
            c->revoked = 1; /* sticky: the connection never works again */
            return -1;
        }
    }
    av__snap_unref(c->snap);
    c->snap = av__snap_ref(cur);
    c->token = tok;
    return 0;
}

/* A gateway with a token: the request must carry X-Agentvault-Token with
 * it (compared in constant time). Returns 1 if allowed. */
int av__gw_token_ok(av_conn *c, const av_h1_field *fields, size_t nfields)
{
    if (!c->gw || c->gw->cfg_index < 0 || !c->snap->gw_tokens || !c->snap->gw_tokens[c->gw->cfg_index])
        return 1;
    const av_h1_field *f = av__h1_find(fields, nfields, "x-agentvault-token");
    return f && av__secret_equal(c->snap->gw_tokens[c->gw->cfg_index], (const uint8_t *)f->value, f->value_len);
}

int av__conn_tunnel_precheck(av_conn *c, const av_authority *dest, char *why, size_t cap)
{
    return av__upstream_precheck(c->env->pool, dest, why, cap);
}

/* What dialing |dest| would refuse and CONNECT already tells (an address
 * literal the SSRF guard refuses, the proxy itself) is refused now, with
 * the dial's status, reason and exchange record. Returns -1 if refused. */
static int conn_precheck_dest(av_conn *c, const av_h1_request *req, const av_authority *dest)
{
    char why[200];
    int status = av__conn_tunnel_precheck(c, dest, why, sizeof(why));
    if (!status)
        return 0;
    av_exchange *x = &c->x;
    av__x_reset(x);
    conn_exchange_snap(c, x);
    x->active = 1;
    x->start = av__loop_now(c->env->loop);
    copy_str(x->method, sizeof(x->method), req->method, req->method_len);
    av__authority_format(dest, 0, x->host, sizeof(x->host));
    av__x_respond(x, status, why, 0);
    return -1;
}

void av__conn_enter_tunnel(av_conn *c, const av_authority *dest, const void *ok, size_t ok_len)
{
    const av_env *env = c->env;
    c->dest = *dest;
    c->in_tunnel = 1;
    c->head_start = 0; /* the tunnel's first bytes get a header timeout of their own */
    if (av__buf_append(c->a.pout, ok, ok_len) != AV_OK) {
        /* Without the answer the client would wait for it forever. */
        av__log(env->log, AV_LOG_WARN, "connection peer=%s closed: out of memory", c->peer);
        c->dead = 1;
        return;
    }
    /* Opaque passthrough hosts are decided now (server-first protocols). */
    for (size_t i = 0; i < c->snap->cfg->npassthrough; i++) {
        if (av__host_match_pattern(c->snap->cfg->passthrough[i], c->dest.host)) {
            char scope[] = "opaque";
            c->state = C_OPAQUE;
            if (av__upstream_acquire(env->pool, &c->dest, 0, scope, av__conn_wake, c, &c->opaque_up)) {
                c->state = C_CLOSING;
                av__side_close_write(&c->a);
            }
            av__log(env->log, AV_LOG_INFO, "tunnel peer=%s host=%s:%d mode=opaque%s", c->peer, c->dest.host,
                    c->dest.port, c->via_socks ? " via=socks5" : "");
            return;
        }
    }
    c->state = C_TUNNEL_SNIFF;
}

/* A complete head at the proxy level (not inside a tunnel). */
void av__conn_proxy_request(av_conn *c, const av_h1_request *req, size_t head_len)
{
    if (ci_eq(req->method, req->method_len, "CONNECT")) {
        av_authority dest;
        if (av__authority_parse(req->target, req->target_len, 0, &dest) != 0) {
            av__conn_respond(c, 400, "CONNECT target must be host:port with a valid host name or IP", 0, 1);
            return;
        }
        if (req->body != AV_H1_BODY_NONE) {
            av__conn_respond(c, 400, "CONNECT with a body is not allowed", 0, 1);
            return;
        }
        if (conn_authorize(c, req) < 0 || conn_precheck_dest(c, req, &dest) < 0)
            return;
        av__buf_consume(c->a.pin, head_len);
        static const char ok[] = "HTTP/1.1 200 Connection Established\r\n\r\n";
        av__conn_enter_tunnel(c, &dest, ok, sizeof(ok) - 1);
        return;
    }
    if (req->target_len > 0 && req->target[0] == '/') {
        av__buf_consume(c->a.pin, head_len);
        if (req->body != AV_H1_BODY_NONE) {
            av__conn_respond(c, 400, "requests to the proxy itself must not have a body", 0, 1);
            return;
        }
        av__conn_self_request(c, req);
        return;
    }
    av_absolute_uri uri;
    int rc = av__absolute_uri_parse(req->target, req->target_len, &uri);
    if (rc != 0) {
        av__conn_respond(c, 400, "malformed request target", 0, 1);
        return;
    }
    if (strcmp(uri.scheme, "http") != 0) {
        av__conn_respond(c, 400,
                     "absolute-form requests are only forwarded for http://; for https:// use CONNECT "
                     "(set HTTPS_PROXY so the client tunnels)",
                     0, 1);
        return;
    }
    if (conn_authorize(c, req) < 0)
        return;
    if (req->host) {
        av_authority hh;
        if (av__authority_parse(req->host->value, req->host->value_len, 80, &hh) != 0 ||
            !av__authority_equal(&hh, &uri.authority)) {
            av__conn_respond(c, 421, "Host header does not match the request target", 0, 1);
            return;
        }
    }
    if (av__x_start_h1(c, req, &uri.authority, 0, uri.path, uri.path_len) == 0)
        av__buf_consume(c->a.pin, head_len);
}

/* A complete head inside a CONNECT tunnel: it must be for the tunnel's
 * destination (SECURITY 1). */
void av__conn_tunnel_request(av_conn *c, const av_h1_request *req, size_t head_len)
{
    if (c->gw) {
        /* A gateway: every request goes to its upstream, whatever Host
         * says (it is rewritten); the token, if any, is checked first. */
        if (ci_eq(req->method, req->method_len, "CONNECT")) {
            av__conn_respond(c, 405, "this is a gateway, not a proxy: send requests to it directly (base URL)", 0, 1);
            return;
        }
        if (!av__origin_form_valid(req->target, req->target_len)) {
            av__conn_respond(c, 400, "requests to a gateway must use origin-form targets (/path)", 0, 1);
            return;
        }
        if (!av__gw_token_ok(c, req->fields, req->nfields)) {
            av__conn_respond(c, 401, GW_TOKEN_REFUSED, 0, 1);
            return;
        }
        if (av__x_start_h1(c, req, &c->dest, c->dest_tls, req->target, req->target_len) == 0)
            av__buf_consume(c->a.pin, head_len);
        return;
    }
    if (ci_eq(req->method, req->method_len, "CONNECT")) {
        av__conn_respond(c, 400, "CONNECT inside a tunnel is not allowed", 0, 1);
        return;
    }
    if (!av__origin_form_valid(req->target, req->target_len)) {
        av__conn_respond(c, 400, "requests inside a tunnel must use origin-form targets (/path)", 0, 1);
        return;
    }
    if (!req->host) {
        av__conn_respond(c, 400, "missing Host header", 0, 1);
        return;
    }
    if (c->socks_by_addr)
        av__conn_socks_host(c, req->host); /* SOCKS5 to an address: Host may name it */
    av_authority hh;
    if (av__authority_parse(req->host->value, req->host->value_len, c->dest_tls ? 443 : 80, &hh) != 0 ||
        !av__authority_equal(&hh, &c->dest)) {
        char m[AV_HOST_MAX + 80];
        snprintf(m, sizeof(m), "Host header does not match the CONNECT target %s:%d", c->dest.host, c->dest.port);
        av__conn_respond(c, 421, m, 0, 1);
        return;
    }
    if (av__x_start_h1(c, req, &c->dest, c->dest_tls, req->target, req->target_len) == 0)
        av__buf_consume(c->a.pin, head_len);
}

/* Keep what a refusal's record may show of a parsed head: the method, the
 * destination once known (the tunnel's, or a valid CONNECT target) and an
 * origin-form path without its query. */
void av__conn_note_head(av_conn *c, const av_h1_request *req)
{
    copy_str(c->head_method, sizeof(c->head_method), req->method, req->method_len);
    av_authority a;
    if (c->in_tunnel)
        av__authority_format(&c->dest, 0, c->head_host, sizeof(c->head_host));
    else if (ci_eq(req->method, req->method_len, "CONNECT") &&
             av__authority_parse(req->target, req->target_len, 0, &a) == 0)
        av__authority_format(&a, 0, c->head_host, sizeof(c->head_host));
    if (av__origin_form_valid(req->target, req->target_len)) {
        const char *q = memchr(req->target, '?', req->target_len);
        size_t plen = q ? (size_t)(q - req->target) : req->target_len;
        copy_str(c->head_path, sizeof(c->head_path), req->target, plen);
    }
}
