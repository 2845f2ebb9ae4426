/* av_h1.c - strict, incremental, zero-copy HTTP/1.1 parser and serializer.
 *
 * The head parsers work in two passes. The first pass (scan_head) looks
 * for the CRLFCRLF terminator, resuming where the previous call stopped,
 * and rejects a bare LF or bare CR the moment it appears. The second pass
 * runs once over the complete head: request/status line, fields, then the
 * framing and connection semantics. Nothing is allocated; every string is
 * a view into the caller's buffer.
 */
#include "av_h1.h"

#include <stdio.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "av_mem.h"

#define H1_DEFAULT_MAX_HEAD 65536
#define H1_DEFAULT_MAX_FIELDS 100
#define H1_MAX_CL_DIGITS 18
#define H1_MAX_CHUNK_LINE 4096
#define H1_MAX_TRAILERS 16384
#define H1_MAX_CHUNK_SIZE (UINT64_C(1) << 62)

/* ---- character classes ------------------------------------------------- */

/* is_tchar: RFC 9110 token character. */
static int is_tchar(uint8_t c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
    case '+': case '-': case '.': case '^': case '_': case '`': case '|':
    case '~':
        return 1;
    default:
        return 0;
    }
}

/* is_field_vchar: HTAB, SP, VCHAR or obs-text (field values, reasons). */
static int is_field_vchar(uint8_t c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* is_ows: optional whitespace (SP / HTAB). */
static int is_ows(uint8_t c)
{
    return c == ' ' || c == '\t';
}

/* lower: ASCII lower-casing. */
static uint8_t lower(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

/* ieq_n: case-insensitive comparison of (a, an) with (b, bn). */
static int ieq_n(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn)
        return 0;
    for (size_t i = 0; i < an; i++)
        if (lower((uint8_t)a[i]) != lower((uint8_t)b[i]))
            return 0;
    return 1;
}

/* ieq: case-insensitive comparison of (p, n) with the NUL-terminated s. */
static int ieq(const char *p, size_t n, const char *s)
{
    return ieq_n(p, n, s, strlen(s));
}

/* ---- comma-separated lists --------------------------------------------- */

typedef struct list_iter {
    const char *p;
    const char *end;
    int done;
} list_iter;

/* list_init starts iterating over a #list field value. */
static void list_init(list_iter *it, const char *p, size_t n)
{
    it->p = p;
    it->end = p + n;
    it->done = 0;
}

/* list_next yields the next element, OWS-trimmed and possibly empty;
 * returns 0 when the list is exhausted. */
static int list_next(list_iter *it, const char **elem, size_t *elen)
{
    if (it->done)
        return 0;
    const char *s = it->p;
    const char *e = s;
    while (e < it->end && *e != ',')
        e++;
    if (e == it->end)
        it->done = 1;
    else
        it->p = e + 1;
    while (s < e && is_ows((uint8_t)*s))
        s++;
    while (e > s && is_ows((uint8_t)e[-1]))
        e--;
    *elem = s;
    *elen = (size_t)(e - s);
    return 1;
}

/* is_token reports whether (p, n) is a non-empty token. */
static int is_token(const char *p, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((uint8_t)p[i]))
            return 0;
    return 1;
}

/* ---- field helpers ----------------------------------------------------- */

int av__h1_ieq_n(const char *a, const char *b, size_t n)
{
    return ieq_n(a, n, b, n);
}

/* av__h1_find returns the first field named |name|, or NULL. */
const av_h1_field *av__h1_find(const av_h1_field *fields, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (av__h1_name_eq(&fields[i], name))
            return &fields[i];
    return NULL;
}

/* av__h1_is_hop_by_hop reports whether |f| must not be forwarded. */
int av__h1_is_hop_by_hop(const av_h1_field *f, const av_h1_field *fields, size_t n)
{
    /* The fixed set, by length first (this runs for every field). */
    switch (f->name_len) {
    case 2:
        if (av__h1_name_eq(f, "te"))
            return 1;
        break;
    case 7:
        if (av__h1_name_eq(f, "trailer") || av__h1_name_eq(f, "upgrade"))
            return 1;
        break;
    case 10:
        if (av__h1_name_eq(f, "connection") || av__h1_name_eq(f, "keep-alive"))
            return 1;
        break;
    case 16:
        if (av__h1_name_eq(f, "proxy-connection"))
            return 1;
        break;
    case 17:
        if (av__h1_name_eq(f, "transfer-encoding"))
            return 1;
        break;
    case 18:
        if (av__h1_name_eq(f, "proxy-authenticate"))
            return 1;
        break;
    case 19:
        if (av__h1_name_eq(f, "proxy-authorization"))
            return 1;
        break;
    default:
        break;
    }
    for (size_t i = 0; i < n; i++) {
        if (!av__h1_name_eq(&fields[i], "connection"))
            continue;
        list_iter it;
        const char *e;
        size_t el;
        list_init(&it, fields[i].value, fields[i].value_len);
        while (list_next(&it, &e, &el))
            if (el && ieq_n(e, el, f->name, f->name_len))
                return 1;
    }
    return 0;
}

/* ---- head scanning ----------------------------------------------------- */

/* limits_get fills in defaults for a NULL limits pointer or zero fields. */
static void limits_get(const av_h1_limits *lim, size_t *max_head, size_t *max_fields)
{
    *max_head = (lim && lim->max_head) ? lim->max_head : H1_DEFAULT_MAX_HEAD;
    *max_fields = (lim && lim->max_fields) ? lim->max_fields : H1_DEFAULT_MAX_FIELDS;
    if (*max_fields > AV_H1_MAX_FIELDS_CAP)
        *max_fields = AV_H1_MAX_FIELDS_CAP;
}

/* scan_head looks for CRLFCRLF from where the last call stopped. Returns
 * the head length, AV_H1_INCOMPLETE, AV_H1_ERR_SYNTAX (bare LF or CR, or a
 * leading empty line) or AV_H1_ERR_TOO_LARGE. */
static ssize_t scan_head(const uint8_t *buf, size_t len, size_t max_head, av_h1_scan *scan)
{
    size_t i = scan->scanned;
    if (i > len)
        i = 0; /* caller broke the contract (shrunk buffer): rescan */
    size_t stop = len < max_head ? len : max_head;
    for (; i < stop; i++) {
        uint8_t c = buf[i];
        if (i > 0 && buf[i - 1] == '\r' && c != '\n')
            return AV_H1_ERR_SYNTAX; /* bare CR */
        if (c != '\n')
            continue;
        if (i == 0 || buf[i - 1] != '\r')
            return AV_H1_ERR_SYNTAX; /* bare LF */
        if (i == 1)
            return AV_H1_ERR_SYNTAX; /* empty start line */
        if (i >= 3 && buf[i - 2] == '\n' && buf[i - 3] == '\r') {
            scan->scanned = i + 1;
            return (ssize_t)(i + 1);
        }
    }
    scan->scanned = i;
    if (len > max_head)
        return AV_H1_ERR_TOO_LARGE;
    return AV_H1_INCOMPLETE;
}

/* line_end returns the CR that ends the line starting at |p|. The scan has
 * guaranteed that a CRLF exists before |end|. */
static const uint8_t *line_end(const uint8_t *p, const uint8_t *end)
{
    const uint8_t *cr = memchr(p, '\r', (size_t)(end - p));
    return cr ? cr : end;
}

/* parse_version parses "HTTP/x.y" from exactly 8 bytes at |p|. Returns 0,
 * AV_H1_ERR_SYNTAX (not that shape) or AV_H1_ERR_VERSION (not 1.0/1.1). */
static int parse_version(const uint8_t *p, size_t n, int *minor)
{
    if (n < 8 || memcmp(p, "HTTP/", 5) != 0)
        return AV_H1_ERR_SYNTAX;
    if (p[5] < '0' || p[5] > '9' || p[6] != '.' || p[7] < '0' || p[7] > '9')
        return AV_H1_ERR_SYNTAX;
    if (p[5] != '1' || p[7] > '1')
        return AV_H1_ERR_VERSION;
    *minor = p[7] - '0';
    return 0;
}

/* parse_fields parses field lines from |p| up to the final empty line,
 * which starts at |end|. Returns 0, AV_H1_ERR_SYNTAX or _TOO_LARGE. */
static int parse_fields(const uint8_t *p, const uint8_t *end, size_t max_fields,
                        av_h1_field *fields, size_t *nfields)
{
    size_t n = 0;
    while (p < end) {
        const uint8_t *eol = line_end(p, end);
        if (is_ows(*p))
            return AV_H1_ERR_SYNTAX; /* obs-fold */
        const uint8_t *q = p;
        while (q < eol && is_tchar(*q))
            q++;
        if (q == p || q == eol || *q != ':')
            return AV_H1_ERR_SYNTAX; /* empty name, bad byte, space before ':' */
        const uint8_t *v = q + 1;
        for (const uint8_t *r = v; r < eol; r++)
            if (!is_field_vchar(*r))
                return AV_H1_ERR_SYNTAX;
        const uint8_t *ve = eol;
        while (v < ve && is_ows(*v))
            v++;
        while (ve > v && is_ows(ve[-1]))
            ve--;
        if (n == max_fields)
            return AV_H1_ERR_TOO_LARGE;
        fields[n].name = (const char *)p;
        fields[n].name_len = (size_t)(q - p);
        fields[n].value = (const char *)v;
        fields[n].value_len = (size_t)(ve - v);
        n++;
        p = eol + 2;
    }
    *nfields = n;
    return 0;
}

/* ---- message semantics ------------------------------------------------- */

typedef struct h1_meta {
    int has_cl;
    uint64_t cl;
    int te_chunked;
    unsigned flags;
    const av_h1_field *host;
} h1_meta;

/* parse_cl parses a Content-Length value: 1*DIGIT, at most 18 digits. */
static int parse_cl(const av_h1_field *f, uint64_t *out)
{
    if (f->value_len == 0 || f->value_len > H1_MAX_CL_DIGITS)
        return AV_H1_ERR_FRAMING;
    uint64_t v = 0;
    for (size_t i = 0; i < f->value_len; i++) {
        uint8_t c = (uint8_t)f->value[i];
        if (c < '0' || c > '9')
            return AV_H1_ERR_FRAMING;
        v = v * 10 + (uint64_t)(c - '0');
    }
    *out = v;
    return 0;
}

/* scan_connection applies one Connection field to |m|; *keep_alive and
 * *conn_upgrade record the tokens seen. */
static int scan_connection(const av_h1_field *f, h1_meta *m, int *keep_alive, int *conn_upgrade)
{
    list_iter it;
    const char *e;
    size_t el;
    list_init(&it, f->value, f->value_len);
    while (list_next(&it, &e, &el)) {
        if (el == 0)
            continue; /* empty list elements are allowed */
        if (!is_token(e, el))
            return AV_H1_ERR_SYNTAX;
        if (ieq(e, el, "host") || ieq(e, el, "content-length") || ieq(e, el, "transfer-encoding"))
            return AV_H1_ERR_CONNECTION;
        if (ieq(e, el, "close"))
            m->flags |= AV_H1_F_CLOSE;
        else if (ieq(e, el, "keep-alive"))
            *keep_alive = 1;
        else if (ieq(e, el, "upgrade"))
            *conn_upgrade = 1;
    }
    return 0;
}

/* scan_upgrade records which protocols an Upgrade field lists. */
static void scan_upgrade(const av_h1_field *f, int *ws, int *h2c)
{
    list_iter it;
    const char *e;
    size_t el;
    list_init(&it, f->value, f->value_len);
    while (list_next(&it, &e, &el)) {
        size_t nl = 0;
        while (nl < el && e[nl] != '/')
            nl++;
        if (ieq(e, nl, "websocket"))
            *ws = 1;
        else if (ieq(e, nl, "h2c"))
            *h2c = 1;
    }
}

/* analyse_fields derives framing and flags from the fields. Returns 0 or
 * a negative AV_H1_ERR_*. */
static int analyse_fields(const av_h1_field *fields, size_t n, int minor, int is_request, h1_meta *m)
{
    int te_count = 0, host_count = 0, keep_alive = 0, conn_upgrade = 0;
    int ws = 0, h2c = 0, rc;
    memset(m, 0, sizeof(*m));
    for (size_t i = 0; i < n; i++) {
        const av_h1_field *f = &fields[i];
        if (av__h1_name_eq(f, "content-length")) {
            if (m->has_cl)
                return AV_H1_ERR_FRAMING;
            if ((rc = parse_cl(f, &m->cl)) != 0)
                return rc;
            m->has_cl = 1;
        } else if (av__h1_name_eq(f, "transfer-encoding")) {
            if (++te_count > 1 || minor == 0 || !ieq(f->value, f->value_len, "chunked"))
                return AV_H1_ERR_FRAMING;
            m->te_chunked = 1;
        } else if (av__h1_name_eq(f, "connection")) {
            if ((rc = scan_connection(f, m, &keep_alive, &conn_upgrade)) != 0)
                return rc;
        } else if (av__h1_name_eq(f, "upgrade")) {
            m->flags |= AV_H1_F_UPGRADE;
            scan_upgrade(f, &ws, &h2c);
        } else if (is_request && av__h1_name_eq(f, "host")) {
            if (++host_count > 1)
                return AV_H1_ERR_SYNTAX;
            m->host = f;
        } else if (is_request && av__h1_name_eq(f, "expect")) {
            if (ieq(f->value, f->value_len, "100-continue")) {
                if (minor >= 1)
                    m->flags |= AV_H1_F_EXPECT_CONTINUE;
            } else {
                m->flags |= AV_H1_F_EXPECT_OTHER;
            }
        }
    }
    if (m->has_cl && m->te_chunked)
        return AV_H1_ERR_FRAMING;
    if (minor == 0 && !keep_alive)
        m->flags |= AV_H1_F_CLOSE;
    if (ws && conn_upgrade)
        m->flags |= AV_H1_F_UPGRADE_WEBSOCKET;
    if (h2c)
        m->flags |= AV_H1_F_UPGRADE_H2C;
    if (m->host)
        m->flags |= AV_H1_F_HAS_HOST;
    return 0;
}

/* ---- request and response heads ---------------------------------------- */

/* parse_request_line parses METHOD SP TARGET SP HTTP/1.x in [p, eol). */
static int parse_request_line(const uint8_t *p, const uint8_t *eol, av_h1_request *req)
{
    const uint8_t *q = p;
    while (q < eol && is_tchar(*q))
        q++;
    if (q == p || q == eol || *q != ' ')
        return AV_H1_ERR_SYNTAX;
    req->method = (const char *)p;
    req->method_len = (size_t)(q - p);
    const uint8_t *t = ++q;
    while (q < eol && *q >= 0x21 && *q <= 0x7e)
        q++;
    if (q == t || q == eol || *q != ' ')
        return AV_H1_ERR_SYNTAX;
    req->target = (const char *)t;
    req->target_len = (size_t)(q - t);
    q++;
    int rc = parse_version(q, (size_t)(eol - q), &req->minor_version);
    if (rc)
        return rc;
    if (eol - q != 8)
        return AV_H1_ERR_SYNTAX;
    return 0;
}

/* av__h1_parse_request parses a request head; see av_h1.h. */
ssize_t av__h1_parse_request(const uint8_t *buf, size_t len, const av_h1_limits *lim,
                             av_h1_scan *scan, av_h1_request *req)
{
    size_t max_head, max_fields;
    limits_get(lim, &max_head, &max_fields);
    ssize_t hlen = scan_head(buf, len, max_head, scan);
    if (hlen <= 0)
        return hlen;
    const uint8_t *end = buf + hlen - 2; /* the final empty line */
    const uint8_t *eol = line_end(buf, end);
    req->nfields = 0;
    req->host = NULL;
    int rc = parse_request_line(buf, eol, req);
    if (rc)
        return rc;
    rc = parse_fields(eol + 2, end, max_fields, req->fields, &req->nfields);
    if (rc)
        return rc;
    h1_meta m;
    rc = analyse_fields(req->fields, req->nfields, req->minor_version, 1, &m);
    if (rc)
        return rc;
    req->flags = m.flags;
    req->host = m.host;
    req->content_length = 0;
    if (m.te_chunked) {
        req->body = AV_H1_BODY_CHUNKED;
    } else if (m.has_cl) {
        req->body = AV_H1_BODY_LENGTH;
        req->content_length = m.cl;
    } else {
        req->body = AV_H1_BODY_NONE;
    }
    return hlen;
}

/* parse_status_line parses HTTP/1.x SP 3DIGIT [SP reason] in [p, eol). */
static int parse_status_line(const uint8_t *p, const uint8_t *eol, av_h1_response *resp)
{
    size_t n = (size_t)(eol - p);
    int rc = parse_version(p, n, &resp->minor_version);
    if (rc)
        return rc;
    if (n < 12 || p[8] != ' ')
        return AV_H1_ERR_SYNTAX;
    int status = 0;
    for (size_t i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9')
            return AV_H1_ERR_SYNTAX;
        status = status * 10 + (p[i] - '0');
    }
    if (status < 100)
        return AV_H1_ERR_SYNTAX;
    resp->status = status;
    const uint8_t *r = p + 12;
    if (r < eol) {
        if (*r != ' ')
            return AV_H1_ERR_SYNTAX; /* "2000" or "200x" */
        r++;
    }
    for (const uint8_t *q = r; q < eol; q++)
        if (!is_field_vchar(*q))
            return AV_H1_ERR_SYNTAX;
    resp->reason = (const char *)r;
    resp->reason_len = (size_t)(eol - r);
    return 0;
}

/* av__h1_parse_response parses a response head; see av_h1.h. A status
 * line without the SP after the code ("HTTP/1.1 200\r\n") is accepted and
 * gives an empty reason. */
ssize_t av__h1_parse_response(const uint8_t *buf, size_t len, const av_h1_limits *lim,
                              av_h1_scan *scan, int request_was_head, int request_was_connect,
                              av_h1_response *resp)
{
    size_t max_head, max_fields;
    limits_get(lim, &max_head, &max_fields);
    ssize_t hlen = scan_head(buf, len, max_head, scan);
    if (hlen <= 0)
        return hlen;
    const uint8_t *end = buf + hlen - 2;
    const uint8_t *eol = line_end(buf, end);
    resp->nfields = 0;
    int rc = parse_status_line(buf, eol, resp);
    if (rc)
        return rc;
    rc = parse_fields(eol + 2, end, max_fields, resp->fields, &resp->nfields);
    if (rc)
        return rc;
    h1_meta m;
    rc = analyse_fields(resp->fields, resp->nfields, resp->minor_version, 0, &m);
    if (rc)
        return rc;
    resp->flags = m.flags;
    resp->content_length = 0;
    int st = resp->status;
    if (request_was_head || st < 200 || st == 204 || st == 304 ||
        (request_was_connect && st < 300)) {
        resp->body = AV_H1_BODY_NONE;
    } else if (m.te_chunked) {
        resp->body = AV_H1_BODY_CHUNKED;
    } else if (m.has_cl) {
        resp->body = AV_H1_BODY_LENGTH;
        resp->content_length = m.cl;
    } else {
        resp->body = AV_H1_BODY_UNTIL_CLOSE;
    }
    return hlen;
}

/* ---- body decoding ----------------------------------------------------- */

enum {
    CS_SIZE_FIRST = 0, /* expecting the first hex digit of a chunk size */
    CS_SIZE,           /* more hex digits, ';', BWS or CR */
    CS_BWS,            /* BWS that must be followed by ';' */
    CS_EXT_NAME_BWS,   /* after ';': BWS then an extension name */
    CS_EXT_NAME,       /* in an extension name */
    CS_EXT_NAME_AFTER, /* BWS after a name: '=' or ';' must follow */
    CS_EXT_VAL_BWS,    /* after '=': BWS then token or quoted-string */
    CS_EXT_VAL_TOKEN,  /* in a token value */
    CS_EXT_QS,         /* in a quoted-string */
    CS_EXT_QS_ESC,     /* after a backslash in a quoted-string */
    CS_EXT_VAL_END,    /* after a closing quote */
    CS_SIZE_LF,        /* after the CR of the chunk-size line */
    CS_DATA,           /* chunk data */
    CS_DATA_CR,        /* CRLF after chunk data */
    CS_DATA_LF,
    CS_TR_START,       /* start of a trailer line or the final CRLF */
    CS_TR_NAME,
    CS_TR_VALUE,
    CS_TR_LF,          /* after the CR of a trailer line */
    CS_FINAL_LF,       /* after the CR of the final empty line */
    CS_TRAILERS,       /* want_trailers: the caller parses the section */
    CS_ERROR
};

/* av__h1_body_init prepares a decoder; NONE and zero-length bodies start
 * out done. */
void av__h1_body_init(av_h1_body *b, int kind, uint64_t content_length)
{
    memset(b, 0, sizeof(*b));
    b->kind = kind;
    if (kind == AV_H1_BODY_LENGTH)
        b->remaining = content_length;
    b->state = CS_SIZE_FIRST;
    if (kind == AV_H1_BODY_NONE || (kind == AV_H1_BODY_LENGTH && content_length == 0))
        b->done = 1;
}

/* is_qdtext: quoted-string text byte (RFC 9110 5.6.4). */
static int is_qdtext(uint8_t c)
{
    return c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b) ||
           (c >= 0x5d && c <= 0x7e) || c >= 0x80;
}

/* chunk_size_byte advances the chunk-size line by one byte. Returns the
 * next state or CS_ERROR. */
static int chunk_size_byte(av_h1_body *b, uint8_t c)
{
    int h;
    switch (b->state) {
    case CS_SIZE_FIRST:
        if ((h = av__hex_value(c)) < 0)
            return CS_ERROR;
        b->remaining = (uint64_t)h;
        return CS_SIZE;
    case CS_SIZE:
        if ((h = av__hex_value(c)) >= 0) {
            if (b->remaining > H1_MAX_CHUNK_SIZE / 16)
                return CS_ERROR;
            b->remaining = b->remaining * 16 + (uint64_t)h;
            return b->remaining > H1_MAX_CHUNK_SIZE ? CS_ERROR : CS_SIZE;
        }
        break;
    case CS_BWS:
        return is_ows(c) ? CS_BWS : c == ';' ? CS_EXT_NAME_BWS : CS_ERROR;
    case CS_EXT_NAME_BWS:
        return is_ows(c) ? CS_EXT_NAME_BWS : is_tchar(c) ? CS_EXT_NAME : CS_ERROR;
    case CS_EXT_NAME:
        if (is_tchar(c))
            return CS_EXT_NAME;
        if (c == '=')
            return CS_EXT_VAL_BWS;
        if (is_ows(c))
            return CS_EXT_NAME_AFTER;
        break;
    case CS_EXT_NAME_AFTER:
        return is_ows(c) ? CS_EXT_NAME_AFTER : c == '=' ? CS_EXT_VAL_BWS
                                              : c == ';' ? CS_EXT_NAME_BWS : CS_ERROR;
    case CS_EXT_VAL_BWS:
        return is_ows(c) ? CS_EXT_VAL_BWS : is_tchar(c) ? CS_EXT_VAL_TOKEN
                                          : c == '"' ? CS_EXT_QS : CS_ERROR;
    case CS_EXT_VAL_TOKEN:
        if (is_tchar(c))
            return CS_EXT_VAL_TOKEN;
        break;
    case CS_EXT_QS:
        return c == '"' ? CS_EXT_VAL_END : c == '\\' ? CS_EXT_QS_ESC
                                         : is_qdtext(c) ? CS_EXT_QS : CS_ERROR;
    case CS_EXT_QS_ESC:
        return (c == '\t' || (c >= 0x20 && c != 0x7f)) ? CS_EXT_QS : CS_ERROR;
    case CS_EXT_VAL_END:
        break;
    default:
        return CS_ERROR;
    }
    /* Common endings after a size, a name, a token value or a quote. */
    if (c == ';')
        return CS_EXT_NAME_BWS;
    if (is_ows(c))
        return b->state == CS_EXT_NAME ? CS_EXT_NAME_AFTER : CS_BWS;
    if (c == '\r')
        return CS_SIZE_LF;
    return CS_ERROR;
}

/* trailer_byte advances the trailer section by one byte. */
static int trailer_byte(int state, uint8_t c)
{
    switch (state) {
    case CS_TR_START:
        return c == '\r' ? CS_FINAL_LF : is_tchar(c) ? CS_TR_NAME : CS_ERROR;
    case CS_TR_NAME:
        return is_tchar(c) ? CS_TR_NAME : c == ':' ? CS_TR_VALUE : CS_ERROR;
    case CS_TR_VALUE:
        return c == '\r' ? CS_TR_LF : is_field_vchar(c) ? CS_TR_VALUE : CS_ERROR;
    case CS_TR_LF:
        return c == '\n' ? CS_TR_START : CS_ERROR;
    default:
        return CS_ERROR;
    }
}

/* chunked_feed runs the chunked decoder over |in|; see av__h1_body_feed. */
static ssize_t chunked_feed(av_h1_body *b, const uint8_t *in, size_t len,
                            const uint8_t **data, size_t *data_len)
{
    size_t i = 0;
    while (i < len && !b->done) {
        if (b->state == CS_DATA) {
            uint64_t left = (uint64_t)(len - i);
            size_t n = (size_t)(b->remaining < left ? b->remaining : left);
            *data = in + i;
            *data_len = n;
            b->remaining -= n;
            i += n;
            if (b->remaining == 0)
                b->state = CS_DATA_CR;
            return (ssize_t)i; /* one payload run per call */
        }
        uint8_t c = in[i++];
        int next;
        if (b->state <= CS_EXT_VAL_END) {
            if (++b->line_len > H1_MAX_CHUNK_LINE)
                next = CS_ERROR;
            else
                next = chunk_size_byte(b, c);
        } else if (b->state == CS_SIZE_LF) {
            next = CS_ERROR;
            if (c == '\n' && ++b->line_len <= H1_MAX_CHUNK_LINE) {
                b->line_len = 0;
                if (b->remaining == 0 && b->want_trailers) {
                    b->at_trailers = 1;
                    b->state = CS_TRAILERS;
                    return (ssize_t)i; /* av__h1_body_trailers takes over */
                } else if (b->remaining == 0) {
                    b->trailer_bytes = 0;
                    next = CS_TR_START;
                } else {
                    next = CS_DATA;
                }
            }
        } else if (b->state == CS_DATA_CR) {
            next = c == '\r' ? CS_DATA_LF : CS_ERROR;
        } else if (b->state == CS_DATA_LF) {
            next = c == '\n' ? CS_SIZE_FIRST : CS_ERROR;
        } else if (b->state >= CS_TR_START && b->state <= CS_FINAL_LF) {
            if (++b->trailer_bytes > H1_MAX_TRAILERS) {
                next = CS_ERROR;
            } else if (b->state == CS_FINAL_LF) {
                next = c == '\n' ? CS_FINAL_LF : CS_ERROR;
                if (next != CS_ERROR)
                    b->done = 1;
            } else {
                next = trailer_byte(b->state, c);
            }
        } else {
            next = CS_ERROR;
        }
        if (next == CS_ERROR) {
            b->state = CS_ERROR;
            *data = in;
            *data_len = 0;
            return AV_H1_ERR_SYNTAX;
        }
        b->state = next;
    }
    return (ssize_t)i;
}

/* av__h1_body_feed consumes body bytes; see av_h1.h. After an error every
 * later call fails too. */
ssize_t av__h1_body_feed(av_h1_body *b, const uint8_t *in, size_t len,
                         const uint8_t **data, size_t *data_len)
{
    *data = in;
    *data_len = 0;
    if (b->kind == AV_H1_BODY_CHUNKED && b->state == CS_ERROR)
        return AV_H1_ERR_SYNTAX;
    if (b->done || b->at_trailers || len == 0)
        return 0;
    switch (b->kind) {
    case AV_H1_BODY_UNTIL_CLOSE:
        *data_len = len;
        return (ssize_t)len;
    case AV_H1_BODY_LENGTH: {
        size_t n = (size_t)(b->remaining < (uint64_t)len ? b->remaining : (uint64_t)len);
        *data_len = n;
        b->remaining -= n;
        if (b->remaining == 0)
            b->done = 1;
        return (ssize_t)n;
    }
    case AV_H1_BODY_CHUNKED:
        return chunked_feed(b, in, len, data, data_len);
    default:
        return AV_H1_ERR_SYNTAX;
    }
}

/* av__h1_body_want_trailers: stop before the trailer section. */
void av__h1_body_want_trailers(av_h1_body *b)
{
    b->want_trailers = 1;
}

/* av__h1_body_trailers parses the trailer section; see av_h1.h. An error
 * is sticky, like the decoder's. */
ssize_t av__h1_body_trailers(av_h1_body *b, const uint8_t *buf, size_t len,
                             const av_h1_limits *lim, av_h1_scan *scan,
                             av_h1_field *fields, size_t *nfields)
{
    *nfields = 0;
    if (!b->at_trailers || b->done)
        return AV_H1_ERR_SYNTAX;
    if (len == 0)
        return AV_H1_INCOMPLETE;
    size_t max_head, max_fields;
    limits_get(lim, &max_head, &max_fields);
    ssize_t hlen;
    if (buf[0] == '\r') {
        /* no trailer fields: just the final CRLF */
        if (len < 2)
            return AV_H1_INCOMPLETE;
        hlen = buf[1] == '\n' ? 2 : AV_H1_ERR_SYNTAX;
    } else {
        hlen = scan_head(buf, len, max_head, scan);
        if (hlen > 0) {
            int rc = parse_fields(buf, buf + hlen - 2, max_fields, fields, nfields);
            if (rc)
                hlen = rc;
        }
    }
    if (hlen < 0) {
        *nfields = 0;
        b->at_trailers = 0;
        b->state = CS_ERROR;
        return hlen;
    }
    if (hlen > 0) {
        b->at_trailers = 0;
        b->done = 1;
    }
    return hlen;
}

/* av__h1_trailer_allowed: see av_h1.h. */
int av__h1_trailer_allowed(const av_h1_field *f)
{
    static const char *const refused[] = {
        "content-length", "transfer-encoding", "trailer", "content-encoding", "content-type",
        "content-range", "host", "connection", "keep-alive", "proxy-connection", "te",
        "upgrade", "authorization", "proxy-authorization", "www-authenticate",
        "proxy-authenticate", "cookie", "set-cookie", "expect", "max-forwards", "range",
        "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range",
        "cache-control", "pragma", "age", "date", "expires", "location", "retry-after",
        "vary", "http2-settings",
    };
    if (f->name_len == 0 || f->name[0] == ':')
        return 0;
    if (f->name_len >= 13 && ieq_n(f->name, 13, "x-agentvault-", 13))
        return 0;
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (av__h1_name_eq(f, refused[i]))
            return 0;
    return 1;
}

/* av__h1_te_trailers: does a TE field list "trailers"? */
int av__h1_te_trailers(const av_h1_field *fields, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!av__h1_name_eq(&fields[i], "te"))
            continue;
        list_iter it;
        const char *e;
        size_t el;
        list_init(&it, fields[i].value, fields[i].value_len);
        while (list_next(&it, &e, &el))
            if (ieq(e, el, "trailers"))
                return 1;
    }
    return 0;
}

/* ---- field lists ------------------------------------------------------- */

/* av__h1_fields_free wipes and frees a copied field list. */
void av__h1_fields_free(av_h1_fields *l)
{
    if (l->f) {
        av__wipe(l->f, l->size);
        av__free(l->f);
    }
    l->f = NULL;
    l->n = 0;
    l->size = 0;
}

/* av__h1_fields_set copies src[0..n) (entries, then the bytes they view)
 * into one allocation. */
int av__h1_fields_set(av_h1_fields *l, const av_h1_field *src, size_t n)
{
    size_t size = n * sizeof(av_h1_field);
    for (size_t i = 0; i < n; i++)
        size += src[i].name_len + src[i].value_len;
    av_h1_field *f = NULL;
    if (n) {
        f = av__malloc(size);
        if (!f)
            return AV_ERR_NOMEM;
        char *text = (char *)(f + n);
        for (size_t i = 0; i < n; i++) {
            memcpy(text, src[i].name, src[i].name_len);
            f[i].name = text;
            f[i].name_len = src[i].name_len;
            text += src[i].name_len;
            if (src[i].value_len)
                memcpy(text, src[i].value, src[i].value_len);
            f[i].value = text;
            f[i].value_len = src[i].value_len;
            text += src[i].value_len;
        }
    }
    av__h1_fields_free(l);
    l->f = f;
    l->n = n;
    l->size = n ? size : 0;
    return AV_OK;
}

/* ---- serializer -------------------------------------------------------- */

typedef struct h1_piece {
    const void *p;
    size_t n;
} h1_piece;

/* put_pieces appends all pieces or nothing. */
static int put_pieces(av_buf *out, const h1_piece *pc, size_t npc)
{
    size_t total = 0;
    for (size_t i = 0; i < npc; i++) {
        if (pc[i].n > SIZE_MAX - total)
            return AV_ERR_LIMIT;
        total += pc[i].n;
    }
    if (total > av__buf_room(out))
        return AV_ERR_LIMIT;
    int err = AV_ERR_NOMEM;
    uint8_t *dst = av__buf_reserve(out, total, &err);
    if (!dst)
        return err;
    for (size_t i = 0; i < npc; i++) {
        if (pc[i].n)
            memcpy(dst, pc[i].p, pc[i].n);
        dst += pc[i].n;
    }
    av__buf_commit(out, total);
    return AV_OK;
}

/* valid_value reports whether (p, n) contains only HTAB/SP/VCHAR/obs-text. */
static int valid_value(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_field_vchar((uint8_t)p[i]))
            return 0;
    return 1;
}

/* av__h1_write_request_line appends "METHOD SP TARGET SP HTTP/1.1 CRLF".
 * Returns AV_ERR_INVALID for a non-token method or a target with bytes
 * outside 0x21-0x7e, AV_ERR_LIMIT or AV_ERR_NOMEM. */
int av__h1_write_request_line(av_buf *out, const char *method, size_t method_len,
                              const char *target, size_t target_len)
{
    if (!is_token(method, method_len) || target_len == 0)
        return AV_ERR_INVALID;
    for (size_t i = 0; i < target_len; i++) {
        uint8_t c = (uint8_t)target[i];
        if (c < 0x21 || c > 0x7e)
            return AV_ERR_INVALID;
    }
    h1_piece pc[] = {{method, method_len}, {" ", 1}, {target, target_len}, {" HTTP/1.1\r\n", 11}};
    return put_pieces(out, pc, 4);
}

/* av__h1_write_status_line appends "HTTP/1.1 NNN reason CRLF" (|reason|
 * may be NULL). Returns AV_ERR_INVALID for a status outside 100..999 or a
 * reason with control bytes, AV_ERR_LIMIT or AV_ERR_NOMEM. */
int av__h1_write_status_line(av_buf *out, int status, const char *reason)
{
    if (status < 100 || status > 999)
        return AV_ERR_INVALID;
    if (!reason)
        reason = "";
    size_t rl = strlen(reason);
    if (!valid_value(reason, rl))
        return AV_ERR_INVALID;
    char line[13];
    memcpy(line, "HTTP/1.1 ", 9);
    line[9] = (char)('0' + status / 100);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    line[12] = ' ';
    h1_piece pc[] = {{line, 13}, {reason, rl}, {"\r\n", 2}};
    return put_pieces(out, pc, 3);
}

/* av__h1_write_field appends "name: value CRLF". Returns AV_ERR_INVALID for
 * a non-token name or a value with CR, LF, NUL or other control bytes,
 * AV_ERR_LIMIT or AV_ERR_NOMEM. */
int av__h1_write_field(av_buf *out, const char *name, size_t name_len,
                       const char *value, size_t value_len)
{
    if (!is_token(name, name_len) || !valid_value(value, value_len))
        return AV_ERR_INVALID;
    h1_piece pc[] = {{name, name_len}, {": ", 2}, {value, value_len}, {"\r\n", 2}};
    return put_pieces(out, pc, 4);
}

/* av__h1_write_field_str is av__h1_write_field for C strings. */
int av__h1_write_field_str(av_buf *out, const char *name, const char *value)
{
    return av__h1_write_field(out, name, strlen(name), value, strlen(value));
}

/* av__h1_write_end appends the CRLF that ends a head. */
int av__h1_write_end(av_buf *out)
{
    return av__buf_append(out, "\r\n", 2);
}

/* av__h1_write_chunk_header appends "%zx CRLF". A zero size would end the
 * body, so it is AV_ERR_INVALID (use av__h1_write_last_chunk). */
int av__h1_write_chunk_header(av_buf *out, size_t size)
{
    if (size == 0)
        return AV_ERR_INVALID;
    char line[24];
    int n = snprintf(line, sizeof(line), "%zx\r\n", size);
    return av__buf_append(out, line, (size_t)n);
}

/* av__h1_write_chunk_end appends the CRLF after chunk data. */
int av__h1_write_chunk_end(av_buf *out)
{
    return av__buf_append(out, "\r\n", 2);
}

/* av__h1_write_last_chunk appends "0 CRLF CRLF" (no trailers). */
int av__h1_write_last_chunk(av_buf *out)
{
    return av__buf_append(out, "0\r\n\r\n", 5);
}

/* av__h1_write_last_chunk_trailers appends "0 CRLF", the trailer fields
 * and the final CRLF, all or nothing. */
int av__h1_write_last_chunk_trailers(av_buf *out, const av_h1_field *f, size_t n)
{
    size_t mark = out->len;
    int rc = av__buf_append(out, "0\r\n", 3);
    for (size_t i = 0; i < n && rc == AV_OK; i++)
        rc = av__h1_write_field(out, f[i].name, f[i].name_len, f[i].value, f[i].value_len);
    if (rc == AV_OK)
        rc = av__buf_append(out, "\r\n", 2);
    if (rc != AV_OK)
        out->len = mark;
    return rc;
}

/* av__h1_reason returns the standard reason phrase for |status| or "". */
const char *av__h1_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 511: return "Network Authentication Required";
    default: return "";
    }
}
