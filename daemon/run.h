/* run.h - `agentvault run`: start a command wired to the vault. */
#ifndef AV_DAEMON_RUN_H
#define AV_DAEMON_RUN_H

/* cmd_run implements `agentvault run [--proxy URL] [--token TOKEN]
 * [--no-proxy HOSTS] [--socks] [--keep-env NAMES] -- CMD [ARGS]`; argv[1] is "run". Returns the exit
 * status for main(). */
int cmd_run(int argc, char **argv);

#endif
