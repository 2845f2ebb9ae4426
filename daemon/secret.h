/* secret.h - `agentvault secret`: manage the encrypted vault. */
#ifndef AV_DAEMON_SECRET_H
#define AV_DAEMON_SECRET_H

/* cmd_secret implements `agentvault secret set NAME | list | rm NAME |
 * passwd` with [--vault PATH] [-c FILE] [--state-dir DIR]
 * [--password-file FILE] [--new-password-file FILE] [--no-password];
 * argv[1] is "secret". Returns the exit status for main(): 0, 1 (runtime
 * error) or 2 (usage error). */
int cmd_secret(int argc, char **argv);

#endif
