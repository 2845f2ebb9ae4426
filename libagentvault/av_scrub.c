/* av_scrub.c - response scrubbing (see av_scrub.h for what is matched).
 *
 * Three parts:
 *  - pattern generation: every encoded form of every secret, produced into
 *    a scratch buffer and inserted into a trie (the trie dedupes);
 *  - the matcher core: Aho-Corasick over the trie, a ring of held bytes and
 *    a queue of pending redaction regions, in stream coordinates;
 *  - the zlib layer: inflate -> core -> deflate with bounded staging.
 */
#include "av_scrub.h"

#include <limits.h>
#include <string.h>

#include <zlib.h>

#include <agentvault/agentvault.h>

#include "av_enc.h"
#include "av_mem.h"

/* ---- pattern generation --------------------------------------------------- */

typedef void (*pat_sink)(void *ctx, const uint8_t *p, size_t n);

/* The JSON escapes a secret may be written in, each with the short forms
 * \b \f \n \r \t: minimal; non-ASCII as \uXXXX in lower and upper case;
 * that with \/; the HTML-safe escapes (< > & U+2028 U+2029; Gson's also
 * = and '). */
static const unsigned JSON_VARIANTS[] = {
    AV__JSON_SHORT,
    AV__JSON_SHORT | AV__JSON_ASCII,
    AV__JSON_SHORT | AV__JSON_ASCII | AV__JSON_UPPER,
    AV__JSON_SHORT | AV__JSON_ASCII | AV__JSON_SLASH,
    AV__JSON_SHORT | AV__JSON_HTML,
    AV__JSON_SHORT | AV__JSON_GSON,
};

/* emit_json gives |base| to the sink in every JSON variant (the minimal
 * variant of a base without special characters is the base itself). */
static void emit_json(const uint8_t *base, size_t n, uint8_t *tmp, pat_sink sink, void *ctx)
{
    for (size_t v = 0; v < sizeof(JSON_VARIANTS) / sizeof(JSON_VARIANTS[0]); v++) {
        size_t m = av__json_escape(base, n, JSON_VARIANTS[v], (char *)tmp);
        if (m != (size_t)-1 && m > 0)
            sink(ctx, tmp, m);
    }
}

/* scratch_size: bytes of scratch gen_patterns needs for a secret of |n|. */
static size_t scratch_size(size_t n)
{
    size_t base = 4 * n + 32;    /* largest base form: base64 then %XX */
    return base + 6 * base + 64; /* base + its JSON escape */
}

/* gen_patterns gives every pattern of secret |s| to |sink|. */
static void gen_patterns(const uint8_t *s, size_t n, uint8_t *scratch, pat_sink sink, void *ctx)
{
    sink(ctx, s, n);
    if (n < AV_SCRUB_MIN_ENCODED)
        return;
    uint8_t *base = scratch, *tmp = scratch + 4 * n + 32;
    uint8_t *b64 = tmp; /* base64 staging before percent-encoding (in tmp) */
    size_t m;
    emit_json(s, n, tmp, sink, ctx);
    for (unsigned url = 0; url < 2; url++) {
        unsigned alpha = url ? AV__B64_URL : 0;
        for (size_t k = 0; k < 3; k++) {
            m = av__b64_encode_shifted(s, n, k, alpha, (char *)base);
            emit_json(base, m, tmp, sink, ctx);
        }
        for (int pad = 0; pad < 2; pad++) {
            m = av__b64_encode(s, n, alpha | (pad ? 0 : AV__B64_NOPAD), (char *)base);
            emit_json(base, m, tmp, sink, ctx);
        }
    }
    /* base64 (standard), then percent-encoded with unreserved kept */
    for (size_t k = 0; k < 4; k++) {
        size_t bm = k < 3 ? av__b64_encode_shifted(s, n, k, 0, (char *)b64) : av__b64_encode(s, n, 0, (char *)b64);
        for (int lo = 0; lo < 2; lo++) {
            m = av__pct_encode(b64, bm, AV__PCT_UNRESERVED, lo ? AV__HEX_LOWER : AV__HEX_UPPER, (char *)base);
            sink(ctx, base, m); /* percent output has no JSON-special bytes */
        }
    }
    /* hex, both cases (no JSON-special bytes either) */
    for (int lo = 0; lo < 2; lo++) {
        m = av__hex_encode(s, n, lo ? AV__HEX_LOWER : AV__HEX_UPPER, (char *)base);
        sink(ctx, base, m);
    }
    static const int sets[] = {AV__PCT_ALL, AV__PCT_UNRESERVED, AV__PCT_PATH, AV__PCT_URIC, AV__PCT_FORM};
    for (size_t i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) {
        for (int lo = 0; lo < 2; lo++) {
            if (lo && sets[i] != AV__PCT_ALL && sets[i] != AV__PCT_UNRESERVED)
                continue;
            m = av__pct_encode(s, n, sets[i], lo ? AV__HEX_LOWER : AV__HEX_UPPER, (char *)base);
            emit_json(base, m, tmp, sink, ctx);
        }
    }
}

/* ---- the matcher core ------------------------------------------------------ */

typedef struct sc_node {
    uint32_t child; /* first child (0: none; the root is nobody's child) */
    uint32_t next;  /* next sibling */
    uint32_t fail;  /* failure link */
    uint32_t depth;
    uint32_t out;   /* length of the longest pattern ending here, or 0 */
    uint32_t keep;  /* depth of the longest suffix node with children */
    uint8_t byte;
} sc_node;

typedef struct sc_region {
    uint64_t start, end; /* stream positions [start, end) to redact */
    int marked;          /* marker already written */
} sc_region;

typedef struct sc_core {
    sc_node *nodes;
    size_t nnodes, cap_nodes;
    uint32_t root[256]; /* root transitions (0: none) */
    size_t maxlen, minlen, window;
    uint32_t q;        /* automaton state */
    uint64_t pos;      /* stream bytes taken */
    uint64_t emitted;  /* stream bytes decided (written or redacted) */
    uint8_t *ring;     /* the last bytes taken: [ring_pos, pos) */
    size_t ring_cap, ring_head, ring_len;
    sc_region *reg;    /* pending regions, ordered, disjoint */
    size_t reg_cap, reg_head, reg_len;
    unsigned long count;
    int err;           /* first failure while building */
    int shared;        /* nodes belong to an av_scrub_set */
} sc_core;

/* pass-1 sink: pattern statistics. */
typedef struct pat_stats {
    size_t total, maxlen, minlen;
} pat_stats;

static void stats_sink(void *ctx, const uint8_t *p, size_t n)
{
    (void)p;
    pat_stats *st = ctx;
    st->total += n;
    if (n > st->maxlen)
        st->maxlen = n;
    if (st->minlen == 0 || n < st->minlen)
        st->minlen = n;
}

/* trie_grow doubles the node array (copy and wipe, never realloc: the
 * nodes spell out secret-derived patterns). */
static int trie_grow(sc_core *c)
{
    size_t cap = c->cap_nodes * 2;
    if (cap > UINT32_MAX)
        return AV_ERR_NOMEM;
    sc_node *d = av__malloc(cap * sizeof(*d));
    if (!d)
        return AV_ERR_NOMEM;
    memcpy(d, c->nodes, c->nnodes * sizeof(*d));
    av__wipe(c->nodes, c->cap_nodes * sizeof(*c->nodes));
    av__free(c->nodes);
    c->nodes = d;
    c->cap_nodes = cap;
    return AV_OK;
}

/* pass-2 sink: insert into the trie. */
static void trie_sink(void *ctx, const uint8_t *p, size_t n)
{
    sc_core *c = ctx;
    uint32_t q = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t ch = c->nodes[q].child;
        while (ch && c->nodes[ch].byte != p[i])
            ch = c->nodes[ch].next;
        if (!ch) {
            if (c->nnodes >= c->cap_nodes && trie_grow(c) != AV_OK) {
                c->err = AV_ERR_NOMEM;
                return;
            }
            ch = (uint32_t)c->nnodes++;
            sc_node *nd = &c->nodes[ch];
            memset(nd, 0, sizeof(*nd));
            nd->byte = p[i];
            nd->depth = c->nodes[q].depth + 1;
            nd->next = c->nodes[q].child;
            c->nodes[q].child = ch;
            if (q == 0)
                c->root[p[i]] = ch;
        }
        q = ch;
    }
    c->nodes[q].out = (uint32_t)n;
}

/* ac_step is the goto/failure transition from |q| on |b|. */
static inline uint32_t ac_step(const sc_core *c, uint32_t q, uint8_t b)
{
    while (q) {
        for (uint32_t ch = c->nodes[q].child; ch; ch = c->nodes[ch].next)
            if (c->nodes[ch].byte == b)
                return ch;
        q = c->nodes[q].fail;
    }
    return c->root[b];
}

/* ac_link computes failure links, outputs and keep depths (BFS). */
static int ac_link(sc_core *c)
{
    uint32_t *queue = av__malloc(c->nnodes * sizeof(*queue));
    if (!queue)
        return AV_ERR_NOMEM;
    size_t head = 0, tail = 0;
    queue[tail++] = 0;
    while (head < tail) {
        uint32_t u = queue[head++];
        sc_node *nu = &c->nodes[u];
        nu->keep = nu->child ? nu->depth : (u ? c->nodes[nu->fail].keep : 0);
        for (uint32_t v = nu->child; v; v = c->nodes[v].next) {
            sc_node *nv = &c->nodes[v];
            nv->fail = u ? ac_step(c, nu->fail, nv->byte) : 0;
            if (!nv->out)
                nv->out = c->nodes[nv->fail].out;
            queue[tail++] = v;
        }
    }
    av__wipe(queue, c->nnodes * sizeof(*queue));
    av__free(queue);
    return AV_OK;
}

/* core_build generates the patterns of all secrets and links the automaton. */
static int core_build(sc_core *c, const av_secret *const *secrets, size_t n)
{
    pat_stats st = {0, 0, 0};
    size_t longest = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = secrets[i] ? av__secret_len(secrets[i]) : 0;
        if (l > AV_SCRUB_MAX_SECRET)
            return AV_ERR_LIMIT;
        if (l > longest)
            longest = l;
    }
    uint8_t *scratch = NULL;
    size_t scratch_n = 0;
    if (longest) {
        scratch_n = scratch_size(longest);
        scratch = av__malloc(scratch_n);
        if (!scratch)
            return AV_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        if (secrets[i] && av__secret_len(secrets[i]))
            gen_patterns(av__secret_data(secrets[i]), av__secret_len(secrets[i]), scratch,
                         stats_sink, &st);
    int rc = AV_OK;
    /* the trie dedupes: st.total (duplicates included) is only an upper bound */
    c->cap_nodes = st.total + 1 < 256 ? st.total + 1 : 256;
    c->nodes = av__calloc(c->cap_nodes, sizeof(*c->nodes));
    if (!c->nodes) {
        rc = AV_ERR_NOMEM;
        goto out;
    }
    c->nnodes = 1;
    for (size_t i = 0; i < n && !c->err; i++)
        if (secrets[i] && av__secret_len(secrets[i]))
            gen_patterns(av__secret_data(secrets[i]), av__secret_len(secrets[i]), scratch,
                         trie_sink, c);
    rc = c->err;
    if (rc)
        goto out;
    /* give back what the trie did not use (copy and wipe) */
    if (c->nnodes < c->cap_nodes) {
        sc_node *fit = av__malloc(c->nnodes * sizeof(*fit));
        if (!fit) {
            rc = AV_ERR_NOMEM;
            goto out;
        }
        memcpy(fit, c->nodes, c->nnodes * sizeof(*fit));
        av__wipe(c->nodes, c->cap_nodes * sizeof(*c->nodes));
        av__free(c->nodes);
        c->nodes = fit;
        c->cap_nodes = c->nnodes;
    }
    rc = ac_link(c);
    if (rc)
        goto out;
    c->maxlen = st.maxlen;
    c->minlen = st.minlen ? st.minlen : 1;
    c->window = st.maxlen ? st.maxlen - 1 : 0;
    c->ring_cap = c->window + 1;
    c->ring = av__malloc(c->ring_cap);
    c->reg_cap = c->window + 2;
    c->reg = av__calloc(c->reg_cap, sizeof(*c->reg));
    if (!c->ring || !c->reg)
        rc = AV_ERR_NOMEM;
out:
    av__wipe(scratch, scratch_n);
    av__free(scratch);
    return rc;
}

static void core_free(sc_core *c)
{
    if (c->nodes && !c->shared) {
        av__wipe(c->nodes, c->cap_nodes * sizeof(*c->nodes));
        av__free(c->nodes);
    }
    if (c->ring)
        av__wipe(c->ring, c->ring_cap);
    av__free(c->ring);
    if (c->reg)
        av__wipe(c->reg, c->reg_cap * sizeof(*c->reg));
    av__free(c->reg);
    av__wipe(c->root, sizeof(c->root));
    memset(c, 0, sizeof(*c));
}

/* core_bound: most output bytes deciding |k| stream bytes can produce. */
static size_t core_bound(const sc_core *c, size_t k)
{
    return k + (k / c->minlen + 1) * AV_SCRUB_MARKER_LEN;
}

static size_t core_held(const sc_core *c)
{
    return (size_t)(c->pos - c->emitted);
}

/* copy_stream writes stream bytes [a, b) to |w|. Bytes before |pos0| come
 * from the ring, the others from |in| (which starts at pos0). */
static size_t copy_stream(const sc_core *c, uint64_t a, uint64_t b, const uint8_t *in,
                          uint64_t pos0, uint8_t *w)
{
    size_t wrote = 0;
    if (a < pos0) {
        uint64_t ring_pos = pos0 - c->ring_len;
        uint64_t e = b < pos0 ? b : pos0;
        size_t idx = (c->ring_head + (size_t)(a - ring_pos)) % c->ring_cap;
        size_t n = (size_t)(e - a);
        size_t first = c->ring_cap - idx < n ? c->ring_cap - idx : n;
        memcpy(w, c->ring + idx, first);
        memcpy(w + first, c->ring, n - first);
        wrote = n;
        a = e;
    }
    if (a < b) {
        memcpy(w + wrote, in + (size_t)(a - pos0), (size_t)(b - a));
        wrote += (size_t)(b - a);
    }
    return wrote;
}

/* emit_upto decides stream bytes up to |upto| into |w|; returns bytes written. */
static size_t emit_upto(sc_core *c, uint64_t upto, const uint8_t *in, uint64_t pos0, uint8_t *w)
{
    size_t wrote = 0;
    uint64_t f = c->emitted;
    while (f < upto) {
        if (c->reg_len == 0) {
            wrote += copy_stream(c, f, upto, in, pos0, w + wrote);
            f = upto;
            break;
        }
        sc_region *r = &c->reg[c->reg_head];
        if (f < r->start) {
            uint64_t e = r->start < upto ? r->start : upto;
            wrote += copy_stream(c, f, e, in, pos0, w + wrote);
            f = e;
            continue;
        }
        if (!r->marked) {
            memcpy(w + wrote, AV_SCRUB_MARKER, AV_SCRUB_MARKER_LEN);
            wrote += AV_SCRUB_MARKER_LEN;
            r->marked = 1;
            c->count++;
        }
        f = r->end < upto ? r->end : upto;
        if (f >= r->end) {
            c->reg_head = (c->reg_head + 1) % c->reg_cap;
            c->reg_len--;
        }
    }
    c->emitted = f;
    return wrote;
}

/* add_match records a match [s, e); e never decreases between calls.
 * Overlapping regions merge; adjacent ones stay apart. */
static void add_match(sc_core *c, uint64_t s, uint64_t e)
{
    int marked = 0;
    while (c->reg_len) {
        sc_region *b = &c->reg[(c->reg_head + c->reg_len - 1) % c->reg_cap];
        if (s >= b->end)
            break;
        if (b->start < s)
            s = b->start;
        if (b->end > e)
            e = b->end;
        marked |= b->marked;
        c->reg_len--;
    }
    sc_region *r = &c->reg[(c->reg_head + c->reg_len) % c->reg_cap];
    r->start = s;
    r->end = e;
    r->marked = marked;
    c->reg_len++;
}

/* ring_append adds the |n| bytes of |in| to the ring, keeping the newest. */
static void ring_append(sc_core *c, const uint8_t *in, size_t n)
{
    if (n >= c->ring_cap) {
        memcpy(c->ring, in + n - c->ring_cap, c->ring_cap);
        c->ring_head = 0;
        c->ring_len = c->ring_cap;
        return;
    }
    size_t drop = c->ring_len + n > c->ring_cap ? c->ring_len + n - c->ring_cap : 0;
    c->ring_head = (c->ring_head + drop) % c->ring_cap;
    c->ring_len -= drop;
    size_t tail = (c->ring_head + c->ring_len) % c->ring_cap;
    size_t first = c->ring_cap - tail < n ? c->ring_cap - tail : n;
    memcpy(c->ring + tail, in, first);
    memcpy(c->ring, in + first, n - first);
    c->ring_len += n;
}

/* core_run takes |n| bytes and writes the decided output to |w| (room for
 * core_bound(held + n) bytes); returns bytes written. */
static size_t core_run(sc_core *c, const uint8_t *in, size_t n, uint8_t *w)
{
    const sc_node *nodes = c->nodes;
    const uint32_t *root = c->root;
    uint64_t pos0 = c->pos;
    uint32_t q = c->q;
    size_t wrote = 0, i = 0;
    while (i < n) {
        if (q == 0) {
            while (i < n && root[in[i]] == 0)
                i++;
            if (i == n)
                break;
            q = root[in[i++]];
        } else {
            q = ac_step(c, q, in[i++]);
        }
        uint32_t m = nodes[q].out;
        if (m) {
            uint64_t e = pos0 + i;
            add_match(c, e - m, e);
            if (c->reg_len == c->reg_cap) {
                c->pos = e;
                wrote += emit_upto(c, e - nodes[q].keep, in, pos0, w + wrote);
            }
        }
    }
    c->q = q;
    c->pos = pos0 + n;
    wrote += emit_upto(c, c->pos - nodes[q].keep, in, pos0, w + wrote);
    ring_append(c, in, n);
    return wrote;
}

#define CORE_BLOCK ((size_t)64 << 10)

/* core_feed: see av__scrub_feed (identity body). */
static int core_feed(sc_core *c, const uint8_t *in, size_t len, size_t *consumed, av_buf *out)
{
    size_t done = 0;
    int rc = AV_OK;
    while (done < len) {
        uint64_t room = av__buf_room(out), m = AV_SCRUB_MARKER_LEN;
        size_t held = core_held(c);
        if (room > ((uint64_t)1 << 30))
            room = (uint64_t)1 << 30;
        /* the largest k with core_bound(k) <= room: an estimate from below
         * (it treats k / minlen as exact), then a few steps up */
        size_t kmax = room > m ? (size_t)((room - m) * c->minlen / (c->minlen + m)) : 0;
        while (core_bound(c, kmax + 1) <= room)
            kmax++;
        size_t b = kmax > held ? kmax - held : 0;
        if (b > len - done)
            b = len - done;
        if (b > CORE_BLOCK)
            b = CORE_BLOCK;
        if (b == 0) {
            rc = av__buf_len(out) == 0 ? AV_ERR_INVALID : AV_ERR_LIMIT;
            break;
        }
        int err = AV_OK;
        uint8_t *w = av__buf_reserve(out, core_bound(c, held + b), &err);
        if (!w) {
            rc = err;
            break;
        }
        av__buf_commit(out, core_run(c, in + done, b, w));
        done += b;
    }
    *consumed = done;
    return rc;
}

/* core_finish decides every held byte. */
static int core_finish(sc_core *c, av_buf *out)
{
    size_t held = core_held(c);
    if (held == 0)
        return AV_OK;
    size_t need = core_bound(c, held);
    if (need > av__buf_room(out))
        return av__buf_len(out) == 0 ? AV_ERR_INVALID : AV_ERR_LIMIT;
    int err = AV_OK;
    uint8_t *w = av__buf_reserve(out, need, &err);
    if (!w)
        return err;
    av__buf_commit(out, emit_upto(c, c->pos, NULL, c->pos, w));
    c->q = 0;
    return AV_OK;
}

/* ---- the scrubber and its zlib layer -------------------------------------- */

#define IBUF_SIZE ((size_t)16 << 10)
#define PLAIN_SIZE ((size_t)32 << 10)
#define ZBUF_SIZE ((size_t)16 << 10)
#define ZBUF_MIN ((size_t)64)

enum { ZF_UNKNOWN, ZF_GZIP, ZF_ZLIB, ZF_RAW };

/* A compiled pattern set, shared by the scrubbers of many exchanges (the
 * automaton is the expensive part: building it per response would cost far
 * more than scrubbing). Immutable once built. */
struct av_scrub_set {
    int refs;
    sc_core proto; /* trie, root table, lengths; its stream state is unused */
};

struct av_scrub {
    int enc;
    int fail; /* sticky error */
    sc_core core;
    av_scrub_set *set; /* the shared automaton, when made from a set */
    /* compressed bodies */
    z_stream zi, zo;
    int zi_init, zo_init;
    int zfmt;
    uint8_t sniff[2];
    size_t nsniff, sniff_off;
    int seen_input;
    uint8_t *ibuf; /* inflated, not yet scrubbed: [ioff, ioff + ilen) */
    size_t ioff, ilen;
    av_buf plain;  /* scrubbed, not yet deflated */
    av_buf zbuf;   /* deflated, not yet in the caller's buffer */
    int infl_more; /* inflate may have output without more input */
    int zi_end;    /* inflate reached the end of a stream */
    int dirty;     /* deflated since the last sync flush */
    int flushing;  /* a Z_SYNC_FLUSH is in progress */
    int fin_stage; /* 0, 1: core flushed into plain, 2: stream ended */
    uint64_t tot_in, tot_out, max_expanded;
    unsigned max_ratio;
};

/* zlib allocations go through av_mem, with a size header so that frees wipe
 * (the windows hold plaintext). */
typedef struct z_hdr {
    size_t n;
    size_t pad;
} z_hdr;

static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    (void)opaque;
    size_t n = (size_t)items * size;
    z_hdr *h = av__malloc(sizeof(z_hdr) + n);
    if (!h)
        return Z_NULL;
    h->n = n;
    return h + 1;
}

static void z_free(voidpf opaque, voidpf p)
{
    (void)opaque;
    if (!p)
        return;
    z_hdr *h = (z_hdr *)p - 1;
    av__wipe(h, sizeof(*h) + h->n);
    av__free(h);
}

static int fail(av_scrub *s, int err)
{
    s->fail = err;
    return err;
}

int av__scrub_set_new(av_scrub_set **out, const av_secret *const *secrets, size_t n)
{
    if (!out || (n && !secrets))
        return AV_ERR_INVALID;
    *out = NULL;
    av_scrub_set *set = av__calloc(1, sizeof(*set));
    if (!set)
        return AV_ERR_NOMEM;
    set->refs = 1;
    int rc = core_build(&set->proto, secrets, n);
    if (rc) {
        core_free(&set->proto);
        av__free(set);
        return rc;
    }
    *out = set;
    return AV_OK;
}

av_scrub_set *av__scrub_set_ref(av_scrub_set *set)
{
    if (set)
        set->refs++;
    return set;
}

void av__scrub_set_unref(av_scrub_set *set)
{
    if (!set || --set->refs > 0)
        return;
    core_free(&set->proto);
    av__free(set);
}

/* A core that uses |set|'s automaton, with stream state of its own. */
static int core_from_set(sc_core *c, const av_scrub_set *set)
{
    const sc_core *p = &set->proto;
    memset(c, 0, sizeof(*c));
    c->nodes = p->nodes;
    c->nnodes = p->nnodes;
    c->cap_nodes = p->cap_nodes;
    memcpy(c->root, p->root, sizeof(c->root));
    c->maxlen = p->maxlen;
    c->minlen = p->minlen;
    c->window = p->window;
    c->shared = 1;
    c->ring_cap = c->window + 1;
    c->ring = av__malloc(c->ring_cap);
    c->reg_cap = c->window + 2;
    c->reg = av__calloc(c->reg_cap, sizeof(*c->reg));
    return c->ring && c->reg ? AV_OK : AV_ERR_NOMEM;
}

int av__scrub_new_from_set(av_scrub **out, av_scrub_set *set, int content_encoding)
{
    if (!out || !set)
        return AV_ERR_INVALID;
    *out = NULL;
    if (content_encoding != AV_SCRUB_IDENTITY && content_encoding != AV_SCRUB_GZIP &&
        content_encoding != AV_SCRUB_DEFLATE)
        return AV_ERR_INVALID;
    av_scrub *s = av__calloc(1, sizeof(*s));
    if (!s)
        return AV_ERR_NOMEM;
    s->enc = content_encoding;
    s->max_expanded = AV_SCRUB_MAX_EXPANDED;
    s->max_ratio = AV_SCRUB_MAX_RATIO;
    s->set = av__scrub_set_ref(set);
    int rc = core_from_set(&s->core, set);
    if (rc)
        goto err;
    if (content_encoding != AV_SCRUB_IDENTITY) {
        s->zfmt = content_encoding == AV_SCRUB_GZIP ? ZF_GZIP : ZF_UNKNOWN;
        av__buf_init(&s->plain, PLAIN_SIZE + core_bound(&s->core, s->core.window + 1));
        av__buf_init(&s->zbuf, ZBUF_SIZE);
        s->ibuf = av__malloc(IBUF_SIZE);
        if (!s->ibuf) {
            rc = AV_ERR_NOMEM;
            goto err;
        }
    }
    *out = s;
    return AV_OK;
err:
    av__scrub_free(s);
    return rc;
}

int av__scrub_set_limits(av_scrub *s, uint64_t max_expanded, unsigned max_ratio)
{
    if (max_expanded)
        s->max_expanded = max_expanded;
    if (max_ratio)
        s->max_ratio = max_ratio;
    return AV_OK;
}

void av__scrub_free(av_scrub *s)
{
    if (!s)
        return;
    core_free(&s->core);
    if (s->zi_init)
        inflateEnd(&s->zi);
    if (s->zo_init)
        deflateEnd(&s->zo);
    if (s->ibuf)
        av__wipe(s->ibuf, IBUF_SIZE);
    av__free(s->ibuf);
    av__buf_free_wipe(&s->plain);
    av__buf_free_wipe(&s->zbuf);
    av__scrub_set_unref(s->set);
    av__wipe(s, sizeof(*s));
    av__free(s);
}

unsigned long av__scrub_count(const av_scrub *s)
{
    return s->core.count;
}

size_t av__scrub_held(const av_scrub *s)
{
    return core_held(&s->core);
}

size_t av__scrub_window(const av_scrub *s)
{
    return s->core.window;
}

size_t av__scrub_min_room(const av_scrub *s)
{
    /* compressed output can always progress with one byte of room */
    return s->enc == AV_SCRUB_IDENTITY ? core_bound(&s->core, s->core.window + 1) : 1;
}

/* z_start_inflate initialises inflate for the detected format. */
static int z_start(av_scrub *s)
{
    int wbits_in, wbits_out;
    switch (s->zfmt) {
    case ZF_GZIP: wbits_in = 15 + 32, wbits_out = 16 + 12; break; /* accept zlib too */
    case ZF_ZLIB: wbits_in = 15, wbits_out = 12; break;
    default: wbits_in = -15, wbits_out = -12; break;
    }
    s->zi.zalloc = s->zo.zalloc = z_alloc;
    s->zi.zfree = s->zo.zfree = z_free;
    s->zi.opaque = s->zo.opaque = Z_NULL;
    int r = inflateInit2(&s->zi, wbits_in);
    if (r != Z_OK)
        return r == Z_MEM_ERROR ? AV_ERR_NOMEM : AV_ERR_STATE;
    s->zi_init = 1;
    r = deflateInit2(&s->zo, 1, Z_DEFLATED, wbits_out, 5, Z_DEFAULT_STRATEGY);
    if (r != Z_OK)
        return r == Z_MEM_ERROR ? AV_ERR_NOMEM : AV_ERR_STATE;
    s->zo_init = 1;
    return AV_OK;
}

/* z_drain copies deflated bytes from zbuf to |out|; returns how many. */
static size_t z_drain(av_scrub *s, av_buf *out)
{
    size_t n = av__buf_len(&s->zbuf), room = av__buf_room(out);
    if (n > room)
        n = room;
    if (n == 0 || av__buf_append(out, av__buf_head(&s->zbuf), n) != AV_OK)
        return 0;
    av__buf_consume(&s->zbuf, n);
    return n;
}

/* z_deflate_step moves plain through deflate (with |flush|) into zbuf and
 * zbuf into |out|. Deflate always gets >= ZBUF_MIN bytes of output space:
 * a sync flush into a few bytes would repeat its marker forever. *done is
 * set when deflate completed the flush (or finish). */
static int z_deflate_step(av_scrub *s, av_buf *out, int flush, int *progress, int *done)
{
    *done = 0;
    if (z_drain(s, out))
        *progress = 1;
    if (av__buf_room(&s->zbuf) < ZBUF_MIN)
        return AV_OK;
    size_t room;
    int err = AV_OK;
    uint8_t *w = av__buf_tail(&s->zbuf, &room, &err);
    if (!w)
        return err;
    if (room > UINT_MAX)
        room = UINT_MAX;
    size_t in_len = av__buf_len(&s->plain);
    s->zo.next_in = (Bytef *)(uintptr_t)av__buf_head(&s->plain);
    s->zo.avail_in = (uInt)in_len;
    s->zo.next_out = w;
    s->zo.avail_out = (uInt)room;
    int r = deflate(&s->zo, flush);
    size_t took = in_len - s->zo.avail_in, made = room - s->zo.avail_out;
    av__buf_consume(&s->plain, took);
    av__buf_commit(&s->zbuf, made);
    if (r == Z_STREAM_ERROR)
        return AV_ERR_STATE;
    if (took)
        s->dirty = 1;
    if (took || made)
        *progress = 1;
    if (flush == Z_FINISH)
        *done = r == Z_STREAM_END;
    else
        *done = s->zo.avail_in == 0 && s->zo.avail_out != 0;
    if (z_drain(s, out))
        *progress = 1;
    return AV_OK;
}

/* z_inflate_step inflates into ibuf from the sniffed bytes or |in|. */
static int z_inflate_step(av_scrub *s, const uint8_t *in, size_t len, size_t *used,
                          int *progress)
{
    if (s->zfmt == ZF_UNKNOWN) {
        while (s->nsniff < 2 && *used < len) {
            s->sniff[s->nsniff++] = in[(*used)++];
            *progress = 1;
        }
        if (s->nsniff < 2)
            return AV_OK;
        unsigned cmf = s->sniff[0], flg = s->sniff[1];
        s->zfmt = ((cmf & 0x0f) == 8 && (cmf >> 4) <= 7 && ((cmf << 8) | flg) % 31 == 0)
                      ? ZF_ZLIB
                      : ZF_RAW;
    }
    if (!s->zi_init) {
        int rc = z_start(s);
        if (rc)
            return rc;
    }
    int from_sniff = s->sniff_off < s->nsniff;
    const uint8_t *src = from_sniff ? s->sniff + s->sniff_off : in ? in + *used : NULL;
    size_t avail = from_sniff ? s->nsniff - s->sniff_off : len - *used;
    if (s->zi_end) {
        if (avail == 0)
            return AV_OK;
        if (s->zfmt != ZF_GZIP)
            return AV_ERR_PARSE; /* bytes after the end of a zlib/raw stream */
        if (inflateReset(&s->zi) != Z_OK)
            return AV_ERR_STATE;
        s->zi_end = 0; /* another gzip member */
    }
    if (avail > UINT_MAX)
        avail = UINT_MAX;
    s->zi.next_in = (Bytef *)(uintptr_t)src;
    s->zi.avail_in = (uInt)avail;
    s->zi.next_out = s->ibuf;
    s->zi.avail_out = (uInt)IBUF_SIZE;
    int r = inflate(&s->zi, Z_NO_FLUSH);
    size_t took = avail - s->zi.avail_in, made = IBUF_SIZE - s->zi.avail_out;
    if (from_sniff)
        s->sniff_off += took;
    else
        *used += took;
    s->ioff = 0;
    s->ilen = made;
    s->tot_in += took;
    s->tot_out += made;
    if (took || made)
        *progress = 1;
    s->infl_more = s->zi.avail_out == 0;
    switch (r) {
    case Z_OK:
    case Z_BUF_ERROR:
        break;
    case Z_STREAM_END:
        s->zi_end = 1;
        s->infl_more = 0;
        break;
    case Z_MEM_ERROR:
        return AV_ERR_NOMEM;
    default:
        return AV_ERR_PARSE; /* Z_DATA_ERROR, Z_NEED_DICT */
    }
    if (s->tot_out > s->max_expanded ||
        (s->tot_out > AV_SCRUB_RATIO_FLOOR && s->tot_out / s->max_ratio > s->tot_in))
        return AV_ERR_DENIED;
    return AV_OK;
}

/* z_pump runs inflate -> core -> deflate until nothing moves. */
static int z_pump(av_scrub *s, const uint8_t *in, size_t len, size_t *consumed, av_buf *out)
{
    size_t used = 0;
    int rc = AV_OK;
    if (len)
        s->seen_input = 1;
    for (;;) {
        int progress = 0, done = 0;
        if (av__buf_len(&s->plain) || s->flushing || av__buf_len(&s->zbuf)) {
            rc = z_deflate_step(s, out, s->flushing ? Z_SYNC_FLUSH : Z_NO_FLUSH, &progress,
                                &done);
            if (rc)
                break;
            if (s->flushing && done)
                s->flushing = 0;
        }
        if (s->ilen) {
            size_t took = 0;
            rc = core_feed(&s->core, s->ibuf + s->ioff, s->ilen, &took, &s->plain);
            if (rc == AV_ERR_LIMIT)
                rc = AV_OK;
            if (rc)
                break;
            av__wipe(s->ibuf + s->ioff, took);
            s->ioff += took;
            s->ilen -= took;
            if (took)
                progress = 1;
        }
        if (s->ilen == 0 && (used < len || s->infl_more || s->sniff_off < s->nsniff)) {
            rc = z_inflate_step(s, in, len, &used, &progress);
            if (rc)
                break;
        }
        if (!progress) {
            int idle = used == len && s->ilen == 0 && !s->infl_more &&
                       av__buf_len(&s->plain) == 0 && av__buf_len(&s->zbuf) == 0 &&
                       s->sniff_off >= s->nsniff;
            if (idle && s->dirty && !s->flushing) {
                s->dirty = 0;
                s->flushing = 1;
                continue;
            }
            break;
        }
    }
    *consumed = used;
    if (rc)
        return fail(s, rc);
    int idle = used == len && s->ilen == 0 && !s->infl_more && av__buf_len(&s->plain) == 0 &&
               av__buf_len(&s->zbuf) == 0 && !s->flushing &&
               (s->sniff_off >= s->nsniff || s->nsniff < 2);
    return idle ? AV_OK : AV_ERR_LIMIT;
}

int av__scrub_feed(av_scrub *s, const uint8_t *in, size_t len, size_t *consumed,
                   av_buf *out)
{
    *consumed = 0;
    if (s->fail)
        return s->fail;
    if (s->fin_stage)
        return AV_ERR_STATE;
    if (s->enc == AV_SCRUB_IDENTITY) {
        int rc = core_feed(&s->core, in, len, consumed, out);
        return rc == AV_OK || rc == AV_ERR_LIMIT || rc == AV_ERR_INVALID ? rc : fail(s, rc);
    }
    return z_pump(s, in, len, consumed, out);
}

int av__scrub_reset(av_scrub *s)
{
    if (!s || s->enc != AV_SCRUB_IDENTITY)
        return AV_ERR_INVALID;
    if (s->fail)
        return s->fail;
    sc_core *c = &s->core;
    av__wipe(c->ring, c->ring_cap);
    av__wipe(c->reg, c->reg_cap * sizeof(*c->reg));
    c->q = 0;
    c->pos = c->emitted = 0;
    c->ring_head = c->ring_len = 0;
    c->reg_head = c->reg_len = 0;
    s->fin_stage = 0;
    return AV_OK;
}

int av__scrub_finish(av_scrub *s, av_buf *out)
{
    int rc;
    if (s->fail)
        return s->fail;
    if (s->enc == AV_SCRUB_IDENTITY) {
        rc = core_finish(&s->core, out);
        if (rc == AV_OK)
            s->fin_stage = 2;
        return rc == AV_OK || rc == AV_ERR_LIMIT || rc == AV_ERR_INVALID ? rc : fail(s, rc);
    }
    if (!s->seen_input)
        return AV_OK; /* an empty body stays empty */
    size_t dummy;
    if (s->fin_stage == 0) {
        rc = z_pump(s, NULL, 0, &dummy, out);
        if (rc)
            return rc;
        if (!s->zi_end)
            return fail(s, AV_ERR_PARSE); /* truncated compressed body */
        rc = core_finish(&s->core, &s->plain); /* plain is empty: it fits */
        if (rc)
            return fail(s, rc == AV_ERR_LIMIT || rc == AV_ERR_INVALID ? AV_ERR_STATE : rc);
        s->fin_stage = 1;
    }
    while (s->fin_stage == 1) {
        int progress = 0, done = 0;
        rc = z_deflate_step(s, out, Z_FINISH, &progress, &done);
        if (rc)
            return fail(s, rc);
        if (done)
            s->fin_stage = 2;
        else if (!progress)
            return AV_ERR_LIMIT;
    }
    z_drain(s, out);
    return av__buf_len(&s->zbuf) ? AV_ERR_LIMIT : AV_OK;
}

/* ---- helpers ----------------------------------------------------------------- */

static int header_value_with(av_scrub *s, const char *v, size_t vlen, char **out, size_t *outlen,
                             unsigned long *count);

int av__scrub_header_value(const av_secret *const *secrets, size_t n, const char *v,
                           size_t vlen, char **out, size_t *outlen, unsigned long *count)
{
    if (!out || !outlen || (vlen && !v))
        return AV_ERR_INVALID;
    *out = NULL;
    *outlen = 0;
    av_scrub *s = NULL;
    int rc = av__scrub_new(&s, secrets, n, AV_SCRUB_IDENTITY);
    if (rc)
        return rc;
    return header_value_with(s, v, vlen, out, outlen, count);
}

int av__scrub_set_matches(const av_scrub_set *set, const uint8_t *v, size_t n)
{
    const sc_core *c = &set->proto;
    if (!c->nodes || n < c->minlen)
        return 0;
    uint32_t q = 0;
    for (size_t i = 0; i < n; i++) {
        q = ac_step(c, q, v[i]);
        if (c->nodes[q].out)
            return 1;
    }
    return 0;
}

int av__scrub_header_value_set(av_scrub_set *set, const char *v, size_t vlen, char **out, size_t *outlen,
                               unsigned long *count)
{
    if (!out || !outlen || (vlen && !v) || !set)
        return AV_ERR_INVALID;
    *out = NULL;
    *outlen = 0;
    /* Fast path: no pattern occurs in the value (one automaton pass, no
     * allocation but the copy). */
    if (!av__scrub_set_matches(set, (const uint8_t *)v, vlen)) {
        *out = av__malloc(vlen + 1);
        if (!*out)
            return AV_ERR_NOMEM;
        if (vlen)
            memcpy(*out, v, vlen);
        (*out)[vlen] = '\0';
        *outlen = vlen;
        if (count)
            *count = 0;
        return AV_OK;
    }
    av_scrub *s = NULL;
    int rc = av__scrub_new_from_set(&s, set, AV_SCRUB_IDENTITY);
    if (rc)
        return rc;
    return header_value_with(s, v, vlen, out, outlen, count);
}

/* Scrub one value with a fresh scrubber |s| (freed here). */
static int header_value_with(av_scrub *s, const char *v, size_t vlen, char **out, size_t *outlen,
                             unsigned long *count)
{
    int rc;
    av_buf b;
    /* everything decided in one block: core_feed wants room for
     * core_bound(vlen) by its conservative estimate, plus the NUL */
    av__buf_init(&b, core_bound(&s->core, vlen) + AV_SCRUB_MARKER_LEN + 2);
    size_t took = 0;
    rc = av__scrub_feed(s, (const uint8_t *)v, vlen, &took, &b);
    if (!rc)
        rc = av__scrub_finish(s, &b);
    if (!rc)
        rc = av__buf_append(&b, "", 1);
    if (!rc) {
        *outlen = av__buf_len(&b) - 1;
        *out = av__memdup(av__buf_head(&b), av__buf_len(&b));
        if (!*out)
            rc = AV_ERR_NOMEM;
        else if (count)
            *count = s->core.count;
    }
    if (rc)
        *outlen = 0;
    av__buf_free_wipe(&b);
    av__scrub_free(s);
    return rc;
}

static int ci_eq(const char *a, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    if (n != m)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != lit[i])
            return 0;
    }
    return 1;
}

int av__scrub_encoding_parse(const char *v, size_t len)
{
    if (!v)
        return len ? AV_ERR_INVALID : AV_SCRUB_IDENTITY;
    while (len && (v[0] == ' ' || v[0] == '\t'))
        v++, len--;
    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (len == 0 || ci_eq(v, len, "identity"))
        return AV_SCRUB_IDENTITY;
    if (ci_eq(v, len, "gzip") || ci_eq(v, len, "x-gzip"))
        return AV_SCRUB_GZIP;
    if (ci_eq(v, len, "deflate"))
        return AV_SCRUB_DEFLATE;
    return AV_ERR_INVALID;
}

/* A scrubber with patterns of its own: a one-off set. */
int av__scrub_new(av_scrub **out, const av_secret *const *secrets, size_t n, int content_encoding)
{
    if (!out || (n && !secrets))
        return AV_ERR_INVALID;
    *out = NULL;
    if (content_encoding != AV_SCRUB_IDENTITY && content_encoding != AV_SCRUB_GZIP &&
        content_encoding != AV_SCRUB_DEFLATE)
        return AV_ERR_INVALID;
    av_scrub_set *set = NULL;
    int rc = av__scrub_set_new(&set, secrets, n);
    if (rc)
        return rc;
    rc = av__scrub_new_from_set(out, set, content_encoding);
    av__scrub_set_unref(set); /* the scrubber holds its own reference */
    return rc;
}
