/* av_admin.c - the proxy's own endpoints: /ca.pem, /healthz, /agent-env, /metrics
 * (origin-form HTTP/1.1 requests to the proxy itself).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_conn_int.h"

/* Variables `agentvault run` sets to a placeholder for services on the
 * well-known API hosts, unless the service names its own (agent_env). */
static const char *agent_env_default(const char *host)
{
    if (strcmp(host, "api.openai.com") == 0)
        return "OPENAI_API_KEY,CODEX_API_KEY";
    if (strcmp(host, "api.anthropic.com") == 0)
        return "ANTHROPIC_API_KEY";
    if (strcmp(host, "api.github.com") == 0)
        return "GITHUB_TOKEN,GH_TOKEN";
    return NULL;
}

/* Does a block of NAME=VALUE lines already set |name|? */
static int env_lines_have(const char *body, size_t len, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < len;) {
        const char *line = body + i;
        const char *end = memchr(line, '\n', len - i);
        size_t ll = end ? (size_t)(end - line) : len - i;
        if (ll > nl && memcmp(line, name, nl) == 0 && line[nl] == '=')
            return 1;
        i += ll + 1;
    }
    return 0;
}

/* Body of GET /agent-env: NAME=PLACEHOLDER lines (never a secret). */
static void conn_agent_env(av_conn *c, int head_only)
{
    const av_config *cfg = c->snap->cfg;
    char body[8192];
    size_t o = 0;
    body[0] = '\0';
    for (size_t i = 0; i < cfg->nservices; i++) {
        const av_service *svc = &cfg->services[i];
        const char *vars = svc->agent_env ? svc->agent_env : agent_env_default(svc->host);
        if (!vars)
            continue;
        char value[160];
        if (svc->placeholder)
            snprintf(value, sizeof(value), "%s", svc->placeholder);
        else
            snprintf(value, sizeof(value), "agentvault-placeholder-%s", svc->name);
        const char *p = vars;
        while (*p) {
            size_t n = strcspn(p, ",");
            char name[72];
            snprintf(name, sizeof(name), "%.*s", (int)(n < 64 ? n : 64), p);
            int dup = env_lines_have(body, o, name); /* first service naming it wins */
            if (!dup) {
                int w = snprintf(body + o, sizeof(body) - o, "%s=%s\n", name, value);
                if (w < 0 || (size_t)w >= sizeof(body) - o)
                    break;
                o += (size_t)w;
            }
            p += n;
            if (*p == ',')
                p++;
        }
    }
    av__conn_respond_body(c, 200, "text/plain; charset=utf-8", body, o, head_only);
}

/* Body of GET /metrics: Prometheus text format (never a secret; service
 * and token names only). */
static void conn_metrics(av_conn *c, int head_only)
{
    const av_env *env = c->env;
    av_buf b;
    av__buf_init(&b, 1 << 20);
    av__buf_append_str(&b, "# HELP agentvault_exchanges_total Exchanges by service and status.\n"
                           "# TYPE agentvault_exchanges_total counter\n");
    for (size_t i = 0; i < env->metrics->nmx; i++)
        av__buf_appendf(&b, "agentvault_exchanges_total{service=\"%s\",status=\"%d\"} %llu\n", env->metrics->mx[i].svc,
                        env->metrics->mx[i].status, env->metrics->mx[i].n);
    av__buf_append_str(&b, "# HELP agentvault_exchange_ends_total Exchanges by how they ended.\n"
                           "# TYPE agentvault_exchange_ends_total counter\n");
    for (int e = AV_END_COMPLETE; e < AV_END_COUNT; e++)
        av__buf_appendf(&b, "agentvault_exchange_ends_total{end=\"%s\"} %llu\n", av__end_names[e], env->metrics->m_ends[e]);
    av_ca_stats st;
    av__ca_stats(env->ca, &st);
    av__buf_appendf(&b,
                    "# TYPE agentvault_connections_active gauge\nagentvault_connections_active %zu\n"
                    "# TYPE agentvault_connections_total counter\nagentvault_connections_total %llu\n"
                    "# TYPE agentvault_upstream_h2_connections gauge\nagentvault_upstream_h2_connections %zu\n"
                    "# TYPE agentvault_upstream_idle_connections gauge\nagentvault_upstream_idle_connections %zu\n"
                    "# TYPE agentvault_tls_handshakes_total counter\n"
                    "agentvault_tls_handshakes_total{side=\"agent\"} %llu\n"
                    "agentvault_tls_handshakes_total{side=\"upstream\"} %llu\n"
                    "# TYPE agentvault_leaf_cache_hits_total counter\nagentvault_leaf_cache_hits_total %lu\n"
                    "# TYPE agentvault_leaf_cache_misses_total counter\nagentvault_leaf_cache_misses_total %lu\n"
                    "# TYPE agentvault_injected_total counter\nagentvault_injected_total %llu\n"
                    "# TYPE agentvault_redacted_total counter\nagentvault_redacted_total %llu\n"
                    "# TYPE agentvault_limit_hits_total counter\n"
                    "agentvault_limit_hits_total{limit=\"token_rate\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"token_scope\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"h2\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"header_size\"} %llu\n"
                    "agentvault_limit_hits_total{limit=\"leaf_mint_rate\"} %lu\n",
                    *env->nconns, env->metrics->m_conns_total, env->pool->nmux, env->pool->nidle, env->metrics->m_tls_agent, env->metrics->m_tls_upstream,
                    st.leaf_hits, st.leaf_misses, env->metrics->m_injected, env->metrics->m_redacted, env->metrics->m_limit_rate,
                    env->metrics->m_limit_scope, env->metrics->m_limit_h2, env->metrics->m_limit_head, st.leaf_refused);
    av__buf_appendf(&b, "agentvault_limit_hits_total{limit=\"connections\"} %llu\n"
                        "agentvault_limit_hits_total{limit=\"open_files\"} %llu\n", env->metrics->m_limit_conns, env->metrics->m_limit_fds);
    av__conn_respond_body(c, 200, "text/plain; version=0.0.4; charset=utf-8", (const char *)av__buf_head(&b), b.len,
                      head_only);
    av__buf_free(&b);
}

/* Handle an origin-form request addressed to the proxy itself. */
void av__conn_self_request(av_conn *c, const av_h1_request *req)
{
    int get = ci_eq(req->method, req->method_len, "GET");
    int head = ci_eq(req->method, req->method_len, "HEAD");
    if ((get || head) && req->target_len == 7 && memcmp(req->target, "/ca.pem", 7) == 0) {
        const char *pem = av__ca_root_pem(c->env->ca);
        av__conn_respond_body(c, 200, "application/x-pem-file", pem, strlen(pem), head);
    } else if ((get || head) && req->target_len == 8 && memcmp(req->target, "/healthz", 8) == 0) {
        av__conn_respond_body(c, 200, "text/plain; charset=utf-8", "ok\n", 3, head);
    } else if ((get || head) && req->target_len == 10 && memcmp(req->target, "/agent-env", 10) == 0) {
        conn_agent_env(c, head);
    } else if ((get || head) && req->target_len == 8 && memcmp(req->target, "/metrics", 8) == 0) {
        conn_metrics(c, head);
    } else {
        av__conn_respond(c, 400,
                     "this is a forward proxy: use CONNECT for https (e.g. curl -x), absolute-form for http, "
                     "or GET /ca.pem, /healthz, /agent-env or /metrics",
                     0, 1);
        return;
    }
    if (req->body != AV_H1_BODY_NONE || (req->flags & AV_H1_F_CLOSE)) {
        c->state = C_CLOSING;
        av__side_close_write(&c->a);
    }
}
