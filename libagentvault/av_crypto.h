/* av_crypto.h - symmetric primitives for the vault: AES-256-GCM, SHA-256,
 * HMAC-SHA-256 and random bytes; private keys and JWS signatures (RS256,
 * ES256) for minted credentials (av_jwt.h).
 *
 * With av_tls.c and av_ca.c this is the only code that includes TLS-library
 * headers; the BoringSSL / OpenSSL 3 differences stay in av_crypto.c.
 */
#ifndef AV_CRYPTO_H
#define AV_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#define AV_AEAD_KEY_LEN 32
#define AV_AEAD_NONCE_LEN 12
#define AV_AEAD_TAG_LEN 16
#define AV_SHA256_LEN 32

/* av__crypto_random fills |buf| from the library's CSPRNG. Returns 0 or
 * AV_ERR_TLS. */
int av__crypto_random(void *buf, size_t len);

/* av__aead_seal encrypts |len| bytes of |in| into |out| (same length; may
 * equal |in|) with AES-256-GCM, authenticating |aad| too, and writes the
 * 16-byte tag. |len| may be 0 (a GMAC over |aad|). Returns 0, AV_ERR_LIMIT
 * (a length over INT_MAX) or AV_ERR_TLS. */
int av__aead_seal(const uint8_t key[AV_AEAD_KEY_LEN], const uint8_t nonce[AV_AEAD_NONCE_LEN],
                  const void *aad, size_t aad_len, const void *in, size_t len, uint8_t *out,
                  uint8_t tag[AV_AEAD_TAG_LEN]);

/* av__aead_open checks |tag| and decrypts |len| bytes of |in| into |out|.
 * On any failure |out| holds no plaintext (it is zeroed). Returns 0,
 * AV_ERR_AUTH (tag mismatch: wrong key or altered data), AV_ERR_LIMIT or
 * AV_ERR_TLS. */
int av__aead_open(const uint8_t key[AV_AEAD_KEY_LEN], const uint8_t nonce[AV_AEAD_NONCE_LEN],
                  const void *aad, size_t aad_len, const void *in, size_t len, uint8_t *out,
                  const uint8_t tag[AV_AEAD_TAG_LEN]);

/* av__crypto_sha256 hashes |len| bytes. Returns 0 or AV_ERR_TLS. */
int av__crypto_sha256(const void *data, size_t len, uint8_t out[AV_SHA256_LEN]);

/* av__crypto_hmac_sha256 is HMAC-SHA-256 of |len| bytes under |key|
 * (SigV4 signing). Returns 0 or AV_ERR_TLS. */
int av__crypto_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[AV_SHA256_LEN]);

/* A private key that signs JWTs: RSA (RS256, 2048 to 8192 bits) or ECDSA
 * P-256 (ES256). */
typedef struct av_pkey av_pkey;
enum { AV_PKEY_RSA = 1, AV_PKEY_EC_P256 = 2 };
#define AV_PEM_MAX (64 * 1024) /* a PEM private key */
#define AV_JWS_SIG_MAX 1024   /* an RS256 signature of an 8192-bit key */

/* av__pkey_from_pem loads the first private key of |len| bytes of PEM:
 * PKCS#8 "PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY" or SEC1 "EC PRIVATE KEY"
 * (never an encrypted one: no passphrase is ever asked for). Returns AV_OK,
 * AV_ERR_PARSE with a reason in |why| (no PEM private key, a key of another
 * type, curve or size; never a byte of the key), AV_ERR_LIMIT (over
 * AV_PEM_MAX) or AV_ERR_NOMEM. */
int av__pkey_from_pem(const void *pem, size_t len, av_pkey **out, char *why, size_t why_len);

/* av__pkey_type is AV_PKEY_RSA or AV_PKEY_EC_P256. */
int av__pkey_type(const av_pkey *k);

/* av__pkey_free frees |k| (NULL: nothing). */
void av__pkey_free(av_pkey *k);

/* av__pkey_sign_jws signs |len| bytes with SHA-256 as a JWS does
 * (RFC 7518 3.3 RS256: PKCS#1 v1.5, deterministic; 3.4 ES256: the raw
 * 64-byte r||s, not DER) into |sig| (|cap| bytes). Returns AV_OK with
 * *sig_len set, AV_ERR_LIMIT (|cap| too small) or AV_ERR_TLS. */
int av__pkey_sign_jws(const av_pkey *k, const void *msg, size_t len, uint8_t *sig, size_t cap, size_t *sig_len);

#endif
