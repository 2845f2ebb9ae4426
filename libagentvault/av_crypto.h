/* av_crypto.h - symmetric primitives for the vault: AES-256-GCM, SHA-256,
 * HMAC-SHA-256 and random bytes.
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

#endif
