/* run.c - `agentvault run`: start a command wired to the vault.
 *
 *   agentvault run [--proxy URL] [--token TOKEN] [--no-proxy HOSTS] [--socks] [--keep-env NAMES]
 *                  -- CMD [ARGS...]
 *
 * Fetches the proxy's root certificate (GET /ca.pem) and the placeholder
 * variables of its services (GET /agent-env) over plain HTTP/1.1, writes
 * ca.pem and bundle.pem into a private directory, sets the proxy and CA
 * variables common clients read, runs CMD as a child, forwards signals to
 * it, removes the directory and exits with the child's status.
 *
 * This file is the command, the environment and the child; run_http.c
 * fetches from the proxy, run_ca.c keeps the private directory. The token
 * is never printed.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_enc.h"
#include "run.h"
#include "run_int.h"

#define RUN_DEFAULT_PROXY "http://127.0.0.1:14322"
#define RUN_USAGE "usage: agentvault run [--proxy URL] [--token TOKEN] [--no-proxy HOSTS] [--socks] [--keep-env NAMES] -- CMD [ARGS...]"

/* Variables whose value is the bundle (system roots + our root). grpcio
 * ignores SSL_CERT_FILE and reads only GRPC_DEFAULT_SSL_ROOTS_FILE_PATH. */
static const char *const bundle_vars[] = {
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
    "PIP_CERT", "AWS_CA_BUNDLE", "NPM_CONFIG_CAFILE", "DENO_CERT",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
};
/* Variables whose value is our root alone (added to the built-in roots). */
static const char *const root_vars[] = {"NODE_EXTRA_CA_CERTS", "CODEX_CA_CERTIFICATE"};
/* The proxy URL; aiohttp reads WSS_PROXY/WS_PROXY for ws(s):// URLs. With
 * --socks, the ALL_PROXY pair gets the socks5h:// URL instead (the same
 * port speaks SOCKS5): clients that read only ALL_PROXY, or prefer it. */
static const char *const socks_vars[] = {"ALL_PROXY", "all_proxy"};
static const char *const proxy_vars[] = {
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
    "WSS_PROXY", "wss_proxy", "WS_PROXY", "ws_proxy",
};
/* /agent-env may not set these: they change how programs load or find
 * code, or they are set by run itself. */
static const char *const denied_env[] = {
    "PATH", "HOME", "SHELL", "USER", "LOGNAME", "IFS", "ENV", "BASH_ENV", "PS4",
    "TMPDIR", "XDG_RUNTIME_DIR", "NODE_OPTIONS", "NODE_PATH", "NODE_USE_ENV_PROXY",
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PERL5OPT", "PERL5LIB", "RUBYOPT",
    "RUBYLIB", "GIT_SSH_COMMAND", "GIT_ASKPASS", "SSH_ASKPASS", "NO_PROXY",
};
static const int fwd_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};

/* The child's pid while it runs (0 otherwise); read by the signal handler. */
static volatile sig_atomic_t g_child_pid;

/* ---- small helpers ------------------------------------------------------ */

/* Prints "agentvault: <msg>" on stderr. */
void run_msg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("agentvault: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* Prints a one-line usage error (with the usage) and returns exit status 2. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("agentvault: run: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (" RUN_USAGE ")\n", stderr);
    va_end(ap);
    return RUN_EXIT_USAGE;
}

/* Appends s[0..n) to b unless an earlier append failed (*err set). */
static void put(av_buf *b, const void *s, size_t n, int *err)
{
    if (*err == 0)
        *err = av__buf_append(b, s, n);
}

/* Appends the C string s to b. */
static void put_str(av_buf *b, const char *s, int *err)
{
    put(b, s, strlen(s), err);
}

/* Appends the standard base64 of s[0..n) to b, encoded in place (no copy
 * of a credential elsewhere). */
static void put_base64(av_buf *b, const void *s, size_t n, int *err)
{
    char *dst = *err ? NULL : (char *)av__buf_reserve(b, av__b64_encoded_len(n, 0), err);
    if (dst)
        av__buf_commit(b, av__b64_encode(s, n, 0, dst));
}

/* Appends s percent-encoding everything but RFC 3986 unreserved characters
 * (for the password part of a URL's userinfo), encoded in place. */
static void put_pct(av_buf *b, const char *s, int *err)
{
    size_t n = strlen(s);
    char *dst = *err ? NULL : (char *)av__buf_reserve(b, 3 * n, err);
    if (dst)
        av__buf_commit(b, av__pct_encode(s, n, AV__PCT_UNRESERVED, AV__HEX_UPPER, dst));
}

/* NUL-terminates b and returns its text, or NULL if an append failed. */
static const char *text_of(av_buf *b, int *err)
{
    put(b, "", 1, err);
    return *err ? NULL : (const char *)av__buf_head(b);
}

/* ---- what the proxy gives us -------------------------------------------- */

/* 1 if body looks like a PEM certificate (text with BEGIN/END CERTIFICATE). */
static int is_pem_cert(const char *body, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)body[i];
        if (!(c == '\n' || c == '\r' || c == '\t' || (c >= 0x20 && c < 0x7f)))
            return 0;
    }
    const char *b = strstr(body, "-----BEGIN CERTIFICATE-----");
    return b && strstr(b, "-----END CERTIFICATE-----") != NULL;
}

/* 1 if name is [A-Z_][A-Z0-9_]* (bounded). */
static int valid_env_name(const char *s, size_t n)
{
    if (n == 0 || n > RUN_MAX_NAME || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

/* 1 if /agent-env may set this variable. */
static int env_name_allowed(const char *name)
{
    if (!strncmp(name, "LD_", 3) || !strncmp(name, "AGENTVAULT_", 11))
        return 0;
    for (size_t i = 0; i < NELEM(denied_env); i++)
        if (!strcmp(name, denied_env[i]))
            return 0;
    for (size_t i = 0; i < NELEM(bundle_vars); i++)
        if (!strcmp(name, bundle_vars[i]))
            return 0;
    for (size_t i = 0; i < NELEM(root_vars); i++)
        if (!strcmp(name, root_vars[i]))
            return 0;
    for (size_t i = 0; i < NELEM(proxy_vars); i++)
        if (!strcasecmp(name, proxy_vars[i]))
            return 0;
    return 1;
}

/* 1 if |name| is one of the comma-separated names in |list| (NULL: none). */
static int name_listed(const char *list, const char *name)
{
    size_t nl = strlen(name);
    for (const char *p = list; p && *p;) {
        size_t n = strcspn(p, ",");
        if (n == nl && memcmp(p, name, n) == 0)
            return 1;
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}

/* Applies the NAME=VALUE lines of an /agent-env body to the environment.
 * A variable the user already set to something else is replaced too, with
 * a warning naming it (never its value): it is likely the real key, which
 * CMD must not hold. The names in |keep| (--keep-env) keep the user's
 * value. Invalid and refused lines are skipped with a warning. Returns 0,
 * or -1 if setenv failed. */
static int apply_agent_env(char *body, size_t len, const char *keep)
{
    size_t taken = 0;
    unsigned lineno = 0;
    const char *applied[RUN_MAX_ENV_LINES]; /* names set so far: the first line naming one wins */
    char *p = body, *end = body + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        char *next = nl ? nl + 1 : end;
        lineno++;
        if (le > p && le[-1] == '\r')
            le--;
        if (le == p || *p == '#') {
            p = next;
            continue;
        }
        char *eq = memchr(p, '=', (size_t)(le - p));
        size_t vlen = eq ? (size_t)(le - eq - 1) : 0;
        int ok = eq && valid_env_name(p, (size_t)(eq - p)) && vlen > 0 && vlen <= RUN_MAX_VALUE;
        for (size_t i = 0; ok && i < vlen; i++)
            if (eq[1 + i] <= 0x20 || eq[1 + i] >= 0x7f)
                ok = 0;
        if (!ok) {
            run_msg("warning: ignoring invalid line %u of /agent-env (expected NAME=VALUE, "
                "NAME in [A-Z_][A-Z0-9_]*, VALUE printable ASCII without spaces)", lineno);
            p = next;
            continue;
        }
        if (taken >= RUN_MAX_ENV_LINES) {
            run_msg("warning: /agent-env has more than %d variables; ignoring the rest", RUN_MAX_ENV_LINES);
            break;
        }
        taken++;
        *eq = '\0';
        *le = '\0';
        const char *name = p, *value = eq + 1;
        int again = 0;
        for (size_t i = 0; i + 1 < taken && !again; i++)
            again = strcmp(applied[i], name) == 0;
        applied[taken - 1] = name;
        if (again) {
            /* a later line for a name already set: the first one wins */
        } else if (!env_name_allowed(name)) {
            run_msg("warning: /agent-env may not set %s; ignored", name);
        } else {
            const char *cur = getenv(name);
            int has = cur && *cur;
            if (has && name_listed(keep, name)) {
                /* kept, as asked */
            } else if (!has || strcmp(cur, value) != 0) {
                if (has)
                    run_msg("warning: %s is set in your environment; CMD gets the proxy's placeholder instead, "
                            "so that it holds no real key (--keep-env %s keeps yours)", name, name);
                if (setenv(name, value, 1) < 0)
                    return -1;
            }
        }
        p = next;
    }
    return 0;
}

/* ---- NO_PROXY ------------------------------------------------------------ */

/* 1 if the comma-separated list in b already holds s[0..n) (ignoring case). */
static int list_has(const av_buf *b, const char *s, size_t n)
{
    const char *p = (const char *)av__buf_head(b), *end = p + av__buf_len(b);
    while (p && p < end) {
        const char *c = memchr(p, ',', (size_t)(end - p));
        size_t len = c ? (size_t)(c - p) : (size_t)(end - p);
        if (len == n && strncasecmp(p, s, n) == 0)
            return 1;
        p = c ? c + 1 : end;
    }
    return 0;
}

/* Adds each entry of the comma-separated list s (trimmed; empty entries
 * skipped) to b unless already there. */
static void list_add(av_buf *b, const char *s, int *err)
{
    while (s && *s) {
        size_t n = strcspn(s, ",");
        const char *e = s, *ee = s + n;
        while (e < ee && (*e == ' ' || *e == '\t'))
            e++;
        while (ee > e && (ee[-1] == ' ' || ee[-1] == '\t'))
            ee--;
        if (ee > e && !list_has(b, e, (size_t)(ee - e))) {
            if (av__buf_len(b))
                put(b, ",", 1, err);
            put(b, e, (size_t)(ee - e), err);
        }
        s += n;
        if (*s == ',')
            s++;
    }
}


/* ---- the child ------------------------------------------------------------ */

/* Relays a signal sent to run (kill(1), a supervisor, a test) to the child.
 * Signals the kernel generated for the terminal's process group
 * (si_code SI_KERNEL: ^C, ^\, hangup, resize) already reached the child,
 * which shares our process group, so they are not delivered twice. */
static void forward_signal(int sig, siginfo_t *info, void *uctx)
{
    (void)uctx;
    pid_t pid = (pid_t)g_child_pid;
    if (pid <= 0 || (info && info->si_code > 0))
        return;
    int saved = errno;
    kill(pid, sig);
    errno = saved;
}

/* Starts argv[0] (PATH search) with signals forwarded, waits for it and
 * returns run's exit status: the child's status, 128+signo if it was
 * killed, 127/126 if it could not be executed. The caller blocked the
 * forwarded signals; |oldmask| is the mask to restore (also the child's).
 * |chld| is the SIGCHLD action run started with, given back to the child. */
static int run_child(char **argv, const sigset_t *oldmask, const struct sigaction *chld)
{
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0) {
        run_msg("pipe: %s", strerror(errno));
        return RUN_EXIT_FAIL;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        run_msg("fork: %s", strerror(errno));
        close(ep[0]);
        close(ep[1]);
        return RUN_EXIT_FAIL;
    }
    if (pid == 0) {
        close(ep[0]);
        sigaction(SIGCHLD, chld, NULL);
        sigprocmask(SIG_SETMASK, oldmask, NULL);
        execvp(argv[0], argv);
        int e = errno;
        ssize_t w = write(ep[1], &e, sizeof(e));
        (void)w;
        _exit(RUN_EXIT_NOTFOUND);
    }
    close(ep[1]);
    g_child_pid = (sig_atomic_t)pid;
    /* Forward signals now; those that arrived while blocked are delivered
     * (and forwarded) on unblocking. Signals ignored when run started stay
     * ignored (nohup). */
    for (size_t i = 0; i < NELEM(fwd_signals); i++) {
        struct sigaction old, sa;
        if (sigaction(fwd_signals[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN &&
            !(old.sa_flags & SA_SIGINFO))
            continue;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = forward_signal;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(fwd_signals[i], &sa, NULL);
    }
    sigprocmask(SIG_SETMASK, oldmask, NULL);

    int exec_errno = 0;
    for (;;) {
        ssize_t n = read(ep[0], &exec_errno, sizeof(exec_errno));
        if (n < 0 && errno == EINTR)
            continue;
        if (n != (ssize_t)sizeof(exec_errno))
            exec_errno = 0;
        break;
    }
    close(ep[0]);

    /* Wait without reaping, so that the pid cannot be reused while the
     * handler may still signal it; then stop forwarding and reap. */
    siginfo_t si;
    for (;;) {
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT) == 0)
            break;
        if (errno != EINTR) {
            run_msg("waitid: %s", strerror(errno));
            break;
        }
    }
    sigset_t all, prev;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &prev);
    g_child_pid = 0;
    sigprocmask(SIG_SETMASK, &prev, NULL);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            run_msg("waitpid: %s", strerror(errno));
            return RUN_EXIT_FAIL;
        }
    }
    if (exec_errno) {
        if (exec_errno == ENOENT && !strchr(argv[0], '/')) {
            run_msg("%s: command not found", argv[0]);
            return RUN_EXIT_NOTFOUND;
        }
        run_msg("%s: %s", argv[0], strerror(exec_errno));
        return (exec_errno == ENOENT || exec_errno == ENOTDIR) ? RUN_EXIT_NOTFOUND : RUN_EXIT_NOEXEC;
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return RUN_EXIT_FAIL;
}

/* ---- the command ------------------------------------------------------------- */

/* Matches argv[*i] against --name VALUE / --name=VALUE; on a match stores
 * the value, advances *i and returns 1; returns -1 if the value is missing. */
static int take_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *val = argv[++*i];
    return 1;
}

/* Sets the variables of spec item 4 that do not depend on /agent-env.
 * Returns 0 or -1 (setenv failed or a value overflowed). */
/* Builds SCHEME://[agent:TOKEN@]HOST:PORT into |b| (the token
 * percent-encoded); returns its text, or NULL with *err set. */
static const char *proxy_url_of(av_buf *b, const char *scheme, const run_proxy *px, const char *token, int *err)
{
    put_str(b, scheme, err);
    put_str(b, "://", err);
    if (token) {
        put_str(b, "agent:", err);
        put_pct(b, token, err);
        put_str(b, "@", err);
    }
    put_str(b, px->hostport, err);
    return text_of(b, err);
}

static int is_socks_var(const char *name)
{
    for (size_t i = 0; i < NELEM(socks_vars); i++)
        if (!strcmp(name, socks_vars[i]))
            return 1;
    return 0;
}

static int set_run_env(const run_proxy *px, const char *token, const char *no_proxy_add, int socks,
                       const char *bundle, const char *root)
{
    int rc = 0, url_err = 0, np_err = 0;
    av_buf url, surl, np;
    av__buf_init(&url, 4 * RUN_MAX_TOKEN + 512 + 1);
    av__buf_init(&surl, 4 * RUN_MAX_TOKEN + 512 + 1);
    av__buf_init(&np, RUN_MAX_NO_PROXY + 1);
    const char *url_text = proxy_url_of(&url, "http", px, token, &url_err);
    const char *socks_text = socks ? proxy_url_of(&surl, "socks5h", px, token, &url_err) : NULL;
    char *user_np = getenv("NO_PROXY") ? strdup(getenv("NO_PROXY")) : NULL;
    char *user_np_lc = getenv("no_proxy") ? strdup(getenv("no_proxy")) : NULL;
    list_add(&np, user_np, &np_err);
    list_add(&np, user_np_lc, &np_err);
    list_add(&np, "localhost,127.0.0.1,::1", &np_err);
    list_add(&np, px->host, &np_err);
    list_add(&np, no_proxy_add, &np_err);
    const char *np_text = text_of(&np, &np_err);
    if (url_err || np_err) {
        if (np_err)
            run_msg("NO_PROXY would exceed %d bytes", RUN_MAX_NO_PROXY);
        else
            run_msg("the proxy URL is too long");
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < NELEM(proxy_vars) && rc == 0; i++)
        rc = setenv(proxy_vars[i], socks && is_socks_var(proxy_vars[i]) ? socks_text : url_text, 1);
    if (rc == 0)
        rc = setenv("NO_PROXY", np_text, 1);
    if (rc == 0)
        rc = setenv("no_proxy", np_text, 1);
    for (size_t i = 0; i < NELEM(bundle_vars) && rc == 0; i++)
        rc = setenv(bundle_vars[i], bundle, 1);
    for (size_t i = 0; i < NELEM(root_vars) && rc == 0; i++)
        rc = setenv(root_vars[i], root, 1);
    if (rc == 0)
        rc = setenv("NODE_USE_ENV_PROXY", "1", 1);
    if (rc == 0)
        rc = setenv("AGENTVAULT_PROXY", px->url, 1);
    if (rc < 0)
        run_msg("cannot set the environment: %s", strerror(errno));
out:
    free(user_np);
    free(user_np_lc);
    av__buf_free_wipe(&url);
    av__buf_free_wipe(&surl);
    av__buf_free(&np);
    return rc;
}

/* Entry point: see run.h and the comment at the top of this file. */
int cmd_run(int argc, char **argv)
{
    const char *proxy_arg = NULL, *token = NULL, *no_proxy_add = NULL, *keep_env = NULL;
    int cmd_at = -1, socks = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        int r;
        if (!strcmp(a, "--")) {
            cmd_at = i + 1;
            break;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            puts(RUN_USAGE);
            return 0;
        }
        if (!strcmp(a, "--socks")) {
            socks = 1;
            continue;
        }
        if ((r = take_opt(argc, argv, &i, "--proxy", &proxy_arg)) != 0 ||
            (r = take_opt(argc, argv, &i, "--token", &token)) != 0 ||
            (r = take_opt(argc, argv, &i, "--no-proxy", &no_proxy_add)) != 0 ||
            (r = take_opt(argc, argv, &i, "--keep-env", &keep_env)) != 0) {
            if (r < 0)
                return usage_error("%s needs a value", a);
            continue;
        }
        if (a[0] == '-')
            return usage_error("unknown option '%s'", a);
        return usage_error("put '--' before the command");
    }
    if (cmd_at < 0)
        return usage_error("missing '--' and the command to run");
    if (cmd_at >= argc || argv[cmd_at][0] == '\0')
        return usage_error("missing the command after '--'");

    /* The proxy. */
    const char *proxy_src = "--proxy";
    int is_default = 0;
    if (!proxy_arg) {
        proxy_arg = getenv("AGENTVAULT_PROXY");
        proxy_src = "AGENTVAULT_PROXY";
        if (!proxy_arg || !*proxy_arg) {
            proxy_arg = RUN_DEFAULT_PROXY;
            is_default = 1;
        }
    }
    run_proxy px;
    const char *why = NULL;
    if (run_proxy_parse(proxy_arg, &px, &why) < 0)
        return usage_error("%s: %s", proxy_src, why);

    /* The token. */
    if (!token)
        token = getenv("AGENTVAULT_TOKEN");
    if (token && !*token)
        token = NULL;
    if (token) {
        size_t tl = strlen(token);
        if (tl > RUN_MAX_TOKEN)
            return usage_error("the token is longer than %d bytes", RUN_MAX_TOKEN);
        for (size_t i = 0; i < tl; i++)
            if (token[i] < 0x21 || token[i] > 0x7e)
                return usage_error("the token contains spaces, control or non-ASCII characters");
    }
    if (no_proxy_add) {
        for (const char *s = no_proxy_add; *s; s++)
            if (*s <= 0x20 || *s >= 0x7f)
                return usage_error("--no-proxy takes a comma-separated list of hosts without spaces");
    }

    if (keep_env) {
        for (const char *p = keep_env;;) {
            size_t n = strcspn(p, ",");
            if (!valid_env_name(p, n))
                return usage_error("--keep-env takes a comma-separated list of variable names ([A-Z_][A-Z0-9_]*)");
            p += n;
            if (!*p)
                break;
            p++;
        }
    }

    av_buf auth;
    const char *auth_text = NULL;
    av__buf_init(&auth, 8 * RUN_MAX_TOKEN + 1);
    if (token) {
        av_buf cred;
        int e = 0;
        av__buf_init(&cred, RUN_MAX_TOKEN + 16);
        put_str(&cred, "agent:", &e);
        put_str(&cred, token, &e);
        put_str(&auth, "Basic ", &e);
        put_base64(&auth, av__buf_head(&cred), av__buf_len(&cred), &e);
        auth_text = text_of(&auth, &e);
        av__buf_free_wipe(&cred);
        if (!auth_text) {
            run_msg("out of memory");
            av__buf_free_wipe(&auth);
            return RUN_EXIT_FAIL;
        }
    }

    int status = RUN_EXIT_FAIL;
    char err[256];
    http_resp ca = {0}, env = {0};
    char dir[4096] = "";
    int blocked = 0;
    sigset_t fwd, oldmask;
    struct sigaction old_chld;

    /* The root certificate. */
    int hr = run_http_get(&px, "/ca.pem", auth_text, &ca, err, sizeof(err));
    if (hr == HTTP_E_CONNECT) {
        run_msg("cannot reach the proxy at %s: %s; start one with: agentvault serve%s", px.hostport, err,
            is_default ? " (this is the default proxy: no --proxy or AGENTVAULT_PROXY was given)" : "");
        goto out;
    }
    if (hr != HTTP_OK || ca.status != 200 || !is_pem_cert(ca.body, ca.body_len)) {
        if (hr == HTTP_OK && ca.status != 200)
            snprintf(err, sizeof(err), "the proxy answered %d%s%s%s", ca.status, ca.reason[0] ? " " : "",
                     ca.reason, ca.status == 407 ? " (check --token or AGENTVAULT_TOKEN)" : "");
        else if (hr == HTTP_OK)
            snprintf(err, sizeof(err), "the response is not a PEM certificate");
        run_msg("CA fetch from %s/ca.pem failed: %s", px.url, err);
        goto out;
    }

    /* The placeholders. */
    hr = run_http_get(&px, "/agent-env", auth_text, &env, err, sizeof(err));
    if (hr == HTTP_E_CONNECT) {
        run_msg("cannot reach the proxy at %s: %s; start one with: agentvault serve", px.hostport, err);
        goto out;
    }
    if (hr != HTTP_OK)
        run_msg("warning: %s/agent-env failed: %s; starting without placeholder keys", px.url, err);
    else if (env.status != 200 && env.status != 404)
        run_msg("warning: %s/agent-env answered %d; starting without placeholder keys", px.url, env.status);

    /* The private directory, with the forwarded signals held until the
     * child runs (so that none leaves the directory behind). */
    sigemptyset(&fwd);
    for (size_t i = 0; i < NELEM(fwd_signals); i++)
        sigaddset(&fwd, fwd_signals[i]);
    sigprocmask(SIG_BLOCK, &fwd, &oldmask);
    blocked = 1;
    /* waitpid needs SIGCHLD not ignored (an inherited SIG_IGN reaps
     * children automatically); the child gets the original action back. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGCHLD, &dfl, &old_chld);
    if (run_dir_make(dir, sizeof(dir)) < 0)
        goto out;
    char root_path[4200], bundle_path[4200];
    if (run_pem_write(dir, "ca.pem", ca.body, ca.body_len, 0, root_path, sizeof(root_path)) < 0 ||
        run_pem_write(dir, "bundle.pem", ca.body, ca.body_len, 1, bundle_path, sizeof(bundle_path)) < 0)
        goto out;

    if (set_run_env(&px, token, no_proxy_add, socks, bundle_path, root_path) < 0)
        goto out;
    if (env.status == 200 && env.body && apply_agent_env(env.body, env.body_len, keep_env) < 0) {
        run_msg("cannot set the environment: %s", strerror(errno));
        goto out;
    }
    av__buf_free_wipe(&auth);

    status = run_child(argv + cmd_at, &oldmask, &old_chld);
out:
    av__buf_free_wipe(&auth);
    free(ca.body);
    free(env.body);
    run_dir_remove(dir);
    if (blocked)
        sigprocmask(SIG_SETMASK, &oldmask, NULL);
    return status;
}
