/* av_url.c - not written yet (skeleton commit). */
typedef int av_url_not_written_yet;
