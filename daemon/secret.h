/* secret.h - `agentvault secret`: manage the encrypted vault. */
#ifndef AV_DAEMON_SECRET_H
#define AV_DAEMON_SECRET_H

/* cmd_secret implements `agentvault secret set NAME | list | rm NAME |
 * passwd` with [--vault PATH] [-c FILE] [--state-dir DIR]
 * [--password-file FILE] [--new-password-file FILE] [--no-password];
 * argv[1] is "secret". Returns the exit status for main(): 0, 1 (runtime
 * error) or 2 (usage error). */
int cmd_secret(int argc, char **argv);

#include <stddef.h>

#include <agentvault/agentvault.h>

/* serve_vault_open opens the vault `agentvault serve` reads vault:NAME
 * secrets from. The password comes from |password_file|, from
 * AGENTVAULT_PASSWORD (unset and wiped) or from a no-echo prompt; key-file
 * vaults need none. It is kept in memory (wiped by serve_vault_forget) so a
 * reload can open the file again. Returns 0, or 1 after printing why. */
int serve_vault_open(const char *path, const char *password_file, av_vault **out);
/* serve_vault_reopen opens the vault again with the kept password. */
int serve_vault_reopen(const char *path, av_vault **out, char *err, size_t err_len);
void serve_vault_forget(void);

#endif
