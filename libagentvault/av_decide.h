/* av_decide.h - decisions: whether a matched request may happen.
 *
 * A service with `decide = ask` or `decide = command:/path ARGS` holds each
 * matching request before any upstream byte until a person or a program
 * answers (issue 18). This file is the thread-safe part, below the
 * exchange (which includes it; av_exchange_decide.c is the exchange's
 * side):
 *  - the registry of a context (av_decide): held requests, remembered
 *    rules, the id counter;
 *  - the hold (the public av_decision_request): the request's read-only
 *    view (a few strings and its JSON object), its state and answer, and
 *    the wakeup of the loop that owns it.
 *
 * Threads. Exchanges live on their connection's loop; an answer may come
 * from any thread (the daemon's control thread, an embedder's UI thread).
 * All hold and registry state is guarded by one process-wide mutex, never
 * held across I/O or a callback into the embedder. An answer stores the
 * verdict and sends the hold's av_async, which belongs to the owning loop;
 * that loop then applies it. A hold is freed when its last reference goes:
 * the exchange's and, while not answered, the embedder's.
 *
 * Remembered rules ("allow for 10 minutes") are in memory, per registry
 * (per context, shared by every loop; CLOCK_MONOTONIC), keyed by service and token name,
 * optionally narrowed to a method and a path glob; at most
 * AV_DECIDE_RULES_MAX, the one closest to expiry replaced when full.
 */
#ifndef AV_DECIDE_H
#define AV_DECIDE_H

#include <stddef.h>
#include <stdint.h>

#include <agentvault/agentvault.h>

#include "av_ev.h"

#define AV_DECIDE_HELD_MAX 1024    /* requests held at once, per context */
#define AV_DECIDE_RULES_MAX 256    /* remembered rules, per context */
#define AV_DECIDE_PROGRAMS_MAX 32  /* decision and notification programs running at once, per context */
#define AV_DECIDE_JSON_MAX (16 * 1024) /* the request's JSON object (without a body) */
#define AV_DECIDE_LINE_MAX 4096    /* a decision program's answer line */
#define AV_DECIDE_REASON_MAX 200   /* a denial's reason, bytes */
#define AV_DECIDE_TIMEOUT_DEFAULT 120.0

/* The state of a hold. */
enum { AV_HOLD_PENDING = 0, AV_HOLD_ANSWERED, AV_HOLD_TIMEOUT, AV_HOLD_CANCELLED };

/* Who made a decision (the audit record's decided_by). */
enum { AV_BY_NONE = 0, AV_BY_PROGRAM, AV_BY_PERSON, AV_BY_RULE, AV_BY_TIMEOUT, AV_BY_AGENT, AV_BY_PROXY };
extern const char *const av__decide_by_names[];

typedef struct av_decide av_decide;
typedef struct av_decision_request av_hold;

/* What a hold shows of its request (copied; all strings NUL-terminated,
 * "" for none). */
typedef struct av_hold_view {
    const char *method, *scheme, *host, *path, *service, *token, *gateway, *peer, *protocol;
    int port;
} av_hold_view;

int av__decide_new(av_decide **out);
/* Holds still referenced (an embedder that never answered) outlive it. */
void av__decide_free(av_decide *d);

/* av__decide_prog_take counts a program about to start: 1, or 0 when
 * AV_DECIDE_PROGRAMS_MAX are running (the caller does not start it);
 * av__decide_prog_give when it is gone. Any thread. */
int av__decide_prog_take(av_decide *d);
void av__decide_prog_give(av_decide *d);

/* av__decide_deny_all answers every pending hold with |status| and
 * |reason| (shutdown: nothing waits out the drain). */
void av__decide_deny_all(av_decide *d, int status, const char *reason);

/* av__decide_rule_match: does a remembered rule allow this request?
 * 1 or 0. Expired rules are dropped on the way. */
int av__decide_rule_match(av_decide *d, const char *service, const char *token, const char *method,
                          const char *path);

/* av__hold_new registers a pending hold with two references (the
 * exchange's and the answerer's) and |json| (copied; its "id" is filled
 * in: the JSON must start with {"id":"", which is completed). |wake| is
 * sent (from any thread) when the hold is decided. Returns AV_OK,
 * AV_ERR_LIMIT (AV_DECIDE_HELD_MAX reached) or AV_ERR_NOMEM. */
int av__hold_new(av_decide *d, const av_hold_view *v, const char *json, size_t json_len, av_async *wake,
                 double now, av_hold **out);
const char *av__hold_id(const av_hold *h);
/* The state and, once decided, the verdict: allow, status and reason (a
 * copy), who, and the rule to remember. Loop thread of the owner. */
int av__hold_result(av_hold *h, int *allow, int *status, char reason[AV_DECIDE_REASON_MAX + 1], int *by);
/* An answer from the loop (a program, the timer): AV_OK, or AV_ERR_STATE
 * when it was already decided. Does not release a reference. */
int av__hold_decide(av_hold *h, int allow, int status, const char *reason, int by);
/* The exchange lets go: a pending hold becomes CANCELLED (the agent went
 * away), the wakeup is forgotten (never sent after this returns), and
 * its reference is released. */
void av__hold_detach(av_hold *h);
/* Drop a reference (the answerer's, for a hold never answered). */
void av__hold_unref(av_hold *h);

/* ---- the answer line of a decision program ---- */
typedef struct av_decide_answer {
    int allow;
    char reason[AV_DECIDE_REASON_MAX + 1]; /* "" when none; printable ASCII */
} av_decide_answer;

/* av__decide_parse_line reads a program's output: exactly one JSON object
 * on one line (a final "\n" allowed, nothing after it), with "allow"
 * (true or false, required) and "reason" (a string of at most
 * AV_DECIDE_REASON_MAX bytes once unescaped, control characters and
 * non-ASCII replaced) and no other member, no duplicate. Returns AV_OK or
 * AV_ERR_PARSE with a short reason in |why| (never quoting the input). */
int av__decide_parse_line(const char *p, size_t n, av_decide_answer *out, const char **why);

#endif
