/* test_ca.c - the certificate authority: root files, leaves, the LRU. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_ca.h"
#include "av_ca_internal.h"
#include "av_mem.h"

static char g_tmp[256];

/* rm_entry is the nftw callback of rm_rf. */
static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm_rf removes a directory tree. */
static void rm_rf(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* setup creates a fresh temporary directory per test. */
static int setup(void **state)
{
    (void)state;
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/av-test-ca-XXXXXX");
    return mkdtemp(g_tmp) ? 0 : -1;
}

/* teardown removes it. */
static int teardown(void **state)
{
    (void)state;
    rm_rf(g_tmp);
    return 0;
}

/* path_in formats "<g_tmp>/<rel>" into a static rotating buffer. */
static const char *path_in(const char *rel)
{
    static char bufs[8][512];
    static int i;
    char *b = bufs[i++ % 8];
    snprintf(b, 512, "%s/%s", g_tmp, rel);
    return b;
}

/* run executes a shell command; returns its exit status, output in |out|. */
static int run(const char *cmd, char *out, size_t out_len)
{
    char full[2048];
    snprintf(full, sizeof(full), "%s 2>&1", cmd);
    FILE *f = popen(full, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, out_len - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* write_file writes a whole file with |mode|. */
static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    fchmod(fd, mode);
    close(fd);
}

/* read_file returns a whole file (malloc'd, NUL-terminated). */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *b = calloc(1, 1 << 20);
    size_t n = fread(b, 1, (1 << 20) - 1, f);
    fclose(f);
    if (len)
        *len = n;
    return b;
}

/* open_ok opens the CA in |dir| and expects success. */
static av_ca *open_ok(const char *dir, size_t cache)
{
    char err[512] = "x";
    av_ca *ca = NULL;
    int rc = av__ca_open(&ca, dir, cache, err, sizeof(err));
    if (rc != AV_OK)
        fail_msg("av__ca_open(%s): %d %s", dir, rc, err);
    assert_string_equal(err, "");
    return ca;
}

/* open_fails expects AV_ERR_CA with a message containing |a| and |b|. */
static void open_fails(const char *dir, const char *a, const char *b)
{
    char err[512] = "";
    av_ca *ca = NULL;
    int rc = av__ca_open(&ca, dir, 0, err, sizeof(err));
    if (rc != AV_ERR_CA || !strstr(err, a) || (b && !strstr(err, b)))
        fail_msg("expected AV_ERR_CA mentioning '%s' / '%s', got %d '%s'", a, b ? b : "", rc,
                 err);
    assert_null(ca);
    assert_null(strchr(err, '\n'));
}

/* leaf_to_file writes a leaf's PEM into <g_tmp>/<name>. */
static const char *leaf_to_file(av_ca_leaf *leaf, const char *name)
{
    char *pem = av__ca_leaf_pem(leaf);
    assert_non_null(pem);
    const char *p = path_in(name);
    write_file(p, pem, strlen(pem), 0644);
    av__free(pem);
    return p;
}

static void generate_and_reload(void **state)
{
    (void)state;
    const char *dir = path_in("state/sub");
    av_ca *ca = open_ok(dir, 0);
    struct stat st;
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(stat(path_in("state/sub/ca.key"), &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(stat(path_in("state/sub/ca.pem"), &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);

    char *pem1 = av__strdup(av__ca_root_pem(ca));
    assert_true(strncmp(pem1, "-----BEGIN CERTIFICATE-----\n", 28) == 0);
    char *file = read_file(path_in("state/sub/ca.pem"), NULL);
    assert_string_equal(file, pem1);
    free(file);
    char *key = read_file(path_in("state/sub/ca.key"), NULL);
    assert_true(strncmp(key, "-----BEGIN PRIVATE KEY-----\n", 28) == 0);
    free(key);
    av__ca_free(ca);

    ca = open_ok(dir, 0);
    assert_string_equal(av__ca_root_pem(ca), pem1);
    av__ca_free(ca);

    /* The public entry point returns the same root. */
    char *pub = NULL;
    char err[256];
    assert_int_equal(av_ca_root_pem_from_dir(dir, &pub, err, sizeof(err)), AV_OK);
    assert_string_equal(pub, pem1);
    av_free(pub);
    av__free(pem1);

    /* The root as the system openssl sees it. */
    char cmd[1024], out[16384];
    snprintf(cmd, sizeof(cmd), "openssl x509 -noout -text -in %s", path_in("state/sub/ca.pem"));
    assert_int_equal(run(cmd, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "Version: 3 (0x2)"));
    assert_non_null(strstr(out, "Subject: O = agentvault, CN = agentvault root CA "));
    assert_non_null(strstr(out, "Issuer: O = agentvault, CN = agentvault root CA "));
    assert_non_null(strstr(out, "ASN1 OID: prime256v1"));
    assert_non_null(strstr(out, "X509v3 Basic Constraints: critical\n                CA:TRUE, pathlen:0"));
    assert_non_null(strstr(out, "X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign"));
    assert_non_null(strstr(out, "X509v3 Subject Key Identifier"));
    assert_non_null(strstr(out, "Signature Algorithm: ecdsa-with-SHA256"));
    snprintf(cmd, sizeof(cmd), "openssl verify -x509_strict -CAfile %s %s",
             path_in("state/sub/ca.pem"), path_in("state/sub/ca.pem"));
    assert_int_equal(run(cmd, out, sizeof(out)), 0);
    assert_non_null(strstr(out, ": OK"));
    /* Serial: positive, 16 bytes (32 hex digits, top bit clear). */
    snprintf(cmd, sizeof(cmd), "openssl x509 -noout -serial -in %s", path_in("state/sub/ca.pem"));
    assert_int_equal(run(cmd, out, sizeof(out)), 0);
    assert_int_equal(strlen(out), strlen("serial=") + 32 + 1);
    assert_true(strchr("01234567", out[7]) != NULL);
}

static void broken_files(void **state)
{
    (void)state;
    const char *a = path_in("a");
    const char *b = path_in("b");
    av__ca_free(open_ok(a, 0));
    av__ca_free(open_ok(b, 0));
    size_t pem_len, key_len;
    char *pem = read_file(path_in("a/ca.pem"), &pem_len);
    char *key = read_file(path_in("a/ca.key"), &key_len);
    char *key_b = read_file(path_in("b/ca.key"), NULL);
    const char *a_pem = path_in("a/ca.pem");
    const char *a_key = path_in("a/ca.key");

    /* Only one of the two files. */
    unlink(a_pem);
    open_fails(a, a_key, "is missing");
    write_file(a_pem, pem, pem_len, 0644);
    unlink(a_key);
    open_fails(a, a_pem, "is missing");

    /* Mismatched pair. */
    write_file(a_key, key_b, strlen(key_b), 0600);
    open_fails(a, "private key does not match", a_pem);
    char err[512];
    av_ca *ca = NULL;
    assert_int_equal(av__ca_open(&ca, a, 0, err, sizeof(err)), AV_ERR_CA);
    char want[1200];
    snprintf(want, sizeof(want), "%s: private key does not match %s", a_key, a_pem);
    assert_string_equal(err, want);

    /* Truncated key, truncated certificate, garbage. */
    write_file(a_key, key, key_len / 2, 0600);
    open_fails(a, a_key, "not a valid PEM private key");
    write_file(a_key, key, key_len, 0600);
    write_file(a_pem, pem, pem_len / 2, 0644);
    open_fails(a, a_pem, "not a valid PEM certificate");
    write_file(a_pem, "hello\n", 6, 0644);
    open_fails(a, a_pem, "not a valid PEM certificate");
    write_file(a_pem, "", 0, 0644);
    open_fails(a, a_pem, "empty");
    write_file(a_pem, pem, pem_len, 0644);
    av__ca_free(open_ok(a, 0)); /* restored */

    /* A key readable by others (or group) is refused, like ssh does. */
    chmod(a_key, 0644);
    open_fails(a, a_key, "too open");
    chmod(a_key, 0640);
    open_fails(a, a_key, "too open");
    chmod(a_key, 0400);
    av__ca_free(open_ok(a, 0));

    /* A directory in place of a file. */
    unlink(a_pem);
    mkdir(a_pem, 0700);
    open_fails(a, a_pem, "not a regular file");
    rmdir(a_pem);

    free(pem);
    free(key);
    free(key_b);
}

/* make_external creates ca.pem/ca.key in <g_tmp>/<dir> with openssl(1). */
static void make_external(const char *dir, const char *curve, const char *bc)
{
    char cmd[2048], out[4096];
    mkdir(path_in(dir), 0700);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:%s -nodes "
             "-keyout %s/%s/ca.key -out %s/%s/ca.pem -days 30 -subj /CN=external "
             "-addext basicConstraints=critical,%s -addext keyUsage=critical,keyCertSign",
             curve, g_tmp, dir, g_tmp, dir, bc);
    if (run(cmd, out, sizeof(out)) != 0)
        fail_msg("%s: %s", cmd, out);
    char key[600];
    snprintf(key, sizeof(key), "%s/%s/ca.key", g_tmp, dir);
    chmod(key, 0600);
}

static void external_roots(void **state)
{
    (void)state;
    char cmd[2048], out[8192];
    make_external("notca", "P-256", "CA:FALSE");
    open_fails(path_in("notca"), path_in("notca/ca.pem"), "not a CA certificate");
    make_external("p384", "P-384", "CA:TRUE");
    open_fails(path_in("p384"), path_in("p384/ca.key"), "not an ECDSA P-256 key");

    /* A P-256 CA made elsewhere is accepted and signs verifiable leaves
     * (its own SKI becomes the leaves' AKI). */
    make_external("ext", "P-256", "CA:TRUE");
    av_ca *ca = open_ok(path_in("ext"), 0);
    av_ca_leaf *leaf = NULL;
    assert_int_equal(av__ca_leaf_get(ca, "api.example.test", NULL, &leaf), AV_OK);
    const char *lp = leaf_to_file(leaf, "ext-leaf.pem");
    snprintf(cmd, sizeof(cmd),
             "openssl verify -x509_strict -purpose sslserver -verify_hostname api.example.test "
             "-CAfile %s %s", path_in("ext/ca.pem"), lp);
    if (run(cmd, out, sizeof(out)) != 0 || !strstr(out, ": OK"))
        fail_msg("%s", out);
    av__ca_leaf_free(leaf);
    av__ca_free(ca);
}

/* verify_leaf runs openssl verify with |check| (e.g. "-verify_hostname x")
 * and returns 1 when the output says OK. */
static int verify_leaf(const char *leaf_path, const char *check)
{
    char cmd[2048], out[8192];
    snprintf(cmd, sizeof(cmd),
             "openssl verify -x509_strict -purpose sslserver %s -CAfile %s/ca.pem %s", check,
             g_tmp, leaf_path);
    int st = run(cmd, out, sizeof(out));
    return st == 0 && strstr(out, ": OK") != NULL;
}

/* leaf_text returns `openssl x509 -text` of a leaf file. */
static void leaf_text(const char *leaf_path, char *out, size_t out_len)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "openssl x509 -noout -text -in %s", leaf_path);
    assert_int_equal(run(cmd, out, out_len), 0);
}

static void mint_leaves(void **state)
{
    (void)state;
    char text[16384];
    av_ca *ca = open_ok(g_tmp, 0);
    av_ca_leaf *dns = NULL, *ip = NULL, *ip6 = NULL, *multi = NULL, *longn = NULL;

    assert_int_equal(av__ca_leaf_get(ca, "api.example.test", NULL, &dns), AV_OK);
    const char *p = leaf_to_file(dns, "dns.pem");
    assert_true(verify_leaf(p, "-verify_hostname api.example.test"));
    assert_false(verify_leaf(p, "-verify_hostname other.example.test"));
    assert_false(verify_leaf(p, "-verify_ip 127.0.0.1"));
    leaf_text(p, text, sizeof(text));
    assert_non_null(strstr(text, "Version: 3 (0x2)"));
    assert_non_null(strstr(text, "Subject: CN = api.example.test"));
    assert_non_null(strstr(text, "DNS:api.example.test"));
    assert_non_null(strstr(text, "X509v3 Basic Constraints: critical\n                CA:FALSE"));
    assert_non_null(strstr(text, "X509v3 Key Usage: critical\n                Digital Signature\n"));
    assert_non_null(strstr(text, "X509v3 Extended Key Usage: \n                TLS Web Server Authentication\n"));
    assert_non_null(strstr(text, "X509v3 Authority Key Identifier"));
    assert_non_null(strstr(text, "Signature Algorithm: ecdsa-with-SHA256"));
    assert_null(strstr(text, "IP Address"));
    /* Validity: 1 hour back, 7 days ahead. */
    int64_t na = av__ca_leaf_not_after(dns);
    int64_t now = (int64_t)time(NULL);
    assert_true(na >= now + 7 * 86400 - 5 && na <= now + 7 * 86400);
    size_t der_len = 0;
    const uint8_t *der = av__ca_leaf_der(dns, &der_len);
    assert_true(der_len > 300 && der_len < 800);
    assert_int_equal(der[0], 0x30);

    assert_int_equal(av__ca_leaf_get(ca, "127.0.0.1", NULL, &ip), AV_OK);
    p = leaf_to_file(ip, "ip.pem");
    assert_true(verify_leaf(p, "-verify_ip 127.0.0.1"));
    assert_false(verify_leaf(p, "-verify_ip 127.0.0.2"));
    assert_false(verify_leaf(p, "-verify_hostname localhost"));
    leaf_text(p, text, sizeof(text));
    assert_non_null(strstr(text, "IP Address:127.0.0.1"));
    assert_null(strstr(text, "DNS:"));

    assert_int_equal(av__ca_leaf_get(ca, "::1", NULL, &ip6), AV_OK);
    p = leaf_to_file(ip6, "ip6.pem");
    assert_true(verify_leaf(p, "-verify_ip ::1"));

    /* The proxy's own certificate: several SANs, its own cache entry. */
    const char *extra[] = {"localhost", "127.0.0.1", "api.example.test", NULL};
    assert_int_equal(av__ca_leaf_get(ca, "proxy.agentvault.test", extra, &multi), AV_OK);
    assert_ptr_not_equal(multi, dns);
    p = leaf_to_file(multi, "multi.pem");
    leaf_text(p, text, sizeof(text));
    assert_non_null(strstr(text, "DNS:proxy.agentvault.test, DNS:localhost, IP Address:127.0.0.1, "
                                 "DNS:api.example.test"));
    assert_true(verify_leaf(p, "-verify_hostname localhost"));
    assert_true(verify_leaf(p, "-verify_ip 127.0.0.1"));

    /* CN is cut to 64 characters; the SAN keeps the whole name. */
    char host[128];
    memset(host, 'a', 70);
    strcpy(host + 70, ".example.test");
    assert_int_equal(av__ca_leaf_get(ca, host, NULL, &longn), AV_OK);
    p = leaf_to_file(longn, "long.pem");
    char check[256];
    snprintf(check, sizeof(check), "-verify_hostname %s", host);
    assert_true(verify_leaf(p, check));
    leaf_text(p, text, sizeof(text));
    char cn[100];
    snprintf(cn, sizeof(cn), "Subject: CN = %.64s\n", host);
    assert_non_null(strstr(text, cn));

    /* Rejected names. */
    av_ca_leaf *bad = (av_ca_leaf *)1;
    assert_int_equal(av__ca_leaf_get(ca, "", NULL, &bad), AV_ERR_INVALID);
    assert_null(bad);
    assert_int_equal(av__ca_leaf_get(ca, "a b.test", NULL, &bad), AV_ERR_INVALID);
    assert_int_equal(av__ca_leaf_get(ca, "a,b.test", NULL, &bad), AV_ERR_INVALID);
    const char *bad_extra[] = {"ok.test", "bad\n.test", NULL};
    assert_int_equal(av__ca_leaf_get(ca, "x.test", bad_extra, &bad), AV_ERR_INVALID);

    av__ca_leaf_free(dns);
    av__ca_leaf_free(ip);
    av__ca_leaf_free(ip6);
    av__ca_leaf_free(multi);
    av__ca_leaf_free(longn);
    av__ca_leaf_free(NULL);
    av__ca_free(ca);
    av__ca_free(NULL);
}

/* get_stats returns the CA's statistics. */
static av_ca_stats get_stats(av_ca *ca)
{
    av_ca_stats st;
    av__ca_stats(ca, &st);
    return st;
}

/* get fetches a leaf and returns it with the reference already dropped
 * (the pointer is only compared). */
static av_ca_leaf *get(av_ca *ca, const char *host)
{
    av_ca_leaf *l = NULL;
    assert_int_equal(av__ca_leaf_get(ca, host, NULL, &l), AV_OK);
    av__ca_leaf_free(l);
    return l;
}

static void lru_and_expiry(void **state)
{
    (void)state;
    av_ca *ca = open_ok(g_tmp, 2);
    av_ca_stats st = get_stats(ca);
    assert_int_equal(st.leaf_hits, 0);
    assert_int_equal(st.leaf_misses, 0);
    assert_int_equal(st.leaf_cached, 0);

    av_ca_leaf *a = get(ca, "a.test");
    av_ca_leaf *b = get(ca, "b.test");
    (void)get(ca, "c.test"); /* evicts a */
    st = get_stats(ca);
    assert_int_equal(st.leaf_misses, 3);
    assert_int_equal(st.leaf_hits, 0);
    assert_int_equal(st.leaf_cached, 2);

    /* b is cached: same object, a hit. */
    assert_ptr_equal(get(ca, "b.test"), b);
    st = get_stats(ca);
    assert_int_equal(st.leaf_hits, 1);
    assert_int_equal(st.leaf_misses, 3);

    /* a was evicted: minted again (LRU is now a, b; c goes). */
    av_ca_leaf *a2 = NULL;
    assert_int_equal(av__ca_leaf_get(ca, "a.test", NULL, &a2), AV_OK);
    st = get_stats(ca);
    assert_int_equal(st.leaf_misses, 4);
    assert_int_equal(st.leaf_cached, 2);
    (void)a;
    assert_ptr_equal(get(ca, "b.test"), b);
    assert_int_equal(get_stats(ca).leaf_hits, 2);
    (void)get(ca, "c.test");
    assert_int_equal(get_stats(ca).leaf_misses, 5); /* c had been evicted */
    /* a2 was evicted by c but our reference keeps it alive and usable. */
    size_t len = 0;
    assert_non_null(av__ca_leaf_der(a2, &len));
    assert_true(len > 0);
    char *pem = av__ca_leaf_pem(a2);
    assert_non_null(pem);
    av__free(pem);
    av__ca_leaf_free(a2);

    /* Expiry: still cached 5 days on, re-minted within a day of the end. */
    av_ca_leaf *c = get(ca, "c.test");
    assert_int_equal(get_stats(ca).leaf_hits, 3);
    av__ca_set_time_skew(ca, 5 * 86400);
    assert_ptr_equal(get(ca, "c.test"), c);
    assert_int_equal(get_stats(ca).leaf_hits, 4);
    av__ca_set_time_skew(ca, 6 * 86400 + 3600);
    av_ca_leaf *c2 = NULL;
    assert_int_equal(av__ca_leaf_get(ca, "c.test", NULL, &c2), AV_OK);
    st = get_stats(ca);
    assert_int_equal(st.leaf_hits, 4);
    assert_int_equal(st.leaf_misses, 6);
    assert_int_equal(st.leaf_cached, 2);
    assert_true(av__ca_leaf_not_after(c2) >= (int64_t)time(NULL) + 13 * 86400);
    av__ca_leaf_free(c2);
    av__ca_free(ca);
}

static void mint_speed(void **state)
{
    (void)state;
    av_ca *ca = open_ok(g_tmp, 4096);
    struct timespec t0, t1;
    char host[64];
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 200; i++) {
        snprintf(host, sizeof(host), "host%d.example.test", i);
        (void)get(ca, host);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3);
    av_ca_stats st = get_stats(ca);
    assert_int_equal(st.leaf_misses, 200);
    assert_int_equal(st.leaf_cached, 200);
    print_message("leaf mint: %.1f us per host (200 hosts)\n", us / 200);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 200; i++) {
        snprintf(host, sizeof(host), "host%d.example.test", i);
        (void)get(ca, host);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    us = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3);
    assert_int_equal(get_stats(ca).leaf_hits, 200);
    print_message("leaf cache hit: %.2f us per host\n", us / 200);
    av__ca_free(ca);
}

/* SECURITY 15: minting is rate-capped; cached leaves are not affected. */
static void mint_rate_cap(void **state)
{
    (void)state;
    av_ca *ca = open_ok(g_tmp, 4096);
    char host[64];
    int ok = 0, limited = 0;
    /* Mint distinct hosts until the cap answers (bounded: even at 1 ms per
     * mint, 5000 mints need 5 s, far beyond 400 + 200/s). */
    for (int i = 0; i < 5000 && limited < 20; i++) {
        snprintf(host, sizeof(host), "burst%d.example.test", i);
        av_ca_leaf *leaf = NULL;
        int rc = av__ca_leaf_get(ca, host, NULL, &leaf);
        if (rc == AV_OK) {
            ok++;
            av__ca_leaf_free(leaf);
        } else {
            assert_int_equal(rc, AV_ERR_LIMIT);
            assert_null(leaf);
            limited++;
        }
    }
    av_ca_stats st = get_stats(ca);
    assert_true(ok >= 400);
    assert_true(limited > 0);
    assert_int_equal(st.leaf_refused, (unsigned long)limited);
    assert_int_equal(st.leaf_misses, (unsigned long)ok);
    /* A cached host is still served while the cap bites. */
    av_ca_leaf *leaf = NULL;
    assert_int_equal(av__ca_leaf_get(ca, "burst0.example.test", NULL, &leaf), AV_OK);
    av__ca_leaf_free(leaf);
    av__ca_free(ca);
}

static void bad_state_dir(void **state)
{
    (void)state;
    char err[512] = "";
    av_ca *ca = NULL;
    write_file(path_in("file"), "x", 1, 0644);
    assert_int_equal(av__ca_open(&ca, path_in("file/sub"), 0, err, sizeof(err)), AV_ERR_IO);
    assert_non_null(strstr(err, path_in("file")));
    assert_int_equal(av__ca_open(&ca, "", 0, err, sizeof(err)), AV_ERR_INVALID);
    char *pem = (char *)1;
    assert_int_equal(av_ca_root_pem_from_dir(path_in("file/sub"), &pem, NULL, 0), AV_ERR_IO);
    assert_null(pem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(generate_and_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(broken_files, setup, teardown),
        cmocka_unit_test_setup_teardown(external_roots, setup, teardown),
        cmocka_unit_test_setup_teardown(mint_leaves, setup, teardown),
        cmocka_unit_test_setup_teardown(lru_and_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(mint_speed, setup, teardown),
        cmocka_unit_test_setup_teardown(mint_rate_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_state_dir, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
