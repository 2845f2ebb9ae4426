/* av_enc.h - the one set of text encoders: base64 (standard and URL-safe
 * alphabets), percent-encoding, JSON string escaping, hex, line
 * sanitizing and decimal.
 *
 * Also av__subst_replace, the placeholder substitution in a byte string.
 *
 * Pure functions over caller buffers: no allocation (but the result of
 * av__subst_replace), no state, no I/O, so they run on the hot path and in
 * the daemon alike. Each function says how much room |out| needs; none
 * writes a terminating NUL unless it says so. Encoders that may be handed
 * a secret keep no copies of it; wiping the output is the caller's job.
 */
#ifndef AV_ENC_H
#define AV_ENC_H

#include <stddef.h>
#include <stdint.h>

/* ---- hex ----------------------------------------------------------------- */

/* Letter case of hex digits (hex, percent escapes, JSON \u escapes). */
#define AV__HEX_LOWER 0
#define AV__HEX_UPPER 1

/* av__hex_value returns the value (0..15) of hex digit |c| in either case,
 * or -1. */
int av__hex_value(unsigned char c);

/* av__hex_encode writes two digits per byte of |in| (2 * |n| bytes) and
 * returns 2 * |n|. */
size_t av__hex_encode(const void *in, size_t n, int hex_case, char *out);

/* av__hex_decode decodes |len| hex digits (either case; |len| even) into
 * |out| and stores the byte count (|len| / 2) in *out_len. Returns 0,
 * AV_ERR_INVALID (odd length or not a hex digit) or AV_ERR_LIMIT (more
 * than |cap| bytes). */
int av__hex_decode(const char *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* ---- base64 (RFC 4648) ----------------------------------------------------- */

#define AV__B64_URL 1u         /* alphabet of section 5: '-' '_' for '+' '/' */
#define AV__B64_NOPAD 2u       /* encode: no '='; decode: '=' refused */
#define AV__B64_PAD_OPTIONAL 4u /* decode: padded and unpadded both taken */
#define AV__B64_STRICT 8u      /* decode: the unused low bits of the last
                                  character must be zero (canonical form) */

/* av__b64_encoded_len is the length av__b64_encode writes for |n| bytes. */
size_t av__b64_encoded_len(size_t n, unsigned flags);

/* av__b64_encode writes the base64 of |in| (|flags|: AV__B64_URL,
 * AV__B64_NOPAD) and returns its length: at most 4 * ceil(n / 3). */
size_t av__b64_encode(const void *in, size_t n, unsigned flags, char *out);

/* av__b64_encode_shifted writes the characters of the base64 of |in| that
 * depend on |in| alone when |in| starts |shift| bytes (0..2) into a
 * 3-byte group of a longer input: the form a value takes inside a larger
 * base64 text, whatever came before it. No padding, no partial final
 * character. Returns the length: at most 4 * ceil(n / 3). */
size_t av__b64_encode_shifted(const void *in, size_t n, size_t shift, unsigned flags, char *out);

/* av__b64_decode decodes |len| characters of |in| into |out| (|cap|
 * bytes; 3 * ceil(len / 4) always suffice) and stores the byte count in
 * *out_len. By default the input must be padded to a multiple of 4 with
 * '=' at the end only; AV__B64_NOPAD requires no padding (and refuses a
 * length of 1 mod 4), AV__B64_PAD_OPTIONAL takes either. No white space,
 * no other characters, no NUL. Returns 0, AV_ERR_INVALID (not base64 of
 * that form) or AV_ERR_LIMIT (more than |cap| bytes). */
int av__b64_decode(const char *in, size_t len, unsigned flags, uint8_t *out, size_t cap,
                   size_t *out_len);

/* ---- percent-encoding (RFC 3986) ------------------------------------------- */

/* Which bytes stay literal; every other byte becomes %XX. */
enum {
    AV__PCT_ALL,        /* none */
    AV__PCT_UNRESERVED, /* ALPHA DIGIT - . _ ~ */
    AV__PCT_PATH,       /* unreserved and '/' */
    AV__PCT_URIC,       /* unreserved and ! * ' ( ) (JavaScript encodeURIComponent) */
    AV__PCT_FORM,       /* ALPHA DIGIT * - . _, and ' ' as '+'
                           (application/x-www-form-urlencoded) */
};

/* av__pct_encode writes |in| percent-encoded with set |set| and hex digits
 * in |hex_case|; returns the length: at most 3 * |n|. */
size_t av__pct_encode(const void *in, size_t n, int set, int hex_case, char *out);

/* ---- JSON string escaping (RFC 8259) --------------------------------------- */

/* With no flags: '"' and '\\' as \" and \\, the other bytes below 0x20 as
 * \u00xx (lower-case hex), everything else (0x7f and non-ASCII) as is. */
#define AV__JSON_SHORT 1u  /* \b \f \n \r \t for those five controls */
#define AV__JSON_UPPER 2u  /* upper-case hex in \u escapes */
#define AV__JSON_BYTES 4u  /* every byte >= 0x7f as \u00XX: plain ASCII out,
                              valid JSON whatever the input */
#define AV__JSON_ASCII 8u  /* non-ASCII as \uXXXX (surrogate pairs above
                              U+FFFF); the input must be valid UTF-8 */
#define AV__JSON_SLASH 16u /* '/' as \/ */
#define AV__JSON_HTML 32u  /* < > & as \u00XX, U+2028 U+2029 as \u; the
                              input must be valid UTF-8 */
#define AV__JSON_GSON 64u  /* AV__JSON_HTML plus = and ' as \u00XX */

/* av__json_escape writes |in| as the body of a JSON string (no quotes)
 * escaped as |flags| say and returns the length (at most 6 * |n|), or
 * (size_t)-1 when the flags need valid UTF-8 and |in| is not. */
size_t av__json_escape(const void *in, size_t n, unsigned flags, char *out);

/* av__json_escape_str escapes the C string |in| (NULL: empty) into |out|
 * (|cap| >= 1 bytes) as av__json_escape does with |flags| (not the UTF-8
 * ones), whole escapes only, as many as fit with a NUL after them. Returns
 * the length written. */
size_t av__json_escape_str(char *out, size_t cap, const char *in, unsigned flags);

/* ---- line sanitizing ------------------------------------------------------- */

#define AV__LINE_NO_SPACE 1u /* ' ' is replaced too */
#define AV__LINE_KEEP_HIGH 2u /* bytes 0x80..0xff are kept */
#define AV__LINE_BLANK 4u    /* the replacement is ' ', not '?' */

/* av__sanitize_line copies |len| bytes of |in| into |out| (|cap| >= 1
 * bytes) as one line of printable text: control characters (below 0x20,
 * 0x7f; NUL included) and bytes >= 0x80 become '?', cut to cap - 1 bytes,
 * then a NUL. |out| may be |in| (in place). Returns the length written. */
size_t av__sanitize_line(char *out, size_t cap, const char *in, size_t len, unsigned flags);

/* ---- decimal --------------------------------------------------------------- */

/* av__u64_dec writes |v| in decimal and a NUL into |out| (21 bytes
 * suffice) and returns the number of digits. */
size_t av__u64_dec(char *out, uint64_t v);

/* ---- substitution --------------------------------------------------------- */

/* av__subst_replace replaces every occurrence of |needle| in |in| with
 * |repl|. Returns 1 and a new av__malloc'd buffer in *out (caller frees,
 * wiping) when something was replaced, 0 when |in| has no occurrence, or
 * AV_ERR_NOMEM / AV_ERR_LIMIT (result over |max_out|). */
int av__subst_replace(const uint8_t *in, size_t len, const uint8_t *needle, size_t needle_len,
                      const uint8_t *repl, size_t repl_len, size_t max_out, uint8_t **out,
                      size_t *out_len);

#endif
