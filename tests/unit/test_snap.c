/* test_snap.c - configuration snapshots: proxy token lookup, carrying a
 * connection's token over a reload, per-token rate buckets, the scrub-set
 * cache. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_config.h"
#include "av_crypto.h"
#include "av_ev.h"
#include "av_scrub.h"
#include "av_snap.h"

static av_loop *loop;

static int setup(void **state)
{
    (void)state;
    loop = av__loop_new();
    setenv("AV_TS_A", "tok-a", 1);
    setenv("AV_TS_A2", "tok-a-rotated", 1);
    setenv("AV_TS_B", "tok-b", 1);
    return loop ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    av__loop_free(loop);
    return 0;
}

/* snap_from builds a snapshot of a config text at loop time |now| or fails
 * the test. */
static av_snap *snap_from(const char *text, double now)
{
    av_config *c = NULL;
    assert_int_equal(av_config_new(&c), 0);
    if (av_config_load_string(c, text, strlen(text), "s.conf") != 0)
        fail_msg("config: %s", av_config_error(c));
    av_snap *s = NULL;
    char err[256] = "";
    if (av__snap_new(loop, c, now, &s, err, sizeof(err)) != AV_OK)
        fail_msg("snapshot: %s", err);
    return s;
}

/* The index of token |name| in |s|. */
static int tok_index(const av_snap *s, const char *name)
{
    for (size_t i = 0; i < s->cfg->ntokens; i++)
        if (strcmp(s->cfg->tokens[i].name, name) == 0)
            return (int)i;
    fail_msg("no token %s", name);
    return -1;
}

/* make_hashed turns token |name| into a token-store entry: only the
 * SHA-256 of |secret| is known, valid until |expires| (0: never). */
static void make_hashed(av_snap *s, const char *name, const char *secret, long long expires)
{
    av_token_cfg *t = &s->cfg->tokens[tok_index(s, name)];
    t->hashed = 1;
    assert_int_equal(av__crypto_sha256((const uint8_t *)secret, strlen(secret), t->hash), 0);
    t->expires = expires;
}

static int find(const av_snap *s, const char *tok, long long now)
{
    return av__snap_find_token(s, (const uint8_t *)tok, strlen(tok), now);
}

#define TOK(name, ref) "[token \"" name "\"]\nsecret = env:" ref "\n"

/* find_token_literal: configured tokens are found by their exact secret
 * and nothing else (no prefix, no extension, no empty token). */
static void find_token_literal(void **state)
{
    (void)state;
    av_snap *s = snap_from(TOK("a", "AV_TS_A") TOK("b", "AV_TS_B"), 0);
    assert_int_equal(find(s, "tok-a", 1000), tok_index(s, "a"));
    assert_int_equal(find(s, "tok-b", 1000), tok_index(s, "b"));
    assert_int_equal(find(s, "tok-", 1000), -1);
    assert_int_equal(find(s, "tok-ab", 1000), -1);
    assert_int_equal(find(s, "", 1000), -1);
    assert_int_equal(find(s, "TOK-A", 1000), -1);
    av__snap_unref(s);
}

/* find_token_hashed: a token-store token matches by hash until it
 * expires (the second of expiry is already too late); literal tokens next
 * to it still work. */
static void find_token_hashed(void **state)
{
    (void)state;
    av_snap *s = snap_from(TOK("a", "AV_TS_A") TOK("h", "AV_TS_B") TOK("forever", "AV_TS_B"), 0);
    make_hashed(s, "h", "store-secret", 2000);
    make_hashed(s, "forever", "other-secret", 0);
    assert_int_equal(find(s, "store-secret", 1999), tok_index(s, "h"));
    assert_int_equal(find(s, "store-secret", 2000), -1);
    assert_int_equal(find(s, "store-secret", 5000), -1);
    assert_int_equal(find(s, "other-secret", 1LL << 40), tok_index(s, "forever"));
    assert_int_equal(find(s, "tok-a", 2000), tok_index(s, "a"));
    assert_int_equal(find(s, "tok-b", 1000), -1); /* h's secret_ref is not its token any more */
    assert_int_equal(find(s, "store-secre", 1000), -1);
    av__snap_unref(s);
}

/* carry_token_literal: after a reload a connection keeps its token when
 * one of the same name has the same secret (wherever it now is in the
 * list); a changed secret or a removed token revokes it. */
static void carry_token_literal(void **state)
{
    (void)state;
    av_snap *old = snap_from(TOK("a", "AV_TS_A") TOK("b", "AV_TS_B"), 0);
    av_snap *moved = snap_from(TOK("c", "AV_TS_B") TOK("b", "AV_TS_B") TOK("a", "AV_TS_A"), 0);
    av_snap *rotated = snap_from(TOK("a", "AV_TS_A2") TOK("b", "AV_TS_B"), 0);
    av_snap *removed = snap_from(TOK("b", "AV_TS_B"), 0);
    av_snap *renamed = snap_from(TOK("a2", "AV_TS_A") TOK("b", "AV_TS_B"), 0);
    int a = tok_index(old, "a");
    assert_int_equal(av__snap_carry_token(old, a, moved, 0), tok_index(moved, "a"));
    assert_int_equal(av__snap_carry_token(old, tok_index(old, "b"), moved, 0), tok_index(moved, "b"));
    assert_int_equal(av__snap_carry_token(old, a, rotated, 0), -1);
    assert_int_equal(av__snap_carry_token(old, tok_index(old, "b"), rotated, 0), tok_index(rotated, "b"));
    assert_int_equal(av__snap_carry_token(old, a, removed, 0), -1);
    assert_int_equal(av__snap_carry_token(old, a, renamed, 0), -1);
    assert_int_equal(av__snap_carry_token(old, -1, moved, 0), -1);
    assert_int_equal(av__snap_carry_token(old, 7, moved, 0), -1);
    av__snap_unref(old);
    av__snap_unref(moved);
    av__snap_unref(rotated);
    av__snap_unref(removed);
    av__snap_unref(renamed);
}

/* carry_token_hashed: a store token carries over with the same hash and
 * while it has not expired in the new snapshot; a new hash (the token was
 * re-created), an expiry, or a literal token of the same name revoke it. */
static void carry_token_hashed(void **state)
{
    (void)state;
    const char *text = TOK("a", "AV_TS_A") TOK("h", "AV_TS_B");
    av_snap *old = snap_from(text, 0);
    make_hashed(old, "h", "store-secret", 0);
    int h = tok_index(old, "h");
    av_snap *same = snap_from(TOK("h", "AV_TS_B") TOK("a", "AV_TS_A"), 0);
    make_hashed(same, "h", "store-secret", 3000);
    av_snap *recreated = snap_from(text, 0);
    make_hashed(recreated, "h", "new-secret", 0);
    av_snap *literal = snap_from(text, 0); /* "h" is a [token] with secret tok-b now */
    assert_int_equal(av__snap_carry_token(old, h, same, 2999), tok_index(same, "h"));
    assert_int_equal(av__snap_carry_token(old, h, same, 3000), -1);
    assert_int_equal(av__snap_carry_token(old, h, recreated, 0), -1);
    assert_int_equal(av__snap_carry_token(old, h, literal, 0), -1);
    /* and the other way round: a literal token does not become a store one */
    assert_int_equal(av__snap_carry_token(literal, tok_index(literal, "h"), old, 0), -1);
    av__snap_unref(old);
    av__snap_unref(same);
    av__snap_unref(recreated);
    av__snap_unref(literal);
}

static int take(av_snap *s, int tok, double now, int *retry)
{
    *retry = -1;
    return av__snap_rate_take(s, tok, now, retry);
}

/* rate_bucket: a bucket starts full at the snapshot's creation, empties
 * one request at a time, refills at the rate up to the burst (never more,
 * however long it waited), and says how long to wait when empty. */
static void rate_bucket(void **state)
{
    (void)state;
    av_snap *s = snap_from(TOK("r", "AV_TS_A") "rate = 2/s\nburst = 3\n" TOK("free", "AV_TS_B"), 100.0);
    int r = tok_index(s, "r"), f = tok_index(s, "free"), retry;
    for (int i = 0; i < 3; i++)
        assert_int_equal(take(s, r, 100.0, &retry), AV_OK);
    assert_int_equal(take(s, r, 100.0, &retry), AV_ERR_LIMIT);
    assert_int_equal(retry, 1); /* half a second at 2/s, rounded up */
    assert_int_equal(take(s, r, 100.25, &retry), AV_ERR_LIMIT);
    assert_int_equal(retry, 1);
    assert_int_equal(take(s, r, 100.5, &retry), AV_OK); /* 0.5 + 0.5 = one request */
    assert_int_equal(take(s, r, 100.5, &retry), AV_ERR_LIMIT);
    /* a long pause refills to the burst only */
    for (int i = 0; i < 3; i++)
        assert_int_equal(take(s, r, 10000.0, &retry), AV_OK);
    assert_int_equal(take(s, r, 10000.0, &retry), AV_ERR_LIMIT);
    /* a token without a rate, and no token at all, are never limited */
    for (int i = 0; i < 100; i++)
        assert_int_equal(take(s, f, 100.0, &retry), AV_OK);
    assert_int_equal(take(s, -1, 100.0, &retry), AV_OK);
    assert_int_equal(retry, -1);
    av__snap_unref(s);
}

/* rate_bucket_slow: a slow rate gives a long Retry-After, and buckets are
 * per token and per snapshot (a reload starts them full again). */
static void rate_bucket_slow(void **state)
{
    (void)state;
    const char *text = TOK("m", "AV_TS_A") "rate = 6/min\n" TOK("n", "AV_TS_B") "rate = 6/min\n";
    av_snap *s = snap_from(text, 50.0);
    int m = tok_index(s, "m"), n = tok_index(s, "n"), retry;
    assert_int_equal(take(s, m, 50.0, &retry), AV_OK); /* burst: max(1, 0.1) = 1 */
    assert_int_equal(take(s, m, 50.0, &retry), AV_ERR_LIMIT);
    assert_in_range(retry, 10, 11); /* ten seconds per request */
    assert_int_equal(take(s, m, 55.0, &retry), AV_ERR_LIMIT);
    assert_in_range(retry, 5, 6);
    assert_int_equal(take(s, n, 55.0, &retry), AV_OK);
    av_snap *again = snap_from(text, 55.0);
    assert_int_equal(take(again, tok_index(again, "m"), 55.0, &retry), AV_OK);
    av__snap_unref(s);
    av__snap_unref(again);
}

/* scrub_cache: the scrub set of a secret is built once per snapshot and
 * shared; snapshots are reference counted. */
static void scrub_cache(void **state)
{
    (void)state;
    av_snap *s = snap_from(TOK("a", "AV_TS_A") TOK("b", "AV_TS_B"), 0);
    struct av_scrub_set *x = av__snap_scrub_set(s, s->tokens[0]);
    struct av_scrub_set *y = av__snap_scrub_set(s, s->tokens[0]);
    struct av_scrub_set *z = av__snap_scrub_set(s, s->tokens[1]);
    assert_non_null(x);
    assert_ptr_equal(x, y);
    assert_non_null(z);
    assert_ptr_not_equal(x, z);
    assert_ptr_equal(av__snap_ref(s), s);
    assert_int_equal(s->refs, 2);
    av__snap_unref(s);
    assert_int_equal(s->refs, 1);
    av__scrub_set_unref(x);
    av__scrub_set_unref(y);
    av__scrub_set_unref(z);
    av__snap_unref(s);
    av__snap_unref(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(find_token_literal),  cmocka_unit_test(find_token_hashed),
        cmocka_unit_test(carry_token_literal), cmocka_unit_test(carry_token_hashed),
        cmocka_unit_test(rate_bucket),         cmocka_unit_test(rate_bucket_slow),
        cmocka_unit_test(scrub_cache),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
