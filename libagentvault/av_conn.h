/* av_conn.h - agent connections, as the context sees them: accept one
 * (with the context's av_env), drain them all, destroy one. Everything
 * else of a connection is the conn family's own (av_conn_int.h). */
#ifndef AV_CONN_H
#define AV_CONN_H

#include <sys/socket.h>

#include "av_env.h"

typedef struct av_conn av_conn;

/* Take |fd| (accepted from |peer|; |gw|: the gateway it serves, NULL for
 * the proxy) as a new connection of |env|'s context. AV_OK,
 * AV_ERR_DENIED (a gateway refuses a peer not on loopback) or
 * AV_ERR_NOMEM; on error the caller closes |fd|. */
int av__conn_accept(const av_env *env, int fd, const struct sockaddr *peer, socklen_t len, av_gw *gw);
/* Shutdown: every connection finishes its current exchanges, then closes;
 * idle ones close at once. */
void av__conn_drain_all(const av_env *env);
/* Free a connection now (its open exchanges are recorded as ended by
 * c->end, default shutdown). */
void av__conn_destroy(av_conn *c);

#endif
