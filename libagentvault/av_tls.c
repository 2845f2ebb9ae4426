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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
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

struct av_tls_server_ctx {
    SSL_CTX *ssl_ctx;
    av_ca *ca;
};

struct av_tls_client_ctx {
    SSL_CTX *ssl_ctx;
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
    ctx->ca = ca;
    ctx->ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx->ssl_ctx || !ctx_common(ctx->ssl_ctx))
        goto err;
    /* No resumption: every handshake presents the leaf and checks SNI. */
    SSL_CTX_set_options(ctx->ssl_ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx->ssl_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx->ssl_ctx, 0);
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
    ctx->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx->ssl_ctx || !ctx_common(ctx->ssl_ctx)) {
        av__errf(err, err_len, "cannot create the TLS client context: %s", tls_reason());
        goto err;
    }
    SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER, verify_note);
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
    SSL_CTX_free(ctx->ssl_ctx);
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
