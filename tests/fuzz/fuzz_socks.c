/* fuzz_socks.c - libFuzzer target for the SOCKS5 server messages
 * (av_socks.c).
 *
 * The input is a whole client side of a negotiation: a greeting, an RFC
 * 1929 sub-negotiation when the greeting offered user/password, a
 * request, and what follows (the tunnel's first bytes), parsed in order
 * the way the connection does it. Checked for each message: a success
 * consumes at most what was given and at most the message's maximum; every
 * proper prefix of a successful message is "incomplete"; a prefix of an
 * error is "incomplete" or the same error; a parsed destination is a
 * valid authority (the host re-validates to itself, port 1..65535) and an
 * IP destination came from ATYP 01/04 or a literal name; views of the
 * user name and password lie inside the input. What follows a request
 * (the tunnel's first bytes) goes through the SNI peek of transparent mode
 * (av_sni.c): a found name is NUL-free, at most 253 bytes, and every
 * prefix of the input is incomplete or gives the same answer once the first
 * record is whole. The prefixes are heap copies of exactly their size, so
 * ASan sees any read past them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_sni.h"
#include "av_socks.h"
#include "av_url.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { P_GREETING, P_AUTH, P_REQUEST };

/* parse runs parser |which| over (p, n). */
static ssize_t parse(int which, const uint8_t *p, size_t n, unsigned *off, av_socks_auth *au, av_socks_request *rq)
{
    switch (which) {
    case P_GREETING:
        return av__socks_parse_greeting(p, n, off);
    case P_AUTH:
        return av__socks_parse_auth(p, n, au);
    default:
        return av__socks_parse_request(p, n, rq);
    }
}

/* check_prefixes: a few proper prefixes (picked by |r|) of a message
 * parsed to |full| agree with it. */
static void check_prefixes(int which, const uint8_t *p, size_t n, ssize_t full, rng *g)
{
    size_t upto = full > 0 ? (size_t)full : n;
    for (int k = 0; k < 4 && upto > 0; k++) {
        size_t len = rng_next(g, upto);
        uint8_t *copy = malloc(len ? len : 1);
        if (!copy)
            return;
        memcpy(copy, p, len);
        unsigned off;
        av_socks_auth au;
        av_socks_request rq;
        ssize_t r = parse(which, copy, len, &off, &au, &rq);
        free(copy);
        if (full > 0)
            CHECK(r == AV_SOCKS_INCOMPLETE);
        else
            CHECK(r == AV_SOCKS_INCOMPLETE || r == full);
    }
}

static void check_request(const av_socks_request *rq)
{
    char again[AV_HOST_MAX + 1];
    size_t hl = strlen(rq->dest.host);
    CHECK(hl > 0 && hl <= AV_HOST_MAX);
    CHECK(rq->dest.port >= 1 && rq->dest.port <= 65535);
    CHECK(rq->cmd == AV_SOCKS_CMD_CONNECT);
    int kind = av__host_validate(rq->dest.host, hl, again);
    CHECK(kind == rq->dest.is_ip);
    CHECK(strcmp(again, rq->dest.host) == 0);
    if (rq->atyp == AV_SOCKS_ATYP_IPV4)
        CHECK(rq->dest.is_ip == 4);
    else if (rq->atyp == AV_SOCKS_ATYP_IPV6)
        CHECK(rq->dest.is_ip == 6);
    else
        CHECK(rq->atyp == AV_SOCKS_ATYP_NAME);
    for (size_t i = 0; i < hl; i++)
        CHECK(rq->dest.host[i] > 0x20 && rq->dest.host[i] < 0x7f);
}

/* check_sni runs the SNI peek over the tunnel's first bytes. */
static void check_sni(const uint8_t *p, size_t n, rng *g)
{
    char name[AV_SNI_MAX + 1];
    int r = av__sni_peek(p, n, name);
    CHECK(r == AV_SNI_FOUND || r == AV_SNI_INCOMPLETE || r == AV_SNI_NONE || r == AV_SNI_MALFORMED);
    if (r == AV_SNI_FOUND) {
        size_t l = strlen(name);
        CHECK(l >= 1 && l <= AV_SNI_MAX);
    }
    if (r != AV_SNI_INCOMPLETE && n > 0) {
        size_t len = rng_next(g, n);
        uint8_t *copy = malloc(len ? len : 1);
        if (!copy)
            return;
        memcpy(copy, p, len);
        char again[AV_SNI_MAX + 1];
        int r2 = av__sni_peek(copy, len, again);
        free(copy);
        CHECK(r2 == AV_SNI_INCOMPLETE || r2 == r);
        if (r2 == AV_SNI_FOUND)
            CHECK(strcmp(again, name) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rng g;
    rng_seed(&g, data, size);
    /* The whole input on the heap, exactly sized. */
    uint8_t *in = malloc(size ? size : 1);
    if (!in)
        return 0;
    memcpy(in, data, size);
    size_t at = 0;
    int step = P_GREETING;
    int need_auth = size > 0 && (data[size - 1] & 1);
    while (at <= size) {
        const uint8_t *p = in + at;
        size_t n = size - at;
        unsigned off = 0;
        av_socks_auth au;
        av_socks_request rq;
        ssize_t r = parse(step, p, n, &off, &au, &rq);
        CHECK(r == AV_SOCKS_INCOMPLETE || r == AV_SOCKS_E_VERSION || r == AV_SOCKS_E_MALFORMED ||
              r == AV_SOCKS_E_COMMAND || r == AV_SOCKS_E_ATYP || r > 0);
        if (r > 0)
            CHECK((size_t)r <= n);
        check_prefixes(step, p, n, r, &g);
        if (r <= 0) {
            if (r < 0 && step == P_REQUEST) {
                int rep = av__socks_rep_for(r);
                CHECK(rep == AV_SOCKS_REP_FAILURE || rep == AV_SOCKS_REP_COMMAND || rep == AV_SOCKS_REP_ATYP);
                uint8_t reply[AV_SOCKS_REPLY_LEN];
                av__socks_reply(reply, rep);
                CHECK(reply[0] == 5 && reply[1] == rep && reply[3] == 1);
                CHECK(av__socks_rep_text(rep)[0] != '\0');
            }
            if (r == AV_SOCKS_E_COMMAND)
                CHECK(rq.cmd != AV_SOCKS_CMD_CONNECT);
            break;
        }
        if (step == P_GREETING) {
            CHECK((size_t)r <= AV_SOCKS_GREETING_MAX && (size_t)r == 2u + p[1]);
            int m = av__socks_choose_method(off, need_auth);
            CHECK(m == AV_SOCKS_METHOD_NONE || m == AV_SOCKS_METHOD_USERPASS || m == AV_SOCKS_METHOD_REFUSED);
            CHECK(!(need_auth && m == AV_SOCKS_METHOD_NONE));
            if (m != AV_SOCKS_METHOD_REFUSED) {
                int offered = 0;
                for (size_t i = 0; i < p[1]; i++)
                    offered |= p[2 + i] == m;
                CHECK(offered);
            }
            if (m == AV_SOCKS_METHOD_REFUSED)
                break;
            step = m == AV_SOCKS_METHOD_USERPASS ? P_AUTH : P_REQUEST;
        } else if (step == P_AUTH) {
            CHECK((size_t)r <= AV_SOCKS_AUTH_MAX);
            CHECK(au.user == p + 2 && au.user_len == p[1]);
            CHECK(au.pass > p && au.pass + au.pass_len == p + r && au.pass_len > 0);
            step = P_REQUEST;
        } else {
            CHECK((size_t)r <= AV_SOCKS_REQUEST_MAX);
            check_request(&rq);
            check_sni(p + r, n - (size_t)r, &g); /* the rest is the tunnel's */
            break;
        }
        at += (size_t)r;
    }
    free(in);
    return 0;
}
