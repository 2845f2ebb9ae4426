/* test_cmd.c - the process runner (av_cmd.c), run without a loop: input
 * on stdin (up to AV_CMD_IN_MAX, the pipe enlarged past 60 KiB), the
 * output bound, the timeout, exit statuses, signals, no shell, bad
 * command lines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_cmd.h"

static int run(const char *cmdline, const void *in, size_t in_len, size_t out_max, double timeout, int *status,
               char *out, size_t out_cap)
{
    av_cmd *c = NULL;
    char why[200];
    int rc = av__cmd_start(NULL, cmdline, in, in_len, timeout, out_max, NULL, NULL, &c, why, sizeof(why));
    if (rc != AV_OK)
        return 100 + rc; /* distinguishable from AV_CMD_* */
    int how = av__cmd_wait(c, status);
    size_t n;
    const uint8_t *o = av__cmd_output(c, &n);
    if (n >= out_cap)
        n = out_cap - 1;
    memcpy(out, o, n);
    out[n] = '\0';
    av__cmd_free(c);
    return how;
}

static void stdin_to_stdout(void **state)
{
    (void)state;
    int st;
    char out[256];
    assert_int_equal(run("/bin/cat", "hello\n", 6, 4096, 5, &st, out, sizeof(out)), AV_CMD_EXITED);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_string_equal(out, "hello\n");
    /* no input: /dev/null */
    assert_int_equal(run("/bin/cat", NULL, 0, 4096, 5, &st, out, sizeof(out)), AV_CMD_EXITED);
    assert_string_equal(out, "");
    /* arguments without a shell */
    assert_int_equal(run("/bin/echo 'two words' $HOME ;x", NULL, 0, 4096, 5, &st, out, sizeof(out)), AV_CMD_EXITED);
    assert_string_equal(out, "two words $HOME ;x\n");
}

static void big_input(void **state)
{
    (void)state;
    size_t n = AV_CMD_IN_MAX;
    char *in = malloc(n);
    assert_non_null(in);
    memset(in, 'a', n);
    int st;
    char out[64];
    /* wc -c counts what arrived */
    assert_int_equal(run("/usr/bin/wc -c", in, n, 4096, 5, &st, out, sizeof(out)), AV_CMD_EXITED);
    assert_int_equal(atol(out), (long)n);
    assert_int_equal(run("/bin/cat", in, n + 1, 4096, 5, &st, out, sizeof(out)), 100 + AV_ERR_INVALID);
    free(in);
}

static void bounds_and_failures(void **state)
{
    (void)state;
    int st;
    char out[256];
    assert_int_equal(run("/bin/echo 0123456789", NULL, 0, 4, 5, &st, out, sizeof(out)), AV_CMD_TOO_BIG);
    assert_int_equal(run("/bin/sleep 5", NULL, 0, 64, 0.2, &st, out, sizeof(out)), AV_CMD_TIMEOUT);
    assert_int_equal(run("/bin/sh -c 'exit 7'", NULL, 0, 64, 5, &st, out, sizeof(out)), AV_CMD_EXITED);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 7);
    assert_int_equal(run("/bin/sh -c 'kill -SEGV $$'", NULL, 0, 64, 5, &st, out, sizeof(out)), AV_CMD_EXITED);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == 11);
    assert_int_equal(run("relative", NULL, 0, 64, 5, &st, out, sizeof(out)), 100 + AV_ERR_INVALID);
    assert_int_equal(run("/bin/echo 'unbalanced", NULL, 0, 64, 5, &st, out, sizeof(out)), 100 + AV_ERR_INVALID);
    assert_int_equal(run("/nonexistent/prog", NULL, 0, 64, 5, &st, out, sizeof(out)), 100 + AV_ERR_IO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stdin_to_stdout),
        cmocka_unit_test(big_input),
        cmocka_unit_test(bounds_and_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
