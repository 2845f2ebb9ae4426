/* test_resolver.c - env: and file: secret sources. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_resolver.h"

#define SECRET "sk-test-0123456789-SECRET"

static char dir[] = "/tmp/av_test_resolver_XXXXXX";

/* setup creates a scratch directory. */
static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

/* teardown removes the scratch directory and its files. */
static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* write_file creates dir/name with |len| bytes and returns "file:<path>". */
static const char *write_file(const char *name, const void *data, size_t len)
{
    static char ref[256];
    char path[200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    snprintf(ref, sizeof(ref), "file:%s", path);
    return ref;
}

/* get resolves |ref| and checks the reason never carries SECRET. */
static int get(av_resolver *r, const char *ref, av_secret **out, char *why, size_t why_len)
{
    memset(why, 'Z', why_len);
    why[why_len - 1] = '\0';
    int rc = av__resolver_get(r, ref, out, why, why_len);
    assert_null(strstr(why, SECRET));
    assert_null(strstr(why, "sk-test"));
    if (rc == 0)
        assert_string_equal(why, "");
    return rc;
}

/* expect_bytes checks a resolved secret byte for byte. */
static void expect_bytes(av_secret *s, const char *want)
{
    assert_non_null(s);
    assert_int_equal(av__secret_len(s), strlen(want));
    assert_memory_equal(av__secret_data(s), want, strlen(want));
}

/* env_source: set, unset, empty, cached. */
static void env_source(void **state)
{
    (void)state;
    av_resolver *r;
    av_secret *s = NULL, *s2 = NULL;
    char why[256];
    assert_int_equal(av__resolver_new(&r), 0);

    setenv("AV_TEST_KEY", SECRET, 1);
    assert_int_equal(get(r, "env:AV_TEST_KEY", &s, why, sizeof(why)), 0);
    expect_bytes(s, SECRET);
    /* read once: a later change of the environment is not seen */
    setenv("AV_TEST_KEY", "changed", 1);
    assert_int_equal(get(r, "env:AV_TEST_KEY", &s2, why, sizeof(why)), 0);
    assert_ptr_equal(s, s2);
    expect_bytes(s2, SECRET);
    av__secret_free(s2);
    av__secret_free(s);

    unsetenv("AV_TEST_UNSET");
    assert_int_equal(get(r, "env:AV_TEST_UNSET", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_string_equal(why, "environment variable AV_TEST_UNSET is not set");
    assert_null(s);

    setenv("AV_TEST_EMPTY", "", 1);
    assert_int_equal(get(r, "env:AV_TEST_EMPTY", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_string_equal(why, "environment variable AV_TEST_EMPTY is empty");
    /* failures are not cached */
    setenv("AV_TEST_EMPTY", SECRET "2", 1);
    assert_int_equal(get(r, "env:AV_TEST_EMPTY", &s, why, sizeof(why)), 0);
    expect_bytes(s, SECRET "2");
    av__secret_free(s);

    assert_int_equal(get(r, "vault:x", &s, why, sizeof(why)), AV_ERR_INVALID);
    assert_int_equal(get(r, "env:1X", &s, why, sizeof(why)), AV_ERR_INVALID);
    assert_int_equal(get(r, "env:", &s, why, sizeof(why)), AV_ERR_INVALID);
    /* a NULL reason buffer is fine */
    assert_int_equal(av__resolver_get(r, "env:AV_TEST_UNSET", &s, NULL, 0), AV_ERR_SECRET);
    av__resolver_free(r);
    av__resolver_free(NULL);
}

/* file_source: contents, newline handling, errors. */
static void file_source(void **state)
{
    (void)state;
    av_resolver *r;
    av_secret *s = NULL;
    char why[512], want[512];
    assert_int_equal(av__resolver_new(&r), 0);

    const char *ref = write_file("plain", SECRET, strlen(SECRET));
    assert_int_equal(get(r, ref, &s, why, sizeof(why)), 0);
    expect_bytes(s, SECRET);
    av__secret_free(s);

    ref = write_file("nl", SECRET "\n", strlen(SECRET) + 1);
    assert_int_equal(get(r, ref, &s, why, sizeof(why)), 0);
    expect_bytes(s, SECRET);
    av__secret_free(s);

    ref = write_file("crlf", SECRET "\r\n", strlen(SECRET) + 2);
    assert_int_equal(get(r, ref, &s, why, sizeof(why)), 0);
    expect_bytes(s, SECRET);
    av__secret_free(s);

    ref = write_file("two", SECRET "\n\n", strlen(SECRET) + 2);
    assert_int_equal(get(r, ref, &s, why, sizeof(why)), 0);
    expect_bytes(s, SECRET "\n");
    av__secret_free(s);

    ref = write_file("empty", "", 0);
    assert_int_equal(get(r, ref, &s, why, sizeof(why)), AV_ERR_SECRET);
    snprintf(want, sizeof(want), "secret file %s/empty is empty", dir);
    assert_string_equal(why, want);

    ref = write_file("justnl", "\n", 1);
    assert_int_equal(get(r, ref, &s, why, sizeof(why)), AV_ERR_SECRET);
    snprintf(want, sizeof(want), "secret file %s/justnl is empty", dir);
    assert_string_equal(why, want);

    snprintf(want, sizeof(want), "file:%s/missing", dir);
    assert_int_equal(get(r, want, &s, why, sizeof(why)), AV_ERR_SECRET);
    snprintf(want, sizeof(want), "cannot read %s/missing: No such file or directory", dir);
    assert_string_equal(why, want);

    /* exactly 64 KiB is accepted, one byte more is refused */
    static char big[64 * 1024 + 1];
    memset(big, 'k', sizeof(big));
    memcpy(big, SECRET, strlen(SECRET));
    ref = write_file("max", big, 64 * 1024);
    assert_int_equal(get(r, ref, &s, why, sizeof(why)), 0);
    assert_int_equal(av__secret_len(s), 64 * 1024);
    av__secret_free(s);
    ref = write_file("big", big, sizeof(big));
    assert_int_equal(get(r, ref, &s, why, sizeof(why)), AV_ERR_SECRET);
    snprintf(want, sizeof(want), "%s/big is larger than 64 KiB", dir);
    assert_string_equal(why, want);

    /* not a regular file */
    snprintf(want, sizeof(want), "file:%s", dir);
    assert_int_equal(get(r, want, &s, why, sizeof(why)), AV_ERR_SECRET);
    snprintf(want, sizeof(want), "cannot read %s: not a regular file", dir);
    assert_string_equal(why, want);

    /* unreadable: permissions (when not root), and a file whose read fails */
    ref = write_file("noperm", SECRET, strlen(SECRET));
    char path[300];
    snprintf(path, sizeof(path), "%s/noperm", dir);
    assert_int_equal(chmod(path, 0), 0);
    if (geteuid() != 0) {
        assert_int_equal(get(r, ref, &s, why, sizeof(why)), AV_ERR_SECRET);
        snprintf(want, sizeof(want), "cannot read %s: Permission denied", path);
        assert_string_equal(why, want);
    }
    assert_int_equal(get(r, "file:/proc/self/mem", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_string_equal(why, "cannot read /proc/self/mem: Input/output error");

    assert_int_equal(get(r, "file:relative", &s, why, sizeof(why)), AV_ERR_INVALID);
    av__resolver_free(r);
}

/* ref_syntax: av__secret_ref_valid. */
static void ref_syntax(void **state)
{
    (void)state;
    assert_int_equal(av__secret_ref_valid("env:A"), 1);
    assert_int_equal(av__secret_ref_valid("env:_a_1"), 1);
    assert_int_equal(av__secret_ref_valid("env:OPENAI_API_KEY"), 1);
    assert_int_equal(av__secret_ref_valid("file:/run/secrets/x"), 1);
    assert_int_equal(av__secret_ref_valid("file:/a b"), 1);
    assert_int_equal(av__secret_ref_valid("env:"), 0);
    assert_int_equal(av__secret_ref_valid("env:1A"), 0);
    assert_int_equal(av__secret_ref_valid("env:A-B"), 0);
    assert_int_equal(av__secret_ref_valid("env:A B"), 0);
    assert_int_equal(av__secret_ref_valid("ENV:A"), 0);
    assert_int_equal(av__secret_ref_valid("file:"), 0);
    assert_int_equal(av__secret_ref_valid("file:/"), 0);
    assert_int_equal(av__secret_ref_valid("file:x"), 0);
    assert_int_equal(av__secret_ref_valid("file:/a\nb"), 0);
    assert_int_equal(av__secret_ref_valid("vault:x"), 0);
    assert_int_equal(av__secret_ref_valid(""), 0);
    assert_int_equal(av__secret_ref_valid(NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(env_source),
        cmocka_unit_test(file_source),
        cmocka_unit_test(ref_syntax),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
