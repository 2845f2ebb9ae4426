/* av_h2.c - not written yet (being implemented). */
typedef int av_h2_not_written_yet;
