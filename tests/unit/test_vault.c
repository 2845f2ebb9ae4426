/* test_vault.c - the encrypted vault: round trips, every kind of damage,
 * wrong keys, atomic saves, key-file mode, limits, the public API. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <agentvault/agentvault.h>

#include "av_crypto.h"
#include "av_mem.h"
#include "av_vault.h"

#define PW "correct horse battery staple"
#define PW_LEN (sizeof(PW) - 1)

/* Layout constants from the format comment in av_vault.h. */
#define HDR_LEN 48
#define WRAP_LEN 60
#define TABLE_LEN 28
#define SUM_LEN 32

static char g_tmp[256];
static char g_err[512];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/av-test-vault-XXXXXX");
    g_err[0] = '\0';
    av__vault_set_write_hook(NULL, NULL);
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    av__vault_set_write_hook(NULL, NULL);
    nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* path_in formats "<g_tmp>/<rel>" into a rotating static buffer. */
static const char *path_in(const char *rel)
{
    static char bufs[4][512];
    static int k;
    char *b = bufs[k++ % 4];
    snprintf(b, 512, "%s/%s", g_tmp, rel);
    return b;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void write_all(const char *path, const void *p, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, p, len), (ssize_t)len);
    close(fd);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* fix_checksum recomputes the trailing SHA-256, as a deliberate attacker
 * would, so the change has to be caught by the AEAD layers. */
static void fix_checksum(uint8_t *b, size_t len)
{
    assert_int_equal(av__crypto_sha256(b, len - SUM_LEN, b + len - SUM_LEN), AV_OK);
}

/* entry_spans finds the byte ranges of the entries of a vault image. */
static size_t entry_spans(const uint8_t *b, size_t len, size_t *start, size_t *size, size_t max)
{
    size_t n = be32(b + 40), off = HDR_LEN + WRAP_LEN;
    assert_true(n <= max);
    for (size_t i = 0; i < n; i++) {
        size_t nl = b[off];
        size_t vl = be32(b + off + 17 + nl);
        start[i] = off;
        size[i] = 1 + nl + 8 + 8 + 4 + 12 + vl + 16;
        off += size[i];
    }
    assert_int_equal(off + TABLE_LEN + SUM_LEN, len);
    return n;
}

static av_vault *create_pw(const char *rel)
{
    av_vault *v = NULL;
    int rc = av__vault_create(&v, path_in(rel), PW, PW_LEN, 0, g_err, sizeof(g_err));
    if (rc != AV_OK)
        fail_msg("create: %s", g_err);
    return v;
}

static void set_ok(av_vault *v, const char *name, const char *value)
{
    int rc = av__vault_set(v, name, value, strlen(value), g_err, sizeof(g_err));
    if (rc != AV_OK)
        fail_msg("set %s: %s", name, g_err);
}

static void save_ok(av_vault *v)
{
    int rc = av__vault_save(v, g_err, sizeof(g_err));
    if (rc != AV_OK)
        fail_msg("save: %s", g_err);
}

static void check_value(av_vault *v, const char *name, const char *value)
{
    av_secret *s = NULL;
    assert_int_equal(av__vault_get(v, name, &s), AV_OK);
    assert_int_equal(av__secret_len(s), strlen(value));
    assert_memory_equal(av__secret_data(s), value, strlen(value));
    av__secret_free(s);
}

/* small_vault writes a password vault with three entries and returns its
 * image. */
static uint8_t *small_vault(const char *rel, size_t *len)
{
    av_vault *v = create_pw(rel);
    set_ok(v, "openai", "sk-one");
    set_ok(v, "github", "ghp_two");
    set_ok(v, "zeta.key-1", "three");
    save_ok(v);
    av__vault_free(v);
    return read_all(path_in(rel), len);
}

/* open_rc opens |rel| with the test password and returns the result; a
 * failure must leave no handle and a one-line message naming the file. */
static int open_rc(const char *rel, const char *pw, size_t pw_len)
{
    av_vault *v = (av_vault *)1;
    g_err[0] = '\0';
    int rc = av__vault_open(&v, path_in(rel), pw, pw_len, g_err, sizeof(g_err));
    if (rc == AV_OK) {
        av__vault_free(v);
        return rc;
    }
    assert_null(v);
    assert_true(g_err[0] != '\0');
    assert_null(strchr(g_err, '\n'));
    assert_non_null(strstr(g_err, g_tmp));
    return rc;
}

/* ---- tests -------------------------------------------------------------- */

static void round_trip(void **state)
{
    (void)state;
    av_vault *v = create_pw("v.avv");
    assert_int_equal(av__vault_count(v), 0);
    set_ok(v, "openai", "sk-real-1");
    set_ok(v, "anthropic", "sk-ant-2");
    set_ok(v, "github_token", "ghp_3");
    save_ok(v);
    av__vault_free(v);

    v = NULL;
    assert_int_equal(av__vault_open(&v, path_in("v.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av__vault_count(v), 3);
    const char *name = NULL;
    int64_t created = 0, updated = 0;
    /* listed in name order with times, never values */
    assert_int_equal(av__vault_list(v, 0, &name, &created, &updated), AV_OK);
    assert_string_equal(name, "anthropic");
    assert_true(created > 1600000000 && updated >= created);
    assert_int_equal(av__vault_list(v, 1, &name, NULL, NULL), AV_OK);
    assert_string_equal(name, "github_token");
    assert_int_equal(av__vault_list(v, 2, &name, NULL, NULL), AV_OK);
    assert_string_equal(name, "openai");
    assert_int_equal(av__vault_list(v, 3, &name, NULL, NULL), AV_ERR_NOTFOUND);
    check_value(v, "openai", "sk-real-1");
    check_value(v, "anthropic", "sk-ant-2");
    check_value(v, "github_token", "ghp_3");
    av_secret *s = NULL;
    assert_int_equal(av__vault_get(v, "missing", &s), AV_ERR_NOTFOUND);
    assert_null(s);

    /* replace keeps the creation time; remove drops the entry */
    int64_t c0 = 0;
    av__vault_list(v, 2, NULL, &c0, NULL);
    set_ok(v, "openai", "sk-real-1-rotated");
    assert_int_equal(av__vault_remove(v, "anthropic"), AV_OK);
    assert_int_equal(av__vault_remove(v, "anthropic"), AV_ERR_NOTFOUND);
    save_ok(v);
    av__vault_free(v);

    assert_int_equal(av__vault_open(&v, path_in("v.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av__vault_count(v), 2);
    check_value(v, "openai", "sk-real-1-rotated");
    check_value(v, "github_token", "ghp_3");
    assert_int_equal(av__vault_get(v, "anthropic", &s), AV_ERR_NOTFOUND);
    int64_t c1 = 0;
    av__vault_list(v, 1, &name, &c1, NULL);
    assert_string_equal(name, "openai");
    assert_int_equal(c1, c0);
    /* binary values (NUL bytes) survive */
    assert_int_equal(av__vault_set(v, "bin", "a\0b\xff", 4, NULL, 0), AV_OK);
    save_ok(v);
    av__vault_free(v);
    assert_int_equal(av__vault_open(&v, path_in("v.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av__vault_get(v, "bin", &s), AV_OK);
    assert_int_equal(av__secret_len(s), 4);
    assert_memory_equal(av__secret_data(s), "a\0b\xff", 4);
    av__secret_free(s);
    av__vault_free(v);

    /* the plaintext never reaches the file */
    size_t len;
    uint8_t *b = read_all(path_in("v.avv"), &len);
    assert_null(memmem(b, len, "sk-real-1-rotated", 17));
    assert_null(memmem(b, len, "ghp_3", 5));
    free(b);
}

static void every_save_changes_all_ciphertext(void **state)
{
    (void)state;
    size_t l1, l2;
    uint8_t *a = small_vault("a.avv", &l1);
    av_vault *v = NULL;
    assert_int_equal(av__vault_open(&v, path_in("a.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
    save_ok(v);
    av__vault_free(v);
    uint8_t *b = read_all(path_in("a.avv"), &l2);
    assert_int_equal(l1, l2);
    /* same header; a fresh data key and nonces re-encrypt everything */
    assert_memory_equal(a, b, HDR_LEN);
    size_t same = 0;
    for (size_t i = HDR_LEN; i < l1; i++)
        same += a[i] == b[i];
    assert_true(same < (l1 - HDR_LEN) / 2);
    free(a);
    free(b);
}

static void wrong_password(void **state)
{
    (void)state;
    size_t len;
    uint8_t *orig = small_vault("v.avv", &len);
    assert_int_equal(open_rc("v.avv", "wrong", 5), AV_ERR_AUTH);
    assert_non_null(strstr(g_err, "wrong master password"));
    assert_int_equal(open_rc("v.avv", PW, PW_LEN - 1), AV_ERR_AUTH);
    assert_int_equal(open_rc("v.avv", "", 0), AV_ERR_AUTH);
    assert_int_equal(open_rc("v.avv", NULL, 0), AV_ERR_AUTH);
    assert_non_null(strstr(g_err, "needs its master password"));
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_OK);
    /* a failed open never touches the file */
    size_t l2;
    uint8_t *now = read_all(path_in("v.avv"), &l2);
    assert_int_equal(len, l2);
    assert_memory_equal(orig, now, len);
    free(orig);
    free(now);
}

static void bit_flip_every_offset(void **state)
{
    (void)state;
    size_t len;
    uint8_t *orig = small_vault("v.avv", &len);
    uint8_t *b = malloc(len);
    for (size_t off = 0; off < len; off++) {
        for (int bit = 0; bit < 8; bit += 7) { /* lowest and highest bit */
            memcpy(b, orig, len);
            b[off] ^= (uint8_t)(1u << bit);
            write_all(path_in("v.avv"), b, len);
            int rc = open_rc("v.avv", PW, PW_LEN);
            if (rc != AV_ERR_CORRUPT)
                fail_msg("flip at %zu bit %d: rc %d (%s)", off, bit, rc, g_err);
        }
    }
    /* the same flips with the checksum recomputed: the AEAD tags catch them */
    for (size_t off = 0; off < len - SUM_LEN; off++) {
        memcpy(b, orig, len);
        b[off] ^= (uint8_t)(1u << (off % 8));
        fix_checksum(b, len);
        write_all(path_in("v.avv"), b, len);
        int rc = open_rc("v.avv", PW, PW_LEN);
        if (rc != AV_ERR_CORRUPT && rc != AV_ERR_AUTH)
            fail_msg("tamper at %zu: rc %d (%s)", off, rc, g_err);
        /* only the key-derivation header and the wrapped key can make a
         * tampered file look like a wrong password */
        if (rc == AV_ERR_AUTH && off >= HDR_LEN && off < 40)
            fail_msg("tamper at %zu reported as %s", off, g_err);
        if (rc == AV_ERR_AUTH && off >= HDR_LEN + WRAP_LEN)
            fail_msg("tamper at %zu reported as %s", off, g_err);
    }
    write_all(path_in("v.avv"), orig, len);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_OK);
    free(b);
    free(orig);
}

static void truncated_at_every_length(void **state)
{
    (void)state;
    size_t len;
    uint8_t *orig = small_vault("v.avv", &len);
    for (size_t n = 0; n < len; n++) {
        write_all(path_in("v.avv"), orig, n);
        int rc = open_rc("v.avv", PW, PW_LEN);
        if (rc != AV_ERR_CORRUPT)
            fail_msg("truncated to %zu: rc %d (%s)", n, rc, g_err);
        assert_int_equal(av__vault_probe(path_in("v.avv"), NULL, 0), AV_ERR_CORRUPT);
    }
    write_all(path_in("v.avv"), orig, 5);
    open_rc("v.avv", PW, PW_LEN);
    assert_non_null(strstr(g_err, "truncated"));
    write_all(path_in("v.avv"), orig, len - 1);
    open_rc("v.avv", PW, PW_LEN);
    assert_non_null(strstr(g_err, "truncated"));
    free(orig);
}

static void appended_garbage(void **state)
{
    (void)state;
    size_t len;
    uint8_t *orig = small_vault("v.avv", &len);
    uint8_t *b = malloc(2 * len + 512);
    static const size_t extra[] = {1, 16, 59, 60, 61, 500};
    for (size_t k = 0; k < sizeof(extra) / sizeof(extra[0]); k++) {
        memcpy(b, orig, len);
        memset(b + len, 0x41, extra[k]);
        write_all(path_in("v.avv"), b, len + extra[k]);
        assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_CORRUPT);
        /* even with a valid checksum at the new end */
        fix_checksum(b, len + extra[k]);
        write_all(path_in("v.avv"), b, len + extra[k]);
        assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_CORRUPT);
    }
    /* the file twice */
    memcpy(b, orig, len);
    memcpy(b + len, orig, len);
    write_all(path_in("v.avv"), b, 2 * len);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_CORRUPT);
    free(b);
    free(orig);
}

static void reordered_removed_replayed_entries(void **state)
{
    (void)state;
    size_t len, st[8], sz[8];
    uint8_t *orig = small_vault("v.avv", &len);
    assert_int_equal(entry_spans(orig, len, st, sz, 8), 3);
    uint8_t *b = malloc(len);

    /* swap entries 0 and 1 */
    memcpy(b, orig, len);
    size_t p = st[0];
    memcpy(b + p, orig + st[1], sz[1]);
    memcpy(b + p + sz[1], orig + st[0], sz[0]);
    fix_checksum(b, len);
    write_all(path_in("v.avv"), b, len);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_CORRUPT);
    assert_non_null(strstr(g_err, "integrity"));

    /* remove entry 1 and fix the count */
    size_t n = 0;
    memcpy(b, orig, st[1]);
    n = st[1];
    memcpy(b + n, orig + st[2], len - st[2]);
    n += len - st[2];
    put_be32(b + 40, 2);
    fix_checksum(b, n);
    write_all(path_in("v.avv"), b, n);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_CORRUPT);
    assert_non_null(strstr(g_err, "integrity"));

    /* remove the last entry but keep the count: layout check */
    memcpy(b, orig, st[2]);
    memcpy(b + st[2], orig + len - TABLE_LEN - SUM_LEN, TABLE_LEN + SUM_LEN);
    n = st[2] + TABLE_LEN + SUM_LEN;
    fix_checksum(b, n);
    write_all(path_in("v.avv"), b, n);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_CORRUPT);

    /* replay an entry from an older save of the same vault */
    av_vault *v = NULL;
    assert_int_equal(av__vault_open(&v, path_in("v.avv.bak"), PW, PW_LEN, NULL, 0), AV_ERR_NOTFOUND);
    write_all(path_in("v.avv"), orig, len);
    assert_int_equal(av__vault_open(&v, path_in("v.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
    set_ok(v, "openai", "sk-new"); /* same length as "sk-one" */
    save_ok(v);
    av__vault_free(v);
    size_t l2, st2[8], sz2[8];
    uint8_t *newer = read_all(path_in("v.avv"), &l2);
    assert_int_equal(l2, len);
    assert_int_equal(entry_spans(newer, l2, st2, sz2, 8), 3);
    memcpy(b, newer, len);
    memcpy(b + st2[1], orig + st[1], sz[1]); /* "openai" is entry 1 */
    fix_checksum(b, len);
    write_all(path_in("v.avv"), b, len);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_CORRUPT);
    /* and the old table on the new entries */
    memcpy(b, newer, len);
    memcpy(b + len - TABLE_LEN - SUM_LEN, orig + len - TABLE_LEN - SUM_LEN, TABLE_LEN);
    fix_checksum(b, len);
    write_all(path_in("v.avv"), b, len);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_CORRUPT);
    free(newer);
    free(b);
    free(orig);
}

static void not_a_vault_too_large_missing(void **state)
{
    (void)state;
    write_all(path_in("text"), "hello, world, this is not a vault at all\n", 41);
    assert_int_equal(open_rc("text", PW, PW_LEN), AV_ERR_CORRUPT);
    assert_non_null(strstr(g_err, "not an agentvault vault"));
    write_all(path_in("empty"), "", 0);
    assert_int_equal(open_rc("empty", PW, PW_LEN), AV_ERR_CORRUPT);
    assert_int_equal(open_rc("missing", PW, PW_LEN), AV_ERR_NOTFOUND);
    assert_int_equal(av__vault_probe(path_in("missing"), NULL, 0), AV_ERR_NOTFOUND);
    /* a wrong version is named */
    size_t len;
    uint8_t *b = small_vault("v.avv", &len);
    b[9] = 2;
    fix_checksum(b, len);
    write_all(path_in("v.avv"), b, len);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_CORRUPT);
    assert_non_null(strstr(g_err, "version 2"));
    free(b);
    /* over 64 MiB: refused before reading */
    int fd = open(path_in("big"), O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)AV_VAULT_FILE_MAX + 1), 0);
    close(fd);
    assert_int_equal(open_rc("big", PW, PW_LEN), AV_ERR_LIMIT);
    mkdir(path_in("dir"), 0700);
    assert_int_equal(open_rc("dir", PW, PW_LEN), AV_ERR_IO);
}

static void file_modes_0600(void **state)
{
    (void)state;
    mode_t old = umask(0);
    struct stat st;
    av_vault *v = create_pw("v.avv");
    assert_int_equal(stat(path_in("v.avv"), &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    set_ok(v, "a", "b");
    save_ok(v);
    assert_int_equal(stat(path_in("v.avv"), &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    av__vault_free(v);
    /* a group-readable vault is refused (refuse_like_ssh), not re-written */

    assert_int_equal(av__vault_create(&v, path_in("k.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(stat(path_in("k.avv"), &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(stat(path_in("k.key"), &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    av__vault_free(v);
    umask(old);
}

/* ---- atomic saves ------------------------------------------------------- */

static const char *g_fail_step;

static int fail_at(const char *step, void *ud)
{
    (void)ud;
    return g_fail_step && strcmp(step, g_fail_step) == 0;
}

static int die_at_write(const char *step, void *ud)
{
    (void)ud;
    if (strcmp(step, "write") == 0)
        _exit(42);
    return 0;
}

/* count_tmp counts leftover temporary files in g_tmp. */
static int count_tmp(void)
{
    int n = 0;
    DIR *d = opendir(g_tmp);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)))
        n += strstr(de->d_name, ".tmp-") != NULL;
    closedir(d);
    return n;
}

static void atomic_save_failure_keeps_old_file(void **state)
{
    (void)state;
    static const char *steps[] = {"write", "fsync", "rename"};
    size_t len;
    uint8_t *orig = small_vault("v.avv", &len);
    for (size_t k = 0; k < 3; k++) {
        av_vault *v = NULL;
        assert_int_equal(av_vault_open(&v, path_in("v.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
        g_fail_step = steps[k];
        av__vault_set_write_hook(fail_at, NULL);
        /* add, replace and remove all fail and change nothing */
        assert_int_equal(av_vault_set(v, "newname", "v", 1, g_err, sizeof(g_err)), AV_ERR_IO);
        assert_non_null(strstr(g_err, "unchanged"));
        assert_non_null(strstr(g_err, steps[k]));
        assert_int_equal(av_vault_set(v, "openai", "sk-replaced", 11, NULL, 0), AV_ERR_IO);
        assert_int_equal(av_vault_remove(v, "github", NULL, 0), AV_ERR_IO);
        assert_int_equal(av_vault_passwd(v, "new", 3, NULL, 0), AV_ERR_IO);
        av__vault_set_write_hook(NULL, NULL);
        assert_int_equal(av_vault_count(v), 3);
        check_value(v, "openai", "sk-one");
        check_value(v, "github", "ghp_two");
        char *val = NULL;
        size_t vl = 0;
        assert_int_equal(av_vault_get(v, "newname", &val, &vl), AV_ERR_NOTFOUND);
        /* on disk: byte for byte the old file, no temporary left over */
        size_t l2;
        uint8_t *now = read_all(path_in("v.avv"), &l2);
        assert_int_equal(l2, len);
        assert_memory_equal(now, orig, len);
        free(now);
        assert_int_equal(count_tmp(), 0);
        /* the in-memory vault still saves with the old password */
        save_ok(v);
        av_vault_close(v);
        assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_OK);
        assert_int_equal(open_rc("v.avv", "new", 3), AV_ERR_AUTH);
        free(orig);
        orig = read_all(path_in("v.avv"), &len);
    }
    free(orig);
}

static void crash_during_write_keeps_old_file(void **state)
{
    (void)state;
    size_t len;
    uint8_t *orig = small_vault("v.avv", &len);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        av_vault *v = NULL;
        if (av__vault_open(&v, path_in("v.avv"), PW, PW_LEN, NULL, 0) != AV_OK)
            _exit(1);
        char big[4096];
        memset(big, 'x', sizeof(big));
        av__vault_set(v, "big", big, sizeof(big), NULL, 0);
        av__vault_set_write_hook(die_at_write, NULL);
        av__vault_save(v, NULL, 0);
        _exit(2); /* not reached: the hook "kills" the process mid-write */
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 42);
    size_t l2;
    uint8_t *now = read_all(path_in("v.avv"), &l2);
    assert_int_equal(l2, len);
    assert_memory_equal(now, orig, len);
    free(now);
    /* the partial temporary file is left (as after a real kill); the vault
     * is untouched and opens */
    assert_int_equal(count_tmp(), 1);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_OK);
    free(orig);
    /* the next save removes it: its writer is gone */
    av_vault *v = NULL;
    assert_int_equal(av__vault_open(&v, path_in("v.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
    set_ok(v, "after", "crash");
    save_ok(v);
    av__vault_free(v);
    assert_int_equal(count_tmp(), 0);
}

/* tmp_name formats a temporary file name of |rel| for |pid|. */
static const char *tmp_name(const char *rel, long pid, const char *hex)
{
    static char b[8][600];
    static int k;
    char *o = b[k++ % 8];
    snprintf(o, 600, "%s/%s.tmp-%ld-%s", g_tmp, rel, pid, hex);
    return o;
}

static void stale_tmp_files_only(void **state)
{
    (void)state;
    size_t len;
    free(small_vault("v.avv", &len));
    pid_t dead = fork();
    assert_true(dead >= 0);
    if (dead == 0)
        _exit(0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);
    const char *stale = tmp_name("v.avv", dead, "0badc0de");
    const char *aged = tmp_name("v.avv", getppid(), "00c0ffee");
    const char *live = tmp_name("v.avv", getppid(), "1badcafe");
    const char *other = tmp_name("w.avv", dead, "0badc0de");
    const char *odd = tmp_name("v.avv", dead, "nothex!!");
    const char *files[] = {stale, aged, live, other, odd};
    for (size_t i = 0; i < 5; i++)
        write_all(files[i], (const uint8_t *)"partial", 7);
    struct timespec times[2] = {{.tv_sec = time(NULL) - 7200}, {.tv_sec = time(NULL) - 7200}};
    assert_int_equal(utimensat(AT_FDCWD, aged, times, 0), 0);
    /* a symbolic link with a stale name is not a temporary file */
    char linkname[600];
    snprintf(linkname, sizeof(linkname), "%s", tmp_name("v.avv", dead, "5ca1ab1e"));
    assert_int_equal(symlink(live, linkname), 0);
    av_vault *v = NULL;
    assert_int_equal(av__vault_open(&v, path_in("v.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
    save_ok(v);
    av__vault_free(v);
    struct stat st;
    assert_int_equal(lstat(stale, &st), -1);
    assert_int_equal(lstat(aged, &st), -1);
    assert_int_equal(lstat(live, &st), 0);
    assert_int_equal(lstat(other, &st), 0);
    assert_int_equal(lstat(odd, &st), 0);
    assert_int_equal(lstat(linkname, &st), 0);
}

/* ---- files ssh would refuse ---------------------------------------------- */

/* refused: av__vault_open and av__vault_probe both refuse |rel|
 * with one line naming it and containing |want|. */
static void refused(const char *rel, const char *pw, size_t pw_len, const char *want)
{
    assert_int_equal(open_rc(rel, pw, pw_len), AV_ERR_IO);
    if (!strstr(g_err, want))
        fail_msg("\"%s\" not in \"%s\"", want, g_err);
    g_err[0] = '\0';
    assert_int_equal(av__vault_probe(path_in(rel), g_err, sizeof(g_err)), AV_ERR_IO);
    if (!strstr(g_err, want))
        fail_msg("probe: \"%s\" not in \"%s\"", want, g_err);
}

static void refuse_like_ssh(void **state)
{
    (void)state;
    size_t len;
    free(small_vault("v.avv", &len));
    static const mode_t modes[] = {0644, 0640, 0604, 0620, 0602, 0610, 0601, 0660, 0666, 0607};
    char want[600];
    snprintf(want, sizeof(want), "chmod 600 %s", path_in("v.avv"));
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        assert_int_equal(chmod(path_in("v.avv"), modes[i]), 0);
        refused("v.avv", PW, PW_LEN, want);
    }
    assert_int_equal(chmod(path_in("v.avv"), 0400), 0);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_OK);
    assert_int_equal(chmod(path_in("v.avv"), 0600), 0);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_OK);

    /* reached through a symbolic link in its last component */
    assert_int_equal(symlink(path_in("v.avv"), path_in("link.avv")), 0);
    refused("link.avv", PW, PW_LEN, "symbolic link");
    /* a link in the directory part is the operator's choice */
    assert_int_equal(symlink(g_tmp, path_in("dirlink")), 0);
    assert_int_equal(open_rc("dirlink/v.avv", PW, PW_LEN), AV_OK);

    /* owned by another user (root can hand it over to test this) */
    if (geteuid() == 0) {
        assert_int_equal(chown(path_in("v.avv"), 65534, 65534), 0);
        refused("v.avv", PW, PW_LEN, "owned by uid 65534");
        assert_int_equal(chown(path_in("v.avv"), 0, 0), 0);
    }

    /* the key file of a key-file vault */
    av_vault *v = NULL;
    assert_int_equal(av__vault_create(&v, path_in("k.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    av__vault_free(v);
    assert_int_equal(chmod(path_in("k.key"), 0604), 0);
    snprintf(want, sizeof(want), "chmod 600 %s", path_in("k.key"));
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_IO);
    assert_non_null(strstr(g_err, want));
    assert_int_equal(chmod(path_in("k.key"), 0600), 0);
    assert_int_equal(rename(path_in("k.key"), path_in("real.key")), 0);
    assert_int_equal(symlink(path_in("real.key"), path_in("k.key")), 0);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_IO);
    assert_non_null(strstr(g_err, "symbolic link"));
    assert_non_null(strstr(g_err, path_in("k.key")));
}

/* ---- key-file mode ------------------------------------------------------ */

static void no_password_key_file(void **state)
{
    (void)state;
    av_vault *v = NULL;
    assert_int_equal(av__vault_create(&v, path_in("k.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    assert_string_equal(av__vault_key_path(v), path_in("k.key"));
    set_ok(v, "token", "tok-123");
    save_ok(v);
    av__vault_free(v);
    assert_int_equal(av__vault_probe(path_in("k.avv"), NULL, 0), 0);

    /* no password needed; one given is ignored */
    assert_int_equal(av__vault_open(&v, path_in("k.avv"), NULL, 0, g_err, sizeof(g_err)), AV_OK);
    check_value(v, "token", "tok-123");
    av__vault_free(v);
    assert_int_equal(open_rc("k.avv", "whatever", 8), AV_OK);

    /* the key never appears in the vault file */
    size_t kl, vl;
    uint8_t *key = read_all(path_in("k.key"), &kl);
    uint8_t *vf = read_all(path_in("k.avv"), &vl);
    assert_int_equal(kl, 72);
    assert_null(memmem(vf, vl, key + 8, 32));
    free(vf);

    /* another vault's key file */
    assert_int_equal(av__vault_create(&v, path_in("other.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    av__vault_free(v);
    size_t ol;
    uint8_t *other = read_all(path_in("other.key"), &ol);
    write_all(path_in("k.key"), other, ol);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_AUTH);
    assert_non_null(strstr(g_err, "does not belong"));
    assert_non_null(strstr(g_err, "k.key"));
    free(other);

    /* damaged key file */
    for (size_t off = 0; off < kl; off += 7) {
        key[off] ^= 0x10;
        write_all(path_in("k.key"), key, kl);
        key[off] ^= 0x10;
        assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_CORRUPT);
        assert_non_null(strstr(g_err, "k.key"));
    }
    write_all(path_in("k.key"), key, kl - 1);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_CORRUPT);

    /* too open */
    write_all(path_in("k.key"), key, kl);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_OK);
    chmod(path_in("k.key"), 0640);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_IO);
    assert_non_null(strstr(g_err, "chmod 600"));
    chmod(path_in("k.key"), 0600);

    /* missing */
    unlink(path_in("k.key"));
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_NOTFOUND);
    assert_non_null(strstr(g_err, "k.key"));
    assert_non_null(strstr(g_err, "no such key file"));
    free(key);

    /* a key file in the way: nothing is created or replaced */
    write_all(path_in("n.key"), "x", 1);
    assert_int_equal(av__vault_create(&v, path_in("n.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_ERR_STATE);
    assert_null(v);
    assert_int_equal(access(path_in("n.avv"), F_OK), -1);
    size_t nl;
    uint8_t *n = read_all(path_in("n.key"), &nl);
    assert_int_equal(nl, 1);
    free(n);
    /* a name without .avv gets .key appended */
    assert_int_equal(av__vault_create(&v, path_in("plain"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    assert_string_equal(av__vault_key_path(v), path_in("plain.key"));
    av__vault_free(v);
}

static void create_refuses_existing_and_bad_args(void **state)
{
    (void)state;
    size_t len;
    uint8_t *orig = small_vault("v.avv", &len);
    av_vault *v = NULL;
    assert_int_equal(av__vault_create(&v, path_in("v.avv"), "x", 1, 0, g_err, sizeof(g_err)), AV_ERR_STATE);
    assert_non_null(strstr(g_err, "already exists"));
    assert_int_equal(av__vault_create(&v, path_in("v.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_ERR_STATE);
    assert_int_equal(access(path_in("v.key"), F_OK), -1);
    size_t l2;
    uint8_t *now = read_all(path_in("v.avv"), &l2);
    assert_int_equal(l2, len);
    assert_memory_equal(now, orig, len);
    free(now);
    free(orig);
    assert_int_equal(av__vault_create(&v, path_in("e.avv"), "", 0, 0, g_err, sizeof(g_err)), AV_ERR_INVALID);
    assert_int_equal(av__vault_create(&v, path_in("e.avv"), NULL, 0, 0, g_err, sizeof(g_err)), AV_ERR_INVALID);
    assert_int_equal(av__vault_create(&v, path_in("e.avv"), "pw", 2, 1, g_err, sizeof(g_err)), AV_ERR_INVALID);
    assert_int_equal(av_vault_create(&v, path_in("e.avv"), "pw", 2, 0x80, g_err, sizeof(g_err)), AV_ERR_INVALID);
    assert_int_equal(access(path_in("e.avv"), F_OK), -1);
    assert_int_equal(av__vault_create(&v, path_in("nodir/e.avv"), "pw", 2, 0, g_err, sizeof(g_err)), AV_ERR_IO);
    assert_null(v);
}

/* ---- limits ------------------------------------------------------------- */

static void limits(void **state)
{
    (void)state;
    av_vault *v = create_pw("v.avv");
    static const char *bad[] = {"", "a b", "a/b", "../x", "caf\xc3\xa9", "x\ny", "a=b", "tab\t",
                                "0123456789012345678901234567890123456789012345678901234567890123X"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(av__vault_set(v, bad[i], "v", 1, g_err, sizeof(g_err)), AV_ERR_INVALID);
        assert_non_null(strstr(g_err, "invalid secret name"));
    }
    assert_int_equal(av__vault_set(v, NULL, "v", 1, NULL, 0), AV_ERR_INVALID);
    const char *max_name = "0123456789012345678901234567890123456789012345678901234567890123";
    assert_int_equal(strlen(max_name), 64);
    set_ok(v, max_name, "v");
    set_ok(v, "A-Z_a.z-09", "v");
    /* values: 1 .. 64 KiB */
    uint8_t *big = malloc(AV_VAULT_VALUE_MAX + 1);
    memset(big, 'v', AV_VAULT_VALUE_MAX + 1);
    assert_int_equal(av__vault_set(v, "empty", "", 0, g_err, sizeof(g_err)), AV_ERR_INVALID);
    assert_int_equal(av__vault_set(v, "big", big, AV_VAULT_VALUE_MAX + 1, g_err, sizeof(g_err)), AV_ERR_LIMIT);
    assert_int_equal(av__vault_set(v, "big", big, AV_VAULT_VALUE_MAX, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av__vault_count(v), 3);
    save_ok(v);
    av__vault_free(v);
    assert_int_equal(av__vault_open(&v, path_in("v.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
    av_secret *s = NULL;
    assert_int_equal(av__vault_get(v, "big", &s), AV_OK);
    assert_int_equal(av__secret_len(s), AV_VAULT_VALUE_MAX);
    av__secret_free(s);
    assert_int_equal(av__vault_get(v, "a b", &s), AV_ERR_INVALID);
    av__vault_free(v);

    /* 4096 entries, not one more; the full vault saves and opens */
    v = create_pw("many.avv");
    char name[16];
    for (int i = 0; i < AV_VAULT_ENTRIES_MAX; i++) {
        snprintf(name, sizeof(name), "n%05d", i);
        assert_int_equal(av__vault_set(v, name, "x", 1, NULL, 0), AV_OK);
    }
    assert_int_equal(av__vault_set(v, "one-more", "x", 1, g_err, sizeof(g_err)), AV_ERR_LIMIT);
    assert_int_equal(av__vault_set(v, "n00007", "replacing is fine", 17, NULL, 0), AV_OK);
    save_ok(v);
    av__vault_free(v);
    assert_int_equal(av__vault_open(&v, path_in("many.avv"), PW, PW_LEN, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av__vault_count(v), AV_VAULT_ENTRIES_MAX);
    check_value(v, "n00007", "replacing is fine");
    av__vault_free(v);

    /* the 64 MiB file limit binds before 4096 x 64 KiB */
    v = create_pw("huge.avv");
    int i = 0, rc;
    do {
        snprintf(name, sizeof(name), "h%04d", i++);
        rc = av__vault_set(v, name, big, AV_VAULT_VALUE_MAX, g_err, sizeof(g_err));
    } while (rc == AV_OK && i < 2000);
    assert_int_equal(rc, AV_ERR_LIMIT);
    assert_true(i > 1000 && i < 1030);
    assert_non_null(strstr(g_err, "exceed"));
    /* growing an existing value past the limit is refused too */
    assert_int_equal(av__vault_set(v, "h0000", "x", 1, NULL, 0), AV_OK);
    assert_int_equal(av__vault_set(v, "h0000", big, AV_VAULT_VALUE_MAX, NULL, 0), AV_OK);
    av__vault_free(v);
    free(big);
}

static void change_password(void **state)
{
    (void)state;
    av_vault *v = create_pw("v.avv");
    set_ok(v, "a", "secret-a");
    save_ok(v);
    assert_int_equal(av__vault_change_password(v, "", 0, g_err, sizeof(g_err)), AV_ERR_INVALID);
    assert_int_equal(av__vault_change_password(v, "new pw", 6, g_err, sizeof(g_err)), AV_OK);
    set_ok(v, "b", "secret-b"); /* later saves use the new password */
    save_ok(v);
    av__vault_free(v);
    assert_int_equal(open_rc("v.avv", PW, PW_LEN), AV_ERR_AUTH);
    assert_int_equal(av__vault_open(&v, path_in("v.avv"), "new pw", 6, g_err, sizeof(g_err)), AV_OK);
    check_value(v, "a", "secret-a");
    check_value(v, "b", "secret-b");
    av__vault_free(v);

    /* key file -> password: the key file goes away */
    assert_int_equal(av__vault_create(&v, path_in("k.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    set_ok(v, "a", "secret-a");
    save_ok(v);
    assert_int_equal(av_vault_passwd(v, "pw2", 3, g_err, sizeof(g_err)), AV_OK);
    av__vault_free(v);
    assert_int_equal(access(path_in("k.key"), F_OK), -1);
    assert_int_equal(av__vault_probe(path_in("k.avv"), NULL, 0), 1);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_AUTH);
    assert_int_equal(av__vault_open(&v, path_in("k.avv"), "pw2", 3, g_err, sizeof(g_err)), AV_OK);
    check_value(v, "a", "secret-a");
    av__vault_free(v);
}

static void public_api(void **state)
{
    (void)state;
    av_vault *v = NULL;
    char err[256];
    assert_int_equal(av_vault_create(&v, path_in("p.avv"), "pw", 2, 0, err, sizeof(err)), AV_OK);
    assert_int_equal(av_vault_set(v, "svc", "value\0with nul", 14, err, sizeof(err)), AV_OK);
    assert_int_equal(av_vault_set(v, "bad name", "x", 1, err, sizeof(err)), AV_ERR_INVALID);
    assert_int_equal(av_vault_count(v), 1);
    av_vault_close(v);
    av_vault_close(NULL);
    assert_int_equal(av_vault_needs_password(path_in("p.avv"), err, sizeof(err)), 1);
    assert_int_equal(av_vault_open(&v, path_in("p.avv"), "px", 2, err, sizeof(err)), AV_ERR_AUTH);
    assert_int_equal(av_vault_open(&v, path_in("p.avv"), "pw", 2, err, sizeof(err)), AV_OK);
    char *val = NULL;
    size_t len = 0;
    assert_int_equal(av_vault_get(v, "svc", &val, &len), AV_OK);
    assert_int_equal(len, 14);
    assert_memory_equal(val, "value\0with nul", 15);
    av_vault_free_value(val, len);
    av_vault_free_value(NULL, 0);
    const char *name = NULL;
    long long c = 0, u = 0;
    assert_int_equal(av_vault_list(v, 0, &name, &c, &u), AV_OK);
    assert_string_equal(name, "svc");
    assert_true(c > 0 && u >= c);
    assert_int_equal(av_vault_list(v, 1, &name, &c, &u), AV_ERR_NOTFOUND);
    assert_int_equal(av_vault_remove(v, "svc", err, sizeof(err)), AV_OK);
    assert_int_equal(av_vault_remove(v, "svc", err, sizeof(err)), AV_ERR_NOTFOUND);
    av_vault_close(v);
    assert_int_equal(av_vault_open(&v, path_in("p.avv"), "pw", 2, err, sizeof(err)), AV_OK);
    assert_int_equal(av_vault_count(v), 0);
    av_vault_close(v);
    assert_string_equal(av_strerror(AV_ERR_AUTH), "wrong password or key");
    assert_string_equal(av_strerror(AV_ERR_CORRUPT), "data corrupt or tampered with");
}

static void kdf_cost_is_bounded(void **state)
{
    (void)state;
    /* a header asking for more than the maximum cost (max t=2, m=16 KiB,
     * 1 lane here) is refused, not run */
    static const uint32_t cost[3][3] = {{3, 16, 1}, {1, 32, 1}, {1, 16, 2}};
    static const char *names[3] = {"t.avv", "m.avv", "p.avv"};
    for (int i = 0; i < 3; i++) {
        av__vault_set_kdf(cost[i][0], cost[i][1], cost[i][2]);
        av_vault *v = create_pw(names[i]);
        av__vault_free(v);
        av__vault_set_kdf(1, 8, 1);
        assert_int_equal(open_rc(names[i], PW, PW_LEN), AV_ERR_CORRUPT);
        assert_non_null(strstr(g_err, "key-derivation"));
        av__vault_set_kdf_max(3, 32, 2);
        assert_int_equal(open_rc(names[i], PW, PW_LEN), AV_OK);
        av__vault_set_kdf_max(2, 16, 1);
    }
}

/* reseal_table recomputes the table tag with the data key and the
 * checksum: what only a holder of the key could do. */
static void reseal_table(uint8_t *b, size_t len, const uint8_t *dk)
{
    size_t t = len - TABLE_LEN - SUM_LEN;
    assert_int_equal(av__aead_seal(dk, b + t, b, t, NULL, 0, NULL, b + t + 12), AV_OK);
    fix_checksum(b, len);
}

static void entries_bound_beyond_the_table_tag(void **state)
{
    (void)state;
    /* With the key file, the test can unwrap the data key and forge a valid
     * table tag; the per-entry tags (name, times, index, header) must still
     * catch every change. */
    av_vault *v = NULL;
    assert_int_equal(av__vault_create(&v, path_in("k.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    set_ok(v, "a", "value-1");
    set_ok(v, "m", "value-2");
    set_ok(v, "z", "value-3");
    save_ok(v);
    av__vault_free(v);
    size_t kl, len, st[8], sz[8];
    uint8_t *key = read_all(path_in("k.key"), &kl);
    uint8_t *orig = read_all(path_in("k.avv"), &len);
    if (!key || !orig) { /* (and GCC -O2 then knows they are not NULL) */
        fail_msg("cannot read the vault or its key file");
        return;
    }
    assert_int_equal(entry_spans(orig, len, st, sz, 8), 3);
    uint8_t aad[4 + 40], dk[32];
    memcpy(aad, "AVK1", 4);
    memcpy(aad + 4, orig, 40);
    assert_int_equal(av__aead_open(key + 8, orig + HDR_LEN, aad, sizeof(aad), orig + HDR_LEN + 12,
                                   32, dk, orig + HDR_LEN + 44),
                     AV_OK);
    uint8_t *b = malloc(len);

    /* the forgery works: an unchanged file re-tagged opens */
    memcpy(b, orig, len);
    reseal_table(b, len, dk);
    write_all(path_in("k.avv"), b, len);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_OK);

    /* swapped entries */
    memcpy(b, orig, len);
    memcpy(b + st[0], orig + st[1], sz[1]);
    memcpy(b + st[0] + sz[1], orig + st[0], sz[0]);
    reseal_table(b, len, dk);
    write_all(path_in("k.avv"), b, len);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_CORRUPT);

    /* renamed entry (still sorted) */
    memcpy(b, orig, len);
    b[st[1] + 1] = 'n';
    reseal_table(b, len, dk);
    write_all(path_in("k.avv"), b, len);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_CORRUPT);
    assert_non_null(strstr(g_err, "failed authentication"));

    /* changed timestamps */
    for (size_t f = 0; f < 16; f += 8) {
        memcpy(b, orig, len);
        b[st[1] + 2 + f + 7] ^= 1;
        reseal_table(b, len, dk);
        write_all(path_in("k.avv"), b, len);
        assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_CORRUPT);
    }

    /* ciphertexts (same length) exchanged between entries */
    memcpy(b, orig, len);
    size_t body = 12 + 7 + 16, pre = 1 + 1 + 8 + 8 + 4;
    memcpy(b + st[0] + pre, orig + st[2] + pre, body);
    memcpy(b + st[2] + pre, orig + st[0] + pre, body);
    reseal_table(b, len, dk);
    write_all(path_in("k.avv"), b, len);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_CORRUPT);

    /* the last entry dropped, count fixed */
    size_t n = st[2];
    memcpy(b, orig, n);
    memcpy(b + n, orig + len - TABLE_LEN - SUM_LEN, TABLE_LEN + SUM_LEN);
    n += TABLE_LEN + SUM_LEN;
    put_be32(b + 40, 2);
    reseal_table(b, n, dk);
    write_all(path_in("k.avv"), b, n);
    assert_int_equal(open_rc("k.avv", NULL, 0), AV_ERR_CORRUPT);

    memset(dk, 0, sizeof(dk));
    free(b);
    free(orig);
    free(key);
}

static int group_setup(void **state)
{
    (void)state;
    /* cheap Argon2id for the suite; files may not ask for more */
    av__vault_set_kdf(1, 8, 1);
    av__vault_set_kdf_max(2, 16, 1);
    return 0;
}

/* ---- av__vault_update: a writer beside the CLI ------------------------- */

static void open_ok(av_vault **v, const char *rel)
{
    int rc = av__vault_open(v, path_in(rel), PW, PW_LEN, g_err, sizeof(g_err));
    if (rc != AV_OK)
        fail_msg("open: %s", g_err);
}

/* The daemon's handle writes one entry: what another writer (the CLI)
 * saved since the handle was read is kept, in the file and in the handle. */
static void update_keeps_other_writers_entries(void **state)
{
    (void)state;
    av_vault *cli = create_pw("v.avv");
    set_ok(cli, "refresh", "rt-1");
    save_ok(cli);
    av__vault_free(cli);
    av_vault *d = NULL;
    open_ok(&d, "v.avv");
    /* meanwhile, another writer adds an entry and changes nothing else */
    cli = NULL;
    open_ok(&cli, "v.avv");
    set_ok(cli, "other", "added-by-cli");
    save_ok(cli);
    av__vault_free(cli);
    assert_int_equal(av__vault_update(d, "refresh", "rt-2", 4, 100, g_err, sizeof(g_err)), AV_OK);
    check_value(d, "refresh", "rt-2");
    check_value(d, "other", "added-by-cli");
    av__vault_free(d);
    /* on disk: both, readable with the password */
    av_vault *r = NULL;
    open_ok(&r, "v.avv");
    assert_int_equal(av__vault_count(r), 2);
    check_value(r, "refresh", "rt-2");
    check_value(r, "other", "added-by-cli");
    av__vault_free(r);
    /* the lock file is the CLI's: PATH.lock, 0600, and not held any more */
    struct stat st;
    assert_int_equal(stat(path_in("v.avv.lock"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    int fd = open(path_in("v.avv.lock"), O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
    close(fd);
    assert_int_equal(count_tmp(), 0);
}

/* The public changes (av_vault_set, av_vault_remove, av_vault_passwd) on
 * a handle read before another writer saved keep that writer's entries:
 * they take the lock and read the file again (before, the handle's stale
 * copy overwrote the file). */
static void public_changes_keep_other_writers_entries(void **state)
{
    (void)state;
    av_vault *a = create_pw("w.avv");
    set_ok(a, "one", "1");
    save_ok(a);
    av__vault_free(a);
    av_vault *stale = NULL, *other = NULL;
    open_ok(&stale, "w.avv");
    open_ok(&other, "w.avv");
    assert_int_equal(av_vault_set(other, "two", "2", 1, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av_vault_set(stale, "three", "3", 1, g_err, sizeof(g_err)), AV_OK);
    check_value(stale, "two", "2"); /* the handle now holds what the file holds */
    assert_int_equal(av_vault_set(other, "four", "4", 1, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av_vault_remove(stale, "one", g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av_vault_set(other, "five", "5", 1, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av_vault_passwd(stale, "pw2", 3, g_err, sizeof(g_err)), AV_OK);
    av__vault_free(stale);
    /* |other| was read before the password changed: refused, file untouched */
    assert_int_equal(av_vault_set(other, "six", "6", 1, g_err, sizeof(g_err)), AV_ERR_STATE);
    assert_non_null(strstr(g_err, "re-keyed"));
    av__vault_free(other);
    av_vault *r = NULL;
    assert_int_equal(av__vault_open(&r, path_in("w.avv"), "pw2", 3, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av__vault_count(r), 4);
    check_value(r, "two", "2");
    check_value(r, "three", "3");
    check_value(r, "four", "4");
    check_value(r, "five", "5");
    av__vault_free(r);
    /* a writer holding the lock: AV_ERR_AGAIN after the wait, nothing changed */
    int fd = open(path_in("w.avv.lock"), O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
    assert_int_equal(av__vault_open(&r, path_in("w.avv"), "pw2", 3, g_err, sizeof(g_err)), AV_OK);
    av__vault_set_lock_wait(100);
    assert_int_equal(av_vault_remove(r, "two", g_err, sizeof(g_err)), AV_ERR_AGAIN);
    av__vault_set_lock_wait(0);
    assert_non_null(strstr(g_err, "another writer"));
    check_value(r, "two", "2");
    close(fd);
    av__vault_free(r);
}

/* reload: the handle takes what another writer saved, with its own key
 * material; a re-keyed or damaged file leaves the handle as it was. */
static void reload_reads_the_file_again(void **state)
{
    (void)state;
    av_vault *d = create_pw("v.avv");
    set_ok(d, "refresh", "rt-1");
    save_ok(d);
    av_vault *cli = NULL;
    open_ok(&cli, "v.avv");
    set_ok(cli, "refresh", "rt-from-cli");
    set_ok(cli, "other", "o");
    save_ok(cli);
    check_value(d, "refresh", "rt-1");
    assert_int_equal(av__vault_reload(d, g_err, sizeof(g_err)), AV_OK);
    check_value(d, "refresh", "rt-from-cli");
    check_value(d, "other", "o");
    assert_int_equal(av__vault_remove(cli, "other"), AV_OK);
    assert_int_equal(av__vault_change_password(cli, "another", 7, g_err, sizeof(g_err)), AV_OK);
    av__vault_free(cli);
    assert_int_equal(av__vault_reload(d, g_err, sizeof(g_err)), AV_ERR_STATE);
    assert_int_equal(av__vault_count(d), 2);
    check_value(d, "other", "o");
    av__vault_free(d);
}

/* A key-file vault is updated with the key it was opened with. */
static void update_key_file_vault(void **state)
{
    (void)state;
    av_vault *v = NULL;
    assert_int_equal(av__vault_create(&v, path_in("k.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    set_ok(v, "refresh", "rt-1");
    save_ok(v);
    assert_int_equal(av__vault_update(v, "refresh", "rt-2", 4, 0, g_err, sizeof(g_err)), AV_OK);
    av__vault_free(v);
    v = NULL;
    assert_int_equal(av__vault_open(&v, path_in("k.avv"), NULL, 0, g_err, sizeof(g_err)), AV_OK);
    check_value(v, "refresh", "rt-2");
    av__vault_free(v);
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* While another writer holds the lock, the update waits at most its bound
 * and fails with the file and the handle unchanged; once the lock is free
 * it succeeds. */
static void update_waits_a_bounded_time_for_the_lock(void **state)
{
    (void)state;
    av_vault *v = create_pw("v.avv");
    set_ok(v, "refresh", "rt-1");
    save_ok(v);
    size_t l1, l2;
    uint8_t *before = read_all(path_in("v.avv"), &l1);
    int fd = open(path_in("v.avv.lock"), O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
    double t0 = mono();
    assert_int_equal(av__vault_update(v, "refresh", "rt-2", 4, 200, g_err, sizeof(g_err)), AV_ERR_AGAIN);
    double took = mono() - t0;
    assert_true(took >= 0.19 && took < 1.5);
    assert_non_null(strstr(g_err, "v.avv.lock"));
    assert_null(strstr(g_err, "rt-"));
    check_value(v, "refresh", "rt-1");
    uint8_t *after = read_all(path_in("v.avv"), &l2);
    assert_int_equal(l1, l2);
    assert_memory_equal(before, after, l1);
    free(after);
    /* no wait at all: one try */
    t0 = mono();
    assert_int_equal(av__vault_update(v, "refresh", "rt-2", 4, 0, g_err, sizeof(g_err)), AV_ERR_AGAIN);
    assert_true(mono() - t0 < 0.1);
    close(fd); /* released */
    assert_int_equal(av__vault_update(v, "refresh", "rt-2", 4, 0, g_err, sizeof(g_err)), AV_OK);
    check_value(v, "refresh", "rt-2");
    free(before);
    av__vault_free(v);
}

/* A failed save leaves the file and the handle as they were (and the lock
 * released). */
static void update_save_failure_changes_nothing(void **state)
{
    (void)state;
    static const char *steps[] = {"write", "fsync", "rename"};
    av_vault *v = create_pw("v.avv");
    set_ok(v, "refresh", "rt-1");
    save_ok(v);
    size_t l1, l2;
    uint8_t *before = read_all(path_in("v.avv"), &l1);
    for (size_t k = 0; k < 3; k++) {
        g_fail_step = steps[k];
        av__vault_set_write_hook(fail_at, NULL);
        assert_int_equal(av__vault_update(v, "refresh", "rt-2", 4, 0, g_err, sizeof(g_err)), AV_ERR_IO);
        av__vault_set_write_hook(NULL, NULL);
        assert_non_null(strstr(g_err, path_in("v.avv")));
        check_value(v, "refresh", "rt-1");
        uint8_t *after = read_all(path_in("v.avv"), &l2);
        assert_int_equal(l1, l2);
        assert_memory_equal(before, after, l1);
        free(after);
        assert_int_equal(count_tmp(), 0);
    }
    assert_int_equal(av__vault_update(v, "refresh", "rt-2", 4, 0, g_err, sizeof(g_err)), AV_OK);
    check_value(v, "refresh", "rt-2");
    free(before);
    av__vault_free(v);
}

/* A vault re-keyed since the handle was opened (passwd), a damaged file, a
 * replaced key file, a bad lock file or a bad value: refused, nothing
 * written. */
static void update_refusals(void **state)
{
    (void)state;
    av_vault *v = create_pw("v.avv");
    set_ok(v, "refresh", "rt-1");
    save_ok(v);
    av_vault *other = NULL;
    open_ok(&other, "v.avv");
    assert_int_equal(av__vault_change_password(other, "new password", 12, g_err, sizeof(g_err)), AV_OK);
    av__vault_free(other);
    assert_int_equal(av__vault_update(v, "refresh", "rt-2", 4, 0, g_err, sizeof(g_err)), AV_ERR_STATE);
    assert_non_null(strstr(g_err, "re-keyed"));
    check_value(v, "refresh", "rt-1");
    other = NULL;
    assert_int_equal(av__vault_open(&other, path_in("v.avv"), "new password", 12, g_err, sizeof(g_err)), AV_OK);
    check_value(other, "refresh", "rt-1");
    av__vault_free(other);
    av__vault_free(v);

    /* damaged: one byte flipped */
    v = create_pw("d.avv");
    set_ok(v, "refresh", "rt-1");
    save_ok(v);
    size_t l;
    uint8_t *b = read_all(path_in("d.avv"), &l);
    b[l - 40] ^= 1;
    FILE *f = fopen(path_in("d.avv"), "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, l, f), l);
    fclose(f);
    free(b);
    assert_int_equal(av__vault_update(v, "refresh", "rt-2", 4, 0, g_err, sizeof(g_err)), AV_ERR_CORRUPT);
    check_value(v, "refresh", "rt-1");
    /* invalid name and empty value */
    assert_int_equal(av__vault_update(v, "bad name", "x", 1, 0, g_err, sizeof(g_err)), AV_ERR_INVALID);
    assert_int_equal(av__vault_update(v, "refresh", "", 0, 0, g_err, sizeof(g_err)), AV_ERR_INVALID);
    assert_int_equal(av__vault_update(v, "refresh", "x", 1, -1, g_err, sizeof(g_err)), AV_ERR_INVALID);
    av__vault_free(v);

    /* key-file vault whose key file was replaced by another vault's */
    av_vault *k1 = NULL, *k2 = NULL;
    assert_int_equal(av__vault_create(&k1, path_in("k1.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(av__vault_create(&k2, path_in("k2.avv"), NULL, 0, 1, g_err, sizeof(g_err)), AV_OK);
    assert_int_equal(rename(path_in("k2.avv"), path_in("k1.avv")), 0);
    assert_int_equal(av__vault_update(k1, "refresh", "rt", 2, 0, g_err, sizeof(g_err)), AV_ERR_AUTH);
    av__vault_free(k1);
    av__vault_free(k2);

    /* a lock file open to others is refused like the CLI refuses it */
    v = create_pw("m.avv");
    int fd = open(path_in("m.avv.lock"), O_RDWR | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(fchmod(fd, 0644), 0);
    close(fd);
    assert_int_equal(av__vault_update(v, "refresh", "rt", 2, 0, g_err, sizeof(g_err)), AV_ERR_IO);
    assert_non_null(strstr(g_err, "mode 0600"));
    assert_int_equal(av__vault_count(v), 0);
    av__vault_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(update_keeps_other_writers_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(public_changes_keep_other_writers_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(update_key_file_vault, setup, teardown),
        cmocka_unit_test_setup_teardown(reload_reads_the_file_again, setup, teardown),
        cmocka_unit_test_setup_teardown(update_waits_a_bounded_time_for_the_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(update_save_failure_changes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(update_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(kdf_cost_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(every_save_changes_all_ciphertext, setup, teardown),
        cmocka_unit_test_setup_teardown(wrong_password, setup, teardown),
        cmocka_unit_test_setup_teardown(bit_flip_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(truncated_at_every_length, setup, teardown),
        cmocka_unit_test_setup_teardown(appended_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(reordered_removed_replayed_entries, setup, teardown),
        cmocka_unit_test_setup_teardown(not_a_vault_too_large_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(file_modes_0600, setup, teardown),
        cmocka_unit_test_setup_teardown(atomic_save_failure_keeps_old_file, setup, teardown),
        cmocka_unit_test_setup_teardown(crash_during_write_keeps_old_file, setup, teardown),
        cmocka_unit_test_setup_teardown(stale_tmp_files_only, setup, teardown),
        cmocka_unit_test_setup_teardown(refuse_like_ssh, setup, teardown),
        cmocka_unit_test_setup_teardown(no_password_key_file, setup, teardown),
        cmocka_unit_test_setup_teardown(create_refuses_existing_and_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(limits, setup, teardown),
        cmocka_unit_test_setup_teardown(change_password, setup, teardown),
        cmocka_unit_test_setup_teardown(public_api, setup, teardown),
        cmocka_unit_test_setup_teardown(entries_bound_beyond_the_table_tag, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
