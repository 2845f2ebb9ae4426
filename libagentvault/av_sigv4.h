/* av_sigv4.h - AWS Signature Version 4: reading the agent's Authorization
 * and computing a signature over a request as it will be sent.
 *
 * No I/O and no request state: the exchange (av_inject.c) decides which
 * fields are signed and where the result goes. Canonicalization follows
 * the SigV4 specification as botocore implements it (SigV4Auth,
 * S3SigV4Auth), except that the query is normalised (decoded and
 * re-encoded) rather than taken as sent.
 */
#ifndef AV_SIGV4_H
#define AV_SIGV4_H

#include <stddef.h>
#include <stdint.h>

#include "av_buf.h"
#include "av_h1.h"
#include "av_limits.h"

#define AV_SIGV4_NAME_MAX 63                        /* region and signing name in a scope */
#define AV_SIGV4_AKID_MAX 128                       /* access key id */
#define AV_SIGV4_HEX_LEN 64                         /* a SHA-256 or signature in hex */
#define AV_SIGV4_CANON_MAX (AV_HEAD_MAX * 3 + 4096) /* a canonical request */

/* What the agent's Authorization says. */
typedef struct av_sigv4_auth {
    char akid[AV_SIGV4_AKID_MAX + 1];
    char date[9]; /* yyyymmdd of the scope */
    char region[AV_SIGV4_NAME_MAX + 1];
    char service[AV_SIGV4_NAME_MAX + 1]; /* the signing name: s3, bedrock, ... */
    const char *signed_headers;          /* view into the parsed value */
    size_t signed_headers_len;
} av_sigv4_auth;

/* Results of av__sigv4_parse_auth besides AV_OK. */
enum {
    AV_SIGV4_NOT_SIGV4 = 1, /* another scheme (Bearer, AWS v2, ...) */
    AV_SIGV4_SIGV4A = 2     /* AWS4-ECDSA-P256-SHA256 */
};

/* av__sigv4_parse_auth reads an Authorization value
 * "AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request,
 * SignedHeaders=a;b, Signature=HEX" strictly. Returns AV_OK,
 * AV_SIGV4_NOT_SIGV4, AV_SIGV4_SIGV4A, or AV_ERR_PARSE with *why set. */
int av__sigv4_parse_auth(const char *v, size_t n, av_sigv4_auth *out, const char **why);

/* av__sigv4_list_has: whether the ';'-separated list |list| names |name|
 * (compared case-insensitively). */
int av__sigv4_list_has(const char *list, size_t list_len, const char *name, size_t name_len);

/* av__sigv4_query_is_presigned: whether a query carries query
 * authentication (X-Amz-Signature, X-Amz-Credential or X-Amz-Algorithm). */
int av__sigv4_query_is_presigned(const char *q, size_t n);

/* av__sigv4_canonical_uri appends the canonical URI of |path| (as sent,
 * percent-encoded): S3 (|s3|) as is; others with "." and ".." segments
 * and empty segments removed, then percent-encoded once more ('/' and
 * unreserved kept). Returns 0, AV_ERR_LIMIT or AV_ERR_NOMEM. */
int av__sigv4_canonical_uri(const char *path, size_t n, int s3, av_buf *out);

/* av__sigv4_canonical_query appends the canonical query of |q| (without
 * the '?'): each parameter decoded and re-encoded (unreserved kept, upper
 * hex, space as %20), sorted by name then value, "name=" for empty
 * values; empty parameters dropped. Returns 0, AV_ERR_PARSE (a bad
 * percent escape), AV_ERR_LIMIT or AV_ERR_NOMEM. */
int av__sigv4_canonical_query(const char *q, size_t n, av_buf *out);

/* A request to sign. |fields| are exactly the fields to sign (any case,
 * repeated names allowed, values as sent); |target| is the origin-form
 * target as sent. */
typedef struct av_sigv4_req {
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    const av_h1_field *fields;
    size_t nfields;
    const char *payload_hash; /* 64 hex or a marker (UNSIGNED-PAYLOAD, ...) */
    const char *amz_date;     /* yyyymmddThhmmssZ */
    const char *region;
    const char *service;
} av_sigv4_req;

/* av__sigv4_canonical_request writes the canonical request into |canon|
 * and the SignedHeaders list into |signed_headers| (a string). Returns 0,
 * AV_ERR_INVALID (a field name or value that cannot be signed),
 * AV_ERR_PARSE, AV_ERR_LIMIT or AV_ERR_NOMEM. */
int av__sigv4_canonical_request(const av_sigv4_req *r, av_buf *canon, av_buf *signed_headers);

/* av__sigv4_sign computes the signature (64 hex and a NUL in |sig|) and
 * the SignedHeaders list (a string in |signed_headers|) with the secret
 * access key |secret|. Returns what av__sigv4_canonical_request returns,
 * or AV_ERR_TLS. */
int av__sigv4_sign(const av_sigv4_req *r, const uint8_t *secret, size_t secret_len, av_buf *signed_headers,
                   char sig[AV_SIGV4_HEX_LEN + 1]);

/* av__sigv4_sign_key: av__sigv4_sign, also giving the signing key
 * (kSigning) in |key| for chunk signatures (the caller wipes it). */
int av__sigv4_sign_key(const av_sigv4_req *r, const uint8_t *secret, size_t secret_len, av_buf *signed_headers,
                       char sig[AV_SIGV4_HEX_LEN + 1], uint8_t key[32]);

/* av__sigv4_resign_chunks rewrites, in place, every chunk-signature of a
 * complete STREAMING-AWS4-HMAC-SHA256-PAYLOAD body (aws-chunked:
 * "HEX;chunk-signature=SIG\r\nDATA\r\n" ..., a last chunk of size 0,
 * "\r\n"), each the HMAC under |key| of "AWS4-HMAC-SHA256-PAYLOAD", the
 * date, the scope, the previous signature (first: |seed|, the head's),
 * SHA-256("") and SHA-256(DATA). Lengths do not change. Returns 0,
 * AV_ERR_PARSE (not exactly such a body), AV_ERR_TLS. */
int av__sigv4_resign_chunks(uint8_t *body, size_t n, const uint8_t key[32], const char *amz_date, const char *region,
                            const char *service, const char seed[AV_SIGV4_HEX_LEN + 1]);

/* av__sigv4_hex_sha256 writes the hex SHA-256 of |n| bytes (and a NUL).
 * Returns 0 or AV_ERR_TLS. */
int av__sigv4_hex_sha256(const void *data, size_t n, char hex[AV_SIGV4_HEX_LEN + 1]);

/* av__sigv4_is_hex64: whether |s| is 64 lower-case hex digits. */
int av__sigv4_is_hex64(const char *s, size_t n);

#endif
