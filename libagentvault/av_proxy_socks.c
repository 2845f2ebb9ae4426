/* av_proxy_socks.c - the SOCKS5 front on the proxy's port (RFC 1928, RFC
 * 1929): the negotiation over c->a.pin, then the admission an HTTP CONNECT
 * gets.
 *
 *   greeting ──▶ 05 00 (no proxy tokens) ──────────────────▶ request
 *            ──▶ 05 02 ──▶ 01 ULEN user PLEN token ──01 00──▶ request
 *            ──▶ 05 FF, close (the method needed was not offered)
 *   request: CONNECT name/IPv4/IPv6 ──▶ precheck ──05 00──▶ tunnel sniff
 *            BIND, UDP ASSOCIATE ──▶ 05 07; unknown ATYP ──▶ 05 08;
 *            refused by the SSRF guard ──▶ 05 02; each then closes.
 *
 * The password is the proxy token (the user name is not used), checked as
 * Proxy-Authorization's is; a failed check answers 01 01 and closes. The
 * whole negotiation runs under header_timeout from its first byte (the
 * timer: av_conn.c); every message is bounded (av_socks.h). The success
 * answer comes before the dial, as HTTP CONNECT's 200 does: the dial is
 * lazy (the first request inside the tunnel, or the opaque relay), so a
 * dial failure shows as the proxy's 502 inside the tunnel or a closed
 * opaque tunnel, not as REP 04/05. Bytes the client sends after its
 * request (an early ClientHello) stay in c->a.pin for the tunnel sniff.
 *
 * Transparent mode: a client that resolved the name itself (ATYP 01/04,
 * curl's socks5://, an egress tunnel) names only an address. The address
 * is checked by the SSRF guard at CONNECT; then a DNS name in the TLS SNI
 * (or, for cleartext HTTP, in the first request's Host with the same port)
 * becomes the destination: services match it, the leaf is minted for it,
 * Host must equal it, and the upstream is dialled by that name and its
 * certificate verified against it. The name is resolved and checked here,
 * as for a socks5h request: the client's address is not dialled, so a
 * name never travels to an address it does not resolve to. Without a name
 * the address stays the destination, as for an HTTP CONNECT to it.
 */
#include <stdio.h>
#include <string.h>

#include "av_conn_int.h"

/* Queue |n| bytes of a SOCKS answer. 0, or -1 (out of memory: the
 * connection is dropped, the client would wait forever otherwise). */
static int socks_send(av_conn *c, const void *p, size_t n)
{
    if (av__buf_append(c->a.pout, p, n) == AV_OK)
        return 0;
    av__log(c->env->log, AV_LOG_WARN, "connection peer=%s closed: out of memory", c->peer);
    c->dead = 1;
    return -1;
}

/* Answer the request with |rep| and close. */
static void socks_reply_close(av_conn *c, int rep)
{
    uint8_t r[AV_SOCKS_REPLY_LEN];
    av__socks_reply(r, rep);
    if (socks_send(c, r, sizeof(r)) < 0)
        return;
    c->state = C_CLOSING;
    av__side_close_write(&c->a);
}

static void socks_close(av_conn *c)
{
    c->state = C_CLOSING;
    av__side_close_write(&c->a);
}

/* A refusal: its log line and its record (an exchange refused before it
 * began, SECURITY 18), under method |method| and host |host| ("-" when not
 * known yet). The reason never holds the token. */
static void socks_refused(av_conn *c, int status, const char *method, const av_authority *dest, const char *why)
{
    char host[AV_HOST_MAX + 8] = "-";
    if (dest)
        av__authority_format(dest, 0, host, sizeof(host));
    av__log(c->env->log, AV_LOG_INFO, "refused peer=%s socks5 method=%s host=%s status=%d reason=\"%s\"", c->peer,
            method, host, status, why);
    snprintf(c->head_method, sizeof(c->head_method), "%s", method);
    snprintf(c->head_host, sizeof(c->head_host), "%s", dest ? host : "");
    c->head_path[0] = '\0';
    av__conn_record_refusal(c, status, why, "socks5");
}

static const char *socks_cmd_name(int cmd)
{
    return cmd == AV_SOCKS_CMD_CONNECT ? "CONNECT"
           : cmd == AV_SOCKS_CMD_BIND  ? "BIND"
           : cmd == AV_SOCKS_CMD_UDP   ? "UDP-ASSOCIATE"
                                       : "-";
}

/* Nothing (more) parsable: wait, or close when the client is gone.
 * Returns progress. */
static int socks_wait(av_conn *c)
{
    if (!c->a.in_eof)
        return 0;
    av__log(c->env->log, AV_LOG_INFO, "connection peer=%s closed: the client left during the SOCKS5 negotiation",
            c->peer);
    socks_close(c);
    return 1;
}

static int socks_greeting(av_conn *c)
{
    av_buf *in = c->a.pin;
    unsigned offered = 0;
    ssize_t n = av__socks_parse_greeting(av__buf_head(in), in->len, &offered);
    if (n == AV_SOCKS_INCOMPLETE)
        return socks_wait(c);
    if (n < 0) {
        av__log(c->env->log, AV_LOG_INFO, "connection peer=%s closed: malformed SOCKS5 greeting", c->peer);
        socks_close(c);
        return 1;
    }
    av__buf_consume(in, (size_t)n);
    /* A reload since the accept: the tokens and services of now apply. */
    if (c->snap != *c->env->snap_cur)
        av__conn_refresh_snap(c); /* no token yet: cannot fail */
    int need = av__conn_tokens_on(c);
    uint8_t answer[2] = {AV_SOCKS5_VERSION, (uint8_t)av__socks_choose_method(offered, need)};
    if (socks_send(c, answer, sizeof(answer)) < 0)
        return 1;
    if (answer[1] == AV_SOCKS_METHOD_REFUSED) {
        socks_refused(c, 407, "-", NULL,
                      need ? "SOCKS5: proxy token required: offer username/password authentication with the token "
                             "as the password (socks5h://agent:TOKEN@proxy)"
                           : "SOCKS5: the client offered neither no-authentication nor username/password");
        socks_close(c);
        return 1;
    }
    c->socks_step = answer[1] == AV_SOCKS_METHOD_USERPASS ? SOCKS_AUTH : SOCKS_REQUEST;
    return 1;
}

static int socks_auth(av_conn *c)
{
    av_buf *in = c->a.pin;
    av_socks_auth au;
    ssize_t n = av__socks_parse_auth(av__buf_head(in), in->len, &au);
    if (n == AV_SOCKS_INCOMPLETE)
        return socks_wait(c);
    uint8_t answer[2] = {AV_SOCKS_AUTH_VERSION, 0x01};
    int tok = -1;
    if (n > 0 && av__conn_tokens_on(c))
        tok = av__conn_find_token(c, au.pass, au.pass_len);
    if (n > 0)
        av__buf_consume(in, (size_t)n);
    if (n < 0 || (tok < 0 && av__conn_tokens_on(c))) {
        if (socks_send(c, answer, sizeof(answer)) < 0)
            return 1;
        socks_refused(c, 407, "-", NULL,
                      n == AV_SOCKS_E_VERSION ? "SOCKS5: not a username/password sub-negotiation (version byte not 01)"
                      : n < 0                 ? "SOCKS5: empty password: send the proxy token as the password"
                                              : "SOCKS5: wrong proxy token (the password must be a proxy token)");
        socks_close(c);
        return 1;
    }
    c->token = tok; /* -1 without tokens: any password is accepted then */
    answer[1] = 0x00;
    if (socks_send(c, answer, sizeof(answer)) < 0)
        return 1;
    c->socks_step = SOCKS_REQUEST;
    return 1;
}

static int socks_request(av_conn *c)
{
    av_buf *in = c->a.pin;
    av_socks_request rq;
    ssize_t n = av__socks_parse_request(av__buf_head(in), in->len, &rq);
    if (n == AV_SOCKS_INCOMPLETE)
        return socks_wait(c);
    if (n < 0) {
        int rep = av__socks_rep_for(n);
        char why[160];
        int status = 400;
        if (n == AV_SOCKS_E_COMMAND) {
            status = 405;
            snprintf(why, sizeof(why), "SOCKS5: only CONNECT is supported (command %d: %s)", rq.cmd,
                     rq.cmd == AV_SOCKS_CMD_BIND ? "BIND" : rq.cmd == AV_SOCKS_CMD_UDP ? "UDP ASSOCIATE" : "unknown");
        } else if (n == AV_SOCKS_E_ATYP) {
            snprintf(why, sizeof(why), "SOCKS5: address type %d is not supported", rq.atyp);
        } else if (n == AV_SOCKS_E_VERSION) {
            snprintf(why, sizeof(why), "SOCKS5: not a SOCKS5 request");
        } else {
            snprintf(why, sizeof(why),
                     "SOCKS5: malformed request (reserved byte, port 0, or a host name that is not a valid DNS name)");
        }
        socks_reply_close(c, rep);
        socks_refused(c, status, socks_cmd_name(rq.cmd), NULL, why);
        return 1;
    }
    av__buf_consume(in, (size_t)n);
    char why[240], m[200];
    int status = av__conn_tunnel_precheck(c, &rq.dest, m, sizeof(m));
    if (status) {
        snprintf(why, sizeof(why), "SOCKS5: %s", m);
        socks_reply_close(c, AV_SOCKS_REP_RULESET);
        socks_refused(c, status, "CONNECT", &rq.dest, why);
        return 1;
    }
    av__log(c->env->log, AV_LOG_DEBUG, "socks5 peer=%s CONNECT %s:%d (address type %d)", c->peer, rq.dest.host,
            rq.dest.port, rq.atyp);
    uint8_t ok[AV_SOCKS_REPLY_LEN];
    av__socks_reply(ok, AV_SOCKS_REP_OK);
    c->via_socks = 1;
    c->socks_by_addr = rq.dest.is_ip != 0;
    av__conn_enter_tunnel(c, &rq.dest, ok, sizeof(ok));
    return 1;
}

int av__conn_socks_step(av_conn *c)
{
    if (c->head_start == 0)
        c->head_start = av__loop_now(c->env->loop); /* the negotiation's deadline starts */
    switch (c->socks_step) {
    case SOCKS_GREETING:
        return socks_greeting(c);
    case SOCKS_AUTH:
        return socks_auth(c);
    default:
        return socks_request(c);
    }
}

/* Rebind the tunnel from its address to |name| (a validated DNS name). */
static void socks_rebind(av_conn *c, const char *name, const char *why)
{
    av__log(c->env->log, AV_LOG_INFO, "socks5 peer=%s %s:%d is %s:%d (%s): the name is matched, dialled and verified",
            c->peer, c->dest.host, c->dest.port, name, c->dest.port, why);
    snprintf(c->dest.host, sizeof(c->dest.host), "%s", name);
    c->dest.is_ip = 0;
}

int av__conn_socks_sni(av_conn *c)
{
    av_buf *in = c->a.pin;
    char sni[AV_SNI_MAX + 1], name[AV_HOST_MAX + 1];
    int r = av__sni_peek(av__buf_head(in), in->len, sni);
    if (r == AV_SNI_INCOMPLETE && !c->a.in_eof && av__buf_room(in) > 0) {
        if (c->head_start == 0)
            c->head_start = av__loop_now(c->env->loop); /* the record's deadline: header_timeout */
        return 0;
    }
    c->socks_by_addr = 0;
    c->head_start = 0;
    if (r == AV_SNI_FOUND && av__host_validate(sni, strlen(sni), name) == 0)
        socks_rebind(c, name, "TLS SNI");
    else
        av__log(c->env->log, AV_LOG_INFO,
                "socks5 peer=%s %s:%d: no DNS name in the TLS SNI: the address is the destination (a certificate "
                "for it is presented; clients that sent a name need socks5h://)",
                c->peer, c->dest.host, c->dest.port);
    return 1;
}

void av__conn_socks_host(av_conn *c, const av_h1_field *host)
{
    av_authority hh;
    c->socks_by_addr = 0;
    if (av__authority_parse(host->value, host->value_len, 80, &hh) == 0 && !hh.is_ip && hh.port == c->dest.port)
        socks_rebind(c, hh.host, "Host of the first request");
}

void av__conn_socks4_refuse(av_conn *c)
{
    uint8_t r[AV_SOCKS4_REPLY_LEN];
    av__socks4_refusal(r);
    av__log(c->env->log, AV_LOG_INFO, "connection peer=%s closed: SOCKS4/4a is not supported (use SOCKS5)", c->peer);
    if (socks_send(c, r, sizeof(r)) < 0)
        return;
    socks_close(c);
}
