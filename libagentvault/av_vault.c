/* av_vault.c - the encrypted secret store: file format, key wrapping and
 * atomic saves. The format is described in av_vault.h.
 *
 * One file (over the 1,200-line guide) because it is one concept: the
 * reader, the writer and the checks of the file (modes, owner, symlinks,
 * leftover temporaries) share the layout's constants and must not drift
 * apart. */
#include "av_vault.h"
#include "av_err.h"

#include <argon2.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "av_crypto.h"
#include "av_mem.h"

#define MAGIC "AVVAULT\x1a"
#define MAGIC_LEN 8
#define FORMAT_VERSION 1
#define MODE_PASSWORD 1
#define MODE_KEYFILE 2
#define KDF_NONE 0
#define KDF_ARGON2ID 1
#define SALT_LEN 16
#define HDR_LEN 48
#define HDR_KEY_LEN 40 /* magic .. salt: what the KEK depends on */
#define WRAP_LEN (AV_AEAD_NONCE_LEN + AV_AEAD_KEY_LEN + AV_AEAD_TAG_LEN)
/* name_len, created, updated, value_len, nonce, tag (+ name + value) */
#define ENTRY_FIXED (1 + 8 + 8 + 4 + AV_AEAD_NONCE_LEN + AV_AEAD_TAG_LEN)
#define ENTRY_PREFIX_MAX (1 + AV_VAULT_NAME_MAX + 8 + 8 + 4)
#define TABLE_LEN (AV_AEAD_NONCE_LEN + AV_AEAD_TAG_LEN)
#define SUM_LEN AV_SHA256_LEN
#define FILE_MIN (HDR_LEN + WRAP_LEN + TABLE_LEN + SUM_LEN)
#define KEYFILE_MAGIC "AVVKEY1\n"
#define KEYFILE_LEN (MAGIC_LEN + AV_AEAD_KEY_LEN + AV_SHA256_LEN)

/* AAD labels; the table's AAD starts with MAGIC, distinct from both. */
#define AAD_KEY "AVK1"
#define AAD_ENTRY "AVE1"

typedef struct vault_entry {
    char name[AV_VAULT_NAME_MAX + 1];
    int64_t created, updated;
    av_secret *value;
} vault_entry;

struct av_vault {
    char *path;
    char *key_path; /* key-file vaults only */
    uint8_t mode;
    uint32_t t_cost, m_cost, lanes;
    uint8_t salt[SALT_LEN];
    uint8_t kek[AV_AEAD_KEY_LEN]; /* wraps the data key; wiped on free */
    vault_entry *e;
    size_t n, cap;
    size_t file_size; /* size of the vault once serialized */
};

/* A checked header. */
typedef struct vault_hdr {
    uint8_t mode;
    uint32_t t_cost, m_cost, lanes, count;
    const uint8_t *salt;
} vault_hdr;

static uint32_t g_t_cost = 3, g_m_cost = 64 * 1024, g_lanes = 1;
static uint32_t g_t_max = 16, g_m_max = 1024 * 1024, g_lanes_max = 16;
static av__vault_write_hook g_hook;
static void *g_hook_ud;

void av__vault_set_kdf(uint32_t t_cost, uint32_t m_cost_kib, uint32_t lanes)
{
    g_t_cost = t_cost ? t_cost : 3;
    g_m_cost = m_cost_kib ? m_cost_kib : 64 * 1024;
    g_lanes = lanes ? lanes : 1;
}

void av__vault_set_kdf_max(uint32_t t_cost, uint32_t m_cost_kib, uint32_t lanes)
{
    g_t_max = t_cost ? t_cost : 16;
    g_m_max = m_cost_kib ? m_cost_kib : 1024 * 1024;
    g_lanes_max = lanes ? lanes : 16;
}

void av__vault_set_write_hook(av__vault_write_hook hook, void *user_data)
{
    g_hook = hook;
    g_hook_ud = user_data;
}

/* hook_fails asks the test hook whether |step| should fail. */
static int hook_fails(const char *step)
{
    if (g_hook && g_hook(step, g_hook_ud) != 0) {
        errno = EIO;
        return 1;
    }
    return 0;
}

/* ---- byte order --------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put64(uint8_t *p, int64_t sv)
{
    uint64_t v = (uint64_t)sv;
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

/* ---- names and paths ---------------------------------------------------- */

int av__vault_name_valid(const char *name)
{
    if (!name)
        return 0;
    size_t n = 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (n >= AV_VAULT_NAME_MAX)
            return 0;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return n > 0;
}

/* key_path_for maps "dir/vault.avv" to "dir/vault.key" and any other name
 * to "<name>.key". */
static char *key_path_for(const char *path)
{
    size_t n = strlen(path);
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t keep = n;
    if (n >= 4 && strcmp(path + n - 4, ".avv") == 0 && path + n - 4 > base)
        keep = n - 4;
    char *k = av__malloc(keep + 5);
    if (!k)
        return NULL;
    memcpy(k, path, keep);
    memcpy(k + keep, ".key", 5);
    return k;
}

/* ---- files -------------------------------------------------------------- */

/* read_file reads all of |path| (at most |max| bytes) into a new buffer.
 * |what| names the file in messages. A private file (|private_file|) is
 * held to what ssh asks of a private key: it is refused when group or
 * others have any access to it, when another user owns it, or when the last
 * component of |path| is a symbolic link (O_NOFOLLOW; the checks are on the
 * opened descriptor, so nothing changes between check and read). Returns
 * AV_ERR_NOTFOUND, AV_ERR_LIMIT, AV_ERR_IO or AV_ERR_NOMEM. */
static int read_file(const char *path, const char *what, size_t max, int private_file,
                     uint8_t **out, size_t *out_len, char *err, size_t err_len)
{
    struct stat st;
    uint8_t *buf = NULL;
    size_t off = 0;
    int rc = AV_ERR_IO;
    int fd = open(path, O_RDONLY | O_CLOEXEC | (private_file ? O_NOFOLLOW : 0));
    if (fd < 0) {
        if (errno == ENOENT) {
            av__errf(err, err_len, "%s: no such %s", path, what);
            return AV_ERR_NOTFOUND;
        }
        if (errno == ELOOP && lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
            av__errf(err, err_len,
                    "%s: the %s is a symbolic link: refusing it (name the file itself, or replace the link "
                    "with the file)",
                    path, what);
            return AV_ERR_IO;
        }
        av__errf(err, err_len, "%s: cannot open %s: %s", path, what, strerror(errno));
        return AV_ERR_IO;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        av__errf(err, err_len, "%s: %s is not a regular file", path, what);
        goto out;
    }
    if (private_file && st.st_uid != geteuid()) {
        av__errf(err, err_len,
                "%s: the %s is owned by uid %u, not by uid %u that runs agentvault: refusing it "
                "(chown %u %s, then chmod 600 %s)",
                path, what, (unsigned)st.st_uid, (unsigned)geteuid(), (unsigned)geteuid(), path, path);
        goto out;
    }
    if (private_file && (st.st_mode & 077)) {
        av__errf(err, err_len,
                "%s: permissions %04o are too open: the %s must not be accessible by group "
                "or others (chmod 600 %s)",
                path, (unsigned)(st.st_mode & 07777), what, path);
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        av__errf(err, err_len, "%s: %s is larger than the %zu-byte limit", path, what, max);
        rc = AV_ERR_LIMIT;
        goto out;
    }
    /* One byte more than expected tells a file that grew meanwhile. */
    size_t cap = (size_t)st.st_size + 1;
    buf = av__malloc(cap);
    if (!buf) {
        rc = AV_ERR_NOMEM;
        goto out;
    }
    while (off < cap) {
        ssize_t r = read(fd, buf + off, cap - off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            av__errf(err, err_len, "%s: cannot read %s: %s", path, what, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        off += (size_t)r;
    }
    if (off != (size_t)st.st_size) {
        av__errf(err, err_len, "%s: %s changed while being read", path, what);
        goto out;
    }
    close(fd);
    *out = buf;
    *out_len = off;
    return AV_OK;
out:
    if (buf) {
        av__wipe(buf, cap);
        av__free(buf);
    }
    close(fd);
    return rc;
}

/* fsync_dir makes a rename in |path|'s directory durable. */
static int fsync_dir(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (!slash) {
        memcpy(dir, ".", 2);
    } else if (n == 0) {
        memcpy(dir, "/", 2);
    } else {
        if (n >= sizeof(dir))
            return -1;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* rename_noreplace moves |tmp| to |path| unless |path| exists (EEXIST). */
static int rename_noreplace(const char *tmp, const char *path)
{
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    /* File systems without RENAME_NOREPLACE: link() fails on EEXIST too. */
    if (link(tmp, path) != 0)
        return -1;
    unlink(tmp);
    return 0;
}

/* Temporary files are "<file>.tmp-<pid>-<8 hex digits>" next to the file.
 * One a writer left behind (killed mid-save) is removed by the next save of
 * the same file when its writer's process no longer exists or when it is
 * more than TMP_STALE_SECONDS old (a save takes milliseconds; the age also
 * covers a pid reused since). A live writer's file is left alone, so two
 * concurrent saves never remove each other's. Only regular files the
 * caller owns are removed; anything else with such a name stays. */
#define TMP_STALE_SECONDS 3600

/* tmp_writer_pid returns the pid in |name| when it is a temporary file of
 * |base| (else 0). */
static long tmp_writer_pid(const char *name, const char *base, size_t base_len)
{
    if (strncmp(name, base, base_len) != 0 || strncmp(name + base_len, ".tmp-", 5) != 0)
        return 0;
    const char *p = name + base_len + 5;
    long pid = 0;
    size_t nd = 0;
    for (; *p >= '0' && *p <= '9' && nd < 10; p++, nd++)
        pid = pid * 10 + (*p - '0');
    if (nd == 0 || *p != '-')
        return 0;
    p++;
    for (int i = 0; i < 8; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return 0;
    return p[8] == '\0' ? pid : 0;
}

static void remove_stale_tmp(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t n = slash ? (size_t)(slash - path) : 0;
    if (!slash)
        memcpy(dir, ".", 2);
    else if (n == 0)
        memcpy(dir, "/", 2);
    else if (n < sizeof(dir)) {
        memcpy(dir, path, n);
        dir[n] = '\0';
    } else
        return;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return;
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return;
    }
    size_t base_len = strlen(base);
    time_t now = time(NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long pid = tmp_writer_pid(e->d_name, base, base_len);
        struct stat st;
        if (pid <= 0 || fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
            st.st_uid != geteuid())
            continue;
        int gone = pid != (long)getpid() && (pid > INT_MAX || (kill((pid_t)pid, 0) != 0 && errno == ESRCH));
        if (gone || now - st.st_mtime > TMP_STALE_SECONDS)
            unlinkat(dfd, e->d_name, 0);
    }
    closedir(d);
}

/* write_file_atomic writes |data| to |path| (mode 0600) through an O_EXCL
 * temporary file in the same directory: write, fsync, rename, fsync of the
 * directory. The file at |path| is the old one or the new one, never a
 * partial one. With |noreplace| an existing |path| is AV_ERR_STATE. */
static int write_file_atomic(const char *path, const void *data, size_t len, int noreplace,
                             char *err, size_t err_len)
{
    char tmp[4200];
    uint8_t rnd[4] = {0};
    remove_stale_tmp(path);
    if (av__crypto_random(rnd, sizeof(rnd)) != AV_OK) {
        av__errf(err, err_len, "%s: no random bytes for a temporary name", path);
        return AV_ERR_TLS;
    }
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp-%ld-%02x%02x%02x%02x", path, (long)getpid(),
                         rnd[0], rnd[1], rnd[2], rnd[3]) >= sizeof(tmp)) {
        av__errf(err, err_len, "%s: path too long", path);
        return AV_ERR_IO;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        av__errf(err, err_len, "%s: cannot create %s: %s", path, tmp, strerror(errno));
        return AV_ERR_IO;
    }
    const uint8_t *p = data;
    size_t off = 0, end = len;
    const char *step = "write";
    if (fchmod(fd, 0600) != 0)
        goto err;
    /* The test hook runs halfway through, with a partial file on disk. */
    for (int half = 0; half < 2; half++) {
        end = half ? len : len / 2;
        while (off < end) {
            ssize_t w = write(fd, p + off, end - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                if (w == 0)
                    errno = EIO;
                goto err;
            }
            off += (size_t)w;
        }
        if (!half && hook_fails("write"))
            goto err;
    }
    step = "fsync";
    if (hook_fails("fsync") || fsync(fd) != 0)
        goto err;
    step = "close";
    if (close(fd) != 0) {
        fd = -1;
        goto err;
    }
    fd = -1;
    step = "rename";
    if (hook_fails("rename"))
        goto err;
    if (noreplace ? rename_noreplace(tmp, path) != 0 : rename(tmp, path) != 0) {
        if (noreplace && errno == EEXIST) {
            unlink(tmp);
            av__errf(err, err_len, "%s already exists", path);
            return AV_ERR_STATE;
        }
        goto err;
    }
    if (fsync_dir(path) != 0) {
        /* The new file is in place; only its durability is unknown. */
        av__errf(err, err_len, "%s: written, but syncing its directory failed: %s", path,
                strerror(errno));
        return AV_ERR_IO;
    }
    return AV_OK;
err:
    av__errf(err, err_len, "%s: cannot save (%s): %s; the previous file is unchanged", path, step,
            strerror(errno));
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return AV_ERR_IO;
}

/* ---- key file ----------------------------------------------------------- */

/* keyfile_write creates the key file holding |key| (never replacing one). */
static int keyfile_write(const char *path, const uint8_t key[AV_AEAD_KEY_LEN], char *err,
                         size_t err_len)
{
    uint8_t buf[KEYFILE_LEN];
    memcpy(buf, KEYFILE_MAGIC, MAGIC_LEN);
    memcpy(buf + MAGIC_LEN, key, AV_AEAD_KEY_LEN);
    int rc = av__crypto_sha256(buf, MAGIC_LEN + AV_AEAD_KEY_LEN, buf + MAGIC_LEN + AV_AEAD_KEY_LEN);
    if (rc == AV_OK)
        rc = write_file_atomic(path, buf, sizeof(buf), 1, err, err_len);
    else
        av__errf(err, err_len, "%s: cannot hash the key", path);
    av__wipe(buf, sizeof(buf));
    return rc;
}

/* keyfile_read loads a key file; AV_ERR_CORRUPT when it is malformed. */
static int keyfile_read(const char *path, uint8_t key[AV_AEAD_KEY_LEN], char *err, size_t err_len)
{
    uint8_t *buf = NULL, sum[AV_SHA256_LEN];
    size_t len = 0;
    int rc = read_file(path, "key file", KEYFILE_LEN * 4, 1, &buf, &len, err, err_len);
    if (rc != AV_OK)
        return rc;
    if (len != KEYFILE_LEN || memcmp(buf, KEYFILE_MAGIC, MAGIC_LEN) != 0) {
        av__errf(err, err_len, "%s: not an agentvault key file (%s)", path,
                len != KEYFILE_LEN ? "wrong size" : "bad magic");
        rc = AV_ERR_CORRUPT;
    } else if ((rc = av__crypto_sha256(buf, MAGIC_LEN + AV_AEAD_KEY_LEN, sum)) != AV_OK) {
        av__errf(err, err_len, "%s: cannot hash the key", path);
    } else if (memcmp(sum, buf + MAGIC_LEN + AV_AEAD_KEY_LEN, AV_SHA256_LEN) != 0) {
        av__errf(err, err_len, "%s: key file is damaged (checksum mismatch)", path);
        rc = AV_ERR_CORRUPT;
    } else {
        memcpy(key, buf + MAGIC_LEN, AV_AEAD_KEY_LEN);
    }
    av__wipe(buf, len);
    av__free(buf);
    return rc;
}

/* ---- the format --------------------------------------------------------- */

/* derive_kek runs Argon2id over the password. */
static int derive_kek(uint32_t t, uint32_t m, uint32_t lanes, const void *pw, size_t pw_len,
                      const uint8_t salt[SALT_LEN], uint8_t kek[AV_AEAD_KEY_LEN], const char *path,
                      char *err, size_t err_len)
{
    static const uint8_t empty = 0;
    int r = argon2id_hash_raw(t, m, lanes, pw_len ? pw : &empty, pw_len, salt, SALT_LEN, kek,
                              AV_AEAD_KEY_LEN);
    if (r == ARGON2_OK)
        return AV_OK;
    av__wipe(kek, AV_AEAD_KEY_LEN);
    av__errf(err, err_len, "%s: key derivation failed: %s", path, argon2_error_message(r));
    return r == ARGON2_MEMORY_ALLOCATION_ERROR ? AV_ERR_NOMEM : AV_ERR_INVALID;
}

/* write_header fills the 48-byte header for |count| entries. */
static void write_header(const av_vault *v, uint8_t *h, uint32_t count)
{
    memset(h, 0, HDR_LEN);
    memcpy(h, MAGIC, MAGIC_LEN);
    put16(h + 8, FORMAT_VERSION);
    h[10] = v->mode;
    if (v->mode == MODE_PASSWORD) {
        h[11] = KDF_ARGON2ID;
        put32(h + 12, v->t_cost);
        put32(h + 16, v->m_cost);
        put32(h + 20, v->lanes);
        memcpy(h + 24, v->salt, SALT_LEN);
    }
    put32(h + 40, count);
}

/* entry_size is the serialized size of an entry. */
static size_t entry_size(size_t name_len, size_t value_len)
{
    return ENTRY_FIXED + name_len + value_len;
}

/* entry_aad builds the AAD of entry |index| whose bytes start at |rec|
 * (name_len .. value_len, |prefix_len| bytes). */
static size_t entry_aad(uint8_t *aad, const uint8_t *hdr, uint32_t index, const uint8_t *rec,
                        size_t prefix_len)
{
    memcpy(aad, AAD_ENTRY, 4);
    memcpy(aad + 4, hdr, HDR_LEN);
    put32(aad + 4 + HDR_LEN, index);
    memcpy(aad + 8 + HDR_LEN, rec, prefix_len);
    return 8 + HDR_LEN + prefix_len;
}

/* vault_serialize builds the file image with a fresh data key. */
static int vault_serialize(const av_vault *v, uint8_t **out, size_t *out_len, char *err,
                           size_t err_len)
{
    size_t len = v->file_size;
    uint8_t dk[AV_AEAD_KEY_LEN], aad[8 + HDR_LEN + ENTRY_PREFIX_MAX];
    uint8_t *b = av__calloc(1, len);
    if (!b)
        return AV_ERR_NOMEM;
    int rc = av__crypto_random(dk, sizeof(dk));
    if (rc != AV_OK)
        goto out;
    write_header(v, b, (uint32_t)v->n);
    /* wrapped data key */
    uint8_t *w = b + HDR_LEN;
    memcpy(aad, AAD_KEY, 4);
    memcpy(aad + 4, b, HDR_KEY_LEN);
    if ((rc = av__crypto_random(w, AV_AEAD_NONCE_LEN)) != AV_OK ||
        (rc = av__aead_seal(v->kek, w, aad, 4 + HDR_KEY_LEN, dk, AV_AEAD_KEY_LEN,
                            w + AV_AEAD_NONCE_LEN, w + AV_AEAD_NONCE_LEN + AV_AEAD_KEY_LEN)) !=
            AV_OK)
        goto out;
    size_t off = HDR_LEN + WRAP_LEN;
    for (size_t i = 0; i < v->n; i++) {
        const vault_entry *e = &v->e[i];
        size_t nl = strlen(e->name), vl = av__secret_len(e->value);
        uint8_t *rec = b + off;
        rec[0] = (uint8_t)nl;
        memcpy(rec + 1, e->name, nl);
        put64(rec + 1 + nl, e->created);
        put64(rec + 9 + nl, e->updated);
        put32(rec + 17 + nl, (uint32_t)vl);
        size_t prefix = 21 + nl;
        uint8_t *nonce = rec + prefix, *ct = nonce + AV_AEAD_NONCE_LEN, *tag = ct + vl;
        size_t alen = entry_aad(aad, b, (uint32_t)i, rec, prefix);
        if ((rc = av__crypto_random(nonce, AV_AEAD_NONCE_LEN)) != AV_OK ||
            (rc = av__aead_seal(dk, nonce, aad, alen, av__secret_data(e->value), vl, ct, tag)) !=
                AV_OK)
            goto out;
        off += entry_size(nl, vl);
    }
    /* table tag over everything so far */
    uint8_t *t = b + off;
    if ((rc = av__crypto_random(t, AV_AEAD_NONCE_LEN)) != AV_OK ||
        (rc = av__aead_seal(dk, t, b, off, NULL, 0, NULL, t + AV_AEAD_NONCE_LEN)) != AV_OK)
        goto out;
    off += TABLE_LEN;
    if ((rc = av__crypto_sha256(b, off, b + off)) != AV_OK)
        goto out;
    off += SUM_LEN;
    if (off != len) { /* file_size bookkeeping is wrong: never write */
        rc = AV_ERR_STATE;
        goto out;
    }
out:
    av__wipe(dk, sizeof(dk));
    if (rc != AV_OK) {
        av__errf(err, err_len, "%s: cannot encrypt the vault: %s", v->path, av_strerror(rc));
        av__free(b);
        return rc;
    }
    *out = b;
    *out_len = len;
    return AV_OK;
}

/* check_header validates the fixed header against the file length. */
static int check_header(const uint8_t *b, size_t len, vault_hdr *h, const char *path, char *err,
                        size_t err_len)
{
    if (len == 0) {
        av__errf(err, err_len, "%s: vault file is empty", path);
        return AV_ERR_CORRUPT;
    }
    if (memcmp(b, MAGIC, len < MAGIC_LEN ? len : MAGIC_LEN) != 0) {
        av__errf(err, err_len, "%s: not an agentvault vault file (bad magic)", path);
        return AV_ERR_CORRUPT;
    }
    if (len >= MAGIC_LEN + 2 && get16(b + 8) != FORMAT_VERSION) {
        av__errf(err, err_len, "%s: unsupported vault format version %u", path, get16(b + 8));
        return AV_ERR_CORRUPT;
    }
    if (len < FILE_MIN) {
        av__errf(err, err_len, "%s: vault file is truncated (%zu bytes)", path, len);
        return AV_ERR_CORRUPT;
    }
    static const uint8_t zero[SALT_LEN];
    h->mode = b[10];
    h->t_cost = get32(b + 12);
    h->m_cost = get32(b + 16);
    h->lanes = get32(b + 20);
    h->salt = b + 24;
    h->count = get32(b + 40);
    int ok;
    if (h->mode == MODE_PASSWORD)
        ok = b[11] == KDF_ARGON2ID && h->t_cost >= 1 && h->t_cost <= g_t_max && h->lanes >= 1 &&
             h->lanes <= g_lanes_max && h->m_cost >= 8 * h->lanes && h->m_cost <= g_m_max;
    else
        ok = h->mode == MODE_KEYFILE && b[11] == KDF_NONE && h->t_cost == 0 && h->m_cost == 0 &&
             h->lanes == 0 && memcmp(h->salt, zero, SALT_LEN) == 0;
    if (!ok) {
        av__errf(err, err_len, "%s: vault header is damaged (mode or key-derivation fields)", path);
        return AV_ERR_CORRUPT;
    }
    if (get32(b + 44) != 0 || h->count > AV_VAULT_ENTRIES_MAX) {
        av__errf(err, err_len, "%s: vault header is damaged (entry count or reserved field)", path);
        return AV_ERR_CORRUPT;
    }
    return AV_OK;
}

/* check_layout walks the entries (bounds only), requires the file to end
 * exactly after table and checksum, and verifies the checksum. Sets
 * *table_off. */
static int check_layout(const uint8_t *b, size_t len, const vault_hdr *h, size_t *table_off,
                        const char *path, char *err, size_t err_len)
{
    size_t off = HDR_LEN + WRAP_LEN;
    for (uint32_t i = 0; i < h->count; i++) {
        if (len - off < 1)
            goto truncated;
        size_t nl = b[off];
        if (nl == 0 || nl > AV_VAULT_NAME_MAX) {
            av__errf(err, err_len, "%s: vault file is damaged (entry %u: bad name length)", path,
                    (unsigned)i);
            return AV_ERR_CORRUPT;
        }
        if (len - off < 21 + nl)
            goto truncated;
        uint32_t vl = get32(b + off + 17 + nl);
        if (vl == 0 || vl > AV_VAULT_VALUE_MAX) {
            av__errf(err, err_len, "%s: vault file is damaged (entry %u: bad value length)", path,
                    (unsigned)i);
            return AV_ERR_CORRUPT;
        }
        if (len - off < entry_size(nl, vl))
            goto truncated;
        off += entry_size(nl, vl);
    }
    if (len - off < TABLE_LEN + SUM_LEN)
        goto truncated;
    if (len - off > TABLE_LEN + SUM_LEN) {
        av__errf(err, err_len, "%s: vault file is damaged (%zu unexpected bytes after the end)", path,
                len - off - (TABLE_LEN + SUM_LEN));
        return AV_ERR_CORRUPT;
    }
    uint8_t sum[AV_SHA256_LEN];
    int rc = av__crypto_sha256(b, len - SUM_LEN, sum);
    if (rc != AV_OK) {
        av__errf(err, err_len, "%s: cannot hash the vault file", path);
        return rc;
    }
    if (memcmp(sum, b + len - SUM_LEN, SUM_LEN) != 0) {
        av__errf(err, err_len, "%s: vault file is damaged (checksum mismatch)", path);
        return AV_ERR_CORRUPT;
    }
    *table_off = off;
    return AV_OK;
truncated:
    av__errf(err, err_len, "%s: vault file is truncated", path);
    return AV_ERR_CORRUPT;
}

static void entries_free(av_vault *v)
{
    for (size_t i = 0; i < v->n; i++) {
        av__secret_free(v->e[i].value);
        av__wipe(&v->e[i], sizeof(v->e[i]));
    }
    av__free(v->e);
    v->e = NULL;
    v->n = v->cap = 0;
}

/* vault_decode authenticates and decrypts the entries of a checked file
 * into |v| (whose KEK is set). */
static int vault_decode(av_vault *v, const uint8_t *b, size_t len, const vault_hdr *h,
                        size_t table_off, char *err, size_t err_len)
{
    uint8_t dk[AV_AEAD_KEY_LEN], aad[8 + HDR_LEN + ENTRY_PREFIX_MAX];
    uint8_t *plain = NULL;
    int rc;
    const uint8_t *w = b + HDR_LEN;
    memcpy(aad, AAD_KEY, 4);
    memcpy(aad + 4, b, HDR_KEY_LEN);
    rc = av__aead_open(v->kek, w, aad, 4 + HDR_KEY_LEN, w + AV_AEAD_NONCE_LEN, AV_AEAD_KEY_LEN, dk,
                       w + AV_AEAD_NONCE_LEN + AV_AEAD_KEY_LEN);
    if (rc == AV_ERR_AUTH) {
        if (v->mode == MODE_PASSWORD)
            av__errf(err, err_len, "%s: wrong master password", v->path);
        else
            av__errf(err, err_len, "%s: key file %s does not belong to this vault", v->path,
                    v->key_path);
        return AV_ERR_AUTH;
    }
    if (rc != AV_OK) {
        av__errf(err, err_len, "%s: cannot decrypt: %s", v->path, av_strerror(rc));
        return rc;
    }
    const uint8_t *t = b + table_off;
    rc = av__aead_open(dk, t, b, table_off, NULL, 0, NULL, t + AV_AEAD_NONCE_LEN);
    if (rc != AV_OK) {
        av__errf(err, err_len,
                "%s: vault integrity check failed: entries were altered, removed or reordered",
                v->path);
        rc = rc == AV_ERR_AUTH ? AV_ERR_CORRUPT : rc;
        goto out;
    }
    if (h->count) {
        v->e = av__calloc(h->count, sizeof(*v->e));
        plain = av__malloc(AV_VAULT_VALUE_MAX);
        if (!v->e || !plain) {
            rc = AV_ERR_NOMEM;
            goto out;
        }
        v->cap = h->count;
    }
    size_t off = HDR_LEN + WRAP_LEN;
    for (uint32_t i = 0; i < h->count; i++) {
        const uint8_t *rec = b + off;
        size_t nl = rec[0];
        uint32_t vl = get32(rec + 17 + nl);
        size_t prefix = 21 + nl;
        vault_entry *e = &v->e[v->n];
        memcpy(e->name, rec + 1, nl);
        e->name[nl] = '\0';
        e->created = get64(rec + 1 + nl);
        e->updated = get64(rec + 9 + nl);
        if (!av__vault_name_valid(e->name) || (v->n && strcmp(v->e[v->n - 1].name, e->name) >= 0)) {
            av__errf(err, err_len, "%s: vault file is damaged (entry %u: bad or unsorted name)",
                    v->path, (unsigned)i);
            rc = AV_ERR_CORRUPT;
            goto out;
        }
        const uint8_t *nonce = rec + prefix, *ct = nonce + AV_AEAD_NONCE_LEN, *tag = ct + vl;
        size_t alen = entry_aad(aad, b, i, rec, prefix);
        rc = av__aead_open(dk, nonce, aad, alen, ct, vl, plain, tag);
        if (rc != AV_OK) {
            av__errf(err, err_len, "%s: vault entry %u (%s) failed authentication", v->path,
                    (unsigned)i, e->name);
            rc = rc == AV_ERR_AUTH ? AV_ERR_CORRUPT : rc;
            goto out;
        }
        e->value = av__secret_new(plain, vl);
        av__wipe(plain, vl);
        if (!e->value) {
            rc = AV_ERR_NOMEM;
            goto out;
        }
        v->n++;
        off += entry_size(nl, vl);
    }
    v->file_size = len;
    rc = AV_OK;
out:
    av__wipe(dk, sizeof(dk));
    if (plain) {
        av__wipe(plain, AV_VAULT_VALUE_MAX);
        av__free(plain);
    }
    if (rc != AV_OK)
        entries_free(v);
    return rc;
}

/* ---- lifecycle ---------------------------------------------------------- */

static av_vault *vault_new(const char *path)
{
    av_vault *v = av__calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    v->path = av__strdup(path);
    if (!v->path) {
        av__free(v);
        return NULL;
    }
    v->file_size = FILE_MIN;
    return v;
}

void av__vault_free(av_vault *v)
{
    if (!v)
        return;
    entries_free(v);
    av__free(v->path);
    av__free(v->key_path);
    av__wipe(v, sizeof(*v));
    av__free(v);
}

int av__vault_probe(const char *path, char *err, size_t err_len)
{
    uint8_t *b = NULL;
    size_t len = 0, table_off = 0;
    vault_hdr h;
    if (!path)
        return AV_ERR_INVALID;
    int rc = read_file(path, "vault", AV_VAULT_FILE_MAX, 1, &b, &len, err, err_len);
    if (rc != AV_OK)
        return rc;
    rc = check_header(b, len, &h, path, err, err_len);
    if (rc == AV_OK)
        rc = check_layout(b, len, &h, &table_off, path, err, err_len);
    if (rc == AV_OK)
        rc = h.mode == MODE_PASSWORD ? 1 : 0;
    av__free(b);
    return rc;
}

int av__vault_open(av_vault **out, const char *path, const void *pw, size_t pw_len, char *err,
                   size_t err_len)
{
    uint8_t *b = NULL;
    size_t len = 0, table_off = 0;
    vault_hdr h;
    av_vault *v = NULL;
    *out = NULL;
    if (!path || (pw_len && !pw) || pw_len > AV_VAULT_PASSWORD_MAX) {
        av__errf(err, err_len, "%s: invalid arguments", path ? path : "vault");
        return AV_ERR_INVALID;
    }
    int rc = read_file(path, "vault", AV_VAULT_FILE_MAX, 1, &b, &len, err, err_len);
    if (rc != AV_OK)
        return rc;
    if ((rc = check_header(b, len, &h, path, err, err_len)) != AV_OK ||
        (rc = check_layout(b, len, &h, &table_off, path, err, err_len)) != AV_OK)
        goto out;
    rc = AV_ERR_NOMEM;
    if (!(v = vault_new(path)))
        goto out;
    v->mode = h.mode;
    if (h.mode == MODE_PASSWORD) {
        if (!pw) {
            av__errf(err, err_len, "%s: the vault needs its master password", path);
            rc = AV_ERR_AUTH;
            goto out;
        }
        v->t_cost = h.t_cost;
        v->m_cost = h.m_cost;
        v->lanes = h.lanes;
        memcpy(v->salt, h.salt, SALT_LEN);
        rc = derive_kek(v->t_cost, v->m_cost, v->lanes, pw, pw_len, v->salt, v->kek, path, err,
                        err_len);
    } else {
        if (!(v->key_path = key_path_for(path)))
            goto out;
        rc = keyfile_read(v->key_path, v->kek, err, err_len);
    }
    if (rc == AV_OK)
        rc = vault_decode(v, b, len, &h, table_off, err, err_len);
out:
    av__free(b); /* ciphertext only */
    if (rc != AV_OK) {
        av__vault_free(v);
        return rc;
    }
    *out = v;
    return AV_OK;
}

/* vault_write serializes and writes the vault. */
static int vault_write(av_vault *v, int noreplace, char *err, size_t err_len)
{
    uint8_t *b = NULL;
    size_t len = 0;
    int rc = vault_serialize(v, &b, &len, err, err_len);
    if (rc != AV_OK)
        return rc;
    rc = write_file_atomic(v->path, b, len, noreplace, err, err_len);
    av__free(b);
    return rc;
}

int av__vault_save(av_vault *v, char *err, size_t err_len)
{
    if (!v)
        return AV_ERR_INVALID;
    return vault_write(v, 0, err, err_len);
}

int av__vault_create(av_vault **out, const char *path, const void *pw, size_t pw_len,
                     int no_password, char *err, size_t err_len)
{
    struct stat st;
    *out = NULL;
    if (!path || !*path) {
        av__errf(err, err_len, "vault path is empty");
        return AV_ERR_INVALID;
    }
    if (no_password ? pw != NULL : (!pw || pw_len == 0)) {
        av__errf(err, err_len, "%s: %s", path,
                no_password ? "a vault without a password takes no password"
                            : "the master password is empty");
        return AV_ERR_INVALID;
    }
    if (pw_len > AV_VAULT_PASSWORD_MAX) {
        av__errf(err, err_len, "%s: the master password is longer than %d bytes", path,
                AV_VAULT_PASSWORD_MAX);
        return AV_ERR_INVALID;
    }
    if (lstat(path, &st) == 0) {
        av__errf(err, err_len, "%s already exists", path);
        return AV_ERR_STATE;
    }
    av_vault *v = vault_new(path);
    if (!v)
        return AV_ERR_NOMEM;
    int rc, made_key = 0;
    if (no_password) {
        v->mode = MODE_KEYFILE;
        rc = AV_ERR_NOMEM;
        if (!(v->key_path = key_path_for(path)))
            goto out;
        if ((rc = av__crypto_random(v->kek, sizeof(v->kek))) != AV_OK) {
            av__errf(err, err_len, "%s: no random bytes for the key", path);
            goto out;
        }
        if ((rc = keyfile_write(v->key_path, v->kek, err, err_len)) != AV_OK)
            goto out;
        made_key = 1;
    } else {
        v->mode = MODE_PASSWORD;
        v->t_cost = g_t_cost;
        v->m_cost = g_m_cost;
        v->lanes = g_lanes;
        if ((rc = av__crypto_random(v->salt, sizeof(v->salt))) != AV_OK) {
            av__errf(err, err_len, "%s: no random bytes for the salt", path);
            goto out;
        }
        if ((rc = derive_kek(v->t_cost, v->m_cost, v->lanes, pw, pw_len, v->salt, v->kek, path,
                             err, err_len)) != AV_OK)
            goto out;
    }
    rc = vault_write(v, 1, err, err_len);
out:
    if (rc != AV_OK) {
        if (made_key)
            unlink(v->key_path);
        av__vault_free(v);
        return rc;
    }
    *out = v;
    return AV_OK;
}

/* ---- entries ------------------------------------------------------------ */

/* find returns the index of |name| or where it would go (*found 0). */
static size_t find(const av_vault *v, const char *name, int *found)
{
    size_t lo = 0, hi = v->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(v->e[mid].name, name);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

int av__vault_get(const av_vault *v, const char *name, av_secret **out)
{
    int found;
    *out = NULL;
    if (!v || !av__vault_name_valid(name))
        return AV_ERR_INVALID;
    size_t i = find(v, name, &found);
    if (!found)
        return AV_ERR_NOTFOUND;
    *out = av__secret_ref(v->e[i].value);
    return AV_OK;
}

int av__vault_set(av_vault *v, const char *name, const void *value, size_t len, char *err,
                  size_t err_len)
{
    int found;
    if (!v)
        return AV_ERR_INVALID;
    if (!av__vault_name_valid(name)) {
        av__errf(err, err_len, "invalid secret name: use 1 to %d of A-Z a-z 0-9 _ . -",
                AV_VAULT_NAME_MAX);
        return AV_ERR_INVALID;
    }
    if (len == 0 || !value) {
        av__errf(err, err_len, "%s: the value is empty", name);
        return AV_ERR_INVALID;
    }
    if (len > AV_VAULT_VALUE_MAX) {
        av__errf(err, err_len, "%s: the value is larger than %d bytes", name, AV_VAULT_VALUE_MAX);
        return AV_ERR_LIMIT;
    }
    size_t i = find(v, name, &found);
    size_t nl = strlen(name);
    size_t size = found ? v->file_size - av__secret_len(v->e[i].value) + len
                        : v->file_size + entry_size(nl, len);
    if (!found && v->n >= AV_VAULT_ENTRIES_MAX) {
        av__errf(err, err_len, "%s: the vault already holds %d secrets", v->path,
                AV_VAULT_ENTRIES_MAX);
        return AV_ERR_LIMIT;
    }
    if (size > AV_VAULT_FILE_MAX) {
        av__errf(err, err_len, "%s: the vault would exceed %d bytes", v->path, AV_VAULT_FILE_MAX);
        return AV_ERR_LIMIT;
    }
    if (!found && v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 8;
        vault_entry *ne = av__calloc(cap, sizeof(*ne));
        if (!ne)
            return AV_ERR_NOMEM;
        if (v->n)
            memcpy(ne, v->e, v->n * sizeof(*ne));
        if (v->e) {
            av__wipe(v->e, v->cap * sizeof(*v->e));
            av__free(v->e);
        }
        v->e = ne;
        v->cap = cap;
    }
    av_secret *s = av__secret_new(value, len);
    if (!s)
        return AV_ERR_NOMEM;
    int64_t now = (int64_t)time(NULL);
    if (found) {
        av__secret_free(v->e[i].value);
        v->e[i].value = s;
        v->e[i].updated = now;
    } else {
        memmove(&v->e[i + 1], &v->e[i], (v->n - i) * sizeof(*v->e));
        memset(&v->e[i], 0, sizeof(v->e[i]));
        memcpy(v->e[i].name, name, nl + 1);
        v->e[i].created = v->e[i].updated = now;
        v->e[i].value = s;
        v->n++;
    }
    v->file_size = size;
    return AV_OK;
}

/* ---- a writer beside the CLI: lock, re-read, set, save ------------------ */

/* lock_path takes the exclusive writers' lock PATH.lock (the protocol of
 * 'agentvault secret', daemon/secret.c: an flock held from reading the
 * vault to saving it), trying without blocking every 10 ms for at most
 * |wait_ms|. Returns the descriptor; -2 when another writer still holds
 * it, -1 on other failures (|err| set in both cases). */
static int lock_path(const char *path, int wait_ms, char *err, size_t err_len)
{
    int busy = 0;
    char lp[PATH_MAX];
    if (snprintf(lp, sizeof(lp), "%s.lock", path) >= (int)sizeof(lp)) {
        av__errf(err, err_len, "%s: path too long", path);
        return -1;
    }
    int fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0) {
        av__errf(err, err_len, "cannot open the vault's lock file %s: %s", lp, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077)) {
        av__errf(err, err_len, "%s: the vault's lock file must be a regular file owned by you with mode 0600",
                 lp);
        close(fd);
        return -1;
    }
    for (int waited = 0;; waited += 10) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return fd;
        if (errno != EWOULDBLOCK && errno != EINTR) {
            av__errf(err, err_len, "cannot lock %s: %s", lp, strerror(errno));
            break;
        }
        if (waited >= wait_ms) {
            av__errf(err, err_len, "%s: another writer holds the vault (waited %d ms)", lp, waited);
            busy = 1;
            break;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    close(fd);
    return busy ? -2 : -1;
}

/* reread decodes the file at v->path into a new vault with v's key
 * material (no password, no Argon2id): the file must still be this vault
 * (same mode, key-derivation parameters and salt). */
static int reread(const av_vault *v, av_vault **out, char *err, size_t err_len)
{
    uint8_t *b = NULL;
    size_t len = 0, table_off = 0;
    vault_hdr h;
    av_vault *t = NULL;
    *out = NULL;
    int rc = read_file(v->path, "vault", AV_VAULT_FILE_MAX, 1, &b, &len, err, err_len);
    if (rc != AV_OK)
        return rc;
    if ((rc = check_header(b, len, &h, v->path, err, err_len)) != AV_OK ||
        (rc = check_layout(b, len, &h, &table_off, v->path, err, err_len)) != AV_OK)
        goto out;
    if (h.mode != v->mode || h.t_cost != v->t_cost || h.m_cost != v->m_cost ||
        h.lanes != v->lanes || memcmp(h.salt, v->salt, SALT_LEN) != 0) {
        av__errf(err, err_len,
                 "%s: the vault was re-keyed (agentvault secret passwd) since it was opened: "
                 "restart the daemon with the new password",
                 v->path);
        rc = AV_ERR_STATE;
        goto out;
    }
    rc = AV_ERR_NOMEM;
    if (!(t = vault_new(v->path)) || (v->key_path && !(t->key_path = av__strdup(v->key_path))))
        goto out;
    t->mode = v->mode;
    t->t_cost = v->t_cost;
    t->m_cost = v->m_cost;
    t->lanes = v->lanes;
    memcpy(t->salt, v->salt, SALT_LEN);
    memcpy(t->kek, v->kek, sizeof(t->kek));
    rc = vault_decode(t, b, len, &h, table_off, err, err_len);
out:
    av__free(b); /* ciphertext only */
    if (rc != AV_OK) {
        av__vault_free(t);
        return rc;
    }
    *out = t;
    return AV_OK;
}

/* adopt moves the entries of |t| into |v|. */
static void adopt(av_vault *v, av_vault *t)
{
    entries_free(v);
    v->e = t->e;
    v->n = t->n;
    v->cap = t->cap;
    v->file_size = t->file_size;
    t->e = NULL;
    t->n = t->cap = 0;
}

int av__vault_reload(av_vault *v, char *err, size_t err_len)
{
    if (!v)
        return AV_ERR_INVALID;
    av_vault *t = NULL;
    int rc = reread(v, &t, err, err_len);
    if (rc == AV_OK)
        adopt(v, t);
    av__vault_free(t);
    return rc;
}

/* take_entry removes entry |i| without freeing it. */
static void take_entry(av_vault *v, size_t i, vault_entry *out)
{
    *out = v->e[i];
    memmove(&v->e[i], &v->e[i + 1], (v->n - i - 1) * sizeof(*v->e));
    v->n--;
    av__wipe(&v->e[v->n], sizeof(v->e[v->n]));
    v->file_size -= entry_size(strlen(out->name), av__secret_len(out->value));
}

int av__vault_remove(av_vault *v, const char *name)
{
    int found;
    vault_entry e;
    if (!v || !av__vault_name_valid(name))
        return AV_ERR_INVALID;
    size_t i = find(v, name, &found);
    if (!found)
        return AV_ERR_NOTFOUND;
    take_entry(v, i, &e);
    av__secret_free(e.value);
    av__wipe(&e, sizeof(e));
    return AV_OK;
}

size_t av__vault_count(const av_vault *v)
{
    return v ? v->n : 0;
}

int av__vault_list(const av_vault *v, size_t i, const char **name, int64_t *created,
                   int64_t *updated)
{
    if (!v || i >= v->n)
        return AV_ERR_NOTFOUND;
    if (name)
        *name = v->e[i].name;
    if (created)
        *created = v->e[i].created;
    if (updated)
        *updated = v->e[i].updated;
    return AV_OK;
}

const char *av__vault_path(const av_vault *v)
{
    return v->path;
}

const char *av__vault_key_path(const av_vault *v)
{
    return v->key_path;
}

int av__vault_change_password(av_vault *v, const void *pw, size_t pw_len, char *err,
                              size_t err_len)
{
    if (!v)
        return AV_ERR_INVALID;
    if (!pw || pw_len == 0 || pw_len > AV_VAULT_PASSWORD_MAX) {
        av__errf(err, err_len, "%s: the new master password is %s", v->path,
                pw_len ? "too long" : "empty");
        return AV_ERR_INVALID;
    }
    av_vault old = *v; /* only the key fields are restored from it */
    v->mode = MODE_PASSWORD;
    v->t_cost = g_t_cost;
    v->m_cost = g_m_cost;
    v->lanes = g_lanes;
    int rc = av__crypto_random(v->salt, sizeof(v->salt));
    if (rc != AV_OK)
        av__errf(err, err_len, "%s: no random bytes for the salt", v->path);
    else
        rc = derive_kek(v->t_cost, v->m_cost, v->lanes, pw, pw_len, v->salt, v->kek, v->path, err,
                        err_len);
    if (rc == AV_OK)
        rc = vault_write(v, 0, err, err_len);
    if (rc != AV_OK) {
        v->mode = old.mode;
        v->t_cost = old.t_cost;
        v->m_cost = old.m_cost;
        v->lanes = old.lanes;
        memcpy(v->salt, old.salt, sizeof(v->salt));
        memcpy(v->kek, old.kek, sizeof(v->kek));
    } else if (old.mode == MODE_KEYFILE) {
        /* The key file no longer opens this vault; do not leave it around. */
        unlink(v->key_path);
        av__free(v->key_path);
        v->key_path = NULL;
    }
    av__wipe(&old, sizeof(old));
    return rc;
}

/* ---- public API --------------------------------------------------------- */

AV_EXPORT int av_vault_create(av_vault **out, const char *path, const char *password,
                              size_t password_len, unsigned flags, char *err, size_t err_len)
{
    if (!out)
        return AV_ERR_INVALID;
    *out = NULL;
    if (flags & ~(unsigned)AV_VAULT_NO_PASSWORD) {
        av__errf(err, err_len, "unknown vault flags");
        return AV_ERR_INVALID;
    }
    return av__vault_create(out, path, password, password_len,
                            (flags & AV_VAULT_NO_PASSWORD) != 0, err, err_len);
}

AV_EXPORT int av_vault_open(av_vault **out, const char *path, const char *password,
                            size_t password_len, char *err, size_t err_len)
{
    if (!out)
        return AV_ERR_INVALID;
    return av__vault_open(out, path, password, password_len, err, err_len);
}

AV_EXPORT int av_vault_needs_password(const char *path, char *err, size_t err_len)
{
    return av__vault_probe(path, err, err_len);
}

AV_EXPORT void av_vault_close(av_vault *v)
{
    av__vault_free(v);
}

AV_EXPORT int av_vault_get(const av_vault *v, const char *name, char **value, size_t *value_len)
{
    av_secret *s = NULL;
    if (!value || !value_len)
        return AV_ERR_INVALID;
    *value = NULL;
    *value_len = 0;
    int rc = av__vault_get(v, name, &s);
    if (rc != AV_OK)
        return rc;
    size_t n = av__secret_len(s);
    char *p = av__malloc(n + 1);
    if (p) {
        memcpy(p, av__secret_data(s), n);
        p[n] = '\0';
        *value = p;
        *value_len = n;
    }
    av__secret_free(s);
    return p ? AV_OK : AV_ERR_NOMEM;
}

AV_EXPORT void av_vault_free_value(char *value, size_t value_len)
{
    if (!value)
        return;
    av__wipe(value, value_len + 1);
    av__free(value);
}

/* ---- changes under the writers' lock ------------------------------------ */

/* How long a public change waits for another writer's lock (tests
 * shorten it: av__vault_set_lock_wait). */
static int g_lock_wait_ms = 10000;

void av__vault_set_lock_wait(int ms)
{
    g_lock_wait_ms = ms > 0 ? ms : 10000;
}

enum { CHANGE_SET, CHANGE_REMOVE, CHANGE_PASSWORD };

typedef struct change_arg {
    int op;           /* CHANGE_* */
    const char *name; /* SET, REMOVE */
    const void *value; /* SET: the value; PASSWORD: the new password */
    size_t value_len;
} change_arg;

/* locked_change makes change |a| on a fresh copy of the file read under
 * the writers' lock PATH.lock (waiting at most |wait_ms| for it) and saves
 * it, so that what other writers (agentvault secret, a daemon writing back
 * a rotated refresh token, another handle) saved since |v| was read is
 * kept. On success |v| holds what the file now holds; on failure it is
 * unchanged (a failed password change leaves |v| with the file's entries
 * and its old key material). */
static int locked_change(av_vault *v, int wait_ms, const change_arg *a, char *err, size_t err_len)
{
    int fd = lock_path(v->path, wait_ms, err, err_len);
    if (fd < 0)
        return fd == -2 ? AV_ERR_AGAIN : AV_ERR_IO;
    av_vault *t = NULL;
    int rc = reread(v, &t, err, err_len);
    if (rc == AV_OK) {
        switch (a->op) {
        case CHANGE_SET:
            rc = av__vault_set(t, a->name, a->value, a->value_len, err, err_len);
            break;
        case CHANGE_REMOVE:
            if ((rc = av__vault_remove(t, a->name)) == AV_ERR_NOTFOUND)
                av__errf(err, err_len, "%s: no secret named %s", v->path, a->name);
            break;
        default: /* the password: re-keys |v| itself, with the file's entries */
            adopt(v, t);
            rc = av__vault_change_password(v, a->value, a->value_len, err, err_len);
            break;
        }
        if (rc == AV_OK && a->op != CHANGE_PASSWORD)
            rc = vault_write(t, 0, err, err_len);
    }
    close(fd); /* releases the lock */
    if (rc == AV_OK && a->op != CHANGE_PASSWORD)
        adopt(v, t);
    av__vault_free(t);
    return rc;
}

int av__vault_update(av_vault *v, const char *name, const void *value, size_t len, int wait_ms,
                     char *err, size_t err_len)
{
    if (!v || wait_ms < 0)
        return AV_ERR_INVALID;
    if (!av__vault_name_valid(name) || !value || len == 0) {
        av__errf(err, err_len, "%s: invalid secret name or empty value", v->path);
        return AV_ERR_INVALID;
    }
    change_arg a = {CHANGE_SET, name, value, len};
    return locked_change(v, wait_ms, &a, err, err_len);
}

AV_EXPORT int av_vault_set(av_vault *v, const char *name, const void *value, size_t value_len,
                           char *err, size_t err_len)
{
    if (!v)
        return AV_ERR_INVALID;
    change_arg a = {CHANGE_SET, name, value, value_len};
    return locked_change(v, g_lock_wait_ms, &a, err, err_len);
}

AV_EXPORT int av_vault_remove(av_vault *v, const char *name, char *err, size_t err_len)
{
    if (!v)
        return AV_ERR_INVALID;
    if (!av__vault_name_valid(name)) {
        av__errf(err, err_len, "invalid secret name");
        return AV_ERR_INVALID;
    }
    change_arg a = {CHANGE_REMOVE, name, NULL, 0};
    return locked_change(v, g_lock_wait_ms, &a, err, err_len);
}

AV_EXPORT size_t av_vault_count(const av_vault *v)
{
    return av__vault_count(v);
}

AV_EXPORT int av_vault_list(const av_vault *v, size_t i, const char **name, long long *created,
                            long long *updated)
{
    int64_t c = 0, u = 0;
    int rc = av__vault_list(v, i, name, &c, &u);
    if (rc == AV_OK) {
        if (created)
            *created = (long long)c;
        if (updated)
            *updated = (long long)u;
    }
    return rc;
}

AV_EXPORT int av_vault_passwd(av_vault *v, const char *new_password, size_t new_password_len,
                              char *err, size_t err_len)
{
    if (!v)
        return AV_ERR_INVALID;
    change_arg a = {CHANGE_PASSWORD, NULL, new_password, new_password_len};
    return locked_change(v, g_lock_wait_ms, &a, err, err_len);
}
