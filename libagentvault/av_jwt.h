/* av_jwt.h - signed JWTs for minted credentials: Google service accounts
 * (secret = gcp:service_account) and GitHub Apps (secret = github_app:):
 * the pure parts (av_mint.c does the I/O).
 *
 *  - av__jwt_sign builds header.claims.signature (RFC 7515 compact form,
 *    base64url without padding) with "alg" RS256 or ES256 from the key.
 *  - av__gcp_key_parse reads a service-account key file (JSON): type
 *    "service_account", client_email, private_key (PEM), private_key_id
 *    (the JWT's "kid"), token_uri. Strict and bounded (AV_GCP_KEY_MAX).
 *  - av__gcp_claims / av__github_claims write the claims (RFC 7523 3; a
 *    GitHub App JWT: iat 60 s back, exp 9 min ahead, so a clock up to a
 *    minute off either way still mints).
 *  - av__gcp_parse_id_token reads {"id_token": JWT} (target_audience):
 *    no expires_in, so the lifetime is the JWT's own "exp" claim.
 *  - av__github_parse_token reads GitHub's 201 answer {"token",
 *    "expires_at": "YYYY-MM-DDTHH:MM:SSZ"}; the token is any length of
 *    visible ASCII (stateless ghs_ tokens are not 40 characters).
 *
 * Reasons never contain a key, a JWT or a token.
 */
#ifndef AV_JWT_H
#define AV_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "av_buf.h"
#include "av_crypto.h"
#include "av_oauth.h"
#include "av_secret.h"

#define AV_GCP_KEY_MAX (64 * 1024)  /* a service-account key file */
#define AV_JWT_CLAIMS_MAX (8 * 1024) /* the claims we sign */
#define AV_GCP_SCOPE_DEFAULT "https://www.googleapis.com/auth/cloud-platform"
#define AV_GCP_TOKEN_URI_DEFAULT "https://oauth2.googleapis.com/token"
#define AV_GITHUB_API_DEFAULT "https://api.github.com"

/* av__jwt_sign signs |claims| (a JSON object) with |key|; |kid| (NULL:
 * none) goes into the header. A new secret in *out (the JWT is a
 * credential while it lives). AV_OK, AV_ERR_LIMIT, AV_ERR_TLS, AV_ERR_NOMEM. */
int av__jwt_sign(const av_pkey *key, const char *kid, const char *claims, size_t claims_len, av_secret **out);

typedef struct av_gcp_key {
    char *client_email;
    char *private_key_id; /* NULL: none (no "kid") */
    char *token_uri;      /* NULL: none */
    av_pkey *key;
} av_gcp_key;

/* av__gcp_key_parse parses a key file's |len| bytes. AV_OK, AV_ERR_PARSE
 * with a reason, AV_ERR_NOMEM. Free with av__gcp_key_clear (also after an
 * error). */
int av__gcp_key_parse(const uint8_t *p, size_t len, av_gcp_key *out, char *why, size_t why_len);
void av__gcp_key_clear(av_gcp_key *k);

/* av__gcp_claims writes the claims of a JWT-bearer grant for |k| into
 * |out|: iss, aud (|aud|), iat (|now|), exp (|now| + 3600), and either
 * "scope" (|scope|, space-separated) or "target_audience". AV_OK,
 * AV_ERR_LIMIT, AV_ERR_NOMEM. */
int av__gcp_claims(const av_gcp_key *k, const char *scope, const char *target_audience, const char *aud,
                   long long now, av_buf *out);

/* av__github_claims writes an App JWT's claims: iat |now| - 60, exp |now|
 * + 540, iss |app| (the App's ID or client ID). */
int av__github_claims(const char *app, long long now, av_buf *out);

/* av__github_body writes the installation-token request body: {} or
 * {"repositories":[...],"permissions":{...}} from the configuration's
 * comma lists (|repos| "a,b"; |perms| "contents:read,issues:write"; NULL:
 * none). */
int av__github_body(const char *repos, const char *perms, av_buf *out);

/* av__gcp_parse_id_token parses {"id_token": JWT} (or an error answer:
 * out->error) at Unix time |now|: out->access_token is the ID token,
 * out->expires_in its "exp" claim minus |now|. AV_OK or AV_ERR_PARSE
 * (also for a token already expired). */
int av__gcp_parse_id_token(const uint8_t *p, size_t len, long long now, av_oauth_token *out, char *why,
                           size_t why_len);

/* av__github_parse_token parses GitHub's answer at Unix time |now|:
 * out->access_token is "token", out->expires_in "expires_at" minus |now|
 * (-1 without it). AV_OK or AV_ERR_PARSE. */
int av__github_parse_token(const uint8_t *p, size_t len, long long now, av_oauth_token *out, char *why,
                           size_t why_len);

/* av__jwt_claim_exp reads the "exp" claim of a compact JWT without
 * checking its signature (the token endpoint's own answer). AV_OK or
 * AV_ERR_PARSE. */
int av__jwt_claim_exp(const char *jwt, size_t len, long long *exp);

/* av__iso8601_utc parses "YYYY-MM-DDTHH:MM:SSZ" (optionally with
 * fractional seconds) into Unix time. AV_OK or AV_ERR_PARSE. */
int av__iso8601_utc(const char *s, size_t n, long long *out);

#endif
