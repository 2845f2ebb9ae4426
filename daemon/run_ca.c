/* run_ca.c - the private directory of `agentvault run`: ca.pem (the
 * proxy's root) and bundle.pem (the system roots and the proxy's root).
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "run_int.h"

/* ---- the private directory ----------------------------------------------- */

/* nftw callback: removes one entry (depth-first). */
static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    if (remove(path) < 0 && errno != ENOENT)
        run_msg("warning: cannot remove %s: %s", path, strerror(errno));
    return 0;
}

/* Removes the private directory and whatever is in it. */
void run_dir_remove(const char *dir)
{
    if (dir[0])
        nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* Creates agentvault-run-XXXXXX (0700) under $XDG_RUNTIME_DIR, $TMPDIR or
 * /tmp, the first that works. Returns 0 or -1 (reason printed). */
int run_dir_make(char *out, size_t outlen)
{
    const char *cands[3] = {getenv("XDG_RUNTIME_DIR"), getenv("TMPDIR"), "/tmp"};
    int last = ENOENT;
    for (size_t i = 0; i < NELEM(cands); i++) {
        const char *base = cands[i];
        if (!base || base[0] != '/')
            continue;
        struct stat st;
        if (i == 0 && (stat(base, &st) < 0 || !S_ISDIR(st.st_mode) || access(base, W_OK | X_OK) < 0))
            continue;
        size_t bl = strlen(base);
        while (bl > 1 && base[bl - 1] == '/')
            bl--;
        if ((size_t)snprintf(out, outlen, "%.*s/agentvault-run-XXXXXX", (int)bl, base) >= outlen)
            continue;
        if (mkdtemp(out)) {
            if (chmod(out, 0700) < 0) {
                last = errno;
                rmdir(out);
                continue;
            }
            return 0;
        }
        last = errno;
    }
    out[0] = '\0';
    run_msg("cannot create a private directory (in $XDG_RUNTIME_DIR, $TMPDIR or /tmp): %s", strerror(last));
    return -1;
}

/* Writes all of buf to fd; 0 or -1 (errno set). */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Copies the system roots into fd, ending with a newline. A missing file
 * is not an error (the bundle is then our root alone). Returns 0 or -1. */
static int copy_system_roots(int fd)
{
    int in = open(RUN_SYSTEM_BUNDLE, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        if (errno != ENOENT)
            run_msg("warning: cannot read %s: %s; bundle.pem holds only the agentvault root",
                RUN_SYSTEM_BUNDLE, strerror(errno));
        return 0;
    }
    struct stat st;
    int rc = 0;
    if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > RUN_MAX_SYSTEM_BUNDLE) {
        run_msg("warning: %s is not a regular file of at most %d bytes; ignored", RUN_SYSTEM_BUNDLE,
            RUN_MAX_SYSTEM_BUNDLE);
        close(in);
        return 0;
    }
    char buf[65536];
    char last = '\n';
    long long total = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            run_msg("cannot read %s: %s", RUN_SYSTEM_BUNDLE, strerror(errno));
            rc = -1;
            break;
        }
        if (n == 0)
            break;
        total += n;
        if (total > RUN_MAX_SYSTEM_BUNDLE || write_all(fd, buf, (size_t)n) < 0) {
            run_msg("cannot copy %s", RUN_SYSTEM_BUNDLE);
            rc = -1;
            break;
        }
        last = buf[n - 1];
    }
    close(in);
    if (rc == 0 && last != '\n' && write_all(fd, "\n", 1) < 0)
        rc = -1;
    return rc;
}

/* Creates dir/name (0600, must not exist) holding the system roots if
 * |with_system| and then pem. Returns 0 or -1 (reason printed). */
int run_pem_write(const char *dir, const char *name, const char *pem, size_t len,
                          int with_system, char *path, size_t pathlen)
{
    if ((size_t)snprintf(path, pathlen, "%s/%s", dir, name) >= pathlen) {
        run_msg("path too long: %s/%s", dir, name);
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        run_msg("cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = fchmod(fd, 0600);
    if (rc == 0 && with_system)
        rc = copy_system_roots(fd);
    if (rc == 0)
        rc = write_all(fd, pem, len);
    if (rc == 0 && (len == 0 || pem[len - 1] != '\n'))
        rc = write_all(fd, "\n", 1);
    if (close(fd) < 0)
        rc = -1;
    if (rc < 0)
        run_msg("cannot write %s", path);
    return rc;
}
