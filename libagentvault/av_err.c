/* av_err.c - error strings, version and the one-line error formatter. */
#include "av_err.h"

#include <stdarg.h>
#include <stdio.h>

#include <agentvault/agentvault.h>

#ifndef AV_VERSION_STRING
#define AV_VERSION_STRING "0.0.0"
#endif

AV_EXPORT const char *av_strerror(int err)
{
    switch (err) {
    case AV_OK: return "success";
    case AV_ERR_NOMEM: return "out of memory";
    case AV_ERR_INVALID: return "invalid argument or input";
    case AV_ERR_IO: return "input/output error";
    case AV_ERR_TLS: return "TLS failure";
    case AV_ERR_PARSE: return "malformed protocol message";
    case AV_ERR_LIMIT: return "limit exceeded";
    case AV_ERR_NOTFOUND: return "not found";
    case AV_ERR_CONFIG: return "invalid configuration";
    case AV_ERR_DEFERRED: return "answer deferred";
    case AV_ERR_AGAIN: return "try again";
    case AV_ERR_CA: return "certificate authority unusable";
    case AV_ERR_VERIFY: return "certificate verification failed";
    case AV_ERR_DENIED: return "denied by policy";
    case AV_ERR_SSRF: return "destination address not allowed";
    case AV_ERR_TIMEOUT: return "timed out";
    case AV_ERR_CLOSED: return "connection closed";
    case AV_ERR_STATE: return "invalid state";
    case AV_ERR_SECRET: return "credential unavailable";
    case AV_ERR_AUTH: return "wrong password or key";
    case AV_ERR_CORRUPT: return "data corrupt or tampered with";
    default: return "unknown error";
    }
}

AV_EXPORT const char *av_version_string(void)
{
    return AV_VERSION_STRING;
}

void av__errf(char *err, size_t len, const char *fmt, ...)
{
    if (!err || !len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}
