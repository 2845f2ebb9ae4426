/* av_audit.c - the audit log (see av_audit.h). */
#include "av_audit.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"

void av__audit_init(av_audit *a)
{
    atomic_init(&a->fd, -1);
    a->file = -1;
}

/* Put |fd| (closed here) at the file's descriptor number. */
static int audit_place(av_audit *a, int fd)
{
    if (a->file < 0) {
        a->file = fd;
        return 0;
    }
    int rc;
    while ((rc = dup2(fd, a->file)) < 0 && errno == EINTR)
        ;
    close(fd);
    return rc < 0 ? -1 : 0;
}

int av__audit_open(av_audit *a, const char *path, char *err, size_t err_len)
{
    if (!path || strcmp(path, "stdout") == 0) {
        /* a reload away from a file: writers go elsewhere, the file is let go */
        atomic_store(&a->fd, path ? 1 : -1);
        if (a->file >= 0) {
            int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (null >= 0)
                audit_place(a, null);
        }
        return AV_OK;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || audit_place(a, fd) < 0) {
        if (err && err_len)
            snprintf(err, err_len, "cannot open audit log %s: %s", path, strerror(errno));
        return AV_ERR_IO;
    }
    atomic_store(&a->fd, a->file);
    return AV_OK;
}

int av__audit_on(const av_audit *a)
{
    return atomic_load_explicit(&a->fd, memory_order_relaxed) >= 0;
}

void av__audit_write(av_audit *a, const char *line, size_t len)
{
    int fd = atomic_load_explicit(&a->fd, memory_order_relaxed);
    if (fd < 0)
        return;
    /* One write per record: O_APPEND keeps records whole, also when
     * several workers write at once. */
    while (len > 0) {
        ssize_t w = write(fd, line, len);
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
    atomic_store(&a->fd, -1);
    if (a->file >= 0)
        close(a->file);
    a->file = -1;
}

/* JSON string body of |in| (quotes added by the caller); control and
 * non-ASCII bytes become \u00XX, so the record is always valid JSON. */
static size_t json_str(char *out, size_t cap, const char *in)
{
    return av__json_escape_str(out, cap, in, AV__JSON_BYTES);
}

void av__audit_record(av_audit *a, const av_xrecord *r)
{
    if (!av__audit_on(a))
        return;
    struct tm tm;
    gmtime_r(&r->when.tv_sec, &tm);
    char when[80];
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, r->when.tv_nsec / 1000000);
    char tok[320] = "null", svc[320] = "null", cred[1000] = "[]", err[500] = "null";
    char e1[300], e2[300];
    if (r->token) {
        json_str(e1, sizeof(e1), r->token);
        snprintf(tok, sizeof(tok), "\"%s\"", e1);
    }
    if (r->service) {
        json_str(e1, sizeof(e1), r->service);
        snprintf(svc, sizeof(svc), "\"%s\"", e1);
        if (r->credential_ref) {
            /* command: references may carry arguments: name the program only */
            const char *refs[3] = {r->credential_ref, r->credential_ref2, r->credential_ref3};
            size_t o = 0;
            cred[o++] = '[';
            for (size_t i = 0; i < 3; i++) {
                const char *ref = refs[i];
                if (!ref)
                    continue;
                char shown[200];
                if (strncmp(ref, "command:", 8) == 0)
                    snprintf(shown, sizeof(shown), "command:%.*s", (int)strcspn(ref + 8, " \t"), ref + 8);
                else
                    snprintf(shown, sizeof(shown), "%s", ref);
                json_str(e2, sizeof(e2), shown);
                int w = snprintf(cred + o, sizeof(cred) - o, "%s\"%s\"", o > 1 ? "," : "", e2);
                if (w < 0 || (size_t)w >= sizeof(cred) - o - 1)
                    break;
                o += (size_t)w;
            }
            cred[o++] = ']';
            cred[o] = '\0';
        }
    }
    char kind[40] = "null";
    if (r->auth_kind)
        snprintf(kind, sizeof(kind), "\"%.30s\"", r->auth_kind);
    if (r->error) {
        json_str(e1, sizeof(e1), r->error);
        snprintf(err, sizeof(err), "\"%s\"", e1);
    }
    char method[64], host[600], path[600];
    json_str(method, sizeof(method), r->method);
    json_str(host, sizeof(host), r->host);
    json_str(path, sizeof(path), r->path);
    char gw[200] = "null";
    if (r->gateway) {
        json_str(e1, sizeof(e1), r->gateway);
        snprintf(gw, sizeof(gw), "\"%.150s\"", e1);
    }
    char dec[200] = "";
    if (r->decision)
        snprintf(dec, sizeof(dec), ",\"decision\":\"%.12s\",\"decided_by\":\"%.12s\",\"decide_id\":%s%.22s%s,"
                 "\"decide_ms\":%.1f",
                 r->decision, r->decided_by ? r->decided_by : "-", r->decide_id ? "\"" : "",
                 r->decide_id ? r->decide_id : "null", r->decide_id ? "\"" : "", r->decide_ms);
    char line[4000];
    int n = snprintf(line, sizeof(line),
                     "{\"time\":\"%s\",\"token\":%s,\"gateway\":%s,\"service\":%s,\"method\":\"%s\",\"host\":\"%s\","
                     "\"path\":\"%s\",\"status\":%d,\"bytes_up\":%llu,\"bytes_down\":%llu,\"ms\":%.1f,"
                     "\"proto\":\"%s>%s\",\"injected\":%s,\"auth\":%s,\"mint\":%s%s%s,\"redactions\":%lu,\"end\":\"%s\","
                     "\"error\":%s%s}\n",
                     when, tok, gw, svc, method, host, path, r->status, r->bytes_up, r->bytes_down, r->ms,
                     r->proto_agent, r->proto_up, cred, kind, r->mint ? "\"" : "", r->mint ? r->mint : "null",
                     r->mint ? "\"" : "", r->redactions, r->end, err, dec);
    if (n > 0 && (size_t)n < sizeof(line))
        av__audit_write(a, line, (size_t)n);
}

void av__audit_log_line(const av_logger *log, const av_xrecord *r)
{
    char err[240] = "";
    if (r->error) {
        char clean[200];
        av__sanitize_line(clean, sizeof(clean), r->error, strlen(r->error), 0);
        for (char *q = clean; *q; q++)
            if (*q == '"')
                *q = '\'';
        snprintf(err, sizeof(err), " error=\"%s\"", clean);
    }
    char red[40] = "";
    if (r->redactions)
        snprintf(red, sizeof(red), " redactions=%lu", r->redactions);
    /* An agent that stops reading (a cancelled stream, an aborted SSE
     * response) is routine, not a fault of ours or the upstream's: info. */
    int fault = r->error && !(r->end && strcmp(r->end, "client_abort") == 0);
    char dec[80] = "";
    if (r->decision)
        snprintf(dec, sizeof(dec), " decision=%.12s by=%.12s", r->decision, r->decided_by ? r->decided_by : "-");
    av__log(log, fault ? AV_LOG_WARN : AV_LOG_INFO,
            "exchange method=%s host=%s path=%s service=%s status=%d bytes_up=%llu bytes_down=%llu ms=%.1f "
            "proto=%s>%s%s%s%s%s end=%s%s",
            r->method, r->host, r->path, r->service ? r->service : "-", r->status, r->bytes_up, r->bytes_down,
            r->ms, r->proto_agent, r->proto_up, r->token ? " token=" : "", r->token ? r->token : "", red, dec, r->end,
            err);
}
