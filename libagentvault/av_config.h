/* av_config.h - the configuration snapshot (internal layout).
 *
 * A config is built by the file reader (av_config_ini.c) and the
 * programmatic setters of agentvault.h (av_config.c), validated, then copied
 * into a context, which treats it as immutable. Adding a member: update
 * config_clear, av__config_copy and av__config_dump (a static assert on the
 * struct sizes in av_config.c insists) and the round-trip test's config in
 * tests/unit/test_config.c (which fails until some element sets it).
 *
 * File format (agentvault.conf, see docs/CONFIG.md):
 *
 *     # comment            ; comment
 *     [proxy]
 *     listen = 127.0.0.1:14322        (may repeat; IPv6 as [::1]:14322)
 *     state_dir = /var/lib/agentvault
 *     unmatched = passthrough | deny
 *     passthrough = host1, *.host2    (opaque tunnels allowed for these hosts)
 *     resolve = api.openai.com:443:127.0.0.1   (may repeat; curl syntax)
 *     upstream_cacert = /path/ca.pem
 *     allow_private = 10.0.0.0/8, fd00::/8     (SSRF allow-list, CIDR)
 *     connect_timeout = 10            (seconds)
 *     idle_timeout = 120              (seconds)
 *     websocket_idle_timeout = 900    (seconds)
 *     max_connections = 1000          (default: from the open-files limit)
 *     upstream_proxy = http://proxy.corp:3128 | https://… | socks5://… |
 *                      socks5h://… | env | direct    (parent proxy)
 *     upstream_proxy_auth = env:PARENT_CRED   (secret holding user:password)
 *     upstream_no_proxy = .corp, 10.0.0.0/8    (these go direct)
 *
 *     [service "openai"]
 *     host = api.openai.com           (or *.example.com; or an IP literal)
 *     port = 443                      (optional; default 443; required with scheme http)
 *     scheme = https | http           (optional; http requires an explicit port)
 *     path = /v1/...                  (optional glob, '*' matches any run of bytes)
 *     methods = GET, POST             (optional)
 *     auth = bearer
 *          | basic USER
 *          | header NAME "template with {secret}"
 *          | query PARAM
 *     secret = env:NAME | file:PATH
 *     websocket = on | off            (off: upgrades are answered 426)
 *     websocket_scrub = on | off      (off: upstream frames spliced unscrubbed)
 *     decide = ask | command:/path ARGS   (hold each request for a decision)
 *     decide_timeout = 120            (seconds; no answer by then is a deny)
 *     decide_body = 64k               (the decision sees the body's first bytes)
 *     placeholder = __OPENAI_KEY__    (what agents use instead of the secret)
 *     placeholder_in = websocket      (surfaces where it is replaced)
 *     agent_env = OPENAI_API_KEY, CODEX_API_KEY (variables `run` sets to it)
 *     upstream_proxy = URL | direct   (this service's parent, overriding [proxy])
 *     upstream_proxy_auth = env:NAME  (its credential)
 *
 *     [token "agent1"]
 *     secret = env:AGENT1_TOKEN       (proxy token; requires Proxy-Authorization)
 *
 * Values are the rest of the line after '=', trimmed. Strings in auth may be
 * double-quoted with \" and \\ escapes. Unknown sections or keys, duplicates
 * of single-valued keys, and malformed values are errors naming the line.
 */
#ifndef AV_CONFIG_H
#define AV_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "av_ssrf.h"
#include "av_url.h"
#include <sys/socket.h>

#include <agentvault/agentvault.h>

enum av_auth_kind {
    AV_AUTH_BEARER = 1, /* Authorization: Bearer {secret} */
    AV_AUTH_BASIC,      /* Authorization: Basic base64(user:secret) */
    AV_AUTH_HEADER,     /* NAME: template with {secret} replaced */
    AV_AUTH_QUERY,      /* ?PARAM={secret} (percent-encoded) */
    AV_AUTH_AWS_SIGV4   /* AWS Signature Version 4, re-signed (av_sigv4.h) */
};

/* aws_body_max: the default bound on a body hashed for SigV4. */
#define AV_AWS_BODY_MAX_DEFAULT (8u << 20)
#define AV_AWS_BODY_MAX_LIMIT (64u << 20)

enum av_unmatched {
    AV_UNMATCHED_PASSTHROUGH = 0,
    AV_UNMATCHED_DENY = 1
};

/* HTTP methods as a bit set for service matching. */
enum {
    AV_M_GET = 1u << 0, AV_M_HEAD = 1u << 1, AV_M_POST = 1u << 2,
    AV_M_PUT = 1u << 3, AV_M_DELETE = 1u << 4, AV_M_PATCH = 1u << 5,
    AV_M_OPTIONS = 1u << 6
};

typedef struct av_service {
    char *name;
    char *host;        /* lower-case; "*.example.com" for a one-label wildcard */
    int wildcard;      /* host starts with "*." */
    int host_is_ip;    /* host is an IP literal (stored in canonical text form) */
    int port;          /* 443 unless given (80 default only with scheme http) */
    int scheme_http;   /* 1: plain http:// service (needs explicit scheme+port) */
    char *path_glob;   /* NULL: any path */
    unsigned methods;  /* 0: any method */
    int auth;          /* enum av_auth_kind */
    char *auth_name;   /* header name (HEADER), user (BASIC), param (QUERY) */
    char *auth_template; /* HEADER: template containing {secret} */
    int auth_alt;      /* 0, or a second header-sent form (BEARER, BASIC, HEADER):
                          used when the agent sent its header and not the main one */
    char *auth_alt_name; /* as auth_name, for auth_alt */
    char *auth_alt_template;
    int auth_alt_line; /* line of the auth_alt key, for messages */
    char *secret_ref;  /* "env:NAME" or "file:PATH" */
    int websocket_off; /* websocket = off: upgrades get 426 */
    int websocket_scrub_off; /* websocket_scrub = off: splice both ways, unscrubbed */
    char *placeholder; /* value agents use instead of the secret (NULL: none) */
    unsigned placeholder_in; /* AV_SURF_* where the placeholder is replaced */
    char *agent_env;   /* "VAR1,VAR2": variables `run` sets to the placeholder
                          (NULL: the built-in list for well-known hosts) */
    char *upstream_proxy;      /* parent proxy URL or "direct"; NULL: [proxy]'s */
    char *upstream_proxy_auth; /* secret reference to "user:password", or NULL */
    /* auth = aws-sigv4 [REGION [SERVICE]]: secret is the secret access key */
    char *aws_region;  /* the region the agent's scope must name (NULL: any) */
    char *aws_service; /* the signing name it must name (NULL: any) */
    char *aws_akid_ref; /* access_key_id: a secret reference */
    char *aws_token_ref; /* session_token: a secret reference (NULL: none) */
    size_t aws_body_max; /* bodies hashed by the proxy: at most this (0: default) */
    /* secret = oauth2:GRANT: the credential is an access token minted at
     * token_url (av_mint.h); secret_ref keeps the "oauth2:..." text */
    int mint;                /* enum av_mint_kind (0: secret_ref is a plain reference) */
    char *token_url;         /* https://host[:port]/path */
    char *client_id;         /* the client identifier (not a secret) */
    char *client_secret_ref; /* a secret reference (NULL: none) */
    char *oauth_scope;       /* scope parameter (NULL: none) */
    char *oauth_audience;    /* audience parameter (NULL: none) */
    int client_auth_post;    /* client_auth = post: id and secret in the body (default basic) */
    char *refresh_token_ref; /* oauth2:refresh_token: "vault:NAME" (rotations are written back) */
    /* secret = gcp:service_account KEYREF ... / github_app:APP_ID KEYREF ...:
     * a JWT signed with the key is exchanged for the token; secret_ref keeps
     * "gcp:service_account" or "github_app:APP_ID" (the audit's kind),
     * client_id the App's ID, oauth_scope the scopes (space-separated) */
    char *mint_key_ref;     /* the key: service-account JSON (gcp) or PEM (github) */
    char *target_audience;  /* gcp: an ID token for this audience (NULL: an access token) */
    char *gh_installation;  /* github_app: the installation ID (digits) */
    char *gh_repositories;  /* github_app: "a,b" (NULL: every repository installed on) */
    char *gh_permissions;   /* github_app: "name:level,..." (NULL: the App's own) */
    /* Decisions (av_decide.h): "ask" (the decide callback: a person) or
     * "command:/path ARGS" (a program); NULL: requests pass undecided */
    char *decide;
    double decide_timeout;   /* seconds a request waits for its answer (0: 120) */
    size_t decide_body;      /* the first bytes of the body the decision sees (0: none; at most 64 KiB) */
    int line;          /* line of the [service] header, for messages */
} av_service;

/* How a service's credential is minted (secret = oauth2:..., gcp:, github_app:). */
enum av_mint_kind {
    AV_MINT_NONE = 0,
    AV_MINT_CLIENT_CREDENTIALS = 1,
    AV_MINT_REFRESH_TOKEN = 2,
    AV_MINT_GCP_SA = 3,    /* gcp:service_account */
    AV_MINT_GITHUB_APP = 4 /* github_app: */
};

/* Surfaces where a service's placeholder is replaced by its secret. */
enum {
    AV_SURF_WEBSOCKET = 1u << 0, /* client text frames (frame mode) */
    AV_SURF_HEADER = 1u << 1,    /* request field values */
    AV_SURF_PATH = 1u << 2,      /* the path of the target (percent-encoded) */
    AV_SURF_QUERY = 1u << 3,     /* the query of the target (percent-encoded) */
    AV_SURF_BODY = 1u << 4       /* JSON and form request bodies */
};

typedef struct av_token_cfg {
    char *name;
    char *secret_ref;
    int line;
    char **services;   /* services this token may use; NULL: all of them */
    size_t nservices;
    int unmatched;     /* 0: the proxy's policy; else AV_UNMATCHED_* for this token */
    double rate;       /* requests per second (token bucket); 0: unlimited */
    double burst;      /* bucket size; default max(1, rate) */
    int hashed;        /* from the token store: only |hash| is known */
    uint8_t hash[32];  /* SHA-256 of the token */
    long long expires; /* Unix time; 0: never */
} av_token_cfg;

/* [gateway "NAME"]: a plain-HTTP listener whose requests all go to one
 * upstream origin (base-URL mode). */
typedef struct av_gateway_cfg {
    char *name;
    char *listen;          /* IP:PORT */
    char *upstream;        /* as written, e.g. https://api.openai.com */
    av_authority dest;     /* the origin */
    int dest_tls;          /* https */
    int allow_remote;      /* accept non-loopback clients */
    char *token_ref;       /* clients must send X-Agentvault-Token: <token>; NULL: none */
    int line;
} av_gateway_cfg;

typedef struct av_resolve_cfg {
    char *host;  /* lower-case */
    int port;
    char *addr;  /* numeric IPv4 or IPv6 text */
    int dial_port; /* 0: the destination port; else dial this port instead
                      (extension: HOST:PORT:ADDR:DIALPORT / [v6]:DIALPORT) */
} av_resolve_cfg;

struct av_config {
    char **listen;         /* "host:port" strings, normalized */
    size_t nlisten;
    char *state_dir;       /* NULL: caller decides default */
    char *audit;           /* audit log: a file path, "stdout", or NULL (off) */
    char *vault_path;      /* [proxy] vault = PATH, or NULL */
    struct av_vault *vault; /* lent by the caller (av_config_set_vault), not owned */
    av_secret_fn secret_fn; /* callback:NAME (av_config_set_secret_fn) */
    void *secret_ud;
    av_decide_fn decide_fn; /* decide = ask (av_config_set_decide_fn) */
    void *decide_ud;
    char *decide_notify;   /* [proxy] decide_notify = command:...: told of each request held for a person */
    int unmatched;         /* enum av_unmatched */
    char **passthrough;    /* host patterns allowed for opaque tunnels */
    size_t npassthrough;
    av_resolve_cfg *resolve;
    size_t nresolve;
    char *upstream_cafile;
    av_cidr *allow_private;
    size_t nallow_private;
    double connect_timeout; /* seconds, default 10 */
    double idle_timeout;    /* seconds, default 120 */
    double header_timeout;  /* seconds, default 10 */
    double ws_idle_timeout; /* seconds, default 900: WebSocket with no traffic */
    double secret_ttl;      /* seconds, default 300: command: answers are cached this long (0: never) */
    double command_timeout; /* seconds, default 10: a command: source must finish within it */
    long max_connections;   /* [proxy] max_connections; 0: derived from the open-files limit */
    av_service *services;
    size_t nservices;
    av_token_cfg *tokens;
    size_t ntokens;
    int token_store;       /* a token store exists: proxy auth is required even with no tokens left */
    int tls_resumption_off; /* [proxy] tls_resumption = off: no TLS session resumption, either side */
    int workers;           /* [proxy] workers: 1..AV_WORKERS_MAX, AV_WORKERS_AUTO, 0: not set (one) */
    av_gateway_cfg *gateways;
    size_t ngateways;
    char *upstream_proxy;      /* parent proxy URL, "env" or "direct"; NULL: none */
    char *upstream_proxy_auth; /* secret reference to "user:password", or NULL */
    char *upstream_no_proxy;   /* hosts, suffixes, CIDRs that go direct (as written) */
    /* Replicas (docs/CONFIG.md "Replicas"). */
    char *ca_cert_ref;         /* [proxy] ca_cert: secret reference to the root's PEM; NULL: state_dir */
    char *ca_key_ref;          /* [proxy] ca_key: secret reference to the root key's PEM */
    char *tokens_file;         /* [proxy] tokens_file: a read-only token store; NULL: <state_dir>/tokens */
    double drain_delay;        /* seconds /healthz answers 503 before the listeners close (0) */
    double drain_timeout;      /* seconds in-flight exchanges get once they have closed (10) */
    char error[512];       /* last error message ("" if none) */
};

/* av__config_copy deep-copies |src| into a new config. NULL on failure. */
av_config *av__config_copy(const av_config *src);

struct av_buf;
/* av__config_dump appends every member of |c|, one "path=value" line each
 * (tests compare a config with its copy). Returns 0 or AV_ERR_LIMIT /
 * AV_ERR_NOMEM from the buffer. */
int av__config_dump(const av_config *c, struct av_buf *out);

/* av__config_key_name is the |i|th key the reader accepts in a section of
 * kind |section| ("proxy", "service", "token", "gateway"); NULL past the
 * end. */
const char *av__config_key_name(const char *section, size_t i);

#endif
