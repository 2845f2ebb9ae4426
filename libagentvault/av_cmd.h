/* av_cmd.h - run a program without a shell, bounded: the one process
 * runner of `command:` secrets (av_resolver.c) and `decide = command:`
 * filters and `decide_notify` programs (av_decide.c).
 *
 * The command line is "/abs/path arg..." (arguments split on blanks; '...'
 * and "..." quote, no escapes, no expansion; at most 32 arguments). The
 * program gets |in| on standard input (at most AV_CMD_IN_MAX bytes, written
 * into the pipe before it starts, so nothing ever blocks on it) or
 * /dev/null, stderr is discarded, and at most |out_max| bytes of standard
 * output are kept. It must exit within |timeout| seconds, else it is
 * killed (SIGKILL). Signals are unblocked and at their defaults in the
 * child. Loop thread only.
 */
#ifndef AV_CMD_H
#define AV_CMD_H

#include <stddef.h>
#include <stdint.h>

#include "av_ev.h"

/* Standard input is written into the pipe before the program starts: at
 * most 60 KiB fits a pipe's default capacity; up to AV_CMD_IN_MAX the pipe
 * is enlarged (F_SETPIPE_SZ; a decision's JSON with decide_body). */
#define AV_CMD_IN_MAX (128 * 1024)
#define AV_CMD_ARGS_MAX 32

typedef struct av_cmd av_cmd;

/* How a run ended. */
enum {
    AV_CMD_EXITED = 0,   /* the program exited (or was killed by a signal): see status */
    AV_CMD_TIMEOUT = 1,  /* it did not finish in time (killed) */
    AV_CMD_TOO_BIG = 2   /* it printed more than out_max bytes (killed) */
};

/* |done| runs once, on the loop thread, when the run is over; it may free
 * the command (av__cmd_free). |how| is AV_CMD_*, |status| from waitpid. */
typedef void (*av_cmd_done)(void *ud, av_cmd *cmd, int how, int status);

/* av__cmd_split splits |cmdline| into argv (written into |buf|, at least
 * strlen(cmdline) + 1 bytes; |argv| holds AV_CMD_ARGS_MAX + 1). Returns
 * argc, or -1 for unbalanced quotes, too many arguments or none. */
int av__cmd_split(const char *cmdline, char *buf, char **argv);

/* av__cmd_start starts |cmdline|. With a loop, |done| is called when it
 * is over; without (loop NULL) the caller runs it with av__cmd_wait.
 * Returns AV_OK, AV_ERR_INVALID (bad command line, input too large) or
 * AV_ERR_IO (cannot start: |why| says so, naming the program) or
 * AV_ERR_NOMEM. */
int av__cmd_start(av_loop *loop, const char *cmdline, const void *in, size_t in_len, double timeout,
                  size_t out_max, av_cmd_done done, void *ud, av_cmd **out, char *why, size_t why_len);
/* av__cmd_wait runs a command started without a loop to its end,
 * blocking; returns AV_CMD_* and the status. */
int av__cmd_wait(av_cmd *c, int *status);
/* What the program printed (wiped when the command is freed). */
const uint8_t *av__cmd_output(const av_cmd *c, size_t *len);
/* The program's path, at most 100 bytes, for messages. */
const char *av__cmd_prog(const av_cmd *c);
/* Kill (if still running), reap, wipe and free. NULL is a no-op. */
void av__cmd_free(av_cmd *c);

#endif
