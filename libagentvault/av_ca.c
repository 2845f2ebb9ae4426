/* av_ca.c - not written yet (skeleton commit). */
typedef int av_ca_not_written_yet;
