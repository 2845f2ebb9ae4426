/* av_side.h - one end of a relay: a socket plus a stack of TLS layers.
 *
 * Bytes read from the socket land in raw_in; each TLS layer decrypts from
 * the buffer below it into its own plaintext buffer; the protocol code
 * reads the top plaintext buffer (pin) and appends to the top output
 * buffer (pout), which the layers encrypt downwards into raw_out.
 * Without TLS, pin/pout are raw_in/raw_out themselves (no copy).
 *
 * Two layers happen when an agent uses an https:// proxy URL and then
 * CONNECTs to a host we intercept: TLS to the proxy, MITM TLS inside.
 * Every buffer is bounded: a full buffer stops reads below it, which is
 * how back-pressure reaches the socket.
 */
#ifndef AV_SIDE_H
#define AV_SIDE_H

#include <stddef.h>

#include "av_buf.h"
#include "av_ev.h"
#include "av_tls.h"

#define AV_SIDE_MAX_LAYERS 2

typedef struct av_side_layer {
    av_tls *tls;
    av_buf in;  /* plaintext produced by this layer */
    av_buf out; /* plaintext waiting to be encrypted by this layer */
    int hs_done;
    int flush_pending; /* the engine holds output that did not fit below */
    int closed;        /* close_notify queued */
} av_side_layer;

typedef struct av_side {
    int fd;
    av_io *io;
    av_buf raw_in, raw_out;
    av_side_layer layer[AV_SIDE_MAX_LAYERS];
    int nlayers;
    av_buf *pin, *pout;
    size_t plain_max;
    unsigned readable : 1;   /* the socket may have bytes */
    unsigned sock_eof : 1;   /* recv returned 0 */
    unsigned tls_eof : 1;    /* close_notify received */
    unsigned in_eof : 1;     /* no more plaintext will arrive */
    unsigned shut_wr : 1;    /* we sent FIN */
    unsigned want_shut : 1;  /* send FIN once raw_out drains */
    int err;                 /* first fatal error (AV_ERR_*), 0 if none */
    char errmsg[200];
    unsigned long long bytes_in, bytes_out; /* socket-level */
} av_side;

void av__side_init(av_side *s, int fd, size_t raw_max, size_t plain_max);
/* av__side_free closes the socket and frees everything; |wipe| clears the
 * plaintext buffers first (sides that carried injected credentials). */
void av__side_free(av_side *s, int wipe);

/* Buffers a new TLS engine must use as its cin/cout: the current top. */
void av__side_tls_bufs(av_side *s, av_buf **cin, av_buf **cout);
/* av__side_push_tls adds |t| as the new top layer (takes ownership). */
int av__side_push_tls(av_side *s, av_tls *t);
int av__side_handshaking(const av_side *s);

/* av__side_pump_in reads the socket (if readable) and runs every layer.
 * Returns > 0 if anything moved, 0 if not, or a negative AV_ERR_* (also
 * stored in s->err with a message). */
int av__side_pump_in(av_side *s);
/* av__side_pump_out encrypts pending plaintext downwards and writes
 * raw_out to the socket. Same return convention. */
int av__side_pump_out(av_side *s);
/* av__side_events returns the AV_EV_* interest the side needs. */
int av__side_events(const av_side *s);
/* av__side_close_write queues close_notify on every layer and a FIN. */
void av__side_close_write(av_side *s);
/* av__side_flushed: nothing left to write at any level. */
int av__side_flushed(const av_side *s);
/* av__side_discard reads and drops what the peer still sends after we
 * closed our side (a lingering close), at most |*budget| bytes (counted
 * down). Returns 1 once the peer closed, failed or the budget is spent,
 * 0 while it may send more (wait for readability). */
int av__side_discard(av_side *s, size_t *budget);
/* av__side_set_error records the first error. */
void av__side_set_error(av_side *s, int err, const char *msg);

#endif
