/* control.h - the daemon's control socket: requests held for a person
 * (decide = ask) and the CLI that answers them.
 *
 * The socket is <state_dir>/control.sock (AF_UNIX, mode 0600, the peer's
 * credentials checked: the daemon's user or root). It is the daemon's
 * only control channel and never listens on TCP. One thread serves it
 * with poll(2); the library's decide callback (any loop thread) adds
 * requests to a table under a mutex and wakes that thread through a pipe.
 *
 * The protocol is lines of text, one command per connection line:
 *   pending                      -> "held\tID\tAGE\tTOKEN\tMETHOD\tHOST\tPATH\tSERVICE" lines, then "end"
 *   watch                        -> the same, then "held ..." and "gone\tID" lines as they happen
 *   approve ID [SECONDS path|service] -> "ok" or "error REASON"
 *   deny ID [REASON...]          -> "ok" or "error REASON"
 */
#ifndef AV_DAEMON_CONTROL_H
#define AV_DAEMON_CONTROL_H

#include <stddef.h>

#include <agentvault/agentvault.h>

typedef struct ctl ctl;

/* ctl_start binds the control socket in |state_dir| and starts its
 * thread. Returns 0, or -1 with a one-line reason in |err|. A state
 * directory the daemon may not write (replicas) gives 1 and no ctl unless
 * |required| (the configuration has decide = ask). */
int ctl_start(const char *state_dir, int required, ctl **out, char *err, size_t err_len);
/* ctl_decide is the av_decide_fn to install (user data: the ctl). */
void ctl_decide(void *ud, av_decision_request *req);
/* ctl_stop stops the thread, denies what is still held, removes the
 * socket and frees. NULL is a no-op. */
void ctl_stop(ctl *c);

/* The CLI: `agentvault pending [--watch]`, `approve ID [--remember DUR]
 * [--scope path|service]`, `deny ID [--reason TEXT]`. Returns the exit
 * code. */
int ctl_client(const char *state_dir, int argc, char **argv);

#endif
