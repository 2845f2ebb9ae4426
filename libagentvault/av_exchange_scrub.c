/* av_exchange_scrub.c - credential out: response-field redaction, the body scrubber
 * set-up and pump, and the WebSocket frame-mode upstream filter.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "av_exchange.h"
#include "av_mint.h"

/* Scrubbed bytes toward the agent. Returns progress, or -1 after failing
 * the exchange (a body that cannot be scrubbed is never relayed). */
int av__x_scrub_pump(av_exchange *x)
{
    int progress = 0;
    for (int guard = 0; guard < 64 && x->scrub && !x->resp_done; guard++) {
        if (x->scrub_out.len) {
            size_t room = av__x_agent_room(x);
            size_t n = x->scrub_out.len < room ? x->scrub_out.len : room;
            if (n == 0)
                break;
            if (av__x_agent_write(x, av__buf_head(&x->scrub_out), n) < 0)
                return -1; /* failed: out of memory */
            av__buf_consume(&x->scrub_out, n);
            progress = 1;
            continue;
        }
        int rc;
        if (x->scrub_in.len) {
            size_t used = 0;
            rc = av__scrub_feed(x->scrub, av__buf_head(&x->scrub_in), x->scrub_in.len, &used, &x->scrub_out);
            av__buf_consume(&x->scrub_in, used);
            progress |= used > 0;
        } else if (x->body_ended && !x->scrub_finished) {
            rc = av__scrub_finish(x->scrub, &x->scrub_out);
            if (rc == AV_OK)
                x->scrub_finished = 1;
        } else if (x->scrub_finished) {
            if (!av__x_agent_end(x))
                break; /* no room for the trailers yet */
            unsigned long cnt = av__scrub_count(x->scrub);
            x->redactions += cnt;
            x->env->metrics->m_redacted += cnt;
            x->resp_done = 1;
            return 1;
        } else {
            break;
        }
        if (rc == AV_OK || rc == AV_ERR_LIMIT) {
            progress = 1;
            continue;
        }
        av__x_fail(x, 502, rc == AV_ERR_DENIED ? "response body refused: decompression limit exceeded while scrubbing"
                       : rc == AV_ERR_PARSE ? "upstream sent a corrupt compressed body (cannot scrub it)"
                                            : "cannot scrub the response body");
        return -1;
    }
    return progress;
}

/* Write a response head toward the agent (see av__x_agent_head_raw), scrubbing
 * the injected secret out of every field value first and setting up the
 * body scrubber. Returns 0, AV_ERR_LIMIT (no room yet), AV_ERR_INVALID, or
 * AV_ERR_DENIED (the body cannot be scrubbed: fail closed). */
int av__x_resp_head(av_exchange *x, int status, const char *reason, size_t reason_len,
                     const av_h1_field *fields, size_t nfields, int kind, uint64_t len)
{
    if (status == 401 && x->mint_token && x->svc) { /* the origin refused a minted token: mint anew */
        av__mint_invalidate(x->snap->mint, (size_t)(x->svc - x->snap->cfg->services), x->mint_token);
        if (av__x_mint_replayable(x)) {
            x->mint_retry = 1; /* the link restarts the exchange (av__x_mint_restart) */
            return AV_ERR_AGAIN;
        }
    }
    if (!x->scrub_set || status < 200)
        return x->agent->head(x, status, reason, reason_len, fields, nfields, kind, len);
    int any = 0, enc0 = AV_SCRUB_IDENTITY;
    for (size_t i = 0; i < nfields; i++) {
        if (av__scrub_set_matches(x->scrub_set, (const uint8_t *)fields[i].value, fields[i].value_len))
            any = 1;
        if (av__h1_name_eq(&fields[i], "content-encoding")) {
            enc0 = av__scrub_encoding_parse(fields[i].value, fields[i].value_len);
            if (enc0 < 0)
                return AV_ERR_DENIED;
        }
    }
    if (!any) {
        /* Common case: no field holds the secret; only the body needs a scrubber. */
        int body0 = kind == RK_UNKNOWN || (kind == RK_LENGTH && len > 0);
        if (body0 && !x->scrub) {
            int rc0 = av__scrub_new_from_set(&x->scrub, x->scrub_set, enc0);
            if (rc0 != AV_OK)
                return rc0 == AV_ERR_NOMEM ? AV_ERR_INVALID : rc0;
            av__buf_init(&x->scrub_in, 64 * 1024);
            size_t out_max = 64 * 1024;
            if (out_max < av__scrub_min_room(x->scrub) * 2)
                out_max = av__scrub_min_room(x->scrub) * 2;
            av__buf_init(&x->scrub_out, out_max);
        }
        int rc1 = x->agent->head(x, status, reason, reason_len, fields, nfields, body0 ? RK_UNKNOWN : kind, len);
        if (rc1 == AV_ERR_LIMIT && x->scrub) {
            av__scrub_free(x->scrub);
            x->scrub = NULL;
        }
        return rc1;
    }
    av_h1_field *copy = av__calloc(nfields ? nfields : 1, sizeof(*copy));
    char **owned = av__calloc(nfields ? nfields : 1, sizeof(*owned));
    int rc = AV_OK;
    int enc = AV_SCRUB_IDENTITY;
    if (!copy || !owned)
        rc = AV_ERR_NOMEM;
    for (size_t i = 0; i < nfields && rc == AV_OK; i++) {
        copy[i] = fields[i];
        char *nv = NULL;
        size_t nl = 0;
        unsigned long cnt = 0;
        rc = av__scrub_header_value_set(x->scrub_set, fields[i].value, fields[i].value_len, &nv, &nl, &cnt);
        if (rc != AV_OK)
            break;
        if (cnt) {
            copy[i].value = nv;
            copy[i].value_len = nl;
            owned[i] = nv;
            x->redactions += cnt;
            x->env->metrics->m_redacted += cnt;
        } else {
            av__free(nv);
        }
        if (av__h1_name_eq(&fields[i], "content-encoding")) {
            enc = av__scrub_encoding_parse(fields[i].value, fields[i].value_len);
            if (enc < 0)
                rc = AV_ERR_DENIED;
        }
    }
    int body = kind == RK_UNKNOWN || (kind == RK_LENGTH && len > 0);
    if (rc == AV_OK && body && !x->scrub) {
        rc = av__scrub_new_from_set(&x->scrub, x->scrub_set, enc);
        if (rc == AV_OK) {
            av__buf_init(&x->scrub_in, 64 * 1024);
            size_t out_max = 64 * 1024;
            if (out_max < av__scrub_min_room(x->scrub) * 2)
                out_max = av__scrub_min_room(x->scrub) * 2;
            av__buf_init(&x->scrub_out, out_max);
        }
    }
    if (rc == AV_OK) {
        /* Scrubbing may change the length: the agent gets it delimited. */
        rc = x->agent->head(x, status, reason, reason_len, copy, nfields, body ? RK_UNKNOWN : kind, len);
        if (rc == AV_ERR_LIMIT && x->scrub) {
            av__scrub_free(x->scrub); /* set up again on the retry */
            x->scrub = NULL;
        }
    }
    for (size_t i = 0; owned && i < nfields; i++)
        if (owned[i]) {
            av__wipe(owned[i], copy[i].value_len);
            av__free(owned[i]);
        }
    av__free(owned);
    av__free(copy);
    return rc;
}

/* Frame mode: scrub the injected secret from upstream messages. */
int av__x_ws_filter_up(void *ud, const uint8_t *msg, size_t len, uint8_t **out, size_t *out_len)
{
    av_exchange *x = ud;
    *out = (uint8_t *)msg;
    *out_len = len;
    if (!x->scrub_set || len == 0)
        return 0;
    char *nv = NULL;
    size_t nl = 0;
    unsigned long cnt = 0;
    int rc = av__scrub_header_value_set(x->scrub_set, (const char *)msg, len, &nv, &nl, &cnt);
    if (rc != AV_OK)
        return rc;
    if (cnt == 0) {
        av__free(nv);
        return 0;
    }
    x->redactions += cnt;
    x->env->metrics->m_redacted += cnt;
    *out = (uint8_t *)nv;
    *out_len = nl;
    return 0;
}
