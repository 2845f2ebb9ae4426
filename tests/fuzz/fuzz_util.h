/* fuzz_util.h - helpers shared by the libFuzzer targets: an abort-on-false
 * check that survives NDEBUG, and a small generator seeded from the input
 * (so a crash reproduces from the input alone) for splitting it into
 * pieces. */
#ifndef AV_FUZZ_UTIL_H
#define AV_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            abort();                                                                               \
    } while (0)

/* rng is a small xorshift generator. */
typedef struct rng {
    uint64_t s;
} rng;

/* rng_seed hashes the input (FNV-1a) into a non-zero state. */
static inline void rng_seed(rng *r, const uint8_t *p, size_t n)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * UINT64_C(1099511628211);
    r->s = h ? h : 1;
}

/* rng_next returns a value in 0..max-1 (max > 0). */
static inline size_t rng_next(rng *r, size_t max)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (size_t)(r->s % max);
}

/* rng_step returns a piece size in 1..max (max > 0). */
static inline size_t rng_step(rng *r, size_t max)
{
    return 1 + rng_next(r, max);
}

#endif
