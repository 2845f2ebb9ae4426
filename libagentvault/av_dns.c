/* av_dns.c - c-ares bound to the event loop. */
#include "av_dns.h"

#include <string.h>

#include <ares.h>
#include <agentvault/agentvault.h>

#include "av_mem.h"

#define AV_DNS_MAX_FDS 16

struct av_dns {
    av_loop *loop;
    ares_channel channel;
    av_timer *timer;
    struct {
        int fd;
        av_io *io;
    } fds[AV_DNS_MAX_FDS];
};

struct av_dns_query {
    av_dns *dns;
    av_dns_cb cb;
    void *ud;
    int port;
    int cancelled;
    int in_start;  /* inside ares_getaddrinfo: do not free on completion */
    int finished;
};

static void dns_arm_timer(av_dns *d)
{
    struct timeval tv, *tvp = ares_timeout(d->channel, NULL, &tv);
    if (tvp)
        av__timer_start(d->timer, (double)tvp->tv_sec + tvp->tv_usec / 1e6);
    else
        av__timer_stop(d->timer);
}

static void dns_on_io(void *ud, int revents);

/* Called by c-ares whenever it wants a socket watched differently. */
static void dns_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    av_dns *d = data;
    int slot = -1, free_slot = -1;
    for (int i = 0; i < AV_DNS_MAX_FDS; i++) {
        if (d->fds[i].io && d->fds[i].fd == fd)
            slot = i;
        else if (!d->fds[i].io && free_slot < 0)
            free_slot = i;
    }
    if (!readable && !writable) {
        if (slot >= 0) {
            av__io_free(d->fds[slot].io);
            d->fds[slot].io = NULL;
        }
        return;
    }
    if (slot < 0) {
        if (free_slot < 0)
            return; /* c-ares will time the query out */
        slot = free_slot;
        d->fds[slot].fd = fd;
        d->fds[slot].io = av__io_new(d->loop, fd, dns_on_io, d);
        if (!d->fds[slot].io)
            return;
    }
    av__io_set(d->fds[slot].io, (readable ? AV_EV_READ : 0) | (writable ? AV_EV_WRITE : 0));
}

static void dns_on_io(void *ud, int revents)
{
    av_dns *d = ud;
    /* We do not know which fd fired from here cheaply; let c-ares poll all
     * of its sockets in non-blocking mode. */
    fd_set r, w;
    FD_ZERO(&r);
    FD_ZERO(&w);
    int nfds = ares_fds(d->channel, &r, &w);
    (void)revents;
    if (nfds > 0)
        ares_process(d->channel, &r, &w);
    dns_arm_timer(d);
}

static void dns_on_timer(void *ud)
{
    av_dns *d = ud;
    ares_process_fd(d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    dns_arm_timer(d);
}

int av__dns_new(av_dns **out, av_loop *loop, double timeout)
{
    static int lib_init;
    if (!lib_init) {
        if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS)
            return AV_ERR_IO;
        lib_init = 1;
    }
    av_dns *d = av__calloc(1, sizeof(*d));
    if (!d)
        return AV_ERR_NOMEM;
    d->loop = loop;
    d->timer = av__timer_new(loop, dns_on_timer, d);
    if (!d->timer) {
        av__free(d);
        return AV_ERR_NOMEM;
    }
    struct ares_options opt;
    memset(&opt, 0, sizeof(opt));
    opt.sock_state_cb = dns_sock_state;
    opt.sock_state_cb_data = d;
    opt.timeout = (int)(timeout * 1000 / 2);
    if (opt.timeout < 500)
        opt.timeout = 500;
    opt.tries = 2;
    int rc = ares_init_options(&d->channel, &opt,
                               ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) {
        av__timer_free(d->timer);
        av__free(d);
        return rc == ARES_ENOMEM ? AV_ERR_NOMEM : AV_ERR_IO;
    }
    *out = d;
    return AV_OK;
}

void av__dns_free(av_dns *d)
{
    if (!d)
        return;
    ares_destroy(d->channel); /* runs pending callbacks with ARES_EDESTRUCTION */
    for (int i = 0; i < AV_DNS_MAX_FDS; i++)
        av__io_free(d->fds[i].io);
    av__timer_free(d->timer);
    av__free(d);
}

static void dns_release(av_dns_query *q)
{
    q->finished = 1;
    if (!q->in_start)
        av__free(q);
}

static void dns_done(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    (void)timeouts;
    av_dns_query *q = arg;
    if (q->cancelled || status == ARES_EDESTRUCTION) {
        if (ai)
            ares_freeaddrinfo(ai);
        dns_release(q);
        return;
    }
    if (status != ARES_SUCCESS || !ai || !ai->nodes) {
        int err = status == ARES_ETIMEOUT ? AV_ERR_TIMEOUT
                  : (status == ARES_ENOTFOUND || status == ARES_ENODATA || status == ARES_SUCCESS)
                      ? AV_ERR_NOTFOUND
                      : AV_ERR_IO;
        const char *why = status == ARES_SUCCESS ? "no addresses" : ares_strerror(status);
        if (ai)
            ares_freeaddrinfo(ai);
        q->cb(q->ud, err, why, NULL);
        dns_release(q);
        return;
    }
    av_dns_result res;
    memset(&res, 0, sizeof(res));
    for (struct ares_addrinfo_node *n = ai->nodes; n && res.naddrs < AV_DNS_MAX_ADDRS; n = n->ai_next) {
        if (n->ai_family != AF_INET && n->ai_family != AF_INET6)
            continue;
        if ((size_t)n->ai_addrlen > sizeof(res.addrs[0]))
            continue;
        memcpy(&res.addrs[res.naddrs], n->ai_addr, n->ai_addrlen);
        res.lens[res.naddrs] = n->ai_addrlen;
        if (n->ai_family == AF_INET)
            ((struct sockaddr_in *)&res.addrs[res.naddrs])->sin_port = htons((uint16_t)q->port);
        else
            ((struct sockaddr_in6 *)&res.addrs[res.naddrs])->sin6_port = htons((uint16_t)q->port);
        res.naddrs++;
    }
    ares_freeaddrinfo(ai);
    if (res.naddrs == 0)
        q->cb(q->ud, AV_ERR_NOTFOUND, "no usable addresses", NULL);
    else
        q->cb(q->ud, 0, "", &res);
    dns_release(q);
}

av_dns_query *av__dns_resolve(av_dns *d, const char *host, int port, av_dns_cb cb, void *user_data)
{
    av_dns_query *q = av__calloc(1, sizeof(*q));
    if (!q) {
        cb(user_data, AV_ERR_NOMEM, "out of memory", NULL);
        return NULL;
    }
    q->dns = d;
    q->cb = cb;
    q->ud = user_data;
    q->port = port;
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    q->in_start = 1;
    ares_getaddrinfo(d->channel, host, NULL, &hints, dns_done, q);
    q->in_start = 0;
    dns_arm_timer(d);
    if (q->finished) {
        av__free(q);
        return NULL;
    }
    return q;
}

void av__dns_cancel(av_dns_query *q)
{
    if (q)
        q->cancelled = 1;
}
