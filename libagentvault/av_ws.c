/* av_ws.c - not written yet (being implemented). */
typedef int av_ws_not_written_yet;
