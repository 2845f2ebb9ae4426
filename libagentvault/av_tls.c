/* av_tls.c - TLS engines over caller-owned buffers.
 *
 * Each engine's SSL object talks to one custom BIO: reads take ciphertext
 * from the caller's |cin| and writes append to the caller's |cout|. The
 * engine never asks the TLS library to retry a write: bytes that do not
 * fit into |cout| go to a small internal overflow buffer (|ovf|), which is
 * flushed into |cout| first on every call. Writes are sized to fit the room
 * in |cout| (plus a record's overhead), so |ovf| is normally empty; it only
 * catches handshake flights or alerts that meet a full |cout|. This keeps
 * the semantics simple: a positive return from av__tls_write means the bytes
 * were taken, AV_ERR_AGAIN means nothing was taken.
 */
#include "av_tls.h"
#include "av_err.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#if !defined(AV_TLS_BORINGSSL)
#include <openssl/core_names.h>
#include <openssl/params.h>
#endif
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <agentvault/agentvault.h>

#include "av_ca.h"
#include "av_ca_internal.h"
#include "av_enc.h"
#include "av_mem.h"

#define SYSTEM_CAFILE "/etc/ssl/certs/ca-certificates.crt"
#define RECORD_MAX 16384     /* plaintext per SSL_write call: one record */
#define RECORD_OVERHEAD 128  /* >= header + IV + MAC/tag + padding of one record */
#define OVF_MAX (64 * 1024)  /* bound on output that did not fit into cout */
#define SNI_SHOWN_MAX 64     /* characters of a bad SNI put into an error */

static const uint8_t ALPN_HTTP11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
static const uint8_t ALPN_H2_HTTP11[] = {2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'};

/* Session resumption (docs/SECURITY.md, "TLS session resumption").
 *
 * Server side: stateless TLS 1.3 tickets, sealed with keys that live only
 * in memory. A key seals new tickets for TICKET_KEY_ROTATE seconds, then
 * only opens them for as long again; tickets say they last TICKET_LIFETIME.
 * Every engine carries a session id context derived from the names its leaf
 * was minted for (and the CA), so a ticket opens only for the same host.
 *
 * Client side: tickets from origins, kept per key (the pool key of the
 * upstream connection, its verified name and its ALPN offer), at most
 * SESS_PER_KEY each, newest first, each used once; SESS_TOTAL_MAX in all.
 * A key's depth bounds the concurrent new connections to one origin that
 * find a ticket: every connection takes one and brings at least one back,
 * so the tickets in circulation are those the cache kept (measured: 4 per
 * key let 10 concurrent dials resume only half the time). */
#define TICKET_KEY_ROTATE 3600
#define TICKET_LIFETIME 3600
#define TICKETS_PER_HANDSHAKE 1
#define SESS_KEYS_MAX 256
#define SESS_PER_KEY 16
#define SESS_TOTAL_MAX 1024
#define SESS_KEY_MAX 512

typedef struct ticket_key {
    uint8_t name[16];
    uint8_t hmac[32];
    uint8_t aes[32];
    time_t created;     /* 0: unused */
} ticket_key;

struct av_tls_server_ctx {
    SSL_CTX *ssl_ctx;
    av_ca *ca;
    uint8_t ca_fp[32];            /* SHA-256 of the root (PEM): part of every sid_ctx */
    atomic_int resume;            /* tickets issued and accepted (set on reload, read by every worker) */
    int applied;                  /* |resume| has been applied to ssl_ctx */
    _Atomic unsigned long long *resumed; /* counter of resumed handshakes, or NULL */
    /* The workers share the context (a ticket from one opens on another):
     * |klock| guards the keys, held to pick or rotate one and copy it out,
     * never across a handshake. */
    pthread_mutex_t klock;
    ticket_key keys[2];           /* [0] seals and opens; [1] (the one before) only opens */
};

typedef struct sess_slot {
    char *key;                    /* NULL: free */
    uint64_t hash;
    uint64_t used;                /* LRU stamp */
    int n;
    SSL_SESSION *s[SESS_PER_KEY]; /* oldest first */
} sess_slot;

/* Shared by the workers (a session from one origin connection serves the
 * next, whichever worker dials): |slock| guards the slots, held for list
 * work only, never across a handshake or other I/O. */
struct av_tls_client_ctx {
    SSL_CTX *ssl_ctx;
    atomic_int resume;            /* sessions kept and offered */
    int applied;                  /* |resume| has been applied to ssl_ctx */
    pthread_mutex_t slock;
    _Atomic unsigned long long *resumed;
    uint64_t tick;
    size_t nsess;                 /* sessions kept, all keys */
    sess_slot slots[SESS_KEYS_MAX];
};

struct av_tls {
    SSL *ssl;
    av_buf *cin, *cout;
    av_buf ovf;          /* output that did not fit into cout yet */
    char **names;        /* server: names an SNI may equal; names[0] = host */
    int is_server;
    int hs_done;         /* handshake complete */
    int got_close;       /* close_notify received */
    int sent_close;      /* close_notify queued */
    int fatal;           /* sticky AV_ERR_* once the engine failed */
    int sni_bad;         /* the servername callback refused the SNI */
    int verify_err;      /* client: first X509_V_ERR_* seen, 0 if none */
    int offer_h2;        /* av__tls_offer_h2 was called */
    int starved;         /* SSL_read wanted more input ... */
    size_t starved_len;  /* ... while cin held this many bytes */
    _Atomic unsigned long long *resumed; /* the ctx's counter of resumed handshakes */
    av_tls_client_ctx *cli;      /* client: the ctx whose cache takes its tickets */
    char *sess_key;              /* client: the cache key (av__tls_client_resume) */
    char alpn[32];
    char err[256];
};

/* tls_reason returns the reason of the oldest queued TLS error (a static
 * string of the TLS library, never key material). */
static const char *tls_reason(void)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

/* err_reset empties the thread's error queue. ERR_clear_error walks and
 * frees every slot (hundreds of instructions in BoringSSL); peeking first
 * makes the common empty case cheap. */
static inline void err_reset(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* ---- the buffer BIO -------------------------------------------------------- */

static BIO_METHOD *g_bio_method;
static pthread_once_t g_bio_once = PTHREAD_ONCE_INIT;

/* bio_write appends to cout, spilling what does not fit into ovf. */
static int bio_write(BIO *b, const char *data, int len)
{
    av_tls *t = BIO_get_data(b);
    size_t n = len > 0 ? (size_t)len : 0, done = 0;
    BIO_clear_retry_flags(b);
    if (n == 0)
        return 0;
    if (av__buf_len(&t->ovf) == 0) { /* keep order: nothing may pass ovf */
        done = av__buf_room(t->cout);
        if (done > n)
            done = n;
        if (done && av__buf_append(t->cout, data, done) != AV_OK)
            return -1;
    }
    size_t spill = n - done;
    if (spill > av__buf_room(&t->ovf))
        spill = av__buf_room(&t->ovf);
    if (spill && av__buf_append(&t->ovf, data + done, spill) != AV_OK)
        spill = 0;
    done += spill;
    if (done == 0) {
        BIO_set_retry_write(b);
        return -1;
    }
    return (int)done;
}

/* bio_read takes ciphertext from cin; empty cin asks for a retry. */
static int bio_read(BIO *b, char *out, int len)
{
    av_tls *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t n = av__buf_len(t->cin);
    if (len <= 0)
        return 0;
    if (n == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    if (n > (size_t)len)
        n = (size_t)len;
    memcpy(out, av__buf_head(t->cin), n);
    av__buf_consume(t->cin, n);
    t->starved = 0; /* cin shrank: its length no longer tells whether bytes came */
    return (int)n;
}

/* bio_ctrl answers flush (nothing to do) and nothing else. */
static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

/* bio_create marks a new BIO usable. */
static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

/* bio_method_init builds the BIO_METHOD once per process. */
static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "av_buf");
    if (!m)
        return;
    if (!BIO_meth_set_write(m, bio_write) || !BIO_meth_set_read(m, bio_read) ||
        !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
        BIO_meth_free(m);
        return;
    }
    g_bio_method = m;
}

/* flush_ovf moves spilled output into cout; 1 when nothing is left. */
static int flush_ovf(av_tls *t)
{
    size_t n = av__buf_len(&t->ovf);
    if (n == 0)
        return 1;
    size_t room = av__buf_room(t->cout);
    if (n > room)
        n = room;
    if (n && av__buf_append(t->cout, av__buf_head(&t->ovf), n) == AV_OK)
        av__buf_consume(&t->ovf, n);
    return av__buf_len(&t->ovf) == 0;
}

/* ---- callbacks --------------------------------------------------------------- */

/* alpn_select picks "h2" when the engine offers it (av__tls_offer_h2) and
 * the client lists it, else "http/1.1". A client that offers neither gets
 * no ALPN at all (the handshake proceeds; the tunnel then speaks
 * HTTP/1.1). */
static int alpn_find(const unsigned char *in, unsigned int in_len, const uint8_t *want,
                     const unsigned char **out, unsigned char *out_len)
{
    for (unsigned int i = 0; i < in_len;) {
        unsigned int l = in[i];
        if (l == 0 || i + 1 + l > in_len)
            break;
        if (l == want[0] && memcmp(in + i + 1, want + 1, l) == 0) {
            *out = in + i + 1;
            *out_len = (unsigned char)l;
            return 1;
        }
        i += 1 + l;
    }
    return 0;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *out_len,
                       const unsigned char *in, unsigned int in_len, void *arg)
{
    (void)arg;
    const av_tls *t = SSL_get_app_data(ssl);
    if (t && t->offer_h2 && alpn_find(in, in_len, ALPN_H2_HTTP11, out, out_len))
        return SSL_TLSEXT_ERR_OK;
    if (alpn_find(in, in_len, ALPN_HTTP11, out, out_len))
        return SSL_TLSEXT_ERR_OK;
    return SSL_TLSEXT_ERR_NOACK;
}

/* sanitize copies |src| as printable ASCII ('?' for anything else), cut to
 * SNI_SHOWN_MAX characters with "..." appended when cut. */
static void sanitize(char *dst, size_t dst_len, const char *src)
{
    size_t n = strnlen(src, SNI_SHOWN_MAX + 1);
    size_t o = av__sanitize_line(dst, dst_len, src, n > SNI_SHOWN_MAX ? SNI_SHOWN_MAX : n, AV__LINE_NO_SPACE);
    if (n > o && o + 3 < dst_len)
        memcpy(dst + o, "...", 4);
}

/* servername_check refuses a ClientHello whose SNI is not one of the
 * engine's names (compared exactly after ASCII lower-casing). No SNI is
 * accepted: clients send none for IP literals. */
static int servername_check(SSL *ssl, int *alert, void *arg)
{
    (void)arg;
    av_tls *t = SSL_get_app_data(ssl);
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!t || !sni)
        return SSL_TLSEXT_ERR_OK;
    char low[256];
    size_t n = strlen(sni);
    if (n > 0 && n < sizeof(low)) {
        for (size_t i = 0; i <= n; i++)
            low[i] = (sni[i] >= 'A' && sni[i] <= 'Z') ? (char)(sni[i] + 32) : sni[i];
        for (size_t i = 0; t->names[i]; i++)
            if (strcmp(low, t->names[i]) == 0)
                return SSL_TLSEXT_ERR_OK;
    }
    char shown[SNI_SHOWN_MAX + 4];
    sanitize(shown, sizeof(shown), sni);
    t->sni_bad = 1;
    snprintf(t->err, sizeof(t->err), "SNI %s does not match %s", shown, t->names[0]);
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* verify_note remembers the first certificate error of a client engine. */
static int verify_note(int ok, X509_STORE_CTX *sctx)
{
    if (!ok) {
        SSL *ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
        av_tls *t = ssl ? SSL_get_app_data(ssl) : NULL;
        if (t && !t->verify_err)
            t->verify_err = X509_STORE_CTX_get_error(sctx);
    }
    return ok;
}

/* ---- resumption: server ----------------------------------------------------- */

/* mono_now is the monotonic clock in seconds: ticket keys age by it, so
 * setting the wall clock neither keeps an old key alive nor drops a new
 * one. */
static time_t mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static void ticket_key_wipe(ticket_key *k)
{
    OPENSSL_cleanse(k, sizeof(*k));
}

/* ticket_key_sealing returns the key that seals a ticket at |now|: the
 * current one while younger than TICKET_KEY_ROTATE, else a new random key
 * (the current one then only opens, the one before it is wiped). NULL when
 * there is no randomness. */
static const ticket_key *ticket_key_sealing(av_tls_server_ctx *ctx, time_t now)
{
    ticket_key *cur = &ctx->keys[0];
    if (cur->created && now >= cur->created && now - cur->created < TICKET_KEY_ROTATE)
        return cur;
    ticket_key k;
    if (RAND_bytes(k.name, sizeof(k.name)) != 1 || RAND_bytes(k.hmac, sizeof(k.hmac)) != 1 ||
        RAND_bytes(k.aes, sizeof(k.aes)) != 1) {
        ticket_key_wipe(&k);
        return NULL;
    }
    k.created = now > 0 ? now : 1;
    ticket_key_wipe(&ctx->keys[1]);
    ctx->keys[1] = *cur;
    *cur = k;
    ticket_key_wipe(&k);
    return cur;
}

/* ticket_key_opening finds the key named |name| that may still open a
 * ticket at |now| (sealed less than 2 x TICKET_KEY_ROTATE ago); NULL if
 * none. */
static const ticket_key *ticket_key_opening(const av_tls_server_ctx *ctx, const uint8_t *name, time_t now)
{
    for (size_t i = 0; i < 2; i++) {
        const ticket_key *k = &ctx->keys[i];
        if (k->created && now >= k->created && now - k->created < 2 * TICKET_KEY_ROTATE &&
            CRYPTO_memcmp(k->name, name, sizeof(k->name)) == 0)
            return k;
    }
    return NULL;
}

#if defined(AV_TLS_BORINGSSL)
typedef HMAC_CTX ticket_mac_ctx;
static int ticket_mac_init(ticket_mac_ctx *h, const ticket_key *k)
{
    return HMAC_Init_ex(h, k->hmac, sizeof(k->hmac), EVP_sha256(), NULL) == 1;
}
#else
typedef EVP_MAC_CTX ticket_mac_ctx;
static int ticket_mac_init(ticket_mac_ctx *h, const ticket_key *k)
{
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac));
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(h, params) == 1;
}
#endif

/* ticket_cb seals (|enc|) and opens session tickets with the context's
 * in-memory keys (AES-256-CBC + HMAC-SHA256, the RFC 5077 layout both
 * libraries implement around this callback). Opening refuses, so the
 * handshake goes on in full: any ticket while resumption is off, a TLS 1.2
 * ticket (only TLS 1.3 resumes: there the SNI check sees the SNI sent
 * now), and a ticket whose key is unknown or too old. The session id
 * context check (the host) is the library's, after this. */
static int ticket_cb(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     ticket_mac_ctx *hctx, int enc)
{
    av_tls_server_ctx *ctx = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    time_t now = mono_now();
    ticket_key k; /* a copy: another worker may rotate the keys meanwhile */
    int ok;
    if (!ctx)
        return enc ? -1 : 0;
    if (enc) {
        pthread_mutex_lock(&ctx->klock);
        const ticket_key *kp = ticket_key_sealing(ctx, now);
        if (kp)
            k = *kp;
        pthread_mutex_unlock(&ctx->klock);
        if (!kp)
            return -1;
        memcpy(name, k.name, sizeof(k.name));
        ok = RAND_bytes(iv, 16) == 1 && EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1 &&
             ticket_mac_init(hctx, &k);
        ticket_key_wipe(&k);
        return ok ? 1 : -1;
    }
    if (!atomic_load_explicit(&ctx->resume, memory_order_relaxed) || SSL_version(ssl) != TLS1_3_VERSION)
        return 0;
    pthread_mutex_lock(&ctx->klock);
    const ticket_key *kp = ticket_key_opening(ctx, name, now);
    if (kp)
        k = *kp;
    pthread_mutex_unlock(&ctx->klock);
    if (!kp)
        return 0;
    ok = EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) == 1 && ticket_mac_init(hctx, &k);
    ticket_key_wipe(&k);
    if (!ok)
        return -1;
    /* 2: renew. OpenSSL sends a resumed TLS 1.3 client a new ticket only
     * then; without one the client's single-use ticket is gone after this
     * connection. (BoringSSL always sends one.) */
    return 2;
}

/* sid_ctx_for derives the session id context of a server engine: SHA-256
 * over a label, the CA root's fingerprint, whether the leaf is the proxy's
 * own (extra names) or a MITM leaf, and every name the leaf covers. A
 * session resumes only under the same context (both libraries check), so
 * a ticket minted in a tunnel to one host never resumes in a tunnel to
 * another: the CONNECT host is known before the ClientHello. */
static int sid_ctx_for(const av_tls_server_ctx *ctx, char *const *names, int proxy_own, uint8_t out[32])
{
    static const char label[] = "agentvault sid_ctx 1";
    unsigned int n = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(md, label, sizeof(label)) == 1 &&
             EVP_DigestUpdate(md, ctx->ca_fp, sizeof(ctx->ca_fp)) == 1 &&
             EVP_DigestUpdate(md, proxy_own ? "P" : "M", 1) == 1;
    for (size_t i = 0; ok && names[i]; i++)
        ok = EVP_DigestUpdate(md, names[i], strlen(names[i]) + 1) == 1; /* with the NUL: unambiguous */
    ok = ok && EVP_DigestFinal_ex(md, out, &n) == 1 && n == 32;
    EVP_MD_CTX_free(md);
    return ok;
}

void av__tls_server_ctx_age_keys(av_tls_server_ctx *ctx, long seconds)
{
    pthread_mutex_lock(&ctx->klock);
    for (size_t i = 0; i < 2; i++)
        if (ctx->keys[i].created)
            ctx->keys[i].created -= seconds;
    pthread_mutex_unlock(&ctx->klock);
}

/* ---- resumption: client session cache ---------------------------------------- */

static uint64_t key_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static sess_slot *sess_find(av_tls_client_ctx *ctx, const char *key, uint64_t h)
{
    for (size_t i = 0; i < SESS_KEYS_MAX; i++) {
        sess_slot *sl = &ctx->slots[i];
        if (sl->key && sl->hash == h && strcmp(sl->key, key) == 0)
            return sl;
    }
    return NULL;
}

static void sess_slot_clear(av_tls_client_ctx *ctx, sess_slot *sl)
{
    for (int i = 0; i < sl->n; i++)
        SSL_SESSION_free(sl->s[i]);
    ctx->nsess -= (size_t)sl->n;
    av__free(sl->key);
    memset(sl, 0, sizeof(*sl));
}

/* sess_live: a session still worth offering (complete, with a ticket or
 * an id, and within its lifetime by the wall clock it was stamped with). */
static int sess_live(const SSL_SESSION *s)
{
    long long t = (long long)SSL_SESSION_get_time(s), life = (long long)SSL_SESSION_get_timeout(s);
    long long now = (long long)time(NULL);
    return SSL_SESSION_is_resumable(s) && now >= t && now < t + life;
}

/* sess_put keeps |sess| (taking the reference) as the newest for |key|;
 * the oldest of a full slot goes, and a new key takes a free slot or the
 * least recently used one. Returns 1 when kept. */
static int sess_put(av_tls_client_ctx *ctx, const char *key, SSL_SESSION *sess)
{
    uint64_t h = key_hash(key);
    sess_slot *sl = sess_find(ctx, key, h);
    if (!sl) {
        sl = &ctx->slots[0];
        for (size_t i = 0; i < SESS_KEYS_MAX && sl->key; i++)
            if (!ctx->slots[i].key || ctx->slots[i].used < sl->used)
                sl = &ctx->slots[i];
        sess_slot_clear(ctx, sl);
        if (!(sl->key = av__strdup(key)))
            return 0;
        sl->hash = h;
    }
    if (ctx->nsess >= SESS_TOTAL_MAX && sl->n < SESS_PER_KEY) {
        /* full: the least recently used other key loses its oldest */
        sess_slot *v = NULL;
        for (size_t i = 0; i < SESS_KEYS_MAX; i++) {
            sess_slot *o = &ctx->slots[i];
            if (o != sl && o->n > 0 && (!v || o->used < v->used))
                v = o;
        }
        if (v) {
            SSL_SESSION_free(v->s[0]);
            memmove(v->s, v->s + 1, (size_t)(v->n - 1) * sizeof(v->s[0]));
            v->n--;
            ctx->nsess--;
            if (v->n == 0)
                sess_slot_clear(ctx, v);
        }
    }
    if (sl->n == SESS_PER_KEY) {
        SSL_SESSION_free(sl->s[0]);
        memmove(sl->s, sl->s + 1, (SESS_PER_KEY - 1) * sizeof(sl->s[0]));
        sl->n--;
        ctx->nsess--;
    }
    sl->s[sl->n++] = sess;
    ctx->nsess++;
    sl->used = ++ctx->tick;
    return 1;
}

/* sess_take removes and returns the newest live session for |key| (the
 * caller owns the reference), dropping stale ones; NULL if none. A TLS 1.3
 * ticket is used once (RFC 8446 C.4): it is never offered again. */
static SSL_SESSION *sess_take(av_tls_client_ctx *ctx, const char *key)
{
    sess_slot *sl = sess_find(ctx, key, key_hash(key));
    SSL_SESSION *s = NULL;
    while (sl && sl->n > 0 && !s) {
        s = sl->s[--sl->n];
        ctx->nsess--;
        if (!sess_live(s)) {
            SSL_SESSION_free(s);
            s = NULL;
        }
    }
    if (sl && sl->n == 0)
        sess_slot_clear(ctx, sl);
    else if (sl)
        sl->used = ++ctx->tick;
    return s;
}

/* new_session keeps a client engine's new session (a TLS 1.3 ticket, after
 * the handshake) in its context's cache under the engine's key. */
static int new_session(SSL *ssl, SSL_SESSION *sess)
{
    av_tls *t = SSL_get_app_data(ssl);
    if (!t || !t->cli || !t->cli->resume || !t->sess_key || !SSL_SESSION_is_resumable(sess))
        return 0;
#if defined(AV_TLS_BORINGSSL)
    pthread_mutex_lock(&t->cli->slock);
    int kept = sess_put(t->cli, t->sess_key, sess);
    pthread_mutex_unlock(&t->cli->slock);
    return kept;
#else
    /* OpenSSL marks the connection's current session (this one) not
     * resumable when the connection is freed without a close_notify sent,
     * as an origin's connection often is: keep a copy of our own. */
    SSL_SESSION *copy = SSL_SESSION_dup(sess);
    pthread_mutex_lock(&t->cli->slock);
    int kept = copy && sess_put(t->cli, t->sess_key, copy);
    pthread_mutex_unlock(&t->cli->slock);
    if (copy && !kept)
        SSL_SESSION_free(copy);
    return 0;
#endif
}

void av__tls_client_sessions_flush(av_tls_client_ctx *ctx)
{
    if (!ctx)
        return;
    pthread_mutex_lock(&ctx->slock);
    for (size_t i = 0; i < SESS_KEYS_MAX; i++)
        sess_slot_clear(ctx, &ctx->slots[i]);
    pthread_mutex_unlock(&ctx->slock);
}

size_t av__tls_client_sessions(const av_tls_client_ctx *ctx)
{
    if (!ctx)
        return 0;
    pthread_mutex_t *l = (pthread_mutex_t *)&ctx->slock;
    pthread_mutex_lock(l);
    size_t n = ctx->nsess;
    pthread_mutex_unlock(l);
    return n;
}

void av__tls_client_ctx_resumption(av_tls_client_ctx *ctx, int on, _Atomic unsigned long long *resumed)
{
    /* As for the server context: a reload that changes nothing writes
     * nothing the workers read. */
    if (ctx->resumed != resumed)
        ctx->resumed = resumed;
    on = on != 0;
    if (ctx->applied && atomic_load(&ctx->resume) == on)
        return;
    ctx->applied = 1;
    atomic_store(&ctx->resume, on);
    SSL_CTX_set_session_cache_mode(ctx->ssl_ctx, on ? SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE
                                                    : SSL_SESS_CACHE_OFF);
    if (!on)
        av__tls_client_sessions_flush(ctx);
}

void av__tls_server_ctx_resumption(av_tls_server_ctx *ctx, int on, _Atomic unsigned long long *resumed)
{
    /* Every worker's handshakes read the context: a reload that changes
     * nothing writes nothing. */
    if (ctx->resumed != resumed)
        ctx->resumed = resumed;
    on = on != 0;
    if (ctx->applied && atomic_load(&ctx->resume) == on)
        return;
    ctx->applied = 1;
    atomic_store(&ctx->resume, on);
    if (on) {
        SSL_CTX_clear_options(ctx->ssl_ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx->ssl_ctx, TICKETS_PER_HANDSHAKE);
    } else {
        SSL_CTX_set_options(ctx->ssl_ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx->ssl_ctx, 0);
        pthread_mutex_lock(&ctx->klock);
        ticket_key_wipe(&ctx->keys[0]);
        ticket_key_wipe(&ctx->keys[1]);
        pthread_mutex_unlock(&ctx->klock);
    }
}

/* ---- contexts ------------------------------------------------------------------ */

/* ctx_common applies what both sides share: TLS 1.2+, partial writes,
 * no renegotiation. */
static int ctx_common(SSL_CTX *c)
{
    SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION); /* BoringSSL: already the default */
    return SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) == 1;
}

int av__tls_server_ctx_new(av_tls_server_ctx **out, av_ca *ca, char *err, size_t err_len)
{
    *out = NULL;
    if (!ca) {
        av__errf(err, err_len, "no certificate authority");
        return AV_ERR_INVALID;
    }
    av_tls_server_ctx *ctx = av__calloc(1, sizeof(*ctx));
    if (!ctx)
        return AV_ERR_NOMEM;
    pthread_mutex_init(&ctx->klock, NULL);
    ctx->ca = ca;
    ctx->ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx->ssl_ctx || !ctx_common(ctx->ssl_ctx))
        goto err;
    /* The root's fingerprint goes into every engine's session id context. */
    const char *root = av__ca_root_pem(ca);
    if (!root || !SHA256((const uint8_t *)root, strlen(root), ctx->ca_fp))
        goto err;
    /* Resumption is off until av__tls_server_ctx_resumption turns it on:
     * then only stateless TLS 1.3 tickets (no server-side cache, no TLS 1.2
     * session ids), sealed by ticket_cb. Never 0-RTT: replayed early data
     * would replay injected requests. PSK resumption keeps (EC)DHE: neither
     * library's server accepts psk_ke without SSL_OP_ALLOW_NO_DHE_KEX
     * (OpenSSL) or at all (BoringSSL). */
    SSL_CTX_set_app_data(ctx->ssl_ctx, ctx);
    SSL_CTX_set_session_cache_mode(ctx->ssl_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_timeout(ctx->ssl_ctx, TICKET_LIFETIME);
#if defined(AV_TLS_BORINGSSL)
    SSL_CTX_set_session_psk_dhe_timeout(ctx->ssl_ctx, TICKET_LIFETIME);
    SSL_CTX_set_early_data_enabled(ctx->ssl_ctx, 0);
    SSL_CTX_set_tlsext_ticket_key_cb(ctx->ssl_ctx, ticket_cb);
#else
    SSL_CTX_clear_options(ctx->ssl_ctx, SSL_OP_ALLOW_NO_DHE_KEX);
    /* TLS 1.3: AES-128-GCM with SHA-256 first, whatever the client's order
     * (OpenSSL's clients list AES-256-GCM-SHA384 first). Every TLS 1.3
     * client implements it (RFC 8446 9.1), and the key schedule and
     * transcript then hash with SHA-256: measured, fewer instructions per
     * handshake (bench/README.md). BoringSSL picks on its own. */
    if (SSL_CTX_set_ciphersuites(ctx->ssl_ctx, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:"
                                              "TLS_AES_256_GCM_SHA384") != 1)
        goto err;
    SSL_CTX_set_options(ctx->ssl_ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_max_early_data(ctx->ssl_ctx, 0);
    SSL_CTX_set_recv_max_early_data(ctx->ssl_ctx, 0);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx->ssl_ctx, ticket_cb);
#endif
    av__tls_server_ctx_resumption(ctx, 0, NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx->ssl_ctx, servername_check);
    SSL_CTX_set_alpn_select_cb(ctx->ssl_ctx, alpn_select, NULL);
    *out = ctx;
    return AV_OK;
err:
    av__errf(err, err_len, "cannot create the TLS server context: %s", tls_reason());
    ERR_clear_error();
    av__tls_server_ctx_free(ctx);
    return AV_ERR_TLS;
}

void av__tls_server_ctx_free(av_tls_server_ctx *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl_ctx);
    OPENSSL_cleanse(ctx->keys, sizeof(ctx->keys));
    pthread_mutex_destroy(&ctx->klock);
    av__free(ctx);
}

int av__tls_client_ctx_new(av_tls_client_ctx **out, const char *extra_cafile, char *err,
                           size_t err_len)
{
    int rc = AV_ERR_TLS;
    *out = NULL;
    av_tls_client_ctx *ctx = av__calloc(1, sizeof(*ctx));
    if (!ctx)
        return AV_ERR_NOMEM;
    pthread_mutex_init(&ctx->slock, NULL);
    ctx->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx->ssl_ctx || !ctx_common(ctx->ssl_ctx)) {
        av__errf(err, err_len, "cannot create the TLS client context: %s", tls_reason());
        goto err;
    }
    SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER, verify_note);
    /* Sessions are kept by new_session, off until
     * av__tls_client_ctx_resumption turns them on. */
    SSL_CTX_sess_set_new_cb(ctx->ssl_ctx, new_session);
    av__tls_client_ctx_resumption(ctx, 0, NULL);
    /* The system bundle is optional (a minimal container may lack it);
     * when present it must load. */
    if (access(SYSTEM_CAFILE, F_OK) == 0 &&
        SSL_CTX_load_verify_locations(ctx->ssl_ctx, SYSTEM_CAFILE, NULL) != 1) {
        av__errf(err, err_len, "%s: cannot load CA certificates: %s", SYSTEM_CAFILE, tls_reason());
        goto err;
    }
    if (extra_cafile && *extra_cafile) {
        if (access(extra_cafile, R_OK) != 0) {
            av__errf(err, err_len, "%s: cannot read CA file: %s", extra_cafile, strerror(errno));
            rc = AV_ERR_IO;
            goto err;
        }
        if (SSL_CTX_load_verify_locations(ctx->ssl_ctx, extra_cafile, NULL) != 1) {
            av__errf(err, err_len, "%s: no usable PEM CA certificates: %s", extra_cafile,
                    tls_reason());
            rc = AV_ERR_CONFIG;
            goto err;
        }
    }
    if (SSL_CTX_set_alpn_protos(ctx->ssl_ctx, ALPN_HTTP11, sizeof(ALPN_HTTP11)) != 0) {
        av__errf(err, err_len, "cannot set ALPN");
        goto err;
    }
    ERR_clear_error();
    *out = ctx;
    return AV_OK;
err:
    ERR_clear_error();
    av__tls_client_ctx_free(ctx);
    return rc;
}

void av__tls_client_ctx_free(av_tls_client_ctx *ctx)
{
    if (!ctx)
        return;
    av__tls_client_sessions_flush(ctx);
    SSL_CTX_free(ctx->ssl_ctx);
    pthread_mutex_destroy(&ctx->slock);
    av__free(ctx);
}

/* ---- engines ----------------------------------------------------------------- */

/* engine_new creates an engine whose SSL object does I/O through cin/cout. */
static int engine_new(av_tls **out, SSL_CTX *sctx, av_buf *cin, av_buf *cout)
{
    *out = NULL;
    if (!cin || !cout)
        return AV_ERR_INVALID;
    pthread_once(&g_bio_once, bio_method_init);
    if (!g_bio_method)
        return AV_ERR_NOMEM;
    av_tls *t = av__calloc(1, sizeof(*t));
    if (!t)
        return AV_ERR_NOMEM;
    t->cin = cin;
    t->cout = cout;
    av__buf_init(&t->ovf, OVF_MAX);
    t->ssl = SSL_new(sctx);
    BIO *b = t->ssl ? BIO_new(g_bio_method) : NULL;
    if (!b) {
        ERR_clear_error();
        av__tls_free(t);
        return AV_ERR_NOMEM;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b); /* takes the one reference */
    SSL_set_app_data(t->ssl, t);
    *out = t;
    return AV_OK;
}

/* copy_names stores host + extra names as a NULL-terminated array. */
static char **copy_names(const char *host, const char *const *extra)
{
    size_t n = 1;
    while (extra && extra[n - 1])
        n++;
    char **v = av__calloc(n + 1, sizeof(*v));
    if (!v)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        v[i] = av__strdup(i == 0 ? host : extra[i - 1]);
        if (!v[i]) {
            for (size_t j = 0; j < i; j++)
                av__free(v[j]);
            av__free(v);
            return NULL;
        }
    }
    return v;
}

int av__tls_server_new_leaf(av_tls **out, av_tls_server_ctx *ctx, av_ca_leaf *leaf,
                            const char *host, const char *const *extra_names,
                            av_buf *cin, av_buf *cout)
{
    av_tls *t = NULL;
    *out = NULL;
    if (!ctx || !leaf || !host || !*host)
        return AV_ERR_INVALID;
    int rc = engine_new(&t, ctx->ssl_ctx, cin, cout);
    if (rc != AV_OK)
        return rc;
    t->is_server = 1;
    rc = AV_ERR_NOMEM;
    if (!(t->names = copy_names(host, extra_names)))
        goto err;
    rc = AV_ERR_TLS;
    uint8_t sid[32];
    if (!sid_ctx_for(ctx, t->names, extra_names != NULL, sid) ||
        SSL_set_session_id_context(t->ssl, sid, sizeof(sid)) != 1)
        goto err;
    t->resumed = ctx->resumed;
#if defined(AV_TLS_BORINGSSL)
    CRYPTO_BUFFER *chain[1] = {av__ca_leaf_buffer(leaf)};
    if (SSL_set_chain_and_key(t->ssl, chain, 1, av__ca_leaf_key(leaf), NULL) != 1)
        goto err;
#else
    if (SSL_use_certificate(t->ssl, av__ca_leaf_x509(leaf)) != 1 ||
        SSL_use_PrivateKey(t->ssl, av__ca_leaf_key(leaf)) != 1)
        goto err;
#endif
    SSL_set_accept_state(t->ssl);
    *out = t;
    return AV_OK;
err:
    ERR_clear_error();
    av__tls_free(t);
    return rc;
}

int av__tls_server_new(av_tls **out, av_tls_server_ctx *ctx, const char *host,
                       const char *const *extra_names, av_buf *cin, av_buf *cout)
{
    av_ca_leaf *leaf = NULL;
    *out = NULL;
    if (!ctx || !host)
        return AV_ERR_INVALID;
    int rc = av__ca_leaf_get(ctx->ca, host, extra_names, &leaf);
    if (rc != AV_OK)
        return rc;
    rc = av__tls_server_new_leaf(out, ctx, leaf, host, extra_names, cin, cout);
    av__ca_leaf_free(leaf); /* the SSL object holds its own references */
    return rc;
}

/* ip_literal copies |host| without IPv6 brackets into |buf| when it is an
 * IP literal; returns 1 then, 0 for a DNS name. */
static int ip_literal(const char *host, char *buf, size_t buf_len)
{
    unsigned char a[16];
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        host++;
        n -= 2;
    }
    if (n == 0 || n >= buf_len)
        return 0;
    memcpy(buf, host, n);
    buf[n] = '\0';
    return inet_pton(AF_INET, buf, a) == 1 || inet_pton(AF_INET6, buf, a) == 1;
}

int av__tls_client_new(av_tls **out, av_tls_client_ctx *ctx, const char *host, av_buf *cin,
                       av_buf *cout)
{
    av_tls *t = NULL;
    char ip[64];
    *out = NULL;
    if (!ctx || !host || !*host)
        return AV_ERR_INVALID;
    int rc = engine_new(&t, ctx->ssl_ctx, cin, cout);
    if (rc != AV_OK)
        return rc;
    t->cli = ctx;
    t->resumed = ctx->resumed;
    /* names[0]: the verified name, part of the session cache key */
    if (ctx->resume && !(t->names = copy_names(host, NULL))) {
        av__tls_free(t);
        return AV_ERR_NOMEM;
    }
    rc = AV_ERR_TLS;
    if (ip_literal(host, ip, sizeof(ip))) {
        /* No SNI for IP literals (RFC 6066); check the iPAddress SAN. */
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), ip) != 1)
            goto err;
    } else {
        SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set_tlsext_host_name(t->ssl, host) != 1 || SSL_set1_host(t->ssl, host) != 1)
            goto err;
    }
    SSL_set_connect_state(t->ssl);
    *out = t;
    return AV_OK;
err:
    ERR_clear_error();
    av__tls_free(t);
    return rc;
}

int av__tls_client_resume(av_tls *t, const char *key)
{
    if (!t || t->is_server || t->hs_done || t->sess_key || !key)
        return AV_ERR_STATE;
    av_tls_client_ctx *ctx = t->cli;
    if (!ctx->resume || !t->names)
        return AV_OK;
    /* key \n verified name \n ALPN offer: a session is offered only where
     * everything it was negotiated under is the same. */
    const char *alpn = t->offer_h2 ? "h2,http/1.1" : "http/1.1";
    size_t kl = strlen(key), hl = strlen(t->names[0]), al = strlen(alpn);
    if (kl + hl + al + 3 > SESS_KEY_MAX)
        return AV_OK; /* not kept: a full handshake */
    char *k = av__malloc(kl + hl + al + 3);
    if (!k)
        return AV_ERR_NOMEM;
    memcpy(k, key, kl);
    k[kl] = '\n';
    memcpy(k + kl + 1, t->names[0], hl);
    k[kl + 1 + hl] = '\n';
    memcpy(k + kl + 2 + hl, alpn, al + 1);
    t->sess_key = k;
    pthread_mutex_lock(&ctx->slock);
    SSL_SESSION *s = sess_take(ctx, k);
    pthread_mutex_unlock(&ctx->slock);
    if (s) {
        int ok = SSL_set_session(t->ssl, s);
        SSL_SESSION_free(s);
        if (ok != 1)
            ERR_clear_error(); /* a full handshake then */
    }
    return AV_OK;
}

int av__tls_resumed(const av_tls *t)
{
    return t && t->hs_done && SSL_session_reused(t->ssl);
}

int av__tls_offer_h2(av_tls *t)
{
    if (!t || t->hs_done)
        return AV_ERR_STATE;
    t->offer_h2 = 1;
    if (!t->is_server && SSL_set_alpn_protos(t->ssl, ALPN_H2_HTTP11, sizeof(ALPN_H2_HTTP11)) != 0) {
        ERR_clear_error();
        return AV_ERR_TLS;
    }
    return AV_OK;
}

void av__tls_free(av_tls *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    av__buf_free(&t->ovf);
    for (size_t i = 0; t->names && t->names[i]; i++)
        av__free(t->names[i]);
    av__free(t->names);
    av__free(t->sess_key);
    av__free(t);
}

/* fail turns the failure of an SSL call returning |r| into AV_ERR_AGAIN or
 * a sticky error with a message prefixed by |what|. */
static int fail(av_tls *t, int r, const char *what)
{
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return AV_ERR_AGAIN;
    /* Verification failed when our callback saw an error, or (should a
     * failure bypass it) when the handshake says so. SSL_get_verify_result
     * alone is not a signal: BoringSSL reports an error before any
     * certificate has been seen. */
    unsigned long pe = ERR_peek_error();
    int vfail = !t->is_server &&
                (t->verify_err || (ERR_GET_LIB(pe) == ERR_LIB_SSL &&
                                   ERR_GET_REASON(pe) == SSL_R_CERTIFICATE_VERIFY_FAILED));
    if (vfail) {
        int code = t->verify_err ? t->verify_err : (int)SSL_get_verify_result(t->ssl);
        snprintf(t->err, sizeof(t->err), "upstream certificate verify failed: %s",
                 X509_verify_cert_error_string(code));
        t->fatal = AV_ERR_VERIFY;
    } else {
        if (!t->sni_bad)
            snprintf(t->err, sizeof(t->err), "%s: %s", what,
                     e == SSL_ERROR_SYSCALL && !ERR_peek_error() ? "I/O error" : tls_reason());
        t->fatal = AV_ERR_TLS;
    }
    ERR_clear_error();
    return t->fatal;
}

/* note_alpn records the negotiated protocol after the handshake. */
static void note_alpn(av_tls *t)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    if (p && n < sizeof(t->alpn)) {
        memcpy(t->alpn, p, n);
        t->alpn[n] = '\0';
    }
}

int av__tls_handshake(av_tls *t)
{
    if (t->fatal)
        return t->fatal;
    if (!flush_ovf(t))
        return AV_ERR_AGAIN;
    if (t->hs_done)
        return AV_OK;
    t->starved = 0;
    err_reset();
    int r = SSL_do_handshake(t->ssl);
    if (r != 1) {
        int rc = fail(t, r, "TLS handshake failed");
        flush_ovf(t); /* let an alert reach the peer */
        return rc;
    }
    t->hs_done = 1;
    if (t->resumed && SSL_session_reused(t->ssl))
        (*t->resumed)++;
    note_alpn(t);
    return flush_ovf(t) ? AV_OK : AV_ERR_AGAIN;
}

ssize_t av__tls_read(av_tls *t, uint8_t *buf, size_t len)
{
    size_t total = 0;
    if (t->fatal)
        return t->fatal;
    if (!t->hs_done) {
        int rc = av__tls_handshake(t);
        if (rc != AV_OK)
            return rc;
    }
    flush_ovf(t);
    /* The pump calls this on every round. Bytes only reach cin by being
     * appended (only our BIO, inside an SSL call, takes them out), so when
     * SSL_read last wanted input and cin has not grown since, it would
     * want input again: skip the call (and its error-queue work). */
    if (t->starved && av__buf_len(t->cin) == t->starved_len)
        return t->got_close ? 0 : AV_ERR_AGAIN;
    t->starved = 0;
    err_reset();
    /* Fill |buf| while records are available so nothing stays buffered
     * inside the SSL object when the caller has room for it. */
    while (total < len && !t->got_close) {
        size_t want = len - total;
        if (want > INT_MAX)
            want = INT_MAX;
        int r = SSL_read(t->ssl, buf + total, (int)want);
        if (r > 0) {
            total += (size_t)r;
            if (av__buf_len(t->cin) == 0 && !SSL_has_pending(t->ssl)) {
                /* Nothing buffered anywhere: another SSL_read would only
                 * say it wants input. */
                t->starved = 1;
                t->starved_len = 0;
                break;
            }
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN) {
            t->got_close = 1;
            break;
        }
        if (e == SSL_ERROR_WANT_READ) {
            t->starved = 1;
            t->starved_len = av__buf_len(t->cin);
            break;
        }
        int rc = fail(t, r, "TLS read failed");
        if (rc == AV_ERR_AGAIN)
            break;
        flush_ovf(t);
        return total ? (ssize_t)total : rc; /* the error is sticky */
    }
    flush_ovf(t); /* e.g. a KeyUpdate answer */
    if (total)
        return (ssize_t)total;
    return t->got_close ? 0 : AV_ERR_AGAIN;
}

ssize_t av__tls_write(av_tls *t, const uint8_t *buf, size_t len)
{
    if (t->fatal)
        return t->fatal;
    if (!t->hs_done) {
        int rc = av__tls_handshake(t);
        if (rc != AV_OK)
            return rc;
    }
    if (!flush_ovf(t))
        return AV_ERR_AGAIN;
    if (t->sent_close)
        return AV_ERR_STATE;
    if (len == 0)
        return 0;
    /* Size the record to the room in cout. When cout is nearly full, wait
     * for it to drain; when it is empty but tiny, spill into ovf. */
    size_t room = av__buf_room(t->cout);
    size_t want = len < RECORD_MAX ? len : RECORD_MAX;
    if (want + RECORD_OVERHEAD > room) {
        if (room > RECORD_OVERHEAD)
            want = room - RECORD_OVERHEAD;
        else if (av__buf_len(t->cout) > 0)
            return AV_ERR_AGAIN;
    }
    err_reset(); /* SSL_write takes no input: |starved| stays valid */
    int r = SSL_write(t->ssl, buf, (int)want);
    if (r > 0)
        return r;
    int rc = fail(t, r, "TLS write failed");
    flush_ovf(t);
    return rc;
}

void av__tls_close(av_tls *t)
{
    if (!t || t->fatal || t->sent_close)
        return;
    t->sent_close = 1;
    if (!t->hs_done)
        return;
    t->starved = 0;
    ERR_clear_error();
    (void)SSL_shutdown(t->ssl);
    ERR_clear_error();
    flush_ovf(t);
}

int av__tls_flush(av_tls *t)
{
    return flush_ovf(t) ? AV_OK : AV_ERR_AGAIN;
}

size_t av__tls_pending(const av_tls *t)
{
    return (size_t)SSL_pending(t->ssl);
}

const char *av__tls_error(const av_tls *t)
{
    return t ? t->err : "";
}

const char *av__tls_alpn(const av_tls *t)
{
    return t ? t->alpn : "";
}

/* Which shared object really provides SSL_CTX_new to this library: in a
 * host process that exports its own OpenSSL (Node), symbol interposition
 * could bind our calls to the host's copy. The address we call through is
 * the one the dynamic linker bound, so dladdr names its object. */
static char tls_library_path[PATH_MAX];

static void tls_library_find(void)
{
    Dl_info info;
    SSL_CTX *(*fn)(const SSL_METHOD *) = SSL_CTX_new;
    void *addr;
    memcpy(&addr, &fn, sizeof(addr)); /* a function pointer's bits, without a cast warning */
    if (dladdr(addr, &info) && info.dli_fname) {
        char real[PATH_MAX];
        if (!strchr(info.dli_fname, '/')) {
            /* the main program (dladdr gives argv[0]): name the file */
            ssize_t n = readlink("/proc/self/exe", real, sizeof(real) - 1);
            if (n > 0) {
                real[n] = '\0';
                snprintf(tls_library_path, sizeof(tls_library_path), "%s", real);
                return;
            }
        }
        snprintf(tls_library_path, sizeof(tls_library_path), "%s",
                 realpath(info.dli_fname, real) ? real : info.dli_fname);
    }
}

AV_EXPORT const char *av_tls_library(const char **backend)
{
    char *path = tls_library_path;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (backend)
#ifdef AV_TLS_BORINGSSL
        *backend = "boringssl";
#else
        *backend = "openssl";
#endif
    pthread_once(&once, tls_library_find);
    return path[0] ? path : "?";
}
