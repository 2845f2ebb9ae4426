/* minimal_proxy.c - a credential-injecting forward proxy on the public API.
 *
 *   minimal_proxy [-c FILE] [-l ADDR:PORT] [-s STATE_DIR]
 *
 * Without -c it injects $OPENAI_API_KEY into https://api.openai.com
 * requests on 127.0.0.1:14322. Agents set HTTPS_PROXY=http://ADDR:PORT and
 * trust STATE_DIR/ca.pem (default ./agentvault-state). SIGINT or SIGTERM
 * stops it; exchanges in flight get 10 s. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <agentvault/agentvault.h>

static av_ctx *volatile g_ctx;

static void on_signal(int sig)
{
    (void)sig;
    av_ctx_shutdown(g_ctx, 10.0); /* async-signal-safe; NULL is a no-op */
}

static void on_log(void *user_data, int level, const char *message)
{
    (void)user_data;
    (void)level;
    fprintf(stderr, "minimal_proxy: %s\n", message);
}

static int usage(const char *why, const char *arg)
{
    fprintf(stderr, "minimal_proxy: %s%s (usage: minimal_proxy [-c FILE] [-l ADDR:PORT] [-s STATE_DIR])\n",
            why, arg);
    return 2;
}

int main(int argc, char **argv)
{
    const char *file = NULL, *listen = NULL, *state = NULL;
    for (int i = 1; i < argc; i += 2) {
        const char **opt = !strcmp(argv[i], "-c") ? &file : !strcmp(argv[i], "-l") ? &listen
                         : !strcmp(argv[i], "-s") ? &state : NULL;
        if (!opt)
            return usage("unknown argument ", argv[i]);
        if (i + 1 >= argc || !argv[i + 1][0])
            return usage("missing value after ", argv[i]);
        *opt = argv[i + 1];
    }
    av_config *cfg = NULL;
    if (av_config_new(&cfg) != AV_OK)
        return 1;
    const char *proxy[] = {"listen", "127.0.0.1:14322", NULL};
    const char *openai[] = {"host", "api.openai.com", "auth", "bearer", "secret", "env:OPENAI_API_KEY", NULL};
    int rc = file ? av_config_load_file(cfg, file) : av_config_add_section(cfg, "proxy", NULL, proxy);
    if (rc == AV_OK && !file)
        rc = av_config_add_section(cfg, "service", "openai", openai);
    if (rc == AV_OK && listen && (rc = av_config_clear_listen(cfg)) == AV_OK)
        rc = av_config_add_listen(cfg, listen);
    if (rc == AV_OK && (state || !av_config_state_dir(cfg)))
        rc = av_config_set_state_dir(cfg, state ? state : "agentvault-state");
    if (rc == AV_OK)
        rc = av_config_validate(cfg);
    char err[512];
    snprintf(err, sizeof(err), "%s", rc ? av_config_error(cfg) : "no listen address: give -l ADDR:PORT");
    av_ctx *ctx = NULL;
    if (rc == AV_OK && av_config_listen_count(cfg) > 0)
        rc = av_ctx_new(&ctx, cfg, err, sizeof(err));
    if (!ctx) {
        fprintf(stderr, "minimal_proxy: %s\n", err[0] ? err : av_strerror(rc));
        av_config_free(cfg);
        return 1;
    }
    av_ctx_set_log(ctx, on_log, NULL, AV_LOG_INFO);
    g_ctx = ctx;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    const char *spec = av_config_listen_get(cfg, 0);
    printf("minimal_proxy: listening on %.*s:%d (CA: %s/ca.pem)\n", (int)(strrchr(spec, ':') - spec), spec,
           av_ctx_listen_port(ctx, 0), av_config_state_dir(cfg));
    fflush(stdout);
    av_config_free(cfg);
    rc = av_ctx_run(ctx);
    g_ctx = NULL; /* a late signal must not reach a freed context */
    av_ctx_free(ctx);
    return rc == AV_OK ? 0 : 1;
}
