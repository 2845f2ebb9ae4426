/* av_tls.c - not written yet (skeleton commit). */
typedef int av_tls_not_written_yet;
