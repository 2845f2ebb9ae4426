/* av_vault.h - the encrypted secret store (internal API).
 *
 * File format, version 1 (integers big-endian):
 *
 *   header (48 bytes, the AAD prefix of everything below)
 *     0  magic "AVVAULT\x1a"        8  u16 version (1)
 *    10  u8 mode (1 password, 2 key file)   11 u8 kdf (1 Argon2id, 0 none)
 *    12  u32 t_cost  16 u32 m_cost (KiB)  20 u32 lanes   (0 in key-file mode)
 *    24  salt[16] (0 in key-file mode)    40 u32 entry count   44 u32 0
 *   wrapped data key: nonce[12] ct[32] tag[16]
 *     AES-256-GCM under the KEK, AAD = "AVK1" || header bytes 0..39 (all
 *     that the KEK depends on; the count is covered by the table tag, so
 *     a removed entry reads as tampering, not as a wrong password)
 *   entries, sorted by name, each:
 *     u8 name_len, name, i64 created, i64 updated, u32 value_len,
 *     nonce[12], ct[value_len], tag[16]
 *     AES-256-GCM under the data key, AAD = "AVE1" || header || u32 index
 *     || the entry bytes from name_len to value_len
 *   table: nonce[12] tag[16]
 *     AES-256-GCM (empty plaintext) under the data key, AAD = "AVT1" ||
 *     every byte before the table: entries cannot be removed, added,
 *     reordered or replayed from an older file of the same vault
 *   checksum: SHA-256 of every byte before it
 *
 * The checksum (unkeyed) tells damage from a wrong password: any change to
 * the bytes is reported as corruption before a key is tried; the AEAD tags
 * are what stop deliberate tampering. The KEK is Argon2id(password, salt)
 * or the 32 bytes of the key file ("AVVKEY1\n" || key[32] || SHA-256 of
 * both). Every save draws a fresh data key and fresh nonces.
 */
#ifndef AV_VAULT_H
#define AV_VAULT_H

#include <stddef.h>
#include <stdint.h>

#include <agentvault/agentvault.h>

#include "av_secret.h"

#define AV_VAULT_NAME_MAX 64
#define AV_VAULT_VALUE_MAX (64 * 1024)
#define AV_VAULT_ENTRIES_MAX 4096
#define AV_VAULT_FILE_MAX (64 * 1024 * 1024)
#define AV_VAULT_PASSWORD_MAX 4096

/* av__vault_create creates |path| (O_EXCL semantics) and returns it open.
 * |no_password| 0: |pw| is the master password (1..4096 bytes). 1: |pw|
 * must be NULL; the key file is created next to the vault. Errors as
 * av_vault_create. */
int av__vault_create(av_vault **out, const char *path, const void *pw, size_t pw_len,
                     int no_password, char *err, size_t err_len);

/* av__vault_open reads, checks and decrypts |path|. Errors as
 * av_vault_open. */
int av__vault_open(av_vault **out, const char *path, const void *pw, size_t pw_len, char *err,
                   size_t err_len);

/* av__vault_probe reads the header only: 1 password, 0 key file, or a
 * negative AV_ERR_* (as av_vault_needs_password). */
int av__vault_probe(const char *path, char *err, size_t err_len);

/* av__vault_free wipes and frees; NULL is a no-op. */
void av__vault_free(av_vault *v);

/* av__vault_get returns a reference to secret |name| (free it with
 * av__secret_free). Returns AV_ERR_NOTFOUND or AV_ERR_INVALID. */
int av__vault_get(const av_vault *v, const char *name, av_secret **out);

/* av__vault_set adds or replaces |name| in memory only (call
 * av__vault_save). Returns AV_ERR_INVALID, AV_ERR_LIMIT or AV_ERR_NOMEM;
 * nothing changes on failure. */
int av__vault_set(av_vault *v, const char *name, const void *value, size_t len, char *err,
                  size_t err_len);

/* av__vault_remove deletes |name| in memory only. AV_ERR_NOTFOUND. */
int av__vault_remove(av_vault *v, const char *name);

size_t av__vault_count(const av_vault *v);
/* av__vault_list gives entry |i| (name order). AV_ERR_NOTFOUND. */
int av__vault_list(const av_vault *v, size_t i, const char **name, int64_t *created,
                   int64_t *updated);

/* av__vault_change_password re-keys under |pw| and saves; on failure the
 * vault is unchanged (a key-file vault becomes a password vault and its key
 * file is removed once the vault is saved). */
int av__vault_change_password(av_vault *v, const void *pw, size_t pw_len, char *err,
                              size_t err_len);

/* av__vault_save writes the vault atomically. Returns AV_ERR_IO, AV_ERR_TLS
 * or AV_ERR_NOMEM; the previous file stays intact on failure. Temporary
 * files a killed writer left next to it are removed first (those whose
 * process is gone, or over an hour old; see remove_stale_tmp). */
int av__vault_save(av_vault *v, char *err, size_t err_len);

/* av__vault_set_lock_wait sets how long av_vault_set, av_vault_remove and
 * av_vault_passwd wait for another writer's lock (default 10 s; <= 0
 * restores it). For tests. */
void av__vault_set_lock_wait(int ms);

/* av__vault_update stores |name| = |value| in the vault file without
 * losing what another writer saved since |v| was read: it takes the
 * writers' lock PATH.lock that 'agentvault secret' takes (an exclusive
 * flock; tried without blocking every 10 ms for at most |wait_ms|, so a
 * caller on an event loop blocks for a bounded time), re-reads and
 * authenticates the file with the key material |v| holds (no password, no
 * key derivation), sets the entry, saves atomically and releases the
 * lock; then |v| holds the file's entries. On failure the file and |v|
 * are unchanged: AV_ERR_AGAIN (another writer still holds the lock: try
 * again later), AV_ERR_IO (lock unusable, read or write failed),
 * AV_ERR_STATE (the file was re-keyed since |v| was opened: its key
 * material no longer opens it), AV_ERR_CORRUPT, AV_ERR_AUTH (the key file
 * was replaced), AV_ERR_INVALID, AV_ERR_LIMIT, AV_ERR_NOMEM; |err| names
 * the file, never a value. */
int av__vault_update(av_vault *v, const char *name, const void *value, size_t len, int wait_ms,
                     char *err, size_t err_len);

/* av__vault_reload replaces the entries of |v| with those of its file,
 * read and authenticated with the key material |v| holds (no lock: a save
 * is an atomic rename). Errors as av__vault_update; |v| unchanged on
 * failure. */
int av__vault_reload(av_vault *v, char *err, size_t err_len);

/* av__vault_path / av__vault_key_path: the files (key path NULL for a
 * password vault). */
const char *av__vault_path(const av_vault *v);
const char *av__vault_key_path(const av_vault *v);

/* av__vault_name_valid: 1 if |name| matches [A-Za-z0-9_.-]{1,64}. */
int av__vault_name_valid(const char *name);

/* ---- test hooks (process-wide; not thread-safe) ------------------------ */

/* av__vault_set_kdf sets the Argon2id cost used for new passwords
 * (default t=3, m=65536 KiB, lanes=1); av__vault_set_kdf_max the highest
 * cost a file may ask for (default t=16, m=1 GiB, lanes=16). Zero
 * arguments restore the defaults. */
void av__vault_set_kdf(uint32_t t_cost, uint32_t m_cost_kib, uint32_t lanes);
void av__vault_set_kdf_max(uint32_t t_cost, uint32_t m_cost_kib, uint32_t lanes);

/* A write hook is called at each step of an atomic file write with the
 * step name ("write", "fsync", "rename"); a non-zero return makes that
 * step fail with EIO ("write" after writing half the bytes). NULL
 * removes it. */
typedef int (*av__vault_write_hook)(const char *step, void *user_data);
void av__vault_set_write_hook(av__vault_write_hook hook, void *user_data);

#endif
