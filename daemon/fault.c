/* fault.c - allocation-failure injection for the fault tests.
 *
 * Compiled in only when the build is sanitized (AV_FAULT_INJECTION, set by
 * daemon/meson.build); release builds have an empty fault_setup().
 *
 * AGENTVAULT_FAULT_FILE names a file of at least FAULT_FILE_SIZE bytes that
 * the test driver (tests/fault/fault_test.py) and the daemon both map
 * shared. It holds little-endian 64-bit words:
 *   [0] magic "AVFAULT1"   [1] armed (0/1)   [2] fail_at (N, 1-based)
 *   [3] count: allocations counted since the driver armed it
 *   [4] fired: the count at which an allocation was failed (0: none)
 * While armed, every call of the library's malloc or realloc hook adds one
 * to count; the call that makes count equal fail_at returns NULL (once).
 * With AGENTVAULT_FAULT_TRACE set, the daemon prints the stack of that call. */
#include "fault.h"

#ifdef AV_FAULT_INJECTION

#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#define FAULT_FILE_SIZE 4096
#define FAULT_MAGIC 0x31544c5541465641ULL /* "AVFAULT1" little-endian */

typedef struct fault_ctl {
    uint64_t magic;
    _Atomic int64_t armed;
    _Atomic int64_t fail_at;
    _Atomic int64_t count;
    _Atomic int64_t fired;
} fault_ctl;

static fault_ctl *g_ctl;
static int g_trace; /* AGENTVAULT_FAULT_TRACE: print the failed call's stack */

/* The sanitizer runtime's stack printer (this file is built with it). */
void __sanitizer_print_stack_trace(void);

/* fault_now returns 1 when this allocation is the one to fail. */
static int fault_now(void)
{
    if (!atomic_load(&g_ctl->armed))
        return 0;
    int64_t n = atomic_fetch_add(&g_ctl->count, 1) + 1;
    if (n != atomic_load(&g_ctl->fail_at))
        return 0;
    atomic_store(&g_ctl->fired, n);
    if (g_trace) {
        fprintf(stderr, "agentvault: fault: failing allocation %lld\n", (long long)n);
        __sanitizer_print_stack_trace();
    }
    return 1;
}

static void *fault_malloc(size_t size, void *user)
{
    (void)user;
    return fault_now() ? NULL : malloc(size);
}

static void *fault_realloc(void *ptr, size_t size, void *user)
{
    (void)user;
    return fault_now() ? NULL : realloc(ptr, size);
}

static void fault_free(void *ptr, void *user)
{
    (void)user;
    free(ptr);
}

int fault_setup(void)
{
    const char *path = getenv("AGENTVAULT_FAULT_FILE");
    if (!path || !*path)
        return 0;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "agentvault: AGENTVAULT_FAULT_FILE %s: cannot open it\n", path);
        return -1;
    }
    void *p = mmap(NULL, FAULT_FILE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED || ((fault_ctl *)p)->magic != FAULT_MAGIC) {
        fprintf(stderr, "agentvault: AGENTVAULT_FAULT_FILE %s: not a fault control file\n", path);
        if (p != MAP_FAILED)
            munmap(p, FAULT_FILE_SIZE);
        return -1;
    }
    g_ctl = p;
    g_trace = getenv("AGENTVAULT_FAULT_TRACE") != NULL;
    return av_set_allocator(fault_malloc, fault_realloc, fault_free, NULL) == AV_OK ? 0 : -1;
}

#else

int fault_setup(void)
{
    return 0;
}

#endif
