/* av_log.h - the library's log sink. The library never prints. */
#ifndef AV_LOG_H
#define AV_LOG_H

#include <agentvault/agentvault.h>

typedef struct av_logger {
    av_log_fn fn;
    void *user_data;
    int max_level;
} av_logger;

/* av__log formats one line and hands it to the handler, if any, when
 * |level| <= max_level. Never pass secret bytes as arguments. */
void av__log(const av_logger *lg, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static inline int av__log_enabled(const av_logger *lg, int level)
{
    return lg && lg->fn && level <= lg->max_level;
}

#endif
