/* av_log.c - log sink. */
#include "av_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "av_enc.h"

void av__log(const av_logger *lg, int level, const char *fmt, ...)
{
    if (!av__log_enabled(lg, level))
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* One line: fold control characters a peer might have smuggled in. */
    av__sanitize_line(line, sizeof(line), line, strlen(line), AV__LINE_BLANK | AV__LINE_KEEP_HIGH);
    lg->fn(lg->user_data, level, line);
}

AV_EXPORT int av_log_level_parse(const char *name)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    if (!name)
        return AV_ERR_INVALID;
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return AV_ERR_INVALID;
}
