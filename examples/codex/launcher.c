/* launcher.c - agentvault-codex: the OpenAI Codex CLI with its model traffic
 * going through libagentvault, embedded in this process.
 *
 *   agentvault-codex [OPTIONS] [--] [CODEX ARGS...]
 *
 * A context runs on its own thread (av_ctx_start). Its only service, unless
 * -c FILE names others, is api.openai.com with `auth = bearer` and `secret =
 * env:OPENAI_API_KEY`. A gateway (av_gateway_open) on an ephemeral loopback
 * port takes Codex's plain HTTP and WebSocket requests, injects the real key
 * and sends them to https://api.openai.com over verified TLS. Codex runs with
 *
 *   -c openai_base_url="http://127.0.0.1:PORT/v1"
 *
 * and placeholder keys: the real key stays in this process, where only the
 * library reads it; Codex's environment never holds it. No proxy and no CA
 * variables are involved.
 *
 * Exit status: Codex's, 128+N if it was killed by signal N, 127 if it cannot
 * be found, 126 if it cannot be executed, 2 for a bad option, 1 if the vault
 * could not start. Errors are one line on stderr; nothing secret is printed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pipe2, explicit_bzero, getline, strcasecmp */
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

extern char **environ;

#define PROG "agentvault-codex"
#define UPSTREAM "https://api.openai.com"
/* What Codex gets instead of a key; the gateway replaces its Authorization. */
#define PLACEHOLDER "sk-agentvault-placeholder"
/* After Codex exits, in-flight exchanges get this long to finish. */
#define DRAIN_SECONDS 2.0
#define MAX_RESOLVE 64
#define MAX_ENV_SECRETS 64
#define PASSWORD_MAX 4096

enum { EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_NOEXEC = 126, EXIT_NOTFOUND = 127 };

/* LeakSanitizer needs to ptrace the process at exit, which a non-dumpable
 * process forbids; sanitizer builds keep the default. */
#if defined(__SANITIZE_ADDRESS__)
#define AV_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AV_SANITIZED 1
#endif
#endif

static const char usage_text[] =
    "usage: " PROG " [OPTIONS] [--] [CODEX ARGS...]\n"
    "\n"
    "Runs the Codex CLI with its OpenAI traffic going through an embedded\n"
    "agentvault gateway: Codex gets a placeholder key, the gateway injects the\n"
    "real one (from OPENAI_API_KEY, read only by the vault) and talks verified\n"
    "TLS to https://api.openai.com.\n"
    "\n"
    "options:\n"
    "  -c, --config FILE        use the services of an agentvault.conf instead of the\n"
    "                           built-in one (api.openai.com, bearer, env:OPENAI_API_KEY)\n"
    "  --codex PATH             the Codex executable (default: codex, from PATH)\n"
    "  --state-dir DIR          agentvault state (default: $XDG_STATE_HOME/agentvault\n"
    "                           or ~/.local/state/agentvault)\n"
    "  --password-file FILE     master password of the vault, for vault:NAME secrets\n"
    "                           (default: $AGENTVAULT_PASSWORD)\n"
    "  --log-level LEVEL        error, warn (default), info or debug\n"
    "  --log-file FILE          append the vault's log to FILE instead of stderr\n"
    "  --resolve HOST:PORT:ADDR[:DIALPORT]   connect to ADDR for HOST:PORT (tests)\n"
    "  --upstream-cacert FILE   trust these CAs upstream instead of the system's (tests)\n"
    "  -h, --help               this text\n"
    "\n"
    "Everything after the options (or after --) goes to Codex, e.g.\n"
    "  " PROG " -- exec \"explain this repository\"\n";

/* The child's pid while it runs (0 otherwise); read by the signal handler. */
static volatile sig_atomic_t g_child_pid;

static void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void msg(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* one line, whatever the pieces contained */
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, PROG ": %s\n", line);
}

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    msg("%s (see " PROG " --help)", line);
    exit(EXIT_USAGE);
}

/* ---- options ----------------------------------------------------------------- */

typedef struct opts {
    const char *config;
    const char *codex;
    const char *state_dir;
    const char *cacert;
    const char *password_file;
    const char *log_file;
    const char *resolve[MAX_RESOLVE];
    int nresolve;
    int log_level;
    int first_arg; /* argv index of Codex's first argument */
} opts;

/* Matches argv[*i] against NAME VALUE (and --NAME=VALUE for long options);
 * on a match stores the value, advances *i and returns 1. */
static int take_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '\0') {
        if (*i + 1 >= argc)
            die_usage("%s needs a value", name);
        *val = argv[++*i];
    } else if (a[n] == '=' && name[1] == '-') {
        *val = a + n + 1;
    } else {
        return 0;
    }
    if (!**val)
        die_usage("%s needs a value", name);
    return 1;
}

static void parse_opts(int argc, char **argv, opts *o)
{
    memset(o, 0, sizeof(*o));
    o->codex = "codex";
    o->log_level = AV_LOG_WARN;
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] == '\0')
            break; /* Codex's first argument */
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            exit(0);
        }
        if (take_opt(argc, argv, &i, "-c", &v) || take_opt(argc, argv, &i, "--config", &v)) {
            o->config = v;
        } else if (take_opt(argc, argv, &i, "--codex", &v)) {
            o->codex = v;
        } else if (take_opt(argc, argv, &i, "--state-dir", &v)) {
            o->state_dir = v;
        } else if (take_opt(argc, argv, &i, "--password-file", &v)) {
            o->password_file = v;
        } else if (take_opt(argc, argv, &i, "--log-file", &v)) {
            o->log_file = v;
        } else if (take_opt(argc, argv, &i, "--upstream-cacert", &v)) {
            o->cacert = v;
        } else if (take_opt(argc, argv, &i, "--resolve", &v)) {
            if (o->nresolve >= MAX_RESOLVE)
                die_usage("too many --resolve options (max %d)", MAX_RESOLVE);
            o->resolve[o->nresolve++] = v;
        } else if (take_opt(argc, argv, &i, "--log-level", &v)) {
            o->log_level = av_log_level_parse(v);
            if (o->log_level < 0)
                die_usage("--log-level must be error, warn, info or debug (got '%s')", v);
        } else {
            die_usage("unknown option '%s': Codex's own options go after --", a);
        }
    }
    o->first_arg = i;
}

/* ---- finding Codex ------------------------------------------------------------- */

/* Finds the executable the way execvp would. Returns 0 with its path in
 * |out|, or the exit status (127, 126) after saying why. */
static int find_codex(const char *name, char *out, size_t len)
{
    struct stat st;
    if (strchr(name, '/')) {
        if (stat(name, &st) != 0) {
            int e = errno;
            msg("%s: %s", name, strerror(e));
            return (e == ENOENT || e == ENOTDIR) ? EXIT_NOTFOUND : EXIT_NOEXEC;
        }
        if (S_ISDIR(st.st_mode)) {
            msg("%s: is a directory", name);
            return EXIT_NOEXEC;
        }
        if (access(name, X_OK) != 0) {
            msg("%s: %s", name, strerror(errno));
            return EXIT_NOEXEC;
        }
        if (snprintf(out, len, "%s", name) >= (int)len) {
            msg("%s: path too long", name);
            return EXIT_NOTFOUND;
        }
        return 0;
    }
    const char *path = getenv("PATH");
    if (!path)
        path = "/bin:/usr/bin"; /* glibc's default */
    char denied[PATH_MAX] = "";
    for (const char *p = path;;) {
        size_t n = strcspn(p, ":");
        char cand[PATH_MAX];
        int w = n ? snprintf(cand, sizeof(cand), "%.*s/%s", (int)n, p, name)
                  : snprintf(cand, sizeof(cand), "./%s", name);
        if (w > 0 && w < (int)sizeof(cand) && stat(cand, &st) == 0 && S_ISREG(st.st_mode)) {
            if (access(cand, X_OK) == 0) {
                if (snprintf(out, len, "%s", cand) < (int)len)
                    return 0;
            } else if (!denied[0]) {
                snprintf(denied, sizeof(denied), "%s", cand);
            }
        }
        if (!p[n])
            break;
        p += n + 1;
    }
    if (denied[0]) {
        msg("%s: permission denied", denied);
        return EXIT_NOEXEC;
    }
    msg("%s: command not found in PATH (install Codex with: npm install -g @openai/codex, or give --codex PATH)",
        name);
    return EXIT_NOTFOUND;
}

/* ---- configuration ---------------------------------------------------------------- */

/* $XDG_STATE_HOME/agentvault or ~/.local/state/agentvault, as the daemon. */
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

/* mkdir -p; the directories made are 0700. */
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

/* Variables the vault reads secrets from: Codex does not get them. */
typedef struct env_names {
    char name[MAX_ENV_SECRETS][128];
    size_t n;
} env_names;

static void env_names_add(env_names *e, const char *name, size_t len)
{
    if (e->n >= MAX_ENV_SECRETS || len == 0 || len >= sizeof(e->name[0]))
        return;
    memcpy(e->name[e->n], name, len);
    e->name[e->n][len] = '\0';
    e->n++;
}

/* Collects NAME of every `secret = env:NAME` line of a configuration file
 * the library has already loaded (and so validated). */
static void env_names_from_file(env_names *e, const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) >= 0) {
        char *p = line;
        if (!strncmp(p, "\xEF\xBB\xBF", 3))
            p += 3;
        p += strspn(p, " \t");
        char *eq = strchr(p, '=');
        if (*p == '#' || *p == ';' || *p == '[' || !eq)
            continue;
        size_t klen = (size_t)(eq - p);
        while (klen && (p[klen - 1] == ' ' || p[klen - 1] == '\t'))
            klen--;
        if (klen != 6 || strncasecmp(p, "secret", 6) != 0)
            continue;
        char *v = eq + 1 + strspn(eq + 1, " \t");
        if (strncasecmp(v, "env:", 4) != 0)
            continue;
        v += 4;
        env_names_add(e, v, strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"));
    }
    free(line);
    fclose(f);
}

/* The vault's master password: --password-file or $AGENTVAULT_PASSWORD. */
static int read_password(const opts *o, const char *vault, char **pw, size_t *len)
{
    *pw = NULL;
    *len = 0;
    if (!o->password_file) {
        const char *env = getenv("AGENTVAULT_PASSWORD");
        if (!env || !*env) {
            msg("%s needs its master password: set AGENTVAULT_PASSWORD or give --password-file FILE", vault);
            return -1;
        }
        *len = strlen(env);
        *pw = malloc(*len + 1);
        if (!*pw) {
            msg("out of memory");
            return -1;
        }
        memcpy(*pw, env, *len + 1);
        return 0;
    }
    int fd = open(o->password_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        msg("%s: %s", o->password_file, strerror(errno));
        return -1;
    }
    /* a password, an optional CR LF, and one byte to tell "too long" */
    const size_t cap = PASSWORD_MAX + 3;
    char *buf = malloc(cap);
    size_t n = 0;
    ssize_t r = 0;
    while (buf && n < cap && (r = read(fd, buf + n, cap - n)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (!buf || r < 0) {
        msg("%s: %s", o->password_file, buf ? strerror(errno) : "out of memory");
        free(buf);
        return -1;
    }
    if (n < cap && n && buf[n - 1] == '\n') {
        n--;
        if (n && buf[n - 1] == '\r')
            n--;
    }
    if (n == 0 || n > PASSWORD_MAX) {
        msg("%s: the password must be 1 to %d bytes", o->password_file, PASSWORD_MAX);
        explicit_bzero(buf, cap);
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *pw = buf;
    *len = n;
    return 0;
}

/* Opens the vault vault:NAME secrets come from and lends it to |cfg|. */
static int open_vault(av_config *cfg, const opts *o, av_vault **out)
{
    char path[PATH_MAX];
    const char *vp = av_config_vault_path(cfg);
    int w = vp ? snprintf(path, sizeof(path), "%s", vp)
               : snprintf(path, sizeof(path), "%s/vault.avv", av_config_state_dir(cfg));
    if (w < 0 || w >= (int)sizeof(path)) {
        msg("vault path too long");
        return -1;
    }
    char err[512] = "";
    int needs = av_vault_needs_password(path, err, sizeof(err));
    if (needs < 0) {
        msg("%s", err[0] ? err : av_strerror(needs));
        return -1;
    }
    char *pw = NULL;
    size_t pwlen = 0;
    if (needs && read_password(o, path, &pw, &pwlen) != 0)
        return -1;
    int rc = av_vault_open(out, path, pw, pwlen, err, sizeof(err));
    if (pw) {
        explicit_bzero(pw, pwlen);
        free(pw);
    }
    if (rc != AV_OK) {
        msg("%s", err[0] ? err : av_strerror(rc));
        return -1;
    }
    av_config_set_vault(cfg, *out);
    return 0;
}

/* Builds the validated configuration. Returns NULL after saying why, with
 * the exit status in *code. */
static av_config *build_config(const opts *o, env_names *secret_vars, av_vault **vault, int *code)
{
    av_config *cfg = NULL;
    *code = EXIT_FAIL;
    if (av_config_new(&cfg) != AV_OK) {
        msg("out of memory");
        return NULL;
    }
    if (o->config) {
        if (av_config_load_file(cfg, o->config) != AV_OK) {
            msg("%s", av_config_error(cfg));
            goto fail;
        }
        env_names_from_file(secret_vars, o->config);
    } else {
        static const char *const service[] = {"host", "api.openai.com", "auth", "bearer",
                                              "secret", "env:OPENAI_API_KEY", NULL};
        if (av_config_add_section(cfg, "service", "openai", service) != AV_OK) {
            msg("built-in service: %s", av_config_error(cfg));
            goto fail;
        }
        env_names_add(secret_vars, "OPENAI_API_KEY", strlen("OPENAI_API_KEY"));
    }
    /* Only the gateway: no proxy listener. */
    av_config_clear_listen(cfg);
    for (int i = 0; i < o->nresolve; i++)
        if (av_config_add_resolve(cfg, o->resolve[i]) != AV_OK) {
            msg("--resolve %s: %s (see " PROG " --help)", o->resolve[i], av_config_error(cfg));
            *code = EXIT_USAGE;
            goto fail;
        }
    if (o->cacert && av_config_set_upstream_cafile(cfg, o->cacert) != AV_OK) {
        msg("--upstream-cacert: %s (see " PROG " --help)", av_config_error(cfg));
        *code = EXIT_USAGE;
        goto fail;
    }
    if (o->state_dir) {
        if (av_config_set_state_dir(cfg, o->state_dir) != AV_OK) {
            msg("--state-dir: %s (see " PROG " --help)", av_config_error(cfg));
            *code = EXIT_USAGE;
            goto fail;
        }
    } else if (!av_config_state_dir(cfg)) {
        char dir[PATH_MAX];
        if (default_state_dir(dir, sizeof(dir)) < 0) {
            msg("cannot determine a state directory: set HOME, XDG_STATE_HOME or --state-dir");
            goto fail;
        }
        av_config_set_state_dir(cfg, dir);
    }
    if (av_config_validate(cfg) != AV_OK) {
        msg("%s", av_config_error(cfg));
        goto fail;
    }
    const char *sd = av_config_state_dir(cfg);
    if (mkdir_p(sd) < 0) {
        msg("cannot create state directory %s: %s", sd, strerror(errno));
        goto fail;
    }
    if (av_config_uses_vault(cfg) && open_vault(cfg, o, vault) != 0)
        goto fail;
    return cfg;
fail:
    av_config_free(cfg);
    return NULL;
}

/* ---- Codex's command line and environment ------------------------------------- */

/* Subcommands that talk to the model. Codex 0.131 drops `-c` overrides given
 * before the subcommand when the subcommand has its own, so the base URL is
 * given after the subcommand too. */
static const char *const model_subcommands[] = {"exec", "e", "review", "resume", "fork"};
/* Codex's top-level options that take a value (to find the subcommand). */
static const char *const valued_options[] = {
    "-c", "--config", "--enable", "--disable", "--remote", "--remote-auth-token-env", "-m", "--model",
    "--local-provider", "-p", "--profile", "--profile-v2", "-s", "--sandbox", "-C", "--cd", "--add-dir",
    "-a", "--ask-for-approval"};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int in_list(const char *s, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s, list[i]))
            return 1;
    return 0;
}

/* Index in args of a model subcommand, or -1. */
static int find_subcommand(char **args, int n)
{
    for (int k = 0; k < n; k++) {
        const char *a = args[k];
        if (!strcmp(a, "--") || !strcmp(a, "-i") || !strcmp(a, "--image"))
            return -1; /* a prompt follows, or values we cannot count */
        if (a[0] == '-') {
            if (in_list(a, valued_options, NELEM(valued_options)))
                k++;
            continue;
        }
        return in_list(a, model_subcommands, NELEM(model_subcommands)) ? k : -1;
    }
    return -1;
}

/* codex -c openai_base_url="BASE" [ARGS up to the subcommand -c ...] ARGS */
static char **codex_argv(const char *argv0, const char *base_opt, char **args, int n)
{
    char **v = calloc((size_t)n + 6, sizeof(*v));
    if (!v)
        return NULL;
    int sub = find_subcommand(args, n), k = 0;
    v[k++] = (char *)argv0;
    v[k++] = (char *)"-c";
    v[k++] = (char *)base_opt;
    for (int i = 0; i < n; i++) {
        v[k++] = args[i];
        if (i == sub) {
            v[k++] = (char *)"-c";
            v[k++] = (char *)base_opt;
        }
    }
    v[k] = NULL;
    return v;
}

static int name_is(const char *entry, size_t len, const char *name, int icase)
{
    return strlen(name) == len && (icase ? strncasecmp(entry, name, len) : strncmp(entry, name, len)) == 0;
}

/* Our environment minus proxy variables, the vault's secrets and the
 * master password, plus the placeholders. */
static char **codex_envp(const env_names *secret_vars)
{
    static const char *const proxy_vars[] = {"HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"};
    static const char *const dropped[] = {"OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL",
                                          "AGENTVAULT_PASSWORD"};
    size_t n = 0;
    while (environ[n])
        n++;
    char **v = calloc(n + 3, sizeof(*v));
    if (!v)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        const char *eq = strchr(e, '=');
        size_t len = eq ? (size_t)(eq - e) : strlen(e);
        int drop = 0;
        for (size_t j = 0; j < NELEM(proxy_vars) && !drop; j++)
            drop = name_is(e, len, proxy_vars[j], 1);
        for (size_t j = 0; j < NELEM(dropped) && !drop; j++)
            drop = name_is(e, len, dropped[j], 0);
        for (size_t j = 0; j < secret_vars->n && !drop; j++)
            drop = name_is(e, len, secret_vars->name[j], 0);
        if (!drop)
            v[k++] = (char *)e;
    }
    v[k++] = (char *)"OPENAI_API_KEY=" PLACEHOLDER;
    v[k++] = (char *)"CODEX_API_KEY=" PLACEHOLDER;
    v[k] = NULL;
    return v;
}

/* ---- the child ------------------------------------------------------------------- */

static const int fwd_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};

/* Relays a signal sent to us (kill(1), a supervisor) to Codex. Signals the
 * kernel sent the terminal's process group (si_code > 0: ^C, ^\, hangup,
 * resize) already reached Codex, which shares our process group. */
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

/* Runs Codex, forwarding signals; returns the launcher's exit status. */
static int run_codex(const char *path, char **argv, char **envp)
{
    sigset_t fwd, oldmask;
    sigemptyset(&fwd);
    for (size_t i = 0; i < NELEM(fwd_signals); i++)
        sigaddset(&fwd, fwd_signals[i]);
    sigprocmask(SIG_BLOCK, &fwd, &oldmask);

    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0) {
        msg("pipe: %s", strerror(errno));
        sigprocmask(SIG_SETMASK, &oldmask, NULL);
        return EXIT_FAIL;
    }
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        msg("fork: %s", strerror(errno));
        close(ep[0]);
        close(ep[1]);
        sigprocmask(SIG_SETMASK, &oldmask, NULL);
        return EXIT_FAIL;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls here: we were multi-threaded. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        sigaction(SIGPIPE, &dfl, NULL);
        /* Without the gateway Codex is of no use: end with us. */
        prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
        if (getppid() != parent)
            _exit(128 + SIGTERM);
        sigprocmask(SIG_SETMASK, &oldmask, NULL);
        execve(path, argv, envp);
        int e = errno;
        ssize_t w = write(ep[1], &e, sizeof(e));
        (void)w;
        _exit((e == ENOENT || e == ENOTDIR) ? EXIT_NOTFOUND : EXIT_NOEXEC);
    }
    close(ep[1]);
    g_child_pid = (sig_atomic_t)pid;
    /* Forward signals now; those that arrived while blocked are delivered
     * (and forwarded) on unblocking. Signals ignored at start stay ignored. */
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
    sigprocmask(SIG_SETMASK, &oldmask, NULL);

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
            msg("waitid: %s", strerror(errno));
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
            msg("waitpid: %s", strerror(errno));
            return EXIT_FAIL;
        }
    }
    if (exec_errno) {
        msg("%s: %s", path, strerror(exec_errno));
        return (exec_errno == ENOENT || exec_errno == ENOTDIR) ? EXIT_NOTFOUND : EXIT_NOEXEC;
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return EXIT_FAIL;
}

/* ---- main ------------------------------------------------------------------------ */

static void log_line(void *ud, int level, const char *m)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    FILE *f = ud;
    fprintf(f, PROG ": %s: %s\n", level >= 0 && level <= 3 ? names[level] : "info", m);
    fflush(f);
}

static FILE *open_log(const char *path)
{
    if (!path)
        return stderr;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "a") : NULL;
    if (!f) {
        msg("--log-file %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    return f;
}

int main(int argc, char **argv)
{
    /* No core dumps or ptrace-readable memory: the key lives here. */
#ifndef AV_SANITIZED
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
#endif
    opts o;
    parse_opts(argc, argv, &o);

    char codex_path[PATH_MAX];
    int rc = find_codex(o.codex, codex_path, sizeof(codex_path));
    if (rc != 0)
        return rc;
    if (!o.config) {
        /* Only the presence: the value is read by the vault alone. */
        const char *key = getenv("OPENAI_API_KEY");
        if (!key || !*key) {
            msg("OPENAI_API_KEY is not set: export your OpenAI API key (the vault keeps it; Codex gets a "
                "placeholder)");
            return EXIT_FAIL;
        }
    }
    FILE *logf = open_log(o.log_file);
    if (!logf)
        return EXIT_FAIL;

    /* waitpid needs SIGCHLD not ignored; broken pipes are errors, not deaths. */
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);

    env_names secret_vars;
    memset(&secret_vars, 0, sizeof(secret_vars));
    av_vault *vault = NULL;
    int code = EXIT_FAIL;
    av_config *cfg = build_config(&o, &secret_vars, &vault, &code);
    if (!cfg) {
        av_vault_close(vault);
        return code;
    }
    char err[512] = "";
    av_ctx *ctx = NULL;
    rc = av_ctx_new(&ctx, cfg, err, sizeof(err));
    av_config_free(cfg);
    if (rc != AV_OK) {
        msg("%s", err[0] ? err : av_strerror(rc));
        av_vault_close(vault);
        return EXIT_FAIL;
    }
    av_ctx_set_log(ctx, log_line, logf, o.log_level);
    rc = av_ctx_start(ctx);
    if (rc != AV_OK) {
        msg("cannot start the vault: %s", av_strerror(rc));
        av_ctx_free(ctx);
        av_vault_close(vault);
        return EXIT_FAIL;
    }
    int status = EXIT_FAIL;
    char url[64];
    rc = av_gateway_open(ctx, UPSTREAM, url, sizeof(url));
    if (rc != AV_OK) {
        msg("cannot open a gateway to %s: %s", UPSTREAM, av_strerror(rc));
    } else {
        char base_opt[128];
        snprintf(base_opt, sizeof(base_opt), "openai_base_url=\"%s/v1\"", url);
        char **cargv = codex_argv(o.codex, base_opt, argv + o.first_arg, argc - o.first_arg);
        char **cenvp = codex_envp(&secret_vars);
        if (!cargv || !cenvp)
            msg("out of memory");
        else
            status = run_codex(codex_path, cargv, cenvp);
        free(cargv);
        free(cenvp);
    }
    av_ctx_stop(ctx, DRAIN_SECONDS);
    av_ctx_free(ctx);
    av_vault_close(vault);
    if (logf != stderr)
        fclose(logf);
    return status;
}
