/* av_audit.c - the audit log (see av_audit.h). */
#include "av_audit.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

void av__audit_init(av_audit *a)
{
    a->fd = -1;
}

int av__audit_open(av_audit *a, const char *path, char *err, size_t err_len)
{
    if (!path) {
        a->fd = -1;
        return AV_OK;
    }
    if (strcmp(path, "stdout") == 0) {
        a->fd = 1;
        return AV_OK;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        if (err && err_len)
            snprintf(err, err_len, "cannot open audit log %s: %s", path, strerror(errno));
        return AV_ERR_IO;
    }
    if (a->fd > 2)
        close(a->fd);
    a->fd = fd;
    return AV_OK;
}

int av__audit_on(const av_audit *a)
{
    return a->fd >= 0;
}

void av__audit_write(av_audit *a, const char *line, size_t len)
{
    if (a->fd < 0)
        return;
    /* One write per record: O_APPEND keeps records whole. */
    while (len > 0) {
        ssize_t w = write(a->fd, line, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        line += w;
        len -= (size_t)w;
    }
}

void av__audit_close(av_audit *a)
{
    if (a->fd > 2)
        close(a->fd);
    a->fd = -1;
}
