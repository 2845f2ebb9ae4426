/* av_audit.h - the audit log: one JSON line per exchange, appended to a
 * file (or stdout). Opened at start, reopened on reload (rotation is
 * "rename, then SIGHUP"). A leaf: includes nothing of the library. */
#ifndef AV_AUDIT_H
#define AV_AUDIT_H

#include <stddef.h>

typedef struct av_audit {
    int fd; /* -1: off; 1: stdout; else the audit file */
} av_audit;

/* Off until opened. */
void av__audit_init(av_audit *a);
/* (Re)open for |path|: NULL turns records off, "stdout" writes them to
 * standard output, anything else is a file opened for appending (0600, no
 * symlinks). On failure AV_ERR_IO with |err| and the previous destination
 * stays. */
int av__audit_open(av_audit *a, const char *path, char *err, size_t err_len);
/* Are records written? */
int av__audit_on(const av_audit *a);
/* Append one record line (already JSON, with the newline) in one write;
 * no-op when off. */
void av__audit_write(av_audit *a, const char *line, size_t len);
void av__audit_close(av_audit *a);

#endif
