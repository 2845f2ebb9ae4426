/* av_audit.h - the audit log: one JSON line per exchange, appended to a
 * file (or stdout). Opened at start, reopened on reload (rotation is
 * "rename, then SIGHUP"). Also the exchange's log line, from the same
 * record. A leaf: includes only foundations (av_log, av_enc). */
#ifndef AV_AUDIT_H
#define AV_AUDIT_H

#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

#include "av_log.h"

/* Every worker writes records (one write(2) each, O_APPEND: whole lines);
 * a reload reopens on one thread while the others write. The file keeps
 * one descriptor number for the context's life (|file|: a new file is
 * dup2()ed onto it, and turning the file off puts /dev/null there), so a
 * writer that read |fd| just before a reopen never writes into a
 * descriptor that was closed and reused. */
typedef struct av_audit {
    _Atomic int fd; /* -1: off; 1: stdout; else |file| */
    int file;       /* the audit file's descriptor, -1 until opened (reopening thread only) */
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

/* What an exchange leaves behind (av_exchange.c fills it): never a secret
 * (the path has no query, the credential is named by its reference, the
 * error is a proxy-made reason). NULL strings are "none". */
typedef struct av_xrecord {
    struct timespec when;           /* wall clock (the audit record's time) */
    const char *method, *host, *path;
    const char *service, *token, *gateway;
    const char *credential_ref;     /* the injected credential's reference; NULL: nothing injected */
    const char *credential_ref2;    /* aws-sigv4: the access key id's and the session token's */
    const char *credential_ref3;    /* references (NULL: none) */
    const char *auth_kind;          /* how it was injected ("bearer", "aws-sigv4", ...); NULL: not */
    const char *mint;               /* a minted credential: "minted" or "cached"; NULL: not minted */
    int status;
    unsigned long long bytes_up, bytes_down;
    double ms;
    const char *proto_agent, *proto_up; /* "h1" | "h2" | "-" */
    unsigned long redactions;
    const char *end;                /* AV_END_* name */
    const char *error;
    /* A decision (decide = ...): NULL when the service asks for none. */
    const char *decision;           /* "allow" | "deny" | "cancelled" */
    const char *decided_by;         /* "program" | "person" | "rule" | "timeout" | "agent" | "proxy" */
    const char *decide_id;          /* the held request's id (NULL: not held) */
    double decide_ms;               /* how long it waited */
} av_xrecord;

/* The audit record of an exchange: one JSON line (a command: reference is
 * shown as its program only); no-op when the audit log is off. */
void av__audit_record(av_audit *a, const av_xrecord *r);
/* The exchange's one log line (WARN with an error, else INFO). */
void av__audit_log_line(const av_logger *log, const av_xrecord *r);

#endif
