/* fuzz_decide.c - libFuzzer target for the decision program's answer line
 * (av__decide_parse_line), checking invariants: an accepted answer has a
 * reason of printable ASCII within the bound; a refused one never allows
 * and always says why; the result does not depend on bytes past |size|. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <agentvault/agentvault.h>

#include "av_decide.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "invariant failed: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly |size| bytes: reads past it are caught by ASan */
    char *p = malloc(size ? size : 1);
    if (!p)
        return 0;
    memcpy(p, data, size);
    av_decide_answer a;
    const char *why = NULL;
    int rc = av__decide_parse_line(p, size, &a, &why);
    check(why != NULL, "a reason pointer");
    if (rc == AV_OK) {
        check(a.allow == 0 || a.allow == 1, "allow is a boolean");
        size_t n = strnlen(a.reason, sizeof(a.reason));
        check(n <= AV_DECIDE_REASON_MAX, "reason bound");
        for (size_t i = 0; i < n; i++)
            check(a.reason[i] >= 0x20 && a.reason[i] < 0x7f, "reason is printable ASCII");
        check(size <= AV_DECIDE_LINE_MAX, "line bound");
        check(memchr(p, '{', size) != NULL, "an object");
    } else {
        check(rc == AV_ERR_PARSE, "only AV_ERR_PARSE");
        check(a.allow == 0, "a refused answer never allows");
        check(why[0] != '\0', "a refusal says why");
    }
    free(p);
    return 0;
}
