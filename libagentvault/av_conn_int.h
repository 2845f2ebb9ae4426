/* av_conn_int.h - what the connection's own files share: struct av_conn,
 * its states, and the functions each of them offers the others. Included
 * only by av_conn.c, av_agent_h1.c, av_agent_h2.c, av_proxy_req.c and
 * av_admin.c: the exchange and the links see a connection only as the
 * opaque x->c and reach it through x->agent and x->wake (av_exchange.h).
 */
#ifndef AV_CONN_INT_H
#define AV_CONN_INT_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_env.h"
#include "av_exchange.h"
#include "av_sni.h"
#include "av_socks.h"

typedef struct av_conn av_conn;

enum conn_state {
    C_SNIFF = 1,
    C_PROXY_SNIFF, /* the first byte of plaintext (after TLS to the proxy, if any) */
    C_SOCKS,       /* SOCKS5 negotiation (av_proxy_socks.c), c->socks_step */
    C_PROXY_HEAD,
    C_TUNNEL_SNIFF,
    C_TUNNEL_HEAD,
    C_EXCHANGE,
    C_OPAQUE,
    C_H2,
    C_GW_SNIFF,   /* gateway: HTTP/1.1, or the HTTP/2 preface (prior knowledge) */
    C_CLOSING
};

struct av_conn {
    const av_env *env;       /* what it sees of the context (av_env.h) */
    av_snap *snap;           /* the configuration this connection started with */
    av_conn *next, *prev;
    av_side a;
    int state;
    int in_tunnel;           /* requests go to |dest| */
    av_authority dest;
    int dest_tls;            /* MITM TLS inside the tunnel */
    int alpn_checked;
    int token;               /* index of the authenticated proxy token, -1 */
    int revoked;             /* that token is gone since a reload: refuse everything */
    av_h1_scan scan;
    double head_start;       /* when the first byte of a head arrived, 0 if none */
    av_timer *timer;
    int close_after;         /* close once the current response is out */
    int draining;
    int dead;
    int in_proceed;
    int again;               /* notified while in av__conn_proceed: loop again */
    av_exchange x;           /* HTTP/1.1 agent: the current exchange */
    av_h2 *h2;               /* HTTP/2 agent: the server session */
    av_exchange *xs;         /* HTTP/2 agent: one exchange per stream */
    size_t nxs;
    int h2_goaway;           /* GOAWAY submitted (drain) */
    av_upconn *opaque_up;
    av_gw *gw;               /* a gateway connection: every request goes to gw->dest */
    int end;                 /* AV_END_* for exchanges still open when it dies */
    /* The last request head, for the record of a refusal that comes
     * before any exchange began (never a query or an unchecked target). */
    char head_method[24];
    char head_host[AV_HOST_MAX + 8];
    char head_path[256];
    int lingering;           /* closed our side: discarding what the agent still sends */
    double linger_until;
    size_t linger_budget;
    char peer[64];
    int socks_step;          /* C_SOCKS: SOCKS_GREETING, SOCKS_AUTH or SOCKS_REQUEST */
    int via_socks;           /* the tunnel was opened by a SOCKS5 CONNECT */
    int socks_by_addr;       /* ... to an address: the TLS SNI or the first Host names it (transparent) */
};

/* The steps of a SOCKS5 negotiation. */
enum { SOCKS_GREETING = 0, SOCKS_AUTH, SOCKS_REQUEST };

/* An exchange runs under the connection's snapshot and proxy token as they
 * are when it starts (its own reference), also when it is refused. */
static inline void conn_exchange_snap(av_conn *c, av_exchange *x)
{
    if (x->snap)
        return;
    x->snap = av__snap_ref(c->snap);
    x->token = c->token;
}

#define TOKEN_REVOKED "the proxy token of this connection was revoked or changed: reconnect"

#define GW_TOKEN_REFUSED "gateway token required: send X-Agentvault-Token"


/* av_conn.c */
void av__conn_proceed(av_conn *c);
/* An exchange's wake: run the pump of connection |owner| (or loop once
 * more if it is running). */
void av__conn_wake(void *owner);

/* av_proxy_req.c */
int av__conn_refresh_snap(av_conn *c);
int av__gw_token_ok(av_conn *c, const av_h1_field *fields, size_t nfields);
void av__conn_proxy_request(av_conn *c, const av_h1_request *req, size_t head_len);
void av__conn_tunnel_request(av_conn *c, const av_h1_request *req, size_t head_len);
void av__conn_note_head(av_conn *c, const av_h1_request *req);
/* The admission an HTTP CONNECT and a SOCKS5 CONNECT share. Are proxy
 * tokens required? The index of token |tok|, or -1. */
int av__conn_tokens_on(const av_conn *c);
int av__conn_find_token(av_conn *c, const uint8_t *tok, size_t len);
/* What dialing |dest| would refuse and a CONNECT already tells (an address
 * literal the SSRF guard refuses, the proxy itself): 0, or the status the
 * dial would give (403) with the reason in |why|. */
int av__conn_tunnel_precheck(av_conn *c, const av_authority *dest, char *why, size_t cap);
/* Enter the tunnel to an admitted |dest|: queue |ok| (the protocol's
 * success answer), then an opaque relay for passthrough hosts, else the
 * tunnel sniff (TLS -> MITM, HTTP -> cleartext). */
void av__conn_enter_tunnel(av_conn *c, const av_authority *dest, const void *ok, size_t ok_len);

/* av_proxy_socks.c */
/* The C_SOCKS step: greeting, token, request, then the tunnel. Returns
 * progress. */
int av__conn_socks_step(av_conn *c);
/* Transparent mode, a SOCKS5 tunnel to an address (c->socks_by_addr)
 * whose first bytes are a ClientHello: a DNS name in its SNI becomes the
 * destination (matched, minted, dialled and verified as that name; the
 * address was checked at CONNECT). 1 to go on with the MITM handshake, 0
 * while the first record is incomplete. */
int av__conn_socks_sni(av_conn *c);
/* ... whose first request is cleartext HTTP: a DNS name in its Host with
 * the tunnel's port becomes the destination. */
void av__conn_socks_host(av_conn *c, const av_h1_field *host);
/* The C_PROXY_SNIFF answer to a SOCKS4/4a request: refused, then closed. */
void av__conn_socks4_refuse(av_conn *c);

/* av_admin.c */
void av__conn_self_request(av_conn *c, const av_h1_request *req);

/* av_agent_h1.c */
/* The record of a refusal before any exchange began (c->head_* name the
 * request); |proto| names the agent's protocol in it when not NULL
 * ("socks5"). Writes no log line. */
void av__conn_record_refusal(av_conn *c, int status, const char *reason, const char *proto);
void av__conn_respond(av_conn *c, int status, const char *reason_text, int json, int close);
void av__conn_respond_body(av_conn *c, int status, const char *ctype, const char *body, size_t len,
                           int head_only);
int av__x_start_h1(av_conn *c, const av_h1_request *req, const av_authority *dest, int dest_tls,
                   const char *target, size_t target_len);
int av__conn_read_head(av_conn *c);

/* av_agent_h2.c */
int av__conn_h2_has_ws(const av_conn *c);
void av__conn_h2_free_x(av_conn *c, av_exchange *x);
int av__conn_h2_start(av_conn *c);
int av__conn_h2_step(av_conn *c);

#endif
