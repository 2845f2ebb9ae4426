/* replica.h - what a daemon behind a load balancer needs: a drain that a
 * health check can see, and a shared token store that is re-read when it
 * changes (README "Deploying", docs/CONFIG.md "Replicas").
 *
 * Drain: the first SIGTERM turns /healthz to 503 at once; the listeners
 * keep accepting for [proxy] drain_delay seconds, then close, and
 * in-flight exchanges get drain_timeout seconds. A second SIGTERM, or a
 * SIGINT, skips what is left of the delay.
 *
 * Tokens: with [proxy] tokens_file set, a thread stats the file once a
 * second (following symbolic links: a Kubernetes Secret volume updates by
 * swapping one) and asks the context for a reload when its identity, size
 * or times change. The reload re-reads it; a bad file keeps the tokens in
 * force (logged once per change).
 */
#ifndef AV_DAEMON_REPLICA_H
#define AV_DAEMON_REPLICA_H

#include <agentvault/agentvault.h>

/* replica_set_drain takes drain_delay and drain_timeout from |cfg| (at
 * start and on every reload; read by the signal handler). */
void replica_set_drain(const av_config *cfg);

/* replica_tokens_reading records the identity of |path| just before it is
 * read (at start and by each reload), so that a change made while it is
 * being read is noticed. */
void replica_tokens_reading(const char *path);

/* replica_start arms the drain timer and, when |tokens_file| is set,
 * starts the watch thread; both act on |ctx|. Returns 0, or -1 with a
 * one-line reason in |err|. */
int replica_start(av_ctx *ctx, const char *tokens_file, char *err, size_t err_len);

/* replica_on_signal is the SIGTERM/SIGINT handler (async-signal-safe). */
void replica_on_signal(int sig);

/* replica_stop ends the watch thread; call before freeing the context. */
void replica_stop(void);

#endif
