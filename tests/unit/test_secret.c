/* test_secret.c - the secret type. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "av_secret.h"

static void copy_and_compare(void **state)
{
    (void)state;
    char src[] = "sk-real-key";
    av_secret *s = av__secret_new(src, strlen(src));
    assert_non_null(s);
    memset(src, 0, sizeof(src)); /* the secret owns its copy */
    assert_int_equal(av__secret_len(s), 11);
    assert_memory_equal(av__secret_data(s), "sk-real-key", 11);
    assert_true(av__secret_equal(s, "sk-real-key", 11));
    assert_false(av__secret_equal(s, "sk-real-kez", 11));
    assert_false(av__secret_equal(s, "sk-real-ke", 10));
    av_secret *r = av__secret_ref(s);
    assert_ptr_equal(r, s);
    av__secret_free(s);
    assert_memory_equal(av__secret_data(r), "sk-real-key", 11);
    av__secret_free(r);
    av__secret_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(copy_and_compare),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
