/* main.c - the agentvault daemon: command line, config, signals, logs.
 *
 * Everything else is in libagentvault; this file uses only the public API.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "control.h"
#include "fault.h"
#include "replica.h"
#include "run.h"
#include "secret.h"

#ifndef AV_DAEMON_VERSION
#define AV_DAEMON_VERSION "0.0.0"
#endif

#define DEFAULT_LISTEN "127.0.0.1:14322"

/* LeakSanitizer needs to ptrace the process at exit, which a non-dumpable
 * process forbids; sanitizer builds (tests only) keep the default. */
#if defined(__SANITIZE_ADDRESS__)
#define AV_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AV_SANITIZED 1
#endif
#endif

static const char usage_text[] =
    "usage:\n"
    "  agentvault serve [-c FILE] [--listen ADDR:PORT]... [--state-dir DIR]\n"
    "                   [--resolve HOST:PORT:ADDR[:DIALPORT]]... [--upstream-cacert FILE]\n"
    "                   [--log-level error|warn|info|debug] [--log-format text|json]\n"
    "                   [--log-output stderr|stdout]\n"
    "                   [--password-file FILE]   (the vault's master password)\n"
    "                   [--workers N|auto]   (event-loop threads; default: [proxy] workers, else auto)\n"
    "  agentvault check -c FILE\n"
    "  agentvault ca pem [-c FILE] [--state-dir DIR]\n"
    "  agentvault run [--proxy URL] [--token TOKEN] [--no-proxy HOSTS] [--socks] [--keep-env NAMES] -- CMD [ARGS]\n"
    "  agentvault secret set NAME | list | rm NAME | passwd  [--vault PATH] [--no-password]\n"
    "                   [--password-file FILE] (see 'agentvault secret --help')\n"
    "  agentvault token create --name NAME [--services A,B] [--ttl 24h] | list | revoke NAME\n"
    "                   [-c FILE] [--state-dir DIR]   (prints the token once; stores its hash)\n"
    "  agentvault pending [--watch]                   (requests held for a person: decide = ask)\n"
    "  agentvault approve ID [--remember 10m] [--scope path|service]\n"
    "  agentvault deny ID [--reason TEXT]            [-c FILE] [--state-dir DIR]\n"
    "  agentvault --version\n"
    "\n"
    "Without -c, serve runs an embedded default: it listens on " DEFAULT_LISTEN ",\n"
    "keeps state in $XDG_STATE_HOME/agentvault (or ~/.local/state/agentvault), and\n"
    "injects OPENAI_API_KEY, ANTHROPIC_API_KEY and GITHUB_TOKEN from its environment.\n";

static int g_json_logs;
static int g_log_fd = 2; /* --log-output: stderr (2) or stdout (1) */
static av_ctx *g_ctx;

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("agentvault: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    fputs("run 'agentvault --help' for usage\n", stderr);
    exit(2);
}

/* log_line writes one log line with one write(2), so that lines from
 * several threads, and audit records sharing stdout, never interleave.
 * The library's lines are at most 2 KiB; JSON escaping at most sextuples
 * them, so a longer (impossible) message is cut, never overrun. */
static void log_line(void *ud, int level, const char *msg)
{
    (void)ud;
    static const char *const names[] = {"error", "warn", "info", "debug"};
    const char *lv = level >= 0 && level <= 3 ? names[level] : "info";
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    char line[6 * 2048 + 128];
    size_t n = strlen(msg);
    if (n > 2047)
        n = 2047;
    int o;
    if (g_json_logs) {
        o = snprintf(line, sizeof(line), "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":\"", when,
                     ts.tv_nsec / 1000000, lv);
        o += (int)av__json_escape(msg, n, 0, line + o); /* <= 6n bytes */
        o += snprintf(line + o, sizeof(line) - (size_t)o, "\"}\n");
    } else {
        o = snprintf(line, sizeof(line), "%s.%03ldZ %s %.*s\n", when, ts.tv_nsec / 1000000, lv, (int)n, msg);
    }
    for (const char *p = line; o > 0;) {
        ssize_t w = write(g_log_fd, p, (size_t)o);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        o -= (int)w;
    }
    funlockfile(stderr);
}

static void on_signal(int sig)
{
    replica_on_signal(sig); /* /healthz 503, drain_delay, then the drain */
}

/* $XDG_STATE_HOME/agentvault or ~/.local/state/agentvault. */
static int default_state_dir(char *out, size_t len)
{
    const char *xdg = getenv("XDG_STATE_HOME");
    if (xdg && xdg[0] == '/')
        return snprintf(out, len, "%s/agentvault", xdg) < (int)len ? 0 : -1;
    const char *home = getenv("HOME");
    if (!home || home[0] != '/')
        return -1;
    return snprintf(out, len, "%s/.local/state/agentvault", home) < (int)len ? 0 : -1;
}

/* mkdir -p with mode 0700 for the directories we create. */
static int mkdir_p(const char *path)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* The embedded default: one service per well-known key in the environment.
 * alt: a second header the key may arrive in (auth_alt): Claude Code sends
 * x-api-key, the Anthropic SDK >= 1.0 Authorization: Bearer. */
static int build_default_config(av_config *cfg, int *nservices)
{
    static const struct {
        const char *env, *name, *host, *auth, *alt;
    } known[] = {
        {"OPENAI_API_KEY", "openai", "api.openai.com", "bearer", NULL},
        {"ANTHROPIC_API_KEY", "anthropic", "api.anthropic.com", "header x-api-key \"{secret}\"", "bearer"},
        {"GITHUB_TOKEN", "github", "api.github.com", "bearer", NULL},
    };
    char text[2048];
    size_t off = (size_t)snprintf(text, sizeof(text), "[proxy]\nunmatched = passthrough\n");
    *nservices = 0;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        const char *v = getenv(known[i].env);
        if (!v || !*v)
            continue;
        off += (size_t)snprintf(text + off, sizeof(text) - off,
                                "\n[service \"%s\"]\nhost = %s\nauth = %s\n%s%s%ssecret = env:%s\n",
                                known[i].name, known[i].host, known[i].auth, known[i].alt ? "auth_alt = " : "",
                                known[i].alt ? known[i].alt : "", known[i].alt ? "\n" : "", known[i].env);
        (*nservices)++;
    }
    return av_config_load_string(cfg, text, off, "<embedded default>");
}

typedef struct opts {
    const char *config;
    const char *state_dir;
    const char *cacert;
    const char *listen[16];
    int nlisten;
    const char *resolve[64];
    int nresolve;
    int log_level;
    const char *password_file; /* the vault's master password (serve) */
    int workers;               /* --workers: 1..64, AV_WORKERS_AUTO; 0: not given */
} opts;

static const char *need_arg(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc)
        die_usage("%s needs a value", argv[*i]);
    return argv[++*i];
}

static void parse_opts(int argc, char **argv, int start, opts *o, int allow_serve_opts)
{
    memset(o, 0, sizeof(*o));
    o->log_level = AV_LOG_INFO;
    for (int i = start; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-c") || !strcmp(a, "--config")) {
            o->config = need_arg(argc, argv, &i);
        } else if (!strcmp(a, "--state-dir")) {
            o->state_dir = need_arg(argc, argv, &i);
        } else if (allow_serve_opts && !strcmp(a, "--listen")) {
            if (o->nlisten >= 16)
                die_usage("too many --listen options (max 16)");
            o->listen[o->nlisten++] = need_arg(argc, argv, &i);
        } else if (allow_serve_opts && !strcmp(a, "--resolve")) {
            if (o->nresolve >= 64)
                die_usage("too many --resolve options (max 64)");
            o->resolve[o->nresolve++] = need_arg(argc, argv, &i);
        } else if (allow_serve_opts && !strcmp(a, "--upstream-cacert")) {
            o->cacert = need_arg(argc, argv, &i);
        } else if (allow_serve_opts && !strcmp(a, "--password-file")) {
            o->password_file = need_arg(argc, argv, &i);
        } else if (allow_serve_opts && !strcmp(a, "--log-level")) {
            const char *v = need_arg(argc, argv, &i);
            o->log_level = av_log_level_parse(v);
            if (o->log_level < 0)
                die_usage("--log-level must be error, warn, info or debug (got '%s')", v);
        } else if (allow_serve_opts && !strcmp(a, "--workers")) {
            const char *v = need_arg(argc, argv, &i);
            char *end = NULL;
            long n = strtol(v, &end, 10);
            if (!strcmp(v, "auto"))
                o->workers = AV_WORKERS_AUTO;
            else if (v[0] >= '0' && v[0] <= '9' && end && *end == '\0' && n >= 1 && n <= 64)
                o->workers = (int)n;
            else
                die_usage("--workers must be a whole number in [1, 64] or auto (got '%s')", v);
        } else if (allow_serve_opts && !strcmp(a, "--log-format")) {
            const char *v = need_arg(argc, argv, &i);
            if (!strcmp(v, "json"))
                g_json_logs = 1;
            else if (strcmp(v, "text") != 0)
                die_usage("--log-format must be text or json (got '%s')", v);
        } else if (allow_serve_opts && !strcmp(a, "--log-output")) {
            const char *v = need_arg(argc, argv, &i);
            if (!strcmp(v, "stdout"))
                g_log_fd = 1;
            else if (!strcmp(v, "stderr"))
                g_log_fd = 2;
            else
                die_usage("--log-output must be stderr or stdout (got '%s')", v);
        } else {
            die_usage("unknown option '%s'", a);
        }
    }
}

/* Build the config (file or embedded default) with command-line overrides
 * applied. Returns NULL with a one-line reason in |err| and the exit code
 * for it in *code (1 bad config, 2 bad option). */
static av_config *build_config(const opts *o, int *embedded_services, char *err, size_t err_len, int *code,
                               int load_tokens)
{
    av_config *cfg = NULL;
    *code = 1;
    if (av_config_new(&cfg) != AV_OK) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    int rc;
    *embedded_services = -1;
    if (o->config)
        rc = av_config_load_file(cfg, o->config);
    else
        rc = build_default_config(cfg, embedded_services);
    if (rc != AV_OK) {
        snprintf(err, err_len, "%s", av_config_error(cfg));
        goto fail;
    }
    if (o->nlisten) {
        av_config_clear_listen(cfg);
        for (int i = 0; i < o->nlisten; i++)
            if (av_config_add_listen(cfg, o->listen[i]) != AV_OK) {
                snprintf(err, err_len, "--listen %s: %s", o->listen[i], av_config_error(cfg));
                *code = 2;
                goto fail;
            }
    } else if (av_config_listen_count(cfg) == 0) {
        av_config_add_listen(cfg, DEFAULT_LISTEN);
    }
    for (int i = 0; i < o->nresolve; i++)
        if (av_config_add_resolve(cfg, o->resolve[i]) != AV_OK) {
            snprintf(err, err_len, "--resolve %s: %s", o->resolve[i], av_config_error(cfg));
            *code = 2;
            goto fail;
        }
    /* The daemon runs one event loop per CPU unless told otherwise (the
     * library's default is one). */
    if (o->workers)
        av_config_set_workers(cfg, o->workers);
    else if (av_config_workers(cfg) == 0)
        av_config_set_workers(cfg, AV_WORKERS_AUTO);
    if (o->cacert && av_config_set_upstream_cafile(cfg, o->cacert) != AV_OK) {
        snprintf(err, err_len, "--upstream-cacert: %s", av_config_error(cfg));
        *code = 2;
        goto fail;
    }
    if (o->state_dir) {
        av_config_set_state_dir(cfg, o->state_dir);
    } else if (!av_config_state_dir(cfg)) {
        char dir[PATH_MAX];
        if (default_state_dir(dir, sizeof(dir)) < 0) {
            snprintf(err, err_len, "cannot determine a state directory: set HOME, XDG_STATE_HOME or --state-dir");
            goto fail;
        }
        av_config_set_state_dir(cfg, dir);
    }
    if (load_tokens) {
        /* [proxy] tokens_file (a replica's shared, read-only store), else
         * the store `agentvault token create` keeps in the state directory */
        char tp[PATH_MAX];
        const char *tf = av_config_tokens_file(cfg);
        if (tf) {
            snprintf(tp, sizeof(tp), "%s", tf);
            replica_tokens_reading(tp);
        } else {
            snprintf(tp, sizeof(tp), "%s/tokens", av_config_state_dir(cfg));
        }
        rc = av_config_load_tokens(cfg, tp);
        if (rc != AV_OK) {
            snprintf(err, err_len, "%s", rc == AV_ERR_NOMEM ? "out of memory" : av_config_error(cfg));
            goto fail;
        }
    }
    if (av_config_validate(cfg) != AV_OK) {
        snprintf(err, err_len, "%s", av_config_error(cfg));
        goto fail;
    }
    return cfg;
fail:
    av_config_free(cfg);
    return NULL;
}

/* Load the config; exits with a one-line reason on error. */
static av_config *load_config(const opts *o, int *embedded_services)
{
    char err[1024];
    int code = 1;
    av_config *cfg = build_config(o, embedded_services, err, sizeof(err), &code, 1);
    if (!cfg) {
        fprintf(stderr, "agentvault: %s\n", err);
        exit(code);
    }
    return cfg;
}

/* ---- serve: the vault and reloads ---------------------------------------- */

static opts g_serve_opts;
static ctl *g_ctl; /* the control socket (decide = ask) */
/* Every vault handle opened (the first at start, one per reload). Contexts
 * borrow them and in-flight exchanges may still use an old one, so they are
 * closed (and wiped) only at exit. Bounded by the number of reloads. */
static av_vault *g_vaults[64];
static size_t g_nvaults;

static void vault_path_for(const av_config *cfg, char *out, size_t len)
{
    const char *p = av_config_vault_path(cfg);
    if (p)
        snprintf(out, len, "%s", p);
    else
        snprintf(out, len, "%s/vault.avv", av_config_state_dir(cfg));
}

/* [proxy] tokens_file at start (the watch thread's file). */
static char *g_tokens_file;

static int str_same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

/* SIGHUP: the context calls this on its loop thread. */
static av_config *reload_config(void *ud, char *err, size_t err_len)
{
    (void)ud;
    int embedded, code;
    av_config *cfg = build_config(&g_serve_opts, &embedded, err, err_len, &code, 1);
    if (!cfg)
        return NULL;
    if (!str_same(av_config_tokens_file(cfg), g_tokens_file)) {
        snprintf(err, err_len, "tokens_file cannot change on reload: restart instead");
        av_config_free(cfg);
        return NULL;
    }
    if (g_ctl) {
        av_config_set_decide_fn(cfg, ctl_decide, g_ctl);
    } else if (av_config_uses_decide_ask(cfg)) {
        snprintf(err, err_len, "decide = ask needs the control socket, which could not be made at start (the "
                               "state directory is not writable): restart with a writable state_dir");
        av_config_free(cfg);
        return NULL;
    }
    if (av_config_uses_vault(cfg)) {
        if (g_nvaults >= sizeof(g_vaults) / sizeof(g_vaults[0])) {
            snprintf(err, err_len, "too many reloads with a vault: restart the daemon");
            av_config_free(cfg);
            return NULL;
        }
        char path[PATH_MAX];
        vault_path_for(cfg, path, sizeof(path));
        av_vault *v = NULL;
        int rc = serve_vault_reopen(path, &v, err, err_len);
        if (rc != AV_OK) {
            av_config_free(cfg);
            return NULL;
        }
        g_vaults[g_nvaults++] = v;
        av_config_set_vault(cfg, v);
    }
    replica_set_drain(cfg); /* a failed reload below keeps these: harmless, they only time a shutdown */
    return cfg;
}

static void on_hup(int sig)
{
    (void)sig;
    if (g_ctx)
        av_ctx_reload(g_ctx); /* async-signal-safe */
}

/* raise_nofile lifts the soft open-files limit to the hard one (the
 * library derives its default connection cap from it) and says what the
 * limit is. Only the daemon does this; an embedding host decides its own. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = rl.rlim_max;
    if (want == RLIM_INFINITY) {
        /* the kernel's ceiling for RLIMIT_NOFILE */
        FILE *f = fopen("/proc/sys/fs/nr_open", "re");
        unsigned long long n = 0;
        if (!f || fscanf(f, "%llu", &n) != 1 || n == 0)
            n = 1048576;
        if (f)
            fclose(f);
        want = (rlim_t)n;
    }
    unsigned long long old = (unsigned long long)rl.rlim_cur;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
            fprintf(stderr, "agentvault: open files limit %llu (raised from %llu)\n", (unsigned long long)want,
                    old);
            return;
        }
        fprintf(stderr, "agentvault: open files limit %llu (cannot raise it to %llu: %s)\n", old,
                (unsigned long long)want, strerror(errno));
        return;
    }
    fprintf(stderr, "agentvault: open files limit %llu\n", old);
}

static int cmd_serve(int argc, char **argv)
{
    opts o;
    parse_opts(argc, argv, 2, &o, 1);
    g_serve_opts = o;
    int embedded = -1;
    av_config *cfg = load_config(&o, &embedded);
    const char *sd = av_config_state_dir(cfg);
    if (mkdir_p(sd) < 0) {
        fprintf(stderr, "agentvault: cannot create state directory %s: %s\n", sd, strerror(errno));
        return 1;
    }
    if (av_config_tokens_file(cfg) && !(g_tokens_file = strdup(av_config_tokens_file(cfg)))) {
        fprintf(stderr, "agentvault: out of memory\n");
        return 1;
    }
    replica_set_drain(cfg);
    if (av_config_uses_vault(cfg)) {
        char path[PATH_MAX];
        vault_path_for(cfg, path, sizeof(path));
        av_vault *v = NULL;
        if (serve_vault_open(path, o.password_file, &v) != 0) {
            av_config_free(cfg);
            return 1;
        }
        g_vaults[g_nvaults++] = v;
        av_config_set_vault(cfg, v);
    }
    raise_nofile(); /* before the context derives its connection cap from it */
    char err[512];
    int no_ctl = ctl_start(sd, av_config_uses_decide_ask(cfg), &g_ctl, err, sizeof(err));
    if (no_ctl < 0) {
        fprintf(stderr, "agentvault: %s\n", err);
        av_config_free(cfg);
        return 1;
    }
    if (g_ctl)
        av_config_set_decide_fn(cfg, ctl_decide, g_ctl);
    int rc = av_ctx_new(&g_ctx, cfg, err, sizeof(err));
    if (rc != AV_OK) {
        fprintf(stderr, "agentvault: %s\n", err);
        ctl_stop(g_ctl);
        av_config_free(cfg);
        return 1;
    }
    av_ctx_set_log(g_ctx, log_line, NULL, o.log_level);
    av_ctx_set_reload(g_ctx, reload_config, NULL);
    if (replica_start(g_ctx, g_tokens_file, err, sizeof(err)) != 0) {
        fprintf(stderr, "agentvault: %s\n", err);
        av_ctx_free(g_ctx);
        av_config_free(cfg);
        return 1;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction hup;
    memset(&hup, 0, sizeof(hup));
    hup.sa_handler = on_hup;
    sigemptyset(&hup.sa_mask);
    hup.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &hup, NULL); /* reload: config, secrets, audit log */

    for (size_t i = 0; i < av_config_listen_count(cfg); i++) {
        const char *spec = av_config_listen_get(cfg, i);
        char host[80];
        snprintf(host, sizeof(host), "%s", spec);
        char *colon = strrchr(host, ':');
        if (colon)
            *colon = '\0';
        fprintf(stderr, "agentvault: listening on %s:%d\n", host, av_ctx_listen_port(g_ctx, i));
    }
    for (size_t i = 0; i < av_config_gateway_count(cfg); i++) {
        char host[80];
        snprintf(host, sizeof(host), "%s", av_config_gateway_listen(cfg, i));
        char *colon = strrchr(host, ':');
        if (colon)
            *colon = '\0';
        fprintf(stderr, "agentvault: gateway %s on http://%s:%d -> %s\n", av_config_gateway_name(cfg, i), host,
                av_ctx_gateway_port(g_ctx, i), av_config_gateway_upstream(cfg, i));
    }
    if (embedded >= 0) {
        const char *spec = av_config_listen_get(cfg, 0);
        char host[80];
        snprintf(host, sizeof(host), "%s", spec);
        char *colon = strrchr(host, ':');
        if (colon)
            *colon = '\0';
        int port = av_ctx_listen_port(g_ctx, 0);
        fprintf(stderr,
                "agentvault: embedded default config, %d service(s) from the environment "
                "(OPENAI_API_KEY, ANTHROPIC_API_KEY, GITHUB_TOKEN)\n"
                "agentvault: point a client at it:\n"
                "  export HTTPS_PROXY=http://%s:%d HTTP_PROXY=http://%s:%d\n"
                "  export SSL_CERT_FILE=%s/ca.pem   # or: curl --cacert %s/ca.pem\n",
                embedded, host, port, host, port, sd, sd);
    }
    if (no_ctl)
        fprintf(stderr, "agentvault: no control socket: the state directory %s is not writable (decide = ask "
                        "cannot be used)\n", sd);
    fflush(stderr);
    av_config_free(cfg);
    rc = av_ctx_run(g_ctx);
    replica_stop();
    av_ctx *ctx = g_ctx;
    g_ctx = NULL;
    ctl_stop(g_ctl); /* what is still held is denied; the exchanges go with the context */
    g_ctl = NULL;
    av_ctx_free(ctx);
    free(g_tokens_file);
    for (size_t i = 0; i < g_nvaults; i++)
        av_vault_close(g_vaults[i]);
    serve_vault_forget();
    return rc == AV_OK ? 0 : 1;
}

static int cmd_check(int argc, char **argv)
{
    opts o;
    parse_opts(argc, argv, 2, &o, 0);
    if (!o.config)
        die_usage("check needs -c FILE");
    int embedded;
    av_config *cfg = load_config(&o, &embedded);
    if (av_config_uses_vault(cfg)) {
        /* What serve would refuse about an existing vault file (access by
         * others, owner, symbolic link, damage), found without its key. */
        char path[PATH_MAX], err[1024] = "";
        struct stat st;
        vault_path_for(cfg, path, sizeof(path));
        int rc = lstat(path, &st) == 0 ? av_vault_needs_password(path, err, sizeof(err)) : 0;
        if (rc < 0) {
            fprintf(stderr, "agentvault: %s\n", err[0] ? err : av_strerror(rc));
            av_config_free(cfg);
            return 1;
        }
    }
    printf("%s: OK (%zu service(s))\n", o.config, av_config_service_count(cfg));
    av_config_free(cfg);
    return 0;
}

/* print_small_file copies a file of at most 64 KiB (a certificate) to
 * stdout. Returns 0, or -1 with the reason on stderr. */
static int print_small_file(const char *path)
{
    FILE *f = fopen(path, "re");
    char buf[65536 + 1];
    size_t n = f ? fread(buf, 1, sizeof(buf), f) : 0;
    int bad = !f || ferror(f) || n > 65536;
    int err = errno;
    if (f)
        fclose(f);
    if (bad) {
        fprintf(stderr, "agentvault: ca_cert %s: %s\n", path, f && n > 65536 ? "larger than 64 KiB" : strerror(err));
        return -1;
    }
    fwrite(buf, 1, n, stdout);
    return 0;
}

static int cmd_ca(int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[2], "pem") != 0)
        die_usage("usage: agentvault ca pem [-c FILE] [--state-dir DIR]");
    opts o;
    parse_opts(argc, argv, 3, &o, 0);
    int embedded;
    av_config *cfg = load_config(&o, &embedded);
    const char *ref = av_config_ca_cert(cfg);
    if (ref) {
        /* The root is ca_cert's, not the state directory's (which would
         * get a useless new root). file: is read here; other sources are
         * resolved by the daemon, which serves the result. */
        int rc = strncmp(ref, "file:", 5) == 0 ? print_small_file(ref + 5) : -1;
        if (rc < 0)
            fprintf(stderr, "agentvault: the configuration takes the root from [proxy] ca_cert = %.*s; ask a "
                            "running daemon: curl http://HOST:PORT/ca.pem\n",
                    (int)(strncmp(ref, "command:", 8) == 0 ? 8 + strcspn(ref + 8, " \t") : strlen(ref)), ref);
        av_config_free(cfg);
        return rc < 0 ? 1 : 0;
    }
    const char *sd = av_config_state_dir(cfg);
    if (mkdir_p(sd) < 0) {
        fprintf(stderr, "agentvault: cannot create state directory %s: %s\n", sd, strerror(errno));
        av_config_free(cfg);
        return 1;
    }
    char *pem = NULL;
    char err[512] = "";
    int rc = av_ca_root_pem_from_dir(sd, &pem, err, sizeof(err));
    av_config_free(cfg);
    if (rc != AV_OK) {
        fprintf(stderr, "agentvault: %s\n", err[0] ? err : av_strerror(rc));
        return 1;
    }
    fputs(pem, stdout);
    av_free(pem);
    return 0;
}

/* ---- token: the proxy-token store ------------------------------------------ */

static void token_list_line(void *ud, const char *name, const char *services, long long created, long long expires)
{
    (void)ud;
    char c[32], e[32] = "never";
    time_t t = (time_t)created;
    struct tm tm;
    strftime(c, sizeof(c), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    if (expires) {
        t = (time_t)expires;
        strftime(e, sizeof(e), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    }
    printf("%-24s services=%s created=%s expires=%s%s\n", name, services, c, e,
           expires && expires <= (long long)time(NULL) ? " (expired)" : "");
}

/* "24h", "30m", "7d", "3600" (seconds). Returns -1 when invalid. */
static long long parse_ttl(const char *s)
{
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (end == s || v <= 0)
        return -1;
    long long mul = 1;
    if (!strcmp(end, "") || !strcmp(end, "s"))
        mul = 1;
    else if (!strcmp(end, "m"))
        mul = 60;
    else if (!strcmp(end, "h"))
        mul = 3600;
    else if (!strcmp(end, "d"))
        mul = 86400;
    else
        return -1;
    if (v > 3650LL * 86400 / mul)
        return -1;
    return v * mul;
}

static int cmd_token(int argc, char **argv)
{
    if (argc < 3)
        die_usage("usage: agentvault token create --name NAME [--services A,B] [--ttl 24h] | list | revoke NAME "
                  "[-c FILE] [--state-dir DIR]");
    const char *sub = argv[2], *name = NULL, *services = NULL, *ttl = NULL;
    opts o;
    memset(&o, 0, sizeof(o));
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-c") || !strcmp(a, "--config"))
            o.config = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--state-dir"))
            o.state_dir = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--name") && !strcmp(sub, "create"))
            name = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--services") && !strcmp(sub, "create"))
            services = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--ttl") && !strcmp(sub, "create"))
            ttl = need_arg(argc, argv, &i);
        else if (a[0] != '-' && !strcmp(sub, "revoke") && !name)
            name = a;
        else
            die_usage("token %s: unexpected argument '%s'", sub, a);
    }
    int embedded, code;
    char err[1024];
    /* The store itself is not loaded here: a damaged store must stay fixable. */
    av_config *cfg = build_config(&o, &embedded, err, sizeof(err), &code, 0);
    if (!cfg) {
        fprintf(stderr, "agentvault: %s\n", err);
        return code;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/tokens", av_config_state_dir(cfg));
    if (av_config_tokens_file(cfg))
        fprintf(stderr, "agentvault: note: the daemon reads tokens_file %s; this command works on %s (ship that "
                        "file to tokens_file)\n", av_config_tokens_file(cfg), path);
    int rc = AV_OK;
    err[0] = '\0';
    if (!strcmp(sub, "create")) {
        if (!name) {
            av_config_free(cfg);
            die_usage("token create needs --name NAME");
        }
        long long secs = 0;
        if (ttl && (secs = parse_ttl(ttl)) < 0) {
            av_config_free(cfg);
            die_usage("--ttl must be a positive duration like 3600, 30m, 24h or 7d");
        }
        if (services && strcmp(services, "*") != 0) {
            /* every named service must exist in the configuration */
            const char *p = services;
            while (*p) {
                size_t l = strcspn(p, ",");
                size_t k = 0, n = av_config_service_count(cfg);
                while (k < n && !(strlen(av_config_service_name(cfg, k)) == l &&
                                  !strncmp(av_config_service_name(cfg, k), p, l)))
                    k++;
                if (k == n) {
                    fprintf(stderr, "agentvault: token create: no service named %.*s in %s\n", (int)l, p,
                            o.config ? o.config : "the embedded default configuration");
                    av_config_free(cfg);
                    return 1;
                }
                p += l;
                if (*p == ',')
                    p++;
            }
        }
        if (mkdir_p(av_config_state_dir(cfg)) < 0) {
            fprintf(stderr, "agentvault: cannot create state directory %s: %s\n", av_config_state_dir(cfg),
                    strerror(errno));
            av_config_free(cfg);
            return 1;
        }
        char tok[64];
        rc = av_tokens_create(path, name, services, secs, tok, sizeof(tok), err, sizeof(err));
        if (rc == AV_OK) {
            printf("%s\n", tok); /* shown once: only its hash is stored */
            fflush(stdout);
            explicit_bzero(tok, sizeof(tok));
            fprintf(stderr, "agentvault: token %s created; it is shown once. The daemon uses it after "
                            "a restart or SIGHUP.\n", name);
        }
    } else if (!strcmp(sub, "list")) {
        rc = av_tokens_list(path, token_list_line, NULL, err, sizeof(err));
    } else if (!strcmp(sub, "revoke")) {
        if (!name) {
            av_config_free(cfg);
            die_usage("token revoke needs NAME");
        }
        rc = av_tokens_revoke(path, name, err, sizeof(err));
        if (rc == AV_OK)
            fprintf(stderr, "agentvault: token %s revoked; send the daemon SIGHUP to drop it now\n", name);
    } else {
        av_config_free(cfg);
        die_usage("unknown token command '%s' (create, list, revoke)", sub);
    }
    av_config_free(cfg);
    if (rc != AV_OK) {
        fprintf(stderr, "agentvault: %s\n", err[0] ? err : av_strerror(rc));
        return 1;
    }
    return 0;
}

/* agentvault pending | approve | deny: the CLI of requests held for a
 * person, through the daemon's control socket (daemon/control.c). */
static int cmd_decide(int argc, char **argv)
{
    opts o;
    memset(&o, 0, sizeof(o));
    char *rest[64];
    int nrest = 0;
    rest[nrest++] = argv[0];
    rest[nrest++] = argv[1];
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config"))
            o.config = need_arg(argc, argv, &i);
        else if (!strcmp(argv[i], "--state-dir"))
            o.state_dir = need_arg(argc, argv, &i);
        else if (nrest < 63)
            rest[nrest++] = argv[i];
        else
            die_usage("too many arguments");
    }
    rest[nrest] = NULL;
    int embedded, code;
    char err[1024];
    av_config *cfg = build_config(&o, &embedded, err, sizeof(err), &code, 0);
    if (!cfg) {
        fprintf(stderr, "agentvault: %s\n", err);
        return code;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", av_config_state_dir(cfg));
    av_config_free(cfg);
    return ctl_client(dir, nrest, rest);
}

int main(int argc, char **argv)
{
    /* SECURITY 12: no core dumps or ptrace-readable memory with secrets. */
#ifndef AV_SANITIZED
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#endif
    if (fault_setup() != 0) /* sanitizer builds: tests/fault */
        return 1;
    if (argc < 2)
        die_usage("missing command");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("agentvault %s (libagentvault %s)\n", AV_DAEMON_VERSION, av_version_string());
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc, argv);
    if (!strcmp(cmd, "check"))
        return cmd_check(argc, argv);
    if (!strcmp(cmd, "ca"))
        return cmd_ca(argc, argv);
    if (!strcmp(cmd, "run"))
        return cmd_run(argc, argv);
    if (!strcmp(cmd, "secret"))
        return cmd_secret(argc, argv);
    if (!strcmp(cmd, "token"))
        return cmd_token(argc, argv);
    if (!strcmp(cmd, "pending") || !strcmp(cmd, "approve") || !strcmp(cmd, "deny"))
        return cmd_decide(argc, argv);
    die_usage("unknown command '%s'", cmd);
}
