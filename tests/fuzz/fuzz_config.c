/* fuzz_config.c - libFuzzer target: the config reader on arbitrary bytes,
 * then validation, deep copy (its dump equals the original's) and matching
 * of every parsed service. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"
#include "av_config.h"
#include "av_policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* check aborts when an invariant fails. */
static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "invariant failed: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    av_config *c = NULL;
    if (av_config_new(&c) != 0)
        return 0;
    int rc = av_config_load_string(c, (const char *)data, size, "fuzz");
    check(rc == 0 || rc == AV_ERR_CONFIG || rc == AV_ERR_NOMEM, "load rc");
    if (rc != 0) {
        check(strncmp(av_config_error(c), "fuzz:", 5) == 0, "error names origin");
        check(c->nservices == 0 && c->ntokens == 0 && c->nlisten == 0, "failed load is atomic");
    } else {
        check(av_config_error(c)[0] == '\0', "no error on success");
        /* a loaded file validates, but for a token's services, which may
         * name services a later load adds, and for half of the pair
         * ca_cert/ca_key, whose other half a later load may add */
        int v = av_config_validate(c);
        check(v == 0 || (v == AV_ERR_CONFIG && (strstr(av_config_error(c), "names unknown service") ||
                                               strstr(av_config_error(c), "[proxy] ca_cert is set but") ||
                                               strstr(av_config_error(c), "[proxy] ca_key is set but"))),
              "a loaded file validates");
    }
    av_config *d = av__config_copy(c);
    if (d) {
        check(d->nservices == c->nservices && d->ntokens == c->ntokens &&
              d->nlisten == c->nlisten && d->nresolve == c->nresolve, "copy counts");
        av_buf a, b;
        av__buf_init(&a, 8u << 20);
        av__buf_init(&b, 8u << 20);
        int ra = av__config_dump(c, &a), rb = av__config_dump(d, &b);
        check(ra == rb, "dump rc");
        if (ra == 0)
            check(a.len == b.len && memcmp(av__buf_head(&a), av__buf_head(&b), a.len) == 0, "copy dumps equal");
        av__buf_free(&a);
        av__buf_free(&b);
        for (size_t i = 0; i < d->nservices; i++) {
            const av_service *s = &d->services[i];
            check(strcmp(s->host, c->services[i].host) == 0, "copy host");
            check(s->port >= 1 && s->port <= 65535, "service port");
            /* an unrestricted exact service is found for its own host */
            if (!s->wildcard && !s->path_glob && !s->methods) {
                const av_service *m = av__policy_match(d, s->scheme_http, s->host, s->port,
                                                       "GET", 3, "/", 1);
                check(m != NULL, "service matches its own host");
            }
        }
        av_config_free(d);
    }
    av_config_free(c);
    return 0;
}
