/* test_config.c - the config file reader, setters, validation and copy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_config.h"

static const char example[] =
    "# agentvault.conf\n"
    "[proxy]\n"
    "listen = 127.0.0.1:14322\n"
    "state_dir = /var/lib/agentvault\n"
    "\n"
    "[service \"openai\"]\n"
    "host = api.openai.com\n"
    "auth = bearer\n"
    "secret = env:OPENAI_API_KEY\n"
    "\n"
    "[service \"github\"]\n"
    "host = api.github.com\n"
    "path = /repos/*\n"
    "methods = GET, POST\n"
    "auth = header Authorization \"token {secret}\"\n"
    "secret = file:/run/secrets/github_token\n";

/* load parses |text| into a fresh config, returning the code; the config
 * is kept in *out. */
static int load(const char *text, av_config **out)
{
    av_config *c = NULL;
    assert_int_equal(av_config_new(&c), 0);
    int rc = av_config_load_string(c, text, strlen(text), "t.conf");
    *out = c;
    return rc;
}

/* example_parses: the documented example, field by field. */
static void example_parses(void **state)
{
    (void)state;
    av_config *c;
    assert_int_equal(load(example, &c), 0);
    assert_string_equal(av_config_error(c), "");
    assert_int_equal(av_config_validate(c), 0);
    assert_int_equal(av_config_listen_count(c), 1);
    assert_string_equal(av_config_listen_get(c, 0), "127.0.0.1:14322");
    assert_null(av_config_listen_get(c, 1));
    assert_string_equal(av_config_state_dir(c), "/var/lib/agentvault");
    assert_int_equal(av_config_service_count(c), 2);
    assert_int_equal(c->unmatched, AV_UNMATCHED_PASSTHROUGH);
    assert_true(c->connect_timeout == 10.0);
    assert_true(c->idle_timeout == 120.0);
    assert_true(c->header_timeout == 10.0);
    assert_int_equal(c->tls_resumption_off, 0); /* resumption on by default */

    const av_service *o = &c->services[0];
    assert_string_equal(o->name, "openai");
    assert_string_equal(o->host, "api.openai.com");
    assert_int_equal(o->wildcard, 0);
    assert_int_equal(o->host_is_ip, 0);
    assert_int_equal(o->port, 443);
    assert_int_equal(o->scheme_http, 0);
    assert_null(o->path_glob);
    assert_int_equal(o->methods, 0);
    assert_int_equal(o->auth, AV_AUTH_BEARER);
    assert_null(o->auth_name);
    assert_string_equal(o->secret_ref, "env:OPENAI_API_KEY");
    assert_int_equal(o->line, 6);

    const av_service *g = &c->services[1];
    assert_string_equal(g->name, "github");
    assert_string_equal(g->host, "api.github.com");
    assert_string_equal(g->path_glob, "/repos/*");
    assert_int_equal(g->methods, AV_M_GET | AV_M_POST);
    assert_int_equal(g->auth, AV_AUTH_HEADER);
    assert_string_equal(g->auth_name, "Authorization");
    assert_string_equal(g->auth_template, "token {secret}");
    assert_string_equal(g->secret_ref, "file:/run/secrets/github_token");
    assert_int_equal(g->line, 11);
    av_config_free(c);
}

/* every_key sets every key once and checks the stored values. */
static void every_key(void **state)
{
    (void)state;
    av_config *c;
    const char *text =
        "; full-line comment\n"
        "   # indented comment\n"
        "[proxy]\r\n"
        "listen = [::1]:8080 , localhost:0\n"
        "listen = 0.0.0.0:1\n"
        "unmatched = deny\n"
        "passthrough = example.org, *.example.net\n"
        "resolve = api.openai.com:443:127.0.0.1\n"
        "resolve = h.example:8443:[::1]\n"
        "resolve = h2.example:443:127.0.0.2:9443\n"
        "upstream_cacert = /etc/ssl/my ca#1.pem\n"
        "allow_private = 10.0.0.0/8, fd00::/8\n"
        "connect_timeout = 2.5\n"
        "idle_timeout = 30\n"
        "header_timeout = 5\n"
        "[service \"basic-svc\"]\n"
        "host = *.Example.com\n"
        "port = 8443\n"
        "auth = basic alice\n"
        "secret = env:_X1\n"
        "[service \"q.svc_1\"]\n"
        "host = 10.0.0.5\n"
        "scheme = http\n"
        "port = 8080\n"
        "methods = get,head , Options,DELETE,put,patch,post\n"
        "auth = query api_key\n"
        "secret = file:/k\n"
        "[service \"v6\"]\n"
        "host = [0:0::1]\n"
        "auth = header X-Api-Key {secret}\n"
        "secret = env:K\n"
        "[token \"agent1\"]\n"
        "secret = env:AGENT1_TOKEN\n";
    assert_int_equal(load(text, &c), 0);
    assert_int_equal(av_config_validate(c), 0);
    assert_int_equal(c->nlisten, 3);
    assert_string_equal(c->listen[0], "[::1]:8080");
    assert_string_equal(c->listen[1], "localhost:0");
    assert_string_equal(c->listen[2], "0.0.0.0:1");
    assert_int_equal(c->unmatched, AV_UNMATCHED_DENY);
    assert_int_equal(c->npassthrough, 2);
    assert_string_equal(c->passthrough[0], "example.org");
    assert_string_equal(c->passthrough[1], "*.example.net");
    assert_int_equal(c->nresolve, 3);
    assert_string_equal(c->resolve[0].host, "api.openai.com");
    assert_int_equal(c->resolve[0].port, 443);
    assert_string_equal(c->resolve[0].addr, "127.0.0.1");
    assert_int_equal(c->resolve[0].dial_port, 0);
    assert_string_equal(c->resolve[1].host, "h.example");
    assert_int_equal(c->resolve[1].port, 8443);
    assert_string_equal(c->resolve[1].addr, "::1");
    assert_string_equal(c->resolve[2].addr, "127.0.0.2");
    assert_int_equal(c->resolve[2].dial_port, 9443);
    assert_string_equal(c->upstream_cafile, "/etc/ssl/my ca#1.pem");
    assert_int_equal(c->nallow_private, 2);
    assert_int_equal(c->allow_private[0].family, AF_INET);
    assert_int_equal(c->allow_private[0].prefix, 8);
    assert_int_equal(c->allow_private[1].family, AF_INET6);
    assert_true(c->connect_timeout == 2.5);
    assert_true(c->idle_timeout == 30.0);
    assert_true(c->header_timeout == 5.0);

    assert_int_equal(c->nservices, 3);
    const av_service *b = &c->services[0];
    assert_string_equal(b->host, "*.example.com");
    assert_int_equal(b->wildcard, 1);
    assert_int_equal(b->port, 8443);
    assert_int_equal(b->auth, AV_AUTH_BASIC);
    assert_string_equal(b->auth_name, "alice");
    const av_service *q = &c->services[1];
    assert_string_equal(q->name, "q.svc_1");
    assert_string_equal(q->host, "10.0.0.5");
    assert_true(q->host_is_ip);
    assert_int_equal(q->scheme_http, 1);
    assert_int_equal(q->port, 8080);
    assert_int_equal(q->methods, AV_M_GET | AV_M_HEAD | AV_M_OPTIONS | AV_M_DELETE |
                                     AV_M_PUT | AV_M_PATCH | AV_M_POST);
    assert_int_equal(q->auth, AV_AUTH_QUERY);
    assert_string_equal(q->auth_name, "api_key");
    const av_service *v = &c->services[2];
    assert_string_equal(v->host, "::1");
    assert_true(v->host_is_ip);
    assert_int_equal(v->auth, AV_AUTH_HEADER);
    assert_string_equal(v->auth_name, "X-Api-Key");
    assert_string_equal(v->auth_template, "{secret}");

    assert_int_equal(c->ntokens, 1);
    assert_string_equal(c->tokens[0].name, "agent1");
    assert_string_equal(c->tokens[0].secret_ref, "env:AGENT1_TOKEN");
    assert_int_equal(c->tokens[0].line, 32);
    av_config_free(c);
}

/* quoting: escapes in templates, '#' and ';' inside values, long lines. */
static void quoting_and_long_lines(void **state)
{
    (void)state;
    av_config *c;
    const char *text =
        "[service \"s\"]\n"
        "host = api.example.com\n"
        "auth = header X-Auth \"a \\\"q\\\" \\\\ # ; {secret} x\"\n"
        "secret = env:S\n"
        "[service \"u\"]\n"
        "host = u.example.com\n"
        "auth = basic \"Alice Smith\"\n"
        "secret = env:S\n";
    assert_int_equal(load(text, &c), 0);
    assert_string_equal(c->services[0].auth_template, "a \"q\" \\ # ; {secret} x");
    assert_string_equal(c->services[1].auth_name, "Alice Smith");
    av_config_free(c);

    /* a 1000-character template on one line */
    char tmpl[1001];
    memset(tmpl, 'x', 1000);
    memcpy(tmpl + 500, "{secret}", 8);
    tmpl[1000] = '\0';
    char big[1200];
    snprintf(big, sizeof(big),
             "[service \"long\"]\nhost = a.example.com\nauth = header X-Long \"%s\"\nsecret = env:S\n",
             tmpl);
    assert_int_equal(load(big, &c), 0);
    assert_int_equal(strlen(c->services[0].auth_template), 1000);
    assert_string_equal(c->services[0].auth_template, tmpl);
    av_config_free(c);
}

typedef struct err_case {
    const char *text;
    const char *error; /* exact message */
} err_case;

static const err_case err_cases[] = {
    {"[proxy]\nlisten = 127.0.0.1:1\nbogus = 1\n",
     "t.conf:3: unknown key \"bogus\" in [proxy]"},
    {"[service \"a\"]\nhost = a.com\ncolor = red\n",
     "t.conf:3: unknown key \"color\" in [service]"},
    {"[service \"a\"]\nhost = a.com\nauth = digest\nsecret = env:X\n",
     "t.conf:3: unknown auth kind \"digest\" (expected bearer, basic, header, query or aws-sigv4)"},
    {"[service \"a\"]\nhost = a.com\nauth = bearer extra\n",
     "t.conf:3: auth bearer takes no argument"},
    {"[service \"a\"]\nhost = a.com\nauth = header X-K \"no placeholder\"\n",
     "t.conf:3: auth header: template must contain {secret} exactly once"},
    {"[service \"a\"]\nhost = a.com\nauth = header X-K \"{secret}{secret}\"\n",
     "t.conf:3: auth header: template must contain {secret} exactly once"},
    {"[service \"a\"]\nhost = a.com\nauth = header X-K token {secret}\n",
     "t.conf:3: auth header: a template with spaces must be quoted"},
    {"[service \"a\"]\nhost = a.com\nauth = header X-K \"{secret}\n",
     "t.conf:3: auth header: malformed quoted template"},
    {"[service \"a\"]\nhost = a.com\nauth = header X-K \"{secret}\" x\n",
     "t.conf:3: auth header: malformed quoted template"},
    {"[service \"a\"]\nhost = a.com\nauth = header Bad:Name {secret}\n",
     "t.conf:3: auth header: invalid header name \"Bad:Name\""},
    {"[service \"a\"]\nhost = a.com\nauth = header Host {secret}\n",
     "t.conf:3: auth header: header \"Host\" cannot be injected"},
    {"[service \"a\"]\nhost = a.com\nauth = header content-length {secret}\n",
     "t.conf:3: auth header: header \"content-length\" cannot be injected"},
    {"[service \"a\"]\nhost = a.com\nauth = header Transfer-Encoding {secret}\n",
     "t.conf:3: auth header: header \"Transfer-Encoding\" cannot be injected"},
    {"[service \"a\"]\nhost = a.com\nauth = header Proxy-Authorization {secret}\n",
     "t.conf:3: auth header: header \"Proxy-Authorization\" cannot be injected"},
    {"[service \"a\"]\nhost = a.com\nauth = header Connection {secret}\n",
     "t.conf:3: auth header: header \"Connection\" cannot be injected"},
    {"[service \"a\"]\nhost = a.com\nauth = basic\n",
     "t.conf:3: auth basic needs a user name (auth = basic USER)"},
    {"[service \"a\"]\nhost = a.com\nauth = basic a:b\n",
     "t.conf:3: auth basic: user name must not contain ':' or control characters"},
    {"[service \"a\"]\nhost = a.com\nauth = query a&b\n",
     "t.conf:3: auth query: parameter name must use only A-Z a-z 0-9 - . _ ~"},
    {"[service \"a\"]\nhost = a.com\nauth = bearer\n\n# end\n",
     "t.conf:1: service \"a\" has no secret"},
    {"[proxy]\n[service \"x\"]\nauth = bearer\nsecret = env:A\n",
     "t.conf:2: service \"x\" has no host"},
    {"[service \"x\"]\nhost = a.com\nsecret = env:A\n[token \"t\"]\nsecret = env:B\n",
     "t.conf:1: service \"x\" has no auth"},
    {"[token \"t\"]\n\n",
     "t.conf:1: token \"t\" has no secret"},
    {"[service \"a\"]\nhost = a.com\nauth = bearer\nsecret = env:A\n"
     "[service \"a\"]\nhost = b.com\n",
     "t.conf:5: duplicate service \"a\""},
    {"[token \"a\"]\nsecret = env:A\n[token \"a\"]\nsecret = env:B\n",
     "t.conf:3: duplicate token \"a\""},
    {"[service \"a\"]\nhost = *.github.io\n",
     "t.conf:2: host: wildcard over a public suffix is not allowed: \"*.github.io\""},
    {"[service \"a\"]\nhost = *.com\n",
     "t.conf:2: host: wildcard over a public suffix is not allowed: \"*.com\""},
    {"[service \"a\"]\nhost = *.s3.amazonaws.com\n",
     "t.conf:2: host: wildcard over a public suffix is not allowed: \"*.s3.amazonaws.com\""},
    {"[service \"a\"]\nhost = *.co.uk\n",
     "t.conf:2: host: wildcard over a public suffix is not allowed: \"*.co.uk\""},
    {"[service \"a\"]\nhost = *\n",
     "t.conf:2: host: a bare \"*\" host is not allowed: \"*\""},
    {"[service \"a\"]\nhost = *.*.example.com\n",
     "t.conf:2: host: invalid wildcard host (only \"*.\" followed by a DNS name is allowed): \"*.*.example.com\""},
    {"[service \"a\"]\nhost = a*.example.com\n",
     "t.conf:2: host: invalid host name: \"a*.example.com\""},
    {"[service \"a\"]\nhost = *.10.0.0.1\n",
     "t.conf:2: host: invalid wildcard host (only \"*.\" followed by a DNS name is allowed): \"*.10.0.0.1\""},
    {"[service \"a\"]\nhost = 127.1\n",
     "t.conf:2: host: invalid host name: \"127.1\""},
    {"\n[service \"web\"]\nhost = a.com\nscheme = http\nauth = bearer\nsecret = env:A\n",
     "t.conf:2: service \"web\": scheme http requires an explicit port"},
    {"[service \"a\"]\nscheme = ftp\n",
     "t.conf:2: scheme must be \"https\" or \"http\""},
    {"[service \"a\"]\nport = 0\n", "t.conf:2: port must be a number in 1..65535"},
    {"[service \"a\"]\nport = 65536\n", "t.conf:2: port must be a number in 1..65535"},
    {"[service \"a\"]\nport = +443\n", "t.conf:2: port must be a number in 1..65535"},
    {"[service \"a\"]\npath = v1/*\n",
     "t.conf:2: path must start with '/' and contain only visible ASCII, no '?' or '#'"},
    {"[service \"a\"]\npath = /v1?x\n",
     "t.conf:2: path must start with '/' and contain only visible ASCII, no '?' or '#'"},
    {"[service \"a\"]\nmethods = GET, TRACE\n",
     "t.conf:2: unknown method \"TRACE\" (allowed: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS)"},
    {"[service \"a\"]\nmethods = GET,,POST\n",
     "t.conf:2: unknown method \"\" (allowed: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS)"},
    {"[service \"a\"]\nsecret = vault:a/b\n",
     "t.conf:2: secret must be env:NAME, file:/absolute/path, vault:NAME, command:/absolute/path [args] or callback:NAME"},
    {"[service \"a\"]\nsecret = command:pass show x\n",
     "t.conf:2: secret must be env:NAME, file:/absolute/path, vault:NAME, command:/absolute/path [args] or callback:NAME"},
    {"[proxy]\nsecret_ttl = -1\n", "t.conf:2: secret_ttl must be a number of seconds in [0, 86400]"},
    {"[proxy]\ncommand_timeout = 0\n", "t.conf:2: command_timeout must be a number of seconds in (0, 86400]"},
    {"[service \"a\"]\nsecret = file:relative\n",
     "t.conf:2: secret must be env:NAME, file:/absolute/path, vault:NAME, command:/absolute/path [args] or callback:NAME"},
    {"[service \"a\"]\nsecret = env:1BAD\n",
     "t.conf:2: secret must be env:NAME, file:/absolute/path, vault:NAME, command:/absolute/path [args] or callback:NAME"},
    {"[service \"a\"]\nhost = a.com\nhost = b.com\n", "t.conf:3: duplicate key \"host\""},
    {"[proxy]\nlisten = 127.0.0.1\n",
     "t.conf:2: invalid listen address \"127.0.0.1\" (expected IP:PORT, [IPv6]:PORT or localhost:PORT)"},
    {"[proxy]\nlisten = example.com:80\n",
     "t.conf:2: invalid listen address \"example.com:80\" (expected IP:PORT, [IPv6]:PORT or localhost:PORT)"},
    {"[proxy]\nlisten = ::1:80\n",
     "t.conf:2: invalid listen address \"::1:80\" (expected IP:PORT, [IPv6]:PORT or localhost:PORT)"},
    {"[proxy]\nlisten = 127.0.0.1:65536\n",
     "t.conf:2: invalid listen address \"127.0.0.1:65536\" (expected IP:PORT, [IPv6]:PORT or localhost:PORT)"},
    {"[proxy]\nlisten = 127.0.0.1:1, 127.0.0.1:1\n",
     "t.conf:2: duplicate listen address 127.0.0.1:1"},
    {"[proxy]\nlisten = 127.0.0.1:1,\n", "t.conf:2: empty item in listen list"},
    {"[proxy]\nresolve = api.openai.com:443\n",
     "t.conf:2: invalid resolve entry \"api.openai.com:443\" (expected HOST:PORT:ADDR)"},
    {"[proxy]\nresolve = api.openai.com:443:localhost\n",
     "t.conf:2: invalid resolve entry \"api.openai.com:443:localhost\" (expected HOST:PORT:ADDR)"},
    {"[proxy]\nresolve = api.openai.com:0:127.0.0.1\n",
     "t.conf:2: invalid resolve entry \"api.openai.com:0:127.0.0.1\" (expected HOST:PORT:ADDR)"},
    {"[proxy]\nresolve = 1.2.3.4:443:127.0.0.1\n",
     "t.conf:2: invalid resolve entry \"1.2.3.4:443:127.0.0.1\" (expected HOST:PORT:ADDR)"},
    {"[proxy]\nresolve = a.com:443:[127.0.0.1]\n",
     "t.conf:2: invalid resolve entry \"a.com:443:[127.0.0.1]\" (expected HOST:PORT:ADDR)"},
    {"[proxy]\nallow_private = 10.0.0.1/8\n", "t.conf:2: invalid CIDR range \"10.0.0.1/8\""},
    {"[proxy]\nallow_private = 10.0.0.0/33\n", "t.conf:2: invalid CIDR range \"10.0.0.0/33\""},
    {"[proxy]\nunmatched = maybe\n", "t.conf:2: unmatched must be \"passthrough\" or \"deny\""},
    {"[proxy]\ntls_resumption = yes\n", "t.conf:2: tls_resumption must be \"on\" or \"off\""},
    {"[proxy]\ntls_resumption = on\ntls_resumption = off\n", "t.conf:3: duplicate key \"tls_resumption\""},
    {"[proxy]\nconnect_timeout = 0\n",
     "t.conf:2: connect_timeout must be a number of seconds in (0, 86400]"},
    {"[proxy]\nidle_timeout = 1e3\n",
     "t.conf:2: idle_timeout must be a number of seconds in (0, 86400]"},
    {"[proxy]\nheader_timeout = 90000\n",
     "t.conf:2: header_timeout must be a number of seconds in (0, 86400]"},
    {"[proxy]\nstate_dir = /a\nstate_dir = /b\n", "t.conf:3: duplicate key \"state_dir\""},
    {"[proxy]\n[proxy]\n", "t.conf:2: duplicate [proxy] section"},
    {"[proxy]\npassthrough = *.github.io\n",
     "t.conf:2: passthrough: wildcard over a public suffix is not allowed: \"*.github.io\""},
    {"listen = 127.0.0.1:1\n", "t.conf:1: key \"listen\" outside of a section"},
    {"[proxy]\njust words\n", "t.conf:2: expected \"key = value\""},
    {"[proxy]\nstate_dir =\n", "t.conf:2: empty value for \"state_dir\""},
    {"[proxy]\n= x\n", "t.conf:2: missing key before '='"},
    {"[proxy\n", "t.conf:1: malformed section header (missing ']')"},
    {"[server]\n",
     "t.conf:1: unknown section [server] (expected [proxy], [service \"NAME\"], [token \"NAME\"] or "
     "[gateway \"NAME\"])"},
    {"[gateway \"g\"]\nlisten = 127.0.0.1:1\n", "t.conf:1: gateway \"g\" has no upstream"},
    {"[gateway \"g\"]\nupstream = https://a.example\n", "t.conf:1: gateway \"g\" has no listen address"},
    {"[gateway \"g\"]\nupstream = https://a.example/v1\n",
     "t.conf:2: upstream must be an origin like https://api.example.com or https://host:port (no path)"},
    {"[gateway \"g\"]\nupstream = ftp://a.example\n",
     "t.conf:2: upstream must be an origin like https://api.example.com or https://host:port (no path)"},
    {"[gateway \"g\"]\nallow_remote = maybe\n", "t.conf:2: allow_remote must be yes or no"},
    {"[gateway \"g\"]\nhost = x\n",
     "t.conf:2: unknown key \"host\" in [gateway] (expected listen, upstream, allow_remote, token)"},
    {"[gateway \"g\"]\ntoken = plain\n",
     "t.conf:2: token must be env:NAME, file:/absolute/path, vault:NAME, command:/absolute/path [args] or callback:NAME"},
    {"[gateway \"g\"]\nlisten = 127.0.0.1:1\nupstream = https://a.example\n[gateway \"g\"]\n",
     "t.conf:4: duplicate gateway \"g\""},
    {"[service openai]\n", "t.conf:1: section name must be quoted: [service \"NAME\"]"},
    {"[service \"\"]\n", "t.conf:1: section name must be 1 to 64 characters"},
    {"[service \"a b\"]\n", "t.conf:1: section name may contain only A-Z a-z 0-9 _ . -"},
    {"[proxy]\nstate_dir = /a\x01\n", "t.conf:2: control character in line"},
    {"[proxy]\nstate_dir = /a\rb\n", "t.conf:2: control character in line"},
    {"[proxy]\nwebsocket_idle_timeout = -1\n",
     "t.conf:2: websocket_idle_timeout must be a number of seconds in (0, 86400]"},
    {"[service \"a\"]\nhost = a.example\nauth = bearer\nsecret = env:A\nwebsocket = maybe\n",
     "t.conf:5: websocket must be \"on\" or \"off\""},
    {"[service \"a\"]\nhost = a.example\nauth = bearer\nsecret = env:A\nwebsocket_scrub = no\n",
     "t.conf:5: websocket_scrub must be \"on\" or \"off\""},
    {"[service \"a\"]\nhost = a.example\nauth = bearer\nsecret = env:A\nplaceholder = abc\n",
     "t.conf:5: placeholder must be 4..128 characters"},
    {"[service \"a\"]\nhost = a.example\nauth = bearer\nsecret = env:A\nplaceholder = __a b__\n",
     "t.conf:5: placeholder may contain only letters, digits, '_', '-' and '.'"},
    {"[service \"a\"]\nhost = a.example\nauth = bearer\nsecret = env:A\nplaceholder = __A__\n"
     "placeholder_in = websocket, cookie\n",
     "t.conf:6: placeholder_in: surface \"cookie\" is not supported (supported: header, path, query, body, websocket)"},
    {"[service \"a\"]\nhost = a.example\nauth = bearer\nsecret = env:A\nplaceholder_in = websocket\n",
     "t.conf:1: service \"a\": placeholder_in needs a placeholder"},
    {"[service \"a\"]\nhost = a.example\nauth = bearer\nsecret = env:A\nagent_env = OPENAI_KEY, lower\n",
     "t.conf:5: agent_env: \"lower\" is not an environment variable name ([A-Z_][A-Z0-9_]*)"},
};

/* websocket_keys: the WebSocket and placeholder keys parse and copy. */
static void websocket_keys(void **state)
{
    (void)state;
    av_config *c;
    assert_int_equal(load("[proxy]\nwebsocket_idle_timeout = 30\n"
                          "[service \"a\"]\nhost = a.example\nauth = bearer\nsecret = env:A\n"
                          "websocket = off\nwebsocket_scrub = off\n"
                          "[service \"b\"]\nhost = b.example\nauth = bearer\nsecret = env:B\n"
                          "placeholder = __B_KEY__\nplaceholder_in = websocket\n"
                          "agent_env =  B_KEY ,OTHER_B\n",
                          &c),
                     AV_OK);
    assert_true(c->ws_idle_timeout == 30.0);
    assert_int_equal(c->services[0].websocket_off, 1);
    assert_null(c->services[0].placeholder);
    assert_int_equal(c->services[0].placeholder_in, 0);
    assert_int_equal(c->services[1].websocket_off, 0);
    assert_int_equal(c->services[0].websocket_scrub_off, 1);
    assert_int_equal(c->services[1].websocket_scrub_off, 0);
    assert_string_equal(c->services[1].placeholder, "__B_KEY__");
    assert_int_equal(c->services[1].placeholder_in, AV_SURF_WEBSOCKET);
    assert_string_equal(c->services[1].agent_env, "B_KEY,OTHER_B");
    av_config *d = av__config_copy(c);
    assert_non_null(d);
    assert_string_equal(d->services[1].placeholder, "__B_KEY__");
    assert_string_equal(d->services[1].agent_env, "B_KEY,OTHER_B");
    assert_int_equal(d->services[0].websocket_off, 1);
    assert_int_equal(d->services[0].websocket_scrub_off, 1);
    assert_true(d->ws_idle_timeout == 30.0);
    av_config_free(d);
    av_config_free(c);
    assert_int_equal(load("[proxy]\n", &c), AV_OK);
    assert_true(c->ws_idle_timeout == 900.0);
    av_config_free(c);
}

/* errors: each bad file fails with the exact message and line. */
static void errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
        av_config *c;
        int rc = load(err_cases[i].text, &c);
        if (rc != AV_ERR_CONFIG)
            fail_msg("case %zu: rc %d, want AV_ERR_CONFIG", i, rc);
        if (strcmp(av_config_error(c), err_cases[i].error) != 0)
            fail_msg("case %zu:\n got: %s\nwant: %s", i, av_config_error(c), err_cases[i].error);
        /* a failed load leaves the config untouched */
        assert_int_equal(c->nservices, 0);
        assert_int_equal(c->ntokens, 0);
        assert_int_equal(c->nlisten, 0);
        assert_null(c->state_dir);
        av_config_free(c);
    }
}

/* replica_keys: ca_cert/ca_key, tokens_file, drain_delay/drain_timeout:
 * values, defaults, copies and the exact errors. */
static void replica_keys(void **state)
{
    (void)state;
    av_config *c;
    assert_int_equal(load("[proxy]\n", &c), AV_OK);
    double delay = -1, timeout = -1;
    av_config_drain(c, &delay, &timeout);
    assert_true(delay == 0 && timeout == 10);
    assert_null(av_config_tokens_file(c));
    assert_null(c->ca_cert_ref);
    av_config_free(c);
    assert_int_equal(load("[proxy]\nca_cert = file:/s/ca.pem\nca_key = command:/bin/cat /s/ca.key\n"
                          "tokens_file = /s/tokens\ndrain_delay = 0\ndrain_timeout = 0.5\n",
                          &c),
                     AV_OK);
    assert_int_equal(av_config_validate(c), AV_OK);
    av_config *d = av__config_copy(c);
    assert_non_null(d);
    assert_string_equal(d->ca_cert_ref, "file:/s/ca.pem");
    assert_string_equal(d->ca_key_ref, "command:/bin/cat /s/ca.key");
    assert_string_equal(av_config_tokens_file(d), "/s/tokens");
    av_config_drain(d, &delay, &timeout);
    assert_true(delay == 0 && timeout == 0.5);
    av_config_drain(NULL, &delay, NULL);
    assert_true(delay == 0);
    av_config_free(d);
    av_config_free(c);
    static const struct {
        const char *text, *error;
    } bad[] = {
        {"[proxy]\ndrain_delay = -1\n", "t.conf:2: drain_delay must be a number of seconds in [0, 3600]"},
        {"[proxy]\ndrain_delay = 3601\n", "t.conf:2: drain_delay must be a number of seconds in [0, 3600]"},
        {"[proxy]\ndrain_timeout = 0\n", "t.conf:2: drain_timeout must be a number of seconds in (0, 3600]"},
        {"[proxy]\ndrain_timeout = 10s\n", "t.conf:2: drain_timeout must be a number of seconds in (0, 3600]"},
        {"[proxy]\ntokens_file = tokens\n",
         "t.conf:2: tokens_file must be an absolute file path (a token store made by agentvault token create)"},
        {"[proxy]\nca_cert = /s/ca.pem\n",
         "t.conf:2: ca_cert must be env:NAME, file:/absolute/path, vault:NAME, command:/absolute/path [args] or "
         "callback:NAME"},
        {"[proxy]\nca_key = file:/s/k\nca_key = file:/s/k\n", "t.conf:3: duplicate key \"ca_key\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(load(bad[i].text, &c), AV_ERR_CONFIG);
        if (strcmp(av_config_error(c), bad[i].error) != 0)
            fail_msg("case %zu:\n got: %s\nwant: %s", i, av_config_error(c), bad[i].error);
        av_config_free(c);
    }
    /* one of the pair alone: a validation error naming both */
    assert_int_equal(load("[proxy]\nca_key = env:K\n", &c), AV_OK);
    assert_int_equal(av_config_validate(c), AV_ERR_CONFIG);
    assert_string_equal(av_config_error(c), "[proxy] ca_key is set but ca_cert is not: give both (the root "
                                            "certificate and its key) or neither (the CA in state_dir)");
    av_config_free(c);
}

/* names_64: the name length limit is exactly 64. */
static void names_64(void **state)
{
    (void)state;
    char text[256], name[66];
    memset(name, 'n', 65);
    name[64] = '\0';
    snprintf(text, sizeof(text), "[token \"%s\"]\nsecret = env:A\n", name);
    av_config *c;
    assert_int_equal(load(text, &c), 0);
    av_config_free(c);
    name[64] = 'n';
    name[65] = '\0';
    snprintf(text, sizeof(text), "[token \"%s\"]\nsecret = env:A\n", name);
    assert_int_equal(load(text, &c), AV_ERR_CONFIG);
    assert_string_equal(av_config_error(c), "t.conf:1: section name must be 1 to 64 characters");
    av_config_free(c);
}

/* atomic_and_additive: a second load adds; a failing one changes nothing;
 * duplicates across loads are detected. */
static void atomic_and_additive(void **state)
{
    (void)state;
    av_config *c;
    assert_int_equal(load(example, &c), 0);
    const char *more = "[service \"third\"]\nhost = c.example\nauth = bearer\nsecret = env:C\n";
    assert_int_equal(av_config_load_string(c, more, strlen(more), "more.conf"), 0);
    assert_int_equal(av_config_service_count(c), 3);
    const char *dup = "[service \"openai\"]\n";
    assert_int_equal(av_config_load_string(c, dup, strlen(dup), "dup.conf"), AV_ERR_CONFIG);
    assert_string_equal(av_config_error(c), "dup.conf:1: duplicate service \"openai\"");
    const char *half = "[proxy]\nstate_dir = /new\n[service \"x\"]\nhost = x.example\nbogus = 1\n";
    assert_int_equal(av_config_load_string(c, half, strlen(half), NULL), AV_ERR_CONFIG);
    assert_string_equal(av_config_error(c), "<string>:5: unknown key \"bogus\" in [service]");
    assert_int_equal(av_config_service_count(c), 3);
    assert_string_equal(av_config_state_dir(c), "/var/lib/agentvault");
    av_config_free(c);

    /* empty text, comments only, BOM, no trailing newline */
    assert_int_equal(load("", &c), 0);
    av_config_free(c);
    assert_int_equal(load("\xEF\xBB\xBF# x\n[token \"t\"]\nsecret = env:T", &c), 0);
    assert_int_equal(c->ntokens, 1);
    av_config_free(c);
}

/* files: load_file reads, reports I/O errors and refuses > 1 MiB. */
static void files(void **state)
{
    (void)state;
    char path[] = "/tmp/av_test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, example, strlen(example)), (ssize_t)strlen(example));
    close(fd);
    av_config *c;
    assert_int_equal(av_config_new(&c), 0);
    assert_int_equal(av_config_load_file(c, path), 0);
    assert_int_equal(av_config_service_count(c), 2);
    av_config_free(c);

    /* an error names the path and the line */
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "[proxy]\nnope = 1\n", 17), 17);
    close(fd);
    assert_int_equal(av_config_new(&c), 0);
    assert_int_equal(av_config_load_file(c, path), AV_ERR_CONFIG);
    char want[200];
    snprintf(want, sizeof(want), "%s:2: unknown key \"nope\" in [proxy]", path);
    assert_string_equal(av_config_error(c), want);

    /* larger than 1 MiB (all comments) */
    fd = open(path, O_WRONLY | O_TRUNC);
    static char blob[1024 * 1024 + 2];
    memset(blob, '\n', sizeof(blob));
    blob[0] = '#';
    assert_int_equal(write(fd, blob, sizeof(blob)), (ssize_t)sizeof(blob));
    close(fd);
    assert_int_equal(av_config_load_file(c, path), AV_ERR_CONFIG);
    snprintf(want, sizeof(want), "%s: file is larger than 1 MiB", path);
    assert_string_equal(av_config_error(c), want);
    /* exactly 1 MiB is fine */
    assert_int_equal(truncate(path, 1024 * 1024), 0);
    assert_int_equal(av_config_load_file(c, path), 0);
    unlink(path);

    assert_int_equal(av_config_load_file(c, "/nonexistent/av.conf"), AV_ERR_IO);
    assert_string_equal(av_config_error(c), "/nonexistent/av.conf: No such file or directory");
    assert_int_equal(av_config_load_file(c, "/"), AV_ERR_IO);
    assert_string_equal(av_config_error(c), "/: Is a directory");
    av_config_free(c);
}

/* setters: the programmatic overrides. */
static void setters(void **state)
{
    (void)state;
    av_config *c;
    assert_int_equal(av_config_new(&c), 0);
    assert_int_equal(av_config_add_listen(c, "127.0.0.1:14322"), 0);
    assert_int_equal(av_config_add_listen(c, "[0::1]:0"), 0);
    assert_int_equal(av_config_add_listen(c, "LocalHost:99"), 0);
    assert_int_equal(av_config_listen_count(c), 3);
    assert_string_equal(av_config_listen_get(c, 1), "[::1]:0");
    assert_string_equal(av_config_listen_get(c, 2), "localhost:99");
    assert_int_equal(av_config_add_listen(c, "127.0.0.1"), AV_ERR_INVALID);
    assert_string_equal(av_config_error(c),
                        "invalid listen address \"127.0.0.1\" (expected IP:PORT, [IPv6]:PORT or localhost:PORT)");
    assert_int_equal(av_config_add_listen(c, "0x7f.1:80"), AV_ERR_INVALID);
    assert_int_equal(av_config_add_listen(c, NULL), AV_ERR_INVALID);
    assert_int_equal(av_config_validate(c), 0);
    assert_int_equal(av_config_add_listen(c, "127.0.0.1:14322"), 0);
    assert_int_equal(av_config_validate(c), AV_ERR_CONFIG);
    assert_string_equal(av_config_error(c), "duplicate listen address 127.0.0.1:14322");
    assert_int_equal(av_config_clear_listen(c), 0);
    assert_int_equal(av_config_listen_count(c), 0);
    assert_int_equal(av_config_validate(c), 0);

    assert_int_equal(av_config_set_state_dir(c, "/tmp/s"), 0);
    assert_string_equal(av_config_state_dir(c), "/tmp/s");
    assert_int_equal(av_config_set_state_dir(c, ""), AV_ERR_INVALID);
    assert_int_equal(av_config_set_upstream_cafile(c, "/ca.pem"), 0);
    assert_string_equal(c->upstream_cafile, "/ca.pem");
    assert_int_equal(av_config_add_resolve(c, "api.openai.com:443:[::1]"), 0);
    assert_int_equal(av_config_add_resolve(c, "API.openai.com:443:::1"), 0);
    assert_string_equal(c->resolve[1].host, "api.openai.com");
    assert_string_equal(c->resolve[1].addr, "::1");
    assert_int_equal(av_config_add_resolve(c, "a.com:443:[::1]:8443"), 0);
    assert_int_equal(c->resolve[2].dial_port, 8443);
    assert_int_equal(av_config_add_resolve(c, "a.com:443:127.0.0.1:0"), AV_ERR_INVALID);
    assert_int_equal(av_config_add_resolve(c, "a.com:443:127.1"), AV_ERR_INVALID);
    assert_int_equal(av_config_add_resolve(c, "a.com::127.0.0.1"), AV_ERR_INVALID);
    assert_int_equal(av_config_add_resolve(c, "a.com:443:"), AV_ERR_INVALID);
    assert_string_equal(av_config_error(c), "invalid resolve entry \"a.com:443:\" (expected HOST:PORT:ADDR)");
    assert_int_equal(c->nresolve, 3);
    assert_int_equal(av_config_service_count(NULL), 0);
    assert_int_equal(av_config_listen_count(NULL), 0);
    assert_null(av_config_state_dir(NULL));
    assert_string_equal(av_config_error(NULL), "");
    av_config_free(c);
    av_config_free(NULL);
}

/* validate_programmatic: cross-field rules on a hand-built config. */
static void validate_rules(void **state)
{
    (void)state;
    av_config *c;
    assert_int_equal(load(example, &c), 0);
    av_free(c->services[1].secret_ref);
    c->services[1].secret_ref = NULL;
    assert_int_equal(av_config_validate(c), AV_ERR_CONFIG);
    assert_string_equal(av_config_error(c), "line 11: service \"github\" has no secret");
    av_config_free(c);
}

/* copy_equals: av__config_copy is a deep, equal copy. */
static void copy_equals(void **state)
{
    (void)state;
    av_config *c;
    const char *extra =
        "[proxy]\npassthrough = a.example\nresolve = x.example:443:127.0.0.1\n"
        "allow_private = 10.0.0.0/8\nupstream_cacert = /ca.pem\n"
        "[service \"b\"]\nhost = b.example\nauth = basic u\nsecret = env:B\n"
        "[token \"t\"]\nsecret = env:T\n";
    assert_int_equal(load(example, &c), 0);
    /* a second load may have its own [proxy] section */
    assert_int_equal(av_config_load_string(c, extra, strlen(extra), "x"), 0);
    assert_int_equal(av_config_add_listen(c, "127.0.0.1:1"), 0);
    assert_int_equal(av_config_set_state_dir(c, "/s"), 0);

    av_config *d = av__config_copy(c);
    assert_non_null(d);
    assert_int_equal(d->nlisten, c->nlisten);
    assert_string_equal(d->listen[0], c->listen[0]);
    assert_ptr_not_equal(d->listen[0], c->listen[0]);
    assert_string_equal(d->state_dir, "/s");
    assert_ptr_not_equal(d->state_dir, c->state_dir);
    assert_int_equal(d->npassthrough, 1);
    assert_string_equal(d->passthrough[0], "a.example");
    assert_int_equal(d->nresolve, 1);
    assert_string_equal(d->resolve[0].host, "x.example");
    assert_string_equal(d->resolve[0].addr, "127.0.0.1");
    assert_int_equal(d->resolve[0].port, 443);
    assert_string_equal(d->upstream_cafile, "/ca.pem");
    assert_int_equal(d->nallow_private, 1);
    assert_memory_equal(&d->allow_private[0], &c->allow_private[0], sizeof(av_cidr));
    assert_int_equal(d->nservices, 3);
    for (size_t i = 0; i < d->nservices; i++) {
        const av_service *a = &c->services[i], *b = &d->services[i];
        assert_string_equal(a->name, b->name);
        assert_string_equal(a->host, b->host);
        assert_ptr_not_equal(a->host, b->host);
        assert_int_equal(a->wildcard, b->wildcard);
        assert_int_equal(a->host_is_ip, b->host_is_ip);
        assert_int_equal(a->port, b->port);
        assert_int_equal(a->scheme_http, b->scheme_http);
        if (a->path_glob)
            assert_string_equal(a->path_glob, b->path_glob);
        else
            assert_null(b->path_glob);
        assert_int_equal(a->methods, b->methods);
        assert_int_equal(a->auth, b->auth);
        if (a->auth_name)
            assert_string_equal(a->auth_name, b->auth_name);
        else
            assert_null(b->auth_name);
        if (a->auth_template)
            assert_string_equal(a->auth_template, b->auth_template);
        else
            assert_null(b->auth_template);
        assert_string_equal(a->secret_ref, b->secret_ref);
        assert_int_equal(a->line, b->line);
    }
    assert_int_equal(d->ntokens, 1);
    assert_string_equal(d->tokens[0].name, "t");
    assert_string_equal(d->tokens[0].secret_ref, "env:T");
    assert_true(d->connect_timeout == c->connect_timeout);
    assert_int_equal(d->unmatched, c->unmatched);
    av_config_free(c); /* the copy survives the original */
    assert_string_equal(d->services[1].auth_template, "token {secret}");
    assert_int_equal(av_config_validate(d), 0);
    av_config_free(d);
    assert_null(av__config_copy(NULL));
}

/* gateways: parsed fields, copies, accessors. */
static void gateways(void **state)
{
    (void)state;
    av_config *c;
    assert_int_equal(load("[gateway \"openai\"]\nlisten = 127.0.0.1:8080\nupstream = https://API.openai.com\n"
                          "token = env:GW\n\n[gateway \"local\"]\nlisten = [::1]:0\n"
                          "upstream = http://10.0.0.1:8000\nallow_remote = yes\n",
                          &c),
                     AV_OK);
    assert_int_equal(av_config_gateway_count(c), 2);
    assert_string_equal(av_config_gateway_name(c, 0), "openai");
    assert_string_equal(av_config_gateway_listen(c, 0), "127.0.0.1:8080");
    assert_string_equal(c->gateways[0].dest.host, "api.openai.com");
    assert_int_equal(c->gateways[0].dest.port, 443);
    assert_int_equal(c->gateways[0].dest_tls, 1);
    assert_string_equal(c->gateways[0].token_ref, "env:GW");
    assert_int_equal(c->gateways[0].allow_remote, 0);
    assert_int_equal(c->gateways[1].dest_tls, 0);
    assert_int_equal(c->gateways[1].dest.port, 8000);
    assert_int_equal(c->gateways[1].allow_remote, 1);
    assert_null(av_config_gateway_name(c, 2));
    av_config *d = av__config_copy(c);
    assert_non_null(d);
    assert_int_equal(d->ngateways, 2);
    assert_string_equal(d->gateways[1].upstream, "http://10.0.0.1:8000");
    assert_ptr_not_equal(d->gateways[1].upstream, c->gateways[1].upstream);
    av_config_free(d);
    av_config_free(c);
}

/* add_section: programmatic sections go through the same parser. */
static void add_section(void **state)
{
    (void)state;
    av_config *c;
    assert_int_equal(av_config_new(&c), AV_OK);
    const char *svc[] = {"host", "api.openai.com", "auth", "bearer", "secret", "env:OPENAI_API_KEY", NULL};
    assert_int_equal(av_config_add_section(c, "service", "openai", svc), AV_OK);
    assert_int_equal(av_config_service_count(c), 1);
    assert_string_equal(av_config_service_name(c, 0), "openai");
    const char *px[] = {"unmatched", "deny", NULL};
    assert_int_equal(av_config_add_section(c, "proxy", NULL, px), AV_OK);
    /* bad input: nothing changes, the error says why */
    const char *nl[] = {"host", "a.example\n[proxy]", NULL};
    assert_int_equal(av_config_add_section(c, "service", "x", nl), AV_ERR_INVALID);
    assert_non_null(strstr(av_config_error(c), "line breaks"));
    const char *comment[] = {"#host", "a.example", NULL};
    assert_int_equal(av_config_add_section(c, "service", "x", comment), AV_ERR_INVALID);
    const char *odd[] = {"host", NULL};
    assert_int_equal(av_config_add_section(c, "service", "x", odd), AV_ERR_INVALID);
    assert_int_equal(av_config_add_section(c, "service", "a\"b", svc), AV_ERR_INVALID);
    assert_int_equal(av_config_add_section(c, "server", "x", svc), AV_ERR_INVALID);
    const char *badkey[] = {"hots", "a.example", NULL};
    assert_int_equal(av_config_add_section(c, "service", "y", badkey), AV_ERR_CONFIG);
    assert_non_null(strstr(av_config_error(c), "[service \"y\"]:2: unknown key"));
    assert_int_equal(av_config_add_section(c, "service", "openai", svc), AV_ERR_CONFIG); /* duplicate */
    assert_int_equal(av_config_service_count(c), 1);
    assert_int_equal(av_config_validate(c), AV_OK);
    av_config_free(c);
}

/* ---- round trip: a config that sets every key, dumped and copied -------- */

/* every_key_text sets every key of every section, each to a value that
 * differs from its default somewhere (see round_trip_sets_every_field). */
static const char every_key_text[] =
    "[proxy]\n"
    "listen = 127.0.0.1:14322, [::1]:14323\n"
    "state_dir = /var/lib/av-rt\n"
    "unmatched = deny\n"
    "passthrough = pass.example, *.wild.example.com\n"
    "resolve = r.example:443:127.0.0.2:8443\n"
    "resolve = r6.example:8443:[::1]\n"
    "upstream_cacert = /etc/av/ca.pem\n"
    "allow_private = 10.0.0.0/8, fd00::/8\n"
    "connect_timeout = 3.5\n"
    "idle_timeout = 61\n"
    "header_timeout = 7.25\n"
    "websocket_idle_timeout = 30\n"
    "secret_ttl = 45\n"
    "command_timeout = 4\n"
    "audit = /var/log/av.audit\n"
    "vault = /var/lib/av-rt/vault\n"
    "max_connections = 777\n"
    "workers = 3\n"
    "upstream_proxy = socks5h://parent.example:1080\n"
    "upstream_proxy_auth = env:PARENT_CRED\n"
    "upstream_no_proxy = .corp.example, 10.0.0.0/8, [::1]:8443\n"
    "tls_resumption = off\n"
    "ca_cert = file:/run/av/ca.pem\n"
    "ca_key = env:AV_CA_KEY\n"
    "tokens_file = /run/av/tokens\n"
    "drain_delay = 2.5\n"
    "drain_timeout = 12\n"
    "decide_notify = command:/usr/bin/notify-av --id\n"
    "\n"
    "[service \"a\"]\n"
    "host = *.a.example.com\n"
    "port = 8080\n"
    "scheme = http\n"
    "path = /v1/*\n"
    "methods = GET, POST\n"
    "auth = header X-Api-Key \"k {secret}\"\n"
    "auth_alt = header X-Other \"o {secret}\"\n"
    "secret = env:A_KEY\n"
    "websocket = off\n"
    "websocket_scrub = off\n"
    "placeholder = __A_KEY__\n"
    "placeholder_in = header, body, websocket\n"
    "agent_env = A_KEY, OTHER_A\n"
    "upstream_proxy = https://[::1]:3129\n"
    "upstream_proxy_auth = file:/run/parent-a\n"
    "decide = command:/usr/bin/filter 'a b'\n"
    "decide_timeout = 7.5\n"
    "decide_body = 4k\n"
    "\n"
    "[service \"b\"]\n"
    "host = 127.0.0.9\n"
    "auth = query key\n"
    "secret = file:/run/b\n"
    "\n"
    "[service \"aws\"]\n"
    "host = s3.example.test\n"
    "auth = aws-sigv4 eu-west-1 s3\n"
    "secret = env:AWS_SECRET\n"
    "access_key_id = env:AWS_AKID\n"
    "session_token = vault:aws-token\n"
    "aws_body_max = 2 MiB\n"
    "\n"
    "[service \"oa\"]\n"
    "host = api.oauth.example\n"
    "auth = bearer\n"
    "secret = oauth2:client_credentials\n"
    "token_url = https://auth.example:8443/oauth/token?x=1\n"
    "client_id = my client\n"
    "client_secret = env:OA_SECRET\n"
    "scope = read write\n"
    "audience = https://api.oauth.example\n"
    "client_auth = post\n"
    "\n"
    "[service \"or\"]\n"
    "host = api.refresh.example\n"
    "auth = bearer\n"
    "secret = oauth2:refresh_token\n"
    "token_url = https://auth.example/token\n"
    "client_id = public-client\n"
    "refresh_token = vault:or-refresh\n"
    "\n"
    "[service \"gcp\"]\n"
    "host = vertex.example\n"
    "auth = bearer\n"
    "secret = gcp:service_account vault:sa-key target_audience=https://run.example\n"
    "token_url = https://oauth2.example/token\n"
    "\n"
    "[service \"gh\"]\n"
    "host = api.gh.example\n"
    "auth = bearer\n"
    "secret = github_app:42 vault:app-key installation=7 repositories=a,b permissions=contents:read\n"
    "\n"
    "[token \"t\"]\n"
    "secret = env:T_TOKEN\n"
    "services = a, b\n"
    "unmatched = deny\n"
    "rate = 5/s\n"
    "burst = 9\n"
    "\n"
    "[gateway \"g\"]\n"
    "listen = 127.0.0.1:8081\n"
    "upstream = https://127.0.0.1:8443\n"
    "allow_remote = yes\n"
    "token = env:GW_TOKEN\n";

static const char *const section_kinds[] = {"proxy", "service", "token", "gateway"};

/* text_sets_key: some "[kind ...]" section of |text| has a "key = " line. */
static int text_sets_key(const char *text, const char *kind, const char *key)
{
    char head[32], line[96];
    snprintf(head, sizeof(head), "\n[%s", kind);
    snprintf(line, sizeof(line), "\n%s = ", key);
    char *t = malloc(strlen(text) + 2);
    assert_non_null(t);
    t[0] = '\n';
    strcpy(t + 1, text);
    int found = 0;
    for (const char *s = strstr(t, head); s && !found; s = strstr(s + 1, head)) {
        const char *end = strstr(s + 1, "\n[");
        const char *k = strstr(s, line);
        found = k && (!end || k < end);
    }
    free(t);
    return found;
}

/* dump_of returns a malloc'ed NUL-terminated av__config_dump of |c|. */
static char *dump_of(const av_config *c)
{
    av_buf b;
    av__buf_init(&b, 1 << 20);
    assert_int_equal(av__config_dump(c, &b), AV_OK);
    char *s = malloc(b.len + 1);
    assert_non_null(s);
    memcpy(s, av__buf_head(&b), b.len);
    s[b.len] = '\0';
    av__buf_free(&b);
    return s;
}

/* A poisoning allocator: freed blocks are overwritten, so a copy that
 * shares a string with its original shows garbage once the original is
 * freed, with or without a sanitizer. */
static void *poison_malloc(size_t n, void *ud)
{
    (void)ud;
    size_t *p = malloc(n + sizeof(size_t) * 2);
    if (!p)
        return NULL;
    p[0] = n;
    return p + 2;
}
static void poison_free(void *ptr, void *ud)
{
    (void)ud;
    if (!ptr)
        return;
    size_t *p = (size_t *)ptr - 2;
    memset(ptr, 0xA5, p[0]);
    free(p);
}
static void *poison_realloc(void *ptr, size_t n, void *ud)
{
    if (!ptr)
        return poison_malloc(n, ud);
    void *np = poison_malloc(n, ud);
    if (!np)
        return NULL;
    size_t old = ((size_t *)ptr)[-2];
    memcpy(np, ptr, old < n ? old : n);
    poison_free(ptr, ud);
    return np;
}

static void rt_secret_fn(void *ud, const char *name, av_secret_request *req)
{
    (void)ud;
    (void)name;
    (void)req;
}

static void rt_decide_fn(void *ud, av_decision_request *req)
{
    (void)ud;
    (void)req;
}

/* rt_config builds the every-key config plus what only the API sets: a
 * lent vault and secret callback, token-store tokens and an error text. */
static av_config *rt_config(char *store, size_t store_len)
{
    av_config *c;
    assert_int_equal(load(every_key_text, &c), AV_OK);
    assert_int_equal(av_config_validate(c), AV_OK);
    static int fake_vault, fake_ud;
    assert_int_equal(av_config_set_vault(c, (struct av_vault *)(void *)&fake_vault), AV_OK);
    assert_int_equal(av_config_set_secret_fn(c, rt_secret_fn, &fake_ud), AV_OK);
    assert_int_equal(av_config_set_decide_fn(c, rt_decide_fn, &fake_ud), AV_OK);
    snprintf(store, store_len, "/tmp/av-test-config-rt-%ld", (long)getpid());
    char tok[64], err[200];
    unlink(store);
    assert_int_equal(av_tokens_create(store, "stored", "a", 3600, tok, sizeof(tok), err, sizeof(err)), AV_OK);
    assert_int_equal(av_config_load_tokens(c, store), AV_OK);
    assert_int_equal(av_config_validate(c), AV_OK);
    /* a failed load leaves the config as it was, with an error text */
    const char *bad = "[proxy]\nbogus = 1\n";
    assert_int_equal(av_config_load_string(c, bad, strlen(bad), "rt"), AV_ERR_CONFIG);
    return c;
}

/* round_trip_text_sets_every_key: the every-key text names every key of
 * the reader's tables (a new key must be added to it). */
static void round_trip_text_sets_every_key(void **state)
{
    (void)state;
    size_t total = 0;
    for (size_t s = 0; s < sizeof(section_kinds) / sizeof(section_kinds[0]); s++) {
        const char *key;
        for (size_t i = 0; (key = av__config_key_name(section_kinds[s], i)); i++, total++)
            if (!text_sets_key(every_key_text, section_kinds[s], key))
                fail_msg("every_key_text does not set [%s] %s", section_kinds[s], key);
    }
    assert_true(total >= 38);
    assert_null(av__config_key_name("proxy", 1000));
    assert_null(av__config_key_name("nope", 0));
}

/* keys_documented: docs/CONFIG.md has a table row for every key of the
 * reader's tables, in that section's chapter. */
static void keys_documented(void **state)
{
    (void)state;
    const char *dir = getenv("AV_TEST_SRCDIR");
    assert_non_null(dir);
    char path[512];
    snprintf(path, sizeof(path), "%s/../docs/CONFIG.md", dir);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char doc[1 << 20];
    size_t n = fread(doc, 1, sizeof(doc) - 1, f);
    fclose(f);
    doc[n] = '\0';
    for (size_t s = 0; s < sizeof(section_kinds) / sizeof(section_kinds[0]); s++) {
        char head[48];
        snprintf(head, sizeof(head), "\n## `[%s", section_kinds[s]);
        const char *start = strstr(doc, head);
        if (!start)
            fail_msg("docs/CONFIG.md has no chapter %s", head + 1);
        const char *end = strstr(start + 1, "\n## ");
        const char *key;
        for (size_t i = 0; (key = av__config_key_name(section_kinds[s], i)); i++) {
            char row[96];
            snprintf(row, sizeof(row), "\n| `%s` |", key);
            const char *r = strstr(start, row);
            if (!r || (end && r > end))
                fail_msg("docs/CONFIG.md: [%s] %s has no row", section_kinds[s], key);
        }
    }
}

/* round_trip_sets_every_field: every member of every struct has a
 * non-default value in some element of the every-key config, so a member
 * the copy drops shows up in the comparison below. */
static void round_trip_sets_every_field(void **state)
{
    (void)state;
    char store[64];
    av_config *c = rt_config(store, sizeof(store));
    /* each [proxy] number lands in its own member */
    assert_true(c->connect_timeout == 3.5 && c->idle_timeout == 61 && c->header_timeout == 7.25);
    assert_true(c->ws_idle_timeout == 30 && c->secret_ttl == 45 && c->command_timeout == 4);
    assert_int_equal(c->max_connections, 777);
    assert_int_equal(c->workers, 3);
    assert_int_equal(c->tls_resumption_off, 1);
    char *d = dump_of(c);
    /* fields named without indices: "services[1].port" -> "services[].port" */
    char names[128][64];
    int set[128];
    size_t nn = 0;
    for (char *line = d; *line;) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        char *eq = strchr(line, '=');
        assert_non_null(eq);
        char name[64];
        size_t o = 0;
        for (const char *q = line; q < eq && o + 1 < sizeof(name); q++) {
            if (*q == '[') {
                name[o++] = '[';
                while (*q != ']')
                    q++;
            }
            name[o++] = *q;
        }
        name[o] = '\0';
        const char *v = eq + 1;
        int nonzero = strcmp(v, "0") && strcmp(v, "<null>") && strcmp(v, "\"\"") && strspn(v, "0") != strlen(v);
        size_t i = 0;
        while (i < nn && strcmp(names[i], name))
            i++;
        if (i == nn) {
            assert_true(nn < 128);
            strcpy(names[nn], name);
            set[nn++] = 0;
        }
        set[i] |= nonzero;
        line = nl + 1;
    }
    for (size_t i = 0; i < nn; i++)
        if (!set[i])
            fail_msg("no element of the every-key config sets %s", names[i]);
    assert_true(nn >= 70);
    free(d);
    av_config_free(c);
    unlink(store);
}

/* round_trip_copy: the copy's dump equals the original's, also once the
 * original is freed (with freed memory poisoned), and the copy of the copy
 * too: no member is dropped or shared. */
static void round_trip_copy(void **state)
{
    (void)state;
    assert_int_equal(av_set_allocator(poison_malloc, poison_realloc, poison_free, NULL), AV_OK);
    char store[64];
    av_config *c = rt_config(store, sizeof(store));
    char *a = dump_of(c);
    av_config *d = av__config_copy(c);
    assert_non_null(d);
    char *b = dump_of(d);
    assert_string_equal(a, b);
    av_config_free(c);
    char *b2 = dump_of(d);
    assert_string_equal(a, b2);
    av_config *e = av__config_copy(d);
    av_config_free(d);
    char *b3 = dump_of(e);
    assert_string_equal(a, b3);
    /* loading more text into a config copies it first: nothing is lost */
    const char *more = "[service \"c\"]\nhost = c.example\nauth = bearer\nsecret = env:C\n";
    assert_int_equal(av_config_load_string(e, more, strlen(more), "more"), AV_OK);
    char *b4 = dump_of(e);
    assert_true(strlen(b4) > strlen(a));
    assert_memory_equal(b4, a, strstr(a, "nservices=") - a);
    av_config_free(e);
    free(a);
    free(b);
    free(b2);
    free(b3);
    free(b4);
    assert_int_equal(av_set_allocator(NULL, NULL, NULL, NULL), AV_OK);
    unlink(store);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(example_parses),
        cmocka_unit_test(every_key),
        cmocka_unit_test(quoting_and_long_lines),
        cmocka_unit_test(errors),
        cmocka_unit_test(replica_keys),
        cmocka_unit_test(websocket_keys),
        cmocka_unit_test(names_64),
        cmocka_unit_test(atomic_and_additive),
        cmocka_unit_test(files),
        cmocka_unit_test(setters),
        cmocka_unit_test(validate_rules),
        cmocka_unit_test(copy_equals),
        cmocka_unit_test(gateways),
        cmocka_unit_test(add_section),
        cmocka_unit_test(round_trip_text_sets_every_key),
        cmocka_unit_test(round_trip_sets_every_field),
        cmocka_unit_test(round_trip_copy),
        cmocka_unit_test(keys_documented),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
