/* av_ca.c - the certificate authority: load or create the root, mint leaves.
 *
 * Certificates are built directly in DER (a small encoder below) rather
 * than through X509 objects: the TBSCertificate is assembled from parts
 * computed once at open (issuer name, root key id, the shared leaf key's
 * SubjectPublicKeyInfo), so a mint costs one ECDSA signature plus a few
 * microseconds of encoding on both backends. The same code builds the root.
 *
 * One file (over the 1,200-line guide) because it is one concept: the DER
 * encoder exists only for this certificate template, and the leaf cache
 * and mint-rate cap guard the same minting path.
 */
#include "av_ca.h"
#include "av_err.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#if defined(AV_TLS_BORINGSSL)
#include <openssl/pool.h>
#endif

#include <agentvault/agentvault.h>

#include "av_ca_internal.h"
#include "av_enc.h"
#include "av_mem.h"

#define CA_FILE_MAX (1024 * 1024)    /* largest ca.pem / ca.key we read */
#define DER_MAX (64 * 1024)          /* largest certificate we build */
#define LEAF_LIFETIME (7 * 86400)    /* leaf validity after now */
#define LEAF_BACKDATE 3600           /* leaf and root validity before now */
#define LEAF_REFRESH 86400           /* re-mint when this close to expiry */
#define ROOT_LIFETIME ((int64_t)3653 * 86400)
#define CN_MAX 64                    /* ub-common-name */

/* DER of fixed pieces (tag, length, contents). */
static const uint8_t OID_CN[] = {0x06, 0x03, 0x55, 0x04, 0x03};
static const uint8_t OID_O[] = {0x06, 0x03, 0x55, 0x04, 0x0a};
static const uint8_t OID_BC[] = {0x06, 0x03, 0x55, 0x1d, 0x13};
static const uint8_t OID_KU[] = {0x06, 0x03, 0x55, 0x1d, 0x0f};
static const uint8_t OID_EKU[] = {0x06, 0x03, 0x55, 0x1d, 0x25};
static const uint8_t OID_SKI[] = {0x06, 0x03, 0x55, 0x1d, 0x0e};
static const uint8_t OID_AKI[] = {0x06, 0x03, 0x55, 0x1d, 0x23};
static const uint8_t OID_SAN[] = {0x06, 0x03, 0x55, 0x1d, 0x11};
static const uint8_t OID_SERVER_AUTH[] = {0x06, 0x08, 0x2b, 0x06, 0x01, 0x05,
                                          0x05, 0x07, 0x03, 0x01};
/* AlgorithmIdentifier ecdsa-with-SHA256 (no parameters). */
static const uint8_t ALG_ECDSA_SHA256[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x04, 0x03, 0x02};
/* SubjectPublicKeyInfo prefix of an uncompressed P-256 key (91 bytes). */
static const uint8_t SPKI_P256_PREFIX[] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04};
#define SPKI_P256_LEN 91
static const uint8_t VERSION_V3[] = {0xa0, 0x03, 0x02, 0x01, 0x02};
static const uint8_t BOOL_TRUE[] = {0x01, 0x01, 0xff};

struct av_ca_leaf {
    atomic_uint refs;
    char *key;               /* cache key: names joined by ',' */
    uint64_t hash;
    int64_t not_after;
    uint8_t *der;
    size_t der_len;
    EVP_PKEY *pkey;          /* shared leaf key (one reference) */
#if defined(AV_TLS_BORINGSSL)
    CRYPTO_BUFFER *buf;
#else
    X509 *x509;
#endif
    av_ca_leaf *hnext;       /* hash chain */
    av_ca_leaf *prev, *next; /* LRU list, most recent first */
};

struct av_ca {
    EVP_PKEY *root_key;
    uint8_t *root_der;
    size_t root_der_len;
    char *root_pem;
    uint8_t *issuer;         /* the root's subject Name, DER */
    size_t issuer_len;
    uint8_t *root_kid;       /* the root's key identifier (for AKI) */
    size_t root_kid_len;
    EVP_PKEY *leaf_key;
    uint8_t leaf_spki[SPKI_P256_LEN];
    uint8_t leaf_kid[20];
    int64_t skew;

    pthread_mutex_t lock;
    av_ca_leaf **buckets;
    size_t nbuckets;         /* power of two */
    size_t cap, count;
    av_ca_leaf *head, *tail;
    unsigned long hits, misses, refused;
    double mint_tokens;      /* token bucket for minting (SECURITY 15) */
    double mint_last;        /* monotonic seconds of the last refill */
};

/* Minting is capped so a hostile agent cannot burn CPU by CONNECTing to
 * endless new host names: a burst of AV_CA_MINT_BURST, refilled at
 * AV_CA_MINT_RATE per second. */
#define AV_CA_MINT_RATE 200.0
#define AV_CA_MINT_BURST 400.0

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* mint_allowed takes a token; call with ca->lock held. */
static int mint_allowed(av_ca *ca)
{
    double now = mono_now();
    if (ca->mint_last == 0) {
        ca->mint_tokens = AV_CA_MINT_BURST;
    } else {
        ca->mint_tokens += (now - ca->mint_last) * AV_CA_MINT_RATE;
        if (ca->mint_tokens > AV_CA_MINT_BURST)
            ca->mint_tokens = AV_CA_MINT_BURST;
    }
    ca->mint_last = now;
    if (ca->mint_tokens < 1.0) {
        ca->refused++;
        return 0;
    }
    ca->mint_tokens -= 1.0;
    return 1;
}

/* ---- a minimal DER writer ---------------------------------------------- */

typedef struct der {
    uint8_t *p;
    size_t len, cap;
    size_t open[8]; /* offsets of pending length bytes */
    int depth;
    int err;        /* first failure: AV_ERR_NOMEM or AV_ERR_LIMIT */
} der;

/* der_grow makes room for |n| more bytes; 0 (and d->err) on failure. */
static int der_grow(der *d, size_t n)
{
    if (d->err)
        return 0;
    if (d->len + n <= d->cap)
        return 1;
    if (d->len + n > DER_MAX) {
        d->err = AV_ERR_LIMIT;
        return 0;
    }
    size_t cap = d->cap ? d->cap : 1024;
    while (cap < d->len + n)
        cap *= 2;
    uint8_t *np = av__realloc(d->p, cap);
    if (!np) {
        d->err = AV_ERR_NOMEM;
        return 0;
    }
    d->p = np;
    d->cap = cap;
    return 1;
}

/* der_put appends raw bytes. */
static void der_put(der *d, const void *b, size_t n)
{
    if (n && der_grow(d, n)) {
        memcpy(d->p + d->len, b, n);
        d->len += n;
    }
}

/* der_begin opens a constructed (or primitive) element with tag |tag|. */
static void der_begin(der *d, uint8_t tag)
{
    if (d->depth == (int)(sizeof(d->open) / sizeof(d->open[0]))) {
        d->err = AV_ERR_LIMIT;
        return;
    }
    uint8_t hdr[2] = {tag, 0};
    der_put(d, hdr, 2);
    if (!d->err)
        d->open[d->depth++] = d->len - 1;
}

/* der_end closes the innermost element, encoding its length minimally. */
static void der_end(der *d)
{
    if (d->err || d->depth == 0)
        return;
    size_t at = d->open[--d->depth];
    size_t clen = d->len - at - 1;
    if (clen < 0x80) {
        d->p[at] = (uint8_t)clen;
        return;
    }
    size_t nb = clen <= 0xff ? 1 : clen <= 0xffff ? 2 : 3;
    if (!der_grow(d, nb))
        return;
    memmove(d->p + at + 1 + nb, d->p + at + 1, clen);
    d->p[at] = (uint8_t)(0x80 | nb);
    for (size_t i = 0; i < nb; i++)
        d->p[at + 1 + i] = (uint8_t)(clen >> (8 * (nb - 1 - i)));
    d->len += nb;
}

/* der_prim appends a primitive element. */
static void der_prim(der *d, uint8_t tag, const void *b, size_t n)
{
    der_begin(d, tag);
    der_put(d, b, n);
    der_end(d);
}

/* der_time appends UTCTime (1950..2049) or GeneralizedTime. */
static void der_time(der *d, int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    char s[32];
    if (!gmtime_r(&tt, &tm)) {
        d->err = AV_ERR_INVALID;
        return;
    }
    int y = tm.tm_year + 1900;
    if (y >= 1950 && y < 2050) {
        snprintf(s, sizeof(s), "%02d%02d%02d%02d%02d%02dZ", y % 100, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        der_prim(d, 0x17, s, strlen(s));
    } else {
        snprintf(s, sizeof(s), "%04d%02d%02d%02d%02d%02dZ", y, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        der_prim(d, 0x18, s, strlen(s));
    }
}

/* der_name_attr appends one RDN: SET { SEQ { oid, UTF8String v } }. */
static void der_name_attr(der *d, const uint8_t *oid, size_t oid_len, const char *v,
                          size_t vlen)
{
    der_begin(d, 0x31);
    der_begin(d, 0x30);
    der_put(d, oid, oid_len);
    der_prim(d, 0x0c, v, vlen);
    der_end(d);
    der_end(d);
}

/* der_ext_begin opens Extension { oid, [critical], OCTET STRING { ... */
static void der_ext_begin(der *d, const uint8_t *oid, size_t oid_len, int critical)
{
    der_begin(d, 0x30);
    der_put(d, oid, oid_len);
    if (critical)
        der_put(d, BOOL_TRUE, sizeof(BOOL_TRUE));
    der_begin(d, 0x04);
}

/* der_ext_end closes what der_ext_begin opened. */
static void der_ext_end(der *d)
{
    der_end(d);
    der_end(d);
}

/* random_serial fills a positive, minimally encoded 16-byte INTEGER body. */
static int random_serial(uint8_t s[16])
{
    if (RAND_bytes(s, 16) != 1)
        return AV_ERR_CA;
    s[0] &= 0x7f;
    if (s[0] == 0)
        s[0] = 0x01;
    return AV_OK;
}

/* key_id computes SHA-1 over the public key bits of a P-256 SPKI. */
static int key_id(const uint8_t *spki, uint8_t out[20])
{
    unsigned int n = 0;
    const size_t pre = sizeof(SPKI_P256_PREFIX) - 1; /* the point starts at 0x04 */
    if (!EVP_Digest(spki + pre, SPKI_P256_LEN - pre, out, &n, EVP_sha1(), NULL) || n != 20)
        return AV_ERR_CA;
    return AV_OK;
}

/* spki_of_key writes |key|'s SubjectPublicKeyInfo; AV_ERR_CA unless P-256. */
static int spki_of_key(EVP_PKEY *key, uint8_t out[SPKI_P256_LEN])
{
    uint8_t *p = NULL;
    int n = i2d_PUBKEY(key, &p);
    int ok = n == SPKI_P256_LEN && memcmp(p, SPKI_P256_PREFIX, sizeof(SPKI_P256_PREFIX)) == 0;
    if (ok)
        memcpy(out, p, SPKI_P256_LEN);
    OPENSSL_free(p);
    return ok ? AV_OK : AV_ERR_CA;
}

/* sign_cert wraps a TBSCertificate into a Certificate signed with |key|. */
static int sign_cert(EVP_PKEY *key, const der *tbs, der *out)
{
    uint8_t sig[160];
    size_t sig_len = sizeof(sig);
    int rc = AV_ERR_CA;
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    if (!mctx)
        return AV_ERR_NOMEM;
    if (EVP_DigestSignInit(mctx, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(mctx, sig, &sig_len, tbs->p, tbs->len) != 1)
        goto err;
    der_begin(out, 0x30);
    der_put(out, tbs->p, tbs->len);
    der_put(out, ALG_ECDSA_SHA256, sizeof(ALG_ECDSA_SHA256));
    der_begin(out, 0x03);
    der_put(out, "", 1); /* no unused bits */
    der_put(out, sig, sig_len);
    der_end(out);
    der_end(out);
    rc = out->err ? out->err : AV_OK;
err:
    EVP_MD_CTX_free(mctx);
    ERR_clear_error();
    return rc;
}

/* pem_encode returns "-----BEGIN |label|-----" + base64 lines + END. */
static char *pem_encode(const char *label, const uint8_t *der_p, size_t n)
{
    size_t enc = (n + 2) / 3 * 4;
    size_t total = enc + enc / 64 + 2 + 2 * (strlen(label) + 32);
    char *out = av__malloc(total);
    if (!out)
        return NULL;
    size_t o = (size_t)snprintf(out, total, "-----BEGIN %s-----\n", label);
    for (size_t i = 0; i < n; i += 48) { /* 48 bytes make a 64-character line */
        o += av__b64_encode(der_p + i, n - i < 48 ? n - i : 48, 0, out + o);
        out[o++] = '\n';
    }
    snprintf(out + o, total - o, "-----END %s-----\n", label);
    return out;
}

/* parse_ip recognises an IPv4 or IPv6 literal (brackets allowed around
 * IPv6); returns the address length (4 or 16) or 0 for a DNS name. */
static size_t parse_ip(const char *s, uint8_t out[16])
{
    char tmp[64];
    size_t n = strlen(s);
    if (inet_pton(AF_INET, s, out) == 1)
        return 4;
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']' && n - 2 < sizeof(tmp)) {
        memcpy(tmp, s + 1, n - 2);
        tmp[n - 2] = '\0';
        s = tmp;
    }
    if (inet_pton(AF_INET6, s, out) == 1)
        return 16;
    return 0;
}

/* name_ok accepts a non-empty name of printable ASCII without ',' (the
 * cache key separator). Full validation is the caller's job. */
static int name_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (s[n] <= 0x20 || s[n] >= 0x7f || s[n] == ',')
            return 0;
    return n > 0 && n <= 255;
}

/* ---- root: generate, write, load --------------------------------------- */

/* gen_p256 generates a fresh ECDSA P-256 key. */
static EVP_PKEY *gen_p256(void)
{
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
    if (!kctx)
        return NULL;
    if (EVP_PKEY_keygen_init(kctx) != 1 ||
        EVP_PKEY_CTX_set_ec_paramgen_curve_nid(kctx, NID_X9_62_prime256v1) != 1 ||
        EVP_PKEY_keygen(kctx, &key) != 1)
        key = NULL;
    EVP_PKEY_CTX_free(kctx);
    return key;
}

/* mkdir_p creates |dir| and missing parents with mode 0700. */
static int mkdir_p(const char *dir, char *err, size_t err_len)
{
    char path[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof(path)) {
        av__errf(err, err_len, "state directory path is empty or too long");
        return AV_ERR_INVALID;
    }
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char c = path[i];
        path[i] = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            av__errf(err, err_len, "%s: cannot create directory: %s", path, strerror(errno));
            return AV_ERR_IO;
        }
        path[i] = c;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        av__errf(err, err_len, "%s: not a directory", dir);
        return AV_ERR_IO;
    }
    return AV_OK;
}

/* fsync_dir makes a rename in |path|'s directory durable (best effort). */
static void fsync_dir(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (n == 0 || n >= sizeof(dir)) {
        memcpy(dir, slash ? "/" : ".", 2);
    } else {
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

/* write_file_atomic writes |data| to |path| with |mode| through an
 * O_EXCL temporary file, fsync and rename. */
static int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode,
                             char *err, size_t err_len)
{
    char tmp[4200];
    uint8_t rnd[4] = {0};
    (void)RAND_bytes(rnd, sizeof(rnd));
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp-%ld-%02x%02x%02x%02x", path,
                         (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3]) >= sizeof(tmp)) {
        av__errf(err, err_len, "%s: path too long", path);
        return AV_ERR_IO;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        av__errf(err, err_len, "%s: cannot create: %s", tmp, strerror(errno));
        return AV_ERR_IO;
    }
    const uint8_t *p = data;
    size_t off = 0;
    if (fchmod(fd, mode) != 0)
        goto err;
    while (off < len) {
        ssize_t w = write(fd, p + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            goto err;
        off += (size_t)w;
    }
    if (fsync(fd) != 0)
        goto err;
    if (close(fd) != 0) {
        fd = -1;
        goto err;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto err;
    fsync_dir(path);
    return AV_OK;
err:
    av__errf(err, err_len, "%s: cannot write: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return AV_ERR_IO;
}

/* build_root_tbs encodes the root's TBSCertificate. */
static void build_root_tbs(der *d, const uint8_t serial[16], const char *cn, int64_t now,
                           const uint8_t *spki, const uint8_t kid[20])
{
    der_begin(d, 0x30);
    der_put(d, VERSION_V3, sizeof(VERSION_V3));
    der_prim(d, 0x02, serial, 16);
    der_put(d, ALG_ECDSA_SHA256, sizeof(ALG_ECDSA_SHA256));
    for (int i = 0; i < 2; i++) { /* issuer, then validity, then subject */
        der_begin(d, 0x30);
        der_name_attr(d, OID_O, sizeof(OID_O), "agentvault", 10);
        der_name_attr(d, OID_CN, sizeof(OID_CN), cn, strlen(cn));
        der_end(d);
        if (i == 0) {
            der_begin(d, 0x30);
            der_time(d, now - LEAF_BACKDATE);
            der_time(d, now + ROOT_LIFETIME);
            der_end(d);
        }
    }
    der_put(d, spki, SPKI_P256_LEN);
    der_begin(d, 0xa3);
    der_begin(d, 0x30);
    der_ext_begin(d, OID_BC, sizeof(OID_BC), 1);
    der_put(d, "\x30\x06\x01\x01\xff\x02\x01\x00", 8); /* CA:TRUE, pathlen:0 */
    der_ext_end(d);
    der_ext_begin(d, OID_KU, sizeof(OID_KU), 1);
    der_put(d, "\x03\x02\x01\x06", 4); /* keyCertSign, cRLSign */
    der_ext_end(d);
    der_ext_begin(d, OID_SKI, sizeof(OID_SKI), 0);
    der_prim(d, 0x04, kid, 20);
    der_ext_end(d);
    der_end(d);
    der_end(d);
    der_end(d);
}

/* ca_generate creates a new root key and certificate and writes ca.key
 * (0600) then ca.pem (0644). */
static int ca_generate(const char *key_path, const char *pem_path, char *err, size_t err_len)
{
    int rc = AV_ERR_CA;
    der tbs = {0}, cert = {0};
    char *pem = NULL;
    BIO *bio = NULL;
    uint8_t spki[SPKI_P256_LEN], kid[20], serial[16], idb[4];
    char cn[64];
    EVP_PKEY *key = gen_p256();
    if (!key || spki_of_key(key, spki) != AV_OK || key_id(spki, kid) != AV_OK ||
        random_serial(serial) != AV_OK || RAND_bytes(idb, sizeof(idb)) != 1) {
        av__errf(err, err_len, "cannot generate the root CA key");
        goto err;
    }
    snprintf(cn, sizeof(cn), "agentvault root CA %02x%02x%02x%02x", idb[0], idb[1], idb[2],
             idb[3]);
    build_root_tbs(&tbs, serial, cn, (int64_t)time(NULL), spki, kid);
    if (tbs.err || (rc = sign_cert(key, &tbs, &cert)) != AV_OK) {
        rc = tbs.err ? tbs.err : rc;
        av__errf(err, err_len, "cannot sign the root CA certificate");
        goto err;
    }
    rc = AV_ERR_NOMEM;
    pem = pem_encode("CERTIFICATE", cert.p, cert.len);
    bio = BIO_new(BIO_s_mem());
    if (!pem || !bio)
        goto err;
    if (!PEM_write_bio_PKCS8PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)) {
        av__errf(err, err_len, "cannot encode the root CA key");
        rc = AV_ERR_CA;
        goto err;
    }
    const uint8_t *kp = NULL;
    size_t klen = 0;
    {
        char *kdata = NULL;
        long l = BIO_get_mem_data(bio, &kdata);
        kp = (const uint8_t *)kdata;
        klen = l > 0 ? (size_t)l : 0;
    }
    rc = write_file_atomic(key_path, kp, klen, 0600, err, err_len);
    av__wipe((void *)kp, klen);
    if (rc != AV_OK)
        goto err;
    rc = write_file_atomic(pem_path, pem, strlen(pem), 0644, err, err_len);
err:
    BIO_free(bio);
    av__free(pem);
    av__free(tbs.p);
    av__free(cert.p);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

/* read_ca_file reads a whole CA file; a key file must be private. */
static int read_ca_file(const char *path, int is_key, uint8_t **out, size_t *out_len,
                        char *err, size_t err_len)
{
    struct stat st;
    uint8_t *buf = NULL;
    size_t off = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        av__errf(err, err_len, "%s: cannot open: %s", path, strerror(errno));
        return AV_ERR_CA;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        av__errf(err, err_len, "%s: not a regular file", path);
        goto err;
    }
    if (is_key && (st.st_mode & 077)) {
        av__errf(err, err_len,
                "%s: permissions %04o are too open: the CA key must not be accessible by "
                "group or others (chmod 600)",
                path, (unsigned)(st.st_mode & 07777));
        goto err;
    }
    if (st.st_size <= 0 || st.st_size > CA_FILE_MAX) {
        av__errf(err, err_len, "%s: %s", path, st.st_size <= 0 ? "empty file" : "file too large");
        goto err;
    }
    buf = av__malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return AV_ERR_NOMEM;
    }
    while (off < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + off, (size_t)st.st_size - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            av__errf(err, err_len, "%s: cannot read: %s", path, strerror(errno));
            goto err;
        }
        if (r == 0)
            break;
        off += (size_t)r;
    }
    close(fd);
    buf[off] = '\0';
    *out = buf;
    *out_len = off;
    return AV_OK;
err:
    if (buf) {
        av__wipe(buf, (size_t)st.st_size);
        av__free(buf);
    }
    close(fd);
    return AV_ERR_CA;
}

/* no_passphrase refuses to prompt for a passphrase. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

/* ca_install checks and installs the root from its PEM certificate and
 * key; |pem_name| and |key_name| say where they came from (errors: file
 * paths, or "ca_cert (REF)" and "ca_key (REF)" for secret references). */
static int ca_install(av_ca *ca, const uint8_t *pem_data, size_t pem_len, const char *pem_name,
                      const uint8_t *key_data, size_t key_len, const char *key_name, char *err,
                      size_t err_len)
{
    int rc = AV_ERR_CA;
    uint8_t *p = NULL;
    BIO *bio = NULL;
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    uint8_t cert_spki[SPKI_P256_LEN], key_spki[SPKI_P256_LEN];

    if (pem_len > CA_FILE_MAX || key_len > CA_FILE_MAX) {
        av__errf(err, err_len, "%s: too large for a CA certificate or key",
                 pem_len > CA_FILE_MAX ? pem_name : key_name);
        return AV_ERR_CA;
    }
    bio = BIO_new_mem_buf(pem_data, (int)pem_len);
    if (!bio || !(cert = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL))) {
        av__errf(err, err_len, "%s: not a valid PEM certificate (truncated or corrupt?)", pem_name);
        goto err;
    }
    BIO_free(bio);
    bio = BIO_new_mem_buf(key_data, (int)key_len);
    if (!bio || !(key = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL))) {
        av__errf(err, err_len,
                "%s: not a valid PEM private key (truncated, corrupt or encrypted?)", key_name);
        goto err;
    }
    if (spki_of_key(key, key_spki) != AV_OK) {
        av__errf(err, err_len, "%s: not an ECDSA P-256 key", key_name);
        goto err;
    }
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &p);
    if (n != SPKI_P256_LEN || memcmp(p, SPKI_P256_PREFIX, sizeof(SPKI_P256_PREFIX)) != 0) {
        av__errf(err, err_len, "%s: certificate key is not ECDSA P-256", pem_name);
        goto err;
    }
    memcpy(cert_spki, p, SPKI_P256_LEN);
    if (X509_check_ca(cert) == 0) {
        av__errf(err, err_len, "%s: not a CA certificate (needs basicConstraints CA:TRUE)",
                pem_name);
        goto err;
    }
    if (memcmp(cert_spki, key_spki, SPKI_P256_LEN) != 0) {
        av__errf(err, err_len, "%s: private key does not match %s", key_name, pem_name);
        goto err;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0) {
        if (strncmp(pem_name, "ca_cert ", 8) == 0) /* from secret references: the operator's to replace */
            av__errf(err, err_len, "%s: the root certificate has expired (make a new root, e.g. with "
                     "agentvault ca pem --state-dir DIR, and replace ca_cert and ca_key)", pem_name);
        else
            av__errf(err, err_len, "%s: the root certificate has expired (remove %s and %s to "
                    "create a new root)", pem_name, pem_name, key_name);
        goto err;
    }
    /* Install: issuer name, key id, DER, PEM. */
    rc = AV_ERR_NOMEM;
    uint8_t *q = NULL;
    int qn = i2d_X509_NAME(X509_get_subject_name(cert), &q);
    if (qn <= 0)
        goto err;
    ca->issuer = av__memdup(q, (size_t)qn);
    ca->issuer_len = (size_t)qn;
    OPENSSL_free(q);
    q = NULL;
    const ASN1_OCTET_STRING *skid = X509_get0_subject_key_id(cert);
    if (skid) {
        ca->root_kid_len = (size_t)ASN1_STRING_length(skid);
        ca->root_kid = av__memdup(ASN1_STRING_get0_data(skid), ca->root_kid_len);
    } else {
        ca->root_kid_len = 20;
        ca->root_kid = av__malloc(20);
        if (ca->root_kid && key_id(cert_spki, ca->root_kid) != AV_OK)
            goto err;
    }
    qn = i2d_X509(cert, &q);
    if (qn <= 0)
        goto err;
    ca->root_der = av__memdup(q, (size_t)qn);
    ca->root_der_len = (size_t)qn;
    OPENSSL_free(q);
    if (!ca->issuer || !ca->root_kid || !ca->root_der)
        goto err;
    ca->root_pem = pem_encode("CERTIFICATE", ca->root_der, ca->root_der_len);
    if (!ca->root_pem)
        goto err;
    ca->root_key = key;
    key = NULL;
    rc = AV_OK;
err:
    OPENSSL_free(p);
    BIO_free(bio);
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

/* ca_load reads, checks and installs the root from ca.pem and ca.key. */
static int ca_load(av_ca *ca, const char *key_path, const char *pem_path, char *err,
                   size_t err_len)
{
    uint8_t *pem_data = NULL, *key_data = NULL;
    size_t pem_len = 0, key_len = 0;
    int rc = read_ca_file(pem_path, 0, &pem_data, &pem_len, err, err_len);
    if (rc == AV_OK)
        rc = read_ca_file(key_path, 1, &key_data, &key_len, err, err_len);
    if (rc == AV_OK)
        rc = ca_install(ca, pem_data, pem_len, pem_path, key_data, key_len, key_path, err, err_len);
    if (key_data) {
        av__wipe(key_data, key_len);
        av__free(key_data);
    }
    av__free(pem_data);
    return rc;
}

/* file_exists reports 1 (exists), 0 (missing) or an AV_ERR_CA. */
static int file_exists(const char *path, char *err, size_t err_len)
{
    struct stat st;
    if (stat(path, &st) == 0)
        return 1;
    if (errno == ENOENT)
        return 0;
    av__errf(err, err_len, "%s: %s", path, strerror(errno));
    return AV_ERR_CA;
}

static int ca_new(av_ca **out);
static int ca_finish(av_ca *ca, size_t cache_size, char *err, size_t err_len);

int av__ca_open(av_ca **out, const char *state_dir, size_t cache_size, char *err,
                size_t err_len)
{
    char key_path[4096], pem_path[4096];
    int rc;
    av_ca *ca = NULL;
    *out = NULL;
    av__errf(err, err_len, "%s", "");
    if (!state_dir || !*state_dir) {
        av__errf(err, err_len, "no state directory");
        return AV_ERR_INVALID;
    }
    if ((size_t)snprintf(key_path, sizeof(key_path), "%s/ca.key", state_dir) >= sizeof(key_path) ||
        (size_t)snprintf(pem_path, sizeof(pem_path), "%s/ca.pem", state_dir) >= sizeof(pem_path)) {
        av__errf(err, err_len, "state directory path too long");
        return AV_ERR_INVALID;
    }
    if ((rc = mkdir_p(state_dir, err, err_len)) != AV_OK)
        return rc;
    int have_key = file_exists(key_path, err, err_len);
    int have_pem = file_exists(pem_path, err, err_len);
    if (have_key < 0 || have_pem < 0)
        return AV_ERR_CA;
    if (have_key != have_pem) {
        av__errf(err, err_len, "%s exists but %s is missing (restore it, or remove both to "
                "create a new root)", have_key ? key_path : pem_path,
                have_key ? pem_path : key_path);
        return AV_ERR_CA;
    }
    if (!have_key) {
        /* A read-only state directory (a replica's, a container's) is
         * supported, but then the root must come from elsewhere. */
        if (access(state_dir, W_OK) != 0) {
            av__errf(err, err_len,
                     "state directory %s is not writable (%s) and holds no CA: copy ca.pem and ca.key "
                     "there, or set [proxy] ca_cert and ca_key",
                     state_dir, strerror(errno));
            return AV_ERR_CA;
        }
        if ((rc = ca_generate(key_path, pem_path, err, err_len)) != AV_OK)
            return rc;
    }
    if ((rc = ca_new(&ca)) != AV_OK)
        return rc;
    if ((rc = ca_load(ca, key_path, pem_path, err, err_len)) != AV_OK)
        goto err;
    if ((rc = ca_finish(ca, cache_size, err, err_len)) != AV_OK)
        goto err;
    *out = ca;
    ERR_clear_error();
    return AV_OK;
err:
    av__ca_free(ca);
    ERR_clear_error();
    return rc;
}

int av__ca_open_mem(av_ca **out, const uint8_t *pem, size_t pem_len, const char *pem_name,
                    const uint8_t *key, size_t key_len, const char *key_name, size_t cache_size,
                    char *err, size_t err_len)
{
    av_ca *ca = NULL;
    *out = NULL;
    av__errf(err, err_len, "%s", "");
    int rc = ca_new(&ca);
    if (rc != AV_OK)
        return rc;
    if ((rc = ca_install(ca, pem, pem_len, pem_name, key, key_len, key_name, err, err_len)) != AV_OK ||
        (rc = ca_finish(ca, cache_size, err, err_len)) != AV_OK) {
        av__ca_free(ca);
        ERR_clear_error();
        return rc;
    }
    *out = ca;
    ERR_clear_error();
    return AV_OK;
}

/* ca_new allocates an empty CA. */
static int ca_new(av_ca **out)
{
    av_ca *ca = av__calloc(1, sizeof(*ca));
    if (!ca)
        return AV_ERR_NOMEM;
    if (pthread_mutex_init(&ca->lock, NULL) != 0) {
        av__free(ca);
        return AV_ERR_NOMEM;
    }
    *out = ca;
    return AV_OK;
}

/* ca_finish makes the leaf key and the leaf cache of a loaded root. */
static int ca_finish(av_ca *ca, size_t cache_size, char *err, size_t err_len)
{
    ca->leaf_key = gen_p256();
    if (!ca->leaf_key || spki_of_key(ca->leaf_key, ca->leaf_spki) != AV_OK ||
        key_id(ca->leaf_spki, ca->leaf_kid) != AV_OK) {
        av__errf(err, err_len, "cannot generate the leaf key");
        return AV_ERR_CA;
    }
    ca->cap = cache_size ? cache_size : 1024;
    ca->nbuckets = 16;
    while (ca->nbuckets < ca->cap && ca->nbuckets < ((size_t)1 << 20))
        ca->nbuckets <<= 1;
    ca->buckets = av__calloc(ca->nbuckets, sizeof(*ca->buckets));
    return ca->buckets ? AV_OK : AV_ERR_NOMEM;
}

/* leaf_release frees a leaf whose last reference was dropped. */
static void leaf_release(av_ca_leaf *l)
{
    EVP_PKEY_free(l->pkey);
#if defined(AV_TLS_BORINGSSL)
    CRYPTO_BUFFER_free(l->buf);
#else
    X509_free(l->x509);
#endif
    av__free(l->der);
    av__free(l->key);
    av__free(l);
}

void av__ca_free(av_ca *ca)
{
    if (!ca)
        return;
    for (av_ca_leaf *l = ca->head, *next; l; l = next) {
        next = l->next;
        av__ca_leaf_free(l);
    }
    av__free(ca->buckets);
    EVP_PKEY_free(ca->root_key);
    EVP_PKEY_free(ca->leaf_key);
    av__free(ca->root_der);
    av__free(ca->root_pem);
    av__free(ca->issuer);
    av__free(ca->root_kid);
    pthread_mutex_destroy(&ca->lock);
    av__free(ca);
}

const char *av__ca_root_pem(const av_ca *ca)
{
    return ca->root_pem;
}

void av__ca_stats(const av_ca *ca, av_ca_stats *st)
{
    pthread_mutex_lock((pthread_mutex_t *)&ca->lock);
    st->leaf_hits = ca->hits;
    st->leaf_misses = ca->misses;
    st->leaf_cached = ca->count;
    st->leaf_refused = ca->refused;
    pthread_mutex_unlock((pthread_mutex_t *)&ca->lock);
}

void av__ca_set_time_skew(av_ca *ca, int64_t seconds)
{
    ca->skew = seconds;
}

/* ---- leaves -------------------------------------------------------------- */

/* ca_now returns the CA's notion of the current time. */
static int64_t ca_now(const av_ca *ca)
{
    return (int64_t)time(NULL) + ca->skew;
}

/* build_leaf_tbs encodes a leaf's TBSCertificate for |names| (n >= 1). */
static void build_leaf_tbs(const av_ca *ca, der *d, const uint8_t serial[16], int64_t now,
                           const char *const *names, size_t n)
{
    size_t cn_len = strlen(names[0]);
    der_begin(d, 0x30);
    der_put(d, VERSION_V3, sizeof(VERSION_V3));
    der_prim(d, 0x02, serial, 16);
    der_put(d, ALG_ECDSA_SHA256, sizeof(ALG_ECDSA_SHA256));
    der_put(d, ca->issuer, ca->issuer_len);
    der_begin(d, 0x30);
    der_time(d, now - LEAF_BACKDATE);
    der_time(d, now + LEAF_LIFETIME);
    der_end(d);
    der_begin(d, 0x30);
    der_name_attr(d, OID_CN, sizeof(OID_CN), names[0], cn_len > CN_MAX ? CN_MAX : cn_len);
    der_end(d);
    der_put(d, ca->leaf_spki, SPKI_P256_LEN);
    der_begin(d, 0xa3);
    der_begin(d, 0x30);
    der_ext_begin(d, OID_BC, sizeof(OID_BC), 1);
    der_put(d, "\x30\x00", 2); /* CA:FALSE */
    der_ext_end(d);
    der_ext_begin(d, OID_KU, sizeof(OID_KU), 1);
    der_put(d, "\x03\x02\x07\x80", 4); /* digitalSignature */
    der_ext_end(d);
    der_ext_begin(d, OID_EKU, sizeof(OID_EKU), 0);
    der_begin(d, 0x30);
    der_put(d, OID_SERVER_AUTH, sizeof(OID_SERVER_AUTH));
    der_end(d);
    der_ext_end(d);
    der_ext_begin(d, OID_SKI, sizeof(OID_SKI), 0);
    der_prim(d, 0x04, ca->leaf_kid, sizeof(ca->leaf_kid));
    der_ext_end(d);
    der_ext_begin(d, OID_AKI, sizeof(OID_AKI), 0);
    der_begin(d, 0x30);
    der_prim(d, 0x80, ca->root_kid, ca->root_kid_len);
    der_end(d);
    der_ext_end(d);
    der_ext_begin(d, OID_SAN, sizeof(OID_SAN), 0);
    der_begin(d, 0x30);
    for (size_t i = 0; i < n; i++) {
        uint8_t ip[16];
        size_t iplen = parse_ip(names[i], ip);
        if (iplen)
            der_prim(d, 0x87, ip, iplen);
        else
            der_prim(d, 0x82, names[i], strlen(names[i]));
    }
    der_end(d);
    der_ext_end(d);
    der_end(d);
    der_end(d);
    der_end(d);
}

/* leaf_mint builds and signs a leaf for |names| (n >= 1). */
static int leaf_mint(av_ca *ca, const char *const *names, size_t n, char *key,
                     av_ca_leaf **out)
{
    int rc;
    der tbs = {0}, cert = {0};
    uint8_t serial[16];
    int64_t now = ca_now(ca);
    av_ca_leaf *l = NULL;
    if ((rc = random_serial(serial)) != AV_OK)
        goto err;
    build_leaf_tbs(ca, &tbs, serial, now, names, n);
    if ((rc = tbs.err) != AV_OK || (rc = sign_cert(ca->root_key, &tbs, &cert)) != AV_OK)
        goto err;
    rc = AV_ERR_NOMEM;
    l = av__calloc(1, sizeof(*l));
    if (!l)
        goto err;
    atomic_init(&l->refs, 1);
    l->der = cert.p;
    l->der_len = cert.len;
    cert.p = NULL;
    l->not_after = now + LEAF_LIFETIME;
#if defined(AV_TLS_BORINGSSL)
    l->buf = CRYPTO_BUFFER_new(l->der, l->der_len, NULL);
    if (!l->buf)
        goto err;
#else
    const uint8_t *p = l->der;
    l->x509 = d2i_X509(NULL, &p, (long)l->der_len);
    if (!l->x509) {
        rc = AV_ERR_CA;
        goto err;
    }
#endif
    if (EVP_PKEY_up_ref(ca->leaf_key) != 1)
        goto err;
    l->pkey = ca->leaf_key;
    l->key = key;
    *out = l;
    av__free(tbs.p);
    return AV_OK;
err:
    if (l) {
        l->key = NULL;
        leaf_release(l);
    }
    av__free(tbs.p);
    av__free(cert.p);
    av__free(key);
    ERR_clear_error();
    return rc;
}

/* fnv1a hashes the cache key. */
static uint64_t fnv1a(const char *s)
{
    uint64_t h = 14695981039346656037ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

/* list_remove takes |l| out of the LRU list (lock held). */
static void list_remove(av_ca *ca, av_ca_leaf *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else
        ca->head = l->next;
    if (l->next)
        l->next->prev = l->prev;
    else
        ca->tail = l->prev;
    l->prev = l->next = NULL;
}

/* list_push_front makes |l| the most recently used entry (lock held). */
static void list_push_front(av_ca *ca, av_ca_leaf *l)
{
    l->prev = NULL;
    l->next = ca->head;
    if (ca->head)
        ca->head->prev = l;
    ca->head = l;
    if (!ca->tail)
        ca->tail = l;
}

/* cache_remove drops |l| from the cache and releases the cache's
 * reference (lock held). */
static void cache_remove(av_ca *ca, av_ca_leaf *l)
{
    av_ca_leaf **pp = &ca->buckets[l->hash & (ca->nbuckets - 1)];
    while (*pp && *pp != l)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = l->hnext;
    l->hnext = NULL;
    list_remove(ca, l);
    ca->count--;
    av__ca_leaf_free(l);
}

/* cache_insert adds |l| (taking the caller's reference) as most recent
 * and evicts the least recently used entries beyond the cap (lock held). */
static void cache_insert(av_ca *ca, av_ca_leaf *l)
{
    av_ca_leaf **b = &ca->buckets[l->hash & (ca->nbuckets - 1)];
    l->hnext = *b;
    *b = l;
    list_push_front(ca, l);
    ca->count++;
    while (ca->count > ca->cap)
        cache_remove(ca, ca->tail);
}

/* lru_find returns the cached leaf for |key| or NULL (lock held). */
static av_ca_leaf *lru_find(av_ca *ca, const char *key, uint64_t h)
{
    for (av_ca_leaf *l = ca->buckets[h & (ca->nbuckets - 1)]; l; l = l->hnext)
        if (l->hash == h && strcmp(l->key, key) == 0)
            return l;
    return NULL;
}

int av__ca_leaf_get(av_ca *ca, const char *host, const char *const *extra_names,
                    av_ca_leaf **out)
{
    const char *names[64];
    size_t n = 0, key_len = 0;
    *out = NULL;
    if (!host || !name_ok(host))
        return AV_ERR_INVALID;
    names[n++] = host;
    for (size_t i = 0; extra_names && extra_names[i]; i++) {
        if (!name_ok(extra_names[i]))
            return AV_ERR_INVALID;
        int dup = 0;
        for (size_t j = 0; j < n; j++)
            dup |= strcmp(names[j], extra_names[i]) == 0;
        if (dup)
            continue;
        if (n == sizeof(names) / sizeof(names[0]))
            return AV_ERR_INVALID;
        names[n++] = extra_names[i];
    }
    for (size_t i = 0; i < n; i++)
        key_len += strlen(names[i]) + 1;
    char *key = av__malloc(key_len);
    if (!key)
        return AV_ERR_NOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(names[i]);
        memcpy(key + o, names[i], l);
        o += l;
        key[o++] = i + 1 < n ? ',' : '\0';
    }
    uint64_t h = fnv1a(key);

    pthread_mutex_lock(&ca->lock);
    av_ca_leaf *l = lru_find(ca, key, h);
    if (l && ca_now(ca) + LEAF_REFRESH < l->not_after) {
        ca->hits++;
        list_remove(ca, l);
        list_push_front(ca, l);
        *out = av__ca_leaf_ref(l);
        pthread_mutex_unlock(&ca->lock);
        av__free(key);
        return AV_OK;
    }
    if (!mint_allowed(ca)) {
        pthread_mutex_unlock(&ca->lock);
        av__free(key);
        return AV_ERR_LIMIT;
    }
    pthread_mutex_unlock(&ca->lock);

    /* Mint without the lock: it only reads immutable CA state. */
    av_ca_leaf *fresh = NULL;
    int rc = leaf_mint(ca, names, n, key, &fresh); /* takes |key| */
    if (rc != AV_OK)
        return rc;
    fresh->hash = h;

    pthread_mutex_lock(&ca->lock);
    ca->misses++;
    if ((l = lru_find(ca, fresh->key, h)) != NULL)
        cache_remove(ca, l);
    *out = av__ca_leaf_ref(fresh);
    cache_insert(ca, fresh);
    pthread_mutex_unlock(&ca->lock);
    return AV_OK;
}

av_ca_leaf *av__ca_leaf_ref(av_ca_leaf *leaf)
{
    if (leaf)
        atomic_fetch_add_explicit(&leaf->refs, 1, memory_order_relaxed);
    return leaf;
}

void av__ca_leaf_free(av_ca_leaf *leaf)
{
    if (leaf && atomic_fetch_sub_explicit(&leaf->refs, 1, memory_order_acq_rel) == 1)
        leaf_release(leaf);
}

const uint8_t *av__ca_leaf_der(const av_ca_leaf *leaf, size_t *len)
{
    *len = leaf->der_len;
    return leaf->der;
}

char *av__ca_leaf_pem(const av_ca_leaf *leaf)
{
    return pem_encode("CERTIFICATE", leaf->der, leaf->der_len);
}

int64_t av__ca_leaf_not_after(const av_ca_leaf *leaf)
{
    return leaf->not_after;
}

struct evp_pkey_st *av__ca_leaf_key(const av_ca_leaf *leaf)
{
    return leaf->pkey;
}

#if defined(AV_TLS_BORINGSSL)
struct crypto_buffer_st *av__ca_leaf_buffer(const av_ca_leaf *leaf)
{
    return leaf->buf;
}
#else
struct x509_st *av__ca_leaf_x509(const av_ca_leaf *leaf)
{
    return leaf->x509;
}
#endif

/* ---- public ---------------------------------------------------------------- */

AV_EXPORT int av_ca_root_pem_from_dir(const char *state_dir, char **pem_out, char *err,
                                      size_t err_len)
{
    av_ca *ca = NULL;
    if (!pem_out)
        return AV_ERR_INVALID;
    *pem_out = NULL;
    int rc = av__ca_open(&ca, state_dir, 1, err, err_len);
    if (rc != AV_OK)
        return rc;
    *pem_out = av__strdup(av__ca_root_pem(ca));
    av__ca_free(ca);
    return *pem_out ? AV_OK : AV_ERR_NOMEM;
}
