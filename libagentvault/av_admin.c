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
 * well-known API hosts and for AWS-signed services (the SDKs' key
 * variables, so that an agent never signs with keys from the user's
 * environment), unless the service names its own (agent_env). */
static const char *agent_env_default(const av_service *svc)
{
    const char *host = svc->host;
    if (svc->auth == AV_AUTH_AWS_SIGV4)
        return "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY,AWS_SESSION_TOKEN";
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
        const char *vars = svc->agent_env ? svc->agent_env : agent_env_default(svc);
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

/* Body of GET /metrics (av__metrics_prometheus). */
static void conn_metrics(av_conn *c, int head_only)
{
    const av_env *env = c->env;
    av_buf b;
    av__buf_init(&b, 1 << 20);
    if (env->metrics_text) {
        env->metrics_text(env->ud, &b);
    } else {
        av_ca_stats st;
        av__ca_stats(env->ca, &st);
        av_metrics_gauges g;
        memset(&g, 0, sizeof(g));
        g.conns = *env->nconns;
        g.upstream_h2 = env->pool->nmux;
        g.upstream_idle = env->pool->nidle;
        g.leaf_hits = st.leaf_hits;
        g.leaf_misses = st.leaf_misses;
        g.leaf_refused = st.leaf_refused;
        av__metrics_prometheus(env->metrics, &g, &b);
    }
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
        /* Draining (av_ctx_set_health, shutdown): 503, so that a load
         * balancer's check takes this replica out while it still serves. */
        if (c->env->unhealthy && atomic_load(c->env->unhealthy))
            av__conn_respond_body(c, 503, "text/plain; charset=utf-8", "draining\n", 9, head);
        else
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
