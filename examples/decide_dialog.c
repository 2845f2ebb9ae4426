/* decide_dialog.c - an embedder that asks its user before a risky request
 * goes out (decide = ask and av_config_set_decide_fn).
 *
 *   decide_dialog -c FILE [-s STATE_DIR]
 *
 * The proxy runs on its own thread (av_ctx_start). The "UI" is the
 * terminal: for each held request the UI thread shows one line,
 *   ask ID METHOD HOST PATH (service SERVICE)
 * and reads the user's answers from standard input:
 *   allow ID | allow ID 10m | deny ID [reason...]
 * End of input denies what is still waiting and stops. The decide callback
 * runs on the proxy's loop thread: it only queues the request and wakes
 * the UI thread through a pipe (it never blocks the loop); answers come
 * from the UI thread. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <agentvault/agentvault.h>

#define MAX_ASKED 256

struct ui {
    pthread_mutex_t mu;
    av_decision_request *asked[MAX_ASKED]; /* waiting for the user */
    char ids[MAX_ASKED][24];
    int shown[MAX_ASKED];
    size_t n;
    int wake[2];
};

/* The decide callback (the proxy's loop thread): queue, wake the UI. */
static void on_decide(void *user_data, av_decision_request *req)
{
    struct ui *ui = user_data;
    pthread_mutex_lock(&ui->mu);
    if (ui->n == MAX_ASKED) {
        pthread_mutex_unlock(&ui->mu);
        av_decision_deny(req, 503, "too many questions for the user");
        return;
    }
    ui->asked[ui->n] = req;
    snprintf(ui->ids[ui->n], sizeof(ui->ids[0]), "%s", av_decision_request_get(req, "id"));
    ui->shown[ui->n] = 0;
    ui->n++;
    pthread_mutex_unlock(&ui->mu);
    char b = 1;
    ssize_t w = write(ui->wake[1], &b, 1);
    (void)w;
}

/* Take request |id| off the list (NULL: not asked, or already answered). */
static av_decision_request *take(struct ui *ui, const char *id)
{
    av_decision_request *r = NULL;
    pthread_mutex_lock(&ui->mu);
    for (size_t i = 0; i < ui->n && !r; i++)
        if (!strcmp(ui->ids[i], id)) {
            r = ui->asked[i];
            ui->n--;
            ui->asked[i] = ui->asked[ui->n];
            memcpy(ui->ids[i], ui->ids[ui->n], sizeof(ui->ids[0]));
            ui->shown[i] = ui->shown[ui->n];
        }
    pthread_mutex_unlock(&ui->mu);
    return r;
}

/* Show the new questions. A request that stopped waiting (timed out, the
 * agent went away) is answered anyway: that releases it. */
static void show(struct ui *ui)
{
    pthread_mutex_lock(&ui->mu);
    for (size_t i = 0; i < ui->n; i++) {
        av_decision_request *r = ui->asked[i];
        if (!av_decision_request_waiting(r)) {
            printf("gone %s\n", ui->ids[i]);
            av_decision_deny(r, 403, NULL);
            ui->n--;
            ui->asked[i] = ui->asked[ui->n];
            memcpy(ui->ids[i], ui->ids[ui->n], sizeof(ui->ids[0]));
            ui->shown[i] = ui->shown[ui->n];
            i--;
            continue;
        }
        if (!ui->shown[i]) {
            ui->shown[i] = 1;
            printf("ask %s %s %s %s (service %s)\n", ui->ids[i], av_decision_request_get(r, "method"),
                   av_decision_request_get(r, "host"), av_decision_request_get(r, "path"),
                   av_decision_request_get(r, "service"));
        }
    }
    pthread_mutex_unlock(&ui->mu);
    fflush(stdout);
}

/* One line of the user's: allow ID [MINUTESm] | deny ID [reason]. */
static void answer(struct ui *ui, char *line)
{
    char *save = NULL;
    char *verb = strtok_r(line, " \n", &save), *id = strtok_r(NULL, " \n", &save);
    av_decision_request *r = verb && id ? take(ui, id) : NULL;
    if (!r) {
        printf("? no question %s\n", id ? id : "");
    } else if (!strcmp(verb, "allow")) {
        char *mins = strtok_r(NULL, " \n", &save);
        double secs = mins ? 60.0 * atof(mins) : 0;
        int rc = av_decision_allow(r, secs > 0 ? AV_REMEMBER_PATH : AV_REMEMBER_NONE, NULL, secs);
        printf("%s %s\n", rc == AV_OK ? "allowed" : "too late for", id);
    } else {
        char *reason = strtok_r(NULL, "\n", &save);
        int rc = av_decision_deny(r, 403, reason && *reason ? reason : "the user said no");
        printf("%s %s\n", rc == AV_OK ? "denied" : "too late for", id);
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *file = NULL, *state = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-c"))
            file = argv[i + 1];
        else if (!strcmp(argv[i], "-s"))
            state = argv[i + 1];
    }
    if (!file) {
        fprintf(stderr, "usage: decide_dialog -c FILE [-s STATE_DIR]\n");
        return 2;
    }
    static struct ui ui;
    pthread_mutex_init(&ui.mu, NULL);
    if (pipe(ui.wake) != 0)
        return 1;
    fcntl(ui.wake[0], F_SETFL, O_NONBLOCK);
    fcntl(ui.wake[1], F_SETFL, O_NONBLOCK);
    av_config *cfg = NULL;
    char err[512] = "";
    int rc = av_config_new(&cfg);
    if (rc == AV_OK)
        rc = av_config_load_file(cfg, file);
    if (rc == AV_OK && state)
        rc = av_config_set_state_dir(cfg, state);
    if (rc == AV_OK)
        rc = av_config_set_decide_fn(cfg, on_decide, &ui);
    if (rc == AV_OK)
        rc = av_config_validate(cfg);
    if (rc != AV_OK)
        snprintf(err, sizeof(err), "%s", av_config_error(cfg));
    av_ctx *ctx = NULL;
    if (rc == AV_OK)
        rc = av_ctx_new(&ctx, cfg, err, sizeof(err));
    if (rc == AV_OK)
        rc = av_ctx_start(ctx);
    if (rc != AV_OK) {
        fprintf(stderr, "decide_dialog: %s\n", err[0] ? err : av_strerror(rc));
        av_ctx_free(ctx);
        av_config_free(cfg);
        return 1;
    }
    const char *spec = av_config_listen_get(cfg, 0);
    printf("decide_dialog: listening on %.*s:%d\n", (int)(strrchr(spec, ':') - spec), spec,
           av_ctx_listen_port(ctx, 0));
    fflush(stdout);
    av_config_free(cfg);

    char line[512];
    size_t len = 0;
    for (;;) {
        struct pollfd pf[2] = {{0, POLLIN, 0}, {ui.wake[0], POLLIN, 0}};
        if (poll(pf, 2, 500) < 0 && errno != EINTR)
            break;
        char b[64];
        while (read(ui.wake[0], b, sizeof(b)) > 0)
            ;
        show(&ui);
        if (!(pf[0].revents & (POLLIN | POLLHUP)))
            continue;
        ssize_t r = read(0, line + len, sizeof(line) - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
        line[len] = '\0';
        char *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = '\0';
            answer(&ui, line);
            len -= (size_t)(nl + 1 - line);
            memmove(line, nl + 1, len + 1);
        }
        if (len == sizeof(line) - 1)
            len = 0; /* an over-long line is dropped */
    }
    /* The user left. Stopping refuses what is still held (503); the
     * requests still queued here are then answered only to release them. */
    av_ctx_stop(ctx, 2.0);
    pthread_mutex_lock(&ui.mu);
    for (size_t i = 0; i < ui.n; i++)
        av_decision_deny(ui.asked[i], 403, "no one is there to ask");
    ui.n = 0;
    pthread_mutex_unlock(&ui.mu);
    av_ctx_free(ctx);
    return 0;
}
