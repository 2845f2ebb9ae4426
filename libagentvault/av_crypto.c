/* av_crypto.c - AES-256-GCM, SHA-256 and random bytes on BoringSSL or
 * OpenSSL 3.
 *
 * BoringSSL: the EVP_AEAD interface (EVP_aead_aes_256_gcm). OpenSSL 3:
 * EVP_CIPHER with EVP_aes_256_gcm. Both: EVP_Digest and RAND_bytes.
 */
#include "av_crypto.h"

#include <limits.h>
#include <string.h>

#include <stdio.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
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

/* ---- private keys and JWS signatures ----------------------------------- */

struct av_pkey {
    EVP_PKEY *pkey;
    int type;
};

/* no_passphrase: an encrypted key is refused, never prompted for */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

static void say(char *why, size_t why_len, const char *m)
{
    if (why && why_len)
        snprintf(why, why_len, "%s", m);
}

/* ec_is_p256: the key's curve is P-256 (prime256v1). */
static int ec_is_p256(EVP_PKEY *pkey)
{
#if defined(AV_TLS_BORINGSSL)
    const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(pkey);
    const EC_GROUP *g = ec ? EC_KEY_get0_group(ec) : NULL;
    return g && EC_GROUP_get_curve_name(g) == NID_X9_62_prime256v1;
#else
    char name[64];
    size_t n = 0;
    return EVP_PKEY_get_group_name(pkey, name, sizeof(name), &n) == 1 &&
           (strcmp(name, "prime256v1") == 0 || strcmp(name, "P-256") == 0);
#endif
}

int av__pkey_from_pem(const void *pem, size_t len, av_pkey **out, char *why, size_t why_len)
{
    *out = NULL;
    if (len > AV_PEM_MAX) {
        say(why, why_len, "the key is larger than 64 KiB");
        return AV_ERR_LIMIT;
    }
    if (len == 0 || !memchr(pem, '-', len)) {
        say(why, why_len, "the key is not a PEM private key (-----BEGIN PRIVATE KEY-----)");
        return AV_ERR_PARSE;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio) {
        say(why, why_len, "out of memory");
        return AV_ERR_NOMEM;
    }
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    ERR_clear_error();
    if (!pkey) {
        say(why, why_len,
            "the key is not a PEM private key (PKCS#8 PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY; an "
            "encrypted key is not supported)");
        return AV_ERR_PARSE;
    }
    int type = 0, id = EVP_PKEY_id(pkey);
    if (id == EVP_PKEY_RSA) {
        int bits = EVP_PKEY_bits(pkey);
        if (bits < 2048 || bits > 8192) {
            EVP_PKEY_free(pkey);
            say(why, why_len, "the RSA key must have 2048 to 8192 bits");
            return AV_ERR_PARSE;
        }
        type = AV_PKEY_RSA;
    } else if (id == EVP_PKEY_EC) {
        if (!ec_is_p256(pkey)) {
            EVP_PKEY_free(pkey);
            ERR_clear_error();
            say(why, why_len, "the EC key is not on curve P-256 (ES256)");
            return AV_ERR_PARSE;
        }
        type = AV_PKEY_EC_P256;
    } else {
        EVP_PKEY_free(pkey);
        say(why, why_len, "the key is neither RSA nor ECDSA P-256");
        return AV_ERR_PARSE;
    }
    av_pkey *k = av__calloc(1, sizeof(*k));
    if (!k) {
        EVP_PKEY_free(pkey);
        say(why, why_len, "out of memory");
        return AV_ERR_NOMEM;
    }
    k->pkey = pkey;
    k->type = type;
    *out = k;
    return AV_OK;
}

int av__pkey_type(const av_pkey *k)
{
    return k->type;
}

void av__pkey_free(av_pkey *k)
{
    if (!k)
        return;
    EVP_PKEY_free(k->pkey); /* the library wipes key material */
    av__free(k);
}

/* ecdsa_raw turns a DER ECDSA-Sig-Value into r||s, 32 bytes each. */
static int ecdsa_raw(const uint8_t *der, size_t der_len, uint8_t out[64])
{
    const uint8_t *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    if (!sig || p != der + der_len) {
        ECDSA_SIG_free(sig);
        return AV_ERR_TLS;
    }
    const BIGNUM *r = NULL, *s = NULL;
    ECDSA_SIG_get0(sig, &r, &s);
#if defined(AV_TLS_BORINGSSL)
    int ok = BN_bn2bin_padded(out, 32, r) && BN_bn2bin_padded(out + 32, 32, s);
#else
    int ok = BN_bn2binpad(r, out, 32) == 32 && BN_bn2binpad(s, out + 32, 32) == 32;
#endif
    ECDSA_SIG_free(sig);
    return ok ? AV_OK : AV_ERR_TLS;
}

int av__pkey_sign_jws(const av_pkey *k, const void *msg, size_t len, uint8_t *sig, size_t cap, size_t *sig_len)
{
    *sig_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t der[160];
    uint8_t *dst = k->type == AV_PKEY_RSA ? sig : der;
    size_t room = k->type == AV_PKEY_RSA ? cap : sizeof(der), n = 0;
    int rc = AV_ERR_TLS;
    if (!ctx || EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k->pkey) != 1)
        goto out;
    if (EVP_DigestSign(ctx, NULL, &n, msg, len) != 1)
        goto out;
    if (n > room || (k->type == AV_PKEY_EC_P256 && cap < 64)) {
        rc = AV_ERR_LIMIT;
        goto out;
    }
    n = room;
    if (EVP_DigestSign(ctx, dst, &n, msg, len) != 1)
        goto out;
    if (k->type == AV_PKEY_EC_P256) {
        rc = ecdsa_raw(der, n, sig);
        if (rc == AV_OK)
            *sig_len = 64;
    } else {
        *sig_len = n;
        rc = AV_OK;
    }
out:
    EVP_MD_CTX_free(ctx);
    if (rc != AV_OK)
        ERR_clear_error();
    return rc;
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
