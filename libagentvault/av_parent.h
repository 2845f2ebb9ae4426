/* av_parent.h - parent (upstream) proxies: the wire logic and the table.
 *
 * With [proxy] upstream_proxy set, origin connections are tunnels through a
 * parent proxy: an HTTP CONNECT (http:// parent, or https:// with TLS to
 * the parent) or a SOCKS5 CONNECT (socks5://, socks5h://). The origin TLS
 * runs inside the tunnel, so the parent sees only TLS to the origin (or
 * the cleartext of a scheme = http service).
 *
 * The parsers and builders here are pure (no I/O) and bounded: the
 * parent's CONNECT answer head is read up to AV_PARENT_HEAD_MAX bytes, a
 * SOCKS5 reply exactly to its length. av_upstream.c drives them.
 *
 * The table (av_parents) is derived from a configuration when a snapshot
 * is made: the parents with their credentials resolved, the no_proxy
 * rules, and each service's override. A parent is reference-counted so a
 * connection dialing through it keeps it after a reload.
 */
#ifndef AV_PARENT_H
#define AV_PARENT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "av_buf.h"
#include "av_secret.h"
#include "av_ssrf.h"
#include "av_url.h"

enum av_parent_kind {
    AV_PARENT_HTTP = 1, /* http://: CONNECT in cleartext */
    AV_PARENT_HTTPS,    /* https://: TLS to the parent, CONNECT inside */
    AV_PARENT_SOCKS5,   /* socks5://: the proxy resolves, asks for the address */
    AV_PARENT_SOCKS5H   /* socks5h://: the parent resolves the name */
};

/* The most the parent's answer head to a CONNECT may take. */
#define AV_PARENT_HEAD_MAX 16384
/* A credential "user:password" is at most this long (RFC 1929: 255 each). */
#define AV_PARENT_AUTH_MAX 1024

/* ---- URLs ------------------------------------------------------------- */

typedef struct av_parent_url {
    int kind;                   /* enum av_parent_kind */
    char host[AV_HOST_MAX + 1]; /* lower-case name or IP literal (no brackets) */
    int is_ip;                  /* 4, 6, or 0 */
    int port;
    const char *userinfo;       /* into the input, still percent-encoded; NULL: none */
    size_t userinfo_len;
} av_parent_url;

/* Flags of av__parent_url_parse. */
#define AV_PARENT_URL_ENV 1u /* from HTTPS_PROXY: no scheme means http://, a
                                missing port is curl's default (1080; 443 for
                                https://), userinfo allowed */

/* av__parent_url_parse reads "scheme://[userinfo@]host:port[/]" (scheme
 * http, https, socks5 or socks5h). Without AV_PARENT_URL_ENV the port is
 * required and userinfo is refused (the credential belongs in
 * upstream_proxy_auth, a secret reference). Returns AV_OK, or
 * AV_ERR_INVALID with a reason in *why. */
int av__parent_url_parse(const char *s, size_t n, unsigned flags, av_parent_url *out, const char **why);

/* av__parent_userinfo_decode percent-decodes URL userinfo "user:pass"
 * into |out| (|cap| bytes). Returns the length, or AV_ERR_INVALID (bad
 * escape, a NUL, no ':', too long). */
int av__parent_userinfo_decode(const char *s, size_t n, uint8_t *out, size_t cap);

/* av__parent_auth_valid: a credential "user:password" as the parent proxy
 * needs it: a ':' after a non-empty user, each part 1..255 bytes, no
 * control characters. Returns 1 or 0. */
int av__parent_auth_valid(const uint8_t *cred, size_t len);

/* ---- no_proxy ------------------------------------------------------------ */

enum { AV_NP_HOST = 1, AV_NP_CIDR };

typedef struct av_noproxy_rule {
    int kind;                   /* AV_NP_HOST: host (suffix) match; AV_NP_CIDR */
    char host[AV_HOST_MAX + 1]; /* lower-case name or IP literal text */
    int port;                   /* 0: any port */
    av_cidr cidr;
} av_noproxy_rule;

typedef struct av_noproxy {
    int all; /* "*": nothing goes through the parent */
    av_noproxy_rule *rules;
    size_t n;
} av_noproxy;

/* av__noproxy_parse reads a comma- (or space-) separated list: "*" (only
 * as the whole value), host names (a name matches itself and its
 * subdomains; one leading dot is ignored), IP literals ("[v6]" with a
 * port), CIDR ranges, each name or address optionally with ":port".
 * Returns AV_OK, AV_ERR_INVALID with a reason in |why|, or AV_ERR_NOMEM. */
int av__noproxy_parse(const char *s, size_t n, av_noproxy *out, char *why, size_t why_len);
void av__noproxy_free(av_noproxy *np);
/* av__noproxy_match: |dest| goes direct. CIDRs match IP-literal
 * destinations only (like curl: names are not resolved to decide). */
int av__noproxy_match(const av_noproxy *np, const av_authority *dest);

/* ---- HTTP CONNECT -------------------------------------------------------- */

/* av__parent_connect_request appends "CONNECT host:port HTTP/1.1", Host
 * and, with |auth| ("user:password"), Proxy-Authorization: Basic. |host|
 * is validated first (an LDH name or an IP literal; IPv6 is bracketed).
 * Returns AV_OK, AV_ERR_INVALID (bad host or port) or the buffer's error.
 * The buffer then holds the credential: wipe it. */
int av__parent_connect_request(av_buf *out, const char *host, int port, const uint8_t *auth, size_t auth_len);

/* av__parent_parse_response reads the parent's answer head ("HTTP/1.x SP
 * 3DIGIT SP reason CRLF fields CRLF CRLF"; bare LF accepted). Returns the
 * head's length (> 0; the bytes after it belong to the tunnel), 0 while
 * incomplete, AV_ERR_LIMIT past AV_PARENT_HEAD_MAX, or AV_ERR_PARSE. On a
 * complete head *status is set and |reason| (cap > 0) receives the reason
 * phrase, made printable and truncated. */
int av__parent_parse_response(const uint8_t *p, size_t n, int *status, char *reason, size_t reason_cap);

/* ---- SOCKS5 (RFC 1928, RFC 1929) ----------------------------------------- */

/* av__socks5_greeting writes "05 01 00" or, with |auth|, "05 02 00 02"
 * (no authentication or RFC 1929: the password is sent only to a parent
 * that asks for it). Returns the length. */
size_t av__socks5_greeting(uint8_t out[4], int auth);

/* Reply parsers return the bytes consumed (> 0), 0 while incomplete, or
 * AV_ERR_PARSE (wrong version, malformed). */
/* "05 METHOD": *method is 0x00, 0x02 or 0xFF (none acceptable). */
int av__socks5_parse_method(const uint8_t *p, size_t n, int *method);
/* av__socks5_auth_request writes "01 ULEN UNAME PLEN PASSWD" from
 * "user:password" (split at the first ':'). Returns the length, or
 * AV_ERR_INVALID. |cap| must be at least 513. */
int av__socks5_auth_request(uint8_t *out, size_t cap, const uint8_t *cred, size_t len);
/* "01 STATUS": *status 0 means accepted. */
int av__socks5_parse_auth(const uint8_t *p, size_t n, int *status);
/* av__socks5_connect_request writes "05 01 00 ATYP DST.ADDR DST.PORT":
 * ATYP 01/04 for |sa| (its port), else ATYP 03 for the validated |name|
 * with |port|. Returns the length, or AV_ERR_INVALID. |cap| >= 262. */
int av__socks5_connect_request(uint8_t *out, size_t cap, const struct sockaddr *sa, const char *name, int port);
/* "05 REP 00 ATYP BND.ADDR BND.PORT" (ATYP 01, 03 with its length, 04). */
int av__socks5_parse_reply(const uint8_t *p, size_t n, int *rep);
/* av__socks5_rep_name: "connection refused" for 5, and so on. */
const char *av__socks5_rep_name(int rep);

/* ---- the table ------------------------------------------------------------ */

typedef struct av_parent {
    atomic_int refs;               /* atomic: every worker's pool holds references */
    int kind;                      /* enum av_parent_kind */
    char host[AV_HOST_MAX + 1];
    int is_ip;
    int port;
    char label[AV_HOST_MAX + 32];  /* "host:port" ("[v6]:port"): messages, metrics */
    char id[20];                   /* "p" + 16 hex: pool keys */
    av_secret *auth;               /* "user:password", or NULL */
} av_parent;

av_parent *av__parent_ref(av_parent *p);
void av__parent_unref(av_parent *p);
/* av__parent_scheme: "http", "https", "socks5", "socks5h". */
const char *av__parent_scheme(int kind);

struct av_config;
struct av_resolver;

typedef struct av_parents {
    av_parent *global;     /* [proxy] upstream_proxy; NULL: direct */
    av_noproxy noproxy;    /* [proxy] upstream_no_proxy (or NO_PROXY with env) */
    size_t nsvc;           /* parallel to the config's services: */
    av_parent **svc;       /* the service's own parent, or NULL */
    unsigned char *svc_direct; /* 1: upstream_proxy = direct */
    const char **svc_name; /* the config's names (the table lives as long) */
    int logged;            /* av__upstream_log_parents ran for this table */
} av_parents;

/* Environment lookup (getenv in the daemon; tests pass their own). */
typedef const char *(*av_getenv_fn)(const char *name);

/* av__parents_new builds the table of |cfg|: URLs parsed, credentials
 * resolved through |r| (now: a missing secret fails startup or the
 * reload, like proxy tokens), "env" read through |getenv_fn|. Returns
 * AV_OK and *out (NULL when no parent is configured anywhere), or an
 * error with a one-line reason in |err|. */
int av__parents_new(const struct av_config *cfg, struct av_resolver *r, av_getenv_fn getenv_fn,
                    av_parents **out, char *err, size_t err_len);
void av__parents_free(av_parents *t);

/* av__parents_route: the parent for an origin connection of credential
 * scope |scope| ("service/token"; the service's override applies) to
 * |dest|, or NULL for a direct connection. |t| may be NULL. */
av_parent *av__parents_route(const av_parents *t, const char *scope, const av_authority *dest);

#endif
