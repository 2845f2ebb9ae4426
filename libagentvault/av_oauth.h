/* av_oauth.h - OAuth 2.0 token requests and responses (RFC 6749): the
 * pure parts of minting (av_mint.c does the I/O).
 *
 *  - av__oauth_form_add appends "name=value" to an
 *    application/x-www-form-urlencoded body (Appendix B).
 *  - av__oauth_basic builds the client_secret_basic Authorization value:
 *    "Basic " base64(urlenc(client_id) ":" urlenc(client_secret)), the id
 *    and secret form-urlencoded first as RFC 6749 2.3.1 says.
 *  - av__oauth_parse_token parses a token endpoint's JSON answer (5.1 on
 *    success, 5.2 on error). Strict: one JSON object, at most
 *    AV_OAUTH_RESPONSE_MAX bytes, well-formed (nesting bounded), no
 *    duplicate member of the fields read. access_token must be visible
 *    ASCII (it goes into a header), token_type is not checked beyond
 *    being a string (servers send "Bearer", "bearer", "N_A"), expires_in
 *    is a non-negative integer as a number or a string.
 *
 * Reasons never contain a token; an error answer's "error" code is
 * reported (it is a short ASCII word by 5.2), its error_description is
 * not (servers put anything there).
 */
#ifndef AV_OAUTH_H
#define AV_OAUTH_H

#include <stddef.h>
#include <stdint.h>

#include "av_buf.h"
#include "av_secret.h"

#define AV_OAUTH_RESPONSE_MAX (64 * 1024) /* a token endpoint's body */
#define AV_OAUTH_TOKEN_MAX (16 * 1024)    /* an access or refresh token */
#define AV_OAUTH_ERROR_MAX 64             /* the "error" code kept for the reason */

typedef struct av_oauth_token {
    av_secret *access_token;  /* NULL when the answer is an error */
    av_secret *refresh_token; /* NULL: none in the answer */
    long long expires_in;     /* seconds; -1: absent */
    int bearer;               /* token_type is "Bearer" (any case) */
    int has_token_type;
    char error[AV_OAUTH_ERROR_MAX + 1]; /* "" unless the answer is an error (5.2) */
} av_oauth_token;

/* av__oauth_form_add appends "[&]name=value" (value form-urlencoded; '&'
 * when |b| is not empty). AV_OK, AV_ERR_LIMIT or AV_ERR_NOMEM. */
int av__oauth_form_add(av_buf *b, const char *name, const void *value, size_t n);

/* av__oauth_basic returns the Authorization value for client_secret_basic
 * (a new secret: it contains the client secret), or NULL (out of memory,
 * or the pair over AV_OAUTH_TOKEN_MAX). */
av_secret *av__oauth_basic(const char *client_id, const void *secret, size_t secret_len);

/* av__oauth_parse_token parses |len| bytes. AV_OK with *out filled (an
 * access token, or an error code in out->error); AV_ERR_PARSE with a
 * reason in |why| (not JSON, no access_token, token not usable, too
 * large). Free with av__oauth_token_clear (also after an error). */
int av__oauth_parse_token(const uint8_t *p, size_t len, av_oauth_token *out, char *why, size_t why_len);
void av__oauth_token_clear(av_oauth_token *t);

/* A generic strict reader for the small JSON objects of minted
 * credentials (service-account keys, GitHub's and Google's answers, JWT
 * claims): av__json_fields reads one JSON object of at most |max| bytes
 * (nesting bounded, well-formed, nothing after it) and fills the fields
 * named in |f|; other members are skipped, a named one twice is an error.
 * A field of type AV_JSON_STR must be a string of at most |f->max| decoded
 * bytes (stored NUL-terminated in f->str; a NUL inside is refused);
 * AV_JSON_INT a non-negative integer of at most 12 digits, as a number
 * (not a string). Returns AV_OK, AV_ERR_PARSE with a reason naming the
 * field (never its value), AV_ERR_NOMEM. Free with av__json_fields_clear
 * (which wipes the strings: they may be keys). */
enum { AV_JSON_STR = 1, AV_JSON_INT = 2 };
typedef struct av_json_field {
    const char *name;
    int type;   /* AV_JSON_STR or AV_JSON_INT */
    size_t max; /* AV_JSON_STR: the longest value taken */
    int seen;
    char *str;
    size_t len;
    long long num;
} av_json_field;

int av__json_fields(const uint8_t *p, size_t len, size_t max, av_json_field *f, size_t nf, char *why,
                    size_t why_len);
void av__json_fields_clear(av_json_field *f, size_t nf);

#endif
