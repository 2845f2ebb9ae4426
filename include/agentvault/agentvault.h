/*
 * agentvault.h - public API of libagentvault, a vault-injecting transport for
 * AI agents.
 *
 * Conventions (see docs/API.md):
 *   - every concept is an opaque handle with *_new / NULL-safe *_free;
 *   - functions return 0 or a negative AV_ERR_* code; av_strerror() never
 *     returns NULL;
 *   - the library never prints: it logs through a handler the host sets;
 *   - no TLS-library or libev types appear in this header.
 *
 * The header compiles as C99 (pedantic) and as C++.
 */
#ifndef AGENTVAULT_H
#define AGENTVAULT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(AV_BUILDING_LIBRARY)
#define AV_EXPORT __attribute__((visibility("default")))
#else
#define AV_EXPORT
#endif

/* Error codes. 0 is success; every error is negative. */
enum {
    AV_OK = 0,
    AV_ERR_NOMEM = -1,      /* an allocation failed */
    AV_ERR_INVALID = -2,    /* an argument or input is malformed */
    AV_ERR_IO = -3,         /* a system call failed */
    AV_ERR_TLS = -4,        /* a TLS operation failed */
    AV_ERR_PARSE = -5,      /* a protocol message is malformed */
    AV_ERR_LIMIT = -6,      /* a configured or built-in limit was hit */
    AV_ERR_NOTFOUND = -7,   /* a named thing does not exist */
    AV_ERR_CONFIG = -8,     /* the configuration is invalid */
    AV_ERR_DEFERRED = -9,   /* the answer will come later */
    AV_ERR_AGAIN = -10,     /* no progress possible now; retry after I/O */
    AV_ERR_CA = -11,        /* the certificate authority files are unusable */
    AV_ERR_VERIFY = -12,    /* a peer certificate did not verify */
    AV_ERR_DENIED = -13,    /* refused by policy */
    AV_ERR_SSRF = -14,      /* the destination address is not allowed */
    AV_ERR_TIMEOUT = -15,   /* an operation took too long */
    AV_ERR_CLOSED = -16,    /* the peer closed the connection */
    AV_ERR_STATE = -17,     /* the call is not valid in the current state */
    AV_ERR_SECRET = -18     /* a credential could not be resolved */
};

/* av_strerror returns a static English description of |err|; never NULL. */
AV_EXPORT const char *av_strerror(int err);

/* av_version_string returns the library version, e.g. "0.1.0". */
AV_EXPORT const char *av_version_string(void);

/* Allocator hooks. Call av_set_allocator before any other function; the
 * hooks are process-wide and apply to memory libagentvault allocates itself
 * (TLS and HTTP/2 libraries keep their own allocators). Passing NULL for all
 * three restores malloc/realloc/free. Returns AV_ERR_INVALID when only some
 * hooks are given. */
typedef void *(*av_malloc_fn)(size_t size, void *user_data);
typedef void *(*av_realloc_fn)(void *ptr, size_t size, void *user_data);
typedef void (*av_free_fn)(void *ptr, void *user_data);
AV_EXPORT int av_set_allocator(av_malloc_fn malloc_fn, av_realloc_fn realloc_fn,
                               av_free_fn free_fn, void *user_data);

/* Log levels, most severe first. */
enum {
    AV_LOG_ERROR = 0,
    AV_LOG_WARN = 1,
    AV_LOG_INFO = 2,
    AV_LOG_DEBUG = 3
};

/* A log handler receives one line (no trailing newline). It is called on the
 * thread that runs the context. Messages never contain secret values. */
typedef void (*av_log_fn)(void *user_data, int level, const char *message);

/* av_log_level_parse maps "error", "warn", "info", "debug" to AV_LOG_*.
 * Returns the level or AV_ERR_INVALID. */
AV_EXPORT int av_log_level_parse(const char *name);

/* ---- configuration ---------------------------------------------------- */

typedef struct av_config av_config;

/* av_config_new creates an empty configuration with defaults (no listeners,
 * no services). Returns AV_ERR_NOMEM. */
AV_EXPORT int av_config_new(av_config **out);
AV_EXPORT void av_config_free(av_config *cfg);

/* av_config_load_file parses an agentvault.conf file into |cfg|, adding to
 * what is already there. On AV_ERR_CONFIG or AV_ERR_IO,
 * av_config_error() names the file and line. */
AV_EXPORT int av_config_load_file(av_config *cfg, const char *path);

/* av_config_load_string parses configuration text; |origin| names it in
 * error messages. Returns AV_ERR_CONFIG or AV_ERR_NOMEM. */
AV_EXPORT int av_config_load_string(av_config *cfg, const char *text,
                                    size_t len, const char *origin);

/* av_config_error returns the last error message for |cfg| ("" if none). */
AV_EXPORT const char *av_config_error(const av_config *cfg);

/* Programmatic overrides (used by the daemon's command line). Each returns
 * AV_ERR_INVALID for malformed values (see av_config_error) or
 * AV_ERR_NOMEM. */
AV_EXPORT int av_config_add_listen(av_config *cfg, const char *addr_port);
AV_EXPORT int av_config_clear_listen(av_config *cfg);
AV_EXPORT int av_config_set_state_dir(av_config *cfg, const char *dir);
AV_EXPORT int av_config_add_resolve(av_config *cfg, const char *host_port_addr);
AV_EXPORT int av_config_set_upstream_cafile(av_config *cfg, const char *path);
/* [proxy] workers: |n| event loops on |n| threads (1 to 64), or
 * AV_WORKERS_AUTO for one per online CPU. A configuration that does not
 * set it runs one loop (the daemon's default is auto). A context on a
 * host's loop (av_ctx_new_on_loop) runs one. av_config_workers returns the
 * setting: 0 when not set. */
#define AV_WORKERS_AUTO (-1)
AV_EXPORT int av_config_set_workers(av_config *cfg, int n);
AV_EXPORT int av_config_workers(const av_config *cfg);

/* av_config_validate checks cross-field rules (a service needs a host and
 * a secret, ...). Returns AV_ERR_CONFIG with av_config_error set. */
AV_EXPORT int av_config_validate(av_config *cfg);

/* av_config_listen_count / av_config_listen_get give the configured
 * listen addresses ("127.0.0.1:14322"); NULL when out of range. */
AV_EXPORT size_t av_config_listen_count(const av_config *cfg);
AV_EXPORT const char *av_config_listen_get(const av_config *cfg, size_t i);
AV_EXPORT const char *av_config_state_dir(const av_config *cfg);
AV_EXPORT size_t av_config_service_count(const av_config *cfg);
/* Gateways ([gateway "NAME"] sections): plain-HTTP listeners whose
 * requests all go to one upstream origin (base-URL mode). */
AV_EXPORT size_t av_config_gateway_count(const av_config *cfg);
AV_EXPORT const char *av_config_gateway_name(const av_config *cfg, size_t i);
AV_EXPORT const char *av_config_gateway_listen(const av_config *cfg, size_t i);
AV_EXPORT const char *av_config_gateway_upstream(const av_config *cfg, size_t i);
/* av_config_service_name returns the name of service |i| or NULL. */
AV_EXPORT const char *av_config_service_name(const av_config *cfg, size_t i);

/* The vault services and tokens read with "vault:NAME". The file is
 * [proxy] vault = PATH (default <state_dir>/vault.avv, NULL here when not
 * set); av_config_uses_vault says whether any reference needs it. The
 * caller opens the vault (av_vault_open) and lends it with
 * av_config_set_vault: it must stay open while any context made from this
 * configuration (or a copy) runs. A service with secret =
 * oauth2:refresh_token makes the context re-read the vault file into that
 * handle and write rotated refresh tokens to the file (under PATH.lock)
 * from its loop thread: do not use the handle from another thread while
 * such a context runs. */
struct av_vault;
AV_EXPORT const char *av_config_vault_path(const av_config *cfg);
AV_EXPORT int av_config_uses_vault(const av_config *cfg);
AV_EXPORT int av_config_set_vault(av_config *cfg, struct av_vault *vault);

/* Replicas. av_config_tokens_file returns [proxy] tokens_file, a read-only
 * token store shared by replicas (NULL: not set; the daemon then uses
 * <state_dir>/tokens); the caller loads it with av_config_load_tokens.
 * av_config_drain gives [proxy] drain_delay (seconds /healthz answers 503
 * before the listeners close; 0 by default) and drain_timeout (seconds
 * in-flight exchanges then get; 10 by default). Either pointer may be
 * NULL. */
AV_EXPORT const char *av_config_tokens_file(const av_config *cfg);
/* av_config_ca_cert returns [proxy] ca_cert, the secret reference the root
 * certificate comes from (NULL: the state directory's ca.pem). */
AV_EXPORT const char *av_config_ca_cert(const av_config *cfg);
AV_EXPORT void av_config_drain(const av_config *cfg, double *delay_seconds, double *timeout_seconds);

/* Secrets from the embedder: a service or token with "secret =
 * callback:NAME" calls |fn| on the context's loop thread with NAME and a
 * request. Answer it exactly once, right away or later (on the loop thread),
 * with av_secret_request_answer (the value is copied; wipe yours) or
 * av_secret_request_fail (the reason is shown to the agent: never put the
 * secret in it). Requests of concurrent exchanges share one call; answers
 * are cached for [proxy] secret_ttl. Proxy tokens need an immediate answer.
 * A request answered after its context is gone is simply freed. With
 * [proxy] workers above 1 (av_config_set_workers), |fn| runs on the thread
 * of the worker whose exchange asks and each worker caches its own
 * answers: answer within the call (a later answer would have to come from
 * that worker's loop thread). */
typedef struct av_secret_request av_secret_request;
typedef void (*av_secret_fn)(void *user_data, const char *name, av_secret_request *req);
AV_EXPORT int av_config_set_secret_fn(av_config *cfg, av_secret_fn fn, void *user_data);
AV_EXPORT void av_secret_request_answer(av_secret_request *req, const void *value, size_t len);
AV_EXPORT void av_secret_request_fail(av_secret_request *req, const char *reason);

/* Decisions: a service with "decide = ask" holds each request it matches,
 * before any byte goes upstream and before the credential is placed, and
 * calls |fn| on the loop thread that owns the request with a read-only
 * view of it. Answer it exactly once, at once or later, from any thread:
 * av_decision_allow or av_decision_deny (both release the request; read
 * what you need from it first). A request no longer waiting (timed out
 * after the service's decide_timeout, or the agent went away: see
 * av_decision_request_waiting) must still be answered; the answer then
 * only releases it (AV_ERR_STATE). Answer every request before
 * av_ctx_free returns, or it leaks. Without a function, "decide = ask"
 * requests are denied. Nothing in the view carries a secret or a query
 * value. */
typedef struct av_decision_request av_decision_request;
typedef void (*av_decide_fn)(void *user_data, av_decision_request *req);
/* av_config_set_decide_fn installs |fn| (NULL: none) for the contexts made
 * from |cfg|. Returns AV_ERR_INVALID for a NULL |cfg|. */
AV_EXPORT int av_config_set_decide_fn(av_config *cfg, av_decide_fn fn, void *user_data);
/* av_config_uses_decide_ask says whether any service of |cfg| has decide =
 * ask (which waits for the decide function's answers). */
AV_EXPORT int av_config_uses_decide_ask(const av_config *cfg);

/* av_decision_request_get returns one field of the view as a string
 * ("" when absent, NULL for an unknown |field|): "id", "method",
 * "scheme", "host", "port", "path" (no query), "service", "token",
 * "gateway", "peer", "protocol" ("h1" or "h2"). Valid until answered. */
AV_EXPORT const char *av_decision_request_get(const av_decision_request *req, const char *field);
/* av_decision_request_json returns the whole view as one JSON object (the
 * one `decide = command:` programs read), with "query" (the names of the
 * query parameters, not their values) and "headers" (the request's field
 * names), and with decide_body "body" (base64) and "body_complete". |len|
 * may be NULL. Valid until answered. */
AV_EXPORT const char *av_decision_request_json(const av_decision_request *req, size_t *len);
/* av_decision_request_waiting returns 1 while the request still waits for
 * an answer, else 0 (answered, timed out, or the agent went away).
 * [any thread] */
AV_EXPORT int av_decision_request_waiting(const av_decision_request *req);

/* What an allow may remember (in memory, per context, for
 * |remember_seconds|, at most 7 days): AV_REMEMBER_SERVICE lets every
 * later request of the same token to the same service pass without
 * asking; AV_REMEMBER_PATH only those with the same method and a path
 * matching |path_glob| ('*' matches any run of bytes; NULL: this path). */
enum { AV_REMEMBER_NONE = 0, AV_REMEMBER_PATH = 1, AV_REMEMBER_SERVICE = 2 };

/* av_decision_allow lets the request proceed. Returns AV_OK, AV_ERR_STATE
 * (no longer waiting) or AV_ERR_INVALID (a bad scope, time or glob: the
 * request is denied rather than left waiting). [any thread] */
AV_EXPORT int av_decision_allow(av_decision_request *req, int remember, const char *path_glob,
                                double remember_seconds);
/* av_decision_deny answers the request with |status| (400-599; else 403)
 * and |reason|, one line shown to the agent in X-Agentvault-Error (never
 * put a secret in it; NULL: "denied"). Returns AV_OK or AV_ERR_STATE.
 * [any thread] */
AV_EXPORT int av_decision_deny(av_decision_request *req, int status, const char *reason);

/* ---- the proxy-token store -------------------------------------------- */

/* Tokens made by `agentvault token create` live in a 0600 file (the daemon
 * uses <state_dir>/tokens) as SHA-256 hashes: the token itself is shown
 * once and never stored. SERVICES is a comma-separated list or NULL/"*"
 * (every service); ttl_seconds 0 means no expiry.
 * av_tokens_create writes a new token ("avt_" + 43 characters) into
 * |token| (at least 48 bytes). Errors carry a one-line reason. */
AV_EXPORT int av_tokens_create(const char *path, const char *name, const char *services, long long ttl_seconds,
                               char *token, size_t token_len, char *err, size_t err_len);
AV_EXPORT int av_tokens_revoke(const char *path, const char *name, char *err, size_t err_len);
typedef void (*av_token_list_cb)(void *user_data, const char *name, const char *services, long long created,
                                 long long expires);
AV_EXPORT int av_tokens_list(const char *path, av_token_list_cb cb, void *user_data, char *err, size_t err_len);
/* av_config_load_tokens adds the store's tokens to |cfg| (a missing file
 * adds none); av_config_validate then checks their services. */
AV_EXPORT int av_config_load_tokens(av_config *cfg, const char *path);

/* ---- certificate authority -------------------------------------------- */

/* av_ca_root_pem_from_dir loads (creating on first use) the root CA in
 * |state_dir| and returns its certificate as a NUL-terminated PEM string
 * the caller frees with av_free(). Returns AV_ERR_CA (see |err|), AV_ERR_IO
 * or AV_ERR_NOMEM. |err| may be NULL. */
AV_EXPORT int av_ca_root_pem_from_dir(const char *state_dir, char **pem_out,
                                      char *err, size_t err_len);

/* av_free releases memory returned by the library. NULL is a no-op. */
AV_EXPORT void av_free(void *ptr);

/* ---- context: a running vault ----------------------------------------- */

typedef struct av_ctx av_ctx;

/* av_ctx_new builds a context from a validated configuration. The
 * configuration is copied; |cfg| may be freed afterwards. Loads or creates
 * the CA, binds every listener (the proxy's and every [gateway]'s; none
 * is fine for a context used only through av_gateway_open and
 * av_open_stream). On failure |err| (may be NULL) holds a one-line reason.
 * Returns AV_ERR_CONFIG, AV_ERR_CA, AV_ERR_IO or AV_ERR_NOMEM. [owner] */
AV_EXPORT int av_ctx_new(av_ctx **out, const av_config *cfg,
                         char *err, size_t err_len);
/* av_ctx_free frees a context that is not running: after av_ctx_run
 * returned, or (started) it stops it first, or (host loop) after the done
 * function ran or before the loop ever ran. [owner] */
AV_EXPORT void av_ctx_free(av_ctx *ctx);

/* av_ctx_set_log sets the log handler and the most verbose level passed to
 * it. Call before av_ctx_run. */
AV_EXPORT void av_ctx_set_log(av_ctx *ctx, av_log_fn fn, void *user_data,
                              int max_level);

/* av_ctx_listen_port returns the bound port of listener |i| (useful with
 * port 0), or AV_ERR_NOTFOUND. */
AV_EXPORT int av_ctx_listen_port(const av_ctx *ctx, size_t i);

/* av_ctx_gateway_port returns the bound port of gateway |i| (useful with
 * port 0), or AV_ERR_NOTFOUND. */
AV_EXPORT int av_ctx_gateway_port(const av_ctx *ctx, size_t i);

/* av_ctx_run runs the context's event loop on the calling thread until it
 * has shut down. Returns 0 or AV_ERR_STATE if already running (or started
 * with av_ctx_start, or made with av_ctx_new_on_loop). [owner] */
AV_EXPORT int av_ctx_run(av_ctx *ctx);

/* av_ctx_shutdown asks a running context to stop accepting, let in-flight
 * exchanges finish for up to |drain_seconds|, and return from av_ctx_run.
 * [any thread], and async-signal-safe. */
AV_EXPORT void av_ctx_shutdown(av_ctx *ctx, double drain_seconds);

/* av_ctx_set_health sets what GET /healthz answers: 200 "ok" while |ok|,
 * else 503 "draining" (a load balancer's health check then takes the
 * replica out while its listeners still accept). av_ctx_shutdown also
 * turns it to 503. [any thread], and async-signal-safe. */
AV_EXPORT void av_ctx_set_health(av_ctx *ctx, int ok);

/* ---- embedding: threads, host loops, gateways, streams ----------------
 *
 * Thread safety. A context belongs to its loop thread: the thread running
 * av_ctx_run, the thread av_ctx_start made, or the host's thread running
 * the loop given to av_ctx_new_on_loop. Functions marked [any thread] may
 * be called from any thread at any time between av_ctx_new* and
 * av_ctx_free; [loop thread] ones only from the loop thread or while the
 * loop is not running; [owner] ones from the thread that created the
 * context, never from a callback on the loop thread. Configuration objects
 * (av_config) are not shared: one thread at a time. */

/* av_ctx_new_on_loop is av_ctx_new on a libev loop the host owns and runs
 * (|ev_loop| is a struct ev_loop *; the host must link the same libev).
 * The context only adds watchers; its wake-up watcher does not keep the
 * host's loop alive. After av_ctx_shutdown the context finishes on that
 * loop and then calls the av_ctx_set_done_fn function; only then may the
 * host call av_ctx_free. av_ctx_run and av_ctx_start refuse such a
 * context (AV_ERR_STATE). [owner] */
AV_EXPORT int av_ctx_new_on_loop(av_ctx **out, const av_config *cfg,
                                 void *ev_loop, char *err, size_t err_len);

/* av_ctx_set_done_fn: |fn| runs once on the loop thread when a shut-down
 * context has finished (every connection closed). Set it before the loop
 * runs. [loop thread] */
AV_EXPORT void av_ctx_set_done_fn(av_ctx *ctx, void (*fn)(void *user_data),
                                  void *user_data);

/* av_ctx_start runs the context's loop on a new thread (which blocks all
 * signals) and returns at once. AV_ERR_STATE if it is already running.
 * [owner] */
AV_EXPORT int av_ctx_start(av_ctx *ctx);

/* av_ctx_stop shuts down a context started with av_ctx_start: in-flight
 * exchanges get up to |drain_seconds|, then the thread is joined. Returns
 * AV_ERR_STATE if it was not started (or from the loop thread itself).
 * av_ctx_free also stops a started context (without a drain). [owner] */
AV_EXPORT int av_ctx_stop(av_ctx *ctx, double drain_seconds);

/* av_gateway_open opens a gateway for the upstream origin |upstream|
 * ("https://api.openai.com", "https://host:port", or "http://host:port";
 * no path) on an ephemeral port of 127.0.0.1 and writes its base URL
 * ("http://127.0.0.1:PORT", at most 32 bytes with the NUL) to |url|. A
 * client sends plain HTTP/1.1 (WebSocket upgrades included) or HTTP/2 with
 * prior knowledge to that URL; requests are matched to the upstream's
 * service, injected, and sent over verified TLS. Only loopback clients are
 * accepted. The gateway lives until the context shuts down; calls for
 * the same origin return the same URL (one listener per origin). Returns
 * AV_ERR_INVALID (bad origin, |url_len| < 32), AV_ERR_IO (cannot bind),
 * AV_ERR_STATE (shutting down) or AV_ERR_NOMEM. [any thread] */
AV_EXPORT int av_gateway_open(av_ctx *ctx, const char *upstream, char *url,
                              size_t url_len);

/* av_open_stream returns in |*fd_out| one end of a connected stream socket
 * (AF_UNIX, blocking, close-on-exec) whose other end the context serves as
 * a gateway to |upstream|: the caller writes plaintext HTTP/1.1 requests
 * (keep-alive and WebSocket upgrades included) and reads the responses;
 * the library injects the credential and does TLS. The caller owns the
 * descriptor and closes it when done. Errors as av_gateway_open, plus
 * AV_ERR_IO when no socket pair can be made. [any thread] */
AV_EXPORT int av_open_stream(av_ctx *ctx, const char *upstream, int *fd_out);

/* av_config_add_section adds one section, as if its text had been loaded:
 * |kind| is "service", "token" or "gateway" (or "proxy" with |name| NULL),
 * |keyvals| a NULL-terminated array of key, value, key, value, ... Values
 * may not contain line breaks. The same validation as the file applies;
 * errors are in av_config_error. Returns AV_ERR_CONFIG, AV_ERR_INVALID or
 * AV_ERR_NOMEM. */
AV_EXPORT int av_config_add_section(av_config *cfg, const char *kind,
                                    const char *name,
                                    const char *const *keyvals);

/* av_tls_library returns the path of the shared object that provides the
 * TLS functions this library calls (as the dynamic linker bound them), and
 * in |*backend| "boringssl" or "openssl" (what it was built for). A host
 * process with its own OpenSSL (Node, Python) can check that ours is the
 * one in use. Never NULL ("?" when unknown). [any thread] */
AV_EXPORT const char *av_tls_library(const char **backend);

/* Reloading. av_ctx_set_reload installs a function the context calls on its
 * loop thread after av_ctx_reload: it returns a new configuration (the
 * context takes ownership) or NULL with a reason in |err|. New connections
 * use the new configuration; in-flight exchanges finish on the old one.
 * listen, state_dir and upstream_cacert cannot change this way (restart).
 * Failures are logged and the current configuration stays. av_ctx_reload
 * is safe to call from any thread and from a signal handler (SIGHUP). */
typedef struct av_config *(*av_reload_fn)(void *user_data, char *err, size_t err_len);
AV_EXPORT void av_ctx_set_reload(av_ctx *ctx, av_reload_fn fn, void *user_data);
AV_EXPORT void av_ctx_reload(av_ctx *ctx);

/* ---- vault: the encrypted secret store --------------------------------- */

/* Errors specific to the vault (av_strerror knows them). */
enum {
    AV_ERR_AUTH = -19,      /* wrong master password or key file */
    AV_ERR_CORRUPT = -20    /* stored data is damaged or was tampered with */
};

/* A vault is one file of named secrets, each sealed with AES-256-GCM under
 * a data key. The data key is wrapped under a key derived from a master
 * password (Argon2id) or, for a vault created with AV_VAULT_NO_PASSWORD,
 * under a random key kept in a separate 0600 key file next to the vault
 * ("vault.avv" -> "vault.key"; any other name gets ".key" appended).
 * Every change is written to disk before the call returns, atomically
 * (temporary file, fsync, rename, directory fsync): the file on disk is
 * always the old or the new vault, never a mix. A handle is not
 * thread-safe. Names match [A-Za-z0-9_.-]{1,64}; values are 1 byte to
 * 64 KiB; at most 4096 secrets; the file is at most 64 MiB.
 *
 * Functions that take |err| (may be NULL) put a one-line reason there on
 * failure; it names the file and never contains a secret value. */
typedef struct av_vault av_vault;

/* Flags for av_vault_create. */
enum {
    AV_VAULT_NO_PASSWORD = 1 /* no master password: create a key file */
};

/* av_vault_create creates a new, empty vault at |path| (which must not
 * exist) and opens it. With |flags| 0, |password| (|password_len| bytes,
 * at least one) is the master password. With AV_VAULT_NO_PASSWORD,
 * |password| must be NULL and the key file is created (it must not exist
 * either). Returns AV_ERR_INVALID, AV_ERR_STATE (the vault or key file
 * already exists), AV_ERR_IO, AV_ERR_TLS or AV_ERR_NOMEM. */
AV_EXPORT int av_vault_create(av_vault **out, const char *path, const char *password,
                              size_t password_len, unsigned flags, char *err,
                              size_t err_len);

/* av_vault_open opens the vault at |path|, checks the whole file and
 * decrypts it. A password vault needs |password|; a key-file vault ignores
 * it and reads its key file. Returns AV_ERR_NOTFOUND (no such vault or key
 * file), AV_ERR_AUTH (wrong password or key file), AV_ERR_CORRUPT (the
 * vault or key file is damaged, truncated, extended or was tampered with),
 * AV_ERR_LIMIT (larger than 64 MiB), AV_ERR_IO (also when the vault or key
 * file is open to group or others, owned by another user, or |path| ends in
 * a symbolic link: |err| says which and how to fix it), AV_ERR_TLS or
 * AV_ERR_NOMEM. */
AV_EXPORT int av_vault_open(av_vault **out, const char *path, const char *password,
                            size_t password_len, char *err, size_t err_len);

/* av_vault_needs_password returns 1 if the vault at |path| is protected by
 * a master password, 0 if it uses a key file, or the errors of
 * av_vault_open that can be found without a key. */
AV_EXPORT int av_vault_needs_password(const char *path, char *err, size_t err_len);

/* av_vault_close wipes every key and value in memory and frees |v|. NULL
 * is a no-op. */
AV_EXPORT void av_vault_close(av_vault *v);

/* av_vault_get copies the value of secret |name| into a new NUL-terminated
 * buffer (*value, *value_len bytes before the NUL; values may contain NUL
 * bytes). Release it with av_vault_free_value, which wipes it. Returns
 * AV_ERR_NOTFOUND, AV_ERR_INVALID or AV_ERR_NOMEM. */
AV_EXPORT int av_vault_get(const av_vault *v, const char *name, char **value,
                           size_t *value_len);

/* av_vault_free_value wipes |value_len| + 1 bytes of a value returned by
 * av_vault_get and frees it. NULL is a no-op. */
AV_EXPORT void av_vault_free_value(char *value, size_t value_len);

/* av_vault_set stores (adds or replaces) secret |name| and saves the vault.
 * Like av_vault_remove and av_vault_passwd, it takes the writers' lock
 * PATH.lock (shared with `agentvault secret` and with a daemon writing back
 * a rotated refresh token), reads the file again under it, changes and
 * saves that: what other writers saved since |v| was read is kept, and |v|
 * then holds what the file holds. On failure the vault, in memory and on
 * disk, is unchanged. Returns AV_ERR_INVALID (bad name or empty value),
 * AV_ERR_LIMIT (value over 64 KiB, 4096 secrets, or the file would exceed
 * 64 MiB), AV_ERR_AGAIN (another writer held the lock for 10 s),
 * AV_ERR_STATE (the file was re-keyed since |v| was opened: open it
 * again), AV_ERR_IO, AV_ERR_TLS or AV_ERR_NOMEM. Not to be called while
 * the same process holds PATH.lock itself. */
AV_EXPORT int av_vault_set(av_vault *v, const char *name, const void *value, size_t value_len,
                           char *err, size_t err_len);

/* av_vault_remove deletes secret |name| and saves the vault, under the
 * writers' lock as av_vault_set. On failure nothing changes. Returns
 * AV_ERR_NOTFOUND, AV_ERR_INVALID, AV_ERR_AGAIN, AV_ERR_STATE, AV_ERR_IO,
 * AV_ERR_TLS or AV_ERR_NOMEM. */
AV_EXPORT int av_vault_remove(av_vault *v, const char *name, char *err, size_t err_len);

/* av_vault_count returns the number of secrets. */
AV_EXPORT size_t av_vault_count(const av_vault *v);

/* av_vault_list gives the name and the creation and last-update times
 * (seconds since the epoch) of secret |i| (0 <= i < av_vault_count), in
 * name order; never its value. *name stays valid until the next change or
 * av_vault_close. Any output pointer may be NULL. Returns AV_ERR_NOTFOUND
 * when |i| is out of range. */
AV_EXPORT int av_vault_list(const av_vault *v, size_t i, const char **name,
                            long long *created, long long *updated);

/* av_vault_passwd re-wraps the vault's keys under a new master password
 * (fresh salt, default Argon2id cost) and saves it. A key-file vault
 * becomes a password vault and its key file is deleted. Under the
 * writers' lock as av_vault_set. On failure the key material is unchanged.
 * Returns AV_ERR_INVALID (empty password), AV_ERR_AGAIN, AV_ERR_STATE,
 * AV_ERR_IO, AV_ERR_TLS or AV_ERR_NOMEM. */
AV_EXPORT int av_vault_passwd(av_vault *v, const char *new_password, size_t new_password_len,
                              char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* AGENTVAULT_H */
