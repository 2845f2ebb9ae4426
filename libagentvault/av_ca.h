/* av_ca.h - the certificate authority (part of the TLS boundary).
 *
 * On first use the CA generates an ECDSA P-256 root in the state directory
 * (ca.pem 0644, ca.key 0600, written via write-fsync-rename) and loads it on
 * later starts. A clear error is returned when the files are unreadable,
 * malformed, or do not match each other.
 *
 * Leaves are minted per host (DNS SAN, or IP SAN for IP literals; EKU
 * serverAuth; validity from 1 hour ago to 7 days ahead), signed by the
 * root, all sharing one P-256 leaf key generated at load time, and kept in
 * a bounded LRU keyed by host. Minting costs one signature and is capped
 * at 200 new leaves per second (burst 400): beyond that av__ca_leaf_get
 * returns AV_ERR_LIMIT and the connection is refused.
 */
#ifndef AV_CA_H
#define AV_CA_H

#include <stddef.h>
#include <stdint.h>

typedef struct av_ca av_ca;

/* av__ca_open loads or creates the root in |state_dir| (created 0700 if
 * missing). |cache_size| bounds the leaf LRU (0 means 1024). Returns
 * AV_OK, AV_ERR_CA (unreadable/malformed/mismatched files; |err| says
 * which file and why), AV_ERR_IO or AV_ERR_NOMEM. */
int av__ca_open(av_ca **out, const char *state_dir, size_t cache_size,
                char *err, size_t err_len);
/* av__ca_open_mem loads the root from PEM bytes (ca_cert and ca_key
 * secret references): nothing is read from or written to disk. The names
 * say where each came from, for errors. Same returns as av__ca_open. */
int av__ca_open_mem(av_ca **out, const uint8_t *pem, size_t pem_len, const char *pem_name,
                    const uint8_t *key, size_t key_len, const char *key_name, size_t cache_size,
                    char *err, size_t err_len);
void av__ca_free(av_ca *ca);

/* av__ca_root_pem returns the root certificate in PEM (owned by the CA). */
const char *av__ca_root_pem(const av_ca *ca);

/* Statistics for tests and /metrics. */
typedef struct av_ca_stats {
    unsigned long leaf_hits;
    unsigned long leaf_misses; /* == leaves minted */
    size_t leaf_cached;
    unsigned long leaf_refused; /* mints refused by the rate cap */
} av_ca_stats;
void av__ca_stats(const av_ca *ca, av_ca_stats *st);

/* Leaf lookup is internal to the TLS boundary: av_tls.c uses the functions
 * declared in av_ca_internal.h (which may use TLS-library types). */

#endif
