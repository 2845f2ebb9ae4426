/* test_ssrf.c - the destination address guard. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_config.h"
#include "av_ssrf.h"

static int check(const char *ip, const av_cidr *allow, size_t nallow, const char **why)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
        s6->sin6_family = AF_INET6;
    }
    return av__ssrf_check((struct sockaddr *)&ss, allow, nallow, why);
}

static void blocked_addresses(void **state)
{
    (void)state;
    static const char *const blocked[] = {
        "127.0.0.1", "127.255.255.254", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.255",
        "192.168.1.1", "169.254.169.254", "169.254.1.1", "100.64.0.1", "100.127.255.255", "224.0.0.1",
        "239.1.1.1", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.51.100.1", "203.0.113.9",
        "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:c0a8:101::", "2001:db8::1", "fd00:ec2::254",
        "::127.0.0.1", "2001:0:4136:e378:8000:63bf:80ff:fffe", /* Teredo hiding 127.0.0.1 */
    };
    for (size_t i = 0; i < sizeof(blocked) / sizeof(blocked[0]); i++) {
        const char *why = NULL;
        if (check(blocked[i], NULL, 0, &why) != AV_ERR_SSRF)
            fail_msg("%s should be blocked", blocked[i]);
        assert_non_null(why);
        assert_true(why[0] != '\0');
    }
}

static void public_addresses(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "1.1.1.1", "8.8.8.8", "104.18.6.192", "172.32.0.1", "172.15.255.255", "100.128.0.1",
        "192.169.0.1", "2606:4700::6810:1", "2a00:1450:4001::200e", "::ffff:8.8.8.8", "64:ff9b::808:808",
        "2002:0808:0808::1",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        const char *why = NULL;
        if (check(ok[i], NULL, 0, &why) != AV_OK)
            fail_msg("%s should be allowed (why=%s)", ok[i], why ? why : "");
    }
}

static void allow_list(void **state)
{
    (void)state;
    av_cidr allow[2];
    memset(allow, 0, sizeof(allow));
    allow[0].family = AF_INET;
    allow[0].addr[0] = 10;
    allow[0].prefix = 8;
    allow[1].family = AF_INET;
    allow[1].addr[0] = 169;
    allow[1].addr[1] = 254;
    allow[1].prefix = 16;
    const char *why = NULL;
    assert_int_equal(check("10.9.8.7", allow, 2, &why), AV_OK);
    assert_int_equal(check("::ffff:10.9.8.7", allow, 2, &why), AV_OK);
    assert_int_equal(check("192.168.0.1", allow, 2, &why), AV_ERR_SSRF);
    assert_int_equal(check("169.254.1.1", allow, 2, &why), AV_OK);
    /* Metadata stays blocked even inside an allowed range. */
    assert_int_equal(check("169.254.169.254", allow, 2, &why), AV_ERR_SSRF);
    assert_string_equal(why, "cloud metadata");
}

/* cidrs: parsing and containment, including IPv4-mapped IPv6. */
static void cidrs(void **state)
{
    (void)state;
    av_cidr c4, c6, one;
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    memset(&sin, 0, sizeof(sin));
    memset(&sin6, 0, sizeof(sin6));
    sin.sin_family = AF_INET;
    sin6.sin6_family = AF_INET6;

    assert_int_equal(av__parse_cidr("10.0.0.0/8", &c4), 0);
    assert_int_equal(c4.family, AF_INET);
    assert_int_equal(c4.prefix, 8);
    assert_int_equal(av__parse_cidr("fd00::/8", &c6), 0);
    assert_int_equal(c6.family, AF_INET6);
    assert_int_equal(av__parse_cidr("192.168.1.7", &one), 0);
    assert_int_equal(one.prefix, 32);

    inet_pton(AF_INET, "10.1.2.3", &sin.sin_addr);
    assert_int_equal(av__cidr_contains(&c4, (struct sockaddr *)&sin), 1);
    inet_pton(AF_INET, "11.0.0.1", &sin.sin_addr);
    assert_int_equal(av__cidr_contains(&c4, (struct sockaddr *)&sin), 0);
    inet_pton(AF_INET6, "::ffff:10.9.9.9", &sin6.sin6_addr);
    assert_int_equal(av__cidr_contains(&c4, (struct sockaddr *)&sin6), 1);
    inet_pton(AF_INET6, "::ffff:11.9.9.9", &sin6.sin6_addr);
    assert_int_equal(av__cidr_contains(&c4, (struct sockaddr *)&sin6), 0);
    inet_pton(AF_INET6, "::10.9.9.9", &sin6.sin6_addr); /* not mapped */
    assert_int_equal(av__cidr_contains(&c4, (struct sockaddr *)&sin6), 0);
    inet_pton(AF_INET6, "fdab::1", &sin6.sin6_addr);
    assert_int_equal(av__cidr_contains(&c6, (struct sockaddr *)&sin6), 1);
    inet_pton(AF_INET6, "fe00::1", &sin6.sin6_addr);
    assert_int_equal(av__cidr_contains(&c6, (struct sockaddr *)&sin6), 0);
    inet_pton(AF_INET, "192.168.1.7", &sin.sin_addr);
    assert_int_equal(av__cidr_contains(&one, (struct sockaddr *)&sin), 1);
    inet_pton(AF_INET, "192.168.1.6", &sin.sin_addr);
    assert_int_equal(av__cidr_contains(&one, (struct sockaddr *)&sin), 0);
    assert_int_equal(av__cidr_contains(&c6, (struct sockaddr *)&sin), 0);

    av_cidr m;
    assert_int_equal(av__parse_cidr("::ffff:0:0/96", &m), 0);
    assert_int_equal(av__cidr_contains(&m, (struct sockaddr *)&sin), 1);
    av_cidr all;
    assert_int_equal(av__parse_cidr("0.0.0.0/0", &all), 0);
    assert_int_equal(av__cidr_contains(&all, (struct sockaddr *)&sin), 1);
    assert_int_equal(av__parse_cidr("::/0", &all), 0);
    assert_int_equal(av__cidr_contains(&all, (struct sockaddr *)&sin), 0);
    assert_int_equal(av__cidr_contains(&all, (struct sockaddr *)&sin6), 1);
    assert_int_equal(av__parse_cidr("::ffff:192.168.1.0/120", &all), 0);
    assert_int_equal(av__cidr_contains(&all, (struct sockaddr *)&sin), 1);
    assert_int_equal(av__parse_cidr("10.0.0.0/7", &m), 0);
    assert_int_equal(av__parse_cidr("172.16.0.0/12", &m), 0);
    inet_pton(AF_INET, "172.31.255.255", &sin.sin_addr);
    assert_int_equal(av__cidr_contains(&m, (struct sockaddr *)&sin), 1);
    inet_pton(AF_INET, "172.32.0.0", &sin.sin_addr);
    assert_int_equal(av__cidr_contains(&m, (struct sockaddr *)&sin), 0);

    static const char *bad[] = {"10.0.0.1/8", "10.0.0.0/33", "fd00::/129", "10.0.0.0/",
                                "/8", "10.0.0/8", "010.0.0.0/8", "10.0.0.0/8x", "host/8",
                                "10.0.0.0/-1", "[fd00::]/8", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (av__parse_cidr(bad[i], &m) != AV_ERR_INVALID)
            fail_msg("cidr \"%s\" accepted", bad[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(blocked_addresses),
        cmocka_unit_test(public_addresses),
        cmocka_unit_test(allow_list),
        cmocka_unit_test(cidrs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
