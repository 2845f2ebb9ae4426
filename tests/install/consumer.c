/* consumer.c - an external program built against an *installed*
 * libagentvault (headers, agentvault.pc, libagentvault.so) by
 * tests/install/run_tests.sh. It uses only the public API:
 *
 *   consumer STATE_DIR
 *
 * builds a configuration with av_config_add_section, starts a context on
 * its own thread, opens a gateway and sends it one request. The upstream
 * is pinned (av_config_add_resolve) to a local port that refuses
 * connections, so nothing leaves 127.0.0.1 and the gateway must answer
 * 502 with an X-Agentvault-Error header. Prints "consumer: OK" and exits 0
 * when every step worked.
 */
#include <agentvault/agentvault.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static int fail(const char *what, const char *detail)
{
    fprintf(stderr, "consumer: FAIL: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

/* A loopback port that refuses connections: bound, never listening. */
static int refusing_port(int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t al = sizeof(a);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) < 0)
        return -1;
    *fd_out = fd;
    return ntohs(a.sin_port);
}

/* One HTTP/1.1 request to the gateway at |url| ("http://127.0.0.1:PORT");
 * the response head goes to |resp|. */
static int gateway_request(const char *url, char *resp, size_t resp_len)
{
    int port = 0;
    if (sscanf(url, "http://127.0.0.1:%d", &port) != 1 || port <= 0 || port > 65535)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    static const char req[] = "GET /v1/models HTTP/1.1\r\nHost: api.example.test\r\n"
                              "Authorization: Bearer dummy\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1)) {
        close(fd);
        return -1;
    }
    size_t off = 0;
    while (off + 1 < resp_len) {
        ssize_t r = read(fd, resp + off, resp_len - 1 - off);
        if (r <= 0)
            break;
        off += (size_t)r;
    }
    resp[off] = '\0';
    close(fd);
    return off > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return fail("usage", "consumer STATE_DIR");
    const char *backend = NULL;
    const char *tls = av_tls_library(&backend);
    printf("consumer: libagentvault %s, TLS %s (%s)\n", av_version_string(), backend ? backend : "(null)",
           tls ? tls : "(null)");
    if (!tls || !backend || (strcmp(backend, "boringssl") != 0 && strcmp(backend, "openssl") != 0))
        return fail("av_tls_library", "no backend");
    if (strcmp(av_strerror(AV_ERR_CONFIG), "") == 0)
        return fail("av_strerror", "empty");

    setenv("AV_CONSUMER_KEY", "sk-consumer-test", 1);
    int refuse_fd = -1;
    int refuse_port = refusing_port(&refuse_fd);
    if (refuse_port < 0)
        return fail("socket", "cannot bind a loopback port");

    av_config *cfg = NULL;
    if (av_config_new(&cfg) != AV_OK)
        return fail("av_config_new", NULL);
    const char *const svc[] = {"host", "api.example.test", "auth", "bearer", "secret", "env:AV_CONSUMER_KEY",
                               NULL};
    if (av_config_add_section(cfg, "service", "example", svc) != AV_OK)
        return fail("av_config_add_section", av_config_error(cfg));
    const char *const bad[] = {"host", "api.example.test", "colour", "blue", NULL};
    if (av_config_add_section(cfg, "service", "bad", bad) == AV_OK)
        return fail("av_config_add_section", "accepted an unknown key");
    char resolve[96];
    snprintf(resolve, sizeof(resolve), "api.example.test:443:127.0.0.1:%d", refuse_port);
    if (av_config_add_resolve(cfg, resolve) != AV_OK)
        return fail("av_config_add_resolve", av_config_error(cfg));
    if (av_config_set_state_dir(cfg, argv[1]) != AV_OK)
        return fail("av_config_set_state_dir", av_config_error(cfg));
    if (av_config_validate(cfg) != AV_OK)
        return fail("av_config_validate", av_config_error(cfg));
    if (av_config_service_count(cfg) != 1)
        return fail("av_config_service_count", "expected 1");

    av_ctx *ctx = NULL;
    char err[256] = "";
    if (av_ctx_new(&ctx, cfg, err, sizeof(err)) != AV_OK)
        return fail("av_ctx_new", err);
    av_config_free(cfg);
    if (av_ctx_start(ctx) != AV_OK)
        return fail("av_ctx_start", NULL);

    char url[32];
    int rc = av_gateway_open(ctx, "https://api.example.test", url, sizeof(url));
    if (rc != AV_OK)
        return fail("av_gateway_open", av_strerror(rc));
    if (strncmp(url, "http://127.0.0.1:", 17) != 0)
        return fail("av_gateway_open", url);
    if (av_gateway_open(ctx, "ftp://x", url + 0, sizeof(url)) != AV_ERR_INVALID)
        return fail("av_gateway_open", "accepted ftp://");
    rc = av_gateway_open(ctx, "https://api.example.test", url, sizeof(url));
    if (rc != AV_OK)
        return fail("av_gateway_open (again)", av_strerror(rc));
    printf("consumer: gateway %s\n", url);

    char resp[4096];
    if (gateway_request(url, resp, sizeof(resp)) != 0)
        return fail("gateway request", "no response");
    char *eol = strstr(resp, "\r\n");
    printf("consumer: gateway answered: %.*s\n", eol ? (int)(eol - resp) : 60, resp);
    if (strncmp(resp, "HTTP/1.1 502", 12) != 0)
        return fail("gateway request", "expected 502 (upstream refused)");
    if (!strstr(resp, "X-Agentvault-Error") && !strstr(resp, "x-agentvault-error"))
        return fail("gateway request", "no X-Agentvault-Error header");
    if (strstr(resp, "sk-consumer-test"))
        return fail("gateway request", "the secret appeared in the response");

    if (av_ctx_stop(ctx, 1.0) != AV_OK)
        return fail("av_ctx_stop", NULL);
    av_ctx_free(ctx);
    close(refuse_fd);

    char ca[4096];
    struct stat st;
    snprintf(ca, sizeof(ca), "%s/ca.pem", argv[1]);
    if (stat(ca, &st) != 0)
        return fail("state dir", "no ca.pem");
    puts("consumer: OK");
    return 0;
}
