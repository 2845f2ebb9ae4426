/* av_side.c - socket + TLS layer stack. */
#include "av_side.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

void av__side_init(av_side *s, int fd, size_t raw_max, size_t plain_max)
{
    memset(s, 0, sizeof(*s));
    s->fd = fd;
    av__buf_init(&s->raw_in, raw_max);
    av__buf_init(&s->raw_out, raw_max);
    s->pin = &s->raw_in;
    s->pout = &s->raw_out;
    s->plain_max = plain_max;
}

void av__side_free(av_side *s, int wipe)
{
    av__io_free(s->io);
    s->io = NULL;
    for (int i = 0; i < s->nlayers; i++) {
        av__tls_free(s->layer[i].tls);
        if (wipe) {
            av__buf_free_wipe(&s->layer[i].in);
            av__buf_free_wipe(&s->layer[i].out);
        } else {
            av__buf_free(&s->layer[i].in);
            av__buf_free(&s->layer[i].out);
        }
    }
    s->nlayers = 0;
    if (wipe) {
        av__buf_free_wipe(&s->raw_in);
        av__buf_free_wipe(&s->raw_out);
    } else {
        av__buf_free(&s->raw_in);
        av__buf_free(&s->raw_out);
    }
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

void av__side_set_error(av_side *s, int err, const char *msg)
{
    if (s->err)
        return;
    s->err = err;
    snprintf(s->errmsg, sizeof(s->errmsg), "%s", msg ? msg : av_strerror(err));
}

void av__side_tls_bufs(av_side *s, av_buf **cin, av_buf **cout)
{
    *cin = s->pin;
    *cout = s->pout;
}

int av__side_push_tls(av_side *s, av_tls *t)
{
    if (s->nlayers >= AV_SIDE_MAX_LAYERS) {
        av__tls_free(t);
        return AV_ERR_LIMIT;
    }
    av_side_layer *l = &s->layer[s->nlayers++];
    l->tls = t;
    l->hs_done = 0;
    av__buf_init(&l->in, s->plain_max);
    av__buf_init(&l->out, s->plain_max);
    s->pin = &l->in;
    s->pout = &l->out;
    return AV_OK;
}

int av__side_handshaking(const av_side *s)
{
    for (int i = 0; i < s->nlayers; i++)
        if (!s->layer[i].hs_done)
            return 1;
    return 0;
}

/* Read the socket into raw_in until EAGAIN or raw_in is full. */
static int side_read_socket(av_side *s)
{
    int progress = 0;
    while (s->readable && !s->sock_eof && av__buf_room(&s->raw_in) > 0) {
        size_t n = 0;
        int err = 0;
        uint8_t *p = av__buf_tail(&s->raw_in, &n, &err);
        if (!p)
            return err;
        ssize_t r = recv(s->fd, p, n, 0);
        if (r > 0) {
            av__buf_commit(&s->raw_in, (size_t)r);
            s->bytes_in += (unsigned long long)r;
            progress = 1;
            if ((size_t)r < n)
                s->readable = 0; /* drained for now */
        } else if (r == 0) {
            s->sock_eof = 1;
            progress = 1;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            s->readable = 0;
        } else if (errno != EINTR) {
            char m[120];
            snprintf(m, sizeof(m), "recv: %s", strerror(errno));
            av__side_set_error(s, AV_ERR_IO, m);
            s->sock_eof = 1;
            return AV_ERR_IO;
        }
    }
    return progress;
}

/* Run layer |i|: handshake, then decrypt into its plaintext buffer. */
static int side_run_layer(av_side *s, int i)
{
    av_side_layer *l = &s->layer[i];
    int progress = 0;
    if (!l->hs_done) {
        int rc = av__tls_handshake(l->tls);
        if (rc == AV_OK) {
            l->hs_done = 1;
            progress = 1;
        } else if (rc == AV_ERR_AGAIN) {
            return 0;
        } else {
            av__side_set_error(s, rc, av__tls_error(l->tls));
            return rc;
        }
    }
    while (av__buf_room(&l->in) > 0 && !s->tls_eof) {
        size_t n = 0;
        int err = 0;
        uint8_t *p = av__buf_tail(&l->in, &n, &err);
        if (!p)
            return err;
        ssize_t r = av__tls_read(l->tls, p, n);
        if (r > 0) {
            av__buf_commit(&l->in, (size_t)r);
            progress = 1;
        } else if (r == 0) {
            if (i == s->nlayers - 1)
                s->tls_eof = 1;
            progress = 1;
            break;
        } else if (r == AV_ERR_AGAIN) {
            break;
        } else {
            av__side_set_error(s, (int)r, av__tls_error(l->tls));
            return (int)r;
        }
    }
    return progress;
}

int av__side_pump_in(av_side *s)
{
    if (s->err)
        return s->err;
    int progress = side_read_socket(s);
    if (progress < 0)
        return progress;
    for (int i = 0; i < s->nlayers; i++) {
        int rc = side_run_layer(s, i);
        if (rc < 0)
            return rc;
        progress |= rc;
    }
    if (!s->in_eof) {
        if (s->nlayers == 0 ? s->sock_eof : (s->tls_eof || (s->sock_eof && s->raw_in.len == 0))) {
            /* With TLS, a socket EOF ends the plaintext stream once every
             * complete record has been decrypted. */
            s->in_eof = 1;
            progress = 1;
        }
    }
    return progress;
}

static int side_write_socket(av_side *s)
{
    int progress = 0;
    while (s->raw_out.len > 0) {
        ssize_t w = send(s->fd, av__buf_head(&s->raw_out), s->raw_out.len, MSG_NOSIGNAL);
        if (w > 0) {
            av__buf_consume(&s->raw_out, (size_t)w);
            s->bytes_out += (unsigned long long)w;
            progress = 1;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else {
            char m[120];
            snprintf(m, sizeof(m), "send: %s", strerror(errno));
            av__side_set_error(s, AV_ERR_IO, m);
            return AV_ERR_IO;
        }
    }
    if (s->raw_out.len == 0 && s->want_shut && !s->shut_wr &&
        (s->nlayers == 0 || (s->layer[0].closed && !s->layer[0].flush_pending))) {
        shutdown(s->fd, SHUT_WR);
        s->shut_wr = 1;
        progress = 1;
    }
    return progress;
}

int av__side_pump_out(av_side *s)
{
    if (s->err)
        return s->err;
    int progress = 0;
    /* Encrypt from the top layer down: layer i's out feeds layer i's
     * engine, whose cout is the buffer below. */
    for (int i = s->nlayers - 1; i >= 0; i--) {
        av_side_layer *l = &s->layer[i];
        if (!l->hs_done) {
            /* A handshake may need to write (e.g. after input arrived). */
            int rc = av__tls_handshake(l->tls);
            if (rc == AV_OK) {
                l->hs_done = 1;
                progress = 1;
            } else if (rc != AV_ERR_AGAIN) {
                av__side_set_error(s, rc, av__tls_error(l->tls));
                return rc;
            }
            if (!l->hs_done) {
                if (s->want_shut)
                    l->closed = 1; /* nothing to close cleanly yet */
                continue;
            }
        }
        if (av__tls_flush(l->tls) == AV_OK)
            l->flush_pending = 0;
        else
            l->flush_pending = 1;
        while (l->out.len > 0) {
            ssize_t w = av__tls_write(l->tls, av__buf_head(&l->out), l->out.len);
            if (w > 0) {
                av__buf_consume(&l->out, (size_t)w);
                progress = 1;
            } else if (w == AV_ERR_AGAIN) {
                break;
            } else {
                av__side_set_error(s, (int)w, av__tls_error(l->tls));
                return (int)w;
            }
        }
        if (s->want_shut && !l->closed && l->out.len == 0 && (i == s->nlayers - 1 || s->layer[i + 1].closed)) {
            av__tls_close(l->tls);
            l->closed = 1;
            l->flush_pending = av__tls_flush(l->tls) != AV_OK;
            progress = 1;
        }
    }
    int rc = side_write_socket(s);
    if (rc < 0)
        return rc;
    /* Output parked inside an engine (cout was full) can move now. */
    for (int i = 0; i < s->nlayers; i++) {
        av_side_layer *l = &s->layer[i];
        if (l->flush_pending && av__tls_flush(l->tls) == AV_OK) {
            l->flush_pending = 0;
            progress = 1;
        }
    }
    return progress | rc;
}

int av__side_events(const av_side *s)
{
    int ev = 0;
    if (s->fd < 0 || s->err)
        return 0;
    if (!s->sock_eof && av__buf_room(&s->raw_in) > 0)
        ev |= AV_EV_READ;
    if (s->raw_out.len > 0 || !av__side_flushed(s))
        ev |= AV_EV_WRITE;
    return ev;
}

void av__side_close_write(av_side *s)
{
    /* The close itself happens in av__side_pump_out, in order: each layer
     * sends close_notify only after its pending plaintext, and the FIN goes
     * out after everything below. */
    s->want_shut = 1;
}

int av__side_flushed(const av_side *s)
{
    for (int i = 0; i < s->nlayers; i++)
        if (s->layer[i].out.len > 0 || s->layer[i].flush_pending)
            return 0;
    return s->raw_out.len == 0;
}

int av__side_discard(av_side *s, size_t *budget)
{
    /* Whatever was buffered is dropped too. */
    for (int i = 0; i < s->nlayers; i++)
        av__buf_consume(&s->layer[i].in, av__buf_len(&s->layer[i].in));
    av__buf_consume(&s->raw_in, av__buf_len(&s->raw_in));
    if (s->fd < 0 || s->err || s->sock_eof)
        return 1;
    uint8_t sink[16384];
    while (s->readable) {
        size_t want = *budget < sizeof(sink) ? *budget : sizeof(sink);
        if (want == 0)
            return 1;
        ssize_t r = recv(s->fd, sink, want, 0);
        if (r > 0) {
            *budget -= (size_t)r;
            s->bytes_in += (unsigned long long)r;
        } else if (r == 0) {
            s->sock_eof = 1;
            return 1;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            s->readable = 0;
        } else if (errno != EINTR) {
            return 1;
        }
    }
    return 0;
}
