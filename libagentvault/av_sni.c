/* av_sni.c - the server name of a TLS ClientHello (RFC 8446 4.1.2, RFC
 * 6066 3), read with bounds-checked cursors. See av_sni.h. */
#include <string.h>

#include "av_sni.h"

/* A read cursor over [p, end). Every take fails (returns 0) past the end. */
typedef struct cur {
    const uint8_t *p, *end;
} cur;

static int take(cur *c, size_t n, const uint8_t **out)
{
    if ((size_t)(c->end - c->p) < n)
        return 0;
    if (out)
        *out = c->p;
    c->p += n;
    return 1;
}

static int take_u8(cur *c, size_t *v)
{
    const uint8_t *b;
    if (!take(c, 1, &b))
        return 0;
    *v = b[0];
    return 1;
}

static int take_u16(cur *c, size_t *v)
{
    const uint8_t *b;
    if (!take(c, 2, &b))
        return 0;
    *v = ((size_t)b[0] << 8) | b[1];
    return 1;
}

/* A sub-cursor over the next |len|-prefixed block (1 or 2 length bytes). */
static int take_block(cur *c, int lenbytes, cur *sub)
{
    size_t len;
    const uint8_t *b;
    if (!(lenbytes == 1 ? take_u8(c, &len) : take_u16(c, &len)) || !take(c, len, &b))
        return 0;
    sub->p = b;
    sub->end = b + len;
    return 1;
}

/* The host_name of a server_name extension's body. */
static int sni_from_ext(cur ext, char *out)
{
    cur list;
    if (!take_block(&ext, 2, &list) || ext.p != ext.end)
        return AV_SNI_MALFORMED;
    while (list.p < list.end) {
        size_t type;
        cur name;
        if (!take_u8(&list, &type) || !take_block(&list, 2, &name))
            return AV_SNI_MALFORMED;
        if (type != 0)
            continue; /* host_name is type 0; others are skipped */
        size_t len = (size_t)(name.end - name.p);
        if (len == 0 || len > AV_SNI_MAX || memchr(name.p, 0, len))
            return AV_SNI_NONE;
        memcpy(out, name.p, len);
        out[len] = '\0';
        return AV_SNI_FOUND;
    }
    return AV_SNI_NONE;
}

int av__sni_peek(const uint8_t *p, size_t n, char *out)
{
    out[0] = '\0';
    if (n >= 1 && p[0] != 0x16)
        return AV_SNI_MALFORMED;
    if (n >= 2 && p[1] != 0x03)
        return AV_SNI_MALFORMED;
    if (n < 5)
        return AV_SNI_INCOMPLETE;
    size_t rlen = ((size_t)p[3] << 8) | p[4];
    if (rlen == 0 || rlen > 16384)
        return AV_SNI_MALFORMED;
    if (n < 5 + rlen)
        return AV_SNI_INCOMPLETE;
    cur rec = {p + 5, p + 5 + rlen};
    const uint8_t *h;
    if (!take(&rec, 4, &h) || h[0] != 0x01)
        return AV_SNI_MALFORMED; /* not a ClientHello */
    size_t hlen = ((size_t)h[1] << 16) | ((size_t)h[2] << 8) | h[3];
    if (hlen > (size_t)(rec.end - rec.p))
        return AV_SNI_NONE; /* continues in the next record: not looked at */
    cur ch = {rec.p, rec.p + hlen};
    cur skip, exts;
    if (!take(&ch, 2 + 32, NULL) || !take_block(&ch, 1, &skip) || !take_block(&ch, 2, &skip) ||
        !take_block(&ch, 1, &skip))
        return AV_SNI_MALFORMED;
    if (ch.p == ch.end)
        return AV_SNI_NONE; /* no extensions at all */
    if (!take_block(&ch, 2, &exts))
        return AV_SNI_MALFORMED;
    while (exts.p < exts.end) {
        size_t type;
        cur body;
        if (!take_u16(&exts, &type) || !take_block(&exts, 2, &body))
            return AV_SNI_MALFORMED;
        if (type == 0)
            return sni_from_ext(body, out);
    }
    return AV_SNI_NONE;
}
