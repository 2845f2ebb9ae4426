/*
 * addon.c - Node.js (N-API) binding of libagentvault.
 *
 * The addon does NOT link libagentvault. It dlopen()s it with
 * RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND and calls it through a table of
 * function pointers. The node executable exports its own statically linked
 * OpenSSL 3, nghttp2, c-ares and zlib; with ordinary symbol resolution
 * libagentvault's (and BoringSSL's libssl's) references to those names
 * would bind to Node's copies (an ABI mismatch with BoringSSL: a crash).
 * RTLD_DEEPBIND puts the local scope of the loaded object, which contains
 * its own dependencies, ahead of the global scope, for libagentvault and
 * for every dependency loaded by the same dlopen(). See README.md.
 *
 * Threads: each vault runs its event loop on its own thread (av_ctx_start);
 * Node's event loop is never blocked by traffic. Log lines and the "done"
 * notification come back through one thread-safe function per vault.
 *
 * The vault's handle is an external with a strong reference while the vault
 * is open: a running vault is not garbage collected. It is stopped by
 * close(), by the environment's cleanup hook (worker exit, normal process
 * exit) or, for process.exit(), by an atexit handler.
 */
#define NAPI_VERSION 8
#include <node_api.h>

#include <agentvault/agentvault.h>

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef AV_NODE_LIBRARY
#define AV_NODE_LIBRARY "libagentvault.so.0"
#endif

/* ---- the function table ------------------------------------------------ */

#define AV_FUNCS(X)                                                                                \
    X(const char *, av_strerror, (int))                                                           \
    X(const char *, av_version_string, (void))                                                    \
    X(int, av_config_new, (av_config **))                                                         \
    X(void, av_config_free, (av_config *))                                                        \
    X(int, av_config_load_file, (av_config *, const char *))                                      \
    X(int, av_config_load_string, (av_config *, const char *, size_t, const char *))              \
    X(const char *, av_config_error, (const av_config *))                                         \
    X(int, av_config_add_listen, (av_config *, const char *))                                     \
    X(int, av_config_clear_listen, (av_config *))                                                 \
    X(int, av_config_set_state_dir, (av_config *, const char *))                                  \
    X(int, av_config_add_resolve, (av_config *, const char *))                                    \
    X(int, av_config_set_upstream_cafile, (av_config *, const char *))                            \
    X(int, av_config_validate, (av_config *))                                                     \
    X(size_t, av_config_listen_count, (const av_config *))                                        \
    X(const char *, av_config_listen_get, (const av_config *, size_t))                            \
    X(const char *, av_config_state_dir, (const av_config *))                                     \
    X(size_t, av_config_gateway_count, (const av_config *))                                       \
    X(const char *, av_config_gateway_name, (const av_config *, size_t))                          \
    X(const char *, av_config_gateway_listen, (const av_config *, size_t))                        \
    X(const char *, av_config_gateway_upstream, (const av_config *, size_t))                      \
    X(int, av_config_add_section, (av_config *, const char *, const char *, const char *const *)) \
    X(const char *, av_config_vault_path, (const av_config *))                                    \
    X(int, av_config_uses_vault, (const av_config *))                                             \
    X(int, av_config_set_vault, (av_config *, struct av_vault *))                                 \
    X(int, av_vault_open, (av_vault **, const char *, const char *, size_t, char *, size_t))      \
    X(int, av_vault_needs_password, (const char *, char *, size_t))                               \
    X(void, av_vault_close, (av_vault *))                                                         \
    X(int, av_ctx_new, (av_ctx **, const av_config *, char *, size_t))                            \
    X(void, av_ctx_free, (av_ctx *))                                                              \
    X(void, av_ctx_set_log, (av_ctx *, av_log_fn, void *, int))                                   \
    X(int, av_ctx_listen_port, (const av_ctx *, size_t))                                          \
    X(int, av_ctx_gateway_port, (const av_ctx *, size_t))                                         \
    X(void, av_ctx_shutdown, (av_ctx *, double))                                                  \
    X(void, av_ctx_set_done_fn, (av_ctx *, void (*)(void *), void *))                             \
    X(int, av_ctx_start, (av_ctx *))                                                              \
    X(int, av_ctx_stop, (av_ctx *, double))                                                       \
    X(int, av_gateway_open, (av_ctx *, const char *, char *, size_t))                             \
    X(int, av_open_stream, (av_ctx *, const char *, int *))                                       \
    X(const char *, av_tls_library, (const char **))

static struct {
#define X(ret, name, args) ret(*name) args;
    AV_FUNCS(X)
#undef X
} A;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static void *lib_handle;
static char load_error[PATH_MAX + 512];
static char lib_path[PATH_MAX];

/* The symbols come out of dlsym() as void *; copy the bits into the typed
 * pointer (ISO C has no cast between object and function pointers). */
static int load_symbol(void *dst, size_t size, const char *name)
{
    void *sym = dlsym(lib_handle, name);
    if (!sym) {
        snprintf(load_error, sizeof(load_error), "%s: missing symbol %s", lib_path, name);
        return -1;
    }
    memcpy(dst, &sym, size);
    return 0;
}

/* Is |path| the running executable? (dladdr names the main program by
 * argv[0], which may be relative.) */
static int is_executable(const char *path)
{
    char exe[PATH_MAX], real[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (!path[0] || path[0] == '?' || !strchr(path, '/'))
        return 1; /* "?" or a bare argv[0] like "node": not a shared object path */
    if (n <= 0)
        return 0;
    exe[n] = '\0';
    return strcmp(exe, path) == 0 || (realpath(path, real) && strcmp(real, exe) == 0);
}

static void load_library(void)
{
    const char *env = getenv("AGENTVAULT_LIBRARY");
    snprintf(lib_path, sizeof(lib_path), "%s", env && *env ? env : AV_NODE_LIBRARY);
    lib_handle = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!lib_handle) {
        const char *e = dlerror();
        snprintf(load_error, sizeof(load_error), "cannot load libagentvault (%s): %s", lib_path, e ? e : "?");
        return;
    }
#define X(ret, name, args)                                  \
    if (load_symbol(&A.name, sizeof(A.name), #name) != 0) { \
        lib_handle = NULL;                                  \
        return;                                             \
    }
    AV_FUNCS(X)
#undef X
    /* The real path of the object we got (dlopen may have searched). */
    Dl_info info;
    void *addr;
    memcpy(&addr, &A.av_version_string, sizeof(addr));
    if (dladdr(addr, &info) && info.dli_fname) {
        char real[PATH_MAX];
        snprintf(lib_path, sizeof(lib_path), "%s", realpath(info.dli_fname, real) ? real : info.dli_fname);
    }
    /* The whole point: libagentvault's TLS calls must reach its own TLS
     * library. If it was already loaded in this process without
     * RTLD_DEEPBIND (by someone else), dlopen() handed us that copy. */
    const char *backend = "?";
    const char *tls = A.av_tls_library(&backend);
    if (is_executable(tls)) {
        snprintf(load_error, sizeof(load_error),
                 "libagentvault (%s) calls the TLS functions of the host executable (%s), not its own %s "
                 "library: it was loaded into this process without RTLD_DEEPBIND before this addon",
                 lib_path, tls, backend);
        lib_handle = NULL;
    }
}

/* ---- errors ------------------------------------------------------------ */

static const char *code_name(int rc)
{
    static const char *const names[] = {
        "AV_OK", "AV_ERR_NOMEM", "AV_ERR_INVALID", "AV_ERR_IO", "AV_ERR_TLS", "AV_ERR_PARSE",
        "AV_ERR_LIMIT", "AV_ERR_NOTFOUND", "AV_ERR_CONFIG", "AV_ERR_DEFERRED", "AV_ERR_AGAIN",
        "AV_ERR_CA", "AV_ERR_VERIFY", "AV_ERR_DENIED", "AV_ERR_SSRF", "AV_ERR_TIMEOUT",
        "AV_ERR_CLOSED", "AV_ERR_STATE", "AV_ERR_SECRET", "AV_ERR_AUTH", "AV_ERR_CORRUPT",
    };
    return rc <= 0 && -rc < (int)(sizeof(names) / sizeof(names[0])) ? names[-rc] : "AV_ERR_UNKNOWN";
}

/* Throws an Error whose message is |msg| (one line), with .code (the
 * AV_ERR_* name) and .avCode (the number) when rc < 0. Returns NULL. */
static napi_value throw_av(napi_env env, int rc, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    napi_value m, e, code, num;
    if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m) != napi_ok ||
        napi_create_error(env, NULL, m, &e) != napi_ok) {
        napi_throw_error(env, NULL, msg);
        return NULL;
    }
    if (rc < 0) {
        napi_create_string_utf8(env, code_name(rc), NAPI_AUTO_LENGTH, &code);
        napi_create_int32(env, rc, &num);
        napi_set_named_property(env, e, "code", code);
        napi_set_named_property(env, e, "avCode", num);
    }
    napi_throw(env, e);
    return NULL;
}

static int ensure_loaded(napi_env env)
{
    pthread_once(&load_once, load_library);
    if (!lib_handle) {
        throw_av(env, 0, "%s", load_error);
        return 0;
    }
    return 1;
}

/* ---- value helpers ----------------------------------------------------- */

/* A JS string as a malloc'd UTF-8 C string; throws (and returns NULL) if
 * |v| is not a string or contains a NUL. */
static char *get_string(napi_env env, napi_value v, const char *what)
{
    napi_valuetype t;
    size_t len = 0;
    if (napi_typeof(env, v, &t) != napi_ok || t != napi_string) {
        napi_throw_type_error(env, NULL, what);
        return NULL;
    }
    napi_get_value_string_utf8(env, v, NULL, 0, &len);
    char *s = malloc(len + 1);
    if (!s) {
        napi_throw_error(env, NULL, "out of memory");
        return NULL;
    }
    napi_get_value_string_utf8(env, v, s, len + 1, &len);
    if (strlen(s) != len) {
        free(s);
        char m[256];
        snprintf(m, sizeof(m), "%s (it contains a NUL character)", what);
        napi_throw_type_error(env, NULL, m);
        return NULL;
    }
    return s;
}

/* Property |key| of |obj| as a string; *out NULL when undefined/null.
 * Returns 0 after throwing. */
static int get_opt_string(napi_env env, napi_value obj, const char *key, char **out)
{
    *out = NULL;
    napi_value v;
    napi_valuetype t;
    if (napi_get_named_property(env, obj, key, &v) != napi_ok || napi_typeof(env, v, &t) != napi_ok)
        return 0;
    if (t == napi_undefined || t == napi_null)
        return 1;
    char what[128];
    snprintf(what, sizeof(what), "option %s must be a string", key);
    *out = get_string(env, v, what);
    return *out != NULL;
}

static napi_value make_string(napi_env env, const char *s)
{
    napi_value v;
    napi_create_string_utf8(env, s ? s : "", NAPI_AUTO_LENGTH, &v);
    return v;
}

/* ---- vaults -------------------------------------------------------------- */

enum { ITEM_LOG = 1, ITEM_DONE = 2 };

typedef struct item {
    int kind;
    int level;
    char msg[];
} item;

typedef struct vault {
    av_ctx *ctx;
    av_vault *store;                /* an opened secret vault, lent to ctx */
    napi_env env;
    napi_ref self;                  /* strong while open */
    napi_ref on_log;                /* a JS function or NULL */
    napi_threadsafe_function tsfn;  /* log lines and "done", from the loop thread */
    napi_deferred shutdown_deferred;
    int refs;                       /* the external + the tsfn */
    int hooked;                     /* env cleanup hook installed */
    int stopped;                    /* the loop thread has been joined */
    struct vault *next;             /* all_vaults */
} vault;

/* Every vault whose loop thread may run, for the atexit handler. */
static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;
static vault *all_vaults;
static pthread_once_t atexit_once = PTHREAD_ONCE_INIT;

static void unlink_vault(vault *v)
{
    pthread_mutex_lock(&all_lock);
    for (vault **p = &all_vaults; *p; p = &(*p)->next)
        if (*p == v) {
            *p = v->next;
            break;
        }
    v->next = NULL;
    pthread_mutex_unlock(&all_lock);
}

/* process.exit() skips environment cleanup hooks: stop every loop thread
 * before the libraries' destructors run underneath it. */
static void stop_all_at_exit(void)
{
    pthread_mutex_lock(&all_lock);
    for (vault *v = all_vaults; v; v = v->next)
        if (v->ctx && !v->stopped) {
            A.av_ctx_stop(v->ctx, 0);
            v->stopped = 1;
        }
    pthread_mutex_unlock(&all_lock);
}

static void register_atexit(void)
{
    atexit(stop_all_at_exit);
}

static void vault_unref(vault *v)
{
    if (--v->refs == 0)
        free(v);
}

/* Loop thread: one log line. */
static void on_av_log(void *ud, int level, const char *message)
{
    vault *v = ud;
    size_t n = strlen(message);
    item *it = malloc(sizeof(*it) + n + 1);
    if (!it)
        return;
    it->kind = ITEM_LOG;
    it->level = level;
    memcpy(it->msg, message, n + 1);
    if (napi_call_threadsafe_function(v->tsfn, it, napi_tsfn_nonblocking) != napi_ok)
        free(it);
}

/* Loop thread: the context has shut down (every connection closed). */
static void on_av_done(void *ud)
{
    vault *v = ud;
    item *it = malloc(sizeof(*it) + 1);
    if (!it)
        return;
    it->kind = ITEM_DONE;
    it->level = 0;
    it->msg[0] = '\0';
    if (napi_call_threadsafe_function(v->tsfn, it, napi_tsfn_nonblocking) != napi_ok)
        free(it);
}

static void resolve_shutdown(vault *v, napi_env env)
{
    if (v->shutdown_deferred) {
        napi_value u;
        napi_get_undefined(env, &u);
        napi_resolve_deferred(env, v->shutdown_deferred, u);
        v->shutdown_deferred = NULL;
    }
}

/* Main thread: deliver an item (env NULL: the tsfn is being torn down). */
static void tsfn_call_js(napi_env env, napi_value js_cb, void *context, void *data)
{
    vault *v = context;
    item *it = data;
    if (env && it) {
        if (it->kind == ITEM_LOG && v->on_log) {
            napi_value fn, recv, args[2];
            if (napi_get_reference_value(env, v->on_log, &fn) == napi_ok && fn) {
                static const char *const levels[] = {"error", "warn", "info", "debug"};
                napi_get_undefined(env, &recv);
                args[0] = make_string(env, it->level >= 0 && it->level < 4 ? levels[it->level] : "info");
                args[1] = make_string(env, it->msg);
                napi_value ignored;
                if (napi_call_function(env, recv, fn, 2, args, &ignored) == napi_pending_exception) {
                    /* An exception in the log handler is the application's:
                     * report it as uncaught instead of losing it. */
                    napi_value exc;
                    if (napi_get_and_clear_last_exception(env, &exc) == napi_ok)
                        napi_fatal_exception(env, exc);
                }
            }
        } else if (it->kind == ITEM_DONE) {
            resolve_shutdown(v, env);
        }
    }
    free(it);
}

static void tsfn_finalize(napi_env env, void *data, void *hint)
{
    vault *v = hint;
    if (v->on_log) {
        napi_delete_reference(env, v->on_log);
        v->on_log = NULL;
    }
    v->tsfn = NULL;
    vault_unref(v);
}

static void env_cleanup(void *arg);

/* Stops and frees the context (joining its thread after |drain| seconds at
 * most) and releases everything but the struct itself. Idempotent.
 * |teardown|: called from the environment's cleanup hook, where JavaScript
 * cannot run (a pending shutdown promise is left unsettled). */
static void vault_close(vault *v, double drain, int teardown)
{
    if (!v->ctx)
        return;
    unlink_vault(v);
    if (!v->stopped)
        A.av_ctx_stop(v->ctx, drain);
    v->stopped = 1;
    A.av_ctx_free(v->ctx);
    v->ctx = NULL;
    A.av_vault_close(v->store); /* after the context: it borrowed it */
    v->store = NULL;
    if (v->hooked) {
        napi_remove_env_cleanup_hook(v->env, env_cleanup, v);
        v->hooked = 0;
    }
    if (!teardown)
        resolve_shutdown(v, v->env);
    if (v->tsfn)
        napi_release_threadsafe_function(v->tsfn, napi_tsfn_release); /* finalizer follows */
    if (v->self) {
        napi_delete_reference(v->env, v->self);
        v->self = NULL;
    }
}

static void env_cleanup(void *arg)
{
    vault *v = arg;
    v->hooked = 0; /* being run: removing it now is not allowed */
    vault_close(v, 0, 1);
}

static void external_finalize(napi_env env, void *data, void *hint)
{
    vault *v = data;
    vault_close(v, 0, 1); /* only reachable once closed, but be safe */
    vault_unref(v);
}

static vault *get_vault(napi_env env, napi_value h, int must_be_open)
{
    vault *v = NULL;
    napi_valuetype t;
    if (napi_typeof(env, h, &t) != napi_ok || t != napi_external ||
        napi_get_value_external(env, h, (void **)&v) != napi_ok || !v) {
        napi_throw_type_error(env, NULL, "not a vault handle");
        return NULL;
    }
    if (must_be_open && !v->ctx) {
        throw_av(env, AV_ERR_STATE, "agentvault: the vault is closed");
        return NULL;
    }
    return v;
}

/* ---- open -------------------------------------------------------------- */

/* Applies spec.sections: [{kind, name, keyvals: [k, v, k, v, ...]}]. */
static int apply_sections(napi_env env, av_config *cfg, napi_value spec)
{
    napi_value arr;
    bool is_arr = false;
    uint32_t n = 0;
    if (napi_get_named_property(env, spec, "sections", &arr) != napi_ok)
        return 0;
    napi_is_array(env, arr, &is_arr);
    if (!is_arr)
        return 1;
    napi_get_array_length(env, arr, &n);
    for (uint32_t i = 0; i < n; i++) {
        napi_value sec, kv;
        char *kind = NULL, *name = NULL;
        uint32_t nkv = 0;
        bool kv_arr = false;
        int ok = 0;
        char **strs = NULL;
        if (napi_get_element(env, arr, i, &sec) != napi_ok || !get_opt_string(env, sec, "kind", &kind) ||
            !get_opt_string(env, sec, "name", &name) || !kind ||
            napi_get_named_property(env, sec, "keyvals", &kv) != napi_ok)
            goto next;
        napi_is_array(env, kv, &kv_arr);
        if (kv_arr)
            napi_get_array_length(env, kv, &nkv);
        strs = calloc((size_t)nkv + 1, sizeof(char *));
        if (!strs) {
            napi_throw_error(env, NULL, "out of memory");
            goto next;
        }
        for (uint32_t j = 0; j < nkv; j++) {
            napi_value e;
            napi_get_element(env, kv, j, &e);
            if (!(strs[j] = get_string(env, e, "section keys and values must be strings")))
                goto next;
        }
        int rc = A.av_config_add_section(cfg, kind, name, (const char *const *)strs);
        if (rc) {
            throw_av(env, rc, "%s", A.av_config_error(cfg)[0] ? A.av_config_error(cfg) : A.av_strerror(rc));
            goto next;
        }
        ok = 1;
    next:
        if (strs) {
            for (uint32_t j = 0; j < nkv; j++)
                free(strs[j]);
            free(strs);
        }
        free(kind);
        free(name);
        if (!ok)
            return 0;
    }
    return 1;
}

/* Calls |fn| (an av_config_* setter) for each string in spec[key]. */
static int apply_list(napi_env env, av_config *cfg, napi_value spec, const char *key,
                      int (*fn)(av_config *, const char *))
{
    napi_value arr;
    bool is_arr = false;
    uint32_t n = 0;
    if (napi_get_named_property(env, spec, key, &arr) != napi_ok)
        return 0;
    napi_is_array(env, arr, &is_arr);
    if (!is_arr)
        return 1;
    napi_get_array_length(env, arr, &n);
    for (uint32_t i = 0; i < n; i++) {
        napi_value e;
        char what[96];
        snprintf(what, sizeof(what), "%s entries must be strings", key);
        napi_get_element(env, arr, i, &e);
        char *s = get_string(env, e, what);
        if (!s)
            return 0;
        int rc = fn(cfg, s);
        free(s);
        if (rc) {
            throw_av(env, rc, "%s", A.av_config_error(cfg)[0] ? A.av_config_error(cfg) : A.av_strerror(rc));
            return 0;
        }
    }
    return 1;
}

static int has_array(napi_env env, napi_value obj, const char *key)
{
    napi_value v;
    bool is_arr = false;
    if (napi_get_named_property(env, obj, key, &v) == napi_ok)
        napi_is_array(env, v, &is_arr);
    return is_arr;
}

/* "127.0.0.1:0" -> "127.0.0.1", "[::1]:0" -> "[::1]"; wildcard addresses
 * become the loopback address of their family (a URL to connect to). */
static void listen_host(const char *spec, char *out, size_t len)
{
    const char *colon = strrchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    snprintf(out, len, "%.*s", (int)n, spec);
    if (strcmp(out, "0.0.0.0") == 0)
        snprintf(out, len, "127.0.0.1");
    else if (strcmp(out, "[::]") == 0)
        snprintf(out, len, "[::1]");
}

/* open(spec) -> { handle, stateDir, listen: [urls], gateways: [{name, upstream, url}] }
 * spec: { configFile, config, configOrigin, sections, stateDir, defaultStateDir,
 *         resolve, upstreamCACert, listen, logLevel, onLog, vaultPassword } */
static napi_value js_open(napi_env env, napi_callback_info info)
{
    if (!ensure_loaded(env))
        return NULL;
    size_t argc = 1;
    napi_value spec;
    napi_valuetype t;
    napi_get_cb_info(env, info, &argc, &spec, NULL, NULL);
    if (argc < 1 || napi_typeof(env, spec, &t) != napi_ok || t != napi_object) {
        napi_throw_type_error(env, NULL, "open(spec): spec must be an object");
        return NULL;
    }
    napi_value result = NULL;
    av_config *cfg = NULL;
    av_ctx *ctx = NULL;
    av_vault *store = NULL;
    vault *v = NULL;
    char *config_file = NULL, *config_text = NULL, *origin = NULL, *state_dir = NULL, *default_state_dir = NULL,
         *cafile = NULL, *password = NULL;
    char err[1024] = "";
    int rc;

    if (!get_opt_string(env, spec, "configFile", &config_file) || !get_opt_string(env, spec, "config", &config_text) ||
        !get_opt_string(env, spec, "configOrigin", &origin) || !get_opt_string(env, spec, "stateDir", &state_dir) ||
        !get_opt_string(env, spec, "defaultStateDir", &default_state_dir) ||
        !get_opt_string(env, spec, "upstreamCACert", &cafile) ||
        !get_opt_string(env, spec, "vaultPassword", &password))
        goto out;

    if ((rc = A.av_config_new(&cfg)) != 0) {
        throw_av(env, rc, "agentvault: %s", A.av_strerror(rc));
        goto out;
    }
    if (config_file && (rc = A.av_config_load_file(cfg, config_file)) != 0) {
        throw_av(env, rc, "%s", A.av_config_error(cfg)[0] ? A.av_config_error(cfg) : A.av_strerror(rc));
        goto out;
    }
    if (config_text && (rc = A.av_config_load_string(cfg, config_text, strlen(config_text),
                                                     origin ? origin : "<config>")) != 0) {
        throw_av(env, rc, "%s", A.av_config_error(cfg)[0] ? A.av_config_error(cfg) : A.av_strerror(rc));
        goto out;
    }
    if (!apply_sections(env, cfg, spec))
        goto out;
    if (state_dir && (rc = A.av_config_set_state_dir(cfg, state_dir)) != 0) {
        throw_av(env, rc, "%s", A.av_config_error(cfg));
        goto out;
    }
    if (!A.av_config_state_dir(cfg) && default_state_dir &&
        (rc = A.av_config_set_state_dir(cfg, default_state_dir)) != 0) {
        throw_av(env, rc, "%s", A.av_config_error(cfg));
        goto out;
    }
    if (!apply_list(env, cfg, spec, "resolve", A.av_config_add_resolve))
        goto out;
    if (cafile && (rc = A.av_config_set_upstream_cafile(cfg, cafile)) != 0) {
        throw_av(env, rc, "%s", A.av_config_error(cfg));
        goto out;
    }
    if (has_array(env, spec, "listen")) {
        A.av_config_clear_listen(cfg);
        if (!apply_list(env, cfg, spec, "listen", A.av_config_add_listen))
            goto out;
    }
    if ((rc = A.av_config_validate(cfg)) != 0) {
        throw_av(env, rc, "%s", A.av_config_error(cfg)[0] ? A.av_config_error(cfg) : A.av_strerror(rc));
        goto out;
    }
    if (A.av_config_uses_vault(cfg)) {
        char path[PATH_MAX];
        const char *vp = A.av_config_vault_path(cfg);
        if (vp)
            snprintf(path, sizeof(path), "%s", vp);
        else
            snprintf(path, sizeof(path), "%s/vault.avv", A.av_config_state_dir(cfg));
        rc = A.av_vault_needs_password(path, err, sizeof(err));
        if (rc < 0) {
            throw_av(env, rc, "%s", err[0] ? err : A.av_strerror(rc));
            goto out;
        }
        if (rc == 1 && !password) {
            throw_av(env, AV_ERR_AUTH,
                     "the vault %s needs its master password (option vaultPassword or AGENTVAULT_PASSWORD)", path);
            goto out;
        }
        rc = A.av_vault_open(&store, path, rc == 1 ? password : NULL, rc == 1 ? strlen(password) : 0, err,
                             sizeof(err));
        if (rc) {
            throw_av(env, rc, "%s", err[0] ? err : A.av_strerror(rc));
            goto out;
        }
        A.av_config_set_vault(cfg, store);
    }

    rc = A.av_ctx_new(&ctx, cfg, err, sizeof(err));
    if (rc) {
        throw_av(env, rc, "%s", err[0] ? err : A.av_strerror(rc));
        goto out;
    }

    v = calloc(1, sizeof(*v));
    if (!v) {
        napi_throw_error(env, NULL, "out of memory");
        goto out;
    }
    v->env = env;
    v->refs = 1; /* the external */

    /* Logging and the done notification. */
    napi_value on_log, name;
    napi_valuetype lt = napi_undefined;
    int32_t level = AV_LOG_INFO;
    napi_value lv;
    if (napi_get_named_property(env, spec, "logLevel", &lv) == napi_ok) {
        napi_valuetype vt;
        napi_typeof(env, lv, &vt);
        if (vt == napi_number)
            napi_get_value_int32(env, lv, &level);
    }
    if (napi_get_named_property(env, spec, "onLog", &on_log) == napi_ok)
        napi_typeof(env, on_log, &lt);
    if (lt == napi_function && napi_create_reference(env, on_log, 1, &v->on_log) != napi_ok)
        goto out;
    napi_create_string_utf8(env, "agentvault", NAPI_AUTO_LENGTH, &name);
    if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, v, tsfn_finalize, v, tsfn_call_js, &v->tsfn) !=
        napi_ok) {
        throw_av(env, AV_ERR_NOMEM, "agentvault: cannot create a thread-safe function");
        goto out;
    }
    v->refs++; /* the tsfn */
    napi_unref_threadsafe_function(env, v->tsfn); /* a vault does not keep Node alive */
    if (v->on_log)
        A.av_ctx_set_log(ctx, on_av_log, v, level);
    A.av_ctx_set_done_fn(ctx, on_av_done, v);

    /* What JS wants to know, while we still have cfg. */
    napi_value obj, arr, handle;
    napi_create_object(env, &obj);
    napi_set_named_property(env, obj, "stateDir", make_string(env, A.av_config_state_dir(cfg)));
    napi_create_array(env, &arr);
    for (size_t i = 0; i < A.av_config_listen_count(cfg); i++) {
        char host[300], url[400];
        listen_host(A.av_config_listen_get(cfg, i), host, sizeof(host));
        snprintf(url, sizeof(url), "http://%s:%d", host, A.av_ctx_listen_port(ctx, i));
        napi_set_element(env, arr, (uint32_t)i, make_string(env, url));
    }
    napi_set_named_property(env, obj, "listen", arr);
    napi_create_array(env, &arr);
    for (size_t i = 0; i < A.av_config_gateway_count(cfg); i++) {
        char host[300], url[400];
        napi_value g;
        listen_host(A.av_config_gateway_listen(cfg, i), host, sizeof(host));
        snprintf(url, sizeof(url), "http://%s:%d", host, A.av_ctx_gateway_port(ctx, i));
        napi_create_object(env, &g);
        napi_set_named_property(env, g, "name", make_string(env, A.av_config_gateway_name(cfg, i)));
        napi_set_named_property(env, g, "upstream", make_string(env, A.av_config_gateway_upstream(cfg, i)));
        napi_set_named_property(env, g, "url", make_string(env, url));
        napi_set_element(env, arr, (uint32_t)i, g);
    }
    napi_set_named_property(env, obj, "gateways", arr);

    if (napi_create_external(env, v, external_finalize, NULL, &handle) != napi_ok) {
        throw_av(env, AV_ERR_NOMEM, "agentvault: cannot create a handle");
        goto out;
    }
    /* From here the external owns v (its finalizer frees it). */
    v->ctx = ctx;
    v->store = store;
    ctx = NULL;
    store = NULL;
    napi_create_reference(env, handle, 1, &v->self);
    pthread_once(&atexit_once, register_atexit);
    pthread_mutex_lock(&all_lock);
    v->next = all_vaults;
    all_vaults = v;
    pthread_mutex_unlock(&all_lock);
    /* After the tsfn: cleanup hooks run last-in first-out, so ours stops
     * the loop thread before the tsfn is torn down. */
    if (napi_add_env_cleanup_hook(env, env_cleanup, v) == napi_ok)
        v->hooked = 1;
    if ((rc = A.av_ctx_start(v->ctx)) != 0) {
        v->stopped = 1; /* nothing to join */
        vault_close(v, 0, 0);
        throw_av(env, rc, "agentvault: cannot start the vault thread: %s", A.av_strerror(rc));
        v = NULL;
        goto out;
    }
    napi_set_named_property(env, obj, "handle", handle);
    result = obj;
    v = NULL;

out:
    if (v) { /* failed before the external took it */
        if (v->tsfn) {
            napi_release_threadsafe_function(v->tsfn, napi_tsfn_abort); /* finalizer unrefs */
            v->tsfn = NULL;
        } else if (v->on_log) {
            napi_delete_reference(env, v->on_log);
            v->on_log = NULL;
        }
        vault_unref(v);
    }
    A.av_ctx_free(ctx);
    A.av_vault_close(store);
    A.av_config_free(cfg);
    free(config_file);
    free(config_text);
    free(origin);
    free(state_dir);
    free(default_state_dir);
    free(cafile);
    if (password) {
        memset(password, 0, strlen(password));
        free(password);
    }
    return result;
}

/* ---- per-vault calls --------------------------------------------------- */

static napi_value js_gateway_open(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
    if (argc < 2) {
        napi_throw_type_error(env, NULL, "gatewayOpen(handle, upstream)");
        return NULL;
    }
    vault *v = get_vault(env, argv[0], 1);
    if (!v)
        return NULL;
    char *up = get_string(env, argv[1], "the upstream origin must be a string");
    if (!up)
        return NULL;
    char url[64];
    int rc = A.av_gateway_open(v->ctx, up, url, sizeof(url));
    napi_value out = NULL;
    if (rc)
        throw_av(env, rc, "agentvault: cannot open a gateway to \"%.300s\": %s", up, A.av_strerror(rc));
    else
        out = make_string(env, url);
    free(up);
    return out;
}

static napi_value js_open_stream(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
    if (argc < 2) {
        napi_throw_type_error(env, NULL, "openStream(handle, upstream)");
        return NULL;
    }
    vault *v = get_vault(env, argv[0], 1);
    if (!v)
        return NULL;
    char *up = get_string(env, argv[1], "the upstream origin must be a string");
    if (!up)
        return NULL;
    int fd = -1;
    int rc = A.av_open_stream(v->ctx, up, &fd);
    napi_value out = NULL;
    if (rc)
        throw_av(env, rc, "agentvault: cannot open a stream to \"%.300s\": %s", up, A.av_strerror(rc));
    else
        napi_create_int32(env, fd, &out);
    free(up);
    return out;
}

static double get_drain(napi_env env, napi_value v)
{
    double d = 0;
    napi_valuetype t;
    if (napi_typeof(env, v, &t) == napi_ok && t == napi_number)
        napi_get_value_double(env, v, &d);
    return d > 0 && d < 86400 ? d : 0;
}

/* close(handle, drainSeconds): stop (blocking for at most the drain),
 * free. Idempotent. */
static napi_value js_close(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2];
    napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
    if (argc < 1)
        return NULL;
    vault *v = get_vault(env, argv[0], 0);
    if (!v)
        return NULL;
    vault_close(v, argc > 1 ? get_drain(env, argv[1]) : 0, 0);
    return NULL;
}

/* shutdown(handle, drainSeconds) -> Promise resolved when the context has
 * finished (every connection closed, or the drain deadline passed). The
 * caller then calls close(), which joins the (finished) thread. */
static napi_value js_shutdown(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], promise;
    napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
    if (argc < 1)
        return NULL;
    vault *v = get_vault(env, argv[0], 0);
    if (!v)
        return NULL;
    if (!v->ctx || v->shutdown_deferred) {
        /* closed already, or a shutdown is pending: resolve at once; the
         * caller's close() settles it */
        napi_deferred d;
        napi_value u;
        napi_create_promise(env, &d, &promise);
        napi_get_undefined(env, &u);
        napi_resolve_deferred(env, d, u);
        return promise;
    }
    napi_create_promise(env, &v->shutdown_deferred, &promise);
    A.av_ctx_shutdown(v->ctx, argc > 1 ? get_drain(env, argv[1]) : 0);
    return promise;
}

/* ---- module functions -------------------------------------------------- */

static napi_value js_tls_library(napi_env env, napi_callback_info info)
{
    if (!ensure_loaded(env))
        return NULL;
    const char *backend = "?";
    const char *path = A.av_tls_library(&backend);
    napi_value obj;
    napi_create_object(env, &obj);
    napi_set_named_property(env, obj, "backend", make_string(env, backend));
    napi_set_named_property(env, obj, "path", make_string(env, path));
    napi_set_named_property(env, obj, "library", make_string(env, lib_path));
    return obj;
}

static napi_value js_version(napi_env env, napi_callback_info info)
{
    if (!ensure_loaded(env))
        return NULL;
    return make_string(env, A.av_version_string());
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */)
{
    /* Load (or fail) now, so that require() reports a broken install. */
    if (!ensure_loaded(env))
        return NULL;
    napi_property_descriptor d[] = {
        {"open", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL},
        {"gatewayOpen", NULL, js_gateway_open, NULL, NULL, NULL, napi_enumerable, NULL},
        {"openStream", NULL, js_open_stream, NULL, NULL, NULL, napi_enumerable, NULL},
        {"close", NULL, js_close, NULL, NULL, NULL, napi_enumerable, NULL},
        {"shutdown", NULL, js_shutdown, NULL, NULL, NULL, napi_enumerable, NULL},
        {"tlsLibrary", NULL, js_tls_library, NULL, NULL, NULL, napi_enumerable, NULL},
        {"version", NULL, js_version, NULL, NULL, NULL, napi_enumerable, NULL},
    };
    napi_define_properties(env, exports, sizeof(d) / sizeof(d[0]), d);
    return exports;
}
