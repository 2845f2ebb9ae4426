/* av_tls.h - TLS engines over caller-owned buffers (the TLS boundary).
 *
 * av_tls.c and av_ca.c are the only files that include libssl / X.509
 * headers. Both BoringSSL (default) and OpenSSL 3 (-Dtls=openssl) are
 * supported; their differences live in those two files.
 *
 * An engine never touches a socket. Ciphertext arriving from the peer is
 * appended by the caller to the engine's input buffer (|cin|); ciphertext
 * the engine produces is appended to its output buffer (|cout|), which the
 * caller writes to the socket. Both buffers belong to the caller and are
 * bounded; when |cout| is full the engine reports AV_ERR_AGAIN for writes
 * (back-pressure).
 */
#ifndef AV_TLS_H
#define AV_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "av_buf.h"

typedef struct av_ca av_ca;
typedef struct av_tls av_tls;
typedef struct av_tls_server_ctx av_tls_server_ctx;
typedef struct av_tls_client_ctx av_tls_client_ctx;

/* Server side: toward the agent (MITM) and the proxy's own TLS port.
 * Certificates are minted by |ca| (which must outlive the ctx). Offers
 * ALPN "http/1.1", and "h2" on engines marked with av__tls_offer_h2.
 * TLS 1.2 and 1.3. */
int av__tls_server_ctx_new(av_tls_server_ctx **out, av_ca *ca, char *err, size_t err_len);
void av__tls_server_ctx_free(av_tls_server_ctx *ctx);

/* av__tls_server_new creates an engine that presents a leaf for |host|
 * (a validated, lower-case DNS name or IP literal; minted or taken from
 * the CA's cache). If the ClientHello carries an SNI that is not |host|
 * (case-insensitive), the handshake fails (av__tls_handshake returns
 * AV_ERR_TLS and av__tls_error() says "SNI x does not match y"). When
 * |extra_names| is not NULL it is a NULL-terminated list of additional
 * names the leaf also covers (used for the proxy's own certificate; SNI
 * may then be any of them). */
int av__tls_server_new(av_tls **out, av_tls_server_ctx *ctx, const char *host,
                       const char *const *extra_names, av_buf *cin, av_buf *cout);

/* Client side: toward upstreams. Verifies the chain against the system
 * roots (Debian's /etc/ssl/certs/ca-certificates.crt) plus the optional
 * |extra_cafile|, checks the host name (or IP), sends SNI for DNS names.
 * Offers ALPN "http/1.1" (and "h2" after av__tls_offer_h2). */
int av__tls_client_ctx_new(av_tls_client_ctx **out, const char *extra_cafile,
                           char *err, size_t err_len);
void av__tls_client_ctx_free(av_tls_client_ctx *ctx);
int av__tls_client_new(av_tls **out, av_tls_client_ctx *ctx, const char *host,
                       av_buf *cin, av_buf *cout);

void av__tls_free(av_tls *t);

/* Session resumption (docs/SECURITY.md). Off when a ctx is created.
 *
 * av__tls_server_ctx_resumption turns TLS 1.3 tickets on or off for the
 * agent side: stateless tickets (one per handshake) sealed with random
 * keys held in memory only, a new key every hour, the one before still
 * opening tickets for an hour; TLS 1.2 tickets are never accepted, 0-RTT
 * never enabled, PSK always with (EC)DHE. Every server engine is bound to
 * a session id context derived from the names its leaf covers and the CA,
 * set before the handshake: a ticket from a tunnel to one host never
 * resumes in a tunnel to another. Turning it off wipes the keys.
 *
 * av__tls_client_ctx_resumption turns the origin session cache on or off
 * (off empties it). Resumed handshakes add one to |*resumed| (NULL: not
 * counted) when they complete. Loop thread only. */
void av__tls_server_ctx_resumption(av_tls_server_ctx *ctx, int on, _Atomic unsigned long long *resumed);
void av__tls_client_ctx_resumption(av_tls_client_ctx *ctx, int on, _Atomic unsigned long long *resumed);

/* av__tls_client_resume, on a client engine before its handshake (and
 * after av__tls_offer_h2), names the cache key of its sessions: |key| says
 * everything a session must share to be offered again besides the
 * verified name and the ALPN offer (which are added): the upstream pool
 * key (scheme, host, port, credential scope, route). The newest cached
 * session for it, if any, is offered and removed (TLS 1.3 tickets are
 * single-use); tickets the origin sends on this connection are kept under
 * it. Returns AV_OK (also when resumption is off), AV_ERR_NOMEM,
 * AV_ERR_STATE. A resumed session is one a verified handshake with the
 * same name made. */
int av__tls_client_resume(av_tls *t, const char *key);

/* av__tls_client_sessions_flush drops every cached origin session (a
 * change of what verifies origins must not be skipped by a resumption);
 * av__tls_client_sessions counts those kept. */
void av__tls_client_sessions_flush(av_tls_client_ctx *ctx);
size_t av__tls_client_sessions(const av_tls_client_ctx *ctx);

/* av__tls_server_ctx_age_keys makes the ticket keys |seconds| older
 * (tests of the rotation). */
void av__tls_server_ctx_age_keys(av_tls_server_ctx *ctx, long seconds);

/* av__tls_resumed: the completed handshake resumed a session. */
int av__tls_resumed(const av_tls *t);

/* av__tls_offer_h2 makes an engine negotiate HTTP/2 too, before its
 * handshake: a server engine selects "h2" when the client offers it
 * (else "http/1.1"); a client engine offers "h2" before "http/1.1".
 * Returns AV_OK, AV_ERR_STATE after the handshake, AV_ERR_TLS. */
int av__tls_offer_h2(av_tls *t);

/* av__tls_handshake advances the handshake using bytes in cin, appending
 * to cout. Returns AV_OK when complete, AV_ERR_AGAIN when it needs more
 * input (or room in cout), AV_ERR_VERIFY for a bad peer certificate
 * (client side), AV_ERR_TLS otherwise. */
int av__tls_handshake(av_tls *t);

/* av__tls_read decrypts into buf. Returns the number of bytes (> 0),
 * 0 on a clean close_notify, AV_ERR_AGAIN when more ciphertext is needed,
 * AV_ERR_TLS on a protocol error. */
ssize_t av__tls_read(av_tls *t, uint8_t *buf, size_t len);

/* av__tls_write encrypts up to len bytes into cout. Returns bytes taken
 * (> 0), AV_ERR_AGAIN when cout has no room, AV_ERR_TLS on error. */
ssize_t av__tls_write(av_tls *t, const uint8_t *buf, size_t len);

/* av__tls_close queues a close_notify into cout (best effort). */
void av__tls_close(av_tls *t);

/* av__tls_flush moves output the engine produced while cout was full (at
 * most a few KiB: a handshake flight, an alert) into cout. Every other
 * engine call does this first; call it when cout has drained and nothing
 * else is due. Returns AV_OK when nothing is left, AV_ERR_AGAIN otherwise. */
int av__tls_flush(av_tls *t);

/* av__tls_pending returns the number of decrypted bytes buffered inside
 * the engine (av__tls_read returns them without new input). */
size_t av__tls_pending(const av_tls *t);

/* av__tls_error returns a one-line description of the last failure
 * ("" if none), e.g. "certificate verify failed: self-signed certificate"
 * or "SNI evil.example does not match api.openai.com". */
const char *av__tls_error(const av_tls *t);

/* av__tls_alpn returns the negotiated ALPN protocol ("" if none). */
const char *av__tls_alpn(const av_tls *t);

/* av__tls_is_client_hello reports whether |b| (the first bytes a client
 * sent, at least 1) starts a TLS handshake record (0x16). */
static inline int av__tls_is_client_hello(const uint8_t *b, size_t len)
{
    return len >= 1 && b[0] == 0x16;
}

#endif
