/* test_resolver.c - env:, file:, vault: and command: secret sources. */
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

#include "av_ev.h"
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

    assert_int_equal(get(r, "vault:x", &s, why, sizeof(why)), AV_ERR_SECRET); /* valid, no vault */
    assert_int_equal(get(r, "vault:a/b", &s, why, sizeof(why)), AV_ERR_INVALID);
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
    assert_int_equal(av__secret_ref_valid("vault:x"), 1);
    assert_int_equal(av__secret_ref_valid("vault:openai.key-2"), 1);
    assert_int_equal(av__secret_ref_valid("vault:"), 0);
    assert_int_equal(av__secret_ref_valid("vault:a/b"), 0);
    assert_int_equal(av__secret_ref_valid("command:/usr/bin/pass show x"), 1);
    assert_int_equal(av__secret_ref_valid("command:/bin/sh -c 'echo x'"), 1);
    assert_int_equal(av__secret_ref_valid("command:pass show x"), 0);  /* no PATH search */
    assert_int_equal(av__secret_ref_valid("command:"), 0);
    assert_int_equal(av__secret_ref_valid("callback:openai"), 1);
    assert_int_equal(av__secret_ref_valid("callback:"), 0);
    assert_int_equal(av__secret_ref_valid("command:/bin/echo 'unbalanced"), 0);
    assert_int_equal(av__secret_ref_valid("command:/bin/echo a\nb"), 0);
    assert_int_equal(av__secret_ref_valid("command:/bin/echo a\x01"), 0);
    assert_int_equal(av__secret_ref_valid(""), 0);
    assert_int_equal(av__secret_ref_valid(NULL), 0);
}

/* command_sync: output, trailing newline, quoting, failures with reasons
 * that never carry the output, timeouts, oversized output, TTL 0. */
static void command_sync(void **state)
{
    (void)state;
    av_resolver *r;
    av_secret *s = NULL;
    char why[200];
    assert_int_equal(av__resolver_new(&r), AV_OK);
    assert_int_equal(get(r, "command:/bin/echo " SECRET, &s, why, sizeof(why)), AV_OK);
    expect_bytes(s, SECRET);
    av__secret_free(s);
    assert_int_equal(get(r, "command:/bin/sh -c 'printf \"a b\"'", &s, why, sizeof(why)), AV_OK);
    expect_bytes(s, "a b");
    av__secret_free(s);
    assert_int_equal(get(r, "command:/bin/sh -c 'echo " SECRET "; exit 3'", &s, why, sizeof(why)),
                     AV_ERR_SECRET);
    assert_non_null(strstr(why, "exited with status 3"));
    assert_int_equal(get(r, "command:/bin/true", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_non_null(strstr(why, "printed nothing"));
    assert_int_equal(get(r, "command:/nonexistent/x", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_non_null(strstr(why, "/nonexistent/x"));
    assert_int_equal(get(r, "command:/bin/sh -c 'head -c 70000 /dev/zero | tr \"\\\\0\" x'", &s, why, sizeof(why)),
                     AV_ERR_SECRET);
    assert_non_null(strstr(why, "64 KiB"));
    av__resolver_free(r);

    assert_int_equal(av__resolver_new(&r), AV_OK);
    av__resolver_set_loop(r, NULL, 0, 0.3);
    assert_int_equal(get(r, "command:/bin/sleep 5", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_non_null(strstr(why, "did not finish"));
    /* TTL 0: every ask runs the command again (a counter file shows it). */
    char ref[300], cnt[200];
    snprintf(cnt, sizeof(cnt), "%s/count", dir);
    snprintf(ref, sizeof(ref), "command:/bin/sh -c 'echo x >> %s; echo v'", cnt);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(get(r, ref, &s, why, sizeof(why)), AV_OK);
        av__secret_free(s);
    }
    struct stat st;
    assert_int_equal(stat(cnt, &st), 0);
    assert_int_equal(st.st_size, 6);
    av__resolver_free(r);
}

typedef struct async_state {
    int calls;
    av_loop *loop;
} async_state;

static void on_done(void *ud)
{
    async_state *a = ud;
    a->calls++;
    av__loop_break(a->loop);
}

static void on_deadline(void *ud)
{
    av__loop_break(ud);
}

/* command_async: AV_ERR_AGAIN, one run for many askers, cached answer,
 * cancellation, failure remembered. */
static void command_async(void **state)
{
    (void)state;
    av_loop *loop = av__loop_new();
    assert_non_null(loop);
    av_timer *deadline = av__timer_new(loop, on_deadline, loop);
    av_resolver *r;
    assert_int_equal(av__resolver_new(&r), AV_OK);
    av__resolver_set_loop(r, loop, 60, 5);
    async_state a = {0, loop}, b = {0, loop}, c = {0, loop};
    av_secret *s = NULL;
    av_resolver_wait *wa = NULL, *wb = NULL, *wc = NULL;
    char why[200], cnt[200], ref[300];
    snprintf(cnt, sizeof(cnt), "%s/acount", dir);
    snprintf(ref, sizeof(ref), "command:/bin/sh -c 'echo x >> %s; sleep 0.2; echo " SECRET "'", cnt);
    assert_int_equal(av__resolver_get_async(r, ref, &s, why, sizeof(why), on_done, &a, &wa), AV_ERR_AGAIN);
    assert_non_null(wa);
    assert_int_equal(av__resolver_get_async(r, ref, &s, why, sizeof(why), on_done, &b, &wb), AV_ERR_AGAIN);
    assert_int_equal(av__resolver_get_async(r, ref, &s, why, sizeof(why), on_done, &c, &wc), AV_ERR_AGAIN);
    av__resolver_cancel(wc);
    av__timer_start(deadline, 5);
    while (a.calls + b.calls < 2 && av__timer_active(deadline))
        av__loop_run(loop);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(c.calls, 0);
    assert_int_equal(av__resolver_get_async(r, ref, &s, why, sizeof(why), on_done, &a, &wa), AV_OK);
    expect_bytes(s, SECRET);
    av__secret_free(s);
    struct stat st;
    assert_int_equal(stat(cnt, &st), 0);
    assert_int_equal(st.st_size, 2); /* one run for three askers */

    /* A failing command: the failure is the answer for a moment. */
    a.calls = 0;
    assert_int_equal(av__resolver_get_async(r, "command:/bin/false", &s, why, sizeof(why), on_done, &a, &wa),
                     AV_ERR_AGAIN);
    av__timer_start(deadline, 5);
    while (a.calls < 1 && av__timer_active(deadline))
        av__loop_run(loop);
    assert_int_equal(a.calls, 1);
    assert_int_equal(av__resolver_get_async(r, "command:/bin/false", &s, why, sizeof(why), on_done, &a, &wa),
                     AV_ERR_SECRET);
    assert_non_null(strstr(why, "exited with status 1"));
    /* Freeing with a run in flight kills it and frees the waiter. */
    assert_int_equal(av__resolver_get_async(r, "command:/bin/sleep 10", &s, why, sizeof(why), on_done, &a, &wa),
                     AV_ERR_AGAIN);
    av__resolver_free(r);
    av__timer_free(deadline);
    av__loop_free(loop);
}

/* The embedder's callback: answers "now" at once, "later" when the test
 * says so, fails "bad". */
static av_secret_request *g_later[4];
static int g_calls;

static void secret_cb(void *ud, const char *name, av_secret_request *req)
{
    (void)ud;
    g_calls++;
    if (strcmp(name, "now") == 0)
        av_secret_request_answer(req, SECRET, strlen(SECRET));
    else if (strcmp(name, "bad") == 0)
        av_secret_request_fail(req, "the embedder has no such key");
    else {
        for (int i = 0; i < 4; i++)
            if (!g_later[i]) {
                g_later[i] = req;
                break;
            }
    }
}

/* callback_source: synchronous and later answers, failure, one call for
 * many askers, an answer after the resolver is gone. */
static void callback_source(void **state)
{
    (void)state;
    av_loop *loop = av__loop_new();
    av_timer *deadline = av__timer_new(loop, on_deadline, loop);
    av_resolver *r;
    av_secret *s = NULL;
    char why[200];
    assert_int_equal(av__resolver_new(&r), AV_OK);
    assert_int_equal(get(r, "callback:now", &s, why, sizeof(why)), AV_ERR_SECRET); /* none installed */
    assert_non_null(strstr(why, "no secret callback"));
    av__resolver_set_loop(r, loop, 60, 5);
    av__resolver_set_callback(r, secret_cb, NULL);
    g_calls = 0;
    assert_int_equal(get(r, "callback:now", &s, why, sizeof(why)), AV_OK);
    expect_bytes(s, SECRET);
    av__secret_free(s);
    assert_int_equal(get(r, "callback:now", &s, why, sizeof(why)), AV_OK); /* cached */
    av__secret_free(s);
    assert_int_equal(g_calls, 1);
    assert_int_equal(get(r, "callback:bad", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_non_null(strstr(why, "the embedder has no such key"));
    /* A token (blocking asker) needs an immediate answer. */
    assert_int_equal(get(r, "callback:later", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_non_null(strstr(why, "did not answer at once"));
    /* Exchanges wait for a later answer; two askers, one call. */
    async_state a = {0, loop}, b = {0, loop};
    av_resolver_wait *wa = NULL, *wb = NULL;
    g_calls = 0;
    assert_int_equal(av__resolver_get_async(r, "callback:later", &s, why, sizeof(why), on_done, &a, &wa),
                     AV_ERR_AGAIN);
    assert_int_equal(av__resolver_get_async(r, "callback:later", &s, why, sizeof(why), on_done, &b, &wb),
                     AV_ERR_AGAIN);
    assert_int_equal(g_calls, 0); /* the pending request from the token ask is reused */
    assert_non_null(g_later[0]);
    av_secret_request_answer(g_later[0], "later-value", 11);
    g_later[0] = NULL;
    av__timer_start(deadline, 5);
    while (a.calls + b.calls < 2 && av__timer_active(deadline))
        av__loop_run(loop);
    assert_int_equal(a.calls + b.calls, 2);
    assert_int_equal(av__resolver_get_async(r, "callback:later", &s, why, sizeof(why), on_done, &a, &wa), AV_OK);
    expect_bytes(s, "later-value");
    av__secret_free(s);
    /* Freed with a request outstanding: the late answer is harmless. */
    assert_int_equal(av__resolver_get_async(r, "callback:late2", &s, why, sizeof(why), on_done, &a, &wa),
                     AV_ERR_AGAIN);
    av__resolver_free(r);
    assert_non_null(g_later[0]);
    av_secret_request_answer(g_later[0], "x", 1);
    g_later[0] = NULL;
    av__timer_free(deadline);
    av__loop_free(loop);
}

static int vault_get(void *ud, const char *name, av_secret **out, char *why, size_t why_len)
{
    (void)ud;
    if (strcmp(name, "openai") == 0) {
        *out = av__secret_new(SECRET, strlen(SECRET));
        return *out ? AV_OK : AV_ERR_NOMEM;
    }
    snprintf(why, why_len, "no secret named %s in the vault", name);
    return AV_ERR_SECRET;
}

/* vault_source: through the installed getter; none installed. */
static void vault_source(void **state)
{
    (void)state;
    av_resolver *r;
    av_secret *s = NULL;
    char why[200];
    assert_int_equal(av__resolver_new(&r), AV_OK);
    assert_int_equal(get(r, "vault:openai", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_non_null(strstr(why, "no vault"));
    av__resolver_set_vault(r, vault_get, NULL);
    assert_int_equal(get(r, "vault:openai", &s, why, sizeof(why)), AV_OK);
    expect_bytes(s, SECRET);
    av__secret_free(s);
    assert_int_equal(get(r, "vault:other", &s, why, sizeof(why)), AV_ERR_SECRET);
    assert_non_null(strstr(why, "no secret named other"));
    av__resolver_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(env_source),
        cmocka_unit_test(file_source),
        cmocka_unit_test(ref_syntax),
        cmocka_unit_test(command_sync),
        cmocka_unit_test(command_async),
        cmocka_unit_test(vault_source),
        cmocka_unit_test(callback_source),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
