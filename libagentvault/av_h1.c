/* av_h1.c - not written yet (skeleton commit). */
typedef int av_h1_not_written_yet;
