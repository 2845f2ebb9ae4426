/* run_int.h - what the parts of `agentvault run` share (daemon-private).
 *
 * run.c is the command, the environment and the child; run_http.c the
 * proxy URL and the blocking GET of /ca.pem and /agent-env; run_ca.c the
 * private directory with ca.pem and bundle.pem.
 */
#ifndef AV_DAEMON_RUN_INT_H
#define AV_DAEMON_RUN_INT_H

#include <stddef.h>

#define RUN_TIMEOUT_MS 5000                 /* per request: connect + exchange */
#define RUN_MAX_HEAD (16 * 1024)            /* response head */
#define RUN_MAX_BODY (1024 * 1024)          /* response body */
#define RUN_MAX_ENV_LINES 256               /* placeholders taken from /agent-env */
#define RUN_MAX_NAME 128
#define RUN_MAX_VALUE 4096
#define RUN_MAX_TOKEN 1024
#define RUN_MAX_HOST 253
#define RUN_MAX_NO_PROXY (64 * 1024)        /* NO_PROXY value we build */
#define RUN_SYSTEM_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define RUN_MAX_SYSTEM_BUNDLE (64 * 1024 * 1024)

/* Exit statuses of run itself (the child's status is passed through). */
enum { RUN_EXIT_FAIL = 1, RUN_EXIT_USAGE = 2, RUN_EXIT_NOEXEC = 126, RUN_EXIT_NOTFOUND = 127 };

/* Results of run_http_get. */
enum { HTTP_OK = 0, HTTP_E_CONNECT = -1, HTTP_E_PROTO = -2 };

/* The proxy address from --proxy / AGENTVAULT_PROXY / the default. */
typedef struct {
    char host[RUN_MAX_HOST + 1]; /* without brackets */
    char port[6];
    int ipv6;                    /* an IPv6 literal: bracketed in URLs */
    char hostport[RUN_MAX_HOST + 10]; /* HOST:PORT or [HOST]:PORT */
    char url[RUN_MAX_HOST + 20];      /* http://HOST:PORT, no credentials */
} run_proxy;

/* A response of the tiny HTTP client. */
typedef struct {
    int status;
    char reason[80];
    char *body;
    size_t body_len;
} http_resp;

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* run_msg prints "agentvault: <msg>" and a newline on stderr. */
void run_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* run_proxy_parse parses http://HOST:PORT[/] into p. On error returns -1
 * with *why set to a description (which never contains the URL: it could
 * hold a token). */
int run_proxy_parse(const char *url, run_proxy *p, const char **why);

/* run_http_get GETs path from the proxy (origin-form, Connection: close)
 * with a deadline of RUN_TIMEOUT_MS. |auth| is a Proxy-Authorization value
 * or NULL. The body is read only for 200 responses. Returns HTTP_OK,
 * HTTP_E_CONNECT (could not connect) or HTTP_E_PROTO, with a reason in err. */
int run_http_get(const run_proxy *p, const char *path, const char *auth, http_resp *r, char *err,
                 size_t errlen);

/* run_dir_make creates agentvault-run-XXXXXX (0700) under $XDG_RUNTIME_DIR,
 * $TMPDIR or /tmp, the first that works. Returns 0 or -1 (reason printed). */
int run_dir_make(char *out, size_t outlen);

/* run_dir_remove removes the private directory and whatever is in it. */
void run_dir_remove(const char *dir);

/* run_pem_write creates dir/name (0600, must not exist) holding the system
 * roots if |with_system| and then pem. Returns 0 or -1 (reason printed). */
int run_pem_write(const char *dir, const char *name, const char *pem, size_t len,
                  int with_system, char *path, size_t pathlen);

#endif
