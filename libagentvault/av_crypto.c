/* av_crypto.c - AES-256-GCM, SHA-256 and random bytes on BoringSSL or
 * OpenSSL 3.
 *
 * BoringSSL: the EVP_AEAD interface (EVP_aead_aes_256_gcm). OpenSSL 3:
 * EVP_CIPHER with EVP_aes_256_gcm. Both: EVP_Digest and RAND_bytes.
 */
#include "av_crypto.h"

#include <limits.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#if defined(AV_TLS_BORINGSSL)
#include <openssl/aead.h>
#endif

#include <agentvault/agentvault.h>

#include "av_mem.h"

int av__crypto_random(void *buf, size_t len)
{
    if (len == 0)
        return AV_OK;
    if (len > INT_MAX || RAND_bytes(buf, (int)len) != 1) {
        ERR_clear_error();
        return AV_ERR_TLS;
    }
    return AV_OK;
}

int av__crypto_sha256(const void *data, size_t len, uint8_t out[AV_SHA256_LEN])
{
    unsigned int n = 0;
    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != AV_SHA256_LEN) {
        ERR_clear_error();
        return AV_ERR_TLS;
    }
    return AV_OK;
}

int av__crypto_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len, uint8_t out[AV_SHA256_LEN])
{
    unsigned int n = 0;
    static const uint8_t empty = 0;
    if (key_len > INT_MAX ||
        !HMAC(EVP_sha256(), key_len ? key : &empty, (int)key_len, len ? data : &empty, len, out, &n) ||
        n != AV_SHA256_LEN) {
        ERR_clear_error();
        return AV_ERR_TLS;
    }
    return AV_OK;
}

#if defined(AV_TLS_BORINGSSL)

int av__aead_seal(const uint8_t key[AV_AEAD_KEY_LEN], const uint8_t nonce[AV_AEAD_NONCE_LEN],
                  const void *aad, size_t aad_len, const void *in, size_t len, uint8_t *out,
                  uint8_t tag[AV_AEAD_TAG_LEN])
{
    EVP_AEAD_CTX ctx;
    uint8_t dummy = 0;
    size_t tag_len = 0;
    EVP_AEAD_CTX_zero(&ctx);
    if (!EVP_AEAD_CTX_init(&ctx, EVP_aead_aes_256_gcm(), key, AV_AEAD_KEY_LEN, AV_AEAD_TAG_LEN,
                           NULL)) {
        ERR_clear_error();
        return AV_ERR_TLS;
    }
    int ok = EVP_AEAD_CTX_seal_scatter(&ctx, len ? out : &dummy, tag, &tag_len, AV_AEAD_TAG_LEN,
                                       nonce, AV_AEAD_NONCE_LEN, len ? in : &dummy, len, NULL, 0,
                                       aad_len ? aad : &dummy, aad_len);
    EVP_AEAD_CTX_cleanup(&ctx);
    if (!ok || tag_len != AV_AEAD_TAG_LEN) {
        ERR_clear_error();
        return AV_ERR_TLS;
    }
    return AV_OK;
}

int av__aead_open(const uint8_t key[AV_AEAD_KEY_LEN], const uint8_t nonce[AV_AEAD_NONCE_LEN],
                  const void *aad, size_t aad_len, const void *in, size_t len, uint8_t *out,
                  const uint8_t tag[AV_AEAD_TAG_LEN])
{
    EVP_AEAD_CTX ctx;
    uint8_t dummy = 0;
    EVP_AEAD_CTX_zero(&ctx);
    if (!EVP_AEAD_CTX_init(&ctx, EVP_aead_aes_256_gcm(), key, AV_AEAD_KEY_LEN, AV_AEAD_TAG_LEN,
                           NULL)) {
        ERR_clear_error();
        return AV_ERR_TLS;
    }
    int ok = EVP_AEAD_CTX_open_gather(&ctx, len ? out : &dummy, nonce, AV_AEAD_NONCE_LEN,
                                      len ? in : &dummy, len, tag, AV_AEAD_TAG_LEN,
                                      aad_len ? aad : &dummy, aad_len);
    EVP_AEAD_CTX_cleanup(&ctx);
    if (!ok) {
        ERR_clear_error();
        if (len)
            av__wipe(out, len);
        return AV_ERR_AUTH;
    }
    return AV_OK;
}

#else /* OpenSSL 3 */

/* gcm_init starts an AES-256-GCM operation with a 96-bit nonce. */
static EVP_CIPHER_CTX *gcm_init(int enc, const uint8_t *key, const uint8_t *nonce)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx)
        return NULL;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, AV_AEAD_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, enc) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int av__aead_seal(const uint8_t key[AV_AEAD_KEY_LEN], const uint8_t nonce[AV_AEAD_NONCE_LEN],
                  const void *aad, size_t aad_len, const void *in, size_t len, uint8_t *out,
                  uint8_t tag[AV_AEAD_TAG_LEN])
{
    if (len > INT_MAX || aad_len > INT_MAX)
        return AV_ERR_LIMIT;
    int n = 0, rc = AV_ERR_TLS;
    uint8_t fin[16];
    EVP_CIPHER_CTX *ctx = gcm_init(1, key, nonce);
    if (!ctx)
        goto out;
    if (aad_len && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        goto out;
    if (len && (EVP_EncryptUpdate(ctx, out, &n, in, (int)len) != 1 || (size_t)n != len))
        goto out;
    if (EVP_EncryptFinal_ex(ctx, fin, &n) != 1 || n != 0)
        goto out;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, AV_AEAD_TAG_LEN, tag) != 1)
        goto out;
    rc = AV_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (rc != AV_OK) {
        ERR_clear_error();
        if (len)
            av__wipe(out, len);
    }
    return rc;
}

int av__aead_open(const uint8_t key[AV_AEAD_KEY_LEN], const uint8_t nonce[AV_AEAD_NONCE_LEN],
                  const void *aad, size_t aad_len, const void *in, size_t len, uint8_t *out,
                  const uint8_t tag[AV_AEAD_TAG_LEN])
{
    if (len > INT_MAX || aad_len > INT_MAX)
        return AV_ERR_LIMIT;
    int n = 0, rc = AV_ERR_TLS;
    uint8_t fin[16], t[AV_AEAD_TAG_LEN];
    memcpy(t, tag, sizeof(t));
    EVP_CIPHER_CTX *ctx = gcm_init(0, key, nonce);
    if (!ctx)
        goto out;
    if (aad_len && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        goto out;
    if (len && (EVP_DecryptUpdate(ctx, out, &n, in, (int)len) != 1 || (size_t)n != len))
        goto out;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, AV_AEAD_TAG_LEN, t) != 1)
        goto out;
    rc = EVP_DecryptFinal_ex(ctx, fin, &n) == 1 ? AV_OK : AV_ERR_AUTH;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (rc != AV_OK) {
        ERR_clear_error();
        if (len)
            av__wipe(out, len);
    }
    return rc;
}

#endif
