/* secret.c - `agentvault secret`: add, list, remove secrets and change the
 * master password of the encrypted vault.
 *
 *   agentvault secret set NAME   value from stdin (not a terminal) or a
 *                                no-echo prompt; never from argv
 *   agentvault secret list       names and dates, never values
 *   agentvault secret rm NAME
 *   agentvault secret passwd     re-wrap under a new password
 *
 * The master password comes from --password-file FILE, the environment
 * variable AGENTVAULT_PASSWORD (removed from the environment and wiped
 * as soon as it is read), or a no-echo prompt on /dev/tty. The new
 * password of `passwd` (and of a vault that `set` creates) comes from
 * --new-password-file, AGENTVAULT_NEW_PASSWORD or a prompt, twice.
 *
 * Everything goes through the public API; no value is ever printed.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#include "secret.h"

#define SECRET_USAGE                                                                      \
    "usage:\n"                                                                            \
    "  agentvault secret set NAME   [OPTIONS]   (the value is read from stdin or a prompt)\n" \
    "  agentvault secret list       [OPTIONS]\n"                                          \
    "  agentvault secret rm NAME    [OPTIONS]\n"                                          \
    "  agentvault secret passwd     [OPTIONS]\n"                                          \
    "options:\n"                                                                          \
    "  --vault PATH              the vault file (default: <state dir>/vault.avv)\n"      \
    "  -c FILE | --state-dir DIR where the default vault lives\n"                         \
    "  --password-file FILE      read the master password from FILE\n"                    \
    "  --new-password-file FILE  the new password (passwd, or set creating a vault)\n"    \
    "  --no-password             set: create the vault with a key file, no password\n"    \
    "The master password may also come from AGENTVAULT_PASSWORD (and the new one\n"       \
    "from AGENTVAULT_NEW_PASSWORD); otherwise it is prompted for on the terminal.\n"

#define VALUE_MAX (64 * 1024)
#define PASSWORD_MAX 4096
#define NAME_MAX_LEN 64

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/* A wiped, heap-held byte string (password or value). */
typedef struct {
    char *p;
    size_t len;
} bytes;

typedef struct {
    const char *cmd;
    const char *name;
    const char *vault;
    const char *config;
    const char *state_dir;
    const char *password_file;
    const char *new_password_file;
    int no_password;
} secret_opts;

/* Passwords taken from the environment at startup. */
static bytes g_env_pw, g_env_new_pw;
static int g_env_pw_set, g_env_new_pw_set;

/* The terminal state to restore if a signal arrives during a prompt. */
static volatile sig_atomic_t g_tty_fd = -1;
static struct termios g_tty_saved;

static void bytes_free(bytes *b)
{
    if (b->p) {
        explicit_bzero(b->p, b->len + 1);
        free(b->p);
    }
    b->p = NULL;
    b->len = 0;
}

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("agentvault: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
    fputs("run 'agentvault secret --help' for usage\n", stderr);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("agentvault: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n", stderr);
    va_end(ap);
}

/* take_env copies variable |name| out of the environment, unsets it and
 * wipes the whole original "NAME=value" string (the memory that
 * /proc/PID/environ shows). */
static int take_env(const char *name, bytes *out)
{
    char *v = getenv(name);
    if (!v)
        return 0;
    size_t n = strlen(v), nl = strlen(name);
    char *entry = v - nl - 1; /* getenv points just past "NAME=" */
    out->p = malloc(n + 1);
    if (out->p) {
        memcpy(out->p, v, n + 1);
        out->len = n;
    }
    unsetenv(name);
    explicit_bzero(entry, nl + 1 + n);
    return out->p != NULL;
}

static int name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

/* ---- reading passwords and values --------------------------------------- */

/* read_fd_all reads up to |max| bytes from |fd|; 1 more means too long. */
static int read_fd_all(int fd, size_t max, bytes *out)
{
    char *buf = malloc(max + 2);
    size_t off = 0;
    if (!buf)
        return -1;
    while (off < max + 1) {
        ssize_t r = read(fd, buf + off, max + 1 - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            explicit_bzero(buf, off);
            free(buf);
            return -1;
        }
        if (r == 0)
            break;
        off += (size_t)r;
    }
    buf[off] = '\0';
    out->p = buf;
    out->len = off;
    return 0;
}

/* strip_newline drops one trailing "\n" or "\r\n". */
static void strip_newline(bytes *b)
{
    if (b->len && b->p[b->len - 1] == '\n') {
        b->p[--b->len] = '\0';
        if (b->len && b->p[b->len - 1] == '\r')
            b->p[--b->len] = '\0';
    }
}

static void on_prompt_signal(int sig)
{
    if (g_tty_fd >= 0)
        tcsetattr(g_tty_fd, TCSAFLUSH, &g_tty_saved);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* prompt_tty asks on /dev/tty without echo. Returns 0, or -1 with a
 * message printed. */
static int prompt_tty(const char *prompt, size_t max, const char *what, bytes *out)
{
    int fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        const char *hint = "set AGENTVAULT_PASSWORD or use --password-file";
        if (strcmp(what, "the value") == 0)
            hint = "pipe the value into stdin";
        else if (strstr(what, "new"))
            hint = "set AGENTVAULT_NEW_PASSWORD or use --new-password-file";
        fail("no terminal to ask for %s: %s", what, hint);
        return -1;
    }
    struct termios t;
    int echo_off = 0;
    struct sigaction sa, old_int, old_term, old_hup;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_prompt_signal;
    sigemptyset(&sa.sa_mask);
    if (tcgetattr(fd, &g_tty_saved) == 0) {
        t = g_tty_saved;
        t.c_lflag &= (tcflag_t) ~(ECHO | ECHOE | ECHOK | ECHONL);
        g_tty_fd = fd;
        sigaction(SIGINT, &sa, &old_int);
        sigaction(SIGTERM, &sa, &old_term);
        sigaction(SIGHUP, &sa, &old_hup);
        echo_off = tcsetattr(fd, TCSAFLUSH, &t) == 0;
    }
    if (write(fd, prompt, strlen(prompt)) < 0) {
        /* the prompt is cosmetic; reading still works */
    }
    char *buf = malloc(max + 2);
    size_t off = 0;
    int rc = -1, too_long = 0;
    if (buf) {
        for (;;) {
            char c;
            ssize_t r = read(fd, &c, 1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0 || c == '\n')
                break;
            if (off < max + 1)
                buf[off++] = c;
            else
                too_long = 1;
            c = 0;
        }
        if (off > max)
            too_long = 1;
        buf[off < max + 1 ? off : max + 1] = '\0';
        rc = 0;
    }
    if (echo_off)
        tcsetattr(fd, TCSAFLUSH, &g_tty_saved);
    if (g_tty_fd >= 0) {
        g_tty_fd = -1;
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        sigaction(SIGHUP, &old_hup, NULL);
    }
    if (write(fd, "\n", 1) < 0) {
        /* cosmetic */
    }
    close(fd);
    if (rc == 0 && too_long) {
        fail("%s is longer than %zu bytes", what, max);
        explicit_bzero(buf, max + 2);
        free(buf);
        return -1;
    }
    if (rc != 0) {
        fail("out of memory");
        return -1;
    }
    if (off && buf[off - 1] == '\r')
        buf[--off] = '\0';
    out->p = buf;
    out->len = off;
    return 0;
}

/* read_password_file reads a password from |path| (one trailing newline
 * is dropped). */
static int read_password_file(const char *path, bytes *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail("%s: cannot open password file: %s", path, strerror(errno));
        return -1;
    }
    int rc = read_fd_all(fd, PASSWORD_MAX + 2, out);
    close(fd);
    if (rc != 0) {
        fail("%s: cannot read password file: %s", path, strerror(errno));
        return -1;
    }
    strip_newline(out);
    if (out->len > PASSWORD_MAX) {
        fail("%s: the password is longer than %d bytes", path, PASSWORD_MAX);
        bytes_free(out);
        return -1;
    }
    return 0;
}

/* get_password finds the current master password. */
static int get_password(const secret_opts *o, const char *path, bytes *out)
{
    if (o->password_file)
        return read_password_file(o->password_file, out);
    if (g_env_pw_set) {
        *out = g_env_pw;
        g_env_pw.p = NULL;
        g_env_pw.len = 0;
        g_env_pw_set = 0;
        return 0;
    }
    char prompt[PATH_MAX + 64];
    snprintf(prompt, sizeof(prompt), "Master password for %s: ", path);
    return prompt_tty(prompt, PASSWORD_MAX, "the master password", out);
}

/* get_new_password finds a new master password (prompted twice). */
static int get_new_password(const secret_opts *o, const char *path, bytes *out)
{
    if (o->new_password_file)
        return read_password_file(o->new_password_file, out);
    if (g_env_new_pw_set) {
        *out = g_env_new_pw;
        g_env_new_pw.p = NULL;
        g_env_new_pw.len = 0;
        g_env_new_pw_set = 0;
        return 0;
    }
    /* creating a vault: AGENTVAULT_PASSWORD / --password-file name it */
    if (strcmp(o->cmd, "set") == 0 && (o->password_file || g_env_pw_set))
        return get_password(o, path, out);
    char prompt[PATH_MAX + 64];
    bytes again = {0};
    snprintf(prompt, sizeof(prompt), "New master password for %s: ", path);
    if (prompt_tty(prompt, PASSWORD_MAX, "the new master password", out) != 0)
        return -1;
    if (prompt_tty("Repeat the new master password: ", PASSWORD_MAX, "the new master password",
                   &again) != 0) {
        bytes_free(out);
        return -1;
    }
    int same = out->len == again.len && memcmp(out->p, again.p, out->len) == 0;
    bytes_free(&again);
    if (!same) {
        fail("the two passwords differ; nothing was changed");
        bytes_free(out);
        return -1;
    }
    return 0;
}

/* get_value reads the secret value: stdin when it is not a terminal,
 * otherwise a no-echo prompt. One trailing newline is dropped. */
static int get_value(const char *name, bytes *out)
{
    if (!isatty(STDIN_FILENO)) {
        if (read_fd_all(STDIN_FILENO, VALUE_MAX + 2, out) != 0) {
            fail("cannot read the value from stdin: %s", strerror(errno));
            return -1;
        }
        strip_newline(out);
    } else {
        char prompt[128];
        snprintf(prompt, sizeof(prompt), "Value for %s: ", name);
        if (prompt_tty(prompt, VALUE_MAX, "the value", out) != 0)
            return -1;
    }
    if (out->len > VALUE_MAX) {
        fail("the value is larger than %d bytes", VALUE_MAX);
        bytes_free(out);
        return -1;
    }
    if (out->len == 0) {
        fail("the value is empty (pipe it into stdin or type it at the prompt)");
        bytes_free(out);
        return -1;
    }
    return 0;
}

/* ---- paths -------------------------------------------------------------- */

/* mkdir_p creates |path| and its parents with mode 0700. */
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

/* vault_path picks --vault, or vault.avv in the state directory
 * (--state-dir, the config's state_dir, $XDG_STATE_HOME/agentvault or
 * ~/.local/state/agentvault). *is_default says whether the state
 * directory may be created. Returns 0 or an exit status. */
static int vault_path(const secret_opts *o, char *out, size_t len, int *is_default)
{
    char dir[PATH_MAX];
    *is_default = 0;
    if (o->vault) {
        if (snprintf(out, len, "%s", o->vault) >= (int)len) {
            fail("--vault: path too long");
            return EXIT_USAGE;
        }
        return 0;
    }
    *is_default = 1;
    if (o->state_dir) {
        snprintf(dir, sizeof(dir), "%s", o->state_dir);
    } else if (o->config) {
        av_config *cfg = NULL;
        if (av_config_new(&cfg) != AV_OK) {
            fail("out of memory");
            return EXIT_RUNTIME;
        }
        if (av_config_load_file(cfg, o->config) != AV_OK) {
            fail("%s", av_config_error(cfg));
            av_config_free(cfg);
            return EXIT_RUNTIME;
        }
        const char *sd = av_config_state_dir(cfg);
        dir[0] = '\0';
        if (sd)
            snprintf(dir, sizeof(dir), "%s", sd);
        av_config_free(cfg);
    } else {
        dir[0] = '\0';
    }
    if (!dir[0]) {
        const char *xdg = getenv("XDG_STATE_HOME");
        const char *home = getenv("HOME");
        if (xdg && xdg[0] == '/')
            snprintf(dir, sizeof(dir), "%s/agentvault", xdg);
        else if (home && home[0] == '/')
            snprintf(dir, sizeof(dir), "%s/.local/state/agentvault", home);
        else {
            fail("cannot determine a state directory: set HOME, XDG_STATE_HOME, --state-dir or "
                 "--vault");
            return EXIT_RUNTIME;
        }
    }
    if (snprintf(out, len, "%s/vault.avv", dir) >= (int)len) {
        fail("state directory path too long");
        return EXIT_RUNTIME;
    }
    return 0;
}

/* open_vault opens an existing vault, asking for its password if needed. */
static int open_vault(const secret_opts *o, const char *path, av_vault **v)
{
    char err[1024] = "";
    struct stat st;
    if (lstat(path, &st) != 0 && errno == ENOENT) { /* a link is refused by the library */
        fail("%s: no such vault (create one with 'agentvault secret set NAME')", path);
        return EXIT_RUNTIME;
    }
    int needs = av_vault_needs_password(path, err, sizeof(err));
    if (needs < 0) {
        fail("%s", err[0] ? err : av_strerror(needs));
        return EXIT_RUNTIME;
    }
    bytes pw = {0};
    if (needs && get_password(o, path, &pw) != 0)
        return EXIT_RUNTIME;
    int rc = av_vault_open(v, path, needs ? pw.p : NULL, needs ? pw.len : 0, err, sizeof(err));
    bytes_free(&pw);
    if (rc != AV_OK) {
        fail("%s", err[0] ? err : av_strerror(rc));
        return EXIT_RUNTIME;
    }
    return 0;
}

/* ---- the writers' lock ---------------------------------------------------- */

#define LOCK_WAIT_MS 60000

/* lock_vault takes the exclusive lock PATH.lock that serializes writers
 * (each one rewrites the whole file: without it, two at once lost one's
 * change). `secret set` holds it to create a missing vault; the changes
 * themselves (av_vault_set, av_vault_remove, av_vault_passwd) take it in
 * the library, read the file again under it and save. Readers need
 * no lock: a save is an atomic rename. Returns the descriptor (released at
 * close or exit), -2 when the directory does not exist (the caller then
 * reports the missing vault), or -1 (message printed). */
static int lock_vault(const char *path)
{
    char lp[PATH_MAX];
    if (snprintf(lp, sizeof(lp), "%s.lock", path) >= (int)sizeof(lp)) {
        fail("%s: path too long", path);
        return -1;
    }
    int fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0 && errno == ENOENT)
        return -2;
    if (fd < 0) {
        fail("cannot open the vault's lock file %s: %s", lp, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077)) {
        fail("%s: the vault's lock file must be a regular file owned by you with mode 0600", lp);
        close(fd);
        return -1;
    }
    for (int waited = 0;; waited += 50) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return fd;
        if (errno != EWOULDBLOCK && errno != EINTR) {
            fail("cannot lock %s: %s", lp, strerror(errno));
            break;
        }
        if (waited >= LOCK_WAIT_MS) {
            fail("%s: another 'agentvault secret' command has held the vault for %d s; try again "
                 "when it has finished",
                 lp, LOCK_WAIT_MS / 1000);
            break;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    close(fd);
    return -1;
}

static void unlock_vault(int fd)
{
    if (fd >= 0)
        close(fd);
}

/* ---- commands ----------------------------------------------------------- */

static int do_set(const secret_opts *o, const char *path, int is_default)
{
    char err[1024] = "";
    struct stat st;
    av_vault *v = NULL;
    bytes value = {0}, pw = {0};
    int exists = lstat(path, &st) == 0; /* a symbolic link is refused, never created through */
    if (exists && o->no_password) {
        usage_error("--no-password applies only when creating a vault, and %s exists", path);
        return EXIT_USAGE;
    }
    if (get_value(o->name, &value) != 0)
        return EXIT_RUNTIME;
    int status = EXIT_RUNTIME, lock = -1;
    if (!exists && is_default) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            if (mkdir_p(dir) != 0) {
                fail("cannot create state directory %s: %s", dir, strerror(errno));
                goto out;
            }
        }
    }
    if ((lock = lock_vault(path)) == -1)
        goto out;
    exists = lstat(path, &st) == 0; /* again, under the lock */
    if (exists && o->no_password) {
        usage_error("--no-password applies only when creating a vault, and %s exists", path);
        status = EXIT_USAGE;
        goto out;
    }
    if (exists) {
        if ((status = open_vault(o, path, &v)) != 0)
            goto out;
        status = EXIT_RUNTIME;
    } else {
        if (lock == -2) {
            fail("cannot create %s: its directory does not exist", path);
            goto out;
        }
        if (!o->no_password && get_new_password(o, path, &pw) != 0)
            goto out;
        int rc = av_vault_create(&v, path, o->no_password ? NULL : pw.p,
                                 o->no_password ? 0 : pw.len,
                                 o->no_password ? AV_VAULT_NO_PASSWORD : 0, err, sizeof(err));
        bytes_free(&pw);
        if (rc != AV_OK) {
            fail("%s", err[0] ? err : av_strerror(rc));
            goto out;
        }
        fprintf(stderr, "agentvault: created vault %s%s\n", path,
                o->no_password ? " (no password: its key file is next to it)" : "");
    }
    /* av_vault_set takes the lock itself, reads the file again and saves */
    unlock_vault(lock);
    lock = -1;
    int rc = av_vault_set(v, o->name, value.p, value.len, err, sizeof(err));
    if (rc != AV_OK) {
        fail("%s", err[0] ? err : av_strerror(rc));
        goto out;
    }
    fprintf(stderr, "agentvault: stored secret '%s' in %s\n", o->name, path);
    status = 0;
out:
    bytes_free(&value);
    bytes_free(&pw);
    av_vault_close(v);
    unlock_vault(lock);
    return status;
}

static void format_time(long long t, char *out, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || !strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(out, len, "%lld", t);
}

static int do_list(const secret_opts *o, const char *path)
{
    av_vault *v = NULL;
    int status = open_vault(o, path, &v);
    if (status != 0)
        return status;
    size_t n = av_vault_count(v), width = 4;
    for (size_t i = 0; i < n; i++) {
        const char *name = NULL;
        av_vault_list(v, i, &name, NULL, NULL);
        if (strlen(name) > width)
            width = strlen(name);
    }
    if (n == 0) {
        fprintf(stderr, "agentvault: %s holds no secrets\n", path);
    } else {
        printf("%-*s  %-20s  %s\n", (int)width, "NAME", "CREATED", "UPDATED");
        for (size_t i = 0; i < n; i++) {
            const char *name = NULL;
            long long c = 0, u = 0;
            char cs[40], us[40];
            av_vault_list(v, i, &name, &c, &u);
            format_time(c, cs, sizeof(cs));
            format_time(u, us, sizeof(us));
            printf("%-*s  %-20s  %s\n", (int)width, name, cs, us);
        }
    }
    av_vault_close(v);
    if (fflush(stdout) != 0) {
        fail("cannot write the list: %s", strerror(errno));
        return EXIT_RUNTIME;
    }
    return 0;
}

static int do_rm(const secret_opts *o, const char *path)
{
    char err[1024] = "";
    av_vault *v = NULL;
    int status = open_vault(o, path, &v);
    if (status != 0)
        return status;
    /* under the writers' lock, on the file as it is then */
    int rc = av_vault_remove(v, o->name, err, sizeof(err));
    av_vault_close(v);
    if (rc != AV_OK) {
        fail("%s", err[0] ? err : av_strerror(rc));
        return EXIT_RUNTIME;
    }
    fprintf(stderr, "agentvault: removed secret '%s' from %s\n", o->name, path);
    return 0;
}

static int do_passwd(const secret_opts *o, const char *path)
{
    char err[1024] = "";
    av_vault *v = NULL;
    bytes pw = {0};
    int status = open_vault(o, path, &v);
    if (status != 0)
        return status;
    status = EXIT_RUNTIME;
    if (get_new_password(o, path, &pw) != 0)
        goto out;
    /* under the writers' lock, on the file as it is then */
    int rc = av_vault_passwd(v, pw.p, pw.len, err, sizeof(err));
    if (rc != AV_OK) {
        fail("%s", err[0] ? err : av_strerror(rc));
        goto out;
    }
    fprintf(stderr, "agentvault: changed the master password of %s\n", path);
    status = 0;
out:
    bytes_free(&pw);
    av_vault_close(v);
    return status;
}

/* parse parses argv[2..]; returns 0 or EXIT_USAGE (message printed). */
static int parse(int argc, char **argv, secret_opts *o)
{
    memset(o, 0, sizeof(*o));
    const char *positional[4];
    int npos = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (!strcmp(a, "--vault"))
            slot = &o->vault;
        else if (!strcmp(a, "-c") || !strcmp(a, "--config"))
            slot = &o->config;
        else if (!strcmp(a, "--state-dir"))
            slot = &o->state_dir;
        else if (!strcmp(a, "--password-file"))
            slot = &o->password_file;
        else if (!strcmp(a, "--new-password-file"))
            slot = &o->new_password_file;
        if (slot) {
            if (i + 1 >= argc) {
                usage_error("%s needs a value", a);
                return EXIT_USAGE;
            }
            *slot = argv[++i];
        } else if (!strcmp(a, "--no-password")) {
            o->no_password = 1;
        } else if (a[0] == '-' && a[1] != '\0') {
            usage_error("unknown option '%s'", a);
            return EXIT_USAGE;
        } else if (npos < 4) {
            positional[npos++] = a;
        } else {
            npos++;
        }
    }
    if (npos == 0) {
        usage_error("secret needs a command: set, list, rm or passwd");
        return EXIT_USAGE;
    }
    o->cmd = positional[0];
    int want_name = !strcmp(o->cmd, "set") || !strcmp(o->cmd, "rm");
    if (!want_name && strcmp(o->cmd, "list") != 0 && strcmp(o->cmd, "passwd") != 0) {
        usage_error("unknown secret command '%s' (set, list, rm, passwd)", o->cmd);
        return EXIT_USAGE;
    }
    if (want_name) {
        if (npos < 2) {
            usage_error("secret %s needs a NAME", o->cmd);
            return EXIT_USAGE;
        }
        o->name = positional[1];
        if (npos > 2) {
            /* Never echo the extra argument: it may be the secret itself. */
            if (!strcmp(o->cmd, "set"))
                usage_error("secret set takes only a NAME: the value is read from stdin or a "
                            "no-echo prompt, never from the command line (it would be visible "
                            "in ps and shell history)");
            else
                usage_error("secret rm takes exactly one NAME");
            return EXIT_USAGE;
        }
        if (!name_valid(o->name)) {
            usage_error("invalid secret name: use 1 to %d of A-Z a-z 0-9 _ . -", NAME_MAX_LEN);
            return EXIT_USAGE;
        }
    } else if (npos > 1) {
        usage_error("secret %s takes no arguments", o->cmd);
        return EXIT_USAGE;
    }
    if (o->no_password && strcmp(o->cmd, "set") != 0) {
        usage_error("--no-password applies only to 'secret set' creating a vault");
        return EXIT_USAGE;
    }
    if (o->no_password && (o->password_file || o->new_password_file)) {
        usage_error("--no-password cannot be combined with a password file");
        return EXIT_USAGE;
    }
    return 0;
}

int cmd_secret(int argc, char **argv)
{
    /* First of all: get the passwords out of the environment. */
    g_env_pw_set = take_env("AGENTVAULT_PASSWORD", &g_env_pw);
    g_env_new_pw_set = take_env("AGENTVAULT_NEW_PASSWORD", &g_env_new_pw);
    int status;
    secret_opts o;
    if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
        fputs(SECRET_USAGE, stdout);
        status = 0;
        goto out;
    }
    if ((status = parse(argc, argv, &o)) != 0)
        goto out;
    if (o.no_password && g_env_pw_set) {
        usage_error("--no-password given, but AGENTVAULT_PASSWORD is set");
        status = EXIT_USAGE;
        goto out;
    }
    char path[PATH_MAX];
    int is_default = 0;
    if ((status = vault_path(&o, path, sizeof(path), &is_default)) != 0)
        goto out;
    if (!strcmp(o.cmd, "set"))
        status = do_set(&o, path, is_default);
    else if (!strcmp(o.cmd, "list"))
        status = do_list(&o, path);
    else if (!strcmp(o.cmd, "rm"))
        status = do_rm(&o, path);
    else
        status = do_passwd(&o, path);
out:
    bytes_free(&g_env_pw);
    bytes_free(&g_env_new_pw);
    return status;
}

/* ---- the serving daemon's vault ----------------------------------------- */

/* The password the daemon opened its vault with, kept (wiped at exit) so a
 * reload can open the file again and see secrets added since. */
static bytes g_serve_pw;
static int g_serve_pw_set;

int serve_vault_open(const char *path, const char *password_file, av_vault **out)
{
    char err[1024] = "";
    struct stat st;
    if (lstat(path, &st) != 0) {
        fail("%s: cannot open the vault the configuration reads (vault:NAME): %s", path, strerror(errno));
        return 1;
    }
    int needs = av_vault_needs_password(path, err, sizeof(err));
    if (needs < 0) {
        fail("%s", err[0] ? err : av_strerror(needs));
        return 1;
    }
    if (needs) {
        bytes env = {0};
        if (password_file) {
            if (read_password_file(password_file, &g_serve_pw) != 0)
                return 1;
        } else if (take_env("AGENTVAULT_PASSWORD", &env)) {
            g_serve_pw = env;
        } else {
            char prompt[PATH_MAX + 64];
            snprintf(prompt, sizeof(prompt), "Master password for %s: ", path);
            if (prompt_tty(prompt, PASSWORD_MAX, "the master password", &g_serve_pw) != 0)
                return 1;
        }
        g_serve_pw_set = 1;
    }
    int rc = av_vault_open(out, path, needs ? g_serve_pw.p : NULL, needs ? g_serve_pw.len : 0, err, sizeof(err));
    if (rc != AV_OK) {
        fail("%s", err[0] ? err : av_strerror(rc));
        serve_vault_forget();
        return 1;
    }
    return 0;
}

int serve_vault_reopen(const char *path, av_vault **out, char *err, size_t err_len)
{
    int needs = av_vault_needs_password(path, err, err_len);
    if (needs < 0)
        return needs;
    if (needs && !g_serve_pw_set) {
        snprintf(err, err_len, "%s now needs a password; restart the daemon to give it", path);
        return AV_ERR_AUTH;
    }
    return av_vault_open(out, path, needs ? g_serve_pw.p : NULL, needs ? g_serve_pw.len : 0, err, err_len);
}

void serve_vault_forget(void)
{
    bytes_free(&g_serve_pw);
    g_serve_pw_set = 0;
}
