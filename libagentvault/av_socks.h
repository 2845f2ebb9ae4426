/* av_socks.h - the server side of SOCKS5 (RFC 1928) with username/password
 * authentication (RFC 1929): I/O-free parsers for the client's three
 * messages and the server's fixed-size answers.
 *
 * Like av_h1, the caller accumulates bytes and calls a parser with all it
 * has; a parser returns the length of one complete message (the caller
 * consumes exactly that, so pipelined bytes stay for the next step), 0 when
 * more bytes are needed, or a negative AV_SOCKS_E_*. Every message is
 * bounded (at most 515 bytes), so "need more" never means "wait for an
 * unbounded amount". Views (user name, password) point into the caller's
 * buffer. A domain name (ATYP 03) is validated like a CONNECT host
 * (av__host_validate: LDH labels, at most 253 bytes, lower-cased; no NUL,
 * CR or LF can pass).
 */
#ifndef AV_SOCKS_H
#define AV_SOCKS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "av_url.h"

/* Version bytes: the first byte of a SOCKS5 greeting and request, of an
 * RFC 1929 sub-negotiation, and of a SOCKS4/4a request. */
#define AV_SOCKS5_VERSION 0x05
#define AV_SOCKS_AUTH_VERSION 0x01
#define AV_SOCKS4_VERSION 0x04

/* Methods (greeting answer). */
enum {
    AV_SOCKS_METHOD_NONE = 0x00,     /* no authentication */
    AV_SOCKS_METHOD_USERPASS = 0x02, /* RFC 1929 */
    AV_SOCKS_METHOD_REFUSED = 0xFF   /* no acceptable method: close */
};

/* Commands and address types of a request. */
enum { AV_SOCKS_CMD_CONNECT = 1, AV_SOCKS_CMD_BIND = 2, AV_SOCKS_CMD_UDP = 3 };
enum { AV_SOCKS_ATYP_IPV4 = 1, AV_SOCKS_ATYP_NAME = 3, AV_SOCKS_ATYP_IPV6 = 4 };

/* Reply codes (REP). */
enum {
    AV_SOCKS_REP_OK = 0x00,
    AV_SOCKS_REP_FAILURE = 0x01,     /* general failure (also: malformed request) */
    AV_SOCKS_REP_RULESET = 0x02,     /* not allowed by ruleset */
    AV_SOCKS_REP_NET = 0x03,
    AV_SOCKS_REP_HOST = 0x04,
    AV_SOCKS_REP_REFUSED = 0x05,
    AV_SOCKS_REP_TTL = 0x06,
    AV_SOCKS_REP_COMMAND = 0x07,     /* command not supported */
    AV_SOCKS_REP_ATYP = 0x08         /* address type not supported */
};

/* Parser results besides a positive length. */
enum {
    AV_SOCKS_INCOMPLETE = 0,
    AV_SOCKS_E_VERSION = -1,   /* wrong version byte: not this protocol */
    AV_SOCKS_E_MALFORMED = -2, /* a zero count or length, RSV != 0, a bad name or port 0 */
    AV_SOCKS_E_COMMAND = -3,   /* BIND, UDP ASSOCIATE or an unknown command */
    AV_SOCKS_E_ATYP = -4       /* unknown address type */
};

/* Longest messages: greeting 2+255, sub-negotiation 3+255+255, request
 * 4+1+255+2. */
#define AV_SOCKS_GREETING_MAX 257
#define AV_SOCKS_AUTH_MAX 513
#define AV_SOCKS_REQUEST_MAX 262
/* The fixed answers: 05 REP 00 01 0.0.0.0 0, and SOCKS4's 00 5B + 6 zeros. */
#define AV_SOCKS_REPLY_LEN 10
#define AV_SOCKS4_REPLY_LEN 8

/* Methods a greeting offered, as bits: AV_SOCKS_OFFER(m) for m < 32. */
#define AV_SOCKS_OFFER(m) (1u << (m))

/* av__socks_parse_greeting parses "05 NMETHODS METHODS..." (NMETHODS
 * 1..255). On success *offered holds AV_SOCKS_OFFER bits of the methods
 * below 32 that were offered. Returns the length, AV_SOCKS_INCOMPLETE,
 * AV_SOCKS_E_VERSION or AV_SOCKS_E_MALFORMED (NMETHODS 0). */
ssize_t av__socks_parse_greeting(const uint8_t *p, size_t n, unsigned *offered);

/* av__socks_choose_method: AV_SOCKS_METHOD_USERPASS when |need_auth| and
 * it was offered, AV_SOCKS_METHOD_NONE when authentication is not needed
 * and no-auth was offered (a client that offers only user/password to a
 * proxy without tokens gets USERPASS and any password), else
 * AV_SOCKS_METHOD_REFUSED. */
int av__socks_choose_method(unsigned offered, int need_auth);

/* An RFC 1929 sub-negotiation: views into the parsed bytes. */
typedef struct av_socks_auth {
    const uint8_t *user;
    size_t user_len;
    const uint8_t *pass;
    size_t pass_len;
} av_socks_auth;

/* av__socks_parse_auth parses "01 ULEN UNAME PLEN PASSWD". A zero ULEN is
 * accepted (the name is not used); a zero PLEN is AV_SOCKS_E_MALFORMED.
 * Returns the length, AV_SOCKS_INCOMPLETE, AV_SOCKS_E_VERSION (not 01) or
 * AV_SOCKS_E_MALFORMED. */
ssize_t av__socks_parse_auth(const uint8_t *p, size_t n, av_socks_auth *out);

/* A request. */
typedef struct av_socks_request {
    int cmd;              /* AV_SOCKS_CMD_* (as sent, when AV_SOCKS_E_COMMAND) */
    int atyp;             /* AV_SOCKS_ATYP_* */
    av_authority dest;    /* validated: a lower-case name or an IP literal, port 1..65535 */
} av_socks_request;

/* av__socks_parse_request parses "05 CMD 00 ATYP DST.ADDR DST.PORT". The
 * errors come as soon as the bytes decide them (a BIND is refused after two
 * bytes), so a refusal never waits for the rest: AV_SOCKS_E_VERSION,
 * AV_SOCKS_E_COMMAND (out->cmd set), AV_SOCKS_E_MALFORMED (RSV != 0, a
 * zero-length or invalid name, port 0) or AV_SOCKS_E_ATYP. A name that is
 * an IP literal ("127.0.0.1") gives dest.is_ip like ATYP 01/04 would.
 * Returns the length on success. */
ssize_t av__socks_parse_request(const uint8_t *p, size_t n, av_socks_request *out);

/* av__socks_rep_for: the REP code that answers a request parser error. */
int av__socks_rep_for(ssize_t err);

/* av__socks_reply writes the answer "05 REP 00 01 00000000 0000" into
 * |out| (AV_SOCKS_REPLY_LEN bytes): the bound address is not meaningful
 * here (the dial is lazy, as after an HTTP CONNECT). */
void av__socks_reply(uint8_t out[AV_SOCKS_REPLY_LEN], int rep);

/* av__socks4_refusal writes SOCKS4's "request rejected" answer (00 5B and
 * six zero bytes) into |out| (AV_SOCKS4_REPLY_LEN bytes). */
void av__socks4_refusal(uint8_t out[AV_SOCKS4_REPLY_LEN]);

/* av__socks_rep_text names a REP code for logs ("command not supported"). */
const char *av__socks_rep_text(int rep);

#endif
