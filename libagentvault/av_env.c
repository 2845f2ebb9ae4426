/* av_env.c - the real clock and random source behind av_env (see av_env.h). */
#include "av_env.h"

#include <errno.h>
#include <sys/random.h>

void av__env_now_real(void *clock_ud, struct timespec *ts)
{
    (void)clock_ud;
    clock_gettime(CLOCK_REALTIME, ts);
}

int av__env_random_real(void *clock_ud, void *buf, size_t len)
{
    (void)clock_ud;
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t r = getrandom(p, len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        len -= (size_t)r;
    }
    return 0;
}
