/* test_decide.c - decisions (av_decide.c): the decision program's answer
 * line (strictness: one line, one object, known members once, bounded
 * reason, escapes), holds answered from another thread, cancelled holds,
 * the bound on held requests, remembered rules (scopes, expiry), bad
 * answers. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_decide.h"

static int parse(const char *s, av_decide_answer *a)
{
    const char *why = NULL;
    int rc = av__decide_parse_line(s, strlen(s), a, &why);
    assert_non_null(why);
    return rc;
}

static void line_accepts(void **state)
{
    (void)state;
    av_decide_answer a;
    assert_int_equal(parse("{\"allow\":true}", &a), AV_OK);
    assert_int_equal(a.allow, 1);
    assert_string_equal(a.reason, "");
    assert_int_equal(parse("{\"allow\":true}\n", &a), AV_OK);
    assert_int_equal(parse("{\"allow\":true}\r\n", &a), AV_OK);
    assert_int_equal(parse(" { \"allow\" : false , \"reason\" : \"DELETE on prod\" } \n", &a), AV_OK);
    assert_int_equal(a.allow, 0);
    assert_string_equal(a.reason, "DELETE on prod");
    assert_int_equal(parse("{\"reason\":\"a\\\"b\\\\c\\/d\\u0041\\n\\u00e9\",\"allow\":false}", &a), AV_OK);
    assert_string_equal(a.reason, "a\"b\\c/dA??");
    /* non-ASCII bytes become '?' */
    assert_int_equal(parse("{\"allow\":false,\"reason\":\"caf\xc3\xa9\"}", &a), AV_OK);
    assert_string_equal(a.reason, "caf??");
    char r200[260];
    snprintf(r200, sizeof(r200), "{\"allow\":false,\"reason\":\"%0200d\"}", 0);
    assert_int_equal(parse(r200, &a), AV_OK);
    assert_int_equal(strlen(a.reason), 200);
}

static void line_refuses(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "\n", "{}", "[]", "true", "{\"allow\":1}", "{\"allow\":\"true\"}", "{\"allow\":True}",
        "{\"allow\":true", "{\"allow\":true}}", "{\"allow\":true} x", "{\"allow\":true}\n\n",
        "{\"allow\":true}\n{\"allow\":true}\n", "{\"allow\":true,\"allow\":false}",
        "{\"allow\":true,\"reason\":\"a\",\"reason\":\"b\"}", "{\"allow\":true,\"remember\":600}",
        "{\"reason\":\"no allow\"}", "{\"allow\":true,}", "{,\"allow\":true}", "{\"allow\":false,\"reason\":1}",
        "{\"allow\":false,\"reason\":\"tab\there\"}", "{\"allow\":false,\"reason\":\"\\x41\"}",
        "{\"allow\":false,\"reason\":\"\\u00G1\"}", "{\"allow\":false,\"reason\":\"unterminated}",
        "{'allow':true}", "{\"allow\":true}\rX\n", "{\"allow\" true}",
        "{\"allow\":truex}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        av_decide_answer a;
        a.allow = 7;
        if (parse(bad[i], &a) != AV_ERR_PARSE)
            fail_msg("accepted: %s", bad[i]);
        assert_int_equal(a.allow, 0); /* a refused line never allows */
    }
    /* a NUL inside */
    av_decide_answer a;
    const char nul[] = "{\"allow\":true}\0";
    assert_int_equal(av__decide_parse_line(nul, sizeof(nul) - 1, &a, NULL), AV_ERR_PARSE);
    /* reason over 200 bytes, line over 4096 */
    char r201[300];
    snprintf(r201, sizeof(r201), "{\"allow\":false,\"reason\":\"%0201d\"}", 0);
    assert_int_equal(parse(r201, &a), AV_ERR_PARSE);
    static char big[AV_DECIDE_LINE_MAX + 10];
    memset(big, ' ', sizeof(big) - 1);
    memcpy(big, "{\"allow\":true}", 14);
    assert_int_equal(av__decide_parse_line(big, sizeof(big) - 1, &a, NULL), AV_ERR_PARSE);
}

static const av_hold_view view = {"POST", "https", "api.example.com", "/repos/o/r/git/refs", "gh",
                                  "agent1", NULL, "127.0.0.1", "h2", 443};

static av_hold *hold(av_decide *d)
{
    static const char json[] = "{\"id\":\"\",\"method\":\"POST\"}";
    av_hold *h = NULL;
    assert_int_equal(av__hold_new(d, &view, json, sizeof(json) - 1, NULL, 0, &h), AV_OK);
    return h;
}

static void *answer_later(void *arg)
{
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    av_decision_deny(arg, 451, "line one\nline two");
    return NULL;
}

static void hold_answered_from_another_thread(void **state)
{
    (void)state;
    av_decide *d;
    assert_int_equal(av__decide_new(&d), AV_OK);
    av_hold *h = hold(d);
    assert_string_equal(av_decision_request_get(h, "id"), "1");
    assert_string_equal(av_decision_request_get(h, "method"), "POST");
    assert_string_equal(av_decision_request_get(h, "port"), "443");
    assert_string_equal(av_decision_request_get(h, "gateway"), "");
    assert_null(av_decision_request_get(h, "secret"));
    size_t jl;
    assert_string_equal(av_decision_request_json(h, &jl), "{\"id\":\"1\",\"method\":\"POST\"}");
    assert_int_equal(jl, strlen("{\"id\":\"1\",\"method\":\"POST\"}"));
    assert_int_equal(av_decision_request_waiting(h), 1);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, answer_later, h), 0);
    pthread_join(t, NULL);
    int allow = 9, status = 0, by = 0;
    char reason[AV_DECIDE_REASON_MAX + 1];
    assert_int_equal(av__hold_result(h, &allow, &status, reason, &by), AV_HOLD_ANSWERED);
    assert_int_equal(allow, 0);
    assert_int_equal(status, 451);
    assert_int_equal(by, AV_BY_PERSON);
    assert_string_equal(reason, "line one?line two"); /* one line */
    /* a second answer changes nothing */
    assert_int_equal(av__hold_decide(h, 1, 0, NULL, AV_BY_PROGRAM), AV_ERR_STATE);
    av__hold_detach(h);
    av__decide_free(d);
}

static void hold_cancelled_then_answered(void **state)
{
    (void)state;
    av_decide *d;
    assert_int_equal(av__decide_new(&d), AV_OK);
    av_hold *h = hold(d);
    av__hold_detach(h); /* the agent went away */
    assert_int_equal(av_decision_request_waiting(h), 0);
    assert_int_equal(av_decision_allow(h, AV_REMEMBER_NONE, NULL, 0), AV_ERR_STATE); /* frees it */
    av__decide_free(d);
}

static void hold_outlives_registry(void **state)
{
    (void)state;
    av_decide *d;
    assert_int_equal(av__decide_new(&d), AV_OK);
    av_hold *h = hold(d);
    av__hold_detach(h);
    av__decide_free(d);
    assert_int_equal(av_decision_deny(h, 403, NULL), AV_ERR_STATE);
}

static void held_bound(void **state)
{
    (void)state;
    av_decide *d;
    assert_int_equal(av__decide_new(&d), AV_OK);
    static av_hold *hs[AV_DECIDE_HELD_MAX];
    for (size_t i = 0; i < AV_DECIDE_HELD_MAX; i++)
        hs[i] = hold(d);
    av_hold *extra = NULL;
    assert_int_equal(av__hold_new(d, &view, "{\"id\":\"\"}", 9, NULL, 0, &extra), AV_ERR_LIMIT);
    assert_null(extra);
    /* answered ones leave room */
    assert_int_equal(av_decision_allow(hs[0], AV_REMEMBER_NONE, NULL, 0), AV_OK);
    av__hold_detach(hs[0]);
    hs[0] = hold(d);
    av__decide_deny_all(d, 503, "shutting down");
    for (size_t i = 0; i < AV_DECIDE_HELD_MAX; i++) {
        int allow, status, by;
        char reason[AV_DECIDE_REASON_MAX + 1];
        assert_int_equal(av__hold_result(hs[i], &allow, &status, reason, &by), AV_HOLD_ANSWERED);
        assert_int_equal(status, 503);
        assert_int_equal(by, AV_BY_PROXY);
        av__hold_unref(hs[i]);
        av__hold_detach(hs[i]);
    }
    av__decide_free(d);
}

static void remembered_rules(void **state)
{
    (void)state;
    av_decide *d;
    assert_int_equal(av__decide_new(&d), AV_OK);
    assert_int_equal(av__decide_rule_match(d, "gh", "agent1", "POST", "/repos/o/r/git/refs"), 0);
    av_hold *h = hold(d);
    assert_int_equal(av_decision_allow(h, AV_REMEMBER_PATH, NULL, 60), AV_OK);
    av__hold_detach(h);
    assert_int_equal(av__decide_rule_match(d, "gh", "agent1", "POST", "/repos/o/r/git/refs"), 1);
    assert_int_equal(av__decide_rule_match(d, "gh", "agent1", "GET", "/repos/o/r/git/refs"), 0);
    assert_int_equal(av__decide_rule_match(d, "gh", "agent1", "POST", "/repos/o/r/git/refs/x"), 0);
    assert_int_equal(av__decide_rule_match(d, "gh", "agent2", "POST", "/repos/o/r/git/refs"), 0);
    assert_int_equal(av__decide_rule_match(d, "gh", NULL, "POST", "/repos/o/r/git/refs"), 0);
    assert_int_equal(av__decide_rule_match(d, "other", "agent1", "POST", "/repos/o/r/git/refs"), 0);
    /* a glob */
    h = hold(d);
    assert_int_equal(av_decision_allow(h, AV_REMEMBER_PATH, "/repos/o/*/pulls", 60), AV_OK);
    av__hold_detach(h);
    assert_int_equal(av__decide_rule_match(d, "gh", "agent1", "POST", "/repos/o/x/pulls"), 1);
    assert_int_equal(av__decide_rule_match(d, "gh", "agent1", "POST", "/repos/o/x/issues"), 0);
    /* the whole service, for a short while */
    h = hold(d);
    assert_int_equal(av_decision_allow(h, AV_REMEMBER_SERVICE, NULL, 0.05), AV_OK);
    av__hold_detach(h);
    assert_int_equal(av__decide_rule_match(d, "gh", "agent1", "DELETE", "/anything"), 1);
    struct timespec ts = {0, 80 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(av__decide_rule_match(d, "gh", "agent1", "DELETE", "/anything"), 0);
    /* bad answers deny rather than leave the request waiting */
    static const struct {
        int scope;
        const char *glob;
        double secs;
    } bad[] = {{7, NULL, 60}, {AV_REMEMBER_PATH, NULL, 0}, {AV_REMEMBER_SERVICE, NULL, 8 * 86400.0},
               {AV_REMEMBER_PATH, "relative", 60}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h = hold(d);
        assert_int_equal(av_decision_allow(h, bad[i].scope, bad[i].glob, bad[i].secs), AV_ERR_INVALID);
        int allow, status, by;
        char reason[AV_DECIDE_REASON_MAX + 1];
        assert_int_equal(av__hold_result(h, &allow, &status, reason, &by), AV_HOLD_ANSWERED);
        assert_int_equal(allow, 0);
        av__hold_detach(h);
    }
    /* the rule table is bounded: the oldest expiry goes */
    for (int i = 0; i < AV_DECIDE_RULES_MAX + 5; i++) {
        h = hold(d);
        assert_int_equal(av_decision_allow(h, AV_REMEMBER_SERVICE, NULL, 100 + i), AV_OK);
        av__hold_detach(h);
    }
    assert_int_equal(av__decide_rule_match(d, "gh", "agent1", "DELETE", "/anything"), 1);
    av__decide_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(line_accepts),
        cmocka_unit_test(line_refuses),
        cmocka_unit_test(hold_answered_from_another_thread),
        cmocka_unit_test(hold_cancelled_then_answered),
        cmocka_unit_test(hold_outlives_registry),
        cmocka_unit_test(held_bound),
        cmocka_unit_test(remembered_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
