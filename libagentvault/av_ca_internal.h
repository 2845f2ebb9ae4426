/* av_ca_internal.h - leaf lookup for the TLS boundary (av_tls.c, tests).
 *
 * A leaf is an immutable, reference-counted certificate minted by the CA
 * for one host (or one host plus extra names), signed by the root, whose
 * private key is the CA's shared P-256 leaf key. The TLS library types are
 * named by their struct tags so that this header needs no <openssl/...>
 * include (both BoringSSL and OpenSSL 3 use these tags).
 */
#ifndef AV_CA_INTERNAL_H
#define AV_CA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "av_buf.h"
#include "av_ca.h"

struct x509_st;          /* X509 */
struct evp_pkey_st;      /* EVP_PKEY */
struct crypto_buffer_st; /* CRYPTO_BUFFER (BoringSSL) */

typedef struct av_ca_leaf av_ca_leaf;

/* av__ca_leaf_get returns (in *out, a new reference) the leaf covering
 * |host| (a DNS name or IP literal, validated and lower-cased by the
 * caller) and, when |extra_names| is not NULL, the names of that
 * NULL-terminated list too (SAN order: host, then extras; CN = host cut to
 * 64 characters). The leaf comes from the LRU when present and more than a
 * day from expiry; otherwise it is minted and cached. Thread-safe.
 * Returns AV_OK, AV_ERR_INVALID (empty or non-printable name, or names too
 * long for one certificate), AV_ERR_NOMEM or AV_ERR_CA (signing failed). */
int av__ca_leaf_get(av_ca *ca, const char *host, const char *const *extra_names,
                    av_ca_leaf **out);

/* av__ca_leaf_ref adds a reference; av__ca_leaf_free drops one (NULL-safe). */
av_ca_leaf *av__ca_leaf_ref(av_ca_leaf *leaf);
void av__ca_leaf_free(av_ca_leaf *leaf);

/* av__ca_leaf_der borrows the certificate's DER encoding. */
const uint8_t *av__ca_leaf_der(const av_ca_leaf *leaf, size_t *len);

/* av__ca_leaf_pem returns the certificate in PEM, allocated with
 * av__malloc (free with av__free); NULL on allocation failure. */
char *av__ca_leaf_pem(const av_ca_leaf *leaf);

/* av__ca_leaf_not_after returns the end of validity (Unix seconds). */
int64_t av__ca_leaf_not_after(const av_ca_leaf *leaf);

/* av__ca_leaf_key borrows the shared leaf private key (EVP_PKEY). The leaf
 * holds a reference, so it stays valid as long as the leaf does. */
struct evp_pkey_st *av__ca_leaf_key(const av_ca_leaf *leaf);

#if defined(AV_TLS_BORINGSSL)
/* av__ca_leaf_buffer borrows the certificate as a CRYPTO_BUFFER, for
 * SSL_set_chain_and_key (which takes its own reference). */
struct crypto_buffer_st *av__ca_leaf_buffer(const av_ca_leaf *leaf);
#else
/* av__ca_leaf_x509 borrows the parsed certificate, for SSL_use_certificate
 * (which takes its own reference). */
struct x509_st *av__ca_leaf_x509(const av_ca_leaf *leaf);
#endif

/* av__ca_set_time_skew makes the CA's clock run |seconds| ahead (tests:
 * expiry and re-minting). */
void av__ca_set_time_skew(av_ca *ca, int64_t seconds);

/* av__tls_server_new_leaf (in av_tls.c) is av__tls_server_new with the leaf
 * chosen by the caller: it presents |leaf| and accepts an SNI equal to
 * |host| or one of |extra_names|. av__tls_server_new is this function with
 * the leaf from av__ca_leaf_get(host, extra_names); tests use it to present
 * a certificate that does not cover the name a client expects. Returns
 * AV_OK, AV_ERR_INVALID or AV_ERR_NOMEM / AV_ERR_TLS. */
typedef struct av_tls av_tls;
typedef struct av_tls_server_ctx av_tls_server_ctx;
int av__tls_server_new_leaf(av_tls **out, av_tls_server_ctx *ctx, av_ca_leaf *leaf,
                            const char *host, const char *const *extra_names,
                            av_buf *cin, av_buf *cout);

#endif
