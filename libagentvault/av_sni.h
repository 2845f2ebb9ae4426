/* av_sni.h - the server name (SNI) of a TLS ClientHello, read from the
 * bytes a client sent before any TLS engine sees them. I/O-free and
 * bounded: only the first TLS record is looked at (at most 16 KiB + 5).
 *
 * Used by the SOCKS5 front's transparent mode: a client that resolved the
 * name itself (curl socks5://, E2B's egress tunnel) names an address in
 * its request, and the SNI is then the only name of the destination.
 */
#ifndef AV_SNI_H
#define AV_SNI_H

#include <stddef.h>
#include <stdint.h>

/* The longest name reported; longer ones are AV_SNI_NONE. */
#define AV_SNI_MAX 253

/* The largest first record examined: the header and 2^14 bytes. */
#define AV_SNI_RECORD_MAX (5 + 16384)

enum {
    AV_SNI_FOUND = 1,      /* |out| holds the host_name (not validated: check it) */
    AV_SNI_INCOMPLETE = 0, /* the first record is not complete yet */
    AV_SNI_NONE = -1,      /* a ClientHello without a usable host_name, or one that does not fit the first record */
    AV_SNI_MALFORMED = -2  /* not a TLS handshake record holding a ClientHello */
};

/* av__sni_peek looks for the host_name of the server_name extension of the
 * ClientHello starting at |p| (|n| bytes). On AV_SNI_FOUND, |out|
 * (AV_SNI_MAX + 1 bytes) holds it as a NUL-terminated string of exactly
 * the bytes sent (a name with a NUL byte is AV_SNI_NONE). */
int av__sni_peek(const uint8_t *p, size_t n, char *out);

#endif
