/* av_socks.c - SOCKS5 server messages (RFC 1928, RFC 1929): bounded,
 * I/O-free parsers and the fixed answers. See av_socks.h. */
#include <arpa/inet.h>
#include <string.h>

#include "av_err.h"
#include "av_socks.h"

ssize_t av__socks_parse_greeting(const uint8_t *p, size_t n, unsigned *offered)
{
    *offered = 0;
    if (n < 1)
        return AV_SOCKS_INCOMPLETE;
    if (p[0] != AV_SOCKS5_VERSION)
        return AV_SOCKS_E_VERSION;
    if (n < 2)
        return AV_SOCKS_INCOMPLETE;
    size_t nm = p[1];
    if (nm == 0)
        return AV_SOCKS_E_MALFORMED;
    if (n < 2 + nm)
        return AV_SOCKS_INCOMPLETE;
    for (size_t i = 0; i < nm; i++)
        if (p[2 + i] < 32)
            *offered |= AV_SOCKS_OFFER(p[2 + i]);
    return (ssize_t)(2 + nm);
}

int av__socks_choose_method(unsigned offered, int need_auth)
{
    if (!need_auth && (offered & AV_SOCKS_OFFER(AV_SOCKS_METHOD_NONE)))
        return AV_SOCKS_METHOD_NONE;
    if (offered & AV_SOCKS_OFFER(AV_SOCKS_METHOD_USERPASS))
        return AV_SOCKS_METHOD_USERPASS;
    return AV_SOCKS_METHOD_REFUSED;
}

ssize_t av__socks_parse_auth(const uint8_t *p, size_t n, av_socks_auth *out)
{
    memset(out, 0, sizeof(*out));
    if (n < 1)
        return AV_SOCKS_INCOMPLETE;
    if (p[0] != AV_SOCKS_AUTH_VERSION)
        return AV_SOCKS_E_VERSION;
    if (n < 2)
        return AV_SOCKS_INCOMPLETE;
    size_t ul = p[1];
    if (n < 2 + ul + 1)
        return AV_SOCKS_INCOMPLETE;
    size_t pl = p[2 + ul];
    if (pl == 0)
        return AV_SOCKS_E_MALFORMED;
    if (n < 3 + ul + pl)
        return AV_SOCKS_INCOMPLETE;
    out->user = p + 2;
    out->user_len = ul;
    out->pass = p + 3 + ul;
    out->pass_len = pl;
    return (ssize_t)(3 + ul + pl);
}

ssize_t av__socks_parse_request(const uint8_t *p, size_t n, av_socks_request *out)
{
    memset(out, 0, sizeof(*out));
    if (n < 1)
        return AV_SOCKS_INCOMPLETE;
    if (p[0] != AV_SOCKS5_VERSION)
        return AV_SOCKS_E_VERSION;
    if (n < 2)
        return AV_SOCKS_INCOMPLETE;
    out->cmd = p[1];
    if (p[1] != AV_SOCKS_CMD_CONNECT)
        return AV_SOCKS_E_COMMAND;
    if (n < 3)
        return AV_SOCKS_INCOMPLETE;
    if (p[2] != 0)
        return AV_SOCKS_E_MALFORMED;
    if (n < 4)
        return AV_SOCKS_INCOMPLETE;
    out->atyp = p[3];
    size_t alen, aoff = 4;
    switch (p[3]) {
    case AV_SOCKS_ATYP_IPV4:
        alen = 4;
        break;
    case AV_SOCKS_ATYP_IPV6:
        alen = 16;
        break;
    case AV_SOCKS_ATYP_NAME:
        if (n < 5)
            return AV_SOCKS_INCOMPLETE;
        alen = p[4];
        aoff = 5;
        if (alen == 0 || alen > AV_HOST_MAX)
            return AV_SOCKS_E_MALFORMED;
        break;
    default:
        return AV_SOCKS_E_ATYP;
    }
    size_t total = aoff + alen + 2;
    if (n < total)
        return AV_SOCKS_INCOMPLETE;
    const uint8_t *a = p + aoff;
    int port = (p[aoff + alen] << 8) | p[aoff + alen + 1];
    if (port == 0)
        return AV_SOCKS_E_MALFORMED;
    if (p[3] == AV_SOCKS_ATYP_NAME) {
        int kind = av__host_validate((const char *)a, alen, out->dest.host);
        if (kind < 0)
            return AV_SOCKS_E_MALFORMED;
        out->dest.is_ip = kind;
    } else {
        int af = p[3] == AV_SOCKS_ATYP_IPV4 ? AF_INET : AF_INET6;
        char text[INET6_ADDRSTRLEN];
        if (!inet_ntop(af, a, text, sizeof(text)))
            return AV_SOCKS_E_MALFORMED;
        /* The text form goes through the same validation as a CONNECT
         * target's literal, so both spell an address the same way. */
        int kind = av__host_validate(text, strlen(text), out->dest.host);
        if (kind != (af == AF_INET ? 4 : 6))
            return AV_SOCKS_E_MALFORMED;
        out->dest.is_ip = kind;
    }
    out->dest.port = port;
    return (ssize_t)total;
}

int av__socks_rep_for(ssize_t err)
{
    switch (err) {
    case AV_SOCKS_E_COMMAND:
        return AV_SOCKS_REP_COMMAND;
    case AV_SOCKS_E_ATYP:
        return AV_SOCKS_REP_ATYP;
    default:
        return AV_SOCKS_REP_FAILURE;
    }
}

void av__socks_reply(uint8_t out[AV_SOCKS_REPLY_LEN], int rep)
{
    memset(out, 0, AV_SOCKS_REPLY_LEN);
    out[0] = AV_SOCKS5_VERSION;
    out[1] = (uint8_t)rep;
    out[3] = AV_SOCKS_ATYP_IPV4;
}

void av__socks4_refusal(uint8_t out[AV_SOCKS4_REPLY_LEN])
{
    memset(out, 0, AV_SOCKS4_REPLY_LEN);
    out[1] = 0x5B;
}

const char *av__socks_rep_text(int rep)
{
    static const char *const names[] = {
        "succeeded",          "general failure",          "not allowed by ruleset",
        "network unreachable", "host unreachable",         "connection refused",
        "TTL expired",        "command not supported",    "address type not supported",
    };
    return rep >= 0 && rep < (int)(sizeof(names) / sizeof(names[0])) ? names[rep] : "unknown";
}
