/* av_scrub.h - response scrubbing: remove injected secrets from responses.
 *
 * For every secret injected into a request, the response the agent receives
 * must not contain it (SECURITY.md 11). A scrubber is built from the secrets
 * of one exchange and fed the response body in arbitrary chunks; it appends
 * the body with every occurrence of a secret-derived pattern replaced by
 * AV_SCRUB_MARKER. It does no I/O and its memory is bounded.
 *
 * Patterns derived from a secret of L bytes (all generated at _new, kept in
 * memory that is wiped on free, never logged):
 *
 *   raw       the bytes themselves (always; also for L < AV_SCRUB_MIN_ENCODED)
 *
 *   the rest only when L >= AV_SCRUB_MIN_ENCODED (8): shorter secrets yield
 *   encoded patterns of a handful of characters that occur in ordinary text.
 *   Even the raw form of a short secret causes false redactions wherever those
 *   bytes occur (a 4-byte secret "abcd" redacts every "abcd" in the body);
 *   that is the price of never leaking it.
 *
 *   base64    standard (+/) and URL-safe (-_) alphabets, for each alignment of
 *             the secret inside a longer encoded blob (secret at offset 0, 1,
 *             2 mod 3): the characters that depend only on secret bits (the
 *             "stable inner substring"), so padding and neighbours do not
 *             matter. Edge characters mixing secret and neighbour bits are
 *             kept: at most 4 bits of the secret at each end of the blob
 *             survive. Also the complete encoding of the secret alone
 *             (alignment 0), with and without '=' padding, both alphabets,
 *             so a blob that is exactly the secret is replaced whole.
 *             Not covered: line-wrapped (MIME, 76 columns) base64.
 *   percent   every byte %XX; every byte %xx; RFC 3986 unreserved
 *             (ALPHA DIGIT - . _ ~) kept, others %XX; the same with %xx;
 *             unreserved plus '/' kept (Python quote()), %XX;
 *             encodeURIComponent (unreserved plus ! * ' ( ) kept), %XX;
 *             application/x-www-form-urlencoded (ALPHA DIGIT * - . _ kept,
 *             space as '+'), %XX. Also base64 (standard; every alignment and
 *             the padded whole) then percent-encoded with unreserved kept,
 *             %XX and %xx. Not covered: mixed-case hex within one pattern
 *             (%2f%2F), or other sets of kept characters.
 *   hex       every byte as two hex digits, all lower case or all upper
 *             case (Python bytes.hex(), Go hex.EncodeToString, %02x / %02X).
 *             Not covered: mixed case within one pattern, separators
 *             between bytes ("de:ad", "de ad"), \x escapes.
 *   JSON      each form above (raw, base64, percent) as a JSON string body,
 *             as common encoders write it:
 *               minimal  \" \\ \b \f \n \r \t, other C0 as \u00xx, the rest
 *                        as is (JSON.stringify, serde_json, Python with
 *                        ensure_ascii=False, Ruby)
 *               ascii    minimal + non-ASCII (UTF-8 decoded) as \uxxxx,
 *                        surrogate pairs above U+FFFF (Python default)
 *               ASCII    the same with upper-case hex (Jackson, Java)
 *               php      ascii + '/' as \/ (PHP json_encode default)
 *               html     minimal + < > & as \u003c \u003e \u0026, U+2028/9
 *                        as \u2028 \u2029 (Go encoding/json, Rails)
 *               gson     minimal + < > & = ' as \u003c \u003e \u0026 \u003d
 *                        \u0027, U+2028/9 escaped (Gson default)
 *             A variant that needs UTF-8 decoding is skipped when the secret
 *             is not valid UTF-8 (such an encoder could not emit it intact).
 *             Not covered: doubly escaped JSON (JSON in a JSON string).
 *
 * Matching: one Aho-Corasick automaton over all patterns of all secrets
 * (sparse trie, failure links, a 256-entry root table that skips bytes no
 * pattern starts with), so time is linear in the input plus the number of
 * matches, independent of the number of patterns. Every byte covered by any
 * match is redacted. Overlapping matches merge into one marker; adjacent
 * ones (one ends where the next begins) get a marker each.
 *
 * Streaming and the window: a byte is held back only while it may still be
 * the start of a match, i.e. while the input seen so far ends with a proper
 * prefix of some pattern. At most W = (longest pattern - 1) bytes are held
 * (av__scrub_window); typically none are, so SSE events are not delayed
 * unless the end of a chunk looks like the start of a secret. The longest
 * pattern is at most 6 x L (JSON \u escapes); for an ASCII secret without
 * JSON-special characters it is 3 x L (every byte %XX), e.g. W = 152 bytes
 * for a 51-byte API key. Chunk boundaries do not affect the result: any
 * split of the input gives the same output as feeding it in one piece.
 *
 * Compressed bodies (AV_SCRUB_GZIP, AV_SCRUB_DEFLATE): inflate, scrub,
 * re-deflate in the same format (gzip; zlib-wrapped or raw deflate for
 * "deflate", detected from the first two bytes), with a Z_SYNC_FLUSH at the
 * end of every feed call that consumed input, so SSE over gzip keeps
 * streaming. Concatenated gzip members are accepted (output as one member);
 * any other bytes after the end of the compressed stream are AV_ERR_PARSE.
 * Expansion is bounded: more than AV_SCRUB_MAX_EXPANDED bytes decompressed,
 * or more than AV_SCRUB_MAX_RATIO times the compressed input once past
 * AV_SCRUB_RATIO_FLOOR bytes, fails with AV_ERR_DENIED.
 *
 * Memory: the automaton is 28 bytes per trie node, about 22 KiB for one
 * 52-byte key and 33 KiB for two (building it briefly needs about twice
 * that plus a scratch of ~28 x L bytes); held bytes take W bytes of ring
 * and 24 x W of region queue. A compressed scrubber adds about 40 KiB for
 * inflate (32 KiB window), 38 KiB for deflate (4 KiB window, memLevel 5)
 * and 64 KiB of staging (16 KiB inflated, 32 KiB scrubbed, 16 KiB
 * deflated), all allocated through av_mem and wiped when freed.
 *
 * Errors are sticky: after AV_ERR_PARSE, AV_ERR_DENIED or AV_ERR_NOMEM from
 * feed/finish, every later call returns the same code. The caller must then
 * fail closed (reset the stream / close the connection), never fall back to
 * relaying the unscrubbed body.
 */
#ifndef AV_SCRUB_H
#define AV_SCRUB_H

#include <stddef.h>
#include <stdint.h>

#include "av_buf.h"
#include "av_secret.h"

/* Content-Encoding of the body being scrubbed. */
enum { AV_SCRUB_IDENTITY = 0, AV_SCRUB_GZIP = 1, AV_SCRUB_DEFLATE = 2 };

#define AV_SCRUB_MARKER "[REDACTED]"
#define AV_SCRUB_MARKER_LEN (sizeof(AV_SCRUB_MARKER) - 1)
/* Secrets shorter than this are scrubbed in raw form only. */
#define AV_SCRUB_MIN_ENCODED 8
/* Longer secrets are refused by av__scrub_new (AV_ERR_LIMIT). */
#define AV_SCRUB_MAX_SECRET 4096
/* Decompression bounds (defaults; see av__scrub_set_limits). */
#define AV_SCRUB_MAX_EXPANDED ((uint64_t)64 << 20)
#define AV_SCRUB_MAX_RATIO 100u
#define AV_SCRUB_RATIO_FLOOR ((uint64_t)1 << 20)

typedef struct av_scrub av_scrub;

/* av__scrub_new builds a scrubber for |n| secrets (NULL entries and empty
 * secrets are ignored; the secrets are not referenced after the call) and a
 * body in |content_encoding| (AV_SCRUB_IDENTITY, _GZIP or _DEFLATE).
 * Returns 0, AV_ERR_INVALID (unknown encoding, NULL out), AV_ERR_LIMIT (a
 * secret longer than AV_SCRUB_MAX_SECRET) or AV_ERR_NOMEM. */
int av__scrub_new(av_scrub **out, const av_secret *const *secrets, size_t n,
                  int content_encoding);

/* A compiled pattern set shared by many scrubbers: building the automaton
 * is by far the most expensive step, so callers build it once per secret
 * (av__scrub_set_new, same rules as av__scrub_new) and make each response's
 * scrubber from it. Refcounted; the set is immutable once built. */
typedef struct av_scrub_set av_scrub_set;
int av__scrub_set_new(av_scrub_set **out, const av_secret *const *secrets, size_t n);
av_scrub_set *av__scrub_set_ref(av_scrub_set *set);
void av__scrub_set_unref(av_scrub_set *set);
int av__scrub_new_from_set(av_scrub **out, av_scrub_set *set, int content_encoding);
/* av__scrub_set_matches: does any pattern occur in v[0..n)? (No
 * allocation; for deciding whether scrubbing is needed at all.) */
int av__scrub_set_matches(const av_scrub_set *set, const uint8_t *v, size_t n);
/* av__scrub_header_value with a set (see below). */
int av__scrub_header_value_set(av_scrub_set *set, const char *v, size_t vlen, char **out, size_t *outlen,
                               unsigned long *count);

/* av__scrub_set_limits changes the decompression bounds (0 keeps the
 * default). Returns 0. */
int av__scrub_set_limits(av_scrub *s, uint64_t max_expanded, unsigned max_ratio);

/* av__scrub_feed takes body bytes and appends scrubbed (and, for compressed
 * bodies, re-compressed) bytes to |out|, never beyond its max. *consumed is
 * set to the number of bytes of |in| taken (always, on every return).
 * Returns:
 *   AV_OK          all of |in| was taken and everything that can be written
 *                  now has been written (bytes of a possible partial match
 *                  are held inside, at most av__scrub_window bytes);
 *   AV_ERR_LIMIT   |out| is full: drain it and call again with the rest,
 *                  in + *consumed (possibly zero bytes) until AV_OK. Progress
 *                  needs av__scrub_min_room bytes of room in |out|;
 *   AV_ERR_INVALID |out| is empty and too small to take even one decision
 *                  (give it at least av__scrub_min_room of max);
 *   AV_ERR_STATE   called after av__scrub_finish completed;
 *   AV_ERR_PARSE   the compressed stream is corrupt (sticky);
 *   AV_ERR_DENIED  the decompression bound was exceeded (sticky);
 *   AV_ERR_NOMEM   (sticky). */
int av__scrub_feed(av_scrub *s, const uint8_t *in, size_t len, size_t *consumed,
                   av_buf *out);

/* av__scrub_finish marks the end of the body: flushes the held bytes and,
 * for compressed bodies, ends the output stream. Call again after draining
 * |out| while it returns AV_ERR_LIMIT. Returns 0, AV_ERR_LIMIT,
 * AV_ERR_INVALID, AV_ERR_PARSE (compressed input truncated or corrupt: the
 * output stream is left unterminated), AV_ERR_DENIED or AV_ERR_NOMEM. A
 * compressed body with no bytes at all gives no output and 0. */
int av__scrub_finish(av_scrub *s, av_buf *out);

/* av__scrub_reset makes an identity scrubber ready for a new body (held
 * bytes are dropped: finish first), keeping the count: one scrubber serves
 * the messages of a WebSocket one after another. Returns 0, AV_ERR_INVALID
 * (a compressed scrubber) or the sticky error. */
int av__scrub_reset(av_scrub *s);

/* av__scrub_count: markers written so far (one per maximal group of
 * overlapping matches; a marker is counted when it is written, so held
 * matches count after the next feed or finish). */
unsigned long av__scrub_count(const av_scrub *s);
/* av__scrub_held: plaintext bytes held back now (<= av__scrub_window). */
size_t av__scrub_held(const av_scrub *s);
/* av__scrub_window: W, the most bytes ever held (longest pattern - 1). */
size_t av__scrub_window(const av_scrub *s);
/* av__scrub_min_room: room |out| needs for a feed or finish to progress. */
size_t av__scrub_min_room(const av_scrub *s);

/* av__scrub_free wipes every internal buffer (patterns, held plaintext,
 * zlib state) and frees. NULL is a no-op. */
void av__scrub_free(av_scrub *s);

/* av__scrub_header_value scrubs one header value (not streaming). *out is
 * a NUL-terminated av__malloc'd copy (caller av__free's it) with *outlen
 * bytes; *count (may be NULL) gets the number of markers. Returns 0,
 * AV_ERR_INVALID, AV_ERR_LIMIT (a secret too long) or AV_ERR_NOMEM. */
int av__scrub_header_value(const av_secret *const *secrets, size_t n, const char *v,
                           size_t vlen, char **out, size_t *outlen, unsigned long *count);

/* av__scrub_encoding_parse maps a Content-Encoding value (case-insensitive,
 * surrounding whitespace ignored; empty or "identity" is AV_SCRUB_IDENTITY,
 * "gzip"/"x-gzip", "deflate") to AV_SCRUB_*, or AV_ERR_INVALID for anything
 * else (br, zstd, a list of codings): the caller must then fail closed, or
 * better, never offer other codings upstream (rewrite Accept-Encoding). */
int av__scrub_encoding_parse(const char *v, size_t len);

#endif
