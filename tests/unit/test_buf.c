/* test_buf.c - bounded buffers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_buf.h"

static void append_within_max(void **state)
{
    (void)state;
    av_buf b;
    av__buf_init(&b, 16);
    assert_int_equal(av__buf_append(&b, "0123456789", 10), AV_OK);
    assert_int_equal(av__buf_len(&b), 10);
    assert_int_equal(av__buf_room(&b), 6);
    /* does not fit: nothing appended */
    assert_int_equal(av__buf_append(&b, "abcdefg", 7), AV_ERR_LIMIT);
    assert_int_equal(av__buf_len(&b), 10);
    assert_int_equal(av__buf_append(&b, "abcdef", 6), AV_OK);
    assert_memory_equal(av__buf_head(&b), "0123456789abcdef", 16);
    av__buf_free(&b);
}

static void consume_then_compact(void **state)
{
    (void)state;
    av_buf b;
    av__buf_init(&b, 8);
    assert_int_equal(av__buf_append(&b, "abcdefgh", 8), AV_OK);
    av__buf_consume(&b, 5);
    assert_int_equal(av__buf_len(&b), 3);
    assert_int_equal(av__buf_append(&b, "12345", 5), AV_OK);
    assert_memory_equal(av__buf_head(&b), "fgh12345", 8);
    av__buf_consume(&b, 100);
    assert_int_equal(av__buf_len(&b), 0);
    av__buf_free(&b);
}

static void tail_commit(void **state)
{
    (void)state;
    av_buf b;
    av__buf_init(&b, 100000);
    size_t n = 0;
    int err = 0;
    uint8_t *p = av__buf_tail(&b, &n, &err);
    assert_non_null(p);
    assert_true(n >= 4096 && n <= 100000);
    memset(p, 'x', 10);
    av__buf_commit(&b, 10);
    assert_int_equal(av__buf_len(&b), 10);
    av__buf_free(&b);

    av__buf_init(&b, 4);
    assert_int_equal(av__buf_append(&b, "abcd", 4), AV_OK);
    p = av__buf_tail(&b, &n, &err);
    assert_null(p);
    assert_int_equal(err, AV_ERR_LIMIT);
    av__buf_free(&b);
}

static void appendf_long(void **state)
{
    (void)state;
    av_buf b;
    av__buf_init(&b, 4096);
    char big[1000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    assert_int_equal(av__buf_appendf(&b, "<%s>%d", big, 42), AV_OK);
    assert_int_equal(av__buf_len(&b), 1 + 999 + 1 + 2);
    assert_int_equal(av__buf_appendf(&b, "%s%s%s%s", big, big, big, big), AV_ERR_LIMIT);
    av__buf_free(&b);
}

static int fail_after;
static void *counting_malloc(size_t n, void *ud)
{
    (void)ud;
    if (fail_after-- <= 0)
        return NULL;
    return malloc(n);
}
static void *counting_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    if (fail_after-- <= 0)
        return NULL;
    return realloc(p, n);
}
static void plain_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static void allocation_failure_reported(void **state)
{
    (void)state;
    assert_int_equal(av_set_allocator(counting_malloc, NULL, NULL, NULL), AV_ERR_INVALID);
    assert_int_equal(av_set_allocator(counting_malloc, counting_realloc, plain_free, NULL), AV_OK);
    fail_after = 0;
    av_buf b;
    av__buf_init(&b, 1024);
    assert_int_equal(av__buf_append(&b, "x", 1), AV_ERR_NOMEM);
    assert_int_equal(av__buf_len(&b), 0);
    fail_after = 1;
    assert_int_equal(av__buf_append(&b, "x", 1), AV_OK);
    av__buf_free(&b);
    assert_int_equal(av_set_allocator(NULL, NULL, NULL, NULL), AV_OK);
}

static void strerror_never_null(void **state)
{
    (void)state;
    for (int e = -40; e <= 1; e++)
        assert_non_null(av_strerror(e));
    assert_string_equal(av_strerror(AV_ERR_LIMIT), "limit exceeded");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(append_within_max),
        cmocka_unit_test(consume_then_compact),
        cmocka_unit_test(tail_commit),
        cmocka_unit_test(appendf_long),
        cmocka_unit_test(allocation_failure_reported),
        cmocka_unit_test(strerror_never_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
