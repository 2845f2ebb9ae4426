/* av_h1.h - strict, incremental, zero-copy HTTP/1.1 parser and serializer.
 *
 * I/O-free. The caller accumulates bytes in its own buffer and calls the
 * head parsers with everything it has; they either report "need more"
 * (remembering how far they scanned, so byte-by-byte feeding is linear) or
 * return a parsed head whose strings are (pointer, length) views into the
 * caller's buffer. The views stay valid until the caller consumes or moves
 * those bytes.
 *
 * Strictness (SECURITY.md 6, 8, 9): the parser rejects and never repairs.
 * Rejected: bare LF anywhere in the head, obs-fold, whitespace before ':',
 * CR/LF/NUL or other control bytes in names or values, non-token bytes in
 * names or methods, malformed request lines and status lines, HTTP versions
 * other than 1.0/1.1, Content-Length together with Transfer-Encoding,
 * duplicate or malformed Content-Length (even identical duplicates), any
 * Transfer-Encoding other than exactly "chunked", Connection naming host,
 * content-length or transfer-encoding, more than one Host, more than
 * |max_fields| fields or a head longer than |max_head| bytes (431 for
 * requests).
 */
#ifndef AV_H1_H
#define AV_H1_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

#include "av_buf.h"

#define AV_H1_MAX_FIELDS_CAP 128 /* hard array size; limits may be lower */

/* Head-parser results (besides a positive byte count). */
enum {
    AV_H1_INCOMPLETE = 0,   /* need more bytes */
    AV_H1_ERR_SYNTAX = -1,  /* malformed: answer 400 and close */
    AV_H1_ERR_TOO_LARGE = -2, /* head > max_head or fields > max_fields: 431 */
    AV_H1_ERR_VERSION = -3, /* unsupported HTTP version: 505 */
    AV_H1_ERR_FRAMING = -4, /* CL/TE conflict, bad CL, bad TE: 400 */
    AV_H1_ERR_CONNECTION = -5 /* Connection names a forbidden field: 400 */
};

typedef struct av_h1_field {
    const char *name;
    size_t name_len;
    const char *value; /* leading/trailing OWS removed */
    size_t value_len;
} av_h1_field;

/* Body framing derived from the head. */
enum {
    AV_H1_BODY_NONE = 0,
    AV_H1_BODY_LENGTH = 1,
    AV_H1_BODY_CHUNKED = 2,
    AV_H1_BODY_UNTIL_CLOSE = 3 /* responses only */
};

/* Flags derived from the head. */
enum {
    AV_H1_F_CLOSE = 1u << 0,           /* Connection: close, or HTTP/1.0 without keep-alive */
    AV_H1_F_EXPECT_CONTINUE = 1u << 1, /* Expect: 100-continue (case-insensitive) */
    AV_H1_F_UPGRADE = 1u << 2,         /* an Upgrade field is present */
    AV_H1_F_UPGRADE_WEBSOCKET = 1u << 3, /* Upgrade: websocket and Connection: upgrade */
    AV_H1_F_UPGRADE_H2C = 1u << 4,     /* Upgrade lists h2c */
    AV_H1_F_HAS_HOST = 1u << 5,        /* exactly one Host field present */
    AV_H1_F_EXPECT_OTHER = 1u << 6     /* Expect with a value other than 100-continue: 417 */
};

typedef struct av_h1_limits {
    size_t max_head;   /* bytes of request/status line + fields + CRLFs; default 65536 */
    size_t max_fields; /* default 100, at most AV_H1_MAX_FIELDS_CAP */
} av_h1_limits;

/* Scan state so repeated calls with a growing buffer stay linear. Zero it
 * (or call av__h1_scan_reset) before parsing each new head. */
typedef struct av_h1_scan {
    size_t scanned;
} av_h1_scan;

static inline void av__h1_scan_reset(av_h1_scan *s) { s->scanned = 0; }

typedef struct av_h1_request {
    const char *method;
    size_t method_len;
    const char *target; /* request-target as sent (validated for bytes only) */
    size_t target_len;
    int minor_version;  /* 0 or 1 */
    av_h1_field fields[AV_H1_MAX_FIELDS_CAP];
    size_t nfields;
    int body;                /* AV_H1_BODY_NONE, _LENGTH or _CHUNKED */
    uint64_t content_length; /* valid when body == AV_H1_BODY_LENGTH */
    unsigned flags;          /* AV_H1_F_* */
    const av_h1_field *host; /* the Host field, or NULL */
} av_h1_request;

typedef struct av_h1_response {
    int status;        /* 100..999 */
    const char *reason;
    size_t reason_len;
    int minor_version;
    av_h1_field fields[AV_H1_MAX_FIELDS_CAP];
    size_t nfields;
    int body;                /* any AV_H1_BODY_* */
    uint64_t content_length;
    unsigned flags;
} av_h1_response;

/* av__h1_parse_request parses a request head from buf[0..len).
 * Returns the head length in bytes (> 0) when complete, AV_H1_INCOMPLETE,
 * or a negative AV_H1_ERR_*. A request with neither Content-Length nor
 * Transfer-Encoding has no body. */
ssize_t av__h1_parse_request(const uint8_t *buf, size_t len,
                             const av_h1_limits *lim, av_h1_scan *scan,
                             av_h1_request *req);

/* av__h1_parse_response parses a status line and fields. Framing follows
 * RFC 9112 6.3: |request_was_head| or a 1xx/204/304 status means no body;
 * |request_was_connect| with 2xx means no body (tunnel). Otherwise chunked,
 * Content-Length, or until close. */
ssize_t av__h1_parse_response(const uint8_t *buf, size_t len,
                              const av_h1_limits *lim, av_h1_scan *scan,
                              int request_was_head, int request_was_connect,
                              av_h1_response *resp);

/* av__h1_field_eq compares a field name case-insensitively with |name|. */
/* av__h1_ieq_n: case-insensitive comparison of two byte strings of length n. */
int av__h1_ieq_n(const char *a, const char *b, size_t n);
/* av__h1_name_eq compares a field name case-insensitively with |name|.
 * Inline so that strlen of a literal folds to a constant and names of
 * another length cost one comparison. */
static inline int av__h1_name_eq(const av_h1_field *f, const char *name)
{
    size_t n = strlen(name);
    return f->name_len == n && av__h1_ieq_n(f->name, name, n);
}
/* av__h1_find returns the first field named |name| (case-insensitive). */
const av_h1_field *av__h1_find(const av_h1_field *fields, size_t n, const char *name);

/* av__h1_is_hop_by_hop reports whether a field must not be forwarded:
 * Connection, Keep-Alive, Proxy-Connection, Proxy-Authorization,
 * Proxy-Authenticate, TE, Trailer, Transfer-Encoding, Upgrade, and any
 * field named in a Connection field of |fields|. (Content-Length is not
 * hop-by-hop; the serializer re-derives framing fields itself.) */
int av__h1_is_hop_by_hop(const av_h1_field *f, const av_h1_field *fields, size_t n);

/* Body decoding. One decoder per message body. */
typedef struct av_h1_body {
    int kind;            /* AV_H1_BODY_* */
    uint64_t remaining;  /* bytes left in the current chunk or body */
    int state;           /* internal chunked-parser state */
    size_t line_len;     /* bytes in the current chunk-size/trailer line */
    size_t trailer_bytes;
    int done;
    int want_trailers;   /* av__h1_body_want_trailers was called */
    int at_trailers;     /* chunked: the trailer section is next (see below) */
} av_h1_body;

/* Limits on chunked syntax: a chunk-size line (with extensions) may be at
 * most 4096 bytes, trailers at most 16 KiB in total; chunk sizes beyond
 * 2^62 are errors. */
void av__h1_body_init(av_h1_body *b, int kind, uint64_t content_length);

/* av__h1_body_feed consumes bytes of |in| and returns how many (>= 0), or
 * AV_H1_ERR_SYNTAX. When it returns, *data and *data_len give at most one run
 * of body payload found in the consumed bytes (a view into |in|; length 0
 * if none), and b->done is set once the body (including the chunked
 * terminator and trailers, which are validated and discarded) is complete.
 * It stops consuming right after the body ends. For UNTIL_CLOSE, all input
 * is payload; the caller sets done at EOF. Call repeatedly until it
 * consumes nothing.
 *
 * After av__h1_body_want_trailers, a chunked body stops instead right after
 * the last-chunk line ("0\r\n"): b->at_trailers is set, av__h1_body_feed
 * consumes nothing more, and the caller parses the trailer section with
 * av__h1_body_trailers. */
ssize_t av__h1_body_feed(av_h1_body *b, const uint8_t *in, size_t len,
                         const uint8_t **data, size_t *data_len);

/* av__h1_body_want_trailers asks for the trailer section of a chunked body
 * (call after av__h1_body_init). */
void av__h1_body_want_trailers(av_h1_body *b);

/* av__h1_body_trailers parses the trailer section at the start of
 * buf[0..len) once b->at_trailers is set: zero or more field lines and the
 * final CRLF, checked like the fields of a head (no obs-fold, no
 * whitespace before ':', no control bytes, token names) within |lim|
 * (max_head bytes including the final CRLF, max_fields fields). Returns
 * the section's length (> 0; the caller consumes it) and sets b->done, with
 * fields[0..*nfields) views into |buf|; or AV_H1_INCOMPLETE (|scan| keeps
 * its place), AV_H1_ERR_SYNTAX or AV_H1_ERR_TOO_LARGE. |fields| has room
 * for AV_H1_MAX_FIELDS_CAP entries. */
ssize_t av__h1_body_trailers(av_h1_body *b, const uint8_t *buf, size_t len,
                             const av_h1_limits *lim, av_h1_scan *scan,
                             av_h1_field *fields, size_t *nfields);

/* av__h1_trailer_allowed reports whether a trailer field may be forwarded.
 * Refused (RFC 9110 6.5.1, RFC 9113 8.1): pseudo-headers, and fields whose
 * meaning is needed before the content or that belong to a hop -- framing
 * (Content-Length, Transfer-Encoding, Trailer, Content-Encoding,
 * Content-Type, Content-Range), routing (Host), connection-specific fields
 * (Connection, Keep-Alive, Proxy-Connection, TE, Upgrade), authentication
 * and cookies (Authorization, Proxy-Authorization, WWW-Authenticate,
 * Proxy-Authenticate, Cookie, Set-Cookie), request modifiers (Expect,
 * Max-Forwards, Range, If-*, Cache-Control, Pragma), response controls
 * (Age, Date, Expires, Location, Retry-After, Vary), and ours
 * (X-Agentvault-*). */
int av__h1_trailer_allowed(const av_h1_field *f);

/* av__h1_te_trailers reports whether a TE field of |fields| lists
 * "trailers" (the agent accepts trailers). */
int av__h1_te_trailers(const av_h1_field *fields, size_t n);

/* A field list copied into one allocation, to keep trailers after the
 * buffer they were parsed from moves on. Zero-initialise; free with
 * av__h1_fields_free (wiped: a request trailer may carry anything). */
typedef struct av_h1_fields {
    av_h1_field *f;
    size_t n;
    size_t size;  /* bytes allocated */
} av_h1_fields;

/* av__h1_fields_set replaces the contents of |l| with copies of
 * src[0..n). Returns 0 or AV_ERR_NOMEM. */
int av__h1_fields_set(av_h1_fields *l, const av_h1_field *src, size_t n);
void av__h1_fields_free(av_h1_fields *l);

/* Serializer. Each returns 0, AV_ERR_LIMIT or AV_ERR_NOMEM (from av_buf). */
int av__h1_write_request_line(av_buf *out, const char *method, size_t method_len,
                              const char *target, size_t target_len);
int av__h1_write_status_line(av_buf *out, int status, const char *reason);
int av__h1_write_field(av_buf *out, const char *name, size_t name_len,
                       const char *value, size_t value_len);
int av__h1_write_field_str(av_buf *out, const char *name, const char *value);
int av__h1_write_end(av_buf *out);                       /* "\r\n" */
int av__h1_write_chunk_header(av_buf *out, size_t size); /* "%zx\r\n" */
int av__h1_write_chunk_end(av_buf *out);                 /* "\r\n" after chunk data */
int av__h1_write_last_chunk(av_buf *out);                /* "0\r\n\r\n" */
/* "0\r\n", the fields, "\r\n": the end of a chunked body with a trailer
 * section; AV_ERR_INVALID for a field av__h1_write_field refuses (nothing
 * is written then). */
int av__h1_write_last_chunk_trailers(av_buf *out, const av_h1_field *f, size_t n);

/* av__h1_reason returns the standard reason phrase for |status| or "". */
const char *av__h1_reason(int status);

#endif
